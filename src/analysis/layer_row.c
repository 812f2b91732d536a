/* layer_row.c - the layers table's row, built once for `layers` and the TUI. */
#include "qscope/layer_row.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The row of a unit named name, (out, in), in state s; act: its activation's name, lm: a
 * transformer's site. */
static void row_of(const struct qs_layer_state *s, const char *name, int out, int in,
                   const char *act, int lm, struct qs_layer_row *r)
{
    struct qs_unit u = {.name = name, .out = out, .in = in};
    memset(r, 0, sizeof *r);
    r->name = u.name ? u.name : "?";
    r->out = u.out;
    r->in = u.in;
    snprintf(r->shape, sizeof r->shape, "%dx%d", u.out, u.in);
    snprintf(r->act, sizeof r->act, "%s", act);
    qs_bench_wdesc(s, r->wf, sizeof r->wf);
    qs_bench_adesc(s, r->af, sizeof r->af);
    r->wfmt = s->wfmt;
    r->afmt = s->afmt;
    r->wopt = s->wopt;
    r->aopt = s->aopt;
    r->amode = s->amode;
    r->quantized = s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE;
    if (s->afmt.kind != QS_FMT_NONE && s->amode == QS_AMODE_STATIC && s->a_static_amax > 0)
        r->a_static_amax = s->a_static_amax;
    r->bpw = s->wquant ? qs_packed_bits_per_weight(&s->packed) : 32.0;
    r->bytes = s->wquant ? (double)qs_packed_bytes(&s->packed) : 4.0 * u.out * u.in;
    if (s->wquant && s->xform_bits > 0) { /* a method's explicit input scale */
        r->bytes += s->xform_bits / 8.0;
        r->bpw += s->xform_bits / ((double)u.out * u.in);
    }
    r->w_rel_err = s->w_rel_err;
    r->sens_known = s->sens_method[0] != 0;
    r->sens = s->sens;
    snprintf(r->sens_method, sizeof r->sens_method, "%s", s->sens_method);
    const struct qs_corr *cr = &s->corr;
    r->corr_method = cr->method;
    r->corr_rank = cr->rank;
    snprintf(r->corr_prec, sizeof r->corr_prec, "%s", cr->prec);
    r->corr_bits = cr->bits;
    r->corr_params = cr->params;
    r->recovery = cr->recovery;
    r->recovery_calib = cr->recovery_calib;
    r->corr_stale = cr->stale;
    snprintf(r->corr_short, sizeof r->corr_short, "-");
    snprintf(r->corr_long, sizeof r->corr_long, "-");
    if (cr->method != QS_CORR_NONE) {
        /* the correction's own bits, per weight of the layer (bpw is the packed weight alone) */
        r->corr_bpw = cr->bits / ((double)u.out * u.in);
        int lr = cr->rank > 0, pr = strcmp(cr->prec, "float") && cr->prec[0];
        if (lr)
            snprintf(r->corr_short, sizeof r->corr_short, "%s r=%d", qs_corr_name(cr->method),
                     cr->rank);
        else
            snprintf(r->corr_short, sizeof r->corr_short, "%s", qs_corr_name(cr->method));
        size_t cl = (size_t)snprintf(r->corr_long, sizeof r->corr_long, "%s", r->corr_short);
        if (pr)
            cl +=
                (size_t)snprintf(r->corr_long + cl, sizeof r->corr_long - cl, " prec=%s", cr->prec);
        snprintf(r->corr_long + cl, sizeof r->corr_long - cl, " +%.3f b/w", r->corr_bpw);
    }
    if (cr->method != QS_CORR_NONE && cr->ablated.verdict) {
        r->abl_verdict = cr->ablated.verdict;
        r->abl_ppl = lm;
        for (int k = 0; k < 4; k++)
            r->abl_metric[k] = r->abl_ppl ? exp(cr->ablated.loss[k]) : cr->ablated.acc[k];
    }
    if (cr->stale) {
        size_t cl = strlen(r->corr_long);
        snprintf(r->corr_long + cl, sizeof r->corr_long - cl, " (stale: refit)");
    }
}

void qs_layer_row_fill(const struct qs_bench *b, int i, struct qs_layer_row *r)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    row_of(&b->ls[i], u.name, u.out, u.in, b->model ? qs_act_name(b->model->layers[i].act) : "-",
           b->lm != NULL, r);
}

void qs_layer_row_plain(const char *name, int out, int in, struct qs_layer_row *r)
{
    struct qs_layer_state s;
    qs_layer_state_plain(&s);
    row_of(&s, name, out, in, "-", 1, r);
}
