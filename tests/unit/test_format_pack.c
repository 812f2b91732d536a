/* test_format_pack.c - quantize / pack / unpack / fake-quantize: fake == pack + unpack bit for
 * bit for every format and option set, packed sizes against hand-computed bits per weight, the
 * block-scale recipes (OCP MX v1.0 shared exponent, NVFP4 two-level scales, NF4 absmax), zero
 * blocks, stochastic rounding, clipping, static activation scales, and bad input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/half.h"
#include "test.h"

static struct qs_format fmt(const char *name)
{
    struct qs_format f;
    qs_err e;
    memset(&f, 0, sizeof f);
    if (qs_format_parse(name, &f, &e) < 0)
        fprintf(stderr, "  parse %s: %s\n", name, e.msg);
    return f;
}

/* Options from a space-separated token list. */
static struct qs_qopts opts(const char *toks)
{
    struct qs_qopts o;
    qs_err e;
    qs_qopts_default(&o);
    char buf[200];
    snprintf(buf, sizeof buf, "%s", toks);
    for (char *t = strtok(buf, " "); t; t = strtok(NULL, " "))
        if (qs_qopts_parse_token(&o, t, &e) < 0)
            fprintf(stderr, "  option %s: %s\n", t, e.msg);
    return o;
}

/* A matrix with the awkward cases: normal values with outliers, an all-zero row, a row of tiny
 * values, all-positive and all-negative rows, exact zeros and signed zeros. */
static float *make_matrix(int rows, int cols, uint64_t seed)
{
    float *w = malloc((size_t)rows * cols * sizeof *w);
    qs_rng g;
    qs_rng_seed(&g, seed);
    for (int i = 0; i < rows * cols; i++)
        w[i] = (float)(0.05 * qs_rng_normal(&g));
    for (int r = 0; r < rows; r++) {
        float *row = w + (size_t)r * cols;
        switch (r % 6) {
        case 1:
            memset(row, 0, (size_t)cols * sizeof *row);
            break;
        case 2:
            for (int c = 0; c < cols; c++)
                row[c] *= 1e-6f;
            break;
        case 3:
            for (int c = 0; c < cols; c++)
                row[c] = fabsf(row[c]) + 0.01f;
            break;
        case 4:
            for (int c = 0; c < cols; c++)
                row[c] = -fabsf(row[c]);
            row[cols / 2] = -0.0f;
            break;
        case 5:
            row[cols / 3] = 3.0f; /* outlier */
            row[0] = 0.0f;
            break;
        default:
            break;
        }
    }
    return w;
}

static int same_bits(const float *a, const float *b, size_t n, const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x, y;
        memcpy(&x, a + i, 4);
        memcpy(&y, b + i, 4);
        if (x != y && bad++ < 3)
            fprintf(stderr, "  %s: [%zu] %.9g (0x%08x) vs %.9g (0x%08x)\n", what, i, (double)a[i],
                    x, (double)b[i], y);
    }
    return bad == 0;
}

static const char *const all_formats[] = {
    "int2",     "int3",       "int4",      "int5",       "int6",     "int7",
    "int8",     "fp8-e4m3",   "fp8-e5m2",  "fp8-e3m4",   "fp6-e2m3", "fp6-e3m2",
    "fp4-e2m1", "e0m7",       "e3m4b1",    "e5m10",      "e2m0",     "e0m12",
    "mxfp8",    "mxfp8-e5m2", "mxfp6",     "mxfp6-e3m2", "mxfp4",    "mxint8",
    "nvfp4",    "nf4",        "compand:2", "compand:4",  "compand:8"};

static const char *const option_sets[] = {
    "",
    "gran=channel",
    "gran=group:16",
    "gran=group:32 asym",
    "asym",
    "range=full",
    "gran=channel range=full",
    "clip=mse gran=channel",
    "clip=pct:99",
    "gran=group:16 clip=pct:90",
    "round=stochastic seed=5",
    "gran=channel round=stochastic seed=9",
    "sat=0",
    "sat=0 gran=channel",
    "scale=none",
    "scale=none sat=0",
    "scale=f32 gran=channel",
    "gran=channel clip=mse asym",
    "gran=group:32 round=stochastic asym seed=3",
};

/* fake == unpack(pack), in-place fake == out-of-place fake. Returns 1 when the combination was
 * valid and checked. */
static int check_equiv(const struct qs_format *f, const char *toks, const float *w, int rows,
                       int cols)
{
    struct qs_qopts o = opts(toks);
    qs_err e;
    if (qs_qopts_check(f, &o, &e) < 0)
        return 0;
    size_t n = (size_t)rows * cols;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    char what[160];
    snprintf(what, sizeof what, "%s [%s] %dx%d", f->name, toks, rows, cols);
    int rc1 = qs_quant_fake(f, &o, w, rows, cols, a, &e);
    if (rc1 < 0)
        fprintf(stderr, "  %s: fake: %s\n", what, e.msg);
    CHECK(rc1 == 0);
    struct qs_packed p;
    int rc2 = qs_quant_pack(f, &o, w, rows, cols, &p, &e);
    if (rc2 < 0)
        fprintf(stderr, "  %s: pack: %s\n", what, e.msg);
    CHECK(rc2 == 0);
    if (rc1 == 0 && rc2 == 0) {
        CHECK(qs_quant_unpack(&p, b, &e) == 0);
        CHECK(same_bits(a, b, n, what));
        memcpy(c, w, n * sizeof *c);
        CHECK(qs_quant_fake(f, &o, c, rows, cols, c, &e) == 0);
        CHECK(same_bits(a, c, n, what));
        CHECK(qs_packed_bytes(&p) ==
              p.code_bytes + p.scale_bytes + p.zero_bytes + (f->kind == QS_FMT_NVFP4 ? 4u : 0u));
        /* the layout a reader of packed files checks against is the one pack wrote */
        struct qs_packed_layout lay;
        CHECK(qs_packed_layout(f, &o, rows, cols, &lay, &e) == 0);
        CHECK(lay.code_bytes == p.code_bytes && lay.scale_bytes == p.scale_bytes &&
              lay.zero_bytes == p.zero_bytes && lay.tensor_scale == (f->kind == QS_FMT_NVFP4));
        /* quantization is idempotent-ish sanity: outputs are finite unless overflow is asked */
        if (o.saturate)
            for (size_t i = 0; i < n; i++)
                CHECK(isfinite(a[i]));
    }
    qs_packed_free(&p);
    free(a);
    free(b);
    free(c);
    return 1;
}

