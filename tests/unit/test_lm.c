/* test_lm.c - the transformer forward pass against PyTorch references (tiny random GPT-2 and
 * LLaMA fixtures from tests/tools/make_lm_fixtures.py), the quantizer hooks, evaluation of the
 * bundled tiny models against the validation perplexity recorded at training time
 * (datasets/tools/train_tiny_lm.py), and bad model folders. */
#include "qscope/lm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/stat.h>

#include "qscope/bench.h"
#include "qscope/half.h"
#include "qscope/layer_row.h"
#include "qscope/safetensors.h"
#include "qscope/tokens.h"
#include "test.h"

/* Forward of the fixture's tokens; returns max |logit - ref| / max |ref| (or 1e30 on error). */
static double fixture_err(const char *dir, struct qs_lm **keep)
{
    char path[256];
    struct qs_lm *m = NULL;
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    if (qs_lm_load(dir, &m, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        return 1e30;
    }
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    if (qs_st_open(path, &f, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_lm_free(m);
        return 1e30;
    }
    const struct qs_st_tensor *lt = qs_st_find(f, "logits");
    const char *ts = qs_st_meta(f, "tokens");
    uint32_t tok[256];
    int T = 0;
    for (const char *s = ts; s && *s && T < 256;) {
        tok[T++] = (uint32_t)strtol(s, (char **)&s, 10);
        if (*s == ',')
            s++;
    }
    double err = 1e30;
    if (lt && T == m->ctx && lt->numel == (int64_t)T * m->vocab) {
        float *ref = malloc((size_t)lt->numel * sizeof(float));
        float *lg = malloc((size_t)lt->numel * sizeof(float));
        if (qs_st_to_f32(lt, ref, &e) == 0 && qs_lm_forward(m, tok, T, NULL, lg, &e) == 0) {
            double mx = 0, scale = 0;
            for (int64_t i = 0; i < lt->numel; i++) {
                mx = fmax(mx, fabs((double)lg[i] - ref[i]));
                scale = fmax(scale, fabs(ref[i]));
            }
            err = mx / scale;
        }
        free(ref);
        free(lg);
    }
    printf("  %s: max |logit - torch| / max |logit| = %.3g\n", dir, err);
    qs_st_close(f);
    if (keep)
        *keep = m;
    else
        qs_lm_free(m);
    return err;
}

static void test_gpt2_vs_torch(void)
{
    struct qs_lm *m = NULL;
    CHECK(fixture_err("tests/fixtures/lm_gpt2", &m) < 1e-4);
    if (!m)
        return;
    CHECK(m->family == QS_LM_GPT2 && m->n_layer == 2 && m->d_model == 32 && m->d_ff == 48);
    CHECK(m->ctx == 16 && m->vocab == 50 && m->tied && m->nsites == 9);
    CHECK_STR(m->sites[0].name, "h.0.attn.c_attn");
    CHECK(m->sites[0].in == 32 && m->sites[0].out == 96 && m->sites[0].b);
    CHECK_STR(m->sites[7].name, "h.1.mlp.c_proj");
    CHECK(m->sites[7].in == 48 && m->sites[7].out == 32);
    CHECK_STR(m->sites[8].name, "lm_head");
    CHECK(m->sites[8].b == NULL && m->sites[8].in == 32 && m->sites[8].out == 50);
    CHECK_STR(qs_lm_meta(m, "fixture"), "gpt2");
    /* wte 50x32 + wpe 16x32 + ln_f 64 + per block (2 LN 128, c_attn 32x96+96, c_proj 32x32+32,
     * c_fc 32x48+48, c_proj 48x32+32) */
    long per = 128 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 48 + 48 + 48 * 32 + 32;
    CHECK(qs_lm_nparams(m) == 50 * 32 + 16 * 32 + 64 + 2 * per);
    qs_lm_free(m);
    CHECK(fixture_err("tests/fixtures/lm_gpt2_prefix", NULL) < 1e-4);
}

static void test_llama_vs_torch(void)
{
    struct qs_lm *m = NULL;
    CHECK(fixture_err("tests/fixtures/lm_llama_gqa", &m) < 1e-4);
    if (m) {
        CHECK(m->family == QS_LM_LLAMA && m->n_head == 4 && m->n_kv_head == 2 && m->tied);
        CHECK(m->nsites == 15);
        CHECK_STR(m->sites[1].name, "model.layers.0.self_attn.k_proj");
        CHECK(m->sites[1].in == 32 && m->sites[1].out == 16 && !m->sites[1].b);
        CHECK_STR(m->sites[13].name, "model.layers.1.mlp.down_proj");
        CHECK(m->sites[13].in == 40 && m->sites[13].out == 32);
        CHECK_NEAR(m->eps, 1e-6, 1e-12);
    }
    qs_lm_free(m);
    m = NULL;
    CHECK(fixture_err("tests/fixtures/lm_llama_untied", &m) < 1e-4);
    if (m) {
        CHECK(!m->tied && m->n_kv_head == 4 && m->d_ff == 56);
        CHECK_NEAR(m->rope_theta, 500.0, 1e-9);
        /* BF16: the sites and the embedding stay the file's bytes (w NULL), the untied head
         * its own tensor */
        CHECK(*qs_lm_slot(m, QS_LM_SLOT_EMBED, 0) == NULL && !m->sites[m->nsites - 1].w);
        CHECK(m->sites[m->nsites - 1].w16 != NULL && m->sites[0].w16 != NULL);
    }
    qs_lm_free(m);
}

/* ---- hooks ------------------------------------------------------------------------------- */

struct hk {
    const struct qs_lm *m;
    int zero_site; /* weight(): zeros for this site, else the float weight */
    float *zeros;
    int *seen; /* input(): visits per site */
    int bad_shape;
    int T;
    int act_zero_site; /* act(): zero the input of this site (-1: none) */
};

static const float *w_hook(void *u, int s)
{
    struct hk *h = u;
    return s == h->zero_site ? h->zeros : h->m->sites[s].w;
}

static void in_hook(void *u, int s, const float *x, int n, int in)
{
    struct hk *h = u;
    (void)x;
    h->seen[s]++;
    if (n != h->T || in != h->m->sites[s].in)
        h->bad_shape = 1;
}

static void act_hook(void *u, int s, float *x, int n, int in)
{
    struct hk *h = u;
    if (s == h->act_zero_site)
        memset(x, 0, (size_t)n * in * sizeof(float));
}

static void hooks_on(const char *dir)
{
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_lm_load(dir, &m, &e) == 0);
    if (!m)
        return;
    int T = m->ctx, V = m->vocab;
    uint32_t tok[64];
    for (int t = 0; t < T; t++)
        tok[t] = (uint32_t)((t * 7 + 3) % V);
    float *base = malloc((size_t)T * V * sizeof(float));
    float *lg = malloc((size_t)T * V * sizeof(float));
    struct hk h = {
        m, -1, qs_calloc(4096, sizeof(float)), qs_calloc((size_t)m->nsites, sizeof(int)), 0, T, -1};
    struct qs_hooks hooks = {w_hook, in_hook, NULL, &h, NULL, NULL, NULL};
    CHECK(qs_lm_forward(m, tok, T, NULL, base, &e) == 0);
    CHECK(qs_lm_forward(m, tok, T, &hooks, lg, &e) == 0);
    CHECK(!memcmp(base, lg, (size_t)T * V * sizeof(float)));
    for (int s = 0; s < m->nsites; s++)
        CHECK(h.seen[s] == 1);
    CHECK(!h.bad_shape);
    /* zero weights at each site in turn (the head included) change the logits */
    int changed = 0;
    for (int s = 0; s < m->nsites; s++) {
        h.zero_site = s;
        CHECK(qs_lm_forward(m, tok, T, &hooks, lg, &e) == 0);
        changed += memcmp(base, lg, (size_t)T * V * sizeof(float)) != 0;
    }
    CHECK(changed == m->nsites);
    /* act(): an identity act is exact; zeroing one site's input changes the output but not the
     * float input other sites sharing it see (q/k/v or c_attn share one normed x) */
    h.zero_site = -1;
    hooks.act = act_hook;
    CHECK(qs_lm_forward(m, tok, T, &hooks, lg, &e) == 0);
    CHECK(!memcmp(base, lg, (size_t)T * V * sizeof(float)));
    h.act_zero_site = 0;
    CHECK(qs_lm_forward(m, tok, T, &hooks, lg, &e) == 0);
    CHECK(memcmp(base, lg, (size_t)T * V * sizeof(float)) != 0);
    /* equivalently zeroing site 0's weight (bias kept) gives the same logits */
    float *lz = malloc((size_t)T * V * sizeof(float));
    struct hk h2 = h;
    h2.zero_site = 0;
    h2.act_zero_site = -1;
    struct qs_hooks hooks2 = {w_hook, NULL, NULL, &h2, NULL, NULL, NULL};
    CHECK(qs_lm_forward(m, tok, T, &hooks2, lz, &e) == 0);
    double md = 0;
    for (int i = 0; i < T * V; i++)
        md = fmax(md, fabs((double)lz[i] - lg[i]));
    CHECK(md < 1e-5);
    /* shorter sequences are prefixes (causality) */
    CHECK(qs_lm_forward(m, tok, T / 2, NULL, lg, &e) == 0);
    md = 0;
    for (int i = 0; i < T / 2 * V; i++)
        md = fmax(md, fabs((double)base[i] - lg[i]));
    CHECK(md < 1e-5);
    /* bad lengths and ids */
    CHECK(qs_lm_forward(m, tok, T + 1, NULL, lg, &e) == -1);
    CHECK(strstr(e.msg, "1 to") != NULL);
    tok[3] = (uint32_t)V;
    CHECK(qs_lm_forward(m, tok, T, NULL, lg, &e) == -1);
    CHECK(strstr(e.msg, "position 3") != NULL);
    free(lz);
    free(base);
    free(lg);
    free(h.zeros);
    free(h.seen);
    qs_lm_free(m);
}

static void test_hooks(void)
{
    hooks_on("tests/fixtures/lm_gpt2");
    hooks_on("tests/fixtures/lm_llama_gqa");
    hooks_on("tests/fixtures/lm_llama_untied");
}

/* ---- bundled models ---------------------------------------------------------------------- */

/* nparams: the element count of every tensor in the file (counted by Python). */
struct cancel_at {
    const struct qs_lm *m;
    int at, last; /* the site whose input sets the flag; the last site reached */
    _Atomic int *flag;
};

static void cancel_input(void *u, int site, const float *x, int n, int in)
{
    (void)x, (void)n, (void)in;
    struct cancel_at *c = u;
    c->last = site;
    if (site == c->at)
        *c->flag = 1;
}

static void bundled(const char *dir, struct qs_tokens *tk, long nparams)
{
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_lm_load(dir, &m, &e) == 0);
    if (!m) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    const char *ppl = qs_lm_meta(m, "qscope.val_ppl"), *nt = qs_lm_meta(m, "qscope.val_tokens");
    CHECK(ppl && nt);
    CHECK(qs_lm_nparams(m) == nparams);
    size_t off = tk->n - tk->n / 10;
    struct qs_lm_eval ev;
    struct qs_hooks none = {0};
    CHECK(qs_lm_evaluate(m, tk->ids + off, tk->n - off, 0, NULL, NULL, &ev, &e) == 0);
    printf("  %s: val ppl %.6f (recorded %s) over %ld tokens\n", dir, ev.ppl, ppl ? ppl : "?",
           ev.ntok);
    if (ppl)
        CHECK_REL(ev.ppl, atof(ppl), 1e-3);
    if (nt)
        CHECK(ev.ntok == atol(nt));
    CHECK(ev.ppl < 256);
    CHECK(ev.loss_q == 0 && ev.kl == 0 && ev.top1_agree == 0);
    /* the same hooks twice: identical runs */
    CHECK(qs_lm_evaluate(m, tk->ids + off, tk->n - off, 4, NULL, &none, &ev, &e) == 0);
    CHECK(ev.ntok == 4L * m->ctx);
    CHECK_NEAR(ev.loss_q, ev.loss, 1e-12);
    CHECK_NEAR(ev.kl, 0.0, 1e-12);
    CHECK_NEAR(ev.top1_agree, 1.0, 1e-12);
    /* a quantized-looking run: the head's input zeroed -> uniform predictions, KL > 0 */
    struct hk h = {m, -1, NULL, NULL, 0, 0, m->nsites - 1};
    struct qs_hooks hq = {NULL, NULL, act_hook, &h, NULL, NULL, NULL};
    CHECK(qs_lm_evaluate(m, tk->ids + off, tk->n - off, 3, NULL, &hq, &ev, &e) == 0);
    CHECK(ev.ntok == 3L * m->ctx);
    CHECK_NEAR(ev.loss_q, log((double)m->vocab), 1e-5);
    CHECK(ev.kl > 0.1 && ev.top1_agree < 0.5);
    CHECK(qs_lm_evaluate(m, tk->ids, (size_t)m->ctx, 0, NULL, NULL, &ev, &e) == -1);
    CHECK(strstr(e.msg, "too few") != NULL);
    /* a cancel set while block 1 runs stops the pass before block 2: no site after block 1 is
     * reached, and the forward fails with "cancelled" */
    _Atomic int flag = 0;
    struct cancel_at ca = {m, qs_lm_block_first_site(m, 1), -1, &flag};
    struct qs_hooks hc = {0};
    hc.u = &ca;
    hc.input = cancel_input;
    hc.cancel = &flag;
    float *lg = qs_calloc((size_t)m->ctx * m->vocab, sizeof(float));
    CHECK(m->n_layer >= 2 && lg);
    if (lg) {
        CHECK(qs_lm_forward(m, tk->ids, m->ctx, &hc, lg, &e) == -1);
        CHECK(strstr(e.msg, "cancelled") != NULL);
        CHECK(ca.last >= ca.at && ca.last < qs_lm_block_first_site(m, 2));
        ca.last = -1; /* set before the pass: not one site */
        CHECK(qs_lm_forward(m, tk->ids, m->ctx, &hc, lg, &e) == -1);
        CHECK(ca.last == -1);
        flag = 0;
        ca.at = -1; /* cleared: the same bits as a pass without hooks */
        float *l0 = qs_calloc((size_t)m->ctx * m->vocab, sizeof(float));
        CHECK(l0 && qs_lm_forward(m, tk->ids, m->ctx, &hc, lg, &e) == 0 &&
              qs_lm_forward(m, tk->ids, m->ctx, NULL, l0, &e) == 0 &&
              memcmp(lg, l0, (size_t)m->ctx * m->vocab * sizeof(float)) == 0);
        free(l0);
        /* the evaluation's progress flag reaches its forwards */
        struct qs_lm_progress pr = {0};
        flag = 1;
        pr.cancel = &flag;
        CHECK(qs_lm_evaluate_progress(m, tk->ids + off, tk->n - off, 1, NULL, NULL, &ev, &pr, &e) ==
              -1);
        CHECK(strstr(e.msg, "cancelled") != NULL);
    }
    free(lg);
    qs_lm_free(m);
}

