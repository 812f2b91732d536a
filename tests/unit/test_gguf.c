/* test_gguf.c - the GGUF reader against files written from the specification by
 * tests/tools/make_gguf.py (not by qscope, not by gguf-py): every ggml type qscope decodes equals
 * the script's own float32 dequantization to the last bit; key/value types and alignment; each
 * malformed file gives one message naming the file and the problem. */
#include "qscope/gguf.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/ggml.h"
#include "qscope/safetensors.h"
#include "test.h"

#define FIX "tests/fixtures/gguf/"

static void test_blocks_bit_exact(void)
{
    struct qs_gguf_file *g = NULL;
    struct qs_st_file *st = NULL;
    qs_err e = {{0}};
    CHECK(qs_gguf_open(FIX "blocks.gguf", &g, &e) == 0);
    CHECK(qs_st_open(FIX "blocks.expected.safetensors", &st, &e) == 0);
    if (!g || !st) {
        fprintf(stderr, "  %s\n", e.msg);
        qs_gguf_close(g);
        qs_st_close(st);
        return;
    }
    CHECK(qs_gguf_version(g) == 3 && qs_gguf_alignment(g) == 32);
    CHECK(qs_gguf_count(g) == 14);
    int types_seen[QS_GGML_NTYPES] = {0};
    for (int i = 0; i < qs_gguf_count(g); i++) {
        const struct qs_gguf_tensor *t = qs_gguf_get(g, i);
        const struct qs_st_tensor *x = qs_st_find(st, t->name);
        CHECK(x != NULL);
        if (!x)
            continue;
        CHECK(x->ndim == t->ndim);
        for (int d = 0; d < t->ndim; d++)
            CHECK(x->shape[d] == t->ne[t->ndim - 1 - d]); /* ggml dims: fastest first */
        CHECK(x->numel == t->numel);
        float *got = malloc((size_t)t->numel * sizeof *got);
        float *want = malloc((size_t)t->numel * sizeof *want);
        CHECK(qs_gguf_to_f32(t, got, &e) == 0);
        CHECK(qs_st_to_f32(x, want, &e) == 0);
        if (memcmp(got, want, (size_t)t->numel * sizeof *got)) {
            int64_t k = 0;
            while (memcmp(&got[k], &want[k], 4) == 0)
                k++;
            fprintf(stderr, "  %s: element %lld is %.9g, the script says %.9g\n", t->name,
                    (long long)k, got[k], want[k]);
            CHECK(0);
        }
        types_seen[t->type] = 1;
        free(got);
        free(want);
    }
    static const int want_types[] = {0, 1, 30, 8, 2, 3, 6, 7, 10, 11, 12, 13, 14};
    for (size_t k = 0; k < sizeof want_types / sizeof want_types[0]; k++)
        CHECK(types_seen[want_types[k]]);
    const char *s = NULL;
    CHECK(qs_gguf_get_str(g, "general.architecture", &s, &e) == 1 && !strcmp(s, "test"));
    qs_gguf_close(g);
    qs_st_close(st);
}

