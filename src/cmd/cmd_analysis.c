/* cmd_analysis.c - commands of the error geometry and corrections: error, spectrum, rank,
 * correct, uncorrect, ablate, export csv. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_lm.h"
#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/dataset.h"
#include "qscope/lmbench.h"

/* Resolves a layer name or reports close matches. */
static int layer_arg(struct qs_ctx *c, const char *name, qs_err *e)
{
    int i = qs_bench_layer_index(c->b, name);
    if (i < 0) {
        char sug[256];
        qs_bench_suggest_layer(c->b, name, sug, sizeof sug);
        return qs_errf(e, "no layer '%s' (did you mean: %s?)", name, sug);
    }
    return i;
}

/* Layers matching a glob pattern (or all when NULL); at least one. */
static int layers_matching(struct qs_ctx *c, const char *pat, int *idx, qs_err *e)
{
    int n = 0;
    struct qs_unit u;
    for (int i = 0; i < qs_bench_nunits(c->b); i++) {
        qs_bench_unit(c->b, i, &u);
        if (!pat || qs_glob_match(pat, u.name))
            idx[n++] = i;
    }
    if (n == 0) {
        char sug[256];
        qs_bench_suggest_layer(c->b, pat, sug, sizeof sug);
        return qs_errf(e, "pattern '%s' matches no layer (layers: %s)", pat, sug);
    }
    return n;
}

static int *idx_alloc(struct qs_ctx *c)
{
    return malloc((size_t)(qs_bench_nunits(c->b) + 1) * sizeof(int));
}

/* ---- error --------------------------------------------------------------------------- */

cJSON *qs_cmd_error_row(const char *name, const struct qs_layer_err *r)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", name);
    qs_json_num(j, "w_rel_err", r->w_rel_err);
    qs_json_num(j, "preact_rel_mse", r->preact_rel_mse);
    qs_json_num(j, "snr_db", r->snr_db);
    qs_json_num(j, "local_rel_mse", r->local_rel_mse);
    qs_json_num(j, "local_snr_db", r->local_snr_db);
    qs_json_num(j, "cosine", r->cosine);
    return j;
}

/* Emits a per-layer table result: the gate under its text t (freed), rows as "layers", kept
 * under title for `export csv`. */
static void emit_layer_table(struct qs_ctx *c, cJSON *o, struct qs_sb *t, const char *title,
                             cJSON *rows)
{
    qs_add_gate(c, o, t);
    qs_set_last_table(c, title, rows, NULL);
    cJSON_AddItemToObject(o, "layers", rows);
    qs_emit(c, o, t->s);
    qs_sb_free(t);
}

static int cmd_error(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    const char *kl = qs_arg(c, "kl"); /* auto, on or off (the spec's enum) */
    enum qs_kl_mode klm = !kl || !strcmp(kl, "auto") ? QS_KL_AUTO
                          : !strcmp(kl, "on")        ? QS_KL_ON
                                                     : QS_KL_OFF;
    const char *pat = qs_arg_pos(c, 0);
    (void)argc;
    (void)argv;
    struct qs_bench *b = c->b;
    double klcost = qs_analysis_kl_cost(b);
    int L = qs_bench_nunits(b), *idx = idx_alloc(c);
    struct qs_layer_err *err = qs_calloc((size_t)L, sizeof *err);
    if (!idx || !err) {
        free(idx);
        free(err);
        return qs_errf(e, "out of memory");
    }
    int n = layers_matching(c, pat, idx, e);
    if (n < 0 || qs_analysis_errors_ex(b, err, klm, e) < 0) {
        free(idx);
        free(err);
        return -1;
    }
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "error");
    struct qs_sb t = {0};
    int attr = 0, W = 10; /* the name column: as wide as the longest name shown */
    for (int k = 0; k < n; k++) {
        struct qs_unit u;
        qs_bench_unit(b, idx[k], &u);
        attr |= err[idx[k]].has_attr;
        W = (int)strlen(u.name) > W ? (int)strlen(u.name) : W;
    }
    qs_sb_printf(&t, "%-*s %10s %14s %9s %9s %9s %9s\n", W, b->lm ? "site" : "layer", "w_rel_err",
                 "preact_rel_mse", "snr_db", "local_db", "cosine", "kl_share");
    for (int k = 0; k < n; k++) {
        const struct qs_layer_err *r = &err[idx[k]];
        struct qs_unit u;
        qs_bench_unit(b, idx[k], &u);
        cJSON *j = qs_cmd_error_row(u.name, r);
        qs_json_num(j, "kl_alone", r->kl_alone);
        qs_json_num(j, "kl_share", r->kl_share);
        if (r->has_attr) {
            qs_json_num(j, "w_only", r->w_only);
            qs_json_num(j, "a_only", r->a_only);
            qs_json_num(j, "interaction", r->interaction);
        }
        cJSON_AddItemToArray(rows, j);
        qs_sb_printf(&t, "%-*s %10.5f %14.6g %9.2f %9.2f %9.6f", W, u.name, r->w_rel_err,
                     r->preact_rel_mse, r->snr_db, r->local_snr_db, r->cosine);
        if (isnan(r->kl_share))
            qs_sb_printf(&t, " %9s\n", "-");
        else
            qs_sb_printf(&t, " %9.4f\n", r->kl_share);
    }
    if (attr) {
        qs_sb_printf(&t, "attribution of the local relative MSE (weight+activation):\n");
        qs_sb_printf(&t, "%-*s %12s %12s %12s\n", W, b->lm ? "site" : "layer", "weights",
                     "activations", "interaction");
        for (int k = 0; k < n; k++)
            if (err[idx[k]].has_attr) {
                struct qs_unit u;
                qs_bench_unit(b, idx[k], &u);
                qs_sb_printf(&t, "%-*s %12.6g %12.6g %12.6g\n", W, u.name, err[idx[k]].w_only,
                             err[idx[k]].a_only, err[idx[k]].interaction);
            }
    }
    int kl_missing = n > 0 && isnan(err[idx[0]].kl_share);
    if (kl_missing)
        qs_sb_printf(&t,
                     "kl_share not computed: one held-out run per quantized site, about %.3g "
                     "multiply-adds (parameters x held-out tokens x sites; kl=auto computes "
                     "it up to %.3g); error kl=on computes it\n",
                     klcost, QS_KL_AUTO_MAX);
    if (b->lm)
        qs_sb_printf(&t, "(calibration windows; snr/preact propagated through the quantized model, "
                         "local from the float model's inputs; kl_share: share of the held-out KL "
                         "with only that site quantized)\n");
    else
        qs_sb_printf(&t, "(calibration split; snr/preact propagated through the quantized path, "
                         "local from float inputs; kl_share: share of KL with only that layer "
                         "quantized)\n");
    emit_layer_table(c, o, &t, "error", rows);
    free(idx);
    free(err);
    return 0;
}

