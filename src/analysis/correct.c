/* correct.c - corrections: fitting bias, low-rank (lowrank, LQER, QERA, EoRA), linear and
 * clocal maps on a site and measuring their recovery on held-out data. */
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

/* ---- corrections --------------------------------------------------------------------- */

void qs_analysis_uncorrect(struct qs_bench *b, int i)
{
    qs_corr_clear(&b->ls[i].corr);
    qs_bench_invalidate(b, i);
    qs_bench_mark_stale(b, i);
}

long qs_corr_params(const struct qs_bench *b, int i)
{
    return b->ls[i].corr.params;
}

int qs_corr_prec_parse(const char *prec, struct qs_format *f, qs_err *e)
{
    memset(f, 0, sizeof *f);
    if (!prec || !strcmp(prec, "float"))
        return 0; /* kind NONE: F32 factors */
    qs_err e2;
    if (qs_format_parse(prec, f, &e2) < 0 || f->kind == QS_FMT_NONE)
        return qs_errf(e,
                       "prec=%s: expected float or a weight format for the factors (int8, "
                       "int4, fp8-e4m3, fp8-e5m2, nf4, mxfp4, ...)",
                       prec);
    return 0;
}

int qs_corr_fit_lowrank(enum qs_corr_method m, const float *ew, int out, int in, const float *x,
                        int n, int rank, const char *prec, struct qs_corr *c, qs_err *e)
{
    struct qs_moments mo;
    memset(&mo, 0, sizeof mo);
    if (m != QS_CORR_LOWRANK && qs_moments_of_rows(&mo, x, n, in, e) < 0)
        return -1;
    int rc =
        qs_corr_fit_lowrank_m(m, ew, out, in, m != QS_CORR_LOWRANK ? &mo : NULL, rank, prec, c, e);
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
        return qs_errf(e, "rank %d is out of range: min(out, in) = min(%d, %d) = %d", rank, out, in,
                       mn);
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
    double *bias;               /* (d) sums of yf - yq (CS_BIAS) */
    struct qs_ridge_acc *ridge; /* CS_RIDGE, CS_RIDGE_LOCAL */
    const struct qs_corr *map;  /* CS_RECOVERY_LOCAL: the fitted map */
    double before, after;       /* recovery: sum (yf - yq)^2, sum (yf - yhat)^2 */
    float *yf, *yq, *yh;        /* one window's pre-activations (ctx, d) */
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

/* The fitted correction *nw becomes unit i's (which then owns its arrays; *nw is cleared),
 * recording the upstream corrections it was fitted under. */
static void install_corr(struct qs_bench *b, int i, struct qs_corr *nw)
{
    for (int j = 0; j < i && j < 63; j++)
        if (b->ls[j].corr.method != QS_CORR_NONE && b->ls[j].corr.method != QS_CORR_CLOCAL)
            nw->fit_upstream |= 1ULL << j;
    b->ls[i].corr = *nw;
    memset(nw, 0, sizeof *nw);
}

/* qs_analysis_correct on a transformer (its arguments checked there): the fit into nw with
 * site i's correction cleared, then its recoveries with nw in place. */
static int lm_correct(struct qs_bench *b, int i, enum qs_corr_method m, int rank, const char *prec,
                      double lambda, qs_err *e)
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
        return qs_errf(e,
                       "%s: a linear map on %d outputs would be %d x %d; output-side maps are "
                       "fitted up to %d outputs",
                       l.name, d, d, d, MAP_MAX_OUT);
    if ((m == QS_CORR_LINEAR && nc <= d) || (m == QS_CORR_CLOCAL && nt <= d))
        return qs_errf(e,
                       "%s: a %dx%d linear map needs more than %d samples to fit, the %s "
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
        const float *wq = qs_site_wq(b, i, e), *wf = wq ? qs_bench_w(b, i, e) : NULL;
        for (size_t j = 0; wf && j < nwts; j++)
            ew[j] = wf[j] - wq[j];
        int r2 = wf ? qs_corr_fit_lowrank_m(m, ew, l.out, l.in, mo, rank, prec, &nw, e) : -1;
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
    install_corr(b, i, &nw);
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
    int lowrank =
        m == QS_CORR_LOWRANK || m == QS_CORR_LQER || m == QS_CORR_QERA || m == QS_CORR_EORA;
    if (!prec)
        prec = "float";
    if (s->wfmt.kind == QS_FMT_NONE && s->afmt.kind == QS_FMT_NONE)
        return qs_errf(e,
                       "%s is in float (format none): there is no quantization error to "
                       "correct",
                       l->name);
    if (lowrank && !s->wquant)
        return qs_errf(e,
                       "%s: %s corrects the weight error, but the layer's weights are in "
                       "float (only its activations are quantized)",
                       l->name, qs_corr_name(m));
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
        return qs_errf(e,
                       "teacher: layer %d of the teacher does not have %d outputs on the same "
                       "inputs",
                       i, l->out);
    /* a real vocabulary head is never fitted on the output side (its out x out moments alone
     * would be vocab^2: 10 GB in double for GPT-2's 50257); a byte-level toy head (256) is, so
     * that the journals recorded on the bundled models replay */
    if (b->lm && i == b->lm->nsites - 1 && (m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL) &&
        l->out > MAP_MAX_OUT)
        return qs_errf(e,
                       "%s: the vocabulary head (%d outputs) is excluded from output-side "
                       "fits: a map on its outputs needs their %d x %d second moments (output-"
                       "side maps are fitted on sites of up to %d outputs)",
                       l->name, l->out, l->out, l->out, MAP_MAX_OUT);
    if (b->lm)
        return lm_correct(b, i, m, rank, prec, lambda, e);
    int nc = 0, nt = 0, d = l->out;
    const float *xfc = qs_an_site_x(b, i, QS_CALIB, 0, &nc, e),
                *xqc = xfc ? qs_an_site_x(b, i, QS_CALIB, 1, &nc, e) : NULL;
    const float *xft = xqc ? qs_an_site_x(b, i, QS_TEST, 0, &nt, e) : NULL;
    const float *xqt = xft ? qs_an_site_x(b, i, QS_TEST, 1, &nt, e) : NULL;
    if (!xqt)
        return -1;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB], *ft = &b->f_acts[QS_TEST];
    const char *what = b->lm ? "windows" : "split";
    if ((m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL) && d > MAP_MAX_OUT)
        return qs_errf(e,
                       "%s: a linear map on %d outputs would be %d x %d; output-side maps are "
                       "fitted up to %d outputs",
                       l->name, d, d, d, MAP_MAX_OUT);
    if ((m == QS_CORR_LINEAR && nc <= d) || (m == QS_CORR_CLOCAL && nt <= d))
        return qs_errf(e,
                       "%s: a %dx%d linear map needs more than %d samples to fit, the %s "
                       "%s %s %d (%s)",
                       l->name, d, d, d,
                       m == QS_CORR_CLOCAL ? (b->lm ? "held-out" : "test") : "calibration", what,
                       b->lm ? "have" : "has", m == QS_CORR_CLOCAL ? nt : nc,
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
        const float *wq = qs_site_wq(b, i, e), *wf = wq ? qs_bench_w(b, i, e) : NULL;
        for (size_t j = 0; wf && j < nwts; j++)
            ew[j] = wf[j] - wq[j];
        /* the float inputs' moments (the same sums as of the rows xfc), cached between fits */
        const struct qs_moments *mo = NULL;
        int r2 =
            !wf ? -1
            : m != QS_CORR_LOWRANK && qs_bench_site_moments_cached(b, i, QS_CALIB, 0, &mo, e) < 0
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
    install_corr(b, i, &nw);
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
