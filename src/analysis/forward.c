/* forward.c - the one model core. A model is an ordered list of linear sites (qs_bench_unit) and
 * a forward over a split that calls hooks at every site (struct qs_hooks). Each family (the MLP;
 * the GPT-2 and LLaMA transformers) supplies a small ops table: the rows of a split, the unit of
 * recompute, a forward that fills the activation caches from a given site on, and a run that
 * scores a split. Everything else - how a site computes under quantization and correction
 * (qs_bench_layer_forward), the caches and their incremental recompute, static activation
 * scales, masked runs for ablation and sensitivity, evaluation - is written once here, and the
 * analyses (errors.c, spectrum.c, correct.c, ablate.c, sensitivity.c, study.c) are written
 * against sites and these caches. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/bench.h"
#include "qscope/lmbench.h"
#include "qscope/moments.h"

/* ---- one site ----------------------------------------------------------------------------- */

float qs_bench_static_amax(const float *x, size_t len)
{
    float mx = 0.0f;
    for (size_t j = 0; j < len; j++)
        if (fabsf(x[j]) > mx)
            mx = fabsf(x[j]);
    return mx > 0 ? mx : 1e-30f;
}

int qs_bench_act_quant(const struct qs_layer_state *s, const float *x, int n, int in, float *xq,
                       qs_err *e)
{
    struct qs_qopts o = s->aopt;
    if (s->afmt.kind == QS_FMT_NONE) {
        if (xq != x)
            memcpy(xq, x, (size_t)n * in * sizeof(float));
        return 0;
    }
    if (s->amode == QS_AMODE_STATIC) {
        if (s->a_static_amax <= 0.0f)
            return qs_errf(e, "static activation scale not calibrated");
        return qs_quant_fake_amax(&s->afmt, &o, x, n, in, s->a_static_amax, xq, e);
    }
    /* rows of x are tokens: amode=token scales each row; dynamic scales the tensor (a rule's
     * gran=channel is about weight rows and does not apply here), or each group of a token
     * with gran=group:N */
    if (s->amode == QS_AMODE_TOKEN)
        o.gran = QS_GRAN_CHANNEL;
    else if (o.gran == QS_GRAN_CHANNEL)
        o.gran = QS_GRAN_TENSOR;
    return qs_quant_fake(&s->afmt, &o, x, n, in, xq, e);
}

int qs_bench_layer_forward(struct qs_bench *b, int i, const float *x, int n, int quant,
                           int apply_corr, float *pre, qs_err *e)
{
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    struct qs_layer_state *s = &b->ls[i];
    /* a transformer's own float weight (NULL when it stays the file's 16-bit bytes) is
     * multiplied by qs_lm_site_linear, as the model's own forward does */
    const float *xin = x, *w = b->model ? b->model->layers[i].w : b->lm->sites[i].w, *bias = l.b;
    const float *own = b->lm ? w : NULL;
    if ((quant & QS_ROLE_W) && s->wquant && !(w = qs_site_wq(b, i, e)))
        return -1;
    float *xq = NULL, *wtmp = NULL, *btmp = NULL;
    int rc = 0;
    if (apply_corr && s->corr.method == QS_CORR_CLOCAL)
        apply_corr = 0; /* analysis-only: never in a forward pass */
    size_t nx = (size_t)n * l.in, ny = (size_t)n * l.out, nw = (size_t)l.out * l.in;
    if ((quant & QS_ROLE_A) && s->afmt.kind != QS_FMT_NONE) {
        if (!(xq = malloc(nx * sizeof(float))))
            return qs_errf(e, "out of memory");
        if (s->rot || s->xs) {
            /* a method's basis (rotation, input scales): T^-1 Q(T x), the float product
             * unchanged */
            float *xt = malloc(nx * sizeof(float));
            int bad = !xt;
            if (xt) {
                memcpy(xt, x, nx * sizeof(float));
                bad = qs_bench_act_xform(s, xt, n, l.in, 0, e) < 0 ||
                      qs_bench_act_quant(s, xt, n, l.in, xq, e) < 0 ||
                      qs_bench_act_xform(s, xq, n, l.in, 1, e) < 0;
                free(xt);
            } else {
                qs_errf(e, "out of memory");
            }
            if (bad) {
                free(xq);
                return qs_err_prefix(e, l.name);
            }
        } else if (qs_bench_act_quant(s, x, n, l.in, xq, e) < 0) {
            free(xq);
            return qs_err_prefix(e, l.name);
        }
        xin = xq;
    }
    /* the correction: a low-rank term on the weight, a bias term on the bias (a site without a
     * bias gets one), a linear map on the output */
    if (apply_corr && s->corr.c) {
        if (!(wtmp = malloc(nw * sizeof(float)))) {
            rc = qs_errf(e, "out of memory");
            goto out;
        }
        if (!w && qs_lm_site_rows(b->lm, i, 0, l.out, wtmp, e) < 0) {
            rc = -1;
            goto out;
        }
        for (size_t j = 0; j < nw; j++)
            wtmp[j] = (w ? w[j] : wtmp[j]) + s->corr.c[j];
        w = wtmp;
    }
    if (apply_corr && s->corr.db) {
        if (!(btmp = malloc((size_t)l.out * sizeof(float)))) {
            rc = qs_errf(e, "out of memory");
            goto out;
        }
        for (int j = 0; j < l.out; j++)
            btmp[j] = (l.b ? l.b[j] : 0.0f) + s->corr.db[j];
        bias = btmp;
    }
    if (!b->lm || (w && w != own))
        qs_linear(xin, n, l.in, w, bias, l.out, pre);
    else if (qs_lm_site_linear(b->lm, i, xin, n, bias, pre, e) < 0) {
        rc = -1;
        goto out;
    }
    if (apply_corr && s->corr.amap) {
        float *t = malloc(ny * sizeof(float));
        if (!t) {
            rc = qs_errf(e, "out of memory");
            goto out;
        }
        qs_linear(pre, n, l.out, s->corr.amap, s->corr.mb, l.out, t); /* y A^T + mb */
        memcpy(pre, t, ny * sizeof(float));
        free(t);
    }
    if (apply_corr && b->site_out)
        rc = b->site_out(b->site_out_ctx, i, pre, n, l.out, e);
out:
    free(xq);
    free(wtmp);
    free(btmp);
    return rc;
}

/* The hooks of a path: every site through qs_bench_layer_forward with the roles quant_mask
 * grants it and its correction when corr_mask does (bit i for site i; sites past 63 follow bit
 * 63). Capture: rows written into a cache's inputs at row offset `row`. */
struct path {
    struct qs_bench *b;
    uint64_t qmask, cmask;
    int quant; /* 0: the float model (no hook needed) */
    /* when wov is set, every site is a plain float linear with weight wov[s] and bias bov[s]
     * (the float W and b where wov[s] is NULL): qs_bench_run_weights */
    const float *const *wov, *const *bov;
    float **cap;
    size_t row;
};

static int mask_bit(uint64_t m, int i)
{
    return (int)(m >> (i < 63 ? i : 63) & 1);
}

static int path_linear(void *u, int s, const float *x, int n, float *y, qs_err *e)
{
    struct path *p = u;
    if (p->wov) {
        struct qs_unit l;
        qs_bench_unit(p->b, s, &l);
        if (p->wov[s])
            qs_linear(x, n, l.in, p->wov[s], p->bov[s], l.out, y);
        else if (p->b->model)
            qs_linear(x, n, l.in, p->b->model->layers[s].w, l.b, l.out, y);
        else
            return qs_lm_site_linear(p->b->lm, s, x, n, l.b, y, e);
        return 0;
    }
    return qs_bench_layer_forward(p->b, s, x, n, mask_bit(p->qmask, s) ? QS_ROLE_W | QS_ROLE_A : 0,
                                  mask_bit(p->cmask, s), y, e);
}

static void path_capture(void *u, int s, const float *x, int n, int in)
{
    struct path *p = u;
    if (p->cap && p->cap[s])
        memcpy(p->cap[s] + p->row * (size_t)in, x, (size_t)n * in * sizeof(float));
}

