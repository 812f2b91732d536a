/* test_ridge.c - the ridge recovery map (issue 13 item 1): against a float64 reference computed
 * here (plain loops in double, a cyclic Jacobi eigensolver, the documented rank cut), on inputs
 * of rank 2 embedded in 16 dimensions (as a 2-D toy's first layer) and on digits fc1 (rank 59 of
 * 64, dead ReLUs); and independent of the OpenBLAS thread count.
 *
 * Tolerances: the maps are compared to 1e-6 of their largest entry and the recoveries R (float,
 * int8 and int4 maps) to 1e-6 absolute. Both sides read the same float32 pre-activations; the
 * library stores the map in float32 (relative rounding 6e-8) and applies it in float32, which
 * moves R by about 1e-7 on these layers; an int4/int8 rounding flip of one map entry would move
 * it by 1e-4 or more, so agreement to 1e-6 means the quantized maps are the same. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/format.h"
#include "qscope/lowrank.h"
#include "test.h"

/* ---- float64 reference ------------------------------------------------------------------- */

/* Eigen-decomposition of the symmetric a: (n, n) row-major (destroyed) by cyclic Jacobi
 * rotations: w (n) the eigenvalues, v (n, n) with column k the k-th eigenvector. */
static void jacobi(double *a, int n, double *w, double *v)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            v[i * n + j] = i == j;
    double fro = 0;
    for (int i = 0; i < n * n; i++)
        fro += a[i] * a[i];
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++)
                off += a[p * n + q] * a[p * n + q];
        if (off <= 1e-32 * fro)
            break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (apq == 0)
                    continue;
                double th = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (th >= 0 ? 1.0 : -1.0) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) { /* columns p, q */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p, q */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int k = 0; k < n; k++)
        w[k] = a[k * n + k];
}

/* The map as lowrank.h defines it, in double: centred G = Yq^T Yq and H = Yq^T Yf, lambda < 0
 * auto = 1e-6 tr(G) / d, eigen-directions of G with w > QS_RIDGE_REL_CUT max(w) kept, at = sum
 * over kept k of v_k (v_k^T H) / (w_k + lambda): (d, d) row-major; b = mean(yf) - mean(yq) at. */
static void ref_ridge(const float *yq, const float *yf, int n, int d, double lambda, double *at,
                      double *b, double *lam_out, int *rank)
{
    double *mq = calloc(d, sizeof *mq), *mf = calloc(d, sizeof *mf);
    double *g = calloc((size_t)d * d, sizeof *g), *h = calloc((size_t)d * d, sizeof *h);
    double *v = malloc(sizeof(double) * d * d), *w = malloc(sizeof(double) * d);
    double *vh = malloc(sizeof(double) * d);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            mq[j] += yq[(size_t)i * d + j];
            mf[j] += yf[(size_t)i * d + j];
        }
    for (int j = 0; j < d; j++) {
        mq[j] /= n;
        mf[j] /= n;
    }
    for (int r = 0; r < n; r++)
        for (int i = 0; i < d; i++) {
            double qi = yq[(size_t)r * d + i] - mq[i];
            for (int j = 0; j < d; j++) {
                g[i * d + j] += qi * (yq[(size_t)r * d + j] - mq[j]);
                h[i * d + j] += qi * (yf[(size_t)r * d + j] - mf[j]);
            }
        }
    double tr = 0;
    for (int i = 0; i < d; i++)
        tr += g[i * d + i];
    double lam = lambda < 0 ? 1e-6 * tr / d : lambda;
    jacobi(g, d, w, v);
    double wmax = 0;
    for (int k = 0; k < d; k++)
        wmax = fmax(wmax, w[k]);
    memset(at, 0, sizeof(double) * d * d);
    *rank = 0;
    for (int k = 0; k < d; k++) {
        if (!(w[k] > QS_RIDGE_REL_CUT * wmax))
            continue;
        ++*rank;
        for (int j = 0; j < d; j++) {
            double acc = 0;
            for (int i = 0; i < d; i++)
                acc += v[i * d + k] * h[i * d + j];
            vh[j] = acc / (w[k] + lam);
        }
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                at[i * d + j] += v[i * d + k] * vh[j];
    }
    for (int j = 0; j < d; j++) {
        double acc = mf[j];
        for (int i = 0; i < d; i++)
            acc -= mq[i] * at[i * d + j];
        b[j] = acc;
    }
    *lam_out = lam;
    free(mq);
    free(mf);
    free(g);
    free(h);
    free(v);
    free(w);
    free(vh);
}

