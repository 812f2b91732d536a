/* lm.c - GPT-2 and LLaMA: Hugging Face folder loading, forward pass with quantizer hooks, and
 * evaluation (cross-entropy, perplexity, KL and top-1 agreement against a quantized run). */
#include "qscope/lm.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The exp kernels (lm_impl.h) clamp their argument; GCC if-converts and vectorizes those clamps
 * only when float compares may not trap (nothing here reads the FP exception flags). */
#pragma GCC optimize("no-trapping-math")

#include "lm_impl.h"
#include "qscope/half.h"
#include "qscope/mlp.h" /* qs_linear */
#include "qscope/packfile.h"
#include "qscope/safetensors.h"

void qs_lm_free(struct qs_lm *m)
{
    if (!m)
        return;
    for (int s = 0; m->sites && s < m->nsites; s++) { /* sites may not exist yet */
        if (!(m->tied && s == m->nsites - 1))
            free(m->sites[s].w);
        free((void *)m->sites[s].b); /* owned; const only for the hooks' sake */
    }
    free(m->sites);
    struct qs_lm_priv *p = m->priv;
    if (p) {
        for (int i = 0; p->wc && i < m->nsites; i++)
            free(p->wc[i]);
        free(p->wc);
        free(p->wc_tick);
        qs_st_close(p->f);
        free(p->wte);
        free(p->wpe);
        free(p->nfw);
        free(p->nfb);
        for (int l = 0; p->layer && l < m->n_layer; l++) {
            free(p->layer[l].n1w);
            free(p->layer[l].n1b);
            free(p->layer[l].n2w);
            free(p->layer[l].n2b);
        }
        free(p->layer);
        for (int i = 0; i < p->nmeta; i++) {
            free(p->meta_key[i]);
            free(p->meta_val[i]);
        }
        free(p->meta_key);
        free(p->meta_val);
        free(p->config);
        free(p);
    }
    free(m->path);
    free(m);
}

const char *qs_lm_meta(const struct qs_lm *m, const char *key)
{
    for (int i = 0; m && m->priv && i < m->priv->nmeta; i++)
        if (!strcmp(m->priv->meta_key[i], key))
            return m->priv->meta_val[i];
    return NULL;
}

long qs_lm_nparams(const struct qs_lm *m)
{
    long n = (long)m->vocab * m->d_model, d = m->d_model;
    if (m->family == QS_LM_GPT2)
        n += (long)m->n_pos * d + 2 * d + (long)m->n_layer * 4 * d;
    else
        n += d + (long)m->n_layer * 2 * d;
    for (int s = 0; s < m->nsites; s++) {
        if (m->tied && s == m->nsites - 1)
            continue;
        n += (long)m->sites[s].in * m->sites[s].out + (m->sites[s].b ? m->sites[s].out : 0);
    }
    return n;
}

/* ---- config ------------------------------------------------------------------------------ */

struct cfg_ctx {
    const cJSON *root;
    const char *file;
    qs_err *e;
};

/* The key's value, or NULL when it is missing or JSON null (both mean: not given). */
static const cJSON *cfg_item(const struct cfg_ctx *c, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(c->root, key);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

/* Integer key: *v = value; required keys missing are an error, optional ones keep *v. */
static int cfg_int(const struct cfg_ctx *c, const char *key, int required, int *v)
{
    const cJSON *j = cfg_item(c, key);
    if (!j) {
        if (required)
            return qs_errf(c->e, "%s: key '%s' is missing", c->file, key);
        return 0;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < 1 ||
        j->valuedouble > 1e9)
        return qs_errf(c->e, "%s: key '%s' must be a positive integer", c->file, key);
    *v = (int)j->valuedouble;
    return 0;
}

static int cfg_num(const struct cfg_ctx *c, const char *key, double *v)
{
    const cJSON *j = cfg_item(c, key);
    if (!j)
        return 0;
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble))
        return qs_errf(c->e, "%s: key '%s' must be a positive number", c->file, key);
    *v = j->valuedouble;
    return 0;
}

static int cfg_bool(const struct cfg_ctx *c, const char *key, int *v)
{
    const cJSON *j = cfg_item(c, key);
    if (!j)
        return 0;
    if (!cJSON_IsBool(j))
        return qs_errf(c->e, "%s: key '%s' must be true or false", c->file, key);
    *v = cJSON_IsTrue(j);
    return 0;
}

/* A string key that, when present, must be one of the allowed values (NULL-terminated). */
static int cfg_str_in(const struct cfg_ctx *c, const char *key, const char *const *ok)
{
    const cJSON *j = cfg_item(c, key);
    if (!j)
        return 0;
    if (cJSON_IsString(j))
        for (int i = 0; ok[i]; i++)
            if (!strcmp(j->valuestring, ok[i]))
                return 0;
    char vb[96];
    return qs_errf(c->e, "%s: key '%s' = %s is not supported (expected %s)", c->file, key,
                   cJSON_IsString(j) ? qs_clean_str(j->valuestring, vb, sizeof vb, 64)
                                     : "(not a string)",
                   ok[0]);
}

static char *read_text(const char *path, qs_err *e)
{
    FILE *f = qs_fopen_regular(path, "config file", e); /* a FIFO would block */
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    size_t k;
    while (s && (k = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += k;
        if (len + 1 == cap) {
            char *t = cap < (64u << 20) ? realloc(s, cap * 2) : NULL;
            if (!t) {
                free(s);
                s = NULL;
                break;
            }
            s = t;
            cap *= 2;
        }
    }
    fclose(f);
    if (!s) {
        qs_errf(e, "%s: out of memory or larger than 64 MB", path);
        return NULL;
    }
    s[len] = 0;
    return s;
}

/* Limits that keep every size product of the loader and the forward pass inside an int (each
 * product is still checked): far above any model qscope can hold, far below what overflows. */
#define LM_MAX_DIM (1 << 24) /* d_model, d_ff */
#define LM_MAX_LAYERS (1 << 20)
#define LM_MAX_CTX (1 << 24)

int qs_lm_parse_config(const char *text, size_t len, const char *file, struct qs_lm *m, qs_err *e)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qs_errf(e, "%s: not a JSON object", file);
    }
    struct cfg_ctx c = {root, file, e};
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int rc = 0;
    m->window = 0;
    m->bias_mask = 0;
    m->arch[0] = 0;
    if (cJSON_IsString(mt) && strlen(mt->valuestring) < sizeof m->arch)
        snprintf(m->arch, sizeof m->arch, "%s", mt->valuestring);
    if (!cJSON_IsString(mt)) {
        rc = qs_errf(e,
                     "%s: key 'model_type' is missing (expected \"gpt2\", \"llama\", "
                     "\"qwen2\" or \"mistral\")",
                     file);
    } else if (!strcmp(mt->valuestring, "gpt2")) {
        static const char *const acts[] = {"gelu_new", "gelu_pytorch_tanh", NULL};
        m->family = QS_LM_GPT2;
        m->bias_mask = 0x0F;
        m->eps = 1e-5;
        m->tied = 1;
        m->d_ff = 0;
        if (cfg_int(&c, "vocab_size", 1, &m->vocab) < 0 ||
            cfg_int(&c, "n_embd", 1, &m->d_model) < 0 ||
            cfg_int(&c, "n_layer", 1, &m->n_layer) < 0 ||
            cfg_int(&c, "n_head", 1, &m->n_head) < 0 || cfg_int(&c, "n_ctx", 0, &m->ctx) < 0 ||
            cfg_int(&c, "n_positions", 0, &m->ctx) < 0 || cfg_int(&c, "n_inner", 0, &m->d_ff) < 0 ||
            cfg_num(&c, "layer_norm_epsilon", &m->eps) < 0 ||
            cfg_bool(&c, "tie_word_embeddings", &m->tied) < 0 ||
            cfg_str_in(&c, "activation_function", acts) < 0)
            rc = -1;
        else if (!m->ctx)
            rc = qs_errf(e, "%s: key 'n_positions' is missing", file);
        if (!m->d_ff && qs_int_mul(4, m->d_model, &m->d_ff) < 0 && rc == 0)
            rc = qs_errf(e, "%s: n_embd %d is too large", file, m->d_model);
        m->n_kv_head = m->n_head;
    } else if (!strcmp(mt->valuestring, "llama") || !strcmp(mt->valuestring, "qwen2") ||
               !strcmp(mt->valuestring, "mistral")) {
        static const char *const acts[] = {"silu", NULL};
        const int qwen2 = !strcmp(mt->valuestring, "qwen2");
        const int mistral = !strcmp(mt->valuestring, "mistral");
        m->family = QS_LM_LLAMA;
        m->eps = 1e-6;
        m->rope_theta = 10000.0;
        m->tied = 0;
        m->n_kv_head = mistral ? 8 : 0; /* MistralConfig's default; LLaMA's and Qwen2's: H */
        int hd = 0, abias = 0, mbias = 0;
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
        if (cfg_int(&c, "vocab_size", 1, &m->vocab) < 0 ||
            cfg_int(&c, "hidden_size", 1, &m->d_model) < 0 ||
            cfg_int(&c, "num_hidden_layers", 1, &m->n_layer) < 0 ||
            cfg_int(&c, "num_attention_heads", 1, &m->n_head) < 0 ||
            cfg_int(&c, "num_key_value_heads", 0, &m->n_kv_head) < 0 ||
            cfg_int(&c, "intermediate_size", 1, &m->d_ff) < 0 ||
            cfg_int(&c, "max_position_embeddings", 1, &m->ctx) < 0 ||
            cfg_int(&c, "head_dim", 0, &hd) < 0 || cfg_num(&c, "rms_norm_eps", &m->eps) < 0 ||
            cfg_num(&c, "rope_theta", &m->rope_theta) < 0 ||
            cfg_bool(&c, "tie_word_embeddings", &m->tied) < 0 ||
            (!qwen2 && !mistral &&
             (cfg_bool(&c, "attention_bias", &abias) < 0 ||
              cfg_bool(&c, "mlp_bias", &mbias) < 0)) ||
            cfg_str_in(&c, "hidden_act", acts) < 0)
            rc = -1;
        else if (rs && !cJSON_IsNull(rs))
            rc = qs_errf(e, "%s: key 'rope_scaling' is not supported (must be null)", file);
        if (rc == 0 && mistral) {
            /* sliding_window: absent = MistralConfig's default 4096, null = none */
            const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
            m->window = sw ? 0 : 4096;
            rc = cfg_int(&c, "sliding_window", 0, &m->window);
        }
        if (rc == 0 && qwen2) {
            /* Qwen2 windows only with use_sliding_window, on the layers from max_window_layers
             * (or those layer_types calls "sliding_attention"): refused when one could bite */
            int use = 0, sw = 4096, mwl = 28, sliding = 0;
            const cJSON *swj = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
            const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
            if (swj && cJSON_IsNull(swj))
                sw = 0;
            if (cfg_bool(&c, "use_sliding_window", &use) < 0 ||
                cfg_int(&c, "sliding_window", 0, &sw) < 0 ||
                cfg_int(&c, "max_window_layers", 0, &mwl) < 0)
                rc = -1;
            else if (cJSON_IsArray(lt)) {
                const cJSON *it;
                cJSON_ArrayForEach(it, lt) sliding |=
                    cJSON_IsString(it) && !strcmp(it->valuestring, "sliding_attention");
            } else {
                sliding = mwl < m->n_layer;
            }
            if (rc == 0 && use && sw && sw < m->ctx && sliding)
                rc = qs_errf(e,
                             "%s: use_sliding_window true with sliding_window %d shorter than "
                             "max_position_embeddings %d is not supported (qscope runs qwen2 "
                             "with full attention)",
                             file, sw, m->ctx);
        }
        m->bias_mask = qwen2 ? 0x07 : (abias ? 0x0F : 0) | (mbias ? 0x70 : 0);
        if (!m->n_kv_head)
            m->n_kv_head = m->n_head;
        if (rc == 0 && m->d_model % m->n_head == 0 && (m->d_model / m->n_head) % 2)
            rc = qs_errf(e, "%s: head size %d must be even for RoPE", file, m->d_model / m->n_head);
        int hdh = 0;
        if (rc == 0 && hd && (qs_int_mul(hd, m->n_head, &hdh) < 0 || hdh != m->d_model))
            rc = qs_errf(e,
                         "%s: key 'head_dim' = %d differs from hidden_size / "
                         "num_attention_heads (not supported)",
                         file, hd);
        if (rc == 0 && m->n_head % m->n_kv_head)
            rc = qs_errf(e,
                         "%s: num_attention_heads %d is not a multiple of "
                         "num_key_value_heads %d",
                         file, m->n_head, m->n_kv_head);
    } else {
        char vb[96];
        rc = qs_errf(e,
                     "%s: unknown model_type '%s' (expected \"gpt2\", \"llama\", "
                     "\"qwen2\" or \"mistral\")",
                     file, qs_clean_str(mt->valuestring, vb, sizeof vb, 64));
    }
    if (rc == 0 && (m->d_model > LM_MAX_DIM || m->d_ff > LM_MAX_DIM))
        rc = qs_errf(e, "%s: hidden size %d / MLP size %d exceed qscope's limit of %d", file,
                     m->d_model, m->d_ff, LM_MAX_DIM);
    if (rc == 0 && m->n_layer > LM_MAX_LAYERS)
        rc = qs_errf(e, "%s: %d layers exceed qscope's limit of %d", file, m->n_layer,
                     LM_MAX_LAYERS);
    if (rc == 0 && m->ctx > LM_MAX_CTX)
        rc = qs_errf(e, "%s: context length %d exceeds qscope's limit of %d", file, m->ctx,
                     LM_MAX_CTX);
    if (rc == 0)
        m->n_pos = m->ctx; /* the windows start as the whole context */
    if (rc == 0 && m->n_head > m->d_model)
        rc = qs_errf(e, "%s: %d heads for a hidden size of %d", file, m->n_head, m->d_model);
    if (rc == 0 && m->n_kv_head > m->n_head)
        rc = qs_errf(e, "%s: %d key/value heads exceed the %d attention heads", file, m->n_kv_head,
                     m->n_head);
    if (rc == 0 && m->d_model % m->n_head)
        rc = qs_errf(e, "%s: hidden size %d is not a multiple of the %d heads", file, m->d_model,
                     m->n_head);
    if (rc == 0) {
        /* each site's in * out is an int in the analyses and quantizers */
        int64_t d = m->d_model, big = d * (m->d_ff > 3 * d ? m->d_ff : 3 * d);
        if (big > INT32_MAX || d * m->vocab > INT32_MAX)
            rc = qs_errf(e,
                         "%s: a weight matrix of this model would have more than 2^31 "
                         "entries (not supported)",
                         file);
    }
    if (rc == 0) {
        /* every later size: sites, per-layer arrays, and the weights as F32 */
        size_t w;
        if (qs_lm_weight_bytes(m, &w) < 0)
            rc = qs_errf(e, "%s: the model's sizes overflow", file);
    }
    cJSON_Delete(root);
    return rc;
}

