/* sensitivity.c - per-layer sensitivity (delta, gradient norm, empirical Fisher, Hutchinson
 * trace) and the bit / rank allocation built on it. Gradients come from qs_mlp_loss_grad, the
 * backward pass shared with the trainer; Hessian-vector products from qs_mlp_hvp beside it. */
#include "qscope/sensitivity.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/linalg.h"
#include "qscope/lm_grad.h"
#include "qscope/lmbench.h"
#include "qscope/packfile.h"
#include "qscope/spectral.h"

/* ---- gradient buffers --------------------------------------------------------------------- */

struct grads {
    int L;
    float **gw, **gb;
};

static void grads_free(struct grads *g)
{
    for (int i = 0; i < g->L; i++) {
        if (g->gw)
            free(g->gw[i]);
        if (g->gb)
            free(g->gb[i]);
    }
    free(g->gw);
    free(g->gb);
    memset(g, 0, sizeof *g);
}

static int grads_alloc(struct grads *g, const struct qs_mlp *m)
{
    g->L = m->nlayers;
    g->gw = qs_calloc((size_t)g->L, sizeof *g->gw);
    g->gb = qs_calloc((size_t)g->L, sizeof *g->gb);
    if (!g->gw || !g->gb)
        return -1;
    for (int i = 0; i < g->L; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (!(g->gw[i] = malloc((size_t)l->out * l->in * sizeof(float))) ||
            !(g->gb[i] = malloc((size_t)l->out * sizeof(float))))
            return -1;
    }
    return 0;
}

/* ---- empirical Fisher ----------------------------------------------------------------------- */

int qs_fisher_diag(const struct qs_mlp *m, const float *x, const int *y, int n, float **f,
                   qs_err *e)
{
    if (n < 1)
        return qs_errf(e, "fisher: no samples");
    int L = m->nlayers, in0 = m->layers[0].in;
    struct grads g = {0};
    float **act = qs_calloc((size_t)L, sizeof *act); /* act[i]: input of layer i, squared */
    float **dl = qs_calloc((size_t)L, sizeof *dl);   /* dl[i]: per-sample deltas, squared */
    int rc = -1;
    if (!act || !dl || grads_alloc(&g, m) < 0)
        goto oom;
    for (int i = 0; i < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        if (!(act[i] = malloc((size_t)n * l->in * sizeof(float))) ||
            !(dl[i] = malloc((size_t)n * l->out * sizeof(float))))
            goto oom;
    }
    /* Layer inputs by a batched forward pass. */
    memcpy(act[0], x, (size_t)n * in0 * sizeof(float));
    for (int i = 0; i + 1 < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        qs_linear(act[i], n, l->in, l->w, l->b, l->out, act[i + 1]);
        qs_act_apply(l->act, act[i + 1], (size_t)n * l->out);
    }
    /* Per-sample deltas: with a batch of one, the bias gradient of the mean loss is the
     * gradient of that sample's loss with respect to the pre-activation. */
    for (int r = 0; r < n; r++) {
        if (qs_mlp_loss_grad(m, x + (size_t)r * in0, y + r, 1, g.gw, g.gb, NULL) < 0)
            goto oom;
        for (int i = 0; i < L; i++)
            memcpy(dl[i] + (size_t)r * m->layers[i].out, g.gb[i],
                   (size_t)m->layers[i].out * sizeof(float));
    }
    /* sum_r (delta_r x_r^T)^2 = (delta .* delta)^T (x .* x): (out, n)(n, in). */
    for (int i = 0; i < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        size_t na = (size_t)n * l->in, nd = (size_t)n * l->out;
        for (size_t j = 0; j < na; j++)
            act[i][j] *= act[i][j];
        for (size_t j = 0; j < nd; j++)
            dl[i][j] *= dl[i][j];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l->out, l->in, n, 1.0f / (float)n,
                    dl[i], l->out, act[i], l->in, 0.0f, f[i], l->in);
    }
    rc = 0;
    goto out;
oom:
    qs_errf(e, "fisher: out of memory (%d samples)", n);
out:
    for (int i = 0; i < L; i++) {
        if (act)
            free(act[i]);
        if (dl)
            free(dl[i]);
    }
    free(act);
    free(dl);
    grads_free(&g);
    return rc;
}

/* ---- Hutchinson ----------------------------------------------------------------------------- */

