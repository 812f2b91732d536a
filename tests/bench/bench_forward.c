/* bench_forward.c - forward-pass throughput of qscope's MLP against the machine's OpenBLAS SGEMM
 * peak; prints "ours" lines the runner (tests/bench/run.sh) sets against PyTorch's.
 *
 * usage: bench_forward  -> lines "forward NAME BATCH SAMPLES_PER_S GFLOPS" and "sgemm_peak GFLOPS"
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "qscope/common.h"
#include "qscope/mlp.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double best_of(int reps, void (*fn)(void *), void *arg)
{
    double best = 1e30;
    fn(arg); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        fn(arg);
        double dt = now() - t0;
        if (dt < best)
            best = dt;
    }
    return best;
}

struct fwd {
    struct qs_mlp *m;
    float *x, *out;
    int n;
};

static void run_fwd(void *p)
{
    struct fwd *f = p;
    qs_err e;
    qs_mlp_forward(f->m, f->x, f->n, f->out, &e);
}

struct gemm {
    int n;
    float *a, *b, *c;
};

static void run_gemm(void *p)
{
    struct gemm *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b,
                g->n, 0.0f, g->c, g->n);
}

static void bench_model(const char *name, struct qs_mlp *m, int n, int reps)
{
    struct fwd f = {m, malloc((size_t)n * m->layers[0].in * sizeof(float)),
                    malloc((size_t)n * m->layers[m->nlayers - 1].out * sizeof(float)), n};
    qs_rng rng;
    qs_rng_seed(&rng, 1);
    for (long j = 0; j < (long)n * m->layers[0].in; j++)
        f.x[j] = (float)qs_rng_normal(&rng);
    double t = best_of(reps, run_fwd, &f);
    double flops = 0;
    for (int i = 0; i < m->nlayers; i++)
        flops += 2.0 * n * m->layers[i].in * m->layers[i].out;
    printf("forward %s %d %.6g %.6g\n", name, n, n / t, flops / t * 1e-9);
    free(f.x);
    free(f.out);
}

int main(int argc, char **argv)
{
    qs_heap_tune(); /* as qscope itself runs */
    qs_err e;
    qs_rng rng;
    qs_rng_seed(&rng, 0);
    int sizes[] = {784, 512, 512, 10};
    struct qs_mlp *m;
    if (qs_mlp_new(sizes, 4, QS_ACT_RELU, &rng, &m, &e) < 0)
        return 1;
    bench_model("mlp-784-512-512-10", m, 8192, 5);
    qs_mlp_free(m);
    if (argc > 1) {
        struct qs_mlp *d;
        if (qs_mlp_load(argv[1], QS_ACT_RELU, 0, &d, &e) == 0) {
            bench_model("digits-mlp", d, 1797, 50);
            qs_mlp_free(d);
        } else {
            fprintf(stderr, "%s\n", e.msg);
        }
    }
    struct gemm g = {2048, NULL, NULL, NULL};
    size_t nn = (size_t)g.n * g.n;
    g.a = malloc(nn * 4);
    g.b = malloc(nn * 4);
    g.c = malloc(nn * 4);
    for (size_t j = 0; j < nn; j++)
        g.a[j] = g.b[j] = (float)(j % 7) * 0.1f;
    double t = best_of(5, run_gemm, &g);
    printf("sgemm_peak %.6g\n", 2.0 * g.n * g.n * g.n / t * 1e-9);
    free(g.a);
    free(g.b);
    free(g.c);
    return 0;
}
