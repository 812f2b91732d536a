/* ggml.h - llama.cpp's ggml tensor types: block layouts, reference quantization (the
 * quantize_row_*_ref functions of ggml-quants.c, i.e. without an importance matrix) and
 * dequantization, written from their definitions so that the bytes equal llama.cpp's (the tests
 * check them against llama.cpp's own libggml-base.so).
 *
 * Block layouts (all little-endian, F16 = IEEE binary16; QK_K = 256):
 *   q4_0  32 elements, 18 bytes: d F16, 16 bytes of nibbles (element j low, j+16 high), x = (q-8) d
 *   q4_1  32 / 20: d F16, m F16, nibbles as q4_0; x = q d + m
 *   q5_0  32 / 22: d F16, qh (32 fifth bits, element j at bit j), nibbles; x = (q-16) d
 *   q5_1  32 / 24: d F16, m F16, qh, nibbles; x = q d + m
 *   q8_0  32 / 34: d F16, 32 int8; x = q d
 *   q2_k 256 / 84: 16 bytes of 4-bit scale | 4-bit min per 16 elements, 64 bytes of 2-bit codes,
 *                  d F16, dmin F16; x = d sc q - dmin m
 *   q3_k 256 / 110: hmask (32 bytes, high bit), 64 bytes of 2-bit codes, 12 bytes of 6-bit
 *                  scales (offset 32) per 16 elements, d F16; x = d (sc-32) (q-4)
 *   q4_k 256 / 144: d F16, dmin F16, 12 bytes of 6-bit scales and mins per 32 elements, 128 bytes
 *                  of nibbles; x = d sc q - dmin m
 *   q5_k 256 / 176: d, dmin, 12 bytes of scales/mins, qh (32 bytes), 128 bytes of nibbles
 *   q6_k 256 / 210: ql (128 bytes), qh (64 bytes), 16 int8 scales per 16 elements, d F16;
 *                  x = d sc (q-32)
 * Bits per weight follow from the block bytes: q8_0 8.5, q4_0 4.5, q4_1 5, q5_0 5.5, q5_1 6,
 * q2_k 2.625, q3_k 3.4375, q4_k 4.5, q5_k 5.5, q6_k 6.5625.
 *
 * Rows that are not a multiple of the block: llama-quantize (llama.cpp's tensor_type_fallback)
 * quantizes such a tensor with another type: q2_k and q3_k -> q4_0, q4_k -> q5_0, q5_k -> q5_1,
 * q6_k -> q8_0, and F16 when the row is not a multiple of 32 either; for the 32-element types
 * (q4_0 ... q8_0) it has no fallback and refuses the tensor. qscope does the same. */
#ifndef QSCOPE_GGML_H
#define QSCOPE_GGML_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"
#include "qscope/format.h"

/* ggml's type numbers, as stored in GGUF tensor infos. */
enum qs_ggml_type {
    QS_GGML_F32 = 0,
    QS_GGML_F16 = 1,
    QS_GGML_Q4_0 = 2,
    QS_GGML_Q4_1 = 3,
    QS_GGML_Q5_0 = 6,
    QS_GGML_Q5_1 = 7,
    QS_GGML_Q8_0 = 8,
    QS_GGML_Q8_1 = 9,
    QS_GGML_Q2_K = 10,
    QS_GGML_Q3_K = 11,
    QS_GGML_Q4_K = 12,
    QS_GGML_Q5_K = 13,
    QS_GGML_Q6_K = 14,
    QS_GGML_Q8_K = 15,
    QS_GGML_BF16 = 30,
    QS_GGML_NTYPES = 43 /* one past the largest number llama.cpp has assigned (q2_0 = 42) */
};

/* ggml's name of type t ("q4_K", "f16", "iq2_xxs", ...), or NULL for a number ggml never
 * assigned (4, 5, 31..33, 36..38, >= 43). */
const char *qs_ggml_type_name(int t);

/* Elements per block and bytes per block of type t; 0 for an unknown type. Every assigned type
 * has these, including the ones qscope cannot decode (IQ*, TQ*, MXFP4, ...). */
int qs_ggml_block_size(int t);
size_t qs_ggml_type_size(int t);

/* 1 when qscope can dequantize type t: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K. */
int qs_ggml_can_decode(int t);

/* Bytes of one row of n elements of type t: n / block * type_size. -1 with a message when n is
 * not a multiple of the block or the size overflows. */
int qs_ggml_row_bytes(int t, int64_t n, size_t *out, qs_err *e);

/* Decodes n elements (a multiple of the block) of type t from src into y. t must decode
 * (qs_ggml_can_decode). */
void qs_ggml_dequantize(int t, const void *src, float *y, int64_t n);

/* Quantizes n elements (a multiple of the block; finite) of x into dst as type t, with
 * llama.cpp's reference rounding. t: one of the ten block types or F16/F32/BF16. */
void qs_ggml_quantize(int t, const float *x, void *dst, int64_t n);

/* The type llama-quantize stores a tensor of rows of `cols` elements in when asked for type t
 * (t itself when cols is a multiple of its block; the fallback above otherwise); -1 when it
 * refuses (a 32-element type and cols not a multiple of 32). */
int qs_ggml_effective_type(int t, int64_t cols);

/* ---- the ggml block types as qscope formats (format.h QS_FMT_GGML, f->ggml the type);
 * pack.c's qs_quant_* entry points call these. Packed codes are the rows' ggml blocks
 * back to back, in the effective type for the row length; there are no separate scales. */
int qs_ggml_pack(const struct qs_format *f, const float *w, int rows, int cols, struct qs_packed *p,
                 qs_err *e);
int qs_ggml_unpack(const struct qs_packed *p, float *out, qs_err *e);
/* out may equal w. */
int qs_ggml_fake(const struct qs_format *f, const float *w, int rows, int cols, float *out,
                 qs_err *e);
int qs_ggml_layout(const struct qs_format *f, int rows, int cols, struct qs_packed_layout *out,
                   qs_err *e);

#endif
