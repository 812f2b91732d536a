/* test_null.c - the variance-profile null that labels an error spectrum white or structured
 * (issue 13, item 3), and the residual W - (Q(W) + C) of weight-space corrections (item 7).
 *
 * White: Gaussian layers whose rows have log-uniform scales over 10x, quantized per channel at
 * int8 and int4 by the real quantizer: plain rounding noise, which the i.i.d. Marchenko-Pastur
 * edge calls structured and the null must call white in >= 90 % of layers. Structured: the same
 * errors plus a planted rank-2 term, and a layer with clipped outlier columns. Residual: after
 * LoRC r=8 on the digits MLP the residual's values are the error's sigma_9.. (Eckart-Young). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/format.h"
#include "qscope/linalg.h"
#include "qscope/spectral.h"
#include "test.h"

#define NLAYERS 20

static const int shapes[NLAYERS][2] = {
    {64, 64},   {64, 128}, {128, 64},  {96, 96},  {32, 200}, {200, 32},  {128, 128},
    {48, 160},  {160, 48}, {100, 100}, {64, 256}, {256, 64}, {80, 120},  {120, 80},
    {256, 256}, {40, 300}, {300, 40},  {72, 144}, {144, 72}, {192, 192},
};

/* W (m, n): N(0, 1) entries times a row scale 10^U(0, 1) (log-uniform over 10x). */
static float *gaussian_layer(qs_rng *r, int m, int n)
{
    float *w = malloc((size_t)m * n * sizeof *w);
    for (int i = 0; i < m; i++) {
        double s = pow(10, qs_rng_uniform(r));
        for (int j = 0; j < n; j++)
            w[(size_t)i * n + j] = (float)(s * qs_rng_normal(r));
    }
    return w;
}