static void test_fake_equals_pack_unpack(void)
{
    static const int dims[][2] = {{12, 96}, {7, 40}, {1, 33}, {3, 1}};
    int checked = 0;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        int rows = dims[d][0], cols = dims[d][1];
        float *w = make_matrix(rows, cols, 100 + d);
        for (size_t i = 0; i < sizeof all_formats / sizeof all_formats[0]; i++) {
            struct qs_format f = fmt(all_formats[i]);
            for (size_t k = 0; k < sizeof option_sets / sizeof option_sets[0]; k++)
                checked += check_equiv(&f, option_sets[k], w, rows, cols);
        }
        free(w);
    }
    CHECK(checked > 600);
}

/* Large enough for several threads; the thread split of pack (multiples of 8 rows) differs from
 * fake's, and nothing may depend on it. */
static void test_large_threaded(void)
{
    int rows = 300, cols = 512;
    float *w = make_matrix(rows, cols, 7);
    static const char *const fm[] = {"int4", "fp8-e4m3", "mxfp4", "nvfp4", "nf4", "int3"};
    static const char *const os[] = {"", "gran=group:128", "gran=channel round=stochastic seed=1",
                                     "gran=channel asym"};
    for (size_t i = 0; i < sizeof fm / sizeof fm[0]; i++) {
        struct qs_format f = fmt(fm[i]);
        for (size_t k = 0; k < sizeof os / sizeof os[0]; k++)
            check_equiv(&f, os[k], w, rows, cols);
    }
    /* row independence: per-channel fake of the whole matrix == each row on its own */
    struct qs_format f = fmt("int4");
    struct qs_qopts o = opts("gran=channel");
    float *a = malloc((size_t)rows * cols * sizeof *a), *b = malloc((size_t)cols * sizeof *b);
    qs_err e;
    CHECK(qs_quant_fake(&f, &o, w, rows, cols, a, &e) == 0);
    int ok = 1;
    for (int r = 0; r < rows; r++) {
        qs_quant_fake(&f, &o, w + (size_t)r * cols, 1, cols, b, &e);
        ok &= memcmp(b, a + (size_t)r * cols, (size_t)cols * sizeof *b) == 0;
    }
    CHECK(ok);
    free(a);
    free(b);
    free(w);
}

/* ---- packed sizes -------------------------------------------------------------------------- */

static double bpw(const char *name, const char *toks, int rows, int cols)
{
    struct qs_format f = fmt(name);
    struct qs_qopts o = opts(toks);
    float *w = make_matrix(rows, cols, 3);
    struct qs_packed p;
    qs_err e;
    double b = -1.0;
    if (qs_quant_pack(&f, &o, w, rows, cols, &p, &e) == 0) {
        b = qs_packed_bits_per_weight(&p);
        qs_packed_free(&p);
    } else {
        fprintf(stderr, "  %s [%s]: %s\n", name, toks, e.msg);
    }
    free(w);
    return b;
}

