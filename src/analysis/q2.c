/* q2.c - the Q2 study: a compact corrector shared across a model's sites, conditioned on the
 * site's identity (a learned embedding), on its quantization-time statistics, or on both. */
#include "qscope/q2.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/dataset.h"
#include "qscope/lm.h"
#include "qscope/spectral.h"
#include "qscope/study.h"

static const char *const var_names[QS_Q2_NVAR] = {"embedding_only", "features_only",
                                                  "features_plus_embedding"};

const char *qs_q2_variant_name(enum qs_q2_variant v)
{
    return (unsigned)v < QS_Q2_NVAR ? var_names[v] : "?";
}

static const char *const feat_names[QS_Q2_NFEAT] = {
    "w_rel_err", "snr",        "err_rms",  "top_over_edge", "stable_rank",
    "k90",       "scale_mean", "scale_cv", "in_absmax",     "in_rms"};

const char *qs_q2_feature_name(int k)
{
    return k >= 0 && k < QS_Q2_NFEAT ? feat_names[k] : "?";
}

const char *qs_q2_verdict(double mse_emb, double mse_feat, const double gain[QS_Q2_NVAR])
{
    for (int v = 0; v < QS_Q2_NVAR; v++)
        if (isnan(gain[v]))
            return "unclear";
    if (!(mse_emb > 0) || isnan(mse_feat))
        return "unclear";
    double impr = (mse_emb - mse_feat) / mse_emb;
    double best = gain[QS_Q2_FEAT] > gain[QS_Q2_BOTH] ? gain[QS_Q2_FEAT] : gain[QS_Q2_BOTH];
    if (impr >= 0.15 && best >= 0.0100)
        return "supported";
    int any = 0;
    for (int v = 0; v < QS_Q2_NVAR; v++)
        any |= gain[v] > 0;
    if (mse_feat > mse_emb && !any)
        return "refuted";
    return "unclear";
}

/* ---- the corrector -------------------------------------------------------------------------- */

static int uses_emb(enum qs_q2_variant v)
{
    return v != QS_Q2_FEAT;
}
static int uses_feat(enum qs_q2_variant v)
{
    return v != QS_Q2_EMB;
}

static void net_layout(struct qs_q2_net *n)
{
    int H = n->hidden;
    n->w1 = n->p;
    n->b1 = n->w1 + (size_t)H * n->d_in;
    n->w2 = n->b1 + H;
    n->b2 = n->w2 + (size_t)H * H;
    n->w3 = n->b2 + H;
    n->b3 = n->w3 + H;
    n->es = n->b3 + 1;
    n->ek = n->es + (uses_emb(n->var) ? (size_t)n->nsites * QS_Q2_EMB_SITE : 0);
}

int qs_q2_net_init(struct qs_q2_net *n, enum qs_q2_variant var, int hidden, int nsites, int nkinds,
                   int nfeat, uint64_t seed, qs_err *e)
{
    memset(n, 0, sizeof *n);
    if (hidden < 1 || nsites < 1 || nkinds < 1 || nfeat < 0 || (unsigned)var >= QS_Q2_NVAR)
        return qs_errf(e, "q2 corrector: bad shape");
    n->var = var;
    n->hidden = hidden;
    n->nsites = nsites;
    n->nkinds = nkinds;
    n->nfeat = nfeat;
    n->d_in = QS_Q2_NCHAN + (uses_emb(var) ? QS_Q2_EMB_SITE + QS_Q2_EMB_KIND : 0) +
              (uses_feat(var) ? nfeat : 0);
    int H = hidden;
    long np = (long)H * n->d_in + H + (long)H * H + H + H + 1;
    if (uses_emb(var))
        np += (long)nsites * QS_Q2_EMB_SITE + (long)nkinds * QS_Q2_EMB_KIND;
    n->np = (int)np;
    if (!(n->p = qs_alloc((size_t)np, sizeof(float), "the corrector", e)))
        return -1;
    net_layout(n);
    qs_rng r;
    qs_rng_seed(&r, seed ^ 0xc0771ec7ULL);
    double a1 = sqrt(6.0 / (n->d_in + H)), a2 = sqrt(6.0 / (H + H)), a3 = sqrt(6.0 / (H + 1));
    for (long k = 0; k < (long)H * n->d_in; k++)
        n->w1[k] = (float)(a1 * (2 * qs_rng_uniform(&r) - 1));
    for (long k = 0; k < (long)H * H; k++)
        n->w2[k] = (float)(a2 * (2 * qs_rng_uniform(&r) - 1));
    for (int k = 0; k < H; k++)
        n->w3[k] = (float)(a3 * (2 * qs_rng_uniform(&r) - 1));
    if (uses_emb(var)) {
        for (long k = 0; k < (long)nsites * QS_Q2_EMB_SITE; k++)
            n->es[k] = (float)(0.1 * qs_rng_normal(&r));
        for (long k = 0; k < (long)nkinds * QS_Q2_EMB_KIND; k++)
            n->ek[k] = (float)(0.1 * qs_rng_normal(&r));
    }
    return 0;
}

void qs_q2_net_free(struct qs_q2_net *n)
{
    if (!n)
        return;
    free(n->p);
    memset(n, 0, sizeof *n);
}

void qs_q2_net_inputs(const struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                      const int *site, int m, float *a)
{
    for (int i = 0; i < m; i++) {
        float *r = a + (size_t)i * n->d_in;
        int s = site[i], c = QS_Q2_NCHAN;
        memcpy(r, x + (size_t)i * QS_Q2_NCHAN, QS_Q2_NCHAN * sizeof(float));
        if (uses_emb(n->var)) {
            memcpy(r + c, n->es + (size_t)s * QS_Q2_EMB_SITE, QS_Q2_EMB_SITE * sizeof(float));
            c += QS_Q2_EMB_SITE;
            memcpy(r + c, n->ek + (size_t)st->kind[s] * QS_Q2_EMB_KIND,
                   QS_Q2_EMB_KIND * sizeof(float));
            c += QS_Q2_EMB_KIND;
        }
        if (uses_feat(n->var))
            memcpy(r + c, st->feat + (size_t)s * n->nfeat, (size_t)n->nfeat * sizeof(float));
    }
}

