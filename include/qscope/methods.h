/* methods.h - quantizer methods beyond round-to-nearest, as pure kernels on one linear layer:
 * GPTQ (OBQ error feedback), AWQ and SmoothQuant per-input-channel scaling, randomized Hadamard
 * rotations, and importance-weighted (imatrix) scale search.
 *
 * Notation (REFERENCES.md): a linear layer computes y = x W^T with W: (rows = out, cols = in)
 * row-major float and inputs X: (n, cols). Every method quantizes with the formats and options of
 * format.h through qs_quantizer (so every result is a value qs_quant_fake's grid can hold at the
 * block's scale). Definitions and citations: man/qscope-methods.7, "Quantizer methods".
 *
 * These are the kernels; `quant ... method=gptq|awq weight=imatrix rotate=hadamard smooth=A`
 * applies them to a bench's sites (src/analysis/sitemethod.c, bench.h). The caller owns the
 * statistics (H = 2 X^T X, mean |x|, max |x|, mean x^2) and decides where a scale or a rotation
 * is folded. Inputs are never modified unless the comment says in place. Errors: 0 / -1 with a
 * message in e; large buffers are memory-checked (qs_alloc). */
#ifndef QSCOPE_METHODS_H
#define QSCOPE_METHODS_H

#include <stdint.h>

#include "qscope/common.h"
#include "qscope/format.h"

/* ---- input statistics --------------------------------------------------------------------- */

/* h += 2 x^T x. x: (n, cols) float, h: (cols, cols) double, full symmetric (both triangles
 * written). Accumulates in double (dsyrk on row chunks), so calls over batches add up exactly
 * as one call would, to double rounding. */
int qs_hessian_add(double *h, const float *x, int n, int cols, qs_err *e);

/* The local pre-activation error of replacing w by q for inputs whose Gram matrix is r:
 * tr(E r E^T) with E = q - w, i.e. ||X q^T - X w^T||_F^2 when r = X^T X. w, q: (rows, cols),
 * r: (cols, cols) double symmetric, both triangles stored. Returns -1.0 when memory runs out. */
double qs_method_local_err(const float *w, const float *q, int rows, int cols, const double *r);

/* ---- GPTQ ------------------------------------------------------------------------------- */

struct qs_gptq_opts {
    double damp;   /* lambda = damp * mean(diag H) added to the diagonal (default 0.01) */
    int block;     /* lazy-batch width in columns (default 128); the result does not depend
                      on it, bit for bit */
    int act_order; /* quantize columns by decreasing diag H (default 0: in order) */
    int sub;       /* columns per sub-batch inside a lazy batch (0: 16); the result does not
                      depend on it, bit for bit */
    int threads;   /* row-slice threads (0: one per CPU up to 8, >= 128 rows each); the result
                      does not depend on it, bit for bit */
    int portable;  /* 1: the plain C kernels (fmaf) even where the AVX2+FMA ones run: the same
                      bits, slower (a test's handle) */
};
void qs_gptq_opts_default(struct qs_gptq_opts *g);

/* GPTQ's factor: U (n, n) float row-major, upper, with H^-1 = U^T U, from hp (n, n) double
 * holding J H J (H with its rows and columns reversed, damped; destroyed): the lower Cholesky
 * factor L of J H J by a blocked right-looking factorization, then U = J L^-1 J by block columns
 * of the inverse, on `threads` threads (>= 1) of our own with one-thread BLAS calls. The result
 * is LAPACK's dpotrf + dtrtri to rounding, and the same bits for any thread count. Errors: not
 * positive definite ("raise damp"), out of memory. */
int qs_gptq_inv_chol(double *hp, int n, int threads, float *u, qs_err *e);

