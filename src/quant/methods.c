/* methods.c - GPTQ, AWQ, SmoothQuant, randomized Hadamard rotations and imatrix-weighted scale
 * search on one linear layer (see methods.h for the contracts, man/qscope-methods.7 for the
 * definitions and citations). */
#include "qscope/methods.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/half.h"
#include "qscope/mlp.h"

/* ---- input statistics --------------------------------------------------------------------- */

#define HCHUNK 256 /* rows of x converted to double per dsyrk */

int qs_hessian_add(double *h, const float *x, int n, int cols, qs_err *e)
{
    if (n < 0 || cols < 1)
        return qs_errf(e, "hessian: bad shape (%d, %d)", n, cols);
    if (n == 0)
        return 0;
    double *xd = qs_alloc((size_t)(n < HCHUNK ? n : HCHUNK), (size_t)cols * sizeof *xd,
                          "the Hessian's input chunk", e);
    if (!xd)
        return -1;
    const size_t c = (size_t)cols;
    /* dsyrk updates only the upper triangle; the lower one (a mirror by contract) is rebuilt
     * from it at the end */
    for (int r0 = 0; r0 < n; r0 += HCHUNK) {
        int m = n - r0 < HCHUNK ? n - r0 : HCHUNK;
        for (size_t i = 0; i < (size_t)m * c; i++)
            xd[i] = x[(size_t)r0 * c + i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, m, 2.0, xd, cols, 1.0, h, cols);
    }
    free(xd);
    for (size_t i = 0; i < c; i++)
        for (size_t j = 0; j < i; j++)
            h[i * c + j] = h[j * c + i];
    return 0;
}

/* tr(D r D^T), D = q - w, with d: a (2 rows cols) double workspace. A plain dgemm on the full
 * symmetric r: OpenBLAS's dsymm ran at a fifth of its dgemm rate here (AWQ's grid search was
 * 0.2 of the BLAS limit with it, 0.7 without). */
static double local_err_ws(const float *w, const float *q, int rows, int cols, const double *r,
                           double *d)
{
    size_t n = (size_t)rows * (size_t)cols;
    double *dr = d + n;
    for (size_t i = 0; i < n; i++)
        d[i] = (double)q[i] - (double)w[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0, d, cols, r, cols,
                0.0, dr, cols);
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += d[i] * dr[i];
    return s;
}

double qs_method_local_err(const float *w, const float *q, int rows, int cols, const double *r)
{
    size_t n = (size_t)rows * (size_t)cols;
    double *d = qs_alloc(2 * n, sizeof *d, NULL, NULL);
    if (!d)
        return -1.0;
    double s = local_err_ws(w, q, rows, cols, r, d);
    free(d);
    return s;
}

/* ---- GPTQ ------------------------------------------------------------------------------- */

#define GTILE 64 /* rows per gather of a group's weights for fitting its scales */
#define GPTQ_MAX_THREADS 8
#define SUB 16 /* columns per sub-batch inside a lazy batch (default) */
#define SUB_MAX 256

void qs_gptq_opts_default(struct qs_gptq_opts *g)
{
    g->damp = 0.01;
    g->block = 128;
    g->act_order = 0;
    g->sub = 0;
    g->threads = 0;
    g->portable = 0;
}

struct didx {
    double d;
    int i;
};

static int by_diag_desc(const void *a, const void *b)
{
    const struct didx *x = a, *y = b;
    if (x->d != y->d)
        return x->d > y->d ? -1 : 1;
    return x->i - y->i; /* stable: equal diagonals keep their order */
}

/* 8 x 8 transposes for moving a lazy batch in and out of its transposed buffer (AVX2 shuffles
 * where the CPU has them). */
typedef void (*tr8_fn)(const float *restrict, size_t, float *restrict, size_t);

static void tr8_c(const float *restrict s, size_t ls, float *restrict d, size_t ld)
{
    for (size_t i = 0; i < 8; i++)
        for (size_t j = 0; j < 8; j++)
            d[j * ld + i] = s[i * ls + j];
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GPTQ_X86 1
__attribute__((target("avx2"))) static void tr8_avx2(const float *restrict s, size_t ls,
                                                     float *restrict d, size_t ld)
{
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ls), r2 = _mm256_loadu_ps(s + 2 * ls),
           r3 = _mm256_loadu_ps(s + 3 * ls), r4 = _mm256_loadu_ps(s + 4 * ls),
           r5 = _mm256_loadu_ps(s + 5 * ls), r6 = _mm256_loadu_ps(s + 6 * ls),
           r7 = _mm256_loadu_ps(s + 7 * ls);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
           t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
           t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* d = s^T: s (nr, nc) with row stride ls, d (nc, nr) with row stride ld; 8 x 8 blocks. */
static void tr_block(tr8_fn tr8, const float *restrict s, size_t ls, float *restrict d, size_t ld,
                     size_t nr, size_t nc)
{
    size_t r8 = nr / 8 * 8, c8 = nc / 8 * 8;
    for (size_t r = 0; r < r8; r += 8)
        for (size_t c = 0; c < c8; c += 8)
            tr8(s + r * ls + c, ls, d + c * ld + r, ld);
    for (size_t r = 0; r < nr; r++) /* the edges */
        for (size_t c = r < r8 ? c8 : 0; c < nc; c++)
            d[c * ld + r] = s[r * ls + c];
}

static tr8_fn pick_tr8(void)
{
#ifdef GPTQ_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        return tr8_avx2;
#endif
    return tr8_c;
}

/* Every update y -= c e is a fused multiply-add, y = fma(-c, e, y) (one rounding), applied to
 * each weight in the order of the columns that cause them: in a batch (the rank-1 and fused
 * sub-batch kernels below) and after it (the lazy update's tiles, further down, not sgemm). So
 * the loop computes exactly the column-at-a-time loop with one fmaf per update, whatever the
 * batch width, the sub-batch, the row slices the threads take and the kernel: bit-identical for
 * any `block`, `sub` and `threads`, and between the plain C kernels (fmaf is exactly rounded by
 * C99) and the AVX2+FMA ones picked at run time, so between CPUs for the same U. U itself comes
 * from LAPACK's dpotrf and dtrtri in double (OpenBLAS's kernels per CPU), rounded to float: a
 * CPU whose double roundings differ there can, rarely, move a bit of U and so of the result. */
/* y -= a x over n floats, fused. */
static void axpy_fma_c(float *restrict y, const float *restrict x, float a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = fmaf(-a, x[i], y[i]);
}

/* t[k][r] -= sum_m c[k sb + m] e[m][r] for the nk rows k of t (stride ld) and the rows r in
 * [0, len), for sb error rows e (stride ld), applied in order m = 0, 1, ..., each a fused
 * multiply-add. A block of rows r is the outer loop, so its sb error rows stay in L1 while every
 * k goes by. */
static void fused_update_c(float *restrict t, size_t nk, const float *restrict e, size_t ld,
                           const float *c, size_t sb, size_t len)
{
    enum { CH = 64 };
    for (size_t r0 = 0; r0 < len; r0 += CH) {
        size_t r1 = r0 + CH < len ? r0 + CH : len;
        for (size_t k = 0; k < nk; k++) {
            float *y = t + k * ld;
            for (size_t m = 0; m < sb; m++) {
                const float cm = -c[k * sb + m], *em = e + m * ld;
                for (size_t r = r0; r < r1; r++)
                    y[r] = fmaf(cm, em[r], y[r]);
            }
        }
    }
}

#ifdef GPTQ_X86
__attribute__((target("avx2,fma"))) static void
axpy_fma_avx2(float *restrict y, const float *restrict x, float a, size_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fnmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(-a, x[i], y[i]);
}

/* 32 rows of a row of t stay in registers while the sb updates go by. fnmadd(c, e, y) =
 * -(c e) + y with one rounding = fmaf(-c, e, y). */
__attribute__((target("avx2,fma"))) static void fused_update_avx2(float *restrict t, size_t nk,
                                                                  const float *restrict e,
                                                                  size_t ld, const float *c,
                                                                  size_t sb, size_t len)
{
    size_t r = 0;
    for (; r + 32 <= len; r += 32)
        for (size_t k = 0; k < nk; k++) {
            float *y = t + k * ld + r;
            const float *ck = c + k * sb;
            __m256 y0 = _mm256_loadu_ps(y), y1 = _mm256_loadu_ps(y + 8),
                   y2 = _mm256_loadu_ps(y + 16), y3 = _mm256_loadu_ps(y + 24);
            for (size_t m = 0; m < sb; m++) {
                const __m256 cm = _mm256_set1_ps(ck[m]);
                const float *em = e + m * ld + r;
                y0 = _mm256_fnmadd_ps(cm, _mm256_loadu_ps(em), y0);
                y1 = _mm256_fnmadd_ps(cm, _mm256_loadu_ps(em + 8), y1);
                y2 = _mm256_fnmadd_ps(cm, _mm256_loadu_ps(em + 16), y2);
                y3 = _mm256_fnmadd_ps(cm, _mm256_loadu_ps(em + 24), y3);
            }
            _mm256_storeu_ps(y, y0);
            _mm256_storeu_ps(y + 8, y1);
            _mm256_storeu_ps(y + 16, y2);
            _mm256_storeu_ps(y + 24, y3);
        }
    for (; r + 8 <= len; r += 8)
        for (size_t k = 0; k < nk; k++) {
            float *y = t + k * ld + r;
            __m256 y0 = _mm256_loadu_ps(y);
            for (size_t m = 0; m < sb; m++)
                y0 = _mm256_fnmadd_ps(_mm256_set1_ps(c[k * sb + m]),
                                      _mm256_loadu_ps(e + m * ld + r), y0);
            _mm256_storeu_ps(y, y0);
        }
    for (; r < len; r++)
        for (size_t k = 0; k < nk; k++) {
            float v = t[k * ld + r];
            for (size_t m = 0; m < sb; m++)
                v = fmaf(-c[k * sb + m], e[m * ld + r], v);
            t[k * ld + r] = v;
        }
}
#endif

/* ---- the lazy-batch update -----------------------------------------------------------------
 * W[r0:r1, i2:n] -= Err U[i1:i2, i2:n] after each batch, by our own rank-nb update rather than
 * sgemm, so that its roundings are fixed: every weight becomes y = fma(-err_k, U_kj, y) for
 * k = 0, 1, ..., nb-1 in that order (one rounding each, starting from the weight itself),
 * whatever the tile it falls in, the rows a thread takes or the CPU. Packed panels (GotoBLAS's
 * layout): the batch's U rows in column micro-panels of KNR, (nb, KNR) each; the error rows in
 * row micro-panels of KMR, (nb, KMR) each; a KMR x KNR tile of W lives in registers while k
 * runs. Packing moves values, it does not change the order of the sums. */
#define KMR 6    /* rows of a tile */
#define KNR 16   /* columns of a tile */
#define KMC 48   /* rows per packed block of the error (8 micro-panels, 24 KB at nb = 128) */
#define KNC 1024 /* columns per packed block of U (512 KB at nb = 128: L2) */

typedef void (*tile_fn)(size_t nb, const float *restrict ap, const float *restrict bp,
                        float *restrict c, size_t ldc);

/* c[i][j] = fma(-ap[k][i], bp[k][j], c[i][j]) for k = 0 .. nb-1, a KMR x KNR tile (stride ldc) */
static void tile_c(size_t nb, const float *restrict ap, const float *restrict bp, float *restrict c,
                   size_t ldc)
{
    float acc[KMR][KNR];
    for (size_t i = 0; i < KMR; i++)
        for (size_t j = 0; j < KNR; j++)
            acc[i][j] = c[i * ldc + j];
    for (size_t k = 0; k < nb; k++)
        for (size_t i = 0; i < KMR; i++) {
            const float a = -ap[k * KMR + i];
            for (size_t j = 0; j < KNR; j++)
                acc[i][j] = fmaf(a, bp[k * KNR + j], acc[i][j]);
        }
    for (size_t i = 0; i < KMR; i++)
        for (size_t j = 0; j < KNR; j++)
            c[i * ldc + j] = acc[i][j];
}

#ifdef GPTQ_X86
/* the same tile in 12 ymm accumulators: per k two loads of U's row, six broadcasts of the
 * error, twelve fnmadd(a, b, c) = -(a b) + c with one rounding = fmaf(-a, b, c) */
__attribute__((target("avx2,fma"))) static void tile_avx2(size_t nb, const float *restrict ap,
                                                          const float *restrict bp,
                                                          float *restrict c, size_t ldc)
{
    __m256 c00 = _mm256_loadu_ps(c), c01 = _mm256_loadu_ps(c + 8);
    __m256 c10 = _mm256_loadu_ps(c + ldc), c11 = _mm256_loadu_ps(c + ldc + 8);
    __m256 c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
    __m256 c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
    __m256 c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
    __m256 c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    for (size_t k = 0; k < nb; k++) {
        const float *a = ap + k * KMR;
        const __m256 b0 = _mm256_loadu_ps(bp + k * KNR), b1 = _mm256_loadu_ps(bp + k * KNR + 8);
        __m256 x = _mm256_broadcast_ss(a);
        c00 = _mm256_fnmadd_ps(x, b0, c00);
        c01 = _mm256_fnmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fnmadd_ps(x, b0, c10);
        c11 = _mm256_fnmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fnmadd_ps(x, b0, c20);
        c21 = _mm256_fnmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fnmadd_ps(x, b0, c30);
        c31 = _mm256_fnmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fnmadd_ps(x, b0, c40);
        c41 = _mm256_fnmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fnmadd_ps(x, b0, c50);
        c51 = _mm256_fnmadd_ps(x, b1, c51);
    }
    _mm256_storeu_ps(c, c00);
    _mm256_storeu_ps(c + 8, c01);
    _mm256_storeu_ps(c + ldc, c10);
    _mm256_storeu_ps(c + ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20);
    _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30);
    _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40);
    _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50);
    _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}