static void test_bundled_models(void)
{
    struct qs_tokens *tk = NULL;
    qs_err e = {{0}};
    CHECK(qs_tokens_load("datasets/text/licenses.txt", &tk, &e) == 0);
    if (!tk)
        return;
    bundled("datasets/models/tiny-gpt2", tk, 120576);
    bundled("datasets/models/tiny-llama", tk, 123712);
    qs_tokens_free(tk);
}

/* ---- bad input --------------------------------------------------------------------------- */

static char tmp_[64];

static void write_text(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(s, f);
        fclose(f);
    }
}

/* Copies fixture SRC's tensors to DIR/model.safetensors, skipping SKIP and giving RESHAPE a
 * flat 1-D shape. */
static void copy_model(const char *src, const char *skip, const char *reshape)
{
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    CHECK(qs_st_open(path, &f, &e) == 0);
    if (!f)
        return;
    int n = qs_st_count(f), k = 0;
    struct qs_st_out *o = qs_calloc((size_t)n, sizeof *o);
    for (int i = 0; i < n; i++) {
        const struct qs_st_tensor *t = qs_st_get(f, i);
        if (skip && !strcmp(t->name, skip))
            continue;
        o[k] = (struct qs_st_out){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(o[k].shape, t->shape, sizeof o[k].shape);
        if (reshape && !strcmp(t->name, reshape)) {
            o[k].ndim = 1;
            o[k].shape[0] = t->numel;
            o[k].shape[1] = 0;
        }
        k++;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_);
    CHECK(qs_st_write(path, o, k, NULL, NULL, 0, &e) == 0);
    free(o);
    qs_st_close(f);
}

static void expect_fail(const char *needle)
{
    struct qs_lm *m = (struct qs_lm *)1;
    qs_err e = {{0}};
    CHECK(qs_lm_load(tmp_, &m, &e) == -1);
    CHECK(m == NULL);
    if (!strstr(e.msg, needle)) {
        fprintf(stderr, "  message '%s' lacks '%s'\n", e.msg, needle);
        CHECK(0);
    }
}

static void test_bad_models(void)
{
    snprintf(tmp_, sizeof tmp_, "/tmp/qs_test_lm_%d", (int)getpid());
    CHECK(qs_mkdir_p(tmp_) == 0);
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/config.json", tmp_);
    expect_fail("config.json: cannot open");
    const char *gcfg = "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                       "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}";
    write_text(cfg, "{\"model_type\": \"bert\"}");
    expect_fail("unknown model_type 'bert'");
    write_text(cfg, "[1, 2]");
    expect_fail("not a JSON object");
    write_text(cfg, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_layer\": 2}");
    expect_fail("key 'n_embd' is missing");
    write_text(cfg, gcfg);
    expect_fail("model.safetensors: cannot open");
    copy_model("tests/fixtures/lm_gpt2", "h.1.mlp.c_fc.bias", NULL);
    expect_fail("model.safetensors: tensor 'h.1.mlp.c_fc.bias' is missing");
    copy_model("tests/fixtures/lm_gpt2", NULL, "h.0.attn.c_attn.weight");
    expect_fail("tensor 'h.0.attn.c_attn.weight' has shape [3072] (expected [32,96])");
    copy_model("tests/fixtures/lm_gpt2", NULL, NULL);
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    CHECK(qs_lm_load(tmp_, &m, &e) == 0); /* the copy itself loads */
    qs_lm_free(m);
    write_text(cfg, "{\"model_type\": \"gpt2\", \"vocab_size\": 51, \"n_embd\": 32, "
                    "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48}");
    expect_fail("tensor 'wte.weight' has shape [50,32] (expected [51,32])");
    write_text(cfg, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                    "\"n_layer\": 2, \"n_head\": 5, \"n_positions\": 16, \"n_inner\": 48}");
    expect_fail("not a multiple of the 5 heads");
    write_text(cfg, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 32, "
                    "\"n_layer\": 2, \"n_head\": 4, \"n_positions\": 16, \"n_inner\": 48, "
                    "\"activation_function\": \"relu\"}");
    expect_fail("'activation_function' = relu is not supported");
    const char *lcfg = "{\"model_type\": \"llama\", \"vocab_size\": 40, \"hidden_size\": 32, "
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                       "\"num_key_value_heads\": 3, \"intermediate_size\": 40, "
                       "\"max_position_embeddings\": 16, \"tie_word_embeddings\": true}";
    write_text(cfg, lcfg);
    copy_model("tests/fixtures/lm_llama_gqa", NULL, NULL);
    expect_fail("num_attention_heads 4 is not a multiple of num_key_value_heads 3");
    write_text(cfg, "{\"model_type\": \"llama\", \"vocab_size\": 40, \"hidden_size\": 32, "
                    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                    "\"num_key_value_heads\": 2, \"intermediate_size\": 40, "
                    "\"max_position_embeddings\": 16, \"tie_word_embeddings\": false}");
    expect_fail("tensor 'lm_head.weight' is missing"); /* untied but the file has no head */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_);
    CHECK(system(cmd) == 0);
}

