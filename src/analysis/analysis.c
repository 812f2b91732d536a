/* analysis.c - error statistics, spectra, corrections and the non-capacity ablation. */
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

static double sq_diff(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t j = 0; j < n; j++) {
        double d = (double)a[j] - b[j];
        s += d * d;
    }
    return s;
}

static int unit_out(const struct qs_bench *b, int i)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    return u.out;
}

static double db_of(double rel) { return rel > 0 ? -10.0 * log10(rel) : INFINITY; }

/* Site i's input rows on split sp along a path: an MLP's caches, a transformer's one-site row
 * cache (qs_bench_site_rows, within the activation budget). NULL with e on failure. */
static const float *site_x(struct qs_bench *b, int i, enum qs_split_id sp, int quant, int *n,
                           qs_err *e)
{
    if (b->lm) {
        if (qs_bench_site_rows(b, i, e) < 0)
            return NULL;
        *n = b->rows.n[sp];
        return quant ? b->rows.xq[sp] : b->rows.xf[sp];
    }
    if (qs_bench_update(b, e) < 0)
        return NULL;
    const struct qs_acts *a = quant ? &b->q_acts[sp] : &b->f_acts[sp];
    *n = a->n;
    return a->in[i];
}

int qs_bench_preact(struct qs_bench *b, enum qs_split_id sp, int quant, int i, float **y,
                    int *n, qs_err *e)
{
    *y = NULL;
    const float *x = site_x(b, i, sp, quant, n, e);
    if (!x)
        return -1;
    const struct qs_acts *a = quant ? &b->q_acts[sp] : &b->f_acts[sp];
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    float *out = qs_alloc((size_t)*n * u.out, sizeof(float), "the pre-activations", e);
    if (!out)
        return -1;
    if (!b->lm && a->pre) { /* the MLP keeps them: the same bits as recomputing them */
        memcpy(out, a->pre[i], (size_t)a->n * u.out * sizeof(float));
    } else if (qs_bench_layer_forward(b, i, x, *n, quant ? QS_ROLE_W | QS_ROLE_A : 0, quant, out,
                                      e) < 0) {
        free(out);
        return -1;
    }
    *y = out;
    return 0;
}

static int lm_errors(struct qs_bench *b, struct qs_layer_err *err, int want_kl, qs_err *e);

int qs_analysis_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e)
{
    return qs_analysis_errors_ex(b, err, QS_KL_AUTO, e);
}

int qs_analysis_errors_ex(struct qs_bench *b, struct qs_layer_err *err, enum qs_kl_mode kl,
                          qs_err *e)
{
    if (b->lm)
        return lm_errors(b, err, kl == QS_KL_ON || (kl == QS_KL_AUTO &&
                                                    qs_analysis_kl_cost(b) <= QS_KL_AUTO_MAX),
                         e);
    (void)kl; /* an MLP's KL runs are cheap: always */
    if (qs_bench_update(b, e) < 0)
        return -1;
    int S = qs_bench_nunits(b);
    double kl_sum = 0.0;
    int rc = 0;
    for (int i = 0; i < S && rc == 0; i++) {
        struct qs_unit l;
        qs_bench_unit(b, i, &l);
        const struct qs_layer_state *s = &b->ls[i];
        struct qs_layer_err *r = &err[i];
        memset(r, 0, sizeof *r);
        float *yf = NULL, *yq = NULL, *tmp = NULL;
        int n;
        if (qs_bench_preact(b, QS_CALIB, 0, i, &yf, &n, e) < 0 ||
            qs_bench_preact(b, QS_CALIB, 1, i, &yq, &n, e) < 0 ||
            !(tmp = qs_alloc((size_t)n * l.out, sizeof(float), "the pre-activations", e))) {
            rc = -1;
            goto next;
        }
        const float *xf = b->f_acts[QS_CALIB].in[i];
        size_t len = (size_t)n * l.out;
        double den = qs_frob2(yf, len), num = sq_diff(yq, yf, len), dot = 0;
        double nq = qs_frob2(yq, len);
        for (size_t j = 0; j < len; j++)
            dot += (double)yq[j] * yf[j];
        r->w_rel_err = s->w_rel_err;
        r->preact_rel_mse = den > 0 ? num / den : 0.0;
        r->snr_db = db_of(r->preact_rel_mse);
        r->cosine = den > 0 && nq > 0 ? dot / sqrt(den * nq) : 1.0;
        if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W | QS_ROLE_A, 1, tmp, e)))
            goto next;
        r->local_rel_mse = den > 0 ? sq_diff(tmp, yf, len) / den : 0.0;
        r->local_snr_db = db_of(r->local_rel_mse);
        if (s->wfmt.kind != QS_FMT_NONE && s->afmt.kind != QS_FMT_NONE && den > 0) {
            double both;
            r->has_attr = 1;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W, 0, tmp, e)))
                goto next;
            r->w_only = sq_diff(tmp, yf, len) / den;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_A, 0, tmp, e)))
                goto next;
            r->a_only = sq_diff(tmp, yf, len) / den;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W | QS_ROLE_A, 0, tmp, e)))
                goto next;
            both = sq_diff(tmp, yf, len) / den;
            r->interaction = both - r->w_only - r->a_only;
        }
        if (s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) {
            struct qs_metric m;
            uint64_t bit = 1ULL << (i < 63 ? i : 63);
            if ((rc = qs_bench_run_ex(b, QS_TEST, bit, bit, &m, NULL, &r->kl_alone, NULL, e)))
                goto next;
            kl_sum += r->kl_alone;
        }
    next:
        free(yf);
        free(yq);
        free(tmp);
    }
    for (int i = 0; rc == 0 && i < S; i++)
        err[i].kl_share = kl_sum > 0 ? err[i].kl_alone / kl_sum : 0.0;
    return rc;
}

/* ---- error on a transformer: one streaming pass of sums ------------------------------------ */

/* A site's sums over the calibration windows, each accumulated element by element in row order
 * (windows after one another), as qs_frob2 / sq_diff sum the rows of a whole split: ||Y_f||^2,
 * ||Y_q - Y_f||^2, ||Y_q||^2, <Y_q, Y_f> (propagated), then the local ||Y_l - Y_f||^2 and the
 * attributions (weights only, activations only, both; each without the correction). */
enum { ES_DEN, ES_NUM, ES_NQ, ES_DOT, ES_LOCAL, ES_W, ES_A, ES_BOTH, QS_ERRSUM };

/* Rows of a window computed at a time for sites with wide outputs (the vocabulary head): a
 * window's pre-activations of such a site would be ctx x vocab floats per path. */
#define ERR_CHUNK_BYTES ((size_t)16 << 20)

struct err_ctx {
    struct qs_bench *b;
    double *sum; /* nsites x QS_ERRSUM */
};

/* *acc += ||a - b||^2, element by element onto the running sum (the order of one sum over every
 * row of the split) */
static void acc_diff(double *acc, const float *a, const float *b, size_t n)
{
    double s = *acc;
    for (size_t j = 0; j < n; j++) {
        double d = (double)a[j] - b[j];
        s += d * d;
    }
    *acc = s;
}

static void acc_pair(double *sm, const float *yq, const float *yf, size_t len)
{
    for (size_t j = 0; j < len; j++)
        sm[ES_DEN] += (double)yf[j] * yf[j];
    for (size_t j = 0; j < len; j++) {
        double d = (double)yq[j] - yf[j];
        sm[ES_NUM] += d * d;
    }
    for (size_t j = 0; j < len; j++)
        sm[ES_NQ] += (double)yq[j] * yq[j];
    for (size_t j = 0; j < len; j++)
        sm[ES_DOT] += (double)yq[j] * yf[j];
}