#endif

/* W[r0:r1, i2:n] (row stride n) -= Err U[i1:i1+nb, i2:n], Err^T being err (nb, ld): ap, bp are
 * the thread's packing buffers, nb KMC and nb KNC floats. A tile cut by the slice or the matrix
 * edge is copied out, run whole (the padding lanes are zeros and are thrown away) and copied
 * back: each element still gets its own fma sequence. */
static void lazy_update(tile_fn tile, float *restrict w, size_t n, const float *restrict err,
                        size_t ld, const float *restrict u, size_t i1, size_t nb, size_t i2,
                        size_t r0, size_t r1, float *restrict ap, float *restrict bp)
{
    for (size_t jc = i2; jc < n; jc += KNC) {
        const size_t nc = n - jc < KNC ? n - jc : KNC;
        for (size_t p = 0; p * KNR < nc; p++) {
            float *d = bp + p * nb * KNR;
            const size_t j0 = jc + p * KNR, wd = nc - p * KNR < KNR ? nc - p * KNR : KNR;
            for (size_t k = 0; k < nb; k++) {
                memcpy(d + k * KNR, u + (i1 + k) * n + j0, wd * sizeof *d);
                for (size_t j = wd; j < KNR; j++)
                    d[k * KNR + j] = 0.0f;
            }
        }
        for (size_t ic = r0; ic < r1; ic += KMC) {
            const size_t mc = r1 - ic < KMC ? r1 - ic : KMC;
            for (size_t p = 0; p * KMR < mc; p++) {
                float *d = ap + p * nb * KMR;
                const size_t i0 = ic + p * KMR, m = mc - p * KMR < KMR ? mc - p * KMR : KMR;
                for (size_t k = 0; k < nb; k++)
                    for (size_t i = 0; i < KMR; i++)
                        d[k * KMR + i] = i < m ? err[k * ld + i0 + i] : 0.0f;
            }
            /* a row micro-panel of the error stays in L1 while the tiles go along W's rows and
             * U's packed block streams from L2 */
            for (size_t ir = 0; ir < mc; ir += KMR)
                for (size_t jr = 0; jr < nc; jr += KNR) {
                    float *c = w + (ic + ir) * n + jc + jr;
                    const float *a = ap + ir / KMR * nb * KMR, *b = bp + jr / KNR * nb * KNR;
                    if (ir + KMR <= mc && jr + KNR <= nc) {
                        /* the next tile's rows of W, while this one runs (+8% in the
                         * tile's rate here) */
                        const float *cn = jr + 2 * KNR <= nc ? c + KNR : c;
                        for (size_t i = 0; i < KMR; i++) {
                            __builtin_prefetch(cn + i * n, 1);
                            __builtin_prefetch(cn + i * n + KNR - 1, 1);
                        }
                        tile(nb, a, b, c, n);
                        continue;
                    }
                    const size_t mr = mc - ir < KMR ? mc - ir : KMR,
                                 nr = nc - jr < KNR ? nc - jr : KNR;
                    float tmp[KMR * KNR] = {0};
                    for (size_t i = 0; i < mr; i++)
                        memcpy(tmp + i * KNR, c + i * n, nr * sizeof *tmp);
                    tile(nb, a, b, tmp, KNR);
                    for (size_t i = 0; i < mr; i++)
                        memcpy(c + i * n, tmp + i * KNR, nr * sizeof *tmp);
                }
        }
    }
}

typedef void (*axpy_fn)(float *restrict, const float *restrict, float, size_t);
typedef void (*fused_fn)(float *restrict, size_t, const float *restrict, size_t, const float *,
                         size_t, size_t);

static void pick_kernels(int portable, axpy_fn *ax, fused_fn *fu, tile_fn *ti)
{
    *ax = axpy_fma_c;
    *fu = fused_update_c;
    *ti = tile_c;
#ifdef GPTQ_X86
    __builtin_cpu_init();
    if (!portable && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *ax = axpy_fma_avx2;
        *fu = fused_update_avx2;
        *ti = tile_avx2;
    }
#endif
}

/* A team of threads kept for one GPTQ call: the factorization's phases and the column loop
 * run on the same threads, which wait between them at a barrier that spins before it sleeps.
 * Threads created per phase, or a barrier that sleeps at once, let the other core halt between
 * phases, and waking a halted virtual CPU costs milliseconds. */
