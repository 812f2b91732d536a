/* qat.c - quantization-aware fine-tuning with the straight-through estimator: MLPs on their
 * backward pass (qs_mlp_loss_grad), transformers on lm_grad.c's through the hooks of qat.h and
 * lm_train.c's AdamW. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/half.h"
#include "qscope/lm_grad.h"
#include "qscope/lmbench.h"
#include "qscope/qat.h"
#include "qscope/sensitivity.h"

/* A trainer's failure "train: ..." said as qat's, "qat: ...". Returns -1. */
static int as_qat(qs_err *e)
{
    if (!strncmp(e->msg, "train: ", 7))
        memmove(e->msg + 5, e->msg + 7, strlen(e->msg + 7) + 1), memcpy(e->msg, "qat: ", 5);
    return -1;
}

/* qs_mlp_train with qat's options (no weight decay) and h's hooks; its failures said as
 * qat's. */
static int qat_mlp_train(struct qs_mlp *m, const float *x, const int *y, int n,
                         const struct qs_qat_opts *o, const struct qs_train_opts *h, qs_train_cb cb,
                         void *ctx, qs_err *e)
{
    struct qs_train_opts t = *h;
    t.epochs = o->epochs;
    t.batch = o->batch;
    t.lr = o->lr;
    t.weight_decay = 0.0;
    t.seed = o->seed;
    return qs_mlp_train(m, x, y, n, &t, cb, ctx, e) < 0 ? as_qat(e) : 0;
}

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
    const struct qs_train_opts h = {.fwd = qat_forward, .fwd_ctx = &q};
    return qat_mlp_train(m, x, y, n, o, &h, cb, ctx, e);
}

static int qat_mlp_lsq(struct qs_mlp *m, const struct qs_layer_state *ls, const float *x,
                       const int *y, int n, const struct qs_qat_opts *o, qs_train_cb cb, void *ctx,
                       struct qs_lsq_site *z, qs_err *e);
static int lsq_install_mlp(struct qs_bench *st, const struct qs_lsq_site *z,
                           struct qs_qat_result *r, qs_err *e);

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
    struct qs_lsq_site *z = o->lsq ? qs_calloc((size_t)L, sizeof *z) : NULL;
    int rc = -1;
    if (!fmt || !opt || !x || !y || !master || (b->model_path && !path) || (o->lsq && !z)) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (int i = 0; i < L; i++) {
        fmt[i] = b->ls[i].wfmt;
        opt[i] = b->ls[i].wopt;
    }
    qs_dataset_gather(b->data, b->split.train, n, x, y);
    if (z ? qat_mlp_lsq(master, b->ls, x, y, n, o, cb, ctx, z, e) < 0
          : qs_qat_train(master, fmt, opt, x, y, n, o, cb, ctx, e) < 0)
        goto out;
    char buf[160];
    snprintf(buf, sizeof buf, "epochs=%d batch=%d lr=%.9g seed=%llu%s (straight-through)",
             o->epochs, o->batch, o->lr, (unsigned long long)o->seed, z ? " scales=lsq" : "");
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
        (z && lsq_install_mlp(st, z, r, e) < 0) || qs_bench_eval(st, &ev, e) < 0) {
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
    for (int i = 0; z && i < L; i++)
        qs_lsq_site_free(&z[i]);
    free(z);
    qs_mlp_free(master);
    free(fmt);
    free(opt);
    free(x);
    free(y);
    free(path);
    return rc;
}

/* ---- learned step sizes (LSQ) -------------------------------------------------------------- */

int qs_lsq_check(const struct qs_format *f, const struct qs_qopts *o, qs_err *e)
{
    const struct qs_format_traits *t = qs_format_traits(f);
    const char *why = NULL;
    if (f->kind == QS_FMT_NONE || t->unscaled)
        why = "it has no scale";
    else if (!t->options)
        why = "ggml blocks are rounded by llama.cpp's own rules"; /* no options apply */
    else if (!t->free_scale && t->tensor_scale)
        why = "its block scales are E4M3 codes under a tensor scale, not free step sizes";
    else if (!t->free_scale)
        why = "its block scales are powers of two (E8M0), not free step sizes";
    if (!why && o->scale_none)
        why = "scale=none has no scale to learn";
    if (!why && !o->saturate)
        why = "sat=0 overflows to Inf/NaN outside the range (LSQ clips: use sat=1)";
    if (!why && o->round == QS_ROUND_STOCHASTIC)
        why = "LSQ rounds to nearest (round=stochastic)";
    if (why)
        return qs_errf(e, "qat scales=lsq: %s: %s", f->name, why);
    return 0;
}

