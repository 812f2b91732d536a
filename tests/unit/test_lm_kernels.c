/* test_lm_kernels.c - the transformer forward's kernels (src/model/lm_impl.h) against float64
 * references written out longhand here: the causal-blocked, GQA-stacked attention on random
 * shapes (a context that is not a multiple of the block, one token, sliding windows, strided
 * q/k/v as GPT-2's fused c_attn gives them), the vectorized exps against libm, and the one-pass
 * log-softmax + cross-entropy + KL + argmax row score against a two-pass float64 reference on a
 * 50257-token vocabulary with logits up to +-1e4. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../../src/model/lm_impl.h"
#include "qscope/lm.h"
#include "test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double unif(void) /* [0, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static double gauss(void)
{
    double u = unif() + 1e-300, v = unif();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* o[i, h hd + c] = sum_j softmax_j(q_i . k_j / sqrt(hd)) v[j, c] over j in the row's window. */
static void ref_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                          int T, int H, int Hk, int hd, int window, double *o)
{
    double *sc = malloc((size_t)T * sizeof(double));
    int g = H / Hk;
    for (int h = 0; h < H; h++) {
        int kh = h / g;
        for (int i = 0; i < T; i++) {
            int lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
            double mx = -INFINITY, sum = 0;
            for (int j = lo; j <= i; j++) {
                double d = 0;
                for (int c = 0; c < hd; c++)
                    d += (double)q[(size_t)i * ldq + h * hd + c] * k[(size_t)j * ldk + kh * hd + c];
                sc[j] = d / sqrt((double)hd);
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = lo; j <= i; j++)
                sum += sc[j] = exp(sc[j] - mx);
            for (int c = 0; c < hd; c++) {
                double a = 0;
                for (int j = lo; j <= i; j++)
                    a += sc[j] / sum * v[(size_t)j * ldv + kh * hd + c];
                o[(size_t)i * H * hd + h * hd + c] = a;
            }
        }
    }
    free(sc);
}

static void test_attention_random_shapes(void)
{
    /* T, H, Hk, hd, window, extra row stride */
    static const int cases[][6] = {
        {1, 4, 2, 8, 0, 0},    {1, 3, 3, 16, 0, 5},     {7, 2, 1, 4, 0, 0},
        {128, 2, 2, 8, 0, 0},  {129, 4, 4, 16, 0, 3},   {200, 6, 2, 16, 0, 0},
        {300, 8, 1, 32, 0, 7}, {257, 4, 2, 16, 50, 0},  {400, 2, 2, 8, 128, 1},
        {260, 4, 4, 64, 1, 0}, {130, 12, 12, 64, 0, 0}, {64, 32, 4, 64, 0, 0},
    };
    double worst = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int T = cases[c][0], H = cases[c][1], Hk = cases[c][2], hd = cases[c][3];
        int win = cases[c][4], pad = cases[c][5];
        int ldq = H * hd + pad, ldk = Hk * hd + pad + 1, ldv = Hk * hd + 2 * pad;
        float *q = malloc((size_t)T * ldq * sizeof(float));
        float *k = malloc((size_t)T * ldk * sizeof(float));
        float *v = malloc((size_t)T * ldv * sizeof(float));
        float *o = malloc((size_t)T * H * hd * sizeof(float));
        float *s = malloc(qs_lm_attention_scratch(T, H, Hk, hd) * sizeof(float));
        double *r = malloc((size_t)T * H * hd * sizeof(double));
        for (size_t i = 0; i < (size_t)T * ldq; i++)
            q[i] = (float)(1.5 * gauss());
        for (size_t i = 0; i < (size_t)T * ldk; i++)
            k[i] = (float)(1.5 * gauss());
        for (size_t i = 0; i < (size_t)T * ldv; i++)
            v[i] = (float)gauss();
        for (size_t i = 0; i < (size_t)T * H * hd; i++)
            o[i] = NAN; /* every entry must be written */
        qs_lm_attention(q, ldq, k, ldk, v, ldv, T, H, Hk, hd, win, o, s);
        ref_attention(q, ldq, k, ldk, v, ldv, T, H, Hk, hd, win, r);
        double md = 0, mr = 0;
        for (size_t i = 0; i < (size_t)T * H * hd; i++) {
            double d = fabs(o[i] - r[i]);
            md = d > md || isnan(d) ? d : md;
            mr = fabs(r[i]) > mr ? fabs(r[i]) : mr;
        }
        if (!(md <= 2e-6 * mr))
            fprintf(stderr,
                    "  T %d H %d Hk %d hd %d window %d: max |o - ref| %.3g (max |ref| %.3g)\n", T,
                    H, Hk, hd, win, md, mr);
        CHECK(md <= 2e-6 * mr);
        worst = md / mr > worst || isnan(md) ? md / mr : worst;
        free(q);
        free(k);
        free(v);
        free(o);
        free(s);
        free(r);
    }
    fprintf(stderr, "  attention: worst max|o - ref| / max|ref| = %.3g over 12 shapes\n", worst);
}

