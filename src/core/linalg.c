/* linalg.c - OpenBLAS/LAPACKE wrappers: SVD (exact, randomized, block Krylov), symmetric
 * eigendecomposition, Gram matrices, least squares.
 *
 * Layout trick used throughout: a row-major (m, n) matrix is, byte for byte, the column-major
 * (n, m) matrix A^T. LAPACK is column-major, so the SVD routines hand it A^T (same singular values,
 * U and V swap roles) instead of paying LAPACKE's transposing copies, and the randomized methods
 * keep their tall bases column-major so that the QR steps run on them in place. */
#include "qscope/linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *big_alloc(size_t bytes);

static float *dup_floats(const float *a, size_t n)
{
    float *c = big_alloc(n * sizeof *c);
    if (c && n)
        memcpy(c, a, n * sizeof *c);
    return c;
}

/* Scratch of `bytes` for the large bases (free() it). Fresh pages cost a fault each on first
 * touch - about 50 ms per 16 MB in 4 KB pages on the test VM, 10-15 % of a 4096^2 top-64 - so
 * blocks of 4 MB and more are 2 MB-aligned and offered to transparent huge pages, which cuts
 * that to ~2 ms. The advice is best effort: without THP it is plain memory. */
static void *big_alloc(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < 2 * huge)
        return malloc(bytes ? bytes : 1);
    size_t rounded = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, rounded);
#ifdef MADV_HUGEPAGE
    if (p)
        (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

static int check_shape(int m, int n, const char *what, qs_err *e)
{
    if (m < 1 || n < 1)
        return qs_errf(e, "%s: empty matrix (%d x %d)", what, m, n);
    return 0;
}

int qs_svd_values(const float *a, int m, int n, double *sv, qs_err *e)
{
    if (check_shape(m, n, "svd", e))
        return -1;
    int k = m < n ? m : n;
    float *c = dup_floats(a, (size_t)m * n);
    float *s = malloc((size_t)k * sizeof *s);
    if (!c || !s) {
        free(c);
        free(s);
        return qs_errf(e, "svd: out of memory for a %d x %d matrix", m, n);
    }
    /* Column-major (n, m) is A^T: same singular values. u/vt are not referenced for 'N'. */
    float dummy = 0;
    lapack_int info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'N', n, m, c, n, s, &dummy, 1, &dummy, 1);
    if (info == 0)
        for (int i = 0; i < k; i++)
            sv[i] = s[i];
    free(c);
    free(s);
    if (info != 0)
        return qs_errf(e, "svd: LAPACK sgesdd failed on a %d x %d matrix (info %d)", m, n,
                       (int)info);
    return 0;
}

/* LAPACK's single-precision routines return their workspace size in a float: above 2^24 the
 * size is rounded, sometimes down, and the routine then refuses the size it asked for (ssyevd
 * on a 3001 x 3001 matrix: 18030009 returned as 18030008, info -9; every n >= ~2900, so QERA on
 * a 3072-wide GPT-2 site). The size as an integer, rounded up past the float's spacing. */
static lapack_int work_size(float q)
{
    double d = (double)q;
    return (lapack_int)(d + d * 2.4e-7 + 1.0);
}

int qs_svd_thin(const float *a, int m, int n, float *u, float *s, float *vt, qs_err *e)
{
    if (check_shape(m, n, "svd", e))
        return -1;
    int k = m < n ? m : n;
    float *c = dup_floats(a, (size_t)m * n);
    if (!c)
        return qs_errf(e, "svd: out of memory for a %d x %d matrix", m, n);
    /* sgesdd on A^T (col-major n x m) = U' S V'^T gives A = V' S U'^T. LAPACK's U' (n x k,
     * col-major, ld n) is exactly our row-major vt (k, n), and its V'^T (k x m, col-major, ld k)
     * is exactly our row-major u (m, k): no transposes needed. */
    float q = 0;
    lapack_int *iw = malloc((size_t)8 * k * sizeof *iw), info = -1;
    if (iw && (info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', n, m, c, n, s, vt, n, u, k, &q, -1,
                                          iw)) == 0) {
        lapack_int lw = work_size(q);
        float *w = malloc((size_t)lw * sizeof *w);
        info = w ? LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', n, m, c, n, s, vt, n, u, k, w, lw, iw)
                 : -1;
        free(w);
    }
    free(iw);
    free(c);
    if (info != 0)
        return qs_errf(e, "svd: LAPACK sgesdd failed on a %d x %d matrix (info %d)", m, n,
                       (int)info);
    return 0;
}

