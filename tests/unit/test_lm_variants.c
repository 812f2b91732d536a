/* test_lm_variants.c - the LLaMA family's variants read from config.json (qwen2 with q/k/v
 * biases and a tied head, mistral with a sliding window shorter than the context, llama with
 * attention_bias and mlp_bias): logits and every parameter's gradient (biases included) against
 * PyTorch (tests/tools/make_lm_variants.py: tests/fixtures/lm_{qwen2,mistral_sw,llama_bias} and
 * lm_variants.json), the config rules, and `export model` of LLaMA-family models that gain biases
 * (bias and linear corrections folded in): the folder reloads as a model whose float forward and
 * eval are the session's. */
#include "qscope/lm.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lm_fixture.h"
#include "qscope/bench.h"
#include "qscope/cmd.h"
#include "qscope/lm_grad.h"
#include "qscope/safetensors.h"
#include "test.h"

#define FIXTURE "tests/fixtures/lm_variants.json"
#define TOL 1e-4

static char tmp_[128];

/* Forward of the fixture's tokens; max |logit - ref| / max |ref| (1e30 on error). */
static double fixture_err(const struct qs_lm *m, const char *dir)
{
    char path[256];
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    if (qs_st_open(path, &f, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
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
    qs_st_close(f);
    return err;
}

static struct qs_lm *load(const char *dir)
{
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    if (qs_lm_load(dir, &m, &e) < 0)
        fprintf(stderr, "  %s\n", e.msg);
    return m;
}

static void test_logits_vs_torch(void)
{
    struct qs_lm *q = load("tests/fixtures/lm_qwen2");
    CHECK(q != NULL);
    if (q) {
        double err = fixture_err(q, "tests/fixtures/lm_qwen2");
        printf("  qwen2: max |logit - torch| / max |logit| = %.3g\n", err);
        CHECK(err < 1e-4);
        CHECK_STR(q->arch, "qwen2");
        CHECK(q->family == QS_LM_LLAMA && q->tied && q->window == 0 && q->n_kv_head == 2);
        CHECK(q->bias_mask == 0x07);
        CHECK_NEAR(q->rope_theta, 1e6, 1e-6);
        for (int s = 0; s < q->nsites; s++) /* q, k, v of every block; nothing else */
            CHECK((q->sites[s].b != NULL) == (s < q->nsites - 1 && s % 7 < 3));
        /* the biases are used: without q_proj's the logits move */
        const float *b0 = q->sites[0].b;
        q->sites[0].b = NULL;
        double off = fixture_err(q, "tests/fixtures/lm_qwen2");
        q->sites[0].b = b0;
        printf("  qwen2 without layer 0's q_proj bias: %.3g\n", off);
        CHECK(off > 1e-3);
    }
    qs_lm_free(q);

    struct qs_lm *mi = load("tests/fixtures/lm_mistral_sw");
    CHECK(mi != NULL);
    if (mi) {
        double err = fixture_err(mi, "tests/fixtures/lm_mistral_sw");
        printf("  mistral (window 5 of 16): max |logit - torch| / max |logit| = %.3g\n", err);
        CHECK(err < 1e-4);
        CHECK_STR(mi->arch, "mistral");
        CHECK(mi->window == 5 && mi->bias_mask == 0 && !mi->tied);
        mi->window = 0; /* the window matters: full causal attention is another model */
        double off = fixture_err(mi, "tests/fixtures/lm_mistral_sw");
        printf("  mistral with full attention: %.3g\n", off);
        CHECK(off > 1e-3);
    }
    qs_lm_free(mi);

    struct qs_lm *lb = load("tests/fixtures/lm_llama_bias");
    CHECK(lb != NULL);
    if (lb) {
        double err = fixture_err(lb, "tests/fixtures/lm_llama_bias");
        printf("  llama attention_bias+mlp_bias: max |logit - torch| / max |logit| = %.3g\n", err);
        CHECK(err < 1e-4);
        CHECK_STR(lb->arch, "llama");
        CHECK(lb->bias_mask == 0x7F && lb->window == 0);
        for (int s = 0; s < lb->nsites; s++)
            CHECK((lb->sites[s].b != NULL) == (s < lb->nsites - 1));
        /* every bias counts: 2 layers of d + 2 kv + d + 3 ff... as stored */
        long nb = 0;
        for (int s = 0; s < lb->nsites; s++)
            nb += lb->sites[s].b ? lb->sites[s].out : 0;
        CHECK(nb == 2L * (16 + 8 + 8 + 16 + 24 + 24 + 16));
        const float *b6 = lb->sites[6].b; /* down_proj's bias counts too */
        lb->sites[6].b = NULL;
        double off = fixture_err(lb, "tests/fixtures/lm_llama_bias");
        lb->sites[6].b = b6;
        CHECK(off > 1e-3);
    }
    qs_lm_free(lb);
}

/* ---- gradients --------------------------------------------------------------------------- */

static void check_case(const cJSON *c)
{
    const char *dir = cJSON_GetObjectItem(c, "model")->valuestring;
    struct qs_lm *m = load(dir);
    CHECK(m != NULL);
    if (!m)
        return;
    qs_err e = {{0}};
    int B, T;
    size_t *start;
    uint32_t *tok = lmfx_windows(c, &B, &T, &start);
    struct qs_lm_grad *g = qs_lm_grad_new(m, &e);
    CHECK(g != NULL);
    double loss = 0;
    CHECK(g && qs_lm_backward(m, tok, start, B, T, NULL, g, &loss, NULL, &e) == 0);
    CHECK_REL(loss, cJSON_GetObjectItem(c, "loss")->valuedouble, 1e-6);
    const cJSON *ts = cJSON_GetObjectItem(c, "tensors");
    CHECK(g && cJSON_GetArraySize(ts) == g->ntensor);
    CHECK(g && g->nflat == (size_t)qs_lm_nparams(m));
    double worst = 0;
    int nbias = 0;
    for (int i = 0; g && i < g->ntensor; i++) {
        const struct qs_lm_tensor *q = &g->t[i];
        const cJSON *t = NULL, *it;
        cJSON_ArrayForEach(
            it, ts) if (!strcmp(cJSON_GetObjectItem(it, "name")->valuestring, q->name)) t = it;
        if (!t) {
            fprintf(stderr, "  %s: tensor %s is not in the fixture\n", dir, q->name);
            CHECK(0);
            continue;
        }
        nbias += strstr(q->name, ".bias") != NULL;
        struct lmfx_err r = lmfx_grad_err(q->grad, q->n, t);
        worst = fmax(worst, fmax(fmax(r.norm, r.proj), r.entry));
        if (!(r.norm <= TOL && r.proj <= TOL)) {
            fprintf(stderr, "  %s %s: norm %.9g vs torch %.9g, projection error %.3g\n", dir,
                    q->name, r.got_norm, r.ref_norm, r.proj);
            CHECK(0);
        }
        if (!(r.entry <= TOL)) {
            fprintf(stderr, "  %s %s[%zu]: relative error %.3g against torch\n", dir, q->name, r.at,
                    r.entry);
            CHECK(0);
        }
    }
    /* the per-site bias gradients are the tensors' own */
    for (int s = 0; g && s < m->nsites; s++)
        CHECK((g->gb[s] != NULL) == (m->sites[s].b != NULL));
    fprintf(stderr, "  %s: %d tensors (%d biases), loss %.6f, worst relative error %.2g\n", dir,
            g ? g->ntensor : 0, nbias, loss, worst);
    qs_lm_grad_free(g);
    free(tok);
    free(start);
    qs_lm_free(m);
}

static void test_grads_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    CHECK(root != NULL);
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        check_case(c);
        n++;
    }
    CHECK(n == 3);
    cJSON_Delete(root);
}

