/* qat.h - quantization-aware training of the transformers (GPT-2, LLaMA) on the bench: the
 * straight-through estimator through every site's current formats, AdamW on float master
 * weights (lm_train.c), evaluation before and after. The MLP's QAT is in sensitivity.h.
 *
 * Straight-through (the FP8 notebook's dx = dy): the forward of every step uses Q(W), the
 * site's weight fake-quantized by the bench's own quantizer (qs_quant_fake with the site's rule,
 * which equals the bench's pack + unpack bit for bit), and the activations quantized where the
 * regime quantizes them (qs_bench_act_quant, the bench's own); the backward takes dQ(W)/dW and
 * dQ(x)/dx as the identity, so dL/dQ(W) is applied to the master weight W and dL/dx passes
 * through the activation quantizer unchanged. Scales: recomputed from the master weights at
 * every step (the rule's clip: absmax, mse or percentile of the current W), not learned; static
 * activation scales stay at their calibration on the model before training (the bench
 * recalibrates them on the new model afterwards). That is scales=fixed, the default.
 *
 * scales=lsq (Learned Step Size Quantization, Esser et al. 2020): the weight scale of every
 * block of every weight-quantized site (one per tensor, output channel or group, as the rule's
 * gran says) is a parameter, initialised from the site's current scales and trained with the
 * weights by the same optimizer and learning rate (no weight decay on scales). With
 * v = w / s and Q(v) the format's grid value at scale 1 (int: clamp(round(v), lo, hi); a
 * minifloat, NF4, compand: the element cast, saturating), the forward is s Q(v) and
 *   d(s Q(v))/ds = Q(v) - v      inside the range (lo <= v <= hi; |v| <= max),
 *                = Q(v)          clipped (lo or hi: -Qn or Qp; +-max),
 * times the gradient scale g = 1 / sqrt(N_block Qp) (Qp = 2^(B-1) - 1 for symmetric int,
 * 2^B - 1 for asymmetric, the format's max otherwise; N_block the values sharing the scale), and
 * d(s Q(v))/dw = 1 inside the range, 0 clipped (the clamp's derivative: the weight STE is clipped
 * under lsq, the identity under fixed). A scale is stored as the format stores it (F16 unless
 * scale=f32): the forward uses the master scale rounded to that type, straight-through. Asymmetric
 * int keeps its zero points. After training the learned scales are the site's (its packed codes and
 * scales, qs_lsq_pack). Refused: MX and NVFP4 (their block scales are powers of two / E4M3 codes of
 * a tensor scale), ggml types, scale=none, sat=0, round=stochastic. */
#ifndef QSCOPE_QAT_H
#define QSCOPE_QAT_H

#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/lm_train.h"

/* One site's learned step sizes: blocks of `seg` columns, nseg a row (one block for the tensor
 * when shared). */
struct qs_lsq_site {
    struct qs_quantizer *qz; /* the site's format: rounding at a given block */
    int rows, cols, seg, nseg, shared;
    size_t nblk;
    struct qs_qblock *blk; /* the blocks the forward uses (scale rounded to storage) */
    float *s, *gs;         /* master scales and their gradient (nblk each) */
    float *s0;             /* the scales it started from */
    float *m1, *m2;        /* Adam's moments of the scales */
    float qp;              /* Qp of the gradient scale */
    int kind_int, f32;
};
/* Whether format f with options o can learn its scales: 0, or -1 and e saying why not. */
int qs_lsq_check(const struct qs_format *f, const struct qs_qopts *o, qs_err *e);
/* Blocks fitted to w: (rows, cols) as the format fits them (its clip=), then, when p is a packing
 * of the same format and shape, p's stored scales and zero points (the site's current scales,
 * learned ones included). 0 or -1 and e. Free with qs_lsq_site_free (zeroed: ok). */
int qs_lsq_site_init(struct qs_lsq_site *q, const struct qs_format *f, const struct qs_qopts *o,
                     const float *w, int rows, int cols, const struct qs_packed *p, qs_err *e);
