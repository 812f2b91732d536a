/* ggml_ref.c - checks qscope's ggml block kernels against llama.cpp's own libggml-base.so.
 *
 * Usage: ggml_ref /path/to/libggml-base.so
 * For every block type qscope implements, on random and adversarial rows (zeros, one outlier,
 * tiny and subnormal values, negative-only, constant, ties on the rounding grid, large values):
 *   - qs_ggml_quantize's bytes == quantize_row_<type>_ref's bytes;
 *   - qs_ggml_dequantize of those bytes == dequantize_row_<type> bit for bit;
 *   - qs_quant_fake with the qscope format == llama.cpp's quantize then dequantize.
 * Also: ggml_blck_size / ggml_type_size / ggml_type_name of every type number equal qscope's
 * table. Prints one PASS/FAIL line per check (tests/sh/ggml.sh runs it).
 *
 * Usage: ggml_ref --pair SRC.gguf QUANT.gguf
 * QUANT was made from SRC by llama.cpp's llama_model_quantize (no importance matrix): for each
 * tensor type in QUANT, qs_ggml_quantize of SRC's tensor (decoded by qscope's reader) gives
 * llama.cpp's bytes, and every k-quant fallback in QUANT is the one qs_ggml_effective_type
 * predicts for a q4_K or q6_K request (the types of Q4_K_M). */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/common.h"
#include "qscope/format.h"
#include "qscope/ggml.h"
#include "qscope/gguf.h"

typedef void (*qrow_fn)(const float *x, void *y, int64_t k);
typedef void (*dqrow_fn)(const void *x, float *y, int64_t k);
typedef const char *(*name_fn)(int t);
typedef size_t (*size_fn)(int t);
typedef int64_t (*blck_fn)(int t);

static const struct {
    const char *fmt; /* qscope format name */
    const char *sym; /* ggml symbol suffix */
    int type;
} types[] = {
    {"q8_0", "q8_0", QS_GGML_Q8_0}, {"q4_0", "q4_0", QS_GGML_Q4_0}, {"q4_1", "q4_1", QS_GGML_Q4_1},
    {"q5_0", "q5_0", QS_GGML_Q5_0}, {"q5_1", "q5_1", QS_GGML_Q5_1}, {"q2_k", "q2_K", QS_GGML_Q2_K},
    {"q3_k", "q3_K", QS_GGML_Q3_K}, {"q4_k", "q4_K", QS_GGML_Q4_K}, {"q5_k", "q5_K", QS_GGML_Q5_K},
    {"q6_k", "q6_K", QS_GGML_Q6_K},
};
#define NTYPES (int)(sizeof types / sizeof types[0])

#define N 1024 /* elements per row: 4 super-blocks, 32 legacy blocks */
#define NROWS 16