struct team {
    pthread_mutex_t m;
    pthread_cond_t c;
    atomic_int waiting, gen;
    int n, quit;                  /* threads, the caller included */
    void (*fn)(void *ctx, int t); /* the phase being run */
    void *ctx;
    pthread_t th[GPTQ_MAX_THREADS];
    struct team *self[GPTQ_MAX_THREADS]; /* the threads' arguments: t = the slot's index */
};

static double mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Every team thread waits here: the last to arrive releases the others. A waiter spins for up
 * to 5 ms, then sleeps (a loaded machine must not spin long): the phases between two waits
 * last tens of microseconds to a millisecond, and a new thread took 1 to 4 ms to start on this
 * project's 2-core virtual machine after 0.3 s idle. */
static void team_wait(struct team *tm)
{
    const int g = atomic_load_explicit(&tm->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&tm->waiting, 1, memory_order_acq_rel) + 1 == tm->n) {
        atomic_store_explicit(&tm->waiting, 0, memory_order_relaxed);
        pthread_mutex_lock(&tm->m);
        atomic_store_explicit(&tm->gen, g + 1, memory_order_release);
        pthread_cond_broadcast(&tm->c);
        pthread_mutex_unlock(&tm->m);
        return;
    }
    double t0 = 0.0;
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(&tm->gen, memory_order_acquire) != g)
            return;
#ifdef GPTQ_X86
        _mm_pause();
#endif
        if ((i & 255) == 0) {
            double t = mono_now();
            if (i == 0)
                t0 = t;
            else if (t - t0 > 5e-3)
                break;
        }
    }
    pthread_mutex_lock(&tm->m);
    while (atomic_load_explicit(&tm->gen, memory_order_acquire) == g)
        pthread_cond_wait(&tm->c, &tm->m);
    pthread_mutex_unlock(&tm->m);
}

static void *team_main(void *arg)
{
    struct team **slot = arg, *tm = *slot;
    const int t = (int)(slot - tm->self);
    pthread_mutex_lock(&tm->m); /* held by team_start until n is final */
    pthread_mutex_unlock(&tm->m);
    for (;;) {
        team_wait(tm); /* a phase starts */
        if (tm->quit)
            return NULL;
        tm->fn(tm->ctx, t);
        team_wait(tm); /* it ended */
    }
}

/* want threads, the caller included; fewer when a thread cannot be created */
static void team_start(struct team *tm, int want)
{
    pthread_mutex_init(&tm->m, NULL);
    pthread_cond_init(&tm->c, NULL);
    atomic_init(&tm->waiting, 0);
    atomic_init(&tm->gen, 0);
    tm->quit = 0;
    tm->n = 1;
    if (want > GPTQ_MAX_THREADS)
        want = GPTQ_MAX_THREADS;
    pthread_mutex_lock(&tm->m);
    for (int i = 1; i < want; i++) {
        tm->self[tm->n] = tm;
        if (pthread_create(&tm->th[tm->n], NULL, team_main, &tm->self[tm->n]) == 0)
            tm->n++;
    }
    pthread_mutex_unlock(&tm->m);
}

/* fn(ctx, t) on every thread t of the team, the caller as t = 0; returns when all are done */
static void team_run(struct team *tm, void (*fn)(void *, int), void *ctx)
{
    tm->fn = fn;
    tm->ctx = ctx;
    if (tm->n > 1)
        team_wait(tm);
    fn(ctx, 0);
    if (tm->n > 1)
        team_wait(tm);
}

static void team_stop(struct team *tm)
{
    if (tm->n > 1) {
        tm->quit = 1;
        team_wait(tm);
        for (int i = 1; i < tm->n; i++)
            pthread_join(tm->th[i], NULL);
    }
    pthread_mutex_destroy(&tm->m);
    pthread_cond_destroy(&tm->c);
}

#define FNB 96  /* the Cholesky's panel width */
#define FINB 64 /* the inverse's block columns */

/* The factorization, shared by the team: a (n, n) column-major, its upper triangle J H J in,
 * the upper Cholesky factor V (J H J = V^T V) out; then X = V^-1, block column by block
 * column, rounded into u as U = J X^T J (row-major, upper). */
struct fjob {
    struct team *tm;
    double *a, *tmp; /* tmp: (n, FINB) column-major per thread */
    float *u;
    int n;
    atomic_int next; /* the inverse's next block column, counted from the last */
    int fail;        /* dpotrf's info for the whole matrix (> 0: not positive definite) */
};

/* Right-looking blocked Cholesky: thread 0 factors the panel's diagonal block, every thread
 * solves a share of the panel's row block (its columns split evenly), then updates a share of
 * the trailing matrix (columns split so that each thread's part of the upper triangle is even).
 * One-thread BLAS calls; every entry's operations and their order are fixed by the panel width
 * alone (the calls split columns, never a sum), checked in test_methods at 1 to 5 threads. */
static void fchol(struct fjob *j, int t)
{
    const int n = j->n, nt = j->tm->n;
    double *a = j->a;
    for (int k = 0; k < n; k += FNB) {
        const int b = n - k < FNB ? n - k : FNB, m = n - k - b;
        double *a11 = a + k + (size_t)k * n;
        if (t == 0) {
            lapack_int info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'U', b, a11, n);
            if (info != 0)
                j->fail = info > 0 ? k + (int)info : -1;
        }
        if (nt > 1)
            team_wait(j->tm);
        if (j->fail || m == 0)
            return;
        double *a12 = a11 + (size_t)b * n;
        const int c0 = (int)((long)m * t / nt), c1 = (int)((long)m * (t + 1) / nt);
        if (c1 > c0)
            cblas_dtrsm(CblasColMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, b, c1 - c0,
                        1.0, a11, n, a12 + (size_t)c0 * n, n);
        if (nt > 1)
            team_wait(j->tm);
        double *a22 = a12 + b;
        const int s0 = (int)lround(m * sqrt((double)t / nt)),
                  s1 = t + 1 == nt ? m : (int)lround(m * sqrt((double)(t + 1) / nt));
        if (s1 > s0) {
            if (s0 > 0)
                cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, s0, s1 - s0, b, -1.0, a12, n,
                            a12 + (size_t)s0 * n, n, 1.0, a22 + (size_t)s0 * n, n);
            cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, s1 - s0, b, -1.0,
                        a12 + (size_t)s0 * n, n, 1.0, a22 + s0 + (size_t)s0 * n, n);
        }
        if (nt > 1)
            team_wait(j->tm);
    }
}

/* X = V^-1's block columns [j0, j1), handed out from the last (the costliest) on:
 * V[0:j1, 0:j1] Y = [0; I] in tmp, then U[n-1-c][n-1-r] = Y[r][c - j0] for r <= c. V is only
 * read, so the block columns are independent. */
static void finv(struct fjob *j, int t)
{
    const int n = j->n, nblk = (n + FINB - 1) / FINB;
    const size_t c = (size_t)n;
    double *y = j->tmp + (size_t)t * c * FINB;
    for (;;) {
        const int bi = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (bi >= nblk)
            return;
        const int j0 = (nblk - 1 - bi) * FINB, j1 = j0 + FINB < n ? j0 + FINB : n, w = j1 - j0;
        for (int q = 0; q < w; q++) {
            memset(y + (size_t)q * j1, 0, (size_t)j1 * sizeof *y);
            y[(size_t)q * j1 + j0 + q] = 1.0;
        }
        cblas_dtrsm(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, j1, w, 1.0,
                    j->a, n, y, j1);
        for (int q = 0; q < w; q++) {
            const size_t i = c - 1 - (size_t)(j0 + q);
            float *ur = j->u + i * c;
            const double *yc = y + (size_t)q * j1;
            for (size_t jj = 0; jj < i; jj++)
                ur[jj] = 0.0f;
            for (size_t jj = i; jj < c; jj++)
                ur[jj] = (float)yc[c - 1 - jj];
        }
    }
}

static void fact_phase(void *ctx, int t)
{
    struct fjob *j = ctx;
    fchol(j, t);
    if (!j->fail)
        finv(j, t);
}

/* U (n, n) float row-major, upper: H^-1 = U^T U, from hp = J H J (n, n) double (H with its
 * rows and columns reversed, as the caller fills it), destroyed. The array read column-major
 * is the same symmetric matrix; its column-major upper Cholesky factor V is the row-major
 * lower L with J H J = L L^T, and U = J L^-1 J.
 *
 * On the team with one-thread BLAS calls, not on OpenBLAS's pool: OpenBLAS's workers, once
 * woken, spin for about 0.1 s after the call, and on a machine with as many cores as GPTQ's own
 * threads that spinning takes a core from the column loop that follows (3072 x 768, 2 threads:
 * 33 ms with OpenBLAS's two threads for dpotrf + dtrtri, 27 to 32 ms with them on one thread,
 * 22 to 24 ms here). The blocking is ours, so U's last double bits differ from LAPACK's dpotrf
 * and dtrtri (test_methods checks it against them to rounding); they do not depend on the
 * number of threads. */
