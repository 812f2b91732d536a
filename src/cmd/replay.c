/* replay.c - re-running a saved session: its header (pinned files hashed, thread count), the
 * pins --check demands, the comparison of every recorded result, the lint of a session's text
 * without running it, and the command `source` (a script's commands, run through the same
 * dispatcher). */
#include "qscope/session.h"

#include <cblas.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qscope/script.h"
#include "session_text.h"

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
    if (qs_starts_with(line, "# model "))
        snprintf(kind, nk, "model"), rest = line + 8;
    else if (qs_starts_with(line, "# data "))
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

static int count_commands(const struct qs_lines *l, int upto)
{
    int n = 0;
    for (int i = 0; i < upto && i < l->n; i++)
        n += !qs_is_comment_or_blank(l->v[i]);
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
static int replay_header(struct qs_ctx *c, const char *path, const struct qs_lines *l,
                         int *body_end, int verify)
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
        if (qs_starts_with(l->v[i], QS_SESSION_END)) {
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
    for (int i = 1; i < end && qs_is_comment_or_blank(l->v[i]); i++) {
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

/* Whether the header (the comment lines before the first command) pins KIND PATH. */
static int pinned(const struct qs_lines *l, int end, const char *kind, const char *fpath)
{
    char k[8], hex[65];
    char *p = malloc(strlen(fpath) + 2);
    int found = 0;
    if (!p)
        return 0;
    for (int i = 1; i < end && qs_is_comment_or_blank(l->v[i]) && !found; i++)
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
static int check_pins(struct qs_ctx *c, const char *path, const struct qs_lines *l, int end)
{
    int problems = 0;
    struct qs_written written = {0};
    for (int i = 1; i < end; i++) {
        if (qs_is_comment_or_blank(l->v[i]))
            continue;
        char **argv;
        qs_err te = {{0}};
        int argc = qs_tokenize(l->v[i], &argv, &te);
        if (argc < 0)
            continue; /* reported when it runs */
        const char *kind = qs_session_load_kind(argc, argv);
        if (argc >= 1 && (same_str(argv[0], "source") || same_str(argv[0], "recover"))) {
            qs_note(c,
                    "%s:%d: %s runs the commands of another file, which no hash pins: --check "
                    "refuses it",
                    path, i + 1, argv[0]);
            problems++;
        } else if (kind) {
            if (!pinned(l, end, kind, argv[2]) && !qs_written_has(&written, argv[2])) {
                char pb[256];
                qs_note(c,
                        "%s:%d: load %s %s: no pinned hash for it in the header (a line '# %s "
                        "PATH sha256=...'); --check refuses to load a file it cannot verify",
                        path, i + 1, argv[1], qs_clean_str(argv[2], pb, sizeof pb, 0), kind);
                problems++;
            }
        } else {
            qs_written_add(&written, argc, argv);
        }
        qs_argv_free(argv, argc);
    }
    qs_written_free(&written);
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
    qs_ctx_redir_free(c);
    c->scratch = NULL;
    qs_sb_free(&dir);
    return rc;
}

static int replay_run(struct qs_ctx *c, const char *path, int check, double tol)
{
    struct qs_lines l;
    qs_err e = {{0}};
    if (qs_lines_read(path, &l, &e) < 0) {
        qs_note(c, "%s", e.msg);
        return 1;
    }
    if (!(tol >= 0 && tol <= 1)) { /* NaN included: every comparison would fail or pass */
        qs_note(c, "replay: tolerance %g is not a relative tolerance between 0 and 1", tol);
        qs_lines_free(&l);
        return 1;
    }
    int end = 0;
    if (replay_header(c, path, &l, &end, 1) > 0 || (check && check_pins(c, path, &l, end) > 0)) {
        qs_lines_free(&l);
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
        if (qs_starts_with(s, QS_RESULT_PREFIX)) {
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
        if (qs_is_comment_or_blank(s))
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
    qs_lines_free(&l);
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

int qs_session_lint(struct qs_ctx *c, const char *name, const char *text, size_t len, int check)
{
    struct qs_lines l;
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
    qs_header_word(buf, "date", word, sizeof word);
    qs_header_word(buf, "pid", word, sizeof word);
    if (qs_lines_from_text(buf, len, &l, &e) < 0) { /* frees nothing: l owns buf */
        qs_lines_free(&l);
        return 1;
    }
    int end = 0;
    int problems = replay_header(c, name, &l, &end, 0);
    if (problems == 0) {
        if (check)
            problems += check_pins(c, name, &l, end);
        for (int i = 0; i < end; i++) {
            const char *s = l.v[i];
            if (qs_starts_with(s, QS_RESULT_PREFIX)) {
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
            if (qs_is_comment_or_blank(s))
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
            qs_journal_line(s, &jl);
            qs_sb_free(&jl);
        }
    }
    qs_lines_free(&l);
    return problems;
}

/* ---- command -----------------------------------------------------------------------------------
 */

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
            qs_errf(e,
                    "source %s: more than %d " TOTAL_MSG " (the limit on the work source "
                    "may do)",
                    argv[0], QS_SOURCE_MAX_TOTAL);
        return -1;
    }
    return 0;
}
const struct qs_cmd_def qs_cmds_replay[] = {
    {"source", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_RECALC | QS_CMD_SPARES,
     cmd_source,
     "run the commands of a script (relative paths resolve from the running script's folder)",
     NULL},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
