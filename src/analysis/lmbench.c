/* lmbench.c - transformers on the bench: token splits, calibration activations of every linear
 * site (captured through the forward pass's input hook), evaluation (perplexity, KL, top-1
 * agreement) and per-site error statistics, with the quantized weights the rules resolved. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/linalg.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"

/* Calibration activations: xf[s] the float model's inputs of site s over the calibration
 * windows, xq[s] the quantized model's (propagated); n rows each. */
struct qs_lm_cache {
    int nsites, n;
    float **xf, **xq;
    int q_valid;
    /* held-out windows (for judging corrections): nt rows per site, float and quantized path */
    int nt;
    float **tf, **tq;
    int tq_valid;
    /* per site: the quantized weight with its correction added (NULL: none) */
    float **weff;
};

static void cache_free(struct qs_lm_cache *c)
{
    if (!c)
        return;
    for (int s = 0; s < c->nsites; s++) {
        free(c->xf ? c->xf[s] : NULL);
        free(c->xq ? c->xq[s] : NULL);
        free(c->tf ? c->tf[s] : NULL);
        free(c->tq ? c->tq[s] : NULL);
        free(c->weff ? c->weff[s] : NULL);
    }
    free(c->xf);
    free(c->xq);
    free(c->tf);
    free(c->tq);
    free(c->weff);
    free(c);
}

void qs_bench_lm_drop(struct qs_bench *b)
{
    cache_free(b->lmc);
    b->lmc = NULL;
    b->lm_float_valid = 0;
    /* static activation scales were calibrated on the dropped calibration inputs (model, token
     * data or calibration size changed): calibrate again from the new ones */
    for (int s = 0; b->lm && b->ls && s < b->lm->nsites; s++)
        b->ls[s].a_static_amax = 0.0f;
}

void qs_bench_lm_invalidate(struct qs_bench *b)
{
    if (b->lmc)
        b->lmc->q_valid = b->lmc->tq_valid = 0;
}

/* The split of the token stream: the last 10 % is held out (test); calibration windows are the
 * first ones of the rest (calib_n windows, default 8). */
void qs_bench_lm_split(const struct qs_bench *b, size_t *test_off, int *calib_windows)
{
    size_t n = b->tokens->n;
    *test_off = n - n / 10;
    /* calibration windows are inputs only (no targets): tokens [w ctx, (w + 1) ctx) */
    int ctx = b->lm->ctx, avail = (int)(*test_off / (size_t)ctx);
    int want = b->calib_n > 0 ? b->calib_n : 8;
    *calib_windows = want < avail ? want : avail;
}

int qs_bench_lm_ready(struct qs_bench *b, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "no transformer loaded (load model DIR)");
    if (!b->tokens)
        return qs_errf(e, "no token data loaded (load data PATH.txt|.bin)");
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    if (cw < 1 || b->tokens->n - off < (size_t)b->lm->ctx + 1)
        return qs_errf(e, "%s: %zu tokens are too few for windows of %d (need %zu)",
                       b->tokens->path ? b->tokens->path : "tokens", b->tokens->n, b->lm->ctx,
                       10 * ((size_t)b->lm->ctx + 1) + 1); /* size_t: ctx comes from a file */
    for (size_t i = 0; i < b->tokens->n; i++)
        if (b->tokens->ids[i] >= (uint32_t)b->lm->vocab)
            return qs_errf(e, "%s: token %u at %zu is outside the model's vocabulary (%d)",
                           b->tokens->path ? b->tokens->path : "tokens", b->tokens->ids[i], i,
                           b->lm->vocab);
    return 0;
}

/* ---- hooks -------------------------------------------------------------------------------- */

struct hook_ctx {
    struct qs_bench *b;
    float **weff;    /* corrected weights per site (may be NULL) */
    float **capture; /* per site: rows appended here (NULL: no capture) */
    int *rows;       /* rows captured so far per site */
    int cap_rows;
    int failed; /* an activation quantization failed; err says why */
    qs_err err;
};

/* The quantized weight of a site (dequantized from its packed form), else the float one. */
static const float *weight_q(void *u, int s)
{
    struct hook_ctx *h = u;
    if (h->weff && h->weff[s])
        return h->weff[s];
    return h->b->ls[s].wq; /* NULL: the float weight */
}

/* weff[s] = Q(W_s) + C_s for every corrected site (rebuilt before a quantized pass; cheap next
 * to the pass itself). */
static int update_weff(struct qs_bench *b, float ***out, qs_err *e)
{
    struct qs_lm *m = b->lm;
    float **w = b->lmc ? b->lmc->weff : NULL;
    int any = 0;
    for (int s = 0; s < m->nsites; s++)
        any |= b->ls[s].corr.c != NULL;
    *out = NULL;
    if (!any)
        return 0;
    if (!w) {
        w = qs_calloc((size_t)m->nsites, sizeof *w);
        if (!w)
            return qs_errf(e, "out of memory");
        if (b->lmc)
            b->lmc->weff = w;
    }
    for (int s = 0; s < m->nsites; s++) {
        const struct qs_layer_state *ls = &b->ls[s];
        size_t nw = (size_t)m->sites[s].in * m->sites[s].out;
        if (!ls->corr.c) {
            free(w[s]);
            w[s] = NULL;
            continue;
        }
        if (!w[s] && !(w[s] = malloc(nw * sizeof(float))))
            return qs_errf(e, "out of memory");
        const float *base = ls->wq ? ls->wq : m->sites[s].w;
        for (size_t j = 0; j < nw; j++)
            w[s][j] = base[j] + ls->corr.c[j];
    }
    *out = w;
    if (!b->lmc) /* no cache to own it: the caller frees (eval before any calibration) */
        return 1;
    return 0;
}

