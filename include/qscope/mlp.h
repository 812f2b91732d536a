/* mlp.h - multilayer perceptrons: loading (qscope metadata or a PyTorch nn.Sequential state
 * dict), batched forward pass on OpenBLAS, loss, backward pass, Hessian-vector products and the
 * Adam trainer.
 *
 * Notation: a linear layer computes y = x W^T + b with W: (out, in) row-major, x: (n, in). The
 * activation of layer i is applied to its pre-activation y; the last layer has none (logits). */
#ifndef QSCOPE_MLP_H
#define QSCOPE_MLP_H

#include "qscope/common.h"

struct qs_st_file;

enum qs_act { QS_ACT_NONE, QS_ACT_RELU, QS_ACT_GELU, QS_ACT_TANH, QS_ACT_SIGMOID };

const char *qs_act_name(enum qs_act a);
/* Parses "relu|gelu|tanh|sigmoid|none"; returns -1 with a message for anything else. */
int qs_act_parse(const char *s, enum qs_act *a, qs_err *e);

struct qs_layer {
    char name[64]; /* a longer name in a file is refused, never cut */
    int in, out;
    float *w; /* (out, in); owned by the model, or a view into the mapped file (w_mapped:
                 aligned F32 tensors are not copied; such weights are never written) */
    float *b; /* (out); zeros when the file had no bias */
    int w_mapped, b_mapped;
    int has_bias;    /* whether the file had a bias tensor */
    enum qs_act act; /* applied to this layer's pre-activation */
};

struct qs_mlp {
    int nlayers;
    struct qs_layer *layers;
    char *path;          /* file it was loaded from, or NULL */
    int from_sequential; /* layers inferred from a PyTorch state dict */
    int nmeta, metacap;  /* __metadata__ carried through (task metric, split, ...):
                            nmeta pairs in arrays of metacap, grown as needed */
    char **meta_key;
    char **meta_val;
    /* forward-pass scratch, grown on demand and reused so that repeated batches do not pay for
     * fresh pages; a model is used by one thread at a time */
    float *scratch;
    size_t scratch_len;
    struct qs_st_file *map; /* the mapped file mapped weights point into, or NULL */
};

/* Loads an MLP from a safetensors file (mapped: aligned F32 tensors are used in place). With qscope
 * metadata ("qscope.arch" = "mlp", "qscope.layers" = comma-separated names, "qscope.acts" = their
 * activations) the layers are read by name; otherwise the tensors are taken as a PyTorch
 * nn.Sequential state dict
 * ("0.weight", "0.bias", "2.weight", ...) ordered by index, whose shapes must chain; hidden
 * layers then use `act` (the last layer none). act_given says whether the caller named an act
 * (it then overrides the metadata's hidden activations). Weights are copied to F32 (from F32,
 * F16 or BF16) and checked finite: a NaN/Inf is reported with the tensor and index. Any number
 * of layers and metadata pairs; a layer name of 64 characters or more, or with control
 * characters, is refused (never cut); messages name the file once and print names from the
 * file cleaned (qs_clean_str). */
int qs_mlp_load(const char *path, enum qs_act act, int act_given, struct qs_mlp **out, qs_err *e);

/* A fresh model with sizes[0] inputs and sizes[nsizes-1] outputs; hidden layers use act. Weights
 * are He/Xavier-uniform initialised from rng, biases zero. Layer names fc0, fc1, ... */
int qs_mlp_new(const int *sizes, int nsizes, enum qs_act act, qs_rng *rng, struct qs_mlp **out,
               qs_err *e);
/* Deep copy (weights and metadata). */
struct qs_mlp *qs_mlp_clone(const struct qs_mlp *m);
void qs_mlp_free(struct qs_mlp *m);

/* Sets (or replaces) a metadata entry; strings are copied. -1 when out of memory. */
int qs_mlp_set_meta(struct qs_mlp *m, const char *key, const char *val);
const char *qs_mlp_get_meta(const struct qs_mlp *m, const char *key);

/* Writes the model with qscope metadata (arch, layers, acts) plus its other metadata. */
int qs_mlp_save(const struct qs_mlp *m, const char *path, qs_err *e);

