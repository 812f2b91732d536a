/* cmd_study.c - commands of sensitivity, allocation, QAT and the Q1 and Q2 studies:
 * sensitivity, allocate, qat, study q1, study q2. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/methods.h"
#include "qscope/q2.h"
#include "qscope/qat.h"
#include "qscope/sensitivity.h"
#include "qscope/spectral.h"
#include "qscope/study.h"
#include "qscope/study_record.h"

#include "plan.h"

static const char *const sens_names[] = {"delta", "grad", "fisher", "hutchinson"};

/* "%.4f" or "n/a" for NaN, right-aligned in w columns. */
static void put_num(struct qs_sb *t, int w, const char *fmt, double v)
{
    if (isfinite(v)) {
        char buf[48];
        snprintf(buf, sizeof buf, fmt, v);
        qs_sb_printf(t, "%*s", w, buf);
    } else {
        qs_sb_printf(t, "%*s", w, "n/a");
    }
}

/* ---- sensitivity --------------------------------------------------------------------------- */

static int parse_methods(const char *v, unsigned *mask, qs_err *e)
{
    *mask = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "all")) {
            *mask |= QS_SENS_ALL;
            continue;
        }
        int k = 0;
        while (k < 4 && strcmp(tok, sens_names[k]))
            k++;
        if (k == 4)
            return qs_errf(e,
                           "sensitivity: method '%s': expected delta, grad, fisher, hutchinson "
                           "or all (a comma list is fine)",
                           tok);
        *mask |= 1u << k;
    }
    if (!*mask)
        return qs_errf(e, "sensitivity: method= is empty");
    return 0;
}

/* The per-method score that ranks layers (what the correlation compares). */
static double sens_score(const struct qs_sens_layer *s, int k)
{
    switch (k) {
    case 0:
        return s->delta_loss;
    case 1:
        return s->grad_norm;
    case 2:
        return s->fisher_err;
    default:
        return s->hutch_err;
    }
}

static int cmd_sensitivity(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    unsigned methods = QS_SENS_ALL;
    long probes = 32;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if ((v = qs_opt_value(argv[i], "method"))) {
            if (parse_methods(v, &methods, e) < 0)
                return -1;
        } else if ((v = qs_opt_value(argv[i], "probes"))) {
            if (qs_parse_int(v, 2, 100000, &probes, "probes", e) < 0)
                return -1;
        } else {
            return qs_errf(e, "sensitivity: unexpected '%s'", argv[i]); /* not in the spec */
        }
    }
    int L = qs_bench_nunits(b), nw = 10;
    for (int i = 0; i < L; i++) {
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        nw = (int)strlen(u.name) > nw ? (int)strlen(u.name) : nw;
    }
    struct qs_sens_layer *s = qs_calloc((size_t)L, sizeof *s);
    if (!s)
        return qs_errf(e, "out of memory");
    struct qs_sens_info info;
    if (qs_sensitivity(b, methods, (int)probes, s, &info, e) < 0) {
        free(s);
        return -1;
    }
    for (int i = 0; i < L; i++) { /* remembered for the layers table */
        struct qs_layer_state *ls = &b->ls[i];
        const struct qs_sens_layer *r = &s[i];
        const char *mname = methods & QS_SENS_DELTA    ? "delta"
                            : methods & QS_SENS_FISHER ? "fisher"
                            : methods & QS_SENS_HUTCH  ? "hutch"
                                                       : "grad";
        ls->sens = methods & QS_SENS_DELTA    ? r->delta_loss
                   : methods & QS_SENS_FISHER ? r->fisher_err
                   : methods & QS_SENS_HUTCH  ? r->hutch_err
                                              : r->grad_norm;
        snprintf(ls->sens_method, sizeof ls->sens_method, "%s", mname);
    }
    char mlist[64] = "";
    for (int k = 0; k < 4; k++)
        if (methods & (1u << k))
            snprintf(mlist + strlen(mlist), sizeof mlist - strlen(mlist), "%s%s",
                     mlist[0] ? "," : "", sens_names[k]);
    snprintf(c->canon, sizeof c->canon, "sensitivity method=%s", mlist);
    if (methods & QS_SENS_HUTCH)
        snprintf(c->canon + strlen(c->canon), sizeof c->canon - strlen(c->canon), " probes=%ld",
                 probes);
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "sensitivity");
    struct qs_sb t = {0};
    qs_sb_printf(&t, "%-*s", nw, "layer");
    if (methods & QS_SENS_DELTA)
        qs_sb_printf(&t, " %11s", "delta_loss");
    if (methods & QS_SENS_GRAD)
        qs_sb_printf(&t, " %11s", "grad_norm");
    if (methods & QS_SENS_FISHER)
        qs_sb_printf(&t, " %11s %11s", "fisher_tr", "fisher_err");
    if (methods & QS_SENS_HUTCH)
        qs_sb_printf(&t, " %11s %10s %11s", "hutch_tr", "+-se", "hutch_err");
    qs_sb_printf(&t, "\n");
    for (int i = 0; i < L; i++) {
        const struct qs_sens_layer *r = &s[i];
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", u.name);
        cJSON_AddBoolToObject(j, "quantized", r->quantized);
        qs_sb_printf(&t, "%-*s", nw, u.name);
        if (methods & QS_SENS_DELTA) {
            qs_json_num(j, "delta_loss", r->delta_loss);
            put_num(&t, 12, "%.5g", r->delta_loss);
        }
        if (methods & QS_SENS_GRAD) {
            qs_json_num(j, "grad_norm", r->grad_norm);
            put_num(&t, 12, "%.5g", r->grad_norm);
        }
        if (methods & QS_SENS_FISHER) {
            qs_json_num(j, "fisher_trace", r->fisher_trace);
            qs_json_num(j, "fisher_err", r->fisher_err);
            put_num(&t, 12, "%.5g", r->fisher_trace);
            put_num(&t, 12, "%.5g", r->fisher_err);
        }
        if (methods & QS_SENS_HUTCH) {
            qs_json_num(j, "hutchinson", r->hutch_trace);
            qs_json_num(j, "hutchinson_se", r->hutch_se);
            qs_json_num(j, "hutchinson_err", r->hutch_err);
            put_num(&t, 12, "%.5g", r->hutch_trace);
            put_num(&t, 11, "%.3g", r->hutch_se);
            put_num(&t, 12, "%.5g", r->hutch_err);
        }
        qs_sb_printf(&t, "%s\n", r->quantized ? "" : "  (float)");
        cJSON_AddItemToArray(rows, j);
    }
    if ((methods & QS_SENS_DELTA) && b->lm)
        qs_sb_printf(&t,
                     "delta_loss: held-out loss (%d predicted tokens, the last 10%% of the "
                     "stream) with only that site quantized minus the float loss %.6g\n",
                     info.n_test, info.float_loss_test);
    else if (methods & QS_SENS_DELTA)
        qs_sb_printf(&t,
                     "delta_loss: test-split loss (%d samples) with only that layer quantized "
                     "minus the float loss %.6g\n",
                     info.n_test, info.float_loss_test);
    if ((methods & (QS_SENS_GRAD | QS_SENS_FISHER | QS_SENS_HUTCH)) && b->lm)
        qs_sb_printf(&t,
                     "grad/fisher/hutchinson: calibration windows (%d predicted tokens; a Fisher "
                     "sample is one window), at the float weights\n",
                     info.n_calib);
    else if (methods & (QS_SENS_GRAD | QS_SENS_FISHER | QS_SENS_HUTCH))
        qs_sb_printf(&t,
                     "grad/fisher/hutchinson: calibration split (%d samples), at the float "
                     "weights\n",
                     info.n_calib);
    if (methods & QS_SENS_FISHER)
        qs_sb_printf(&t, "fisher_tr = sum F, fisher_err = sum F*(W-Q(W))^2, F = empirical Fisher "
                         "diagonal (mean of per-sample squared gradients)\n");
    if (methods & QS_SENS_HUTCH)
        qs_sb_printf(&t,
                     "hutch_tr = tr(H) by Hutchinson, %d Rademacher probes (seed %llu), Hv "
                     "exact by forward-over-reverse (R-operator); hutch_err = "
                     "tr(H)/N*||W-Q(W)||^2\n",
                     info.probes, (unsigned long long)info.seed);
    /* Spearman matrix over the quantized layers, one score per method. */
    int nm = 0, mk[4], nq = 0;
    for (int k = 0; k < 4; k++)
        if (methods & (1u << k))
            mk[nm++] = k;
    double *sc = qs_calloc((size_t)4 * L, sizeof *sc);
    for (int i = 0; sc && i < L; i++)
        if (s[i].quantized) {
            for (int a = 0; a < nm; a++)
                sc[(size_t)a * L + nq] = sens_score(&s[i], mk[a]);
            nq++;
        }
    cJSON_AddItemToObject(o, "layers", rows);
    if (nm >= 2 && sc) {
        cJSON *sp = cJSON_CreateObject(), *names = cJSON_CreateArray(), *mat = cJSON_CreateArray();
        static const char *const score_names[] = {"delta_loss", "grad_norm", "fisher_err",
                                                  "hutch_err"};
        qs_sb_printf(&t, "Spearman rank correlation over the %d quantized layers (scores:", nq);
        for (int a = 0; a < nm; a++)
            qs_sb_printf(&t, "%s %s", a ? "," : "", score_names[mk[a]]);
        qs_sb_printf(&t, ")%s:\n%-11s", nq <= 4 ? "; few layers make it coarse" : "", "");
        for (int a = 0; a < nm; a++) {
            cJSON_AddItemToArray(names, cJSON_CreateString(sens_names[mk[a]]));
            qs_sb_printf(&t, " %10s", sens_names[mk[a]]);
        }
        qs_sb_printf(&t, "\n");
        for (int a = 0; a < nm; a++) {
            cJSON *row = cJSON_CreateArray();
            qs_sb_printf(&t, "%-11s", sens_names[mk[a]]);
            for (int bb = 0; bb < nm; bb++) {
                double r = qs_spearman(sc + (size_t)a * L, sc + (size_t)bb * L, nq);
                cJSON_AddItemToArray(row, qs_json_num_item(r));
                put_num(&t, 11, "%.3f", r);
            }
            qs_sb_printf(&t, "\n");
            cJSON_AddItemToArray(mat, row);
        }
        cJSON_AddItemToObject(sp, "methods", names);
        cJSON_AddItemToObject(sp, "matrix", mat);
        cJSON_AddItemToObject(o, "spearman", sp);
    }
    free(sc);
    cJSON_AddNumberToObject(o, "n_calib", info.n_calib);
    cJSON_AddNumberToObject(o, "n_test", info.n_test);
    if (methods & QS_SENS_HUTCH)
        cJSON_AddNumberToObject(o, "probes", info.probes);
    qs_set_last_table(c, "sensitivity", cJSON_GetObjectItem(o, "layers"), NULL);
    qs_add_gate(c, o, &t);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    free(s);
    return 0;
}

