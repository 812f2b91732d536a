/* lm_gguf.c - a LLaMA from a llama.cpp GGUF file (qs_lm_load_gguf in lm.h).
 *
 * The llama.* keys become a Hugging Face config.json text, checked by the same parser as a
 * folder's config (so every bound of qs_lm_load applies, and qs_lm_save can write the model
 * back as a folder); the ggml tensors are dequantized into the sites of that skeleton. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/ggml.h"
#include "qscope/gguf.h"
#include "qscope/lm.h"
#include "qscope/lm_gguf.h"

struct gctx {
    const struct qs_gguf_file *g;
    const char *file; /* cleaned path */
    unsigned char *used;
    qs_err *e;
};

/* Required integer key (> 0 and within int). */
static int need_int(const struct gctx *c, const char *key, int *out)
{
    int64_t v;
    int rc = qs_gguf_get_int(c->g, key, &v, c->e);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return qs_errf(c->e, "%s: key '%s' is missing (needed for a llama model)", c->file, key);
    if (v < 1 || v > (1 << 30))
        return qs_errf(c->e, "%s: key '%s' is %lld (must be 1..2^30)", c->file, key, (long long)v);
    *out = (int)v;
    return 0;
}

/* Tensor NAME with dims ne0 (fastest) x ne1 (ne1 = 0: 1-D), dequantized to a new F32 array. */
static float *tensor(const struct gctx *c, const char *name, int64_t ne0, int64_t ne1)
{
    const struct qs_gguf_tensor *t = qs_gguf_find(c->g, name);
    if (!t) {
        qs_errf(c->e, "%s: tensor '%s' is missing", c->file, name);
        return NULL;
    }
    c->used[t - qs_gguf_get(c->g, 0)] = 1;
    int nd = ne1 ? 2 : 1;
    if (t->ndim != nd || t->ne[0] != ne0 || (nd == 2 && t->ne[1] != ne1)) {
        char got[96], want[48];
        const int64_t ne[2] = {ne0, ne1};
        qs_errf(c->e, "%s: tensor '%s' has ggml dims [%s] (expected [%s], fastest first)", c->file,
                name, qs_dims_str(t->ne, t->ndim, got, sizeof got),
                qs_dims_str(ne, nd, want, sizeof want));
        return NULL;
    }
    char what[160];
    snprintf(what, sizeof what, "%s: tensor '%s' as F32", c->file, name);
    float *v = qs_alloc((size_t)t->numel, sizeof(float), what, c->e);
    if (!v)
        return NULL;
    if (qs_gguf_to_f32(t, v, c->e) < 0) {
        qs_err_prefix(c->e, c->file);
        free(v);
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i])) {
            qs_errf(c->e, "%s: tensor '%s' has a NaN/Inf at flat index %lld", c->file, name,
                    (long long)i);
            free(v);
            return NULL;
        }
    return v;
}

/* convert_hf_to_gguf.py reorders the rows of q_proj / k_proj within each head so that ggml's
 * RoPE rotates adjacent pairs: HF row h*hd + i*hd/2 + j is stored at h*hd + 2j + i. This puts
 * them back for qscope's forward, which rotates HF's halves. w: (nh * hd, in). */
static int unpermute(float *w, int nh, int hd, int in, qs_err *e)
{
    size_t rows = (size_t)nh * hd;
    float *t = qs_alloc(rows * (size_t)in, sizeof(float), "RoPE row order", e);
    if (!t)
        return -1;
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < hd / 2; j++)
                memcpy(t + ((size_t)h * hd + (size_t)i * (hd / 2) + j) * in,
                       w + ((size_t)h * hd + 2 * (size_t)j + i) * in, (size_t)in * sizeof(float));
    memcpy(w, t, rows * (size_t)in * sizeof(float));
    free(t);
    return 0;
}

