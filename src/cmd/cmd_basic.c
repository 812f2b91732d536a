/* cmd_basic.c - commands for loading, inspecting, configuring, quantizing and evaluating. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd_gguf.h"
#include "cmd_lm.h"
#include "qscope/cmd.h"
#include "qscope/ggml.h"
#include "qscope/layer_row.h"
#include "qscope/lm_gguf.h"
#include "qscope/lm_train.h"
#include "qscope/lmbench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"
#include "qscope/packfile.h"
#include "qscope/safetensors.h"
#include "qscope/sha256.h"
#include "qscope/tokens.h"

void qs_add_gate(struct qs_ctx *c, cJSON *obj, struct qs_sb *text)
{
    if (c->b->lm) {
        qs_cmd_lm_gate(c, obj, text);
        return;
    }
    struct qs_eval ev;
    qs_err e;
    if (qs_bench_eval(c->b, &ev, &e) < 0)
        return;
    cJSON *g = cJSON_CreateObject();
    qs_json_num(g, "float_acc", ev.f.acc);
    qs_json_num(g, "threshold", ev.chance + c->b->gate_min * (1 - ev.chance));
    cJSON_AddItemToObject(obj, "task", g);
    cJSON_AddStringToObject(obj, "gate", ev.gate_pass ? "pass" : "fail");
    cJSON_AddStringToObject(obj, "regime", qs_regime_name(qs_bench_effective_regime(c->b)));
    if (text) {
        char fig[64];
        snprintf(fig, sizeof fig, "float test acc %.4f", ev.f.acc);
        qs_gate_footer(text, qs_regime_name(qs_bench_effective_regime(c->b)), ev.gate_pass, fig);
    }
}

void qs_gate_footer(struct qs_sb *text, const char *regime, int pass, const char *figure)
{
    if (pass)
        qs_sb_printf(text, "[%s; gate pass]", regime);
    else
        qs_sb_printf(text,
                     "[%s; %s; gate FAIL: model did not clearly learn the task, results flagged]",
                     regime, figure);
}

/* ---- load ---------------------------------------------------------------------------- */

/* A relative path that does not name a file here may name a bundled one (datasets/...,
 * sessions/...) wherever qscope is installed: qs_bundle_path resolves it, the working directory
 * first. The journal keeps the path as typed, so that a session replays the same way. */
const char *qs_cmd_input_path(const char *path, char *buf, size_t n)
{
    qs_err e;
    if (path[0] == '/' || qs_bundle_path(path, buf, n, &e) < 0)
        return path;
    return buf;
}

static int cmd_load_model(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    enum qs_act act = QS_ACT_RELU;
    const char *av = qs_arg(c, "act"); /* one of the spec's names */
    int act_given = av != NULL;
    (void)argc; /* PATH and act= (the spec) */
    if (av && qs_act_parse(av, &act, e) < 0)
        return -1;
    char rb[4096];
    const char *path = qs_cmd_input_path(argv[0], rb, sizeof rb);
    size_t plen = strlen(path);
    int gguf = plen > 5 && !strcmp(path + plen - 5, ".gguf"); /* llama.cpp: qs_lm_load reads it */
    /* a Hugging Face folder (config.json + model.safetensors) or a llama.cpp file */
    if (gguf || qs_cmd_is_lm_path(path)) {
        if (act_given)
            return qs_errf(e, "load model: act= applies to MLP state dicts, not to %s", argv[0]);
        return qs_cmd_lm_load_model(c, argv[0], path, e);
    }
    struct qs_mlp *m;
    if (qs_mlp_load(path, act, act_given, &m, e) < 0)
        return -1;
    /* the new model is set up in a stage with the CSV data (token data belongs to transformers
     * and goes): if its split metadata or a rule fails on it, the old model stays */
    int keep = c->b->data ? QS_KEEP_DATA : 0;
    struct qs_bench *st = qs_bench_stage(c->b, keep);
    if (!st) {
        qs_mlp_free(m);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_model(st, m, path, e) < 0) {
        qs_bench_abort(c->b, st, keep);
        return -1;
    }
    qs_bench_commit(c->b, st);
    char q[600];
    snprintf(c->canon, sizeof c->canon, "load model %s%s%s", qs_quote(argv[0], q, sizeof q),
             act_given ? " act=" : "", act_given ? qs_act_name(act) : "");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "load model");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "layers", m->nlayers);
    cJSON_AddNumberToObject(o, "params", (double)qs_mlp_nparams(m));
    struct qs_sb t = {0};
    qs_sb_printf(&t, "model %s: %d layers, %ld parameters%s", argv[0], m->nlayers,
                 qs_mlp_nparams(m), m->from_sequential ? " (nn.Sequential state dict)" : "");
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_load_data(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    const char *label = qs_arg(c, "label"), *dtype = qs_arg(c, "dtype");
    (void)argc; /* PATH, label= and dtype= (the spec) */
    int width = QS_TOK_AUTO;
    if (dtype && !strcmp(dtype, "uint16"))
        width = QS_TOK_U16;
    else if (dtype && !strcmp(dtype, "uint32"))
        width = QS_TOK_U32;
    else if (dtype)
        return qs_errf(e, "load data: dtype=%s (expected uint16 or uint32)", dtype);
    char rb[4096];
    const char *path = qs_cmd_input_path(argv[0], rb, sizeof rb);
    if (c->b->lm) { /* token data: .txt (tokenizer.json or bytes), nanoGPT or llm.c .bin */
        if (label)
            return qs_errf(e, "load data: label= applies to CSV data, not to token files");
        return qs_cmd_lm_load_data(c, argv[0], path, width, e);
    }
    if (dtype)
        return qs_errf(e, "load data: dtype= applies to token files (load a transformer first)");
    struct qs_dataset *d;
    if (qs_dataset_load_csv(path, label, &d, e) < 0)
        return -1;
    /* the new data is split in a stage holding the model: a failure keeps the old data */
    struct qs_bench *st = qs_bench_stage(c->b, QS_KEEP_MODEL);
    if (!st) {
        qs_dataset_free(d);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_data(st, d, path, e) < 0) {
        qs_bench_abort(c->b, st, QS_KEEP_MODEL);
        return -1;
    }
    qs_bench_commit(c->b, st);
    char q[600], ql[300];
    snprintf(c->canon, sizeof c->canon, "load data %s%s%s", qs_quote(argv[0], q, sizeof q),
             label ? " label=" : "", label ? qs_quote(label, ql, sizeof ql) : "");
    const struct qs_split *s = &c->b->split;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "load data");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "n", d->n);
    cJSON_AddNumberToObject(o, "features", d->d);
    cJSON_AddNumberToObject(o, "classes", d->nclass);
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "data %s: %d samples, %d features, %d classes; split seed %llu: "
                 "%d train / %d calib / %d test",
                 argv[0], d->n, d->d, d->nclass, (unsigned long long)c->b->split_seed, s->n_train,
                 s->n_calib, s->n_test);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- info and layers ------------------------------------------------------------------ */

static cJSON *split_json(const struct qs_bench *b)
{
    cJSON *s = cJSON_CreateObject();
    cJSON_AddNumberToObject(s, "seed", (double)b->split_seed);
    cJSON_AddNumberToObject(s, "train", b->split.n_train);
    cJSON_AddNumberToObject(s, "calib", b->calib_n > 0 ? b->calib_n : b->split.n_calib);
    cJSON_AddNumberToObject(s, "test", b->split.n_test);
    return s;
}

/* A budget in MiB as info states them: "512 MB", or with decimals when not a whole MiB. */
static const char *mb_text(size_t v, char *buf, size_t n)
{
    if (v % 1048576 == 0)
        snprintf(buf, n, "%zu MB", v / 1048576);
    else
        snprintf(buf, n, "%.4g MB", v / 1048576.0);
    return buf;
}

static int cmd_info(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)e;
    (void)argv;
    (void)argc; /* none (the spec's arity) */
    struct qs_bench *b = c->b;
    cJSON *o = cJSON_CreateObject();
    struct qs_sb t = {0};
    cJSON_AddStringToObject(o, "cmd", "info");
    cJSON_AddStringToObject(o, "version", QS_VERSION);
    if (b->lm) {
        qs_cmd_lm_info(c, o, &t);
        /* set heldout: the held-out windows the runs take (0: all; the split line says it) */
        cJSON_AddNumberToObject(o, "heldout_windows", b->test_windows);
    } else if (b->model) {
        cJSON_AddStringToObject(o, "model", b->model_path ? b->model_path : "");
        cJSON_AddStringToObject(o, "arch", "mlp");
        cJSON_AddNumberToObject(o, "layers", b->model->nlayers);
        cJSON_AddNumberToObject(o, "params", (double)qs_mlp_nparams(b->model));
        qs_json_num(o, "bits_per_weight", qs_bench_bits_per_weight(b));
        qs_sb_printf(&t, "model   %s (mlp, %d layers, %ld parameters, %.3f bits/weight)\n",
                     b->model_path ? b->model_path : "(trained here)", b->model->nlayers,
                     qs_mlp_nparams(b->model), qs_bench_bits_per_weight(b));
        cJSON *meta = cJSON_CreateObject();
        for (int i = 0; i < b->model->nmeta; i++) {
            /* from the file: control characters (terminal escapes) never reach the terminal;
             * JSON escapes them itself */
            char kb[160], vb[1024];
            cJSON_AddStringToObject(meta, b->model->meta_key[i], b->model->meta_val[i]);
            qs_sb_printf(&t, "  %s = %s\n", qs_clean_str(b->model->meta_key[i], kb, sizeof kb, 0),
                         qs_clean_str(b->model->meta_val[i], vb, sizeof vb, 0));
        }
        cJSON_AddItemToObject(o, "metadata", meta);
    } else {
        qs_sb_printf(&t, "model   (none)\n");
    }
    if (b->data && !b->lm) {
        cJSON_AddStringToObject(o, "data", b->data_path ? b->data_path : "");
        cJSON_AddNumberToObject(o, "n", b->data->n);
        cJSON_AddNumberToObject(o, "features", b->data->d);
        cJSON_AddNumberToObject(o, "classes", b->data->nclass);
        cJSON_AddItemToObject(o, "split", split_json(b));
        qs_sb_printf(&t, "data    %s (%d samples, %d features, %d classes)\n", b->data_path,
                     b->data->n, b->data->d, b->data->nclass);
        char st[320];
        qs_bench_split_text(b, st, sizeof st);
        qs_sb_printf(&t, "split   %s\n", st);
    } else if (!b->lm) {
        qs_sb_printf(&t, "data    (none)\n");
    }
    cJSON_AddStringToObject(o, "regime", qs_regime_name(qs_bench_effective_regime(b)));
    cJSON_AddNumberToObject(o, "seed", (double)b->seed);
    if (b->lm)
        qs_sb_printf(
            &t, "regime  %s; seed %llu; gate: float loss a share %.2f below the unigram entropy",
            qs_regime_name(qs_bench_effective_regime(b)), (unsigned long long)b->seed, b->gate_lm);
    else
        qs_sb_printf(&t, "regime  %s; seed %llu; gate %.2f of the headroom over chance",
                     qs_regime_name(qs_bench_effective_regime(b)), (unsigned long long)b->seed,
                     b->gate_min);
    /* what the analyses hold now: activation caches, a site's rows, statistics */
    size_t held = qs_bench_held_bytes(b);
    cJSON_AddNumberToObject(o, "analysis_bytes", (double)held);
    cJSON_AddNumberToObject(o, "activation_budget_bytes", (double)b->act_budget);
    char ab[32], wb[32];
    qs_sb_printf(&t, "\nmemory  the analyses hold %.1f MB (budgets: activations %s, weights %s)",
                 held / 1048576.0, mb_text(b->act_budget, ab, sizeof ab),
                 mb_text(b->wq_budget, wb, sizeof wb));
    /* of which the block-entry residuals of both paths (transformers): error's of the
     * calibration windows, eval's of the held-out ones */
    size_t res = qs_resid_cache_bytes(b->resc[0]) + qs_resid_cache_bytes(b->resc[1]);
    cJSON_AddNumberToObject(o, "residual_bytes", (double)res);
    if (res > 0) {
        qs_sb_printf(&t, "; of it block-entry residuals %.1f MB (", res / 1048576.0);
        for (int s = 0, k = 0; s < 2; s++) {
            const struct qs_resid_cache *c = b->resc[s];
            if (!c)
                continue;
            char every[32] = "every block";
            if (c->stride > 1)
                snprintf(every, sizeof every, "every %d blocks", c->stride);
            qs_sb_printf(&t, "%s%s: %s, %d window%s", k++ ? "; " : "",
                         s == QS_CALIB ? "calibration" : "held-out", every, c->nw,
                         c->nw == 1 ? "" : "s");
        }
        qs_sb_printf(&t, ")");
    }
    /* of which the sites' input moments (X^T X in double), cached between analyses */
    size_t mom = qs_moments_cache_bytes(b->momc);
    cJSON_AddNumberToObject(o, "moments_bytes", (double)mom);
    cJSON_AddNumberToObject(o, "moments_budget_bytes",
                            (double)(b->momc ? b->momc->budget : QS_MOMENTS_BUDGET));
    if (mom > 0)
        qs_sb_printf(&t, "; of it input moments %.1f MB of %d site%s (cache budget %.0f MB)",
                     mom / 1048576.0, b->momc->n + (b->momc->tmp.xtx != NULL),
                     b->momc->n + (b->momc->tmp.xtx != NULL) == 1 ? "" : "s",
                     b->momc->budget / 1048576.0);
    /* the quantized weights: their codes, and the decoded copies the weights cache holds */
    struct qs_wcache_info wi;
    qs_bench_wcache_info(b, &wi);
    cJSON_AddNumberToObject(o, "weights_packed_bytes", (double)wi.packed_bytes);
    cJSON_AddNumberToObject(o, "weights_cache_bytes", (double)wi.bytes);
    cJSON_AddNumberToObject(o, "weights_cache_budget_bytes", (double)wi.budget);
    if (wi.nquant > 0)
        qs_sb_printf(&t,
                     "\nweights %d quantized site%s: codes %.1f MB, decoded on use; the "
                     "cache holds %.1f MB of %d site%s (budget %s)",
                     wi.nquant, wi.nquant == 1 ? "" : "s", wi.packed_bytes / 1048576.0,
                     wi.bytes / 1048576.0, wi.nsites, wi.nsites == 1 ? "" : "s",
                     mb_text(wi.budget, wb, sizeof wb));
    /* a 16-bit transformer's float weights: the file's bytes, widened on use */
    struct qs_lm_wf_info fi = {0};
    if (b->lm)
        qs_lm_wf_info(b->lm, &fi);
    cJSON_AddNumberToObject(o, "float_weights_f32_bytes", (double)fi.f32_bytes);
    cJSON_AddNumberToObject(o, "float_weights_16bit_bytes", (double)fi.lazy_bytes);
    cJSON_AddNumberToObject(o, "float_weights_cache_bytes", (double)fi.cached_bytes);
    if (fi.nlazy > 0)
        qs_sb_printf(&t,
                     "\nfloat   %d site%s kept as the file's 16-bit weights (%.1f MB, widened on "
                     "use); the cache holds %.1f MB of %d site%s (budget %s)",
                     fi.nlazy, fi.nlazy == 1 ? "" : "s", fi.lazy_bytes / 1048576.0,
                     fi.cached_bytes / 1048576.0, fi.ncached, fi.ncached == 1 ? "" : "s",
                     mb_text(b->lm->wf_budget, wb, sizeof wb));
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_layers(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)e;
    (void)argv;
    (void)argc; /* none (the spec's arity) */
    struct qs_bench *b = c->b;
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    struct qs_sb t = {0};
    cJSON_AddStringToObject(o, "cmd", "layers");
    /* the name column fits the longest name (sites are long), the format columns their longest
     * cell ("int4/channel+gptq+rot": a method adds to the format), 16 at least */
    int nw = 10, ww = 16, aw = 16, ncorr = 0;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_unit u;
        char d[48];
        qs_bench_unit(b, i, &u);
        if ((int)strlen(u.name) > nw)
            nw = (int)strlen(u.name);
        qs_bench_wdesc(&b->ls[i], d, sizeof d);
        ww = (int)strlen(d) > ww ? (int)strlen(d) : ww;
        qs_bench_adesc(&b->ls[i], d, sizeof d);
        aw = (int)strlen(d) > aw ? (int)strlen(d) : aw;
    }
    qs_sb_printf(&t, "%-*s %-12s %-8s %-*s %-*s %8s %9s %10s %s\n", nw, "layer", "shape", "act", ww,
                 "weights", aw, "activations", "bits/w", "w_rel_err", "sensitivity", "correction");
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_layer_row l; /* the same row the TUI's Layers pane draws */
        qs_layer_row_fill(b, i, &l);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "name", l.name);
        cJSON_AddNumberToObject(r, "out", l.out);
        cJSON_AddNumberToObject(r, "in", l.in);
        cJSON_AddStringToObject(r, "act", l.act);
        cJSON_AddStringToObject(r, "weights", l.wf);
        cJSON_AddStringToObject(r, "activations", l.af);
        if (l.a_static_amax > 0)
            qs_json_num(r, "activation_static_amax", l.a_static_amax); /* once calibrated */
        qs_json_num(r, "bits_per_weight", l.bpw);
        cJSON_AddNumberToObject(r, "bytes", l.bytes);
        qs_json_num(r, "w_rel_err", l.w_rel_err);
        if (l.sens_known) {
            qs_json_num(r, "sensitivity", l.sens);
            cJSON_AddStringToObject(r, "sensitivity_method", l.sens_method);
        }
        cJSON_AddStringToObject(r, "correction", qs_corr_name(l.corr_method));
        if (l.corr_method != QS_CORR_NONE) {
            qs_json_num(r, "correction_bits_per_weight", l.corr_bpw);
            if (l.corr_prec[0])
                cJSON_AddStringToObject(r, "correction_prec", l.corr_prec);
            ncorr++;
        }
        cJSON_AddItemToArray(rows, r);
        if (l.corr_stale)
            cJSON_AddTrueToObject(r, "correction_stale");
        char sens[32] = "-";
        if (l.sens_known)
            snprintf(sens, sizeof sens, "%.4g", l.sens);
        qs_sb_printf(&t, "%-*s %-12s %-8s %-*s %-*s %8.3f %9.5f %10s %s\n", nw, l.name, l.shape,
                     l.act, ww, l.wf, aw, l.af, l.bpw, l.w_rel_err, sens, l.corr_long);
    }
    qs_sb_printf(&t, "model: %.3f bits/weight (packed codes + scales%s; biases in float)",
                 qs_bench_bits_per_weight(b), ncorr ? ", corrections included" : "");
    qs_json_num(o, "bits_per_weight", qs_bench_bits_per_weight(b));
    qs_set_last_table(c, "layers", rows, NULL);
    cJSON_AddItemToObject(o, "layers", rows);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- eval ---------------------------------------------------------------------------- */

