/* qat.c - quantization-aware fine-tuning with the straight-through estimator: MLPs on their
 * backward pass (qs_mlp_loss_grad), transformers on lm_grad.c's through the hooks of qat.h and
 * lm_train.c's AdamW. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lm_grad.h"
#include "qscope/lmbench.h"
#include "qscope/qat.h"
#include "qscope/sensitivity.h"

struct qat_fwd {
    const struct qs_format *fmt;
    const struct qs_qopts *opt;
};

/* The straight-through forward model: each layer's weights quantized from the master weights
 * (dQ(W)/dW taken as 1, so the trainer applies the gradient to W unchanged). */
static int qat_forward(void *ctx, const struct qs_mlp *m, struct qs_mlp *fwd, qs_err *e)
{
    const struct qat_fwd *q = ctx;
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (q->fmt[i].kind != QS_FMT_NONE) {
            if (qs_quant_fake(&q->fmt[i], &q->opt[i], l->w, l->out, l->in, fwd->layers[i].w, e) < 0)
                return qs_err_prefix(e, l->name);
        } else {
            memcpy(fwd->layers[i].w, l->w, (size_t)l->in * l->out * sizeof(float));
        }
        memcpy(fwd->layers[i].b, l->b, (size_t)l->out * sizeof(float));
    }
    return 0;
}

int qs_qat_train(struct qs_mlp *m, const struct qs_format *fmt, const struct qs_qopts *opt,
                 const float *x, const int *y, int n, const struct qs_qat_opts *o, qs_train_cb cb,
                 void *ctx, qs_err *e)
{
    struct qat_fwd q = {fmt, opt};
    struct qs_train_opts t = {.epochs = o->epochs,
                              .batch = o->batch,
                              .lr = o->lr,
                              .weight_decay = 0.0,
                              .seed = o->seed,
                              .fwd = qat_forward,
                              .fwd_ctx = &q};
    if (qs_mlp_train(m, x, y, n, &t, cb, ctx, e) < 0) {
        if (!strncmp(e->msg, "train: ", 7)) /* say which command it was */
            memmove(e->msg + 5, e->msg + 7, strlen(e->msg + 7) + 1), memcpy(e->msg, "qat: ", 5);
        return -1;
    }
    return 0;
}

