/* cmd.c - the dispatcher: tokenizer, command lookup over the tables, journaling, results. */
#include "qscope/cmd.h"

#include "qscope/format.h"
#include "qscope/safetensors.h"

#include "qscope/lmbench.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Set by qs_quote when it had to cut a word (see qs_exec_line). */
static _Thread_local int quote_cut;

void qs_sb_vprintf(struct qs_sb *sb, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    if (sb->len + (size_t)n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + (size_t)n + 1)
            cap *= 2;
        char *s = realloc(sb->s, cap);
        if (!s)
            return;
        sb->s = s;
        sb->cap = cap;
    }
    vsnprintf(sb->s + sb->len, (size_t)n + 1, fmt, ap);
    sb->len += (size_t)n;
}

void qs_sb_printf(struct qs_sb *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qs_sb_vprintf(sb, fmt, ap);
    va_end(ap);
}

void qs_sb_free(struct qs_sb *sb)
{
    free(sb->s);
    memset(sb, 0, sizeof *sb);
}

cJSON *qs_json_num_item(double v)
{
    char buf[32];
    if (!isfinite(v))
        return cJSON_CreateNull();
    snprintf(buf, sizeof buf, "%.9g", v);
    return cJSON_CreateRaw(buf);
}

void qs_json_num(cJSON *obj, const char *key, double v)
{
    cJSON_AddItemToObject(obj, key, qs_json_num_item(v));
}

double qs_json_get_num(const cJSON *it)
{
    if (!it)
        return NAN;
    if (cJSON_IsNumber(it))
        return it->valuedouble;
    if (cJSON_IsRaw(it) && it->valuestring) {
        char *end;
        double v = strtod(it->valuestring, &end);
        return end != it->valuestring && *end == 0 ? v : NAN;
    }
    return NAN;
}

void qs_ctx_init(struct qs_ctx *c, struct qs_bench *b)
{
    memset(c, 0, sizeof *c);
    c->b = b;
    c->bail = 1;
}

void qs_ctx_free(struct qs_ctx *c)
{
    for (int i = 0; i < c->njournal; i++) {
        free(c->journal[i].line);
        cJSON_Delete(c->journal[i].results);
    }
    free(c->journal);
    cJSON_Delete(c->last_table);
    cJSON_Delete(c->cur_results);
    c->journal = NULL;
    c->njournal = c->capjournal = 0;
    c->last_table = c->cur_results = NULL;
    qs_ctx_redir_free(c);
}

void qs_ctx_redir_free(struct qs_ctx *c)
{
    for (int i = 0; i < c->nredir; i++) {
        free(c->redir[i].from);
        free(c->redir[i].to);
    }
    free(c->redir);
    c->redir = NULL;
    c->nredir = 0;
}

const char *qs_ctx_redirected(const struct qs_ctx *c, const char *path)
{
    for (int i = c->nredir - 1; i >= 0; i--)
        if (!strcmp(c->redir[i].from, path))
            return c->redir[i].to;
    return NULL;
}

/* Replaces every occurrence of `from` in buf (of size n) by `to`, as far as it fits. */
static void str_subst(char *buf, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    char *p = fl ? strstr(buf, from) : NULL;
    while (p) {
        size_t rest = strlen(p + fl);
        if ((size_t)(p - buf) + tl + rest + 1 > n)
            return;
        memmove(p + tl, p + fl, rest + 1);
        memcpy(p, to, tl);
        p = strstr(p + tl, from);
    }
}

/* A safe replay with a scratch folder: the path a QS_CMD_SCRATCH command writes (its first
 * argument, or out=) is redirected there, and `load model|data` of a path redirected earlier
 * reads the copy. argv is rewritten in place; *from and *to say what to undo in the journal line
 * (NULL when nothing was redirected). */
static int redirect_args(struct qs_ctx *c, const struct qs_cmd_def *d, int argc, char **argv,
                         const char **from, const char **to, qs_err *e)
{
    *from = *to = NULL;
    if (!c->safe || !c->scratch || argc < 1)
        return 0;
    if (!strcmp(d->name, "load model") || !strcmp(d->name, "load data")) {
        const char *r = qs_ctx_redirected(c, argv[0]);
        if (r) {
            char *nv = qs_strdup(r);
            if (!nv)
                return qs_errf(e, "out of memory");
            *from = c->redir[c->nredir - 1].from; /* any live copy of the same text will do */
            for (int i = 0; i < c->nredir; i++)
                if (!strcmp(c->redir[i].to, r))
                    *from = c->redir[i].from;
            *to = r;
            free(argv[0]);
            argv[0] = nv;
        }
        return 0;
    }
    if (!(d->flags & QS_CMD_SCRATCH))
        return 0;
    int k = -1;
    const char *path = NULL;
    if (d->flags & QS_CMD_WRITES) {
        k = 0;
        path = argv[0];
    } else {
        for (int i = 0; i < argc && k < 0; i++)
            if ((path = qs_opt_value(argv[i], "out")))
                k = i;
    }
    if (k < 0 || !*path)
        return 0;
    const char *base = strrchr(path, '/');
    base = base && base[1] ? base + 1 : path;
    struct qs_sb to_s = {0}, arg = {0};
    qs_sb_printf(&to_s, "%s/%d-%s", c->scratch, c->nredir, base);
    struct qs_redir *nr = realloc(c->redir, (size_t)(c->nredir + 1) * sizeof *nr);
    char *fr = qs_strdup(path);
    if (k > 0)
        qs_sb_printf(&arg, "out=%s", to_s.s ? to_s.s : "");
    else
        qs_sb_printf(&arg, "%s", to_s.s ? to_s.s : "");
    if (!nr || !fr || !to_s.s || !arg.s) {
        if (nr)
            c->redir = nr;
        free(fr);
        qs_sb_free(&to_s);
        qs_sb_free(&arg);
        return qs_errf(e, "out of memory");
    }
    c->redir = nr;
    c->redir[c->nredir].from = fr;
    c->redir[c->nredir].to = to_s.s;
    c->nredir++;
    free(argv[k]);
    argv[k] = arg.s;
    *from = fr;
    *to = to_s.s;
    return 0;
}

