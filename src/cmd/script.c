/* script.c - running .qs scripts through the dispatcher. */
#include "qscope/script.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void qs_script_resolve(const struct qs_ctx *c, const char *path, char *buf, size_t n)
{
    if (path[0] != '/' && c->script_dir && c->script_dir[0])
        snprintf(buf, n, "%s/%s", c->script_dir, path);
    else
        snprintf(buf, n, "%s", path);
    /* not there: a bundled script (sessions/...) wherever qscope is installed */
    if (path[0] != '/' && access(buf, F_OK) != 0 && n > 0) {
        char rb[4096];
        if (qs_bundle_path(path, rb, sizeof rb, NULL) == 0)
            snprintf(buf, n, "%s", rb);
    }
}

int qs_run_script(struct qs_ctx *c, const char *path, qs_err *e)
{
    if (c->depth >= QS_SOURCE_MAX_DEPTH)
        return qs_errf(e, "%s: scripts nested deeper than %d (a source loop?)", path,
                       QS_SOURCE_MAX_DEPTH);
    FILE *f = fopen(path, "r");
    if (!f)
        return qs_errf(e, "%s: %s", path, strerror(errno));
    char *dircopy = qs_strdup(path);
    const char *saved_dir = c->script_dir;
    c->script_dir = dircopy ? dirname(dircopy) : NULL;
    c->depth++;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        qs_err e2 = {{0}};
        if (qs_exec_line(c, line, &e2) < 0) {
            /* messages from a nested script already carry their own FILE:LINE */
            char msg[QS_ERRLEN];
            snprintf(msg, sizeof msg, "%s:%ld: %s", path, lineno, e2.msg);
            if (rc == 0)
                qs_errf(e, "%s", msg);
            rc = -1;
            if (c->bail)
                break;
            if (c->note)
                c->note(c->u, msg);
        }
        if (c->quit)
            break;
    }
    free(line);
    fclose(f);
    c->depth--;
    c->script_dir = saved_dir;
    free(dircopy);
    return rc;
}
