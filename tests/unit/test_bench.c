/* test_bench.c - the bench state: incremental recompute is bit-identical to a full recompute,
 * rules (first match wins, newest first), regimes, static activation scales, evaluation. */
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "bundle.h"
#include "test.h"

static int rule(struct qs_bench *b, const char *pat, const char *fmt, const char *opt, int roles)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    if (opt && qs_qopts_parse_token(&r.opt, opt, &e) < 0)
        return -1;
    r.roles = roles;
    int n;
    return qs_bench_add_rule(b, &r, &n, &e) < 0 ? -1 : n;
}

static int same_acts(struct qs_bench *a, struct qs_bench *b)
{
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < a->model->nlayers; i++) {
            size_t len = (size_t)a->q_acts[s].n * a->model->layers[i].out * sizeof(float);
            if (memcmp(a->q_acts[s].pre[i], b->q_acts[s].pre[i], len) != 0)
                return 0;
        }
    return 1;
}

/* A sequence of per-layer changes, each followed by an update, ends in exactly the state a
 * fresh bench computes from scratch with the final rules. */
static void test_incremental_bit_identical(void)
{
    qs_err e;
    struct qs_bench *a = qs_test_open_digits(), *b = qs_test_open_digits();
    CHECK(a && b);
    if (!a || !b)
        return;
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(rule(a, "*", "int4", "gran=channel", 0) == 3);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(rule(a, "fc2", "int3", NULL, 0) == 1);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(a->q_valid[0] == 3);
    CHECK(rule(a, "fc1", "fp8-e4m3", "gran=channel", 0) == 1);
    /* only fc1 onward is stale */
    CHECK(a->q_valid[QS_CALIB] == 1 && a->q_valid[QS_TEST] == 1);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(qs_analysis_correct(a, 1, QS_CORR_LOWRANK, 4, "float", -1, NULL, &e) == 0);
    CHECK(a->q_valid[QS_CALIB] == 1);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(rule(a, "fc0", "int8", "gran=channel", QS_ROLE_A) == 1);
    CHECK(a->q_valid[QS_CALIB] == 0);
    CHECK(qs_bench_update(a, &e) == 0);
    /* the same final configuration from scratch */
    CHECK(rule(b, "*", "int4", "gran=channel", 0) == 3);
    CHECK(rule(b, "fc2", "int3", NULL, 0) == 1);
    CHECK(rule(b, "fc1", "fp8-e4m3", "gran=channel", 0) == 1);
    CHECK(rule(b, "fc0", "int8", "gran=channel", QS_ROLE_A) == 1);
    CHECK(qs_bench_update(b, &e) == 0);
    CHECK(qs_analysis_correct(b, 1, QS_CORR_LOWRANK, 4, "float", -1, NULL, &e) == 0);
    CHECK(qs_bench_update(b, &e) == 0);
    CHECK(same_acts(a, b));
    struct qs_eval ea, eb;
    CHECK(qs_bench_eval(a, &ea, &e) == 0 && qs_bench_eval(b, &eb, &e) == 0);
    CHECK(ea.q.loss == eb.q.loss && ea.kl == eb.kl);
    /* the cached quantized path equals an uncached forward pass of the same configuration */
    struct qs_metric m;
    CHECK(qs_bench_run(a, QS_TEST, ~0ULL, ~0ULL, &m, NULL, &e) == 0);
    CHECK(m.loss == ea.q.loss);
    qs_bench_free(a);
    qs_bench_free(b);
}

static void test_rules_first_match(void)
{
    struct qs_bench *b = qs_test_open_digits();
    if (!b)
        return;
    CHECK(rule(b, "fc1", "int8", NULL, 0) == 1);
    CHECK(rule(b, "fc*", "int4", NULL, 0) == 3); /* newest first: now fc1 is int4 too */
    CHECK(strcmp(b->ls[1].wfmt.name, "int4") == 0);
    CHECK(rule(b, "fc1", "int8", NULL, 0) == 1); /* replaces the old fc1 rule, goes first */
    CHECK(strcmp(b->ls[1].wfmt.name, "int8") == 0 && strcmp(b->ls[0].wfmt.name, "int4") == 0);
    CHECK(b->nrules == 2);
    CHECK(rule(b, "fc0", "none", NULL, 0) == 1);
    CHECK(b->ls[0].wq == NULL && b->ls[0].w_rel_err == 0.0);
    CHECK(rule(b, "zz*", "int4", NULL, 0) == 0);
    /* regime full: the default-role rules cover activations too */
    qs_err e;
    CHECK(qs_bench_set_regime(b, QS_REGIME_FULL, &e) == 0);
    CHECK(strcmp(b->ls[1].afmt.name, "int8") == 0);
    CHECK(qs_bench_set_regime(b, QS_REGIME_WEIGHT, &e) == 0);
    CHECK(b->ls[1].afmt.kind == QS_FMT_NONE);
    qs_bench_free(b);
}