static void test_packed_sizes(void)
{
    const double eps = 1e-12;
    CHECK_NEAR(bpw("int4", "gran=group:128", 8, 256), 4.125, eps);
    CHECK_NEAR(bpw("int8", "gran=channel", 10, 64), 8.0 + 16.0 / 64, eps);
    CHECK_NEAR(bpw("int4", "", 16, 64), 4.0 + 16.0 / 1024, eps);
    CHECK_NEAR(bpw("int4", "gran=channel asym", 10, 64), 4.0 + 24.0 / 64, eps);
    CHECK_NEAR(bpw("int4", "gran=group:32 scale=f32", 4, 64), 4.0 + 32.0 / 32, eps);
    CHECK_NEAR(bpw("int3", "", 3, 5), 8.0 * (6 + 2) / 15, eps); /* ceil(45 bits) = 6 bytes */
    CHECK_NEAR(bpw("int2", "gran=channel", 4, 16), 2.0 + 1.0, eps);
    CHECK_NEAR(bpw("mxfp4", "", 4, 64), 4.25, eps);
    CHECK_NEAR(bpw("mxfp4", "", 3, 40), 8.0 * (60 + 6) / 120, eps); /* partial last blocks */
    CHECK_NEAR(bpw("mxfp6", "", 2, 64), 6.25, eps);
    CHECK_NEAR(bpw("mxfp8", "", 2, 64), 8.25, eps);
    CHECK_NEAR(bpw("mxint8", "", 2, 96), 8.25, eps);
    CHECK_NEAR(bpw("nvfp4", "", 4, 64), 4.0 + 8.0 / 16 + 32.0 / 256, eps);
    CHECK_NEAR(bpw("nvfp4", "", 64, 64), 4.0 + 8.0 / 16 + 32.0 / 4096, eps);
    CHECK_NEAR(bpw("nf4", "", 4, 128), 4.0 + 16.0 / 64, eps);
    CHECK_NEAR(bpw("nf4", "gran=group:32", 4, 128), 4.5, eps);
    CHECK_NEAR(bpw("nf4", "gran=channel", 4, 128), 4.0 + 16.0 / 128, eps);
    CHECK_NEAR(bpw("nf4", "", 2, 96), 4.0 + 2 * 16.0 / 96, eps); /* blocks 64 + partial 32 */
    CHECK_NEAR(bpw("fp8-e4m3", "scale=none", 4, 64), 8.0, eps);
    CHECK_NEAR(bpw("fp8-e4m3", "scale=f32", 4, 64), 8.0 + 32.0 / 256, eps);
    CHECK_NEAR(bpw("fp8-e5m2", "gran=channel", 4, 64), 8.25, eps);
    CHECK_NEAR(bpw("e0m7", "gran=group:16", 2, 32), 9.0, eps);
    CHECK_NEAR(bpw("fp6-e2m3", "gran=channel", 4, 32), 6.5, eps);
    CHECK_NEAR(bpw("compand:8", "gran=channel", 4, 32), 8.5, eps);
    CHECK_NEAR(bpw("e3m4b1", "gran=group:64", 2, 128), 8.25, eps);
    /* the code stream itself: two int4 codes per byte, low nibble first */
    struct qs_format f = fmt("int4");
    struct qs_qopts o = opts("scale=f32");
    float w[4] = {7.0f, -7.0f, 1.0f, -1.0f}; /* amax 7 -> scale 1 */
    struct qs_packed p;
    qs_err e;
    CHECK(qs_quant_pack(&f, &o, w, 1, 4, &p, &e) == 0);
    CHECK(p.code_bytes == 2 && p.codes[0] == 0x97 && p.codes[1] == 0xf1);
    qs_packed_free(&p);
}

/* ---- scale recipes ---------------------------------------------------------------------- */

static void test_int_scales(void)
{
    /* per channel: F16(amax / 7) stored, codes clamp(round(x / s)) */
    struct qs_format f = fmt("int4");
    struct qs_qopts o = opts("gran=channel");
    float w[2][8] = {{0.1f, -0.7f, 0.35f, 0.05f, 0, 0, 0.2f, -0.3f},
                     {3.0f, 1.0f, -2.0f, 0.5f, 0.25f, -0.1f, 2.9f, 0.0f}};
    struct qs_packed p;
    qs_err e;
    CHECK(qs_quant_pack(&f, &o, &w[0][0], 2, 8, &p, &e) == 0);
    CHECK(p.scale_bytes == 4);
    uint16_t s0 = (uint16_t)(p.scales[0] | p.scales[1] << 8);
    uint16_t s1 = (uint16_t)(p.scales[2] | p.scales[3] << 8);
    CHECK(s0 == qs_f32_to_f16(0.7f / 7.0f) && s1 == qs_f32_to_f16(3.0f / 7.0f));
    float out[16];
    CHECK(qs_quant_unpack(&p, out, &e) == 0);
    float sc = qs_f16_to_f32(s1);
    for (int c = 0; c < 8; c++) {
        float q = nearbyintf(w[1][c] * (1.0f / sc));
        q = q > 7 ? 7 : q < -7 ? -7 : q;
        CHECK(out[8 + c] == q * sc);
    }
    qs_packed_free(&p);
    /* full range: the most negative code is used */
    o = opts("range=full");
    float v[4] = {-1.0f, 1.0f, 0.5f, -0.5f};
    float r[4];
    CHECK(qs_quant_fake(&f, &o, v, 1, 4, r, &e) == 0);
    float s = qs_f16_to_f32(qs_f32_to_f16(1.0f / 7.5f));
    CHECK(r[0] == -8 * s && r[1] == 7 * s); /* +1 -> 7.5 -> 8 clamps to 7 */
    /* asymmetric: zero point from the minimum */
    o = opts("asym");
    float a[4] = {0.0f, 1.5f, 3.0f, 0.75f};
    CHECK(qs_quant_pack(&f, &o, a, 1, 4, &p, &e) == 0);
    CHECK(p.zero_bytes == 1 && p.zeros[0] == 0);
    CHECK(qs_quant_unpack(&p, r, &e) == 0);
    CHECK(r[0] == 0.0f && r[2] == 15 * qs_f16_to_f32(qs_f32_to_f16(0.2f)));
    qs_packed_free(&p);
    float b[3] = {-1.7f, 0.5f, 2.0f};
    CHECK(qs_quant_pack(&f, &o, b, 1, 3, &p, &e) == 0);
    CHECK(p.zeros[0] == 7); /* round(1.7 / F16(3.7/15)) = round(6.89) */
    CHECK(qs_quant_unpack(&p, r, &e) == 0);
    CHECK(r[0] == -7 * qs_f16_to_f32(qs_f32_to_f16(3.7f / 15.0f)));
    qs_packed_free(&p);
}

