/* lm.h - decoder-only transformers (GPT-2 and LLaMA families) in Hugging Face layout: loading,
 * the batched forward pass on OpenBLAS with quantizer hooks at every linear, and task metrics.
 *
 * Notation: T tokens of one sequence, d = d_model, H heads of hd = d / H, Hk key/value heads
 * (GQA; Hk = H for GPT-2), ff = d_ff. A linear computes y = x W^T + b with W: (out, in)
 * row-major, x: (n, in). */
#ifndef QSCOPE_LM_H
#define QSCOPE_LM_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

enum qs_lm_family { QS_LM_GPT2, QS_LM_LLAMA };

/* A linear "site": one weight matrix the quantizer can act on. w is (out, in) row-major as qscope
 * uses everywhere (GPT-2's Conv1D (in, out) tensors are transposed at load). Names are the HF
 * tensor names without ".weight" (and without GPT-2's optional "transformer." prefix), e.g.
 * "h.0.attn.c_attn", "model.layers.1.mlp.down_proj", "lm_head". */
struct qs_lm_site {
    char name[96];
    int in, out;
    /* (out, in) F32, owned by the model (the tied head's aliases the embedding); NULL while the
     * weight stays the model file's F16/BF16 bytes (w16): then read it through qs_lm_site_w,
     * qs_lm_site_rows or qs_lm_site_linear, or call qs_lm_materialize first */
    float *w;
    const float *b;  /* (out) or NULL (LLaMA, the head) */
    const void *w16; /* the tensor as stored, in the mapping of the model file (w NULL) */
    int w16_dt;      /* its dtype: QS_DT_F16 or QS_DT_BF16 */
    int w16_t;       /* stored (in, out) (GPT-2's Conv1D): transposed when widened */
};

struct qs_lm_priv; /* embeddings, norms, metadata: internal to lm.c */

struct qs_lm {
    enum qs_lm_family family;
    int n_layer, n_head, n_kv_head, d_model, d_ff, vocab;
    /* n_pos: the context of the config (n_positions / max_position_embeddings: GPT-2's position
     * table, the longest sequence a forward takes); ctx: the windows the analyses, eval and
     * training take, at most n_pos (`set ctx`; n_pos when loaded) */
    int n_pos, ctx;
    double eps, rope_theta; /* norm epsilon; RoPE base (LLaMA only) */
    int tied;               /* lm head = token embedding */
    /* config.json's model_type: "gpt2", or the LLaMA family's "llama", "qwen2", "mistral" */
    char arch[16];
    /* LLaMA family: bit i set = block site i (q, k, v, o, gate, up, down) has a bias (llama:
     * attention_bias q..o, mlp_bias gate..down; qwen2: q, k, v). GPT-2: every block site. */
    int bias_mask;
    /* Sliding-window attention (mistral's sliding_window): position i attends to keys j with
     * i - window < j <= i; 0: to every earlier key. */
    int window;
    int nsites;
    /* every linear of every block in forward order, then the head (a site too, also when tied:
     * its w then aliases the embedding, so changing it changes the embedding lookups too).
     * GPT-2 block l: sites 4l .. 4l+3 = attn.c_attn (in d, out 3d: q|k|v), attn.c_proj,
     * mlp.c_fc, mlp.c_proj. LLaMA block l: sites 7l .. 7l+6 = self_attn.{q,k,v,o}_proj,
     * mlp.{gate,up,down}_proj. */
    struct qs_lm_site *sites;
    /* bytes of widened copies of 16-bit sites that qs_lm_site_w may keep (QS_LM_WF_BUDGET) */
    size_t wf_budget;
    char *path; /* the model folder */
    struct qs_lm_priv *priv;
};

