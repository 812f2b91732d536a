/* test_sens_delta.c - the family-independent delta loop (qs_sens_delta) against a scripted
 * per-unit loss, and the transformer's side of it (qs_bench_lm_loss_only, qs_sensitivity on a
 * transformer) on tests/fixtures/delta_gpt2. The per-site numbers against PyTorch are checked in
 * tests/sh/delta_lm.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/bench.h"
#include "qscope/lmbench.h"
#include "qscope/sensitivity.h"
#include "test.h"

#define FX "tests/fixtures/delta_gpt2"

static int calls_[8], fail_at_ = -2; /* -2: none fails */

/* loss(float) = 2, loss(only i) = 2 + 0.25 (i + 1); unit fail_at_ fails */
static int scripted(struct qs_bench *b, int only, double *loss, int *n, qs_err *e)
{
    (void)b;
    if (only == fail_at_)
        return qs_errf(e, "unit %d: scripted failure", only);
    calls_[only + 1]++;
    *loss = 2.0 + (only < 0 ? 0.0 : 0.25 * (only + 1));
    *n = 100;
    return 0;
}

static void test_loop(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_sens_layer out[4] = {{0}};
    for (int i = 0; i < 4; i++)
        out[i].quantized = i != 1; /* a float unit is not measured */
    memset(calls_, 0, sizeof calls_);
    fail_at_ = -2;
    double lf = 0;
    int n = 0;
    qs_err e = {{0}};
    CHECK(qs_sens_delta(b, scripted, 4, out, &lf, &n, &e) == 0);
    CHECK(lf == 2.0 && n == 100);
    CHECK(calls_[0] == 1 && calls_[1] == 1 && calls_[2] == 0 && calls_[3] == 1 && calls_[4] == 1);
    CHECK(out[0].delta_loss == 0.25 && out[1].delta_loss == 0.0 && out[2].delta_loss == 0.75 &&
          out[3].delta_loss == 1.0);
    /* a failing unit fails the whole, with its message */
    fail_at_ = 2;
    CHECK(qs_sens_delta(b, scripted, 4, out, NULL, NULL, &e) == -1);
    CHECK(strstr(e.msg, "unit 2: scripted failure") != NULL);
    /* cancel is honoured between units */
    fail_at_ = -2;
    b->cancel = 1;
    CHECK(qs_sens_delta(b, scripted, 4, out, NULL, NULL, &e) == -1);
    CHECK(strstr(e.msg, "cancelled") != NULL);
    qs_bench_free(b);
}

static struct qs_bench *fixture_bench(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    if (!b || qs_lm_load(FX, &m, &e) < 0 || qs_bench_set_lm(b, m, FX, &e) < 0 ||
        qs_tokens_load(FX "/data.txt", &t, &e) < 0 || qs_bench_set_tokens(b, t, FX, &e) < 0) {
        fprintf(stderr, "  fixture: %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

static void test_lm(void)
{
    struct qs_bench *b = fixture_bench();
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    struct qs_lm_eval ev = {0};
    double lf = 0, l3 = 0;
    long nt = 0;
    /* the float loss is eval's; a site without a rule quantizes nothing */
    CHECK(qs_test_lm_eval(b, &ev, &e) == 0);
    CHECK(qs_test_loss_only(b, -1, &lf, &nt, &e) == 0);
    CHECK(lf == ev.loss && nt == ev.ntok && nt == 3968);
    CHECK(qs_test_loss_only(b, 3, &l3, &nt, &e) == 0);
    CHECK(l3 == lf);
    int L = qs_bench_nunits(b);
    CHECK(L == 9);
    struct qs_sens_layer *s = calloc((size_t)L, sizeof *s);
    struct qs_sens_info info;
    CHECK(qs_sensitivity(b, QS_SENS_DELTA, 2, s, &info, &e) == 0);
    CHECK(info.float_loss_test == lf && info.n_test == 3968);
    for (int i = 0; i < L; i++)
        CHECK(!s[i].quantized && s[i].delta_loss == 0.0);
    /* every method runs on a transformer */
    CHECK(qs_sensitivity(b, QS_SENS_ALL, 2, s, &info, &e) == 0);
    for (int i = 0; i < L; i++)
        CHECK(s[i].grad_norm > 0 && s[i].fisher_trace > 0 && isfinite(s[i].hutch_trace));
    free(s);
    qs_bench_free(b);
}

TEST_MAIN("sens_delta", TEST_CASE(test_loop), TEST_CASE(test_lm))
