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
 * R_lin_q) >= 0.35 over its layers; refuted if median < 0.24 and Spearman < 0; else unclear. */
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
    char prec[8];            /* the map's weights: "int4" | "int8" | "float" */
    double top_frac;         /* correctability: share of directions (0.1) */
    qs_progress_fn progress; /* may be NULL */
    void *progress_ctx;
    _Atomic int *cancel; /* may be NULL */
};

struct qs_q1_layer {
    int setting; /* index into settings */
    int index;   /* layer index in its model */
    char name[64];
    int third; /* depth: 0 early, 1 mid, 2 late (floor(3 i / L)) */
    int d;     /* pre-activation width (out) */
    int in;    /* input width */
    double w_rel_err, preact_rel_mse;
    double correctability;
    double r_float, r_q;
    double lambda; /* the ridge lambda of both maps (fitted on the same data) */
    int rank_kept; /* eigen-directions of Y_q^T Y_q the maps keep (lowrank.h, rank cut) */
};

struct qs_q1_setting {
    char model[512], data[512];
    uint64_t seed;
    int nlayers, first; /* its layers are layers[first .. first + nlayers) */
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
    double pooled_spearman; /* Spearman(correctability, R_lin_q) over every layer */
    int nsupported, nrefuted, nunclear;
};

/* Runs the study. Errors name the model (and data) file. Free with qs_q1_free. */
int qs_study_q1(const struct qs_q1_opts *o, struct qs_q1 *q, qs_err *e);
void qs_q1_free(struct qs_q1 *q);

/* The verdict rule above; a NaN Spearman (constant values) gives "unclear". */
const char *qs_q1_verdict(double median_r_q, double spearman);

/* mean, median, share > 0 and share > 0.2 of v (n); NaN entries for n = 0. */
void qs_q1_stats_of(const double *v, int n, struct qs_q1_stats *s);

/* The data file of a model: data_meta (the model's "qscope.data") as given when readable, else
 * its file name beside the model or one folder up (datasets/models/x.safetensors ->
 * datasets/x.csv). 0, or -1 with a message. */
int qs_q1_data_path(const char *model, const char *data_meta, char *buf, size_t n, qs_err *e);

/* Writes PREFIX-layers.csv and PREFIX-settings.csv (libcsv quoting; a first "# qscope ..."
 * line names the study's options). 0, or -1 with a message naming the file. */
int qs_q1_write_csv(const struct qs_q1 *q, const struct qs_q1_opts *o, const char *prefix,
                    qs_err *e);

#endif
