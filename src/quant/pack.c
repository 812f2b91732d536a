/* pack.c - quantize / pack / unpack / fake-quantize kernels for every format in format.h.
 *
 * One path computes, block by block, the grid values r (the element values at scale 1) from
 * y = x * (1/s); fake quantization writes r * s, packing encodes r into its code, and unpacking
 * decodes the code back to r and writes r * s. decode(encode(r)) == r exactly for every grid
 * value (the tests check every code), so fake == pack + unpack bit for bit.
 *
 * The inner loops run over fixed 16-element steps with loop-invariant parameters, no function
 * pointers and no branches (selects only), so that gcc -O2 vectorizes them: minifloat rounding is
 * an integer round-to-nearest-even on the F32 bit pattern in the normal range and a float
 * add/subtract of a power of two in the subnormal range. Large inputs run on up to 8 threads over
 * row ranges; nothing depends on the thread count (stochastic rounding draws from a per-row
 * stream). */
#include "qscope/format.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format_impl.h"
#include "qscope/ggml.h"
#include "qscope/half.h"

#define STEP 16   /* vector step of the inner loops */
#define CHUNK 256 /* elements per kernel call (stack buffers) */
#define MAX_THREADS 8
#define INF_BITS 0x7f800000
#define QNAN_BITS 0x7fc00000
#define RNE_MAGIC 12582912.0f /* 1.5 * 2^23: (y + M) - M rounds |y| < 2^22 to an integer, RNE */

/* In-place operation (out == x) is safe for these element-wise loops: each element is read
 * before it is written, so the vectorizer may ignore the possible aliasing. */
#if defined(__GNUC__) && !defined(__clang__)
#define IVDEP _Pragma("GCC ivdep")
#else
#define IVDEP
#endif

/* The core is built for the baseline ISA; the hot loops are also compiled for AVX2 and picked at
 * run time (gcc/clang function multiversioning on x86-64). Same IEEE operations either way, so
 * the results are identical. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef SIMD_CLONES
#define SIMD_CLONES
#endif

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 2^k as a float for k in [-149, 127]. */
static float pow2f(int k)
{
    if (k >= -126)
        return u2f((uint32_t)(k + 127) << 23);
    return u2f(1u << (k + 149));
}

/* floor(log2(a)) for a finite a > 0. */
static int floor_log2f(float a)
{
    uint32_t b = f2u(a) & 0x7fffffffu;
    if (b >> 23)
        return (int)(b >> 23) - 127;
    return (31 - __builtin_clz(b)) - 149;
}

/* ---- element kernels ---------------------------------------------------------------------- */

/* Parameters of the element grid, derived once per call. */
struct kern {
    struct qs_elem el;
    enum qs_fmt_kind kind;
    int sat;
    /* INT: y = (x * inv) * mul, rounded, r = k * rmul (mxint8: mul 64, rmul 1/64) */
    float mul, rmul;
    /* FLOAT: see mf_near */
    int32_t clampb, maxb, minnorm, half_m1, keep, flip, ovf;
    int shift;
    float kf;
    uint32_t mmask, topfield;
    /* NF4, COMPAND: value of each code */
    float lut[256];
};

static void kern_init(struct kern *K, const struct qs_format *f, int sat)
{
    memset(K, 0, sizeof *K);
    qs_elem_of(f, &K->el);
    K->kind = f->kind;
    K->sat = K->el.nf == QS_NF_NONE ? 1 : sat;
    const struct qs_elem *el = &K->el;
    if (el->kind == QS_ELEM_INT) {
        K->mul = pow2f(el->frac);
        K->rmul = pow2f(-el->frac);
    } else if (el->kind == QS_ELEM_FLOAT) {
        int m = el->mbits;
        K->maxb = (int32_t)f2u((float)el->maxval);
        K->clampb = K->sat ? K->maxb : INF_BITS;
        K->minnorm = el->ebits == 0 ? INF_BITS : (int32_t)f2u(pow2f(el->emin));
        K->shift = 23 - m;
        K->half_m1 = (int32_t)((1u << (K->shift - 1)) - 1u);
        K->keep = (int32_t) ~((1u << K->shift) - 1u);
        /* with no mantissa bits the kept LSB is the code's exponent LSB: even code, not even
         * F32 exponent field */
        K->flip = (m == 0) ? ((el->bias + 1) & 1) : 0;
        K->kf = pow2f((el->ebits == 0 ? 0 : el->emin) - m + 23);
        K->ovf = el->nf == QS_NF_IEEE ? INF_BITS : QNAN_BITS;
        K->mmask = (1u << m) - 1u;
        K->topfield = (1u << el->ebits) - 1u;
    } else {
        int n = 1 << el->bits;
        for (int c = 0; c < n; c++) {
            double v = qs_elem_decode(el, (uint32_t)c);
            K->lut[c] = (float)v;
        }
    }
}

static inline float int_near(float x, float inv, float mul, float lo, float hi, float rmul)
{
    float y = (x * inv) * mul;
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    return ((y + RNE_MAGIC) - RNE_MAGIC) * rmul;
}

/* out[j] = r(x[j]) * s for the int grid; x == out allowed (also in the kernels below). */
SIMD_CLONES
static void k_int(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                  float hi, float s)
{
    const float mul = K->mul, rmul = K->rmul;
    int j = 0;
    for (; j + STEP <= n; j += STEP) {
        IVDEP
        for (int t = 0; t < STEP; t++)
            out[j + t] = int_near(x[j + t], inv, mul, lo, hi, rmul) * s;
    }
    for (; j < n; j++)
        out[j] = int_near(x[j], inv, mul, lo, hi, rmul) * s;
}

/* Round y onto a minifloat grid. Normal range: integer RNE on the F32 bit pattern at the
 * target's mantissa width (a carry moves into the exponent, as it should). Subnormal range:
 * (a + K) - K with K = 2^23 * quantum rounds to a multiple of the quantum (F32 RNE). */
static inline float mf_near(float y, int32_t clampb, int32_t minnorm, int shift, int32_t half_m1,
                            int32_t keep, int32_t flip, float kf)
{
    uint32_t b = f2u(y);
    uint32_t sign = b & 0x80000000u;
    int32_t a = (int32_t)(b & 0x7fffffffu);
    a = a < clampb ? a : clampb;
    int32_t lsb = ((a >> shift) & 1) ^ flip;
    int32_t rn = (a + half_m1 + lsb) & keep;
    int32_t rs = (int32_t)f2u((u2f((uint32_t)a) + kf) - kf);
    int32_t sub = -(int32_t)(a < minnorm); /* a mask, not a branch: both sides are computed */
    int32_t rr = (rs & sub) | (rn & ~sub);
    return u2f((uint32_t)rr | sign);
}

static inline float mf_ovf(float r, int32_t maxb, int32_t ovf)
{
    uint32_t b = f2u(r);
    int32_t a = (int32_t)(b & 0x7fffffffu);
    a = a > maxb ? ovf : a;
    return u2f((uint32_t)a | (b & 0x80000000u));
}

#define MF_ARGS clampb, minnorm, shift, half_m1, keep, flip, kf
#define MF_PARAMS(K)                                                                               \
    const int32_t clampb = (K)->clampb, minnorm = (K)->minnorm, half_m1 = (K)->half_m1;            \
    const int32_t keep = (K)->keep, flip = (K)->flip, maxb = (K)->maxb, ovf = (K)->ovf;            \
    const int shift = (K)->shift;                                                                  \
    const float kf = (K)->kf;                                                                      \
    (void)maxb;                                                                                    \
    (void)ovf