/* ---- allocate ------------------------------------------------------------------------------ */

static const char *gran_word(const struct qs_qopts *o, char *buf, size_t n)
{
    if (o->gran == QS_GRAN_TENSOR)
        return "tensor";
    if (o->gran == QS_GRAN_CHANNEL)
        return "channel";
    snprintf(buf, n, "group:%d", o->group);
    return buf;
}

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
        snprintf(c->label, sizeof c->label, "%s/%s", fname, gran_word(&c->opt, gb, sizeof gb));
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
        const char *gw = gran_word(&cand[k].opt, gb, sizeof gb);
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

/* ---- qat ----------------------------------------------------------------------------------- */

struct qat_cb_ctx {
    struct qs_ctx *c;
    int epochs;
};

static int qat_cb(void *u, int epoch, double loss, double acc)
{
    struct qat_cb_ctx *q = u;
    struct qs_bench *b = q->c->b;
    if (b->progress) {
        char what[96];
        snprintf(what, sizeof what, "qat epoch %d/%d loss %.4f", epoch, q->epochs, loss);
        b->progress(b->progress_ctx, what, (double)epoch / q->epochs);
    }
    (void)acc;
    return b->cancel;
}

static void metric_json(cJSON *o, const char *k, const struct qs_metric *m)
{
    cJSON *j = cJSON_CreateObject();
    qs_json_num(j, "acc", m->acc);
    qs_json_num(j, "loss", m->loss);
    cJSON_AddItemToObject(o, k, j);
}

/* qat on a transformer: straight-through AdamW through the sites' current formats (qat.h). */
static int qat_lm_cb(void *u, int step, int steps, double loss, double lr, double val)
{
    struct qs_ctx *c = u;
    if (c->b->progress) {
        char what[96];
        snprintf(what, sizeof what, "qat step %d/%d loss %.4f", step, steps, loss);
        c->b->progress(c->b->progress_ctx, what, (double)step / steps);
    }
    if (step == steps || step % 100 == 0)
        qs_note(c, "qat step %d/%d: train loss (quantized forward) %.4f, lr %.3g", step, steps,
                loss, lr);
    (void)val;
    return c->b->cancel;
}

