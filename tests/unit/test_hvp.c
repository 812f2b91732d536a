/* test_hvp.c - the exact Hessian-vector product (qs_mlp_hvp, forward-over-reverse) and the
 * Hutchinson trace built on it, against references computed here in double:
 * - smooth networks (tanh, sigmoid, GELU, an activation on the logits): H v against a central
 *   difference of the double-precision gradient, directions on one layer or on all;
 * - ReLU networks: against the same difference at a point whose pre-activations are far from
 *   the kinks (the step cannot cross one), and against the exact Hessian block
 *   H = (1/N) sum_n J_n^T (diag p_n - p_n p_n^T) J_n (J_n the Jacobian of the logits in the
 *   layer's weights; exact almost everywhere since the logits are piecewise linear in them),
 *   probe by probe, and Hutchinson's mean and standard error against tr H and the Rademacher
 *   variance 2 sum_{i != j} H_ij^2;
 * - the bundled digits MLP: Hutchinson's fc0/fc1/fc2 traces within 3 standard errors of the
 *   exact trace (1/N) sum_n ||a_n||^2 tr(M_n^T (diag p_n - p_n p_n^T) M_n), a_n the layer's
 *   input and M_n = d logits / d z (z its pre-activation). A central difference of gradients
 *   crossed ReLU kinks there and came out 44 % (fc0) and 20 % (fc1) low. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/bench.h"
#include "qscope/dataset.h"
#include "qscope/mlp.h"
#include "qscope/sensitivity.h"
#include "test.h"

#define MAXL 4

/* ---- a double-precision reference MLP ------------------------------------------------------ */

struct dnet {
    int L, in[MAXL], out[MAXL];
    enum qs_act act[MAXL];
    double *w[MAXL], *b[MAXL]; /* w: (out, in), b: (out) */
};

static void dnet_from(const struct qs_mlp *m, struct dnet *d)
{
    d->L = m->nlayers;
    for (int i = 0; i < d->L; i++) {
        const struct qs_layer *l = &m->layers[i];
        d->in[i] = l->in;
        d->out[i] = l->out;
        d->act[i] = l->act;
        d->w[i] = malloc((size_t)l->out * l->in * sizeof(double));
        d->b[i] = malloc((size_t)l->out * sizeof(double));
        for (int j = 0; j < l->out * l->in; j++)
            d->w[i][j] = l->w[j];
        for (int j = 0; j < l->out; j++)
            d->b[i][j] = l->b[j];
    }
}

static void dnet_free(struct dnet *d)
{
    for (int i = 0; i < d->L; i++) {
        free(d->w[i]);
        free(d->b[i]);
    }
}

static double dact(enum qs_act a, double z)
{
    switch (a) {
    case QS_ACT_RELU:
        return z > 0 ? z : 0;
    case QS_ACT_TANH:
        return tanh(z);
    case QS_ACT_SIGMOID:
        return 1 / (1 + exp(-z));
    case QS_ACT_GELU:
        return 0.5 * z * (1 + erf(z / sqrt(2.0)));
    default:
        return z;
    }
}

static double dact1(enum qs_act a, double z)
{
    switch (a) {
    case QS_ACT_RELU:
        return z > 0;
    case QS_ACT_TANH:
        return 1 - tanh(z) * tanh(z);
    case QS_ACT_SIGMOID: {
        double s = 1 / (1 + exp(-z));
        return s * (1 - s);
    }
    case QS_ACT_GELU:
        return 0.5 * (1 + erf(z / sqrt(2.0))) + z * exp(-0.5 * z * z) / sqrt(2 * M_PI);
    default:
        return 1;
    }
}

/* One sample: z[i], a[i] (out_i each) the pre-activations and activations. */
static void dnet_fwd1(const struct dnet *d, const float *x, double z[][64], double a[][64])
{
    double x0[64];
    for (int k = 0; k < d->in[0]; k++)
        x0[k] = x[k];
    for (int i = 0; i < d->L; i++) {
        const double *in = i ? a[i - 1] : x0;
        for (int o = 0; o < d->out[i]; o++) {
            double s = d->b[i][o];
            for (int k = 0; k < d->in[i]; k++)
                s += d->w[i][(size_t)o * d->in[i] + k] * in[k];
            z[i][o] = s;
            a[i][o] = dact(d->act[i], s);
        }
    }
}

