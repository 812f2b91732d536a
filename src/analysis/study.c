/* study.c - the Q1 study over models and seeds, each setting on a bench of its own. */
#include "qscope/study.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/dataset.h"
#include "qscope/linalg.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"
#include "qscope/mlp.h"
#include "qscope/spectral.h"
#include "qscope/tokens.h"

const char *qs_q1_verdict(double med, double sp)
{
    if (med >= 0.35 && sp >= 0.35)
        return "supported";
    if (med < 0.24 && sp < 0)
        return "refuted";
    return "unclear";
}

const char *qs_q1_kind_name(enum qs_q1_kind k)
{
    switch (k) {
    case QS_Q1_MLP:
        return "mlp";
    case QS_Q1_ATTN:
        return "attention";
    case QS_Q1_FFN:
        return "ffn";
    default:
        return "other";
    }
}

void qs_q1_stats_of(const double *v, int n, struct qs_q1_stats *s)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    if (n < 1) {
        s->mean = s->median = s->pos_frac = s->frac_gt_02 = NAN;
        return;
    }
    double sum = 0.0;
    int pos = 0, big = 0;
    for (int i = 0; i < n; i++) {
        sum += v[i];
        pos += v[i] > 0;
        big += v[i] > 0.2;
    }
    s->mean = sum / n;
    s->median = qs_median(v, n);
    s->pos_frac = (double)pos / n;
    s->frac_gt_02 = (double)big / n;
}

static int readable(const char *p)
{
    return access(p, R_OK) == 0;
}

int qs_q1_data_path(const char *model, const char *meta, char *buf, size_t n, qs_err *e)
{
    if (!meta || !meta[0])
        return qs_errf(e,
                       "%s records no data file (metadata qscope.data); name it as "
                       "MODEL:DATA.csv",
                       model);
    if (readable(meta)) {
        snprintf(buf, n, "%s", meta);
        return 0;
    }
    const char *base = strrchr(meta, '/');
    base = base ? base + 1 : meta;
    char dir[512];
    snprintf(dir, sizeof dir, "%s", model);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    char cand[1100];
    snprintf(cand, sizeof cand, "%s/%s", dir, base);
    if (readable(cand)) {
        snprintf(buf, n, "%s", cand);
        return 0;
    }
    snprintf(cand, sizeof cand, "%s/../%s", dir, base);
    if (readable(cand)) {
        snprintf(buf, n, "%s", cand);
        return 0;
    }
    return qs_errf(e,
                   "%s: its data file %s (metadata qscope.data) is not readable, nor %s beside "
                   "the model or one folder up",
                   model, meta, base);
}

void qs_q1_free(struct qs_q1 *q)
{
    if (!q)
        return;
    free(q->settings);
    free(q->layers);
    memset(q, 0, sizeof *q);
}

