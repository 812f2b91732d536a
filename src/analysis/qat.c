/* qat.c - quantization-aware fine-tuning of MLPs with the straight-through estimator, on the
 * shared backward pass (qs_mlp_loss_grad). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
