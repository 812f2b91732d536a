/* test_err_pairs.c - `error` on a transformer streams the float and quantized paths in lockstep,
 * block by block (qs_bench_stream_pairs), so each site's float output is the forward's own
 * rather than recomputed from its captured input. Every site's sums (the float and propagated
 * norms and products, the local error, the attributions) must be bit for bit those of the old
 * stream (qs_bench_stream, the float outputs recomputed: qs_analysis_error_sums paired 0), on
 * GPT-2 and LLaMA, with sites quantized in two blocks (one weights and activations, one with
 * static activation scales), a corrected site, identity sites after quantized ones, a subset of
 * sites wanted (as after a change), only the head quantized, nothing quantized, and when a
 * block's kept activations exceed the budget (the old stream then, as said). Bit for bit holds
 * while a site's outputs fit the 16 MB chunk of the old stream's recompute (every bundled model):
 * beyond it (TinyLlama's gate and up) the old stream's float outputs come in row pieces, and the
 * sums differ by about 2e-11 relative, the paired ones being those where an unquantized site with
 * equal inputs has exactly zero error. */
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "test.h"

/* Fewer held-out windows: only the calibration side is compared. */
#define LM_TOKENS 24576

static const char *dirs[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama"};

/* `quant PAT FMT` on the roles given (QS_ROLE_A: the same format for the activations). */
static int rule(struct qs_bench *b, const char *pat, const char *fmt, int roles, enum qs_amode am)
{
    qs_err e = {{0}};
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.roles = roles;
    r.amode = am;
    int n;
    if (qs_bench_add_rule(b, &r, &n, &e) < 0) {
        fprintf(stderr, "  %s: %s\n", pat, e.msg);
        return -1;
    }
    return n;
}

/* Site s's name pattern: block l's k-th site (the head: k < 0). */
static const char *site_name(const struct qs_bench *b, int l, int k)
{
    const struct qs_lm *m = b->lm;
    if (k < 0)
        return m->sites[m->nsites - 1].name;
    return m->sites[qs_lm_block_first_site(m, l) + k].name;
}

/* The sums of the wanted sites both ways (the reference's stream from the embeddings); 1 when
 * they agree bit for bit (and the paired stream
 * ran as such: rc_pairs expected from paired 1). nz: some quantized site's propagated and local
 * sums are positive (the comparison is not of zeros). */
static int same_sums(struct qs_bench *b, const unsigned char *want, int rc_pairs, int nz)
{
    qs_err e = {{0}};
    int S = b->lm->nsites, ok = 1;
    size_t len = (size_t)S * QS_ERR_NSUMS;
    double *p = calloc(len, sizeof *p), *r = calloc(len, sizeof *r);
    int rp = qs_analysis_error_sums(b, want, 1, p, &e);
    if (rp < 0)
        fprintf(stderr, "  paired: %s\n", e.msg);
    /* the reference from the embeddings: qs_bench_stream would otherwise start from the block
     * entries the paired stream keeps, and repeat what it wrote */
    struct qs_resid_cache *c = b->resc[QS_CALIB];
    b->resc[QS_CALIB] = NULL;
    int rr = qs_analysis_error_sums(b, want, 0, r, &e);
    b->resc[QS_CALIB] = c;
    if (rr < 0)
        fprintf(stderr, "  reference: %s\n", e.msg);
    CHECK(rp == rc_pairs);
    CHECK(rr == 0);
    ok = rp == rc_pairs && rr == 0;
    for (int i = 0; ok && i < S; i++)
        for (int k = 0; k < QS_ERR_NSUMS; k++)
            if (memcmp(&p[(size_t)i * QS_ERR_NSUMS + k], &r[(size_t)i * QS_ERR_NSUMS + k],
                       sizeof(double))) {
                fprintf(stderr, "  %s sum %d: paired %.17g, reference %.17g\n",
                        b->lm->sites[i].name, k, p[(size_t)i * QS_ERR_NSUMS + k],
                        r[(size_t)i * QS_ERR_NSUMS + k]);
                ok = 0;
            }
    if (nz) {
        int seen = 0;
        for (int i = 0; i < S; i++)
            seen |= want[i] && !qs_bench_site_identity(b, i) && p[(size_t)i * QS_ERR_NSUMS] > 0 &&
                    p[(size_t)i * QS_ERR_NSUMS + 1] > 0 && p[(size_t)i * QS_ERR_NSUMS + 4] > 0;
        CHECK(seen);
    }
    free(p);
    free(r);
    return ok;
}

/* Sites quantized in blocks 0 and 1 (block 0's second site weights only, its last weights and
 * activations with static scales; block 1's first corrected, its third weights and dynamic
 * activations), the rest identity: every site wanted, then those from block 0's third on. */
static void test_mixed(void)
{
    for (int d = 0; d < 2; d++) {
        qs_err e = {{0}};
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        const struct qs_lm *m = b->lm;
        int S = m->nsites, per = (S - 1) / m->n_layer;
        CHECK(m->n_layer >= 2);
        CHECK(rule(b, site_name(b, 0, 1), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(rule(b, site_name(b, 0, per - 1), "int8", QS_ROLE_W | QS_ROLE_A, QS_AMODE_STATIC) ==
              1);
        CHECK(rule(b, site_name(b, 1, 0), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(rule(b, site_name(b, 1, 2), "int6", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) == 1);
        int cs = qs_lm_block_first_site(m, 1);
        if (qs_analysis_correct(b, cs, QS_CORR_LOWRANK, 4, "float", -1, NULL, &e) < 0)
            fprintf(stderr, "  correct: %s\n", e.msg);
        CHECK(b->ls[cs].corr.c != NULL);
        unsigned char *want = calloc((size_t)S, 1);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 0, 1));
        memset(want, 0, 2); /* as after a change at site 2 */
        CHECK(same_sums(b, want, 0, 1));
        memset(want, 0, (size_t)S); /* one site of block 1 alone */
        want[cs + 2] = 1;
        CHECK(same_sums(b, want, 0, 1));
        free(want);
        qs_bench_free(b);
    }
}

/* Only the head quantized (the first non-identity site is the head), and nothing quantized (one
 * path throughout). */
static void test_head_and_float(void)
{
    for (int d = 0; d < 2; d++) {
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        int S = b->lm->nsites;
        unsigned char *want = calloc((size_t)S, 1);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 0, 0));
        CHECK(rule(b, site_name(b, 0, -1), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(same_sums(b, want, 0, 1));
        free(want);
        qs_bench_free(b);
    }
}

/* A block's kept inputs and outputs beyond act_budget (but each site's inputs within it): the
 * old stream, in groups, with the same bits; and `error` itself agrees with the sums. */
static void test_over_budget(void)
{
    for (int d = 0; d < 2; d++) {
        qs_err e = {{0}};
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        const struct qs_lm *m = b->lm;
        int S = m->nsites;
        CHECK(rule(b, site_name(b, 0, 1), "int4", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) == 1);
        struct qs_layer_err *ep = calloc((size_t)S, sizeof *ep),
                            *eo = calloc((size_t)S, sizeof *eo);
        CHECK(qs_analysis_errors_ex(b, ep, QS_KL_OFF, &e) == 0);
        size_t widest = 0;
        for (int i = 0; i < S; i++)
            if ((size_t)m->ctx * m->sites[i].in * sizeof(float) > widest)
                widest = (size_t)m->ctx * m->sites[i].in * sizeof(float);
        b->act_budget = widest;
        unsigned char *want = calloc((size_t)S, 1);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 1, 1));
        qs_bench_invalidate(b, 0);
        CHECK(qs_analysis_errors_ex(b, eo, QS_KL_OFF, &e) == 0);
        for (int i = 0; i < S; i++) {
            CHECK(!memcmp(&ep[i].preact_rel_mse, &eo[i].preact_rel_mse, sizeof(double)));
            CHECK(!memcmp(&ep[i].local_rel_mse, &eo[i].local_rel_mse, sizeof(double)));
            CHECK(!memcmp(&ep[i].cosine, &eo[i].cosine, sizeof(double)));
            CHECK(!memcmp(&ep[i].interaction, &eo[i].interaction, sizeof(double)));
        }
        CHECK(ep[1].has_attr && ep[1].local_rel_mse > 0);
        free(want);
        free(ep);
        free(eo);
        qs_bench_free(b);
    }
}

/* The block-entry residuals: after a full pass every entry is kept; a change at a site keeps
 * the quantized entries up to its block and the pass that follows starts there (the first
 * wanted site's block, or the last kept entry before it), with the sums of a pass from the
 * embeddings (the reference stream, which keeps nothing), bit for bit. With room for one entry
 * only, it is the last block's (the head's input), and a change before it starts from 0. */
static void test_resume(void)
{
    for (int d = 0; d < 2; d++) {
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        const struct qs_lm *m = b->lm;
        int S = m->nsites, L = m->n_layer, per = (S - 1) / L;
        unsigned char *want = calloc((size_t)S, 1);
        CHECK(L == 2 && want);
        CHECK(rule(b, site_name(b, 0, 1), "int4", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) == 1);
        CHECK(rule(b, site_name(b, 1, 2), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 0, 1));
        const struct qs_resid_cache *c = b->resc[QS_CALIB];
        CHECK(c && c->stride == 1 && c->nent == L && c->last_from == 0);
        for (int k = 0; c && k < c->nent; k++)
            CHECK(c->ok[0][k] && c->ok[1][k]);
        /* block 1's last site: entry 1 stays, entry 2 goes; the pass starts at block 1 */
        int s1 = qs_lm_block_first_site(m, 1) + per - 1;
        CHECK(rule(b, site_name(b, 1, per - 1), "int3", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        c = b->resc[QS_CALIB];
        CHECK(c && c->ok[1][0] && !c->ok[1][1] && c->ok[0][1]);
        memset(want, 0, (size_t)S);
        memset(want + s1, 1, (size_t)(S - s1));
        CHECK(same_sums(b, want, 0, 1));
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->last_from == 1 &&
              b->resc[QS_CALIB]->ok[1][1]);
        /* the head alone: from entry 2 */
        CHECK(rule(b, site_name(b, 0, -1), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        memset(want, 0, (size_t)S);
        want[S - 1] = 1;
        CHECK(same_sums(b, want, 0, 1));
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->last_from == 2);
        /* block 0's first site: every quantized entry goes, the pass starts from 0 */
        CHECK(rule(b, site_name(b, 0, 0), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(b->resc[QS_CALIB] && !b->resc[QS_CALIB]->ok[1][0] && !b->resc[QS_CALIB]->ok[1][1]);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 0, 1));
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->last_from == 0);
        /* room for one entry beside the pass's own activations: the head's input, stride 2 */
        size_t per_entry =
                   2 * (size_t)b->resc[QS_CALIB]->nw * b->resc[QS_CALIB]->td * sizeof(float),
               kept = 0;
        for (int k = 0; k < per; k++) { /* the pass's own: each slot's widest, the head's */
            size_t wi = 0, wo = 0;
            for (int l = 0; l < L; l++) {
                const struct qs_lm_site *st = &m->sites[qs_lm_block_first_site(m, l) + k];
                wi = (size_t)st->in > wi ? (size_t)st->in : wi;
                wo = (size_t)st->out > wo ? (size_t)st->out : wo;
            }
            kept += (wi + wo) * m->ctx * sizeof(float);
        }
        kept += 2 * (size_t)m->ctx * m->sites[S - 1].in * sizeof(float);
        b->act_budget = kept + per_entry + per_entry / 2;
        qs_bench_invalidate(b, 0);
        CHECK(same_sums(b, want, 0, 1));
        c = b->resc[QS_CALIB];
        CHECK(c && c->stride == 2 && c->nent == 1 && c->ok[1][0]);
        CHECK(rule(b, site_name(b, 1, 0), "int8", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        memset(want, 0, (size_t)S);
        memset(want + qs_lm_block_first_site(m, 1), 1, (size_t)(S - qs_lm_block_first_site(m, 1)));
        CHECK(same_sums(b, want, 0, 1));
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->last_from == 0);
        CHECK(rule(b, site_name(b, 0, -1), "int3", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        memset(want, 0, (size_t)S);
        want[S - 1] = 1;
        CHECK(same_sums(b, want, 0, 1));
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->last_from == 2);
        free(want);
        qs_bench_free(b);
    }
}

/* eval's run of the quantized path over the held-out windows, with the KL to the float model:
 * its figures with the kept block entries (resumed after a change in block 1 or at the head,
 * the float pass then from the head's input) are those of whole forwards (no room for entries)
 * bit for bit; a masked run (ablation) does not use them. */
static int eval_same(struct qs_bench *b, int from)
{
    qs_err e = {{0}};
    struct qs_metric m1, m0;
    double kl1 = 0, ag1 = 0, kl0 = 0, ag0 = 0;
    size_t budget = b->act_budget;
    int ok = qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m1, NULL, &kl1, &ag1, &e) == 0;
    const struct qs_resid_cache *c = b->resc[QS_TEST];
    ok &= c != NULL && c->last_from == from;
    if (c && c->last_from != from)
        fprintf(stderr, "  resumed from %d, not %d\n", c->last_from, from);
    b->act_budget = 0; /* whole forwards */
    ok &= qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m0, NULL, &kl0, &ag0, &e) == 0;
    ok &= b->resc[QS_TEST] == NULL;
    b->act_budget = budget;
    ok &= !memcmp(&m1.loss, &m0.loss, sizeof(double)) && !memcmp(&kl1, &kl0, sizeof kl1) &&
          !memcmp(&ag1, &ag0, sizeof ag1) && m1.n == m0.n && kl1 > 0;
    if (!ok)
        fprintf(stderr, "  eval: loss %.17g %.17g kl %.17g %.17g (%s)\n", m1.loss, m0.loss, kl1,
                kl0, e.msg);
    return ok;
}

/* A site_out rewrite (study q2's corrector) of every site's output. */
static int nudge(void *ctx, int site, float *y, int n, int out, qs_err *e)
{
    (void)ctx, (void)site, (void)e;
    for (size_t j = 0; j < (size_t)n * out; j++)
        y[j] += 0.01f;
    return 0;
}

static void test_eval_resume(void)
{
    for (int d = 0; d < 2; d++) {
        qs_err e = {{0}};
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        CHECK(rule(b, site_name(b, 0, 1), "int4", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) == 1);
        struct qs_metric m;
        double kl;
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m, NULL, &kl, NULL, &e) == 0);
        CHECK(b->resc[QS_TEST] && b->resc[QS_TEST]->last_from == 0);
        CHECK(rule(b, site_name(b, 1, 2), "int3", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(eval_same(b, 1)); /* entry 1 stays: from block 1 */
        CHECK(rule(b, site_name(b, 1, 2), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m, NULL, &kl, NULL, &e) == 0);
        CHECK(rule(b, site_name(b, 1, 2), "int3", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(eval_same(b, 1));
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m, NULL, &kl, NULL, &e) == 0);
        CHECK(rule(b, site_name(b, 0, -1), "int8", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(eval_same(b, 2));
        /* a rewritten path (site_out) neither reads nor writes the entries: its loss moves,
         * and the plain run after it has the plain run's bits */
        struct qs_metric ma, mb, mc;
        CHECK(rule(b, site_name(b, 0, 0), "int8", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        b->site_out = nudge; /* after a change in block 0: it would write every entry */
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &mb, NULL, NULL, NULL, &e) == 0);
        b->site_out = NULL;
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &mc, NULL, NULL, NULL, &e) == 0);
        CHECK(b->resc[QS_TEST] && b->resc[QS_TEST]->last_from == 0);
        size_t budget = b->act_budget;
        b->act_budget = 0; /* whole forwards */
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &ma, NULL, NULL, NULL, &e) == 0);
        b->act_budget = budget;
        CHECK(mb.loss != ma.loss && !memcmp(&ma.loss, &mc.loss, sizeof(double)));
        /* an ablation's mask (block 0's site alone): whole forwards, the cache untouched */
        CHECK(qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m, NULL, &kl, NULL, &e) == 0);
        int from = b->resc[QS_TEST] ? b->resc[QS_TEST]->last_from : -1;
        int s1 = qs_lm_block_first_site(b->lm, 0) + 1;
        CHECK(qs_bench_run_ex(b, QS_TEST, 1ULL << s1, 1ULL << s1, &m, NULL, &kl, NULL, &e) == 0);
        CHECK(b->resc[QS_TEST] && b->resc[QS_TEST]->last_from == from);
        qs_bench_free(b);
    }
}