static int cmd_qat_lm(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    struct qs_qat_lm_opts o;
    qs_qat_lm_defaults(&o);
    o.seed = b->seed;
    int min_set = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        long lv;
        struct {
            const char *k;
            int *iv;
            long lo, hi;
            double *dv;
        } opt[] = {{"epochs", &o.epochs, 1, 100000, NULL},
                   {"steps", &o.steps, 1, 100000000, NULL},
                   {"batch", &o.batch, 1, 65536, NULL},
                   {"ctx", &o.ctx, 1, b->lm->ctx, NULL},
                   {"warmup", &o.warmup, 0, 10000000, NULL},
                   {"lr", NULL, 0, 0, &o.lr},
                   {"min_lr", NULL, 0, 0, &o.min_lr},
                   {"wd", NULL, 0, 0, &o.wd},
                   {"clip", NULL, 0, 0, &o.clip}};
        int k, n = (int)(sizeof opt / sizeof opt[0]);
        for (k = 0; k < n && !(v = qs_opt_value(argv[i], opt[k].k)); k++)
            ;
        char what[32];
        snprintf(what, sizeof what, "qat %s", k < n ? opt[k].k : "");
        if (k < n && opt[k].iv) {
            if (qs_parse_int(v, opt[k].lo, opt[k].hi, &lv, what, e) < 0)
                return -1;
            *opt[k].iv = (int)lv;
        } else if (k < n) {
            if (qs_parse_double(v, opt[k].dv, what, e) < 0)
                return -1;
            min_set |= opt[k].dv == &o.min_lr;
        } else if ((v = qs_opt_value(argv[i], "seed"))) {
            if (qs_parse_int(v, 0, 0x7fffffff, &lv, "qat seed", e) < 0)
                return -1;
            o.seed = (uint64_t)lv;
        } else if ((v = qs_opt_value(argv[i], "out"))) {
            o.out = v;
        } else if ((v = qs_opt_value(argv[i], "mode"))) {
            if (strcmp(v, "whole") && strcmp(v, "block"))
                return qs_errf(e, "qat: mode is whole or block, not '%s'", v);
            o.mode = strcmp(v, "block") ? QS_QAT_WHOLE : QS_QAT_BLOCK;
        } else if ((v = qs_opt_value(argv[i], "order"))) {
            if (strcmp(v, "depth") && strcmp(v, "sensitivity"))
                return qs_errf(e, "qat: order is depth or sensitivity, not '%s'", v);
            o.order = strcmp(v, "depth") ? QS_QAT_ORDER_SENS : QS_QAT_ORDER_DEPTH;
        } else if ((v = qs_opt_value(argv[i], "samples"))) {
            if (qs_parse_int(v, 1, 1000000, &lv, "qat samples", e) < 0)
                return -1;
            o.samples = (int)lv;
        } else if ((v = qs_opt_value(argv[i], "scales"))) {
            if (strcmp(v, "fixed") && strcmp(v, "lsq"))
                return qs_errf(e, "qat: scales is fixed or lsq, not '%s'", v);
            o.scales = strcmp(v, "lsq") ? QS_QAT_SCALES_FIXED : QS_QAT_SCALES_LSQ;
        } else {
            return qs_errf(e,
                           "qat: unknown option '%s' for a transformer (epochs= steps= batch= "
                           "ctx= lr= min_lr= warmup= wd= clip= seed= out=DIR mode=whole|block "
                           "order=depth|sensitivity samples=N scales=fixed|lsq)",
                           argv[i]);
        }
    }
    if (!(o.lr > 0) || !(o.min_lr >= 0) || !(o.wd >= 0) || !(o.clip >= 0))
        return qs_errf(e, "qat: lr must be positive; min_lr, wd and clip not negative");
    if (!min_set)
        o.min_lr = o.lr / 10;
    if (o.mode != QS_QAT_BLOCK && (o.order != QS_QAT_ORDER_DEPTH || o.samples != 64)) {
        for (int i = 0; i < argc; i++)
            if (qs_opt_value(argv[i], "order") || qs_opt_value(argv[i], "samples"))
                return qs_errf(e, "qat: %s is an option of mode=block", argv[i]);
    }
    struct qs_qat_lm_result r;
    b->cancel = 0;
    if (qs_qat_lm(b, &o, qat_lm_cb, c, &r, e) < 0)
        return -1;
    char q[600] = "";
    if (o.out) {
        char qq[560];
        snprintf(q, sizeof q, " out=%s", qs_quote(o.out, qq, sizeof qq));
    }
    char blk[96] = "";
    if (o.mode == QS_QAT_BLOCK)
        snprintf(blk, sizeof blk, "mode=block order=%s samples=%d ",
                 o.order == QS_QAT_ORDER_SENS ? "sensitivity" : "depth", r.samples);
    const int lsq = o.scales == QS_QAT_SCALES_LSQ;
    snprintf(c->canon, sizeof c->canon,
             "qat %s%ssteps=%d batch=%d ctx=%d lr=%.9g min_lr=%.9g warmup=%d wd=%.9g clip=%.9g "
             "seed=%llu%s",
             blk, lsq ? "scales=lsq " : "", r.steps, r.batch, r.ctx, o.lr, o.min_lr, o.warmup, o.wd,
             o.clip, (unsigned long long)o.seed, q);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "cmd", "qat");
    cJSON_AddNumberToObject(j, "steps", r.steps);
    cJSON_AddNumberToObject(j, "tokens", (double)r.tokens);
    cJSON_AddNumberToObject(j, "w_sites", r.w_sites);
    cJSON_AddNumberToObject(j, "a_sites", r.a_sites);
    qs_json_num(j, "float_loss", r.f_loss);
    qs_json_num(j, "ptq_loss", r.ptq_loss);
    qs_json_num(j, "qat_loss", r.qat_loss);
    qs_json_num(j, "qat_float_loss", r.f_loss_after);
    qs_json_num(j, "ste_loss_before", r.ste_loss0);
    qs_json_num(j, "ste_loss_after", r.ste_loss);
    qs_json_num(j, "train_loss", r.train_loss);
    qs_json_num(j, "gap_closed", r.gap_closed);
    if (lsq) { /* absent under scales=fixed, so that older journals replay unchanged */
        cJSON_AddStringToObject(j, "scales", "lsq");
        cJSON_AddNumberToObject(j, "lsq_scales", (double)r.lsq_scales);
        qs_json_num(j, "lsq_change", r.lsq_change);
    }
    struct qs_sb t = {0};
    if (o.mode == QS_QAT_BLOCK) {
        cJSON_AddStringToObject(j, "mode", "block");
        cJSON_AddStringToObject(j, "order", o.order == QS_QAT_ORDER_SENS ? "sensitivity" : "depth");
        cJSON_AddNumberToObject(j, "samples", r.samples);
        cJSON *bl = cJSON_AddArrayToObject(j, "blocks");
        qs_sb_printf(&t,
                     "qat mode=block (Block-AP): %d blocks one at a time, in %s order, each "
                     "trained %d steps of %d of %d sample windows x %d tokens to reproduce the "
                     "float block's output on the float stream, from the stream of the model "
                     "being trained; straight-through through %d weight and %d activation "
                     "format%s, AdamW lr %.3g -> %.3g per block%s\n",
                     r.nblocks, o.order == QS_QAT_ORDER_SENS ? "sensitivity" : "depth", r.steps,
                     r.batch, r.samples, r.ctx, r.w_sites, r.a_sites, r.a_sites == 1 ? "" : "s",
                     o.lr, o.min_lr, lsq ? "; weight scales learned (LSQ), with their block" : "");
        qs_sb_printf(&t, "%-6s %14s %14s %8s\n", "block", "mse before", "mse after", "ratio");
        for (int k = 0; k < r.nblocks; k++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "block", r.order[k]);
            qs_json_num(x, "mse_before", r.mse0[k]);
            qs_json_num(x, "mse_after", r.mse1[k]);
            cJSON_AddItemToArray(bl, x);
            qs_sb_printf(&t, "%-6d %14.6g %14.6g %8.4f\n", r.order[k], r.mse0[k], r.mse1[k],
                         r.mse0[k] > 0 ? r.mse1[k] / r.mse0[k] : NAN);
        }
    } else {
        qs_sb_printf(&t,
                     "qat: %d steps of %d windows x %d tokens (%ld tokens) on the training "
                     "tokens; straight-through through %d site weight format%s and %d activation "
                     "format%s (dx = dy; %s), AdamW lr %.3g -> %.3g on the float master "
                     "weights%s\n",
                     r.steps, r.batch, r.ctx, r.tokens, r.w_sites, r.w_sites == 1 ? "" : "s",
                     r.a_sites, r.a_sites == 1 ? "" : "s",
                     lsq ? "weight scales learned, LSQ: Esser et al. 2020"
                         : "weight scales recomputed from the master weights every step, not "
                           "learned",
                     o.lr, o.min_lr, lsq ? " and scales" : "");
    }
    if (lsq)
        qs_sb_printf(&t,
                     "learned scales: %ld, mean |log(s_after / s_before)| %.4f; they are the "
                     "sites' scales now (packed export included)\n",
                     r.lsq_scales, r.lsq_change);
    qs_sb_printf(&t, "%-22s %9s %9s\n", "held-out", "loss", "ppl");
    qs_sb_printf(&t, "%-22s %9.4f %9.3f\n", "float (before)", r.f_loss, exp(r.f_loss));
    qs_sb_printf(&t, "%-22s %9.4f %9.3f\n", "quantized, PTQ", r.ptq_loss, exp(r.ptq_loss));
    qs_sb_printf(&t, "%-22s %9.4f %9.3f\n", "quantized, QAT", r.qat_loss, exp(r.qat_loss));
    qs_sb_printf(&t, "%-22s %9.4f %9.3f\n", "float after QAT", r.f_loss_after, exp(r.f_loss_after));
    if (isfinite(r.gap_closed))
        qs_sb_printf(&t, "gap closed: %.4f of the float-PTQ loss gap (%.4f -> %.4f)\n",
                     r.gap_closed, r.ptq_loss - r.f_loss, r.qat_loss - r.f_loss);
    else
        qs_sb_printf(&t, "gap closed: n/a (PTQ did not raise the loss)\n");
    qs_sb_printf(&t, "the bench now holds the trained float model (same rules and token data%s)",
                 o.out ? "; written to the out= folder" : "");
    if (r.dropped_corr)
        qs_sb_printf(&t, "; %d correction%s fitted to the old weights dropped", r.dropped_corr,
                     r.dropped_corr == 1 ? "" : "s");
    qs_sb_printf(&t, "\n");
    qs_add_gate(c, j, &t);
    qs_emit(c, j, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_qat(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    for (int i = 0; b->ls && i < qs_bench_nunits(b); i++)
        if (qs_rule_method_custom(&b->ls[i].wm)) { /* QAT's forward rounds to nearest */
            struct qs_unit u;
            char mk[200];
            qs_bench_unit(b, i, &u);
            qs_rule_method_format(&b->ls[i].wm, mk, sizeof mk);
            return qs_errf(e,
                           "qat: %s is quantized with %s, but QAT trains through "
                           "round-to-nearest; quantize without a method first",
                           u.name, mk);
        }
    if (b->lm)
        return cmd_qat_lm(c, argc, argv, e);
    struct qs_qat_opts qo = {.epochs = 10, .batch = 64, .lr = 3e-4, .seed = b->seed};
    for (int i = 0; i < argc; i++) {
        const char *v;
        long lv;
        if ((v = qs_opt_value(argv[i], "epochs"))) {
            if (qs_parse_int(v, 1, 100000, &lv, "qat epochs", e) < 0)
                return -1;
            qo.epochs = (int)lv;
        } else if ((v = qs_opt_value(argv[i], "batch"))) {
            if (qs_parse_int(v, 1, 1 << 20, &lv, "qat batch", e) < 0)
                return -1;
            qo.batch = (int)lv;
        } else if ((v = qs_opt_value(argv[i], "lr"))) {
            if (qs_parse_double(v, &qo.lr, "qat lr", e) < 0)
                return -1;
            if (!(qo.lr > 0))
                return qs_errf(e, "qat: lr must be positive");
        } else if ((v = qs_opt_value(argv[i], "seed"))) {
            if (qs_parse_int(v, 0, 0x7fffffff, &lv, "qat seed", e) < 0)
                return -1;
            qo.seed = (uint64_t)lv;
        } else if ((v = qs_opt_value(argv[i], "scales"))) {
            if (strcmp(v, "fixed") && strcmp(v, "lsq"))
                return qs_errf(e, "qat: scales is fixed or lsq, not '%s'", v);
            qo.lsq = !strcmp(v, "lsq");
        } else {
            return qs_errf(e,
                           "qat: '%s' is an option of a transformer (an MLP takes epochs= "
                           "lr= batch= seed= scales=)",
                           argv[i]);
        }
    }
    struct qat_cb_ctx cc = {c, qo.epochs};
    struct qs_qat_result r;
    b->cancel = 0;
    if (qs_qat(b, &qo, qat_cb, &cc, &r, e) < 0)
        return -1;
    snprintf(c->canon, sizeof c->canon, "qat epochs=%d lr=%.9g batch=%d seed=%llu%s", qo.epochs,
             qo.lr, qo.batch, (unsigned long long)qo.seed, qo.lsq ? " scales=lsq" : "");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "qat");
    cJSON_AddNumberToObject(o, "epochs", qo.epochs);
    qs_json_num(o, "lr", qo.lr);
    metric_json(o, "float", &r.f);
    metric_json(o, "ptq", &r.ptq);
    metric_json(o, "qat", &r.qat);
    metric_json(o, "qat_float", &r.f_qat);
    qs_json_num(o, "gap_closed", r.gap_closed);
    if (qo.lsq) { /* absent under scales=fixed, so that older journals replay unchanged */
        cJSON_AddStringToObject(o, "scales", "lsq");
        cJSON_AddNumberToObject(o, "lsq_scales", (double)r.lsq_scales);
        qs_json_num(o, "lsq_change", r.lsq_change);
    }
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "qat: %d epochs, lr %.3g, batch %d, seed %llu on the train split (%d "
                 "samples); straight-through estimator through each layer's weight format, "
                 "Adam on the float master weights%s\n",
                 qo.epochs, qo.lr, qo.batch, (unsigned long long)qo.seed, b->split.n_train,
                 qo.lsq ? " and the learned scales (LSQ, Esser et al. 2020)" : "");
    if (qo.lsq)
        qs_sb_printf(&t,
                     "learned scales: %ld, mean |log(s_after / s_before)| %.4f; they are the "
                     "layers' scales now (packed export included)\n",
                     r.lsq_scales, r.lsq_change);
    qs_sb_printf(&t, "%-22s %8s %8s\n", "test split", "acc", "loss");
    qs_sb_printf(&t, "%-22s %8.4f %8.4f\n", "float (before)", r.f.acc, r.f.loss);
    qs_sb_printf(&t, "%-22s %8.4f %8.4f\n", "quantized, PTQ", r.ptq.acc, r.ptq.loss);
    qs_sb_printf(&t, "%-22s %8.4f %8.4f\n", "quantized, QAT", r.qat.acc, r.qat.loss);
    qs_sb_printf(&t, "%-22s %8.4f %8.4f\n", "float after QAT", r.f_qat.acc, r.f_qat.loss);
    if (isfinite(r.gap_closed))
        qs_sb_printf(&t, "gap closed: %.4f of the float-PTQ accuracy gap (%.4f -> %.4f)\n",
                     r.gap_closed, r.f.acc - r.ptq.acc, r.f.acc - r.qat.acc);
    else
        qs_sb_printf(&t, "gap closed: n/a (PTQ did not lose accuracy)\n");
    qs_sb_printf(&t, "the bench now holds the fine-tuned float model (same rules, split and "
                     "path)");
    if (r.dropped_corr)
        qs_sb_printf(&t, "; %d correction%s fitted to the old weights dropped", r.dropped_corr,
                     r.dropped_corr == 1 ? "" : "s");
    if (r.act_quant)
        qs_sb_printf(&t, "; activation formats were not simulated in training");
    qs_sb_printf(&t, "\n");
    qs_add_gate(c, o, &t);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- study q1 ------------------------------------------------------------------------------ */