int qs_hutchinson(const struct qs_mlp *m, const float *x, const int *y, int n, int layer,
                  int probes, uint64_t seed, struct qs_hutch *h, qs_err *e)
{
    memset(h, 0, sizeof *h);
    if (layer < 0 || layer >= m->nlayers)
        return qs_errf(e, "hutchinson: no layer %d", layer);
    if (probes < 2)
        return qs_errf(e, "hutchinson: need at least 2 probes for a standard error (got %d)",
                       probes);
    if (n < 1)
        return qs_errf(e, "hutchinson: no samples");
    int L = m->nlayers;
    const struct qs_layer *l0 = &m->layers[layer];
    size_t nw = (size_t)l0->out * l0->in;
    /* v on this layer only (zero elsewhere); only this layer's block of H v is wanted */
    const float **vv = qs_calloc((size_t)L, sizeof *vv);
    float **hv = qs_calloc((size_t)L, sizeof *hv);
    float *v = qs_alloc(nw, 2 * sizeof(float), "hutchinson: the probe and its H v", e);
    int rc = -1;
    if (!vv || !hv || !v) {
        if (v)
            qs_errf(e, "hutchinson: out of memory");
        goto out;
    }
    vv[layer] = v;
    hv[layer] = v + nw;
    qs_rng rng;
    qs_rng_seed(&rng, seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(layer + 1)));
    double mean = 0.0, m2 = 0.0;
    for (int t = 0; t < probes; t++) {
        for (size_t j = 0; j < nw; j++)
            v[j] = (qs_rng_u64(&rng) >> 63) ? 1.0f : -1.0f;
        if (qs_mlp_hvp(m, x, y, n, vv, hv, e) < 0) {
            qs_err_prefix(e, "hutchinson");
            goto out;
        }
        double q = 0.0; /* v^T H v */
        for (size_t j = 0; j < nw; j++)
            q += (double)v[j] * hv[layer][j];
        double d = q - mean; /* Welford */
        mean += d / (t + 1);
        m2 += d * (q - mean);
    }
    h->trace = mean;
    h->se = sqrt(m2 / (probes - 1) / probes);
    h->probes = probes;
    rc = 0;
out:
    free(vv);
    free(hv);
    free(v);
    return rc;
}

/* ---- sensitivity over the bench ------------------------------------------------------------- */

int qs_sens_delta(struct qs_bench *b, qs_unit_loss_fn loss, int nunits, struct qs_sens_layer *out,
                  double *float_loss, int *n, qs_err *e)
{
    double lf, lq;
    int nf = 0, nq;
    if (loss(b, -1, &lf, &nf, e) < 0)
        return -1;
    for (int i = 0; i < nunits; i++) {
        if (!out[i].quantized)
            continue;
        if (b->cancel)
            return qs_errf(e, "sensitivity: cancelled");
        if (loss(b, i, &lq, &nq, e) < 0)
            return -1;
        out[i].delta_loss = lq - lf;
        if (b->progress)
            b->progress(b->progress_ctx, "delta", (double)(i + 1) / nunits);
    }
    if (float_loss)
        *float_loss = lf;
    if (n)
        *n = nf;
    return 0;
}

/* The qs_unit_loss_fn of every family: the test split (a transformer's held-out windows, as
 * `eval` scores them) with only unit `only` quantized, without corrections (units > 63 follow
 * bit 63, as in qs_bench_run); only = -1: the float model. */
static int loss_only(struct qs_bench *b, int only, double *loss, int *n, qs_err *e)
{
    struct qs_metric m;
    uint64_t mask = only < 0 ? 0 : 1ULL << (only < 63 ? only : 63);
    if (qs_bench_run_ex(b, QS_TEST, mask, 0, &m, NULL, NULL, NULL, e) < 0)
        return -1;
    *loss = m.loss;
    *n = m.n;
    return 0;
}

static int lm_progress(void *u, int done, int total)
{
    struct qs_bench *b = u;
    if (b->progress)
        b->progress(b->progress_ctx, "sensitivity gradients", (double)done / total);
    return b->cancel;
}

/* grad and fisher of every site on the calibration windows w ctx .. (targets shifted by one),
 * a sample being one window (qs_lm_site_grads). */
static int lm_grads(struct qs_bench *b, unsigned methods, int cw, struct qs_sens_layer *out,
                    qs_err *e)
{
    if (qs_lm_materialize(b->lm, e) < 0) /* the backward reads F32 weights in place */
        return -1;
    const struct qs_lm *m = b->lm;
    int S = m->nsites, rc = 0;
    double *gn = qs_calloc((size_t)S, sizeof *gn);
    float **f = qs_calloc((size_t)S, sizeof *f);
    size_t *start = qs_calloc((size_t)cw, sizeof *start);
    rc = gn && f && start ? 0 : qs_errf(e, "sensitivity: out of memory");
    for (int s = 0; rc == 0 && (methods & QS_SENS_FISHER) && s < S; s++)
        if (!(f[s] = qs_alloc((size_t)m->sites[s].in * m->sites[s].out, sizeof(float),
                              "the Fisher diagonal", e)))
            rc = -1;
    for (int w = 0; rc == 0 && w < cw; w++)
        start[w] = (size_t)w * m->ctx;
    if (rc == 0)
        rc = qs_lm_site_grads(m, b->tokens->ids, start, cw, m->ctx,
                              (methods & QS_SENS_GRAD) ? gn : NULL,
                              (methods & QS_SENS_FISHER) ? f : NULL, lm_progress, b, e);
    for (int s = 0; rc == 0 && s < S; s++) {
        out[s].grad_norm = gn[s];
        if (!f[s])
            continue;
        const float *wq = NULL, *w = m->sites[s].w; /* F32: materialized above */
        if (b->ls[s].wquant && !(wq = qs_site_wq(b, s, e))) {
            rc = -1;
            break;
        }
        for (size_t j = 0; j < (size_t)m->sites[s].in * m->sites[s].out; j++) {
            out[s].fisher_trace += f[s][j];
            if (wq) {
                double d = (double)w[j] - wq[j];
                out[s].fisher_err += f[s][j] * d * d;
            }
        }
    }
    for (int s = 0; f && s < S; s++)
        free(f[s]);
    free(f);
    free(gn);
    free(start);
    return rc;
}