SIMD_CLONES
static void k_float(const struct kern *K, const float *x, float *out, int n, float inv, float s)
{
    MF_PARAMS(K);
    int j = 0;
    if (K->sat) {
        for (; j + STEP <= n; j += STEP) {
            IVDEP
            for (int t = 0; t < STEP; t++)
                out[j + t] = mf_near(x[j + t] * inv, MF_ARGS) * s;
        }
        for (; j < n; j++)
            out[j] = mf_near(x[j] * inv, MF_ARGS) * s;
    } else {
        for (; j + STEP <= n; j += STEP) {
            IVDEP
            for (int t = 0; t < STEP; t++)
                out[j + t] = mf_ovf(mf_near(x[j + t] * inv, MF_ARGS), maxb, ovf) * s;
        }
        for (; j < n; j++)
            out[j] = mf_ovf(mf_near(x[j] * inv, MF_ARGS), maxb, ovf) * s;
    }
}

/* MX with minifloat elements, nblk full 32-element blocks of one row: shared exponent from the
 * block absmax, then the element cast, fused. Returns the first block holding a NaN/Inf, or -1. */
SIMD_CLONES
static int k_mx_float(const struct kern *K, const float *x, float *out, int nblk)
{
    MF_PARAMS(K);
    const int emax = K->el.emax;
    for (int b = 0; b < nblk; b++) {
        const float *xb = x + 32 * b;
        float *ob = out + 32 * b;
        uint32_t m = 0;
        for (int t = 0; t < 32; t++) {
            uint32_t a = f2u(xb[t]) & 0x7fffffffu;
            m = a > m ? a : m;
        }
        if (m >= INF_BITS)
            return b;
        int ex = m ? floor_log2f(u2f(m)) - emax : -127;
        ex = ex < -127 ? -127 : ex > 127 ? 127 : ex;
        const float inv = pow2f(-ex), s = pow2f(ex);
        if (K->sat) {
            IVDEP
            for (int t = 0; t < 32; t++)
                ob[t] = mf_near(xb[t] * inv, MF_ARGS) * s;
        } else {
            IVDEP
            for (int t = 0; t < 32; t++)
                ob[t] = mf_ovf(mf_near(xb[t] * inv, MF_ARGS), maxb, ovf) * s;
        }
    }
    return -1;
}

/* NF4: a select chain over the 15 decision thresholds (vectorizes without a gather). */
SIMD_CLONES
static void k_nf4(const struct kern *K, const float *x, float *out, int n, float inv, float s)
{
    float mid[QS_NF4_LEVELS - 1], lv[QS_NF4_LEVELS];
    memcpy(mid, qs_nf4_mids, sizeof mid);
    memcpy(lv, K->lut, sizeof lv);
    int j = 0;
    for (; j + STEP <= n; j += STEP) {
        IVDEP
        for (int t = 0; t < STEP; t++) {
            float y = x[j + t] * inv, r = lv[0];
            for (int i = 0; i < QS_NF4_LEVELS - 1; i++)
                r = y > mid[i] ? lv[i + 1] : r;
            out[j + t] = r * s;
        }
    }
    for (; j < n; j++) {
        float y = x[j] * inv, r = lv[0];
        for (int i = 0; i < QS_NF4_LEVELS - 1; i++)
            r = y > mid[i] ? lv[i + 1] : r;
        out[j] = r * s;
    }
}

static void k_compand(const struct kern *K, const float *x, float *out, int n, float inv, float s)
{
    int sb = K->el.bits - 1;
    for (int j = 0; j < n; j++) {
        float y = x[j] * inv;
        float a = fabsf(y);
        int k = qs_compand_k(&K->el, a > 1.0f ? 1.0 : (double)a);
        out[j] = K->lut[((uint32_t)(f2u(y) >> 31) << sb) | (uint32_t)k] * s;
    }
}

/* uniform in [0, 1) with 24 random bits, so that y + u is exact in double */
static inline double unif24(qs_rng *g)
{
    return (double)(qs_rng_u64(g) >> 40) * 0x1p-24;
}

/* Stochastic rounding: round up with probability equal to the distance from the grid value
 * below, in units of the local grid spacing (floor(y + u) for integers). */
static float sr_one(const struct kern *K, float y, float lo, float hi, qs_rng *g)
{
    const struct qs_elem *el = &K->el;
    double u = unif24(g);
    switch (el->kind) {
    case QS_ELEM_INT: {
        float t = (y * K->mul);
        t = t < lo ? lo : t;
        t = t > hi ? hi : t;
        int k = (int)floor((double)t + u);
        return (float)k * K->rmul;
    }
    case QS_ELEM_NF4: {
        double v = y < -1.0f ? -1.0 : y > 1.0f ? 1.0 : (double)y;
        int i = 0;
        while (i < QS_NF4_LEVELS - 1 && (double)qs_nf4_levels[i + 1] <= v)
            i++;
        if (i == QS_NF4_LEVELS - 1)
            return K->lut[i];
        double l0 = qs_nf4_levels[i], l1 = qs_nf4_levels[i + 1];
        return K->lut[u < (v - l0) / (l1 - l0) ? i + 1 : i];
    }
    case QS_ELEM_COMPAND: {
        double a = fabs((double)y);
        if (a > 1.0)
            a = 1.0;
        double c = log1p(QS_COMPAND_MU * a) / log1p(QS_COMPAND_MU) * el->qmax;
        int k = (int)floor(c + u);
        if (k > el->qmax)
            k = el->qmax;
        return K->lut[((uint32_t)(f2u(y) >> 31) << (el->bits - 1)) | (uint32_t)k];
    }
    case QS_ELEM_FLOAT:
        break;
    }
    uint32_t sign = f2u(y) & 0x80000000u;
    double a = fabs((double)y), mx = el->maxval;
    if (a > mx && K->sat)
        a = mx;
    if (a > 2.0 * mx)
        return u2f((uint32_t)K->ovf | sign);
    double q;
    if (el->ebits == 0) {
        q = ldexp(1.0, -el->mbits);
    } else {
        int ex = el->emin + 1;
        if (a > 0)
            frexp(a, &ex);
        ex -= 1;
        if (ex < el->emin)
            ex = el->emin;
        q = ldexp(1.0, ex - el->mbits);
    }
    double rv = floor(a / q + u) * q;
    if (rv > mx)
        return K->sat ? u2f(f2u((float)mx) | sign) : u2f((uint32_t)K->ovf | sign);
    return u2f(f2u((float)rv) | sign);
}

/* out[j] = r(x[j]) * s for x[0..n) under scale inverse inv and int bounds [lo, hi]; s = 1 gives
 * the grid values themselves. out == x allowed. */
static void grid(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                 float hi, float s, int stoch, qs_rng *g)
{
    if (stoch) {
        for (int j = 0; j < n; j++)
            out[j] = sr_one(K, x[j] * inv, lo, hi, g) * s;
        return;
    }
    switch (K->el.kind) {
    case QS_ELEM_INT:
        k_int(K, x, out, n, inv, lo, hi, s);
        break;
    case QS_ELEM_FLOAT:
        k_float(K, x, out, n, inv, s);
        break;
    case QS_ELEM_NF4:
        k_nf4(K, x, out, n, inv, s);
        break;
    case QS_ELEM_COMPAND:
        k_compand(K, x, out, n, inv, s);
        break;
    }
}