static int cmd_eval(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argv;
    (void)argc; /* none (the spec's arity) */
    if (c->b->lm)
        return qs_cmd_lm_eval(c, e);
    struct qs_eval ev;
    if (qs_bench_eval(c->b, &ev, e) < 0)
        return -1;
    struct qs_bench *b = c->b;
    enum qs_regime rg = qs_bench_effective_regime(b);
    double thr = ev.chance + b->gate_min * (1 - ev.chance);
    cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject(), *q = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "eval");
    cJSON_AddStringToObject(o, "regime", qs_regime_name(rg));
    cJSON_AddItemToObject(o, "split", split_json(b));
    qs_json_num(f, "acc", ev.f.acc);
    qs_json_num(f, "loss", ev.f.loss);
    qs_json_num(q, "acc", ev.q.acc);
    qs_json_num(q, "loss", ev.q.loss);
    cJSON_AddItemToObject(o, "float", f);
    cJSON_AddItemToObject(o, "quant", q);
    qs_json_num(o, "kl", ev.kl);
    qs_json_num(o, "top1_agree", ev.agree);
    qs_json_num(o, "bits_per_weight", ev.bits_w);
    cJSON_AddStringToObject(o, "gate", ev.gate_pass ? "pass" : "fail");
    qs_json_num(o, "gate_threshold", thr);
    qs_cmd_json_static_amax(o, b);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "regime %s, %.3f bits/weight; test split %d samples (seed %llu)\n",
                 qs_regime_name(rg), ev.bits_w, ev.f.n, (unsigned long long)b->split_seed);
    qs_sb_printf(&t, "          %8s %8s\n", "acc", "loss");
    qs_sb_printf(&t, "float     %8.4f %8.4f\n", ev.f.acc, ev.f.loss);
    qs_sb_printf(&t, "quant     %8.4f %8.4f   (delta acc %+.4f)\n", ev.q.acc, ev.q.loss,
                 ev.q.acc - ev.f.acc);
    qs_sb_printf(&t, "KL(float||quant) %.6g, top-1 agreement %.4f\n", ev.kl, ev.agree);
    qs_sb_printf(&t, "gate %s: float acc %.4f %s %.4f (chance %.4f + %.2f of the headroom)",
                 ev.gate_pass ? "pass" : "FAIL", ev.f.acc, ev.gate_pass ? ">=" : "<", thr,
                 ev.chance, b->gate_min);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- train --------------------------------------------------------------------------- */

struct train_cb_ctx {
    struct qs_ctx *c;
    int epochs;
};

static int train_cb(void *u, int epoch, double loss, double acc)
{
    struct train_cb_ctx *t = u;
    if (t->c->b->progress) {
        char what[96];
        snprintf(what, sizeof what, "train epoch %d/%d loss %.4f acc %.4f", epoch, t->epochs, loss,
                 acc);
        t->c->b->progress(t->c->b->progress_ctx, what, (double)epoch / t->epochs);
    }
    if (epoch == t->epochs || epoch % 10 == 0)
        qs_note(t->c, "epoch %d/%d: train loss %.4f, train acc %.4f", epoch, t->epochs, loss, acc);
    return t->c->b->cancel;
}

/* train on a transformer (the loaded model's shape and config): lm_train.c on the token data's
 * split, written to out=DIR (required) with provenance, then loaded as the current model. */
static int lm_train_cb(void *u, int step, int steps, double loss, double lr, double val)
{
    struct qs_ctx *c = u;
    if (c->b->progress) {
        char what[96];
        snprintf(what, sizeof what, "train step %d/%d loss %.4f", step, steps, loss);
        c->b->progress(c->b->progress_ctx, what, (double)step / steps);
    }
    if (!isnan(val))
        qs_note(c, "step %d/%d: train loss %.4f, lr %.3g, validation loss %.4f", step, steps, loss,
                lr, val);
    else if (step == steps || step % 100 == 0)
        qs_note(c, "step %d/%d: train loss %.4f, lr %.3g", step, steps, loss, lr);
    return c->b->cancel;
}

/* Refuses the first of keys given: options the spec of a command shares between its MLP and its
 * transformer branch that the running branch does not take (tail says which it does). */
static int refuse_options(const struct qs_ctx *c, const char *const *keys, size_t n,
                          const char *tail, qs_err *e)
{
    for (size_t k = 0; k < n; k++)
        if (qs_arg(c, keys[k]))
            return qs_errf(e, "%s: unknown option '%s=%s' %s", c->cur_cmd->name, keys[k],
                           qs_arg(c, keys[k]), tail);
    return 0;
}

