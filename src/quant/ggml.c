/* ggml.c - ggml's block types: reference quantization, dequantization, and the glue that makes
 * them qscope formats (layouts and rounding rules in ggml.h).
 *
 * Written from the definitions in llama.cpp's ggml-quants.c (quantize_row_*_ref): the same
 * float operations in the same order, since "the same bytes as llama.cpp" depends on every
 * rounding step, including ggml's float-to-integer conversions:
 * - nearest_int: adding 1.5 * 2^23 and reading the low mantissa bits (round half to even for
 *   |v| < 2^22; its result for larger or non-finite values is reproduced bit for bit);
 * - the legacy types convert with C's truncating (int8_t)/(uint8_t) casts, which x86-64 performs
 *   as a 32-bit cvttss2si (INT32_MIN for NaN or out-of-range values) and keeps the low byte;
 *   conv_i32 reproduces that, so blocks whose scale underflows (1/d = inf) match too.
 * The build uses -std=c11, where gcc does not contract a*b+c into an FMA, as ggml's baseline
 * x86-64 build does not either. */
#include "qscope/ggml.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/half.h"

#define QK 32    /* legacy block */
#define QK_K 256 /* K-quant super-block */
#define GROUP_MAX_EPS 1e-15f

/* ---- helpers with ggml's exact rounding --------------------------------------------------- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline float h2f(const uint8_t *p)
{
    return qs_f16_to_f32(rd16(p));
}

static inline void f2h(uint8_t *p, float f)
{
    wr16(p, qs_f32_to_f16(f));
}

static inline int nearest_int(float v)
{
    float s = v + 12582912.f;
    int32_t i;
    memcpy(&i, &s, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* x86-64 cvttss2si: truncation toward zero, INT32_MIN for NaN and out-of-range values. */
static inline int32_t conv_i32(float v)
{
    if (!(v > -2147483904.0f && v < 2147483648.0f))
        return INT32_MIN;
    return (int32_t)v;
}

/* (int8_t)v and (uint8_t)v as compiled for x86-64: the low byte of conv_i32. */
static inline int to_i8(float v)
{
    return (int8_t)(uint8_t)((uint32_t)conv_i32(v) & 0xffu);
}

static inline int to_u8(float v)
{
    return (int)((uint32_t)conv_i32(v) & 0xffu);
}

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- legacy 32-element types ------------------------------------------------------------- */

/* The signed-max scale of q4_0 / q5_0: the element of largest magnitude (the first one on a
 * tie) maps to -2^(bits-1). */
static float signed_max(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void q4_0_block(const float *x, uint8_t *b)
{
    const float d = signed_max(x, QK) / -8;
    const float id = d ? 1.0f / d : 0.0f;
    f2h(b, d);
    for (int j = 0; j < QK / 2; j++) {
        int lo = MIN(15, to_i8(x[j] * id + 8.5f));
        int hi = MIN(15, to_i8(x[j + QK / 2] * id + 8.5f));
        b[2 + j] = (uint8_t)(((unsigned)lo & 0xffu) | (((unsigned)hi << 4) & 0xffu));
    }
}

static void minmax(const float *x, int n, float *mn, float *mx)
{
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo)
            lo = x[j];
        if (x[j] > hi)
            hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

/* The header of a q4_1 / q5_1 block (codes 0..nmax): d = (max - min) / nmax and min as F16 at
 * b. Returns 1 / d (0 for a constant block); min into *mn. */
static float asym_header(const float *x, int nmax, uint8_t *b, float *mn)
{
    float mx;
    minmax(x, QK, mn, &mx);
    const float d = (mx - *mn) / (float)nmax;
    f2h(b, d);
    f2h(b + 2, *mn);
    return d ? 1.0f / d : 0.0f;
}

static void q4_1_block(const float *x, uint8_t *b)
{
    float mn;
    const float id = asym_header(x, 15, b, &mn);
    for (int j = 0; j < QK / 2; j++) {
        int lo = MIN(15, to_i8((x[j] - mn) * id + 0.5f));
        int hi = MIN(15, to_i8((x[j + QK / 2] - mn) * id + 0.5f));
        b[4 + j] = (uint8_t)(((unsigned)lo & 0xffu) | (((unsigned)hi << 4) & 0xffu));
    }
}

/* Writes 5-bit codes q[0..31] as q5_0/q5_1 nibbles (at nib) and fifth bits (at qh). */
static void put5(const int *q, uint8_t *qh, uint8_t *nib)
{
    uint32_t h = 0;
    for (int j = 0; j < QK / 2; j++) {
        nib[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4));
        h |= (uint32_t)((q[j] & 0x10) >> 4) << j;
        h |= (uint32_t)((q[j + QK / 2] & 0x10) >> 4) << (j + QK / 2);
    }
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
}

