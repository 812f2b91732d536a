/* bench.c - the workbench state: model, data, split, rules, per-layer quantization and the
 * incremental activation caches. */
#include "qscope/bench.h"
#include "qscope/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lm_gguf.h"
#include "qscope/lmbench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"

static const char *const regime_names[] = {"weight-only", "activation-only", "weight+activation"};
static const char *const regime_words[] = {"weight", "act", "full"};
const char *qs_regime_name(enum qs_regime r)
{
    return regime_names[r];
}
const char *qs_regime_word(enum qs_regime r)
{
    return regime_words[r];
}

static const char *const corr_names[] = {
    [QS_CORR_NONE] = "none",     [QS_CORR_BIAS] = "bias",     [QS_CORR_LOWRANK] = "lowrank",
    [QS_CORR_LQER] = "lqer",     [QS_CORR_QERA] = "qera",     [QS_CORR_EORA] = "eora",
    [QS_CORR_LINEAR] = "linear", [QS_CORR_CLOCAL] = "clocal",
};
const char *qs_corr_name(enum qs_corr_method m)
{
    return corr_names[m];
}
int qs_corr_parse(const char *s, enum qs_corr_method *m, qs_err *e)
{
    for (int i = 1; i <= QS_CORR_CLOCAL; i++)
        if (!strcmp(s, corr_names[i])) {
            *m = (enum qs_corr_method)i;
            return 0;
        }
    return qs_errf(e,
                   "unknown correction '%s' (expected bias, lowrank, lqer, qera, eora, linear or "
                   "clocal)",
                   s);
}

void qs_corr_clear(struct qs_corr *c)
{
    free(c->c);
    free(c->l);
    free(c->rt);
    free(c->db);
    free(c->amap);
    free(c->mb);
    memset(c, 0, sizeof *c);
}

int qs_bench_nunits(const struct qs_bench *b)
{
    return b->model ? b->model->nlayers : b->lm ? b->lm->nsites : 0;
}

void qs_bench_unit(const struct qs_bench *b, int i, struct qs_unit *u)
{
    if (b->model) {
        const struct qs_layer *l = &b->model->layers[i];
        *u = (struct qs_unit){l->name, l->in, l->out, l->w, l->b};
    } else {
        const struct qs_lm_site *st = &b->lm->sites[i];
        *u = (struct qs_unit){st->name, st->in, st->out, st->w, st->b};
    }
}

static int nlayers_of(const struct qs_bench *b)
{
    return qs_bench_nunits(b);
}

void qs_site_err_cache_free(struct qs_site_err_cache *c)
{
    if (!c)
        return;
    free(c->sum);
    free(c->kl);
    free(c->kl_ok);
    free(c);
}

static void rows_free(struct qs_bench *b)
{
    for (int s = 0; s < 2; s++) {
        free(b->rows.xf[s]);
        free(b->rows.xq[s]);
    }
    memset(&b->rows, 0, sizeof b->rows);
    b->rows.site = -1;
}

void qs_bench_caches_free(struct qs_bench *b)
{
    int L = nlayers_of(b);
    rows_free(b);
    qs_site_err_cache_free(b->errc);
    b->errc = NULL;
    qs_moments_cache_free(b->momc);
    b->momc = NULL;
    for (int s = 0; s < 2; s++) {
        qs_bench_acts_free(&b->f_acts[s], L, b->lm != NULL);
        qs_bench_acts_free(&b->q_acts[s], L, b->lm != NULL);
        b->q_valid[s] = 0;
    }
    b->f_valid = 0;
}

static void caches_free(struct qs_bench *b)
{
    qs_bench_caches_free(b);
}

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

static void layer_states_free(struct qs_bench *b)
{
    qs_bench_wcache_clear(b);
    for (int i = 0; b->ls && i < nlayers_of(b); i++) {
        qs_packed_free(&b->ls[i].packed);
        qs_corr_clear(&b->ls[i].corr);
        qs_layer_method_clear(&b->ls[i]);
    }
    free(b->ls);
    b->ls = NULL;
}