int qs_lm_weight_bytes(const struct qs_lm *m, size_t *bytes)
{
    size_t d = (size_t)m->d_model, ff = (size_t)m->d_ff, V = (size_t)m->vocab, L = 0, t, u;
    size_t hd = m->n_head > 0 ? d / (size_t)m->n_head : 0, kv = (size_t)m->n_kv_head * hd;
    *bytes = 0;
    if (m->n_layer < 0 || m->d_model < 0 || m->d_ff < 0 || m->vocab < 0 || m->ctx < 0 ||
        m->n_head < 0 || m->n_kv_head < 0)
        return -1;
    /* per layer: GPT-2 c_attn 3d d + c_proj d d + c_fc, c_proj 2 d ff + biases and norms;
     * LLaMA q, o d d + k, v 2 d kv + gate, up, down 3 d ff + norms */
    if (m->family == QS_LM_GPT2) {
        if (qs_size_mul(4 * d, d, &t) < 0 || qs_size_mul3(2, d, ff, &u) < 0 ||
            qs_size_add(t, u, &L) < 0 || qs_size_add(L, 10 * d + ff, &L) < 0)
            return -1;
    } else {
        size_t g, nb = 0; /* the biases the config announces */
        const size_t bout[7] = {d, kv, kv, d, ff, ff, d};
        for (int i = 0; i < 7; i++)
            nb += (m->bias_mask >> i) & 1 ? bout[i] : 0;
        if (qs_size_mul(2 * d, d, &t) < 0 || qs_size_mul3(2, d, kv, &u) < 0 ||
            qs_size_mul3(3, d, ff, &g) < 0 || qs_size_add(t, u, &L) < 0 ||
            qs_size_add(L, g + 2 * d, &L) < 0 || qs_size_add(L, nb, &L) < 0)
            return -1;
    }
    size_t all, emb, pos = 0;
    if (qs_size_mul((size_t)m->n_layer, L, &all) < 0 || qs_size_mul(V, d, &emb) < 0 ||
        (m->family == QS_LM_GPT2 && qs_size_mul((size_t)m->n_pos, d, &pos) < 0) ||
        qs_size_add(all, emb, &all) < 0 || qs_size_add(all, pos + 2 * d, &all) < 0 ||
        (!m->tied && qs_size_add(all, emb, &all) < 0) || qs_size_mul(all, sizeof(float), bytes) < 0)
        return -1;
    return 0;
}

/* *text: the file's text on success (the caller frees it). */
static int parse_config(struct qs_lm *m, const char *file, char **text, qs_err *e)
{
    *text = read_text(file, e);
    if (!*text)
        return -1;
    int rc = qs_lm_parse_config(*text, strlen(*text), file, m, e);
    if (rc < 0) {
        free(*text);
        *text = NULL;
    }
    return rc;
}

/* ---- tensors ----------------------------------------------------------------------------- */

struct st_ctx {
    const struct qs_st_file *f;
    const char *file;
    const char *prefix; /* "" or "transformer." */
    qs_err *e;
    unsigned char *used; /* per tensor of f (file order): read by the loader */
    /* NULL, or what the load reports (progress over the tensors' bytes: *done of total) and
     * whether to stop */
    const struct qs_lm_load_hooks *h;
    size_t *done, total;
};

/* After tensor t was read: the progress, and -1 with "cancelled" when the load is to stop. */
static int tensor_read(const struct st_ctx *c, const struct qs_st_tensor *t)
{
    if (!c->h)
        return 0;
    if (c->h->cancel && atomic_load(c->h->cancel))
        return qs_errf(c->e, "%s: cancelled", c->file);
    *c->done += t->nbytes;
    if (c->h->progress && c->total)
        c->h->progress(c->h->ctx, "reading the weights",
                       *c->done < c->total ? (double)*c->done / (double)c->total : 1.0);
    return 0;
}

/* Tensor PREFIX+NAME of shape (r) or (r, c) (c = 0: 1-D), F32, F16 or BF16 and finite (marked
 * used); NULL and the message otherwise. full: its name (160 bytes). */
static const struct qs_st_tensor *tensor_find(const struct st_ctx *c, const char *name, int64_t r,
                                              int64_t cols, char *full)
{
    snprintf(full, 160, "%s%s", c->prefix, name);
    const struct qs_st_tensor *t = qs_st_find(c->f, full);
    if (!t) {
        qs_errf(c->e, "%s: tensor '%s' is missing", c->file, full);
        return NULL;
    }
    if (c->used)
        c->used[t - qs_st_get(c->f, 0)] = 1;
    int nd = cols ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != r || (nd == 2 && t->shape[1] != cols)) {
        char got[96] = "", want[48];
        int k = 0;
        for (int i = 0; i < t->ndim && k < 80; i++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%lld", i ? "," : "",
                          (long long)t->shape[i]);
        if (cols)
            snprintf(want, sizeof want, "%lld,%lld", (long long)r, (long long)cols);
        else
            snprintf(want, sizeof want, "%lld", (long long)r);
        qs_errf(c->e, "%s: tensor '%s' has shape [%s] (expected [%s])", c->file, full, got, want);
        return NULL;
    }
    if (t->dtype != QS_DT_F32 && t->dtype != QS_DT_F16 && t->dtype != QS_DT_BF16) {
        qs_errf(c->e, "%s: tensor '%s' has dtype %s (expected F32, F16 or BF16)", c->file, full,
                qs_dtype_name(t->dtype));
        return NULL;
    }
    int64_t bad;
    if (!qs_st_check_finite(t, &bad)) {
        qs_errf(c->e, "%s: tensor '%s' has a NaN/Inf at flat index %lld", c->file, full,
                (long long)bad);
        return NULL;
    }
    return tensor_read(c, t) < 0 ? NULL : t;
}

/* Copies the found tensor t (full: its name) of shape (r, cols) to a new F32 array. With
 * transpose, the (r, c) tensor is returned as (c, r). */
static float *tensor_copy(const struct st_ctx *c, const struct qs_st_tensor *t, const char *full,
                          int64_t r, int64_t cols, int transpose)
{
    char what[200];
    snprintf(what, sizeof what, "%s: tensor '%s' as F32", c->file, full);
    if (transpose && t->dtype == QS_DT_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
        /* straight from the file's bytes, in 64 x 64 tiles: the naive strided transpose of a
         * temporary copy was 40 % of loading GPT-2-small (its Conv1D weights are (in, out)) */
        const float *src = t->data;
        float *w = qs_alloc((size_t)t->numel, sizeof(float), what, c->e);
        if (!w)
            return NULL;
        for (int64_t i0 = 0; i0 < r; i0 += 64)
            for (int64_t j0 = 0; j0 < cols; j0 += 64) {
                int64_t i1 = i0 + 64 < r ? i0 + 64 : r, j1 = j0 + 64 < cols ? j0 + 64 : cols;
                for (int64_t j = j0; j < j1; j++)
                    for (int64_t i = i0; i < i1; i++)
                        w[j * r + i] = src[i * cols + j];
            }
        qs_st_release(c->f, t);
        return w;
    }
    float *v = qs_alloc((size_t)t->numel, sizeof(float), what, c->e);
    if (!v)
        return NULL;
    if (qs_st_to_f32(t, v, c->e) < 0) {
        qs_err_prefix(c->e, c->file);
        free(v);
        return NULL;
    }
    qs_st_release(c->f, t); /* the copy is what stays: peak = F32 weights + one tensor */
    if (transpose) {
        float *w = qs_alloc((size_t)t->numel, sizeof(float), what, c->e);
        if (!w) {
            free(v);
            return NULL;
        }
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < cols; j++)
                w[j * r + i] = v[i * cols + j];
        free(v);
        v = w;
    }
    return v;
}

/* Copies tensor PREFIX+NAME of shape (r) or (r, c) (c = 0: 1-D) to a new F32 array (transposed
 * with transpose). */
static float *tensor(const struct st_ctx *c, const char *name, int64_t r, int64_t cols,
                     int transpose)
{
    char full[160];
    const struct qs_st_tensor *t = tensor_find(c, name, r, cols, full);
    return t ? tensor_copy(c, t, full, r, cols, transpose) : NULL;
}

/* Site s's weight from tensor PREFIX+NAME, (r, cols) in the file ((cols, r) = (out, in) after
 * transpose): an F16/BF16 tensor stays the file's bytes (w16, its pages released after the
 * finite check), any other is copied to F32 (w). */
static int site_weight(const struct st_ctx *c, struct qs_lm_site *s, const char *name, int64_t r,
                       int64_t cols, int transpose)
{
    char full[160];
    const struct qs_st_tensor *t = tensor_find(c, name, r, cols, full);
    if (!t)
        return -1;
    if (t->dtype == QS_DT_F16 || t->dtype == QS_DT_BF16) {
        s->w16 = t->data;
        s->w16_dt = t->dtype;
        s->w16_t = transpose;
        qs_st_release(c->f, t);
        return 0;
    }
    return (s->w = tensor_copy(c, t, full, r, cols, transpose)) ? 0 : -1;
}

/* The token embedding from tensor PREFIX+NAME, (vocab, d): as site_weight, an F16/BF16 tensor
 * stays the file's bytes (wte16; a 128k-vocabulary LLaMA-3's embedding is 1 GB as F32). */
static int embed_weight(const struct st_ctx *c, struct qs_lm_priv *p, const char *name,
                        int64_t vocab, int64_t d)
{
    char full[160];
    const struct qs_st_tensor *t = tensor_find(c, name, vocab, d, full);
    if (!t)
        return -1;
    if (t->dtype == QS_DT_F16 || t->dtype == QS_DT_BF16) {
        p->wte16 = t->data;
        p->wte16_dt = t->dtype;
        qs_st_release(c->f, t);
        return 0;
    }
    return (p->wte = tensor_copy(c, t, full, vocab, d, 0)) ? 0 : -1;
}