static struct qs_hooks path_hooks(struct path *p)
{
    struct qs_hooks h = {0};
    h.u = p;
    h.cancel = &p->b->cancel;
    h.input = p->cap ? path_capture : NULL;
    h.linear = p->quant ? path_linear : NULL;
    return h;
}

/* ---- families ----------------------------------------------------------------------------- */

/* What a run of a split reports: the task metric, per-unit losses for the bootstrap (MLP: a
 * row; transformer: a window's mean token loss), and when wanted the KL to the float model and
 * top-1 agreement, with the logits (MLP only). */
struct run_out {
    struct qs_metric m;
    double *unit_loss;
    int want_kl;
    double kl, agree;
    double loss_f; /* a transformer's float loss on the same windows (want_kl) */
    float *logits;
};

struct family {
    int (*ready)(struct qs_bench *b, qs_err *e);
    int (*rows)(const struct qs_bench *b, enum qs_split_id s);        /* a run's rows */
    int (*cached_rows)(const struct qs_bench *b, enum qs_split_id s); /* the caches' rows */
    int (*unit_rows)(const struct qs_bench *b);
    int (*resume_site)(const struct qs_bench *b, int site);
    int (*alloc)(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, qs_err *e);
    int (*fill)(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, int from, struct path *p,
                qs_err *e);
    int (*run)(struct qs_bench *b, enum qs_split_id s, struct path *p, struct run_out *o,
               qs_err *e);
    size_t (*extra_bytes)(const struct qs_bench *b, int rows); /* per split and path */
};

/* ---- the MLP: rows of a CSV split; the unit of recompute is a layer ------------------------ */

static int mlp_rows(const struct qs_bench *b, enum qs_split_id s)
{
    if (s == QS_CALIB)
        return b->calib_n > 0 ? b->calib_n : b->split.n_calib;
    return b->split.n_test;
}

static int mlp_unit(const struct qs_bench *b)
{
    (void)b;
    return 1;
}

static int mlp_resume(const struct qs_bench *b, int site)
{
    (void)b;
    return site;
}

static int mlp_alloc(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, qs_err *e)
{
    const struct qs_mlp *m = b->model;
    int L = m->nlayers, n = mlp_rows(b, s);
    a->n = n;
    a->in = qs_calloc((size_t)L, sizeof *a->in);
    a->pre = qs_calloc((size_t)L, sizeof *a->pre);
    a->x = malloc((size_t)n * b->data->d * sizeof(float) + 1);
    a->y = malloc((size_t)n * sizeof(int) + 1);
    if (!a->in || !a->pre || !a->x || !a->y)
        return qs_errf(e, "out of memory caching activations (%d samples)", n);
    for (int i = 0; i < L; i++)
        if ((i > 0 && !(a->in[i] = malloc((size_t)n * m->layers[i].in * sizeof(float)))) ||
            !(a->pre[i] = malloc((size_t)n * m->layers[i].out * sizeof(float))))
            return qs_errf(e, "out of memory caching activations (%d samples)", n);
    qs_dataset_gather(b->data, s == QS_CALIB ? b->split.calib : b->split.test, n, a->x, a->y);
    a->in[0] = a->x;
    return 0;
}

/* Layers from..L-1 on the cached input of layer from: pre[i] through the path's site, then the
 * activation into in[i + 1]. */
static int mlp_fill(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, int from,
                    struct path *p, qs_err *e)
{
    (void)s;
    const struct qs_mlp *m = b->model;
    int L = m->nlayers;
    for (int i = from; i < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (p->quant) {
            if (path_linear(p, i, a->in[i], a->n, a->pre[i], e) < 0)
                return -1;
        } else {
            qs_linear(a->in[i], a->n, l->in, l->w, l->b, l->out, a->pre[i]);
        }
        if (i + 1 < L) {
            memcpy(a->in[i + 1], a->pre[i], (size_t)a->n * l->out * sizeof(float));
            qs_act_apply(l->act, a->in[i + 1], (size_t)a->n * l->out);
        }
    }
    return 0;
}

static int mlp_run(struct qs_bench *b, enum qs_split_id s, struct path *p, struct run_out *o,
                   qs_err *e)
{
    const struct qs_mlp *m = b->model;
    const struct qs_acts *f = &b->f_acts[s];
    int L = m->nlayers, n = f->n, width = qs_mlp_max_width(m), C = m->layers[L - 1].out;
    size_t nbuf;
    if (qs_size_mul3((size_t)n, (size_t)width, 2 * sizeof(float), &nbuf) < 0)
        return qs_errf(e, "a forward pass over the split: size overflows");
    if (qs_mem_check(nbuf, "a forward pass over the split", e) < 0)
        return -1;
    float *cur = malloc((size_t)n * width * sizeof(float) + 1);
    float *nxt = malloc((size_t)n * width * sizeof(float) + 1);
    int rc = 0;
    if (!cur || !nxt) {
        rc = qs_errf(e, "out of memory");
        goto out;
    }
    memcpy(cur, f->x, (size_t)n * b->data->d * sizeof(float));
    for (int i = 0; i < L && rc == 0; i++) {
        rc = path_linear(p, i, cur, n, nxt, e);
        if (i + 1 < L)
            qs_act_apply(m->layers[i].act, nxt, (size_t)n * m->layers[i].out);
        float *t = cur;
        cur = nxt;
        nxt = t;
    }
    if (rc < 0)
        goto out;
    int correct = 0;
    o->m.loss = qs_xent(cur, f->y, n, C, &correct, NULL);
    o->m.acc = n ? (double)correct / n : 0.0;
    o->m.n = n;
    if (o->unit_loss)
        for (int r = 0; r < n; r++)
            o->unit_loss[r] = qs_xent(cur + (size_t)r * C, f->y + r, 1, C, NULL, NULL);
    if (o->want_kl) {
        int agree = 0;
        o->kl = qs_kl_rows(f->pre[L - 1], cur, n, C, &agree);
        o->agree = n ? (double)agree / n : 0.0;
    }
    if (o->logits)
        memcpy(o->logits, cur, (size_t)n * C * sizeof(float));
out:
    free(cur);
    free(nxt);
    return rc;
}

static size_t mlp_extra(const struct qs_bench *b, int rows)
{
    (void)b;
    (void)rows;
    return 0;
}

/* ---- transformers: windows of a token stream; the unit of recompute is a block ------------ */

/* Windows of a split: calibration, the first calib_n windows (inputs only); held out, every
 * window of the last 10 % (inputs and their next tokens), as `eval` scores them. The cached
 * activations of the held-out split (which judge corrections) keep only its first min(held-out,
 * calibration) windows: every site's inputs of every held-out window would cost as much memory
 * again as the calibration cache grows (GPT-2-small, set calib 1: 2.0 GB against 5.3 GB); runs
 * (eval, ablate, sensitivity) score every held-out window without the caches. */
static int lm_windows(const struct qs_bench *b, enum qs_split_id s, size_t *start, int cached)
{
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    if (s == QS_CALIB) {
        *start = 0;
        return cw;
    }
    *start = off;
    int tw = (int)((b->tokens->n - off - 1) / (size_t)b->lm->ctx);
    if (b->test_windows > 0 && b->test_windows < tw)
        tw = b->test_windows;
    return cached && cw < tw ? cw : tw;
}

static int lm_rows(const struct qs_bench *b, enum qs_split_id s)
{
    size_t st;
    return lm_windows(b, s, &st, 0) * b->lm->ctx;
}

static int lm_cached_rows(const struct qs_bench *b, enum qs_split_id s)
{
    size_t st;
    return lm_windows(b, s, &st, 1) * b->lm->ctx;
}

static int lm_unit(const struct qs_bench *b)
{
    return b->lm->ctx;
}

static int lm_resume(const struct qs_bench *b, int site)
{
    return qs_lm_block_first_site(b->lm, qs_lm_site_block(b->lm, site));
}

static size_t lm_resid_floats(const struct qs_bench *b)
{
    const struct qs_lm *m = b->lm;
    return (size_t)(m->n_layer + 1) * m->ctx * m->d_model;
}

