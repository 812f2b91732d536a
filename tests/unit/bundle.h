/* bundle.h - the bundled models as unit-test fixtures: the digits MLP with its data, and the
 * tiny transformers with the license text. One place, so every test opens them alike. Paths are
 * relative to the repository root (tests/run.sh runs there). NULL on failure, with the reason on
 * stderr. */
#ifndef QSCOPE_TEST_BUNDLE_H
#define QSCOPE_TEST_BUNDLE_H

#include <math.h>
#include <stdio.h>

#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/dataset.h"
#include "qscope/lm.h"
#include "qscope/mlp.h"
#include "qscope/tokens.h"

#define QS_TEST_DIGITS_MODEL "datasets/models/digits-mlp.safetensors"
#define QS_TEST_DIGITS_DATA "datasets/digits.csv"
#define QS_TEST_LM_TEXT "datasets/text/licenses.txt"

/* The digits MLP (ReLU) and its CSV on a new bench; no rules. */
__attribute__((unused)) static struct qs_bench *qs_test_open_digits(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_bench_new();
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    if (!b || qs_mlp_load(QS_TEST_DIGITS_MODEL, QS_ACT_RELU, 0, &m, &e) < 0 ||
        qs_bench_set_model(b, m, QS_TEST_DIGITS_MODEL, &e) < 0 ||
        qs_dataset_load_csv(QS_TEST_DIGITS_DATA, NULL, &d, &e) < 0 ||
        qs_bench_set_data(b, d, QS_TEST_DIGITS_DATA, &e) < 0) {
        fprintf(stderr, "  digits: %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* A Hugging Face folder (e.g. datasets/models/tiny-llama) and the license text's tokens. */
/* The bundled transformer dir on the first ntok tokens of QS_TEST_LM_TEXT (ntok 0: all of it):
 * a shorter text keeps the held-out 10 % (and every KL run over it) short where a test checks
 * relations between figures rather than the figures themselves. */
__attribute__((unused)) static struct qs_bench *qs_test_open_lm_n(const char *dir, size_t ntok)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    if (!b || qs_lm_load(dir, &m, &e) < 0 || qs_bench_set_lm(b, m, dir, &e) < 0 ||
        qs_tokens_load(QS_TEST_LM_TEXT, &t, &e) < 0) {
        fprintf(stderr, "  %s: %s\n", dir, e.msg);
        qs_bench_free(b);
        return NULL;
    }
    if (ntok > 0 && ntok < t->n)
        t->n = ntok;
    if (qs_bench_set_tokens(b, t, QS_TEST_LM_TEXT, &e) < 0) {
        fprintf(stderr, "  %s: %s\n", dir, e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

__attribute__((unused)) static struct qs_bench *qs_test_open_lm(const char *dir)
{
    return qs_test_open_lm_n(dir, 0);
}

/* eval's figures of a transformer as the model's own evaluation reports them (qs_lm_eval). */
__attribute__((unused)) static int qs_test_lm_eval(struct qs_bench *b, struct qs_lm_eval *ev,
                                                   qs_err *e)
{
    struct qs_eval q;
    if (qs_bench_eval(b, &q, e) < 0)
        return -1;
    *ev =
        (struct qs_lm_eval){q.f.loss, exp(q.f.loss), q.q.loss, exp(q.q.loss), q.kl, q.agree, q.q.n};
    return 0;
}

/* The test split's loss with only unit `only` quantized (-1: float), no corrections. */
__attribute__((unused)) static int qs_test_loss_only(struct qs_bench *b, int only, double *loss,
                                                     long *n, qs_err *e)
{
    struct qs_metric m;
    uint64_t mask = only < 0 ? 0 : 1ULL << (only < 63 ? only : 63);
    if (qs_bench_run_ex(b, QS_TEST, mask, 0, &m, NULL, NULL, NULL, e) < 0)
        return -1;
    *loss = m.loss;
    *n = m.n;
    return 0;
}

#endif