static const char *base_name(const char *p, char *buf, size_t n)
{
    const char *s = strrchr(p, '/');
    snprintf(buf, n, "%s", s ? s + 1 : p);
    char *dot = strstr(buf, ".safetensors");
    if (dot)
        *dot = 0;
    return buf;
}

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
    put_num(t, 9, "%.4f", s->mean);
    put_num(t, 9, "%.4f", s->median);
    put_num(t, 10, "%.3f", s->pos_frac);
    put_num(t, 10, "%.3f", s->frac_gt_02);
    qs_sb_printf(t, "\n");
}

/* A bundled file's path as written (datasets/...) when PATH is where qs_bundle_path resolves it,
 * so that results name it the same wherever qscope runs; else PATH. */
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

/* The canonical line's head after the command's name: " models=... seeds=...", and " format=F
 * gran=G" when given or when no setting is a transformer (else replay takes the transformers'
 * default again); its tail: " csv=... out=...". */
static void sc_canon_head(const struct study_common *s, const struct qs_format *fmt,
                          const struct qs_qopts *opt, int nlm, char *buf, size_t n)
{
    char seeds[512] = "";
    for (int k = 0; k < s->ns; k++)
        snprintf(seeds + strlen(seeds), sizeof seeds - strlen(seeds), "%s%llu", k ? "," : "",
                 (unsigned long long)s->sv[k]);
    char gb[24], qm[1024], mq[1040] = "", fq[80] = "";
    const struct qs_format_traits *ft = qs_format_traits(fmt);
    const char *gw = ft->fixed_block ? "block" : gran_word(opt, gb, sizeof gb);
    if (!s->loaded) /* else: the loaded transformer, as replay will have it */
        snprintf(mq, sizeof mq, " models=%s", qs_quote(s->models, qm, sizeof qm));
    if (s->fmt_given || !nlm)
        snprintf(fq, sizeof fq, " format=%s gran=%s", fmt->name, gw);
    snprintf(buf, n, "%s seeds=%s%s", mq, seeds, fq);
}

