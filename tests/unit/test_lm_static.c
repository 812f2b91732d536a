/* test_lm_static.c - static activation scales on transformers (issue 12): calibrated as for
 * MLPs, the absmax of the float model's inputs to each site over the calibration windows (here
 * recomputed independently through the forward pass's input hook), applied as fixed scales (so
 * eval differs from amode=dynamic), recalibrated when the calibration set changes, and usable by
 * `error` in the activation-only regime. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/tokens.h"
#include "test.h"

/* The first 24576 tokens of the text: a held-out split of 38 windows instead of 225 (the
 * figures checked here are relations between runs, not values). */
#define LM_TOKENS 24576

static const char *models_[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};

/* `quant * int8 on=a amode=MODE` */
static int act_rule(struct qs_bench *b, enum qs_amode mode)
{
    qs_err e = {{0}};
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    if (qs_format_parse("int8", &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.roles = QS_ROLE_A;
    r.amode = mode;
    int n;
    qs_bench_clear_rules(b);
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return -1;
    }
    return n;
}

/* The independent reference: the float model run over the calibration windows with a hook that
 * keeps each site's absmax of its inputs. */
struct amax_hook {
    float *mx;
};

static void keep_amax(void *u, int s, const float *x, int n, int in)
{
    struct amax_hook *h = u;
    for (size_t j = 0; j < (size_t)n * in; j++)
        if (fabsf(x[j]) > h->mx[s])
            h->mx[s] = fabsf(x[j]);
}

static float *reference_amax(struct qs_bench *b)
{
    struct qs_lm *m = b->lm;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    float *mx = calloc((size_t)m->nsites, sizeof *mx);
    float *logits = malloc((size_t)m->ctx * m->vocab * sizeof *logits);
    struct amax_hook ah = {mx};
    struct qs_hooks h = {NULL, keep_amax, NULL, &ah, NULL, NULL, NULL};
    qs_err e = {{0}};
    int rc = mx && logits ? 0 : -1;
    for (int w = 0; w < cw && rc == 0; w++)
        rc = qs_lm_forward(m, b->tokens->ids + (size_t)w * m->ctx, m->ctx, &h, logits, &e);
    free(logits);
    if (rc < 0) {
        free(mx);
        return NULL;
    }
    return mx;
}

static void check_scales(struct qs_bench *b, const char *dir)
{
    float *ref = reference_amax(b);
    CHECK(ref != NULL);
    for (int s = 0; ref && s < b->lm->nsites; s++) {
        if (b->ls[s].a_static_amax != ref[s])
            fprintf(stderr, "  %s %s: static amax %.9g, calibration inputs' absmax %.9g\n", dir,
                    b->lm->sites[s].name, (double)b->ls[s].a_static_amax, (double)ref[s]);
        CHECK(ref[s] > 0 && b->ls[s].a_static_amax == ref[s]);
    }
    free(ref);
}

/* Each site's static scale is the absmax of the float model's calibration inputs to it, and it
 * follows the calibration set (set calib N). */
static void test_scale_is_calibration_absmax(void)
{
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm_n(models_[k], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        qs_err e = {{0}};
        struct qs_lm_eval ev;
        CHECK(act_rule(b, QS_AMODE_STATIC) == b->lm->nsites);
        CHECK(b->ls[0].a_static_amax == 0.0f); /* calibrated on first use, not before */
        CHECK(qs_test_lm_eval(b, &ev, &e) == 0);
        check_scales(b, models_[k]);
        float before = b->ls[0].a_static_amax;
        CHECK(qs_bench_set_calib(b, 1, &e) == 0);
        CHECK(b->ls[0].a_static_amax == 0.0f); /* dropped with the calibration inputs */
        CHECK(qs_test_lm_eval(b, &ev, &e) == 0);
        check_scales(b, models_[k]);
        /* one window sees no larger input than eight */
        CHECK(b->ls[0].a_static_amax <= before);
        qs_bench_free(b);
    }
}

/* amode=static and amode=dynamic are different quantizers: different held-out numbers; and a
 * different calibration set gives a different static result. */
static void test_static_differs_from_dynamic(void)
{
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm_n(models_[k], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        qs_err e = {{0}};
        struct qs_lm_eval dyn, st, st1;
        CHECK(act_rule(b, QS_AMODE_DYNAMIC) > 0);
        CHECK(qs_test_lm_eval(b, &dyn, &e) == 0);
        CHECK(act_rule(b, QS_AMODE_STATIC) > 0);
        CHECK(qs_test_lm_eval(b, &st, &e) == 0);
        printf("  %s: dynamic loss_q %.6f kl %.6g; static loss_q %.6f kl %.6g\n", models_[k],
               dyn.loss_q, dyn.kl, st.loss_q, st.kl);
        CHECK(dyn.loss == st.loss); /* the float model is the same */
        CHECK(dyn.loss_q != st.loss_q);
        CHECK(dyn.kl != st.kl);
        CHECK(qs_bench_set_calib(b, 1, &e) == 0);
        CHECK(qs_test_lm_eval(b, &st1, &e) == 0);
        CHECK(st1.loss_q != st.loss_q || st1.kl != st.kl);
        qs_bench_free(b);
    }
}

/* `error` in the activation-only regime with static scales: runs and sees activation error
 * (the weights are float, so all of it comes from the activations). */
static void test_error_static(void)
{
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm_n(models_[k], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        qs_err e = {{0}};
        CHECK(act_rule(b, QS_AMODE_STATIC) > 0);
        CHECK(qs_bench_effective_regime(b) == QS_REGIME_ACT);
        struct qs_layer_err *err = calloc((size_t)b->lm->nsites, sizeof *err);
        CHECK(err &&
              qs_analysis_errors_ex(b, err, QS_KL_OFF, &e) == 0); /* KL is not what is tested */
        for (int s = 0; err && s < b->lm->nsites; s++) {
            CHECK(err[s].w_rel_err == 0.0);
            CHECK(err[s].local_rel_mse > 0 && err[s].preact_rel_mse > 0);
        }
        check_scales(b, models_[k]);
        free(err);
        qs_bench_free(b);
    }
}

TEST_MAIN("lm_static", TEST_CASE(test_scale_is_calibration_absmax),
          TEST_CASE(test_static_differs_from_dynamic), TEST_CASE(test_error_static))