/* Code of a grid value r (the inverse of the decode table). z: int zero point. */
static uint32_t encode(const struct kern *K, float r, int z)
{
    const struct qs_elem *el = &K->el;
    uint32_t mask = (1u << el->bits) - 1u;
    uint32_t b = f2u(r), sign = b >> 31, a = b & 0x7fffffffu;
    switch (el->kind) {
    case QS_ELEM_INT:
        return (uint32_t)((int)(r * K->mul) + z) & mask;
    case QS_ELEM_NF4: {
        uint32_t c = 0;
        for (int i = 0; i < QS_NF4_LEVELS - 1; i++)
            c += r > qs_nf4_mids[i];
        return c;
    }
    case QS_ELEM_COMPAND: {
        int lo = 0, hi = el->qmax; /* lut[k] ascending in k for the positive half */
        float v = u2f(a);
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (K->lut[mid] < v)
                lo = mid + 1;
            else
                hi = mid;
        }
        return (sign << (el->bits - 1)) | (uint32_t)lo;
    }
    case QS_ELEM_FLOAT:
        break;
    }
    uint32_t c, m = (uint32_t)el->mbits;
    if ((int32_t)a > K->maxb) /* overflow result: Inf or NaN */
        c = (K->topfield << m) | ((a == INF_BITS) ? 0u : K->mmask);
    else if ((int32_t)a < K->minnorm)
        c = f2u(u2f(a) + K->kf) - f2u(K->kf);
    else
        c = (((a >> 23) - 127u + (uint32_t)el->bias) << m) | ((a >> K->shift) & K->mmask);
    return (c | (sign << (el->bits - 1))) & mask;
}

/* codes[j] = encode(r[j]) for a run; the minifloat and int cases as vectorizable selects. */
SIMD_CLONES
static void encode_run(const struct kern *K, const float *r, int n, int z, uint32_t *codes)
{
    const struct qs_elem *el = &K->el;
    const uint32_t mask = (1u << el->bits) - 1u;
    if (el->kind == QS_ELEM_INT) {
        const float mul = K->mul;
        for (int j = 0; j < n; j++)
            codes[j] = (uint32_t)((int)(r[j] * mul) + z) & mask;
        return;
    }
    if (el->kind != QS_ELEM_FLOAT) {
        for (int j = 0; j < n; j++)
            codes[j] = encode(K, r[j], z);
        return;
    }
    const uint32_t m = (uint32_t)el->mbits, sb = (uint32_t)el->bits - 1u;
    const uint32_t mmask = K->mmask, shift = (uint32_t)K->shift;
    const uint32_t ebias = (uint32_t)el->bias - 127u;
    const uint32_t c_inf = K->topfield << m, c_nan = (K->topfield << m) | mmask;
    const int32_t maxb = K->maxb, minnorm = K->minnorm;
    const float kf = K->kf;
    const uint32_t kbits = f2u(kf);
    for (int j = 0; j < n; j++) {
        uint32_t b = f2u(r[j]), a = b & 0x7fffffffu;
        uint32_t csub = f2u(u2f(a) + kf) - kbits;
        uint32_t cnorm = (((a >> 23) + ebias) << m) | ((a >> shift) & mmask);
        uint32_t covf = a == INF_BITS ? c_inf : c_nan;
        uint32_t c = (int32_t)a < minnorm ? csub : cnorm;
        c = (int32_t)a > maxb ? covf : c;
        codes[j] = (c | ((b >> 31) << sb)) & mask;
    }
}

/* ---- scales ------------------------------------------------------------------------------ */

struct blk {
    float s, inv;   /* scale and 1/s (0 for a zero scale) */
    float lo, hi;   /* INT: clamp bounds of round(y) (zero point folded in) */
    int z;          /* INT asym: zero point */
    uint32_t scode; /* stored scale: F16 / F32 bits, E8M0, E4M3 code */
};

enum scale_store { SC_NONE, SC_F16, SC_F32, SC_E8M0, SC_E4M3 };

struct job {
    const struct qs_format *f;
    const struct qs_qopts *o;
    struct kern K;
    struct kern k_e4m3; /* NVFP4 block scales */
    const float *w;
    float *out;          /* fake */
    struct qs_packed *p; /* pack, unpack */
    const float *lut;    /* unpack: value of each code (NULL for int) */
    int rows, cols;
    int seg, nseg; /* block length along a row, blocks per row */
    int shared;    /* one block parameter set for the whole tensor */
    struct blk tb;
    float g; /* NVFP4 tensor scale */
    enum scale_store store;
    int stoch;
    const struct qs_qblock *given; /* qs_quant_pack_blocks: every block's parameters */
    /* per-thread state */
    qs_err err[MAX_THREADS];
    int failed[MAX_THREADS];
    struct {
        uint32_t ab;
        float mn, mx;
    } part[MAX_THREADS]; /* tensor statistics */
};

static int store_bytes(enum scale_store s)
{
    static const int by[] = {
        [SC_NONE] = 0, [SC_F16] = 2, [SC_F32] = 4, [SC_E8M0] = 1, [SC_E4M3] = 1};
    return by[s];
}

/* Rounds a scale to its storage type; -1 when it overflows F16. */
static int round_scale(const struct job *J, float v, float *s, uint32_t *code, int row, int col,
                       qs_err *e)
{
    if (J->store == SC_F32) {
        *s = v;
        *code = f2u(v);
        return 0;
    }
    uint16_t h = qs_f32_to_f16(v);
    if ((h & 0x7c00u) == 0x7c00u)
        return qs_errf(e, "scale %g at [%d, %d] overflows F16 storage; use scale=f32", (double)v,
                       row, col);
    *s = qs_f16_to_f32(h);
    *code = h;
    return 0;
}

static void set_inv(struct blk *b)
{
    b->inv = b->s > 0.0f ? 1.0f / b->s : 0.0f;
    if (!(b->inv <= 3.4e38f)) { /* a scale so small that 1/s overflows: treat the block as 0 */
        b->s = 0.0f;
        b->inv = 0.0f;
    }
}

