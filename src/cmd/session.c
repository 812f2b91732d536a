/* session.c - saved session files: the text's lines (read whole, never from a FIFO), the
 * header's SHA-256 of every model and data file the journal loads, the session writer, and the
 * command `save session`. Replay is replay.c, the autosaved journal autosave.c. */
#include "qscope/session.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qscope/sha256.h"
#include "session_text.h"

/* ---- files and lines ----------------------------------------------------------------------- */

void qs_lines_free(struct qs_lines *l)
{
    free(l->buf);
    free(l->v);
    memset(l, 0, sizeof *l);
}

int qs_lines_from_text(char *buf, size_t len, struct qs_lines *l, qs_err *e)
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

int qs_read_all_fd(int fd, char **out, size_t *len)
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

int qs_lines_read(const char *path, struct qs_lines *l, qs_err *e)
{
    memset(l, 0, sizeof *l);
    /* a FIFO or device would block (or never end): only regular files are read */
    int fd = qs_open_regular(path, "session file", NULL, e);
    if (fd < 0)
        return -1;
    char *buf;
    size_t len;
    int rc = qs_read_all_fd(fd, &buf, &len);
    int err = errno;
    close(fd);
    if (rc < 0)
        return qs_errf(e, "%s: %s", path, strerror(err));
    if (memchr(buf, 0, len)) {
        free(buf);
        return qs_errf(e, "%s: contains NUL bytes: not a text session file", path);
    }
    return qs_lines_from_text(buf, len, l, e);
}

int qs_is_comment_or_blank(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return *s == 0 || *s == '#';
}

int qs_starts_with(const char *s, const char *p)
{
    return !strncmp(s, p, strlen(p));
}

int qs_write_all(int fd, const char *s, size_t n)
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

void qs_iso_date(char *buf, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    else
        snprintf(buf, n, "unknown");
}

/* ---- hashes --------------------------------------------------------------------------------- */

int qs_cmp_str(const void *a, const void *b)
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
        qsort(names, (size_t)n, sizeof *names, qs_cmp_str);
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

const char *qs_session_written_path(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[0], "export") && !strcmp(argv[1], "model"))
        return argv[2];
    if (argc >= 1 && !strcmp(argv[0], "train"))
        for (int i = 1; i < argc; i++)
            if (qs_opt_value(argv[i], "out"))
                return qs_opt_value(argv[i], "out");
    return NULL;
}

const char *qs_session_load_kind(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[0], "load"))
        return NULL;
    if (!strcmp(argv[1], "data"))
        return "data";
    return !strcmp(argv[1], "model") || !strcmp(argv[1], "reference") ? "model" : NULL;
}

void qs_written_add(struct qs_written *w, int argc, char **argv)
{
    const char *o = qs_session_written_path(argc, argv);
    char *dup = o ? qs_strdup(o) : NULL;
    char **nv = dup ? realloc(w->v, (size_t)(w->n + 1) * sizeof *nv) : NULL;
    if (!nv) {
        free(dup);
        return;
    }
    w->v = nv;
    w->v[w->n++] = dup;
}

int qs_written_has(const struct qs_written *w, const char *path)
{
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->v[i], path))
            return 1;
    return 0;
}

void qs_written_free(struct qs_written *w)
{
    for (int i = 0; i < w->n; i++)
        free(w->v[i]);
    free(w->v);
    memset(w, 0, sizeof *w);
}

/* Every model and data file the journal loads, in first-load order, skipping files an earlier
 * journal command wrote itself (train out=PATH). */
static int journal_inputs(const struct qs_ctx *c, struct infile **out, int *nout)
{
    struct infile *v = NULL;
    struct qs_written written = {0};
    int n = 0;
    for (int k = 0; k < c->njournal; k++) {
        char **argv;
        qs_err e;
        int argc = qs_tokenize(c->journal[k].line, &argv, &e);
        if (argc < 0)
            continue;
        const char *kind = qs_session_load_kind(argc, argv);
        if (kind) {
            int skip = qs_written_has(&written, argv[2]);
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
            qs_written_add(&written, argc, argv);
        }
        qs_argv_free(argv, argc);
    }
    qs_written_free(&written);
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
    qs_iso_date(date, sizeof date);
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

/* ---- command -----------------------------------------------------------------------------------
 */

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
const struct qs_cmd_def qs_cmds_session[] = {
    {"save session", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_WRITES,
     cmd_save_session, "save the journal as a replayable session (header, commands, results)",
     "Check it later with: qscope --replay PATH --check. The header pins every model and data "
     "file by SHA-256."},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
