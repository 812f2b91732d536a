/* test_format.c - element formats: names, every code of every <= 8-bit format against tables
 * written here from the specifications, and the casts (ties to even, subnormals, signed zero,
 * saturation, overflow).
 *
 * Sources of the expected values:
 *   OCP 8-bit Floating Point Specification (OFP8) rev 1.0, tables of E4M3 / E5M2 (max normal,
 *     min normal, min subnormal, NaN / Inf encodings);
 *   OCP Microscaling Formats (MX) v1.0, section 5.3 (FP6 E2M3 / E3M2, FP4 E2M1 values, no Inf/NaN)
 *     and 5.4 (MXINT8: two's complement with implicit scale 2^-6);
 *   ml_dtypes float8_e3m4 (bias 3, IEEE-like, max 15.5);
 *   QLoRA (Dettmers et al. 2023) NF4 levels;
 *   REFERENCES.md for qscope's own eXmY[bZ] (all codes finite) and e0m7 (k/128).
 * The independent decoder below is written from those definitions with pow() and a fraction
 * form, unlike the library's ldexp/integer form. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/half.h"
#include "test.h"

enum { NF_NONE, NF_E4M3, NF_IEEE };

/* value = (-1)^s * 2^(E - bias) * (1 + M / 2^m), subnormal (E = 0): 2^(1 - bias) * (M / 2^m) */
static double ref_float(unsigned code, int e, int m, int bias, int nf)
{
    int s = (code >> (e + m)) & 1;
    unsigned ef = (code >> m) & ((1u << e) - 1u), mf = code & ((1u << m) - 1u);
    unsigned etop = (1u << e) - 1u, mtop = (1u << m) - 1u;
    double frac = mf / pow(2.0, m), v;
    if (nf == NF_IEEE && ef == etop)
        v = mf == 0 ? INFINITY : NAN;
    else if (nf == NF_E4M3 && ef == etop && mf == mtop)
        v = NAN;
    else if (ef == 0)
        v = pow(2.0, 1 - bias) * frac;
    else
        v = pow(2.0, (double)ef - bias) * (1.0 + frac);
    return s ? -v : v;
}

static int same_value(double a, double b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return a == b && signbit(a) == signbit(b);
}

static struct qs_format fmt(const char *name)
{
    struct qs_format f;
    qs_err e;
    memset(&f, 0, sizeof f);
    if (qs_format_parse(name, &f, &e) < 0)
        fprintf(stderr, "  parse %s: %s\n", name, e.msg);
    return f;
}

/* Every code of f against ref_float, through both qs_format_decode and qs_format_codes. */
static void check_float_codes(const char *name, int e, int m, int bias, int nf)
{
    struct qs_format f = fmt(name);
    double *v = NULL;
    int n = 0;
    qs_err err;
    CHECK(qs_format_codes(&f, &v, &n, &err) == 0);
    CHECK(n == 1 << (1 + e + m));
    CHECK(f.bits == 1 + e + m);
    int bad = 0;
    for (int c = 0; c < n; c++) {
        double r = ref_float((unsigned)c, e, m, bias, nf);
        if (!same_value(v[c], r) || !same_value(qs_format_decode(&f, (uint32_t)c), r)) {
            if (bad++ < 4)
                fprintf(stderr, "  %s code 0x%02x: got %.9g want %.9g\n", name, c, v[c], r);
        }
    }
    CHECK(bad == 0);
    free(v);
}

static void test_codes_ofp8(void)
{
    check_float_codes("fp8-e4m3", 4, 3, 7, NF_E4M3);
    check_float_codes("fp8-e5m2", 5, 2, 15, NF_IEEE);
    check_float_codes("fp8-e3m4", 3, 4, 3, NF_IEEE);
    struct qs_format f = fmt("fp8-e4m3");
    /* OFP8 rev 1.0, E4M3 */
    CHECK(qs_format_decode(&f, 0x7e) == 448.0);
    CHECK(qs_format_decode(&f, 0xfe) == -448.0);
    CHECK(qs_format_decode(&f, 0x08) == 0.015625);        /* min normal 2^-6 */
    CHECK(qs_format_decode(&f, 0x01) == 0.001953125);     /* min subnormal 2^-9 */
    CHECK(qs_format_decode(&f, 0x07) == 7 * 0.001953125); /* max subnormal */
    CHECK(qs_format_decode(&f, 0x38) == 1.0);
    CHECK(qs_format_decode(&f, 0x77) == 240.0);
    CHECK(qs_format_decode(&f, 0x78) == 256.0); /* the top exponent holds normal numbers */
    CHECK(isnan(qs_format_decode(&f, 0x7f)) && isnan(qs_format_decode(&f, 0xff)));
    CHECK(qs_format_decode(&f, 0x80) == 0.0 && signbit(qs_format_decode(&f, 0x80)));
    CHECK(qs_format_max(&f) == 448.0);
    int nans = 0;
    for (uint32_t c = 0; c < 256; c++)
        nans += isnan(qs_format_decode(&f, c)) != 0;
    CHECK(nans == 2); /* only S.1111.111 */
    /* E5M2 */
    f = fmt("fp8-e5m2");
    CHECK(qs_format_decode(&f, 0x7b) == 57344.0);
    CHECK(qs_format_decode(&f, 0x7c) == INFINITY && qs_format_decode(&f, 0xfc) == -INFINITY);
    CHECK(isnan(qs_format_decode(&f, 0x7d)) && isnan(qs_format_decode(&f, 0x7e)) &&
          isnan(qs_format_decode(&f, 0x7f)));
    CHECK(qs_format_decode(&f, 0x04) == ldexp(1, -14));
    CHECK(qs_format_decode(&f, 0x01) == ldexp(1, -16));
    CHECK(qs_format_decode(&f, 0x3c) == 1.0);
    CHECK(qs_format_max(&f) == 57344.0);
    /* E3M4 (ml_dtypes float8_e3m4) */
    f = fmt("fp8-e3m4");
    CHECK(qs_format_decode(&f, 0x6f) == 15.5);
    CHECK(qs_format_decode(&f, 0x70) == INFINITY);
    CHECK(isnan(qs_format_decode(&f, 0x71)));
    CHECK(qs_format_decode(&f, 0x10) == 0.25);
    CHECK(qs_format_decode(&f, 0x01) == 0.015625);
    CHECK(qs_format_decode(&f, 0x30) == 1.0);
}

