/* scales.c - how a tensor is tiled into blocks and each block's scale: the container fits
 * (free F16/F32 scales, MX E8M0 shared exponents, NVFP4 E4M3 block scales under a tensor
 * scale), scale storage types, block statistics and clipping (max, percentile, MSE search). */
#include <math.h>
#include <stdlib.h>

#include "job_impl.h"
#include "qscope/half.h"

/* ---- scale storage ------------------------------------------------------------------------ */

/* A scale too small to invert is used as 0 (the block is zeroed). */
static void set_inv(struct blk *b)
{
    b->inv = b->s > 0.0f ? 1.0f / b->s : 0.0f;
    if (!(b->inv <= 3.4e38f)) { /* a scale so small that 1/s overflows: treat the block as 0 */
        b->s = 0.0f;
        b->inv = 0.0f;
    }
}

static float dec_none(const struct job *J, const struct qs_packed *p, uint32_t c)
{
    (void)J;
    (void)p;
    (void)c;
    return 1.0f;
}

static float dec_f16(const struct job *J, const struct qs_packed *p, uint32_t c)
{
    (void)J;
    (void)p;
    struct blk b = {.s = qs_f16_to_f32((uint16_t)c)};
    set_inv(&b); /* a scale too small to invert was used as 0 when packing */
    return b.s;
}

static float dec_f32(const struct job *J, const struct qs_packed *p, uint32_t c)
{
    (void)J;
    (void)p;
    struct blk b = {.s = u2f(c)};
    set_inv(&b);
    return b.s;
}

static float dec_e8m0(const struct job *J, const struct qs_packed *p, uint32_t c)
{
    (void)J;
    (void)p;
    return pow2f((int)c - 127);
}

static float dec_e4m3(const struct job *J, const struct qs_packed *p, uint32_t c)
{
    /* block scale times the tensor scale, as when packing */
    struct blk b = {.s = (float)J->k_e4m3.ops->decode(&J->k_e4m3.el, c & 0xffu) * p->tensor_scale};
    set_inv(&b);
    return b.s;
}

const struct qs_scale_store qs_scale_stores[] = {
    [SC_NONE] = {0, "none", dec_none}, [SC_F16] = {2, "f16", dec_f16},
    [SC_F32] = {4, "f32", dec_f32},    [SC_E8M0] = {1, "e8m0", dec_e8m0},
    [SC_E4M3] = {1, "e4m3", dec_e4m3},
};

/* Rounds a scale to its storage type; -1 when it overflows F16. A positive scale below F16's
 * smallest step (2^-24, half of it rounding to zero) is stored as that step: rounded to zero, its
 * whole block would quantize to 0 (fp8-e5m2 on any block whose amax is under ~0.0017, int8 under
 * ~3.8e-6); with the step, the block's values keep their code range, as a minifloat keeps its
 * relative precision. */
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
    if (v > 0.0f && h == 0)
        h = 1; /* 2^-24 */
    *s = qs_f16_to_f32(h);
    *code = h;
    return 0;
}

/* ---- container fits ------------------------------------------------------------------------ */

/* Free scales: amax / maxval of the element type (int: amax / qmax, or amax / ((2^B-1)/2) with
 * range=full; asym: (hi - lo) / (2^B - 1) and a zero point), rounded to F16 / F32. */
int qs_fit_free(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e)
{
    const struct qs_qopts *o = J->o;
    const struct qs_elem *el = &J->K.el;
    const int bits = el->bits;
    memset(b, 0, sizeof *b);
    if (o->scale_none) {
        b->s = b->inv = 1.0f;
        return 0;
    }
    if (o->asym) {
        float lo = mn < 0.0f ? mn : 0.0f, hi = mx > 0.0f ? mx : 0.0f;
        int qm = (1 << bits) - 1;
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
        return 0;
    }
    float qd = o->full_range ? (float)((1 << bits) - 1) / 2.0f : (float)el->maxval;
    if (round_scale(J, amax / qd, &b->s, &b->scode, row, col, e) < 0)
        return -1;
    set_inv(b);
    if (el->kind == QS_ELEM_INT) {
        b->lo = o->full_range ? (float)-(1 << (bits - 1)) : (float)-el->qmax;
        b->hi = (float)el->qmax;
    }
    return 0;
}

int qs_fit_unit(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e)
{
    (void)J, (void)amax, (void)mn, (void)mx, (void)row, (void)col, (void)e;
    memset(b, 0, sizeof *b);
    b->s = b->inv = 1.0f;
    return 0;
}