/* ---- argument specs ------------------------------------------------------------------- */

static int spec_npos(const struct qs_cmd_def *d)
{
    int n = 0;
    for (const struct qs_arg *a = d->spec; a && a->name; a++)
        n += a->pos;
    return n;
}

static const struct qs_arg *spec_pos(const struct qs_cmd_def *d, int k)
{
    const struct qs_arg *last = NULL;
    for (const struct qs_arg *a = d->spec; a && a->name; a++)
        if (a->pos && (last = a, k-- == 0))
            return a;
    return last;
}

const struct qs_arg *qs_cmd_arg_of(const struct qs_cmd_def *d, const char *word, int *npos)
{
    int np = spec_npos(d);
    if (np && *npos < d->amin)
        return spec_pos(d, (*npos)++);
    const char *eq = strchr(word, '=');
    for (const struct qs_arg *a = d->spec; a && a->name; a++) {
        if (a->pos)
            continue;
        size_t n = strlen(a->name);
        if (a->kind == QS_ARG_FLAG ? !strcmp(word, a->name)
                                   : eq && (size_t)(eq - word) == n && !strncmp(word, a->name, n))
            return a;
    }
    if (eq || !np || (d->amax >= 0 && *npos >= d->amax))
        return NULL;
    return spec_pos(d, (*npos)++);
}

static const char *kind_placeholder(enum qs_arg_kind k)
{
    switch (k) {
    case QS_ARG_INT:
        return "N";
    case QS_ARG_INTS:
        return "N,...";
    case QS_ARG_FLOAT:
        return "F";
    case QS_ARG_LAYER:
        return "LAYER";
    case QS_ARG_PATTERN:
        return "PATTERN";
    case QS_ARG_PATH:
        return "PATH";
    case QS_ARG_FORMAT:
        return "FORMAT";
    default:
        return "X";
    }
}

static const char *arg_values(const struct qs_arg *a)
{
    return a->values ? a->values : a->pos ? a->name : kind_placeholder(a->kind);
}

/* Does word match one alternative of "a|b|p:N" (p:N: any word starting "p:")? */
static int alt_match(const char *alts, const char *w, size_t wl)
{
    for (const char *p = alts; *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        if (colon && colon + 1 < p + n && isupper((unsigned char)colon[1])) {
            size_t pl = (size_t)(colon - p) + 1;
            if (wl > pl && !strncmp(w, p, pl))
                return 1;
        } else if (n == wl && !strncmp(p, w, n)) {
            return 1;
        }
        p += n + (bar ? 1 : 0);
    }
    return 0;
}

/* The literal (lower-case) alternatives of a number's values, e.g. "none" of "A|none". */
static int literal_alt(const char *alts, const char *w)
{
    return alts && islower((unsigned char)w[0]) && alt_match(alts, w, strlen(w));
}

/* "a, b or c" from "a|b|c". */
static void alt_list(const char *alts, struct qs_sb *sb)
{
    int n = 1, k = 0;
    for (const char *p = alts; *p; p++)
        n += *p == '|';
    for (const char *p = alts; *p; k++) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        qs_sb_printf(sb, "%s%.*s", k == 0 ? "" : k == n - 1 ? " or " : ", ", (int)l, p);
        p += l + (bar ? 1 : 0);
    }
}

/* [-]digits, the first n bytes of s. */
static int is_integer(const char *s, size_t n)
{
    size_t k = n && *s == '-';
    if (k == n)
        return 0;
    for (; k < n; k++)
        if (!isdigit((unsigned char)s[k]))
            return 0;
    return 1;
}

/* Messages follow the handlers' own: "train epochs: 'x' is not an integer" (as qs_parse_int),
 * "error: kl=maybe: expected auto, on or off". */
