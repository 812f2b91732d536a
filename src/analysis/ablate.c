/* ablate.c - the non-capacity ablation: does a correction also lift the float model, and does a
 * random correction of the same size do as well? */
#include "qscope/analysis.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"
#include "qscope/moments.h"

#include "analysis_impl.h"

/* ---- ablation ------------------------------------------------------------------------ */

static struct qs_interval bootstrap(const double *d, int n, uint64_t seed)
{
    enum { B = 1000 };
    struct qs_interval iv = {0, 0, 0};
    double *means = malloc(B * sizeof *means);
    if (!means || n == 0) {
        free(means);
        return iv;
    }
    for (int r = 0; r < n; r++)
        iv.mean += d[r] / n;
    qs_rng rng;
    qs_rng_seed(&rng, seed ^ 0xb007ULL);
    for (int k = 0; k < B; k++) {
        double s = 0.0;
        for (int r = 0; r < n; r++)
            s += d[qs_rng_below(&rng, (uint64_t)n)];
        means[k] = s / n;
    }
    /* sort the resampled means and read the 2.5 % and 97.5 % points */
    for (int a = 1; a < B; a++) {
        double v = means[a];
        int j = a - 1;
        while (j >= 0 && means[j] > v) {
            means[j + 1] = means[j];
            j--;
        }
        means[j + 1] = v;
    }
    iv.lo = means[(int)(0.025 * B)];
    iv.hi = means[(int)(0.975 * B) - 1];
    free(means);
    return iv;
}

int qs_corr_random_like(const struct qs_corr *c, int out, int in, uint64_t seed, struct qs_corr *r)
{
    qs_rng rng;
    qs_rng_seed(&rng, seed ^ 0x7a11dULL);
    memset(r, 0, sizeof *r);
    r->method = c->method;
    if (c->c) {
        size_t nw = (size_t)out * in;
        int k = c->rank;
        float *lf = malloc((size_t)out * k * sizeof(float)),
              *rt = malloc((size_t)k * in * sizeof(float));
        r->c = malloc(nw * sizeof(float));
        if (!lf || !rt || !r->c) {
            free(lf);
            free(rt);
            return -1;
        }
        for (size_t j = 0; j < (size_t)out * k; j++)
            lf[j] = (float)qs_rng_normal(&rng);
        for (size_t j = 0; j < (size_t)k * in; j++)
            rt[j] = (float)qs_rng_normal(&rng);
        /* r->c = lf rt: (out, k)(k, in); qs_linear computes x w^T, so pass rt^T */
        float *rtt = malloc((size_t)k * in * sizeof(float));
        if (!rtt) {
            free(lf);
            free(rt);
            return -1;
        }
        for (int a = 0; a < k; a++)
            for (int bb = 0; bb < in; bb++)
                rtt[(size_t)bb * k + a] = rt[(size_t)a * in + bb];
        qs_linear(lf, out, k, rtt, NULL, in, r->c);
        double sc = sqrt(qs_frob2(c->c, nw) / fmax(qs_frob2(r->c, nw), 1e-300));
        for (size_t j = 0; j < nw; j++)
            r->c[j] = (float)(r->c[j] * sc);
        free(lf);
        free(rt);
        free(rtt);
    }
    if (c->db) {
        r->db = malloc((size_t)out * sizeof(float));
        if (!r->db)
            return -1;
        for (int j = 0; j < out; j++)
            r->db[j] = (float)qs_rng_normal(&rng);
        double sc = sqrt(qs_frob2(c->db, (size_t)out) / fmax(qs_frob2(r->db, (size_t)out), 1e-300));
        for (int j = 0; j < out; j++)
            r->db[j] = (float)(r->db[j] * sc);
    }
    if (c->amap) { /* A_rand = I + G, ||G|| = ||A - I||; mb_rand of the norm of mb */
        size_t na = (size_t)out * out;
        r->amap = malloc(na * sizeof(float));
        r->mb = malloc((size_t)out * sizeof(float));
        if (!r->amap || !r->mb)
            return -1;
        double dn = 0.0, gn = 0.0;
        for (size_t j = 0; j < na; j++) {
            double dd = c->amap[j] - (j % (size_t)(out + 1) == 0 ? 1.0 : 0.0);
            dn += dd * dd;
            r->amap[j] = (float)qs_rng_normal(&rng);
            gn += (double)r->amap[j] * r->amap[j];
        }
        for (size_t j = 0; j < na; j++)
            r->amap[j] = (float)(r->amap[j] * sqrt(dn / fmax(gn, 1e-300)) +
                                 (j % (size_t)(out + 1) == 0 ? 1.0 : 0.0));
        for (int j = 0; j < out; j++)
            r->mb[j] = (float)qs_rng_normal(&rng);
        double sc = sqrt(qs_frob2(c->mb, (size_t)out) / fmax(qs_frob2(r->mb, (size_t)out), 1e-300));
        for (int j = 0; j < out; j++)
            r->mb[j] = (float)(r->mb[j] * sc);
    }
    return 0;
}