/* A tied head: the embedding itself, F32 or the same 16-bit bytes. */
static void tie_head(struct qs_lm_priv *p, struct qs_lm_site *h)
{
    h->w = p->wte;
    if (!p->wte) {
        h->w16 = p->wte16;
        h->w16_dt = p->wte16_dt;
        h->w16_t = 0;
    }
}

static void site_set(struct qs_lm_site *s, const char *name, int in, int out)
{
    snprintf(s->name, sizeof s->name, "%s", name);
    s->in = in;
    s->out = out;
}

/* A site of a packed export (packfile.h): read and dequantized there. 1: not a packed file. */
static int packed_site(const struct st_ctx *c, struct qs_lm_site *s, int flags)
{
    char tp[224];
    float *b;
    snprintf(tp, sizeof tp, "%s%s", c->prefix, s->name);
    int rc = qs_packfile_site(c->f, c->file, s->name, tp, s->out, s->in, flags, &s->w, &b, c->used,
                              c->e);
    s->b = b;
    return rc;
}

/* GPT-2 linear: Conv1D weight (in, out) transposed to (out, in), bias (out). */
static int gpt2_linear(const struct st_ctx *c, struct qs_lm_site *s)
{
    char k[128];
    int rc = packed_site(c, s, QS_PACKFILE_BIAS | QS_PACKFILE_WT);
    if (rc <= 0)
        return rc;
    snprintf(k, sizeof k, "%s.weight", s->name);
    if (site_weight(c, s, k, s->in, s->out, 1) < 0)
        return -1;
    snprintf(k, sizeof k, "%s.bias", s->name);
    return (s->b = tensor(c, k, s->out, 0, 0)) ? 0 : -1;
}

/* LLaMA-family linear: weight (out, in), and its bias (out) when the config gives it one. */
static int llama_linear(const struct st_ctx *c, struct qs_lm_site *s, int bias)
{
    char k[128];
    int rc = packed_site(c, s, bias ? QS_PACKFILE_BIAS : 0);
    if (rc <= 0)
        return rc;
    snprintf(k, sizeof k, "%s.weight", s->name);
    if (site_weight(c, s, k, s->out, s->in, 0) < 0)
        return -1;
    if (!bias)
        return 0;
    snprintf(k, sizeof k, "%s.bias", s->name);
    return (s->b = tensor(c, k, s->out, 0, 0)) ? 0 : -1;
}

/* The untied head: (vocab, d), no bias. */
static int head_linear(const struct st_ctx *c, struct qs_lm_site *h)
{
    int rc = packed_site(c, h, 0);
    if (rc <= 0)
        return rc;
    return site_weight(c, h, "lm_head.weight", h->out, h->in, 0);
}

static int load_gpt2(struct qs_lm *m, const struct st_ctx *c)
{
    struct qs_lm_priv *p = m->priv;
    int d = m->d_model;
    char k[128];
    if (embed_weight(c, p, "wte.weight", m->vocab, d) < 0 ||
        !(p->wpe = tensor(c, "wpe.weight", m->n_pos, d, 0)))
        return -1;
    for (int l = 0; l < m->n_layer; l++) {
        struct lm_layer *L = &p->layer[l];
        struct qs_lm_site *s = &m->sites[4 * l];
#define GPT2_VEC(dst, suffix)                                                                      \
    snprintf(k, sizeof k, "h.%d.%s", l, suffix);                                                   \
    if (!(dst = tensor(c, k, d, 0, 0)))                                                            \
        return -1;
        GPT2_VEC(L->n1w, "ln_1.weight")
        GPT2_VEC(L->n1b, "ln_1.bias")
        GPT2_VEC(L->n2w, "ln_2.weight")
        GPT2_VEC(L->n2b, "ln_2.bias")
#undef GPT2_VEC
        for (int i = 0; i < 4; i++)
            if (gpt2_linear(c, &s[i]) < 0)
                return -1;
    }
    if (!(p->nfw = tensor(c, "ln_f.weight", d, 0, 0)) ||
        !(p->nfb = tensor(c, "ln_f.bias", d, 0, 0)))
        return -1;
    struct qs_lm_site *h = &m->sites[m->nsites - 1];
    if (m->tied) {
        tie_head(p, h);
        return 0;
    }
    struct st_ctx c0 = *c;
    c0.prefix = ""; /* HF saves GPT2LMHeadModel's head outside "transformer." */
    return head_linear(&c0, h);
}

/* The seven linear sites of a LLaMA block in site order: their names under
 * "model.layers.L." and shapes (GQA: k and v project to n_kv_head heads). */
struct llama_lin {
    const char *n;
    int in, out;
};

static void llama_lins(const struct qs_lm *m, struct llama_lin lin[7])
{
    const int d = m->d_model, ff = m->d_ff, kv = m->n_kv_head * (d / m->n_head);
    const struct llama_lin t[7] = {{"self_attn.q_proj", d, d},  {"self_attn.k_proj", d, kv},
                                   {"self_attn.v_proj", d, kv}, {"self_attn.o_proj", d, d},
                                   {"mlp.gate_proj", d, ff},    {"mlp.up_proj", d, ff},
                                   {"mlp.down_proj", ff, d}};
    memcpy(lin, t, sizeof t);
}

/* Names and sizes every site of m (family and sizes from its config) as the loaders read them:
 * GPT-2's four linears of each block under "h.L.", LLaMA's seven under "model.layers.L.", then
 * the head "lm_head". */
static void name_sites(struct qs_lm *m)
{
    char k[128];
    const int d = m->d_model, ff = m->d_ff;
    if (m->family == QS_LM_GPT2) {
        const struct llama_lin lin[4] = {{"attn.c_attn", d, 3 * d},
                                         {"attn.c_proj", d, d},
                                         {"mlp.c_fc", d, ff},
                                         {"mlp.c_proj", ff, d}};
        for (int l = 0; l < m->n_layer; l++)
            for (int i = 0; i < 4; i++) {
                snprintf(k, sizeof k, "h.%d.%s", l, lin[i].n);
                site_set(&m->sites[4 * l + i], k, lin[i].in, lin[i].out);
            }
    } else {
        struct llama_lin lin[7];
        llama_lins(m, lin);
        for (int l = 0; l < m->n_layer; l++)
            for (int i = 0; i < 7; i++) {
                snprintf(k, sizeof k, "model.layers.%d.%s", l, lin[i].n);
                site_set(&m->sites[7 * l + i], k, lin[i].in, lin[i].out);
            }
    }
    site_set(&m->sites[m->nsites - 1], "lm_head", d, m->vocab);
}

/* m (its config parsed, n_layer bounded) with PATH, its private part and every site named and
 * sized, no tensors yet. 0, or -1 when out of memory (m stays for qs_lm_free). */
static int skeleton(struct qs_lm *m, const char *path)
{
    /* n_layer <= LM_MAX_LAYERS: these products fit an int */
    m->nsites = m->n_layer * (m->family == QS_LM_GPT2 ? 4 : 7) + 1;
    m->path = qs_strdup(path);
    m->priv = qs_calloc(1, sizeof *m->priv);
    m->sites = qs_calloc((size_t)m->nsites, sizeof *m->sites);
    if (m->priv)
        m->priv->layer = qs_calloc((size_t)m->n_layer, sizeof *m->priv->layer);
    if (!m->path || !m->priv || !m->sites || !m->priv->layer)
        return -1;
    name_sites(m);
    return 0;
}

static int load_llama(struct qs_lm *m, const struct st_ctx *c)
{
    struct qs_lm_priv *p = m->priv;
    int d = m->d_model;
    char k[128];
    if (embed_weight(c, p, "model.embed_tokens.weight", m->vocab, d) < 0)
        return -1;
    for (int l = 0; l < m->n_layer; l++) {
        struct lm_layer *L = &p->layer[l];
        struct qs_lm_site *s = &m->sites[7 * l];
        snprintf(k, sizeof k, "model.layers.%d.input_layernorm.weight", l);
        if (!(L->n1w = tensor(c, k, d, 0, 0)))
            return -1;
        snprintf(k, sizeof k, "model.layers.%d.post_attention_layernorm.weight", l);
        if (!(L->n2w = tensor(c, k, d, 0, 0)))
            return -1;
        for (int i = 0; i < 7; i++)
            if (llama_linear(c, &s[i], (m->bias_mask >> i) & 1) < 0)
                return -1;
    }
    if (!(p->nfw = tensor(c, "model.norm.weight", d, 0, 0)))
        return -1;
    struct qs_lm_site *h = &m->sites[m->nsites - 1];
    if (m->tied) {
        tie_head(p, h);
        return 0;
    }
    return head_linear(c, h);
}

static int copy_meta(struct qs_lm_priv *p, const struct qs_st_file *f)
{
    int n = qs_st_meta_count(f);
    p->meta_key = qs_calloc((size_t)n + 1, sizeof *p->meta_key);
    p->meta_val = qs_calloc((size_t)n + 1, sizeof *p->meta_val);
    if (!p->meta_key || !p->meta_val)
        return -1;
    for (int i = 0; i < n; i++) {
        p->meta_key[i] = qs_strdup(qs_st_meta_key(f, i));
        p->meta_val[i] = qs_strdup(qs_st_meta_value(f, i));
        p->nmeta = i + 1;
        if (!p->meta_key[i] || !p->meta_val[i])
            return -1;
    }
    return 0;
}

/* Before anything is allocated for n_layer layers: the file must hold that many tensors and the
 * last layer's first one (a config that says 300000000 layers is refused here). */
static int check_depth(const struct qs_lm *m, const struct qs_st_file *f, const char *stp,
                       qs_err *e)
{
    char k[160];
    size_t have = (size_t)qs_st_count(f), per = m->family == QS_LM_GPT2 ? 12 : 9;
    const char *lay = m->family == QS_LM_GPT2 ? "n_layer" : "num_hidden_layers";
    if ((size_t)m->n_layer > have / per) /* a missing tensor of a plausible depth is named later */
        return qs_errf(e,
                       "%s: config.json says %s %d, which needs at least %zu tensors, but the "
                       "file holds %zu",
                       stp, lay, m->n_layer, (size_t)m->n_layer * per, have);
    if (m->family == QS_LM_GPT2)
        snprintf(k, sizeof k, "%sh.%d.ln_1.weight",
                 qs_st_find(f, "transformer.wte.weight") ? "transformer." : "", m->n_layer - 1);
    else
        snprintf(k, sizeof k, "model.layers.%d.input_layernorm.weight", m->n_layer - 1);
    if (!qs_st_find(f, k))
        return qs_errf(e, "%s: config.json says %s %d but tensor '%s' is missing", stp, lay,
                       m->n_layer, k);
    return 0;
}

/* Buffers some exporters save beside the weights; never read, never a sign of a lying config. */
static int ignorable(const char *name)
{
    static const char *const suffix[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq",
                                         NULL};
    size_t n = strlen(name);
    for (int i = 0; suffix[i]; i++) {
        size_t k = strlen(suffix[i]);
        if (n >= k && !strcmp(name + n - k, suffix[i]))
            return 1;
    }
    return 0;
}

/* A tensor the loader did not read means the config describes another model (an n_layer that
 * under-reports the depth leaves whole layers out): refused, naming the first. */
static int check_unused(const struct qs_lm *m, const struct qs_st_file *f, const char *stp,
                        const unsigned char *used, qs_err *e)
{
    for (int i = 0; i < qs_st_count(f); i++) {
        const char *name = qs_st_get(f, i)->name;
        if (used[i] || ignorable(name) || (m->tied && strstr(name, "lm_head.weight")))
            continue;
        char nb[96];
        size_t n = strlen(name);
        if (m->family == QS_LM_LLAMA && n > 5 && !strcmp(name + n - 5, ".bias"))
            return qs_errf(e,
                           "%s: tensor '%s' is a bias that config.json does not announce "
                           "(model_type %s%s)",
                           stp, qs_clean_str(name, nb, sizeof nb, 64), m->arch,
                           strcmp(m->arch, "llama") ? ""
                                                    : "; attention_bias / mlp_bias say "
                                                      "which linears have biases");
        return qs_errf(e,
                       "%s: tensor '%s' is not used by the model config.json describes "
                       "(%d layers); the config does not match the weights",
                       stp, qs_clean_str(name, nb, sizeof nb, 64), m->n_layer);
    }
    return 0;
}

