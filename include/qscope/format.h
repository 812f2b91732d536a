/* format.h - number formats: parsing, element casts, and quantize / pack / unpack kernels.
 *
 * Definitions follow /work/shared REFERENCES.md "Number formats" (OCP OFP8 rev 1.0, OCP MX v1.0,
 * NVFP4, QLoRA NF4); where qscope makes a choice of its own, the comment says "qscope:".
 *
 * Layout conventions: a matrix w is (rows, cols) row-major; a "channel" is a row (the output
 * channel of a weight (out, in), or a token of activations X (n, in)); groups and blocks run
 * along a row and never straddle two rows. Quantizing x with scale s computes y = x * (1/s) in
 * F32 (as PyTorch's fake_quantize does), rounds y onto the element grid, and dequantizes r * s.
 * Scales are rounded to their storage type (F16 by default) before use, so the fake path
 * (qs_quant_fake) equals pack + unpack bit for bit. */
#ifndef QSCOPE_FORMAT_H
#define QSCOPE_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

enum qs_fmt_kind {
    QS_FMT_NONE,      /* keep float */
    QS_FMT_INT,       /* intB, B = 2..8 */
    QS_FMT_MINIFLOAT, /* fp8-*, fp6-*, fp4-e2m1, eXmY[bZ] */
    QS_FMT_FIXED,     /* e0mY: sign-magnitude fixed point k / 2^Y */
    QS_FMT_MX,        /* mxfp8/mxfp6/mxfp4 (minifloat elements) and mxint8 (ebits = 0) */
    QS_FMT_NVFP4,     /* E2M1 elements, E4M3 block scale per 16, F32 tensor scale */
    QS_FMT_NF4,       /* QLoRA NormalFloat4 codebook */
    QS_FMT_COMPAND,   /* mu-law (mu = 255) companding then B-bit sign-magnitude codes */
    QS_FMT_GGML,      /* llama.cpp's ggml block types q8_0 ... q6_k (ggml.h): fixed blocks,
                         llama.cpp's reference rounding, codes = the ggml blocks themselves */
    QS_FMT_CAST       /* fp16, bf16: a plain cast to a storage float type, no scale */
};
enum qs_gran { QS_GRAN_TENSOR, QS_GRAN_CHANNEL, QS_GRAN_GROUP };
enum qs_clip { QS_CLIP_MAX, QS_CLIP_MSE, QS_CLIP_PCT };
enum qs_round { QS_ROUND_NEAREST, QS_ROUND_STOCHASTIC };
enum qs_nonfinite {
    QS_NF_NONE, /* every code finite (eXmY generic, fp6, fp4, e0mY) */
    QS_NF_E4M3, /* only S.1111.111 is NaN, no Inf */
    QS_NF_IEEE  /* top exponent field = Inf (mantissa 0) / NaN (E5M2, E3M4) */
};

struct qs_format {
    enum qs_fmt_kind kind;
    int bits;               /* bits of one element code */
    int ebits, mbits, bias; /* minifloat / fixed / MX and NVFP4 element type; mxint8:
                               ebits 0, mbits 6 (fraction bits of k / 64) */
    enum qs_nonfinite nf;
    int block;     /* 32 for MX, 16 for NVFP4, 64 (default) for NF4, 32 or 256 for ggml types,
                      0 otherwise */
    int ggml;      /* QS_FMT_GGML: the ggml type number (enum qs_ggml_type in ggml.h) */
    char name[32]; /* canonical name: "int4", "fp8-e4m3", "e3m4b1", "mxfp4", ... */
};