static void softmax(const double *z, int c, double *p)
{
    double mx = z[0], s = 0;
    for (int j = 1; j < c; j++)
        mx = fmax(mx, z[j]);
    for (int j = 0; j < c; j++)
        s += p[j] = exp(z[j] - mx);
    for (int j = 0; j < c; j++)
        p[j] /= s;
}

/* g[i]: (out_i, in_i) gradient of the mean cross-entropy; *minz gets min |z| over the
 * hidden pre-activations (how far the point is from a ReLU kink). */
static void dnet_grad(const struct dnet *d, const float *x, const int *y, int n, double **g,
                      double *minz)
{
    int L = d->L, c = d->out[L - 1];
    double z[MAXL][64], a[MAXL][64], dl[64], dn[64];
    for (int i = 0; i < L; i++)
        memset(g[i], 0, (size_t)d->out[i] * d->in[i] * sizeof(double));
    if (minz)
        *minz = INFINITY;
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d->in[0];
        dnet_fwd1(d, xr, z, a);
        for (int i = 0; minz && i + 1 < L; i++)
            for (int o = 0; o < d->out[i]; o++)
                *minz = fmin(*minz, fabs(z[i][o]));
        softmax(a[L - 1], c, dl);
        dl[y[r]] -= 1;
        for (int j = 0; j < c; j++)
            dl[j] /= n; /* dL/da_{L-1} */
        for (int i = L - 1; i >= 0; i--) {
            for (int o = 0; o < d->out[i]; o++)
                dl[o] *= dact1(d->act[i], z[i][o]); /* dL/dz_i */
            for (int o = 0; o < d->out[i]; o++)
                for (int k = 0; k < d->in[i]; k++)
                    g[i][(size_t)o * d->in[i] + k] += dl[o] * (i ? a[i - 1][k] : (double)xr[k]);
            if (i) {
                for (int k = 0; k < d->in[i]; k++) {
                    double s = 0;
                    for (int o = 0; o < d->out[i]; o++)
                        s += dl[o] * d->w[i][(size_t)o * d->in[i] + k];
                    dn[k] = s;
                }
                memcpy(dl, dn, (size_t)d->in[i] * sizeof(double));
            }
        }
    }
}

/* ---- helpers ------------------------------------------------------------------------------- */

