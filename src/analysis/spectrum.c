/* spectrum.c - singular-value spectra of a site's error (of=weight and of=preact, scale=none,
 * act or cov) and the noise null they are judged by. */
#include "qscope/analysis.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"
#include "qscope/moments.h"

#include "analysis_impl.h"

/* ---- spectra ------------------------------------------------------------------------- */

void qs_spectrum_free(struct qs_spectrum *sp)
{
    if (!sp)
        return;
    free(sp->sv);
    free(sp->ref_sv);
    free(sp->res_sv);
    sp->sv = sp->ref_sv = sp->res_sv = NULL;
}

/* Width of one scale block along a row of layer state s's weight (n: one per row), as the
 * kernels tile it (qs_format_block_len); the variance-profile null's blocks. */
static int null_seg(const struct qs_layer_state *s, int n)
{
    return qs_format_block_len(&s->wfmt, &s->wopt, n);
}

/* The null of the matrix `view` (values sv, statistics st) whose unscaled form is e0. */
static int label_null(const float *e0, int m, int n, const struct qs_null_view *v, uint64_t seed,
                      struct qs_rank_stats *st, qs_err *e)
{
    if (st->zero)
        return 0;
    struct qs_null nl;
    if (qs_null_edge(e0, m, n, v, 5, seed, &nl, e) < 0)
        return -1;
    qs_rank_stats_set_null(st, &nl);
    return 0;
}

/* R^(1/2), R = X^T X / n: (in, in), from the inputs' moments, in double: LAPACK dsyevd of R as
 * summed (no F32 rounding of R first), half = (V W^(1/4)) (V W^(1/4))^T by one dsyrk, rounded to
 * F32 at the end. In double the square root of a near-null direction is read to about
 * sqrt(eps_double lambda_max) instead of F32's sqrt(eps_float lambda_max) (2.4e-4 of the top
 * scale), and the product is a BLAS call instead of a scalar triple loop (a 3072-wide site). */
static int input_sqrt_cov(const struct qs_moments *mo, float *half, qs_err *e)
{
    int in = mo->in;
    size_t nn = (size_t)in * in;
    double *v = qs_alloc(nn, sizeof(double), "the inputs' covariance square root", e);
    double *h = v ? qs_alloc(nn, sizeof(double), "the inputs' covariance square root", e) : NULL;
    double *w =
        h ? qs_alloc((size_t)in, sizeof(double), "the inputs' covariance square root", e) : NULL;
    int rc = -1;
    if (!w)
        goto out;
    for (size_t k = 0; k < nn; k++)
        v[k] = mo->n > 0 ? mo->xtx[k] / (double)mo->n : 0.0;
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', in, v, in, w);
    if (info != 0) {
        qs_errf(e, "eig: LAPACK dsyevd failed on a %d x %d matrix (info %d)", in, in, (int)info);
        goto out;
    }
    for (int k = 0; k < in; k++) { /* column k of V (row-major) times w_k^(1/4) */
        double f = w[k] > 0 ? sqrt(sqrt(w[k])) : 0.0;
        for (int a = 0; a < in; a++)
            v[(size_t)a * in + k] *= f;
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, in, in, 1.0, v, in, 0.0, h, in);
    for (int a = 0; a < in; a++)
        for (int c = a; c < in; c++)
            half[(size_t)a * in + c] = half[(size_t)c * in + a] = (float)h[(size_t)a * in + c];
    rc = 0;
out:
    free(v);
    free(h);
    free(w);
    return rc;
}

static int values_of(const float *a, int m, int n, int k, uint64_t seed, double *sv, int *exact,
                     qs_err *e)
{
    int mn = m < n ? m : n;
    if (k < mn && k < mn / 4 && mn > 512) {
        /* Block Krylov, not the plain range finder: quantization error is close to white, and
         * there the range finder (p=10, q=2) reads the top-64 up to 10 % low; Krylov is within
         * 1 % (tests/unit/test_linalg.c, make bench). */
        *exact = 0;
        return qs_svd_topk_krylov(a, m, n, k, -1, -1, seed, sv, e);
    }
    *exact = 1;
    double *all = malloc((size_t)mn * sizeof *all);
    if (!all)
        return qs_errf(e, "out of memory");
    int rc = qs_svd_values(a, m, n, all, e);
    if (rc == 0)
        memcpy(sv, all, (size_t)k * sizeof *sv);
    free(all);
    return rc;
}

