/* cmd_lm.c - the transformer branches of load model/data, info, eval, error and the gate. */
#include "cmd_lm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/lm_gguf.h"
#include "qscope/lmbench.h"
#include "qscope/tokenizer.h"
#include "qscope/tokens.h"

int qs_cmd_is_lm_path(const char *path)
{
    struct stat st;
    char cfg[4200];
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return 0;
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    return stat(cfg, &st) == 0;
}

static const char *family_name(const struct qs_lm *m)
{
    return m->arch[0]                ? m->arch
           : m->family == QS_LM_GPT2 ? "gpt2"
                                     : "llama"; /* llama, qwen2, ... */
}

static int is_txt(const char *f)
{
    size_t n = strlen(f);
    return n >= 4 && !strcmp(f + n - 4, ".txt");
}

/* Token data FILE for model m: a .txt through m's folder's tokenizer.json when it has one. */
static int load_tokens(const struct qs_lm *m, const char *file, int width, struct qs_tokens **tk,
                       qs_err *e)
{
    struct qs_tokenizer *tz = NULL;
    char tj[4200];
    struct stat sb;
    snprintf(tj, sizeof tj, "%s/tokenizer.json", m->path);
    if (is_txt(file) && stat(tj, &sb) == 0 && qs_tokenizer_load(tj, &tz, e) < 0)
        return -1;
    int rc = qs_tokens_load_as(file, width, tz, tk, e);
    qs_tokenizer_free(tz);
    return rc;
}

int qs_cmd_lm_load_model(struct qs_ctx *c, const char *path, const char *file, qs_err *e)
{
    struct qs_lm *m;
    /* the load reports its progress and stops on cancel, as the analyses do: the bench is left
     * as it was */
    struct qs_lm_load_hooks h = {c->b->progress, c->b->progress_ctx, &c->b->cancel};
    if (qs_lm_load_ex(file, &h, &m, e) < 0)
        return -1;
    /* Text data is tokenized again for the new model (its tokenizer.json, or bytes), as if it
     * were loaded after it; other token data is staged as it is (kept if it fits the new
     * model; CSV data goes). */
    struct qs_tokens *tk = NULL;
    char *dp = NULL;
    if (c->b->tokens && c->b->data_path && is_txt(c->b->data_path) &&
        (!(dp = qs_strdup(c->b->data_path)) || load_tokens(m, dp, QS_TOK_AUTO, &tk, e) < 0)) {
        if (!dp)
            qs_errf(e, "out of memory");
        free(dp);
        qs_lm_free(m);
        return -1;
    }
    int keep = tk ? 0 : QS_KEEP_TOKENS;
    struct qs_bench *st = qs_bench_stage(c->b, keep);
    if (!st) {
        qs_lm_free(m);
        qs_tokens_free(tk);
        free(dp);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_lm(st, m, file, e) < 0) {
        qs_tokens_free(tk);
        free(dp);
        qs_bench_abort(c->b, st, keep);
        return -1;
    }
    if (tk && qs_bench_set_tokens(st, tk, dp, e) < 0) { /* too few for the new context: gone */
        qs_tokens_free(st->tokens);
        st->tokens = NULL;
        free(st->data_path);
        st->data_path = NULL;
    }
    free(dp);
    qs_bench_commit(c->b, st);
    char q[600];
    snprintf(c->canon, sizeof c->canon, "load model %s", qs_quote(path, q, sizeof q));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "load model");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddStringToObject(o, "arch", family_name(m));
    cJSON_AddNumberToObject(o, "layers", m->nsites);
    cJSON_AddNumberToObject(o, "params", (double)qs_lm_nparams(m));
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "model %s: %s, %d blocks, d_model %d, %d heads (%d kv), context %d, vocab %d; "
                 "%d linear sites, %ld parameters%s",
                 path, family_name(m), m->n_layer, m->d_model, m->n_head, m->n_kv_head, m->ctx,
                 m->vocab, m->nsites, qs_lm_nparams(m), m->tied ? " (tied head)" : "");
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

int qs_cmd_load_peek(const char *model, const char *data, struct qs_lm **skel, qs_err *e)
{
    *skel = NULL;
    char rb[4096], db[4096];
    const char *file = qs_cmd_input_path(model, rb, sizeof rb);
    if (!qs_cmd_is_lm_path(file))
        return qs_errf(e, "%s: not a Hugging Face folder", model);
    struct stat st;
    const char *df = data ? qs_cmd_input_path(data, db, sizeof db) : NULL;
    if (df && (stat(df, &st) < 0 || !S_ISREG(st.st_mode) || access(df, R_OK) < 0))
        return qs_errf(e, "%s: not a readable file", data);
    return qs_lm_peek(file, skel, e);
}

