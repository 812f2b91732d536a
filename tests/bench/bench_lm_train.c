/* bench_lm_train.c - training throughput on the bundled tiny GPT-2's shape from scratch: steps of
 * BATCH windows of 64 byte tokens of the license text (AdamW, clipping, no validation), the best
 * of 3 runs of 20 steps after 3 warm-up steps, as tests/bench/torch_lm_train.py times PyTorch.
 * Prints "lmtrain tiny-gpt2 BATCH TOKENS_PER_S" for the runner. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qscope/common.h"
#include "qscope/lm.h"
#include "qscope/lm_train.h"
#include "qscope/tokens.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    qs_heap_tune(); /* as qscope itself runs */
    int batch = argc > 1 ? atoi(argv[1]) : 16;
    qs_err e;
    struct qs_tokens *tk;
    struct qs_lm *m;
    if (qs_tokens_load("datasets/text/licenses.txt", &tk, &e) < 0 ||
        qs_lm_load("datasets/models/tiny-gpt2", &m, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    size_t off = tk->n - tk->n / 10;
    struct qs_lm_train_opts o;
    qs_lm_train_defaults(&o);
    o.batch = batch;
    o.ctx = 64;
    o.steps = 3;
    struct qs_lm_train_result r;
    double best = 1e30;
    for (int k = 0; k < 4; k++) {
        double t0 = now();
        if (qs_lm_train(m, tk->ids, off, NULL, 0, &o, NULL, NULL, &r, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        double t = now() - t0;
        if (k && t < best)
            best = t;
        o.steps = 20;
        o.init = 0;
        o.seed++;
    }
    printf("lmtrain tiny-gpt2 %d %.6g\n", batch, 20.0 * batch * 64 / best);
    qs_lm_free(m);
    qs_tokens_free(tk);
    return 0;
}
