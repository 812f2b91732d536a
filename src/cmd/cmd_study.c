/* cmd_study.c - the Q1 and Q2 studies: `study q1`, `study q2`, their plans of jobs (plan=DIR)
 * and `study merge`. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/q2.h"
#include "qscope/study.h"
#include "qscope/study_record.h"

#include "cmd_fmt.h"
#include "plan.h"

/* ---- what study q1 and study q2 share: names, the gate footer ---------------------------- */

static const char *base_name(const char *p, char *buf, size_t n)
{
    const char *s = strrchr(p, '/');
    snprintf(buf, n, "%s", s ? s + 1 : p);
    char *dot = strstr(buf, ".safetensors");
    if (dot)
        *dot = 0;
    return buf;
}

static const char *as_bundled(const char *path, char *buf, size_t n)
{
    char r1[PATH_MAX], r2[PATH_MAX], res[PATH_MAX];
    if (!realpath(path, r1))
        return path;
    /* the shortest suffix that resolves there: the same name from any directory */
    for (const char *p = path + strlen(path); p > path; p--) {
        if (p[-1] != '/')
            continue;
        if (qs_bundle_path(p, res, sizeof res, NULL) == 0 && realpath(res, r2) && !strcmp(r1, r2)) {
            snprintf(buf, n, "%s", p);
            return buf;
        }
    }
    return path;
}

static void study_gate(cJSON *o, struct qs_sb *t, int n, int gates)
{
    cJSON *task = cJSON_CreateObject();
    cJSON_AddNumberToObject(task, "settings", n);
    cJSON_AddNumberToObject(task, "settings_gate_pass", gates);
    cJSON_AddItemToObject(o, "task", task);
    cJSON_AddStringToObject(o, "gate", gates == n ? "pass" : "fail");
    qs_sb_printf(t, "[weight-only; gate %s in %d of %d settings%s]", gates == n ? "pass" : "FAIL",
                 gates, n, gates == n ? "" : ": results of failing settings are flagged");
}

/* ---- what study q1 and study q2 parse alike ------------------------------------------------
 * The settings (models x seeds), the weight format with the transformers' default, and the output
 * options: parsed by one code for both studies, for the in-process run, plan= and `study merge`
 * (which parses the plan's copy of the options again), so all three study the same thing. */
enum { ST_MAXM = 64, ST_MAXS = 64 };
struct study_common {
    const char *cmd; /* "study q1" */
    const char *models, *seeds, *fmtname, *gran, *csv, *out, *plan, *models_given;
    int fmt_given;
    int loaded; /* no models=: the loaded transformer on its token data */
    struct qs_format lmf;
    struct qs_qopts lmo;
    char paths[ST_MAXM][PATH_MAX];
    const char *mp[ST_MAXM];
    int nm;
    uint64_t sv[ST_MAXS];
    int ns;
};

static void sc_init(struct study_common *s, const char *cmd)
{
    s->cmd = cmd;
    s->models = "bundled", s->seeds = "0,1,2", s->fmtname = "int3", s->gran = "tensor";
}

/* 1 when arg is one of the common options (taken), else 0. */
static int sc_opt(struct study_common *s, const char *arg)
{
    const char *v;
    if ((v = qs_opt_value(arg, "models")))
        s->models = s->models_given = v;
    else if ((v = qs_opt_value(arg, "seeds")))
        s->seeds = v;
    else if ((v = qs_opt_value(arg, "format")))
        s->fmtname = v, s->fmt_given = 1;
    else if ((v = qs_opt_value(arg, "gran")))
        s->gran = v, s->fmt_given = 1;
    else if ((v = qs_opt_value(arg, "csv")))
        s->csv = v;
    else if ((v = qs_opt_value(arg, "out")))
        s->out = v;
    else if ((v = qs_opt_value(arg, "plan")))
        s->plan = v;
    else
        return 0;
    return 1;
}

/* After the options: the output options' consistency, the weight format (*fmt, *opt; transformers
 * int4 per channel, symmetric, unless format=/gran= were given: *lm_fmt, *lm_opt), the models
 * (bundled: the nb entries of bundled, each a bundle path or PATH:DATA; with a transformer loaded
 * and no models=, that model on its token data) and the seeds. */
static int sc_finish(struct qs_ctx *c, struct study_common *s, const char *const *bundled, int nb,
                     struct qs_format *fmt, struct qs_qopts *opt, const struct qs_format **lm_fmt,
                     const struct qs_qopts **lm_opt, qs_err *e)
{
    if (s->plan && (s->csv || s->out))
        return qs_errf(e,
                       "%s: plan=DIR writes a plan and runs nothing: csv= and out= go "
                       "with `study merge DIR` (csv=) or are written by the jobs (out=)",
                       s->cmd);
    if (s->plan && !s->plan[0])
        return qs_errf(e, "%s: plan= is empty", s->cmd);
    if (qs_format_parse(s->fmtname, fmt, e) < 0)
        return -1;
    if (fmt->kind == QS_FMT_NONE)
        return qs_errf(e, "%s: format=none leaves nothing to correct", s->cmd);
    qs_qopts_default(opt);
    opt->seed = c->b->seed;
    char gt[64];
    snprintf(gt, sizeof gt, "gran=%s", s->gran);
    const struct qs_format_traits *ft = qs_format_traits(fmt);
    if (!ft->fixed_block && !ft->unscaled && qs_qopts_parse_token(opt, gt, e) < 0)
        return -1;
    if (qs_qopts_check(fmt, opt, e) < 0)
        return -1;
    if (!s->fmt_given) { /* transformers: the report's regime, int4 per channel, symmetric */
        if (qs_format_parse("int4", &s->lmf, e) < 0)
            return -1;
        qs_qopts_default(&s->lmo);
        s->lmo.seed = c->b->seed;
        s->lmo.gran = QS_GRAN_CHANNEL;
        if (qs_qopts_check(&s->lmf, &s->lmo, e) < 0)
            return -1;
        *lm_fmt = &s->lmf;
        *lm_opt = &s->lmo;
    }
    int nm = 0;
    /* by default the study is over the bundled models, which is not what a user looking at a
     * transformer expects: with one loaded, the study is of that model on its token data */
    s->loaded = !strcmp(s->models, "bundled") && c->b->lm && !s->models_given;
    if (s->loaded) {
        if (!c->b->tokens || !c->b->model_path || !c->b->data_path)
            return qs_errf(e,
                           "%s: load token data for the transformer first (load data "
                           "PATH.txt|.bin), or name models=DIR:DATA,...",
                           s->cmd);
        char mb[PATH_MAX], db[PATH_MAX];
        snprintf(s->paths[0], sizeof s->paths[0], "%s:%s",
                 as_bundled(c->b->model_path, mb, sizeof mb),
                 as_bundled(c->b->data_path, db, sizeof db));
        s->mp[nm++] = s->paths[0];
    } else if (!strcmp(s->models, "bundled")) {
        for (int k = 0; k < nb; k++) {
            /* named as in the bundle after checking that qs_bundle_path finds the model: the
             * study resolves it the same way wherever qscope is installed */
            char model[PATH_MAX], found[4096];
            snprintf(model, sizeof model, "%s", bundled[k]);
            char *colon = strchr(model, ':');
            if (colon)
                *colon = 0;
            if (qs_bundle_path(model, found, sizeof found, e) < 0)
                return qs_err_prefix(e, s->cmd);
            snprintf(s->paths[nm], sizeof s->paths[nm], "%s", bundled[k]);
            s->mp[nm] = s->paths[nm];
            nm++;
        }
    } else {
        char buf[4096];
        snprintf(buf, sizeof buf, "%s", s->models);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            if (nm == ST_MAXM)
                return qs_errf(e, "%s: at most %d models", s->cmd, ST_MAXM);
            snprintf(s->paths[nm], sizeof s->paths[nm], "%s", tok);
            s->mp[nm] = s->paths[nm];
            nm++;
        }
    }
    if (nm == 0)
        return qs_errf(e, "%s: models= is empty", s->cmd);
    int ns = 0;
    char sbuf[512];
    snprintf(sbuf, sizeof sbuf, "%s", s->seeds);
    for (char *save = NULL, *tok = strtok_r(sbuf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        long lv;
        char what[32];
        if (ns == ST_MAXS)
            return qs_errf(e, "%s: at most %d seeds", s->cmd, ST_MAXS);
        snprintf(what, sizeof what, "%s seed", s->cmd);
        if (qs_parse_int(tok, 0, 0x7fffffff, &lv, what, e) < 0)
            return -1;
        s->sv[ns++] = (uint64_t)lv;
    }
    if (ns == 0)
        return qs_errf(e, "%s: seeds= is empty", s->cmd);
    s->nm = nm;
    s->ns = ns;
    return 0;
}

/* The study's canonical line (the journal's) into c->canon: the command's name, " models=...
 * seeds=...", " format=F gran=G" when given or when no setting is a transformer (else replay
 * takes the transformers' default again), then the study's own options (mid: " prec=int4"),
 * then " csv=... out=...". */
static void sc_canon(struct qs_ctx *c, const struct study_common *s, const struct qs_format *fmt,
                     const struct qs_qopts *opt, int nlm, const char *mid)
{
    char seeds[512] = "";
    for (int k = 0; k < s->ns; k++)
        snprintf(seeds + strlen(seeds), sizeof seeds - strlen(seeds), "%s%llu", k ? "," : "",
                 (unsigned long long)s->sv[k]);
    char gb[24], qm[1024], mq[1040] = "", fq[80] = "";
    const struct qs_format_traits *ft = qs_format_traits(fmt);
    const char *gw = ft->fixed_block ? "block" : qs_cmd_gran_word(opt, gb, sizeof gb);
    if (!s->loaded) /* else: the loaded transformer, as replay will have it */
        snprintf(mq, sizeof mq, " models=%s", qs_quote(s->models, qm, sizeof qm));
    if (s->fmt_given || !nlm)
        snprintf(fq, sizeof fq, " format=%s gran=%s", fmt->name, gw);
    char qc[600], qo[600];
    snprintf(c->canon, sizeof c->canon, "%s%s seeds=%s%s%s%s%s%s%s", s->cmd, mq, seeds, fq, mid,
             s->csv ? " csv=" : "", s->csv ? qs_quote(s->csv, qc, sizeof qc) : "",
             s->out ? " out=" : "", s->out ? qs_quote(s->out, qo, sizeof qo) : "");
}