static int check_value(const struct qs_cmd_def *d, const struct qs_arg *a, const char *w,
                       const char *word, qs_err *e)
{
    char what[160];
    if (a->pos)
        snprintf(what, sizeof what, "%s", d->name);
    else
        snprintf(what, sizeof what, "%s %s", d->name, a->name);
    switch (a->kind) {
    case QS_ARG_INT:
        if (!is_integer(w, strlen(w)) && !literal_alt(a->values, w))
            return qs_errf(e, "%s: '%s' is not an integer", what, w);
        return 0;
    case QS_ARG_INTS:
        for (const char *p = w;;) {
            size_t l = strcspn(p, ",");
            if (!is_integer(p, l))
                return qs_errf(e, "%s: '%.*s' is not an integer (%s: a comma list of integers)",
                               what, (int)l, p, word);
            if (!p[l])
                return 0;
            p += l + 1;
        }
    case QS_ARG_FLOAT: {
        char *end;
        double v = strtod(w, &end);
        if ((end == w || *end) && !literal_alt(a->values, w))
            return qs_errf(e, "%s: '%s' is not a number", what, w);
        /* inf, nan, 1e400: no option means them (a positional may: roundtrip shows how a
         * format rounds them) */
        if (!a->pos && end != w && !*end && !isfinite(v))
            return qs_errf(e, "%s: '%s' is not a finite number", what, w);
        return 0;
    }
    case QS_ARG_ENUM:
    case QS_ARG_ENUMS: {
        const char *p = w;
        do {
            const char *comma = a->kind == QS_ARG_ENUMS ? strchr(p, ',') : NULL;
            size_t l = comma ? (size_t)(comma - p) : strlen(p);
            if (!alt_match(a->values, p, l)) {
                struct qs_sb sb = {0};
                alt_list(a->values, &sb);
                if (a->pos)
                    qs_errf(e, "%s: '%s': expected %s", d->name, w, sb.s ? sb.s : "");
                else if (a->kind == QS_ARG_ENUMS)
                    qs_errf(e, "%s: %s: '%.*s': expected %s (a comma list)", d->name, word, (int)l,
                            p, sb.s ? sb.s : "");
                else
                    qs_errf(e, "%s: %s: expected %s", d->name, word, sb.s ? sb.s : "");
                qs_sb_free(&sb);
                return -1;
            }
            p = comma ? comma + 1 : NULL;
        } while (p);
        return 0;
    }
    default:
        return 0;
    }
}

int qs_cmd_check_args(const struct qs_cmd_def *d, int argc, char **argv, qs_err *e)
{
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const struct qs_arg *a = qs_cmd_arg_of(d, argv[i], &npos);
        if (!a) {
            struct qs_sb u = {0};
            qs_cmd_synopsis(d, QS_SYN_TEXT, &u);
            qs_errf(e, "%s: %s '%s'; usage: %s", d->name,
                    strchr(argv[i], '=') ? "unknown option" : "unexpected argument", argv[i],
                    u.s ? u.s : d->name);
            qs_sb_free(&u);
            return -1;
        }
        const char *v = argv[i];
        if (!a->pos && a->kind != QS_ARG_FLAG)
            v = strchr(argv[i], '=') + 1;
        if (check_value(d, a, v, argv[i], e) < 0)
            return -1;
    }
    if (npos < d->amin) {
        struct qs_sb u = {0};
        qs_cmd_synopsis(d, QS_SYN_TEXT, &u);
        const struct qs_arg *a = spec_pos(d, npos);
        qs_errf(e, "%s: missing %s; usage: %s", d->name, a ? a->name : "an argument",
                u.s ? u.s : d->name);
        qs_sb_free(&u);
        return -1;
    }
    return 0;
}

/* Value alternatives in mdoc: literal words as Cm, placeholders (upper case) as Ar, "p:N" as
 * "Cm p: Ns Ar N". A single lower-case word that is not an enum's is an example ("0,1,2",
 * "int3"): Ar as well. */
static void mdoc_alts(const char *alts, int literal, struct qs_sb *sb)
{
    int one = !strchr(alts, '|');
    for (const char *p = alts; *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        const char *colon = memchr(p, ':', l);
        int ph = 0;
        for (size_t k = 0; k < l; k++)
            ph |= isupper((unsigned char)p[k]) != 0;
        qs_sb_printf(sb, "%s", p == alts ? "" : " | ");
        if (ph && colon && !isupper((unsigned char)p[0]))
            qs_sb_printf(sb, "Cm %.*s : Ns Ar %.*s", (int)(colon - p), p,
                         (int)(l - (size_t)(colon - p) - 1), colon + 1);
        else
            qs_sb_printf(sb, "%s %.*s", ph || (one && !literal) ? "Ar" : "Cm", (int)l, p);
        p += l + (bar ? 1 : 0);
    }
}