static void free_weff(struct qs_bench *b, float **w, int owned)
{
    if (!owned || !w)
        return;
    for (int s = 0; s < b->lm->nsites; s++)
        free(w[s]);
    free(w);
}

static void capture_input(void *u, int s, const float *x, int n, int in)
{
    struct hook_ctx *h = u;
    if (!h->capture || !h->capture[s])
        return;
    int take = n;
    if (h->rows[s] + take > h->cap_rows)
        take = h->cap_rows - h->rows[s];
    if (take > 0)
        memcpy(h->capture[s] + (size_t)h->rows[s] * in, x, (size_t)take * in * sizeof(float));
    h->rows[s] += take;
}

/* Activation quantization in place, as for MLPs (qs_bench_act_quant: static, token, dynamic).
 * The hook cannot fail the forward: the first error is kept in the context and the caller
 * reports it after the pass (hook_result). */
static void act_quant(void *u, int s, float *x, int n, int in)
{
    struct hook_ctx *h = u;
    const struct qs_layer_state *ls = &h->b->ls[s];
    if (ls->afmt.kind == QS_FMT_NONE || h->failed)
        return;
    if (qs_bench_act_quant(ls, x, n, in, x, &h->err) < 0) {
        qs_err_prefix(&h->err, h->b->lm->sites[s].name);
        h->failed = 1;
    }
}

/* Applies an output-side correction (bias or linear map; clocal is never applied) to y: (n, d)
 * in place: y += db, or y = y A^T + mb. The one definition the hook and the recovery use. */
static int apply_out_corr(const struct qs_corr *c, float *y, int n, int d)
{
    if (c->method == QS_CORR_CLOCAL)
        return 0;
    if (c->db)
        for (int r = 0; r < n; r++)
            for (int j = 0; j < d; j++)
                y[(size_t)r * d + j] += c->db[j];
    if (c->amap) {
        float *t = malloc((size_t)n * d * sizeof(float));
        if (!t)
            return -1;
        qs_linear(y, n, d, c->amap, c->mb, d, t); /* y A^T + mb */
        memcpy(y, t, (size_t)n * d * sizeof(float));
        free(t);
    }
    return 0;
}

/* The output hook of the quantized path: a site's bias or linear-map correction. */
static void corr_post(void *u, int s, float *y, int n, int out)
{
    struct hook_ctx *h = u;
    if (h->failed || apply_out_corr(&h->b->ls[s].corr, y, n, out) == 0)
        return;
    qs_errf(&h->err, "%s: out of memory applying its correction", h->b->lm->sites[s].name);
    h->failed = 1;
}

static int hook_result(const struct hook_ctx *h, int rc, qs_err *e)
{
    if (rc == 0 && h->failed) {
        if (e)
            *e = h->err;
        return -1;
    }
    return rc;
}

/* Calibrates the static activation scale of every site that needs one: the absmax of the float
 * model's inputs to the site over the calibration windows (xf), per tensor, the definition the
 * MLP uses on its calibration rows (qs_bench_static_amax). */
static void ensure_static_amax(struct qs_bench *b)
{
    for (int s = 0; s < b->lm->nsites; s++) {
        struct qs_layer_state *ls = &b->ls[s];
        if (ls->afmt.kind == QS_FMT_NONE || ls->amode != QS_AMODE_STATIC || ls->a_static_amax > 0)
            continue;
        ls->a_static_amax = qs_bench_static_amax(b->lmc->xf[s],
                                                 (size_t)b->lmc->n * b->lm->sites[s].in);
    }
}

static int needs_static_amax(const struct qs_bench *b)
{
    for (int s = 0; s < b->lm->nsites; s++) {
        const struct qs_layer_state *ls = &b->ls[s];
        if (ls->afmt.kind != QS_FMT_NONE && ls->amode == QS_AMODE_STATIC && ls->a_static_amax <= 0)
            return 1;
    }
    return 0;
}

/* Runs the calibration windows through the float (quant = 0) or quantized model, capturing
 * every site's inputs into out[s] (n rows of in_s). */
