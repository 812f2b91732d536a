/* study_record.c - a study's per-setting results written to and read back from a file, bit for
 * bit (%.17g), so that `study merge` sees exactly the rows the in-process study aggregates. */
#include "qscope/study_record.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qscope/sha256.h"

/* The weight formats both studies' options lines begin with: "format=F OPTS; transformers: F
 * OPTS" ("the same" when lm_fmt is NULL). */
static void formats_words(const struct qs_format *fmt, const struct qs_qopts *opt,
                          const struct qs_format *lm_fmt, const struct qs_qopts *lm_opt, char *buf,
                          size_t n)
{
    char op[200] = "", lop[200] = "";
    qs_qopts_format(fmt, opt, op, sizeof op);
    if (lm_fmt && lm_opt)
        qs_qopts_format(lm_fmt, lm_opt, lop, sizeof lop);
    snprintf(buf, n, "format=%s %s; transformers: %s %s", fmt->name, op,
             lm_fmt ? lm_fmt->name : "the same", lop);
}

void qs_q1_record_options(const struct qs_q1_opts *o, char *buf, size_t n)
{
    char fw[500];
    formats_words(&o->fmt, &o->opt, o->lm_fmt, o->lm_opt, fw, sizeof fw);
    snprintf(buf, n, "%s; prec=%s; top_frac=%.17g", fw, o->prec, o->top_frac);
}

