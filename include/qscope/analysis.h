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
    double cosine;   /* cosine similarity of Y_q and Y_f (propagated) */
    double kl_alone; /* KL(p_f || p_q) on the test split with only this layer quantized */
    double kl_share; /* kl_alone / sum over layers */
    int has_attr;    /* weight+activation: the three local attributions below are set */
    double w_only, a_only, interaction; /* local relative MSE: weights only, activations only,
                                           and both minus the two */
};

/* Fills err[0..nlayers). The KL share costs one held-out run per quantized site (kept until the
 * site changes): QS_KL_AUTO computes it on MLPs, and on transformers while those runs stay
 * cheap (qs_analysis_kl_cost <= QS_KL_AUTO_MAX); otherwise kl_alone and kl_share are NaN.
 * qs_analysis_errors is qs_analysis_errors_ex with QS_KL_AUTO. */
enum qs_kl_mode { QS_KL_AUTO, QS_KL_ON, QS_KL_OFF };
#define QS_KL_AUTO_MAX 1e11
int qs_analysis_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e);
int qs_analysis_errors_ex(struct qs_bench *b, struct qs_layer_err *err, enum qs_kl_mode kl,
                          qs_err *e);
/* The KL share's cost on a transformer: parameters x held-out tokens x quantized sites whose run
 * is not kept (about the multiply-adds of those forwards, halved); 0 on an MLP. */
double qs_analysis_kl_cost(struct qs_bench *b);
/* A transformer's per-site sums behind `error` (QS_ERR_NSUMS doubles a site, errors.c: the
 * float and propagated norms and products, the local error and the attributions) of the sites
 * with want[i] set, streamed over the calibration windows into sum (nsites x QS_ERR_NSUMS,
 * the wanted sites' rows overwritten). paired 1: as `error` streams them, through
 * qs_bench_stream_pairs (0 returned), or qs_bench_stream when a block's kept activations
 * exceed act_budget (1 returned); paired 0: through qs_bench_stream with every float output
 * recomputed, the reference the tests hold the paired stream to (0 returned). -1 and e. */
#define QS_ERR_NSUMS 8
int qs_analysis_error_sums(struct qs_bench *b, const unsigned char *want, int paired, double *sum,
                           qs_err *e);

enum qs_spec_of { QS_SPEC_WEIGHT, QS_SPEC_PREACT };
enum qs_spec_scale { QS_SCALE_NONE, QS_SCALE_ACT, QS_SCALE_COV };

struct qs_spectrum {
    int layer;
    enum qs_spec_of of;
    enum qs_spec_scale scale;
    int m, n;                /* shape of the matrix whose values are taken */
    int nsv;                 /* values returned (k) */
    int exact;               /* LAPACK (1) or randomized range finder (0) */
    double *sv;              /* error singular values, descending (nsv) */
    double *ref_sv;          /* reference spectrum: of=weight the (scaled) W, of=preact Y_f (nsv) */
    struct qs_rank_stats st; /* of the error */
    /* of=weight with a weight-space correction C (lowrank, lqer, qera, eora) and QS_SPEC_RESID:
     * the residual W - (Q(W) + C) in the same view (scale=act|cov applied to it as to E) */
    int resid;                /* 1 computed; 0 no correction; -1 the correction acts on outputs
                                 (bias, linear, clocal) or of=preact: no weight residual */
    const char *resid_method; /* qs_corr_name of the layer's correction, NULL without one */
    double *res_sv;           /* residual singular values, descending (nsv) */
    struct qs_rank_stats res_st;
};

/* Flags of qs_analysis_spectrum_ex. */
enum {
    QS_SPEC_NULL = 1,  /* label against the variance-profile null (qs_null_edge: 5 seeded draws,
                          blocks from the layer's weight format; of=preact: per output channel) */
    QS_SPEC_RESID = 2, /* also the residual spectrum of a weight-space correction */
};

/* Computes the spectrum of layer `layer`'s error. k <= 0 means all min(m, n) values; large
 * matrices (min(m,n) > 512) with k < min(m,n)/4 use a randomized block Krylov method (within
 * 1 % of the exact top values on near-white error). Free with qs_spectrum_free. */
int qs_analysis_spectrum(struct qs_bench *b, int layer, enum qs_spec_of of,
                         enum qs_spec_scale scale, int k, struct qs_spectrum *sp, qs_err *e);
/* As qs_analysis_spectrum with QS_SPEC_* flags (qs_analysis_spectrum = flags 0: the values and
 * statistics only, labelled against the i.i.d. Marchenko-Pastur edge). */
int qs_analysis_spectrum_ex(struct qs_bench *b, int layer, enum qs_spec_of of,
                            enum qs_spec_scale scale, int k, int flags, struct qs_spectrum *sp,
                            qs_err *e);
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
/* The same fit from the inputs' moments (moments.h, finished; NULL for lowrank, which needs
 * none): qs_corr_fit_lowrank is this on the moments of x. */
