/* study.c - the Q1 study over models and seeds, each setting on a bench of its own. */
#include "qscope/study.h"

#include <csv.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/dataset.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/tokens.h"
#include "qscope/mlp.h"
#include "qscope/spectral.h"

const char *qs_q1_verdict(double med, double sp)
{
    if (med >= 0.35 && sp >= 0.35)
        return "supported";
    if (med < 0.24 && sp < 0)
        return "refuted";
    return "unclear";
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

/* One setting's layers. */
static int run_setting(struct qs_bench *b, const struct qs_q1_opts *o, struct qs_q1_setting *st,
                       struct qs_q1_layer *ly, qs_err *e)
{
    int L = qs_bench_nunits(b);
    struct qs_eval ev;
    if (qs_bench_eval(b, &ev, e) < 0)
        return -1;
    st->float_acc = ev.f.acc;
    st->quant_acc = ev.q.acc;
    st->gate_pass = ev.gate_pass;
    st->bits_per_weight = ev.bits_w;
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
    free(a);
    free(c);
    return 0;
fail:
    free(err);
    return -1;
}

static int add_study_rule(const struct qs_q1_opts *o, struct qs_bench *b, qs_err *e)
{
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    r.fmt = o->fmt;
    r.opt = o->opt;
    r.roles = QS_ROLE_W;
    r.amode = QS_AMODE_DYNAMIC;
    return qs_bench_add_rule(b, &r, NULL, e);
}

/* A transformer: a Hugging Face folder (or GGUF file) and its token data, DIR:DATA. */
static int open_lm_bench(const struct qs_q1_opts *o, const char *model, const char *data,
                         struct qs_bench **out, qs_err *e)
{
    if (!data[0])
        return qs_errf(e, "%s: a transformer's setting names its token data: models=DIR:DATA.txt "
                          "(or .bin)", model);
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
        qs_bench_lm_ready(b, e) < 0 || add_study_rule(o, b, e) < 0) {
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
        int L = qs_bench_nunits(b);
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
            b->seed = o->seeds[si];
            /* an MLP's seed re-draws its held-out rows; a transformer's token split is fixed
             * (calibration: the first windows; held out: the last 10 %), so its seed only seeds
             * the session's random draws */
            if (!b->lm && (qs_bench_resplit(b, own, ft, fc, e) < 0 ||
                           redraw_heldout(&b->split, o->seeds[si], e) < 0)) {
                qs_bench_free(b);
                goto fail;
            }
            if (run_setting(b, o, st, &q->layers[q->nlayers], e) < 0) {
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
    /* aggregates */
    int n = q->nlayers;
    double *a = malloc((size_t)n * sizeof *a), *c = malloc((size_t)n * sizeof *c);
    if (!a || !c) {
        free(a);
        free(c);
        qs_errf(e, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++)
        a[i] = q->layers[i].r_float;
    qs_q1_stats_of(a, n, &q->r_float);
    for (int t = 0; t < 3; t++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (q->layers[i].third == t)
                a[k++] = q->layers[i].r_float;
        q->depth_float[t] = k ? qs_median(a, k) : NAN;
        k = 0;
        for (int i = 0; i < n; i++)
            if (q->layers[i].third == t)
                a[k++] = q->layers[i].r_q;
        q->depth_q[t] = k ? qs_median(a, k) : NAN;
        q->depth_n[t] = k;
    }
    for (int i = 0; i < n; i++) {
        a[i] = q->layers[i].r_q;
        c[i] = q->layers[i].correctability;
    }
    qs_q1_stats_of(a, n, &q->r_q);
    q->pooled_spearman = qs_spearman(c, a, n);
    free(a);
    free(c);
    for (int s = 0; s < q->nsettings; s++) {
        const char *v = q->settings[s].verdict;
        q->nsupported += !strcmp(v, "supported");
        q->nrefuted += !strcmp(v, "refuted");
        q->nunclear += !strcmp(v, "unclear");
    }
    return 0;
fail:
    qs_q1_free(q);
    return -1;
}

/* ---- CSV ----------------------------------------------------------------------------------- */

static void field(FILE *f, const char *s, int first)
{
    if (!first)
        fputc(',', f);
    csv_fwrite(f, s, strlen(s));
}

static void numf(FILE *f, double v)
{
    char buf[40];
    if (isfinite(v))
        snprintf(buf, sizeof buf, "%.9g", v);
    else
        buf[0] = 0;
    field(f, buf, 0);
}

static void intf(FILE *f, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    field(f, buf, 0);
}

/* Opens PREFIX-WHAT.csv through qs_outfile (a device is written in place, a regular file
 * replaced only once complete) and writes its first line: a raw "# ..." comment naming the
 * study's settings, which CSV readers skip (pandas: comment='#'). */
static FILE *open_csv(qs_outfile *of, const char *prefix, const char *what,
                      const struct qs_q1_opts *o, qs_err *e)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s-%s.csv", prefix, what) >= sizeof path) {
        qs_errf(e, "study q1: csv= prefix is too long (%zu bytes)", strlen(prefix));
        return NULL;
    }
    if (qs_out_open(of, path, e) < 0)
        return NULL;
    char opts[200] = "";
    qs_qopts_format(&o->fmt, &o->opt, opts, sizeof opts);
    fprintf(of->f,
            "# qscope %s study q1 %s: regime=weight-only format=%s %s prec=%s "
            "correctability=top %.3g of directions\n",
            QS_VERSION, what, o->fmt.name, opts, o->prec, o->top_frac);
    return of->f;
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
                        "lambda",         "rank_kept"};
    for (size_t k = 0; k < sizeof hl / sizeof *hl; k++)
        field(f, hl[k], k == 0);
    fputc('\n', f);
    static const char *const thirds[] = {"early", "mid", "late"};
    for (int i = 0; i < q->nlayers; i++) {
        const struct qs_q1_layer *l = &q->layers[i];
        const struct qs_q1_setting *s = &q->settings[l->setting];
        field(f, s->model, 1);
        field(f, s->data, 0);
        intf(f, (long long)s->seed);
        field(f, l->name, 0);
        intf(f, l->index);
        field(f, thirds[l->third], 0);
        intf(f, l->d);
        numf(f, l->w_rel_err);
        numf(f, l->preact_rel_mse);
        numf(f, l->correctability);
        numf(f, l->r_float);
        numf(f, l->r_q);
        numf(f, l->lambda);
        intf(f, l->rank_kept);
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
        field(f, hs[k], k == 0);
    fputc('\n', f);
    for (int i = 0; i < q->nsettings; i++) {
        const struct qs_q1_setting *s = &q->settings[i];
        field(f, s->model, 1);
        field(f, s->data, 0);
        intf(f, (long long)s->seed);
        intf(f, s->nlayers);
        numf(f, s->float_acc);
        numf(f, s->quant_acc);
        numf(f, s->bits_per_weight);
        field(f, s->gate_pass ? "pass" : "fail", 0);
        numf(f, s->med_r_float);
        numf(f, s->med_r_q);
        numf(f, s->spearman);
        field(f, s->verdict, 0);
        fputc('\n', f);
    }
    return qs_out_commit(&of, e);
}
