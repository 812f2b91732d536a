/* test_half.c - F16/BF16 conversions against references built here from the format definitions
 * (sign, exponent, mantissa -> ldexp), exhaustively over all 65536 codes, and RNE checked at
 * every tie between adjacent codes and on random F32 inputs. numpy's and torch's casts are
 * compared in test_safetensors.c (they come through the fixture file). */
#include "qscope/half.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qscope/common.h"
#include "test.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Value of an IEEE binary16 code, straight from the definition. NaN for NaN codes. */
static double ref_f16(uint16_t h)
{
    int s = h >> 15, ex = (h >> 10) & 31, m = h & 1023;
    double v;
    if (ex == 31)
        v = m ? NAN : INFINITY;
    else if (ex == 0)
        v = ldexp(m, -24); /* subnormal: m * 2^(1-15-10) */
    else
        v = ldexp(1024 + m, ex - 25); /* (1 + m/2^10) * 2^(ex-15) */
    return s ? -v : v;
}

/* Value of a bfloat16 code: 8 exponent bits (bias 127), 7 mantissa bits. */
static double ref_bf16(uint16_t h)
{
    int s = h >> 15, ex = (h >> 7) & 255, m = h & 127;
    double v;
    if (ex == 255)
        v = m ? NAN : INFINITY;
    else if (ex == 0)
        v = ldexp(m, -133); /* m * 2^(1-127-7) */
    else
        v = ldexp(128 + m, ex - 134);
    return s ? -v : v;
}

static void test_f16_to_f32_all_codes(void)
{
    int bad = 0;
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t h = (uint16_t)c;
        float got = qs_f16_to_f32(h);
        double want = ref_f16(h);
        int ok;
        if (isnan(want)) /* NaN: sign kept, payload moved to the top of the F32 mantissa */
            ok = isnan(got) &&
                 bits(got) == (((c & 0x8000u) << 16) | 0x7f800000u | ((c & 0x3ffu) << 13));
        else
            ok = (double)got == want && !!signbit(got) == !!(c & 0x8000u);
        if (!ok && bad++ < 5)
            fprintf(stderr, "  f16 0x%04x -> %.9g (0x%08x), want %.9g\n", (unsigned)c, (double)got,
                    (unsigned)bits(got), want);
    }
    CHECK(bad == 0);
    /* a few landmarks by value */
    CHECK(qs_f16_to_f32(0x3c00) == 1.0f);
    CHECK(qs_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(qs_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(qs_f16_to_f32(0x03ff) == 0x1.ff8p-15f);
    CHECK(qs_f16_to_f32(0x0400) == 0x1p-14f);
    CHECK(qs_f16_to_f32(0xc000) == -2.0f);
    CHECK(isinf(qs_f16_to_f32(0xfc00)) && qs_f16_to_f32(0xfc00) < 0);
}

static void test_bf16_to_f32_all_codes(void)
{
    int bad = 0;
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t h = (uint16_t)c;
        float got = qs_bf16_to_f32(h);
        double want = ref_bf16(h);
        int ok;
        if (isnan(want))
            ok = isnan(got) && bits(got) == c << 16;
        else
            ok = (double)got == want && !!signbit(got) == !!(c & 0x8000u);
        if (!ok && bad++ < 5)
            fprintf(stderr, "  bf16 0x%04x -> %.9g, want %.9g\n", (unsigned)c, (double)got, want);
    }
    CHECK(bad == 0);
    CHECK(qs_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(qs_bf16_to_f32(0x7f7f) == 0x1.fep127f);
    CHECK(qs_bf16_to_f32(0x0001) == 0x1p-133f);
}

/* Every non-NaN code survives code -> float -> code; NaN codes come back quieted. */
static void test_roundtrip_all_codes(void)
{
    int bad16 = 0, badbf = 0;
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t h = (uint16_t)c;
        int nan16 = (c & 0x7c00u) == 0x7c00u && (c & 0x3ffu);
        int nanbf = (c & 0x7f80u) == 0x7f80u && (c & 0x7fu);
        bad16 += qs_f32_to_f16(qs_f16_to_f32(h)) != (nan16 ? (h | 0x200u) : h);
        badbf += qs_f32_to_bf16(qs_bf16_to_f32(h)) != (nanbf ? (h | 0x40u) : h);
    }
    CHECK(bad16 == 0);
    CHECK(badbf == 0);
}

