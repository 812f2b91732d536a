/* session.c - saved sessions, replay with --check, the autosaved journal and its recovery, and
 * the commands `save session`, `source` and `recover`. */
#include "qscope/session.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qscope/script.h"
#include "qscope/sha256.h"

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

/* ---- files and lines ----------------------------------------------------------------------- */

struct lines {
    char *buf;
    char **v; /* NUL-terminated lines without their newline */
    int n;
    int complete; /* the last line ended with a newline (or the file is empty) */
};

static void lines_free(struct lines *l)
{
    free(l->buf);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int lines_from_text(char *buf, size_t len, struct lines *l, qs_err *e)
{
    memset(l, 0, sizeof *l);
    l->buf = buf;
    int cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += buf[i] == '\n';
    l->v = malloc((size_t)cap * sizeof *l->v);
    if (!l->v)
        return qs_errf(e, "out of memory");
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '\n') {
            buf[i] = 0;
            if (i > start && buf[i - 1] == '\r')
                buf[i - 1] = 0;
            l->v[l->n++] = buf + start;
            start = i + 1;
        }
    }
    l->complete = start == len;
    if (start < len)
        l->v[l->n++] = buf + start;
    return 0;
}

static int read_all_fd(int fd, char **out, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        return -1;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int lines_read(const char *path, struct lines *l, qs_err *e)
{
    memset(l, 0, sizeof *l);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qs_errf(e, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return qs_errf(e, "%s: is a folder, not a session file", path);
    }
    char *buf;
    size_t len;
    int rc = read_all_fd(fd, &buf, &len);
    int err = errno;
    close(fd);
    if (rc < 0)
        return qs_errf(e, "%s: %s", path, strerror(err));
    if (memchr(buf, 0, len)) {
        free(buf);
        return qs_errf(e, "%s: contains NUL bytes: not a text session file", path);
    }
    return lines_from_text(buf, len, l, e);
}

static int is_comment_or_blank(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return *s == 0 || *s == '#';
}

static int starts_with(const char *s, const char *p)
{
    return !strncmp(s, p, strlen(p));
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static void iso_date(char *buf, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(buf, n, "unknown");
}

/* ---- hashes --------------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int qs_session_hash_path(const char *path, char hex[65], qs_err *e)
{
    struct stat st;
    char rb[PATH_MAX]; /* a relative path names the file `load model/data` found for it */
    if (path[0] != '/' && qs_bundle_path(path, rb, sizeof rb, NULL) == 0)
        path = rb;
    if (stat(path, &st) < 0)
        return qs_errf(e, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return qs_sha256_file(path, hex, e);
    DIR *d = opendir(path);
    if (!d)
        return qs_errf(e, "%s: %s", path, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char full[PATH_MAX];
        if (de->d_name[0] == '.')
            continue;
        snprintf(full, sizeof full, "%s/%s", path, de->d_name);
        if (stat(full, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) {
                rc = qs_errf(e, "out of memory");
                break;
            }
            names = nn;
        }
        names[n++] = qs_strdup(de->d_name);
    }
    closedir(d);
    if (rc == 0)
        qsort(names, (size_t)n, sizeof *names, cmp_str);
    struct qs_sha256 s;
    qs_sha256_init(&s);
    for (int i = 0; rc == 0 && i < n; i++) {
        char full[PATH_MAX], h[65];
        snprintf(full, sizeof full, "%s/%s", path, names[i]);
        if (qs_sha256_file(full, h, e) < 0) {
            rc = -1;
            break;
        }
        qs_sha256_update(&s, names[i], strlen(names[i]));
        qs_sha256_update(&s, " ", 1);
        qs_sha256_update(&s, h, 64);
        qs_sha256_update(&s, "\n", 1);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc == 0) {
        uint8_t dg[32];
        qs_sha256_final(&s, dg);
        qs_sha256_hex(dg, hex);
    }
    return rc;
}

/* ---- session write ----------------------------------------------------------------------------
 */

struct infile {
    char kind[8]; /* "model" or "data" */
    char *path;
};

/* Every model and data file the journal loads, in first-load order, skipping files an earlier
 * journal command wrote itself (train out=PATH). */
static int journal_inputs(const struct qs_ctx *c, struct infile **out, int *nout)
{
    struct infile *v = NULL;
    char **written = NULL;
    int n = 0, nw = 0;
    for (int k = 0; k < c->njournal; k++) {
        char **argv;
        qs_err e;
        int argc = qs_tokenize(c->journal[k].line, &argv, &e);
        if (argc < 0)
            continue;
        if (argc >= 3 && !strcmp(argv[0], "load") &&
            (!strcmp(argv[1], "model") || !strcmp(argv[1], "data"))) {
            int skip = 0;
            for (int i = 0; i < nw && !skip; i++)
                skip = !strcmp(written[i], argv[2]);
            for (int i = 0; i < n && !skip; i++)
                skip = !strcmp(v[i].kind, argv[1]) && !strcmp(v[i].path, argv[2]);
            if (!skip) {
                struct infile *nv = realloc(v, (size_t)(n + 1) * sizeof *nv);
                if (nv) {
                    v = nv;
                    snprintf(v[n].kind, sizeof v[n].kind, "%s", argv[1]);
                    v[n].path = qs_strdup(argv[2]);
                    n++;
                }
            }
        } else if (argc >= 1 && !strcmp(argv[0], "train")) {
            for (int i = 1; i < argc; i++) {
                const char *o = qs_opt_value(argv[i], "out");
                char **nw2 = o ? realloc(written, (size_t)(nw + 1) * sizeof *nw2) : NULL;
                if (nw2) {
                    written = nw2;
                    written[nw++] = qs_strdup(o);
                }
            }
        }
        qs_argv_free(argv, argc);
    }
    for (int i = 0; i < nw; i++)
        free(written[i]);
    free(written);
    *out = v;
    *nout = n;
    return 0;
}

static void entry_text(const struct qs_jentry *j, struct qs_sb *sb)
{
    qs_sb_printf(sb, "%s\n", j->line);
    struct qs_flat_list fl = {0};
    qs_flatten(j->results, &fl);
    for (int i = 0; i < fl.n; i++)
        qs_flat_format(&fl.v[i], sb);
    qs_flat_list_free(&fl);
}

int qs_session_write(struct qs_ctx *c, const char *path, qs_err *e)
{
    struct infile *in;
    int nin, rc = 0;
    journal_inputs(c, &in, &nin);
    struct qs_sb sb = {0};
    char date[64];
    iso_date(date, sizeof date);
    qs_sb_printf(&sb, "%s\n# version %s\n# date %s\n# seed %llu\n# threads %d\n", QS_SESSION_MAGIC,
                 QS_VERSION, date, (unsigned long long)c->b->seed, openblas_get_num_threads());
    for (int i = 0; i < nin; i++) {
        char hex[65];
        qs_err he = {{0}};
        if (qs_session_hash_path(in[i].path, hex, &he) < 0) {
            rc = qs_errf(e, "cannot pin the %s the session loads: %s", in[i].kind, he.msg);
            break;
        }
        qs_sb_printf(&sb, "# %s %s sha256=%s\n", in[i].kind, in[i].path, hex);
    }
    for (int i = 0; i < nin; i++)
        free(in[i].path);
    free(in);
    if (rc < 0) {
        qs_sb_free(&sb);
        return -1;
    }
    for (int k = 0; k < c->njournal; k++)
        entry_text(&c->journal[k], &sb);
    qs_sb_printf(&sb, "%s (%d commands)\n", QS_SESSION_END, c->njournal);
    if (!sb.s) {
        return qs_errf(e, "out of memory");
    }

    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        qs_sb_free(&sb);
        return qs_errf(e, "%s: path too long", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        qs_sb_free(&sb);
        return qs_errf(e, "%s: %s", path, strerror(errno));
    }
    if (write_all(fd, sb.s, sb.len) < 0 || fsync(fd) < 0) {
        rc = qs_errf(e, "%s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
    } else if (close(fd) < 0 || rename(tmp, path) < 0) {
        rc = qs_errf(e, "%s: %s", path, strerror(errno));
        unlink(tmp);
    }
    qs_sb_free(&sb);
    if (rc == 0)
        c->dirty = 0;
    return rc;
}

/* ---- capturing results while replaying ---------------------------------------------------- */

struct capture {
    void (*emit)(void *u, const cJSON *obj, const char *text);
    void (*note)(void *u, const char *msg);
    void *u;
    cJSON *results; /* copies of the results of the running command */
};

static void cap_emit(void *u, const cJSON *obj, const char *text)
{
    struct capture *cap = u;
    if (obj) { /* text-only output (qs_emit_text) is not a result */
        if (!cap->results)
            cap->results = cJSON_CreateArray();
        cJSON_AddItemToArray(cap->results, cJSON_Duplicate(obj, 1));
    }
    if (cap->emit)
        cap->emit(cap->u, obj, text);
}

static void cap_note(void *u, const char *msg)
{
    struct capture *cap = u;
    if (cap->note)
        cap->note(cap->u, msg);
}

static void capture_begin(struct qs_ctx *c, struct capture *cap)
{
    memset(cap, 0, sizeof *cap);
    cap->emit = c->emit;
    cap->note = c->note;
    cap->u = c->u;
    c->emit = cap_emit;
    c->note = cap_note;
    c->u = cap;
}

static void capture_end(struct qs_ctx *c, struct capture *cap)
{
    c->emit = cap->emit;
    c->note = cap->note;
    c->u = cap->u;
    cJSON_Delete(cap->results);
    cap->results = NULL;
}

/* ---- replay ---------------------------------------------------------------------------------- */

/* Parses "# model PATH sha256=HEX" (kind "model" or "data"). 1 parsed, 0 not such a line,
 * -1 malformed. */
static int header_file(const char *line, char *kind, size_t nk, char *path, size_t np, char *hex)
{
    const char *rest;
    if (starts_with(line, "# model "))
        snprintf(kind, nk, "model"), rest = line + 8;
    else if (starts_with(line, "# data "))
        snprintf(kind, nk, "data"), rest = line + 7;
    else
        return 0;
    const char *sh = strstr(rest, " sha256=");
    if (!sh)
        return -1;
    const char *last;
    while ((last = strstr(sh + 1, " sha256=")))
        sh = last; /* the path itself may hold the marker; the hash is the last one */
    size_t pl = (size_t)(sh - rest);
    if (pl == 0 || pl >= np || strlen(sh + 8) != 64)
        return -1;
    for (int i = 0; i < 64; i++)
        if (!strchr("0123456789abcdef", sh[8 + i]))
            return -1;
    memcpy(path, rest, pl);
    path[pl] = 0;
    memcpy(hex, sh + 8, 65);
    return 1;
}

static int count_commands(const struct lines *l, int upto)
{
    int n = 0;
    for (int i = 0; i < upto && i < l->n; i++)
        n += !is_comment_or_blank(l->v[i]);
    return n;
}

/* What a mismatch message calls the command: its result's "cmd", else its first word. */
static void cmd_label(const cJSON *results, const char *line, char *buf, size_t n)
{
    const cJSON *r0 = cJSON_IsArray(results) ? results->child : NULL;
    const cJSON *cmd = r0 ? cJSON_GetObjectItemCaseSensitive(r0, "cmd") : NULL;
    if (cJSON_IsString(cmd) && cmd->valuestring) {
        snprintf(buf, n, "%s", cmd->valuestring);
        return;
    }
    while (*line == ' ' || *line == '\t')
        line++;
    size_t k = strcspn(line, " \t");
    snprintf(buf, n, "%.*s", (int)(k < 60 ? k : 60), line);
}

/* Checks the header: magic, end line, pinned files. Returns the number of problems reported and
 * sets *body_end to the index of the end line. */
static int replay_header(struct qs_ctx *c, const char *path, const struct lines *l, int *body_end)
{
    if (l->n == 0 || strcmp(l->v[0], QS_SESSION_MAGIC)) {
        qs_note(c,
                "%s:1: not a qscope session (the first line must be '%s'; run plain "
                "scripts with -b)",
                path, QS_SESSION_MAGIC);
        return 1;
    }
    int end = -1;
    for (int i = 0; i < l->n; i++)
        if (starts_with(l->v[i], QS_SESSION_END)) {
            end = i;
            break;
        }
    if (end < 0 || (end == l->n - 1 && !l->complete)) {
        qs_note(c,
                "%s:%d: truncated session: the file stops after %d commands without its "
                "'%s' line (cut short while saving or copying?); nothing was run",
                path, l->n, count_commands(l, l->n), QS_SESSION_END);
        return 1;
    }
    int problems = 0, want = -1, have = count_commands(l, end);
    if (sscanf(l->v[end], QS_SESSION_END " (%d commands)", &want) == 1 && want != have) {
        qs_note(c,
                "%s:%d: the end line records %d commands but the file holds %d (lines lost "
                "or added?); nothing was run",
                path, end + 1, want, have);
        problems++;
    }
    for (int i = 1; i < end && is_comment_or_blank(l->v[i]); i++) {
        char kind[8], fpath[PATH_MAX], hex[65], now[65];
        int hf = header_file(l->v[i], kind, sizeof kind, fpath, sizeof fpath, hex);
        if (hf < 0) {
            qs_note(c, "%s:%d: malformed header line (expected '# model|data PATH sha256=HEX')",
                    path, i + 1);
            problems++;
            continue;
        }
        if (hf == 1) {
            qs_err he = {{0}};
            struct stat st;
            char rb[PATH_MAX]; /* a bundled file resolves as `load model/data` resolve it */
            if (fpath[0] != '/' && qs_bundle_path(fpath, rb, sizeof rb, NULL) == 0)
                snprintf(fpath, sizeof fpath, "%s", rb);
            if (stat(fpath, &st) < 0) {
                qs_note(c, "%s:%d: %s %s is missing (%s); refusing to replay", path, i + 1, kind,
                        fpath, strerror(errno));
                problems++;
            } else if (qs_session_hash_path(fpath, now, &he) < 0) {
                qs_note(c, "%s:%d: %s %s cannot be read: %s", path, i + 1, kind, fpath, he.msg);
                problems++;
            } else if (strcmp(now, hex)) {
                qs_note(c,
                        "%s:%d: %s %s has changed (sha256 recorded %.12s..., now %.12s...); "
                        "refusing to replay",
                        path, i + 1, kind, fpath, hex, now);
                problems++;
            }
            continue;
        }
        long v;
        char ver[64];
        if (sscanf(l->v[i], "# version %63s", ver) == 1 && strcmp(ver, QS_VERSION))
            qs_note(c, "%s:%d: recorded by qscope %s, replaying with %s", path, i + 1, ver,
                    QS_VERSION);
        /* Sums inside OpenBLAS depend on how the work is split between threads, and a few
         * results (a linear map quantized to int4, say) amplify last-bit differences: replay
         * with the thread count the session was recorded with. */
        if (sscanf(l->v[i], "# threads %ld", &v) == 1 && v >= 1 && v <= 256 &&
            v != openblas_get_num_threads()) {
            qs_note(c, "%s:%d: recorded with %ld BLAS threads: replaying with %ld (was %d)", path,
                    i + 1, v, v, openblas_get_num_threads());
            openblas_set_num_threads((int)v);
        }
    }
    *body_end = end;
    return problems;
}

int qs_session_replay(struct qs_ctx *c, const char *path, int check, double tol)
{
    struct lines l;
    qs_err e = {{0}};
    if (lines_read(path, &l, &e) < 0) {
        qs_note(c, "%s", e.msg);
        return 1;
    }
    int end = 0;
    if (replay_header(c, path, &l, &end) > 0) {
        lines_free(&l);
        return 1;
    }
    struct capture cap;
    struct qs_flat_list got = {0};
    char label[64] = "";
    int ncmd = 0, nfail = 0, nchecked = 0, ndiffer = 0, have_cmd = 0, stopped = 0;
    capture_begin(c, &cap);
    for (int i = 0; i < end; i++) {
        const char *s = l.v[i];
        int ln = i + 1;
        if (starts_with(s, QS_RESULT_PREFIX)) {
            if (!check)
                continue;
            char name[512], *val = NULL;
            qs_err pe = {{0}};
            if (!have_cmd) {
                qs_note(c, "%s:%d: result line with no successful command before it", path, ln);
                ndiffer++;
                continue;
            }
            if (qs_flat_parse(s + strlen(QS_RESULT_PREFIX), name, sizeof name, &val, &pe) < 0) {
                qs_note(c, "%s:%d: %s: %s", path, ln, label, pe.msg);
                ndiffer++;
                continue;
            }
            nchecked++;
            const struct qs_flat *g = qs_flat_find(&got, name);
            int eq = g ? qs_flat_compare(val, g, tol, &pe) : 0;
            if (!g) {
                qs_note(c, "%s:%d: %s: %s recorded %s, not produced by the re-run", path, ln, label,
                        name, val);
            } else if (eq < 0) {
                qs_note(c, "%s:%d: %s: %s: %s", path, ln, label, name, pe.msg);
            } else if (!eq) {
                qs_note(c, "%s:%d: %s: %s recorded %s got %s", path, ln, label, name, val,
                        g->value);
            }
            ndiffer += eq != 1;
            free(val);
            continue;
        }
        if (is_comment_or_blank(s))
            continue;
        cJSON_Delete(cap.results);
        cap.results = NULL;
        qs_flat_list_free(&got);
        have_cmd = 0;
        ncmd++;
        qs_err ce = {{0}};
        if (qs_exec_line(c, s, &ce) < 0) {
            qs_note(c, "%s:%d: %s", path, ln, ce.msg);
            nfail++;
            if (c->bail) {
                stopped = ln;
                break;
            }
            continue;
        }
        have_cmd = 1;
        qs_flatten(cap.results, &got);
        cmd_label(cap.results, s, label, sizeof label);
        if (c->quit)
            break;
    }
    capture_end(c, &cap);
    qs_flat_list_free(&got);
    lines_free(&l);
    char tail[128] = "";
    if (nfail)
        snprintf(tail, sizeof tail, ", %d failed%s", nfail, stopped ? " (stopped there)" : "");
    if (check)
        qs_note(c, "replay: %d commands%s, %d values checked, %d differ", ncmd, tail, nchecked,
                ndiffer);
    else
        qs_note(c, "replay: %d commands%s (recorded results not checked; add --check)", ncmd, tail);
    return nfail || ndiffer ? 1 : 0;
}

/* ---- autosave ------------------------------------------------------------------------------ */

struct autosave {
    int fd;
    char path[PATH_MAX];
    int failed;
    int secondary; /* journal-PID.qs beside a running qscope: removed at a clean exit */
};

static void autosave_fail(struct qs_ctx *c, struct autosave *a)
{
    if (!a->failed)
        qs_note(c, "autosave: %s: %s; the journal is no longer written (use 'save session')",
                a->path, strerror(errno));
    a->failed = 1;
}

static void autosave_entry(struct qs_ctx *c, const struct qs_jentry *j)
{
    struct autosave *a = c->journal_u;
    if (!a || a->fd < 0 || a->failed)
        return;
    struct qs_sb sb = {0};
    entry_text(j, &sb);
    if (!sb.s || write_all(a->fd, sb.s, sb.len) < 0 || fsync(a->fd) < 0)
        autosave_fail(c, a);
    qs_sb_free(&sb);
}

int qs_recover_path(char *buf, size_t n)
{
    char dir[PATH_MAX - 32];
    if (qs_state_dir(dir, sizeof dir) < 0)
        return -1;
    snprintf(buf, n, "%s/journal.prev.qs", dir);
    return 0;
}

/* Keeps an unclean journal's text as journal.prev.qs (written to a temporary file, synced, then
 * renamed, so a crash here loses nothing either). */
static int keep_aside(const char *dir, const char *text, size_t len, qs_err *e)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/journal.prev.qs.tmp", dir);
    snprintf(dst, sizeof dst, "%s/journal.prev.qs", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return qs_errf(e, "%s: %s", tmp, strerror(errno));
    if (write_all(fd, text, len) < 0 || fsync(fd) < 0) {
        int err = errno;
        close(fd);
        unlink(tmp);
        return qs_errf(e, "%s: %s", tmp, strerror(err));
    }
    close(fd);
    if (rename(tmp, dst) < 0)
        return qs_errf(e, "%s: %s", dst, strerror(errno));
    return 0;
}

/* Reads the journal open on fd. Returns the number of complete command lines when the journal
 * was not closed cleanly (0 when it was, or holds no command); *text receives its contents
 * (malloc'd, the caller frees) when the result is > 0. */
static int unclean_commands(int fd, char **text, size_t *len)
{
    char *old;
    *text = NULL;
    if (lseek(fd, 0, SEEK_SET) < 0 || read_all_fd(fd, &old, len) < 0)
        return 0;
    char *copy = malloc(*len + 1);
    struct lines l;
    qs_err le = {{0}};
    int n = 0, closed = 0;
    if (copy) {
        memcpy(copy, old, *len + 1);
        if (lines_from_text(copy, *len, &l, &le) == 0) {
            for (int i = l.n - 1; i >= 0; i--)
                if (l.v[i][0]) {
                    closed = !strcmp(l.v[i], QS_JOURNAL_CLOSED);
                    break;
                }
            for (int i = 0; i < l.n; i++)
                n += !is_comment_or_blank(l.v[i]) && (i < l.n - 1 || l.complete);
        }
        lines_free(&l); /* owns copy, also after a failure */
    }
    if (closed || n == 0) {
        free(old);
        return 0;
    }
    *text = old;
    return n;
}

/* The journal of a second qscope that ran beside another (journal-PID.qs) is removed at its
 * clean exit; one left by a crash is offered like journal.qs. A journal still locked belongs
 * to a running qscope and is left alone. Returns 1 when one was kept aside, -1 on error. */
static int claim_stale_secondary(struct qs_ctx *c, const char *dir, qs_err *e)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        size_t nl = strlen(de->d_name);
        if (strncmp(de->d_name, "journal-", 8) || nl < 12 || strcmp(de->d_name + nl - 3, ".qs"))
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            close(fd);
            continue;
        }
        char *text;
        size_t len;
        int n = unclean_commands(fd, &text, &len);
        if (n > 0) {
            if (keep_aside(dir, text, len, e) < 0) {
                rc = -1;
            } else {
                qs_note(c,
                        "a journal from an earlier session was not closed cleanly (%d "
                        "command%s): type 'recover' to restore it",
                        n, n == 1 ? "" : "s");
                rc = 1;
            }
            free(text);
        }
        if (rc >= 0)
            unlink(path);
        close(fd);
    }
    closedir(d);
    return rc;
}