static int lm_alloc(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, qs_err *e)
{
    const struct qs_lm *m = b->lm;
    size_t st;
    int nw = lm_windows(b, s, &st, 1);
    a->n = nw * m->ctx;
    a->in = qs_calloc((size_t)m->nsites, sizeof *a->in);
    a->resid = malloc((size_t)nw * lm_resid_floats(b) * sizeof(float) + 1);
    if (!a->in || !a->resid)
        return qs_errf(e, "out of memory caching activations (%d windows)", nw);
    for (int i = 0; i < m->nsites; i++)
        if (!(a->in[i] = malloc((size_t)a->n * m->sites[i].in * sizeof(float) + 1)))
            return qs_errf(e, "out of memory caching activations (%d windows)", nw);
    return 0;
}

/* Every window from the block of site `from` on (the residual stream kept at block entries),
 * capturing the inputs of the sites it visits. */
static int lm_fill(struct qs_bench *b, enum qs_split_id s, struct qs_acts *a, int from,
                   struct path *p, qs_err *e)
{
    const struct qs_lm *m = b->lm;
    size_t start;
    int nw = lm_windows(b, s, &start, 1), blk = qs_lm_site_block(m, from);
    p->cap = a->in;
    struct qs_hooks h = path_hooks(p);
    for (int w = 0; w < nw; w++) {
        p->row = (size_t)w * m->ctx;
        if (qs_lm_forward_resume(m, b->tokens->ids + start + (size_t)w * m->ctx, m->ctx, &h, blk,
                                 a->resid + (size_t)w * lm_resid_floats(b), NULL, e) < 0)
            return -1;
        if (b->progress) {
            char what[96];
            snprintf(what, sizeof what, "%s activations (%s): window %d of %d",
                     s == QS_CALIB ? "calibration" : "held-out", p->quant ? "quantized" : "float",
                     w + 1, nw);
            b->progress(b->progress_ctx, what, (double)(w + 1) / nw);
        }
        if (b->cancel)
            return qs_errf(e, "cancelled");
    }
    return 0;
}

static struct qs_resid_cache *resid_cache(struct qs_bench *b, enum qs_split_id sp, int nw,
                                          size_t start, size_t own);

/* Entry l (a multiple of the stride, 1 <= l / stride <= nent) of window w on path k (0 float,
 * 1 quantized). */
static float *resid_entry(const struct qs_resid_cache *c, int k, int l, int w)
{
    return (k ? c->q : c->f) + ((size_t)(l / c->stride - 1) * c->nw + (size_t)w) * c->td;
}

/* 1 when the cache keeps an entry at block l (> 0) */
static int resid_kept(const struct qs_resid_cache *c, int l)
{
    return l > 0 && l % c->stride == 0 && l / c->stride <= c->nent;
}

/* One window's logits through hooks h from block r (0: the embeddings; else from entry r of the
 * cache c, path k: 0 float, 1 quantized), writing the entries after r on the way: the bits of
 * qs_lm_forward's. */
static int cached_forward(const struct qs_lm *m, const uint32_t *tok, const struct qs_hooks *h,
                          struct qs_resid_cache *c, int k, int w, int r, float *x,
                          struct qs_lm_scratch *scr, float *logits, qs_err *e)
{
    size_t Td = c->td;
    if (r > 0)
        memcpy(x, resid_entry(c, k, r, w), Td * sizeof(float));
    for (int l = r; l <= m->n_layer; l++) {
        if (l > r && resid_kept(c, l))
            memcpy(resid_entry(c, k, l, w), x, Td * sizeof(float));
        if (qs_lm_forward_blocks(m, tok, m->ctx, h, l, l + 1, x, scr, logits, e) < 0)
            return -1;
    }
    return 0;
}

/* The last kept entry at or before block lmax that is valid on the float path (when f) and, at
 * blocks after qfrom, on the quantized path (0: none). Every resume point below is one of these:
 * a path's own (f with qfrom INT_MAX, or qfrom 0 alone), both paths' (f, qfrom 0), or a float
 * pass whose quantized pass starts later from it (f, qfrom the first quantized block). */
static int resid_last(const struct qs_resid_cache *c, int lmax, int f, int qfrom)
{
    for (int j = c->nent - 1; j >= 0; j--) {
        int l = (j + 1) * c->stride;
        if (l <= lmax && (!f || c->ok[0][j]) && (l <= qfrom || c->ok[1][j]))
            return l;
    }
    return 0;
}

/* The block a path resumes from: its last kept entry (0: none). */
static int cached_from(const struct qs_resid_cache *c, int k)
{
    return k ? resid_last(c, INT_MAX, 0, 0) : resid_last(c, INT_MAX, 1, INT_MAX);
}

/* Every held-out (or calibration) window through the path: eval's own scoring
 * (qs_lm_score_window), against the float model's logits when KL is wanted. The whole quantized
 * path over the held-out windows (eval's run; not with a site_out rewrite) keeps both paths'
 * residual stream at block entries (qs_resid_cache) and starts from the last entry still valid:
 * after a change at a site, the blocks before it are not run again, and the float pass (for KL)
 * runs only the head. */
static int lm_run(struct qs_bench *b, enum qs_split_id s, struct path *p, struct run_out *o,
                  qs_err *e)
{
    const struct qs_lm *m = b->lm;
    size_t start;
    int nw = lm_windows(b, s, &start, 0), ctx = m->ctx, rc = 0;
    size_t nl = (size_t)ctx * m->vocab;
    float *lq = qs_alloc(nl, sizeof(float), "the logits", e);
    float *lf = lq && o->want_kl ? qs_alloc(nl, sizeof(float), "the logits", e) : NULL;
    double *tl = lq ? qs_alloc((size_t)ctx, sizeof(double), "the token losses", e) : NULL;
    if (!lq || !tl || (o->want_kl && !lf)) {
        free(lq);
        free(lf);
        free(tl);
        return -1;
    }
    p->cap = NULL;
    struct qs_hooks h = path_hooks(p), hf = {.cancel = &b->cancel};
    struct qs_lm_score acc = {0};
    struct qs_resid_cache *rc_ = NULL;
    struct qs_lm_scratch *scr = NULL;
    float *xs = NULL;
    int rf = 0, rq = 0;
    if (s == QS_TEST && p->quant && !p->wov && p->qmask == ~0ULL && p->cmask == ~0ULL &&
        !b->site_out && (rc_ = resid_cache(b, QS_TEST, nw, start, 0))) {
        qs_err e2 = {{0}};
        if (!(scr = qs_lm_scratch_new(m, ctx, &e2)) ||
            !(xs = qs_alloc(rc_->td, sizeof(float), "the residual stream of a window", &e2)))
            rc_ = NULL; /* the whole forwards then, as without the cache */
        else
            rf = cached_from(rc_, 0), rq = cached_from(rc_, 1), rc_->last_from = rq;
    }
    for (int w = 0; w < nw && rc == 0; w++) {
        const uint32_t *x = b->tokens->ids + start + (size_t)w * ctx;
        if (rc_ ? (o->want_kl &&
                   (rc = cached_forward(m, x, &hf, rc_, 0, w, rf, xs, scr, lf, e)) < 0) ||
                      (rc = cached_forward(m, x, &h, rc_, 1, w, rq, xs, scr, lq, e)) < 0
                : (o->want_kl && (rc = qs_lm_forward(m, x, ctx, &hf, lf, e)) < 0) ||
                      (rc = qs_lm_forward(m, x, ctx, &h, lq, e)) < 0)
            break;
        /* scored as eval scores: float side = this run unless KL to the float model is wanted */
        acc.tok_loss = tl;
        if ((rc = qs_lm_score_window(m, x, ctx, o->want_kl ? lf : lq, o->want_kl ? lq : NULL, &acc,
                                     e)) < 0)
            break;
        if (o->unit_loss) {
            double ws = 0.0;
            for (int t = 0; t < ctx; t++)
                ws += tl[t];
            o->unit_loss[w] = ws / ctx;
        }
        if (b->progress) {
            char what[64];
            snprintf(what, sizeof what, "eval: window %d of %d", w + 1, nw);
            b->progress(b->progress_ctx, what, (double)(w + 1) / nw);
        }
        if (b->cancel)
            rc = qs_errf(e, "cancelled");
    }
    for (int j = 0; rc == 0 && rc_ && j < rc_->nent; j++) { /* every window wrote them */
        rc_->ok[1][j] = 1;
        rc_->ok[0][j] |= o->want_kl;
    }
    qs_lm_scratch_free(scr);
    free(xs);
    if (rc == 0) {
        struct qs_lm_eval ev;
        qs_lm_eval_finish(&acc, o->want_kl, &ev);
        o->m.loss = o->want_kl ? ev.loss_q : ev.loss;
        o->m.acc = NAN; /* a language model's metric is the perplexity, exp(loss) */
        o->m.n = (int)ev.ntok;
        o->loss_f = ev.loss;
        o->kl = ev.kl;
        o->agree = ev.top1_agree;
    }
    free(lq);
    free(lf);
    free(tl);
    return rc;
}

