/* test_q2.c - the Q2 study's corrector and verdict.
 *
 * - gradient: the corrector's analytic gradient (float, SGEMM) against central differences of
 *   an independent float64 forward written here (plain loops, libm tanh), for every variant;
 * - verdict: the rule at its thresholds;
 * - learning: a synthetic target carried by the site features (sites never seen in fitting:
 *   only features can transfer) is learnt by features_only and not by embedding_only, and one
 *   carried by the site identity (every site with the same features) the other way round;
 * - the bench's per-site output hook (site_out) is applied where the corrector needs it: on the
 *   digits MLP a hook that adds c to the output layer's class-0 logit gives the cross-entropy
 *   computed here from the unhooked logits;
 * - one setting on the digits MLP: its record is consistent with eval (quant_loss) and with
 *   itself (loss_gain = quant_loss - loss_corr), and a replay gives the same bits;
 * - the held-out budget (heldout_tokens=) on tiny-gpt2: the setting's float and quantized losses
 *   quantized loss is the mean of the first W per-window losses of an uncapped bench
 *   (qs_bench_run_ex's unit_loss, a path that never reads the cap) and differs from the whole
 *   split's; the float loss and the gate stay the whole split's. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bundle.h"
#include "qscope/analysis.h"
#include "qscope/q2.h"
#include "qscope/study.h"
#include "test.h"

/* ---- float64 reference forward ---- */

static double ref_out(const struct qs_q2_net *n, const double *p, const struct qs_q2_sites *st,
                      const float *x, int site)
{
    int H = n->hidden, D = n->d_in;
    /* the parameter offsets of qs_q2_net (q2.h) */
    const double *w1 = p, *b1 = w1 + H * D, *w2 = b1 + H, *b2 = w2 + H * H, *w3 = b2 + H,
                 *b3 = w3 + H, *es = b3 + 1,
                 *ek = es + (n->var != QS_Q2_FEAT ? n->nsites * QS_Q2_EMB_SITE : 0);
    double a[64], h1[64], h2[64];
    int c = 0;
    for (int k = 0; k < QS_Q2_NCHAN; k++)
        a[c++] = x[k];
    if (n->var != QS_Q2_FEAT) {
        for (int k = 0; k < QS_Q2_EMB_SITE; k++)
            a[c++] = es[site * QS_Q2_EMB_SITE + k];
        for (int k = 0; k < QS_Q2_EMB_KIND; k++)
            a[c++] = ek[st->kind[site] * QS_Q2_EMB_KIND + k];
    }
    if (n->var != QS_Q2_EMB)
        for (int k = 0; k < n->nfeat; k++)
            a[c++] = st->feat[site * n->nfeat + k];
    for (int j = 0; j < H; j++) {
        double z = b1[j];
        for (int k = 0; k < D; k++)
            z += w1[j * D + k] * a[k];
        h1[j] = tanh(z);
    }
    for (int j = 0; j < H; j++) {
        double z = b2[j];
        for (int k = 0; k < H; k++)
            z += w2[j * H + k] * h1[k];
        h2[j] = tanh(z);
    }
    double y = b3[0];
    for (int k = 0; k < H; k++)
        y += w3[k] * h2[k];
    return y;
}

static double ref_loss(const struct qs_q2_net *n, const double *p, const struct qs_q2_sites *st,
                       const float *x, const int *site, const float *t, int m)
{
    double l = 0.0;
    for (int i = 0; i < m; i++) {
        double r = ref_out(n, p, st, x + i * QS_Q2_NCHAN, site[i]) - t[i];
        l += r * r;
    }
    return l / m;
}