/* Ends a study's parse: the common options checked and resolved (sc_finish) into o, a
 * struct qs_q1_opts or qs_q2_opts (both begin with the same settings and formats), and o's
 * settings pointed at them. 0 or -1. */
#define SC_FINISH(c, s, bundled, o, e)                                                             \
    (sc_finish(c, s, bundled, (int)(sizeof bundled / sizeof *bundled), &(o)->fmt, &(o)->opt,       \
               &(o)->lm_fmt, &(o)->lm_opt, e) < 0                                                  \
         ? -1                                                                                      \
         : ((o)->models = (s)->mp, (o)->nmodels = (s)->nm, (o)->seeds = (s)->sv,                   \
            (o)->nseeds = (s)->ns, 0))

/* plan=DIR: one job per setting (model x seed), nothing run here. q1: the options the settings'
 * benches are opened with (their files named as the study names them). */
static int sc_plan(struct qs_ctx *c, const struct study_common *p, const struct qs_q1_opts *q1,
                   const char *study, int argc, char **argv, qs_err *e)
{
    int n = p->nm * p->ns, rc = -1;
    struct qs_plan_setting *s = qs_calloc((size_t)n, sizeof *s);
    char **common = qs_calloc((size_t)argc + 1, sizeof *common);
    char **args = qs_calloc((size_t)argc + 3, sizeof *args);
    struct qs_sb ma = {0}, sa = {0};
    if (!s || !common || !args) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (int mi = 0, k = 0; mi < p->nm; mi++) {
        char model[PATH_MAX], data[PATH_MAX];
        if (qs_q1_setting_files(q1, p->mp[mi], model, sizeof model, data, sizeof data, e) < 0) {
            qs_err_prefix(e, p->cmd);
            goto out;
        }
        for (int si = 0; si < p->ns; si++, k++) {
            qs_plan_name(k, model, p->sv[si], s[k].name, sizeof s[k].name);
            snprintf(s[k].arg, sizeof s[k].arg, "%s", p->mp[mi]);
            snprintf(s[k].model, sizeof s[k].model, "%s", model);
            snprintf(s[k].data, sizeof s[k].data, "%s", data);
            s[k].seed = p->sv[si];
        }
    }
    int nc = 0, na = 0;
    for (int i = 0; i < argc; i++)
        if (!qs_opt_value(argv[i], "models") && !qs_opt_value(argv[i], "seeds") &&
            !qs_opt_value(argv[i], "plan"))
            common[nc++] = argv[i];
    qs_sb_printf(&ma, "models=%s", p->loaded ? p->paths[0] : p->models);
    qs_sb_printf(&sa, "seeds=%s", p->seeds);
    if (!ma.s || !sa.s) {
        qs_errf(e, "out of memory");
        goto out;
    }
    args[na++] = ma.s;
    args[na++] = sa.s;
    for (int k = 0; k < nc; k++)
        args[na++] = common[k];
    struct qs_plan_spec ps = {.dir = p->plan,
                              .study = study,
                              .common = common,
                              .ncommon = nc,
                              .args = args,
                              .nargs = na,
                              .loaded_lm = p->loaded,
                              .s = s,
                              .n = n};
    rc = qs_plan_write(c, &ps, e);
    c->no_journal = 1; /* it wrote files and ran nothing: not a result to replay */
out:
    qs_sb_free(&ma);
    qs_sb_free(&sa);
    free(s);
    free(common);
    free(args);
    return rc;
}

/* ---- study q1 ------------------------------------------------------------------------------ */

static cJSON *stats_json(const struct qs_q1_stats *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "n", s->n);
    qs_json_num(j, "mean", s->mean);
    qs_json_num(j, "median", s->median);
    qs_json_num(j, "pos_frac", s->pos_frac);
    qs_json_num(j, "frac_gt_02", s->frac_gt_02);
    return j;
}

static void stats_row(struct qs_sb *t, const char *name, const struct qs_q1_stats *s)
{
    qs_sb_printf(t, "%-14s", name);
    qs_cmd_put_num(t, 9, "%.4f", s->mean);
    qs_cmd_put_num(t, 9, "%.4f", s->median);
    qs_cmd_put_num(t, 10, "%.3f", s->pos_frac);
    qs_cmd_put_num(t, 10, "%.3f", s->frac_gt_02);
    qs_sb_printf(t, "\n");
}

/* A bundled file's path as written (datasets/...) when PATH is where qs_bundle_path resolves it,
 * so that results name it the same wherever qscope runs; else PATH. */
/* One Q1 layer's JSON row; a transformer's (lm) also names its kind, block and sites. */
static cJSON *q1_layer_json(const struct qs_q1_setting *st, const struct qs_q1_layer *l,
                            const char *rqj, const char *const *thirds, int lm)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", st->model);
    cJSON_AddNumberToObject(j, "seed", (double)st->seed);
    cJSON_AddStringToObject(j, "layer", l->name);
    if (lm) {
        cJSON_AddStringToObject(j, "kind", qs_q1_kind_name(l->kind));
        cJSON_AddNumberToObject(j, "block", l->block);
        cJSON_AddNumberToObject(j, "sites", l->nsites);
    }
    cJSON_AddStringToObject(j, "depth", thirds[l->third]);
    cJSON_AddNumberToObject(j, "d", l->d);
    cJSON_AddNumberToObject(j, "in", l->in);
    qs_json_num(j, "w_rel_err", l->w_rel_err);
    qs_json_num(j, "preact_rel_mse", l->preact_rel_mse);
    qs_json_num(j, "correctability", l->correctability);
    qs_json_num(j, "r_lin_float", l->r_float);
    qs_json_num(j, rqj, l->r_q);
    qs_json_num(j, "lambda", l->lambda);
    cJSON_AddNumberToObject(j, "rank_kept", l->rank_kept);
    return j;
}

/* The gate of a study is each setting's own (its model on its data): how many of n pass, into
 * the report's JSON o and text t. */
/* The options of `study q1` (sc_* for those q2 shares). */
struct q1_args {
    struct study_common s;
    const char *prec;
    long calib_tokens; /* 0: not given */
    struct qs_q1_opts o;
};

/* The bundled settings of study q1: the five 2-D and digits MLPs. */
static const char *const q1_bundled[] = {
    "datasets/models/digits-mlp.safetensors", "datasets/models/moons-mlp.safetensors",
    "datasets/models/spirals-mlp.safetensors", "datasets/models/xor-mlp.safetensors",
    "datasets/models/circles-mlp.safetensors"};

static int q1_parse(struct qs_ctx *c, int argc, char **argv, void *args, qs_err *e)
{
    struct q1_args *p = args;
    sc_init(&p->s, "study q1");
    p->prec = "int4";
    struct qs_q1_opts *o = &p->o;
    memset(o, 0, sizeof *o);
    o->top_frac = 0.1;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (sc_opt(&p->s, argv[i]))
            continue;
        if ((v = qs_opt_value(argv[i], "prec")))
            p->prec = v;
        else if ((v = qs_opt_value(argv[i], "calib_tokens"))) {
            if (qs_parse_int(v, 1, 1 << 30, &p->calib_tokens, "study q1 calib_tokens", e) < 0)
                return -1;
        } else
            return qs_errf(e, "study q1: unexpected '%s'", argv[i]);
    }
    o->calib_tokens = p->calib_tokens;
    const char *prec = p->prec;
    if (strcmp(prec, "int4") && strcmp(prec, "int8") && strcmp(prec, "float"))
        return qs_errf(e, "study q1: prec=%s: expected int4, int8 or float", prec);
    snprintf(o->prec, sizeof o->prec, "%s", prec);
    return SC_FINISH(c, &p->s, q1_bundled, o, e);
}

/* The study's canonical line (the journal's): its own options are prec= and calib_tokens=. */
static void q1_canon(struct qs_ctx *c, const void *args, const void *res)
{
    const struct q1_args *p = args;
    char mid[80];
    int k = snprintf(mid, sizeof mid, " prec=%s", p->prec);
    if (p->calib_tokens > 0)
        snprintf(mid + k, sizeof mid - (size_t)k, " calib_tokens=%ld", p->calib_tokens);
    sc_canon(c, &p->s, &p->o.fmt, &p->o.opt, ((const struct qs_q1 *)res)->nlm, mid);
}

/* The report of a finished study: its JSON object (returned) and text (appended to t). The
 * in-process run and `study merge` both print through it, so their reports are the same. */