static void test_kv_types_and_alignment(void)
{
    struct qs_gguf_file *g = NULL;
    qs_err e = {{0}};
    CHECK(qs_gguf_open(FIX "align64.gguf", &g, &e) == 0);
    if (!g)
        return;
    CHECK(qs_gguf_alignment(g) == 64);
    for (int i = 0; i < qs_gguf_count(g); i++)
        CHECK(((uintptr_t)qs_gguf_get(g, i)->data & 63) == 0);
    int64_t v;
    double d;
    const char *s;
    CHECK(qs_gguf_get_int(g, "k.u8", &v, &e) == 1 && v == 200);
    CHECK(qs_gguf_get_int(g, "k.i8", &v, &e) == 1 && v == -5);
    CHECK(qs_gguf_get_int(g, "k.u16", &v, &e) == 1 && v == 60000);
    CHECK(qs_gguf_get_int(g, "k.i16", &v, &e) == 1 && v == -30000);
    CHECK(qs_gguf_get_int(g, "k.u32", &v, &e) == 1 && v == 4000000000LL);
    CHECK(qs_gguf_get_int(g, "k.i32", &v, &e) == 1 && v == -2000000000LL);
    CHECK(qs_gguf_get_int(g, "k.u64", &v, &e) == 1 && v == (1LL << 40));
    CHECK(qs_gguf_get_int(g, "k.i64", &v, &e) == 1 && v == -(1LL << 40));
    CHECK(qs_gguf_get_int(g, "k.big", &v, &e) == -1 && strstr(e.msg, "k.big"));
    CHECK(qs_gguf_get_float(g, "k.f32", &d, &e) == 1 && d == 0.5);
    CHECK(qs_gguf_get_float(g, "k.f64", &d, &e) == 1 && d == 0.125);
    CHECK(qs_gguf_get_float(g, "k.u8", &d, &e) == 1 && d == 200);
    CHECK(qs_gguf_get_str(g, "k.str", &s, &e) == 1 && !strcmp(s, "h\xc3\xa9llo"));
    CHECK(qs_gguf_get_str(g, "k.u8", &s, &e) == -1 && strstr(e.msg, "not a string"));
    CHECK(qs_gguf_get_int(g, "k.str", &v, &e) == -1 && strstr(e.msg, "is a string"));
    CHECK(qs_gguf_get_int(g, "missing", &v, &e) == 0);
    int at;
    uint64_t an;
    CHECK(qs_gguf_kv_type(g, qs_gguf_kv_find(g, "k.arr_str"), &at, &an) == QS_GGUF_ARRAY);
    CHECK(at == QS_GGUF_STRING && an == 3);
    CHECK(qs_gguf_kv_type(g, qs_gguf_kv_find(g, "k.bool"), NULL, NULL) == QS_GGUF_BOOL);
    const struct qs_gguf_tensor *b = qs_gguf_find(g, "b");
    CHECK(b && b->type == QS_GGML_Q4_K && b->nbytes == 144);
    qs_gguf_close(g);
}

static void test_unsupported_type_named(void)
{
    struct qs_gguf_file *g = NULL;
    qs_err e = {{0}};
    CHECK(qs_gguf_open(FIX "iq.gguf", &g, &e) == 0);
    if (!g)
        return;
    float out[256];
    CHECK(qs_gguf_to_f32(qs_gguf_get(g, 0), out, &e) == -1);
    CHECK(strstr(e.msg, "iq2_xxs") && strstr(e.msg, "not yet") && strstr(e.msg, "IQ"));
    qs_gguf_close(g);
}

static void test_malformed_files(void)
{
    FILE *fp = fopen(FIX "bad.json", "rb");
    CHECK(fp != NULL);
    if (!fp)
        return;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    CHECK(j && cJSON_GetArraySize(j) >= 25);
    for (cJSON *it = j ? j->child : NULL; it; it = it->next) {
        char path[256];
        snprintf(path, sizeof path, FIX "bad/%s.gguf", it->string);
        struct qs_gguf_file *g = NULL;
        qs_err e = {{0}};
        int rc = qs_gguf_open(path, &g, &e);
        int ok = rc == -1 && g == NULL && strstr(e.msg, path) && strstr(e.msg, it->valuestring) &&
                 !strchr(e.msg, '\n');
        if (!ok)
            fprintf(stderr, "  %s: rc %d, message '%s' (want '%s')\n", it->string, rc, e.msg,
                    it->valuestring);
        CHECK(ok);
        qs_gguf_close(g);
        /* the same bytes from memory */
        FILE *f2 = fopen(path, "rb");
        static unsigned char data[65536];
        size_t len = f2 ? fread(data, 1, sizeof data, f2) : 0;
        if (f2)
            fclose(f2);
        CHECK(qs_gguf_open_mem(data, len, "mem", &g, &e) == -1 && g == NULL);
        CHECK(strncmp(e.msg, "mem: ", 5) == 0);
    }
    cJSON_Delete(j);
}

/* Every truncation of a valid file fails cleanly (never reads past the end). */
static void test_every_truncation(void)
{
    FILE *fp = fopen(FIX "align64.gguf", "rb");
    CHECK(fp != NULL);
    if (!fp)
        return;
    static unsigned char data[65536];
    size_t len = fread(data, 1, sizeof data, fp);
    fclose(fp);
    for (size_t k = 0; k < len; k++) {
        unsigned char *copy = malloc(k ? k : 1); /* exact size: ASan sees any overread */
        memcpy(copy, data, k);
        struct qs_gguf_file *g = NULL;
        qs_err e = {{0}};
        CHECK(qs_gguf_open_mem(copy, k, "cut", &g, &e) == -1);
        qs_gguf_close(g);
        free(copy);
    }
}