void qs_lsq_site_free(struct qs_lsq_site *q)
{
    qs_quantizer_free(q->qz);
    free(q->blk);
    free(q->s);
    memset(q, 0, sizeof *q);
}

/* The scale a master value s stands for in storage (F16 unless f32), at least its smallest
 * normal; block k's parameters follow it (its clamp bounds and zero point stay). */
void qs_lsq_set(struct qs_lsq_site *q, size_t k, float s)
{
    const float smin = q->f32 ? 1e-30f : 6.103515625e-05f; /* 2^-14: F16's smallest normal */
    s = s > smin ? s : smin;
    q->s[k] = s;
    struct qs_qblock *b = &q->blk[k];
    if (q->f32) {
        b->s = s;
        memcpy(&b->scode, &s, sizeof s);
    } else {
        uint16_t h = qs_f32_to_f16(s > 65504.0f ? 65504.0f : s);
        b->s = qs_f16_to_f32(h);
        b->scode = h;
    }
    b->inv = 1.0f / b->s;
}

int qs_lsq_site_init(struct qs_lsq_site *q, const struct qs_format *f, const struct qs_qopts *o,
                     const float *w, int rows, int cols, const struct qs_packed *p, qs_err *e)
{
    memset(q, 0, sizeof *q);
    if (qs_lsq_check(f, o, e) < 0 || qs_quantizer_new(f, o, w, rows, cols, &q->qz, e) < 0)
        return -1;
    q->rows = rows;
    q->cols = cols;
    q->seg = qs_quantizer_block(q->qz);
    q->shared = qs_quantizer_shared(q->qz);
    q->nseg = (cols + q->seg - 1) / q->seg;
    q->nblk = q->shared ? 1 : (size_t)rows * q->nseg;
    q->kind_int = f->kind == QS_FMT_INT;
    q->f32 = o->scale_f32;
    q->blk = qs_calloc(q->nblk, sizeof *q->blk);
    q->s = qs_calloc(q->nblk * 5, sizeof *q->s);
    if (!q->blk || !q->s) {
        qs_lsq_site_free(q);
        return qs_errf(e, "out of memory");
    }
    q->gs = q->s + q->nblk;
    q->s0 = q->gs + q->nblk;
    q->m1 = q->s0 + q->nblk;
    q->m2 = q->m1 + q->nblk;
    for (size_t k = 0; k < q->nblk; k++) {
        int r = q->shared ? 0 : (int)(k / q->nseg),
            c0 = q->shared ? 0 : (int)(k % q->nseg) * q->seg;
        int len = q->shared ? cols : (cols - c0 < q->seg ? cols - c0 : q->seg);
        if (qs_quantizer_fit(q->qz, w + (size_t)r * cols + c0, len, r, c0, &q->blk[k], e) < 0) {
            qs_lsq_site_free(q);
            return -1;
        }
    }
    /* the site's current scales: its packing's, when it is one of this format and shape */
    char a[256], b[256];
    qs_qopts_format(f, o, a, sizeof a);
    if (p && p->codes && p->rows == rows && p->cols == cols && !strcmp(p->fmt.name, f->name)) {
        qs_qopts_format(&p->fmt, &p->opt, b, sizeof b);
        size_t by = q->f32 ? 4 : 2;
        if (!strcmp(a, b) && p->scale_bytes == q->nblk * by)
            for (size_t k = 0; k < q->nblk; k++) {
                struct qs_qblock *bk = &q->blk[k];
                uint32_t c = 0;
                for (size_t i = 0; i < by; i++)
                    c |= (uint32_t)p->scales[k * by + i] << (8 * i);
                float sv;
                if (q->f32)
                    memcpy(&sv, &c, sizeof sv);
                else
                    sv = qs_f16_to_f32((uint16_t)c);
                bk->s = sv;
                bk->scode = c;
                bk->inv = sv > 0 && 1.0f / sv <= 3.4e38f ? 1.0f / sv : 0.0f;
                if (!(bk->inv > 0))
                    bk->s = 0;
                if (p->zeros && q->kind_int) {
                    int qm = (1 << f->bits) - 1;
                    bk->z = p->zeros[k];
                    bk->lo = (float)-bk->z;
                    bk->hi = (float)(qm - bk->z);
                }
            }
    }
    /* Qp: the positive end of the grid at scale 1; asymmetric int: the paper's unsigned
     * 2^B - 1 (the steps of the range, whatever the zero point) */
    q->qp = !q->kind_int ? (float)qs_format_max(f)
            : o->asym    ? (float)((1 << f->bits) - 1)
                         : (float)((1 << (f->bits - 1)) - 1);
    for (size_t k = 0; k < q->nblk; k++)
        q->s[k] = q->s0[k] = q->blk[k].s; /* 0: a zero block, never trained */
    return 0;
}

