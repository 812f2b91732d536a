/* script.c - running .qs scripts through the dispatcher. */
#include "qscope/script.h"

#include "qscope/bench.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int qs_script_resolve(const struct qs_ctx *c, const char *path, char *buf, size_t n, qs_err *e)
{
    int w;
    if (path[0] != '/' && c->script_dir && c->script_dir[0])
        w = snprintf(buf, n, "%s/%s", c->script_dir, path);
    else
        w = snprintf(buf, n, "%s", path);
    if (w < 0 || (size_t)w >= n)
        return qs_errf(e, "%.200s...: path too long (over %zu characters)", path, n - 1);
    /* not there: a bundled script (sessions/...) wherever qscope is installed */
    if (path[0] != '/' && access(buf, F_OK) != 0) {
        char rb[4096];
        if (qs_bundle_path(path, rb, sizeof rb, NULL) == 0 && strlen(rb) < n)
            snprintf(buf, n, "%s", rb);
    }
    return 0;
}

/* "a.qs -> b.qs -> a.qs": the chain from the outermost script down to the one refused. */
static void chain_text(const struct qs_script_frame *f, const char *last, struct qs_sb *sb)
{
    const struct qs_script_frame *v[QS_SOURCE_MAX_DEPTH + 1];
    int n = 0;
    for (; f && n < QS_SOURCE_MAX_DEPTH + 1; f = f->up)
        v[n++] = f;
    while (n--)
        qs_sb_printf(sb, "%s -> ", v[n]->path);
    qs_sb_printf(sb, "%s", last);
}

int qs_run_script(struct qs_ctx *c, const char *path, qs_err *e)
{
    if (c->depth >= QS_SOURCE_MAX_DEPTH)
        return qs_errf(e, "%s: scripts nested deeper than %d (the limit on source nesting)", path,
                       QS_SOURCE_MAX_DEPTH);
    if (c->depth == 0)
        c->nsourced = 0;
    if (++c->nsourced > QS_SOURCE_MAX_TOTAL)
        return qs_errf(e,
                       "%s: more than %d scripts run by one script (the limit on the work "
                       "source may do)",
                       path, QS_SOURCE_MAX_TOTAL);
    struct stat st;
    int fd = qs_open_regular(path, "script", &st, e);
    if (fd < 0)
        return -1;
    for (const struct qs_script_frame *f = c->frames; f; f = f->up)
        if (f->dev == st.st_dev && f->ino == st.st_ino) {
            struct qs_sb sb = {0};
            chain_text(c->frames, path, &sb);
            qs_errf(e, "source cycle: %s (refused: a script that is running is not run again)",
                    sb.s ? sb.s : path);
            qs_sb_free(&sb);
            close(fd);
            return -1;
        }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return qs_errf(e, "%s: %s", path, strerror(errno));
    }
    char *dircopy = qs_strdup(path);
    const char *saved_dir = c->script_dir;
    struct qs_script_frame frame = {st.st_dev, st.st_ino, path, c->frames};
    c->frames = &frame;
    c->script_dir = dircopy ? dirname(dircopy) : NULL;
    c->depth++;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0, noted = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        qs_err e2 = {{0}};
        if (qs_exec_line(c, line, &e2) < 0) {
            rc = -1;
            if (c->bail) { /* stops here: the caller reports it */
                qs_errf(e, "%s:%ld: %s", path, lineno, e2.msg);
                break;
            }
            if (c->note) {
                qs_note(c, "%s:%ld: %s", path, lineno, e2.msg);
                noted++;
            } else if (!e->msg[0]) {
                qs_errf(e, "%s:%ld: %s", path, lineno, e2.msg);
            }
        }
        if (c->quit)
            break;
        if (c->b && c->b->cancel) { /* Ctrl-C stops the script, not just the running command */
            rc = -1;
            qs_errf(e, "%s:%ld: cancelled; the rest of the script was not run", path, lineno);
            break;
        }
    }
    if (rc < 0 && noted && !e->msg[0])
        qs_errf(e, "%s: %d command%s failed (reported above)", path, noted, noted == 1 ? "" : "s");
    free(line);
    fclose(f);
    c->depth--;
    c->frames = frame.up;
    c->script_dir = saved_dir;
    free(dircopy);
    return rc;
}
