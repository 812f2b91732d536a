/* test_moments_cache.c - issue 14: spectra from moments and the bench's moments cache.
 *
 * - `spectrum of=preact` from the streamed out x out sums equals a float64 SVD (LAPACK dgesdd)
 *   of the rows' error D = Y_q - Y_f to 1e-9 of the top value (the F32 SVD of the rows, the old
 *   path, is off by up to ~1e-6 of it), on the digits MLP and tiny-gpt2; the reference Y_f's too;
 *   the variance-profile null from the moments' diagonal equals the null of the rows.
 * - scale=act and scale=cov equal a float64 reference (E diag(s), E R^1/2 from the rows in
 *   double, dgesdd) to 1e-6 of the top value (measured: at most 1.6e-7 on the four sites tried;
 *   the old path, R by F32 ssyrk and an F32 eigendecomposition, was off by up to 7.5e-5 of the
 *   top on the digits MLP's fc0).
 * - none of the three reads a site's rows: with an activation budget too small for them
 *   (qs_bench_site_rows refuses) the spectra are computed, bit for bit as with room.
 * - the cache: a second low-rank fit on a site does not recompute X^T X (the cache's counter),
 *   its result is bit-identical to a fit on a bench without the cache's entry; a format change
 *   upstream drops the quantized-path entries after it (the cached moments then equal a fresh
 *   computation and differ from the stale ones) and keeps the float ones; the budget bounds the
 *   bytes held (LRU) and qs_bench_held_bytes counts them. */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/linalg.h"
#include "qscope/moments.h"
#include "qscope/spectral.h"
#include "test.h"

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

static int add_rule(struct qs_bench *b, const char *pattern, const char *fmt, int roles)
{
    qs_err e = {{0}};
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pattern);
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

/* Singular values of a: (m, n) row-major in double, descending, into sv (min(m, n)). */
static int svd_f64(const double *a, int m, int n, double *sv)
{
    double *c = malloc((size_t)m * n * sizeof *c);
    if (!c)
        return -1;
    memcpy(c, a, (size_t)m * n * sizeof *c);
    double dummy = 0;
    /* row-major (m, n) is column-major (n, m): the same singular values */
    lapack_int info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', n, m, c, n, sv, &dummy, 1, &dummy, 1);
    free(c);
    return info == 0 ? 0 : -1;
}

static void check_values(const double *got, const double *ref, int k, double tol, const char *what)
{
    double worst = 0;
    for (int t = 0; t < k; t++)
        worst = fmax(worst, fabs(got[t] - ref[t]));
    if (getenv("QS_TEST_VERBOSE"))
        fprintf(stderr, "  %s: max |sv - ref| %.3g of top %.6g\n", what, worst, ref[0]);
    if (!(ref[0] > 0 && worst <= tol * ref[0]))
        fprintf(stderr, "  %s: max |sv - ref| %.3g of top %.6g (tol %.1g)\n", what, worst, ref[0],
                tol);
    CHECK(ref[0] > 0 && worst <= tol * ref[0]);
}

/* Values from the Gram matrix in double: to 1e-9 of the top for values above 1e-3 of it; below,
 * the squaring's eps_double sigma_0^2 / sigma_i shows, and all stay within 1e-7 of the top (the
 * F32 SVD of the rows, the old path, is off by about 1e-7 of the top everywhere). */
static void pre_values(const double *got, const double *ref, int k, const char *what)
{
    int big = 0;
    while (big < k && ref[big] >= 1e-3 * ref[0])
        big++;
    check_values(got, ref, big, 1e-9, what);
    check_values(got, ref, k, 1e-7, what);
}

