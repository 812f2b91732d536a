/* test_quant_methods.c - quantizer methods as options of a `quant` rule, through the bench:
 * the sites a rule with method=gptq|awq, weight=imatrix, rotate=hadamard or smooth=A matches
 * compute exactly what the kernels (methods.h, tested against float64 references and PyTorch in
 * test_methods*.c) compute on the same calibration inputs, sequentially in forward order; the
 * packed codes decode to the method's weights; upstream changes recompute; activation
 * transforms leave float products unchanged; GPTQ beats round-to-nearest on every layer of the
 * digits MLP and of the tiny GPT-2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "qscope/bench.h"
#include "qscope/methods.h"
#include "qscope/sensitivity.h"
#include "test.h"

/* Adds `quant PAT FMT TOKENS...` (space-separated options, method or quantizer) to b. */
static int rule(struct qs_bench *b, const char *pat, const char *fmt, const char *toks, int roles,
                qs_err *e)
{
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", toks ? toks : "");
    for (char *t = strtok(buf, " "); t; t = strtok(NULL, " ")) {
        int k = qs_rule_method_parse_token(&r.meth, t, e);
        if (k < 0 || (!k && qs_qopts_parse_token(&r.opt, t, e) < 0))
            return -1;
    }
    if (qs_rule_method_check(&r.meth, &r.fmt, roles, e) < 0)
        return -1;
    r.roles = roles;
    int n;
    return qs_bench_add_rule(b, &r, &n, e) < 0 ? -1 : n;
}

/* tr(E R E^T) with R = X^T X of the float model's calibration inputs of site i. */
static double local_err(struct qs_bench *b, int i, qs_err *e)
{
    const float *x;
    int n;
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    if (qs_bench_inputs(b, QS_CALIB, 0, i, &x, &n, e) < 0)
        return -1.0;
    double *r = calloc((size_t)u.in * u.in, sizeof *r);
    if (!r || qs_hessian_add(r, x, n, u.in, e) < 0) {
        free(r);
        return -1.0;
    }
    double v =
        qs_method_local_err(qs_bench_w(b, i, NULL), qs_site_wq(b, i, NULL), u.out, u.in, r) / 2.0;
    free(r);
    return v;
}

/* The bench's sites equal qs_mlp_quant_method on the same calibration rows, bit for bit. */
static void mlp_matches_kernel(const char *toks, int inputs_float, enum qs_method m, int rotate)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(rule(b, "*", "int3", toks, 0, &e) == 3);
    CHECK(qs_bench_update(b, &e) == 0);
    struct qs_mlp *ref = qs_mlp_clone(b->model);
    CHECK(ref != NULL);
    struct qs_format f;
    struct qs_qopts o;
    qs_format_parse("int3", &f, &e);
    qs_qopts_default(&o);
    qs_qopts_parse_token(&o, "gran=channel", &e);
    struct qs_method_opts mo;
    qs_method_opts_default(&mo);
    mo.method = m;
    mo.rotate = rotate;
    const struct qs_acts *a = &b->f_acts[QS_CALIB];
    CHECK(ref && qs_mlp_quant_method(ref, a->in[0], a->n, &f, &o, &mo, inputs_float, &e) == 0);
    for (int i = 0; ref && i < 3; i++) {
        const struct qs_layer *l = &ref->layers[i];
        size_t nw = (size_t)l->out * l->in;
        int same =
            qs_site_wq(b, i, NULL) && !memcmp(qs_site_wq(b, i, NULL), l->w, nw * sizeof(float));
        if (!same)
            fprintf(stderr, "  %s %s: the bench's weights differ from the kernel's\n", toks,
                    l->name);
        CHECK(same);
    }
    qs_mlp_free(ref);
    qs_bench_free(b);
}

static void test_sites_equal_kernels(void)
{
    mlp_matches_kernel("gran=channel method=gptq", 0, QS_METHOD_GPTQ, 0);
    mlp_matches_kernel("gran=channel method=gptq inputs=float", 1, QS_METHOD_GPTQ, 0);
    mlp_matches_kernel("gran=channel weight=imatrix", 0, QS_METHOD_IMATRIX, 0);
    mlp_matches_kernel("gran=channel rotate=hadamard", 0, QS_METHOD_RTN, 1);
    mlp_matches_kernel("gran=channel method=gptq rotate=hadamard", 0, QS_METHOD_GPTQ, 1);
}