/* ---- of=preact from second moments ----------------------------------------------------------
 *
 * The pre-activation error D = Y_q - Y_f (rows x out, each path from its own inputs, the site's
 * correction applied as the model computes it) has the singular values sqrt(eig(D^T D)), and the
 * reference Y_f those of Y_f^T Y_f: out x out sums, accumulated window by window in double
 * (moments.h: fixed 256-row dsyrk blocks), so no rows are kept whatever the calibration size.
 * The eigenvalues come from LAPACK dsyevd in double. The squaring costs nothing that matters here:
 * a value sigma_i is read to about eps_double sigma_0^2 / sigma_i^2 relative, far below the
 * float SVD of the rows' own rounding (about eps_float sigma_0 absolute) for every value above
 * 1e-4 sigma_0; the statistics take fro2 = the eigenvalues' sum (gram_values). The null's
 * per-output-channel variances are the diagonal of D^T D over the rows. Sites of more than
 * PREACT_MOM_MAX_OUT outputs (a real vocabulary head: its out x out sums alone would be 20 GB at
 * GPT-2's 50257) keep the rows path, within the activation budget. */
#define PREACT_MOM_MAX_OUT 4096

struct preact_mom {
    struct qs_bench *b;
    int i, out;
    struct qs_moments d, f; /* of Y_q - Y_f and of Y_f */
    float *yf, *yq;         /* one batch's pre-activations (cap rows) */
    int cap;
};

static int pm_add(struct preact_mom *p, const float *yf, const float *yq, int n)
{
    size_t nd = (size_t)n * p->out;
    for (size_t k = 0; k < nd; k++)
        p->yq[k] = yq[k] - yf[k];
    qs_moments_add(&p->d, p->yq, n);
    qs_moments_add(&p->f, yf, n);
    return 0;
}

static int pm_fn(void *u, int site, int w, const float *xf, const float *xq, const float *yf,
                 const float *yq, int n, qs_err *e)
{
    (void)site, (void)w;
    struct preact_mom *p = u;
    if (n > p->cap)
        return qs_errf(e, "spectrum: a window of %d rows exceeds %d", n, p->cap);
    size_t nd = (size_t)n * p->out;
    /* as qs_bench_preact computes them: the float site on the float inputs, the quantized site
     * (its correction applied) on the quantized path's inputs */
    if (yf)
        memcpy(p->yf, yf, nd * sizeof(float));
    else if (qs_bench_layer_forward(p->b, p->i, xf, n, 0, 0, p->yf, e) < 0)
        return -1;
    const float *q = yq ? yq : yf; /* yf given: the site and all before it are the identity */
    if (!q) {
        if (qs_bench_layer_forward(p->b, p->i, xq, n, QS_ROLE_W | QS_ROLE_A, 1, p->yq, e) < 0)
            return -1;
        q = p->yq;
    }
    return pm_add(p, p->yf, q, n);
}

/* Top k values sqrt(eig(g)) of a symmetric PSD g (n, n) (destroyed), descending. Eigenvalues
 * below n eps_double lambda_max are the rounding of a null direction (the numerical rank's usual
 * threshold) and read as 0, and *sum (may be NULL) is the sum of all the values' squares in
 * descending order: so an error of rank r < k, e.g. a first layer of 2 inputs, has exactly
 * sum = sv_1^2 + ... + sv_r^2 and none of its energy left beyond r (not a rounding residue,
 * which would rank such layers by noise). */
static int gram_values(double *g, int n, int k, double *sv, double *sum, qs_err *e)
{
    double *w = malloc((size_t)n * sizeof *w);
    if (!w)
        return qs_errf(e, "out of memory");
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', n, g, n, w);
    if (info != 0) {
        free(w);
        return qs_errf(e, "spectrum: LAPACK dsyevd failed on a %d x %d matrix (info %d)", n, n,
                       (int)info);
    }
    double tol = n * 2.220446049250313e-16 * (n > 0 && w[n - 1] > 0 ? w[n - 1] : 0.0), acc = 0;
    for (int t = 0; t < n; t++) {
        double l = w[n - 1 - t] > tol ? w[n - 1 - t] : 0.0;
        if (t < k)
            sv[t] = sqrt(l);
        acc += l;
    }
    if (sum)
        *sum = acc;
    free(w);
    return 0;
}