int qs_qat(struct qs_bench *b, const struct qs_qat_opts *o, qs_train_cb cb, void *ctx,
           struct qs_qat_result *r, qs_err *e)
{
    memset(r, 0, sizeof *r);
    struct qs_eval ev;
    if (qs_bench_eval(b, &ev, e) < 0)
        return -1;
    int L = b->model->nlayers, any = 0;
    for (int i = 0; i < L; i++) {
        any |= b->ls[i].wfmt.kind != QS_FMT_NONE;
        r->act_quant |= b->ls[i].afmt.kind != QS_FMT_NONE;
        r->dropped_corr += b->ls[i].corr.method != QS_CORR_NONE;
    }
    if (!any)
        return qs_errf(e, "qat: no layer's weights are quantized, so there is nothing to train "
                          "through (quant PATTERN FORMAT first)");
    int n = b->split.n_train, d = b->data->d;
    if (n < 1)
        return qs_errf(e, "qat: the split has no training samples (set split train=F)");
    r->f = ev.f;
    r->ptq = ev.q;
    struct qs_format *fmt = qs_calloc((size_t)L, sizeof *fmt);
    struct qs_qopts *opt = qs_calloc((size_t)L, sizeof *opt);
    float *x = malloc((size_t)n * d * sizeof(float));
    int *y = malloc((size_t)n * sizeof(int));
    struct qs_mlp *master = qs_mlp_clone(b->model);
    char *path = qs_strdup(b->model_path);
    int rc = -1;
    if (!fmt || !opt || !x || !y || !master || (b->model_path && !path)) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (int i = 0; i < L; i++) {
        fmt[i] = b->ls[i].wfmt;
        opt[i] = b->ls[i].wopt;
    }
    qs_dataset_gather(b->data, b->split.train, n, x, y);
    if (qs_qat_train(master, fmt, opt, x, y, n, o, cb, ctx, e) < 0)
        goto out;
    char buf[160];
    snprintf(buf, sizeof buf, "epochs=%d batch=%d lr=%.9g seed=%llu (straight-through)", o->epochs,
             o->batch, o->lr, (unsigned long long)o->seed);
    qs_mlp_set_meta(master, "qscope.qat", buf);
    /* The new model keeps the session's split and calibration size, not its metadata's. */
    uint64_t sseed = b->split_seed;
    double ft = b->f_train, fc = b->f_calib;
    int calib_n = b->calib_n;
    /* It replaces the model only when every step succeeded (a stage holding the data): a
     * failure leaves the old model, its rules and corrections as they were. */
    struct qs_bench *st = qs_bench_stage(b, QS_KEEP_DATA);
    if (!st) {
        qs_errf(e, "out of memory");
        goto out;
    }
    int src = qs_bench_set_model(st, master, path, e);
    master = NULL; /* owned by the stage now */
    if (src < 0 ||
        ((st->split_seed != sseed || st->f_train != ft || st->f_calib != fc) &&
         qs_bench_resplit(st, sseed, ft, fc, e) < 0) ||
        (calib_n > 0 && st->calib_n != calib_n && qs_bench_set_calib(st, calib_n, e) < 0) ||
        qs_bench_eval(st, &ev, e) < 0) {
        qs_bench_abort(b, st, QS_KEEP_DATA);
        goto out;
    }
    qs_bench_commit(b, st);
    r->f_qat = ev.f;
    r->qat = ev.q;
    double gap = r->f.acc - r->ptq.acc;
    r->gap_closed = gap > 0 ? (r->qat.acc - r->ptq.acc) / gap : NAN;
    rc = 0;
out:
    qs_mlp_free(master);
    free(fmt);
    free(opt);
    free(x);
    free(y);
    free(path);
    return rc;
}

/* ---- transformers ------------------------------------------------------------------------- */

static const float *qat_weight(void *u, int s)
{
    const struct qs_qat_hooks *q = u;
    return q->wq[s];
}

static void qat_act(void *u, int s, float *x, int n, int in)
{
    struct qs_qat_hooks *q = u;
    qs_err e = {{0}};
    if (q->ls[s].afmt.kind != QS_FMT_NONE && qs_bench_act_quant(&q->ls[s], x, n, in, x, &e) < 0 &&
        !q->failed) {
        q->failed = 1;
        snprintf(q->msg, sizeof q->msg, "%s: %s", q->m->sites[s].name, e.msg);
    }
}

int qs_qat_hooks_refresh(void *u, qs_err *e)
{
    struct qs_qat_hooks *q = u;
    if (q->failed)
        return qs_errf(e, "%s", q->msg);
    for (int s = 0; s < q->m->nsites; s++) {
        const struct qs_lm_site *st = &q->m->sites[s];
        if (q->wq[s] &&
            qs_quant_fake(&q->ls[s].wfmt, &q->ls[s].wopt, st->w, st->out, st->in, q->wq[s], e) < 0)
            return qs_err_prefix(e, st->name);
    }
    return 0;
}

void qs_qat_hooks_free(struct qs_qat_hooks *q)
{
    if (q->wq)
        for (int s = 0; s < q->m->nsites; s++)
            free(q->wq[s]);
    free(q->wq);
    q->wq = NULL;
}

