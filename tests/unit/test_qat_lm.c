/* test_qat_lm.c - quantization-aware training of transformers (src/analysis/qat.c): one
 * straight-through step's gradient against PyTorch autograd through w + (q(w) - w).detach() and
 * x + (q(x) - x).detach() (tests/fixtures/lm_qat.json from tests/tools/make_qat_fixture.py), and
 * `qat` at int3 per channel on a GPT-2 trained by PyTorch outside qscope
 * (tests/fixtures/delta_gpt2) lowering the quantized held-out loss. */
#include "qscope/qat.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lm_grad.h"
#include "qscope/lmbench.h"
#include "qscope/tokens.h"
#include "lm_fixture.h"
#include "test.h"

#define FIXTURE "tests/fixtures/lm_qat.json"
#define FX "tests/fixtures/delta_gpt2"
#define TOL 1e-4 /* test_lm_grad.c's */

/* The fixture's tensors (by name, each g's) against g's gradients: norm, two sign projections
 * and sampled entries within TOL relative. *n: tensors compared. The worst relative error. */
static double compare_grads(const char *dir, const struct qs_lm_grad *g, const cJSON *ts, int *n)
{
    double worst = 0;
    const cJSON *t;
    *n = 0;
    cJSON_ArrayForEach(t, ts)
    {
        const char *name = cJSON_GetObjectItem(t, "name")->valuestring;
        const struct qs_lm_tensor *x = NULL;
        for (int k = 0; g && k < g->ntensor && !x; k++)
            if (!strcmp(g->t[k].name, name))
                x = &g->t[k];
        if (!x) {
            fprintf(stderr, "  %s: no tensor %s\n", dir, name);
            CHECK(0);
            continue;
        }
        (*n)++;
        struct lmfx_err r = lmfx_grad_err(x->grad, x->n, t);
        double er = fmax(fmax(r.norm, r.proj), r.entry);
        worst = fmax(worst, er);
        if (!(er <= TOL)) {
            fprintf(stderr, "  %s %s: relative error %.3g (norm %.9g vs torch %.9g)\n", dir,
                    x->name, er, r.got_norm, r.ref_norm);
            CHECK(0);
        }
    }
    return worst;
}

/* The fixture's formats as a bench resolves them: int3 per channel on every site's weight,
 * int8 per tensor (dynamic) on the inputs of block blk's sites. */
static struct qs_layer_state *fixture_formats(const struct qs_lm *m, int blk)
{
    struct qs_layer_state *ls = calloc((size_t)m->nsites, sizeof *ls);
    qs_err e;
    for (int s = 0; s < m->nsites; s++) {
        CHECK(qs_format_parse("int3", &ls[s].wfmt, &e) == 0);
        qs_qopts_default(&ls[s].wopt);
        ls[s].wopt.gran = QS_GRAN_CHANNEL;
        qs_qopts_default(&ls[s].aopt);
        ls[s].afmt.kind = QS_FMT_NONE;
        if (qs_lm_site_block(m, s) == blk) {
            CHECK(qs_format_parse("int8", &ls[s].afmt, &e) == 0);
            ls[s].amode = QS_AMODE_DYNAMIC;
        }
    }
    return ls;
}

static void check_case(const cJSON *c)
{
    const char *dir = cJSON_GetObjectItem(c, "model")->valuestring;
    struct qs_lm *m = NULL;
    qs_err e = {{0}};
    if (qs_lm_load(dir, &m, &e) < 0) {
        fprintf(stderr, "  %s\n", e.msg);
        CHECK(0);
        return;
    }
    int B, T;
    size_t *start;
    uint32_t *tok = lmfx_windows(c, &B, &T, &start);
    struct qs_layer_state *ls = fixture_formats(m, cJSON_GetObjectItem(c, "act_block")->valueint);
    struct qs_qat_hooks q;
    CHECK(qs_qat_hooks_init(&q, m, ls, &e) == 0);
    CHECK(q.nw == m->nsites && q.na == (m->family == QS_LM_GPT2 ? 4 : 7));
    struct qs_lm_grad *g = qs_lm_grad_new(m, &e);
    double loss = 0;
    CHECK(g && qs_lm_backward(m, tok, start, B, T, &q.h, g, &loss, NULL, &e) == 0);
    double ref = cJSON_GetObjectItem(c, "loss")->valuedouble;
    double lf = cJSON_GetObjectItem(c, "float_loss")->valuedouble;
    CHECK_REL(loss, ref, 1e-6);
    CHECK(fabs(ref - lf) > 0.05); /* the quantizers do change the loss */
    int i = 0;
    double worst = compare_grads(dir, g, cJSON_GetObjectItem(c, "tensors"), &i);
    CHECK(g && i == g->ntensor);
    fprintf(stderr, "  %s: STE loss %.6f (torch %.6f), %d tensors, worst relative error %.2g\n",
            dir, loss, ref, i, worst);
    qs_lm_grad_free(g);
    qs_qat_hooks_free(&q);
    free(ls);
    free(tok);
    free(start);
    qs_lm_free(m);
}