/* ---- spectrum ------------------------------------------------------------------------ */

/* of=, scale= and (spectrum) k=, read through the spec (the dispatcher checked their values). */
static int parse_spec_opts(const struct qs_ctx *c, enum qs_spec_of *of, enum qs_spec_scale *sc,
                           int *k, qs_err *e)
{
    const char *v;
    long lv;
    if ((v = qs_arg(c, "of")))
        *of = !strcmp(v, "weight") ? QS_SPEC_WEIGHT : QS_SPEC_PREACT;
    if ((v = qs_arg(c, "scale")))
        *sc = !strcmp(v, "none") ? QS_SCALE_NONE : !strcmp(v, "act") ? QS_SCALE_ACT : QS_SCALE_COV;
    if (k && (v = qs_arg(c, "k"))) {
        if (qs_parse_int(v, 1, 1 << 20, &lv, "k", e) < 0)
            return -1;
        *k = (int)lv;
    }
    return 0;
}

static const char *of_name(enum qs_spec_of of)
{
    return of == QS_SPEC_WEIGHT ? "weight" : "preact";
}
static const char *scale_name(enum qs_spec_scale s)
{
    return s == QS_SCALE_NONE ? "none" : s == QS_SCALE_ACT ? "act" : "cov";
}

static void stats_json(cJSON *o, const struct qs_rank_stats *st)
{
    qs_json_num(o, "fro2", st->fro2);
    qs_json_num(o, "top", st->top);
    qs_json_num(o, "mp_edge", st->mp_edge);
    qs_json_num(o, "eff_rank", st->eff_rank);
    qs_json_num(o, "stable_rank", st->stable_rank);
    cJSON_AddNumberToObject(o, "k50", st->k50);
    cJSON_AddNumberToObject(o, "k90", st->k90);
    cJSON_AddNumberToObject(o, "k99", st->k99);
    qs_json_num(o, "null_edge", st->null_edge);
    qs_json_num(o, "null_top", st->null_top);
    qs_json_num(o, "null_margin", st->null_margin);
    cJSON_AddNumberToObject(o, "null_draws", st->null_draws);
    cJSON_AddStringToObject(o, "shape",
                            st->zero         ? "zero"
                            : st->structured ? "structured"
                                             : "white");
}

static const char *shape_of(const struct qs_rank_stats *st)
{
    return st->zero ? "zero" : st->structured ? "structured" : "white";
}

/* The residual W - (Q(W) + C) of a spectrum, as a JSON object: its statistics, the share of
 * the error's energy the correction removed, and (with values) sv_resid beside sv. */
static void resid_json(cJSON *o, const struct qs_spectrum *sp, int values)
{
    if (!sp->resid_method)
        return;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "method", sp->resid_method);
    if (sp->resid < 0) {
        cJSON_AddStringToObject(r, "applies", "no: the correction acts on the outputs");
    } else if (sp->resid > 0) {
        stats_json(r, &sp->res_st);
        qs_json_num(r, "removed", sp->st.fro2 > 0 ? 1 - sp->res_st.fro2 / sp->st.fro2 : 0);
        if (values) {
            cJSON *a = cJSON_CreateArray();
            for (int j = 0; j < sp->nsv; j++)
                cJSON_AddItemToArray(a, qs_json_num_item(sp->res_sv[j]));
            cJSON_AddItemToObject(o, "sv_resid", a);
        }
    }
    cJSON_AddItemToObject(o, "resid", r);
}

static int cmd_spectrum(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* LAYER then options (the spec's arity) */
    int i = layer_arg(c, argv[0], e), k = 0;
    enum qs_spec_of of = QS_SPEC_WEIGHT;
    enum qs_spec_scale sc = QS_SCALE_NONE;
    if (i < 0 || parse_spec_opts(c, &of, &sc, &k, e) < 0)
        return -1;
    struct qs_spectrum sp;
    if (qs_analysis_spectrum_ex(c->b, i, of, sc, k, QS_SPEC_NULL | QS_SPEC_RESID, &sp, e) < 0)
        return -1;
    snprintf(c->canon, sizeof c->canon, "spectrum %s of=%s scale=%s k=%d", argv[0], of_name(of),
             scale_name(sc), sp.nsv);
    cJSON *o = cJSON_CreateObject(), *sv = cJSON_CreateArray(), *ref = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "spectrum");
    cJSON_AddStringToObject(o, "layer", argv[0]);
    cJSON_AddStringToObject(o, "of", of_name(of));
    cJSON_AddStringToObject(o, "scale", scale_name(sc));
    cJSON_AddNumberToObject(o, "m", sp.m);
    cJSON_AddNumberToObject(o, "n", sp.n);
    cJSON_AddStringToObject(o, "method", sp.exact ? "exact" : "randomized");
    for (int j = 0; j < sp.nsv; j++) {
        cJSON_AddItemToArray(sv, qs_json_num_item(sp.sv[j]));
        cJSON_AddItemToArray(ref, qs_json_num_item(sp.ref_sv[j]));
    }
    cJSON_AddItemToObject(o, "sv", sv);
    cJSON_AddItemToObject(o, of == QS_SPEC_WEIGHT ? "weight_sv" : "float_sv", ref);
    stats_json(o, &sp.st);
    resid_json(o, &sp, 1);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "spectrum of %s error %s (%dx%d, scale=%s, %s, calibration split)\n",
                 of_name(of), argv[0], sp.m, sp.n, scale_name(sc),
                 sp.exact ? "exact LAPACK" : "randomized top-k");
    if (sp.st.zero) {
        qs_sb_printf(&t, "the error is exactly zero: all-zero spectrum\n");
    } else {
        int rs = sp.resid > 0;
        qs_sb_printf(&t, "%4s %14s %14s", "i", "sigma(error)",
                     of == QS_SPEC_WEIGHT ? "sigma(W)" : "sigma(Y_f)");
        qs_sb_printf(&t, rs ? " %14s\n" : "\n", "sigma(resid)");
        int show = sp.nsv < 16 ? sp.nsv : 16;
        for (int j = 0; j < show; j++) {
            qs_sb_printf(&t, "%4d %14.6g %14.6g", j + 1, sp.sv[j], sp.ref_sv[j]);
            if (rs)
                qs_sb_printf(&t, " %14.6g", sp.res_sv[j]);
            qs_sb_printf(&t, "\n");
        }
        if (show < sp.nsv)
            qs_sb_printf(&t, "   ... %d more values (JSON has all)\n", sp.nsv - show);
        qs_sb_printf(&t,
                     "top %.6g vs null edge %.6g (variance-profile noise: mean top %.6g + "
                     "margin %.3g; i.i.d. Marchenko-Pastur edge %.6g): %s\n",
                     sp.st.top, sp.st.null_edge, sp.st.null_top, sp.st.null_margin, sp.st.mp_edge,
                     sp.st.structured ? "STRUCTURED (above rounding noise of this variance profile)"
                                      : "white (within rounding noise of this variance profile)");
    }
    if (sp.resid > 0) {
        const struct qs_rank_stats *r = &sp.res_st;
        qs_sb_printf(&t,
                     "residual W - (Q(W) + C) after %s: %.1f%% of the error's energy removed; "
                     "top %.6g vs null edge %.6g: %s; stable %.3f (was %.3f), eff_rank %.3f "
                     "(was %.3f)\n",
                     sp.resid_method, sp.st.fro2 > 0 ? 100 * (1 - r->fro2 / sp.st.fro2) : 0.0,
                     r->top, r->null_edge, shape_of(r), r->stable_rank, sp.st.stable_rank,
                     r->eff_rank, sp.st.eff_rank);
    } else if (sp.resid < 0) {
        qs_sb_printf(&t,
                     "correction %s acts on the outputs: the weight-residual view does not "
                     "apply\n",
                     sp.resid_method);
    }
    qs_add_gate(c, o, &t);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    qs_spectrum_free(&sp);
    return 0;
}