/* hutchinson of every site on the calibration windows (qs_lm_hutchinson: exact H v). */
static int lm_hutch(struct qs_bench *b, int probes, int cw, struct qs_sens_layer *out, qs_err *e)
{
    if (qs_lm_materialize(b->lm, e) < 0) /* the backward reads F32 weights in place */
        return -1;
    const struct qs_lm *m = b->lm;
    size_t *start = qs_calloc((size_t)cw, sizeof *start);
    if (!start)
        return qs_errf(e, "sensitivity: out of memory");
    for (int w = 0; w < cw; w++)
        start[w] = (size_t)w * m->ctx;
    int rc = 0;
    for (int s = 0; rc == 0 && s < m->nsites; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        if ((rc = qs_lm_hutchinson(m, b->tokens->ids, start, cw, m->ctx, s, probes, b->seed,
                                   &out[s].hutch_trace, &out[s].hutch_se, e)) < 0) {
            qs_err_prefix(e, st->name);
            break;
        }
        out[s].hutch_err = out[s].hutch_trace / ((double)st->out * st->in) * out[s].w_err2;
        if (b->progress)
            b->progress(b->progress_ctx, "hutchinson", (double)(s + 1) / m->nsites);
        if (b->cancel)
            rc = qs_errf(e, "sensitivity: cancelled");
    }
    free(start);
    return rc;
}

/* quantized and w_err2 of every unit, from the rules as resolved on the bench. */
static int sens_units(struct qs_bench *b, struct qs_sens_layer *out, qs_err *e)
{
    int L = qs_bench_nunits(b);
    memset(out, 0, (size_t)L * sizeof *out);
    for (int i = 0; i < L; i++) {
        const struct qs_layer_state *s = &b->ls[i];
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        out[i].quantized = s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE;
        if (s->wquant) {
            const float *wq = qs_site_wq(b, i, e), *uw = wq ? qs_bench_w(b, i, e) : NULL;
            if (!uw)
                return -1;
            double d2 = 0.0;
            for (size_t j = 0; j < (size_t)u.out * u.in; j++) {
                double d = (double)uw[j] - wq[j];
                d2 += d * d;
            }
            out[i].w_err2 = d2;
        }
    }
    return 0;
}

int qs_sensitivity(struct qs_bench *b, unsigned methods, int probes, struct qs_sens_layer *out,
                   struct qs_sens_info *info, qs_err *e)
{
    /* delta needs only forward passes (no cached activations); the gradients need the MLP's
     * caches, or the transformer's own backward over its calibration windows */
    int ncal = qs_bench_split_units(b, QS_CALIB, e);
    if (ncal < 0 || (b->model && qs_bench_update(b, e) < 0))
        return -1;
    int L = qs_bench_nunits(b);
    if (sens_units(b, out, e) < 0)
        return -1;
    double lf = 0.0;
    int nt = 0;
    if ((methods & QS_SENS_DELTA) && qs_sens_delta(b, loss_only, L, out, &lf, &nt, e) < 0)
        return -1;
    if (info) {
        info->float_loss_test = lf;
        info->n_calib = ncal * qs_bench_unit_rows(b);
        info->n_test = nt;
        if (!(methods & QS_SENS_DELTA)) {
            int nu = qs_bench_split_units(b, QS_TEST, e);
            info->n_test = nu < 0 ? 0 : nu * qs_bench_unit_rows(b);
        }
        info->probes = probes;
        info->seed = b->seed;
    }
    if (b->lm) {
        if ((methods & (QS_SENS_GRAD | QS_SENS_FISHER)) && lm_grads(b, methods, ncal, out, e) < 0)
            return -1;
        if ((methods & QS_SENS_HUTCH) && lm_hutch(b, probes, ncal, out, e) < 0)
            return -1;
        return 0;
    }
    const struct qs_mlp *m = b->model;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB];
    if (methods & QS_SENS_GRAD) {
        struct grads g = {0};
        if (grads_alloc(&g, m) < 0 ||
            qs_mlp_loss_grad(m, fc->x, fc->y, fc->n, g.gw, g.gb, NULL) < 0) {
            grads_free(&g);
            return qs_errf(e, "sensitivity: out of memory");
        }
        for (int i = 0; i < L; i++)
            out[i].grad_norm = sqrt(qs_frob2(g.gw[i], (size_t)m->layers[i].out * m->layers[i].in));
        grads_free(&g);
    }
    if (methods & QS_SENS_FISHER) {
        struct grads f = {0}; /* reuse the allocator: f.gw holds the Fisher diagonals */
        int rc = grads_alloc(&f, m) < 0 ? qs_errf(e, "sensitivity: out of memory")
                                        : qs_fisher_diag(m, fc->x, fc->y, fc->n, f.gw, e);
        for (int i = 0; rc == 0 && i < L; i++) {
            const struct qs_layer *l = &m->layers[i];
            const float *wq = NULL;
            if (b->ls[i].wquant && !(wq = qs_site_wq(b, i, e))) {
                rc = -1;
                break;
            }
            double tr = 0.0, fe = 0.0;
            for (size_t j = 0; j < (size_t)l->out * l->in; j++) {
                tr += f.gw[i][j];
                if (wq) {
                    double d = (double)l->w[j] - wq[j];
                    fe += f.gw[i][j] * d * d;
                }
            }
            out[i].fisher_trace = tr;
            out[i].fisher_err = fe;
        }
        grads_free(&f);
        if (rc < 0)
            return -1;
    }
    for (int i = 0; (methods & QS_SENS_HUTCH) && i < L; i++) {
        struct qs_hutch h;
        if (qs_hutchinson(m, fc->x, fc->y, fc->n, i, probes, b->seed, &h, e) < 0)
            return qs_err_prefix(e, m->layers[i].name);
        out[i].hutch_trace = h.trace;
        out[i].hutch_se = h.se;
        out[i].hutch_err = h.trace / ((double)m->layers[i].out * m->layers[i].in) * out[i].w_err2;
        if (b->progress)
            b->progress(b->progress_ctx, "hutchinson", (double)(i + 1) / L);
        if (b->cancel)
            return qs_errf(e, "sensitivity: cancelled");
    }
    return 0;
}

