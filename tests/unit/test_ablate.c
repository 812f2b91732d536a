/* test_ablate.c - the ablation verdict: one stated rule over the gains g_q (quantized), g_f
 * (float), g_r (random control), with their bootstrap intervals; constructed situations where a
 * rule that lets any significant float gain win ("capacity") is wrong; and the upstream state:
 * a correction fitted with earlier corrections active is judged with them active. */
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/layer_row.h"
#include "test.h"

static struct qs_interval iv(double mean, double lo, double hi)
{
    struct qs_interval r = {mean, lo, hi};
    return r;
}

/* Every branch of the rule, and its boundaries exactly as the help states them. */
static void test_verdict_rule(void)
{
    struct qs_interval none = iv(0, -0.01, 0.01);
    /* a large quantized gain, a small but significant float gain (< g_q / 2): recovery */
    struct qs_interval gq = iv(0.10, 0.09, 0.12), gf = iv(0.02, 0.01, 0.03);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "recovery");
    /* the float model gains at least half as much: capacity; exactly half counts */
    gf = iv(0.05, 0.04, 0.06);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "capacity");
    gf = iv(0.049, 0.04, 0.06);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "recovery");
    /* a float gain as large but not significant (lo <= 0): recovery */
    gf = iv(0.2, 0.0, 0.4);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "recovery");
    /* no better than a random correction of equal rank and norm: no-gain, whatever g_f is */
    struct qs_interval gr = iv(0.08, 0.05, 0.10);
    gf = iv(0.10, 0.09, 0.11);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &gr), "no-gain");
    gr = iv(0.08, 0.05, 0.0999);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &gr), "capacity");
    gr = iv(0.09, 0.08, 0.10); /* g_q's mean equal to the random control's hi: no-gain */
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &gr), "no-gain");
    /* g_q's interval reaches 0: no-gain even with a large float gain (today: capacity) */
    gq = iv(0.05, 0.0, 0.1);
    gf = iv(0.5, 0.4, 0.6);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "no-gain");
    /* entirely below 0: harmful */
    gq = iv(-0.05, -0.08, -0.01);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "harmful");
    gq = iv(-0.05, -0.08, 0.0);
    CHECK_STR(qs_ablation_verdict(&gq, &gf, &none), "no-gain");
}

/* A 2-class, 1-layer model: x = (S, t), t ~ N(+-1, 1) by class, so the Bayes logit difference is
 * 2t. The float model is miscalibrated (offset -1 on z1 - z0); the weight on the constant input
 * S of class 1 (0.07) rounds to 0 at int4 per-tensor (scale about 1/7), shifting the quantized
 * model's offset by -0.07 S = -3 more. A bias correction of +0.6 on z1 - z0 helps the float model
 * a little, but significantly, and the quantized model about four times as much. */
enum { NS = 3000 };
static const double S = 3.0 / 0.07;

