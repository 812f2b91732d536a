/* test_lm_grad.c - the transformer backward pass (src/model/lm_grad.c) against PyTorch autograd
 * (tests/fixtures/lm_grad.json from tests/tools/make_grad_fixture.py: float64 gradients of the
 * bundled tiny-gpt2 and tiny-llama and of the fixtures with grouped-query attention and an
 * untied head), against central finite differences of qs_lm_forward's own loss, and the
 * straight-through semantics of the weight hook. */
#include "qscope/lm_grad.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_fixture.h"
#include "qscope/bench.h"
#include "qscope/lm.h"
#include "qscope/sensitivity.h"
#include "qscope/tokens.h"
#include "test.h"

#define FIXTURE "tests/fixtures/lm_grad.json"
#define TOL 1e-4

/* Every parameter's gradient of one case against autograd: norm, sign projections (relative to
 * the norm) and sampled entries, all within TOL relative; worst figures reported. */
static void check_case(const cJSON *c)
{
    const char *dir = cJSON_GetObjectItem(c, "model")->valuestring;
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    if (lm_load_f32(dir, &m, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        CHECK(0);
        return;
    }
    int B, T;
    size_t *start;
    uint32_t *tok = lmfx_windows(c, &B, &T, &start);
    struct qs_lm_grad *g = qs_lm_grad_new(m, &e);
    CHECK(g != NULL);
    double loss = 0;
    CHECK(g && qs_lm_backward(m, tok, start, B, T, NULL, g, &loss, NULL, &e) == 0);
    CHECK_REL(loss, cJSON_GetObjectItem(c, "loss")->valuedouble, 1e-6);
    const cJSON *ts = cJSON_GetObjectItem(c, "tensors");
    CHECK(g && cJSON_GetArraySize(ts) == g->ntensor);
    CHECK(g && g->nflat == (size_t)qs_lm_nparams(m));
    double worst_norm = 0, worst_proj = 0, worst_el = 0;
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, ts)
    {
        if (!g || i >= g->ntensor)
            break;
        const struct qs_lm_tensor *q = &g->t[i++];
        CHECK_STR(q->name, cJSON_GetObjectItem(t, "name")->valuestring);
        struct lmfx_err r = lmfx_grad_err(q->grad, q->n, t);
        worst_norm = fmax(worst_norm, r.norm);
        worst_proj = fmax(worst_proj, r.proj);
        worst_el = fmax(worst_el, r.entry);
        if (!(r.norm <= TOL && r.proj <= TOL)) {
            fprintf(stderr, "  %s %s: norm %.9g vs %.9g, projection error %.3g of the norm\n", dir,
                    q->name, r.got_norm, r.ref_norm, r.proj);
            CHECK(0);
        }
        if (!(r.entry <= TOL)) {
            fprintf(stderr, "  %s %s[%zu]: relative error %.3g against torch\n", dir, q->name, r.at,
                    r.entry);
            CHECK(0);
        }
    }
    fprintf(stderr,
            "  %s: %d tensors, worst relative error: norm %.2g, projection %.2g, "
            "entry %.2g\n",
            dir, i, worst_norm, worst_proj, worst_el);
    qs_lm_grad_free(g);
    free(tok);
    free(start);
    qs_lm_free(m);
}

static void test_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    CHECK(root != NULL);
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        check_case(c);
        n++;
    }
    CHECK(n == 5);
    cJSON_Delete(root);
}

/* Mean loss of the windows through qs_lm_forward (lm.c's own forward), in double. */
static double forward_loss_h(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B,
                             int T, const struct qs_hooks *h)
{
    float *lg = malloc((size_t)T * m->vocab * sizeof(float));
    double s = 0;
    qs_err e;
    for (int b = 0; b < B; b++) {
        if (qs_lm_forward(m, tok + start[b], T, h, lg, &e) < 0)
            s = NAN;
        for (int t = 0; t < T; t++) {
            const float *r = lg + (size_t)t * m->vocab;
            double mx = r[0], z = 0;
            for (int i = 1; i < m->vocab; i++)
                mx = fmax(mx, r[i]);
            for (int i = 0; i < m->vocab; i++)
                z += exp(r[i] - mx);
            s += mx + log(z) - r[tok[start[b] + t + 1]];
        }
    }
    free(lg);
    return s / ((double)B * T);
}