/* Loads DIR/config.json (model_type "gpt2", "llama", "qwen2" or "mistral") and
 * DIR/model.safetensors (F32, F16 or BF16 tensors, copied to F32 and checked finite; GPT-2 names
 * may carry a "transformer." prefix). Config keys: GPT-2 vocab_size, n_embd, n_layer, n_head,
 * n_positions (or n_ctx), layer_norm_epsilon (default 1e-5), n_inner (null: 4 d),
 * activation_function (gelu_new); LLaMA vocab_size, hidden_size, num_hidden_layers,
 * num_attention_heads, num_key_value_heads (default H), intermediate_size, rms_norm_eps (default
 * 1e-6), rope_theta (default 10000), max_position_embeddings, tie_word_embeddings (default false),
 * hidden_act (silu), attention_bias (q/k/v/o biases) and mlp_bias (gate/up/down biases), both
 * default false. "qwen2" and "mistral" are LLaMA with other defaults: qwen2 has q/k/v biases (no
 * o_proj or MLP bias); its use_sliding_window true is refused when a window (sliding_window, on the
 * layers from max_window_layers, or those layer_types names "sliding_attention") could be shorter
 * than the context, and otherwise is full attention. mistral's sliding_window (default 4096, null:
 * none) masks keys that are sliding_window or more positions back (window); its num_key_value_heads
 * defaults to 8. Unsupported variants (rope_scaling, another activation) are refused. Every missing
 * tensor, wrong shape, bad dtype or inconsistent config gives one message naming the file and
 * the tensor or key. Before anything is allocated the config is bounded (qs_lm_parse_config),
 * the file must hold the tensors its depth needs and the weights must fit in memory
 * (qs_mem_check); a tensor the config leaves unused (an under-reported depth) is refused. A
 * packed export (`export model DIR packed`, packfile.h) is read site by site through
 * qs_packfile_site: packed weights dequantized, corrections folded in. Only
 * regular files are opened (a FIFO would block). *out is NULL on failure; free with
 * qs_lm_free. */
int qs_lm_load(const char *dir, struct qs_lm **out, qs_err *e);
/* What a load reports while it reads: progress(ctx, what, frac) after each tensor, frac the
 * share of the file's tensor bytes read so far; cancel (NULL, or set from another thread) stops
 * it before the next tensor with "PATH: cancelled". Either may be NULL. */
struct qs_lm_load_hooks {
    void (*progress)(void *ctx, const char *what, double frac);
    void *ctx;
    const _Atomic int *cancel;
};
/* qs_lm_load with hooks h (NULL: none; a GGUF file is read without them). */
int qs_lm_load_ex(const char *dir, const struct qs_lm_load_hooks *h, struct qs_lm **out, qs_err *e);
/* The model of Hugging Face folder DIR as qs_lm_load names and sizes it, from config.json alone
 * (checked as qs_lm_load checks it; model.safetensors must be a regular file, its bytes are not
 * read): family, sizes, path and every site's name, in and out; no tensors, nothing a forward or
 * a weight access can use. For showing what is coming while the load runs (the TUI's layers
 * table). A GGUF file is refused. *out is NULL on failure; free with qs_lm_free. */
int qs_lm_peek(const char *dir, struct qs_lm **out, qs_err *e);
/* Writes m as a Hugging Face folder DIR (created if missing; config.json and model.safetensors
 * in it are replaced through qs_outfile) that qs_lm_load reads back into the same model: every
 * tensor F32, GPT-2 names under "transformer." with Conv1D weights as (in, out). w[s] (w may be
 * NULL, as may w[s]) replaces site s's weight (out, in), b[s] (b may be NULL, as may b[s]) its
 * bias. The head (of every family) has no bias and ignores b[s]. A LLaMA-family site without a
 * bias gains b[s]: Hugging Face's format wants the biases of a whole group, so when a site needs
 * a bias the model does not have, every attention site (q, k, v, o) of every block gets one
 * (zeros where none; likewise gate, up, down for an MLP site) and the config says
 * attention_bias / mlp_bias true. A qwen2 or mistral model whose biases its own model_type cannot
 * hold is written as model_type "llama" (a mistral only when its window covers the context:
 * llama has no sliding window; otherwise refused). A tied head whose weight is replaced is written
 * untied (lm_head.weight beside the float embedding, tie_word_embeddings false). config.json is the
 * loaded text with tie_word_embeddings and torch_dtype ("float32") set. Metadata: the nmeta given
 * pairs, "format": "pt", then the source file's own keys not given. 0 or -1 and e. */
