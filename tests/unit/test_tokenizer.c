/* test_tokenizer.c - tokenizer.json BPE on small hand-checked vocabularies (merge order, byte
 * fallback, unk fusing, added tokens, normalizers, Metaspace, refused components).
 * The agreement with Hugging Face's own implementation on real vocabularies and long text is
 * checked by tests/sh/tokenizer.sh, which runs this binary as a driver:
 *   test_tokenizer encode TOKENIZER_JSON FILE...   prints each file's ids on one line. */
#include "qscope/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/tokens.h"
#include "test.h"

static char path_[128];

static struct qs_tokenizer *make(const char *json, qs_err *e)
{
    snprintf(path_, sizeof path_, "/tmp/qs_test_tokenizer_%d.json", (int)getpid());
    FILE *f = fopen(path_, "w");
    fputs(json, f);
    fclose(f);
    struct qs_tokenizer *t = NULL;
    qs_tokenizer_load(path_, &t, e);
    unlink(path_);
    return t;
}

/* ids of text as "1 2 3" */
static const char *enc(const struct qs_tokenizer *t, const char *text)
{
    static char out[1024];
    uint32_t *ids;
    size_t n;
    qs_err e = {{0}};
    if (qs_tokenizer_encode(t, text, strlen(text), &ids, &n, &e) < 0) {
        snprintf(out, sizeof out, "error: %s", e.msg);
        return out;
    }
    size_t k = 0;
    out[0] = 0;
    for (size_t i = 0; i < n && k < sizeof out - 16; i++)
        k += (size_t)snprintf(out + k, sizeof out - k, "%s%u", i ? " " : "", ids[i]);
    free(ids);
    return out;
}

/* Byte-level: GPT-2's byte map (space is U+0120 "Ġ"), merges by rank, not by position. */
static void test_byte_level(void)
{
    qs_err e = {{0}};
    struct qs_tokenizer *t =
        make("{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":"
             "false,\"use_regex\":true},\"added_tokens\":[{\"id\":9,\"content\":\"<|end|>\"}],"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4,"
             "\"\\u0120\":5,\"\\u0120a\":6,\"\\u010a\":7,\"1\":8},"
             "\"merges\":[\"b c\",\"a b\",\"\\u0120 a\"]}}",
             &e);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    CHECK_STR(qs_tokenizer_kind(t), "byte-level BPE");
    CHECK(qs_tokenizer_vocab(t) == 10);
    CHECK_STR(enc(t, "abc"), "0 4"); /* "b c" (rank 0) before "a b" */
    CHECK_STR(enc(t, "ab"), "3");
    CHECK_STR(enc(t, "abab"), "3 3");
    CHECK_STR(enc(t, "a abc"), "0 6 4"); /* " abc" is one piece: "Ġ a" then "b c" */
    CHECK_STR(enc(t, "a\n1"), "0 7 8");  /* \n is U+010A */
    CHECK_STR(enc(t, "ab<|end|>ab"), "3 9 3");
    CHECK(strstr(enc(t, "a\xff"), "not UTF-8") != NULL);
    CHECK(strstr(enc(t, "z"), "no token for byte 0x7a") != NULL);
    qs_tokenizer_free(t);
    /* Digits before ByteLevel (SmolLM): "11" is two pieces, so no "1 1" merge applies */
    const char *dj = "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                     "\"Digits\",\"individual_digits\":true},{\"type\":\"ByteLevel\","
                     "\"add_prefix_space\":false}]},\"model\":{\"type\":\"BPE\",\"vocab\":{"
                     "\"1\":0,\"11\":1,\"a\":2},\"merges\":[\"1 1\"]}}";
    t = make(dj, &e);
    CHECK(t != NULL);
    if (t) {
        CHECK_STR(enc(t, "a11"), "2 0 0");
        qs_tokenizer_free(t);
    }
    t = make("{\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":false},"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{\"1\":0,\"11\":1,\"a\":2},"
             "\"merges\":[\"1 1\"]}}",
             &e);
    CHECK(t != NULL);
    if (t) {
        CHECK_STR(enc(t, "a11"), "2 1");
        qs_tokenizer_free(t);
    }
    /* digits are what Rust's char::is_numeric accepts (\p{N}), not only 0-9 */
    t = make("{\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":true},"
             "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"\u00b2\":1,\"a\u00b2\":2},"
             "\"merges\":[\"a \u00b2\"]}}",
             &e);
    CHECK(t != NULL);
    if (t) {
        CHECK_STR(enc(t, "a\xc2\xb2"), "0 1");
        qs_tokenizer_free(t);
    }
}

