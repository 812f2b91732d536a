/* lowrank.c - low-rank corrections of the weight error (LoRC, L2QER, QERA, EoRA), the ridge
 * recovery map and the recovery score.
 *
 * References (equations restated beside the code that implements them):
 *   ZeroQuant-V2 / LoRC: Yao et al. 2023, arXiv:2303.08302, Sec. "Low Rank Compensation".
 *   LQER / L2QER: Zhang et al. 2024, arXiv:2402.02446.
 *   QERA: Zhang et al. 2025 (ICLR), arXiv:2410.06040, the exact closed-form solution.
 *   EoRA: Liu et al. 2024, arXiv:2410.21271. */
#include "qscope/lowrank.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/linalg.h"

static int check_rank(const char *method, int out, int in, int r, qs_err *err)
{
    if (out < 1 || in < 1)
        return qs_errf(err, "%s: empty error matrix (%d x %d)", method, out, in);
    int mn = out < in ? out : in;
    if (r < 1)
        return qs_errf(err, "%s: rank %d must be at least 1", method, r);
    if (r > mn)
        return qs_errf(err, "%s: rank %d exceeds min(out, in) = %d", method, r, mn);
    return 0;
}

static int check_finite(const char *method, const char *what, const float *a, size_t n, qs_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return qs_errf(err, "%s: %s has a non-finite entry at index %zu", method, what, i);
    return 0;
}

/* Rank-r truncation of m: (out, in) and the factors of the correction:
 *   l = U_r S_r^{1/2}: (out, r),  rt = S_r^{1/2} V_r^T diag(colscale) right: (r, in),
 *   c = l rt: (out, in).
 * colscale: (in) or NULL; right: (in, in) or NULL. c, l, rt may be NULL (l/rt skipped). */
static int truncate_and_factor(const char *method, const float *m, int out, int in, int r,
                               const float *colscale, const float *right, float *c, float *l,
                               float *rt, qs_err *err)
{
    int k = out < in ? out : in;
    float *u = malloc((size_t)out * k * sizeof *u);
    float *s = malloc((size_t)k * sizeof *s);
    float *vt = malloc((size_t)k * in * sizeof *vt);
    float *lf = malloc((size_t)out * r * sizeof *lf);
    float *rf = malloc((size_t)r * in * sizeof *rf);
    float *tmp = right ? malloc((size_t)r * in * sizeof *tmp) : NULL;
    int rc = -1;
    if (!u || !s || !vt || !lf || !rf || (right && !tmp)) {
        qs_errf(err, "%s: out of memory for a %d x %d SVD", method, out, in);
        goto out;
    }
    if (qs_svd_thin(m, out, in, u, s, vt, err)) {
        qs_err_prefix(err, method);
        goto out;
    }
    for (int i = 0; i < out; i++)
        for (int j = 0; j < r; j++)
            lf[(size_t)i * r + j] = u[(size_t)i * k + j] * sqrtf(s[j]);
    for (int j = 0; j < r; j++) {
        float h = sqrtf(s[j]);
        for (int t = 0; t < in; t++)
            rf[(size_t)j * in + t] = h * vt[(size_t)j * in + t] * (colscale ? colscale[t] : 1.0f);
    }
    if (right) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, in, in, 1.0f, rf, in, right, in,
                    0.0f, tmp, in);
        memcpy(rf, tmp, (size_t)r * in * sizeof *rf);
    }
    if (c)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, 1.0f, lf, r, rf, in,
                    0.0f, c, in);
    if (l)
        memcpy(l, lf, (size_t)out * r * sizeof *l);
    if (rt)
        memcpy(rt, rf, (size_t)r * in * sizeof *rt);
    rc = 0;
out:
    free(u);
    free(s);
    free(vt);
    free(lf);
    free(rf);
    free(tmp);
    return rc;
}

int qs_lowrank_lorc(const float *e, int out, int in, int r, float *c, float *l, float *rt,
                    qs_err *err)
{
    if (check_rank("lorc", out, in, r, err) ||
        check_finite("lorc", "error matrix", e, (size_t)out * in, err))
        return -1;
    /* ZeroQuant-V2 LoRC: E = U S V^T, E_hat = U_r S_r V_r^T, stored as the two factors
     * U_r S_r^{1/2} and S_r^{1/2} V_r^T. */
    return truncate_and_factor("lorc", e, out, in, r, NULL, NULL, c, l, rt, err);
}

