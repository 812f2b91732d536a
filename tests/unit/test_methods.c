/* test_methods.c - the quantizer methods (methods.h) against independent float64 references:
 * GPTQ against a plain OBQ loop (explicit inverse-Hessian downdates, no Cholesky, no batches),
 * GPTQ vs round-to-nearest on the digits MLP and the PyTorch-trained MLP, Hadamard rotations,
 * AWQ and SmoothQuant against their formulas, imatrix scale search against a brute-force scan.
 * Measured ratios are printed as "  ratio ..." lines on stderr. */
#include <cjson/cJSON.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/format.h"
#include "qscope/methods.h"
#include "test.h"

static void fmt(const char *name, const char *opts, struct qs_format *f, struct qs_qopts *o)
{
    qs_err e;
    if (qs_format_parse(name, f, &e) < 0)
        fprintf(stderr, "  %s\n", e.msg);
    qs_qopts_default(o);
    char buf[128];
    snprintf(buf, sizeof buf, "%s", opts ? opts : "");
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "))
        if (qs_qopts_parse_token(o, tok, &e) < 0)
            fprintf(stderr, "  %s\n", e.msg);
}

/* x: (n, c) Gaussian with correlated columns (a random mixing) and column scales 0.2..2. */
static float *corr_inputs(int n, int c, uint64_t seed)
{
    qs_rng g;
    qs_rng_seed(&g, seed);
    float *x = malloc((size_t)n * c * sizeof *x);
    double *z = malloc((size_t)c * sizeof *z);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < c; j++)
            z[j] = qs_rng_normal(&g);
        for (int j = 0; j < c; j++) {
            double v = z[j] + 0.6 * z[(j + 1) % c] + 0.3 * z[(j + 5) % c];
            x[(size_t)i * c + j] = (float)(v * (0.2 + 1.8 * (double)j / c));
        }
    }
    free(z);
    return x;
}

static float *gauss(int n, double sd, uint64_t seed)
{
    qs_rng g;
    qs_rng_seed(&g, seed);
    float *a = malloc((size_t)n * sizeof *a);
    for (int i = 0; i < n; i++)
        a[i] = (float)(sd * qs_rng_normal(&g));
    return a;
}

/* r = x^T x in double. */
static double *gram_d(const float *x, int n, int c)
{
    double *r = calloc((size_t)c * c, sizeof *r);
    for (int i = 0; i < n; i++)
        for (int a = 0; a < c; a++)
            for (int b = 0; b < c; b++)
                r[(size_t)a * c + b] += (double)x[(size_t)i * c + a] * x[(size_t)i * c + b];
    return r;
}

/* ||x w^T - x q^T||_F^2 by explicit loops. */
static double pre_err(const float *x, int n, const float *w, const float *q, int rows, int c)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++) {
            double d = 0.0;
            for (int j = 0; j < c; j++)
                d += (double)x[(size_t)i * c + j] *
                     ((double)w[(size_t)r * c + j] - (double)q[(size_t)r * c + j]);
            s += d * d;
        }
    return s;
}

/* ---- the block quantizer (the one touch in pack.c) ---------------------------------------- */

/* Fitting each block on its values and rounding them gives qs_quant_fake's output bit for bit. */
static void test_quantizer_matches_fake(void)
{
    static const char *cases[][2] = {{"int4", "gran=channel"},
                                     {"int3", "gran=group:16 asym"},
                                     {"int4", "gran=tensor"},
                                     {"int4", "gran=group:32 clip=mse"},
                                     {"fp8-e4m3", "gran=channel"},
                                     {"nf4", ""},
                                     {"mxfp4", ""},
                                     {"nvfp4", ""},
                                     {"int8", "gran=group:20"},
                                     {"fp4-e2m1", "gran=group:16 clip=pct:99"}};
    const int rows = 7, cols = 100;
    float *w = gauss(rows * cols, 1.0, 3), *ref = malloc(sizeof(float) * rows * cols),
          *got = malloc(sizeof(float) * rows * cols);
    w[5] = 9.0f;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct qs_format f;
        struct qs_qopts o;
        qs_err e;
        fmt(cases[c][0], cases[c][1], &f, &o);
        CHECK(qs_quant_fake(&f, &o, w, rows, cols, ref, &e) == 0);
        struct qs_quantizer *q = NULL;
        CHECK(qs_quantizer_new(&f, &o, w, rows, cols, &q, &e) == 0);
        if (!q)
            continue;
        int seg = qs_quantizer_block(q);
        for (int r = 0; r < rows; r++)
            for (int c0 = 0; c0 < cols; c0 += seg) {
                int len = cols - c0 < seg ? cols - c0 : seg;
                struct qs_qblock b;
                CHECK(qs_quantizer_fit(q, w + r * cols + c0, len, r, c0, &b, &e) == 0);
                qs_quantizer_round(q, &b, w + r * cols + c0, got + r * cols + c0, len);
            }
        /* a column at a time, each row with its own block (as GPTQ rounds) */
        if (!qs_quantizer_shared(q)) {
            int nblk = (cols + seg - 1) / seg;
            struct qs_qblock *bl = calloc((size_t)rows * nblk, sizeof *bl);
            float colx[7], colq[7];
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < nblk; b++) {
                    int len = cols - b * seg < seg ? cols - b * seg : seg;
                    qs_quantizer_fit(q, w + r * cols + b * seg, len, r, b * seg, &bl[r * nblk + b],
                                     &e);
                }
            for (int c = 0; c < cols; c++) {
                for (int r = 0; r < rows; r++)
                    colx[r] = w[r * cols + c];
                qs_quantizer_round_each(q, bl + c / seg, (size_t)nblk, colx, colq, rows);
                for (int r = 0; r < rows; r++)
                    CHECK(colq[r] == ref[r * cols + c]);
            }
            free(bl);
        }
        int same = memcmp(ref, got, sizeof(float) * rows * cols) == 0;
        if (!same)
            fprintf(stderr, "  %s %s differs from qs_quant_fake\n", cases[c][0], cases[c][1]);
        CHECK(same);
        qs_quantizer_free(q);
    }
    struct qs_format f;
    struct qs_qopts o;
    qs_err e;
    struct qs_quantizer *q = NULL;
    fmt("int4", "round=stochastic", &f, &o);
    CHECK(qs_quantizer_new(&f, &o, w, rows, cols, &q, &e) < 0 && strstr(e.msg, "stochastic"));
    free(w);
    free(ref);
    free(got);
}

/* ---- GPTQ ------------------------------------------------------------------------------- */

/* Gauss-Jordan inverse with partial pivoting, a: (n, n) -> inv. */
static void gj_inverse(const double *a, int n, double *inv)
{
    double *m = malloc(sizeof(double) * n * 2 * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 2 * n; j++)
            m[i * 2 * n + j] = j < n ? a[i * n + j] : (j - n == i);
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int i = c + 1; i < n; i++)
            if (fabs(m[i * 2 * n + c]) > fabs(m[p * 2 * n + c]))
                p = i;
        for (int j = 0; j < 2 * n; j++) {
            double t = m[c * 2 * n + j];
            m[c * 2 * n + j] = m[p * 2 * n + j];
            m[p * 2 * n + j] = t;
        }
        double d = m[c * 2 * n + c];
        for (int j = 0; j < 2 * n; j++)
            m[c * 2 * n + j] /= d;
        for (int i = 0; i < n; i++)
            if (i != c) {
                double f = m[i * 2 * n + c];
                for (int j = 0; j < 2 * n; j++)
                    m[i * 2 * n + j] -= f * m[c * 2 * n + j];
            }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            inv[i * n + j] = m[i * 2 * n + n + j];
    free(m);
}

/* Plain float64 OBQ (Frantar & Alistarh 2022): quantize column c, spread its error over the
 * columns not yet quantized with H^-1[c, :] / H^-1[c, c], then downdate H^-1 by removing c.
 * Groups are fitted (through the same format quantizer) when their first column is reached
 * (in order), or all up front from W (act order: static groups), as methods.h defines. */
