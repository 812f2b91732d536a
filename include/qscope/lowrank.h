/* lowrank.h - corrections of a layer's weight error, as pure functions on matrices: the low-rank
 * corrections LoRC, L2QER (LQER), QERA (exact) and EoRA, the ridge recovery map from quantized
 * to float pre-activations, and the recovery score.
 *
 * Notation (REFERENCES.md "Corrections"): a linear layer computes y = x W^T + b with W: (out, in);
 * E = W - Q(W): (out, in) is the weight error. Every low-rank function writes the correction
 * c: (out, in) so that W' = Q(W) + c, and optionally its factors l: (out, r), rt: (r, in) with
 * c = l rt (pass NULL for either to skip it). The factors split the kept singular values evenly,
 * l = U_r S_r^{1/2} and rt = S_r^{1/2} V_r^T (times the method's right-hand transform), as
 * ZeroQuant-V2's LoRC does, so that neither factor dwarfs the other when it is itself quantized.
 * Rank r must be in 1..min(out, in); otherwise the call fails with e.g.
 * "rank 20 exceeds min(out, in) = 10". All buffers are caller-owned; inputs are not modified. */
#ifndef QSCOPE_LOWRANK_H
#define QSCOPE_LOWRANK_H

#include <stddef.h>

#include "qscope/common.h"

/* LoRC (ZeroQuant-V2): c = U_r S_r V_r^T, the rank-r truncated SVD of e: (out, in). By
 * Eckart-Young it minimises ||E - C||_F over rank r. */
int qs_lowrank_lorc(const float *e, int out, int in, int r, float *c, float *l, float *rt,
                    qs_err *err);

/* L2QER (LQER): with S = diag(s), s: (in), s_j = mean |x_j| over the calibration inputs, the
 * SVD of E S = U Sigma V^T gives c = U_r Sigma_r V_r^T S^{-1}. Entries s_j below 1e-4 max_j s_j
 * (dead or near-dead input channels) are raised to that floor, so that S^{-1} cannot amplify the
 * SVD's rounding noise by more than 1e4; negative or non-finite s, or s all zero, is an error.
 * With s = 1 this is exactly LoRC. */
int qs_lowrank_lqer(const float *e, int out, int in, const float *s, int r, float *c, float *l,
                    float *rt, qs_err *err);

/* QERA, exact form: minimising E_x ||(E - C) x||^2 = tr((E - C) R (E - C)^T) over rank r gives
 * c = [E R^{1/2}]_r R^{-1/2}, [.]_r the rank-r truncated SVD, with R = rxx + damp * mean(diag
 * rxx) * I, rxx: (in, in) the input autocorrelation E[x x^T] (qs_gram), damp >= 0. R^{+-1/2} come
 * from the eigendecomposition R = Q Lambda Q^T (ssyevd). Eigenvalues at or below
 * 16 FLT_EPSILON lambda_max (only possible when damp = 0 and rxx is singular) are treated as
 * null directions (pseudo-inverse): the objective does not see them, and c leaves them at 0. */
int qs_lowrank_qera(const float *e, int out, int in, const float *rxx, double damp, int r, float *c,
                    float *l, float *rt, qs_err *err);

/* EoRA: with R = Q Lambda Q^T as above, c = [E Q Lambda^{1/2}]_r Lambda^{-1/2} Q^T: the error
 * projected into R's eigenspace, scaled by the eigenvalues' square roots, truncated, and mapped
 * back. It minimises the same objective as exact QERA (E Q Lambda^{1/2} = E R^{1/2} Q), so the
 * two agree to rounding. */
int qs_lowrank_eora(const float *e, int out, int in, const float *rxx, double damp, int r, float *c,
                    float *l, float *rt, qs_err *err);

/* Expected output error of a correction, tr((E - C) R (E - C)^T) = E_x ||(E - C) x||^2 for
 * R = rxx: (in, in); e, c: (out, in); c may be NULL for tr(E R E^T). In double. */
double qs_lowrank_objective(const float *e, const float *c, int out, int in, const float *rxx);

/* Quantizes a correction's factors in place: l: (out, r) with one scale per row (per output
 * channel of the layer) and rt: (r, in) with one scale per row (per rank component), each with
 * format f and its defaults (symmetric, round to nearest even, F16 scales; MX and NVFP4 keep
 * their own blocks along the row), through qs_quant_pack / qs_quant_unpack, so l and rt hold the
 * dequantized values. c: (out, in) (may be NULL) gets l rt recomputed from them: the correction
 * the quantized factors actually apply. *bytes (may be NULL): the packed bytes of both factors
 * (codes + scales, qs_packed_bytes). An error while packing (a non-finite value, a format that
 * cannot take the options) leaves l and rt unchanged. */