/* Block k's columns: row r, columns [c0, c0 + len). */
static void lsq_block(const struct qs_lsq_site *q, size_t k, int *r, int *c0, int *len)
{
    if (q->shared) {
        *r = 0, *c0 = 0, *len = q->cols;
        return;
    }
    *r = (int)(k / q->nseg);
    *c0 = (int)(k % q->nseg) * q->seg;
    *len = q->cols - *c0 < q->seg ? q->cols - *c0 : q->seg;
}

void qs_lsq_fake(const struct qs_lsq_site *q, const float *w, float *out)
{
    if (q->shared) {
        for (int r = 0; r < q->rows; r++)
            qs_quantizer_round(q->qz, &q->blk[0], w + (size_t)r * q->cols,
                               out + (size_t)r * q->cols, q->cols);
        return;
    }
    for (size_t k = 0; k < q->nblk; k++) {
        int r, c0, len;
        lsq_block(q, k, &r, &c0, &len);
        size_t at = (size_t)r * q->cols + c0;
        qs_quantizer_round(q->qz, &q->blk[k], w + at, out + at, len);
    }
}

/* The LSQ gradient of one run of len values x under block b: returns sum gy dy/ds (without
 * the gradient scale) and zeroes gy where clipped. qv: scratch of len. */
static double lsq_run(const struct qs_lsq_site *q, const struct qs_qblock *b, const float *x,
                      float *gy, float *qv, int len)
{
    if (!(b->s > 0))
        return 0;
    qs_quantizer_round(q->qz, b, x, qv, len);
    double sum = 0;
    for (int j = 0; j < len; j++) {
        float v = x[j] * b->inv; /* as the kernel computes it, in F32 */
        double qj = (double)qv[j] / b->s;
        int in = q->kind_int ? v >= b->lo && v <= b->hi : fabsf(v) <= q->qp;
        sum += (double)gy[j] * (in ? qj - v : qj);
        if (!in)
            gy[j] = 0.0f;
    }
    return sum;
}

void qs_lsq_backward(struct qs_lsq_site *q, const float *w, float *gw)
{
    float qv[256];
    for (size_t k = 0; k < q->nblk; k++) {
        int r, c0, len;
        lsq_block(q, k, &r, &c0, &len);
        double sum = 0;
        int nr = q->shared ? q->rows : 1;
        for (int rr = 0; rr < nr; rr++)
            for (int j0 = 0; j0 < len; j0 += 256) {
                size_t at = (size_t)(r + rr) * q->cols + c0 + j0;
                int n = len - j0 < 256 ? len - j0 : 256;
                sum += lsq_run(q, &q->blk[k], w + at, gw + at, qv, n);
            }
        double nb = (double)len * nr; /* N_block: the values sharing the scale */
        q->gs[k] += (float)(sum / sqrt(nb * q->qp));
    }
}

void qs_lsq_adam(struct qs_lsq_site *q, int step, double lr, float clip, double b1, double b2,
                 double eps)
{
    double bc1 = 1.0 - pow(b1, step + 1), bc2 = 1.0 - pow(b2, step + 1);
    float a = (float)(lr / bc1), ib2 = (float)(1.0 / sqrt(bc2)), ep = (float)eps;
    float fb1 = (float)b1, fb2 = (float)b2;
    for (size_t k = 0; k < q->nblk; k++) {
        if (q->s0[k] == 0.0f) /* a zero block */
            continue;
        float g = q->gs[k] * clip;
        q->m1[k] = fb1 * q->m1[k] + (1.0f - fb1) * g;
        q->m2[k] = fb2 * q->m2[k] + (1.0f - fb2) * g * g;
        qs_lsq_set(q, k, q->s[k] - a * q->m1[k] / (sqrtf(q->m2[k]) * ib2 + ep));
    }
}

