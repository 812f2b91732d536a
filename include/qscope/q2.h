/* q2.h - the Q2 study (REFERENCES.md "The Q2 study"): does quantization-time statistics of a
 * site carry correction signal beyond the site's identity?
 *
 * Per setting (model x seed), on a bench of its own (qs_study_open, as study q1 opens it; the
 * caller's bench is never touched), weights quantized with one format (MLP default int3 per
 * tensor, transformer default int4 per channel, as study q1), every linear site s of the model
 * (MLP layers; every transformer site, the head included) gives elements
 *     (s, row r, output channel j):  u = (Y_q)_rj / r_s,  t = (Y_f - Y_q)_rj / r_s,
 * Y_f, Y_q the float and quantized paths' pre-activations (propagated, no correction in place),
 * r_s = the RMS of site s's Y_q on the calibration split (every variant is given it: the
 * corrector works in units of each site's own output scale, so sites of any scale share it).
 *
 * The corrector (one network shared by every site and channel of the model) predicts t from
 *     x = [u, log10 ||E_j||, log10 s_j, log10 ||W_j||, cond]
 * with E = W - Q(W), s_j the RMS of row j's quantization scales, each input column standardised
 * (mean, sd of the fitting sample; the channel columns over every channel of every site), t
 * standardised likewise, and cond one of:
 *   embedding_only           a learned embedding of the site's index (8) and kind (4)
 *   features_only            the site's QS_Q2_NFEAT quantization-time statistics (standardised
 *                            over the model's sites; qs_q2_feature_name)
 *   features_plus_embedding  both.
 * Network: d_in -> 32 tanh -> 32 tanh -> 1 (weights Glorot-uniform, biases 0, embeddings
 * N(0, 0.1^2), seeded), Adam (lr 2e-3, betas 0.9/0.999, eps 1e-8), batches of 256, a fixed
 * number of epochs (8) over n_fit elements drawn uniformly (with replacement) from the
 * calibration split, an equal share per site; seeded by the setting's seed. The batch forward
 * and backward are OpenBLAS SGEMMs over fixed shapes, every other sum in a fixed order: the
 * result is a function of the inputs, the seed and the BLAS thread count.
 *
 * Judged on the held-out split: mse_* = mean (t - t_hat)^2 over n_eval held-out elements drawn
 * the same way (mse_none: of t_hat = 0); loss_gain_* = loss(quantized) - loss(quantized with the
 * corrector applied at every site, on its own corrected path), both the task loss on the whole
 * held-out split (a transformer: eval's held-out windows).
 * Verdict: qs_q2_verdict. A negative loss_gain of a variant is the instability mode the
 * overnight report saw (the corrector, fitted on the uncorrected path, drifts once its own
 * corrections feed the later sites): flagged per setting. */
#ifndef QSCOPE_Q2_H
#define QSCOPE_Q2_H

#include "qscope/bench.h"
#include "qscope/format.h"
#include "qscope/study.h"

/* The report's outcome, printed for comparison (REFERENCES.md). */
#define QS_Q2_REPORT_SETTINGS 18
#define QS_Q2_REPORT_SUPPORTED 17
#define QS_Q2_REPORT_UNCLEAR 1
#define QS_Q2_REPORT_IMPR_MEAN 0.304
#define QS_Q2_REPORT_IMPR_MIN 0.223
#define QS_Q2_REPORT_IMPR_MAX 0.425
#define QS_Q2_REPORT_GAIN_EMB 0.655
#define QS_Q2_REPORT_GAIN_FEAT 0.750
#define QS_Q2_REPORT_GAIN_BOTH 0.758

enum qs_q2_variant { QS_Q2_EMB, QS_Q2_FEAT, QS_Q2_BOTH, QS_Q2_NVAR };
/* "embedding_only", "features_only", "features_plus_embedding" */
const char *qs_q2_variant_name(enum qs_q2_variant v);

/* Site features (features_only), in this order:
 *  0 w_rel_err     log10 ||W - Q(W)||_F / ||W||_F
 *  1 snr           SNR of the propagated pre-activation error (calibration), dB / 10
 *  2 err_rms       log10 RMS of Y_q - Y_f (calibration): the error's magnitude
 *  3 top_over_edge top singular value of E over the edge of its quantizer-matched noise null
 *                  (qs_null_edge, 5 draws)
 *  4 stable_rank   stable rank of E / min(out, in)
 *  5 k90           k90 of E / min(out, in)
 *  6 scale_mean    log10 mean of the site's quantization scales
 *  7 scale_cv      their coefficient of variation (sd / mean)
 *  8 in_absmax     log10 absmax of the site's float inputs (calibration)
 *  9 in_rms        log10 RMS of the site's float inputs (calibration) */