static void test_gradient_vs_float64(void)
{
    enum { S = 3, K = 2, M = 7, H = 5 };
    int kind[S] = {0, 1, 1};
    float feat[S * QS_Q2_NFEAT], x[M * QS_Q2_NCHAN], t[M];
    int site[M];
    qs_rng r;
    qs_rng_seed(&r, 7);
    for (int k = 0; k < S * QS_Q2_NFEAT; k++)
        feat[k] = (float)qs_rng_normal(&r);
    for (int k = 0; k < M * QS_Q2_NCHAN; k++)
        x[k] = (float)qs_rng_normal(&r);
    for (int i = 0; i < M; i++) {
        t[i] = (float)qs_rng_normal(&r);
        site[i] = i % 2 ? 2 : (int)qs_rng_below(&r, S - 1); /* site 2 twice or more */
    }
    struct qs_q2_sites st = {S, K, kind, feat};
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        struct qs_q2_net n;
        qs_err e;
        CHECK(qs_q2_net_init(&n, (enum qs_q2_variant)v, H, S, K, QS_Q2_NFEAT, 3 + v, &e) == 0);
        /* non-zero biases and larger embeddings, so that every term is exercised */
        for (int k = 0; k < H; k++)
            n.b1[k] = (float)(0.3 * qs_rng_normal(&r)), n.b2[k] = (float)(0.3 * qs_rng_normal(&r));
        n.b3[0] = 0.2f;
        if (v != QS_Q2_FEAT)
            for (float *q = n.es; q < n.p + n.np; q++)
                *q = (float)qs_rng_normal(&r);
        float *g = calloc((size_t)n.np, sizeof *g);
        float *ws = calloc(qs_q2_net_ws(&n, M), sizeof *ws);
        double *p = calloc((size_t)n.np, sizeof *p);
        for (int k = 0; k < n.np; k++)
            p[k] = n.p[k];
        double loss = qs_q2_net_grad(&n, &st, x, site, t, M, g, ws);
        CHECK_REL(loss, ref_loss(&n, p, &st, x, site, t, M), 1e-5);
        double worst = 0.0;
        int nz = 0;
        for (int k = 0; k < n.np; k++) {
            double h = 1e-5, keep = p[k];
            p[k] = keep + h;
            double lp = ref_loss(&n, p, &st, x, site, t, M);
            p[k] = keep - h;
            double lm = ref_loss(&n, p, &st, x, site, t, M);
            p[k] = keep;
            double fd = (lp - lm) / (2 * h), d = fabs(g[k] - fd) / fmax(1e-2, fabs(fd));
            nz += fabs(fd) > 1e-6;
            if (d > worst)
                worst = d;
            if (d > 2e-4)
                fprintf(stderr, "  %s param %d: grad %.9g, float64 central difference %.9g\n",
                        qs_q2_variant_name((enum qs_q2_variant)v), k, g[k], fd);
        }
        CHECK(worst <= 2e-4);
        CHECK(nz > n.np / 2); /* the comparison is not over zeros */
        /* embedding rows of a site absent from the batch get 0 */
        if (v != QS_Q2_FEAT) {
            int absent = -1;
            for (int s = 0; s < S && absent < 0; s++) {
                int seen = 0;
                for (int i = 0; i < M; i++)
                    seen |= site[i] == s;
                if (!seen)
                    absent = s;
            }
            for (int k = 0; absent >= 0 && k < QS_Q2_EMB_SITE; k++)
                CHECK(g[(n.es - n.p) + absent * QS_Q2_EMB_SITE + k] == 0.0f);
        }
        free(g);
        free(ws);
        free(p);
        qs_q2_net_free(&n);
    }
}