/* ---- allocation: the greedy planners -------------------------------------------------------- */

int qs_alloc_bits_greedy(int nl, int nc, const double *bits, const double *loss, const int *valid,
                         double budget, int *choice, qs_err *e)
{
#define OK(i, k) (!valid || valid[(size_t)(i)*nc + (k)])
#define BITS(i, k) bits[(size_t)(i)*nc + (k)]
#define LOSS(i, k) loss[(size_t)(i)*nc + (k)]
    double total = 0.0;
    for (int i = 0; i < nl; i++) {
        choice[i] = -1;
        for (int k = 0; k < nc; k++)
            if (OK(i, k) && (choice[i] < 0 || BITS(i, k) < BITS(i, choice[i]) ||
                             (BITS(i, k) == BITS(i, choice[i]) && LOSS(i, k) < LOSS(i, choice[i]))))
                choice[i] = k;
        if (choice[i] < 0)
            return qs_errf(e, "allocate: layer %d has no usable format", i);
        total += BITS(i, choice[i]);
    }
    if (total > budget * (1 + 1e-12))
        return qs_errf(e,
                       "allocate: the budget (%.6g bits) is below the cheapest plan (%.6g "
                       "bits)",
                       budget, total);
    int upgrades = 0;
    for (;;) {
        int bi = -1, bk = -1;
        double best = -INFINITY;
        for (int i = 0; i < nl; i++)
            for (int k = 0; k < nc; k++) {
                if (!OK(i, k) || k == choice[i])
                    continue;
                double dl = LOSS(i, choice[i]) - LOSS(i, k), db = BITS(i, k) - BITS(i, choice[i]);
                if (!(dl > 0) || total + db > budget * (1 + 1e-12))
                    continue;
                double r = db <= 0 ? INFINITY : dl / db;
                if (r > best || (r == best && i == bi && BITS(i, k) < BITS(bi, bk))) {
                    best = r;
                    bi = i;
                    bk = k;
                }
            }
        if (bi < 0)
            break;
        total += BITS(bi, bk) - BITS(bi, choice[bi]);
        choice[bi] = bk;
        upgrades++;
    }
    /* The ratio rule can strand budget (a cheap upgrade taken early blocks a dear one later):
     * refine by single changes and exchanges of two layers' choices while the summed loss
     * drops. j == nl stands for "layer i alone". */
    for (;;) {
        int bi = -1, bk = -1, bj = -1, bl = -1;
        double best = 0.0, bestdb = 0.0;
        for (int i = 0; i < nl; i++)
            for (int k = 0; k < nc; k++) {
                if (!OK(i, k) || k == choice[i])
                    continue;
                for (int j = i + 1; j <= nl; j++)
                    for (int l = 0; l < (j < nl ? nc : 1); l++) {
                        if (j < nl && (!OK(j, l) || l == choice[j]))
                            continue;
                        double db = BITS(i, k) - BITS(i, choice[i]);
                        double dl = LOSS(i, choice[i]) - LOSS(i, k);
                        if (j < nl) {
                            db += BITS(j, l) - BITS(j, choice[j]);
                            dl += LOSS(j, choice[j]) - LOSS(j, l);
                        }
                        if (total + db > budget * (1 + 1e-12) || !(dl > 1e-12))
                            continue;
                        if (dl > best || (dl == best && db < bestdb)) {
                            best = dl;
                            bestdb = db;
                            bi = i, bk = k, bj = j, bl = l;
                        }
                    }
            }
        if (bi < 0)
            break;
        total += bestdb;
        choice[bi] = bk;
        if (bj < nl)
            choice[bj] = bl;
        upgrades++;
    }
    return upgrades;
#undef OK
#undef BITS
#undef LOSS
}