/* workspace: a (m, d_in), h1, h2, g1, g2 (m, H) each, ga (m, d_in), y (m) */
size_t qs_q2_net_ws(const struct qs_q2_net *n, int m)
{
    return (size_t)m * (2 * (size_t)n->d_in + 4 * (size_t)n->hidden + 1);
}

/* tanh on v[0..n) after adding the bias b (cols): a rational approximation (Eigen's ptanh:
 * x P(x^2) / Q(x^2), x clamped to +-7.9053), within 3.5e-7 of tanh everywhere and branch-free, so
 * the loop vectorises; glibc's tanhf was half of a transformer setting's time. */
/* GCC keeps floating-point compares out of vectorised loops while traps are assumed
 * (-ftrapping-math); no result changes without them. */
#if defined(__GNUC__) && !defined(__clang__)
#define Q2_VECTOR_CLAMP __attribute__((optimize("no-trapping-math")))
#else
#define Q2_VECTOR_CLAMP
#endif

Q2_VECTOR_CLAMP static void bias_tanh(float *v, const float *b, int m, int cols)
{
    const float a1 = 4.89352455891786e-03f, a3 = 6.37261928875436e-04f, a5 = 1.48572235717979e-05f,
                a7 = 5.12229709037114e-08f, a9 = -8.60467152213735e-11f,
                a11 = 2.00018790482477e-13f, a13 = -2.76076847742355e-16f,
                b0 = 4.89352518554385e-03f, b2 = 2.26843463243900e-03f, b4 = 1.18534705686654e-04f,
                b6 = 1.19825839466702e-06f, lim = 7.90531110763549805f;
    for (int i = 0; i < m; i++) {
        float *r = v + (size_t)i * cols;
        for (int k = 0; k < cols; k++) {
            float x = r[k] + b[k];
            x = x < lim ? x : lim;
            x = x > -lim ? x : -lim;
            float x2 = x * x;
            float p = ((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1);
            float q = ((b6 * x2 + b4) * x2 + b2) * x2 + b0;
            r[k] = x * p / q;
        }
    }
}

/* h1 = tanh(a w1^T + b1), h2 = tanh(h1 w2^T + b2), y = h2 w3 + b3 */
static void forward(const struct qs_q2_net *n, const float *a, int m, float *h1, float *h2,
                    float *y)
{
    int H = n->hidden;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, n->d_in, 1.0f, a, n->d_in, n->w1,
                n->d_in, 0.0f, h1, H);
    bias_tanh(h1, n->b1, m, H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, H, 1.0f, h1, H, n->w2, H, 0.0f, h2,
                H);
    bias_tanh(h2, n->b2, m, H);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, m, H, 1.0f, h2, H, n->w3, 1, 0.0f, y, 1);
    for (int i = 0; i < m; i++)
        y[i] += n->b3[0];
}

void qs_q2_net_forward(const struct qs_q2_net *n, const float *a, int m, float *y, float *ws)
{
    float *h1 = ws, *h2 = h1 + (size_t)m * n->hidden;
    forward(n, a, m, h1, h2, y);
}

/* column sums of g (m, c) into out (c), in double, rows in order */
static void col_sums(const float *g, int m, int c, float *out)
{
    for (int k = 0; k < c; k++) {
        double s = 0.0;
        for (int i = 0; i < m; i++)
            s += g[(size_t)i * c + k];
        out[k] = (float)s;
    }
}

double qs_q2_net_grad(const struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                      const int *site, const float *t, int m, float *g, float *ws)
{
    int H = n->hidden, D = n->d_in;
    float *a = ws, *h1 = a + (size_t)m * D, *h2 = h1 + (size_t)m * H, *g1 = h2 + (size_t)m * H,
          *g2 = g1 + (size_t)m * H, *ga = g2 + (size_t)m * H, *y = ga + (size_t)m * D;
    struct qs_q2_net gn = *n; /* g laid out as the parameters */
    gn.p = g;
    net_layout(&gn);
    qs_q2_net_inputs(n, st, x, site, m, a);
    forward(n, a, m, h1, h2, y);
    double loss = 0.0;
    for (int i = 0; i < m; i++) {
        double r = (double)y[i] - t[i];
        loss += r * r;
        y[i] = (float)(2.0 * r / m); /* dL/dy */
    }
    loss /= m;
    /* output layer */
    cblas_sgemv(CblasRowMajor, CblasTrans, m, H, 1.0f, h2, H, y, 1, 0.0f, gn.w3, 1);
    col_sums(y, m, 1, gn.b3);
    for (int i = 0; i < m; i++)
        for (int k = 0; k < H; k++) {
            float hv = h2[(size_t)i * H + k];
            g2[(size_t)i * H + k] = y[i] * n->w3[k] * (1.0f - hv * hv);
        }
    /* second hidden layer: dW2 = g2^T h1, dh1 = g2 w2 */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, H, m, 1.0f, g2, H, h1, H, 0.0f, gn.w2,
                H);
    col_sums(g2, m, H, gn.b2);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, H, H, 1.0f, g2, H, n->w2, H, 0.0f, g1,
                H);
    for (size_t k = 0; k < (size_t)m * H; k++)
        g1[k] *= 1.0f - h1[k] * h1[k];
    /* first layer: dW1 = g1^T a */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, D, m, 1.0f, g1, H, a, D, 0.0f, gn.w1,
                D);
    col_sums(g1, m, H, gn.b1);
    if (uses_emb(n->var)) {
        /* da = g1 w1; the embedding rows gather their elements' columns, in row order */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, H, 1.0f, g1, H, n->w1, D, 0.0f,
                    ga, D);
        memset(gn.es, 0,
               ((size_t)n->nsites * QS_Q2_EMB_SITE + (size_t)n->nkinds * QS_Q2_EMB_KIND) *
                   sizeof(float));
        for (int i = 0; i < m; i++) {
            const float *r = ga + (size_t)i * D + QS_Q2_NCHAN;
            float *es = gn.es + (size_t)site[i] * QS_Q2_EMB_SITE;
            float *ek = gn.ek + (size_t)st->kind[site[i]] * QS_Q2_EMB_KIND;
            for (int k = 0; k < QS_Q2_EMB_SITE; k++)
                es[k] += r[k];
            for (int k = 0; k < QS_Q2_EMB_KIND; k++)
                ek[k] += r[QS_Q2_EMB_SITE + k];
        }
    }
    return loss;
}

