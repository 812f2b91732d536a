/* test_sensitivity.c - the empirical Fisher (GEMM form vs a per-sample loop over the shared
 * backward vs finite differences of a double-precision reference), Hutchinson's trace estimate
 * vs exact Hessian traces (closed form for softmax regression; second differences of a
 * double-precision tiny MLP), the allocation planners vs brute force, QAT vs the trainer, the
 * bench-level allocate plumbing, and the Q1 study's verdict and statistics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/bench.h"
#include "qscope/dataset.h"
#include "qscope/mlp.h"
#include "qscope/sensitivity.h"
#include "qscope/study.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static struct qs_mlp *tiny_mlp(const int *sizes, int ns, enum qs_act act, uint64_t seed)
{
    qs_rng r;
    qs_rng_seed(&r, seed);
    struct qs_mlp *m = NULL;
    qs_err e;
    if (qs_mlp_new(sizes, ns, act, &r, &m, &e) < 0)
        return NULL;
    /* non-zero biases, so that every code path is exercised */
    for (int i = 0; i < m->nlayers; i++)
        for (int j = 0; j < m->layers[i].out; j++)
            m->layers[i].b[j] = (float)(0.2 * qs_rng_normal(&r));
    return m;
}

static void random_data(int n, int d, int c, uint64_t seed, float *x, int *y)
{
    qs_rng r;
    qs_rng_seed(&r, seed);
    for (int i = 0; i < n * d; i++)
        x[i] = (float)qs_rng_normal(&r);
    for (int i = 0; i < n; i++)
        y[i] = (int)qs_rng_below(&r, (uint64_t)c);
}

/* Double-precision reference: loss of sample r (or the mean over all when r < 0) of an MLP whose
 * weights are read from m, except that layer `li` weight index `wj` is offset by h. */
static double ref_loss(const struct qs_mlp *m, const float *x, const int *y, int n, int r, int li,
                       int wj, double h)
{
    double total = 0.0;
    int r0 = r < 0 ? 0 : r, r1 = r < 0 ? n : r + 1;
    double a[64], b2[64];
    for (int s = r0; s < r1; s++) {
        int w = m->layers[0].in;
        for (int k = 0; k < w; k++)
            a[k] = x[(size_t)s * w + k];
        for (int i = 0; i < m->nlayers; i++) {
            const struct qs_layer *l = &m->layers[i];
            for (int o = 0; o < l->out; o++) {
                double acc = l->b[o];
                for (int k = 0; k < l->in; k++) {
                    double wv = l->w[(size_t)o * l->in + k];
                    if (i == li && o * l->in + k == wj)
                        wv += h;
                    acc += wv * a[k];
                }
                if (l->act == QS_ACT_TANH)
                    acc = tanh(acc);
                else if (l->act == QS_ACT_RELU)
                    acc = acc > 0 ? acc : 0;
                b2[o] = acc;
            }
            for (int o = 0; o < l->out; o++)
                a[o] = b2[o];
        }
        int c = m->layers[m->nlayers - 1].out;
        double mx = a[0];
        for (int k = 1; k < c; k++)
            mx = a[k] > mx ? a[k] : mx;
        double se = 0.0;
        for (int k = 0; k < c; k++)
            se += exp(a[k] - mx);
        total += mx + log(se) - a[y[s]];
    }
    return total / (r1 - r0);
}

/* ---- Fisher ------------------------------------------------------------------------------ */