int qs_lsq_pack(const struct qs_lsq_site *q, const struct qs_format *f, const struct qs_qopts *o,
                const float *w, struct qs_packed *p, float *wq, qs_err *e)
{
    size_t n = (size_t)q->rows * q->cols;
    float *fk = qs_alloc(n, sizeof *fk, "the learned-scale weight", e);
    if (!fk)
        return -1;
    if (qs_quant_pack_blocks(f, o, w, w, q->blk, q->rows, q->cols, p, e) < 0 ||
        qs_quant_unpack(p, wq, e) < 0) {
        qs_packed_free(p);
        free(fk);
        return -1;
    }
    qs_lsq_fake(q, w, fk);
    int same = !memcmp(fk, wq, n * sizeof *fk);
    free(fk);
    if (!same) {
        qs_packed_free(p);
        return qs_errf(e, "the packed codes and learned scales do not reproduce the trained "
                          "quantized weight");
    }
    return 0;
}

/* The scales' mean |log(s / s0)| over q's trained blocks into *sum, their count into *n. */
static void lsq_change(const struct qs_lsq_site *q, double *sum, long *n)
{
    for (size_t k = 0; k < q->nblk; k++)
        if (q->s0[k] > 0) {
            *sum += fabs(log((double)q->blk[k].s / q->s0[k]));
            (*n)++;
        }
}

/* ---- MLPs with learned scales -------------------------------------------------------------- */

/* qat scales=lsq on an MLP: the forward runs through each weight-quantized layer's learned
 * scales z[i] (mlp_lsq_forward), their LSQ gradient is taken from the weights'
 * (mlp_lsq_grad), and they take the weights' Adam (betas 0.9 / 0.999, eps 1e-8) and lr after
 * every step (mlp_lsq_step). */
struct lsq_train {
    struct qs_lsq_site *z;
    double lr;
};

static int mlp_lsq_forward(void *ctx, const struct qs_mlp *m, struct qs_mlp *fwd, qs_err *e)
{
    const struct lsq_train *q = ctx;
    (void)e;
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (q->z[i].qz)
            qs_lsq_fake(&q->z[i], l->w, fwd->layers[i].w);
        else
            memcpy(fwd->layers[i].w, l->w, (size_t)l->in * l->out * sizeof(float));
        memcpy(fwd->layers[i].b, l->b, (size_t)l->out * sizeof(float));
    }
    return 0;
}

static void mlp_lsq_grad(void *ctx, const struct qs_mlp *m, float *const *gw)
{
    const struct lsq_train *q = ctx;
    for (int i = 0; i < m->nlayers; i++)
        if (q->z[i].qz) {
            memset(q->z[i].gs, 0, q->z[i].nblk * sizeof *q->z[i].gs);
            qs_lsq_backward(&q->z[i], m->layers[i].w, gw[i]);
        }
}

static void mlp_lsq_step(void *ctx, const struct qs_mlp *m, long step)
{
    const struct lsq_train *q = ctx;
    for (int i = 0; i < m->nlayers; i++)
        if (q->z[i].qz)
            qs_lsq_adam(&q->z[i], (int)step - 1, q->lr, 1.0f, 0.9, 0.999, 1e-8);
}

/* qs_mlp_train without weight decay, with the learned scales z[i] (initialised from ls[i]'s
 * packing) trained beside the weights. */
static int qat_mlp_lsq(struct qs_mlp *m, const struct qs_layer_state *ls, const float *x,
                       const int *y, int n, const struct qs_qat_opts *o, qs_train_cb cb, void *ctx,
                       struct qs_lsq_site *z, qs_err *e)
{
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (ls[i].wfmt.kind != QS_FMT_NONE &&
            qs_lsq_site_init(&z[i], &ls[i].wfmt, &ls[i].wopt, l->w, l->out, l->in,
                             ls[i].wquant ? &ls[i].packed : NULL, e) < 0)
            return qs_err_prefix(e, l->name);
    }
    struct lsq_train q = {z, o->lr};
    const struct qs_train_opts h = {
        .fwd = mlp_lsq_forward, .grad = mlp_lsq_grad, .step = mlp_lsq_step, .fwd_ctx = &q};
    return qat_mlp_train(m, x, y, n, o, &h, cb, ctx, e);
}