/* For each pair of adjacent finite codes (c, c+1) of the same sign, the F32 midpoint (exact in
 * F32 for both formats) must go to the even code, and one F32 ulp off it to the nearer one. */
static void check_ties(double (*ref)(uint16_t), uint16_t (*conv)(float), uint16_t last_finite,
                       const char *what)
{
    int bad = 0;
    for (uint32_t c = 0; c < last_finite; c++) {
        double lo = ref((uint16_t)c), hi = ref((uint16_t)(c + 1));
        double mid = (lo + hi) / 2;
        float fm = (float)mid;
        if ((double)fm != mid) {
            bad++;
            continue;
        }
        uint16_t even = (c & 1u) ? (uint16_t)(c + 1) : (uint16_t)c;
        float up = nextafterf(fm, INFINITY), down = nextafterf(fm, 0.0f);
        int ok = conv(fm) == even && conv(-fm) == (even | 0x8000u) && conv(up) == c + 1 &&
                 conv(down) == c && conv(-up) == ((c + 1) | 0x8000u);
        if (!ok && bad++ < 5)
            fprintf(stderr, "  %s tie between 0x%04x and 0x%04x: got 0x%04x\n", what, (unsigned)c,
                    (unsigned)c + 1, (unsigned)conv(fm));
    }
    CHECK(bad == 0);
}