/* GPTQ (Frantar et al. 2023) with format f and options o: out = Q(W) dequantized, (rows, cols).
 * h: (cols, cols) double, H = 2 X^T X of the layer's inputs (not modified). Dead inputs
 * (H_jj = 0) get H_jj = 1 and W[:, j] = 0, as the paper does. The upper Cholesky factor U of
 * H^-1 is computed without forming H^-1: reversing the index order, J H J = L L^T gives
 * U = J L^-1 J (qs_gptq_inv_chol). Scales: gran=channel from the row as it is when its first column
 * is reached (= the original row); group:N (and MX / NVFP4 / NF4 blocks) when the group's first
 * column is reached, from the weights updated so far (lazy batches are cut at a group start
 * whose group would straddle the batch end, so the result does not depend on `block`); with
 * act_order the group scales are fitted from the original W before the loop (GPTQ's
 * static_groups), so that groups stay contiguous runs of original columns and pack as usual.
 * gran=tensor and the NVFP4 tensor scale come from the original W. scales (optional, NULL ok):
 * rows * ceil(cols / qs_quantizer_block) blocks, row-major, the parameters each group was
 * quantized with (one entry when the scale is shared by the tensor). Every weight update is one
 * fused multiply-add, in the order of the columns that cause it (no sgemm), so out and scales
 * are, bit for bit, the column-at-a-time loop's with one fmaf per update, for any block, sub,
 * threads and kernel (see methods.c for what may still differ between CPUs: U from BLAS).
 * Errors: format / options as qs_quant_pack, round=stochastic, H not positive definite after
 * damping ("raise damp"). */
int qs_gptq(const struct qs_format *f, const struct qs_qopts *o, const struct qs_gptq_opts *g,
            const float *w, int rows, int cols, const double *h, float *out,
            struct qs_qblock *scales, qs_err *e);

/* ---- per-input-channel scaling: AWQ, SmoothQuant ------------------------------------------ */

/* a[:, j] *= s[j] (inverse = 0) or a[:, j] /= s[j] (inverse = 1), in place. a: (rows, cols). */
void qs_scale_cols(float *a, int rows, int cols, const float *s, int inverse);

/* AWQ (Lin et al. 2024) search on one layer. xmean: (cols) mean |x_j| over the calibration
 * inputs; r: (cols, cols) double, X^T X of the same inputs (the error metric). For alpha =
 * k / ngrid, k = 0 .. ngrid - 1 (llm-awq's grid; ngrid <= 0 means 20): s_j = max(xmean_j^alpha,
 * 1e-4), normalised by sqrt(max s * min s) (as llm-awq does), and the error
 * tr(E r E^T) with E = Q(W diag s) diag(s)^-1 - W. The first alpha with the smallest error wins
 * (alpha = 0 is plain round-to-nearest, so AWQ is never worse on the calibration inputs).
 * Outputs: s (cols); qw (rows, cols) = Q(W diag s) dequantized: the layer computes
 * (x / s) qw^T, i.e. s is an explicit input scale unless the caller folds 1/s into the previous
 * operation; *alpha, *err (the chosen error) and *err_rtn (alpha = 0) if non-NULL. */
int qs_awq(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows, int cols,
           const float *xmean, const double *r, int ngrid, float *s, float *qw, double *alpha,
           double *err, double *err_rtn, qs_err *e);

/* SmoothQuant (Xiao et al. 2023) scales: s_j = xmax_j^alpha / wmax_j^(1 - alpha) with
 * wmax_j = max_i |W_ij| clamped below at 1e-5 and s_j clamped below at 1e-5 (as the authors'
 * smooth.py). xmax: (cols) max |x_j| over the calibration inputs; w: (rows, cols); s: (cols).
 * Then W' = W diag(s) (qs_scale_cols(w, .., 0)) and X' = X diag(s)^-1 (qs_scale_cols(x, .., 1))
 * leave X W^T unchanged. alpha in [0, 1]. */
int qs_smoothquant_scales(const float *xmax, const float *w, int rows, int cols, double alpha,
                          float *s, qs_err *e);

/* ---- rotations ----------------------------------------------------------------------------- */

/* A randomized orthogonal Hadamard-type transform of dimension n (QuIP#, QuaRot).
 * qscope: n = 2^k * m with m odd; H = (Q_m (x) H_p / sqrt(p)) diag(d), p = 2^k, H_p the
 * Sylvester-Walsh-Hadamard matrix, d random signs, Q_m a random orthogonal m x m matrix (QR of a
 * Gaussian with R's diagonal made positive; Q_1 = 1), all seeded. For n a power of two this is
 * the usual randomized Hadamard transform; otherwise every output still mixes every input.
 * Refused: n < 1 and odd parts m > 1024 (the m x m mixing would dominate the cost). */
struct qs_rot;
int qs_rot_new(int n, uint64_t seed, struct qs_rot **out, qs_err *e);
void qs_rot_free(struct qs_rot *h);
int qs_rot_dim(const struct qs_rot *h);
/* In place on each row v of a: (rows, n): v <- H v (transpose = 0), v <- H^T v (transpose = 1).
 * Rotating W's rows (W -> W H^T) and the inputs' rows (x -> x H^T, i.e. x -> H x as a column)
 * leaves x W^T unchanged; applying the transpose to a rotated row returns it. -1 only when
 * memory runs out. */