/* AWQ's effective weight is qs_method_layer's (Q(W diag s) diag(s)^-1, agreeing to float
 * rounding); the site keeps s as its input scale and counts it. */
static void test_awq_site(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(rule(b, "*", "int3", "gran=channel method=awq inputs=float", 0, &e) == 3);
    CHECK(qs_bench_update(b, &e) == 0);
    struct qs_format f;
    struct qs_qopts o;
    qs_format_parse("int3", &f, &e);
    qs_qopts_default(&o);
    qs_qopts_parse_token(&o, "gran=channel", &e);
    struct qs_method_opts mo;
    qs_method_opts_default(&mo);
    mo.method = QS_METHOD_AWQ;
    for (int i = 0; i < 3; i++) {
        const struct qs_layer *l = &b->model->layers[i];
        size_t nw = (size_t)l->out * l->in;
        float *q = malloc(nw * sizeof *q);
        const struct qs_acts *a = &b->f_acts[QS_CALIB];
        CHECK(q && qs_method_layer(&f, &o, &mo, l->w, l->out, l->in, a->in[i], a->n, q, &e) == 0);
        double md = 0.0, mx = 0.0;
        for (size_t j = 0; q && j < nw; j++) {
            md = fmax(md, fabs((double)q[j] - qs_site_wq(b, i, NULL)[j]));
            mx = fmax(mx, fabs((double)q[j]));
        }
        CHECK(md <= 1e-6 * (mx > 0 ? mx : 1));
        CHECK(b->ls[i].xs != NULL && b->ls[i].xform_bits == 32.0 * l->in);
        free(q);
    }
    qs_bench_free(b);
}

/* GPTQ's packed codes decode to exactly the site's weights; GPTQ beats RTN on every layer's
 * local pre-activation error (int3 per channel); the figures are printed for the record. */
static void test_gptq_beats_rtn_mlp(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    double rtn[3], gq[3];
    CHECK(rule(b, "*", "int3", "gran=channel", 0, &e) == 3);
    for (int i = 0; i < 3; i++)
        rtn[i] = local_err(b, i, &e);
    CHECK(rule(b, "*", "int3", "gran=channel method=gptq", 0, &e) == 3);
    CHECK(qs_bench_update(b, &e) == 0);
    for (int i = 0; i < 3; i++) {
        gq[i] = local_err(b, i, &e);
        CHECK(gq[i] >= 0 && gq[i] < rtn[i]);
        fprintf(stderr, "  digits %s int3/channel: local error GPTQ / RTN = %.4f\n",
                b->model->layers[i].name, gq[i] / rtn[i]);
        const struct qs_layer *l = &b->model->layers[i];
        size_t nw = (size_t)l->out * l->in;
        float *d = malloc(nw * sizeof *d);
        CHECK(d && qs_quant_unpack(&b->ls[i].packed, d, &e) == 0 &&
              !memcmp(d, qs_site_wq(b, i, NULL), nw * sizeof *d));
        free(d);
    }
    qs_bench_free(b);
}

/* A change upstream recomputes a sequential site (and only then equals the kernel on the new
 * inputs); inputs=float sites stay as they are. */
static void test_upstream_recompute(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(rule(b, "fc1", "int3", "gran=channel method=gptq", 0, &e) == 1);
    CHECK(rule(b, "fc2", "int3", "gran=channel method=gptq inputs=float", 0, &e) == 1);
    size_t n1 = 64 * 64, n2 = 10 * 64;
    float *w1 = malloc(n1 * sizeof *w1), *w2 = malloc(n2 * sizeof *w2);
    CHECK(w1 && w2);
    memcpy(w1, qs_site_wq(b, 1, NULL), n1 * sizeof *w1);
    memcpy(w2, qs_site_wq(b, 2, NULL), n2 * sizeof *w2);
    CHECK(rule(b, "fc0", "int2", "gran=tensor", 0, &e) == 1);
    CHECK(!qs_bench_methods_pending(b));
    CHECK(memcmp(w1, qs_site_wq(b, 1, NULL), n1 * sizeof *w1) != 0); /* fc1 saw new inputs */
    CHECK(memcmp(w2, qs_site_wq(b, 2, NULL), n2 * sizeof *w2) == 0); /* fc2 takes float inputs */
    /* fc1 is GPTQ on the quantized path's inputs as they are now */
    const float *x;
    int n;
    CHECK(qs_bench_inputs(b, QS_CALIB, 1, 1, &x, &n, &e) == 0);
    double *h = calloc(n1, sizeof *h);
    float *q = malloc(n1 * sizeof *q);
    struct qs_gptq_opts g;
    qs_gptq_opts_default(&g);
    CHECK(h && q && qs_hessian_add(h, x, n, 64, &e) == 0 &&
          qs_gptq(&b->ls[1].wfmt, &b->ls[1].wopt, &g, b->model->layers[1].w, 64, 64, h, q, NULL,
                  &e) == 0);
    CHECK(q && !memcmp(q, qs_site_wq(b, 1, NULL), n1 * sizeof *q));
    /* a calibration change recomputes too */
    memcpy(w2, qs_site_wq(b, 2, NULL), n2 * sizeof *w2);
    CHECK(qs_bench_set_calib(b, 100, &e) == 0);
    CHECK(!qs_bench_methods_pending(b) && qs_site_wq(b, 2, NULL));
    CHECK(qs_site_wq(b, 2, NULL) && memcmp(w2, qs_site_wq(b, 2, NULL), n2 * sizeof *w2) != 0);
    free(h);
    free(q);
    free(w1);
    free(w2);
    qs_bench_free(b);
}