extern size_t qs_lm_linear_slice_bytes; /* lm_impl.h: the slice of a 16-bit product */

/* DIR/: SRC's model with every 2-D tensor stored as BF16 (values rounded once), the rest F32. */
static int bf16_copy(const char *src, const char *dir)
{
    char path[512], cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s/config.json %s/", dir, src, dir);
    if (system(cmd) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    if (qs_st_open(path, &f, &e) < 0)
        return -1;
    int n = qs_st_count(f), rc = 0;
    struct qs_st_out *o = qs_calloc((size_t)n, sizeof *o);
    void **buf = qs_calloc((size_t)n, sizeof *buf);
    for (int i = 0; i < n; i++) {
        const struct qs_st_tensor *t = qs_st_get(f, i);
        float *v = malloc((size_t)t->numel * sizeof *v);
        rc |= qs_st_to_f32(t, v, &e);
        o[i] = (struct qs_st_out){t->name, QS_DT_F32, t->ndim, {0}, v};
        memcpy(o[i].shape, t->shape, sizeof o[i].shape);
        buf[i] = v;
        if (t->ndim == 2) {
            uint16_t *h = malloc((size_t)t->numel * sizeof *h);
            qs_f32_to_bf16_n(v, h, (size_t)t->numel);
            o[i].dtype = QS_DT_BF16;
            o[i].data = h;
            buf[i] = h;
            free(v);
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc |= qs_st_write(path, o, n, NULL, NULL, 0, &e);
    for (int i = 0; i < n; i++)
        free(buf[i]);
    free(buf);
    free(o);
    qs_st_close(f);
    return rc;
}

/* DIR/: a one-block LLaMA of d 128, ffn 256, vocab 4096, untied (1.2M parameters: 4.7 MB as
 * F32), with small finite weights, F32 throughout. */
static int write_wide_llama(const char *dir)
{
    char path[512], cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"model_type\": \"llama\", \"vocab_size\": 4096, \"hidden_size\": 128, "
                     "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
                     "\"num_key_value_heads\": 4, \"intermediate_size\": 256, "
                     "\"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-06, "
                     "\"tie_word_embeddings\": false}");
    const char *names[] = {"model.embed_tokens.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight",
                           "model.layers.0.post_attention_layernorm.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.mlp.up_proj.weight",
                           "model.layers.0.mlp.down_proj.weight",
                           "model.norm.weight",
                           "lm_head.weight"};
    const int64_t r[] = {4096, 128, 128, 128, 128, 128, 128, 256, 256, 128, 128, 4096};
    const int64_t c[] = {128, 0, 128, 128, 128, 128, 0, 128, 128, 256, 0, 128};
    struct qs_st_out o[12];
    float *buf[12];
    int rc = 0;
    for (int i = 0; i < 12; i++) {
        size_t n = (size_t)r[i] * (size_t)(c[i] ? c[i] : 1);
        buf[i] = malloc(n * sizeof(float));
        rc |= buf[i] ? 0 : -1;
        for (size_t j = 0; buf[i] && j < n; j++)
            buf[i][j] = c[i] ? 0.02f * sinf((float)(j * 7 + (size_t)i)) : 1.0f;
        o[i] = (struct qs_st_out){names[i], QS_DT_F32, c[i] ? 2 : 1, {r[i], c[i]}, buf[i]};
    }
    qs_err e = {{0}};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == 0)
        rc = qs_st_write(path, o, 12, NULL, NULL, 0, &e);
    for (int i = 0; i < 12; i++)
        free(buf[i]);
    return rc;
}

/* The load's memory check counts what the load keeps on the heap: an F32 model's copies, not a
 * 16-bit model's matrices, which stay the file's mapped bytes. Under a 2.5 MB limit the BF16
 * copy of a 4.7 MB (as F32) model loads and runs; the F32 original is refused with its size. */
static void test_load_memory_check(void)
{
    char f32[128], b16[128], cmd[300];
    snprintf(f32, sizeof f32, "/tmp/qs_test_lm_mem_%d", (int)getpid());
    snprintf(b16, sizeof b16, "%s-bf16", f32);
    CHECK(write_wide_llama(f32) == 0 && bf16_copy(f32, b16) == 0);
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    setenv("QSCOPE_MEM_LIMIT", "2500000", 1);
    CHECK(qs_lm_load(f32, &m, &e) == -1);
    CHECK(strstr(e.msg, "the model's weights as F32 needs 4.") != NULL);
    qs_lm_free(m);
    m = NULL;
    CHECK(qs_lm_load(b16, &m, &e) == 0);
    if (m) {
        uint32_t tok[8] = {1, 2, 3, 4, 4000, 6, 7, 8};
        float *lg = malloc((size_t)8 * m->vocab * sizeof *lg);
        CHECK(lg && qs_lm_forward(m, tok, 8, NULL, lg, &e) == 0);
        free(lg);
    }
    qs_lm_free(m);
    unsetenv("QSCOPE_MEM_LIMIT");
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", f32, b16);
    CHECK(system(cmd) == 0);
}

/* 16-bit site weights stay the file's bytes and are widened on use: the forward of such a model
 * (whole-matrix widening, and slices of a few output rows) is bit for bit that of the same model
 * widened to F32 up front; the float-weights cache keeps the two sites asked for last at budget 0;
 * a GPT-2 Conv1D weight is transposed on widening; a changed file is noticed. */
static void test_lazy_weights(void)
{
    const char *srcs[2] = {"tests/fixtures/lm_gpt2", "tests/fixtures/lm_llama_gqa"};
    for (int k = 0; k < 2; k++) {
        char dir[128];
        snprintf(dir, sizeof dir, "/tmp/qs_test_lm_lazy_%d_%d", (int)getpid(), k);
        CHECK(bf16_copy(srcs[k], dir) == 0);
        struct qs_lm *a = NULL, *b = NULL;
        qs_err e = {{0}};
        CHECK(qs_lm_load(dir, &a, &e) == 0 && qs_lm_load(dir, &b, &e) == 0);
        if (!a || !b) {
            qs_lm_free(a);
            qs_lm_free(b);
            continue;
        }
        struct qs_lm_wf_info ia, ib;
        qs_lm_wf_info(a, &ia);
        /* every site is lazy, a tied head too (it is the embedding's 16-bit bytes), and so is
         * the embedding itself */
        CHECK(ia.nlazy == a->nsites && ia.f32_bytes == 0);
        CHECK(*qs_lm_slot(a, QS_LM_SLOT_EMBED, 0) == NULL);
        CHECK(qs_lm_materialize(b, &e) == 0);
        qs_lm_wf_info(b, &ib);
        size_t head16 = a->tied ? (size_t)a->vocab * a->d_model * 2 : 0; /* aliased once F32 */
        CHECK(ib.nlazy == 0 && ib.f32_bytes == 2 * (ia.lazy_bytes - head16));
        const float *emb_b = *qs_lm_slot(b, QS_LM_SLOT_EMBED, 0);
        CHECK(emb_b != NULL && (!b->tied || b->sites[b->nsites - 1].w == emb_b));
        float *emb_own = NULL; /* the embedding widened for a caller: the materialized bits */
        const float *emb_a = qs_lm_embed_f32(a, &emb_own, &e);
        CHECK(emb_a && emb_own == emb_a && emb_b &&
              !memcmp(emb_a, emb_b, (size_t)a->vocab * a->d_model * sizeof(float)));
        free(emb_own);
        for (int s = 0; s < a->nsites; s++) { /* rows widened, transposed where stored so */
            const struct qs_lm_site *st = &a->sites[s];
            int r0 = st->out / 3, r1 = st->out - 1;
            float *rows = malloc((size_t)(r1 - r0) * st->in * sizeof *rows);
            CHECK(qs_lm_site_rows(a, s, r0, r1, rows, &e) == 0);
            CHECK(!memcmp(rows, b->sites[s].w + (size_t)r0 * st->in,
                          (size_t)(r1 - r0) * st->in * sizeof *rows));
            free(rows);
        }
        int T = a->ctx < 12 ? a->ctx : 12;
        uint32_t tok[12];
        for (int t = 0; t < T; t++)
            tok[t] = (uint32_t)((7 * t + 3) % a->vocab);
        size_t nl = (size_t)T * a->vocab;
        float *la = malloc(nl * sizeof *la), *lb = malloc(nl * sizeof *lb);
        CHECK(qs_lm_forward(b, tok, T, NULL, lb, &e) == 0);
        CHECK(qs_lm_forward(a, tok, T, NULL, la, &e) == 0);
        CHECK(!memcmp(la, lb, nl * sizeof *la));
        { /* saved from the lazy model (its embedding widened for the file), loaded again: the
             same logits, and a tied head stays tied */
            char sdir[160];
            snprintf(sdir, sizeof sdir, "%s-saved", dir);
            struct qs_lm *c = NULL;
            CHECK(qs_lm_save(a, sdir, NULL, NULL, NULL, NULL, 0, &e) == 0);
            CHECK(qs_lm_load(sdir, &c, &e) == 0);
            if (c) {
                float *lc = malloc(nl * sizeof *lc);
                CHECK(c->tied == a->tied && qs_lm_forward(c, tok, T, NULL, lc, &e) == 0);
                CHECK(!memcmp(lc, lb, nl * sizeof *lc));
                free(lc);
            }
            qs_lm_free(c);
            char rm[200];
            snprintf(rm, sizeof rm, "rm -rf %s", sdir);
            CHECK(system(rm) == 0);
        }
        size_t keep = qs_lm_linear_slice_bytes;
        /* slices of 3 output rows (a large head's way): the same bits from F32 and 16-bit
         * weights, and within rounding of the whole products */
        float *lw = malloc(nl * sizeof *lw);
        memcpy(lw, lb, nl * sizeof *lw);
        qs_lm_linear_slice_bytes = 3 * sizeof(float) * (size_t)a->d_model;
        CHECK(qs_lm_forward(a, tok, T, NULL, la, &e) == 0);
        CHECK(qs_lm_forward(b, tok, T, NULL, lb, &e) == 0);
        CHECK(!memcmp(la, lb, nl * sizeof *la));
        double dmax = 0, amax = 0;
        for (size_t j = 0; j < nl; j++) {
            dmax = fabs(la[j] - lw[j]) > dmax ? fabs(la[j] - lw[j]) : dmax;
            amax = fabs(lw[j]) > amax ? fabs(lw[j]) : amax;
        }
        CHECK(dmax <= 1e-5 * amax);
        free(lw);
        qs_lm_linear_slice_bytes = keep;
        /* the cache at budget 0: the last two asked for stay */
        a->wf_budget = 0;
        const float *w0 = qs_lm_site_w(a, 0, &e), *w1 = qs_lm_site_w(a, 1, &e);
        CHECK(w0 && w1 && !memcmp(w0, b->sites[0].w, sizeof(float) * a->sites[0].in));
        const float *w2 = qs_lm_site_w(a, 2, &e);
        CHECK(w2 &&
              !memcmp(w2, b->sites[2].w, (size_t)a->sites[2].out * a->sites[2].in * sizeof(float)));
        CHECK(qs_lm_site_w(a, 1, &e) == w1); /* still held: a hit */
        qs_lm_wf_info(a, &ia);
        CHECK(ia.ncached == 2 && ia.widens == 3 && ia.hits == 1);
        a->wf_budget = QS_LM_WF_BUDGET;
        qs_lm_site_w_trim(a, 1);
        qs_lm_wf_info(a, &ia);
        CHECK(ia.ncached == 0 && ia.cached_bytes == 0);
        /* the file under the mapping changes: noticed before the next read */
        CHECK(qs_lm_check_file(a, &e) == 0);
        char path[160];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 0}};
        CHECK(utimensat(AT_FDCWD, path, ts, 0) == 0);
        CHECK(qs_lm_check_file(a, &e) == -1 && strstr(e.msg, "changed on disk"));
        CHECK(qs_lm_site_w(a, 3, &e) == NULL);
        free(la);
        free(lb);
        qs_lm_free(a);
        qs_lm_free(b);
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
}