int qs_rot_apply(const struct qs_rot *h, float *a, int rows, int transpose, qs_err *e);

/* ---- importance-weighted scale search ----------------------------------------------------- */

/* Quantizes w: (rows, cols) into out (dequantized) with each block's scale searched to minimise
 * sum_j imp_j (w_j - q_j)^2 (imp: (cols) >= 0, llama.cpp's importance matrix: mean x_j^2).
 * In the style of llama.cpp's make_qx_quants: candidate scales s0 * M / (M + 0.1 k), k = -9 .. 9
 * (s0 the format's own block scale under its clip= rule, M = 2^(B-1) - 1 for B-bit elements:
 * nmax for int), then qscope's wider scan s0 * (0.30, 0.31, .., 1.50); from each candidate up
 * to 4 alternations of round-to-nearest at the scale and the weighted least-squares scale of the
 * codes (s = sum imp w l / sum imp l^2), neither of which can raise the error. Every scale is
 * rounded to its storage (F16 / F32) and judged by the weighted error of round-to-nearest at
 * that scale; the smallest wins, the plain scale s0 on ties (so never worse than plain
 * rounding). The output is on the format's grid at the chosen scale, as packing expects.
 * Formats: int symmetric, minifloats, fixed point, nf4, compand, with gran=channel or group:N;
 * refused for asym, gran=tensor, scale=none, MX and NVFP4 (their scales are not free).
 * imp = NULL means all ones. */
int qs_imatrix_quant(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                     int cols, const float *imp, float *out, qs_err *e);
/* The same, also writing each block's chosen parameters into scales (rows * ceil(cols /
 * qs_quantizer_block) entries, row-major; NULL ok), for qs_quant_pack_blocks. */
int qs_imatrix_quant_ex(const struct qs_format *f, const struct qs_qopts *o, const float *w,
                        int rows, int cols, const float *imp, float *out, struct qs_qblock *scales,
                        qs_err *e);

/* ---- one layer, one model --------------------------------------------------------------- */

enum qs_method { QS_METHOD_RTN, QS_METHOD_GPTQ, QS_METHOD_AWQ, QS_METHOD_IMATRIX };

struct qs_method_opts {
    enum qs_method method;
    struct qs_gptq_opts gptq; /* GPTQ */
    int awq_grid;             /* AWQ: grid points (0: 20) */
    int rotate;               /* quantize in a randomized Hadamard basis first */
    uint64_t rot_seed;        /* its seed (the layer index is added by qs_mlp_quant_method) */
};
void qs_method_opts_default(struct qs_method_opts *mo); /* RTN, no rotation, GPTQ defaults */
/* "rtn", "gptq", "awq", "imatrix" */
const char *qs_method_name(enum qs_method m);

/* The effective quantized weight of one layer in the original basis, out: (rows, cols), so that
 * x out^T is what the deployed layer computes: with rotate, Q'(W H^T) H; with AWQ,
 * Q(W diag s) diag(s)^-1 (the deployed layer keeps s as an input scale; the two agree up to float
 * rounding). Q' is the method, fed the statistics of x: (n, cols) (rotated with the weights):
 * RTN qs_quant_fake, GPTQ H = 2 x^T x, AWQ mean |x| and x^T x, imatrix mean x^2.
 * This is the drop-in for qs_quant_fake where a `quant` rule applies a method. */
int qs_method_layer(const struct qs_format *f, const struct qs_qopts *o,
                    const struct qs_method_opts *mo, const float *w, int rows, int cols,
                    const float *x, int n, float *out, qs_err *e);

struct qs_mlp;
/* Quantizes every layer of m in place with qs_method_layer; x: (n, in0) calibration inputs.
 * Layer i's inputs come from the model with layers 0..i-1 already quantized (GPTQ's sequential
 * mode), or from the float model with inputs_float. Biases stay float. Layer i's rotation seed
 * is rot_seed + i. m must own its weights (qs_mlp_clone gives such a copy): mapped weights are
 * refused. On error m may be partly quantized. */
int qs_mlp_quant_method(struct qs_mlp *m, const float *x, int n, const struct qs_format *f,
                        const struct qs_qopts *o, const struct qs_method_opts *mo, int inputs_float,
                        qs_err *e);

#endif