int qs_lm_save(const struct qs_lm *m, const char *dir, const float *const *w, const float *const *b,
               const char *const *meta_keys, const char *const *meta_vals, int nmeta, qs_err *e);
/* As qs_lm_save, for `export model DIR packed` (packfile.h): a site s with skip[s] set gets no
 * weight tensor (its bias is written as usual; w[s] still says what the site holds: a tied head
 * skipped with w[H] set to its quantized weight makes the folder untied), and
 * the nx tensors xt follow the model's own (F32 ones first, then U8, keeps every F32 aligned),
 * each named "P.NAME" for xt[i].name and P the tensor prefix of site xsite[i] (its weight's name
 * without ".weight": "transformer.h.0.attn.c_attn", "model.layers.0.mlp.up_proj", "lm_head"),
 * the names qs_lm_load's packed hook looks for. skip, xt, xsite may be NULL. */
struct qs_st_out;
int qs_lm_save_packed(const struct qs_lm *m, const char *dir, const float *const *w,
                      const float *const *b, const unsigned char *skip, const struct qs_st_out *xt,
                      const int *xsite, int nx, const char *const *meta_keys,
                      const char *const *meta_vals, int nmeta, qs_err *e);
/* NULL is fine. */
void qs_lm_free(struct qs_lm *m);

/* ---- float weights kept as the file's 16-bit bytes -------------------------------------------
 * qs_lm_load keeps every F16/BF16 site weight of a plain safetensors file as the file's own bytes
 * (mapped, w NULL, w16 set): a 1B-parameter BF16 model then holds 2 bytes a weight, not 4.
 * Widening is exact, so every number is that of an F32 copy. */

/* The default wf_budget: 512 MiB. */
#define QS_LM_WF_BUDGET ((size_t)512 << 20)
/* Site s's weight (out, in) as F32: w itself, or a copy widened into the model's float-weights
 * cache. The pointer stays valid until a qs_lm_site_w call for a third site (the cache drops the
 * least recently asked copies beyond wf_budget, but always keeps the two last asked for: a
 * caller may hold two sites' weights at once), qs_lm_site_w_trim or qs_lm_materialize. NULL with
 * a message when out of memory or when the file changed on disk. Not for concurrent use. */
const float *qs_lm_site_w(struct qs_lm *m, int s, qs_err *e);
/* Rows [r0, r1) of site s's F32 weight into out ((r1 - r0) x in), whatever it is stored as; the
 * model is not changed (any thread). 0, or -1 and e when the file changed on disk. */
int qs_lm_site_rows(const struct qs_lm *m, int s, int r0, int r1, float *out, qs_err *e);
/* y: (n, out) = x W^T + b (b may be NULL) for site s's own weight, however stored: the one
 * product of a site's float weight in a forward. A weight of up to 64 MiB as F32 is one
 * qs_linear; a larger one (a vocabulary head) is computed in slices of output rows of 64 MiB,
 * whether it is F32 or 16-bit, so both give the same bits (a sliced product differs from a
 * whole one in the last bits). A 16-bit weight is widened into scratch of this call, never into
 * the cache, so forwards on several threads may share m. */
int qs_lm_site_linear(const struct qs_lm *m, int s, const float *x, int n, const float *b, float *y,
                      qs_err *e);
/* The token embedding (vocab, d) as F32: the model's own copy (*own NULL), or, while it stays
 * the file's 16-bit bytes, a copy widened for the caller to free (*own). NULL and e when out
 * of memory or the file changed on disk. */
const float *qs_lm_embed_f32(const struct qs_lm *m, float **own, qs_err *e);
/* Widens the token embedding (a tied head with it) and every 16-bit site into an owned F32 w (for
 * code that writes weights or holds many at once: training, QAT, the backward pass); the cache is
 * dropped. 0 or -1 and e. */