/* Block parameters from its (clipped) range: amax = max |x|, [mn, mx] = value range. */
static int make_blk(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                    int col, qs_err *e)
{
    const struct qs_format *f = J->f;
    const struct qs_qopts *o = J->o;
    const struct qs_elem *el = &J->K.el;
    memset(b, 0, sizeof *b);
    switch (f->kind) {
    case QS_FMT_INT:
        if (o->asym) {
            float lo = mn < 0.0f ? mn : 0.0f, hi = mx > 0.0f ? mx : 0.0f;
            int qm = (1 << f->bits) - 1;
            if (round_scale(J, (hi - lo) / (float)qm, &b->s, &b->scode, row, col, e) < 0)
                return -1;
            set_inv(b);
            int z = 0;
            if (b->s > 0.0f) {
                float zf = nearbyintf(-lo / b->s);
                z = zf < 0.0f ? 0 : zf > (float)qm ? qm : (int)zf;
            }
            b->z = z;
            b->lo = (float)-z;
            b->hi = (float)(qm - z);
        } else {
            float qd = o->full_range ? (float)((1 << f->bits) - 1) / 2.0f : (float)el->qmax;
            if (round_scale(J, amax / qd, &b->s, &b->scode, row, col, e) < 0)
                return -1;
            set_inv(b);
            b->lo = o->full_range ? (float)-(1 << (f->bits - 1)) : (float)-el->qmax;
            b->hi = (float)el->qmax;
        }
        return 0;
    case QS_FMT_MINIFLOAT:
    case QS_FMT_FIXED:
        if (o->scale_none) {
            b->s = b->inv = 1.0f;
            return 0;
        }
        if (round_scale(J, amax / (float)el->maxval, &b->s, &b->scode, row, col, e) < 0)
            return -1;
        set_inv(b);
        return 0;
    case QS_FMT_NF4:
    case QS_FMT_COMPAND:
        if (round_scale(J, amax, &b->s, &b->scode, row, col, e) < 0)
            return -1;
        set_inv(b);
        return 0;
    case QS_FMT_MX: {
        /* OCP MX v1.0: shared_exp = floor(log2(amax)) - emax_elem, clamped to E8M0 */
        int ex = amax > 0.0f ? floor_log2f(amax) - el->emax : -127;
        ex = ex < -127 ? -127 : ex > 127 ? 127 : ex;
        b->s = pow2f(ex);
        b->inv = pow2f(-ex);
        b->scode = (uint32_t)(ex + 127);
        if (el->kind == QS_ELEM_INT) {
            b->lo = -(float)el->qmax;
            b->hi = (float)el->qmax;
        }
        return 0;
    }
    case QS_FMT_NVFP4: {
        float bs = 0.0f;
        if (J->g > 0.0f) {
            float v = (amax / 6.0f) / J->g;
            float r;
            k_float(&J->k_e4m3, &v, &r, 1, 1.0f, 1.0f);
            bs = r;
        }
        b->scode = encode(&J->k_e4m3, bs, 0);
        b->s = bs * J->g;
        set_inv(b);
        return 0;
    }
    case QS_FMT_NONE:
    case QS_FMT_GGML: /* ggml.c, never through a job */
        break;
    }
    return qs_errf(e, "format '%s' has no quantizer", f->name);
}

/* ---- block statistics and clipping ---------------------------------------------------------- */

/* max |x| as F32 bits (vectorizable integer max); >= INF_BITS flags a NaN/Inf. */
SIMD_CLONES
static uint32_t absmax_bits(const float *restrict x, size_t n)
{
    uint32_t m = 0;
    size_t j = 0;
    if (n >= STEP) {
        uint32_t acc[STEP] = {0};
        for (; j + STEP <= n; j += STEP)
            for (int t = 0; t < STEP; t++) {
                uint32_t a = f2u(x[j + t]) & 0x7fffffffu;
                acc[t] = a > acc[t] ? a : acc[t];
            }
        for (int t = 0; t < STEP; t++)
            m = acc[t] > m ? acc[t] : m;
    }
    for (; j < n; j++) {
        uint32_t a = f2u(x[j]) & 0x7fffffffu;
        m = a > m ? a : m;
    }
    return m;
}

static void minmax(const float *x, size_t n, float *mn, float *mx)
{
    float lo = x[0], hi = x[0];
    for (size_t j = 1; j < n; j++) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
    }
    *mn = lo;
    *mx = hi;
}

static int nonfinite_at(const float *x, size_t n, size_t base, int cols, qs_err *e)
{
    for (size_t j = 0; j < n; j++)
        if (!isfinite(x[j])) {
            size_t i = base + j;
            return qs_errf(e, "non-finite value %g at [%zu, %zu]", (double)x[j], i / (size_t)cols,
                           i % (size_t)cols);
        }
    return qs_errf(e, "non-finite value");
}

/* k-th smallest of a[0..n) (a is reordered). */
static float kth(float *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float piv = a[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < piv)
                i++;
            while (a[j] > piv)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return a[k];
    }
    return a[k];
}

/* P-th percentile of |x| (linear interpolation between order statistics, as numpy's default). */
static int percentile_abs(const float *x, size_t n, double pct, float *out, qs_err *e)
{
    float *a = malloc(n * sizeof *a);
    if (!a)
        return qs_errf(e, "out of memory");
    for (size_t j = 0; j < n; j++)
        a[j] = fabsf(x[j]);
    double pos = pct / 100.0 * (double)(n - 1);
    size_t i0 = (size_t)floor(pos);
    double fr = pos - (double)i0;
    double v0 = kth(a, n, i0);
    double v1 = (fr > 0.0 && i0 + 1 < n) ? kth(a, n, i0 + 1) : v0;
    *out = (float)(v0 + (v1 - v0) * fr);
    free(a);
    return 0;
}

/* Sum of squared fake-quantization errors of x[0..n) under block b (nearest rounding). */
static double block_sse(const struct job *J, const struct blk *b, const float *x, size_t n)
{
    float r[CHUNK];
    double sse = 0.0;
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        int m = (int)(n - c0 < CHUNK ? n - c0 : CHUNK);
        grid(&J->K, x + c0, r, m, b->inv, b->lo, b->hi, 1.0f, 0, NULL);
        for (int j = 0; j < m; j++) {
            double d = (double)x[c0 + j] - (double)(r[j] * b->s);
            sse += d * d;
        }
    }
    return sse;
}

/* Parameters of the block x[0..n) starting at flat index base, honouring the clip option. */
static int block_params(const struct job *J, const float *x, size_t n, size_t base, struct blk *b,
                        qs_err *e)
{
    int row = (int)(base / (size_t)J->cols), col = (int)(base % (size_t)J->cols);
    uint32_t ab = absmax_bits(x, n);
    if (ab >= INF_BITS)
        return nonfinite_at(x, n, base, J->cols, e);
    float amax = u2f(ab), mn = 0.0f, mx = 0.0f;
    if (J->o->asym)
        minmax(x, n, &mn, &mx);
    if (J->o->clip == QS_CLIP_PCT && !J->o->scale_none) {
        float c = 0.0f;
        if (percentile_abs(x, n, J->o->pct, &c, e) < 0)
            return -1;
        amax = c < amax ? c : amax;
        mn = mn < -c ? -c : mn;
        mx = mx > c ? c : mx;
    } else if (J->o->clip == QS_CLIP_MSE && !J->o->scale_none) {
        /* grid search of the clipping ratio in [0.5, 1], 101 steps; ties keep the larger */
        double best = INFINITY;
        struct blk cand;
        for (int k = 0; k <= 100; k++) {
            double ratio = 1.0 - 0.005 * k;
            if (make_blk(J, (float)(amax * ratio), (float)(mn * ratio), (float)(mx * ratio), &cand,
                         row, col, e) < 0)
                return -1;
            double sse = block_sse(J, &cand, x, n);
            if (sse < best) {
                best = sse;
                *b = cand;
            }
        }
        return 0;
    }
    return make_blk(J, amax, mn, mx, b, row, col, e);
}

/* ---- threads -------------------------------------------------------------------------- */

typedef void (*rows_fn)(struct job *J, int r0, int r1, int tid);

struct thr {
    struct job *J;
    rows_fn fn;
    int r0, r1, tid;
};

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    t->fn(t->J, t->r0, t->r1, t->tid);
    return NULL;
}

static int g_ncpu = 1;
static pthread_once_t g_ncpu_once = PTHREAD_ONCE_INIT;

static void init_ncpu(void)
{
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    g_ncpu = c < 1 ? 1 : c > MAX_THREADS ? MAX_THREADS : (int)c;
}