/* The llama.* keys as a Hugging Face config.json text (malloc'd). */
static char *make_config(const struct gctx *c, int *tied)
{
    int d, L, H, ff, ctx, Hk, vocab, rope_dim = 0;
    double eps, theta = 10000.0;
    const char *s;
    if (need_int(c, "llama.embedding_length", &d) < 0 || need_int(c, "llama.block_count", &L) < 0 ||
        need_int(c, "llama.attention.head_count", &H) < 0 ||
        need_int(c, "llama.feed_forward_length", &ff) < 0 ||
        need_int(c, "llama.context_length", &ctx) < 0)
        return NULL;
    int64_t v;
    int rc = qs_gguf_get_int(c->g, "llama.attention.head_count_kv", &v, c->e);
    if (rc < 0)
        return NULL;
    Hk = rc ? (int)(v < 1 || v > H ? 0 : v) : H;
    if (Hk == 0) {
        qs_errf(c->e, "%s: llama.attention.head_count_kv %lld is not in 1..%d", c->file,
                (long long)v, H);
        return NULL;
    }
    if ((rc = qs_gguf_get_float(c->g, "llama.attention.layer_norm_rms_epsilon", &eps, c->e)) <= 0) {
        if (rc == 0)
            qs_errf(c->e, "%s: key 'llama.attention.layer_norm_rms_epsilon' is missing", c->file);
        return NULL;
    }
    if (qs_gguf_get_float(c->g, "llama.rope.freq_base", &theta, c->e) < 0)
        return NULL;
    if ((rc = qs_gguf_get_int(c->g, "llama.rope.dimension_count", &v, c->e)) < 0)
        return NULL;
    rope_dim = rc ? (int)(v > 0 && v < (1 << 20) ? v : -1) : 0;
    if (rope_dim && (H < 1 || rope_dim != d / H)) {
        qs_errf(c->e,
                "%s: llama.rope.dimension_count %lld differs from the head size %d (partial "
                "RoPE is not supported)",
                c->file, (long long)v, H ? d / H : 0);
        return NULL;
    }
    if ((rc = qs_gguf_get_str(c->g, "llama.rope.scaling.type", &s, c->e)) < 0)
        return NULL;
    if (rc && strcmp(s, "none")) {
        char sb[40];
        qs_errf(c->e, "%s: llama.rope.scaling.type '%s' is not supported (only none)", c->file,
                qs_clean_str(s, sb, sizeof sb, 30));
        return NULL;
    }
    const struct qs_gguf_tensor *emb = qs_gguf_find(c->g, "token_embd.weight");
    if (!emb) {
        qs_errf(c->e, "%s: tensor 'token_embd.weight' is missing", c->file);
        return NULL;
    }
    if ((rc = qs_gguf_get_int(c->g, "llama.vocab_size", &v, c->e)) < 0)
        return NULL;
    if (rc == 0) /* the converter does not always write it: the embedding has one row a token */
        v = emb->ndim == 2 ? emb->ne[1] : 0;
    vocab = v > 0 && v < (1 << 30) ? (int)v : 0;
    if (vocab < 1) {
        qs_errf(c->e, "%s: the vocabulary size is not in 1..2^30", c->file);
        return NULL;
    }
    *tied = qs_gguf_find(c->g, "output.weight") == NULL;
    char *cfg = malloc(1024);
    if (!cfg) {
        qs_errf(c->e, "%s: out of memory", c->file);
        return NULL;
    }
    snprintf(cfg, 1024,
             "{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": %d, "
             "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"num_key_value_heads\": %d, \"intermediate_size\": %d, \"hidden_act\": \"silu\", "
             "\"max_position_embeddings\": %d, \"rms_norm_eps\": %.17g, \"rope_theta\": %.17g, "
             "\"tie_word_embeddings\": %s}",
             vocab, d, L, H, Hk, ff, ctx, eps, theta, *tied ? "true" : "false");
    return cfg;
}