static void obq_ref(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                    int cols, const double *h, double damp, int act, float *out)
{
    const int n = cols;
    double *hh = malloc(sizeof(double) * n * n), *hi = malloc(sizeof(double) * n * n);
    double *W = malloc(sizeof(double) * rows * n);
    int *dead = calloc(n, sizeof(int)), *order = malloc(sizeof(int) * n), *done = calloc(n, 4);
    memcpy(hh, h, sizeof(double) * n * n);
    double mean = 0;
    for (int j = 0; j < n; j++) {
        dead[j] = h[j * n + j] == 0.0;
        if (dead[j])
            hh[j * n + j] = 1.0;
        mean += hh[j * n + j];
    }
    mean /= n;
    for (int j = 0; j < n; j++)
        hh[j * n + j] += damp * mean;
    gj_inverse(hh, n, hi);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < n; j++)
            W[r * n + j] = dead[j] ? 0.0 : w[r * n + j];
    for (int j = 0; j < n; j++)
        order[j] = j;
    if (act) /* decreasing diag (dead ones count as 1), stable: insertion sort */
        for (int i = 1; i < n; i++)
            for (int k = i; k > 0; k--) {
                double a = hh[order[k] * n + order[k]] - damp * mean;
                double b = hh[order[k - 1] * n + order[k - 1]] - damp * mean;
                if (a > b) {
                    int t = order[k];
                    order[k] = order[k - 1];
                    order[k - 1] = t;
                } else {
                    break;
                }
            }
    float *w0 = malloc(sizeof(float) * rows * n);
    for (int i = 0; i < rows * n; i++)
        w0[i] = (float)W[i];
    struct qs_quantizer *q = NULL;
    qs_err e;
    if (qs_quantizer_new(f, o, w0, rows, cols, &q, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    int seg = qs_quantizer_block(q), nblk = (n + seg - 1) / seg;
    struct qs_qblock *blk = calloc((size_t)rows * nblk, sizeof *blk);
    float *gx = malloc(sizeof(float) * seg);
    if (act || qs_quantizer_shared(q))
        for (int r = 0; r < rows; r++)
            for (int b = 0; b < nblk; b++) {
                int len = n - b * seg < seg ? n - b * seg : seg;
                qs_quantizer_fit(q, w0 + r * n + b * seg, len, r, b * seg, &blk[r * nblk + b], &e);
            }
    for (int k = 0; k < n; k++) {
        int c = order[k];
        if (!act && !qs_quantizer_shared(q) && c % seg == 0)
            for (int r = 0; r < rows; r++) {
                int len = n - c < seg ? n - c : seg;
                for (int m = 0; m < len; m++)
                    gx[m] = (float)W[r * n + c + m];
                qs_quantizer_fit(q, gx, len, r, c, &blk[r * nblk + c / seg], &e);
            }
        double d = hi[c * n + c];
        for (int r = 0; r < rows; r++) {
            float x = (float)W[r * n + c], qv;
            qs_quantizer_round(q, &blk[r * nblk + c / seg], &x, &qv, 1);
            double err = (W[r * n + c] - qv) / d;
            for (int j = 0; j < n; j++)
                if (!done[j] && j != c)
                    W[r * n + j] -= err * hi[c * n + j];
            W[r * n + c] = qv;
        }
        done[c] = 1;
        for (int a = 0; a < n; a++) /* H^-1 <- H^-1 - H^-1[:, c] H^-1[c, :] / d */
            for (int b = 0; b < n; b++)
                if (a != c && b != c)
                    hi[a * n + b] -= hi[a * n + c] * hi[c * n + b] / d;
        for (int a = 0; a < n; a++)
            hi[a * n + c] = hi[c * n + a] = 0.0;
        hi[c * n + c] = 1.0; /* keeps the row out of later updates (its entries are 0) */
    }
    for (int i = 0; i < rows * n; i++)
        out[i] = (float)W[i];
    qs_quantizer_free(q);
    free(blk);
    free(gx);
    free(w0);
    free(hh);
    free(hi);
    free(W);
    free(dead);
    free(order);
    free(done);
}

/* GPTQ (Cholesky of H^-1, lazy batches) equals the plain float64 OBQ loop to rounding, for
 * per-channel and group scales, batches that cut groups, act order and a dead input. */
static void test_gptq_matches_obq(void)
{
    static const struct {
        const char *fmt, *opts;
        int block, act;
    } cases[] = {
        {"int4", "gran=channel", 8, 0},       {"int3", "gran=group:16", 12, 0},
        {"int3", "gran=group:16", 128, 1},    {"int4", "gran=group:12 asym", 5, 0},
        {"fp4-e2m1", "gran=group:16", 16, 0}, {"nf4", "gran=group:24", 7, 1},
        {"int4", "gran=tensor", 10, 0},       {"int2", "gran=channel clip=mse", 9, 1},
    };
    const int rows = 24, cols = 48, n = 300;
    float *x = corr_inputs(n, cols, 11);
    for (int i = 0; i < n; i++)
        x[(size_t)i * cols + 7] = 0.0f; /* a dead input */
    float *w = gauss(rows * cols, 0.5, 12);
    double *h = calloc((size_t)cols * cols, sizeof *h);
    qs_err e;
    CHECK(qs_hessian_add(h, x, n / 2, cols, &e) == 0);
    CHECK(qs_hessian_add(h, x + (size_t)(n / 2) * cols, n - n / 2, cols, &e) == 0);
    double *r = gram_d(x, n, cols);
    for (int i = 0; i < cols * cols; i++)
        CHECK_REL(h[i], 2.0 * r[i], 1e-12);
    float *got = malloc(sizeof(float) * rows * cols), *ref = malloc(sizeof(float) * rows * cols);
    float wmax = 0;
    for (int i = 0; i < rows * cols; i++)
        wmax = fabsf(w[i]) > wmax ? fabsf(w[i]) : wmax;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct qs_format f;
        struct qs_qopts o;
        fmt(cases[c].fmt, cases[c].opts, &f, &o);
        struct qs_gptq_opts g;
        qs_gptq_opts_default(&g);
        g.block = cases[c].block;
        g.act_order = cases[c].act;
        int rcg = qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e);
        if (rcg < 0)
            fprintf(stderr, "  %s\n", e.msg);
        CHECK(rcg == 0);
        obq_ref(&f, &o, w, rows, cols, h, g.damp, g.act_order, ref);
        double md = 0.0;
        int diff = 0;
        for (int i = 0; i < rows * cols; i++) {
            double d = fabs((double)got[i] - ref[i]);
            md = d > md ? d : md;
            diff += d > 1e-6 * wmax;
        }
        if (diff)
            fprintf(stderr, "  %s %s block %d act %d: %d of %d differ, max %g\n", cases[c].fmt,
                    cases[c].opts, cases[c].block, cases[c].act, diff, rows * cols, md);
        CHECK(diff == 0);
        for (int rr = 0; rr < rows; rr++)
            CHECK(got[rr * cols + 7] == 0.0f);
    }
    /* a layer tall enough for GPTQ's row threads (>= 128 rows each) */
    {
        const int tr = 300;
        float *tw = gauss(tr * cols, 0.5, 13);
        float *tg = malloc(sizeof(float) * tr * cols), *tf = malloc(sizeof(float) * tr * cols);
        struct qs_format f;
        struct qs_qopts o;
        fmt("int4", "gran=group:16", &f, &o);
        struct qs_gptq_opts g;
        qs_gptq_opts_default(&g);
        g.block = 12;
        CHECK(qs_gptq(&f, &o, &g, tw, tr, cols, h, tg, NULL, &e) == 0);
        obq_ref(&f, &o, tw, tr, cols, h, g.damp, 0, tf);
        int diff = 0;
        for (int i = 0; i < tr * cols; i++)
            diff += fabs((double)tg[i] - tf[i]) > 1e-6 * 2.5;
        CHECK(diff == 0);
        free(tw);
        free(tg);
        free(tf);
    }
    /* errors: stochastic rounding, a bad damp, an indefinite H without damping */
    struct qs_format f;
    struct qs_qopts o;
    struct qs_gptq_opts g;
    qs_gptq_opts_default(&g);
    fmt("int4", "round=stochastic", &f, &o);
    CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e) < 0);
    fmt("int4", "gran=channel", &f, &o);
    g.damp = -1;
    CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e) < 0 && strstr(e.msg, "damp"));
    g.damp = 0;
    double *bad = calloc((size_t)cols * cols, sizeof *bad);
    for (int i = 0; i < cols; i++)
        bad[i * cols + i] = 1.0;
    bad[1] = bad[cols] = 2.0; /* [[1, 2], [2, 1]]: indefinite */
    CHECK(qs_gptq(&f, &o, &g, w, rows, cols, bad, got, NULL, &e) < 0 &&
          strstr(e.msg, "positive definite"));
    free(bad);
    free(x);
    free(w);
    free(h);
    free(r);
    free(got);
    free(ref);
}