/* A double as a raw JSON number at %.17g (round-trips exactly), or a string for NaN and Inf. */
static void put_d(cJSON *j, const char *k, double v)
{
    if (isfinite(v)) {
        char b[40];
        snprintf(b, sizeof b, "%.17g", v);
        cJSON_AddItemToObject(j, k, cJSON_CreateRaw(b));
    } else {
        cJSON_AddStringToObject(j, k, isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    }
}

static void put_i(cJSON *j, const char *k, long long v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    cJSON_AddItemToObject(j, k, cJSON_CreateRaw(b));
}

/* A record's head: its version, study ("q1") and options line; settings follow. */
static cJSON *record_new(const char *study, const char *opts)
{
    cJSON *r = cJSON_CreateObject();
    put_i(r, "qscope_record", QS_RECORD_VERSION);
    cJSON_AddStringToObject(r, "study", study);
    cJSON_AddStringToObject(r, "version", QS_VERSION);
    cJSON_AddStringToObject(r, "options", opts);
    return r;
}

/* Record r (taken) with its settings js (taken) written to path, "complete" last. */
static int record_finish(cJSON *r, cJSON *js, const char *path, qs_err *e)
{
    cJSON_AddItemToObject(r, "settings", js);
    cJSON_AddTrueToObject(r, "complete"); /* last: a cut copy lacks it */
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    if (!text)
        return qs_errf(e, "out of memory");
    qs_outfile of;
    if (qs_out_open(&of, path, e) < 0) {
        free(text);
        return -1;
    }
    fputs(text, of.f);
    fputc('\n', of.f);
    free(text);
    return qs_out_commit(&of, e);
}

int qs_q1_record_write(const struct qs_q1 *q, const struct qs_q1_opts *o, const char *path,
                       qs_err *e)
{
    char opts[600];
    qs_q1_record_options(o, opts, sizeof opts);
    cJSON *r = record_new("q1", opts), *js = cJSON_CreateArray();
    for (int s = 0; s < q->nsettings; s++) {
        const struct qs_q1_setting *st = &q->settings[s];
        cJSON *j = cJSON_CreateObject(), *jl = cJSON_CreateArray();
        cJSON_AddStringToObject(j, "model", st->model);
        cJSON_AddStringToObject(j, "data", st->data);
        put_i(j, "seed", (long long)st->seed);
        put_i(j, "nq1", st->nq1);
        put_i(j, "lm", st->lm);
        cJSON_AddStringToObject(j, "arch", st->arch);
        cJSON_AddStringToObject(j, "format", st->format);
        cJSON_AddStringToObject(j, "options", st->options);
        put_d(j, "float_acc", st->float_acc);
        put_d(j, "quant_acc", st->quant_acc);
        put_d(j, "bits_per_weight", st->bits_per_weight);
        put_i(j, "gate_pass", st->gate_pass);
        put_d(j, "med_r_float", st->med_r_float);
        put_d(j, "med_r_q", st->med_r_q);
        put_d(j, "spearman", st->spearman);
        cJSON_AddStringToObject(j, "verdict", st->verdict);
        for (int i = st->first; i < st->first + st->nlayers; i++) {
            const struct qs_q1_layer *l = &q->layers[i];
            cJSON *x = cJSON_CreateObject();
            put_i(x, "index", l->index);
            cJSON_AddStringToObject(x, "name", l->name);
            put_i(x, "kind", l->kind);
            put_i(x, "nsites", l->nsites);
            put_i(x, "block", l->block);
            put_i(x, "third", l->third);
            put_i(x, "d", l->d);
            put_i(x, "in", l->in);
            put_d(x, "w_rel_err", l->w_rel_err);
            put_d(x, "preact_rel_mse", l->preact_rel_mse);
            put_d(x, "correctability", l->correctability);
            put_d(x, "r_float", l->r_float);
            put_d(x, "r_q", l->r_q);
            put_d(x, "lambda", l->lambda);
            put_i(x, "rank_kept", l->rank_kept);
            cJSON_AddItemToArray(jl, x);
        }
        cJSON_AddItemToObject(j, "layers", jl);
        cJSON_AddItemToArray(js, j);
    }
    return record_finish(r, js, path, e);
}

/* ---- reading ------------------------------------------------------------------------------- */

static int get_d(const cJSON *j, const char *k, double *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
    if (cJSON_IsNumber(x)) {
        *v = x->valuedouble;
        return 0;
    }
    if (cJSON_IsString(x) && x->valuestring) {
        if (!strcmp(x->valuestring, "nan"))
            *v = NAN;
        else if (!strcmp(x->valuestring, "inf"))
            *v = INFINITY;
        else if (!strcmp(x->valuestring, "-inf"))
            *v = -INFINITY;
        else
            return -1;
        return 0;
    }
    return -1;
}

static int get_i(const cJSON *j, const char *k, long long lo, long long hi, long long *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < lo ||
        x->valuedouble > hi)
        return -1;
    *v = (long long)x->valuedouble;
    return 0;
}

static int get_s(const cJSON *j, const char *k, char *buf, size_t n)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
    if (!cJSON_IsString(x) || !x->valuestring || strlen(x->valuestring) >= n)
        return -1;
    memcpy(buf, x->valuestring, strlen(x->valuestring) + 1);
    return 0;
}

static int read_text(const char *path, char **out, qs_err *e)
{
    FILE *f = qs_fopen_regular(path, "record", e);
    if (!f)
        return -1;
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    for (size_t k; s && (k = fread(s + n, 1, cap - n - 1, f)) > 0;) {
        n += k;
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) {
                free(s);
                s = NULL;
            }
            s = t;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!s)
        return qs_errf(e, "out of memory");
    if (bad) {
        free(s);
        return qs_errf(e, "%s: read error", path);
    }
    s[n] = 0;
    *out = s;
    return 0;
}