static const char *row_names[NROWS] = {
    "normal",   "normal2",  "uniform", "zeros", "outlier", "tiny",     "subnormal",  "negative",
    "positive", "constant", "ties",    "large", "sparse",  "halfzero", "mixedscale", "signflip",
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double unif(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}
static double gauss(void)
{
    double u = unif() + 1e-300, v = unif();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static void make_row(int k, float *x)
{
    for (int i = 0; i < N; i++) {
        switch (k) {
        case 0:
            x[i] = (float)gauss();
            break;
        case 1:
            x[i] = (float)(0.02 * gauss());
            break;
        case 2:
            x[i] = (float)(unif() * 2 - 1);
            break;
        case 3:
            x[i] = 0.0f;
            break;
        case 4:
            x[i] = (float)(0.01 * gauss()) + (i % 97 == 5 ? 40.0f : 0.0f);
            break;
        case 5:
            x[i] = (float)(1e-20 * gauss());
            break;
        case 6:
            x[i] = (float)(1e-41 * gauss());
            break;
        case 7:
            x[i] = -(float)fabs(gauss()) - 0.1f;
            break;
        case 8:
            x[i] = (float)fabs(gauss()) + 0.5f;
            break;
        case 9:
            x[i] = 0.75f;
            break;
        case 10:
            x[i] = (float)((int)(unif() * 33) - 16) * 0.5f;
            break; /* lands on x.5 ties */
        case 11:
            x[i] = (float)(3e4 * gauss());
            break;
        case 12:
            x[i] = unif() < 0.9 ? 0.0f : (float)gauss();
            break;
        case 13:
            x[i] = (i / 128) % 2 ? 0.0f : (float)gauss();
            break;
        case 14:
            x[i] = (float)(gauss() * pow(10.0, (double)((i / 16) % 7) - 3));
            break;
        case 15:
            x[i] = (i % 2 ? -1.0f : 1.0f) * (float)(1 + (i % 5));
            break;
        }
    }
}

static int fails = 0;
static void report(int ok, const char *what)
{
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    fails += !ok;
}

static int pair(const char *src, const char *dst)
{
    struct qs_gguf_file *a = NULL, *b = NULL;
    qs_err e;
    if (qs_gguf_open(src, &a, &e) < 0 || qs_gguf_open(dst, &b, &e) < 0) {
        fprintf(stderr, "ggml_ref: %s\n", e.msg);
        qs_gguf_close(a);
        return 2;
    }
    int seen[QS_GGML_NTYPES] = {0}, bad[QS_GGML_NTYPES] = {0}, fb_ok = 1, nfb = 0;
    for (int i = 0; i < qs_gguf_count(b); i++) {
        const struct qs_gguf_tensor *q = qs_gguf_get(b, i), *t = qs_gguf_find(a, q->name);
        if (!t || t->numel != q->numel) {
            fprintf(stderr, "  %s: not in %s with the same size\n", q->name, src);
            bad[q->type] = seen[q->type] = 1;
            continue;
        }
        seen[q->type] = 1;
        float *x = malloc((size_t)t->numel * sizeof *x);
        uint8_t *mine = malloc(q->nbytes + 1);
        if (qs_gguf_to_f32(t, x, &e) < 0) {
            fprintf(stderr, "  %s\n", e.msg);
            bad[q->type] = 1;
        } else {
            qs_ggml_quantize(q->type, x, mine, t->numel);
            if (memcmp(mine, q->data, q->nbytes)) {
                fprintf(stderr, "  %s (%s): qscope's bytes differ from llama.cpp's\n", q->name,
                        qs_ggml_type_name(q->type));
                bad[q->type] = 1;
            }
        }
        free(x);
        free(mine);
        /* a 2-D weight stored in a 32-element type or F16: Q4_K_M asked for q4_K or q6_K */
        if (q->ndim == 2 && q->ne[0] % 256 != 0 && q->type != QS_GGML_F32) {
            nfb++;
            if (qs_ggml_effective_type(QS_GGML_Q4_K, q->ne[0]) != q->type &&
                qs_ggml_effective_type(QS_GGML_Q6_K, q->ne[0]) != q->type) {
                fprintf(stderr,
                        "  %s: llama.cpp stored %s for rows of %lld; qscope's fallback "
                        "rule gives %s (q4_K) or %s (q6_K)\n",
                        q->name, qs_ggml_type_name(q->type), (long long)q->ne[0],
                        qs_ggml_type_name(qs_ggml_effective_type(QS_GGML_Q4_K, q->ne[0])),
                        qs_ggml_type_name(qs_ggml_effective_type(QS_GGML_Q6_K, q->ne[0])));
                fb_ok = 0;
            }
        }
    }
    const char *tag = strrchr(dst, '/') ? strrchr(dst, '/') + 1 : dst;
    for (int t = 0; t < QS_GGML_NTYPES; t++)
        if (seen[t]) {
            char what[128];
            snprintf(what, sizeof what, "ggml.llamacpp-quantize.%s.%s", tag, qs_ggml_type_name(t));
            report(!bad[t], what);
        }
    if (nfb) {
        char what[128];
        snprintf(what, sizeof what, "ggml.llamacpp-fallback.%s", tag);
        report(fb_ok, what);
    }
    qs_gguf_close(a);
    qs_gguf_close(b);
    return fails ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--pair"))
        return pair(argv[2], argv[3]);
    if (argc != 2) {
        fprintf(stderr, "usage: ggml_ref LIBGGML_BASE_SO\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "ggml_ref: %s\n", dlerror());
        return 2;
    }
    name_fn tname = (name_fn)(uintptr_t)dlsym(h, "ggml_type_name");
    size_fn tsize = (size_fn)(uintptr_t)dlsym(h, "ggml_type_size");
    blck_fn bsize = (blck_fn)(uintptr_t)dlsym(h, "ggml_blck_size");
    if (!tname || !tsize || !bsize) {
        fprintf(stderr, "ggml_ref: ggml_type_name/size/blck_size missing\n");
        return 2;
    }
    int table_ok = 1;
    for (int t = 0; t < QS_GGML_NTYPES; t++) {
        const char *mine = qs_ggml_type_name(t);
        int64_t b = bsize(t);
        if (b == 0) { /* removed or never assigned */
            if (mine) {
                fprintf(stderr, "  type %d: qscope names it %s, ggml has none\n", t, mine);
                table_ok = 0;
            }
            continue;
        }
        if (!mine || strcmp(mine, tname(t)) || qs_ggml_block_size(t) != b ||
            qs_ggml_type_size(t) != tsize(t)) {
            fprintf(stderr, "  type %d: qscope %s %d %zu, ggml %s %lld %zu\n", t, mine ? mine : "-",
                    qs_ggml_block_size(t), qs_ggml_type_size(t), tname(t), (long long)b, tsize(t));
            table_ok = 0;
        }
    }
    report(table_ok, "ggml.type_table");

    float *x = malloc(N * sizeof *x), *y0 = malloc(N * sizeof *y0), *y1 = malloc(N * sizeof *y1);
    uint8_t *b0 = malloc(N * 2), *b1 = malloc(N * 2);
    for (int k = 0; k < NTYPES; k++) {
        char sym[64], what[96];
        snprintf(sym, sizeof sym, "quantize_row_%s_ref", types[k].sym);
        qrow_fn q = (qrow_fn)(uintptr_t)dlsym(h, sym);
        snprintf(sym, sizeof sym, "dequantize_row_%s", types[k].sym);
        dqrow_fn dq = (dqrow_fn)(uintptr_t)dlsym(h, sym);
        if (!q || !dq) {
            snprintf(what, sizeof what, "ggml.ref.%s (symbols missing)", types[k].fmt);
            report(0, what);
            continue;
        }
        struct qs_format f;
        struct qs_qopts o;
        qs_qopts_default(&o);
        qs_err e = {{0}};
        if (qs_format_parse(types[k].fmt, &f, &e) < 0) {
            fprintf(stderr, "  %s\n", e.msg);
            report(0, types[k].fmt);
            continue;
        }
        size_t rb;
        qs_ggml_row_bytes(types[k].type, N, &rb, NULL);
        int bytes_ok = 1, deq_ok = 1, fake_ok = 1;
        for (int r = 0; r < NROWS; r++) {
            make_row(r, x);
            memset(b0, 0xa5, rb);
            memset(b1, 0x5a, rb);
            q(x, b0, N);
            qs_ggml_quantize(types[k].type, x, b1, N);
            if (memcmp(b0, b1, rb)) {
                size_t i = 0;
                while (b0[i] == b1[i])
                    i++;
                fprintf(stderr, "  %s row %s: byte %zu (block %zu) ggml %02x qscope %02x\n",
                        types[k].fmt, row_names[r], i, i / qs_ggml_type_size(types[k].type), b0[i],
                        b1[i]);
                bytes_ok = 0;
            }
            dq(b0, y0, N);
            qs_ggml_dequantize(types[k].type, b0, y1, N);
            if (memcmp(y0, y1, N * sizeof(float))) {
                fprintf(stderr, "  %s row %s: dequantized floats differ\n", types[k].fmt,
                        row_names[r]);
                deq_ok = 0;
            }
            /* through qscope's format: 4 rows of N/4 (a multiple of 256) */
            if (qs_quant_fake(&f, &o, x, 4, N / 4, y1, &e) < 0) {
                fprintf(stderr, "  %s row %s: %s\n", types[k].fmt, row_names[r], e.msg);
                fake_ok = 0;
            } else if (memcmp(y0, y1, N * sizeof(float))) {
                fprintf(stderr, "  %s row %s: qs_quant_fake differs from llama.cpp\n", types[k].fmt,
                        row_names[r]);
                fake_ok = 0;
            }
        }
        snprintf(what, sizeof what, "ggml.ref.bytes.%s", types[k].fmt);
        report(bytes_ok, what);
        snprintf(what, sizeof what, "ggml.ref.dequant.%s", types[k].fmt);
        report(deq_ok, what);
        snprintf(what, sizeof what, "ggml.ref.fake.%s", types[k].fmt);
        report(fake_ok, what);
    }
    free(x);
    free(y0);
    free(y1);
    free(b0);
    free(b1);
    dlclose(h);
    return fails ? 1 : 0;
}