static double forward_loss(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B,
                           int T)
{
    return forward_loss_h(m, tok, start, B, T, NULL);
}

/* Central differences of lm.c's forward (a separate implementation) on the largest gradient
 * entry of every tensor of the GQA fixture: float32 noise allows ~1e-2. */
static void test_finite_differences(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "cases"), 2);
    struct qs_lm *m = NULL;
    qs_err e;
    CHECK(c && lm_load_f32(cJSON_GetObjectItem(c, "model")->valuestring, &m, &e) == 0);
    if (!m) {
        cJSON_Delete(root);
        return;
    }
    int B, T;
    size_t *start;
    uint32_t *tok = lmfx_windows(c, &B, &T, &start);
    struct qs_lm_grad *g = qs_lm_grad_new(m, &e);
    double loss;
    CHECK(qs_lm_backward(m, tok, start, B, T, NULL, g, &loss, NULL, &e) == 0);
    CHECK_REL(loss, forward_loss(m, tok, start, B, T), 1e-6);
    double worst = 0;
    for (int i = 0; i < g->ntensor; i++) {
        struct qs_lm_tensor *q = &g->t[i];
        size_t at = 0;
        for (size_t k = 1; k < q->n; k++)
            if (fabsf(q->grad[k]) > fabsf(q->grad[at]))
                at = k;
        float v = q->val[at], h = 1e-2f * fmaxf(fabsf(v), 0.1f);
        q->val[at] = v + h;
        double lp = forward_loss(m, tok, start, B, T);
        q->val[at] = v - h;
        double lm = forward_loss(m, tok, start, B, T);
        q->val[at] = v;
        double fd = (lp - lm) / (2.0 * ((double)(v + h) - v));
        double er = fabs(fd - q->grad[at]) / fabs(q->grad[at]);
        worst = fmax(worst, er);
        if (!(er < 2e-2)) {
            fprintf(stderr, "  %s[%zu]: backward %.6g, finite difference %.6g\n", q->name, at,
                    q->grad[at], fd);
            CHECK(0);
        }
    }
    fprintf(stderr, "  finite differences: worst relative error %.2g over %d tensors\n", worst,
            g->ntensor);
    qs_lm_grad_free(g);
    free(tok);
    free(start);
    qs_lm_free(m);
    cJSON_Delete(root);
}

/* The weight hook's replacement is used in the forward and in dx, and its gradient lands on the
 * site's own weight (straight-through): the same as the model with the weight replaced. */
struct hk {
    int site;
    const float *w;
};
static const float *hk_weight(void *u, int s)
{
    struct hk *k = u;
    return s == k->site ? k->w : NULL;
}

/* act hook: inputs of site `site` rounded to 1/16 */
static void hk_act(void *u, int s, float *x, int n, int in)
{
    struct hk *k = u;
    if (s == k->site)
        for (size_t i = 0; i < (size_t)n * in; i++)
            x[i] = roundf(x[i] * 16.0f) / 16.0f;
}