const char *qs_ablation_verdict(const struct qs_interval *g_q, const struct qs_interval *g_f,
                                const struct qs_interval *g_r)
{
    if (g_q->hi < 0)
        return "harmful";
    if (g_q->lo <= 0 || g_q->mean <= g_r->hi)
        return "no-gain";
    if (g_f->lo > 0 && g_f->mean >= g_q->mean / 2)
        return "capacity";
    return "recovery";
}

static int deployable(const struct qs_corr *c)
{
    return c->method != QS_CORR_NONE && c->method != QS_CORR_CLOCAL;
}

/* The mean gain (per-sample loss without minus with) and its bootstrap interval. */
static struct qs_interval gain(const double *without, const double *with, double *d, int n,
                               uint64_t seed)
{
    for (int r = 0; r < n; r++)
        d[r] = without[r] - with[r];
    return bootstrap(d, n, seed);
}

/* One ablation run: the test split with every site quantized (quant) or float, the corrections
 * of the sites in cmask on; per-unit losses into loss (MLP: a row; transformer: a window). */
static int abl_run(struct qs_bench *b, int quant, uint64_t cmask, struct qs_metric *m, double *loss,
                   qs_err *e)
{
    return qs_bench_run_ex(b, QS_TEST, quant ? ~0ULL : 0, cmask, m, loss, NULL, NULL, e);
}