static void test_verdict_thresholds(void)
{
    double g0[3] = {0, 0, 0.0100}, g1[3] = {0, 0.0100, 0}, g2[3] = {0.5, 0.0099, 0.0099};
    CHECK_STR(qs_q2_verdict(1.0, 0.85, g0), "supported"); /* 15 %, +0.0100 by both */
    CHECK_STR(qs_q2_verdict(1.0, 0.85, g1), "supported");
    CHECK_STR(qs_q2_verdict(1.0, 0.8501, g0), "unclear"); /* 14.99 % */
    CHECK_STR(qs_q2_verdict(1.0, 0.5, g2), "unclear");    /* embedding's gain does not count */
    double n0[3] = {0, 0, 0}, n1[3] = {0, 0, 1e-9}, n2[3] = {1e-9, -1, -1};
    CHECK_STR(qs_q2_verdict(1.0, 1.0001, n0), "refuted"); /* worse, no gain > 0 */
    double n3[3] = {-0.2, -0.1, -0.3};
    CHECK_STR(qs_q2_verdict(1.0, 1.5, n3), "refuted");
    CHECK_STR(qs_q2_verdict(1.0, 1.0001, n1), "unclear"); /* a variant improves */
    CHECK_STR(qs_q2_verdict(1.0, 1.0001, n2), "unclear");
    CHECK_STR(qs_q2_verdict(1.0, 1.0, n0), "unclear"); /* not worse */
    double nn[3] = {0, NAN, 0.1};
    CHECK_STR(qs_q2_verdict(1.0, 0.5, nn), "unclear");
    CHECK_STR(qs_q2_verdict(NAN, 0.5, g0), "unclear");
    CHECK_STR(qs_q2_verdict(1.0, NAN, n0), "unclear");
    /* the summary is a function of the records: counts, improvement, instability */
    struct qs_q2_setting s[3];
    memset(s, 0, sizeof s);
    const char *vd[3] = {"supported", "refuted", "unclear"};
    for (int i = 0; i < 3; i++) {
        s[i].verdict = vd[i];
        s[i].gate_pass = i < 2;
        s[i].improvement = 0.1 * (i + 1);
        s[i].loss_gain[QS_Q2_FEAT] = i ? -0.5 : 0.5;
        s[i].unstable = i ? 1 << QS_Q2_FEAT : 0;
    }
    struct qs_q2_summary sm;
    qs_q2_summarize(s, 3, &sm);
    CHECK(sm.nsupported == 1 && sm.nrefuted == 1 && sm.nunclear == 0 && sm.nexcluded == 1);
    CHECK_NEAR(sm.impr_mean, 0.15, 1e-12);
    CHECK_NEAR(sm.impr_min, 0.1, 1e-12);
    CHECK_NEAR(sm.impr_max, 0.2, 1e-12);
    CHECK_NEAR(sm.gain_mean[QS_Q2_FEAT], 0.0, 1e-12);
    CHECK(sm.nunstable == 1 && sm.unstable_var[QS_Q2_FEAT] == 1);
}

/* Held-out MSE of a fitted variant on (x, site, t). */
static double fit_mse(enum qs_q2_variant v, const struct qs_q2_sites *st, const float *xf,
                      const int *sf, const float *tf, int nf, const float *xe, const int *se,
                      const float *te, int ne)
{
    struct qs_q2_net n;
    qs_err e;
    double loss, mse = 0.0;
    CHECK(qs_q2_net_init(&n, v, 32, st->nsites, st->nkinds, QS_Q2_NFEAT, 11, &e) == 0);
    CHECK(qs_q2_net_fit(&n, st, xf, sf, tf, nf, 40, 64, 5e-3, 11, NULL, &loss, &e) == 0);
    float *a = malloc((size_t)ne * n.d_in * sizeof *a), *y = malloc((size_t)ne * sizeof *y);
    float *ws = malloc(qs_q2_net_ws(&n, ne) * sizeof *ws);
    qs_q2_net_inputs(&n, st, xe, se, ne, a);
    qs_q2_net_forward(&n, a, ne, y, ws);
    for (int i = 0; i < ne; i++)
        mse += (y[i] - te[i]) * (double)(y[i] - te[i]);
    free(a);
    free(y);
    free(ws);
    qs_q2_net_free(&n);
    return mse / ne;
}

/* t = coef[s] u + 0.05 noise for sites [s0, s1), per elements each. */
static int synth(qs_rng *r, const float *coef, int s0, int s1, int per, float *x, int *site,
                 float *t)
{
    int m = 0;
    for (int s = s0; s < s1; s++)
        for (int k = 0; k < per; k++, m++) {
            for (int c = 0; c < QS_Q2_NCHAN; c++)
                x[m * QS_Q2_NCHAN + c] = (float)qs_rng_normal(r);
            site[m] = s;
            t[m] = (float)(coef[s] * x[m * QS_Q2_NCHAN] + 0.05 * qs_rng_normal(r));
        }
    return m;
}

