/* test_session.c - SHA-256 against the FIPS 180-4 example vectors and sha256sum, flattening of
 * result objects, "# =>" lines (format, parse, compare) and the session text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/session.h"
#include "qscope/sha256.h"
#include "test.h"

static void hex_of(const void *data, size_t n, char hex[65])
{
    struct qs_sha256 s;
    uint8_t d[32];
    qs_sha256_init(&s);
    qs_sha256_update(&s, data, n);
    qs_sha256_final(&s, d);
    qs_sha256_hex(d, hex);
}

/* FIPS 180-4 / NIST CSRC example values. */
static void test_sha256_vectors(void)
{
    char h[65];
    hex_of("", 0, h);
    CHECK_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, h);
    CHECK_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m2, strlen(m2), h);
    CHECK_STR(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m4 =
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmno"
        "pqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hex_of(m4, strlen(m4), h);
    CHECK_STR(h, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    /* one million 'a', fed in uneven pieces to exercise the partial-block path */
    struct qs_sha256 s;
    char a[997];
    memset(a, 'a', sizeof a);
    qs_sha256_init(&s);
    size_t left = 1000000;
    for (size_t k = 1; left; k = k % 996 + 1) {
        size_t n = k < left ? k : left;
        qs_sha256_update(&s, a, n);
        left -= n;
    }
    uint8_t d[32];
    qs_sha256_final(&s, d);
    qs_sha256_hex(d, h);
    CHECK_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Message lengths around the padding boundaries (55, 56, 63, 64, 65 bytes) against sha256sum. */
static void test_sha256_file_vs_sha256sum(void)
{
    if (system("command -v sha256sum >/dev/null 2>&1") != 0) {
        fprintf(stderr, "  sha256sum not installed: comparison skipped\n");
        return;
    }
    char dir[] = "/tmp/qs-test-sha-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const int lens[] = {0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 1 << 20 | 7};
    for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
        char path[128], cmd[256], want[65] = "", got[65] = "";
        snprintf(path, sizeof path, "%s/f%zu", dir, t);
        FILE *f = fopen(path, "wb");
        CHECK(f != NULL);
        if (!f)
            continue;
        qs_rng r;
        qs_rng_seed(&r, (uint64_t)t + 1);
        for (int i = 0; i < lens[t]; i++)
            fputc((int)(qs_rng_u64(&r) & 255), f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
        FILE *p = popen(cmd, "r");
        CHECK(p != NULL);
        if (p) {
            CHECK(fscanf(p, "%64s", want) == 1);
            pclose(p);
        }
        qs_err e = {{0}};
        CHECK(qs_sha256_file(path, got, &e) == 0);
        CHECK_STR(got, want);
        unlink(path);
    }
    qs_err e = {{0}};
    char h[65];
    CHECK(qs_sha256_file("/nonexistent/qscope-model.safetensors", h, &e) < 0);
    CHECK(strstr(e.msg, "/nonexistent/qscope-model.safetensors") != NULL);
    rmdir(dir);
}

static void test_flatten(void)
{
    cJSON *o = cJSON_Parse("{\"cmd\":\"eval\",\"regime\":\"weight-only\","
                           "\"quant\":{\"acc\":0.95,\"loss\":0.125},"
                           "\"layers\":[{\"name\":\"fc0\",\"snr_db\":1},"
                           "{\"name\":\"fc1\",\"snr_db\":2},{\"name\":\"fc2\",\"snr_db\":12.5}],"
                           "\"ok\":true,\"none\":null,\"m\":[[1,2],[3]],\"empty\":{}}");
    CHECK(o != NULL);
    qs_json_num(o, "raw", 0.1 + 0.2); /* raw item, "%.9g" */
    struct qs_flat_list l = {0};
    CHECK(qs_flatten(o, &l) == 0);
    CHECK(qs_flat_find(&l, "cmd") == NULL);
    const struct qs_flat *f = qs_flat_find(&l, "layers[2].snr_db");
    CHECK(f && !strcmp(f->value, "12.5") && f->kind == QS_FLAT_NUM);
    f = qs_flat_find(&l, "quant.acc");
    CHECK(f && !strcmp(f->value, "0.95"));
    f = qs_flat_find(&l, "layers[1].name");
    CHECK(f && !strcmp(f->value, "fc1") && f->kind == QS_FLAT_STR);
    f = qs_flat_find(&l, "regime");
    CHECK(f && !strcmp(f->value, "weight-only"));
    f = qs_flat_find(&l, "ok");
    CHECK(f && !strcmp(f->value, "true") && f->kind == QS_FLAT_BOOL);
    f = qs_flat_find(&l, "none");
    CHECK(f && f->kind == QS_FLAT_NULL);
    f = qs_flat_find(&l, "m[1][0]");
    CHECK(f && !strcmp(f->value, "3"));
    f = qs_flat_find(&l, "raw");
    CHECK(f && !strcmp(f->value, "0.3") && f->kind == QS_FLAT_NUM);
    /* order follows the object: regime first */
    CHECK(l.n == 15);
    CHECK_STR(l.v[0].name, "regime");
    qs_flat_list_free(&l);

    /* a results array: one result keeps plain names, several get "[k]." */
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, cJSON_Duplicate(o, 1));
    CHECK(qs_flatten(arr, &l) == 0);
    CHECK(qs_flat_find(&l, "quant.acc") != NULL);
    qs_flat_list_free(&l);
    cJSON_AddItemToArray(arr, cJSON_Parse("{\"cmd\":\"x\",\"v\":7}"));
    CHECK(qs_flatten(arr, &l) == 0);
    CHECK(qs_flat_find(&l, "[0].quant.acc") != NULL);
    f = qs_flat_find(&l, "[1].v");
    CHECK(f && !strcmp(f->value, "7"));
    CHECK(qs_flat_find(&l, "[1].cmd") == NULL);
    qs_flat_list_free(&l);
    cJSON_Delete(arr);
    cJSON_Delete(o);

    /* long arrays of plain values keep their first QS_FLAT_MAX_ITEMS */
    cJSON *big = cJSON_CreateObject(), *sv = cJSON_CreateArray();
    for (int i = 0; i < 100; i++)
        cJSON_AddItemToArray(sv, qs_json_num_item(100 - i));
    cJSON_AddItemToObject(big, "sv", sv);
    CHECK(qs_flatten(big, &l) == 0);
    CHECK(l.n == QS_FLAT_MAX_ITEMS);
    CHECK(qs_flat_find(&l, "sv[63]") && !qs_flat_find(&l, "sv[64]"));
    qs_flat_list_free(&l);
    cJSON_Delete(big);
}

static void test_result_lines(void)
{
    struct qs_flat f[] = {
        {"quant.acc", "0.953", QS_FLAT_NUM}, {"note", "two\nlines", QS_FLAT_STR},
        {"q", "\"quoted\"", QS_FLAT_STR},    {"path", "a b=c.csv", QS_FLAT_STR},
        {"empty", "", QS_FLAT_STR},
    };
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        struct qs_sb sb = {0};
        qs_flat_format(&f[i], &sb);
        CHECK(sb.s && !strncmp(sb.s, "# => ", 5));
        CHECK(sb.s && sb.s[sb.len - 1] == '\n' && !strchr(sb.s, '\n')[1]); /* one line */
        char name[128], *val = NULL;
        qs_err e = {{0}};
        CHECK(qs_flat_parse(sb.s + 5, name, sizeof name, &val, &e) == 0);
        CHECK_STR(name, f[i].name);
        CHECK_STR(val, f[i].value);
        free(val);
        qs_sb_free(&sb);
    }
    char name[64], *val = NULL;
    qs_err e = {{0}};
    CHECK(qs_flat_parse("no equals sign", name, sizeof name, &val, &e) < 0);
    CHECK(strstr(e.msg, "name=value") != NULL);
    CHECK(qs_flat_parse("x=\"unterminated", name, sizeof name, &val, &e) < 0);
}

