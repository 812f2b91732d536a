/* sensitivity.h - which layers matter: per-layer sensitivity to quantization, the bit and rank
 * allocation under a budget that follows from it, and quantization-aware fine-tuning (QAT) of
 * MLPs through the straight-through estimator.
 *
 * Definitions (REFERENCES.md "Sensitivity"). L is the mean cross-entropy; W_i the weight of layer
 * i, Q(W_i) its quantized weight as configured on the bench, N_i its number of weights.
 * - delta: dL_i = L(only layer i quantized) - L(float), on the held-out split (any model: an MLP's
 *   test rows, a transformer's held-out tokens, the last 10 % of the stream); "quantized" means
 *   the unit's weight and activation formats as the rules resolve them, without its correction.
 * - grad: ||dL/dW_i||_F at the float weights, on the CALIBRATION split.
 * - fisher: F_i = mean over samples r of g_r (.) g_r, g_r the gradient of sample r's own loss
 *   (empirical Fisher diagonal, calibration split, float weights); fisher_err = sum F_i (.)
 *   (W_i - Q(W_i))^2, the second-order term of the loss change with H replaced by F.
 * - hutchinson: tr(H_i), H_i the Hessian block of layer i's weights (calibration split, float
 *   weights), estimated as the mean over m Rademacher probes v (on layer i only) of v^T H_i v,
 *   with H_i v exact by forward-over-reverse differentiation (qs_mlp_hvp, the R-operator), and
 *   the standard error of that mean; hutch_err = tr(H_i) / N_i * ||W_i - Q(W_i)||_F^2 (the
 *   HAWQ-v2 score).
 * Every gradient comes from the one MLP backward pass, qs_mlp_loss_grad; every Hessian-vector
 * product from its R-operator twin, qs_mlp_hvp. */
#ifndef QSCOPE_SENSITIVITY_H
#define QSCOPE_SENSITIVITY_H

#include "qscope/bench.h"
#include "qscope/format.h"
#include "qscope/mlp.h"

/* ---- pure functions on a model and samples ------------------------------------------------ */

/* Empirical Fisher diagonal of every layer's weight: f[i]: (out_i, in_i) (caller-allocated)
 * = (1/n) sum_r g_r (.) g_r with g_r = d loss_r / d W_i. For a linear layer g_r = delta_r x_r^T
 * (delta_r the gradient of loss_r with respect to the pre-activation, x_r the layer's input), so
 * the sum is one GEMM per layer: (delta (.) delta)^T (x (.) x). The deltas are read from the
 * shared backward pass (qs_mlp_loss_grad on one sample at a time: its bias gradient is
 * delta_r); the layer inputs from a batched forward pass. x: (n, in0), y: (n). */
int qs_fisher_diag(const struct qs_mlp *m, const float *x, const int *y, int n, float **f,
                   qs_err *e);

struct qs_hutch {
    double trace; /* mean of v^T H v over the probes */
    double se;    /* standard error of that mean: sample sd / sqrt(probes) */
    int probes;
};

/* Hutchinson estimate of tr(H_i), the Hessian of the mean loss over x: (n, in0), y with respect
 * to layer `layer`'s weight (bias excluded). Probe t draws v in {-1, +1}^N_i (zero on the other
 * layers) from qs_rng seeded with seed ^ (0x9e3779b97f4a7c15 * (layer + 1)); H v is exact
 * (qs_mlp_hvp: no finite step, so on ReLU networks no activation kink is crossed). probes >= 2.
 * The model is not modified. */
int qs_hutchinson(const struct qs_mlp *m, const float *x, const int *y, int n, int layer,
                  int probes, uint64_t seed, struct qs_hutch *h, qs_err *e);

/* ---- sensitivity over a bench ----------------------------------------------------------- */

enum { QS_SENS_DELTA = 1, QS_SENS_GRAD = 2, QS_SENS_FISHER = 4, QS_SENS_HUTCH = 8 };
#define QS_SENS_ALL 15

struct qs_sens_layer {
    int quantized;       /* the layer has a weight or activation format */
    double w_err2;       /* ||W - Q(W)||_F^2 (0 when its weights stay float) */
    double delta_loss;   /* QS_SENS_DELTA */
    double grad_norm;    /* QS_SENS_GRAD */
    double fisher_trace; /* QS_SENS_FISHER: sum of F_i */
    double fisher_err;   /* QS_SENS_FISHER: sum F_i (.) (W_i - Q(W_i))^2 */
    double hutch_trace;  /* QS_SENS_HUTCH: the estimate of tr(H_i) ... */
    double hutch_se;     /* ... its standard error ... */
    double hutch_err;    /* ... and tr(H_i) / N_i * ||W_i - Q(W_i)||^2 */
};

struct qs_sens_info {
    double float_loss_test; /* the reference of delta */
    int n_calib, n_test;    /* samples (MLP) or predicted tokens (transformer, held-out) */
    int probes;
    uint64_t seed;
};