/* ---- rank ---------------------------------------------------------------------------- */

#define RANK_CURVE_K 32

static int cmd_rank(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc;
    (void)argv;
    const char *pat = qs_arg_pos(c, 0); /* [PATTERN], before or after the options */
    enum qs_spec_of of = QS_SPEC_WEIGHT;
    enum qs_spec_scale sc = QS_SCALE_NONE;
    if (parse_spec_opts(c, &of, &sc, NULL, e) < 0)
        return -1;
    int *idx = idx_alloc(c);
    if (!idx)
        return qs_errf(e, "out of memory");
    int n = layers_matching(c, pat, idx, e);
    if (n < 0) {
        free(idx);
        return -1;
    }
    snprintf(c->canon, sizeof c->canon, "rank %s of=%s scale=%s", pat ? pat : "*", of_name(of),
             scale_name(sc));
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "rank");
    cJSON_AddStringToObject(o, "of", of_name(of));
    cJSON_AddStringToObject(o, "scale", scale_name(sc));
    struct qs_sb t = {0};
    int nw = 10;
    for (int k = 0; k < n; k++) {
        struct qs_unit u;
        qs_bench_unit(c->b, idx[k], &u);
        if ((int)strlen(u.name) > nw)
            nw = (int)strlen(u.name);
    }
    qs_sb_printf(&t, "%-*s %9s %9s %5s %5s %5s %11s %11s %11s %s\n", nw, "layer", "eff_rank",
                 "stable", "k50", "k90", "k99", "top", "mp_edge", "null_edge", "shape");
    struct qs_sb rt = {0}; /* residuals of corrected layers, printed after the table */
    int rc = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        struct qs_spectrum sp;
        if ((rc = qs_analysis_spectrum_ex(c->b, idx[k], of, sc, 0, QS_SPEC_NULL | QS_SPEC_RESID,
                                          &sp, e)) < 0)
            break;
        const struct qs_rank_stats *st = &sp.st;
        cJSON *j = cJSON_CreateObject(), *curve = cJSON_CreateArray();
        struct qs_unit un;
        qs_bench_unit(c->b, idx[k], &un);
        cJSON_AddStringToObject(j, "name", un.name);
        stats_json(j, st);
        int K = sp.nsv < RANK_CURVE_K ? sp.nsv : RANK_CURVE_K;
        double left[RANK_CURVE_K + 1];
        qs_energy_left(sp.sv, sp.nsv, st->fro2, K, left);
        for (int q = 0; q <= K; q++)
            cJSON_AddItemToArray(curve, qs_json_num_item(left[q]));
        cJSON_AddItemToObject(j, "energy_left", curve);
        resid_json(j, &sp, 0);
        cJSON_AddItemToArray(rows, j);
        qs_sb_printf(&t, "%-*s %9.3f %9.3f %5d %5d %5d %11.5g %11.5g %11.5g %s\n", nw, un.name,
                     st->eff_rank, st->stable_rank, st->k50, st->k90, st->k99, st->top, st->mp_edge,
                     st->null_edge, shape_of(st));
        if (sp.resid > 0) {
            const struct qs_rank_stats *r = &sp.res_st;
            if (!rt.s)
                qs_sb_printf(&rt,
                             "residual W - (Q(W) + C) of corrected layers:\n"
                             "%-*s %-8s %9s %9s %5s %11s %8s %s\n",
                             nw, "layer", "method", "eff_rank", "stable", "k90", "top", "removed",
                             "shape");
            qs_sb_printf(&rt, "%-*s %-8s %9.3f %9.3f %5d %11.5g %7.1f%% %s\n", nw, un.name,
                         sp.resid_method, r->eff_rank, r->stable_rank, r->k90, r->top,
                         st->fro2 > 0 ? 100 * (1 - r->fro2 / st->fro2) : 0.0, shape_of(r));
        } else if (sp.resid < 0) {
            qs_sb_printf(&rt,
                         "%s: %s acts on the outputs; the weight-residual view does not "
                         "apply\n",
                         un.name, sp.resid_method);
        }
        qs_spectrum_free(&sp);
    }
    if (rc < 0) {
        cJSON_Delete(o);
        cJSON_Delete(rows);
        qs_sb_free(&t);
        qs_sb_free(&rt);
        free(idx);
        return -1;
    }
    if (rt.s)
        qs_sb_printf(&t, "%s", rt.s);
    qs_sb_free(&rt);
    qs_sb_printf(&t,
                 "(%s error; eff_rank = exp(entropy of sigma_i^2 / sum sigma_j^2); stable = "
                 "||E||_F^2/||E||_2^2; kP = smallest k holding P%% of the energy; shape: top "
                 "singular value above null_edge = structured, where null_edge = mean top "
                 "value of 5 seeded draws of Gaussian noise with the error's variance per "
                 "scale block + max(4 Tracy-Widom scales, 3 sd); mp_edge is the i.i.d. "
                 "edge, shown for reference; see help rank)\n",
                 of_name(of));
    emit_layer_table(c, o, &t, "rank", rows);
    free(idx);
    return 0;
}