static int autosave_fail_begin(struct autosave *a, qs_err *e, const char *why)
{
    qs_errf(e, "autosave: %s: %s", a->path, why);
    if (a->fd >= 0)
        close(a->fd);
    free(a);
    return -1;
}

int qs_autosave_begin(struct qs_ctx *c, qs_err *e)
{
    char dir[PATH_MAX - 64];
    if (c->on_journal)
        return 0;
    if (qs_state_dir(dir, sizeof dir) < 0)
        return qs_errf(e, "autosave: no state directory (set XDG_STATE_HOME or HOME)");
    struct autosave *a = qs_calloc(1, sizeof *a);
    if (!a)
        return qs_errf(e, "out of memory");
    snprintf(a->path, sizeof a->path, "%s/journal.qs", dir);
    a->fd = open(a->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->fd < 0)
        return autosave_fail_begin(a, e, strerror(errno));
    if (flock(a->fd, LOCK_EX | LOCK_NB) < 0) {
        /* another qscope is autosaving there: do not touch its journal */
        close(a->fd);
        snprintf(a->path, sizeof a->path, "%s/journal-%ld.qs", dir, (long)getpid());
        a->secondary = 1;
        a->fd = open(a->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (a->fd < 0 || flock(a->fd, LOCK_EX | LOCK_NB) < 0)
            return autosave_fail_begin(a, e, strerror(errno));
        qs_note(c, "another qscope is running: this session's journal is %s", a->path);
    } else {
        char *text;
        size_t len;
        int n = unclean_commands(a->fd, &text, &len);
        if (n > 0) {
            qs_err ke = {{0}};
            int rc = keep_aside(dir, text, len, &ke);
            free(text);
            if (rc < 0) /* keep the old journal untouched rather than lose it */
                return autosave_fail_begin(a, e, ke.msg);
            qs_note(c,
                    "a journal from an earlier session was not closed cleanly (%d command%s): "
                    "type 'recover' to restore it",
                    n, n == 1 ? "" : "s");
        } else if (claim_stale_secondary(c, dir, e) < 0) {
            qs_err_prefix(e, "autosave");
            close(a->fd);
            free(a);
            return -1;
        }
        if (ftruncate(a->fd, 0) < 0 || lseek(a->fd, 0, SEEK_SET) < 0)
            return autosave_fail_begin(a, e, strerror(errno));
    }
    char date[64];
    iso_date(date, sizeof date);
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "%s\n# version %s\n# date %s\n# pid %ld\n", QS_JOURNAL_MAGIC, QS_VERSION,
                 date, (long)getpid());
    for (int k = 0; k < c->njournal; k++)
        entry_text(&c->journal[k], &sb);
    if (!sb.s || write_all(a->fd, sb.s, sb.len) < 0 || fsync(a->fd) < 0) {
        qs_sb_free(&sb);
        return autosave_fail_begin(a, e, strerror(errno));
    }
    qs_sb_free(&sb);
    c->journal_u = a;
    c->on_journal = autosave_entry;
    return 0;
}