static int capture(struct qs_bench *b, int quant, float **out, int n, size_t start, int nwin,
                   qs_err *e)
{
    struct qs_lm *m = b->lm;
    int *rows = qs_calloc((size_t)m->nsites, sizeof *rows);
    float *logits = qs_alloc((size_t)m->ctx * (size_t)m->vocab, sizeof(float), "the logits", e);
    if (!rows || !logits) {
        if (!rows)
            qs_errf(e, "out of memory");
        free(rows);
        free(logits);
        return -1;
    }
    float **weff = NULL;
    int owned = quant ? update_weff(b, &weff, e) : 0;
    if (owned < 0) {
        free(rows);
        free(logits);
        return -1;
    }
    struct hook_ctx hc = {b, weff, out, rows, n, 0, {{0}}};
    struct qs_lm_hooks h = {quant ? weight_q : NULL, capture_input, quant ? act_quant : NULL, &hc,
                            quant ? corr_post : NULL};
    int rc = 0;
    for (int w = 0; w < nwin && rc == 0; w++) {
        rc = hook_result(&hc, qs_lm_forward(m, b->tokens->ids + start + (size_t)w * m->ctx, m->ctx,
                                            &h, logits, e), e);
        if (b->progress) {
            char what[80];
            snprintf(what, sizeof what, "calibration (%s): window %d of %d",
                     quant ? "quantized" : "float", w + 1, nwin);
            b->progress(b->progress_ctx, what, (double)(w + 1) / nwin);
        }
    }
    free_weff(b, weff, owned);
    free(rows);
    free(logits);
    return rc;
}

static int ensure_cache(struct qs_bench *b, qs_err *e)
{
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    struct qs_lm *m = b->lm;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    int n = cw * m->ctx;
    if (b->lmc && b->lmc->n != n)
        qs_bench_lm_drop(b);
    if (!b->lmc) {
        /* float and quantized inputs of every site on the calibration and held-out windows,
         * checked as one figure before any of it is allocated */
        size_t width = 0, total;
        for (int s = 0; s < m->nsites; s++)
            width += (size_t)m->sites[s].in;
        char what[96];
        snprintf(what, sizeof what, "the calibration activations (%d windows of %d tokens)", cw,
                 m->ctx);
        if (qs_size_mul3((size_t)n * 2, width, 2 * sizeof(float), &total) < 0)
            return qs_errf(e, "%s: size overflows", what);
        if (qs_mem_check(total, what, e) < 0)
            return -1;
        struct qs_lm_cache *c = qs_calloc(1, sizeof *c);
        if (!c)
            return qs_errf(e, "out of memory");
        c->nsites = m->nsites;
        c->n = n;
        c->xf = qs_calloc((size_t)m->nsites, sizeof *c->xf);
        c->xq = qs_calloc((size_t)m->nsites, sizeof *c->xq);
        b->lmc = c;
        /* a cache that failed half-way is dropped: the next call must not take it for whole */
        if (!c->xf || !c->xq) {
            qs_bench_lm_drop(b);
            return qs_errf(e, "out of memory");
        }
        for (int s = 0; s < m->nsites; s++) {
            c->xf[s] = malloc((size_t)n * m->sites[s].in * sizeof(float));
            c->xq[s] = malloc((size_t)n * m->sites[s].in * sizeof(float));
            if (!c->xf[s] || !c->xq[s]) {
                qs_bench_lm_drop(b);
                return qs_errf(e, "out of memory caching calibration activations");
            }
        }
        /* held-out windows that judge corrections: the first ones of the test part */
        int tw = (int)((b->tokens->n - off) / (size_t)m->ctx);
        tw = tw < cw ? tw : cw;
        c->nt = tw * m->ctx;
        c->tf = qs_calloc((size_t)m->nsites, sizeof *c->tf);
        c->tq = qs_calloc((size_t)m->nsites, sizeof *c->tq);
        if (!c->tf || !c->tq) {
            qs_bench_lm_drop(b);
            return qs_errf(e, "out of memory");
        }
        for (int s = 0; s < m->nsites; s++) {
            c->tf[s] = malloc((size_t)(c->nt ? c->nt : 1) * m->sites[s].in * sizeof(float));
            c->tq[s] = malloc((size_t)(c->nt ? c->nt : 1) * m->sites[s].in * sizeof(float));
            if (!c->tf[s] || !c->tq[s]) {
                qs_bench_lm_drop(b);
                return qs_errf(e, "out of memory caching held-out activations");
            }
        }
        if (capture(b, 0, c->xf, n, 0, cw, e) < 0 || capture(b, 0, c->tf, c->nt, off, tw, e) < 0) {
            qs_bench_lm_drop(b);
            return -1;
        }
    }
    ensure_static_amax(b); /* before any quantized pass uses them */
    if (!b->lmc->q_valid) {
        if (capture(b, 1, b->lmc->xq, n, 0, cw, e) < 0)
            return -1;
        b->lmc->q_valid = 1;
    }
    if (!b->lmc->tq_valid) {
        if (capture(b, 1, b->lmc->tq, b->lmc->nt, off, b->lmc->nt / b->lm->ctx, e) < 0)
            return -1;
        b->lmc->tq_valid = 1;
    }
    return 0;
}

int qs_bench_lm_eval(struct qs_bench *b, int max_windows, struct qs_lm_eval *ev, qs_err *e)
{
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    if (needs_static_amax(b) && ensure_cache(b, e) < 0) /* calibrates the static scales */
        return -1;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    float **weff = NULL;
    int owned = update_weff(b, &weff, e);
    if (owned < 0)
        return -1;
    struct hook_ctx hc = {b, weff, NULL, NULL, 0, 0, {{0}}};
    struct qs_lm_hooks hq = {weight_q, NULL, act_quant, &hc, corr_post};
    struct qs_lm_progress pr = {b->progress, b->progress_ctx, "eval"};
    int rc = qs_lm_evaluate_progress(b->lm, b->tokens->ids + off, b->tokens->n - off, max_windows,
                                     NULL, &hq, ev, &pr, e);
    rc = hook_result(&hc, rc, e);
    free_weff(b, weff, owned);
    return rc;
}