/* ---- correct / uncorrect ------------------------------------------------------------- */

cJSON *qs_cmd_correct_result(const char *name, const struct qs_corr *cr, double bpw, int prec)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "correct");
    cJSON_AddStringToObject(o, "layer", name);
    cJSON_AddStringToObject(o, "method", qs_corr_name(cr->method));
    cJSON_AddNumberToObject(o, "rank", cr->rank);
    if (prec)
        cJSON_AddStringToObject(o, "prec", cr->prec);
    qs_json_num(o, "recovery", cr->recovery);
    if (cr->method != QS_CORR_CLOCAL)
        qs_json_num(o, "recovery_calib", cr->recovery_calib);
    cJSON_AddNumberToObject(o, "params", (double)cr->params);
    qs_json_num(o, "bits_added", cr->bits);
    qs_json_num(o, "layer_bits_per_weight", bpw);
    if (cr->amap) {
        qs_json_num(o, "lambda", cr->lambda);
        cJSON_AddNumberToObject(o, "rank_kept", cr->rank_kept);
    }
    if (cr->method == QS_CORR_CLOCAL)
        cJSON_AddStringToObject(o, "label", "upper baseline, not deployable");
    return o;
}

static int cmd_correct(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    enum qs_corr_method m;
    if (qs_corr_parse(argv[1], &m, e) < 0)
        return -1;
    long lv = 0;
    (void)argc; /* LAYER|PATTERN METHOD and the options (the spec) */
    if (qs_arg_int_in(c, "r", 1, 1 << 20, &lv, e) < 0)
        return -1;
    int rank = (int)lv;
    const char *prec = qs_arg(c, "prec"), *teacher_path = qs_arg(c, "teacher");
    if (!prec)
        prec = "float";
    double lambda = qs_arg_float(c, "lambda", -1.0);
    if (qs_arg(c, "lambda") && lambda < 0)
        return qs_errf(e, "lambda must be >= 0 (omit it for the automatic choice)");
    int lowrank =
        m == QS_CORR_LOWRANK || m == QS_CORR_LQER || m == QS_CORR_QERA || m == QS_CORR_EORA;
    if (lowrank && rank == 0)
        rank = 4;
    if (!lowrank && rank)
        return qs_errf(e, "r= applies to lowrank, lqer, qera and eora");
    struct qs_format pf; /* low-rank factors: float or a weight format, by its canonical name */
    if (lowrank) {
        if (qs_corr_prec_parse(prec, &pf, e) < 0)
            return -1;
        if (pf.kind != QS_FMT_NONE)
            prec = pf.name;
    }
    int *idx = idx_alloc(c);
    if (!idx)
        return qs_errf(e, "out of memory");
    int n;
    if (strpbrk(argv[0], "*?[")) {
        n = layers_matching(c, argv[0], idx, e);
    } else {
        n = 1;
        idx[0] = layer_arg(c, argv[0], e);
        if (idx[0] < 0)
            n = -1;
    }
    if (n > 0 && c->b->lm) {
        /* bias/linear/clocal spell prec= and lambda= as MLPs do; low-rank keeps its r= form */
        char lopts[96] = "";
        if (m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL)
            snprintf(lopts, sizeof lopts, " prec=%s", prec);
        if (lambda >= 0 && !lowrank)
            snprintf(lopts + strlen(lopts), sizeof lopts - strlen(lopts), " lambda=%.9g", lambda);
        int rc = teacher_path ? qs_errf(e, "correct: teacher= is for MLPs")
                 : lowrank && lambda >= 0
                     ? qs_errf(e, "correct: lambda= applies to bias, linear and clocal")
                     : qs_cmd_lm_correct(c, idx, n, m, rank, prec, lambda, lopts, e);
        free(idx);
        if (rc == 0 && lowrank)
            snprintf(c->canon, sizeof c->canon, "correct %s %s r=%d%s%s", argv[0], qs_corr_name(m),
                     rank, strcmp(prec, "float") ? " prec=" : "",
                     strcmp(prec, "float") ? prec : "");
        else if (rc == 0)
            snprintf(c->canon, sizeof c->canon, "correct %s %s%s", argv[0], qs_corr_name(m), lopts);
        return rc;
    }
    struct qs_mlp *teacher = NULL;
    if (n > 0 && teacher_path && qs_mlp_load(teacher_path, QS_ACT_RELU, 0, &teacher, e) < 0)
        n = -1;
    if (n < 0) {
        free(idx);
        return -1;
    }
    char opts[600];
    snprintf(opts, sizeof opts, "%s", "");
    if (rank)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), " r=%d", rank);
    if (m == QS_CORR_LINEAR || m == QS_CORR_CLOCAL || (lowrank && strcmp(prec, "float")))
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), " prec=%s", prec);
    if (lambda >= 0)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), " lambda=%.9g", lambda);
    if (teacher_path) {
        char q[400];
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), " teacher=%s",
                 qs_quote(teacher_path, q, sizeof q));
    }
    /* the journal spells the factors' precision out (float too), so that a session replays
     * the same correction whatever the default becomes; the text shows it when not float */
    snprintf(c->canon, sizeof c->canon, "correct %s %s%s%s", argv[0], qs_corr_name(m), opts,
             lowrank && !strcmp(prec, "float") ? " prec=float" : "");
    struct qs_sb t = {0};
    int rc = 0, done = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        int i = idx[k];
        const struct qs_layer_state *s = &c->b->ls[i];
        if (n > 1 && s->wfmt.kind == QS_FMT_NONE && s->afmt.kind == QS_FMT_NONE)
            continue; /* a pattern skips float layers */
        if ((rc = qs_analysis_correct(c->b, i, m, rank, prec, lambda, teacher, e)) < 0)
            break;
        struct qs_eval ev;
        if ((rc = qs_bench_eval(c->b, &ev, e)) < 0)
            break;
        const struct qs_corr *cr = &s->corr;
        const struct qs_layer *l = &c->b->model->layers[i];
        double lbits =
            s->wquant ? 8.0 * (double)qs_packed_bytes(&s->packed) : 32.0 * l->out * l->in;
        double bpw = (lbits + cr->bits + s->xform_bits) / ((double)l->out * l->in);
        cJSON *o = qs_cmd_correct_result(l->name, cr, bpw, 1);
        if (m != QS_CORR_CLOCAL)
            qs_json_num(o, "quant_acc", ev.q.acc);
        char calib[48];
        if (m == QS_CORR_CLOCAL)
            snprintf(calib, sizeof calib, "fitted there, float inputs");
        else
            snprintf(calib, sizeof calib, "calib %.4f", cr->recovery_calib);
        char how[96] = "";
        const struct qs_format_traits *pt = qs_format_traits(&pf);
        if (lowrank && strcmp(cr->prec, "float"))
            snprintf(how, sizeof how, ": %s factors packed, %s", cr->prec,
                     pt->unscaled      ? "cast, no scales"
                     : pt->fixed_block ? "block scales along rows"
                                       : "a scale per row");
        qs_sb_printf(&t,
                     "%s%s %s%s: recovery R = %.4f on held-out (%s), +%ld params "
                     "(+%.0f bits%s), layer %.3f bits/weight",
                     done ? "\n" : "", l->name, qs_corr_name(m), opts, cr->recovery, calib,
                     cr->params, cr->bits, how, bpw);
        if (cr->amap) /* the ridge map's own figures (lowrank.h: lambda and the rank cut) */
            qs_sb_printf(&t, "; ridge lambda %.3g, rank kept %d of %d", cr->lambda, cr->rank_kept,
                         l->out);
        if (m == QS_CORR_CLOCAL)
            qs_sb_printf(&t, " [upper baseline, not deployable]");
        else
            qs_sb_printf(&t, "; quantized acc %.4f (loss %.4f)", ev.q.acc, ev.q.loss);
        if (k + 1 == n || n == 1) {
            qs_sb_printf(&t, "\n");
            qs_add_gate(c, o, &t);
        } else {
            qs_add_gate(c, o, NULL);
        }
        qs_emit(c, o, NULL);
        done++;
    }
    qs_mlp_free(teacher);
    free(idx);
    if (rc == 0 && done == 0)
        rc = qs_errf(e, "correct: every layer matching '%s' is in float", argv[0]);
    if (rc == 0) { /* export csv: the corrections now in place, one row a layer */
        cJSON *rows = cJSON_CreateArray();
        for (int i = 0; i < c->b->model->nlayers; i++) {
            const struct qs_corr *cr = &c->b->ls[i].corr;
            if (cr->method == QS_CORR_NONE)
                continue;
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "layer", c->b->model->layers[i].name);
            cJSON_AddStringToObject(r, "method", qs_corr_name(cr->method));
            cJSON_AddNumberToObject(r, "rank", cr->rank);
            cJSON_AddStringToObject(r, "prec", cr->prec);
            qs_json_num(r, "recovery", cr->recovery);
            if (cr->method != QS_CORR_CLOCAL)
                qs_json_num(r, "recovery_calib", cr->recovery_calib);
            else
                cJSON_AddStringToObject(r, "recovery_calib", "n/a (upper baseline)");
            cJSON_AddNumberToObject(r, "params", (double)cr->params);
            qs_json_num(r, "bits_added", cr->bits);
            cJSON_AddStringToObject(r, "stale", cr->stale ? "yes" : "no");
            cJSON_AddItemToArray(rows, r);
        }
        qs_set_last_table(c, "corrections", rows, NULL);
        cJSON_Delete(rows);
    }
    if (rc == 0)
        qs_emit_text(c, t.s);
    qs_sb_free(&t);
    return rc;
}

