/* format_impl.h - internal to src/quant: a format as element ops x container traits.
 *
 * A format (struct qs_format, one row of format.c's presets) has a kind; the kind's row in
 * kinds.c (struct qs_kind) says what container holds the elements (how block scales are fitted
 * and stored, which granularities and options apply) and which element type the codes are; the
 * element type's ops (struct qs_elem_ops, one file each: elem_int.c, elem_float.c, elem_nf4.c,
 * elem_compand.c) do everything per element: derive the grid, decode, the scalar reference cast,
 * and the vectorized round / stochastic round / encode / decode kernels. Adding a format of an
 * existing kind is one preset row; a new container is one kind row (plus its scale fit); a new
 * element type is one ops table. Not a public header. */
#ifndef QSCOPE_FORMAT_IMPL_H
#define QSCOPE_FORMAT_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qscope/common.h"
#include "qscope/format.h"

/* ---- element types ---------------------------------------------------------------------- */

/* How one element code maps to a value at scale 1. */
enum qs_elem_kind {
    QS_ELEM_INT,    /* two's complement integer k (mxint8: k * 2^-6) */
    QS_ELEM_FLOAT,  /* sign-magnitude minifloat; ebits == 0 is fixed point k * 2^-mbits */
    QS_ELEM_NF4,    /* level index */
    QS_ELEM_COMPAND /* sign-magnitude mu-law code */
};

struct qs_elem {
    enum qs_elem_kind kind;
    const struct qs_elem_ops *ops;
    int bits, ebits, mbits, bias;
    enum qs_nonfinite nf;
    int emin;      /* FLOAT: exponent of the smallest normal, 1 - bias */
    int emax;      /* FLOAT: exponent of the largest finite value (MX emax_elem); INT: 0 */
    int frac;      /* INT: value = k * 2^-frac (6 for mxint8, 0 otherwise) */
    int qmax;      /* INT, COMPAND: largest code magnitude 2^(B-1)-1 */
    double maxval; /* largest finite value */
};

/* Kernel constants of an element grid, derived once per call (qs_kern_init). */
struct kern {
    struct qs_elem el;
    const struct qs_elem_ops *ops; /* el.ops */
    int sat;  /* saturate on overflow (always 1 for element types without Inf/NaN) */
    int asym; /* INT: codes are unsigned with a zero point (decode subtracts z) */
    /* INT: y = (x * inv) * mul, rounded, r = k * rmul (mxint8: mul 64, rmul 1/64) */
    float mul, rmul;
    /* FLOAT: see elem_float.c mf_near */
    int32_t clampb, maxb, minnorm, half_m1, keep, flip, ovf;
    int shift;
    float kf;
    uint32_t mmask, topfield;
    /* NF4, COMPAND: value of each code */
    float lut[256];
};

/* One element type's operations. The run kernels take n values and loop-invariant block
 * parameters, so dispatch through these pointers happens once per block or chunk, never per
 * element. x == out is allowed in every run kernel. */
struct qs_elem_ops {
    const char *name;
    int lut_decode; /* unpack decodes through a value table (qs_kern_lut); 0: arithmetic */
    /* element parameters of f (bits, grid bounds, maxval) */
    void (*derive)(const struct qs_format *f, struct qs_elem *el);
    /* one code to its exact value (NaN / +-Inf for those codes); bits above el->bits ignored */
    double (*decode)(const struct qs_elem *el, uint32_t code);
    /* scalar reference cast of x at scale 1 (`roundtrip`; x not NaN) */
    double (*cast)(const struct qs_elem *el, double x, int sat);
    /* kernel constants (el, sat already set) */
    void (*init)(struct kern *K);
    /* out[j] = r(x[j] * inv) * s, round to nearest (even); lo, hi: INT clamp bounds of k */
    void (*near)(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                 float hi, float s);
    /* out[i] = r(x[i] * b[i * bstride].inv) * b[i * bstride].s: a column of a matrix whose rows
     * have blocks of their own (GPTQ) */
    void (*near_each)(const struct kern *K, const struct qs_qblock *b, size_t bstride,
                      const float *x, float *out, int n);
    /* the same with stochastic rounding, drawing one 24-bit uniform per element from g */
    void (*stoch)(const struct kern *K, const float *x, float *out, int n, float inv, float lo,
                  float hi, float s, qs_rng *g);
    /* codes[j] of grid values r[j] (z: INT zero point) */
    void (*encode)(const struct kern *K, const float *r, int n, int z, uint32_t *codes);
    /* out[j] = value(code j) * s for the n codes (n <= CHUNK) at bit position bitpos of the
     * packed stream buf; lut: value of each code (qs_kern_lut), or NULL for INT */
    void (*unpack)(const struct kern *K, const float *lut, const uint8_t *buf, size_t bitpos, int n,
                   int z, float s, float *restrict out);
};

