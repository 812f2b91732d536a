/* lmbench.c - what is a transformer's own on the bench: the split of its token stream, the check
 * that model and tokens fit, and the task-learned gate. Everything else (caches, corrections,
 * evaluation, ablation) is the one core's (forward.c; errors.c, correct.c, ablate.c). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lmbench.h"

void qs_bench_lm_drop(struct qs_bench *b)
{
    qs_bench_caches_free(b);
    free(b->head_gram);
    b->head_gram = NULL;
    b->lm_float_valid = 0;
    /* static activation scales were calibrated on the dropped calibration inputs (model, token
     * data or calibration size changed): calibrate again from the new ones */
    for (int s = 0; b->lm && b->ls && s < b->lm->nsites; s++)
        b->ls[s].a_static_amax = 0.0f;
}

/* The split of the token stream: the last 10 % is held out (test); calibration windows are the
 * first ones of the rest (calib_n windows, default 8). */
void qs_bench_lm_split(const struct qs_bench *b, size_t *test_off, int *calib_windows)
{
    size_t n = b->tokens->n;
    *test_off = n - n / 10;
    /* calibration windows are inputs only (no targets): tokens [w ctx, (w + 1) ctx) */
    int ctx = b->lm->ctx, avail = (int)(*test_off / (size_t)ctx);
    int want = b->calib_n > 0 ? b->calib_n : 8;
    *calib_windows = want < avail ? want : avail;
}

int qs_bench_lm_ready(struct qs_bench *b, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "no transformer loaded (load model DIR)");
    if (!b->tokens)
        return qs_errf(e, "no token data loaded (load data PATH.txt|.bin)");
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    if (cw < 1 || b->tokens->n - off < (size_t)b->lm->ctx + 1)
        return qs_errf(e, "%s: %zu tokens are too few for windows of %d (need %zu)",
                       b->tokens->path ? b->tokens->path : "tokens", b->tokens->n, b->lm->ctx,
                       10 * ((size_t)b->lm->ctx + 1) + 1); /* size_t: ctx comes from a file */
    for (size_t i = 0; i < b->tokens->n; i++)
        if (b->tokens->ids[i] >= (uint32_t)b->lm->vocab)
            return qs_errf(e, "%s: token %u at %zu is outside the model's vocabulary (%d)",
                           b->tokens->path ? b->tokens->path : "tokens", b->tokens->ids[i], i,
                           b->lm->vocab);
    return 0;
}

/* Entropy (nats) of the held-out tokens' own unigram distribution: the loss of a model that
 * learned byte (token) frequencies and nothing else. */
static double unigram_entropy(const uint32_t *t, size_t n, int vocab)
{
    double *cnt = qs_calloc((size_t)vocab, sizeof *cnt), h = 0.0;
    if (!cnt || !n) {
        free(cnt);
        return 0.0;
    }
    for (size_t i = 0; i < n; i++)
        cnt[t[i]] += 1.0;
    for (int v = 0; v < vocab; v++)
        if (cnt[v] > 0) {
            double p = cnt[v] / (double)n;
            h -= p * log(p);
        }
    free(cnt);
    return h;
}

int qs_bench_lm_gate(struct qs_bench *b, struct qs_lm_gate *g, qs_err *e)
{
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    if (!b->lm_float_valid) {
        size_t off;
        int cw;
        qs_bench_lm_split(b, &off, &cw);
        struct qs_lm_eval ev;
        struct qs_lm_progress pr = {b->progress, b->progress_ctx, "float model", &b->cancel};
        if (qs_lm_evaluate_progress(b->lm, b->tokens->ids + off, b->tokens->n - off, 0, NULL, NULL,
                                    &ev, &pr, e) < 0)
            return -1;
        b->lm_float_loss = ev.loss;
        b->lm_unigram = unigram_entropy(b->tokens->ids + off, b->tokens->n - off, b->lm->vocab);
        b->lm_float_valid = 1;
    }
    g->float_loss = b->lm_float_loss;
    g->unigram = b->lm_unigram;
    g->threshold = (1.0 - b->gate_lm) * b->lm_unigram;
    g->pass = g->float_loss <= g->threshold;
    return 0;
}
