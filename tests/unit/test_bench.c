/* test_bench.c - the bench state: incremental recompute is bit-identical to a full recompute,
 * rules (first match wins, newest first), regimes, static activation scales, evaluation. */
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
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
    CHECK(qs_site_wq(b, 0, NULL) == NULL && b->ls[0].w_rel_err == 0.0);
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

/* `quant PAT FMT TOKENS...`: options of the quantizer or the method, space-separated. */
static int rule_toks(struct qs_bench *b, const char *pat, const char *fmt, const char *toks)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", toks);
    for (char *t = strtok(buf, " "); t; t = strtok(NULL, " ")) {
        int k = qs_rule_method_parse_token(&r.meth, t, &e);
        if (k < 0 || (!k && qs_qopts_parse_token(&r.opt, t, &e) < 0))
            return -1;
    }
    int n;
    return qs_bench_add_rule(b, &r, &n, &e) < 0 ? -1 : n;
}

/* Site i's weight through the accessor equals a fresh dequantization of its rule's format:
 * pack + unpack of the float weight (round-to-nearest), or the method computed anew
 * (qs_bench_method_weight: rotation and scales inverted). */
static int wq_fresh(struct qs_bench *b, int i)
{
    qs_err e;
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    const struct qs_layer_state *s = &b->ls[i];
    size_t nw = (size_t)u.out * u.in;
    float *ref = malloc(nw * sizeof *ref);
    int ok = ref != NULL;
    if (ok && qs_rule_method_custom(&s->wm)) {
        double bits;
        ok = qs_bench_method_weight(b, i, &s->wfmt, &s->wopt, &s->wm, ref, &bits, &e) == 0;
    } else if (ok) {
        struct qs_packed p;
        ok = qs_quant_pack(&s->wfmt, &s->wopt, qs_bench_w(b, i, &e), u.out, u.in, &p, &e) == 0 &&
             qs_quant_unpack(&p, ref, &e) == 0;
        qs_packed_free(&p);
    }
    const float *wq = qs_site_wq(b, i, &e);
    ok = ok && wq && !memcmp(wq, ref, nw * sizeof *ref);
    free(ref);
    return ok;
}

/* The weights cache never returns a stale weight: each format switch of a site (round-to-nearest
 * formats, a method with a rotation, back) is read back through qs_site_wq equal to a fresh
 * dequantization, whether the old copy was in the cache (a large budget) or evicted (none). */
static void test_wcache_fresh_after_change(void)
{
    for (int pass = 0; pass < 2; pass++) {
        qs_err e;
        struct qs_bench *b = qs_test_open_digits();
        CHECK(b != NULL);
        if (!b)
            return;
        b->wq_budget = pass ? 0 : QS_WQ_BUDGET;
        CHECK(rule(b, "*", "int4", "gran=channel", 0) == 3);
        for (int i = 0; i < 3; i++)
            CHECK(wq_fresh(b, i));
        struct qs_eval ev0, ev1;
        CHECK(qs_bench_eval(b, &ev0, &e) == 0); /* every site decoded and used */
        CHECK(rule(b, "fc1", "int3", NULL, 0) == 1);
        CHECK(strcmp(b->ls[1].wfmt.name, "int3") == 0);
        CHECK(wq_fresh(b, 1) && wq_fresh(b, 0) && wq_fresh(b, 2));
        CHECK(qs_bench_eval(b, &ev1, &e) == 0);
        CHECK(ev1.q.loss != ev0.q.loss); /* the forward took the new weight */
        CHECK(rule_toks(b, "fc1", "int4", "gran=channel rotate=hadamard") == 1);
        CHECK(b->ls[1].wq_xform && b->ls[1].rot);
        CHECK(wq_fresh(b, 1));
        CHECK(rule(b, "fc1", "fp8-e4m3", "gran=channel", 0) == 1);
        CHECK(!b->ls[1].wq_xform && !b->ls[1].rot);
        CHECK(wq_fresh(b, 1));
        CHECK(rule(b, "fc1", "none", NULL, 0) == 1);
        CHECK(!b->ls[1].wquant && qs_site_wq(b, 1, &e) == NULL);
        CHECK(rule(b, "fc1", "int4", "gran=channel", 0) == 1);
        CHECK(wq_fresh(b, 1));
        /* back to the first configuration: the first eval's numbers, bit for bit */
        CHECK(qs_bench_eval(b, &ev1, &e) == 0);
        CHECK(ev1.q.loss == ev0.q.loss && ev1.kl == ev0.kl);
        qs_bench_free(b);
    }
}