static struct qs_mlp *tiny_mlp(const int *sizes, int ns, enum qs_act act, uint64_t seed)
{
    qs_rng r;
    qs_rng_seed(&r, seed);
    struct qs_mlp *m = NULL;
    qs_err e;
    if (qs_mlp_new(sizes, ns, act, &r, &m, &e) < 0)
        return NULL;
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

static size_t nw_of(const struct qs_mlp *m, int i)
{
    return (size_t)m->layers[i].out * m->layers[i].in;
}

/* Compares qs_mlp_hvp with directions on the layers in `on` (bit mask) against the central
 * difference (g(W + h V) - g(W - h V)) / 2h of the double gradient, every block wanted.
 * Returns the worst |error| / max |H v| over the blocks. */
static double hvp_vs_fd(const struct qs_mlp *m, const float *x, const int *y, int n, unsigned on,
                        uint64_t seed, double h)
{
    int L = m->nlayers;
    struct dnet d;
    dnet_from(m, &d);
    qs_rng r;
    qs_rng_seed(&r, seed);
    const float *v[MAXL] = {0};
    float *vb[MAXL] = {0}, *hv[MAXL] = {0};
    double *gp[MAXL], *gm[MAXL], *w0[MAXL];
    for (int i = 0; i < L; i++) {
        size_t nw = nw_of(m, i);
        hv[i] = calloc(nw, sizeof(float));
        gp[i] = calloc(nw, sizeof(double));
        gm[i] = calloc(nw, sizeof(double));
        w0[i] = malloc(nw * sizeof(double));
        memcpy(w0[i], d.w[i], nw * sizeof(double));
        if (on >> i & 1) {
            vb[i] = malloc(nw * sizeof(float));
            for (size_t j = 0; j < nw; j++)
                vb[i][j] = (float)qs_rng_normal(&r);
            v[i] = vb[i];
        }
    }
    qs_err e;
    CHECK(qs_mlp_hvp(m, x, y, n, v, hv, &e) == 0);
    for (int s = 1; s >= -1; s -= 2) {
        for (int i = 0; i < L; i++)
            for (size_t j = 0; j < nw_of(m, i); j++)
                d.w[i][j] = w0[i][j] + (v[i] ? s * h * v[i][j] : 0.0);
        dnet_grad(&d, x, y, n, s > 0 ? gp : gm, NULL);
    }
    double worst = 0;
    for (int i = 0; i < L; i++) {
        double err = 0, mx = 0;
        for (size_t j = 0; j < nw_of(m, i); j++) {
            double fd = (gp[i][j] - gm[i][j]) / (2 * h);
            err = fmax(err, fabs(hv[i][j] - fd));
            mx = fmax(mx, fabs(fd));
        }
        CHECK(mx > 1e-4); /* not vacuous: every block of H v is non-zero */
        worst = fmax(worst, err / mx);
    }
    for (int i = 0; i < L; i++) {
        free(vb[i]);
        free(hv[i]);
        free(gp[i]);
        free(gm[i]);
        free(w0[i]);
    }
    dnet_free(&d);
    return worst;
}

/* ---- smooth networks --------------------------------------------------------------------- */

static void test_hvp_smooth_fd(void)
{
    const int sizes[] = {3, 6, 5, 4}, n = 20;
    float x[20 * 3];
    int y[20];
    random_data(n, 3, 4, 5, x, y);
    const enum qs_act acts[] = {QS_ACT_TANH, QS_ACT_SIGMOID, QS_ACT_GELU};
    for (int a = 0; a < 3; a++)
        for (int top = 0; top < 2; top++) {
            struct qs_mlp *m = tiny_mlp(sizes, 4, acts[a], 31 + a);
            CHECK(m != NULL);
            if (!m)
                return;
            if (top) /* an activation on the logits too: its act'' term at the top */
                m->layers[2].act = acts[a];
            for (unsigned on = 1; on < 8; on++) { /* every subset of layers carries a direction */
                double w = hvp_vs_fd(m, x, y, n, on, 100 + on, 1e-5);
                CHECK(w < 1e-5);
                if (!(w < 1e-5))
                    fprintf(stderr, "  %s top=%d on=%u: rel err %g\n", qs_act_name(acts[a]), top,
                            on, w);
            }
            qs_mlp_free(m);
        }
}

/* Wanting one block gives the same numbers as wanting all; H 0 = 0; no samples is an error. */
static void test_hvp_blocks(void)
{
    const int sizes[] = {3, 6, 5, 4}, n = 20;
    float x[20 * 3];
    int y[20];
    random_data(n, 3, 4, 6, x, y);
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_RELU, 41);
    CHECK(m != NULL);
    if (!m)
        return;
    float v1[30], all0[18], all1[30], all2[20], one[30];
    for (int j = 0; j < 30; j++)
        v1[j] = (j * 7 % 5) - 2.0f;
    const float *v[3] = {NULL, v1, NULL};
    float *hv[3] = {all0, all1, all2};
    qs_err e;
    CHECK(qs_mlp_hvp(m, x, y, n, v, hv, &e) == 0);
    double mx = 0;
    for (int j = 0; j < 18; j++)
        mx = fmax(mx, fabs(all0[j]));
    CHECK(mx > 0); /* the cross block H_01 v_1 */
    float *hv1[3] = {NULL, one, NULL};
    CHECK(qs_mlp_hvp(m, x, y, n, v, hv1, &e) == 0);
    CHECK(memcmp(one, all1, sizeof one) == 0);
    /* no direction at all: H 0 = 0 */
    const float *v0[3] = {NULL, NULL, NULL};
    CHECK(qs_mlp_hvp(m, x, y, n, v0, hv, &e) == 0);
    mx = 0;
    for (int j = 0; j < 18; j++)
        mx = fmax(mx, fabs(all0[j]));
    for (int j = 0; j < 30; j++)
        mx = fmax(mx, fabs(all1[j]));
    for (int j = 0; j < 20; j++)
        mx = fmax(mx, fabs(all2[j]));
    CHECK(mx == 0.0);
    CHECK(qs_mlp_hvp(m, x, y, 0, v, hv, &e) < 0);
    qs_mlp_free(m);
}