static size_t lm_extra(const struct qs_bench *b, int rows)
{
    return (size_t)rows / (size_t)b->lm->ctx * lm_resid_floats(b) * sizeof(float);
}

static const struct family mlp_family = {qs_bench_ready, mlp_rows, mlp_rows, mlp_unit, mlp_resume,
                                         mlp_alloc,      mlp_fill, mlp_run,  mlp_extra};
static const struct family lm_family = {qs_bench_lm_ready, lm_rows,   lm_cached_rows,
                                        lm_unit,           lm_resume, lm_alloc,
                                        lm_fill,           lm_run,    lm_extra};

static const struct family *family_of(const struct qs_bench *b)
{
    return b->lm ? &lm_family : &mlp_family;
}

/* ---- the caches --------------------------------------------------------------------------- */

void qs_bench_acts_free(struct qs_acts *a, int nsites, int in0_owned)
{
    if (a->in)
        for (int i = in0_owned ? 0 : 1; i < nsites; i++)
            free(a->in[i]);
    if (a->pre)
        for (int i = 0; i < nsites; i++)
            free(a->pre[i]);
    free(a->in);
    free(a->pre);
    free(a->resid);
    free(a->x);
    free(a->y);
    memset(a, 0, sizeof *a);
}

static void ensure_static_amax(struct qs_bench *b)
{
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_layer_state *s = &b->ls[i];
        if (s->afmt.kind == QS_FMT_NONE || s->amode != QS_AMODE_STATIC || s->a_static_amax > 0)
            continue;
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        const struct qs_acts *a = &b->f_acts[QS_CALIB];
        s->a_static_amax = qs_bench_site_static_amax(s, a->in[i], a->n, u.in);
    }
}

static int calibrate_static(struct qs_bench *b, qs_err *e);

int qs_bench_update(struct qs_bench *b, qs_err *e)
{
    const struct family *F = family_of(b);
    if (F->ready(b, e) < 0 || qs_bench_methods_refresh(b, 1, e) < 0)
        return -1;
    /* transformers keep no whole-model caches: the analyses stream (qs_bench_stream) */
    if (b->lm)
        return calibrate_static(b, e);
    int S = qs_bench_nunits(b);
    if (!b->f_valid) {
        qs_bench_caches_free(b);
        /* float and quantized activations of both splits (every site's inputs, the MLP's
         * pre-activations, the transformer's block-entry residuals), checked as one figure
         * before any of it is allocated */
        size_t rows = 0, width = 0, total = 0, extra = 0;
        for (int s = 0; s < 2; s++) {
            int r = F->cached_rows(b, (enum qs_split_id)s);
            rows += (size_t)r;
            extra += F->extra_bytes(b, r);
        }
        for (int i = 0; i < S; i++) {
            struct qs_unit u;
            qs_bench_unit(b, i, &u);
            width += (size_t)u.in + (b->lm ? 0 : (size_t)u.out);
        }
        char what[96];
        snprintf(what, sizeof what, "the activation caches (%zu %s, %d sites)",
                 b->lm ? rows / (size_t)b->lm->ctx : rows, b->lm ? "windows" : "samples", S);
        if (qs_size_mul3(rows, width, 2 * sizeof(float), &total) < 0 ||
            qs_size_add(total, 2 * extra, &total) < 0)
            return qs_errf(e, "%s: size overflows", what);
        if (qs_mem_check(total, what, e) < 0)
            return -1;
        for (int s = 0; s < 2; s++) {
            struct path fp = {.b = b};
            if (F->alloc(b, (enum qs_split_id)s, &b->f_acts[s], e) < 0 ||
                F->alloc(b, (enum qs_split_id)s, &b->q_acts[s], e) < 0 ||
                F->fill(b, (enum qs_split_id)s, &b->f_acts[s], 0, &fp, e) < 0) {
                qs_bench_caches_free(b);
                return -1;
            }
            b->q_valid[s] = 0;
        }
        b->f_valid = 1;
    }
    ensure_static_amax(b);
    for (int s = 0; s < 2; s++) {
        if (b->q_valid[s] >= S)
            continue;
        struct path qp = {.b = b, .qmask = ~0ULL, .cmask = ~0ULL, .quant = 1};
        if (F->fill(b, (enum qs_split_id)s, &b->q_acts[s], F->resume_site(b, b->q_valid[s]), &qp,
                    e) < 0)
            return -1;
        b->q_valid[s] = S;
    }
    return 0;
}

int qs_bench_inputs(struct qs_bench *b, enum qs_split_id s, int quant, int site, const float **x,
                    int *n, qs_err *e)
{
    if (qs_bench_update(b, e) < 0)
        return -1;
    if (b->lm) {
        if (qs_bench_site_rows(b, site, e) < 0)
            return -1;
        *x = quant ? b->rows.xq[s] : b->rows.xf[s];
        *n = b->rows.n[s];
        return 0;
    }
    const struct qs_acts *a = quant ? &b->q_acts[s] : &b->f_acts[s];
    *x = a->in[site];
    *n = a->n;
    return 0;
}

int qs_bench_unit_rows(const struct qs_bench *b)
{
    return family_of(b)->unit_rows(b);
}

int qs_bench_split_units(struct qs_bench *b, enum qs_split_id s, qs_err *e)
{
    const struct family *F = family_of(b);
    if (F->ready(b, e) < 0)
        return -1;
    return F->rows(b, s) / F->unit_rows(b);
}

/* The transformer's static activation scales without the caches: a float pass over the
 * calibration windows keeping each site's input absmax (the same maximum the cached inputs
 * give). `eval` and the masked runs need no site activations otherwise. */
struct amax_ctx {
    float *mx;
    const struct qs_bench *b;
};

static void amax_input(void *u, int s, const float *x, int n, int in)
{
    struct amax_ctx *c = u;
    const struct qs_layer_state *ls = &c->b->ls[s];
    if (ls->rot || ls->xs) { /* a method's basis */
        float a = qs_bench_site_static_amax(ls, x, n, in);
        if (a > c->mx[s])
            c->mx[s] = a;
        return;
    }
    size_t len = (size_t)n * in;
    for (size_t j = 0; j < len; j++)
        if (fabsf(x[j]) > c->mx[s])
            c->mx[s] = fabsf(x[j]);
}

static int calibrate_static(struct qs_bench *b, qs_err *e)
{
    if (qs_bench_methods_refresh(b, 1, e) < 0)
        return -1;
    int S = qs_bench_nunits(b), need = 0;
    for (int i = 0; i < S; i++) {
        const struct qs_layer_state *s = &b->ls[i];
        need |= s->afmt.kind != QS_FMT_NONE && s->amode == QS_AMODE_STATIC && s->a_static_amax <= 0;
    }
    if (!need)
        return 0;
    if (!b->lm)
        return qs_bench_update(b, e);
    struct amax_ctx c = {qs_calloc((size_t)S, sizeof(float)), b};
    float *lg =
        c.mx ? qs_alloc((size_t)b->lm->ctx * b->lm->vocab, sizeof(float), "the logits", e) : NULL;
    int rc = lg ? 0 : -1;
    if (!c.mx)
        qs_errf(e, "out of memory");
    struct qs_hooks h = {0};
    h.input = amax_input;
    h.u = &c;
    h.cancel = &b->cancel;
    size_t start;
    int nw = lm_windows(b, QS_CALIB, &start, 1);
    for (int w = 0; w < nw && rc == 0; w++)
        rc = qs_lm_forward(b->lm, b->tokens->ids + start + (size_t)w * b->lm->ctx, b->lm->ctx, &h,
                           lg, e);
    for (int i = 0; rc == 0 && i < S; i++) {
        struct qs_layer_state *s = &b->ls[i];
        if (s->afmt.kind != QS_FMT_NONE && s->amode == QS_AMODE_STATIC && s->a_static_amax <= 0)
            s->a_static_amax = c.mx[i] > 0 ? c.mx[i] : 1e-30f;
    }
    free(c.mx);
    free(lg);
    return rc;
}

