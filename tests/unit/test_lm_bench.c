/* test_lm_bench.c - the one core on transformers: error's streamed per-site sums, kept between
 * calls and recomputed from a changed site on, end bit for bit in the state a fresh bench
 * computes from scratch after any sequence of rule and correction changes; they equal an
 * independent whole-window reference (every site's inputs captured by plain forwards), also
 * when the activation budget splits the sites into several passes; set calib tokens=N. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "test.h"

/* The first 24576 tokens of the text: a held-out split of 38 windows instead of 225 (the
 * figures checked here are relations between runs, not values). */
#define LM_TOKENS 24576

static int rule(struct qs_bench *b, const char *pat, const char *fmt, const char *opt, int roles,
                enum qs_amode am)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    if (opt && qs_qopts_parse_token(&r.opt, opt, &e) < 0)
        return -1;
    r.roles = roles;
    r.amode = am;
    int n;
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return -1;
    }
    return n;
}

/* Every field of error's per-site figures, exactly. */
static int same_errors(struct qs_bench *a, struct qs_bench *b)
{
    qs_err e = {{0}};
    int S = qs_bench_nunits(a), ok = 1;
    struct qs_layer_err *ea = calloc((size_t)S, sizeof *ea), *eb = calloc((size_t)S, sizeof *eb);
    if (!ea || !eb || qs_analysis_errors(a, ea, &e) < 0 || qs_analysis_errors(b, eb, &e) < 0)
        ok = 0;
    for (int i = 0; ok && i < S; i++)
        ok = ea[i].preact_rel_mse == eb[i].preact_rel_mse && ea[i].cosine == eb[i].cosine &&
             ea[i].local_rel_mse == eb[i].local_rel_mse && ea[i].kl_alone == eb[i].kl_alone &&
             ea[i].w_only == eb[i].w_only && ea[i].a_only == eb[i].a_only &&
             ea[i].interaction == eb[i].interaction && ea[i].has_attr == eb[i].has_attr;
    free(ea);
    free(eb);
    return ok;
}