static int fill(struct qs_lm *m, const struct gctx *c)
{
    int d = m->d_model, hd = d / m->n_head;
    char k[96];
    float **slot = qs_lm_slot(m, QS_LM_SLOT_EMBED, 0);
    if (!(*slot = tensor(c, "token_embd.weight", d, m->vocab)))
        return -1;
    for (int l = 0; l < m->n_layer; l++) {
        snprintf(k, sizeof k, "blk.%d.attn_norm.weight", l);
        if (!(*qs_lm_slot(m, QS_LM_SLOT_NORM_ATTN, l) = tensor(c, k, d, 0)))
            return -1;
        snprintf(k, sizeof k, "blk.%d.ffn_norm.weight", l);
        if (!(*qs_lm_slot(m, QS_LM_SLOT_NORM_MLP, l) = tensor(c, k, d, 0)))
            return -1;
        static const char *const gname[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                             "ffn_gate", "ffn_up", "ffn_down"};
        for (int i = 0; i < 7; i++) {
            struct qs_lm_site *s = &m->sites[7 * l + i];
            snprintf(k, sizeof k, "blk.%d.%s.weight", l, gname[i]);
            if (!(s->w = tensor(c, k, s->in, s->out)))
                return -1;
        }
        if (unpermute(m->sites[7 * l].w, m->n_head, hd, d, c->e) < 0 ||
            unpermute(m->sites[7 * l + 1].w, m->n_kv_head, hd, d, c->e) < 0)
            return -1;
    }
    if (!(*qs_lm_slot(m, QS_LM_SLOT_NORM_F, 0) = tensor(c, "output_norm.weight", d, 0)))
        return -1;
    struct qs_lm_site *h = &m->sites[m->nsites - 1];
    if (m->tied) {
        h->w = *slot;
        return 0;
    }
    return (h->w = tensor(c, "output.weight", d, m->vocab)) ? 0 : -1;
}

