/* spectral.c - statistics of singular-value spectra and rank correlations. */
#include "qscope/spectral.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "qscope/mlp.h"

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

/* Top singular value of a: (m, n): LAPACK up to min(m, n) = 512, block Krylov above. */
static int top_value(const float *a, int m, int n, uint64_t seed, double *top, qs_err *e)
{
    int mn = m < n ? m : n;
    if (mn > 512)
        return qs_svd_topk_krylov(a, m, n, 1, 16, 12, seed, top, e);
    double *all = malloc((size_t)mn * sizeof *all);
    if (!all)
        return qs_errf(e, "out of memory");
    int rc = qs_svd_values(a, m, n, all, e);
    *top = all[0];
    free(all);
    return rc;
}

int qs_null_edge(const float *e0, int m, int n, const struct qs_null_view *v, int draws,
                 uint64_t seed, struct qs_null *nl, qs_err *e)
{
    memset(nl, 0, sizeof *nl);
    if (m < 1 || n < 1 || draws < 2)
        return qs_errf(e, "null: bad shape %dx%d or draws %d", m, n, draws);
    int seg = v->by_col ? 1 : v->seg < 1 || v->seg > n ? n : v->seg;
    int nseg = v->by_col ? n : (n + seg - 1) / seg;
    size_t nvar = v->by_col ? (size_t)n : (size_t)m * nseg, len;
    if (qs_size_mul((size_t)m, (size_t)n, &len) < 0)
        return qs_errf(e, "null: %dx%d is too large", m, n);
    double *var = calloc(nvar, sizeof *var);
    float *d = qs_alloc(len, sizeof(float), "the null's simulated draw", e);
    float *t = v->mix ? qs_alloc(len, sizeof(float), "the null's simulated draw", e) : NULL;
    int rc = -1;
    if (!var || !d || (v->mix && !t)) {
        if (!var)
            qs_errf(e, "out of memory");
        goto out;
    }
    /* block mean squares of the unscaled error */
    if (v->by_col && v->colss)
        memcpy(var, v->colss, (size_t)n * sizeof *var);
    else
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double x = e0[(size_t)i * n + j];
                var[v->by_col ? (size_t)j : (size_t)i * nseg + j / seg] += x * x;
            }
    for (size_t b = 0; b < nvar; b++) {
        int w = v->by_col ? m : (int)(b % nseg) == nseg - 1 ? n - (nseg - 1) * seg : seg;
        var[b] /= w;
    }
    qs_rng r;
    qs_rng_seed(&r, seed ^ 0x6e756c6c65646765ULL); /* "nulledge" */
    double sum = 0, sum2 = 0, en = 0;
    for (int k = 0; k < draws; k++) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double sd = sqrt(var[v->by_col ? (size_t)j : (size_t)i * nseg + j / seg]);
                double x = sd * qs_rng_normal(&r);
                if (v->colscale)
                    x *= v->colscale[j];
                d[(size_t)i * n + j] = (float)x;
            }
        if (v->mix) { /* d mix: mix is symmetric, so d mix^T = d mix */
            qs_linear(d, m, n, v->mix, NULL, n, t);
            memcpy(d, t, len * sizeof(float));
        }
        en += qs_frob2(d, len);
        double top = 0;
        if (top_value(d, m, n, seed + (uint64_t)k + 1, &top, e) < 0)
            goto out;
        sum += top;
        sum2 += top * top;
    }
    nl->draws = draws;
    nl->top_mean = sum / draws;
    nl->top_sd = sqrt(fmax(0.0, (sum2 - sum * sum / draws) / (draws - 1)));
    double sbar = sqrt(en / draws / ((double)m * n));
    nl->tw = 0.5 * sbar * cbrt(1 / sqrt((double)m) + 1 / sqrt((double)n));
    nl->margin = fmax(4 * nl->tw, 3 * nl->top_sd);
    nl->edge = nl->top_mean + nl->margin;
    rc = 0;
out:
    free(var);
    free(d);
    free(t);
    return rc;
}

void qs_rank_stats_set_null(struct qs_rank_stats *st, const struct qs_null *nl)
{
    st->null_top = nl->top_mean;
    st->null_sd = nl->top_sd;
    st->null_margin = nl->margin;
    st->null_edge = nl->edge;
    st->null_draws = nl->draws;
    st->structured = !st->zero && st->nsv > 0 && st->top > nl->edge;
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