static void test_ste_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    CHECK(root != NULL);
    if (!root)
        return;
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        check_case(c);
        n++;
    }
    CHECK(n == 2);
    cJSON_Delete(root);
}

/* One block alone (qs_lm_block, qat mode=block's step) against PyTorch: input the embedding of
 * the windows, target the input itself, mean squared error; through the straight-through hooks
 * (int3 weights, int8 inputs of the block's sites) or float. Only the block's own tensors get
 * a gradient. */
static void test_block_vs_torch(void)
{
    cJSON *root = lmfx_load(FIXTURE);
    CHECK(root != NULL);
    if (!root)
        return;
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "blocks"))
    {
        const char *dir = cJSON_GetObjectItem(c, "model")->valuestring;
        struct qs_lm *m = NULL;
        qs_err e = {{0}};
        if (qs_lm_load(dir, &m, &e) < 0) {
            fprintf(stderr, "  %s\n", e.msg);
            CHECK(0);
            continue;
        }
        int B, T, l = cJSON_GetObjectItem(c, "block")->valueint;
        int ste = cJSON_IsTrue(cJSON_GetObjectItem(c, "ste"));
        size_t *start;
        uint32_t *tok = lmfx_windows(c, &B, &T, &start);
        size_t Nd = (size_t)B * T * m->d_model;
        float *x = malloc(Nd * sizeof *x), *y = malloc(Nd * sizeof *y);
        qs_lm_embed_rows(m, tok, start, B, T, x);
        struct qs_layer_state *ls = fixture_formats(m, l);
        struct qs_qat_hooks q;
        CHECK(qs_qat_hooks_init(&q, m, ls, &e) == 0);
        struct qs_lm_grad *g = qs_lm_grad_new(m, &e);
        double mse = 0, mse2 = 0;
        CHECK(g && qs_lm_block(m, l, x, B, T, ste ? &q.h : NULL, y, x, &mse, g, &e) == 0);
        CHECK_REL(mse, cJSON_GetObjectItem(c, "mse")->valuedouble, 1e-5);
        /* the output y is the block's: the mse recomputed from it, and without g the same */
        double s2 = 0;
        for (size_t i = 0; i < Nd; i++)
            s2 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        CHECK_REL(s2 / Nd, mse, 1e-12);
        CHECK(qs_lm_block(m, l, x, B, T, ste ? &q.h : NULL, NULL, x, &mse2, NULL, &e) == 0 &&
              mse2 == mse);
        int k = 0;
        double worst = compare_grads(dir, g, cJSON_GetObjectItem(c, "tensors"), &k);
        CHECK(k == (m->family == QS_LM_GPT2 ? 12 : 9));
        /* no other tensor was touched */
        char pre[32];
        snprintf(pre, sizeof pre, m->family == QS_LM_GPT2 ? "h.%d." : "model.layers.%d.", l);
        int others = 0;
        for (int i = 0; g && i < g->ntensor; i++)
            if (strncmp(g->t[i].name, pre, strlen(pre)))
                for (size_t j = 0; j < g->t[i].n; j++)
                    others += g->t[i].grad[j] != 0.0f;
        CHECK(others == 0);
        fprintf(stderr,
                "  %s block %d%s: mse %.6f (torch %.6f), %d tensors, worst relative "
                "error %.2g\n",
                dir, l, ste ? " straight-through" : "", mse,
                cJSON_GetObjectItem(c, "mse")->valuedouble, k, worst);
        qs_lm_grad_free(g);
        qs_qat_hooks_free(&q);
        free(ls);
        free(x);
        free(y);
        free(tok);
        free(start);
        qs_lm_free(m);
        n++;
    }
    CHECK(n == 3);
    cJSON_Delete(root);
}

