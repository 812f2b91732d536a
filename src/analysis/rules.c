/* rules.c - the quant rules (pattern -> format, options, method, role), their resolution into
 * each site's formats and codes (qs_bench_resolve), and the descriptions of a site's formats
 * and of the split. */
#include "qscope/bench.h"
#include "qscope/lm_gguf.h"
#include "qscope/lmbench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"
#include "qscope/safetensors.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- rules ---------------------------------------------------------------------------- */

int qs_bench_add_rule(struct qs_bench *b, const struct qs_rule *r, int *nmatched, qs_err *e)
{
    /* A rule with the same pattern and roles replaces the old one; new rules go first so that
     * the latest `quant` wins where patterns overlap ("first match wins" over the listed order). */
    int k = 0;
    for (int i = 0; i < b->nrules; i++)
        if (!(strcmp(b->rules[i].pattern, r->pattern) == 0 && b->rules[i].roles == r->roles))
            b->rules[k++] = b->rules[i];
    b->nrules = k;
    if (b->nrules == (int)(sizeof b->rules / sizeof b->rules[0]))
        return qs_errf(e, "too many quantization rules (%d); clear some with `quant * none`",
                       b->nrules);
    memmove(&b->rules[1], &b->rules[0], (size_t)b->nrules * sizeof b->rules[0]);
    b->rules[0] = *r;
    b->nrules++;
    /* `quant * ...` covers everything: older rules are shadowed for good, drop them. */
    if (!strcmp(r->pattern, "*") && r->roles == 0)
        b->nrules = 1;
    if (qs_bench_resolve(b, e) < 0)
        return -1;
    if (nmatched)
        *nmatched = b->rules[0].matched;
    return 0;
}

int qs_bench_clear_rules(struct qs_bench *b)
{
    b->nrules = 0;
    return qs_bench_resolve(b, NULL);
}

int qs_bench_set_regime(struct qs_bench *b, enum qs_regime r, qs_err *e)
{
    b->regime = r;
    return qs_bench_resolve(b, e);
}

static int role_default(const struct qs_bench *b)
{
    return b->regime == QS_REGIME_WEIGHT ? QS_ROLE_W
           : b->regime == QS_REGIME_ACT  ? QS_ROLE_A
                                         : QS_ROLE_W | QS_ROLE_A;
}

static int find_rule(const struct qs_bench *b, const char *name, int role)
{
    for (int k = 0; k < b->nrules; k++) {
        int roles = b->rules[k].roles ? b->rules[k].roles : role_default(b);
        if (qs_format_is_gguf_own(&b->rules[k].fmt) && (!b->gguf || role != QS_ROLE_W))
            continue; /* the paired GGUF's own weights: weights only, with a pairing */
        if ((roles & role) && qs_glob_match(b->rules[k].pattern, name))
            return k;
    }
    return -1;
}

static void cfg_key(const struct qs_format *f, const struct qs_qopts *o, int amode, char *buf,
                    size_t n)
{
    char opts[160] = "";
    if (f->kind != QS_FMT_NONE)
        qs_qopts_format(f, o, opts, sizeof opts);
    snprintf(buf, n, "%s %s %d", f->name, opts, amode);
}

void qs_layer_state_plain(struct qs_layer_state *s)
{
    memset(s, 0, sizeof *s);
    s->rule_w = s->rule_a = -1;
    s->wfmt.kind = s->afmt.kind = QS_FMT_NONE;
    snprintf(s->wfmt.name, sizeof s->wfmt.name, "none");
    snprintf(s->afmt.name, sizeof s->afmt.name, "none");
    qs_qopts_default(&s->wopt);
    qs_qopts_default(&s->aopt);
    s->amode = QS_AMODE_DYNAMIC;
    qs_rule_method_default(&s->wm);
}