static void test_fisher_gemm_loop_fd(void)
{
    const int sizes[] = {3, 5, 4, 3}, n = 9;
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_TANH, 11);
    CHECK(m != NULL);
    if (!m)
        return;
    float x[9 * 3];
    int y[9];
    random_data(n, 3, 3, 5, x, y);
    int L = m->nlayers;
    float *f[3], *loop[3], *gw[3], *gb[3];
    for (int i = 0; i < L; i++) {
        size_t nw = (size_t)m->layers[i].out * m->layers[i].in;
        f[i] = calloc(nw, sizeof(float));
        loop[i] = calloc(nw, sizeof(float));
        gw[i] = calloc(nw, sizeof(float));
        gb[i] = calloc((size_t)m->layers[i].out, sizeof(float));
    }
    qs_err e;
    CHECK(qs_fisher_diag(m, x, y, n, f, &e) == 0);
    /* per-sample loop: g_r from the shared backward with a batch of one */
    for (int r = 0; r < n; r++) {
        CHECK(qs_mlp_loss_grad(m, x + r * 3, y + r, 1, gw, gb, NULL) >= 0);
        for (int i = 0; i < L; i++)
            for (int j = 0; j < m->layers[i].out * m->layers[i].in; j++)
                loop[i][j] += gw[i][j] * gw[i][j] / n;
    }
    /* finite differences of each sample's loss in double */
    double maxf = 0.0, err_loop = 0.0, err_fd = 0.0;
    const double h = 1e-5;
    for (int i = 0; i < L; i++)
        for (int j = 0; j < m->layers[i].out * m->layers[i].in; j++) {
            double fd = 0.0;
            for (int r = 0; r < n; r++) {
                double g = (ref_loss(m, x, y, n, r, i, j, h) - ref_loss(m, x, y, n, r, i, j, -h)) /
                           (2 * h);
                fd += g * g / n;
            }
            maxf = fmax(maxf, fabs(fd));
            err_loop = fmax(err_loop, fabs(f[i][j] - loop[i][j]));
            err_fd = fmax(err_fd, fabs(f[i][j] - fd));
        }
    CHECK(maxf > 1e-3); /* not vacuous */
    CHECK(err_loop <= 1e-6 * maxf);
    CHECK(err_fd <= 1e-4 * maxf);
    if (err_fd > 1e-4 * maxf)
        fprintf(stderr, "  fisher vs fd: max err %g of max %g\n", err_fd, maxf);
    for (int i = 0; i < L; i++) {
        free(f[i]);
        free(loop[i]);
        free(gw[i]);
        free(gb[i]);
    }
    qs_mlp_free(m);
}

/* ---- Hutchinson ---------------------------------------------------------------------------- */

/* Softmax regression (one layer, no activation): H = (1/n) sum_r (diag p_r - p_r p_r^T) (x)
 * x_r x_r^T, so tr H = (1/n) sum_r ||x_r||^2 sum_c p_rc (1 - p_rc). */
static void test_hutchinson_softmax_exact(void)
{
    const int sizes[] = {4, 3}, n = 40;
    struct qs_mlp *m = tiny_mlp(sizes, 2, QS_ACT_NONE, 3);
    CHECK(m != NULL);
    if (!m)
        return;
    float x[40 * 4], logits[40 * 3];
    int y[40];
    random_data(n, 4, 3, 8, x, y);
    qs_err e;
    CHECK(qs_mlp_forward(m, x, n, logits, &e) == 0);
    double exact = 0.0;
    for (int r = 0; r < n; r++) {
        double mx = fmax(fmax(logits[r * 3], logits[r * 3 + 1]), logits[r * 3 + 2]), s = 0.0;
        double p[3], xx = 0.0;
        for (int c = 0; c < 3; c++)
            s += p[c] = exp(logits[r * 3 + c] - mx);
        for (int k = 0; k < 4; k++)
            xx += (double)x[r * 4 + k] * x[r * 4 + k];
        for (int c = 0; c < 3; c++)
            exact += xx * (p[c] / s) * (1 - p[c] / s) / n;
    }
    struct qs_hutch h1, h2;
    CHECK(qs_hutchinson(m, x, y, n, 0, 4000, 1, &h1, &e) == 0);
    CHECK(qs_hutchinson(m, x, y, n, 0, 1000, 2, &h2, &e) == 0);
    CHECK(h1.se > 0);
    CHECK(fabs(h1.trace - exact) <= 3 * h1.se + 1e-4 * exact);
    CHECK(fabs(h2.trace - exact) <= 3 * h2.se + 1e-4 * exact);
    /* the standard error shrinks as 1/sqrt(probes) */
    CHECK_REL(h2.se / h1.se, 2.0, 0.25);
    /* far fewer probes: still within its own (larger) standard error */
    struct qs_hutch h3;
    CHECK(qs_hutchinson(m, x, y, n, 0, 30, 3, &h3, &e) == 0);
    CHECK(fabs(h3.trace - exact) <= 3 * h3.se + 1e-4 * exact);
    CHECK(h3.se > h1.se);
    /* bad arguments */
    CHECK(qs_hutchinson(m, x, y, n, 0, 1, 1, &h3, &e) < 0);
    CHECK(strstr(e.msg, "probes") != NULL);
    CHECK(qs_hutchinson(m, x, y, n, 5, 10, 1, &h3, &e) < 0);
    qs_mlp_free(m);
}

