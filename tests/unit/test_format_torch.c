/* test_format_torch.c - integer fake quantization against PyTorch, bit for bit.
 *
 * Fixtures: tests/fixtures/quant_torch.{bin,json}, made by tests/tools/make_quant_fixtures.py with
 * Debian's python3-torch: torch.fake_quantize_per_channel_affine / _per_tensor_affine on a
 * (16, 64) matrix with scales rounded to float16 (numpy's RNE), per channel, per tensor, per
 * group (reshape), symmetric restricted / full range, asymmetric, F32 scales, clip=pct and
 * clip=mse. Run from the repository root. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/half.h"
#include "test.h"

#define FIX "tests/fixtures/quant_torch"

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float scale_at(const struct qs_packed *p, int i)
{
    if (p->opt.scale_f32) {
        float f;
        memcpy(&f, p->scales + 4 * (size_t)i, sizeof f);
        return f;
    }
    return qs_f16_to_f32((uint16_t)(p->scales[2 * i] | (p->scales[2 * i + 1] << 8)));
}

static void test_torch_fixtures(void)
{
    size_t jlen = 0, blen = 0;
    char *js = slurp(FIX ".json", &jlen);
    float *data = (float *)slurp(FIX ".bin", &blen);
    CHECK(js != NULL && data != NULL);
    if (!js || !data) {
        free(js);
        free(data);
        return;
    }
    cJSON *root = cJSON_Parse(js);
    CHECK(root != NULL);
    int rows = cJSON_GetObjectItem(root, "rows")->valueint;
    int cols = cJSON_GetObjectItem(root, "cols")->valueint;
    CHECK((size_t)cJSON_GetObjectItem(root, "floats")->valueint * 4 == blen);
    const float *w = data;
    float *out = malloc((size_t)rows * cols * sizeof *out);
    float *unp = malloc((size_t)rows * cols * sizeof *unp);
    int ncases = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        struct qs_format f;
        struct qs_qopts o;
        qs_err e;
        qs_qopts_default(&o);
        CHECK(qs_format_parse(cJSON_GetObjectItem(c, "format")->valuestring, &f, &e) == 0);
        cJSON *t;
        cJSON_ArrayForEach(t, cJSON_GetObjectItem(c, "opts"))
            CHECK(qs_qopts_parse_token(&o, t->valuestring, &e) == 0);
        const float *ref = data + cJSON_GetObjectItem(c, "out_offset")->valueint;
        const float *sref = data + cJSON_GetObjectItem(c, "scales_offset")->valueint;
        int nsc = cJSON_GetObjectItem(c, "nscales")->valueint;

        CHECK(qs_quant_fake(&f, &o, w, rows, cols, out, &e) == 0);
        int bad = 0;
        for (int i = 0; i < rows * cols; i++)
            if (bits_of(out[i]) != bits_of(ref[i])) {
                if (bad++ < 3)
                    fprintf(stderr, "  %s: [%d, %d] ours %.9g torch %.9g\n", name, i / cols,
                            i % cols, (double)out[i], (double)ref[i]);
            }
        CHECK(bad == 0);

        /* packed form: same scales and zero points as the fixture, unpack == torch */
        struct qs_packed p;
        CHECK(qs_quant_pack(&f, &o, w, rows, cols, &p, &e) == 0);
        CHECK((int)(p.scale_bytes / (o.scale_f32 ? 4 : 2)) == nsc);
        for (int i = 0; i < nsc && i < (int)(p.scale_bytes / (o.scale_f32 ? 4 : 2)); i++)
            CHECK(bits_of(scale_at(&p, i)) == bits_of(sref[i]));
        cJSON *zs = cJSON_GetObjectItem(c, "zeros");
        if (cJSON_GetArraySize(zs) > 0) {
            CHECK((int)p.zero_bytes == cJSON_GetArraySize(zs));
            for (int i = 0; i < cJSON_GetArraySize(zs) && i < (int)p.zero_bytes; i++)
                CHECK(p.zeros[i] == cJSON_GetArrayItem(zs, i)->valueint);
        } else {
            CHECK(p.zero_bytes == 0);
        }
        CHECK(qs_quant_unpack(&p, unp, &e) == 0);
        CHECK(memcmp(unp, ref, (size_t)rows * cols * sizeof *unp) == 0);
        qs_packed_free(&p);
        ncases++;
    }
    CHECK(ncases >= 14);
    free(out);
    free(unp);
    cJSON_Delete(root);
    free(js);
    free(data);
}

/* The fixtures must be able to fail: a one-ulp change of one scale changes torch's output. */
static void test_torch_fixture_sensitivity(void)
{
    size_t jlen = 0, blen = 0;
    float *data = (float *)slurp(FIX ".bin", &blen);
    char *js = slurp(FIX ".json", &jlen);
    CHECK(data != NULL && js != NULL);
    if (!data || !js) {
        free(data);
        free(js);
        return;
    }
    /* int4 per channel with a deliberately wrong (F32, unrounded) scale must differ from the
     * F16-scale fixture somewhere */
    struct qs_format f;
    struct qs_qopts o;
    qs_err e;
    qs_qopts_default(&o);
    qs_format_parse("int4", &f, &e);
    qs_qopts_parse_token(&o, "gran=channel", &e);
    qs_qopts_parse_token(&o, "scale=f32", &e);
    cJSON *root = cJSON_Parse(js);
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "cases"), 0);
    CHECK(strcmp(cJSON_GetObjectItem(c, "name")->valuestring, "int4_channel") == 0);
    const float *ref = data + cJSON_GetObjectItem(c, "out_offset")->valueint;
    float out[16 * 64];
    CHECK(qs_quant_fake(&f, &o, data, 16, 64, out, &e) == 0);
    CHECK(memcmp(out, ref, sizeof out) != 0);
    cJSON_Delete(root);
    free(data);
    free(js);
}

TEST_MAIN("format_torch", TEST_CASE(test_torch_fixtures), TEST_CASE(test_torch_fixture_sensitivity))