static void sc_canon_tail(const struct study_common *s, char *buf, size_t n)
{
    char qc[600], qo[600];
    snprintf(buf, n, "%s%s%s%s", s->csv ? " csv=" : "",
             s->csv ? qs_quote(s->csv, qc, sizeof qc) : "", s->out ? " out=" : "",
             s->out ? qs_quote(s->out, qo, sizeof qo) : "");
}

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

static int q1_parse(struct qs_ctx *c, int argc, char **argv, struct q1_args *p, qs_err *e)
{
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
    if (sc_finish(c, &p->s, q1_bundled, 5, &o->fmt, &o->opt, &o->lm_fmt, &o->lm_opt, e) < 0)
        return -1;
    o->models = p->s.mp;
    o->nmodels = p->s.nm;
    o->seeds = p->s.sv;
    o->nseeds = p->s.ns;
    return 0;
}

/* The study's canonical line (the journal's). */
static void q1_canon(struct qs_ctx *c, const struct q1_args *p, const struct qs_q1 *q)
{
    char head[1700], tail[1300], ct[48] = "";
    sc_canon_head(&p->s, &p->o.fmt, &p->o.opt, q->nlm, head, sizeof head);
    sc_canon_tail(&p->s, tail, sizeof tail);
    if (p->calib_tokens > 0)
        snprintf(ct, sizeof ct, " calib_tokens=%ld", p->calib_tokens);
    snprintf(c->canon, sizeof c->canon, "study q1%s prec=%s%s%s", head, p->prec, ct, tail);
}

/* The report of a finished study: its JSON object (returned) and text (appended to t). The
 * in-process run and `study merge` both print through it, so their reports are the same. */