int qs_alloc_rank_greedy(int nl, const double *const *gain, const int *maxr, int total, int *rank)
{
    int given = 0;
    for (int i = 0; i < nl; i++)
        rank[i] = 0;
    while (given < total) {
        int bi = -1;
        double best = 0.0;
        for (int i = 0; i < nl; i++)
            if (rank[i] < maxr[i] && gain[i][rank[i]] > best) {
                best = gain[i][rank[i]];
                bi = i;
            }
        if (bi < 0)
            break;
        rank[bi]++;
        given++;
    }
    return given;
}

/* ---- allocate bits= over the bench --------------------------------------------------------- */

void qs_bit_plan_free(struct qs_bit_plan *p)
{
    if (!p)
        return;
    free(p->choice);
    free(p->bits);
    free(p->dloss);
    free(p->uniform_bpw);
    free(p->uniform_test);
    free(p->keeps);
    memset(p, 0, sizeof *p);
}

/* 1 when candidate c quantizes layer i's weights exactly as the bench does now, so that applying
 * the plan keeps the layer's correction (a quant line that resolves to the same format and
 * options leaves it in place, and the forward pass applies it, stale or not). clocal is
 * analysis only and never counted. */
static int keeps_corr(const struct qs_bench *b, int i, const struct qs_wcand *c)
{
    const struct qs_layer_state *s = &b->ls[i];
    if (c->corr != QS_CORR_NONE || !s->wquant || s->corr.method == QS_CORR_NONE ||
        s->corr.method == QS_CORR_CLOCAL || strcmp(s->wfmt.name, c->fmt.name))
        return 0;
    char ma[200], mc[200]; /* the same method too (its statistics as well) */
    qs_rule_method_format(&s->wm, ma, sizeof ma);
    qs_rule_method_format(&c->meth, mc, sizeof mc);
    if (strcmp(ma, mc) || (qs_rule_method_custom(&c->meth) && s->wm.seed != c->meth.seed))
        return 0;
    char a[200], o[200];
    qs_qopts_format(&s->wfmt, &s->wopt, a, sizeof a);
    qs_qopts_format(&c->fmt, &c->opt, o, sizeof o);
    return !strcmp(a, o);
}

/* Quantizes site i of the bench's float model with candidate c into wq: (out, in) and bq: (out)
 * (the site's bias, zero where it has none, changed only by a kept bias or linear correction),
 * the weight and bias the forward pass would use: Q(W), plus the candidate's own low-rank
 * correction fitted as `correct` fits it (qs_corr_fit_lowrank on the float calibration inputs),
 * or the site's current correction when the candidate keeps it (keeps_corr; a linear map is
 * folded in as A W, A b + mb). *bits: packed weight bits plus the correction's bits. */
static int quantize_cand(struct qs_bench *b, int i, const struct qs_wcand *c, float *wq, float *bq,
                         double *bits, qs_err *e)
{
    struct qs_unit lu, *l = &lu;
    qs_bench_unit(b, i, &lu);
    const struct qs_corr *kc = &b->ls[i].corr;
    size_t n = (size_t)l->out * l->in;
    struct qs_packed p;
    memset(&p, 0, sizeof p);
    if (qs_rule_method_custom(&c->meth)) { /* GPTQ, AWQ, ...: as a rule computes them */
        if (qs_bench_method_weight(b, i, &c->fmt, &c->opt, &c->meth, wq, bits, e) < 0)
            return -1;
    } else {
        const float *lw = qs_bench_w(b, i, e);
        if (!lw || qs_quant_pack(&c->fmt, &c->opt, lw, l->out, l->in, &p, e) < 0 ||
            qs_quant_unpack(&p, wq, e) < 0) {
            qs_packed_free(&p);
            return -1;
        }
        *bits = 8.0 * (double)qs_packed_bytes(&p);
        qs_packed_free(&p);
    }
    if (l->b)
        memcpy(bq, l->b, (size_t)l->out * sizeof *bq);
    else
        memset(bq, 0, (size_t)l->out * sizeof *bq);
    if (c->corr != QS_CORR_NONE) {
        const float *x;
        int nx;
        if (qs_bench_inputs(b, QS_CALIB, 0, i, &x, &nx, e) < 0)
            return -1;
        struct qs_corr cr;
        const float *lw = qs_bench_w(b, i, e);
        if (!lw)
            return -1;
        float *ew = malloc(n * sizeof *ew);
        if (!ew)
            return qs_errf(e, "out of memory");
        for (size_t j = 0; j < n; j++)
            ew[j] = lw[j] - wq[j];
        int rc = qs_corr_fit_lowrank(c->corr, ew, l->out, l->in, x, nx, c->rank, c->prec, &cr, e);
        free(ew);
        if (rc < 0)
            return -1;
        for (size_t j = 0; j < n; j++)
            wq[j] = wq[j] + cr.c[j]; /* as the bench's forward pass adds it */
        *bits += cr.bits;
        qs_corr_clear(&cr);
    } else if (keeps_corr(b, i, c)) {
        if (kc->c)
            for (size_t j = 0; j < n; j++)
                wq[j] = wq[j] + kc->c[j];
        if (kc->db)
            for (int j = 0; j < l->out; j++)
                bq[j] = bq[j] + kc->db[j];
        if (kc->amap && qs_packfile_fold_map(l->out, l->in, kc->amap, kc->mb, wq, bq, e) < 0)
            return -1;
        *bits += kc->bits;
    }
    return 0;
}

