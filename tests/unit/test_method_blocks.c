/* test_method_blocks.c - a transformer's quantizer methods on the quantized path's inputs
 * (method=gptq|awq, weight=imatrix with inputs=quant) take their input moments block by block
 * (sitemethod.c: the residual stream kept at the current block's entry for every calibration
 * window, each block run alone from it). The codes, scales, effective weights and activation
 * transforms of every site must be bit for bit those of the site-by-site reference
 * (qs_bench_methods_refresh_sitewise: each site's moments streamed from the embeddings), on
 * GPT-2 and LLaMA (whose q, k, v and gate, up share one accumulation), with a rotated site
 * (computed site by site) and static activation scales in between, with the head, and when the
 * kept stream does not fit the activation budget. The block pass must also not stream any site
 * on its own: a per-site stream reports its calibration windows through the progress hook. */
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"
#include "test.h"

/* Fewer held-out windows: what is compared is the calibration side. */
#define LM_TOKENS 24576

struct rl {
    const char *pat, *fmt, *toks;
    int roles;
    enum qs_amode am;
};

static int add(struct qs_bench *b, const struct rl *r, qs_err *e)
{
    struct qs_rule q;
    memset(&q, 0, sizeof q);
    snprintf(q.pattern, sizeof q.pattern, "%s", r->pat);
    if (qs_format_parse(r->fmt, &q.fmt, e) < 0)
        return -1;
    qs_qopts_default(&q.opt);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", r->toks ? r->toks : "");
    for (char *t = strtok(buf, " "); t; t = strtok(NULL, " ")) {
        int k = qs_rule_method_parse_token(&q.meth, t, e);
        if (k < 0 || (!k && qs_qopts_parse_token(&q.opt, t, e) < 0))
            return -1;
    }
    if (qs_rule_method_check(&q.meth, &q.fmt, r->roles, e) < 0)
        return -1;
    q.roles = r->roles;
    q.amode = r->am;
    int n;
    return qs_bench_add_rule(b, &q, &n, e);
}

static long streamed; /* progress lines of per-site streams */

static void count(void *ctx, const char *what, double frac)
{
    (void)ctx, (void)frac;
    if (!strncmp(what, "calibration windows", 19))
        streamed++;
}

/* Applies the rules (nr of them, in order) on a fresh bench: blocks 1 through
 * qs_bench_methods_refresh as `quant` does, 0 through the site-by-site reference (the rules
 * added with the refresh held off, then the reference run). budget: act_budget (0: default).
 * *nstream: the per-site streams' window reports during the refresh. */