static void test_codes_mx_elements(void)
{
    check_float_codes("fp6-e2m3", 2, 3, 1, NF_NONE);
    check_float_codes("fp6-e3m2", 3, 2, 3, NF_NONE);
    check_float_codes("fp4-e2m1", 2, 1, 1, NF_NONE);
    check_float_codes("mxfp8", 4, 3, 7, NF_E4M3);
    check_float_codes("mxfp8-e5m2", 5, 2, 15, NF_IEEE);
    check_float_codes("mxfp6", 2, 3, 1, NF_NONE);
    check_float_codes("mxfp6-e3m2", 3, 2, 3, NF_NONE);
    check_float_codes("mxfp4", 2, 1, 1, NF_NONE);
    check_float_codes("nvfp4", 2, 1, 1, NF_NONE);
    /* OCP MX v1.0 5.3: FP6 E2M3 max 7.5, min normal 1.0, min subnormal 0.125 */
    struct qs_format f = fmt("fp6-e2m3");
    CHECK(qs_format_decode(&f, 0x1f) == 7.5 && qs_format_decode(&f, 0x08) == 1.0 &&
          qs_format_decode(&f, 0x01) == 0.125 && qs_format_decode(&f, 0x3f) == -7.5);
    f = fmt("fp6-e3m2"); /* max 28, min normal 0.25, min subnormal 0.0625 */
    CHECK(qs_format_decode(&f, 0x1f) == 28.0 && qs_format_decode(&f, 0x04) == 0.25 &&
          qs_format_decode(&f, 0x01) == 0.0625);
    /* FP4 E2M1: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6} */
    static const double e2m1[16] = {0,    0.5,  1,  1.5,  2,  3,  4,  6,
                                    -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
    f = fmt("fp4-e2m1");
    for (uint32_t c = 0; c < 16; c++)
        CHECK(same_value(qs_format_decode(&f, c), e2m1[c]));
    f = fmt("mxfp4");
    for (uint32_t c = 0; c < 16; c++)
        CHECK(same_value(qs_format_decode(&f, c), e2m1[c]));
    /* no Inf/NaN anywhere in FP6/FP4 */
    const char *nofin[] = {"fp6-e2m3", "fp6-e3m2", "fp4-e2m1"};
    for (int i = 0; i < 3; i++) {
        f = fmt(nofin[i]);
        for (uint32_t c = 0; c < (1u << f.bits); c++)
            CHECK(isfinite(qs_format_decode(&f, c)));
    }
    /* MXINT8: two's complement k * 2^-6, values in [-2, 2 - 2^-6] */
    f = fmt("mxint8");
    CHECK(f.bits == 8);
    for (uint32_t c = 0; c < 256; c++) {
        int k = c < 128 ? (int)c : (int)c - 256;
        CHECK(qs_format_decode(&f, c) == k / 64.0);
    }
    CHECK(qs_format_decode(&f, 0x80) == -2.0 && qs_format_decode(&f, 0x7f) == 2.0 - 1.0 / 64);
}

static void test_codes_generic_and_fixed(void)
{
    check_float_codes("e3m4b1", 3, 4, 1, NF_NONE);
    check_float_codes("e4m3", 4, 3, 7, NF_NONE);
    check_float_codes("e5m2", 5, 2, 15, NF_NONE);
    check_float_codes("e2m5b0", 2, 5, 0, NF_NONE);
    check_float_codes("e1m6", 1, 6, 0, NF_NONE);
    check_float_codes("e7m0", 7, 0, 63, NF_NONE);
    check_float_codes("e3m0b2", 3, 0, 2, NF_NONE);
    check_float_codes("e6m1b40", 6, 1, 40, NF_NONE);
    /* REFERENCES.md: E3M4 with bias 1 spans 1/16 ... 124 */
    struct qs_format f = fmt("e3m4b1");
    CHECK(qs_format_decode(&f, 0x01) == 1.0 / 16 && qs_format_decode(&f, 0x7f) == 124.0);
    CHECK(qs_format_max(&f) == 124.0);
    double lo = INFINITY;
    for (uint32_t c = 1; c < 128; c++)
        lo = fmin(lo, qs_format_decode(&f, c));
    CHECK(lo == 1.0 / 16);
    /* generic E4M3 has every code finite: its max is 480, not OFP8's 448 */
    f = fmt("e4m3");
    CHECK(qs_format_max(&f) == 480.0 && qs_format_decode(&f, 0x7f) == 480.0);
    /* e0m7: sign-magnitude fixed point k/128 */
    f = fmt("e0m7");
    CHECK(f.kind == QS_FMT_FIXED && f.bits == 8);
    for (uint32_t c = 0; c < 256; c++) {
        double k = (double)(c & 127) / 128.0;
        CHECK(same_value(qs_format_decode(&f, c), (c & 128) ? -k : k));
    }
    CHECK(qs_format_max(&f) == 127.0 / 128.0);
}

static void test_codes_int(void)
{
    char name[8];
    for (int b = 2; b <= 8; b++) {
        snprintf(name, sizeof name, "int%d", b);
        struct qs_format f = fmt(name);
        CHECK(f.kind == QS_FMT_INT && f.bits == b);
        double *v;
        int n;
        qs_err e;
        CHECK(qs_format_codes(&f, &v, &n, &e) == 0);
        CHECK(n == 1 << b);
        for (int c = 0; c < n; c++) /* two's complement */
            CHECK(v[c] == (c < n / 2 ? c : c - n));
        free(v);
        CHECK(qs_format_max(&f) == (1 << (b - 1)) - 1);
    }
}

static void test_codes_nf4(void)
{
    /* QLoRA NF4, code order = ascending */
    static const double lv[16] = {-1.0,
                                  -0.6961928009986877,
                                  -0.5250730514526367,
                                  -0.39491748809814453,
                                  -0.28444138169288635,
                                  -0.18477343022823334,
                                  -0.09105003625154495,
                                  0.0,
                                  0.07958029955625534,
                                  0.16093020141124725,
                                  0.24611230194568634,
                                  0.33791524171829224,
                                  0.44070982933044434,
                                  0.5626170039176941,
                                  0.7229568362236023,
                                  1.0};
    struct qs_format f = fmt("nf4");
    CHECK(f.bits == 4 && f.kind == QS_FMT_NF4);
    for (uint32_t c = 0; c < 16; c++) {
        CHECK(fabs(qs_format_decode(&f, c) - lv[c]) <= 1e-7);
        CHECK(qs_format_decode(&f, c) == (double)(float)lv[c]);
        /* nearest level: exact levels map to themselves, points beside them too */
        CHECK(qs_format_cast(&f, lv[c], 1) == (double)(float)lv[c]);
        CHECK(qs_format_cast(&f, lv[c] + 0.01, 1) == (double)(float)lv[c] || c == 15);
    }
    CHECK(qs_format_cast(&f, 5.0, 1) == 1.0 && qs_format_cast(&f, -5.0, 1) == -1.0);
    /* nearest: 0.5 lies between 0.4407 and 0.5626 (midpoint 0.5017), nearer the first */
    CHECK(qs_format_cast(&f, 0.5, 1) == (double)0.44070982933044434f);
    CHECK(qs_format_cast(&f, 0.502, 1) == (double)0.5626170039176941f);
    CHECK(qs_format_cast(&f, 0.03, 1) == 0.0);
    CHECK(qs_format_cast(&f, 0.05, 1) == (double)0.07958029955625534f);
}

static void test_codes_compand(void)
{
    for (int b = 2; b <= 8; b++) {
        char name[16];
        snprintf(name, sizeof name, "compand:%d", b);
        struct qs_format f = fmt(name);
        CHECK(f.kind == QS_FMT_COMPAND && f.bits == b);
        int q = (1 << (b - 1)) - 1;
        for (int k = 0; k <= q; k++) {
            /* mu-law expansion, mu = 255: ((1 + mu)^(k/Q) - 1) / mu */
            double want = (pow(256.0, (double)k / q) - 1.0) / 255.0;
            double got = qs_format_decode(&f, (uint32_t)k);
            CHECK(fabs(got - want) <= 1e-6 * fmax(want, 1e-3));
            CHECK(same_value(qs_format_decode(&f, (uint32_t)(k | (1 << (b - 1)))), -got));
            CHECK(qs_format_cast(&f, got, 1) == got); /* levels are fixed points of the cast */
            if (k > 0)                                /* monotone */
                CHECK(got > qs_format_decode(&f, (uint32_t)(k - 1)));
        }
        CHECK(qs_format_decode(&f, (uint32_t)q) == 1.0);
        CHECK(qs_format_cast(&f, 3.0, 1) == 1.0);
    }
    /* companding: compand:8 resolves small values far better than int8 at the same range */
    struct qs_format c8 = fmt("compand:8");
    CHECK(fabs(qs_format_cast(&c8, 0.001, 1) - 0.001) < 1e-4);
}

/* ---- casts ---------------------------------------------------------------------------- */

static void test_cast_ties_to_even(void)
{
    struct qs_format f = fmt("fp8-e4m3");
    CHECK(qs_format_cast(&f, 1.0625, 1) == 1.0);  /* 1 | 1.125: even mantissa 000 */
    CHECK(qs_format_cast(&f, 1.1875, 1) == 1.25); /* 1.125 | 1.25: even 010 */
    CHECK(qs_format_cast(&f, 17.0, 1) == 16.0);
    CHECK(qs_format_cast(&f, 19.0, 1) == 20.0);
    CHECK(qs_format_cast(&f, 1.0625000001, 1) == 1.125); /* just above the tie */
    CHECK(qs_format_cast(&f, 1.0624999999, 1) == 1.0);
    CHECK(qs_format_cast(&f, -1.1875, 1) == -1.25);
    /* subnormal ties: 2^-10 between 0 and 2^-9; 3*2^-10 between 2^-9 (M=1) and 2^-8 (M=2) */
    CHECK(qs_format_cast(&f, ldexp(1, -10), 1) == 0.0);
    CHECK(qs_format_cast(&f, ldexp(3, -10), 1) == ldexp(1, -8));
    CHECK(qs_format_cast(&f, ldexp(5, -10), 1) == ldexp(1, -8));
    /* 7.5 * 2^-9: between the largest subnormal (M=7) and the smallest normal 2^-6 */
    CHECK(qs_format_cast(&f, 7.5 * ldexp(1, -9), 1) == ldexp(1, -6));
    f = fmt("fp8-e5m2");
    CHECK(qs_format_cast(&f, 1.125, 1) == 1.0); /* 1 | 1.25 */
    CHECK(qs_format_cast(&f, 1.375, 1) == 1.5);
    CHECK(qs_format_cast(&f, ldexp(1, -17), 1) == 0.0);
    CHECK(qs_format_cast(&f, ldexp(3, -17), 1) == ldexp(1, -15));
    f = fmt("fp4-e2m1");
    CHECK(qs_format_cast(&f, 0.25, 1) == 0.0);
    CHECK(qs_format_cast(&f, 0.75, 1) == 1.0);
    CHECK(qs_format_cast(&f, 1.25, 1) == 1.0);
    CHECK(qs_format_cast(&f, 1.75, 1) == 2.0);
    CHECK(qs_format_cast(&f, 2.5, 1) == 2.0);
    CHECK(qs_format_cast(&f, 3.5, 1) == 4.0);
    CHECK(qs_format_cast(&f, 5.0, 1) == 4.0);
    CHECK(qs_format_cast(&f, 5.01, 1) == 6.0);
    f = fmt("int4");
    CHECK(qs_format_cast(&f, 2.5, 1) == 2.0 && qs_format_cast(&f, 3.5, 1) == 4.0);
    CHECK(qs_format_cast(&f, -2.5, 1) == -2.0 && qs_format_cast(&f, 100, 1) == 7.0);
    CHECK(qs_format_cast(&f, -100, 1) == -7.0);
    f = fmt("e0m7");
    CHECK(qs_format_cast(&f, 1.5 / 128, 1) == 2.0 / 128);
    CHECK(qs_format_cast(&f, 2.5 / 128, 1) == 2.0 / 128);
    CHECK(qs_format_cast(&f, 3.0, 1) == 127.0 / 128);
    /* no mantissa: the tie goes to the even code (exponent field LSB) */
    f = fmt("e3m0b2"); /* values 2^(E-2): 0.5 (E=1), 1 (E=2), 2 (E=3), ... */
    CHECK(qs_format_cast(&f, 0.75, 1) == 1.0); /* 0.5 (E=1) | 1 (E=2) */
    CHECK(qs_format_cast(&f, 1.5, 1) == 1.0);  /* 1 (E=2) | 2 (E=3) */
    CHECK(qs_format_cast(&f, 3.0, 1) == 4.0);  /* 2 (E=3) | 4 (E=4) */
    CHECK(qs_format_cast(&f, 0.25, 1) == 0.0); /* 0 | 0.5 (E=1) */
}

static void test_cast_signed_zero_and_sat(void)
{
    struct qs_format f = fmt("fp8-e4m3");
    double z = qs_format_cast(&f, -0.0, 1);
    CHECK(z == 0.0 && signbit(z));
    z = qs_format_cast(&f, -ldexp(1, -11), 1); /* underflows to -0 */
    CHECK(z == 0.0 && signbit(z));
    CHECK(!signbit(qs_format_cast(&f, ldexp(1, -11), 1)));
    /* saturating */
    CHECK(qs_format_cast(&f, 1000.0, 1) == 448.0 && qs_format_cast(&f, -1000.0, 1) == -448.0);
    CHECK(qs_format_cast(&f, INFINITY, 1) == 448.0);
    CHECK(qs_format_cast(&f, 449.0, 1) == 448.0);
    /* non-saturating E4M3: overflow is NaN; 464 is the tie 448 | "480" and goes to even 448 */
    CHECK(isnan(qs_format_cast(&f, 1000.0, 0)));
    CHECK(qs_format_cast(&f, 464.0, 0) == 448.0);
    CHECK(isnan(qs_format_cast(&f, 464.01, 0)));
    CHECK(isnan(qs_format_cast(&f, -1e30, 0)) && signbit(qs_format_cast(&f, -1e30, 0)));
    CHECK(isnan(qs_format_cast(&f, NAN, 1)));
    /* E5M2: overflow is Inf; 61440 is the tie 57344 | 65536 and goes to even (Inf) */
    f = fmt("fp8-e5m2");
    CHECK(qs_format_cast(&f, 1e6, 0) == INFINITY && qs_format_cast(&f, -1e6, 0) == -INFINITY);
    CHECK(qs_format_cast(&f, 61440.0, 0) == INFINITY);
    CHECK(qs_format_cast(&f, 61439.0, 0) == 57344.0);
    CHECK(qs_format_cast(&f, 1e6, 1) == 57344.0);
    CHECK(qs_format_cast(&f, INFINITY, 0) == INFINITY);
    f = fmt("fp8-e3m4");
    CHECK(qs_format_cast(&f, 15.75, 0) == INFINITY && qs_format_cast(&f, 15.75, 1) == 15.5);
    /* formats without Inf/NaN always saturate */
    f = fmt("fp4-e2m1");
    CHECK(qs_format_cast(&f, 100.0, 0) == 6.0 && qs_format_cast(&f, -100.0, 0) == -6.0);
    f = fmt("e3m4b1");
    CHECK(qs_format_cast(&f, 1e9, 0) == 124.0);
    CHECK(qs_format_cast(&f, 1.0 / 32, 1) == 0.0);      /* tie 0 | 1/16 -> even 0 */
    CHECK(qs_format_cast(&f, 3.0 / 32, 1) == 2.0 / 16); /* tie 1/16 | 2/16 -> 2/16 */
    /* int codes have no negative zero */
    f = fmt("int8");
    CHECK(!signbit(qs_format_cast(&f, -0.2, 1)));
    /* MX element casts: mxint8 k/64 with k in +-127 */
    f = fmt("mxint8");
    CHECK(qs_format_cast(&f, 1.0 / 128, 1) == 0.0 && qs_format_cast(&f, 3.0 / 128, 1) == 2.0 / 64);
    CHECK(qs_format_cast(&f, 5.0, 1) == 127.0 / 64 && qs_format_cast(&f, -5.0, 1) == -127.0 / 64);
    f = fmt("mxfp8");
    CHECK(qs_format_cast(&f, 1000.0, 1) == 448.0);
}

/* The vectorized F32 kernel (qs_quant_fake with scale=none) against the scalar reference cast on
 * random values over the whole range, on every midpoint between consecutive codes and on the
 * F32 neighbours of those midpoints. */
static void kernel_vs_ref(const char *name, int sat)
{
    struct qs_format f = fmt(name);
    struct qs_qopts o;
    qs_err e;
    qs_qopts_default(&o);
    o.scale_none = 1;
    o.saturate = sat;
    double *codes;
    int nc;
    if (qs_format_codes(&f, &codes, &nc, &e) < 0) {
        CHECK(0);
        return;
    }
    int cap = 4 * nc + 4096;
    float *x = malloc((size_t)cap * sizeof *x), *y = malloc((size_t)cap * sizeof *y);
    int n = 0;
    /* positive finite codes sorted: for a sign-magnitude format, codes 0 .. nc/2 - 1 ascend */
    double prev = -1.0;
    for (int c = 0; c < nc / 2; c++) {
        double v = codes[c];
        if (!isfinite(v))
            continue;
        x[n++] = (float)v;
        x[n++] = (float)-v;
        if (prev >= 0.0) {
            float mid = (float)((prev + v) / 2); /* exact: one more bit than the format */
            x[n++] = mid;
            x[n++] = nextafterf(mid, INFINITY);
            x[n++] = nextafterf(mid, -INFINITY);
            x[n++] = -mid;
        }
        prev = v;
    }
    qs_rng g;
    qs_rng_seed(&g, 7);
    double mx = qs_format_max(&f);
    while (n < cap - 8) {
        double u = qs_rng_uniform(&g) * 2.0 - 1.0;
        double mag = ldexp(1.0, (int)(qs_rng_below(&g, 60)) - 40) * mx;
        x[n++] = (float)(u * mag);
    }
    x[n++] = 0.0f;
    x[n++] = -0.0f;
    x[n++] = FLT_MAX;
    x[n++] = -FLT_MAX;
    x[n++] = (float)ldexp(1, -149);
    CHECK(qs_quant_fake(&f, &o, x, 1, n, y, &e) == 0);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        double r = qs_format_cast(&f, x[i], sat);
        if (!same_value((double)y[i], r)) {
            if (bad++ < 4)
                fprintf(stderr, "  %s sat=%d: x=%.9g kernel %.9g reference %.9g\n", name, sat,
                        (double)x[i], (double)y[i], r);
        }
    }
    CHECK(bad == 0);
    free(codes);
    free(x);
    free(y);
}