/* One setting object into st and its rows into ly (room for nl); -1 when malformed. */
static int read_setting(const cJSON *j, struct qs_q1_setting *st, struct qs_q1_layer *ly, int nl)
{
    long long v;
    char verdict[16];
    memset(st, 0, sizeof *st);
    if (get_s(j, "model", st->model, sizeof st->model) ||
        get_s(j, "data", st->data, sizeof st->data) || get_i(j, "seed", 0, (1LL << 53), &v))
        return -1;
    st->seed = (uint64_t)v;
    if (get_i(j, "nq1", 0, nl, &v))
        return -1;
    st->nq1 = (int)v;
    if (get_i(j, "lm", 0, 1, &v))
        return -1;
    st->lm = (int)v;
    if (get_s(j, "arch", st->arch, sizeof st->arch) ||
        get_s(j, "format", st->format, sizeof st->format) ||
        get_s(j, "options", st->options, sizeof st->options) ||
        get_d(j, "float_acc", &st->float_acc) || get_d(j, "quant_acc", &st->quant_acc) ||
        get_d(j, "bits_per_weight", &st->bits_per_weight) || get_i(j, "gate_pass", 0, 1, &v))
        return -1;
    st->gate_pass = (int)v;
    if (get_d(j, "med_r_float", &st->med_r_float) || get_d(j, "med_r_q", &st->med_r_q) ||
        get_d(j, "spearman", &st->spearman) || get_s(j, "verdict", verdict, sizeof verdict))
        return -1;
    /* the verdict follows from the figures: a record that says otherwise was edited */
    st->verdict = qs_q1_verdict(st->med_r_q, st->spearman);
    if (strcmp(verdict, st->verdict))
        return -1;
    st->nlayers = nl;
    const cJSON *x;
    int i = 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "layers"))
    {
        struct qs_q1_layer *l = &ly[i++];
        memset(l, 0, sizeof *l);
        if (get_i(x, "index", 0, 1 << 30, &v))
            return -1;
        l->index = (int)v;
        if (get_s(x, "name", l->name, sizeof l->name) || get_i(x, "kind", 0, QS_Q1_SITE, &v))
            return -1;
        l->kind = (enum qs_q1_kind)v;
        if (get_i(x, "nsites", 1, 3, &v))
            return -1;
        l->nsites = (int)v;
        if (get_i(x, "block", 0, 1 << 30, &v))
            return -1;
        l->block = (int)v;
        if (get_i(x, "third", 0, 2, &v))
            return -1;
        l->third = (int)v;
        if (get_i(x, "d", 1, 1 << 30, &v))
            return -1;
        l->d = (int)v;
        if (get_i(x, "in", 1, 1 << 30, &v))
            return -1;
        l->in = (int)v;
        if (get_d(x, "w_rel_err", &l->w_rel_err) ||
            get_d(x, "preact_rel_mse", &l->preact_rel_mse) ||
            get_d(x, "correctability", &l->correctability) || get_d(x, "r_float", &l->r_float) ||
            get_d(x, "r_q", &l->r_q) || get_d(x, "lambda", &l->lambda) ||
            get_i(x, "rank_kept", 0, 1 << 30, &v))
            return -1;
        l->rank_kept = (int)v;
    }
    return i == nl ? 0 : -1;
}

/* The first space-separated words of x and y that differ, into a and b (64 bytes each). */
static void first_diff(const char *x, const char *y, char *a, char *b)
{
    for (;;) {
        size_t lx = strcspn(x, " "), ly = strcspn(y, " ");
        if (lx != ly || strncmp(x, y, lx) || !x[lx] || !y[ly]) {
            snprintf(a, 64, "%.*s", (int)(lx < 63 ? lx : 63), x);
            snprintf(b, 64, "%.*s", (int)(ly < 63 ? ly : 63), y);
            return;
        }
        x += lx + 1;
        y += ly + 1;
    }
}

/* Reads PATH as a complete record of STUDY written under OPTIONS (NULL: any options): *root
 * (the caller deletes it) and its settings array *js. 1: no such file (a setting not run yet);
 * -1 and e: not a record, another study's, cut short, incomplete or of other options. */