/* ---- ReLU networks: the exact Hessian block ------------------------------------------------ */

/* M = d logits / d z_k for one sample (c, out_k), from the stored pre-activations. */
static void jac_logits_z(const struct dnet *d, int k, double z[][64], double *M)
{
    int L = d->L, c = d->out[L - 1];
    double T[64 * 64];
    int w = c; /* M: (c, w), starting at d logits / d a_{L-1} = I */
    memset(M, 0, (size_t)c * c * sizeof(double));
    for (int j = 0; j < c; j++)
        M[j * c + j] = dact1(d->act[L - 1], z[L - 1][j]);
    for (int i = L - 1; i > k; i--) { /* M <- M W_i diag(act'(z_{i-1})) */
        int in = d->in[i];
        for (int r = 0; r < c; r++)
            for (int q = 0; q < in; q++) {
                double s = 0;
                for (int o = 0; o < w; o++)
                    s += M[r * w + o] * d->w[i][(size_t)o * in + q];
                T[r * in + q] = s * dact1(d->act[i - 1], z[i - 1][q]);
            }
        w = in;
        memcpy(M, T, (size_t)c * w * sizeof(double));
    }
}

/* Exact block H_k (N_k, N_k) = (1/N) sum_n J_n^T S_n J_n, J_n[c][o in + q] = M_n[c][o] a_n[q];
 * *trace gets the closed form (1/N) sum_n ||a_n||^2 tr(M_n^T S_n M_n). H may be NULL. */
static void exact_block(const struct dnet *d, const float *x, int n, int k, double *H,
                        double *trace)
{
    int L = d->L, c = d->out[L - 1], in = d->in[k], out = d->out[k], nk = in * out;
    double z[MAXL][64], a[MAXL][64], M[64 * 64], p[64], SM[64 * 64];
    double *J = H ? malloc((size_t)c * nk * sizeof(double)) : NULL;
    double *SJ = H ? malloc((size_t)c * nk * sizeof(double)) : NULL;
    if (H)
        memset(H, 0, (size_t)nk * nk * sizeof(double));
    *trace = 0;
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d->in[0];
        dnet_fwd1(d, xr, z, a);
        softmax(a[L - 1], c, p);
        jac_logits_z(d, k, z, M);
        double ain[64], aa = 0;
        for (int q = 0; q < in; q++) {
            ain[q] = k ? a[k - 1][q] : (double)xr[q];
            aa += ain[q] * ain[q];
        }
        /* S M: (c, out), S = diag p - p p^T */
        for (int o = 0; o < out; o++) {
            double pm = 0;
            for (int j = 0; j < c; j++)
                pm += p[j] * M[j * out + o];
            for (int j = 0; j < c; j++)
                SM[j * out + o] = p[j] * (M[j * out + o] - pm);
        }
        double t = 0;
        for (int i = 0; i < c * out; i++)
            t += M[i] * SM[i];
        *trace += aa * t / n;
        if (!H)
            continue;
        for (int j = 0; j < c; j++)
            for (int o = 0; o < out; o++)
                for (int q = 0; q < in; q++) {
                    J[(size_t)j * nk + o * in + q] = M[j * out + o] * ain[q];
                    SJ[(size_t)j * nk + o * in + q] = SM[j * out + o] * ain[q];
                }
        for (int u = 0; u < nk; u++)
            for (int w = 0; w < nk; w++) {
                double s = 0;
                for (int j = 0; j < c; j++)
                    s += J[(size_t)j * nk + u] * SJ[(size_t)j * nk + w];
                H[(size_t)u * nk + w] += s / n;
            }
    }
    free(J);
    free(SJ);
}

/* H v at a point far from the kinks (the difference step cannot cross one): exact against the
 * double gradient's central difference, for directions on every subset of layers (the cross
 * terms d_i V_i and d_i^T R{a_{i-1}} of the R-operator included). */
