/* ridge.c - the ridge recovery map from quantized to float pre-activations (lowrank.h), fitted
 * in double with an explicit rank cut.
 *
 * Why in double and by eigendecomposition: a map fitted from float32 sums of n products has
 * rounding of about 1e-7 ||G|| in G = Yq^T Yq, larger than the default lambda (1e-6 tr(G) / d),
 * so on rank-deficient inputs (a 2-D toy's first layer has rank 2 of 16; digits fc1 has rank 59
 * of 64, dead ReLUs) the map's null-space entries were rounding noise divided by lambda: unseen
 * by a float map on the calibration data, but they set the int4/int8 row scales of a quantized
 * map, and they changed with the BLAS thread count. Here G and Yq^T Yf are summed in double,
 * and G's null directions get exactly zero weight.
 *
 * The rank cut: eigen-directions of G with eigenvalue at or below QS_RIDGE_REL_CUT = 1e-6 of the
 * largest are dropped (singular values of the centred Yq below 1e-3 of the largest). That is the
 * scale of the default lambda (1e-6 tr(G) / d <= 1e-6 lambda_max), and six decades above the
 * float32 rounding of the data itself (about 1e-12 lambda_max): directions below it are either
 * null (dead units, a 2-D input embedded in 16 dimensions) or so weak that the ridge would give
 * them weights up to 1 / (2 sqrt(lambda)) - large coefficients that a float map can afford but
 * that set an int4/int8 map's row scales. With a lower cut (1e-8 .. 0) the float map's R moves by
 * at most 1e-3 on the bundled models but the int4 map's R depends on these weak directions, and
 * on the last bits of the forward pass. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lowrank.h"

#define RIDGE_ROWS 1024 /* row block for the Gram accumulation: bounds the scratch memory */

int qs_ridge_map(const float *yq, const float *yf, int n, int d, double lambda, float *at, float *b,
                 double *lambda_used, qs_err *err)
{
    struct qs_ridge_info info;
    if (qs_ridge_map_info(yq, yf, n, d, lambda, at, b, &info, err) < 0)
        return -1;
    if (lambda_used)
        *lambda_used = info.lambda;
    return 0;
}

static int all_finite(const char *what, const float *a, size_t n, qs_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return qs_errf(err, "ridge: %s has a non-finite entry at index %zu", what, i);
    return 0;
}

void qs_ridge_acc_free(struct qs_ridge_acc *a)
{
    if (!a)
        return;
    free(a->kq);
    free(a->kf);
    free(a->sq);
    free(a->sf);
    free(a->g);
    free(a->h);
    free(a->bq);
    free(a->bf);
    memset(a, 0, sizeof *a);
}

int qs_ridge_acc_init(struct qs_ridge_acc *a, int d, const double *kq, const double *kf,
                      qs_err *err)
{
    memset(a, 0, sizeof *a);
    size_t dd;
    if (d < 1 || qs_size_mul((size_t)d, (size_t)d, &dd) < 0)
        return qs_errf(err, "ridge: %d outputs: no map of that size", d);
    size_t bytes = (2 * (size_t)RIDGE_ROWS * d + 2 * dd + 4 * (size_t)d) * sizeof(double);
    if (qs_mem_check(bytes, "the ridge map's double sums", err) < 0)
        return -1;
    a->d = d;
    a->kq = calloc((size_t)d, sizeof *a->kq);
    a->kf = calloc((size_t)d, sizeof *a->kf);
    a->sq = calloc((size_t)d, sizeof *a->sq);
    a->sf = calloc((size_t)d, sizeof *a->sf);
    a->g = calloc(dd, sizeof *a->g);
    a->h = calloc(dd, sizeof *a->h);
    a->bq = malloc((size_t)RIDGE_ROWS * d * sizeof *a->bq);
    a->bf = malloc((size_t)RIDGE_ROWS * d * sizeof *a->bf);
    if (!a->kq || !a->kf || !a->sq || !a->sf || !a->g || !a->h || !a->bq || !a->bf) {
        qs_ridge_acc_free(a);
        return qs_errf(err, "ridge: out of memory (%d x %d)", d, d);
    }
    a->shifted = kq != NULL;
    if (kq) {
        memcpy(a->kq, kq, (size_t)d * sizeof *a->kq);
        memcpy(a->kf, kf, (size_t)d * sizeof *a->kf);
    }
    return 0;
}