/* The packing p (moved) of the learned-scale weight wq (nw entries, freed) becomes site i's
 * codes, decoded on use (to wq bit for bit), with wq's relative error against the master
 * weight w. */
static void lsq_take(struct qs_bench *st, int i, const float *w, size_t nw, float *wq,
                     struct qs_packed *p)
{
    st->ls[i].w_rel_err = qs_rel_err(w, wq, nw);
    qs_site_set_packed(st, i, p, 0);
    free(wq);
}

/* The learned scales z[i] (per unit of st, whose model is the trained one) become the units'
 * scales: packed codes and scales, and the weight they decode to, which must be trained[i]
 * bit for bit when trained is given (the weight the training last ran on). The count of
 * learned scales and their mean |log(s / s0)| into *count, *change. */
static int lsq_install_units(struct qs_bench *st, const struct qs_lsq_site *z,
                             float *const *trained, long *count, double *change, qs_err *e)
{
    int first = -1;
    double sum = 0;
    long n = 0;
    for (int i = 0; i < qs_bench_nunits(st); i++) {
        struct qs_unit u;
        qs_bench_unit(st, i, &u);
        const float *uw = qs_bench_w(st, i, e);
        if (!uw)
            return -1;
        struct qs_layer_state *ls = &st->ls[i];
        if (!z[i].qz)
            continue;
        size_t nw = (size_t)u.out * u.in;
        if (!ls->wquant)
            return qs_errf(e, "%s: the bench has no quantized weight to give the learned scales",
                           u.name);
        float *wq = qs_alloc(nw, sizeof *wq, "the learned-scale weight", e);
        struct qs_packed p;
        if (!wq)
            return -1;
        if (qs_lsq_pack(&z[i], &ls->wfmt, &ls->wopt, uw, &p, wq, e) < 0) {
            free(wq);
            return qs_err_prefix(e, u.name);
        }
        if (trained && memcmp(wq, trained[i], nw * sizeof *wq)) {
            free(wq);
            qs_packed_free(&p);
            return qs_errf(e, "%s: the learned scales do not reproduce the trained weight", u.name);
        }
        lsq_take(st, i, uw, nw, wq, &p);
        first = first < 0 ? i : first;
        lsq_change(&z[i], &sum, &n);
    }
    if (first >= 0)
        qs_bench_invalidate(st, first);
    *count = n;
    *change = n ? sum / n : 0.0;
    return 0;
}