/* A hash of everything a stream hands its callback, in order (site, window, n and the bytes of
 * each buffer given). */
struct shash {
    const struct qs_lm *m;
    uint64_t h;
    int calls;
};

static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ c[i]) * 1099511628211ULL;
}

static int hash_fn(void *u, int site, int window, const float *xf, const float *xq, const float *yf,
                   const float *yq, int n, qs_err *e)
{
    (void)e;
    struct shash *s = u;
    s->calls++;
    int hdr[3] = {site, window, n};
    hash_bytes(&s->h, hdr, sizeof hdr);
    size_t in = (size_t)n * s->m->sites[site].in, out = (size_t)n * s->m->sites[site].out;
    const float *v[4] = {xf, xq, yf, yq};
    for (int k = 0; k < 4; k++)
        if (v[k])
            hash_bytes(&s->h, v[k], (k < 2 ? in : out) * sizeof(float));
    return 0;
}

/* qs_bench_stream (the site rows, moments, corrections' statistics, a site method's inputs)
 * starts from the block entries that error's paired stream kept: the stream's callback gets the
 * bits it gets from the embeddings, on GPT-2 and LLaMA, for a wanted site in block 1 with block
 * 0 quantized (the quantized pass from its own entry), with only block 1 quantized (from the
 * float pass's residual), for the head alone, and for the float pass alone; after a change in
 * block 1 the quantized entry there is not used. Fails when the quantized pass reads the float
 * entry, or when an entry is read for a path it does not hold. */