void qs_lsq_site_free(struct qs_lsq_site *q);
/* out (rows, cols) = s Q(w / s) under the current blocks (out != w). */
void qs_lsq_fake(const struct qs_lsq_site *q, const float *w, float *out);
/* Given gw (rows, cols) = dL/d(s Q(w / s)): adds dL/ds (LSQ's, with its gradient scale) to
 * q->gs and zeroes gw where w is clipped (the weight's straight-through gradient). */
void qs_lsq_backward(struct qs_lsq_site *q, const float *w, float *gw);
/* Sets block k's master scale to s (at least the storage's smallest normal) and its block. */
void qs_lsq_set(struct qs_lsq_site *q, size_t k, float s);
/* One Adam step of the scales on q->gs times clip (step 0-based; betas, eps as the weights'). */
void qs_lsq_adam(struct qs_lsq_site *q, int step, double lr, float clip, double b1, double b2,
                 double eps);
/* p = the packing of w with the learned blocks, wq = its unpacking, checked equal to
 * qs_lsq_fake bit for bit. 0 or -1 and e. */
int qs_lsq_pack(const struct qs_lsq_site *q, const struct qs_format *f, const struct qs_qopts *o,
                const float *w, struct qs_packed *p, float *wq, qs_err *e);

/* The straight-through hooks of a transformer: h.weight(s) = Q(W_s) of m's current weight s
 * (NULL where the site's weight stays float), h.act = the site's activation quantization
 * (in place on qs_lm_backward's / qs_lm_forward's private copy). ls: per site, the formats
 * (a bench's b->ls for b->lm = m or a model of its shape); both must outlive the hooks. */
struct qs_qat_hooks {
    const struct qs_lm *m;
    const struct qs_layer_state *ls;
    float **wq;              /* per site: Q(W_s), or NULL */
    struct qs_lsq_site *lsq; /* NULL (scales=fixed), or per site its learned scales (qz NULL:
                                none) */
    struct qs_hooks h;
    int nw, na;         /* sites whose weights / activations are quantized */
    double b1, b2, eps; /* scales=lsq: Adam's (qs_qat_lm sets the trainer's) */
    int failed;         /* an activation quantization failed inside a hook: msg */
    char msg[256];
};
/* 0, or -1 and e (memory; a static activation scale not calibrated). Q(W) is computed at once. */
int qs_qat_hooks_init(struct qs_qat_hooks *q, const struct qs_lm *m,
                      const struct qs_layer_state *ls, qs_err *e);
/* Recomputes Q(W_s) from m's current weights (u: the struct qs_qat_hooks); reports a failure
 * of an earlier activation hook. 0 or -1 and e. */
int qs_qat_hooks_refresh(void *u, qs_err *e);
/* scales=lsq: every weight-quantized site learns its scales (qs_lsq_site_init on m's weight and
 * ls[s].packed), Q(W) from them from now on. 0 or -1 and e (a format that cannot: its site). */
int qs_qat_hooks_lsq(struct qs_qat_hooks *q, qs_err *e);
/* After a backward through the hooks u (scales=lsq) into g: each learned site's q->lsq[s].gs =
 * dL/ds from its weight's gradient, which is zeroed where clipped; with g->head (a tied head's
 * own gradient, set before the backward) the head's, then added to the embedding's and g->head
 * zeroed. *n2: the squared norm of every dL/ds. qs_lm_train's grad_extra. 0. */
struct qs_lm_grad;
int qs_qat_lsq_grad(void *u, struct qs_lm_grad *g, double *n2, qs_err *e);
void qs_qat_hooks_free(struct qs_qat_hooks *q);

enum qs_qat_mode { QS_QAT_WHOLE, QS_QAT_BLOCK };
enum qs_qat_scales { QS_QAT_SCALES_FIXED, QS_QAT_SCALES_LSQ };
enum qs_qat_order { QS_QAT_ORDER_DEPTH, QS_QAT_ORDER_SENS };
#define QS_QAT_MAX_BLOCKS 256

