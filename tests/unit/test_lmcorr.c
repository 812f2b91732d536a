/* test_lmcorr.c - output-side corrections on transformers (issue 12): the forward's output hook,
 * `correct SITE bias` as db = mean(Y_f - Y_q) over the calibration windows (recomputed here
 * independently, in double, through the forward's output hook), `correct SITE linear` as the
 * ridge map of those same pre-activations, both applied by the quantized eval and removed
 * exactly by uncorrect. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"
#include "qscope/tokens.h"
#include "test.h"

static const char *models_[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};
static const char *sites_[] = {"h.0.mlp.c_fc", "model.layers.0.mlp.up_proj"};

/* `quant * int3 gran=channel` (weights) */
static int int3_rule(struct qs_bench *b)
{
    qs_err e = {{0}};
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    if (qs_format_parse("int3", &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.opt.gran = QS_GRAN_CHANNEL;
    r.roles = QS_ROLE_W;
    int n;
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return -1;
    }
    return n;
}

static int site_index(const struct qs_lm *m, const char *name)
{
    for (int s = 0; s < m->nsites; s++)
        if (!strcmp(m->sites[s].name, name))
            return s;
    return -1;
}

/* The reference: site `site`'s outputs over the calibration windows, captured by the output
 * hook, with the float weights or every site's quantized weight (no correction anywhere). */
struct cap {
    struct qs_bench *b;
    int site, quant, rows, cap_rows, calls;
    float *y; /* (cap_rows, out) */
};

static const float *cap_weight(void *u, int s)
{
    struct cap *c = u;
    return c->quant ? qs_site_wq(c->b, s, NULL) : NULL;
}

static void cap_post(void *u, int s, float *y, int n, int out)
{
    struct cap *c = u;
    c->calls++;
    if (s != c->site)
        return;
    memcpy(c->y + (size_t)c->rows * out, y, (size_t)n * out * sizeof(float));
    c->rows += n;
}

static float *capture_out(struct qs_bench *b, int site, int quant, int *n)
{
    struct qs_lm *m = b->lm;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    *n = cw * m->ctx;
    struct cap c = {b, site, quant, 0, *n, 0, malloc((size_t)*n * m->sites[site].out * 4)};
    float *logits = malloc((size_t)m->ctx * m->vocab * sizeof *logits);
    struct qs_hooks h = {cap_weight, NULL, NULL, &c, cap_post, NULL, NULL};
    qs_err e = {{0}};
    int rc = c.y && logits ? 0 : -1;
    for (int w = 0; w < cw && rc == 0; w++)
        rc = qs_lm_forward(m, b->tokens->ids + (size_t)w * m->ctx, m->ctx, &h, logits, &e);
    free(logits);
    /* the hook saw every site once per window, and this site's rows are all the windows' */
    if (rc < 0 || c.calls != cw * m->nsites || c.rows != *n) {
        free(c.y);
        return NULL;
    }
    return c.y;
}

/* bias: db_j = mean over the calibration rows of Y_f - Y_q, in double here; eval applies it
 * (the quantized loss moves) and uncorrect restores eval bit for bit. */
static void test_bias_is_mean_error(void)
{
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm(models_[k]);
        CHECK(b != NULL);
        if (!b)
            continue;
        qs_err e = {{0}};
        CHECK(int3_rule(b) == b->lm->nsites);
        int s = site_index(b->lm, sites_[k]), d = b->lm->sites[s].out;
        CHECK(s >= 0);
        struct qs_lm_eval ev0, ev1, ev2;
        CHECK(qs_test_lm_eval(b, &ev0, &e) == 0);
        int nf = 0, nq = 0;
        float *yf = capture_out(b, s, 0, &nf), *yq = capture_out(b, s, 1, &nq);
        CHECK(yf && yq && nf == nq && nf > 0);
        if (qs_analysis_correct(b, s, QS_CORR_BIAS, 0, "float", -1, NULL, &e) < 0)
            fprintf(stderr, "  %s\n", e.msg);
        const struct qs_corr *c = &b->ls[s].corr;
        CHECK(c->method == QS_CORR_BIAS && c->db && c->params == d);
        double maxref = 0, maxdiff = 0;
        for (int j = 0; yf && yq && c->db && j < d; j++) {
            double acc = 0;
            for (int r = 0; r < nf; r++)
                acc += (double)yf[(size_t)r * d + j] - (double)yq[(size_t)r * d + j];
            acc /= nf;
            maxref = fmax(maxref, fabs(acc));
            maxdiff = fmax(maxdiff, fabs(acc - c->db[j]));
        }
        /* float32 pre-activations of one site differ only by the GEMM's summation order */
        CHECK(maxref > 1e-3);
        if (!(maxdiff <= 1e-5 * fmax(1.0, maxref)))
            fprintf(stderr, "  %s: max |db - mean(Yf - Yq)| = %.3g (max |mean| %.3g)\n", sites_[k],
                    maxdiff, maxref);
        CHECK(maxdiff <= 1e-5 * fmax(1.0, maxref));
        CHECK(c->recovery > 0 && c->recovery <= 1 && c->recovery_calib > 0);
        CHECK(qs_test_lm_eval(b, &ev1, &e) == 0);
        CHECK(ev1.loss_q != ev0.loss_q && ev1.loss == ev0.loss);
        qs_analysis_uncorrect(b, s);
        CHECK(qs_test_lm_eval(b, &ev2, &e) == 0);
        CHECK(ev2.loss_q == ev0.loss_q && ev2.kl == ev0.kl && ev2.top1_agree == ev0.top1_agree);
        free(yf);
        free(yq);
        qs_bench_free(b);
    }
}