/* ---- config rules ------------------------------------------------------------------------ */

#define HEAD                                                                                       \
    "\"vocab_size\": 32, \"hidden_size\": 16, \"num_hidden_layers\": 2, "                          \
    "\"num_attention_heads\": 4, \"intermediate_size\": 24, "                                      \
    "\"max_position_embeddings\": 16"

static int parse(const char *text, struct qs_lm *m, qs_err *e)
{
    memset(m, 0, sizeof *m);
    return qs_lm_parse_config(text, strlen(text), "config.json", m, e);
}

static void test_config_rules(void)
{
    struct qs_lm m;
    qs_err e = {{0}};
    /* qwen2: windows only with use_sliding_window true; refused when one could bite */
    CHECK(parse("{\"model_type\": \"qwen2\", " HEAD ", \"use_sliding_window\": false, "
                "\"sliding_window\": 4}",
                &m, &e) == 0);
    CHECK(m.window == 0 && m.bias_mask == 0x07 && m.n_kv_head == 4);
    CHECK(parse("{\"model_type\": \"qwen2\", " HEAD ", \"use_sliding_window\": true, "
                "\"sliding_window\": 4, \"max_window_layers\": 1}",
                &m, &e) < 0);
    CHECK(strstr(e.msg, "use_sliding_window true with sliding_window 4") != NULL);
    CHECK(parse("{\"model_type\": \"qwen2\", " HEAD ", \"use_sliding_window\": true, "
                "\"sliding_window\": 4, \"max_window_layers\": 2}",
                &m, &e) == 0);
    CHECK(parse("{\"model_type\": \"qwen2\", " HEAD ", \"use_sliding_window\": true, "
                "\"sliding_window\": 4, \"layer_types\": [\"full_attention\", "
                "\"sliding_attention\"]}",
                &m, &e) < 0);
    CHECK(parse("{\"model_type\": \"qwen2\", " HEAD ", \"use_sliding_window\": true, "
                "\"sliding_window\": 16}",
                &m, &e) == 0);
    CHECK(m.window == 0);
    /* mistral: the window, MistralConfig's defaults (4096; 8 kv heads) */
    CHECK(parse("{\"model_type\": \"mistral\", " HEAD ", \"num_key_value_heads\": 2, "
                "\"sliding_window\": null}",
                &m, &e) == 0);
    CHECK(m.window == 0 && m.bias_mask == 0 && m.n_kv_head == 2);
    CHECK(parse("{\"model_type\": \"mistral\", " HEAD ", \"num_key_value_heads\": 2}", &m, &e) ==
          0);
    CHECK(m.window == 4096);
    CHECK(parse("{\"model_type\": \"mistral\", " HEAD "}", &m, &e) < 0);
    CHECK(strstr(e.msg, "not a multiple of num_key_value_heads 8") != NULL);
    /* llama's own bias flags */
    CHECK(parse("{\"model_type\": \"llama\", " HEAD ", \"attention_bias\": true}", &m, &e) == 0);
    CHECK(m.bias_mask == 0x0F);
    CHECK(parse("{\"model_type\": \"llama\", " HEAD ", \"mlp_bias\": true}", &m, &e) == 0);
    CHECK(m.bias_mask == 0x70);
    CHECK(parse("{\"model_type\": \"llama\", " HEAD ", \"mlp_bias\": 1}", &m, &e) < 0);
    CHECK(parse("{\"model_type\": \"falcon\", " HEAD "}", &m, &e) < 0);
    CHECK(strstr(e.msg, "\"qwen2\" or \"mistral\"") != NULL);

    /* biases in the file that the config does not announce are named */
    snprintf(tmp_, sizeof tmp_, "/tmp/qs_test_lmvar_%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && mkdir -p %s && cp tests/fixtures/lm_llama_bias/model.safetensors %s/ "
             "&& sed 's/\"attention_bias\": true/\"attention_bias\": false/' "
             "tests/fixtures/lm_llama_bias/config.json > %s/config.json",
             tmp_, tmp_, tmp_, tmp_);
    CHECK(system(cmd) == 0);
    struct qs_lm *x = NULL;
    CHECK(qs_lm_load(tmp_, &x, &e) < 0);
    CHECK(strstr(e.msg, "self_attn.q_proj.bias' is a bias that config.json does not announce") !=
          NULL);
    /* and announced biases must be there */
    snprintf(cmd, sizeof cmd,
             "cp tests/fixtures/lm_mistral_sw/model.safetensors %s/ && sed 's/\"model_type\": "
             "\"mistral\"/\"model_type\": \"llama\", \"mlp_bias\": true/' "
             "tests/fixtures/lm_mistral_sw/config.json > %s/config.json",
             tmp_, tmp_);
    CHECK(system(cmd) == 0);
    CHECK(qs_lm_load(tmp_, &x, &e) < 0);
    CHECK(strstr(e.msg, "tensor 'model.layers.0.mlp.gate_proj.bias' is missing") != NULL);
    CHECK(x == NULL);
}

