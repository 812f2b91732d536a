/* test_tokens.c - token files: byte-level .txt, nanoGPT .bin (uint16, uint32), llm.c .bin (GPT-2
 * and LLaMA-3 headers), and bad inputs. */
#include "qscope/tokens.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

static char dir_[64];

static const char *tmp_path(const char *name)
{
    static char buf[4][128];
    static int k;
    if (!dir_[0]) {
        snprintf(dir_, sizeof dir_, "/tmp/qs_test_tokens_%d", (int)getpid());
        qs_mkdir_p(dir_);
    }
    char *p = buf[k++ % 4];
    snprintf(p, 128, "%s/%s", dir_, name);
    return p;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        if (len)
            fwrite(data, 1, len, f);
        fclose(f);
    }
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* An llm.c file: header (magic, version, count) then n uint16 ids (little-endian). */
static void write_llmc(const char *path, uint32_t magic, uint32_t ver, uint32_t count,
                       const uint16_t *ids, size_t n, int extra_byte)
{
    size_t len = 1024 + 2 * n + (extra_byte ? 1 : 0);
    unsigned char *b = calloc(len, 1);
    put_u32(b, magic);
    put_u32(b + 4, ver);
    put_u32(b + 8, count);
    for (size_t i = 0; i < n; i++) {
        b[1024 + 2 * i] = (unsigned char)(ids[i] & 0xff);
        b[1024 + 2 * i + 1] = (unsigned char)(ids[i] >> 8);
    }
    write_file(path, b, len);
    free(b);
}

static void test_txt(void)
{
    const char *p = tmp_path("a.txt");
    const unsigned char text[] = {'h', 'i', 0xc3, 0xa9, '\n', 0};
    write_file(p, text, 6);
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    CHECK(qs_tokens_load(p, &t, &e) == 0);
    if (!t)
        return;
    CHECK(t->n == 6);
    CHECK(t->vocab == 256);
    CHECK(t->ids[0] == 'h' && t->ids[2] == 0xc3 && t->ids[3] == 0xa9 && t->ids[5] == 0);
    CHECK_STR(t->path, p);
    qs_tokens_free(t);
}

static void test_nanogpt_bin(void)
{
    const char *p = tmp_path("n.bin");
    /* 3 ids, little-endian: 1, 0x1234, 50256 */
    const unsigned char b[] = {0x01, 0x00, 0x34, 0x12, 0x50, 0xc4};
    write_file(p, b, sizeof b);
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    CHECK(qs_tokens_load(p, &t, &e) == 0);
    if (!t)
        return;
    CHECK(t->n == 3);
    CHECK(t->ids[0] == 1 && t->ids[1] == 0x1234 && t->ids[2] == 50256);
    CHECK(t->vocab == 50257);
    qs_tokens_free(t);
}

static void test_llmc_bin(void)
{
    const char *p = tmp_path("l.bin");
    const uint16_t ids[] = {50256, 7, 300, 0, 9};
    for (uint32_t ver = 1; ver <= 2; ver++) {
        write_llmc(p, QS_LLMC_MAGIC, ver, 5, ids, 5, 0);
        struct qs_tokens *t = NULL;
        qs_err e = {{0}};
        CHECK(qs_tokens_load(p, &t, &e) == 0);
        if (!t)
            return;
        CHECK(t->n == 5);
        for (int i = 0; i < 5; i++)
            CHECK(t->ids[i] == ids[i]);
        CHECK(t->vocab == 50257);
        qs_tokens_free(t);
    }
}

/* uint32 ids: raw with the width given, and behind llm.c's LLaMA-3 header (magic 20240801,
 * version 7), which says the width itself. */