struct qs_format;
int qs_lowrank_quantize(const struct qs_format *f, float *l, float *rt, int out, int in, int r,
                        float *c, size_t *bytes, qs_err *err);

/* Ridge recovery map from quantized to float pre-activations yq, yf: (n, d): with the columns
 * centred and G = yq^T yq, at = (G + lambda I)^+ yq^T yf: (d, d) restricted to G's kept
 * eigen-directions, and b = mean(yf) - mean(yq) at: (d), so that yhat = yq at + b. lambda is
 * absolute; lambda < 0 means "auto", 1e-6 trace(G) / d; *lambda_used (may be NULL) gets the
 * value used.
 * Numerics (ridge.c): the means, G and yq^T yf are accumulated in double (dsyrk/dgemm on double
 * copies of row blocks); G = V diag(w) V^T (dsyevd) and at = V_k diag(1 / (w_k + lambda)) V_k^T
 * yq^T yf over the k eigen-directions with w > QS_RIDGE_REL_CUT w_max. The rank cut: directions
 * at or below 1e-6 of the largest eigenvalue (singular values below 1e-3 of the largest) are
 * G's null space plus the float32 rounding of the data (about 1e-12 w_max); they get exactly
 * zero weight, so a rank-deficient yq gives the minimum-norm map and the map does not depend on
 * rounding (nor on the BLAS thread count). With lambda = 0 this is the minimum-norm
 * least-squares map on the kept directions. */
#define QS_RIDGE_REL_CUT 1e-6
int qs_ridge_map(const float *yq, const float *yf, int n, int d, double lambda, float *at, float *b,
                 double *lambda_used, qs_err *err);

struct qs_ridge_info {
    double lambda;  /* the lambda used */
    int rank_kept;  /* eigen-directions of G kept (0..d) */
    double eig_max; /* largest eigenvalue of G */
    double cut;     /* QS_RIDGE_REL_CUT eig_max: eigenvalues at or below it were dropped */
};
/* qs_ridge_map with the fit's figures in *info (may be NULL). */
int qs_ridge_map_info(const float *yq, const float *yf, int n, int d, double lambda, float *at,
                      float *b, struct qs_ridge_info *info, qs_err *err);

/* The ridge map's sums, row block by row block (RIDGE_ROWS rows a dsyrk/dgemm), so that a map
 * is fitted from a stream of windows without their rows: G = sum (yq - kq)(yq - kq)^T,
 * H = sum (yq - kq)(yf - kf)^T and the sums of yq - kq, yf - kf in double, about a shift k
 * (init's kq, kf: (d) or NULL for the first rows' means), which keeps the one-pass sums as
 * accurate as centred ones. qs_ridge_map_info is init with the exact means, one add, solve. */
struct qs_ridge_acc {
    int d, shifted, fill;
    long n;
    double *kq, *kf, *sq, *sf; /* (d) shifts and sums of the shifted rows */
    double *g, *h;             /* (d, d) column-major; g upper triangle */
    double *bq, *bf;           /* private: the row block being filled */
};
int qs_ridge_acc_init(struct qs_ridge_acc *a, int d, const double *kq, const double *kf,
                      qs_err *err);
/* yq, yf: (n, d); -1 with err on a non-finite value. */
int qs_ridge_acc_add(struct qs_ridge_acc *a, const float *yq, const float *yf, int n, qs_err *err);
/* The map from the sums, as qs_ridge_map_info (consumes them: solve once, then free). */
int qs_ridge_acc_solve(struct qs_ridge_acc *a, double lambda, float *at, float *b,
                       struct qs_ridge_info *info, qs_err *err);
void qs_ridge_acc_free(struct qs_ridge_acc *a);

/* Applies the map: yhat = yq at + b; yq, yhat: (n, d), at: (d, d), b: (d). */
void qs_ridge_apply(const float *yq, int n, int d, const float *at, const float *b, float *yhat);

/* Recovery R = 1 - ||yf - yhat||^2 / ||yf - yq||^2 over nd values (double accumulation). When
 * the error before is 0 it returns 0 and sets *undefined = 1 (if non-NULL); otherwise
 * *undefined = 0. */
double qs_recovery(const float *yf, const float *yq, const float *yhat, size_t nd, int *undefined);

#endif