static int cmd_uncorrect(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one LAYER|PATTERN (the spec's arity) */
    int *idx = idx_alloc(c);
    if (!idx)
        return qs_errf(e, "out of memory");
    int n = layers_matching(c, argv[0], idx, e);
    if (n < 0) {
        free(idx);
        return -1;
    }
    int removed = 0;
    for (int k = 0; k < n; k++)
        if (c->b->ls[idx[k]].corr.method != QS_CORR_NONE) {
            qs_analysis_uncorrect(c->b, idx[k]);
            removed++;
        }
    free(idx);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "uncorrect");
    cJSON_AddNumberToObject(o, "removed", removed);
    char txt[128];
    snprintf(txt, sizeof txt, "removed %d correction%s", removed, removed == 1 ? "" : "s");
    qs_emit(c, o, txt);
    return 0;
}

/* ---- ablate -------------------------------------------------------------------------- */

/* {acc, loss}; for a language model {ppl, loss} (the ablation leaves acc unset there). */
static void metric_json(cJSON *o, const char *k, const struct qs_metric *m, int lm)
{
    cJSON *j = cJSON_CreateObject();
    if (lm)
        qs_json_num(j, "ppl", exp(m->loss));
    else
        qs_json_num(j, "acc", m->acc);
    qs_json_num(j, "loss", m->loss);
    cJSON_AddItemToObject(o, k, j);
}

static void interval_json(cJSON *o, const char *k, const struct qs_interval *iv)
{
    cJSON *j = cJSON_CreateObject();
    qs_json_num(j, "mean", iv->mean);
    qs_json_num(j, "lo", iv->lo);
    qs_json_num(j, "hi", iv->hi);
    cJSON_AddItemToObject(o, k, j);
}

/* The rule, as `help ablate`, the table's footnote and the manual state it. */
#define ABLATE_RULE                                                                                \
    "Gains are the mean per-sample loss change on the test split, without minus with "             \
    "(positive: it helps): a mean with its paired-bootstrap 95% interval [lo, hi] (1000 "          \
    "resamples). g_q: the correction on the quantized model; g_f: on the float model; g_r: a "     \
    "random correction of equal rank and norm at the same site; g_o: the same correction at "      \
    "the first other layer of the same shape whose own correction is not upstream (when there "    \
    "is one). Verdict, first match: harmful if g_q's hi < 0; no-gain if g_q's lo <= 0 or "         \
    "g_q's mean <= g_r's hi; capacity if g_f's lo > 0 and g_f's mean >= g_q's mean / 2; "          \
    "recovery otherwise. other-layer significant (a flag, not a verdict): g_o's lo > 0, the "      \
    "correction also helps where it was not fitted. Upstream: the quantized runs keep the "        \
    "earlier layers' corrections that were in place when this one was fitted (the state it "       \
    "was fitted in, printed as 'upstream'); later layers' corrections are off; the float runs "    \
    "have no other correction. A stale bias/linear correction (an earlier layer changed since "    \
    "its fit) is refused: refit it. On a transformer the test split is the held-out windows "      \
    "eval evaluates, a sample is one held-out window (its mean token loss: tokens of a window "    \
    "are correlated), and the metrics are ppl/loss."

/* "fc0, fc1" for the layers of a correction mask; "none" when empty. */
static void mask_names(const struct qs_bench *b, uint64_t m, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int j = 0; j < qs_bench_nunits(b) && j < 63 && len < n; j++)
        if (m >> j & 1) {
            struct qs_unit u;
            qs_bench_unit(b, j, &u);
            int w = snprintf(buf + len, n - len, "%s%s", len ? ", " : "", u.name);
            if (w < 0)
                break;
            len += (size_t)w;
        }
    if (!buf[0])
        snprintf(buf, n, "none");
}