/* Threads for work elements over rows: one below 128 Ki elements (thread start-up would cost
 * more than it saves), otherwise one per online CPU (at most 8, at most one per row). */
static int n_threads(size_t work, int rows)
{
    pthread_once(&g_ncpu_once, init_ncpu);
    int ncpu = g_ncpu;
    if (work < ((size_t)1 << 17))
        return 1;
    return rows < ncpu ? (rows < 1 ? 1 : rows) : ncpu;
}

/* Runs fn over rows [0, rows) split into nt ranges whose starts are multiples of align.
 * Returns the index of the first thread that failed, or -1. */
static int par_rows(struct job *J, rows_fn fn, int rows, int align, int nt)
{
    struct thr t[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int per = (rows + nt - 1) / nt;
    per = (per + align - 1) / align * align;
    int k = 0;
    for (int i = 0; i < nt; i++) {
        int r0 = i * per, r1 = r0 + per < rows ? r0 + per : rows;
        if (r0 >= rows)
            break;
        t[k] = (struct thr){J, fn, r0, r1, k};
        J->failed[k] = 0;
        k++;
    }
    for (int i = 1; i < k; i++)
        started[i] = pthread_create(&th[i], NULL, thr_main, &t[i]) == 0;
    for (int i = 1; i < k; i++)
        if (!started[i])
            thr_main(&t[i]); /* could not start a thread: do its share here */
    if (k > 0)
        thr_main(&t[0]);
    for (int i = 1; i < k; i++)
        if (started[i])
            pthread_join(th[i], NULL);
    for (int i = 0; i < k; i++)
        if (J->failed[i])
            return i;
    return -1;
}

/* ---- setup -------------------------------------------------------------------------------- */

static int job_init(struct job *J, const struct qs_format *f, const struct qs_qopts *o,
                    const float *w, int rows, int cols, qs_err *e)
{
    memset(J, 0, sizeof *J);
    if (!f || f->kind == QS_FMT_NONE)
        return qs_errf(e, "format 'none' keeps values in float; nothing to quantize");
    if (rows < 1 || cols < 1)
        return qs_errf(e, "%s: empty matrix (%d x %d)", f->name, rows, cols);
    if (qs_qopts_check(f, o, e) < 0)
        return -1;
    J->f = f;
    J->o = o;
    J->w = w;
    J->rows = rows;
    J->cols = cols;
    J->stoch = o->round == QS_ROUND_STOCHASTIC;
    kern_init(&J->K, f, o->saturate);
    switch (f->kind) {
    case QS_FMT_MX:
    case QS_FMT_NVFP4:
        J->seg = f->block;
        J->store = f->kind == QS_FMT_MX ? SC_E8M0 : SC_E4M3;
        if (f->kind == QS_FMT_NVFP4) {
            struct qs_format e4m3 = {.kind = QS_FMT_MINIFLOAT,
                                     .bits = 8,
                                     .ebits = 4,
                                     .mbits = 3,
                                     .bias = 7,
                                     .nf = QS_NF_E4M3};
            kern_init(&J->k_e4m3, &e4m3, 1);
        }
        break;
    case QS_FMT_NF4:
        /* group:N blocks, one block per row for gran=channel, else the QLoRA default 64 */
        J->seg = o->gran == QS_GRAN_GROUP     ? o->group
                 : o->gran == QS_GRAN_CHANNEL ? cols
                                              : (f->block > 0 ? f->block : 64);
        J->store = o->scale_f32 ? SC_F32 : SC_F16;
        break;
    default:
        J->store = o->scale_none ? SC_NONE : o->scale_f32 ? SC_F32 : SC_F16;
        if (o->scale_none || o->gran == QS_GRAN_TENSOR) {
            J->seg = cols;
            J->shared = 1;
        } else if (o->gran == QS_GRAN_CHANNEL) {
            J->seg = cols;
        } else {
            J->seg = o->group;
        }
        break;
    }
    /* qscope: the one rule for groups and blocks of every format (int/minifloat/nf4/compand
     * group:N, NF4 blocks, MX 32, NVFP4 16): they tile each row from column 0, and when the
     * row length is not a multiple of the size the last one of the row is shorter and gets a
     * scale of its own; a size above the row length gives one group per row. */
    if (J->seg > cols)
        J->seg = cols;
    J->nseg = (cols + J->seg - 1) / J->seg;
    return 0;
}

static void stats_rows(struct job *J, int r0, int r1, int tid)
{
    size_t off = (size_t)r0 * J->cols, n = (size_t)(r1 - r0) * J->cols;
    J->part[tid].ab = absmax_bits(J->w + off, n);
    if (J->o->asym && J->part[tid].ab < INF_BITS)
        minmax(J->w + off, n, &J->part[tid].mn, &J->part[tid].mx);
}

/* Whole-tensor statistics (threaded): amax, min, max. Checks for NaN/Inf. */
static int tensor_stats(struct job *J, float *amax, float *mn, float *mx, qs_err *e)
{
    size_t n = (size_t)J->rows * J->cols;
    for (int i = 0; i < MAX_THREADS; i++) {
        J->part[i].ab = 0;
        J->part[i].mn = INFINITY;
        J->part[i].mx = -INFINITY;
    }
    par_rows(J, stats_rows, J->rows, 1, n_threads(n, J->rows));
    uint32_t ab = 0;
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < MAX_THREADS; i++) {
        ab = J->part[i].ab > ab ? J->part[i].ab : ab;
        lo = J->part[i].mn < lo ? J->part[i].mn : lo;
        hi = J->part[i].mx > hi ? J->part[i].mx : hi;
    }
    if (ab >= INF_BITS)
        return nonfinite_at(J->w, n, 0, J->cols, e);
    *amax = u2f(ab);
    *mn = J->o->asym ? lo : 0.0f;
    *mx = J->o->asym ? hi : 0.0f;
    return 0;
}

/* Computes the parameters shared by the whole tensor: the tensor block (gran=tensor) or the
 * NVFP4 tensor scale. amax_given >= 0 overrides the tensor's own absmax. */
static int job_tensor(struct job *J, float amax_given, qs_err *e)
{
    if (!J->shared && J->f->kind != QS_FMT_NVFP4)
        return 0;
    size_t n = (size_t)J->rows * J->cols;
    float amax = 0.0f, mn = 0.0f, mx = 0.0f;
    if (amax_given >= 0.0f) {
        if (absmax_bits(J->w, n) >= INF_BITS)
            return nonfinite_at(J->w, n, 0, J->cols, e);
        amax = amax_given;
    } else if (J->shared && J->o->clip != QS_CLIP_MAX && !J->o->scale_none) {
        return block_params(J, J->w, n, 0, &J->tb, e);
    } else if (tensor_stats(J, &amax, &mn, &mx, e) < 0) {
        return -1;
    }
    if (J->f->kind == QS_FMT_NVFP4) {
        J->g = amax / (6.0f * 448.0f); /* NVFP4 tensor scale: amax / (6 * 448), F32 */
        if (!(J->g > 0.0f && J->g <= 3.4e38f))
            J->g = 0.0f;
        return 0;
    }
    return make_blk(J, amax, mn, mx, &J->tb, 0, 0, e);
}

/* ---- fake quantization ------------------------------------------------------------------ */

static void seed_row(qs_rng *g, const struct qs_qopts *o, int row)
{
    qs_rng_seed(g, o->seed + (uint64_t)row * 0x9e3779b97f4a7c15ULL);
}

