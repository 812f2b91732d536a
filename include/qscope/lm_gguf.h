/* lm_gguf.h - a quantized llama.cpp GGUF file as the quantized path of its float original.
 *
 * `load model q4km.gguf` then `load reference F` (an F16/F32 GGUF or a Hugging Face folder of the
 * same llama): F becomes the model (its weights are the float path) and the GGUF's own site
 * tensors the quantized path, through rules of the kind `gguf` (bench.c). The GGUF stays mapped;
 * a site's blocks are copied (still in their ggml type, a few bits a weight) when a `gguf` rule
 * puts them on that site, and dequantized there like any packed weight. Embedding and norms are
 * not sites: both paths use the reference's, and the pairing reports how the GGUF's differ. */
#ifndef QSCOPE_LM_GGUF_H
#define QSCOPE_LM_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"
#include "qscope/format.h"
#include "qscope/lm.h"

struct qs_lm_gguf_sites;

/* What the pairing found beside the sites (for the load message). */
struct qs_lm_gguf_pair_info {
    int embd_type;        /* ggml type of token_embd.weight in the GGUF */
    double embd_max_diff; /* max |GGUF - reference| over the embedding (dequantized) */
    double norm_max_diff; /* the same over every RMSNorm weight */
    int nsites_quant;     /* sites whose GGUF tensor is a block type (not F32/F16/BF16) */
};

/* Opens the llama GGUF at PATH (the quantized model) against the reference REF: the GGUF's
 * llama.* keys must describe REF (family llama, no biases or sliding window, the same vocab,
 * d_model, blocks, heads, kv heads, intermediate size, context, norm epsilon as F32, RoPE base as
 * F32, tied or untied head), else -1 with "the reference ... differs from the GGUF: FIELD A vs B"
 * naming the first difference; every site's tensor (blk.N.attn_q ... ffn_down, output or, for a
 * tied head, token_embd) must exist with the site's dims and a type qscope decodes, else -1
 * naming the tensor. The GGUF stays mapped until qs_lm_gguf_sites_free. info may be NULL. */
int qs_lm_gguf_sites_open(const char *path, struct qs_lm *ref, struct qs_lm_gguf_sites **out,
                          struct qs_lm_gguf_pair_info *info, qs_err *e);
void qs_lm_gguf_sites_free(struct qs_lm_gguf_sites *p); /* NULL is fine */
const char *qs_lm_gguf_sites_path(const struct qs_lm_gguf_sites *p);
/* The mapped file unchanged on disk (qs_gguf_check): 0 or -1 and e. */
int qs_lm_gguf_sites_check(const struct qs_lm_gguf_sites *p, qs_err *e);
int qs_lm_gguf_sites_count(const struct qs_lm_gguf_sites *p);
/* The ggml type of site s's tensor, and its ggml tensor name ("blk.0.ffn_down.weight"). */
int qs_lm_gguf_site_type(const struct qs_lm_gguf_sites *p, int s);
const char *qs_lm_gguf_site_tensor(const struct qs_lm_gguf_sites *p, int s);

/* The format a `gguf` rule gives site s: kind QS_FMT_GGML, ggml the tensor's type, name
 * "gguf:q4_k" (ggml's name in lower case). 0 or -1 and e. */
int qs_lm_gguf_site_format(const struct qs_lm_gguf_sites *p, int s, struct qs_format *f, qs_err *e);
/* Site s's own weight as a packed ggml matrix (format as qs_lm_gguf_site_format but named by the
 * type alone, "q4_k", as qs_format_parse names it, for packed exports; codes: the
 * tensor's rows copied in Hugging Face row order, the converter's RoPE order of attn_q / attn_k
 * undone), so that qs_quant_unpack dequantizes it and a GGUF export writes it back. Free with
 * qs_packed_free. 0 or -1 and e. */
int qs_lm_gguf_site_packed(const struct qs_lm_gguf_sites *p, int s, struct qs_packed *out,
                           qs_err *e);

/* The rule format `gguf` (a rule whose sites take the paired GGUF's own weights): kind
 * QS_FMT_GGML, ggml -1, name "gguf". */
void qs_format_gguf_own(struct qs_format *f);
int qs_format_is_gguf_own(const struct qs_format *f);

#endif