int qs_q2_net_fit(struct qs_q2_net *n, const struct qs_q2_sites *st, const float *x,
                  const int *site, const float *t, int m, int epochs, int batch, double lr,
                  uint64_t seed, _Atomic int *cancel, double *loss, qs_err *e)
{
    if (m < 1 || batch < 1 || epochs < 1)
        return qs_errf(e, "q2 corrector: nothing to fit");
    int B = batch < m ? batch : m, np = n->np;
    float *g = qs_alloc((size_t)np * 3, sizeof(float), "the corrector's optimiser", e);
    float *ws =
        g ? qs_alloc(qs_q2_net_ws(n, B), sizeof(float), "the corrector's workspace", e) : NULL;
    float *bx = ws ? qs_alloc((size_t)B * (QS_Q2_NCHAN + 1), sizeof(float), "a batch", e) : NULL;
    int *idx = bx ? qs_alloc((size_t)m + (size_t)B, sizeof(int), "a batch", e) : NULL;
    if (!idx) {
        free(g);
        free(ws);
        free(bx);
        return -1;
    }
    float *mo = g + np, *vo = mo + np, *bt = bx + (size_t)B * QS_Q2_NCHAN;
    int *bs = idx + m;
    for (int i = 0; i < m; i++)
        idx[i] = i;
    qs_rng r;
    qs_rng_seed(&r, seed ^ 0xadaadaULL);
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    long step = 0;
    double last = NAN;
    int rc = 0;
    for (int ep = 0; ep < epochs && rc == 0; ep++) {
        qs_rng_shuffle(&r, idx, m);
        double sum = 0.0;
        int nb = 0;
        for (int off = 0; off < m; off += B) {
            int k = m - off < B ? m - off : B;
            for (int i = 0; i < k; i++) {
                int j = idx[off + i];
                memcpy(bx + (size_t)i * QS_Q2_NCHAN, x + (size_t)j * QS_Q2_NCHAN,
                       QS_Q2_NCHAN * sizeof(float));
                bs[i] = site[j];
                bt[i] = t[j];
            }
            sum += qs_q2_net_grad(n, st, bx, bs, bt, k, g, ws);
            nb++;
            step++;
            double c1 = 1.0 - pow(b1, (double)step), c2 = 1.0 - pow(b2, (double)step);
            for (int q = 0; q < np; q++) {
                mo[q] = (float)(b1 * mo[q] + (1 - b1) * g[q]);
                vo[q] = (float)(b2 * vo[q] + (1 - b2) * (double)g[q] * g[q]);
                n->p[q] -= (float)(lr * (mo[q] / c1) / (sqrt(vo[q] / c2) + eps));
            }
        }
        last = sum / nb;
        if (!isfinite(last))
            rc = qs_errf(e, "q2 corrector (%s): the training loss is not finite",
                         qs_q2_variant_name(n->var));
        else if (cancel && *cancel)
            rc = qs_errf(e, "cancelled");
    }
    if (loss)
        *loss = last;
    free(g);
    free(ws);
    free(bx);
    free(idx);
    return rc;
}

/* ---- one setting ---------------------------------------------------------------------------- */

void qs_q2_opts_default(struct qs_q2_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_fit = 65536;
    o->n_eval = 65536;
    o->epochs = 8;
    o->batch = 256;
    o->hidden = 32;
    o->lr = 2e-3;
}

void qs_q2_setting_clear(struct qs_q2_setting *s)
{
    if (!s)
        return;
    free(s->sites);
    s->sites = NULL;
}

/* Elements drawn from the model's sites: x (n, QS_Q2_NCHAN) raw [u, log10 ||E_j||, log10 s_j,
 * log10 ||W_j||], site, t. */
struct sample {
    int n, cap;
    float *x, *t;
    int *site;
};

static void sample_free(struct sample *s)
{
    free(s->x);
    free(s->t);
    free(s->site);
    memset(s, 0, sizeof *s);
}

static int sample_alloc(struct sample *s, int cap, qs_err *e)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    s->x = qs_alloc((size_t)cap * QS_Q2_NCHAN, sizeof(float), "the corrector's sample", e);
    s->t = s->x ? qs_alloc((size_t)cap, sizeof(float), "the corrector's sample", e) : NULL;
    s->site = s->t ? qs_alloc((size_t)cap, sizeof(int), "the corrector's sample", e) : NULL;
    if (!s->site) {
        sample_free(s);
        return -1;
    }
    return 0;
}

/* Draws q elements of site i uniformly (with replacement) from yf, yq (rows, out). */
static void draw(struct sample *s, qs_rng *r, int i, const float *yf, const float *yq, int rows,
                 int out, const float *chan, double rms, int q)
{
    for (int k = 0; k < q && s->n < s->cap; k++) {
        int row = (int)qs_rng_below(r, (uint64_t)rows), j = (int)qs_rng_below(r, (uint64_t)out);
        size_t at = (size_t)row * out + j;
        float *x = s->x + (size_t)s->n * QS_Q2_NCHAN;
        x[0] = (float)(yq[at] / rms);
        memcpy(x + 1, chan + (size_t)j * 3, 3 * sizeof(float));
        s->t[s->n] = (float)((yf[at] - yq[at]) / rms);
        s->site[s->n++] = i;
    }
}

/* Per-site state kept between the statistics pass and the downstream runs. */
struct site_tab {
    int out;
    double rms;
    float *chan; /* (out, 3) raw log10 channel statistics; standardised in place later */
};

/* The shared corrector applied at every site (bench site_out hook). */
struct apply_ctx {
    const struct qs_q2_net *net;
    const struct qs_q2_sites *st;
    const struct site_tab *tab;
    double mu_u, sd_u, mu_t, sd_t;
    float *x, *a, *y, *ws;
    int *site;
    int cap; /* elements per chunk */
};