static void test_exp_kernels(void)
{
    double wf = 0, wd = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000.0f;
        double ef = qs_lm_expf(x), rf = exp((double)x);
        double u = (double)nextafterf((float)rf, INFINITY) - (float)rf; /* one ulp at rf */
        wf = fabs(ef - rf) / u > wf ? fabs(ef - rf) / u : wf;
        double xd = -708.0 * i / 200000.0 * (1.0 - 1e-3 * unif());
        double ed = qs_lm_expneg(xd), rd = exp(xd);
        wd = fabs(ed - rd) / rd > wd ? fabs(ed - rd) / rd : wd;
    }
    fprintf(stderr,
            "  qs_lm_expf: worst %.2f ulp of exp on [-87, 88]; qs_lm_expneg: worst "
            "relative error %.2g on [-708, 0]\n",
            wf, wd);
    CHECK(wf <= 2.0);
    CHECK(wd <= 4e-16);
    CHECK(qs_lm_expneg(0.0) == 1.0);
    CHECK(qs_lm_expf(0.0f) == 1.0f);
    CHECK(qs_lm_expneg(-1e4) < 1e-300 && qs_lm_expneg(-1e4) >= 0);
    CHECK(qs_lm_expf(-1e4f) < 2e-38f && qs_lm_expf(-1e4f) >= 0);
}

/* Two passes in float64 with libm's exp: the log-softmax, its NLL at y, KL(f || q), argmaxes. */
static void ref_row(const float *rf, const float *rq, int V, int y, double *nf, double *nq,
                    double *kl, int *af, int *aq)
{
    double mf = rf[0], mq = rq[0], sf = 0, sq = 0;
    *af = *aq = 0;
    for (int i = 1; i < V; i++) {
        if (rf[i] > mf) {
            mf = rf[i];
            *af = i;
        }
        if (rq[i] > mq) {
            mq = rq[i];
            *aq = i;
        }
    }
    for (int i = 0; i < V; i++) {
        sf += exp(rf[i] - mf);
        sq += exp(rq[i] - mq);
    }
    double lf = mf + log(sf), lq = mq + log(sq);
    *nf = lf - rf[y];
    *nq = lq - rq[y];
    *kl = 0;
    for (int i = 0; i < V; i++) {
        double pf = rf[i] - lf, pq = rq[i] - lq;
        *kl += exp(pf) * (pf - pq);
    }
}