/* y = site i on rows [r0, r0 + nr) of x, roles quant, correction corr; xa: x with the site's
 * activation quantization applied to the whole window (as the forward applies it), used when
 * quant has QS_ROLE_A. */
static int rows_forward(struct qs_bench *b, int i, const float *x, const float *xa, int in,
                        int r0, int nr, int quant, int corr, float *y, qs_err *e)
{
    const float *src = x;
    if (xa && (quant & QS_ROLE_A) && b->ls[i].afmt.kind != QS_FMT_NONE) {
        src = xa;
        quant &= ~QS_ROLE_A;
    }
    return qs_bench_layer_forward(b, i, src + (size_t)r0 * in, nr, quant, corr, y, e);
}

static int err_fn(void *u, int i, int w, const float *xf, const float *xq, const float *yf_given,
                  const float *yq_given, int n, qs_err *e)
{
    (void)w;
    struct err_ctx *c = u;
    struct qs_bench *b = c->b;
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    const struct qs_layer_state *s = &b->ls[i];
    double *sm = c->sum + (size_t)i * QS_ERRSUM;
    int ident = qs_bench_site_identity(b, i), attr = s->wfmt.kind != QS_FMT_NONE &&
                                                     s->afmt.kind != QS_FMT_NONE;
    int actq = s->afmt.kind != QS_FMT_NONE;
    size_t rowb = (size_t)l.out * sizeof(float);
    int chunk = n;
    if ((size_t)n * rowb > ERR_CHUNK_BYTES && !(yf_given && (xq == xf)))
        chunk = (int)(ERR_CHUNK_BYTES / rowb) > 0 ? (int)(ERR_CHUNK_BYTES / rowb) : 1;
    float *yf = NULL, *yq = NULL, *t = NULL, *xfa = NULL, *xqa = NULL;
    int rc = -1;
    if (!(yf = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)) ||
        !(yq = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)) ||
        !(t = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)))
        goto out;
    if (actq && chunk < n) { /* the whole window's activation quantization, as the forward
                                does it, before its rows are taken in chunks */
        if (!(xfa = qs_alloc((size_t)n * l.in, sizeof(float), "the quantized inputs", e)) ||
            !(xqa = qs_alloc((size_t)n * l.in, sizeof(float), "the quantized inputs", e)) ||
            qs_bench_act_quant(s, xf, n, l.in, xfa, e) < 0 ||
            qs_bench_act_quant(s, xq, n, l.in, xqa, e) < 0)
            goto out;
    }
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int nr = n - r0 < chunk ? n - r0 : chunk;
        size_t len = (size_t)nr * l.out;
        const float *pf, *pq;
        if (yf_given) { /* before the first non-identity site: the two paths agree */
            pf = pq = yf_given + (size_t)r0 * l.out;
        } else {
            if (rows_forward(b, i, xf, xfa, l.in, r0, nr, 0, 0, yf, e) < 0)
                goto out;
            pf = yf;
            if (yq_given) {
                pq = yq_given + (size_t)r0 * l.out;
            } else if (ident && xq == xf) {
                pq = pf;
            } else {
                if (rows_forward(b, i, xq, xqa, l.in, r0, nr, QS_ROLE_W | QS_ROLE_A, 1, yq, e) < 0)
                    goto out;
                pq = yq;
            }
        }
        acc_pair(sm, pq, pf, len);
        if (ident) { /* the site computes as the float one from the float input */
            continue;
        }
        if (rows_forward(b, i, xf, xfa, l.in, r0, nr, QS_ROLE_W | QS_ROLE_A, 1, t, e) < 0)
            goto out;
        acc_diff(&sm[ES_LOCAL], t, pf, len);
        if (attr) {
            static const int roles[3] = {QS_ROLE_W, QS_ROLE_A, QS_ROLE_W | QS_ROLE_A};
            for (int k = 0; k < 3; k++) {
                if (rows_forward(b, i, xf, xfa, l.in, r0, nr, roles[k], 0, t, e) < 0)
                    goto out;
                acc_diff(&sm[ES_W + k], t, pf, len);
            }
        }
    }
    rc = 0;
out:
    free(yf);
    free(yq);
    free(t);
    free(xfa);
    free(xqa);
    return rc;
}

static struct qs_site_err_cache *errc_of(struct qs_bench *b, qs_err *e)
{
    int S = qs_bench_nunits(b);
    if (b->errc && b->errc->nsites == S)
        return b->errc;
    qs_site_err_cache_free(b->errc);
    struct qs_site_err_cache *c = b->errc = qs_calloc(1, sizeof *c);
    if (!c || !(c->sum = qs_calloc((size_t)S * QS_ERRSUM, sizeof(double))) ||
        !(c->kl = qs_calloc((size_t)S, sizeof(double))) ||
        !(c->kl_ok = qs_calloc((size_t)S, 1))) {
        qs_site_err_cache_free(c);
        b->errc = NULL;
        qs_errf(e, "out of memory");
        return NULL;
    }
    c->nsites = S;
    return c;
}

/* error on a transformer: the sums of the sites not kept (the sites from the last change on) in
 * one streaming pass over the calibration windows, and each quantized site's KL run (kept until
 * that site changes). */
double qs_analysis_kl_cost(struct qs_bench *b)
{
    if (!b->lm || !b->tokens)
        return 0.0;
    qs_err e;
    int S = qs_bench_nunits(b), nw = qs_bench_split_units(b, QS_TEST, &e), runs = 0;
    const struct qs_site_err_cache *c = b->errc;
    for (int i = 0; i < S; i++)
        if ((b->ls[i].wfmt.kind != QS_FMT_NONE || b->ls[i].afmt.kind != QS_FMT_NONE) &&
            !(c && c->nsites == S && c->kl_ok[i]))
            runs++;
    return nw > 0 ? (double)qs_lm_nparams(b->lm) * nw * b->lm->ctx * runs : 0.0;
}

static int lm_errors(struct qs_bench *b, struct qs_layer_err *err, int want_kl, qs_err *e)
{
    if (qs_bench_update(b, e) < 0)
        return -1;
    int S = qs_bench_nunits(b);
    struct qs_site_err_cache *c = errc_of(b, e);
    if (!c)
        return -1;
    if (c->valid < S) {
        unsigned char *want = qs_calloc((size_t)S, 1);
        if (!want)
            return qs_errf(e, "out of memory");
        for (int i = c->valid; i < S; i++) {
            want[i] = 1;
            memset(c->sum + (size_t)i * QS_ERRSUM, 0, QS_ERRSUM * sizeof(double));
        }
        struct err_ctx ec = {b, c->sum};
        int rc = qs_bench_stream(b, QS_CALIB, want, 1, err_fn, &ec, e);
        free(want);
        if (rc < 0)
            return -1;
        c->valid = S;
    }
    double kl_sum = 0.0;
    for (int i = 0; i < S; i++) {
        const struct qs_layer_state *s = &b->ls[i];
        const double *sm = c->sum + (size_t)i * QS_ERRSUM;
        struct qs_layer_err *r = &err[i];
        memset(r, 0, sizeof *r);
        double den = sm[ES_DEN], nq = sm[ES_NQ];
        r->w_rel_err = s->w_rel_err;
        r->preact_rel_mse = den > 0 ? sm[ES_NUM] / den : 0.0;
        r->snr_db = db_of(r->preact_rel_mse);
        r->cosine = den > 0 && nq > 0 ? sm[ES_DOT] / sqrt(den * nq) : 1.0;
        r->local_rel_mse = den > 0 ? sm[ES_LOCAL] / den : 0.0;
        r->local_snr_db = db_of(r->local_rel_mse);
        if (s->wfmt.kind != QS_FMT_NONE && s->afmt.kind != QS_FMT_NONE && den > 0) {
            r->has_attr = 1;
            r->w_only = sm[ES_W] / den;
            r->a_only = sm[ES_A] / den;
            r->interaction = sm[ES_BOTH] / den - r->w_only - r->a_only;
        }
        if ((s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) && !want_kl &&
            !c->kl_ok[i]) {
            r->kl_alone = NAN; /* not asked for, not kept */
        } else if (s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) {
            if (!c->kl_ok[i]) {
                struct qs_metric m;
                uint64_t bit = 1ULL << (i < 63 ? i : 63);
                if (qs_bench_run_ex(b, QS_TEST, bit, bit, &m, NULL, &c->kl[i], NULL, e) < 0)
                    return -1;
                c->kl_ok[i] = 1;
            }
            r->kl_alone = c->kl[i];
            kl_sum += r->kl_alone;
        }
    }
    int all = 1;
    for (int i = 0; i < S; i++)
        all &= !isnan(err[i].kl_alone);
    for (int i = 0; i < S; i++) /* a share of a partial sum would mislead: all or none */
        err[i].kl_share = !all ? NAN : kl_sum > 0 ? err[i].kl_alone / kl_sum : 0.0;
    if (!all)
        for (int i = 0; i < S; i++)
            err[i].kl_alone = NAN;
    return 0;
}

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