/* ---- saving with new biases -------------------------------------------------------------- */

/* max |a - b| / max |b| of the two models' logits on one window of ids 0, 3, 6, ... */
static double logits_diff(const struct qs_lm *a, const struct qs_lm *b)
{
    int T = a->ctx, V = a->vocab;
    uint32_t tok[64];
    for (int t = 0; t < T; t++)
        tok[t] = (uint32_t)((3 * t + 1) % V);
    float *la = malloc((size_t)T * V * sizeof(float)), *lb = malloc((size_t)T * V * sizeof(float));
    qs_err e = {{0}};
    double mx = 1e30, sc = 0;
    if (qs_lm_forward(a, tok, T, NULL, la, &e) == 0 &&
        qs_lm_forward(b, tok, T, NULL, lb, &e) == 0) {
        mx = 0;
        for (int i = 0; i < T * V; i++) {
            mx = fmax(mx, fabs((double)la[i] - lb[i]));
            sc = fmax(sc, fabs((double)lb[i]));
        }
        mx /= sc;
    } else {
        fprintf(stderr, "  %s\n", e.msg);
    }
    free(la);
    free(lb);
    return mx;
}

static cJSON *read_json(const char *path)
{
    static char buf[1 << 14];
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return cJSON_Parse(buf);
}