static int spectrum_preact_moments(struct qs_bench *b, int i, int k, int flags,
                                   struct qs_spectrum *sp, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    int out = u.out, rc = -1;
    struct preact_mom p = {.b = b, .i = i, .out = out};
    float *yf = NULL, *yq = NULL;
    double *colss = NULL;
    if (qs_moments_init(&p.d, out, e) < 0 || qs_moments_init(&p.f, out, e) < 0)
        goto out;
    if (b->lm) {
        p.cap = b->lm->ctx;
        p.yf = qs_alloc((size_t)p.cap * out, sizeof(float), "a window's pre-activations", e);
        p.yq = p.yf ? qs_alloc((size_t)p.cap * out, sizeof(float), "a window's pre-activations", e)
                    : NULL;
        unsigned char *want = p.yq ? qs_calloc((size_t)qs_bench_nunits(b), 1) : NULL;
        if (!want) {
            if (p.yq)
                qs_errf(e, "out of memory");
            goto out;
        }
        want[i] = 1;
        int r2 = qs_bench_stream(b, QS_CALIB, want, 1, pm_fn, &p, e);
        free(want);
        if (r2 < 0)
            goto out;
    } else { /* an MLP keeps its pre-activations: the same rows, added in the same blocks */
        int n;
        if (qs_bench_preact(b, QS_CALIB, 0, i, &yf, &n, e) < 0 ||
            qs_bench_preact(b, QS_CALIB, 1, i, &yq, &n, e) < 0)
            goto out;
        p.yq = yq; /* D overwrites yq: pm_add reads yq[k] before writing it */
        pm_add(&p, yf, yq, n);
        p.yq = NULL;
    }
    qs_moments_finish(&p.d);
    qs_moments_finish(&p.f);
    int m = (int)p.d.n, mn = m < out ? m : out;
    if (k <= 0)
        k = mn;
    if (k > mn) {
        qs_errf(e, "spectrum: k=%d exceeds the rank bound min(%d, %d) = %d of %s", k, m, out, mn,
                u.name);
        goto out;
    }
    sp->layer = i;
    sp->of = QS_SPEC_PREACT;
    sp->scale = QS_SCALE_NONE;
    sp->m = m;
    sp->n = out;
    sp->nsv = k;
    sp->exact = 1;
    sp->sv = qs_calloc((size_t)k, sizeof(double));
    sp->ref_sv = qs_calloc((size_t)k, sizeof(double));
    colss = malloc((size_t)out * sizeof *colss);
    if (!sp->sv || !sp->ref_sv || !colss) {
        qs_errf(e, "out of memory");
        goto out;
    }
    double tr = 0.0, fro2 = 0.0; /* fro2: the eigenvalues' sum, tr(D^T D) to rounding */
    for (int j = 0; j < out; j++)
        tr += colss[j] = p.d.xtx[(size_t)j * out + j];
    if (tr > 0 && gram_values(p.d.xtx, out, k, sp->sv, &fro2, e) < 0)
        goto out;
    if (gram_values(p.f.xtx, out, k, sp->ref_sv, NULL, e) < 0)
        goto out;
    qs_rank_stats_compute(sp->sv, k, fro2, m, out, &sp->st);
    if (flags & QS_SPEC_NULL) { /* seeded as the rows path seeds it */
        uint64_t ns = b->seed ^ ((uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL);
        struct qs_null_view v = {.seg = out, .by_col = 1, .colss = colss};
        if (label_null(NULL, m, out, &v, ns, &sp->st, e) < 0)
            goto out;
    }
    rc = 0;
out:
    qs_moments_free(&p.d);
    qs_moments_free(&p.f);
    if (b->lm) {
        free(p.yf);
        free(p.yq);
    }
    free(yf);
    free(yq);
    free(colss);
    if (rc < 0)
        qs_spectrum_free(sp);
    return rc;
}

int qs_analysis_spectrum(struct qs_bench *b, int i, enum qs_spec_of of, enum qs_spec_scale scale,
                         int k, struct qs_spectrum *sp, qs_err *e)
{
    return qs_analysis_spectrum_ex(b, i, of, scale, k, 0, sp, e);
}

int qs_analysis_spectrum_ex(struct qs_bench *b, int i, enum qs_spec_of of, enum qs_spec_scale scale,
                            int k, int flags, struct qs_spectrum *sp, qs_err *e)
{
    memset(sp, 0, sizeof *sp);
    float *yf = NULL, *yq = NULL; /* of=preact: the calibration pre-activations */
    int rows = 0;
    if (qs_bench_update(b, e) < 0)
        return -1;
    if (of == QS_SPEC_PREACT && scale != QS_SCALE_NONE)
        return qs_errf(e, "spectrum: scale=act|cov applies to of=weight only");
    if (of == QS_SPEC_PREACT && qs_an_unit_out(b, i) <= PREACT_MOM_MAX_OUT)
        return spectrum_preact_moments(b, i, k, flags, sp, e);
    if (of == QS_SPEC_PREACT && (qs_bench_preact(b, QS_CALIB, 0, i, &yf, &rows, e) < 0 ||
                                 qs_bench_preact(b, QS_CALIB, 1, i, &yq, &rows, e) < 0)) {
        free(yf);
        return -1;
    }
    struct qs_unit unit, *l = &unit;
    qs_bench_unit(b, i, &unit);
    const struct qs_layer_state *s = &b->ls[i];
    /* the float calibration inputs' moments of unit i (cached), when the view needs them: no
     * rows are read, whatever the calibration size */
    const struct qs_moments *mo = NULL;
    if (of == QS_SPEC_WEIGHT && scale != QS_SCALE_NONE &&
        qs_bench_site_moments_cached(b, i, QS_CALIB, 0, &mo, e) < 0) {
        free(yf);
        free(yq);
        return -1;
    }
    int m, n;
    float *err = NULL, *ref = NULL, *half = NULL;
    float *res = NULL, *cs = NULL, *e0 = NULL, *r0 = NULL; /* residual, act scales, unscaled */
    if (of == QS_SPEC_PREACT) {
        if (scale != QS_SCALE_NONE) {
            free(yf);
            free(yq);
            return qs_errf(e, "spectrum: scale=act|cov applies to of=weight only");
        }
        m = rows;
        n = l->out;
    } else {
        m = l->out;
        n = l->in;
    }
    int mn = m < n ? m : n;
    if (k <= 0)
        k = mn;
    if (k > mn) {
        free(yf);
        free(yq);
        return qs_errf(e, "spectrum: k=%d exceeds the rank bound min(%d, %d) = %d of %s", k, m, n,
                       mn, l->name);
    }
    size_t len = (size_t)m * n;
    err = malloc(len * sizeof(float));
    ref = malloc(len * sizeof(float));
    sp->sv = qs_calloc((size_t)k, sizeof(double));
    sp->ref_sv = qs_calloc((size_t)k, sizeof(double));
    int rc = -1;
    if (!err || !ref || !sp->sv || !sp->ref_sv) {
        qs_errf(e, "out of memory");
        goto out;
    }
    if (of == QS_SPEC_PREACT) {
        for (size_t j = 0; j < len; j++) {
            err[j] = yq[j] - yf[j];
            ref[j] = yf[j];
        }
    } else {
        const float *wq = NULL, *lw;
        if ((s->wquant && !(wq = qs_site_wq(b, i, e))) || !(lw = qs_bench_w(b, i, e)))
            goto out;
        for (size_t j = 0; j < len; j++) {
            err[j] = wq ? lw[j] - wq[j] : 0.0f;
            ref[j] = lw[j];
        }
        enum qs_corr_method cm = s->corr.method;
        if (cm != QS_CORR_NONE)
            sp->resid_method = qs_corr_name(cm);
        if (cm == QS_CORR_NONE || !(flags & QS_SPEC_RESID)) {
            sp->resid = 0;
        } else if (cm != QS_CORR_LOWRANK && cm != QS_CORR_LQER && cm != QS_CORR_QERA &&
                   cm != QS_CORR_EORA) {
            sp->resid = -1;     /* bias / linear / clocal act on the outputs */
        } else if (s->corr.c) { /* W - (Q(W) + C) = E - C */
            sp->resid = 1;
            res = malloc(len * sizeof(float));
            sp->res_sv = qs_calloc((size_t)k, sizeof(double));
            if (!res || !sp->res_sv) {
                qs_errf(e, "out of memory");
                goto out;
            }
            for (size_t j = 0; j < len; j++)
                res[j] = err[j] - s->corr.c[j];
        }
        if ((flags & QS_SPEC_NULL) && scale != QS_SCALE_NONE) { /* the nulls' profiles */
            e0 = malloc(len * sizeof(float));
            r0 = res ? malloc(len * sizeof(float)) : NULL;
            if (!e0 || (res && !r0)) {
                qs_errf(e, "out of memory");
                goto out;
            }
            memcpy(e0, err, len * sizeof(float));
            if (res)
                memcpy(r0, res, len * sizeof(float));
        }
        if (scale == QS_SCALE_ACT) { /* E diag(s), s_j = RMS of input channel j */
            cs = malloc((size_t)n * sizeof(float));
            if (!cs) {
                qs_errf(e, "out of memory");
                goto out;
            }
            for (int c = 0; c < n; c++) { /* the diagonal of X^T X: each channel's sum x^2 */
                double ss = mo->n > 0 ? mo->xtx[(size_t)c * n + c] / (double)mo->n : 0.0;
                float sc = cs[c] = (float)sqrt(ss);
                for (int r = 0; r < m; r++) {
                    err[(size_t)r * n + c] *= sc;
                    ref[(size_t)r * n + c] *= sc;
                    if (res)
                        res[(size_t)r * n + c] *= sc;
                }
            }
        } else if (scale == QS_SCALE_COV) { /* E R^(1/2), R = E[x x^T] of the inputs */
            half = malloc((size_t)n * n * sizeof(float));
            float *t = malloc(len * sizeof(float));
            if (!half || !t || input_sqrt_cov(mo, half, e) < 0) {
                free(t);
                if (!half)
                    qs_errf(e, "out of memory");
                goto out;
            }
            qs_linear(err, m, n, half, NULL, n, t); /* half is symmetric: err half^T = err half */
            memcpy(err, t, len * sizeof(float));
            qs_linear(ref, m, n, half, NULL, n, t);
            memcpy(ref, t, len * sizeof(float));
            if (res) {
                qs_linear(res, m, n, half, NULL, n, t);
                memcpy(res, t, len * sizeof(float));
            }
            free(t);
        }
    }
    sp->layer = i;
    sp->of = of;
    sp->scale = scale;
    sp->m = m;
    sp->n = n;
    sp->nsv = k;
    double fro2 = qs_frob2(err, len);
    if (fro2 > 0) {
        if (values_of(err, m, n, k, b->seed, sp->sv, &sp->exact, e) < 0)
            goto out;
    } else {
        sp->exact = 1; /* an all-zero error: all-zero spectrum, reported as such */
    }
    int ex;
    if (values_of(ref, m, n, k, b->seed, sp->ref_sv, &ex, e) < 0)
        goto out;
    qs_rank_stats_compute(sp->sv, k, fro2, m, n, &sp->st);
    if (res) {
        double rf2 = qs_frob2(res, len);
        if (rf2 > 0 && values_of(res, m, n, k, b->seed, sp->res_sv, &ex, e) < 0)
            goto out;
        qs_rank_stats_compute(sp->res_sv, k, rf2, m, n, &sp->res_st);
    }
    if (flags & QS_SPEC_NULL) {
        /* seeded by the session seed and the layer, so a verdict reproduces */
        uint64_t ns = b->seed ^ ((uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL);
        struct qs_null_view v = {.seg = of == QS_SPEC_WEIGHT ? null_seg(s, n) : n,
                                 .by_col = of == QS_SPEC_PREACT,
                                 .colscale = cs,
                                 .mix = half};
        if (label_null(e0 ? e0 : err, m, n, &v, ns, &sp->st, e) < 0 ||
            (res && label_null(r0 ? r0 : res, m, n, &v, ns + 1, &sp->res_st, e) < 0))
            goto out;
    }
    rc = 0;
out:
    free(err);
    free(ref);
    free(half);
    free(res);
    free(cs);
    free(e0);
    free(r0);
    free(yf);
    free(yq);
    if (rc < 0)
        qs_spectrum_free(sp);
    return rc;
}