#define QS_Q2_NFEAT 10
const char *qs_q2_feature_name(int k);

#define QS_Q2_EMB_SITE 8 /* embedding widths */
#define QS_Q2_EMB_KIND 4
#define QS_Q2_NCHAN 4 /* element inputs: u and the three channel statistics */

/* ---- the corrector ---------------------------------------------------------------------- */

struct qs_q2_net {
    enum qs_q2_variant var;
    int hidden;         /* H */
    int nsites, nkinds; /* embedding tables' rows */
    int nfeat;          /* QS_Q2_NFEAT */
    int d_in;           /* QS_Q2_NCHAN + the conditioning width */
    int np;             /* parameters */
    float *p;           /* all parameters, in this order: */
    float *w1, *b1;     /*   (H, d_in), (H) */
    float *w2, *b2;     /*   (H, H), (H) */
    float *w3, *b3;     /*   (H), (1) */
    float *es, *ek;     /*   (nsites, QS_Q2_EMB_SITE), (nkinds, QS_Q2_EMB_KIND); unused: size 0 */
};

/* The conditioning tables of a model's sites (shared by the net's inputs): kind[s] in
 * [0, nkinds), feat (nsites, nfeat) standardised. */
struct qs_q2_sites {
    int nsites, nkinds;
    const int *kind;
    const float *feat;
};

/* Allocates the net for variant var with H hidden units, initialised from seed (Glorot-uniform
 * weights, zero biases, N(0, 0.1^2) embeddings). Free with qs_q2_net_free (NULL ok). */
int qs_q2_net_init(struct qs_q2_net *n, enum qs_q2_variant var, int hidden, int nsites, int nkinds,
                   int nfeat, uint64_t seed, qs_err *e);
void qs_q2_net_free(struct qs_q2_net *n);

/* Builds the net's input rows a: (m, d_in) from element inputs x: (m, QS_Q2_NCHAN) and their
 * sites (site[i] in [0, nsites)). */
void qs_q2_net_inputs(const struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                      const int *site, int m, float *a);

/* The net's output on m rows of inputs a: (m, d_in) into y (m). ws: workspace of at least
 * qs_q2_net_ws(n, m) floats. */
size_t qs_q2_net_ws(const struct qs_q2_net *n, int m);
void qs_q2_net_forward(const struct qs_q2_net *n, const float *a, int m, float *y, float *ws);

/* Mean squared error of the net on m elements (x, site, target t) and its gradient with respect
 * to every parameter into g (np floats, overwritten; embedding rows of sites not in the batch
 * get 0). Returns the loss. */
double qs_q2_net_grad(const struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                      const int *site, const float *t, int m, float *g, float *ws);

/* Fits the net on m elements with Adam: epochs passes over a seeded shuffle, batches of batch
 * (the last batch of a pass may be shorter). progress (may be NULL) is called per epoch;
 * cancel (may be NULL) is polled per epoch. The final training loss into *loss (may be NULL). */
int qs_q2_net_fit(struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                  const int *site, const float *t, int m, int epochs, int batch, double lr,
                  uint64_t seed, _Atomic int *cancel, double *loss, qs_err *e);

/* ---- the study ------------------------------------------------------------------------------ */

struct qs_q2_opts {
    const char *const *models; /* "MODEL" or "MODEL:DATA" as study q1 */
    int nmodels;
    const uint64_t *seeds;
    int nseeds;
    struct qs_format fmt; /* weight format (MLPs; transformers too when lm_fmt is NULL) */
    struct qs_qopts opt;
    const struct qs_format *lm_fmt; /* transformers' format when not NULL (study q1's default) */
    const struct qs_qopts *lm_opt;
    int n_fit, n_eval;         /* elements drawn for fitting / judging (65536 each) */
    int epochs, batch, hidden; /* 8, 256, 32 */
    double lr;                 /* 2e-3 */
    long heldout_tokens;       /* transformers: the held-out losses (quant_loss, loss_corr) over
                                  the first max(1, N / ctx) held-out windows (0: the whole split);
                                  the gate and float_loss stay on the whole split */
    qs_progress_fn progress;   /* may be NULL */
    void *progress_ctx;
    _Atomic int *cancel; /* may be NULL */
};
/* Fills o's corrector and sampling defaults (the rest zeroed). */
void qs_q2_opts_default(struct qs_q2_opts *o);