static void test_mx_shared_exponent(void)
{
    /* OCP MX v1.0: X = 2^(floor(log2 amax) - emax_elem); E2M1 emax 2, E4M3 emax 8 */
    struct qs_format f = fmt("mxfp4");
    struct qs_qopts o = opts("");
    float w[64];
    for (int i = 0; i < 64; i++)
        w[i] = 0.0f;
    w[0] = 5.0f;    /* block 0: floor(log2 5) = 2 -> shared exp 0, X = 1 */
    w[1] = 2.6f;    /* -> 3 */
    w[2] = -0.3f;   /* -> -0.5 (0.25 | 0.5: nearer 0.5) */
    w[3] = 0.2f;    /* -> 0 (below 0.25) */
    w[32] = 0.3f;   /* block 1: floor(log2 0.3) = -2 -> X = 2^-4; 0.3 * 16 = 4.8 -> 4 -> 0.25 */
    w[33] = 0.01f;  /* 0.16 -> 0 */
    w[34] = -0.09f; /* -1.44 -> -1.5 -> -0.09375 */
    struct qs_packed p;
    qs_err e;
    CHECK(qs_quant_pack(&f, &o, w, 1, 64, &p, &e) == 0);
    CHECK(p.scale_bytes == 2 && p.scales[0] == 127 && p.scales[1] == 127 - 4);
    float out[64];
    CHECK(qs_quant_unpack(&p, out, &e) == 0);
    CHECK(out[0] == 4.0f && out[1] == 3.0f && out[2] == -0.5f && out[3] == 0.0f);
    CHECK(out[32] == 0.25f && out[33] == 0.0f && out[34] == -0.09375f);
    qs_packed_free(&p);
    /* mxfp8: the block max may exceed the element max after scaling: it saturates to 448 */
    f = fmt("mxfp8");
    float v[32] = {500.0f, 1.0f, -500.0f};
    CHECK(qs_quant_fake(&f, &o, v, 1, 32, out, &e) == 0);
    CHECK(out[0] == 448.0f && out[1] == 1.0f && out[2] == -448.0f);
    /* mxint8: emax 0, k = round(x / X * 64) clamped to +-127 */
    f = fmt("mxint8");
    float u[32] = {1.5f, 0.7f, -1.999f};
    CHECK(qs_quant_fake(&f, &o, u, 1, 32, out, &e) == 0);
    CHECK(out[0] == 1.5f && out[1] == 45.0f / 64 && out[2] == -127.0f / 64);
    /* a zero block: exponent -127 (code 0), zeros out */
    float z[32] = {0};
    f = fmt("mxfp4");
    CHECK(qs_quant_pack(&f, &o, z, 1, 32, &p, &e) == 0);
    CHECK(p.scales[0] == 0);
    CHECK(qs_quant_unpack(&p, out, &e) == 0 && out[0] == 0.0f && out[31] == 0.0f);
    qs_packed_free(&p);
    /* huge and tiny blocks clamp the exponent to [-127, 127] */
    float h[32] = {3e38f, 1e-40f};
    CHECK(qs_quant_pack(&f, &o, h, 1, 32, &p, &e) == 0);
    CHECK(p.scales[0] == 127 + 125); /* floor(log2 3e38) = 127, minus 2 */
    qs_packed_free(&p);
}

static void test_nvfp4_recipe(void)
{
    int rows = 4, cols = 48;
    float *w = make_matrix(rows, cols, 11);
    struct qs_format f = fmt("nvfp4"), e4 = fmt("fp8-e4m3"), e2 = fmt("fp4-e2m1");
    struct qs_qopts o = opts("");
    float out[4 * 48];
    qs_err e;
    CHECK(qs_quant_fake(&f, &o, w, rows, cols, out, &e) == 0);
    float amax = 0.0f;
    for (int i = 0; i < rows * cols; i++)
        amax = fmaxf(amax, fabsf(w[i]));
    float g = amax / (6.0f * 448.0f); /* tensor scale */
    int bad = 0;
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < cols / 16; b++) {
            const float *x = w + r * cols + b * 16;
            float bm = 0.0f;
            for (int j = 0; j < 16; j++)
                bm = fmaxf(bm, fabsf(x[j]));
            float bs = (float)qs_format_cast(&e4, (double)((bm / 6.0f) / g), 1);
            float s = bs * g, inv = s > 0 ? 1.0f / s : 0.0f;
            for (int j = 0; j < 16; j++) {
                float want = (float)qs_format_cast(&e2, (double)(x[j] * inv), 1) * s;
                bad += out[r * cols + b * 16 + j] != want;
            }
        }
    CHECK(bad == 0);
    struct qs_packed p;
    CHECK(qs_quant_pack(&f, &o, w, rows, cols, &p, &e) == 0);
    CHECK(p.tensor_scale == g && p.scale_bytes == (size_t)rows * cols / 16);
    qs_packed_free(&p);
    free(w);
}

static void test_nf4_blocks(void)
{
    struct qs_format f = fmt("nf4");
    struct qs_qopts o = opts("");
    float w[128], out[128];
    qs_rng g;
    qs_rng_seed(&g, 5);
    for (int i = 0; i < 128; i++)
        w[i] = (float)qs_rng_normal(&g);
    qs_err e;
    CHECK(qs_quant_fake(&f, &o, w, 1, 128, out, &e) == 0);
    for (int b = 0; b < 2; b++) { /* blocks of 64, absmax scaled, nearest level */
        float am = 0.0f;
        for (int j = 0; j < 64; j++)
            am = fmaxf(am, fabsf(w[b * 64 + j]));
        float s = qs_f16_to_f32(qs_f32_to_f16(am));
        for (int j = 0; j < 64; j++) {
            double lvl = qs_format_cast(&f, (double)(w[b * 64 + j] * (1.0f / s)), 1);
            CHECK(out[b * 64 + j] == (float)lvl * s);
        }
    }
}

