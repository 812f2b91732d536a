/* spectral.h - statistics of a singular-value spectrum: noise edge, effective and stable rank,
 * energy quantiles, Eckart-Young tail energy; the variance-profile null that decides "white" or
 * "structured"; and the rank statistics used across tables (Spearman correlation, median).
 * Everything but qs_null_edge is a pure function of the values: no matrices, no model. */
#ifndef QSCOPE_SPECTRAL_H
#define QSCOPE_SPECTRAL_H

#include <stdint.h>

#include "qscope/common.h"

/* Marchenko-Pastur edge: the largest singular value expected of an (m, n) matrix of i.i.d.
 * entries with the same energy, sigma (sqrt m + sqrt n) with sigma^2 = fro2 / (m n).
 * 0 for an empty shape or fro2 <= 0. */
double qs_mp_edge(double fro2, int m, int n);

struct qs_rank_stats {
    double fro2;        /* ||E||_F^2 (from the matrix, not only the returned values) */
    double top;         /* largest singular value */
    double mp_edge;     /* Marchenko-Pastur edge for i.i.d. noise of the same shape and energy */
    double eff_rank;    /* exp(entropy of p_i = s_i^2 / sum s_j^2) (Roy & Vetterli 2007) */
    double stable_rank; /* fro2 / top^2 */
    int k50, k90, k99;  /* smallest k holding that share of fro2; -1 = "> nsv" */
    int structured;     /* top > null_edge (the variance-profile null, qs_rank_stats_set_null);
                           top > mp_edge while no null is set (null_draws == 0) */
    double null_top;    /* variance-profile null: mean top singular value of its draws */
    double null_sd;     /* standard deviation of the draws' top values */
    double null_margin; /* finite-size margin added: max(4 tw, 3 null_sd), tw in qs_null_edge */
    double null_edge;   /* null_top + null_margin; 0 while no null is set */
    int null_draws;     /* draws simulated; 0 = no null set (the i.i.d. MP edge decides) */
    int zero;           /* fro2 == 0: every statistic 0, an all-zero spectrum, never NaN */
    int nsv;            /* number of values used */
    int partial;        /* the values hold less than fro2 (top-k only; see eff_rank below) */
};

/* Fills st from sv: nsv values, descending, of an (m, n) matrix whose total energy is fro2.
 * fro2 is the true ||E||_F^2; when the values are only the top nsv (partial: their squares sum
 * below fro2 by more than 1e-4 relative, with nsv < min(m, n)), k-quantities the known values
 * do not reach are -1, and eff_rank is an upper bound: the unseen energy spread evenly over the
 * min(m, n) - nsv unseen values (the largest entropy the known values allow).
 * k_p uses a 1e-6 fro2 allowance so that the float rounding of the values cannot push a
 * boundary case (e.g. the identity) to the next k. fro2 <= 0 (or not finite) sets zero = 1 and
 * every statistic to 0. */
void qs_rank_stats_compute(const double *sv, int nsv, double fro2, int m, int n,
                           struct qs_rank_stats *st);

/* The null for "white": Gaussian noise with the variance profile of the quantizer's scales.
 * Rounding error is not i.i.d.: each scale block (a row for per-channel scales, a row segment for
 * groups and MX/NVFP4/NF4 blocks) has its own variance (about s^2/12 for a uniform quantizer of
 * step s, value-dependent for minifloats), and unequal variances lift the top singular value above
 * the i.i.d. Marchenko-Pastur edge. The profile is estimated empirically from the unscaled error
 * e0 (m, n): the mean square of each block, with a row always its own block (so per-tensor
 * minifloats, whose error follows |w|, get per-row variances), or of each column (by_col: the
 * pre-activation error, one variance per output channel). */
struct qs_null_view {
    int seg;               /* block width along a row, 1..n (n: one block per row) */
    int by_col;            /* one variance per column instead of row blocks */
    const float *colscale; /* (n) or NULL: the matrix judged is e0 diag(colscale) */
    const float *mix;      /* (n, n) symmetric or NULL: the matrix judged is e0 mix */
    const double *colss;   /* by_col: (n) or NULL: each column's sum of squares over the m rows,
                              given instead of e0 (which may then be NULL): the pre-activation
                              error's profile from its streamed second moments */
};

struct qs_null {
    double top_mean, top_sd; /* top singular value of the simulated draws (view applied) */
    double tw;               /* Tracy-Widom fluctuation scale of the largest singular value:
                                sigma_bar / 2 (1/sqrt m + 1/sqrt n)^(1/3), sigma_bar^2 the mean
                                entry variance of the draws (the eigenvalue scale
                                sigma^2 (sqrt m + sqrt n)(1/sqrt m + 1/sqrt n)^(1/3) of Johnstone
                                2001, carried to singular values) */
    double margin;           /* max(4 tw, 3 top_sd) */
    double edge;             /* top_mean + margin: a top singular value above it is structured */
    int draws;
};

/* Simulates `draws` (>= 2) matrices N_ij ~ N(0, var of e0's block holding (i, j)), applies the
 * view (colscale or mix), and takes each one's top singular value (LAPACK when min(m, n) <= 512,
 * else block Krylov, k = 1). Seeded with `seed` (the session seed mixed with the layer), so the
 * verdict reproduces. All-zero e0 gives a zero null. Memory: one (m, n) float draw (checked). */
int qs_null_edge(const float *e0, int m, int n, const struct qs_null_view *v, int draws,
                 uint64_t seed, struct qs_null *nl, qs_err *e);

/* Records the null in st and sets structured = top > nl->edge (0 for a zero spectrum). */
void qs_rank_stats_set_null(struct qs_rank_stats *st, const struct qs_null *nl);

/* left[k] = share of fro2 left after the best rank-k approximation (Eckart-Young:
 * 1 - sum_{i<=k} s_i^2 / fro2), k = 0..K, so left has K + 1 entries; left[0] = 1 (0 when
 * fro2 == 0), values clamped at 0 against rounding; -1 for k > nsv (unknown). */
void qs_energy_left(const double *sv, int nsv, double fro2, int K, double *left);

/* Spearman rank correlation of a and b (n each): the Pearson correlation of their ranks, ties
 * given their average rank. NaN if n < 2, if either vector is constant, or any value is NaN. */
double qs_spearman(const double *a, const double *b, int n);

/* Median of a (n) on a sorted copy (mean of the middle two for even n); NaN for n < 1 or if any
 * value is NaN. */
double qs_median(const double *a, int n);

#endif