static int apply_site(void *u, int s, float *y, int n, int out, qs_err *e)
{
    (void)e;
    struct apply_ctx *c = u;
    const struct site_tab *tb = &c->tab[s];
    size_t len = (size_t)n * out;
    for (size_t off = 0; off < len; off += (size_t)c->cap) {
        int k = len - off < (size_t)c->cap ? (int)(len - off) : c->cap;
        for (int i = 0; i < k; i++) {
            size_t at = off + (size_t)i;
            int j = (int)(at % (size_t)out);
            float *x = c->x + (size_t)i * QS_Q2_NCHAN;
            x[0] = (float)((y[at] / tb->rms - c->mu_u) / c->sd_u);
            memcpy(x + 1, tb->chan + (size_t)j * 3, 3 * sizeof(float));
            c->site[i] = s;
        }
        qs_q2_net_inputs(c->net, c->st, c->x, c->site, k, c->a);
        qs_q2_net_forward(c->net, c->a, k, c->y, c->ws);
        for (int i = 0; i < k; i++)
            y[off + (size_t)i] += (float)(tb->rms * (c->mu_t + c->sd_t * c->y[i]));
    }
    return 0;
}

/* The kind of site i: an MLP's hidden layers 0, its output layer 1; a transformer site its
 * position in its block, the head one past the last. */
static int site_kind(const struct qs_bench *b, int i, int *nkinds)
{
    int S = qs_bench_nunits(b);
    if (!b->lm) {
        *nkinds = 2;
        return i == S - 1;
    }
    const struct qs_lm *m = b->lm;
    int per = m->n_layer > 0 ? (m->nsites - 1) / m->n_layer : 0;
    *nkinds = per + 1;
    int blk = qs_lm_site_block(m, i);
    return blk >= m->n_layer ? per : i - qs_lm_block_first_site(m, blk);
}

static double mean_sd(const float *v, size_t n, size_t stride, double *sd)
{
    double s = 0.0, s2 = 0.0;
    for (size_t i = 0; i < n; i++)
        s += v[i * stride];
    double mu = n ? s / n : 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = v[i * stride] - mu;
        s2 += d * d;
    }
    *sd = n > 1 ? sqrt(s2 / n) : 0.0;
    if (!(*sd > 1e-12))
        *sd = 1.0;
    return mu;
}

static double lg(double v)
{
    return log10(v > 1e-30 ? v : 1e-30);
}

/* Site statistics (features and channel statistics) of site i; fills tb, the raw features f. */
static int site_stats(struct qs_bench *b, int i, struct site_tab *tb, double *f, const float *yf,
                      const float *yq, int nc, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    const float *uw = qs_bench_w(b, i, e);
    if (!uw)
        return -1;
    const struct qs_layer_state *ls = &b->ls[i];
    int out = u.out, in = u.in;
    tb->out = out;
    if (!(tb->chan = qs_alloc((size_t)out * 3, sizeof(float), "channel statistics", e)))
        return -1;
    /* rows of E = W - Q(W) and of W; the quantizer's block scales */
    double *srow = qs_calloc((size_t)out, sizeof *srow);
    if (!srow)
        return qs_errf(e, "out of memory");
    struct qs_quantizer *qz = NULL;
    int have_scales =
        ls->wquant && qs_quantizer_new(&ls->wfmt, &ls->wopt, uw, out, in, &qz, NULL) == 0;
    double ssum = 0.0, ssq = 0.0;
    long sn = 0;
    if (have_scales) {
        int blk = qs_quantizer_block(qz), shared = qs_quantizer_shared(qz);
        if (blk < 1)
            blk = in;
        for (int r = 0; r < out && have_scales; r++) {
            double acc = 0.0;
            int nb = 0;
            for (int c0 = 0; c0 < in; c0 += blk) {
                int w = in - c0 < blk ? in - c0 : blk;
                struct qs_qblock q;
                if (qs_quantizer_fit(qz, uw + (size_t)r * in + c0, w, r, c0, &q, NULL) < 0) {
                    have_scales = 0;
                    break;
                }
                acc += (double)q.s * q.s;
                nb++;
                if (!shared || (r == 0 && c0 == 0)) {
                    ssum += q.s;
                    ssq += (double)q.s * q.s;
                    sn++;
                }
            }
            srow[r] = nb ? sqrt(acc / nb) : 0.0;
        }
        qs_quantizer_free(qz);
    }
    const float *wq = ls->wquant ? qs_site_wq(b, i, e) : NULL;
    if (ls->wquant && !wq) {
        free(srow);
        return -1;
    }
    double e2 = 0.0, w2 = 0.0;
    for (int r = 0; r < out; r++) {
        double er = 0.0, wr = 0.0;
        for (int c = 0; c < in; c++) {
            double wv = uw[(size_t)r * in + c], d = wq ? wv - wq[(size_t)r * in + c] : 0;
            er += d * d;
            wr += wv * wv;
        }
        e2 += er;
        w2 += wr;
        /* a format without a block quantizer (the ggml block types, none): the step of a
         * uniform quantizer with the row's error, sqrt(12 mean e^2) */
        if (!have_scales)
            srow[r] = sqrt(12.0 * er / in);
        tb->chan[(size_t)r * 3 + 0] = (float)lg(sqrt(er));
        tb->chan[(size_t)r * 3 + 1] = (float)lg(srow[r]);
        tb->chan[(size_t)r * 3 + 2] = (float)lg(sqrt(wr));
    }
    if (!have_scales) {
        ssum = ssq = 0.0;
        for (int r = 0; r < out; r++) {
            ssum += srow[r];
            ssq += srow[r] * srow[r];
        }
        sn = out;
    }
    free(srow);
    double smean = sn ? ssum / sn : 0.0, svar = sn ? ssq / sn - smean * smean : 0.0;
    f[0] = lg(w2 > 0 ? sqrt(e2 / w2) : 0.0);
    /* pre-activation error on the calibration split */
    double num = 0.0, den = 0.0, q2 = 0.0;
    size_t len = (size_t)nc * out;
    for (size_t k = 0; k < len; k++) {
        double d = (double)yq[k] - yf[k];
        num += d * d;
        den += (double)yf[k] * yf[k];
        q2 += (double)yq[k] * yq[k];
    }
    tb->rms = len && q2 > 0 ? sqrt(q2 / len) : 1.0;
    f[1] = num > 0 && den > 0 ? log10(den / num) : 30.0; /* dB / 10; an exact site: 300 dB */
    f[2] = lg(len ? sqrt(num / len) : 0.0);
    /* the weight error's spectrum against its quantizer-matched null */
    struct qs_spectrum sp;
    if (qs_analysis_spectrum_ex(b, i, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, QS_SPEC_NULL, &sp, e) < 0)
        return qs_err_prefix(e, u.name);
    int mn = out < in ? out : in;
    f[3] = sp.st.zero || !(sp.st.null_edge > 0) ? 0.0 : sp.st.top / sp.st.null_edge;
    f[4] = sp.st.zero ? 0.0 : sp.st.stable_rank / mn;
    f[5] = sp.st.zero ? 0.0 : (sp.st.k90 < 0 ? 1.0 : (double)sp.st.k90 / mn);
    qs_spectrum_free(&sp);
    f[6] = lg(smean);
    f[7] = smean > 0 && svar > 0 ? sqrt(svar) / smean : 0.0;
    /* the site's float inputs on the calibration split */
    const float *x;
    int n;
    if (qs_bench_inputs(b, QS_CALIB, 0, i, &x, &n, e) < 0)
        return -1;
    double amax = 0.0, x2 = 0.0;
    size_t xl = (size_t)n * in;
    for (size_t k = 0; k < xl; k++) {
        double v = fabs(x[k]);
        if (v > amax)
            amax = v;
        x2 += v * v;
    }
    f[8] = lg(amax);
    f[9] = lg(xl ? sqrt(x2 / xl) : 0.0);
    return 0;
}