/* The heap a load of file f takes: its F32 tensors are copied, 16-bit matrices stay the file's
 * mapped bytes (site_weight, embed_weight: page cache, not heap) except GPT-2's position table,
 * vectors are widened, and any other dtype (a packed export's codes) is counted as 8 F32 values
 * a byte; at most f32 (every weight as F32). A BF16 1B model needs about 2.2 GB, not 4.4. */
static size_t load_heap_bytes(const struct qs_st_file *f, size_t f32)
{
    size_t sum = 0;
    for (int i = 0; i < qs_st_count(f) && sum < f32; i++) {
        const struct qs_st_tensor *t = qs_st_get(f, i);
        size_t len = strlen(t->name), add;
        int wpe = len >= 10 && !strcmp(t->name + len - 10, "wpe.weight");
        if (t->dtype == QS_DT_F16 || t->dtype == QS_DT_BF16)
            add = t->ndim < 2 || wpe ? (size_t)t->numel * sizeof(float) : 0;
        else if (t->dtype == QS_DT_F32)
            add = t->nbytes;
        else
            add = t->nbytes * 8 * sizeof(float);
        sum = add > f32 - sum ? f32 : sum + add;
    }
    return sum;
}

int qs_lm_load(const char *dir, struct qs_lm **out, qs_err *e)
{
    return qs_lm_load_ex(dir, NULL, out, e);
}

/* The start of reading Hugging Face folder DIR: *cfg and *stp its config.json and
 * model.safetensors paths, and a new model with config.json parsed (*text its text). NULL and e
 * when that fails (nothing left to free). */
static struct qs_lm *folder_open(const char *dir, char **cfg, char **stp, char **text, qs_err *e)
{
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    *cfg = malloc(dl + 32);
    *stp = malloc(dl + 32);
    *text = NULL;
    struct qs_lm *m = qs_calloc(1, sizeof *m);
    int rc = *cfg && *stp && m ? 0 : qs_errf(e, "%s: out of memory", dir);
    if (rc == 0) {
        m->wf_budget = QS_LM_WF_BUDGET;
        snprintf(*cfg, dl + 32, "%.*s/config.json", (int)dl, dir);
        snprintf(*stp, dl + 32, "%.*s/model.safetensors", (int)dl, dir);
        rc = parse_config(m, *cfg, text, e);
    }
    if (rc == 0)
        return m;
    free(*cfg);
    free(*stp);
    *cfg = *stp = NULL;
    qs_lm_free(m);
    return NULL;
}

/* The end of reading a folder: the paths freed, and m when rc < 0; else *out = m. rc. */
static int folder_close(int rc, struct qs_lm *m, char *cfg, char *stp, struct qs_lm **out)
{
    free(cfg);
    free(stp);
    if (rc < 0) {
        qs_lm_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int qs_lm_peek(const char *dir, struct qs_lm **out, qs_err *e)
{
    *out = NULL;
    size_t dl = strlen(dir);
    if (dl > 5 && !strcmp(dir + dl - 5, ".gguf"))
        return qs_errf(e, "%s: a GGUF file is read whole (no peek)", dir);
    char *cfg, *stp, *text;
    struct qs_lm *m = folder_open(dir, &cfg, &stp, &text, e);
    if (!m)
        return -1;
    struct stat st;
    int rc = 0;
    if (stat(stp, &st) < 0 || !S_ISREG(st.st_mode))
        rc = qs_errf(e, "%s: not a regular file", stp);
    else if (skeleton(m, dir) < 0)
        rc = qs_errf(e, "%s: out of memory", dir);
    free(text);
    return folder_close(rc, m, cfg, stp, out);
}

int qs_lm_load_ex(const char *dir, const struct qs_lm_load_hooks *h, struct qs_lm **out, qs_err *e)
{
    *out = NULL;
    size_t n0 = strlen(dir);
    if (n0 > 5 && !strcmp(dir + n0 - 5, ".gguf")) /* a llama.cpp file, not a folder */
        return qs_lm_load_gguf(dir, out, e);
    char *cfg, *stp, *cfg_text;
    struct qs_lm *m = folder_open(dir, &cfg, &stp, &cfg_text, e);
    if (!m)
        return -1;
    struct qs_st_file *f = NULL;
    int rc = qs_st_open(stp, &f, e);
    if (rc == 0)
        rc = check_depth(m, f, stp, e);
    size_t wbytes = 0;
    if (rc == 0 &&
        (qs_lm_weight_bytes(m, &wbytes) < 0 ||
         qs_mem_check(load_heap_bytes(f, wbytes), "the model's weights as F32", e) < 0)) {
        if (!wbytes)
            qs_errf(e, "%s: the model's sizes overflow", cfg);
        rc = qs_err_prefix(e, dir);
    }
    unsigned char *used = NULL;
    if (rc == 0) {
        used = qs_calloc((size_t)qs_st_count(f) + 1, 1);
        if (skeleton(m, dir) < 0 || !used || copy_meta(m->priv, f) < 0)
            rc = qs_errf(e, "%s: out of memory", dir);
        if (m->priv) {
            m->priv->config = cfg_text;
            cfg_text = NULL;
        }
    }
    size_t done = 0, total = 0;
    for (int i = 0; rc == 0 && i < qs_st_count(f); i++)
        total += qs_st_get(f, i)->nbytes;
    if (rc == 0) {
        struct st_ctx c = {f, stp, "", e, used, h, &done, total};
        if (m->family == QS_LM_GPT2 && !qs_st_find(f, "wte.weight") &&
            qs_st_find(f, "transformer.wte.weight"))
            c.prefix = "transformer.";
        rc = m->family == QS_LM_GPT2 ? load_gpt2(m, &c) : load_llama(m, &c);
    }
    if (rc == 0)
        rc = check_unused(m, f, stp, used, e);
    free(used);
    free(cfg_text);
    int lazy = 0;
    for (int i = 0; rc == 0 && i < m->nsites; i++)
        lazy |= m->sites[i].w16 != NULL;
    if (lazy) /* the 16-bit sites read it */
        m->priv->f = f;
    else
        qs_st_close(f);
    return folder_close(rc, m, cfg, stp, out);
}

/* ---- models built by other loaders (lm_gguf.c) ------------------------------------------ */

int qs_lm_new_from_config(const char *config, const char *file, const char *path,
                          struct qs_lm **out, qs_err *e)
{
    *out = NULL;
    struct qs_lm *m = qs_calloc(1, sizeof *m);
    if (m)
        m->wf_budget = QS_LM_WF_BUDGET;
    if (!m)
        return qs_errf(e, "%s: out of memory", path);
    size_t wbytes = 0;
    int rc = qs_lm_parse_config(config, strlen(config), file, m, e);
    if (rc == 0 && m->family != QS_LM_LLAMA)
        rc = qs_errf(e, "%s: only the llama family can be built this way", file);
    if (rc == 0 && (qs_lm_weight_bytes(m, &wbytes) < 0 ||
                    qs_mem_check(wbytes, "the model's weights as F32", e) < 0)) {
        if (!wbytes)
            qs_errf(e, "%s: the model's sizes overflow", file);
        rc = qs_err_prefix(e, path);
    }
    if (rc == 0 && (skeleton(m, path) < 0 || !(m->priv->config = qs_strdup(config))))
        rc = qs_errf(e, "%s: out of memory", path);
    if (rc < 0) {
        qs_lm_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

float **qs_lm_slot(struct qs_lm *m, enum qs_lm_slot slot, int layer)
{
    struct qs_lm_priv *p = m->priv;
    switch (slot) {
    case QS_LM_SLOT_EMBED:
        return &p->wte;
    case QS_LM_SLOT_NORM_F:
        return &p->nfw;
    case QS_LM_SLOT_NORM_ATTN:
        return &p->layer[layer].n1w;
    case QS_LM_SLOT_NORM_MLP:
        return &p->layer[layer].n2w;
    }
    return NULL;
}

/* ---- saving ------------------------------------------------------------------------------ */

struct save_list {
    struct qs_st_out *t;
    char (*names)[128];
    float **own; /* transposed copies, freed after the write */
    int n, nown;
};

static void save_put(struct save_list *x, const char *name, int64_t d0, int64_t d1,
                     const float *data)
{
    snprintf(x->names[x->n], sizeof x->names[x->n], "%s", name);
    x->t[x->n] = (struct qs_st_out){.name = x->names[x->n],
                                    .dtype = QS_DT_F32,
                                    .ndim = d1 ? 2 : 1,
                                    .shape = {d0, d1},
                                    .data = data};
    x->n++;
}

/* Site s's F32 weight for the write: its own, or a copy widened from the file's 16-bit bytes
 * (freed after the write). */
static const float *save_weight(struct save_list *x, const struct qs_lm *m, int s, qs_err *e)
{
    const struct qs_lm_site *st = &m->sites[s];
    if (st->w)
        return st->w;
    float *w = qs_alloc((size_t)st->out * st->in, sizeof(float), "a weight widened to F32", e);
    if (!w || qs_lm_site_rows(m, s, 0, st->out, w, e) < 0) {
        free(w);
        return NULL;
    }
    x->own[x->nown++] = w;
    return w;
}

/* A GPT-2 Conv1D weight: (out, in) back to the file's (in, out). */
static int save_conv1d(struct save_list *x, const char *name, const float *w, int in, int out,
                       qs_err *e)
{
    float *t = qs_alloc((size_t)in * out, sizeof(float), "a transposed weight", e);
    if (!t)
        return -1;
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++)
            t[(size_t)j * out + i] = w[(size_t)i * in + j];
    x->own[x->nown++] = t;
    save_put(x, name, in, out, t);
    return 0;
}

/* LLaMA family: the block sites (bit i: site i of every block) whose biases the file holds, and
 * the model_type that can say so. b[s] given for a site the model has no bias for widens the
 * set to whole groups (q, k, v, o; gate, up, down), as Hugging Face's attention_bias / mlp_bias
 * create them; a qwen2 or mistral then becomes a llama, which a sliding window forbids. */
static int save_bias_plan(const struct qs_lm *m, const float *const *b, int *mask,
                          const char **arch, qs_err *e)
{
    int need = m->bias_mask;
    for (int s = 0; b && s < m->nsites - 1; s++)
        if (b[s])
            need |= 1 << (s % 7);
    *arch = m->arch;
    *mask = need;
    if (need == m->bias_mask)
        return 0;
    *mask = (need & 0x0F ? 0x0F : 0) | (need & 0x70 ? 0x70 : 0);
    if (strcmp(m->arch, "llama") && m->window > 0 && m->window < m->n_pos)
        return qs_errf(e,
                       "%s has no linear biases in Hugging Face's format and its sliding window "
                       "of %d (< context %d) has no llama equivalent: a bias or linear "
                       "correction cannot be folded into it",
                       m->arch, m->window, m->n_pos);
    *arch = "llama";
    return 0;
}

static void json_set(cJSON *root, const char *key, cJSON *v)
{
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    cJSON_AddItemToObject(root, key, v);
}

/* config.json: the loaded text with tie_word_embeddings and torch_dtype set to what is written;
 * LLaMA family with biases beyond the model's (bmask differs from m->bias_mask): attention_bias
 * and mlp_bias as bmask says, and as model_type ARCH ("llama" when the model's own cannot hold
 * them: the keys whose defaults differ spelled out, the sliding-window keys dropped). */
static int save_config(const struct qs_lm *m, const char *path, int tied, const char *arch,
                       int bmask, qs_err *e)
{
    const char *text = m->priv ? m->priv->config : NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qs_errf(e, "%s: the model's config.json text is not available", path);
    }
    if (m->family == QS_LM_LLAMA && strcmp(arch, m->arch)) {
        static const char *const drop[] = {"sliding_window", "use_sliding_window",
                                           "max_window_layers", "layer_types", NULL};
        for (int i = 0; drop[i]; i++)
            cJSON_DeleteItemFromObjectCaseSensitive(root, drop[i]);
        const char *archs[] = {"LlamaForCausalLM"};
        json_set(root, "model_type", cJSON_CreateString(arch));
        json_set(root, "architectures", cJSON_CreateStringArray(archs, 1));
        json_set(root, "num_key_value_heads", cJSON_CreateNumber(m->n_kv_head));
        json_set(root, "rms_norm_eps", cJSON_CreateNumber(m->eps));
        json_set(root, "rope_theta", cJSON_CreateNumber(m->rope_theta));
    }
    if (m->family == QS_LM_LLAMA && bmask != m->bias_mask) {
        json_set(root, "attention_bias", cJSON_CreateBool((bmask & 0x0F) != 0));
        json_set(root, "mlp_bias", cJSON_CreateBool((bmask & 0x70) != 0));
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "tie_word_embeddings");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "torch_dtype");
    cJSON_AddBoolToObject(root, "tie_word_embeddings", tied);
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out)
        return qs_errf(e, "%s: out of memory", path);
    qs_outfile o;
    int rc = qs_out_open(&o, path, e);
    if (rc == 0) {
        fputs(out, o.f);
        fputc('\n', o.f);
        rc = qs_out_commit(&o, e);
    }
    free(out);
    return rc;
}