/* SentencePiece style as LLaMA-2's tokenizer.json spells it: Prepend "▁", Replace " " -> "▁",
 * no pre-tokenizer, byte fallback; and as a Metaspace pre-tokenizer. */
static void test_sentencepiece(void)
{
    const char *model =
        "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"byte_fallback\":%s,"
        "\"fuse_unk\":true,\"vocab\":{\"<unk>\":0,\"<0xC3>\":1,\"<0xA9>\":2,\"\\u2581\":3,"
        "\"h\":4,\"i\":5,\"\\u2581h\":6,\"\\u2581hi\":7,\"hi\":8},"
        "\"merges\":[[\"\\u2581\",\"h\"],[\"\\u2581h\",\"i\"],[\"h\",\"i\"]]}";
    char js[2048], m[1024];
    snprintf(m, sizeof m, model, "true");
    snprintf(js, sizeof js,
             "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\","
             "\"prepend\":\"\\u2581\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
             "\"content\":\"\\u2581\"}]},\"pre_tokenizer\":null,%s}",
             m);
    qs_err e = {{0}};
    struct qs_tokenizer *t = make(js, &e);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "  %s\n", e.msg);
        return;
    }
    CHECK_STR(qs_tokenizer_kind(t), "SentencePiece BPE");
    CHECK_STR(enc(t, "hi hi"), "7 7");
    CHECK_STR(enc(t, "hih"), "7 4");
    CHECK_STR(enc(t, "h\xc3\xa9"), "6 1 2"); /* é is not in the vocabulary: its two bytes */
    CHECK_STR(enc(t, "  hi"), "3 3 7");
    qs_tokenizer_free(t);
    /* without byte fallback: unk, fused over a run */
    snprintf(m, sizeof m, model, "false");
    snprintf(js, sizeof js,
             "{\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\","
             "\"replacement\":\"\\u2581\",\"prepend_scheme\":\"always\","
             "\"split\":true},%s}",
             m);
    t = make(js, &e);
    CHECK(t != NULL);
    if (!t)
        return;
    CHECK_STR(enc(t, "hi hi"), "7 7");
    CHECK_STR(enc(t, "h\xc3\xa9\xc3\xa9i"), "6 0 5");
    qs_tokenizer_free(t);
}

static void expect_load_err(const char *json, const char *needle)
{
    qs_err e = {{0}};
    struct qs_tokenizer *t = make(json, &e);
    CHECK(t == NULL);
    if (!strstr(e.msg, needle) || !strstr(e.msg, "qs_test_tokenizer_")) {
        fprintf(stderr, "  message '%s' lacks '%s'\n", e.msg, needle);
        CHECK(0);
    }
    qs_tokenizer_free(t);
}

static void test_refused(void)
{
    expect_load_err("[1]", "not a JSON object");
    expect_load_err("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "WordPiece");
    expect_load_err("{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\","
                    "\"vocab\":{},\"merges\":[]}}",
                    "Whitespace");
    expect_load_err("{\"normalizer\":{\"type\":\"Lowercase\"},\"model\":{\"type\":\"BPE\","
                    "\"vocab\":{},\"merges\":[]}}",
                    "Lowercase");
    expect_load_err("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}",
                    "not in the vocabulary");
    expect_load_err("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                    "\"behavior\":\"Isolated\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},"
                    "\"merges\":[]}}",
                    "does not compile");
    struct qs_tokenizer *t = NULL;
    qs_err e = {{0}};
    CHECK(qs_tokenizer_load("/nonexistent/tokenizer.json", &t, &e) < 0 && t == NULL);
    qs_tokenizer_free(NULL);
}

/* Driver mode for tests/sh/tokenizer.sh. */
static int encode_files(int argc, char **argv)
{
    struct qs_tokenizer *t = NULL;
    qs_err e = {{0}};
    if (qs_tokenizer_load(argv[2], &t, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    int rc = 0;
    for (int i = 3; i < argc && !rc; i++) {
        struct qs_tokens *tk = NULL;
        if (qs_tokens_load_as(argv[i], QS_TOK_AUTO, t, &tk, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            rc = 1;
            break;
        }
        for (size_t k = 0; k < tk->n; k++)
            printf("%s%u", k ? " " : "", tk->ids[k]);
        printf("\n");
        qs_tokens_free(tk);
    }
    qs_tokenizer_free(t);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "encode"))
        return encode_files(argc, argv);
    static const struct qs_test_case cases[] = {
        TEST_CASE(test_byte_level), TEST_CASE(test_sentencepiece), TEST_CASE(test_refused)};
    return qs_test_run("tokenizer", cases, (int)(sizeof cases / sizeof cases[0]));
}