static void progress(const struct qs_q2_opts *o, const char *model, uint64_t seed, const char *what,
                     double frac)
{
    if (!o->progress)
        return;
    char buf[640];
    const char *base = strrchr(model, '/');
    snprintf(buf, sizeof buf, "study q2 %s seed %llu: %s", base ? base + 1 : model,
             (unsigned long long)seed, what);
    o->progress(o->progress_ctx, buf, frac);
}

/* The held-out task loss with the corrector net applied at every site (NULL: none). */
static int downstream(struct qs_bench *b, struct apply_ctx *c, double *loss, qs_err *e)
{
    struct qs_metric m;
    if (c) {
        b->site_out = apply_site;
        b->site_out_ctx = c;
    }
    int rc = qs_bench_run_ex(b, QS_TEST, ~0ULL, ~0ULL, &m, NULL, NULL, NULL, e);
    b->site_out = NULL;
    b->site_out_ctx = NULL;
    *loss = m.loss;
    return rc;
}

/* The setting's own bench reports window by window (streams, held-out runs): its progress
 * goes on to the study's, and the study's cancel flag cancels it there. */
struct relay {
    const struct qs_q2_opts *o;
    struct qs_bench *b;
    const char *model;
    uint64_t seed;
};

static void relay_progress(void *u, const char *what, double frac)
{
    struct relay *r = u;
    if (r->o->cancel && *r->o->cancel)
        r->b->cancel = 1;
    progress(r->o, r->model, r->seed, what, frac);
}

void qs_q2_bench_opts(const struct qs_q2_opts *o, struct qs_q1_opts *q1)
{
    memset(q1, 0, sizeof *q1);
    q1->fmt = o->fmt;
    q1->opt = o->opt;
    q1->lm_fmt = o->lm_fmt;
    q1->lm_opt = o->lm_opt;
}

