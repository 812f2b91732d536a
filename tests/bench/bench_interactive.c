/* bench_interactive.c - the interactivity budget: switching one layer's format on the bundled
 * digits model and refreshing `error` and `rank` (all layers), incremental vs full recompute. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "qscope/analysis.h"
#include "qscope/common.h"

/* Current resident set size in bytes (from /proc/self/statm). */
static double rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * 4096.0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int set_rule(struct qs_bench *b, const char *pat, const char *fmt)
{
    qs_err e;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "%s", pat);
    if (qs_format_parse(fmt, &r.fmt, &e) < 0)
        return -1;
    qs_qopts_default(&r.opt);
    r.opt.gran = QS_GRAN_CHANNEL;
    return qs_bench_add_rule(b, &r, NULL, &e);
}

/* error + rank of every layer, as the layers table and rank pane need */
static int refresh(struct qs_bench *b)
{
    qs_err e;
    int L = b->model->nlayers;
    struct qs_layer_err *err = calloc((size_t)L, sizeof *err);
    int rc = qs_analysis_errors(b, err, &e);
    for (int i = 0; rc == 0 && i < L; i++) {
        struct qs_spectrum sp;
        rc = qs_analysis_spectrum(b, i, QS_SPEC_WEIGHT, QS_SCALE_NONE, 0, &sp, &e);
        qs_spectrum_free(&sp);
    }
    free(err);
    if (rc < 0)
        fprintf(stderr, "%s\n", e.msg);
    return rc;
}

int main(void)
{
    qs_heap_tune(); /* as qscope itself runs */
    qs_err e;
    /* baseline: the process with OpenBLAS's thread buffers already allocated */
    {
        float a[64 * 64] = {0}, c[64 * 64];
        qs_linear(a, 64, 64, a, NULL, 64, c);
    }
    double rss0 = rss_bytes();
    struct qs_bench *b = qs_bench_new();
    struct qs_mlp *m;
    struct qs_dataset *d;
    if (qs_mlp_load("datasets/models/digits-mlp.safetensors", QS_ACT_RELU, 0, &m, &e) < 0 ||
        qs_bench_set_model(b, m, "digits", &e) < 0 ||
        qs_dataset_load_csv("datasets/digits.csv", NULL, &d, &e) < 0 ||
        qs_bench_set_data(b, d, "digits.csv", &e) < 0 || set_rule(b, "*", "int4") < 0 ||
        refresh(b) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    const char *fmts[] = {"int3", "int8", "fp8-e4m3", "int2"};
    double inc = 1e30, full = 1e30;
    for (int r = 0; r < 20; r++) {
        double t0 = now();
        if (set_rule(b, "fc1", fmts[r % 4]) < 0 || refresh(b) < 0)
            return 1;
        double t = now() - t0;
        if (t < inc)
            inc = t;
        /* the same switch with every cache dropped (float activations too) */
        t0 = now();
        b->f_valid = 0;
        if (set_rule(b, "fc1", fmts[(r + 1) % 4]) < 0 || refresh(b) < 0)
            return 1;
        t = now() - t0;
        if (t < full)
            full = t;
    }
    printf("bench interactive-switch-digits: ours %.2f ms, full recompute %.2f ms, ratio %.2f "
           "(target: <= 50 ms; incremental saves %.0f%%)\n",
           inc * 1e3, full * 1e3, full / inc, 100.0 * (1.0 - inc / full));
    /* memory: what the bench holds (model weights, dequantized weights, packed codes, cached
     * float and quantized activations of both splits) against what the process grew by */
    double model = 0, cache = 0;
    for (int i = 0; i < b->model->nlayers; i++) {
        const struct qs_layer *l = &b->model->layers[i];
        model += 4.0 * ((double)l->in * l->out + l->out);
        if (qs_site_wq(b, i, NULL))
            cache += 4.0 * l->in * l->out + (double)qs_packed_bytes(&b->ls[i].packed);
        for (int s = 0; s < 2; s++)
            cache += 2 * 4.0 * b->f_acts[s].n * ((i ? l->in : 0) + l->out);
    }
    for (int s = 0; s < 2; s++)
        cache += 2 * 4.0 * b->f_acts[s].n * (b->data->d + 1);
    double data = 4.0 * b->data->n * (b->data->d + 1);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double grown = rss_bytes() - rss0, budget = 1.25 * (model + cache + data);
    printf("bench memory-digits: ours %.2f MB grown (peak RSS %.1f MB incl. %.1f MB of libraries "
           "and BLAS buffers), model+data+caches %.2f MB, ratio %.2f (target >= 1 within +25%%: "
           "budget %.2f MB)\n",
           grown / 1e6, ru.ru_maxrss / 1e3, rss0 / 1e6, (model + cache + data) / 1e6,
           budget / fmax(grown, 1.0), budget / 1e6);
    qs_bench_free(b);
    return 0;
}