static int run_ex(struct qs_bench *b, enum qs_split_id s, uint64_t quant_mask, uint64_t corr_mask,
                  struct run_out *o, qs_err *e)
{
    const struct family *F = family_of(b);
    if (b->lm ? F->ready(b, e) < 0 || calibrate_static(b, e) < 0 : qs_bench_update(b, e) < 0)
        return -1;
    struct path p = {.b = b, .qmask = quant_mask, .cmask = corr_mask, .quant = 1};
    return F->run(b, s, &p, o, e);
}

int qs_bench_run_ex(struct qs_bench *b, enum qs_split_id s, uint64_t quant_mask, uint64_t corr_mask,
                    struct qs_metric *m, double *unit_loss, double *kl, double *agree, qs_err *e)
{
    struct run_out o = {.unit_loss = unit_loss, .want_kl = kl || agree};
    if (run_ex(b, s, quant_mask, corr_mask, &o, e) < 0)
        return -1;
    *m = o.m;
    if (kl)
        *kl = o.kl;
    if (agree)
        *agree = o.agree;
    return 0;
}

int qs_bench_run_weights(struct qs_bench *b, enum qs_split_id s, const float *const *w,
                         const float *const *bias, struct qs_metric *m, qs_err *e)
{
    const struct family *F = family_of(b);
    if (b->lm ? F->ready(b, e) < 0 : qs_bench_update(b, e) < 0)
        return -1;
    struct path p = {.b = b, .quant = 1, .wov = w, .bov = bias};
    struct run_out o = {0};
    if (F->run(b, s, &p, &o, e) < 0)
        return -1;
    *m = o.m;
    return 0;
}

int qs_bench_run(struct qs_bench *b, enum qs_split_id s, uint64_t quant_mask, uint64_t corr_mask,
                 struct qs_metric *m, float *logits, qs_err *e)
{
    if (b->lm && logits)
        return qs_errf(e, "qs_bench_run: logits are an MLP's (use qs_bench_run_ex)");
    if (!b->lm) {
        if (qs_bench_update(b, e) < 0)
            return -1;
        struct path p = {.b = b, .qmask = quant_mask, .cmask = corr_mask, .quant = 1};
        struct run_out o = {.logits = logits};
        if (mlp_run(b, s, &p, &o, e) < 0)
            return -1;
        *m = o.m;
        return 0;
    }
    return qs_bench_run_ex(b, s, quant_mask, corr_mask, m, NULL, NULL, NULL, e);
}

/* ---- evaluation --------------------------------------------------------------------------- */

double qs_bench_bits_per_weight(const struct qs_bench *b)
{
    double bits = 0.0, nw = 0.0;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_unit l;
        qs_bench_unit(b, i, &l);
        double n = (double)l.in * l.out;
        nw += n;
        bits += b->ls[i].wquant ? 8.0 * (double)qs_packed_bytes(&b->ls[i].packed) : 32.0 * n;
        bits += b->ls[i].corr.bits + b->ls[i].xform_bits;
    }
    return nw > 0 ? bits / nw : 0.0;
}

/* A transformer: float and quantized (corrected) forwards of every held-out window, scored by
 * qs_lm_score_window; the float loss is cached for the gate. When set heldout caps the runs'
 * windows, f.loss is the float loss on those windows (the quantized loss's), the gate's stays
 * on the whole split. */
static int lm_eval(struct qs_bench *b, struct qs_eval *ev, qs_err *e)
{
    struct run_out o = {.want_kl = 1};
    struct qs_lm_gate g;
    if (run_ex(b, QS_TEST, ~0ULL, ~0ULL, &o, e) < 0 || qs_bench_lm_gate(b, &g, e) < 0)
        return -1;
    int hw = qs_bench_heldout_windows(b);
    ev->f.loss = b->test_windows > 0 && b->test_windows < hw ? o.loss_f : g.float_loss;
    ev->q.loss = o.m.loss;
    ev->f.acc = ev->q.acc = NAN;
    ev->f.n = ev->q.n = o.m.n;
    ev->kl = o.kl;
    ev->agree = o.agree;
    ev->chance = g.unigram;
    ev->gate_pass = g.pass;
    ev->gate_threshold = g.threshold;
    return 0;
}

int qs_bench_eval(struct qs_bench *b, struct qs_eval *ev, qs_err *e)
{
    memset(ev, 0, sizeof *ev);
    ev->bits_w = qs_bench_bits_per_weight(b);
    if (b->lm)
        return lm_eval(b, ev, e);
    if (qs_bench_update(b, e) < 0)
        return -1;
    int L = b->model->nlayers, C = b->model->layers[L - 1].out;
    const struct qs_acts *f = &b->f_acts[QS_TEST], *q = &b->q_acts[QS_TEST];
    int cf = 0, cq = 0, agree = 0;
    ev->f.loss = qs_xent(f->pre[L - 1], f->y, f->n, C, &cf, NULL);
    ev->q.loss = qs_xent(q->pre[L - 1], q->y, q->n, C, &cq, NULL);
    ev->f.acc = (double)cf / f->n;
    ev->q.acc = (double)cq / q->n;
    ev->f.n = ev->q.n = f->n;
    ev->kl = qs_kl_rows(f->pre[L - 1], q->pre[L - 1], f->n, C, &agree);
    ev->agree = (double)agree / f->n;
    /* gate: accuracy above chance by a share gate_min of the headroom. */
    int *cnt = qs_calloc((size_t)C, sizeof *cnt), maj = 0;
    for (int r = 0; cnt && r < f->n; r++)
        if (f->y[r] >= 0 && f->y[r] < C && ++cnt[f->y[r]] > maj)
            maj = cnt[f->y[r]];
    free(cnt);
    ev->chance = (double)maj / f->n;
    ev->gate_threshold = ev->chance + b->gate_min * (1.0 - ev->chance);
    ev->gate_pass = ev->f.acc >= ev->gate_threshold;
    return 0;
}

/* ---- streaming over windows (transformers) ------------------------------------------------ */

int qs_bench_site_identity(const struct qs_bench *b, int i)
{
    const struct qs_layer_state *s = &b->ls[i];
    int corr = s->corr.method != QS_CORR_CLOCAL && (s->corr.c || s->corr.db || s->corr.amap);
    return !s->wquant && s->afmt.kind == QS_FMT_NONE && !corr && !b->site_out;
}

int qs_bench_stream_windows(struct qs_bench *b, enum qs_split_id s, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "streaming over windows applies to transformers");
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    size_t st;
    return lm_windows(b, s, &st, 1);
}

struct stream {
    struct qs_bench *b;
    const unsigned char *want; /* this group's sites */
    int last, first_q, head, w, stopped;
    float **xf;     /* (nsites) one window's float inputs of the group's sites */
    float *xq_head; /* the head's quantized-path input (its linear is not run) */
    struct path p;  /* the path of this pass */
    int quant;      /* 0: the float pass, 1: the quantized pass */
    qs_stream_fn fn;
    void *ctx;
};

static void stream_input(void *u, int s, const float *x, int n, int in)
{
    struct stream *t = u;
    if (!t->want[s])
        return;
    if (!t->quant && (s >= t->first_q || s == t->head))
        memcpy(t->xf[s], x, (size_t)n * in * sizeof(float));
    else if (t->quant && s == t->head)
        memcpy(t->xq_head, x, (size_t)n * in * sizeof(float));
}

static int stream_linear(void *u, int s, const float *x, int n, float *y, qs_err *e)
{
    struct stream *t = u;
    if (path_linear(&t->p, s, x, n, y, e) < 0)
        return -1;
    if (t->want[s]) {
        int rc = 0;
        if (!t->quant && s < t->first_q)
            rc = t->fn(t->ctx, s, t->w, x, x, y, NULL, n, e);
        else if (t->quant && s >= t->first_q)
            rc = t->fn(t->ctx, s, t->w, t->xf[s], x, NULL, y, n, e);
        if (rc < 0)
            return -1;
    }
    if (s == t->last) { /* nothing wanted after it: stop this pass here */
        t->stopped = 1;
        return qs_errf(e, "stream: stopped");
    }
    return 0;
}

