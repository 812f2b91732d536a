/* script.h - running command scripts (.qs files): line by line through the dispatcher, with
 * FILE:LINE error messages, nesting (source) and bail-on-error. */
#ifndef QSCOPE_SCRIPT_H
#define QSCOPE_SCRIPT_H

#include <sys/types.h>

#include "qscope/cmd.h"

/* Nesting depth of `source`, and the number of scripts one top-level run may go through: a
 * script that sources two others that each source two others ... grows as 2^depth without any
 * cycle, so the total is bounded too. */
#define QS_SOURCE_MAX_DEPTH 16
#define QS_SOURCE_MAX_TOTAL 1000

/* One script being run, linked from c->frames (innermost first) so that a script already
 * running up the chain is refused instead of re-entered. */
struct qs_script_frame {
    dev_t dev;
    ino_t ino;
    const char *path;
    const struct qs_script_frame *up;
};

/* Runs every line of PATH (a regular file: a FIFO, device or directory is refused before it can
 * block). Lines starting with '#' are comments (a session's "# =>" result lines included).
 * On an error the message reads "PATH:LINE: message"; with c->bail the run stops there and e
 * holds that message; otherwise each error goes to c->note as it happens, the run goes on, and
 * the return value is still -1 with e holding only a count ("PATH: 2 commands failed (reported
 * above)"), so that no error is printed twice. A script that is already running up the chain of
 * `source` calls (a cycle), nesting deeper than QS_SOURCE_MAX_DEPTH or more than
 * QS_SOURCE_MAX_TOTAL scripts in one run are refused with a message saying so. Relative paths
 * given to `source` inside the script resolve from its folder. */
int qs_run_script(struct qs_ctx *c, const char *path, qs_err *e);

/* Resolves PATH against the running script's folder when it is relative and a script is running;
 * writes the result into buf. -1 with a message when it does not fit. */
int qs_script_resolve(const struct qs_ctx *c, const char *path, char *buf, size_t n, qs_err *e);

#endif
