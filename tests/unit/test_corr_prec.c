/* test_corr_prec.c - low-rank corrections with quantized factors (correct ... prec=FORMAT).
 *
 * - bits: r = 8 factors of a 64x64 layer are charged from their packed buffers, not 32 bits a
 *   parameter: int4 codes + one F16 scale per row of each factor is
 *   (64*8*4 + 8*64*4 + (64 + 8)*16) / 4096 = 5248 / 4096 = 1.28125 bits per weight.
 * - the factors are quantized as the test quantizes them itself (symmetric int, scale =
 *   F16(amax / qmax) per row, y = x * (1/s) in F32, round half to even), and the correction the
 *   forward pass adds is the product of the quantized factors.
 * - on the bundled digits MLP, the held-out recovery with int8 factors is within 1e-3 of float
 *   factors, with int4 factors measurably lower, with int2 far lower: the recovery is measured
 *   with the quantized factors.
 * - the journal spells prec= out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/lowrank.h"
#include "test.h"

enum { OUT = 64, IN = 64, R = 8, N = 256 };

static void random_fill(float *a, size_t n, uint64_t seed, double scale)
{
    qs_rng g;
    qs_rng_seed(&g, seed);
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(scale * (2.0 * ((double)(qs_rng_u64(&g) >> 11) / 9007199254740992.0) - 1.0));
}

/* F16 rounding of a positive normal value (round half to even on 11 significant bits). */
static double round_f16(double s)
{
    int ex;
    frexp(s, &ex);
    return ldexp(nearbyint(ldexp(s, 11 - ex)), ex - 11);
}

/* Symmetric intB per row, the test's own: returns the max |difference| to got. */
static double ref_rows(const float *x, int rows, int cols, int bits, const float *got)
{
    double qmax = (1 << (bits - 1)) - 1, worst = 0.0;
    for (int r = 0; r < rows; r++) {
        double amax = 0.0;
        for (int j = 0; j < cols; j++)
            amax = fmax(amax, fabs(x[(size_t)r * cols + j]));
        double s = round_f16(amax / qmax);
        CHECK(s >= 6.103515625e-05); /* a normal F16: round_f16 is exact there */
        float sf = (float)s, inv = 1.0f / sf;
        for (int j = 0; j < cols; j++) {
            float y = x[(size_t)r * cols + j] * inv;
            double q = fmin(fmax(nearbyint((double)y), -qmax), qmax);
            worst = fmax(worst, fabs((double)(float)(q * sf) - got[(size_t)r * cols + j]));
        }
    }
    return worst;
}

static void test_bits_and_factors(void)
{
    float *e = malloc(sizeof(float) * OUT * IN), *x = malloc(sizeof(float) * N * IN);
    random_fill(e, (size_t)OUT * IN, 1, 0.05);
    random_fill(x, (size_t)N * IN, 2, 1.0);
    qs_err err;
    struct qs_corr fl, q;
    CHECK(qs_corr_fit_lowrank(QS_CORR_LOWRANK, e, OUT, IN, x, N, R, "float", &fl, &err) == 0);
    CHECK(fl.bits == 32.0 * R * (OUT + IN));
    CHECK(fl.bits / (OUT * IN) == 8.0); /* the figure for float factors */
    CHECK_STR(fl.prec, "float");
    const struct {
        const char *prec;
        double bits;
    } want[] = {
        {"int4", 64 * 8 * 4 + 8 * 64 * 4 + (64 + 8) * 16},
        {"int8", 64 * 8 * 8 + 8 * 64 * 8 + (64 + 8) * 16},
        {"fp8-e4m3", 64 * 8 * 8 + 8 * 64 * 8 + (64 + 8) * 16},
        {"int2", 64 * 8 * 2 + 8 * 64 * 2 + (64 + 8) * 16},
    };
    for (size_t t = 0; t < sizeof want / sizeof *want; t++) {
        CHECK(qs_corr_fit_lowrank(QS_CORR_LOWRANK, e, OUT, IN, x, N, R, want[t].prec, &q, &err) ==
              0);
        CHECK(q.bits == want[t].bits);
        CHECK(q.params == (long)R * (OUT + IN));
        CHECK_STR(q.prec, want[t].prec);
        if (!strcmp(want[t].prec, "int4")) {
            CHECK(q.bits / (OUT * IN) == 1.28125);
            /* the same SVD, then the factors quantized as this test does it */
            CHECK(ref_rows(fl.l, OUT, R, 4, q.l) == 0.0);
            CHECK(ref_rows(fl.rt, R, IN, 4, q.rt) == 0.0);
        }
        if (!strcmp(want[t].prec, "int8")) {
            CHECK(ref_rows(fl.l, OUT, R, 8, q.l) == 0.0);
            CHECK(ref_rows(fl.rt, R, IN, 8, q.rt) == 0.0);
        }
        /* what the forward pass adds is the product of the quantized factors (double here) */
        double worst = 0.0, big = 0.0;
        for (int i = 0; i < OUT; i++)
            for (int j = 0; j < IN; j++) {
                double acc = 0.0;
                for (int k = 0; k < R; k++)
                    acc += (double)q.l[i * R + k] * q.rt[k * IN + j];
                worst = fmax(worst, fabs(acc - q.c[i * IN + j]));
                big = fmax(big, fabs(acc));
            }
        CHECK(worst <= 1e-6 * big);
        qs_corr_clear(&q);
    }
    CHECK(qs_corr_fit_lowrank(QS_CORR_QERA, e, OUT, IN, x, N, R, "bogus", &q, &err) < 0);
    CHECK(strstr(err.msg, "prec=bogus") != NULL);
    qs_corr_clear(&fl);
    free(e);
    free(x);
}