static void test_static_activation_scale(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    if (!b)
        return;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    CHECK(qs_format_parse("int8", &r.fmt, &e) == 0);
    qs_qopts_default(&r.opt);
    r.roles = QS_ROLE_A;
    r.amode = QS_AMODE_STATIC;
    int n;
    CHECK(qs_bench_add_rule(b, &r, &n, &e) == 0 && n == 3);
    CHECK(qs_bench_update(b, &e) == 0);
    /* the calibrated absmax is the max |x| of the float calibration inputs of that layer */
    float mx = 0;
    for (int j = 0; j < b->f_acts[QS_CALIB].n * 64; j++)
        if (fabsf(b->f_acts[QS_CALIB].in[1][j]) > mx)
            mx = fabsf(b->f_acts[QS_CALIB].in[1][j]);
    CHECK(b->ls[1].a_static_amax == mx);
    struct qs_eval ev;
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    CHECK(ev.q.acc > 0.9 && ev.kl > 0);
    qs_bench_free(b);
}

static void test_eval_float_is_identity(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    if (!b)
        return;
    struct qs_eval ev;
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    CHECK(ev.f.acc == ev.q.acc && ev.kl == 0 && ev.agree == 1.0);
    CHECK(ev.f.acc >= 0.95 && ev.gate_pass);
    CHECK(ev.bits_w == 32.0);
    qs_bench_free(b);
}

/* A bias/linear correction is flagged stale when an earlier layer changes (its fit saw the old
 * quantized inputs); a low-rank one is not; refitting clears the flag. */
static void test_stale_corrections(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    if (!b)
        return;
    CHECK(rule(b, "*", "int3", NULL, 0) == 3);
    CHECK(qs_analysis_correct(b, 2, QS_CORR_LINEAR, 0, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_correct(b, 1, QS_CORR_LOWRANK, 4, "float", -1, NULL, &e) == 0);
    CHECK(b->ls[2].corr.stale == 1 && b->ls[1].corr.stale == 0); /* fc1 changed after fc2's fit */
    CHECK(qs_analysis_correct(b, 2, QS_CORR_LINEAR, 0, "float", -1, NULL, &e) == 0);
    CHECK(b->ls[2].corr.stale == 0);
    CHECK(rule(b, "fc0", "int4", NULL, 0) == 1);
    CHECK(b->ls[2].corr.stale == 1 && b->ls[1].corr.stale == 0 &&
          b->ls[1].corr.method == QS_CORR_LOWRANK);
    qs_bench_free(b);
}

/* A layer large enough for the randomized top-k path (min(m, n) > 512): its top values agree with
 * the exact LAPACK spectrum of the same error within 1 %. */
static void test_large_layer_topk(void)
{
    qs_err e;
    qs_rng rng;
    qs_rng_seed(&rng, 9);
    int sizes[] = {8, 640, 600, 3};
    struct qs_mlp *m;
    CHECK(qs_mlp_new(sizes, 4, QS_ACT_RELU, &rng, &m, &e) == 0);
    struct qs_dataset *d = qs_calloc(1, sizeof *d);
    d->n = 200;
    d->d = 8;
    d->nclass = 3;
    d->x = malloc(200 * 8 * sizeof(float));
    d->y = malloc(200 * sizeof(int));
    for (int i = 0; i < 200 * 8; i++)
        d->x[i] = (float)qs_rng_normal(&rng);
    for (int i = 0; i < 200; i++)
        d->y[i] = i % 3;
    struct qs_bench *b = qs_bench_new();
    CHECK(qs_bench_set_model(b, m, "synthetic", &e) == 0);
    CHECK(qs_bench_set_data(b, d, "synthetic", &e) == 0);
    CHECK(rule(b, "*", "int4", "gran=channel", 0) == 3);
    struct qs_spectrum top, all;
    CHECK(qs_analysis_spectrum(b, 1, QS_SPEC_WEIGHT, QS_SCALE_NONE, 16, &top, &e) == 0);
    CHECK(qs_analysis_spectrum(b, 1, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, &all, &e) == 0);
    CHECK(!top.exact && all.exact && top.nsv == 16 && all.nsv == 600);
    for (int i = 0; i < 16 && top.sv && all.sv; i++)
        CHECK_REL(top.sv[i], all.sv[i], 0.01);
    CHECK_REL(top.st.fro2, all.st.fro2, 1e-6); /* energy from the matrix, not the values */
    qs_spectrum_free(&top);
    qs_spectrum_free(&all);
    qs_bench_free(b);
}

TEST_MAIN("bench", TEST_CASE(test_incremental_bit_identical), TEST_CASE(test_rules_first_match),
          TEST_CASE(test_static_activation_scale), TEST_CASE(test_eval_float_is_identity), TEST_CASE(test_large_layer_topk),
          TEST_CASE(test_stale_corrections))