static int cmd_train_lm(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    struct qs_lm_train_opts o;
    qs_lm_train_defaults(&o);
    o.seed = b->seed;
    o.ctx = b->lm->ctx;
    (void)argc; /* options only, checked by the spec; read with qs_arg */
    (void)argv;
    static const char *const mlp_only[] = {"hidden", "epochs", "act"};
    if (refuse_options(c, mlp_only, sizeof mlp_only / sizeof *mlp_only,
                       "for a transformer (steps= batch= ctx= lr= min_lr= warmup= wd= clip= "
                       "eval= seed= init=scratch|model out=DIR)",
                       e) < 0)
        return -1;
    struct {
        const char *k;
        int *iv;
        long lo, hi;
    } iopt[] = {{"steps", &o.steps, 1, 10000000},
                {"batch", &o.batch, 1, 65536},
                {"ctx", &o.ctx, 1, b->lm->ctx},
                {"warmup", &o.warmup, 0, 10000000},
                {"eval", &o.eval_every, 0, 10000000}};
    long lv;
    for (size_t k = 0; k < sizeof iopt / sizeof iopt[0]; k++) {
        int got = qs_arg_int_in(c, iopt[k].k, iopt[k].lo, iopt[k].hi, &lv, e);
        if (got < 0)
            return -1;
        if (got)
            *iopt[k].iv = (int)lv;
    }
    int warm_set = qs_arg(c, "warmup") != NULL, min_set = qs_arg(c, "min_lr") != NULL;
    o.lr = qs_arg_float(c, "lr", o.lr);
    o.min_lr = qs_arg_float(c, "min_lr", o.min_lr);
    o.wd = qs_arg_float(c, "wd", o.wd);
    o.clip = qs_arg_float(c, "clip", o.clip);
    if (qs_arg_int_in(c, "seed", 0, 0x7fffffff, &lv, e) < 0)
        return -1;
    o.seed = qs_arg(c, "seed") ? (uint64_t)lv : o.seed;
    if (qs_arg(c, "init")) /* scratch or model (the spec's enum) */
        o.init = !strcmp(qs_arg(c, "init"), "scratch");
    const char *out = qs_arg(c, "out");
    if (!out)
        return qs_errf(e, "train: a transformer is written to a folder: give out=DIR");
    if (!min_set)
        o.min_lr = o.lr / 10;
    if (!warm_set && o.warmup > o.steps / 10)
        o.warmup = o.steps / 10;
    if (qs_bench_lm_ready(b, e) < 0)
        return -1;
    int made = mkdir(out, 0777) == 0; /* an unwritable out= fails now, not after the training */
    if (!made && errno != EEXIST)
        return qs_errf(e, "train out=%s: cannot create the folder: %s", out, strerror(errno));
    char hash[65];
    struct qs_lm *m; /* a fresh copy: the bench's model stays as it is until the end */
    if (qs_sha256_file(b->tokens->path, hash, e) < 0 || qs_lm_load(b->lm->path, &m, e) < 0) {
        if (made)
            rmdir(out);
        return -1;
    }
    size_t off;
    int cw;
    qs_bench_lm_split(b, &off, &cw);
    const uint32_t *tok = b->tokens->ids;
    size_t n = b->tokens->n;
    struct qs_lm_train_result r;
    b->cancel = 0;
    if (qs_lm_train(m, tok, off, tok + off, n - off, &o, lm_train_cb, c, &r, e) < 0) {
        qs_lm_free(m);
        if (made)
            rmdir(out); /* only if still empty */
        return -1;
    }
    char canon[512], q[600], v[6][64];
    snprintf(canon, sizeof canon,
             "steps=%d batch=%d ctx=%d lr=%.9g min_lr=%.9g warmup=%d wd=%.9g clip=%.9g eval=%d "
             "seed=%llu init=%s",
             o.steps, o.batch, o.ctx, o.lr, o.min_lr, o.warmup, o.wd, o.clip, o.eval_every,
             (unsigned long long)o.seed, o.init ? "scratch" : "model");
    snprintf(v[0], sizeof v[0], "%d", r.steps);
    snprintf(v[1], sizeof v[1], "%ld", r.tokens);
    snprintf(v[2], sizeof v[2], "%.6f", r.val_loss);
    snprintf(v[3], sizeof v[3], "%.6f", exp(r.val_loss));
    snprintf(v[4], sizeof v[4], "%ld", r.val_tokens);
    char split[160], cmdline[600];
    snprintf(split, sizeof split, "train tokens [0, %zu), validation tokens [%zu, %zu)", off, off,
             n);
    snprintf(cmdline, sizeof cmdline, "qscope %s train %s (AdamW betas 0.9/0.95, cosine)",
             QS_VERSION, canon);
    const char *keys[] = {"qscope.train",    "qscope.data",    "qscope.data_sha256",
                          "qscope.split",    "qscope.steps",   "qscope.train_tokens",
                          "qscope.val_loss", "qscope.val_ppl", "qscope.val_tokens"};
    const char *vals[] = {cmdline, b->tokens->path, hash, split, v[0], v[1], v[2], v[3], v[4]};
    int rc = qs_lm_save(m, out, NULL, NULL, keys, vals, 9, e);
    qs_lm_free(m);
    if (rc < 0 || qs_lm_load(out, &m, e) < 0)
        return -1;
    struct qs_bench *st = qs_bench_stage(b, QS_KEEP_TOKENS);
    if (!st) {
        qs_lm_free(m);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_lm(st, m, out, e) < 0) {
        qs_bench_abort(b, st, QS_KEEP_TOKENS);
        return -1;
    }
    qs_bench_commit(b, st);
    snprintf(c->canon, sizeof c->canon, "train %s out=%s", canon, qs_quote(out, q, sizeof q));
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "cmd", "train");
    cJSON_AddNumberToObject(j, "steps", r.steps);
    cJSON_AddNumberToObject(j, "tokens", (double)r.tokens);
    qs_json_num(j, "val_loss_before", r.val_loss0);
    qs_json_num(j, "val_loss", r.val_loss);
    qs_json_num(j, "train_loss", r.train_loss);
    cJSON_AddStringToObject(j, "out", out);
    cJSON_AddStringToObject(j, "data_sha256", hash);
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "trained %d steps (%ld tokens): validation loss %.4f -> %.4f (ppl %.3f), "
                 "train loss %.4f; wrote %s\n",
                 r.steps, r.tokens, r.val_loss0, r.val_loss, exp(r.val_loss), r.train_loss, out);
    qs_cmd_lm_gate(c, j, &t);
    qs_emit(c, j, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_train(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    if (b->lm)
        return cmd_train_lm(c, argc, argv, e);
    if (!b->data)
        return qs_errf(e, "train: no data loaded (load data PATH)");
    struct qs_train_opts o = {
        .epochs = 100, .batch = 64, .lr = 1e-3, .weight_decay = 0.0, .seed = b->seed};
    enum qs_act act = QS_ACT_RELU;
    int sizes[34], ns = 0;
    static const char *const lm_only[] = {"steps", "ctx",  "min_lr", "warmup",
                                          "clip",  "eval", "init"};
    if (refuse_options(c, lm_only, sizeof lm_only / sizeof *lm_only,
                       "(hidden= epochs= batch= lr= wd= act= seed= out=)", e) < 0)
        return -1;
    long lv;
    if (qs_arg_int_in(c, "epochs", 1, 100000, &lv, e) < 0)
        return -1;
    o.epochs = qs_arg(c, "epochs") ? (int)lv : o.epochs;
    if (qs_arg_int_in(c, "batch", 1, 1 << 20, &lv, e) < 0)
        return -1;
    o.batch = qs_arg(c, "batch") ? (int)lv : o.batch;
    if (qs_arg_int_in(c, "seed", 0, 0x7fffffff, &lv, e) < 0)
        return -1;
    o.seed = qs_arg(c, "seed") ? (uint64_t)lv : o.seed;
    o.lr = qs_arg_float(c, "lr", o.lr);
    o.weight_decay = qs_arg_float(c, "wd", o.weight_decay);
    if (qs_arg(c, "act") && qs_act_parse(qs_arg(c, "act"), &act, e) < 0)
        return -1;
    const char *out = qs_arg(c, "out");
    const char *hidden = qs_arg(c, "hidden"); /* integers (the spec's list) */
    if (!hidden)
        hidden = "64,64";
    sizes[ns++] = b->data->d;
    for (const char *p = hidden; *p; p += *p == ',') {
        char *end;
        if (ns >= 32)
            return qs_errf(e, "train: too many hidden layers");
        long h = strtol(p, &end, 10);
        if (h < 1 || h > 1 << 16)
            return qs_errf(e, "train hidden: %ld is out of range (1..%d)", h, 1 << 16);
        sizes[ns++] = (int)h;
        p = end;
    }
    sizes[ns++] = b->data->nclass;
    if (out) { /* an unwritable out= fails now, not after the training */
        qs_outfile of;
        if (qs_out_open(&of, out, e) < 0)
            return qs_err_prefix(e, "train out=");
        qs_out_abort(&of);
    }
    qs_rng rng;
    qs_rng_seed(&rng, o.seed ^ 0x5eedULL);
    struct qs_mlp *m;
    if (qs_mlp_new(sizes, ns, act, &rng, &m, e) < 0)
        return -1;
    int n = b->split.n_train, d = b->data->d;
    float *x = malloc((size_t)n * d * sizeof(float));
    int *y = malloc((size_t)n * sizeof(int));
    if (!x || !y) {
        free(x);
        free(y);
        qs_mlp_free(m);
        return qs_errf(e, "out of memory");
    }
    qs_dataset_gather(b->data, b->split.train, n, x, y);
    struct train_cb_ctx tc = {c, o.epochs};
    b->cancel = 0;
    int rc = qs_mlp_train(m, x, y, n, &o, train_cb, &tc, e);
    free(x);
    free(y);
    if (rc < 0) {
        qs_mlp_free(m);
        return -1;
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)b->split_seed);
    qs_mlp_set_meta(m, "qscope.split_seed", buf);
    snprintf(buf, sizeof buf, "%.6g", b->f_train);
    qs_mlp_set_meta(m, "qscope.split_train", buf);
    snprintf(buf, sizeof buf, "%.6g", b->f_calib);
    qs_mlp_set_meta(m, "qscope.split_calib", buf);
    qs_mlp_set_meta(m, "qscope.data", b->data_path ? b->data_path : "");
    char canon_opts[512];
    snprintf(canon_opts, sizeof canon_opts,
             "hidden=%s epochs=%d batch=%d lr=%.9g wd=%.9g act=%s seed=%llu", hidden, o.epochs,
             o.batch, o.lr, o.weight_decay, qs_act_name(act), (unsigned long long)o.seed);
    qs_mlp_set_meta(m, "qscope.train", canon_opts);
    /* The trained model replaces the current one only when it is evaluated and written: it is
     * set up in a stage holding the data, and a failure (a rule that fails on it, the write)
     * leaves the old model, its rules and corrections as they were. */
    struct qs_bench *st = qs_bench_stage(b, QS_KEEP_DATA);
    if (!st) {
        qs_mlp_free(m);
        return qs_errf(e, "out of memory");
    }
    struct qs_eval ev;
    if (qs_bench_set_model(st, m, out, e) < 0 || qs_bench_eval(st, &ev, e) < 0) {
        qs_bench_abort(b, st, QS_KEEP_DATA);
        return -1;
    }
    snprintf(buf, sizeof buf, "%.9g", ev.f.acc);
    qs_mlp_set_meta(m, "qscope.test_acc", buf);
    snprintf(buf, sizeof buf, "%.9g", ev.f.loss);
    qs_mlp_set_meta(m, "qscope.test_loss", buf);
    if (out && qs_mlp_save(m, out, e) < 0) {
        qs_bench_abort(b, st, QS_KEEP_DATA);
        return -1;
    }
    qs_bench_commit(b, st);
    char q[600];
    snprintf(c->canon, sizeof c->canon, "train %s%s%s", canon_opts, out ? " out=" : "",
             out ? qs_quote(out, q, sizeof q) : "");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "cmd", "train");
    qs_json_num(r, "test_acc", ev.f.acc);
    qs_json_num(r, "test_loss", ev.f.loss);
    cJSON_AddStringToObject(r, "gate", ev.gate_pass ? "pass" : "fail");
    struct qs_sb t = {0};
    qs_sb_printf(&t, "trained %s: test acc %.4f, test loss %.4f, gate %s%s%s", hidden, ev.f.acc,
                 ev.f.loss, ev.gate_pass ? "pass" : "FAIL", out ? "; wrote " : "", out ? out : "");
    qs_emit(c, r, t.s);
    qs_sb_free(&t);
    return 0;
}

/* ---- set ----------------------------------------------------------------------------- */

static void emit_set(struct qs_ctx *c, const char *what, double v, const char *text)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "set");
    qs_json_num(o, what, v);
    qs_emit(c, o, text);
}

static int cmd_set_seed(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    long v;
    (void)argc; /* one N (the spec's arity) */
    if (qs_parse_int(argv[0], 0, 0x7fffffff, &v, "set seed", e) < 0)
        return -1;
    c->b->seed = (uint64_t)v;
    snprintf(c->canon, sizeof c->canon, "set seed %ld", v);
    emit_set(c, "seed", (double)v, "");
    return 0;
}

static int cmd_set_calib(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    long v;
    if (argc != 1)
        return qs_errf(e, "set calib: give N or tokens=N (one of them)");
    const char *tv = qs_arg(c, "tokens");
    if (tv) { /* a budget in tokens (transformers): whole windows of the model's context */
        if (qs_parse_int(tv, 1, 1 << 30, &v, "set calib tokens", e) < 0 ||
            qs_bench_set_calib_tokens(c->b, v, e) < 0)
            return -1;
        snprintf(c->canon, sizeof c->canon, "set calib tokens=%ld", v);
        char text[160];
        snprintf(text, sizeof text, "calibration: %d windows of %d tokens (budget %ld tokens)",
                 c->b->calib_n, c->b->lm->ctx, v);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "cmd", "set");
        qs_json_num(o, "calib_tokens", (double)v);
        qs_json_num(o, "calib", (double)c->b->calib_n);
        qs_emit(c, o, text);
        return 0;
    }
    if (qs_parse_int(argv[0], 1, 1 << 30, &v, "set calib", e) < 0 ||
        qs_bench_set_calib(c->b, (int)v, e) < 0)
        return -1;
    snprintf(c->canon, sizeof c->canon, "set calib %ld", v);
    emit_set(c, "calib", (double)v, "");
    return 0;
}

/* A size: bytes, or a whole number of K, M or G (binary: 1024, 1024^2, 1024^3; either case).
 * No sign, no fraction, at most 1 PiB (a larger one is a typo, not a budget). */
static int parse_size(const char *s, const char *what, size_t *out, qs_err *e)
{
    const unsigned long long max = 1ULL << 50;
    unsigned long long v = 0;
    const char *p = s;
    if (!*p || *p < '0' || *p > '9')
        return qs_errf(e, "%s: '%s' is not a size (bytes, or N with K, M or G: 512M)", what, s);
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (max - (unsigned)(*p - '0')) / 10)
            return qs_errf(e, "%s: '%s' is too large (at most 1 PiB)", what, s);
        v = v * 10 + (unsigned)(*p - '0');
    }
    unsigned long long mul = 1;
    if (*p) {
        switch (*p) {
        case 'K':
        case 'k':
            mul = 1ULL << 10;
            break;
        case 'M':
        case 'm':
            mul = 1ULL << 20;
            break;
        case 'G':
        case 'g':
            mul = 1ULL << 30;
            break;
        default:
            mul = 0;
        }
        if (!mul || p[1])
            return qs_errf(e, "%s: '%s': the suffix must be K, M or G (binary), or none for bytes",
                           what, s);
    }
    if (v > max / mul)
        return qs_errf(e, "%s: '%s' is too large (at most 1 PiB)", what, s);
    *out = (size_t)(v * mul);
    return 0;
}

/* A size as set memory reads it back: the largest binary suffix that states it exactly. */
static const char *size_word(size_t v, char *buf, size_t n)
{
    if (v && v % (1ULL << 30) == 0)
        snprintf(buf, n, "%zuG", v >> 30);
    else if (v && v % (1ULL << 20) == 0)
        snprintf(buf, n, "%zuM", v >> 20);
    else if (v && v % (1ULL << 10) == 0)
        snprintf(buf, n, "%zuK", v >> 10);
    else
        snprintf(buf, n, "%zu", v);
    return buf;
}