/* linear: the ridge map qs_ridge_map_info fits on the same calibration pre-activations (A
 * stored transposed back: y' = y A^T + mb), with its lambda and rank_kept reported. */
static void test_linear_is_ridge_map(void)
{
    for (int k = 0; k < 2; k++) {
        struct qs_bench *b = qs_test_open_lm(models_[k]);
        CHECK(b != NULL);
        if (!b)
            continue;
        qs_err e = {{0}};
        CHECK(int3_rule(b) == b->lm->nsites);
        int s = site_index(b->lm, sites_[k]), d = b->lm->sites[s].out;
        int nf = 0, nq = 0;
        float *yf = capture_out(b, s, 0, &nf), *yq = capture_out(b, s, 1, &nq);
        float *at = malloc((size_t)d * d * sizeof *at), *mb = malloc((size_t)d * sizeof *mb);
        struct qs_ridge_info info;
        CHECK(yf && yq && at && mb && qs_ridge_map_info(yq, yf, nf, d, -1, at, mb, &info, &e) == 0);
        if (qs_analysis_correct(b, s, QS_CORR_LINEAR, 0, "float", -1, NULL, &e) < 0)
            fprintf(stderr, "  %s\n", e.msg);
        const struct qs_corr *c = &b->ls[s].corr;
        CHECK(c->method == QS_CORR_LINEAR && c->amap && c->mb);
        CHECK(c->params == (long)d * d + d && c->rank_kept == info.rank_kept);
        CHECK_REL(c->lambda, info.lambda, 1e-3);
        double maxa = 0, maxdiff = 0;
        for (int r = 0; c->amap && r < d; r++)
            for (int j = 0; j < d; j++) {
                maxa = fmax(maxa, fabs(at[(size_t)j * d + r]));
                maxdiff = fmax(maxdiff, fabs(at[(size_t)j * d + r] - c->amap[(size_t)r * d + j]));
            }
        if (!(maxdiff <= 1e-3 * maxa))
            fprintf(stderr, "  %s: max |A - A_ref| = %.3g (max |A| %.3g)\n", sites_[k], maxdiff,
                    maxa);
        CHECK(maxdiff <= 1e-3 * maxa);
        CHECK(c->recovery > 0 && c->recovery <= 1);
        /* int8: the map's own weights packed per row, fewer bits than float */
        double fbits = c->bits;
        CHECK(qs_analysis_correct(b, s, QS_CORR_LINEAR, 0, "int8", -1, NULL, &e) == 0);
        CHECK(!strcmp(b->ls[s].corr.prec, "int8") && b->ls[s].corr.bits < fbits);
        free(yf);
        free(yq);
        free(at);
        free(mb);
        qs_bench_free(b);
    }
}

/* The output hook rewrites what the next step sees: zeroing the head's output zeroes the
 * logits. */
static void zero_post(void *u, int s, float *y, int n, int out)
{
    if (s == *(int *)u)
        memset(y, 0, (size_t)n * out * sizeof(float));
}

static void test_post_hook_rewrites(void)
{
    struct qs_bench *b = qs_test_open_lm(models_[1]);
    CHECK(b != NULL);
    if (!b)
        return;
    struct qs_lm *m = b->lm;
    int head = m->nsites - 1;
    CHECK(!strcmp(m->sites[head].name, "lm_head"));
    float *lg = malloc((size_t)m->ctx * m->vocab * sizeof *lg);
    struct qs_hooks h = {NULL, NULL, NULL, &head, zero_post, NULL, NULL};
    qs_err e = {{0}};
    CHECK(lg && qs_lm_forward(m, b->tokens->ids, m->ctx, &h, lg, &e) == 0);
    double mx = 0;
    for (size_t j = 0; lg && j < (size_t)m->ctx * m->vocab; j++)
        mx = fmax(mx, fabs(lg[j]));
    CHECK(mx == 0);
    free(lg);
    qs_bench_free(b);
}

/* A linear map is not fitted on a site with more than 4096 outputs (a real vocabulary head: its
 * map alone would be out^2 floats); the message names the size. The site's declared width is
 * raised after the activations are cached, so the refusal must come before any allocation. */
static void test_wide_head_refused(void)
{
    struct qs_bench *b = qs_test_open_lm(models_[0]);
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    CHECK(int3_rule(b) == b->lm->nsites);
    int head = b->lm->nsites - 1;
    CHECK(qs_analysis_correct(b, head, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    const float *x;
    int nx;
    CHECK(qs_bench_inputs(b, QS_CALIB, 0, head, &x, &nx, &e) == 0); /* the caches are whole again */
    int out = b->lm->sites[head].out;
    b->lm->sites[head].out = 50257;
    CHECK(qs_analysis_correct(b, head, QS_CORR_LINEAR, 0, "float", -1, NULL, &e) < 0);
    CHECK(strstr(e.msg, "50257 outputs") && strstr(e.msg, "4096"));
    CHECK(qs_analysis_correct(b, head, QS_CORR_CLOCAL, 0, "float", -1, NULL, &e) < 0);
    b->lm->sites[head].out = out;
    CHECK(b->ls[head].corr.method == QS_CORR_BIAS); /* a refused fit leaves the old one */
    qs_bench_free(b);
}

TEST_MAIN("lmcorr", TEST_CASE(test_wide_head_refused), TEST_CASE(test_bias_is_mean_error),
          TEST_CASE(test_linear_is_ridge_map), TEST_CASE(test_post_hook_rewrites))
