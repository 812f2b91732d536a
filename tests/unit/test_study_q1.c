/* test_study_q1.c - the Q1 study on transformers against an independent float64 reference, and
 * the verdict rule on synthetic inputs.
 *
 * Reference: for one Q1 layer (tiny-gpt2's h.0.attn.c_attn; tiny-llama's block-0 q|k|v_proj,
 * concatenated) the quantized and float pre-activations of the calibration and held-out windows
 * (the bench's forward, weights int4 per channel), then, in double and written here: centred
 * Gram G = Yq^T Yq and H = Yq^T Yf, G's eigen-decomposition (LAPACK dsyev, not the ridge code's
 * dsyevd), the map on the eigen-directions above 1e-6 of the largest with lambda = 1e-6 tr G / d,
 * its int4 per-row quantization (scale = max|row| / 7 rounded to f16, levels -7..7; the offset
 * mean(yf) - mean(yq) at of the float fit kept), and
 * R = 1 - ||Yf - Yhat||^2 / ||Yf - Yq||^2 on the held-out rows. */
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/half.h"
#include "qscope/lmbench.h"
#include "qscope/study.h"
#include "test.h"

static void test_verdict_thresholds(void)
{
    CHECK_STR(qs_q1_verdict(0.35, 0.35), "supported");
    CHECK_STR(qs_q1_verdict(0.9, 0.9), "supported");
    CHECK_STR(qs_q1_verdict(0.3499, 0.9), "unclear");
    CHECK_STR(qs_q1_verdict(0.9, 0.3499), "unclear");
    CHECK_STR(qs_q1_verdict(0.2399, -0.01), "refuted");
    CHECK_STR(qs_q1_verdict(-0.069, -1.0), "refuted");
    CHECK_STR(qs_q1_verdict(0.24, -0.5), "unclear"); /* median not < 0.24 */
    CHECK_STR(qs_q1_verdict(0.1, 0.0), "unclear");   /* Spearman not < 0 */
    CHECK_STR(qs_q1_verdict(0.3, 0.5), "unclear");   /* between the bands */
    CHECK_STR(qs_q1_verdict(0.1, NAN), "unclear");   /* constant values */
    CHECK_STR(qs_q1_verdict(0.5, NAN), "unclear");
    CHECK_STR(qs_q1_verdict(NAN, 0.9), "unclear");
}

/* Concatenated pre-activations of sites[0..m) (widths w[]) on split sp: (n, D). */
static float *concat(struct qs_bench *b, enum qs_split_id sp, int quant, const int *sites, int m,
                     int D, int *n)
{
    float *out = NULL;
    int off = 0;
    for (int g = 0; g < m; g++) {
        qs_err e = {{0}};
        float *y;
        int ns;
        struct qs_unit u;
        qs_bench_unit(b, sites[g], &u);
        if (qs_bench_preact(b, sp, quant, sites[g], &y, &ns, &e) < 0) {
            fprintf(stderr, "  %s\n", e.msg);
            free(out);
            return NULL;
        }
        if (!out)
            out = malloc((size_t)ns * D * sizeof *out);
        for (int r = 0; r < ns; r++)
            for (int j = 0; j < u.out; j++)
                out[(size_t)r * D + off + j] = y[(size_t)r * u.out + j];
        off += u.out;
        *n = ns;
        free(y);
    }
    return out;
}