int qs_lm_materialize(struct qs_lm *m, qs_err *e);
/* Drops the cache's copies down to wf_budget (after a change of it), or all of them (all). */
void qs_lm_site_w_trim(struct qs_lm *m, int all);
/* What the float weights take: bytes stored as F32 (w), bytes left as the file's 16-bit bytes
 * (nlazy sites), widened copies in the cache (cached bytes, ncached sites), widenings so far. */
struct qs_lm_wf_info {
    size_t f32_bytes, lazy_bytes, cached_bytes;
    int nlazy, ncached;
    long widens, hits;
};
void qs_lm_wf_info(const struct qs_lm *m, struct qs_lm_wf_info *w);
/* 0 if the file the 16-bit sites read is still the one loaded (or there is none); else -1 and
 * "PATH changed on disk since it was loaded; load it again". */
int qs_lm_check_file(const struct qs_lm *m, qs_err *e);

/* For loaders of other formats (lm_gguf.c): a LLaMA model skeleton from a Hugging Face
 * config.json text (checked by qs_lm_parse_config; FILE names it in messages), with every site
 * named and sized as qs_lm_load names them, no tensors yet, PATH as its path and CONFIG kept
 * for qs_lm_save. The caller fills each site's w (malloc'd (out, in)) and the slots below
 * (malloc'd; the model owns them; a tied head's w is set to the embedding), then the model is
 * like a loaded one. 0 or -1 and e (the weights must fit in memory). */
int qs_lm_new_from_config(const char *config, const char *file, const char *path,
                          struct qs_lm **out, qs_err *e);
enum qs_lm_slot {
    QS_LM_SLOT_EMBED,     /* (vocab, d) token embedding */
    QS_LM_SLOT_NORM_F,    /* (d) final RMSNorm weight */
    QS_LM_SLOT_NORM_ATTN, /* (d) block LAYER's pre-attention RMSNorm weight */
    QS_LM_SLOT_NORM_MLP   /* (d) block LAYER's pre-MLP RMSNorm weight */
};
float **qs_lm_slot(struct qs_lm *m, enum qs_lm_slot slot, int layer);

/* Loads a llama.cpp GGUF file of architecture "llama" (lm_gguf.c): llama.* hyperparameters,
 * ggml tensor names mapped to the sites (token_embd, blk.N.attn_q|attn_k|attn_v|attn_output|
 * ffn_gate|ffn_up|ffn_down|attn_norm|ffn_norm, output_norm, output (absent: tied head)), the
 * converter's row permutation of attn_q / attn_k for RoPE undone, every tensor dequantized to
 * F32 (F32, F16, BF16 and the ggml block types of ggml.h) and checked finite. */
int qs_lm_load_gguf(const char *path, struct qs_lm **out, qs_err *e);
/* Writes llama model m as a GGUF v3 file that qs_lm_load_gguf reads back into the same model:
 * the llama.* keys, token_embd / norms in F32, each site s as blocks[s] (its (out, in) weight as
 * rows of ggml type types[s], HF row order) when given, else w[s] (F32 (out, in)) when given,
 * else its own weight in F32; attn_q / attn_k rows put in the converter's RoPE order; no
 * output.weight for a tied head left as it is. blocks, types, w may be NULL. No tokenizer keys
 * are written. 0 or -1 and e (gpt2 refused). */
int qs_lm_save_gguf(const struct qs_lm *m, const char *path, const uint8_t *const *blocks,
                    const int *types, const float *const *w, qs_err *e);

/* Parses a config.json text (len bytes; FILE names it in messages) into m's hyperparameters
 * (family, sizes, eps, rope_theta, tied), checking that every value is in range (positive,
 * consistent heads, within qscope's limits) and that the weights' total size does not overflow.
 * Allocates nothing in m. 0 or -1 and e. */
int qs_lm_parse_config(const char *text, size_t len, const char *file, struct qs_lm *m, qs_err *e);
/* Bytes of m's weights as F32 (the tied head counted once) into *bytes; -1 on overflow. */
int qs_lm_weight_bytes(const struct qs_lm *m, size_t *bytes);

