/* lm_grad.h - the backward pass of the GPT-2 and LLaMA transformers (lm.h): the mean next-token
 * cross-entropy of a batch of windows and its gradient with respect to every parameter
 * (embeddings, norm gains and biases, site weights and biases, an untied head); per-site
 * gradient norms and empirical Fisher diagonals; exact Hessian-vector products
 * (forward-over-reverse) and Hutchinson's trace estimate on them.
 *
 * Notation as in lm.h: B windows of T tokens, BT = B T rows, d = d_model, H heads of
 * hd = d / H, Hk key/value heads, ff = d_ff, V = vocab. */
#ifndef QSCOPE_LM_GRAD_H
#define QSCOPE_LM_GRAD_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"
#include "qscope/lm.h"

/* One parameter tensor of a model: its value (owned by the model) and its gradient (owned by
 * the qs_lm_grad). Names are Hugging Face's without GPT-2's "transformer." prefix
 * ("wte.weight", "h.0.attn.c_attn.weight", "model.layers.1.mlp.up_proj.weight",
 * "lm_head.weight"); site weights are (out, in) as everywhere in qscope, also GPT-2's Conv1D
 * ones. A tied head has no tensor of its own: its gradient is added to the embedding's. */
struct qs_lm_tensor {
    char name[112];
    float *val;
    float *grad;
    size_t n;       /* entries */
    int rows, cols; /* (rows, cols), cols = 0 for a vector */
};

/* Gradient buffers for one model, all in one allocation (flat, in tensor order): the
 * embeddings, then per block its norms and sites in forward order, the final norm, the head. */
struct qs_lm_grad {
    int ntensor;
    struct qs_lm_tensor *t;
    float *flat;  /* every gradient, t[i].grad = flat + offset */
    size_t nflat; /* the parameter count (qs_lm_nparams) */
    float **gw;   /* per site: its weight's gradient (out, in); a tied head's: the embedding's */
    float **gb;   /* per site: its bias's gradient (out), or NULL */
    /* NULL, or (tied head only, set by the caller) where the head's own gradient goes instead of
     * into the embedding's: the output projection's part alone, (vocab, d) */
    float *head;
};

/* Gradient buffers (zeroed) for m's parameters; the tensor list points at m's own weights, so m
 * must outlive it. NULL and e if memory is short (qs_mem_check). */
struct qs_lm_grad *qs_lm_grad_new(const struct qs_lm *m, qs_err *e);
/* NULL is fine. */
void qs_lm_grad_free(struct qs_lm_grad *g);
/* Sets every gradient to 0. */
void qs_lm_grad_zero(struct qs_lm_grad *g);

/* The mean next-token cross-entropy over B windows of T tokens and its gradient.
 * Window b's inputs are tok[start[b] .. start[b] + T) and its targets tok[start[b] + 1 ..
 * start[b] + T], so tok must hold start[b] + T + 1 tokens; 1 <= T <= ctx, ids < vocab.
 * *loss (nats, summed in double) is the mean over the BT predicted positions; the gradient of
 * that mean is ADDED to g (zero it first; accumulation lets callers split a batch). g NULL:
 * the loss only (no backward).
 *
 * Hooks h (may be NULL) act on the forward as qs_lm_forward's do, and the backward is
 * straight-through where they change a value: weight() replaces the site's weight in the
 * forward and in dx = dy W', and its gradient dL/dW' is the one given to the site's (master)
 * weight (the straight-through estimator of quantization-aware training); act() rewrites a copy
 * of the input that the weight gradient uses, while dx passes through unchanged; post()
 * rewrites the output, and the backward treats it as the identity; input() only observes.
 *
 * The activations of the whole batch are kept in one scratch area: work, of at least
 * qs_lm_backward_bytes (a caller running many steps keeps it), or, work NULL, one allocation
 * per call checked with qs_mem_check (about N (8 d + 2 kv + 3 ff + 4) + B H T^2 floats per
 * block, plus N (5 d + V + 2 max(d + 2 kv, ff))). The products run through cblas_sgemm over all
 * BT rows at once. 0 or -1 and e. */