/* ---- randomized methods ------------------------------------------------------------------ */

/* Scratch for orthonormalising a column-major (rows, cols) block in place. */
struct orth_ws {
    float *tmp;  /* (rows, cols) */
    float *coef; /* (basis_max, cols) */
    float *tau;  /* (cols) */
    float *g;    /* (cols, cols) */
    float *nrm;  /* (2 cols) */
};

static int orth_ws_init(struct orth_ws *ws, int rows, int cols, int basis_max)
{
    ws->tmp = big_alloc((size_t)rows * cols * sizeof(float));
    ws->coef = malloc((size_t)(basis_max > 0 ? basis_max : 1) * cols * sizeof(float));
    ws->tau = malloc((size_t)cols * sizeof(float));
    ws->g = malloc((size_t)cols * cols * sizeof(float));
    ws->nrm = malloc((size_t)2 * cols * sizeof(float));
    return ws->tmp && ws->coef && ws->tau && ws->g && ws->nrm ? 0 : -1;
}

static void orth_ws_free(struct orth_ws *ws)
{
    free(ws->tmp);
    free(ws->coef);
    free(ws->tau);
    free(ws->g);
    free(ws->nrm);
}

/* Standard normals, two per Box-Muller draw (qs_rng_normal spends a draw per value). */
static void fill_gaussian(qs_rng *rng, float *x, size_t n, float scale)
{
    const double two_pi = 6.283185307179586476925;
    for (size_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(1.0 - qs_rng_uniform(rng))) * scale;
        double t = two_pi * qs_rng_uniform(rng);
        x[i] = (float)(r * cos(t));
        if (i + 1 < n)
            x[i + 1] = (float)(r * sin(t));
    }
}

static float col_norm(const float *x, int rows)
{
    return cblas_snrm2(rows, x, 1);
}

/* One block classical Gram-Schmidt pass: w -= basis (basis^T w). */
static void cgs_pass(float *w, int rows, int cols, const float *basis, int nb, float *coef)
{
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, nb, cols, rows, 1.0f, basis, rows, w, rows,
                0.0f, coef, nb);
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, rows, cols, nb, -1.0f, basis, rows, coef,
                nb, 1.0f, w, rows);
}

/* One CholeskyQR step, w <- w R^{-1} with R^T R = w^T w (float Gram). Refuses (returns -1,
 * w untouched) when the Cholesky factor is too ill-conditioned for float (diagonal ratio below
 * 1e-3, i.e. cond(w)^2 near 1 / eps) or a diagonal is below `floor` (a column that is only
 * rounding noise): Householder QR with its column replacement takes over then. */
static int cholqr_step(float *w, int rows, int cols, float *g, float floor)
{
    cblas_ssyrk(CblasColMajor, CblasUpper, CblasTrans, cols, rows, 1.0f, w, rows, 0.0f, g, cols);
    if (LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', cols, g, cols) != 0)
        return -1;
    float dmin = INFINITY, dmax = 0;
    for (int j = 0; j < cols; j++) {
        float d = g[(size_t)j * cols + j];
        dmin = fminf(dmin, d);
        dmax = fmaxf(dmax, d);
    }
    if (!(dmin > 1e-3f * dmax) || !(dmin > floor) || !isfinite(dmax))
        return -1;
    cblas_strsm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, rows, cols, 1.0f,
                g, cols, w, rows);
    return 0;
}