int qs_q2_run_setting(const struct qs_q2_opts *o, const char *arg, uint64_t seed,
                      struct qs_q2_setting *s, qs_err *e)
{
    memset(s, 0, sizeof *s);
    s->seed = seed;
    s->verdict = "unclear";
    struct qs_q1_opts q1;
    qs_q2_bench_opts(o, &q1);
    struct qs_bench *b = NULL;
    if (qs_study_open(&q1, arg, seed, &b, s->model, sizeof s->model, s->data, sizeof s->data, e) <
        0)
        return -1;
    if (b->lm && o->heldout_tokens > 0) { /* the held-out budget, before any run */
        long w = o->heldout_tokens / b->lm->ctx;
        b->test_windows = w > 0 ? (w < (1L << 30) ? (int)w : 1 << 30) : 1;
    }
    struct relay rl = {o, b, s->model, seed};
    b->progress = relay_progress;
    b->progress_ctx = &rl;
    s->lm = b->lm != NULL;
    qs_study_setting_words(&q1, b, s->arch, s->format, s->options);
    int S = qs_bench_nunits(b), nkinds = 1, rc = -1;
    s->nsites = S;
    struct site_tab *tab = qs_calloc((size_t)S, sizeof *tab);
    double *feat = qs_calloc((size_t)S * QS_Q2_NFEAT, sizeof *feat);
    int *kind = qs_calloc((size_t)S, sizeof *kind);
    float *featz = qs_calloc((size_t)S * QS_Q2_NFEAT, sizeof *featz);
    s->sites = qs_calloc((size_t)S, sizeof *s->sites);
    struct sample fit = {0}, ev = {0};
    struct qs_q2_net nets[QS_Q2_NVAR];
    memset(nets, 0, sizeof nets);
    float *ws = NULL, *a = NULL, *yh = NULL, *ax = NULL, *aa = NULL, *ay = NULL, *aws = NULL;
    int *asite = NULL;
    if (!tab || !feat || !kind || !featz || !s->sites) {
        qs_errf(e, "out of memory");
        goto out;
    }
    struct qs_eval evl;
    if (qs_bench_eval(b, &evl, e) < 0)
        goto out;
    s->float_loss = b->lm ? b->lm_float_loss : evl.f.loss; /* a transformer's: the gate's */
    s->float_acc = evl.f.acc;
    s->quant_acc = evl.q.acc;
    s->gate_pass = evl.gate_pass;
    s->bits_per_weight = evl.bits_w;
    if (qs_bench_update(b, e) < 0)
        goto out;
    int qf = o->n_fit / S > 0 ? o->n_fit / S : 1, qe = o->n_eval / S > 0 ? o->n_eval / S : 1;
    if (sample_alloc(&fit, qf * S, e) < 0 || sample_alloc(&ev, qe * S, e) < 0)
        goto out;
    /* pass 1: per site, its statistics and its share of both samples */
    for (int i = 0; i < S; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        struct qs_q2_site *rs = &s->sites[i];
        snprintf(rs->name, sizeof rs->name, "%s", u.name);
        rs->index = i;
        rs->in = u.in;
        rs->out = u.out;
        kind[i] = rs->kind = site_kind(b, i, &nkinds);
        float *yf = NULL, *yq = NULL;
        int nc = 0, nt = 0, ok = 0;
        if (qs_bench_preact(b, QS_CALIB, 0, i, &yf, &nc, e) == 0 &&
            qs_bench_preact(b, QS_CALIB, 1, i, &yq, &nc, e) == 0 &&
            site_stats(b, i, &tab[i], feat + (size_t)i * QS_Q2_NFEAT, yf, yq, nc, e) == 0) {
            qs_rng r;
            qs_rng_seed(&r, seed * 0x9e3779b97f4a7c15ULL + 2 * (uint64_t)i + 1);
            draw(&fit, &r, i, yf, yq, nc, u.out, tab[i].chan, tab[i].rms, qf);
            free(yf);
            free(yq);
            yf = yq = NULL;
            if (qs_bench_preact(b, QS_TEST, 0, i, &yf, &nt, e) == 0 &&
                qs_bench_preact(b, QS_TEST, 1, i, &yq, &nt, e) == 0) {
                qs_rng_seed(&r, seed * 0x9e3779b97f4a7c15ULL + 2 * (uint64_t)i + 2);
                draw(&ev, &r, i, yf, yq, nt, u.out, tab[i].chan, tab[i].rms, qe);
                ok = 1;
            }
        }
        free(yf);
        free(yq);
        if (!ok)
            goto out;
        rs->rms = tab[i].rms;
        memcpy(rs->feat, feat + (size_t)i * QS_Q2_NFEAT, sizeof rs->feat);
        progress(o, s->model, seed, "site statistics", (double)(i + 1) / S);
        if (o->cancel && *o->cancel) {
            qs_errf(e, "cancelled");
            goto out;
        }
    }
    s->n_fit = fit.n;
    s->n_eval = ev.n;
    /* standardising: features over the sites; channel statistics over every channel of every
     * site; u and t over the fitting sample */
    for (int k = 0; k < QS_Q2_NFEAT; k++) {
        double mu = 0.0, v = 0.0;
        for (int i = 0; i < S; i++)
            mu += feat[(size_t)i * QS_Q2_NFEAT + k];
        mu /= S;
        for (int i = 0; i < S; i++) {
            double d = feat[(size_t)i * QS_Q2_NFEAT + k] - mu;
            v += d * d;
        }
        double sd = S > 1 ? sqrt(v / S) : 0.0;
        if (!(sd > 1e-12))
            sd = 1.0;
        for (int i = 0; i < S; i++)
            featz[(size_t)i * QS_Q2_NFEAT + k] =
                (float)((feat[(size_t)i * QS_Q2_NFEAT + k] - mu) / sd);
    }
    double cmu[3], csd[3];
    for (int k = 0; k < 3; k++) {
        double sum = 0.0, s2 = 0.0;
        long cnt = 0;
        for (int i = 0; i < S; i++)
            for (int j = 0; j < tab[i].out; j++) {
                sum += tab[i].chan[(size_t)j * 3 + k];
                cnt++;
            }
        cmu[k] = sum / cnt;
        for (int i = 0; i < S; i++)
            for (int j = 0; j < tab[i].out; j++) {
                double d = tab[i].chan[(size_t)j * 3 + k] - cmu[k];
                s2 += d * d;
            }
        csd[k] = sqrt(s2 / cnt);
        if (!(csd[k] > 1e-12))
            csd[k] = 1.0;
    }
    for (int i = 0; i < S; i++)
        for (int j = 0; j < tab[i].out; j++)
            for (int k = 0; k < 3; k++)
                tab[i].chan[(size_t)j * 3 + k] =
                    (float)((tab[i].chan[(size_t)j * 3 + k] - cmu[k]) / csd[k]);
    double sd_u, sd_t;
    double mu_u = mean_sd(fit.x, (size_t)fit.n, QS_Q2_NCHAN, &sd_u);
    double mu_t = mean_sd(fit.t, (size_t)fit.n, 1, &sd_t);
    struct sample *both[2] = {&fit, &ev};
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < both[p]->n; i++) {
            float *x = both[p]->x + (size_t)i * QS_Q2_NCHAN;
            x[0] = (float)((x[0] - mu_u) / sd_u);
            for (int k = 0; k < 3; k++)
                x[1 + k] = (float)((x[1 + k] - cmu[k]) / csd[k]);
        }
    float *tz = qs_alloc((size_t)fit.n, sizeof(float), "the corrector's sample", e);
    if (!tz)
        goto out;
    for (int i = 0; i < fit.n; i++)
        tz[i] = (float)((fit.t[i] - mu_t) / sd_t);
    struct qs_q2_sites st = {S, nkinds, kind, featz};
    /* fit each variant, judge it on the held-out sample */
    double none = 0.0;
    for (int i = 0; i < ev.n; i++)
        none += (double)ev.t[i] * ev.t[i];
    s->mse_none = none / ev.n;
    for (int i = 0; i < S; i++) {
        double sum = 0.0;
        int cnt = 0;
        for (int k = 0; k < ev.n; k++)
            if (ev.site[k] == i) {
                sum += (double)ev.t[k] * ev.t[k];
                cnt++;
            }
        s->sites[i].mse_none = cnt ? sum / cnt : NAN;
    }
    enum { CH = 4096 };
    int maxd = QS_Q2_NCHAN + QS_Q2_EMB_SITE + QS_Q2_EMB_KIND + QS_Q2_NFEAT;
    a = qs_alloc((size_t)CH * maxd, sizeof(float), "the corrector's inputs", e);
    yh = a ? qs_alloc((size_t)CH, sizeof(float), "the corrector's outputs", e) : NULL;
    if (!yh) {
        free(tz);
        goto out;
    }
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char what[96];
        snprintf(what, sizeof what, "fitting %s", var_names[v]);
        progress(o, s->model, seed, what, (double)v / QS_Q2_NVAR);
        if (qs_q2_net_init(&nets[v], (enum qs_q2_variant)v, o->hidden, S, nkinds, QS_Q2_NFEAT,
                           seed * 31 + (uint64_t)v, e) < 0 ||
            qs_q2_net_fit(&nets[v], &st, fit.x, fit.site, tz, fit.n, o->epochs, o->batch, o->lr,
                          seed * 31 + (uint64_t)v, o->cancel, &s->fit_loss[v], e) < 0) {
            free(tz);
            goto out;
        }
        free(ws);
        if (!(ws = qs_alloc(qs_q2_net_ws(&nets[v], CH), sizeof(float), "workspace", e))) {
            free(tz);
            goto out;
        }
        double tot = 0.0, *ps = qs_calloc((size_t)S, sizeof *ps);
        int *pc = qs_calloc((size_t)S, sizeof *pc);
        if (!ps || !pc) {
            free(ps);
            free(pc);
            free(tz);
            qs_errf(e, "out of memory");
            goto out;
        }
        for (int off = 0; off < ev.n; off += CH) {
            int k = ev.n - off < CH ? ev.n - off : CH;
            qs_q2_net_inputs(&nets[v], &st, ev.x + (size_t)off * QS_Q2_NCHAN, ev.site + off, k, a);
            qs_q2_net_forward(&nets[v], a, k, yh, ws);
            for (int i = 0; i < k; i++) {
                double d = ev.t[off + i] - (mu_t + sd_t * yh[i]);
                tot += d * d;
                ps[ev.site[off + i]] += d * d;
                pc[ev.site[off + i]]++;
            }
        }
        s->mse[v] = tot / ev.n;
        for (int i = 0; i < S; i++)
            s->sites[i].mse[v] = pc[i] ? ps[i] / pc[i] : NAN;
        free(ps);
        free(pc);
    }
    free(tz);
    /* downstream: the held-out loss with each corrector at every site */
    progress(o, s->model, seed, "held-out loss, quantized", 0.0);
    if (downstream(b, NULL, &s->quant_loss, e) < 0)
        goto out;
    ax = qs_alloc((size_t)CH * QS_Q2_NCHAN, sizeof(float), "the corrector's inputs", e);
    aa = ax ? qs_alloc((size_t)CH * maxd, sizeof(float), "the corrector's inputs", e) : NULL;
    ay = aa ? qs_alloc((size_t)CH, sizeof(float), "the corrector's outputs", e) : NULL;
    asite = ay ? qs_alloc((size_t)CH, sizeof(int), "the corrector's inputs", e) : NULL;
    if (!asite)
        goto out;
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char what[96];
        snprintf(what, sizeof what, "held-out loss with %s", var_names[v]);
        progress(o, s->model, seed, what, (double)(v + 1) / (QS_Q2_NVAR + 1));
        free(aws);
        if (!(aws = qs_alloc(qs_q2_net_ws(&nets[v], CH), sizeof(float), "workspace", e)))
            goto out;
        struct apply_ctx c = {&nets[v], &st, tab, mu_u, sd_u,  mu_t, sd_t,
                              ax,       aa,  ay,  aws,  asite, CH};
        if (downstream(b, &c, &s->loss_corr[v], e) < 0)
            goto out;
        s->loss_gain[v] = s->quant_loss - s->loss_corr[v];
        if (s->loss_gain[v] < 0)
            s->unstable |= 1 << v;
        if (o->cancel && *o->cancel) {
            qs_errf(e, "cancelled");
            goto out;
        }
    }
    s->improvement =
        s->mse[QS_Q2_EMB] > 0 ? (s->mse[QS_Q2_EMB] - s->mse[QS_Q2_FEAT]) / s->mse[QS_Q2_EMB] : NAN;
    s->verdict = qs_q2_verdict(s->mse[QS_Q2_EMB], s->mse[QS_Q2_FEAT], s->loss_gain);
    rc = 0;
