/* cmd_gguf.c - a quantized llama.cpp GGUF beside its float original: `load reference F` makes F
 * the model (the float path) and the GGUF's own site weights the quantized path, through the
 * `gguf` rule kind (lm_gguf.h; bench.c resolves it per site). */
#include "cmd_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_lm.h"
#include "qscope/ggml.h"
#include "qscope/gguf.h"
#include "qscope/lm_gguf.h"

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n > k && !strcmp(s + n - k, suf);
}

/* "q4_k" for a ggml type (lower case), into buf. */
static const char *type_lc(int t, char *buf, size_t n)
{
    const char *s = t == QS_GGML_F16 ? "f16" : qs_ggml_type_name(t);
    snprintf(buf, n, "%s", s ? s : "?");
    for (char *p = buf; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
    return buf;
}

/* A reference GGUF must be float: 0, or -1 naming its first tensor in a block type. */
static int float_gguf(const char *file, const char *shown, qs_err *e)
{
    struct qs_gguf_file *g;
    if (qs_gguf_open(file, &g, e) < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < qs_gguf_count(g) && rc == 0; i++) {
        const struct qs_gguf_tensor *t = qs_gguf_get(g, i);
        if (t->type != QS_GGML_F32 && t->type != QS_GGML_F16 && t->type != QS_GGML_BF16) {
            char tb[24];
            rc = qs_errf(e,
                         "load reference: %s is not a float model: tensor '%s' is %s (the "
                         "reference must be the float original, F32/F16/BF16)",
                         shown, t->name, qs_gguf_type_name(t->type, tb, sizeof tb));
        }
    }
    qs_gguf_close(g);
    return rc;
}

int qs_cmd_load_reference(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one PATH (the spec's arity) */
    struct qs_bench *b = c->b;
    const char *gpath = b->gguf ? qs_lm_gguf_sites_path(b->gguf) : b->model_path;
    if (!b->lm || !gpath || !ends_with(gpath, ".gguf"))
        return qs_errf(e, "load reference: the model must be a quantized llama.cpp GGUF (load "
                          "model X.gguf first); the reference is its float original");
    char *gp = qs_strdup(gpath);
    if (!gp)
        return qs_errf(e, "out of memory");
    char rb[4096];
    const char *file = qs_cmd_input_path(argv[0], rb, sizeof rb);
    struct qs_lm *ref = NULL;
    int rc;
    if (ends_with(file, ".gguf") && (rc = float_gguf(file, argv[0], e)) < 0)
        ;
    else if (ends_with(file, ".gguf"))
        rc = qs_lm_load_gguf(file, &ref, e);
    else if (qs_cmd_is_lm_path(file))
        rc = qs_lm_load(file, &ref, e);
    else
        rc = qs_errf(e,
                     "load reference: %s is neither a .gguf file nor a model folder "
                     "(config.json + model.safetensors)",
                     argv[0]);
    struct qs_lm_gguf_sites *sites = NULL;
    struct qs_lm_gguf_pair_info info;
    if (rc == 0 && qs_lm_gguf_sites_open(gp, ref, &sites, &info, e) < 0)
        rc = -1;
    if (rc == 0 && info.nsites_quant == 0) /* the other way round? */
        rc = qs_errf(e,
                     "load reference: %s holds no site in a ggml block type (all F32/F16/BF16): "
                     "load the quantized GGUF as the model and its float original as the "
                     "reference",
                     gp);
    if (rc < 0)
        qs_lm_gguf_sites_free(sites);
    if (rc < 0) {
        qs_lm_free(ref);
        free(gp);
        return -1;
    }
    /* staged like load model: the token data stays if it fits; a failure changes nothing */
    struct qs_bench *st = qs_bench_stage(b, QS_KEEP_TOKENS);
    if (!st) {
        qs_lm_free(ref);
        qs_lm_gguf_sites_free(sites);
        free(gp);
        return qs_errf(e, "out of memory");
    }
    if (qs_bench_set_lm(st, ref, file, e) < 0) {
        qs_lm_gguf_sites_free(sites);
        free(gp);
        qs_bench_abort(b, st, QS_KEEP_TOKENS);
        return -1;
    }
    st->gguf = sites;
    /* one rule: every site takes the GGUF's own weights; earlier rules are replaced */
    int ndropped = st->nrules;
    struct qs_rule r;
    memset(&r, 0, sizeof r);
    snprintf(r.pattern, sizeof r.pattern, "*");
    qs_format_gguf_own(&r.fmt);
    qs_qopts_default(&r.opt);
    r.roles = QS_ROLE_W;
    st->nrules = 0;
    if (qs_bench_add_rule(st, &r, NULL, e) < 0) {
        free(gp);
        qs_bench_abort(b, st, QS_KEEP_TOKENS);
        return -1;
    }
    qs_bench_commit(b, st);
    char q[600];
    snprintf(c->canon, sizeof c->canon, "load reference %s", qs_quote(argv[0], q, sizeof q));

    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "load reference");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddStringToObject(o, "gguf", gp);
    cJSON_AddNumberToObject(o, "sites", b->lm->nsites);
    cJSON_AddNumberToObject(o, "sites_quantized", info.nsites_quant);
    qs_json_num(o, "bits_per_weight", qs_bench_bits_per_weight(b));
    char tb[24];
    cJSON_AddStringToObject(o, "token_embd",
                            info.embd_type >= 0 ? type_lc(info.embd_type, tb, sizeof tb) : "");
    qs_json_num(o, "token_embd_max_diff", info.embd_max_diff);
    qs_json_num(o, "norm_max_diff", info.norm_max_diff);
    struct qs_sb t = {0};
    qs_sb_printf(&t,
                 "reference %s: the float path (%d blocks, d_model %d, %d linear sites); the "
                 "quantized path: %s's own weights, dequantized per site (%d in block types), "
                 "%.4f bits/weight",
                 argv[0], b->lm->n_layer, b->lm->d_model, b->lm->nsites, gp, info.nsites_quant,
                 qs_bench_bits_per_weight(b));
    /* the types, counted */
    int counted[QS_GGML_NTYPES] = {0};
    for (int s = 0; s < b->lm->nsites; s++) {
        int ty = qs_lm_gguf_site_type(b->gguf, s);
        if (ty >= 0 && ty < QS_GGML_NTYPES)
            counted[ty]++;
    }
    qs_sb_printf(&t, "\nsite types:");
    for (int ty = 0; ty < QS_GGML_NTYPES; ty++)
        if (counted[ty])
            qs_sb_printf(&t, " gguf:%s x%d", type_lc(ty, tb, sizeof tb), counted[ty]);
    qs_sb_printf(&t, " (rule * gguf%s; see rules)",
                 ndropped ? ", replacing the earlier rules" : "");
    qs_sb_printf(&t,
                 "\nnot sites: token_embd (%s in the GGUF, max |GGUF - reference| %.3g) and the "
                 "norms (max |diff| %.3g): both paths use the reference's",
                 info.embd_type >= 0 ? type_lc(info.embd_type, tb, sizeof tb) : "missing",
                 info.embd_max_diff, info.norm_max_diff);
    qs_emit(c, o, t.s);
    qs_sb_free(&t);
    free(gp);
    return 0;
}

int qs_cmd_gguf_rule(struct qs_ctx *c, int argc, char **argv, struct qs_rule *r, qs_err *e)
{
    if (!c->b->gguf)
        return qs_errf(e, "quant: format gguf takes a paired GGUF's own weights: load model "
                          "X.gguf, then load reference F (its float original)");
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "on=w"))
            return qs_errf(e,
                           "quant: gguf takes no options (the GGUF's own weights, as stored; "
                           "weights only): '%s'",
                           argv[i]);
    qs_format_gguf_own(&r->fmt);
    qs_qopts_default(&r->opt);
    r->roles = QS_ROLE_W;
    return 0;
}