/* ---- special inputs -------------------------------------------------------------------- */

static void test_zero_blocks_and_tiny(void)
{
    float z[2 * 64] = {0};
    float out[2 * 64];
    qs_err e;
    for (size_t i = 0; i < sizeof all_formats / sizeof all_formats[0]; i++) {
        struct qs_format f = fmt(all_formats[i]);
        const char *os[] = {"", "gran=channel", "gran=group:32"};
        for (int k = 0; k < 3; k++) {
            struct qs_qopts o = opts(os[k]);
            if (qs_qopts_check(&f, &o, &e) < 0)
                continue;
            CHECK(qs_quant_fake(&f, &o, z, 2, 64, out, &e) == 0);
            for (int j = 0; j < 128; j++)
                CHECK(out[j] == 0.0f);
        }
    }
    /* scales that underflow F16 give a zero block, never NaN */
    float t[32];
    for (int j = 0; j < 32; j++)
        t[j] = 1e-12f * (float)(j - 16);
    struct qs_format f = fmt("int8");
    struct qs_qopts o = opts("gran=channel");
    CHECK(qs_quant_fake(&f, &o, t, 1, 32, out, &e) == 0);
    for (int j = 0; j < 32; j++)
        CHECK(out[j] == 0.0f);
    /* with F32 scales the same values survive */
    o = opts("gran=channel scale=f32");
    CHECK(qs_quant_fake(&f, &o, t, 1, 32, out, &e) == 0);
    CHECK(out[0] == t[0] && out[31] != 0.0f);
    /* a scale past the F16 range is an error that names the fix */
    float big[4] = {1e7f, 1.0f, 2.0f, 3.0f};
    CHECK(qs_quant_fake(&f, &o, big, 1, 4, out, &e) == 0);
    o = opts("gran=channel");
    CHECK(qs_quant_fake(&f, &o, big, 1, 4, out, &e) < 0 && strstr(e.msg, "scale=f32") &&
          strstr(e.msg, "[0, 0]"));
    /* in place, the failing row comes after rows already done: w stays as it was */
    float m3[3][4] = {{0.1f, 0.2f, 0.3f, 0.4f}, {1, 2, 3, 4}, {1e7f, 1, 2, 3}};
    float keep[3][4];
    memcpy(keep, m3, sizeof keep);
    CHECK(qs_quant_fake(&f, &o, &m3[0][0], 3, 4, &m3[0][0], &e) < 0 && strstr(e.msg, "[2, 0]"));
    CHECK(memcmp(keep, m3, sizeof keep) == 0);
}

/* The one rule for a partial last group (format.h): groups tile each row from column 0 and the
 * last, shorter one has its own scale. So every group, the partial one included, quantizes
 * exactly as that slice of the row would on its own (one row, one scale); the scale count is
 * ceil(cols / N) per row; and a row that is a multiple of N is untouched by the rule. */