static void test_fused_xent(void)
{
    const int V = 50257;
    float *rf = malloc(V * sizeof(float)), *rq = malloc(V * sizeof(float));
    double wn = 0, wk = 0;
    for (int c = 0; c < 8; c++) {
        /* 0: N(0, 3); 1: uniform +-1e4; 2: +-1e4 with q = f + 1e-3 noise; 3: q == f; 4: the max
         * rising chunk by chunk (every chunk rescales); 5: a tie for the max (first wins);
         * 6: q = f + N(0, 0.01) (small KL); 7: -1e4 everywhere but a few */
        for (int i = 0; i < V; i++) {
            switch (c) {
            case 0:
                rf[i] = (float)(3 * gauss());
                rq[i] = (float)(3 * gauss());
                break;
            case 1:
                rf[i] = (float)(2e4 * unif() - 1e4);
                rq[i] = (float)(2e4 * unif() - 1e4);
                break;
            case 2:
                rf[i] = (float)(2e4 * unif() - 1e4);
                rq[i] = rf[i] + (float)(1e-3 * gauss());
                break;
            case 3:
                rf[i] = rq[i] = (float)(5 * gauss());
                break;
            case 4:
                rf[i] = (float)(i * 0.2 + gauss());
                rq[i] = (float)(1e4 - i * 0.3);
                break;
            case 5:
                rf[i] = (float)gauss();
                rq[i] = (float)gauss();
                break;
            case 6:
                rf[i] = (float)(2 * gauss());
                rq[i] = rf[i] + (float)(0.01 * gauss());
                break;
            default:
                rf[i] = rq[i] = -1e4f;
                break;
            }
        }
        if (c == 5) {
            rf[100] = rf[40000] = 9.0f;
            rq[40000] = rq[100] = 9.0f;
            rq[3] = 8.9f;
        }
        if (c == 7) {
            rf[7] = 1e4f;
            rf[50000] = 1e4f - 1.0f;
            rq[50000] = 1e4f;
            rq[7] = 1e4f - 0.5f;
        }
        for (int y = 0; y < V; y += 12345) {
            double nf, nq, kl;
            int af, aq;
            ref_row(rf, rq, V, y, &nf, &nq, &kl, &af, &aq);
            struct qs_lm_rowscore r, r1;
            qs_lm_score_row(rf, rq, V, y, &r);
            qs_lm_score_row(rf, NULL, V, y, &r1);
            double sn = fmax(fabs(nf), 1.0);
            CHECK_NEAR(r.nll_f, nf, 1e-13 * fmax(sn, fabs(rf[y])));
            CHECK_NEAR(r.nll_q, nq, 1e-13 * fmax(fmax(fabs(nq), 1.0), fabs(rq[y])));
            CHECK(r1.nll_f == r.nll_f && r1.kl == 0 && r1.agree == 0);
            CHECK_NEAR(r.kl, kl, 1e-12 * fmax(kl, 1.0) + 1e-9 * kl);
            CHECK(r.agree == (af == aq));
            if (c == 3)
                CHECK(r.kl == 0 && r.nll_f == r.nll_q && r.agree);
            double en = fabs(r.nll_f - nf) / fmax(sn, fabs(rf[y]));
            wn = en > wn ? en : wn;
            double ek = fabs(r.kl - kl) / fmax(kl, 1e-300);
            if (kl > 0)
                wk = ek > wk ? ek : wk;
        }
        if (c == 5) { /* the tie: both first at 100, so they agree */
            struct qs_lm_rowscore r;
            qs_lm_score_row(rf, rq, V, 0, &r);
            CHECK(r.agree == 1);
            rq[100] = 8.0f;
            qs_lm_score_row(rf, rq, V, 0, &r);
            CHECK(r.agree == 0);
        }
    }
    fprintf(stderr,
            "  fused xent (V %d): worst relative NLL error %.2g, worst relative KL "
            "error %.2g\n",
            V, wn, wk);
    free(rf);
    free(rq);
}

/* qs_lm_score_window spreads rows over threads and sums them in row order: the same numbers on
 * one thread and on several. */
static void test_score_window_threads(void)
{
    struct qs_lm *m;
    qs_err e;
    CHECK(qs_lm_load("datasets/models/tiny-gpt2", &m, &e) == 0);
    if (!m)
        return;
    int T = 37, V = m->vocab;
    float *lf = malloc((size_t)T * V * sizeof(float)), *lq = malloc((size_t)T * V * sizeof(float));
    uint32_t tok[38];
    for (int i = 0; i < 38; i++)
        tok[i] = (uint32_t)(unif() * V);
    for (size_t i = 0; i < (size_t)T * V; i++) {
        lf[i] = (float)(4 * gauss());
        lq[i] = lf[i] + (float)(0.1 * gauss());
    }
    int nt = openblas_get_num_threads();
    struct qs_lm_score a = {0}, b = {0};
    openblas_set_num_threads(1);
    CHECK(qs_lm_score_window(m, tok, T, lf, lq, &a, &e) == 0);
    openblas_set_num_threads(3);
    CHECK(qs_lm_score_window(m, tok, T, lf, lq, &b, &e) == 0);
    openblas_set_num_threads(nt);
    CHECK(a.sf == b.sf && a.sq == b.sq && a.skl == b.skl && a.agree == b.agree && a.n == b.n);
    double sf = 0;
    for (int t = 0; t < T; t++) {
        double nf, nq, kl;
        int af, aq;
        ref_row(lf + (size_t)t * V, lq + (size_t)t * V, V, (int)tok[t + 1], &nf, &nq, &kl, &af,
                &aq);
        sf += nf;
    }
    CHECK_NEAR(a.sf, sf, 1e-12 * sf);
    free(lf);
    free(lq);
    qs_lm_free(m);
}

TEST_MAIN("lm_kernels", TEST_CASE(test_attention_random_shapes), TEST_CASE(test_exp_kernels),
          TEST_CASE(test_fused_xent), TEST_CASE(test_score_window_threads))