/* What a family provides for delta: the mean loss on its held-out split with only unit `only`
 * quantized (weights and activations as configured, no correction), every other unit float;
 * only = -1: the float model. *n: the samples or tokens the loss averages. The MLP's runs
 * qs_bench_run on the test split, a transformer's qs_bench_lm_loss_only. */
typedef int (*qs_unit_loss_fn)(struct qs_bench *b, int only, double *loss, int *n, qs_err *e);

/* The one delta loop over units, written against qs_unit_loss_fn: out[i].delta_loss =
 * loss(only i) - loss(float) for every unit with out[i].quantized set (others stay 0). Reports
 * progress and honours b->cancel between units. float_loss, n may be NULL. */
int qs_sens_delta(struct qs_bench *b, qs_unit_loss_fn loss, int nunits, struct qs_sens_layer *out,
                  double *float_loss, int *n, qs_err *e);

/* Fills out[0..qs_bench_nunits) for the methods in the QS_SENS_* mask (others are left 0).
 * probes for Hutchinson (>= 2), seeded by the bench's session seed. info may be NULL. On a
 * transformer only QS_SENS_DELTA is available: the others need a backward pass, which
 * transformers do not have yet (refused with that message). */
int qs_sensitivity(struct qs_bench *b, unsigned methods, int probes, struct qs_sens_layer *out,
                   struct qs_sens_info *info, qs_err *e);

/* ---- allocation ------------------------------------------------------------------------- */

/* Greedy choice of one candidate per layer under a bit budget, by marginal loss per bit.
 * bits, loss: (nl, nc) row-major: the total bits of layer i at candidate k and the loss it adds;
 * valid (nl, nc) may be NULL (all valid). Starts every layer at its cheapest valid candidate
 * (ties: the lower loss), then repeatedly takes the upgrade (i, k) with the largest
 * (loss[i][cur] - loss[i][k]) / (bits[i][k] - bits[i][cur]) among those that lower the loss and
 * keep the total within budget (an upgrade that does not add bits goes first); ties go to the
 * lower layer, then the fewer bits. Since that ratio rule can strand budget (a cheap upgrade
 * taken early can block a dear one later), it then applies the best change of one layer's or
 * two layers' choices (e.g. one up, one down) that fits the budget and lowers the summed loss,
 * until none does: the result is optimal among its one- and two-layer neighbours (with two
 * layers, among all plans). choice: (nl). Returns the number of steps taken, or -1 when even the
 * cheapest plan exceeds the budget (message gives both totals). */
int qs_alloc_bits_greedy(int nl, int nc, const double *bits, const double *loss, const int *valid,
                         double budget, int *choice, qs_err *e);

/* Spreads `total` units of rank over nl layers: gain[i][k] (k = 0..maxr[i]-1) is the benefit of
 * raising layer i from rank k to k + 1 (already per parameter). Repeatedly gives one unit to the
 * layer with the largest next gain (> 0; ties: the lower layer). With gains non-increasing in k
 * (a concave benefit) this maximises the total benefit. rank: (nl). Returns the rank given. */
int qs_alloc_rank_greedy(int nl, const double *const *gain, const int *maxr, int total, int *rank);

/* A candidate for allocate bits=: a weight format, optionally with a low-rank correction on
 * top. The bits of a candidate on a layer are its packed weight bits plus its correction's
 * (qs_corr_fit_lowrank: 32 a parameter in float, the packed factors otherwise); its loss is
 * measured with the correction applied. A candidate without a correction that quantizes a layer
 * exactly as the bench does now keeps that layer's current correction (bias, low-rank or linear;
 * not clocal, which is never applied), so its bits and its effect count too: one budget over
 * weight bits and correction bits. */
struct qs_wcand {
    struct qs_format fmt;
    struct qs_qopts opt;
    enum qs_corr_method corr;   /* QS_CORR_NONE, or lowrank, lqer, qera, eora fitted on top */
    int rank;                   /* its rank (a layer with min(out, in) < rank cannot take it) */
    char prec[32];              /* its factors' precision: "float" or a format name */
    char label[80];             /* "int4/channel", "int3/channel+qera:r=4:int8" */
    struct qs_rule_method meth; /* quantizer method (zero: round-to-nearest); allocate takes
                                   its statistics from the float model (inputs=float) */
};

struct qs_bit_plan {
    int nl, nc;
    int *choice;            /* (nl) candidate per layer */
    double *bits;           /* (nl, nc) packed bits of layer i at candidate k (-1: not valid) */
    double *dloss;          /* (nl, nc) calibration loss with only layer i at candidate k, minus
                               the float calibration loss */
    double bits_per_weight; /* of the plan, from packed sizes */
    double float_loss_calib;
    struct qs_metric plan_test; /* test split, weights of the plan (activations float) */
    struct qs_metric float_test;
    double *uniform_bpw;            /* (nc) every layer at candidate k */
    struct qs_metric *uniform_test; /* (nc) */
    int upgrades;                   /* steps of qs_alloc_bits_greedy */
    int refined;                    /* steps of the joint refinement */
    int pairs;                      /* 1: it tried two-site exchanges, 0: single changes only
                                       (their cost: QS_ALLOC_PAIRS_MAX) */
    double joint_loss_calib; /* calibration loss of the plan, all its layers quantized at once */
    int *keeps;              /* (nl, nc) 1: candidate k keeps layer i's current correction */
    double bench_corr_bits;  /* bits of the corrections on the bench (clocal excluded) */
};

