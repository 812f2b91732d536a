/* bench_method_blocks.c - `quant * FMT method=gptq|awq` on a whole transformer: the method sites'
 * input moments taken block by block from the kept residual stream (qs_bench_methods_refresh)
 * against the site-by-site streams it replaced (qs_bench_methods_refresh_sitewise: each site's
 * calibration windows run from the embeddings to it, float and quantized: ~nsites forwards in
 * all), the same codes bit
 * for bit (test_method_blocks.c). Prints, for tests/bench/run.sh,
 *   bench methods-model-NAME-METHOD: ours X CPU s, site by site Y CPU s, ratio Y/X (target T)
 * as process CPU seconds (all threads: steadier than wall time on a shared machine), and one
 * float forward over the same calibration windows for scale. The bundled tiny GPT-2 and LLaMA
 * (8 windows of 64 tokens of the license text); with $BIG set and BIG/gpt2-small present (`make
 * bigmodels`), GPT-2-small on 1 window of 1024 tokens (set calib 1: the site-by-site reference
 * takes ~49 one-window forwards per method there). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qscope/bench.h"
#include "qscope/common.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/moments.h"
#include "qscope/tokens.h"

static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static struct qs_bench *open_lm(const char *dir, const char *tokens, int calib)
{
    qs_err e = {{0}};
    struct qs_bench *b = qs_bench_new();
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    if (!b || qs_lm_load(dir, &m, &e) < 0 || qs_bench_set_lm(b, m, dir, &e) < 0 ||
        qs_tokens_load(tokens, &t, &e) < 0 || qs_bench_set_tokens(b, t, tokens, &e) < 0) {
        fprintf(stderr, "bench_method_blocks: %s: %s\n", dir, e.msg);
        qs_bench_free(b);
        return NULL;
    }
    if (calib > 0)
        b->calib_n = calib;
    return b;
}

/* CPU seconds of the refresh of `quant * FMT OPTS` on a fresh bench, blocks or site by site. */
static double refresh_cpu(const char *dir, const char *tokens, int calib, const char *fmt,
                          const char *opts, int blocks, double *fwd)
{
    qs_err e = {{0}};
    struct qs_bench *b = open_lm(dir, tokens, calib);
    if (!b)
        return -1.0;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    char buf[128];
    snprintf(buf, sizeof buf, "%s", opts);
    int ok = qs_format_parse(fmt, &r.fmt, &e) == 0;
    qs_qopts_default(&r.opt);
    for (char *t = strtok(buf, " "); ok && t; t = strtok(NULL, " ")) {
        int k = qs_rule_method_parse_token(&r.meth, t, &e);
        ok = k > 0 || (k == 0 && qs_qopts_parse_token(&r.opt, t, &e) == 0);
    }
    int n;
    double t = -1.0;
    if (ok) {
        b->methods_busy = 1; /* the rule only: the refresh is timed below */
        ok = qs_bench_add_rule(b, &r, &n, &e) == 0;
        b->methods_busy = 0;
    }
    if (ok && fwd) { /* one float forward over the calibration windows, for scale */
        size_t off;
        int nw;
        qs_bench_lm_split(b, &off, &nw);
        float *lg = malloc((size_t)b->lm->ctx * b->lm->vocab * sizeof *lg);
        double t0 = cpu();
        for (int w = 0; ok && lg && w < nw; w++)
            ok = qs_lm_forward(b->lm, b->tokens->ids + (size_t)w * b->lm->ctx, b->lm->ctx, NULL, lg,
                               &e) == 0;
        *fwd = cpu() - t0;
        free(lg);
    }
    if (ok) {
        double t0 = cpu();
        ok = (blocks ? qs_bench_methods_refresh(b, 1, &e)
                     : qs_bench_methods_refresh_sitewise(b, 1, &e)) == 0;
        t = cpu() - t0;
    }
    if (!ok) {
        fprintf(stderr, "bench_method_blocks: %s: %s\n", dir, e.msg);
        t = -1.0;
    }
    qs_bench_free(b);
    return t;
}

/* The best of reps runs each way. */
static void one(const char *name, const char *dir, const char *tokens, int calib, const char *fmt,
                const char *opts, const char *method, double target, int reps)
{
    double fwd = 0.0, ours = 1e30, ref = 1e30;
    for (int r = 0; r < reps; r++) {
        double f = 0.0, a = refresh_cpu(dir, tokens, calib, fmt, opts, 1, &f);
        double b = refresh_cpu(dir, tokens, calib, fmt, opts, 0, NULL);
        if (a < 0 || b < 0)
            return;
        if (a < ours) {
            ours = a;
            fwd = f;
        }
        ref = b < ref ? b : ref;
    }
    printf("bench methods-model-%s-%s: ours %.2f CPU s, site by site %.2f CPU s (a float forward "
           "of the calibration windows %.2f CPU s; best of %d), ratio %.2f (target %.1f)\n",
           name, method, ours, ref, fwd, reps, ref / ours, target);
    fflush(stdout);
}

int main(void)
{
    qs_heap_tune(); /* as qscope itself runs */
    const char *text = "datasets/text/licenses.txt";
    one("tiny-gpt2", "datasets/models/tiny-gpt2", text, 0, "int4", "gran=channel method=gptq",
        "gptq", 1.5, 3);
    one("tiny-llama", "datasets/models/tiny-llama", text, 0, "int4", "gran=channel method=gptq",
        "gptq", 1.5, 3);
    const char *big = getenv("BIG");
    char dir[4096], tok[4200];
    if (big && *big) {
        snprintf(dir, sizeof dir, "%s/gpt2-small", big);
        snprintf(tok, sizeof tok, "%s-tokens.bin", dir);
        FILE *f = fopen(tok, "rb");
        if (f) {
            fclose(f);
            /* 49 sites: the reference runs ~49 one-window forwards, the block pass ~3; AWQ's
             * own grid search (~150 CPU s at 2 threads) is the same both ways */
            one("gpt2-small-calib1", dir, tok, 1, "int4", "gran=channel method=gptq", "gptq", 4, 1);
            one("gpt2-small-calib1", dir, tok, 1, "int4", "gran=group:128 method=awq", "awq", 1.5,
                1);
        }
    }
    return 0;
}
