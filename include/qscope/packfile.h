/* packfile.h - the packed model file of `export model PATH packed`, and reading it back.
 *
 * A safetensors file with qscope.arch = "mlp" and qscope.export = "packed". For each layer L of
 * qscope.layers, either "L.weight" F32 (out, in) (a layer whose weights stay in float) or its
 * packed weight (format.h's buffers, byte for byte):
 *   L.weight.codes         U8 [code_bytes]   element codes, one LSB-first bit stream, row-major
 *   L.weight.scales        U8 [scale_bytes]  scales in the scale dtype, little-endian
 *   L.weight.zeros         U8 [nscales]      asymmetric int: zero points
 *   L.weight.tensor_scale  F32 [1]           NVFP4: the per-tensor scale
 * then "L.bias" F32 (out), the layer's own bias, and its fitted correction, in F32 as fitted:
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