static int record_open(const char *path, const char *study, const char *options, cJSON **root,
                       const cJSON **js, qs_err *e)
{
    struct stat sb;
    if (stat(path, &sb) < 0 && errno == ENOENT)
        return 1;
    char *text = NULL;
    if (read_text(path, &text, e) < 0)
        return -1;
    cJSON *r = cJSON_Parse(text);
    free(text);
    if (!r)
        return qs_errf(e, "%s: not a JSON record (cut short?)", path);
    long long v;
    char st[16], opts[600];
    *js = cJSON_GetObjectItemCaseSensitive(r, "settings");
    if (get_i(r, "qscope_record", 0, 1 << 30, &v) || v != QS_RECORD_VERSION ||
        get_s(r, "study", st, sizeof st) || strcmp(st, study) ||
        get_s(r, "options", opts, sizeof opts) || !cJSON_IsArray(*js))
        qs_errf(e, "%s: not a qscope %s record (version %d)", path, study, QS_RECORD_VERSION);
    else if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "complete")))
        qs_errf(e, "%s: incomplete record", path);
    else if (options && strcmp(options, opts)) {
        /* the first word that differs first: the whole lines are long */
        char a[64], b[64];
        first_diff(opts, options, a, b);
        qs_errf(e, "%s: written under other options (%s where the plan has %s; record: %s)", path,
                a, b, opts);
    } else {
        *root = r;
        return 0;
    }
    cJSON_Delete(r);
    return -1;
}

int qs_q1_record_read(const char *path, const char *options, struct qs_q1 *q, qs_err *e)
{
    cJSON *r;
    const cJSON *js;
    int rc = record_open(path, "q1", options, &r, &js, e);
    if (rc)
        return rc;
    rc = -1;
    int ns = cJSON_GetArraySize(js), nl = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, js) nl +=
        cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s, "layers"));
    struct qs_q1_setting *nst = realloc(q->settings, (size_t)(q->nsettings + ns + 1) * sizeof *nst);
    if (nst)
        q->settings = nst;
    struct qs_q1_layer *nly = realloc(q->layers, (size_t)(q->nlayers + nl + 1) * sizeof *nly);
    if (nly)
        q->layers = nly;
    if (!nst || !nly) {
        qs_errf(e, "out of memory");
        goto out;
    }
    int k = 0, first = q->nlayers;
    cJSON_ArrayForEach(s, js)
    {
        struct qs_q1_setting *st = &q->settings[q->nsettings + k];
        int m = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(s, "layers"));
        if (m < 1 || read_setting(s, st, &q->layers[first], m) < 0) {
            qs_errf(e, "%s: setting %d is malformed", path, k);
            goto out;
        }
        st->first = first;
        for (int i = 0; i < m; i++)
            q->layers[first + i].setting = q->nsettings + k;
        first += m;
        k++;
    }
    q->nsettings += ns;
    q->nlayers = first;
    rc = 0;
out:
    cJSON_Delete(r);
    return rc;
}

/* ---- Q2 records ---------------------------------------------------------------------------- */

void qs_q2_record_options(const struct qs_q2_opts *o, char *buf, size_t n)
{
    char fw[500];
    formats_words(&o->fmt, &o->opt, o->lm_fmt, o->lm_opt, fw, sizeof fw);
    snprintf(buf, n, "%s; corrector=%d-%d-1 lr=%.17g epochs=%d batch=%d n_fit=%d n_eval=%d", fw,
             o->hidden, o->hidden, o->lr, o->epochs, o->batch, o->n_fit, o->n_eval);
    if (o->heldout_tokens > 0) /* absent when not given: older records keep their line */
        snprintf(buf + strlen(buf), n - strlen(buf), " heldout_tokens=%ld", o->heldout_tokens);
}

/* The digest of a setting: SHA-256 over every field, each as exact text (%a for a double), so
 * that a record whose figures were edited after it was written is told from one that was not. */
static void dg_s(struct qs_sha256 *h, const char *s)
{
    qs_sha256_update(h, s, strlen(s) + 1);
}
static void dg_d(struct qs_sha256 *h, double v)
{
    char b[48];
    snprintf(b, sizeof b, "%a", v);
    dg_s(h, b);
}
static void dg_i(struct qs_sha256 *h, long long v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    dg_s(h, b);
}