static int rule(struct qs_bench *b, const char *pat, const char *fmt, const char *opt, int roles,
                enum qs_amode am)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    if (opt && qs_qopts_parse_token(&r.opt, opt, &e) < 0)
        return -1;
    r.roles = roles;
    r.amode = am;
    int n;
    return qs_bench_add_rule(b, &r, &n, &e) < 0 ? -1 : n;
}

static struct qs_bench *fixture_bench(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    if (!b || qs_lm_load(FX, &m, &e) < 0 || qs_bench_set_lm(b, m, FX, &e) < 0 ||
        qs_tokens_load(FX "/data.txt", &t, &e) < 0 || qs_bench_set_tokens(b, t, FX, &e) < 0) {
        fprintf(stderr, "  fixture: %s\n", e.msg);
        qs_bench_free(b);
        return NULL;
    }
    return b;
}

/* The done-when: `qat epochs=1` at int3 per channel lowers the quantized held-out loss
 * of a GPT-2 that PyTorch trained. The hooks' quantized loss before training is the bench's own
 * eval (the same quantizer); afterwards the bench holds the new model with the same rules. */
static void test_qat_lowers_loss(void)
{
    struct qs_bench *b = fixture_bench();
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    CHECK(rule(b, "*", "int3", "gran=channel", QS_ROLE_W, QS_AMODE_DYNAMIC) == 9);
    struct qs_eval ev;
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    const struct qs_lm *old = b->lm;
    struct qs_qat_lm_opts o;
    qs_qat_lm_defaults(&o);
    struct qs_qat_lm_result r;
    if (qs_qat_lm(b, &o, NULL, NULL, &r, &e) < 0) {
        fprintf(stderr, "  qat: %s\n", e.msg);
        CHECK(0);
        qs_bench_free(b);
        return;
    }
    fprintf(stderr,
            "  delta_gpt2 int3/channel, %d steps: held-out loss float %.4f, PTQ %.4f -> QAT "
            "%.4f (float after %.4f), gap closed %.3f\n",
            r.steps, r.f_loss, r.ptq_loss, r.qat_loss, r.f_loss_after, r.gap_closed);
    CHECK(r.steps == 70 && r.w_sites == 9 && r.a_sites == 0); /* (36000 - 1) / (16 x 32) */
    CHECK(r.ptq_loss == ev.q.loss && r.f_loss == ev.f.loss);
    CHECK_REL(r.ste_loss0, r.ptq_loss, 1e-6); /* the hooks quantize as the bench does */
    CHECK(r.ptq_loss - r.f_loss > 0.1);
    CHECK(r.qat_loss < r.ptq_loss - 0.1);
    CHECK_REL(r.ste_loss, r.qat_loss, 1e-6);
    CHECK(b->lm != old && b->nrules == 1);
    CHECK(qs_bench_eval(b, &ev, &e) == 0);
    CHECK(ev.q.loss == r.qat_loss && ev.f.loss == r.f_loss_after);
    /* the same run again from the new model is deterministic and lowers it further */
    struct qs_qat_lm_result r2;
    o.steps = 5;
    CHECK(qs_qat_lm(b, &o, NULL, NULL, &r2, &e) == 0);
    CHECK(r2.ptq_loss == r.qat_loss && r2.steps == 5);
    /* nothing quantized: refused, and the bench is left as it was */
    qs_bench_clear_rules(b);
    old = b->lm;
    CHECK(qs_qat_lm(b, &o, NULL, NULL, &r, &e) == -1);
    CHECK(strstr(e.msg, "nothing to train through") != NULL);
    CHECK(b->lm == old);
    qs_bench_free(b);
}

/* qat mode=block (Block-AP) on the PyTorch-trained GPT-2 at int3 per channel: every block's
 * reconstruction error falls, the quantized held-out loss falls, the hooks' loss after training
 * is the bench's eval, the run is deterministic; order=sensitivity trains the most sensitive
 * block first and refuses to guess without a sensitivity. */