/* sp's cache when it holds these windows of the unrewritten path (site_out: study q2's corrector,
 * which the entries do not describe), else NULL */
static struct qs_resid_cache *resid_match(struct qs_bench *b, enum qs_split_id sp, int nw,
                                          size_t start)
{
    struct qs_resid_cache *c = b->resc[sp];
    if (!c || b->site_out || c->nw != nw || c->start != start ||
        c->td != (size_t)b->lm->ctx * b->lm->d_model)
        return NULL;
    return c;
}

int qs_bench_resid_resume(struct qs_bench *b, enum qs_split_id sp, int nw, size_t start, int l,
                          int k)
{
    struct qs_resid_cache *c = b->lm ? resid_match(b, sp, nw, start) : NULL;
    if (!c)
        return 0;
    return c->last_from = k ? resid_last(c, l, 0, 0) : resid_last(c, l, 1, INT_MAX);
}

const float *qs_bench_resid_at(const struct qs_bench *b, enum qs_split_id sp, int k, int r, int w)
{
    return resid_entry(b->resc[sp], k, r, w);
}

/* The block a stream group's passes start from: the last block entry kept for these windows
 * (qs_resid_cache, filled by error's paired stream and eval's runs) at or before the block of
 * the group's first wanted site, valid on the float path and, when the quantized pass would
 * start after it (bq, the first quantized site's block, before the entry), on the quantized path
 * too; 0 (the embeddings) when there is none. The entries are only read here. Records it in
 * last_from. */
static int resume_block(struct qs_bench *b, enum qs_split_id sp, const struct stream *t, int need_q,
                        int bq)
{
    const struct qs_lm *m = b->lm;
    size_t start;
    int nw = lm_windows(b, sp, &start, 1), first = 0;
    struct qs_resid_cache *c = resid_match(b, sp, nw, start);
    if (!c)
        return 0;
    while (first < m->nsites && !t->want[first])
        first++;
    int bw = first < m->nsites ? qs_lm_site_block(m, first) : 0;
    return c->last_from = resid_last(c, bw, 1, need_q ? bq : INT_MAX);
}

/* One group's passes over every window: the float pass, then the quantized one from the block
 * of the first non-identity site (resumed from the float pass's residual stream). */
static int stream_group(struct qs_bench *b, enum qs_split_id sp, struct stream *t, float *resid,
                        int quant, qs_err *e)
{
    const struct qs_lm *m = b->lm;
    size_t start;
    int nw = lm_windows(b, sp, &start, 1), ctx = m->ctx;
    struct qs_hooks h = {0};
    h.u = t;
    h.input = stream_input;
    h.linear = stream_linear;
    h.cancel = &b->cancel;
    int need_q = quant && t->last >= t->first_q;
    int bq = need_q ? qs_lm_site_block(m, t->first_q) : 0, r = resume_block(b, sp, t, need_q, bq);
    const size_t Td = (size_t)ctx * m->d_model;
    for (int w = 0; w < nw; w++) {
        const uint32_t *tok = b->tokens->ids + start + (size_t)w * ctx;
        t->w = w;
        for (int pass = 0; pass < 1 + need_q; pass++) {
            t->quant = pass;
            t->stopped = 0;
            t->p = (struct path){
                .b = b, .quant = pass, .qmask = pass ? ~0ULL : 0, .cmask = pass ? ~0ULL : 0};
            /* the float pass from entry r; the quantized one from the float pass's residual at
             * bq, or from its own entry r when bq is before it */
            int own = r > 0 && (!pass || bq < r), from = own ? r : pass ? bq : 0;
            if (own)
                memcpy(resid + (size_t)r * Td, resid_entry(b->resc[sp], pass, r, w),
                       Td * sizeof(float));
            if (qs_lm_forward_resume(m, tok, ctx, &h, from, resid, NULL, e) < 0 && !t->stopped)
                return -1;
            /* the head's input hook ran; its linear does not without logits */
            if (!t->stopped && t->want[t->head]) {
                int ident = t->head < t->first_q;
                const float *xf = t->xf[t->head];
                if (!pass && (ident || !need_q) &&
                    t->fn(t->ctx, t->head, w, xf, xf, NULL, NULL, ctx, e) < 0)
                    return -1;
                if (pass && !ident &&
                    t->fn(t->ctx, t->head, w, xf, t->xq_head, NULL, NULL, ctx, e) < 0)
                    return -1;
            }
        }
        if (b->progress) {
            char what[96];
            snprintf(what, sizeof what, "%s windows: %d of %d",
                     sp == QS_CALIB ? "calibration" : "held-out", w + 1, nw);
            b->progress(b->progress_ctx, what, (double)(w + 1) / nw);
        }
        if (b->cancel)
            return qs_errf(e, "cancelled");
    }
    return 0;
}

int qs_bench_stream(struct qs_bench *b, enum qs_split_id sp, const unsigned char *want, int quant,
                    qs_stream_fn fn, void *fctx, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "streaming over windows applies to transformers");
    if (qs_bench_lm_ready(b, e) < 0 || (quant && calibrate_static(b, e) < 0))
        return -1;
    const struct qs_lm *m = b->lm;
    int S = m->nsites, ctx = m->ctx, first_q = S, rc = -1;
    for (int i = 0; quant && i < S && first_q == S; i++)
        if (!qs_bench_site_identity(b, i))
            first_q = i;
    if (!quant)
        first_q = S; /* the float pass alone: every wanted site is as if before it */
    float **xf = qs_calloc((size_t)S, sizeof *xf);
    unsigned char *g = qs_calloc((size_t)S, 1);
    float *resid = xf && g ? qs_alloc(lm_resid_floats(b), sizeof(float),
                                      "the residual stream "
                                      "of a window",
                                      e)
                           : NULL;
    float *xqh = NULL;
    if (!resid) {
        if (!xf || !g)
            qs_errf(e, "out of memory");
        goto out;
    }
    /* groups of consecutive wanted sites whose captured float inputs fit the budget */
    int i = 0, over = -1;
    while (i < S && over < 0) {
        size_t used = 0;
        int last = -1;
        memset(g, 0, (size_t)S);
        for (; i < S; i++) {
            if (!want[i])
                continue;
            int cap = i >= first_q || i == S - 1;
            size_t bytes = cap ? (size_t)ctx * m->sites[i].in * sizeof(float) : 0;
            if (used > 0 && used + bytes > b->act_budget)
                break;
            if (bytes > b->act_budget) {
                over = i;
                break;
            }
            used += bytes;
            g[i] = 1;
            last = i;
        }
        if (over >= 0) {
            qs_errf(e,
                    "%s: one window's inputs (%.1f MB) exceed the activation budget "
                    "(%.1f MB)",
                    m->sites[over].name,
                    (double)ctx * m->sites[over].in * sizeof(float) / 1048576.0,
                    b->act_budget / 1048576.0);
            goto out;
        }
        if (last < 0)
            break;
        if (qs_mem_check(used, "the captured inputs of a window", e) < 0)
            goto out;
        int ok = 1;
        for (int k = 0; k <= last && ok; k++)
            if (g[k] && (k >= first_q || k == S - 1) &&
                !(xf[k] = qs_alloc((size_t)ctx * m->sites[k].in, sizeof(float),
                                   "the captured inputs of a window", e)))
                ok = 0;
        if (ok && g[S - 1] && !xqh &&
            !(xqh =
                  qs_alloc((size_t)ctx * m->sites[S - 1].in, sizeof(float), "the head's input", e)))
            ok = 0;
        struct stream t = {.b = b,
                           .want = g,
                           .last = last,
                           .first_q = first_q,
                           .head = S - 1,
                           .xf = xf,
                           .xq_head = xqh,
                           .fn = fn,
                           .ctx = fctx};
        if (!ok || stream_group(b, sp, &t, resid, quant, e) < 0)
            goto out;
        for (int k = 0; k < S; k++) {
            free(xf[k]);
            xf[k] = NULL;
        }
    }
    rc = 0;