int qs_lm_load_gguf(const char *path, struct qs_lm **out, qs_err *e)
{
    *out = NULL;
    struct qs_gguf_file *g = NULL;
    if (qs_gguf_open(path, &g, e) < 0)
        return -1;
    char pb[256];
    struct gctx c = {g, qs_clean_str(path, pb, sizeof pb, 0), NULL, e};
    const char *arch = NULL;
    int rc = qs_gguf_get_str(g, "general.architecture", &arch, e);
    if (rc == 0)
        rc = qs_errf(e, "%s: key 'general.architecture' is missing", c.file);
    if (rc == 1 && strcmp(arch, "llama")) {
        char ab[40];
        rc = qs_errf(e, "%s: architecture '%s' is not supported (qscope reads llama GGUF files)",
                     c.file, qs_clean_str(arch, ab, sizeof ab, 30));
    }
    int tied = 0;
    char *cfg = rc == 1 ? make_config(&c, &tied) : NULL;
    struct qs_lm *m = NULL;
    if (cfg) {
        char label[300];
        snprintf(label, sizeof label, "%s (llama.* keys)", c.file);
        rc = qs_lm_new_from_config(cfg, label, path, &m, e);
    } else {
        rc = -1;
    }
    if (rc == 0) {
        c.used = qs_calloc((size_t)qs_gguf_count(g) + 1, 1);
        if (!c.used)
            rc = qs_errf(e, "%s: out of memory", c.file);
    }
    if (rc == 0)
        rc = fill(m, &c);
    for (int i = 0; rc == 0 && i < qs_gguf_count(g); i++) {
        const char *n = qs_gguf_get(g, i)->name;
        if (!c.used[i]) { /* e.g. rope_freqs (Llama 3 RoPE scaling): not supported */
            char nb[80];
            rc = qs_errf(e,
                         "%s: tensor '%s' is not part of the llama model its keys describe (%d "
                         "blocks)",
                         c.file, qs_clean_str(n, nb, sizeof nb, 0), m->n_layer);
        }
    }
    free(c.used);
    free(cfg);
    qs_gguf_close(g);
    if (rc < 0) {
        qs_lm_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* The converter's RoPE row order (the inverse of unpermute) for rows of rb bytes: HF row
 * h*hd + i*hd/2 + j goes to h*hd + 2j + i. Returns a malloc'd copy. */
static uint8_t *permute_rows(const void *src, int nh, int hd, size_t rb, qs_err *e)
{
    uint8_t *t = qs_alloc((size_t)nh * hd, rb, "RoPE row order", e);
    if (!t)
        return NULL;
    const uint8_t *s = src;
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < hd / 2; j++)
                memcpy(t + ((size_t)h * hd + 2 * (size_t)j + i) * rb,
                       s + ((size_t)h * hd + (size_t)i * (hd / 2) + j) * rb, rb);
    return t;
}

/* Site s's F32 weight: its own, or a copy widened from the file's 16-bit bytes into wide[s]. */
static const float *site_f32(const struct qs_lm *m, int s, float **wide, qs_err *e)
{
    const struct qs_lm_site *st = &m->sites[s];
    if (st->w)
        return st->w;
    if (!(wide[s] = qs_alloc((size_t)st->out * st->in, sizeof(float), "a weight as F32", e)) ||
        qs_lm_site_rows(m, s, 0, st->out, wide[s], e) < 0)
        return NULL;
    return wide[s];
}

int qs_lm_save_gguf(const struct qs_lm *m, const char *path, const uint8_t *const *blocks,
                    const int *types, const float *const *w, qs_err *e)
{
    if (m->family != QS_LM_LLAMA)
        return qs_errf(e, "%s: GGUF export writes llama models", path);
    if (m->bias_mask || m->window)
        return qs_errf(e, "%s: GGUF export writes plain llama models (this %s has %s)", path,
                       m->arch, m->window ? "sliding-window attention" : "linear biases");
    struct qs_lm *mm = (struct qs_lm *)(uintptr_t)m; /* qs_lm_slot only reads here */
    const int S = m->nsites, L = m->n_layer, d = m->d_model, hd = d / m->n_head;
    const int head_own = !m->tied || (blocks && blocks[S - 1]) || (w && w[S - 1]);
    int nt = 1 + L * 9 + 1 + head_own;
    struct qs_gguf_tensor_out *t = qs_calloc((size_t)nt, sizeof *t);
    char(*names)[64] = qs_calloc((size_t)nt, sizeof *names);
    uint8_t **own = qs_calloc((size_t)nt, sizeof *own);
    float **wide = qs_calloc((size_t)S, sizeof *wide); /* F32 copies of 16-bit sites (lm.h) */
    int rc = t && names && own && wide ? 0 : qs_errf(e, "out of memory");
    int k = 0;
#define PUT1(nm, v, n)                                                                             \
    do {                                                                                           \
        snprintf(names[k], sizeof names[k], "%s", nm);                                             \
        t[k] = (struct qs_gguf_tensor_out){.name = names[k],                                       \
                                           .type = QS_GGML_F32,                                    \
                                           .ndim = 1,                                              \
                                           .ne = {n, 1, 1, 1},                                     \
                                           .data = v,                                              \
                                           .nbytes = (size_t)(n) * sizeof(float)};                 \
        k++;                                                                                       \
    } while (0)
    if (rc == 0) {
        float *emb_own = NULL;
        const float *emb = qs_lm_embed_f32(m, &emb_own, e);
        if (!emb)
            rc = -1;
        own[k] = (uint8_t *)emb_own; /* freed with the other copies */
        snprintf(names[k], sizeof names[k], "token_embd.weight");
        t[k] = (struct qs_gguf_tensor_out){.name = names[k],
                                           .type = QS_GGML_F32,
                                           .ndim = 2,
                                           .ne = {d, m->vocab, 1, 1},
                                           .data = emb,
                                           .nbytes = (size_t)d * m->vocab * sizeof(float)};
        k++;
    }
    static const char *const gname[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};
    for (int l = 0; l < L && rc == 0; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        PUT1(nm, *qs_lm_slot(mm, QS_LM_SLOT_NORM_ATTN, l), d);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        PUT1(nm, *qs_lm_slot(mm, QS_LM_SLOT_NORM_MLP, l), d);
        for (int i = 0; i < 7 && rc == 0; i++) {
            int s = 7 * l + i;
            const struct qs_lm_site *st = &m->sites[s];
            int ty = blocks && blocks[s] ? types[s] : QS_GGML_F32;
            const void *data = blocks && blocks[s] ? (const void *)blocks[s]
                               : w && w[s]         ? (const void *)w[s]
                                                   : (const void *)site_f32(m, s, wide, e);
            if (!data) {
                rc = -1;
                break;
            }
            size_t rb;
            if (qs_ggml_row_bytes(ty, st->in, &rb, e) < 0) {
                rc = -1;
                break;
            }
            if (i < 2) { /* attn_q, attn_k: the converter's row order */
                own[k] = permute_rows(data, i == 0 ? m->n_head : m->n_kv_head, hd, rb, e);
                if (!own[k]) {
                    rc = -1;
                    break;
                }
                data = own[k];
            }
            snprintf(names[k], sizeof names[k], "blk.%d.%s.weight", l, gname[i]);
            t[k] = (struct qs_gguf_tensor_out){.name = names[k],
                                               .type = ty,
                                               .ndim = 2,
                                               .ne = {st->in, st->out, 1, 1},
                                               .data = data,
                                               .nbytes = rb * (size_t)st->out};
            k++;
        }
    }
    if (rc == 0) {
        PUT1("output_norm.weight", *qs_lm_slot(mm, QS_LM_SLOT_NORM_F, 0), d);
        if (head_own) {
            const struct qs_lm_site *st = &m->sites[S - 1];
            int ty = blocks && blocks[S - 1] ? types[S - 1] : QS_GGML_F32;
            const void *data = blocks && blocks[S - 1] ? (const void *)blocks[S - 1]
                               : w && w[S - 1]         ? (const void *)w[S - 1]
                                                       : (const void *)site_f32(m, S - 1, wide, e);
            size_t rb;
            if (!data || qs_ggml_row_bytes(ty, st->in, &rb, e) < 0)
                rc = -1;
            else
                t[k++] = (struct qs_gguf_tensor_out){.name = "output.weight",
                                                     .type = ty,
                                                     .ndim = 2,
                                                     .ne = {st->in, st->out, 1, 1},
                                                     .data = data,
                                                     .nbytes = rb * (size_t)st->out};
        }
    }
#undef PUT1
    if (rc == 0) {
        const struct qs_gguf_kv_out kv[] = {
            {.key = "general.architecture", .type = QS_GGUF_STRING, .str = "llama"},
            {.key = "general.name", .type = QS_GGUF_STRING, .str = "qscope export"},
            {.key = "llama.vocab_size", .type = QS_GGUF_U32, .u32 = (uint32_t)m->vocab},
            {.key = "llama.context_length", .type = QS_GGUF_U32, .u32 = (uint32_t)m->n_pos},
            {.key = "llama.embedding_length", .type = QS_GGUF_U32, .u32 = (uint32_t)d},
            {.key = "llama.block_count", .type = QS_GGUF_U32, .u32 = (uint32_t)L},
            {.key = "llama.feed_forward_length", .type = QS_GGUF_U32, .u32 = (uint32_t)m->d_ff},
            {.key = "llama.rope.dimension_count", .type = QS_GGUF_U32, .u32 = (uint32_t)hd},
            {.key = "llama.attention.head_count", .type = QS_GGUF_U32, .u32 = (uint32_t)m->n_head},
            {.key = "llama.attention.head_count_kv",
             .type = QS_GGUF_U32,
             .u32 = (uint32_t)m->n_kv_head},
            {.key = "llama.rope.freq_base", .type = QS_GGUF_F32, .f32 = (float)m->rope_theta},
            {.key = "llama.attention.layer_norm_rms_epsilon",
             .type = QS_GGUF_F32,
             .f32 = (float)m->eps},
        };
        rc = qs_gguf_write(path, kv, (int)(sizeof kv / sizeof kv[0]), t, k, e);
    }
    for (int i = 0; own && i < nt; i++)
        free(own[i]);
    for (int i = 0; wide && i < S; i++)
        free(wide[i]);
    free(wide);
    free(own);
    free(names);
    free(t);
    return rc;
}

/* ---- a quantized GGUF as the quantized path of its float reference (lm_gguf.h) ------------ */

struct qs_lm_gguf_sites {
    struct qs_gguf_file *g;
    int nsites, n_head, n_kv_head, hd;
    const struct qs_gguf_tensor **t; /* per site */
    int *rope_heads;                 /* per site: heads whose rows go back to HF order (0: none) */
};

void qs_format_gguf_own(struct qs_format *f)
{
    memset(f, 0, sizeof *f);
    f->kind = QS_FMT_GGML;
    f->ggml = -1;
    snprintf(f->name, sizeof f->name, "gguf");
}

int qs_format_is_gguf_own(const struct qs_format *f)
{
    return f->kind == QS_FMT_GGML && !strncmp(f->name, "gguf", 4);
}

void qs_lm_gguf_sites_free(struct qs_lm_gguf_sites *p)
{
    if (!p)
        return;
    qs_gguf_close(p->g);
    free(p->t);
    free(p->rope_heads);
    free(p);
}

const char *qs_lm_gguf_sites_path(const struct qs_lm_gguf_sites *p)
{
    return qs_gguf_path(p->g);
}
int qs_lm_gguf_sites_check(const struct qs_lm_gguf_sites *p, qs_err *e)
{
    return qs_gguf_check(p->g, e);
}
int qs_lm_gguf_sites_count(const struct qs_lm_gguf_sites *p)
{
    return p->nsites;
}
int qs_lm_gguf_site_type(const struct qs_lm_gguf_sites *p, int s)
{
    return p->t[s]->type;
}
const char *qs_lm_gguf_site_tensor(const struct qs_lm_gguf_sites *p, int s)
{
    return p->t[s]->name;
}

int qs_lm_gguf_site_format(const struct qs_lm_gguf_sites *p, int s, struct qs_format *f, qs_err *e)
{
    if (s < 0 || s >= p->nsites)
        return qs_errf(e, "gguf: no site %d", s);
    int t = p->t[s]->type;
    const char *n = qs_ggml_type_name(t);
    memset(f, 0, sizeof *f);
    f->kind = QS_FMT_GGML;
    f->ggml = t;
    f->block = qs_ggml_block_size(t);
    f->bits = (int)(8 * qs_ggml_type_size(t) / (size_t)f->block); /* element bits, rounded down */
    int k = snprintf(f->name, sizeof f->name, "gguf:%s", n ? n : "?");
    for (int i = 5; i < k && i < (int)sizeof f->name; i++)
        f->name[i] = (char)(f->name[i] >= 'A' && f->name[i] <= 'Z' ? f->name[i] + 32 : f->name[i]);
    return 0;
}

int qs_lm_gguf_site_packed(const struct qs_lm_gguf_sites *p, int s, struct qs_packed *out,
                           qs_err *e)
{
    memset(out, 0, sizeof *out);
    struct qs_format f;
    if (qs_lm_gguf_site_format(p, s, &f, e) < 0)
        return -1;
    const struct qs_gguf_tensor *t = p->t[s];
    size_t rb;
    if (qs_ggml_row_bytes(t->type, t->ne[0], &rb, e) < 0)
        return -1;
    if (qs_gguf_check(p->g, e) < 0)
        return -1;
    uint8_t *codes;
    if (p->rope_heads[s]) {
        codes = qs_alloc((size_t)t->ne[1], rb, "the GGUF site's blocks", e);
        if (!codes)
            return -1;
        const uint8_t *src = t->data;
        int nh = p->rope_heads[s], hd = p->hd;
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < hd / 2; j++)
                    memcpy(codes + ((size_t)h * hd + (size_t)i * (hd / 2) + j) * rb,
                           src + ((size_t)h * hd + 2 * (size_t)j + i) * rb, rb);
    } else {
        codes = qs_alloc((size_t)t->ne[1], rb, "the GGUF site's blocks", e);
        if (!codes)
            return -1;
        memcpy(codes, t->data, rb * (size_t)t->ne[1]);
    }
    out->fmt = f; /* named by its ggml type ("q4_k"): packed exports record what the blocks are */
    memmove(out->fmt.name, out->fmt.name + 5, strlen(out->fmt.name + 5) + 1);
    qs_qopts_default(&out->opt);
    out->rows = (int)t->ne[1];
    out->cols = (int)t->ne[0];
    out->codes = codes;
    out->code_bytes = rb * (size_t)t->ne[1];
    out->scales = calloc(1, 1); /* as qs_ggml_pack: no separate scales */
    if (!out->scales) {
        qs_packed_free(out);
        return qs_errf(e, "out of memory");
    }
    return 0;
}