static void test_qat_block(void)
{
    struct qs_bench *b = fixture_bench(), *b2 = fixture_bench();
    CHECK(b && b2);
    if (!b || !b2) {
        qs_bench_free(b);
        qs_bench_free(b2);
        return;
    }
    qs_err e = {{0}};
    CHECK(rule(b, "*", "int3", "gran=channel", QS_ROLE_W, QS_AMODE_DYNAMIC) == 9);
    CHECK(rule(b2, "*", "int3", "gran=channel", QS_ROLE_W, QS_AMODE_DYNAMIC) == 9);
    struct qs_qat_lm_opts o;
    qs_qat_lm_defaults(&o);
    o.mode = QS_QAT_BLOCK;
    o.epochs = 5;
    struct qs_qat_lm_result r, r2;
    if (qs_qat_lm(b, &o, NULL, NULL, &r, &e) < 0) {
        fprintf(stderr, "  qat mode=block: %s\n", e.msg);
        CHECK(0);
        qs_bench_free(b);
        qs_bench_free(b2);
        return;
    }
    fprintf(stderr,
            "  delta_gpt2 int3/channel, mode=block, %d steps per block: block mse "
            "%.4g -> %.4g, %.4g -> %.4g; held-out loss float %.4f, PTQ %.4f -> %.4f, gap "
            "closed %.3f\n",
            r.steps, r.mse0[0], r.mse1[0], r.mse0[1], r.mse1[1], r.f_loss, r.ptq_loss, r.qat_loss,
            r.gap_closed);
    CHECK(r.nblocks == 2 && r.order[0] == 0 && r.order[1] == 1 && r.steps == 20 && r.samples == 64);
    for (int k = 0; k < 2; k++)
        CHECK(r.mse1[k] < 0.7 * r.mse0[k]);
    CHECK_REL(r.ste_loss0, r.ptq_loss, 1e-6);
    CHECK(r.qat_loss < r.ptq_loss - 0.03);
    CHECK_REL(r.ste_loss, r.qat_loss, 1e-6);
    CHECK(qs_qat_lm(b2, &o, NULL, NULL, &r2, &e) == 0);
    CHECK(r2.qat_loss == r.qat_loss && r2.mse1[1] == r.mse1[1]);
    qs_bench_free(b2);
    /* order=sensitivity: none computed yet under the new model's formats */
    o.order = QS_QAT_ORDER_SENS;
    o.epochs = 1;
    CHECK(qs_qat_lm(b, &o, NULL, NULL, &r, &e) == -1 && strstr(e.msg, "run `sensitivity`"));
    for (int s = 0; s < b->lm->nsites; s++) { /* block 1's sites the most sensitive */
        snprintf(b->ls[s].sens_method, sizeof b->ls[s].sens_method, "delta");
        b->ls[s].sens = qs_lm_site_block(b->lm, s) == 1 ? 0.5 : 0.1;
    }
    CHECK(qs_qat_lm(b, &o, NULL, NULL, &r, &e) == 0);
    CHECK(r.order[0] == 1 && r.order[1] == 0 && r.mse1[0] < r.mse0[0]);
    qs_bench_free(b);
}

/* Activations through the hooks: static int8 scales on block 0 are those the bench calibrated,
 * and the loss the hooks see before training is the bench's quantized eval. */
static void test_act_static(void)
{
    struct qs_bench *b = fixture_bench();
    CHECK(b != NULL);
    if (!b)
        return;
    qs_err e = {{0}};
    CHECK(rule(b, "*", "int4", "gran=channel", QS_ROLE_W, QS_AMODE_DYNAMIC) == 9);
    CHECK(rule(b, "h.0.*", "int8", NULL, QS_ROLE_A, QS_AMODE_STATIC) == 4);
    struct qs_qat_lm_opts o;
    qs_qat_lm_defaults(&o);
    o.steps = 10;
    struct qs_qat_lm_result r;
    CHECK(qs_qat_lm(b, &o, NULL, NULL, &r, &e) == 0);
    CHECK(r.w_sites == 9 && r.a_sites == 4);
    CHECK_REL(r.ste_loss0, r.ptq_loss, 1e-6);
    CHECK(r.qat_loss < r.ptq_loss);
    qs_bench_free(b);
}

TEST_MAIN("qat_lm", TEST_CASE(test_ste_vs_torch), TEST_CASE(test_block_vs_torch),
          TEST_CASE(test_qat_lowers_loss), TEST_CASE(test_qat_block), TEST_CASE(test_act_static))