static void test_compare(void)
{
    struct qs_flat num = {"quant.acc", "0.95", QS_FLAT_NUM};
    struct qs_flat str = {"gate", "pass", QS_FLAT_STR};
    struct qs_flat nul = {"kl", "null", QS_FLAT_NULL};
    qs_err e = {{0}};
    CHECK(qs_flat_compare("0.95", &num, 1e-6, &e) == 1);
    CHECK(qs_flat_compare("0.9500005", &num, 1e-6, &e) == 1); /* rel 5.3e-7 */
    CHECK(qs_flat_compare("0.9500015", &num, 1e-6, &e) == 0); /* rel 1.6e-6 */
    CHECK(qs_flat_compare("0.91", &num, 1e-6, &e) == 0);
    CHECK(qs_flat_compare("null", &num, 1e-6, &e) == 0);
    CHECK(qs_flat_compare("zero point nine", &num, 1e-6, &e) == -1);
    CHECK(strstr(e.msg, "not a number") != NULL);
    /* absolute floor: tiny numbers agree within tol */
    struct qs_flat tiny = {"x", "1e-12", QS_FLAT_NUM};
    CHECK(qs_flat_compare("3e-12", &tiny, 1e-6, &e) == 1);
    CHECK(qs_flat_compare("2e-6", &tiny, 1e-6, &e) == 0);
    CHECK(qs_flat_compare("pass", &str, 1e-6, &e) == 1);
    CHECK(qs_flat_compare("fail", &str, 1e-6, &e) == 0);
    CHECK(qs_flat_compare("null", &nul, 1e-6, &e) == 1);
    CHECK(qs_flat_compare("0", &nul, 1e-6, &e) == 0);
}

