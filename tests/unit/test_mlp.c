/* test_mlp.c - MLP loading (metadata and nn.Sequential inference), forward pass against PyTorch
 * and a naive loop, backward pass against finite differences, save/load, bad input. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "qscope/dataset.h"
#include "qscope/mlp.h"
#include "qscope/safetensors.h"
#include "test.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = 0;
    fclose(f);
    return s;
}

/* The PyTorch-trained nn.Sequential (tests/tools/make_torch_mlp.py): same predictions, loss within
 * 1e-5 of PyTorch's over all 1797 digits. */
static void test_torch_sequential(void)
{
    qs_err e;
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    CHECK(qs_mlp_load("tests/fixtures/torch_mlp.safetensors", QS_ACT_GELU, 1, &m, &e) == 0);
    CHECK(qs_dataset_load_csv("datasets/digits.csv", NULL, &d, &e) == 0);
    char *js = slurp("tests/fixtures/torch_mlp.json");
    cJSON *ref = js ? cJSON_Parse(js) : NULL;
    CHECK(ref != NULL);
    if (!m || !d || !ref)
        return;
    CHECK(m->from_sequential);
    CHECK(m->nlayers == 3);
    CHECK(m->layers[0].in == 64 && m->layers[0].out == 32 && m->layers[2].out == 10);
    CHECK(m->layers[0].act == QS_ACT_GELU && m->layers[2].act == QS_ACT_NONE);
    float *logits = malloc((size_t)d->n * 10 * sizeof(float));
    CHECK(qs_mlp_forward(m, d->x, d->n, logits, &e) == 0);
    int correct = 0;
    double loss = qs_xent(logits, d->y, d->n, 10, &correct, NULL);
    CHECK_NEAR(loss, cJSON_GetObjectItem(ref, "loss")->valuedouble, 1e-5);
    cJSON *pred = cJSON_GetObjectItem(ref, "pred");
    int same = 0;
    for (int r = 0; r < d->n; r++) {
        int arg = 0;
        for (int j = 1; j < 10; j++)
            if (logits[r * 10 + j] > logits[r * 10 + arg])
                arg = j;
        same += arg == cJSON_GetArrayItem(pred, r)->valueint;
    }
    CHECK(same == d->n);
    cJSON *l5 = cJSON_GetObjectItem(ref, "logits_first5");
    for (int r = 0; r < 5; r++)
        for (int j = 0; j < 10; j++)
            CHECK_NEAR(logits[r * 10 + j],
                       cJSON_GetArrayItem(cJSON_GetArrayItem(l5, r), j)->valuedouble, 1e-4);
    free(logits);
    cJSON_Delete(ref);
    free(js);
    qs_dataset_free(d);
    qs_mlp_free(m);
}

/* Forward pass against a naive triple loop in double. */
static void test_forward_naive(void)
{
    qs_err e;
    qs_rng rng;
    qs_rng_seed(&rng, 7);
    int sizes[] = {13, 29, 17, 5};
    struct qs_mlp *m;
    CHECK(qs_mlp_new(sizes, 4, QS_ACT_TANH, &rng, &m, &e) == 0);
    for (int i = 0; i < m->nlayers; i++)
        for (int j = 0; j < m->layers[i].out; j++)
            m->layers[i].b[j] = (float)qs_rng_normal(&rng) * 0.1f;
    int n = 37;
    float *x = malloc(n * 13 * sizeof(float)), *out = malloc(n * 5 * sizeof(float));
    for (int j = 0; j < n * 13; j++)
        x[j] = (float)qs_rng_normal(&rng);
    CHECK(qs_mlp_forward(m, x, n, out, &e) == 0);
    for (int r = 0; r < n; r++) {
        double a[64], b2[64];
        for (int j = 0; j < 13; j++)
            a[j] = x[r * 13 + j];
        int w = 13;
        for (int i = 0; i < m->nlayers; i++) {
            const struct qs_layer *l = &m->layers[i];
            for (int o = 0; o < l->out; o++) {
                double s = l->b[o];
                for (int k = 0; k < l->in; k++)
                    s += (double)l->w[o * l->in + k] * a[k];
                b2[o] = l->act == QS_ACT_TANH ? tanh(s) : s;
            }
            w = l->out;
            for (int o = 0; o < w; o++)
                a[o] = b2[o];
        }
        for (int o = 0; o < 5; o++)
            CHECK_NEAR(out[r * 5 + o], a[o], 1e-4);
    }
    free(x);
    free(out);
    qs_mlp_free(m);
}