/* Whether the fused MX path applies: minifloat elements, max clipping, nearest rounding. */
static int mx_fast(const struct job *J)
{
    return J->f->kind == QS_FMT_MX && J->K.el.kind == QS_ELEM_FLOAT && J->o->clip == QS_CLIP_MAX &&
           !J->stoch;
}

static void fake_rows(struct job *J, int r0, int r1, int tid)
{
    const size_t cols = (size_t)J->cols;
    qs_rng g;
    for (int row = r0; row < r1; row++) {
        if (J->stoch)
            seed_row(&g, J->o, row);
        int sg0 = 0;
        if (mx_fast(J)) {
            size_t base = (size_t)row * cols;
            int nfull = (int)(cols / 32);
            int bad = k_mx_float(&J->K, J->w + base, J->out + base, nfull);
            if (bad >= 0) {
                J->failed[tid] = 1;
                nonfinite_at(J->w + base + 32 * (size_t)bad, 32, base + 32 * (size_t)bad, J->cols,
                             &J->err[tid]);
                return;
            }
            sg0 = nfull; /* a partial last block goes the generic way */
        }
        for (int sg = sg0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t base = (size_t)row * cols + c0;
            const float *x = J->w + base;
            float *out = J->out + base;
            struct blk b;
            if (J->shared)
                b = J->tb;
            else if (block_params(J, x, n, base, &b, &J->err[tid]) < 0) {
                J->failed[tid] = 1;
                return;
            }
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                grid(&J->K, x + k, out + k, m, b.inv, b.lo, b.hi, b.s, J->stoch, &g);
            }
        }
    }
}

static int run_fake(struct job *J, float *out, float amax_given, qs_err *e)
{
    size_t n = (size_t)J->rows * J->cols;
    if (job_tensor(J, amax_given, e) < 0)
        return -1;
    /* In place with per-block scales, an error may surface after earlier blocks were written:
     * work on a copy so that w is never left half-quantized. */
    float *tmp = NULL;
    if (out == J->w && !J->shared) {
        tmp = malloc(n * sizeof *tmp);
        if (!tmp)
            return qs_errf(e, "out of memory");
    }
    J->out = tmp ? tmp : out;
    int bad = par_rows(J, fake_rows, J->rows, 1, n_threads(n, J->rows));
    if (bad >= 0) {
        if (e)
            *e = J->err[bad];
        free(tmp);
        return -1;
    }
    if (tmp) {
        memcpy(out, tmp, n * sizeof *tmp);
        free(tmp);
    }
    return 0;
}