/* set memory [weights=SIZE] [acts=SIZE]: the two budgets; with neither, what they are now. */
static int cmd_set_memory(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* options only (the spec) */
    (void)argv;
    struct qs_bench *b = c->b;
    const char *wv = qs_arg(c, "weights"), *av = qs_arg(c, "acts");
    size_t w = 0, a = 0;
    if ((wv && parse_size(wv, "set memory weights", &w, e) < 0) ||
        (av && parse_size(av, "set memory acts", &a, e) < 0) ||
        qs_bench_set_memory(b, wv ? &w : NULL, av ? &a : NULL, e) < 0)
        return -1;
    char ws[32], as[32], hs[32];
    if (wv || av) {
        int k = snprintf(c->canon, sizeof c->canon, "set memory");
        if (wv)
            k += snprintf(c->canon + k, sizeof c->canon - (size_t)k, " weights=%s",
                          size_word(w, ws, sizeof ws));
        if (av)
            snprintf(c->canon + k, sizeof c->canon - (size_t)k, " acts=%s",
                     size_word(a, as, sizeof as));
    } else {
        c->no_journal = 1; /* a question, not a setting */
    }
    struct qs_wcache_info wi;
    qs_bench_wcache_info(b, &wi);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "set");
    cJSON_AddNumberToObject(o, "weights_cache_budget_bytes", (double)b->wq_budget);
    cJSON_AddNumberToObject(o, "weights_cache_bytes", (double)wi.bytes);
    cJSON_AddNumberToObject(o, "activation_budget_bytes", (double)b->act_budget);
    char text[320];
    snprintf(text, sizeof text,
             "memory: weights=%s (the decoded weights cache holds %s of %d site%s%s), "
             "acts=%s (captured activations)",
             size_word(b->wq_budget, ws, sizeof ws), size_word(wi.bytes, hs, sizeof hs), wi.nsites,
             wi.nsites == 1 ? "" : "s", b->wq_budget ? "" : "; 0: only the site in use",
             size_word(b->act_budget, as, sizeof as));
    qs_emit(c, o, text);
    return 0;
}

/* set heldout [N | tokens=N | all]: how many held-out windows a transformer's runs take. */
static int cmd_set_ctx(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* read by the spec */
    (void)argv;
    struct qs_bench *b = c->b;
    const char *nv = qs_arg_pos(c, 0);
    if (nv) {
        long v = 0;
        if (strcmp(nv, "model") && qs_parse_int(nv, 1, 1 << 30, &v, "set ctx", e) < 0)
            return -1;
        if (qs_bench_set_ctx(b, (int)v, e) < 0)
            return -1;
        if (v > 0)
            snprintf(c->canon, sizeof c->canon, "set ctx %ld", v);
        else
            snprintf(c->canon, sizeof c->canon, "set ctx model");
    } else {
        c->no_journal = 1; /* a question, not a setting */
        if (!b->lm)
            return qs_errf(e, "set ctx applies to transformers (their windows; load model DIR)");
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "set");
    cJSON_AddNumberToObject(o, "ctx", b->lm->ctx);
    cJSON_AddNumberToObject(o, "n_positions", b->lm->n_pos);
    char text[200];
    int k = snprintf(text, sizeof text, "windows: %d tokens (the model's context: %d)", b->lm->ctx,
                     b->lm->n_pos);
    if (b->calib_tokens > 0) /* the budget in tokens, in windows of the new length */
        snprintf(text + k, sizeof text - (size_t)k, "; calibration: %d windows (budget %d tokens)",
                 b->calib_n, b->calib_tokens);
    qs_emit(c, o, text);
    return 0;
}

static int cmd_set_heldout(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* read by the spec */
    (void)argv;
    struct qs_bench *b = c->b;
    const char *tv = qs_arg(c, "tokens"), *nv = qs_arg_pos(c, 0);
    if (nv && tv)
        return qs_errf(e, "set heldout: give N, tokens=N or all (one of them)");
    if (nv || tv) {
        long v = 0, tok = 0;
        if (tv) {
            if (qs_parse_int(tv, 1, 1L << 40, &tok, "set heldout tokens", e) < 0)
                return -1;
        } else if (strcmp(nv, "all") && qs_parse_int(nv, 1, 1 << 30, &v, "set heldout", e) < 0) {
            return -1;
        }
        if (qs_bench_set_heldout(b, v, tok, e) < 0)
            return -1;
        if (tv)
            snprintf(c->canon, sizeof c->canon, "set heldout tokens=%ld", tok);
        else if (v > 0)
            snprintf(c->canon, sizeof c->canon, "set heldout %ld", v);
        else
            snprintf(c->canon, sizeof c->canon, "set heldout all");
    } else {
        c->no_journal = 1; /* a question, not a setting */
    }
    int hw = qs_bench_heldout_windows(b), tw = b->lm ? b->test_windows : 0;
    int capped = tw > 0 && (hw < 0 || tw < hw), used = capped || hw < 0 ? tw : hw;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "set");
    cJSON_AddNumberToObject(o, "heldout_windows", tw);
    if (b->lm && hw >= 0) {
        cJSON_AddNumberToObject(o, "split_windows", hw);
        cJSON_AddNumberToObject(o, "windows_used", used);
    }
    char text[320];
    if (!b->lm)
        snprintf(text, sizeof text, "held-out: the whole test split (an MLP's is rows: set split)");
    else if (hw < 0 && capped)
        snprintf(text, sizeof text, "held-out runs: the first %d windows of %d (no token data yet)",
                 tw, b->lm->ctx);
    else if (hw < 0)
        snprintf(text, sizeof text, "held-out runs: every window (no token data yet)");
    else if (capped)
        snprintf(text, sizeof text,
                 "held-out runs: the first %d of %d windows of %d (%ld tokens); the gate's float "
                 "loss: all %d",
                 tw, hw, b->lm->ctx, (long)tw * b->lm->ctx, hw);
    else
        snprintf(text, sizeof text,
                 "held-out runs: all %d windows of %d (%ld tokens); the gate's float loss: all %d",
                 hw, b->lm->ctx, (long)hw * b->lm->ctx, hw);
    qs_emit(c, o, text);
    return 0;
}

static int cmd_set_split(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    long lv = (long)b->split_seed;
    (void)argc; /* options only (the spec) */
    (void)argv;
    if (qs_arg_int_in(c, "seed", 0, 0x7fffffff, &lv, e) < 0)
        return -1;
    uint64_t seed = qs_arg(c, "seed") ? (uint64_t)lv : b->split_seed;
    double ft = qs_arg_float(c, "train", b->f_train), fc = qs_arg_float(c, "calib", b->f_calib);
    if (ft < 0 || fc <= 0 || ft + fc >= 1)
        return qs_errf(e, "set split: need train >= 0, calib > 0 and train + calib < 1");
    if (qs_bench_resplit(b, seed, ft, fc, e) < 0)
        return -1;
    snprintf(c->canon, sizeof c->canon, "set split seed=%llu train=%.9g calib=%.9g",
             (unsigned long long)seed, ft, fc);
    emit_set(c, "split_seed", (double)seed, "");
    return 0;
}

/* set gate|lmgate F: a threshold in 0..1 into *dst, reported under key. */
static int set_threshold(struct qs_ctx *c, const char *f, double *dst, const char *key, qs_err *e)
{
    double v;
    if (qs_parse_double(f, &v, c->cur_cmd->name, e) < 0) /* a positional may be inf or nan */
        return -1;
    if (v < 0 || v > 1)
        return qs_errf(e, "%s: %g is outside 0..1", c->cur_cmd->name, v);
    *dst = v;
    snprintf(c->canon, sizeof c->canon, "%s %.9g", c->cur_cmd->name, v);
    emit_set(c, key, v, "");
    return 0;
}

static int cmd_set_gate(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one F (the spec's arity) */
    return set_threshold(c, argv[0], &c->b->gate_min, "gate", e);
}

static int cmd_set_lmgate(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one F (the spec's arity) */
    return set_threshold(c, argv[0], &c->b->gate_lm, "lmgate", e);
}

static int cmd_set_bail(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)e;
    (void)argc; /* on|off (the spec's arity and values) */
    c->bail = !strcmp(argv[0], "on");
    c->no_journal = 1;
    return 0;
}

/* ---- quantization -------------------------------------------------------------------- */

/* Layers quantized with ggml type f whose rows are not a multiple of its block: llama.cpp's
 * fallback type for each, appended to t and as o's "fallback" array. */
static void ggml_fallback_note(struct qs_bench *b, const struct qs_format *f, cJSON *o,
                               struct qs_sb *t)
{
    cJSON *arr = NULL;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        const struct qs_layer_state *s = &b->ls[i];
        if (!s->wquant || s->packed.fmt.kind != QS_FMT_GGML || s->packed.fmt.ggml != f->ggml)
            continue;
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        int eff = qs_ggml_effective_type(f->ggml, u.in);
        if (eff == f->ggml)
            continue;
        if (!arr) {
            arr = cJSON_AddArrayToObject(o, "fallback");
            qs_sb_printf(t, "\nllama.cpp's fallback for rows not a multiple of %d:", f->block);
        }
        const char *en = eff == QS_GGML_F16 ? "f16" : qs_ggml_type_name(eff);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "layer", u.name);
        cJSON_AddStringToObject(j, "stored_as", en);
        cJSON_AddItemToArray(arr, j);
        qs_sb_printf(t, "%s %s (%d) -> %s", cJSON_GetArraySize(arr) > 1 ? "," : "", u.name, u.in,
                     en);
    }
}

static int cmd_quant(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    if (strlen(argv[0]) >= sizeof r.pattern)
        return qs_errf(e, "quant: pattern too long");
    snprintf(r.pattern, sizeof r.pattern, "%s", argv[0]);
    int gguf = !strcmp(argv[1], "gguf"); /* a paired GGUF's own weights (cmd_gguf.c) */
    if (gguf ? qs_cmd_gguf_rule(c, argc, argv, &r, e) < 0 : qs_format_parse(argv[1], &r.fmt, e) < 0)
        return -1;
    if (!gguf) {
        qs_qopts_default(&r.opt);
        r.opt.seed = c->b->seed;
    }
    r.amode = QS_AMODE_DYNAMIC;
    /* on= and amode= hold one of the spec's words: w, a, wa, aw; dynamic, token, static */
    const char *onv = qs_arg(c, "on"), *amv = qs_arg(c, "amode");
    if (onv && !gguf)
        r.roles = !strcmp(onv, "w")   ? QS_ROLE_W
                  : !strcmp(onv, "a") ? QS_ROLE_A
                                      : QS_ROLE_W | QS_ROLE_A;
    if (amv && !gguf)
        r.amode = !strcmp(amv, "token")    ? QS_AMODE_TOKEN
                  : !strcmp(amv, "static") ? QS_AMODE_STATIC
                                           : QS_AMODE_DYNAMIC;
    for (int i = 2; i < argc && !gguf; i++) {
        if (!qs_opt_value(argv[i], "on") && !qs_opt_value(argv[i], "amode")) {
            int mk = qs_rule_method_parse_token(&r.meth, argv[i], e);
            if (mk < 0)
                return -1;
            if (!mk && qs_qopts_parse_token(&r.opt, argv[i], e) < 0)
                return -1;
        }
    }
    if (qs_rule_method_check(&r.meth, &r.fmt, r.roles, e) < 0)
        return -1;
    /* else accepted here and refused by every forward pass (qs_quant_fake_amax) */
    const struct qs_format_traits *rt = qs_format_traits(&r.fmt);
    if (r.amode == QS_AMODE_STATIC && r.fmt.kind != QS_FMT_NONE && !rt->static_amax)
        return qs_errf(e, "quant: amode=static calibrates one absmax per tensor; %s %s", r.fmt.name,
                       rt->unscaled ? "is a plain cast with no scale"
                                    : "computes its scales per block");
    /* a plain cast has no scale to compute per token: amode=token would be ignored silently */
    if (r.amode == QS_AMODE_TOKEN && r.fmt.kind != QS_FMT_NONE && rt->unscaled)
        return qs_errf(e,
                       "quant: amode=token computes one scale per token; %s is a plain cast "
                       "with no scale",
                       r.fmt.name);
    r.meth.seed = c->b->seed; /* the rotation's seed, as the rounding seed above */
    /* Any group size fits any row: a partial last group has its own scale (format.h). */
    struct qs_bench *b = c->b;
    int matched = 0;
    struct qs_rule saved[64];
    int nsaved = b->nrules;
    memcpy(saved, b->rules, sizeof saved);
    /* a method that needs calibration data is refused until the data is there */
    if (qs_bench_add_rule(b, &r, &matched, e) < 0 || qs_bench_methods_refresh(b, 1, e) < 0) {
        memcpy(b->rules, saved, sizeof saved);
        b->nrules = nsaved;
        qs_err e2;
        qs_bench_resolve(b, &e2);
        return -1;
    }
    char opts[200] = "";
    if (r.fmt.kind != QS_FMT_NONE)
        qs_qopts_format(&r.fmt, &r.opt, opts, sizeof opts);
    const char *on = r.roles == QS_ROLE_W   ? " on=w"
                     : r.roles == QS_ROLE_A ? " on=a"
                     : r.roles              ? " on=wa"
                                            : "";
    const char *am = r.amode == QS_AMODE_STATIC  ? " amode=static"
                     : r.amode == QS_AMODE_TOKEN ? " amode=token"
                                                 : "";
    char meth[200];
    qs_rule_method_format(&r.meth, meth, sizeof meth);
    snprintf(c->canon, sizeof c->canon, "quant %s %s%s%s%s%s%s%s", r.pattern, r.fmt.name,
             opts[0] ? " " : "", opts, on, am, meth[0] ? " " : "", meth);
    if (matched == 0)
        qs_note(c, "warning: pattern '%s' matched no layer", r.pattern);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "quant");
    cJSON_AddStringToObject(o, "pattern", r.pattern);
    cJSON_AddStringToObject(o, "format", r.fmt.name);
    if (meth[0])
        cJSON_AddStringToObject(o, "method", meth);
    cJSON_AddNumberToObject(o, "matched", matched);
    qs_json_num(o, "bits_per_weight", qs_bench_bits_per_weight(b));
    struct qs_sb t = {0};
    qs_sb_printf(&t, "%s -> %s%s%s: %d layer%s; model %.3f bits/weight", r.pattern, r.fmt.name,
                 meth[0] ? " " : "", meth, matched, matched == 1 ? "" : "s",
                 qs_bench_bits_per_weight(b));
    if (r.fmt.kind == QS_FMT_GGML && !gguf) /* which layers llama.cpp's fallback stores otherwise */
        ggml_fallback_note(b, &r.fmt, o, &t);
    qs_cmd_gguf_quant_note(c, o, &t); /* sites a `gguf` rule gave before, re-quantized now */
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_rules(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)e;
    (void)argv;
    (void)argc; /* none (the spec's arity) */
    struct qs_bench *b = c->b;
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "rules");
    struct qs_sb t = {0};
    qs_sb_printf(&t, "regime %s (default roles); first match wins:", qs_regime_word(b->regime));
    for (int k = 0; k < b->nrules; k++) {
        const struct qs_rule *r = &b->rules[k];
        char opts[200] = "", layers[512] = "";
        size_t ln = 0;
        if (r->fmt.kind != QS_FMT_NONE)
            qs_qopts_format(&r->fmt, &r->opt, opts, sizeof opts);
        cJSON *jr = cJSON_CreateObject(), *jl = cJSON_CreateArray();
        for (int i = 0; i < qs_bench_nunits(b); i++)
            if (b->ls[i].rule_w == k || b->ls[i].rule_a == k) {
                struct qs_unit u;
                qs_bench_unit(b, i, &u);
                cJSON_AddItemToArray(jl, cJSON_CreateString(u.name));
                if (ln + 1 < sizeof layers)
                    ln += (size_t)snprintf(layers + ln, sizeof layers - ln, "%s%s", ln ? "," : "",
                                           u.name);
            }
        const char *roles = r->roles == QS_ROLE_W   ? "w"
                            : r->roles == QS_ROLE_A ? "a"
                            : r->roles              ? "wa"
                                                    : "default";
        cJSON_AddStringToObject(jr, "pattern", r->pattern);
        cJSON_AddStringToObject(jr, "format", r->fmt.name);
        cJSON_AddStringToObject(jr, "options", opts);
        cJSON_AddStringToObject(jr, "on", roles);
        /* how activations are scaled (static: calibrated on the calibration split) */
        const char *am = r->amode == QS_AMODE_STATIC  ? "static"
                         : r->amode == QS_AMODE_TOKEN ? "token"
                                                      : "dynamic";
        cJSON_AddStringToObject(jr, "amode", am);
        char meth[200];
        qs_rule_method_format(&r->meth, meth, sizeof meth);
        if (meth[0]) /* the quantizer method; absent for round-to-nearest */
            cJSON_AddStringToObject(jr, "method", meth);
        cJSON_AddItemToObject(jr, "layers", jl);
        cJSON_AddItemToArray(arr, jr);
        char on[48];
        snprintf(on, sizeof on, "%s%s%s", roles, r->amode != QS_AMODE_DYNAMIC ? " amode=" : "",
                 r->amode != QS_AMODE_DYNAMIC ? am : "");
        if (qs_format_is_gguf_own(&r->fmt) && ln) { /* the GGUF's own type of each site */
            qs_sb_printf(&t, "\n%2d  %-12s %-10s %-40s on=%-7s -> the paired GGUF's own weights:",
                         k + 1, r->pattern, r->fmt.name, "", on);
            qs_cmd_gguf_rule_sites(c, k, jr, &t);
            continue;
        }
        qs_sb_printf(&t, "\n%2d  %-12s %-10s %-40s on=%-7s -> %s", k + 1, r->pattern, r->fmt.name,
                     opts, on, ln ? layers : "(no layer)");
        if (meth[0])
            qs_sb_printf(&t, "\n    %-12s %s", "", meth);
    }
    if (!b->nrules)
        qs_sb_printf(&t, "\n(no rules: every layer in float)");
    cJSON_AddItemToObject(o, "rules", arr);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_regime(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* weight|act|full (the spec's arity and values) */
    enum qs_regime r;
    if (!strcmp(argv[0], "weight"))
        r = QS_REGIME_WEIGHT;
    else if (!strcmp(argv[0], "act"))
        r = QS_REGIME_ACT;
    else if (!strcmp(argv[0], "full"))
        r = QS_REGIME_FULL;
    else
        return qs_errf(e, "regime: '%s': expected weight, act or full", argv[0]);
    if (qs_bench_set_regime(c->b, r, e) < 0)
        return -1;
    snprintf(c->canon, sizeof c->canon, "regime %s", argv[0]);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "regime");
    cJSON_AddStringToObject(o, "regime", qs_regime_name(r));
    qs_emit(c, o, qs_regime_name(r));
    return 0;
}