/* Width of one scale block along a row of layer state s's weight (n: one per row), as
 * job_init in pack.c tiles it; the variance-profile null's blocks. */
static int null_seg(const struct qs_layer_state *s, int n)
{
    const struct qs_format *f = &s->wfmt;
    const struct qs_qopts *o = &s->wopt;
    int seg = n;
    if (f->kind == QS_FMT_MX || f->kind == QS_FMT_NVFP4 || f->kind == QS_FMT_GGML)
        seg = f->block;
    else if (f->kind == QS_FMT_NF4)
        seg = o->gran == QS_GRAN_GROUP ? o->group
              : o->gran == QS_GRAN_CHANNEL ? n : (f->block > 0 ? f->block : 64);
    else if (!o->scale_none && o->gran == QS_GRAN_GROUP)
        seg = o->group;
    return seg < 1 || seg > n ? n : seg;
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
    double *w = h ? qs_alloc((size_t)in, sizeof(double), "the inputs' covariance square root", e)
                  : NULL;
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
        p.yq = p.yf ? qs_alloc((size_t)p.cap * out, sizeof(float), "a window's pre-activations",
                               e)
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

int qs_analysis_spectrum_ex(struct qs_bench *b, int i, enum qs_spec_of of,
                            enum qs_spec_scale scale, int k, int flags, struct qs_spectrum *sp,
                            qs_err *e)
{
    memset(sp, 0, sizeof *sp);
    float *yf = NULL, *yq = NULL; /* of=preact: the calibration pre-activations */
    int rows = 0;
    if (qs_bench_update(b, e) < 0)
        return -1;
    if (of == QS_SPEC_PREACT && scale != QS_SCALE_NONE)
        return qs_errf(e, "spectrum: scale=act|cov applies to of=weight only");
    if (of == QS_SPEC_PREACT && unit_out(b, i) <= PREACT_MOM_MAX_OUT)
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
        return qs_errf(e, "spectrum: k=%d exceeds the rank bound min(%d, %d) = %d of %s", k, m,
                       n, mn, l->name);
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
        for (size_t j = 0; j < len; j++) {
            err[j] = s->wq ? l->w[j] - s->wq[j] : 0.0f;
            ref[j] = l->w[j];
        }
        enum qs_corr_method cm = s->corr.method;
        if (cm != QS_CORR_NONE)
            sp->resid_method = qs_corr_name(cm);
        if (cm == QS_CORR_NONE || !(flags & QS_SPEC_RESID)) {
            sp->resid = 0;
        } else if (cm != QS_CORR_LOWRANK && cm != QS_CORR_LQER && cm != QS_CORR_QERA &&
                   cm != QS_CORR_EORA) {
            sp->resid = -1; /* bias / linear / clocal act on the outputs */
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

/* ---- corrections --------------------------------------------------------------------- */

void qs_analysis_uncorrect(struct qs_bench *b, int i)
{
    qs_corr_clear(&b->ls[i].corr);
    qs_bench_invalidate(b, i);
    qs_bench_mark_stale(b, i);
}

long qs_corr_params(const struct qs_bench *b, int i) { return b->ls[i].corr.params; }

int qs_corr_prec_parse(const char *prec, struct qs_format *f, qs_err *e)
{
    memset(f, 0, sizeof *f);
    if (!prec || !strcmp(prec, "float"))
        return 0; /* kind NONE: F32 factors */
    qs_err e2;
    if (qs_format_parse(prec, f, &e2) < 0 || f->kind == QS_FMT_NONE)
        return qs_errf(e, "prec=%s: expected float or a weight format for the factors (int8, "
                          "int4, fp8-e4m3, fp8-e5m2, nf4, mxfp4, ...)", prec);
    return 0;
}

int qs_corr_fit_lowrank(enum qs_corr_method m, const float *ew, int out, int in, const float *x,
                        int n, int rank, const char *prec, struct qs_corr *c, qs_err *e)
{
    struct qs_moments mo;
    memset(&mo, 0, sizeof mo);
    if (m != QS_CORR_LOWRANK && qs_moments_of_rows(&mo, x, n, in, e) < 0)
        return -1;
    int rc = qs_corr_fit_lowrank_m(m, ew, out, in, m != QS_CORR_LOWRANK ? &mo : NULL, rank, prec,
                                   c, e);
    qs_moments_free(&mo);
    return rc;
}

int qs_corr_fit_lowrank_m(enum qs_corr_method m, const float *ew, int out, int in,
                          const struct qs_moments *mo, int rank, const char *prec,
                          struct qs_corr *c, qs_err *e)
{
    struct qs_format pf;
    if (qs_corr_prec_parse(prec, &pf, e) < 0)
        return -1;
    if (m != QS_CORR_LOWRANK && m != QS_CORR_LQER && m != QS_CORR_QERA && m != QS_CORR_EORA)
        return qs_errf(e, "%s is not a low-rank correction", qs_corr_name(m));
    if (m != QS_CORR_LOWRANK && (!mo || mo->in != in || !mo->xtx))
        return qs_errf(e, "%s: the inputs' moments are missing", qs_corr_name(m));
    int mn = out < in ? out : in;
    if (rank < 1 || rank > mn)
        return qs_errf(e, "rank %d is out of range: min(out, in) = min(%d, %d) = %d", rank, out,
                       in, mn);
    memset(c, 0, sizeof *c);
    c->method = m;
    snprintf(c->prec, sizeof c->prec, "%s", pf.kind == QS_FMT_NONE ? "float" : pf.name);
    c->c = qs_alloc((size_t)out * in, sizeof(float), "the low-rank correction", e);
    c->l = c->c ? qs_alloc((size_t)out * rank, sizeof(float), "its left factor", e) : NULL;
    c->rt = c->l ? qs_alloc((size_t)rank * in, sizeof(float), "its right factor", e) : NULL;
    if (!c->rt) {
        qs_corr_clear(c);
        return -1;
    }
    int r2 = 0;
    if (m == QS_CORR_LOWRANK) {
        r2 = qs_lowrank_lorc(ew, out, in, rank, c->c, c->l, c->rt, e);
    } else if (m == QS_CORR_LQER) { /* s_j = mean |x_j| over the calibration inputs */
        float *sc = qs_calloc((size_t)in, sizeof(float));
        if (!sc) {
            qs_corr_clear(c);
            return qs_errf(e, "out of memory");
        }
        qs_moments_absmean(mo, sc);
        r2 = qs_lowrank_lqer(ew, out, in, sc, rank, c->c, c->l, c->rt, e);
        free(sc);
    } else { /* R = X^T X / n */
        float *rxx = qs_alloc((size_t)in * in, sizeof(float), "the inputs' autocorrelation", e);
        if (!rxx) {
            qs_corr_clear(c);
            return -1;
        }
        qs_moments_gram(mo, rxx);
        r2 = (m == QS_CORR_QERA ? qs_lowrank_qera : qs_lowrank_eora)(ew, out, in, rxx, 0.01, rank,
                                                                     c->c, c->l, c->rt, e);
        free(rxx);
    }
    c->rank = rank;
    c->params = (long)rank * (out + in);
    c->bits = 32.0 * c->params;
    size_t bytes = 0;
    /* quantized factors: c is recomputed from them, so every recovery measured afterwards is the
     * one the quantized correction achieves; bits from the packed factors */
    if (r2 == 0 && pf.kind != QS_FMT_NONE &&
        (r2 = qs_lowrank_quantize(&pf, c->l, c->rt, out, in, rank, c->c, &bytes, e)) == 0)
        c->bits = 8.0 * (double)bytes;
    if (r2 < 0) {
        qs_corr_clear(c);
        return -1;
    }
    return 0;
}

/* Pre-activations of a teacher model at layer i for inputs x: (n, d). */
static int teacher_pre(const struct qs_mlp *t, int i, const float *x, int n, float *pre, qs_err *e)
{
    int width = qs_mlp_max_width(t);
    float *cur = malloc((size_t)n * width * sizeof(float));
    float *nxt = malloc((size_t)n * width * sizeof(float));
    if (!cur || !nxt) {
        free(cur);
        free(nxt);
        return qs_errf(e, "out of memory");
    }
    memcpy(cur, x, (size_t)n * t->layers[0].in * sizeof(float));
    for (int k = 0; k <= i; k++) {
        const struct qs_layer *l = &t->layers[k];
        qs_linear(cur, n, l->in, l->w, l->b, l->out, k == i ? pre : nxt);
        if (k < i) {
            qs_act_apply(l->act, nxt, (size_t)n * l->out);
            float *tt = cur;
            cur = nxt;
            nxt = tt;
        }
    }
    free(cur);
    free(nxt);
    return 0;
}

/* Quantizes a linear map A (out, out) per output row in place with intB; returns packed bytes. */
static long quantize_map(float *a, int d, const char *prec, qs_err *e)
{
    struct qs_format f;
    struct qs_qopts o;
    struct qs_packed p;
    if (qs_format_parse(prec, &f, e) < 0)
        return -1;
    qs_qopts_default(&o);
    o.gran = QS_GRAN_CHANNEL;
    memset(&p, 0, sizeof p);
    if (qs_quant_pack(&f, &o, a, d, d, &p, e) < 0 || qs_quant_unpack(&p, a, e) < 0) {
        qs_packed_free(&p);
        return -1;
    }
    long bytes = (long)qs_packed_bytes(&p);
    qs_packed_free(&p);
    return bytes;
}

/* Fits the ridge map from yq to yt (n, d), or from the sums acc of a stream (yt NULL, yq NULL);
 * stores A = at^T and mb into c. */
static int fit_map_any(const float *yq, const float *yt, int n, int d, struct qs_ridge_acc *acc,
                       double lambda, struct qs_corr *c, qs_err *e)
{
    float *at = malloc((size_t)d * d * sizeof(float));
    c->amap = malloc((size_t)d * d * sizeof(float));
    c->mb = malloc((size_t)d * sizeof(float));
    if (!at || !c->amap || !c->mb) {
        free(at);
        return qs_errf(e, "out of memory");
    }
    struct qs_ridge_info info;
    if ((acc ? qs_ridge_acc_solve(acc, lambda, at, c->mb, &info, e)
             : qs_ridge_map_info(yq, yt, n, d, lambda, at, c->mb, &info, e)) < 0) {
        free(at);
        return -1;
    }
    for (int r = 0; r < d; r++)
        for (int k = 0; k < d; k++)
            c->amap[(size_t)r * d + k] = at[(size_t)k * d + r];
    c->lambda = info.lambda;
    c->rank_kept = info.rank_kept;
    free(at);
    return 0;
}

static int fit_map(const float *yq, const float *yt, int n, int d, double lambda, struct qs_corr *c,
                   qs_err *e)
{
    return fit_map_any(yq, yt, n, d, NULL, lambda, c, e);
}

int qs_corr_fit_bias(const float *yf, const float *yq, int n, int d, struct qs_corr *c)
{
    c->db = qs_calloc((size_t)d, sizeof(float));
    if (!c->db)
        return -1;
    for (int j = 0; j < d; j++) {
        double acc = 0.0;
        for (int r = 0; r < n; r++)
            acc += (double)yf[(size_t)r * d + j] - yq[(size_t)r * d + j];
        c->db[j] = (float)(acc / n);
    }
    c->params = d;
    c->bits = 32.0 * d;
    return 0;
}

/* A fitted map's size and bits, its own weights quantized per row unless prec is float. */
static int linear_bits(struct qs_corr *c, int d, const char *prec, qs_err *e)
{
    c->params = (long)d * d + d;
    c->bits = 32.0 * c->params;
    if (prec && strcmp(prec, "float")) {
        long bytes = quantize_map(c->amap, d, prec, e);
        if (bytes < 0)
            return -1;
        c->bits = 8.0 * bytes + 32.0 * d;
    }
    return 0;
}

int qs_corr_fit_linear(const float *yq, const float *yf, int n, int d, double lambda,
                       const char *prec, struct qs_corr *c, qs_err *e)
{
    if (fit_map(yq, yf, n, d, lambda, c, e) < 0)
        return -1;
    return linear_bits(c, d, prec, e);
}

/* The largest output a linear map (out x out) is fitted on: the vocabulary head of a real model
 * is not (its map alone would be vocab^2 floats). */
#define MAP_MAX_OUT 4096

/* ---- corrections on a transformer: fitted and measured from streamed sums ------------------
 *
 * A transformer's site is never held as rows (its calibration inputs alone can exceed memory:
 * TinyLlama's down_proj, 5632 features a token): every quantity `correct` needs is a sum over
 * windows, accumulated as qs_bench_stream hands them out one window at a time. The low-rank
 * methods take the float inputs' moments (qs_bench_site_moments); bias the column sums of
 * yf - yq; linear and clocal the ridge sums (qs_ridge_acc); the recoveries the two squared-error
 * sums. Each is summed in the rows' order as the row-based fit (the MLP's) sums it, so a fit is
 * the same to rounding whichever way its rows arrive. */

enum cs_what { CS_BIAS, CS_RIDGE, CS_RIDGE_LOCAL, CS_RECOVERY, CS_RECOVERY_LOCAL };

struct corr_stream {
    struct qs_bench *b;
    int i, d;
    enum cs_what what;
    double *bias;              /* (d) sums of yf - yq (CS_BIAS) */
    struct qs_ridge_acc *ridge; /* CS_RIDGE, CS_RIDGE_LOCAL */
    const struct qs_corr *map; /* CS_RECOVERY_LOCAL: the fitted map */
    double before, after;      /* recovery: sum (yf - yq)^2, sum (yf - yhat)^2 */
    float *yf, *yq, *yh;       /* one window's pre-activations (ctx, d) */
};

static int cs_fn(void *u, int site, int w, const float *xf, const float *xq, const float *yf,
                 const float *yq, int n, qs_err *e)
{
    (void)site, (void)w;
    struct corr_stream *c = u;
    struct qs_bench *b = c->b;
    int d = c->d, wq = QS_ROLE_W | QS_ROLE_A;
    size_t nd = (size_t)n * d;
    /* yf: the float site on the float inputs, as qs_bench_preact computes it */
    if (yf)
        memcpy(c->yf, yf, nd * sizeof(float));
    else if (qs_bench_layer_forward(b, c->i, xf, n, 0, 0, c->yf, e) < 0)
        return -1;
    /* yq: the quantized site without its correction: on the quantized path's inputs, or on the
     * float inputs for the local map (a float-only stream: xq == xf) */
    if (qs_bench_layer_forward(b, c->i, xq, n, wq, 0, c->yq, e) < 0)
        return -1;
    switch (c->what) {
    case CS_BIAS:
        for (int r = 0; r < n; r++)
            for (int j = 0; j < d; j++)
                c->bias[j] += (double)c->yf[(size_t)r * d + j] - c->yq[(size_t)r * d + j];
        return 0;
    case CS_RIDGE:
    case CS_RIDGE_LOCAL:
        return qs_ridge_acc_add(c->ridge, c->yq, c->yf, n, e);
    case CS_RECOVERY: /* yhat: the corrected site, as the stream's quantized path ran it */
        if (yq)
            memcpy(c->yh, yq, nd * sizeof(float));
        else if (qs_bench_layer_forward(b, c->i, xq, n, wq, 1, c->yh, e) < 0)
            return -1;
        break;
    case CS_RECOVERY_LOCAL:
        qs_linear(c->yq, n, d, c->map->amap, c->map->mb, d, c->yh);
        break;
    }
    for (size_t k = 0; k < nd; k++) { /* qs_recovery's sums, window after window */
        double e0 = (double)c->yf[k] - c->yq[k], e1 = (double)c->yf[k] - c->yh[k];
        c->before += e0 * e0;
        c->after += e1 * e1;
    }
    return 0;
}

static int cs_run(struct qs_bench *b, struct corr_stream *c, enum qs_split_id sp, int quant,
                  qs_err *e)
{
    unsigned char *want = qs_calloc((size_t)qs_bench_nunits(b), 1);
    if (!want)
        return qs_errf(e, "out of memory");
    want[c->i] = 1;
    c->before = c->after = 0;
    int rc = qs_bench_stream(b, sp, want, quant, cs_fn, c, e);
    free(want);
    return rc;
}

static double cs_recovery(const struct corr_stream *c)
{
    return c->before > 0 ? 1 - c->after / c->before : 0;
}

/* qs_analysis_correct on a transformer (its arguments checked there): the fit into nw with
 * site i's correction cleared, then its recoveries with nw in place. */
static int lm_correct(struct qs_bench *b, int i, enum qs_corr_method m, int rank,
                      const char *prec, double lambda, qs_err *e)
{
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    struct qs_layer_state *s = &b->ls[i];
    int d = l.out, ctx = b->lm->ctx;
    int wc = qs_bench_stream_windows(b, QS_CALIB, e);
    int wt = wc < 0 ? -1 : qs_bench_stream_windows(b, QS_TEST, e);
    if (wt < 0)
        return -1;
    long nc = (long)wc * ctx, nt = (long)wt * ctx;
    if ((m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL) && d > MAP_MAX_OUT)
        return qs_errf(e, "%s: a linear map on %d outputs would be %d x %d; output-side maps are "
                          "fitted up to %d outputs", l.name, d, d, d, MAP_MAX_OUT);
    if ((m == QS_CORR_LINEAR && nc <= d) || (m == QS_CORR_CLOCAL && nt <= d))
        return qs_errf(e, "%s: a %dx%d linear map needs more than %d samples to fit, the %s "
                          "windows have %ld (set calib)",
                       l.name, d, d, d, m == QS_CORR_CLOCAL ? "held-out" : "calibration",
                       m == QS_CORR_CLOCAL ? nt : nc);
    struct qs_corr old = s->corr, nw;
    memset(&nw, 0, sizeof nw);
    memset(&s->corr, 0, sizeof s->corr); /* the fit's pre-activations are without a correction */
    struct qs_ridge_acc acc;
    memset(&acc, 0, sizeof acc);
    struct corr_stream c = {.b = b, .i = i, .d = d};
    int rc = -1;
    c.yf = qs_alloc((size_t)ctx * d, sizeof(float), "a window's pre-activations", e);
    c.yq = c.yf ? qs_alloc((size_t)ctx * d, sizeof(float), "a window's pre-activations", e) : NULL;
    c.yh = c.yq ? qs_alloc((size_t)ctx * d, sizeof(float), "a window's pre-activations", e) : NULL;
    if (!c.yh)
        goto out;
    nw.method = m;
    snprintf(nw.prec, sizeof nw.prec, "%s", prec);
    switch (m) {
    case QS_CORR_BIAS:
        c.what = CS_BIAS;
        if (!(c.bias = qs_calloc((size_t)d, sizeof(double))) ||
            !(nw.db = qs_calloc((size_t)d, sizeof(float)))) {
            qs_errf(e, "out of memory");
            goto out;
        }
        if (cs_run(b, &c, QS_CALIB, 1, e) < 0)
            goto out;
        for (int j = 0; j < d; j++)
            nw.db[j] = (float)(c.bias[j] / nc);
        nw.params = d;
        nw.bits = 32.0 * d;
        break;
    case QS_CORR_LOWRANK:
    case QS_CORR_LQER:
    case QS_CORR_QERA:
    case QS_CORR_EORA: {
        const struct qs_moments *mo = NULL; /* the float inputs': cached between fits */
        if (m != QS_CORR_LOWRANK && qs_bench_site_moments_cached(b, i, QS_CALIB, 0, &mo, e) < 0)
            goto out;
        size_t nwts = (size_t)l.out * l.in;
        float *ew = qs_alloc(nwts, sizeof(float), "the weight error", e);
        if (!ew)
            goto out;
        for (size_t j = 0; j < nwts; j++)
            ew[j] = l.w[j] - s->wq[j];
        int r2 = qs_corr_fit_lowrank_m(m, ew, l.out, l.in, mo, rank, prec, &nw, e);
        free(ew);
        if (r2 < 0)
            goto out;
        break;
    }
    case QS_CORR_LINEAR:
    case QS_CORR_CLOCAL: {
        /* linear: the quantized path's calibration windows; clocal: fitted and judged on the
         * held-out windows from the float inputs (local errors) */
        int local = m == QS_CORR_CLOCAL;
        c.what = local ? CS_RIDGE_LOCAL : CS_RIDGE;
        c.ridge = &acc;
        if (qs_ridge_acc_init(&acc, d, NULL, NULL, e) < 0 ||
            cs_run(b, &c, local ? QS_TEST : QS_CALIB, !local, e) < 0 ||
            fit_map_any(NULL, NULL, 0, d, &acc, lambda, &nw, e) < 0)
            goto out;
        if (local) {
            nw.params = (long)d * d + d;
            nw.bits = 32.0 * nw.params;
            c.what = CS_RECOVERY_LOCAL;
            c.map = &nw;
            if (cs_run(b, &c, QS_TEST, 0, e) < 0)
                goto out;
            nw.recovery = cs_recovery(&c);
            nw.recovery_calib = NAN;
        } else if (linear_bits(&nw, d, prec, e) < 0) {
            goto out;
        }
        break;
    }
    default:
        qs_errf(e, "unknown correction");
        goto out;
    }
    for (int j = 0; j < i && j < 63; j++) /* the upstream state it is fitted in */
        if (b->ls[j].corr.method != QS_CORR_NONE && b->ls[j].corr.method != QS_CORR_CLOCAL)
            nw.fit_upstream |= 1ULL << j;
    s->corr = nw;
    memset(&nw, 0, sizeof nw);
    if (m != QS_CORR_CLOCAL) { /* judged as applied: the held-out, then the calibration windows */
        c.what = CS_RECOVERY;
        if (cs_run(b, &c, QS_TEST, 1, e) < 0)
            goto out;
        s->corr.recovery = cs_recovery(&c);
        if (cs_run(b, &c, QS_CALIB, 1, e) < 0)
            goto out;
        s->corr.recovery_calib = cs_recovery(&c);
    }
    qs_corr_clear(&old);
    qs_bench_invalidate(b, i);
    if (m != QS_CORR_CLOCAL) /* clocal is never applied: the path after it is unchanged */
        qs_bench_mark_stale(b, i);
    rc = 0;
out:
    if (rc < 0) {
        qs_corr_clear(&s->corr);
        s->corr = old;
        qs_corr_clear(&nw);
    }
    qs_ridge_acc_free(&acc);
    free(c.bias);
    free(c.yf);
    free(c.yq);
    free(c.yh);
    return rc;
}

int qs_analysis_correct(struct qs_bench *b, int i, enum qs_corr_method m, int rank,
                        const char *prec, double lambda, const struct qs_mlp *teacher, qs_err *e)
{
    if (qs_bench_update(b, e) < 0)
        return -1;
    struct qs_unit lu, *l = &lu;
    qs_bench_unit(b, i, &lu);
    struct qs_layer_state *s = &b->ls[i];
    int lowrank = m == QS_CORR_LOWRANK || m == QS_CORR_LQER || m == QS_CORR_QERA ||
                  m == QS_CORR_EORA;
    if (!prec)
        prec = "float";
    if (s->wfmt.kind == QS_FMT_NONE && s->afmt.kind == QS_FMT_NONE)
        return qs_errf(e, "%s is in float (format none): there is no quantization error to "
                          "correct", l->name);
    if (lowrank && !s->wq)
        return qs_errf(e, "%s: %s corrects the weight error, but the layer's weights are in "
                          "float (only its activations are quantized)", l->name, qs_corr_name(m));
    int mn = l->out < l->in ? l->out : l->in;
    if (lowrank && (rank < 1 || rank > mn))
        return qs_errf(e, "%s: rank %d is out of range: min(out, in) = min(%d, %d) = %d", l->name,
                       rank, l->out, l->in, mn);
    if (lowrank) { /* the factors' precision: float or a weight format */
        struct qs_format pf;
        if (qs_corr_prec_parse(prec, &pf, e) < 0)
            return -1;
    } else if (strcmp(prec, "float") && strcmp(prec, "int8") && strcmp(prec, "int4")) {
        return qs_errf(e, "prec=%s: expected float, int8 or int4", prec);
    }
    if (strcmp(prec, "float") && !lowrank && m != QS_CORR_LINEAR)
        return qs_errf(e, "prec=%s applies to the linear map and the low-rank factors only", prec);
    if (teacher && m != QS_CORR_LINEAR && m != QS_CORR_BIAS)
        return qs_errf(e, "teacher= applies to bias and linear only");
    if (teacher && (!b->model || teacher->nlayers <= i || teacher->layers[i].out != l->out ||
                    teacher->layers[0].in != b->model->layers[0].in))
        return qs_errf(e, "teacher: layer %d of the teacher does not have %d outputs on the same "
                          "inputs", i, l->out);
    /* a real vocabulary head is never fitted on the output side (its out x out moments alone
     * would be vocab^2: 10 GB in double for GPT-2's 50257); a byte-level toy head (256) is, so
     * that the journals recorded on the bundled models replay */
    if (b->lm && i == b->lm->nsites - 1 && (m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL) &&
        l->out > MAP_MAX_OUT)
        return qs_errf(e, "%s: the vocabulary head (%d outputs) is excluded from output-side "
                          "fits: a map on its outputs needs their %d x %d second moments (output-"
                          "side maps are fitted on sites of up to %d outputs)",
                       l->name, l->out, l->out, l->out, MAP_MAX_OUT);
    if (b->lm)
        return lm_correct(b, i, m, rank, prec, lambda, e);
    int nc = 0, nt = 0, d = l->out;
    const float *xfc = site_x(b, i, QS_CALIB, 0, &nc, e), *xqc = xfc ? site_x(b, i, QS_CALIB, 1,
                                                                             &nc, e) : NULL;
    const float *xft = xqc ? site_x(b, i, QS_TEST, 0, &nt, e) : NULL;
    const float *xqt = xft ? site_x(b, i, QS_TEST, 1, &nt, e) : NULL;
    if (!xqt)
        return -1;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB], *ft = &b->f_acts[QS_TEST];
    const char *what = b->lm ? "windows" : "split";
    if ((m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL) && d > MAP_MAX_OUT)
        return qs_errf(e, "%s: a linear map on %d outputs would be %d x %d; output-side maps are "
                          "fitted up to %d outputs", l->name, d, d, d, MAP_MAX_OUT);
    if ((m == QS_CORR_LINEAR && nc <= d) || (m == QS_CORR_CLOCAL && nt <= d))
        return qs_errf(e, "%s: a %dx%d linear map needs more than %d samples to fit, the %s "
                          "%s %s %d (%s)",
                       l->name, d, d, d, m == QS_CORR_CLOCAL ? (b->lm ? "held-out" : "test")
                                                             : "calibration",
                       what, b->lm ? "have" : "has", m == QS_CORR_CLOCAL ? nt : nc,
                       b->lm ? "set calib" : "set calib, or set split with a larger fraction");
    struct qs_corr old = s->corr, nw;
    memset(&nw, 0, sizeof nw);
    memset(&s->corr, 0, sizeof s->corr); /* pre-activations below are without any correction */
    size_t lc = (size_t)nc * d, lt = (size_t)nt * d;
    float *yq_c = qs_alloc(lc, sizeof(float), "the pre-activations", e);
    float *yq_t = yq_c ? qs_alloc(lt, sizeof(float), "the pre-activations", e) : NULL;
    float *yh = yq_t ? qs_alloc(lt, sizeof(float), "the pre-activations", e) : NULL;
    float *tgt_c = NULL, *tgt_t = NULL, *yf_c = NULL, *yf_t = NULL;
    int rc = -1, nrows;
    if (!yh)
        goto out;
    if (qs_bench_layer_forward(b, i, xqc, nc, QS_ROLE_W | QS_ROLE_A, 0, yq_c, e) < 0 ||
        qs_bench_layer_forward(b, i, xqt, nt, QS_ROLE_W | QS_ROLE_A, 0, yq_t, e) < 0 ||
        qs_bench_preact(b, QS_CALIB, 0, i, &yf_c, &nrows, e) < 0 ||
        qs_bench_preact(b, QS_TEST, 0, i, &yf_t, &nrows, e) < 0)
        goto out;
    if (teacher) {
        tgt_c = malloc(lc * sizeof(float));
        tgt_t = malloc(lt * sizeof(float));
        if (!tgt_c || !tgt_t || teacher_pre(teacher, i, fc->x, nc, tgt_c, e) < 0 ||
            teacher_pre(teacher, i, ft->x, nt, tgt_t, e) < 0)
            goto out;
    }
    const float *fit_c = teacher ? tgt_c : yf_c;
    nw.method = m;
    snprintf(nw.prec, sizeof nw.prec, "%s", prec);
    size_t nwts = (size_t)l->out * l->in;
    switch (m) {
    case QS_CORR_BIAS:
        if (qs_corr_fit_bias(fit_c, yq_c, nc, d, &nw) < 0)
            goto oom;
        break;
    case QS_CORR_LOWRANK:
    case QS_CORR_LQER:
    case QS_CORR_QERA:
    case QS_CORR_EORA: {
        float *ew = malloc(nwts * sizeof(float));
        if (!ew)
            goto oom;
        for (size_t j = 0; j < nwts; j++)
            ew[j] = l->w[j] - s->wq[j];
        /* the float inputs' moments (the same sums as of the rows xfc), cached between fits */
        const struct qs_moments *mo = NULL;
        int r2 = m != QS_CORR_LOWRANK && qs_bench_site_moments_cached(b, i, QS_CALIB, 0, &mo, e) < 0
                     ? -1
                     : qs_corr_fit_lowrank_m(m, ew, l->out, l->in, mo, rank, prec, &nw, e);
        free(ew);
        if (r2 < 0)
            goto out;
        break;
    }
    case QS_CORR_LINEAR:
        if (qs_corr_fit_linear(yq_c, fit_c, nc, d, lambda, prec, &nw, e) < 0)
            goto out;
        break;
    case QS_CORR_CLOCAL: {
        /* Fitted and judged on the held-out split itself, from float inputs (local errors). */
        if (qs_bench_layer_forward(b, i, xft, nt, QS_ROLE_W | QS_ROLE_A, 0, yq_t, e) < 0 ||
            fit_map(yq_t, yf_t, nt, d, lambda, &nw, e) < 0)
            goto out;
        nw.params = (long)d * d + d;
        nw.bits = 32.0 * nw.params;
        qs_linear(yq_t, nt, d, nw.amap, nw.mb, d, yh);
        nw.recovery = qs_recovery(yf_t, yq_t, yh, lt, NULL);
        nw.recovery_calib = NAN;
        break;
    }
    default:
        qs_errf(e, "unknown correction");
        goto out;
    }
    for (int j = 0; j < i && j < 63; j++) /* the upstream state it is fitted in */
        if (b->ls[j].corr.method != QS_CORR_NONE && b->ls[j].corr.method != QS_CORR_CLOCAL)
            nw.fit_upstream |= 1ULL << j;
    s->corr = nw;
    memset(&nw, 0, sizeof nw);
    if (m != QS_CORR_CLOCAL) {
        if (qs_bench_layer_forward(b, i, xqt, nt, QS_ROLE_W | QS_ROLE_A, 1, yh, e) < 0)
            goto out;
        s->corr.recovery = qs_recovery(yf_t, yq_t, yh, lt, NULL);
        float *yh_c = malloc(lc * sizeof(float));
        if (!yh_c)
            goto oom;
        if (qs_bench_layer_forward(b, i, xqc, nc, QS_ROLE_W | QS_ROLE_A, 1, yh_c, e) < 0) {
            free(yh_c);
            goto out;
        }
        s->corr.recovery_calib = qs_recovery(yf_c, yq_c, yh_c, lc, NULL);
        free(yh_c);
    }
    qs_corr_clear(&old);
    qs_bench_invalidate(b, i);
    if (m != QS_CORR_CLOCAL) /* clocal is never applied: the path after it is unchanged */
        qs_bench_mark_stale(b, i);
    rc = 0;
    goto out;
oom:
    qs_errf(e, "out of memory");
out:
    if (rc < 0) {
        qs_corr_clear(&s->corr);
        s->corr = old;
        qs_corr_clear(&nw);
    }
    free(yq_c);
    free(yq_t);
    free(yh);
    free(yf_c);
    free(yf_t);
    free(tgt_c);
    free(tgt_t);
    return rc;
}

/* ---- ablation ------------------------------------------------------------------------ */

static struct qs_interval bootstrap(const double *d, int n, uint64_t seed)
{
    enum { B = 1000 };
    struct qs_interval iv = {0, 0, 0};
    double *means = malloc(B * sizeof *means);
    if (!means || n == 0) {
        free(means);
        return iv;
    }
    for (int r = 0; r < n; r++)
        iv.mean += d[r] / n;
    qs_rng rng;
    qs_rng_seed(&rng, seed ^ 0xb007ULL);
    for (int k = 0; k < B; k++) {
        double s = 0.0;
        for (int r = 0; r < n; r++)
            s += d[qs_rng_below(&rng, (uint64_t)n)];
        means[k] = s / n;
    }
    /* sort the resampled means and read the 2.5 % and 97.5 % points */
    for (int a = 1; a < B; a++) {
        double v = means[a];
        int j = a - 1;
        while (j >= 0 && means[j] > v) {
            means[j + 1] = means[j];
            j--;
        }
        means[j + 1] = v;
    }
    iv.lo = means[(int)(0.025 * B)];
    iv.hi = means[(int)(0.975 * B) - 1];
    free(means);
    return iv;
}

int qs_corr_random_like(const struct qs_corr *c, int out, int in, uint64_t seed,
                        struct qs_corr *r)
{
    qs_rng rng;
    qs_rng_seed(&rng, seed ^ 0x7a11dULL);
    memset(r, 0, sizeof *r);
    r->method = c->method;
    if (c->c) {
        size_t nw = (size_t)out * in;
        int k = c->rank;
        float *lf = malloc((size_t)out * k * sizeof(float)), *rt = malloc((size_t)k * in * sizeof(float));
        r->c = malloc(nw * sizeof(float));
        if (!lf || !rt || !r->c) {
            free(lf);
            free(rt);
            return -1;
        }
        for (size_t j = 0; j < (size_t)out * k; j++)
            lf[j] = (float)qs_rng_normal(&rng);
        for (size_t j = 0; j < (size_t)k * in; j++)
            rt[j] = (float)qs_rng_normal(&rng);
        /* r->c = lf rt: (out, k)(k, in); qs_linear computes x w^T, so pass rt^T */
        float *rtt = malloc((size_t)k * in * sizeof(float));
        if (!rtt) {
            free(lf);
            free(rt);
            return -1;
        }
        for (int a = 0; a < k; a++)
            for (int bb = 0; bb < in; bb++)
                rtt[(size_t)bb * k + a] = rt[(size_t)a * in + bb];
        qs_linear(lf, out, k, rtt, NULL, in, r->c);
        double sc = sqrt(qs_frob2(c->c, nw) / fmax(qs_frob2(r->c, nw), 1e-300));
        for (size_t j = 0; j < nw; j++)
            r->c[j] = (float)(r->c[j] * sc);
        free(lf);
        free(rt);
        free(rtt);
    }
    if (c->db) {
        r->db = malloc((size_t)out * sizeof(float));
        if (!r->db)
            return -1;
        for (int j = 0; j < out; j++)
            r->db[j] = (float)qs_rng_normal(&rng);
        double sc = sqrt(qs_frob2(c->db, (size_t)out) / fmax(qs_frob2(r->db, (size_t)out), 1e-300));
        for (int j = 0; j < out; j++)
            r->db[j] = (float)(r->db[j] * sc);
    }
    if (c->amap) { /* A_rand = I + G, ||G|| = ||A - I||; mb_rand of the norm of mb */
        size_t na = (size_t)out * out;
        r->amap = malloc(na * sizeof(float));
        r->mb = malloc((size_t)out * sizeof(float));
        if (!r->amap || !r->mb)
            return -1;
        double dn = 0.0, gn = 0.0;
        for (size_t j = 0; j < na; j++) {
            double dd = c->amap[j] - (j % (size_t)(out + 1) == 0 ? 1.0 : 0.0);
            dn += dd * dd;
            r->amap[j] = (float)qs_rng_normal(&rng);
            gn += (double)r->amap[j] * r->amap[j];
        }
        for (size_t j = 0; j < na; j++)
            r->amap[j] = (float)(r->amap[j] * sqrt(dn / fmax(gn, 1e-300)) +
                                 (j % (size_t)(out + 1) == 0 ? 1.0 : 0.0));
        for (int j = 0; j < out; j++)
            r->mb[j] = (float)qs_rng_normal(&rng);
        double sc = sqrt(qs_frob2(c->mb, (size_t)out) / fmax(qs_frob2(r->mb, (size_t)out), 1e-300));
        for (int j = 0; j < out; j++)
            r->mb[j] = (float)(r->mb[j] * sc);
    }
    return 0;
}

const char *qs_ablation_verdict(const struct qs_interval *g_q, const struct qs_interval *g_f,
                                const struct qs_interval *g_r)
{
    if (g_q->hi < 0)
        return "harmful";
    if (g_q->lo <= 0 || g_q->mean <= g_r->hi)
        return "no-gain";
    if (g_f->lo > 0 && g_f->mean >= g_q->mean / 2)
        return "capacity";
    return "recovery";
}

static int deployable(const struct qs_corr *c)
{
    return c->method != QS_CORR_NONE && c->method != QS_CORR_CLOCAL;
}

/* The mean gain (per-sample loss without minus with) and its bootstrap interval. */
static struct qs_interval gain(const double *without, const double *with, double *d, int n,
                               uint64_t seed)
{
    for (int r = 0; r < n; r++)
        d[r] = without[r] - with[r];
    return bootstrap(d, n, seed);
}

/* One ablation run: the test split with every site quantized (quant) or float, the corrections
 * of the sites in cmask on; per-unit losses into loss (MLP: a row; transformer: a window). */
static int abl_run(struct qs_bench *b, int quant, uint64_t cmask, struct qs_metric *m,
                   double *loss, qs_err *e)
{
    return qs_bench_run_ex(b, QS_TEST, quant ? ~0ULL : 0, cmask, m, loss, NULL, NULL, e);
}

int qs_analysis_ablate(struct qs_bench *b, int i, struct qs_ablation *ab, qs_err *e)
{
    memset(ab, 0, sizeof *ab);
    ab->other_layer = -1;
    int n = qs_bench_split_units(b, QS_TEST, e);
    if (n < 0)
        return -1;
    if (b->lm && n < 2)
        return qs_errf(e, "ablate: the held-out split has %d window(s); the bootstrap needs at "
                          "least 2", n);
    struct qs_layer_state *s = &b->ls[i];
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    if (s->corr.method == QS_CORR_NONE)
        return qs_errf(e, "%s has no correction to ablate (correct %s METHOD first)", l.name,
                       l.name);
    if (s->corr.method == QS_CORR_CLOCAL)
        return qs_errf(e, "%s: clocal is an analysis upper baseline that is never applied, so "
                          "there is nothing to ablate", l.name);
    if (i >= 63) /* the run masks give one bit to each of the first 63 layers only */
        return qs_errf(e, "%s: ablate separates the corrections of the first 63 layers only",
                       l.name);
    if (s->corr.stale)
        return qs_errf(e, "%s: its %s correction was fitted on quantized inputs that have changed "
                          "since (an earlier layer's format or correction), so the state it was "
                          "fitted in is gone; refit it (correct %s %s) to ablate it", l.name,
                       qs_corr_name(s->corr.method), l.name, qs_corr_name(s->corr.method));
    int L = qs_bench_nunits(b);
    uint64_t bit = 1ULL << i, cur = 0;
    for (int j = 0; j < i; j++)
        if (deployable(&b->ls[j].corr))
            cur |= 1ULL << j;
    uint64_t up = s->corr.fit_upstream & cur;
    ab->upstream = up;
    ab->upstream_gone = s->corr.fit_upstream & ~cur;
    double *buf = NULL;
    size_t nd;
    int rc = -1;
    if (qs_size_mul((size_t)n, 7 * sizeof(double), &nd) < 0) {
        qs_errf(e, "the ablation's buffers: size overflows");
        goto out;
    }
    if (qs_mem_check(nd, "the ablation's buffers", e) < 0)
        goto out;
    buf = qs_calloc((size_t)n * 7 + 1, sizeof(double));
    if (!buf) {
        qs_errf(e, "out of memory");
        goto out;
    }
    double *lf = buf, *lq = lf + n, *lqc = lq + n, *lfc = lqc + n, *lr = lfc + n, *lo = lr + n;
    double *d = lo + n;
    ab->layer = i;
    /* float runs: the float model alone and with this correction; quantized runs: every layer
     * quantized, the upstream corrections of the fit active, with and without this one */
    if (abl_run(b, 0, 0, &ab->f, lf, e) < 0 || abl_run(b, 1, up, &ab->q, lq, e) < 0 ||
        abl_run(b, 1, up | bit, &ab->qc, lqc, e) < 0 ||
        abl_run(b, 0, bit, &ab->fc, lfc, e) < 0)
        goto out;
    /* controls: a random correction of equal rank and norm at this site */
    struct qs_corr saved = s->corr, rnd;
    if (qs_corr_random_like(&saved, l.out, l.in, b->seed, &rnd) < 0) {
        qs_corr_clear(&rnd);
        qs_errf(e, "out of memory");
        goto out;
    }
    s->corr = rnd;
    int r1 = abl_run(b, 1, up | bit, &ab->rand_ctrl, lr, e);
    s->corr = saved;
    qs_corr_clear(&rnd);
    if (r1 < 0)
        goto out;
    /* and this very correction at another site of the same shape, in place of that site's own
     * (which is off there: the site is not part of the upstream state) */
    for (int j = 0; j < L && j < 63; j++) {
        struct qs_unit o;
        qs_bench_unit(b, j, &o);
        if (j == i || o.out != l.out || o.in != l.in || (up >> j & 1))
            continue;
        struct qs_corr own = b->ls[j].corr;
        b->ls[j].corr = saved; /* borrowed: freed by neither */
        int r2 = abl_run(b, 1, up | 1ULL << j, &ab->other_ctrl, lo, e);
        b->ls[j].corr = own;
        if (r2 < 0)
            goto out;
        ab->have_other = 1;
        ab->other_layer = j;
        break;
    }
    ab->g_q = gain(lq, lqc, d, n, b->seed);
    ab->g_f = gain(lf, lfc, d, n, b->seed + 1);
    ab->g_r = gain(lq, lr, d, n, b->seed + 2);
    if (ab->have_other) {
        ab->g_o = gain(lq, lo, d, n, b->seed + 3);
        ab->other_significant = ab->g_o.lo > 0;
    }
    ab->verdict = qs_ablation_verdict(&ab->g_q, &ab->g_f, &ab->g_r);
    const struct qs_metric *arm[4] = {&ab->f, &ab->q, &ab->qc, &ab->fc};
    s->corr.ablated.verdict = ab->verdict;
    for (int k = 0; k < 4; k++) {
        s->corr.ablated.acc[k] = arm[k]->acc;
        s->corr.ablated.loss[k] = arm[k]->loss;
    }
    rc = 0;
out:
    free(buf);
    return rc;
}