/* GPTQ one column at a time in float, with no batches, no tiles and no threads: after column k
 * (processing order) every later weight of the row becomes w = fmaf(-err, U[k][j], w), one
 * rounding per update, so each weight gets its updates as fused multiply-adds in the order of
 * the columns that cause them; the arithmetic qs_gptq promises whatever its blocking. U is made
 * as qs_gptq makes it (the same damping, reversed order and LAPACK calls on the same array, then
 * rounded to float; test_gptq_factor checks that factor against LAPACK's); scales are fitted
 * where methods.h says. sc (NULL ok): the fitted blocks. */
static void gptq_fma_ref(const struct qs_format *f, const struct qs_qopts *o, const float *w,
                         int rows, int cols, const double *h, double damp, int act, float *out,
                         struct qs_qblock *sc)
{
    const size_t n = (size_t)cols, R = (size_t)rows;
    double *hp = malloc(sizeof(double) * n * n), *dg = malloc(sizeof(double) * n);
    float *u = malloc(sizeof(float) * n * n), *w0 = malloc(sizeof(float) * R * n),
          *W = malloc(sizeof(float) * R * n);
    int *perm = malloc(sizeof(int) * n);
    double mean = 0.0;
    for (size_t j = 0; j < n; j++) {
        dg[j] = h[j * n + j] == 0.0 ? 1.0 : h[j * n + j];
        mean += dg[j];
        perm[j] = (int)j;
    }
    mean /= (double)n;
    if (act) /* decreasing diag, stable */
        for (size_t i = 1; i < n; i++)
            for (size_t k = i; k > 0 && dg[perm[k]] > dg[perm[k - 1]]; k--) {
                int t = perm[k];
                perm[k] = perm[k - 1];
                perm[k - 1] = t;
            }
    for (size_t a = 0; a < n; a++)
        for (size_t b = 0; b < n; b++)
            hp[(n - 1 - a) * n + (n - 1 - b)] =
                a == b ? dg[perm[a]] + damp * mean : h[(size_t)perm[a] * n + (size_t)perm[b]];
    qs_err fe;
    CHECK(qs_gptq_inv_chol(hp, cols, 1, u, &fe) == 0); /* checked against LAPACK below */
    for (size_t r = 0; r < R; r++)
        for (size_t j = 0; j < n; j++)
            w0[r * n + j] = h[j * n + j] == 0.0 ? 0.0f : w[r * n + j];
    struct qs_quantizer *q = NULL;
    qs_err e;
    CHECK(qs_quantizer_new(f, o, w0, rows, cols, &q, &e) == 0);
    const int shared = qs_quantizer_shared(q);
    const size_t seg = (size_t)qs_quantizer_block(q), nblk = shared ? 1 : (n + seg - 1) / seg;
    struct qs_qblock *blk = calloc(R * nblk, sizeof *blk);
    if (shared)
        CHECK(qs_quantizer_fit(q, w0, cols, 0, 0, &blk[0], &e) == 0);
    else if (act)
        for (size_t r = 0; r < R; r++)
            for (size_t b = 0; b < nblk; b++)
                CHECK(qs_quantizer_fit(q, w0 + r * n + b * seg,
                                       (int)(n - b * seg < seg ? n - b * seg : seg), (int)r,
                                       (int)(b * seg), &blk[r * nblk + b], &e) == 0);
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < n; k++)
            W[r * n + k] = w0[r * n + (size_t)perm[k]];
    for (size_t k = 0; k < n; k++) {
        if (!shared && !act && k % seg == 0) /* a group's scales from the weights as updated */
            for (size_t r = 0; r < R; r++)
                CHECK(qs_quantizer_fit(q, W + r * n + k, (int)(n - k < seg ? n - k : seg), (int)r,
                                       (int)k, &blk[r * nblk + k / seg], &e) == 0);
        const float d = u[k * n + k];
        for (size_t r = 0; r < R; r++) {
            float *wr = W + r * n, qv;
            const struct qs_qblock *b = shared ? &blk[0] : &blk[r * nblk + (size_t)perm[k] / seg];
            qs_quantizer_round(q, b, wr + k, &qv, 1);
            const float err = (wr[k] - qv) / d;
            wr[k] = qv;
            for (size_t j = k + 1; j < n; j++)
                wr[j] = fmaf(-err, u[k * n + j], wr[j]);
        }
    }
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < n; k++)
            out[r * n + (size_t)perm[k]] = W[r * n + k];
    if (sc)
        memcpy(sc, blk, R * nblk * sizeof *blk);
    qs_quantizer_free(q);
    free(blk);
    free(hp);
    free(dg);
    free(u);
    free(w0);
    free(W);
    free(perm);
}

/* GPTQ's factor (our blocked Cholesky and block-column inverse on our threads) against LAPACK's
 * dpotrf + dtrtri in double on the same J H J: equal to rounding (float output, so within a few
 * float ulps of the largest entry of its row), and the same bits at any thread count (the BLAS
 * calls split columns, never a sum; a split that cut a sum, or a thread whose block columns
 * were written to the wrong rows, fails here). Sizes around the panel (96) and block-column
 * (64) widths, one matrix wider than any thread split; a matrix that is not positive definite
 * is refused. */
static void test_gptq_factor(void)
{
    static const int sizes[] = {1, 5, 64, 95, 96, 97, 191, 192, 300, 517};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const int n = sizes[si], m = 2 * n + 7;
        float *x = corr_inputs(m, n, 40 + (uint64_t)si);
        double *h = calloc((size_t)n * n, sizeof *h);
        qs_err e;
        CHECK(qs_hessian_add(h, x, m, n, &e) == 0);
        double mean = 0.0;
        for (int j = 0; j < n; j++)
            mean += h[(size_t)j * n + j] / n;
        double *jh = malloc(sizeof(double) * n * n), *hp = malloc(sizeof(double) * n * n);
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++)
                jh[(size_t)(n - 1 - a) * n + (n - 1 - b)] =
                    h[(size_t)a * n + b] + (a == b ? 0.01 * mean : 0.0);
        memcpy(hp, jh, sizeof(double) * n * n);
        CHECK(LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'U', n, hp, n) == 0);
        CHECK(LAPACKE_dtrtri_work(LAPACK_COL_MAJOR, 'U', 'N', n, hp, n) == 0);
        float *u1 = malloc(sizeof(float) * n * n), *ut = malloc(sizeof(float) * n * n);
        double *wk = malloc(sizeof(double) * n * n);
        memcpy(wk, jh, sizeof(double) * n * n);
        CHECK(qs_gptq_inv_chol(wk, n, 1, u1, &e) == 0);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            double rmax = 0.0;
            for (int j = i; j < n; j++)
                rmax = fmax(rmax, fabs(hp[(size_t)(n - 1 - i) * n + (n - 1 - j)]));
            for (int j = 0; j < n; j++) {
                double ref = j >= i ? hp[(size_t)(n - 1 - i) * n + (n - 1 - j)] : 0.0;
                bad += fabs(u1[(size_t)i * n + j] - ref) > 4.0 * FLT_EPSILON * rmax;
            }
        }
        if (bad)
            fprintf(stderr, "  n %d: %d entries of U differ from LAPACK's\n", n, bad);
        CHECK(bad == 0);
        for (int t = 2; t <= 5; t++) {
            memcpy(wk, jh, sizeof(double) * n * n);
            CHECK(qs_gptq_inv_chol(wk, n, t, ut, &e) == 0);
            int same = memcmp(ut, u1, sizeof(float) * n * n) == 0;
            if (!same)
                fprintf(stderr, "  n %d: U at %d threads differs from 1 thread's\n", n, t);
            CHECK(same);
        }
        if (n >= 5) { /* a negative pivot in the second panel (or the first, when small) */
            memcpy(wk, jh, sizeof(double) * n * n);
            const int k = n > 100 ? 100 : n / 2;
            wk[(size_t)k * n + k] = -1.0;
            CHECK(qs_gptq_inv_chol(wk, n, 2, ut, &e) < 0 && strstr(e.msg, "raise damp"));
        }
        free(x);
        free(h);
        free(jh);
        free(hp);
        free(u1);
        free(ut);
        free(wk);
    }
}