/* Activation transforms: T^-1 T x = x to float rounding for a rotation and for SmoothQuant
 * scales; a weight+activation site quantizes T x (so an exact format gives the float
 * product); SmoothQuant's scales are the formula's, and dead inputs keep scale 1. */
static void test_act_transforms(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(qs_bench_set_regime(b, QS_REGIME_FULL, &e) == 0);
    const char *cfg[] = {"gran=channel rotate=hadamard", "gran=channel smooth=0.5"};
    for (int c = 0; c < 2; c++) {
        CHECK(rule(b, "*", "int8", cfg[c], 0, &e) == 3);
        CHECK(qs_bench_update(b, &e) == 0);
        for (int i = 0; i < 3; i++) {
            const struct qs_layer_state *s = &b->ls[i];
            CHECK(c == 0 ? s->rot != NULL : s->xs != NULL);
            const struct qs_acts *a = &b->f_acts[QS_CALIB];
            int in = b->model->layers[i].in, n = a->n;
            size_t len = (size_t)n * in;
            float *t = malloc(len * sizeof *t);
            memcpy(t, a->in[i], len * sizeof *t);
            CHECK(qs_bench_act_xform(s, t, n, in, 0, &e) == 0);
            CHECK(qs_bench_act_xform(s, t, n, in, 1, &e) == 0);
            double num = 0, den = 0;
            for (size_t j = 0; j < len; j++) {
                double d = (double)t[j] - a->in[i][j];
                num += d * d;
                den += (double)a->in[i][j] * a->in[i][j];
            }
            CHECK(sqrt(num / (den > 0 ? den : 1)) <= 1e-6);
            /* the site's forward with activations quantized: T^-1 Q(T x) W^T + b */
            const struct qs_layer *l = &b->model->layers[i];
            float *y = malloc((size_t)n * l->out * sizeof *y),
                  *want = malloc((size_t)n * l->out * sizeof *want);
            memcpy(t, a->in[i], len * sizeof *t);
            CHECK(y && want && qs_bench_act_xform(s, t, n, in, 0, &e) == 0 &&
                  qs_bench_act_quant(s, t, n, in, t, &e) == 0 &&
                  qs_bench_act_xform(s, t, n, in, 1, &e) == 0);
            qs_linear(t, n, in, l->w, l->b, l->out, want);
            CHECK(qs_bench_layer_forward(b, i, a->in[i], n, QS_ROLE_A, 0, y, &e) == 0);
            CHECK(y && want && !memcmp(y, want, (size_t)n * l->out * sizeof *y));
            /* and not the plain quantized activation */
            memcpy(t, a->in[i], len * sizeof *t);
            qs_bench_act_quant(s, t, n, in, t, &e);
            qs_linear(t, n, in, l->w, l->b, l->out, want);
            CHECK(memcmp(y, want, (size_t)n * l->out * sizeof *y) != 0);
            free(y);
            free(want);
            if (c == 1) { /* s_j = max|X_j|^a / max|W_j|^(1-a), clamped; dead inputs 1 */
                const struct qs_layer *l = &b->model->layers[i];
                int bad = 0;
                for (int j = 0; j < in; j++) {
                    double xm = 0, wm = 0;
                    for (int r = 0; r < n; r++)
                        xm = fmax(xm, fabs(a->in[i][(size_t)r * in + j]));
                    for (int r = 0; r < l->out; r++)
                        wm = fmax(wm, fabs(l->w[(size_t)r * in + j]));
                    double want = xm == 0 ? 1.0 : fmax(sqrt(xm) / sqrt(fmax(wm, 1e-5)), 1e-5);
                    bad |= fabs(s->xs[j] - want) > 1e-5 * want;
                }
                CHECK(!bad);
            }
            free(t);
        }
    }
    qs_bench_free(b);
}