static void test_changed_on_disk(void)
{
    char tmp[] = "/tmp/qs-gguf-XXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0);
    FILE *in = fopen(FIX "align64.gguf", "rb");
    static unsigned char data[65536];
    size_t len = in ? fread(data, 1, sizeof data, in) : 0;
    if (in)
        fclose(in);
    CHECK(write(fd, data, len) == (ssize_t)len);
    close(fd);
    struct qs_gguf_file *g = NULL;
    qs_err e = {{0}};
    CHECK(qs_gguf_open(tmp, &g, &e) == 0);
    CHECK(qs_gguf_check(g, &e) == 0);
    FILE *f = fopen(tmp, "ab");
    fputc(0, f);
    fclose(f);
    CHECK(qs_gguf_check(g, &e) == -1 && strstr(e.msg, "changed on disk"));
    qs_gguf_close(g);
    unlink(tmp);
}

/* qs_gguf_write: what it writes reads back; inconsistent tensors are refused before a byte is
 * written. */
static void test_write_roundtrip(void)
{
    char dir[] = "/tmp/qs-gguf-w-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[64];
    snprintf(path, sizeof path, "%s/w.gguf", dir);
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    uint8_t q[2 * 144];
    float x[512];
    for (int i = 0; i < 512; i++)
        x[i] = cosf((float)i);
    qs_ggml_quantize(QS_GGML_Q4_K, x, q, 512);
    struct qs_gguf_kv_out kv[] = {
        {.key = "general.architecture", .type = QS_GGUF_STRING, .str = "test"},
        {.key = "k.u", .type = QS_GGUF_U32, .u32 = 7},
        {.key = "k.f", .type = QS_GGUF_F32, .f32 = 0.25f}};
    struct qs_gguf_tensor_out t[] = {{.name = "a",
                                      .type = QS_GGML_F32,
                                      .ndim = 2,
                                      .ne = {3, 2, 1, 1},
                                      .data = a,
                                      .nbytes = sizeof a},
                                     {.name = "q",
                                      .type = QS_GGML_Q4_K,
                                      .ndim = 1,
                                      .ne = {512, 1, 1, 1},
                                      .data = q,
                                      .nbytes = sizeof q}};
    qs_err e = {{0}};
    CHECK(qs_gguf_write(path, kv, 3, t, 2, &e) == 0);
    struct qs_gguf_file *g = NULL;
    CHECK(qs_gguf_open(path, &g, &e) == 0);
    if (g) {
        int64_t v;
        double d;
        CHECK(qs_gguf_get_int(g, "k.u", &v, &e) == 1 && v == 7);
        CHECK(qs_gguf_get_float(g, "k.f", &d, &e) == 1 && d == 0.25);
        const struct qs_gguf_tensor *ta = qs_gguf_find(g, "a"), *tq = qs_gguf_find(g, "q");
        CHECK(ta && tq && ta->ne[0] == 3 && ta->ne[1] == 2 && !memcmp(ta->data, a, sizeof a));
        CHECK(tq && tq->nbytes == sizeof q && !memcmp(tq->data, q, sizeof q));
        qs_gguf_close(g);
    }
    t[1].nbytes = 100; /* does not match 512 q4_K elements */
    CHECK(qs_gguf_write(path, kv, 3, t, 2, &e) == -1 && strstr(e.msg, "do not match"));
    t[1].nbytes = sizeof q;
    t[1].name = "a";
    CHECK(qs_gguf_write(path, kv, 3, t, 2, &e) == -1 && strstr(e.msg, "duplicate"));
    unlink(path);
    rmdir(dir);
}

TEST_MAIN("gguf", TEST_CASE(test_write_roundtrip), TEST_CASE(test_blocks_bit_exact),
          TEST_CASE(test_kv_types_and_alignment), TEST_CASE(test_unsupported_type_named),
          TEST_CASE(test_malformed_files), TEST_CASE(test_every_truncation),
          TEST_CASE(test_changed_on_disk))