void qs_cmd_synopsis(const struct qs_cmd_def *d, int style, struct qs_sb *sb)
{
    int md = style == QS_SYN_MDOC, np = spec_npos(d), k = 0;
    qs_sb_printf(sb, "%s%s", md ? ".It Cm " : "", d->name);
    for (const struct qs_arg *a = d->spec; a && a->name; a++) {
        if (!a->pos)
            continue;
        int opt = k >= d->amin, rep = k == np - 1 && (d->amax < 0 || d->amax > np);
        const char *v = a->name; /* a positional shows its name: METHOD, weight|act|full */
        if (md) {
            qs_sb_printf(sb, "%s", opt ? " Oo " : " ");
            if (strchr(v, '|'))
                mdoc_alts(v, 1, sb);
            else
                qs_sb_printf(sb, "Ar %s", v);
            qs_sb_printf(sb, "%s%s", rep ? " ..." : "", opt ? " Oc" : "");
        } else {
            qs_sb_printf(sb, " %s%s%s%s", opt ? "[" : "", v, rep ? "..." : "", opt ? "]" : "");
        }
        k++;
    }
    for (const struct qs_arg *a = d->spec; a && a->name; a++) {
        if (a->pos)
            continue;
        if (md && a->kind == QS_ARG_FLAG) {
            qs_sb_printf(sb, " Oo Cm %s Oc", a->name);
        } else if (md) {
            qs_sb_printf(sb, " Oo Cm %s Ns = Ns ", a->name);
            mdoc_alts(arg_values(a), a->kind == QS_ARG_ENUM || a->kind == QS_ARG_ENUMS, sb);
            qs_sb_printf(sb, " Oc");
        } else if (a->kind == QS_ARG_FLAG) {
            qs_sb_printf(sb, " [%s]", a->name);
        } else {
            qs_sb_printf(sb, " [%s=%s]", a->name, arg_values(a));
        }
    }
}

/* ---- completion from the specs --------------------------------------------------------- */

struct comp {
    void (*add)(void *u, const char *s);
    void *au;
    const char *(*layer)(void *u, int i);
    void *lu;
};

static void comp_addf(const struct comp *k, const char *pre, const char *s, size_t n)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s%.*s", pre, (int)n, s);
    k->add(k->au, buf);
}

/* The literal alternatives of values ("p:N" offers "p:"), each after pre. */
static void comp_alts(const struct comp *k, const char *pre, const char *alts)
{
    for (const char *p = alts; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        if (colon && colon + 1 < p + n && isupper((unsigned char)colon[1]))
            comp_addf(k, pre, p, (size_t)(colon - p) + 1);
        else if (n && !isupper((unsigned char)p[0]))
            comp_addf(k, pre, p, n);
        p += n + (bar ? 1 : 0);
    }
}

/* A value of arg a's kind, after pre; 1 when it is a file name instead. */
static int comp_value(const struct comp *k, const struct qs_arg *a, const char *pre)
{
    switch (a->kind) {
    case QS_ARG_PATH:
        return 1;
    case QS_ARG_LAYER:
    case QS_ARG_PATTERN:
        for (int i = 0; k->layer && k->layer(k->lu, i); i++)
            comp_addf(k, pre, k->layer(k->lu, i), strlen(k->layer(k->lu, i)));
        return 0;
    case QS_ARG_FORMAT:
        for (const char *const *f = qs_format_names(); *f; f++)
            comp_addf(k, pre, *f, strlen(*f));
        break;
    default:
        break;
    }
    comp_alts(k, pre, a->values);
    return 0;
}

int qs_cmd_complete(const struct qs_ctx *c, char **words, int nw, const char *text,
                    const char *(*layer)(void *u, int i), void *lu,
                    void (*add)(void *u, const char *s), void *au, size_t *keylen)
{
    struct comp k = {add, au, layer, lu};
    const struct qs_cmd_def *d;
    *keylen = 0;
    if (nw == 0) {
        for (int i = 0; (d = qs_cmd_at(c, i)); i++) {
            const char *sp = strchr(d->name, ' ');
            comp_addf(&k, "", d->name, sp ? (size_t)(sp - d->name) : strlen(d->name));
        }
        return 0;
    }
    if (nw == 1) { /* the second word of a two-word name */
        int any = 0;
        size_t n = strlen(words[0]);
        for (int i = 0; (d = qs_cmd_at(c, i)); i++)
            if (!strncmp(d->name, words[0], n) && d->name[n] == ' ')
                comp_addf(&k, "", d->name + n + 1, strlen(d->name + n + 1)), any = 1;
        if (any)
            return 0;
    }
    int used = 0, npos = 0;
    d = qs_cmd_lookup(c, nw, words, &used);
    if (!d)
        return 0;
    for (int i = used; i < nw; i++)
        qs_cmd_arg_of(d, words[i], &npos);
    const char *eq = strchr(text, '=');
    if (eq && npos >= d->amin) { /* an option's value */
        for (const struct qs_arg *a = d->spec; a && a->name; a++) {
            if (a->pos || a->kind == QS_ARG_FLAG || strlen(a->name) != (size_t)(eq - text) ||
                strncmp(a->name, text, (size_t)(eq - text)))
                continue;
            char pre[96];
            snprintf(pre, sizeof pre, "%.*s", (int)(eq - text) + 1, text);
            const char *comma = a->kind == QS_ARG_ENUMS ? strrchr(text, ',') : NULL;
            if (comma) /* a list: the next item after those typed */
                snprintf(pre, sizeof pre, "%.*s", (int)(comma - text) + 1, text);
            if (comp_value(&k, a, pre)) {
                *keylen = (size_t)(eq - text) + 1;
                return 1;
            }
        }
        return 0;
    }
    int np = spec_npos(d);
    if (np && (d->amax < 0 || npos < d->amax)) {
        const struct qs_arg *a = spec_pos(d, npos);
        if (comp_value(&k, a, "") && npos < d->amin)
            return 1; /* a required path: file names only */
    }
    if (npos < d->amin)
        return 0;
    for (const struct qs_arg *a = d->spec; a && a->name; a++) {
        if (a->pos)
            continue;
        if (a->kind == QS_ARG_FLAG) {
            k.add(k.au, a->name);
            continue;
        }
        char pre[96];
        snprintf(pre, sizeof pre, "%s=", a->name);
        int any = 0;
        if (a->kind == QS_ARG_ENUM)
            for (const char *p = a->values; p && *p; p++)
                any |= p == a->values || p[-1] == '|' ? !isupper((unsigned char)*p) : 0;
        if (any)
            comp_alts(&k, pre, a->values);
        else
            k.add(k.au, pre);
    }
    return 0;
}