int qs_lm_save(const struct qs_lm *m, const char *dir, const float *const *w, const float *const *b,
               const char *const *meta_keys, const char *const *meta_vals, int nmeta, qs_err *e)
{
    return qs_lm_save_packed(m, dir, w, b, NULL, NULL, NULL, 0, meta_keys, meta_vals, nmeta, e);
}

int qs_lm_save_packed(const struct qs_lm *m, const char *dir, const float *const *w,
                      const float *const *b, const unsigned char *skip, const struct qs_st_out *xt,
                      const int *xsite, int nx, const char *const *meta_keys,
                      const char *const *meta_vals, int nmeta, qs_err *e)
{
    struct stat st;
    const int H = m->nsites - 1, gpt2 = m->family == QS_LM_GPT2;
    int bmask = 0;
    const char *arch = m->arch;
    if (!gpt2 && save_bias_plan(m, b, &bmask, &arch, e) < 0)
        return qs_err_prefix(e, dir);
    if (mkdir(dir, 0777) < 0 && errno != EEXIST)
        return qs_errf(e, "%s: cannot create the folder: %s", dir, strerror(errno));
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return qs_errf(e, "%s: exists and is not a folder", dir);
    const struct qs_lm_priv *p = m->priv;
    const float *head = w && w[H] ? w[H] : m->sites[H].w;
    /* a tied head stays tied only while it is the embedding itself (both the file's 16-bit
     * bytes, head and wte NULL, count as that) */
    const int tied = m->tied && head == p->wte;
    /* at most: embeddings, norms, head, 16 per layer (2 norms, 7 weights and 7 biases) */
    int cap = 5 + 16 * m->n_layer, nk = 0;
    float *zeros = NULL; /* the bias of a site that gains one only for its group's sake */
    if (!gpt2 && bmask != m->bias_mask &&
        !(zeros = qs_calloc((size_t)(m->d_ff > m->d_model ? m->d_ff : m->d_model), sizeof(float))))
        return qs_errf(e, "%s: out of memory", dir);
    struct save_list x = {0};
    x.t = qs_calloc((size_t)cap + nx, sizeof *x.t); /* and the caller's extra tensors */
    x.names = qs_calloc((size_t)cap + nx, sizeof *x.names);
    x.own = qs_calloc(2 * (size_t)m->nsites + 1, sizeof *x.own); /* widened, transposed */
    size_t dl = strlen(dir) + 32;
    char *path = malloc(dl);
    const char **keys = malloc(((size_t)nmeta + 1 + p->nmeta) * sizeof *keys);
    const char **vals = malloc(((size_t)nmeta + 1 + p->nmeta) * sizeof *vals);
    int rc = x.t && x.names && x.own && path && keys && vals ? 0 : qs_errf(e, "out of memory");
    float *emb_own = NULL;
    const float *emb = rc == 0 ? qs_lm_embed_f32(m, &emb_own, e) : NULL;
    if (rc == 0 && !emb)
        rc = qs_err_prefix(e, dir);
    if (emb_own)
        x.own[x.nown++] = emb_own;
    char k[128];
    const char *pre = gpt2 ? "transformer." : "model.";
    for (int s = 0; rc == 0 && s < H; s++) {
        const struct qs_lm_site *si = &m->sites[s];
        int l = s / (gpt2 ? 4 : 7), first = s % (gpt2 ? 4 : 7) == 0;
        const struct lm_layer *L = &p->layer[l];
        const float *ws = w && w[s] ? w[s] : si->w;
        if (!ws && !(skip && skip[s]) && !(ws = save_weight(&x, m, s, e))) {
            rc = qs_err_prefix(e, dir);
            break;
        }
        const float *bs = si->b && b && b[s] ? b[s] : si->b; /* GPT-2: every site has one */
        if (!gpt2)
            bs = !((bmask >> (s % 7)) & 1) ? NULL : b && b[s] ? b[s] : si->b ? si->b : zeros;
        if (gpt2 && first) {
            if (s == 0) {
                save_put(&x, "transformer.wte.weight", m->vocab, m->d_model, emb);
                save_put(&x, "transformer.wpe.weight", m->n_pos, m->d_model, p->wpe);
            }
            snprintf(k, sizeof k, "transformer.h.%d.ln_1.weight", l);
            save_put(&x, k, m->d_model, 0, L->n1w);
            snprintf(k, sizeof k, "transformer.h.%d.ln_1.bias", l);
            save_put(&x, k, m->d_model, 0, L->n1b);
            snprintf(k, sizeof k, "transformer.h.%d.ln_2.weight", l);
            save_put(&x, k, m->d_model, 0, L->n2w);
            snprintf(k, sizeof k, "transformer.h.%d.ln_2.bias", l);
            save_put(&x, k, m->d_model, 0, L->n2b);
        } else if (first) {
            if (s == 0)
                save_put(&x, "model.embed_tokens.weight", m->vocab, m->d_model, emb);
            snprintf(k, sizeof k, "model.layers.%d.input_layernorm.weight", l);
            save_put(&x, k, m->d_model, 0, L->n1w);
            snprintf(k, sizeof k, "model.layers.%d.post_attention_layernorm.weight", l);
            save_put(&x, k, m->d_model, 0, L->n2w);
        }
        snprintf(k, sizeof k, "%s%s.weight", gpt2 ? pre : "", si->name);
        if (skip && skip[s])
            ; /* written by the caller (packed) */
        else if (gpt2)
            rc = save_conv1d(&x, k, ws, si->in, si->out, e);
        else
            save_put(&x, k, si->out, si->in, ws);
        if (rc == 0 && bs) {
            snprintf(k, sizeof k, "%s%s.bias", gpt2 ? pre : "", si->name);
            save_put(&x, k, si->out, 0, bs);
        }
    }
    if (rc == 0) {
        save_put(&x, gpt2 ? "transformer.ln_f.weight" : "model.norm.weight", m->d_model, 0, p->nfw);
        if (gpt2)
            save_put(&x, "transformer.ln_f.bias", m->d_model, 0, p->nfb);
        if (!tied && !(skip && skip[H]) && !head && !(head = save_weight(&x, m, H, e)))
            rc = qs_err_prefix(e, dir);
        else if (!tied && !(skip && skip[H]))
            save_put(&x, "lm_head.weight", m->vocab, m->d_model, head);
        for (int i = 0; rc == 0 && i < nx; i++) { /* named after their site's weight */
            const char *sp = xsite[i] < H && gpt2 ? pre : "";
            if (xsite[i] < 0 || xsite[i] > H ||
                snprintf(k, sizeof k, "%s%s.%s", sp, m->sites[xsite[i]].name, xt[i].name) >=
                    (int)sizeof k) {
                rc = qs_errf(e, "%s: extra tensor %d has no site or too long a name", dir, i);
                break;
            }
            save_put(&x, k, xt[i].shape[0], xt[i].ndim == 2 ? xt[i].shape[1] : 0, xt[i].data);
            x.t[x.n - 1].dtype = xt[i].dtype;
        }
        /* the caller's keys, "format": "pt" (as Hugging Face writes), then the source's own */
        for (int i = 0; i < nmeta; i++, nk++) {
            keys[nk] = meta_keys[i];
            vals[nk] = meta_vals[i];
        }
        keys[nk] = "format";
        vals[nk++] = "pt";
        for (int i = 0; i < p->nmeta; i++) {
            int dup = 0;
            for (int j = 0; j < nk; j++)
                dup |= !strcmp(keys[j], p->meta_key[i]);
            if (!dup) {
                keys[nk] = p->meta_key[i];
                vals[nk++] = p->meta_val[i];
            }
        }
        snprintf(path, dl, "%s/model.safetensors", dir);
        if (rc == 0)
            rc = qs_st_write(path, x.t, x.n, keys, vals, nk, e);
    }
    if (rc == 0) {
        snprintf(path, dl, "%s/config.json", dir);
        rc = save_config(m, path, tied, arch, bmask, e);
    }
    free(zeros);
    for (int i = 0; i < x.nown; i++)
        free(x.own[i]);
    free(x.own);
    free(x.t);
    free(x.names);
    free(path);
    free(keys);
    free(vals);
    return rc;
}

/* ---- 16-bit site weights, widened on use ------------------------------------------------- */

size_t qs_lm_linear_slice_bytes = (size_t)64 << 20;

int qs_lm_check_file(const struct qs_lm *m, qs_err *e)
{
    return m->priv && m->priv->f ? qs_st_check(m->priv->f, e) : 0;
}

/* Embedding row id into out (d floats): a copy, or widened from the file's bytes (exact). */
static void embed_row(const struct qs_lm_priv *p, uint32_t id, int d, float *out)
{
    if (p->wte) {
        memcpy(out, p->wte + (size_t)id * d, (size_t)d * sizeof(float));
        return;
    }
    const unsigned char *src = p->wte16 + (size_t)id * d * 2;
    if (p->wte16_dt == QS_DT_BF16)
        qs_bf16_to_f32_n(src, out, (size_t)d);
    else
        qs_f16_to_f32_n(src, out, (size_t)d);
}

const float *qs_lm_embed_f32(const struct qs_lm *m, float **own, qs_err *e)
{
    const struct qs_lm_priv *p = m->priv;
    *own = NULL;
    if (p->wte)
        return p->wte;
    float *w = qs_alloc((size_t)m->vocab * m->d_model, sizeof(float),
                        "the token embedding widened to F32", e);
    if (!w)
        return NULL;
    for (int r = 0; r < m->vocab; r++)
        embed_row(p, (uint32_t)r, m->d_model, w + (size_t)r * m->d_model);
    qs_st_release_bytes(p->f, p->wte16, (size_t)m->vocab * m->d_model * 2);
    if (qs_lm_check_file(m, e) < 0) {
        free(w);
        return NULL;
    }
    return *own = w;
}

int qs_lm_site_rows(const struct qs_lm *m, int s, int r0, int r1, float *out, qs_err *e)
{
    const struct qs_lm_site *st = &m->sites[s];
    const size_t in = (size_t)st->in, nr = (size_t)(r1 - r0);
    if (st->w) {
        memcpy(out, st->w + (size_t)r0 * in, nr * in * sizeof(float));
        return 0;
    }
    void (*cvt)(const void *, float *, size_t) =
        st->w16_dt == QS_DT_BF16 ? qs_bf16_to_f32_n : qs_f16_to_f32_n;
    const unsigned char *src = st->w16;
    /* the widened copy is what the caller keeps: the file's pages it read are released, so a
     * model read through once does not hold its whole file resident (a later read takes them
     * from the page cache again) */
    if (!st->w16_t) {
        cvt(src + (size_t)r0 * in * 2, out, nr * in);
        qs_st_release_bytes(m->priv->f, src + (size_t)r0 * in * 2, nr * in * 2);
    } else { /* stored (in, out): row c of the file is column c of the weight */
        float row[512];
        for (size_t c = 0; c < in; c++)
            for (size_t r = 0; r < nr; r += 512) {
                size_t k = nr - r < 512 ? nr - r : 512;
                cvt(src + (c * (size_t)st->out + (size_t)r0 + r) * 2, row, k);
                for (size_t j = 0; j < k; j++)
                    out[(r + j) * in + c] = row[j];
            }
        qs_st_release_bytes(m->priv->f, src, in * (size_t)st->out * 2);
    }
    return qs_lm_check_file(m, e);
}