static cJSON *q1_report(struct qs_ctx *c, const struct q1_args *p, const struct qs_q1 *q,
                        struct qs_sb *t)
{
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
        put_num(t, 14, "%.4f", st->med_r_float);
        put_num(t, 14, "%.4f", st->med_r_q);
        put_num(t, 9, "%.3f", st->spearman);
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
                put_num(t, 10, "%.4f", l->correctability);
                put_num(t, 12, "%.4f", l->r_float);
                put_num(t, 12, "%.4f", l->r_q);
                put_num(t, 11, "%.3g", l->lambda);
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
            put_num(t, 10, "%.4f", l->correctability);
            put_num(t, 12, "%.4f", l->r_float);
            put_num(t, 12, "%.4f", l->r_q);
            put_num(t, 11, "%.3g", l->lambda);
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
        put_num(t, 10, "%.4f", q->depth_q[k]);
    qs_sb_printf(t, "\n%-25s", "R_lin_float");
    for (int k = 0; k < 3; k++)
        put_num(t, 10, "%.4f", q->depth_float[k]);
    qs_sb_printf(t, "\n%-25s %9d %9d %9d\n", "layers", q->depth_n[0], q->depth_n[1], q->depth_n[2]);
    qs_sb_printf(t, "pooled Spearman(correctability, %s) over all %d layers: ", rq, q->r_q.n);
    put_num(t, 0, "%.4f", q->pooled_spearman);
    if (q->nlm) {
        qs_sb_printf(
            t, "\npooled Spearman(correctability, R_lin_float) over all %d layers: ", q->r_float.n);
        put_num(t, 0, "%.4f", q->pooled_spearman_float);
        qs_sb_printf(t, "\nsub-layer profile         %9s %9s %9s %10s %10s\n", "n", "mean",
                     "median", "pos_frac", "frac>0.2");
        static const char *const subn[2] = {"attention", "ffn"};
        for (int k = 0; k < 2; k++) {
            char lab[48];
            snprintf(lab, sizeof lab, "%s %s", subn[k], rq);
            qs_sb_printf(t, "%-25s %9d", lab, q->sub_q[k].n);
            put_num(t, 10, "%.4f", q->sub_q[k].mean);
            put_num(t, 10, "%.4f", q->sub_q[k].median);
            put_num(t, 11, "%.3f", q->sub_q[k].pos_frac);
            put_num(t, 11, "%.3f", q->sub_q[k].frac_gt_02);
            snprintf(lab, sizeof lab, "%s R_lin_float", subn[k]);
            qs_sb_printf(t, "\n%-25s %9d", lab, q->sub_float[k].n);
            put_num(t, 10, "%.4f", q->sub_float[k].mean);
            put_num(t, 10, "%.4f", q->sub_float[k].median);
            put_num(t, 11, "%.3f", q->sub_float[k].pos_frac);
            put_num(t, 11, "%.3f", q->sub_float[k].frac_gt_02);
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
    /* The gate of a study is each setting's own (its model on its data). */
    cJSON *task = cJSON_CreateObject();
    cJSON_AddNumberToObject(task, "settings", q->nsettings);
    cJSON_AddNumberToObject(task, "settings_gate_pass", gates);
    cJSON_AddItemToObject(o_, "task", task);
    cJSON_AddStringToObject(o_, "gate", gates == q->nsettings ? "pass" : "fail");
    qs_sb_printf(t, "[weight-only; gate %s in %d of %d settings%s]",
                 gates == q->nsettings ? "pass" : "FAIL", gates, q->nsettings,
                 gates == q->nsettings ? "" : ": results of failing settings are flagged");
    qs_set_last_table(c, "study q1 layers", jl, NULL);
    return o_;
}

/* ---- study q1 as a plan of jobs, and its merge (plan.h) ------------------------------------ */

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

int qs_study_q1_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e)
{
    char *argv[64];
    int argc = 0;
    const cJSON *js, *x;
    uint64_t plan_seed;
    if (merge_plan_args(plan, dir, argv, &argc, &js, &plan_seed, e) < 0)
        return -1;
    struct q1_args *p = qs_calloc(1, sizeof *p);
    if (!p)
        return qs_errf(e, "out of memory");
    struct qs_q1 q;
    memset(&q, 0, sizeof q);
    struct qs_plan_state ps = {0};
    struct qs_sb t = {0}, pfx = {0};
    cJSON *obj = NULL;
    int rc = -1;
    /* the plan's options, parsed as the plan's own command parsed them; its session seed */
    uint64_t seed = c->b->seed;
    c->b->seed = plan_seed;
    int prc = q1_parse(c, argc, argv, p, e);
    c->b->seed = seed;
    if (prc < 0) {
        qs_err_prefix(e, "study merge: the plan's options");
        goto out;
    }
    p->s.loaded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(plan, "loaded_lm"));
    qs_sb_printf(&pfx, "%s/q1", dir);
    p->s.csv = csv ? csv : pfx.s;
    char opts[600];
    qs_q1_record_options(&p->o, opts, sizeof opts);
    cJSON_ArrayForEach(x, js)
    {
        const char *name, *model;
        uint64_t sseed;
        char path[PATH_MAX + 200];
        if (merge_setting(x, dir, &name, &model, &sseed, path, sizeof path, e) < 0)
            goto out;
        ps.n++;
        qs_err re = {{0}};
        int before = q.nsettings;
        int r = qs_q1_record_read(path, opts, &q, &re);
        if (r == 0 && (q.nsettings != before + 1 || strcmp(q.settings[before].model, model) ||
                       q.settings[before].seed != sseed)) {
            snprintf(re.msg, sizeof re.msg, "%s: not the record of this setting", path);
            q.nlayers = q.settings[before].first; /* drop what it added */
            q.nsettings = before;
            r = -1;
        }
        if (r == 0)
            ps.ndone++;
        else
            qs_plan_state_add(&ps, dir, name, r < 0 ? re.msg : NULL);
    }
    if (q.nsettings == 0) {
        merge_none_finished(&ps, dir, e);
        goto out;
    }
    if (qs_q1_aggregate(&q, e) < 0 || qs_q1_write_csv(&q, &p->o, p->s.csv, e) < 0)
        goto out;
    obj = q1_report(c, p, &q, &t);
    rc = merge_emit(c, dir, "q1", obj, &ps, &t, e);
    obj = NULL;
out:
    cJSON_Delete(obj);
    qs_sb_free(&t);
    qs_sb_free(&pfx);
    qs_plan_state_free(&ps);
    qs_q1_free(&q);
    free(p);
    return rc;
}

