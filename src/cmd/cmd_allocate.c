/* cmd_allocate.c - `allocate`: a per-layer plan of formats (and corrections) under a bit
 * budget, or of correction ranks under a rank budget. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/methods.h"
#include "qscope/sensitivity.h"
#include "qscope/spectral.h"

#include "cmd_fmt.h"

/* Parses "int4", "int4/tensor", "int3/group:32" (or "/g32") into a candidate. */
static int parse_cand(const char *tok, const struct qs_qopts *base, const char *gran, uint64_t seed,
                      struct qs_wcand *c, qs_err *e)
{
    char name[64], g[40];
    snprintf(name, sizeof name, "%s", tok);
    char *slash = strchr(name, '/');
    snprintf(g, sizeof g, "%s", gran);
    if (slash) {
        *slash = 0;
        if (slash[1] == 'g' && slash[2] >= '0' && slash[2] <= '9')
            snprintf(g, sizeof g, "group:%s", slash + 2);
        else
            snprintf(g, sizeof g, "%s", slash + 1);
    }
    memset(c, 0, sizeof *c);
    if (qs_format_parse(name, &c->fmt, e) < 0)
        return -1;
    c->opt = *base;
    c->opt.seed = seed;
    /* the granularity is the format's own (fixed blocks, or no scale at all): the default
     * gran does not apply; one given with "/G" is checked (and refused) below */
    const struct qs_format_traits *ft = qs_format_traits(&c->fmt);
    int fixed = ft->fixed_block || ft->unscaled;
    if (c->fmt.kind == QS_FMT_NONE) {
        snprintf(c->label, sizeof c->label, "none");
        return 0;
    }
    if (!fixed || slash) {
        char gt[64];
        snprintf(gt, sizeof gt, "gran=%s", g);
        if (qs_qopts_parse_token(&c->opt, gt, e) < 0)
            return -1;
    }
    if (qs_qopts_check(&c->fmt, &c->opt, e) < 0)
        return qs_err_prefix(e, tok);
    char gb[24], fname[sizeof c->fmt.name];
    memcpy(fname, c->fmt.name, sizeof fname);
    if (fixed)
        snprintf(c->label, sizeof c->label, "%s", fname);
    else
        snprintf(c->label, sizeof c->label, "%s/%s", fname,
                 qs_cmd_gran_word(&c->opt, gb, sizeof gb));
    return 0;
}

/* The quant line that applies candidate c to one layer (weights only). */
static void plan_line(const struct qs_bench *b, const char *layer, const struct qs_wcand *c,
                      char *buf, size_t n)
{
    char opts[200] = "";
    if (c->fmt.kind != QS_FMT_NONE)
        qs_qopts_format(&c->fmt, &c->opt, opts, sizeof opts);
    char meth[200] = "";
    if (c->fmt.kind != QS_FMT_NONE)
        qs_rule_method_format(&c->meth, meth, sizeof meth);
    snprintf(buf, n, "quant %s %s%s%s%s%s%s", layer, c->fmt.name, opts[0] ? " " : "", opts,
             b->regime == QS_REGIME_WEIGHT ? "" : " on=w", meth[0] ? " " : "", meth);
}

static int apply_lines(struct qs_ctx *c, char **lines, int n, qs_err *e)
{
    for (int k = 0; k < n; k++)
        if (lines[k] && qs_exec_line(c, lines[k], e) < 0)
            return qs_err_prefix(e, "allocate apply");
    return 0;
}

/* The low-rank corrections allocate bits= may add on top of each weight format. */
struct corr_opts {
    enum qs_corr_method m; /* QS_CORR_NONE: weight formats only */
    int ranks[8], nranks;
    const char *prec; /* canonical: "float" or a format name */
};

/* A split's task metric as allocate prints it: accuracy for a classifier, perplexity for a
 * language model (whose accuracy is NaN), then the loss. */
static void alloc_metric(const struct qs_metric *m, char *buf, size_t n)
{
    if (isnan(m->acc) && !isnan(m->loss))
        snprintf(buf, n, "ppl %.4f loss %.4f", exp(m->loss), m->loss);
    else
        snprintf(buf, n, "acc %.4f loss %.4f", m->acc, m->loss);
}