/* Total parameter count. */
long qs_mlp_nparams(const struct qs_mlp *m);
int qs_mlp_max_width(const struct qs_mlp *m);

/* y = x W^T + b.  x: (n, in), w: (out, in), b: (out) or NULL, y: (n, out). cblas_sgemm. */
void qs_linear(const float *x, int n, int in, const float *w, const float *b, int out, float *y);
/* In-place activation over len values. */
void qs_act_apply(enum qs_act a, float *x, size_t len);

/* Forward pass of all layers. x: (n, in0) -> logits: (n, out_last). */
int qs_mlp_forward(const struct qs_mlp *m, const float *x, int n, float *logits, qs_err *e);

/* Mean softmax cross-entropy of logits: (n, c) against labels y; *ncorrect gets the number of
 * argmax hits (if non-NULL); dlogits (n, c) receives d(mean loss)/d(logits) if non-NULL. */
double qs_xent(const float *logits, const int *y, int n, int c, int *ncorrect, float *dlogits);
/* Mean KL(p_f || p_q) over rows and the number of rows whose argmax agree. */
double qs_kl_rows(const float *logits_f, const float *logits_q, int n, int c, int *agree);

/* Gradients of the mean cross-entropy with respect to every W and b (same layout as the model):
 * gw[i]: (out_i, in_i), gb[i]: (out_i). Returns the loss; -1 on allocation failure. */
double qs_mlp_loss_grad(const struct qs_mlp *m, const float *x, const int *y, int n, float **gw,
                        float **gb, int *ncorrect);

/* Hessian-vector product H v of the mean cross-entropy (the loss of qs_mlp_loss_grad) with
 * respect to the weights, exact (to float rounding) by forward-over-reverse differentiation:
 * Pearlmutter's R-operator R{f} = d/dr f(W + r v) at r = 0 pushed through the forward and the
 * backward pass (no finite step, so no ReLU kink is crossed: a ReLU's mask stays fixed and its
 * second derivative is 0 almost everywhere; tanh, sigmoid and GELU add their act'' term).
 * v[i]: (out_i, in_i) the direction on layer i's weight, or NULL for zero there (the biases'
 * direction is zero); hv[i]: (out_i, in_i) receives layer i's block of H v, or NULL when that
 * block is not wanted. x: (n, in0), y: (n). One allocation (memory-checked); -1 with a message
 * when it fails. */
int qs_mlp_hvp(const struct qs_mlp *m, const float *x, const int *y, int n, const float *const *v,
               float **hv, qs_err *e);

/* Builds, before every step, the model the forward and backward pass run on from the master
 * weights (quantization-aware training quantizes them: the straight-through estimator); the
 * gradients are applied to the master weights as they are. */
typedef int (*qs_train_fwd_fn)(void *ctx, const struct qs_mlp *master, struct qs_mlp *fwd,
                               qs_err *e);

struct qs_train_opts {
    int epochs, batch;
    double lr, weight_decay; /* Adam (decoupled weight decay, AdamW style) */
    uint64_t seed;
    qs_train_fwd_fn fwd; /* NULL: train on the master weights directly */
    /* Parameters trained beside the weights (qat scales=lsq's step sizes), NULL for none:
     * grad(fwd_ctx, master, gw) after every backward pass, gw[i]: (out_i, in_i) the gradient
     * of layer i's weight; step(fwd_ctx, master, s) after the weights' update of step s
     * (1-based). */
    void (*grad)(void *ctx, const struct qs_mlp *master, float *const *gw);
    void (*step)(void *ctx, const struct qs_mlp *master, long step);
    void *fwd_ctx;
};

/* Progress callback: called once per epoch; return nonzero to stop early (cancellation). */
typedef int (*qs_train_cb)(void *ctx, int epoch, double train_loss, double train_acc);

/* Trains m in place on x: (n, in0), y with Adam over shuffled mini-batches. */
int qs_mlp_train(struct qs_mlp *m, const float *x, const int *y, int n,
                 const struct qs_train_opts *o, qs_train_cb cb, void *ctx, qs_err *e);

#endif
