/* test_lm_bench.c - the one core on transformers: incremental recompute (resuming a changed
 * site's block from the residual stream kept at block entries) ends bit for bit in the state a
 * fresh bench computes from scratch, after any sequence of rule and correction changes; the
 * cached quantized path agrees with an uncached run; a change recomputes from its block only. */
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "test.h"

static int rule(struct qs_bench *b, const char *pat, const char *fmt, const char *opt, int roles,
                enum qs_amode am)
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
    r.amode = am;
    int n;
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return -1;
    }
    return n;
}

/* Every cached quantized input and residual, both splits, byte for byte. */
static int same_caches(const struct qs_bench *a, const struct qs_bench *b)
{
    const struct qs_lm *m = a->lm;
    for (int s = 0; s < 2; s++) {
        const struct qs_acts *x = &a->q_acts[s], *y = &b->q_acts[s];
        if (x->n != y->n || x->n == 0)
            return 0;
        for (int i = 0; i < m->nsites; i++)
            if (memcmp(x->in[i], y->in[i], (size_t)x->n * m->sites[i].in * sizeof(float)))
                return 0;
        size_t nr = (size_t)(x->n / m->ctx) * (m->n_layer + 1) * m->ctx * m->d_model;
        if (memcmp(x->resid, y->resid, nr * sizeof(float)))
            return 0;
    }
    return 1;
}

static void incremental(const char *dir, const char *late, const char *early)
{
    qs_err e = {{0}};
    struct qs_bench *a = qs_test_open_lm(dir), *b = qs_test_open_lm(dir);
    CHECK(a && b);
    if (!a || !b)
        goto out;
    int S = qs_bench_nunits(a), il = qs_bench_layer_index(a, late);
    CHECK(il > 0);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(rule(a, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(a->q_valid[QS_CALIB] == 0);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(a->q_valid[QS_CALIB] == S && a->q_valid[QS_TEST] == S);
    /* a change at a late site leaves the path before it valid: only its block is re-run */
    float *before = malloc((size_t)a->q_acts[QS_CALIB].n * a->lm->sites[0].in * sizeof(float));
    memcpy(before, a->q_acts[QS_CALIB].in[0],
           (size_t)a->q_acts[QS_CALIB].n * a->lm->sites[0].in * sizeof(float));
    CHECK(rule(a, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(a->q_valid[QS_CALIB] == il && a->q_valid[QS_TEST] == il);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(memcmp(before, a->q_acts[QS_CALIB].in[0],
                 (size_t)a->q_acts[QS_CALIB].n * a->lm->sites[0].in * sizeof(float)) == 0);
    free(before);
    CHECK(qs_analysis_correct(a, il, QS_CORR_LQER, 4, "float", -1, NULL, &e) == 0);
    CHECK(qs_bench_update(a, &e) == 0);
    /* static activation scales on an early site, then a weight-only change after it */
    CHECK(rule(a, early, "int8", NULL, QS_ROLE_W | QS_ROLE_A, QS_AMODE_STATIC) == 1);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(rule(a, late, "fp8-e4m3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_bench_update(a, &e) == 0);
    CHECK(qs_analysis_correct(a, il, QS_CORR_LOWRANK, 2, "int8", -1, NULL, &e) == 0);
    CHECK(qs_bench_update(a, &e) == 0);
    /* the same final configuration from scratch */
    CHECK(rule(b, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(rule(b, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(rule(b, early, "int8", NULL, QS_ROLE_W | QS_ROLE_A, QS_AMODE_STATIC) == 1);
    CHECK(rule(b, late, "fp8-e4m3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_bench_update(b, &e) == 0);
    CHECK(qs_analysis_correct(b, il, QS_CORR_LOWRANK, 2, "int8", -1, NULL, &e) == 0);
    CHECK(qs_bench_update(b, &e) == 0);
    CHECK(same_caches(a, b));
    /* a bias correction fitted last (on the same quantized path in both) keeps them equal */
    int ie = qs_bench_layer_index(a, early);
    CHECK(qs_analysis_correct(a, ie, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0 &&
          qs_analysis_correct(b, ie, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(a->q_valid[QS_CALIB] == ie);
    CHECK(qs_bench_update(a, &e) == 0 && qs_bench_update(b, &e) == 0);
    CHECK(same_caches(a, b));
    CHECK(a->ls[ie].corr.recovery == b->ls[ie].corr.recovery);
    struct qs_eval ea, eb;
    CHECK(qs_bench_eval(a, &ea, &e) == 0 && qs_bench_eval(b, &eb, &e) == 0);
    CHECK(ea.q.loss == eb.q.loss && ea.kl == eb.kl && ea.agree == eb.agree);
    /* the cached path's error statistics equal the fresh bench's (the propagated pre-activation
     * error of every site; error's KL share is a masked run, covered by the eval check) */
    for (int i = 0; i < S; i++) {
        float *y1 = NULL, *y2 = NULL;
        int n1 = 0, n2 = 0;
        CHECK(qs_bench_preact(a, QS_CALIB, 1, i, &y1, &n1, &e) == 0 &&
              qs_bench_preact(b, QS_CALIB, 1, i, &y2, &n2, &e) == 0 && n1 == n2 &&
              memcmp(y1, y2, (size_t)n1 * a->lm->sites[i].out * sizeof(float)) == 0);
        free(y1);
        free(y2);
    }
    /* the held-out inputs of the quantized path are those an uncached forward feeds the head:
     * the head's logits from the cache score as the uncached run does */
    struct qs_metric m;
    CHECK(qs_bench_run_ex(a, QS_TEST, ~0ULL, ~0ULL, &m, NULL, NULL, NULL, &e) == 0);
    CHECK(m.loss == ea.q.loss);
out:
    qs_bench_free(a);
    qs_bench_free(b);
}

static void test_incremental_llama(void)
{
    incremental("datasets/models/tiny-llama", "model.layers.1.mlp.up_proj",
                "model.layers.0.self_attn.o_proj");
}

static void test_incremental_gpt2(void)
{
    incremental("datasets/models/tiny-gpt2", "h.1.mlp.c_fc", "h.0.attn.c_proj");
}

/* amode=static and amode=dynamic differ on a transformer (the drift the one core removed). */
static void test_static_differs(void)
{
    qs_err e = {{0}};
    struct qs_bench *a = qs_test_open_lm("datasets/models/tiny-gpt2");
    if (!a)
        return;
    struct qs_eval d, s;
    CHECK(rule(a, "*", "int4", NULL, QS_ROLE_A, QS_AMODE_DYNAMIC) > 0);
    CHECK(qs_bench_eval(a, &d, &e) == 0);
    CHECK(rule(a, "*", "int4", NULL, QS_ROLE_A, QS_AMODE_STATIC) > 0);
    CHECK(qs_bench_eval(a, &s, &e) == 0);
    CHECK(d.q.loss != s.q.loss && a->ls[0].a_static_amax > 0);
    qs_bench_free(a);
}

TEST_MAIN("lm_bench", TEST_CASE(test_incremental_llama), TEST_CASE(test_incremental_gpt2),
          TEST_CASE(test_static_differs))
