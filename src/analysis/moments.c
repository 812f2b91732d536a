/* moments.c - a site's input moments in double, block by block (moments.h), and the bench's
 * entry point qs_bench_site_moments (bench.h), which streams a transformer's windows or reads an
 * MLP's caches into them. */
#include "qscope/moments.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/bench.h"

int qs_moments_init(struct qs_moments *m, int in, qs_err *e)
{
    memset(m, 0, sizeof *m);
    m->in = in;
    m->xtx = qs_alloc((size_t)in * in, sizeof(double), "the inputs' second moments", e);
    m->absum =
        m->xtx ? qs_alloc((size_t)in, sizeof(double), "the inputs' second moments", e) : NULL;
    m->buf = m->absum ? qs_alloc((size_t)QS_MOMENTS_CHUNK * in, sizeof(double),
                                 "the inputs' second moments", e)
                      : NULL;
    if (!m->buf) {
        qs_moments_free(m);
        return -1;
    }
    return 0;
}

static void flush(struct qs_moments *m)
{
    if (m->fill == 0)
        return;
    int in = m->in;
    /* buf (fill, in) row-major is the column-major (in, fill) matrix X^T: X^T X = B B^T; the
     * column-major upper triangle of xtx is the row-major lower one */
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, in, m->fill, 1.0, m->buf, in, 1.0, m->xtx,
                in);
    for (int r = 0; r < m->fill; r++)
        for (int j = 0; j < in; j++)
            m->absum[j] += fabs(m->buf[(size_t)r * in + j]);
    m->fill = 0;
}

void qs_moments_add(struct qs_moments *m, const float *x, int n)
{
    int in = m->in;
    for (int r = 0; r < n; r++) {
        double *d = m->buf + (size_t)m->fill * in;
        const float *s = x + (size_t)r * in;
        for (int j = 0; j < in; j++)
            d[j] = s[j];
        if (++m->fill == QS_MOMENTS_CHUNK)
            flush(m);
    }
    m->n += n;
}

void qs_moments_finish(struct qs_moments *m)
{
    flush(m);
    int in = m->in;
    for (int i = 0; i < in; i++) /* row-major lower (i > j) was written: mirror it up */
        for (int j = i + 1; j < in; j++)
            m->xtx[(size_t)i * in + j] = m->xtx[(size_t)j * in + i];
}

void qs_moments_free(struct qs_moments *m)
{
    if (!m)
        return;
    free(m->xtx);
    free(m->absum);
    free(m->buf);
    memset(m, 0, sizeof *m);
}

void qs_moments_gram(const struct qs_moments *m, float *r)
{
    size_t nn = (size_t)m->in * m->in;
    for (size_t k = 0; k < nn; k++)
        r[k] = m->n > 0 ? (float)(m->xtx[k] / (double)m->n) : 0.0f;
}

void qs_moments_absmean(const struct qs_moments *m, float *s)
{
    for (int j = 0; j < m->in; j++)
        s[j] = m->n > 0 ? (float)(m->absum[j] / (double)m->n) : 0.0f;
}

int qs_moments_of_rows(struct qs_moments *m, const float *x, int n, int in, qs_err *e)
{
    if (qs_moments_init(m, in, e) < 0)
        return -1;
    qs_moments_add(m, x, n);
    qs_moments_finish(m);
    return 0;
}

/* ---- the bench: a site's input moments on a split and path -------------------------------- */

struct mom_ctx {
    struct qs_moments *m;
    int quant;
};

static int mom_fn(void *u, int site, int w, const float *xf, const float *xq, const float *yf,
                  const float *yq, int n, qs_err *e)
{
    (void)site, (void)w, (void)yf, (void)yq, (void)e;
    struct mom_ctx *c = u;
    qs_moments_add(c->m, c->quant ? xq : xf, n);
    return 0;
}