static void test_f32_to_f16_ties(void)
{
    check_ties(ref_f16, qs_f32_to_f16, 0x7bff, "f16");
    /* overflow: 65520 is the tie between 65504 (odd code 0x7bff) and 2^16: goes to inf */
    CHECK(qs_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(qs_f32_to_f16(nextafterf(65520.0f, 0)) == 0x7bff);
    CHECK(qs_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(qs_f32_to_f16(-65520.0f) == 0xfc00);
    CHECK(qs_f32_to_f16(1e30f) == 0x7c00);
    CHECK(qs_f32_to_f16(FLT_MAX) == 0x7c00);
    CHECK(qs_f32_to_f16(-INFINITY) == 0xfc00);
    /* underflow: 2^-25 is the tie between 0 and the smallest subnormal */
    CHECK(qs_f32_to_f16(0x1p-25f) == 0x0000);
    CHECK(qs_f32_to_f16(nextafterf(0x1p-25f, 1)) == 0x0001);
    CHECK(qs_f32_to_f16(0x1.8p-24f) == 0x0002); /* 1.5 ulp: tie to even 2 */
    CHECK(qs_f32_to_f16(0x1.4p-23f) == 0x0002); /* 2.5 ulp: tie to even 2 */
    CHECK(qs_f32_to_f16(FLT_TRUE_MIN) == 0x0000);
    CHECK(qs_f32_to_f16(-FLT_TRUE_MIN) == 0x8000);
    CHECK(qs_f32_to_f16(-0.0f) == 0x8000);
    /* largest subnormal rounds up into the smallest normal */
    CHECK(qs_f32_to_f16(nextafterf(0x1p-14f, 0)) == 0x0400);
}

static void test_f32_to_bf16_ties(void)
{
    check_ties(ref_bf16, qs_f32_to_bf16, 0x7f7f, "bf16");
    CHECK(qs_f32_to_bf16(FLT_MAX) == 0x7f80); /* past the largest BF16 + half ulp: inf */
    CHECK(qs_f32_to_bf16(from_bits(0x7f7f7fffu)) == 0x7f7f);
    CHECK(qs_f32_to_bf16(from_bits(0x7f7f8000u)) == 0x7f80); /* tie with odd 0x7f7f -> inf */
    CHECK(qs_f32_to_bf16(-FLT_MAX) == 0xff80);
    CHECK(qs_f32_to_bf16(FLT_TRUE_MIN) == 0x0000);
    CHECK(qs_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80); /* tie -> even */
    CHECK(qs_f32_to_bf16(1.0f + 0x3p-8f) == 0x3f82); /* tie -> even (up) */
}

/* Nearest-value reference for F32 -> F16: binary search in the table of all finite non-negative
 * F16 values, ties to the even code, |x| >= 65520 to inf. */
static uint16_t ref_to_f16(const double *tab, float f)
{
    double a = fabs((double)f);
    uint16_t s = signbit(f) ? 0x8000 : 0;
    if (a >= 65520.0)
        return s | 0x7c00;
    int lo = 0, hi = 0x7bff; /* tab[lo] <= a < tab[hi] or a == max */
    if (a >= tab[hi])
        return s | (uint16_t)hi;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (tab[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - tab[lo], dh = tab[hi] - a;
    int c = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
    return s | (uint16_t)c;
}

static void test_f32_to_f16_random(void)
{
    static double tab[0x7c00];
    for (int c = 0; c < 0x7c00; c++)
        tab[c] = ref_f16((uint16_t)c);
    qs_rng r;
    qs_rng_seed(&r, 42);
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)qs_rng_u64(&r);
        /* half the draws near the F16 range, where the rounding matters */
        if (i & 1)
            u = (u & 0x807fffffu) | ((uint32_t)(100 + qs_rng_below(&r, 45)) << 23);
        float f = from_bits(u);
        if (isnan(f))
            continue;
        uint16_t got = qs_f32_to_f16(f), want = ref_to_f16(tab, f);
        if (got != want && bad++ < 5)
            fprintf(stderr, "  f32 0x%08x: got 0x%04x want 0x%04x\n", (unsigned)u, (unsigned)got,
                    (unsigned)want);
    }
    CHECK(bad == 0);
}

static void test_nan(void)
{
    CHECK(qs_f32_to_f16(from_bits(0x7fc00000u)) == 0x7e00);
    CHECK(qs_f32_to_f16(from_bits(0xffc00001u)) == 0xfe00);
    CHECK(qs_f32_to_f16(from_bits(0x7f800001u)) == 0x7e00); /* signalling, low payload: quieted */
    CHECK(qs_f32_to_f16(from_bits(0x7fa00000u)) == 0x7f00); /* top payload bits kept */
    CHECK(qs_f32_to_bf16(from_bits(0x7fc00000u)) == 0x7fc0);
    CHECK(qs_f32_to_bf16(from_bits(0xff800001u)) == 0xffc0); /* would truncate to -inf */
    CHECK(qs_f32_to_bf16(from_bits(0x7fa00000u)) == 0x7fe0);
    CHECK(qs_f32_to_bf16(from_bits(0x7fffffffu)) == 0x7fff); /* no rounding carry into sign */
    CHECK(isnan(qs_f16_to_f32(qs_f32_to_f16(NAN))));
    CHECK(isnan(qs_bf16_to_f32(qs_f32_to_bf16(-NAN))) && signbit(qs_bf16_to_f32(0xffc0)));
    CHECK(qs_f32_to_f16(INFINITY) == 0x7c00 && qs_f32_to_bf16(INFINITY) == 0x7f80);
}

static void test_array_forms_unaligned(void)
{
    float src[5] = {1.0f, -2.5f, 65504.0f, 0x1p-24f, 3.140625f}, back[5];
    unsigned char buf[1 + 10];
    qs_f32_to_f16_n(src, buf + 1, 5);        /* odd address */
    CHECK(buf[1] == 0x00 && buf[2] == 0x3c); /* 1.0 = 0x3c00, little-endian */
    qs_f16_to_f32_n(buf + 1, back, 5);
    for (int i = 0; i < 5; i++)
        CHECK(back[i] == src[i]);
    qs_f32_to_bf16_n(src, buf + 1, 5);
    CHECK(buf[1] == 0x80 && buf[2] == 0x3f); /* 1.0 = 0x3f80 */
    qs_bf16_to_f32_n(buf + 1, back, 5);
    CHECK(back[0] == 1.0f && back[1] == -2.5f && back[2] == 65536.0f && back[3] == 0x1p-24f);
    CHECK(back[4] == 3.140625f);
}

TEST_MAIN("half", TEST_CASE(test_f16_to_f32_all_codes), TEST_CASE(test_bf16_to_f32_all_codes),
          TEST_CASE(test_roundtrip_all_codes), TEST_CASE(test_f32_to_f16_ties),
          TEST_CASE(test_f32_to_bf16_ties), TEST_CASE(test_f32_to_f16_random), TEST_CASE(test_nan),
          TEST_CASE(test_array_forms_unaligned))