/* Hooks that quantize one site only (weight and activation as the rules say, no correction):
 * the per-site supply sensitivity's delta needs. They defer to weight_q and act_quant, so the
 * site is quantized exactly as in a fully quantized pass. */
struct only_ctx {
    struct hook_ctx hc;
    int site;
};

static const float *weight_only(void *u, int s)
{
    struct only_ctx *o = u;
    return s == o->site ? weight_q(&o->hc, s) : NULL;
}

static void act_only(void *u, int s, float *x, int n, int in)
{
    struct only_ctx *o = u;
    if (s == o->site)
        act_quant(&o->hc, s, x, n, in);
}

int qs_bench_lm_loss_only(struct qs_bench *b, int site, double *loss, long *ntok, qs_err *e)
{
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    if (needs_static_amax(b) && ensure_cache(b, e) < 0) /* calibrates the static scales */
        return -1;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    struct only_ctx oc = {{b, NULL, NULL, NULL, 0, 0, {{0}}}, site};
    struct qs_lm_hooks h = {weight_only, NULL, act_only, &oc, NULL};
    struct qs_lm_eval ev;
    int rc = qs_lm_evaluate(b->lm, b->tokens->ids + off, b->tokens->n - off, 0,
                            site < 0 ? NULL : &h, NULL, &ev, e);
    if (hook_result(&oc.hc, rc, e) < 0)
        return -1;
    *loss = ev.loss;
    *ntok = ev.ntok;
    return 0;
}

/* ---- ablation ------------------------------------------------------------------------ */

/* One ablation run's hooks: every site quantized (quant) or float, and the corrections of the
 * sites in the mask applied to whichever weight the site has: Q(W) + C or W + C. A correction
 * kind that acts on a site's output (bias, linear map) applies here too, gated by the same
 * mask, so qs_ablate_runs judges it unchanged. */
struct abl_ctx {
    struct hook_ctx hc; /* act_quant's context */
    int quant;
    uint64_t cmask; /* sites whose correction is on */
    float **w; /* per site: the weight supplied, NULL: the float one (owned when corrected) */
};

static const float *weight_abl(void *u, int s)
{
    struct abl_ctx *a = u;
    return a->w[s];
}

static void act_abl(void *u, int s, float *x, int n, int in)
{
    struct abl_ctx *a = u;
    if (a->quant)
        act_quant(&a->hc, s, x, n, in);
}

/* bias and linear corrections act on a site's output: on in the runs whose mask has the site,
 * on the float model as on the quantized one (as the MLP's ablation applies them) */
static void post_abl(void *u, int s, float *y, int n, int out)
{
    struct abl_ctx *a = u;
    if (s < 63 && (a->cmask >> s & 1))
        corr_post(&a->hc, s, y, n, out);
}

/* The bootstrap's unit is a held-out window, not a token: tokens of one window share their
 * context and are correlated, so resampling them one by one would make the intervals too
 * narrow. A run computes per-token losses (eval's own, for the metric) into tok and hands the
 * bootstrap each window's mean. */
struct lm_abl {
    struct qs_bench *b;
    long ntok;
    int ctx;
    double *tok; /* (ntok) */
};

static int lm_abl_run(void *u, int quant, uint64_t cmask, struct qs_metric *m, double *wloss,
                      qs_err *e)
{
    struct lm_abl *la = u;
    struct qs_bench *b = la->b;
    double *loss = la->tok;
    struct qs_lm *lm = b->lm;
    size_t off;
    int cw, rc = -1;
    qs_bench_lm_split(b, &off, &cw);
    float **w = qs_calloc((size_t)lm->nsites, sizeof *w);
    uint64_t owned = 0;
    if (!w)
        return qs_errf(e, "out of memory");
    for (int s = 0; s < lm->nsites; s++) {
        const struct qs_layer_state *ls = &b->ls[s];
        const float *base = quant && ls->wq ? ls->wq : NULL;
        w[s] = (float *)base; /* borrowed unless owned has its bit */
        if (s >= 63 || !(cmask >> s & 1) || !ls->corr.c)
            continue;
        size_t nw = (size_t)lm->sites[s].in * lm->sites[s].out;
        if (!base)
            base = lm->sites[s].w;
        if (!(w[s] = malloc(nw * sizeof(float)))) {
            qs_errf(e, "out of memory");
            goto out;
        }
        owned |= 1ULL << s;
        for (size_t j = 0; j < nw; j++) /* as update_weff: the same sum as `eval` */
            w[s][j] = base[j] + ls->corr.c[j];
    }
    struct abl_ctx a = {.hc = {.b = b}, .quant = quant, .cmask = cmask, .w = w};
    struct qs_lm_hooks h = {weight_abl, NULL, act_abl, &a, post_abl};
    long ntok = 0;
    rc = qs_lm_token_losses(lm, b->tokens->ids + off, b->tokens->n - off, 0, &h, loss, &ntok, e);
    rc = hook_result(&a.hc, rc, e);
    if (rc == 0) {
        double sum = 0.0; /* in order, as qs_lm_evaluate sums: eval's loss bit for bit */
        for (long k = 0; k < ntok; k++)
            sum += loss[k];
        m->loss = sum / ntok;
        m->acc = NAN; /* a language model's metric is the perplexity, exp(loss) */
        m->n = (int)ntok;
        for (long w = 0; w < ntok / la->ctx; w++) {
            double ws = 0.0;
            for (int t = 0; t < la->ctx; t++)
                ws += loss[w * la->ctx + t];
            wloss[w] = ws / la->ctx;
        }
    }
out:
    for (int s = 0; s < lm->nsites && s < 63; s++)
        if (owned >> s & 1)
            free(w[s]);
    free(w);
    return rc;
}