struct qs_bench *qs_bench_new(void)
{
    struct qs_bench *b = qs_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->seed = 0;
    b->split_seed = 0;
    b->f_train = 0.6;
    b->f_calib = 0.2;
    b->calib_n = -1;
    b->gate_min = 0.8;
    b->gate_lm = 0.25;
    b->regime = QS_REGIME_WEIGHT;
    b->act_budget = QS_ACT_BUDGET;
    b->wq_budget = QS_WQ_BUDGET;
    b->rows.site = -1;
    return b;
}

void qs_bench_free(struct qs_bench *b)
{
    if (!b)
        return;
    caches_free(b);
    layer_states_free(b);
    qs_mlp_free(b->model);
    b->model = NULL;
    qs_bench_lm_drop(b);
    qs_lm_free(b->lm);
    qs_lm_gguf_sites_free(b->gguf);
    qs_tokens_free(b->tokens);
    qs_dataset_free(b->data);
    qs_split_free(&b->split);
    free(b->model_path);
    free(b->data_path);
    free(b);
}

void qs_bench_mark_stale(struct qs_bench *b, int i)
{
    /* bias and linear maps were fitted on the quantized path's pre-activations, which depend on
     * every earlier layer; the low-rank family depends only on W, Q(W) and float inputs */
    for (int j = i + 1; j < nlayers_of(b); j++) {
        enum qs_corr_method m = b->ls[j].corr.method;
        if (m == QS_CORR_BIAS || m == QS_CORR_LINEAR)
            b->ls[j].corr.stale = 1;
    }
}

void qs_bench_invalidate(struct qs_bench *b, int i)
{
    for (int s = 0; s < 2; s++)
        if (b->q_valid[s] > i)
            b->q_valid[s] = i;
    /* a site's quantized-path inputs depend on the sites before it only */
    if (b->rows.site > i)
        rows_free(b);
    qs_moments_cache_invalidate(b->momc, i);
    if (b->errc) {
        if (b->errc->valid > i)
            b->errc->valid = i;
        /* site i's KL run has it alone quantized; sites past 63 share the masks' last bit */
        if (i >= 0 && i < b->errc->nsites)
            b->errc->kl_ok[i] = 0;
        if (i >= 63)
            for (int j = 63; j < b->errc->nsites; j++)
                b->errc->kl_ok[j] = 0;
    }
}

/* The calibration data changed: the sites whose method takes statistics of it are computed
 * again (now if the bench is ready, else when it is). */
static int methods_data_changed(struct qs_bench *b, qs_err *e)
{
    int any = 0;
    for (int i = 0; b->ls && i < nlayers_of(b); i++) {
        struct qs_layer_state *s = &b->ls[i];
        if (!(s->wm.smooth_on || (s->wfmt.kind != QS_FMT_NONE && s->wm.method != QS_METHOD_RTN)))
            continue;
        struct qs_rule_method wm = s->wm;
        qs_site_set_packed(b, i, NULL, 0);
        qs_layer_method_clear(s);
        s->wm = wm;
        s->mpending = 1;
        s->sens_method[0] = 0;
        qs_corr_clear(&s->corr);
        if (!any)
            qs_bench_invalidate(b, i);
        qs_bench_mark_stale(b, i);
        any = 1;
    }
    return any ? qs_bench_methods_refresh(b, 0, e) : 0;
}

/* Forgets the model of either kind, its per-unit state and caches. */
static void drop_model(struct qs_bench *b)
{
    caches_free(b);
    layer_states_free(b);
    qs_mlp_free(b->model);
    b->model = NULL;
    qs_bench_lm_drop(b);
    qs_lm_free(b->lm);
    b->lm = NULL;
    qs_lm_gguf_sites_free(b->gguf);
    b->gguf = NULL;
    /* `gguf` rules name the weights of a pairing that is gone */
    int k = 0;
    for (int i = 0; i < b->nrules; i++)
        if (!qs_format_is_gguf_own(&b->rules[i].fmt))
            b->rules[k++] = b->rules[i];
    b->nrules = k;
}

static int alloc_states(struct qs_bench *b, qs_err *e)
{
    int n = qs_bench_nunits(b);
    b->ls = qs_calloc((size_t)n, sizeof *b->ls);
    if (!b->ls)
        return qs_errf(e, "out of memory");
    for (int i = 0; i < n; i++)
        b->ls[i].rule_w = b->ls[i].rule_a = -1;
    return 0;
}