int qs_bench_resolve(struct qs_bench *b, qs_err *e)
{
    for (int k = 0; k < b->nrules; k++)
        b->rules[k].matched = 0;
    struct qs_layer_state pl, *plain = &pl; /* what no rule changes */
    qs_layer_state_plain(plain);
    int upstream = 0; /* a site before this one computes differently now */
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        struct qs_unit unit, *l = &unit;
        qs_bench_unit(b, i, &unit);
        struct qs_layer_state *s = &b->ls[i];
        int rw = find_rule(b, l->name, QS_ROLE_W), ra = find_rule(b, l->name, QS_ROLE_A);
        struct qs_format wf = plain->wfmt, af = plain->afmt;
        struct qs_qopts wo = plain->wopt, ao = plain->aopt;
        enum qs_amode am = plain->amode;
        if (rw >= 0) {
            wf = b->rules[rw].fmt;
            wo = b->rules[rw].opt;
            b->rules[rw].matched++;
            /* a `gguf` rule: the site's own tensor type in the paired GGUF ("gguf:q4_k") */
            if (qs_format_is_gguf_own(&wf) && qs_lm_gguf_site_format(b->gguf, i, &wf, e) < 0)
                return -1;
        }
        if (ra >= 0) {
            af = b->rules[ra].fmt;
            ao = b->rules[ra].opt;
            am = b->rules[ra].amode;
            if (ra != rw)
                b->rules[ra].matched++;
        }
        /* the site's method: its weight rule's. The basis (rotation, smoothing) is the site's,
         * for weights and activations alike: the weight rule's, else the activation rule's
         * (not smoothing under AWQ, whose own scales are the site's channel scales) */
        struct qs_rule_method wm = plain->wm;
        if (rw >= 0 && wf.kind != QS_FMT_NONE)
            wm = b->rules[rw].meth;
        if (!wm.rotate && !wm.smooth_on && ra >= 0 && af.kind != QS_FMT_NONE) {
            const struct qs_rule_method *am = &b->rules[ra].meth;
            if (am->rotate) {
                wm.rotate = 1;
                wm.seed = am->seed;
            } else if (am->smooth_on && wm.method != QS_METHOD_AWQ) {
                wm.smooth_on = 1;
                wm.smooth = am->smooth;
            }
        }
        int custom = qs_rule_method_custom(&wm);
        char oldw[256], neww[256], olda[256], newa[256], oldm[200], newm[200];
        cfg_key(&s->wfmt, &s->wopt, 0, oldw, sizeof oldw);
        cfg_key(&wf, &wo, 0, neww, sizeof neww);
        cfg_key(&s->afmt, &s->aopt, (int)s->amode, olda, sizeof olda);
        cfg_key(&af, &ao, (int)am, newa, sizeof newa);
        qs_rule_method_format(&s->wm, oldm, sizeof oldm);
        qs_rule_method_format(&wm, newm, sizeof newm);
        int mchanged = strcmp(oldm, newm) != 0 || s->wm.seed != wm.seed;
        /* a sequential method's statistics come from the sites before it: a change there
         * recomputes it */
        int seq =
            custom && wf.kind != QS_FMT_NONE && wm.method != QS_METHOD_RTN && !wm.inputs_float;
        int wchanged = strcmp(oldw, neww) != 0 || mchanged ||
                       (wf.kind != QS_FMT_NONE && !s->wquant && !s->mpending) || (upstream && seq);
        int achanged = strcmp(olda, newa) != 0 || mchanged;
        s->rule_w = rw;
        s->rule_a = ra;
        if ((wchanged || achanged) && custom) {
            /* computed by qs_bench_methods_refresh below, in forward order */
            qs_site_set_packed(b, i, NULL, 0);
            qs_layer_method_clear(s);
            s->wm = wm;
            s->mpending = 1;
            s->wfmt = wf;
            s->wopt = wo;
            s->w_rel_err = 0.0;
            s->afmt = af;
            s->aopt = ao;
            s->amode = am;
            s->a_static_amax = 0.0f;
            s->sens_method[0] = 0;
            qs_corr_clear(&s->corr);
            qs_bench_invalidate(b, i);
            qs_bench_mark_stale(b, i);
            upstream = 1;
            continue;
        }
        if (mchanged) { /* back to plain round-to-nearest */
            qs_layer_method_clear(s);
            s->wm = wm;
            wchanged = achanged = 1;
        }
        if (wchanged) {
            double rel = 0.0;
            if (wf.kind != QS_FMT_NONE) {
                size_t nw = (size_t)l->out * l->in;
                char what[160];
                snprintf(what, sizeof what, "%s: the quantized weight (packed and dequantized)",
                         l->name);
                /* the packed codes (at most a float each) and the dequantized copy */
                if (qs_mem_check(2 * nw * sizeof(float), what, e) < 0)
                    return -1;
                const float *lw = qs_bench_w(b, i, e);
                if (!lw)
                    return -1;
                struct qs_packed p;
                memset(&p, 0, sizeof p);
                if (qs_format_is_gguf_own(&wf)) { /* the GGUF's blocks, not a quantization */
                    if (qs_lm_gguf_site_packed(b->gguf, i, &p, e) < 0)
                        return qs_err_prefix(e, l->name);
                } else if (qs_quant_pack(&wf, &wo, lw, l->out, l->in, &p, e) < 0) {
                    return qs_err_prefix(e, l->name);
                }
                /* the codes replace the site's; their first decode (into the weights cache,
                 * where the next forward finds it) gives the weight error */
                qs_site_set_packed(b, i, &p, 0);
                const float *wq = qs_site_wq(b, i, e);
                if (!wq) {
                    qs_site_set_packed(b, i, NULL, 0);
                    return -1;
                }
                double num = 0.0, den = 0.0;
                for (size_t j = 0; j < nw; j++) {
                    double d = (double)lw[j] - wq[j];
                    num += d * d;
                    den += (double)lw[j] * lw[j];
                }
                rel = den > 0 ? sqrt(num / den) : 0.0;
            } else {
                qs_site_set_packed(b, i, NULL, 0);
            }
            s->wfmt = wf;
            s->wopt = wo;
            s->w_rel_err = rel;
        }
        if (achanged) {
            s->afmt = af;
            s->aopt = ao;
            s->amode = am;
            s->a_static_amax = 0.0f;
        }
        if (wchanged || achanged) {
            s->sens_method[0] = 0;
            qs_corr_clear(&s->corr); /* a correction fitted for another format is stale */
            qs_bench_invalidate(b, i);
            qs_bench_mark_stale(b, i);
            upstream = 1;
        }
    }
    return qs_bench_methods_refresh(b, 0, e);
}