static void test_learns_feature_signal(void)
{
    /* 320 sites; the coefficient is a smooth function of features 0 and 1; fitted on sites
     * 0..255, judged on sites 256..319 whose embeddings were never fitted */
    enum { S = 320, FIT = 256, PER = 16 };
    static float feat[S * QS_Q2_NFEAT], coef[S];
    static float xf[S * PER * QS_Q2_NCHAN], tf[S * PER], xe[S * PER * QS_Q2_NCHAN], te[S * PER];
    static int sf[S * PER], se[S * PER], kind[S];
    qs_rng r;
    qs_rng_seed(&r, 21);
    for (int s = 0; s < S; s++) {
        for (int k = 0; k < QS_Q2_NFEAT; k++)
            feat[s * QS_Q2_NFEAT + k] = (float)qs_rng_normal(&r);
        coef[s] = (float)(sin(feat[s * QS_Q2_NFEAT]) + 0.5 * feat[s * QS_Q2_NFEAT + 1]);
    }
    struct qs_q2_sites st = {S, 1, kind, feat};
    int nf = synth(&r, coef, 0, FIT, PER, xf, sf, tf);
    int ne = synth(&r, coef, FIT, S, PER, xe, se, te);
    double var = 0.0;
    for (int i = 0; i < ne; i++)
        var += (double)te[i] * te[i];
    var /= ne;
    double mf = fit_mse(QS_Q2_FEAT, &st, xf, sf, tf, nf, xe, se, te, ne);
    double me = fit_mse(QS_Q2_EMB, &st, xf, sf, tf, nf, xe, se, te, ne);
    fprintf(stderr,
            "  features carry the signal: var %.4f, features_only %.4f, "
            "embedding_only %.4f\n",
            var, mf, me);
    CHECK(mf < 0.2 * var);
    CHECK(mf < 0.3 * me);
}

static void test_learns_identity_signal(void)
{
    /* 16 sites with identical statistics (features all 0) and coefficients of their own */
    enum { S = 16, PER = 192 };
    static float feat[S * QS_Q2_NFEAT], coef[S];
    static float xf[S * PER * QS_Q2_NCHAN], tf[S * PER], xe[S * PER * QS_Q2_NCHAN], te[S * PER];
    static int sf[S * PER], se[S * PER], kind[S];
    qs_rng r;
    qs_rng_seed(&r, 22);
    for (int s = 0; s < S; s++)
        coef[s] = (float)(1.5 * (2 * qs_rng_uniform(&r) - 1));
    struct qs_q2_sites st = {S, 1, kind, feat};
    int nf = synth(&r, coef, 0, S, PER, xf, sf, tf);
    int ne = synth(&r, coef, 0, S, PER / 4, xe, se, te);
    double var = 0.0;
    for (int i = 0; i < ne; i++)
        var += (double)te[i] * te[i];
    var /= ne;
    double mf = fit_mse(QS_Q2_FEAT, &st, xf, sf, tf, nf, xe, se, te, ne);
    double me = fit_mse(QS_Q2_EMB, &st, xf, sf, tf, nf, xe, se, te, ne);
    fprintf(stderr,
            "  identity carries the signal: var %.4f, features_only %.4f, "
            "embedding_only %.4f\n",
            var, mf, me);
    CHECK(me < 0.2 * var);
    CHECK(me < 0.3 * mf);
}

/* The site_out hook on the digits MLP: +c on the class-0 logit of the output layer. */
struct addc {
    int site;
    float c;
};
static int add_c(void *u, int s, float *y, int n, int out, qs_err *e)
{
    (void)e;
    const struct addc *a = u;
    if (s == a->site)
        for (int i = 0; i < n; i++)
            y[(size_t)i * out] += a->c;
    return 0;
}