/* max |a - dequantized tensor NAME| over n values (the tensor must hold n); -1 and e on failure */
static int max_diff(const struct qs_gguf_file *g, const char *file, const char *name,
                    const float *ref, int64_t n, double *out, qs_err *e)
{
    const struct qs_gguf_tensor *t = qs_gguf_find(g, name);
    if (!t || t->numel != n)
        return qs_errf(e, "%s: tensor '%s' is %s", file, name, t ? "of another size" : "missing");
    float *v = qs_alloc((size_t)n, sizeof(float), "a GGUF tensor as F32", e);
    if (!v)
        return -1;
    if (qs_gguf_to_f32(t, v, e) < 0) {
        free(v);
        return qs_err_prefix(e, file);
    }
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)v[i] - ref[i]);
        if (!(d <= *out)) /* NaN too */
            *out = d;
    }
    free(v);
    return 0;
}

/* The first hyperparameter where the GGUF (g) and the reference (r) differ, into buf; 0 none. */
static int first_difference(const struct qs_lm *g, const struct qs_lm *r, char *buf, size_t n)
{
#define DIFF_INT(field, what)                                                                      \
    if (g->field != r->field) {                                                                    \
        snprintf(buf, n, "%s %d (reference) vs %d (GGUF)", what, (int)r->field, (int)g->field);    \
        return 1;                                                                                  \
    }
    if (r->family != QS_LM_LLAMA) {
        snprintf(buf, n, "architecture %s (reference) vs llama (GGUF)", r->arch);
        return 1;
    }
    if (r->bias_mask) {
        snprintf(buf, n, "linear biases (%s reference) vs none (GGUF)", r->arch);
        return 1;
    }
    if (r->window) {
        snprintf(buf, n, "sliding window %d (reference) vs none (GGUF)", r->window);
        return 1;
    }
    DIFF_INT(vocab, "vocab size")
    DIFF_INT(d_model, "hidden size")
    DIFF_INT(n_layer, "blocks")
    DIFF_INT(n_head, "attention heads")
    DIFF_INT(n_kv_head, "key/value heads")
    DIFF_INT(d_ff, "intermediate size")
    DIFF_INT(ctx, "context length")
#undef DIFF_INT
    if ((float)g->eps != (float)r->eps) {
        snprintf(buf, n, "rms_norm_eps %.9g (reference) vs %.9g (GGUF), as F32", (float)r->eps,
                 (float)g->eps);
        return 1;
    }
    if ((float)g->rope_theta != (float)r->rope_theta) {
        snprintf(buf, n, "rope_theta %.9g (reference) vs %.9g (GGUF), as F32", (float)r->rope_theta,
                 (float)g->rope_theta);
        return 1;
    }
    if (g->tied != r->tied) {
        snprintf(buf, n, "%s head (reference) vs %s (GGUF)", r->tied ? "a tied" : "an untied",
                 g->tied ? "a tied one (no output.weight)" : "an untied one (output.weight)");
        return 1;
    }
    return 0;
}

