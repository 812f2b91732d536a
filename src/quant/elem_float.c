/* elem_float.c - the minifloat element type: sign | exponent | mantissa with subnormals, the
 * OCP non-finite conventions (none, E4M3's single NaN, IEEE-like Inf/NaN), and with ebits == 0
 * sign-magnitude fixed point k / 2^mbits. Also MX's fused block kernel for minifloat elements.
 *
 * The run kernels have no branches (selects only), so that gcc -O2 vectorizes them: rounding is
 * an integer round-to-nearest-even on the F32 bit pattern in the normal range and a float
 * add/subtract of a power of two in the subnormal range. */
#include <math.h>

#include "format_impl.h"

static void float_derive(const struct qs_format *f, struct qs_elem *el)
{
    el->kind = QS_ELEM_FLOAT;
    int m = f->mbits;
    if (f->ebits == 0) { /* fixed point */
        el->emin = el->emax = 0;
        el->maxval = ldexp((double)((1 << m) - 1), -m);
        return;
    }
    int topfield = (1 << f->ebits) - 1;
    el->emin = 1 - f->bias;
    switch (f->nf) {
    case QS_NF_IEEE: /* top exponent field reserved for Inf/NaN */
        el->emax = topfield - 1 - f->bias;
        el->maxval = ldexp(2.0 - ldexp(1.0, -m), el->emax);
        break;
    case QS_NF_E4M3: /* only the all-ones mantissa of the top field is NaN */
        el->emax = topfield - f->bias;
        el->maxval = ldexp(2.0 - ldexp(1.0, 1 - m), el->emax);
        break;
    default:
        el->emax = topfield - f->bias;
        el->maxval = ldexp(2.0 - ldexp(1.0, -m), el->emax);
        break;
    }
}

static double float_decode(const struct qs_elem *el, uint32_t code)
{
    int m = el->mbits, eb = el->ebits;
    int neg = (code >> (el->bits - 1)) & 1;
    uint32_t mant = code & ((1u << m) - 1u);
    double v;
    if (eb == 0) {
        v = ldexp((double)mant, -m);
    } else {
        uint32_t ef = (code >> m) & ((1u << eb) - 1u);
        uint32_t top = (1u << eb) - 1u;
        if (el->nf == QS_NF_IEEE && ef == top)
            v = mant == 0 ? INFINITY : NAN;
        else if (el->nf == QS_NF_E4M3 && ef == top && mant == (1u << m) - 1u)
            v = NAN;
        else if (ef == 0)
            v = ldexp((double)mant, el->emin - m);
        else
            v = ldexp((double)((1u << m) | mant), (int)ef - el->bias - m);
    }
    return neg ? -v : v;
}

/* Magnitude code (no sign bit) of a non-negative grid value v. */
static uint32_t float_code_of(const struct qs_elem *el, double v)
{
    int m = el->mbits;
    if (el->ebits == 0 || v < ldexp(1.0, el->emin))
        return (uint32_t)ldexp(v, m - el->emin * (el->ebits != 0));
    int ex;
    frexp(v, &ex); /* v = f * 2^ex, f in [0.5, 1) */
    ex -= 1;
    uint32_t mant = (uint32_t)(ldexp(v, m - ex) - ldexp(1.0, m));
    return ((uint32_t)(ex + el->bias) << m) | mant;
}

/* The grid's spacing at a >= 0: 2^(e - mbits) on a's binade 2^e (subnormals share emin's),
 * 2^-mbits for a format without exponent bits. */
static inline double float_quantum(const struct qs_elem *el, double a)
{
    if (el->ebits == 0)
        return ldexp(1.0, -el->mbits);
    int ex = el->emin + 1;
    if (a > 0)
        frexp(a, &ex);
    ex -= 1;
    if (ex < el->emin)
        ex = el->emin;
    return ldexp(1.0, ex - el->mbits);
}

/* Reference cast of a double onto the grid: the two neighbouring grid values are found from the
 * local quantum, the nearer wins, a tie goes to the even code. */
static double float_cast(const struct qs_elem *el, double x, int sat)
{
    int can_ovf = el->nf != QS_NF_NONE && !sat;
    double ovf = el->nf == QS_NF_IEEE ? INFINITY : NAN;
    double a = fabs(x), r;
    if (a > 4.0 * el->maxval) {
        r = can_ovf ? ovf : el->maxval;
    } else {
        const double q = float_quantum(el, a);
        double lo = floor(a / q) * q, hi = lo + q;
        double dlo = a - lo, dhi = hi - a;
        if (dlo < dhi)
            r = lo;
        else if (dhi < dlo)
            r = hi;
        else
            r = (float_code_of(el, lo) & 1u) ? hi : lo;
        if (r > el->maxval)
            r = can_ovf ? ovf : el->maxval;
    }
    return copysign(r, x);
}

static void float_init(struct kern *K)
{
    const struct qs_elem *el = &K->el;
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
static void float_run(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                      float hi, float s)
{
    (void)lo;
    (void)hi;
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

SIMD_CLONES
int qs_mx_fused_float(const struct kern *K, const float *x, float *out, int nblk)
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

/* floor(|y| / q + u) * q on the binade's spacing q. */
static float float_sr(const struct kern *K, float y, qs_rng *g)
{
    const struct qs_elem *el = &K->el;
    double u = unif24(g);
    uint32_t sign = f2u(y) & 0x80000000u;
    double a = fabs((double)y), mx = el->maxval;
    if (a > mx && K->sat)
        a = mx;
    if (a > 2.0 * mx)
        return u2f((uint32_t)K->ovf | sign);
    const double q = float_quantum(el, a);
    double rv = floor(a / q + u) * q;
    if (rv > mx)
        return K->sat ? u2f(f2u((float)mx) | sign) : u2f((uint32_t)K->ovf | sign);
    return u2f(f2u((float)rv) | sign);
}

static void float_stoch(const struct kern *K, const float *x, float *out, int n, float inv,
                        float lo, float hi, float s, qs_rng *g)
{
    (void)lo;
    (void)hi;
    for (int j = 0; j < n; j++)
        out[j] = float_sr(K, x[j] * inv, g) * s;
}

/* codes of grid values as vectorizable selects; overflow results (Inf or NaN) get the top
 * field's Inf or NaN code. */
SIMD_CLONES
static void float_encode(const struct kern *K, const float *r, int n, int z, uint32_t *codes)
{
    (void)z;
    const struct qs_elem *el = &K->el;
    const uint32_t mask = (1u << el->bits) - 1u;
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

const struct qs_elem_ops qs_elem_float = {
    .name = "minifloat",
    .lut_decode = 1,
    .derive = float_derive,
    .decode = float_decode,
    .cast = float_cast,
    .init = float_init,
    .near = float_run,
    .near_each = qs_near_each_generic,
    .stoch = float_stoch,
    .encode = float_encode,
    .unpack = qs_unpack_lut,
};
