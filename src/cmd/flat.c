/* flat.c - results as flat name=value leaves: flattening a result's JSON, the "# =>" line
 * format that sessions and the journal record them in, its parser, and the comparison --check
 * makes with a tolerance. */
#include "qscope/session.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- flattening --------------------------------------------------------------------------- */

static int flat_add(struct qs_flat_list *l, const char *name, const char *value,
                    enum qs_flat_kind kind)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 32;
        struct qs_flat *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    struct qs_flat *f = &l->v[l->n];
    f->name = qs_strdup(name);
    f->value = qs_strdup(value);
    f->kind = kind;
    if (!f->name || !f->value) {
        free(f->name);
        free(f->value);
        return -1;
    }
    l->n++;
    return 0;
}

/* A cJSON number (not a raw one) as the shortest text that reads back to the same double. */
static void number_text(double v, char *buf, size_t n)
{
    if (!isfinite(v)) {
        snprintf(buf, n, "null");
        return;
    }
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(buf, n, "%.0f", v);
        return;
    }
    snprintf(buf, n, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, n, "%.17g", v);
}

static int is_plain(const cJSON *it)
{
    return !cJSON_IsObject(it) && !cJSON_IsArray(it);
}

static int flat_rec(const cJSON *it, char *name, size_t len, size_t cap, int top,
                    struct qs_flat_list *out)
{
    if (cJSON_IsObject(it)) {
        for (const cJSON *ch = it->child; ch; ch = ch->next) {
            if (!ch->string || (top && !strcmp(ch->string, "cmd")))
                continue;
            int w = snprintf(name + len, cap - len, "%s%s", len ? "." : "", ch->string);
            if (w < 0 || (size_t)w >= cap - len)
                continue; /* a name this long is not worth recording */
            if (flat_rec(ch, name, len + (size_t)w, cap, 0, out) < 0)
                return -1;
        }
        name[len] = 0;
        return 0;
    }
    if (cJSON_IsArray(it)) {
        int plain = 1, i = 0;
        for (const cJSON *ch = it->child; ch; ch = ch->next)
            plain &= is_plain(ch);
        for (const cJSON *ch = it->child; ch; ch = ch->next, i++) {
            if (plain && i >= QS_FLAT_MAX_ITEMS)
                break;
            int w = snprintf(name + len, cap - len, "[%d]", i);
            if (w < 0 || (size_t)w >= cap - len)
                break;
            if (flat_rec(ch, name, len + (size_t)w, cap, 0, out) < 0)
                return -1;
        }
        name[len] = 0;
        return 0;
    }
    if (!len)
        return 0; /* a bare value has no name */
    char num[64];
    if (cJSON_IsRaw(it)) {
        const char *s = it->valuestring ? it->valuestring : "null";
        return flat_add(out, name, s, strcmp(s, "null") ? QS_FLAT_NUM : QS_FLAT_NULL);
    }
    if (cJSON_IsNumber(it)) {
        number_text(it->valuedouble, num, sizeof num);
        return flat_add(out, name, num, strcmp(num, "null") ? QS_FLAT_NUM : QS_FLAT_NULL);
    }
    if (cJSON_IsString(it))
        return flat_add(out, name, it->valuestring ? it->valuestring : "", QS_FLAT_STR);
    if (cJSON_IsBool(it))
        return flat_add(out, name, cJSON_IsTrue(it) ? "true" : "false", QS_FLAT_BOOL);
    if (cJSON_IsNull(it))
        return flat_add(out, name, "null", QS_FLAT_NULL);
    return 0;
}

int qs_flatten(const cJSON *obj, struct qs_flat_list *out)
{
    char name[1024];
    name[0] = 0;
    if (!obj)
        return 0;
    if (!cJSON_IsArray(obj))
        return flat_rec(obj, name, 0, sizeof name, 1, out);
    int n = cJSON_GetArraySize(obj), k = 0;
    for (const cJSON *r = obj->child; r; r = r->next, k++) {
        size_t len = 0;
        if (n > 1)
            len = (size_t)snprintf(name, sizeof name, "[%d]", k);
        if (cJSON_IsObject(r)) {
            /* "[k]" then ".key": flat_rec joins with '.' whenever a prefix is present */
            if (flat_rec(r, name, len, sizeof name, 1, out) < 0)
                return -1;
        }
    }
    return 0;
}

void qs_flat_list_free(struct qs_flat_list *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].value);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

const struct qs_flat *qs_flat_find(const struct qs_flat_list *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i].name, name))
            return &l->v[i];
    return NULL;
}

static int needs_quote(const char *s)
{
    size_t n = strlen(s);
    if (s[0] == '"' || (n && (s[0] == ' ' || s[n - 1] == ' ' || s[n - 1] == '\t')))
        return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 1;
    return 0;
}

void qs_flat_format(const struct qs_flat *f, struct qs_sb *sb)
{
    if (f->kind == QS_FLAT_STR && needs_quote(f->value)) {
        cJSON *s = cJSON_CreateString(f->value);
        char *q = s ? cJSON_PrintUnformatted(s) : NULL;
        qs_sb_printf(sb, "%s%s=%s\n", QS_RESULT_PREFIX, f->name, q ? q : "\"\"");
        free(q);
        cJSON_Delete(s);
    } else {
        qs_sb_printf(sb, "%s%s=%s\n", QS_RESULT_PREFIX, f->name, f->value);
    }
}

int qs_flat_parse(const char *text, char *name, size_t nn, char **value, qs_err *e)
{
    const char *eq = strchr(text, '=');
    if (!eq || eq == text)
        return qs_errf(e, "malformed result line '%s' (expected '# => name=value')", text);
    if ((size_t)(eq - text) >= nn)
        return qs_errf(e, "result name too long");
    memcpy(name, text, (size_t)(eq - text));
    name[eq - text] = 0;
    const char *v = eq + 1;
    size_t vl = strlen(v);
    while (vl && (v[vl - 1] == '\n' || v[vl - 1] == '\r'))
        vl--;
    if (v[0] == '"') {
        char *tmp = malloc(vl + 1);
        if (!tmp)
            return qs_errf(e, "out of memory");
        memcpy(tmp, v, vl);
        tmp[vl] = 0;
        cJSON *j = cJSON_Parse(tmp);
        free(tmp);
        if (!cJSON_IsString(j)) {
            cJSON_Delete(j);
            return qs_errf(e, "%s: malformed quoted value", name);
        }
        *value = qs_strdup(j->valuestring);
        cJSON_Delete(j);
    } else {
        *value = malloc(vl + 1);
        if (*value) {
            memcpy(*value, v, vl);
            (*value)[vl] = 0;
        }
    }
    return *value ? 0 : qs_errf(e, "out of memory");
}

int qs_flat_compare(const char *recorded, const struct qs_flat *got, double tol, qs_err *e)
{
    if (got->kind != QS_FLAT_NUM)
        return strcmp(recorded, got->value) == 0;
    if (!strcmp(recorded, "null"))
        return 0;
    char *end;
    errno = 0;
    double a = strtod(recorded, &end);
    if (end == recorded || *end)
        return qs_errf(e, "recorded value '%s' is not a number (the re-run gives %s)", recorded,
                       got->value);
    double b = strtod(got->value, NULL);
    if (!isfinite(a) || !isfinite(b))
        return a == b || (isnan(a) && isnan(b));
    double m = fmax(fmax(fabs(a), fabs(b)), 1.0);
    return fabs(a - b) <= tol * m;
}