static cJSON *q1_report(struct qs_ctx *c, const void *args, const void *res, struct qs_sb *t)
{
    const struct q1_args *p = args;
    const struct qs_q1 *q = res;
    char opts[200] = "";
    int all_lm = q->nlm == q->nsettings && p->o.lm_fmt;
    const struct qs_format *tf = all_lm ? p->o.lm_fmt : &p->o.fmt;
    qs_qopts_format(tf, all_lm ? p->o.lm_opt : &p->o.opt, opts, sizeof opts);
    const char *rq = !strcmp(p->prec, "int4")   ? "R_lin_q4"
                     : !strcmp(p->prec, "int8") ? "R_lin_q8"
                                                : "R_lin_qfloat";
    const char *rqj = !strcmp(p->prec, "int4")   ? "r_lin_q4"
                      : !strcmp(p->prec, "int8") ? "r_lin_q8"
                                                 : "r_lin_qfloat";
    cJSON *o_ = cJSON_CreateObject(), *js = cJSON_CreateArray(), *jl = cJSON_CreateArray();
    cJSON_AddStringToObject(o_, "cmd", "study q1");
    cJSON_AddStringToObject(o_, "regime", "weight-only");
    cJSON_AddStringToObject(o_, "format", tf->name);
    cJSON_AddStringToObject(o_, "options", opts);
    cJSON_AddStringToObject(o_, "prec", p->prec);
    cJSON_AddStringToObject(o_, "correctability",
                            "share of the pre-activation error energy (calibration split, "
                            "propagated) in its top ceil(0.1 d) singular directions");
    qs_sb_printf(t,
                 "study q1: %d model%s x %d seed%s, weights %s %s (weight-only), map "
                 "weights %s\n",
                 p->s.nm, p->s.nm == 1 ? "" : "s", p->s.ns, p->s.ns == 1 ? "" : "s", tf->name, opts,
                 p->prec);
    if (q->nlm && p->o.lm_fmt)
        qs_sb_printf(t,
                     "transformer weights: int4 per channel, symmetric (the report's 4-bit "
                     "regime; the default for transformers without format=/gran=)%s\n",
                     all_lm ? "" : "; MLPs: the format above");
    if (q->nlm && p->calib_tokens > 0) {
        qs_sb_printf(t, "transformer calibration: %ld tokens per model (calib_tokens=)\n",
                     p->calib_tokens);
        cJSON_AddNumberToObject(o_, "calib_tokens", (double)p->calib_tokens);
    }
    if (q->nlm)
        qs_sb_printf(t,
                     "Q1 layers of a transformer block: the input projection of each sub-layer "
                     "(attention: QKV, GPT-2 c_attn or LLaMA q|k|v_proj concatenated; FFN: GPT-2 "
                     "c_fc or LLaMA gate|up_proj concatenated); other sites are listed apart, not "
                     "in the medians, Spearman or aggregates; depth third = floor(3 block / "
                     "n_layer)\n");
    qs_sb_printf(t, "correctability = share of the pre-activation error energy (calibration "
                    "split, propagated) in its top 10%% singular directions = 1 - left[ceil(0.1 "
                    "d)], d = layer width\n");
    if (q->nlm)
        qs_sb_printf(t, "  left[k] = 1 - sum_{i<=k} s_i^2 / ||E||_F^2, s_i the singular values of "
                        "E = Y_q - Y_f (calibration rows x d; a grouped layer: its concatenated "
                        "pre-activations, d = the sum of the widths)\n");
    qs_sb_printf(t,
                 "R = held-out recovery of the ridge map from quantized to float "
                 "pre-activations (fitted on calibration), float map (R_lin_float) and %s "
                 "map (%s)\n",
                 p->prec, rq);
    qs_sb_printf(t, "map = (Y_q^T Y_q + lambda I)^+ Y_q^T Y_f (centred, in double), lambda = 1e-6 "
                    "tr(Y_q^T Y_q) / d; rank = eigen-directions of Y_q^T Y_q kept (eigenvalue "
                    "> 1e-6 of the largest; the rest get zero weight)\n");
    qs_sb_printf(t, "a seed re-draws calibration and test among each model's held-out samples "
                    "(never its training samples)\n");
    if (p->s.loaded || strstr(p->s.models, ".txt") || strstr(p->s.models, ".bin"))
        qs_sb_printf(t, "a transformer's token split is fixed (calibration: its first `set calib` "
                        "windows; held out: every window of the last 10%%): there a seed only "
                        "seeds the random draws, and f_acc/q_acc are not defined (nan)\n");
    qs_sb_printf(t, "\n");
    char hdr_q[24];
    snprintf(hdr_q, sizeof hdr_q, "med_%s", rq);
    qs_sb_printf(t, "%-22s %4s %4s %7s %7s %13s %13s %8s  %s\n", "model", "seed", "gate", "f_acc",
                 "q_acc", "med_R_float", hdr_q, "spearman", "verdict");
    int gates = 0, minl = 1 << 30, first_full = 0;
    for (int i = 0; i < q->nlayers; i++)
        first_full += q->layers[i].index == 0 && q->layers[i].in <= q->layers[i].d;
    for (int s = 0; s < q->nsettings; s++) {
        const struct qs_q1_setting *st = &q->settings[s];
        char nb[256];
        base_name(st->model, nb, sizeof nb);
        gates += st->gate_pass;
        if (st->nlayers < minl)
            minl = st->nlayers;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "model", st->model);
        cJSON_AddStringToObject(j, "data", st->data);
        cJSON_AddNumberToObject(j, "seed", (double)st->seed);
        cJSON_AddNumberToObject(j, "layers", st->nlayers);
        qs_json_num(j, "float_acc", st->float_acc);
        qs_json_num(j, "quant_acc", st->quant_acc);
        qs_json_num(j, "bits_per_weight", st->bits_per_weight);
        cJSON_AddStringToObject(j, "gate", st->gate_pass ? "pass" : "fail");
        qs_json_num(j, "median_r_lin_float", st->med_r_float);
        char key[40];
        snprintf(key, sizeof key, "median_%s", rqj);
        qs_json_num(j, key, st->med_r_q);
        qs_json_num(j, "spearman", st->spearman);
        cJSON_AddStringToObject(j, "verdict", st->verdict);
        if (q->nlm) { /* transformer studies: what each setting ran and counted */
            cJSON_AddStringToObject(j, "arch", st->arch);
            cJSON_AddStringToObject(j, "format", st->format);
            cJSON_AddStringToObject(j, "options", st->options);
            cJSON_AddNumberToObject(j, "q1_layers", st->nq1);
            cJSON_AddBoolToObject(j, "excluded", !st->gate_pass);
        }
        cJSON_AddItemToArray(js, j);
        qs_sb_printf(t, "%-22s %4llu %4s %7.4f %7.4f", nb, (unsigned long long)st->seed,
                     st->gate_pass ? "pass" : "FAIL", st->float_acc, st->quant_acc);
        qs_cmd_put_num(t, 14, "%.4f", st->med_r_float);
        qs_cmd_put_num(t, 14, "%.4f", st->med_r_q);
        qs_cmd_put_num(t, 9, "%.3f", st->spearman);
        qs_sb_printf(t, "  %s%s\n", st->verdict,
                     st->gate_pass ? "" : " (gate FAIL: excluded from counts and aggregates)");
    }
    static const char *const thirds[] = {"early", "mid", "late"};
    cJSON *jsites = q->nlm ? cJSON_CreateArray() : NULL;
    if (q->nlm) {
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 0)
                qs_sb_printf(t, "\nQ1 layers\n");
            else
                qs_sb_printf(t, "\nother sites (not Q1 layers: not in the medians, Spearman or "
                                "aggregates)\n");
            qs_sb_printf(t, "%-16s %4s %-46s %-9s %5s %5s %9s %11s %11s %10s %4s\n", "model",
                         "seed", "layer", "kind", "depth", "d", "correct.", "R_lin_float", rq,
                         "lambda", "rank");
            for (int i = 0; i < q->nlayers; i++) {
                const struct qs_q1_layer *l = &q->layers[i];
                if ((l->kind == QS_Q1_SITE) != pass)
                    continue;
                const struct qs_q1_setting *st = &q->settings[l->setting];
                char nb[256];
                base_name(st->model, nb, sizeof nb);
                cJSON *j = q1_layer_json(st, l, rqj, thirds, 1);
                cJSON_AddItemToArray(pass ? jsites : jl, j);
                qs_sb_printf(t, "%-16s %4llu %-46s %-9s %5s %5d", nb, (unsigned long long)st->seed,
                             l->name, qs_q1_kind_name(l->kind), thirds[l->third], l->d);
                qs_cmd_put_num(t, 10, "%.4f", l->correctability);
                qs_cmd_put_num(t, 12, "%.4f", l->r_float);
                qs_cmd_put_num(t, 12, "%.4f", l->r_q);
                qs_cmd_put_num(t, 11, "%.3g", l->lambda);
                qs_sb_printf(t, " %4d\n", l->rank_kept);
            }
        }
    } else {
        qs_sb_printf(t, "\n%-22s %4s %-8s %5s %5s %9s %11s %11s %10s %4s\n", "model", "seed",
                     "layer", "depth", "d", "correct.", "R_lin_float", rq, "lambda", "rank");
        for (int i = 0; i < q->nlayers; i++) {
            const struct qs_q1_layer *l = &q->layers[i];
            const struct qs_q1_setting *st = &q->settings[l->setting];
            char nb[256];
            base_name(st->model, nb, sizeof nb);
            cJSON *j = q1_layer_json(st, l, rqj, thirds, 0);
            cJSON_AddItemToArray(jl, j);
            qs_sb_printf(t, "%-22s %4llu %-8s %5s %5d", nb, (unsigned long long)st->seed, l->name,
                         thirds[l->third], l->d);
            qs_cmd_put_num(t, 10, "%.4f", l->correctability);
            qs_cmd_put_num(t, 12, "%.4f", l->r_float);
            qs_cmd_put_num(t, 12, "%.4f", l->r_q);
            qs_cmd_put_num(t, 11, "%.3g", l->lambda);
            qs_sb_printf(t, " %4d\n", l->rank_kept);
        }
    }
    cJSON_AddItemToObject(o_, "settings", js);
    cJSON_AddItemToObject(o_, "layers", jl);
    if (jsites)
        cJSON_AddItemToObject(o_, "sites", jsites);
    cJSON *agg = cJSON_CreateObject(), *dq = cJSON_CreateObject(), *df = cJSON_CreateObject();
    cJSON_AddItemToObject(agg, "r_lin_float", stats_json(&q->r_float));
    cJSON_AddItemToObject(agg, rqj, stats_json(&q->r_q));
    for (int k = 0; k < 3; k++) {
        qs_json_num(dq, thirds[k], q->depth_q[k]);
        qs_json_num(df, thirds[k], q->depth_float[k]);
    }
    char dkey[48];
    snprintf(dkey, sizeof dkey, "depth_%s", rqj);
    cJSON_AddItemToObject(agg, dkey, dq);
    cJSON_AddItemToObject(agg, "depth_r_lin_float", df);
    qs_json_num(agg, "pooled_spearman", q->pooled_spearman);
    if (q->nlm) {
        qs_json_num(agg, "pooled_spearman_float", q->pooled_spearman_float);
        cJSON *sq = cJSON_CreateObject(), *sf = cJSON_CreateObject();
        cJSON_AddItemToObject(sq, "attention", stats_json(&q->sub_q[0]));
        cJSON_AddItemToObject(sq, "ffn", stats_json(&q->sub_q[1]));
        cJSON_AddItemToObject(sf, "attention", stats_json(&q->sub_float[0]));
        cJSON_AddItemToObject(sf, "ffn", stats_json(&q->sub_float[1]));
        char skey[48];
        snprintf(skey, sizeof skey, "sublayer_%s", rqj);
        cJSON_AddItemToObject(agg, skey, sq);
        cJSON_AddItemToObject(agg, "sublayer_r_lin_float", sf);
    }
    cJSON_AddItemToObject(o_, "aggregate", agg);
    cJSON *vd = cJSON_CreateObject();
    cJSON_AddNumberToObject(vd, "supported", q->nsupported);
    cJSON_AddNumberToObject(vd, "refuted", q->nrefuted);
    cJSON_AddNumberToObject(vd, "unclear", q->nunclear);
    if (q->nlm || q->nexcluded)
        cJSON_AddNumberToObject(vd, "excluded_gate_fail", q->nexcluded);
    cJSON_AddItemToObject(o_, "verdicts", vd);
    cJSON *rep = cJSON_CreateObject();
    cJSON_AddNumberToObject(rep, "layers", QS_Q1_REPORT_NLAYERS);
    qs_json_num(rep, "r_lin_float_median", QS_Q1_REPORT_R_FLOAT_MEDIAN);
    qs_json_num(rep, "r_lin_q4_median", QS_Q1_REPORT_R_Q4_MEDIAN);
    qs_json_num(rep, "r_lin_q4_pos_frac", QS_Q1_REPORT_R_Q4_POS);
    qs_json_num(rep, "depth_early", QS_Q1_REPORT_DEPTH_EARLY);
    qs_json_num(rep, "depth_mid", QS_Q1_REPORT_DEPTH_MID);
    qs_json_num(rep, "depth_late", QS_Q1_REPORT_DEPTH_LATE);
    cJSON_AddItemToObject(o_, "report", rep);
    qs_sb_printf(t, "\naggregate over %d layers  %9s %9s %10s %10s\n", q->r_q.n, "mean", "median",
                 "pos_frac", "frac>0.2");
    stats_row(t, "R_lin_float", &q->r_float);
    stats_row(t, rq, &q->r_q);
    qs_sb_printf(t, "depth profile (medians)   %9s %9s %9s\n", "early", "mid", "late");
    qs_sb_printf(t, "%-25s", rq);
    for (int k = 0; k < 3; k++)
        qs_cmd_put_num(t, 10, "%.4f", q->depth_q[k]);
    qs_sb_printf(t, "\n%-25s", "R_lin_float");
    for (int k = 0; k < 3; k++)
        qs_cmd_put_num(t, 10, "%.4f", q->depth_float[k]);
    qs_sb_printf(t, "\n%-25s %9d %9d %9d\n", "layers", q->depth_n[0], q->depth_n[1], q->depth_n[2]);
    qs_sb_printf(t, "pooled Spearman(correctability, %s) over all %d layers: ", rq, q->r_q.n);
    qs_cmd_put_num(t, 0, "%.4f", q->pooled_spearman);
    if (q->nlm) {
        qs_sb_printf(
            t, "\npooled Spearman(correctability, R_lin_float) over all %d layers: ", q->r_float.n);
        qs_cmd_put_num(t, 0, "%.4f", q->pooled_spearman_float);
        qs_sb_printf(t, "\nsub-layer profile         %9s %9s %9s %10s %10s\n", "n", "mean",
                     "median", "pos_frac", "frac>0.2");
        static const char *const subn[2] = {"attention", "ffn"};
        for (int k = 0; k < 2; k++) {
            char lab[48];
            snprintf(lab, sizeof lab, "%s %s", subn[k], rq);
            qs_sb_printf(t, "%-25s %9d", lab, q->sub_q[k].n);
            qs_cmd_put_num(t, 10, "%.4f", q->sub_q[k].mean);
            qs_cmd_put_num(t, 10, "%.4f", q->sub_q[k].median);
            qs_cmd_put_num(t, 11, "%.3f", q->sub_q[k].pos_frac);
            qs_cmd_put_num(t, 11, "%.3f", q->sub_q[k].frac_gt_02);
            snprintf(lab, sizeof lab, "%s R_lin_float", subn[k]);
            qs_sb_printf(t, "\n%-25s %9d", lab, q->sub_float[k].n);
            qs_cmd_put_num(t, 10, "%.4f", q->sub_float[k].mean);
            qs_cmd_put_num(t, 10, "%.4f", q->sub_float[k].median);
            qs_cmd_put_num(t, 11, "%.3f", q->sub_float[k].pos_frac);
            qs_cmd_put_num(t, 11, "%.3f", q->sub_float[k].frac_gt_02);
            qs_sb_printf(t, "\n");
        }
    }
    qs_sb_printf(t,
                 "\nverdicts: %d supported, %d refuted, %d unclear (of %d settings; supported: "
                 "median %s >= 0.35 and Spearman >= 0.35; refuted: median < 0.24 and "
                 "Spearman < 0)\n",
                 q->nsupported, q->nrefuted, q->nunclear, q->nsettings - q->nexcluded, rq);
    if (q->nexcluded)
        qs_sb_printf(t,
                     "%d setting%s failing the task-learned gate: flagged, excluded from the "
                     "verdict counts and the aggregates\n",
                     q->nexcluded, q->nexcluded == 1 ? "" : "s");
    if (q->nlm) { /* architecture-level verdict summary */
        qs_sb_printf(t, "by architecture           %9s %9s %9s %9s\n", "supported", "refuted",
                     "unclear", "excluded");
        cJSON *ja = cJSON_CreateObject();
        for (int s = 0; s < q->nsettings; s++) {
            int seen = 0;
            for (int r = 0; r < s && !seen; r++)
                seen = !strcmp(q->settings[r].arch, q->settings[s].arch);
            if (seen)
                continue;
            int cnt[4] = {0, 0, 0, 0};
            for (int r = s; r < q->nsettings; r++) {
                const struct qs_q1_setting *x = &q->settings[r];
                if (strcmp(x->arch, q->settings[s].arch))
                    continue;
                int k = !x->gate_pass                      ? 3
                        : !strcmp(x->verdict, "supported") ? 0
                        : !strcmp(x->verdict, "refuted")   ? 1
                                                           : 2;
                cnt[k]++;
            }
            qs_sb_printf(t, "%-25s %9d %9d %9d %9d\n", q->settings[s].arch, cnt[0], cnt[1], cnt[2],
                         cnt[3]);
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "supported", cnt[0]);
            cJSON_AddNumberToObject(x, "refuted", cnt[1]);
            cJSON_AddNumberToObject(x, "unclear", cnt[2]);
            cJSON_AddNumberToObject(x, "excluded", cnt[3]);
            cJSON_AddItemToObject(ja, q->settings[s].arch, x);
        }
        cJSON_AddItemToObject(o_, "verdicts_by_arch", ja);
    }
    qs_sb_printf(t,
                 "overnight report's figures (%d layers; the report is not distributed with "
                 "qscope, see qscope-methods(7)): R_lin_float median %.3f (100%% positive); "
                 "R_lin_q4 median %.3f (%.0f%% positive); R_lin_q4 depth early %.2f, mid %.3f, "
                 "late %.3f\n",
                 QS_Q1_REPORT_NLAYERS, QS_Q1_REPORT_R_FLOAT_MEDIAN, QS_Q1_REPORT_R_Q4_MEDIAN,
                 100 * QS_Q1_REPORT_R_Q4_POS, QS_Q1_REPORT_DEPTH_EARLY, QS_Q1_REPORT_DEPTH_MID,
                 QS_Q1_REPORT_DEPTH_LATE);
    if (minl <= 5)
        qs_sb_printf(t,
                     "note: a setting has as few as %d layers, so its Spearman is over %d "
                     "points and takes only a handful of values: a coarse signal\n",
                     minl, minl);
    if (first_full)
        qs_sb_printf(t,
                     "note: in a first layer with in <= out both paths are linear in the same "
                     "inputs (Y_f = Y_q (Q(W)^+ W)^T when Q(W) has full column rank), so "
                     "R_lin_float is 1 there by construction (%d such layer%s)\n",
                     first_full, first_full == 1 ? "" : "s");
    if (p->s.csv) {
        qs_sb_printf(t, "wrote %s-layers.csv, %s-settings.csv and %s-master_summary.csv\n",
                     p->s.csv, p->s.csv, p->s.csv);
        cJSON_AddStringToObject(o_, "csv_prefix", p->s.csv);
    }
    study_gate(o_, t, q->nsettings, gates);
    qs_set_last_table(c, "study q1 layers", jl, NULL);
    return o_;
}