out:
    if (rc < 0) {
        qs_q2_setting_clear(s);
        qs_err_prefix(e, s->model[0] ? s->model : arg);
    }
    for (int i = 0; tab && i < S; i++)
        free(tab[i].chan);
    for (int v = 0; v < QS_Q2_NVAR; v++)
        qs_q2_net_free(&nets[v]);
    free(tab);
    free(feat);
    free(kind);
    free(featz);
    sample_free(&fit);
    sample_free(&ev);
    free(ws);
    free(a);
    free(yh);
    free(ax);
    free(aa);
    free(ay);
    free(aws);
    free(asite);
    qs_bench_free(b);
    return rc;
}

/* ---- the study and its report ---------------------------------------------------------------- */

void qs_q2_summarize(const struct qs_q2_setting *s, int n, struct qs_q2_summary *out)
{
    memset(out, 0, sizeof *out);
    out->nsettings = n;
    out->impr_min = INFINITY;
    out->impr_max = -INFINITY;
    int k = 0;
    for (int i = 0; i < n; i++) {
        out->nlm += s[i].lm;
        if (!s[i].gate_pass) {
            out->nexcluded++;
            continue;
        }
        out->nsupported += !strcmp(s[i].verdict, "supported");
        out->nrefuted += !strcmp(s[i].verdict, "refuted");
        out->nunclear += !strcmp(s[i].verdict, "unclear");
        out->nunstable += s[i].unstable != 0;
        for (int v = 0; v < QS_Q2_NVAR; v++) {
            out->unstable_var[v] += (s[i].unstable >> v) & 1;
            out->gain_mean[v] += s[i].loss_gain[v];
            out->mse_mean[v] += s[i].mse[v];
        }
        out->mse_none_mean += s[i].mse_none;
        out->impr_mean += s[i].improvement;
        if (s[i].improvement < out->impr_min)
            out->impr_min = s[i].improvement;
        if (s[i].improvement > out->impr_max)
            out->impr_max = s[i].improvement;
        k++;
    }
    if (!k) {
        out->impr_mean = out->impr_min = out->impr_max = out->mse_none_mean = NAN;
        for (int v = 0; v < QS_Q2_NVAR; v++)
            out->gain_mean[v] = out->mse_mean[v] = NAN;
        return;
    }
    out->impr_mean /= k;
    out->mse_none_mean /= k;
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        out->gain_mean[v] /= k;
        out->mse_mean[v] /= k;
    }
}