static void test_hvp_relu_fd(void)
{
    const int sizes[] = {5, 7, 6, 4}, n = 30;
    float x[30 * 5];
    int y[30];
    random_data(n, 5, 4, 17, x, y);
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_RELU, 51);
    CHECK(m != NULL);
    if (!m)
        return;
    struct dnet d;
    dnet_from(m, &d);
    double *g[MAXL], minz;
    for (int i = 0; i < 3; i++)
        g[i] = malloc(nw_of(m, i) * sizeof(double));
    dnet_grad(&d, x, y, n, g, &minz);
    /* a perturbation of h = 1e-7 moves a pre-activation by < 1e-5: no kink is crossed */
    CHECK(minz > 1e-4);
    for (unsigned on = 1; on < 8; on++) {
        double w = hvp_vs_fd(m, x, y, n, on, 200 + on, 1e-7);
        CHECK(w < 1e-5);
        if (!(w < 1e-5))
            fprintf(stderr, "  relu on=%u: rel err %g\n", on, w);
    }
    for (int i = 0; i < 3; i++)
        free(g[i]);
    dnet_free(&d);
    qs_mlp_free(m);
}

/* Per layer of a tiny ReLU net: H v and v^T H v of Rademacher and Gaussian probes against the
 * exact block; tr H against the closed form; Hutchinson over many probes within 3 standard
 * errors of tr H, with a standard error that matches the Rademacher variance
 * 2 sum_{i != j} H_ij^2 (a central difference of gradients inflated it). */
static void test_hvp_relu_exact(void)
{
    const int sizes[] = {5, 7, 6, 4}, n = 30;
    float x[30 * 5];
    int y[30];
    random_data(n, 5, 4, 17, x, y);
    struct qs_mlp *m = tiny_mlp(sizes, 4, QS_ACT_RELU, 51);
    CHECK(m != NULL);
    if (!m)
        return;
    struct dnet d;
    dnet_from(m, &d);
    qs_err e;
    for (int k = 0; k < 3; k++) {
        int nk = (int)nw_of(m, k);
        double *H = malloc((size_t)nk * nk * sizeof(double)), tr_closed;
        exact_block(&d, x, n, k, H, &tr_closed);
        double tr = 0, off2 = 0;
        for (int u = 0; u < nk; u++)
            for (int w = 0; w < nk; w++)
                if (u == w)
                    tr += H[(size_t)u * nk + w];
                else
                    off2 += H[(size_t)u * nk + w] * H[(size_t)u * nk + w];
        CHECK(tr > 1e-3);
        CHECK_REL(tr, tr_closed, 1e-12);
        /* probe by probe */
        qs_rng r;
        qs_rng_seed(&r, 60 + k);
        float *v = malloc((size_t)nk * sizeof(float)), *hv = malloc((size_t)nk * sizeof(float));
        const float *vv[3] = {0};
        float *hh[3] = {0};
        vv[k] = v;
        hh[k] = hv;
        for (int t = 0; t < 8; t++) {
            for (int j = 0; j < nk; j++)
                v[j] = t < 4 ? ((qs_rng_u64(&r) >> 63) ? 1.0f : -1.0f) : (float)qs_rng_normal(&r);
            CHECK(qs_mlp_hvp(m, x, y, n, vv, hh, &e) == 0);
            double q = 0, qe = 0, err = 0, mx = 0;
            for (int u = 0; u < nk; u++) {
                double hu = 0;
                for (int w = 0; w < nk; w++)
                    hu += H[(size_t)u * nk + w] * v[w];
                err = fmax(err, fabs(hv[u] - hu));
                mx = fmax(mx, fabs(hu));
                q += (double)v[u] * hv[u];
                qe += (double)v[u] * hu;
            }
            CHECK(err <= 1e-5 * mx);
            CHECK_REL(q, qe, 1e-5);
        }
        /* Hutchinson: unbiased, and its standard error is the Rademacher one */
        struct qs_hutch h;
        const int probes = 4000;
        CHECK(qs_hutchinson(m, x, y, n, k, probes, 7, &h, &e) == 0);
        double se_theory = sqrt(2 * off2 / probes);
        CHECK(fabs(h.trace - tr) <= 3 * h.se);
        CHECK_REL(h.se, se_theory, 0.15);
        if (!(fabs(h.trace - tr) <= 3 * h.se) || !(fabs(h.se / se_theory - 1) <= 0.15))
            fprintf(stderr, "  layer %d: hutchinson %.6g +- %.3g, exact %.6g (se %.3g)\n", k,
                    h.trace, h.se, tr, se_theory);
        free(v);
        free(hv);
        free(H);
    }
    dnet_free(&d);
    qs_mlp_free(m);
}