/* Splits "MODEL:DATA.csv" (when the part after the last ':' ends in .csv). */
static void split_model_arg(const char *arg, char *model, size_t nm, char *data, size_t nd)
{
    const char *colon = strrchr(arg, ':');
    size_t l = colon ? strlen(colon + 1) : 0;
    if (colon && l > 4 &&
        (!strcmp(colon + 1 + l - 4, ".csv") || !strcmp(colon + 1 + l - 4, ".txt") ||
         !strcmp(colon + 1 + l - 4, ".bin"))) {
        snprintf(model, nm, "%.*s", (int)(colon - arg), arg);
        snprintf(data, nd, "%s", colon + 1);
    } else {
        snprintf(model, nm, "%s", arg);
        data[0] = 0;
    }
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Re-draws calibration and test from the samples outside the training split, keeping sizes. */
static int redraw_heldout(struct qs_split *s, uint64_t seed, qs_err *e)
{
    int nc = s->n_calib, nt = s->n_test, n = nc + nt;
    int *pool = malloc((size_t)(n > 0 ? n : 1) * sizeof *pool);
    if (!pool)
        return qs_errf(e, "out of memory");
    memcpy(pool, s->calib, (size_t)nc * sizeof *pool);
    memcpy(pool + nc, s->test, (size_t)nt * sizeof *pool);
    /* sorted first, so that the draw depends only on the seed and the held-out set */
    qsort(pool, (size_t)n, sizeof *pool, cmp_int);
    qs_rng r;
    qs_rng_seed(&r, seed ^ 0x51ed5eedULL);
    qs_rng_shuffle(&r, pool, n);
    memcpy(s->calib, pool, (size_t)nc * sizeof *pool);
    memcpy(s->test, pool + nc, (size_t)nt * sizeof *pool);
    free(pool);
    return 0;
}

/* The setting's task figures on its bench as quantized: float and quantized accuracy, the gate,
 * bits per weight (either family). */
static int setting_eval(struct qs_bench *b, struct qs_q1_setting *st, qs_err *e)
{
    struct qs_eval ev;
    if (qs_bench_eval(b, &ev, e) < 0)
        return -1;
    st->float_acc = ev.f.acc;
    st->quant_acc = ev.q.acc;
    st->gate_pass = ev.gate_pass;
    st->bits_per_weight = ev.bits_w;
    return 0;
}

/* One setting's layers. */
static int run_setting(struct qs_bench *b, const struct qs_q1_opts *o, struct qs_q1_setting *st,
                       struct qs_q1_layer *ly, qs_err *e)
{
    int L = qs_bench_nunits(b);
    if (setting_eval(b, st, e) < 0)
        return -1;
    struct qs_layer_err *err = qs_calloc((size_t)L, sizeof *err);
    if (!err)
        return qs_errf(e, "out of memory");
    if (qs_analysis_errors(b, err, e) < 0) {
        free(err);
        return -1;
    }
    for (int i = 0; i < L; i++) {
        struct qs_q1_layer *r = &ly[i];
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        memset(r, 0, sizeof *r);
        r->index = i;
        snprintf(r->name, sizeof r->name, "%s", l->name);
        r->kind = QS_Q1_MLP;
        r->nsites = 1;
        r->block = i;
        r->third = 3 * i / L;
        r->d = l->out;
        r->in = l->in;
        r->w_rel_err = err[i].w_rel_err;
        r->preact_rel_mse = err[i].preact_rel_mse;
        struct qs_spectrum sp;
        if (qs_analysis_spectrum(b, i, QS_SPEC_PREACT, QS_SCALE_NONE, 0, &sp, e) < 0)
            goto fail;
        int k = (int)ceil(o->top_frac * l->out - 1e-9);
        if (k < 1)
            k = 1;
        if (k > sp.nsv)
            k = sp.nsv;
        double *left = malloc((size_t)(k + 1) * sizeof *left);
        if (!left) {
            qs_spectrum_free(&sp);
            qs_errf(e, "out of memory");
            goto fail;
        }
        qs_energy_left(sp.sv, sp.nsv, sp.st.fro2, k, left);
        r->correctability = sp.st.zero ? NAN : 1.0 - left[k];
        free(left);
        qs_spectrum_free(&sp);
        if (qs_analysis_correct(b, i, QS_CORR_LINEAR, 0, "float", -1.0, NULL, e) < 0)
            goto fail;
        r->r_float = b->ls[i].corr.recovery;
        r->lambda = b->ls[i].corr.lambda;
        r->rank_kept = b->ls[i].corr.rank_kept;
        qs_analysis_uncorrect(b, i);
        if (qs_analysis_correct(b, i, QS_CORR_LINEAR, 0, o->prec, -1.0, NULL, e) < 0)
            goto fail;
        r->r_q = b->ls[i].corr.recovery;
        qs_analysis_uncorrect(b, i);
    }
    free(err);
    double *a = malloc((size_t)L * sizeof *a), *c = malloc((size_t)L * sizeof *c);
    if (!a || !c) {
        free(a);
        free(c);
        return qs_errf(e, "out of memory");
    }
    for (int i = 0; i < L; i++)
        a[i] = ly[i].r_float;
    st->med_r_float = qs_median(a, L);
    for (int i = 0; i < L; i++) {
        a[i] = ly[i].r_q;
        c[i] = ly[i].correctability;
    }
    st->med_r_q = qs_median(a, L);
    st->spearman = qs_spearman(c, a, L);
    st->verdict = qs_q1_verdict(st->med_r_q, st->spearman);
    st->nq1 = L;
    free(a);
    free(c);
    return 0;
fail:
    free(err);
    return -1;
}

/* Rows of the concatenated pre-activations of sites[0..m) on split sp (quant 0: float path, 1:
 * quantized path, no correction in place): *y (n, D) malloc'd. */
static int group_preact(struct qs_bench *b, enum qs_split_id sp, int quant, const int *sites, int m,
                        int D, float **y, int *n, qs_err *e)
{
    *y = NULL;
    float *out = NULL;
    int off = 0;
    for (int g = 0; g < m; g++) {
        float *ys = NULL;
        int ns = 0;
        struct qs_unit u;
        qs_bench_unit(b, sites[g], &u);
        if (qs_bench_preact(b, sp, quant, sites[g], &ys, &ns, e) < 0) {
            free(out);
            return -1;
        }
        if (!out && !(out = qs_alloc((size_t)ns * D, sizeof(float), "the pre-activations", e))) {
            free(ys);
            return -1;
        }
        for (int r = 0; r < ns; r++)
            memcpy(out + (size_t)r * D + off, ys + (size_t)r * u.out,
                   (size_t)u.out * sizeof(float));
        off += u.out;
        *n = ns;
        free(ys);
    }
    *y = out;
    return 0;
}

/* The held-out recovery of the ridge map from yq to yf fitted on calibration, its weights at
 * prec; lambda and rank of the fit into *lambda / *rank (may be NULL). */
static int group_recovery(const float *yq_c, const float *yf_c, int nc, const float *yq_t,
                          const float *yf_t, int nt, int D, const char *prec, double *r,
                          double *lambda, int *rank, qs_err *e)
{
    struct qs_corr c;
    memset(&c, 0, sizeof c);
    float *yh = qs_alloc((size_t)nt * D, sizeof(float), "the pre-activations", e);
    if (!yh || qs_corr_fit_linear(yq_c, yf_c, nc, D, -1.0, prec, &c, e) < 0) {
        free(yh);
        qs_corr_clear(&c);
        return -1;
    }
    qs_linear(yq_t, nt, D, c.amap, c.mb, D, yh); /* yq A^T + mb, as the bench applies it */
    *r = qs_recovery(yf_t, yq_t, yh, (size_t)nt * D, NULL);
    if (lambda)
        *lambda = c.lambda;
    if (rank)
        *rank = c.rank_kept;
    free(yh);
    qs_corr_clear(&c);
    return 0;
}

/* The largest width a site's map is fitted on (a vocabulary head is not); as correct.c. */
#define Q1_MAP_MAX_OUT 4096

/* One row of a transformer setting: the sites[0..m) taken together. */
static int lm_row(struct qs_bench *b, const struct qs_q1_opts *o, const int *sites, int m,
                  struct qs_q1_layer *r, qs_err *e)
{
    int D = 0, in = 0;
    double wnum = 0, wden = 0;
    for (int g = 0; g < m; g++) {
        struct qs_unit u;
        qs_bench_unit(b, sites[g], &u);
        D += u.out;
        in = u.in;
        const float *wq = b->ls[sites[g]].wquant ? qs_site_wq(b, sites[g], e) : NULL;
        const float *uw = qs_bench_w(b, sites[g], e);
        if ((b->ls[sites[g]].wquant && !wq) || !uw)
            return -1;
        size_t nw = (size_t)u.out * u.in;
        for (size_t j = 0; j < nw; j++) {
            double d = wq ? (double)uw[j] - wq[j] : 0.0;
            wnum += d * d;
            wden += (double)uw[j] * uw[j];
        }
    }
    r->d = D;
    r->in = in;
    r->nsites = m;
    r->index = sites[0];
    r->w_rel_err = wden > 0 ? sqrt(wnum / wden) : 0.0;
    float *yf_c = NULL, *yq_c = NULL, *yf_t = NULL, *yq_t = NULL, *err = NULL;
    double *sv = NULL, *left = NULL;
    int nc = 0, nt = 0, rc = -1;
    if (group_preact(b, QS_CALIB, 0, sites, m, D, &yf_c, &nc, e) < 0 ||
        group_preact(b, QS_CALIB, 1, sites, m, D, &yq_c, &nc, e) < 0 ||
        group_preact(b, QS_TEST, 0, sites, m, D, &yf_t, &nt, e) < 0 ||
        group_preact(b, QS_TEST, 1, sites, m, D, &yq_t, &nt, e) < 0)
        goto out;
    size_t len = (size_t)nc * D;
    double num = 0, den = 0;
    if (!(err = qs_alloc(len, sizeof(float), "the pre-activation error", e)))
        goto out;
    for (size_t j = 0; j < len; j++) {
        err[j] = yq_c[j] - yf_c[j];
        num += (double)err[j] * err[j];
        den += (double)yf_c[j] * yf_c[j];
    }
    r->preact_rel_mse = den > 0 ? num / den : 0.0;
    /* correctability: 1 - left[k], k = ceil(top_frac D), of the calibration error (nc, D) */
    int nsv = nc < D ? nc : D;
    int k = (int)ceil(o->top_frac * D - 1e-9);
    if (k < 1)
        k = 1;
    if (k > nsv)
        k = nsv;
    sv = qs_calloc((size_t)(nsv > 0 ? nsv : 1), sizeof *sv);
    left = qs_calloc((size_t)k + 1, sizeof *left);
    if (!sv || !left) {
        qs_errf(e, "out of memory");
        goto out;
    }
    if (qs_svd_values(err, nc, D, sv, e) < 0)
        goto out;
    qs_energy_left(sv, nsv, num, k, left);
    r->correctability = num > 0 ? 1.0 - left[k] : NAN;
    if (D > Q1_MAP_MAX_OUT || nc <= D) { /* no map: an "other" site only (checked by caller) */
        r->r_float = r->r_q = r->lambda = NAN;
        r->rank_kept = 0;
        rc = 0;
        goto out;
    }
    if (group_recovery(yq_c, yf_c, nc, yq_t, yf_t, nt, D, "float", &r->r_float, &r->lambda,
                       &r->rank_kept, e) < 0 ||
        group_recovery(yq_c, yf_c, nc, yq_t, yf_t, nt, D, o->prec, &r->r_q, NULL, NULL, e) < 0)
        goto out;
    rc = 0;
out:
    free(yf_c);
    free(yq_c);
    free(yf_t);
    free(yq_t);
    free(err);
    free(sv);
    free(left);
    return rc;
}

/* The rows of a transformer: per block, the attention Q1 layer (q|k|v), the attention output,
 * the FFN Q1 layer (gate|up or c_fc) and the down projection, then the head. Returns the number
 * of rows (at most nunits). */
static int lm_plan(const struct qs_lm *m, int (*sites)[3], int *nsites, enum qs_q1_kind *kind,
                   int *block)
{
    int n = 0;
    int per = m->family == QS_LM_GPT2 ? 4 : 7;
    for (int l = 0; l < m->n_layer; l++) {
        int f = l * per;
        if (m->family == QS_LM_GPT2) {
            static const enum qs_q1_kind k4[4] = {QS_Q1_ATTN, QS_Q1_SITE, QS_Q1_FFN, QS_Q1_SITE};
            for (int j = 0; j < 4; j++) {
                sites[n][0] = f + j;
                nsites[n] = 1;
                kind[n] = k4[j];
                block[n++] = l;
            }
        } else {
            /* q, k, v | o | gate, up | down */
            static const int first[4] = {0, 3, 4, 6}, cnt[4] = {3, 1, 2, 1};
            static const enum qs_q1_kind k4[4] = {QS_Q1_ATTN, QS_Q1_SITE, QS_Q1_FFN, QS_Q1_SITE};
            for (int j = 0; j < 4; j++) {
                for (int g = 0; g < cnt[j]; g++)
                    sites[n][g] = f + first[j] + g;
                nsites[n] = cnt[j];
                kind[n] = k4[j];
                block[n++] = l;
            }
        }
    }
    for (int s = m->n_layer * per; s < m->nsites; s++) { /* the head */
        sites[n][0] = s;
        nsites[n] = 1;
        kind[n] = QS_Q1_SITE;
        block[n++] = m->n_layer;
    }
    return n;
}

/* The name of a row: the site's, or the group's ("model.layers.0.self_attn.q_proj+k_proj+v_proj").
 */
static void row_name(struct qs_bench *b, const int *sites, int m, char *buf, size_t n)
{
    struct qs_unit u;
    qs_bench_unit(b, sites[0], &u);
    snprintf(buf, n, "%s", u.name);
    for (int g = 1; g < m; g++) {
        qs_bench_unit(b, sites[g], &u);
        const char *dot = strrchr(u.name, '.');
        size_t l = strlen(buf);
        snprintf(buf + l, n - l, "+%s", dot ? dot + 1 : u.name);
    }
}

static int lm_nrows(const struct qs_lm *m)
{
    int per = m->family == QS_LM_GPT2 ? 4 : 7;
    return 4 * m->n_layer + (m->nsites - per * m->n_layer);
}

/* One transformer setting: its Q1 layers and its other sites. */
static int run_setting_lm(struct qs_bench *b, const struct qs_q1_opts *o, struct qs_q1_setting *st,
                          struct qs_q1_layer *ly, qs_err *e)
{
    const struct qs_lm *m = b->lm;
    if (setting_eval(b, st, e) < 0)
        return -1;
    if (qs_bench_update(b, e) < 0)
        return -1;
    int R = lm_nrows(m);
    int(*sites)[3] = qs_calloc((size_t)R, sizeof *sites);
    int *ns = qs_calloc((size_t)R, sizeof *ns), *blk = qs_calloc((size_t)R, sizeof *blk);
    enum qs_q1_kind *kind = qs_calloc((size_t)R, sizeof *kind);
    double *a = qs_calloc((size_t)R, sizeof *a), *c = qs_calloc((size_t)R, sizeof *c);
    int rc = -1;
    if (!sites || !ns || !blk || !kind || !a || !c) {
        qs_errf(e, "out of memory");
        goto out;
    }
    lm_plan(m, sites, ns, kind, blk);
    int nq = 0;
    for (int i = 0; i < R; i++) {
        struct qs_q1_layer *r = &ly[i];
        memset(r, 0, sizeof *r);
        row_name(b, sites[i], ns[i], r->name, sizeof r->name);
        r->kind = kind[i];
        r->block = blk[i];
        r->third = blk[i] >= m->n_layer ? 2 : 3 * blk[i] / m->n_layer;
        if (lm_row(b, o, sites[i], ns[i], r, e) < 0)
            goto out;
        if (r->kind != QS_Q1_SITE && isnan(r->r_float)) {
            qs_errf(e,
                    "%s: a %dx%d linear map needs at most %d outputs and more than %d "
                    "calibration rows (calib_tokens=N in a study, set calib tokens=N otherwise)",
                    r->name, r->d, r->d, Q1_MAP_MAX_OUT, r->d);
            goto out;
        }
        if (r->kind != QS_Q1_SITE)
            nq++;
        if (o->cancel && *o->cancel) {
            qs_errf(e, "study q1: cancelled");
            goto out;
        }
    }
    st->nq1 = nq;
    int k = 0;
    for (int i = 0; i < R; i++)
        if (ly[i].kind != QS_Q1_SITE)
            a[k++] = ly[i].r_float;
    st->med_r_float = qs_median(a, k);
    k = 0;
    for (int i = 0; i < R; i++)
        if (ly[i].kind != QS_Q1_SITE) {
            c[k] = ly[i].correctability;
            a[k++] = ly[i].r_q;
        }
    st->med_r_q = qs_median(a, k);
    st->spearman = qs_spearman(c, a, k);
    st->verdict = qs_q1_verdict(st->med_r_q, st->spearman);
    rc = 0;
out:
    free(sites);
    free(ns);
    free(blk);
    free(kind);
    free(a);
    free(c);
    return rc;
}

static int add_study_rule(const struct qs_q1_opts *o, struct qs_bench *b, qs_err *e)
{
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    r.fmt = b->lm && o->lm_fmt ? *o->lm_fmt : o->fmt;
    r.opt = b->lm && o->lm_opt ? *o->lm_opt : o->opt;
    r.roles = QS_ROLE_W;
    r.amode = QS_AMODE_DYNAMIC;
    return qs_bench_add_rule(b, &r, NULL, e);
}

/* A transformer: a Hugging Face folder (or GGUF file) and its token data, DIR:DATA. */
static int open_lm_bench(const struct qs_q1_opts *o, const char *model, const char *data,
                         struct qs_bench **out, qs_err *e)
{
    if (!data[0])
        return qs_errf(e,
                       "%s: a transformer's setting names its token data: models=DIR:DATA.txt "
                       "(or .bin)",
                       model);
    char mfile[4096], dfile[4096];
    if (model[0] == '/' || qs_bundle_path(model, mfile, sizeof mfile, NULL) < 0)
        snprintf(mfile, sizeof mfile, "%s", model);
    if (data[0] == '/' || qs_bundle_path(data, dfile, sizeof dfile, NULL) < 0)
        snprintf(dfile, sizeof dfile, "%s", data);
    struct qs_lm *m = NULL;
    struct qs_tokens *t = NULL;
    struct qs_bench *b = qs_bench_new();
    if (!b)
        return qs_errf(e, "out of memory");
    if (qs_lm_load(mfile, &m, e) < 0 || qs_bench_set_lm(b, m, mfile, e) < 0 ||
        qs_tokens_load(dfile, &t, e) < 0 || qs_bench_set_tokens(b, t, dfile, e) < 0 ||
        qs_bench_lm_ready(b, e) < 0 ||
        (o->calib_tokens > 0 && qs_bench_set_calib_tokens(b, o->calib_tokens, e) < 0) ||
        add_study_rule(o, b, e) < 0) {
        if (!b->lm)
            qs_lm_free(m);
        if (b->tokens != t)
            qs_tokens_free(t);
        qs_bench_free(b);
        return qs_err_prefix(e, model);
    }
    *out = b;
    return 0;
}

static int is_lm_path(const char *path)
{
    char p[4200], f[4096];
    if (path[0] == '/' || qs_bundle_path(path, f, sizeof f, NULL) < 0)
        snprintf(f, sizeof f, "%s", path);
    size_t l = strlen(f);
    if (l > 5 && !strcmp(f + l - 5, ".gguf"))
        return 1;
    snprintf(p, sizeof p, "%s/config.json", f);
    return access(p, R_OK) == 0;
}

/* Loads model and data into a fresh bench with the study's rule. */
static int open_bench(const struct qs_q1_opts *o, const char *arg, struct qs_bench **out,
                      char *model, size_t nm, char *data, size_t nd, qs_err *e)
{
    *out = NULL;
    split_model_arg(arg, model, nm, data, nd);
    if (is_lm_path(model))
        return open_lm_bench(o, model, data, out, e);
    struct qs_mlp *m = NULL;
    struct qs_dataset *d = NULL;
    /* Bundled files (datasets/...) resolve wherever qscope is installed; the results name them
     * as written (the model's metadata names its data so), so a study replays from anywhere. */
    char mfile[4096], dfile[4096];
    if (model[0] == '/' || qs_bundle_path(model, mfile, sizeof mfile, NULL) < 0)
        snprintf(mfile, sizeof mfile, "%s", model);
    if (qs_mlp_load(mfile, QS_ACT_RELU, 0, &m, e) < 0)
        return -1;
    const char *meta = qs_mlp_get_meta(m, "qscope.data");
    if (!data[0] && meta && meta[0] && meta[0] != '/' &&
        qs_bundle_path(meta, dfile, sizeof dfile, NULL) == 0) {
        snprintf(data, nd, "%s", meta);
    } else if (!data[0]) {
        if (qs_q1_data_path(mfile, meta, data, nd, e) < 0) {
            qs_mlp_free(m);
            return -1;
        }
        snprintf(dfile, sizeof dfile, "%s", data);
    } else if (data[0] == '/' || qs_bundle_path(data, dfile, sizeof dfile, NULL) < 0) {
        snprintf(dfile, sizeof dfile, "%s", data);
    }
    if (qs_dataset_load_csv(dfile, NULL, &d, e) < 0) {
        qs_mlp_free(m);
        return -1;
    }
    struct qs_bench *b = qs_bench_new();
    if (!b) {
        qs_mlp_free(m);
        qs_dataset_free(d);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_model(b, m, mfile, e) < 0 || qs_bench_set_data(b, d, dfile, e) < 0 ||
        qs_bench_ready(b, e) < 0 || add_study_rule(o, b, e) < 0) {
        qs_bench_free(b);
        return qs_err_prefix(e, model);
    }
    *out = b;
    return 0;
}

int qs_q1_setting_files(const struct qs_q1_opts *o, const char *arg, char *model, size_t nm,
                        char *data, size_t nd, qs_err *e)
{
    struct qs_bench *b;
    if (open_bench(o, arg, &b, model, nm, data, nd, e) < 0)
        return -1;
    qs_bench_free(b);
    return 0;
}

void qs_study_setting_words(const struct qs_q1_opts *o, const struct qs_bench *b, char arch[16],
                            char format[16], char options[200])
{
    const struct qs_format *f = b->lm && o->lm_fmt ? o->lm_fmt : &o->fmt;
    const struct qs_qopts *op = b->lm && o->lm_opt ? o->lm_opt : &o->opt;
    snprintf(arch, 16, "%s", b->lm ? b->lm->arch : "mlp");
    snprintf(format, 16, "%s", f->name);
    qs_qopts_format(f, op, options, 200);
}

int qs_study_open(const struct qs_q1_opts *o, const char *arg, uint64_t seed, struct qs_bench **out,
                  char *model, size_t nm, char *data, size_t nd, qs_err *e)
{
    struct qs_bench *b;
    if (open_bench(o, arg, &b, model, nm, data, nd, e) < 0)
        return -1;
    b->seed = seed;
    if (!b->lm && (qs_bench_resplit(b, b->split_seed, b->f_train, b->f_calib, e) < 0 ||
                   redraw_heldout(&b->split, seed, e) < 0)) {
        qs_bench_free(b);
        return qs_err_prefix(e, model);
    }
    *out = b;
    return 0;
}

/* The study's aggregates from its settings and layer rows: one function for the in-process run
 * and for `study merge`, which rebuilds the rows from per-setting records, so that both give the
 * same figures bit for bit. */
int qs_q1_aggregate(struct qs_q1 *q, qs_err *e)
{
    memset(&q->r_float, 0, sizeof q->r_float);
    memset(&q->r_q, 0, sizeof q->r_q);
    q->nsupported = q->nrefuted = q->nunclear = q->nexcluded = q->nlm = 0;
    /* the Q1 layers of the settings passing the gate */
    int n = 0;
    for (int i = 0; i < q->nlayers; i++)
        n += q->layers[i].kind != QS_Q1_SITE && q->settings[q->layers[i].setting].gate_pass;
    struct qs_q1_layer **in = malloc((size_t)(n > 0 ? n : 1) * sizeof *in);
    double *a = malloc((size_t)(n > 0 ? n : 1) * sizeof *a);
    double *c = malloc((size_t)(n > 0 ? n : 1) * sizeof *c);
    if (!in || !a || !c) {
        free(in);
        free(a);
        free(c);
        return qs_errf(e, "out of memory");
    }
    n = 0;
    for (int i = 0; i < q->nlayers; i++)
        if (q->layers[i].kind != QS_Q1_SITE && q->settings[q->layers[i].setting].gate_pass)
            in[n++] = &q->layers[i];
    for (int i = 0; i < n; i++)
        a[i] = in[i]->r_float;
    qs_q1_stats_of(a, n, &q->r_float);
    for (int t = 0; t < 3; t++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (in[i]->third == t)
                a[k++] = in[i]->r_float;
        q->depth_float[t] = k ? qs_median(a, k) : NAN;
        k = 0;
        for (int i = 0; i < n; i++)
            if (in[i]->third == t)
                a[k++] = in[i]->r_q;
        q->depth_q[t] = k ? qs_median(a, k) : NAN;
        q->depth_n[t] = k;
    }
    for (int t = 0; t < 2; t++) {
        enum qs_q1_kind kd = t ? QS_Q1_FFN : QS_Q1_ATTN;
        int k = 0;
        for (int i = 0; i < n; i++)
            if (in[i]->kind == kd)
                a[k++] = in[i]->r_q;
        qs_q1_stats_of(a, k, &q->sub_q[t]);
        k = 0;
        for (int i = 0; i < n; i++)
            if (in[i]->kind == kd)
                a[k++] = in[i]->r_float;
        qs_q1_stats_of(a, k, &q->sub_float[t]);
    }
    for (int i = 0; i < n; i++) {
        a[i] = in[i]->r_float;
        c[i] = in[i]->correctability;
    }
    q->pooled_spearman_float = qs_spearman(c, a, n);
    for (int i = 0; i < n; i++)
        a[i] = in[i]->r_q;
    qs_q1_stats_of(a, n, &q->r_q);
    q->pooled_spearman = qs_spearman(c, a, n);
    free(in);
    free(a);
    free(c);
    for (int s = 0; s < q->nsettings; s++) {
        const struct qs_q1_setting *st = &q->settings[s];
        q->nlm += st->lm;
        if (!st->gate_pass) {
            q->nexcluded++;
            continue;
        }
        q->nsupported += !strcmp(st->verdict, "supported");
        q->nrefuted += !strcmp(st->verdict, "refuted");
        q->nunclear += !strcmp(st->verdict, "unclear");
    }
    return 0;
}

int qs_study_q1(const struct qs_q1_opts *o, struct qs_q1 *q, qs_err *e)
{
    memset(q, 0, sizeof *q);
    if (o->nmodels < 1 || o->nseeds < 1)
        return qs_errf(e, "study q1: need at least one model and one seed");
    int caps = o->nmodels * o->nseeds, capl = 0;
    q->settings = qs_calloc((size_t)caps, sizeof *q->settings);
    if (!q->settings)
        return qs_errf(e, "out of memory");
    for (int mi = 0; mi < o->nmodels; mi++) {
        struct qs_bench *b;
        char model[512], data[512];
        if (open_bench(o, o->models[mi], &b, model, sizeof model, data, sizeof data, e) < 0)
            goto fail;
        int L = b->lm ? lm_nrows(b->lm) : qs_bench_nunits(b);
        uint64_t own = b->split_seed;
        double ft = b->f_train, fc = b->f_calib;
        struct qs_q1_layer *nl = realloc(q->layers, (size_t)(capl + o->nseeds * L) * sizeof *nl);
        if (!nl) {
            qs_bench_free(b);
            qs_errf(e, "out of memory");
            goto fail;
        }
        q->layers = nl;
        capl += o->nseeds * L;
        for (int si = 0; si < o->nseeds; si++) {
            struct qs_q1_setting *st = &q->settings[q->nsettings];
            memset(st, 0, sizeof *st);
            snprintf(st->model, sizeof st->model, "%s", model);
            snprintf(st->data, sizeof st->data, "%s", data);
            st->seed = o->seeds[si];
            st->nlayers = L;
            st->first = q->nlayers;
            st->lm = b->lm != NULL;
            qs_study_setting_words(o, b, st->arch, st->format, st->options);
            b->seed = o->seeds[si];
            /* an MLP's seed re-draws its held-out rows; a transformer's token split is fixed
             * (calibration: the first windows; held out: the last 10 %), so its seed only seeds
             * the session's random draws */
            if (!b->lm && (qs_bench_resplit(b, own, ft, fc, e) < 0 ||
                           redraw_heldout(&b->split, o->seeds[si], e) < 0)) {
                qs_bench_free(b);
                goto fail;
            }
            if (o->progress) { /* the setting starting, named as the report names it */
                const char *base = strrchr(model, '/');
                char what[200];
                snprintf(what, sizeof what, "study q1 %s seed %llu", base ? base + 1 : model,
                         (unsigned long long)o->seeds[si]);
                o->progress(o->progress_ctx, what, (double)q->nsettings / caps);
            }
            if ((b->lm ? run_setting_lm(b, o, st, &q->layers[q->nlayers], e)
                       : run_setting(b, o, st, &q->layers[q->nlayers], e)) < 0) {
                qs_bench_free(b);
                qs_err_prefix(e, model);
                goto fail;
            }
            for (int i = 0; i < L; i++)
                q->layers[q->nlayers + i].setting = q->nsettings;
            q->nlayers += L;
            q->nsettings++;
            if (o->progress)
                o->progress(o->progress_ctx, "study q1", (double)q->nsettings / caps);
            if (o->cancel && *o->cancel) {
                qs_bench_free(b);
                qs_errf(e, "study q1: cancelled");
                goto fail;
            }
        }
        qs_bench_free(b);
    }
    if (qs_q1_aggregate(q, e) < 0)
        goto fail;
    return 0;
fail:
    qs_q1_free(q);
    return -1;
}

/* ---- CSV ----------------------------------------------------------------------------------- */

FILE *qs_study_open_csv(qs_outfile *of, const char *prefix, const char *what, const char *study,
                        const char *head, qs_err *e)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s-%s.csv", prefix, what) >= sizeof path) {
        qs_errf(e, "study %s: csv= prefix is too long (%zu bytes)", study, strlen(prefix));
        return NULL;
    }
    if (qs_out_open(of, path, e) < 0)
        return NULL;
    fprintf(of->f, "# qscope %s study %s %s: %s\n", QS_VERSION, study, what, head);
    return of->f;
}