int qs_bench_set_lm(struct qs_bench *b, struct qs_lm *m, const char *path, qs_err *e)
{
    drop_model(b);
    qs_dataset_free(b->data); /* CSV data belongs to MLPs */
    b->data = NULL;
    qs_split_free(&b->split);
    b->lm = m;
    free(b->model_path);
    b->model_path = qs_strdup(path);
    if (alloc_states(b, e) < 0 || qs_bench_resolve(b, e) < 0)
        return -1;
    /* last, so that no failure follows (a staged load must be able to give the tokens back) */
    if (b->tokens && qs_bench_lm_ready(b, e) < 0) { /* keep the tokens only if they fit */
        qs_tokens_free(b->tokens);
        b->tokens = NULL;
        free(b->data_path);
        b->data_path = NULL;
    }
    return 0;
}

int qs_bench_set_tokens(struct qs_bench *b, struct qs_tokens *t, const char *path, qs_err *e)
{
    qs_bench_lm_drop(b);
    qs_tokens_free(b->tokens);
    b->tokens = t;
    free(b->data_path);
    b->data_path = qs_strdup(path);
    if (b->lm && qs_bench_lm_ready(b, e) < 0)
        return -1;
    return methods_data_changed(b, e);
}

int qs_bench_set_model(struct qs_bench *b, struct qs_mlp *m, const char *path, qs_err *e)
{
    drop_model(b);
    if (b->tokens) { /* token data belongs to transformers */
        qs_tokens_free(b->tokens);
        b->tokens = NULL;
        free(b->data_path);
        b->data_path = NULL;
    }
    b->model = m;
    free(b->model_path);
    b->model_path = qs_strdup(path);
    if (alloc_states(b, e) < 0)
        return -1;
    /* The model's own split (recorded by the trainer) is the default, so that its test split is
     * really held out. */
    const char *ss = qs_mlp_get_meta(m, "qscope.split_seed");
    const char *ft = qs_mlp_get_meta(m, "qscope.split_train");
    const char *fc = qs_mlp_get_meta(m, "qscope.split_calib");
    if (ss)
        b->split_seed = strtoull(ss, NULL, 10);
    if (ft)
        b->f_train = atof(ft);
    if (fc)
        b->f_calib = atof(fc);
    if (b->data && qs_bench_resplit(b, b->split_seed, b->f_train, b->f_calib, e) < 0)
        return -1;
    return qs_bench_resolve(b, e);
}

/* ---- staging -------------------------------------------------------------------------- */

/* Moves what `keep` names (QS_KEEP_MODEL: the model and its site states; QS_KEEP_DATA or
 * QS_KEEP_TOKENS: the data and its path) from one bench to the other: a stage takes them from
 * the current bench, an abort gives them back. */
static void move_kept(struct qs_bench *to, struct qs_bench *from, int keep)
{
    if (keep & QS_KEEP_MODEL) {
        to->model = from->model;
        to->lm = from->lm;
        to->ls = from->ls;
        to->model_path = from->model_path;
        to->gguf = from->gguf;
        from->gguf = NULL;
        from->model = NULL;
        from->lm = NULL;
        from->ls = NULL;
        from->model_path = NULL;
    }
    if (keep & (QS_KEEP_DATA | QS_KEEP_TOKENS)) {
        if (keep & QS_KEEP_DATA) {
            to->data = from->data;
            from->data = NULL;
        }
        if (keep & QS_KEEP_TOKENS) {
            to->tokens = from->tokens;
            from->tokens = NULL;
        }
        to->data_path = from->data_path;
        from->data_path = NULL;
    }
}

struct qs_bench *qs_bench_stage(struct qs_bench *b, int keep)
{
    struct qs_bench *s = qs_bench_new();
    if (!s)
        return NULL;
    s->seed = b->seed;
    s->split_seed = b->split_seed;
    s->f_train = b->f_train;
    s->f_calib = b->f_calib;
    s->calib_n = b->calib_n;
    s->calib_tokens = b->calib_tokens;
    s->act_budget = b->act_budget;
    s->wq_budget = b->wq_budget;
    s->gate_min = b->gate_min;
    s->gate_lm = b->gate_lm;
    s->regime = b->regime;
    s->nrules = b->nrules;
    memcpy(s->rules, b->rules, sizeof s->rules);
    s->progress = b->progress;
    s->progress_ctx = b->progress_ctx;
    /* caches belong to the current model and data; the stage makes its own */
    caches_free(b);
    qs_bench_lm_drop(b);
    qs_bench_wcache_clear(b); /* decoded copies go with the sites (the stage decodes its own) */
    move_kept(s, b, keep);
    return s;
}