/* ---- the peek and the load's hooks ------------------------------------------------------- */

struct prog_log {
    int n, monotone;
    double last;
    _Atomic int *cancel_at_2; /* set after the second report */
};

static void prog_cb(void *ctx, const char *what, double frac)
{
    struct prog_log *p = ctx;
    if (strcmp(what, "reading the weights") || frac < p->last || frac > 1.0)
        p->monotone = 0;
    p->last = frac;
    if (++p->n == 2 && p->cancel_at_2)
        *p->cancel_at_2 = 1;
}

/* qs_lm_peek gives the sites (names, shapes, order), sizes and family of the load, from the
 * config alone (a corrupt weights file still peeks; a missing one, a GGUF file, a bad config do
 * not); its rows (qs_layer_row_plain) are those of the loaded model in a fresh bench; the load's
 * progress rises to 1 over the tensors, and its cancel flag stops it with no model. */
static void test_peek(void)
{
    const char *dirs[] = {"datasets/models/tiny-gpt2", "datasets/models/tiny-llama",
                          "tests/fixtures/lm_gpt2", "tests/fixtures/lm_llama_gqa"};
    for (int k = 0; k < 4; k++) {
        struct qs_lm *p = NULL, *m = NULL;
        qs_err e = {{0}};
        struct prog_log pl = {0, 1, 0.0, NULL};
        struct qs_lm_load_hooks h = {prog_cb, &pl, NULL};
        CHECK(qs_lm_peek(dirs[k], &p, &e) == 0);
        CHECK(qs_lm_load_ex(dirs[k], &h, &m, &e) == 0);
        if (!p || !m) {
            fprintf(stderr, "  %s: %s\n", dirs[k], e.msg);
            qs_lm_free(p);
            qs_lm_free(m);
            continue;
        }
        CHECK(pl.n > 4 && pl.monotone && pl.last == 1.0);
        CHECK(p->family == m->family && p->n_layer == m->n_layer && p->d_model == m->d_model &&
              p->vocab == m->vocab && p->ctx == m->ctx && p->tied == m->tied &&
              !strcmp(p->path, m->path));
        CHECK(p->nsites == m->nsites);
        struct qs_bench *b = qs_bench_new();
        CHECK(b && qs_bench_set_lm(b, m, dirs[k], &e) == 0);
        for (int i = 0; b && i < p->nsites && i < m->nsites; i++) {
            const struct qs_lm_site *a = &p->sites[i], *s = &m->sites[i];
            CHECK(!strcmp(a->name, s->name) && a->in == s->in && a->out == s->out);
            CHECK(a->w == NULL && a->w16 == NULL && a->b == NULL);
            struct qs_layer_row rp, rf;
            qs_layer_row_plain(a->name, a->out, a->in, &rp);
            qs_layer_row_fill(b, i, &rf);
            CHECK(!strcmp(rp.name, rf.name));
            rp.name = rf.name; /* the rest, byte for byte (both rows start zeroed) */
            if (memcmp(&rp, &rf, sizeof rp)) {
                fprintf(stderr, "  %s: row %d (%s) differs from the loaded one\n", dirs[k], i,
                        a->name);
                CHECK(0);
            }
        }
        qs_bench_free(b); /* frees m */
        qs_lm_free(p);
    }

    /* cancelled after the second tensor: -1, "cancelled", no model */
    _Atomic int flag = 0;
    struct prog_log pl = {0, 1, 0.0, &flag};
    struct qs_lm_load_hooks h = {prog_cb, &pl, &flag};
    struct qs_lm *m = (struct qs_lm *)1;
    qs_err e = {{0}};
    CHECK(qs_lm_load_ex("datasets/models/tiny-gpt2", &h, &m, &e) == -1);
    CHECK(m == NULL && strstr(e.msg, "model.safetensors: cancelled") && pl.n == 2);

    /* the peek reads the config, not the weights */
    char dir[128], path[200], cmd[300];
    snprintf(dir, sizeof dir, "/tmp/qs_test_lm_peek_%d", (int)getpid());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp datasets/models/tiny-gpt2/config.json %s/", dir,
             dir);
    CHECK(system(cmd) == 0);
    struct qs_lm *p = NULL;
    CHECK(qs_lm_peek(dir, &p, &e) == -1 && p == NULL && strstr(e.msg, "not a regular file"));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_text(path, "not a safetensors file");
    CHECK(qs_lm_peek(dir, &p, &e) == 0 && p && p->nsites == 9 &&
          !strcmp(p->sites[8].name, "lm_head"));
    qs_lm_free(p);
    p = NULL;
    CHECK(qs_lm_load(dir, &p, &e) == -1 && p == NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"model_type\": \"gpt2\", \"n_layer\": -3}");
    CHECK(qs_lm_peek(dir, &p, &e) == -1 && p == NULL && strstr(e.msg, "config.json"));
    CHECK(qs_lm_peek("datasets/models/llama256-q4km.gguf", &p, &e) == -1 && p == NULL);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TEST_MAIN("lm", TEST_CASE(test_peek), TEST_CASE(test_lazy_weights),
          TEST_CASE(test_load_memory_check), TEST_CASE(test_gpt2_vs_torch),
          TEST_CASE(test_llama_vs_torch), TEST_CASE(test_hooks), TEST_CASE(test_bundled_models),
          TEST_CASE(test_bad_models))
