/* format_impl.h - internal to src/quant: the element type of a format, shared by format.c
 * (names, options, scalar casts) and pack.c (the vectorizable kernels). Not a public header. */
#ifndef QSCOPE_FORMAT_IMPL_H
#define QSCOPE_FORMAT_IMPL_H

#include <stdint.h>

#include "qscope/format.h"

/* How one element code maps to a value at scale 1. */
enum qs_elem_kind {
    QS_ELEM_INT,    /* two's complement integer k (mxint8: k * 2^-6) */
    QS_ELEM_FLOAT,  /* sign-magnitude minifloat; ebits == 0 is fixed point k * 2^-mbits */
    QS_ELEM_NF4,    /* level index */
    QS_ELEM_COMPAND /* sign-magnitude mu-law code */
};

struct qs_elem {
    enum qs_elem_kind kind;
    int bits, ebits, mbits, bias;
    enum qs_nonfinite nf;
    int emin;      /* FLOAT: exponent of the smallest normal, 1 - bias */
    int emax;      /* FLOAT: exponent of the largest finite value (MX emax_elem); INT: 0 */
    int frac;      /* INT: value = k * 2^-frac (6 for mxint8, 0 otherwise) */
    int qmax;      /* INT, COMPAND: largest code magnitude 2^(B-1)-1 */
    double maxval; /* largest finite value */
};

#define QS_NF4_LEVELS 16
extern const float qs_nf4_levels[QS_NF4_LEVELS];
/* Decision thresholds between consecutive NF4 levels (float midpoints); y > mid[i] moves up. */
extern const float qs_nf4_mids[QS_NF4_LEVELS - 1];

/* mu of the companding codec. */
#define QS_COMPAND_MU 255.0

/* The element type of f (MX: its element; NVFP4: E2M1). */
void qs_elem_of(const struct qs_format *f, struct qs_elem *el);

/* Decodes one element code exactly (NaN / +-Inf for those codes). */
double qs_elem_decode(const struct qs_elem *el, uint32_t code);

/* Compand: code magnitude k (0..qmax) for |c| <= 1 given as a double in [0, 1]; and the level. */
int qs_compand_k(const struct qs_elem *el, double a);
double qs_compand_level(const struct qs_elem *el, int k);

#endif