int qs_qat_hooks_init(struct qs_qat_hooks *q, const struct qs_lm *m,
                      const struct qs_layer_state *ls, qs_err *e)
{
    memset(q, 0, sizeof *q);
    q->m = m;
    q->ls = ls;
    if (!(q->wq = qs_calloc((size_t)m->nsites, sizeof *q->wq)))
        return qs_errf(e, "out of memory");
    for (int s = 0; s < m->nsites; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        if (ls[s].afmt.kind != QS_FMT_NONE) {
            if (ls[s].amode == QS_AMODE_STATIC && !(ls[s].a_static_amax > 0)) {
                qs_qat_hooks_free(q);
                return qs_errf(e, "%s: static activation scale not calibrated", st->name);
            }
            q->na++;
        }
        if (ls[s].wfmt.kind == QS_FMT_NONE)
            continue;
        char what[160];
        snprintf(what, sizeof what, "%s: the fake-quantized weight", st->name);
        if (!(q->wq[s] = qs_alloc((size_t)st->out * st->in, sizeof(float), what, e))) {
            qs_qat_hooks_free(q);
            return -1;
        }
        q->nw++;
    }
    q->h.u = q;
    q->h.weight = qat_weight;
    q->h.act = q->na ? qat_act : NULL;
    if (qs_qat_hooks_refresh(q, e) < 0) {
        qs_qat_hooks_free(q);
        return -1;
    }
    return 0;
}

void qs_qat_lm_defaults(struct qs_qat_lm_opts *o)
{
    *o = (struct qs_qat_lm_opts){.samples = 64,
                                 .epochs = 1,
                                 .batch = 16,
                                 .warmup = 10,
                                 .lr = 5e-4,
                                 .min_lr = 5e-5,
                                 .wd = 0.0,
                                 .clip = 1.0};
}

/* A copy of src with its current weights: the same loader on its path, then every tensor. */
static struct qs_lm *lm_clone(const struct qs_lm *src, qs_err *e)
{
    struct qs_lm *m = NULL;
    size_t n = strlen(src->path);
    int gguf = n > 5 && !strcmp(src->path + n - 5, ".gguf");
    if ((gguf ? qs_lm_load_gguf(src->path, &m, e) : qs_lm_load(src->path, &m, e)) < 0)
        return NULL;
    struct qs_lm_grad *ga = qs_lm_grad_new(src, e), *gb = ga ? qs_lm_grad_new(m, e) : NULL;
    int ok = ga && gb && ga->ntensor == gb->ntensor;
    for (int i = 0; ok && i < ga->ntensor; i++) {
        ok = ga->t[i].n == gb->t[i].n;
        if (ok)
            memcpy(gb->t[i].val, ga->t[i].val, ga->t[i].n * sizeof(float));
    }
    if (!ok && ga && gb)
        qs_errf(e, "%s changed on disk since it was loaded; load it again", src->path);
    qs_lm_grad_free(ga);
    qs_lm_grad_free(gb);
    if (!ok) {
        qs_lm_free(m);
        return NULL;
    }
    return m;
}

/* The trained model m (owned) replaces the bench's, after writing it to o->out when asked; the
 * bench keeps its rules, token data and calibration size, and evaluates it into r. A failure
 * leaves the bench as it was (m freed). */