static cJSON *mask_json(const struct qs_bench *b, uint64_t m)
{
    cJSON *a = cJSON_CreateArray();
    for (int j = 0; j < qs_bench_nunits(b) && j < 63; j++)
        if (m >> j & 1) {
            struct qs_unit u;
            qs_bench_unit(b, j, &u);
            cJSON_AddItemToArray(a, cJSON_CreateString(u.name));
        }
    return a;
}

static int cmd_ablate(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    int *idx = idx_alloc(c), n = 0;
    if (!idx)
        return qs_errf(e, "out of memory");
    if (argc) {
        int i = layer_arg(c, argv[0], e);
        if (i < 0) {
            free(idx);
            return -1;
        }
        idx[n++] = i;
    } else {
        for (int i = 0; i < qs_bench_nunits(b); i++)
            if (b->ls[i].corr.method != QS_CORR_NONE && b->ls[i].corr.method != QS_CORR_CLOCAL)
                idx[n++] = i;
        if (n == 0) {
            free(idx);
            return qs_errf(e, "ablate: no deployable correction in place (correct LAYER METHOD)");
        }
    }
    /* transformers: a sample is a held-out window and the metric ppl/loss */
    int lm = b->lm != NULL, W = 8;
    for (int k = 0; k < n; k++) {
        struct qs_unit u;
        qs_bench_unit(b, idx[k], &u);
        W = (int)strlen(u.name) > W ? (int)strlen(u.name) : W;
    }
    struct qs_sb t = {0};
    qs_sb_printf(&t, "%-*s %-9s %15s %15s %15s %15s %15s %15s  %s\n", W, "layer", "method", "float",
                 "quant", "quant+corr", "float+corr", "random ctrl", "other-layer", "verdict");
    cJSON *table = cJSON_CreateArray();
    int rc = 0;
    for (int k = 0; k < n; k++) {
        struct qs_ablation ab;
        rc = qs_analysis_ablate(b, idx[k], &ab, e);
        if (rc < 0)
            break;
        const struct qs_corr *cr = &b->ls[idx[k]].corr;
        struct qs_unit un, uo = {0};
        qs_bench_unit(b, idx[k], &un);
        if (ab.have_other)
            qs_bench_unit(b, ab.other_layer, &uo);
        const char *name = un.name, *oname = ab.have_other ? uo.name : "";
        /* the first figure of each pair: acc, or a language model's perplexity */
        double f1[5] = {ab.f.acc, ab.q.acc, ab.qc.acc, ab.fc.acc, ab.rand_ctrl.acc}, o1;
        const struct qs_metric *ms[] = {&ab.f, &ab.q, &ab.qc, &ab.fc, &ab.rand_ctrl};
        for (int q = 0; lm && q < 5; q++)
            f1[q] = exp(ms[q]->loss);
        o1 = lm ? exp(ab.other_ctrl.loss) : ab.other_ctrl.acc;
        char up[512], gone[512];
        mask_names(b, ab.upstream, up, sizeof up);
        mask_names(b, ab.upstream_gone, gone, sizeof gone);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "cmd", "ablate");
        cJSON_AddStringToObject(o, "layer", name);
        cJSON_AddStringToObject(o, "method", qs_corr_name(cr->method));
        metric_json(o, "float", &ab.f, lm);
        metric_json(o, "quant", &ab.q, lm);
        metric_json(o, "quant_corrected", &ab.qc, lm);
        metric_json(o, "float_corrected", &ab.fc, lm);
        metric_json(o, "random_control", &ab.rand_ctrl, lm);
        if (ab.have_other) {
            metric_json(o, "other_layer_control", &ab.other_ctrl, lm);
            cJSON_AddStringToObject(o, "other_layer", oname);
        }
        interval_json(o, "gain_quant", &ab.g_q);
        interval_json(o, "gain_float", &ab.g_f);
        interval_json(o, "gain_random", &ab.g_r);
        if (ab.have_other)
            interval_json(o, "gain_other", &ab.g_o);
        cJSON_AddBoolToObject(o, "other_layer_significant", ab.other_significant);
        cJSON_AddItemToObject(o, "upstream", mask_json(b, ab.upstream));
        if (ab.upstream_gone)
            cJSON_AddItemToObject(o, "upstream_removed", mask_json(b, ab.upstream_gone));
        cJSON_AddStringToObject(o, "verdict", ab.verdict);
        char other[24] = "n/a";
        if (ab.have_other)
            snprintf(other, sizeof other, "%.4f/%.4f", o1, ab.other_ctrl.loss);
        qs_sb_printf(&t,
                     "%-*s %-9s %7.4f/%-7.4f %7.4f/%-7.4f %7.4f/%-7.4f %7.4f/%-7.4f "
                     "%7.4f/%-7.4f %15s  %s\n",
                     W, name, qs_corr_name(cr->method), f1[0], ab.f.loss, f1[1], ab.q.loss, f1[2],
                     ab.qc.loss, f1[3], ab.fc.loss, f1[4], ab.rand_ctrl.loss, other, ab.verdict);
        qs_sb_printf(&t, "%-*s gain g_q %+.5f [%+.5f, %+.5f]  g_f %+.5f [%+.5f, %+.5f]\n", W, "",
                     ab.g_q.mean, ab.g_q.lo, ab.g_q.hi, ab.g_f.mean, ab.g_f.lo, ab.g_f.hi);
        qs_sb_printf(&t, "%-*s gain g_r %+.5f [%+.5f, %+.5f]  ", W, "", ab.g_r.mean, ab.g_r.lo,
                     ab.g_r.hi);
        if (ab.have_other)
            qs_sb_printf(&t, "g_o %+.5f [%+.5f, %+.5f] at %s%s\n", ab.g_o.mean, ab.g_o.lo,
                         ab.g_o.hi, oname, ab.other_significant ? ": other-layer significant" : "");
        else
            qs_sb_printf(&t, "g_o n/a (no other layer of this shape)\n");
        qs_sb_printf(&t, "%-*s upstream: %s%s", W, "", ab.upstream ? "corrections on " : "", up);
        if (ab.upstream_gone)
            qs_sb_printf(&t,
                         " (also in place at the fit, removed since: %s; a low-rank fit does "
                         "not depend on them)",
                         gone);
        qs_sb_printf(&t, "\n");
        cJSON *row = cJSON_CreateObject();
        cJSON_AddStringToObject(row, "layer", name);
        cJSON_AddStringToObject(row, "method", qs_corr_name(cr->method));
        const char *mn[] = {"float", "quant", "quant_corrected", "float_corrected",
                            "random_control"};
        for (int q = 0; q < 5; q++) {
            char key[48];
            snprintf(key, sizeof key, "%s_%s", mn[q], lm ? "ppl" : "acc");
            qs_json_num(row, key, f1[q]);
            snprintf(key, sizeof key, "%s_loss", mn[q]);
            qs_json_num(row, key, ms[q]->loss);
        }
        const struct qs_interval *gs[] = {&ab.g_q, &ab.g_f, &ab.g_r, &ab.g_o};
        const char *gn[] = {"gain_quant", "gain_float", "gain_random", "gain_other"};
        for (int q = 0; q < 4; q++) {
            int none = q == 3 && !ab.have_other;
            char key[48];
            qs_json_num(row, gn[q], none ? NAN : gs[q]->mean);
            snprintf(key, sizeof key, "%s_lo", gn[q]);
            qs_json_num(row, key, none ? NAN : gs[q]->lo);
            snprintf(key, sizeof key, "%s_hi", gn[q]);
            qs_json_num(row, key, none ? NAN : gs[q]->hi);
        }
        cJSON_AddStringToObject(row, "other_layer", oname);
        cJSON_AddStringToObject(row, "other_layer_significant",
                                ab.other_significant ? "yes" : "no");
        cJSON_AddStringToObject(row, "upstream", up);
        cJSON_AddStringToObject(row, "verdict", ab.verdict);
        cJSON_AddItemToArray(table, row);
        qs_add_gate(c, o, NULL);
        qs_emit(c, o, NULL);
    }
    free(idx);
    if (rc == 0)
        qs_set_last_table(c, "ablate", table, NULL);
    cJSON_Delete(table);
    if (rc == 0) {
        qs_sb_printf(&t,
                     "(%s; gain = loss without - with, mean "
                     "[paired-bootstrap 95%% interval]. Verdict, first match: harmful if g_q's "
                     "hi < 0; no-gain if g_q's lo <= 0 or g_q <= g_r's hi; capacity if g_f's "
                     "lo > 0 and g_f >= g_q/2 (means); else recovery. Quantized runs keep the "
                     "upstream corrections of the fit; help ablate has the whole rule)\n",
                     lm ? "ppl/loss on the held-out windows, a sample a window"
                        : "acc/loss on the test split");
        cJSON *g = cJSON_CreateObject();
        qs_add_gate(c, g, &t);
        cJSON_Delete(g);
        qs_emit_text(c, t.s);
    }
    qs_sb_free(&t);
    return rc;
}