int qs_quant_fake(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, float *out, qs_err *e)
{
    if (!w || !out)
        return qs_errf(e, "fake quantization: no data");
    if (f && f->kind == QS_FMT_GGML)
        return qs_qopts_check(f, o, e) < 0 ? -1 : qs_ggml_fake(f, w, rows, cols, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = job_init(J, f, o, w, rows, cols, e);
    if (rc == 0)
        rc = run_fake(J, out, -1.0f, e);
    free(J);
    return rc;
}

int qs_quant_fake_amax(const struct qs_format *f, const struct qs_qopts *o, const float *x,
                       int rows, int cols, float amax, float *out, qs_err *e)
{
    if (!f || f->kind == QS_FMT_NONE)
        return qs_errf(e, "format 'none' keeps values in float; nothing to quantize");
    if (!(amax >= 0.0f && amax <= 3.4e38f))
        return qs_errf(e, "%s: calibrated absmax %g must be finite and >= 0", f->name,
                       (double)amax);
    if (o->asym)
        return qs_errf(e, "%s: a calibrated absmax gives a symmetric range; asym needs min/max",
                       f->name);
    if (f->kind == QS_FMT_MX || f->kind == QS_FMT_NF4 || f->kind == QS_FMT_GGML)
        return qs_errf(e, "%s: scales are computed per block; a calibrated absmax does not apply",
                       f->name);
    if (!x || !out)
        return qs_errf(e, "fake quantization: no data");
    struct qs_qopts t = *o;
    if (f->kind != QS_FMT_NVFP4)
        t.gran = QS_GRAN_TENSOR;
    t.gran_set = 0;
    t.clip = QS_CLIP_MAX;
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = job_init(J, f, &t, x, rows, cols, e);
    if (rc == 0)
        rc = run_fake(J, out, amax, e);
    free(J);
    return rc;
}

/* ---- one block's quantizer, applied to other values ------------------------------------ */

struct qs_quantizer {
    struct job J;
};

int qs_quantizer_new(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                     int cols, struct qs_quantizer **out, qs_err *e)
{
    *out = NULL;
    if (!w)
        return qs_errf(e, "quantizer: no data");
    if (o->round == QS_ROUND_STOCHASTIC)
        return qs_errf(e, "%s: this method rounds to nearest; round=stochastic does not apply",
                       f ? f->name : "format");
    struct qs_quantizer *q = malloc(sizeof *q);
    if (!q)
        return qs_errf(e, "out of memory");
    if (job_init(&q->J, f, o, w, rows, cols, e) < 0 || job_tensor(&q->J, -1.0f, e) < 0) {
        free(q);
        return -1;
    }
    q->J.w = NULL; /* not kept: fit and round take their values explicitly */
    *out = q;
    return 0;
}

void qs_quantizer_free(struct qs_quantizer *q)
{
    free(q);
}

int qs_quantizer_block(const struct qs_quantizer *q)
{
    return q->J.seg;
}

int qs_quantizer_shared(const struct qs_quantizer *q)
{
    return q->J.shared;
}

int qs_quantizer_fit(const struct qs_quantizer *q, const float *x, int n, int row, int col,
                     struct qs_qblock *b, qs_err *e)
{
    struct blk k;
    if (q->J.shared) {
        k = q->J.tb;
    } else {
        if (n < 1)
            return qs_errf(e, "quantizer: empty block");
        if (block_params(&q->J, x, (size_t)n, (size_t)row * (size_t)q->J.cols + (size_t)col, &k,
                         e) < 0)
            return -1;
    }
    b->s = k.s;
    b->inv = k.inv;
    b->lo = k.lo;
    b->hi = k.hi;
    b->z = k.z;
    b->scode = k.scode;
    return 0;
}

void qs_quantizer_round(const struct qs_quantizer *q, const struct qs_qblock *b, const float *x,
                        float *out, int n)
{
    grid(&q->J.K, x, out, n, b->inv, b->lo, b->hi, b->s, 0, NULL);
}

void qs_quantizer_round_each(const struct qs_quantizer *q, const struct qs_qblock *b,
                             size_t bstride, const float *x, float *out, int n)
{
    const struct kern *K = &q->J.K;
    if (K->el.kind == QS_ELEM_INT) { /* inline: no call per element */
        const float mul = K->mul, rmul = K->rmul;
        for (int i = 0; i < n; i++) {
            const struct qs_qblock *bi = b + (size_t)i * bstride;
            out[i] = int_near(x[i], bi->inv, mul, bi->lo, bi->hi, rmul) * bi->s;
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        const struct qs_qblock *bi = b + (size_t)i * bstride;
        grid(K, x + i, out + i, 1, bi->inv, bi->lo, bi->hi, bi->s, 0, NULL);
    }
}

/* ---- pack / unpack ---------------------------------------------------------------------- */

/* Writes n codes starting at bit position bitpos of buf (zeroed beforehand; LSB first). */
static void put_codes(uint8_t *buf, size_t bitpos, const uint32_t *codes, int n, int bits)
{
    int j = 0;
    if (bits == 8 && (bitpos & 7) == 0) {
        for (uint8_t *d = buf + (bitpos >> 3); j < n; j++)
            d[j] = (uint8_t)codes[j];
        return;
    }
    if (bits == 4 && (bitpos & 7) == 0) {
        uint8_t *d = buf + (bitpos >> 3);
        for (; j + 2 <= n; j += 2)
            d[j >> 1] = (uint8_t)(codes[j] | (codes[j + 1] << 4));
        bitpos += (size_t)j * 4;
    }
    for (; j < n; j++, bitpos += (size_t)bits) {
        size_t byte = bitpos >> 3;
        uint32_t v = codes[j] << (bitpos & 7);
        int nb = (int)((bitpos & 7) + (size_t)bits + 7) / 8;
        for (int i = 0; i < nb; i++)
            buf[byte + i] |= (uint8_t)(v >> (8 * i));
    }
}

/* Reads n codes starting at bit position bitpos. */
static void get_codes(const uint8_t *buf, size_t bitpos, uint32_t *codes, int n, int bits)
{
    int j = 0;
    if (bits == 8 && (bitpos & 7) == 0) {
        for (const uint8_t *s = buf + (bitpos >> 3); j < n; j++)
            codes[j] = s[j];
        return;
    }
    if (bits == 4 && (bitpos & 7) == 0) {
        const uint8_t *s = buf + (bitpos >> 3);
        for (; j + 2 <= n; j += 2) {
            codes[j] = s[j >> 1] & 15u;
            codes[j + 1] = (uint32_t)s[j >> 1] >> 4;
        }
        bitpos += (size_t)j * 4;
    }
    uint32_t mask = (1u << bits) - 1u;
    for (; j < n; j++, bitpos += (size_t)bits) {
        size_t byte = bitpos >> 3;
        int nb = (int)((bitpos & 7) + (size_t)bits + 7) / 8;
        uint32_t v = 0;
        for (int i = 0; i < nb; i++)
            v |= (uint32_t)buf[byte + i] << (8 * i);
        codes[j] = (v >> (bitpos & 7)) & mask;
    }
}

static void put_scale(uint8_t *buf, size_t idx, enum scale_store st, uint32_t code)
{
    int nb = store_bytes(st);
    for (int i = 0; i < nb; i++)
        buf[idx * (size_t)nb + (size_t)i] = (uint8_t)(code >> (8 * i));
}

static uint32_t get_scale(const uint8_t *buf, size_t idx, enum scale_store st)
{
    int nb = store_bytes(st);
    uint32_t v = 0;
    for (int i = 0; i < nb; i++)
        v |= (uint32_t)buf[idx * (size_t)nb + (size_t)i] << (8 * i);
    return v;
}

/* Number of stored scales. */
static size_t n_scales(const struct job *J)
{
    if (J->store == SC_NONE)
        return 0;
    return J->shared ? 1 : (size_t)J->rows * J->nseg;
}

static void pack_rows(struct job *J, int r0, int r1, int tid)
{
    const size_t cols = (size_t)J->cols;
    const int bits = J->f->bits;
    struct qs_packed *p = J->p;
    float r[CHUNK];
    uint32_t codes[CHUNK];
    qs_rng g;
    for (int row = r0; row < r1; row++) {
        if (J->stoch)
            seed_row(&g, J->o, row);
        for (int sg = 0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t base = (size_t)row * cols + c0;
            const float *x = J->w + base;
            struct blk b;
            if (J->shared) {
                b = J->tb;
            } else if (J->given) {
                const struct qs_qblock *g = &J->given[(size_t)row * J->nseg + sg];
                b = (struct blk){.s = g->s, .inv = g->inv, .lo = g->lo, .hi = g->hi, .z = g->z,
                                 .scode = g->scode};
                size_t si = (size_t)row * J->nseg + sg;
                put_scale(p->scales, si, J->store, b.scode);
                if (p->zeros)
                    p->zeros[si] = (uint8_t)b.z;
            } else {
                if (block_params(J, x, n, base, &b, &J->err[tid]) < 0) {
                    J->failed[tid] = 1;
                    return;
                }
                size_t si = (size_t)row * J->nseg + sg;
                put_scale(p->scales, si, J->store, b.scode);
                if (p->zeros)
                    p->zeros[si] = (uint8_t)b.z;
            }
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                grid(&J->K, x + k, r, m, b.inv, b.lo, b.hi, 1.0f, J->stoch, &g);
                encode_run(&J->K, r, m, b.z, codes);
                put_codes(p->codes, (base + k) * (size_t)bits, codes, m, bits);
            }
        }
    }
}

static int pack_impl(const struct qs_format *f, const struct qs_qopts *o, const float *ref,
                     const float *w, const struct qs_qblock *given, int rows, int cols,
                     struct qs_packed *p, qs_err *e)
{
    memset(p, 0, sizeof *p);
    if (!w || !ref)
        return qs_errf(e, "pack: no data");
    if (f && f->kind == QS_FMT_GGML) {
        if (given)
            return qs_errf(e, "%s: ggml blocks are packed by llama.cpp's rules only", f->name);
        return qs_qopts_check(f, o, e) < 0 ? -1 : qs_ggml_pack(f, w, rows, cols, p, e);
    }
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    /* the tensor-wide parameters (gran=tensor, the NVFP4 tensor scale) come from ref */
    int rc = job_init(J, f, o, ref, rows, cols, e);
    size_t n = (size_t)rows * (size_t)cols;
    if (rc == 0)
        rc = job_tensor(J, -1.0f, e);
    if (rc == 0 && given && J->stoch)
        rc = qs_errf(e, "%s: given block parameters are rounded to nearest", f->name);
    J->w = w;
    J->given = given;
    /* a given tensor-wide block (gran=tensor: its one entry) replaces the one fitted to ref, so
     * that a scale a method learned (qat scales=lsq) is stored; GPTQ's is the fitted one */
    if (rc == 0 && given && J->shared && f->kind != QS_FMT_NVFP4)
        J->tb = (struct blk){.s = given->s, .inv = given->inv, .lo = given->lo, .hi = given->hi,
                             .z = given->z, .scode = given->scode};
    if (rc == 0) {
        p->fmt = *f;
        p->opt = *o;
        p->rows = rows;
        p->cols = cols;
        p->code_bytes = (n * (size_t)f->bits + 7) / 8;
        size_t ns = n_scales(J);
        p->scale_bytes = ns * (size_t)store_bytes(J->store);
        p->zero_bytes = (f->kind == QS_FMT_INT && o->asym) ? ns : 0;
        p->codes = calloc(p->code_bytes + 4, 1); /* +4: codes are written a few bytes at a time */
        p->scales = calloc(p->scale_bytes + 1, 1);
        p->zeros = p->zero_bytes ? calloc(p->zero_bytes, 1) : NULL;
        if (!p->codes || !p->scales || (p->zero_bytes && !p->zeros))
            rc = qs_errf(e, "out of memory");
    }
    if (rc == 0) {
        if (J->shared && J->store != SC_NONE) {
            put_scale(p->scales, 0, J->store, J->tb.scode);
            if (p->zeros)
                p->zeros[0] = (uint8_t)J->tb.z;
        }
        if (f->kind == QS_FMT_NVFP4)
            p->tensor_scale = J->g;
        J->p = p;
        /* thread ranges start on multiples of 8 rows, so they never share a code byte */
        int bad = par_rows(J, pack_rows, rows, 8, n_threads(n, rows));
        if (bad >= 0) {
            if (e)
                *e = J->err[bad];
            rc = -1;
        }
    }
    if (rc < 0)
        qs_packed_free(p);
    free(J);
    return rc;
}

int qs_quant_pack(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, struct qs_packed *p, qs_err *e)
{
    return pack_impl(f, o, w, w, NULL, rows, cols, p, e);
}

int qs_quant_pack_blocks(const struct qs_format *f, const struct qs_qopts *o, const float *ref,
                         const float *w, const struct qs_qblock *blocks, int rows, int cols,
                         struct qs_packed *p, qs_err *e)
{
    if (!blocks)
        return qs_errf(e, "pack: no block parameters");
    return pack_impl(f, o, ref, w, blocks, rows, cols, p, e);
}

/* Decoded scale of block si. */
static float unpack_scale(const struct job *J, const struct qs_packed *p, size_t si)
{
    uint32_t sc = J->store == SC_NONE ? 0 : get_scale(p->scales, si, J->store);
    struct blk b = {.s = 1.0f};
    switch (J->store) {
    case SC_NONE:
        return 1.0f;
    case SC_F16:
        b.s = qs_f16_to_f32((uint16_t)sc);
        break;
    case SC_F32:
        b.s = u2f(sc);
        break;
    case SC_E8M0:
        return pow2f((int)sc - 127);
    case SC_E4M3: /* block scale times the tensor scale, as when packing */
        b.s = (float)qs_elem_decode(&J->k_e4m3.el, sc) * p->tensor_scale;
        break;
    }
    set_inv(&b); /* a scale too small to invert was used as 0 when packing */
    return b.s;
}

static void unpack_rows(struct job *J, int r0, int r1, int tid)
{
    (void)tid;
    const struct qs_packed *p = J->p;
    const size_t cols = (size_t)J->cols;
    const int bits = p->fmt.bits;
    const uint32_t sign = 1u << (bits - 1);
    const int asym = p->opt.asym && p->fmt.kind == QS_FMT_INT;
    const float rmul = J->K.rmul;
    const float *lut = J->lut;
    uint32_t codes[CHUNK];
    for (int row = r0; row < r1; row++) {
        for (int sg = 0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t si = J->shared ? 0 : (size_t)row * J->nseg + sg;
            const float s = unpack_scale(J, p, si);
            const int z = p->zeros ? p->zeros[si] : 0;
            size_t base = (size_t)row * cols + c0;
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                float *out = J->out + base + k;
                get_codes(p->codes, (base + k) * (size_t)bits, codes, m, bits);
                if (lut)
                    for (int j = 0; j < m; j++)
                        out[j] = lut[codes[j]] * s;
                else if (asym)
                    for (int j = 0; j < m; j++)
                        out[j] = (float)((int)codes[j] - z) * s;
                else /* two's complement */
                    for (int j = 0; j < m; j++)
                        out[j] = (float)((int)codes[j] - (int)((codes[j] & sign) << 1)) * rmul * s;
            }
        }
    }
}