const char *qs_arg(const struct qs_ctx *c, const char *key)
{
    const char *v = NULL;
    int npos = 0;
    for (int i = 0; c->cur_cmd && i < c->cur_argc; i++) {
        const struct qs_arg *a = qs_cmd_arg_of(c->cur_cmd, c->cur_argv[i], &npos);
        if (a && !a->pos && !strcmp(a->name, key))
            v = a->kind == QS_ARG_FLAG ? "" : strchr(c->cur_argv[i], '=') + 1;
    }
    return v;
}

const char *qs_arg_pos(const struct qs_ctx *c, int k)
{
    int npos = 0;
    for (int i = 0; c->cur_cmd && i < c->cur_argc; i++) {
        const struct qs_arg *a = qs_cmd_arg_of(c->cur_cmd, c->cur_argv[i], &npos);
        if (a && a->pos && npos - 1 == k)
            return c->cur_argv[i];
    }
    return NULL;
}

long qs_arg_int(const struct qs_ctx *c, const char *key, long def)
{
    const char *v = qs_arg(c, key);
    return v ? strtol(v, NULL, 10) : def;
}

double qs_arg_float(const struct qs_ctx *c, const char *key, double def)
{
    const char *v = qs_arg(c, key);
    return v ? strtod(v, NULL) : def;
}

int qs_arg_int_in(const struct qs_ctx *c, const char *key, long lo, long hi, long *out, qs_err *e)
{
    const char *v = qs_arg(c, key);
    char what[160];
    if (!v)
        return 0;
    snprintf(what, sizeof what, "%s %s", c->cur_cmd->name, key);
    return qs_parse_int(v, lo, hi, out, what, e) < 0 ? -1 : 1;
}

unsigned qs_cmd_line_flags(const struct qs_ctx *c, const char *line)
{
    char **argv;
    qs_err e;
    int argc = qs_tokenize(line, &argv, &e), used = 0;
    if (argc < 0)
        return 0;
    const struct qs_cmd_def *d = qs_cmd_lookup(c, argc, argv, &used);
    qs_argv_free(argv, argc);
    return d ? d->flags : 0;
}

void qs_cmd_flag_words(unsigned flags, struct qs_sb *sb)
{
    static const struct {
        unsigned f;
        const char *w;
    } fw[] = {{QS_CMD_JOURNAL, "journal"},
              {QS_CMD_MODEL, "model"},
              {QS_CMD_DATA, "data"},
              {QS_CMD_LONG, "long"},
              {QS_CMD_FRONT, "front"},
              {QS_CMD_WRITES, "writes"},
              {QS_CMD_WRITES_OPT, "writes_opt"},
              {QS_CMD_SCRATCH, "scratch"},
              {QS_CMD_RECALC, "recalc"},
              {QS_CMD_SPARES, "spares_weights"}};
    int n = 0;
    for (size_t i = 0; i < sizeof fw / sizeof fw[0]; i++)
        if (flags & fw[i].f)
            qs_sb_printf(sb, "%s%s", n++ ? "," : "", fw[i].w);
    if (!n)
        qs_sb_printf(sb, "-");
}

static const struct qs_cmd_def *const core_tables[] = {
    qs_cmds_basic, qs_cmds_analysis, qs_cmds_session, qs_cmds_replay, qs_cmds_recover,
    qs_cmds_sens,  qs_cmds_allocate, qs_cmds_qat,     qs_cmds_study};