static int install(struct qs_bench *b, struct qs_lm *m, const struct qs_qat_lm_opts *o,
                   struct qs_qat_lm_result *r, qs_err *e)
{
    const struct qs_lm *bm = b->lm;
    struct qs_eval ev;
    char *path = qs_strdup(o->out ? o->out : bm->path);
    if (!path) {
        qs_lm_free(m);
        return qs_errf(e, "out of memory");
    }
    if (o->out) {
        char desc[256], v[2][32];
        snprintf(desc, sizeof desc,
                 "qscope %s qat steps=%d batch=%d ctx=%d lr=%.9g min_lr=%.9g warmup=%d wd=%.9g "
                 "clip=%.9g seed=%llu%s (straight-through, AdamW) from %s",
                 QS_VERSION, r->steps, r->batch, r->ctx, o->lr, o->min_lr, o->warmup, o->wd,
                 o->clip, (unsigned long long)o->seed, o->mode == QS_QAT_BLOCK ? " mode=block" : "",
                 bm->path);
        snprintf(v[0], sizeof v[0], "%.6f", r->ste_loss);
        snprintf(v[1], sizeof v[1], "%ld", r->tokens);
        const char *keys[] = {"qscope.qat", "qscope.qat_val_loss_quant", "qscope.qat_tokens"};
        const char *vals[] = {desc, v[0], v[1]};
        if (qs_lm_save(m, o->out, NULL, NULL, keys, vals, 3, e) < 0) {
            qs_lm_free(m);
            free(path);
            return qs_err_prefix(e, "qat out=");
        }
    }
    /* the new model replaces the old one only when every step succeeded */
    struct qs_bench *st = qs_bench_stage(b, QS_KEEP_TOKENS);
    if (!st) {
        qs_lm_free(m);
        free(path);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_lm(st, m, path, e) < 0 || qs_bench_eval(st, &ev, e) < 0) {
        qs_bench_abort(b, st, QS_KEEP_TOKENS);
        free(path);
        return -1;
    }
    free(path);
    qs_bench_commit(b, st);
    r->f_loss_after = ev.f.loss;
    r->qat_loss = ev.q.loss;
    double gap = r->ptq_loss - r->f_loss;
    r->gap_closed = gap > 0 ? (r->ptq_loss - r->qat_loss) / gap : NAN;
    return 0;
}

/* ---- block by block (Block-AP) ------------------------------------------------------------ */

/* Recomputes Q(W) of block l's sites only (the others do not change while it trains). */
static int refresh_block(struct qs_qat_hooks *q, int l, qs_err *e)
{
    if (q->failed)
        return qs_errf(e, "%s", q->msg);
    for (int s = 0; s < q->m->nsites; s++) {
        const struct qs_lm_site *st = &q->m->sites[s];
        if (q->wq[s] && qs_lm_site_block(q->m, s) == l &&
            qs_quant_fake(&q->ls[s].wfmt, &q->ls[s].wopt, st->w, st->out, st->in, q->wq[s], e) < 0)
            return qs_err_prefix(e, st->name);
    }
    return 0;
}

/* y = block l of m on every window of x (W windows of T rows, (W T, d)), bt windows at a time;
 * with target: *mse = the mean over every entry of (y - target)^2 (y may be NULL then). */
static int block_all(const struct qs_lm *m, int l, const float *x, int W, int T, int bt,
                     const struct qs_hooks *h, float *y, const float *target, double *mse,
                     qs_err *e)
{
    size_t rows = (size_t)T * m->d_model;
    double sum = 0;
    for (int w0 = 0; w0 < W; w0 += bt) {
        int n = W - w0 < bt ? W - w0 : bt;
        size_t off = (size_t)w0 * rows;
        double part = 0;
        if (qs_lm_block(m, l, x + off, n, T, h, y ? y + off : NULL, target ? target + off : NULL,
                        &part, NULL, e) < 0)
            return -1;
        sum += part * n;
    }
    if (mse)
        *mse = sum / W;
    return 0;
}

/* Block l's tensors in g (by their name prefix): their indices into g->t, and their count. */
static int block_tensors(const struct qs_lm *m, const struct qs_lm_grad *g, int l, int *idx)
{
    char pre[48];
    snprintf(pre, sizeof pre, m->family == QS_LM_GPT2 ? "h.%d." : "model.layers.%d.", l);
    int n = 0;
    for (int i = 0; i < g->ntensor; i++)
        if (!strncmp(g->t[i].name, pre, strlen(pre)))
            idx[n++] = i;
    return n;
}

/* The blocks in training order: depth, or by the summed sensitivity of their quantized sites
 * (the bench's last `sensitivity`), largest first, ties in depth order. */