int qs_cmd_lm_load_data(struct qs_ctx *c, const char *path, const char *file, int width, qs_err *e)
{
    struct qs_tokens *tk;
    if (load_tokens(c->b->lm, file, width, &tk, e) < 0)
        return -1;
    struct qs_bench *st = qs_bench_stage(c->b, QS_KEEP_MODEL);
    if (!st) {
        qs_tokens_free(tk);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_tokens(st, tk, file, e) < 0) {
        qs_bench_abort(c->b, st, QS_KEEP_MODEL);
        return -1;
    }
    qs_bench_commit(c->b, st);
    char q[600];
    snprintf(c->canon, sizeof c->canon, "load data %s%s", qs_quote(path, q, sizeof q),
             width == QS_TOK_U32   ? " dtype=uint32"
             : width == QS_TOK_U16 ? " dtype=uint16"
                                   : "");
    size_t off;
    int cw;
    qs_bench_lm_split(c->b, &off, &cw);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "load data");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddNumberToObject(o, "tokens", (double)tk->n);
    cJSON_AddNumberToObject(o, "test_tokens", (double)(tk->n - off));
    cJSON_AddNumberToObject(o, "calib_windows", cw);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "data %s: %zu tokens; held out: the last %zu; calibration: %d windows of %d",
                 path, tk->n, tk->n - off, cw, c->b->lm->ctx);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

void qs_cmd_lm_info(struct qs_ctx *c, cJSON *o, struct qs_sb *t)
{
    struct qs_bench *b = c->b;
    struct qs_lm *m = b->lm;
    cJSON_AddStringToObject(o, "model", b->model_path ? b->model_path : "");
    cJSON_AddStringToObject(o, "arch", family_name(m));
    cJSON_AddNumberToObject(o, "layers", m->nsites);
    cJSON_AddNumberToObject(o, "params", (double)qs_lm_nparams(m));
    qs_json_num(o, "bits_per_weight", qs_bench_bits_per_weight(b));
    char of[48] = ""; /* set ctx: windows shorter than the context */
    if (m->ctx != m->n_pos) {
        snprintf(of, sizeof of, " of %d (set ctx)", m->n_pos);
        cJSON_AddNumberToObject(o, "n_positions", m->n_pos);
    }
    qs_sb_printf(t,
                 "model   %s (%s, %d blocks, d_model %d, ctx %d%s, vocab %d; %d linear sites, "
                 "%.3f bits/weight)\n",
                 b->model_path, family_name(m), m->n_layer, m->d_model, m->ctx, of, m->vocab,
                 m->nsites, qs_bench_bits_per_weight(b));
    if (b->gguf) { /* load reference: the model is the float original of a quantized GGUF */
        cJSON_AddStringToObject(o, "gguf", qs_lm_gguf_sites_path(b->gguf));
        qs_sb_printf(t,
                     "paired  %s: its own weights on the sites of `gguf` rules (the model "
                     "above is the float reference)\n",
                     qs_lm_gguf_sites_path(b->gguf));
    }
    if (b->tokens) {
        size_t off;
        int cw;
        qs_bench_lm_split(b, &off, &cw);
        cJSON_AddStringToObject(o, "data", b->data_path ? b->data_path : "");
        cJSON_AddNumberToObject(o, "tokens", (double)b->tokens->n);
        cJSON_AddStringToObject(o, "token_source", b->tokens->source);
        cJSON *sp = cJSON_CreateObject();
        cJSON_AddStringToObject(sp, "unit", "window");
        cJSON_AddNumberToObject(sp, "ctx", b->lm->ctx);
        cJSON_AddNumberToObject(sp, "train_tokens", (double)off);
        cJSON_AddNumberToObject(sp, "calib", cw);
        cJSON_AddNumberToObject(sp, "test_tokens", (double)(b->tokens->n - off));
        cJSON_AddNumberToObject(sp, "test",
                                (double)((b->tokens->n - off - 1) / (size_t)b->lm->ctx));
        cJSON_AddItemToObject(o, "split", sp);
        cJSON_AddNumberToObject(o, "calib_windows", cw);
        if (b->calib_tokens > 0)
            cJSON_AddNumberToObject(o, "calib_tokens", b->calib_tokens);
        char st[320];
        qs_bench_split_text(b, st, sizeof st);
        qs_sb_printf(t, "data    %s (%zu tokens from %s)\nsplit   %s\n", b->data_path, b->tokens->n,
                     b->tokens->source, st);
    } else {
        qs_sb_printf(t, "data    (none: load data PATH.txt|.bin)\n");
    }
}