static struct qs_bench *digits_bench(uint64_t seed, char *model, char *data)
{
    struct qs_q1_opts o;
    memset(&o, 0, sizeof o);
    qs_err e;
    if (qs_format_parse("int3", &o.fmt, &e) < 0)
        return NULL;
    qs_qopts_default(&o.opt);
    struct qs_bench *b = NULL;
    if (qs_study_open(&o, "datasets/models/digits-mlp.safetensors", seed, &b, model, 512, data, 512,
                      &e) < 0)
        fprintf(stderr, "  %s\n", e.msg);
    return b;
}

static void test_site_hook_placement(void)
{
    char model[512], data[512];
    struct qs_bench *b = digits_bench(0, model, data);
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e;
    int L = qs_bench_nunits(b);
    struct qs_unit u;
    qs_bench_unit(b, L - 1, &u);
    int C = u.out, n = qs_bench_split_units(b, QS_TEST, &e);
    float *lg = malloc((size_t)n * C * sizeof *lg);
    struct qs_metric m0, m1;
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, ~0ULL, &m0, lg, &e) == 0);
    struct addc a = {L - 1, 0.75f};
    b->site_out = add_c;
    b->site_out_ctx = &a;
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, ~0ULL, &m1, NULL, &e) == 0);
    b->site_out = NULL;
    /* the expected loss, from the unhooked logits in double */
    const int *y = b->f_acts[QS_TEST].y;
    double loss = 0.0;
    for (int i = 0; i < n; i++) {
        float *r = lg + (size_t)i * C;
        r[0] += a.c;
        double mx = r[0], s = 0.0;
        for (int k = 1; k < C; k++)
            mx = fmax(mx, r[k]);
        for (int k = 0; k < C; k++)
            s += exp(r[k] - mx);
        loss += mx + log(s) - r[y[i]];
    }
    loss /= n;
    CHECK(fabs(m1.loss - m0.loss) > 1e-3); /* the hook changed something */
    CHECK_NEAR(m1.loss, loss, 1e-5);
    free(lg);
    qs_bench_free(b);
}

static void test_setting_record(void)
{
    struct qs_q2_opts o;
    qs_q2_opts_default(&o);
    qs_err e;
    CHECK(qs_format_parse("int3", &o.fmt, &e) == 0);
    qs_qopts_default(&o.opt);
    o.n_fit = o.n_eval = 4096;
    o.epochs = 2;
    struct qs_q2_setting s, s2;
    int rc = qs_q2_run_setting(&o, "datasets/models/digits-mlp.safetensors", 1, &s, &e);
    CHECK(rc == 0);
    if (rc) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    CHECK(qs_q2_run_setting(&o, "datasets/models/digits-mlp.safetensors", 1, &s2, &e) == 0);
    char model[512], data[512];
    struct qs_bench *b = digits_bench(1, model, data);
    struct qs_eval ev;
    CHECK(b && qs_bench_eval(b, &ev, &e) == 0);
    if (b)
        CHECK_NEAR(s.quant_loss, ev.q.loss, 1e-12);
    qs_bench_free(b);
    CHECK(s.nsites == 3 && s.n_fit == 4095 && s.n_eval == 4095);
    CHECK(s.mse_none > 0);
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        CHECK_NEAR(s.loss_gain[v], s.quant_loss - s.loss_corr[v], 1e-12);
        CHECK(s.mse[v] < s.mse_none); /* fitted on calibration, it helps on held-out */
        CHECK(s.mse[v] == s2.mse[v] && s.loss_corr[v] == s2.loss_corr[v]); /* reproducible */
    }
    CHECK(s.loss_gain[QS_Q2_FEAT] != 0.0); /* the corrector reached the forward pass */
    CHECK_STR(s.verdict, qs_q2_verdict(s.mse[0], s.mse[1], s.loss_gain));
    qs_q2_setting_clear(&s);
    qs_q2_setting_clear(&s2);
}