/* OCP MX v1.0: shared_exp = floor(log2(amax)) - emax_elem, clamped to E8M0. */
int qs_fit_e8m0(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e)
{
    (void)mn, (void)mx, (void)row, (void)col, (void)e;
    const struct qs_elem *el = &J->K.el;
    memset(b, 0, sizeof *b);
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

/* NVFP4: block scale (amax / 6) / g rounded to E4M3, times the F32 tensor scale g. */
int qs_fit_e4m3(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e)
{
    (void)mn, (void)mx, (void)row, (void)col, (void)e;
    const struct kern *K8 = &J->k_e4m3;
    memset(b, 0, sizeof *b);
    float bs = 0.0f;
    if (J->g > 0.0f) {
        float v = (amax / 6.0f) / J->g;
        K8->ops->near(K8, &v, &bs, 1, 1.0f, 0.0f, 0.0f, 1.0f);
    }
    K8->ops->encode(K8, &bs, 1, 0, &b->scode);
    b->s = bs * J->g;
    set_inv(b);
    return 0;
}

void qs_nvfp4_setup(struct job *J)
{
    struct qs_format e4m3;
    qs_err e;
    qs_format_parse("fp8-e4m3", &e4m3, &e);
    qs_kern_init(&J->k_e4m3, &e4m3, 1);
}

void qs_nvfp4_tensor(struct job *J, float amax)
{
    J->g = amax / (6.0f * 448.0f); /* NVFP4 tensor scale: amax / (6 * 448), F32 */
    if (!(J->g > 0.0f && J->g <= 3.4e38f))
        J->g = 0.0f;
}

/* ---- block statistics and clipping -------------------------------------------------------- */

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

int qs_nonfinite_at(const float *x, size_t n, size_t base, int cols, qs_err *e)
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
        J->K.ops->near(&J->K, x + c0, r, m, b->inv, b->lo, b->hi, 1.0f);
        for (int j = 0; j < m; j++) {
            double d = (double)x[c0 + j] - (double)(r[j] * b->s);
            sse += d * d;
        }
    }
    return sse;
}

int qs_block_params(const struct job *J, const float *x, size_t n, size_t base, struct blk *b,
                    qs_err *e)
{
    int row = (int)(base / (size_t)J->cols), col = (int)(base % (size_t)J->cols);
    uint32_t ab = absmax_bits(x, n);
    if (ab >= INF_BITS)
        return qs_nonfinite_at(x, n, base, J->cols, e);
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
            if (J->kind->fit(J, (float)(amax * ratio), (float)(mn * ratio), (float)(mx * ratio),
                             &cand, row, col, e) < 0)
                return -1;
            double sse = block_sse(J, &cand, x, n);
            if (sse < best) {
                best = sse;
                *b = cand;
            }
        }
        return 0;
    }
    return J->kind->fit(J, amax, mn, mx, b, row, col, e);
}

/* ---- a job: tiling and the tensor-wide parameters ------------------------------------------ */

int qs_job_init(struct job *J, const struct qs_format *f, const struct qs_qopts *o, const float *w,
                int rows, int cols, qs_err *e)
{
    memset(J, 0, sizeof *J);
    if (!f || f->kind == QS_FMT_NONE)
        return qs_errf(e, "format 'none' keeps values in float; nothing to quantize");
    if (rows < 1 || cols < 1)
        return qs_errf(e, "%s: empty matrix (%d x %d)", f->name, rows, cols);
    if (qs_qopts_check(f, o, e) < 0)
        return -1;
    const struct qs_kind *k = qs_kind_of(f);
    if (!k->fit)
        return qs_errf(e, "format '%s' has no quantizer", f->name);
    J->f = f;
    J->o = o;
    J->kind = k;
    J->w = w;
    J->rows = rows;
    J->cols = cols;
    J->stoch = o->round == QS_ROUND_STOCHASTIC;
    qs_kern_init(&J->K, f, o->saturate);
    J->K.asym = o->asym && k->t.asym;
    if (k->setup)
        k->setup(J);
    J->store = k->store != SC_FREE ? k->store
               : o->scale_none     ? SC_NONE
               : o->scale_f32      ? SC_F32
                                   : SC_F16;
    /* qscope: the one rule for groups and blocks of every format (qs_format_block_len) */
    J->seg = qs_format_block_len(f, o, cols);
    J->shared =
        !k->t.fixed_block && !k->t.blockwise && (o->scale_none || o->gran == QS_GRAN_TENSOR);
    J->nseg = (cols + J->seg - 1) / J->seg;
    if (k->fused && f->block == 32 && J->K.el.kind == QS_ELEM_FLOAT && o->clip == QS_CLIP_MAX &&
        !J->stoch)
        J->fused = k->fused;
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
    qs_par_rows(J, stats_rows, J->rows, 1, qs_n_threads(n, J->rows));
    uint32_t ab = 0;
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < MAX_THREADS; i++) {
        ab = J->part[i].ab > ab ? J->part[i].ab : ab;
        lo = J->part[i].mn < lo ? J->part[i].mn : lo;
        hi = J->part[i].mx > hi ? J->part[i].mx : hi;
    }
    if (ab >= INF_BITS)
        return qs_nonfinite_at(J->w, n, 0, J->cols, e);
    *amax = u2f(ab);
    *mn = J->o->asym ? lo : 0.0f;
    *mx = J->o->asym ? hi : 0.0f;
    return 0;
}

int qs_job_tensor(struct job *J, float amax_given, qs_err *e)
{
    if (!J->shared && !J->kind->tensor)
        return 0;
    size_t n = (size_t)J->rows * J->cols;
    float amax = 0.0f, mn = 0.0f, mx = 0.0f;
    if (amax_given >= 0.0f) {
        if (absmax_bits(J->w, n) >= INF_BITS)
            return qs_nonfinite_at(J->w, n, 0, J->cols, e);
        amax = amax_given;
    } else if (J->shared && J->o->clip != QS_CLIP_MAX && !J->o->scale_none) {
        return qs_block_params(J, J->w, n, 0, &J->tb, e);
    } else if (tensor_stats(J, &amax, &mn, &mx, e) < 0) {
        return -1;
    }
    if (J->kind->tensor) {
        J->kind->tensor(J, amax);
        return 0;
    }
    return J->kind->fit(J, amax, mn, mx, &J->tb, 0, 0, e);
}