int qs_analysis_ablate(struct qs_bench *b, int i, struct qs_ablation *ab, qs_err *e)
{
    memset(ab, 0, sizeof *ab);
    ab->other_layer = -1;
    int n = qs_bench_split_units(b, QS_TEST, e);
    if (n < 0)
        return -1;
    if (b->lm && n < 2)
        return qs_errf(e,
                       "ablate: the held-out split has %d window(s); the bootstrap needs at "
                       "least 2",
                       n);
    struct qs_layer_state *s = &b->ls[i];
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    if (s->corr.method == QS_CORR_NONE)
        return qs_errf(e, "%s has no correction to ablate (correct %s METHOD first)", l.name,
                       l.name);
    if (s->corr.method == QS_CORR_CLOCAL)
        return qs_errf(e,
                       "%s: clocal is an analysis upper baseline that is never applied, so "
                       "there is nothing to ablate",
                       l.name);
    if (i >= 63) /* the run masks give one bit to each of the first 63 layers only */
        return qs_errf(e, "%s: ablate separates the corrections of the first 63 layers only",
                       l.name);
    if (s->corr.stale)
        return qs_errf(e,
                       "%s: its %s correction was fitted on quantized inputs that have changed "
                       "since (an earlier layer's format or correction), so the state it was "
                       "fitted in is gone; refit it (correct %s %s) to ablate it",
                       l.name, qs_corr_name(s->corr.method), l.name, qs_corr_name(s->corr.method));
    int L = qs_bench_nunits(b);
    uint64_t bit = 1ULL << i, cur = 0;
    for (int j = 0; j < i; j++)
        if (deployable(&b->ls[j].corr))
            cur |= 1ULL << j;
    uint64_t up = s->corr.fit_upstream & cur;
    ab->upstream = up;
    ab->upstream_gone = s->corr.fit_upstream & ~cur;
    double *buf = NULL;
    size_t nd;
    int rc = -1;
    if (qs_size_mul((size_t)n, 7 * sizeof(double), &nd) < 0) {
        qs_errf(e, "the ablation's buffers: size overflows");
        goto out;
    }
    if (qs_mem_check(nd, "the ablation's buffers", e) < 0)
        goto out;
    buf = qs_calloc((size_t)n * 7 + 1, sizeof(double));
    if (!buf) {
        qs_errf(e, "out of memory");
        goto out;
    }
    double *lf = buf, *lq = lf + n, *lqc = lq + n, *lfc = lqc + n, *lr = lfc + n, *lo = lr + n;
    double *d = lo + n;
    ab->layer = i;
    /* float runs: the float model alone and with this correction; quantized runs: every layer
     * quantized, the upstream corrections of the fit active, with and without this one */
    if (abl_run(b, 0, 0, &ab->f, lf, e) < 0 || abl_run(b, 1, up, &ab->q, lq, e) < 0 ||
        abl_run(b, 1, up | bit, &ab->qc, lqc, e) < 0 || abl_run(b, 0, bit, &ab->fc, lfc, e) < 0)
        goto out;
    /* controls: a random correction of equal rank and norm at this site */
    struct qs_corr saved = s->corr, rnd;
    if (qs_corr_random_like(&saved, l.out, l.in, b->seed, &rnd) < 0) {
        qs_corr_clear(&rnd);
        qs_errf(e, "out of memory");
        goto out;
    }
    s->corr = rnd;
    int r1 = abl_run(b, 1, up | bit, &ab->rand_ctrl, lr, e);
    s->corr = saved;
    qs_corr_clear(&rnd);
    if (r1 < 0)
        goto out;
    /* and this very correction at another site of the same shape, in place of that site's own
     * (which is off there: the site is not part of the upstream state) */
    for (int j = 0; j < L && j < 63; j++) {
        struct qs_unit o;
        qs_bench_unit(b, j, &o);
        if (j == i || o.out != l.out || o.in != l.in || (up >> j & 1))
            continue;
        struct qs_corr own = b->ls[j].corr;
        b->ls[j].corr = saved; /* borrowed: freed by neither */
        int r2 = abl_run(b, 1, up | 1ULL << j, &ab->other_ctrl, lo, e);
        b->ls[j].corr = own;
        if (r2 < 0)
            goto out;
        ab->have_other = 1;
        ab->other_layer = j;
        break;
    }
    ab->g_q = gain(lq, lqc, d, n, b->seed);
    ab->g_f = gain(lf, lfc, d, n, b->seed + 1);
    ab->g_r = gain(lq, lr, d, n, b->seed + 2);
    if (ab->have_other) {
        ab->g_o = gain(lq, lo, d, n, b->seed + 3);
        ab->other_significant = ab->g_o.lo > 0;
    }
    ab->verdict = qs_ablation_verdict(&ab->g_q, &ab->g_f, &ab->g_r);
    const struct qs_metric *arm[4] = {&ab->f, &ab->q, &ab->qc, &ab->fc};
    s->corr.ablated.verdict = ab->verdict;
    for (int k = 0; k < 4; k++) {
        s->corr.ablated.acc[k] = arm[k]->acc;
        s->corr.ablated.loss[k] = arm[k]->loss;
    }
    rc = 0;
out:
    free(buf);
    return rc;
}