/* ---- export csv ---------------------------------------------------------------------- */

static int cmd_export_csv(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one PATH (the spec's arity) */
    if (!c->last_table)
        return qs_errf(e, "export csv: no table yet (run layers, error, rank, ... first)");
    cJSON *rows = cJSON_GetObjectItem(c->last_table, "rows");
    const char *title = cJSON_GetObjectItem(c->last_table, "title")->valuestring;
    struct qs_bench *b = c->b;
    /* The first line is a raw comment (CSV readers skip it: pandas comment='#') naming the
     * table, the regime, the seed and each layer's formats as `layers` shows them:
     * LAYER:WEIGHTS|ACTIVATIONS. Names come from model files: cleaned, so the line stays one. */
    struct qs_sb meta = {0};
    qs_sb_printf(&meta, "# qscope %s table=%s regime=%s seed=%llu formats=", QS_VERSION, title,
                 qs_regime_name(qs_bench_effective_regime(b)), (unsigned long long)b->seed);
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_unit u;
        char nb[256], wd[64], ad[64];
        qs_bench_unit(b, i, &u);
        qs_bench_wdesc(&b->ls[i], wd, sizeof wd);
        qs_bench_adesc(&b->ls[i], ad, sizeof ad);
        qs_sb_printf(&meta, "%s%s:%s|%s", i ? " " : "", qs_clean_str(u.name, nb, sizeof nb, 0), wd,
                     ad);
    }
    /* and, when a site's weights come from a quantizer method, each site's method and its
     * options (qscope.weight_methods' entries, spaces as commas): LAYER:rtn,
     * LAYER:method=gptq,damp=0.01,...; absent otherwise, so older tables read the same */
    int custom = 0;
    for (int i = 0; i < qs_bench_nunits(b); i++)
        custom |= b->ls[i].wfmt.kind != QS_FMT_NONE && qs_rule_method_custom(&b->ls[i].wm);
    for (int i = 0; custom && i < qs_bench_nunits(b); i++) {
        struct qs_unit u;
        char nb[256], md[320];
        qs_bench_unit(b, i, &u);
        if (b->ls[i].wfmt.kind == QS_FMT_NONE)
            snprintf(md, sizeof md, "-");
        else
            qs_layer_method_desc(&b->ls[i], i, md, sizeof md);
        for (char *p = md; *p; p++)
            *p = *p == ' ' ? ',' : *p;
        qs_sb_printf(&meta, "%s%s:%s",
                     i ? " " : " methods=", qs_clean_str(u.name, nb, sizeof nb, 0), md);
    }
    qs_outfile of;
    if (!meta.s) {
        qs_sb_free(&meta);
        return qs_errf(e, "out of memory");
    }
    if (qs_out_open(&of, argv[0], e) < 0) {
        qs_sb_free(&meta);
        return -1;
    }
    FILE *f = of.f;
    fprintf(f, "%s\n", meta.s);
    qs_sb_free(&meta);
    cJSON *first = cJSON_GetArrayItem(rows, 0);
    int ncol = 0;
    for (cJSON *k = first ? first->child : NULL; k; k = k->next)
        if (!cJSON_IsArray(k) && !cJSON_IsObject(k))
            qs_csv_field(f, k->string, ncol++ == 0);
    fputc('\n', f);
    int nrow = 0;
    cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        int col = 0;
        for (cJSON *k = first->child; k; k = k->next) {
            if (cJSON_IsArray(k) || cJSON_IsObject(k))
                continue;
            cJSON *v = cJSON_GetObjectItem(r, k->string);
            char buf[64];
            const char *s = "";
            if (cJSON_IsString(v))
                s = v->valuestring;
            else if (cJSON_IsRaw(v))
                s = v->valuestring;
            else if (cJSON_IsNumber(v)) {
                snprintf(buf, sizeof buf, "%.9g", v->valuedouble);
                s = buf;
            }
            qs_csv_field(f, s, col++ == 0);
        }
        fputc('\n', f);
        nrow++;
    }
    if (qs_out_commit(&of, e) < 0)
        return -1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "export csv");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "rows", nrow);
    char txt[600];
    snprintf(txt, sizeof txt, "wrote %s: %s table, %d rows, %d columns", argv[0], title, nrow,
             ncol);
    qs_emit(c, o, txt);
    return 0;
}