/* Refusals with a reason: a method on format none, on=a with a weight method, two channel
 * transforms together; and a rule that needs data on a bench without data. */
static void test_refusals(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(rule(b, "*", "none", "method=gptq", 0, &e) < 0);
    CHECK(rule(b, "*", "int4", "method=gptq", QS_ROLE_A, &e) < 0);
    CHECK(strstr(e.msg, "on=a") != NULL);
    CHECK(rule(b, "*", "int4", "rotate=hadamard smooth=0.5", 0, &e) < 0);
    CHECK(rule(b, "*", "int4", "method=awq smooth=0.5", 0, &e) < 0);
    CHECK(rule(b, "*", "int4", "method=gptq weight=imatrix", 0, &e) < 0);
    CHECK(rule(b, "*", "int4", "damp=0.1", 0, &e) < 0);
    qs_bench_free(b);
    /* a model without data: the site stays pending, and a strict refresh says why */
    struct qs_bench *nb = qs_bench_new();
    struct qs_mlp *m = NULL;
    CHECK(nb && qs_mlp_load(QS_TEST_DIGITS_MODEL, QS_ACT_RELU, 0, &m, &e) == 0 &&
          qs_bench_set_model(nb, m, QS_TEST_DIGITS_MODEL, &e) == 0);
    CHECK(rule(nb, "*", "int4", "gran=channel method=gptq", 0, &e) == 3);
    CHECK(qs_bench_methods_pending(nb) && qs_site_wq(nb, 0, NULL) == NULL);
    CHECK(qs_bench_methods_refresh(nb, 1, &e) < 0 && strstr(e.msg, "method=gptq"));
    /* rotation with round-to-nearest needs no data */
    CHECK(rule(nb, "*", "int4", "gran=channel rotate=hadamard", 0, &e) == 3);
    CHECK(!qs_bench_methods_pending(nb) && qs_site_wq(nb, 0, NULL) != NULL);
    qs_bench_free(nb);
}

/* The tiny GPT-2: every site's GPTQ (sequential, int3 per channel) has lower local error than
 * round-to-nearest; rotation's effective weight has the rotated error's singular values (the
 * same Frobenius norm); every site's packed codes decode to its weights. */
static void test_lm_gptq(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-gpt2");
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(qs_bench_set_calib(b, 4, &e) == 0);
    int S = b->lm->nsites;
    double *rtn = calloc((size_t)S, sizeof *rtn);
    CHECK(rule(b, "*", "int3", "gran=channel", 0, &e) == S);
    for (int i = 0; i < S; i++) {
        CHECK(qs_bench_site_rows(b, i, &e) == 0);
        rtn[i] = local_err(b, i, &e);
    }
    CHECK(rule(b, "*", "int3", "gran=channel method=gptq", 0, &e) == S);
    double worst = 0.0;
    for (int i = 0; i < S; i++) {
        double g = local_err(b, i, &e);
        CHECK(g >= 0 && g < rtn[i]);
        worst = fmax(worst, g / rtn[i]);
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        size_t nw = (size_t)u.out * u.in;
        float *d = malloc(nw * sizeof *d);
        CHECK(d && qs_quant_unpack(&b->ls[i].packed, d, &e) == 0 &&
              !memcmp(d, qs_site_wq(b, i, NULL), nw * sizeof *d));
        free(d);
    }
    fprintf(stderr, "  tiny-gpt2 int3/channel: local error GPTQ / RTN, worst site %.4f\n", worst);
    free(rtn);
    qs_bench_free(b);
}

/* A transformer site's method statistics are summed while the calibration windows stream
 * (O(in^2) memory): with an activation budget far below the site's calibration rows, GPTQ, AWQ
 * and imatrix give the same weights, bit for bit, as with the rows at hand; a rotation (whose
 * basis change is applied to rows) is refused with the budget named. */