int qs_bench_lm_ablate(struct qs_bench *b, int s, struct qs_ablation *ab, qs_err *e)
{
    memset(ab, 0, sizeof *ab);
    ab->other_layer = -1;
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    if (needs_static_amax(b) && ensure_cache(b, e) < 0) /* calibrates the static scales */
        return -1;
    size_t off;
    int cw;
    long ntok;
    qs_bench_lm_split(b, &off, &cw);
    if (qs_lm_token_losses(b->lm, b->tokens->ids + off, b->tokens->n - off, 0, NULL, NULL, &ntok,
                           e) < 0)
        return -1;
    int ctx = b->lm->ctx;
    if (ntok > INT_MAX || ctx <= 0 || ntok % ctx)
        return qs_errf(e, "ablate: %ld held-out tokens do not make whole windows of %d", ntok,
                       ctx);
    if (ntok / ctx < 2)
        return qs_errf(e, "ablate: the held-out split has %ld window(s); the bootstrap needs at "
                          "least 2", ntok / ctx);
    struct lm_abl la = {b, ntok, ctx, qs_alloc((size_t)ntok, sizeof(double), "ablate losses", e)};
    if (!la.tok)
        return -1;
    struct qs_ablation_runs rn = {(int)(ntok / ctx), lm_abl_run, &la};
    int rc = qs_ablate_runs(b, s, &rn, ab, e);
    free(la.tok);
    return rc;
}

static void site_pre(const float *x, int n, const struct qs_lm_site *st, const float *w, float *y)
{
    qs_linear(x, n, st->in, w, st->b, st->out, y);
}

int qs_bench_lm_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e)
{
    if (ensure_cache(b, e) < 0)
        return -1;
    struct qs_lm *m = b->lm;
    int n = b->lmc->n, rc = 0;
    for (int s = 0; s < m->nsites && rc == 0; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        const struct qs_layer_state *ls = &b->ls[s];
        struct qs_layer_err *r = &err[s];
        memset(r, 0, sizeof *r);
        r->w_rel_err = ls->w_rel_err;
        size_t len = (size_t)n * st->out;
        float *yf = malloc(len * sizeof(float)), *y = malloc(len * sizeof(float));
        float *xa = malloc((size_t)n * st->in * sizeof(float));
        if (!yf || !y || !xa) {
            free(yf);
            free(y);
            free(xa);
            return qs_errf(e, "out of memory");
        }
        const float *wq = b->lmc->weff && b->lmc->weff[s] ? b->lmc->weff[s]
                          : ls->wq                         ? ls->wq
                                                           : st->w;
        site_pre(b->lmc->xf[s], n, st, st->w, yf);
        double den = 0, num = 0, dot = 0, nq = 0;
        for (size_t j = 0; j < len; j++)
            den += (double)yf[j] * yf[j];
        /* local: the float inputs, quantized (activations as the rule says, then weights) */
        memcpy(xa, b->lmc->xf[s], (size_t)n * st->in * sizeof(float));
        if (qs_bench_act_quant(ls, xa, n, st->in, xa, e) < 0) {
            rc = qs_err_prefix(e, st->name);
            goto next;
        }
        site_pre(xa, n, st, wq, y);
        for (size_t j = 0; j < len; j++) {
            double d = (double)y[j] - yf[j];
            num += d * d;
        }
        r->local_rel_mse = den > 0 ? num / den : 0.0;
        r->local_snr_db = r->local_rel_mse > 0 ? -10 * log10(r->local_rel_mse) : INFINITY;
        /* propagated: the quantized model's own inputs */
        memcpy(xa, b->lmc->xq[s], (size_t)n * st->in * sizeof(float));
        if (qs_bench_act_quant(ls, xa, n, st->in, xa, e) < 0) {
            rc = qs_err_prefix(e, st->name);
            goto next;
        }
        site_pre(xa, n, st, wq, y);
        num = 0;
        for (size_t j = 0; j < len; j++) {
            double d = (double)y[j] - yf[j];
            num += d * d;
            dot += (double)y[j] * yf[j];
            nq += (double)y[j] * y[j];
        }
        r->preact_rel_mse = den > 0 ? num / den : 0.0;
        r->snr_db = r->preact_rel_mse > 0 ? -10 * log10(r->preact_rel_mse) : INFINITY;
        r->cosine = den > 0 && nq > 0 ? dot / sqrt(den * nq) : 1.0;
    next:
        free(yf);
        free(y);
        free(xa);
    }
    return rc;
}