/* ---- study q2 ------------------------------------------------------------------------------ */

/* The bundled settings of study q2: the digits MLP and both tiny transformers on their text. */
static const char *const q2_bundled[] = {"datasets/models/digits-mlp.safetensors",
                                         "datasets/models/tiny-gpt2:datasets/text/licenses.txt",
                                         "datasets/models/tiny-llama:datasets/text/licenses.txt"};

static void q2_unstable_names(int mask, char *buf, size_t n)
{
    buf[0] = 0;
    for (int v = 0; v < QS_Q2_NVAR; v++)
        if ((mask >> v) & 1)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? "," : "",
                     qs_q2_variant_name((enum qs_q2_variant)v));
}

/* The Q2 report from its settings and their aggregates alone (text into t, JSON into o_): the
 * in-process study and `study merge` (settings read back from a plan's records, aggregated by
 * the same qs_q2_aggregate) both print through it, so their reports are the same. */
static void q2_report(const struct qs_q2 *q, const struct qs_q2_opts *o, cJSON *o_, struct qs_sb *t)
{
    const struct qs_q2_setting *rec = q->settings;
    int n = q->nsettings;
    const struct qs_q2_summary sm = q->sum;
    /* the weight format named: the transformers' own when every setting is one */
    char opts[200];
    int all_lm = sm.nlm == n && o->lm_fmt;
    const char *fmt = all_lm ? o->lm_fmt->name : o->fmt.name;
    qs_qopts_format(all_lm ? o->lm_fmt : &o->fmt, all_lm ? o->lm_opt : &o->opt, opts, sizeof opts);
    int nm = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < i && !seen; k++)
            seen = !strcmp(rec[k].model, rec[i].model);
        nm += !seen;
    }
    cJSON_AddStringToObject(o_, "regime", "weight-only");
    cJSON_AddStringToObject(o_, "format", fmt);
    cJSON_AddStringToObject(o_, "options", opts);
    cJSON *cj = cJSON_CreateObject();
    char arch[96];
    snprintf(arch, sizeof arch, "mlp d_in-%d-%d-1 tanh", o->hidden, o->hidden);
    cJSON_AddStringToObject(cj, "architecture", arch);
    cJSON_AddStringToObject(cj, "optimizer", "adam");
    qs_json_num(cj, "lr", o->lr);
    cJSON_AddNumberToObject(cj, "epochs", o->epochs);
    cJSON_AddNumberToObject(cj, "batch", o->batch);
    cJSON_AddNumberToObject(cj, "n_fit", o->n_fit);
    cJSON_AddNumberToObject(cj, "n_eval", o->n_eval);
    cJSON *fa = cJSON_CreateArray();
    for (int k = 0; k < QS_Q2_NFEAT; k++)
        cJSON_AddItemToArray(fa, cJSON_CreateString(qs_q2_feature_name(k)));
    cJSON_AddItemToObject(cj, "features", fa);
    cJSON_AddItemToObject(o_, "corrector", cj);
    qs_sb_printf(t, "study q2: %d model%s, %d setting%s, weights %s %s (weight-only)\n", nm,
                 nm == 1 ? "" : "s", n, n == 1 ? "" : "s", fmt, opts);
    if (sm.nlm && o->lm_fmt)
        qs_sb_printf(t,
                     "transformer weights: int4 per channel, symmetric (the default for "
                     "transformers without format=/gran=)%s\n",
                     sm.nlm == n ? "" : "; MLPs: int3 per tensor");
    if (sm.nlm && o->heldout_tokens > 0) {
        qs_sb_printf(t,
                     "transformer held-out losses (loss_q, every gain): the first %ld held-out "
                     "tokens' windows (heldout_tokens=); the gate: the whole split; MLPs: the "
                     "whole test split\n",
                     o->heldout_tokens);
        cJSON_AddNumberToObject(o_, "heldout_tokens", (double)o->heldout_tokens);
    }
    qs_sb_printf(t,
                 "corrector: one network shared by every site and output channel of a model, "
                 "x -> %d tanh -> %d tanh -> 1, Adam (lr %g), %d epochs, batches of %d, "
                 "%d calibration elements (an equal share per site), seeded by the setting's "
                 "seed\n",
                 o->hidden, o->hidden, o->lr, o->epochs, o->batch, o->n_fit);
    qs_sb_printf(t, "  x = [u, log10 ||E_j||, log10 s_j, log10 ||W_j||, cond], u = Y_q / r_s; "
                    "target t = (Y_f - Y_q) / r_s; r_s = RMS of the site's Y_q (calibration); "
                    "E = W - Q(W), s_j = RMS of row j's scales; columns standardised\n");
    qs_sb_printf(t,
                 "  cond: embedding_only = learned embeddings of the site index (%d) and kind "
                 "(%d); features_only = %d site statistics (",
                 QS_Q2_EMB_SITE, QS_Q2_EMB_KIND, QS_Q2_NFEAT);
    for (int k = 0; k < QS_Q2_NFEAT; k++)
        qs_sb_printf(t, "%s%s", k ? " " : "", qs_q2_feature_name(k));
    qs_sb_printf(t, "); features_plus_embedding = both\n");
    qs_sb_printf(t,
                 "mse = held-out mean (t - t_hat)^2 over %d held-out elements (mse_none: no "
                 "correction); gain = held-out loss of the quantized model - loss with the "
                 "corrector at every site\n\n",
                 o->n_eval);
    qs_sb_printf(t, "%-16s %4s %4s %8s %9s %9s %9s %9s %7s %9s %9s %9s  %s\n", "model", "seed",
                 "gate", "loss_q", "mse_none", "mse_emb", "mse_feat", "mse_both", "impr",
                 "gain_emb", "gain_feat", "gain_both", "verdict");
    cJSON *js = cJSON_CreateArray(), *jsites = cJSON_CreateArray();
    int gates = 0;
    for (int i = 0; i < n; i++) {
        const struct qs_q2_setting *s = &rec[i];
        char nb[256];
        base_name(s->model, nb, sizeof nb);
        gates += s->gate_pass;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "model", s->model);
        cJSON_AddStringToObject(j, "data", s->data);
        cJSON_AddNumberToObject(j, "seed", (double)s->seed);
        cJSON_AddStringToObject(j, "arch", s->arch);
        cJSON_AddStringToObject(j, "format", s->format);
        cJSON_AddStringToObject(j, "options", s->options);
        cJSON_AddNumberToObject(j, "sites", s->nsites);
        cJSON_AddStringToObject(j, "gate", s->gate_pass ? "pass" : "fail");
        qs_json_num(j, "float_loss", s->float_loss);
        qs_json_num(j, "quant_loss", s->quant_loss);
        qs_json_num(j, "float_acc", s->float_acc);
        qs_json_num(j, "quant_acc", s->quant_acc);
        qs_json_num(j, "bits_per_weight", s->bits_per_weight);
        cJSON_AddNumberToObject(j, "n_fit", s->n_fit);
        cJSON_AddNumberToObject(j, "n_eval", s->n_eval);
        qs_json_num(j, "mse_none", s->mse_none);
        for (int v = 0; v < QS_Q2_NVAR; v++) {
            char k[64];
            snprintf(k, sizeof k, "mse_%s", qs_q2_variant_name((enum qs_q2_variant)v));
            qs_json_num(j, k, s->mse[v]);
        }
        for (int v = 0; v < QS_Q2_NVAR; v++) {
            char k[64];
            snprintf(k, sizeof k, "loss_gain_%s", qs_q2_variant_name((enum qs_q2_variant)v));
            qs_json_num(j, k, s->loss_gain[v]);
        }
        qs_json_num(j, "improvement", s->improvement);
        char ub[96];
        q2_unstable_names(s->unstable, ub, sizeof ub);
        cJSON_AddStringToObject(j, "unstable", ub);
        cJSON_AddStringToObject(j, "verdict", s->verdict);
        cJSON_AddItemToArray(js, j);
        qs_sb_printf(t, "%-16s %4llu %4s", nb, (unsigned long long)s->seed,
                     s->gate_pass ? "pass" : "FAIL");
        qs_cmd_put_num(t, 9, "%.4f", s->quant_loss);
        qs_cmd_put_num(t, 10, "%.5f", s->mse_none);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            qs_cmd_put_num(t, 10, "%.5f", s->mse[v]);
        qs_cmd_put_num(t, 7, "%+.1f%%", 100 * s->improvement);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            qs_cmd_put_num(t, 10, "%+.4f", s->loss_gain[v]);
        qs_sb_printf(t, "  %s%s\n", s->verdict, s->unstable ? " (unstable)" : "");
        for (int k = 0; k < s->nsites && s->sites; k++) {
            const struct qs_q2_site *x = &s->sites[k];
            cJSON *q = cJSON_CreateObject();
            cJSON_AddStringToObject(q, "model", s->model);
            cJSON_AddNumberToObject(q, "seed", (double)s->seed);
            cJSON_AddStringToObject(q, "site", x->name);
            cJSON_AddNumberToObject(q, "kind", x->kind);
            cJSON_AddNumberToObject(q, "out", x->out);
            qs_json_num(q, "rms", x->rms);
            cJSON *f = cJSON_CreateObject();
            for (int m = 0; m < QS_Q2_NFEAT; m++)
                qs_json_num(f, qs_q2_feature_name(m), x->feat[m]);
            cJSON_AddItemToObject(q, "features", f);
            qs_json_num(q, "mse_none", x->mse_none);
            for (int v = 0; v < QS_Q2_NVAR; v++) {
                char kk[64];
                snprintf(kk, sizeof kk, "mse_%s", qs_q2_variant_name((enum qs_q2_variant)v));
                qs_json_num(q, kk, x->mse[v]);
            }
            cJSON_AddItemToArray(jsites, q);
        }
    }
    cJSON_AddItemToObject(o_, "settings", js);
    /* per site */
    qs_sb_printf(t, "\n%-16s %4s %-28s %4s %5s %9s %9s %9s %9s %9s\n", "model", "seed", "site",
                 "kind", "out", "r_s", "mse_none", "mse_emb", "mse_feat", "mse_both");
    for (int i = 0; i < n; i++) {
        const struct qs_q2_setting *s = &rec[i];
        char nb[256];
        base_name(s->model, nb, sizeof nb);
        for (int k = 0; k < s->nsites && s->sites; k++) {
            const struct qs_q2_site *x = &s->sites[k];
            qs_sb_printf(t, "%-16s %4llu %-28s %4d %5d", nb, (unsigned long long)s->seed, x->name,
                         x->kind, x->out);
            qs_cmd_put_num(t, 10, "%.4g", x->rms);
            qs_cmd_put_num(t, 10, "%.5f", x->mse_none);
            for (int v = 0; v < QS_Q2_NVAR; v++)
                qs_cmd_put_num(t, 10, "%.5f", x->mse[v]);
            qs_sb_printf(t, "\n");
        }
    }
    cJSON_AddItemToObject(o_, "sites", jsites);
    cJSON *vd = cJSON_CreateObject();
    cJSON_AddNumberToObject(vd, "supported", sm.nsupported);
    cJSON_AddNumberToObject(vd, "refuted", sm.nrefuted);
    cJSON_AddNumberToObject(vd, "unclear", sm.nunclear);
    cJSON_AddNumberToObject(vd, "excluded_gate_fail", sm.nexcluded);
    cJSON_AddItemToObject(o_, "verdicts", vd);
    cJSON *ag = cJSON_CreateObject();
    qs_json_num(ag, "improvement_mean", sm.impr_mean);
    qs_json_num(ag, "improvement_min", sm.impr_min);
    qs_json_num(ag, "improvement_max", sm.impr_max);
    qs_json_num(ag, "mse_none_mean", sm.mse_none_mean);
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        char k[64];
        snprintf(k, sizeof k, "mse_%s_mean", qs_q2_variant_name((enum qs_q2_variant)v));
        qs_json_num(ag, k, sm.mse_mean[v]);
        snprintf(k, sizeof k, "loss_gain_%s_mean", qs_q2_variant_name((enum qs_q2_variant)v));
        qs_json_num(ag, k, sm.gain_mean[v]);
        snprintf(k, sizeof k, "unstable_%s", qs_q2_variant_name((enum qs_q2_variant)v));
        cJSON_AddNumberToObject(ag, k, sm.unstable_var[v]);
    }
    cJSON_AddNumberToObject(ag, "unstable_settings", sm.nunstable);
    cJSON_AddItemToObject(o_, "aggregate", ag);
    cJSON *rep = cJSON_CreateObject();
    cJSON_AddNumberToObject(rep, "settings", QS_Q2_REPORT_SETTINGS);
    cJSON_AddNumberToObject(rep, "supported", QS_Q2_REPORT_SUPPORTED);
    cJSON_AddNumberToObject(rep, "unclear", QS_Q2_REPORT_UNCLEAR);
    qs_json_num(rep, "improvement_mean", QS_Q2_REPORT_IMPR_MEAN);
    qs_json_num(rep, "loss_gain_embedding_only_mean", QS_Q2_REPORT_GAIN_EMB);
    qs_json_num(rep, "loss_gain_features_only_mean", QS_Q2_REPORT_GAIN_FEAT);
    qs_json_num(rep, "loss_gain_features_plus_embedding_mean", QS_Q2_REPORT_GAIN_BOTH);
    cJSON_AddItemToObject(o_, "report", rep);
    qs_sb_printf(t,
                 "\nverdicts: %d supported, %d refuted, %d unclear (of %d settings; supported: "
                 "features_only MSE >= 15%% below embedding_only and the best feature-based "
                 "gain >= +0.0100; refuted: features_only MSE above embedding_only and no gain "
                 "> 0)\n",
                 sm.nsupported, sm.nrefuted, sm.nunclear, n - sm.nexcluded);
    if (sm.nexcluded)
        qs_sb_printf(t,
                     "%d setting%s failing the task-learned gate: flagged, excluded from the "
                     "verdict counts and the aggregates\n",
                     sm.nexcluded, sm.nexcluded == 1 ? "" : "s");
    qs_sb_printf(t, "features_only vs embedding_only, held-out MSE improvement: mean ");
    qs_cmd_put_num(t, 0, "%+.1f%%", 100 * sm.impr_mean);
    qs_sb_printf(t, " (min ");
    qs_cmd_put_num(t, 0, "%+.1f%%", 100 * sm.impr_min);
    qs_sb_printf(t, ", max ");
    qs_cmd_put_num(t, 0, "%+.1f%%", 100 * sm.impr_max);
    qs_sb_printf(t, ")\nmean gain (embedding / features / both): ");
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        qs_cmd_put_num(t, 0, "%+.4f", sm.gain_mean[v]);
        qs_sb_printf(t, "%s", v + 1 < QS_Q2_NVAR ? " / " : "\n");
    }
    if (sm.nunstable) {
        qs_sb_printf(t,
                     "instability (a negative downstream gain: the corrector, fitted on the "
                     "uncorrected path, hurts once its corrections feed the later sites) in %d "
                     "setting%s:\n",
                     sm.nunstable, sm.nunstable == 1 ? "" : "s");
        for (int i = 0; i < n; i++)
            if (rec[i].unstable && rec[i].gate_pass) {
                char nb[256];
                qs_sb_printf(t,
                             "  %s seed %llu (%d sites):", base_name(rec[i].model, nb, sizeof nb),
                             (unsigned long long)rec[i].seed, rec[i].nsites);
                for (int v = 0; v < QS_Q2_NVAR; v++)
                    if ((rec[i].unstable >> v) & 1)
                        qs_sb_printf(t, " %s %+.4f", qs_q2_variant_name((enum qs_q2_variant)v),
                                     rec[i].loss_gain[v]);
                qs_sb_printf(t, "\n");
            }
    } else {
        qs_sb_printf(t, "instability (a negative downstream gain): none\n");
    }
    qs_sb_printf(t,
                 "overnight report's figures (%d transformer settings; the report is not "
                 "distributed with qscope, see qscope-methods(7)): %d supported, %d unclear; "
                 "improvement mean %+.1f%% (min %+.1f%%, max %+.1f%%); mean gain %.3f / %.3f / "
                 "%.3f; two (256, 6) settings had a negative gain for features_only\n",
                 QS_Q2_REPORT_SETTINGS, QS_Q2_REPORT_SUPPORTED, QS_Q2_REPORT_UNCLEAR,
                 100 * QS_Q2_REPORT_IMPR_MEAN, 100 * QS_Q2_REPORT_IMPR_MIN,
                 100 * QS_Q2_REPORT_IMPR_MAX, QS_Q2_REPORT_GAIN_EMB, QS_Q2_REPORT_GAIN_FEAT,
                 QS_Q2_REPORT_GAIN_BOTH);
    study_gate(o_, t, n, gates);
}