/* The model file's __metadata__ value for KEY (e.g. "qscope.val_ppl"), or NULL. Owned by m. */
const char *qs_lm_meta(const struct qs_lm *m, const char *key);
/* Parameter count (a tied head counted once). */
long qs_lm_nparams(const struct qs_lm *m);

/* Hooks for the quantizer at every linear site, shared by every family (the MLP's forward takes
 * them too: see qs_mlp_forward_hooks). All optional, as is the struct. For site s, in this order:
 * input() observes the site's input x: (n, in) (e.g. calibration statistics). Then either
 * linear(), when given, computes the site's output y: (n, out) from x itself (the bench's one
 * definition of a quantized, corrected site: qs_bench_site_forward) and may fail (the forward
 * then fails with its message); or, without linear(): act() may rewrite a private copy of x in
 * place (activation quantization; sites sharing an input, like q/k/v, each get their own copy
 * of the float input); weight() may return a replacement (out, in) weight to use instead of the
 * site's (NULL: the site's own); after the linear, post() may rewrite y in place. Each site is
 * visited once per forward. */
struct qs_hooks {
    const float *(*weight)(void *u, int site);
    void (*input)(void *u, int site, const float *x, int n, int in);
    void (*act)(void *u, int site, float *x, int n, int in);
    void *u;
    void (*post)(void *u, int site, float *y, int n, int out);
    int (*linear)(void *u, int site, const float *x, int n, float *y, qs_err *e);
    /* NULL, or set from another thread: the pass stops with "cancelled" before its next block
     * (a key in the TUI waits for one block, not for a window's whole forward) */
    const _Atomic int *cancel;
};

/* Logits for one sequence: tok: (T) ids < vocab, 1 <= T <= ctx; logits: (T, vocab). Batched over
 * positions with cblas_sgemm (projections and, per head, attention scores and values); causal
 * attention. h may be NULL. Scratch is allocated per call, so m is not modified and several
 * threads may run forwards of one model at once (hooks permitting); many forwards on one thread
 * can reuse one through qs_lm_forward_blocks. */
int qs_lm_forward(const struct qs_lm *m, const uint32_t *tok, int T, const struct qs_hooks *h,
                  float *logits, qs_err *e);

/* Resumable forward: blocks are the unit of recompute. resid: (n_layer + 1, T, d), the residual
 * stream at the entry of each block (entry n_layer: before the final norm). The pass starts at
 * block `from` (0 <= from <= n_layer; from = n_layer runs only the final norm and the head) from
 * resid[from] (from > 0; from = 0 starts from the embeddings), and writes resid[l] for every
 * block l it enters. resid NULL: from must be 0 and nothing is kept. The ops and their order are
 * those of qs_lm_forward, so a resumed pass gives the same bits as a whole one. logits NULL:
 * the head's input hook is called but its linear is not run. */
int qs_lm_forward_resume(const struct qs_lm *m, const uint32_t *tok, int T,
                         const struct qs_hooks *h, int from, float *resid, float *logits,
                         qs_err *e);
/* A forward's buffers (activations, attention scratch, LLaMA's rotary table) for sequences of up
 * to T tokens: about 60 MB for GPT-2-small at T = 1024. Owned by the caller, who runs many
 * qs_lm_forward_blocks calls on one (a fresh buffer per call pays its page faults again). One
 * scratch per thread. NULL with e when T is out of range or it does not fit in memory
 * (qs_mem_check). qs_lm_scratch_free accepts NULL. */
struct qs_lm_scratch;
struct qs_lm_scratch *qs_lm_scratch_new(const struct qs_lm *m, int T, qs_err *e);
void qs_lm_scratch_free(struct qs_lm_scratch *c);