struct qs_moments;
int qs_corr_fit_lowrank_m(enum qs_corr_method m, const float *ew, int out, int in,
                          const struct qs_moments *mo, int r, const char *prec, struct qs_corr *c,
                          qs_err *e);

/* The output-side fits of `correct`, family-independent (MLP layers and transformer sites):
 * yf, yq: (n, d) the float and quantized pre-activations of the calibration split.
 * qs_corr_fit_bias: c->db = mean over rows of yf - yq (double accumulation), params, bits; -1
 * only when out of memory. qs_corr_fit_linear: the ridge map from yq to yf (qs_ridge_map_info,
 * lambda < 0 = auto) into c->amap (A, (d, d) row-major: y' = y A^T + mb), c->mb, lambda,
 * rank_kept, params and bits; prec "int8"/"int4" quantizes A per output row (bits from the packed
 * bytes), NULL or "float" keeps it F32. c's arrays are malloc'd: free with qs_corr_clear. */
int qs_corr_fit_bias(const float *yf, const float *yq, int n, int d, struct qs_corr *c);
int qs_corr_fit_linear(const float *yq, const float *yf, int n, int d, double lambda,
                       const char *prec, struct qs_corr *c, qs_err *e);

/* A paired bootstrap interval of a mean difference. */
struct qs_interval {
    double mean, lo, hi;
};

struct qs_ablation {
    int layer;
    struct qs_metric f, q, qc, fc; /* float, quantized, quantized+corrected, float+corrected */
    struct qs_metric rand_ctrl;    /* quantized + a random correction of equal rank and norm */
    int have_other;                /* this correction was also applied at another site */
    int other_layer;               /* that site: a layer of the same shape, else -1 */
    struct qs_metric other_ctrl;   /* quantized + this correction at other_layer instead */
    /* task gains, each the mean per-sample loss without minus with (positive = it helps) */
    struct qs_interval g_q; /* on the quantized model (in the upstream state below) */
    struct qs_interval g_f; /* on the float model (no quantization, no other correction) */
    struct qs_interval g_r; /* of the random control on the quantized model */
    struct qs_interval g_o; /* of the other-layer control (valid when have_other) */
    int other_significant;  /* have_other and g_o.lo > 0 */
    uint64_t upstream;      /* earlier layers whose corrections were active in the
                               quantized runs: those in place when it was fitted */
    uint64_t upstream_gone; /* in place at the fit, removed since (low-rank methods only:
                               their fit depends on W, Q(W) and float inputs alone) */
    const char *verdict;    /* "harmful", "no-gain", "capacity", "recovery" */
};

/* The verdict rule, on 95 % intervals of the gains (first match wins):
 *   harmful   g_q.hi < 0                       (the quantized loss rises beyond noise)
 *   no-gain   g_q.lo <= 0 or g_q.mean <= g_r.hi (not beyond noise, or no better than the
 *                                                random control's interval reaches)
 *   capacity  g_f.lo > 0 and g_f.mean >= g_q.mean / 2 (the float model gains beyond noise,
 *                                                at least half as much as the quantized one)
 *   recovery  otherwise. */
const char *qs_ablation_verdict(const struct qs_interval *g_q, const struct qs_interval *g_f,
                                const struct qs_interval *g_r);

/* A random correction of c's kind with equal rank and Frobenius norm (each of c's terms: the
 * low-rank weight term, the bias term, the linear map's A - I and mb), seeded by seed, into r
 * (cleared first; free with qs_corr_clear, also after an error). -1: out of memory. */
int qs_corr_random_like(const struct qs_corr *c, int out, int in, uint64_t seed, struct qs_corr *r);

/* The pre-activations of site i on split sp along the float (quant 0) or the quantized path
 * (its own correction applied, as the model computes it), from the cached inputs: *y (n, out)
 * newly allocated (the caller frees). */
int qs_bench_preact(struct qs_bench *b, enum qs_split_id sp, int quant, int i, float **y, int *n,
                    qs_err *e);

/* Ablates layer i's correction. The quantized runs (without it, with it, the controls) keep
 * the earlier layers' corrections that were in place when it was fitted and still are (the
 * state it was fitted in); later layers' corrections are off. The float runs have no other
 * correction. A bias/linear correction flagged stale (its fit state is gone) is refused. Noise:
 * a paired bootstrap (1000 resamples of the test split, seeded by the session seed) 95 %
 * interval of each mean per-sample loss change. Controls: a random correction of equal rank
 * and norm at the same site (g_r), and the same correction at the first other layer of the
 * same shape whose correction is not part of the upstream state (g_o). Verdict:
 * qs_ablation_verdict. Every family: a transformer's sample is a held-out window (its tokens
 * share their context, so resampling tokens would make the intervals too narrow) and its loss
 * is eval's, bit for bit (acc NAN: report exp(loss)). */
int qs_analysis_ablate(struct qs_bench *b, int i, struct qs_ablation *ab, qs_err *e);

/* Helpers used by the commands and the TUI. */
long qs_corr_params(const struct qs_bench *b, int i);

#endif
