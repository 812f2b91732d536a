/* analysis.h - the error geometry and corrections over a bench: per-layer error statistics,
 * spectra and rank profiles of the error, fitted corrections judged on held-out data, and the
 * non-capacity ablation. Pure core: results come back in structs.
 *
 * Splits: statistics, spectra and rank use the calibration split; corrections are fitted on the
 * calibration split and judged on the test (held-out) split; task metrics use the test split. */
#ifndef QSCOPE_ANALYSIS_H
#define QSCOPE_ANALYSIS_H

#include "qscope/bench.h"
#include "qscope/spectral.h"

struct qs_layer_err {
    double w_rel_err;      /* ||W - Q(W)||_F / ||W||_F */
    double preact_rel_mse; /* propagated: ||Y_q - Y_f||^2 / ||Y_f||^2, each path from its input */
    double snr_db;         /* 10 log10(||Y_f||^2 / ||Y_q - Y_f||^2) (propagated); inf if exact */
    double local_rel_mse;  /* local: both from the float input X_f */
    double local_snr_db;
    double cosine;         /* cosine similarity of Y_q and Y_f (propagated) */
    double kl_alone;       /* KL(p_f || p_q) on the test split with only this layer quantized */
    double kl_share;       /* kl_alone / sum over layers */
    int has_attr;          /* weight+activation: the three local attributions below are set */
    double w_only, a_only, interaction; /* local relative MSE: weights only, activations only,
                                           and both minus the two */
};

/* Fills err[0..nlayers). */
int qs_analysis_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e);

enum qs_spec_of { QS_SPEC_WEIGHT, QS_SPEC_PREACT };
enum qs_spec_scale { QS_SCALE_NONE, QS_SCALE_ACT, QS_SCALE_COV };

struct qs_spectrum {
    int layer;
    enum qs_spec_of of;
    enum qs_spec_scale scale;
    int m, n;          /* shape of the matrix whose values are taken */
    int nsv;           /* values returned (k) */
    int exact;         /* LAPACK (1) or randomized range finder (0) */
    double *sv;        /* error singular values, descending (nsv) */
    double *ref_sv;    /* reference spectrum: of=weight the (scaled) W, of=preact Y_f (nsv) */
    struct qs_rank_stats st; /* of the error */
};

/* Computes the spectrum of layer `layer`'s error. k <= 0 means all min(m, n) values; large
 * matrices (min(m,n) > 512) with k < min(m,n)/4 use a randomized block Krylov method (within
 * 1 % of the exact top values on near-white error). Free with qs_spectrum_free. */
int qs_analysis_spectrum(struct qs_bench *b, int layer, enum qs_spec_of of,
                         enum qs_spec_scale scale, int k, struct qs_spectrum *sp, qs_err *e);
void qs_spectrum_free(struct qs_spectrum *sp);

/* Fits a correction on layer i (replacing any it had) and measures it. rank for the low-rank
 * methods; prec "float"|"int8"|"int4" quantizes a linear map's own weights, and for the low-rank
 * methods "float" or any weight format quantizes their factors (qs_corr_fit_lowrank); the
 * recovery is measured with the correction as applied; lambda < 0 = auto.
 * teacher (may be NULL): fit bias/linear toward that model's pre-activations at the same layer
 * instead of the float model's (a deliberately capacity-adding control). */
int qs_analysis_correct(struct qs_bench *b, int i, enum qs_corr_method m, int rank,
                        const char *prec, double lambda, const struct qs_mlp *teacher, qs_err *e);
void qs_analysis_uncorrect(struct qs_bench *b, int i);

/* The precision of a low-rank correction's factors: NULL or "float" (f->kind NONE: F32), or a
 * weight format name (int8, int4, fp8-e4m3, nf4, mxfp4, ...). 0, or -1 with a message. */
int qs_corr_prec_parse(const char *prec, struct qs_format *f, qs_err *e);

/* Fits a low-rank correction m (lowrank, lqer, qera, eora) of rank r to the weight error
 * ew = W - Q(W): (out, in), with x: (n, in) the layer's calibration inputs (lqer: their mean
 * absolute values; qera/eora: their autocorrelation, damp 0.01), into c (zeroed first; its c, l,
 * rt are malloc'd, free with qs_corr_clear): method, rank, prec, c, l, rt, params and bits.
 * prec float: F32 factors, 32 bits a parameter. Otherwise the factors are quantized per row
 * (qs_lowrank_quantize: l one scale per output channel, rt one per rank component), c = Q(l)
 * Q(rt) is what the forward pass adds, and bits = 8 x the packed bytes of both factors. The
 * same fit as `correct` and `allocate` use. */
int qs_corr_fit_lowrank(enum qs_corr_method m, const float *ew, int out, int in, const float *x,
                        int n, int r, const char *prec, struct qs_corr *c, qs_err *e);

/* A paired bootstrap interval of a mean difference. */
struct qs_interval {
    double mean, lo, hi;
};

struct qs_ablation {
    int layer;
    struct qs_metric f, q, qc, fc; /* float, quantized, quantized+corrected, float+corrected */
    struct qs_metric rand_ctrl;    /* quantized + a random correction of equal rank and norm */
    int have_other;                /* a same-shape layer's correction was applied as control */
    int other_layer;
    struct qs_metric other_ctrl;
    struct qs_interval d_qc;       /* per-sample loss(qc) - loss(q) */
    struct qs_interval d_fc;       /* per-sample loss(fc) - loss(f) */
    const char *verdict;           /* "recovery", "capacity", "no-gain", "harmful" */
};

/* Ablates layer i's correction (only that correction applied; others off). Noise: a paired
 * bootstrap (1000 resamples of the test split, seeded by the session seed) 95 % interval of
 * the per-sample loss difference. Verdict: capacity if the float model's loss drops beyond the
 * interval (hi < 0); otherwise recovery if the quantized model's loss drops beyond it
 * (d_qc.hi < 0); harmful if it rises beyond it (d_qc.lo > 0); else no-gain. */
int qs_analysis_ablate(struct qs_bench *b, int i, struct qs_ablation *ab, qs_err *e);

/* Helpers used by the commands and the TUI. */
long qs_corr_params(const struct qs_bench *b, int i);

#endif