/* Makes the column-major block w: (rows, cols) orthonormal and orthogonal to basis:
 * (rows, nb) (orthonormal columns; nb = 0 for none), keeping its span as far as it is new.
 * Against the basis: block classical Gram-Schmidt, optionally preceded by a pass against only
 * its last `local` columns (where a Lanczos block's large known component lies), and repeated
 * once ("twice is enough") when `passes` >= 2 and some column lost more than 1 - 1/sqrt 2 of its
 * norm in the full pass (the Daniel-Gragg-Kaufman-Stewart criterion). Within the block: CholeskyQR2
 * (two ssyrk + spotrf + strsm steps, all BLAS 3, several times faster than sgeqrf on tall blocks).
 * A block that is too ill-conditioned for that, or holds a column that is only rounding noise (R
 * diagonal below 1e-5 of the block's original scale: a direction the basis already holds, e.g. past
 * the rank of A), goes to Householder QR (sgeqrf + sorgqr) instead. Householder's Q is orthonormal
 * even for a rank-deficient block, but the columns it invents for the missing directions need not
 * be orthogonal to the basis; so each such column is replaced by a fresh Gaussian vector and the
 * block is orthogonalised again. */
static int orth_block(float *w, int rows, int cols, const float *basis, int nb, int local,
                      int passes, struct orth_ws *ws, qs_rng *rng)
{
    float scale = 0;
    for (int j = 0; j < cols; j++)
        scale = fmaxf(scale, col_norm(w + (size_t)j * rows, rows));
    if (!(scale > 0) || !isfinite(scale))
        scale = 1;
    if (local > 0 && local < nb) /* the large, known part first: cheap, and it keeps DGKS honest */
        cgs_pass(w, rows, cols, basis + (size_t)(nb - local) * rows, local, ws->coef);
    if (nb > 0) {
        for (int j = 0; j < cols; j++)
            ws->nrm[j] = col_norm(w + (size_t)j * rows, rows);
        cgs_pass(w, rows, cols, basis, nb, ws->coef);
        int again = 0;
        for (int j = 0; j < cols && passes >= 2 && !again; j++)
            again = col_norm(w + (size_t)j * rows, rows) < 0.70710678f * ws->nrm[j];
        if (again)
            cgs_pass(w, rows, cols, basis, nb, ws->coef);
    }
    memcpy(ws->tmp, w, (size_t)rows * cols * sizeof *w);
    if (cholqr_step(ws->tmp, rows, cols, ws->g, 1e-5f * scale) == 0 &&
        cholqr_step(ws->tmp, rows, cols, ws->g, 0.5f) == 0) {
        memcpy(w, ws->tmp, (size_t)rows * cols * sizeof *w);
        return 0;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        if (attempt > 0 && nb > 0) {
            cgs_pass(w, rows, cols, basis, nb, ws->coef);
            cgs_pass(w, rows, cols, basis, nb, ws->coef);
        }
        memcpy(ws->tmp, w, (size_t)rows * cols * sizeof *w);
        if (LAPACKE_sgeqrf(LAPACK_COL_MAJOR, rows, cols, ws->tmp, rows, ws->tau) != 0)
            return -1;
        int bad = 0;
        for (int j = 0; j < cols; j++) {
            float r = fabsf(ws->tmp[(size_t)j * rows + j]);
            if (!(r > 1e-5f * scale)) {
                fill_gaussian(rng, w + (size_t)j * rows, (size_t)rows, scale / sqrtf(rows));
                bad = 1;
            }
        }
        if (!bad || attempt == 3) {
            if (LAPACKE_sorgqr(LAPACK_COL_MAJOR, rows, cols, cols, ws->tmp, rows, ws->tau) != 0)
                return -1;
            memcpy(w, ws->tmp, (size_t)rows * cols * sizeof *w);
            return 0;
        }
    }
    return 0;
}

/* Singular values, descending, of the column-major (rows, cols) matrix z (rows >= cols), written
 * to out (cols), through the eigenvalues of the Gram matrix z^T z: for the tall bases here several
 * times cheaper than sgesdd, which starts with a BLAS-2-bound QR of z. The Gram is first formed
 * in float (ssyrk + ssyevd): its rounding, at most about rows * eps * sv[0]^2 and typically
 * sqrt(rows) * eps * sv[0]^2, is harmless while sv[k-1]^2 >= 0.1 sv[0]^2 (then <= 1e-3 relative
 * even in the worst case). Steeper spectra redo it in double (dsyrk + dsyevd), where the squaring
 * costs nothing beyond z's own float rounding (about 1e-7 sv[0] absolute). */
