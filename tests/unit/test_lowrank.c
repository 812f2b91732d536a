/* test_lowrank.c - LoRC, L2QER, QERA, EoRA, the ridge recovery map and the recovery score.
 *
 * Independent references: numpy float64 corrections and ridge map in tests/fixtures/svd_corr.*
 * (tests/tools/make_svd_fixtures.py; the ridge map there solved as an augmented lstsq, not the
 * normal equations), LAPACK sgels (qs_lstsq) on centred data, Eckart-Young (the tail energy from
 * the exact singular values), and the identities between the methods (LQER with s = 1 is LoRC, QERA
 * with R = I is LoRC, EoRA = exact QERA). Run from the repository root. */
#include "qscope/lowrank.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static float *gaussian(int m, int n, uint64_t seed)
{
    qs_rng r;
    qs_rng_seed(&r, seed);
    float *a = malloc((size_t)m * n * sizeof *a);
    for (size_t i = 0; i < (size_t)m * n; i++)
        a[i] = (float)qs_rng_normal(&r);
    return a;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* Correlated inputs x: (n, in) and their autocorrelation rxx: (in, in). */
static float *correlated_rxx(int n, int in, uint64_t seed)
{
    float *z = gaussian(n, in, seed), *mix = gaussian(in, in, seed + 1);
    float *x = calloc((size_t)n * in, sizeof *x), *r = malloc((size_t)in * in * sizeof *r);
    for (int i = 0; i < in; i++) /* rows of mix decay: a few input directions dominate */
        for (int j = 0; j < in; j++)
            mix[i * in + j] *= (float)pow(0.6, i);
    for (int s = 0; s < n; s++)
        for (int j = 0; j < in; j++) {
            double acc = 0.2 * z[(size_t)s * in + (j + 1) % in];
            for (int t = 0; t < in; t++)
                acc += (double)z[(size_t)s * in + t] * mix[t * in + j];
            x[(size_t)s * in + j] = (float)acc;
        }
    qs_gram(x, n, in, r);
    free(z);
    free(mix);
    free(x);
    return r;
}

/* The correction fixture: arrays by name from svd_corr.bin, results from svd_corr.json. */
static cJSON *fix_json;
static char *fix_bin;
static size_t fix_len;

static int load_corr(void)
{
    if (fix_json)
        return 0;
    FILE *f = fopen("tests/fixtures/svd_corr.json", "rb");
    if (!f)
        return -1;
    static char js[1 << 16];
    size_t n = fread(js, 1, sizeof js - 1, f);
    fclose(f);
    js[n] = 0;
    fix_json = cJSON_Parse(js);
    f = fopen("tests/fixtures/svd_corr.bin", "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    fix_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    fix_bin = malloc(fix_len);
    if (fread(fix_bin, 1, fix_len, f) != fix_len)
        fix_len = 0;
    fclose(f);
    return fix_json && fix_len ? 0 : -1;
}

static const float *fix_array(const char *name, int *rows, int *cols)
{
    cJSON *a = cJSON_GetObjectItem(cJSON_GetObjectItem(fix_json, "arrays"), name);
    cJSON *shape = cJSON_GetObjectItem(a, "shape");
    *rows = cJSON_GetArrayItem(shape, 0)->valueint;
    *cols = cJSON_GetArraySize(shape) > 1 ? cJSON_GetArrayItem(shape, 1)->valueint : 1;
    return (const float *)(fix_bin + 4 * (size_t)cJSON_GetObjectItem(a, "offset")->valueint);
}

/* results[name] as floats (caller frees) */
static float *fix_result(const char *name, int *count)
{
    cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(fix_json, "results"), name);
    *count = cJSON_GetArraySize(v);
    float *out = malloc((size_t)*count * sizeof *out);
    for (int i = 0; i < *count; i++)
        out[i] = (float)cJSON_GetArrayItem(v, i)->valuedouble;
    return out;
}

static double fix_number(const char *name)
{
    return cJSON_GetObjectItem(cJSON_GetObjectItem(fix_json, "results"), name)->valuedouble;
}

/* ---- LoRC ---------------------------------------------------------------------------------- */

static void test_lorc_full_rank_is_exact(void)
{
    int out = 12, in = 9;
    float *e = gaussian(out, in, 1), *c = malloc(sizeof(float) * out * in);
    float *l = malloc(sizeof(float) * out * in), *rt = malloc(sizeof(float) * in * in);
    qs_err err;
    CHECK(qs_lowrank_lorc(e, out, in, in, c, l, rt, &err) == 0);
    CHECK(max_diff(c, e, (size_t)out * in) <= 1e-5 * max_abs(e, (size_t)out * in));
    /* c = l rt */
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++) {
            double acc = 0;
            for (int t = 0; t < in; t++)
                acc += (double)l[i * in + t] * rt[t * in + j];
            CHECK_NEAR(acc, c[i * in + j], 1e-5);
        }
    free(e);
    free(c);
    free(l);
    free(rt);
}