static void q2_digest(const struct qs_q2_setting *s, char hex[65])
{
    struct qs_sha256 h;
    qs_sha256_init(&h);
    dg_s(&h, "qscope q2 record 1");
    dg_s(&h, s->model);
    dg_s(&h, s->data);
    dg_i(&h, (long long)s->seed);
    dg_s(&h, s->arch);
    dg_s(&h, s->format);
    dg_s(&h, s->options);
    dg_i(&h, s->lm);
    dg_i(&h, s->nsites);
    dg_i(&h, s->gate_pass);
    const double hd[] = {s->float_loss,      s->quant_loss, s->float_acc,  s->quant_acc,
                         s->bits_per_weight, s->mse_none,   s->improvement};
    for (size_t k = 0; k < sizeof hd / sizeof *hd; k++)
        dg_d(&h, hd[k]);
    dg_i(&h, s->n_fit);
    dg_i(&h, s->n_eval);
    for (int v = 0; v < QS_Q2_NVAR; v++) {
        dg_d(&h, s->mse[v]);
        dg_d(&h, s->fit_loss[v]);
        dg_d(&h, s->loss_corr[v]);
        dg_d(&h, s->loss_gain[v]);
    }
    dg_i(&h, s->unstable);
    dg_s(&h, s->verdict ? s->verdict : "");
    for (int i = 0; i < s->nsites && s->sites; i++) {
        const struct qs_q2_site *x = &s->sites[i];
        dg_s(&h, x->name);
        dg_i(&h, x->index);
        dg_i(&h, x->kind);
        dg_i(&h, x->in);
        dg_i(&h, x->out);
        dg_d(&h, x->rms);
        for (int k = 0; k < QS_Q2_NFEAT; k++)
            dg_d(&h, x->feat[k]);
        dg_d(&h, x->mse_none);
        for (int v = 0; v < QS_Q2_NVAR; v++)
            dg_d(&h, x->mse[v]);
    }
    uint8_t d[32];
    qs_sha256_final(&h, d);
    qs_sha256_hex(d, hex);
}

static void put_dv(cJSON *j, const char *k, const double *v, int n)
{
    cJSON *a = cJSON_CreateObject();
    for (int i = 0; i < n; i++)
        put_d(a, qs_q2_variant_name((enum qs_q2_variant)i), v[i]);
    cJSON_AddItemToObject(j, k, a);
}

