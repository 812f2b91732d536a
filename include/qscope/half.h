/* half.h - exact conversions between F32 and the 16-bit float formats stored in model files:
 * IEEE 754 binary16 (F16: 1 sign, 5 exponent bits bias 15, 10 mantissa bits) and bfloat16 (BF16:
 * the top 16 bits of a binary32). Pure integer code: the results do not depend on the FPU
 * rounding mode or on flush-to-zero settings. */
#ifndef QSCOPE_HALF_H
#define QSCOPE_HALF_H

#include <stddef.h>
#include <stdint.h>

/* F16 code -> float. Exact for every code: subnormals, +-0, +-inf; a NaN keeps its sign and its
 * payload (shifted into the top of the F32 mantissa). */
float qs_f16_to_f32(uint16_t h);

/* BF16 code -> float. Exact (the code is the top half of the F32 bits). */
float qs_bf16_to_f32(uint16_t h);

/* float -> F16, round to nearest, ties to even. Magnitudes >= 65520 become +-inf; results below
 * 2^-14 become subnormals (or +-0). A NaN stays a NaN of the same sign, quieted, keeping the top
 * 9 payload bits. */
uint16_t qs_f32_to_f16(float f);

/* float -> BF16, round to nearest, ties to even; finite values past the BF16 range become +-inf.
 * A NaN stays a NaN of the same sign (quieted, top payload bits kept). */
uint16_t qs_f32_to_bf16(float f);

/* Array forms. src may be unaligned; it holds n little-endian 16-bit codes (2n bytes). */
void qs_f16_to_f32_n(const void *src, float *dst, size_t n);
void qs_bf16_to_f32_n(const void *src, float *dst, size_t n);
/* dst may be unaligned; it receives n little-endian 16-bit codes. */
void qs_f32_to_f16_n(const float *src, void *dst, size_t n);
void qs_f32_to_bf16_n(const float *src, void *dst, size_t n);

#endif