int qs_lm_site_linear(const struct qs_lm *m, int s, const float *x, int n, const float *b, float *y,
                      qs_err *e)
{
    const struct qs_lm_site *st = &m->sites[s];
    const size_t in = (size_t)st->in, row_bytes = in * sizeof(float);
    size_t per = qs_lm_linear_slice_bytes / row_bytes;
    if (per < 1)
        per = 1;
    if (per >= (size_t)st->out) { /* the whole matrix: qs_linear's product */
        if (st->w) {
            qs_linear(x, n, st->in, st->w, b, st->out, y);
            return 0;
        }
        float *w = qs_alloc((size_t)st->out * in, sizeof(float), "a site's weight as F32", e);
        int rc = w ? qs_lm_site_rows(m, s, 0, st->out, w, e) : -1;
        if (rc == 0)
            qs_linear(x, n, st->in, w, b, st->out, y);
        free(w);
        return rc < 0 ? qs_err_prefix(e, st->name) : 0;
    }
    /* slices of output rows, the same for an F32 weight as for a widened one, so both give the
     * same bits (a sliced product differs from a whole one in the last bits) */
    float *w = st->w ? NULL : qs_alloc(per * in, sizeof(float), "a slice of a weight as F32", e);
    if (!st->w && !w)
        return qs_err_prefix(e, st->name);
    int rc = 0;
    for (int r0 = 0; r0 < st->out && rc == 0; r0 += (int)per) {
        int r1 = r0 + (int)per < st->out ? r0 + (int)per : st->out;
        const float *ws = st->w ? st->w + (size_t)r0 * in : w;
        if (!st->w && (rc = qs_lm_site_rows(m, s, r0, r1, w, e)) < 0)
            break;
        if (b)
            for (int r = 0; r < n; r++)
                memcpy(y + (size_t)r * st->out + r0, b + r0, (size_t)(r1 - r0) * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r1 - r0, st->in, 1.0f, x, st->in,
                    ws, st->in, b ? 1.0f : 0.0f, y + r0, st->out);
    }
    free(w);
    return rc < 0 ? qs_err_prefix(e, st->name) : 0;
}

/* Drops cached copies, least recently asked first, until the cache holds at most `budget` bytes,
 * keeping the two sites asked for last. */
static void wc_trim(struct qs_lm *m, size_t budget)
{
    struct qs_lm_priv *p = m->priv;
    if (!p || !p->wc)
        return;
    unsigned long keep1 = 0, keep2 = 0; /* the two highest ticks */
    for (int i = 0; i < m->nsites; i++)
        if (p->wc[i] && p->wc_tick[i] > keep1) {
            keep2 = keep1;
            keep1 = p->wc_tick[i];
        } else if (p->wc[i] && p->wc_tick[i] > keep2) {
            keep2 = p->wc_tick[i];
        }
    while (p->wc_bytes > budget) {
        int v = -1;
        for (int i = 0; i < m->nsites; i++)
            if (p->wc[i] && p->wc_tick[i] != keep1 && p->wc_tick[i] != keep2 &&
                (v < 0 || p->wc_tick[i] < p->wc_tick[v]))
                v = i;
        if (v < 0)
            break;
        free(p->wc[v]);
        p->wc[v] = NULL;
        p->wc_bytes -= (size_t)m->sites[v].out * m->sites[v].in * sizeof(float);
    }
}

void qs_lm_site_w_trim(struct qs_lm *m, int all)
{
    struct qs_lm_priv *p = m->priv;
    if (!p || !p->wc)
        return;
    if (!all) {
        wc_trim(m, m->wf_budget);
        return;
    }
    for (int i = 0; i < m->nsites; i++) {
        free(p->wc[i]);
        p->wc[i] = NULL;
    }
    p->wc_bytes = 0;
}

const float *qs_lm_site_w(struct qs_lm *m, int s, qs_err *e)
{
    struct qs_lm_site *st = &m->sites[s];
    if (st->w)
        return st->w;
    struct qs_lm_priv *p = m->priv;
    if (!p->wc) {
        p->wc = qs_calloc((size_t)m->nsites, sizeof *p->wc);
        p->wc_tick = qs_calloc((size_t)m->nsites, sizeof *p->wc_tick);
        if (!p->wc || !p->wc_tick) {
            free(p->wc);
            free(p->wc_tick);
            p->wc = NULL;
            p->wc_tick = NULL;
            qs_errf(e, "out of memory");
            return NULL;
        }
    }
    p->wc_tick[s] = ++p->wc_now;
    if (p->wc[s]) {
        p->wc_hits++;
        return p->wc[s];
    }
    const size_t nw = (size_t)st->out * st->in;
    float *w = qs_alloc(nw, sizeof(float), "a site's weight widened to F32", e);
    if (!w || qs_lm_site_rows(m, s, 0, st->out, w, e) < 0) {
        free(w);
        qs_err_prefix(e, st->name);
        return NULL;
    }
    p->wc[s] = w;
    p->wc_bytes += nw * sizeof(float);
    p->wc_widens++;
    wc_trim(m, m->wf_budget);
    return w;
}

int qs_lm_materialize(struct qs_lm *m, qs_err *e)
{
    struct qs_lm_priv *p = m->priv;
    if (p && !p->wte) { /* the embedding, and a tied head with it: one F32 copy for both */
        float *own;
        if (!qs_lm_embed_f32(m, &own, e))
            return qs_err_prefix(e, "the token embedding");
        p->wte = own;
        p->wte16 = NULL;
        if (m->tied) {
            struct qs_lm_site *h = &m->sites[m->nsites - 1];
            if (p->wc && p->wc[m->nsites - 1]) {
                p->wc_bytes -= (size_t)h->out * h->in * sizeof(float);
                free(p->wc[m->nsites - 1]);
                p->wc[m->nsites - 1] = NULL;
            }
            h->w = p->wte;
            h->w16 = NULL;
        }
    }
    for (int s = 0; s < m->nsites; s++) {
        struct qs_lm_site *st = &m->sites[s];
        if (st->w)
            continue;
        float *w = p->wc ? p->wc[s] : NULL;
        if (w) {
            p->wc[s] = NULL;
            p->wc_bytes -= (size_t)st->out * st->in * sizeof(float);
        } else if (!(w = qs_alloc((size_t)st->out * st->in, sizeof(float),
                                  "a site's weight widened to F32", e)) ||
                   qs_lm_site_rows(m, s, 0, st->out, w, e) < 0) {
            free(w);
            return qs_err_prefix(e, st->name);
        }
        st->w = w;
        st->w16 = NULL;
    }
    qs_lm_site_w_trim(m, 1);
    if (p && p->f) { /* nothing reads the file any more */
        qs_st_close(p->f);
        p->f = NULL;
    }
    return 0;
}

void qs_lm_wf_info(const struct qs_lm *m, struct qs_lm_wf_info *w)
{
    memset(w, 0, sizeof *w);
    const struct qs_lm_priv *p = m->priv;
    for (int s = 0; s < m->nsites; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        size_t nw = (size_t)st->out * st->in;
        if (st->w) {
            if (!(m->tied && s == m->nsites - 1))
                w->f32_bytes += nw * sizeof(float);
        } else {
            w->lazy_bytes += nw * 2;
            w->nlazy++;
        }
        if (p && p->wc && p->wc[s]) {
            w->cached_bytes += nw * sizeof(float);
            w->ncached++;
        }
    }
    if (p) {
        w->widens = p->wc_widens;
        w->hits = p->wc_hits;
    }
}

/* ---- forward ----------------------------------------------------------------------------- */

/* Runs site s on x: (n, in) into y: (n, out) through the hooks; xa: scratch of n * in. y NULL:
 * only the input hook (the head of a pass that wants no logits). */
static int site_apply(const struct qs_lm *m, int s, const struct qs_hooks *h, const float *x, int n,
                      float *y, float *xa, qs_err *e)
{
    const struct qs_lm_site *st = &m->sites[s];
    const float *w = st->w;
    if (h && h->input)
        h->input(h->u, s, x, n, st->in);
    if (!y)
        return 0;
    if (h && h->linear)
        return h->linear(h->u, s, x, n, y, e);
    if (h)
        w = qs_lm_site_hooked(st, s, h, &x, n, xa, w);
    if (w && w != st->w)
        qs_linear(x, n, st->in, w, st->b, st->out, y);       /* a hook's weight */
    else if (qs_lm_site_linear(m, s, x, n, st->b, y, e) < 0) /* the site's own, however stored */
        return -1;
    if (h && h->post)
        h->post(h->u, s, y, n, st->out);
    return 0;
}

/* 1 (and e) when the hooks' cancel flag is set: checked before each block */
static int block_cancelled(const struct qs_hooks *h, qs_err *e)
{
    if (h && h->cancel && *h->cancel) {
        qs_errf(e, "cancelled");
        return 1;
    }
    return 0;
}

/* y: (T, d) = LayerNorm (b != NULL) or RMSNorm (b == NULL) of x: (T, d), row by row, the
 * statistics in double; mu, rs (each (T) or NULL): the mean (0 for RMSNorm) and
 * 1 / sqrt(var + eps) of each row, which the backward (lm_grad.c) keeps. */
void qs_lm_norm_rows(const float *x, int T, int d, const float *w, const float *b, double eps,
                     float *y, float *mu, float *rs)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        double m = 0, v = 0;
        if (b) {
            for (int i = 0; i < d; i++)
                m += xr[i];
            m /= d;
        }
        for (int i = 0; i < d; i++)
            v += (xr[i] - m) * (xr[i] - m);
        double r = 1.0 / sqrt(v / d + eps);
        for (int i = 0; i < d; i++)
            yr[i] = (float)((xr[i] - m) * r) * w[i] + (b ? b[i] : 0.0f);
        if (mu)
            mu[t] = (float)m;
        if (rs)
            rs[t] = (float)r;
    }
}

static void norm(const float *x, int T, int d, const float *w, const float *b, double eps, float *y)
{
    qs_lm_norm_rows(x, T, d, w, b, eps, y, NULL, NULL);
}

/* ---- kernels: a parallel loop, the causal attention ---------------------------------------- */

struct par_job {
    void (*fn)(void *, int, int);
    void *ctx;
    int i0, i1;
};

static void *par_main(void *a)
{
    struct par_job *j = a;
    j->fn(j->ctx, j->i0, j->i1);
    return NULL;
}

