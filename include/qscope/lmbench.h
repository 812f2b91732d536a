/* lmbench.h - transformers on the bench (see bench.h): the token split, calibration activations
 * of the linear sites, evaluation and per-site error statistics.
 *
 * Split of the token stream: the last 10 % is held out for evaluation; calibration uses the
 * first `set calib N` windows of ctx tokens of the rest (default 8). */
#ifndef QSCOPE_LMBENCH_H
#define QSCOPE_LMBENCH_H

#include "qscope/analysis.h"
#include "qscope/bench.h"

/* Checks that a transformer and its token data are loaded and fit (vocabulary, length). */
int qs_bench_lm_ready(struct qs_bench *b, qs_err *e);
void qs_bench_lm_split(const struct qs_bench *b, size_t *test_off, int *calib_windows);
/* Drops the calibration activations (model, data or calib size changed) / marks the quantized
 * path's stale (a rule changed). */
void qs_bench_lm_drop(struct qs_bench *b);
void qs_bench_lm_invalidate(struct qs_bench *b);
/* Float vs quantized on the held-out tokens (at most max_windows windows, 0 = all). */
int qs_bench_lm_eval(struct qs_bench *b, int max_windows, struct qs_lm_eval *ev, qs_err *e);
/* Mean next-token loss on all held-out windows (as qs_bench_lm_eval) with only site `site`
 * quantized, its weight and activation as the rules resolve them and without its correction,
 * every other site float; site = -1: the float model. ntok: the predicted positions. The
 * transformer's qs_unit_loss_fn for sensitivity's delta. */
int qs_bench_lm_loss_only(struct qs_bench *b, int site, double *loss, long *ntok, qs_err *e);
/* Ablates site s's correction by the rule of qs_analysis_ablate (qs_ablate_runs), on all
 * held-out windows as `eval` evaluates them; a sample is one predicted token, so the metrics'
 * loss is eval's loss bit for bit (acc is NAN: report the perplexity exp(loss)). */
int qs_bench_lm_ablate(struct qs_bench *b, int s, struct qs_ablation *ab, qs_err *e);
/* Per-site error statistics on the calibration windows: w_rel_err, local and propagated
 * pre-activation relative MSE and SNR, cosine (kl fields unset). err: nsites entries. */
int qs_bench_lm_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e);
/* Fits a correction of site s from the calibration windows and judges it on held-out windows:
 * R from the quantized model's own inputs (propagated), as for MLPs. Low-rank (lowrank, lqer,
 * qera, eora; rank, prec float only) on the weight error; bias and linear (prec float, int8 or
 * int4; lambda < 0 = auto) on the site's output, applied by the quantized forward's output hook;
 * clocal fitted and judged on the held-out windows from float inputs, never applied. Linear maps
 * are refused on sites with more than 4096 outputs. */
int qs_bench_lm_correct(struct qs_bench *b, int s, enum qs_corr_method m, int rank,
                        const char *prec, double lambda, qs_err *e);
/* 1 when qs_bench_lm_correct fits method m; front ends offer only these on transformers. */
int qs_lm_corr_supported(enum qs_corr_method m);
/* The propagated pre-activation error of site s on the calibration windows: err = Y_q - Y_f and
 * ref = Y_f, both (n, out), newly allocated (the caller frees). */
int qs_bench_lm_preact_err(struct qs_bench *b, int s, float **err, float **ref, int *n, qs_err *e);
/* The float model's calibration inputs of a site: x (n, in). */
int qs_bench_lm_inputs(struct qs_bench *b, int site, const float **x, int *n, qs_err *e);

/* The task-learned gate for language models: the float model's held-out loss must be below the
 * unigram entropy of the held-out tokens by the share b->gate_lm of it (a model that learned
 * only token frequencies scores that entropy). Cached until the model or data change. */
struct qs_lm_gate {
    double float_loss, unigram, threshold;
    int pass;
};
int qs_bench_lm_gate(struct qs_bench *b, struct qs_lm_gate *g, qs_err *e);

#endif