static struct qs_bench *apply(const char *dir, const struct rl *r, int nr, int blocks,
                              size_t budget, long *nstream)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_lm_n(dir, LM_TOKENS);
    if (!b)
        return NULL;
    if (budget)
        b->act_budget = budget;
    b->progress = count;
    streamed = 0;
    int ok = 1;
    for (int k = 0; k < nr && ok; k++) {
        b->methods_busy = !blocks; /* the reference computes them below, site by site */
        ok = add(b, &r[k], &e) >= 0;
        b->methods_busy = 0;
        if (ok && !blocks)
            ok = qs_bench_methods_refresh_sitewise(b, 1, &e) == 0;
        if (ok && blocks)
            ok = qs_bench_methods_refresh(b, 1, &e) == 0;
    }
    b->progress = NULL;
    *nstream = streamed;
    if (!ok) {
        fprintf(stderr, "  %s: %s\n", dir, e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

static int same_bytes(const void *a, const void *b, size_t n)
{
    return n == 0 || (a && b && !memcmp(a, b, n));
}

/* Every site of a and b: the same codes, scales, zero points, effective weight, transform. */
static int same_sites(struct qs_bench *a, struct qs_bench *b, int *nmethod)
{
    qs_err e = {{0}};
    int S = qs_bench_nunits(a), ok = S == qs_bench_nunits(b);
    *nmethod = 0;
    for (int i = 0; ok && i < S; i++) {
        const struct qs_layer_state *x = &a->ls[i], *y = &b->ls[i];
        struct qs_unit u;
        qs_bench_unit(a, i, &u);
        ok = x->wquant == y->wquant && !x->mpending && !y->mpending &&
             x->wm.method == y->wm.method && x->w_rel_err == y->w_rel_err &&
             x->xs_alpha == y->xs_alpha && !x->xs == !y->xs &&
             (!x->xs || same_bytes(x->xs, y->xs, (size_t)u.in * sizeof(float))) &&
             !x->rot == !y->rot && x->a_static_amax == y->a_static_amax;
        if (ok && x->wquant) {
            const struct qs_packed *p = &x->packed, *q = &y->packed;
            ok = p->code_bytes == q->code_bytes && p->scale_bytes == q->scale_bytes &&
                 p->zero_bytes == q->zero_bytes && p->tensor_scale == q->tensor_scale &&
                 same_bytes(p->codes, q->codes, p->code_bytes) &&
                 same_bytes(p->scales, q->scales, p->scale_bytes) &&
                 same_bytes(p->zeros, q->zeros, p->zero_bytes);
            const float *wa = qs_site_wq(a, i, &e);
            float *wc = wa ? malloc((size_t)u.out * u.in * sizeof *wc) : NULL;
            if (wc)
                memcpy(wc, wa, (size_t)u.out * u.in * sizeof *wc);
            const float *wb = qs_site_wq(b, i, &e);
            ok = ok && wc && wb && !memcmp(wc, wb, (size_t)u.out * u.in * sizeof *wc);
            free(wc);
        }
        if (!ok)
            fprintf(stderr, "  site %d (%s) differs\n", i, u.name);
        if (x->wm.method != QS_METHOD_RTN)
            (*nmethod)++;
    }
    return ok;
}

static void check(const char *dir, const struct rl *r, int nr, size_t budget, int expect_stream)
{
    long sa = 0, sb = 0;
    struct qs_bench *a = apply(dir, r, nr, 1, budget, &sa);
    struct qs_bench *b = apply(dir, r, nr, 0, budget, &sb);
    CHECK(a && b);
    if (a && b) {
        int nm = 0;
        CHECK(same_sites(a, b, &nm));
        CHECK(nm > 0);
        /* the reference streams every method site's windows; the block pass none (but for a
         * rotated site, or every site when the kept stream does not fit) */
        CHECK(sb > 0);
        CHECK(expect_stream ? sa > 0 : sa == 0);
        CHECK(expect_stream < 2 || sa == sb);
        fprintf(stderr,
                "  %s %s %s: %d method sites, per-site stream reports %ld (reference %ld)\n", dir,
                r[0].fmt, r[0].toks, nm, sa, sb);
    }
    qs_bench_free(a);
    qs_bench_free(b);
}

static const char *dirs[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};

static void test_gptq(void)
{
    const struct rl r[] = {{"*", "int4", "gran=channel method=gptq", 0, QS_AMODE_DYNAMIC}};
    for (int k = 0; k < 2; k++)
        check(dirs[k], r, 1, 0, 0);
}

static void test_awq_imatrix(void)
{
    const struct rl a[] = {{"*", "int3", "gran=group:32 method=awq", 0, QS_AMODE_DYNAMIC}};
    const struct rl m[] = {{"*", "int4", "gran=group:16 weight=imatrix", 0, QS_AMODE_DYNAMIC}};
    for (int k = 0; k < 2; k++) {
        check(dirs[k], a, 1, 0, 0);
        check(dirs[k], m, 1, 0, 0);
    }
}

/* GPTQ on weights and activations with static scales (calibrated again after each method site:
 * the block pass runs the sites before with them), act order, then a rotated GPTQ site in the
 * middle of a block (site by site: its statistics are of rotated rows) and SmoothQuant + GPTQ on
 * another: the sites after them see their final weights. */
static void test_mixed(void)
{
    const struct rl g[] = {
        {"*", "int4", "gran=channel method=gptq order=act damp=0.05", 0, QS_AMODE_DYNAMIC},
        {"*", "int8", NULL, QS_ROLE_A, QS_AMODE_STATIC},
        {"h.0.attn.c_proj", "int4", "gran=channel method=gptq rotate=hadamard", 0,
         QS_AMODE_DYNAMIC},
        {"h.1.mlp.c_fc", "int4", "gran=channel method=gptq smooth=0.5", 0, QS_AMODE_DYNAMIC}};
    check(dirs[0], g, 4, 0, 1);
    const struct rl l[] = {{"*", "int4", "gran=group:32 method=gptq", 0, QS_AMODE_DYNAMIC},
                           {"*", "int8", NULL, QS_ROLE_A, QS_AMODE_STATIC},
                           {"model.layers.0.self_attn.k_proj", "int4",
                            "gran=channel method=gptq rotate=hadamard", 0, QS_AMODE_DYNAMIC},
                           {"model.layers.1.mlp.up_proj", "int4",
                            "gran=group:32 method=awq inputs=float", 0, QS_AMODE_DYNAMIC}};
    check(dirs[1], l, 4, 0, 1);
}

/* A budget below the kept stream (8 windows x 64 x 64 floats: 128 KiB) but above one window's
 * widest site input (64 x 256 floats: 64 KiB): every site streams on its own, as the reference
 * does. */
static void test_budget(void)
{
    const struct rl r[] = {{"*", "int4", "gran=channel method=gptq", 0, QS_AMODE_DYNAMIC}};
    check(dirs[0], r, 1, 100000, 2);
}

/* The block pass's first block starts from the quantized path's entry that error's paired
 * stream kept (qs_bench_resid_resume), not from the embeddings: GPTQ on a block-1 site after
 * block 0's site was quantized and `error` ran gives the codes of a bench where nothing was kept
 * (the entries dropped), and its pass started at block 1. Fails when the pass reads the float
 * entry (block 0 is quantized, so the two differ) or an entry a change dropped. */
static void test_resume_entries(void)
{
    for (int d = 0; d < 2; d++) {
        struct qs_bench *a = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(a && b);
        if (!a || !b) {
            qs_bench_free(a);
            qs_bench_free(b);
            continue;
        }
        const struct qs_lm *m = a->lm;
        char p0[96], p1[96];
        snprintf(p0, sizeof p0, "%s", m->sites[qs_lm_block_first_site(m, 0) + 1].name);
        snprintf(p1, sizeof p1, "%s", m->sites[qs_lm_block_first_site(m, 1) + 2].name);
        const struct rl r0 = {p0, "int4", "gran=channel", 0, QS_AMODE_DYNAMIC},
                        r1 = {p1, "int4", "gran=channel method=gptq", 0, QS_AMODE_DYNAMIC};
        qs_err e = {{0}};
        int S = m->nsites;
        unsigned char *want = malloc((size_t)S);
        double *sums = calloc((size_t)S * QS_ERR_NSUMS, sizeof *sums);
        memset(want, 1, (size_t)S);
        struct qs_bench *both[2] = {a, b};
        for (int k = 0; k < 2; k++) {
            struct qs_bench *x = both[k];
            CHECK(add(x, &r0, &e) >= 0 && qs_bench_methods_refresh(x, 1, &e) == 0);
            CHECK(qs_analysis_error_sums(x, want, 1, sums, &e) == 0);
            CHECK(x->resc[QS_CALIB] && x->resc[QS_CALIB]->ok[1][0]);
            if (k == 1) { /* b: nothing kept */
                qs_resid_cache_free(x->resc[QS_CALIB]);
                x->resc[QS_CALIB] = NULL;
            }
            CHECK(add(x, &r1, &e) >= 0 && qs_bench_methods_refresh(x, 1, &e) == 0);
        }
        CHECK(a->resc[QS_CALIB] && a->resc[QS_CALIB]->last_from == 1);
        int nm = 0;
        CHECK(same_sites(a, b, &nm));
        CHECK(nm == 1);
        free(want);
        free(sums);
        qs_bench_free(a);
        qs_bench_free(b);
    }
}

TEST_MAIN("method_blocks", TEST_CASE(test_gptq), TEST_CASE(test_awq_imatrix), TEST_CASE(test_mixed),
          TEST_CASE(test_budget), TEST_CASE(test_resume_entries))