/* of=preact against float64 SVDs of the rows' D and Y_f, and the null against the rows' null. */
static void preact_case(struct qs_bench *b, const char *site, int k)
{
    qs_err e = {{0}};
    int s = site_index(b, site);
    CHECK(s >= 0);
    if (s < 0)
        return;
    struct qs_spectrum sp;
    if (qs_analysis_spectrum_ex(b, s, QS_SPEC_PREACT, QS_SCALE_NONE, k, QS_SPEC_NULL, &sp, &e) <
        0) {
        fprintf(stderr, "  %s: %s\n", site, e.msg);
        CHECK(0);
        return;
    }
    float *yf = NULL, *yq = NULL;
    int n = 0;
    struct qs_unit u;
    qs_bench_unit(b, s, &u);
    if (!b->lm) {
        CHECK(qs_bench_preact(b, QS_CALIB, 0, s, &yf, &n, &e) == 0);
        CHECK(qs_bench_preact(b, QS_CALIB, 1, s, &yq, &n, &e) == 0);
    } else { /* the model runs a window at a time (a dynamic activation scale is a window's) */
        CHECK(qs_bench_site_rows(b, s, &e) == 0);
        n = b->rows.n[QS_CALIB];
        int ctx = b->lm->ctx;
        yf = malloc((size_t)n * u.out * sizeof *yf);
        yq = malloc((size_t)n * u.out * sizeof *yq);
        for (int r = 0; yf && yq && r < n; r += ctx) {
            size_t xo = (size_t)r * u.in, yo = (size_t)r * u.out;
            CHECK(qs_bench_layer_forward(b, s, b->rows.xf[QS_CALIB] + xo, ctx, 0, 0, yf + yo, &e) ==
                  0);
            CHECK(qs_bench_layer_forward(b, s, b->rows.xq[QS_CALIB] + xo, ctx,
                                         QS_ROLE_W | QS_ROLE_A, 1, yq + yo, &e) == 0);
        }
    }
    int d = u.out, mn = n < d ? n : d;
    size_t len = (size_t)n * d;
    double *dd = malloc(len * sizeof *dd), *fd = malloc(len * sizeof *fd);
    double *sv = malloc((size_t)mn * sizeof *sv), *rv = malloc((size_t)mn * sizeof *rv);
    float *ef = malloc(len * sizeof *ef);
    CHECK(yf && yq && dd && fd && sv && rv && ef);
    if (yf && yq && dd && fd && sv && rv && ef) {
        for (size_t j = 0; j < len; j++) {
            ef[j] = yq[j] - yf[j]; /* D in F32, as the forward's outputs differ */
            dd[j] = ef[j];
            fd[j] = yf[j];
        }
        CHECK(sp.m == n && sp.n == d && sp.nsv == (k > 0 ? k : mn) && sp.exact == 1);
        k = sp.nsv;
        CHECK(svd_f64(dd, n, d, sv) == 0 && svd_f64(fd, n, d, rv) == 0);
        char what[128];
        snprintf(what, sizeof what, "%s of=preact error", site);
        pre_values(sp.sv, sv, k, what);
        snprintf(what, sizeof what, "%s of=preact Y_f", site);
        pre_values(sp.ref_sv, rv, k, what);
        /* the null from the moments' diagonal: the rows' null (same seeds) to rounding */
        struct qs_null nl;
        struct qs_null_view v = {.seg = d, .by_col = 1};
        uint64_t ns = b->seed ^ ((uint64_t)(s + 1) * 0x9e3779b97f4a7c15ULL);
        CHECK(qs_null_edge(ef, n, d, &v, 5, ns, &nl, &e) == 0);
        CHECK(sp.st.null_draws == 5);
        CHECK_REL(sp.st.null_edge, nl.edge, 1e-6);
        CHECK_REL(sp.st.null_top, nl.top_mean, 1e-6);
    }
    free(dd);
    free(fd);
    free(sv);
    free(rv);
    free(ef);
    free(yf);
    free(yq);
    qs_spectrum_free(&sp);
}

static void test_preact_vs_f64(void)
{
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (b) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W | QS_ROLE_A) > 0);
        preact_case(b, "fc1", 8);
        preact_case(b, "fc0", 0); /* every value */
        qs_bench_free(b);
    }
    b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (b) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W | QS_ROLE_A) > 0);
        preact_case(b, "h.1.mlp.c_proj", 16);
        preact_case(b, "h.0.attn.c_attn", 8);
        preact_case(b, "lm_head", 8);
        qs_bench_free(b);
    }
}