/* One site of a setting: its conditioning and its held-out MSE per variant. */
struct qs_q2_site {
    char name[96];
    int index, kind, in, out;
    double rms;               /* r_s */
    double feat[QS_Q2_NFEAT]; /* raw (before standardising) */
    double mse_none;          /* held-out, its share of the sample */
    double mse[QS_Q2_NVAR];
};

/* One setting's record: everything its report row and the aggregates need. */
struct qs_q2_setting {
    char model[512], data[512];
    uint64_t seed;
    char arch[16], format[16], options[200];
    int lm, nsites, gate_pass;
    double float_loss, quant_loss, float_acc, quant_acc, bits_per_weight;
    int n_fit, n_eval;
    double mse_none;             /* held-out MSE of no correction (t_hat = 0) */
    double mse[QS_Q2_NVAR];      /* held-out correction MSE per variant */
    double fit_loss[QS_Q2_NVAR]; /* final training loss (standardised units) */
    double loss_corr[QS_Q2_NVAR];
    double loss_gain[QS_Q2_NVAR]; /* quant_loss - loss_corr */
    double improvement; /* (mse_embedding_only - mse_features_only) / mse_embedding_only */
    int unstable;       /* some variant's loss_gain < 0 (bit v: variant v) */
    const char *verdict;
    struct qs_q2_site *sites; /* nsites, owned (qs_q2_setting_clear) */
};
void qs_q2_setting_clear(struct qs_q2_setting *s);

/* The study q1 options a q2 setting's bench is opened with (qs_study_open): o's weight formats,
 * the rest zeroed. */
void qs_q2_bench_opts(const struct qs_q2_opts *o, struct qs_q1_opts *q1);

/* Runs one setting (model ARG, split seed SEED) into *s. 0, or -1 with a message naming the
 * model. */
int qs_q2_run_setting(const struct qs_q2_opts *o, const char *arg, uint64_t seed,
                      struct qs_q2_setting *s, qs_err *e);

/* The verdict: supported if (mse_emb - mse_feat) / mse_emb >= 0.15 and the best of
 * gain[QS_Q2_FEAT], gain[QS_Q2_BOTH] >= 0.0100; refuted if mse_feat > mse_emb and no gain is
 * > 0; unclear otherwise (NaN anywhere: unclear). */
const char *qs_q2_verdict(double mse_emb, double mse_feat, const double gain[QS_Q2_NVAR]);

/* The report's aggregates: a pure function of the records (settings failing the gate are
 * counted apart and excluded). */
struct qs_q2_summary {
    int nsettings, nsupported, nrefuted, nunclear, nexcluded, nunstable, nlm;
    double impr_mean, impr_min, impr_max; /* features_only vs embedding_only, MSE */
    double gain_mean[QS_Q2_NVAR];
    double mse_mean[QS_Q2_NVAR], mse_none_mean;
    int unstable_var[QS_Q2_NVAR]; /* settings with that variant's loss_gain < 0 */
};
void qs_q2_summarize(const struct qs_q2_setting *s, int n, struct qs_q2_summary *out);

struct qs_q2 {
    struct qs_q2_setting *settings;
    int nsettings;
    struct qs_q2_summary sum;
};
/* Runs every (model, seed) setting in order and summarises (qs_q2_aggregate). Free with
 * qs_q2_free. */
int qs_study_q2(const struct qs_q2_opts *o, struct qs_q2 *q, qs_err *e);
/* q->sum from q's settings: the one aggregation of the in-process study and of `study merge`,
 * which reads the settings back from per-setting records (study_record.h, %.17g), so that both
 * give the same figures bit for bit. */
void qs_q2_aggregate(struct qs_q2 *q);
void qs_q2_free(struct qs_q2 *q);

/* Writes PREFIX-master_summary.csv (one row per setting) and PREFIX-sites.csv (one row per
 * site: features and held-out MSE per variant), a first "# qscope ... study q2" line naming the
 * corrector. 0, or -1 with a message naming the file. */
int qs_q2_write_csv(const struct qs_q2_setting *s, int n, const struct qs_q2_opts *o,
                    const char *prefix, qs_err *e);

#endif