void qs_bench_commit(struct qs_bench *b, struct qs_bench *s)
{
    /* b keeps its address (front ends hold it), its hooks and its cancel flag */
    qs_progress_fn pf = b->progress;
    void *pc = b->progress_ctx;
    int cancel = b->cancel;
    struct qs_bench tmp;
    memcpy(&tmp, b, sizeof tmp);
    memcpy(b, s, sizeof *b);
    memcpy(s, &tmp, sizeof *s);
    b->progress = pf;
    b->progress_ctx = pc;
    b->cancel = cancel;
    qs_bench_free(s);
}

void qs_bench_abort(struct qs_bench *b, struct qs_bench *s, int keep)
{
    if (!s)
        return;
    if (keep & QS_KEEP_MODEL) {
        caches_free(s); /* sized by the model: free them before it goes back */
        qs_bench_lm_drop(s);
        qs_bench_wcache_clear(s);
    }
    move_kept(b, s, keep);
    qs_bench_free(s);
}

int qs_bench_set_data(struct qs_bench *b, struct qs_dataset *d, const char *path, qs_err *e)
{
    caches_free(b);
    qs_dataset_free(b->data);
    b->data = d;
    free(b->data_path);
    b->data_path = qs_strdup(path);
    return qs_bench_resplit(b, b->split_seed, b->f_train, b->f_calib, e);
}

int qs_bench_resplit(struct qs_bench *b, uint64_t seed, double f_train, double f_calib, qs_err *e)
{
    caches_free(b);
    qs_split_free(&b->split);
    if (!b->data)
        return 0;
    if (qs_split_make(b->data->n, seed, f_train, f_calib, &b->split, e) < 0)
        return -1;
    b->split_seed = seed;
    b->f_train = f_train;
    b->f_calib = f_calib;
    if (b->calib_n > b->split.n_calib)
        b->calib_n = -1;
    /* static activation scales depend on the calibration data */
    for (int i = 0; b->ls && i < nlayers_of(b); i++)
        b->ls[i].a_static_amax = 0.0f;
    return methods_data_changed(b, e);
}

int qs_bench_set_calib(struct qs_bench *b, int n, qs_err *e)
{
    if (b->lm) { /* transformers: N calibration windows of ctx tokens */
        if (!b->tokens)
            return qs_errf(e, "set calib: no token data loaded");
        size_t off = b->tokens->n - b->tokens->n / 10;
        long avail = (long)(off / (size_t)b->lm->ctx);
        if (n <= 0 || n > avail)
            return qs_errf(e,
                           "set calib: %d windows requested but the non-held-out tokens hold "
                           "%ld windows of %d",
                           n, avail, b->lm->ctx);
        b->calib_n = n;
        b->calib_tokens = 0;
        qs_bench_lm_drop(b);
        for (int i = 0; b->ls && i < nlayers_of(b); i++)
            b->ls[i].a_static_amax = 0.0f;
        return methods_data_changed(b, e);
    }
    if (!b->data)
        return qs_errf(e, "set calib: no data loaded");
    if (n <= 0 || n > b->split.n_calib)
        return qs_errf(e,
                       "set calib: %d samples requested but the calibration split has %d "
                       "(of %d samples, calib fraction %.2f)",
                       n, b->split.n_calib, b->data->n, b->f_calib);
    caches_free(b);
    b->calib_n = n;
    for (int i = 0; b->ls && i < nlayers_of(b); i++)
        b->ls[i].a_static_amax = 0.0f;
    return methods_data_changed(b, e);
}

int qs_bench_set_calib_tokens(struct qs_bench *b, long tokens, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "set calib tokens=N applies to transformers (an MLP's calibration is "
                          "counted in samples: set calib N)");
    if (tokens < 1)
        return qs_errf(e, "set calib tokens=%ld: need at least 1 token", tokens);
    /* whole windows of the model's context: N / ctx of them, at least one */
    long w = tokens / b->lm->ctx;
    if (qs_bench_set_calib(b, (int)(w < 1 ? 1 : w > (1L << 30) ? (1L << 30) : w), e) < 0)
        return -1;
    b->calib_tokens = (int)(tokens > (1L << 30) ? (1L << 30) : tokens);
    return 0;
}