void qs_cmd_lm_gate(struct qs_ctx *c, cJSON *obj, struct qs_sb *text)
{
    struct qs_lm_gate g;
    qs_err e;
    if (qs_bench_lm_gate(c->b, &g, &e) < 0)
        return;
    cJSON *j = cJSON_CreateObject();
    qs_json_num(j, "float_loss", g.float_loss);
    qs_json_num(j, "unigram_entropy", g.unigram);
    qs_json_num(j, "threshold", g.threshold);
    cJSON_AddItemToObject(obj, "task", j);
    cJSON_AddStringToObject(obj, "gate", g.pass ? "pass" : "fail");
    cJSON_AddStringToObject(obj, "regime", qs_regime_name(qs_bench_effective_regime(c->b)));
    if (text) {
        char fig[80];
        snprintf(fig, sizeof fig, "float held-out loss %.4f (ppl %.3f)", g.float_loss,
                 exp(g.float_loss));
        qs_gate_footer(text, qs_regime_name(qs_bench_effective_regime(c->b)), g.pass, fig);
    }
}

void qs_cmd_json_static_amax(cJSON *o, const struct qs_bench *b)
{
    cJSON *sa = NULL;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        const struct qs_layer_state *s = &b->ls[i];
        if (s->afmt.kind == QS_FMT_NONE || s->amode != QS_AMODE_STATIC || s->a_static_amax <= 0)
            continue;
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        if (!sa)
            sa = cJSON_AddObjectToObject(o, "static_amax");
        if (sa)
            qs_json_num(sa, u.name, s->a_static_amax);
    }
}

int qs_cmd_lm_eval(struct qs_ctx *c, qs_err *e)
{
    struct qs_bench *b = c->b;
    struct qs_eval qe;
    struct qs_lm_gate g;
    if (qs_bench_eval(b, &qe, e) < 0 || qs_bench_lm_gate(b, &g, e) < 0)
        return -1;
    struct qs_lm_eval ev = {qe.f.loss, exp(qe.f.loss), qe.q.loss, exp(qe.q.loss),
                            qe.kl,     qe.agree,       qe.q.n};
    enum qs_regime rg = qs_bench_effective_regime(b);
    double bpw = qs_bench_bits_per_weight(b);
    cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject(), *q = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "eval");
    cJSON_AddStringToObject(o, "regime", qs_regime_name(rg));
    cJSON_AddNumberToObject(o, "tokens", (double)ev.ntok);
    qs_json_num(f, "ppl", ev.ppl);
    qs_json_num(f, "loss", ev.loss);
    qs_json_num(q, "ppl", ev.ppl_q);
    qs_json_num(q, "loss", ev.loss_q);
    cJSON_AddItemToObject(o, "float", f);
    cJSON_AddItemToObject(o, "quant", q);
    qs_json_num(o, "kl", ev.kl);
    qs_json_num(o, "top1_agree", ev.top1_agree);
    qs_json_num(o, "bits_per_weight", bpw);
    cJSON_AddStringToObject(o, "gate", g.pass ? "pass" : "fail");
    qs_json_num(o, "gate_threshold", g.threshold);
    qs_cmd_json_static_amax(o, b);
    /* set heldout: the runs' windows are the split's first test_windows, the gate's all */
    int hw = qs_bench_heldout_windows(b), capped = b->test_windows > 0 && b->test_windows < hw;
    char cap[96] = "";
    if (capped) {
        cJSON_AddNumberToObject(o, "heldout_windows", b->test_windows);
        snprintf(cap, sizeof cap, " (the first %d of %d: set heldout; the gate: all)",
                 b->test_windows, hw);
    }
    struct qs_sb t = {0};
    qs_sb_printf(&t, "regime %s, %.3f bits/weight; held-out %ld tokens in windows of %d%s\n",
                 qs_regime_name(rg), bpw, ev.ntok, b->lm->ctx, cap);
    qs_sb_printf(&t, "          %9s %8s\n", "ppl", "loss");
    qs_sb_printf(&t, "float     %9.4f %8.4f\n", ev.ppl, ev.loss);
    qs_sb_printf(&t, "quant     %9.4f %8.4f   (delta loss %+.4f)\n", ev.ppl_q, ev.loss_q,
                 ev.loss_q - ev.loss);
    qs_sb_printf(&t, "KL(float||quant) %.6g per token, top-1 agreement %.4f\n", ev.kl,
                 ev.top1_agree);
    qs_sb_printf(&t,
                 "gate %s: float loss %.4f %s %.4f (= %.2f x the unigram entropy %.4f of "
                 "the held-out tokens)",
                 g.pass ? "pass" : "FAIL", g.float_loss, g.pass ? "<=" : ">", g.threshold,
                 1 - b->gate_lm, g.unigram);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    return 0;
}