/* E = W - Q(W) with fmt per channel (opt: an extra quantizer option or NULL). */
static int quant_error(const float *w, int m, int n, const char *fmt, const char *opt, float *err)
{
    qs_err e;
    struct qs_format f;
    struct qs_qopts o;
    struct qs_packed p;
    memset(&p, 0, sizeof p);
    qs_qopts_default(&o);
    o.gran = QS_GRAN_CHANNEL;
    if (qs_format_parse(fmt, &f, &e) < 0 || (opt && qs_qopts_parse_token(&o, opt, &e) < 0) ||
        qs_quant_pack(&f, &o, w, m, n, &p, &e) < 0 || qs_quant_unpack(&p, err, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_packed_free(&p);
        return -1;
    }
    qs_packed_free(&p);
    for (size_t j = 0; j < (size_t)m * n; j++)
        err[j] = w[j] - err[j];
    return 0;
}

/* Labels a (m, n) error with the per-row null (seg = n); *mp gets the old i.i.d. label. */
static int label(const float *err, int m, int n, uint64_t seed, int *mp, struct qs_null *nl)
{
    qs_err e;
    int mn = m < n ? m : n;
    double *sv = malloc((size_t)mn * sizeof *sv);
    struct qs_rank_stats st;
    struct qs_null_view v = {.seg = n};
    int ok =
        qs_svd_values(err, m, n, sv, &e) == 0 && qs_null_edge(err, m, n, &v, 5, seed, nl, &e) == 0;
    if (!ok)
        fprintf(stderr, "  %s\n", e.msg);
    qs_rank_stats_compute(sv, mn, qs_frob2(err, (size_t)m * n), m, n, &st);
    *mp = st.structured; /* before the null: top > Marchenko-Pastur edge */
    qs_rank_stats_set_null(&st, nl);
    free(sv);
    return ok ? st.structured : -1;
}

/* Rounding noise of varied row scales is white under the null in >= 90 % of layers, at int8
 * and at int4 per channel; the i.i.d. MP edge calls most of these layers structured (the bug). */
static void test_rounding_noise_is_white(void)
{
    const char *fmts[2] = {"int8", "int4"};
    for (int fi = 0; fi < 2; fi++) {
        qs_rng r;
        qs_rng_seed(&r, 1300 + fi);
        int white = 0, mp_struct = 0, bad = 0;
        for (int k = 0; k < NLAYERS; k++) {
            int m = shapes[k][0], n = shapes[k][1], mp;
            float *w = gaussian_layer(&r, m, n), *err = malloc((size_t)m * n * sizeof *err);
            struct qs_null nl;
            int s =
                quant_error(w, m, n, fmts[fi], NULL, err) < 0 ? -1 : label(err, m, n, k, &mp, &nl);
            if (s < 0)
                bad++;
            white += s == 0;
            mp_struct += s >= 0 && mp;
            free(w);
            free(err);
        }
        printf("  %s per channel: %d/%d white under the null; %d/%d structured by the MP edge\n",
               fmts[fi], white, NLAYERS, mp_struct, NLAYERS);
        CHECK(bad == 0);
        CHECK(white * 10 >= NLAYERS * 9);
        CHECK(mp_struct * 2 > NLAYERS); /* what today's i.i.d. label said */
    }
}

/* The same rounding errors plus a planted rank-2 term whose singular values are 1.5x and 1.2x
 * the null's mean top value: structured in every layer. */
static void test_planted_rank2_is_structured(void)
{
    qs_rng r;
    qs_rng_seed(&r, 1310);
    int structured = 0;
    for (int k = 0; k < NLAYERS; k++) {
        int m = shapes[k][0], n = shapes[k][1], mp;
        float *w = gaussian_layer(&r, m, n), *err = malloc((size_t)m * n * sizeof *err);
        struct qs_null nl;
        CHECK(quant_error(w, m, n, "int4", NULL, err) == 0);
        CHECK(label(err, m, n, k, &mp, &nl) >= 0);
        double theta[2] = {1.5 * nl.top_mean, 1.2 * nl.top_mean};
        for (int t = 0; t < 2; t++) {
            double *u = malloc((size_t)m * sizeof *u), *v = malloc((size_t)n * sizeof *v);
            double nu = 0, nv = 0;
            for (int i = 0; i < m; i++) {
                u[i] = qs_rng_normal(&r);
                nu += u[i] * u[i];
            }
            for (int j = 0; j < n; j++) {
                v[j] = qs_rng_normal(&r);
                nv += v[j] * v[j];
            }
            double s = theta[t] / sqrt(nu * nv);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                    err[(size_t)i * n + j] += (float)(s * u[i] * v[j]);
            free(u);
            free(v);
        }
        structured += label(err, m, n, k, &mp, &nl) == 1;
        free(w);
        free(err);
    }
    printf("  planted rank 2: %d/%d structured\n", structured, NLAYERS);
    CHECK(structured == NLAYERS);
}

/* Three outlier input columns (10x the rest) clipped by a percentile clip: the clipped part of
 * those columns is a rank-3 error on top of the rounding noise: structured. */
static void test_clipped_outlier_columns_structured(void)
{
    qs_rng r;
    qs_rng_seed(&r, 1320);
    int structured = 0, total = 0;
    for (int k = 0; k < NLAYERS; k += 4) {
        int m = shapes[k][0], n = shapes[k][1], mp;
        float *w = gaussian_layer(&r, m, n), *err = malloc((size_t)m * n * sizeof *err);
        for (int c = 0; c < 3; c++) {
            int col = (int)qs_rng_below(&r, (uint64_t)n);
            for (int i = 0; i < m; i++)
                w[(size_t)i * n + col] *= 10;
        }
        struct qs_null nl;
        CHECK(quant_error(w, m, n, "int8", "clip=pct:95", err) == 0);
        structured += label(err, m, n, k, &mp, &nl) == 1;
        total++;
        free(w);
        free(err);
    }
    printf("  clipped outlier columns: %d/%d structured\n", structured, total);
    CHECK(structured == total);
}

/* The same seed gives the same edge; the view's column scales scale the null with it; an
 * all-zero error gives a zero null; a profile with one loud row lifts the null above MP. */
static void test_null_properties(void)
{
    qs_err e;
    int m = 48, n = 80;
    qs_rng r;
    qs_rng_seed(&r, 1330);
    float *a = malloc((size_t)m * n * sizeof *a);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            a[(size_t)i * n + j] = (float)((i == 0 ? 20 : 1) * qs_rng_normal(&r));
    struct qs_null_view v = {.seg = n};
    struct qs_null n1, n2, n3;
    CHECK(qs_null_edge(a, m, n, &v, 5, 7, &n1, &e) == 0);
    CHECK(qs_null_edge(a, m, n, &v, 5, 7, &n2, &e) == 0);
    CHECK(n1.edge == n2.edge && n1.top_mean == n2.top_mean && n1.draws == 5);
    CHECK(n1.edge == n1.top_mean + n1.margin && n1.margin >= 4 * n1.tw);
    /* one row of 20x: its norm alone is ~ 20 sqrt(80) = 179, far above the i.i.d. edge of the
     * same energy, sqrt((400 + 47) 80 / (48 80)) (sqrt 48 + sqrt 80) = 47.8 */
    double fro2 = qs_frob2(a, (size_t)m * n);
    CHECK(n1.top_mean > 3 * qs_mp_edge(fro2, m, n));
    CHECK(n1.top_mean > 150 && n1.top_mean < 210);
    /* column scales of 2: the view is 2 a, and so is its null (same draws) */
    float *cs = malloc((size_t)n * sizeof *cs);
    for (int j = 0; j < n; j++)
        cs[j] = 2;
    struct qs_null_view v2 = {.seg = n, .colscale = cs};
    CHECK(qs_null_edge(a, m, n, &v2, 5, 7, &n3, &e) == 0);
    CHECK_REL(n3.top_mean, 2 * n1.top_mean, 1e-5);
    CHECK_REL(n3.edge, 2 * n1.edge, 1e-5);
    /* the same as a mix of 2 I */
    float *mix = calloc((size_t)n * n, sizeof *mix);
    for (int j = 0; j < n; j++)
        mix[(size_t)j * n + j] = 2;
    struct qs_null_view v3 = {.seg = n, .mix = mix};
    CHECK(qs_null_edge(a, m, n, &v3, 5, 7, &n3, &e) == 0);
    CHECK_REL(n3.edge, 2 * n1.edge, 1e-5);
    /* zero error: zero null */
    memset(a, 0, (size_t)m * n * sizeof *a);
    CHECK(qs_null_edge(a, m, n, &v, 5, 7, &n3, &e) == 0);
    CHECK(n3.edge == 0 && n3.top_mean == 0);
    CHECK(qs_null_edge(a, m, n, &v, 1, 7, &n3, &e) < 0); /* too few draws */
    free(a);
    free(cs);
    free(mix);
}

static int quant_all(struct qs_bench *b, const char *fmt)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.opt.gran = QS_GRAN_CHANNEL;
    return qs_bench_add_rule(b, &r, NULL, &e);
}

