/* test_moments.c - streamed second moments (issue 14): a site's X^T X and sum |x| summed in double
 * window by window equal the same sums over the site's cached rows, recomputed here by plain
 * loops in long double, to 1e-12 relative; the sums do not depend on how the rows are batched nor
 * on the BLAS thread count; the ridge map's one-pass shifted sums give the two-pass (centred) map;
 * and a transformer's `correct` fitted from streamed sums equals the fit on its rows. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/lowrank.h"
#include "qscope/moments.h"
#include "test.h"

void openblas_set_num_threads(int);

/* max |a - ref| / max |ref| over n values */
static double rel_max(const double *a, const long double *ref, size_t n)
{
    long double dm = 0, rm = 0;
    for (size_t k = 0; k < n; k++) {
        long double d = fabsl((long double)a[k] - ref[k]);
        if (d > dm)
            dm = d;
        if (fabsl(ref[k]) > rm)
            rm = fabsl(ref[k]);
    }
    return rm > 0 ? (double)(dm / rm) : (double)dm;
}

/* m against plain long-double sums over rows x: (n, in). */
static void check_against_rows(const struct qs_moments *m, const float *x, int n, int in,
                               const char *what)
{
    long double *r = calloc((size_t)in * in, sizeof *r), *s = calloc((size_t)in, sizeof *s);
    CHECK(r && s && m->n == n && m->in == in);
    if (!r || !s || m->n != n) {
        free(r);
        free(s);
        return;
    }
    for (int t = 0; t < n; t++) {
        const float *row = x + (size_t)t * in;
        for (int i = 0; i < in; i++) {
            s[i] += fabsl((long double)row[i]);
            for (int j = 0; j < in; j++)
                r[(size_t)i * in + j] += (long double)row[i] * row[j];
        }
    }
    double er = rel_max(m->xtx, r, (size_t)in * in), es = rel_max(m->absum, s, (size_t)in);
    if (!(er <= 1e-12 && es <= 1e-12))
        fprintf(stderr, "  %s: X^T X rel %.3g, sum |x| rel %.3g\n", what, er, es);
    CHECK(er <= 1e-12);
    CHECK(es <= 1e-12);
    free(r);
    free(s);
}

static void fill_rows(float *x, int n, int in, unsigned seed)
{
    qs_rng g;
    qs_rng_seed(&g, seed);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < in; i++) /* a mean and a spread per column, as activations have */
            x[(size_t)t * in + i] = (float)((i % 5) * 0.3 + (1 + i % 3) * qs_rng_normal(&g));
}

/* The sums depend on the rows only: batches of 1, 7, 64 rows or all at once, one BLAS thread
 * or two, give the same bits; and they equal long-double sums to 1e-12. */
static void test_blocking_and_threads(void)
{
    enum { N = 1000, IN = 37 };
    float *x = malloc((size_t)N * IN * sizeof *x);
    CHECK(x != NULL);
    if (!x)
        return;
    fill_rows(x, N, IN, 7);
    qs_err e = {{0}};
    struct qs_moments all;
    CHECK(qs_moments_of_rows(&all, x, N, IN, &e) == 0);
    check_against_rows(&all, x, N, IN, "random rows");
    const int batch[] = {1, 7, 64, 300};
    for (int k = 0; k < 4; k++) {
        struct qs_moments m;
        CHECK(qs_moments_init(&m, IN, &e) == 0);
        for (int t = 0; t < N; t += batch[k])
            qs_moments_add(&m, x + (size_t)t * IN, N - t < batch[k] ? N - t : batch[k]);
        qs_moments_finish(&m);
        CHECK(m.n == N);
        CHECK(!memcmp(m.xtx, all.xtx, (size_t)IN * IN * sizeof(double)));
        CHECK(!memcmp(m.absum, all.absum, (size_t)IN * sizeof(double)));
        qs_moments_free(&m);
    }
    for (int th = 1; th <= 2; th++) {
        openblas_set_num_threads(th);
        struct qs_moments m;
        CHECK(qs_moments_of_rows(&m, x, N, IN, &e) == 0);
        CHECK(!memcmp(m.xtx, all.xtx, (size_t)IN * IN * sizeof(double)));
        qs_moments_free(&m);
    }
    openblas_set_num_threads(2);
    float r[IN * IN], s[IN];
    qs_moments_gram(&all, r);
    qs_moments_absmean(&all, s);
    CHECK_REL(r[3 * IN + 5], all.xtx[3 * IN + 5] / N, 1e-7);
    CHECK_REL(s[4], all.absum[4] / N, 1e-7);
    qs_moments_free(&all);
    free(x);
}

