/* moments.h - second moments of a site's inputs, accumulated row block by row block in double,
 * so that an analysis holds O(in^2) numbers instead of O(tokens x in) activations.
 *
 * What they serve: L2QER's activation scales (mean |x_j|), QERA's and EoRA's autocorrelation
 * R = X^T X / n, GPTQ's Hessian H = 2 X^T X (later). Rows are gathered into blocks of
 * QS_MOMENTS_CHUNK (whatever the caller's batches: a window of a transformer, a whole MLP cache)
 * and each full block is added by one dsyrk; the last, partial block is added at qs_moments_finish.
 * So the sums depend on the rows and their order only, not on how they were handed in nor on
 * the BLAS thread count (dsyrk splits the output, not the sum over rows). */
#ifndef QSCOPE_MOMENTS_H
#define QSCOPE_MOMENTS_H

#include "qscope/common.h"

#define QS_MOMENTS_CHUNK 256

struct qs_moments {
    int in;
    long n;        /* rows added */
    double *xtx;   /* (in, in) row-major: sum over rows of x^T x; symmetric after finish */
    double *absum; /* (in): sum over rows of |x_j| */
    double *buf;   /* private: the block being filled, (QS_MOMENTS_CHUNK, in) */
    int fill;      /* private: rows in buf */
};

/* Allocates the sums for inputs of width in (zeroed). -1 with e when out of memory. */
int qs_moments_init(struct qs_moments *m, int in, qs_err *e);
/* Adds rows x: (n, in) row-major. */
void qs_moments_add(struct qs_moments *m, const float *x, int n);
/* Adds the last partial block and fills xtx's lower triangle; idempotent. */
void qs_moments_finish(struct qs_moments *m);
/* Frees the sums (m may be zeroed or NULL). */
void qs_moments_free(struct qs_moments *m);
/* After finish: r = X^T X / n as F32 (in, in); s = mean |x_j| as F32 (in). n = 0: zeros. */
void qs_moments_gram(const struct qs_moments *m, float *r);
void qs_moments_absmean(const struct qs_moments *m, float *s);
/* Moments of rows x: (n, in) in one call (init, add, finish). */
int qs_moments_of_rows(struct qs_moments *m, const float *x, int n, int in, qs_err *e);

#endif