int qs_bench_check_files(const struct qs_bench *b, qs_err *e)
{
    /* an MLP's aligned F32 weights point into its mapped file; a transformer's are copies */
    if (b->model && b->model->map)
        return qs_st_check(b->model->map, e);
    if (b->gguf) /* a paired GGUF's site blocks are read from its mapping on use */
        return qs_lm_gguf_sites_check(b->gguf, e);
    return 0;
}

int qs_bench_ready(struct qs_bench *b, qs_err *e)
{
    if (!b->model)
        return qs_errf(e, "no model loaded (load model PATH)");
    if (!b->data)
        return qs_errf(e, "no data loaded (load data PATH)");
    const struct qs_layer *first = &b->model->layers[0],
                          *last = &b->model->layers[b->model->nlayers - 1];
    if (first->in != b->data->d)
        return qs_errf(e, "model %s takes %d inputs but data %s has %d features",
                       b->model_path ? b->model_path : "(new)", first->in,
                       b->data_path ? b->data_path : "", b->data->d);
    if (last->out < b->data->nclass)
        return qs_errf(e, "model has %d outputs but data %s has %d classes", last->out,
                       b->data_path ? b->data_path : "", b->data->nclass);
    if (b->split.n_test <= 0 || b->split.n_calib <= 0)
        return qs_errf(e, "the split leaves no calibration or test samples");
    return 0;
}

int qs_bench_layer_index(const struct qs_bench *b, const char *name)
{
    struct qs_unit u;
    for (int i = 0; i < nlayers_of(b); i++) {
        qs_bench_unit(b, i, &u);
        if (!strcmp(u.name, name))
            return i;
    }
    return -1;
}

static int edit_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++)
        d[i][0] = i;
    for (int j = 0; j <= lb; j++)
        d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c)
                c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c)
                c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

void qs_bench_suggest_layer(const struct qs_bench *b, const char *name, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = 0;
    int L = nlayers_of(b), best = 99;
    struct qs_unit u;
    for (int i = 0; i < L; i++) {
        qs_bench_unit(b, i, &u);
        int d = edit_distance(name, u.name);
        if (d < best)
            best = d;
    }
    for (int i = 0; i < L && used + 1 < n; i++) {
        qs_bench_unit(b, i, &u);
        if (edit_distance(name, u.name) <= best + 1)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", used ? ", " : "", u.name);
    }
}

/* ---- rules ---------------------------------------------------------------------------- */

int qs_bench_add_rule(struct qs_bench *b, const struct qs_rule *r, int *nmatched, qs_err *e)
{
    /* A rule with the same pattern and roles replaces the old one; new rules go first so that
     * the latest `quant` wins where patterns overlap ("first match wins" over the listed order). */
    int k = 0;
    for (int i = 0; i < b->nrules; i++)
        if (!(strcmp(b->rules[i].pattern, r->pattern) == 0 && b->rules[i].roles == r->roles))
            b->rules[k++] = b->rules[i];
    b->nrules = k;
    if (b->nrules == (int)(sizeof b->rules / sizeof b->rules[0]))
        return qs_errf(e, "too many quantization rules (%d); clear some with `quant * none`",
                       b->nrules);
    memmove(&b->rules[1], &b->rules[0], (size_t)b->nrules * sizeof b->rules[0]);
    b->rules[0] = *r;
    b->nrules++;
    /* `quant * ...` covers everything: older rules are shadowed for good, drop them. */
    if (!strcmp(r->pattern, "*") && r->roles == 0)
        b->nrules = 1;
    if (qs_bench_resolve(b, e) < 0)
        return -1;
    if (nmatched)
        *nmatched = b->rules[0].matched;
    return 0;
}

int qs_bench_clear_rules(struct qs_bench *b)
{
    b->nrules = 0;
    return qs_bench_resolve(b, NULL);
}

int qs_bench_set_regime(struct qs_bench *b, enum qs_regime r, qs_err *e)
{
    b->regime = r;
    return qs_bench_resolve(b, e);
}