static int gptq_factor(struct team *tm, double *hp, int n, float *u, qs_err *e)
{
    struct fjob j = {.tm = tm, .a = hp, .u = u, .n = n, .fail = 0};
    atomic_init(&j.next, 0);
    j.tmp = malloc((size_t)tm->n * (size_t)n * FINB * sizeof *j.tmp);
    if (!j.tmp)
        return qs_errf(e, "out of memory");
    const int bt = openblas_get_num_threads();
    openblas_set_num_threads(1);
    team_run(tm, fact_phase, &j);
    openblas_set_num_threads(bt);
    free(j.tmp);
    if (j.fail > 0)
        return qs_errf(e, "GPTQ: H is not positive definite after damping; raise damp");
    if (j.fail < 0)
        return qs_errf(e, "GPTQ: dpotrf failed on a diagonal block");
    return 0;
}

int qs_gptq_inv_chol(double *hp, int n, int threads, float *u, qs_err *e)
{
    struct team tm;
    team_start(&tm, threads);
    int rc = gptq_factor(&tm, hp, n, u, e);
    team_stop(&tm);
    return rc;
}

/* GPTQ on row chunks, all batches: rows are independent given U (shared, read-only), so a
 * thread takes a chunk of rows from the first column to the last with no barrier, then the next
 * chunk nobody has taken. The chunks are taken, not dealt: on 2 cores a third runnable thread
 * (OpenBLAS's workers spin for ~0.1 s after each BLAS call, the Cholesky's included) halves the
 * speed of whichever thread shares its core, and with a fixed half of the rows each the slowed
 * thread set the pace (GPTQ on 3072 x 768 took 25 or 40 ms from run to run, quiet machine). */
struct gqueue {
    atomic_size_t next; /* the next chunk to take */
    size_t chunk, R;    /* rows per chunk, rows */
};

struct gjob {
    struct gqueue *queue;
    struct qs_quantizer *q;
    const float *u;
    const float *w0; /* the first batch: W (dead columns zeroed), original column order */
    const int *perm; /* the processing order (NULL: the identity) */
    float *w;        /* the working weights (R, n) row-major, in processing order (= out) */
    float *t, *err, *gx, *row; /* t, err: the batch (nb, ld), transposed; gx: (GTILE, seg);
                                  row: n floats */
    float *c;                  /* a sub-batch's U entries for the later columns: B x sub */
    float *ap, *bp;            /* the lazy update's packed panels: B KMC, B KNC floats */
    axpy_fn axpy;
    fused_fn fused;
    tile_fn tile;
    tr8_fn tr8;
    struct qs_qblock *blk;
    const size_t *grp;
    size_t R, ld, n, B, seg, nblk, r0, r1, sub;
    int shared, fit_late, rc;
    qs_err e;
};

/* The end of the lazy batch that starts at i1: i1 + B, cut at a group start whose group would
 * straddle it (group scales fitted when reached), so that every group is fitted from fully
 * updated weights. */
static size_t batch_end(size_t i1, size_t n, size_t B, size_t seg, int fit_late)
{
    size_t i2 = i1 + B < n ? i1 + B : n;
    if (fit_late && seg < n)
        for (size_t gs = (i1 / seg + 1) * seg; gs < i2; gs += seg)
            if (gs + seg > i2 && i2 < n)
                return gs;
    return i2;
}

/* One lazy batch [i1, i1 + nb) on rows [r0, r1): fit the groups that start in it, quantize
 * column by column, spread each column's error over the rest of the batch. */
static int batch_run(struct gjob *b, size_t i1, size_t nb, int first, int last)
{
    const size_t ld = b->ld, n = b->n, seg = b->seg, nr = b->r1 - b->r0;
    if (first) /* the working weights of these rows: W in processing order */
        for (size_t r = b->r0; r < b->r1; r++) {
            const float *src = b->w0 + r * n;
            float *dst = b->w + r * n;
            if (b->perm) { /* src may be dst: through the row buffer */
                for (size_t k = 0; k < n; k++)
                    b->row[k] = src[b->perm[k]];
                memcpy(dst, b->row, n * sizeof *dst);
            } else if (src != dst) {
                memcpy(dst, src, n * sizeof *dst);
            }
        }
    /* the batch's columns of these rows, transposed: a column is a contiguous row of t */
    tr_block(b->tr8, b->w + b->r0 * n + i1, n, b->t + b->r0, ld, nr, nb);
    /* two levels inside the batch: rank-1 updates within sub-batches of `sub` columns, then one
     * fused update of the batch's later columns per sub-batch (a sub-batch also ends where a
     * group is fitted late, so that a group always sees fully updated weights) */
    for (size_t s0 = 0; s0 < nb;) {
        size_t s1 = s0 + b->sub < nb ? s0 + b->sub : nb;
        if (b->fit_late) {
            size_t gs = ((i1 + s0) / seg + 1) * seg - i1;
            s1 = gs < s1 ? gs : s1;
        }
        for (size_t k = s0; k < s1; k++) {
            const size_t col = i1 + k;
            float *tc = b->t + k * ld, *ec = b->err + k * ld;
            if (b->fit_late && col % seg == 0) {
                size_t len = n - col < seg ? n - col : seg;
                /* columns after the batch (only when the group starts the batch) have every
                 * update already, in the working weights */
                const size_t in = nb - k < len ? nb - k : len;
                for (size_t r0 = b->r0; r0 < b->r1; r0 += GTILE) {
                    size_t r1 = r0 + GTILE < b->r1 ? r0 + GTILE : b->r1;
                    /* gx: (GTILE, len) <- t[k:k+in, r0:r1]^T, then w[r0:r1, col+in:col+len] */
                    for (size_t m0 = 0; m0 < in; m0 += 16) {
                        size_t m1 = m0 + 16 < in ? m0 + 16 : in;
                        for (size_t r = r0; r < r1; r++)
                            for (size_t m = m0; m < m1; m++)
                                b->gx[(r - r0) * len + m] = b->t[(k + m) * ld + r];
                    }
                    if (in < len)
                        for (size_t r = r0; r < r1; r++)
                            memcpy(b->gx + (r - r0) * len + in, b->w + r * n + col + in,
                                   (len - in) * sizeof *b->gx);
                    for (size_t r = r0; r < r1; r++)
                        if (qs_quantizer_fit(b->q, b->gx + (r - r0) * len, (int)len, (int)r,
                                             (int)col, &b->blk[r * b->nblk + col / seg], &b->e) < 0)
                            return -1;
                }
            }
            const float d = b->u[col * n + col];
            if (b->shared)
                qs_quantizer_round_each(b->q, b->blk, 0, tc + b->r0, ec + b->r0, (int)nr);
            else
                qs_quantizer_round_each(b->q, b->blk + b->r0 * b->nblk + b->grp[col], b->nblk,
                                        tc + b->r0, ec + b->r0, (int)nr);
            for (size_t r = b->r0; r < b->r1; r++) { /* ec holds Q(w) until here */
                float qv = ec[r];
                ec[r] = (tc[r] - qv) / d;
                tc[r] = qv;
            }
            /* the rest of the sub-batch: t[k+1:s1] -= U[col, k+1:s1]^T err */
            for (size_t kk = k + 1; kk < s1; kk++)
                b->axpy(b->t + kk * ld + b->r0, ec + b->r0, b->u[col * n + i1 + kk], nr);
        }
        /* the batch's later columns: t[s1:nb] -= U[s0:s1, s1:nb]^T err[s0:s1], c: (nb - s1, sb) */
        const size_t sb = s1 - s0, nk = nb - s1;
        for (size_t kk = 0; kk < nk; kk++)
            for (size_t m = 0; m < sb; m++)
                b->c[kk * sb + m] = b->u[(i1 + s0 + m) * n + i1 + s1 + kk];
        if (nk)
            b->fused(b->t + s1 * ld + b->r0, nk, b->err + s0 * ld + b->r0, ld, b->c, sb, nr);
        s0 = s1;
    }
    /* the batch's quantized columns back into the working weights */
    tr_block(b->tr8, b->t + b->r0, ld, b->w + b->r0 * n + i1, n, nb, nr);
    if (last && b->perm) /* these rows are done: back to the original column order */
        for (size_t r = b->r0; r < b->r1; r++) {
            float *wr = b->w + r * n;
            for (size_t k = 0; k < n; k++)
                b->row[b->perm[k]] = wr[k];
            memcpy(wr, b->row, n * sizeof *wr);
        }
    return 0;
}

static void *gptq_rows(void *arg)
{
    struct gjob *b = arg;
    struct gqueue *qu = b->queue;
    b->rc = 0;
    for (;;) {
        const size_t c = atomic_fetch_add_explicit(&qu->next, 1, memory_order_relaxed);
        if (c >= (qu->R + qu->chunk - 1) / qu->chunk)
            return NULL;
        b->r0 = c * qu->chunk;
        b->r1 = b->r0 + qu->chunk < qu->R ? b->r0 + qu->chunk : qu->R;
        for (size_t i1 = 0; i1 < b->n;) {
            const size_t i2 = batch_end(i1, b->n, b->B, b->seg, b->fit_late);
            if (batch_run(b, i1, i2 - i1, i1 == 0, i2 == b->n) < 0) {
                b->rc = -1;
                return NULL;
            }
            /* the columns after the batch: W[r0:r1, i2:] -= Err U[i1:i2, i2:] */
            if (i2 < b->n)
                lazy_update(b->tile, b->w, b->n, b->err, b->ld, b->u, i1, i2 - i1, i2, b->r0, b->r1,
                            b->ap, b->bp);
            i1 = i2;
        }
    }
}