static void test_u32(void)
{
    const uint32_t ids[] = {128000, 7, 151935, 0, 65536};
    unsigned char raw[1024 + sizeof ids];
    memset(raw, 0, sizeof raw);
    put_u32(raw, QS_LLMC_MAGIC_U32);
    put_u32(raw + 4, 7);
    put_u32(raw + 8, 5);
    for (int i = 0; i < 5; i++)
        put_u32(raw + 1024 + 4 * i, ids[i]);
    const char *pr = tmp_path("r.u32"), *ph = tmp_path("h.bin");
    write_file(pr, raw + 1024, sizeof ids);
    write_file(ph, raw, sizeof raw);
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    for (int k = 0; k < 3; k++) {
        const char *p = k == 0 ? pr : ph;
        int w = k == 1 ? QS_TOK_AUTO : QS_TOK_U32;
        CHECK(qs_tokens_load_as(p, w, NULL, &t, &e) == 0);
        if (!t)
            return;
        CHECK(t->n == 5);
        for (int i = 0; i < 5; i++)
            CHECK(t->ids[i] == ids[i]);
        CHECK(t->vocab == 151936);
        CHECK(strstr(t->source, "uint32") != NULL);
        qs_tokens_free(t);
    }
    /* the same raw file as uint16: twice as many ids, the low and high halves */
    CHECK(qs_tokens_load(pr, &t, &e) == 0);
    if (t) {
        CHECK(t->n == 10 && t->ids[0] == (128000 & 0xffff) && t->ids[1] == 128000 >> 16);
        CHECK_STR(t->source, "uint16 ids");
    }
    qs_tokens_free(t);
    /* a width that disagrees with the header; a length that is not whole ids; bad version */
    CHECK(qs_tokens_load_as(ph, QS_TOK_U16, NULL, &t, &e) < 0 && t == NULL);
    CHECK(strstr(e.msg, "header says uint32 ids, not uint16") != NULL);
    write_file(pr, raw + 1024, sizeof ids - 2);
    CHECK(qs_tokens_load_as(pr, QS_TOK_U32, NULL, &t, &e) < 0);
    CHECK(strstr(e.msg, "not a multiple of 4") != NULL);
    put_u32(raw + 4, 1);
    write_file(ph, raw, sizeof raw);
    CHECK(qs_tokens_load(ph, &t, &e) < 0 && strstr(e.msg, "version 1 (expected 7)") != NULL);
    put_u32(raw + 4, 7);
    write_file(ph, raw, sizeof raw - 1);
    CHECK(qs_tokens_load(ph, &t, &e) < 0 && strstr(e.msg, "not a multiple of 4") != NULL);
    const char *txt = tmp_path("w.txt");
    write_file(txt, "ab", 2);
    CHECK(qs_tokens_load_as(txt, QS_TOK_U32, NULL, &t, &e) < 0);
    CHECK(strstr(e.msg, "dtype= applies to binary token files") != NULL);
}

static void expect_err(const char *path, const char *needle)
{
    struct qs_tokens *t = (struct qs_tokens *)1;
    qs_err e = {{0}};
    CHECK(qs_tokens_load(path, &t, &e) == -1);
    CHECK(t == NULL);
    CHECK(strstr(e.msg, path) != NULL);
    if (!strstr(e.msg, needle)) {
        fprintf(stderr, "  message '%s' lacks '%s'\n", e.msg, needle);
        CHECK(0);
    }
}

static void test_bad(void)
{
    expect_err(tmp_path("missing.bin"), "cannot open");
    const char *p = tmp_path("empty.txt");
    write_file(p, "", 0);
    expect_err(p, "empty");
    p = tmp_path("odd.bin");
    write_file(p, "abc", 3);
    expect_err(p, "odd byte count");
    const uint16_t ids[] = {1, 2, 3, 4};
    p = tmp_path("count.bin");
    write_llmc(p, QS_LLMC_MAGIC, 1, 7, ids, 4, 0);
    expect_err(p, "says 7 tokens but the file holds 4");
    p = tmp_path("ver.bin");
    write_llmc(p, QS_LLMC_MAGIC, 3, 4, ids, 4, 0);
    expect_err(p, "version 3");
    p = tmp_path("llmcodd.bin");
    write_llmc(p, QS_LLMC_MAGIC, 2, 4, ids, 4, 1);
    expect_err(p, "odd byte count");
    /* a different magic is plain nanoGPT data: the header words become ids */
    p = tmp_path("nomagic.bin");
    write_llmc(p, 12345, 1, 4, ids, 4, 0);
    struct qs_tokens *t = NULL;
    qs_err e = {{0}};
    CHECK(qs_tokens_load(p, &t, &e) == 0);
    if (t) {
        CHECK(t->n == 512 + 4);
        CHECK(t->ids[0] == (12345 & 0xffff) && t->ids[512] == 1 && t->ids[515] == 4);
    }
    qs_tokens_free(t);
    qs_tokens_free(NULL);
}

static void cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir_);
    CHECK(system(cmd) == 0);
}

TEST_MAIN("tokens", TEST_CASE(test_txt), TEST_CASE(test_nanogpt_bin), TEST_CASE(test_llmc_bin),
          TEST_CASE(test_u32), TEST_CASE(test_bad), TEST_CASE(cleanup))
