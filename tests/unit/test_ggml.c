/* test_ggml.c - ggml block types as qscope formats: hand-checked blocks, llama.cpp's fallback for
 * rows that are not a multiple of the block, pack/unpack == fake, bits per weight from the real
 * blocks, options refused. (Byte equality with llama.cpp's own library is tests/sh/ggml.sh.) */
#include "qscope/ggml.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/half.h"
#include "test.h"

static void fmt(const char *name, struct qs_format *f)
{
    qs_err e = {{0}};
    CHECK(qs_format_parse(name, f, &e) == 0);
    CHECK(f->kind == QS_FMT_GGML);
}

/* q8_0 by hand: d = amax / 127 in F16, codes round(x / d) half away from zero. */
static void test_q8_0_by_hand(void)
{
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 16) * 0.25f; /* -4 .. 3.75 */
    uint8_t b[34];
    qs_ggml_quantize(QS_GGML_Q8_0, x, b, 32);
    float d = 4.0f / 127;
    CHECK((b[0] | (b[1] << 8)) == qs_f32_to_f16(d));
    CHECK((int8_t)b[2] == -127);                          /* x = -4: the absmax */
    CHECK((int8_t)b[2 + 18] == (int8_t)roundf(0.5f / d)); /* x = 0.5 */
    float y[32];
    qs_ggml_dequantize(QS_GGML_Q8_0, b, y, 32);
    CHECK(y[0] == -127 * qs_f16_to_f32(qs_f32_to_f16(d)));
}

/* q4_0 by hand: the signed max maps to code 0 (-8 d). */
static void test_q4_0_signed_max(void)
{
    float x[32] = {0};
    x[3] = 2.0f;
    x[20] = -3.0f; /* the element of largest magnitude: d = -3 / -8 = 0.375 */
    uint8_t b[18];
    qs_ggml_quantize(QS_GGML_Q4_0, x, b, 32);
    CHECK(qs_f16_to_f32((uint16_t)(b[0] | (b[1] << 8))) == 0.375f);
    CHECK((b[2 + 4] >> 4) == 0);     /* element 20 = high nibble of byte 4: code 0 -> -8 d */
    CHECK((b[2 + 3] & 15) == 8 + 5); /* element 3: 2 / 0.375 = 5.33 -> 5 (codes q - 8) */
    float y[32];
    qs_ggml_dequantize(QS_GGML_Q4_0, b, y, 32);
    CHECK(y[20] == -3.0f && y[0] == 0.0f);
}

static void test_layout_sizes(void)
{
    static const struct {
        const char *name;
        double bpw;
    } want[] = {{"q8_0", 8.5},   {"q4_0", 4.5},    {"q4_1", 5.0}, {"q5_0", 5.5}, {"q5_1", 6.0},
                {"q2_k", 2.625}, {"q3_k", 3.4375}, {"q4_k", 4.5}, {"q5_k", 5.5}, {"q6_k", 6.5625}};
    float *w = malloc(4 * 512 * sizeof *w);
    for (int i = 0; i < 4 * 512; i++)
        w[i] = sinf((float)i * 0.37f);
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        struct qs_format f;
        struct qs_qopts o;
        struct qs_packed p;
        struct qs_packed_layout lay;
        qs_err e = {{0}};
        fmt(want[k].name, &f);
        qs_qopts_default(&o);
        CHECK(qs_quant_pack(&f, &o, w, 4, 512, &p, &e) == 0);
        CHECK(qs_packed_bits_per_weight(&p) == want[k].bpw);
        CHECK(qs_packed_layout(&f, &o, 4, 512, &lay, &e) == 0);
        CHECK(lay.code_bytes == p.code_bytes && lay.scale_bytes == 0);
        CHECK(lay.group == f.block);
        float *a = malloc(4 * 512 * sizeof *a), *b = malloc(4 * 512 * sizeof *b);
        CHECK(qs_quant_unpack(&p, a, &e) == 0);
        CHECK(qs_quant_fake(&f, &o, w, 4, 512, b, &e) == 0);
        CHECK(memcmp(a, b, 4 * 512 * sizeof *a) == 0);
        /* in place */
        memcpy(b, w, 4 * 512 * sizeof *b);
        CHECK(qs_quant_fake(&f, &o, b, 4, 512, b, &e) == 0);
        CHECK(memcmp(a, b, 4 * 512 * sizeof *a) == 0);
        free(a);
        free(b);
        qs_packed_free(&p);
    }
    free(w);
}

/* llama-quantize's tensor_type_fallback: k-quants on rows not a multiple of 256 use a 32-element
 * type, and F16 when the row is not a multiple of 32 either. */