static int ritz_values(const float *z, int rows, int cols, int k, double *out)
{
    float *g = malloc((size_t)cols * cols * sizeof *g), *w = malloc((size_t)cols * sizeof *w);
    int rc = -1;
    if (g && w) {
        cblas_ssyrk(CblasColMajor, CblasUpper, CblasTrans, cols, rows, 1.0f, z, rows, 0.0f, g,
                    cols);
        if (LAPACKE_ssyevd(LAPACK_COL_MAJOR, 'N', 'U', cols, g, cols, w) == 0) {
            for (int i = 0; i < cols; i++)
                out[i] = sqrt(fmax(w[cols - 1 - i], 0.0f));
            rc = 0;
        }
    }
    free(g);
    free(w);
    if (rc == 0 && out[k - 1] * out[k - 1] >= 0.1 * out[0] * out[0])
        return 0;
    double *zd = big_alloc((size_t)rows * cols * sizeof *zd);
    double *gd = malloc((size_t)cols * cols * sizeof *gd);
    rc = -1;
    if (zd && gd) {
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            zd[i] = z[i];
        cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, cols, rows, 1.0, zd, rows, 0.0, gd,
                    cols);
        /* eigenvalues ascending into zd[0..cols) */
        if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'U', cols, gd, cols, zd) == 0) {
            for (int i = 0; i < cols; i++)
                out[i] = sqrt(fmax(zd[cols - 1 - i], 0.0));
            rc = 0;
        }
    }
    free(zd);
    free(gd);
    return rc;
}

static int exact_topk(const float *a, int m, int n, int k, double *sv, qs_err *e)
{
    int mn = m < n ? m : n;
    double *all = malloc((size_t)mn * sizeof *all);
    if (!all)
        return qs_errf(e, "svd: out of memory");
    int rc = qs_svd_values(a, m, n, all, e);
    if (rc == 0)
        memcpy(sv, all, (size_t)k * sizeof *sv);
    free(all);
    return rc;
}

static int check_topk(int m, int n, int k, qs_err *e)
{
    if (check_shape(m, n, "svd", e))
        return -1;
    int mn = m < n ? m : n;
    if (k < 1 || k > mn)
        return qs_errf(e, "svd: k = %d must be in 1..min(m, n) = %d", k, mn);
    return 0;
}

int qs_svd_topk(const float *a, int m, int n, int k, int oversample, int power, uint64_t seed,
                double *sv, qs_err *e)
{
    if (check_topk(m, n, k, e))
        return -1;
    int mn = m < n ? m : n;
    if (oversample < 0)
        oversample = 10;
    if (power < 0)
        power = 2;
    long lw = ((long)k + oversample + 15) / 16 * 16;
    if (lw >= mn)
        return exact_topk(a, m, n, k, sv, e);
    int l = (int)lw;
    int big = m > n ? m : n;

    /* Column-major throughout: y (m, l), z (n, l); a row-major (m, n) is col-major A^T (n, m). */
    float *y = big_alloc((size_t)m * l * sizeof *y);
    float *z = big_alloc((size_t)n * l * sizeof *z);
    struct orth_ws ws;
    int ws_ok = orth_ws_init(&ws, big, l, 0);
    double *vals = malloc((size_t)l * sizeof *vals);
    int rc = -1;
    if (!y || !z || ws_ok || !vals) {
        qs_errf(e, "svd: out of memory for the randomized range finder (%d x %d, l = %d)", m, n, l);
        goto out;
    }
    qs_rng rng;
    qs_rng_seed(&rng, seed);
    fill_gaussian(&rng, z, (size_t)n * l, 1.0f); /* Omega (n, l) */
    /* HMT Alg. 4.4 (randomized subspace iteration): Y = A Omega, then (A A^T)^q, QR after each
     * product so that the basis never collapses onto the top direction in float. */
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, l, n, 1.0f, a, n, z, n, 0.0f, y, m);
    if (orth_block(y, m, l, NULL, 0, 0, 0, &ws, &rng))
        goto lapack_fail;
    for (int it = 0; it < power; it++) {
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, l, m, 1.0f, a, n, y, m, 0.0f, z,
                    n); /* Z = A^T Q */
        if (orth_block(z, n, l, NULL, 0, 0, 0, &ws, &rng))
            goto lapack_fail;
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, l, n, 1.0f, a, n, z, n, 0.0f, y,
                    m); /* Y = A Z */
        if (orth_block(y, m, l, NULL, 0, 0, 0, &ws, &rng))
            goto lapack_fail;
    }
    /* HMT Alg. 5.1: B = Q^T A; its transpose A^T Q (n, l) has the same singular values. */
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, l, m, 1.0f, a, n, y, m, 0.0f, z, n);
    if (ritz_values(z, n, l, k, vals))
        goto lapack_fail;
    memcpy(sv, vals, (size_t)k * sizeof *sv);
    rc = 0;
    goto out;