static int block_order(const struct qs_bench *b, const struct qs_qat_lm_opts *o, int *ord,
                       qs_err *e)
{
    const struct qs_lm *m = b->lm;
    int L = m->n_layer;
    double *sens = qs_calloc((size_t)L, sizeof *sens);
    if (!sens)
        return qs_errf(e, "out of memory");
    for (int l = 0; l < L; l++)
        ord[l] = l;
    if (o->order == QS_QAT_ORDER_SENS) {
        for (int s = 0; s < m->nsites; s++) {
            int l = qs_lm_site_block(m, s);
            const struct qs_layer_state *ls = &b->ls[s];
            if (l < 0 || l >= L || /* the head (block n_layer) is no block */
                (ls->wfmt.kind == QS_FMT_NONE && ls->afmt.kind == QS_FMT_NONE))
                continue;
            if (!ls->sens_method[0]) {
                free(sens);
                return qs_errf(e,
                               "qat order=sensitivity: %s has no sensitivity under its "
                               "current format; run `sensitivity` first",
                               m->sites[s].name);
            }
            sens[l] += ls->sens;
        }
        for (int i = 1; i < L; i++) /* stable insertion sort, largest first */
            for (int j = i; j > 0 && sens[ord[j]] > sens[ord[j - 1]]; j--) {
                int t = ord[j];
                ord[j] = ord[j - 1];
                ord[j - 1] = t;
            }
    }
    free(sens);
    return 0;
}