int qs_lm_gguf_sites_open(const char *path, struct qs_lm *ref, struct qs_lm_gguf_sites **out,
                          struct qs_lm_gguf_pair_info *info, qs_err *e)
{
    *out = NULL;
    struct qs_lm_gguf_pair_info inf = {0};
    struct qs_gguf_file *g = NULL;
    if (qs_gguf_open(path, &g, e) < 0)
        return -1;
    char pb[256], rb[256];
    struct gctx c = {g, qs_clean_str(path, pb, sizeof pb, 0), NULL, e};
    const char *rname = qs_clean_str(ref->path ? ref->path : "the reference", rb, sizeof rb, 0);
    const char *arch = NULL;
    int rc = qs_gguf_get_str(g, "general.architecture", &arch, e), tied = 0;
    if (rc == 0)
        rc = qs_errf(e, "%s: key 'general.architecture' is missing", c.file);
    if (rc == 1 && strcmp(arch, "llama"))
        rc = qs_errf(e, "%s: architecture is not llama", c.file);
    char *cfg = rc == 1 ? make_config(&c, &tied) : NULL;
    struct qs_lm gm;
    memset(&gm, 0, sizeof gm);
    rc = cfg && qs_lm_parse_config(cfg, strlen(cfg), c.file, &gm, e) == 0 ? 0 : -1;
    free(cfg);
    char diff[200];
    if (rc == 0 && first_difference(&gm, ref, diff, sizeof diff))
        rc = qs_errf(e, "the reference %s differs from the GGUF %s: %s", rname, c.file, diff);
    struct qs_lm_gguf_sites *p = rc == 0 ? qs_calloc(1, sizeof *p) : NULL;
    if (rc == 0 && p) {
        p->g = g;
        p->nsites = ref->nsites;
        p->n_head = ref->n_head;
        p->n_kv_head = ref->n_kv_head;
        p->hd = ref->d_model / ref->n_head;
        p->t = qs_calloc((size_t)ref->nsites, sizeof *p->t);
        p->rope_heads = qs_calloc((size_t)ref->nsites, sizeof *p->rope_heads);
        if (!p->t || !p->rope_heads)
            rc = qs_errf(e, "out of memory");
    } else if (rc == 0) {
        rc = qs_errf(e, "out of memory");
    }
    static const char *const gname[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                         "ffn_gate", "ffn_up", "ffn_down"};
    for (int s = 0; rc == 0 && s < ref->nsites; s++) {
        const struct qs_lm_site *st = &ref->sites[s];
        char k[96];
        if (s == ref->nsites - 1)
            snprintf(k, sizeof k, "%s", ref->tied ? "token_embd.weight" : "output.weight");
        else
            snprintf(k, sizeof k, "blk.%d.%s.weight", s / 7, gname[s % 7]);
        const struct qs_gguf_tensor *t = qs_gguf_find(g, k);
        char tb[24];
        if (!t) {
            rc = qs_errf(e, "%s: tensor '%s' is missing (site %s of the reference)", c.file, k,
                         st->name);
        } else if (t->ndim != 2 || t->ne[0] != st->in || t->ne[1] != st->out) {
            rc = qs_errf(e,
                         "%s: tensor '%s' has ggml dims [%lld,%lld] but the reference's %s is "
                         "(out %d, in %d), i.e. [%d,%d]",
                         c.file, k, (long long)t->ne[0], (long long)(t->ndim > 1 ? t->ne[1] : 1),
                         st->name, st->out, st->in, st->in, st->out);
        } else if (!qs_ggml_can_decode(t->type)) {
            rc = qs_errf(e, "%s: tensor '%s' is of type %s, which qscope cannot decode", c.file, k,
                         qs_gguf_type_name(t->type, tb, sizeof tb));
        } else {
            p->t[s] = t;
            p->rope_heads[s] = s == ref->nsites - 1 ? 0
                               : s % 7 == 0         ? ref->n_head
                               : s % 7 == 1         ? ref->n_kv_head
                                                    : 0;
            inf.nsites_quant +=
                t->type != QS_GGML_F32 && t->type != QS_GGML_F16 && t->type != QS_GGML_BF16;
        }
    }
    /* what is not a site: both paths keep the reference's; say how far the GGUF's are */
    if (rc == 0) {
        const struct qs_gguf_tensor *t = qs_gguf_find(g, "token_embd.weight");
        inf.embd_type = t ? t->type : -1;
        int d = ref->d_model;
        float *emb_own = NULL;
        const float *emb = qs_lm_embed_f32(ref, &emb_own, e);
        rc = emb ? max_diff(g, c.file, "token_embd.weight", emb, (int64_t)d * ref->vocab,
                            &inf.embd_max_diff, e)
                 : -1;
        free(emb_own);
        for (int l = 0; rc == 0 && l < ref->n_layer; l++) {
            char k[64];
            snprintf(k, sizeof k, "blk.%d.attn_norm.weight", l);
            rc = max_diff(g, c.file, k, *qs_lm_slot(ref, QS_LM_SLOT_NORM_ATTN, l), d,
                          &inf.norm_max_diff, e);
            snprintf(k, sizeof k, "blk.%d.ffn_norm.weight", l);
            if (rc == 0)
                rc = max_diff(g, c.file, k, *qs_lm_slot(ref, QS_LM_SLOT_NORM_MLP, l), d,
                              &inf.norm_max_diff, e);
        }
        if (rc == 0)
            rc = max_diff(g, c.file, "output_norm.weight", *qs_lm_slot(ref, QS_LM_SLOT_NORM_F, 0),
                          d, &inf.norm_max_diff, e);
    }
    if (rc < 0) {
        if (p)
            p->g = NULL;
        qs_lm_gguf_sites_free(p);
        qs_gguf_close(g);
        return -1;
    }
    if (info)
        *info = inf;
    *out = p;
    return 0;
}