/* scale=act|cov against E diag(s) / E R^1/2 formed in double from the rows. */
static void scale_case(struct qs_bench *b, const char *site, enum qs_spec_scale scale, int k)
{
    qs_err e = {{0}};
    int s = site_index(b, site);
    CHECK(s >= 0);
    if (s < 0)
        return;
    struct qs_spectrum sp;
    if (qs_analysis_spectrum(b, s, QS_SPEC_WEIGHT, scale, k, &sp, &e) < 0) {
        fprintf(stderr, "  %s: %s\n", site, e.msg);
        CHECK(0);
        return;
    }
    const float *x;
    int n;
    CHECK(qs_bench_inputs(b, QS_CALIB, 0, s, &x, &n, &e) == 0 || b->lm);
    if (b->lm) { /* a transformer's rows: the site's row cache */
        CHECK(qs_bench_site_rows(b, s, &e) == 0);
        x = b->rows.xf[QS_CALIB];
        n = b->rows.n[QS_CALIB];
    }
    struct qs_unit u;
    qs_bench_unit(b, s, &u);
    int out = u.out, in = u.in, mn = out < in ? out : in;
    double *r = calloc((size_t)in * in, sizeof *r), *w = malloc((size_t)in * sizeof *w);
    double *h = calloc((size_t)in * in, sizeof *h), *a = malloc((size_t)out * in * sizeof *a);
    double *sv = malloc((size_t)mn * sizeof *sv);
    CHECK(r && w && h && a && sv);
    if (r && w && h && a && sv) {
        for (int t = 0; t < n; t++)
            for (int i = 0; i < in; i++)
                for (int j = 0; j < in; j++)
                    r[(size_t)i * in + j] += (double)x[(size_t)t * in + i] * x[(size_t)t * in + j];
        for (size_t q = 0; q < (size_t)in * in; q++)
            r[q] /= n;
        if (scale == QS_SCALE_ACT) {
            for (int j = 0; j < in; j++)
                h[(size_t)j * in + j] = sqrt(r[(size_t)j * in + j]);
        } else { /* R^1/2 = V sqrt(W) V^T */
            CHECK(LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', in, r, in, w) == 0);
            for (int i = 0; i < in; i++)
                for (int j = 0; j < in; j++) {
                    double acc = 0;
                    for (int q = 0; q < in; q++)
                        acc += r[(size_t)i * in + q] * sqrt(fmax(w[q], 0)) * r[(size_t)j * in + q];
                    h[(size_t)i * in + j] = acc;
                }
        }
        for (int o = 0; o < out; o++)
            for (int j = 0; j < in; j++) {
                double acc = 0;
                for (int q = 0; q < in; q++)
                    acc += ((double)qs_bench_w(b, s, NULL)[(size_t)o * in + q] -
                            qs_site_wq(b, s, NULL)[(size_t)o * in + q]) *
                           h[(size_t)q * in + j];
                a[(size_t)o * in + j] = acc;
            }
        CHECK(svd_f64(a, out, in, sv) == 0);
        char what[128];
        snprintf(what, sizeof what, "%s scale=%s", site, scale == QS_SCALE_ACT ? "act" : "cov");
        check_values(sp.sv, sv, sp.nsv, 1e-6, what);
    }
    free(r);
    free(w);
    free(h);
    free(a);
    free(sv);
    qs_spectrum_free(&sp);
}

static void test_scale_vs_f64(void)
{
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (b) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W) > 0);
        scale_case(b, "fc0", QS_SCALE_ACT, 8);
        scale_case(b, "fc0", QS_SCALE_COV, 8);
        scale_case(b, "fc1", QS_SCALE_COV, 0);
        qs_bench_free(b);
    }
    b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (b) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W) > 0);
        scale_case(b, "h.0.mlp.c_proj", QS_SCALE_ACT, 8);
        scale_case(b, "h.0.mlp.c_proj", QS_SCALE_COV, 8);
        qs_bench_free(b);
    }
}

static int same_spectrum(const struct qs_spectrum *a, const struct qs_spectrum *b)
{
    return a->nsv == b->nsv && a->m == b->m && a->n == b->n &&
           !memcmp(a->sv, b->sv, (size_t)a->nsv * sizeof(double)) &&
           !memcmp(a->ref_sv, b->ref_sv, (size_t)a->nsv * sizeof(double));
}

/* With an activation budget that refuses the site's rows, the three views are computed from the
 * moments alone, the same bits as with room. */
static void test_spectra_need_no_rows(void)
{
    struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(add_rule(b, "*", "int4", QS_ROLE_W | QS_ROLE_A) > 0);
    qs_err e = {{0}};
    int s = site_index(b, "h.1.mlp.c_fc");
    CHECK(s >= 0);
    const enum qs_spec_of of[3] = {QS_SPEC_PREACT, QS_SPEC_WEIGHT, QS_SPEC_WEIGHT};
    const enum qs_spec_scale sc[3] = {QS_SCALE_NONE, QS_SCALE_ACT, QS_SCALE_COV};
    struct qs_spectrum room[3], tight[3];
    memset(room, 0, sizeof room);
    memset(tight, 0, sizeof tight);
    for (int v = 0; v < 3; v++)
        CHECK(qs_analysis_spectrum_ex(b, s, of[v], sc[v], 8, QS_SPEC_NULL, &room[v], &e) == 0);
    qs_bench_caches_free(b);
    b->act_budget = 256 << 10; /* a window's inputs fit, the site's rows do not */
    CHECK(qs_bench_site_rows(b, s, &e) < 0);
    for (int v = 0; v < 3; v++) {
        int rc = qs_analysis_spectrum_ex(b, s, of[v], sc[v], 8, QS_SPEC_NULL, &tight[v], &e);
        if (rc < 0)
            fprintf(stderr, "  view %d: %s\n", v, e.msg);
        CHECK(rc == 0);
        CHECK(rc == 0 && same_spectrum(&room[v], &tight[v]));
        CHECK(rc == 0 && room[v].st.null_edge == tight[v].st.null_edge);
        qs_spectrum_free(&room[v]);
        qs_spectrum_free(&tight[v]);
    }
    qs_bench_free(b);
}