const struct qs_cmd_def *qs_cmd_at(const struct qs_ctx *c, int i)
{
    for (size_t t = 0; t < sizeof core_tables / sizeof *core_tables; t++)
        for (const struct qs_cmd_def *d = core_tables[t]; d->name; d++)
            if (i-- == 0)
                return d;
    for (const struct qs_cmd_def *d = c ? c->extra : NULL; d && d->name; d++)
        if (i-- == 0)
            return d;
    return NULL;
}

const struct qs_cmd_def *qs_cmd_lookup(const struct qs_ctx *c, int argc, char **argv, int *used)
{
    const struct qs_cmd_def *one = NULL;
    if (argc < 1)
        return NULL;
    for (int i = 0;; i++) {
        const struct qs_cmd_def *d = qs_cmd_at(c, i);
        if (!d)
            break;
        const char *sp = strchr(d->name, ' ');
        if (sp) {
            size_t n = (size_t)(sp - d->name);
            if (argc >= 2 && strlen(argv[0]) == n && !strncmp(d->name, argv[0], n) &&
                !strcmp(sp + 1, argv[1])) {
                *used = 2;
                return d;
            }
        } else if (!strcmp(d->name, argv[0]) && !one) {
            one = d;
        }
    }
    *used = 1;
    return one;
}

void qs_argv_free(char **argv, int argc)
{
    for (int i = 0; argv && i < argc; i++)
        free(argv[i]);
    free(argv);
}

int qs_tokenize(const char *line, char ***out, qs_err *e)
{
    int argc = 0, cap = 8;
    char **argv = malloc((size_t)cap * sizeof *argv);
    size_t len = strlen(line);
    char *word = malloc(len + 1);
    if (!argv || !word) {
        free(argv);
        free(word);
        return qs_errf(e, "out of memory");
    }
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p || *p == '#')
            break;
        size_t w = 0;
        char quote = 0;
        while (*p && (quote || (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n'))) {
            if (quote) {
                if (*p == quote)
                    quote = 0;
                else if (*p == '\\' && quote == '"' && p[1])
                    word[w++] = *++p;
                else
                    word[w++] = *p;
            } else if (*p == '"' || *p == '\'') {
                quote = *p;
            } else if (*p == '\\' && p[1]) {
                word[w++] = *++p;
            } else {
                word[w++] = *p;
            }
            p++;
        }
        if (quote) {
            qs_argv_free(argv, argc);
            free(word);
            return qs_errf(e, "unterminated %c quote", quote);
        }
        word[w] = 0;
        if (argc + 1 >= cap) {
            char **n = realloc(argv, (size_t)(cap *= 2) * sizeof *argv);
            if (!n) {
                qs_argv_free(argv, argc);
                free(word);
                return qs_errf(e, "out of memory");
            }
            argv = n;
        }
        argv[argc++] = qs_strdup(word);
    }
    free(word);
    argv[argc] = NULL;
    *out = argv;
    return argc;
}

void qs_emit(struct qs_ctx *c, cJSON *obj, const char *text)
{
    if (c->emit)
        c->emit(c->u, obj, text ? text : "");
    if (!c->cur_results)
        c->cur_results = cJSON_CreateArray();
    cJSON_AddItemToArray(c->cur_results, obj);
}

void qs_emit_text(struct qs_ctx *c, const char *text)
{
    if (c->emit && text && text[0])
        c->emit(c->u, NULL, text);
}

void qs_note(struct qs_ctx *c, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (c->note)
        c->note(c->u, buf);
}

void qs_set_last_table(struct qs_ctx *c, const char *title, const cJSON *rows, const char *header)
{
    cJSON_Delete(c->last_table);
    c->last_table = cJSON_CreateObject();
    cJSON_AddStringToObject(c->last_table, "title", title);
    cJSON_AddStringToObject(c->last_table, "header", header ? header : "");
    cJSON_AddItemToObject(c->last_table, "rows", cJSON_Duplicate(rows, 1));
}

int qs_journal_add(struct qs_ctx *c, const char *line, cJSON *results)
{
    if (c->njournal == c->capjournal) {
        int cap = c->capjournal ? c->capjournal * 2 : 32;
        struct qs_jentry *j = realloc(c->journal, (size_t)cap * sizeof *j);
        if (!j)
            return -1;
        c->journal = j;
        c->capjournal = cap;
    }
    struct qs_jentry *j = &c->journal[c->njournal++];
    j->line = qs_strdup(line);
    j->results = results ? results : cJSON_CreateArray();
    c->dirty = 1;
    if (c->on_journal)
        c->on_journal(c, j);
    return 0;
}

struct guarded_cmd {
    struct qs_ctx *c;
    const struct qs_cmd_def *d;
    int argc;
    char **argv;
};

static int run_guarded(void *u, qs_err *e)
{
    struct guarded_cmd *g = u;
    return g->d->fn(g->c, g->argc, g->argv, e);
}

