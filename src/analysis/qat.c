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
    struct qs_train_opts t = {.epochs = o->epochs, .batch = o->batch, .lr = o->lr,
                              .weight_decay = 0.0, .seed = o->seed, .fwd = qat_forward,
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
        if (q->wq[s] && qs_quant_fake(&q->ls[s].wfmt, &q->ls[s].wopt, st->w, st->out, st->in,
                                      q->wq[s], e) < 0)
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
    *o = (struct qs_qat_lm_opts){.epochs = 1, .batch = 16, .warmup = 10, .lr = 5e-4,
                                 .min_lr = 5e-5, .wd = 0.0, .clip = 1.0};
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
    char *path = qs_strdup(o->out ? o->out : bm->path);
    if (!path) {
        qs_lm_free(m);
        return qs_errf(e, "out of memory");
    }
    if (o->out) {
        char desc[256], v[2][32];
        snprintf(desc, sizeof desc,
                 "qscope %s qat steps=%d batch=%d ctx=%d lr=%.9g min_lr=%.9g warmup=%d wd=%.9g "
                 "clip=%.9g seed=%llu (straight-through, AdamW) from %s", QS_VERSION, tr.steps,
                 o->batch, T, o->lr, o->min_lr, o->warmup, o->wd, o->clip,
                 (unsigned long long)o->seed, bm->path);
        snprintf(v[0], sizeof v[0], "%.6f", tr.val_loss);
        snprintf(v[1], sizeof v[1], "%ld", tr.tokens);
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