int qs_lm_backward(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                   const struct qs_hooks *h, struct qs_lm_grad *g, double *loss, float *work,
                   qs_err *e);

/* Bytes of scratch qs_lm_backward needs for B windows of T tokens (with an act hook: act 1),
 * into *bytes; -1 on overflow. */
int qs_lm_backward_bytes(const struct qs_lm *m, int B, int T, int act, size_t *bytes);

/* The residual stream entering block 0 for B windows of T tokens (rows as qs_lm_backward's):
 * x (BT, d) = the token embedding (+ GPT-2's position embedding). */
void qs_lm_embed_rows(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                      float *x);

/* Block l of m alone (0 <= l < n_layer), on x (BT, d): the residual stream entering it for B
 * windows of T positions (any stream: qs_lm_embed_rows, or an earlier block's y). y (may be
 * NULL): its output (BT, d). With target (BT, d): *mse (may be NULL) = the mean over the BT d
 * entries of (y - target)^2, summed in double, and with g its gradient with respect to block
 * l's parameters (norms, site weights and biases) is ADDED to g (other tensors untouched).
 * Hooks h (may be NULL) act as in qs_lm_backward, with its straight-through backward (the
 * weight hook's gradient goes to the master weight; dx = dy through act). The block's
 * computation and backward are qs_lm_backward's own (the same functions). One scratch
 * allocation per call (about N (9 d + 2 kv + 3 ff + 2 max(d + 2 kv, ff)) + B H T^2 floats).
 * 0 or -1 and e. */
int qs_lm_block(const struct qs_lm *m, int l, const float *x, int B, int T,
                const struct qs_hooks *h, float *y, const float *target, double *mse,
                struct qs_lm_grad *g, qs_err *e);

/* Per-site sensitivity statistics of m's weights at its current values on nw windows (as
 * qs_lm_backward takes them: inputs tok[start[w] ..], targets shifted by one). gnorm[s] (may be
 * NULL) = ||dL/dW_s||_F with L the mean loss over all nw T positions; fisher[s] (may be NULL,
 * as may each fisher[s]; (out, in) each, caller-allocated) = the empirical Fisher diagonal
 * (1/nw) sum_w g_w (.) g_w, g_w = dL_w/dW_s for window w's own mean loss L_w (a sample is a
 * window). The tied head's are its output projection's alone (as its quantization changes only
 * that). Calls cb(u, done, total) after each backward when given (nonzero cancels). */
int qs_lm_site_grads(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int nw, int T,
                     double *gnorm, float **fisher, int (*cb)(void *u, int done, int total),
                     void *u, qs_err *e);

/* Exact Hessian-vector products of the mean loss of B windows of T tokens (as qs_lm_backward
 * takes them), by forward-over-reverse differentiation (the R-operator: every value of the
 * forward and the backward carries its derivative along v; no finite step). The direction v
 * lives on site weights only: vw[s] (out, in) or NULL (0), vw NULL: v = 0. hv[s] (out, in),
 * where non-NULL, receives the block (H v)_s of the Hessian with respect to site s's weight;
 * the tied head's weight is taken as the output projection's alone (the embedding lookup
 * fixed), as everywhere in sensitivity. No hooks: the float model. *loss (may be NULL): the
 * mean loss. About twice qs_lm_backward's scratch, one allocation. 0 or -1 and e. */
int qs_lm_hvp(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
              const float *const *vw, float **hv, double *loss, qs_err *e);

/* Hutchinson's estimate of tr(H_s), the Hessian of the mean loss of the windows with respect to
 * site s's weight: the mean over probes of v^T H_s v with v in {-1, +1}^(out in) drawn from
 * qs_rng seeded with seed ^ (0x9e3779b97f4a7c15 * (s + 1)) (qs_hutchinson's convention), H v by
 * qs_lm_hvp; *se its standard error (sample sd / sqrt(probes)). probes >= 2. */
int qs_lm_hutchinson(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                     int site, int probes, uint64_t seed, double *trace, double *se, qs_err *e);

#endif