struct grows {
    struct gjob bt[GPTQ_MAX_THREADS];
    int nt; /* the first nt team threads take rows */
};

static void rows_phase(void *ctx, int t)
{
    struct grows *gr = ctx;
    if (t < gr->nt)
        gptq_rows(&gr->bt[t]);
}

int qs_gptq(const struct qs_format *f, const struct qs_qopts *o, const struct qs_gptq_opts *g,
            const float *w, int rows, int cols, const double *h, float *out,
            struct qs_qblock *scales, qs_err *e)
{
    struct qs_gptq_opts def;
    if (!g) {
        qs_gptq_opts_default(&def);
        g = &def;
    }
    if (!w || !h || !out)
        return qs_errf(e, "GPTQ: no data");
    if (rows < 1 || cols < 1)
        return qs_errf(e, "GPTQ: empty matrix (%d x %d)", rows, cols);
    if (!(g->damp >= 0.0 && g->damp < 1e6))
        return qs_errf(e, "GPTQ: damp must be >= 0 (got %g)", g->damp);
    if (g->block < 1)
        return qs_errf(e, "GPTQ: block must be >= 1 (got %d)", g->block);
    if (g->sub < 0 || g->sub > SUB_MAX)
        return qs_errf(e, "GPTQ: sub must be 0 (default) or 1 .. %d (got %d)", SUB_MAX, g->sub);
    if (g->threads < 0)
        return qs_errf(e, "GPTQ: threads must be >= 0 (got %d)", g->threads);
    const size_t n = (size_t)cols, R = (size_t)rows;
    size_t nn;
    if (qs_size_mul(n, n, &nn) < 0 || qs_size_mul(n, R, &nn) < 0 || qs_size_mul(n, n, &nn) < 0)
        return qs_errf(e, "GPTQ: a %d x %d layer overflows a size", rows, cols);
    int rc = -1, team_on = 0;
    struct team tm;
    struct qs_quantizer *q = NULL;
    double *hp = NULL;
    float *u = NULL, *tb = NULL, *err = NULL, *gx = NULL, *rowb = NULL, *pk = NULL;
    struct qs_qblock *blk = NULL;
    int *perm = malloc(n * sizeof *perm), *dead = calloc(n, sizeof *dead);
    size_t *grp = malloc(n * sizeof *grp); /* group of the k-th processed column */
    struct didx *dx = malloc(n * sizeof *dx);
    if (!perm || !dead || !grp || !dx) {
        qs_errf(e, "out of memory");
        goto done;
    }
    hp = qs_alloc(nn, sizeof *hp, "GPTQ's Hessian copy", e);
    u = hp ? qs_alloc(nn, sizeof *u, "GPTQ's inverse Cholesky factor", e) : NULL;
    if (!u)
        goto done;

    /* dead inputs (H_jj = 0: W[:, j] = 0, H_jj = 1) and the processing order */
    double mean = 0.0;
    for (size_t j = 0; j < n; j++) {
        double d = h[j * n + j];
        if (!isfinite(d) || d < 0.0) {
            qs_errf(e, "GPTQ: H[%zu, %zu] = %g is not a valid diagonal entry", j, j, d);
            goto done;
        }
        dead[j] = d == 0.0;
        dx[j] = (struct didx){dead[j] ? 1.0 : d, (int)j};
        mean += dx[j].d;
    }
    mean /= (double)n;
    if (g->act_order)
        qsort(dx, n, sizeof *dx, by_diag_desc);
    for (size_t k = 0; k < n; k++)
        perm[k] = dx[k].i;

    /* permuted, damped H, written reversed (J H J, for inv_chol_upper) */
    for (size_t a = 0; a < n; a++) {
        const double *hr = h + (size_t)perm[a] * n;
        double *dr = hp + (n - 1 - a) * n + (n - 1); /* dr[-b] = H[a][b] */
        for (size_t b = 0; b < n; b++)
            dr[-(ptrdiff_t)b] = hr[perm[b]];
        dr[-(ptrdiff_t)a] = (dead[perm[a]] ? 1.0 : dr[-(ptrdiff_t)a]) + g->damp * mean;
    }
    /* the quantizer sees W with the dead columns zeroed; out is free until the end, so it
     * holds that copy when there is a dead column */
    int ndead = 0;
    for (size_t j = 0; j < n; j++)
        ndead += dead[j];
    const float *w0 = w;
    if (ndead) {
        for (size_t r = 0; r < R; r++)
            for (size_t j = 0; j < n; j++)
                out[r * n + j] = dead[j] ? 0.0f : w[r * n + j];
        w0 = out;
    }
    if (qs_quantizer_new(f, o, w0, rows, cols, &q, e) < 0)
        goto done;
    /* the threads: one per CPU, up to 8; the column loop's each get at least 128 rows, the
     * factorization wants a matrix of two panels at least; the team is the larger of the two
     * (the factorization runs on the whole team: its bits do not depend on the count) */
    long ncpu = g->threads > 0 ? g->threads : sysconf(_SC_NPROCESSORS_ONLN);
    int nthr = ncpu < 1 ? 1 : ncpu > GPTQ_MAX_THREADS ? GPTQ_MAX_THREADS : (int)ncpu;
    const int nfact = n >= 2 * FNB ? nthr : 1;
    while (g->threads == 0 && nthr > 1 && R / (size_t)nthr < 128)
        nthr--;
    team_start(&tm, nthr > nfact ? nthr : nfact);
    team_on = 1;
    if (gptq_factor(&tm, hp, cols, u, e) < 0)
        goto done;

