/* half.c - F16/BF16 <-> F32 by integer bit manipulation (see half.h for the contracts). */
#include "qscope/half.h"

#include <string.h>

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float qs_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN: the payload moves to the top of the F32 mantissa */
        return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0)
        return f32_from_bits(sign);
    /* subnormal man * 2^-24: normalise so the leading 1 sits at bit 10 */
    uint32_t e = 113;
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return f32_from_bits(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

float qs_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t qs_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        if (ax == 0x7f800000u)
            return sign | 0x7c00u;
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); /* quiet NaN, top payload */
    }
    if (ax >= 0x477ff000u) /* >= 65520 = 65504 + half an ulp: the tie goes to even, i.e. inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) {            /* >= 2^-14: a normal F16 */
        uint32_t v = ax - 0x38000000u;  /* rebias 127 -> 15 */
        v += 0xfffu + ((v >> 13) & 1u); /* RNE on the 13 dropped bits; a carry bumps the exponent */
        return (uint16_t)(sign | (v >> 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: rounds (ties to even) to 0 */
        return sign;
    /* subnormal result: code = value / 2^-24 = m * 2^(e - 150 + 24), m the 24-bit significand */
    uint32_t e = ax >> 23; /* 102..112 */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++; /* may reach 0x400, which is exactly the smallest normal code */
    return (uint16_t)(sign | q);
}

uint16_t qs_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x0040u); /* keep it a NaN even if the payload was low */
    x += 0x7fffu + ((x >> 16) & 1u); /* RNE; overflow of the largest finite values gives inf */
    return (uint16_t)(x >> 16);
}

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void wr16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v & 0xffu);
    p[1] = (unsigned char)(v >> 8);
}

void qs_f16_to_f32_n(const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = qs_f16_to_f32(rd16(p + 2 * i));
}

void qs_bf16_to_f32_n(const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = qs_bf16_to_f32(rd16(p + 2 * i));
}

void qs_f32_to_f16_n(const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    for (size_t i = 0; i < n; i++)
        wr16(p + 2 * i, qs_f32_to_f16(src[i]));
}

void qs_f32_to_bf16_n(const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    for (size_t i = 0; i < n; i++)
        wr16(p + 2 * i, qs_f32_to_bf16(src[i]));
}