/* Quantizes a = at^T (rows = outputs) per row as `correct ... linear prec=` does. */
static void quantize_rows(float *a, int d, const char *prec)
{
    struct qs_format f;
    struct qs_qopts o;
    struct qs_packed p;
    qs_err e;
    memset(&p, 0, sizeof p);
    CHECK(qs_format_parse(prec, &f, &e) == 0);
    qs_qopts_default(&o);
    o.gran = QS_GRAN_CHANNEL;
    CHECK(qs_quant_pack(&f, &o, a, d, d, &p, &e) == 0);
    CHECK(qs_quant_unpack(&p, a, &e) == 0);
    qs_packed_free(&p);
}

/* Held-out R of the reference map (prec "float", "int8" or "int4"), applied in double. */
static double ref_recovery(const double *at, const double *b, int d, const char *prec,
                           const float *yq, const float *yf, int n)
{
    float *a = malloc(sizeof(float) * d * d);
    for (int r = 0; r < d; r++)
        for (int k = 0; k < d; k++)
            a[r * d + k] = (float)at[k * d + r];
    if (strcmp(prec, "float"))
        quantize_rows(a, d, prec);
    double before = 0, after = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double yh = b[j];
            for (int k = 0; k < d; k++)
                yh += (double)yq[(size_t)i * d + k] * a[j * d + k];
            double f = yf[(size_t)i * d + j];
            before += (f - yq[(size_t)i * d + j]) * (f - yq[(size_t)i * d + j]);
            after += (f - yh) * (f - yh);
        }
    free(a);
    return 1 - after / before;
}

static double max_abs(const double *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

/* ---- rank 2 in 16 dimensions ------------------------------------------------------------- */

/* yq = x Wq^T + c, yf = x W^T + c for 2-D x: Wq (16, 2) is W rounded to a grid of 0.25, so the
 * centred yq has rank 2 and its null space is the orthogonal complement of Wq's columns. */
enum { T_N = 600, T_D = 16 };

static void toy_data(uint64_t seed, float *yq, float *yf, float *wq)
{
    qs_rng r;
    qs_rng_seed(&r, seed);
    float w[T_D * 2], c[T_D];
    for (int j = 0; j < T_D; j++) {
        for (int k = 0; k < 2; k++) {
            w[j * 2 + k] = (float)qs_rng_normal(&r);
            wq[j * 2 + k] = roundf(w[j * 2 + k] * 4) / 4;
        }
        c[j] = (float)(0.5 * qs_rng_normal(&r));
    }
    for (int i = 0; i < T_N; i++) {
        float x0 = (float)qs_rng_normal(&r) + 1.0f, x1 = (float)(2 * qs_rng_normal(&r));
        for (int j = 0; j < T_D; j++) {
            yq[i * T_D + j] = x0 * wq[j * 2] + x1 * wq[j * 2 + 1] + c[j];
            yf[i * T_D + j] = x0 * w[j * 2] + x1 * w[j * 2 + 1] + c[j];
        }
    }
}

/* The map's null-space rows are exactly zero (they were rounding noise over lambda), and the
 * int4 map's held-out R equals the float64 reference's. */
static void test_ridge_rank2_vs_float64(void)
{
    int n = T_N, d = T_D, h = n / 2;
    float *yq = malloc(sizeof(float) * n * d), *yf = malloc(sizeof(float) * n * d), wq[T_D * 2];
    toy_data(7, yq, yf, wq);
    float at[T_D * T_D], b[T_D];
    double lam = -1, rat[T_D * T_D], rb[T_D], rlam;
    int rank;
    qs_err err;
    CHECK(qs_ridge_map(yq, yf, h, d, -1, at, b, &lam, &err) == 0);
    ref_ridge(yq, yf, h, d, -1, rat, rb, &rlam, &rank);
    CHECK(rank == 2);
    CHECK_REL(lam, rlam, 1e-9);
    double scale = max_abs(rat, (size_t)d * d), md = 0;
    for (int i = 0; i < d * d; i++)
        md = fmax(md, fabs(at[i] - rat[i]));
    CHECK(md <= 1e-6 * scale);
    if (md > 1e-6 * scale)
        fprintf(stderr, "  max |at - ref| = %g (max |ref| = %g)\n", md, scale);
    /* null space: v orthogonal to both columns of wq (Gram-Schmidt of e_j against them) */
    double u[2][T_D];
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < d; j++)
            u[k][j] = wq[j * 2 + k];
        for (int m = 0; m < k; m++) {
            double dot = 0;
            for (int j = 0; j < d; j++)
                dot += u[k][j] * u[m][j];
            for (int j = 0; j < d; j++)
                u[k][j] -= dot * u[m][j];
        }
        double nr = 0;
        for (int j = 0; j < d; j++)
            nr += u[k][j] * u[k][j];
        for (int j = 0; j < d; j++)
            u[k][j] /= sqrt(nr);
    }
    double worst = 0;
    for (int e0 = 0; e0 < d; e0++) {
        double v[T_D] = {0};
        v[e0] = 1;
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < d; j++)
                v[j] -= u[k][e0] * u[k][j];
        for (int c = 0; c < d; c++) { /* (v^T at)_c */
            double acc = 0;
            for (int i = 0; i < d; i++)
                acc += v[i] * at[i * d + c];
            worst = fmax(worst, fabs(acc));
        }
    }
    CHECK(worst <= 1e-6 * scale);
    if (worst > 1e-6 * scale)
        fprintf(stderr, "  null-space row of the map: %g (map scale %g)\n", worst, scale);
    /* held-out R of the float, int8 and int4 maps against the reference's */
    static const char *const precs[] = {"float", "int8", "int4"};
    for (int p = 0; p < 3; p++) {
        float a[T_D * T_D];
        for (int r = 0; r < d; r++)
            for (int k = 0; k < d; k++)
                a[r * d + k] = at[k * d + r];
        if (p)
            quantize_rows(a, d, precs[p]);
        float *yh = malloc(sizeof(float) * h * d), atq[T_D * T_D];
        for (int r = 0; r < d; r++)
            for (int k = 0; k < d; k++)
                atq[k * d + r] = a[r * d + k];
        qs_ridge_apply(yq + (size_t)h * d, h, d, atq, b, yh);
        double rl = qs_recovery(yf + (size_t)h * d, yq + (size_t)h * d, yh, (size_t)h * d, NULL);
        double rr = ref_recovery(rat, rb, d, precs[p], yq + (size_t)h * d, yf + (size_t)h * d, h);
        CHECK_NEAR(rl, rr, 1e-6);
        CHECK(rr > 0.5); /* the 2-D error is linear in yq: the map recovers most of it */
        free(yh);
    }
    free(yq);
    free(yf);
}

