/* spectral.c - statistics of singular-value spectra and rank correlations. */
#include "qscope/spectral.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double qs_mp_edge(double fro2, int m, int n)
{
    if (m < 1 || n < 1 || !(fro2 > 0))
        return 0;
    double sigma = sqrt(fro2 / ((double)m * n));
    return sigma * (sqrt((double)m) + sqrt((double)n));
}

/* -p log p with the 0 log 0 = 0 convention. */
static double plogp(double p)
{
    return p > 0 ? -p * log(p) : 0;
}

void qs_rank_stats_compute(const double *sv, int nsv, double fro2, int m, int n,
                           struct qs_rank_stats *st)
{
    memset(st, 0, sizeof *st);
    if (nsv < 0)
        nsv = 0;
    st->nsv = nsv;
    if (!(fro2 > 0) || !isfinite(fro2) || nsv == 0) {
        st->zero = !(fro2 > 0) || !isfinite(fro2);
        if (!st->zero) { /* energy but no values: only the energy-based statistics are known */
            st->fro2 = fro2;
            st->mp_edge = qs_mp_edge(fro2, m, n);
            st->k50 = st->k90 = st->k99 = -1;
            st->partial = 1;
        }
        return;
    }
    int mn = m < n ? m : n;
    double known = 0;
    for (int i = 0; i < nsv; i++)
        known += sv[i] * sv[i];
    st->fro2 = fro2;
    st->top = sv[0];
    st->mp_edge = qs_mp_edge(fro2, m, n);
    st->stable_rank = sv[0] > 0 ? fro2 / (sv[0] * sv[0]) : 0;
    st->structured = sv[0] > st->mp_edge;
    st->partial = nsv < mn && known < fro2 * (1 - 1e-4);

    /* Effective rank (Roy & Vetterli 2007): exp(H), H = -sum p_i log p_i, p_i = s_i^2 / fro2.
     * With the full spectrum sum s_i^2 = fro2 up to rounding, so normalise by the values' own sum
     * then; a partial spectrum adds the unseen energy spread over the unseen values. */
    double h = 0;
    if (!st->partial) {
        for (int i = 0; i < nsv; i++)
            h += plogp(sv[i] * sv[i] / known);
    } else {
        for (int i = 0; i < nsv; i++)
            h += plogp(sv[i] * sv[i] / fro2);
        int unseen = mn - nsv;
        double each = (fro2 - known) / fro2 / unseen;
        h += unseen * plogp(each);
    }
    st->eff_rank = exp(h);

    const double shares[3] = {0.5, 0.9, 0.99};
    int *ks[3] = {&st->k50, &st->k90, &st->k99};
    for (int q = 0; q < 3; q++) {
        double need = shares[q] * fro2 - 1e-6 * fro2, cum = 0;
        *ks[q] = -1;
        for (int i = 0; i < nsv; i++) {
            cum += sv[i] * sv[i];
            if (cum >= need) {
                *ks[q] = i + 1;
                break;
            }
        }
    }
}

void qs_energy_left(const double *sv, int nsv, double fro2, int K, double *left)
{
    if (K < 0)
        return;
    if (!(fro2 > 0) || !isfinite(fro2)) {
        for (int k = 0; k <= K; k++)
            left[k] = 0;
        return;
    }
    double cum = 0;
    left[0] = 1;
    for (int k = 1; k <= K; k++) {
        if (k > nsv) {
            left[k] = -1;
            continue;
        }
        cum += sv[k - 1] * sv[k - 1];
        left[k] = fmax(0.0, 1.0 - cum / fro2);
    }
}

struct ranked {
    double v;
    int i;
};

static int cmp_ranked(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->i - b->i;
}

/* rank[i] = 1-based rank of x[i], ties averaged. */
static int average_ranks(const double *x, int n, double *rank)
{
    struct ranked *r = malloc((size_t)n * sizeof *r);
    if (!r)
        return -1;
    for (int i = 0; i < n; i++)
        r[i] = (struct ranked){x[i], i};
    qsort(r, (size_t)n, sizeof *r, cmp_ranked);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && r[j + 1].v == r[i].v)
            j++;
        double avg = 0.5 * (i + j) + 1; /* mean of ranks i+1 .. j+1 */
        for (int t = i; t <= j; t++)
            rank[r[t].i] = avg;
        i = j + 1;
    }
    free(r);
    return 0;
}

double qs_spearman(const double *a, const double *b, int n)
{
    if (n < 2)
        return NAN;
    for (int i = 0; i < n; i++)
        if (isnan(a[i]) || isnan(b[i]))
            return NAN;
    double *ra = malloc((size_t)n * sizeof *ra), *rb = malloc((size_t)n * sizeof *rb);
    double res = NAN;
    if (ra && rb && average_ranks(a, n, ra) == 0 && average_ranks(b, n, rb) == 0) {
        double ma = 0, mb = 0;
        for (int i = 0; i < n; i++) {
            ma += ra[i];
            mb += rb[i];
        }
        ma /= n;
        mb /= n;
        double sab = 0, saa = 0, sbb = 0;
        for (int i = 0; i < n; i++) {
            double da = ra[i] - ma, db = rb[i] - mb;
            sab += da * db;
            saa += da * da;
            sbb += db * db;
        }
        if (saa > 0 && sbb > 0)
            res = sab / sqrt(saa * sbb);
    }
    free(ra);
    free(rb);
    return res;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

double qs_median(const double *a, int n)
{
    if (n < 1)
        return NAN;
    for (int i = 0; i < n; i++)
        if (isnan(a[i]))
            return NAN;
    double *c = malloc((size_t)n * sizeof *c);
    if (!c)
        return NAN;
    memcpy(c, a, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_double);
    double med = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return med;
}