int qs_lowrank_lqer(const float *e, int out, int in, const float *s, int r, float *c, float *l,
                    float *rt, qs_err *err)
{
    if (check_rank("lqer", out, in, r, err) ||
        check_finite("lqer", "error matrix", e, (size_t)out * in, err))
        return -1;
    float smax = 0;
    for (int j = 0; j < in; j++) {
        if (!isfinite(s[j]) || s[j] < 0)
            return qs_errf(err, "lqer: activation scale s[%d] = %g must be finite and >= 0", j,
                           (double)s[j]);
        smax = fmaxf(smax, s[j]);
    }
    if (!(smax > 0))
        return qs_errf(err, "lqer: activation scales are all zero (no calibration signal)");
    float floor_s = 1e-4f * smax;
    float *es = malloc((size_t)out * in * sizeof *es);
    float *inv = malloc((size_t)in * sizeof *inv);
    int rc = -1;
    if (!es || !inv) {
        qs_errf(err, "lqer: out of memory (%d x %d)", out, in);
    } else {
        /* L2QER: S = diag(s); E S = U Sigma V^T; C = U_r Sigma_r V_r^T S^{-1}. */
        for (int j = 0; j < in; j++)
            inv[j] = 1.0f / fmaxf(s[j], floor_s);
        for (int i = 0; i < out; i++)
            for (int j = 0; j < in; j++)
                es[(size_t)i * in + j] = e[(size_t)i * in + j] * fmaxf(s[j], floor_s);
        rc = truncate_and_factor("lqer", es, out, in, r, inv, NULL, c, l, rt, err);
    }
    free(es);
    free(inv);
    return rc;
}

/* The damped autocorrelation R = rxx + damp mean(diag rxx) I and its eigendecomposition:
 * w: (in) ascending, q: (in, in) eigenvectors in columns. Eigenvalues at or below
 * 16 FLT_EPSILON lambda_max are set to 0 (null directions, handled as a pseudo-inverse). */
static int damped_eig(const char *method, const float *rxx, int in, double damp, float *w, float *q,
                      qs_err *err)
{
    if (check_finite(method, "input autocorrelation", rxx, (size_t)in * in, err))
        return -1;
    if (!(damp >= 0) || !isfinite(damp))
        return qs_errf(err, "%s: damping %g must be finite and >= 0", method, damp);
    double tr = 0;
    for (int i = 0; i < in; i++)
        tr += rxx[(size_t)i * in + i];
    float *rd = malloc((size_t)in * in * sizeof *rd);
    if (!rd)
        return qs_errf(err, "%s: out of memory (%d x %d)", method, in, in);
    memcpy(rd, rxx, (size_t)in * in * sizeof *rd);
    float add = (float)(damp * tr / in);
    for (int i = 0; i < in; i++)
        rd[(size_t)i * in + i] += add;
    int rc = qs_sym_eig(rd, in, w, q, err);
    free(rd);
    if (rc)
        return qs_err_prefix(err, method);
    float lmax = w[in - 1];
    if (!(lmax > 0))
        return qs_errf(err, "%s: the input autocorrelation is zero (no calibration signal)",
                       method);
    for (int i = 0; i < in; i++)
        if (w[i] <= 16 * FLT_EPSILON * lmax)
            w[i] = 0;
    return 0;
}

/* dst = q diag(f(w)) q^T: (in, in), with f = sqrt or its pseudo-inverse. */
static void sym_function(const float *q, const float *w, int in, int inverse, float *scratch,
                         float *dst)
{
    for (int i = 0; i < in; i++)
        for (int j = 0; j < in; j++) {
            float lam = w[j];
            float f = lam > 0 ? (inverse ? 1.0f / sqrtf(lam) : sqrtf(lam)) : 0.0f;
            scratch[(size_t)i * in + j] = q[(size_t)i * in + j] * f;
        }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, in, in, in, 1.0f, scratch, in, q, in, 0.0f,
                dst, in);
}

/* The error-weighted fits of QERA and EoRA: C = [E F]_r G from the eigen-pairs (w, q) of the
 * damped input autocorrelation R = Q Lambda Q^T, with
 * - QERA exact: F = R^{1/2} = Q Lambda^{1/2} Q^T, G = R^{-1/2};
 * - EoRA: F = Q Lambda^{1/2}, G = F's pseudo-inverse Lambda^{-1/2} Q^T (0 on null
 *   eigenvalues). */
static int weighted_lowrank(const char *method, int eora, const float *e, int out, int in,
                            const float *rxx, double damp, int r, float *c, float *l, float *rt,
                            qs_err *err)
{
    if (check_rank(method, out, in, r, err) ||
        check_finite(method, "error matrix", e, (size_t)out * in, err))
        return -1;
    size_t nn = (size_t)in * in;
    float *w = malloc((size_t)in * sizeof *w);
    float *q = malloc(nn * sizeof *q);
    float *scratch = eora ? NULL : malloc(nn * sizeof *scratch);
    float *fwd = malloc(nn * sizeof *fwd);
    float *back = malloc(nn * sizeof *back);
    float *m = malloc((size_t)out * in * sizeof *m);
    int rc = -1;
    if (!w || !q || (!eora && !scratch) || !fwd || !back || !m) {
        qs_errf(err, "%s: out of memory (%d x %d)", method, out, in);
        goto out;
    }
    if (damped_eig(method, rxx, in, damp, w, q, err))
        goto out;
    if (eora) {
        for (int i = 0; i < in; i++)
            for (int j = 0; j < in; j++) {
                float lam = w[j];
                fwd[(size_t)i * in + j] = q[(size_t)i * in + j] * (lam > 0 ? sqrtf(lam) : 0.0f);
                /* back[j][i] = lambda_j^{-1/2} q[i][j] */
                back[(size_t)j * in + i] = lam > 0 ? q[(size_t)i * in + j] / sqrtf(lam) : 0.0f;
            }
    } else {
        sym_function(q, w, in, 0, scratch, fwd);
        sym_function(q, w, in, 1, scratch, back);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, in, 1.0f, e, in, fwd, in, 0.0f,
                m, in);
    rc = truncate_and_factor(method, m, out, in, r, NULL, back, c, l, rt, err);
out:
    free(w);
    free(q);
    free(scratch);
    free(fwd);
    free(back);
    free(m);
    return rc;
}