/* A two-hidden-layer tanh MLP: the exact trace of each layer's Hessian block from second
 * differences of the double-precision loss, one weight at a time. */
static void test_hutchinson_mlp_exact(void)
{
    const int sizes[] = {3, 5, 4, 3}, n = 25;
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_TANH, 21);
    CHECK(m != NULL);
    if (!m)
        return;
    float x[25 * 3];
    int y[25];
    random_data(n, 3, 3, 9, x, y);
    qs_err e;
    const double hh = 1e-4;
    double l0 = ref_loss(m, x, y, n, -1, -1, -1, 0.0);
    for (int li = 0; li < m->nlayers; li++) {
        double exact = 0.0;
        for (int j = 0; j < m->layers[li].out * m->layers[li].in; j++)
            exact += (ref_loss(m, x, y, n, -1, li, j, hh) - 2 * l0 +
                      ref_loss(m, x, y, n, -1, li, j, -hh)) /
                     (hh * hh);
        struct qs_hutch h;
        CHECK(qs_hutchinson(m, x, y, n, li, 3000, 7, &h, &e) == 0);
        CHECK(fabs(exact) > 1e-3);
        CHECK(fabs(h.trace - exact) <= 3 * h.se + 2e-3 * fabs(exact));
        if (!(fabs(h.trace - exact) <= 3 * h.se + 2e-3 * fabs(exact)))
            fprintf(stderr, "  layer %d: hutchinson %.6g +- %.3g, exact %.6g\n", li, h.trace, h.se,
                    exact);
    }
    qs_mlp_free(m);
}

/* ---- allocation planners ------------------------------------------------------------------ */

static double plan_loss(int nl, int nc, const double *loss, const int *ch)
{
    double s = 0.0;
    for (int i = 0; i < nl; i++)
        s += loss[i * nc + ch[i]];
    return s;
}

static double plan_bits(int nl, int nc, const double *bits, const int *ch)
{
    double s = 0.0;
    for (int i = 0; i < nl; i++)
        s += bits[i * nc + ch[i]];
    return s;
}

/* Random instances: loss falls with bits (with noise, so not always convex). */
static void make_instance(qs_rng *r, int nl, int nc, double *bits, double *loss)
{
    for (int i = 0; i < nl; i++) {
        double size = 100 + (double)qs_rng_below(r, 2000), sens = 0.1 + qs_rng_uniform(r);
        for (int k = 0; k < nc; k++) {
            double b = 2 + k + (qs_rng_below(r, 2) ? 0.25 : 0.0);
            bits[i * nc + k] = b * size;
            loss[i * nc + k] = sens * pow(2.0, -1.5 * b) * (1 + 0.3 * qs_rng_uniform(r));
        }
    }
}