static void alloc_metric_json(cJSON *o, const struct qs_metric *m)
{
    qs_json_num(o, "acc", m->acc);
    qs_json_num(o, "loss", m->loss);
    if (isnan(m->acc) && !isnan(m->loss))
        qs_json_num(o, "ppl", exp(m->loss));
}

static int allocate_bits(struct qs_ctx *c, double budget, const char *formats, const char *gran,
                         const struct qs_qopts *base, const char *extra, const char *methods,
                         const struct corr_opts *co, int apply, qs_err *e)
{
    struct qs_bench *b = c->b;
    struct qs_wcand base_cand[32];
    int nb = 0;
    char buf[512];
    /* quantizer methods (methods=rtn,gptq,awq,imatrix): each format with each; allocate judges
     * a candidate one site at a time, so methods take the float model's statistics */
    struct qs_rule_method ms[4];
    int nm = 0;
    snprintf(buf, sizeof buf, "%s", methods ? methods : "rtn");
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        struct qs_rule_method m;
        qs_rule_method_default(&m);
        m.method = !strcmp(tok, "rtn")       ? QS_METHOD_RTN
                   : !strcmp(tok, "gptq")    ? QS_METHOD_GPTQ
                   : !strcmp(tok, "awq")     ? QS_METHOD_AWQ
                   : !strcmp(tok, "imatrix") ? QS_METHOD_IMATRIX
                                             : -1;
        if (m.method < 0)
            return qs_errf(e, "allocate: methods=%s: expected rtn, gptq, awq or imatrix", tok);
        m.inputs_float = m.method != QS_METHOD_RTN;
        m.seed = b->seed;
        for (int k = 0; k < nm; k++)
            if (ms[k].method == m.method)
                return qs_errf(e, "allocate: methods= names %s twice", tok);
        if (nm == 4)
            return qs_errf(e, "allocate: methods= takes at most rtn, gptq, awq, imatrix");
        ms[nm++] = m;
    }
    snprintf(buf, sizeof buf, "%s", formats);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        struct qs_wcand one;
        if (parse_cand(tok, base, gran, b->seed, &one, e) < 0)
            return -1;
        for (int k = 0; k < nm; k++) {
            if (k > 0 && one.fmt.kind == QS_FMT_NONE)
                break; /* float takes no method */
            qs_err e2;
            if (qs_rule_method_check(&ms[k], &one.fmt, 0, &e2) < 0)
                continue; /* e.g. ggml types, which llama.cpp's rules round */
            if (nb == 32)
                return qs_errf(e, "allocate: at most 32 format and method candidates");
            base_cand[nb] = one;
            base_cand[nb].meth = ms[k];
            if (ms[k].method != QS_METHOD_RTN)
                snprintf(base_cand[nb].label + strlen(base_cand[nb].label),
                         sizeof base_cand[nb].label - strlen(base_cand[nb].label), "+%s",
                         qs_method_name((enum qs_method)ms[k].method));
            nb++;
        }
    }
    /* every format alone, then each (non-float) format with each rank of the correction */
    struct qs_wcand *cand = qs_calloc((size_t)nb * (1 + (size_t)co->nranks), sizeof *cand);
    if (!cand)
        return qs_errf(e, "out of memory");
    int nc = 0;
    for (int k = 0; k < nb; k++)
        cand[nc++] = base_cand[k];
    for (int k = 0; co->m != QS_CORR_NONE && k < nb; k++)
        for (int j = 0; j < co->nranks && base_cand[k].fmt.kind != QS_FMT_NONE; j++) {
            struct qs_wcand *w = &cand[nc++];
            *w = base_cand[k];
            w->corr = co->m;
            w->rank = co->ranks[j];
            snprintf(w->prec, sizeof w->prec, "%s", co->prec);
            snprintf(w->label, sizeof w->label, "%s+%s:r=%d:%s", base_cand[k].label,
                     qs_corr_name(co->m), co->ranks[j], co->prec);
        }
    struct qs_bit_plan p;
    if (qs_allocate_bits(b, cand, nc, budget, &p, e) < 0) {
        free(cand);
        return -1;
    }
    int L = qs_bench_nunits(b);
    char flist[512] = "";
    for (int k = 0; k < nb; k++)
        snprintf(flist + strlen(flist), sizeof flist - strlen(flist), "%s%s", k ? "," : "",
                 base_cand[k].label);
    int corr_any = co->m != QS_CORR_NONE || p.bench_corr_bits > 0;
    cJSON *o = cJSON_CreateObject(), *plan = cJSON_CreateArray(), *uni = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "allocate");
    qs_json_num(o, "budget", budget);
    cJSON_AddStringToObject(o, "formats", flist);
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "allocate bits=%.6g over %s: greedy by marginal calibration loss per bit, "
                 "then %s on the joint calibration loss\n",
                 budget, flist,
                 p.pairs ? "exchanges"
                         : "single changes (two-site exchanges skipped: too costly at this size)");
    cJSON_AddStringToObject(o, "refinement", p.pairs ? "exchanges" : "single changes");
    if (co->m != QS_CORR_NONE) {
        qs_sb_printf(&t, "candidates also with %s r=", qs_corr_name(co->m));
        for (int j = 0; j < co->nranks; j++)
            qs_sb_printf(&t, "%s%d", j ? "," : "", co->ranks[j]);
        qs_sb_printf(&t, " prec=%s on top (one budget: weight and correction bits)\n", co->prec);
    }
    int nwid = 10;
    for (int i = 0; i < L; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        if ((int)strlen(u.name) > nwid)
            nwid = (int)strlen(u.name);
    }
    const char *tsplit = b->lm ? "held-out" : "test";
    qs_sb_printf(&t, "%-*s %-16s %8s %12s\n", nwid, "layer", "format", "bits/w", "dloss_calib");
    /* the quant lines first, then the correct lines: a correction is fitted on its format */
    char **lines = qs_calloc(2 * (size_t)L, sizeof *lines);
    int ncl = 0;
    for (int i = 0; i < L; i++) {
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        const struct qs_corr *kc = &b->ls[i].corr;
        int k = p.choice[i], keeps = p.keeps[(size_t)i * nc + k];
        double nwl = (double)l->out * l->in, bw = p.bits[(size_t)i * nc + k] / nwl;
        double dl = p.dloss[(size_t)i * nc + k];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "layer", l->name);
        cJSON_AddStringToObject(j, "format", cand[k].fmt.name);
        char gb[24];
        const struct qs_format_traits *ft = qs_format_traits(&cand[k].fmt);
        const char *gw = qs_cmd_gran_word(&cand[k].opt, gb, sizeof gb);
        if (cand[k].fmt.kind == QS_FMT_NONE || ft->unscaled)
            gw = "none"; /* no scale */
        else if (ft->fixed_block)
            gw = "block"; /* the format's own blocks */
        cJSON_AddStringToObject(j, "gran", gw);
        qs_json_num(j, "bits_per_weight", bw);
        qs_json_num(j, "dloss_calib", dl);
        char label[160];
        snprintf(label, sizeof label, "%s", cand[k].label);
        if (cand[k].corr != QS_CORR_NONE) {
            cJSON_AddStringToObject(j, "correction", qs_corr_name(cand[k].corr));
            cJSON_AddNumberToObject(j, "correction_rank", cand[k].rank);
            cJSON_AddStringToObject(j, "correction_prec", cand[k].prec);
        } else if (keeps) {
            cJSON_AddStringToObject(j, "correction", qs_corr_name(kc->method));
            cJSON_AddTrueToObject(j, "keeps_correction");
            snprintf(label + strlen(label), sizeof label - strlen(label), " (keeps its %s)",
                     qs_corr_name(kc->method));
        }
        char line[400];
        plan_line(b, l->name, &cand[k], line, sizeof line);
        cJSON_AddStringToObject(j, "command", line);
        if (lines)
            lines[i] = qs_strdup(line);
        if (cand[k].corr != QS_CORR_NONE) {
            char cl[300];
            snprintf(cl, sizeof cl, "correct %s %s r=%d prec=%s", l->name,
                     qs_corr_name(cand[k].corr), cand[k].rank, cand[k].prec);
            cJSON_AddStringToObject(j, "correct_command", cl);
            if (lines)
                lines[L + ncl++] = qs_strdup(cl);
        }
        cJSON_AddItemToArray(plan, j);
        qs_sb_printf(&t, "%-*s %-16s %8.3f %12.5g\n", nwid, l->name, label, bw, dl);
    }
    cJSON_AddItemToObject(o, "plan", plan);
    cJSON *tab = cJSON_CreateArray();
    for (int i = 0; i < L; i++) {
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        cJSON *row = cJSON_CreateObject(), *cells = cJSON_CreateArray();
        cJSON_AddStringToObject(row, "layer", l->name);
        for (int k = 0; k < nc; k++) {
            cJSON *cell = cJSON_CreateObject();
            double bk = p.bits[(size_t)i * nc + k];
            cJSON_AddStringToObject(cell, "format", cand[k].label);
            qs_json_num(cell, "bits_per_weight", bk < 0 ? NAN : bk / ((double)l->out * l->in));
            qs_json_num(cell, "dloss_calib", bk < 0 ? NAN : p.dloss[(size_t)i * nc + k]);
            cJSON_AddItemToArray(cells, cell);
        }
        cJSON_AddItemToObject(row, "candidates", cells);
        cJSON_AddItemToArray(tab, row);
    }
    cJSON_AddItemToObject(o, "table", tab);
    qs_json_num(o, "joint_loss_calib", p.joint_loss_calib);
    qs_json_num(o, "bits_per_weight", p.bits_per_weight);
    alloc_metric_json(o, &p.plan_test);
    cJSON *fj = cJSON_CreateObject();
    alloc_metric_json(fj, &p.float_test);
    cJSON_AddItemToObject(o, "float", fj);
    char mp[96], mfl[96];
    alloc_metric(&p.plan_test, mp, sizeof mp);
    alloc_metric(&p.float_test, mfl, sizeof mfl);
    qs_sb_printf(&t,
                 "plan: %.4f bits/weight (packed), joint calibration loss %.4f; %s %s; float %s\n",
                 p.bits_per_weight, p.joint_loss_calib, tsplit, mp, mfl);
    qs_sb_printf(&t, "uniform for comparison:\n");
    for (int k = 0; k < nc; k++) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "format", cand[k].label);
        qs_json_num(j, "bits_per_weight", p.uniform_bpw[k]);
        alloc_metric_json(j, &p.uniform_test[k]);
        cJSON_AddItemToArray(uni, j);
        if (isnan(p.uniform_bpw[k])) {
            qs_sb_printf(&t, "  %-16s not applicable to every layer\n", cand[k].label);
            continue;
        }
        char mu[96];
        alloc_metric(&p.uniform_test[k], mu, sizeof mu);
        qs_sb_printf(&t, "  %-16s %8.4f bits/weight, %s %s%s\n", cand[k].label, p.uniform_bpw[k],
                     tsplit, mu, p.uniform_bpw[k] <= budget * (1 + 1e-12) ? "" : "  (over budget)");
    }
    cJSON_AddItemToObject(o, "uniform", uni);
    for (int i = 0; lines && i < L + ncl; i++)
        qs_sb_printf(&t, "%s\n", lines[i] ? lines[i] : "");
    if (corr_any) {
        qs_json_num(o, "bench_correction_bits", p.bench_corr_bits);
        qs_sb_printf(&t,
                     "(bits/w of a layer includes its correction's bits: 32 a parameter in "
                     "float, the packed factors otherwise; dloss_calib is measured with the "
                     "correction applied. A correction on the bench counts, with its bits, "
                     "only where the plan keeps its layer's format, since a new format drops "
                     "it: %.0f bits on the bench now)\n",
                     p.bench_corr_bits);
    }
    qs_sb_printf(&t,
                 "(weight-only; dloss_calib: calibration loss with only that layer at that "
                 "format minus the float loss; bits from packed sizes; chosen on the "
                 "calibration split, %s metrics on the %s split)%s\n",
                 tsplit, tsplit,
                 apply ? ""
                 : ncl ? "\n(add `apply` to run these quant and correct commands)"
                       : "\n(add `apply` to run these quant commands)");
    qs_add_gate(c, o, &t);
    char cx[160] = "";
    if (co->m != QS_CORR_NONE) {
        size_t cl = (size_t)snprintf(cx, sizeof cx, " corr=%s ranks=", qs_corr_name(co->m));
        for (int j = 0; j < co->nranks; j++)
            cl += (size_t)snprintf(cx + cl, sizeof cx - cl, "%s%d", j ? "," : "", co->ranks[j]);
        snprintf(cx + cl, sizeof cx - cl, " prec=%s", co->prec);
    }
    /* the formats as given (without the methods' suffixes) and the methods */
    char fcanon[512] = "", mcanon[64] = "";
    for (int k = 0; k < nb; k++) {
        char lb[80];
        snprintf(lb, sizeof lb, "%s", base_cand[k].label);
        char *plus = strchr(lb, '+');
        if (plus)
            *plus = 0;
        size_t fl = strlen(fcanon);
        const char *last = fl ? strrchr(fcanon, ',') : NULL;
        if (fl && !strcmp(last ? last + 1 : fcanon, lb))
            continue;
        snprintf(fcanon + fl, sizeof fcanon - fl, "%s%s", fl ? "," : "", lb);
    }
    if (methods)
        snprintf(mcanon, sizeof mcanon, " methods=%s", methods);
    snprintf(c->canon, sizeof c->canon, "allocate bits=%.9g formats=%s%s%s%s", budget, fcanon,
             mcanon, cx, extra);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    qs_bit_plan_free(&p);
    int rc = 0;
    if (!lines)
        rc = qs_errf(e, "out of memory");
    else if (apply) {
        rc = apply_lines(c, lines, L + ncl, e);
        c->no_journal = 1; /* the quant and correct commands are journaled themselves */
    }
    for (int i = 0; lines && i < L + ncl; i++)
        free(lines[i]);
    free(lines);
    free(cand);
    return rc;
}

