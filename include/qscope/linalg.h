/* linalg.h - dense linear algebra on row-major float matrices: exact and randomized singular
 * values, thin SVD, symmetric eigendecomposition, Gram matrices, least squares.
 *
 * Thin wrappers over OpenBLAS (cblas_sgemm/ssyrk) and LAPACKE; nothing here hand-rolls a GEMM or
 * an SVD. Every matrix is row-major float with its shape in the comment; inputs are never
 * modified (LAPACK works on private copies). Functions that can fail return 0 / -1 and fill the
 * caller's qs_err; the only failures are bad shapes, exhausted memory and a LAPACK error code. */
#ifndef QSCOPE_LINALG_H
#define QSCOPE_LINALG_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

/* Singular values of a: (m, n), descending, min(m, n) of them written to sv. LAPACK sgesdd
 * (jobz = 'N') on a private copy, so a is untouched. Values are float-accurate: absolute error
 * about 1e-7 * sv[0], so values far below that are rounding noise, not signal. */
int qs_svd_values(const float *a, int m, int n, double *sv, qs_err *e);

/* Thin SVD a = u diag(s) vt with k = min(m, n): a: (m, n), u: (m, k), s: (k) descending,
 * vt: (k, n); all buffers caller-owned. LAPACK sgesdd (jobz = 'S') on a copy. */
int qs_svd_thin(const float *a, int m, int n, float *u, float *s, float *vt, qs_err *e);

/* Top-k singular values of a: (m, n) by the randomized range finder of Halko, Martinsson & Tropp
 * (2011, Alg. 4.4 + 5.1): Omega (n, l) Gaussian from qs_rng seeded with `seed`,
 * Y = (A A^T)^q A Omega with a QR re-orthonormalisation after every product (CholeskyQR2 on
 * ssyrk/spotrf/strsm, falling back to sgeqrf + sorgqr when the block is ill-conditioned), then
 * the singular values of Q^T A; sv gets the k largest, descending.
 * l = k + oversample, rounded up to a multiple of 16 (OpenBLAS's sgemm runs ~25 % faster on such
 * widths, and extra columns only add accuracy), capped at min(m, n). oversample < 0 means the
 * default 10, power < 0 the default 2. When l reaches min(m, n) the exact values are returned.
 * Every value is <= the exact one (Rayleigh-Ritz). Accuracy, measured: decaying spectra are
 * float-exact (0.9^i: 1e-6 relative); on flat, noise-like spectra the tail of the top k is
 * underestimated by several % (1/sqrt(i): 3.5 % at the k-th value; 4096^2 int4 quantization
 * error, k = 64, p = 10, q = 2: 10.6 %) - use qs_svd_topk_krylov when the spectrum may be white.
 * Deterministic for a given seed and thread count. */
int qs_svd_topk(const float *a, int m, int n, int k, int oversample, int power, uint64_t seed,
                double *sv, qs_err *e);

/* Top-k singular values of a: (m, n) by randomized block Krylov / block Lanczos
 * bidiagonalisation (Musco & Musco 2015, "Randomized block Krylov methods for stronger and
 * faster approximate SVD"; Golub-Kahan-Lanczos, full reorthogonalisation of U): a Gaussian
 * starting block V_1 (n, b), then for j = 1..depth U_j = orth(A V_j) against U_1..U_{j-1} and
 * V_{j+1} = orth(A^T U_j) against V_j; the values are those of U^T A (Rayleigh-Ritz on the Krylov
 * space U: (m, b * depth)), so each is <= the exact one, and the gap closes far faster than
 * qs_svd_topk's on flat spectra for the same number of products (2 * depth).
 * block <= 0 / depth <= 0 pick defaults: b = k rounded up to a multiple of 16, clamped to
 * 16..64, and depth = ceil(8k / b), at least 4 (k = 64: b = 64, depth 8, 16 products).
 * Measured on a 4096^2 int4 quantization error (near-white, top-64 flat within 25 %): <= 0.8 %
 * relative with the defaults, in about 0.3 s on 2 cores. Falls back to exact values when
 * b * (depth + 1) would reach min(m, n). Deterministic for a given seed and thread count. */
int qs_svd_topk_krylov(const float *a, int m, int n, int k, int block, int depth, uint64_t seed,
                       double *sv, qs_err *e);

/* Symmetric eigendecomposition of a: (n, n) (only the upper triangle is read): w (n) ascending,
 * v (n, n) with eigenvectors in columns, v[i * n + j] = component i of eigenvector j.
 * LAPACK ssyevd on a copy. */
int qs_sym_eig(const float *a, int n, float *w, float *v, qs_err *e);

/* Gram / autocorrelation r = x^T x / rows: x: (rows, cols), r: (cols, cols), full symmetric.
 * cblas_ssyrk plus a mirror of the upper triangle. rows == 0 gives r = 0. */
void qs_gram(const float *x, int rows, int cols, float *r);

/* Least squares min ||a x - b||_F via LAPACK sgels (QR; a must have full column rank, m >= n):
 * a: (m, n), b: (m, nrhs), x: (n, nrhs). For references in tests; a and b untouched. */
int qs_lstsq(const float *a, int m, int n, const float *b, int nrhs, float *x, qs_err *e);

/* Sum of squares of a: (n) accumulated in double. */
double qs_frob2(const float *a, size_t n);

#endif
