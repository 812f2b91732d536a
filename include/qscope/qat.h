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
 * recalibrates them on the new model afterwards). Learned (LSQ) scales are not offered. */
#ifndef QSCOPE_QAT_H
#define QSCOPE_QAT_H

#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/lm_train.h"

/* The straight-through hooks of a transformer: h.weight(s) = Q(W_s) of m's current weight s
 * (NULL where the site's weight stays float), h.act = the site's activation quantization
 * (in place on qs_lm_backward's / qs_lm_forward's private copy). ls: per site, the formats
 * (a bench's b->ls for b->lm = m or a model of its shape); both must outlive the hooks. */
struct qs_qat_hooks {
    const struct qs_lm *m;
    const struct qs_layer_state *ls;
    float **wq; /* per site: Q(W_s), or NULL */
    struct qs_hooks h;
    int nw, na; /* sites whose weights / activations are quantized */
    int failed; /* an activation quantization failed inside a hook: msg */
    char msg[256];
};
/* 0, or -1 and e (memory; a static activation scale not calibrated). Q(W) is computed at once. */
int qs_qat_hooks_init(struct qs_qat_hooks *q, const struct qs_lm *m,
                      const struct qs_layer_state *ls, qs_err *e);
/* Recomputes Q(W_s) from m's current weights (u: the struct qs_qat_hooks); reports a failure
 * of an earlier activation hook. 0 or -1 and e. */
int qs_qat_hooks_refresh(void *u, qs_err *e);
void qs_qat_hooks_free(struct qs_qat_hooks *q);

enum qs_qat_mode { QS_QAT_WHOLE, QS_QAT_BLOCK };
enum qs_qat_order { QS_QAT_ORDER_DEPTH, QS_QAT_ORDER_SENS };
#define QS_QAT_MAX_BLOCKS 256

struct qs_qat_lm_opts {
    enum qs_qat_mode mode;   /* whole model on the next-token loss, or block by block */
    enum qs_qat_order order; /* block mode: blocks in depth order, or the most sensitive first */
    int samples;             /* block mode: calibration windows drawn from the training tokens */
    int epochs;              /* passes over the training tokens: epochs * max(1, (n_train - 1) /
                                (batch ctx)) steps */
    int steps;               /* > 0: this many steps instead */
    int batch, ctx;          /* windows per step, tokens per window (0: the model's ctx) */
    int warmup;              /* linear warm-up steps (capped at steps / 10 as in train) */
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
