/* lm_train.h - training GPT-2 and LLaMA transformers (lm.h) on a token stream: random context
 * windows, the backward pass of lm_grad.h, AdamW with a cosine learning-rate schedule after a
 * linear warm-up, and global gradient-norm clipping. */
#ifndef QSCOPE_LM_TRAIN_H
#define QSCOPE_LM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"
#include "qscope/lm.h"

struct qs_lm_grad;

struct qs_lm_train_opts {
    int steps;     /* optimizer steps */
    int batch;     /* windows per step */
    int ctx;       /* tokens per window, 1 .. the model's ctx (0: the model's) */
    int warmup;    /* steps of linear warm-up from lr / warmup to lr */
    double lr;     /* peak learning rate */
    double min_lr; /* the cosine's floor, reached at the last step */
    double wd;     /* AdamW's decoupled weight decay, on matrices only (not norms, biases) */
    double beta1, beta2, eps;
    double clip;    /* the global gradient norm is scaled down to this (0: no clipping) */
    uint64_t seed;  /* window sampling and, with init, the initial weights */
    int init;       /* 1: start from random weights (qs_lm_init); 0: from m's weights */
    int eval_every; /* validation loss every N steps (0: only before and after) */
    /* Quantization-aware training (qat.c): NULL, or hooks that the forward of every step and
     * every validation run through (qs_lm_backward's straight-through semantics: the gradient
     * of a replaced weight goes to m's own, dx = dy through act()); refresh (may be NULL) is
     * called with hooks_u before every step and every validation, after m's weights changed,
     * so that the hooks can recompute what they derive from them (the fake-quantized
     * weights). */
    const struct qs_hooks *hooks;
    int (*refresh)(void *u, qs_err *e);
    void *hooks_u;
    /* Parameters outside the model trained with it (qat scales=lsq's step sizes, qat.c), all
     * NULL for none: grad_extra(hooks_u, g, &n2, e) is called after every backward with its
     * gradient g (which it may rewrite) and returns in n2 the squared norm of the extra
     * parameters' gradient, which joins the global norm clip; after the model's update,
     * step_extra(hooks_u, step (0-based), lr, the clip factor) updates them. head: where a
     * tied head's own gradient goes (qs_lm_grad's head) instead of into the embedding's. */
    int (*grad_extra)(void *u, struct qs_lm_grad *g, double *n2, qs_err *e);
    void (*step_extra)(void *u, int step, double lr, float clip);
    float *head;
};

/* Defaults: 1000 steps, batch 16, the model's ctx, warm-up 100 (at most steps / 10), lr 3e-3,
 * min_lr 3e-4, wd 0.1, betas 0.9 / 0.95, eps 1e-8, clip 1, seed 1, init 1, eval_every 0, no
 * hooks. */
void qs_lm_train_defaults(struct qs_lm_train_opts *o);

/* The learning rate of step s (0-based) of o: lr (s + 1) / warmup during the warm-up, then
 * min_lr + (lr - min_lr) (1 + cos(pi p)) / 2 with p = (s - warmup) / (steps - warmup - 1)
 * going from 0 to 1 (p = 1 if there is one step after the warm-up). */
double qs_lm_train_lr(const struct qs_lm_train_opts *o, int step);

/* AdamW's constants for one step: the gradient's clip factor, the step size a = lr / (1 -
 * beta1^(s+1)), ib2 = 1 / sqrt(1 - beta2^(s+1)), and the decoupled decay 1 - lr wd. */
struct qs_adamw {
    float clip, a, ib2, b1, b2, eps, decay;
};

/* The constants of step s (0-based) with these betas, eps, lr and wd (the bias corrections in
 * double, the rest rounded to float as qs_lm_train uses them). */
struct qs_adamw qs_adamw_at(int s, double lr, double wd, double beta1, double beta2, double eps,
                            float clip);

/* AdamW's update of t from its gradient (scaled by k->clip) with its moments mm, vv (t->n
 * each, updated): the decay on matrices (t->cols != 0) only, as qs_lm_train does. */
struct qs_lm_tensor;
void qs_adamw_update(struct qs_lm_tensor *t, float *mm, float *vv, const struct qs_adamw *k);

/* Random weights for m's shape (GPT-2 / nanoGPT style): every matrix and embedding N(0, 0.02),
 * the projections back into the residual stream (c_proj, o_proj, down_proj) N(0, 0.02 /
 * sqrt(2 n_layer)), biases 0, norm gains 1 and norm biases 0. Deterministic in seed. */
void qs_lm_init(struct qs_lm *m, uint64_t seed);

struct qs_lm_train_result {
    double val_loss0;  /* validation loss before training */
    double val_loss;   /* after */
    double train_loss; /* mean training loss of the last min(steps, 50) steps */
    long val_tokens;   /* predicted validation positions */
    long tokens;       /* training tokens processed (steps batch ctx) */
    int steps;         /* steps done */
};

/* Progress: called after every step with the step (1-based), its training loss and learning
 * rate, and the validation loss when it was measured at that step (else NAN). A nonzero
 * return cancels the training (qs_lm_train then fails with "cancelled"). */
typedef int (*qs_lm_train_cb)(void *u, int step, int steps, double loss, double lr, double val);

/* Trains m in place. Training windows of o->ctx + 1 tokens start uniformly at random in
 * train[0 .. n_train - ctx - 1]; the validation loss is qs_lm_evaluate's on val[0 .. n_val)
 * (every non-overlapping window of the model's ctx, through o->hooks when given; val NULL:
 * none, the losses are NAN). The
 * optimizer state (2 floats per
 * parameter) and the backward's scratch are checked with qs_mem_check. 0, or -1 and e (m is
 * then partly trained). cb may be NULL. */
int qs_lm_train(struct qs_lm *m, const uint32_t *train, size_t n_train, const uint32_t *val,
                size_t n_val, const struct qs_lm_train_opts *o, qs_lm_train_cb cb, void *u,
                struct qs_lm_train_result *r, qs_err *e);

#endif