static void test_partial_groups(void)
{
    static const char *const fm[] = {"int4", "int8", "int3",      "fp4-e2m1", "fp8-e4m3",
                                     "e0m7", "nf4",  "compand:4", "e3m4b1"};
    static const char *const os[] = {"gran=group:24", "gran=group:24 asym",
                                     "gran=group:24 clip=mse", "gran=group:100"};
    const int rows = 7, cols = 64;
    float *w = make_matrix(rows, cols, 11);
    float *a = malloc((size_t)rows * cols * sizeof *a), *seg = malloc(64 * sizeof *seg);
    qs_err e;
    int checked = 0;
    for (size_t i = 0; i < sizeof fm / sizeof fm[0]; i++) {
        struct qs_format f = fmt(fm[i]);
        for (size_t k = 0; k < sizeof os / sizeof os[0]; k++) {
            struct qs_qopts o = opts(os[k]);
            if (qs_qopts_check(&f, &o, &e) < 0)
                continue;
            checked += check_equiv(&f, os[k], w, rows, cols);
            CHECK(qs_quant_fake(&f, &o, w, rows, cols, a, &e) == 0);
            /* the slice alone: gran=channel (NF4: one block per row) with the same options */
            struct qs_qopts oc = o;
            oc.gran = QS_GRAN_CHANNEL;
            int ok = 1, g = o.group;
            for (int r = 0; r < rows; r++)
                for (int c0 = 0; c0 < cols; c0 += g) {
                    int n = cols - c0 < g ? cols - c0 : g;
                    CHECK(qs_quant_fake(&f, &oc, w + (size_t)r * cols + c0, 1, n, seg, &e) == 0);
                    ok &= memcmp(seg, a + (size_t)r * cols + c0, (size_t)n * sizeof *seg) == 0;
                }
            if (!ok)
                fprintf(stderr, "  %s [%s]: a group differs from its slice alone\n", fm[i], os[k]);
            CHECK(ok);
        }
    }
    CHECK(checked >= 30);
    /* bits from the packed buffers: 3 F16 scales per 64-element row (24 + 24 + 16) */
    const double eps = 1e-12;
    CHECK_NEAR(bpw("int4", "gran=group:24", 4, 64), 4.0 + 3 * 16.0 / 64, eps);
    CHECK_NEAR(bpw("int4", "gran=group:24 asym", 4, 64), 4.0 + 3 * 24.0 / 64, eps);
    CHECK_NEAR(bpw("nf4", "gran=group:24", 4, 64), 4.0 + 3 * 16.0 / 64, eps);
    CHECK_NEAR(bpw("int4", "gran=group:100", 4, 64), 4.0 + 16.0 / 64, eps); /* one per row */
    CHECK_NEAR(bpw("nvfp4", "", 4, 40), 4.0 + 3 * 8.0 / 40 + 32.0 / 160, eps);
    CHECK_NEAR(bpw("mxint8", "", 2, 40), 8.0 + 2 * 8.0 / 40, eps);
    struct qs_packed_layout lay;
    struct qs_format f4 = fmt("int4");
    struct qs_qopts og = opts("gran=group:24 asym");
    CHECK(qs_packed_layout(&f4, &og, 7, 64, &lay, &e) == 0);
    CHECK(lay.nscales == 7 * 3 && lay.group == 24 && lay.zero_bytes == 21 &&
          !strcmp(lay.scale_dtype, "f16"));
    struct qs_format fnv = fmt("nvfp4");
    struct qs_qopts od = opts("");
    CHECK(qs_packed_layout(&fnv, &od, 3, 40, &lay, &e) == 0);
    CHECK(lay.nscales == 9 && lay.group == 16 && lay.tensor_scale &&
          !strcmp(lay.scale_dtype, "e4m3"));
    CHECK(qs_packed_layout(&f4, &od, 7, 64, &lay, &e) == 0 && lay.group == 0 && lay.nscales == 1);
    /* the rule leaves whole groups alone: the first 48 columns quantize as a 48-column matrix */
    struct qs_format f = fmt("int4");
    struct qs_qopts o = opts("gran=group:24");
    float *w48 = malloc((size_t)rows * 48 * sizeof *w48), *a48 = malloc((size_t)rows * 48 * 4);
    for (int r = 0; r < rows; r++)
        memcpy(w48 + (size_t)r * 48, w + (size_t)r * cols, 48 * sizeof *w48);
    CHECK(qs_quant_fake(&f, &o, w, rows, cols, a, &e) == 0);
    CHECK(qs_quant_fake(&f, &o, w48, rows, 48, a48, &e) == 0);
    int ok = 1;
    for (int r = 0; r < rows; r++)
        ok &= memcmp(a48 + (size_t)r * 48, a + (size_t)r * cols, 48 * sizeof *a48) == 0;
    CHECK(ok);
    free(w48);
    free(a48);
    free(a);
    free(seg);
    free(w);
}

static void test_bad_input(void)
{
    int rows = 4, cols = 64;
    float *w = make_matrix(rows, cols, 2);
    float *out = malloc((size_t)rows * cols * sizeof *out);
    qs_err e;
    struct qs_packed p;
    struct qs_format f = fmt("int4");
    struct qs_qopts o = opts("gran=group:24");
    o.group = 0; /* the parser refuses group:0; the kernels must too */
    CHECK(qs_quant_fake(&f, &o, w, rows, cols, out, &e) < 0);
    CHECK_STR(e.msg, "int4: group size must be >= 1");
    CHECK(qs_quant_pack(&f, &o, w, rows, cols, &p, &e) < 0 && p.codes == NULL);
    struct qs_format none = fmt("none");
    o = opts("");
    CHECK(qs_quant_fake(&none, &o, w, rows, cols, out, &e) < 0 && strstr(e.msg, "none"));
    CHECK(qs_quant_pack(&none, &o, w, rows, cols, &p, &e) < 0);
    /* NaN / Inf: the message names the position; in place leaves w untouched */
    w[2 * cols + 5] = NAN;
    static const char *const fm[] = {"int4", "fp8-e4m3", "mxfp4", "nvfp4", "nf4"};
    static const char *const os[] = {"", "gran=channel", "gran=group:16"};
    for (size_t i = 0; i < 5; i++)
        for (size_t k = 0; k < 3; k++) {
            struct qs_format g = fmt(fm[i]);
            struct qs_qopts q = opts(os[k]);
            if (qs_qopts_check(&g, &q, &e) < 0)
                continue;
            CHECK(qs_quant_fake(&g, &q, w, rows, cols, out, &e) < 0 && strstr(e.msg, "[2, 5]") &&
                  strstr(e.msg, "non-finite"));
            CHECK(qs_quant_pack(&g, &q, w, rows, cols, &p, &e) < 0 && strstr(e.msg, "[2, 5]"));
            float *copy = malloc((size_t)rows * cols * sizeof *copy);
            memcpy(copy, w, (size_t)rows * cols * sizeof *copy);
            CHECK(qs_quant_fake(&g, &q, copy, rows, cols, copy, &e) < 0);
            CHECK(memcmp(copy, w, (size_t)rows * cols * sizeof *copy) == 0);
            free(copy);
        }
    w[2 * cols + 5] = 0.0f;
    w[3 * cols + 63] = -INFINITY;
    CHECK(qs_quant_fake(&f, &o, w, rows, cols, out, &e) < 0 && strstr(e.msg, "[3, 63]"));
    struct qs_qopts asym = opts("asym");
    CHECK(qs_quant_fake(&f, &asym, w, rows, cols, out, &e) < 0 && strstr(e.msg, "[3, 63]"));
    CHECK(qs_quant_fake(&f, &o, w, 0, cols, out, &e) < 0);
    /* invalid option for the format */
    struct qs_format f8 = fmt("fp8-e4m3");
    CHECK(qs_quant_fake(&f8, &asym, w, rows, cols, out, &e) < 0 && strstr(e.msg, "asym"));
    qs_packed_free(NULL);
    free(w);
    free(out);
}