static void test_weight_hook_ste(void)
{
    const char *dirs[] = {"datasets/models/tiny-gpt2", "tests/fixtures/lm_llama_gqa"};
    for (int di = 0; di < 2; di++) {
        struct qs_lm *m = NULL;
        qs_err e;
        CHECK(lm_load_f32(dirs[di], &m, &e) == 0);
        if (!m)
            continue;
        int T = m->ctx < 16 ? m->ctx : 16, B = 2, s = 1;
        uint32_t tok[2 * 17];
        size_t start[2] = {0, (size_t)T + 1};
        for (int i = 0; i < 2 * (T + 1); i++)
            tok[i] = (uint32_t)((i * 7 + 3) % m->vocab);
        struct qs_lm_site *st = &m->sites[s];
        size_t n = (size_t)st->in * st->out;
        float *w2 = malloc(n * sizeof(float)), *keep = malloc(n * sizeof(float));
        memcpy(keep, st->w, n * sizeof(float));
        for (size_t i = 0; i < n; i++) /* a crude "quantization": 1/8 steps of the max */
            w2[i] = roundf(st->w[i] * 64.0f) / 64.0f;
        struct hk k = {s, w2};
        struct qs_hooks h = {.weight = hk_weight, .u = &k};
        struct qs_lm_grad *g1 = qs_lm_grad_new(m, &e), *g2 = qs_lm_grad_new(m, &e);
        double l1, l2, l0;
        CHECK(qs_lm_backward(m, tok, start, B, T, &h, g1, &l1, NULL, &e) == 0);
        CHECK(qs_lm_backward(m, tok, start, B, T, NULL, NULL, &l0, NULL, &e) == 0);
        memcpy(st->w, w2, n * sizeof(float));
        CHECK(qs_lm_backward(m, tok, start, B, T, NULL, g2, &l2, NULL, &e) == 0);
        memcpy(st->w, keep, n * sizeof(float));
        CHECK(l1 == l2);
        CHECK(l1 != l0);
        CHECK(memcmp(g1->flat, g2->flat, g1->nflat * sizeof(float)) == 0);
        /* act: the forward sees the rounded copy (the loss is qs_lm_forward's with the hook) and
         * the gradient moves with it */
        struct qs_hooks ha = {.act = hk_act, .u = &k};
        qs_lm_grad_zero(g2);
        CHECK(qs_lm_backward(m, tok, start, B, T, &ha, g2, &l2, NULL, &e) == 0);
        CHECK_REL(l2, forward_loss_h(m, tok, start, B, T, &ha), 1e-6);
        CHECK(l2 != l0);
        qs_lm_grad_free(g1);
        qs_lm_grad_free(g2);
        free(w2);
        free(keep);
        qs_lm_free(m);
    }
}

/* Accumulation: two calls on halves of a batch, each weighted 1/2 by its mean, give the
 * whole batch's gradient (up to float rounding); bad input is refused. */
static void test_accumulate_and_errors(void)
{
    struct qs_lm *m = NULL;
    qs_err e;
    CHECK(lm_load_f32("tests/fixtures/lm_llama_untied", &m, &e) == 0);
    if (!m)
        return;
    uint32_t tok[4 * 17];
    for (int i = 0; i < 4 * 17; i++)
        tok[i] = (uint32_t)((i * 13 + 5) % m->vocab);
    size_t start[4] = {0, 17, 34, 51};
    struct qs_lm_grad *a = qs_lm_grad_new(m, &e), *b = qs_lm_grad_new(m, &e);
    double la, l1, l2;
    CHECK(qs_lm_backward(m, tok, start, 4, 16, NULL, a, &la, NULL, &e) == 0);
    CHECK(qs_lm_backward(m, tok, start, 2, 16, NULL, b, &l1, NULL, &e) == 0);
    CHECK(qs_lm_backward(m, tok, start + 2, 2, 16, NULL, b, &l2, NULL, &e) == 0);
    CHECK_REL(la, (l1 + l2) / 2, 1e-6);
    double err = 0, nr = 0;
    for (size_t i = 0; i < a->nflat; i++) {
        err = fmax(err, fabs(a->flat[i] - 0.5 * b->flat[i]));
        nr = fmax(nr, fabs(a->flat[i]));
    }
    CHECK(err <= 1e-5 * nr);
    tok[17] = (uint32_t)m->vocab;
    CHECK(qs_lm_backward(m, tok, start, 4, 16, NULL, a, &la, NULL, &e) == -1);
    CHECK(strstr(e.msg, "outside the vocabulary") != NULL);
    CHECK(qs_lm_backward(m, tok, start, 1, m->ctx + 1, NULL, a, &la, NULL, &e) == -1);
    qs_lm_grad_free(a);
    qs_lm_grad_free(b);
    qs_lm_free(m);
}

/* Exact H v (qs_lm_hvp) against PyTorch's double backward for v = the fixture's first sign
 * vector on every site weight (not a tied head's, whose block is the output projection's):
 * every site's block within 1e-4 (norm, projections, sampled entries). */
