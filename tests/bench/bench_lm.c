/* bench_lm.c - forward throughput of the bundled tiny GPT-2 and LLaMA over every held-out window
 * of their corpus, one 64-token window at a time; prints "lm NAME TOKENS_PER_S" for the runner,
 * which sets them against PyTorch (tests/bench/torch_lm.py). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qscope/lm.h"
#include "qscope/tokens.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void)
{
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