void qs_q2_free(struct qs_q2 *q)
{
    if (!q)
        return;
    for (int i = 0; i < q->nsettings; i++)
        qs_q2_setting_clear(&q->settings[i]);
    free(q->settings);
    memset(q, 0, sizeof *q);
}

int qs_study_q2(const struct qs_q2_opts *o, struct qs_q2 *q, qs_err *e)
{
    memset(q, 0, sizeof *q);
    if (o->nmodels < 1 || o->nseeds < 1)
        return qs_errf(e, "study q2: need at least one model and one seed");
    int n = o->nmodels * o->nseeds;
    if (!(q->settings = qs_calloc((size_t)n, sizeof *q->settings)))
        return qs_errf(e, "out of memory");
    for (int mi = 0; mi < o->nmodels; mi++)
        for (int si = 0; si < o->nseeds; si++) {
            if (qs_q2_run_setting(o, o->models[mi], o->seeds[si], &q->settings[q->nsettings], e) <
                0) {
                qs_q2_free(q);
                return -1;
            }
            q->nsettings++;
            if (o->progress)
                o->progress(o->progress_ctx, "study q2", (double)q->nsettings / n);
        }
    qs_q2_aggregate(q);
    return 0;
}

void qs_q2_aggregate(struct qs_q2 *q)
{
    qs_q2_summarize(q->settings, q->nsettings, &q->sum);
}

/* ---- CSV ----------------------------------------------------------------------------------- */

static FILE *open_csv(qs_outfile *of, const char *prefix, const char *what,
                      const struct qs_q2_opts *o, qs_err *e)
{
    char head[400], ht[48] = "";
    if (o->heldout_tokens > 0)
        snprintf(ht, sizeof ht, " heldout_tokens=%ld", o->heldout_tokens);
    snprintf(head, sizeof head,
             "regime=weight-only corrector=mlp %d-%d-1 tanh adam lr=%g epochs=%d batch=%d "
             "n_fit=%d n_eval=%d%s",
             o->hidden, o->hidden, o->lr, o->epochs, o->batch, o->n_fit, o->n_eval, ht);
    return qs_study_open_csv(of, prefix, what, "q2", head, e);
}

int qs_q2_write_csv(const struct qs_q2_setting *s, int n, const struct qs_q2_opts *o,
                    const char *prefix, qs_err *e)
{
    qs_outfile of;
    FILE *f = open_csv(&of, prefix, "master_summary", o, e);
    if (!f)
        return -1;
    qs_study_csv_setting_header(f);
    const char *h[] = {"sites",           "float_loss", "quant_loss", "float_acc", "quant_acc",
                       "bits_per_weight", "n_fit",      "n_eval",     "mse_none"};
    for (size_t k = 0; k < sizeof h / sizeof *h; k++)
        qs_csv_field(f, h[k], 0);
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char k[64];
        snprintf(k, sizeof k, "mse_%s", var_names[v]);
        qs_csv_field(f, k, 0);
    }
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char k[64];
        snprintf(k, sizeof k, "loss_gain_%s", var_names[v]);
        qs_csv_field(f, k, 0);
    }
    qs_csv_field(f, "improvement", 0);
    qs_csv_field(f, "unstable", 0);
    qs_csv_field(f, "verdict", 0);
    fputc('\n', f);
    for (int i = 0; i < n; i++) {
        const struct qs_q2_setting *x = &s[i];
        qs_study_csv_setting(f, x->model, x->data, x->seed, x->arch, x->format, x->options,
                             x->gate_pass);
        qs_csv_int(f, x->nsites);
        qs_csv_num(f, x->float_loss);
        qs_csv_num(f, x->quant_loss);
        qs_csv_num(f, x->float_acc);
        qs_csv_num(f, x->quant_acc);
        qs_csv_num(f, x->bits_per_weight);
        qs_csv_int(f, x->n_fit);
        qs_csv_int(f, x->n_eval);
        qs_csv_num(f, x->mse_none);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            qs_csv_num(f, x->mse[v]);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            qs_csv_num(f, x->loss_gain[v]);
        qs_csv_num(f, x->improvement);
        char ub[64] = "";
        for (int v = 0; v < QS_Q2_NVAR; v++)
            if ((x->unstable >> v) & 1)
                snprintf(ub + strlen(ub), sizeof ub - strlen(ub), "%s%s", ub[0] ? " " : "",
                         var_names[v]);
        qs_csv_field(f, ub, 0);
        qs_csv_field(f, x->verdict, 0);
        fputc('\n', f);
    }
    if (qs_out_commit(&of, e) < 0)
        return -1;
    if (!(f = open_csv(&of, prefix, "sites", o, e)))
        return -1;
    const char *hs[] = {"model", "seed", "site", "index", "kind", "in", "out", "rms"};
    for (size_t k = 0; k < sizeof hs / sizeof *hs; k++)
        qs_csv_field(f, hs[k], k == 0);
    for (int k = 0; k < QS_Q2_NFEAT; k++)
        qs_csv_field(f, feat_names[k], 0);
    qs_csv_field(f, "mse_none", 0);
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char k[64];
        snprintf(k, sizeof k, "mse_%s", var_names[v]);
        qs_csv_field(f, k, 0);
    }
    fputc('\n', f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < s[i].nsites && s[i].sites; j++) {
            const struct qs_q2_site *x = &s[i].sites[j];
            qs_csv_field(f, s[i].model, 1);
            qs_csv_int(f, (long long)s[i].seed);
            qs_csv_field(f, x->name, 0);
            qs_csv_int(f, x->index);
            qs_csv_int(f, x->kind);
            qs_csv_int(f, x->in);
            qs_csv_int(f, x->out);
            qs_csv_num(f, x->rms);
            for (int k = 0; k < QS_Q2_NFEAT; k++)
                qs_csv_num(f, x->feat[k]);
            qs_csv_num(f, x->mse_none);
            for (int v = 0; v < QS_Q2_NVAR; v++)
                qs_csv_num(f, x->mse[v]);
            fputc('\n', f);
        }
    return qs_out_commit(&of, e);
}
