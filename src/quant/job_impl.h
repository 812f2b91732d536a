/* job_impl.h - internal to src/quant: one quantization of a (rows, cols) matrix in flight (a
 * job), shared by scales.c (tiling, block scales, clipping), fake.c (fake quantization and the
 * block quantizer), pack.c (codes, pack / unpack) and threads.c (row ranges on threads). */
#ifndef QSCOPE_JOB_IMPL_H
#define QSCOPE_JOB_IMPL_H

#include "format_impl.h"

#define MAX_THREADS 8

/* One block's parameters (the public struct qs_qblock, field for field). */
struct blk {
    float s, inv;   /* scale and 1/s (0 for a zero scale) */
    float lo, hi;   /* INT: clamp bounds of round(y) (zero point folded in) */
    int z;          /* INT asym: zero point */
    uint32_t scode; /* stored scale: F16 / F32 bits, E8M0, E4M3 code */
};

struct job {
    const struct qs_format *f;
    const struct qs_qopts *o;
    const struct qs_kind *kind; /* f's container row */
    struct kern K;
    struct kern k_e4m3; /* NVFP4 block scales */
    const float *w;
    float *out;          /* fake */
    struct qs_packed *p; /* pack, unpack */
    const float *lut;    /* unpack: value of each code (NULL for arithmetic decoding) */
    int rows, cols;
    int seg, nseg; /* block length along a row, blocks per row */
    int shared;    /* one block parameter set for the whole tensor */
    struct blk tb;
    float g; /* NVFP4 tensor scale */
    enum scale_store store;
    int stoch;
    /* fit and round whole blocks in one pass (kind->fused when it applies), else NULL */
    int (*fused)(const struct kern *K, const float *x, float *out, int nblk);
    const struct qs_qblock *given; /* qs_quant_pack_blocks: every block's parameters */
    /* per-thread state */
    qs_err err[MAX_THREADS];
    int failed[MAX_THREADS];
    struct {
        uint32_t ab;
        float mn, mx;
    } part[MAX_THREADS]; /* tensor statistics */
};

/* ---- scales.c ---- */

/* Sets up J for f, o and w: (rows, cols) (w may be NULL for unpack and layouts): checks the
 * options, the kernel constants, the tiling into blocks and the scale storage. */
int qs_job_init(struct job *J, const struct qs_format *f, const struct qs_qopts *o, const float *w,
                int rows, int cols, qs_err *e);
/* The parameters shared by the whole tensor: the tensor block (gran=tensor) or the kind's
 * tensor scale. amax_given >= 0 overrides the tensor's own absmax. */
int qs_job_tensor(struct job *J, float amax_given, qs_err *e);
/* Parameters of the block x[0..n) starting at flat index base, honouring the clip option. */
int qs_block_params(const struct job *J, const float *x, size_t n, size_t base, struct blk *b,
                    qs_err *e);
/* "non-finite value %g at [r, c]" for the first NaN/Inf of x[0..n) at flat index base. */
int qs_nonfinite_at(const float *x, size_t n, size_t base, int cols, qs_err *e);

/* Scale storage types: bytes per scale, the dtype name, and the decoded scale of a code. */
struct qs_scale_store {
    int bytes;
    const char *dtype;
    float (*decode)(const struct job *J, const struct qs_packed *p, uint32_t code);
};
extern const struct qs_scale_store qs_scale_stores[];

/* Container fits (kind rows): free F16/F32 scales (int, minifloat, fixed, nf4, compand), OCP MX
 * E8M0 shared exponents, NVFP4 E4M3 block scales under an F32 tensor scale. */
int qs_fit_free(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e);
int qs_fit_e8m0(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e);
int qs_fit_e4m3(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e);
/* No scale: every block at scale 1 (plain casts). */
int qs_fit_unit(const struct job *J, float amax, float mn, float mx, struct blk *b, int row,
                int col, qs_err *e);
void qs_nvfp4_setup(struct job *J);
void qs_nvfp4_tensor(struct job *J, float amax);

/* elem_float.c: MX's fused kernel for minifloat elements (struct qs_kind.fused). */
int qs_mx_fused_float(const struct kern *K, const float *x, float *out, int nblk);

/* Grid values of x[0..n) times s under block parameters (inv, lo, hi), rounding to nearest or
 * stochastically (g: the row's stream): one call of the element type's kernel. */
static inline void qs_grid(const struct kern *K, const float *x, float *out, int n, float inv,
                           float lo, float hi, float s, int stoch, qs_rng *g)
{
    if (stoch)
        K->ops->stoch(K, x, out, n, inv, lo, hi, s, g);
    else
        K->ops->near(K, x, out, n, inv, lo, hi, s);
}

/* ---- threads.c ---- */

typedef void (*qs_rows_fn)(struct job *J, int r0, int r1, int tid);

/* Threads for work elements over rows: one below 128 Ki elements, otherwise one per online CPU
 * (at most MAX_THREADS, at most one per row). */
int qs_n_threads(size_t work, int rows);
/* Runs fn over rows [0, rows) split into nt ranges whose starts are multiples of align.
 * Returns the index of the first thread that set J->failed, or -1. */
int qs_par_rows(struct job *J, qs_rows_fn fn, int rows, int align, int nt);

/* stochastic rounding: row r draws from qs_rng seeded with seed + r * phi64 */
static inline void qs_seed_row(qs_rng *g, const struct qs_qopts *o, int row)
{
    qs_rng_seed(g, o->seed + (uint64_t)row * 0x9e3779b97f4a7c15ULL);
}

#endif
