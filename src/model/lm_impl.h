/* lm_impl.h - the parts of struct qs_lm private to src/model (lm.c loads and saves them,
 * lm_grad.c differentiates through them). Not an API: nothing outside src/model includes it. */
#ifndef QSCOPE_LM_IMPL_H
#define QSCOPE_LM_IMPL_H

struct lm_layer {
    float *n1w, *n1b, *n2w, *n2b; /* pre-attention / pre-MLP norm (b: GPT-2 only) */
};

struct qs_lm_priv {
    /* (vocab, d) token embedding as F32; NULL while it stays the file's F16/BF16 bytes (wte16,
     * dtype wte16_dt, in the mapping f): a forward widens the rows it looks up, and a tied
     * head is then a 16-bit site over the same bytes (qs_lm_materialize widens both as one) */
    float *wte;
    const unsigned char *wte16;
    int wte16_dt;
    float *wpe;       /* (ctx, d) learned positions (GPT-2) */
    float *nfw, *nfb; /* final norm (b: GPT-2 only) */
    struct lm_layer *layer;
    int nmeta;
    char **meta_key, **meta_val;
    char *config; /* the config.json text the model was loaded from (qs_lm_save edits a copy) */
    /* 16-bit sites (w16): the mapped file they read, and the float-weights cache (qs_lm_site_w):
     * per site its widened copy or NULL and when it was last asked for */
    struct qs_st_file *f;
    float **wc;
    unsigned long *wc_tick, wc_now;
    size_t wc_bytes;
    long wc_widens, wc_hits;
};

/* Output rows per slice when qs_lm_site_linear widens a 16-bit weight: the bytes of one slice
 * (64 MiB; tests lower it to check that slicing keeps the bits). */
extern size_t qs_lm_linear_slice_bytes;

/* ---- forward kernels (lm.c; lm_grad.c may use them) ------------------------------------- */

#include <stdint.h>

#include "qscope/lm.h"
#include <string.h>

/* e^x in float, branch-free so loops over it vectorize (Cephes' expf polynomial after a
 * Cody-Waite reduction, within 2 ulp of expf on [-87.3, 88.3]; x below is clamped to e^-87.3
 * ~ 1.2e-38, x above to e^88.3). -ffp-contract=off (-std=c11) keeps it bit-reproducible. */
static inline float qs_lm_expf(float x)
{
    x = x < -87.33f ? -87.33f : x;
    x = x > 88.3f ? 88.3f : x;
    float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    uint32_t ti, si;
    memcpy(&ti, &t, 4);
    si = (ti - 0x4b400000u + 127u) << 23; /* 2^n */
    float sc;
    memcpy(&sc, &si, 4);
    return y * sc;
}

/* e^x in double for x <= 0 (clamped to -708), branch-free and vectorizable: Cody-Waite
 * reduction to |r| <= ln2/2 and the Taylor polynomial to r^13 (truncation < 5e-18), within
 * about 1 ulp of exp. */
static inline double qs_lm_expneg(double x)
{
    x = x < -708.0 ? -708.0 : x;
    double t = x * 1.4426950408889634074 + 6755399441055744.0; /* 1.5 * 2^52 */
    double n = t - 6755399441055744.0;
    double r = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    double y = p * r * r + r + 1.0;
    uint64_t ti, si;
    memcpy(&ti, &t, 8);
    si = (ti + 1023u) << 52; /* 2^n: the low bits of t hold n */
    double sc;
    memcpy(&sc, &si, 8);
    return y * sc;
}

/* Rows per block of the causal attention: scores are computed for a block of query rows against
 * the keys up to the block's last row, so the masked upper triangle beyond the diagonal blocks
 * is never computed. */
#define QS_LM_ATT_BLOCK 128

/* Scratch floats qs_lm_attention needs for T tokens and g = H / Hk query heads per KV head. */
size_t qs_lm_attention_scratch(int T, int H, int Hk, int hd);

/* Causal multi-head attention with H query heads over Hk key/value heads of size hd (GQA: the
 * H / Hk query heads of one KV head share its keys and values). q: (T, H hd) with row stride
 * ldq, k, v: (T, Hk hd) with strides ldk, ldv; o: (T, H hd). Query row i attends to keys
 * j in [i - window + 1, i] (window 0: [0, i]). s: qs_lm_attention_scratch floats. */
void qs_lm_attention(const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                     int T, int H, int Hk, int hd, int window, float *o, float *s);

/* One row of logits scored in one pass (stable online log-sum-exp, double accumulation):
 * rf: (V) the reference logits, y the target; rq: (V) a second set or NULL. nll_f = -log
 * softmax(rf)[y]; with rq also nll_q, kl = KL(softmax(rf) || softmax(rq)) and agree = whether
 * the first argmaxes agree (else those are 0). */
struct qs_lm_rowscore {
    double nll_f, nll_q, kl;
    int agree;
};
void qs_lm_score_row(const float *rf, const float *rq, int V, int y, struct qs_lm_rowscore *r);

/* Runs fn(ctx, i0, i1) over [0, n) split into contiguous ranges on up to the BLAS thread count
 * of threads (the calling thread takes the first); n below min_per_thread per thread runs on
 * the caller alone. fn must not depend on how the range is split. */
void qs_lm_parallel(int n, int min_per_thread, void (*fn)(void *ctx, int i0, int i1), void *ctx);

/* LayerNorm (b != NULL) or RMSNorm (b == NULL) of x: (T, d) into y, row by row (lm.c); mu, rs:
 * each row's mean and 1 / sqrt(var + eps), or NULL. */
void qs_lm_norm_rows(const float *x, int T, int d, const float *w, const float *b, double eps,
                     float *y, float *mu, float *rs);

/* What site s's hooks h make of its inputs *x (n rows) and weight w, for the forward (lm.c)
 * and the backward's recomputation (lm_grad.c) alike: h->act works on a copy in xa (*x then
 * points there), h->weight may give another weight; the weight to use is returned. */
static inline const float *qs_lm_site_hooked(const struct qs_lm_site *st, int s,
                                             const struct qs_hooks *h, const float **x, int n,
                                             float *xa, const float *w)
{
    if (h->act) {
        memcpy(xa, *x, (size_t)n * st->in * sizeof(float));
        h->act(h->u, s, xa, n, st->in);
        *x = xa;
    }
    if (h->weight) {
        const float *r = h->weight(h->u, s);
        if (r)
            w = r;
    }
    return w;
}

#endif