/* Every update is a fused multiply-add applied in column order, in the batches (rank-1 and
 * fused sub-batch kernels) and after them (the lazy update's tiles), whatever the batch width,
 * the sub-batch, the row slices the threads take and the kernels (plain C fmaf or AVX2+FMA):
 * the result (the weights and every fitted scale, f32 scales so that a last bit shows) is the
 * column-at-a-time fmaf loop's (gptq_fma_ref) bit for bit; and it is still the float64 OBQ
 * loop's to rounding. A kernel that rounds the product and the sum apart, or sums the k of a
 * batch in two halves, fails here (in the cases whose group scales are fitted from updated
 * weights, where a last bit of a sum moves a scale, and in the wide case below; sgemm's order
 * fails the same way). */
static void test_gptq_bits_any_split(void)
{
    static const struct {
        const char *fmt, *opts;
        int act;
    } cases[] = {
        {"int4", "gran=group:16 scale=f32", 0}, {"int3", "gran=group:16 scale=f32", 1},
        {"int4", "gran=channel scale=f32", 0},  {"nf4", "gran=group:32 scale=f32", 0},
        {"int4", "gran=tensor scale=f32", 0},   {"int3", "gran=channel scale=f32", 1},
    };
    const int rows = 333, cols = 96, n = 400;
    float *x = corr_inputs(n, cols, 21);
    for (int i = 0; i < n; i++)
        x[(size_t)i * cols + 40] = 0.0f; /* a dead input */
    float *w = gauss(rows * cols, 0.5, 22);
    double *h = calloc((size_t)cols * cols, sizeof *h);
    qs_err e;
    CHECK(qs_hessian_add(h, x, n, cols, &e) == 0);
    size_t wn = (size_t)rows * cols, nb = (size_t)rows * (cols / 16);
    float *ref = malloc(sizeof(float) * wn), *got = malloc(sizeof(float) * wn),
          *obq = malloc(sizeof(float) * wn);
    struct qs_qblock *sref = calloc(nb, sizeof *sref), *sgot = calloc(nb, sizeof *sgot);
    static const int subs[] = {1, 3, 16, 40, 256}, thr[] = {1, 2, 3, 8}, blocks[] = {128, 64, 7};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct qs_format f;
        struct qs_qopts o;
        fmt(cases[c].fmt, cases[c].opts, &f, &o);
        struct qs_gptq_opts g;
        qs_gptq_opts_default(&g);
        g.act_order = cases[c].act;
        memset(sref, 0, nb * sizeof *sref);
        gptq_fma_ref(&f, &o, w, rows, cols, h, g.damp, g.act_order, ref, sref);
        int same = 1, runs = 0;
        for (size_t bl = 0; bl < sizeof blocks / sizeof blocks[0]; bl++)
            for (int p = 0; p < 2; p++)
                for (size_t a = 0; a < sizeof subs / sizeof subs[0]; a++)
                    for (size_t b = 0; b < sizeof thr / sizeof thr[0]; b++) {
                        g.block = blocks[bl];
                        g.portable = p;
                        g.sub = subs[a];
                        g.threads = thr[b];
                        memset(sgot, 0, nb * sizeof *sgot);
                        CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, sgot, &e) == 0);
                        int ok = memcmp(got, ref, wn * sizeof *got) == 0;
                        for (size_t i = 0; i < nb; i++) /* the fields a block is rounded with */
                            ok &= sgot[i].s == sref[i].s && sgot[i].inv == sref[i].inv &&
                                  sgot[i].lo == sref[i].lo && sgot[i].hi == sref[i].hi;
                        if (!ok && same) {
                            size_t nd = 0;
                            for (size_t i = 0; i < wn; i++)
                                nd += got[i] != ref[i];
                            fprintf(stderr,
                                    "  %s %s act %d: block %d portable %d sub %d threads %d: "
                                    "%zu of %zu weights differ from the fmaf loop\n",
                                    cases[c].fmt, cases[c].opts, cases[c].act, blocks[bl], p,
                                    subs[a], thr[b], nd, wn);
                        }
                        same &= ok;
                        runs++;
                    }
        CHECK(same);
        CHECK(runs == 120);
        obq_ref(&f, &o, w, rows, cols, h, g.damp, g.act_order, obq);
        int diff = 0;
        for (size_t i = 0; i < wn; i++)
            diff += fabs((double)ref[i] - obq[i]) > 1e-6 * 2.5;
        if (diff)
            fprintf(stderr, "  %s %s act %d: %d of %zu differ from OBQ\n", cases[c].fmt,
                    cases[c].opts, cases[c].act, diff, wn);
        CHECK(diff == 0);
    }
    /* wider than a packed block of U's columns (256) and taller than a packed block of error
     * rows (48) per thread, with edges both ways */
    {
        const int wr = 203, wc = 300;
        float *wx = corr_inputs(500, wc, 23), *ww = gauss(wr * wc, 0.5, 24);
        double *wh = calloc((size_t)wc * wc, sizeof *wh);
        float *wref = malloc(sizeof(float) * wr * wc), *wgot = malloc(sizeof(float) * wr * wc);
        CHECK(qs_hessian_add(wh, wx, 500, wc, &e) == 0);
        struct qs_format f;
        struct qs_qopts o;
        fmt("int4", "gran=group:32 scale=f32", &f, &o);
        struct qs_gptq_opts g;
        qs_gptq_opts_default(&g);
        gptq_fma_ref(&f, &o, ww, wr, wc, wh, g.damp, 0, wref, NULL);
        for (int p = 0; p < 2; p++)
            for (int t = 1; t <= 2; t++) {
                g.portable = p;
                g.threads = t;
                CHECK(qs_gptq(&f, &o, &g, ww, wr, wc, wh, wgot, NULL, &e) == 0);
                int ok = memcmp(wgot, wref, sizeof(float) * wr * wc) == 0;
                if (!ok)
                    fprintf(stderr, "  %dx%d: portable %d threads %d differs from the fmaf loop\n",
                            wr, wc, p, t);
                CHECK(ok);
            }
        free(wx);
        free(ww);
        free(wh);
        free(wref);
        free(wgot);
    }
    /* sub and threads out of range */
    struct qs_format f;
    struct qs_qopts o;
    struct qs_gptq_opts g;
    fmt("int4", "gran=channel", &f, &o);
    qs_gptq_opts_default(&g);
    g.sub = 257;
    CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e) < 0 && strstr(e.msg, "sub"));
    g.sub = 0;
    g.threads = -1;
    CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e) < 0 && strstr(e.msg, "threads"));
    free(x);
    free(w);
    free(h);
    free(ref);
    free(got);
    free(obq);
    free(sref);
    free(sgot);
}

/* The same algorithm run by PyTorch in float64 (tests/tools/make_gptq_fixture.py, following the
 * authors' reference implementation and its min/max quantizer): every case matches to rounding. */
