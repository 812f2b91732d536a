/* elem_nf4.c - QLoRA NormalFloat4: a 16-level codebook in [-1, 1], code = level index
 * (ascending). y above the F32 midpoint of two levels moves up. */
#include <math.h>

#include "format_impl.h"

/* QLoRA NF4 levels (Dettmers et al. 2023, as listed in REFERENCES.md), ascending = code order. */
const float qs_nf4_levels[QS_NF4_LEVELS] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* Midpoints of consecutive levels, (l[i] + l[i+1]) / 2 rounded to F32. */
const float qs_nf4_mids[QS_NF4_LEVELS - 1] = {
    (float)((-1.0 + -0.6961928009986877) / 2),
    (float)((-0.6961928009986877 + -0.5250730514526367) / 2),
    (float)((-0.5250730514526367 + -0.39491748809814453) / 2),
    (float)((-0.39491748809814453 + -0.28444138169288635) / 2),
    (float)((-0.28444138169288635 + -0.18477343022823334) / 2),
    (float)((-0.18477343022823334 + -0.09105003625154495) / 2),
    (float)((-0.09105003625154495 + 0.0) / 2),
    (float)((0.0 + 0.07958029955625534) / 2),
    (float)((0.07958029955625534 + 0.16093020141124725) / 2),
    (float)((0.16093020141124725 + 0.24611230194568634) / 2),
    (float)((0.24611230194568634 + 0.33791524171829224) / 2),
    (float)((0.33791524171829224 + 0.44070982933044434) / 2),
    (float)((0.44070982933044434 + 0.5626170039176941) / 2),
    (float)((0.5626170039176941 + 0.7229568362236023) / 2),
    (float)((0.7229568362236023 + 1.0) / 2),
};

static void nf4_derive(const struct qs_format *f, struct qs_elem *el)
{
    (void)f;
    el->kind = QS_ELEM_NF4;
    el->maxval = 1.0;
}

static double nf4_decode(const struct qs_elem *el, uint32_t code)
{
    (void)el;
    return qs_nf4_levels[code & 15];
}

static double nf4_cast(const struct qs_elem *el, double x, int sat)
{
    (void)el;
    (void)sat;
    int c = 0;
    for (int i = 0; i < QS_NF4_LEVELS - 1; i++)
        c += x > (double)qs_nf4_mids[i];
    return qs_nf4_levels[c];
}

static void nf4_init(struct kern *K)
{
    for (int c = 0; c < QS_NF4_LEVELS; c++)
        K->lut[c] = (float)nf4_decode(&K->el, (uint32_t)c);
}

/* A select chain over the 15 decision thresholds (vectorizes without a gather). */
SIMD_CLONES
static void nf4_run(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                    float hi, float s)
{
    (void)lo;
    (void)hi;
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

/* Up to the next level with probability equal to the distance from the level below, in units
 * of the gap between the two. */
static void nf4_stoch(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                      float hi, float s, qs_rng *g)
{
    (void)lo;
    (void)hi;
    for (int j = 0; j < n; j++) {
        double u = unif24(g);
        float y = x[j] * inv, r;
        double v = y < -1.0f ? -1.0 : y > 1.0f ? 1.0 : (double)y;
        int i = 0;
        while (i < QS_NF4_LEVELS - 1 && (double)qs_nf4_levels[i + 1] <= v)
            i++;
        if (i == QS_NF4_LEVELS - 1) {
            r = K->lut[i];
        } else {
            double l0 = qs_nf4_levels[i], l1 = qs_nf4_levels[i + 1];
            r = K->lut[u < (v - l0) / (l1 - l0) ? i + 1 : i];
        }
        out[j] = r * s;
    }
}

static void nf4_encode(const struct kern *K, const float *r, int n, int z, uint32_t *codes)
{
    (void)K;
    (void)z;
    for (int j = 0; j < n; j++) {
        uint32_t c = 0;
        for (int i = 0; i < QS_NF4_LEVELS - 1; i++)
            c += r[j] > qs_nf4_mids[i];
        codes[j] = c;
    }
}

const struct qs_elem_ops qs_elem_nf4 = {
    .name = "nf4",
    .lut_decode = 1,
    .derive = nf4_derive,
    .decode = nf4_decode,
    .cast = nf4_cast,
    .init = nf4_init,
    .near = nf4_run,
    .near_each = qs_near_each_generic,
    .stoch = nf4_stoch,
    .encode = nf4_encode,
    .unpack = qs_unpack_lut,
};
