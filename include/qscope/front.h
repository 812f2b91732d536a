/* front.h - the interactive front ends (src/tui/): the full-screen TUI and the line REPL. These
 * are the only modules that include curses or readline. */
#ifndef QSCOPE_FRONT_H
#define QSCOPE_FRONT_H

#include "qscope/cmd.h"

/* Plain line REPL: GNU readline (history in the state directory, completion from the command
 * table) when use_readline, else plain lines from stdin. Returns the process exit status. */
int qs_repl_run(struct qs_ctx *c, int use_readline);

/* Prints one result the way the line front ends do (text, or one JSON line with c->json). */
void qs_front_print(void *u, const cJSON *obj, const char *text);
void qs_front_note(void *u, const char *msg);
/* A qs_progress_fn for the line front ends: one line on stderr, rewritten in place; set it only
 * when stderr is a terminal. Results and notes erase it first. */
void qs_front_progress(void *u, const char *what, double frac);

#endif