static void test_gptq_torch(void)
{
    FILE *fb = fopen("tests/fixtures/gptq_torch.bin", "rb");
    FILE *fj = fopen("tests/fixtures/gptq_torch.json", "rb");
    CHECK(fb && fj);
    if (!fb || !fj) {
        if (fb)
            fclose(fb);
        if (fj)
            fclose(fj);
        return;
    }
    char js[8192];
    size_t jl = fread(js, 1, sizeof js - 1, fj);
    js[jl] = 0;
    fclose(fj);
    fseek(fb, 0, SEEK_END);
    long nbytes = ftell(fb);
    fseek(fb, 0, SEEK_SET);
    float *blob = malloc((size_t)nbytes);
    CHECK(fread(blob, 1, (size_t)nbytes, fb) == (size_t)nbytes);
    fclose(fb);
    cJSON *j = cJSON_Parse(js);
    CHECK(j != NULL);
    if (!j) {
        free(blob);
        return;
    }
    int rows = cJSON_GetObjectItem(j, "rows")->valueint;
    int cols = cJSON_GetObjectItem(j, "cols")->valueint;
    int n = cJSON_GetObjectItem(j, "n")->valueint;
    const float *w = blob + cJSON_GetObjectItem(j, "w")->valueint;
    const float *x = blob + cJSON_GetObjectItem(j, "x")->valueint;
    qs_err e;
    double *h = calloc((size_t)cols * cols, sizeof *h);
    CHECK(qs_hessian_add(h, x, n, cols, &e) == 0);
    float *got = malloc(sizeof(float) * rows * cols);
    float wmax = 0;
    for (int i = 0; i < rows * cols; i++)
        wmax = fmaxf(wmax, fabsf(w[i]));
    int ncase = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        struct qs_format f;
        struct qs_qopts o;
        fmt(cJSON_GetObjectItem(c, "format")->valuestring,
            cJSON_GetObjectItem(c, "opts")->valuestring, &f, &o);
        struct qs_gptq_opts g;
        qs_gptq_opts_default(&g);
        g.block = cJSON_GetObjectItem(c, "block")->valueint;
        g.act_order = cJSON_GetObjectItem(c, "act_order")->valueint;
        const float *ref = blob + cJSON_GetObjectItem(c, "q")->valueint;
        CHECK(qs_gptq(&f, &o, &g, w, rows, cols, h, got, NULL, &e) == 0);
        int diff = 0;
        double md = 0;
        for (int i = 0; i < rows * cols; i++) {
            double d = fabs((double)got[i] - ref[i]);
            md = fmax(md, d);
            diff += d > 1e-5 * wmax;
        }
        if (diff)
            fprintf(stderr, "  torch case %d (%s %s): %d of %d differ, max %g\n", ncase, f.name,
                    cJSON_GetObjectItem(c, "opts")->valuestring, diff, rows * cols, md);
        CHECK(diff == 0);
        ncase++;
    }
    CHECK(ncase == 6);
    cJSON_Delete(j);
    free(blob);
    free(h);
    free(got);
}

/* Layer inputs of every layer of m for x: ins[i]: (n, in_i), malloc'd. */
static float **layer_inputs(const struct qs_mlp *m, const float *x, int n)
{
    float **ins = calloc((size_t)m->nlayers, sizeof *ins);
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *L = &m->layers[i];
        ins[i] = malloc(sizeof(float) * (size_t)n * L->in);
        if (i == 0) {
            memcpy(ins[0], x, sizeof(float) * (size_t)n * L->in);
        } else {
            const struct qs_layer *P = &m->layers[i - 1];
            qs_linear(ins[i - 1], n, P->in, P->w, P->b, P->out, ins[i]);
            qs_act_apply(P->act, ins[i], (size_t)n * P->out);
        }
    }
    return ins;
}

/* int3 per-channel GPTQ against round-to-nearest on every layer of an MLP: H from the even
 * samples, the local pre-activation error judged on the odd (held-out) ones. */
static void gptq_vs_rtn(const char *label, struct qs_mlp *m, const struct qs_dataset *d)
{
    int nc = (d->n + 1) / 2, nh = d->n / 2;
    float *xc = malloc(sizeof(float) * (size_t)nc * d->d),
          *xh = malloc(sizeof(float) * (size_t)nh * d->d);
    for (int i = 0; i < d->n; i++)
        memcpy((i % 2 ? xh + (size_t)(i / 2) * d->d : xc + (size_t)(i / 2) * d->d),
               d->x + (size_t)i * d->d, sizeof(float) * d->d);
    float **ic = layer_inputs(m, xc, nc), **ih = layer_inputs(m, xh, nh);
    struct qs_format f;
    struct qs_qopts o;
    fmt("int3", "gran=channel", &f, &o);
    for (int l = 0; l < m->nlayers; l++) {
        const struct qs_layer *L = &m->layers[l];
        qs_err e;
        double *h = calloc((size_t)L->in * L->in, sizeof *h);
        double *rc = calloc((size_t)L->in * L->in, sizeof *rc);
        double *rh = calloc((size_t)L->in * L->in, sizeof *rh);
        CHECK(qs_hessian_add(h, ic[l], nc, L->in, &e) == 0);
        CHECK(qs_hessian_add(rh, ih[l], nh, L->in, &e) == 0);
        for (int i = 0; i < L->in * L->in; i++)
            rc[i] = h[i] / 2;
        float *qg = malloc(sizeof(float) * (size_t)L->out * L->in);
        float *qr = malloc(sizeof(float) * (size_t)L->out * L->in);
        CHECK(qs_gptq(&f, &o, NULL, L->w, L->out, L->in, h, qg, NULL, &e) == 0);
        CHECK(qs_quant_fake(&f, &o, L->w, L->out, L->in, qr, &e) == 0);
        double gc = qs_method_local_err(L->w, qg, L->out, L->in, rc);
        double rtc = qs_method_local_err(L->w, qr, L->out, L->in, rc);
        double gh = qs_method_local_err(L->w, qg, L->out, L->in, rh) / 2;
        double rth = qs_method_local_err(L->w, qr, L->out, L->in, rh) / 2;
        fprintf(stderr, "  ratio gptq/rtn int3 channel %s %s (%dx%d): calib %.3f held-out %.3f\n",
                label, L->name, L->out, L->in, gc / rtc, gh / rth);
        CHECK(gc < rtc);
        CHECK(gh < rth);
        free(h);
        free(rc);
        free(rh);
        free(qg);
        free(qr);
    }
    for (int l = 0; l < m->nlayers; l++) {
        free(ic[l]);
        free(ih[l]);
    }
    free(ic);
    free(ih);
    free(xc);
    free(xh);
}

static void test_gptq_beats_rtn_digits(void)
{
    qs_err e;
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    CHECK(qs_mlp_load(QS_TEST_DIGITS_MODEL, QS_ACT_RELU, 0, &m, &e) == 0);
    CHECK(qs_dataset_load_csv(QS_TEST_DIGITS_DATA, NULL, &d, &e) == 0);
    if (m && d)
        gptq_vs_rtn("digits-mlp", m, d);
    qs_mlp_free(m);
    qs_dataset_free(d);
}

static void test_gptq_beats_rtn_torch(void)
{
    qs_err e;
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    CHECK(qs_mlp_load("tests/fixtures/torch_mlp.safetensors", QS_ACT_GELU, 1, &m, &e) == 0);
    CHECK(qs_dataset_load_csv(QS_TEST_DIGITS_DATA, NULL, &d, &e) == 0);
    if (m && d)
        gptq_vs_rtn("torch-mlp", m, d);
    qs_mlp_free(m);
    qs_dataset_free(d);
}

/* ---- rotations ----------------------------------------------------------------------------- */

/* H is orthogonal (H H^T = I from the rows of the identity), H^T undoes H, and x W^T is unchanged
 * when both are rotated: for a power of two and for n = 2^k * m. */