/* Parses a format name into f: none, int2..int8, fp8-e4m3, fp8-e5m2, fp8-e3m4, fp6-e2m3,
 * fp6-e3m2, fp4-e2m1, fp16 and bf16 (plain IEEE-like casts, no scale), eXmY and eXmYbZ (X 1..8, Y
 * 0..10, X+Y+1 <= 16, 0 <= Z; every value must fit in F32), e0mY (fixed point, Y 1..15; e0m7 is the
 * 8-bit one), mxfp8 (E4M3 elements), mxfp8-e5m2, mxfp6 (E2M3), mxfp6-e3m2, mxfp4, mxint8, nvfp4,
 * nf4, compand:B (B 2..8), and llama.cpp's q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k,
 * q6_k (ggml.h). Names are case-sensitive. A generic eXmY equal to an OCP type takes its name (e2m1
 * -> fp4-e2m1). Errors name the problem ("unknown format 'int9': bit width must be 2..8") or list
 * the valid names. */
int qs_format_parse(const char *s, struct qs_format *f, qs_err *e);

/* NULL-terminated static array of canonical names (for completion and help). */
const char *const *qs_format_names(void);

/* Largest finite value of the element format at scale 1 (int: 2^(B-1)-1; nf4, compand: 1;
 * mxint8 elements: 127/64). 0 for none. */
double qs_format_max(const struct qs_format *f);

/* qscope: choices beyond the specifications, applied by every kernel below.
 * - Symmetric int scale amax / (2^(B-1)-1); range=full uses amax / ((2^B-1)/2) like PyTorch's
 *   symmetric observer. Asymmetric ranges always include 0: [min(min,0), max(max,0)].
 * - A zero block (amax = 0), or a scale that rounds to 0 in F16, gives scale 0 and zeros out.
 * - clip=pct:P: P-th percentile of |x| in the block, linear interpolation between order
 *   statistics (numpy's default); asym clips [min, max] to [-c, c]. clip=mse: ratios
 *   1, 0.995, ..., 0.5 of amax (and of min, max when asym), smallest squared error of the
 *   block, ties keep the larger ratio; the search rounds to nearest.
 * - Stochastic rounding: floor(y + u) on the local grid spacing (for minifloats the spacing of
 *   the binade, for NF4 between neighbouring levels), u with 24 random bits.
 * - mxint8 elements clamp to +-127 (symmetric), so code 0x80 (-2) is never produced.
 * - NF4 and compand: y above a decision threshold (F32 midpoint for NF4) moves up; compand
 *   rounds Q * ln(1 + mu|y|) / ln(1 + mu) to nearest even. */
struct qs_qopts {
    enum qs_gran gran;
    int group;    /* group size for QS_GRAN_GROUP (>= 1; a partial last group is allowed) */
    int gran_set; /* set by qs_qopts_parse_token when gran= is given: formats with fixed
                     blocks (MX, NVFP4) then reject it, NF4 rejects gran=tensor. NF4 uses
                     group:N blocks, one block per row for channel, else 64 */
    enum qs_clip clip;
    double pct;     /* clip=pct:P: percentile of |x| in (0, 100] */
    int asym;       /* int only: zero point */
    int full_range; /* int symmetric: codes -2^(B-1)..2^(B-1)-1, scale amax / ((2^B-1)/2)
                       (PyTorch's symmetric observer) instead of restricted +-(2^(B-1)-1) */
    enum qs_round round;
    uint64_t seed;  /* stochastic rounding: row r uses qs_rng seeded with seed + r * phi64 */
    int saturate;   /* 1: clamp to the largest finite; 0: overflow per spec (E4M3 -> NaN,
                       IEEE-like -> Inf). Only formats with Inf/NaN codes accept 0. */
    int scale_none; /* minifloat / fixed: cast raw values, scale 1, no scale storage */
    int scale_f32;  /* store per-tensor/channel/group scales as F32 instead of F16 */
};

/* Defaults: gran=tensor, clip=max, symmetric restricted range, nearest-even, saturating, F16
 * scales, seed 0. */
void qs_qopts_default(struct qs_qopts *o);

/* Canonical option string for format f with every default spelled out, only the options that
 * apply to f, e.g. "gran=group:32 clip=max round=nearest range=restricted sym scale=f16".
 * Empty for none. buf always NUL-terminated. */