int qs_bench_lm_inputs(struct qs_bench *b, int site, const float **x, int *n, qs_err *e)
{
    if (ensure_cache(b, e) < 0)
        return -1;
    *x = b->lmc->xf[site];
    *n = b->lmc->n;
    return 0;
}

/* Entropy (nats) of the held-out tokens' own unigram distribution: the loss of a model that
 * learned byte (token) frequencies and nothing else. */
static double unigram_entropy(const uint32_t *t, size_t n, int vocab)
{
    double *cnt = qs_calloc((size_t)vocab, sizeof *cnt), h = 0.0;
    if (!cnt || !n) {
        free(cnt);
        return 0.0;
    }
    for (size_t i = 0; i < n; i++)
        cnt[t[i]] += 1.0;
    for (int v = 0; v < vocab; v++)
        if (cnt[v] > 0) {
            double p = cnt[v] / (double)n;
            h -= p * log(p);
        }
    free(cnt);
    return h;
}

int qs_bench_lm_gate(struct qs_bench *b, struct qs_lm_gate *g, qs_err *e)
{
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    if (!b->lm_float_valid) {
        size_t off;
        int cw;
        qs_bench_lm_split(b, &off, &cw);
        struct qs_lm_eval ev;
        struct qs_lm_progress pr = {b->progress, b->progress_ctx, "float model"};
        if (qs_lm_evaluate_progress(b->lm, b->tokens->ids + off, b->tokens->n - off, 0, NULL,
                                    NULL, &ev, &pr, e) < 0)
            return -1;
        b->lm_float_loss = ev.loss;
        b->lm_unigram = unigram_entropy(b->tokens->ids + off, b->tokens->n - off, b->lm->vocab);
        b->lm_float_valid = 1;
    }
    g->float_loss = b->lm_float_loss;
    g->unigram = b->lm_unigram;
    g->threshold = (1.0 - b->gate_lm) * b->lm_unigram;
    g->pass = g->float_loss <= g->threshold;
    return 0;
}

/* R = 1 - ||Y_f - Y_hat||^2 / ||Y_f - Y_q||^2 of site s over rows x (quantized path) against
 * the float path's xf, with weights wq (uncorrected) and wc (corrected). */
static double site_recovery(struct qs_bench *b, int s, const float *xf, const float *xq, int n,
                            const float *wq, const float *wc, int *undefined)
{
    const struct qs_lm_site *st = &b->lm->sites[s];
    size_t len = (size_t)n * st->out;
    float *yf = malloc(len * sizeof(float)), *yq = malloc(len * sizeof(float));
    float *yh = malloc(len * sizeof(float)), *xa = malloc((size_t)n * st->in * sizeof(float));
    double r = NAN;
    qs_err e; /* the quantized capture of these rows ran the same quantization: no error left
               * but out of memory, which leaves R undefined (NaN) */
    if (yf && yq && yh && xa) {
        site_pre(xf, n, st, st->w, yf);
        memcpy(xa, xq, (size_t)n * st->in * sizeof(float));
        if (qs_bench_act_quant(&b->ls[s], xa, n, st->in, xa, &e) == 0) {
            site_pre(xa, n, st, wq, yq);
            site_pre(xa, n, st, wc, yh);
            r = qs_recovery(yf, yq, yh, len, undefined);
        }
    }
    free(yf);
    free(yq);
    free(yh);
    free(xa);
    return r;
}

int qs_lm_corr_supported(enum qs_corr_method m)
{
    return m == QS_CORR_LOWRANK || m == QS_CORR_LQER || m == QS_CORR_QERA || m == QS_CORR_EORA ||
           m == QS_CORR_BIAS || m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL;
}

/* Site s's quantized pre-activations y: (n, out) for inputs x: (n, in): the activation
 * quantized as the rule says, then the quantized weight without any correction of its own. */
static int site_pre_q(struct qs_bench *b, int s, const float *x, int n, float *y, qs_err *e)
{
    const struct qs_lm_site *st = &b->lm->sites[s];
    float *xa = qs_alloc((size_t)n * st->in, sizeof(float), "the site's inputs", e);
    if (!xa)
        return -1;
    memcpy(xa, x, (size_t)n * st->in * sizeof(float));
    int rc = qs_bench_act_quant(&b->ls[s], xa, n, st->in, xa, e);
    if (rc < 0)
        qs_err_prefix(e, st->name);
    else
        site_pre(xa, n, st, b->ls[s].wq ? b->ls[s].wq : st->w, y);
    free(xa);
    return rc;
}

/* The largest output a linear map (out x out) is fitted on: the vocabulary head of a real model
 * is not (its map alone would be vocab^2 floats). */
#define LM_MAP_MAX_OUT 4096

/* bias, linear and clocal on a transformer site: the output-side fits MLPs use
 * (qs_corr_fit_bias/qs_corr_fit_linear), on the site's pre-activations of the calibration
 * windows (Y_f from the float model's inputs, Y_q from the quantized model's own), judged on
 * the held-out windows the same way; clocal is fitted and judged on the held-out windows with
 * float inputs and never applied. */