/* ---- through the command, on the bundled digits MLP ---------------------------------------- */

struct capture {
    double recovery, bits, layer_bpw;
    char prec[32];
};

static void capture_emit(void *u, const cJSON *obj, const char *text)
{
    (void)text;
    struct capture *cap = u;
    const cJSON *cmd = obj ? cJSON_GetObjectItemCaseSensitive(obj, "cmd") : NULL;
    if (!cJSON_IsString(cmd) || strcmp(cmd->valuestring, "correct"))
        return;
    cap->recovery = qs_json_get_num(cJSON_GetObjectItemCaseSensitive(obj, "recovery"));
    cap->bits = qs_json_get_num(cJSON_GetObjectItemCaseSensitive(obj, "bits_added"));
    cap->layer_bpw =
        qs_json_get_num(cJSON_GetObjectItemCaseSensitive(obj, "layer_bits_per_weight"));
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prec");
    snprintf(cap->prec, sizeof cap->prec, "%s", cJSON_IsString(p) ? p->valuestring : "?");
}

static int run(struct qs_ctx *c, const char *line)
{
    qs_err e;
    if (qs_exec_line(c, line, &e) < 0) {
        fprintf(stderr, "  '%s': %s\n", line, e.msg);
        return -1;
    }
    return 0;
}

static void test_recovery_with_quantized_factors(void)
{
    struct qs_bench *b = qs_bench_new();
    struct qs_ctx c;
    struct capture cap = {0};
    qs_ctx_init(&c, b);
    c.emit = capture_emit;
    c.u = &cap;
    CHECK(run(&c, "load model datasets/models/digits-mlp.safetensors") == 0);
    CHECK(run(&c, "load data datasets/digits.csv") == 0);
    CHECK(run(&c, "quant * int3 gran=tensor") == 0);
    const char *precs[] = {"float", "int8", "int4", "int2"};
    double rec[4] = {0}, bits[4] = {0};
    for (int k = 0; k < 4; k++) {
        char line[128];
        snprintf(line, sizeof line, "correct fc0 qera r=8 prec=%s", precs[k]);
        cap.recovery = NAN;
        CHECK(run(&c, line) == 0);
        rec[k] = cap.recovery;
        bits[k] = cap.bits;
        CHECK_STR(cap.prec, precs[k]);
        /* the journal keeps the canonical line, prec spelled out */
        CHECK(c.njournal > 0 && !strcmp(c.journal[c.njournal - 1].line, line));
        /* the corrected weight the forward pass uses is Q(W) + Q(l) Q(rt) */
        const struct qs_corr *cr = &b->ls[0].corr;
        double worst = 0.0;
        for (int i = 0; i < 64; i++)
            for (int j = 0; j < 64; j++) {
                double acc = 0.0;
                for (int t = 0; t < 8; t++)
                    acc += (double)cr->l[i * 8 + t] * cr->rt[t * 64 + j];
                worst = fmax(worst, fabs(acc - cr->c[i * 64 + j]));
            }
        CHECK(worst < 1e-5);
    }
    fprintf(stderr, "  qera r=8 on fc0 (int3/tensor): R float %.6f int8 %.6f int4 %.6f int2 %.6f\n",
            rec[0], rec[1], rec[2], rec[3]);
    CHECK(rec[0] > 0.5);
    CHECK(fabs(rec[1] - rec[0]) < 1e-3);
    CHECK(rec[2] < rec[0] - 1e-3 && rec[2] > rec[0] - 0.05);
    CHECK(rec[3] < rec[2] - 0.1);
    CHECK(bits[0] == 32768 && bits[1] == 9344 && bits[2] == 5248 && bits[3] == 3200);
    /* the layer's bits per weight: its packed int3 weight (4096 * 3 bits + one F16 scale)
     * plus the packed int4 factors */
    CHECK(run(&c, "correct fc0 lowrank r=8 prec=int4") == 0);
    CHECK(cap.layer_bpw == (4096.0 * 3 + 16 + 5248) / 4096);
    /* without prec= the journal spells the default out */
    CHECK(run(&c, "correct fc0 lowrank r=8") == 0);
    CHECK_STR(c.journal[c.njournal - 1].line, "correct fc0 lowrank r=8 prec=float");
    CHECK(cap.bits == 32768);
    qs_ctx_free(&c);
    qs_bench_free(b);
}

TEST_MAIN("corr_prec", TEST_CASE(test_bits_and_factors),
          TEST_CASE(test_recovery_with_quantized_factors))