int qs_exec_line(struct qs_ctx *c, const char *line, qs_err *e)
{
    char **argv;
    int argc = qs_tokenize(line, &argv, e);
    if (argc < 0)
        return -1;
    if (argc == 0) {
        qs_argv_free(argv, argc);
        return 0;
    }
    int used = 0, rc = -1;
    const struct qs_cmd_def *d = qs_cmd_lookup(c, argc, argv, &used);
    if (!d) {
        /* suggest a command sharing the first letters */
        char sug[256] = "";
        size_t sl = 0;
        for (int i = 0; qs_cmd_at(c, i); i++) {
            const char *n = qs_cmd_at(c, i)->name;
            if (!strncmp(n, argv[0], 2) && sl + 1 < sizeof sug && (sl == 0 || !strstr(sug, n)))
                sl += (size_t)snprintf(sug + sl, sizeof sug - sl, "%s%s", sl ? ", " : "", n);
        }
        if (sl)
            qs_errf(e, "unknown command '%s' (did you mean: %s?)", argv[0], sug);
        else
            qs_errf(e, "unknown command '%s' (type 'help' for the list)", argv[0]);
        goto out;
    }
    /* the arguments against the command's spec, before anything needs a model */
    if (qs_cmd_check_args(d, argc - used, argv + used, e) < 0)
        goto out;
    if ((d->flags & (QS_CMD_MODEL | QS_CMD_DATA)) && c->b->lm) {
        if ((d->flags & QS_CMD_DATA) && qs_bench_lm_ready(c->b, e) < 0) {
            qs_err_prefix(e, d->name);
            goto out;
        }
    } else if ((d->flags & (QS_CMD_MODEL | QS_CMD_DATA)) && !c->b->model) {
        qs_errf(e, "%s: no model loaded (load model PATH)", d->name);
        goto out;
    } else if ((d->flags & QS_CMD_DATA) && qs_bench_ready(c->b, e) < 0) {
        qs_err_prefix(e, d->name);
        goto out;
    }
    if (d->flags & QS_CMD_JOURNAL) {
        /* the journal is read back line by line: a word holding a line break cannot be
         * recorded faithfully, so the command is refused before it changes anything */
        for (int i = used; i < argc; i++)
            if (strpbrk(argv[i], "\n\r")) {
                qs_errf(e,
                        "%s: an argument holds a line break, which a session cannot record "
                        "(rename the file or layer)",
                        d->name);
                goto out;
            }
    }
    const char *rfrom, *rto;
    if (redirect_args(c, d, argc - used, argv + used, &rfrom, &rto, e) < 0)
        goto out;
    if (c->safe && !(c->scratch && (d->flags & QS_CMD_SCRATCH)) &&
        qs_cmd_writes(d, argc - used, argv + used)) {
        qs_errf(e,
                "%s writes files: refused while replaying a session (replay it with "
                "--allow-writes to let it write)",
                d->name);
        goto out;
    }
    /* a model file changed on disk under its mapping: refused before any weight is read */
    if (!(d->flags & QS_CMD_SPARES) && qs_bench_check_files(c->b, e) < 0) {
        qs_err_prefix(e, d->name);
        goto out;
    }
    c->canon[0] = 0;
    c->no_journal = 0;
    cJSON_Delete(c->cur_results);
    c->cur_results = NULL;
    quote_cut = 0;
    /* and one that changes while the command runs (a truncation faults on the next read of
     * the mapping) turns into this command's error instead of SIGBUS */
    struct guarded_cmd g = {c, d, argc - used, argv + used};
    /* the handler's qs_arg view (saved: `source` and `allocate apply` run commands inside) */
    const struct qs_cmd_def *sv_cmd = c->cur_cmd;
    int sv_argc = c->cur_argc;
    char **sv_argv = c->cur_argv;
    c->cur_cmd = d;
    c->cur_argc = argc - used;
    c->cur_argv = argv + used;
    rc = qs_st_guard(run_guarded, &g, e);
    c->cur_cmd = sv_cmd;
    c->cur_argc = sv_argc;
    c->cur_argv = sv_argv;
    if (rto) /* the journal records the path as the session wrote it */
        str_subst(c->canon, sizeof c->canon, rto, rfrom);
    if (rc == 0 && (d->flags & QS_CMD_JOURNAL) && !c->no_journal) {
        /* A canonical form that filled c->canon, or holds a word qs_quote had to cut, would
         * journal a different command: the typed words are recorded instead, whole. */
        int cut = quote_cut || strlen(c->canon) + 1 >= sizeof c->canon;
        if (c->canon[0] && !cut) {
            qs_journal_add(c, c->canon, c->cur_results);
        } else { /* the typed words, re-joined with single spaces and quoted where needed */
            struct qs_sb sb = {0};
            for (int i = 0; i < argc; i++) {
                if (i)
                    qs_sb_printf(&sb, " ");
                qs_quote_sb(argv[i], &sb);
            }
            if (!sb.s) {
                rc = qs_errf(e, "%s: out of memory while journaling the command", d->name);
                goto out;
            }
            qs_journal_add(c, sb.s, c->cur_results);
            qs_sb_free(&sb);
        }
        c->cur_results = NULL;
    }
out:
    cJSON_Delete(c->cur_results);
    c->cur_results = NULL;
    qs_argv_free(argv, argc);
    return rc;
}