void qs_qopts_format(const struct qs_format *f, const struct qs_qopts *o, char *buf, size_t n);

/* Parses one "key=value" token into o: gran=tensor|channel|group:N, clip=max|mse|pct:P,
 * round=nearest|stochastic, range=full|restricted, asym, sym, sat=0|1, scale=none|f16|f32,
 * seed=N. Returns 0, or -1 with a message (o unchanged). */
int qs_qopts_parse_token(struct qs_qopts *o, const char *tok, qs_err *e);

/* Checks that options o make sense for format f (e.g. asym only for int, sat=0 only for formats
 * with Inf/NaN, scale=none only for minifloat/fixed, no gran= for MX/NVFP4). 0 or -1. */
int qs_qopts_check(const struct qs_format *f, const struct qs_qopts *o, qs_err *e);

/* What a format's kind allows: one row per kind (src/quant/kinds.c), read by the kernels and by
 * callers that must ask (instead of testing kinds). */
struct qs_format_traits {
    const char *family;      /* "none", "int", "minifloat", "fixed", "mx", "nvfp4", "nf4",
                                "compand", "ggml" */
    int elements;            /* an element type of its own at scale 1 (qs_format_cast, codes) */
    int options;             /* takes quantization options (qs_qopts); ggml: none apply */
    int fixed_block;         /* blocks of f->block elements along rows, fixed by the format (MX
                                32, NVFP4 16, ggml 32 / 256): gran= does not apply */
    int blockwise;           /* absmax per block, f->block by default (gran=group:N or channel
                                change it); gran=tensor refused (nf4) */
    int free_scale;          /* scales are free numbers stored as F16 / F32 (scale=f32 applies;
                                methods may search or learn them) */
    const char *block_scale; /* otherwise the block scales' type: "e8m0" (MX), "e4m3" (NVFP4) */
    int tensor_scale;        /* an F32 per-tensor scale beside the block scales (NVFP4) */
    int asym;                /* zero points (asym) and range=full allowed (int) */
    int scale_none;          /* scale=none allowed: cast raw values (minifloat, fixed) */
    int static_amax;         /* a calibrated tensor absmax applies (qs_quant_fake_amax) */
    int unscaled;            /* values are cast as they are: no scale, so gran=, clip= and scale=
                                do not apply (fp16, bf16) */
    const char *own_rules;   /* options == 0: why (a format string taking f->block) */
};

/* The traits of f's kind (never NULL; an unknown kind reads as none). */
const struct qs_format_traits *qs_format_traits(const struct qs_format *f);

/* Elements per scale along a row of a matrix with cols columns under f and o, as the kernels
 * tile it: the group size, the format's fixed block, nf4's block, or cols when one scale serves
 * a row or the whole tensor (gran=channel / tensor, scale=none); at most cols. */
int qs_format_block_len(const struct qs_format *f, const struct qs_qopts *o, int cols);

struct qs_packed {
    struct qs_format fmt;
    struct qs_qopts opt;
    int rows, cols;
    /* element codes: one LSB-first bit stream, row-major, no padding (two int4 codes a byte) */
    uint8_t *codes;
    size_t code_bytes;
    /* one scale per tensor / channel / group / block, row-major: F16 or F32 little-endian,
     * E8M0 for MX, E4M3 for NVFP4; none with scale=none */
    uint8_t *scales;
    size_t scale_bytes;
    /* asymmetric int: one zero point byte per scale */
    uint8_t *zeros;
    size_t zero_bytes;
    float tensor_scale; /* NVFP4 per-tensor F32 scale (counted as 4 bytes) */
};