static void q5_0_block(const float *x, uint8_t *b)
{
    const float d = signed_max(x, QK) / -16;
    const float id = d ? 1.0f / d : 0.0f;
    f2h(b, d);
    int q[QK];
    for (int j = 0; j < QK; j++)
        q[j] = MIN(31, to_i8(x[j] * id + 16.5f)) & 0xff;
    put5(q, b + 2, b + 6);
}

static void q5_1_block(const float *x, uint8_t *b)
{
    float mn;
    const float id = asym_header(x, 31, b, &mn);
    int q[QK];
    for (int j = 0; j < QK; j++)
        q[j] = to_u8((x[j] - mn) * id + 0.5f);
    put5(q, b + 4, b + 8);
}

static void q8_0_block(const float *x, uint8_t *b)
{
    float amax = 0.0f;
    for (int j = 0; j < QK; j++)
        amax = MAX(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    f2h(b, d);
    for (int j = 0; j < QK; j++)
        b[2 + j] = (uint8_t)to_i8(roundf(x[j] * id));
}

static void dq_q4_0(const uint8_t *b, float *y)
{
    const float d = h2f(b);
    for (int j = 0; j < QK / 2; j++) {
        y[j] = ((b[2 + j] & 0x0f) - 8) * d;
        y[j + QK / 2] = ((b[2 + j] >> 4) - 8) * d;
    }
}

static void dq_q4_1(const uint8_t *b, float *y)
{
    const float d = h2f(b), m = h2f(b + 2);
    for (int j = 0; j < QK / 2; j++) {
        y[j] = (b[4 + j] & 0x0f) * d + m;
        y[j + QK / 2] = (b[4 + j] >> 4) * d + m;
    }
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void dq_q5_0(const uint8_t *b, float *y)
{
    const float d = h2f(b);
    const uint32_t qh = rd32(b + 2);
    for (int j = 0; j < QK / 2; j++) {
        int x0 = (int)((b[6 + j] & 0x0f) | (((qh >> j) << 4) & 0x10)) - 16;
        int x1 = (int)((b[6 + j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
        y[j] = x0 * d;
        y[j + QK / 2] = x1 * d;
    }
}

static void dq_q5_1(const uint8_t *b, float *y)
{
    const float d = h2f(b), m = h2f(b + 2);
    const uint32_t qh = rd32(b + 4);
    for (int j = 0; j < QK / 2; j++) {
        int x0 = (int)((b[8 + j] & 0x0f) | (((qh >> j) << 4) & 0x10));
        int x1 = (int)((b[8 + j] >> 4) | ((qh >> (j + 12)) & 0x10));
        y[j] = x0 * d + m;
        y[j + QK / 2] = x1 * d + m;
    }
}

static void dq_q8_0(const uint8_t *b, float *y)
{
    const float d = h2f(b);
    for (int j = 0; j < QK; j++)
        y[j] = (int8_t)b[2 + j] * d;
}

/* ---- K-quant helpers (super-blocks of 256) ---------------------------------------------- */

/* Codes l = clamp(nearest_int(iscale x), -nmax, nmax - 1) of n values and their x^2-weighted
 * fit sums sum w x l, sum w l^2 (in ggml's order); L (may be NULL) receives l + off. */
static void sym_fit(int n, int nmax, float iscale, const float *x, int8_t *L, int off, float *sumlx,
                    float *suml2)
{
    float slx = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax - 1, l));
        if (L)
            L[i] = (int8_t)(l + off);
        float w = x[i] * x[i];
        slx += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

/* The first fit of make_qx_quants and make_q3_quants: max is the signed largest-magnitude
 * value, the codes and sums are sym_fit's at iscale = -nmax / max. Returns 0 (L zeroed) when
 * every |x| < GROUP_MAX_EPS. */
static int sym_first_fit(int n, int nmax, const float *x, int8_t *L, int off, float *max,
                         float *sumlx, float *suml2)
{
    *max = signed_max(x, n);
    if (fabsf(*max) < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0;
    }
    sym_fit(n, nmax, (float)(-nmax) / *max, x, L, off, sumlx, suml2);
    return 1;
}

/* Signed symmetric codes in [-nmax, nmax-1] for n values, scale searched over 19 candidate
 * inverse scales around nmax/max with weights w = x^2 (ggml's make_qx_quants, rmse_type 1, no
 * importance weights). L receives code + nmax. Returns the scale. */
static float qx_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max, sumlx, suml2;
    if (!sym_first_fit(n, nmax, x, L, nmax, &max, &sumlx, &suml2))
        return 0.f;
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        const float iscale = -((float)nmax + 0.1f * (float)is) / max;
        sym_fit(n, nmax, iscale, x, NULL, 0, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            sym_fit(n, nmax, iscale, x, L, nmax, &sumlx, &suml2); /* the same sums, and L */
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* q3_K's group codes: symmetric codes in [-nmax, nmax-1], refined by up to 5 passes that move
 * one code at a time while the x^2-weighted fit improves (ggml's make_q3_quants, do_rmse). */
static float q3_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max, sumlx, suml2;
    if (!sym_first_fit(n, nmax, x, L, 0, &max, &sumlx, &suml2))
        return 0.f;
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * (float)L[i] * (float)L[i];
                int nl = nearest_int(x[i] * sl2 / slx);
                nl = MAX(-nmax, MIN(nmax - 1, nl));
                if (nl != L[i]) {
                    slx += w * x[i] * (float)nl;
                    sl2 += w * (float)nl * (float)nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Unsigned codes 0..nmax with a scale and a min (x ~ scale l - the_min), searched over nstep+1
 * inverse scales (rmin + rdelta is + nmax) / (max - min) by weighted least squares
 * (ggml's make_qkx2_quants). */
static float qkx2_quants(int n, int nmax, const float *x, const float *w, uint8_t *L,
                         float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                         int use_mad)
{
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAX(0, MIN(nmax, l));
        float diff = scale * (float)L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * (float)Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* The 6-bit scale and min of sub-block j of a q4_K / q5_K super-block. */
static void scale_min_k4(int j, const uint8_t *q, int *d, int *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* The scales d[0..1] and mins m[0..1] of sub-blocks is and is + 1 of the q4_K / q5_K
 * super-block b. */
static void k4_pair(const uint8_t *b, int is, float d[2], float m[2])
{
    const float d0 = h2f(b), min = h2f(b + 2);
    for (int k = 0; k < 2; k++) {
        int sc, mn;
        scale_min_k4(is + k, b + 4, &sc, &mn);
        d[k] = d0 * (float)sc;
        m[k] = min * (float)mn;
    }
}

/* Packs four 2-bit planes: byte l of each 32-byte run holds L[j+l], L[j+l+32], ... */
static void pack2(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* q2_K: 16 groups of 16, 4-bit scale and 4-bit min per group under F16 d and dmin. */
static void q2_k_block(const float *x, uint8_t *b)
{
    uint8_t *sc = b, *qs = b + 16, *pd = b + 80, *pm = b + 82;
    uint8_t L[QK_K], Laux[16];
    float w[16], mins[16], scales[16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++)
            w[l] = fabsf(x[16 * j + l]);
        scales[j] =
            qkx2_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = 15.f / max_scale;
        for (int j = 0; j < 16; j++)
            sc[j] = (uint8_t)nearest_int(iscale * scales[j]);
        f2h(pd, max_scale / 15.f);
    } else {
        memset(sc, 0, 16);
        f2h(pd, 0.f);
    }
    if (max_min > 0) {
        float iscale = 15.f / max_min;
        for (int j = 0; j < 16; j++)
            sc[j] |= (uint8_t)((unsigned)nearest_int(iscale * mins[j]) << 4);
        f2h(pm, max_min / 15.f);
    } else {
        f2h(pm, 0.f);
    }
    for (int j = 0; j < 16; j++) {
        const float d = h2f(pd) * (float)(sc[j] & 0xf);
        if (!d)
            continue;
        const float dm = h2f(pm) * (float)(sc[j] >> 4);
        for (int i = 0; i < 16; i++) {
            int l = nearest_int((x[16 * j + i] + dm) / d);
            L[16 * j + i] = (uint8_t)MAX(0, MIN(3, l));
        }
    }
    pack2(L, qs);
}

static void dq_q2_k(const uint8_t *b, float *y)
{
    const uint8_t *sc = b, *q = b + 16;
    const float d = h2f(b + 80), min = h2f(b + 82);
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                uint8_t s = sc[is++];
                float dl = d * (float)(s & 0xf), ml = min * (float)(s >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

/* The final codes of a 16 x 16 super-block against the scales it stores (d[j] for group j):
 * clamp(nearest_int(x / d), -nmax, nmax - 1) + nmax; a group whose d is 0 keeps its codes. */
static void requant16(const float *x, const float *d, int nmax, int8_t *L)
{
    for (int j = 0; j < 16; j++) {
        if (!d[j])
            continue;
        for (int i = 0; i < 16; i++) {
            int l = nearest_int(x[16 * j + i] / d[j]);
            L[16 * j + i] = (int8_t)(MAX(-nmax, MIN(nmax - 1, l)) + nmax);
        }
    }
}

/* The signed 6-bit scale (offset removed) of group j of a q3_K super-block. */
static int q3_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 0xf : s[j - 8] >> 4;
    return (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

static void q3_k_block(const float *x, uint8_t *b)
{
    uint8_t *hmask = b, *qs = b + 32, *s = b + 96, *pd = b + 108;
    int8_t L[QK_K];
    float scales[16];
    for (int j = 0; j < 16; j++)
        scales[j] = q3_quants(16, 4, x + 16 * j, L + 16 * j);
    const float max_scale = signed_max(scales, 16);
    memset(s, 0, 12);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; j++) {
            int8_t l8 = (int8_t)nearest_int(iscale * scales[j]);
            int l = MAX(-32, MIN(31, l8)) + 32;
            if (j < 8)
                s[j] = (uint8_t)(l & 0xf);
            else
                s[j - 8] |= (uint8_t)((l & 0xf) << 4);
            l >>= 4;
            s[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
        }
        f2h(pd, 1 / iscale);
    } else {
        f2h(pd, 0.f);
    }
    float d[16];
    for (int j = 0; j < 16; j++)
        d[j] = h2f(pd) * (float)q3_scale(s, j);
    requant16(x, d, 4, L);
    memset(hmask, 0, 32);
    uint8_t U[QK_K];
    for (int j = 0, m = 0, hm = 1; j < QK_K; j++) {
        int l = L[j];
        if (l > 3) {
            hmask[m] |= (uint8_t)hm;
            l -= 4;
        }
        U[j] = (uint8_t)l;
        if (++m == 32) {
            m = 0;
            hm <<= 1;
        }
    }
    pack2(U, qs);
}

static void dq_q3_k(const uint8_t *b, float *y)
{
    const uint8_t *hm = b, *q = b + 32, *s = b + 96;
    const float d_all = h2f(b + 108);
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                float dl = d_all * (float)q3_scale(s, is++);
                for (int l = 0; l < 16; l++) {
                    int v = ((q[l + 16 * half] >> shift) & 3) - ((hm[l + 16 * half] & m) ? 0 : 4);
                    *y++ = dl * (float)v;
                }
            }
            m <<= 1;
        }
        q += 32;
    }
}

/* q4_K / q5_K: 8 groups of 32 with a 6-bit scale and min each (nmax 15 or 31). Fills the
 * header (d, dmin, 12 scale bytes) at b and the codes L. */
static void k4_scales(const float *x, uint8_t *b, uint8_t *L, int nmax, float rmin, int nstep)
{
    uint8_t *s = b + 4;
    uint8_t Laux[32];
    float w[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] =
            qkx2_quants(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = MIN(63, ls);
        lm = MIN(63, lm);
        if (j < 4) {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (uint8_t)((ls & 0xf) | ((lm & 0xf) << 4));
            s[j - 4] |= (uint8_t)((ls >> 4) << 6);
            s[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    f2h(b, max_scale / 63.f);
    f2h(b + 2, max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(j, s, &sc, &m);
        const float d = h2f(b) * (float)sc;
        if (!d)
            continue;
        const float dm = h2f(b + 2) * (float)m;
        for (int i = 0; i < 32; i++) {
            int l = nearest_int((x[32 * j + i] + dm) / d);
            L[32 * j + i] = (uint8_t)MAX(0, MIN(nmax, l));
        }
    }
}

static void q4_k_block(const float *x, uint8_t *b)
{
    uint8_t L[QK_K];
    k4_scales(x, b, L, 15, -1.f, 20);
    uint8_t *q = b + 16;
    for (int j = 0; j < QK_K; j += 64, q += 32)
        for (int l = 0; l < 32; l++)
            q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void dq_q4_k(const uint8_t *b, float *y)
{
    const uint8_t *q = b + 16;
    for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
        float d[2], m[2];
        k4_pair(b, is, d, m);
        for (int l = 0; l < 32; l++)
            *y++ = d[0] * (float)(q[l] & 0xf) - m[0];
        for (int l = 0; l < 32; l++)
            *y++ = d[1] * (float)(q[l] >> 4) - m[1];
    }
}

static void q5_k_block(const float *x, uint8_t *b)
{
    uint8_t L[QK_K];
    k4_scales(x, b, L, 31, -0.5f, 15);
    uint8_t *qh = b + 16, *ql = b + 48;
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            if (l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
    }
}

static void dq_q5_k(const uint8_t *b, float *y)
{
    const uint8_t *qh = b + 16, *ql = b + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, ql += 32) {
        float d[2], m[2];
        k4_pair(b, is, d, m);
        for (int l = 0; l < 32; l++)
            *y++ = d[0] * (float)((ql[l] & 0xf) + (qh[l] & u1 ? 16 : 0)) - m[0];
        for (int l = 0; l < 32; l++)
            *y++ = d[1] * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m[1];
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void q6_k_block(const float *x, uint8_t *b)
{
    uint8_t *ql = b, *qh = b + 128, *pd = b + 208;
    int8_t *sc = (int8_t *)(b + 192);
    int8_t L[QK_K];
    float scales[16];
    for (int ib = 0; ib < 16; ib++)
        scales[ib] = qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
    const float max_scale = signed_max(scales, 16);
    if (fabsf(max_scale) < GROUP_MAX_EPS) {
        memset(b, 0, 210);
        f2h(pd, 0.f);
        return;
    }
    float iscale = -128.f / max_scale;
    f2h(pd, 1 / iscale);
    for (int ib = 0; ib < 16; ib++)
        sc[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
    float d[16];
    for (int j = 0; j < 16; j++)
        d[j] = h2f(pd) * (float)sc[j];
    requant16(x, d, 32, L);
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; l++) {
            uint8_t q1 = (uint8_t)L[j + l] & 0xf, q2 = (uint8_t)L[j + l + 32] & 0xf;
            uint8_t q3 = (uint8_t)L[j + l + 64] & 0xf, q4 = (uint8_t)L[j + l + 96] & 0xf;
            ql[l] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)(((uint8_t)L[j + l] >> 4) | (((uint8_t)L[j + l + 32] >> 4) << 2) |
                              (((uint8_t)L[j + l + 64] >> 4) << 4) |
                              (((uint8_t)L[j + l + 96] >> 4) << 6));
        }
    }
}

static void dq_q6_k(const uint8_t *b, float *y)
{
    const float d = h2f(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

/* ---- type table ------------------------------------------------------------------------ */

static void f32_to_f32_n(const void *src, float *y, size_t n)
{
    memcpy(y, src, n * sizeof(float));
}

static void f32_from_f32_n(const float *x, void *dst, size_t n)
{
    memcpy(dst, x, n * sizeof(float));
}

/* One row per type (ggml's type_traits): the element types convert whole rows (to_row,
 * from_row), the block types one block at a time (dequant, quant); a type with neither is
 * known by name and size only. fallback: the legacy type a K-quant's rows fall back to when
 * 256 does not divide them (qs_ggml_effective_type; 0, which is f32, for none). */
struct ggml_traits {
    const char *name;
    int blck;
    int size;
    void (*to_row)(const void *src, float *y, size_t n);
    void (*from_row)(const float *x, void *dst, size_t n);
    void (*dequant)(const uint8_t *b, float *y);
    void (*quant)(const float *x, uint8_t *b);
    int fallback;
};

#define ELEM(nm, sz, to, from)                                                                     \
    {                                                                                              \
        .name = nm, .blck = 1, .size = sz, .to_row = to, .from_row = from                          \
    }
#define BLOCK(nm, bl, sz, dq, q, fb)                                                               \
    {                                                                                              \
        .name = nm, .blck = bl, .size = sz, .dequant = dq, .quant = q, .fallback = fb              \
    }

static const struct ggml_traits traits[QS_GGML_NTYPES] = {
    [QS_GGML_F32] = ELEM("f32", 4, f32_to_f32_n, f32_from_f32_n),
    [QS_GGML_F16] = ELEM("f16", 2, qs_f16_to_f32_n, qs_f32_to_f16_n),
    [QS_GGML_Q4_0] = BLOCK("q4_0", 32, 18, dq_q4_0, q4_0_block, 0),
    [QS_GGML_Q4_1] = BLOCK("q4_1", 32, 20, dq_q4_1, q4_1_block, 0),
    [QS_GGML_Q5_0] = BLOCK("q5_0", 32, 22, dq_q5_0, q5_0_block, 0),
    [QS_GGML_Q5_1] = BLOCK("q5_1", 32, 24, dq_q5_1, q5_1_block, 0),
    [QS_GGML_Q8_0] = BLOCK("q8_0", 32, 34, dq_q8_0, q8_0_block, 0),
    [QS_GGML_Q8_1] = {"q8_1", 32, 36},
    [QS_GGML_Q2_K] = BLOCK("q2_K", 256, 84, dq_q2_k, q2_k_block, QS_GGML_Q4_0),
    [QS_GGML_Q3_K] = BLOCK("q3_K", 256, 110, dq_q3_k, q3_k_block, QS_GGML_Q4_0),
    [QS_GGML_Q4_K] = BLOCK("q4_K", 256, 144, dq_q4_k, q4_k_block, QS_GGML_Q5_0),
    [QS_GGML_Q5_K] = BLOCK("q5_K", 256, 176, dq_q5_k, q5_k_block, QS_GGML_Q5_1),
    [QS_GGML_Q6_K] = BLOCK("q6_K", 256, 210, dq_q6_k, q6_k_block, QS_GGML_Q8_0),
    [15] = {"q8_K", 256, 292},
    [16] = {"iq2_xxs", 256, 66},
    [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98},
    [19] = {"iq1_s", 256, 50},
    [20] = {"iq4_nl", 32, 18},
    [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},
    [23] = {"iq4_xs", 256, 136},
    [24] = {"i8", 1, 1},
    [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},
    [27] = {"i64", 1, 8},
    [28] = {"f64", 1, 8},
    [29] = {"iq1_m", 256, 56},
    [QS_GGML_BF16] = ELEM("bf16", 2, qs_bf16_to_f32_n, qs_f32_to_bf16_n),
    [34] = {"tq1_0", 256, 54},
    [35] = {"tq2_0", 256, 66},
    [39] = {"mxfp4", 32, 17},
    [40] = {"nvfp4", 64, 36},
    [41] = {"q1_0", 128, 18},
    [42] = {"q2_0", 64, 18},
};

#undef ELEM
#undef BLOCK

/* traits[t], or NULL for a type outside the table. */
static const struct ggml_traits *type_traits(int t)
{
    return t >= 0 && t < QS_GGML_NTYPES && traits[t].name ? &traits[t] : NULL;
}

const char *qs_ggml_type_name(int t)
{
    return t >= 0 && t < QS_GGML_NTYPES ? traits[t].name : NULL;
}

int qs_ggml_block_size(int t)
{
    return t >= 0 && t < QS_GGML_NTYPES ? traits[t].blck : 0;
}

size_t qs_ggml_type_size(int t)
{
    return t >= 0 && t < QS_GGML_NTYPES ? (size_t)traits[t].size : 0;
}

int qs_ggml_can_decode(int t)
{
    const struct ggml_traits *tr = type_traits(t);
    return tr && (tr->to_row || tr->dequant);
}

int qs_ggml_row_bytes(int t, int64_t n, size_t *out, qs_err *e)
{
    *out = 0;
    int b = qs_ggml_block_size(t);
    if (b <= 0)
        return qs_errf(e, "unknown ggml type %d", t);
    if (n < 0 || n % b)
        return qs_errf(e, "%lld elements are not a multiple of the %d-element %s block",
                       (long long)n, b, traits[t].name);
    if (qs_size_mul((size_t)(n / b), qs_ggml_type_size(t), out) < 0)
        return qs_errf(e, "%lld elements of %s overflow the size range", (long long)n,
                       traits[t].name);
    return 0;
}

int qs_ggml_effective_type(int t, int64_t cols)
{
    int b = qs_ggml_block_size(t);
    if (b <= 0)
        return -1;
    if (cols % b == 0)
        return t;
    if (!traits[t].fallback)
        return -1;
    return cols % QK ? QS_GGML_F16 : traits[t].fallback;
}

/* ---- row entry points ------------------------------------------------------------------- */

void qs_ggml_dequantize(int t, const void *src, float *y, int64_t n)
{
    const struct ggml_traits *tr = type_traits(t);
    const uint8_t *s = src;
    if (tr && tr->to_row) {
        tr->to_row(s, y, (size_t)n);
    } else if (tr && tr->dequant) {
        const int bs = tr->blck, sz = tr->size;
        for (int64_t i = 0; i < n / bs; i++)
            tr->dequant(s + (size_t)i * (size_t)sz, y + (size_t)i * (size_t)bs);
    }
}

void qs_ggml_quantize(int t, const float *x, void *dst, int64_t n)
{
    const struct ggml_traits *tr = type_traits(t);
    uint8_t *d = dst;
    if (tr && tr->from_row) {
        tr->from_row(x, d, (size_t)n);
    } else if (tr && tr->quant) {
        const int bs = tr->blck, sz = tr->size;
        for (int64_t i = 0; i < n / bs; i++)
            tr->quant(x + (size_t)i * (size_t)bs, d + (size_t)i * (size_t)sz);
    }
}

/* ---- as qscope formats ------------------------------------------------------------------ */

/* The effective type for rows of cols, or -1 with llama.cpp's refusal explained. */
static int effective(const struct qs_format *f, int rows, int cols, size_t *row_bytes, qs_err *e)
{
    if (rows < 1 || cols < 1)
        return qs_errf(e, "%s: empty matrix %d x %d", f->name, rows, cols);
    int t = qs_ggml_effective_type(f->ggml, cols);
    if (t < 0)
        return qs_errf(e,
                       "%s: rows of %d elements are not a multiple of its %d-element block; "
                       "llama.cpp's quantizer has no fallback for %s and refuses such a tensor "
                       "(keep the layer in float with 'none', or use a k-quant, which falls "
                       "back)",
                       f->name, cols, f->block, f->name);
    size_t rb, total;
    if (qs_ggml_row_bytes(t, cols, &rb, e) < 0 || qs_size_mul(rb, (size_t)rows, &total) < 0)
        return qs_errf(e, "%s: %d x %d is too large", f->name, rows, cols);
    *row_bytes = rb;
    return t;
}

static int check_finite(const struct qs_format *f, const float *w, int rows, int cols, qs_err *e)
{
    size_t n = (size_t)rows * (size_t)cols;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return qs_errf(e, "%s: non-finite value at [%zu, %zu]", f->name, i / (size_t)cols,
                           i % (size_t)cols);
    return 0;
}

/* Rows [r0, r1) of a job: quantize (codes != NULL) and/or dequantize (out != NULL). */
struct rows_job {
    int t, cols, r0, r1;
    size_t rb;
    const float *w;
    uint8_t *codes; /* packed rows, or NULL: a private row buffer (fake quantization) */
    float *out;
    int failed;
};

static void *rows_run(void *arg)
{
    struct rows_job *j = arg;
    uint8_t *buf = j->codes ? NULL : malloc(j->rb ? j->rb : 1);
    if (!j->codes && !buf) {
        j->failed = 1;
        return NULL;
    }
    for (int r = j->r0; r < j->r1; r++) {
        uint8_t *b = j->codes ? j->codes + (size_t)r * j->rb : buf;
        if (j->w)
            qs_ggml_quantize(j->t, j->w + (size_t)r * j->cols, b, j->cols);
        if (j->out) /* row r is read whole before it is overwritten, so out == w is safe */
            qs_ggml_dequantize(j->t, b, j->out + (size_t)r * j->cols, j->cols);
    }
    free(buf);
    return NULL;
}

/* Runs the rows on up to 8 threads when the matrix is large; each row is independent, so the
 * result does not depend on the thread count. */
static int rows_parallel(struct rows_job *proto, int rows, qs_err *e)
{
    enum { MAXT = 8 };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = (size_t)rows * (size_t)proto->cols;
    int nt = n < (1u << 16) ? 1 : (int)(ncpu < 1 ? 1 : ncpu > MAXT ? MAXT : ncpu);
    if (nt > rows)
        nt = rows;
    struct rows_job jobs[MAXT];
    pthread_t th[MAXT];
    int started[MAXT] = {0};
    for (int i = 0; i < nt; i++) {
        jobs[i] = *proto;
        jobs[i].r0 = (int)((long long)rows * i / nt);
        jobs[i].r1 = (int)((long long)rows * (i + 1) / nt);
        if (i > 0)
            started[i] = pthread_create(&th[i], NULL, rows_run, &jobs[i]) == 0;
    }
    rows_run(&jobs[0]);
    int failed = jobs[0].failed;
    for (int i = 1; i < nt; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            rows_run(&jobs[i]); /* no thread: run it here */
        failed |= jobs[i].failed;
    }
    return failed ? qs_errf(e, "out of memory") : 0;
}

int qs_ggml_layout(const struct qs_format *f, int rows, int cols, struct qs_packed_layout *out,
                   qs_err *e)
{
    memset(out, 0, sizeof *out);
    size_t rb;
    int t = effective(f, rows, cols, &rb, e);
    if (t < 0)
        return -1;
    out->code_bytes = rb * (size_t)rows;
    out->group = qs_ggml_block_size(t) > 1 ? qs_ggml_block_size(t) : cols;
    out->scale_dtype = "none";
    return 0;
}

int qs_ggml_pack(const struct qs_format *f, const float *w, int rows, int cols, struct qs_packed *p,
                 qs_err *e)
{
    memset(p, 0, sizeof *p);
    size_t rb;
    int t = effective(f, rows, cols, &rb, e);
    if (t < 0 || check_finite(f, w, rows, cols, e) < 0)
        return -1;
    p->codes = qs_alloc(rb * (size_t)rows + 1, 1, "packed weights", e);
    p->scales = calloc(1, 1);
    if (!p->codes || !p->scales) {
        int had_codes = p->codes != NULL; /* qs_alloc named the figure when it failed */
        qs_packed_free(p);
        return had_codes ? qs_errf(e, "out of memory") : -1;
    }
    p->fmt = *f;
    qs_qopts_default(&p->opt);
    p->rows = rows;
    p->cols = cols;
    p->code_bytes = rb * (size_t)rows;
    struct rows_job j = {.t = t, .cols = cols, .rb = rb, .w = w, .codes = p->codes};
    if (rows_parallel(&j, rows, e) < 0) {
        qs_packed_free(p);
        return -1;
    }
    return 0;
}

int qs_ggml_unpack(const struct qs_packed *p, float *out, qs_err *e)
{
    size_t rb;
    int t = effective(&p->fmt, p->rows, p->cols, &rb, e);
    if (t < 0)
        return -1;
    if (p->code_bytes < rb * (size_t)p->rows)
        return qs_errf(e, "unpack: %s buffers too small for %d x %d", p->fmt.name, p->rows,
                       p->cols);
    struct rows_job j = {.t = t, .cols = p->cols, .rb = rb, .codes = p->codes, .out = out};
    return rows_parallel(&j, p->rows, e);
}

int qs_ggml_fake(const struct qs_format *f, const float *w, int rows, int cols, float *out,
                 qs_err *e)
{
    size_t rb;
    int t = effective(f, rows, cols, &rb, e);
    if (t < 0 || check_finite(f, w, rows, cols, e) < 0)
        return -1;
    struct rows_job j = {.t = t, .cols = cols, .rb = rb, .w = w, .out = out};
    return rows_parallel(&j, rows, e);
}