/* R_lin_float and R_lin_q4 of the reference (see the top). */
static void reference(const float *yqc, const float *yfc, int nc, const float *yqt,
                      const float *yft, int nt, int D, double *rf, double *rq)
{
    double *mq = calloc(D, sizeof *mq), *mf = calloc(D, sizeof *mf);
    double *G = calloc((size_t)D * D, sizeof *G), *H = calloc((size_t)D * D, sizeof *H);
    double *w = malloc(D * sizeof *w), *A = calloc((size_t)D * D, sizeof *A);
    for (int r = 0; r < nc; r++)
        for (int j = 0; j < D; j++) {
            mq[j] += yqc[(size_t)r * D + j] / (double)nc;
            mf[j] += yfc[(size_t)r * D + j] / (double)nc;
        }
    for (int r = 0; r < nc; r++)
        for (int i = 0; i < D; i++) {
            double qi = yqc[(size_t)r * D + i] - mq[i];
            for (int j = 0; j < D; j++) {
                G[(size_t)i * D + j] += qi * (yqc[(size_t)r * D + j] - mq[j]);
                H[(size_t)i * D + j] += qi * (yfc[(size_t)r * D + j] - mf[j]);
            }
        }
    double tr = 0;
    for (int i = 0; i < D; i++)
        tr += G[(size_t)i * D + i];
    double lam = 1e-6 * tr / D;
    LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', D, G, D, w); /* G: columns are eigenvectors */
    double cut = 1e-6 * w[D - 1];
    /* at = sum_k v_k v_k^T H / (w_k + lam); A[i][j]: yhat_j = sum_i yq_i at[i][j] */
    for (int k = 0; k < D; k++) {
        if (!(w[k] > cut))
            continue;
        for (int j = 0; j < D; j++) {
            double vh = 0;
            for (int i = 0; i < D; i++)
                vh += G[(size_t)i * D + k] * H[(size_t)i * D + j];
            vh /= w[k] + lam;
            for (int i = 0; i < D; i++)
                A[(size_t)i * D + j] += G[(size_t)i * D + k] * vh;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        double *at = malloc((size_t)D * D * sizeof *at);
        memcpy(at, A, (size_t)D * D * sizeof *at);
        if (pass == 1) /* int4 per output channel j: the column j of at (row j of A^T) */
            for (int j = 0; j < D; j++) {
                double mx = 0;
                for (int i = 0; i < D; i++)
                    mx = fmax(mx, fabs((float)at[(size_t)i * D + j]));
                double s = qs_f16_to_f32(qs_f32_to_f16((float)(mx / 7)));
                for (int i = 0; i < D; i++) {
                    double v = s > 0 ? rint((float)at[(size_t)i * D + j] / s) : 0;
                    at[(size_t)i * D + j] = fmax(-7, fmin(7, v)) * s;
                }
            }
        double before = 0, after = 0;
        for (int r = 0; r < nt; r++)
            for (int j = 0; j < D; j++) {
                /* the offset b = mean(yf) - mean(yq) at of the float fit, kept as it is when
                 * the map's weights are quantized */
                double yh = mf[j];
                for (int i = 0; i < D; i++)
                    yh += yqt[(size_t)r * D + i] * at[(size_t)i * D + j] -
                          mq[i] * A[(size_t)i * D + j];
                double f = yft[(size_t)r * D + j], q = yqt[(size_t)r * D + j];
                before += (f - q) * (f - q);
                after += (f - yh) * (f - yh);
            }
        *(pass ? rq : rf) = 1 - after / before;
        free(at);
    }
    free(mq);
    free(mf);
    free(G);
    free(H);
    free(w);
    free(A);
}

static void check_model(const char *dir, const int *sites, int m, const char *kind)
{
    qs_err e = {{0}};
    char arg[256];
    snprintf(arg, sizeof arg, "%s:%s", dir, QS_TEST_LM_TEXT);
    const char *models[] = {arg};
    uint64_t seeds[] = {0};
    struct qs_q1_opts o;
    memset(&o, 0, sizeof o);
    o.models = models;
    o.nmodels = 1;
    o.seeds = seeds;
    o.nseeds = 1;
    o.top_frac = 0.1;
    snprintf(o.prec, sizeof o.prec, "int4");
    struct qs_format f4, f3;
    struct qs_qopts o4;
    CHECK(qs_format_parse("int3", &f3, &e) == 0); /* the MLP format: must not be used */
    CHECK(qs_format_parse("int4", &f4, &e) == 0);
    o.fmt = f3;
    qs_qopts_default(&o.opt);
    qs_qopts_default(&o4);
    o4.gran = QS_GRAN_CHANNEL;
    o.lm_fmt = &f4;
    o.lm_opt = &o4;
    struct qs_q1 q;
    if (qs_study_q1(&o, &q, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        CHECK(0);
        return;
    }
    CHECK(q.nsettings == 1 && q.nlm == 1);
    CHECK_STR(q.settings[0].format, "int4");
    CHECK(strstr(q.settings[0].options, "gran=channel") != NULL);
    const struct qs_q1_layer *l = &q.layers[0];
    CHECK_STR(qs_q1_kind_name(l->kind), kind);
    CHECK(l->nsites == m && l->block == 0 && l->index == sites[0]);
    CHECK(q.settings[0].nq1 == 4); /* two blocks x (attention, FFN) */
    CHECK(q.r_q.n == 4);

    /* the reference, on a bench of its own with the same weights */
    struct qs_bench *b = qs_test_open_lm(dir);
    CHECK(b != NULL);
    if (!b) {
        qs_q1_free(&q);
        return;
    }
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    r.fmt = f4;
    r.opt = o4;
    r.roles = QS_ROLE_W;
    r.amode = QS_AMODE_DYNAMIC;
    CHECK(qs_bench_lm_ready(b, &e) == 0 && qs_bench_add_rule(b, &r, NULL, &e) == 0 &&
          qs_bench_update(b, &e) == 0);
    int D = 0;
    for (int g = 0; g < m; g++) {
        struct qs_unit u;
        qs_bench_unit(b, sites[g], &u);
        D += u.out;
    }
    CHECK(l->d == D);
    int nc = 0, nt = 0;
    float *yqc = concat(b, QS_CALIB, 1, sites, m, D, &nc);
    float *yfc = concat(b, QS_CALIB, 0, sites, m, D, &nc);
    float *yqt = concat(b, QS_TEST, 1, sites, m, D, &nt);
    float *yft = concat(b, QS_TEST, 0, sites, m, D, &nt);
    CHECK(yqc && yfc && yqt && yft && nc > D && nt > 0);
    double rf = NAN, rq = NAN;
    reference(yqc, yfc, nc, yqt, yft, nt, D, &rf, &rq);
    printf("  %s layer %s: R_lin_float %.6f (ref %.6f), R_lin_q4 %.6f (ref %.6f)\n", dir, l->name,
           l->r_float, rf, l->r_q, rq);
    CHECK_NEAR(l->r_float, rf, 2e-4);
    CHECK_NEAR(l->r_q, rq, 2e-3 * fmax(1, fabs(rq)));
    free(yqc);
    free(yfc);
    free(yqt);
    free(yft);
    qs_bench_free(b);
    qs_q1_free(&q);
}

static void test_gpt2_c_attn_reference(void)
{
    const int s[] = {0};
    check_model("datasets/models/tiny-gpt2", s, 1, "attention");
}

static void test_llama_qkv_group_reference(void)
{
    const int s[] = {0, 1, 2};
    check_model("datasets/models/tiny-llama", s, 3, "attention");
}

TEST_MAIN("study_q1", TEST_CASE(test_verdict_thresholds), TEST_CASE(test_gpt2_c_attn_reference),
          TEST_CASE(test_llama_qkv_group_reference))