static int cmd_study_q1(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct q1_args *p = qs_calloc(1, sizeof *p);
    if (!p)
        return qs_errf(e, "out of memory");
    int rc = -1;
    if (q1_parse(c, argc, argv, p, e) < 0)
        goto out;
    if (p->s.plan) {
        rc = sc_plan(c, &p->s, &p->o, "q1", argc, argv, e);
        goto out;
    }
    p->o.progress = c->b->progress;
    p->o.progress_ctx = c->b->progress_ctx;
    c->b->cancel = 0;
    p->o.cancel = &c->b->cancel;
    struct qs_q1 q;
    if (qs_study_q1(&p->o, &q, e) < 0)
        goto out;
    if ((p->s.csv && qs_q1_write_csv(&q, &p->o, p->s.csv, e) < 0) ||
        (p->s.out && qs_q1_record_write(&q, &p->o, p->s.out, e) < 0)) {
        qs_q1_free(&q);
        goto out;
    }
    q1_canon(c, p, &q);
    struct qs_sb t = {0};
    cJSON *obj = q1_report(c, p, &q, &t);
    qs_emit(c, obj, t.s);
    qs_sb_free(&t);
    qs_q1_free(&q);
    rc = 0;
out:
    free(p);
    return rc;
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
        put_num(t, 9, "%.4f", s->quant_loss);
        put_num(t, 10, "%.5f", s->mse_none);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            put_num(t, 10, "%.5f", s->mse[v]);
        put_num(t, 7, "%+.1f%%", 100 * s->improvement);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            put_num(t, 10, "%+.4f", s->loss_gain[v]);
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
            put_num(t, 10, "%.4g", x->rms);
            put_num(t, 10, "%.5f", x->mse_none);
            for (int v = 0; v < QS_Q2_NVAR; v++)
                put_num(t, 10, "%.5f", x->mse[v]);
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
    put_num(t, 0, "%+.1f%%", 100 * sm.impr_mean);
    qs_sb_printf(t, " (min ");
    put_num(t, 0, "%+.1f%%", 100 * sm.impr_min);
    qs_sb_printf(t, ", max ");
    put_num(t, 0, "%+.1f%%", 100 * sm.impr_max);
    qs_sb_printf(t, ")\nmean gain (embedding / features / both): ");
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        put_num(t, 0, "%+.4f", sm.gain_mean[v]);
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
    cJSON *task = cJSON_CreateObject();
    cJSON_AddNumberToObject(task, "settings", n);
    cJSON_AddNumberToObject(task, "settings_gate_pass", gates);
    cJSON_AddItemToObject(o_, "task", task);
    cJSON_AddStringToObject(o_, "gate", gates == n ? "pass" : "fail");
    qs_sb_printf(t, "[weight-only; gate %s in %d of %d settings%s]", gates == n ? "pass" : "FAIL",
                 gates, n, gates == n ? "" : ": results of failing settings are flagged");
}

/* The options of `study q2` (sc_* for those q1 shares). */
struct q2_args {
    struct study_common s;
    struct qs_q2_opts o;
};

static int q2_parse(struct qs_ctx *c, int argc, char **argv, struct q2_args *p, qs_err *e)
{
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
    if (sc_finish(c, &p->s, q2_bundled, 3, &o->fmt, &o->opt, &o->lm_fmt, &o->lm_opt, e) < 0)
        return -1;
    o->models = p->s.mp;
    o->nmodels = p->s.nm;
    o->seeds = p->s.sv;
    o->nseeds = p->s.ns;
    return 0;
}

/* The study's canonical line (the journal's). */
static void q2_canon(struct qs_ctx *c, const struct q2_args *p, const struct qs_q2 *q)
{
    char head[1700], tail[1300], ht[48] = "";
    sc_canon_head(&p->s, &p->o.fmt, &p->o.opt, q->sum.nlm, head, sizeof head);
    sc_canon_tail(&p->s, tail, sizeof tail);
    if (p->o.heldout_tokens > 0)
        snprintf(ht, sizeof ht, " heldout_tokens=%ld", p->o.heldout_tokens);
    snprintf(c->canon, sizeof c->canon, "study q2%s fit=%d epochs=%d%s%s", head, p->o.n_fit,
             p->o.epochs, ht, tail);
}

/* The finished study's report (JSON returned, text appended to t), CSV files named; the
 * in-process run and `study merge` both print through it. */
static cJSON *q2_result(struct qs_ctx *c, const struct q2_args *p, const struct qs_q2 *q,
                        struct qs_sb *t)
{
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

/* The q1 options a q2 setting's bench is opened with (qs_q2_run_setting does the same). */
static void q2_as_q1(const struct qs_q2_opts *o, struct qs_q1_opts *q1)
{
    memset(q1, 0, sizeof *q1);
    q1->fmt = o->fmt;
    q1->opt = o->opt;
    q1->lm_fmt = o->lm_fmt;
    q1->lm_opt = o->lm_opt;
}

int qs_study_q2_merge(struct qs_ctx *c, const char *dir, const cJSON *plan, const char *csv,
                      qs_err *e)
{
    char *argv[64];
    int argc = 0;
    const cJSON *js, *x;
    uint64_t plan_seed;
    if (merge_plan_args(plan, dir, argv, &argc, &js, &plan_seed, e) < 0)
        return -1;
    struct q2_args *p = qs_calloc(1, sizeof *p);
    if (!p)
        return qs_errf(e, "out of memory");
    struct qs_q2 q;
    memset(&q, 0, sizeof q);
    struct qs_plan_state ps = {0};
    struct qs_sb t = {0}, pfx = {0};
    cJSON *obj = NULL;
    int rc = -1;
    /* the plan's options, parsed as the plan's own command parsed them; its session seed */
    uint64_t seed = c->b->seed;
    c->b->seed = plan_seed;
    int prc = q2_parse(c, argc, argv, p, e);
    c->b->seed = seed;
    if (prc < 0) {
        qs_err_prefix(e, "study merge: the plan's options");
        goto out;
    }
    p->s.loaded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(plan, "loaded_lm"));
    qs_sb_printf(&pfx, "%s/q2", dir);
    p->s.csv = csv ? csv : pfx.s;
    char opts[600];
    qs_q2_record_options(&p->o, opts, sizeof opts);
    cJSON_ArrayForEach(x, js)
    {
        const char *name, *model;
        uint64_t sseed;
        char path[PATH_MAX + 200];
        if (merge_setting(x, dir, &name, &model, &sseed, path, sizeof path, e) < 0)
            goto out;
        ps.n++;
        qs_err re = {{0}};
        int before = q.nsettings;
        int r = qs_q2_record_read(path, opts, &q, &re);
        if (r == 0 && (q.nsettings != before + 1 || strcmp(q.settings[before].model, model) ||
                       q.settings[before].seed != sseed)) {
            snprintf(re.msg, sizeof re.msg, "%s: not the record of this setting", path);
            while (q.nsettings > before) /* drop what it added */
                qs_q2_setting_clear(&q.settings[--q.nsettings]);
            r = -1;
        }
        if (r == 0)
            ps.ndone++;
        else
            qs_plan_state_add(&ps, dir, name, r < 0 ? re.msg : NULL);
    }
    if (q.nsettings == 0) {
        merge_none_finished(&ps, dir, e);
        goto out;
    }
    qs_q2_aggregate(&q);
    if (qs_q2_write_csv(q.settings, q.nsettings, &p->o, p->s.csv, e) < 0)
        goto out;
    obj = q2_result(c, p, &q, &t);
    rc = merge_emit(c, dir, "q2", obj, &ps, &t, e);
    obj = NULL;
out:
    cJSON_Delete(obj);
    qs_sb_free(&t);
    qs_sb_free(&pfx);
    qs_plan_state_free(&ps);
    qs_q2_free(&q);
    free(p);
    return rc;
}