static void test_rot_orthogonal_exact(void)
{
    static const int dims[] = {64, 48, 96, 7, 1};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int n = dims[k];
        qs_err e;
        struct qs_rot *h = NULL;
        CHECK(qs_rot_new(n, 5, &h, &e) == 0);
        if (!h)
            continue;
        CHECK(qs_rot_dim(h) == n);
        float *id = calloc((size_t)n * n, sizeof *id);
        for (int i = 0; i < n; i++)
            id[i * n + i] = 1.0f;
        CHECK(qs_rot_apply(h, id, n, 0, &e) == 0); /* row i = H e_i = column i of H */
        double worst = 0;
        for (int a = 0; a < n; a++)
            for (int b = 0; b < n; b++) {
                double s = 0;
                for (int t = 0; t < n; t++)
                    s += (double)id[a * n + t] * id[b * n + t];
                worst = fmax(worst, fabs(s - (a == b)));
            }
        CHECK(worst < 1e-6);
        /* every entry of a power-of-two H has magnitude 1/sqrt(n) */
        if ((n & (n - 1)) == 0)
            for (int i = 0; i < n * n; i++)
                CHECK_NEAR(fabs(id[i]), 1.0 / sqrt(n), 1e-6);
        int rows = 16, bs = 40;
        float *w = gauss(rows * n, 1.0, 21), *x = gauss(bs * n, 1.0, 22);
        float *y0 = malloc(sizeof(float) * bs * rows), *y1 = malloc(sizeof(float) * bs * rows);
        float *w2 = malloc(sizeof(float) * rows * n);
        qs_linear(x, bs, n, w, NULL, rows, y0);
        memcpy(w2, w, sizeof(float) * rows * n);
        CHECK(qs_rot_apply(h, w2, rows, 0, &e) == 0);
        CHECK(qs_rot_apply(h, x, bs, 0, &e) == 0);
        qs_linear(x, bs, n, w2, NULL, rows, y1);
        double num = 0, den = 0;
        for (int i = 0; i < bs * rows; i++) {
            num = fmax(num, fabs((double)y1[i] - y0[i]));
            den = fmax(den, fabs((double)y0[i]));
        }
        CHECK(num <= 1e-5 * den);
        CHECK(qs_rot_apply(h, w2, rows, 1, &e) == 0);
        for (int i = 0; i < rows * n; i++)
            CHECK_NEAR(w2[i], w[i], 1e-5);
        free(w);
        free(x);
        free(w2);
        free(y0);
        free(y1);
        free(id);
        qs_rot_free(h);
    }
    qs_err e;
    struct qs_rot *h = NULL;
    CHECK(qs_rot_new(2053, 1, &h, &e) < 0 && strstr(e.msg, "odd part")); /* a prime > 1024 */
    CHECK(qs_rot_new(0, 1, &h, &e) < 0);
}

/* A layer whose weights have a few outlier input columns: int4 per-channel error of
 * Q(W H^T) H (reported in the original basis) against Q(W), for Gaussian inputs. */
static void test_rot_outliers(void)
{
    static const int dims[] = {256, 768};
    for (size_t k = 0; k < 2; k++) {
        const int rows = 64, n = dims[k], bs = 512;
        float *w = gauss(rows * n, 0.02, 31), *x = gauss(bs * n, 1.0, 32);
        for (int r = 0; r < rows; r++)
            for (int j = 3; j < n; j += n / 4)
                w[r * n + j] *= 40.0f; /* 4 outlier columns */
        struct qs_format f;
        struct qs_qopts o;
        fmt("int4", "gran=channel", &f, &o);
        qs_err e;
        float *q = malloc(sizeof(float) * rows * n), *wr = malloc(sizeof(float) * rows * n);
        CHECK(qs_quant_fake(&f, &o, w, rows, n, q, &e) == 0);
        double e_rtn = pre_err(x, bs, w, q, rows, n);
        struct qs_rot *h = NULL;
        CHECK(qs_rot_new(n, 7, &h, &e) == 0);
        memcpy(wr, w, sizeof(float) * rows * n);
        CHECK(qs_rot_apply(h, wr, rows, 0, &e) == 0);
        CHECK(qs_quant_fake(&f, &o, wr, rows, n, q, &e) == 0);
        CHECK(qs_rot_apply(h, q, rows, 1, &e) == 0); /* Q(W H^T) H: the original basis */
        double e_rot = pre_err(x, bs, w, q, rows, n);
        fprintf(stderr, "  ratio hadamard/rtn int4 channel, 4 outlier columns, %dx%d: %.4f\n", rows,
                n, e_rot / e_rtn);
        CHECK(e_rot < 0.2 * e_rtn);
        qs_rot_free(h);
        free(w);
        free(x);
        free(q);
        free(wr);
    }
}

/* ---- AWQ and SmoothQuant ---------------------------------------------------------------- */

/* Activations with a few large channels; AWQ against its formula in float64: the same alpha,
 * scales and error, never worse than RTN, and clearly better here. */
static void test_awq_reference(void)
{
    const int rows = 32, c = 64, n = 256;
    float *x = corr_inputs(n, c, 41), *w = gauss(rows * c, 0.3, 42);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < c; j += 16)
            x[(size_t)i * c + j] *= 25.0f;
    float *xm = calloc(c, sizeof *xm);
    for (int j = 0; j < c; j++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += fabs(x[(size_t)i * c + j]);
        xm[j] = (float)(s / n);
    }
    double *r = gram_d(x, n, c);
    struct qs_format f;
    struct qs_qopts o;
    fmt("int3", "gran=group:32", &f, &o);
    qs_err e;
    float *s = malloc(sizeof(float) * c), *qw = malloc(sizeof(float) * rows * c);
    double alpha = -1, err = -1, rtn = -1;
    CHECK(qs_awq(&f, &o, w, rows, c, xm, r, 20, s, qw, &alpha, &err, &rtn, &e) == 0);
    /* reference: every grid point by the formula, the error from X directly */
    double best = INFINITY, ba = -1, rtn_ref = -1;
    float *bs = malloc(sizeof(float) * c), *sc = malloc(sizeof(float) * c);
    float *ws = malloc(sizeof(float) * rows * c), *qq = malloc(sizeof(float) * rows * c);
    for (int k = 0; k < 20; k++) {
        double a = k / 20.0, mx = 0, mn = INFINITY, sd[64];
        for (int j = 0; j < c; j++) {
            sd[j] = fmax(pow(xm[j], a), 1e-4);
            mx = fmax(mx, sd[j]);
            mn = fmin(mn, sd[j]);
        }
        for (int j = 0; j < c; j++)
            sc[j] = (float)(sd[j] / sqrt(mx * mn));
        for (int i = 0; i < rows * c; i++)
            ws[i] = w[i] * sc[i % c];
        qs_quant_fake(&f, &o, ws, rows, c, qq, &e);
        for (int i = 0; i < rows * c; i++)
            qq[i] = qq[i] / sc[i % c];
        double ek = pre_err(x, n, w, qq, rows, c);
        if (k == 0)
            rtn_ref = ek;
        if (ek < best) {
            best = ek;
            ba = a;
            memcpy(bs, sc, sizeof(float) * c);
        }
    }
    CHECK_NEAR(alpha, ba, 1e-12);
    CHECK_REL(err, best, 1e-6);
    CHECK_REL(rtn, rtn_ref, 1e-6);
    for (int j = 0; j < c; j++)
        CHECK_REL(s[j], bs[j], 1e-6);
    /* qw is Q(W diag s): dividing by s gives the effective weight with the reported error */
    for (int i = 0; i < rows * c; i++)
        qq[i] = qw[i] / s[i % c];
    CHECK_REL(pre_err(x, n, w, qq, rows, c), err, 1e-6);
    fprintf(stderr, "  ratio awq/rtn int3 group:32, 4 large input channels: %.4f (alpha %.2f)\n",
            err / rtn, alpha);
    CHECK(err <= rtn);
    CHECK(err < 0.8 * rtn);
    free(x);
    free(w);
    free(xm);
    free(r);
    free(s);
    free(qw);
    free(bs);
    free(sc);
    free(ws);
    free(qq);
}