static int allocate_rank(struct qs_ctx *c, int total, const char *method, const char *prec,
                         int apply, qs_err *e)
{
    struct qs_bench *b = c->b;
    enum qs_corr_method m;
    if (qs_corr_parse(method, &m, e) < 0)
        return -1;
    if (m != QS_CORR_LOWRANK && m != QS_CORR_LQER && m != QS_CORR_QERA && m != QS_CORR_EORA)
        return qs_errf(e, "allocate rank: method=%s: expected lowrank, lqer, qera or eora", method);
    struct qs_rank_plan p;
    if (qs_allocate_rank(b, total, &p, e) < 0)
        return -1;
    int L = qs_bench_nunits(b);
    cJSON *o = cJSON_CreateObject(), *plan = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "allocate");
    cJSON_AddNumberToObject(o, "rank", total);
    cJSON_AddStringToObject(o, "method", qs_corr_name(m));
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "allocate rank=%d (%s): greedy by marginal recovery per parameter, read off "
                 "the scale=cov error spectra\n",
                 total, qs_corr_name(m));
    qs_sb_printf(&t, "%-10s %5s %5s %12s %10s %8s\n", "layer", "rank", "max", "rel_err", "pred_R",
                 "params");
    char **lines = qs_calloc((size_t)L, sizeof *lines);
    int nlines = 0;
    for (int i = 0; i < L; i++) {
        struct qs_unit lu, *l = &lu;
        qs_bench_unit(b, i, &lu);
        long params = (long)p.rank[i] * (l->out + l->in);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "layer", l->name);
        cJSON_AddNumberToObject(j, "rank", p.rank[i]);
        qs_json_num(j, "rel_err", p.rel[i]);
        qs_json_num(j, "predicted_recovery", p.pred[i]);
        cJSON_AddNumberToObject(j, "params", (double)params);
        if (p.maxr[i] == 0) {
            qs_sb_printf(&t, "%-10s %5s %5s %12s %10s %8s  (weights float)\n", l->name, "-", "-",
                         "-", "-", "-");
        } else {
            qs_sb_printf(&t, "%-10s %5d %5d %12.5g %10.4f %8ld\n", l->name, p.rank[i], p.maxr[i],
                         p.rel[i], p.pred[i], params);
        }
        if (p.rank[i] > 0 && lines) {
            char line[200];
            snprintf(line, sizeof line, "correct %s %s r=%d%s%s", l->name, qs_corr_name(m),
                     p.rank[i], strcmp(prec, "float") ? " prec=" : "",
                     strcmp(prec, "float") ? prec : "");
            cJSON_AddStringToObject(j, "command", line);
            lines[nlines++] = qs_strdup(line);
        }
        cJSON_AddItemToArray(plan, j);
    }
    cJSON_AddItemToObject(o, "plan", plan);
    cJSON_AddNumberToObject(o, "given", p.given);
    cJSON_AddNumberToObject(o, "params", (double)p.params);
    qs_sb_printf(&t, "rank given %d of %d, +%ld parameters\n", p.given, total, p.params);
    for (int k = 0; k < nlines; k++)
        qs_sb_printf(&t, "%s\n", lines[k] ? lines[k] : "");
    qs_sb_printf(&t,
                 "(rel_err = ||E R^1/2||^2/||W R^1/2||^2, R = E[x x^T] of the float calibration "
                 "inputs: the local (float-input) pre-activation error; pred_R = 1 - left[rank] "
                 "of that spectrum, the recovery of the local error on the calibration split: "
                 "exact for qera/eora, a proxy for lowrank/lqer; gain of a rank step = rel_err "
                 "x its energy share / (out + in))%s\n",
                 apply ? "" : "\n(add `apply` to run these correct commands)");
    qs_add_gate(c, o, &t);
    snprintf(c->canon, sizeof c->canon, "allocate rank=%d method=%s%s%s", total, qs_corr_name(m),
             strcmp(prec, "float") ? " prec=" : "", strcmp(prec, "float") ? prec : "");
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    qs_rank_plan_free(&p);
    int rc = 0;
    if (!lines)
        rc = qs_errf(e, "out of memory");
    else if (apply) {
        rc = apply_lines(c, lines, nlines, e);
        c->no_journal = 1;
    }
    for (int k = 0; k < nlines; k++)
        free(lines[k]);
    free(lines);
    return rc;
}