/* The options of `study q2` (sc_* for those q1 shares). */
struct q2_args {
    struct study_common s;
    struct qs_q2_opts o;
};

static int q2_parse(struct qs_ctx *c, int argc, char **argv, void *args, qs_err *e)
{
    struct q2_args *p = args;
    sc_init(&p->s, "study q2");
    long fit = 65536, epochs = 8;
    struct qs_q2_opts *o = &p->o;
    qs_q2_opts_default(o);
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (sc_opt(&p->s, argv[i]))
            continue;
        if ((v = qs_opt_value(argv[i], "fit"))) {
            if (qs_parse_int(v, 256, 1 << 24, &fit, "study q2 fit", e) < 0)
                return -1;
        } else if ((v = qs_opt_value(argv[i], "epochs"))) {
            if (qs_parse_int(v, 1, 1000, &epochs, "study q2 epochs", e) < 0)
                return -1;
        } else if ((v = qs_opt_value(argv[i], "heldout_tokens"))) {
            if (qs_parse_int(v, 1, 1 << 30, &o->heldout_tokens, "study q2 heldout_tokens", e) < 0)
                return -1;
        } else
            return qs_errf(e, "study q2: unexpected '%s'", argv[i]);
    }
    o->n_fit = o->n_eval = (int)fit;
    o->epochs = (int)epochs;
    return SC_FINISH(c, &p->s, q2_bundled, o, e);
}