static void test_smoothquant_reference(void)
{
    const int rows = 20, c = 40, n = 64;
    float *x = corr_inputs(n, c, 51), *w = gauss(rows * c, 0.3, 52);
    for (int i = 0; i < n; i++)
        x[(size_t)i * c + 9] *= 30.0f;
    for (int r = 0; r < rows; r++)
        w[r * c + 4] = 0.0f; /* an all-zero weight column: wmax clamps at 1e-5 */
    float xmax[40], s[40];
    for (int j = 0; j < c; j++) {
        xmax[j] = 0;
        for (int i = 0; i < n; i++)
            xmax[j] = fmaxf(xmax[j], fabsf(x[(size_t)i * c + j]));
    }
    qs_err e;
    static const double alphas[] = {0.5, 0.0, 0.85, 1.0};
    for (size_t k = 0; k < 4; k++) {
        double a = alphas[k];
        CHECK(qs_smoothquant_scales(xmax, w, rows, c, a, s, &e) == 0);
        for (int j = 0; j < c; j++) {
            double wm = 0;
            for (int r = 0; r < rows; r++)
                wm = fmax(wm, fabs(w[r * c + j]));
            double ref = fmax(pow(xmax[j], a) / pow(fmax(wm, 1e-5), 1 - a), 1e-5);
            CHECK_REL(s[j], ref, 1e-6);
        }
    }
    CHECK(qs_smoothquant_scales(xmax, w, rows, c, 0.5, s, &e) == 0);
    float *x2 = malloc(sizeof(float) * n * c), *w2 = malloc(sizeof(float) * rows * c);
    float *y0 = malloc(sizeof(float) * n * rows), *y1 = malloc(sizeof(float) * n * rows);
    memcpy(x2, x, sizeof(float) * n * c);
    memcpy(w2, w, sizeof(float) * rows * c);
    qs_scale_cols(w2, rows, c, s, 0);
    qs_scale_cols(x2, n, c, s, 1);
    qs_linear(x, n, c, w, NULL, rows, y0);
    qs_linear(x2, n, c, w2, NULL, rows, y1);
    double num = 0, den = 0;
    for (int i = 0; i < n * rows; i++) {
        num = fmax(num, fabs((double)y1[i] - y0[i]));
        den = fmax(den, fabs((double)y0[i]));
    }
    CHECK(num <= 1e-5 * den);
    /* the migrated channel's activation range shrinks */
    double before = xmax[9], after = 0;
    for (int i = 0; i < n; i++)
        after = fmax(after, fabs(x2[(size_t)i * c + 9]));
    CHECK(after < before);
    CHECK(qs_smoothquant_scales(xmax, w, rows, c, 1.5, s, &e) < 0);
    free(x);
    free(w);
    free(x2);
    free(w2);
    free(y0);
    free(y1);
}

/* Rows are searched by threads in slices (one per CPU, at least 64 rows each): a 300-row layer
 * gives the same values and scale codes, bit for bit, as 300 one-row calls (which never thread). */
static void test_imatrix_threads(void)
{
    const int rows = 300, c = 96;
    float *w = gauss(rows * c, 1.0, 71), *imp = malloc(sizeof(float) * c);
    for (int j = 0; j < c; j++)
        imp[j] = 0.5f + (float)(j % 7);
    struct qs_format f;
    struct qs_qopts o;
    fmt("int4", "gran=group:32", &f, &o);
    qs_err e;
    float *q = malloc(sizeof(float) * rows * c), *q1 = malloc(sizeof(float) * c);
    struct qs_qblock *sb = calloc((size_t)rows * 3, sizeof *sb), s1[3];
    CHECK(qs_imatrix_quant_ex(&f, &o, w, rows, c, imp, q, sb, &e) == 0);
    int same = 1;
    for (int r = 0; r < rows; r++) {
        CHECK(qs_imatrix_quant_ex(&f, &o, w + r * c, 1, c, imp, q1, s1, &e) == 0);
        same &= memcmp(q1, q + r * c, sizeof(float) * c) == 0;
        for (int b = 0; b < 3; b++)
            same &= s1[b].s == sb[r * 3 + b].s && s1[b].scode == sb[r * 3 + b].scode;
    }
    CHECK(same);
    free(w);
    free(imp);
    free(q);
    free(q1);
    free(sb);
}

/* ---- imatrix ---------------------------------------------------------------------------- */

/* Weighted error of int4 symmetric (restricted) rounding of x[0..n) at scale s, by hand. */
static double w_int4(const float *x, const float *imp, int n, double s)
{
    double t = 0;
    for (int j = 0; j < n; j++) {
        double k = nearbyint(x[j] / s);
        k = k > 7 ? 7 : k < -7 ? -7 : k;
        double d = x[j] - k * s;
        t += imp[j] * d * d;
    }
    return t;
}

/* The search minimises the weighted error: never worse than the plain absmax scale, within 2 %
 * of a brute-force scan of 20000 scales per group, and weighting moves the error where the
 * importance is low. */
static void test_imatrix_search(void)
{
    const int rows = 16, c = 128, G = 32;
    float *w = gauss(rows * c, 1.0, 61), *imp = malloc(sizeof(float) * c);
    qs_rng g;
    qs_rng_seed(&g, 62);
    for (int j = 0; j < c; j++)
        imp[j] = (float)exp(3.0 * qs_rng_normal(&g)); /* heavy-tailed importances */
    struct qs_format f;
    struct qs_qopts o;
    fmt("int4", "gran=group:32 scale=f32", &f, &o);
    qs_err e;
    float *q = malloc(sizeof(float) * rows * c), *qu = malloc(sizeof(float) * rows * c);
    float *qr = malloc(sizeof(float) * rows * c), *ones = malloc(sizeof(float) * c);
    for (int j = 0; j < c; j++)
        ones[j] = 1.0f;
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, q, &e) == 0);
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, NULL, qu, &e) == 0);
    CHECK(qs_quant_fake(&f, &o, w, rows, c, qr, &e) == 0);
    double tot_k = 0, tot_b = 0, tot_r = 0, tot_u = 0;
    for (int r = 0; r < rows; r++)
        for (int c0 = 0; c0 < c; c0 += G) {
            const float *x = w + r * c + c0, *im = imp + c0;
            double ek = 0, er = 0, eu = 0, amax = 0;
            for (int j = 0; j < G; j++) {
                double d = x[j] - q[r * c + c0 + j];
                ek += im[j] * d * d;
                d = x[j] - qr[r * c + c0 + j];
                er += im[j] * d * d;
                d = x[j] - qu[r * c + c0 + j];
                eu += im[j] * d * d;
                amax = fmax(amax, fabs(x[j]));
            }
            double bb = INFINITY;
            for (int k = 0; k <= 20000; k++)
                bb = fmin(bb, w_int4(x, im, G, amax / 7 * (0.3 + 1.2 * k / 20000.0)));
            CHECK(ek <= er * (1 + 1e-12));
            CHECK(ek <= 1.02 * bb);
            tot_k += ek;
            tot_b += bb;
            tot_r += er;
            tot_u += eu;
        }
    /* the values are on the format's grid at some scale: re-rounding them is the identity */
    fprintf(stderr,
            "  ratio imatrix/rtn weighted error int4 group:32: %.4f (brute force %.4f, "
            "unweighted search %.4f)\n",
            tot_k / tot_r, tot_b / tot_r, tot_u / tot_r);
    CHECK(tot_k < tot_u);
    CHECK(tot_k < 0.9 * tot_r);
    /* NULL importance is the same as all ones */
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, ones, q, &e) == 0);
    CHECK(memcmp(q, qu, sizeof(float) * rows * c) == 0);
    /* refusals */
    fmt("mxfp4", "", &f, &o);
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, q, &e) < 0);
    fmt("int4", "gran=tensor", &f, &o);
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, q, &e) < 0);
    fmt("int4", "gran=channel asym", &f, &o);
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, q, &e) < 0);
    /* other formats run and never lose to their plain scale */
    static const char *other[][2] = {
        {"fp4-e2m1", "gran=group:32"}, {"nf4", "gran=group:32"}, {"int3", "gran=channel"}};
    for (int k = 0; k < 3; k++) {
        fmt(other[k][0], other[k][1], &f, &o);
        CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, q, &e) == 0);
        CHECK(qs_quant_fake(&f, &o, w, rows, c, qr, &e) == 0);
        double a = 0, b = 0;
        for (int i = 0; i < rows * c; i++) {
            a += imp[i % c] * pow(w[i] - q[i], 2);
            b += imp[i % c] * pow(w[i] - qr[i], 2);
        }
        CHECK(a <= b * (1 + 1e-9));
    }
    free(w);
    free(imp);
    free(q);
    free(qu);
    free(qr);
    free(ones);
}

/* ---- one layer, one model --------------------------------------------------------------- */

/* qs_method_layer composes the kernels as documented: RTN is qs_quant_fake, a rotation is
 * Q'(W H^T) H with the rotated inputs' statistics, AWQ's effective weight is Q(W diag s) / s. */
