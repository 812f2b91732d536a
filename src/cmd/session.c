/* session.c - saved sessions, replay with --check, the autosaved journal and its recovery, and
 * the commands `save session`, `source` and `recover`. */
#include "qscope/session.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
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
    /* a FIFO or device would block (or never end): only regular files are read */
    int fd = qs_open_regular(path, "session file", NULL, e);
    if (fd < 0)
        return -1;
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
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) /* a FIFO would block the hash */
        return qs_errf(e, "%s: is not a regular file or a folder", path);
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
        if ((size_t)snprintf(full, sizeof full, "%s/%s", path, de->d_name) >= sizeof full) {
            rc = qs_errf(e, "%s: a file name inside is too long to hash", path);
            break;
        }
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
/* The file a journal line writes that a later `load` may read back: `export model PATH`,
 * `train ... out=PATH`; NULL for other lines. */
static const char *written_path(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[0], "export") && !strcmp(argv[1], "model"))
        return argv[2];
    if (argc >= 1 && !strcmp(argv[0], "train"))
        for (int i = 1; i < argc; i++)
            if (qs_opt_value(argv[i], "out"))
                return qs_opt_value(argv[i], "out");
    return NULL;
}

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
            (!strcmp(argv[1], "model") || !strcmp(argv[1], "data") ||
             !strcmp(argv[1], "reference"))) {
            const char *kind = !strcmp(argv[1], "data") ? "data" : "model"; /* a reference too */
            int skip = 0;
            for (int i = 0; i < nw && !skip; i++)
                skip = !strcmp(written[i], argv[2]);
            for (int i = 0; i < n && !skip; i++)
                skip = !strcmp(v[i].kind, kind) && !strcmp(v[i].path, argv[2]);
            if (!skip) {
                struct infile *nv = realloc(v, (size_t)(n + 1) * sizeof *nv);
                if (nv) {
                    v = nv;
                    snprintf(v[n].kind, sizeof v[n].kind, "%s", kind);
                    v[n].path = qs_strdup(argv[2]);
                    n++;
                }
            }
        } else {
            const char *o = written_path(argc, argv);
            char **nw2 = o ? realloc(written, (size_t)(nw + 1) * sizeof *nw2) : NULL;
            if (nw2) {
                written = nw2;
                written[nw++] = qs_strdup(o);
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
    if (rc == 0 && (c->b->data || c->b->tokens)) {
        char st[320];
        qs_bench_split_text(c->b, st, sizeof st);
        qs_sb_printf(&sb, "# split %s (at the end of the session)\n", st);
    }
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

    /* a regular file is replaced atomically; a device or FIFO is written in place, never
     * replaced by a regular file */
    qs_outfile o;
    if (qs_out_open(&o, path, e) < 0) {
        qs_sb_free(&sb);
        return -1;
    }
    if (fwrite(sb.s, 1, sb.len, o.f) != sb.len) {
        char pb[256];
        rc = qs_errf(e, "%s: %s", qs_clean_str(path, pb, sizeof pb, 0), strerror(errno));
        qs_out_abort(&o);
    } else {
        rc = qs_out_commit(&o, e);
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

/* Checks the header: magic, end line, pinned files (hashed when verify, else only parsed; the
 * recorded thread count is applied only when verify). Returns the number of problems reported
 * and sets *body_end to the index of the end line. */
static int replay_header(struct qs_ctx *c, const char *path, const struct lines *l, int *body_end,
                         int verify)
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
    int after = count_commands(l, l->n) - have;
    if (after > 0) { /* appended by hand below the end line: never run silently */
        qs_note(c,
                "%s:%d: %d command%s after the '%s' line would not run; move that line below "
                "them with their count; nothing was run",
                path, end + 1, after, after == 1 ? "" : "s", QS_SESSION_END);
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
        if (hf == 1 && !verify)
            continue;
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
        if (verify && sscanf(l->v[i], "# threads %ld", &v) == 1 && v >= 1 && v <= 256 &&
            v != openblas_get_num_threads()) {
            qs_note(c, "%s:%d: recorded with %ld BLAS threads: replaying with %ld (was %d)", path,
                    i + 1, v, v, openblas_get_num_threads());
            openblas_set_num_threads((int)v);
        }
    }
    *body_end = end;
    return problems;
}

static int same_str(const char *a, const char *b)
{
    return !strcmp(a, b);
}

/* Whether the header (the comment lines before the first command) pins KIND PATH. */
static int pinned(const struct lines *l, int end, const char *kind, const char *fpath)
{
    char k[8], hex[65];
    char *p = malloc(strlen(fpath) + 2);
    int found = 0;
    if (!p)
        return 0;
    for (int i = 1; i < end && is_comment_or_blank(l->v[i]) && !found; i++)
        found = header_file(l->v[i], k, sizeof k, p, strlen(fpath) + 2, hex) == 1 &&
                same_str(k, kind) && same_str(p, fpath);
    free(p);
    return found;
}

/* --check trusts only what it can verify: every `load model|data PATH` of the session must be
 * pinned by a header line "# model|data PATH sha256=HEX" (a file written earlier by the
 * session itself, train out=PATH, excepted), and commands that run another file's commands
 * (source, recover) are refused, since no hash pins what that file loads. Returns the number of
 * problems reported. */
static int check_pins(struct qs_ctx *c, const char *path, const struct lines *l, int end)
{
    int problems = 0, nw = 0;
    char **written = NULL;
    for (int i = 1; i < end; i++) {
        if (is_comment_or_blank(l->v[i]))
            continue;
        char **argv;
        qs_err te = {{0}};
        int argc = qs_tokenize(l->v[i], &argv, &te);
        if (argc < 0)
            continue; /* reported when it runs */
        if (argc >= 1 && (same_str(argv[0], "source") || same_str(argv[0], "recover"))) {
            qs_note(c,
                    "%s:%d: %s runs the commands of another file, which no hash pins: --check "
                    "refuses it",
                    path, i + 1, argv[0]);
            problems++;
        } else if (argc >= 3 && same_str(argv[0], "load") &&
                   (same_str(argv[1], "model") || same_str(argv[1], "data") ||
                    same_str(argv[1], "reference"))) {
            /* a reference is pinned as a model */
            int ok = pinned(l, end, same_str(argv[1], "data") ? "data" : "model", argv[2]);
            for (int k = 0; k < nw && !ok; k++)
                ok = same_str(written[k], argv[2]);
            if (!ok) {
                char pb[256];
                qs_note(c,
                        "%s:%d: load %s %s: no pinned hash for it in the header (a line '# %s "
                        "PATH sha256=...'); --check refuses to load a file it cannot verify",
                        path, i + 1, argv[1], qs_clean_str(argv[2], pb, sizeof pb, 0),
                        same_str(argv[1], "data") ? "data" : "model");
                problems++;
            }
        } else {
            const char *o = written_path(argc, argv);
            char **nw2 = o ? realloc(written, (size_t)(nw + 1) * sizeof *nw2) : NULL;
            if (nw2) {
                written = nw2;
                written[nw++] = qs_strdup(o);
            }
        }
        qs_argv_free(argv, argc);
    }
    for (int k = 0; k < nw; k++)
        free(written[k]);
    free(written);
    return problems;
}

/* Results name a file as the session wrote it, not as the safe replay's scratch copy. */
static void unredirect(const struct qs_ctx *c, struct qs_flat_list *got)
{
    for (int i = 0; i < got->n; i++)
        for (int r = 0; r < c->nredir && got->v[i].kind != QS_FLAT_NUM; r++) {
            const char *to = c->redir[r].to, *from = c->redir[r].from;
            char *p = strstr(got->v[i].value, to);
            if (!p)
                continue;
            struct qs_sb sb = {0};
            qs_sb_printf(&sb, "%.*s%s%s", (int)(p - got->v[i].value), got->v[i].value, from,
                         p + strlen(to));
            if (sb.s) {
                free(got->v[i].value);
                got->v[i].value = sb.s;
            }
        }
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    remove(p);
    return 0;
}

static int replay_run(struct qs_ctx *c, const char *path, int check, double tol);

/* A safe replay gets a scratch folder for what the session writes and reads back (export model,
 * train out=: QS_CMD_SCRATCH), removed afterwards; nothing outside it is written. */
int qs_session_replay(struct qs_ctx *c, const char *path, int check, double tol)
{
    if (!c->safe || c->scratch)
        return replay_run(c, path, check, tol);
    const char *tmp = getenv("TMPDIR");
    struct qs_sb dir = {0};
    qs_sb_printf(&dir, "%s/qscope-replay-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!dir.s || !mkdtemp(dir.s)) {
        qs_note(c, "replay: cannot make a scratch folder (%s); commands that write are refused",
                strerror(errno));
        qs_sb_free(&dir);
        return replay_run(c, path, check, tol);
    }
    c->scratch = dir.s;
    int rc = replay_run(c, path, check, tol);
    nftw(dir.s, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < c->nredir; i++) {
        free(c->redir[i].from);
        free(c->redir[i].to);
    }
    free(c->redir);
    c->redir = NULL;
    c->nredir = 0;
    c->scratch = NULL;
    qs_sb_free(&dir);
    return rc;
}

static int replay_run(struct qs_ctx *c, const char *path, int check, double tol)
{
    struct lines l;
    qs_err e = {{0}};
    if (lines_read(path, &l, &e) < 0) {
        qs_note(c, "%s", e.msg);
        return 1;
    }
    if (!(tol >= 0 && tol <= 1)) { /* NaN included: every comparison would fail or pass */
        qs_note(c, "replay: tolerance %g is not a relative tolerance between 0 and 1", tol);
        lines_free(&l);
        return 1;
    }
    int end = 0;
    if (replay_header(c, path, &l, &end, 1) > 0 || (check && check_pins(c, path, &l, end) > 0)) {
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
        unredirect(c, &got);
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

static void journal_line(const char *line, struct qs_sb *sb);
static void header_word(const char *text, const char *key, char *buf, size_t n);

int qs_session_lint(struct qs_ctx *c, const char *name, const char *text, size_t len, int check)
{
    struct lines l;
    qs_err e = {{0}};
    char *buf = malloc(len + 1);
    if (!buf)
        return 1;
    memcpy(buf, text, len);
    buf[len] = 0;
    if (memchr(buf, 0, len)) {
        free(buf);
        qs_note(c, "%s: contains NUL bytes: not a text session file", name);
        return 1;
    }
    char word[32]; /* what a kept journal's name is made of */
    header_word(buf, "date", word, sizeof word);
    header_word(buf, "pid", word, sizeof word);
    if (lines_from_text(buf, len, &l, &e) < 0) { /* frees nothing: l owns buf */
        lines_free(&l);
        return 1;
    }
    int end = 0;
    int problems = replay_header(c, name, &l, &end, 0);
    if (problems == 0) {
        if (check)
            problems += check_pins(c, name, &l, end);
        for (int i = 0; i < end; i++) {
            const char *s = l.v[i];
            if (starts_with(s, QS_RESULT_PREFIX)) {
                char rname[512], *val = NULL;
                qs_err pe = {{0}};
                if (qs_flat_parse(s + strlen(QS_RESULT_PREFIX), rname, sizeof rname, &val, &pe) <
                    0) {
                    qs_note(c, "%s:%d: %s", name, i + 1, pe.msg);
                    problems++;
                    continue;
                }
                /* the value against itself: equal whatever it holds */
                struct qs_flat self = {rname, val, QS_FLAT_STR};
                char *end2;
                strtod(val, &end2);
                if (end2 != val && !*end2)
                    self.kind = QS_FLAT_NUM;
                if (qs_flat_compare(val, &self, 1e-6, &pe) != 1) {
                    qs_note(c, "%s:%d: %s does not equal itself", name, i + 1, rname);
                    problems++;
                }
                free(val);
                continue;
            }
            if (is_comment_or_blank(s))
                continue;
            char **argv;
            qs_err te = {{0}};
            int argc = qs_tokenize(s, &argv, &te), used = 0;
            if (argc < 0) {
                qs_note(c, "%s:%d: %s", name, i + 1, te.msg);
                problems++;
                continue;
            }
            if (argc && !qs_cmd_lookup(c, argc, argv, &used)) {
                qs_note(c, "%s:%d: unknown command '%s'", name, i + 1, argv[0]);
                problems++;
            } else if (c->safe && argc &&
                       !(qs_cmd_lookup(c, argc, argv, &used)->flags & QS_CMD_SCRATCH) &&
                       qs_cmd_writes(qs_cmd_lookup(c, argc, argv, &used), argc - used,
                                     argv + used)) {
                qs_note(c, "%s:%d: %s writes files", name, i + 1, argv[0]);
                problems++;
            }
            qs_argv_free(argv, argc);
            struct qs_sb jl = {0}; /* the journal's form of the line (absolute paths) */
            journal_line(s, &jl);
            qs_sb_free(&jl);
        }
    }
    lines_free(&l);
    return problems;
}

/* ---- autosave ------------------------------------------------------------------------------ */

/* Unclosed journals are kept in the state directory as "unclean-DATE-PID[-K].qs" (DATE and PID
 * of the session that wrote them), one file each, until the user recovers or discards them:
 * a crash after a crash never overwrites the first one. "journal.prev.qs" is the name older
 * qscope versions kept their single one under; it is offered the same way. */
#define UNCLEAN_PREFIX "unclean-"
#define LEGACY_PREV "journal.prev.qs"

struct autosave {
    int fd;
    char path[PATH_MAX];
    int failed;
    int secondary; /* journal-PID.qs beside a running qscope: removed at a clean exit */
};

/* The state directory, or a message saying why there is none: no HOME, or the folder cannot
 * be created (its path and the system's reason). */
static int state_dir(char *dir, size_t n, qs_err *e)
{
    errno = 0;
    if (qs_state_dir(dir, n) == 0)
        return 0;
    int err = errno;
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (!(xdg && xdg[0]) && !(home && home[0]))
        return qs_errf(e, "no state directory (set XDG_STATE_HOME or HOME)");
    char pb[256];
    return qs_errf(e, "state directory %s cannot be created: %s", qs_clean_str(dir, pb, sizeof pb, 0),
                   err ? strerror(err) : "path too long");
}

static void autosave_fail(struct qs_ctx *c, struct autosave *a)
{
    if (!a->failed)
        qs_note(c, "autosave: %s: %s; the journal is no longer written (use 'save session')",
                a->path, strerror(errno));
    a->failed = 1;
}

/* PATH made absolute against the working directory (the journal is recovered from anywhere). */
static void abs_path(const char *path, struct qs_sb *sb)
{
    char cwd[PATH_MAX];
    if (path[0] != '/' && path[0] && getcwd(cwd, sizeof cwd))
        qs_sb_printf(sb, "%s/%s", strcmp(cwd, "/") ? cwd : "", path);
    else
        qs_sb_printf(sb, "%s", path);
}

/* A journal line with the files it names made absolute: the PATH of load model|data and
 * export model|csv, and the values of out=, csv= and teacher=. Other lines are copied. */
static void journal_line(const char *line, struct qs_sb *sb)
{
    char **argv;
    qs_err e = {{0}};
    int argc = qs_tokenize(line, &argv, &e), changed = 0;
    if (argc < 0) {
        qs_sb_printf(sb, "%s", line);
        return;
    }
    struct qs_sb out = {0};
    for (int i = 0; i < argc; i++) {
        struct qs_sb w = {0};
        const char *v = NULL;
        int path_arg = i == 2 && argc >= 3 &&
                       ((same_str(argv[0], "load") &&
                         (same_str(argv[1], "model") || same_str(argv[1], "data") ||
                          same_str(argv[1], "reference"))) ||
                        (same_str(argv[0], "export") &&
                         (same_str(argv[1], "model") || same_str(argv[1], "csv"))));
        if (path_arg) {
            abs_path(argv[i], &w);
        } else if ((v = qs_opt_value(argv[i], "out")) || (v = qs_opt_value(argv[i], "csv")) ||
                   (v = qs_opt_value(argv[i], "teacher"))) {
            qs_sb_printf(&w, "%.*s", (int)(v - argv[i]), argv[i]);
            abs_path(v, &w);
        } else {
            qs_sb_printf(&w, "%s", argv[i]);
        }
        changed |= w.s && strcmp(w.s, argv[i]);
        if (i)
            qs_sb_printf(&out, " ");
        qs_quote_sb(w.s ? w.s : "", &out);
        qs_sb_free(&w);
    }
    qs_sb_printf(sb, "%s", changed && out.s ? out.s : line);
    qs_sb_free(&out);
    qs_argv_free(argv, argc);
}

static void journal_entry_text(const struct qs_jentry *j, struct qs_sb *sb)
{
    journal_line(j->line, sb);
    qs_sb_printf(sb, "\n");
    struct qs_flat_list fl = {0};
    qs_flatten(j->results, &fl);
    for (int i = 0; i < fl.n; i++)
        qs_flat_format(&fl.v[i], sb);
    qs_flat_list_free(&fl);
}

static void autosave_entry(struct qs_ctx *c, const struct qs_jentry *j)
{
    struct autosave *a = c->journal_u;
    if (!a || a->fd < 0 || a->failed)
        return;
    struct qs_sb sb = {0};
    journal_entry_text(j, &sb);
    if (!sb.s || write_all(a->fd, sb.s, sb.len) < 0 || fsync(a->fd) < 0)
        autosave_fail(c, a);
    qs_sb_free(&sb);
}

static int is_pending_name(const char *name)
{
    size_t nl = strlen(name);
    return same_str(name, LEGACY_PREV) ||
           (!strncmp(name, UNCLEAN_PREFIX, strlen(UNCLEAN_PREFIX)) && nl > 11 &&
            same_str(name + nl - 3, ".qs"));
}

/* The unclosed journals waiting in DIR, full paths, oldest first (by name: the legacy file, then
 * by date). *out is malloc'd (free each and the array). Returns the count, -1 when out of
 * memory. */
static int pending_list(const char *dir, char ***out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    char **v = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_pending_name(de->d_name))
            continue;
        char **nv = realloc(v, (size_t)(n + 1) * sizeof *nv);
        struct qs_sb p = {0};
        qs_sb_printf(&p, "%s/%s", dir, de->d_name);
        if (!nv || !p.s) {
            free(nv ? nv : v);
            qs_sb_free(&p);
            closedir(d);
            return -1;
        }
        v = nv;
        v[n++] = p.s;
    }
    closedir(d);
    if (n)
        qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    return n;
}

static void pending_free(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

int qs_recover_path(char *buf, size_t n)
{
    char dir[PATH_MAX - 32];
    if (qs_state_dir(dir, sizeof dir) < 0)
        return -1;
    char **v;
    int np = pending_list(dir, &v);
    if (np > 0)
        snprintf(buf, n, "%s", v[0]);
    else
        snprintf(buf, n, "%s/%s", dir, LEGACY_PREV); /* does not exist */
    pending_free(v, np);
    return 0;
}

/* The value of the header line "# KEY VALUE" in a journal's text, cleaned to [0-9A-Za-z] (for a
 * file name), into buf; "" when there is none. */
static void header_word(const char *text, const char *key, char *buf, size_t n)
{
    size_t kl = strlen(key), k = 0;
    buf[0] = 0;
    for (const char *p = text; p && *p == '#'; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, "# ", 2) || strncmp(p + 2, key, kl) || p[2 + kl] != ' ')
            continue;
        for (const char *q = p + 3 + kl; *q && *q != '\n' && k + 1 < n; q++)
            if ((*q >= '0' && *q <= '9') || (*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z'))
                buf[k++] = *q;
        buf[k] = 0;
        return;
    }
}

/* Keeps an unclean journal's text as DIR/unclean-DATE-PID.qs under a name no other journal has:
 * written to a temporary file, synced, then linked (never renamed) into place, so neither a
 * crash here nor a second kept journal loses anything. */
static int keep_aside(const char *dir, const char *text, size_t len, qs_err *e)
{
    char tmp[PATH_MAX], dst[PATH_MAX], date[32], pid[32];
    header_word(text, "date", date, sizeof date);
    header_word(text, "pid", pid, sizeof pid);
    snprintf(tmp, sizeof tmp, "%s/.unclean.tmp%ld", dir, (long)getpid());
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
    for (int k = 1; k < 10000; k++) {
        if (k == 1)
            snprintf(dst, sizeof dst, "%s/" UNCLEAN_PREFIX "%s-%s.qs", dir, date[0] ? date : "0",
                     pid[0] ? pid : "0");
        else
            snprintf(dst, sizeof dst, "%s/" UNCLEAN_PREFIX "%s-%s-%d.qs", dir,
                     date[0] ? date : "0", pid[0] ? pid : "0", k);
        if (link(tmp, dst) == 0) {
            unlink(tmp);
            return 0;
        }
        if (errno != EEXIST)
            break;
    }
    int err = errno;
    unlink(tmp);
    return qs_errf(e, "%s: %s", dst, strerror(err));
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

/* Keeps aside the journal open (and locked) on fd if it was not closed cleanly. Returns the
 * number of its commands (0: nothing kept), -1 on error (the journal is then left untouched). */
static int claim(const char *dir, int fd, qs_err *e)
{
    char *text;
    size_t len;
    int n = unclean_commands(fd, &text, &len);
    if (n > 0) {
        int rc = keep_aside(dir, text, len, e);
        free(text);
        if (rc < 0)
            return -1;
    }
    return n;
}

/* The journal of a second qscope that ran beside another (journal-PID.qs) is removed at its
 * clean exit; one left by a crash is kept aside like journal.qs. A journal still locked belongs
 * to a running qscope and is left alone. Returns 0, -1 on error. */
static int claim_stale_secondaries(const char *dir, qs_err *e)
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
        if (claim(dir, fd, e) < 0)
            rc = -1;
        else
            unlink(path);
        close(fd);
    }
    closedir(d);
    return rc;
}

/* Commands in a kept journal (complete lines only), and its "# date" header into date. */
static int journal_summary(const char *path, char *date, size_t nd)
{
    struct lines l;
    qs_err e = {{0}};
    snprintf(date, nd, "?");
    if (lines_read(path, &l, &e) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < l.n; i++) {
        if (starts_with(l.v[i], "# date "))
            snprintf(date, nd, "%s", l.v[i] + 7);
        n += !is_comment_or_blank(l.v[i]) && (i < l.n - 1 || l.complete);
    }
    lines_free(&l);
    return n;
}

/* Tells the user about every journal waiting to be recovered. */
static void note_pending(struct qs_ctx *c, const char *dir)
{
    char **v, date[64];
    int np = pending_list(dir, &v);
    if (np == 1) {
        int n = journal_summary(v[0], date, sizeof date);
        qs_note(c,
                "a journal from an earlier session was not closed cleanly (%d command%s): "
                "type 'recover' to restore it",
                n, n == 1 ? "" : "s");
    } else if (np > 1) {
        qs_note(c,
                "%d journals from earlier sessions were not closed cleanly: type 'recover' to "
                "list them, 'recover N' to restore one",
                np);
    }
    pending_free(v, np);
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
    if (state_dir(dir, sizeof dir, e) < 0)
        return qs_err_prefix(e, "autosave");
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
        qs_err ke = {{0}};
        if (claim(dir, a->fd, &ke) < 0) /* keep the old journal untouched rather than lose it */
            return autosave_fail_begin(a, e, ke.msg);
        if (claim_stale_secondaries(dir, e) < 0) {
            qs_err_prefix(e, "autosave");
            close(a->fd);
            free(a);
            return -1;
        }
        if (ftruncate(a->fd, 0) < 0 || lseek(a->fd, 0, SEEK_SET) < 0)
            return autosave_fail_begin(a, e, strerror(errno));
    }
    note_pending(c, dir);
    char date[64];
    iso_date(date, sizeof date);
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "%s\n# version %s\n# date %s\n# pid %ld\n", QS_JOURNAL_MAGIC, QS_VERSION,
                 date, (long)getpid());
    for (int k = 0; k < c->njournal; k++)
        journal_entry_text(&c->journal[k], &sb);
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
    (void)argc; /* one PATH (the spec's arity) */
    int n = c->njournal;
    if (qs_session_write(c, argv[0], e) < 0)
        return qs_err_prefix(e, "save session");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "save session");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "commands", n);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "saved %d commands to %s (check it with: qscope --replay ", n, argv[0]);
    qs_quote_sb(argv[0], &t);
    qs_sb_printf(&t, " --check)");
    qs_emit(c, o, t.s ? t.s : "saved");
    qs_sb_free(&t);
    return 0;
}

