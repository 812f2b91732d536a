/* spectral.h - statistics of a singular-value spectrum: noise edge, effective and stable rank,
 * energy quantiles, Eckart-Young tail energy; and the rank statistics used across tables
 * (Spearman correlation, median). Pure functions of the values: no matrices, no model. */
#ifndef QSCOPE_SPECTRAL_H
#define QSCOPE_SPECTRAL_H

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
    int structured;     /* top > mp_edge */
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