static void test_stochastic(void)
{
    /* int8 per tensor with amax 127: scale exactly 1; 0.3 rounds up with probability 0.3 */
    int n = 20000;
    float *x = malloc((size_t)n * sizeof *x), *a = malloc((size_t)n * sizeof *a);
    float *b = malloc((size_t)n * sizeof *b);
    for (int i = 0; i < n; i++)
        x[i] = 0.3f;
    x[0] = 127.0f;
    struct qs_format f = fmt("int8");
    struct qs_qopts o = opts("round=stochastic seed=1");
    qs_err e;
    CHECK(qs_quant_fake(&f, &o, x, 1, n, a, &e) == 0);
    CHECK(qs_quant_fake(&f, &o, x, 1, n, b, &e) == 0);
    CHECK(memcmp(a, b, (size_t)n * sizeof *a) == 0); /* deterministic */
    double mean = 0.0;
    for (int i = 1; i < n; i++) {
        CHECK(a[i] == 0.0f || a[i] == 1.0f);
        mean += a[i];
    }
    mean /= n - 1;
    CHECK_NEAR(mean, 0.3, 0.015); /* 4.6 sigma */
    o = opts("round=stochastic seed=2");
    CHECK(qs_quant_fake(&f, &o, x, 1, n, b, &e) == 0);
    CHECK(memcmp(a, b, (size_t)n * sizeof *a) != 0);
    /* minifloat: 1.03 lies between 1 and 1.125 in E4M3, up with probability 0.24 */
    struct qs_format f8 = fmt("fp8-e4m3");
    o = opts("round=stochastic scale=none seed=3");
    for (int i = 0; i < n; i++)
        x[i] = 1.03f;
    CHECK(qs_quant_fake(&f8, &o, x, 1, n, a, &e) == 0);
    mean = 0.0;
    for (int i = 0; i < n; i++) {
        CHECK(a[i] == 1.0f || a[i] == 1.125f);
        mean += a[i];
    }
    CHECK_NEAR(mean / n, 1.03, 0.004);
    /* nearest never differs from the deterministic grid */
    o = opts("scale=none");
    CHECK(qs_quant_fake(&f8, &o, x, 1, n, a, &e) == 0);
    CHECK(a[0] == 1.0f && a[n - 1] == 1.0f);
    free(x);
    free(a);
    free(b);
}

static double sse_of(const char *name, const char *toks, const float *w, int rows, int cols)
{
    struct qs_format f = fmt(name);
    struct qs_qopts o = opts(toks);
    float *out = malloc((size_t)rows * cols * sizeof *out);
    qs_err e;
    double s = -1.0;
    if (qs_quant_fake(&f, &o, w, rows, cols, out, &e) == 0) {
        s = 0.0;
        for (int i = 0; i < rows * cols; i++)
            s += ((double)w[i] - out[i]) * ((double)w[i] - out[i]);
    }
    free(out);
    return s;
}

static void test_clipping(void)
{
    int rows = 8, cols = 256;
    float *w = malloc((size_t)rows * cols * sizeof *w);
    qs_rng g;
    qs_rng_seed(&g, 21);
    for (int i = 0; i < rows * cols; i++) /* heavy tails: clipping pays */
        w[i] = (float)(qs_rng_normal(&g) * pow(qs_rng_uniform(&g) + 0.05, -1.5));
    const char *fm[] = {"int3", "int4", "fp4-e2m1", "nf4", "mxfp4"};
    for (int i = 0; i < 5; i++) {
        const char *gran = i >= 3 ? "" : "gran=channel ";
        char t1[64], t2[64], t3[64];
        snprintf(t1, sizeof t1, "%sclip=max", gran);
        snprintf(t2, sizeof t2, "%sclip=mse", gran);
        snprintf(t3, sizeof t3, "%sclip=pct:100", gran);
        double smax = sse_of(fm[i], t1, w, rows, cols), smse = sse_of(fm[i], t2, w, rows, cols);
        CHECK(smax > 0 && smse >= 0 && smse <= smax);
        CHECK(sse_of(fm[i], t3, w, rows, cols) == smax); /* the 100th percentile is the max */
    }
    CHECK(sse_of("int3", "gran=channel clip=mse", w, rows, cols) <
          0.9 * sse_of("int3", "gran=channel", w, rows, cols));
    /* pct: the scale comes from the percentile of |x| (here 50 % of 1..100 -> 50.5) */
    float v[100], out[100];
    for (int i = 0; i < 100; i++)
        v[i] = (float)(i + 1);
    struct qs_format f = fmt("int8");
    struct qs_qopts o = opts("clip=pct:50");
    struct qs_packed p;
    qs_err e;
    CHECK(qs_quant_pack(&f, &o, v, 1, 100, &p, &e) == 0);
    CHECK(qs_f16_to_f32((uint16_t)(p.scales[0] | p.scales[1] << 8)) ==
          qs_f16_to_f32(qs_f32_to_f16(50.5f / 127.0f)));
    CHECK(qs_quant_unpack(&p, out, &e) == 0);
    CHECK(out[99] == out[60] && out[99] == 127 * qs_f16_to_f32(qs_f32_to_f16(50.5f / 127.0f)));
    qs_packed_free(&p);
    free(w);
}

