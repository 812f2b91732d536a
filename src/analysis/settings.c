/* settings.c - the user's settings of how much the bench holds and how much it judges on:
 * `set memory` (the budget of each weights cache — the quantized sites' decoded weights, a
 * 16-bit model's widened float weights — and the activations') and `set heldout`
 * (how many held-out windows a transformer's runs take). The setters are pure: they check,
 * set and free what the new setting no longer allows; the command prints. */
#include "qscope/bench.h"
#include "qscope/lmbench.h"

int qs_bench_set_memory(struct qs_bench *b, const size_t *weights, const size_t *acts, qs_err *e)
{
    if (acts && *acts == 0)
        return qs_errf(e, "set memory acts=0: the activation budget must hold at least one "
                          "window of a site's inputs (give a size above 0)");
    if (weights) {
        /* 0 holds only the site in use: qs_site_wq always keeps the copy asked for */
        b->wq_budget = *weights;
        qs_bench_wcache_trim(b);
        if (b->lm) { /* the widened copies of a 16-bit model's float weights: the same budget */
            b->lm->wf_budget = *weights;
            qs_lm_site_w_trim(b->lm, 0);
        }
    }
    if (acts) {
        b->act_budget = *acts;
        if (qs_resid_cache_bytes(b->resc[0]) + qs_resid_cache_bytes(b->resc[1]) >
            b->act_budget) /* kept again within it on use */
            for (int s = 0; s < 2; s++) {
                qs_resid_cache_free(b->resc[s]);
                b->resc[s] = NULL;
            }
        /* a site's rows cached under a larger budget go (streamed again on use, bit for bit) */
        if (b->lm && b->rows.site >= 0) {
            size_t in = (size_t)b->lm->sites[b->rows.site].in, held = 0;
            for (int s = 0; s < 2; s++)
                held += 2 * (size_t)b->rows.n[s] * in * sizeof(float);
            if (held > b->act_budget)
                qs_bench_caches_free(b);
        }
    }
    return 0;
}

int qs_bench_heldout_windows(const struct qs_bench *b)
{
    if (!b->lm || !b->tokens)
        return -1;
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    size_t n = b->tokens->n - off;
    return n < 1 ? 0 : (int)((n - 1) / (size_t)b->lm->ctx);
}

int qs_bench_set_heldout(struct qs_bench *b, long windows, long tokens, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "set heldout applies to transformers: their held-out split is a "
                          "run of windows; an MLP's test split is counted in rows (set split)");
    if (windows < 0 || tokens < 0)
        return qs_errf(e, "set heldout: need N >= 1 windows, tokens=N >= 1, or all");
    if (tokens > 0) /* whole windows of the model's context, rounded up */
        windows = (tokens + b->lm->ctx - 1) / b->lm->ctx;
    if (windows > (1L << 30))
        windows = 1L << 30;
    int hw = qs_bench_heldout_windows(b);
    if (hw >= 0 && windows > hw)
        return qs_errf(e,
                       "set heldout: %ld windows of %d asked for but the held-out split holds "
                       "%d (set heldout all takes every one)",
                       windows, b->lm->ctx, hw);
    if ((int)windows != b->test_windows) {
        /* the held-out caches and the analyses' sums were taken over the old windows */
        qs_bench_caches_free(b);
        b->test_windows = (int)windows;
    }
    return 0;
}