static int cmd_roundtrip(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_format f;
    if (qs_format_parse(argv[0], &f, e) < 0)
        return -1;
    if (f.kind == QS_FMT_NONE)
        return qs_errf(e, "roundtrip: format 'none' keeps values in float");
    int sat = 1, n = 0;
    double *in = malloc((size_t)argc * sizeof *in);
    float *xf = malloc((size_t)argc * sizeof *xf), *yf = malloc((size_t)argc * sizeof *yf);
    if (!in || !xf || !yf) {
        free(in);
        free(xf);
        free(yf);
        return qs_errf(e, "out of memory");
    }
    int rc = 0;
    const char *w, *sv = qs_arg(c, "sat"); /* 0 or 1; the values are numbers (the spec) */
    if (sv)
        sat = strcmp(sv, "0") != 0;
    for (int k = 1; (w = qs_arg_pos(c, k)); k++) {
        in[n] = strtod(w, NULL);
        /* Weights are float32: the value rounded is the decimal's float32 value, so a 9-digit
         * decimal of an exact float32 tie rounds as that tie (to even), not as the decimal
         * (which lies a little off the tie). The echo keeps what was typed. */
        xf[n] = (float)in[n];
        n++;
    }
    if (rc == 0 && n == 0)
        rc = qs_errf(e, "roundtrip: no values");
    int block = qs_format_traits(&f)->fixed_block;
    if (rc == 0 && block) { /* block formats: the values form one block with its shared scale */
        struct qs_qopts o;
        qs_qopts_default(&o);
        o.saturate = sat;
        rc = qs_quant_fake(&f, &o, xf, 1, n, yf, e);
    }
    if (rc == 0) {
        cJSON *o = cJSON_CreateObject(), *ji = cJSON_CreateArray(), *jo = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "cmd", "roundtrip");
        cJSON_AddStringToObject(o, "format", f.name);
        struct qs_sb t = {0};
        for (int i = 0; i < n; i++) {
            double out = block ? (double)yf[i] : qs_format_cast(&f, (double)xf[i], sat);
            cJSON_AddItemToArray(ji, qs_json_num_item(in[i]));
            cJSON_AddItemToArray(jo, isnan(out)   ? cJSON_CreateString("nan")
                                     : isinf(out) ? cJSON_CreateString(out > 0 ? "inf" : "-inf")
                                                  : qs_json_num_item(out));
            qs_sb_printf(&t, "%s%.9g -> %.9g", i ? "\n" : "", in[i], out);
        }
        cJSON_AddItemToObject(o, "in", ji);
        cJSON_AddItemToObject(o, "out", jo);
        qs_emit(c, o, t.s);
        qs_sb_free(&t);
    }
    free(in);
    free(xf);
    free(yf);
    return rc;
}

static int cmd_codes(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one FORMAT (the spec's arity) */
    struct qs_format f;
    double *v;
    int n;
    if (qs_format_parse(argv[0], &f, e) < 0 || qs_format_codes(&f, &v, &n, e) < 0)
        return -1;
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "codes");
    cJSON_AddStringToObject(o, "format", f.name);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "%s: %d codes (code: value)", f.name, n);
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(arr, isnan(v[i])   ? cJSON_CreateString("nan")
                                  : isinf(v[i]) ? cJSON_CreateString(v[i] > 0 ? "inf" : "-inf")
                                                : qs_json_num_item(v[i]));
        qs_sb_printf(&t, "%s0x%02x: %-12.9g", i % 6 ? "  " : "\n", i, v[i]);
    }
    cJSON_AddItemToObject(o, "values", arr);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    free(v);
    return 0;
}

/* The tensors of an export: F32 ones first, then U8 ones, so that every F32 tensor is aligned. */
struct exp_list {
    struct qs_st_out *t;
    char **names;
    int n, cap, oom;
};

static void exp_put(struct exp_list *x, const char *layer, const char *suffix, enum qs_dtype dt,
                    int ndim, int64_t d0, int64_t d1, const void *data)
{
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 16;
        struct qs_st_out *t = realloc(x->t, (size_t)cap * sizeof *t);
        char **nm = t ? realloc(x->names, (size_t)cap * sizeof *nm) : NULL;
        if (t)
            x->t = t;
        if (!t || !nm) {
            x->oom = 1;
            return;
        }
        x->names = nm;
        x->cap = cap;
    }
    size_t len = strlen(layer) + strlen(suffix) + 2;
    char *name = malloc(len);
    if (!name) {
        x->oom = 1;
        return;
    }
    snprintf(name, len, "%s.%s", layer, suffix);
    x->names[x->n] = name;
    x->t[x->n++] = (struct qs_st_out){
        .name = name, .dtype = dt, .ndim = ndim, .shape = {d0, d1}, .data = data};
}

static void exp_free(struct exp_list *x)
{
    for (int i = 0; i < x->n; i++)
        free(x->names[i]);
    free(x->names);
    free(x->t);
}

/* What an export says about its sites, in the metadata and in its report: one entry per site,
 * comma-separated (options ';'-separated), the same for every family. */
struct exp_meta {
    struct qs_sb layers, fmts, shapes, grans, sdts, opts, methods, corrs, said;
    int ncorr, aq, clocal;
};

static void exp_meta_free(struct exp_meta *d)
{
    qs_sb_free(&d->layers);
    qs_sb_free(&d->fmts);
    qs_sb_free(&d->shapes);
    qs_sb_free(&d->grans);
    qs_sb_free(&d->sdts);
    qs_sb_free(&d->opts);
    qs_sb_free(&d->methods);
    qs_sb_free(&d->corrs);
    qs_sb_free(&d->said);
}

/* Appends site i (NAME, out x in, state S) to d; *lowrank, *bias, *map: the corrections the
 * forward pass applies (clocal is analysis only, never applied). */
static int exp_describe(struct exp_meta *d, int i, const char *name, int out, int in,
                        const struct qs_layer_state *s, int packed, int *lowrank, int *bias,
                        int *map, qs_err *e)
{
    const struct qs_corr *cr = &s->corr;
    const char *sep = i ? "," : "";
    if (packed && s->wquant && (s->rot || s->xs))
        /* the codes are those of W H^T diag(s), a basis the packed layout does not record */
        return qs_errf(e,
                       "export model … packed: %s is quantized with %s, whose codes are in "
                       "a rotated or channel-scaled basis that the packed layout does not "
                       "record; export model PATH (without packed) writes its effective "
                       "weight in the original basis",
                       name,
                       s->rot            ? "rotate=hadamard"
                       : s->wm.smooth_on ? "smooth="
                                         : "method=awq");
    d->aq |= s->afmt.kind != QS_FMT_NONE;
    qs_sb_printf(&d->layers, "%s%s", sep, name);
    qs_sb_printf(&d->fmts, "%s%s", sep, s->wquant ? s->packed.fmt.name : "none");
    qs_sb_printf(&d->shapes, "%s%dx%d", sep, out, in);
    if (s->wquant) {
        struct qs_packed_layout lay;
        char g[48], o[256];
        if (qs_packed_layout(&s->packed.fmt, &s->packed.opt, out, in, &lay, e) < 0)
            return qs_err_prefix(e, name);
        qs_packfile_gran(&lay, &s->packed.opt, in, g, sizeof g);
        qs_qopts_format(&s->packed.fmt, &s->packed.opt, o, sizeof o);
        qs_sb_printf(&d->grans, "%s%s", sep, g);
        qs_sb_printf(&d->sdts, "%s%s", sep, lay.scale_dtype);
        qs_sb_printf(&d->opts, "%s%s", i ? ";" : "", o);
        /* the quantizer that chose the codes: rtn, or the method with every option, the
         * site's rotation seed and AWQ's chosen alpha (packfile.h) */
        char mbuf[320];
        qs_layer_method_desc(s, i, mbuf, sizeof mbuf);
        qs_sb_printf(&d->methods, "%s%s", i ? ";" : "", mbuf);
    } else {
        qs_sb_printf(&d->grans, "%s-", sep);
        qs_sb_printf(&d->sdts, "%s-", sep);
        qs_sb_printf(&d->opts, "%s-", i ? ";" : "");
        qs_sb_printf(&d->methods, "%s-", i ? ";" : "");
    }
    *lowrank = cr->c != NULL;
    *bias = cr->db != NULL;
    *map = cr->amap != NULL && cr->method != QS_CORR_CLOCAL;
    d->clocal |= cr->method == QS_CORR_CLOCAL;
    if (*lowrank && packed && (!cr->l || !cr->rt))
        return qs_errf(e, "export model: the %s correction of %s has no factors to write",
                       qs_corr_name(cr->method), name);
    if (*lowrank && cr->prec[0] && strcmp(cr->prec, "float"))
        qs_sb_printf(&d->corrs, "%s%s:r=%d:prec=%s", sep, qs_corr_name(cr->method), cr->rank,
                     cr->prec);
    else if (*lowrank)
        qs_sb_printf(&d->corrs, "%s%s:r=%d", sep, qs_corr_name(cr->method), cr->rank);
    else if (*map)
        qs_sb_printf(&d->corrs, "%s%s:prec=%s", sep, qs_corr_name(cr->method),
                     cr->prec[0] ? cr->prec : "float");
    else if (*bias)
        qs_sb_printf(&d->corrs, "%s%s", sep, qs_corr_name(cr->method));
    else
        qs_sb_printf(&d->corrs, "%s-", sep);
    if (*lowrank || *bias || *map) {
        d->ncorr++;
        qs_sb_printf(&d->said, "%s%s %s", d->said.len ? ", " : "", name, qs_corr_name(cr->method));
    }
    return 0;
}

