/* study.h - the Q1 study (REFERENCES.md "The Q1 study"): across models and seeds, can a linear
 * map recover a layer's quantized pre-activations, and does that survive quantizing the map?
 *
 * Per setting (model x seed) and per layer i, on a bench of its own (the caller's bench is never
 * touched):
 * - the model's weights are quantized with one format (default int3 per tensor);
 * - R_lin_float / R_lin_q: recovery (held-out) of the ridge map from quantized to float
 *   pre-activations, with the map in float / with its weights quantized (prec, default int4);
 *   each fitted with no other correction in place; lambda and the rank kept by the map's rank
 *   cut (lowrank.h) are recorded;
 * - correctability: the share of the propagated pre-activation error energy (calibration split)
 *   in its top ceil(top_frac * d) singular directions, 1 - left[ceil(top_frac * d)], d = out_i
 *   (qscope's definition; the report gave none).
 * The seed re-draws which of the model's held-out samples (those outside its own training split,
 * read from the model's metadata) are calibration and which are test, keeping the sizes, so test
 * samples are never training samples.
 * Verdict per setting: supported if median(R_lin_q) >= 0.35 and Spearman(correctability,
 * R_lin_q) >= 0.35 over its Q1 layers; refuted if median < 0.24 and Spearman < 0; else unclear.
 * Settings whose model fails the task-learned gate are reported and flagged, and excluded from
 * the verdict counts and the aggregates (counted apart).
 *
 * Q1 layers. An MLP: every layer. A transformer block: the pre-activations of each sub-layer's
 * input projection, the tensors that feed a nonlinearity: attention = the QKV projection
 * (GPT-2 attn.c_attn; LLaMA family self_attn.q_proj, k_proj, v_proj taken together as one layer,
 * their outputs concatenated: d = out_q + out_k + out_v), FFN = the up projection (GPT-2
 * mlp.c_fc; LLaMA mlp.gate_proj and up_proj together). A grouped layer's maps, spectrum and
 * errors are those of the concatenated pre-activations (one ridge map of d x d). The other sites
 * (attention output, FFN down projection, the head) are measured the same way and reported per
 * site, but are not Q1 layers: not in the setting's medians, Spearman or the aggregates. Depth
 * third of a transformer layer: floor(3 block / n_layer) (the head: late). */
#ifndef QSCOPE_STUDY_H
#define QSCOPE_STUDY_H

#include "qscope/bench.h"
#include "qscope/format.h"

/* The report's aggregates, printed for comparison. */
#define QS_Q1_REPORT_R_FLOAT_MEDIAN 0.348
#define QS_Q1_REPORT_R_Q4_MEDIAN (-0.069)
#define QS_Q1_REPORT_R_Q4_POS 0.37
#define QS_Q1_REPORT_DEPTH_EARLY (-0.29)
#define QS_Q1_REPORT_DEPTH_MID 0.007
#define QS_Q1_REPORT_DEPTH_LATE 0.204
#define QS_Q1_REPORT_NLAYERS 156

struct qs_q1_opts {
    const char *const *models; /* model paths; "MODEL:DATA.csv" names the data explicitly */
    int nmodels;
    const uint64_t *seeds;
    int nseeds;
    struct qs_format fmt; /* weight format of every layer */
    struct qs_qopts opt;
    /* transformers' weight format when not NULL (the command's default when format= is not
     * given: int4 per channel, symmetric); NULL: fmt/opt for every model */
    const struct qs_format *lm_fmt;
    const struct qs_qopts *lm_opt;
    char prec[8];            /* the map's weights: "int4" | "int8" | "float" */
    double top_frac;         /* correctability: share of directions (0.1) */
    long calib_tokens;       /* transformers' calibration budget in tokens, as `set calib
                              * tokens=N` (0: the bench's default, 8 windows) */
    qs_progress_fn progress; /* may be NULL */
    void *progress_ctx;
    _Atomic int *cancel; /* may be NULL */
};

/* What a row of the layer table is. */
enum qs_q1_kind {
    QS_Q1_MLP,  /* an MLP layer (a Q1 layer) */
    QS_Q1_ATTN, /* a transformer's QKV projection (a Q1 layer) */
    QS_Q1_FFN,  /* a transformer's up (gate + up) projection (a Q1 layer) */
    QS_Q1_SITE  /* another transformer site: reported, not in the aggregates */
};
const char *qs_q1_kind_name(enum qs_q1_kind k); /* "mlp", "attention", "ffn", "other" */

struct qs_q1_layer {
    int setting; /* index into settings */
    int index;   /* layer index in its model (a group: its first site) */
    char name[96];
    enum qs_q1_kind kind;
    int nsites; /* sites concatenated (LLaMA q|k|v: 3, gate|up: 2; else 1) */
    int block;  /* transformer block (the head: n_layer); an MLP: the layer index */
    int third;  /* depth: 0 early, 1 mid, 2 late (MLP floor(3 i / L); transformer by block) */
    int d;      /* pre-activation width (out) */
    int in;     /* input width */
    double w_rel_err, preact_rel_mse;
    double correctability;
    double r_float, r_q;
    double lambda; /* the ridge lambda of both maps (fitted on the same data) */
    int rank_kept; /* eigen-directions of Y_q^T Y_q the maps keep (lowrank.h, rank cut) */
};