static void test_cast_kernel_matches_reference(void)
{
    static const char *const all[] = {
        "fp8-e4m3", "fp8-e5m2", "fp8-e3m4", "fp6-e2m3", "fp6-e3m2", "fp4-e2m1", "e0m7",   "e3m4b1",
        "e4m3",     "e5m2",     "e1m0",     "e2m0",     "e3m0b2",   "e7m0",     "e1m6",   "e5m10",
        "e6m9b20",  "e7m3",     "e2m10b0",  "e4m10",    "e0m3",     "e0m15",    "e3m4b11"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kernel_vs_ref(all[i], 1);
    kernel_vs_ref("fp8-e4m3", 0);
    kernel_vs_ref("fp8-e5m2", 0);
    kernel_vs_ref("fp8-e3m4", 0);
}

/* ---- names and parsing --------------------------------------------------------------------- */

static void test_parse_names(void)
{
    const char *const *names = qs_format_names();
    int n = 0;
    for (; names[n]; n++) {
        struct qs_format f;
        qs_err e;
        CHECK(qs_format_parse(names[n], &f, &e) == 0);
        CHECK_STR(f.name, names[n]);
    }
    CHECK(n >= 24);
    struct qs_format f = fmt("e3m4b1");
    CHECK(f.kind == QS_FMT_MINIFLOAT && f.ebits == 3 && f.mbits == 4 && f.bias == 1 &&
          f.nf == QS_NF_NONE && f.bits == 8);
    CHECK_STR(f.name, "e3m4b1");
    CHECK_STR(fmt("e3m4b3").name, "e3m4"); /* default bias is not spelled out */
    CHECK_STR(fmt("e2m1").name, "fp4-e2m1");
    CHECK_STR(fmt("e2m3b1").name, "fp6-e2m3");
    CHECK_STR(fmt("e3m2").name, "fp6-e3m2");
    CHECK_STR(fmt("e4m3").name, "e4m3"); /* differs from fp8-e4m3 (no NaN, max 480) */
    CHECK_STR(fmt("compand:5").name, "compand:5");
    f = fmt("mxfp8");
    CHECK(f.kind == QS_FMT_MX && f.block == 32 && f.ebits == 4 && f.mbits == 3 && f.bits == 8);
    f = fmt("mxfp6");
    CHECK(f.ebits == 2 && f.mbits == 3 && f.bits == 6);
    f = fmt("nvfp4");
    CHECK(f.kind == QS_FMT_NVFP4 && f.block == 16 && f.bits == 4);
    f = fmt("none");
    CHECK(f.kind == QS_FMT_NONE);
    f = fmt("e5m10");
    CHECK(f.bits == 16 && f.bias == 15);
}

static void test_parse_errors(void)
{
    struct qs_format f;
    qs_err e;
    CHECK(qs_format_parse("int9", &f, &e) < 0);
    CHECK_STR(e.msg, "unknown format 'int9': bit width must be 2..8");
    CHECK(qs_format_parse("int1", &f, &e) < 0 && strstr(e.msg, "bit width must be 2..8"));
    CHECK(qs_format_parse("fp7", &f, &e) < 0);
    CHECK(strstr(e.msg, "unknown format 'fp7'") && strstr(e.msg, "int4") && strstr(e.msg, "nf4") &&
          strstr(e.msg, "mxfp4"));
    CHECK(qs_format_parse("", &f, &e) < 0);
    CHECK(qs_format_parse("e9m2", &f, &e) < 0 && strstr(e.msg, "X in 1..8"));
    CHECK(qs_format_parse("e5m10", &f, &e) == 0 && f.bits == 16); /* the limits */
    CHECK(qs_format_parse("e4m11", &f, &e) < 0);
    CHECK(qs_format_parse("e6m10", &f, &e) < 0);
    CHECK(qs_format_parse("e3m12", &f, &e) < 0);
    CHECK(qs_format_parse("e8m3", &f, &e) < 0 && strstr(e.msg, "F32"));
    CHECK(qs_format_parse("e3m4b200", &f, &e) < 0 && strstr(e.msg, "bias"));
    CHECK(qs_format_parse("e0m7b1", &f, &e) < 0);
    CHECK(qs_format_parse("compand:9", &f, &e) < 0 && strstr(e.msg, "2..8"));
    CHECK(qs_format_parse("compand:1", &f, &e) < 0);
    CHECK(qs_format_parse("INT4", &f, &e) < 0);
    CHECK(qs_format_parse("int4x", &f, &e) < 0);
    CHECK(qs_format_parse("e3m", &f, &e) < 0);
    double *v;
    int n;
    f = fmt("none");
    CHECK(qs_format_codes(&f, &v, &n, &e) < 0);
}

/* ---- options ------------------------------------------------------------------------------ */

static void test_options(void)
{
    struct qs_qopts o;
    qs_err e;
    char buf[200];
    qs_qopts_default(&o);
    CHECK(o.gran == QS_GRAN_TENSOR && o.clip == QS_CLIP_MAX && !o.asym && !o.full_range &&
          o.round == QS_ROUND_NEAREST && o.saturate == 1 && !o.scale_none && !o.scale_f32);
    struct qs_format i4 = fmt("int4");
    qs_qopts_format(&i4, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=tensor clip=max round=nearest range=restricted sym scale=f16");
    CHECK(qs_qopts_parse_token(&o, "gran=group:32", &e) == 0 && o.group == 32 && o.gran_set);
    qs_qopts_format(&i4, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=group:32 clip=max round=nearest range=restricted sym scale=f16");
    CHECK(qs_qopts_parse_token(&o, "clip=pct:99.9", &e) == 0 && o.pct == 99.9);
    CHECK(qs_qopts_parse_token(&o, "round=stochastic", &e) == 0);
    CHECK(qs_qopts_parse_token(&o, "seed=42", &e) == 0 && o.seed == 42);
    CHECK(qs_qopts_parse_token(&o, "asym", &e) == 0 && o.asym);
    CHECK(qs_qopts_parse_token(&o, "scale=f32", &e) == 0 && o.scale_f32);
    qs_qopts_format(&i4, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=group:32 clip=pct:99.9 round=stochastic seed=42 asym scale=f32");
    /* the canonical string parses back to the same options */
    struct qs_qopts o2;
    qs_qopts_default(&o2);
    char copy[200];
    snprintf(copy, sizeof copy, "%s", buf);
    for (char *t = strtok(copy, " "); t; t = strtok(NULL, " "))
        CHECK(qs_qopts_parse_token(&o2, t, &e) == 0);
    CHECK(o2.gran == o.gran && o2.group == o.group && o2.clip == o.clip && o2.pct == o.pct &&
          o2.round == o.round && o2.seed == o.seed && o2.asym == o.asym &&
          o2.scale_f32 == o.scale_f32);
    /* per-format canonical strings */
    struct qs_format f8 = fmt("fp8-e4m3"), mx = fmt("mxfp4"), nf = fmt("nf4"), nv = fmt("nvfp4");
    qs_qopts_default(&o);
    qs_qopts_format(&f8, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=tensor clip=max round=nearest sat=1 scale=f16");
    qs_qopts_format(&mx, &o, buf, sizeof buf);
    CHECK_STR(buf, "clip=max round=nearest");
    qs_qopts_format(&nf, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=group:64 clip=max round=nearest scale=f16");
    qs_qopts_format(&nv, &o, buf, sizeof buf);
    CHECK_STR(buf, "clip=max round=nearest");
    o.scale_none = 1;
    qs_qopts_format(&f8, &o, buf, sizeof buf);
    CHECK_STR(buf, "scale=none round=nearest sat=1");
    struct qs_format none = fmt("none");
    qs_qopts_format(&none, &o, buf, sizeof buf);
    CHECK_STR(buf, "");
    /* bad tokens leave o unchanged */
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "gran=group:0", &e) < 0 && o.gran == QS_GRAN_TENSOR);
    CHECK(qs_qopts_parse_token(&o, "gran=group:x", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "gran=rows", &e) < 0 && strstr(e.msg, "gran="));
    CHECK(qs_qopts_parse_token(&o, "clip=pct:0", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "clip=pct:101", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "clip=abs", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "round=up", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "sat=2", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "seed=-1", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "scale=bf16", &e) < 0);
    CHECK(qs_qopts_parse_token(&o, "bogus=1", &e) < 0 && strstr(e.msg, "bogus"));
    CHECK(memcmp(&o, &o2, 0) == 0);
    /* options that do not fit the format */
    qs_qopts_default(&o);
    o.asym = 1;
    CHECK(qs_qopts_check(&f8, &o, &e) < 0 && strstr(e.msg, "asym"));
    CHECK(qs_qopts_check(&i4, &o, &e) == 0);
    qs_qopts_default(&o);
    o.saturate = 0;
    CHECK(qs_qopts_check(&i4, &o, &e) < 0 && strstr(e.msg, "sat=0"));
    CHECK(qs_qopts_check(&mx, &o, &e) < 0);
    CHECK(qs_qopts_check(&f8, &o, &e) == 0);
    struct qs_format mx8 = fmt("mxfp8");
    CHECK(qs_qopts_check(&mx8, &o, &e) == 0);
    qs_qopts_default(&o);
    qs_qopts_parse_token(&o, "gran=channel", &e);
    CHECK(qs_qopts_check(&mx, &o, &e) < 0 && strstr(e.msg, "32-element"));
    CHECK(qs_qopts_check(&nf, &o, &e) == 0); /* one absmax block per row */
    qs_qopts_format(&nf, &o, buf, sizeof buf);
    CHECK_STR(buf, "gran=channel clip=max round=nearest scale=f16");
    qs_qopts_parse_token(&o, "gran=tensor", &e);
    CHECK(qs_qopts_check(&nf, &o, &e) < 0 && strstr(e.msg, "gran=group"));
    o.gran_set = 0; /* set by a program, not typed: the default 64-blocks */
    CHECK(qs_qopts_check(&nf, &o, &e) == 0);
    qs_qopts_parse_token(&o, "gran=group:32", &e);
    CHECK(qs_qopts_check(&nf, &o, &e) == 0);
    qs_qopts_default(&o);
    o.scale_none = 1;
    CHECK(qs_qopts_check(&i4, &o, &e) < 0 && strstr(e.msg, "scale=none"));
    qs_qopts_default(&o);
    o.scale_f32 = 1;
    CHECK(qs_qopts_check(&mx, &o, &e) < 0 && strstr(e.msg, "E8M0"));
    qs_qopts_default(&o);
    o.full_range = 1;
    o.asym = 1;
    CHECK(qs_qopts_check(&i4, &o, &e) < 0);
}

/* The kind traits (kinds.c) against what the specifications and qscope's rules say of each
 * family, and the behaviour they drive: the options each format accepts, the block length the
 * kernels tile rows with, the stored scale type and the per-tensor scale. */
static void test_traits(void)
{
    static const struct {
        const char *name, *family;
        int fixed, blockwise, free_scale, asym, scale_none, static_amax, tensor_scale, block;
        const char *dtype; /* stored scale type under default options */
    } want[] = {
        {"int4", "int", 0, 0, 1, 1, 0, 1, 0, 0, "f16"},
        {"fp8-e4m3", "minifloat", 0, 0, 1, 0, 1, 1, 0, 0, "f16"},
        {"e0m7", "fixed", 0, 0, 1, 0, 1, 1, 0, 0, "f16"},
        {"mxfp4", "mx", 1, 0, 0, 0, 0, 0, 0, 32, "e8m0"}, /* OCP MX: k = 32, E8M0 */
        {"mxint8", "mx", 1, 0, 0, 0, 0, 0, 0, 32, "e8m0"},
        {"nvfp4", "nvfp4", 1, 0, 0, 0, 0, 1, 1, 16, "e4m3"}, /* 16, E4M3 + F32 tensor scale */
        {"nf4", "nf4", 0, 1, 1, 0, 0, 0, 0, 64, "f16"},      /* QLoRA: blocks of 64 */
        {"compand:8", "compand", 0, 0, 1, 0, 0, 1, 0, 0, "f16"},
    };
    qs_err e;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        struct qs_format f = fmt(want[i].name);
        const struct qs_format_traits *t = qs_format_traits(&f);
        CHECK_STR(t->family, want[i].family);
        CHECK(t->elements && t->options);
        CHECK(t->fixed_block == want[i].fixed && t->blockwise == want[i].blockwise);
        CHECK(t->free_scale == want[i].free_scale && t->asym == want[i].asym);
        CHECK(t->scale_none == want[i].scale_none && t->static_amax == want[i].static_amax);
        CHECK(t->tensor_scale == want[i].tensor_scale);
        CHECK(!want[i].fixed || f.block == want[i].block);
        /* what the traits promise is what the options check, pack and the quantizer do */
        struct qs_qopts o;
        qs_qopts_default(&o);
        o.asym = 1;
        CHECK((qs_qopts_check(&f, &o, &e) == 0) == (want[i].asym != 0));
        qs_qopts_default(&o);
        o.scale_none = 1;
        CHECK((qs_qopts_check(&f, &o, &e) == 0) == (want[i].scale_none != 0));
        qs_qopts_default(&o);
        o.scale_f32 = 1;
        CHECK((qs_qopts_check(&f, &o, &e) == 0) == (want[i].free_scale != 0));
        qs_qopts_default(&o);
        CHECK(qs_qopts_parse_token(&o, "gran=channel", &e) == 0);
        CHECK((qs_qopts_check(&f, &o, &e) == 0) == !want[i].fixed);
        qs_qopts_default(&o);
        float x[4 * 100], y[4 * 100];
        for (int k = 0; k < 400; k++)
            x[k] = (float)sin(0.37 * k) * (1.0f + (float)(k % 7));
        CHECK((qs_quant_fake_amax(&f, &o, x, 4, 100, 3.0f, y, &e) == 0) ==
              (want[i].static_amax != 0));
        struct qs_packed_layout lay;
        CHECK(qs_packed_layout(&f, &o, 4, 100, &lay, &e) == 0);
        CHECK_STR(lay.scale_dtype, want[i].dtype);
        CHECK(lay.tensor_scale == want[i].tensor_scale);
        int len = qs_format_block_len(&f, &o, 100);
        CHECK(len == (want[i].block ? want[i].block : 100));
        CHECK(lay.group == (len == 100 && !want[i].fixed && !want[i].blockwise ? 0 : len));
        struct qs_quantizer *q = NULL;
        CHECK(qs_quantizer_new(&f, &o, x, 4, 100, &q, &e) == 0);
        CHECK(q && qs_quantizer_block(q) == len);
        qs_quantizer_free(q);
    }
    /* block lengths: groups, channel, scale=none, blocks longer than a row, ggml's blocks */
    struct qs_format i4 = fmt("int4"), nf = fmt("nf4"), mx = fmt("mxfp4"), q4k = fmt("q4_k"),
                     f8 = fmt("fp8-e4m3"), none = fmt("none");
    struct qs_qopts o;
    qs_qopts_default(&o);
    CHECK(qs_format_block_len(&mx, &o, 20) == 20);
    CHECK(qs_format_block_len(&q4k, &o, 1024) == 256 && qs_format_traits(&q4k)->fixed_block);
    CHECK(!qs_format_traits(&q4k)->options && !qs_format_traits(&q4k)->elements);
    CHECK(!qs_format_traits(&none)->options && qs_format_block_len(&none, &o, 9) == 9);
    CHECK(qs_qopts_parse_token(&o, "gran=group:128", &e) == 0);
    CHECK(qs_format_block_len(&i4, &o, 300) == 128 && qs_format_block_len(&i4, &o, 100) == 100);
    CHECK(qs_format_block_len(&nf, &o, 300) == 128);
    o.scale_none = 1;
    CHECK(qs_format_block_len(&f8, &o, 300) == 300); /* one raw cast, no groups */
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "gran=channel", &e) == 0);
    CHECK(qs_format_block_len(&nf, &o, 300) == 300 && qs_format_block_len(&i4, &o, 300) == 300);
}

/* fp16 (IEEE 754 binary16: E5M10, bias 15, Inf/NaN) and bf16 (E8M7, bias 127, Inf/NaN) are one
 * preset row each, of the unscaled kind "cast": they must be exact casts. References, independent
 * of the quant kernels: half.c's bit-level qs_f32_to_f16 / qs_f32_to_bf16 (checked against numpy in
 * test_half) and, where the compiler has it, C's _Float16 conversion. */
static void half_row(const char *name, int bf)
{
    struct qs_format f = fmt(name);
    qs_err e;
    CHECK(f.bits == 16 && f.kind == QS_FMT_CAST);
    CHECK(qs_format_max(&f) == (bf ? ldexp(2.0 - ldexp(1.0, -7), 127) : 65504.0));
    int bad = 0;
    for (uint32_t c = 0; c < 65536; c++) {
        uint32_t u = c << 16;
        float ref;
        if (bf)
            memcpy(&ref, &u, sizeof ref);
        else
            ref = qs_f16_to_f32((uint16_t)c);
        bad += !same_value(qs_format_decode(&f, c), ref);
    }
    CHECK(bad == 0);
    /* values: every midpoint between neighbouring codes (ties), a quarter past each, and random
     * magnitudes over the whole range, both signs */
    enum { N = 3 * 32768 + 4096 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *z = malloc(N * sizeof *z);
    int n = 0;
    for (uint32_t c = 0; c < 0x7c00u * (bf ? 0 : 1) + 0x7f80u * (bf ? 1 : 0); c += 1) {
        if (n + 3 > N - 4096)
            break;
        float lo, hi;
        if (bf) {
            uint32_t a = c << 16, b = (c + 1) << 16;
            memcpy(&lo, &a, 4);
            memcpy(&hi, &b, 4);
        } else {
            lo = qs_f16_to_f32((uint16_t)c);
            hi = qs_f16_to_f32((uint16_t)(c + 1));
        }
        if (!isfinite(hi) || (c % 3 && bf))
            continue;
        x[n++] = lo + (hi - lo) / 2; /* exact in F32: one bit more than the code */
        x[n++] = -(lo + (hi - lo) / 4);
        x[n++] = lo;
    }
    qs_rng g;
    qs_rng_seed(&g, 3);
    while (n < N) {
        double m = ldexp(qs_rng_uniform(&g) + 0.5,
                         (int)(qs_rng_u64(&g) % (bf ? 250 : 48)) - (bf ? 130 : 28));
        x[n++] = (float)((qs_rng_u64(&g) & 1) ? -m : m);
    }
    for (int sat = 0; sat <= 1; sat++) {
        struct qs_qopts o;
        qs_qopts_default(&o);
        o.saturate = sat; /* the defaults otherwise: a plain cast needs no option */
        CHECK(qs_quant_fake(&f, &o, x, 1, N, y, &e) == 0);
        struct qs_packed p;
        CHECK(qs_quant_pack(&f, &o, x, 1, N, &p, &e) == 0 && p.code_bytes == 2 * (size_t)N);
        CHECK(qs_quant_unpack(&p, z, &e) == 0);
        int wrong = 0, wrong_code = 0, wrong_c = 0;
        for (int i = 0; i < N; i++) {
            uint16_t h = bf ? qs_f32_to_bf16(x[i]) : qs_f32_to_f16(x[i]);
            float r;
            if (bf) {
                uint32_t u = (uint32_t)h << 16;
                memcpy(&r, &u, sizeof r);
            } else {
                r = qs_f16_to_f32(h);
            }
            if (sat && isinf(r)) { /* sat=1 clamps to the largest finite */
                r = copysignf((float)qs_format_max(&f), r);
                h = (uint16_t)(h - 1u); /* the code below Inf */
            }
            wrong += !same_value(y[i], r) || !same_value(z[i], r);
            wrong_code += (uint16_t)(p.codes[2 * i] | (p.codes[2 * i + 1] << 8)) != h;
#ifdef __FLT16_MAX__
            if (!bf && !sat)
                wrong_c += !same_value(y[i], (float)(_Float16)x[i]);
#endif
        }
        if (wrong || wrong_code || wrong_c)
            fprintf(stderr, "  %s sat=%d: %d values, %d codes, %d _Float16 differ\n", name, sat,
                    wrong, wrong_code, wrong_c);
        CHECK(wrong == 0 && wrong_code == 0 && wrong_c == 0);
        qs_packed_free(&p);
    }
    free(x);
    free(y);
    free(z);
}

static void test_half_rows(void)
{
    half_row("fp16", 0);
    half_row("bf16", 1);
    /* no scale: the options that need one are refused, the others kept */
    struct qs_format h = fmt("fp16");
    struct qs_qopts o;
    qs_err e;
    char buf[120];
    CHECK(qs_format_traits(&h)->unscaled && !qs_format_traits(&h)->free_scale);
    qs_qopts_default(&o);
    qs_qopts_format(&h, &o, buf, sizeof buf);
    CHECK_STR(buf, "round=nearest sat=1");
    static const char *const refused[] = {"gran=channel", "clip=mse", "scale=f32", "scale=none",
                                          "asym"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        qs_qopts_default(&o);
        CHECK(qs_qopts_parse_token(&o, refused[i], &e) == 0);
        CHECK(qs_qopts_check(&h, &o, &e) < 0);
    }
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "sat=0", &e) == 0 && qs_qopts_check(&h, &o, &e) == 0);
    CHECK(qs_qopts_parse_token(&o, "round=stochastic", &e) == 0 && qs_qopts_check(&h, &o, &e) == 0);
    struct qs_packed_layout lay;
    qs_qopts_default(&o);
    CHECK(qs_packed_layout(&h, &o, 3, 5, &lay, &e) == 0 && lay.code_bytes == 30 &&
          lay.scale_bytes == 0 && lay.nscales == 0 && !strcmp(lay.scale_dtype, "none"));
    float x[3] = {1.0f, 2.0f, 3.0f}, y[3];
    CHECK(qs_quant_fake_amax(&h, &o, x, 1, 3, 3.0f, y, &e) < 0 && strstr(e.msg, "no scale"));
}