extern const struct qs_elem_ops qs_elem_int, qs_elem_float, qs_elem_nf4, qs_elem_compand;

#define QS_NF4_LEVELS 16
extern const float qs_nf4_levels[QS_NF4_LEVELS];
/* Decision thresholds between consecutive NF4 levels (float midpoints); y > mid[i] moves up. */
extern const float qs_nf4_mids[QS_NF4_LEVELS - 1];

/* mu of the companding codec. */
#define QS_COMPAND_MU 255.0

/* The element type of f (MX: its element; NVFP4: E2M1); el->ops NULL for none and ggml. */
void qs_elem_of(const struct qs_format *f, struct qs_elem *el);

/* Kernel constants for f's element type (f must have one). */
void qs_kern_init(struct kern *K, const struct qs_format *f, int sat);

/* Value of each code 0 .. 2^bits - 1 as the kernels produce it (NaN as the quiet NaN with the
 * code's sign), for table decoding; malloc'd, NULL when out of memory. */
float *qs_kern_lut(const struct kern *K);

/* near_each through near, one element at a time (element types without a faster one). */
void qs_near_each_generic(const struct kern *K, const struct qs_qblock *b, size_t bstride,
                          const float *x, float *out, int n);

/* Decodes all codes through a value table (the unpack op of table-decoded element types). */
void qs_unpack_lut(const struct kern *K, const float *lut, const uint8_t *buf, size_t bitpos, int n,
                   int z, float s, float *restrict out);

/* ---- containers: one row per format kind (kinds.c) ---------------------------------------- */

/* Where block scales are stored. SC_FREE in a kind row: F16, F32 or none by scale=. */
enum scale_store { SC_NONE, SC_F16, SC_F32, SC_E8M0, SC_E4M3, SC_FREE };

struct job;
struct blk;

/* A container with a codec of its own (ggml: llama.cpp's blocks). */
struct qs_codec {
    int (*fake)(const struct qs_format *f, const float *w, int rows, int cols, float *out,
                qs_err *e);
    int (*pack)(const struct qs_format *f, const float *w, int rows, int cols, struct qs_packed *p,
                qs_err *e);
    int (*unpack)(const struct qs_packed *p, float *out, qs_err *e);
    int (*layout)(const struct qs_format *f, int rows, int cols, struct qs_packed_layout *out,
                  qs_err *e);
};

struct qs_kind {
    struct qs_format_traits t; /* what the kind allows (public) */
    /* element type: elem, or elem_e0 when the row has no exponent bits (mxint8) */
    const struct qs_elem_ops *elem, *elem_e0;
    enum scale_store store;
    /* block parameters from the block's (clipped) range: amax = max |x|, [mn, mx] */
    int (*fit)(const struct job *J, float amax, float mn, float mx, struct blk *b, int row, int col,
               qs_err *e);
    /* optional: extra kernel state of the job (NVFP4: the E4M3 scale grid) */
    void (*setup)(struct job *J);
    /* optional: the per-tensor scale from the tensor's absmax (NVFP4) */
    void (*tensor)(struct job *J, float amax);
    /* optional: nblk whole 32-element blocks of one row fitted and rounded in one pass (MX with
     * minifloat elements, clip=max, nearest; used when f->block is 32); returns the first block
     * holding a NaN/Inf, or -1 */
    int (*fused)(const struct kern *K, const float *x, float *out, int nblk);
    /* optional: the kind's own codec, instead of everything above (ggml) */
    const struct qs_codec *codec;
};

/* The row of f's kind. */
const struct qs_kind *qs_kind_of(const struct qs_format *f);

/* ---- small bit helpers shared by the kernels ---------------------------------------------- */

#define STEP 16   /* vector step of the inner loops */
#define CHUNK 256 /* elements per kernel call (stack buffers) */
#define INF_BITS 0x7f800000
#define QNAN_BITS 0x7fc00000

/* In-place operation (out == x) is safe for the element-wise loops: each element is read
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
static inline float pow2f(int k)
{
    if (k >= -126)
        return u2f((uint32_t)(k + 127) << 23);
    return u2f(1u << (k + 149));
}

/* floor(log2(a)) for a finite a > 0. */
static inline int floor_log2f(float a)
{
    uint32_t b = f2u(a) & 0x7fffffffu;
    if (b >> 23)
        return (int)(b >> 23) - 127;
    return (31 - __builtin_clz(b)) - 149;
}

/* uniform in [0, 1) with 24 random bits, so that y + u is exact in double */
static inline double unif24(qs_rng *g)
{
    return (double)(qs_rng_u64(g) >> 40) * 0x1p-24;
}

/* ---- the code stream ---- */

/* Reads n codes of the given width starting at bit position bitpos of an LSB-first stream. */
static inline void qs_get_codes(const uint8_t *buf, size_t bitpos, uint32_t *codes, int n, int bits)
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

#endif
