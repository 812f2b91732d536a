/* fuzz_cmd.c - the command language under fuzzing: tokenizer, statement splitter, table lookup
 * and every handler's argument parsing, on a bench holding the bundled moons model (small, so a
 * fuzzed `error`, `rank` or `correct` is cheap). Statements whose command, by its table row,
 * runs long (QS_CMD_LONG: train, qat, allocate, sensitivity, studies), writes files
 * (QS_CMD_WRITES, or WRITES_OPT with out=/csv=/plan=) or names a file to read (a PATH
 * positional: load, source, study merge) are parsed, looked up and checked against the spec,
 * not run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/cmd.h"

static struct qs_bench *bench;
static struct qs_ctx ctx;

/* 1 when the command must not run under the fuzzer (see above). */
static int skipped(const struct qs_cmd_def *d, int argc, char **argv)
{
    if ((d->flags & QS_CMD_LONG) || qs_cmd_writes(d, argc, argv))
        return 1;
    for (const struct qs_arg *a = d->spec; a && a->name; a++)
        if (a->pos && a->kind == QS_ARG_PATH)
            return 1;
    return 0;
}

static int run_one(void *u, const char *stmt)
{
    (void)u;
    char **argv;
    qs_err e;
    int argc = qs_tokenize(stmt, &argv, &e);
    if (argc < 0)
        return 0;
    int used = 0, run = argc > 0;
    const struct qs_cmd_def *d = qs_cmd_lookup(&ctx, argc, argv, &used);
    if (run && d) {
        qs_err e2;
        qs_cmd_check_args(d, argc - used, argv + used, &e2); /* the spec check alone, always */
        run = !skipped(d, argc - used, argv + used);
    }
    /* bound the work a fuzzed number can ask for */
    for (int i = 0; run && i < argc; i++)
        if ((!strncmp(argv[i], "r=", 2) || !strncmp(argv[i], "k=", 2)) && atol(argv[i] + 2) > 64)
            run = 0;
    qs_argv_free(argv, argc);
    if (run && d) {
        qs_exec_line(&ctx, stmt, &e);
        if (ctx.quit)
            ctx.quit = 0;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!bench) {
        bench = qs_bench_new();
        qs_ctx_init(&ctx, bench);
        qs_err e;
        if (qs_exec_text(&ctx,
                         "load model datasets/models/moons-mlp.safetensors; "
                         "load data datasets/moons.csv",
                         &e) < 0) {
            fprintf(stderr, "fuzz_cmd: %s\n", e.msg);
            abort();
        }
        ctx.bail = 0;
    }
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    qs_split_statements(text, run_one, NULL);
    free(text);
    /* keep the journal from growing without bound across inputs */
    if (ctx.njournal > 256) {
        struct qs_bench *b = ctx.b;
        qs_ctx_free(&ctx);
        qs_ctx_init(&ctx, b);
        ctx.bail = 0;
    }
    return 0;
}