/* The fit's figures: lambda, the rank kept and the cut. */
static void test_ridge_info(void)
{
    int n = T_N, d = T_D;
    float *yq = malloc(sizeof(float) * n * d), *yf = malloc(sizeof(float) * n * d), wq[T_D * 2];
    toy_data(8, yq, yf, wq);
    float at[T_D * T_D], b[T_D];
    struct qs_ridge_info info;
    qs_err err;
    CHECK(qs_ridge_map_info(yq, yf, n, d, -1, at, b, &info, &err) == 0);
    CHECK(info.rank_kept == 2);
    CHECK(info.lambda > 0 && info.eig_max > 0);
    CHECK_REL(info.cut, QS_RIDGE_REL_CUT * info.eig_max, 1e-12);
    CHECK(qs_ridge_map_info(yq, yf, n, d, 0.5, at, b, &info, &err) == 0);
    CHECK(info.lambda == 0.5 && info.rank_kept == 2);
    /* a constant yq: nothing to fit, the map is 0 and b is mean(yf) */
    for (int i = 0; i < n * d; i++)
        yq[i] = 3.0f;
    CHECK(qs_ridge_map_info(yq, yf, n, d, -1, at, b, &info, &err) == 0);
    CHECK(info.rank_kept == 0);
    for (int i = 0; i < d * d; i++)
        CHECK(at[i] == 0);
    free(yq);
    free(yf);
}

/* ---- digits ------------------------------------------------------------------------------ */

