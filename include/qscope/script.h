/* script.h - running command scripts (.qs files): line by line through the dispatcher, with
 * FILE:LINE error messages, nesting (source) and bail-on-error. */
#ifndef QSCOPE_SCRIPT_H
#define QSCOPE_SCRIPT_H

#include "qscope/cmd.h"

#define QS_SOURCE_MAX_DEPTH 16

/* Runs every line of PATH. Lines starting with '#' are comments (a session's "# =>" result lines
 * included). On an error the message reads "PATH:LINE: message"; with c->bail the run stops
 * there, otherwise the error is passed to c->note and the run goes on (the return value is
 * still -1). Relative paths given to `source` inside the script resolve from its folder. */
int qs_run_script(struct qs_ctx *c, const char *path, qs_err *e);

/* Resolves PATH against the running script's folder when it is relative and a script is running;
 * writes the result into buf. */
void qs_script_resolve(const struct qs_ctx *c, const char *path, char *buf, size_t n);

#endif