/* The cache holds at most wq_budget bytes of decoded weights (and always the site asked for);
 * pinned sites are held beyond it until unpinned; the numbers do not depend on the budget. */
static void test_wcache_budget(void)
{
    qs_err e;
    struct qs_bench *a = qs_test_open_digits(), *b = qs_test_open_digits();
    CHECK(a && b);
    if (!a || !b)
        return;
    CHECK(rule(a, "*", "int4", "gran=channel", 0) == 3);
    CHECK(rule(b, "*", "int4", "gran=channel", 0) == 3);
    size_t sz[3], big = 0;
    for (int i = 0; i < 3; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        sz[i] = (size_t)u.out * u.in * sizeof(float);
        big = sz[i] > big ? sz[i] : big;
    }
    b->wq_budget = big; /* one site at a time at most (the largest) */
    qs_bench_wcache_clear(b);
    struct qs_wcache_info wi;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 3; i++) {
            CHECK(qs_site_wq(b, i, &e) != NULL);
            qs_bench_wcache_info(b, &wi);
            CHECK(wi.bytes <= b->wq_budget && wi.nsites >= 1 && wi.budget == big);
        }
    qs_bench_wcache_info(b, &wi);
    CHECK(wi.nquant == 3 && wi.packed_bytes > 0 && wi.packed_bytes < sz[0] + sz[1] + sz[2]);
    long d0 = wi.decodes;
    CHECK(qs_site_wq(b, 2, &e) != NULL); /* the last one read: a hit */
    qs_bench_wcache_info(b, &wi);
    CHECK(wi.decodes == d0);
    /* a budget of nothing still serves the site asked for, and only it */
    b->wq_budget = 0;
    for (int i = 0; i < 3; i++) {
        CHECK(qs_site_wq(b, i, &e) != NULL);
        qs_bench_wcache_info(b, &wi);
        CHECK(wi.nsites == 1 && wi.bytes == sz[i]);
    }
    /* pinned: every site held at once beyond the budget, then trimmed back */
    const float *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = qs_site_wq_pin(b, i, &e);
    qs_bench_wcache_info(b, &wi);
    CHECK(p[0] && p[1] && p[2] && wi.nsites == 3 && wi.bytes == sz[0] + sz[1] + sz[2]);
    qs_site_wq_unpin_all(b);
    qs_bench_wcache_info(b, &wi);
    CHECK(wi.nsites == 0 && wi.bytes == 0);
    /* the same numbers whatever the budget (b decodes every site at every use) */
    struct qs_eval ea, eb;
    CHECK(qs_bench_eval(a, &ea, &e) == 0 && qs_bench_eval(b, &eb, &e) == 0);
    CHECK(ea.q.loss == eb.q.loss && ea.q.acc == eb.q.acc && ea.kl == eb.kl);
    qs_bench_wcache_info(b, &wi);
    CHECK(wi.bytes == 0 || wi.nsites == 1);
    qs_bench_free(a);
    qs_bench_free(b);
}

TEST_MAIN("bench", TEST_CASE(test_incremental_bit_identical), TEST_CASE(test_rules_first_match),
          TEST_CASE(test_static_activation_scale), TEST_CASE(test_eval_float_is_identity),
          TEST_CASE(test_large_layer_topk), TEST_CASE(test_stale_corrections),
          TEST_CASE(test_wcache_fresh_after_change), TEST_CASE(test_wcache_budget))