void qs_lm_parallel(int n, int min_per_thread, void (*fn)(void *ctx, int i0, int i1), void *ctx)
{
    enum { MAXT = 16 };
    int nt = openblas_get_num_threads();
    if (min_per_thread < 1)
        min_per_thread = 1;
    if (nt > n / min_per_thread)
        nt = n / min_per_thread;
    nt = nt > MAXT ? MAXT : nt < 1 ? 1 : nt;
    if (nt == 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_t th[MAXT];
    struct par_job jb[MAXT];
    int made[MAXT] = {0};
    for (int t = 1; t < nt; t++) {
        jb[t] = (struct par_job){fn, ctx, (int)((long)n * t / nt), (int)((long)n * (t + 1) / nt)};
        made[t] = pthread_create(&th[t], NULL, par_main, &jb[t]) == 0;
        if (!made[t]) /* no thread: the range runs here */
            fn(ctx, jb[t].i0, jb[t].i1);
    }
    fn(ctx, 0, (int)((long)n / nt));
    for (int t = 1; t < nt; t++)
        if (made[t])
            pthread_join(th[t], NULL);
}

size_t qs_lm_attention_scratch(int T, int H, int Hk, int hd)
{
    size_t g = (size_t)(H / Hk), B = T < QS_LM_ATT_BLOCK ? (size_t)T : QS_LM_ATT_BLOCK;
    return g * B * (size_t)T + (g > 1 ? 2 * g * B * (size_t)hd : 0);
}

/* Softmax in place over r[lo..hi], zeros over the rest of r[0..n). */
static void softmax_row(float *r, int n, int lo, int hi)
{
    float m[8];
    for (int l = 0; l < 8; l++)
        m[l] = r[lo];
    int j = lo;
    for (; j + 8 <= hi + 1; j += 8)
        for (int l = 0; l < 8; l++)
            m[l] = r[j + l] > m[l] ? r[j + l] : m[l];
    float mx = m[0];
    for (int l = 1; l < 8; l++)
        mx = m[l] > mx ? m[l] : mx;
    for (; j <= hi; j++)
        mx = r[j] > mx ? r[j] : mx;
    for (j = lo; j <= hi; j++)
        r[j] = qs_lm_expf(r[j] - mx);
    double a[4] = {0, 0, 0, 0};
    for (j = lo; j + 4 <= hi + 1; j += 4)
        for (int l = 0; l < 4; l++)
            a[l] += r[j + l];
    for (; j <= hi; j++)
        a[0] += r[j];
    float inv = (float)(1.0 / ((a[0] + a[1]) + (a[2] + a[3])));
    for (j = lo; j <= hi; j++)
        r[j] *= inv;
    if (lo > 0)
        memset(r, 0, (size_t)lo * sizeof(float));
    if (hi + 1 < n)
        memset(r + hi + 1, 0, (size_t)(n - hi - 1) * sizeof(float));
}

/* Per KV head and block of QS_LM_ATT_BLOCK query rows: scores of the block's rows (of all the
 * KV head's query heads, packed into one matrix under GQA) against the keys from the block's
 * window start to its last row as one sgemm, the row softmaxes (keys past a row's position or
 * before its window zeroed), then P V as one sgemm. Only the diagonal blocks compute masked
 * entries. */
void qs_lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                     int T, int H, int Hk, int hd, int window, float *o, float *s)
{
    float scale = (float)(1.0 / sqrt((double)hd));
    int g = H / Hk, B = T < QS_LM_ATT_BLOCK ? T : QS_LM_ATT_BLOCK, ldo = H * hd;
    float *qp = s + (size_t)g * B * T, *op = qp + (size_t)g * B * hd;
    for (int kh = 0; kh < Hk; kh++)
        for (int i0 = 0; i0 < T; i0 += B) {
            int nb = T - i0 < B ? T - i0 : B, i1 = i0 + nb;
            int j0 = window > 0 && i0 - window + 1 > 0 ? i0 - window + 1 : 0, nk = i1 - j0;
            const float *kb = k + (size_t)j0 * ldk + (size_t)kh * hd;
            const float *vb = v + (size_t)j0 * ldv + (size_t)kh * hd;
            const float *qb = q + (size_t)i0 * ldq + (size_t)kh * hd;
            float *ob = o + (size_t)i0 * ldo + (size_t)kh * hd;
            int lq = ldq, lo = ldo, M = g * nb;
            if (g > 1) { /* the g query heads of KV head kh, stacked: (g nb, hd) */
                for (int h = 0; h < g; h++)
                    for (int r = 0; r < nb; r++)
                        memcpy(qp + ((size_t)h * nb + r) * hd,
                               q + (size_t)(i0 + r) * ldq + (size_t)(kh * g + h) * hd,
                               (size_t)hd * sizeof(float));
                qb = qp;
                lq = hd;
                ob = op;
                lo = hd;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nk, hd, scale, qb, lq, kb, ldk,
                        0.0f, s, nk);
            for (int rr = 0; rr < M; rr++) {
                int i = i0 + rr % nb;
                int a = window > 0 && i - window + 1 > j0 ? i - window + 1 - j0 : 0;
                softmax_row(s + (size_t)rr * nk, nk, a, i - j0);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, hd, nk, 1.0f, s, nk, vb, ldv,
                        0.0f, ob, lo);
            if (g > 1)
                for (int h = 0; h < g; h++)
                    for (int r = 0; r < nb; r++)
                        memcpy(o + (size_t)(i0 + r) * ldo + (size_t)(kh * g + h) * hd,
                               op + ((size_t)h * nb + r) * hd, (size_t)hd * sizeof(float));
        }
}

/* Rotary embedding in place on x: (T, nh hd) (HF rotate_half: pairs (j, j + hd/2)); cs: (T, hd)
 * with cos in [0, hd/2) and sin in [hd/2, hd) of each row. */
static void rope(float *x, int T, int nh, int hd, const float *cs)
{
    int h2 = hd / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            float *r = x + (size_t)t * nh * hd + (size_t)h * hd;
            const float *c = cs + (size_t)t * hd, *sn = c + h2;
            for (int j = 0; j < h2; j++) {
                float a = r[j], b = r[j + h2];
                r[j] = a * c[j] - b * sn[j];
                r[j + h2] = b * c[j] + a * sn[j];
            }
        }
}

/* HF gelu_new (tanh approximation); 1 + tanh(u) = 2 - 2 / (e^{2u} + 1), through the
 * vectorizable qs_lm_expf (glibc's tanhf and expf are scalar calls, and this is a third of a
 * tiny model's forward). */
static inline float gelu_new(float x)
{
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x * (1.0f - 1.0f / (qs_lm_expf(2.0f * u) + 1.0f));
}

/* The MLP's elementwise step over (T, ff), rows split across threads: GELU in place on a, or
 * SwiGLU a = silu(a) * b. */
enum ew_op { EW_GELU, EW_SWIGLU };
struct ew_job {
    enum ew_op op;
    float *a;
    const float *b;
    int ff;
};

static void ew_rows(void *c, int t0, int t1)
{
    struct ew_job *j = c;
    size_t i0 = (size_t)t0 * j->ff, i1 = (size_t)t1 * j->ff;
    float *a = j->a;
    if (j->op == EW_GELU)
        for (size_t i = i0; i < i1; i++)
            a[i] = gelu_new(a[i]);
    else
        for (size_t i = i0; i < i1; i++) {
            float g = a[i];
            a[i] = g / (1.0f + qs_lm_expf(-g)) * j->b[i];
        }
}

static void ew_run(enum ew_op op, float *a, const float *b, int T, int ff)
{
    struct ew_job j = {op, a, b, ff};
    qs_lm_parallel(T, (1 << 16) / ff + 1, ew_rows, &j);
}

int qs_lm_site_block(const struct qs_lm *m, int site)
{
    if (site >= m->nsites - 1)
        return m->n_layer;
    return site / (m->family == QS_LM_GPT2 ? 4 : 7);
}

int qs_lm_block_first_site(const struct qs_lm *m, int block)
{
    if (block >= m->n_layer)
        return m->nsites - 1;
    return block * (m->family == QS_LM_GPT2 ? 4 : 7);
}

/* A forward's buffers for up to T tokens: x, a, o: (T, d); big: (T, max(3d, ff)); up: (T, ff);
 * xa: (T, max(d, ff)); s: attention scratch; k, v: (T, kv); cs: (T, hd), the rotary table (LLaMA),
 * filled once (a row depends on its position only). */
struct qs_lm_scratch {
    int T;
    float *buf, *x, *a, *o, *big, *up, *xa, *s, *k, *v, *cs;
};

struct qs_lm_scratch *qs_lm_scratch_new(const struct qs_lm *m, int T, qs_err *e)
{
    if (T < 1 || T > m->n_pos) {
        qs_errf(e, "%s: sequence of %d tokens (the model takes 1 to %d)", m->path, T, m->n_pos);
        return NULL;
    }
    int d = m->d_model, ff = m->d_ff, H = m->n_head, Hk = m->n_kv_head, hd = d / H;
    int kv = Hk * hd, wmax = ff > 3 * d ? ff : 3 * d;
    size_t Td = (size_t)T * d;
    size_t ns = qs_lm_attention_scratch(T, H, Hk, hd);
    size_t need = 3 * Td + (size_t)T * wmax + 2 * (size_t)T * ff + (size_t)T * (ff > d ? ff : d) +
                  ns + 2 * (size_t)T * kv + (size_t)T * hd;
    char what[64];
    snprintf(what, sizeof what, "a forward of %d tokens", T);
    if (qs_mem_check(need * sizeof(float), what, e) < 0) { /* T*block scores: ctx is from a file */
        qs_err_prefix(e, m->path);
        return NULL;
    }
    struct qs_lm_scratch *c = calloc(1, sizeof *c);
    float *buf = c ? malloc(need * sizeof(float)) : NULL;
    if (!buf) {
        free(c);
        qs_errf(e, "%s: out of memory for a forward of %d tokens", m->path, T);
        return NULL;
    }
    c->T = T;
    c->buf = c->x = buf;
    c->a = c->x + Td;
    c->o = c->a + Td;
    c->big = c->o + Td;
    c->up = c->big + (size_t)T * wmax;
    c->xa = c->up + (size_t)T * ff;
    c->s = c->xa + (size_t)T * (ff > d ? ff : d);
    c->k = c->s + ns;
    c->v = c->k + (size_t)T * kv;
    c->cs = c->v + (size_t)T * kv;
    if (m->family == QS_LM_LLAMA)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < hd / 2; j++) {
                double ang = t * pow(m->rope_theta, -2.0 * j / hd);
                c->cs[(size_t)t * hd + j] = (float)cos(ang);
                c->cs[(size_t)t * hd + hd / 2 + j] = (float)sin(ang);
            }
    return c;
}

void qs_lm_scratch_free(struct qs_lm_scratch *c)
{
    if (!c)
        return;
    free(c->buf);
    free(c);
}

static int check_tokens(const struct qs_lm *m, const uint32_t *tok, int T, qs_err *e)
{
    if (T < 1 || T > m->n_pos)
        return qs_errf(e, "%s: sequence of %d tokens (the model takes 1 to %d)", m->path, T,
                       m->n_pos);
    for (int t = 0; t < T; t++)
        if (tok[t] >= (uint32_t)m->vocab)
            return qs_errf(e, "%s: token %u at position %d is outside the vocabulary (%d)", m->path,
                           tok[t], t, m->vocab);
    return 0;
}

/* x: (T, d) = the token embeddings (GPT-2: plus the positions'). */
static void embed(const struct qs_lm *m, const uint32_t *tok, int T, float *x)
{
    const struct qs_lm_priv *p = m->priv;
    int d = m->d_model;
    for (int t = 0; t < T; t++) {
        embed_row(p, tok[t], d, x + (size_t)t * d);
        if (m->family == QS_LM_GPT2)
            for (int i = 0; i < d; i++)
                x[(size_t)t * d + i] += p->wpe[(size_t)t * d + i];
    }
}

/* Block l (l = n_layer: the final norm and the head into logits) on the residual stream x: (T, d)
 * in place, with c's buffers. */
static int run_block(const struct qs_lm *m, int T, const struct qs_hooks *h, int l, float *x,
                     struct qs_lm_scratch *c, float *logits, qs_err *e)
{
    const struct qs_lm_priv *p = m->priv;
    int d = m->d_model, ff = m->d_ff, H = m->n_head, Hk = m->n_kv_head, hd = d / H;
    int kv = Hk * hd;
    size_t Td = (size_t)T * d;
    float *a = c->a, *o = c->o, *big = c->big, *up = c->up, *xa = c->xa, *s = c->s, *k = c->k,
          *v = c->v, *cs = c->cs;
    (void)ff;
    int rc = 0;
#define SITE(s_, x_, y_)                                                                           \
    if ((rc = site_apply(m, (s_), h, (x_), T, (y_), xa, e)) < 0)                                   \
        return rc;
    if (l == m->n_layer) {
        norm(x, T, d, p->nfw, m->family == QS_LM_GPT2 ? p->nfb : NULL, m->eps, a);
        SITE(m->nsites - 1, a, logits)
        return 0;
    }
    const struct lm_layer *L = &p->layer[l];
    if (m->family == QS_LM_GPT2) {
        int s0 = 4 * l;
        norm(x, T, d, L->n1w, L->n1b, m->eps, a);
        SITE(s0, a, big) /* big: (T, 3d) = q | k | v */
        qs_lm_attention(big, 3 * d, big + d, 3 * d, big + 2 * d, 3 * d, T, H, H, hd, 0, o, s);
        SITE(s0 + 1, o, a)
        for (size_t i = 0; i < Td; i++)
            x[i] += a[i];
        norm(x, T, d, L->n2w, L->n2b, m->eps, a);
        SITE(s0 + 2, a, big)
        ew_run(EW_GELU, big, NULL, T, ff);
        SITE(s0 + 3, big, a)
        for (size_t i = 0; i < Td; i++)
            x[i] += a[i];
    } else {
        int s0 = 7 * l;
        norm(x, T, d, L->n1w, NULL, m->eps, a);
        SITE(s0, a, big) /* q: (T, d) */
        SITE(s0 + 1, a, k)
        SITE(s0 + 2, a, v)
        rope(big, T, H, hd, cs);
        rope(k, T, Hk, hd, cs);
        qs_lm_attention(big, d, k, kv, v, kv, T, H, Hk, hd, m->window, o, s);
        SITE(s0 + 3, o, a)
        for (size_t i = 0; i < Td; i++)
            x[i] += a[i];
        norm(x, T, d, L->n2w, NULL, m->eps, a);
        SITE(s0 + 4, a, big)
        SITE(s0 + 5, a, up)
        ew_run(EW_SWIGLU, big, up, T, ff);
        SITE(s0 + 6, big, a)
        for (size_t i = 0; i < Td; i++)
            x[i] += a[i];
    }
#undef SITE
    return 0;
}

int qs_lm_forward(const struct qs_lm *m, const uint32_t *tok, int T, const struct qs_hooks *h,
                  float *logits, qs_err *e)
{
    return qs_lm_forward_resume(m, tok, T, h, 0, NULL, logits, e);
}

