/* bench_quant.c - quantize+dequantize (qs_quant_fake) of a 4096 x 4096 F32 matrix against memcpy
 * of the same 64 MiB (DESIGN.md "Targets": within 3x of memcpy, i.e. ratio memcpy/ours >= 0.33).
 * Prints one line per format:
 *   bench quant-NAME: ours X ms, memcpy Y ms, ratio R (target >= 0.33)
 * Timings are the best of 5 runs, out of place, buffers touched beforehand. The PyTorch side of
 * the comparison is tests/bench/torch_quant.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qscope/common.h"
#include "qscope/format.h"

#define N 4096
#define REPS 5

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double time_memcpy(float *dst, const float *src, size_t n)
{
    double best = 1e30;
    for (int r = 0; r < REPS; r++) {
        double t0 = now_ms();
        memcpy(dst, src, n * sizeof *src);
        double t = now_ms() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    qs_heap_tune(); /* as qscope itself runs */
    size_t n = (size_t)N * N;
    float *w = malloc(n * sizeof *w), *out = malloc(n * sizeof *out);
    if (!w || !out) {
        fprintf(stderr, "bench_quant: out of memory\n");
        return 1;
    }
    qs_rng g;
    qs_rng_seed(&g, 1);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)(0.02 * qs_rng_normal(&g));
    memset(out, 0, n * sizeof *out);
    double mc = time_memcpy(out, w, n);

    static const char *const cases[][2] = {
        {"int4", "gran=group:128"},
        {"fp8-e4m3", ""},
        {"mxfp4", ""},
    };
    int only = argc > 1; /* optional: names of the cases to run */
    int rc = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *name = cases[c][0];
        if (only) {
            int hit = 0;
            for (int i = 1; i < argc; i++)
                hit |= strcmp(argv[i], name) == 0;
            if (!hit)
                continue;
        }
        struct qs_format f;
        struct qs_qopts o;
        qs_err e;
        qs_qopts_default(&o);
        if (qs_format_parse(name, &f, &e) < 0 ||
            (cases[c][1][0] && qs_qopts_parse_token(&o, cases[c][1], &e) < 0)) {
            fprintf(stderr, "bench_quant: %s\n", e.msg);
            rc = 1;
            continue;
        }
        double best = 1e30;
        for (int r = 0; r < REPS; r++) {
            double t0 = now_ms();
            if (qs_quant_fake(&f, &o, w, N, N, out, &e) < 0) {
                fprintf(stderr, "bench_quant: %s: %s\n", name, e.msg);
                rc = 1;
                break;
            }
            double t = now_ms() - t0;
            best = t < best ? t : best;
        }
        const char *label = strcmp(name, "int4") == 0 ? "int4-g128" : name;
        printf("bench quant-%s: ours %.2f ms, memcpy %.2f ms, ratio %.2f (target >= 0.33)\n", label,
               best, mc, mc / best);
    }
    free(w);
    free(out);
    return rc;
}