/* Session text from a journal without model: header, commands, results, end line; a session
 * that loads a file pins it by the same hash as qs_sha256_file. */
static void test_session_write(void)
{
    struct qs_bench *b = qs_bench_new();
    CHECK(b != NULL);
    if (!b)
        return;
    struct qs_ctx c;
    qs_ctx_init(&c, b);
    cJSON *r = cJSON_CreateArray(), *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "roundtrip");
    cJSON_AddStringToObject(o, "format", "int4");
    qs_json_num(o, "x", 0.25);
    cJSON_AddItemToArray(r, o);
    CHECK(qs_journal_add(&c, "roundtrip int4 0.3", r) == 0);
    char dir[] = "/tmp/qs-test-sess-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128], data[128];
    snprintf(data, sizeof data, "%s/d.csv", dir);
    FILE *f = fopen(data, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("1,2,0\n3,4,1\n", f);
        fclose(f);
    }
    char line[256];
    snprintf(line, sizeof line, "load data %s", data);
    CHECK(qs_journal_add(&c, line, NULL) == 0);
    snprintf(path, sizeof path, "%s/s.qs", dir);
    qs_err e = {{0}};
    CHECK(c.dirty == 1);
    CHECK(qs_session_write(&c, path, &e) == 0);
    CHECK(c.dirty == 0);
    f = fopen(path, "r");
    CHECK(f != NULL);
    char text[4096] = "";
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        fclose(f);
    }
    char hex[65], want[256];
    CHECK(qs_sha256_file(data, hex, &e) == 0);
    snprintf(want, sizeof want, "# data %s sha256=%s\n", data, hex);
    CHECK(!strncmp(text, "# qscope session\n# version " QS_VERSION "\n# date ", 38));
    CHECK(strstr(text, want) != NULL);
    CHECK(strstr(text, "\nroundtrip int4 0.3\n# => format=int4\n# => x=0.25\n") != NULL);
    CHECK(strstr(text, "# end of session (2 commands)\n") != NULL);
    /* a missing input file makes the save fail with its name, leaving no file behind */
    unlink(data);
    char path2[160];
    snprintf(path2, sizeof path2, "%s/s2.qs", dir);
    CHECK(qs_session_write(&c, path2, &e) < 0);
    CHECK(strstr(e.msg, "d.csv") != NULL);
    CHECK(access(path2, F_OK) != 0);
    unlink(path);
    rmdir(dir);
    qs_ctx_free(&c);
    qs_bench_free(b);
}

TEST_MAIN("session", TEST_CASE(test_sha256_vectors), TEST_CASE(test_sha256_file_vs_sha256sum),
          TEST_CASE(test_flatten), TEST_CASE(test_result_lines), TEST_CASE(test_compare),
          TEST_CASE(test_session_write))