    const int shared = qs_quantizer_shared(q);
    const size_t seg = (size_t)qs_quantizer_block(q);
    const size_t nblk = shared ? 1 : (n + seg - 1) / seg;
    const size_t B = (size_t)g->block < n ? (size_t)g->block : n;
    blk = qs_alloc(R * nblk, sizeof *blk, "GPTQ's group scales", e);
    /* the error rows' stride is padded by a cache line: with R a multiple of 1024 (GPT-2's
     * 3072), the sub-batch's rows would otherwise fall into the same L1 sets */
    const size_t ld = R + 16;
    /* the error and working batches live in the Hessian copy's pages when they fit (mapped
     * already: fresh pages cost a fault each) */
    const int in_hp = B * ld <= nn;
    err = !blk    ? NULL
          : in_hp ? (float *)hp
                  : qs_alloc(B * ld, sizeof *err, "GPTQ's error batch", e);
    /* the batch's working weights, transposed (nb, ld): a column is a contiguous row, so the
     * in-batch updates are axpys; the weights themselves are worked on in out, row-major */
    tb = !err    ? NULL
         : in_hp ? err + B * ld
                 : qs_alloc(B * ld, sizeof *tb, "GPTQ's working batch", e);
    const size_t sub = g->sub > 0 ? (size_t)g->sub : SUB;
    axpy_fn axpy;
    fused_fn fused;
    tile_fn tile;
    pick_kernels(g->portable, &axpy, &fused, &tile);
    const tr8_fn tr8 = pick_tr8();
    gx = tb ? malloc((size_t)nthr * GTILE * seg * sizeof *gx) : NULL;
    const size_t per_thr = n + B * sub; /* a row buffer, then the sub-batch's U entries */
    rowb = tb ? malloc((size_t)nthr * per_thr * sizeof *rowb) : NULL;
    const size_t per_pk = B * (KMC + KNC); /* the lazy update's packed panels */
    pk = tb ? aligned_alloc(64, (size_t)nthr * per_pk * sizeof *pk) : NULL;
    if (!tb)
        goto done;
    if (!gx || !rowb || !pk) {
        qs_errf(e, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < n; k++)
        grp[k] = shared ? 0 : (size_t)perm[k] / seg;
    /* static scales are fitted up front (shared, or act order); otherwise when reached */
    const int fit_late = !shared && !g->act_order;
    if (shared) {
        if (qs_quantizer_fit(q, w0, cols, 0, 0, &blk[0], e) < 0)
            goto done;
    } else if (!fit_late) {
        for (size_t r = 0; r < R; r++)
            for (size_t b = 0; b < nblk; b++) {
                size_t c0 = b * seg, len = n - c0 < seg ? n - c0 : seg;
                if (qs_quantizer_fit(q, w0 + r * n + c0, (int)len, (int)r, (int)c0,
                                     &blk[r * nblk + b], e) < 0)
                    goto done;
            }
    }

    /* the team's threads take chunks of rows through every batch, with no barrier (the
     * OpenBLAS calls are all before, in the factorization); four chunks a thread, a whole
     * number of KMC row blocks each (one chunk: all rows, on one thread) */
    struct grows gr = {.nt = 0};
    struct gjob *bt = gr.bt;
    if (nthr > tm.n)
        nthr = tm.n;
    struct gqueue queue = {.chunk = R, .R = R};
    atomic_init(&queue.next, 0);
    if (nthr > 1) {
        size_t want = (R + 4 * (size_t)nthr - 1) / (4 * (size_t)nthr);
        queue.chunk = (want + KMC - 1) / KMC * KMC;
    }
    const size_t nchunk = (R + queue.chunk - 1) / queue.chunk;
    int nt = 0;
    for (int i = 0; i < nthr && (size_t)i < nchunk; i++, nt++)
        bt[i] = (struct gjob){.queue = &queue,
                              .q = q,
                              .u = u,
                              .w0 = w0,
                              .perm = g->act_order ? perm : NULL,
                              .w = out,
                              .t = tb,
                              .err = err,
                              .row = rowb + (size_t)i * per_thr,
                              .c = rowb + (size_t)i * per_thr + n,
                              .ap = pk + (size_t)i * per_pk,
                              .bp = pk + (size_t)i * per_pk + B * KMC,
                              .tr8 = tr8,
                              .blk = blk,
                              .grp = grp,
                              .gx = gx + (size_t)i * GTILE * seg,
                              .axpy = axpy,
                              .fused = fused,
                              .tile = tile,
                              .R = R,
                              .ld = ld,
                              .sub = sub,
                              .n = n,
                              .B = B,
                              .seg = seg,
                              .nblk = nblk,
                              .shared = shared,
                              .fit_late = fit_late,
                              .r0 = 0,
                              .r1 = 0};
    gr.nt = nt;
    team_run(&tm, rows_phase, &gr);
    int bad = -1;
    for (int i = 0; i < nt; i++) {
        if (bt[i].rc < 0 && bad < 0)
            bad = i;
    }
    if (bad >= 0) {
        if (e)
            *e = bt[bad].e;
        goto done;
    }
    if (scales)
        memcpy(scales, blk, R * nblk * sizeof *blk);
    rc = 0;
done:
    if (team_on)
        team_stop(&tm);
    qs_quantizer_free(q);
    if (!hp || (float *)hp != err) { /* else both live in hp */
        free(tb);
        free(err);
    }
    free(hp);
    free(u);
    free(rowb);
    free(pk);
    free(gx);
    free(blk);
    free(perm);
    free(dead);
    free(grp);
    free(dx);
    return rc;
}

/* ---- per-input-channel scaling ------------------------------------------------------------ */

void qs_scale_cols(float *a, int rows, int cols, const float *s, int inverse)
{
    for (size_t r = 0; r < (size_t)rows; r++) {
        float *ar = a + r * (size_t)cols;
        if (inverse)
            for (int j = 0; j < cols; j++)
                ar[j] /= s[j];
        else
            for (int j = 0; j < cols; j++)
                ar[j] *= s[j];
    }
}

int qs_awq(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows, int cols,
           const float *xmean, const double *r, int ngrid, float *s, float *qw, double *alpha,
           double *err, double *err_rtn, qs_err *e)
{
    if (!w || !xmean || !r || !s || !qw)
        return qs_errf(e, "AWQ: no data");
    if (rows < 1 || cols < 1)
        return qs_errf(e, "AWQ: empty matrix (%d x %d)", rows, cols);
    if (ngrid <= 0)
        ngrid = 20;
    for (int j = 0; j < cols; j++)
        if (!(xmean[j] >= 0.0f && isfinite(xmean[j])))
            return qs_errf(e, "AWQ: mean |x| of input %d is %g", j, (double)xmean[j]);
    size_t n = (size_t)rows * (size_t)cols;
    float *ws = qs_alloc(2 * n, sizeof *ws, "AWQ's scaled weights", e);
    float *sc = malloc((size_t)cols * sizeof *sc);
    if (!ws || !sc) {
        free(ws);
        free(sc);
        return ws ? qs_errf(e, "out of memory") : -1;
    }
    float *qt = ws + n;
    double *dws = qs_alloc(2 * n, sizeof *dws, "AWQ's error workspace", e);
    if (!dws) {
        free(ws);
        free(sc);
        return -1;
    }
    double best = INFINITY;
    int rc = 0;
    for (int k = 0; k < ngrid && rc == 0; k++) {
        double a = (double)k / ngrid;
        double smax = 0.0, smin = INFINITY;
        for (int j = 0; j < cols; j++) {
            double v = pow((double)xmean[j], a);
            v = v < 1e-4 ? 1e-4 : v;
            sc[j] = (float)v;
            smax = v > smax ? v : smax;
            smin = v < smin ? v : smin;
        }
        float norm = (float)sqrt(smax * smin);
        for (int j = 0; j < cols; j++)
            sc[j] /= norm;
        memcpy(ws, w, n * sizeof *ws);
        qs_scale_cols(ws, rows, cols, sc, 0);
        if (qs_quant_fake(f, o, ws, rows, cols, qt, e) < 0) {
            rc = -1;
            break;
        }
        memcpy(ws, qt, n * sizeof *ws); /* keep Q(W diag s) for the output */
        qs_scale_cols(qt, rows, cols, sc, 1);
        double ek = local_err_ws(w, qt, rows, cols, r, dws);
        if (k == 0 && err_rtn)
            *err_rtn = ek;
        if (ek < best) {
            best = ek;
            memcpy(s, sc, (size_t)cols * sizeof *s);
            memcpy(qw, ws, n * sizeof *qw);
            if (alpha)
                *alpha = a;
        }
    }
    if (rc == 0 && err)
        *err = best;
    free(ws);
    free(dws);
    free(sc);
    return rc;
}

int qs_smoothquant_scales(const float *xmax, const float *w, int rows, int cols, double alpha,
                          float *s, qs_err *e)
{
    if (!xmax || !w || !s)
        return qs_errf(e, "SmoothQuant: no data");
    if (!(alpha >= 0.0 && alpha <= 1.0))
        return qs_errf(e, "SmoothQuant: alpha must be in [0, 1] (got %g)", alpha);
    if (rows < 1 || cols < 1)
        return qs_errf(e, "SmoothQuant: empty matrix (%d x %d)", rows, cols);
    for (int j = 0; j < cols; j++)
        if (!(xmax[j] >= 0.0f && isfinite(xmax[j])))
            return qs_errf(e, "SmoothQuant: max |x| of input %d is %g", j, (double)xmax[j]);
    /* max |W_ij| over i, row by row (a column walk strides the whole matrix); s holds it */
    for (int j = 0; j < cols; j++)
        s[j] = 0.0f;
    for (size_t r = 0; r < (size_t)rows; r++) {
        const float *wr = w + r * (size_t)cols;
        for (int j = 0; j < cols; j++) {
            float a = fabsf(wr[j]);
            s[j] = a > s[j] ? a : s[j];
        }
    }
    for (int j = 0; j < cols; j++) {
        double wm = s[j];
        wm = wm < 1e-5 ? 1e-5 : wm;
        double xm = xmax[j];
        double v = pow(xm, alpha) / pow(wm, 1.0 - alpha);
        s[j] = (float)(v < 1e-5 ? 1e-5 : v);
    }
    return 0;
}

/* ---- rotations ----------------------------------------------------------------------------- */

#define ROT_MAX_ODD 1024
#define IM_WIDE 121 /* ratios 0.30, 0.31, .., 1.50 */
#define IM_REFITS 4

struct qs_rot {
    int n, p, m; /* n = p * m, p = 2^k, m odd */
    float *sign; /* (n) +-1 */
    float *qm;   /* (m, m) orthogonal, row-major */
};

int qs_rot_new(int n, uint64_t seed, struct qs_rot **out, qs_err *e)
{
    *out = NULL;
    if (n < 1)
        return qs_errf(e, "rotation: dimension must be >= 1 (got %d)", n);
    int p = 1, m = n;
    while (m % 2 == 0) {
        m /= 2;
        p *= 2;
    }
    if (m > ROT_MAX_ODD)
        return qs_errf(e,
                       "rotation: dimension %d = %d x %d has an odd part above %d; "
                       "a Hadamard-type rotation needs a larger power-of-two factor",
                       n, p, m, ROT_MAX_ODD);
    struct qs_rot *h = calloc(1, sizeof *h);
    if (!h)
        return qs_errf(e, "out of memory");
    h->n = n;
    h->p = p;
    h->m = m;
    h->sign = malloc((size_t)n * sizeof *h->sign);
    h->qm = malloc((size_t)m * (size_t)m * sizeof *h->qm);
    double *a = malloc((size_t)m * (size_t)m * sizeof *a);
    double *tau = malloc((size_t)m * sizeof *tau);
    if (!h->sign || !h->qm || !a || !tau) {
        free(a);
        free(tau);
        qs_rot_free(h);
        return qs_errf(e, "out of memory");
    }
    qs_rng g;
    qs_rng_seed(&g, seed);
    for (int i = 0; i < n; i++)
        h->sign[i] = (qs_rng_u64(&g) >> 63) ? -1.0f : 1.0f;
    for (size_t i = 0; i < (size_t)m * (size_t)m; i++)
        a[i] = qs_rng_normal(&g);
    int rc = 0;
    if (m > 1) {
        /* Haar-distributed Q: QR of a Gaussian, columns signed so that diag(R) > 0 */
        lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, m, m, a, m, tau);
        double *rd = malloc((size_t)m * sizeof *rd);
        if (info == 0 && rd) {
            for (int i = 0; i < m; i++)
                rd[i] = a[(size_t)i * m + i];
            info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, m, m, m, a, m, tau);
        }
        if (info != 0 || !rd)
            rc = qs_errf(e, "rotation: QR of the %d x %d mixing matrix failed", m, m);
        for (int i = 0; rc == 0 && i < m; i++)
            for (int j = 0; j < m; j++)
                h->qm[(size_t)i * m + j] =
                    (float)(rd[j] < 0 ? -a[(size_t)i * m + j] : a[(size_t)i * m + j]);
        free(rd);
    } else {
        h->qm[0] = 1.0f;
    }
    free(a);
    free(tau);
    if (rc < 0) {
        qs_rot_free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void qs_rot_free(struct qs_rot *h)
{
    if (!h)
        return;
    free(h->sign);
    free(h->qm);
    free(h);
}

int qs_rot_dim(const struct qs_rot *h)
{
    return h->n;
}

/* In-place normalised fast Walsh-Hadamard transform of v[0..p) (Sylvester order). */
static void fwht(float *v, int p)
{
    for (int len = 1; len < p; len <<= 1)
        for (int i = 0; i < p; i += len << 1)
            for (int j = i; j < i + len; j++) {
                float a = v[j], b = v[j + len];
                v[j] = a + b;
                v[j + len] = a - b;
            }
    float sc = 1.0f / sqrtf((float)p);
    for (int j = 0; j < p; j++)
        v[j] *= sc;
}

/* v (m, p) row-major <- Q v (tr = 0) or Q^T v (tr = 1); tmp: (m, p). */
static void mix(const struct qs_rot *h, float *v, float *tmp, int tr)
{
    const int m = h->m, p = h->p;
    memset(tmp, 0, (size_t)m * (size_t)p * sizeof *tmp);
    for (int a = 0; a < m; a++)
        for (int b = 0; b < m; b++) {
            float c = tr ? h->qm[(size_t)b * m + a] : h->qm[(size_t)a * m + b];
            float *ta = tmp + (size_t)a * p;
            const float *vb = v + (size_t)b * p;
            for (int t = 0; t < p; t++)
                ta[t] += c * vb[t];
        }
    memcpy(v, tmp, (size_t)m * (size_t)p * sizeof *v);
}

int qs_rot_apply(const struct qs_rot *h, float *a, int rows, int transpose, qs_err *e)
{
    const int n = h->n, p = h->p, m = h->m;
    float *tmp = NULL;
    if (m > 1) {
        tmp = malloc((size_t)n * sizeof *tmp);
        if (!tmp)
            return qs_errf(e, "out of memory");
    }
    for (size_t r = 0; r < (size_t)rows; r++) {
        float *v = a + r * (size_t)n;
        if (!transpose) {
            for (int j = 0; j < n; j++)
                v[j] *= h->sign[j];
            for (int b = 0; b < m; b++)
                fwht(v + (size_t)b * p, p);
            if (m > 1)
                mix(h, v, tmp, 0);
        } else {
            if (m > 1)
                mix(h, v, tmp, 1);
            for (int b = 0; b < m; b++)
                fwht(v + (size_t)b * p, p); /* H_p / sqrt(p) is symmetric */
            for (int j = 0; j < n; j++)
                v[j] *= h->sign[j];
        }
    }
    free(tmp);
    return 0;
}

/* ---- importance-weighted scale search ----------------------------------------------------- */

/* Weighted squared error of rounding x[0..len) with block b; q gets the values. */
static double wsse(const struct qs_quantizer *q, const struct qs_qblock *b, const float *x,
                   const float *imp, int len, float *qv)
{
    qs_quantizer_round(q, b, x, qv, len);
    double s = 0.0;
    for (int j = 0; j < len; j++) {
        double d = (double)x[j] - (double)qv[j];
        s += (imp ? (double)imp[j] : 1.0) * d * d;
    }
    return s;
}

/* b with scale v rounded to storage; 0 when the scale is not representable. */
static int set_scale(struct qs_qblock *b, double v, int f32)
{
    float s = (float)v;
    if (!f32) {
        uint16_t hb = qs_f32_to_f16(s);
        if ((hb & 0x7c00u) == 0x7c00u)
            return 0;
        s = qs_f16_to_f32(hb);
        b->scode = hb;
    } else {
        memcpy(&b->scode, &s, sizeof s);
    }
    if (!(s > 0.0f) || !(1.0f / s <= 3.4e38f))
        return 0;
    b->s = s;
    b->inv = 1.0f / s;
    return 1;
}

/* The imatrix search on rows [r0, r1) (rows are independent: threads take slices). */
struct imjob {
    const struct qs_format *f;
    const struct qs_qopts *o;
    const struct qs_quantizer *q;
    const float *w, *imp;
    float *out;
    struct qs_qblock *scales;
    int cols, r0, r1, rc;
    qs_err e;
};

static void *imatrix_rows(void *arg)
{
    struct imjob *jb = arg;
    const struct qs_quantizer *q = jb->q;
    const struct qs_qopts *o = jb->o;
    const float *w = jb->w, *imp = jb->imp;
    float *out = jb->out;
    struct qs_qblock *scales = jb->scales;
    const int cols = jb->cols;
    qs_err *e = &jb->e;
    const int seg = qs_quantizer_block(q);
    /* llama.cpp steps the inverse scale by 0.1 code units around nmax; qscope: M = 2^(B-1) - 1
     * (B the element bits) plays nmax's part for every format */
    const double M = (double)((1 << (jb->f->bits - 1)) - 1);
    jb->rc = 0;
    float *qv = malloc(2 * (size_t)seg * sizeof *qv);
    if (!qv) {
        jb->rc = qs_errf(e, "out of memory");
        return NULL;
    }
    float *qb = qv + seg;
    int rc = 0;
    for (size_t r = (size_t)jb->r0; r < (size_t)jb->r1 && rc == 0; r++)
        for (int c0 = 0; c0 < cols; c0 += seg) {
            int len = cols - c0 < seg ? cols - c0 : seg;
            const float *x = w + r * (size_t)cols + c0;
            const float *im = imp ? imp + c0 : NULL;
            float *ob = out + r * (size_t)cols + c0;
            struct qs_qblock b0, c, cb;
            if (qs_quantizer_fit(q, x, len, (int)r, c0, &b0, e) < 0) {
                rc = -1;
                break;
            }
            double be = wsse(q, &b0, x, im, len, ob);
            struct qs_qblock *best =
                scales ? &scales[r * (size_t)((cols + seg - 1) / seg) + (size_t)(c0 / seg)] : NULL;
            if (best)
                *best = b0;
            if (b0.s == 0.0f)
                continue; /* a zero block */
            /* llama.cpp's 19 candidates, then a wide scan of ratios 0.3 .. 1.5 of s0 */
            for (int k = -9; k <= 9 + IM_WIDE; k++) {
                double ratio = k <= 9 ? M / (M + 0.1 * k) : 0.3 + 0.01 * (k - 10);
                cb = b0;
                if (k == 0 || !set_scale(&cb, (double)b0.s * ratio, o->scale_f32))
                    continue; /* k = 0 is the plain scale, already judged */
                c = cb;
                /* alternate rounding at the scale and the weighted least-squares scale of the
                 * codes l = q / s (sum imp x l / sum imp l^2): neither step can raise the
                 * weighted error */
                for (int it = 0; it < IM_REFITS; it++) {
                    double ce = wsse(q, &c, x, im, len, qb);
                    if (ce < be) {
                        be = ce;
                        memcpy(ob, qb, (size_t)len * sizeof *ob);
                        if (best)
                            *best = c;
                    }
                    double sxl = 0.0, sll = 0.0;
                    for (int j = 0; j < len; j++) {
                        double l = (double)qb[j] / c.s, wj = im ? im[j] : 1.0;
                        sxl += wj * x[j] * l;
                        sll += wj * l * l;
                    }
                    struct qs_qblock nx = c;
                    if (!(sll > 0.0 && sxl > 0.0) || !set_scale(&nx, sxl / sll, o->scale_f32) ||
                        nx.s == c.s)
                        break;
                    c = nx;
                }
            }
        }
    free(qv);
    jb->rc = rc;
    return NULL;
}

int qs_imatrix_quant(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                     int cols, const float *imp, float *out, qs_err *e)
{
    return qs_imatrix_quant_ex(f, o, w, rows, cols, imp, out, NULL, e);
}

int qs_imatrix_quant_ex(const struct qs_format *f, const struct qs_qopts *o, const float *w,
                        int rows, int cols, const float *imp, float *out, struct qs_qblock *scales,
                        qs_err *e)
{
    if (!f || !o || !w || !out)
        return qs_errf(e, "imatrix: no data");
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE || t->unscaled)
        return qs_errf(e, "%s: a plain cast has no scale; an imatrix scale search does not apply",
                       f->name);
    if (!t->free_scale)
        return qs_errf(e,
                       "%s: block scales are powers of two / E4M3 codes or llama.cpp's own; an "
                       "imatrix scale search needs free scales",
                       f->name);
    if (t->asym && o->asym)
        return qs_errf(e, "%s: imatrix scale search is symmetric; asym is not supported", f->name);
    if (o->gran == QS_GRAN_TENSOR || o->scale_none)
        return qs_errf(e,
                       "%s: imatrix scale search works per channel or group (gran=channel "
                       "or gran=group:N)",
                       f->name);
    if (imp)
        for (int j = 0; j < cols; j++)
            if (!(imp[j] >= 0.0f && isfinite(imp[j])))
                return qs_errf(e, "imatrix: importance of input %d is %g", j, (double)imp[j]);
    struct qs_quantizer *q = NULL;
    if (qs_quantizer_new(f, o, w, rows, cols, &q, e) < 0)
        return -1;
    /* threads over row slices, one per CPU up to 8, each with at least 64 rows */
    enum { IM_MAX_THREADS = 8 };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = ncpu < 1 ? 1 : ncpu > IM_MAX_THREADS ? IM_MAX_THREADS : (int)ncpu;
    while (nt > 1 && rows / nt < 64)
        nt--;
    struct imjob jb[IM_MAX_THREADS];
    pthread_t th[IM_MAX_THREADS];
    int started[IM_MAX_THREADS] = {0};
    for (int i = 0; i < nt; i++)
        jb[i] = (struct imjob){.f = f,
                               .o = o,
                               .q = q,
                               .w = w,
                               .imp = imp,
                               .out = out,
                               .scales = scales,
                               .cols = cols,
                               .r0 = (int)((long)rows * i / nt),
                               .r1 = (int)((long)rows * (i + 1) / nt)};
    for (int i = 1; i < nt; i++)
        started[i] = pthread_create(&th[i], NULL, imatrix_rows, &jb[i]) == 0;
    for (int i = 1; i < nt; i++)
        if (!started[i])
            imatrix_rows(&jb[i]);
    imatrix_rows(&jb[0]);
    int rc = 0;
    for (int i = 0; i < nt; i++) {
        if (i > 0 && started[i])
            pthread_join(th[i], NULL);
        if (jb[i].rc < 0 && rc == 0) {
            rc = -1;
            if (e)
                *e = jb[i].e;
        }
    }
    qs_quantizer_free(q);
    return rc;
}