static int qat_block(struct qs_bench *b, const struct qs_qat_lm_opts *o, qs_lm_train_cb cb, void *u,
                     struct qs_qat_lm_result *r, qs_err *e)
{
    const struct qs_lm *bm = b->lm;
    const int L = bm->n_layer, d = bm->d_model;
    if (L > QS_QAT_MAX_BLOCKS)
        return qs_errf(e, "qat mode=block: %d blocks (at most %d)", L, QS_QAT_MAX_BLOCKS);
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    int T = o->ctx > 0 ? o->ctx : bm->ctx, W = o->samples, bt = o->batch;
    if (T > bm->ctx)
        return qs_errf(e, "qat: ctx %d is more than the model's %d", T, bm->ctx);
    if (W < 1 || bt < 1)
        return qs_errf(e, "qat: samples and batch must be at least 1");
    if (off < (size_t)T + 2)
        return qs_errf(e, "qat: %zu training tokens are too few for windows of %d", off, T + 1);
    if (bt > W)
        bt = W;
    long per = (W + bt - 1) / bt;
    long steps = o->steps > 0 ? o->steps : (long)o->epochs * per;
    if (steps < 1 || steps * L > 100000000)
        return qs_errf(e, "qat: %ld steps per block is outside 1 .. %d", steps, 100000000 / L);
    if (block_order(b, o, r->order, e) < 0)
        return -1;
    /* the samples' streams: x_f and x_q entering the current block, the float target, a batch */
    size_t rows = (size_t)T * d, all, fl;
    if (qs_size_mul((size_t)W, rows, &all) < 0 || qs_size_mul(all, 4, &fl) < 0 ||
        qs_size_add(fl, 2 * (size_t)bt * rows, &fl) < 0)
        return qs_errf(e, "qat: %d samples of %d tokens overflow", W, T);
    float *buf = qs_alloc(fl, sizeof(float), "qat mode=block's sample streams", e);
    size_t *start = qs_calloc((size_t)W, sizeof *start);
    int *perm = qs_calloc((size_t)W, sizeof *perm);
    struct qs_lm *m = buf && start && perm ? lm_clone(bm, e) : NULL;
    struct qs_qat_hooks q;
    int rc = -1, hooks = 0;
    struct qs_lm_grad *g = NULL;
    float *mom = NULL;
    int *tix = NULL;
    if (!m) {
        if (buf && start && perm)
            qs_err_prefix(e, "qat");
        else if (buf)
            qs_errf(e, "out of memory");
        goto out;
    }
    if (qs_qat_hooks_init(&q, m, b->ls, e) < 0) {
        qs_err_prefix(e, "qat");
        goto out;
    }
    hooks = 1;
    r->w_sites = q.nw;
    r->a_sites = q.na;
    if (!q.nw && !q.na) {
        qs_errf(e, "qat: no site's weights or activations are quantized, so there is nothing to "
                   "train through (quant PATTERN FORMAT first)");
        goto out;
    }
    if (!(g = qs_lm_grad_new(m, e)) || !(tix = qs_calloc((size_t)g->ntensor, sizeof *tix))) {
        if (g)
            qs_errf(e, "out of memory");
        goto out;
    }
    size_t bmax = 0; /* Adam's moments for the largest block only, not the whole model */
    for (int l = 0; l < L; l++) {
        size_t nb = 0;
        for (int i = 0, nt = block_tensors(m, g, l, tix); i < nt; i++)
            nb += g->t[tix[i]].n;
        bmax = nb > bmax ? nb : bmax;
    }
    if (!(mom = qs_alloc(bmax, 2 * sizeof(float), "Adam's moments", e)))
        goto out;
    float *xf = buf, *xq = xf + all, *yf = xq + all, *tmp = yf + all, *bx = tmp + all;
    float *by = bx + (size_t)bt * rows;
    qs_rng rng;
    qs_rng_seed(&rng, o->seed ^ 0xb10cdULL);
    size_t span = off - (size_t)T - 1;
    for (int w = 0; w < W; w++)
        start[w] = (size_t)qs_rng_below(&rng, span);
    const uint32_t *tok = b->tokens->ids;
    const size_t n_val = b->tokens->n - off;
    struct qs_lm_eval ev;
    if (qs_lm_evaluate(m, tok + off, n_val, 0, &q.h, NULL, &ev, e) < 0)
        goto out;
    r->ste_loss0 = ev.loss;
    struct qs_lm_train_opts sched; /* the per-block schedule */
    qs_lm_train_defaults(&sched);
    sched.steps = (int)steps;
    sched.warmup = o->warmup;
    sched.lr = o->lr;
    sched.min_lr = o->min_lr;
    const float b1 = 0.9f, b2 = 0.95f, ep = 1e-8f;
    int at = -1; /* xf, xq hold the streams entering block `at` (-1: not yet computed) */
    long done = 0, total = steps * L;
    double tail = 0;
    int ntail = 0;
    for (int k = 0; k < L; k++) {
        int l = r->order[k];
        if (at < 0 || l < at) { /* from the embeddings */
            qs_lm_embed_rows(bm, tok, start, W, T, xf);
            memcpy(xq, xf, all * sizeof(float));
            at = 0;
        }
        for (; at < l; at++) { /* forward both streams to block l */
            if (qs_qat_hooks_refresh(&q, e) < 0 ||
                block_all(bm, at, xf, W, T, bt, NULL, tmp, NULL, NULL, e) < 0)
                goto out;
            memcpy(xf, tmp, all * sizeof(float));
            if (block_all(m, at, xq, W, T, bt, &q.h, tmp, NULL, NULL, e) < 0)
                goto out;
            memcpy(xq, tmp, all * sizeof(float));
        }
        if (block_all(bm, l, xf, W, T, bt, NULL, yf, NULL, NULL, e) < 0 ||
            refresh_block(&q, l, e) < 0 ||
            block_all(m, l, xq, W, T, bt, &q.h, NULL, yf, &r->mse0[k], e) < 0)
            goto out;
        int nt = block_tensors(m, g, l, tix);
        memset(mom, 0, bmax * 2 * sizeof(float));
        for (long s = 0; s < steps; s++) {
            if (s % per == 0) /* a new pass over the samples, shuffled (Fisher-Yates) */
                for (int i = 0; i < W; i++) {
                    int j = (int)qs_rng_below(&rng, (uint64_t)i + 1);
                    perm[i] = perm[j];
                    perm[j] = i;
                }
            int w0 = (int)(s % per) * bt, n = W - w0 < bt ? W - w0 : bt;
            for (int i = 0; i < n; i++) {
                memcpy(bx + (size_t)i * rows, xq + (size_t)perm[w0 + i] * rows,
                       rows * sizeof(float));
                memcpy(by + (size_t)i * rows, yf + (size_t)perm[w0 + i] * rows,
                       rows * sizeof(float));
            }
            for (int i = 0; i < nt; i++)
                memset(g->t[tix[i]].grad, 0, g->t[tix[i]].n * sizeof(float));
            double loss;
            if (refresh_block(&q, l, e) < 0 ||
                qs_lm_block(m, l, bx, n, T, &q.h, NULL, by, &loss, g, e) < 0)
                goto out;
            if (!isfinite(loss)) {
                qs_errf(e, "qat: block %d's loss diverged at step %ld (lower lr)", l, s + 1);
                goto out;
            }
            double nrm = 0;
            for (int i = 0; i < nt; i++)
                for (size_t j = 0; j < g->t[tix[i]].n; j++)
                    nrm += (double)g->t[tix[i]].grad[j] * g->t[tix[i]].grad[j];
            nrm = sqrt(nrm);
            float sc = o->clip > 0 && nrm > o->clip ? (float)(o->clip / nrm) : 1.0f;
            double lr = qs_lm_train_lr(&sched, (int)s);
            double bc1 = 1.0 - pow(b1, s + 1), bc2 = 1.0 - pow(b2, s + 1);
            float a = (float)(lr / bc1), ib2 = (float)(1.0 / sqrt(bc2));
            size_t at = 0;
            for (int i = 0; i < nt; at += g->t[tix[i]].n, i++) {
                struct qs_lm_tensor *t = &g->t[tix[i]];
                float decay = t->cols ? (float)(1.0 - lr * o->wd) : 1.0f;
                float *mm = mom + at, *vv = mm + bmax;
                for (size_t j = 0; j < t->n; j++) {
                    float gk = t->grad[j] * sc;
                    mm[j] = b1 * mm[j] + (1.0f - b1) * gk;
                    vv[j] = b2 * vv[j] + (1.0f - b2) * gk * gk;
                    t->val[j] = t->val[j] * decay - a * mm[j] / (sqrtf(vv[j]) * ib2 + ep);
                }
            }
            done++;
            if (s >= steps - 5) {
                tail += loss;
                ntail++;
            }
            if (cb && cb(u, (int)done, (int)total, loss, lr, NAN)) {
                qs_errf(e, "qat: cancelled at block %d, step %ld", l, s + 1);
                goto out;
            }
        }
        if (refresh_block(&q, l, e) < 0 ||
            block_all(m, l, xq, W, T, bt, &q.h, NULL, yf, &r->mse1[k], e) < 0)
            goto out;
        if (k + 1 < L && r->order[k + 1] == l + 1) { /* depth order: advance both streams */
            if (block_all(m, l, xq, W, T, bt, &q.h, tmp, NULL, NULL, e) < 0)
                goto out;
            memcpy(xq, tmp, all * sizeof(float));
            memcpy(xf, yf, all * sizeof(float));
            at = l + 1;
        } else {
            at = -1;
        }
    }
    if (qs_qat_hooks_refresh(&q, e) < 0 ||
        qs_lm_evaluate(m, tok + off, n_val, 0, &q.h, NULL, &ev, e) < 0)
        goto out;
    r->ste_loss = ev.loss;
    r->train_loss = ntail ? tail / ntail : NAN; /* the blocks' last reconstruction losses */
    r->nblocks = L;
    r->samples = W;
    r->steps = (int)steps;
    r->batch = bt;
    r->ctx = T;
    r->tokens = (long)W * T;
    rc = 0;
out:
    if (hooks)
        qs_qat_hooks_free(&q);
    qs_lm_grad_free(g);
    free(mom);
    free(tix);
    free(buf);
    free(start);
    free(perm);
    if (rc < 0) {
        qs_lm_free(m);
        return -1;
    }
    return install(b, m, o, r, e);
}