/* Fake-quant: W' = Q(W) + c and b' = b + db exactly as the forward pass forms them; a linear map
 * folded (A W', A b' + mb). W is the weight the session runs (Q(W), or W when float), B its
 * bias (NULL: none, then a bias or map correction cannot be folded and is refused). *fw, *fb:
 * new arrays when a correction applies, else NULL (use W and B as they are). */
static int exp_fold(const char *name, int out, int in, const float *w, const float *b,
                    const struct qs_corr *cr, float **fw, float **fb, qs_err *e)
{
    int lowrank = cr->c != NULL, bias = cr->db != NULL;
    int map = cr->amap != NULL && cr->method != QS_CORR_CLOCAL;
    size_t nw = (size_t)out * in;
    *fw = *fb = NULL;
    if (!lowrank && !bias && !map)
        return 0;
    if (!b && (bias || map))
        return qs_errf(e, "export model: %s has no bias to fold its %s correction into", name,
                       qs_corr_name(cr->method));
    *fw = malloc(nw * sizeof(float));
    *fb = b ? malloc((size_t)out * sizeof(float)) : NULL;
    if (!*fw || (b && !*fb))
        return qs_errf(e, "out of memory");
    for (size_t j = 0; j < nw; j++)
        (*fw)[j] = lowrank ? w[j] + cr->c[j] : w[j];
    for (int j = 0; b && j < out; j++)
        (*fb)[j] = bias ? b[j] + cr->db[j] : b[j];
    if (map && qs_packfile_fold_map(out, in, cr->amap, cr->mb, *fw, *fb, e) < 0)
        return -1;
    return 0;
}

/* The journal line and the report of a written export. */
static void exp_report(struct qs_ctx *c, const char *path, int packed, const struct exp_meta *d)
{
    char q[600];
    snprintf(c->canon, sizeof c->canon, "export model %s%s", qs_quote(path, q, sizeof q),
             packed ? " packed" : "");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "export model");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddStringToObject(o, "kind", packed ? "packed" : "fake-quant");
    cJSON_AddNumberToObject(o, "corrections", d->ncorr);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "wrote %s (%s", path,
                 packed ? "packed codes and scales" : "dequantized weights");
    if (d->ncorr)
        qs_sb_printf(&t, "; corrections %s: %s", packed ? "as fitted" : "folded in", d->said.s);
    qs_sb_printf(&t, ")");
    if (d->aq)
        qs_note(c, "note: activations are quantized in this session; the exported file "
                   "holds the weights only, and runs with float activations");
    if (d->clocal)
        qs_note(c, "note: clocal corrections are analysis only and are not exported");
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
}

/* export model X.gguf on a llama: the session's weights for llama.cpp. Sites quantized with a
 * ggml type keep their blocks byte for byte (after llama.cpp's fallback for their row length);
 * sites in another format are written dequantized in F32, float ones in F32. Corrections and
 * activation quantization are not part of a GGUF file: left out, and said so. */
static int cmd_export_gguf(struct qs_ctx *c, const char *path, qs_err *e)
{
    struct qs_bench *b = c->b;
    const struct qs_lm *m = b->lm;
    if (m->family != QS_LM_LLAMA)
        return qs_errf(e,
                       "export model %s: GGUF export writes llama models (this one is gpt2); "
                       "export model DIR writes a Hugging Face folder",
                       path);
    if (qs_bench_resolve(b, e) < 0)
        return -1;
    const int S = m->nsites;
    const uint8_t **blocks = qs_calloc((size_t)S, sizeof *blocks);
    const float **w = qs_calloc((size_t)S, sizeof *w);
    int *types = qs_calloc((size_t)S, sizeof *types);
    int rc = blocks && w && types ? 0 : qs_errf(e, "out of memory");
    int nggml = 0, ndeq = 0, ncorr = 0, aq = 0, nmeth = 0;
    struct qs_sb said = {0};
    for (int s = 0; s < S && rc == 0; s++) {
        const struct qs_layer_state *ls = &b->ls[s];
        const struct qs_corr *cr = &ls->corr;
        aq |= ls->afmt.kind != QS_FMT_NONE;
        nmeth += ls->wquant && qs_rule_method_custom(&ls->wm);
        if (cr->c || cr->db || cr->amap) {
            qs_sb_printf(&said, "%s%s", ncorr ? ", " : "", m->sites[s].name);
            ncorr++;
        }
        if (ls->wquant && ls->packed.fmt.kind == QS_FMT_GGML) {
            blocks[s] = ls->packed.codes;
            types[s] = qs_ggml_effective_type(ls->packed.fmt.ggml, m->sites[s].in);
            nggml++;
        } else if (ls->wquant) {
            if (!(w[s] = qs_site_wq_pin(b, s, e)))
                rc = -1;
            ndeq++;
        }
    }
    if (rc == 0)
        rc = qs_lm_save_gguf(m, path, blocks, types, w, e);
    qs_site_wq_unpin_all(b);
    free(blocks);
    free(w);
    free(types);
    if (rc == 0) {
        char q[600];
        snprintf(c->canon, sizeof c->canon, "export model %s", qs_quote(path, q, sizeof q));
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "cmd", "export model");
        cJSON_AddStringToObject(o, "path", path);
        cJSON_AddStringToObject(o, "kind", "gguf");
        cJSON_AddNumberToObject(o, "ggml_sites", nggml);
        cJSON_AddNumberToObject(o, "dequantized_sites", ndeq);
        cJSON_AddNumberToObject(o, "corrections_left_out", ncorr);
        struct qs_sb t = {0};
        qs_sb_printf(&t,
                     "wrote %s (GGUF: %d site%s in ggml block types, %d dequantized to F32, "
                     "%d in float)",
                     path, nggml, nggml == 1 ? "" : "s", ndeq, S - nggml - ndeq);
        if (ncorr)
            qs_sb_printf(&t,
                         "\ncorrections left out (GGUF holds weights only; export model DIR "
                         "folds them in): %s",
                         said.s);
        if (aq)
            qs_note(c, "note: activations are quantized in this session; the GGUF file holds "
                       "the weights only");
        if (nmeth)
            /* GGUF has no qscope metadata: said here; the safetensors exports record it */
            qs_note(c,
                    "note: %d site%s quantized with a method (rules shows which); the GGUF "
                    "file holds the resulting weights but does not record the method "
                    "(export model DIR records it in qscope.weight_methods)",
                    nmeth, nmeth == 1 ? " is" : "s are");
        qs_emit(c, o, t.s);
        qs_sb_free(&t);
    }
    qs_sb_free(&said);
    return rc;
}

/* export model DIR [packed] on a transformer: a Hugging Face folder (config.json,
 * model.safetensors) whose linears hold the session's weights, W' = Q(W) + C dequantized to F32
 * (the float ones where a site stays float); embeddings and norms as loaded. Packed: each
 * quantized site holds its codes and scales instead, and every correction its fitted factors,
 * as the MLP's packed file (packfile.h); bias and linear corrections need the site's bias (none
 * on LLaMA: refused). Dequantized, a bias or linear correction on a LLaMA-family site without a
 * bias is folded into a bias of its own (from zero), and qs_lm_save writes the biases of its
 * whole group (attention_bias / mlp_bias true). qs_lm_load reads both back, and its float eval is
 * the session's quantized eval (with float activations). */
static int cmd_export_lm(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    size_t plen = strlen(argv[0]);
    if (argc == 1 && plen > 5 && !strcmp(argv[0] + plen - 5, ".gguf"))
        return cmd_export_gguf(c, argv[0], e);
    if (plen > 5 && !strcmp(argv[0] + plen - 5, ".gguf"))
        return qs_errf(e,
                       "export model %s packed: a GGUF file holds ggml blocks already "
                       "(export model X.gguf); packed writes a folder",
                       argv[0]);
    if (qs_bench_resolve(b, e) < 0)
        return -1;
    const int packed = argc == 2;
    const struct qs_lm *m = b->lm;
    const int S = m->nsites;
    const float **w = qs_calloc((size_t)S, sizeof *w), **bb = qs_calloc((size_t)S, sizeof *bb);
    float **own = qs_calloc((size_t)S * 2, sizeof *own);
    unsigned char *skip = qs_calloc((size_t)S, 1);
    /* LLaMA-family linears (not the head: Hugging Face's has no bias) fold a bias or linear
     * correction into a bias that starts at zero (dequantized export) */
    float *zero =
        m->family == QS_LM_LLAMA
            ? qs_calloc((size_t)(m->d_ff > m->d_model ? m->d_ff : m->d_model), sizeof *zero)
            : NULL;
    struct exp_meta d = {0};
    struct exp_list xf = {0}, xu = {0}; /* packed: F32 and U8 tensors, named by site index */
    int rc = w && bb && own && skip && (zero || m->family != QS_LM_LLAMA)
                 ? 0
                 : qs_errf(e, "out of memory");
    char sn[16];
    for (int s = 0; s < S && rc == 0; s++) {
        const struct qs_lm_site *st = &m->sites[s];
        const struct qs_layer_state *ls = &b->ls[s];
        const struct qs_corr *cr = &ls->corr;
        int lowrank, bias, map;
        if (exp_describe(&d, s, st->name, st->out, st->in, ls, packed, &lowrank, &bias, &map, e) <
            0) {
            rc = -1;
            break;
        }
        if (packed) {
            /* the site's codes, scales and fitted factors, as the MLP's packed export writes
             * them (packfile.h); its own bias is written by qs_lm_save_packed */
            if (!st->b && (bias || map)) {
                rc = qs_errf(e, "export model: %s has no bias to fold its %s correction into",
                             st->name, qs_corr_name(cr->method));
                break;
            }
            snprintf(sn, sizeof sn, "%d", s); /* exp_put's "layer": the site index */
            if (ls->wquant) {
                const struct qs_packed *p = &ls->packed;
                skip[s] = 1;
                /* not written; a tied head so becomes untied */
                if (!(w[s] = qs_site_wq_pin(b, s, e))) {
                    rc = -1;
                    break;
                }
                exp_put(&xu, sn, "weight.codes", QS_DT_U8, 1, (int64_t)p->code_bytes, 0, p->codes);
                if (p->scale_bytes)
                    exp_put(&xu, sn, "weight.scales", QS_DT_U8, 1, (int64_t)p->scale_bytes, 0,
                            p->scales);
                if (p->zero_bytes)
                    exp_put(&xu, sn, "weight.zeros", QS_DT_U8, 1, (int64_t)p->zero_bytes, 0,
                            p->zeros);
                if (qs_format_traits(&p->fmt)->tensor_scale)
                    exp_put(&xf, sn, "weight.tensor_scale", QS_DT_F32, 1, 1, 0, &p->tensor_scale);
            }
            if (lowrank) {
                exp_put(&xf, sn, "corr.l", QS_DT_F32, 2, st->out, cr->rank, cr->l);
                exp_put(&xf, sn, "corr.rt", QS_DT_F32, 2, cr->rank, st->in, cr->rt);
            }
            if (bias)
                exp_put(&xf, sn, "corr.bias", QS_DT_F32, 1, st->out, 0, cr->db);
            if (map) {
                exp_put(&xf, sn, "corr.map", QS_DT_F32, 2, st->out, st->out, cr->amap);
                exp_put(&xf, sn, "corr.map_bias", QS_DT_F32, 1, st->out, 0, cr->mb);
            }
            continue;
        }
        const float *sb = st->b ? st->b : s < S - 1 ? zero : NULL;
        const float *wq = ls->wquant ? qs_site_wq_pin(b, s, e) : NULL;
        /* a float weight is read only to fold a correction into (copied at once) */
        const float *wsrc = wq ? wq : cr->c || cr->db || cr->amap ? qs_bench_w(b, s, e) : st->w;
        if ((ls->wquant && !wq) || ((cr->c || cr->db || cr->amap) && !wsrc) ||
            exp_fold(st->name, st->out, st->in, wsrc, sb, &ls->corr, &own[2 * s], &own[2 * s + 1],
                     e) < 0) {
            rc = -1;
            break;
        }
        w[s] = own[2 * s] ? own[2 * s] : wq; /* NULL: the float weight */
        /* a folded bias; a lowrank-only fold of a bias-less site copies the zero: none */
        bb[s] = own[2 * s + 1] && (st->b || bias || map) ? own[2 * s + 1] : NULL;
    }
    free(zero);
    /* the extra tensors, F32 first, each split into its site index and its own name */
    const int nx = xf.n + xu.n;
    struct qs_st_out *xt = qs_calloc((size_t)nx + 1, sizeof *xt);
    int *xsite = qs_calloc((size_t)nx + 1, sizeof *xsite);
    if (rc == 0 && (xf.oom || xu.oom || !xt || !xsite))
        rc = qs_errf(e, "out of memory");
    for (int i = 0; rc == 0 && i < nx; i++) {
        xt[i] = i < xf.n ? xf.t[i] : xu.t[i - xf.n];
        char *dot;
        xsite[i] = (int)strtol(xt[i].name, &dot, 10);
        xt[i].name = dot + 1;
    }
    char sha[65] = "";
    if (rc == 0 && m->path) {
        /* the source's identity, when its file can still be read */
        size_t n = strlen(m->path) + 32;
        char *p = malloc(n);
        qs_err ig;
        if (p) {
            snprintf(p, n, "%s/model.safetensors", m->path);
            if (qs_sha256_file(p, sha, &ig) < 0)
                sha[0] = 0;
        }
        free(p);
    }
    if (rc == 0 && (!d.layers.s || !d.corrs.s || !d.opts.s || !d.methods.s))
        rc = qs_errf(e, "out of memory");
    if (rc == 0) {
        const char *keys[] = {"qscope.version",        "qscope.arch",
                              "qscope.export",         "qscope.layers",
                              "qscope.weight_formats", "qscope.weight_shapes",
                              "qscope.weight_grans",   "qscope.weight_scale_dtypes",
                              "qscope.weight_options", "qscope.weight_methods",
                              "qscope.corrections",    "qscope.source",
                              "qscope.source_sha256"};
        const char *vals[] = {QS_VERSION,
                              m->family == QS_LM_GPT2 ? "gpt2" : "llama",
                              packed ? "packed" : "fake-quant",
                              d.layers.s,
                              d.fmts.s,
                              d.shapes.s,
                              d.grans.s,
                              d.sdts.s,
                              d.opts.s,
                              d.methods.s,
                              d.corrs.s,
                              m->path ? m->path : "",
                              sha};
        int nk = (int)(sizeof keys / sizeof *keys) - (sha[0] ? 0 : 1);
        rc = qs_lm_save_packed(m, argv[0], w, bb, skip, xt, xsite, nx, keys, vals, nk, e);
    }
    qs_site_wq_unpin_all(b);
    for (int i = 0; own && i < 2 * S; i++)
        free(own[i]);
    free(own);
    free(w);
    free(bb);
    free(skip);
    free(xt);
    free(xsite);
    exp_free(&xf);
    exp_free(&xu);
    if (rc == 0)
        exp_report(c, argv[0], packed, &d);
    exp_meta_free(&d);
    return rc;
}