int qs_lm_forward_resume(const struct qs_lm *m, const uint32_t *tok, int T,
                         const struct qs_hooks *h, int from, float *resid, float *logits, qs_err *e)
{
    if (from < 0 || from > m->n_layer || (from > 0 && !resid))
        return qs_errf(e, "%s: cannot resume at block %d", m->path, from);
    if (check_tokens(m, tok, T, e) < 0)
        return -1;
    struct qs_lm_scratch *c = qs_lm_scratch_new(m, T, e);
    if (!c)
        return -1;
    size_t Td = (size_t)T * m->d_model;
    float *x = c->x;
    if (from > 0)
        memcpy(x, resid + (size_t)from * Td, Td * sizeof(float));
    else
        embed(m, tok, T, x);
    int rc = 0;
    for (int l = from; l <= m->n_layer && rc == 0; l++) {
        if (resid)
            memcpy(resid + (size_t)l * Td, x, Td * sizeof(float));
        rc = block_cancelled(h, e) ? -1 : run_block(m, T, h, l, x, c, logits, e);
    }
    qs_lm_scratch_free(c);
    return rc;
}

int qs_lm_forward_blocks(const struct qs_lm *m, const uint32_t *tok, int T,
                         const struct qs_hooks *h, int from, int to, float *x,
                         struct qs_lm_scratch *c, float *logits, qs_err *e)
{
    if (from < 0 || to < from || to > m->n_layer + 1)
        return qs_errf(e, "%s: cannot run blocks %d to %d", m->path, from, to);
    if (check_tokens(m, tok, T, e) < 0)
        return -1;
    if (!c || c->T < T)
        return qs_errf(e, "%s: a forward of %d tokens needs a scratch of as many", m->path, T);
    if (from == 0)
        embed(m, tok, T, x);
    for (int l = from; l < to; l++)
        if (block_cancelled(h, e) || run_block(m, T, h, l, x, c, logits, e) < 0)
            return -1;
    return 0;
}

/* ---- evaluation -------------------------------------------------------------------------- */

/* Chunk of a logits row: its maximum is found first (in L1), so every exponent of the one pass
 * is of a value <= 0 and the running sums are rescaled at most once per chunk. */
#define SCORE_CHUNK 2048

static float chunk_max(const float *r, int n)
{
    float m[8];
    for (int l = 0; l < 8; l++)
        m[l] = -INFINITY;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            m[l] = r[j + l] > m[l] ? r[j + l] : m[l];
    for (; j < n; j++)
        m[0] = r[j] > m[0] ? r[j] : m[0];
    float mx = m[0];
    for (int l = 1; l < 8; l++)
        mx = m[l] > mx ? m[l] : mx;
    return mx;
}

/* The first index of a row holding its maximum mx, searching from c0 (the chunk where mx was
 * first seen): the argmax a scan with ">" finds. */
static int first_of(const float *r, int V, int c0, float mx)
{
    for (int j = c0; j < V; j++)
        if (r[j] == mx)
            return j;
    return 0;
}

void qs_lm_score_row(const float *rf, const float *rq, int V, int y, struct qs_lm_rowscore *o)
{
    /* per row: mf + log(sf) = log-sum-exp of rf, t / sf = sum_i p_f,i (rf_i - rq_i), and
     * KL = t / sf - lse_f + lse_q; the sums in double over 4 lanes */
    double mf = -INFINITY, mq = -INFINITY, sf = 0, sq = 0, t = 0;
    int cf = 0, cq = 0;
    for (int c0 = 0; c0 < V; c0 += SCORE_CHUNK) {
        int n = V - c0 < SCORE_CHUNK ? V - c0 : SCORE_CHUNK;
        const float *a = rf + c0;
        float xf = chunk_max(a, n);
        if (xf > mf) {
            double f = exp(mf - xf); /* 0 on the first chunk */
            sf *= f;
            t *= f;
            mf = xf;
            cf = c0;
        }
        double s4[4] = {0, 0, 0, 0}, t4[4] = {0, 0, 0, 0}, q4[4] = {0, 0, 0, 0};
        int j = 0;
        if (!rq) {
            for (; j + 4 <= n; j += 4)
                for (int l = 0; l < 4; l++)
                    s4[l] += qs_lm_expneg((double)a[j + l] - mf);
            for (; j < n; j++)
                s4[0] += qs_lm_expneg((double)a[j] - mf);
        } else {
            const float *b = rq + c0;
            float xq = chunk_max(b, n);
            if (xq > mq) {
                sq *= exp(mq - xq);
                mq = xq;
                cq = c0;
            }
            for (; j + 4 <= n; j += 4)
                for (int l = 0; l < 4; l++) {
                    double fa = a[j + l], fb = b[j + l], ef = qs_lm_expneg(fa - mf);
                    s4[l] += ef;
                    t4[l] += ef * (fa - fb);
                    q4[l] += qs_lm_expneg(fb - mq);
                }
            for (; j < n; j++) {
                double fa = a[j], fb = b[j], ef = qs_lm_expneg(fa - mf);
                s4[0] += ef;
                t4[0] += ef * (fa - fb);
                q4[0] += qs_lm_expneg(fb - mq);
            }
        }
        sf += (s4[0] + s4[1]) + (s4[2] + s4[3]);
        t += (t4[0] + t4[1]) + (t4[2] + t4[3]);
        sq += (q4[0] + q4[1]) + (q4[2] + q4[3]);
    }
    double lf = mf + log(sf);
    o->nll_f = lf - rf[y];
    o->nll_q = o->kl = 0;
    o->agree = 0;
    if (rq) {
        double lq = mq + log(sq);
        o->nll_q = lq - rq[y];
        o->kl = t / sf - lf + lq;
        o->agree = first_of(rf, V, cf, (float)mf) == first_of(rq, V, cq, (float)mq);
    }
}

struct score_job {
    const float *lf, *lq;
    const uint32_t *tok;
    int V;
    struct qs_lm_rowscore *r;
};

static void score_rows(void *c, int t0, int t1)
{
    struct score_job *j = c;
    for (int t = t0; t < t1; t++)
        qs_lm_score_row(j->lf + (size_t)t * j->V, j->lq ? j->lq + (size_t)t * j->V : NULL, j->V,
                        (int)j->tok[t + 1], &j->r[t]);
}

/* Scores rows 0..T-1 of lf (and lq) against tok[1..T] into r, rows across threads. */
static void score_window(const float *lf, const float *lq, const uint32_t *tok, int T, int V,
                         struct qs_lm_rowscore *r)
{
    struct score_job j = {lf, lq, tok, V, r};
    qs_lm_parallel(T, 4, score_rows, &j);
}

int qs_lm_score_window(const struct qs_lm *m, const uint32_t *tok, int T, const float *lf,
                       const float *lq, struct qs_lm_score *acc, qs_err *e)
{
    struct qs_lm_rowscore *r = malloc((size_t)T * sizeof *r);
    if (!r)
        return qs_errf(e, "%s: out of memory", m->path);
    score_window(lf, lq, tok, T, m->vocab, r);
    for (int t = 0; t < T; t++) { /* in row order, so the sums do not depend on the threads */
        acc->sf += r[t].nll_f;
        acc->n++;
        if (!lq) {
            if (acc->tok_loss)
                acc->tok_loss[t] = r[t].nll_f;
            continue;
        }
        acc->sq += r[t].nll_q;
        if (acc->tok_loss)
            acc->tok_loss[t] = r[t].nll_q;
        acc->skl += r[t].kl;
        acc->agree += r[t].agree;
    }
    free(r);
    return 0;
}

int qs_lm_evaluate(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                   const struct qs_hooks *hf, const struct qs_hooks *hq, struct qs_lm_eval *out,
                   qs_err *e)
{
    return qs_lm_evaluate_progress(m, tok, n, max_windows, hf, hq, out, NULL, e);
}

int qs_lm_evaluate_progress(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                            const struct qs_hooks *hf, const struct qs_hooks *hq,
                            struct qs_lm_eval *out, const struct qs_lm_progress *pr, qs_err *e)
{
    memset(out, 0, sizeof *out);
    int ctx = m->ctx, V = m->vocab;
    if (n < (size_t)ctx + 1)
        return qs_errf(e, "%s: %zu tokens are too few for one window of %d (need %d)", m->path, n,
                       ctx, ctx + 1);
    size_t nw = (n - 1) / (size_t)ctx;
    if (max_windows > 0 && (size_t)max_windows < nw)
        nw = (size_t)max_windows;
    for (size_t i = 0; i < nw * ctx + 1; i++)
        if (tok[i] >= (uint32_t)V)
            return qs_errf(e, "%s: token %u at %zu is outside the vocabulary (%d)", m->path, tok[i],
                           i, V);
    float *lf = malloc((size_t)ctx * V * sizeof(float));
    float *lq = hq ? malloc((size_t)ctx * V * sizeof(float)) : NULL;
    if (!lf || (hq && !lq)) {
        free(lf);
        free(lq);
        return qs_errf(e, "%s: out of memory", m->path);
    }
    struct qs_lm_score acc = {0};
    int rc = 0;
    /* the hooks with the cancel flag, so a cancel stops within a window (hooks with only the
     * flag behave as none) */
    struct qs_hooks cf = {0}, cq = {0};
    if (hf)
        cf = *hf;
    if (hq)
        cq = *hq;
    if (pr && pr->cancel)
        cf.cancel = cq.cancel = pr->cancel;
    for (size_t w = 0; w < nw && rc == 0; w++) {
        const uint32_t *x = tok + w * ctx;
        if ((rc = qs_lm_forward(m, x, ctx, &cf, lf, e)) < 0 ||
            (hq && (rc = qs_lm_forward(m, x, ctx, &cq, lq, e)) < 0))
            break;
        rc = qs_lm_score_window(m, x, ctx, lf, hq ? lq : NULL, &acc, e);
        if (pr && pr->fn) {
            char what[96];
            snprintf(what, sizeof what, "%s: window %zu of %zu", pr->what ? pr->what : "eval",
                     w + 1, nw);
            pr->fn(pr->ctx, what, (double)(w + 1) / (double)nw);
        }
        if (rc == 0 && pr && pr->cancel && *pr->cancel)
            rc = qs_errf(e, "cancelled");
    }
    free(lf);
    free(lq);
    if (rc < 0)
        return -1;
    qs_lm_eval_finish(&acc, hq != NULL, out);
    return 0;
}

void qs_lm_eval_finish(const struct qs_lm_score *acc, int have_q, struct qs_lm_eval *out)
{
    long N = acc->n;
    out->ntok = N;
    out->loss = acc->sf / N;
    out->ppl = exp(out->loss);
    if (have_q) {
        out->loss_q = acc->sq / N;
        out->ppl_q = exp(out->loss_q);
        out->kl = acc->skl / N;
        out->top1_agree = (double)acc->agree / N;
    }
}

int qs_lm_token_losses(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                       const struct qs_hooks *h, double *loss, long *ntok, qs_err *e)
{
    int ctx = m->ctx, V = m->vocab;
    if (n < (size_t)ctx + 1)
        return qs_errf(e, "%s: %zu tokens are too few for one window of %d (need %d)", m->path, n,
                       ctx, ctx + 1);
    size_t nw = (n - 1) / (size_t)ctx;
    if (max_windows > 0 && (size_t)max_windows < nw)
        nw = (size_t)max_windows;
    *ntok = (long)nw * ctx;
    if (!loss)
        return 0;
    for (size_t i = 0; i < nw * ctx + 1; i++)
        if (tok[i] >= (uint32_t)V)
            return qs_errf(e, "%s: token %u at %zu is outside the vocabulary (%d)", m->path, tok[i],
                           i, V);
    float *lg = malloc((size_t)ctx * V * sizeof(float));
    struct qs_lm_rowscore *r = malloc((size_t)ctx * sizeof *r);
    int rc = (lg && r) ? 0 : qs_errf(e, "%s: out of memory", m->path);
    for (size_t w = 0; w < nw && rc == 0; w++) {
        const uint32_t *x = tok + w * ctx;
        if ((rc = qs_lm_forward(m, x, ctx, h, lg, e)) < 0)
            break;
        score_window(lg, NULL, x, ctx, V, r);
        for (int t = 0; t < ctx; t++)
            loss[w * ctx + t] = r[t].nll_f;
    }
    free(lg);
    free(r);
    return rc;
}
