/* bench_memory.c - the memory target on a model large enough for it to mean something: a
 * 784-2048-2048-10 MLP (5.8 M parameters, 23 MB in F32) written to a safetensors file and loaded
 * (mapped), 2,000 samples of data, every layer at int4, error statistics and the quantized path
 * cached. Peak RSS growth is set against the model's F32 size plus what the bench caches
 * (dequantized and packed weights, float and quantized activations of both splits, the data). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/common.h"

static double rss_now(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

int main(void)
{
    qs_heap_tune(); /* as qscope itself runs */
    qs_err e;
    char path[] = "/tmp/qscope-bench-memory-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    close(fd);
    { /* the model file, written by a scope that frees everything it used */
        qs_rng rng;
        qs_rng_seed(&rng, 1);
        int sizes[] = {784, 2048, 2048, 10};
        struct qs_mlp *m;
        if (qs_mlp_new(sizes, 4, QS_ACT_RELU, &rng, &m, &e) < 0 || qs_mlp_save(m, path, &e) < 0) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        qs_mlp_free(m);
    }
    { /* OpenBLAS's thread buffers belong to the baseline */
        float a[64 * 64] = {0}, c[64 * 64];
        qs_linear(a, 64, 64, a, NULL, 64, c);
    }
    double rss0 = rss_now();
    struct qs_bench *b = qs_bench_new();
    struct qs_mlp *m;
    if (qs_mlp_load(path, QS_ACT_RELU, 0, &m, &e) < 0 || qs_bench_set_model(b, m, path, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    struct qs_dataset *d = qs_calloc(1, sizeof *d);
    d->n = 2000;
    d->d = 784;
    d->nclass = 10;
    d->x = malloc((size_t)d->n * d->d * sizeof(float));
    d->y = malloc((size_t)d->n * sizeof(int));
    qs_rng rng;
    qs_rng_seed(&rng, 2);
    for (size_t j = 0; j < (size_t)d->n * d->d; j++)
        d->x[j] = (float)qs_rng_uniform(&rng);
    for (int r = 0; r < d->n; r++)
        d->y[r] = r % 10;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    qs_format_parse("int4", &r.fmt, &e);
    qs_qopts_default(&r.opt);
    r.opt.gran = QS_GRAN_CHANNEL;
    struct qs_layer_err err[3];
    if (qs_bench_set_data(b, d, "synthetic", &e) < 0 || qs_bench_add_rule(b, &r, NULL, &e) < 0 ||
        qs_analysis_errors(b, err, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    double model = 0, cache = 4.0 * d->n * (d->d + 1);
    for (int i = 0; i < b->model->nlayers; i++) {
        const struct qs_layer *l = &b->model->layers[i];
        model += 4.0 * ((double)l->in * l->out + l->out);
        cache += 4.0 * l->in * l->out + (double)qs_packed_bytes(&b->ls[i].packed);
        for (int s = 0; s < 2; s++) /* in[i] (i > 0) and pre[i], float and quantized paths */
            cache += 2 * 4.0 * b->f_acts[s].n * ((i ? l->in : d->d) + l->out);
    }
    double grown = rss_now() - rss0, need = model + cache;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench memory-784-2048-2048-10: ours %.1f MB grown (peak RSS %.1f MB), model F32 %.1f "
           "MB + caches %.1f MB = %.1f MB, ratio %.2f (target >= 1: within +25%% = %.1f MB)\n",
           grown / 1e6, ru.ru_maxrss / 1e3, model / 1e6, cache / 1e6, need / 1e6,
           1.25 * need / grown, 1.25 * need / 1e6);
    qs_bench_free(b);
    unlink(path);
    return 0;
}
