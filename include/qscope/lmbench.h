/* lmbench.h - what is a transformer's own on the bench (see bench.h): the split of its token
 * stream and the task-learned gate. Every analysis runs through the one core (bench.h,
 * analysis.h) on every family.
 *
 * Split of the token stream: the last 10 % is held out for evaluation (every whole window of it);
 * calibration uses the first `set calib N` windows of ctx tokens of the rest (default 8). */
#ifndef QSCOPE_LMBENCH_H
#define QSCOPE_LMBENCH_H

#include "qscope/analysis.h"
#include "qscope/bench.h"

/* Checks that a transformer and its token data are loaded and fit (vocabulary, length). */
int qs_bench_lm_ready(struct qs_bench *b, qs_err *e);
void qs_bench_lm_split(const struct qs_bench *b, size_t *test_off, int *calib_windows);
/* Drops the activation caches and the float metrics (model, data or calib size changed). */
void qs_bench_lm_drop(struct qs_bench *b);

/* The task-learned gate for language models: the float model's held-out loss must be below the
 * unigram entropy of the held-out tokens by the share b->gate_lm of it (a model that learned
 * only token frequencies scores that entropy). Cached until the model or data change. */
struct qs_lm_gate {
    double float_loss, unigram, threshold;
    int pass;
};
int qs_bench_lm_gate(struct qs_bench *b, struct qs_lm_gate *g, qs_err *e);

#endif