static void test_lm_stats_streamed(void)
{
    static const char *toks[] = {"gran=channel method=gptq", "gran=channel method=awq",
                                 "gran=channel weight=imatrix",
                                 "gran=channel method=gptq inputs=float"};
    const char *site = "h.1.mlp.c_proj"; /* in 256: 8 windows x 64 rows = 512 KB of inputs */
    for (int k = 0; k < 4; k++) {
        qs_err e = {{0}};
        struct qs_bench *a = qs_test_open_lm("datasets/models/tiny-gpt2");
        struct qs_bench *b = qs_test_open_lm("datasets/models/tiny-gpt2");
        CHECK(a && b);
        if (!a || !b) {
            qs_bench_free(a);
            qs_bench_free(b);
            return;
        }
        b->act_budget = 128 * 1024; /* a window's rows fit (64 KB), the calibration's do not */
        int i = qs_bench_layer_index(a, site);
        CHECK(rule(a, "*", "int4", "gran=channel", 0, &e) > 0 &&
              rule(b, "*", "int4", "gran=channel", 0, &e) > 0);
        int ra = rule(a, site, "int3", toks[k], 0, &e);
        int rb = rule(b, site, "int3", toks[k], 0, &e);
        if (ra != 1 || rb != 1)
            fprintf(stderr, "  %s: %s\n", toks[k], e.msg);
        CHECK(ra == 1 && rb == 1);
        struct qs_unit u;
        qs_bench_unit(a, i, &u);
        CHECK(qs_site_wq(a, i, NULL) && qs_site_wq(b, i, NULL) &&
              !memcmp(qs_site_wq(a, i, NULL), qs_site_wq(b, i, NULL),
                      (size_t)u.out * u.in * sizeof(float)));
        if (k == 0) { /* rows are what a rotation needs: refused within the budget */
            CHECK(rule(b, site, "int3", "gran=channel method=gptq rotate=hadamard", 0, &e) < 0 &&
                  strstr(e.msg, "activation budget"));
        }
        qs_bench_free(a);
        qs_bench_free(b);
    }
}

/* allocate bits= with methods: a GPTQ candidate is the site GPTQ computes with inputs=float
 * (its uniform plan scores as `quant * int3 gran=channel method=gptq inputs=float` evaluates),
 * and at the same bits the allocator picks it over round-to-nearest on every layer. */
static void test_allocate_methods(void)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_test_open_digits();
    CHECK(b != NULL);
    if (!b)
        return;
    struct qs_wcand cand[2];
    memset(cand, 0, sizeof cand);
    for (int k = 0; k < 2; k++) {
        qs_format_parse("int3", &cand[k].fmt, &e);
        qs_qopts_default(&cand[k].opt);
        qs_qopts_parse_token(&cand[k].opt, "gran=channel", &e);
        snprintf(cand[k].label, sizeof cand[k].label, k ? "int3/channel+gptq" : "int3/channel");
    }
    cand[1].meth.method = QS_METHOD_GPTQ;
    cand[1].meth.inputs_float = 1;
    struct qs_bit_plan p;
    CHECK(qs_allocate_bits(b, cand, 2, 3.25, &p, &e) == 0);
    for (int i = 0; i < 3; i++)
        CHECK(p.choice[i] == 1);
    /* the uniform GPTQ candidate is the bench's GPTQ inputs=float model */
    CHECK(rule(b, "*", "int3", "gran=channel method=gptq inputs=float", 0, &e) == 3);
    struct qs_metric m;
    CHECK(qs_bench_run(b, QS_TEST, ~0ULL, 0, &m, NULL, &e) == 0);
    CHECK(m.loss == p.uniform_test[1].loss && m.acc == p.uniform_test[1].acc);
    fprintf(stderr, "  allocate int3/channel: uniform test loss RTN %.4f, GPTQ %.4f\n",
            p.uniform_test[0].loss, p.uniform_test[1].loss);
    qs_bit_plan_free(&p);
    qs_bench_free(b);
}

TEST_MAIN("quant_methods", TEST_CASE(test_sites_equal_kernels), TEST_CASE(test_awq_site),
          TEST_CASE(test_gptq_beats_rtn_mlp), TEST_CASE(test_upstream_recompute),
          TEST_CASE(test_act_transforms), TEST_CASE(test_refusals), TEST_CASE(test_lm_gptq),
          TEST_CASE(test_lm_stats_streamed), TEST_CASE(test_allocate_methods))