/* Quantizes w: (rows, cols) row-major into p (p's buffers are allocated; free with
 * qs_packed_free). Code layouts: int symmetric two's complement, int asymmetric unsigned;
 * minifloats sign | exponent | mantissa; e0mY and compand sign-magnitude; nf4 the level index
 * 0..15 (ascending); mxint8 two's complement k (value k/64).
 * Groups and blocks (gran=group:N of any format, NF4 blocks, MX 32, NVFP4 16) tile each row
 * from column 0; qscope: when cols is not a multiple of the size, the last group of each row is
 * shorter and has its own scale (and zero point), so a row holds ceil(cols / N) scales; a size
 * above cols gives one group per row. Layers whose rows are a multiple of N are unaffected.
 * Errors: fmt none, NaN/Inf in w ("non-finite value at [r, c]"), bad group size, options
 * invalid for the format, a scale that overflows F16 (use scale=f32). */
int qs_quant_pack(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, struct qs_packed *p, qs_err *e);

/* Packs values w: (rows, cols) that a method already placed on the format's grid with block
 * parameters of its own (blocks: rows * ceil(cols / block) entries, row-major, as qs_gptq's
 * scales; gran=tensor: one entry, the tensor's; the NVFP4 tensor scale comes from ref, the
 * matrix the method started from: (rows, cols)). Each value is
 * rounded at its block's scale, which keeps a value on the grid, so unpack gives w back. Nearest
 * rounding only; not for ggml types. Errors as qs_quant_pack. */
struct qs_qblock;
int qs_quant_pack_blocks(const struct qs_format *f, const struct qs_qopts *o, const float *ref,
                         const float *w, const struct qs_qblock *blocks, int rows, int cols,
                         struct qs_packed *p, qs_err *e);

/* Decodes p into out: (rows, cols) row-major. */
int qs_quant_unpack(const struct qs_packed *p, float *out, qs_err *e);

/* The shape of the buffers qs_quant_pack writes for f, o and a (rows, cols) matrix, without
 * packing anything (for readers of packed files, which must check sizes before unpacking). */
struct qs_packed_layout {
    size_t code_bytes, scale_bytes, zero_bytes;
    size_t nscales;          /* stored scales: 1 (tensor), rows x groups per row, or 0 */
    int group;               /* elements per scale along a row (the last of a row may be
                                shorter); 0 for one scale for the whole tensor */
    int tensor_scale;        /* NVFP4: a per-tensor F32 scale beside the block scales */
    const char *scale_dtype; /* "f16", "f32", "e8m0" (MX), "e4m3" (NVFP4) or "none" */
};
/* Errors as qs_quant_pack for bad formats / options / sizes. */
int qs_packed_layout(const struct qs_format *f, const struct qs_qopts *o, int rows, int cols,
                     struct qs_packed_layout *out, qs_err *e);

/* Frees p's buffers and zeroes it; NULL ok. */
void qs_packed_free(struct qs_packed *p);

/* Bytes of codes + scales + zero points (+4 when the NVFP4 tensor scale is used). */
size_t qs_packed_bytes(const struct qs_packed *p);

/* 8 * qs_packed_bytes / (rows * cols). */
double qs_packed_bits_per_weight(const struct qs_packed *p);

/* Fake quantization: out = unpack(pack(w)) bit for bit, computed without the packed buffers.
 * w, out: (rows, cols), the same buffer or not overlapping; out == w works in place (with
 * per-block scales through a temporary copy, so that an error never leaves w half-quantized).
 * For activations X (n, in) use gran=tensor (per tensor) or gran=channel (per token). Uses up to
 * 8 threads on large inputs; results do not depend on the thread count. Errors as qs_quant_pack;
 * on error out is unspecified unless out == w (then unchanged). */
int qs_quant_fake(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, float *out, qs_err *e);

/* Static activation quantization: qs_quant_fake with gran=tensor and the given calibrated absmax
 * instead of the tensor's own (clip ignored; values beyond amax saturate). Symmetric only;
 * NVFP4 takes amax for its tensor scale and keeps per-block scales; MX and NF4, whose scales
 * are per block, are rejected. x, out: (rows, cols). */