/* Two fits on one site compute the moments once; the second fit's bits equal a fit on a fresh
 * bench (whose moments are computed for it). */
static void cache_fits(struct qs_bench *b, struct qs_bench *fresh, const char *site)
{
    qs_err e = {{0}};
    int s = site_index(b, site);
    CHECK(s >= 0);
    if (s < 0)
        return;
    unsigned long c0 = b->momc ? b->momc->computed : 0;
    CHECK(qs_analysis_correct(b, s, QS_CORR_LQER, 4, "float", -1, NULL, &e) == 0);
    CHECK(b->momc && b->momc->computed == c0 + 1);
    CHECK(qs_analysis_correct(b, s, QS_CORR_QERA, 4, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_correct(b, s, QS_CORR_EORA, 4, "float", -1, NULL, &e) == 0);
    CHECK(b->momc && b->momc->computed == c0 + 1); /* no recompute */
    CHECK(b->momc && b->momc->hits >= 2);
    struct qs_unit u;
    qs_bench_unit(b, s, &u);
    CHECK(qs_bench_held_bytes(b) >= qs_moments_cache_bytes(b->momc) &&
          qs_moments_cache_bytes(b->momc) == qs_moments_bytes(u.in));
    CHECK(qs_analysis_correct(fresh, s, QS_CORR_EORA, 4, "float", -1, NULL, &e) == 0);
    CHECK(fresh->momc && fresh->momc->computed == 1 && fresh->momc->hits == 0);
    const struct qs_corr *c1 = &b->ls[s].corr, *c2 = &fresh->ls[s].corr;
    CHECK(c1->c && c2->c && !memcmp(c1->c, c2->c, (size_t)u.out * u.in * sizeof(float)));
    CHECK(c1->recovery == c2->recovery);
}

static void test_cache_fits(void)
{
    struct qs_bench *b = qs_test_open_digits(), *f = qs_test_open_digits();
    CHECK(b && f);
    if (b && f) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W) > 0 && add_rule(f, "*", "int4", QS_ROLE_W) > 0);
        cache_fits(b, f, "fc1");
    }
    qs_bench_free(b);
    qs_bench_free(f);
    b = qs_test_open_lm("datasets/models/tiny-gpt2");
    f = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b && f);
    if (b && f) {
        CHECK(add_rule(b, "*", "int4", QS_ROLE_W) > 0 && add_rule(f, "*", "int4", QS_ROLE_W) > 0);
        cache_fits(b, f, "h.1.mlp.c_proj");
    }
    qs_bench_free(b);
    qs_bench_free(f);
}

/* A format change upstream: the quantized-path entries after it are dropped (the cache then
 * answers what a fresh computation gives, not the stale sums), the float-path ones kept. */