static struct qs_bench *synthetic(qs_err *e)
{
    qs_rng rng;
    qs_rng_seed(&rng, 42);
    int sizes[] = {2, 2};
    struct qs_mlp *m;
    if (qs_mlp_new(sizes, 2, QS_ACT_NONE, &rng, &m, e) < 0)
        return NULL;
    const float w[4] = {0.0f, -1.0f, 0.07f, 1.0f}, bias[2] = {2.0f, -2.0f};
    memcpy(m->layers[0].w, w, sizeof w);
    memcpy(m->layers[0].b, bias, sizeof bias);
    struct qs_dataset *d = qs_calloc(1, sizeof *d);
    d->n = NS;
    d->d = 2;
    d->nclass = 2;
    d->x = malloc(NS * 2 * sizeof(float));
    d->y = malloc(NS * sizeof(int));
    for (int i = 0; i < NS; i++) {
        d->y[i] = (int)qs_rng_below(&rng, 2);
        d->x[2 * i] = (float)S;
        d->x[2 * i + 1] = (float)((d->y[i] ? 1.0 : -1.0) + qs_rng_normal(&rng));
    }
    struct qs_bench *b = qs_bench_new();
    if (qs_bench_set_model(b, m, "synthetic", e) < 0 ||
        qs_bench_set_data(b, d, "synthetic", e) < 0) {
        qs_bench_free(b);
        return NULL;
    }
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    int nm;
    if (qs_format_parse("int4", &r.fmt, e) < 0 || (qs_qopts_default(&r.opt), 0) ||
        qs_qopts_parse_token(&r.opt, "gran=tensor", e) < 0 ||
        qs_bench_add_rule(b, &r, &nm, e) < 0 || qs_bench_update(b, e) < 0) {
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* Mean per-sample cross-entropy change (without - with) over the test split, in float64, of the
 * 1-layer model with weight w (4), bias b (2) and the bias correction db (2). */
static double ref_gain(const struct qs_bench *b, const float *w, const float *bias, const float *db)
{
    const struct qs_acts *a = &b->f_acts[QS_TEST];
    double s = 0.0;
    for (int r = 0; r < a->n; r++) {
        const float *x = a->x + 2 * r;
        double loss[2];
        for (int k = 0; k < 2; k++) {
            double z[2];
            for (int c = 0; c < 2; c++)
                z[c] = (double)w[2 * c] * x[0] + (double)w[2 * c + 1] * x[1] + bias[c] +
                       (k ? db[c] : 0.0);
            double mx = fmax(z[0], z[1]);
            loss[k] = mx + log(exp(z[0] - mx) + exp(z[1] - mx)) - z[a->y[r]];
        }
        s += loss[0] - loss[1];
    }
    return s / a->n;
}

static void test_recovery_not_capacity(void)
{
    qs_err e;
    struct qs_bench *b = synthetic(&e);
    CHECK(b != NULL);
    if (!b) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    const float *wq = qs_site_wq(b, 0, NULL);
    CHECK(wq && wq[0] == 0.0f && wq[2] == 0.0f && fabsf(wq[1] + 1.0f) < 1e-3f &&
          fabsf(wq[3] - 1.0f) < 1e-3f); /* the set-up: 0.07 rounds to 0 */
    struct qs_corr *c = &b->ls[0].corr;
    c->method = QS_CORR_BIAS;
    c->db = malloc(2 * sizeof(float));
    c->db[0] = -0.3f;
    c->db[1] = 0.3f;
    c->params = 2;
    struct qs_ablation ab;
    CHECK(qs_analysis_ablate(b, 0, &ab, &e) == 0);
    const struct qs_layer *l = &b->model->layers[0];
    double gq = ref_gain(b, wq, l->b, c->db), gf = ref_gain(b, l->w, l->b, c->db);
    CHECK_NEAR(ab.g_q.mean, gq, 1e-5);
    CHECK_NEAR(ab.g_f.mean, gf, 1e-5);
    /* the situation: the float gain is significant, smaller than half the quantized gain, and
     * the random control is below the quantized gain */
    CHECK(ab.g_f.lo > 0 && ab.g_f.mean < ab.g_q.mean / 2 && ab.g_q.lo > 0);
    CHECK(ab.g_q.mean > ab.g_r.hi);
    CHECK(ab.g_q.lo <= ab.g_q.mean && ab.g_q.mean <= ab.g_q.hi);
    CHECK_STR(ab.verdict, "recovery");
    CHECK(ab.upstream == 0 && !ab.have_other && ab.other_layer == -1);
    /* the same correction on a float model miscalibrated by -4 (the quantized one by -7): the
     * float model gains more than half as much as the quantized one, capacity */
    b->model->layers[0].b[0] = 3.5f;
    b->model->layers[0].b[1] = -3.5f;
    qs_bench_invalidate(b, 0);
    b->f_valid = 0;
    CHECK(qs_analysis_ablate(b, 0, &ab, &e) == 0);
    CHECK(ab.g_f.lo > 0 && ab.g_f.mean >= ab.g_q.mean / 2);
    CHECK_STR(ab.verdict, "capacity");
    qs_bench_free(b);
}

static struct qs_bench *open_digits_int3(void)
{
    qs_err e;
    struct qs_bench *b = qs_bench_new();
    struct qs_mlp *m;
    struct qs_dataset *d;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    int nm;
    if (qs_mlp_load("datasets/models/digits-mlp.safetensors", QS_ACT_RELU, 0, &m, &e) < 0 ||
        qs_bench_set_model(b, m, "digits", &e) < 0 ||
        qs_dataset_load_csv("datasets/digits.csv", NULL, &d, &e) < 0 ||
        qs_bench_set_data(b, d, "digits.csv", &e) < 0 || qs_format_parse("int3", &r.fmt, &e) < 0 ||
        (qs_qopts_default(&r.opt), 0) || qs_qopts_parse_token(&r.opt, "gran=tensor", &e) < 0 ||
        qs_bench_add_rule(b, &r, &nm, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* fc2's bias is fitted on the quantized path with fc0's correction active: the ablation's
 * quantized runs keep fc0's correction (the model fc2's correction was fitted in), so quant is
 * the model with fc0 corrected and quant_corrected the deployed model with both, exactly as
 * the full forward pass gives them. A correction added upstream after the fit is left off for a
 * low-rank correction (its fit does not depend on it) and makes a bias correction stale, which
 * ablate refuses. */
static void test_upstream_state(void)
{
    qs_err e;
    struct qs_bench *b = open_digits_int3();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(qs_analysis_correct(b, 0, QS_CORR_QERA, 8, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_correct(b, 2, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(b->ls[2].corr.fit_upstream == 1 && b->ls[0].corr.fit_upstream == 0);
    struct qs_ablation ab;
    struct qs_metric both, fc0only, none;
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, 5, &both, NULL, &e) == 0);
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, 1, &fc0only, NULL, &e) == 0);
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, 0, &none, NULL, &e) == 0);
    CHECK(qs_analysis_ablate(b, 2, &ab, &e) == 0);
    CHECK(ab.upstream == 1 && ab.upstream_gone == 0);
    CHECK(ab.qc.loss == both.loss && ab.qc.acc == both.acc);
    CHECK(ab.q.loss == fc0only.loss && ab.q.acc == fc0only.acc);
    CHECK(ab.q.loss != none.loss); /* fc0's correction matters here */
    /* fc0 has nothing upstream */
    CHECK(qs_analysis_ablate(b, 0, &ab, &e) == 0);
    CHECK(ab.upstream == 0 && ab.q.loss == none.loss);
    /* the other-layer control: fc0's correction at fc1 (same shape, not upstream of fc0) */
    CHECK(ab.have_other && ab.other_layer == 1);
    /* a low-rank correction on fc1 fitted with fc0 corrected; fc0's correction removed since:
     * judged without it, and the output says it was there at the fit */
    CHECK(qs_analysis_correct(b, 1, QS_CORR_QERA, 4, "float", -1, NULL, &e) == 0);
    qs_analysis_uncorrect(b, 0);
    CHECK(qs_analysis_ablate(b, 1, &ab, &e) == 0);
    CHECK(ab.upstream == 0 && ab.upstream_gone == 1);
    /* fc2's bias is stale now (fc0 changed since its fit): refused, naming the fix */
    CHECK(b->ls[2].corr.stale);
    CHECK(qs_analysis_ablate(b, 2, &ab, &e) < 0 && strstr(e.msg, "refit it"));
    CHECK(qs_analysis_correct(b, 2, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_ablate(b, 2, &ab, &e) == 0 && ab.upstream == 2); /* fc1's qera now */
    qs_bench_free(b);
}

/* The last ablation of a correction is bench state, like the sensitivity: kept with the
 * correction (the layers table's row carries it to the TUI), cleared by a new fit or uncorrect. */
static void test_last_ablation_kept(void)
{
    qs_err e;
    struct qs_bench *b = open_digits_int3();
    CHECK(b != NULL);
    if (!b)
        return;
    struct qs_layer_row r;
    struct qs_ablation ab;
    CHECK(qs_analysis_correct(b, 1, QS_CORR_LOWRANK, 4, "float", -1, NULL, &e) == 0);
    qs_layer_row_fill(b, 1, &r);
    CHECK(r.abl_verdict == NULL && b->ls[1].corr.ablated.verdict == NULL);
    CHECK(qs_analysis_ablate(b, 1, &ab, &e) == 0);
    const struct qs_corr_ablated *k = &b->ls[1].corr.ablated;
    CHECK(k->verdict && !strcmp(k->verdict, ab.verdict));
    const struct qs_metric *arm[4] = {&ab.f, &ab.q, &ab.qc, &ab.fc};
    qs_layer_row_fill(b, 1, &r);
    CHECK(r.abl_verdict && !strcmp(r.abl_verdict, ab.verdict) && !r.abl_ppl);
    for (int j = 0; j < 4; j++) {
        CHECK(k->loss[j] == arm[j]->loss && k->acc[j] == arm[j]->acc);
        CHECK(r.abl_metric[j] == arm[j]->acc);
    }
    qs_layer_row_fill(b, 0, &r); /* another layer: no correction, no ablation */
    CHECK(r.abl_verdict == NULL);
    /* a new fit is a new correction: its old ablation no longer applies */
    CHECK(qs_analysis_correct(b, 1, QS_CORR_LOWRANK, 2, "float", -1, NULL, &e) == 0);
    qs_layer_row_fill(b, 1, &r);
    CHECK(r.abl_verdict == NULL);
    CHECK(qs_analysis_ablate(b, 1, &ab, &e) == 0);
    qs_layer_row_fill(b, 1, &r);
    CHECK(r.abl_verdict != NULL);
    qs_analysis_uncorrect(b, 1);
    qs_layer_row_fill(b, 1, &r);
    CHECK(r.abl_verdict == NULL && b->ls[1].corr.ablated.verdict == NULL);
    qs_bench_free(b);
}

TEST_MAIN("ablate", TEST_CASE(test_verdict_rule), TEST_CASE(test_recovery_not_capacity),
          TEST_CASE(test_upstream_state), TEST_CASE(test_last_ablation_kept))