out:
    for (int k = 0; xf && k < S; k++)
        free(xf[k]);
    free(xf);
    free(g);
    free(resid);
    free(xqh);
    return rc;
}

/* ---- the paired stream: float and quantized blocks in lockstep -------------------------- */

/* One window's paired passes: the float pass runs block l, keeping each wanted site's float input
 * and output (slots of the block's sites), then the quantized pass runs block l from its own
 * residual stream and hands fn both outputs. */
struct pairs {
    struct qs_bench *b;
    const unsigned char *want;
    int first_q, head, blk0, quant, w;
    float **xf, **yf;         /* (sites a block) the current block's float inputs and outputs */
    float *xf_head, *xq_head; /* the head's inputs on both paths (its linear is not run) */
    struct path p;
    qs_stream_fn fn;
    void *ctx;
};

static void pairs_input(void *u, int s, const float *x, int n, int in)
{
    struct pairs *t = u;
    size_t len = (size_t)n * in * sizeof(float);
    if (!t->want[s])
        return;
    if (s == t->head)
        memcpy(t->quant ? t->xq_head : t->xf_head, x, len);
    else if (!t->quant && s >= t->first_q)
        memcpy(t->xf[s - t->blk0], x, len);
}

static int pairs_linear(void *u, int s, const float *x, int n, float *y, qs_err *e)
{
    struct pairs *t = u;
    if (path_linear(&t->p, s, x, n, y, e) < 0)
        return -1;
    if (!t->want[s])
        return 0;
    if (!t->quant && s < t->first_q) /* before the first non-identity site: one path */
        return t->fn(t->ctx, s, t->w, x, x, y, NULL, n, e);
    if (!t->quant)
        memcpy(t->yf[s - t->blk0], y, (size_t)n * t->b->lm->sites[s].out * sizeof(float));
    else if (s >= t->first_q)
        return t->fn(t->ctx, s, t->w, t->xf[s - t->blk0], x, t->yf[s - t->blk0], y, n, e);
    return 0;
}

/* Split sp's block-entry cache for nw windows from token start within what the activation
 * budget leaves beside `own` bytes of the pass and the other split's cache, and at most half of
 * the budget: the bench's own when
 * it is of these windows and still fits, else a new one with the smallest stride whose entries
 * fit (NULL when not one entry fits, or the memory is not there: the pass then runs from the
 * embeddings, as without it). */
static struct qs_resid_cache *resid_cache(struct qs_bench *b, enum qs_split_id sp, int nw,
                                          size_t start, size_t own)
{
    const struct qs_lm *m = b->lm;
    size_t td = (size_t)m->ctx * m->d_model, per = 2 * (size_t)nw * td * sizeof(float);
    size_t other = qs_resid_cache_bytes(b->resc[!sp]), used = own + other;
    size_t room = used < b->act_budget ? b->act_budget - used : 0;
    if (room > b->act_budget / 2) /* each split's at most half: the other's room, and the peak
                                     (eval's held-out entries took 453 MB of 512 on GPT-2-small
                                     beside its 400 MB of logits: 1.55 GB in all) */
        room = b->act_budget / 2;
    struct qs_resid_cache *c = b->resc[sp];
    if (c && c->nw == nw && c->start == start && c->td == td && qs_resid_cache_bytes(c) <= room)
        return c;
    qs_resid_cache_free(c);
    b->resc[sp] = NULL;
    size_t fit = per ? room / per : 0;
    if (fit < 1 || nw < 1)
        return NULL;
    int L = m->n_layer, stride = (int)((L + fit - 1) / fit);
    if (stride < 1)
        stride = 1;
    int nent = L / stride;
    qs_err e2 = {{0}};
    if (nent < 1 || qs_mem_check((size_t)nent * per, "the block-entry residuals", &e2) < 0 ||
        !(c = qs_calloc(1, sizeof *c)))
        return NULL;
    *c =
        (struct qs_resid_cache){.nw = nw, .stride = stride, .nent = nent, .start = start, .td = td};
    c->f = malloc((size_t)nent * nw * td * sizeof(float));
    c->q = malloc((size_t)nent * nw * td * sizeof(float));
    c->ok[0] = qs_calloc((size_t)nent, 1);
    c->ok[1] = qs_calloc((size_t)nent, 1);
    if (!c->f || !c->q || !c->ok[0] || !c->ok[1]) {
        qs_resid_cache_free(c);
        return NULL;
    }
    return b->resc[sp] = c;
}

int qs_bench_stream_pairs(struct qs_bench *b, enum qs_split_id sp, const unsigned char *want,
                          qs_stream_fn fn, void *fctx, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "streaming over windows applies to transformers");
    if (qs_bench_lm_ready(b, e) < 0 || calibrate_static(b, e) < 0)
        return -1;
    const struct qs_lm *m = b->lm;
    int S = m->nsites, L = m->n_layer, ctx = m->ctx, first_q = S, last = -1;
    int nper = (S - 1) / L; /* sites of a block */
    for (int i = 0; i < S && first_q == S; i++)
        if (!qs_bench_site_identity(b, i))
            first_q = i;
    for (int i = 0; i < S; i++)
        if (want[i])
            last = i;
    if (last < 0)
        return 0;
    /* the kept activations: a block's slots (the widest site of each slot over the blocks
     * streamed in pairs) and the head's inputs, checked against the budget */
    size_t *slot_in = qs_calloc((size_t)nper, sizeof(size_t)),
           *slot_out = qs_calloc((size_t)nper, sizeof(size_t)), kept = 0;
    if (!slot_in || !slot_out) {
        free(slot_in);
        free(slot_out);
        return qs_errf(e, "out of memory");
    }
    for (int i = first_q; i < S - 1; i++) {
        int k = i - qs_lm_block_first_site(m, qs_lm_site_block(m, i));
        if (!want[i])
            continue;
        if ((size_t)m->sites[i].in > slot_in[k])
            slot_in[k] = (size_t)m->sites[i].in;
        if ((size_t)m->sites[i].out > slot_out[k])
            slot_out[k] = (size_t)m->sites[i].out;
    }
    for (int k = 0; k < nper; k++)
        kept += (slot_in[k] + slot_out[k]) * ctx * sizeof(float);
    if (want[S - 1])
        kept += 2 * (size_t)ctx * m->sites[S - 1].in * sizeof(float);
    if (kept > b->act_budget) {
        free(slot_in);
        free(slot_out);
        return 1;
    }
    int rc = -1;
    float **xf = qs_calloc((size_t)nper, sizeof *xf), **yf = qs_calloc((size_t)nper, sizeof *yf);
    float *xs[2] = {NULL, NULL}, *hx[2] = {NULL, NULL};
    struct qs_lm_scratch *scr = NULL;
    size_t Td = (size_t)ctx * m->d_model;
    if (!xf || !yf) {
        qs_errf(e, "out of memory");
        goto out;
    }
    if (qs_mem_check(kept + 2 * Td * sizeof(float), "the kept activations of a block", e) < 0)
        goto out;
    for (int k = 0; k < nper; k++)
        if ((slot_in[k] && !(xf[k] = qs_alloc(ctx * slot_in[k], sizeof(float),
                                              "the float inputs of a block", e))) ||
            (slot_out[k] && !(yf[k] = qs_alloc(ctx * slot_out[k], sizeof(float),
                                               "the float outputs of a block", e))))
            goto out;
    for (int k = 0; k < 2; k++)
        if (!(xs[k] = qs_alloc(Td, sizeof(float), "the residual stream of a window", e)) ||
            (want[S - 1] && !(hx[k] = qs_alloc((size_t)ctx * m->sites[S - 1].in, sizeof(float),
                                               "the head's input", e))))
            goto out;
    if (!(scr = qs_lm_scratch_new(m, ctx, e)))
        goto out;
    size_t start;
    int nw = lm_windows(b, sp, &start, 1), first = 0;
    while (!want[first])
        first++;
    /* blocks [0, bq) are one path; from bq to the last wanted site's block, both in turn; both
     * from block r, the last kept entry (of the calibration windows) at or before the first
     * wanted site's block, where both paths' residuals are kept (0: from the embeddings) */
    int bq = first_q < S ? qs_lm_site_block(m, first_q) : L + 1, bl = qs_lm_site_block(m, last),
        r = 0;
    /* not for a rewritten path (site_out: study q2's corrector), which the entries do not
     * describe */
    struct qs_resid_cache *rc_ =
        sp == QS_CALIB && !b->site_out ? resid_cache(b, QS_CALIB, nw, start, kept) : NULL;
    if (rc_)
        r = resid_last(rc_, qs_lm_site_block(m, first), 1, 0);
    if (rc_)
        rc_->last_from = r;
    struct pairs t = {.b = b,
                      .want = want,
                      .first_q = first_q,
                      .head = S - 1,
                      .xf = xf,
                      .yf = yf,
                      .xf_head = hx[0],
                      .xq_head = hx[1],
                      .fn = fn,
                      .ctx = fctx};
    struct qs_hooks h = {0};
    h.u = &t;
    h.input = pairs_input;
    h.linear = pairs_linear;
    h.cancel = &b->cancel;
    const struct path pf = {.b = b}, pq = {.b = b, .quant = 1, .qmask = ~0ULL, .cmask = ~0ULL};
    for (int w = 0; w < nw; w++) {
        const uint32_t *tok = b->tokens->ids + start + (size_t)w * ctx;
        t.w = w;
        if (r > 0) {
            memcpy(xs[0], resid_entry(rc_, 0, r, w), Td * sizeof(float));
            memcpy(xs[1], resid_entry(rc_, 1, r, w), Td * sizeof(float));
        }
        for (int l = r; l <= bl + 1 && l <= L; l++) {
            if (l == bq && r < bq && l > 0) /* the paths part: the quantized one from here */
                memcpy(xs[1], xs[0], Td * sizeof(float));
            if (rc_ && l > r && resid_kept(rc_, l)) {
                memcpy(resid_entry(rc_, 0, l, w), xs[0], Td * sizeof(float));
                memcpy(resid_entry(rc_, 1, l, w), xs[l <= bq ? 0 : 1], Td * sizeof(float));
            }
            if (l > bl)
                break;
            t.blk0 = qs_lm_block_first_site(m, l);
            for (int pass = 0; pass < (l < bq ? 1 : 2); pass++) {
                t.quant = pass;
                t.p = pass ? pq : pf;
                if (qs_lm_forward_blocks(m, tok, ctx, &h, l, l + 1, xs[pass], scr, NULL, e) < 0)
                    goto out;
            }
            if (b->cancel) {
                qs_errf(e, "cancelled");
                goto out;
            }
        }
        if (want[S - 1] &&
            fn(fctx, S - 1, w, hx[0], first_q < S ? hx[1] : hx[0], NULL, NULL, ctx, e) < 0)
            goto out;
        if (b->progress) {
            char what[96];
            snprintf(what, sizeof what, "%s windows: %d of %d",
                     sp == QS_CALIB ? "calibration" : "held-out", w + 1, nw);
            b->progress(b->progress_ctx, what, (double)(w + 1) / nw);
        }
        if (b->cancel) {
            qs_errf(e, "cancelled");
            goto out;
        }
    }
    /* every window wrote the entries after r up to the last block run */
    for (int k = 0; rc_ && k < rc_->nent; k++) {
        int l = (k + 1) * rc_->stride;
        if (l > r && l <= bl + 1)
            rc_->ok[0][k] = rc_->ok[1][k] = 1;
    }
    rc = 0;
