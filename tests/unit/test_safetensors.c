/* test_safetensors.c - the safetensors reader and writer.
 *
 * The reader is checked against tests/fixtures/st_torch.safetensors, whose bytes were written by
 * tests/tools/make_st_fixture.py from torch/numpy tensors (independent code), with the expected
 * facts and values in tests/fixtures/st_torch.json; the same file carries numpy's and torch's
 * F16/BF16 casts of a sample, compared code for code with qscope's. Every malformed-file case
 * checks that the message names the file and the problem. Run from the repository root. */
#include "qscope/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/half.h"
#include "test.h"

#define FIX_ST "tests/fixtures/st_torch.safetensors"
#define FIX_JSON "tests/fixtures/st_torch.json"

static char tmpdir[64];
/* The finite scan works in chunks of 4096: the first bad element is found wherever it is (before
 * a chunk's end, in a later chunk, the last one), for every dtype, aligned or not, and an
 * all-finite tensor with values of every other exponent passes. */
static void test_finite_scan_positions(void)
{
    const enum qs_dtype dts[] = {QS_DT_F32, QS_DT_F16, QS_DT_BF16, QS_DT_F64};
    const uint64_t inf[] = {0x7f800000u, 0x7c00u, 0x7f80u, 0x7ff0000000000000ULL};
    const uint64_t big[] = {0x7f7fffffu, 0x7bffu, 0x7f7fu, 0x7fefffffffffffffULL}; /* max finite */
    const int64_t n = 10000, where[] = {0, 4095, 4096, 9000, 9999, -1};
    unsigned char *buf = malloc(8 * (size_t)n + 8);
    CHECK(buf != NULL);
    if (!buf)
        return;
    for (int d = 0; d < 4; d++) {
        size_t sz = qs_dtype_size(dts[d]);
        for (int mis = 0; mis < 2; mis++) {
            unsigned char *p = buf + (mis ? 1 : 0);
            for (int k = 0; k < 6; k++) {
                for (int64_t i = 0; i < n; i++) {
                    uint64_t v = i % 3 == 0 ? big[d] : (i % 3 == 1 ? 0 : big[d] ^ 1);
                    if (i == where[k])
                        v = inf[d] | (k % 2 ? 1 : 0);   /* an Inf, or a NaN */
                    memcpy(p + (size_t)i * sz, &v, sz); /* little-endian: the low bytes */
                }
                struct qs_st_tensor t = {.dtype = dts[d], .ndim = 1, .numel = n, .data = p};
                t.shape[0] = n;
                t.nbytes = (size_t)n * sz;
                int64_t at = -2;
                int ok = qs_st_check_finite(&t, &at);
                if (where[k] < 0)
                    CHECK(ok == 1 && at == -2);
                else
                    CHECK(ok == 0 && at == where[k]);
            }
        }
    }
    free(buf);
}

static void cleanup(void);

static const char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int k;
    if (!tmpdir[0]) {
        strcpy(tmpdir, "/tmp/qs_st_test_XXXXXX");
        if (!mkdtemp(tmpdir))
            tmpdir[0] = '\0';
        else
            atexit(cleanup);
    }
    char *p = buf[k++ & 3];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        *len = (size_t)n;
    }
    return b;
}

