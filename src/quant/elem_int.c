/* elem_int.c - the integer element type: two's complement k, value k * 2^-frac (int2..int8:
 * frac 0, codes restricted to +-(2^(B-1)-1) unless range=full or asym; mxint8: frac 6). */
#include <math.h>

#include "format_impl.h"

#define RNE_MAGIC 12582912.0f /* 1.5 * 2^23: (y + M) - M rounds |y| < 2^22 to an integer, RNE */

static void int_derive(const struct qs_format *f, struct qs_elem *el)
{
    el->kind = QS_ELEM_INT;
    el->qmax = (1 << (f->bits - 1)) - 1;
    el->frac = f->mbits; /* 0 for intB, 6 for mxint8 */
    el->maxval = ldexp((double)el->qmax, -el->frac);
    el->emax = 0;
}

static double int_decode(const struct qs_elem *el, uint32_t code)
{
    int k = (int)code;
    if (code & (1u << (el->bits - 1)))
        k -= 1 << el->bits;
    return ldexp((double)k, -el->frac);
}

static double int_cast(const struct qs_elem *el, double x, int sat)
{
    (void)sat;
    double k = nearbyint(ldexp(x, el->frac));
    if (k > el->qmax)
        k = el->qmax;
    if (k < -el->qmax)
        k = -el->qmax;
    return ldexp(k, -el->frac) + 0.0; /* +0.0: an integer code has no negative zero */
}

static void int_init(struct kern *K)
{
    K->mul = pow2f(K->el.frac);
    K->rmul = pow2f(-K->el.frac);
}

static inline float int_near(float x, float inv, float mul, float lo, float hi, float rmul)
{
    float y = (x * inv) * mul;
    y = y < lo ? lo : y;
    y = y > hi ? hi : y;
    return ((y + RNE_MAGIC) - RNE_MAGIC) * rmul;
}

/* out[j] = r(x[j]) * s for the int grid. */
SIMD_CLONES
static void int_run(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
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

static void int_near_each(const struct kern *K, const struct qs_qblock *b, size_t bstride,
                          const float *x, float *out, int n)
{
    const float mul = K->mul, rmul = K->rmul;
    for (int i = 0; i < n; i++) { /* inline: no call per element */
        const struct qs_qblock *bi = b + (size_t)i * bstride;
        out[i] = int_near(x[i], bi->inv, mul, bi->lo, bi->hi, rmul) * bi->s;
    }
}

/* floor(y * mul + u), clamped: round up with probability equal to the distance from below. */
static void int_stoch(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                      float hi, float s, qs_rng *g)
{
    for (int j = 0; j < n; j++) {
        double u = unif24(g);
        float t = ((x[j] * inv) * K->mul);
        t = t < lo ? lo : t;
        t = t > hi ? hi : t;
        int k = (int)floor((double)t + u);
        out[j] = ((float)k * K->rmul) * s;
    }
}

SIMD_CLONES
static void int_encode(const struct kern *K, const float *r, int n, int z, uint32_t *codes)
{
    const uint32_t mask = (1u << K->el.bits) - 1u;
    const float mul = K->mul;
    for (int j = 0; j < n; j++)
        codes[j] = (uint32_t)((int)(r[j] * mul) + z) & mask;
}

SIMD_CLONES
static void int_unpack(const struct kern *K, const float *lut, const uint8_t *buf, size_t bitpos,
                       int n, int z, float s, float *restrict out)
{
    (void)lut;
    const float rs = K->rmul;
    if (K->el.bits == 4 && !K->asym && (bitpos & 7) == 0) {
        /* two int4 codes a byte, sign-extended in place ((k ^ 8) - 8), no code buffer */
        const uint8_t *src = buf + (bitpos >> 3);
        int h = n / 2;
        for (int i = 0; i < h; i++) {
            out[2 * i] = (float)((src[i] & 15) ^ 8) - 8.0f;
            out[2 * i + 1] = (float)((src[i] >> 4) ^ 8) - 8.0f;
        }
        for (int j = 0; j < 2 * h; j++)
            out[j] = out[j] * rs * s;
        if (n & 1)
            out[n - 1] = (float)(((src[h] & 15) ^ 8) - 8) * rs * s;
        return;
    }
    uint32_t codes[CHUNK];
    qs_get_codes(buf, bitpos, codes, n, K->el.bits);
    if (K->asym) {
        for (int j = 0; j < n; j++)
            out[j] = (float)((int)codes[j] - z) * s;
        return;
    }
    const uint32_t sign = 1u << (K->el.bits - 1);
    const float rmul = K->rmul;
    for (int j = 0; j < n; j++) /* two's complement */
        out[j] = (float)((int)codes[j] - (int)((codes[j] & sign) << 1)) * rmul * s;
}

const struct qs_elem_ops qs_elem_int = {
    .name = "int",
    .lut_decode = 0,
    .derive = int_derive,
    .decode = int_decode,
    .cast = int_cast,
    .init = int_init,
    .near = int_run,
    .near_each = int_near_each,
    .stoch = int_stoch,
    .encode = int_encode,
    .unpack = int_unpack,
};
