/* wcache.c - the quantized weights of the sites: kept as their packed codes and decoded on use
 * into a bounded LRU cache (qs_site_wq), so that a quantized model holds no second F32 copy of
 * every weight. */
#include "qscope/bench.h"
#include "qscope/lm_gguf.h"
#include "qscope/lmbench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"
#include "qscope/safetensors.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- quantized weights: codes kept, decoded on use ------------------------------------------
 *
 * A site keeps only its codes (packed); qs_site_wq decodes them into a cache of whole sites
 * bounded by wq_budget, least recently used out. A copy is that of (site, generation): every
 * change of a site's codes goes through qs_site_set_packed, which gives it a new generation
 * (unique in the process, so a stage's sites cannot meet another bench's copies) and frees the
 * old copy, so that a copy is never stale. */

struct wc_ent {
    int site, pinned;
    unsigned long gen, used;
    size_t bytes;
    float *w;
};

struct qs_wcache {
    int n, cap;
    size_t bytes;
    unsigned long tick;
    long decodes, hits;
    struct wc_ent *ent;
};

static _Atomic unsigned long wq_generation;

static void wc_drop(struct qs_wcache *c, int k)
{
    c->bytes -= c->ent[k].bytes;
    free(c->ent[k].w);
    c->ent[k] = c->ent[--c->n];
}

void qs_bench_wcache_clear(struct qs_bench *b)
{
    if (!b->wcache)
        return;
    while (b->wcache->n)
        wc_drop(b->wcache, 0);
    free(b->wcache->ent);
    free(b->wcache);
    b->wcache = NULL;
}

/* Evicts the least recently used unpinned copies until `need` more bytes fit the budget (or
 * none is left to evict). */
static void wc_trim(struct qs_bench *b, size_t need)
{
    struct qs_wcache *c = b->wcache;
    while (c && c->bytes + need > b->wq_budget) {
        int lru = -1;
        for (int k = 0; k < c->n; k++)
            if (!c->ent[k].pinned && (lru < 0 || c->ent[k].used < c->ent[lru].used))
                lru = k;
        if (lru < 0)
            return;
        wc_drop(c, lru);
    }
}

static void wc_forget(struct qs_bench *b, int i)
{
    struct qs_wcache *c = b->wcache;
    for (int k = 0; c && k < c->n;)
        if (c->ent[k].site == i)
            wc_drop(c, k);
        else
            k++;
}

void qs_site_set_packed(struct qs_bench *b, int i, struct qs_packed *p, int xform)
{
    struct qs_layer_state *s = &b->ls[i];
    wc_forget(b, i);
    qs_packed_free(&s->packed);
    if (p) {
        s->packed = *p;
        memset(p, 0, sizeof *p);
    }
    s->wquant = p != NULL;
    s->wq_xform = p != NULL && xform;
    s->wq_gen = ++wq_generation;
}

/* Site i's codes decoded into w: (out, in), as the site's quantizer made them: the unpacked
 * codes, mapped back from a method's basis (the inverse transform, sitemethod.c's order). */
static int site_decode(const struct qs_bench *b, int i, float *w, qs_err *e)
{
    const struct qs_layer_state *s = &b->ls[i];
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    if (qs_quant_unpack(&s->packed, w, e) < 0)
        return qs_errf(e, "%s: cannot unpack quantized weight", u.name);
    if (s->wq_xform) {
        if (s->xs)
            qs_scale_cols(w, u.out, u.in, s->xs, 1);
        if (s->rot && qs_rot_apply(s->rot, w, u.out, 1, e) < 0)
            return qs_err_prefix(e, u.name);
    }
    return 0;
}

static const float *site_wq(struct qs_bench *b, int i, int pin, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    const struct qs_layer_state *s = &b->ls[i];
    if (!s->wquant) {
        qs_errf(e, "%s: the weight is not quantized", u.name);
        return NULL;
    }
    if (!b->wcache && !(b->wcache = qs_calloc(1, sizeof *b->wcache))) {
        qs_errf(e, "out of memory");
        return NULL;
    }
    struct qs_wcache *c = b->wcache;
    for (int k = 0; k < c->n; k++)
        if (c->ent[k].site == i && c->ent[k].gen == s->wq_gen) {
            c->ent[k].used = ++c->tick;
            c->ent[k].pinned |= pin;
            c->hits++;
            return c->ent[k].w;
        }
    const size_t nw = (size_t)u.out * u.in, bytes = nw * sizeof(float);
    wc_trim(b, bytes);
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        struct wc_ent *ne = realloc(c->ent, (size_t)cap * sizeof *ne);
        if (!ne) {
            qs_errf(e, "out of memory");
            return NULL;
        }
        c->ent = ne;
        c->cap = cap;
    }
    char what[160];
    snprintf(what, sizeof what, "%s: the dequantized weight", u.name);
    float *w = qs_alloc(nw, sizeof *w, what, e);
    if (!w)
        return NULL;
    if (site_decode(b, i, w, e) < 0) {
        free(w);
        return NULL;
    }
    c->ent[c->n++] = (struct wc_ent){i, pin, s->wq_gen, ++c->tick, bytes, w};
    c->bytes += bytes;
    c->decodes++;
    return w;
}

const float *qs_site_wq(struct qs_bench *b, int i, qs_err *e)
{
    return site_wq(b, i, 0, e);
}

const float *qs_site_wq_pin(struct qs_bench *b, int i, qs_err *e)
{
    return site_wq(b, i, 1, e);
}

void qs_site_wq_unpin_all(struct qs_bench *b)
{
    for (int k = 0; b->wcache && k < b->wcache->n; k++)
        b->wcache->ent[k].pinned = 0;
    wc_trim(b, 0);
}

void qs_bench_wcache_trim(struct qs_bench *b)
{
    wc_trim(b, 0);
}

void qs_bench_wcache_info(const struct qs_bench *b, struct qs_wcache_info *w)
{
    memset(w, 0, sizeof *w);
    w->budget = b->wq_budget;
    for (int i = 0; b->ls && i < qs_bench_nunits(b); i++)
        if (b->ls[i].wquant) {
            w->packed_bytes += qs_packed_bytes(&b->ls[i].packed);
            w->nquant++;
        }
    if (b->wcache) {
        w->bytes = b->wcache->bytes;
        w->nsites = b->wcache->n;
        w->decodes = b->wcache->decodes;
        w->hits = b->wcache->hits;
    }
}