/* Every (site, candidate) quantized once: weight (out, in) then bias (out), NULL where the
 * candidate cannot quantize the site. Held for the whole search (the greedy deltas, the joint
 * refinement, the plan and the uniform plans all score these weights). */
struct cand_set {
    int L, nc;
    float **wq;              /* (L, nc) */
    const float **w, **bias; /* (L) the configuration being scored */
};

static void cand_set_free(struct cand_set *cs)
{
    for (int k = 0; cs->wq && k < cs->L * cs->nc; k++)
        free(cs->wq[k]);
    free(cs->wq);
    free(cs->w);
    free(cs->bias);
}

/* Sets site i to candidate k (k < 0: float). */
static void cand_pick(struct qs_bench *b, struct cand_set *cs, int i, int k)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    const float *q = k < 0 ? NULL : cs->wq[(size_t)i * cs->nc + k];
    cs->w[i] = q;
    cs->bias[i] = q ? q + (size_t)u.out * u.in : NULL;
}

static int cand_loss(struct qs_bench *b, struct cand_set *cs, enum qs_split_id s,
                     struct qs_metric *m, qs_err *e)
{
    return qs_bench_run_weights(b, s, cs->w, cs->bias, m, e);
}

/* Sets every site to candidate pick[i]. */
static void set_config(struct qs_bench *b, struct cand_set *cs, const int *pick)
{
    for (int i = 0; i < cs->L; i++)
        cand_pick(b, cs, i, pick[i]);
}

/* The summed per-site deltas ignore how sites' errors interact. Starting from the greedy plan,
 * take the single change or two-site exchange that lowers the measured joint calibration loss
 * most within the budget (ties: fewer bits), until none does (at most 100 steps). */
static int refine_joint(struct qs_bench *b, struct cand_set *cs, struct qs_bit_plan *p,
                        const int *valid, double budget, qs_err *e)
{
    int L = cs->L, nc = cs->nc, rc = -1;
    int *pick = malloc((size_t)L * sizeof *pick);
    if (!pick)
        return qs_errf(e, "out of memory");
    double total = 0.0;
    for (int i = 0; i < L; i++)
        total += p->bits[(size_t)i * nc + p->choice[i]];
#define JOINT(out_)                                                                                \
    do {                                                                                           \
        struct qs_metric m_;                                                                       \
        set_config(b, cs, pick);                                                                   \
        if (cand_loss(b, cs, QS_CALIB, &m_, e) < 0)                                                \
            goto out;                                                                              \
        (out_) = m_.loss;                                                                          \
    } while (0)
    memcpy(pick, p->choice, (size_t)L * sizeof *pick);
    double cur;
    JOINT(cur);
    for (int step = 0; step < 100; step++) {
        double best = cur, bestdb = 0.0;
        int bi = -1, bk = -1, bj = -1, bl = -1;
        for (int i = 0; i < L; i++)
            for (int k = 0; k < nc; k++) {
                if (!valid[(size_t)i * nc + k] || k == p->choice[i])
                    continue;
                /* j == L: change site i alone */
                for (int j = p->pairs ? i + 1 : L; j <= L; j++)
                    for (int l = 0; l < (j < L ? nc : 1); l++) {
                        if (j < L && (!valid[(size_t)j * nc + l] || l == p->choice[j]))
                            continue;
                        double db =
                            p->bits[(size_t)i * nc + k] - p->bits[(size_t)i * nc + p->choice[i]];
                        if (j < L)
                            db += p->bits[(size_t)j * nc + l] -
                                  p->bits[(size_t)j * nc + p->choice[j]];
                        if (total + db > budget * (1 + 1e-12))
                            continue;
                        memcpy(pick, p->choice, (size_t)L * sizeof *pick);
                        pick[i] = k;
                        if (j < L)
                            pick[j] = l;
                        double v;
                        JOINT(v);
                        if (v < best - 1e-9 || (v <= best + 1e-12 && bi >= 0 && db < bestdb)) {
                            best = v;
                            bestdb = db;
                            bi = i, bk = k, bj = j, bl = l;
                        }
                    }
            }
        if (bi < 0)
            break;
        total += bestdb;
        p->choice[bi] = bk;
        if (bj < L)
            p->choice[bj] = bl;
        cur = best;
        p->refined++;
    }
#undef JOINT
    p->joint_loss_calib = cur;
    rc = 0;
out:
    free(pick);
    return rc;
}