static void check_hvp(const cJSON *c, double *worst)
{
    const char *dir = cJSON_GetObjectItem(c, "model")->valuestring;
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    if (lm_load_f32(dir, &m, &e) < 0) {
        CHECK(0);
        return;
    }
    int B, T, S = m->nsites;
    size_t *start;
    uint32_t *tok = lmfx_windows(c, &B, &T, &start);
    float **vw = calloc((size_t)S, sizeof *vw), **hv = calloc((size_t)S, sizeof *hv);
    for (int s = 0; s < S; s++) {
        size_t n = (size_t)m->sites[s].in * m->sites[s].out;
        hv[s] = malloc(n * sizeof(float));
        if (m->tied && s == S - 1)
            continue;
        vw[s] = malloc(n * sizeof(float));
        for (size_t k = 0; k < n; k++)
            vw[s][k] = (float)lmfx_sign(1, k);
    }
    double loss;
    CHECK(qs_lm_hvp(m, tok, start, B, T, (const float *const *)vw, hv, &loss, &e) == 0);
    CHECK_REL(loss, cJSON_GetObjectItem(c, "loss")->valuedouble, 1e-6);
    const cJSON *hs = cJSON_GetObjectItem(c, "hvp");
    CHECK(cJSON_GetArraySize(hs) == S);
    for (int s = 0; s < S && s < cJSON_GetArraySize(hs); s++) {
        const cJSON *r = cJSON_GetArrayItem(hs, s);
        CHECK_STR(m->sites[s].name, cJSON_GetObjectItem(r, "name")->valuestring);
        size_t n = (size_t)m->sites[s].in * m->sites[s].out;
        double nr = 0, p1 = 0, p2 = 0;
        for (size_t k = 0; k < n; k++) {
            nr += (double)hv[s][k] * hv[s][k];
            p1 += lmfx_sign(1, k) * hv[s][k];
            p2 += lmfx_sign(2, k) * hv[s][k];
        }
        nr = sqrt(nr);
        double rn = cJSON_GetObjectItem(r, "norm")->valuedouble;
        const cJSON *pj = cJSON_GetObjectItem(r, "proj");
        double er = fmax(fabs(nr - rn), fmax(fabs(p1 - cJSON_GetArrayItem(pj, 0)->valuedouble),
                                             fabs(p2 - cJSON_GetArrayItem(pj, 1)->valuedouble))) /
                    rn;
        const cJSON *ix = cJSON_GetObjectItem(r, "idx"), *vl = cJSON_GetObjectItem(r, "val");
        for (int k = 0; k < cJSON_GetArraySize(ix); k++) {
            size_t at = (size_t)cJSON_GetArrayItem(ix, k)->valuedouble;
            double ref = cJSON_GetArrayItem(vl, k)->valuedouble;
            er = fmax(er, fabs(hv[s][at] - ref) / fabs(ref));
        }
        *worst = fmax(*worst, er);
        if (!(er <= TOL)) {
            fprintf(stderr, "  %s H v of %s: norm %.9g vs torch %.9g, worst relative error %.3g\n",
                    dir, m->sites[s].name, nr, rn, er);
            CHECK(0);
        }
    }
    for (int s = 0; s < S; s++) {
        free(vw[s]);
        free(hv[s]);
    }
    free(vw);
    free(hv);
    free(tok);
    free(start);
    qs_lm_free(m);
}

static void test_hvp_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    const cJSON *c;
    double worst = 0;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        check_hvp(c, &worst);
        n++;
    }
    CHECK(n == 5);
    fprintf(stderr, "  H v vs torch: worst relative error %.2g over %d models\n", worst, n);
    cJSON_Delete(root);
}

/* Hutchinson's estimate against the exact trace of one site's Hessian block, summed from
 * e_j^T H e_j over the basis (one H v per entry: the GQA fixture's k_proj of 16 x 32): within
 * 4 standard errors, and a standard error that shrinks like 1 / sqrt(probes). */