int qs_bench_site_moments(struct qs_bench *b, int site, enum qs_split_id s, int quant,
                          struct qs_moments *m, qs_err *e)
{
    memset(m, 0, sizeof *m);
    if (site < 0 || site >= qs_bench_nunits(b))
        return qs_errf(e, "site %d is out of range", site);
    struct qs_unit u;
    qs_bench_unit(b, site, &u);
    if (!b->lm) { /* an MLP keeps every input: its caches, read in the same blocks */
        const float *x;
        int n;
        if (qs_bench_inputs(b, s, quant, site, &x, &n, e) < 0)
            return -1;
        return qs_moments_of_rows(m, x, n, u.in, e);
    }
    if (qs_moments_init(m, u.in, e) < 0)
        return -1;
    unsigned char *want = qs_calloc((size_t)qs_bench_nunits(b), 1);
    if (!want) {
        qs_moments_free(m);
        return qs_errf(e, "out of memory");
    }
    want[site] = 1;
    struct mom_ctx c = {m, quant};
    int rc = qs_bench_stream(b, s, want, quant, mom_fn, &c, e);
    free(want);
    if (rc < 0) {
        qs_moments_free(m);
        return -1;
    }
    qs_moments_finish(m);
    return 0;
}

/* ---- the cache ----------------------------------------------------------------------------- */

size_t qs_moments_bytes(int in)
{
    return ((size_t)in * in + (size_t)in) * sizeof(double);
}

static void ent_drop(struct qs_moments_cache *c, int k)
{
    c->bytes -= qs_moments_bytes(c->ent[k].m.in);
    qs_moments_free(&c->ent[k].m);
    c->ent[k] = c->ent[--c->n];
}

void qs_moments_cache_invalidate(struct qs_moments_cache *c, int i)
{
    if (!c)
        return;
    for (int k = c->n - 1; k >= 0; k--)
        if (c->ent[k].quant && c->ent[k].site > i)
            ent_drop(c, k);
}

void qs_moments_cache_free(struct qs_moments_cache *c)
{
    if (!c)
        return;
    while (c->n > 0)
        ent_drop(c, c->n - 1);
    qs_moments_free(&c->tmp);
    free(c->ent);
    free(c);
}

size_t qs_moments_cache_bytes(const struct qs_moments_cache *c)
{
    return c ? c->bytes : 0;
}

int qs_bench_site_moments_cached(struct qs_bench *b, int site, int s, int quant,
                                 const struct qs_moments **out, qs_err *e)
{
    *out = NULL;
    quant = quant != 0;
    /* first the bench up to date (it may drop every cache, this one too), then the look-up */
    if (qs_bench_update(b, e) < 0)
        return -1;
    if (!b->momc) {
        if (!(b->momc = qs_calloc(1, sizeof *b->momc)))
            return qs_errf(e, "out of memory");
        b->momc->budget = QS_MOMENTS_BUDGET;
    }
    struct qs_moments_cache *c = b->momc;
    if (c->tmp.xtx) {
        c->bytes -= qs_moments_bytes(c->tmp.in);
        qs_moments_free(&c->tmp);
    }
    if (b->site_out) { /* a rewritten path the cache's keys do not describe */
        if (qs_bench_site_moments(b, site, (enum qs_split_id)s, quant, &c->tmp, e) < 0)
            return -1;
        c->computed++;
        free(c->tmp.buf);
        c->tmp.buf = NULL;
        c->bytes += qs_moments_bytes(c->tmp.in);
        *out = &c->tmp;
        return 0;
    }
    c->tick++;
    for (int k = 0; k < c->n; k++)
        if (c->ent[k].site == site && c->ent[k].split == s && c->ent[k].quant == quant) {
            c->ent[k].used = c->tick;
            c->hits++;
            *out = &c->ent[k].m;
            return 0;
        }
    struct qs_moments m;
    if (qs_bench_site_moments(b, site, (enum qs_split_id)s, quant, &m, e) < 0)
        return -1;
    c->computed++;
    free(m.buf); /* finished: the block buffer is not used again */
    m.buf = NULL;
    size_t need = qs_moments_bytes(m.in);
    while (c->n > 0 && c->bytes + need > c->budget) { /* least recently used first */
        int lru = 0;
        for (int k = 1; k < c->n; k++)
            if (c->ent[k].used < c->ent[lru].used)
                lru = k;
        ent_drop(c, lru);
    }
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        struct qs_moments_entry *ne = realloc(c->ent, (size_t)cap * sizeof *ne);
        if (!ne) {
            qs_moments_free(&m);
            return qs_errf(e, "out of memory");
        }
        c->ent = ne;
        c->cap = cap;
    }
    struct qs_moments_entry *en = &c->ent[c->n++];
    *en = (struct qs_moments_entry){site, s, quant, c->tick, m};
    c->bytes += need;
    *out = &en->m;
    return 0;
}