static int correct_output(struct qs_bench *b, int s, enum qs_corr_method m, const char *prec,
                          double lambda, qs_err *e)
{
    const struct qs_lm_site *st = &b->lm->sites[s];
    struct qs_layer_state *ls = &b->ls[s];
    if (!prec)
        prec = "float";
    if (ls->wfmt.kind == QS_FMT_NONE && ls->afmt.kind == QS_FMT_NONE)
        return qs_errf(e, "%s is in float (format none): there is no quantization error to "
                          "correct", st->name);
    if (strcmp(prec, "float") && strcmp(prec, "int8") && strcmp(prec, "int4"))
        return qs_errf(e, "prec=%s: expected float, int8 or int4", prec);
    if (strcmp(prec, "float") && m == QS_CORR_BIAS)
        return qs_errf(e, "prec=%s applies to the linear map and the low-rank factors only", prec);
    int d = st->out, nc = b->lmc->n, nt = b->lmc->nt;
    if (m != QS_CORR_BIAS && d > LM_MAP_MAX_OUT)
        return qs_errf(e, "%s: a linear map on %d outputs would be %d x %d; output-side maps are "
                          "fitted up to %d outputs", st->name, d, d, d, LM_MAP_MAX_OUT);
    if ((m == QS_CORR_LINEAR && nc <= d) || (m == QS_CORR_CLOCAL && nt <= d))
        return qs_errf(e, "%s: a %dx%d linear map needs more than %d samples to fit, the %s "
                          "windows have %d (set calib)", st->name, d, d, d,
                       m == QS_CORR_CLOCAL ? "held-out" : "calibration",
                       m == QS_CORR_CLOCAL ? nt : nc);
    size_t lc = (size_t)nc * d, lt = (size_t)(nt ? nt : 1) * d;
    float *yf_c = qs_alloc(lc, sizeof(float), "the calibration pre-activations", e);
    float *yq_c = yf_c ? qs_alloc(lc, sizeof(float), "the calibration pre-activations", e) : NULL;
    float *yf_t = yq_c ? qs_alloc(lt, sizeof(float), "the held-out pre-activations", e) : NULL;
    float *yq_t = yf_t ? qs_alloc(lt, sizeof(float), "the held-out pre-activations", e) : NULL;
    float *yh = yq_t ? qs_alloc(lc > lt ? lc : lt, sizeof(float), "the corrected ones", e) : NULL;
    struct qs_corr nw;
    memset(&nw, 0, sizeof nw);
    int rc = -1;
    if (!yh)
        goto out;
    site_pre(b->lmc->xf[s], nc, st, st->w, yf_c);
    site_pre(b->lmc->tf[s], nt, st, st->w, yf_t);
    /* clocal: the held-out windows' local errors (float inputs); else the propagated ones */
    if (site_pre_q(b, s, b->lmc->xq[s], nc, yq_c, e) < 0 ||
        site_pre_q(b, s, m == QS_CORR_CLOCAL ? b->lmc->tf[s] : b->lmc->tq[s], nt, yq_t, e) < 0)
        goto out;
    if (m == QS_CORR_BIAS) {
        if (qs_corr_fit_bias(yf_c, yq_c, nc, d, &nw) < 0) {
            qs_errf(e, "out of memory");
            goto out;
        }
    } else if (qs_corr_fit_linear(m == QS_CORR_CLOCAL ? yq_t : yq_c,
                                  m == QS_CORR_CLOCAL ? yf_t : yf_c, m == QS_CORR_CLOCAL ? nt : nc,
                                  d, lambda, m == QS_CORR_CLOCAL ? "float" : prec, &nw, e) < 0) {
        goto out;
    }
    nw.method = m;
    snprintf(nw.prec, sizeof nw.prec, "%s", m == QS_CORR_CLOCAL ? "float" : prec);
    /* R with the correction as applied (apply_out_corr skips clocal: apply its map here) */
    memcpy(yh, yq_t, lt * sizeof(float));
    if (m == QS_CORR_CLOCAL)
        qs_linear(yq_t, nt, d, nw.amap, nw.mb, d, yh);
    else if (apply_out_corr(&nw, yh, nt, d) < 0)
        goto oom;
    nw.recovery = qs_recovery(yf_t, yq_t, yh, (size_t)nt * d, NULL);
    nw.recovery_calib = NAN;
    if (m != QS_CORR_CLOCAL) {
        memcpy(yh, yq_c, lc * sizeof(float));
        if (apply_out_corr(&nw, yh, nc, d) < 0)
            goto oom;
        nw.recovery_calib = qs_recovery(yf_c, yq_c, yh, lc, NULL);
    }
    qs_corr_clear(&ls->corr);
    ls->corr = nw;
    memset(&nw, 0, sizeof nw);
    qs_bench_invalidate(b, s);
    rc = 0;
    goto out;
oom:
    qs_errf(e, "out of memory");
out:
    qs_corr_clear(&nw);
    free(yf_c);
    free(yq_c);
    free(yf_t);
    free(yq_t);
    free(yh);
    return rc;
}