/* ---- the bundled digits MLP ----------------------------------------------------------------- */

static struct qs_bench *digits_bench(void)
{
    qs_err e;
    struct qs_bench *b = qs_test_open_digits();
    if (b && qs_bench_update(b, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* Calibration split, session seed 0 (as `sensitivity`): fc0 and fc1 (ReLU inputs and outputs)
 * and fc2 within 3 standard errors of the exact trace, with the default 32 probes and with 256;
 * and a probe's v^T H v equal to the exact (1/N) sum_n u_n^T S_n u_n, u_n = M_n V a_n. */
static void test_hutchinson_digits(void)
{
    struct qs_bench *b = digits_bench();
    CHECK(b != NULL);
    if (!b)
        return;
    const struct qs_mlp *m = b->model;
    const struct qs_acts *fc = &b->f_acts[QS_CALIB];
    CHECK(m->nlayers == 3 && fc->n == 359);
    struct dnet d;
    dnet_from(m, &d);
    qs_err e;
    for (int k = 0; k < 3; k++) {
        double tr;
        exact_block(&d, fc->x, fc->n, k, NULL, &tr);
        const int probes[] = {32, 256};
        for (int pi = 0; pi < 2; pi++) {
            struct qs_hutch h;
            CHECK(qs_hutchinson(m, fc->x, fc->y, fc->n, k, probes[pi], 0, &h, &e) == 0);
            int ok = fabs(h.trace - tr) <= 3 * h.se;
            CHECK(ok);
            if (!ok || getenv("QSCOPE_TEST_VERBOSE"))
                fprintf(stderr, "  %s, %d probes: hutchinson %.6g +- %.3g, exact %.6g\n",
                        m->layers[k].name, probes[pi], h.trace, h.se, tr);
        }
        /* one probe, exactly */
        int in = m->layers[k].in, out = m->layers[k].out, c = 10;
        size_t nk = nw_of(m, k);
        float *v = malloc(nk * sizeof(float)), *hv = malloc(nk * sizeof(float));
        qs_rng r;
        qs_rng_seed(&r, 99);
        for (size_t j = 0; j < nk; j++)
            v[j] = (qs_rng_u64(&r) >> 63) ? 1.0f : -1.0f;
        const float *vv[3] = {0};
        float *hh[3] = {0};
        vv[k] = v;
        hh[k] = hv;
        CHECK(qs_mlp_hvp(m, fc->x, fc->y, fc->n, vv, hh, &e) == 0);
        double q = 0, qe = 0;
        for (size_t j = 0; j < nk; j++)
            q += (double)v[j] * hv[j];
        double z[MAXL][64], a[MAXL][64], M[64 * 64], p[64];
        for (int s = 0; s < fc->n; s++) {
            const float *xr = fc->x + (size_t)s * d.in[0];
            dnet_fwd1(&d, xr, z, a);
            softmax(a[2], c, p);
            jac_logits_z(&d, k, z, M);
            double va[64], u[64], pu = 0, uu = 0;
            for (int o = 0; o < out; o++) {
                va[o] = 0;
                for (int i = 0; i < in; i++)
                    va[o] += v[(size_t)o * in + i] * (k ? a[k - 1][i] : (double)xr[i]);
            }
            for (int j = 0; j < c; j++) {
                u[j] = 0;
                for (int o = 0; o < out; o++)
                    u[j] += M[j * out + o] * va[o];
                pu += p[j] * u[j];
                uu += p[j] * u[j] * u[j];
            }
            qe += (uu - pu * pu) / fc->n; /* u^T (diag p - p p^T) u */
        }
        CHECK_REL(q, qe, 1e-5);
        free(v);
        free(hv);
    }
    dnet_free(&d);
    qs_bench_free(b);
}

TEST_MAIN("hvp", TEST_CASE(test_hvp_smooth_fd), TEST_CASE(test_hvp_blocks),
          TEST_CASE(test_hvp_relu_fd), TEST_CASE(test_hvp_relu_exact),
          TEST_CASE(test_hutchinson_digits))