/* A safetensors image: length, header text as given (no padding), data_len bytes 0..255. */
static unsigned char *build(const char *hdr, size_t data_len, size_t *len)
{
    size_t h = strlen(hdr);
    unsigned char *b = malloc(8 + h + data_len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    for (size_t i = 0; i < data_len; i++)
        b[8 + h + i] = (unsigned char)i;
    *len = 8 + h + data_len;
    return b;
}

static int has(const char *msg, const char *want)
{
    if (strstr(msg, want))
        return 1;
    fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", msg, want);
    return 0;
}

/* Writes the image to a file NAME, opens it by path and in memory; both must fail with a message
 * naming the file and containing each of the NULL-terminated keywords. */
static void expect_bad_image(const char *name, const unsigned char *img, size_t len, ...)
{
    const char *path = tmp_path(name);
    CHECK(write_file(path, img, len) == 0);
    struct qs_st_file *f = (struct qs_st_file *)1;
    qs_err e = {{0}};
    CHECK(qs_st_open(path, &f, &e) == -1);
    CHECK(f == NULL);
    if (getenv("QS_TEST_VERBOSE"))
        fprintf(stderr, "  %s\n", e.msg);
    CHECK(has(e.msg, path));
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s: ", path);
    CHECK(strncmp(e.msg, prefix, strlen(prefix)) == 0);
    qs_err e2 = {{0}};
    CHECK(qs_st_open_mem(img, len, name, &f, &e2) == -1 && f == NULL);
    /* same message, with the label in place of the path */
    CHECK(strcmp(e.msg + strlen(path), e2.msg + strlen(name)) == 0);
    va_list ap;
    va_start(ap, len);
    for (const char *w; (w = va_arg(ap, const char *));)
        CHECK(has(e.msg, w));
    va_end(ap);
}

#define EXPECT_BAD_HDR(name, hdr, data_len, ...)                                                   \
    do {                                                                                           \
        size_t n_;                                                                                 \
        unsigned char *b_ = build(hdr, data_len, &n_);                                             \
        expect_bad_image(name, b_, n_, __VA_ARGS__, (const char *)NULL);                           \
        free(b_);                                                                                  \
    } while (0)

/* ---- tables ------------------------------------------------------------------------------ */

static void test_dtype_table(void)
{
    static const struct {
        enum qs_dtype t;
        const char *name;
        size_t size;
    } want[] = {{QS_DT_F32, "F32", 4},  {QS_DT_F16, "F16", 2}, {QS_DT_BF16, "BF16", 2},
                {QS_DT_F64, "F64", 8},  {QS_DT_I64, "I64", 8}, {QS_DT_I32, "I32", 4},
                {QS_DT_I16, "I16", 2},  {QS_DT_I8, "I8", 1},   {QS_DT_U8, "U8", 1},
                {QS_DT_BOOL, "BOOL", 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_STR(qs_dtype_name(want[i].t), want[i].name);
        CHECK(qs_dtype_size(want[i].t) == want[i].size);
        enum qs_dtype t;
        CHECK(qs_dtype_from_name(want[i].name, &t) == 0 && t == want[i].t);
    }
    enum qs_dtype t;
    CHECK(qs_dtype_from_name("f32", &t) == -1);
    CHECK(qs_dtype_from_name("F8_E4M3", &t) == -1);
    CHECK(qs_dtype_size((enum qs_dtype)99) == 0);
    CHECK_STR(qs_dtype_name((enum qs_dtype)99), "?");
}

/* ---- the torch-made fixture -------------------------------------------------------------- */

static const cJSON *jget(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItem(o, k);
}

static void test_torch_fixture(void)
{
    size_t jlen = 0, slen = 0;
    char *js = (char *)read_all(FIX_JSON, &jlen);
    unsigned char *img = read_all(FIX_ST, &slen);
    CHECK(js && img);
    if (!js || !img) {
        free(js);
        free(img);
        return;
    }
    cJSON *x = cJSON_Parse(js);
    CHECK(x != NULL);
    const cJSON *tens = jget(x, "tensors");
    size_t hlen = (size_t)jget(x, "header_len")->valuedouble;
    CHECK(slen == (size_t)jget(x, "file_size")->valuedouble);

    struct qs_st_file *f = NULL, *fm = NULL;
    qs_err e = {{0}};
    CHECK(qs_st_open(FIX_ST, &f, &e) == 0);
    CHECK(qs_st_open_mem(img, slen, "fixture", &fm, &e) == 0);
    if (!f || !fm)
        goto out;
    CHECK_STR(qs_st_path(f), FIX_ST);
    CHECK_STR(qs_st_path(fm), "fixture");
    CHECK(qs_st_count(f) == cJSON_GetArraySize(tens));
    CHECK(qs_st_get(f, -1) == NULL && qs_st_get(f, qs_st_count(f)) == NULL);

    int i = 0;
    for (const cJSON *r = tens->child; r; r = r->next, i++) {
        const char *name = jget(r, "name")->valuestring;
        const struct qs_st_tensor *t = qs_st_get(f, i), *tm = qs_st_get(fm, i);
        CHECK(t && tm);
        if (!t || !tm)
            break;
        /* data order, names, dtype, shape */
        CHECK_STR(t->name, name);
        CHECK(qs_st_find(f, name) == t);
        CHECK_STR(qs_dtype_name(t->dtype), jget(r, "dtype")->valuestring);
        const cJSON *sh = jget(r, "shape");
        CHECK(t->ndim == cJSON_GetArraySize(sh));
        int64_t numel = 1, k = 0;
        for (const cJSON *d = sh->child; d; d = d->next, k++) {
            CHECK(t->shape[k] == (int64_t)d->valuedouble);
            numel *= (int64_t)d->valuedouble;
        }
        CHECK(t->numel == numel);
        /* offsets, seen through the in-memory open */
        const cJSON *of = jget(r, "data_offsets");
        size_t b = (size_t)of->child->valuedouble, en = (size_t)of->child->next->valuedouble;
        CHECK((const unsigned char *)tm->data == img + 8 + hlen + b);
        CHECK(tm->nbytes == en - b && t->nbytes == en - b);
        CHECK(memcmp(t->data, tm->data, t->nbytes) == 0);
        /* values */
        const cJSON *vals = jget(r, "values");
        if (!vals)
            continue;
        CHECK(cJSON_GetArraySize(vals) == t->numel);
        float *out = malloc(sizeof(float) * (size_t)(t->numel + 1));
        qs_err e2 = {{0}};
        if (t->dtype == QS_DT_BOOL) {
            CHECK(qs_st_to_f32(t, out, &e2) == -1);
            CHECK(has(e2.msg, "'mask'") && has(e2.msg, "BOOL"));
            k = 0;
            for (const cJSON *v = vals->child; v; v = v->next, k++)
                CHECK(((const unsigned char *)t->data)[k] == (unsigned)v->valuedouble);
        } else {
            CHECK(qs_st_to_f32(t, out, &e2) == 0);
            k = 0;
            int bad = 0;
            for (const cJSON *v = vals->child; v; v = v->next, k++)
                if (out[k] != (float)v->valuedouble && bad++ < 3)
                    fprintf(stderr, "  %s[%lld] = %.9g, torch %.9g\n", name, (long long)k,
                            (double)out[k], v->valuedouble);
            CHECK(bad == 0);
            CHECK(qs_st_check_finite(t, NULL) == 1);
        }
        free(out);
    }

    /* alignment: the mapping is page-aligned, so the view follows the file offset */
    const struct qs_st_tensor *w0 = qs_st_find(f, "0.weight"), *sc = qs_st_find(f, "scalar");
    CHECK(w0 && ((uintptr_t)w0->data & 3) != 0 && qs_st_f32_view(w0) == NULL);
    CHECK(sc && qs_st_f32_view(sc) != NULL && qs_st_f32_view(sc)[0] == 2.5f);
    CHECK(qs_st_f32_view(qs_st_find(f, "2.weight")) == NULL); /* F16 */
    CHECK(qs_st_find(f, "nope") == NULL && qs_st_find(f, "") == NULL);
    const struct qs_st_tensor *em = qs_st_find(f, "empty");
    CHECK(em && em->numel == 0 && em->nbytes == 0 && em->ndim == 2 && em->shape[1] == 4);
    CHECK(sc && sc->ndim == 0 && sc->numel == 1);

    /* metadata, in header order */
    const cJSON *meta = jget(x, "metadata");
    CHECK(qs_st_meta_count(f) == cJSON_GetArraySize(meta));
    i = 0;
    for (const cJSON *m = meta->child; m; m = m->next, i++) {
        CHECK_STR(qs_st_meta_key(f, i), m->string);
        CHECK_STR(qs_st_meta_value(f, i), m->valuestring);
        CHECK_STR(qs_st_meta(f, m->string), m->valuestring);
    }
    CHECK(qs_st_meta(f, "absent") == NULL && qs_st_meta_key(f, i) == NULL);
    CHECK(strstr(qs_st_meta(f, "note"), "\" backslash \\ tab \t unicode \xc3\xa9") != NULL);
out:
    qs_st_close(f);
    qs_st_close(fm);
    cJSON_Delete(x);
    free(js);
    free(img);
}

/* numpy's and torch's F16/BF16 casts (stored in the fixture) against qscope's, code for code. */
static void test_fixture_conversions(void)
{
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    CHECK(qs_st_open(FIX_ST, &f, &e) == 0);
    if (!f)
        return;
    const struct qs_st_tensor *src = qs_st_find(f, "conv.src"),
                              *np16 = qs_st_find(f, "conv.np_f16"),
                              *th16 = qs_st_find(f, "conv.torch_f16"),
                              *thbf = qs_st_find(f, "conv.torch_bf16"),
                              *codes = qs_st_find(f, "dec.codes"),
                              *dec = qs_st_find(f, "dec.np_f32");
    CHECK(src && np16 && th16 && thbf && codes && dec);
    if (!(src && np16 && th16 && thbf && codes && dec)) {
        qs_st_close(f);
        return;
    }
    CHECK(src->numel > 2000 && np16->numel == src->numel && thbf->numel == src->numel);
    float *s = malloc(sizeof(float) * (size_t)src->numel);
    CHECK(qs_st_to_f32(src, s, &e) == 0); /* src is 2-byte aligned in the file: memcpy path */
    int bad = 0;
    for (int64_t i = 0; i < src->numel; i++) {
        uint16_t a, b, c;
        memcpy(&a, (const unsigned char *)np16->data + 2 * i, 2);
        memcpy(&b, (const unsigned char *)th16->data + 2 * i, 2);
        memcpy(&c, (const unsigned char *)thbf->data + 2 * i, 2);
        uint16_t h = qs_f32_to_f16(s[i]), bf = qs_f32_to_bf16(s[i]);
        if ((h != a || h != b || bf != c) && bad++ < 5)
            fprintf(stderr,
                    "  %.9g: f16 0x%04x numpy 0x%04x torch 0x%04x; bf16 0x%04x torch "
                    "0x%04x\n",
                    (double)s[i], h, a, b, bf, c);
    }
    CHECK(bad == 0);
    /* numpy's decode, bit for bit (NaN payloads included) */
    float *d = malloc(sizeof(float) * (size_t)codes->numel);
    CHECK(qs_st_to_f32(codes, d, &e) == 0);
    bad = 0;
    for (int64_t i = 0; i < codes->numel; i++) {
        uint32_t want, got;
        memcpy(&want, (const unsigned char *)dec->data + 4 * i, 4);
        memcpy(&got, &d[i], 4);
        if (got != want && bad++ < 5)
            fprintf(stderr, "  dec %lld: 0x%08x numpy 0x%08x\n", (long long)i, got, want);
    }
    CHECK(bad == 0);
    /* the sources hold +-inf (index 19) and the F16 casts overflow first at 65520 (index 6) */
    int64_t at = -1;
    CHECK(qs_st_check_finite(src, &at) == 0 && at == 19);
    CHECK(qs_st_check_finite(np16, &at) == 0 && at == 6);
    CHECK(qs_st_check_finite(thbf, &at) == 0 && at == 19);
    free(s);
    free(d);
    qs_st_close(f);
}

/* ---- writer ------------------------------------------------------------------------------ */

static void test_write_read_roundtrip(void)
{
    float w[12], sc = -7.25f;
    for (int i = 0; i < 12; i++)
        w[i] = (float)i * 0.5f - 2.0f;
    uint16_t h[5], bf[4];
    float hv[5] = {1.0f, -0.5f, 65504.0f, 0x1p-24f, 0.0f}, bv[4] = {3.0f, -1.5f, 1e30f, 0.25f};
    qs_f32_to_f16_n(hv, h, 5);
    qs_f32_to_bf16_n(bv, bf, 4);
    int64_t l[2] = {-5, 1LL << 40};
    unsigned char mask[3] = {1, 0, 1};
    struct qs_st_out t[] = {
        {.name = "layer.0.weight", .dtype = QS_DT_F32, .ndim = 2, .shape = {3, 4}, .data = w},
        {.name = "h", .dtype = QS_DT_F16, .ndim = 1, .shape = {5}, .data = h},
        {.name = "b \"q\"\n", .dtype = QS_DT_BF16, .ndim = 2, .shape = {2, 2}, .data = bf},
        {.name = "l", .dtype = QS_DT_I64, .ndim = 1, .shape = {2}, .data = l},
        {.name = "s", .dtype = QS_DT_F32, .ndim = 0, .data = &sc},
        {.name = "z", .dtype = QS_DT_F32, .ndim = 3, .shape = {2, 0, 3}, .data = NULL},
        {.name = "m", .dtype = QS_DT_BOOL, .ndim = 1, .shape = {3}, .data = mask},
    };
    const char *keys[] = {"qscope.arch", "esc\"\\\t\x01", "empty"};
    const char *vals[] = {"mlp", "v\xc3\xa9\n\"", ""};
    const char *path = tmp_path("rt.safetensors");
    qs_err e = {{0}};
    CHECK(write_file(path, "old contents", 12) == 0); /* replaced atomically */
    CHECK(qs_st_write(path, t, 7, keys, vals, 3, &e) == 0);
    char tmpname[300];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    CHECK(access(tmpname, F_OK) != 0); /* no leftover temp file */

    size_t len = 0;
    unsigned char *img = read_all(path, &len);
    CHECK(img != NULL);
    if (!img)
        return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | img[i];
    CHECK(hl % 8 == 0 && 8 + hl <= len);
    CHECK(img[8] == '{' && img[8 + hl - 1] != '\0');
    /* the header, parsed independently: contiguous offsets in the given order */
    char *hdr = strndup((const char *)img + 8, (size_t)hl);
    cJSON *j = cJSON_Parse(hdr);
    CHECK(j && cJSON_IsObject(j));
    size_t off = 0;
    static const size_t sizes[] = {48, 10, 8, 16, 4, 0, 3};
    for (int i = 0; j && i < 7; i++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, t[i].name);
        const cJSON *of = o ? cJSON_GetObjectItemCaseSensitive(o, "data_offsets") : NULL;
        CHECK(of && of->child->valuedouble == (double)off &&
              of->child->next->valuedouble == (double)(off + sizes[i]));
        off += sizes[i];
    }
    CHECK(8 + hl + off == len);
    cJSON_Delete(j);
    free(hdr);

    struct qs_st_file *f = NULL;
    CHECK(qs_st_open(path, &f, &e) == 0);
    if (!f) {
        fprintf(stderr, "  %s\n", e.msg);
        free(img);
        return;
    }
    CHECK(qs_st_count(f) == 7);
    for (int i = 0; i < 7; i++) {
        const struct qs_st_tensor *r = qs_st_get(f, i);
        CHECK_STR(r->name, t[i].name);
        CHECK(r->dtype == t[i].dtype && r->ndim == t[i].ndim && r->nbytes == sizes[i]);
        for (int k = 0; k < t[i].ndim; k++)
            CHECK(r->shape[k] == t[i].shape[k]);
        CHECK(sizes[i] == 0 || memcmp(r->data, t[i].data, sizes[i]) == 0);
    }
    /* the data area starts 8-aligned, so the first F32 tensor is viewable in place */
    const float *v = qs_st_f32_view(qs_st_get(f, 0));
    CHECK(v && v[5] == w[5]);
    float back[12];
    CHECK(qs_st_to_f32(qs_st_find(f, "h"), back, &e) == 0);
    for (int i = 0; i < 5; i++)
        CHECK(back[i] == hv[i]);
    CHECK(qs_st_to_f32(qs_st_find(f, "b \"q\"\n"), back, &e) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(back[i] == qs_bf16_to_f32(qs_f32_to_bf16(bv[i])));
    CHECK(back[0] == 3.0f && back[1] == -1.5f);
    CHECK(qs_st_to_f32(qs_st_find(f, "l"), back, &e) == 0);
    CHECK(back[0] == -5.0f && back[1] == 0x1p40f);
    CHECK(qs_st_find(f, "z")->numel == 0);
    CHECK(qs_st_meta_count(f) == 3);
    for (int i = 0; i < 3; i++) {
        CHECK_STR(qs_st_meta_key(f, i), keys[i]);
        CHECK_STR(qs_st_meta(f, keys[i]), vals[i]);
    }
    qs_st_close(f);
    free(img);

    /* no tensors, no metadata: still a valid file */
    CHECK(qs_st_write(path, NULL, 0, NULL, NULL, 0, &e) == 0);
    CHECK(qs_st_open(path, &f, &e) == 0 && qs_st_count(f) == 0 && qs_st_meta_count(f) == 0);
    qs_st_close(f);
}

static void test_write_errors(void)
{
    float w[4] = {0};
    const char *path = tmp_path("werr.safetensors");
    qs_err e = {{0}};
    struct qs_st_out dup[2] = {
        {.name = "a", .dtype = QS_DT_F32, .ndim = 1, .shape = {4}, .data = w},
        {.name = "a", .dtype = QS_DT_F32, .ndim = 1, .shape = {4}, .data = w}};
    CHECK(qs_st_write(path, dup, 2, NULL, NULL, 0, &e) == -1);
    CHECK(has(e.msg, path) && has(e.msg, "'a' is given twice"));
    struct qs_st_out t = {
        .name = "__metadata__", .dtype = QS_DT_F32, .ndim = 1, .shape = {4}, .data = w};
    CHECK(qs_st_write(path, &t, 1, NULL, NULL, 0, &e) == -1 && has(e.msg, "__metadata__"));
    t.name = "neg";
    t.shape[0] = -4;
    CHECK(qs_st_write(path, &t, 1, NULL, NULL, 0, &e) == -1 && has(e.msg, "'neg'") &&
          has(e.msg, "negative"));
    t.shape[0] = 4;
    t.ndim = 9;
    CHECK(qs_st_write(path, &t, 1, NULL, NULL, 0, &e) == -1 && has(e.msg, "ndim 9"));
    t.ndim = 1;
    t.data = NULL;
    CHECK(qs_st_write(path, &t, 1, NULL, NULL, 0, &e) == -1 && has(e.msg, "no data"));
    t.data = w;
    const char *k2[] = {"k", "k"}, *v2[] = {"1", "2"};
    CHECK(qs_st_write(path, &t, 1, k2, v2, 2, &e) == -1 && has(e.msg, "'k' is given twice"));
    CHECK(access(path, F_OK) != 0); /* nothing was written by the failures */
    const char *bad = "/nonexistent_dir_qs/x.safetensors";
    CHECK(qs_st_write(bad, &t, 1, NULL, NULL, 0, &e) == -1);
    CHECK(has(e.msg, bad) && has(e.msg, strerror(ENOENT)));
}

/* ---- reader on odd but valid input ------------------------------------------------------- */

static void test_unaligned_and_lenient(void)
{
    /* F32 tensor at data offset 2, inside a buffer that is itself misaligned by one byte */
    const char *hdr = "{\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[2,10]},"
                      "\"c\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[14,16],"
                      "\"extra\":[1,2]}}   \n\t";
    size_t len;
    unsigned char *img = build(hdr, 16, &len);
    unsigned char *buf = malloc(len + 8);
    size_t shift = 1 + (4 - ((uintptr_t)(buf + 1) & 3)) % 4; /* data area misaligned */
    size_t hl = strlen(hdr);
    while (((uintptr_t)(buf + shift + 8 + hl + 2) & 3) == 0)
        shift++;
    memcpy(buf + shift, img, len);
    float vals[2] = {1.5f, -3.0f};
    memcpy(buf + shift + 8 + hl + 2, vals, 8);
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    CHECK(qs_st_open_mem(buf + shift, len, NULL, &f, &e) == 0); /* hole at [10,14): allowed */
    if (f) {
        CHECK_STR(qs_st_path(f), "<memory>");
        const struct qs_st_tensor *b = qs_st_find(f, "b");
        float out[2];
        CHECK(b && qs_st_f32_view(b) == NULL);
        CHECK(qs_st_to_f32(b, out, &e) == 0 && out[0] == 1.5f && out[1] == -3.0f);
        CHECK(qs_st_get(f, 2) == qs_st_find(f, "c"));
    }
    qs_st_close(f);
    free(buf);
    free(img);

    /* header order differs from data order; qs_st_get follows the data; empty tensors may sit
     * anywhere, even inside another's range */
    hdr = "{\"y\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
          "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[3,3]},"
          "\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
          "\"__metadata__\":{}}";
    img = build(hdr, 4, &len);
    CHECK(qs_st_open_mem(img, len, "m", &f, &e) == 0);
    if (f) {
        CHECK_STR(qs_st_get(f, 0)->name, "x");
        CHECK_STR(qs_st_get(f, 1)->name, "y");
        CHECK_STR(qs_st_get(f, 2)->name, "e");
        CHECK(qs_st_meta_count(f) == 0);
    }
    qs_st_close(f);
    free(img);

    /* "{}" alone: no tensors */
    img = build("{}", 0, &len);
    CHECK(qs_st_open_mem(img, len, "m", &f, &e) == 0 && qs_st_count(f) == 0);
    qs_st_close(f);
    free(img);
    qs_st_close(NULL);
    CHECK(qs_st_count(NULL) == 0 && qs_st_find(NULL, "x") == NULL && qs_st_meta(NULL, "k") == NULL);
}

/* ---- bad input --------------------------------------------------------------------------- */

static void test_bad_empty_and_short(void)
{
    expect_bad_image("empty.safetensors", (const unsigned char *)"", 0, "file is empty", NULL);
    expect_bad_image("short.safetensors", (const unsigned char *)"\x05\0\0\0\0", 5, "only 5 bytes",
                     "8-byte header length", NULL);
}

static void test_bad_header_length(void)
{
    unsigned char img[20] = {0xe8, 0x03}; /* 1000 */
    memcpy(img + 8, "{}          ", 12);
    expect_bad_image("hlen.safetensors", img, sizeof img, "header length 1000",
                     "past the end of the file (12 bytes", NULL);
    img[0] = 13, img[1] = 0; /* one byte more than there is */
    expect_bad_image("hlen1.safetensors", img, sizeof img, "header length 13", "past the end",
                     NULL);
    img[0] = 12; /* exactly what there is: a valid file with an empty data area */
    struct qs_st_file *f = NULL;
    qs_err e = {{0}};
    CHECK(qs_st_open_mem(img, sizeof img, "fit", &f, &e) == 0 && qs_st_count(f) == 0);
    qs_st_close(f);
    memset(img, 0xff, 8); /* 2^64 - 1: must not wrap around */
    expect_bad_image("hlen2.safetensors", img, sizeof img, "header length 18446744073709551615",
                     "past the end", NULL);
}

static void test_bad_json(void)
{
    EXPECT_BAD_HDR("json.safetensors", "{\"a\": {\"dtype\": ", 0, "header is not valid JSON");
    EXPECT_BAD_HDR("json2.safetensors", "{} {}", 0, "stray bytes after its JSON value");
    EXPECT_BAD_HDR("json3.safetensors", "        ", 0, "header is not valid JSON");
    EXPECT_BAD_HDR("array.safetensors", "[1, 2]", 0, "header is an array, not a JSON object");
    EXPECT_BAD_HDR("string.safetensors", "\"x\"", 0, "header is a string, not a JSON object");
    /* a NUL inside the header must not be taken for its end */
    unsigned char img[8 + 11] = {11};
    memcpy(img + 8, "{}\0{\"a\":1}", 11);
    expect_bad_image("nul.safetensors", img, sizeof img, "stray bytes", NULL);
}

static void test_bad_dtype(void)
{
    EXPECT_BAD_HDR("dtype.safetensors",
                   "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                   "tensor 'w'", "unknown dtype 'F8_E4M3'");
    EXPECT_BAD_HDR("dtype2.safetensors",
                   "{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "tensor 'w'",
                   "\"dtype\" is a number, not a string");
}

static void test_bad_missing_fields(void)
{
    EXPECT_BAD_HDR("nodtype.safetensors", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                   "tensor 'w'", "missing \"dtype\"");
    EXPECT_BAD_HDR("noshape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8,
                   "tensor 'w'", "missing \"shape\"");
    EXPECT_BAD_HDR("nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8,
                   "tensor 'w'", "missing \"data_offsets\"");
    EXPECT_BAD_HDR("notobj.safetensors", "{\"w\":[1,2]}", 0, "tensor 'w'",
                   "entry is an array, not an object");
    EXPECT_BAD_HDR("offs.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                   "tensor 'w'", "\"data_offsets\" [0] is not [begin, end]");
    EXPECT_BAD_HDR("offs2.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":\"0,8\"}}", 8,
                   "tensor 'w'", "\"data_offsets\" is a string, not [begin, end]");
    EXPECT_BAD_HDR("shapestr.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8,
                   "tensor 'w'", "\"shape\" is a string, not an array");
}

static void test_bad_shape(void)
{
    EXPECT_BAD_HDR("neg.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[3,-4],\"data_offsets\":[0,48]}}", 48,
                   "tensor 'w'", "shape [3,-4]: dimension 1 is negative");
    EXPECT_BAD_HDR("frac.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
                   "tensor 'w'", "dimension 0 is not an integer");
    EXPECT_BAD_HDR("ndim.safetensors",
                   "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                   "\"data_offsets\":[0,1]}}",
                   1, "tensor 'w'", "9 dimensions; at most 8");
    EXPECT_BAD_HDR("huge.safetensors",
                   "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                   "\"data_offsets\":[0,8]}}",
                   8, "tensor 'w'", "is too large");
}

static void test_bad_offsets(void)
{
    EXPECT_BAD_HDR("range.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[12],\"data_offsets\":[0,48]}}", 40,
                   "tensor 'w'", "data_offsets [0,48]", "past the data area (40 bytes)");
    EXPECT_BAD_HDR("order.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                   "tensor 'w'", "data_offsets [8,0]: begin is after end");
    EXPECT_BAD_HDR("negoff.safetensors",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
                   "tensor 'w'", "not [begin, end]");
    EXPECT_BAD_HDR("size.safetensors",
                   "{\"0.weight\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,40]}}", 48,
                   "tensor '0.weight': F32 shape [3,4] needs 48 bytes but data_offsets "
                   "[0,40] span 40");
    EXPECT_BAD_HDR("overlap.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                   24, "tensors 'a' [0,16) and 'b' [8,24) overlap");
    /* a long tensor swallowing a later short one: caught through the running maximum */
    EXPECT_BAD_HDR("overlap2.safetensors",
                   "{\"s\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[20,22]},"
                   "\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
                   "\"t\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
                   32, "tensors 'big' [0,32) and 't' [4,6) overlap");
    EXPECT_BAD_HDR("dupname.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                   "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                   2, "tensor name 'a' appears twice");
}

static void test_bad_metadata(void)
{
    EXPECT_BAD_HDR("meta.safetensors", "{\"__metadata__\":{\"ok\":\"1\",\"k\":1}}", 0,
                   "__metadata__ value of 'k' is a number, not a string");
    EXPECT_BAD_HDR("meta2.safetensors", "{\"__metadata__\":[\"a\"]}", 0,
                   "__metadata__ is an array, not an object");
    EXPECT_BAD_HDR("meta3.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
                   "__metadata__ appears twice");
}

static void test_bad_names_are_sanitised(void)
{
    EXPECT_BAD_HDR("ctl.safetensors",
                   "{\"a\\u001b[2Jb\":{\"dtype\":\"Q\",\"shape\":[],\"data_offsets\":[0,0]}}", 0,
                   "tensor 'a?[2Jb'");
}

static void test_bad_missing_file_and_dir(void)
{
    const char *path = tmp_path("does_not_exist.safetensors");
    struct qs_st_file *f = (struct qs_st_file *)1;
    qs_err e = {{0}};
    CHECK(qs_st_open(path, &f, &e) == -1 && f == NULL);
    CHECK(has(e.msg, path) && has(e.msg, "cannot open") && has(e.msg, strerror(ENOENT)));
    CHECK(qs_st_open(tmpdir, &f, &e) == -1 && has(e.msg, tmpdir) && has(e.msg, "directory"));
}

static void cleanup(void)
{
    if (!tmpdir[0])
        return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "  could not remove %s\n", tmpdir);
}

TEST_MAIN("safetensors", TEST_CASE(test_dtype_table), TEST_CASE(test_torch_fixture),
          TEST_CASE(test_fixture_conversions), TEST_CASE(test_write_read_roundtrip),
          TEST_CASE(test_write_errors), TEST_CASE(test_unaligned_and_lenient),
          TEST_CASE(test_bad_empty_and_short), TEST_CASE(test_bad_header_length),
          TEST_CASE(test_bad_json), TEST_CASE(test_bad_dtype), TEST_CASE(test_bad_missing_fields),
          TEST_CASE(test_bad_shape), TEST_CASE(test_bad_offsets), TEST_CASE(test_bad_metadata),
          TEST_CASE(test_bad_names_are_sanitised), TEST_CASE(test_bad_missing_file_and_dir),
          TEST_CASE(test_finite_scan_positions))