int qs_bench_lm_correct(struct qs_bench *b, int s, enum qs_corr_method m, int rank,
                        const char *prec, double lambda, qs_err *e)
{
    if (ensure_cache(b, e) < 0)
        return -1;
    const struct qs_lm_site *st = &b->lm->sites[s];
    struct qs_layer_state *ls = &b->ls[s];
    if (!qs_lm_corr_supported(m))
        return qs_errf(e, "%s: %s is not a correction transformers support", st->name,
                       qs_corr_name(m));
    if (m == QS_CORR_BIAS || m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL)
        return correct_output(b, s, m, prec, lambda, e);
    if (prec && strcmp(prec, "float"))
        return qs_errf(e, "%s: prec=%s: on transformers, the low-rank factors are fitted in "
                          "float", st->name, prec);
    if (!ls->wq)
        return qs_errf(e, "%s is in float (format none): there is no weight error to correct",
                       st->name);
    int mn = st->out < st->in ? st->out : st->in;
    if (rank < 1 || rank > mn)
        return qs_errf(e, "%s: rank %d is out of range: min(out, in) = min(%d, %d) = %d",
                       st->name, rank, st->out, st->in, mn);
    size_t nw = (size_t)st->out * st->in;
    float *ew = malloc(nw * sizeof(float)), *cc = malloc(nw * sizeof(float));
    float *wc = malloc(nw * sizeof(float));
    int rc = -1, n = b->lmc->n;
    if (!ew || !cc || !wc) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (size_t j = 0; j < nw; j++)
        ew[j] = st->w[j] - ls->wq[j];
    const float *x = b->lmc->xf[s]; /* calibration inputs of the float model */
    if (m == QS_CORR_LOWRANK) {
        rc = qs_lowrank_lorc(ew, st->out, st->in, rank, cc, NULL, NULL, e);
    } else if (m == QS_CORR_LQER) { /* s_j = mean |x_j| */
        float *sc = qs_calloc((size_t)st->in, sizeof(float));
        rc = sc ? 0 : qs_errf(e, "out of memory");
        for (int r = 0; sc && r < n; r++)
            for (int j = 0; j < st->in; j++)
                sc[j] += fabsf(x[(size_t)r * st->in + j]) / n;
        if (rc == 0)
            rc = qs_lowrank_lqer(ew, st->out, st->in, sc, rank, cc, NULL, NULL, e);
        free(sc);
    } else { /* QERA / EoRA: R = E[x x^T] of the calibration inputs */
        float *rxx = malloc((size_t)st->in * st->in * sizeof(float));
        rc = rxx ? 0 : qs_errf(e, "out of memory");
        if (rc == 0) {
            qs_gram(x, n, st->in, rxx);
            rc = (m == QS_CORR_QERA ? qs_lowrank_qera : qs_lowrank_eora)(
                ew, st->out, st->in, rxx, 0.01, rank, cc, NULL, NULL, e);
        }
        free(rxx);
    }
    if (rc < 0)
        goto out;
    for (size_t j = 0; j < nw; j++)
        wc[j] = ls->wq[j] + cc[j];
    int und = 0;
    double r_test = site_recovery(b, s, b->lmc->tf[s], b->lmc->tq[s], b->lmc->nt, ls->wq, wc, &und);
    double r_cal = site_recovery(b, s, b->lmc->xf[s], b->lmc->xq[s], n, ls->wq, wc, &und);
    qs_corr_clear(&ls->corr);
    ls->corr.method = m;
    ls->corr.rank = rank;
    snprintf(ls->corr.prec, sizeof ls->corr.prec, "float");
    ls->corr.c = cc;
    cc = NULL;
    ls->corr.params = (long)rank * (st->out + st->in);
    ls->corr.bits = 32.0 * ls->corr.params;
    ls->corr.recovery = r_test;
    ls->corr.recovery_calib = r_cal;
    for (int j = 0; j < s && j < 63; j++) /* the upstream state it is fitted in, as for MLPs */
        if (b->ls[j].corr.method != QS_CORR_NONE && b->ls[j].corr.method != QS_CORR_CLOCAL)
            ls->corr.fit_upstream |= 1ULL << j;
    qs_bench_invalidate(b, s);
    rc = 0;
out:
    free(ew);
    free(cc);
    free(wc);
    return rc;
}

int qs_bench_lm_preact_err(struct qs_bench *b, int s, float **err, float **ref, int *n, qs_err *e)
{
    if (ensure_cache(b, e) < 0)
        return -1;
    const struct qs_lm_site *st = &b->lm->sites[s];
    int rows = b->lmc->n;
    size_t len = (size_t)rows * st->out;
    float *yf = malloc(len * sizeof(float)), *yq = malloc(len * sizeof(float));
    float *xa = malloc((size_t)rows * st->in * sizeof(float));
    if (!yf || !yq || !xa) {
        free(yf);
        free(yq);
        free(xa);
        return qs_errf(e, "out of memory");
    }
    const float *w = b->lmc->weff && b->lmc->weff[s] ? b->lmc->weff[s]
                     : b->ls[s].wq                   ? b->ls[s].wq
                                                     : st->w;
    site_pre(b->lmc->xf[s], rows, st, st->w, yf);
    memcpy(xa, b->lmc->xq[s], (size_t)rows * st->in * sizeof(float));
    if (qs_bench_act_quant(&b->ls[s], xa, rows, st->in, xa, e) < 0) {
        free(yf);
        free(yq);
        free(xa);
        return qs_err_prefix(e, st->name);
    }
    site_pre(xa, rows, st, w, yq);
    for (size_t j = 0; j < len; j++)
        yq[j] -= yf[j];
    free(xa);
    *err = yq;
    *ref = yf;
    *n = rows;
    return 0;
}