/* Every gradient entry against a central finite difference (double-checked on a tiny model). */
static void check_grad(enum qs_act act)
{
    qs_err e;
    qs_rng rng;
    qs_rng_seed(&rng, 11 + act);
    int sizes[] = {4, 6, 5, 3};
    struct qs_mlp *m;
    CHECK(qs_mlp_new(sizes, 4, act, &rng, &m, &e) == 0);
    for (int i = 0; i < m->nlayers; i++)
        for (int j = 0; j < m->layers[i].out; j++)
            m->layers[i].b[j] = (float)qs_rng_normal(&rng) * 0.3f;
    int n = 9, y[9];
    float x[9 * 4];
    for (int j = 0; j < 36; j++)
        x[j] = (float)qs_rng_normal(&rng);
    for (int r = 0; r < n; r++)
        y[r] = r % 3;
    float *gw[3], *gb[3];
    for (int i = 0; i < 3; i++) {
        gw[i] = malloc(m->layers[i].in * m->layers[i].out * sizeof(float));
        gb[i] = malloc(m->layers[i].out * sizeof(float));
    }
    CHECK(qs_mlp_loss_grad(m, x, y, n, gw, gb, NULL) > 0);
    float logits[27];
    double worst = 0.0;
    for (int i = 0; i < 3; i++) {
        struct qs_layer *l = &m->layers[i];
        for (int j = 0; j < l->in * l->out + l->out; j++) {
            float *p = j < l->in * l->out ? &l->w[j] : &l->b[j - l->in * l->out];
            float g = j < l->in * l->out ? gw[i][j] : gb[i][j - l->in * l->out];
            float keep = *p, h = 1e-2f;
            *p = keep + h;
            qs_mlp_forward(m, x, n, logits, &e);
            double lp = qs_xent(logits, y, n, 3, NULL, NULL);
            *p = keep - h;
            qs_mlp_forward(m, x, n, logits, &e);
            double lm = qs_xent(logits, y, n, 3, NULL, NULL);
            *p = keep;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(fd - g) / fmax(1e-2, fabs(fd) + fabs(g));
            if (err > worst)
                worst = err;
        }
    }
    CHECK(worst < 2e-2); /* float32 central differences at h = 1e-2 */
    for (int i = 0; i < 3; i++) {
        free(gw[i]);
        free(gb[i]);
    }
    qs_mlp_free(m);
}

static void test_grad_tanh(void)
{
    check_grad(QS_ACT_TANH);
}
static void test_grad_sigmoid(void)
{
    check_grad(QS_ACT_SIGMOID);
}
static void test_grad_gelu(void)
{
    check_grad(QS_ACT_GELU);
}

static void test_save_load_roundtrip(void)
{
    qs_err e;
    qs_rng rng;
    qs_rng_seed(&rng, 3);
    int sizes[] = {2, 8, 2};
    struct qs_mlp *m, *m2 = NULL;
    CHECK(qs_mlp_new(sizes, 3, QS_ACT_SIGMOID, &rng, &m, &e) == 0);
    qs_mlp_set_meta(m, "qscope.test_acc", "0.5");
    CHECK(qs_mlp_save(m, "build/test_mlp_roundtrip.safetensors", &e) == 0);
    CHECK(qs_mlp_load("build/test_mlp_roundtrip.safetensors", QS_ACT_RELU, 0, &m2, &e) == 0);
    if (m2) {
        CHECK(!m2->from_sequential);
        CHECK(m2->layers[0].act == QS_ACT_SIGMOID); /* from metadata, not the default */
        CHECK_STR(m2->layers[1].name, "fc1");
        CHECK_STR(qs_mlp_get_meta(m2, "qscope.test_acc"), "0.5");
        CHECK(memcmp(m->layers[1].w, m2->layers[1].w, 16 * sizeof(float)) == 0);
    }
    qs_mlp_free(m);
    qs_mlp_free(m2);
}