void qs_autosave_end(struct qs_ctx *c)
{
    if (!c || c->on_journal != autosave_entry)
        return;
    struct autosave *a = c->journal_u;
    if (a && a->fd >= 0) {
        static const char closed[] = QS_JOURNAL_CLOSED "\n";
        if (a->secondary && !a->failed)
            unlink(a->path); /* nothing to recover; do not let them pile up */
        else if (!a->failed &&
                 (write_all(a->fd, closed, sizeof closed - 1) < 0 || fsync(a->fd) < 0))
            autosave_fail(c, a);
        close(a->fd);
    }
    free(a);
    c->on_journal = NULL;
    c->journal_u = NULL;
}

/* ---- commands -------------------------------------------------------------------------------- */

static int cmd_save_session(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    if (argc != 1)
        return qs_errf(e, "usage: save session PATH");
    int n = c->njournal;
    if (qs_session_write(c, argv[0], e) < 0)
        return qs_err_prefix(e, "save session");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "save session");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "commands", n);
    char txt[PATH_MAX + 128];
    snprintf(txt, sizeof txt, "saved %d commands to %s (check it with: qscope --replay %s --check)",
             n, argv[0], argv[0]);
    qs_emit(c, o, txt);
    return 0;
}

/* The nesting-limit error of `source`, recognised while the nested calls unwind so that a loop
 * is reported once ("x.qs:2: source x.qs: scripts nested deeper than 16 (a source loop?)")
 * rather than as sixteen "FILE:LINE:" prefixes. */