/* The study's canonical line (the journal's): its own options are fit=, epochs= and
 * heldout_tokens=. */
static void q2_canon(struct qs_ctx *c, const void *args, const void *res)
{
    const struct q2_args *p = args;
    char mid[96];
    int k = snprintf(mid, sizeof mid, " fit=%d epochs=%d", p->o.n_fit, p->o.epochs);
    if (p->o.heldout_tokens > 0)
        snprintf(mid + k, sizeof mid - (size_t)k, " heldout_tokens=%ld", p->o.heldout_tokens);
    sc_canon(c, &p->s, &p->o.fmt, &p->o.opt, ((const struct qs_q2 *)res)->sum.nlm, mid);
}

/* The finished study's report (JSON returned, text appended to t), CSV files named; the
 * in-process run and `study merge` both print through it. */
static cJSON *q2_result(struct qs_ctx *c, const void *args, const void *res, struct qs_sb *t)
{
    const struct q2_args *p = args;
    const struct qs_q2 *q = res;
    cJSON *o_ = cJSON_CreateObject();
    cJSON_AddStringToObject(o_, "cmd", "study q2");
    q2_report(q, &p->o, o_, t);
    if (p->s.csv) {
        qs_sb_printf(t, "\nwrote %s-master_summary.csv and %s-sites.csv", p->s.csv, p->s.csv);
        cJSON_AddStringToObject(o_, "csv_prefix", p->s.csv);
    }
    qs_set_last_table(c, "study q2 settings", cJSON_GetObjectItem(o_, "settings"), NULL);
    return o_;
}

/* ---- the kinds of study: what one run, one plan and one merge ask of each -------------------
 * study q1 and study q2 run, write a plan and merge the same way; what differs is their options
 * (args, which begin with the struct study_common), their result (res: a struct qs_q1 or
 * qs_q2) and the core calls on them. */