static void test_alloc_bits_two_layers_optimal(void)
{
    qs_rng r;
    qs_rng_seed(&r, 42);
    enum { NL = 2, NC = 5 };
    double bits[NL * NC], loss[NL * NC];
    int ch[NL];
    qs_err e;
    int checked = 0;
    for (int t = 0; t < 300; t++) {
        make_instance(&r, NL, NC, bits, loss);
        double lo = bits[0] + bits[NC], hi = bits[NC - 1] + bits[2 * NC - 1];
        double budget = lo + qs_rng_uniform(&r) * (hi - lo);
        CHECK(qs_alloc_bits_greedy(NL, NC, bits, loss, NULL, budget, ch, &e) >= 0);
        CHECK(plan_bits(NL, NC, bits, ch) <= budget * (1 + 1e-12));
        double best = INFINITY;
        for (int a = 0; a < NC; a++)
            for (int b = 0; b < NC; b++)
                if (bits[a] + bits[NC + b] <= budget)
                    best = fmin(best, loss[a] + loss[NC + b]);
        CHECK_NEAR(plan_loss(NL, NC, loss, ch), best, 1e-12);
        checked++;
    }
    CHECK(checked == 300);
    /* below the cheapest plan */
    CHECK(qs_alloc_bits_greedy(NL, NC, bits, loss, NULL, 1.0, ch, &e) < 0);
    CHECK(strstr(e.msg, "cheapest") != NULL);
}

/* Three layers: feasible, no one- or two-layer change within the budget lowers the summed
 * loss, and an invalid candidate is never chosen. */
static void test_alloc_bits_local_optimum(void)
{
    qs_rng r;
    qs_rng_seed(&r, 7);
    enum { NL = 3, NC = 4 };
    double bits[NL * NC], loss[NL * NC];
    int ch[NL], valid[NL * NC];
    qs_err e;
    for (int t = 0; t < 200; t++) {
        make_instance(&r, NL, NC, bits, loss);
        for (int k = 0; k < NL * NC; k++)
            valid[k] = 1;
        valid[NC + 2] = 0; /* layer 1 cannot take candidate 2 */
        double lo = 0, hi = 0;
        for (int i = 0; i < NL; i++) {
            lo += bits[i * NC];
            hi += bits[i * NC + NC - 1];
        }
        double budget = lo + qs_rng_uniform(&r) * (hi - lo);
        CHECK(qs_alloc_bits_greedy(NL, NC, bits, loss, valid, budget, ch, &e) >= 0);
        CHECK(ch[1] != 2);
        double tb = plan_bits(NL, NC, bits, ch), tl = plan_loss(NL, NC, loss, ch);
        CHECK(tb <= budget * (1 + 1e-12));
        for (int i = 0; i < NL; i++)
            for (int j = i; j < NL; j++)
                for (int k = 0; k < NC; k++)
                    for (int l = 0; l < NC; l++) {
                        int c2[NL];
                        memcpy(c2, ch, sizeof c2);
                        c2[i] = k;
                        c2[j] = l;
                        if (i == j && k != l)
                            continue;
                        if (!valid[1 * NC + 2] && c2[1] == 2)
                            continue;
                        if (plan_bits(NL, NC, bits, c2) <= budget)
                            CHECK(plan_loss(NL, NC, loss, c2) >= tl - 1e-12);
                    }
    }
}

static void test_alloc_rank_concave_optimal(void)
{
    qs_rng r;
    qs_rng_seed(&r, 5);
    enum { NL = 3, MR = 4 };
    double g[NL][MR];
    const double *gp[NL] = {g[0], g[1], g[2]};
    int maxr[NL] = {MR, 2, MR}, rank[NL];
    for (int t = 0; t < 100; t++) {
        for (int i = 0; i < NL; i++) { /* descending positive gains: a concave benefit */
            double v = qs_rng_uniform(&r);
            for (int k = 0; k < MR; k++) {
                g[i][k] = v;
                v *= qs_rng_uniform(&r);
            }
        }
        for (int total = 0; total <= 11; total++) {
            int given = qs_alloc_rank_greedy(NL, gp, maxr, total, rank);
            CHECK(given == (total < 10 ? total : 10));
            double got = 0.0, best = -1.0;
            for (int i = 0; i < NL; i++) {
                CHECK(rank[i] <= maxr[i]);
                for (int k = 0; k < rank[i]; k++)
                    got += g[i][k];
            }
            for (int a = 0; a <= maxr[0]; a++)
                for (int b = 0; b <= maxr[1]; b++)
                    for (int c = 0; c <= maxr[2]; c++) {
                        if (a + b + c > total)
                            continue;
                        double s = 0.0;
                        for (int k = 0; k < a; k++)
                            s += g[0][k];
                        for (int k = 0; k < b; k++)
                            s += g[1][k];
                        for (int k = 0; k < c; k++)
                            s += g[2][k];
                        best = fmax(best, s);
                    }
            CHECK_NEAR(got, best, 1e-12);
        }
    }
}