static void test_lorc_eckart_young(void)
{
    int out = 40, in = 30;
    float *e = gaussian(out, in, 2), *c = malloc(sizeof(float) * out * in);
    double sv[30];
    qs_err err;
    CHECK(qs_svd_values(e, out, in, sv, &err) == 0);
    for (int r = 1; r <= 30; r += 7) {
        CHECK(qs_lowrank_lorc(e, out, in, r, c, NULL, NULL, &err) == 0);
        double resid = 0, tail = 0;
        for (size_t i = 0; i < (size_t)out * in; i++)
            resid += ((double)e[i] - c[i]) * ((double)e[i] - c[i]);
        for (int i = r; i < 30; i++)
            tail += sv[i] * sv[i];
        CHECK_REL(resid, tail, 1e-4);
    }
    free(e);
    free(c);
}

static void test_bad_rank_messages(void)
{
    float e[120] = {0}, c[120], s[12], rxx[144] = {0};
    for (int j = 0; j < 12; j++) {
        s[j] = 1;
        rxx[j * 12 + j] = 1;
    }
    qs_err err = {{0}};
    CHECK(qs_lowrank_lorc(e, 10, 12, 20, c, NULL, NULL, &err) == -1);
    CHECK_STR(err.msg, "lorc: rank 20 exceeds min(out, in) = 10");
    CHECK(qs_lowrank_lqer(e, 10, 12, s, 11, c, NULL, NULL, &err) == -1);
    CHECK_STR(err.msg, "lqer: rank 11 exceeds min(out, in) = 10");
    CHECK(qs_lowrank_qera(e, 10, 12, rxx, 0.01, 0, c, NULL, NULL, &err) == -1);
    CHECK_STR(err.msg, "qera: rank 0 must be at least 1");
    CHECK(qs_lowrank_eora(e, 10, 12, rxx, 0.01, -3, c, NULL, NULL, &err) == -1);
    CHECK_STR(err.msg, "eora: rank -3 must be at least 1");
    s[4] = -1;
    CHECK(qs_lowrank_lqer(e, 10, 12, s, 2, c, NULL, NULL, &err) == -1);
    CHECK(strstr(err.msg, "s[4] = -1") != NULL);
    memset(rxx, 0, sizeof rxx);
    CHECK(qs_lowrank_qera(e, 10, 12, rxx, 0.01, 2, c, NULL, NULL, &err) == -1);
    CHECK(strstr(err.msg, "autocorrelation is zero") != NULL);
    e[7] = NAN;
    CHECK(qs_lowrank_lorc(e, 10, 12, 2, c, NULL, NULL, &err) == -1);
    CHECK(strstr(err.msg, "non-finite entry at index 7") != NULL);
}

/* ---- against numpy ------------------------------------------------------------------------- */

static void check_vs_numpy(const char *what, const float *got, const char *key)
{
    int n = 0;
    float *ref = fix_result(key, &n);
    double tol = 1e-4 * max_abs(ref, (size_t)n);
    double d = max_diff(got, ref, (size_t)n);
    if (!(d <= tol))
        fprintf(stderr, "  %s vs numpy %s: max diff %.3g > %.3g\n", what, key, d, tol);
    CHECK(d <= tol);
    free(ref);
}