static int site_index(const struct qs_bench *b, const char *name)
{
    for (int s = 0; s < qs_bench_nunits(b); s++) {
        struct qs_unit u;
        qs_bench_unit(b, s, &u);
        if (!strcmp(u.name, name))
            return s;
    }
    return -1;
}

static int add_rule(struct qs_bench *b, const char *fmt, int roles)
{
    qs_err e = {{0}};
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.roles = roles;
    int n;
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return -1;
    }
    return n;
}

/* A transformer's moments streamed window by window equal the long-double sums over its cached
 * rows (qs_bench_site_rows), for the float and the quantized path, both splits, an attention,
 * an MLP site and the head; and the MLP's (from its caches) likewise. */
static void test_stream_equals_rows(void)
{
    static const char *models[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};
    static const char *sites[2][3] = {
        {"h.0.attn.c_proj", "h.1.mlp.c_proj", "lm_head"},
        {"model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "lm_head"}};
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm(models[k]);
        CHECK(b != NULL);
        if (!b)
            continue;
        /* weights and activations quantized: the quantized path's inputs differ from the float */
        CHECK(add_rule(b, "int4", QS_ROLE_W | QS_ROLE_A) > 0);
        qs_err e = {{0}};
        for (int j = 0; j < 3; j++) {
            int s = site_index(b, sites[k][j]);
            CHECK(s >= 0);
            if (s < 0)
                continue;
            struct qs_unit u;
            qs_bench_unit(b, s, &u);
            for (int sp = 0; sp < 2; sp++)
                for (int q = 0; q < 2; q++) {
                    struct qs_moments m;
                    if (qs_bench_site_moments(b, s, (enum qs_split_id)sp, q, &m, &e) < 0) {
                        fprintf(stderr, "  %s\n", e.msg);
                        CHECK(0);
                        continue;
                    }
                    CHECK(qs_bench_site_rows(b, s, &e) == 0);
                    const float *x = q ? b->rows.xq[sp] : b->rows.xf[sp];
                    char what[160];
                    snprintf(what, sizeof what, "%s %s split %d quant %d", models[k], u.name, sp,
                             q);
                    check_against_rows(&m, x, b->rows.n[sp], u.in, what);
                    /* and bit for bit the sums of the rows in one call */
                    struct qs_moments r;
                    CHECK(qs_moments_of_rows(&r, x, b->rows.n[sp], u.in, &e) == 0);
                    CHECK(!memcmp(m.xtx, r.xtx, (size_t)u.in * u.in * sizeof(double)));
                    qs_moments_free(&r);
                    qs_moments_free(&m);
                }
        }
        qs_bench_free(b);
    }
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    struct qs_moments m;
    CHECK(qs_bench_site_moments(b, 1, QS_CALIB, 0, &m, &e) == 0);
    const float *x;
    int n;
    CHECK(qs_bench_inputs(b, QS_CALIB, 0, 1, &x, &n, &e) == 0);
    check_against_rows(&m, x, n, b->model->layers[1].in, "digits fc1");
    qs_moments_free(&m);
    qs_bench_free(b);
}

/* The ridge map from one-pass sums about a shift (the first rows' means, as a stream gives
 * them) equals the two-pass map of qs_ridge_map_info: rows with means far from zero, where
 * uncentred one-pass sums would lose the variance to cancellation. */
static void test_ridge_shifted_sums(void)
{
    enum { N = 2000, D = 24, W = 64 };
    float *yq = malloc((size_t)N * D * sizeof *yq), *yf = malloc((size_t)N * D * sizeof *yf);
    float *at = malloc((size_t)D * D * sizeof *at), *at2 = malloc((size_t)D * D * sizeof *at2);
    float b1[D], b2[D];
    CHECK(yq && yf && at && at2);
    if (!yq || !yf || !at || !at2)
        goto out;
    qs_rng g;
    qs_rng_seed(&g, 11);
    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++) {
            double f = 300.0 + j + qs_rng_normal(&g);
            yf[(size_t)t * D + j] = (float)f;
            yq[(size_t)t * D + j] = (float)(f + 0.05 * qs_rng_normal(&g) + 0.01 * j);
        }
    qs_err e = {{0}};
    struct qs_ridge_info i1, i2;
    CHECK(qs_ridge_map_info(yq, yf, N, D, -1, at, b1, &i1, &e) == 0);
    struct qs_ridge_acc a;
    CHECK(qs_ridge_acc_init(&a, D, NULL, NULL, &e) == 0);
    for (int t = 0; t < N; t += W)
        CHECK(qs_ridge_acc_add(&a, yq + (size_t)t * D, yf + (size_t)t * D, N - t < W ? N - t : W,
                               &e) == 0);
    CHECK(qs_ridge_acc_solve(&a, -1, at2, b2, &i2, &e) == 0);
    qs_ridge_acc_free(&a);
    CHECK(i1.rank_kept == i2.rank_kept);
    CHECK_REL(i1.lambda, i2.lambda, 1e-10);
    CHECK_REL(i1.eig_max, i2.eig_max, 1e-10);
    double dm = 0, am = 0, bd = 0, bm = 0;
    for (int k = 0; k < D * D; k++) {
        dm = fmax(dm, fabs((double)at[k] - at2[k]));
        am = fmax(am, fabs(at[k]));
    }
    for (int j = 0; j < D; j++) {
        bd = fmax(bd, fabs((double)b1[j] - b2[j]));
        bm = fmax(bm, fabs(b1[j]));
    }
    if (!(dm <= 1e-5 * am && bd <= 1e-5 * bm))
        fprintf(stderr, "  ridge: |at - at2| %.3g of %.3g, |b - b2| %.3g of %.3g\n", dm, am, bd,
                bm);
    CHECK(dm <= 1e-5 * am);
    CHECK(bd <= 1e-5 * bm);
out:
    free(yq);
    free(yf);
    free(at);
    free(at2);
}