enum qs_regime qs_bench_effective_regime(const struct qs_bench *b)
{
    int w = 0, a = 0;
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        w |= b->ls[i].wfmt.kind != QS_FMT_NONE;
        a |= b->ls[i].afmt.kind != QS_FMT_NONE;
    }
    return w && a ? QS_REGIME_FULL : a ? QS_REGIME_ACT : w ? QS_REGIME_WEIGHT : b->regime;
}

void qs_bench_wdesc(const struct qs_layer_state *s, char *buf, size_t n)
{
    const struct qs_format *f = &s->wfmt;
    const struct qs_qopts *o = &s->wopt;
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE)
        snprintf(buf, n, "float");
    else if (t->fixed_block || t->unscaled) /* fixed blocks of the format, or no scale */
        snprintf(buf, n, "%s", f->name);
    else if (o->gran == QS_GRAN_GROUP)
        snprintf(buf, n, "%s/g%d", f->name, o->group);
    else if (t->blockwise)
        snprintf(buf, n, "%s/%s", f->name, o->gran == QS_GRAN_CHANNEL ? "channel" : "g64");
    else
        snprintf(buf, n, "%s/%s", f->name, o->gran == QS_GRAN_TENSOR ? "tensor" : "channel");
    if (f->kind != QS_FMT_NONE && qs_rule_method_custom(&s->wm)) {
        /* the method, short: +gptq, +awq, +imatrix, +rot, +smooth */
        size_t k = strlen(buf);
        static const char *const mn[] = {"", "+gptq", "+awq", "+imatrix"};
        snprintf(buf + k, n > k ? n - k : 0, "%s%s%s",
                 s->wm.method >= 0 && s->wm.method <= 3 ? mn[s->wm.method] : "",
                 s->wm.rotate ? "+rot" : "", s->wm.smooth_on ? "+smooth" : "");
    }
}

void qs_bench_adesc(const struct qs_layer_state *s, char *buf, size_t n)
{
    const struct qs_format *f = &s->afmt;
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE)
        snprintf(buf, n, "float");
    else if (t->unscaled) /* a plain cast: no scale, so no scale mode either */
        snprintf(buf, n, "%s", f->name);
    else if (s->amode == QS_AMODE_STATIC)
        snprintf(buf, n, "%s/static", f->name);
    else if (s->amode == QS_AMODE_TOKEN)
        snprintf(buf, n, "%s/token", f->name);
    else if (s->aopt.gran == QS_GRAN_GROUP)
        snprintf(buf, n, "%s/g%d", f->name, s->aopt.group);
    else if (t->blockwise)
        snprintf(buf, n, "%s/g64", f->name);
    else if (t->fixed_block)
        snprintf(buf, n, "%s", f->name);
    else
        snprintf(buf, n, "%s/tensor", f->name);
    if (f->kind != QS_FMT_NONE && (s->wm.rotate || s->wm.smooth_on)) {
        size_t k = strlen(buf);
        snprintf(buf + k, n > k ? n - k : 0, "%s%s", s->wm.rotate ? "+rot" : "",
                 s->wm.smooth_on ? "+smooth" : "");
    }
}

/* The split contract, one line for both families (info and every session header state it). */
void qs_bench_split_text(const struct qs_bench *b, char *buf, size_t n)
{
    if (b->lm && b->tokens) {
        size_t off;
        int cw, ctx = b->lm->ctx;
        qs_bench_lm_split(b, &off, &cw);
        size_t held = b->tokens->n - off;
        char budget[64] = "set calib N counts windows";
        if (b->calib_tokens > 0)
            snprintf(budget, sizeof budget, "set calib tokens=%d", b->calib_tokens);
        size_t hw = (held - 1) / (size_t)ctx;
        char cap[64] = "";
        if (b->test_windows > 0 && (size_t)b->test_windows < hw)
            snprintf(cap, sizeof cap, " (runs: its first %d; the gate: all)", b->test_windows);
        snprintf(buf, n,
                 "tokens: train [0, %zu) / calibration: its first %d window%s of %d (%s) / "
                 "held-out [%zu, %zu): the last 10 %%, %zu windows of %d%s",
                 off, cw, cw == 1 ? "" : "s", ctx, budget, off, b->tokens->n, hw, ctx, cap);
    } else if (!b->lm && b->data) {
        snprintf(buf, n,
                 "rows, seed %llu: train %d / calibration %d (using %d; set calib N counts rows) "
                 "/ held-out test %d",
                 (unsigned long long)b->split_seed, b->split.n_train, b->split.n_calib,
                 b->calib_n > 0 ? b->calib_n : b->split.n_calib, b->split.n_test);
    } else {
        snprintf(buf, n, "none (no %s)", b->lm || b->model ? "data" : "model");
    }
}