/* export model PATH [packed]: the MLP as the session runs it. Fake-quant: dequantized weights
 * with the corrections folded in. Packed: codes and scales as packed, the corrections' factors
 * beside them, and per-layer metadata (format, shape, gran, scale dtype, options, correction);
 * the layout is in packfile.h, and qs_mlp_load reads both back. */
static int cmd_export_model(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_bench *b = c->b;
    if (!b->model)
        return cmd_export_lm(c, argc, argv, e);
    size_t plen = strlen(argv[0]);
    if (plen > 5 && !strcmp(argv[0] + plen - 5, ".gguf"))
        return qs_errf(e,
                       "export model %s: GGUF export writes llama transformers, not MLPs "
                       "(export model X.safetensors [packed] writes this one)",
                       argv[0]);
    if (qs_bench_resolve(b, e) < 0)
        return -1;
    const int packed = argc == 2;
    const struct qs_mlp *m = b->model;
    const int L = m->nlayers;
    struct exp_list xf = {0}, xu = {0};
    float **own = qs_calloc((size_t)L * 2, sizeof *own); /* folded weights and biases */
    struct exp_meta d = {0};
    struct qs_sb acts = {0};
    int rc = own ? 0 : qs_errf(e, "out of memory");
    for (int i = 0; i < L && rc == 0; i++) {
        const struct qs_layer *l = &m->layers[i];
        const struct qs_layer_state *s = &b->ls[i];
        const struct qs_corr *cr = &s->corr;
        qs_sb_printf(&acts, "%s%s", i ? "," : "", qs_act_name(l->act));
        int lowrank, bias, map;
        if (exp_describe(&d, i, l->name, l->out, l->in, s, packed, &lowrank, &bias, &map, e) < 0) {
            rc = -1;
            break;
        }
        if (packed) {
            if (s->wquant) {
                const struct qs_packed *p = &s->packed;
                exp_put(&xu, l->name, "weight.codes", QS_DT_U8, 1, (int64_t)p->code_bytes, 0,
                        p->codes);
                if (p->scale_bytes)
                    exp_put(&xu, l->name, "weight.scales", QS_DT_U8, 1, (int64_t)p->scale_bytes, 0,
                            p->scales);
                if (p->zero_bytes)
                    exp_put(&xu, l->name, "weight.zeros", QS_DT_U8, 1, (int64_t)p->zero_bytes, 0,
                            p->zeros);
                if (qs_format_traits(&p->fmt)->tensor_scale)
                    exp_put(&xf, l->name, "weight.tensor_scale", QS_DT_F32, 1, 1, 0,
                            &p->tensor_scale);
            } else {
                exp_put(&xf, l->name, "weight", QS_DT_F32, 2, l->out, l->in, l->w);
            }
            exp_put(&xf, l->name, "bias", QS_DT_F32, 1, l->out, 0, l->b);
            if (lowrank) {
                exp_put(&xf, l->name, "corr.l", QS_DT_F32, 2, l->out, cr->rank, cr->l);
                exp_put(&xf, l->name, "corr.rt", QS_DT_F32, 2, cr->rank, l->in, cr->rt);
            }
            if (bias)
                exp_put(&xf, l->name, "corr.bias", QS_DT_F32, 1, l->out, 0, cr->db);
            if (map) {
                exp_put(&xf, l->name, "corr.map", QS_DT_F32, 2, l->out, l->out, cr->amap);
                exp_put(&xf, l->name, "corr.map_bias", QS_DT_F32, 1, l->out, 0, cr->mb);
            }
            continue;
        }
        /* fake-quant: W' = Q(W) + c and b' = b + db exactly as the forward pass forms them; a
         * linear map folded (A W', A b' + mb) */
        const float *w = s->wquant ? qs_site_wq_pin(b, i, e) : l->w, *bb = l->b;
        if (!w ||
            exp_fold(l->name, l->out, l->in, w, l->b, cr, &own[2 * i], &own[2 * i + 1], e) < 0) {
            rc = -1;
            break;
        }
        if (own[2 * i]) {
            w = own[2 * i];
            bb = own[2 * i + 1];
        }
        exp_put(&xf, l->name, "weight", QS_DT_F32, 2, l->out, l->in, w);
        exp_put(&xf, l->name, "bias", QS_DT_F32, 1, l->out, 0, bb);
    }
    if (rc == 0 && (xf.oom || xu.oom || !d.layers.s || !d.corrs.s || !d.opts.s || !d.methods.s))
        rc = qs_errf(e, "out of memory");
    if (rc == 0) {
        /* the model's own metadata (task metric, split seed, ...) rides along */
        static const char *const mine[] = {"qscope.arch",           "qscope.layers",
                                           "qscope.acts",           "qscope.export",
                                           "qscope.weight_formats", "qscope.weight_shapes",
                                           "qscope.weight_grans",   "qscope.weight_scale_dtypes",
                                           "qscope.weight_options", "qscope.weight_methods",
                                           "qscope.corrections"};
        enum { NMINE = sizeof mine / sizeof mine[0] };
        const char *vals[NMINE] = {
            "mlp",    d.layers.s,  acts.s,    packed ? "packed" : "fake-quant",
            d.fmts.s, d.shapes.s,  d.grans.s, d.sdts.s,
            d.opts.s, d.methods.s, d.corrs.s};
        const char **keys = malloc(((size_t)NMINE + m->nmeta) * sizeof *keys);
        const char **mv = malloc(((size_t)NMINE + m->nmeta) * sizeof *mv);
        struct qs_st_out *all = malloc(((size_t)xf.n + xu.n + 1) * sizeof *all);
        int nk = 0;
        for (int k = 0; keys && mv && k < NMINE; k++, nk++) {
            keys[nk] = mine[k];
            mv[nk] = vals[k];
        }
        for (int k = 0; keys && mv && k < m->nmeta; k++) {
            int dup = 0;
            for (int j = 0; j < NMINE; j++)
                dup |= !strcmp(m->meta_key[k], mine[j]);
            if (!dup) {
                keys[nk] = m->meta_key[k];
                mv[nk++] = m->meta_val[k];
            }
        }
        if (!all || !keys || !mv) {
            rc = qs_errf(e, "out of memory");
        } else {
            memcpy(all, xf.t, (size_t)xf.n * sizeof *all);
            if (xu.n)
                memcpy(all + xf.n, xu.t, (size_t)xu.n * sizeof *all);
            rc = qs_st_write(argv[0], all, xf.n + xu.n, keys, mv, nk, e);
        }
        free(all);
        free(keys);
        free(mv);
    }
    for (int i = 0; own && i < 2 * L; i++)
        free(own[i]);
    free(own);
    exp_free(&xf);
    exp_free(&xu);
    qs_site_wq_unpin_all(b);
    if (rc == 0)
        exp_report(c, argv[0], packed, &d);
    qs_sb_free(&acts);
    exp_meta_free(&d);
    return rc;
}

/* ---- help and quit ------------------------------------------------------------------- */

/* Appends text word-wrapped to width columns, every line indented by indent spaces. */
static void sb_wrap(struct qs_sb *t, const char *text, int indent, int width)
{
    int col = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t w = strcspn(p, " ");
        if (!w)
            break;
        if (col && col + 1 + (int)w > width) {
            qs_sb_printf(t, "\n");
            col = 0;
        }
        if (!col) {
            qs_sb_printf(t, "%*s", indent, "");
            col = indent;
        } else {
            qs_sb_printf(t, " ");
            col++;
        }
        qs_sb_printf(t, "%.*s", (int)w, p);
        col += (int)w;
        p += w;
    }
}

/* `formats`: every canonical format name with its element bits, block and largest value. */
static int cmd_formats(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc;
    (void)argv;
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "formats");
    cJSON_AddStringToObject(o, "cmd", "formats");
    struct qs_sb t = {0};
    qs_sb_printf(&t, "%-12s %4s %5s %12s", "format", "bits", "block", "max");
    for (const char *const *n = qs_format_names(); *n; n++) {
        struct qs_format f;
        if (qs_format_parse(*n, &f, e) < 0) {
            cJSON_Delete(o);
            qs_sb_free(&t);
            return -1;
        }
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", f.name);
        cJSON_AddNumberToObject(j, "bits", f.bits);
        cJSON_AddNumberToObject(j, "block", f.block);
        /* no element type of its own (none; llama.cpp's types scale each block by its own
         * super-block scales): no fixed maximum */
        double mx = qs_format_traits(&f)->elements ? qs_format_max(&f) : NAN;
        qs_json_num(j, "max", mx);
        cJSON_AddItemToArray(arr, j);
        char ms[32] = "-";
        if (!isnan(mx))
            snprintf(ms, sizeof ms, "%.9g", mx);
        qs_sb_printf(&t, "\n%-12s %4d %5d %12s", f.name, f.bits, f.block, ms);
    }
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

/* `help` lists every command (synopsis, then its one-line description); `help WORD` describes
 * the commands named WORD or starting with "WORD " (help set: every set command). */
static int cmd_help(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct qs_sb t = {0};
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "help");
    int found = 0;
    size_t al = argc ? strlen(argv[0]) : 0;
    for (int i = 0; qs_cmd_at(c, i); i++) {
        const struct qs_cmd_def *d = qs_cmd_at(c, i);
        if (argc && strcmp(d->name, argv[0]) &&
            !(strncmp(d->name, argv[0], al) == 0 && d->name[al] == ' '))
            continue;
        if (argc == 2 && strcmp(d->name + al + (d->name[al] == ' '), argv[1]))
            continue;           /* help load model: that one command */
        struct qs_sb syn = {0}; /* generated from the command's spec */
        qs_cmd_synopsis(d, QS_SYN_TEXT, &syn);
        const char *args = syn.s ? syn.s + strlen(d->name) + (syn.s[strlen(d->name)] == ' ') : "";
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", d->name);
        cJSON_AddStringToObject(j, "args", args);
        cJSON_AddStringToObject(j, "help", d->help);
        cJSON_AddItemToArray(arr, j);
        qs_sb_printf(&t, "%s%s\n", found++ ? "\n" : "", syn.s ? syn.s : d->name);
        qs_sb_free(&syn);
        sb_wrap(&t, d->help, 4, 96);
        if (argc && d->more) {
            qs_sb_printf(&t, "\n");
            sb_wrap(&t, d->more, 4, 96);
        }
    }
    if (argc && !found) {
        cJSON_Delete(o);
        cJSON_Delete(arr);
        qs_sb_free(&t);
        return qs_errf(e, "help: no command '%s%s%s'", argv[0], argc == 2 ? " " : "",
                       argc == 2 ? argv[1] : "");
    }
    cJSON_AddItemToObject(o, "commands", arr);
    if (!argc) {
        /* The formulas behind every number live in one page; say where. */
        qs_sb_printf(&t, "\n\ndefinitions and formulas: man qscope-methods");
        cJSON_AddStringToObject(o, "methods", "qscope-methods(7)");
    }
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

static int cmd_quit(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argv;
    (void)e;
    (void)argc;
    c->quit = 1;
    return 0;
}