/* Blocks [from, to) of one sequence, 0 <= from <= to <= n_layer + 1, where block n_layer is the
 * final norm and the head. x: (T, d), the residual stream: at block from's entry on input (from
 * = 0: ignored, the pass starts from tok's embeddings), at block to's entry on return (to =
 * n_layer + 1: the final norm's input, as for to = n_layer). tok: (T) ids, checked as
 * qs_lm_forward checks them; c: a scratch of at least T tokens (qs_lm_scratch_new), its
 * contents not kept between calls. logits: (T, vocab), written when the range holds block
 * n_layer; NULL: the head's input hook is called but its linear is not run. The ops and their
 * order are qs_lm_forward's, so running blocks in pieces gives the bits of one whole pass (two
 * passes of one model may alternate block by block on two x with one scratch). Hooks as in
 * qs_lm_forward. 0 or -1 and e (a hook's failure leaves x partway through a block). */
int qs_lm_forward_blocks(const struct qs_lm *m, const uint32_t *tok, int T,
                         const struct qs_hooks *h, int from, int to, float *x,
                         struct qs_lm_scratch *c, float *logits, qs_err *e);
/* The block a site belongs to (the head: n_layer) and the first site of block l. */
int qs_lm_site_block(const struct qs_lm *m, int site);
int qs_lm_block_first_site(const struct qs_lm *m, int block);

/* Scores one window: tok: (T + 1) ids, lf / lq: (T, vocab) the float and (may be NULL) the
 * quantized logits, accumulated into acc in the order qs_lm_evaluate uses (its loss is
 * acc.sf / acc.n bit for bit). */
struct qs_lm_score {
    double sf, sq, skl;
    long agree, n;
    double *tok_loss; /* NULL, or (T): the window's token losses (of lq when given, else lf) */
};
int qs_lm_score_window(const struct qs_lm *m, const uint32_t *tok, int T, const float *lf,
                       const float *lq, struct qs_lm_score *acc, qs_err *e);

/* Task metrics over non-overlapping windows w = 0, 1, ... < min((n - 1) / ctx, max_windows)
 * (max_windows 0 = all) of tok[0..n): inputs tok[w ctx .. w ctx + ctx), targets shifted by one.
 * loss: mean next-token cross-entropy (nats) with hooks hf (may be NULL), ppl = exp(loss);
 * ntok = the number of predicted positions. When hq is given, also loss_q/ppl_q with hq, kl =
 * KL(p_f || p_q) per position averaged and top1_agree = the fraction of positions whose argmax
 * agree; otherwise those are 0. Errors: fewer than ctx + 1 tokens, an id >= vocab. */
struct qs_lm_eval {
    double loss, ppl, loss_q, ppl_q, kl, top1_agree;
    long ntok;
};
int qs_lm_evaluate(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                   const struct qs_hooks *hf, const struct qs_hooks *hq, struct qs_lm_eval *out,
                   qs_err *e);

/* qs_lm_evaluate, calling pr->fn(pr->ctx, "WHAT: window w of nw", w / nw) after each window
 * (pr may be NULL): the front end's progress line for long evaluations. */
struct qs_lm_progress {
    void (*fn)(void *ctx, const char *what, double frac);
    void *ctx;
    const char *what;    /* NULL: "eval" */
    _Atomic int *cancel; /* NULL, or set from another thread: stop before the next block */
};
int qs_lm_evaluate_progress(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                            const struct qs_hooks *hf, const struct qs_hooks *hq,
                            struct qs_lm_eval *out, const struct qs_lm_progress *pr, qs_err *e);

/* Per-position next-token losses over the windows qs_lm_evaluate uses, with hooks h (may be
 * NULL): loss[w ctx + t] in nats, *ntok = nw ctx of them. Summed in order and divided by ntok
 * they give qs_lm_evaluate's loss bit for bit (the same log-softmax, the same order), so a
 * per-token statistic agrees with `eval`. loss NULL: only *ntok. */
/* Fills out from a score accumulated over windows (loss, ppl; with have_q the quantized side). */
void qs_lm_eval_finish(const struct qs_lm_score *acc, int have_q, struct qs_lm_eval *out);

int qs_lm_token_losses(const struct qs_lm *m, const uint32_t *tok, size_t n, int max_windows,
                       const struct qs_hooks *h, double *loss, long *ntok, qs_err *e);

#endif