static void test_method_layer(void)
{
    const int rows = 40, c = 48, n = 120;
    float *x = corr_inputs(n, c, 71), *w = gauss(rows * c, 0.4, 72);
    float *got = malloc(sizeof(float) * rows * c), *ref = malloc(sizeof(float) * rows * c);
    struct qs_format f;
    struct qs_qopts o;
    fmt("int4", "gran=group:16", &f, &o);
    qs_err e;
    struct qs_method_opts mo;
    qs_method_opts_default(&mo);
    CHECK_STR(qs_method_name(QS_METHOD_GPTQ), "gptq");
    CHECK(qs_method_layer(&f, &o, &mo, w, rows, c, NULL, 0, got, &e) == 0);
    CHECK(qs_quant_fake(&f, &o, w, rows, c, ref, &e) == 0);
    CHECK(memcmp(got, ref, sizeof(float) * rows * c) == 0);
    /* GPTQ in a rotated basis (48 = 16 x 3) */
    mo.method = QS_METHOD_GPTQ;
    mo.rotate = 1;
    mo.rot_seed = 9;
    CHECK(qs_method_layer(&f, &o, &mo, w, rows, c, x, n, got, &e) == 0);
    struct qs_rot *h = NULL;
    CHECK(qs_rot_new(c, 9, &h, &e) == 0);
    float *wr = malloc(sizeof(float) * rows * c), *xr = malloc(sizeof(float) * n * c);
    memcpy(wr, w, sizeof(float) * rows * c);
    memcpy(xr, x, sizeof(float) * n * c);
    qs_rot_apply(h, wr, rows, 0, &e);
    qs_rot_apply(h, xr, n, 0, &e);
    double *hh = calloc((size_t)c * c, sizeof *hh);
    qs_hessian_add(hh, xr, n, c, &e);
    CHECK(qs_gptq(&f, &o, NULL, wr, rows, c, hh, ref, NULL, &e) == 0);
    qs_rot_apply(h, ref, rows, 1, &e);
    CHECK(memcmp(got, ref, sizeof(float) * rows * c) == 0);
    /* AWQ without rotation: the effective weight */
    mo.method = QS_METHOD_AWQ;
    mo.rotate = 0;
    CHECK(qs_method_layer(&f, &o, &mo, w, rows, c, x, n, got, &e) == 0);
    float xm[48], sc[48];
    for (int j = 0; j < c; j++) {
        double a = 0;
        for (int i = 0; i < n; i++)
            a += fabs(x[i * c + j]);
        xm[j] = (float)(a / n);
    }
    double *r = gram_d(x, n, c);
    CHECK(qs_awq(&f, &o, w, rows, c, xm, r, 0, sc, ref, NULL, NULL, NULL, &e) == 0);
    for (int i = 0; i < rows * c; i++)
        CHECK_REL(got[i], ref[i] / sc[i % c], 1e-6);
    /* imatrix from mean x^2 */
    mo.method = QS_METHOD_IMATRIX;
    CHECK(qs_method_layer(&f, &o, &mo, w, rows, c, x, n, got, &e) == 0);
    float imp[48];
    for (int j = 0; j < c; j++) {
        double a = 0;
        for (int i = 0; i < n; i++)
            a += (double)x[i * c + j] * x[i * c + j];
        imp[j] = (float)(a / n);
    }
    CHECK(qs_imatrix_quant(&f, &o, w, rows, c, imp, ref, &e) == 0);
    CHECK(memcmp(got, ref, sizeof(float) * rows * c) == 0);
    mo.method = QS_METHOD_GPTQ;
    CHECK(qs_method_layer(&f, &o, &mo, w, rows, c, NULL, 0, got, &e) < 0 &&
          strstr(e.msg, "calibration"));
    qs_rot_free(h);
    free(x);
    free(w);
    free(got);
    free(ref);
    free(wr);
    free(xr);
    free(hh);
    free(r);
}

/* Held-out mean cross-entropy of m on the odd digits samples. */
static double odd_loss(const struct qs_mlp *m, const struct qs_dataset *d, int *correct)
{
    int nh = d->n / 2, c = m->layers[m->nlayers - 1].out;
    float *xh = malloc(sizeof(float) * (size_t)nh * d->d), *lg = malloc(sizeof(float) * nh * c);
    int *yh = malloc(sizeof(int) * nh);
    for (int i = 0; i < nh; i++) {
        memcpy(xh + (size_t)i * d->d, d->x + (size_t)(2 * i + 1) * d->d, sizeof(float) * d->d);
        yh[i] = d->y[2 * i + 1];
    }
    qs_err e;
    qs_mlp_forward(m, xh, nh, lg, &e);
    double l = qs_xent(lg, yh, nh, c, correct, NULL);
    free(xh);
    free(lg);
    free(yh);
    return l;
}

/* The whole digits MLP at int3 per-channel: sequential GPTQ (each layer's H from the partly
 * quantized model) and GPTQ on float inputs both beat RTN on held-out loss; the first layer sees
 * the same inputs either way. */
static void test_mlp_gptq_sequential(void)
{
    qs_err e;
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    CHECK(qs_mlp_load(QS_TEST_DIGITS_MODEL, QS_ACT_RELU, 0, &m, &e) == 0);
    CHECK(qs_dataset_load_csv(QS_TEST_DIGITS_DATA, NULL, &d, &e) == 0);
    if (!m || !d) {
        qs_mlp_free(m);
        qs_dataset_free(d);
        return;
    }
    int nc = (d->n + 1) / 2;
    float *xc = malloc(sizeof(float) * (size_t)nc * d->d);
    for (int i = 0; i < nc; i++)
        memcpy(xc + (size_t)i * d->d, d->x + (size_t)(2 * i) * d->d, sizeof(float) * d->d);
    struct qs_format f;
    struct qs_qopts o;
    fmt("int3", "gran=channel", &f, &o);
    struct qs_method_opts mo;
    qs_method_opts_default(&mo);
    struct qs_mlp *rtn = qs_mlp_clone(m), *seq = qs_mlp_clone(m), *flt = qs_mlp_clone(m);
    CHECK(qs_mlp_quant_method(rtn, xc, nc, &f, &o, &mo, 0, &e) == 0);
    mo.method = QS_METHOD_GPTQ;
    CHECK(qs_mlp_quant_method(seq, xc, nc, &f, &o, &mo, 0, &e) == 0);
    CHECK(qs_mlp_quant_method(flt, xc, nc, &f, &o, &mo, 1, &e) == 0);
    int a0, a1, a2, a3;
    double l0 = odd_loss(m, d, &a0), l1 = odd_loss(rtn, d, &a1), l2 = odd_loss(seq, d, &a2),
           l3 = odd_loss(flt, d, &a3);
    fprintf(stderr,
            "  digits int3 channel held-out loss: float %.4f (%d), rtn %.4f (%d), "
            "gptq sequential %.4f (%d), gptq float inputs %.4f (%d)\n",
            l0, a0, l1, a1, l2, a2, l3, a3);
    CHECK(l2 < l1);
    CHECK(l3 < l1);
    const struct qs_layer *L = &seq->layers[0];
    CHECK(memcmp(L->w, flt->layers[0].w, sizeof(float) * L->in * L->out) == 0);
    CHECK(memcmp(seq->layers[1].w, flt->layers[1].w, sizeof(float) * 64 * 64) != 0);
    /* a model whose weights are mapped from its file is refused, not written */
    int mapped = 0;
    for (int i = 0; i < m->nlayers; i++)
        mapped |= m->layers[i].w_mapped;
    if (mapped)
        CHECK(qs_mlp_quant_method(m, xc, nc, &f, &o, &mo, 0, &e) < 0 && strstr(e.msg, "mapped"));
    qs_mlp_free(rtn);
    qs_mlp_free(seq);
    qs_mlp_free(flt);
    qs_mlp_free(m);
    qs_dataset_free(d);
    free(xc);
}

TEST_MAIN("methods", TEST_CASE(test_quantizer_matches_fake), TEST_CASE(test_gptq_matches_obq),
          TEST_CASE(test_gptq_factor), TEST_CASE(test_gptq_bits_any_split),
          TEST_CASE(test_gptq_torch), TEST_CASE(test_gptq_beats_rtn_digits),
          TEST_CASE(test_gptq_beats_rtn_torch), TEST_CASE(test_rot_orthogonal_exact),
          TEST_CASE(test_rot_outliers), TEST_CASE(test_awq_reference),
          TEST_CASE(test_smoothquant_reference), TEST_CASE(test_imatrix_search),
          TEST_CASE(test_imatrix_threads), TEST_CASE(test_method_layer),
          TEST_CASE(test_mlp_gptq_sequential))