struct qs_q1_setting {
    char model[512], data[512];
    uint64_t seed;
    int nlayers, first; /* its rows are layers[first .. first + nlayers) */
    int nq1;            /* of which Q1 layers (an MLP: all) */
    int lm;             /* a transformer */
    char arch[16];      /* "mlp", or the transformer's model_type */
    char format[16];    /* its weight format and options, as used */
    char options[200];
    double float_acc, quant_acc, bits_per_weight;
    int gate_pass;
    double med_r_float, med_r_q, spearman;
    const char *verdict; /* "supported", "refuted", "unclear" */
};

struct qs_q1_stats {
    int n;
    double mean, median, pos_frac, frac_gt_02;
};

struct qs_q1 {
    struct qs_q1_setting *settings;
    int nsettings;
    struct qs_q1_layer *layers;
    int nlayers;
    struct qs_q1_stats r_float, r_q;
    double depth_q[3], depth_float[3]; /* medians by depth third (NaN when empty) */
    int depth_n[3];
    /* sub-layer profile of transformers' Q1 layers: [0] attention, [1] FFN */
    struct qs_q1_stats sub_q[2], sub_float[2];
    double pooled_spearman;             /* Spearman(correctability, R_lin_q) over the Q1 layers */
    double pooled_spearman_float;       /* Spearman(correctability, R_lin_float) */
    int nsupported, nrefuted, nunclear; /* gate-passing settings only */
    int nexcluded;                      /* settings failing the gate: excluded from the above */
    int nlm;                            /* transformer settings */
};

/* Runs the study. Errors name the model (and data) file. Free with qs_q1_free. */
int qs_study_q1(const struct qs_q1_opts *o, struct qs_q1 *q, qs_err *e);
void qs_q1_free(struct qs_q1 *q);

/* The aggregates of q (r_float, r_q, depth and sub-layer profiles, pooled Spearman, verdict
 * counts) from its settings and layer rows, as qs_study_q1 computes them: `study merge` calls it
 * on rows read back from per-setting records, so a merged study gives the same figures bit for
 * bit. 0, or -1 (out of memory). */
int qs_q1_aggregate(struct qs_q1 *q, qs_err *e);

/* The model and data files of one setting argument ("MODEL" or "MODEL:DATA"), named as the
 * study's results name them (bundled files as datasets/...), found by opening them as the study
 * does (so a bad model or data file fails here). 0, or -1 with a message. */
int qs_q1_setting_files(const struct qs_q1_opts *o, const char *arg, char *model, size_t nm,
                        char *data, size_t nd, qs_err *e);

/* One setting's bench, as the study opens it (shared with study q2, q2.h): model and data of
 * ARG ("MODEL" or "MODEL:DATA"; the names as written into model / data), weights quantized by
 * o's format (transformers: o->lm_fmt when set), session seed SEED; an MLP's held-out samples
 * re-drawn into calibration and test by SEED (never its training samples). Free with
 * qs_bench_free. 0, or -1 with a message naming the model. */
int qs_study_open(const struct qs_q1_opts *o, const char *arg, uint64_t seed, struct qs_bench **out,
                  char *model, size_t nm, char *data, size_t nd, qs_err *e);

/* A setting's arch ("mlp", or the transformer's model_type), weight format and its options, as
 * the study opened its bench b with o (o->lm_fmt for a transformer when set). Shared with q2. */
void qs_study_setting_words(const struct qs_q1_opts *o, const struct qs_bench *b, char arch[16],
                            char format[16], char options[200]);

/* The verdict rule above; a NaN Spearman (constant values) gives "unclear". */
const char *qs_q1_verdict(double median_r_q, double spearman);

/* mean, median, share > 0 and share > 0.2 of v (n); NaN entries for n = 0. */
void qs_q1_stats_of(const double *v, int n, struct qs_q1_stats *s);

/* The data file of a model: data_meta (the model's "qscope.data") as given when readable, else
 * its file name beside the model or one folder up (datasets/models/x.safetensors ->
 * datasets/x.csv). 0, or -1 with a message. */
int qs_q1_data_path(const char *model, const char *data_meta, char *buf, size_t n, qs_err *e);

/* Writes PREFIX-layers.csv, PREFIX-settings.csv and PREFIX-master_summary.csv (one row per
 * setting: its verdict, gate, counts and its Q1 layers' aggregates) (libcsv quoting; a first
 * "# qscope ..." line names the study's options). 0, or -1 with a message naming the file. */
/* Opens PREFIX-WHAT.csv through qs_outfile (a device is written in place, a regular file
 * replaced only once complete) and writes its first line, a raw comment CSV readers skip
 * (pandas: comment='#'): "# qscope VERSION study STUDY WHAT: HEAD". NULL and e on failure.
 * Both studies' CSV files open through it. */
FILE *qs_study_open_csv(qs_outfile *of, const char *prefix, const char *what, const char *study,
                        const char *head, qs_err *e);
int qs_q1_write_csv(const struct qs_q1 *q, const struct qs_q1_opts *o, const char *prefix,
                    qs_err *e);
/* The columns both studies' master_summary rows begin with, a setting's identity: model, data,
 * seed, arch, format, options, gate (pass|fail), excluded (1 when the gate failed); the header
 * names them (first fields of their lines). */
void qs_study_csv_setting_header(FILE *f);
void qs_study_csv_setting(FILE *f, const char *model, const char *data, uint64_t seed,
                          const char *arch, const char *format, const char *options, int gate_pass);

#endif