/* allocate bits=: measures every (layer, candidate) on the calibration split (only that layer's
 * weights quantized, and corrected as the candidate says, everything else float; packed sizes
 * from qs_quant_pack, correction bits included), runs
 * qs_alloc_bits_greedy under budget_bpw * (total weights) bits, then refines the plan on the
 * measured joint calibration loss (all layers quantized at once; the summed deltas ignore how
 * layers' errors interact): the single change or two-layer exchange within the budget that
 * lowers it most, until none does. Evaluates the plan and each uniform candidate on the test
 * split. Weight-only: activation formats on the bench are not
 * applied. Does not change the bench. Free with qs_bit_plan_free. */
/* The joint refinement tries two-site exchanges while (sites x candidates)^2 x parameters x
 * calibration rows stays below this (about the multiply-adds of one refinement step); above it,
 * single changes only (a GPT-2-small would take hours a step). */
#define QS_ALLOC_PAIRS_MAX 1e13
int qs_allocate_bits(struct qs_bench *b, const struct qs_wcand *cand, int nc, double budget_bpw,
                     struct qs_bit_plan *p, qs_err *e);
void qs_bit_plan_free(struct qs_bit_plan *p);

struct qs_rank_plan {
    int nl;
    int *rank;    /* (nl) */
    int *maxr;    /* (nl) min(out, in), 0 for layers whose weights are float */
    double *rel;  /* (nl) local relative pre-activation error energy ||E R^1/2||^2 /
                     ||W R^1/2||^2 (R = E[x x^T] of the float calibration inputs) */
    double *pred; /* (nl) predicted recovery of rank[i]: 1 - left_i[rank[i]] */
    long params;  /* parameters the plan adds: sum rank_i (out_i + in_i) */
    int given;    /* rank handed out (< total when every layer is full) */
};

/* allocate rank=: reads the spectrum of each weight-quantized layer's error under scale=cov
 * (qs_analysis_spectrum, calibration split) and spreads `total` rank by marginal recovery per
 * parameter: gain_i(k) = rel_i (left_i[k] - left_i[k + 1]) / (out_i + in_i), i.e. the drop of
 * the layer's local relative pre-activation error energy per added parameter (exact for
 * qera/eora, a proxy for lowrank/lqer). Free with qs_rank_plan_free. */
int qs_allocate_rank(struct qs_bench *b, int total, struct qs_rank_plan *p, qs_err *e);
void qs_rank_plan_free(struct qs_rank_plan *p);

/* ---- quantization-aware training --------------------------------------------------------- */

struct qs_qat_opts {
    int epochs, batch;
    double lr;     /* Adam, as qs_mlp_train (beta 0.9 / 0.999, eps 1e-8, no decay) */
    uint64_t seed; /* mini-batch shuffle */
    int lsq;       /* scales=lsq: learned step sizes (qat.h), trained by the same Adam and lr */
};

/* Straight-through fine-tuning of m (the float master weights) in place on x: (n, in0), y: each
 * step runs the forward and backward pass (qs_mlp_loss_grad) on a copy whose weights are
 * qs_quant_fake(fmt[i], opt[i], W_i) (fmt[i].kind == QS_FMT_NONE: W_i itself), and applies the
 * gradient to the master weights unchanged (d Q(W) / d W taken as 1); biases stay float.
 * Mini-batches, shuffling and Adam follow qs_mlp_train exactly, so with every format none the
 * result equals qs_mlp_train's bit for bit. cb as in qs_mlp_train (may be NULL). */
int qs_qat_train(struct qs_mlp *m, const struct qs_format *fmt, const struct qs_qopts *opt,
                 const float *x, const int *y, int n, const struct qs_qat_opts *o, qs_train_cb cb,
                 void *ctx, qs_err *e);

struct qs_qat_result {
    struct qs_metric f, ptq;     /* before: float and quantized (test split) */
    struct qs_metric f_qat, qat; /* after: fine-tuned float and its quantization */
    double gap_closed;           /* (qat.acc - ptq.acc) / (f.acc - ptq.acc); NaN if no gap */
    int dropped_corr;            /* corrections the new model invalidated */
    int act_quant;               /* some layer quantizes activations (not simulated) */
    long lsq_scales;             /* scales=lsq: scales learned, their mean |log(s1 / s0)| */
    double lsq_change;
};

/* qat: fine-tunes the bench's model on the train split through its current per-layer weight
 * formats (qs_qat_train), then replaces the bench's model by the fine-tuned float model (same
 * path, rules, split and calibration size; corrections are dropped since they were fitted to
 * the old weights) and evaluates it. */
int qs_qat(struct qs_bench *b, const struct qs_qat_opts *o, qs_train_cb cb, void *ctx,
           struct qs_qat_result *r, qs_err *e);

#endif