/* Column-major d x d: G += Bq Bq^T (upper triangle), H += Bq Bf^T, B the block's shifted rows
 * (row-major (nr, d) = column-major (d, nr)). */
static void acc_flush(struct qs_ridge_acc *a)
{
    int d = a->d, nr = a->fill;
    if (nr == 0)
        return;
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, d, nr, 1.0, a->bq, d, 1.0, a->g, d);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, d, d, nr, 1.0, a->bq, d, a->bf, d, 1.0,
                a->h, d);
    a->fill = 0;
}

int qs_ridge_acc_add(struct qs_ridge_acc *a, const float *yq, const float *yf, int n, qs_err *err)
{
    int d = a->d;
    size_t nd = (size_t)n * d;
    if (all_finite("quantized pre-activations", yq, nd, err) ||
        all_finite("float pre-activations", yf, nd, err))
        return -1;
    if (!a->shifted && n > 0) { /* the shift: the first rows' means (a stable one-pass sum) */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) {
                a->kq[j] += yq[(size_t)i * d + j];
                a->kf[j] += yf[(size_t)i * d + j];
            }
        for (int j = 0; j < d; j++) {
            a->kq[j] /= n;
            a->kf[j] /= n;
        }
        a->shifted = 1;
    }
    for (int i = 0; i < n; i++) {
        double *q = a->bq + (size_t)a->fill * d, *f = a->bf + (size_t)a->fill * d;
        for (int j = 0; j < d; j++) {
            size_t src = (size_t)i * d + j;
            q[j] = yq[src] - a->kq[j];
            f[j] = yf[src] - a->kf[j];
            a->sq[j] += q[j];
            a->sf[j] += f[j];
        }
        if (++a->fill == RIDGE_ROWS)
            acc_flush(a);
    }
    a->n += n;
    return 0;
}