static int cmd_study_q2(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct q2_args *p = qs_calloc(1, sizeof *p);
    if (!p)
        return qs_errf(e, "out of memory");
    int rc = -1;
    if (q2_parse(c, argc, argv, p, e) < 0)
        goto out;
    if (p->s.plan) {
        struct qs_q1_opts q1;
        q2_as_q1(&p->o, &q1);
        rc = sc_plan(c, &p->s, &q1, "q2", argc, argv, e);
        goto out;
    }
    p->o.progress = c->b->progress;
    p->o.progress_ctx = c->b->progress_ctx;
    c->b->cancel = 0;
    p->o.cancel = &c->b->cancel;
    struct qs_q2 q;
    if (qs_study_q2(&p->o, &q, e) < 0)
        goto out;
    if ((p->s.csv && qs_q2_write_csv(q.settings, q.nsettings, &p->o, p->s.csv, e) < 0) ||
        (p->s.out && qs_q2_record_write(q.settings, q.nsettings, &p->o, p->s.out, e) < 0)) {
        qs_q2_free(&q);
        goto out;
    }
    q2_canon(c, p, &q);
    struct qs_sb t = {0};
    cJSON *obj = q2_result(c, p, &q, &t);
    qs_emit(c, obj, t.s);
    qs_sb_free(&t);
    qs_q2_free(&q);
    rc = 0;
out:
    free(p);
    return rc;
}

const struct qs_cmd_def qs_cmds_study[] = {
    {"sensitivity", 0, 0,
     QS_ARGS(QS_OPT("method", QS_ARG_ENUMS, "delta|grad|fisher|hutchinson|all"),
             QS_OPT("probes", QS_ARG_INT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_DATA | QS_CMD_LONG | QS_CMD_RECALC, cmd_sensitivity,
     "per-layer sensitivity: loss delta, gradient norm, Fisher-weighted error, Hessian trace",
     "delta: test-split loss with only that layer quantized minus the float loss (any model; on "
     "a transformer the held-out tokens, per linear site, and its only method and default: the "
     "others need a backward pass). grad, fisher, "
     "hutchinson: calibration split at the float weights; fisher_err = sum F*(W-Q(W))^2 with the "
     "empirical Fisher diagonal F; hutchinson: tr(H) of the layer's weight block from Rademacher "
     "probes v on that layer (seeded by the session seed), the mean of v^T H v with its standard "
     "error; H v is exact, by forward-over-reverse differentiation (Pearlmutter's R-operator), so "
     "ReLU kinks add no error. Prints the Spearman correlation between methods. "
     "Default method=all, probes=32."},
    {"allocate", 0, 0,
     QS_ARGS(QS_OPT("bits", QS_ARG_FLOAT, "B"), QS_OPT("rank", QS_ARG_INT, "R"),
             QS_OPT("formats", QS_ARG_WORD, "F,..."), QS_OPT("gran", QS_ARG_WORD, "G"),
             QS_OPT("methods", QS_ARG_WORD, "M,..."), QS_OPT("method", QS_ARG_WORD, "M"),
             QS_OPT("corr", QS_ARG_WORD, "M"), QS_OPT("ranks", QS_ARG_WORD, "R,..."),
             QS_OPT("prec", QS_ARG_FORMAT, "P"), QS_OPT("clip", QS_ARG_ENUM, "max|mse|pct:P"),
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
    {"qat", 0, 0,
     QS_ARGS(QS_OPT("epochs", QS_ARG_INT, NULL), QS_OPT("steps", QS_ARG_INT, NULL),
             QS_OPT("lr", QS_ARG_FLOAT, NULL), QS_OPT("min_lr", QS_ARG_FLOAT, NULL),
             QS_OPT("batch", QS_ARG_INT, NULL), QS_OPT("ctx", QS_ARG_INT, NULL),
             QS_OPT("warmup", QS_ARG_INT, NULL), QS_OPT("wd", QS_ARG_FLOAT, NULL),
             QS_OPT("clip", QS_ARG_FLOAT, NULL), QS_OPT("seed", QS_ARG_INT, NULL),
             QS_OPT("out", QS_ARG_PATH, "DIR"), QS_OPT("mode", QS_ARG_ENUM, "whole|block"),
             QS_OPT("order", QS_ARG_ENUM, "depth|sensitivity"), QS_OPT("samples", QS_ARG_INT, NULL),
             QS_OPT("scales", QS_ARG_ENUM, "fixed|lsq")),
     QS_CMD_JOURNAL | QS_CMD_DATA | QS_CMD_LONG | QS_CMD_RECALC, cmd_qat,
     "quantization-aware fine-tuning (straight-through) through the current formats",
     "Trains the float master weights on the train split with the forward pass through each "
     "layer's weight format, then replaces the model by the fine-tuned one and reports the share "
     "of the float-PTQ accuracy gap closed. Defaults: epochs=10 lr=3e-4 batch=64 seed=session. "
     "On a transformer: AdamW (cosine after warmup=10) on random windows of the tokens before "
     "the held-out 10 %, the forward through each site's weight format (scales recomputed from "
     "the master weights every step) and its activation format, dx = dy through both; epochs=1 "
     "(steps= instead), batch=16 lr=5e-4 min_lr=lr/10 wd=0 clip=1; held-out loss before and "
     "after; out=DIR also writes the trained model. mode=block (Block-AP): one block at a time "
     "learns to reproduce its float output on samples=64 windows, from the stream of the model "
     "being trained, in depth order or the most sensitive first (order=sensitivity, after "
     "`sensitivity`). scales=lsq learns the weight scales with the weights (LSQ, Esser et al. "
     "2020; same optimizer and lr; refused for MX, NVFP4 and ggml formats) and makes them the "
     "sites' scales, packed export included; scales=fixed (default) recomputes them."},
    {"study q1", 0, 0,
     QS_ARGS(QS_OPT("models", QS_ARG_WORD, "PATH,...|bundled"),
             QS_OPT("seeds", QS_ARG_WORD, "0,1,2"), QS_OPT("prec", QS_ARG_ENUM, "int4|int8|float"),
             QS_OPT("format", QS_ARG_FORMAT, "int3"), QS_OPT("gran", QS_ARG_WORD, "tensor"),
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
             QS_OPT("gran", QS_ARG_WORD, "tensor"), QS_OPT("fit", QS_ARG_INT, "65536"),
             QS_OPT("epochs", QS_ARG_INT, "8"), QS_OPT("heldout_tokens", QS_ARG_INT, NULL),
             QS_OPT("csv", QS_ARG_PATH, "PREFIX"), QS_OPT("out", QS_ARG_PATH, "RECORD.json"),
             QS_OPT("plan", QS_ARG_PATH, "DIR")),
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
