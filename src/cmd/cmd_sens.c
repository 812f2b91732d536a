/* cmd_sens.c - `sensitivity`: how much each layer's quantization costs, by four methods. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/sensitivity.h"

#include "cmd_fmt.h"

static const char *const sens_names[] = {"delta", "grad", "fisher", "hutchinson"};

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
            qs_cmd_put_num(&t, 12, "%.5g", r->delta_loss);
        }
        if (methods & QS_SENS_GRAD) {
            qs_json_num(j, "grad_norm", r->grad_norm);
            qs_cmd_put_num(&t, 12, "%.5g", r->grad_norm);
        }
        if (methods & QS_SENS_FISHER) {
            qs_json_num(j, "fisher_trace", r->fisher_trace);
            qs_json_num(j, "fisher_err", r->fisher_err);
            qs_cmd_put_num(&t, 12, "%.5g", r->fisher_trace);
            qs_cmd_put_num(&t, 12, "%.5g", r->fisher_err);
        }
        if (methods & QS_SENS_HUTCH) {
            qs_json_num(j, "hutchinson", r->hutch_trace);
            qs_json_num(j, "hutchinson_se", r->hutch_se);
            qs_json_num(j, "hutchinson_err", r->hutch_err);
            qs_cmd_put_num(&t, 12, "%.5g", r->hutch_trace);
            qs_cmd_put_num(&t, 11, "%.3g", r->hutch_se);
            qs_cmd_put_num(&t, 12, "%.5g", r->hutch_err);
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
                qs_cmd_put_num(&t, 11, "%.3f", r);
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

const struct qs_cmd_def qs_cmds_sens[] = {
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
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