static int json_true(const cJSON *o, const char *k)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, k));
}

/* Site SITE of the model in DIR gains bias BIAS (out); the folder written reloads as ARCH with
 * that bias (and zero ones around it) and the same logits as the source model running it. */
static void save_with_bias(const char *dir, int site, const char *arch, int want_attn, int want_mlp)
{
    struct qs_lm *m = load(dir);
    CHECK(m != NULL);
    if (!m)
        return;
    int out = m->sites[site].out;
    float *bias = malloc((size_t)out * sizeof(float));
    for (int i = 0; i < out; i++)
        bias[i] = 0.25f * (float)((i * 7) % 5 - 2);
    const float **bb = calloc((size_t)m->nsites, sizeof *bb);
    bb[site] = bias;
    bb[m->nsites - 1] = bias; /* the head has no bias: ignored */
    char path[256];
    snprintf(path, sizeof path, "%s/save", tmp_);
    qs_err e = {{0}};
    int rc = qs_lm_save(m, path, NULL, bb, NULL, NULL, 0, &e);
    if (rc < 0)
        fprintf(stderr, "  %s\n", e.msg);
    CHECK(rc == 0);
    struct qs_lm *r = rc == 0 ? load(path) : NULL;
    CHECK(r != NULL);
    if (r) {
        CHECK_STR(r->arch, arch);
        CHECK(((r->bias_mask & 0x0F) == 0x0F) == want_attn);
        CHECK(((r->bias_mask & 0x70) == 0x70) == want_mlp);
        CHECK(r->tied == m->tied && r->n_kv_head == m->n_kv_head);
        CHECK_NEAR(r->rope_theta, m->rope_theta, 1e-9);
        CHECK(!memcmp(r->sites[site].b, bias, (size_t)out * sizeof(float)));
        /* the source with the bias in place is the reloaded model */
        const float *own = m->sites[site].b;
        float *sum = malloc((size_t)out * sizeof(float));
        for (int i = 0; i < out; i++)
            sum[i] = bias[i];
        m->sites[site].b = sum;
        double d = logits_diff(r, m);
        m->sites[site].b = own;
        free(sum);
        double d0 = logits_diff(r, m);
        printf("  %s + bias on %s -> %s: logits differ by %.3g (%.3g without the bias)\n", dir,
               m->sites[site].name, arch, d, d0);
        CHECK(d < 1e-6);
        CHECK(d0 > 1e-3);
        snprintf(path, sizeof path, "%s/save/config.json", tmp_);
        cJSON *cfg = read_json(path);
        CHECK(cfg != NULL);
        CHECK(json_true(cfg, "attention_bias") == want_attn);
        CHECK(json_true(cfg, "mlp_bias") == want_mlp);
        if (strcmp(arch, m->arch)) {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
            CHECK(cJSON_IsArray(a) &&
                  !strcmp(cJSON_GetArrayItem(a, 0)->valuestring, "LlamaForCausalLM"));
            CHECK(!cJSON_GetObjectItemCaseSensitive(cfg, "sliding_window"));
        }
        cJSON_Delete(cfg);
    }
    qs_lm_free(r);
    qs_lm_free(m);
    free(bb);
    free(bias);
}