int qs_q2_record_write(const struct qs_q2_setting *st, int n, const struct qs_q2_opts *o,
                       const char *path, qs_err *e)
{
    char opts[600];
    qs_q2_record_options(o, opts, sizeof opts);
    cJSON *r = record_new("q2", opts), *js = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        const struct qs_q2_setting *s = &st[i];
        cJSON *j = cJSON_CreateObject(), *jl = cJSON_CreateArray();
        char hex[65];
        q2_digest(s, hex);
        cJSON_AddStringToObject(j, "model", s->model);
        cJSON_AddStringToObject(j, "data", s->data);
        put_i(j, "seed", (long long)s->seed);
        cJSON_AddStringToObject(j, "arch", s->arch);
        cJSON_AddStringToObject(j, "format", s->format);
        cJSON_AddStringToObject(j, "options", s->options);
        put_i(j, "lm", s->lm);
        put_i(j, "nsites", s->nsites);
        put_i(j, "gate_pass", s->gate_pass);
        put_d(j, "float_loss", s->float_loss);
        put_d(j, "quant_loss", s->quant_loss);
        put_d(j, "float_acc", s->float_acc);
        put_d(j, "quant_acc", s->quant_acc);
        put_d(j, "bits_per_weight", s->bits_per_weight);
        put_i(j, "n_fit", s->n_fit);
        put_i(j, "n_eval", s->n_eval);
        put_d(j, "mse_none", s->mse_none);
        put_dv(j, "mse", s->mse, QS_Q2_NVAR);
        put_dv(j, "fit_loss", s->fit_loss, QS_Q2_NVAR);
        put_dv(j, "loss_corr", s->loss_corr, QS_Q2_NVAR);
        put_dv(j, "loss_gain", s->loss_gain, QS_Q2_NVAR);
        put_d(j, "improvement", s->improvement);
        put_i(j, "unstable", s->unstable);
        cJSON_AddStringToObject(j, "verdict", s->verdict);
        for (int k = 0; k < s->nsites && s->sites; k++) {
            const struct qs_q2_site *x = &s->sites[k];
            cJSON *q = cJSON_CreateObject(), *f = cJSON_CreateObject();
            cJSON_AddStringToObject(q, "name", x->name);
            put_i(q, "index", x->index);
            put_i(q, "kind", x->kind);
            put_i(q, "in", x->in);
            put_i(q, "out", x->out);
            put_d(q, "rms", x->rms);
            for (int m = 0; m < QS_Q2_NFEAT; m++)
                put_d(f, qs_q2_feature_name(m), x->feat[m]);
            cJSON_AddItemToObject(q, "features", f);
            put_d(q, "mse_none", x->mse_none);
            put_dv(q, "mse", x->mse, QS_Q2_NVAR);
            cJSON_AddItemToArray(jl, q);
        }
        cJSON_AddItemToObject(j, "sites", jl);
        cJSON_AddStringToObject(j, "sha256", hex);
        cJSON_AddItemToArray(js, j);
    }
    return record_finish(r, js, path, e);
}

static int get_dv(const cJSON *j, const char *k, double *v, int n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, k);
    if (!cJSON_IsObject(a) || cJSON_GetArraySize(a) != n)
        return -1;
    for (int i = 0; i < n; i++)
        if (get_d(a, qs_q2_variant_name((enum qs_q2_variant)i), &v[i]))
            return -1;
    return 0;
}