static void write_two(const char *path, int in0, int out0, int in1, int out1, float poison)
{
    float w0[64] = {0}, w1[64] = {0};
    w0[5] = poison;
    struct qs_st_out t[2] = {
        {.name = "0.weight", .dtype = QS_DT_F32, .ndim = 2, .shape = {out0, in0}, .data = w0},
        {.name = "2.weight", .dtype = QS_DT_F32, .ndim = 2, .shape = {out1, in1}, .data = w1},
    };
    qs_err e;
    CHECK(qs_st_write(path, t, 2, NULL, NULL, 0, &e) == 0);
}

static void test_bad_models(void)
{
    qs_err e;
    struct qs_mlp *m = NULL;
    write_two("build/test_mlp_nochain.safetensors", 3, 4, 5, 5, 0.0f);
    CHECK(qs_mlp_load("build/test_mlp_nochain.safetensors", QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(strstr(e.msg, "test_mlp_nochain.safetensors") && strstr(e.msg, "do not chain"));
    write_two("build/test_mlp_nan.safetensors", 3, 4, 4, 2, NAN);
    CHECK(qs_mlp_load("build/test_mlp_nan.safetensors", QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(strstr(e.msg, "'0.weight'") && strstr(e.msg, "[1, 2]") && strstr(e.msg, "non-finite"));
    write_two("build/test_mlp_inf.safetensors", 3, 4, 4, 2, INFINITY);
    CHECK(qs_mlp_load("build/test_mlp_inf.safetensors", QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(strstr(e.msg, "non-finite") != NULL);
    CHECK(qs_mlp_load("build/does-not-exist.safetensors", QS_ACT_RELU, 0, &m, &e) < 0);
    CHECK(strstr(e.msg, "does-not-exist.safetensors") != NULL);
    CHECK(m == NULL);
    enum qs_act a;
    CHECK(qs_act_parse("swish", &a, &e) < 0 && strstr(e.msg, "swish"));
}

/* The trainer learns a separable problem and is deterministic for a seed. */
static void test_trainer_deterministic(void)
{
    qs_err e;
    struct qs_dataset *d;
    CHECK(qs_toy_generate("moons", 400, 0.1, 5, &d, &e) == 0);
    double acc[2];
    float w0[2];
    for (int k = 0; k < 2; k++) {
        qs_rng rng;
        qs_rng_seed(&rng, 1);
        int sizes[] = {2, 16, 16, 2};
        struct qs_mlp *m;
        CHECK(qs_mlp_new(sizes, 4, QS_ACT_RELU, &rng, &m, &e) == 0);
        struct qs_train_opts o = {.epochs = 60, .batch = 32, .lr = 1e-2, .seed = 4};
        CHECK(qs_mlp_train(m, d->x, d->y, d->n, &o, NULL, NULL, &e) == 0);
        float *lg = malloc(d->n * 2 * sizeof(float));
        qs_mlp_forward(m, d->x, d->n, lg, &e);
        int c = 0;
        qs_xent(lg, d->y, d->n, 2, &c, NULL);
        acc[k] = (double)c / d->n;
        w0[k] = m->layers[1].w[7];
        free(lg);
        qs_mlp_free(m);
    }
    CHECK(acc[0] >= 0.95);
    CHECK(acc[0] == acc[1] && w0[0] == w0[1]);
    qs_dataset_free(d);
}

TEST_MAIN("mlp", TEST_CASE(test_torch_sequential), TEST_CASE(test_forward_naive),
          TEST_CASE(test_grad_tanh), TEST_CASE(test_grad_sigmoid), TEST_CASE(test_grad_gelu),
          TEST_CASE(test_save_load_roundtrip), TEST_CASE(test_bad_models),
          TEST_CASE(test_trainer_deterministic))
