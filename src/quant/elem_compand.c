/* elem_compand.c - mu-law companding (mu = 255): |y| clamped to 1 is mapped to
 * c = ln(1 + mu|y|) / ln(1 + mu), rounded to one of 2^(B-1) magnitudes k (nearest even), and
 * stored sign-magnitude; the level of k is expm1(k / qmax * ln(1 + mu)) / mu in F32. */
#include <math.h>

#include "format_impl.h"

static void compand_derive(const struct qs_format *f, struct qs_elem *el)
{
    el->kind = QS_ELEM_COMPAND;
    el->qmax = (1 << (f->bits - 1)) - 1;
    el->maxval = 1.0;
}

/* The level of code magnitude k. */
static double compand_level(const struct qs_elem *el, int k)
{
    double c = (double)k / el->qmax;
    return (double)(float)(expm1(c * log1p(QS_COMPAND_MU)) / QS_COMPAND_MU);
}

/* Code magnitude k (0..qmax) of a in [0, 1] (clamped above). */
static int compand_k(const struct qs_elem *el, double a)
{
    if (a > 1.0)
        a = 1.0;
    double c = log1p(QS_COMPAND_MU * a) / log1p(QS_COMPAND_MU);
    return (int)nearbyint(c * el->qmax);
}

static double compand_decode(const struct qs_elem *el, uint32_t code)
{
    int neg = (code >> (el->bits - 1)) & 1;
    double v = compand_level(el, (int)(code & (uint32_t)el->qmax));
    return neg ? -v : v;
}

static double compand_cast(const struct qs_elem *el, double x, int sat)
{
    (void)sat;
    double v = compand_level(el, compand_k(el, fabs(x)));
    return signbit(x) ? -v : v;
}

static void compand_init(struct kern *K)
{
    int n = 1 << K->el.bits;
    for (int c = 0; c < n; c++)
        K->lut[c] = (float)compand_decode(&K->el, (uint32_t)c);
}

static void compand_run(const struct kern *K, const float *x, float *out, int n, float inv,
                        float lo, float hi, float s)
{
    (void)lo;
    (void)hi;
    int sb = K->el.bits - 1;
    for (int j = 0; j < n; j++) {
        float y = x[j] * inv;
        float a = fabsf(y);
        int k = compand_k(&K->el, a > 1.0f ? 1.0 : (double)a);
        out[j] = K->lut[((uint32_t)(f2u(y) >> 31) << sb) | (uint32_t)k] * s;
    }
}

/* floor(c * qmax + u) on the companded axis. */
static void compand_stoch(const struct kern *K, const float *x, float *out, int n, float inv,
                          float lo, float hi, float s, qs_rng *g)
{
    (void)lo;
    (void)hi;
    const struct qs_elem *el = &K->el;
    for (int j = 0; j < n; j++) {
        double u = unif24(g);
        float y = x[j] * inv;
        double a = fabs((double)y);
        if (a > 1.0)
            a = 1.0;
        double c = log1p(QS_COMPAND_MU * a) / log1p(QS_COMPAND_MU) * el->qmax;
        int k = (int)floor(c + u);
        if (k > el->qmax)
            k = el->qmax;
        out[j] = K->lut[((uint32_t)(f2u(y) >> 31) << (el->bits - 1)) | (uint32_t)k] * s;
    }
}

/* Sign-magnitude code of a grid value: binary search of the ascending positive levels. */
static void compand_encode(const struct kern *K, const float *r, int n, int z, uint32_t *codes)
{
    (void)z;
    const struct qs_elem *el = &K->el;
    const uint32_t mask = (1u << el->bits) - 1u;
    for (int j = 0; j < n; j++) {
        uint32_t b = f2u(r[j]), sign = b >> 31;
        float v = u2f(b & 0x7fffffffu);
        int lo = 0, hi = el->qmax;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (K->lut[mid] < v)
                lo = mid + 1;
            else
                hi = mid;
        }
        codes[j] = ((sign << (el->bits - 1)) | (uint32_t)lo) & mask;
    }
}

const struct qs_elem_ops qs_elem_compand = {
    .name = "compand",
    .lut_decode = 1,
    .derive = compand_derive,
    .decode = compand_decode,
    .cast = compand_cast,
    .init = compand_init,
    .near = compand_run,
    .near_each = qs_near_each_generic,
    .stoch = compand_stoch,
    .encode = compand_encode,
    .unpack = qs_unpack_lut,
};