static int cmd_allocate(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    double bits = -1.0;
    long rank = -1;
    int apply = 0;
    const char *formats = "int2,int3,int4,int8", *gran = "channel", *method = "lowrank";
    const char *corr = NULL, *ranks = NULL, *prec = NULL, *methods = NULL;
    struct qs_qopts base;
    qs_qopts_default(&base);
    char extra[256] = ""; /* the shared quantizer options, for the canonical line */
    for (int i = 0; i < argc; i++) {
        const char *v;
        if ((v = qs_opt_value(argv[i], "bits"))) {
            if (qs_parse_double(v, &bits, "allocate bits", e) < 0)
                return -1;
            if (!(bits > 0))
                return qs_errf(e, "allocate: bits=%s must be positive", v);
        } else if ((v = qs_opt_value(argv[i], "rank"))) {
            if (qs_parse_int(v, 1, 1 << 20, &rank, "allocate rank", e) < 0)
                return -1;
        } else if ((v = qs_opt_value(argv[i], "formats"))) {
            formats = v;
        } else if ((v = qs_opt_value(argv[i], "gran"))) {
            gran = v;
        } else if ((v = qs_opt_value(argv[i], "method"))) {
            method = v;
        } else if ((v = qs_opt_value(argv[i], "methods"))) {
            methods = v;
        } else if ((v = qs_opt_value(argv[i], "corr"))) {
            corr = v;
        } else if ((v = qs_opt_value(argv[i], "ranks"))) {
            ranks = v;
        } else if ((v = qs_opt_value(argv[i], "prec"))) {
            prec = v;
        } else if (!strcmp(argv[i], "apply")) {
            apply = 1;
        } else if (strncmp(argv[i], "seed=", 5) && qs_qopts_parse_token(&base, argv[i], e) == 0) {
            /* clip=, range=, asym, ... for every candidate */
            char q[200];
            snprintf(extra + strlen(extra), sizeof extra - strlen(extra), " %s",
                     qs_quote(argv[i], q, sizeof q));
        } else {
            return qs_errf(e, "allocate: '%s' is not a quantizer option here", argv[i]);
        }
    }
    if ((bits > 0) == (rank > 0))
        return qs_errf(e, "allocate: give exactly one of bits=B (format per layer) or rank=R "
                          "(correction rank per layer)");
    struct qs_format pf; /* the factors' precision, by its canonical name */
    if (qs_corr_prec_parse(prec, &pf, e) < 0)
        return -1;
    const char *pname = pf.kind == QS_FMT_NONE ? "float" : pf.name;
    if (rank > 0) {
        if (corr || ranks)
            return qs_errf(e, "allocate rank=: corr= and ranks= are for allocate bits= (the "
                              "method is method=)");
        return allocate_rank(c, (int)rank, method, pname, apply, e);
    }
    struct corr_opts co = {.m = QS_CORR_NONE, .prec = pname};
    if (!corr && (ranks || prec))
        return qs_errf(e, "allocate bits=: ranks= and prec= describe a correction: add "
                          "corr=lowrank|lqer|qera|eora");
    if (corr) {
        if (qs_corr_parse(corr, &co.m, e) < 0)
            return -1;
        if (co.m != QS_CORR_LOWRANK && co.m != QS_CORR_LQER && co.m != QS_CORR_QERA &&
            co.m != QS_CORR_EORA)
            return qs_errf(e, "allocate: corr=%s: expected lowrank, lqer, qera or eora", corr);
        char rb[128];
        snprintf(rb, sizeof rb, "%s", ranks ? ranks : "4");
        for (char *save = NULL, *tok = strtok_r(rb, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            long r;
            if (co.nranks == 8)
                return qs_errf(e, "allocate: at most 8 ranks");
            if (qs_parse_int(tok, 1, 1 << 20, &r, "allocate ranks", e) < 0)
                return -1;
            co.ranks[co.nranks++] = (int)r;
        }
        if (!co.nranks)
            return qs_errf(e, "allocate: ranks= is empty");
    }
    return allocate_bits(c, bits, formats, gran, &base, extra, methods, &co, apply, e);
}

const struct qs_cmd_def qs_cmds_allocate[] = {
    {"allocate", 0, 0,
     QS_ARGS(QS_OPT("bits", QS_ARG_FLOAT, "B"), QS_OPT("rank", QS_ARG_INT, "R"),
             QS_OPT("formats", QS_ARG_WORD, "F,..."),
             QS_OPT("gran", QS_ARG_ENUM, "tensor|channel|group:N"),
             QS_OPT("methods", QS_ARG_ENUMS, "rtn|gptq|awq|imatrix"),
             QS_OPT("method", QS_ARG_ENUM, "lowrank|lqer|qera|eora"),
             QS_OPT("corr", QS_ARG_ENUM, "lowrank|lqer|qera|eora"),
             QS_OPT("ranks", QS_ARG_INTS, "R,..."), QS_OPT("prec", QS_ARG_FORMAT, "P"),
             QS_OPT("clip", QS_ARG_ENUM, "max|mse|pct:P"),
             QS_OPT("round", QS_ARG_ENUM, "nearest|stochastic"),
             QS_OPT("range", QS_ARG_ENUM, "restricted|full"), QS_FLAG("asym"), QS_FLAG("sym"),
             QS_OPT("sat", QS_ARG_ENUM, "0|1"), QS_OPT("scale", QS_ARG_ENUM, "f16|f32|none"),
             QS_FLAG("apply")),
     QS_CMD_JOURNAL | QS_CMD_DATA | QS_CMD_LONG | QS_CMD_RECALC, cmd_allocate,
     "plan a per-layer format under a bits/weight budget, or spread a total correction rank",
     "bits=B: greedy by marginal calibration loss per bit (packed sizes) over formats (default "
     "int2,int3,int4,int8; FORMAT/GRAN picks a granularity per candidate, default gran=channel). "
     "rank=R: greedy by marginal recovery per parameter from the scale=cov error spectra "
     "(method lowrank|lqer|qera|eora; prec= the factors' precision). One budget covers weight "
     "and correction bits: a layer's correction on the bench is kept, and its bits counted, "
     "where the plan keeps its format; corr=M adds candidates with a rank-R correction (ranks=, "
     "default 4) whose factors are at prec= (default float) on top of each format, so the plan "
     "can trade a wider format for a correction. The plan prints as quant/correct commands; "
     "`apply` runs them, and they are journaled as such."},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
