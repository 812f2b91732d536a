/* cmd_qat.c - `qat`: quantization-aware fine-tuning of an MLP or a transformer. */

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/qat.h"
#include "qscope/sensitivity.h"

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

const struct qs_cmd_def qs_cmds_qat[] = {
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
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