/* The limit errors of `source`, recognised while the nested calls unwind so that a loop is
 * reported once ("x.qs:2: source y.qs: scripts nested deeper than 16 (...)") rather than under
 * sixteen "FILE:LINE:" prefixes. */
#define NEST_MSG "scripts nested deeper than"
#define TOTAL_MSG "scripts run by one script"

static int cmd_source(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argc; /* one PATH (the spec's arity) */
    char path[PATH_MAX];
    if (qs_script_resolve(c, argv[0], path, sizeof path, e) < 0)
        return qs_err_prefix(e, "source");
    if (qs_run_script(c, path, e) < 0) {
        if (strstr(e->msg, NEST_MSG))
            qs_errf(e, "source %s: " NEST_MSG " %d (the limit on source nesting)", argv[0],
                    QS_SOURCE_MAX_DEPTH);
        else if (strstr(e->msg, TOTAL_MSG))
            qs_errf(e, "source %s: more than %d " TOTAL_MSG " (the limit on the work source "
                       "may do)", argv[0], QS_SOURCE_MAX_TOTAL);
        return -1;
    }
    return 0;
}

/* Lists the kept journals as a result: number, date, commands, file. */
static int recover_list(struct qs_ctx *c, char **v, int np)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    struct qs_sb t = {0};
    cJSON_AddStringToObject(o, "cmd", "recover list");
    qs_sb_printf(&t, "%d journal%s from earlier sessions not closed cleanly:", np,
                 np == 1 ? "" : "s");
    for (int i = 0; i < np; i++) {
        char date[64];
        int n = journal_summary(v[i], date, sizeof date);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "n", i + 1);
        cJSON_AddStringToObject(j, "date", date);
        cJSON_AddNumberToObject(j, "commands", n);
        cJSON_AddStringToObject(j, "path", v[i]);
        cJSON_AddItemToArray(arr, j);
        qs_sb_printf(&t, "\n  %d  %s  %d command%s  %s", i + 1, date, n, n == 1 ? "" : "s", v[i]);
    }
    qs_sb_printf(&t, "\ntype 'recover N' to restore one, 'recover discard N' (or 'all') to "
                     "delete it");
    cJSON_AddItemToObject(o, "journals", arr);
    qs_emit(c, o, t.s ? t.s : "");
    qs_sb_free(&t);
    return 0;
}