struct qs_qat_lm_opts {
    enum qs_qat_mode mode;     /* whole model on the next-token loss, or block by block */
    enum qs_qat_order order;   /* block mode: blocks in depth order, or the most sensitive first */
    enum qs_qat_scales scales; /* weight scales: recomputed from W every step, or learned (LSQ) */
    int samples;               /* block mode: calibration windows drawn from the training tokens */
    int epochs;                /* passes over the training tokens: epochs * max(1, (n_train - 1) /
                                  (batch ctx)) steps */
    int steps;                 /* > 0: this many steps instead */
    int batch, ctx;            /* windows per step, tokens per window (0: the model's ctx) */
    int warmup;                /* linear warm-up steps (capped at steps / 10 as in train) */
    double lr, min_lr, wd, clip; /* AdamW (betas 0.9 / 0.95) and the cosine schedule */
    uint64_t seed;               /* window sampling */
    const char *out; /* NULL, or a folder the trained model is written to (then its path) */
};
/* Defaults: whole model, depth order, 64 samples, epochs 1, batch 16, the model's ctx, warm-up 10,
 * lr 5e-4, min_lr lr / 10, wd 0, clip 1, seed 0. */
void qs_qat_lm_defaults(struct qs_qat_lm_opts *o);

struct qs_qat_lm_result {
    /* held-out loss (nats per token) from the bench's eval, with its corrections */
    double f_loss, ptq_loss;       /* before: float, quantized */
    double f_loss_after, qat_loss; /* after: the trained float model, quantized */
    /* held-out loss through the training hooks (no corrections; the old static scales) before
     * and after training: the loss the training lowers */
    double ste_loss0, ste_loss;
    double train_loss; /* mean of the last min(steps, 50) steps */
    double gap_closed; /* (ptq_loss - qat_loss) / (ptq_loss - f_loss); NAN if no gap */
    long tokens;
    int steps, batch, ctx;
    int w_sites, a_sites; /* sites trained through a weight / activation quantizer */
    int dropped_corr;     /* corrections fitted to the old weights, dropped */
    /* scales=lsq: learned scales (blocks) and their mean |log(s_after / s_before)| */
    long lsq_scales;
    double lsq_change;
    /* block mode: blocks in the order trained, and each one's reconstruction error (the mean
     * over the samples of (block_q(x_q) - block_f(x_f))^2) before and after its training */
    int nblocks, samples;
    int order[QS_QAT_MAX_BLOCKS];
    double mse0[QS_QAT_MAX_BLOCKS], mse1[QS_QAT_MAX_BLOCKS];
};

/* qat on a transformer: trains a copy of the bench's model (its current weights) on the
 * training tokens (everything before the held-out 10 %, windows drawn at random as `train`
 * does) through the straight-through hooks of the bench's current formats, then replaces the
 * bench's model by it (same rules, token data and calibration size; corrections dropped) and
 * evaluates it. A failure leaves the bench as it was. Nothing quantized: an error. */
int qs_qat_lm(struct qs_bench *b, const struct qs_qat_lm_opts *o, qs_lm_train_cb cb, void *u,
              struct qs_qat_lm_result *r, qs_err *e);

/* qat mode=block (EfficientQAT's Block-AP, Chen et al. 2024): o->samples windows of ctx tokens
 * are drawn once from the training tokens (seed). Blocks are trained one at a time, in depth
 * order or (order=sensitivity) by the summed `sensitivity` of their quantized sites, largest
 * first. Block l's training set: x_q, the stream entering it in the model being trained (every
 * block before it as it is now, through the straight-through hooks), and the target
 * block_f(x_f), the float model's block on the float model's own stream. Every parameter of the
 * block (site weights and biases, norms) is trained by AdamW on mean((block_q(x_q) - target)^2)
 * through the hooks (qs_lm_block), epochs passes over the samples in batches (steps > 0: that
 * many steps per block instead), the cosine schedule restarting per block. Then as qs_qat_lm:
 * the trained model replaces the bench's and is evaluated. Called by qs_qat_lm when o->mode is
 * QS_QAT_BLOCK. */

#endif