int qs_allocate_bits(struct qs_bench *b, const struct qs_wcand *cand, int nc, double budget_bpw,
                     struct qs_bit_plan *p, qs_err *e)
{
    memset(p, 0, sizeof *p);
    if (nc < 1)
        return qs_errf(e, "allocate: no candidate formats");
    if (b->lm ? qs_bench_lm_ready(b, e) < 0 : qs_bench_update(b, e) < 0)
        return -1;
    int L = qs_bench_nunits(b);
    double nw = 0.0;
    for (int i = 0; i < L; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        nw += (double)u.out * u.in;
    }
    p->nl = L;
    p->nc = nc;
    p->choice = qs_calloc((size_t)L, sizeof *p->choice);
    p->bits = qs_calloc((size_t)L * nc, sizeof *p->bits);
    p->dloss = qs_calloc((size_t)L * nc, sizeof *p->dloss);
    p->uniform_bpw = qs_calloc((size_t)nc, sizeof *p->uniform_bpw);
    p->uniform_test = qs_calloc((size_t)nc, sizeof *p->uniform_test);
    p->keeps = qs_calloc((size_t)L * nc, sizeof *p->keeps);
    struct cand_set cs = {.L = L, .nc = nc};
    cs.wq = qs_calloc((size_t)L * nc, sizeof *cs.wq);
    cs.w = qs_calloc((size_t)L, sizeof *cs.w);
    cs.bias = qs_calloc((size_t)L, sizeof *cs.bias);
    int *valid = qs_calloc((size_t)L * nc, sizeof *valid),
        *pick = qs_calloc((size_t)L, sizeof *pick);
    int rc = -1;
    if (!p->choice || !p->bits || !p->dloss || !p->uniform_bpw || !p->uniform_test || !p->keeps ||
        !cs.wq || !cs.w || !cs.bias || !valid || !pick) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (int i = 0; i < L; i++)
        if (b->ls[i].corr.method != QS_CORR_CLOCAL)
            p->bench_corr_bits += b->ls[i].corr.bits;
    /* every candidate of every site, quantized once (the search holds them all) */
    size_t hold = 0;
    for (int i = 0; i < L; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        hold += ((size_t)u.out * u.in + (size_t)u.out) * sizeof(float) * (size_t)nc;
    }
    if (qs_mem_check(hold, "allocate bits=: every site's candidate weights", e) < 0)
        goto out;
    struct qs_metric mf;
    if (cand_loss(b, &cs, QS_CALIB, &mf, e) < 0 ||
        cand_loss(b, &cs, QS_TEST, &p->float_test, e) < 0)
        goto out;
    p->float_loss_calib = mf.loss;
    for (int i = 0; i < L; i++) {
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        size_t nwl = (size_t)l->out * l->in;
        int any = 0;
        for (int k = 0; k < nc; k++) {
            p->keeps[(size_t)i * nc + k] = keeps_corr(b, i, &cand[k]);
            qs_err e2;
            size_t ix = (size_t)i * nc + k;
            p->bits[ix] = -1.0;
            if (!(cs.wq[ix] = malloc((nwl + (size_t)l->out) * sizeof(float)))) {
                qs_errf(e, "out of memory");
                goto out;
            }
            /* A candidate that cannot quantize this site (a group size that does not divide
             * its rows, ...) is skipped for this site only. */
            if (quantize_cand(b, i, &cand[k], cs.wq[ix], cs.wq[ix] + nwl, &p->bits[ix], &e2) < 0) {
                p->bits[ix] = -1.0;
                free(cs.wq[ix]);
                cs.wq[ix] = NULL;
                continue;
            }
            struct qs_metric mq;
            cand_pick(b, &cs, i, k);
            int r = cand_loss(b, &cs, QS_CALIB, &mq, e);
            cand_pick(b, &cs, i, -1);
            if (r < 0)
                goto out;
            p->dloss[ix] = mq.loss - mf.loss;
            valid[ix] = 1;
            any = 1;
        }
        if (!any) {
            qs_errf(e, "allocate: no candidate format can quantize layer %s (%dx%d)", l->name,
                    l->out, l->in);
            goto out;
        }
    }
    double cheapest = 0.0;
    for (int i = 0; i < L; i++) {
        double lo = INFINITY;
        for (int k = 0; k < nc; k++)
            if (valid[(size_t)i * nc + k] && p->bits[(size_t)i * nc + k] < lo)
                lo = p->bits[(size_t)i * nc + k];
        cheapest += lo;
    }
    if (cheapest > budget_bpw * nw * (1 + 1e-12)) {
        qs_errf(e,
                "allocate: bits=%.6g is below the cheapest plan, %.4f bits/weight (every layer "
                "at its cheapest format%s)",
                budget_bpw, cheapest / nw,
                p->bench_corr_bits > 0 ? ", corrections kept with their format counted" : "");
        goto out;
    }
    int up = qs_alloc_bits_greedy(L, nc, p->bits, p->dloss, valid, budget_bpw * nw, p->choice, e);
    if (up < 0)
        goto out;
    p->upgrades = up;
    {
        double rows = 0.0;
        qs_err e2;
        int units = qs_bench_split_units(b, QS_CALIB, &e2);
        rows = units > 0 ? (double)units * qs_bench_unit_rows(b) : 0.0;
        p->pairs = (double)L * nc * L * nc * nw * rows <= QS_ALLOC_PAIRS_MAX;
    }
    if (refine_joint(b, &cs, p, valid, budget_bpw * nw, e) < 0)
        goto out;
    double tb = 0.0;
    for (int i = 0; i < L; i++)
        tb += p->bits[(size_t)i * nc + p->choice[i]];
    set_config(b, &cs, p->choice);
    if (cand_loss(b, &cs, QS_TEST, &p->plan_test, e) < 0)
        goto out;
    p->bits_per_weight = tb / nw;
    for (int k = 0; k < nc; k++) {
        int ok = 1;
        tb = 0.0;
        for (int i = 0; i < L; i++) {
            ok &= valid[(size_t)i * nc + k];
            pick[i] = k;
            tb += p->bits[(size_t)i * nc + k];
        }
        if (!ok) {
            p->uniform_bpw[k] = NAN;
            p->uniform_test[k].acc = p->uniform_test[k].loss = NAN;
            continue;
        }
        set_config(b, &cs, pick);
        if (cand_loss(b, &cs, QS_TEST, &p->uniform_test[k], e) < 0)
            goto out;
        p->uniform_bpw[k] = tb / nw;
    }
    rc = 0;
out:
    if (rc < 0)
        qs_bit_plan_free(p);
    cand_set_free(&cs);
    free(valid);
    free(pick);
    return rc;
}