#define NEST_MSG "scripts nested deeper than"

static int cmd_source(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    if (argc != 1)
        return qs_errf(e, "usage: source PATH");
    char path[PATH_MAX];
    qs_script_resolve(c, argv[0], path, sizeof path);
    if (c->depth >= QS_SOURCE_MAX_DEPTH)
        return qs_errf(e, "source %s: " NEST_MSG " %d (a source loop?)", argv[0],
                       QS_SOURCE_MAX_DEPTH);
    if (qs_run_script(c, path, e) < 0) {
        if (strstr(e->msg, NEST_MSG))
            qs_errf(e, "source %s: " NEST_MSG " %d (a source loop?)", argv[0], QS_SOURCE_MAX_DEPTH);
        return -1;
    }
    return 0;
}

static int cmd_recover(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argv;
    if (argc)
        return qs_errf(e, "usage: recover");
    char path[PATH_MAX];
    if (qs_recover_path(path, sizeof path) < 0)
        return qs_errf(e, "recover: no state directory (set XDG_STATE_HOME or HOME)");
    struct lines l;
    if (access(path, F_OK) < 0)
        return qs_errf(e, "recover: nothing to recover (%s does not exist)", path);
    if (lines_read(path, &l, e) < 0)
        return qs_err_prefix(e, "recover");
    if (l.n == 0 || strcmp(l.v[0], QS_JOURNAL_MAGIC)) {
        lines_free(&l);
        return qs_errf(e, "recover: %s:1: not a qscope journal", path);
    }
    /* the restored commands print nothing: the summary below says what was done */
    void (*emit)(void *, const cJSON *, const char *) = c->emit;
    int bail = c->bail, n = 0, nfail = 0;
    c->emit = NULL;
    c->bail = 0;
    for (int i = 0; i < l.n; i++) {
        const char *s = l.v[i];
        if (is_comment_or_blank(s))
            continue;
        if (i == l.n - 1 && !l.complete) {
            qs_note(c,
                    "%s:%d: half-written line skipped (the earlier session stopped while "
                    "writing it): %.60s",
                    path, i + 1, s);
            continue;
        }
        qs_err ce = {{0}};
        if (qs_exec_line(c, s, &ce) < 0) {
            qs_note(c, "%s:%d: %s", path, i + 1, ce.msg);
            nfail++;
        } else {
            n++;
        }
    }
    c->emit = emit;
    c->bail = bail;
    lines_free(&l);
    /* done with it: keep it under another name so that it is not offered again */
    char done[PATH_MAX + 16];
    snprintf(done, sizeof done, "%s", path);
    char *dot = strstr(done, "journal.prev.qs");
    if (dot)
        snprintf(dot, sizeof done - (size_t)(dot - done), "journal.recovered.qs");
    if (rename(path, done) < 0)
        qs_note(c, "recover: %s: %s", path, strerror(errno));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "recover");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddNumberToObject(o, "commands", n);
    cJSON_AddNumberToObject(o, "failed", nfail);
    char txt[PATH_MAX + 128];
    snprintf(txt, sizeof txt, "restored %d command%s from %s%s", n, n == 1 ? "" : "s", path,
             nfail ? " (some failed: see above)" : "");
    qs_emit(c, o, txt);
    if (nfail)
        return qs_errf(e, "recover: %d of %d commands could not be restored (listed above)", nfail,
                       n + nfail);
    return 0;
}

const struct qs_cmd_def qs_cmds_session[] = {
    {"save session", "PATH", 0, cmd_save_session,
     "save the journal as a replayable session (header, commands, results)",
     "Check it later with: qscope --replay PATH --check. The header pins every model and data "
     "file by SHA-256."},
    {"source", "PATH", 0, cmd_source,
     "run the commands of a script (relative paths resolve from the running script's folder)",
     NULL},
    {"recover", "", 0, cmd_recover,
     "restore the state of an earlier session that did not exit cleanly (from its journal)", NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};