out:
    for (int k = 0; k < nper; k++) {
        free(xf ? xf[k] : NULL);
        free(yf ? yf[k] : NULL);
    }
    free(xf);
    free(yf);
    free(slot_in);
    free(slot_out);
    for (int k = 0; k < 2; k++) {
        free(xs[k]);
        free(hx[k]);
    }
    qs_lm_scratch_free(scr);
    return rc;
}

struct rows_ctx {
    struct qs_bench *b;
    int split, in, ctx;
};

static int rows_fn(void *u, int site, int w, const float *xf, const float *xq, const float *yf,
                   const float *yq, int n, qs_err *e)
{
    (void)site, (void)yf, (void)yq, (void)e;
    struct rows_ctx *c = u;
    size_t off = (size_t)w * c->ctx * c->in, len = (size_t)n * c->in * sizeof(float);
    memcpy(c->b->rows.xf[c->split] + off, xf, len);
    memcpy(c->b->rows.xq[c->split] + off, xq, len);
    return 0;
}

int qs_bench_site_rows(struct qs_bench *b, int site, qs_err *e)
{
    if (!b->lm)
        return qs_bench_update(b, e);
    if (qs_bench_update(b, e) < 0)
        return -1;
    if (b->rows.site == site)
        return 0;
    const struct qs_lm *m = b->lm;
    const struct qs_lm_site *st = &m->sites[site];
    for (int s = 0; s < 2; s++) {
        free(b->rows.xf[s]);
        free(b->rows.xq[s]);
    }
    memset(&b->rows, 0, sizeof b->rows);
    b->rows.site = -1;
    size_t start, total = 0;
    int n[2];
    for (int s = 0; s < 2; s++) {
        n[s] = lm_windows(b, (enum qs_split_id)s, &start, 1) * m->ctx;
        total += 2 * (size_t)n[s] * st->in * sizeof(float);
    }
    if (total > b->act_budget)
        return qs_errf(e,
                       "%s: its input rows on both paths and splits (%.1f MB) exceed the "
                       "activation budget (%.1f MB); a smaller calibration (set calib "
                       "tokens=N) fits",
                       st->name, total / 1048576.0, b->act_budget / 1048576.0);
    if (qs_mem_check(total, "a site's input rows", e) < 0)
        return -1;
    unsigned char *want = qs_calloc((size_t)m->nsites, 1);
    int rc = want ? 0 : qs_errf(e, "out of memory");
    for (int s = 0; s < 2 && rc == 0; s++) {
        b->rows.n[s] = n[s];
        if (!(b->rows.xf[s] =
                  qs_alloc((size_t)n[s] * st->in + 1, sizeof(float), "a site's input rows", e)) ||
            !(b->rows.xq[s] =
                  qs_alloc((size_t)n[s] * st->in + 1, sizeof(float), "a site's input rows", e))) {
            rc = -1;
            break;
        }
        want[site] = 1;
        struct rows_ctx c = {b, s, st->in, m->ctx};
        rc = qs_bench_stream(b, (enum qs_split_id)s, want, 1, rows_fn, &c, e);
    }
    free(want);
    if (rc < 0) {
        for (int s = 0; s < 2; s++) {
            free(b->rows.xf[s]);
            free(b->rows.xq[s]);
        }
        memset(&b->rows, 0, sizeof b->rows);
        b->rows.site = -1;
        return -1;
    }
    b->rows.site = site;
    return 0;
}

size_t qs_bench_held_bytes(const struct qs_bench *b)
{
    size_t t = 0;
    int S = qs_bench_nunits(b);
    for (int s = 0; s < 2; s++) {
        const struct qs_acts *as[2] = {&b->f_acts[s], &b->q_acts[s]};
        for (int k = 0; k < 2; k++) {
            const struct qs_acts *a = as[k];
            for (int i = 0; i < S; i++) {
                struct qs_unit u;
                qs_bench_unit(b, i, &u);
                if (a->in && a->in[i] && (i > 0 || b->lm))
                    t += (size_t)a->n * u.in * sizeof(float);
                if (a->pre && a->pre[i])
                    t += (size_t)a->n * u.out * sizeof(float);
            }
            if (a->x && b->data)
                t += (size_t)a->n * (b->data->d * sizeof(float) + sizeof(int));
        }
    }
    if (b->rows.site >= 0 && b->lm)
        for (int s = 0; s < 2; s++)
            t += 2 * (size_t)b->rows.n[s] * b->lm->sites[b->rows.site].in * sizeof(float);
    if (b->errc)
        t += (size_t)b->errc->nsites * (12 * sizeof(double) + 1);
    t += qs_moments_cache_bytes(b->momc);
    t += qs_resid_cache_bytes(b->resc[0]) + qs_resid_cache_bytes(b->resc[1]);
    if (b->head_gram && b->lm) {
        size_t in = (size_t)b->lm->sites[b->lm->nsites - 1].in;
        t += in * in * sizeof(double);
    }
    return t;
}