static void test_corrections_vs_numpy(void)
{
    CHECK(load_corr() == 0);
    if (!fix_json)
        return;
    int out, in, r1, c1, rs, cs;
    const float *e = fix_array("e", &out, &in);
    const float *rxx = fix_array("rxx", &r1, &c1);
    const float *s = fix_array("s", &rs, &cs);
    CHECK(r1 == in && c1 == in && rs == in);
    int r = (int)fix_number("rank");
    double damp = fix_number("damp");
    float *c = malloc(sizeof(float) * out * in);
    qs_err err;
    CHECK(qs_lowrank_lorc(e, out, in, r, c, NULL, NULL, &err) == 0);
    check_vs_numpy("lorc", c, "lorc");
    CHECK(qs_lowrank_lqer(e, out, in, s, r, c, NULL, NULL, &err) == 0);
    check_vs_numpy("lqer", c, "lqer");
    CHECK(qs_lowrank_qera(e, out, in, rxx, damp, r, c, NULL, NULL, &err) == 0);
    check_vs_numpy("qera", c, "qera");
    CHECK(qs_lowrank_eora(e, out, in, rxx, damp, r, c, NULL, NULL, &err) == 0);
    check_vs_numpy("eora", c, "qera");
    free(c);
}

/* ---- identities and the objective ---------------------------------------------------------- */

static void test_lqer_unit_scale_is_lorc(void)
{
    int out = 20, in = 15, r = 4;
    float *e = gaussian(out, in, 3), s[15];
    for (int j = 0; j < in; j++)
        s[j] = 1;
    float *c1 = malloc(sizeof(float) * out * in), *c2 = malloc(sizeof(float) * out * in);
    qs_err err;
    CHECK(qs_lowrank_lorc(e, out, in, r, c1, NULL, NULL, &err) == 0);
    CHECK(qs_lowrank_lqer(e, out, in, s, r, c2, NULL, NULL, &err) == 0);
    CHECK(max_diff(c1, c2, (size_t)out * in) <= 1e-6 * max_abs(c1, (size_t)out * in));
    /* a uniform scale changes nothing either */
    for (int j = 0; j < in; j++)
        s[j] = 3.5f;
    CHECK(qs_lowrank_lqer(e, out, in, s, r, c2, NULL, NULL, &err) == 0);
    CHECK(max_diff(c1, c2, (size_t)out * in) <= 1e-5 * max_abs(c1, (size_t)out * in));
    free(e);
    free(c1);
    free(c2);
}

static void test_qera_vs_lorc_objective(void)
{
    int out = 24, in = 20, r = 4;
    float *e = gaussian(out, in, 4);
    float *cl = malloc(sizeof(float) * out * in), *cq = malloc(sizeof(float) * out * in);
    float *ce = malloc(sizeof(float) * out * in);
    qs_err err;
    CHECK(qs_lowrank_lorc(e, out, in, r, cl, NULL, NULL, &err) == 0);

    /* White inputs R = I: QERA's objective is ||E - C||_F^2, the same minimiser as LoRC. */
    float *eye = calloc((size_t)in * in, sizeof *eye);
    for (int j = 0; j < in; j++)
        eye[j * in + j] = 1;
    CHECK(qs_lowrank_qera(e, out, in, eye, 0.0, r, cq, NULL, NULL, &err) == 0);
    double ol = qs_lowrank_objective(e, cl, out, in, eye);
    double oq = qs_lowrank_objective(e, cq, out, in, eye);
    CHECK_REL(oq, ol, 1e-5);
    CHECK(max_diff(cq, cl, (size_t)out * in) <= 1e-5 * max_abs(cl, (size_t)out * in));

    /* Correlated inputs: QERA's objective is strictly lower than LoRC's; EoRA matches QERA. */
    float *rxx = correlated_rxx(500, in, 5);
    CHECK(qs_lowrank_qera(e, out, in, rxx, 0.0, r, cq, NULL, NULL, &err) == 0);
    CHECK(qs_lowrank_eora(e, out, in, rxx, 0.0, r, ce, NULL, NULL, &err) == 0);
    double o0 = qs_lowrank_objective(e, NULL, out, in, rxx);
    ol = qs_lowrank_objective(e, cl, out, in, rxx);
    oq = qs_lowrank_objective(e, cq, out, in, rxx);
    double oe = qs_lowrank_objective(e, ce, out, in, rxx);
    fprintf(stderr, "  E_x||(E-C)x||^2: none %.4g, LoRC %.4g, QERA %.4g, EoRA %.4g\n", o0, ol, oq,
            oe);
    CHECK(oq < 0.9 * ol);
    CHECK(ol < o0);
    CHECK_REL(oe, oq, 1e-4);
    CHECK(max_diff(ce, cq, (size_t)out * in) <= 1e-3 * max_abs(cq, (size_t)out * in));
    /* QERA is the optimum: it beats L2QER too (s = sqrt(diag R) as a stand-in for mean |x|) */
    float s[20];
    for (int j = 0; j < in; j++)
        s[j] = sqrtf(rxx[j * in + j]);
    CHECK(qs_lowrank_lqer(e, out, in, s, r, ce, NULL, NULL, &err) == 0);
    CHECK(oq <= qs_lowrank_objective(e, ce, out, in, rxx) * (1 + 1e-5));

    /* Exact-QERA optimum: the objective equals the tail energy of E R^{1/2}. */
    float w[20], *q = malloc(sizeof(float) * in * in), *half = calloc((size_t)in * in, 4);
    CHECK(qs_sym_eig(rxx, in, w, q, &err) == 0);
    for (int i = 0; i < in; i++)
        for (int j = 0; j < in; j++)
            for (int t = 0; t < in; t++)
                half[i * in + j] += q[i * in + t] * sqrtf(fmaxf(w[t], 0)) * q[j * in + t];
    float *m = calloc((size_t)out * in, sizeof *m);
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++)
            for (int t = 0; t < in; t++)
                m[i * in + j] += e[i * in + t] * half[t * in + j];
    double sv[20], tail = 0;
    CHECK(qs_svd_values(m, out, in, sv, &err) == 0);
    for (int i = r; i < in; i++)
        tail += sv[i] * sv[i];
    CHECK_REL(oq, tail, 1e-3);
    free(q);
    free(half);
    free(m);
    free(e);
    free(cl);
    free(cq);
    free(ce);
    free(eye);
    free(rxx);
}