static int role_default(const struct qs_bench *b)
{
    return b->regime == QS_REGIME_WEIGHT ? QS_ROLE_W
           : b->regime == QS_REGIME_ACT  ? QS_ROLE_A
                                         : QS_ROLE_W | QS_ROLE_A;
}

static int find_rule(const struct qs_bench *b, const char *name, int role)
{
    for (int k = 0; k < b->nrules; k++) {
        int roles = b->rules[k].roles ? b->rules[k].roles : role_default(b);
        if (qs_format_is_gguf_own(&b->rules[k].fmt) && (!b->gguf || role != QS_ROLE_W))
            continue; /* the paired GGUF's own weights: weights only, with a pairing */
        if ((roles & role) && qs_glob_match(b->rules[k].pattern, name))
            return k;
    }
    return -1;
}

static void cfg_key(const struct qs_format *f, const struct qs_qopts *o, int amode, char *buf,
                    size_t n)
{
    char opts[160] = "";
    if (f->kind != QS_FMT_NONE)
        qs_qopts_format(f, o, opts, sizeof opts);
    snprintf(buf, n, "%s %s %d", f->name, opts, amode);
}

int qs_bench_resolve(struct qs_bench *b, qs_err *e)
{
    for (int k = 0; k < b->nrules; k++)
        b->rules[k].matched = 0;
    int upstream = 0; /* a site before this one computes differently now */
    for (int i = 0; i < nlayers_of(b); i++) {
        struct qs_unit unit, *l = &unit;
        qs_bench_unit(b, i, &unit);
        struct qs_layer_state *s = &b->ls[i];
        int rw = find_rule(b, l->name, QS_ROLE_W), ra = find_rule(b, l->name, QS_ROLE_A);
        struct qs_format wf = {0}, af = {0};
        struct qs_qopts wo, ao;
        qs_qopts_default(&wo);
        qs_qopts_default(&ao);
        enum qs_amode am = QS_AMODE_DYNAMIC;
        wf.kind = af.kind = QS_FMT_NONE;
        snprintf(wf.name, sizeof wf.name, "none");
        snprintf(af.name, sizeof af.name, "none");
        if (rw >= 0) {
            wf = b->rules[rw].fmt;
            wo = b->rules[rw].opt;
            b->rules[rw].matched++;
            /* a `gguf` rule: the site's own tensor type in the paired GGUF ("gguf:q4_k") */
            if (qs_format_is_gguf_own(&wf) && qs_lm_gguf_site_format(b->gguf, i, &wf, e) < 0)
                return -1;
        }
        if (ra >= 0) {
            af = b->rules[ra].fmt;
            ao = b->rules[ra].opt;
            am = b->rules[ra].amode;
            if (ra != rw)
                b->rules[ra].matched++;
        }
        /* the site's method: its weight rule's. The basis (rotation, smoothing) is the site's,
         * for weights and activations alike: the weight rule's, else the activation rule's
         * (not smoothing under AWQ, whose own scales are the site's channel scales) */
        struct qs_rule_method wm;
        qs_rule_method_default(&wm);
        if (rw >= 0 && wf.kind != QS_FMT_NONE)
            wm = b->rules[rw].meth;
        if (!wm.rotate && !wm.smooth_on && ra >= 0 && af.kind != QS_FMT_NONE) {
            const struct qs_rule_method *am = &b->rules[ra].meth;
            if (am->rotate) {
                wm.rotate = 1;
                wm.seed = am->seed;
            } else if (am->smooth_on && wm.method != QS_METHOD_AWQ) {
                wm.smooth_on = 1;
                wm.smooth = am->smooth;
            }
        }
        int custom = qs_rule_method_custom(&wm);
        char oldw[256], neww[256], olda[256], newa[256], oldm[200], newm[200];
        cfg_key(&s->wfmt, &s->wopt, 0, oldw, sizeof oldw);
        cfg_key(&wf, &wo, 0, neww, sizeof neww);
        cfg_key(&s->afmt, &s->aopt, (int)s->amode, olda, sizeof olda);
        cfg_key(&af, &ao, (int)am, newa, sizeof newa);
        qs_rule_method_format(&s->wm, oldm, sizeof oldm);
        qs_rule_method_format(&wm, newm, sizeof newm);
        int mchanged = strcmp(oldm, newm) != 0 || s->wm.seed != wm.seed;
        /* a sequential method's statistics come from the sites before it: a change there
         * recomputes it */
        int seq =
            custom && wf.kind != QS_FMT_NONE && wm.method != QS_METHOD_RTN && !wm.inputs_float;
        int wchanged = strcmp(oldw, neww) != 0 || mchanged ||
                       (wf.kind != QS_FMT_NONE && !s->wquant && !s->mpending) || (upstream && seq);
        int achanged = strcmp(olda, newa) != 0 || mchanged;
        s->rule_w = rw;
        s->rule_a = ra;
        if ((wchanged || achanged) && custom) {
            /* computed by qs_bench_methods_refresh below, in forward order */
            qs_site_set_packed(b, i, NULL, 0);
            qs_layer_method_clear(s);
            s->wm = wm;
            s->mpending = 1;
            s->wfmt = wf;
            s->wopt = wo;
            s->w_rel_err = 0.0;
            s->afmt = af;
            s->aopt = ao;
            s->amode = am;
            s->a_static_amax = 0.0f;
            s->sens_method[0] = 0;
            qs_corr_clear(&s->corr);
            qs_bench_invalidate(b, i);
            qs_bench_mark_stale(b, i);
            upstream = 1;
            continue;
        }
        if (mchanged) { /* back to plain round-to-nearest */
            qs_layer_method_clear(s);
            s->wm = wm;
            wchanged = achanged = 1;
        }
        if (wchanged) {
            double rel = 0.0;
            if (wf.kind != QS_FMT_NONE) {
                size_t nw = (size_t)l->out * l->in;
                char what[160];
                snprintf(what, sizeof what, "%s: the quantized weight (packed and dequantized)",
                         l->name);
                /* the packed codes (at most a float each) and the dequantized copy */
                if (qs_mem_check(2 * nw * sizeof(float), what, e) < 0)
                    return -1;
                struct qs_packed p;
                memset(&p, 0, sizeof p);
                if (qs_format_is_gguf_own(&wf)) { /* the GGUF's blocks, not a quantization */
                    if (qs_lm_gguf_site_packed(b->gguf, i, &p, e) < 0)
                        return qs_err_prefix(e, l->name);
                } else if (qs_quant_pack(&wf, &wo, l->w, l->out, l->in, &p, e) < 0) {
                    return qs_err_prefix(e, l->name);
                }
                /* the codes replace the site's; their first decode (into the weights cache,
                 * where the next forward finds it) gives the weight error */
                qs_site_set_packed(b, i, &p, 0);
                const float *wq = qs_site_wq(b, i, e);
                if (!wq) {
                    qs_site_set_packed(b, i, NULL, 0);
                    return -1;
                }
                double num = 0.0, den = 0.0;
                for (size_t j = 0; j < nw; j++) {
                    double d = (double)l->w[j] - wq[j];
                    num += d * d;
                    den += (double)l->w[j] * l->w[j];
                }
                rel = den > 0 ? sqrt(num / den) : 0.0;
            } else {
                qs_site_set_packed(b, i, NULL, 0);
            }
            s->wfmt = wf;
            s->wopt = wo;
            s->w_rel_err = rel;
        }
        if (achanged) {
            s->afmt = af;
            s->aopt = ao;
            s->amode = am;
            s->a_static_amax = 0.0f;
        }
        if (wchanged || achanged) {
            s->sens_method[0] = 0;
            qs_corr_clear(&s->corr); /* a correction fitted for another format is stale */
            qs_bench_invalidate(b, i);
            qs_bench_mark_stale(b, i);
            upstream = 1;
        }
    }
    return qs_bench_methods_refresh(b, 0, e);
}