/* ---- QAT ---------------------------------------------------------------------------------- */

/* With every format none, QAT is plain training: it must equal qs_mlp_train step for step. */
static void test_qat_float_equals_train(void)
{
    const int sizes[] = {4, 8, 3}, n = 50;
    struct qs_mlp *a = tiny_mlp(sizes, 3, QS_ACT_RELU, 4), *b = qs_mlp_clone(a);
    CHECK(a && b);
    if (!a || !b)
        return;
    float x[50 * 4];
    int y[50];
    random_data(n, 4, 3, 12, x, y);
    struct qs_format fmt[2];
    struct qs_qopts opt[2];
    memset(fmt, 0, sizeof fmt);
    for (int i = 0; i < 2; i++)
        qs_qopts_default(&opt[i]);
    struct qs_qat_opts qo = {.epochs = 3, .batch = 16, .lr = 1e-2, .seed = 9};
    struct qs_train_opts to = {
        .epochs = 3, .batch = 16, .lr = 1e-2, .weight_decay = 0.0, .seed = 9};
    qs_err e;
    CHECK(qs_qat_train(a, fmt, opt, x, y, n, &qo, NULL, NULL, &e) == 0);
    CHECK(qs_mlp_train(b, x, y, n, &to, NULL, NULL, &e) == 0);
    double maxd = 0.0, moved = 0.0;
    struct qs_mlp *init = tiny_mlp(sizes, 3, QS_ACT_RELU, 4);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < a->layers[i].out * a->layers[i].in; j++) {
            maxd = fmax(maxd, fabs(a->layers[i].w[j] - b->layers[i].w[j]));
            moved = fmax(moved, fabs(a->layers[i].w[j] - init->layers[i].w[j]));
        }
    CHECK(maxd <= 1e-6);
    CHECK(moved > 1e-3); /* training did move the weights */
    qs_mlp_free(a);
    qs_mlp_free(b);
    qs_mlp_free(init);
}

static double quant_loss(const struct qs_mlp *m, const struct qs_format *f,
                         const struct qs_qopts *o, const float *x, const int *y, int n)
{
    struct qs_mlp *q = qs_mlp_clone(m);
    qs_err e;
    float *lg = malloc((size_t)n * 2 * sizeof(float));
    for (int i = 0; i < q->nlayers; i++)
        qs_quant_fake(f, o, m->layers[i].w, m->layers[i].out, m->layers[i].in, q->layers[i].w, &e);
    qs_mlp_forward(q, x, n, lg, &e);
    double l = qs_xent(lg, y, n, 2, NULL, NULL);
    free(lg);
    qs_mlp_free(q);
    return l;
}