/* Re-runs the journal at PATH. It is retired (renamed journal.recovered.qs) only when every
 * command was restored; otherwise it stays offered. */
static int recover_one(struct qs_ctx *c, const char *dir, const char *path, int which, qs_err *e)
{
    struct lines l;
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
    if (!nfail) { /* done with it: kept under another name so that it is not offered again */
        struct qs_sb done = {0};
        qs_sb_printf(&done, "%s/journal.recovered.qs", dir);
        if (!done.s || rename(path, done.s) < 0)
            qs_note(c, "recover: %s: %s", path, strerror(errno));
        qs_sb_free(&done);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "recover");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddNumberToObject(o, "commands", n);
    cJSON_AddNumberToObject(o, "failed", nfail);
    struct qs_sb t = {0};
    qs_sb_printf(&t, "restored %d command%s from %s%s", n, n == 1 ? "" : "s", path,
                 nfail ? " (some failed: see above)" : "");
    qs_emit(c, o, t.s ? t.s : "restored");
    qs_sb_free(&t);
    if (nfail)
        return qs_errf(e,
                       "recover: %d of %d commands could not be restored (listed above); the "
                       "journal is kept: fix the cause and type 'recover %d' again, or 'recover "
                       "discard %d'",
                       nfail, n + nfail, which, which);
    return 0;
}