struct study_kind {
    const char *name; /* "q1": the plan's study and the merged files' prefix */
    size_t args_size, res_size;
    int (*parse)(struct qs_ctx *c, int argc, char **argv, void *args, qs_err *e);
    void (*bench_opts)(const void *args, struct qs_q1_opts *q1); /* a setting's bench (plan=) */
    int (*run)(struct qs_ctx *c, void *args, void *res, qs_err *e);
    int (*write_csv)(const void *args, const void *res, const char *prefix, qs_err *e);
    int (*write_record)(const void *args, const void *res, const char *path, qs_err *e);
    void (*canon)(struct qs_ctx *c, const void *args, const void *res);
    cJSON *(*report)(struct qs_ctx *c, const void *args, const void *res, struct qs_sb *t);
    void (*record_options)(const void *args, char *buf, size_t n);
    /* appends a record's settings to res (qs_q1_record_read, qs_q2_record_read) */
    int (*record_read)(const char *path, const char *opts, void *res, qs_err *e);
    int (*nsettings)(const void *res);
    const char *(*setting)(const void *res, int i, uint64_t *seed); /* its model */
    void (*truncate)(void *res, int n);                             /* drops settings n.. */
    int (*aggregate)(void *res, qs_err *e);
    void (*free)(void *res);
};

static void q1_bench_opts(const void *args, struct qs_q1_opts *q1)
{
    *q1 = ((const struct q1_args *)args)->o;
}

static int q1_run(struct qs_ctx *c, void *args, void *res, qs_err *e)
{
    struct qs_q1_opts *o = &((struct q1_args *)args)->o;
    o->progress = c->b->progress;
    o->progress_ctx = c->b->progress_ctx;
    o->cancel = &c->b->cancel;
    return qs_study_q1(o, res, e);
}

static int q1_write_csv(const void *args, const void *res, const char *prefix, qs_err *e)
{
    return qs_q1_write_csv(res, &((const struct q1_args *)args)->o, prefix, e);
}

static int q1_write_record(const void *args, const void *res, const char *path, qs_err *e)
{
    return qs_q1_record_write(res, &((const struct q1_args *)args)->o, path, e);
}

static void q1_record_options(const void *args, char *buf, size_t n)
{
    qs_q1_record_options(&((const struct q1_args *)args)->o, buf, n);
}

static int q1_record_read(const char *path, const char *opts, void *res, qs_err *e)
{
    return qs_q1_record_read(path, opts, res, e);
}

static int q1_nsettings(const void *res)
{
    return ((const struct qs_q1 *)res)->nsettings;
}

static const char *q1_setting(const void *res, int i, uint64_t *seed)
{
    const struct qs_q1_setting *st = &((const struct qs_q1 *)res)->settings[i];
    *seed = st->seed;
    return st->model;
}

static void q1_truncate(void *res, int n)
{
    struct qs_q1 *q = res;
    if (n < q->nsettings)
        q->nlayers = q->settings[n].first;
    q->nsettings = n;
}

static int q1_aggregate(void *res, qs_err *e)
{
    return qs_q1_aggregate(res, e);
}

static void q1_free(void *res)
{
    qs_q1_free(res);
}

static const struct study_kind study_q1 = {
    .name = "q1",
    .args_size = sizeof(struct q1_args),
    .res_size = sizeof(struct qs_q1),
    .parse = q1_parse,
    .bench_opts = q1_bench_opts,
    .run = q1_run,
    .write_csv = q1_write_csv,
    .write_record = q1_write_record,
    .canon = q1_canon,
    .report = q1_report,
    .record_options = q1_record_options,
    .record_read = q1_record_read,
    .nsettings = q1_nsettings,
    .setting = q1_setting,
    .truncate = q1_truncate,
    .aggregate = q1_aggregate,
    .free = q1_free,
};

static void q2_bench_opts(const void *args, struct qs_q1_opts *q1)
{
    qs_q2_bench_opts(&((const struct q2_args *)args)->o, q1);
}

static int q2_run(struct qs_ctx *c, void *args, void *res, qs_err *e)
{
    struct qs_q2_opts *o = &((struct q2_args *)args)->o;
    o->progress = c->b->progress;
    o->progress_ctx = c->b->progress_ctx;
    o->cancel = &c->b->cancel;
    return qs_study_q2(o, res, e);
}

static int q2_write_csv(const void *args, const void *res, const char *prefix, qs_err *e)
{
    const struct qs_q2 *q = res;
    return qs_q2_write_csv(q->settings, q->nsettings, &((const struct q2_args *)args)->o, prefix,
                           e);
}

static int q2_write_record(const void *args, const void *res, const char *path, qs_err *e)
{
    const struct qs_q2 *q = res;
    return qs_q2_record_write(q->settings, q->nsettings, &((const struct q2_args *)args)->o, path,
                              e);
}

static void q2_record_options(const void *args, char *buf, size_t n)
{
    qs_q2_record_options(&((const struct q2_args *)args)->o, buf, n);
}

static int q2_record_read(const char *path, const char *opts, void *res, qs_err *e)
{
    return qs_q2_record_read(path, opts, res, e);
}

static int q2_nsettings(const void *res)
{
    return ((const struct qs_q2 *)res)->nsettings;
}

static const char *q2_setting(const void *res, int i, uint64_t *seed)
{
    const struct qs_q2_setting *st = &((const struct qs_q2 *)res)->settings[i];
    *seed = st->seed;
    return st->model;
}

static void q2_truncate(void *res, int n)
{
    struct qs_q2 *q = res;
    while (q->nsettings > n)
        qs_q2_setting_clear(&q->settings[--q->nsettings]);
}

static int q2_aggregate(void *res, qs_err *e)
{
    (void)e;
    qs_q2_aggregate(res);
    return 0;
}

static void q2_free(void *res)
{
    qs_q2_free(res);
}

static const struct study_kind study_q2 = {
    .name = "q2",
    .args_size = sizeof(struct q2_args),
    .res_size = sizeof(struct qs_q2),
    .parse = q2_parse,
    .bench_opts = q2_bench_opts,
    .run = q2_run,
    .write_csv = q2_write_csv,
    .write_record = q2_write_record,
    .canon = q2_canon,
    .report = q2_result,
    .record_options = q2_record_options,
    .record_read = q2_record_read,
    .nsettings = q2_nsettings,
    .setting = q2_setting,
    .truncate = q2_truncate,
    .aggregate = q2_aggregate,
    .free = q2_free,
};

/* ---- one run (or plan) and one merge for both kinds ---------------------------------------- */

/* `study q1|q2 ...`: plan=DIR writes the plan; else the study runs here, writes csv= and out=
 * and prints its report. */
static int study_cmd(struct qs_ctx *c, const struct study_kind *k, int argc, char **argv, qs_err *e)
{
    void *args = qs_calloc(1, k->args_size), *res = qs_calloc(1, k->res_size);
    const struct study_common *s = args; /* the first member of every kind's args */
    int rc = -1;
    if (!args || !res) {
        qs_errf(e, "out of memory");
        goto out;
    }
    if (k->parse(c, argc, argv, args, e) < 0)
        goto out;
    if (s->plan) {
        struct qs_q1_opts q1;
        k->bench_opts(args, &q1);
        rc = sc_plan(c, s, &q1, k->name, argc, argv, e);
        goto out;
    }
    c->b->cancel = 0;
    if (k->run(c, args, res, e) < 0)
        goto out;
    if ((s->csv && k->write_csv(args, res, s->csv, e) < 0) ||
        (s->out && k->write_record(args, res, s->out, e) < 0)) {
        k->free(res);
        goto out;
    }
    k->canon(c, args, res);
    struct qs_sb t = {0};
    cJSON *obj = k->report(c, args, res, &t);
    qs_emit(c, obj, t.s);
    qs_sb_free(&t);
    k->free(res);
    rc = 0;
out:
    free(args);
    free(res);
    return rc;
}

static int cmd_study_q1(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    return study_cmd(c, &study_q1, argc, argv, e);
}

static int cmd_study_q2(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    return study_cmd(c, &study_q2, argc, argv, e);
}

/* Writes TEXT to PATH (a whole file, replaced once complete). */
static int put_file(const char *path, const char *text, qs_err *e)
{
    qs_outfile of;
    if (qs_out_open(&of, path, e) < 0)
        return -1;
    fputs(text, of.f);
    fputc('\n', of.f);
    return qs_out_commit(&of, e);
}

/* The parts of `study merge` every study kind shares. */

/* plan.json's option words (argv, at most 64), its settings array and its session seed. */
static int merge_plan_args(const cJSON *plan, const char *dir, char **argv, int *argc,
                           const cJSON **settings, uint64_t *seed, qs_err *e)
{
    const cJSON *ja = cJSON_GetObjectItemCaseSensitive(plan, "args");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(plan, "settings");
    const cJSON *jseed = cJSON_GetObjectItemCaseSensitive(plan, "seed");
    int na = cJSON_GetArraySize(ja);
    if (!cJSON_IsArray(ja) || !cJSON_IsArray(js) || !cJSON_IsNumber(jseed) || na > 64)
        return qs_errf(e, "study merge %s: plan.json lacks args, settings or seed", dir);
    *argc = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, ja)
    {
        if (!cJSON_IsString(x))
            return qs_errf(e, "study merge %s: plan.json: args holds a non-string", dir);
        argv[(*argc)++] = x->valuestring;
    }
    *settings = js;
    *seed = (uint64_t)jseed->valuedouble;
    return 0;
}

/* One setting of plan.json: its name, model and seed, and the path of its record. */
static int merge_setting(const cJSON *x, const char *dir, const char **name, const char **model,
                         uint64_t *seed, char *path, size_t np, qs_err *e)
{
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(x, "name");
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(x, "model");
    const cJSON *jsd = cJSON_GetObjectItemCaseSensitive(x, "seed");
    if (!cJSON_IsString(jn) || !cJSON_IsString(jm) || !cJSON_IsNumber(jsd) ||
        strchr(jn->valuestring, '/'))
        return qs_errf(e, "study merge %s: plan.json: a malformed setting", dir);
    *name = jn->valuestring;
    *model = jm->valuestring;
    *seed = (uint64_t)jsd->valuedouble;
    snprintf(path, np, "%s/results/%s.json", dir, jn->valuestring);
    return 0;
}