/* QAT through int2 weights lowers the quantized model's training loss below PTQ's. */
static void test_qat_lowers_quant_loss(void)
{
    struct qs_dataset *d = NULL;
    qs_err e;
    CHECK(qs_toy_generate("moons", 400, 0.1, 3, &d, &e) == 0);
    if (!d)
        return;
    const int sizes[] = {2, 16, 16, 2};
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_RELU, 1);
    struct qs_train_opts to = {.epochs = 60, .batch = 32, .lr = 1e-2, .seed = 1};
    CHECK(qs_mlp_train(m, d->x, d->y, d->n, &to, NULL, NULL, &e) == 0);
    struct qs_format f[3];
    struct qs_qopts o[3];
    for (int i = 0; i < 3; i++) {
        CHECK(qs_format_parse("int2", &f[i], &e) == 0);
        qs_qopts_default(&o[i]);
    }
    double ptq = quant_loss(m, &f[0], &o[0], d->x, d->y, d->n);
    struct qs_qat_opts qo = {.epochs = 20, .batch = 32, .lr = 3e-3, .seed = 2};
    CHECK(qs_qat_train(m, f, o, d->x, d->y, d->n, &qo, NULL, NULL, &e) == 0);
    double qat = quant_loss(m, &f[0], &o[0], d->x, d->y, d->n);
    CHECK(qat < 0.8 * ptq);
    if (!(qat < 0.8 * ptq))
        fprintf(stderr, "  ptq loss %g, qat loss %g\n", ptq, qat);
    qs_mlp_free(m);
    qs_dataset_free(d);
}

/* ---- bench plumbing -------------------------------------------------------------------------- */

static int add_rule(struct qs_bench *b, const char *pat, const char *fmt, enum qs_gran g)
{
    struct qs_rule r;
    qs_err e;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.opt.gran = g;
    return qs_bench_add_rule(b, &r, NULL, &e);
}

/* The plan's test metric (computed on a model copy) equals the bench's own evaluation once the
 * plan is applied as rules; it fits the budget; the uniform figures match the bench too. */
static void test_allocate_bits_bench(void)
{
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    struct qs_wcand c[4];
    const char *names[] = {"int2", "int3", "int4", "int3"};
    qs_err e;
    for (int k = 0; k < 4; k++) {
        memset(&c[k], 0, sizeof c[k]);
        CHECK(qs_format_parse(names[k], &c[k].fmt, &e) == 0);
        qs_qopts_default(&c[k].opt);
        c[k].opt.gran = k == 3 ? QS_GRAN_TENSOR : QS_GRAN_CHANNEL;
    }
    struct qs_bit_plan p;
    CHECK(qs_allocate_bits(b, c, 4, 3.4, &p, &e) == 0);
    CHECK(p.bits_per_weight <= 3.4);
    for (int i = 0; i < 3; i++)
        CHECK(add_rule(b, b->model->layers[i].name, c[p.choice[i]].fmt.name,
                       c[p.choice[i]].opt.gran) == 0);
    struct qs_eval ev;
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    CHECK_NEAR(ev.q.acc, p.plan_test.acc, 1e-12);
    CHECK_NEAR(ev.q.loss, p.plan_test.loss, 1e-6);
    CHECK_NEAR(ev.bits_w, p.bits_per_weight, 1e-12);
    CHECK(add_rule(b, "*", "int3", QS_GRAN_CHANNEL) == 0);
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    CHECK_NEAR(ev.q.acc, p.uniform_test[1].acc, 1e-12);
    CHECK_NEAR(ev.bits_w, p.uniform_bpw[1], 1e-12);
    /* the plan is never worse on the calibration loss it optimises than uniform int3/channel */
    struct qs_metric mc;
    CHECK(qs_bench_run(b, QS_CALIB, ~0ULL, 0, &mc, NULL, &e) == 0);
    CHECK(p.joint_loss_calib <= mc.loss + 1e-9);
    qs_bit_plan_free(&p);
    /* a budget below the cheapest plan */
    CHECK(qs_allocate_bits(b, c, 4, 1.0, &p, &e) < 0);
    CHECK(strstr(e.msg, "below the cheapest plan, 2.2500 bits/weight") != NULL);
    qs_bench_free(b);
}

/* The sensitivity of a float layer is zero for delta and fisher_err; grad_norm matches the
 * shared backward on the calibration split; a layer's weights do not change. */