static void incremental(const char *dir, const char *late, const char *early)
{
    qs_err e = {{0}};
    struct qs_bench *a = qs_test_open_lm_n(dir, LM_TOKENS), *b = qs_test_open_lm_n(dir, LM_TOKENS);
    CHECK(a && b);
    if (!a || !b)
        goto out;
    int S = qs_bench_nunits(a), il = qs_bench_layer_index(a, late);
    struct qs_layer_err *err = calloc((size_t)S, sizeof *err);
    CHECK(il > 0 && err);
    CHECK(qs_analysis_errors(a, err, &e) == 0); /* everything float: the sums kept */
    CHECK(a->errc && a->errc->valid == S);
    CHECK(rule(a, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(a->errc->valid == 0);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    /* a change at a late site keeps the sums before it and the other sites' KL runs */
    CHECK(rule(a, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(a->errc->valid == il && !a->errc->kl_ok[il] && a->errc->kl_ok[0]);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    CHECK(qs_analysis_correct(a, il, QS_CORR_LQER, 4, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    /* static activation scales on an early site, then a weight-only change after it */
    CHECK(rule(a, early, "int8", NULL, QS_ROLE_W | QS_ROLE_A, QS_AMODE_STATIC) == 1);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    CHECK(rule(a, late, "fp8-e4m3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    CHECK(qs_analysis_correct(a, il, QS_CORR_LOWRANK, 2, "int8", -1, NULL, &e) == 0);
    /* the same final configuration from scratch */
    CHECK(rule(b, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(rule(b, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(rule(b, early, "int8", NULL, QS_ROLE_W | QS_ROLE_A, QS_AMODE_STATIC) == 1);
    CHECK(rule(b, late, "fp8-e4m3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_analysis_correct(b, il, QS_CORR_LOWRANK, 2, "int8", -1, NULL, &e) == 0);
    CHECK(a->ls[il].corr.recovery == b->ls[il].corr.recovery &&
          a->ls[il].corr.recovery_calib == b->ls[il].corr.recovery_calib);
    CHECK(same_errors(a, b));
    /* a bias correction fitted last (on the same quantized path in both) keeps them equal */
    int ie = qs_bench_layer_index(a, early);
    CHECK(qs_analysis_correct(a, ie, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0 &&
          qs_analysis_correct(b, ie, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(a->errc->valid == ie);
    CHECK(same_errors(a, b));
    CHECK(a->ls[ie].corr.recovery == b->ls[ie].corr.recovery);
    struct qs_eval ea, eb;
    CHECK(qs_bench_eval(a, &ea, &e) == 0 && qs_bench_eval(b, &eb, &e) == 0);
    CHECK(ea.q.loss == eb.q.loss && ea.kl == eb.kl && ea.agree == eb.agree);
    /* every site's propagated pre-activations (a site's row cache) agree */
    for (int i = 0; i < S; i++) {
        float *y1 = NULL, *y2 = NULL;
        int n1 = 0, n2 = 0;
        CHECK(qs_bench_preact(a, QS_CALIB, 1, i, &y1, &n1, &e) == 0 &&
              qs_bench_preact(b, QS_CALIB, 1, i, &y2, &n2, &e) == 0 && n1 == n2 &&
              memcmp(y1, y2, (size_t)n1 * a->lm->sites[i].out * sizeof(float)) == 0);
        free(y1);
        free(y2);
    }
    /* no whole-model activation cache is kept on a transformer */
    CHECK(a->f_acts[QS_CALIB].in == NULL && a->q_acts[QS_CALIB].in == NULL);
    free(err);
out:
    qs_bench_free(a);
    qs_bench_free(b);
}

static void test_incremental_llama(void)
{
    incremental("datasets/models/tiny-llama", "model.layers.1.mlp.up_proj",
                "model.layers.0.self_attn.o_proj");
}

static void test_incremental_gpt2(void)
{
    incremental("datasets/models/tiny-gpt2", "h.1.mlp.c_fc", "h.0.attn.c_proj");
}

/* The transformer's stale caches (the MLP's test_stale_corrections and
 * test_incremental_bit_identical on the one core's LM path): a bias correction fitted on a late
 * site, then a change of an upstream site's format. Everything downstream of the change must be
 * forgotten: the late site's row cache (its quantized-path inputs), error's kept sums and KL runs,
 * and the bias fit (flagged stale; a low-rank fit, which sees only W, Q(W) and float inputs, is
 * not). The late site's inputs, error's figures and eval then equal a fresh bench's built
 * directly in the final state, and so does the bias refitted on them. */
static void test_stale_caches_gpt2(void)
{
    const char *dir = "datasets/models/tiny-gpt2", *late = "h.1.mlp.c_fc", *mid = "h.0.mlp.c_proj",
               *early = "h.0.attn.c_proj";
    qs_err e = {{0}};
    struct qs_bench *a = qs_test_open_lm_n(dir, LM_TOKENS), *b = qs_test_open_lm_n(dir, LM_TOKENS);
    CHECK(a && b);
    if (!a || !b)
        goto out;
    int S = qs_bench_nunits(a), il = qs_bench_layer_index(a, late),
        im = qs_bench_layer_index(a, mid), ie = qs_bench_layer_index(a, early);
    CHECK(0 <= ie && ie < im && im < il);
    struct qs_layer_err *err = calloc((size_t)S, sizeof *err);
    CHECK(err != NULL);
    if (!err)
        goto out;
    /* a: every cache filled in the first state (late site int3, a bias fitted on it) */
    CHECK(rule(a, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(rule(a, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_analysis_correct(a, im, QS_CORR_LOWRANK, 2, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_correct(a, il, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_errors(a, err, &e) == 0);
    struct qs_eval ea, eb;
    CHECK(qs_bench_eval(a, &ea, &e) == 0);
    const float *x1 = NULL;
    int n1 = 0;
    CHECK(qs_bench_inputs(a, QS_CALIB, 1, il, &x1, &n1, &e) == 0); /* the late site's rows */
    double r_before = a->ls[il].corr.recovery;
    CHECK(!a->ls[il].corr.stale && !a->ls[im].corr.stale);
    /* then the upstream change */
    CHECK(rule(a, early, "int8", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(a->ls[il].corr.stale && !a->ls[im].corr.stale &&
          a->ls[im].corr.method == QS_CORR_LOWRANK);
    /* b: the final state built directly */
    CHECK(rule(b, "*", "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == S);
    CHECK(rule(b, late, "int3", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(rule(b, early, "int8", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(qs_analysis_correct(b, im, QS_CORR_LOWRANK, 2, "float", -1, NULL, &e) == 0);
    /* the late site's quantized-path inputs are the final state's */
    const float *xa = NULL, *xb = NULL;
    int na = 0, nb = 0, in = a->lm->sites[il].in;
    CHECK(qs_bench_inputs(a, QS_CALIB, 1, il, &xa, &na, &e) == 0);
    float *keep = xa ? malloc((size_t)na * in * sizeof(float)) : NULL;
    if (keep)
        memcpy(keep, xa, (size_t)na * in * sizeof(float));
    CHECK(qs_bench_inputs(b, QS_CALIB, 1, il, &xb, &nb, &e) == 0);
    CHECK(keep && xb && na == nb && memcmp(keep, xb, (size_t)na * in * sizeof(float)) == 0);
    free(keep);
    /* the stale bias refitted in a equals b's fitted fresh, bit for bit */
    CHECK(qs_analysis_correct(a, il, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(qs_analysis_correct(b, il, QS_CORR_BIAS, 0, "float", -1, NULL, &e) == 0);
    CHECK(!a->ls[il].corr.stale);
    CHECK(a->ls[il].corr.db && b->ls[il].corr.db &&
          memcmp(a->ls[il].corr.db, b->ls[il].corr.db,
                 (size_t)a->lm->sites[il].out * sizeof(float)) == 0);
    CHECK(a->ls[il].corr.recovery == b->ls[il].corr.recovery &&
          a->ls[il].corr.recovery_calib == b->ls[il].corr.recovery_calib);
    CHECK(a->ls[il].corr.recovery != r_before); /* the change reached the late site */
    CHECK(same_errors(a, b));
    CHECK(qs_bench_eval(a, &ea, &e) == 0 && qs_bench_eval(b, &eb, &e) == 0);
    CHECK(ea.q.loss == eb.q.loss && ea.kl == eb.kl && ea.agree == eb.agree);
    free(err);
out:
    qs_bench_free(a);
    qs_bench_free(b);
}

/* ---- the streamed sums against an independent whole-window reference --------------------- */

/* The reference: each calibration window through qs_lm_forward twice (float; every site through
 * qs_bench_layer_forward with its roles and correction), capturing every site's input, then each
 * site's sums in row order (float pre-activations recomputed from the float input). */
struct cap {
    struct qs_bench *b;
    float **x;
    int quant;
};

static void cap_input(void *u, int s, const float *x, int n, int in)
{
    struct cap *c = u;
    memcpy(c->x[s], x, (size_t)n * in * sizeof(float));
}

static int cap_linear(void *u, int s, const float *x, int n, float *y, qs_err *e)
{
    struct cap *c = u;
    return qs_bench_layer_forward(c->b, s, x, n, c->quant ? QS_ROLE_W | QS_ROLE_A : 0, c->quant, y,
                                  e);
}

static double head64[4]; /* the head's sums in float64 (reference) */

static void reference(struct qs_bench *b, double (*sum)[5])
{
    qs_err e = {{0}};
    const struct qs_lm *m = b->lm;
    int S = m->nsites, T = m->ctx, nw = qs_bench_stream_windows(b, QS_CALIB, &e);
    float **xf = calloc((size_t)S, sizeof *xf), **xq = calloc((size_t)S, sizeof *xq);
    float *lg = malloc((size_t)T * m->vocab * sizeof(float));
    for (int i = 0; i < S; i++) {
        xf[i] = malloc((size_t)T * m->sites[i].in * sizeof(float));
        xq[i] = malloc((size_t)T * m->sites[i].in * sizeof(float));
    }
    memset(sum, 0, (size_t)S * sizeof *sum);
    memset(head64, 0, sizeof head64);
    for (int w = 0; w < nw; w++) {
        const uint32_t *tok = b->tokens->ids + (size_t)w * T;
        struct cap cf = {b, xf, 0}, cq = {b, xq, 1};
        struct qs_hooks hf = {0}, hq = {0};
        hf.u = &cf;
        hf.input = cap_input;
        hq.u = &cq;
        hq.input = cap_input;
        hq.linear = cap_linear;
        CHECK(qs_lm_forward(m, tok, T, &hf, lg, &e) == 0 &&
              qs_lm_forward(m, tok, T, &hq, lg, &e) == 0);
        for (int i = 0; i < S; i++) {
            size_t len = (size_t)T * m->sites[i].out;
            float *yf = malloc(len * sizeof(float)), *yq = malloc(len * sizeof(float));
            float *yl = malloc(len * sizeof(float));
            CHECK(qs_bench_layer_forward(b, i, xf[i], T, 0, 0, yf, &e) == 0 &&
                  qs_bench_layer_forward(b, i, xq[i], T, QS_ROLE_W | QS_ROLE_A, 1, yq, &e) == 0 &&
                  qs_bench_layer_forward(b, i, xf[i], T, QS_ROLE_W | QS_ROLE_A, 1, yl, &e) == 0);
            for (size_t j = 0; j < len; j++)
                sum[i][0] += (double)yf[j] * yf[j];
            for (size_t j = 0; j < len; j++)
                sum[i][1] += ((double)yq[j] - yf[j]) * ((double)yq[j] - yf[j]);
            for (size_t j = 0; j < len; j++)
                sum[i][2] += (double)yq[j] * yq[j];
            for (size_t j = 0; j < len; j++)
                sum[i][3] += (double)yq[j] * yf[j];
            for (size_t j = 0; j < len; j++)
                sum[i][4] += ((double)yl[j] - yf[j]) * ((double)yl[j] - yf[j]);
            free(yf);
            free(yq);
            free(yl);
        }
        /* the head in float64 throughout: y = W x with W and x widened, the sums of y */
        const struct qs_lm_site *hs = &m->sites[S - 1];
        const float *hw = qs_bench_w(b, S - 1, &e);
        CHECK(hw != NULL);
        for (int t = 0; hw && t < T; t++)
            for (int o = 0; o < hs->out; o++) {
                double yf = 0, yq = 0;
                const float *x = xf[S - 1] + (size_t)t * hs->in,
                            *z = xq[S - 1] + (size_t)t * hs->in, *wr = hw + (size_t)o * hs->in;
                for (int k = 0; k < hs->in; k++) {
                    yf += (double)wr[k] * x[k];
                    yq += (double)wr[k] * z[k];
                }
                head64[0] += yf * yf;
                head64[1] += (yq - yf) * (yq - yf);
                head64[2] += yq * yq;
                head64[3] += yq * yf;
            }
    }
    for (int i = 0; i < S; i++) {
        free(xf[i]);
        free(xq[i]);
    }
    free(xf);
    free(xq);
    free(lg);
}

/* `error`'s figures against the reference's sums, bit for bit; a float head's (from its Gram
 * matrix, unless head_direct) against the float64 sums within 1e-9: the reference's own, from
 * rounded float outputs, is off by 1e-8 to 1e-7 there. */
static int matches(struct qs_bench *b, double (*sum)[5])
{
    qs_err e = {{0}};
    int S = qs_bench_nunits(b), ok = 1;
    struct qs_layer_err *err = calloc((size_t)S, sizeof *err);
    if (qs_analysis_errors(b, err, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        ok = 0;
    }
    for (int i = 0; ok && i < S; i++) {
        double den = sum[i][0];
        double p = den > 0 ? sum[i][1] / den : 0.0, l = den > 0 ? sum[i][4] / den : 0.0;
        double cs = den > 0 && sum[i][2] > 0 ? sum[i][3] / sqrt(den * sum[i][2]) : 1.0;
        if (i == S - 1 && !b->head_direct && qs_bench_site_identity(b, i)) {
            double p64 = head64[1] / head64[0], c64 = head64[3] / sqrt(head64[0] * head64[2]);
            if (fabs(err[i].preact_rel_mse - p64) > 1e-9 * p64 || err[i].local_rel_mse != 0 ||
                fabs(err[i].cosine - c64) > 1e-12) {
                fprintf(stderr, "  head: %.17g %.17g (float64) / %.17g %.17g (float64)\n",
                        err[i].preact_rel_mse, p64, err[i].cosine, c64);
                ok = 0;
            }
            continue;
        }
        if (err[i].preact_rel_mse != p || err[i].local_rel_mse != l || err[i].cosine != cs) {
            fprintf(stderr, "  site %d: %.17g %.17g / %.17g %.17g / %.17g %.17g\n", i,
                    err[i].preact_rel_mse, p, err[i].local_rel_mse, l, err[i].cosine, cs);
            ok = 0;
        }
    }
    free(err);
    return ok;
}

static void streamed(const char *dir, const char *mid)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_lm_n(dir, LM_TOKENS);
    CHECK(b != NULL);
    if (!b)
        return;
    int S = qs_bench_nunits(b), im = qs_bench_layer_index(b, mid);
    double(*sum)[5] = calloc((size_t)S, sizeof *sum);
    /* quantized from a middle site on (the quantized pass resumes from its block), with a
     * correction and activation quantization on the way */
    CHECK(im > 0 && rule(b, mid, "int4", "gran=channel", 0, QS_AMODE_DYNAMIC) == 1);
    CHECK(rule(b, "*mlp*", "int8", NULL, QS_ROLE_A, QS_AMODE_TOKEN) > 0);
    CHECK(qs_analysis_correct(b, im, QS_CORR_LOWRANK, 2, "float", -1, NULL, &e) == 0);
    reference(b, sum);
    CHECK(matches(b, sum));
    /* the head's outputs computed: the reference's bits */
    b->head_direct = 1;
    qs_bench_invalidate(b, S - 1);
    CHECK(matches(b, sum));
    b->head_direct = 0;
    qs_bench_invalidate(b, S - 1);
    /* a budget of one site's window inputs: every site its own pass, the same sums */
    size_t one = 0;
    for (int i = 0; i < S; i++) {
        size_t w = (size_t)b->lm->ctx * b->lm->sites[i].in * sizeof(float);
        one = w > one ? w : one;
    }
    b->act_budget = one;
    qs_bench_caches_free(b);
    CHECK(matches(b, sum));
    /* below it: refused, naming the budget */
    b->act_budget = one - 1;
    qs_bench_caches_free(b);
    struct qs_layer_err *err = calloc((size_t)S, sizeof *err);
    CHECK(qs_analysis_errors(b, err, &e) < 0 && strstr(e.msg, "activation budget"));
    free(err);
    /* everything float: the float pass alone gives zero error everywhere */
    b->act_budget = QS_ACT_BUDGET;
    CHECK(rule(b, "*", "none", NULL, 0, QS_AMODE_DYNAMIC) == S);
    qs_analysis_uncorrect(b, im);
    reference(b, sum);
    CHECK(matches(b, sum));
    /* the sums, and the block-entry residuals within the activation budget */
    size_t hin = (size_t)b->lm->sites[S - 1].in;
    CHECK(b->head_gram != NULL);
    CHECK(qs_bench_held_bytes(b) - qs_resid_cache_bytes(b->resc[0]) - hin * hin * sizeof(double) <
          4096);
    CHECK(qs_resid_cache_bytes(b->resc[0]) <= b->act_budget);
    free(sum);
    qs_bench_free(b);
}

static void test_streamed_gpt2(void)
{
    streamed("datasets/models/tiny-gpt2", "h.0.mlp.c_proj");
}
static void test_streamed_llama(void)
{
    streamed("datasets/models/tiny-llama", "model.layers.0.mlp.gate_proj");
}

/* set calib tokens=N: N / ctx windows (at least one), remembered for info and the journal */
static void test_calib_tokens(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_lm_n("datasets/models/tiny-gpt2", LM_TOKENS);
    if (!b)
        return;
    int ctx = b->lm->ctx;
    CHECK(qs_bench_set_calib_tokens(b, 3 * ctx + 5, &e) == 0 && b->calib_n == 3 &&
          b->calib_tokens == 3 * ctx + 5);
    CHECK(qs_bench_stream_windows(b, QS_CALIB, &e) == 3);
    CHECK(qs_bench_set_calib_tokens(b, 1, &e) == 0 && b->calib_n == 1);
    CHECK(qs_bench_set_calib_tokens(b, 0, &e) < 0);
    CHECK(qs_bench_set_calib(b, 2, &e) == 0 && b->calib_tokens == 0);
    qs_bench_free(b);
}

/* amode=static and amode=dynamic differ on a transformer (the drift the one core removed). */
static void test_static_differs(void)
{
    qs_err e = {{0}};
    struct qs_bench *a = qs_test_open_lm_n("datasets/models/tiny-gpt2", LM_TOKENS);
    if (!a)
        return;
    struct qs_eval d, s;
    CHECK(rule(a, "*", "int4", NULL, QS_ROLE_A, QS_AMODE_DYNAMIC) > 0);
    CHECK(qs_bench_eval(a, &d, &e) == 0);
    CHECK(rule(a, "*", "int4", NULL, QS_ROLE_A, QS_AMODE_STATIC) > 0);
    CHECK(qs_bench_eval(a, &s, &e) == 0);
    CHECK(d.q.loss != s.q.loss && a->ls[0].a_static_amax > 0);
    qs_bench_free(a);
}

TEST_MAIN("lm_bench", TEST_CASE(test_incremental_llama), TEST_CASE(test_incremental_gpt2),
          TEST_CASE(test_stale_caches_gpt2), TEST_CASE(test_streamed_gpt2),
          TEST_CASE(test_streamed_llama), TEST_CASE(test_calib_tokens),
          TEST_CASE(test_static_differs))