static int cmd_recover(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    char dir[PATH_MAX - 64];
    if (argc == 2 && !same_str(argv[0], "discard"))
        return qs_errf(e, "recover: two words are 'discard N' or 'discard all', not '%s %s'",
                       argv[0], argv[1]);
    if (state_dir(dir, sizeof dir, e) < 0)
        return qs_err_prefix(e, "recover");
    char **v;
    int np = pending_list(dir, &v), rc = 0;
    if (np < 0)
        return qs_errf(e, "recover: out of memory");
    long which = 0;
    int all = argc == 2 && same_str(argv[1], "all");
    if (np == 0) {
        rc = qs_errf(e, "recover: nothing to recover (no unclosed journal in %s)", dir);
    } else if (argc == 1 && same_str(argv[0], "list")) {
        rc = recover_list(c, v, np);
    } else if (argc == 1 && same_str(argv[0], "discard")) {
        rc = qs_errf(e, "recover discard: which journal? (recover discard N, or all)");
    } else if (!all && argc >= 1 &&
               qs_parse_int(argv[argc - 1], 1, np, &which, "recover: journal number", e) < 0) {
        rc = -1;
    } else if (argc == 2) { /* discard */
        for (int i = 0; i < np; i++)
            if ((all || i + 1 == which) && unlink(v[i]) < 0)
                rc = qs_errf(e, "recover: %s: %s", v[i], strerror(errno));
        if (rc == 0) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "cmd", "recover discard");
            cJSON_AddNumberToObject(o, "discarded", all ? np : 1);
            char txt[96];
            snprintf(txt, sizeof txt, "discarded %d journal%s", all ? np : 1,
                     all && np > 1 ? "s" : "");
            qs_emit(c, o, txt);
        }
    } else if (argc == 0 && np > 1) {
        rc = recover_list(c, v, np);
    } else {
        rc = recover_one(c, dir, v[which ? which - 1 : 0], which ? (int)which : 1, e);
    }
    pending_free(v, np);
    return rc;
}

const struct qs_cmd_def qs_cmds_session[] = {
    {"save session", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_WRITES,
     cmd_save_session, "save the journal as a replayable session (header, commands, results)",
     "Check it later with: qscope --replay PATH --check. The header pins every model and data "
     "file by SHA-256."},
    {"source", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_RECALC | QS_CMD_SPARES,
     cmd_source,
     "run the commands of a script (relative paths resolve from the running script's folder)",
     NULL},
    /* writes: it retires or deletes journals in the state folder, no business of a replay */
    {"recover", 0, 2,
     QS_ARGS(QS_POS("list|N|discard", QS_ARG_WORD, NULL), QS_POS("N|all", QS_ARG_WORD, NULL)),
     QS_CMD_WRITES | QS_CMD_RECALC | QS_CMD_SPARES, cmd_recover,
     "restore the state of an earlier session that did not exit cleanly (from its journal)",
     "Every journal left unclosed by a crash is kept until it is recovered or discarded. With "
     "one, `recover` restores it; with several, it lists them (number, date, commands) and "
     "`recover N` restores the N-th. A journal is retired only when all of its commands were "
     "restored. `recover discard N` (or `all`) deletes them."},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
