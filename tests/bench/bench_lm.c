/* bench_lm.c - forward throughput of the bundled tiny GPT-2 and LLaMA over every held-out window
 * of their corpus, one 64-token window at a time; prints "lm NAME TOKENS_PER_S" for the runner,
 * which sets them against PyTorch (tests/bench/torch_lm.py).
 * bench_lm DIR [CTX]: one window of CTX (default the model's context) tokens of DIR-tokens.bin
 * through DIR's model (the real-size folders of `make bigmodels`, for bench_big.sh), best of 3
 * after a warm-up: prints "lmbig forward SECONDS" (qs_lm_forward) and "lmbig score SECONDS"
 * (qs_lm_score_window of the float and a second logits set: loss, KL, top-1), and "lmbig cpu
 * SECONDS", the process CPU time of the fastest forward (all threads: at one thread it hardly
 * moves with the machine's load, so bench_big.sh compares it with PyTorch's on a shared machine).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qscope/common.h"
#include "qscope/lm.h"
#include "qscope/tokens.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int big(const char *dir, int ctx)
{
    qs_err e;
    struct qs_lm *m;
    struct qs_tokens *tk;
    char path[4096];
    snprintf(path, sizeof path, "%s-tokens.bin", dir);
    if (qs_lm_load(dir, &m, &e) < 0 || qs_tokens_load(path, &tk, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    int T = ctx > 0 && ctx < m->ctx ? ctx : m->ctx;
    if (tk->n < (size_t)T + 1) {
        fprintf(stderr, "%s: too few tokens\n", path);
        return 1;
    }
    float *lf = malloc((size_t)T * m->vocab * sizeof(float));
    float *lq = malloc((size_t)T * m->vocab * sizeof(float));
    double bf = 1e30, bs = 1e30, bc = 1e30;
    for (int r = 0; r < 4; r++) {
        double t0 = now(), c0 = cpu();
        if (qs_lm_forward(m, tk->ids, T, NULL, lf, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        double t = now() - t0, c = cpu() - c0;
        if (r && t < bf)
            bf = t;
        if (r && c < bc)
            bc = c;
    }
    for (size_t i = 0; i < (size_t)T * m->vocab; i++)
        lq[i] = lf[i] * 0.9f;
    for (int r = 0; r < 3; r++) {
        struct qs_lm_score acc = {0};
        double t0 = now();
        qs_lm_score_window(m, tk->ids, T, lf, lq, &acc, &e);
        double t = now() - t0;
        if (t < bs)
            bs = t;
    }
    printf("lmbig tokens %d\nlmbig forward %.4f\nlmbig score %.4f\nlmbig cpu %.4f\n", T, bf, bs,
           bc);
    free(lf);
    free(lq);
    qs_tokens_free(tk);
    qs_lm_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    qs_heap_tune(); /* as qscope itself runs */
    if (argc > 1)
        return big(argv[1], argc > 2 ? atoi(argv[2]) : 0);
    qs_err e;
    struct qs_tokens *tk;
    if (qs_tokens_load("datasets/text/licenses.txt", &tk, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    const char *names[] = {"tiny-gpt2", "tiny-llama"};
    for (int k = 0; k < 2; k++) {
        char dir[128];
        snprintf(dir, sizeof dir, "datasets/models/%s", names[k]);
        struct qs_lm *m;
        if (qs_lm_load(dir, &m, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        size_t off = tk->n - tk->n / 10;
        int nw = (int)((tk->n - off - 1) / (size_t)m->ctx);
        float *logits = malloc((size_t)m->ctx * m->vocab * sizeof(float));
        double best = 1e30;
        for (int r = 0; r < 4; r++) {
            double t0 = now();
            for (int w = 0; w < nw; w++)
                qs_lm_forward(m, tk->ids + off + (size_t)w * m->ctx, m->ctx, NULL, logits, &e);
            double t = now() - t0;
            if (r && t < best) /* the first run warms up */
                best = t;
        }
        printf("lm %s %.6g\n", names[k], (double)nw * m->ctx / best);
        free(logits);
        qs_lm_free(m);
    }
    qs_tokens_free(tk);
    return 0;
}
