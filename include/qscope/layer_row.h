/* layer_row.h - one row of the layers table, as the `layers` command and the TUI's Layers pane
 * show it: the unit's name and shape, its formats, bits per weight, weight error, sensitivity
 * and correction, read out of the bench once so that both render the same values. */
#ifndef QSCOPE_LAYER_ROW_H
#define QSCOPE_LAYER_ROW_H

#include "qscope/bench.h"

struct qs_layer_row {
    const char *name; /* borrowed from the bench (valid while the model stays) */
    int out, in;
    char shape[32];      /* "OUTxIN" */
    char act[16];        /* an MLP layer's activation, "-" for a transformer's site */
    char wf[48], af[48]; /* qs_bench_wdesc / qs_bench_adesc: "int4/channel", "float" */
    /* the structured configuration behind wf and af (for keys that change it) */
    struct qs_format wfmt, afmt;
    struct qs_qopts wopt, aopt;
    enum qs_amode amode;
    int quantized;        /* weights or activations quantized */
    double a_static_amax; /* > 0 once calibrated (static activation scales), else 0 */
    double bpw;           /* packed bits per weight of the weight alone (32 in float) */
    double bytes;         /* packed bytes (4 per weight in float) */
    double w_rel_err;
    int sens_known; /* the last `sensitivity` under the current format */
    double sens;
    char sens_method[16];
    /* correction (method QS_CORR_NONE when none) */
    enum qs_corr_method corr_method;
    int corr_rank;
    char corr_prec[32];
    double corr_bpw; /* the correction's bits per weight of the layer */
    double corr_bits, recovery, recovery_calib;
    long corr_params;
    int corr_stale;
    char corr_short[48]; /* "-", "lowrank r=4", "bias" */
    char corr_long[128]; /* `layers`' cell: "lowrank r=4 prec=int8 +0.125 b/w (stale: refit)" */
    /* the correction's last `ablate` (abl_verdict NULL: none since its fit): the task metric of
     * the float, quantized, quantized+corrected and float+corrected runs, in that order:
     * accuracy, or on a transformer (abl_ppl) perplexity */
    const char *abl_verdict;
    int abl_ppl;
    double abl_metric[4];
};

/* Fills r with unit i of the bench's model (0 <= i < qs_bench_nunits(b)). */
void qs_layer_row_fill(const struct qs_bench *b, int i, struct qs_layer_row *r);
/* The row a transformer's site named name, (out, in), has once loaded and before any command
 * changes it (a fresh bench's state): for showing a model whose weights are still loading
 * (qs_lm_peek). name is borrowed. */
void qs_layer_row_plain(const char *name, int out, int in, struct qs_layer_row *r);

#endif