/* damp = 0 and fewer samples than inputs: R is singular; the pseudo-inverse keeps C finite and
 * still optimal (the objective cannot see R's null space). */
static void test_qera_singular_r(void)
{
    int out = 10, in = 12, r = 3;
    float *e = gaussian(out, in, 13), *rxx = correlated_rxx(5, in, 14);
    float c[120], ce[120], cl[120];
    qs_err err;
    CHECK(qs_lowrank_qera(e, out, in, rxx, 0.0, r, c, NULL, NULL, &err) == 0);
    CHECK(qs_lowrank_eora(e, out, in, rxx, 0.0, r, ce, NULL, NULL, &err) == 0);
    CHECK(qs_lowrank_lorc(e, out, in, r, cl, NULL, NULL, &err) == 0);
    for (int i = 0; i < out * in; i++)
        CHECK(isfinite(c[i]) && isfinite(ce[i]));
    double oq = qs_lowrank_objective(e, c, out, in, rxx);
    double oe = qs_lowrank_objective(e, ce, out, in, rxx);
    double ol = qs_lowrank_objective(e, cl, out, in, rxx);
    double o0 = qs_lowrank_objective(e, NULL, out, in, rxx);
    /* rank(R) = 5 > r = 3: a real residual, lower than LoRC's */
    CHECK(oq < ol && oq > 1e-6 * o0);
    CHECK_NEAR(oe, oq, 1e-4 * o0);
    free(e);
    free(rxx);
}

static void test_factors_multiply_to_c(void)
{
    int out = 10, in = 14, r = 3;
    float *e = gaussian(out, in, 6), *rxx = correlated_rxx(200, in, 7), s[14];
    for (int j = 0; j < in; j++)
        s[j] = 0.5f + 0.1f * j;
    s[3] = 0; /* a dead channel: floored, not a division by zero */
    float c[140], l[30], rt[42];
    qs_err err;
    for (int method = 0; method < 4; method++) {
        int rc = method == 0   ? qs_lowrank_lorc(e, out, in, r, c, l, rt, &err)
                 : method == 1 ? qs_lowrank_lqer(e, out, in, s, r, c, l, rt, &err)
                 : method == 2 ? qs_lowrank_qera(e, out, in, rxx, 0.01, r, c, l, rt, &err)
                               : qs_lowrank_eora(e, out, in, rxx, 0.01, r, c, l, rt, &err);
        CHECK(rc == 0);
        for (int i = 0; i < out; i++)
            for (int j = 0; j < in; j++) {
                double acc = 0;
                for (int t = 0; t < r; t++)
                    acc += (double)l[i * r + t] * rt[t * in + j];
                CHECK_NEAR(acc, c[i * in + j], 1e-5 * (1 + fabs(c[i * in + j])));
                CHECK(isfinite(c[i * in + j]));
            }
    }
    free(e);
    free(rxx);
}