static void test_cache_invalidation(void)
{
    struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(add_rule(b, "*", "int4", QS_ROLE_W | QS_ROLE_A) > 0);
    qs_err e = {{0}};
    int s = site_index(b, "h.1.mlp.c_fc"), up = site_index(b, "h.0.mlp.c_proj");
    CHECK(s > up && up >= 0);
    const struct qs_moments *mq, *mf;
    CHECK(qs_bench_site_moments_cached(b, s, QS_CALIB, 1, &mq, &e) == 0);
    int in = mq->in;
    size_t nn = (size_t)in * in;
    double *stale = malloc(nn * sizeof *stale);
    CHECK(stale != NULL);
    if (!stale) {
        qs_bench_free(b);
        return;
    }
    memcpy(stale, mq->xtx, nn * sizeof *stale);
    CHECK(qs_bench_site_moments_cached(b, s, QS_CALIB, 0, &mf, &e) == 0);
    unsigned long c0 = b->momc->computed;
    CHECK(qs_bench_site_moments_cached(b, s, QS_CALIB, 1, &mq, &e) == 0);
    CHECK(b->momc->computed == c0); /* a hit */
    /* the upstream site goes to int2: the quantized inputs of s change */
    CHECK(add_rule(b, "h.0.mlp.c_proj", "int2", QS_ROLE_W | QS_ROLE_A) == 1);
    CHECK(qs_bench_site_moments_cached(b, s, QS_CALIB, 0, &mf, &e) == 0);
    CHECK(b->momc->computed == c0); /* the float path's entry survives */
    CHECK(qs_bench_site_moments_cached(b, s, QS_CALIB, 1, &mq, &e) == 0);
    CHECK(b->momc->computed == c0 + 1);
    struct qs_moments fresh;
    CHECK(qs_bench_site_moments(b, s, QS_CALIB, 1, &fresh, &e) == 0);
    CHECK(!memcmp(mq->xtx, fresh.xtx, nn * sizeof(double)));
    CHECK(memcmp(mq->xtx, stale, nn * sizeof(double)) != 0);
    qs_moments_free(&fresh);
    /* a site upstream of the change keeps its quantized-path entry */
    CHECK(qs_bench_site_moments_cached(b, up, QS_CALIB, 1, &mq, &e) == 0);
    unsigned long c1 = b->momc->computed;
    CHECK(add_rule(b, "h.1.attn.c_proj", "int3", QS_ROLE_W) == 1);
    CHECK(qs_bench_site_moments_cached(b, up, QS_CALIB, 1, &mq, &e) == 0);
    CHECK(b->momc->computed == c1);
    free(stale);
    /* the MLP too: fc1's quantized inputs follow fc0's format */
    qs_bench_free(b);
    b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(add_rule(b, "*", "int4", QS_ROLE_W) > 0);
    CHECK(qs_bench_site_moments_cached(b, 1, QS_CALIB, 1, &mq, &e) == 0);
    double x00 = mq->xtx[0];
    CHECK(add_rule(b, "fc0", "int2", QS_ROLE_W) == 1);
    CHECK(qs_bench_site_moments_cached(b, 1, QS_CALIB, 1, &mq, &e) == 0);
    CHECK(qs_bench_site_moments(b, 1, QS_CALIB, 1, &fresh, &e) == 0);
    CHECK(mq->xtx[0] != x00 && !memcmp(mq->xtx, fresh.xtx, (size_t)mq->in * mq->in * 8));
    qs_moments_free(&fresh);
    qs_bench_free(b);
}

/* The budget: least recently used entries go first; the bytes held never exceed it (but for a
 * lone entry larger than it). */
static void test_cache_budget(void)
{
    struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    const struct qs_moments *m;
    int s0 = site_index(b, "h.0.attn.c_attn"), s1 = site_index(b, "h.0.mlp.c_fc");
    int s2 = site_index(b, "h.1.mlp.c_fc"), s3 = site_index(b, "h.0.mlp.c_proj");
    CHECK(qs_bench_site_moments_cached(b, s0, QS_CALIB, 0, &m, &e) == 0);
    size_t one = qs_moments_bytes(m->in); /* c_attn and c_fc: the same input width */
    b->momc->budget = 2 * one;
    CHECK(qs_bench_site_moments_cached(b, s1, QS_CALIB, 0, &m, &e) == 0);
    CHECK(qs_bench_site_moments_cached(b, s0, QS_CALIB, 0, &m, &e) == 0); /* s0 used last */
    unsigned long c = b->momc->computed;
    CHECK(c == 2 && b->momc->bytes == 2 * one);
    CHECK(qs_bench_site_moments_cached(b, s2, QS_CALIB, 0, &m, &e) == 0); /* evicts s1 */
    CHECK(b->momc->bytes <= b->momc->budget && b->momc->n == 2);
    CHECK(qs_bench_site_moments_cached(b, s0, QS_CALIB, 0, &m, &e) == 0);
    CHECK(b->momc->computed == c + 1); /* s0 was kept */
    CHECK(qs_bench_site_moments_cached(b, s1, QS_CALIB, 0, &m, &e) == 0);
    CHECK(b->momc->computed == c + 2); /* s1 was not */
    /* c_proj's input is 4x wider: 16x the bytes, alone over the budget: kept alone */
    CHECK(qs_bench_site_moments_cached(b, s3, QS_CALIB, 0, &m, &e) == 0);
    CHECK(b->momc->n == 1 && b->momc->bytes == qs_moments_bytes(m->in));
    CHECK(qs_bench_held_bytes(b) >= b->momc->bytes);
    qs_bench_free(b);
}

TEST_MAIN("moments_cache", TEST_CASE(test_preact_vs_f64), TEST_CASE(test_scale_vs_f64),
          TEST_CASE(test_spectra_need_no_rows), TEST_CASE(test_cache_fits),
          TEST_CASE(test_cache_invalidation), TEST_CASE(test_cache_budget))
