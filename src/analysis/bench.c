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
        *u = (struct qs_unit){l->name, l->in, l->out, l->b};
    } else {
        const struct qs_lm_site *st = &b->lm->sites[i];
        *u = (struct qs_unit){st->name, st->in, st->out, st->b};
    }
}

const float *qs_bench_w(struct qs_bench *b, int i, qs_err *e)
{
    return b->model ? b->model->layers[i].w : qs_lm_site_w(b->lm, i, e);
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

void qs_resid_cache_free(struct qs_resid_cache *c)
{
    if (!c)
        return;
    free(c->f);
    free(c->q);
    free(c->ok[0]);
    free(c->ok[1]);
    free(c);
}

size_t qs_resid_cache_bytes(const struct qs_resid_cache *c)
{
    return c ? 2 * (size_t)c->nent * c->nw * c->td * sizeof(float) : 0;
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
        qs_resid_cache_free(b->resc[s]);
        b->resc[s] = NULL;
    }
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
    for (int s = 0; s < 2 && b->lm; s++) { /* the quantized entries after site i's block */
        struct qs_resid_cache *c = b->resc[s];
        int bi = i < 0 ? -1 : qs_lm_site_block(b->lm, i < b->lm->nsites ? i : b->lm->nsites - 1);
        for (int k = 0; c && k < c->nent; k++)
            if ((k + 1) * c->stride > bi)
                c->ok[1][k] = 0;
    }
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
    if (m)
        m->wf_budget = b->wq_budget; /* set memory weights= bounds both caches */
    free(b->model_path);
    b->model_path = qs_strdup(path);
    if (m) /* set ctx: this model's windows, up to its own context */
        m->ctx = b->ctx_set > 0 && b->ctx_set < m->n_pos ? b->ctx_set : m->n_pos;
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
    s->ctx_set = b->ctx_set;
    s->test_windows = b->test_windows;
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

int qs_bench_set_ctx(struct qs_bench *b, int n, qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "set ctx applies to transformers (their windows; load model DIR)");
    if (n < 0 || n > b->lm->n_pos)
        return qs_errf(e, "set ctx: windows of %d tokens asked for; the model's context is %d", n,
                       b->lm->n_pos);
    int ctx = n > 0 ? n : b->lm->n_pos;
    b->ctx_set = n;
    if (ctx == b->lm->ctx)
        return 0;
    b->lm->ctx = ctx;
    if (b->calib_tokens > 0) { /* the budget in tokens, in windows of the new length */
        long w = b->calib_tokens / ctx;
        b->calib_n = (int)(w < 1 ? 1 : w);
    }
    qs_bench_lm_drop(b); /* caches, the gate's float loss and static scales were per window */
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

int qs_bench_calib_peek_begin(struct qs_bench *b, int n, struct qs_calib_aside *a, qs_err *e)
{
    memset(a, 0, sizeof *a);
    if (!b->lm || !b->tokens)
        return qs_errf(e, "a calibration preview needs a transformer and its token data");
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    if (n < 1 || n >= cw)
        return qs_errf(e, "a calibration preview takes 1 to %d windows (of %d), not %d", cw - 1, cw,
                       n);
    /* methods and static scales are fitted on the session's calibration, not the preview's */
    if (qs_bench_update(b, e) < 0)
        return -1;
    a->calib_n = b->calib_n;
    a->errc = b->errc;
    a->momc = b->momc;
    memcpy(a->resc, b->resc, sizeof a->resc);
    a->rows = b->rows;
    b->errc = NULL;
    b->momc = NULL;
    memset(b->resc, 0, sizeof b->resc);
    memset(&b->rows, 0, sizeof b->rows);
    b->rows.site = -1;
    qs_bench_caches_free(b); /* any other cache of the full calibration */
    b->calib_n = n;
    a->active = 1;
    return 0;
}

void qs_bench_calib_peek_end(struct qs_bench *b, struct qs_calib_aside *a)
{
    if (!a->active)
        return;
    qs_bench_caches_free(b); /* what the analyses kept of the preview's windows */
    b->calib_n = a->calib_n;
    b->errc = a->errc;
    b->momc = a->momc;
    memcpy(b->resc, a->resc, sizeof b->resc);
    b->rows = a->rows;
    memset(a, 0, sizeof *a);
}

int qs_bench_check_files(const struct qs_bench *b, qs_err *e)
{
    /* an MLP's aligned F32 weights point into its mapped file; a transformer's 16-bit site
     * weights are read from its mapped file on use (lm.h), the others are copies */
    if (b->model && b->model->map)
        return qs_st_check(b->model->map, e);
    if (b->lm && qs_lm_check_file(b->lm, e) < 0)
        return -1;
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