int qs_quant_fake_amax(const struct qs_format *f, const struct qs_qopts *o, const float *x,
                       int rows, int cols, float amax, float *out, qs_err *e);

/* ---- One block's quantizer applied to other values (GPTQ quantizes a column at a time against
 * per-row scales fixed when a group's first column is reached; AWQ and imatrix searches reuse
 * it). qs_quantizer_new computes what is shared by the tensor from w: (rows, cols) (the
 * gran=tensor scale, the NVFP4 tensor scale) exactly as qs_quant_fake does, and keeps no pointer
 * to w. Fitting block k of row r on its values and rounding the same values with the fitted
 * block gives qs_quant_fake's output bit for bit. Nearest rounding only (stochastic is refused).
 * Errors as qs_quant_pack. Free with qs_quantizer_free (NULL ok). */
struct qs_quantizer;
struct qs_qblock {
    float s, inv;   /* scale and 1 / scale (0 for a zero block) */
    float lo, hi;   /* int: clamp bounds of round(x / s), zero point folded in */
    int z;          /* int asym: zero point */
    uint32_t scode; /* the stored scale's bits (F16 / F32 / E8M0 / E4M3 code) */
};
int qs_quantizer_new(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                     int cols, struct qs_quantizer **out, qs_err *e);
void qs_quantizer_free(struct qs_quantizer *q);
/* Elements per block along a row (group size, cols for channel and tensor, 32 for MX, 16 for
 * NVFP4; the last block of a row may be shorter), and whether one block serves the whole tensor
 * (gran=tensor, scale=none: qs_quantizer_fit then ignores x). */
int qs_quantizer_block(const struct qs_quantizer *q);
int qs_quantizer_shared(const struct qs_quantizer *q);
/* The block parameters for values x[0..n) at [row, col] (position only names errors and the
 * NaN/Inf check), honouring clip=; -1 on a non-finite value or a scale overflowing F16. */
int qs_quantizer_fit(const struct qs_quantizer *q, const float *x, int n, int row, int col,
                     struct qs_qblock *b, qs_err *e);
/* out[j] = Q(x[j]) under block b (dequantized); out == x allowed. */
void qs_quantizer_round(const struct qs_quantizer *q, const struct qs_qblock *b, const float *x,
                        float *out, int n);
/* out[i] = Q(x[i]) under block b[i * bstride], i = 0 .. n-1: a column of a matrix whose rows
 * have blocks of their own (the same values as qs_quantizer_round element by element). */
void qs_quantizer_round_each(const struct qs_quantizer *q, const struct qs_qblock *b,
                             size_t bstride, const float *x, float *out, int n);

/* Bare element format at scale 1 (for `roundtrip`): int rounds (nearest even) and clamps to the
 * restricted range +-(2^(B-1)-1); minifloats and fixed point cast exactly per spec (RNE,
 * subnormals, signed zero), saturating to the largest finite when saturate != 0, otherwise
 * overflowing to NaN (E4M3) / Inf (IEEE-like) (formats without Inf/NaN always saturate); NaN
 * gives NaN. nf4: nearest level in [-1, 1]; compand: mu-law map of x clamped to [-1, 1], B-bit
 * codes, expanded back. MX and NVFP4: their element type's cast (mxint8: k/64, k in +-127);
 * callers wanting the shared block scale run qs_quant_fake on the values as one row. ggml block
 * types have no element type of their own: NaN (run qs_quant_fake on a row). */
double qs_format_cast(const struct qs_format *f, double x, int saturate);

/* Every value of the element format decoded from codes 0 .. 2^bits - 1 in code order (NaN/Inf
 * included). *values is malloc'd (caller frees), *n = 2^bits. Error for none. */
int qs_format_codes(const struct qs_format *f, double **values, int *n, qs_err *e);

/* Decodes one element code (bits above f->bits ignored). NaN for none and ggml types (no element
 * type of their own). */
double qs_format_decode(const struct qs_format *f, uint32_t code);

#endif