/* `correct` on a transformer is fitted from streamed sums; here the same fits on the site's
 * rows (qs_bench_site_rows, the functions the MLP uses): the correction's terms agree to float
 * rounding and its recoveries to 1e-6. */
static void test_lm_correct_equals_rows(void)
{
    struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-llama");
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(add_rule(b, "int3", QS_ROLE_W) > 0);
    qs_err e = {{0}};
    int s = site_index(b, "model.layers.0.mlp.down_proj");
    CHECK(s >= 0);
    if (s < 0) {
        qs_bench_free(b);
        return;
    }
    struct qs_unit u;
    qs_bench_unit(b, s, &u);
    const enum qs_corr_method ms[] = {QS_CORR_LQER, QS_CORR_QERA, QS_CORR_EORA, QS_CORR_BIAS,
                                      QS_CORR_LINEAR};
    for (int k = 0; k < 5; k++) {
        enum qs_corr_method m = ms[k];
        if (qs_analysis_correct(b, s, m, 4, "float", -1, NULL, &e) < 0) {
            fprintf(stderr, "  %s: %s\n", qs_corr_name(m), e.msg);
            CHECK(0);
            continue;
        }
        const struct qs_corr *c = &b->ls[s].corr;
        /* the rows, with no correction on the site (its inputs do not depend on it) */
        CHECK(qs_bench_site_rows(b, s, &e) == 0);
        int nc = b->rows.n[QS_CALIB], nt = b->rows.n[QS_TEST], d = u.out;
        float *yf_c = malloc((size_t)nc * d * sizeof(float));
        float *yq_c = malloc((size_t)nc * d * sizeof(float));
        float *yf_t = malloc((size_t)nt * d * sizeof(float));
        float *yq_t = malloc((size_t)nt * d * sizeof(float));
        float *yh_t = malloc((size_t)nt * d * sizeof(float));
        struct qs_corr ref;
        memset(&ref, 0, sizeof ref);
        CHECK(yf_c && yq_c && yf_t && yq_t && yh_t);
        int wq = QS_ROLE_W | QS_ROLE_A;
        CHECK(qs_bench_layer_forward(b, s, b->rows.xf[QS_CALIB], nc, 0, 0, yf_c, &e) == 0 &&
              qs_bench_layer_forward(b, s, b->rows.xq[QS_CALIB], nc, wq, 0, yq_c, &e) == 0 &&
              qs_bench_layer_forward(b, s, b->rows.xf[QS_TEST], nt, 0, 0, yf_t, &e) == 0 &&
              qs_bench_layer_forward(b, s, b->rows.xq[QS_TEST], nt, wq, 0, yq_t, &e) == 0 &&
              qs_bench_layer_forward(b, s, b->rows.xq[QS_TEST], nt, wq, 1, yh_t, &e) == 0);
        double rec = qs_recovery(yf_t, yq_t, yh_t, (size_t)nt * d, NULL);
        CHECK_REL(c->recovery, rec, 1e-6);
        double dm = 0, am = 0;
        const float *got = NULL, *want = NULL;
        size_t len = 0;
        if (m == QS_CORR_BIAS) {
            CHECK(qs_corr_fit_bias(yf_c, yq_c, nc, d, &ref) == 0);
            got = c->db, want = ref.db, len = (size_t)d;
        } else if (m == QS_CORR_LINEAR) {
            CHECK(qs_corr_fit_linear(yq_c, yf_c, nc, d, -1, "float", &ref, &e) == 0);
            got = c->amap, want = ref.amap, len = (size_t)d * d;
            CHECK(c->rank_kept == ref.rank_kept);
        } else {
            float *ew = malloc((size_t)u.out * u.in * sizeof(float));
            CHECK(ew != NULL);
            for (size_t j = 0; ew && j < (size_t)u.out * u.in; j++)
                ew[j] = qs_bench_w(b, s, NULL)[j] - qs_site_wq(b, s, NULL)[j];
            CHECK(ew && qs_corr_fit_lowrank(m, ew, u.out, u.in, b->rows.xf[QS_CALIB], nc, 4,
                                            "float", &ref, &e) == 0);
            free(ew);
            got = c->c, want = ref.c, len = (size_t)u.out * u.in;
        }
        for (size_t j = 0; got && want && j < len; j++) {
            dm = fmax(dm, fabs((double)got[j] - want[j]));
            am = fmax(am, fabs(want[j]));
        }
        if (!(am > 0 && dm <= 1e-5 * am))
            fprintf(stderr, "  %s: max diff %.3g of %.3g\n", qs_corr_name(m), dm, am);
        CHECK(am > 0 && dm <= 1e-5 * am);
        qs_corr_clear(&ref);
        free(yf_c);
        free(yq_c);
        free(yf_t);
        free(yq_t);
        free(yh_t);
    }
    qs_bench_free(b);
}

TEST_MAIN("moments", TEST_CASE(test_blocking_and_threads), TEST_CASE(test_stream_equals_rows),
          TEST_CASE(test_ridge_shifted_sums), TEST_CASE(test_lm_correct_equals_rows))