/* The digits MLP on its data, weights int3 per tensor (the Q1 study's default), bench updated. */
static struct qs_bench *open_digits(void)
{
    qs_err e;
    struct qs_bench *b = qs_bench_new();
    struct qs_mlp *m;
    struct qs_dataset *d;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    qs_qopts_default(&r.opt);
    r.roles = QS_ROLE_W;
    r.amode = QS_AMODE_DYNAMIC;
    if (qs_mlp_load("datasets/models/digits-mlp.safetensors", QS_ACT_RELU, 0, &m, &e) < 0 ||
        qs_bench_set_model(b, m, "digits", &e) < 0 ||
        qs_dataset_load_csv("datasets/digits.csv", NULL, &d, &e) < 0 ||
        qs_bench_set_data(b, d, "digits.csv", &e) < 0 || qs_bench_ready(b, &e) < 0 ||
        qs_format_parse("int3", &r.fmt, &e) < 0 || qs_bench_add_rule(b, &r, NULL, &e) < 0 ||
        qs_bench_update(b, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* R of `correct LAYER linear prec=P` on bench b (the correction is removed again). */
static double bench_r(struct qs_bench *b, int i, const char *prec, double *lam, int *rank)
{
    qs_err e;
    if (qs_analysis_correct(b, i, QS_CORR_LINEAR, 0, prec, -1, NULL, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return NAN;
    }
    double r = b->ls[i].corr.recovery;
    if (lam)
        *lam = b->ls[i].corr.lambda;
    if (rank)
        *rank = b->ls[i].corr.rank_kept;
    qs_analysis_uncorrect(b, i);
    return r;
}

/* digits fc1 (rank 59 of 64): R of the float, int8 and int4 maps equal the float64 reference's
 * (on today's main R_lin_q4 was 0.306 with one thread, 0.457 with two). */
static void test_ridge_digits_fc1_vs_float64(void)
{
    struct qs_bench *b = open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    int i = 1, d = b->model->layers[i].out;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB], *ft = &b->f_acts[QS_TEST];
    const struct qs_acts *qc = &b->q_acts[QS_CALIB], *qt = &b->q_acts[QS_TEST];
    int nc = fc->n, nt = ft->n;
    float *yq_c = malloc(sizeof(float) * nc * d), *yq_t = malloc(sizeof(float) * nt * d);
    qs_err e;
    CHECK(qs_bench_layer_forward(b, i, qc->in[i], nc, QS_ROLE_W | QS_ROLE_A, 0, yq_c, &e) == 0);
    CHECK(qs_bench_layer_forward(b, i, qt->in[i], nt, QS_ROLE_W | QS_ROLE_A, 0, yq_t, &e) == 0);
    double *rat = malloc(sizeof(double) * d * d), *rb = malloc(sizeof(double) * d), rlam;
    int rank;
    ref_ridge(yq_c, fc->pre[i], nc, d, -1, rat, rb, &rlam, &rank);
    CHECK(rank < d); /* rank-deficient: dead ReLUs upstream */
    static const char *const precs[] = {"float", "int8", "int4"};
    for (int p = 0; p < 3; p++) {
        double lam = 0;
        int kept = -1;
        double rl = bench_r(b, i, precs[p], &lam, &kept);
        double rr = ref_recovery(rat, rb, d, precs[p], yq_t, ft->pre[i], nt);
        CHECK_NEAR(rl, rr, 1e-6);
        CHECK_REL(lam, rlam, 1e-9);
        CHECK(kept == rank);
    }
    free(yq_c);
    free(yq_t);
    free(rat);
    free(rb);
    qs_bench_free(b);
}

/* R of the map fitted on (yq_c, yf_c) with prec, on the held-out (yq_t, yf_t), as the bench
 * computes it (map in float, quantized per output row, applied in float). */
static double map_r(const float *yq_c, const float *yf_c, int nc, const float *yq_t,
                    const float *yf_t, int nt, int d, const char *prec)
{
    float *at = malloc(sizeof(float) * d * d), *a = malloc(sizeof(float) * d * d);
    float *b = malloc(sizeof(float) * d), *yh = malloc(sizeof(float) * nt * d);
    qs_err e;
    double r = NAN;
    if (qs_ridge_map(yq_c, yf_c, nc, d, -1, at, b, NULL, &e) == 0) {
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++)
                a[i * d + k] = at[k * d + i];
        if (strcmp(prec, "float"))
            quantize_rows(a, d, prec);
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++)
                at[k * d + i] = a[i * d + k];
        qs_ridge_apply(yq_t, nt, d, at, b, yh);
        r = qs_recovery(yf_t, yq_t, yh, (size_t)nt * d, NULL);
    }
    free(at);
    free(a);
    free(b);
    free(yh);
    return r;
}

/* The map with 1 and 2 OpenBLAS threads on the same pre-activations: every digits layer's
 * R_lin_float, R_lin_q8 and R_lin_q4 agree to 1e-6 (on today's main R_lin_q4 of fc1 moved by
 * 0.15). Then the whole pipeline, bench included, for R_lin_q4. */
static void test_ridge_thread_count(void)
{
    static const char *const precs[] = {"float", "int8", "int4"};
    struct qs_bench *b = open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB], *ft = &b->f_acts[QS_TEST];
    int nc = fc->n, nt = ft->n;
    for (int i = 0; i < 3; i++) {
        int d = b->model->layers[i].out;
        float *yq_c = malloc(sizeof(float) * nc * d), *yq_t = malloc(sizeof(float) * nt * d);
        qs_err e;
        CHECK(qs_bench_layer_forward(b, i, b->q_acts[QS_CALIB].in[i], nc, QS_ROLE_W, 0, yq_c, &e) ==
              0);
        CHECK(qs_bench_layer_forward(b, i, b->q_acts[QS_TEST].in[i], nt, QS_ROLE_W, 0, yq_t, &e) ==
              0);
        for (int p = 0; p < 3; p++) {
            double r[2];
            for (int t = 0; t < 2; t++) {
                openblas_set_num_threads(t + 1);
                r[t] = map_r(yq_c, fc->pre[i], nc, yq_t, ft->pre[i], nt, d, precs[p]);
            }
            CHECK_NEAR(r[0], r[1], 1e-6);
            if (!(fabs(r[0] - r[1]) <= 1e-6))
                fprintf(stderr, "  layer %d %s: R %.9f (1 thread) vs %.9f (2)\n", i, precs[p], r[0],
                        r[1]);
        }
        free(yq_c);
        free(yq_t);
    }
    qs_bench_free(b);
    /* End to end: benches built under 1 and 2 threads. Their float32 forward passes may differ
     * in the last bit (sgemm), which the map no longer amplifies. */
    double r[2][3];
    for (int t = 0; t < 2; t++) {
        openblas_set_num_threads(t + 1);
        struct qs_bench *bt = open_digits();
        CHECK(bt != NULL);
        if (!bt)
            break;
        for (int i = 0; i < 3; i++)
            r[t][i] = bench_r(bt, i, "int4", NULL, NULL);
        qs_bench_free(bt);
    }
    for (int i = 0; i < 3; i++)
        CHECK_NEAR(r[0][i], r[1][i], 1e-6);
    /* the synthetic map itself, with enough rows for OpenBLAS to split the work */
    int n = 4096, d = 64;
    float *yq = malloc(sizeof(float) * n * d), *yf = malloc(sizeof(float) * n * d);
    qs_rng rg;
    qs_rng_seed(&rg, 3);
    for (int s = 0; s < n; s++) { /* rank 8 in 64 dimensions, as a layer behind dead ReLUs */
        double z[8];
        for (int k = 0; k < 8; k++)
            z[k] = qs_rng_normal(&rg);
        for (int j = 0; j < d; j++) {
            double a = 0;
            for (int k = 0; k < 8; k++)
                a += z[k] * sin(1.0 + j * 0.37 + k * 1.91);
            yq[s * d + j] = (float)a;
            yf[s * d + j] = (float)(a + 0.1 * z[j % 8] * cos(j + 0.5));
        }
    }
    float *at[2], b2[2][64];
    for (int t = 0; t < 2; t++) {
        openblas_set_num_threads(t + 1);
        at[t] = malloc(sizeof(float) * d * d);
        qs_err e;
        CHECK(qs_ridge_map(yq, yf, n, d, -1, at[t], b2[t], NULL, &e) == 0);
    }
    double m = 0, md = 0;
    for (int i = 0; i < d * d; i++) {
        m = fmax(m, fabs(at[0][i]));
        md = fmax(md, fabs(at[0][i] - at[1][i]));
    }
    CHECK(md <= 1e-6 * m);
    openblas_set_num_threads(2);
    free(at[0]);
    free(at[1]);
    free(yq);
    free(yf);
}

TEST_MAIN("ridge", TEST_CASE(test_ridge_rank2_vs_float64), TEST_CASE(test_ridge_info),
          TEST_CASE(test_ridge_digits_fc1_vs_float64), TEST_CASE(test_ridge_thread_count))