int qs_cmd_lm_correct(struct qs_ctx *c, const int *idx, int n, enum qs_corr_method m, int rank,
                      const char *prec, double lambda, const char *opts, qs_err *e)
{
    struct qs_bench *b = c->b;
    struct qs_sb t = {0};
    int done = 0;
    int lowrank =
        m == QS_CORR_LOWRANK || m == QS_CORR_LQER || m == QS_CORR_QERA || m == QS_CORR_EORA;
    for (int k = 0; k < n; k++) {
        int s = idx[k];
        const struct qs_layer_state *ls = &b->ls[s];
        if (n > 1 &&
            (lowrank ? !ls->wquant : ls->wfmt.kind == QS_FMT_NONE && ls->afmt.kind == QS_FMT_NONE))
            continue; /* a pattern skips float sites */
        if (qs_analysis_correct(b, s, m, rank, prec, lambda, NULL, e) < 0) {
            qs_sb_free(&t);
            return -1;
        }
        const struct qs_corr *cr = &b->ls[s].corr;
        const struct qs_lm_site *st = &b->lm->sites[s];
        double sbits =
            ls->wquant ? 8.0 * (double)qs_packed_bytes(&ls->packed) : 32.0 * st->out * st->in;
        double bpw = (sbits + cr->bits + ls->xform_bits) / ((double)st->out * st->in);
        cJSON *o = qs_cmd_correct_result(st->name, cr, bpw, !lowrank);
        if (lowrank) {
            qs_sb_printf(&t,
                         "%s%s %s r=%d%s%s: recovery R = %.4f on held-out windows (calib "
                         "%.4f), +%ld params, site %.3f bits/weight",
                         done ? "\n" : "", st->name, qs_corr_name(m), rank,
                         strcmp(cr->prec, "float") ? " prec=" : "",
                         strcmp(cr->prec, "float") ? cr->prec : "", cr->recovery,
                         cr->recovery_calib, cr->params, bpw);
        } else { /* the MLP's wording (cmd_correct) */
            char calib[48];
            if (m == QS_CORR_CLOCAL)
                snprintf(calib, sizeof calib, "fitted there, float inputs");
            else
                snprintf(calib, sizeof calib, "calib %.4f", cr->recovery_calib);
            qs_sb_printf(&t,
                         "%s%s %s%s: recovery R = %.4f on held-out windows (%s), +%ld params "
                         "(+%.0f bits), site %.3f bits/weight",
                         done ? "\n" : "", st->name, qs_corr_name(m), opts ? opts : "",
                         cr->recovery, calib, cr->params, cr->bits, bpw);
            if (cr->amap)
                qs_sb_printf(&t, "; ridge lambda %.3g, rank kept %d of %d", cr->lambda,
                             cr->rank_kept, st->out);
            if (m == QS_CORR_CLOCAL)
                qs_sb_printf(&t, " [upper baseline, not deployable]");
        }
        qs_cmd_lm_gate(c, o, NULL);
        qs_emit(c, o, NULL);
        done++;
    }
    if (!done) {
        qs_sb_free(&t);
        return qs_errf(e, "correct: every site matching the pattern is in float");
    }
    struct qs_eval ev;
    if (qs_bench_eval(b, &ev, e) < 0) {
        qs_sb_free(&t);
        return -1;
    }
    qs_sb_printf(&t,
                 "\nquantized+corrected: ppl %.4f (float %.4f), KL %.6g, top-1 agreement %.4f\n",
                 exp(ev.q.loss), exp(ev.f.loss), ev.kl, ev.agree);
    cJSON *g = cJSON_CreateObject(); /* the gate's text only */
    qs_cmd_lm_gate(c, g, &t);
    cJSON_Delete(g);
    qs_emit_text(c, t.s);
    qs_sb_free(&t);
    return 0;
}