enum qs_regime qs_bench_effective_regime(const struct qs_bench *b)
{
    int w = 0, a = 0;
    for (int i = 0; i < nlayers_of(b); i++) {
        w |= b->ls[i].wfmt.kind != QS_FMT_NONE;
        a |= b->ls[i].afmt.kind != QS_FMT_NONE;
    }
    return w && a ? QS_REGIME_FULL : a ? QS_REGIME_ACT : w ? QS_REGIME_WEIGHT : b->regime;
}

void qs_bench_wdesc(const struct qs_layer_state *s, char *buf, size_t n)
{
    const struct qs_format *f = &s->wfmt;
    const struct qs_qopts *o = &s->wopt;
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE)
        snprintf(buf, n, "float");
    else if (t->fixed_block || t->unscaled) /* fixed blocks of the format, or no scale */
        snprintf(buf, n, "%s", f->name);
    else if (o->gran == QS_GRAN_GROUP)
        snprintf(buf, n, "%s/g%d", f->name, o->group);
    else if (t->blockwise)
        snprintf(buf, n, "%s/%s", f->name, o->gran == QS_GRAN_CHANNEL ? "channel" : "g64");
    else
        snprintf(buf, n, "%s/%s", f->name, o->gran == QS_GRAN_TENSOR ? "tensor" : "channel");
    if (f->kind != QS_FMT_NONE && qs_rule_method_custom(&s->wm)) {
        /* the method, short: +gptq, +awq, +imatrix, +rot, +smooth */
        size_t k = strlen(buf);
        static const char *const mn[] = {"", "+gptq", "+awq", "+imatrix"};
        snprintf(buf + k, n > k ? n - k : 0, "%s%s%s",
                 s->wm.method >= 0 && s->wm.method <= 3 ? mn[s->wm.method] : "",
                 s->wm.rotate ? "+rot" : "", s->wm.smooth_on ? "+smooth" : "");
    }
}