lapack_fail:
    qs_errf(e, "svd: LAPACK failed in the randomized range finder (%d x %d, l = %d)", m, n, l);
out:
    free(y);
    free(z);
    orth_ws_free(&ws);
    free(vals);
    return rc;
}

int qs_svd_topk_krylov(const float *a, int m, int n, int k, int block, int depth, uint64_t seed,
                       double *sv, qs_err *e)
{
    if (check_topk(m, n, k, e))
        return -1;
    int mn = m < n ? m : n;
    /* Defaults: blocks of k rounded up to a multiple of 16 (sgemm-friendly), 16..64 wide, and a
     * basis of about 8k columns, at least 4 blocks deep. */
    int b = block > 0 ? block : (k + 15) / 16 * 16;
    if (block <= 0)
        b = b < 16 ? 16 : b > 64 ? 64 : b;
    int s = depth > 0 ? depth : (8 * k + b - 1) / b;
    if (depth <= 0 && s < 4)
        s = 4;
    if ((long)b * (s + 1) >= mn)
        return exact_topk(a, m, n, k, sv, e);
    int d = b * s;
    int big = m > n ? m : n;

    /* Column-major: u (m, d) = [U_1 .. U_s]; zt (n, d) = [A^T U_1 .. A^T U_s], whose singular
     * values are those of U^T A; v (n, 2b) holds V_j and V_{j+1}. */
    float *u = big_alloc((size_t)m * d * sizeof *u);
    float *v = big_alloc((size_t)n * 2 * b * sizeof *v);
    float *zt = big_alloc((size_t)n * d * sizeof *zt);
    struct orth_ws ws;
    int ws_ok = orth_ws_init(&ws, big, b, d);
    double *vals = malloc((size_t)d * sizeof *vals);
    int rc = -1;
    if (!u || !v || !zt || ws_ok || !vals) {
        qs_errf(e, "svd: out of memory for block Krylov (%d x %d, basis %d)", m, n, d);
        goto out;
    }
    qs_rng rng;
    qs_rng_seed(&rng, seed);
    fill_gaussian(&rng, v, (size_t)n * b, 1.0f);
    if (orth_block(v, n, b, NULL, 0, 0, 0, &ws, &rng))
        goto lapack_fail;
    for (int j = 0; j < s; j++) {
        float *uj = u + (size_t)m * b * j, *vj = v + (size_t)n * b * (j % 2);
        float *zj = zt + (size_t)n * b * j;
        /* U_j = orth(A V_j) against U_1..U_{j-1}: first against U_{j-1} (block Lanczos: A V_j
         * lies in span(U_{j-1}, U_j)), then a full reorthogonalisation pass (a second one when
         * DGKS asks) keeps U orthonormal to working precision, which the Rayleigh-Ritz bound
         * needs. */
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, b, n, 1.0f, a, n, vj, n, 0.0f, uj,
                    m);
        if (orth_block(uj, m, b, u, b * j, b, 2, &ws, &rng))
            goto lapack_fail;
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, b, m, 1.0f, a, n, uj, m, 0.0f, zj,
                    n);
        if (j + 1 < s) {
            /* V_{j+1} = orth(A^T U_j) against V_j only. Since U is orthonormal and
             * A V_i lies in span(U_1..U_i), A^T U_j is already orthogonal to V_1..V_{j-1} (block
             * Lanczos); and V only steers the Krylov space - the values come from U - so one
             * local Gram-Schmidt pass is enough here. */
            float *vn = v + (size_t)n * b * ((j + 1) % 2);
            memcpy(vn, zj, (size_t)n * b * sizeof *vn);
            if (orth_block(vn, n, b, vj, b, 0, 1, &ws, &rng))
                goto lapack_fail;
        }
    }
    if (ritz_values(zt, n, d, k, vals))
        goto lapack_fail;
    memcpy(sv, vals, (size_t)k * sizeof *sv);
    rc = 0;
    goto out;