/* ---- ridge map and recovery ---------------------------------------------------------------- */

static void test_ridge_lambda0_is_lstsq(void)
{
    int n = 80, d = 5;
    float *yq = gaussian(n, d, 8), *noise = gaussian(n, d, 9), *mix = gaussian(d, d, 10);
    float *yf = malloc(sizeof(float) * n * d);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double acc = 1.5 + 0.3 * noise[i * d + j];
            for (int t = 0; t < d; t++)
                acc += (double)yq[i * d + t] * ((t == j) + 0.2 * mix[t * d + j]);
            yf[i * d + j] = (float)acc;
        }
    float at[25], b[5], ref[25];
    double lam_used = -1;
    qs_err err;
    CHECK(qs_ridge_map(yq, yf, n, d, 0.0, at, b, &lam_used, &err) == 0);
    CHECK(lam_used == 0);
    /* reference: sgels on column-centred data */
    double mq[5] = {0}, mf[5] = {0};
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            mq[j] += yq[i * d + j] / (double)n;
            mf[j] += yf[i * d + j] / (double)n;
        }
    float *cq = malloc(sizeof(float) * n * d), *cf = malloc(sizeof(float) * n * d);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            cq[i * d + j] = (float)(yq[i * d + j] - mq[j]);
            cf[i * d + j] = (float)(yf[i * d + j] - mf[j]);
        }
    CHECK(qs_lstsq(cq, n, d, cf, d, ref, &err) == 0);
    CHECK(max_diff(at, ref, 25) <= 1e-4);
    for (int j = 0; j < d; j++) {
        double bj = mf[j];
        for (int i = 0; i < d; i++)
            bj -= mq[i] * ref[i * d + j];
        CHECK_NEAR(b[j], bj, 1e-4);
    }
    /* the fit recovers most of the error; auto lambda reports 1e-6 trace(G) / d */
    float *yhat = malloc(sizeof(float) * n * d);
    qs_ridge_apply(yq, n, d, at, b, yhat);
    int undef = -1;
    double rec = qs_recovery(yf, yq, yhat, (size_t)n * d, &undef);
    CHECK(undef == 0 && rec > 0.5 && rec < 1);
    double tr = 0;
    for (size_t i = 0; i < (size_t)n * d; i++)
        tr += (double)cq[i] * cq[i];
    CHECK(qs_ridge_map(yq, yf, n, d, -1, at, b, &lam_used, &err) == 0);
    CHECK_REL(lam_used, 1e-6 * tr / d, 1e-5);
    free(yq);
    free(noise);
    free(mix);
    free(yf);
    free(cq);
    free(cf);
    free(yhat);
}

static void test_ridge_vs_numpy(void)
{
    CHECK(load_corr() == 0);
    if (!fix_json)
        return;
    int n, d, n2, d2, cnt;
    const float *yq = fix_array("yq", &n, &d), *yf = fix_array("yf", &n2, &d2);
    CHECK(n == n2 && d == d2 && d <= 8);
    float at[64], b[8];
    qs_err err;
    CHECK(qs_ridge_map(yq, yf, n, d, fix_number("ridge_lambda"), at, b, NULL, &err) == 0);
    float *ra = fix_result("ridge_at", &cnt), *rb = fix_result("ridge_b", &cnt);
    CHECK(max_diff(at, ra, (size_t)d * d) <= 1e-4);
    CHECK(max_diff(b, rb, (size_t)d) <= 1e-4);
    free(ra);
    free(rb);
}

/* lambda = 0 with a duplicated column: Cholesky fails, the pseudo-inverse gives the minimum-norm
 * least-squares map, whose residual is the least-squares residual of the deduplicated data. */