static void test_fallback(void)
{
    CHECK(qs_ggml_effective_type(QS_GGML_Q4_K, 512) == QS_GGML_Q4_K);
    CHECK(qs_ggml_effective_type(QS_GGML_Q2_K, 96) == QS_GGML_Q4_0);
    CHECK(qs_ggml_effective_type(QS_GGML_Q3_K, 96) == QS_GGML_Q4_0);
    CHECK(qs_ggml_effective_type(QS_GGML_Q4_K, 96) == QS_GGML_Q5_0);
    CHECK(qs_ggml_effective_type(QS_GGML_Q5_K, 96) == QS_GGML_Q5_1);
    CHECK(qs_ggml_effective_type(QS_GGML_Q6_K, 96) == QS_GGML_Q8_0);
    CHECK(qs_ggml_effective_type(QS_GGML_Q6_K, 40) == QS_GGML_F16);
    CHECK(qs_ggml_effective_type(QS_GGML_Q8_0, 40) == -1);
    CHECK(qs_ggml_effective_type(QS_GGML_Q4_0, 64) == QS_GGML_Q4_0);

    float w[3 * 96];
    for (int i = 0; i < 3 * 96; i++)
        w[i] = cosf((float)i);
    struct qs_format f;
    struct qs_qopts o;
    struct qs_packed p;
    qs_err e = {{0}};
    qs_qopts_default(&o);
    fmt("q4_k", &f);
    CHECK(qs_quant_pack(&f, &o, w, 3, 96, &p, &e) == 0);
    uint8_t ref[3 * 66];
    for (int r = 0; r < 3; r++)
        qs_ggml_quantize(QS_GGML_Q5_0, w + 96 * r, ref + 66 * r, 96);
    CHECK(p.code_bytes == sizeof ref && memcmp(p.codes, ref, sizeof ref) == 0);
    CHECK(qs_packed_bits_per_weight(&p) == 5.5);
    qs_packed_free(&p);

    fmt("q6_k", &f);
    CHECK(qs_quant_pack(&f, &o, w, 2, 40, &p, &e) == 0);
    CHECK(qs_packed_bits_per_weight(&p) == 16.0);
    float y[80];
    CHECK(qs_quant_unpack(&p, y, &e) == 0);
    for (int i = 0; i < 80; i++)
        CHECK(y[i] == qs_f16_to_f32(qs_f32_to_f16(w[i])));
    qs_packed_free(&p);

    fmt("q8_0", &f);
    CHECK(qs_quant_fake(&f, &o, w, 2, 40, y, &e) < 0);
    CHECK(strstr(e.msg, "no fallback for q8_0") != NULL);
}

static void test_names_and_options(void)
{
    struct qs_format f;
    struct qs_qopts o;
    qs_err e = {{0}};
    fmt("q4_K", &f); /* ggml's spelling */
    CHECK_STR(f.name, "q4_k");
    CHECK(f.block == 256 && f.ggml == QS_GGML_Q4_K);
    int found = 0;
    for (const char *const *n = qs_format_names(); *n; n++)
        found += !strcmp(*n, "q6_k") || !strcmp(*n, "q8_0");
    CHECK(found == 2);
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "gran=group:32", &e) == 0);
    CHECK(qs_qopts_check(&f, &o, &e) < 0 && strstr(e.msg, "do not apply"));
    qs_qopts_default(&o);
    CHECK(qs_qopts_parse_token(&o, "round=stochastic", &e) == 0);
    CHECK(qs_qopts_check(&f, &o, &e) < 0);
    char buf[64] = "x";
    qs_qopts_default(&o);
    qs_qopts_format(&f, &o, buf, sizeof buf);
    CHECK_STR(buf, "");
    double *v;
    int n;
    CHECK(qs_format_codes(&f, &v, &n, &e) < 0);
    float w[256] = {0};
    w[7] = NAN;
    CHECK(qs_quant_fake(&f, &o, w, 1, 256, w, &e) < 0 && strstr(e.msg, "non-finite"));
    CHECK(qs_ggml_can_decode(QS_GGML_Q6_K) && !qs_ggml_can_decode(16));
    CHECK_STR(qs_ggml_type_name(16), "iq2_xxs");
    CHECK(qs_ggml_type_name(4) == NULL && qs_ggml_type_name(99) == NULL);
}

/* Large matrices run on several threads: the same bits as one row at a time. */
static void test_threads_same_bits(void)
{
    const int R = 64, C = 2048;
    float *w = malloc((size_t)R * C * sizeof *w), *a = malloc((size_t)R * C * sizeof *a);
    float *b = malloc((size_t)R * C * sizeof *b);
    uint8_t blk[2048];
    for (int i = 0; i < R * C; i++)
        w[i] = sinf((float)i * 0.013f) * (1.0f + (float)(i % 7));
    struct qs_format f;
    struct qs_qopts o;
    struct qs_packed p;
    qs_err e = {{0}};
    qs_qopts_default(&o);
    fmt("q3_k", &f);
    CHECK(qs_quant_fake(&f, &o, w, R, C, a, &e) == 0);
    for (int r = 0; r < R; r++) {
        qs_ggml_quantize(QS_GGML_Q3_K, w + (size_t)r * C, blk, C);
        qs_ggml_dequantize(QS_GGML_Q3_K, blk, b + (size_t)r * C, C);
    }
    CHECK(memcmp(a, b, (size_t)R * C * sizeof *a) == 0);
    CHECK(qs_quant_pack(&f, &o, w, R, C, &p, &e) == 0);
    CHECK(qs_quant_unpack(&p, b, &e) == 0);
    CHECK(memcmp(a, b, (size_t)R * C * sizeof *a) == 0);
    qs_packed_free(&p);
    free(w);
    free(a);
    free(b);
}

TEST_MAIN("ggml", TEST_CASE(test_threads_same_bits), TEST_CASE(test_q8_0_by_hand),
          TEST_CASE(test_q4_0_signed_max), TEST_CASE(test_layout_sizes), TEST_CASE(test_fallback),
          TEST_CASE(test_names_and_options))
