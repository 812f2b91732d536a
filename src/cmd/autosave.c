/* autosave.c - the autosaved journal (every journaled command appended and synced, files by
 * absolute path), the unclosed journals a crash leaves, kept aside one file each, and the
 * command `recover` that lists, restores or discards them. */
#include "qscope/session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "session_text.h"

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
    return qs_errf(e, "state directory %s cannot be created: %s",
                   qs_clean_str(dir, pb, sizeof pb, 0), err ? strerror(err) : "path too long");
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
void qs_journal_line(const char *line, struct qs_sb *sb)
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
        int path_arg = i == 2 && (qs_session_load_kind(argc, argv) ||
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
    qs_journal_line(j->line, sb);
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
    if (!sb.s || qs_write_all(a->fd, sb.s, sb.len) < 0 || fsync(a->fd) < 0)
        autosave_fail(c, a);
    qs_sb_free(&sb);
}

static int is_pending_name(const char *name)
{
    size_t nl = strlen(name);
    return same_str(name, LEGACY_PREV) || (!strncmp(name, UNCLEAN_PREFIX, strlen(UNCLEAN_PREFIX)) &&
                                           nl > 11 && same_str(name + nl - 3, ".qs"));
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
        qsort(v, (size_t)n, sizeof *v, qs_cmp_str);
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
void qs_header_word(const char *text, const char *key, char *buf, size_t n)
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
    qs_header_word(text, "date", date, sizeof date);
    qs_header_word(text, "pid", pid, sizeof pid);
    snprintf(tmp, sizeof tmp, "%s/.unclean.tmp%ld", dir, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return qs_errf(e, "%s: %s", tmp, strerror(errno));
    if (qs_write_all(fd, text, len) < 0 || fsync(fd) < 0) {
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
            snprintf(dst, sizeof dst, "%s/" UNCLEAN_PREFIX "%s-%s-%d.qs", dir, date[0] ? date : "0",
                     pid[0] ? pid : "0", k);
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
    if (lseek(fd, 0, SEEK_SET) < 0 || qs_read_all_fd(fd, &old, len) < 0)
        return 0;
    char *copy = malloc(*len + 1);
    struct qs_lines l;
    qs_err le = {{0}};
    int n = 0, closed = 0;
    if (copy) {
        memcpy(copy, old, *len + 1);
        if (qs_lines_from_text(copy, *len, &l, &le) == 0) {
            for (int i = l.n - 1; i >= 0; i--)
                if (l.v[i][0]) {
                    closed = !strcmp(l.v[i], QS_JOURNAL_CLOSED);
                    break;
                }
            for (int i = 0; i < l.n; i++)
                n += !qs_is_comment_or_blank(l.v[i]) && (i < l.n - 1 || l.complete);
        }
        qs_lines_free(&l); /* owns copy, also after a failure */
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
    struct qs_lines l;
    qs_err e = {{0}};
    snprintf(date, nd, "?");
    if (qs_lines_read(path, &l, &e) < 0)
        return -1;
    int n = 0;
    for (int i = 0; i < l.n; i++) {
        if (qs_starts_with(l.v[i], "# date "))
            snprintf(date, nd, "%s", l.v[i] + 7);
        n += !qs_is_comment_or_blank(l.v[i]) && (i < l.n - 1 || l.complete);
    }
    qs_lines_free(&l);
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
    qs_iso_date(date, sizeof date);
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "%s\n# version %s\n# date %s\n# pid %ld\n", QS_JOURNAL_MAGIC, QS_VERSION,
                 date, (long)getpid());
    for (int k = 0; k < c->njournal; k++)
        journal_entry_text(&c->journal[k], &sb);
    if (!sb.s || qs_write_all(a->fd, sb.s, sb.len) < 0 || fsync(a->fd) < 0) {
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
                 (qs_write_all(a->fd, closed, sizeof closed - 1) < 0 || fsync(a->fd) < 0))
            autosave_fail(c, a);
        close(a->fd);
    }
    free(a);
    c->on_journal = NULL;
    c->journal_u = NULL;
}

/* ---- command -----------------------------------------------------------------------------------
 */

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
    struct qs_lines l;
    if (qs_lines_read(path, &l, e) < 0)
        return qs_err_prefix(e, "recover");
    if (l.n == 0 || strcmp(l.v[0], QS_JOURNAL_MAGIC)) {
        qs_lines_free(&l);
        return qs_errf(e, "recover: %s:1: not a qscope journal", path);
    }
    /* the restored commands print nothing: the summary below says what was done */
    void (*emit)(void *, const cJSON *, const char *) = c->emit;
    int bail = c->bail, n = 0, nfail = 0;
    c->emit = NULL;
    c->bail = 0;
    for (int i = 0; i < l.n; i++) {
        const char *s = l.v[i];
        if (qs_is_comment_or_blank(s))
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
    qs_lines_free(&l);
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
const struct qs_cmd_def qs_cmds_recover[] = {
    /* writes: it retires or deletes journals in the state folder, no business of a replay */
    {"recover", 0, 2,
     QS_ARGS(QS_POS("list|N|discard", QS_ARG_INT, "list|N|discard"),
             QS_POS("N|all", QS_ARG_INT, "N|all")),
     QS_CMD_WRITES | QS_CMD_RECALC | QS_CMD_SPARES, cmd_recover,
     "restore the state of an earlier session that did not exit cleanly (from its journal)",
     "Every journal left unclosed by a crash is kept until it is recovered or discarded. With "
     "one, `recover` restores it; with several, it lists them (number, date, commands) and "
     "`recover N` restores the N-th. A journal is retired only when all of its commands were "
     "restored. `recover discard N` (or `all`) deletes them."},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