int qs_lowrank_qera(const float *e, int out, int in, const float *rxx, double damp, int r, float *c,
                    float *l, float *rt, qs_err *err)
{
    return weighted_lowrank("qera", 0, e, out, in, rxx, damp, r, c, l, rt, err);
}

int qs_lowrank_eora(const float *e, int out, int in, const float *rxx, double damp, int r, float *c,
                    float *l, float *rt, qs_err *err)
{
    return weighted_lowrank("eora", 1, e, out, in, rxx, damp, r, c, l, rt, err);
}

double qs_lowrank_objective(const float *e, const float *c, int out, int in, const float *rxx)
{
    /* tr(D R D^T) = sum_i d_i^T R d_i over the rows d_i of D = E - C, in double. */
    double *d = malloc((size_t)in * sizeof *d);
    double *rd = malloc((size_t)in * sizeof *rd);
    double tot = NAN;
    if (d && rd) {
        tot = 0;
        for (int i = 0; i < out; i++) {
            for (int j = 0; j < in; j++)
                d[j] = (double)e[(size_t)i * in + j] - (c ? (double)c[(size_t)i * in + j] : 0.0);
            for (int a = 0; a < in; a++) {
                double acc = 0;
                const float *row = rxx + (size_t)a * in;
                for (int b = 0; b < in; b++)
                    acc += row[b] * d[b];
                rd[a] = acc;
            }
            for (int a = 0; a < in; a++)
                tot += d[a] * rd[a];
        }
    }
    free(d);
    free(rd);
    return tot;
}

/* ---- quantized factors ------------------------------------------------------------------- */

int qs_lowrank_quantize(const struct qs_format *f, float *l, float *rt, int out, int in, int r,
                        float *c, size_t *bytes, qs_err *err)
{
    if (check_rank("quantized factors", out, in, r, err) < 0)
        return -1;
    if (f->kind == QS_FMT_NONE)
        return qs_errf(err, "quantized factors: format 'none' keeps them in float");
    struct qs_qopts o;
    qs_qopts_default(&o);
    o.gran = QS_GRAN_CHANNEL; /* one scale per row of each factor (MX/NVFP4: their blocks) */
    struct qs_packed pl, pr;
    memset(&pl, 0, sizeof pl);
    memset(&pr, 0, sizeof pr);
    int rc = -1;
    /* pack both before touching either, so that an error leaves l and rt as they were */
    if (qs_quant_pack(f, &o, l, out, r, &pl, err) < 0 ||
        qs_quant_pack(f, &o, rt, r, in, &pr, err) < 0) {
        qs_err_prefix(err, "quantized factors");
        goto out;
    }
    if (qs_quant_unpack(&pl, l, err) < 0 || qs_quant_unpack(&pr, rt, err) < 0)
        goto out;
    if (c)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, r, 1.0f, l, r, rt, in, 0.0f,
                    c, in);
    if (bytes)
        *bytes = qs_packed_bytes(&pl) + qs_packed_bytes(&pr);
    rc = 0;
out:
    qs_packed_free(&pl);
    qs_packed_free(&pr);
    return rc;
}

/* ---- ridge recovery map ------------------------------------------------------------------ */

/* qs_ridge_map and qs_ridge_map_info live in ridge.c. */

void qs_ridge_apply(const float *yq, int n, int d, const float *at, const float *b, float *yhat)
{
    for (int i = 0; i < n; i++)
        memcpy(yhat + (size_t)i * d, b, (size_t)d * sizeof *yhat);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, yq, d, at, d, 1.0f, yhat,
                d);
}

double qs_recovery(const float *yf, const float *yq, const float *yhat, size_t nd, int *undefined)
{
    double before = 0, after = 0;
    for (size_t i = 0; i < nd; i++) {
        double e0 = (double)yf[i] - yq[i], e1 = (double)yf[i] - yhat[i];
        before += e0 * e0;
        after += e1 * e1;
    }
    if (undefined)
        *undefined = !(before > 0);
    if (!(before > 0))
        return 0;
    return 1 - after / before;
}