/* Mean of the first w per-window held-out losses of b along the given masks (uncapped bench). */
static double first_windows_loss(struct qs_bench *b, uint64_t qmask, int w, double *all)
{
    qs_err e;
    int nw = qs_bench_split_units(b, QS_TEST, &e);
    double *ul = calloc((size_t)(nw > 0 ? nw : 1), sizeof *ul), sum = 0.0;
    struct qs_metric m;
    if (nw < w || !ul || qs_bench_run_ex(b, QS_TEST, qmask, qmask, &m, ul, NULL, NULL, &e) < 0) {
        free(ul);
        return NAN;
    }
    for (int i = 0; i < w; i++)
        sum += ul[i];
    *all = m.loss;
    free(ul);
    return sum / w;
}

static void test_heldout_budget(void)
{
    char txt[] = "/tmp/qs-q2-heldout-XXXXXX.txt", arg[600];
    int fd = mkstemps(txt, 4);
    FILE *in = fopen(QS_TEST_LM_TEXT, "rb"), *out = fd >= 0 ? fdopen(fd, "wb") : NULL;
    CHECK(in && out);
    if (!in || !out)
        return;
    char buf[24000];
    size_t got = fread(buf, 1, sizeof buf, in);
    CHECK(fwrite(buf, 1, got, out) == got);
    fclose(in);
    fclose(out);
    snprintf(arg, sizeof arg, "datasets/models/tiny-gpt2:%s", txt);
    struct qs_q2_opts o;
    qs_q2_opts_default(&o);
    qs_err e;
    struct qs_format f4;
    struct qs_qopts o4;
    CHECK(qs_format_parse("int3", &o.fmt, &e) == 0 && qs_format_parse("int4", &f4, &e) == 0);
    qs_qopts_default(&o.opt);
    qs_qopts_default(&o4);
    o4.gran = QS_GRAN_CHANNEL;
    o.lm_fmt = &f4;
    o.lm_opt = &o4;
    o.n_fit = o.n_eval = 4096;
    o.epochs = 1;
    enum { W = 3 };
    o.heldout_tokens = W * 64 + 10; /* tiny-gpt2's windows are 64 tokens: 3 windows */
    struct qs_q2_setting s;
    int rc = qs_q2_run_setting(&o, arg, 0, &s, &e);
    CHECK(rc == 0);
    if (rc) {
        fprintf(stderr, "  %s\n", e.msg);
        unlink(txt);
        return;
    }
    /* the same bench, uncapped: qs_study_open as the setting opens it */
    struct qs_q1_opts q1;
    memset(&q1, 0, sizeof q1);
    q1.fmt = o.fmt;
    q1.opt = o.opt;
    q1.lm_fmt = o.lm_fmt;
    q1.lm_opt = o.lm_opt;
    struct qs_bench *b = NULL;
    char model[512], data[512];
    CHECK(qs_study_open(&q1, arg, 0, &b, model, sizeof model, data, sizeof data, &e) == 0);
    if (b) {
        CHECK(b->test_windows == 0 && qs_bench_split_units(b, QS_TEST, &e) > W);
        double qall = NAN, fall = NAN;
        double q = first_windows_loss(b, ~0ULL, W, &qall), fl = first_windows_loss(b, 0, W, &fall);
        CHECK_NEAR(s.quant_loss, q, 1e-12);
        CHECK(fabs(s.quant_loss - qall) > 1e-6 && fabs(fl - fall) > 1e-6);
        struct qs_eval ev;
        CHECK(qs_bench_eval(b, &ev, &e) == 0);
        CHECK_NEAR(s.float_loss, fall, 1e-12); /* the gate's: the whole split */
        CHECK_NEAR(ev.f.loss, fall, 1e-12);
        CHECK(s.gate_pass == ev.gate_pass);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            CHECK_NEAR(s.loss_gain[v], s.quant_loss - s.loss_corr[v], 1e-12);
    }
    qs_bench_free(b);
    qs_q2_setting_clear(&s);
    unlink(txt);
}

TEST_MAIN("q2", TEST_CASE(test_gradient_vs_float64), TEST_CASE(test_verdict_thresholds),
          TEST_CASE(test_learns_feature_signal), TEST_CASE(test_learns_identity_signal),
          TEST_CASE(test_site_hook_placement), TEST_CASE(test_setting_record),
          TEST_CASE(test_heldout_budget))