int qs_qat_lm(struct qs_bench *b, const struct qs_qat_lm_opts *o, qs_lm_train_cb cb, void *u,
              struct qs_qat_lm_result *r, qs_err *e)
{
    memset(r, 0, sizeof *r);
    struct qs_eval ev;
    if (qs_bench_lm_ready(b, e) < 0 || qs_bench_eval(b, &ev, e) < 0) /* calibrates static scales */
        return -1;
    const struct qs_lm *bm = b->lm;
    r->f_loss = ev.f.loss;
    r->ptq_loss = ev.q.loss;
    for (int s = 0; s < bm->nsites; s++)
        r->dropped_corr += b->ls[s].corr.method != QS_CORR_NONE;
    if (o->mode == QS_QAT_BLOCK)
        return qat_block(b, o, cb, u, r, e);
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    int T = o->ctx > 0 ? o->ctx : bm->ctx;
    if (T > bm->ctx)
        return qs_errf(e, "qat: ctx %d is more than the model's %d", T, bm->ctx);
    if (o->batch < 1)
        return qs_errf(e, "qat: batch must be at least 1");
    if (off < (size_t)T + 2)
        return qs_errf(e, "qat: %zu training tokens are too few for windows of %d", off, T + 1);
    long per = (long)((off - 1) / ((size_t)o->batch * T));
    long steps = o->steps > 0 ? o->steps : (long)o->epochs * (per > 0 ? per : 1);
    if (steps < 1 || steps > 100000000)
        return qs_errf(e, "qat: %ld steps is outside 1 .. 100000000", steps);
    struct qs_lm *m = lm_clone(bm, e);
    if (!m)
        return qs_err_prefix(e, "qat");
    struct qs_qat_hooks q;
    if (qs_qat_hooks_init(&q, m, b->ls, e) < 0) {
        qs_lm_free(m);
        return qs_err_prefix(e, "qat");
    }
    r->w_sites = q.nw;
    r->a_sites = q.na;
    if (!q.nw && !q.na) {
        qs_qat_hooks_free(&q);
        qs_lm_free(m);
        return qs_errf(e, "qat: no site's weights or activations are quantized, so there is "
                          "nothing to train through (quant PATTERN FORMAT first)");
    }
    struct qs_lm_train_opts t;
    qs_lm_train_defaults(&t);
    t.steps = (int)steps;
    t.batch = o->batch;
    t.ctx = T;
    t.warmup = o->warmup;
    t.lr = o->lr;
    t.min_lr = o->min_lr;
    t.wd = o->wd;
    t.clip = o->clip;
    t.seed = o->seed;
    t.init = 0;
    t.hooks = &q.h;
    t.refresh = qs_qat_hooks_refresh;
    t.hooks_u = &q;
    struct qs_lm_train_result tr;
    const uint32_t *tok = b->tokens->ids;
    int rc = qs_lm_train(m, tok, off, tok + off, b->tokens->n - off, &t, cb, u, &tr, e);
    if (rc == 0 && q.failed)
        rc = qs_errf(e, "%s", q.msg);
    qs_qat_hooks_free(&q);
    if (rc < 0) {
        qs_lm_free(m);
        if (!strncmp(e->msg, "train: ", 7)) /* say which command it was */
            memmove(e->msg + 5, e->msg + 7, strlen(e->msg + 7) + 1), memcpy(e->msg, "qat: ", 5);
        return -1;
    }
    r->ste_loss0 = tr.val_loss0;
    r->ste_loss = tr.val_loss;
    r->train_loss = tr.train_loss;
    r->tokens = tr.tokens;
    r->steps = tr.steps;
    r->batch = o->batch;
    r->ctx = T;
    return install(b, m, o, r, e);
}