/* One Q2 setting object into s (its sites allocated); a reason when malformed or edited. */
static const char *read_q2_setting(const cJSON *j, struct qs_q2_setting *s)
{
    long long v;
    char verdict[16], hex[65], want[65];
    memset(s, 0, sizeof *s);
    if (get_s(j, "model", s->model, sizeof s->model) || get_s(j, "data", s->data, sizeof s->data) ||
        get_i(j, "seed", 0, (1LL << 53), &v))
        return "malformed (model, data, seed)";
    s->seed = (uint64_t)v;
    if (get_s(j, "arch", s->arch, sizeof s->arch) ||
        get_s(j, "format", s->format, sizeof s->format) ||
        get_s(j, "options", s->options, sizeof s->options))
        return "malformed (arch, format, options)";
    if (get_i(j, "lm", 0, 1, &v))
        return "malformed (lm)";
    s->lm = (int)v;
    if (get_i(j, "nsites", 1, 1 << 20, &v))
        return "malformed (nsites)";
    s->nsites = (int)v;
    if (get_i(j, "gate_pass", 0, 1, &v))
        return "malformed (gate_pass)";
    s->gate_pass = (int)v;
    if (get_d(j, "float_loss", &s->float_loss) || get_d(j, "quant_loss", &s->quant_loss) ||
        get_d(j, "float_acc", &s->float_acc) || get_d(j, "quant_acc", &s->quant_acc) ||
        get_d(j, "bits_per_weight", &s->bits_per_weight) || get_d(j, "mse_none", &s->mse_none) ||
        get_d(j, "improvement", &s->improvement))
        return "malformed (a figure)";
    if (get_i(j, "n_fit", 0, 1 << 30, &v))
        return "malformed (n_fit)";
    s->n_fit = (int)v;
    if (get_i(j, "n_eval", 0, 1 << 30, &v))
        return "malformed (n_eval)";
    s->n_eval = (int)v;
    if (get_dv(j, "mse", s->mse, QS_Q2_NVAR) || get_dv(j, "fit_loss", s->fit_loss, QS_Q2_NVAR) ||
        get_dv(j, "loss_corr", s->loss_corr, QS_Q2_NVAR) ||
        get_dv(j, "loss_gain", s->loss_gain, QS_Q2_NVAR))
        return "malformed (a per-variant figure)";
    if (get_i(j, "unstable", 0, (1 << QS_Q2_NVAR) - 1, &v))
        return "malformed (unstable)";
    s->unstable = (int)v;
    if (get_s(j, "verdict", verdict, sizeof verdict) || get_s(j, "sha256", hex, sizeof hex))
        return "malformed (verdict, sha256)";
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(j, "sites");
    if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) != s->nsites)
        return "malformed (sites)";
    if (!(s->sites = calloc((size_t)s->nsites, sizeof *s->sites)))
        return "out of memory";
    const cJSON *x;
    int i = 0;
    cJSON_ArrayForEach(x, js)
    {
        struct qs_q2_site *q = &s->sites[i++];
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "features");
        if (get_s(x, "name", q->name, sizeof q->name) || !cJSON_IsObject(f))
            return "malformed (a site)";
        if (get_i(x, "index", 0, 1 << 30, &v))
            return "malformed (a site's index)";
        q->index = (int)v;
        if (get_i(x, "kind", 0, 1 << 30, &v))
            return "malformed (a site's kind)";
        q->kind = (int)v;
        if (get_i(x, "in", 1, 1 << 30, &v))
            return "malformed (a site's in)";
        q->in = (int)v;
        if (get_i(x, "out", 1, 1 << 30, &v))
            return "malformed (a site's out)";
        q->out = (int)v;
        if (get_d(x, "rms", &q->rms) || get_d(x, "mse_none", &q->mse_none) ||
            get_dv(x, "mse", q->mse, QS_Q2_NVAR))
            return "malformed (a site's figures)";
        for (int m = 0; m < QS_Q2_NFEAT; m++)
            if (get_d(f, qs_q2_feature_name(m), &q->feat[m]))
                return "malformed (a site's features)";
    }
    /* the verdict follows from the figures, and the digest covers them all: a record that
     * says otherwise was edited after it was written */
    s->verdict = qs_q2_verdict(s->mse[QS_Q2_EMB], s->mse[QS_Q2_FEAT], s->loss_gain);
    if (strcmp(verdict, s->verdict))
        return "edited: its verdict does not follow from its figures";
    q2_digest(s, want);
    if (strcmp(hex, want))
        return "edited after it was written: its sha256 does not match its contents";
    return NULL;
}

int qs_q2_record_read(const char *path, const char *options, struct qs_q2 *q, qs_err *e)
{
    cJSON *r;
    const cJSON *js;
    int rc = record_open(path, "q2", options, &r, &js, e);
    if (rc)
        return rc;
    rc = -1;
    int ns = cJSON_GetArraySize(js);
    struct qs_q2_setting *nst = realloc(q->settings, (size_t)(q->nsettings + ns + 1) * sizeof *nst);
    if (!nst) {
        qs_errf(e, "out of memory");
        goto out;
    }
    q->settings = nst;
    int k = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, js)
    {
        struct qs_q2_setting *st = &q->settings[q->nsettings + k];
        const char *why = read_q2_setting(s, st);
        if (why) {
            qs_q2_setting_clear(st);
            for (int i = 0; i < k; i++)
                qs_q2_setting_clear(&q->settings[q->nsettings + i]);
            qs_errf(e, "%s: setting %d is %s", path, k, why);
            goto out;
        }
        k++;
    }
    q->nsettings += ns;
    rc = 0;
out:
    cJSON_Delete(r);
    return rc;
}