/* An F16 scale that would round to zero is stored as F16's smallest step 2^-24 instead, so
 * the block is not quantized to all zeros (fp8-e5m2 per channel, row 1's amax 1e-3: amax / 57344
 * ~ 1.7e-8 rounds to F16's zero); e5m2's relative precision then holds as with scale=f32. */
static void test_f16_scale_underflow(void)
{
    const float w[2 * 4] = {0.5f, -0.25f, 0.125f, 0.0625f, 1e-3f, -5e-4f, 2.5e-4f, 0.0f};
    float out[8], o32[8];
    struct qs_format f;
    struct qs_qopts o;
    qs_err e;
    CHECK(qs_format_parse("fp8-e5m2", &f, &e) == 0);
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "gran=channel", &e) == 0);
    CHECK(qs_quant_fake(&f, &o, w, 2, 4, out, &e) == 0);
    CHECK(qs_qopts_parse_token(&o, "scale=f32", &e) == 0);
    CHECK(qs_quant_fake(&f, &o, w, 2, 4, o32, &e) == 0);
    for (int j = 0; j < 8; j++) /* e5m2's 2 mantissa bits: within 1/8 relative, both ways */
        CHECK(fabsf(out[j] - w[j]) <= 0.125f * fabsf(w[j]) &&
              fabsf(o32[j] - w[j]) <= 0.125f * fabsf(w[j]));
    CHECK(out[4] != 0.0f && out[5] != 0.0f && out[6] != 0.0f);
    /* packed: the stored scale code is F16's smallest subnormal */
    struct qs_packed p;
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "gran=channel", &e) == 0);
    CHECK(qs_quant_pack(&f, &o, w, 2, 4, &p, &e) == 0);
    float un[8];
    CHECK(qs_quant_unpack(&p, un, &e) == 0);
    CHECK(memcmp(un, out, sizeof un) == 0);
    qs_packed_free(&p);
    /* an all-zero block keeps scale 0 */
    const float z[4] = {0};
    CHECK(qs_quant_fake(&f, &o, z, 1, 4, out, &e) == 0 && out[0] == 0.0f && out[3] == 0.0f);
}

TEST_MAIN("format", TEST_CASE(test_codes_ofp8), TEST_CASE(test_codes_mx_elements),
          TEST_CASE(test_codes_generic_and_fixed), TEST_CASE(test_codes_int),
          TEST_CASE(test_codes_nf4), TEST_CASE(test_codes_compand),
          TEST_CASE(test_cast_ties_to_even), TEST_CASE(test_cast_signed_zero_and_sat),
          TEST_CASE(test_cast_kernel_matches_reference), TEST_CASE(test_parse_names),
          TEST_CASE(test_parse_errors), TEST_CASE(test_options), TEST_CASE(test_traits),
          TEST_CASE(test_half_rows), TEST_CASE(test_f16_scale_underflow))