static int stream_same(struct qs_bench *b, const unsigned char *want, int quant, int from)
{
    struct shash with = {b->lm, 1469598103934665603ULL, 0}, without = with;
    qs_err e = {{0}};
    int ok = qs_bench_stream(b, QS_CALIB, want, quant, hash_fn, &with, &e) == 0;
    struct qs_resid_cache *c = b->resc[QS_CALIB];
    ok &= c != NULL && c->last_from == from;
    if (c && c->last_from != from)
        fprintf(stderr, "  stream started at block %d, expected %d\n", c->last_from, from);
    b->resc[QS_CALIB] = NULL;
    ok &= qs_bench_stream(b, QS_CALIB, want, quant, hash_fn, &without, &e) == 0;
    b->resc[QS_CALIB] = c;
    ok &= with.calls > 0 && with.calls == without.calls && with.h == without.h;
    if (with.h != without.h)
        fprintf(stderr, "  the stream's inputs differ when resumed from block %d\n", from);
    return ok;
}

static void test_stream_resume(void)
{
    for (int d = 0; d < 2; d++) {
        struct qs_bench *b = qs_test_open_lm_n(dirs[d], LM_TOKENS);
        CHECK(b != NULL);
        if (!b)
            continue;
        const struct qs_lm *m = b->lm;
        int S = m->nsites, s1 = qs_lm_block_first_site(m, 1) + 1;
        unsigned char *want = calloc((size_t)S, 1);
        CHECK(want && m->n_layer == 2);
        CHECK(rule(b, site_name(b, 0, 1), "int4", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) == 1);
        CHECK(rule(b, site_name(b, 1, 0), "int4", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        memset(want, 1, (size_t)S);
        CHECK(same_sums(b, want, 0, 1)); /* fills both paths' entries at blocks 1 and 2 */
        memset(want, 0, (size_t)S);
        want[s1] = 1;
        CHECK(stream_same(b, want, 1, 1)); /* block 0 quantized: the quantized entry */
        CHECK(stream_same(b, want, 0, 1)); /* the float pass alone */
        memset(want, 0, (size_t)S);
        want[S - 1] = 1;
        CHECK(stream_same(b, want, 1, 2)); /* the head */
        /* a change in block 1: its quantized entry at block 2 goes; block 1's stays */
        CHECK(rule(b, site_name(b, 1, 0), "int3", QS_ROLE_W, QS_AMODE_DYNAMIC) == 1);
        CHECK(b->resc[QS_CALIB] && b->resc[QS_CALIB]->ok[1][0] && !b->resc[QS_CALIB]->ok[1][1]);
        CHECK(stream_same(b, want, 1, 1));
        CHECK(stream_same(b, want, 0, 2)); /* the float entry at block 2 is still good */
        /* only block 1 quantized: its quantized pass runs from the float pass's residual at
         * block 1, not from the (stale) quantized entry there */
        CHECK(rule(b, site_name(b, 0, 1), "none", QS_ROLE_W | QS_ROLE_A, QS_AMODE_DYNAMIC) >= 0);
        memset(want, 0, (size_t)S);
        want[s1] = 1;
        CHECK(stream_same(b, want, 1, 1));
        free(want);
        qs_bench_free(b);
    }
}

TEST_MAIN("err_pairs", TEST_CASE(test_mixed), TEST_CASE(test_head_and_float),
          TEST_CASE(test_over_budget), TEST_CASE(test_resume), TEST_CASE(test_eval_resume),
          TEST_CASE(test_stream_resume))