void qs_study_csv_setting_header(FILE *f)
{
    const char *h[] = {"model", "data", "seed", "arch", "format", "options", "gate", "excluded"};
    for (size_t k = 0; k < sizeof h / sizeof *h; k++)
        qs_csv_field(f, h[k], k == 0);
}

void qs_study_csv_setting(FILE *f, const char *model, const char *data, uint64_t seed,
                          const char *arch, const char *format, const char *options, int gate_pass)
{
    qs_csv_field(f, model, 1);
    qs_csv_field(f, data, 0);
    qs_csv_int(f, (long long)seed);
    qs_csv_field(f, arch, 0);
    qs_csv_field(f, format, 0);
    qs_csv_field(f, options, 0);
    qs_csv_field(f, gate_pass ? "pass" : "fail", 0);
    qs_csv_int(f, !gate_pass);
}

static FILE *open_csv(qs_outfile *of, const char *prefix, const char *what,
                      const struct qs_q1_opts *o, qs_err *e)
{
    char opts[200] = "", head[400];
    qs_qopts_format(&o->fmt, &o->opt, opts, sizeof opts);
    snprintf(head, sizeof head,
             "regime=weight-only format=%s %s prec=%s correctability=top %.3g of directions",
             o->fmt.name, opts, o->prec, o->top_frac);
    return qs_study_open_csv(of, prefix, what, "q1", head, e);
}