static void test_save_new_biases(void)
{
    snprintf(tmp_, sizeof tmp_, "/tmp/qs_test_lmvar_%d", (int)getpid());
    CHECK(qs_mkdir_p(tmp_) == 0);
    /* a plain llama's o_proj: attention_bias true, every q/k/v/o of both blocks gets one */
    save_with_bias("tests/fixtures/lm_llama_gqa", 3, "llama", 1, 0);
    /* down_proj of block 1: mlp_bias */
    save_with_bias("tests/fixtures/lm_llama_gqa", 13, "llama", 0, 1);
    /* qwen2's own q/k/v biases replaced: stays qwen2 */
    save_with_bias("tests/fixtures/lm_qwen2", 8, "qwen2", 0, 0);
    /* qwen2 o_proj: a llama with attention_bias (o zero elsewhere) */
    save_with_bias("tests/fixtures/lm_qwen2", 3, "llama", 1, 0);
    save_with_bias("tests/fixtures/lm_qwen2", 5, "llama", 1, 1);
    /* mistral: with its window shorter than the context, no llama can hold a bias */
    struct qs_lm *m = load("tests/fixtures/lm_mistral_sw");
    CHECK(m != NULL);
    if (m) {
        float bias[16] = {1};
        const float **bb = calloc((size_t)m->nsites, sizeof *bb);
        bb[3] = bias;
        char path[256];
        snprintf(path, sizeof path, "%s/refused", tmp_);
        qs_err e = {{0}};
        CHECK(qs_lm_save(m, path, NULL, bb, NULL, NULL, 0, &e) < 0);
        CHECK(strstr(e.msg, "sliding window of 5 (< context 16) has no llama equivalent") != NULL);
        CHECK(access(path, F_OK) != 0);
        free(bb);
    }
    qs_lm_free(m);
}

/* ---- export model through the session ----------------------------------------------------- */

struct cap {
    double quant_loss, float_loss;
};

static void cap_emit(void *u, const cJSON *obj, const char *text)
{
    (void)text;
    struct cap *c = u;
    const cJSON *cmd = obj ? cJSON_GetObjectItemCaseSensitive(obj, "cmd") : NULL;
    if (!cJSON_IsString(cmd) || strcmp(cmd->valuestring, "eval"))
        return;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(obj, "quant");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "float");
    c->quant_loss = qs_json_get_num(cJSON_GetObjectItemCaseSensitive(q, "loss"));
    c->float_loss = qs_json_get_num(cJSON_GetObjectItemCaseSensitive(f, "loss"));
}

static int run(struct qs_ctx *c, const char *line)
{
    qs_err e = {{0}};
    if (qs_exec_line(c, line, &e) < 0) {
        fprintf(stderr, "  '%s': %s\n", line, e.msg);
        return -1;
    }
    return 0;
}

/* MODEL on DATA quantized and corrected (LINES), exported, reloaded: the folder's float loss is
 * the session's quantized loss; its config says attention_bias / mlp_bias as expected. */