static void test_sensitivity_bench(void)
{
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(add_rule(b, "fc[01]", "int3", QS_GRAN_TENSOR) == 0);
    struct qs_sens_layer s[3];
    struct qs_sens_info info;
    qs_err e;
    CHECK(qs_sensitivity(b, QS_SENS_ALL, 8, s, &info, &e) == 0);
    CHECK(s[0].quantized && s[1].quantized && !s[2].quantized);
    CHECK(s[2].delta_loss == 0.0 && s[2].fisher_err == 0.0 && s[2].hutch_err == 0.0);
    CHECK(s[0].delta_loss > 0 && s[1].delta_loss > 0);
    CHECK(s[0].fisher_err > 0 && s[0].fisher_trace > s[0].fisher_err);
    CHECK(s[2].grad_norm > 0 && s[2].hutch_trace > 0);
    CHECK(info.n_calib == 359 && info.n_test == 360);
    /* fisher_err against its definition, recomputed from qs_fisher_diag */
    const struct qs_acts *fc = &b->f_acts[QS_CALIB];
    float *f[3];
    for (int i = 0; i < 3; i++)
        f[i] = malloc((size_t)b->model->layers[i].out * b->model->layers[i].in * sizeof(float));
    CHECK(qs_fisher_diag(b->model, fc->x, fc->y, fc->n, f, &e) == 0);
    double fe = 0.0;
    for (int j = 0; j < 64 * 64; j++) {
        double d = (double)b->model->layers[1].w[j] - qs_site_wq(b, 1, NULL)[j];
        fe += f[1][j] * d * d;
    }
    CHECK_REL(s[1].fisher_err, fe, 1e-9);
    for (int i = 0; i < 3; i++)
        free(f[i]);
    qs_bench_free(b);
}

/* ---- the Q1 study ------------------------------------------------------------------------ */

static void test_q1_verdict_stats(void)
{
    CHECK_STR(qs_q1_verdict(0.35, 0.35), "supported");
    CHECK_STR(qs_q1_verdict(0.5, 0.34), "unclear");
    CHECK_STR(qs_q1_verdict(0.2, -0.5), "refuted");
    CHECK_STR(qs_q1_verdict(0.24, -0.5), "unclear");
    CHECK_STR(qs_q1_verdict(0.1, 0.0), "unclear");
    CHECK_STR(qs_q1_verdict(0.1, NAN), "unclear");
    const double v[] = {-0.5, 0.1, 0.3, 0.25, 0.9};
    struct qs_q1_stats s;
    qs_q1_stats_of(v, 5, &s);
    CHECK(s.n == 5);
    CHECK_NEAR(s.mean, 0.21, 1e-12);
    CHECK_NEAR(s.median, 0.25, 1e-12);
    CHECK_NEAR(s.pos_frac, 0.8, 1e-12);
    CHECK_NEAR(s.frac_gt_02, 0.6, 1e-12);
    qs_q1_stats_of(v, 0, &s);
    CHECK(isnan(s.median));
}

static void test_q1_data_path(void)
{
    char buf[512];
    qs_err e;
    CHECK(qs_q1_data_path("datasets/models/digits-mlp.safetensors", "datasets/digits.csv", buf,
                          sizeof buf, &e) == 0);
    CHECK_STR(buf, "datasets/digits.csv");
    CHECK(qs_q1_data_path("datasets/models/digits-mlp.safetensors", "/elsewhere/digits.csv", buf,
                          sizeof buf, &e) == 0);
    CHECK_STR(buf, "datasets/models/../digits.csv");
    CHECK(qs_q1_data_path("datasets/models/digits-mlp.safetensors", "/nope/none.csv", buf,
                          sizeof buf, &e) < 0);
    CHECK(strstr(e.msg, "none.csv") != NULL);
    CHECK(qs_q1_data_path("m.safetensors", NULL, buf, sizeof buf, &e) < 0);
    CHECK(strstr(e.msg, "qscope.data") != NULL);
}

/* One model, two seeds: the study runs on benches of its own; its aggregate equals the
 * statistics of its per-layer rows; R_lin_float beats R_lin_q4 on average. */