int qs_ridge_acc_solve(struct qs_ridge_acc *a, double lambda, float *at, float *b,
                       struct qs_ridge_info *info, qs_err *err)
{
    int d = a->d;
    long n = a->n;
    if (n < 1 || d < 1)
        return qs_errf(err, "ridge: empty pre-activations (%ld samples x %d features)", n, d);
    if (isnan(lambda) || isinf(lambda))
        return qs_errf(err, "ridge: lambda %g is not finite", lambda);
    acc_flush(a);
    size_t dd = (size_t)d * d;
    double *mq = malloc((size_t)d * sizeof *mq), *mf = malloc((size_t)d * sizeof *mf);
    double *w = malloc((size_t)d * sizeof *w);
    double *t = malloc(dd * sizeof *t), *x = malloc(dd * sizeof *x);
    int rc = -1;
    if (!mq || !mf || !w || !t || !x) {
        qs_errf(err, "ridge: out of memory (%d x %d)", d, d);
        goto out;
    }
    /* the sums are about the shift k: with u = mean(y - k), the centred sums are
     * G = sum (yq - k)(yq - k)^T - n uq uq^T and H = sum (yq - k)(yf - k)^T - n uq uf^T; when k
     * is the mean (qs_ridge_map_info), u is rounding and the terms vanish at double precision */
    double *uq = mq, *uf = mf;
    for (int j = 0; j < d; j++) {
        uq[j] = a->sq[j] / (double)n;
        uf[j] = a->sf[j] / (double)n;
    }
    for (int c = 0; c < d; c++)
        for (int r = 0; r < d; r++) {
            if (r <= c)
                a->g[(size_t)c * d + r] -= (double)n * uq[r] * uq[c];
            a->h[(size_t)c * d + r] -= (double)n * uq[r] * uf[c];
        }
    for (int j = 0; j < d; j++) {
        mq[j] = a->kq[j] + uq[j];
        mf[j] = a->kf[j] + uf[j];
    }
    double *g = a->g, *h = a->h;
    double tr = 0;
    for (int j = 0; j < d; j++)
        tr += g[(size_t)j * d + j];
    double lam = lambda < 0 ? 1e-6 * tr / d : lambda;
    /* G = V diag(w) V^T, w ascending; g becomes V (the sums are spent: solve once). */
    if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', d, g, d, w) != 0) {
        qs_errf(err, "ridge: LAPACK could not diagonalise the %d x %d Gram matrix", d, d);
        goto out;
    }
    double wmax = w[d - 1], cut = QS_RIDGE_REL_CUT * wmax;
    int k = 0; /* kept: the top k eigenvalues, those above the cut */
    while (k < d && wmax > 0 && w[d - 1 - k] > cut)
        k++;
    /* X = V_k diag(1 / (w + lam)) V_k^T H, V_k the last k columns of V; dropped directions
     * contribute nothing, so at's null-space component is exactly zero (to V's orthogonality). */
    memset(x, 0, dd * sizeof *x);
    if (k > 0) {
        const double *vk = g + (size_t)(d - k) * d;
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, k, d, d, 1.0, vk, d, h, d, 0.0, t, k);
        for (int i = 0; i < k; i++) {
            double f = 1.0 / (w[d - k + i] + lam);
            for (int j = 0; j < d; j++)
                t[(size_t)j * k + i] *= f;
        }
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, d, d, k, 1.0, vk, d, t, k, 0.0, x,
                    d);
    }
    /* at = X (column-major X[i + j d] is row i, column j); b = mean(yf) - mean(yq) at. */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            at[(size_t)i * d + j] = (float)x[(size_t)j * d + i];
    for (int j = 0; j < d; j++) {
        double acc = mf[j];
        for (int i = 0; i < d; i++)
            acc -= mq[i] * x[(size_t)j * d + i];
        b[j] = (float)acc;
    }
    if (info) {
        info->lambda = lam;
        info->rank_kept = k;
        info->eig_max = wmax;
        info->cut = cut;
    }
    rc = 0;
out:
    free(mq);
    free(mf);
    free(w);
    free(t);
    free(x);
    return rc;
}

int qs_ridge_map_info(const float *yq, const float *yf, int n, int d, double lambda, float *at,
                      float *b, struct qs_ridge_info *info, qs_err *err)
{
    if (n < 1 || d < 1)
        return qs_errf(err, "ridge: empty pre-activations (%d samples x %d features)", n, d);
    if (isnan(lambda) || isinf(lambda))
        return qs_errf(err, "ridge: lambda %g is not finite", lambda);
    size_t nd, dd;
    if (qs_size_mul((size_t)n, (size_t)d, &nd) < 0 || qs_size_mul((size_t)d, (size_t)d, &dd) < 0)
        return qs_errf(err, "ridge: %d x %d is too large", n, d);
    if (all_finite("quantized pre-activations", yq, nd, err) ||
        all_finite("float pre-activations", yf, nd, err))
        return -1;
    /* the rows are all here: shift by their exact means (two passes), the centred sums */
    double *mq = calloc((size_t)d, sizeof *mq), *mf = calloc((size_t)d, sizeof *mf);
    struct qs_ridge_acc a;
    int rc = -1;
    memset(&a, 0, sizeof a);
    if (!mq || !mf) {
        qs_errf(err, "ridge: out of memory (%d x %d)", n, d);
        goto out;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            mq[j] += yq[(size_t)i * d + j];
            mf[j] += yf[(size_t)i * d + j];
        }
    for (int j = 0; j < d; j++) {
        mq[j] /= n;
        mf[j] /= n;
    }
    if (qs_ridge_acc_init(&a, d, mq, mf, err) < 0 || qs_ridge_acc_add(&a, yq, yf, n, err) < 0)
        goto out;
    rc = qs_ridge_acc_solve(&a, lambda, at, b, info, err);
out:
    qs_ridge_acc_free(&a);
    free(mq);
    free(mf);
    return rc;
}
