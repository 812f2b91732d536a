/* ridge.c - the ridge recovery map from quantized to float pre-activations (lowrank.h), fitted
 * in double with an explicit rank cut.
 *
 * Why in double and by eigendecomposition: a map fitted from float32 sums of n products has
 * rounding of about 1e-7 ||G|| in G = Yq^T Yq, larger than the default lambda (1e-6 tr(G) / d),
 * so on rank-deficient inputs (a 2-D toy's first layer has rank 2 of 16; digits fc1 has rank 59
 * of 64, dead ReLUs) the map's null-space entries were rounding noise divided by lambda: unseen
 * by a float map on the calibration data, but they set the int4/int8 row scales of a quantized
 * map, and they changed with the BLAS thread count. Here G and Yq^T Yf are summed in double,
 * and G's null directions get exactly zero weight.
 *
 * The rank cut: eigen-directions of G with eigenvalue at or below QS_RIDGE_REL_CUT = 1e-6 of the
 * largest are dropped (singular values of the centred Yq below 1e-3 of the largest). That is the
 * scale of the default lambda (1e-6 tr(G) / d <= 1e-6 lambda_max), and six decades above the
 * float32 rounding of the data itself (about 1e-12 lambda_max): directions below it are either
 * null (dead units, a 2-D input embedded in 16 dimensions) or so weak that the ridge would give
 * them weights up to 1 / (2 sqrt(lambda)) - large coefficients that a float map can afford but
 * that set an int4/int8 map's row scales. With a lower cut (1e-8 .. 0) the float map's R moves by
 * at most 1e-3 on the bundled models but the int4 map's R depends on these weak directions, and
 * on the last bits of the forward pass. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lowrank.h"

#define RIDGE_ROWS 1024 /* row block for the Gram accumulation: bounds the scratch memory */

int qs_ridge_map(const float *yq, const float *yf, int n, int d, double lambda, float *at, float *b,
                 double *lambda_used, qs_err *err)
{
    struct qs_ridge_info info;
    if (qs_ridge_map_info(yq, yf, n, d, lambda, at, b, &info, err) < 0)
        return -1;
    if (lambda_used)
        *lambda_used = info.lambda;
    return 0;
}

static int all_finite(const char *what, const float *a, size_t n, qs_err *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return qs_errf(err, "ridge: %s has a non-finite entry at index %zu", what, i);
    return 0;
}

int qs_ridge_map_info(const float *yq, const float *yf, int n, int d, double lambda, float *at,
                      float *b, struct qs_ridge_info *info, qs_err *err)
{
    if (n < 1 || d < 1)
        return qs_errf(err, "ridge: empty pre-activations (%d samples x %d features)", n, d);
    if (isnan(lambda) || isinf(lambda))
        return qs_errf(err, "ridge: lambda %g is not finite", lambda);
    size_t nd, dd;
    if (qs_size_mul((size_t)n, (size_t)d, &nd) < 0 || qs_size_mul((size_t)d, (size_t)d, &dd) < 0)
        return qs_errf(err, "ridge: %d x %d is too large", n, d);
    if (all_finite("quantized pre-activations", yq, nd, err) ||
        all_finite("float pre-activations", yf, nd, err))
        return -1;
    int rows = n < RIDGE_ROWS ? n : RIDGE_ROWS;
    size_t scratch = (2 * (size_t)rows * d + 4 * dd + 3 * (size_t)d) * sizeof(double);
    if (qs_mem_check(scratch, "the ridge map's double scratch", err) < 0)
        return -1;
    double *mq = calloc((size_t)d, sizeof *mq), *mf = calloc((size_t)d, sizeof *mf);
    double *w = malloc((size_t)d * sizeof *w);
    double *xq = malloc((size_t)rows * d * sizeof *xq), *xf = malloc((size_t)rows * d * sizeof *xf);
    double *g = calloc(dd, sizeof *g), *h = calloc(dd, sizeof *h);
    double *t = malloc(dd * sizeof *t), *x = malloc(dd * sizeof *x);
    int rc = -1;
    if (!mq || !mf || !w || !xq || !xf || !g || !h || !t || !x) {
        qs_errf(err, "ridge: out of memory (%d x %d)", n, d);
        goto out;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            mq[j] += yq[(size_t)i * d + j];
            mf[j] += yf[(size_t)i * d + j];
        }
    for (int j = 0; j < d; j++) {
        mq[j] /= n;
        mf[j] /= n;
    }
    /* Column-major d x d: G = Yq^T Yq (upper triangle) and H = Yq^T Yf over centred rows, in
     * double, block by block. A row-major block (nr, d) is the column-major (d, nr) matrix
     * Xt = X^T, so G = Xt Xt^T and H = Xqt Xft^T. */
    for (int r0 = 0; r0 < n; r0 += rows) {
        int nr = n - r0 < rows ? n - r0 : rows;
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < d; j++) {
                size_t src = (size_t)(r0 + i) * d + j, dst = (size_t)i * d + j;
                xq[dst] = yq[src] - mq[j];
                xf[dst] = yf[src] - mf[j];
            }
        cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, d, nr, 1.0, xq, d, 1.0, g, d);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, d, d, nr, 1.0, xq, d, xf, d, 1.0, h,
                    d);
    }
    double tr = 0;
    for (int j = 0; j < d; j++)
        tr += g[(size_t)j * d + j];
    double lam = lambda < 0 ? 1e-6 * tr / d : lambda;
    /* G = V diag(w) V^T, w ascending; g becomes V. */
    if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', d, g, d, w) != 0) {
        qs_errf(err, "ridge: LAPACK could not diagonalise the %d x %d Gram matrix", d, d);
        goto out;
    }
    double wmax = w[d - 1], cut = QS_RIDGE_REL_CUT * wmax;
    int k = 0; /* kept: the top k eigenvalues, those above the cut */
    while (k < d && wmax > 0 && w[d - 1 - k] > cut)
        k++;
    /* X = V_k diag(1 / (w + lam)) V_k^T H, V_k the last k columns of V; dropped directions
     * contribute nothing, so at's null-space component is exactly zero (to V's orthogonality). */
    memset(x, 0, dd * sizeof *x);
    if (k > 0) {
        const double *vk = g + (size_t)(d - k) * d;
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, k, d, d, 1.0, vk, d, h, d, 0.0, t, k);
        for (int i = 0; i < k; i++) {
            double f = 1.0 / (w[d - k + i] + lam);
            for (int j = 0; j < d; j++)
                t[(size_t)j * k + i] *= f;
        }
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, d, d, k, 1.0, vk, d, t, k, 0.0, x,
                    d);
    }
    /* at = X (column-major X[i + j d] is row i, column j); b = mean(yf) - mean(yq) at. */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            at[(size_t)i * d + j] = (float)x[(size_t)j * d + i];
    for (int j = 0; j < d; j++) {
        double acc = mf[j];
        for (int i = 0; i < d; i++)
            acc -= mq[i] * x[(size_t)j * d + i];
        b[j] = (float)acc;
    }
    if (info) {
        info->lambda = lam;
        info->rank_kept = k;
        info->eig_max = wmax;
        info->cut = cut;
    }
    rc = 0;
out:
    free(mq);
    free(mf);
    free(w);
    free(xq);
    free(xf);
    free(g);
    free(h);
    free(t);
    free(x);
    return rc;
}