/* After `correct fc1 lowrank r=8` the residual W - (Q(W) + C) has exactly the error's values
 * from sigma_9 on (LoRC is the best rank-8 approximation of E); eora's residual is computed
 * too; a bias correction has no weight residual; without a correction there is none. */
static void test_residual_after_lowrank(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(quant_all(b, "int4") == 0);
    CHECK(qs_bench_update(b, &e) == 0);
    struct qs_spectrum sp;
    CHECK(qs_analysis_spectrum_ex(b, 1, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0,
                                  QS_SPEC_NULL | QS_SPEC_RESID, &sp, &e) == 0);
    CHECK(sp.resid == 0 && sp.res_sv == NULL && sp.resid_method == NULL);
    /* the digits MLP at int8 per channel used to be "structured" everywhere; int4 here */
    CHECK(sp.st.null_draws == 5 && sp.st.null_edge > sp.st.mp_edge);
    qs_spectrum_free(&sp);

    CHECK(qs_analysis_correct(b, 1, QS_CORR_LOWRANK, 8, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_spectrum_ex(b, 1, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0,
                                  QS_SPEC_NULL | QS_SPEC_RESID, &sp, &e) == 0);
    CHECK(sp.resid == 1 && sp.res_sv != NULL);
    CHECK_STR(sp.resid_method, "lowrank");
    if (sp.res_sv) {
        for (int j = 0; j + 8 < sp.nsv; j++)
            CHECK_REL(sp.res_sv[j], sp.sv[j + 8], 1e-4);
        double tail = 0;
        for (int j = 8; j < sp.nsv; j++)
            tail += sp.sv[j] * sp.sv[j];
        CHECK_REL(sp.res_st.fro2, tail, 1e-4);
        CHECK(sp.res_st.null_draws == 5);
    }
    qs_spectrum_free(&sp);
    /* without QS_SPEC_RESID no residual is computed */
    CHECK(qs_analysis_spectrum(b, 1, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, &sp, &e) == 0);
    CHECK(sp.resid == 0 && sp.res_sv == NULL && sp.st.null_draws == 0);
    qs_spectrum_free(&sp);

    CHECK(qs_analysis_correct(b, 1, QS_CORR_EORA, 4, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_spectrum_ex(b, 1, QS_SPEC_WEIGHT, QS_SCALE_COV, 0, QS_SPEC_RESID, &sp, &e) ==
          0);
    CHECK(sp.resid == 1 && sp.res_sv && sp.res_st.fro2 < sp.st.fro2);
    qs_spectrum_free(&sp);

    CHECK(qs_analysis_correct(b, 2, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_spectrum_ex(b, 2, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, QS_SPEC_RESID, &sp, &e) ==
          0);
    CHECK(sp.resid == -1 && sp.res_sv == NULL);
    CHECK_STR(sp.resid_method, "bias");
    qs_spectrum_free(&sp);
    qs_bench_free(b);
}

/* int8 per channel on the digits MLP: report what the null says of each layer (it used to be
 * "structured" by the MP edge in fc1 and fc2); fc0 and fc1 must be white now. */
static void test_digits_int8_channel(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(quant_all(b, "int8") == 0);
    CHECK(qs_bench_update(b, &e) == 0);
    int white = 0;
    for (int i = 0; i < 3; i++) {
        struct qs_spectrum sp;
        CHECK(qs_analysis_spectrum_ex(b, i, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, QS_SPEC_NULL, &sp,
                                      &e) == 0);
        printf("  digits fc%d int8/channel: top %.5g, MP %.5g (%s), null %.5g (%s)\n", i, sp.st.top,
               sp.st.mp_edge, sp.st.top > sp.st.mp_edge ? "structured" : "white", sp.st.null_edge,
               sp.st.structured ? "structured" : "white");
        white += !sp.st.structured;
        qs_spectrum_free(&sp);
    }
    CHECK(white >= 2);
    qs_bench_free(b);
}

TEST_MAIN("null", TEST_CASE(test_rounding_noise_is_white),
          TEST_CASE(test_planted_rank2_is_structured),
          TEST_CASE(test_clipped_outlier_columns_structured), TEST_CASE(test_null_properties),
          TEST_CASE(test_residual_after_lowrank), TEST_CASE(test_digits_int8_channel))