static void test_hutchinson_trace(void)
{
    struct qs_lm *m = NULL;
    qs_err e;
    CHECK(lm_load_f32("tests/fixtures/lm_llama_gqa", &m, &e) == 0);
    if (!m)
        return;
    uint32_t tok[2 * 13];
    for (int i = 0; i < 26; i++)
        tok[i] = (uint32_t)((i * 7 + 3) % m->vocab);
    size_t start[2] = {0, 13};
    int site = 1, S = m->nsites;
    size_t n = (size_t)m->sites[site].in * m->sites[site].out;
    CHECK(n == 512);
    float **vw = calloc((size_t)S, sizeof *vw), **hv = calloc((size_t)S, sizeof *hv);
    vw[site] = calloc(n, sizeof(float));
    hv[site] = malloc(n * sizeof(float));
    double tr = 0;
    for (size_t j = 0; j < n; j++) {
        vw[site][j] = 1.0f;
        CHECK(qs_lm_hvp(m, tok, start, 2, 12, (const float *const *)vw, hv, NULL, &e) == 0);
        tr += hv[site][j];
        vw[site][j] = 0.0f;
    }
    double t1, se1, t2, se2;
    CHECK(qs_lm_hutchinson(m, tok, start, 2, 12, site, 100, 5, &t1, &se1, &e) == 0);
    CHECK(qs_lm_hutchinson(m, tok, start, 2, 12, site, 400, 5, &t2, &se2, &e) == 0);
    fprintf(stderr,
            "  exact tr(H) %.6g; Hutchinson %.6g +- %.3g (100 probes), %.6g +- %.3g (400)\n", tr,
            t1, se1, t2, se2);
    CHECK(fabs(t1 - tr) < 4 * se1 && fabs(t2 - tr) < 4 * se2);
    CHECK(se2 < 0.7 * se1 && se2 > 0.3 * se1);
    CHECK(qs_lm_hutchinson(m, tok, start, 2, 12, site, 1, 5, &t1, &se1, &e) == -1);
    free(vw[site]);
    free(hv[site]);
    free(vw);
    free(hv);
    qs_lm_free(m);
}

/* `sensitivity method=grad,fisher` on a GPT-2 trained by PyTorch outside qscope
 * (tests/fixtures/delta_gpt2) against autograd's per-site gradient norms and empirical Fisher
 * traces on the calibration windows: within 1e-4, so the sites rank as PyTorch ranks them. */
static void test_sensitivity_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    const cJSON *sv = cJSON_GetObjectItem(root, "sensitivity");
    const char *dir = cJSON_GetObjectItem(sv, "model")->valuestring;
    qs_err e = {{0}};
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    char data[256];
    snprintf(data, sizeof data, "%s/data.txt", dir);
    if (!b || qs_lm_load(dir, &m, &e) < 0 || qs_bench_set_lm(b, m, dir, &e) < 0 ||
        qs_tokens_load(data, &t, &e) < 0 || qs_bench_set_tokens(b, t, data, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        CHECK(0);
        qs_bench_free(b);
        cJSON_Delete(root);
        return;
    }
    int S = b->lm->nsites;
    struct qs_sens_layer *out = qs_calloc((size_t)S, sizeof *out);
    struct qs_sens_info info;
    CHECK(qs_sensitivity(b, QS_SENS_GRAD | QS_SENS_FISHER, 8, out, &info, &e) == 0);
    const cJSON *names = cJSON_GetObjectItem(sv, "sites"),
                *gn = cJSON_GetObjectItem(sv, "grad_norm");
    const cJSON *ft = cJSON_GetObjectItem(sv, "fisher_trace");
    CHECK(cJSON_GetArraySize(names) == S);
    CHECK(info.n_calib == 8 * 32);
    double worst = 0;
    for (int s = 0; s < S && s < cJSON_GetArraySize(names); s++) {
        CHECK_STR(b->lm->sites[s].name, cJSON_GetArrayItem(names, s)->valuestring);
        double rg = cJSON_GetArrayItem(gn, s)->valuedouble,
               rf = cJSON_GetArrayItem(ft, s)->valuedouble;
        CHECK_REL(out[s].grad_norm, rg, 1e-4);
        CHECK_REL(out[s].fisher_trace, rf, 1e-4);
        worst = fmax(worst,
                     fmax(fabs(out[s].grad_norm - rg) / rg, fabs(out[s].fisher_trace - rf) / rf));
    }
    fprintf(stderr, "  sensitivity grad/fisher vs torch: worst relative error %.2g\n", worst);
    free(out);
    qs_bench_free(b);
    cJSON_Delete(root);
}

TEST_MAIN("lm_grad", TEST_CASE(test_vs_torch), TEST_CASE(test_finite_differences),
          TEST_CASE(test_weight_hook_ste), TEST_CASE(test_accumulate_and_errors),
          TEST_CASE(test_sensitivity_vs_torch), TEST_CASE(test_hvp_vs_torch),
          TEST_CASE(test_hutchinson_trace))