#define NULL_HELP                                                                                  \
    "white or structured: rounding error is not i.i.d. - each scale block (a row per channel, "    \
    "a row segment per group or MX/NVFP4/NF4 block; at least a row, so per-tensor minifloats "     \
    "get per-row variances) has its own variance, which lifts the top singular value above the "   \
    "i.i.d. Marchenko-Pastur edge (mp_edge, shown for reference). The null is Gaussian noise "     \
    "with the error's empirical variance per block (of=preact: per output channel), put through "  \
    "the same scale= view: null_edge = mean top singular value of 5 draws seeded by the "          \
    "session seed and layer + a finite-size margin max(4 tw, 3 sd), tw = sigma_bar/2 "             \
    "(1/sqrt m + 1/sqrt n)^(1/3) the Tracy-Widom scale, sd the draws' spread. structured = top "   \
    "> null_edge. of=preact keeps each channel's variance, not the inputs' correlations: judge "   \
    "the rounding itself with of=weight scale=cov."

const struct qs_cmd_def qs_cmds_analysis[] = {
    {"error", 0, 1,
     QS_ARGS(QS_POS("PATTERN", QS_ARG_PATTERN, NULL), QS_OPT("kl", QS_ARG_ENUM, "auto|on|off")),
     QS_CMD_JOURNAL | QS_CMD_DATA, cmd_error,
     "per-layer error: weight rel. error, pre-activation rel. MSE, SNR, cosine, KL share",
     "Calibration split. Propagated (each path from its own input) and local (float inputs) "
     "errors; in weight+activation the local error is split into weights, activations and "
     "their interaction. The KL share takes one held-out run per quantized site (kept until "
     "the site changes): kl=auto computes it on MLPs and on transformers while those runs "
     "stay cheap (parameters x held-out tokens x sites <= 1e11; one site of a GPT-2-small "
     "on 6 held-out windows is 7.6e11: on request, kl=on), kl=on always, kl=off never."},
    {"spectrum", 1, 1,
     QS_ARGS(QS_POS("LAYER", QS_ARG_LAYER, NULL), QS_OPT("of", QS_ARG_ENUM, "weight|preact"),
             QS_OPT("scale", QS_ARG_ENUM, "none|act|cov"), QS_OPT("k", QS_ARG_INT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_DATA, cmd_spectrum,
     "singular values of a layer's error, its weight's, and the noise null it is judged by",
     "of=weight: E = W - Q(W); of=preact: Y_q - Y_f on the calibration split. scale=act: E "
     "diag(rms of inputs); scale=cov: E R^(1/2), R = E[x x^T]. " NULL_HELP " With a weight-space "
     "correction C (lowrank, lqer, qera, eora) the residual W - (Q(W) + C) is shown beside E "
     "(sigma(resid), JSON sv_resid and resid); bias, linear and clocal act on the outputs, so "
     "the residual view does not apply to them."},
    {"rank", 0, 1,
     QS_ARGS(QS_POS("PATTERN", QS_ARG_PATTERN, NULL), QS_OPT("of", QS_ARG_ENUM, "weight|preact"),
             QS_OPT("scale", QS_ARG_ENUM, "none|act|cov")),
     QS_CMD_JOURNAL | QS_CMD_DATA, cmd_rank,
     "effective rank, stable rank, k50/k90/k99 and the energy-left curve of each error",
     NULL_HELP
     " Layers with a weight-space correction (lowrank, lqer, qera, eora) get a second "
     "table: the residual W - (Q(W) + C), its eff/stable rank, k90, top value, the share of the "
     "error's energy the correction removed, and its shape."},
    {"correct", 2, 2,
     QS_ARGS(QS_POS("LAYER|PATTERN", QS_ARG_PATTERN, NULL),
             QS_POS("METHOD", QS_ARG_ENUM, "bias|lowrank|lqer|qera|eora|linear|clocal"),
             QS_OPT("r", QS_ARG_INT, "K"), QS_OPT("prec", QS_ARG_FORMAT, "float|FORMAT"),
             QS_OPT("lambda", QS_ARG_FLOAT, NULL), QS_OPT("teacher", QS_ARG_PATH, NULL)),
     QS_CMD_JOURNAL | QS_CMD_DATA | QS_CMD_RECALC, cmd_correct,
     "fit a correction (bias lowrank lqer qera eora linear clocal), judged on held-out data",
     "Recovery R = 1 - ||Y_f - Y_hat||^2 / ||Y_f - Y_q||^2 on the test split (fitted on the "
     "calibration split; clocal is fitted and judged on the test split with float inputs: an "
     "upper baseline, not deployable). teacher= fits bias/linear toward another model's "
     "pre-activations (a deliberately capacity-adding control). linear/clocal: the ridge map "
     "A^T = (Y_q^T Y_q + lambda I)^+ Y_q^T Y_f on centred pre-activations, summed and solved in "
     "double; lambda defaults to 1e-6 tr(Y_q^T Y_q) / d; rank cut: eigen-directions of Y_q^T "
     "Y_q with eigenvalue at or below 1e-6 of the largest get zero weight (null directions and "
     "float32 rounding noise); each result prints lambda and the rank kept. prec= quantizes "
     "the linear map's weights (float, int8, int4; per output row) or the low-rank factors "
     "(float or a weight format: int8, int4, fp8-e4m3, ...; a scale per row of each factor): the "
     "recovery is measured with the quantized factors and their bits come from the packed codes "
     "and scales."},
    {"uncorrect", 1, 1, QS_ARGS(QS_POS("LAYER|PATTERN", QS_ARG_PATTERN, NULL)),
     QS_CMD_JOURNAL | QS_CMD_MODEL | QS_CMD_RECALC, cmd_uncorrect, "remove corrections", NULL},
    {"ablate", 0, 1, QS_ARGS(QS_POS("LAYER", QS_ARG_LAYER, NULL)),
     QS_CMD_JOURNAL | QS_CMD_DATA | QS_CMD_RECALC, cmd_ablate,
     "non-capacity ablation: is each correction recovery, added capacity, no gain or harmful?",
     ABLATE_RULE},
    {"export csv", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_WRITES, cmd_export_csv,
     "write the last table (layers, error, rank, ...) as CSV with a header naming regime, "
     "formats and seed",
     NULL},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
