/* bench_svd.c - top-64 singular values of a 4096 x 4096 error-like matrix: the randomized range
 * finder (qs_svd_topk, p = 10, q = 2), randomized block Krylov (qs_svd_topk_krylov) and the
 * exact LAPACK values (qs_svd_values, sgesdd), which are also the accuracy reference.
 *
 * The matrix is the weight error E = W - Q(W) of a synthetic layer quantized to int4
 * (symmetric, restricted range, one absmax scale per output row, round to nearest even):
 * W = 0.02 G (G standard Gaussian) + a rank-16 part with geometrically decaying strengths
 * + 20 input columns scaled by 8 (the outlier channels of real LLM layers). Like real RTN error
 * it is close to white (its top singular values sit at the Marchenko-Pastur edge), with a few
 * directions above it from the outlier columns: the hard case for a randomized method, where
 * the top-64 values are nearly flat.
 *
 * Prints one line per method, in the bench format:
 *   bench NAME: ours X s, lapack-exact Y s, ratio R (target: <= 0.3 s, max rel err E <= 1%)
 * X = best of 3 runs (seeds 1..3); Y = one sgesdd call; R = Y / X (> 1: ours is faster);
 * E = max_i |ours_i - exact_i| / exact_i over the 64 values, the worst of the 3 runs.
 * The OpenBLAS kernel set in use is printed too: OPENBLAS_CORETYPE=Haswell (AVX2) instead of
 * SkylakeX (AVX-512) makes the sgemm-bound time about 15 % longer on this machine's Zen 5. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qscope/common.h"
#include "qscope/linalg.h"

#define N 4096
#define K 64
#define REPS 3

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void make_error_matrix(float *e)
{
    qs_rng rng;
    qs_rng_seed(&rng, 20240611);
    float *w = e;
    for (size_t i = 0; i < (size_t)N * N; i++)
        w[i] = (float)(0.02 * qs_rng_normal(&rng));
    /* Rank-16 part u_r v_r^T with strengths 0.0025 * 0.7^r per entry scale. */
    enum { R = 16 };
    float *u = malloc(sizeof(float) * N * R), *v = malloc(sizeof(float) * N * R);
    for (int i = 0; i < N * R; i++) {
        u[i] = (float)qs_rng_normal(&rng);
        v[i] = (float)qs_rng_normal(&rng);
    }
    for (int i = 0; i < N; i++)
        for (int r = 0; r < R; r++) {
            float c = (float)(0.0025 * pow(0.7, r)) * u[i * R + r];
            float *row = w + (size_t)i * N;
            for (int j = 0; j < N; j++)
                row[j] += c * v[j * R + r];
        }
    free(u);
    free(v);
    for (int c = 0; c < 20; c++) {
        int j = (int)qs_rng_below(&rng, N);
        for (int i = 0; i < N; i++)
            w[(size_t)i * N + j] *= 8.0f;
    }
    /* int4 RTN per output row: q = clamp(rint(w / s), -7, 7), s = absmax / 7; e = w - q s. */
    for (int i = 0; i < N; i++) {
        float *row = w + (size_t)i * N, amax = 0;
        for (int j = 0; j < N; j++)
            amax = fmaxf(amax, fabsf(row[j]));
        float s = amax > 0 ? amax / 7.0f : 1.0f;
        for (int j = 0; j < N; j++) {
            float q = fminf(fmaxf(rintf(row[j] / s), -7.0f), 7.0f);
            row[j] = row[j] - q * s;
        }
    }
}

static double max_rel(const double *a, const double *ref, int k)
{
    double m = 0;
    for (int i = 0; i < k; i++)
        m = fmax(m, fabs(a[i] - ref[i]) / ref[i]);
    return m;
}

/* The largest error over all runs, not only the fastest. */
static double worst_rel(double (*runs)[K], const double *ref)
{
    double m = 0;
    for (int r = 0; r < REPS; r++)
        m = fmax(m, max_rel(runs[r], ref, K));
    return m;
}

int main(void)
{
    qs_heap_tune(); /* as qscope itself runs */
    float *e = malloc(sizeof(float) * N * N);
    double *exact = malloc(sizeof(double) * N);
    if (!e || !exact) {
        fprintf(stderr, "bench svd: out of memory\n");
        return 1;
    }
    make_error_matrix(e);
    qs_err err = {{0}};

    double t_rsvd = 1e30, t_kry = 1e30;
    static double sv_rsvd[REPS][K], sv_kry[REPS][K];
    for (int rep = 0; rep < REPS; rep++) {
        double t0 = now();
        if (qs_svd_topk(e, N, N, K, 10, 2, 1 + rep, sv_rsvd[rep], &err)) {
            fprintf(stderr, "bench svd: %s\n", err.msg);
            return 1;
        }
        double t1 = now();
        t_rsvd = fmin(t_rsvd, t1 - t0);
        t0 = now();
        if (qs_svd_topk_krylov(e, N, N, K, -1, -1, 1 + rep, sv_kry[rep], &err)) {
            fprintf(stderr, "bench svd: %s\n", err.msg);
            return 1;
        }
        t1 = now();
        t_kry = fmin(t_kry, t1 - t0);
    }
    double t0 = now();
    if (qs_svd_values(e, N, N, exact, &err)) {
        fprintf(stderr, "bench svd: %s\n", err.msg);
        return 1;
    }
    double t_exact = now() - t0;
    printf("bench svd-top64-4096: ours %.3f s, lapack-exact %.2f s, ratio %.1f "
           "(target: <= 0.3 s, max rel err %.2f%% <= 1%%) [randomized range finder p=10 q=2; "
           "OpenBLAS %s core, %d threads]\n",
           t_rsvd, t_exact, t_exact / t_rsvd, 100 * worst_rel(sv_rsvd, exact),
           openblas_get_corename(), openblas_get_num_threads());
    printf("bench svd-top64-4096-krylov: ours %.3f s, lapack-exact %.2f s, ratio %.1f "
           "(target: <= 0.3 s, max rel err %.2f%% <= 1%%) [block Krylov, defaults b=64 depth=8]\n",
           t_kry, t_exact, t_exact / t_kry, 100 * worst_rel(sv_kry, exact));
    free(e);
    free(exact);
    return 0;
}