int qs_quant_unpack(const struct qs_packed *p, float *out, qs_err *e)
{
    if (!p || !p->codes || p->rows < 1 || p->cols < 1)
        return qs_errf(e, "unpack: empty packed tensor");
    if (!out)
        return qs_errf(e, "unpack: no output buffer");
    if (p->fmt.kind == QS_FMT_GGML)
        return qs_ggml_unpack(p, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = job_init(J, &p->fmt, &p->opt, NULL, p->rows, p->cols, e);
    size_t n = (size_t)p->rows * (size_t)p->cols;
    if (rc == 0 && (p->code_bytes < (n * (size_t)p->fmt.bits + 7) / 8 ||
                    p->scale_bytes < n_scales(J) * (size_t)store_bytes(J->store) ||
                    (p->opt.asym && p->zero_bytes < n_scales(J))))
        rc = qs_errf(e, "unpack: %s buffers too small for %d x %d", p->fmt.name, p->rows, p->cols);
    float *lut = NULL;
    const struct qs_elem *el = &J->K.el;
    if (rc == 0 && el->kind != QS_ELEM_INT) {
        int nc = 1 << p->fmt.bits;
        lut = malloc((size_t)nc * sizeof *lut);
        if (!lut)
            rc = qs_errf(e, "out of memory");
        for (int c = 0; lut && c < nc; c++) {
            double v = qs_elem_decode(el, (uint32_t)c);
            uint32_t sb = (uint32_t)((c >> (p->fmt.bits - 1)) & 1) << 31;
            lut[c] = isnan(v) ? u2f(QNAN_BITS | sb) : (float)v; /* the kernels' NaN */
        }
    }
    if (rc == 0) {
        J->p = (struct qs_packed *)(uintptr_t)p; /* read only here */
        J->out = out;
        J->lut = lut;
        par_rows(J, unpack_rows, p->rows, 1, n_threads(n, p->rows));
    }
    free(lut);
    free(J);
    return rc;
}

int qs_packed_layout(const struct qs_format *f, const struct qs_qopts *o, int rows, int cols,
                     struct qs_packed_layout *out, qs_err *e)
{
    memset(out, 0, sizeof *out);
    if (f && f->kind == QS_FMT_GGML)
        return qs_qopts_check(f, o, e) < 0 ? -1 : qs_ggml_layout(f, rows, cols, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = job_init(J, f, o, NULL, rows, cols, e);
    size_t n, bits;
    if (rc == 0 && (qs_size_mul((size_t)rows, (size_t)cols, &n) < 0 ||
                    qs_size_mul(n, (size_t)f->bits, &bits) < 0 || bits > SIZE_MAX - 7))
        rc = qs_errf(e, "%s: %d x %d is too large", f->name, rows, cols);
    if (rc == 0) {
        size_t ns = n_scales(J);
        out->code_bytes = (bits + 7) / 8;
        out->scale_bytes = ns * (size_t)store_bytes(J->store);
        out->zero_bytes = (f->kind == QS_FMT_INT && o->asym) ? ns : 0;
        out->nscales = J->store == SC_NONE ? 0 : ns;
        out->group = J->shared ? 0 : J->seg;
        out->tensor_scale = f->kind == QS_FMT_NVFP4;
        static const char *const st[] = {[SC_NONE] = "none",
                                         [SC_F16] = "f16",
                                         [SC_F32] = "f32",
                                         [SC_E8M0] = "e8m0",
                                         [SC_E4M3] = "e4m3"};
        out->scale_dtype = st[J->store];
    }
    free(J);
    return rc;
}

void qs_packed_free(struct qs_packed *p)
{
    if (!p)
        return;
    free(p->codes);
    free(p->scales);
    free(p->zeros);
    memset(p, 0, sizeof *p);
}

size_t qs_packed_bytes(const struct qs_packed *p)
{
    if (!p)
        return 0;
    return p->code_bytes + p->scale_bytes + p->zero_bytes +
           (p->fmt.kind == QS_FMT_NVFP4 ? sizeof(float) : 0);
}

double qs_packed_bits_per_weight(const struct qs_packed *p)
{
    if (!p || p->rows < 1 || p->cols < 1)
        return 0.0;
    return 8.0 * (double)qs_packed_bytes(p) / ((double)p->rows * (double)p->cols);
}
