/* packfile.h - the packed model file of `export model PATH packed`, and reading it back.
 *
 * A safetensors file with qscope.export = "packed": an MLP's PATH.safetensors (qscope.arch
 * "mlp"), or a transformer's DIR/model.safetensors (qscope.arch "gpt2" or "llama", beside
 * config.json, in the Hugging Face layout of qs_lm_save: embeddings, norms and float sites as
 * they are). For each layer (site) L of qscope.layers, its tensors are named "P.*" where P is L
 * (MLP) or the site's tensor prefix (qs_lm_save's names without ".weight":
 * "transformer.h.0.attn.c_attn", "model.layers.0.mlp.up_proj", "lm_head"). Either "P.weight" F32
 * (out, in) (a layer whose weights stay in float; a GPT-2 site keeps its Conv1D (in, out)) or
 * its packed weight (format.h's buffers, byte for byte, always in qscope's (out, in) row order):
 *   L.weight.codes         U8 [code_bytes]   element codes, one LSB-first bit stream, row-major
 *   L.weight.scales        U8 [scale_bytes]  scales in the scale dtype, little-endian
 *   L.weight.zeros         U8 [nscales]      asymmetric int: zero points
 *   L.weight.tensor_scale  F32 [1]           NVFP4: the per-tensor scale
 * then "L.bias" F32 (out), the layer's own bias (none on a site without one: LLaMA's), and its
 * fitted correction, in F32 as fitted (bias and linear corrections only where there is a bias):
 *   L.corr.l F32 (out, r), L.corr.rt F32 (r, in)       low-rank (lowrank, lqer, qera, eora):
 *                                                      W' = Q(W) + l rt (factors fitted with
 *                                                      prec=FORMAT hold their dequantized values)
 *   L.corr.bias F32 (out)                              bias: b' = b + db
 *   L.corr.map F32 (out, out), L.corr.map_bias F32 (out)  linear: y' = y A^T + mb (prec=int8 or
 *                                                      int4 maps hold their dequantized values)
 * Metadata, each a comma-separated list with one entry per layer in qscope.layers order ("-"
 * where it does not apply):
 *   qscope.weight_formats      format name ("int4", "nf4", ...; "none" for float)
 *   qscope.weight_shapes       "OUTxIN"
 *   qscope.weight_grans        "tensor", "channel" or "group:N": N elements a scale along a
 *                              row, the last group of a row shorter when N does not divide it
 *                              (NF4 blocks, MX 32, NVFP4 16 are written as their group)
 *   qscope.weight_scale_dtypes f16, f32, e8m0 (MX), e4m3 (NVFP4, times the tensor scale), none
 *   qscope.weight_options      (';'-separated) the canonical quant options, as journaled
 *   qscope.weight_methods      (';'-separated) the quantizer that chose the codes: "rtn", or the
 *                              method's options as `rules` shows them ("method=gptq damp=0.01
 *                              order=col inputs=quant", "weight=imatrix inputs=quant", ...),
 *                              then seed=N (the site's rotation seed) after rotate=hadamard and
 *                              alpha=A (the grid's choice) after method=awq; "-" for float.
 *                              Written by every safetensors export (fake-quant: a record of how
 *                              the effective weights were made). The packed reader decodes GPTQ
 *                              and imatrix codes as any (same layout) and refuses rotate=,
 *                              smooth= and method=awq (codes in another basis; the exporter does
 *                              not pack them). Files without the key read as before.
 *   qscope.corrections         "bias", "lowrank:r=4", "lowrank:r=8:prec=int4",
 *                              "linear:prec=int8", ...
 */
#ifndef QSCOPE_PACKFILE_H
#define QSCOPE_PACKFILE_H

#include "qscope/common.h"

struct qs_st_file;
struct qs_layer;

/* Loads layer PREFIX of f (opened from PATH) when f is a packed export: l gets name, shape, the
 * weight dequantized from its codes and scales, and the bias, with the fitted correction folded
 * in: W' = Q(W) + l rt and b' = b + db computed as the session's forward pass computes them (so
 * the loaded float model predicts exactly as the session's quantized + corrected one); a linear
 * map is folded as W'' = A W', b'' = A b' + mb, equal to the session's (x W'^T + b') A^T + mb up
 * to float rounding. Activation quantization is not part of the file.
 * Returns 1 when f is not a packed export (the caller reads "PREFIX.weight" itself); 0 when
 * loaded (l->w, l->b malloc'd, not mapped); -1 with e naming PATH and the tensor or metadata
 * entry at fault (sizes, dtypes, shapes and options are all checked before any is used). */
int qs_packfile_layer(const struct qs_st_file *f, const char *path, const char *prefix,
                      struct qs_layer *l, qs_err *e);

/* The transformer loader's hook (lm.c), at the point where it reads site NAME (out x in, from
 * config.json) whose tensors are TPREFIX.*: returns 1 when f is not a packed export (the loader
 * reads the site as usual); else 0 with *w (out, in) and *b (out, or NULL without
 * QS_PACKFILE_BIAS) malloc'd as qs_packfile_layer computes them (the same checks, the same
 * dequantization and folding), or -1 with e. The site must be in qscope.layers with the shape
 * (out, in). QS_PACKFILE_BIAS: the site has a bias (read from TPREFIX.bias, zeros when absent);
 * without it, a bias or a bias/map correction in the file is refused. QS_PACKFILE_WT: a float
 * weight is stored (in, out) (GPT-2's Conv1D) and is transposed. Every tensor read is marked in
 * used (one byte per tensor of f in file order; may be NULL) for the loader's check of unused
 * tensors. */
enum { QS_PACKFILE_BIAS = 1, QS_PACKFILE_WT = 2 };
int qs_packfile_site(const struct qs_st_file *f, const char *path, const char *name,
                     const char *tprefix, int out, int in, int flags, float **w, float **b,
                     unsigned char *used, qs_err *e);

/* The qscope.weight_grans entry for a weight packed with layout lay, options o, cols columns:
 * "tensor", "channel" or "group:N". buf always NUL-terminated. */
struct qs_packed_layout;
struct qs_qopts;
void qs_packfile_gran(const struct qs_packed_layout *lay, const struct qs_qopts *o, int cols,
                      char *buf, size_t n);

/* Folds a linear correction y' = y A^T + mb into its layer: w: (out, in) becomes A w and b:
 * (out) becomes A b + mb (accumulated in double). a: (out, out), mb: (out). */
int qs_packfile_fold_map(int out, int in, const float *a, const float *mb, float *w, float *b,
                         qs_err *e);

#endif