static void test_static_amax(void)
{
    int rows = 6, cols = 32;
    float *x = make_matrix(rows, cols, 4);
    float a[6 * 32], b[6 * 32];
    qs_err e;
    struct qs_format f = fmt("int8");
    struct qs_qopts o = opts("");
    /* amax = the tensor's own: same as dynamic per-tensor */
    CHECK(qs_quant_fake(&f, &o, x, rows, cols, a, &e) == 0);
    CHECK(qs_quant_fake_amax(&f, &o, x, rows, cols, 3.0f, b, &e) == 0); /* outlier is 3.0 */
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* a smaller calibrated amax saturates the rest */
    CHECK(qs_quant_fake_amax(&f, &o, x, rows, cols, 0.1f, b, &e) == 0);
    float s = qs_f16_to_f32(qs_f32_to_f16(0.1f / 127.0f));
    for (int i = 0; i < rows * cols; i++)
        CHECK(fabsf(b[i]) <= 127 * s);
    CHECK(qs_quant_fake_amax(&f, &o, x, rows, cols, 0.0f, b, &e) == 0 && b[0] == 0.0f);
    /* gran options are overridden: static is per tensor */
    struct qs_qopts oc = opts("gran=channel");
    CHECK(qs_quant_fake_amax(&f, &oc, x, rows, cols, 3.0f, b, &e) == 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    struct qs_format f8 = fmt("fp8-e4m3"), nv = fmt("nvfp4"), mx = fmt("mxfp4");
    CHECK(qs_quant_fake_amax(&f8, &o, x, rows, cols, 3.0f, b, &e) == 0);
    CHECK(qs_quant_fake(&f8, &o, x, rows, cols, a, &e) == 0 && memcmp(a, b, sizeof a) == 0);
    CHECK(qs_quant_fake_amax(&nv, &o, x, rows, cols, 3.0f, b, &e) == 0);
    CHECK(qs_quant_fake(&nv, &o, x, rows, cols, a, &e) == 0 && memcmp(a, b, sizeof a) == 0);
    CHECK(qs_quant_fake_amax(&mx, &o, x, rows, cols, 3.0f, b, &e) < 0);
    struct qs_qopts oa = opts("asym");
    CHECK(qs_quant_fake_amax(&f, &oa, x, rows, cols, 3.0f, b, &e) < 0 && strstr(e.msg, "asym"));
    CHECK(qs_quant_fake_amax(&f, &o, x, rows, cols, NAN, b, &e) < 0);
    CHECK(qs_quant_fake_amax(&f, &o, x, rows, cols, -1.0f, b, &e) < 0);
    free(x);
}

/* Minifloat weights: the per-channel scale maps the absmax onto the format's max finite. */
static void test_minifloat_scaling(void)
{
    float w[2][4] = {{0.5f, -0.25f, 0.1f, 0.0f}, {-3.0f, 1.0f, 0.01f, 2.0f}};
    float out[8];
    qs_err e;
    struct qs_format f = fmt("fp8-e4m3");
    struct qs_qopts o = opts("gran=channel scale=f32");
    CHECK(qs_quant_fake(&f, &o, &w[0][0], 2, 4, out, &e) == 0);
    CHECK(out[0] == 0.5f && out[4] == -3.0f); /* the absmax lands on 448 and back */
    float s = 3.0f / 448.0f, inv = 1.0f / s;
    CHECK(out[6] == (float)qs_format_cast(&f, 0.01f * inv, 1) * s);
    /* sat=0 with a scale: nothing overflows because amax maps to the max */
    o = opts("gran=channel sat=0");
    CHECK(qs_quant_fake(&f, &o, &w[0][0], 2, 4, out, &e) == 0);
    for (int i = 0; i < 8; i++)
        CHECK(isfinite(out[i]));
    /* scale=none casts raw values, sat=0 overflows per spec */
    float big[2] = {1000.0f, -1000.0f};
    o = opts("scale=none sat=0");
    CHECK(qs_quant_fake(&f, &o, big, 1, 2, out, &e) == 0 && isnan(out[0]) && isnan(out[1]));
    struct qs_format f5 = fmt("fp8-e5m2");
    float huge[2] = {1e6f, -1e6f};
    CHECK(qs_quant_fake(&f5, &o, huge, 1, 2, out, &e) == 0 && out[0] == INFINITY &&
          out[1] == -INFINITY);
    o = opts("scale=none");
    CHECK(qs_quant_fake(&f, &o, big, 1, 2, out, &e) == 0 && out[0] == 448.0f);
}

TEST_MAIN("format_pack", TEST_CASE(test_fake_equals_pack_unpack), TEST_CASE(test_large_threaded),
          TEST_CASE(test_packed_sizes), TEST_CASE(test_int_scales),
          TEST_CASE(test_mx_shared_exponent), TEST_CASE(test_nvfp4_recipe),
          TEST_CASE(test_nf4_blocks), TEST_CASE(test_zero_blocks_and_tiny),
          TEST_CASE(test_partial_groups), TEST_CASE(test_bad_input), TEST_CASE(test_stochastic),
          TEST_CASE(test_clipping), TEST_CASE(test_static_amax), TEST_CASE(test_minifloat_scaling))