int qs_split_statements(const char *text, int (*fn)(void *u, const char *stmt), void *u)
{
    size_t len = strlen(text), start = 0;
    char *buf = malloc(len + 1);
    if (!buf)
        return -1;
    char quote = 0;
    int rc = 0;
    for (size_t i = 0; i <= len && rc == 0; i++) {
        char ch = text[i];
        if (quote) {
            if (ch == quote)
                quote = 0;
            if (ch)
                continue;
        } else if (ch == '"' || ch == '\'') {
            quote = ch;
            continue;
        } else if (ch == '#') { /* comment to end of line */
            while (text[i + 1] && text[i + 1] != '\n')
                i++;
            continue;
        }
        if (ch == ';' || ch == '\n' || ch == 0) {
            memcpy(buf, text + start, i - start);
            buf[i - start] = 0;
            start = i + 1;
            char *s = buf;
            while (*s == ' ' || *s == '\t' || *s == '\r')
                s++;
            size_t n = strlen(s);
            while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
                s[--n] = 0;
            if (*s && *s != '#')
                rc = fn(u, s);
        }
    }
    free(buf);
    return rc;
}

struct exec_state {
    struct qs_ctx *c;
    qs_err *e;
    int rc;
    int noted; /* errors passed to c->note (bail off) */
};

static int exec_one(void *u, const char *stmt)
{
    struct exec_state *st = u;
    qs_err e2 = {{0}};
    if (qs_exec_line(st->c, stmt, &e2) < 0) {
        st->rc = -1;
        if (st->c->bail) { /* stops here: the caller reports it */
            if (st->e)
                *st->e = e2;
            return 1;
        }
        st->noted++;
        if (st->c->note)
            st->c->note(st->c->u, e2.msg);
        else if (st->e && st->noted == 1)
            *st->e = e2; /* nobody has seen it: the caller reports it */
    }
    return st->c->quit ? 1 : 0;
}

int qs_exec_text(struct qs_ctx *c, const char *text, qs_err *e)
{
    struct exec_state st = {c, e, 0, 0};
    if (qs_split_statements(text, exec_one, &st) < 0)
        return qs_errf(e, "out of memory");
    /* errors already noted are summed up, not repeated (unless one stopped the run) */
    if (st.rc < 0 && st.noted && c->note && e && !e->msg[0])
        qs_errf(e, "%d command%s failed (reported above)", st.noted, st.noted == 1 ? "" : "s");
    return st.rc;
}

static int needs_quotes(const char *w)
{
    return !w[0] || strpbrk(w, " \t\n\r\"'#;\\");
}

const char *qs_quote(const char *w, char *buf, size_t n)
{
    if (!needs_quotes(w) && strlen(w) < n) {
        snprintf(buf, n, "%s", w);
        return buf;
    }
    size_t k = 0;
    if (n < 3) {
        quote_cut = 1;
        return "''";
    }
    buf[k++] = '"';
    const char *p = w;
    for (; *p && k + 3 < n; p++) {
        if (*p == '"' || *p == '\\')
            buf[k++] = '\\';
        buf[k++] = *p;
    }
    if (*p)
        quote_cut = 1;
    buf[k++] = '"';
    buf[k] = 0;
    return buf;
}

void qs_quote_sb(const char *w, struct qs_sb *sb)
{
    if (!needs_quotes(w)) {
        qs_sb_printf(sb, "%s", w);
        return;
    }
    qs_sb_printf(sb, "\"");
    for (const char *p = w; *p; p++)
        qs_sb_printf(sb, "%s%c", *p == '"' || *p == '\\' ? "\\" : "", *p);
    qs_sb_printf(sb, "\"");
}

int qs_cmd_writes(const struct qs_cmd_def *d, int argc, char **argv)
{
    if (d->flags & QS_CMD_WRITES)
        return 1;
    if (!(d->flags & QS_CMD_WRITES_OPT))
        return 0;
    for (int i = 0; i < argc; i++)
        if (qs_opt_value(argv[i], "out") || qs_opt_value(argv[i], "csv") ||
            qs_opt_value(argv[i], "plan"))
            return 1;
    return 0;
}

const char *qs_opt_value(const char *tok, const char *key)
{
    size_t n = strlen(key);
    return !strncmp(tok, key, n) && tok[n] == '=' ? tok + n + 1 : NULL;
}

int qs_parse_int(const char *s, long lo, long hi, long *out, const char *what, qs_err *e)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno)
        return qs_errf(e, "%s: '%s' is not an integer", what, s);
    if (v < lo || v > hi)
        return qs_errf(e, "%s: %ld is out of range (%ld..%ld)", what, v, lo, hi);
    *out = v;
    return 0;
}

int qs_parse_double(const char *s, double *out, const char *what, qs_err *e)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v))
        return qs_errf(e, "%s: '%s' is not a finite number", what, s);
    *out = v;
    return 0;
}