lapack_fail:
    qs_errf(e, "svd: LAPACK failed in block Krylov (%d x %d, basis %d)", m, n, d);
out:
    free(u);
    free(v);
    free(zt);
    orth_ws_free(&ws);
    free(vals);
    return rc;
}

/* ---- symmetric, Gram, least squares ------------------------------------------------------ */

int qs_sym_eig(const float *a, int n, float *w, float *v, qs_err *e)
{
    if (n < 1)
        return qs_errf(e, "eig: empty matrix (%d x %d)", n, n);
    memcpy(v, a, (size_t)n * n * sizeof *v);
    float q = 0;
    lapack_int iq = 0,
               info = LAPACKE_ssyevd_work(LAPACK_ROW_MAJOR, 'V', 'U', n, v, n, w, &q, -1, &iq, -1);
    if (info == 0) {
        lapack_int lw = work_size(q), liw = iq > 3 + 5 * n ? iq : 3 + 5 * n;
        float *wk = malloc((size_t)lw * sizeof *wk);
        lapack_int *iwk = malloc((size_t)liw * sizeof *iwk);
        info = wk && iwk
                   ? LAPACKE_ssyevd_work(LAPACK_ROW_MAJOR, 'V', 'U', n, v, n, w, wk, lw, iwk, liw)
                   : -1;
        free(wk);
        free(iwk);
    }
    if (info != 0)
        return qs_errf(e, "eig: LAPACK ssyevd failed on a %d x %d matrix (info %d)", n, n,
                       (int)info);
    return 0;
}

void qs_gram(const float *x, int rows, int cols, float *r)
{
    if (cols < 1)
        return;
    if (rows < 1) {
        memset(r, 0, (size_t)cols * cols * sizeof *r);
        return;
    }
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, rows, 1.0f / rows, x, cols, 0.0f, r,
                cols);
    for (int i = 0; i < cols; i++)
        for (int j = i + 1; j < cols; j++)
            r[(size_t)j * cols + i] = r[(size_t)i * cols + j];
}

int qs_lstsq(const float *a, int m, int n, const float *b, int nrhs, float *x, qs_err *e)
{
    if (check_shape(m, n, "lstsq", e))
        return -1;
    if (nrhs < 1)
        return qs_errf(e, "lstsq: no right-hand sides");
    int big = m > n ? m : n;
    float *ac = dup_floats(a, (size_t)m * n);
    float *bc = calloc((size_t)big * nrhs, sizeof *bc);
    if (!ac || !bc) {
        free(ac);
        free(bc);
        return qs_errf(e, "lstsq: out of memory (%d x %d)", m, n);
    }
    memcpy(bc, b, (size_t)m * nrhs * sizeof *bc);
    lapack_int info = LAPACKE_sgels(LAPACK_ROW_MAJOR, 'N', m, n, nrhs, ac, n, bc, nrhs);
    if (info == 0)
        memcpy(x, bc, (size_t)n * nrhs * sizeof *x);
    free(ac);
    free(bc);
    if (info != 0)
        return qs_errf(e, "lstsq: LAPACK sgels failed on a %d x %d matrix (info %d%s)", m, n,
                       (int)info, info > 0 ? ", not of full rank" : "");
    return 0;
}

double qs_frob2(const float *a, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * a[i];
    return s;
}