static void test_q1_study_small(void)
{
    const char *models[] = {"datasets/models/moons-mlp.safetensors"};
    const uint64_t seeds[] = {0, 1};
    struct qs_q1_opts o;
    memset(&o, 0, sizeof o);
    o.models = models;
    o.nmodels = 1;
    o.seeds = seeds;
    o.nseeds = 2;
    qs_err e;
    CHECK(qs_format_parse("int3", &o.fmt, &e) == 0);
    qs_qopts_default(&o.opt);
    snprintf(o.prec, sizeof o.prec, "int4");
    o.top_frac = 0.1;
    struct qs_q1 q;
    CHECK(qs_study_q1(&o, &q, &e) == 0);
    CHECK(q.nsettings == 2 && q.nlayers == 6);
    if (q.nlayers != 6)
        return;
    double rf[6], rq[6];
    for (int i = 0; i < 6; i++) {
        rf[i] = q.layers[i].r_float;
        rq[i] = q.layers[i].r_q;
        CHECK(q.layers[i].correctability > 0 && q.layers[i].correctability <= 1.0 + 1e-12);
    }
    struct qs_q1_stats s;
    qs_q1_stats_of(rq, 6, &s);
    CHECK_NEAR(q.r_q.median, s.median, 1e-15);
    qs_q1_stats_of(rf, 6, &s);
    CHECK_NEAR(q.r_float.mean, s.mean, 1e-15);
    CHECK(q.r_float.mean > q.r_q.mean);
    /* different seeds draw different calibration/test samples */
    CHECK(q.layers[1].r_q != q.layers[4].r_q);
    CHECK(q.nsupported + q.nrefuted + q.nunclear == 2);
    /* the CSVs: a raw "# qscope" comment line (not a quoted field: CSV readers skip it), the
     * header, one row per layer / setting */
    char dir[] = "/tmp/qscope-q1-XXXXXX", prefix[64], path[96], line[1024];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(prefix, sizeof prefix, "%s/q1", dir);
    CHECK(qs_q1_write_csv(&q, &o, prefix, &e) == 0);
    const char *what[] = {"layers", "settings"};
    const int rows[] = {6, 2};
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s-%s.csv", prefix, what[k]);
        FILE *f = fopen(path, "r");
        CHECK(f != NULL);
        if (!f)
            continue;
        int n = 0;
        while (fgets(line, sizeof line, f)) {
            if (n == 0)
                CHECK(strncmp(line, "# qscope ", 9) == 0 && !strchr(line, '"'));
            if (n == 1)
                CHECK(strncmp(line, "\"model\",\"data\",\"seed\",", 22) == 0);
            if (n == 2 && k == 0)
                CHECK(strstr(line, "\"fc0\",\"0\",\"early\",\"16\"") != NULL);
            n++;
        }
        fclose(f);
        CHECK(n == 2 + rows[k]);
        remove(path);
    }
    rmdir(dir);
    CHECK(qs_q1_write_csv(&q, &o, "/nonexistent-dir/q1", &e) < 0);
    CHECK(strstr(e.msg, "/nonexistent-dir/q1-layers.csv") != NULL);
    qs_q1_free(&q);
    /* a missing model names the file */
    const char *bad[] = {"nope/missing.safetensors"};
    o.models = bad;
    CHECK(qs_study_q1(&o, &q, &e) < 0);
    CHECK(strstr(e.msg, "missing.safetensors") != NULL);
}

TEST_MAIN("sensitivity", TEST_CASE(test_fisher_gemm_loop_fd),
          TEST_CASE(test_hutchinson_softmax_exact), TEST_CASE(test_hutchinson_mlp_exact),
          TEST_CASE(test_alloc_bits_two_layers_optimal), TEST_CASE(test_alloc_bits_local_optimum),
          TEST_CASE(test_alloc_rank_concave_optimal), TEST_CASE(test_qat_float_equals_train),
          TEST_CASE(test_qat_lowers_quant_loss), TEST_CASE(test_allocate_bits_bench),
          TEST_CASE(test_sensitivity_bench), TEST_CASE(test_q1_verdict_stats),
          TEST_CASE(test_q1_data_path), TEST_CASE(test_q1_study_small))