const struct qs_cmd_def qs_cmds_basic[] = {
    {"load model", 1, 1,
     QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL),
             QS_OPT("act", QS_ARG_ENUM, "relu|gelu|tanh|sigmoid")),
     QS_CMD_JOURNAL | QS_CMD_RECALC | QS_CMD_SPARES, cmd_load_model,
     "open a model (safetensors: qscope metadata or an nn.Sequential state dict)",
     "act= sets the hidden activation of a state dict without metadata (default relu). A "
     "folder with config.json + model.safetensors opens a GPT-2 or LLaMA; a llama.cpp .gguf "
     "file (architecture llama; F32/F16/BF16, q8_0..q6_K tensors dequantized on load) opens "
     "as a LLaMA."},
    {"load reference", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)),
     QS_CMD_JOURNAL | QS_CMD_MODEL | QS_CMD_RECALC, qs_cmd_load_reference,
     "pair a quantized GGUF model with its float original: llama.cpp's weights become the "
     "quantized path",
     "After `load model X.gguf` (a llama quantized by llama.cpp, e.g. Q4_K_M): PATH, an F16/F32 "
     "GGUF or a Hugging Face folder of the same llama, becomes the model, so its weights are the "
     "float path, and every site's quantized weight is the GGUF's own tensor (its ggml type, "
     "dequantized per site), through the rule `quant * gguf` that replaces earlier rules. "
     "error, spectrum, rank, eval, corrections, ablate and sensitivity then measure llama.cpp's "
     "own quantization. rules shows each site's type (gguf:q4_k, gguf:q6_k, ...); a quant rule "
     "on top re-quantizes its sites from the float reference instead (and says so); `quant "
     "PATTERN gguf` gives them their GGUF weights back. Hyperparameters and tensor shapes must "
     "match: the first difference is named. Embedding and norms are not sites: both paths use "
     "the reference's, and the load says how far the GGUF's differ."},
    {"load data", 1, 1,
     QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL), QS_OPT("label", QS_ARG_WORD, "COLUMN"),
             QS_OPT("dtype", QS_ARG_ENUM, "uint16|uint32")),
     QS_CMD_JOURNAL | QS_CMD_RECALC | QS_CMD_SPARES, cmd_load_data,
     "open a CSV dataset, or token data for a transformer (.txt, .bin)",
     "CSV: numeric cells; label column by name or index, default last. The split "
     "(train/calib/test) follows the model's recorded split seed and fractions. With a "
     "transformer loaded: .txt is tokenized with the model folder's tokenizer.json when it has "
     "one (byte-level or SentencePiece BPE), else one token per byte; .bin holds raw "
     "little-endian ids, uint16 (nanoGPT) unless dtype=uint32, or an llm.c header that gives "
     "the width itself. `info` says which was used."},
    {"info", 0, 0, NULL, QS_CMD_SPARES, cmd_info, "show the model, data, split, regime and seed",
     NULL},
    {"layers", 0, 0, NULL, QS_CMD_MODEL, cmd_layers,
     "table of layers: shape, formats, bits per weight, weight error, correction", NULL},
    {"eval", 0, 0, NULL, QS_CMD_JOURNAL | QS_CMD_DATA, cmd_eval,
     "float vs quantized task metrics on the test split, KL, top-1 agreement and the gate",
     "The gate passes when the float test accuracy >= chance + G x (1 - chance), chance being "
     "the majority-class rate and G the `set gate` share (default 0.8)."},
    {"train", 0, 0,
     QS_ARGS(QS_OPT("hidden", QS_ARG_INTS, "64,64"), QS_OPT("epochs", QS_ARG_INT, NULL),
             QS_OPT("steps", QS_ARG_INT, NULL), QS_OPT("batch", QS_ARG_INT, NULL),
             QS_OPT("ctx", QS_ARG_INT, NULL), QS_OPT("lr", QS_ARG_FLOAT, NULL),
             QS_OPT("min_lr", QS_ARG_FLOAT, NULL), QS_OPT("warmup", QS_ARG_INT, NULL),
             QS_OPT("wd", QS_ARG_FLOAT, NULL), QS_OPT("clip", QS_ARG_FLOAT, NULL),
             QS_OPT("eval", QS_ARG_INT, NULL), QS_OPT("act", QS_ARG_ENUM, "relu|gelu|tanh|sigmoid"),
             QS_OPT("seed", QS_ARG_INT, NULL), QS_OPT("init", QS_ARG_ENUM, "scratch|model"),
             QS_OPT("out", QS_ARG_PATH, NULL)),
     QS_CMD_JOURNAL | QS_CMD_LONG | QS_CMD_WRITES_OPT | QS_CMD_SCRATCH | QS_CMD_RECALC |
         QS_CMD_SPARES,
     cmd_train,
     "train an MLP with Adam on the train split, replacing the model (out= writes it); on a "
     "transformer: [steps=N] [batch=N] [ctx=N] [lr=F] [min_lr=F] [warmup=N] [wd=F] [clip=F] "
     "[eval=N] [seed=N] [init=scratch|model] out=DIR, AdamW with a cosine schedule",
     NULL},
    {"set seed", 1, 1, QS_ARGS(QS_POS("N", QS_ARG_INT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_RECALC | QS_CMD_SPARES, cmd_set_seed,
     "session seed (stochastic rounding, random controls, probes)", NULL},
    {"set calib", 0, 1, QS_ARGS(QS_POS("N", QS_ARG_INT, NULL), QS_OPT("tokens", QS_ARG_INT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_RECALC, cmd_set_calib,
     "use the first N samples of the calibration split (transformers: N windows; tokens=N: "
     "N / ctx windows, at least one)",
     NULL},
    {"set memory", 0, 0,
     QS_ARGS(QS_OPT("weights", QS_ARG_WORD, "SIZE"), QS_OPT("acts", QS_ARG_WORD, "SIZE")),
     QS_CMD_JOURNAL | QS_CMD_SPARES, cmd_set_memory,
     "memory budgets: weights= the decoded quantized weights cache (0: only the site in use), "
     "acts= captured activations; SIZE in bytes or with K, M, G (binary); none: show them",
     NULL},
    {"set ctx", 0, 1, QS_ARGS(QS_POS("N|model", QS_ARG_INT, "N|model")),
     QS_CMD_JOURNAL | QS_CMD_RECALC | QS_CMD_SPARES, cmd_set_ctx,
     "transformers: calibration, held-out and training windows of N tokens (at most the "
     "model's context; model: the whole context, the default); none: show it",
     NULL},
    {"set heldout", 0, 1,
     QS_ARGS(QS_POS("N|all", QS_ARG_INT, "N|all"), QS_OPT("tokens", QS_ARG_INT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_RECALC | QS_CMD_SPARES, cmd_set_heldout,
     "transformers: held-out runs take the first N windows (tokens=N: N / ctx rounded up; all: "
     "every one, the default); the gate stays on the whole split; none: show it",
     NULL},
    {"set split", 0, 0,
     QS_ARGS(QS_OPT("seed", QS_ARG_INT, NULL), QS_OPT("train", QS_ARG_FLOAT, NULL),
             QS_OPT("calib", QS_ARG_FLOAT, NULL)),
     QS_CMD_JOURNAL | QS_CMD_RECALC, cmd_set_split,
     "re-make the deterministic train/calib/test split", NULL},
    {"set gate", 1, 1, QS_ARGS(QS_POS("F", QS_ARG_FLOAT, NULL)), QS_CMD_JOURNAL | QS_CMD_RECALC,
     cmd_set_gate, "task-learned gate: required share of the headroom over chance (default 0.8)",
     NULL},
    {"set lmgate", 1, 1, QS_ARGS(QS_POS("F", QS_ARG_FLOAT, NULL)), QS_CMD_JOURNAL | QS_CMD_RECALC,
     cmd_set_lmgate,
     "language models' gate: the float loss must be this share below the unigram entropy (0.25)",
     NULL},
    {"set bail", 1, 1, QS_ARGS(QS_POS("on|off", QS_ARG_ENUM, "on|off")), QS_CMD_SPARES,
     cmd_set_bail, "in scripts, stop at the first error (on) or go on", NULL},
    {"quant", 2, 2,
     QS_ARGS(QS_POS("PATTERN", QS_ARG_PATTERN, NULL), QS_POS("FORMAT", QS_ARG_FORMAT, NULL),
             QS_OPT("gran", QS_ARG_ENUM, "tensor|channel|group:N"),
             QS_OPT("clip", QS_ARG_ENUM, "max|mse|pct:P"),
             QS_OPT("round", QS_ARG_ENUM, "nearest|stochastic"),
             QS_OPT("range", QS_ARG_ENUM, "restricted|full"), QS_FLAG("asym"), QS_FLAG("sym"),
             QS_OPT("sat", QS_ARG_ENUM, "0|1"), QS_OPT("scale", QS_ARG_ENUM, "f16|f32|none"),
             QS_OPT("seed", QS_ARG_INT, NULL), QS_OPT("on", QS_ARG_ENUM, "w|a|wa|aw"),
             QS_OPT("amode", QS_ARG_ENUM, "dynamic|token|static"),
             QS_OPT("method", QS_ARG_ENUM, "rtn|gptq|awq"), QS_OPT("damp", QS_ARG_FLOAT, NULL),
             QS_OPT("order", QS_ARG_ENUM, "act|col"), QS_OPT("inputs", QS_ARG_ENUM, "float|quant"),
             QS_OPT("weight", QS_ARG_ENUM, "imatrix|plain"),
             QS_OPT("rotate", QS_ARG_ENUM, "hadamard|none"),
             QS_OPT("smooth", QS_ARG_FLOAT, "A|none")),
     QS_CMD_JOURNAL | QS_CMD_MODEL | QS_CMD_RECALC, cmd_quant,
     "quantize the layers matching a glob pattern (newest rule first; first match wins)",
     "FORMAT (`formats` lists every name): none, int2..int8, fp8-e4m3, fp8-e5m2, fp8-e3m4, "
     "eXmY[bZ], e0m7 (e0mY), fp6-e2m3, fp6-e3m2, fp4-e2m1, fp16 and bf16 (plain casts, no scale: "
     "gran=, clip= and scale= do not apply), mxfp8, mxfp8-e5m2, mxfp6, mxfp6-e3m2, mxfp4, "
     "mxint8, nvfp4, nf4, compand:B, and llama.cpp's "
     "q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k (its block layouts and "
     "reference rounding, no options; as llama-quantize, k-quants on rows not a multiple of 256 "
     "fall back to q4_0 (q2_k, q3_k), q5_0 (q4_k), q5_1 (q5_k), q8_0 (q6_k), or f16 when the row "
     "is not a multiple of 32 either; the 32-element types refuse such rows); after load "
     "reference, "
     "gguf: the paired GGUF's own weights (see load reference). on= picks the "
     "roles (default: the regime's). Activations: amode=dynamic (default) scales each tensor (or "
     "each group of a token with gran=group:N), amode=token each token, amode=static uses the "
     "absmax calibrated on the float calibration inputs; gran=channel applies to weights only. "
     "Methods (qscope-methods(7)): method=gptq (error feedback with H = 2 X^T X, damp=0.01 of "
     "its mean diagonal, order=act for activation order), method=awq (per-input-channel scales "
     "searched on the local error, kept as an explicit input scale), weight=imatrix "
     "(importance-weighted scale search), rotate=hadamard (a randomized Hadamard basis, exact in "
     "float), smooth=A (SmoothQuant, for weight+activation); their statistics come from the "
     "calibration inputs of the partly quantized model, sites in forward order (inputs=float: "
     "the float model's)."},
    {"rules", 0, 0, NULL, QS_CMD_MODEL, cmd_rules,
     "list the quantization rules in order and their layers", NULL},
    {"regime", 1, 1, QS_ARGS(QS_POS("weight|act|full", QS_ARG_ENUM, "weight|act|full")),
     QS_CMD_JOURNAL | QS_CMD_MODEL | QS_CMD_RECALC, cmd_regime,
     "default roles of rules: weights, activations or both", NULL},
    {"roundtrip", 2, -1,
     QS_ARGS(QS_POS("FORMAT", QS_ARG_FORMAT, NULL), QS_POS("VALUE", QS_ARG_FLOAT, NULL),
             QS_OPT("sat", QS_ARG_ENUM, "0|1")),
     QS_CMD_JOURNAL | QS_CMD_SPARES, cmd_roundtrip,
     "quantize values in the bare format (scale 1; block formats: the values form one block)",
     "Each value is read as a float32, as weights are, and that float32 value is rounded: a "
     "9-digit decimal of an exact tie between two codes rounds to the even code."},
    {"formats", 0, 0, NULL, QS_CMD_SPARES, cmd_formats,
     "list every format name with its element bits, block size and largest value", NULL},
    {"codes", 1, 1, QS_ARGS(QS_POS("FORMAT", QS_ARG_FORMAT, NULL)), QS_CMD_JOURNAL | QS_CMD_SPARES,
     cmd_codes, "list every code of a format and its value", NULL},
    {"export model", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL), QS_FLAG("packed")),
     QS_CMD_JOURNAL | QS_CMD_MODEL | QS_CMD_WRITES | QS_CMD_SCRATCH, cmd_export_model,
     "write the quantized model: dequantized weights, or packed codes and scales",
     "An MLP: PATH.safetensors, with packed: codes and scales. A transformer: PATH a folder "
     "(Hugging Face, dequantized weights, corrections folded in; with packed: codes, scales "
     "and fitted factors, dequantized by load model), or PATH.gguf for a llama "
     "(llama.cpp: sites in ggml types keep their blocks, others F32; corrections and "
     "activation quantization left out, and said so; no tokenizer keys)."},
    {"help", 0, 2, QS_ARGS(QS_POS("COMMAND", QS_ARG_WORD, NULL)), QS_CMD_SPARES, cmd_help,
     "list commands, or describe one", NULL},
    {"quit", 0, 0, NULL, QS_CMD_SPARES, cmd_quit, "leave qscope", NULL},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