/* The learned scales z become the layers' of st (its model the trained one). */
static int lsq_install_mlp(struct qs_bench *st, const struct qs_lsq_site *z,
                           struct qs_qat_result *r, qs_err *e)
{
    return lsq_install_units(st, z, NULL, &r->lsq_scales, &r->lsq_change, e);
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
        if (q->wq[s] && q->lsq && q->lsq[s].qz)
            qs_lsq_fake(&q->lsq[s], st->w, q->wq[s]);
        else if (q->wq[s] && qs_quant_fake(&q->ls[s].wfmt, &q->ls[s].wopt, st->w, st->out, st->in,
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
    if (q->lsq)
        for (int s = 0; s < q->m->nsites; s++)
            qs_lsq_site_free(&q->lsq[s]);
    free(q->lsq);
    q->lsq = NULL;
}

int qs_qat_hooks_lsq(struct qs_qat_hooks *q, qs_err *e)
{
    const struct qs_lm *m = q->m;
    if (!q->lsq && !(q->lsq = qs_calloc((size_t)m->nsites, sizeof *q->lsq)))
        return qs_errf(e, "out of memory");
    for (int s = 0; s < m->nsites; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        const struct qs_layer_state *ls = &q->ls[s];
        if (!q->wq[s] || q->lsq[s].qz)
            continue;
        if (qs_lsq_site_init(&q->lsq[s], &ls->wfmt, &ls->wopt, st->w, st->out, st->in,
                             ls->wquant ? &ls->packed : NULL, e) < 0)
            return qs_err_prefix(e, st->name);
    }
    return qs_qat_hooks_refresh(q, e);
}

/* scales=lsq in qs_lm_train (grad_extra): the scales' gradient from the weights', which it
 * masks where clipped; a tied head's own gradient (g->head) joins the embedding's after. */
int qs_qat_lsq_grad(void *u, struct qs_lm_grad *g, double *n2, qs_err *e)
{
    struct qs_qat_hooks *q = u;
    const struct qs_lm *m = q->m;
    const int H = m->nsites - 1;
    double sum = 0;
    (void)e;
    for (int s = 0; s < m->nsites; s++) {
        struct qs_lsq_site *z = &q->lsq[s];
        if (!z->qz)
            continue;
        memset(z->gs, 0, z->nblk * sizeof *z->gs);
        qs_lsq_backward(z, m->sites[s].w, s == H && m->tied && g->head ? g->head : g->gw[s]);
        for (size_t k = 0; k < z->nblk; k++)
            sum += (double)z->gs[k] * z->gs[k];
    }
    if (m->tied && g->head) {
        size_t n = (size_t)m->sites[H].out * m->sites[H].in;
        float *ge = g->gw[H];
        for (size_t k = 0; k < n; k++)
            ge[k] += g->head[k];
        memset(g->head, 0, n * sizeof *g->head);
    }
    *n2 = sum;
    return 0;
}

static void lsq_step(void *u, int step, double lr, float clip)
{
    struct qs_qat_hooks *q = u;
    for (int s = 0; s < q->m->nsites; s++)
        if (q->lsq[s].qz)
            qs_lsq_adam(&q->lsq[s], step, lr, clip, q->b1, q->b2, q->eps);
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
    if (qs_lm_materialize(m, e) < 0) { /* trained: F32 weights (src is, too) */
        qs_lm_free(m);
        return NULL;
    }
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

/* scales=lsq: the learned scales become the sites' of st (whose model is the trained one,
 * q's); the weight they decode to must be the hooks' last Q(W) bit for bit. */
static int lsq_install(struct qs_bench *st, const struct qs_qat_hooks *q,
                       struct qs_qat_lm_result *r, qs_err *e)
{
    if (!q || !q->lsq)
        return 0;
    return lsq_install_units(st, q->lsq, q->wq, &r->lsq_scales, &r->lsq_change, e);
}

/* The trained model m (owned) replaces the bench's, after writing it to o->out when asked; the
 * bench keeps its rules, token data and calibration size (scales=lsq: its sites take the
 * learned scales of q), and evaluates it into r. A failure leaves the bench as it was (m
 * freed). */
static int install(struct qs_bench *b, struct qs_lm *m, const struct qs_qat_lm_opts *o,
                   struct qs_qat_lm_result *r, const struct qs_qat_hooks *q, qs_err *e)
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
                 "clip=%.9g seed=%llu%s%s (straight-through, AdamW) from %s",
                 QS_VERSION, r->steps, r->batch, r->ctx, o->lr, o->min_lr, o->warmup, o->wd,
                 o->clip, (unsigned long long)o->seed, o->mode == QS_QAT_BLOCK ? " mode=block" : "",
                 o->scales == QS_QAT_SCALES_LSQ ? " scales=lsq" : "", bm->path);
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
    if (qs_bench_set_lm(st, m, path, e) < 0 || lsq_install(st, q, r, e) < 0 ||
        qs_bench_eval(st, &ev, e) < 0) {
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
        if (!q->wq[s] || qs_lm_site_block(q->m, s) != l)
            continue;
        if (q->lsq && q->lsq[s].qz)
            qs_lsq_fake(&q->lsq[s], st->w, q->wq[s]);
        else if (qs_quant_fake(&q->ls[s].wfmt, &q->ls[s].wopt, st->w, st->out, st->in, q->wq[s],
                               e) < 0)
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
    struct qs_lm *m =
        buf && start && perm && qs_lm_materialize(b->lm, e) == 0 ? lm_clone(bm, e) : NULL;
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
    if (o->scales == QS_QAT_SCALES_LSQ && qs_qat_hooks_lsq(&q, e) < 0) {
        qs_err_prefix(e, "qat");
        goto out;
    }
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
    if (qs_lm_evaluate(m, tok + off, n_val, b->test_windows, &q.h, NULL, &ev, e) < 0)
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
            for (int i = 0; q.lsq && i < m->nsites; i++) { /* the block's learned scales */
                struct qs_lsq_site *z = &q.lsq[i];
                if (!z->qz || qs_lm_site_block(m, i) != l)
                    continue;
                memset(z->gs, 0, z->nblk * sizeof *z->gs);
                qs_lsq_backward(z, m->sites[i].w, g->gw[i]);
                for (size_t k = 0; k < z->nblk; k++)
                    nrm += (double)z->gs[k] * z->gs[k];
            }
            for (int i = 0; i < nt; i++)
                for (size_t j = 0; j < g->t[tix[i]].n; j++)
                    nrm += (double)g->t[tix[i]].grad[j] * g->t[tix[i]].grad[j];
            nrm = sqrt(nrm);
            float sc = o->clip > 0 && nrm > o->clip ? (float)(o->clip / nrm) : 1.0f;
            double lr = qs_lm_train_lr(&sched, (int)s);
            const struct qs_adamw k = qs_adamw_at((int)s, lr, o->wd, b1, b2, ep, sc);
            size_t at = 0;
            for (int i = 0; i < nt; at += g->t[tix[i]].n, i++)
                qs_adamw_update(&g->t[tix[i]], mom + at, mom + at + bmax, &k);
            for (int i = 0; q.lsq && i < m->nsites; i++)
                if (q.lsq[i].qz && qs_lm_site_block(m, i) == l)
                    qs_lsq_adam(&q.lsq[i], (int)s, lr, sc, b1, b2, ep);
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
        qs_lm_evaluate(m, tok + off, n_val, b->test_windows, &q.h, NULL, &ev, e) < 0)
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
    qs_lm_grad_free(g);
    free(mom);
    free(tix);
    free(buf);
    free(start);
    free(perm);
    if (rc < 0) {
        if (hooks)
            qs_qat_hooks_free(&q);
        qs_lm_free(m);
        return -1;
    }
    rc = install(b, m, o, r, &q, e);
    qs_qat_hooks_free(&q);
    return rc;
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
    if (qs_lm_materialize(b->lm, e) < 0) /* QAT trains F32 weights */
        return qs_err_prefix(e, "qat");
    struct qs_lm *m = lm_clone(bm, e);
    if (!m)
        return qs_err_prefix(e, "qat");
    struct qs_qat_hooks q;
    if (qs_qat_hooks_init(&q, m, b->ls, e) < 0) {
        qs_lm_free(m);
        return qs_err_prefix(e, "qat");
    }
    float *head = NULL; /* scales=lsq, a tied head: its own gradient, apart from the lookup's */
    if (o->scales == QS_QAT_SCALES_LSQ &&
        (qs_qat_hooks_lsq(&q, e) < 0 ||
         (m->tied && !(head = qs_alloc((size_t)m->vocab * m->d_model, sizeof *head,
                                       "the head's gradient", e))))) {
        qs_qat_hooks_free(&q);
        qs_lm_free(m);
        return qs_err_prefix(e, "qat");
    }
    if (head)
        memset(head, 0, (size_t)m->vocab * m->d_model * sizeof *head);
    r->w_sites = q.nw;
    r->a_sites = q.na;
    if (!q.nw && !q.na) {
        qs_qat_hooks_free(&q);
        qs_lm_free(m);
        free(head);
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
    if (q.lsq) {
        t.grad_extra = qs_qat_lsq_grad;
        t.step_extra = lsq_step;
        t.head = head;
        q.b1 = t.beta1;
        q.b2 = t.beta2;
        q.eps = t.eps;
    }
    struct qs_lm_train_result tr;
    const uint32_t *tok = b->tokens->ids;
    size_t n_val = b->tokens->n - off; /* set heldout: its first test_windows windows */
    if (b->test_windows > 0 && n_val > (size_t)b->test_windows * bm->ctx + 1)
        n_val = (size_t)b->test_windows * bm->ctx + 1;
    int rc = qs_lm_train(m, tok, off, tok + off, n_val, &t, cb, u, &tr, e);
    if (rc == 0 && q.failed)
        rc = qs_errf(e, "%s", q.msg);
    free(head);
    if (rc < 0) {
        qs_qat_hooks_free(&q);
        qs_lm_free(m);
        return as_qat(e);
    }
    r->ste_loss0 = tr.val_loss0;
    r->ste_loss = tr.val_loss;
    r->train_loss = tr.train_loss;
    r->tokens = tr.tokens;
    r->steps = tr.steps;
    r->batch = o->batch;
    r->ctx = T;
    rc = install(b, m, o, r, &q, e);
    qs_qat_hooks_free(&q);
    return rc;
}