static void export_reload(const char *model, const char *data, const char *const *lines,
                          const char *arch, int attn, int mlp)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    struct cap cap = {NAN, NAN};
    qs_ctx_init(&c, b);
    c.emit = cap_emit;
    c.u = &cap;
    char line[512], dir[256];
    snprintf(dir, sizeof dir, "%s/exp", tmp_);
    snprintf(line, sizeof line, "load model %s", model);
    CHECK(run(&c, line) == 0);
    snprintf(line, sizeof line, "load data %s", data);
    CHECK(run(&c, line) == 0);
    for (int i = 0; lines[i]; i++)
        CHECK(run(&c, lines[i]) == 0);
    CHECK(run(&c, "eval") == 0);
    double q = cap.quant_loss, f = cap.float_loss;
    snprintf(line, sizeof line, "export model %s", dir);
    CHECK(run(&c, line) == 0);
    snprintf(line, sizeof line, "load model %s", dir);
    CHECK(run(&c, line) == 0);
    snprintf(line, sizeof line, "load data %s", data);
    CHECK(run(&c, line) == 0);
    cap.float_loss = NAN;
    CHECK(run(&c, "eval") == 0);
    printf("  %s corrected: session quant loss %.9g, reloaded float loss %.9g (float %.9g)\n",
           model, q, cap.float_loss, f);
    CHECK(fabs(cap.float_loss - q) <= 1e-7 * fabs(q));
    CHECK(fabs(q - f) > 1e-4); /* the corrections and the quantization are really there */
    const struct qs_lm *m = b->lm;
    CHECK(m != NULL);
    if (m) {
        CHECK_STR(m->arch, arch);
        CHECK(((m->bias_mask & 0x0F) == 0x0F) == attn && ((m->bias_mask & 0x70) == 0x70) == mlp);
    }
    qs_ctx_free(&c);
    qs_bench_free(b);
}

static void test_export_corrected(void)
{
    snprintf(tmp_, sizeof tmp_, "/tmp/qs_test_lmvar_%d", (int)getpid());
    CHECK(qs_mkdir_p(tmp_) == 0);
    /* tiny-llama: bias on o_proj, an int8 linear map on down_proj, qera beside them */
    const char *ll[] = {"quant * int4 gran=channel", "correct model.layers.0.self_attn.o_proj bias",
                        "correct model.layers.0.mlp.down_proj linear prec=int8",
                        "correct model.layers.1.self_attn.v_proj qera r=4", NULL};
    export_reload("datasets/models/tiny-llama", "datasets/text/licenses.txt", ll, "llama", 1, 1);
    /* the exported file: q_proj of block 1 has a zero bias, o_proj of block 0 a real one */
    char path[256];
    snprintf(path, sizeof path, "%s/exp", tmp_);
    struct qs_lm *m = load(path);
    CHECK(m != NULL);
    if (m) {
        double z = 0, o = 0;
        for (int i = 0; i < m->sites[7].out; i++)
            z += fabs(m->sites[7].b[i]);
        for (int i = 0; i < m->sites[3].out; i++)
            o += fabs(m->sites[3].b[i]);
        CHECK(z == 0 && o > 0);
    }
    qs_lm_free(m);
    /* qwen2: its o_proj bias correction makes it a llama with attention_bias */
    char bin[256];
    snprintf(bin, sizeof bin, "%s/tok.bin", tmp_);
    FILE *f = fopen(bin, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    qs_rng r;
    qs_rng_seed(&r, 7);
    for (int i = 0; i < 4000; i++) {
        uint16_t v = (uint16_t)(qs_rng_u64(&r) % 32);
        fwrite(&v, 2, 1, f);
    }
    fclose(f);
    const char *qw[] = {"quant * int4 gran=channel", "correct model.layers.0.self_attn.o_proj bias",
                        "correct model.layers.1.self_attn.q_proj linear", NULL};
    export_reload("tests/fixtures/lm_qwen2", bin, qw, "llama", 1, 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_);
    CHECK(system(cmd) == 0);
}

TEST_MAIN("lm_variants", TEST_CASE(test_logits_vs_torch), TEST_CASE(test_grads_vs_torch),
          TEST_CASE(test_config_rules), TEST_CASE(test_save_new_biases),
          TEST_CASE(test_export_corrected))