/* ---- one layer, one model --------------------------------------------------------------- */

void qs_method_opts_default(struct qs_method_opts *mo)
{
    memset(mo, 0, sizeof *mo);
    mo->method = QS_METHOD_RTN;
    qs_gptq_opts_default(&mo->gptq);
}

const char *qs_method_name(enum qs_method m)
{
    static const char *const names[] = {[QS_METHOD_RTN] = "rtn",
                                        [QS_METHOD_GPTQ] = "gptq",
                                        [QS_METHOD_AWQ] = "awq",
                                        [QS_METHOD_IMATRIX] = "imatrix"};
    return (unsigned)m < sizeof names / sizeof names[0] ? names[m] : "?";
}

int qs_method_layer(const struct qs_format *f, const struct qs_qopts *o,
                    const struct qs_method_opts *mo, const float *w, int rows, int cols,
                    const float *x, int n, float *out, qs_err *e)
{
    if (!w || !out || (!x && n > 0))
        return qs_errf(e, "method: no data");
    if (rows < 1 || cols < 1 || n < 0)
        return qs_errf(e, "method: bad shape (%d x %d, %d inputs)", rows, cols, n);
    if (mo->method != QS_METHOD_RTN && n < 1)
        return qs_errf(e, "%s needs calibration inputs", qs_method_name(mo->method));
    size_t wn = (size_t)rows * (size_t)cols, xn = (size_t)n * (size_t)cols, cc;
    if (qs_size_mul((size_t)cols, (size_t)cols, &cc) < 0)
        return qs_errf(e, "method: %d inputs overflow a size", cols);
    int rc = -1;
    struct qs_rot *rot = NULL;
    float *wr = NULL, *xr = NULL, *v = NULL, *s = NULL;
    double *h = NULL;
    const float *W = w, *X = x;
    if (mo->rotate) {
        if (qs_rot_new(cols, mo->rot_seed, &rot, e) < 0)
            return -1;
        wr = qs_alloc(wn, sizeof *wr, "the rotated weights", e);
        xr = wr && n > 0 ? qs_alloc(xn, sizeof *xr, "the rotated inputs", e) : NULL;
        if (!wr || (n > 0 && !xr))
            goto done;
        memcpy(wr, w, wn * sizeof *wr);
        if (qs_rot_apply(rot, wr, rows, 0, e) < 0)
            goto done;
        if (n > 0) {
            memcpy(xr, x, xn * sizeof *xr);
            if (qs_rot_apply(rot, xr, n, 0, e) < 0)
                goto done;
        }
        W = wr;
        X = xr;
    }
    switch (mo->method) {
    case QS_METHOD_RTN:
        if (qs_quant_fake(f, o, W, rows, cols, out, e) < 0)
            goto done;
        break;
    case QS_METHOD_GPTQ:
        if (!(h = qs_alloc(cc, sizeof *h, "the layer's Hessian", e)) ||
            qs_hessian_add(h, X, n, cols, e) < 0 ||
            qs_gptq(f, o, &mo->gptq, W, rows, cols, h, out, NULL, e) < 0)
            goto done;
        break;
    case QS_METHOD_AWQ: {
        if (!(h = qs_alloc(cc, sizeof *h, "the inputs' Gram matrix", e)))
            goto done;
        if (!(v = calloc((size_t)cols, sizeof *v)) || !(s = malloc((size_t)cols * sizeof *s))) {
            qs_errf(e, "out of memory");
            goto done;
        }
        if (qs_hessian_add(h, X, n, cols, e) < 0)
            goto done;
        for (size_t i = 0; i < cc; i++)
            h[i] *= 0.5;
        double *acc = calloc((size_t)cols, sizeof *acc);
        if (!acc) {
            qs_errf(e, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < (size_t)n; i++)
            for (size_t j = 0; j < (size_t)cols; j++)
                acc[j] += fabs((double)X[i * (size_t)cols + j]);
        for (int j = 0; j < cols; j++)
            v[j] = (float)(acc[j] / n);
        free(acc);
        if (qs_awq(f, o, W, rows, cols, v, h, mo->awq_grid, s, out, NULL, NULL, NULL, e) < 0)
            goto done;
        qs_scale_cols(out, rows, cols, s, 1);
        break;
    }
    case QS_METHOD_IMATRIX: {
        double *acc = calloc((size_t)cols, sizeof *acc);
        v = malloc((size_t)cols * sizeof *v);
        if (!acc || !v) {
            free(acc);
            qs_errf(e, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < (size_t)n; i++)
            for (size_t j = 0; j < (size_t)cols; j++) {
                double a = X[i * (size_t)cols + j];
                acc[j] += a * a;
            }
        for (int j = 0; j < cols; j++)
            v[j] = (float)(acc[j] / n);
        free(acc);
        if (qs_imatrix_quant(f, o, W, rows, cols, v, out, e) < 0)
            goto done;
        break;
    }
    default:
        qs_errf(e, "unknown method %d", (int)mo->method);
        goto done;
    }
    if (rot && qs_rot_apply(rot, out, rows, 1, e) < 0) /* back to the original basis */
        goto done;
    rc = 0;
done:
    qs_rot_free(rot);
    free(wr);
    free(xr);
    free(v);
    free(s);
    free(h);
    return rc;
}

int qs_mlp_quant_method(struct qs_mlp *m, const float *x, int n, const struct qs_format *f,
                        const struct qs_qopts *o, const struct qs_method_opts *mo, int inputs_float,
                        qs_err *e)
{
    if (!m || !x || n < 1)
        return qs_errf(e, "method: no model or no calibration inputs");
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i].w_mapped)
            return qs_errf(e,
                           "layer %s: weights are mapped from the file; quantize a copy "
                           "(qs_mlp_clone)",
                           m->layers[i].name);
    /* two activation buffers of the widest layer; the float path keeps its own */
    int width = qs_mlp_max_width(m);
    size_t an;
    if (width < m->layers[0].in)
        width = m->layers[0].in;
    if (qs_size_mul((size_t)n, (size_t)width, &an) < 0)
        return qs_errf(e, "method: %d inputs overflow a size", n);
    float *a = qs_alloc(2 * an, sizeof *a, "the calibration activations", e);
    if (!a)
        return -1;
    float *cur = a, *nxt = a + an, *q = NULL;
    memcpy(cur, x, (size_t)n * (size_t)m->layers[0].in * sizeof *cur);
    int rc = 0;
    for (int i = 0; i < m->nlayers && rc == 0; i++) {
        struct qs_layer *L = &m->layers[i];
        size_t wn = (size_t)L->out * (size_t)L->in;
        free(q);
        if (!(q = qs_alloc(wn, sizeof *q, "the quantized weights", e))) {
            rc = -1;
            break;
        }
        struct qs_method_opts lo = *mo;
        lo.rot_seed = mo->rot_seed + (uint64_t)i;
        if (qs_method_layer(f, o, &lo, L->w, L->out, L->in, cur, n, q, e) < 0) {
            qs_err_prefix(e, L->name);
            rc = -1;
            break;
        }
        /* the next layer's inputs: through the float weights (inputs_float) or the quantized */
        if (i + 1 < m->nlayers) {
            qs_linear(cur, n, L->in, inputs_float ? L->w : q, L->b, L->out, nxt);
            qs_act_apply(L->act, nxt, (size_t)n * (size_t)L->out);
            float *t = cur;
            cur = nxt;
            nxt = t;
        }
        memcpy(L->w, q, wn * sizeof *q);
    }
    free(q);
    free(a);
    return rc;
}
