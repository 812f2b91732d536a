/* moments.h - second moments of a site's inputs, accumulated row block by row block in double,
 * so that an analysis holds O(in^2) numbers instead of O(tokens x in) activations.
 *
 * What they serve: L2QER's activation scales (mean |x_j|), QERA's and EoRA's autocorrelation
 * R = X^T X / n, GPTQ's Hessian H = 2 X^T X (later). Rows are gathered into blocks of
 * QS_MOMENTS_CHUNK (whatever the caller's batches: a window of a transformer, a whole MLP cache)
 * and each full block is added by one dsyrk; the last, partial block is added at qs_moments_finish.
 * So the sums depend on the rows and their order only, not on how they were handed in nor on
 * the BLAS thread count (dsyrk splits the output, not the sum over rows). */
#ifndef QSCOPE_MOMENTS_H
#define QSCOPE_MOMENTS_H

#include "qscope/common.h"

#define QS_MOMENTS_CHUNK 256

struct qs_moments {
    int in;
    long n;        /* rows added */
    double *xtx;   /* (in, in) row-major: sum over rows of x^T x; symmetric after finish */
    double *absum; /* (in): sum over rows of |x_j| */
    double *buf;   /* private: the block being filled, (QS_MOMENTS_CHUNK, in) */
    int fill;      /* private: rows in buf */
};

/* Allocates the sums for inputs of width in (zeroed). -1 with e when out of memory. */
int qs_moments_init(struct qs_moments *m, int in, qs_err *e);
/* Adds rows x: (n, in) row-major. */
void qs_moments_add(struct qs_moments *m, const float *x, int n);
/* Adds the last partial block and fills xtx's lower triangle; idempotent. */
void qs_moments_finish(struct qs_moments *m);
/* Frees the sums (m may be zeroed or NULL). */
void qs_moments_free(struct qs_moments *m);
/* After finish: r = X^T X / n as F32 (in, in); s = mean |x_j| as F32 (in). n = 0: zeros. */
void qs_moments_gram(const struct qs_moments *m, float *r);
void qs_moments_absmean(const struct qs_moments *m, float *s);
/* Moments of rows x: (n, in) in one call (init, add, finish). */
int qs_moments_of_rows(struct qs_moments *m, const float *x, int n, int in, qs_err *e);
/* Bytes a finished moments struct holds (X^T X and sum |x| in double; the block buffer is freed
 * once a cache entry is finished). */
size_t qs_moments_bytes(int in);

/* ---- the bench's cache of site input moments ----------------------------------------------
 *
 * Two analyses of one site (`correct S lqer`, then `correct S qera`, `spectrum S scale=cov`)
 * need the same X^T X: the bench keeps the moments it computed, keyed by (site, split, path).
 * What else determines them is the model and the data with its calibration budget (a change of
 * either drops every entry: qs_bench_caches_free) and, on the quantized path (quant 1), every
 * site upstream of the site: a change at site i (qs_bench_invalidate) drops the quantized-path
 * entries of the sites after i. The float path's entries survive format changes. Entries are
 * evicted least recently used beyond the budget (QS_MOMENTS_BUDGET by default: GPT-2-small's
 * 3072-wide R alone is 72 MiB in double, so three of those and the 768-wide ones fit); an entry
 * that alone exceeds the budget is kept only until the next one is computed. A bench whose
 * site_out hook is set (study q2) neither reads nor fills the cache: its moments are computed
 * afresh each time and held until the next call. */
#define QS_MOMENTS_BUDGET ((size_t)256 << 20)

struct qs_moments_entry {
    int site, split, quant;
    unsigned long used; /* the cache's tick at its last use (LRU) */
    struct qs_moments m;
};

struct qs_moments_cache {
    size_t budget; /* bytes the entries may hold */
    size_t bytes;  /* bytes they hold */
    int n, cap;
    struct qs_moments_entry *ent;
    unsigned long tick;
    unsigned long computed; /* moments computed (streamed or read from the rows) */
    unsigned long hits;     /* requests answered from the cache */
    struct qs_moments tmp;  /* uncached moments (site_out set), held until the next call */
};

struct qs_bench;
/* The cached moments of site `site` on split s along a path (as qs_bench_site_moments computes
 * them, bit for bit), computed on a miss: *m is owned by the cache and valid until the next call
 * of this function or a change of the bench (the caller does not free it). */
int qs_bench_site_moments_cached(struct qs_bench *b, int site, int s, int quant,
                                 const struct qs_moments **m, qs_err *e);
/* qs_bench_methods_refresh (bench.h) as it was before transformers' method sites took their
 * moments block by block (sitemethod.c): each method site's moments streamed on their own from
 * the embeddings (qs_bench_site_moments: a float and a quantized pass up to the site), ~nsites
 * forwards over the calibration windows in all.
 * The reference the block pass is checked against, bit for bit (test_method_blocks.c). */
int qs_bench_methods_refresh_sitewise(struct qs_bench *b, int strict, qs_err *e);
/* Drops the quantized-path entries of the sites after site i (site i's quantized inputs depend
 * on the sites before it only). */
void qs_moments_cache_invalidate(struct qs_moments_cache *c, int i);
/* Frees the cache (NULL is fine). */
void qs_moments_cache_free(struct qs_moments_cache *c);
/* Bytes the cached moments hold (0 for NULL). */
size_t qs_moments_cache_bytes(const struct qs_moments_cache *c);

#endif