/* ---- allocate rank= over the bench --------------------------------------------------------- */

void qs_rank_plan_free(struct qs_rank_plan *p)
{
    if (!p)
        return;
    free(p->rank);
    free(p->maxr);
    free(p->rel);
    free(p->pred);
    memset(p, 0, sizeof *p);
}

/* out + in of unit i: the parameters one rank of its low-rank correction adds. */
static long rank_params(const struct qs_bench *b, int i)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    return (long)u.out + u.in;
}

int qs_allocate_rank(struct qs_bench *b, int total, struct qs_rank_plan *p, qs_err *e)
{
    memset(p, 0, sizeof *p);
    if (total < 1)
        return qs_errf(e, "allocate: rank=%d: the total rank must be at least 1", total);
    if (qs_bench_update(b, e) < 0)
        return -1;
    int L = qs_bench_nunits(b), any = 0, rc = -1;
    p->nl = L;
    p->rank = qs_calloc((size_t)L, sizeof *p->rank);
    p->maxr = qs_calloc((size_t)L, sizeof *p->maxr);
    p->rel = qs_calloc((size_t)L, sizeof *p->rel);
    p->pred = qs_calloc((size_t)L, sizeof *p->pred);
    double **gain = qs_calloc((size_t)L, sizeof *gain), **left = qs_calloc((size_t)L, sizeof *left);
    if (!p->rank || !p->maxr || !p->rel || !p->pred || !gain || !left) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (int i = 0; i < L; i++) {
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        if (!b->ls[i].wquant)
            continue;
        struct qs_spectrum sp;
        if (qs_analysis_spectrum(b, i, QS_SPEC_WEIGHT, QS_SCALE_COV, 0, &sp, e) < 0)
            goto out;
        int k = sp.nsv;
        left[i] = malloc((size_t)(k + 1) * sizeof(double));
        gain[i] = malloc((size_t)(k > 0 ? k : 1) * sizeof(double));
        if (!left[i] || !gain[i]) {
            qs_spectrum_free(&sp);
            qs_errf(e, "out of memory");
            goto out;
        }
        qs_energy_left(sp.sv, k, sp.st.fro2, k, left[i]);
        double ref = 0.0;
        for (int j = 0; j < k; j++)
            ref += sp.ref_sv[j] * sp.ref_sv[j];
        p->rel[i] = ref > 0 ? sp.st.fro2 / ref : 0.0;
        for (int j = 0; j < k; j++)
            gain[i][j] = p->rel[i] * (left[i][j] - left[i][j + 1]) / (double)(l->out + l->in);
        p->maxr[i] = k;
        any = 1;
        qs_spectrum_free(&sp);
    }
    if (!any) {
        qs_errf(e, "allocate rank: no layer has quantized weights (quant PATTERN FORMAT first)");
        goto out;
    }
    p->given = qs_alloc_rank_greedy(L, (const double *const *)gain, p->maxr, total, p->rank);
    for (int i = 0; i < L; i++) {
        p->pred[i] = left[i] ? 1.0 - left[i][p->rank[i]] : 0.0;
        p->params += (long)p->rank[i] * rank_params(b, i);
    }
    rc = 0;
out:
    for (int i = 0; gain && left && i < L; i++) {
        free(gain[i]);
        free(left[i]);
    }
    free(gain);
    free(left);
    if (rc < 0)
        qs_rank_plan_free(p);
    return rc;
}
