/* fuzz_session.c - session files under fuzzing: the reader that --replay and recover use (lines,
 * magic, end line and command count, "# model|data PATH sha256=HEX" header lines, "# =>" result
 * lines and their comparison, --check's pins), through qs_session_lint, which neither runs the
 * commands nor hashes or opens the files a header names. Each command line is also tokenized,
 * re-quoted word by word with qs_quote_sb and tokenized again: the words must come back the same
 * (the journal relies on it), else the target aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/session.h"

static struct qs_bench *bench;
static struct qs_ctx ctx;

static int requote_one(void *u, const char *stmt)
{
    (void)u;
    char **argv, **argv2;
    qs_err e;
    int argc = qs_tokenize(stmt, &argv, &e);
    if (argc < 0)
        return 0;
    struct qs_sb sb = {0};
    for (int i = 0; i < argc; i++) {
        if (i)
            qs_sb_printf(&sb, " ");
        qs_quote_sb(argv[i], &sb);
    }
    int argc2 = qs_tokenize(sb.s ? sb.s : "", &argv2, &e);
    if (argc2 != argc) {
        fprintf(stderr, "fuzz_session: '%s' re-quoted as '%s': %d words became %d\n", stmt,
                sb.s ? sb.s : "", argc, argc2);
        abort();
    }
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], argv2[i])) {
            fprintf(stderr, "fuzz_session: word %d '%s' came back as '%s'\n", i, argv[i], argv2[i]);
            abort();
        }
    qs_argv_free(argv, argc);
    qs_argv_free(argv2, argc2);
    qs_sb_free(&sb);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!bench) {
        bench = qs_bench_new();
        qs_ctx_init(&ctx, bench); /* note == NULL: problems are counted, not printed */
    }
    ctx.safe = size & 1; /* both ways of looking at commands that write files */
    qs_session_lint(&ctx, "fuzz.qs", (const char *)data, size, 1);
    qs_session_lint(&ctx, "fuzz.qs", (const char *)data, size, 0);
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    if (!memchr(data, 0, size))
        qs_split_statements(text, requote_one, NULL);
    free(text);
    return 0;
}