void qs_bench_adesc(const struct qs_layer_state *s, char *buf, size_t n)
{
    const struct qs_format *f = &s->afmt;
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE)
        snprintf(buf, n, "float");
    else if (t->unscaled) /* a plain cast: no scale, so no scale mode either */
        snprintf(buf, n, "%s", f->name);
    else if (s->amode == QS_AMODE_STATIC)
        snprintf(buf, n, "%s/static", f->name);
    else if (s->amode == QS_AMODE_TOKEN)
        snprintf(buf, n, "%s/token", f->name);
    else if (s->aopt.gran == QS_GRAN_GROUP)
        snprintf(buf, n, "%s/g%d", f->name, s->aopt.group);
    else if (t->blockwise)
        snprintf(buf, n, "%s/g64", f->name);
    else if (t->fixed_block)
        snprintf(buf, n, "%s", f->name);
    else
        snprintf(buf, n, "%s/tensor", f->name);
    if (f->kind != QS_FMT_NONE && (s->wm.rotate || s->wm.smooth_on)) {
        size_t k = strlen(buf);
        snprintf(buf + k, n > k ? n - k : 0, "%s%s", s->wm.rotate ? "+rot" : "",
                 s->wm.smooth_on ? "+smooth" : "");
    }
}

/* The split contract, one line for both families (info and every session header state it). */
void qs_bench_split_text(const struct qs_bench *b, char *buf, size_t n)
{
    if (b->lm && b->tokens) {
        size_t off;
        int cw, ctx = b->lm->ctx;
        qs_bench_lm_split(b, &off, &cw);
        size_t held = b->tokens->n - off;
        char budget[64] = "set calib N counts windows";
        if (b->calib_tokens > 0)
            snprintf(budget, sizeof budget, "set calib tokens=%d", b->calib_tokens);
        size_t hw = (held - 1) / (size_t)ctx;
        char cap[64] = "";
        if (b->test_windows > 0 && (size_t)b->test_windows < hw)
            snprintf(cap, sizeof cap, " (runs: its first %d; the gate: all)", b->test_windows);
        snprintf(buf, n,
                 "tokens: train [0, %zu) / calibration: its first %d window%s of %d (%s) / "
                 "held-out [%zu, %zu): the last 10 %%, %zu windows of %d%s",
                 off, cw, cw == 1 ? "" : "s", ctx, budget, off, b->tokens->n, hw, ctx, cap);
    } else if (!b->lm && b->data) {
        snprintf(buf, n,
                 "rows, seed %llu: train %d / calibration %d (using %d; set calib N counts rows) "
                 "/ held-out test %d",
                 (unsigned long long)b->split_seed, b->split.n_train, b->split.n_calib,
                 b->calib_n > 0 ? b->calib_n : b->split.n_calib, b->split.n_test);
    } else {
        snprintf(buf, n, "none (no %s)", b->lm || b->model ? "data" : "model");
    }
}