/* The refusal when no setting of the plan has finished. */
static int merge_none_finished(const struct qs_plan_state *ps, const char *dir, qs_err *e)
{
    struct qs_sb fl = {0};
    for (int i = 0; i < ps->nfailed; i++)
        qs_sb_printf(&fl, "; failed: %s", ps->failed[i]);
    qs_errf(e, "study merge %s: no setting has finished (%d planned, %d missing, %d failed)%s", dir,
            ps->n, ps->nmissing, ps->nfailed, fl.s ? fl.s : "");
    qs_sb_free(&fl);
    return -1;
}

/* The merged study's report obj (taken) and text t: what was missing or failed first, then
 * DIR/KIND-summary.json and DIR/KIND-report.txt written, then the result emitted. */
static int merge_emit(struct qs_ctx *c, const char *dir, const char *kind, cJSON *obj,
                      const struct qs_plan_state *ps, const struct qs_sb *t, qs_err *e)
{
    struct qs_sb pre = {0};
    int rc = -1;
    cJSON_ReplaceItemInObjectCaseSensitive(obj, "cmd", cJSON_CreateString("study merge"));
    cJSON_AddStringToObject(obj, "study", kind);
    qs_plan_state_report(ps, dir, obj, &pre);
    qs_sb_printf(&pre, "%s", t->s ? t->s : "");
    char *js_text = cJSON_Print(obj);
    char f1[PATH_MAX + 32], f2[PATH_MAX + 32];
    snprintf(f1, sizeof f1, "%s/%s-summary.json", dir, kind);
    snprintf(f2, sizeof f2, "%s/%s-report.txt", dir, kind);
    if (!js_text || !pre.s)
        qs_errf(e, "out of memory");
    else if (put_file(f1, js_text, e) == 0 && put_file(f2, pre.s, e) == 0)
        rc = 0;
    free(js_text);
    if (rc == 0)
        qs_emit(c, obj, pre.s);
    else
        cJSON_Delete(obj);
    qs_sb_free(&pre);
    return rc;
}

/* `study merge DIR` of a plan of kind k: the plan's options parsed as its own command parsed
 * them (with its session seed), every setting's record read and checked to be that setting's,
 * the finished ones aggregated and reported as one run of the study would. */
static int study_merge(struct qs_ctx *c, const struct study_kind *k, const char *dir,
                       const cJSON *plan, const char *csv, qs_err *e)
{
    char *argv[64];
    int argc = 0;
    const cJSON *js, *x;
    uint64_t plan_seed = 0;
    if (merge_plan_args(plan, dir, argv, &argc, &js, &plan_seed, e) < 0)
        return -1;
    void *args = qs_calloc(1, k->args_size), *res = qs_calloc(1, k->res_size);
    struct study_common *s = args;
    struct qs_plan_state ps = {0};
    struct qs_sb t = {0}, pfx = {0};
    cJSON *obj = NULL;
    int rc = -1;
    if (!args || !res) {
        free(args);
        free(res);
        return qs_errf(e, "out of memory");
    }
    uint64_t seed = c->b->seed;
    c->b->seed = plan_seed;
    int prc = k->parse(c, argc, argv, args, e);
    c->b->seed = seed;
    if (prc < 0) {
        qs_err_prefix(e, "study merge: the plan's options");
        goto out;
    }
    s->loaded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(plan, "loaded_lm"));
    qs_sb_printf(&pfx, "%s/%s", dir, k->name);
    s->csv = csv ? csv : pfx.s;
    char opts[600];
    k->record_options(args, opts, sizeof opts);
    cJSON_ArrayForEach(x, js)
    {
        const char *name = NULL, *model = NULL;
        uint64_t sseed = 0, rseed = 0;
        char path[PATH_MAX + 200];
        if (merge_setting(x, dir, &name, &model, &sseed, path, sizeof path, e) < 0)
            goto out;
        ps.n++;
        qs_err re = {{0}};
        int before = k->nsettings(res);
        int r = k->record_read(path, opts, res, &re);
        if (r == 0 && (k->nsettings(res) != before + 1 ||
                       strcmp(k->setting(res, before, &rseed), model) || rseed != sseed)) {
            snprintf(re.msg, sizeof re.msg, "%s: not the record of this setting", path);
            k->truncate(res, before); /* drop what it added */
            r = -1;
        }
        if (r == 0)
            ps.ndone++;
        else
            qs_plan_state_add(&ps, dir, name, r < 0 ? re.msg : NULL);
    }
    if (k->nsettings(res) == 0) {
        merge_none_finished(&ps, dir, e);
        goto out;
    }
    if (k->aggregate(res, e) < 0 || k->write_csv(args, res, s->csv, e) < 0)
        goto out;
    obj = k->report(c, args, res, &t);
    rc = merge_emit(c, dir, k->name, obj, &ps, &t, e);
    obj = NULL;
out:
    cJSON_Delete(obj);
    qs_sb_free(&t);
    qs_sb_free(&pfx);
    qs_plan_state_free(&ps);
    k->free(res);
    free(args);
    free(res);
    return rc;
}

int qs_study_q1_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e)
{
    return study_merge(c, &study_q1, dir, plan, csv, e);
}

int qs_study_q2_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e)
{
    return study_merge(c, &study_q2, dir, plan, csv, e);
}

const struct qs_cmd_def qs_cmds_study[] = {
    {"study q1", 0, 0,
     QS_ARGS(QS_OPT("models", QS_ARG_WORD, "PATH,...|bundled"),
             QS_OPT("seeds", QS_ARG_WORD, "0,1,2"), QS_OPT("prec", QS_ARG_ENUM, "int4|int8|float"),
             QS_OPT("format", QS_ARG_FORMAT, "int3"),
             QS_OPT("gran", QS_ARG_ENUM, "tensor|channel|group:N|block"),
             QS_OPT("calib_tokens", QS_ARG_INT, NULL), QS_OPT("csv", QS_ARG_PATH, "PREFIX"),
             QS_OPT("out", QS_ARG_PATH, "RECORD.json"), QS_OPT("plan", QS_ARG_PATH, "DIR")),
     QS_CMD_JOURNAL | QS_CMD_LONG | QS_CMD_WRITES_OPT, cmd_study_q1,
     "the Q1 study: linear recovery (float and quantized map) vs correctability, per layer",
     "Each model (MODEL or MODEL:DATA.csv; data from its qscope.data metadata) and seed on a "
     "bench of its own: R_lin_float, R_lin_q4, correctability per layer, per-setting verdicts, "
     "the aggregate table and depth profile, next to the overnight report's figures (that "
     "report is not distributed with qscope; the rules are in qscope-methods(7)). csv= writes "
     "PREFIX-layers.csv and PREFIX-settings.csv. The current bench is left untouched. out= "
     "writes the per-setting record (every figure at %.17g) that `study merge` reads. plan=DIR "
     "runs nothing: it writes one session per setting (model and data pinned by SHA-256), "
     "DIR/jobs.txt (one shell command a setting, for GNU parallel) and DIR/slurm.sbatch (a "
     "Slurm job array); finished settings are skipped when a plan runs again."},
    {"study merge", 1, 1,
     QS_ARGS(QS_POS("DIR", QS_ARG_PATH, NULL), QS_OPT("csv", QS_ARG_PATH, "PREFIX")),
     QS_CMD_JOURNAL | QS_CMD_WRITES, qs_cmd_study_merge,
     "merge a study plan's finished settings into the study's report",
     "Reads DIR/plan.json (a study q1 or study q2 plan) and every DIR/results/NAME.json, names "
     "the settings missing or failed (a record cut short, of other options, of another setting "
     "or edited is refused), and prints the study's report over the finished ones, with the "
     "figures the same study run in one process gives (the same aggregation over the same "
     "full-precision records). q1 writes PREFIX-layers.csv, PREFIX-settings.csv, "
     "PREFIX-master_summary.csv (default PREFIX DIR/q1), DIR/q1-summary.json and "
     "DIR/q1-report.txt; q2 PREFIX-master_summary.csv, PREFIX-sites.csv (default PREFIX DIR/q2), "
     "DIR/q2-summary.json and DIR/q2-report.txt."},
    {"study q2", 0, 0,
     QS_ARGS(QS_OPT("models", QS_ARG_WORD, "PATH,...|bundled"),
             QS_OPT("seeds", QS_ARG_WORD, "0,1,2"), QS_OPT("format", QS_ARG_FORMAT, "int3"),
             QS_OPT("gran", QS_ARG_ENUM, "tensor|channel|group:N|block"),
             QS_OPT("fit", QS_ARG_INT, "65536"), QS_OPT("epochs", QS_ARG_INT, "8"),
             QS_OPT("heldout_tokens", QS_ARG_INT, NULL), QS_OPT("csv", QS_ARG_PATH, "PREFIX"),
             QS_OPT("out", QS_ARG_PATH, "RECORD.json"), QS_OPT("plan", QS_ARG_PATH, "DIR")),
     QS_CMD_JOURNAL | QS_CMD_LONG | QS_CMD_WRITES_OPT, cmd_study_q2,
     "the Q2 study: does a site's quantization-time statistics carry correction signal beyond "
     "its identity?",
     "Each model and seed on a bench of its own: one small network shared by every site and "
     "output channel predicts the pre-activation correction Y_f - Y_q element by element from "
     "Y_q, the channel's weight-error norm, scale and row norm, and a conditioning input: a "
     "learned embedding of the site (embedding_only), the site's quantization-time statistics "
     "(features_only) or both. Fitted on calibration elements, judged by the held-out "
     "correction MSE and the held-out loss gain with the corrector at every site; verdict per "
     "setting, the instability mode (a negative gain) flagged. bundled: the digits MLP, "
     "tiny-gpt2 and tiny-llama on their text; with a transformer loaded, that model. The "
     "corrector and the features are defined in qscope-methods(7). csv= writes "
     "PREFIX-master_summary.csv and PREFIX-sites.csv. The current bench is left untouched. out= "
     "writes the per-setting record (every figure at %.17g, a SHA-256 digest of its fields) that "
     "`study merge` reads; plan=DIR writes the study as a plan of one job per setting, as study "
     "q1 does."},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