void qs_cmd_gguf_quant_note(struct qs_ctx *c, cJSON *o, struct qs_sb *t)
{
    struct qs_bench *b = c->b;
    if (!b->gguf || qs_format_is_gguf_own(&b->rules[0].fmt))
        return;
    cJSON *arr = NULL;
    int n = 0;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        if (b->ls[i].rule_w != 0)
            continue;
        struct qs_unit u;
        qs_bench_unit(b, i, &u);
        int below = 0; /* a gguf rule would have given this site its GGUF weights */
        for (int k = 1; k < b->nrules && !below; k++)
            below = qs_format_is_gguf_own(&b->rules[k].fmt) &&
                    qs_glob_match(b->rules[k].pattern, u.name);
        if (!below)
            continue;
        if (!arr)
            arr = cJSON_AddArrayToObject(o, "requantized");
        cJSON_AddItemToArray(arr, cJSON_CreateString(u.name));
        n++;
    }
    if (n)
        qs_sb_printf(t,
                     "\n%d site%s re-quantized from the float reference instead of taking the "
                     "GGUF's own weights (quant PATTERN gguf gives them back)",
                     n, n == 1 ? "" : "s");
}

void qs_cmd_gguf_rule_sites(struct qs_ctx *c, int k, cJSON *jr, struct qs_sb *t)
{
    struct qs_bench *b = c->b;
    cJSON *js = cJSON_CreateArray();
    /* one line a type: "gguf:q4_k  name (blk.0.attn_q), ..." */
    for (int pass = 0; pass < qs_bench_nunits(b); pass++) {
        const struct qs_layer_state *s0 = &b->ls[pass];
        if (s0->rule_w != k)
            continue;
        int first = 1;
        for (int j = 0; j < pass && first; j++)
            first = !(b->ls[j].rule_w == k && !strcmp(b->ls[j].wfmt.name, s0->wfmt.name));
        if (!first)
            continue;
        qs_sb_printf(t, "\n      %-10s", s0->wfmt.name);
        int m = 0;
        for (int i = pass; i < qs_bench_nunits(b); i++) {
            const struct qs_layer_state *s = &b->ls[i];
            if (s->rule_w != k || strcmp(s->wfmt.name, s0->wfmt.name))
                continue;
            struct qs_unit u;
            qs_bench_unit(b, i, &u);
            char tn[80];
            snprintf(tn, sizeof tn, "%s", qs_lm_gguf_site_tensor(b->gguf, i));
            char *dot = strstr(tn, ".weight");
            if (dot)
                *dot = 0;
            qs_sb_printf(t, "%s %s (%s)", m++ ? "," : "", u.name, tn);
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "name", u.name);
            cJSON_AddStringToObject(x, "tensor", tn);
            cJSON_AddStringToObject(x, "format", s->wfmt.name);
            cJSON_AddItemToArray(js, x);
        }
    }
    cJSON_AddItemToObject(jr, "sites", js);
}