static void test_ridge_collinear_fallback(void)
{
    int n = 60, d = 3;
    float *base = gaussian(n, 2, 11), *yq = malloc(sizeof(float) * n * d);
    float *yf = malloc(sizeof(float) * n * d);
    qs_rng r;
    qs_rng_seed(&r, 12);
    for (int i = 0; i < n; i++) {
        yq[i * d + 0] = base[i * 2];
        yq[i * d + 1] = base[i * 2];
        yq[i * d + 2] = base[i * 2 + 1];
        for (int j = 0; j < d; j++)
            yf[i * d + j] = yq[i * d + j] + 0.5f * base[i * 2 + (j == 2 ? 0 : 1)] +
                            (float)(0.1 * qs_rng_normal(&r));
    }
    float at[9], b[3], *yhat = malloc(sizeof(float) * n * d);
    qs_err err;
    CHECK(qs_ridge_map(yq, yf, n, d, 0.0, at, b, NULL, &err) == 0);
    for (int i = 0; i < 9; i++)
        CHECK(isfinite(at[i]));
    CHECK_NEAR(at[0 * d + 2], at[1 * d + 2], 1e-4); /* minimum norm: equal split */
    qs_ridge_apply(yq, n, d, at, b, yhat);
    double resid = 0;
    for (int i = 0; i < n * d; i++)
        resid += ((double)yf[i] - yhat[i]) * ((double)yf[i] - yhat[i]);
    /* reference residual: sgels on the two distinct (centred) columns */
    float *x2 = malloc(sizeof(float) * n * 2), *f2 = malloc(sizeof(float) * n * d), ref[6];
    double m[2] = {0}, mf[3] = {0};
    for (int i = 0; i < n; i++) {
        m[0] += base[i * 2] / (double)n;
        m[1] += base[i * 2 + 1] / (double)n;
        for (int j = 0; j < d; j++)
            mf[j] += yf[i * d + j] / (double)n;
    }
    for (int i = 0; i < n; i++) {
        x2[i * 2] = (float)(base[i * 2] - m[0]);
        x2[i * 2 + 1] = (float)(base[i * 2 + 1] - m[1]);
        for (int j = 0; j < d; j++)
            f2[i * d + j] = (float)(yf[i * d + j] - mf[j]);
    }
    CHECK(qs_lstsq(x2, n, 2, f2, d, ref, &err) == 0);
    double rref = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double p = x2[i * 2] * ref[j] + x2[i * 2 + 1] * ref[d + j];
            rref += (f2[i * d + j] - p) * (f2[i * d + j] - p);
        }
    CHECK_REL(resid, rref, 1e-4);
    free(base);
    free(yq);
    free(yf);
    free(yhat);
    free(x2);
    free(f2);
}

static void test_recovery(void)
{
    /* before: (1-0)^2 + (2-0)^2 = 5; after: 0 + 1 = 1: R = 0.8 */
    float yf[2] = {1, 2}, yq[2] = {0, 0}, yhat[2] = {1, 1};
    int undef = -1;
    CHECK_NEAR(qs_recovery(yf, yq, yhat, 2, &undef), 0.8, 1e-12);
    CHECK(undef == 0);
    /* worse than doing nothing: negative */
    float bad[2] = {3, 4};
    CHECK_NEAR(qs_recovery(yf, yq, bad, 2, NULL), 1 - 8.0 / 5, 1e-12);
    /* no error before: 0 and flagged */
    CHECK(qs_recovery(yf, yf, yhat, 2, &undef) == 0);
    CHECK(undef == 1);
    qs_err err = {{0}};
    float at[1], b[1];
    CHECK(qs_ridge_map(yq, yf, 0, 1, 0.0, at, b, NULL, &err) == -1);
    CHECK(strstr(err.msg, "empty") != NULL);
}

static int cleanup(void)
{
    cJSON_Delete(fix_json);
    free(fix_bin);
    return 0;
}

TEST_MAIN_CLEANUP("lowrank", cleanup, TEST_CASE(test_lorc_full_rank_is_exact),
                  TEST_CASE(test_lorc_eckart_young), TEST_CASE(test_bad_rank_messages),
                  TEST_CASE(test_corrections_vs_numpy), TEST_CASE(test_lqer_unit_scale_is_lorc),
                  TEST_CASE(test_qera_vs_lorc_objective), TEST_CASE(test_qera_singular_r),
                  TEST_CASE(test_factors_multiply_to_c), TEST_CASE(test_ridge_lambda0_is_lstsq),
                  TEST_CASE(test_ridge_vs_numpy), TEST_CASE(test_ridge_collinear_fallback),
                  TEST_CASE(test_recovery))
