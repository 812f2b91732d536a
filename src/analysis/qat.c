/* qat.c - quantization-aware fine-tuning of MLPs with the straight-through estimator, on the
 * shared backward pass (qs_mlp_loss_grad). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/sensitivity.h"

int qs_qat_train(struct qs_mlp *m, const struct qs_format *fmt, const struct qs_qopts *opt,
                 const float *x, const int *y, int n, const struct qs_qat_opts *o, qs_train_cb cb,
                 void *ctx, qs_err *e)
{
    int L = m->nlayers, in0 = m->layers[0].in, bs = o->batch < n ? o->batch : n;
    if (n <= 0 || bs <= 0 || o->epochs <= 0)
        return qs_errf(e, "qat: need samples, a positive batch size and epochs");
    struct qs_mlp *work = qs_mlp_clone(m); /* forward copy: quantized weights, float biases */
    float **gw = qs_calloc((size_t)L, sizeof *gw), **gb = qs_calloc((size_t)L, sizeof *gb);
    float **mw = qs_calloc((size_t)L, sizeof *mw), **vw = qs_calloc((size_t)L, sizeof *vw);
    float **mb = qs_calloc((size_t)L, sizeof *mb), **vb = qs_calloc((size_t)L, sizeof *vb);
    int *perm = malloc((size_t)n * sizeof *perm), *yb = malloc((size_t)bs * sizeof *yb);
    float *xb = malloc((size_t)bs * in0 * sizeof *xb);
    int rc = -1;
    if (!work || !gw || !gb || !mw || !vw || !mb || !vb || !perm || !yb || !xb)
        goto oom;
    for (int i = 0; i < L; i++) {
        size_t nw = (size_t)m->layers[i].in * m->layers[i].out, nb = (size_t)m->layers[i].out;
        if (!(gw[i] = malloc(nw * sizeof(float))) || !(gb[i] = malloc(nb * sizeof(float))) ||
            !(mw[i] = qs_calloc(nw, sizeof(float))) || !(vw[i] = qs_calloc(nw, sizeof(float))) ||
            !(mb[i] = qs_calloc(nb, sizeof(float))) || !(vb[i] = qs_calloc(nb, sizeof(float))))
            goto oom;
    }
    for (int i = 0; i < n; i++)
        perm[i] = i;
    qs_rng rng;
    qs_rng_seed(&rng, o->seed);
    /* The same Adam as qs_mlp_train (weight decay 0), step for step. */
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.0;
    long step = 0;
    for (int ep = 0; ep < o->epochs; ep++) {
        qs_rng_shuffle(&rng, perm, n);
        double tl = 0.0;
        int tc = 0;
        for (int s = 0; s + bs <= n; s += bs) { /* drop the ragged last batch */
            for (int r = 0; r < bs; r++) {
                memcpy(xb + (size_t)r * in0, x + (size_t)perm[s + r] * in0,
                       (size_t)in0 * sizeof(float));
                yb[r] = y[perm[s + r]];
            }
            /* Re-quantize the master weights every step: the forward pass sees Q(W). */
            for (int i = 0; i < L; i++) {
                const struct qs_layer *l = &m->layers[i];
                size_t nw = (size_t)l->in * l->out;
                if (fmt[i].kind != QS_FMT_NONE) {
                    if (qs_quant_fake(&fmt[i], &opt[i], l->w, l->out, l->in, work->layers[i].w, e) <
                        0) {
                        qs_err_prefix(e, l->name);
                        goto out;
                    }
                } else {
                    memcpy(work->layers[i].w, l->w, nw * sizeof(float));
                }
                memcpy(work->layers[i].b, l->b, (size_t)l->out * sizeof(float));
            }
            int nc = 0;
            double loss = qs_mlp_loss_grad(work, xb, yb, bs, gw, gb, &nc);
            if (loss < 0)
                goto oom;
            tl += loss * bs;
            tc += nc;
            step++;
            double c1 = 1.0 - pow(b1, (double)step), c2 = 1.0 - pow(b2, (double)step);
            for (int i = 0; i < L; i++) { /* straight-through: dQ(W)/dW = 1 */
                struct qs_layer *l = &m->layers[i];
                size_t nw = (size_t)l->in * l->out;
                for (size_t j = 0; j < nw; j++) {
                    float gj = gw[i][j];
                    mw[i][j] = (float)(b1 * mw[i][j] + (1 - b1) * gj);
                    vw[i][j] = (float)(b2 * vw[i][j] + (1 - b2) * gj * gj);
                    l->w[j] -= (float)(o->lr * ((mw[i][j] / c1) / (sqrt(vw[i][j] / c2) + eps) +
                                                wd * l->w[j]));
                }
                for (int j = 0; j < l->out; j++) {
                    float gj = gb[i][j];
                    mb[i][j] = (float)(b1 * mb[i][j] + (1 - b1) * gj);
                    vb[i][j] = (float)(b2 * vb[i][j] + (1 - b2) * gj * gj);
                    l->b[j] -= (float)(o->lr * (mb[i][j] / c1) / (sqrt(vb[i][j] / c2) + eps));
                }
            }
        }
        int seen = (n / bs) * bs;
        if (cb && cb(ctx, ep + 1, tl / seen, (double)tc / seen)) {
            qs_errf(e, "qat: cancelled after epoch %d", ep + 1);
            goto out;
        }
    }
    rc = 0;
    goto out;
oom:
    qs_errf(e, "qat: out of memory");
out:
    for (int i = 0; i < L; i++) {
        if (gw)
            free(gw[i]);
        if (gb)
            free(gb[i]);
        if (mw)
            free(mw[i]);
        if (vw)
            free(vw[i]);
        if (mb)
            free(mb[i]);
        if (vb)
            free(vb[i]);
    }
    free(gw);
    free(gb);
    free(mw);
    free(vw);
    free(mb);
    free(vb);
    free(perm);
    free(yb);
    free(xb);
    qs_mlp_free(work);
    return rc;
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
    if (qs_bench_set_model(b, master, path, e) < 0) {
        master = NULL; /* owned by the bench now */
        goto out;
    }
    master = NULL;
    if ((b->split_seed != sseed || b->f_train != ft || b->f_calib != fc) &&
        qs_bench_resplit(b, sseed, ft, fc, e) < 0)
        goto out;
    if (calib_n > 0 && b->calib_n != calib_n && qs_bench_set_calib(b, calib_n, e) < 0)
        goto out;
    if (qs_bench_eval(b, &ev, e) < 0)
        goto out;
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
