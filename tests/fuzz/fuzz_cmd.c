/* fuzz_cmd.c - the command language under fuzzing: tokenizer, statement splitter, table lookup
 * and every handler's argument parsing, on a bench holding the bundled moons model (small, so a
 * fuzzed `error`, `rank` or `correct` is cheap). Statements that would touch files or run long
 * (load, save, export, source, recover, train, study, qat, allocate, sensitivity) are skipped:
 * they are parsed and looked up, not run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/cmd.h"

static struct qs_bench *bench;
static struct qs_ctx ctx;

static const char *const skip[] = {"load",   "save", "export", "source",   "recover", "train",
                                   "study",  "qat",  "allocate", "sensitivity", NULL};

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
    for (int k = 0; run && skip[k]; k++)
        if (!strcmp(argv[0], skip[k]))
            run = 0;
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
        if (qs_exec_text(&ctx, "load model datasets/models/moons-mlp.safetensors; "
                               "load data datasets/moons.csv", &e) < 0) {
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