int qs_q1_write_csv(const struct qs_q1 *q, const struct qs_q1_opts *o, const char *prefix,
                    qs_err *e)
{
    char rq[16];
    qs_outfile of;
    snprintf(rq, sizeof rq, "r_lin_%s",
             !strcmp(o->prec, "int8")   ? "q8"
             : !strcmp(o->prec, "int4") ? "q4"
                                        : "prec_float");
    FILE *f = open_csv(&of, prefix, "layers", o, e);
    if (!f)
        return -1;
    const char *hl[] = {"model",          "data",           "seed",        "layer",
                        "index",          "depth",          "d",           "w_rel_err",
                        "preact_rel_mse", "correctability", "r_lin_float", rq,
                        "lambda",         "rank_kept",      "kind",        "block"};
    for (size_t k = 0; k < sizeof hl / sizeof *hl; k++)
        qs_csv_field(f, hl[k], k == 0);
    fputc('\n', f);
    static const char *const thirds[] = {"early", "mid", "late"};
    for (int i = 0; i < q->nlayers; i++) {
        const struct qs_q1_layer *l = &q->layers[i];
        const struct qs_q1_setting *s = &q->settings[l->setting];
        qs_csv_field(f, s->model, 1);
        qs_csv_field(f, s->data, 0);
        qs_csv_int(f, (long long)s->seed);
        qs_csv_field(f, l->name, 0);
        qs_csv_int(f, l->index);
        qs_csv_field(f, thirds[l->third], 0);
        qs_csv_int(f, l->d);
        qs_csv_num(f, l->w_rel_err);
        qs_csv_num(f, l->preact_rel_mse);
        qs_csv_num(f, l->correctability);
        qs_csv_num(f, l->r_float);
        qs_csv_num(f, l->r_q);
        qs_csv_num(f, l->lambda);
        qs_csv_int(f, l->rank_kept);
        qs_csv_field(f, qs_q1_kind_name(l->kind), 0);
        qs_csv_int(f, l->block);
        fputc('\n', f);
    }
    if (qs_out_commit(&of, e) < 0)
        return -1;
    if (!(f = open_csv(&of, prefix, "settings", o, e)))
        return -1;
    char mq[32];
    snprintf(mq, sizeof mq, "median_%s", rq);
    const char *hs[] = {"model",
                        "data",
                        "seed",
                        "layers",
                        "float_acc",
                        "quant_acc",
                        "bits_per_weight",
                        "gate",
                        "median_r_lin_float",
                        mq,
                        "spearman",
                        "verdict"};
    for (size_t k = 0; k < sizeof hs / sizeof *hs; k++)
        qs_csv_field(f, hs[k], k == 0);
    fputc('\n', f);
    for (int i = 0; i < q->nsettings; i++) {
        const struct qs_q1_setting *s = &q->settings[i];
        qs_csv_field(f, s->model, 1);
        qs_csv_field(f, s->data, 0);
        qs_csv_int(f, (long long)s->seed);
        qs_csv_int(f, s->nlayers);
        qs_csv_num(f, s->float_acc);
        qs_csv_num(f, s->quant_acc);
        qs_csv_num(f, s->bits_per_weight);
        qs_csv_field(f, s->gate_pass ? "pass" : "fail", 0);
        qs_csv_num(f, s->med_r_float);
        qs_csv_num(f, s->med_r_q);
        qs_csv_num(f, s->spearman);
        qs_csv_field(f, s->verdict, 0);
        fputc('\n', f);
    }
    if (qs_out_commit(&of, e) < 0)
        return -1;
    /* master summary: one row per setting, over its Q1 layers */
    if (!(f = open_csv(&of, prefix, "master_summary", o, e)))
        return -1;
    char k1[40], k2[40], k3[40], k4[40];
    snprintf(k1, sizeof k1, "mean_%s", rq);
    snprintf(k2, sizeof k2, "median_%s", rq);
    snprintf(k3, sizeof k3, "pos_frac_%s", rq);
    snprintf(k4, sizeof k4, "frac_gt_02_%s", rq);
    qs_study_csv_setting_header(f);
    const char *hm[] = {"q1_layers",
                        "other_sites",
                        "float_acc",
                        "quant_acc",
                        "bits_per_weight",
                        "mean_r_lin_float",
                        "median_r_lin_float",
                        "pos_frac_r_lin_float",
                        "frac_gt_02_r_lin_float",
                        k1,
                        k2,
                        k3,
                        k4,
                        "spearman",
                        "spearman_r_lin_float",
                        "verdict"};
    for (size_t k = 0; k < sizeof hm / sizeof *hm; k++)
        qs_csv_field(f, hm[k], 0);
    fputc('\n', f);
    double *va = malloc((size_t)(q->nlayers > 0 ? q->nlayers : 1) * sizeof *va);
    double *vc = malloc((size_t)(q->nlayers > 0 ? q->nlayers : 1) * sizeof *vc);
    if (!va || !vc) {
        free(va);
        free(vc);
        qs_out_abort(&of);
        return qs_errf(e, "out of memory");
    }
    for (int i = 0; i < q->nsettings; i++) {
        const struct qs_q1_setting *s = &q->settings[i];
        struct qs_q1_stats sf, sq;
        int n = 0;
        for (int r = s->first; r < s->first + s->nlayers; r++)
            if (q->layers[r].kind != QS_Q1_SITE) {
                va[n] = q->layers[r].r_float;
                vc[n++] = q->layers[r].correctability;
            }
        qs_q1_stats_of(va, n, &sf);
        double spf = qs_spearman(vc, va, n);
        n = 0;
        for (int r = s->first; r < s->first + s->nlayers; r++)
            if (q->layers[r].kind != QS_Q1_SITE)
                va[n++] = q->layers[r].r_q;
        qs_q1_stats_of(va, n, &sq);
        qs_study_csv_setting(f, s->model, s->data, s->seed, s->arch, s->format, s->options,
                             s->gate_pass);
        qs_csv_int(f, s->nq1);
        qs_csv_int(f, s->nlayers - s->nq1);
        qs_csv_num(f, s->float_acc);
        qs_csv_num(f, s->quant_acc);
        qs_csv_num(f, s->bits_per_weight);
        qs_csv_num(f, sf.mean);
        qs_csv_num(f, sf.median);
        qs_csv_num(f, sf.pos_frac);
        qs_csv_num(f, sf.frac_gt_02);
        qs_csv_num(f, sq.mean);
        qs_csv_num(f, sq.median);
        qs_csv_num(f, sq.pos_frac);
        qs_csv_num(f, sq.frac_gt_02);
        qs_csv_num(f, s->spearman);
        qs_csv_num(f, spf);
        qs_csv_field(f, s->verdict, 0);
        fputc('\n', f);
    }
    free(va);
    free(vc);
    return qs_out_commit(&of, e);
}
