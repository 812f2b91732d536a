/* tui.h - the full-screen workbench (src/tui/): ncursesw panes over the bench, GNU readline
 * embedded at the bottom through its callback interface, and a worker thread that runs every
 * command so the screen never blocks. Also the readline completion shared with the line REPL.
 *
 * Only src/tui/ includes curses or readline; this header includes neither. */
#ifndef QSCOPE_TUI_H
#define QSCOPE_TUI_H

#include "qscope/cmd.h"

/* Runs the TUI on c until the user quits (q, or `quit`). stdin and stdout must be a terminal;
 * when it cannot be driven full-screen (TERM unset, dumb or unknown) this says so on stderr and
 * runs the line REPL instead. The TUI installs its own c->emit / c->note / c->u / c->front,
 * c->extra (qs_tui_cmds, when no other table is set) and b->progress for its lifetime and
 * restores them on return. Every key binding is a command string sent through the dispatcher,
 * so it is journaled like a typed command. Returns the process exit status (0; 1 if the worker
 * thread cannot start). The terminal is restored on every exit path (normal return, exit(), and
 * SIGSEGV/SIGABRT/SIGBUS/SIGFPE/SIGILL/SIGTERM/SIGHUP/SIGQUIT, re-raised after endwin). */
int qs_tui_run(struct qs_ctx *c);
/* qs_tui_run with the model still to load: the screen comes up at once with skel's sites in the
 * layers table (skel from qs_lm_peek; the TUI frees it) and the worker runs the command text
 * load first (`load model PATH; load data PATH` as typed: journaled, logged, its progress on
 * the status line, Ctrl-C cancels it), as one group, before any key's command. Its commands
 * are not "unsaved work" (as when loaded before the TUI starts). Without the full screen the
 * text runs before the line REPL; a failure there is printed and returns 1. skel and load may
 * be NULL (then as qs_tui_run). */
struct qs_lm;
int qs_tui_run_loading(struct qs_ctx *c, struct qs_lm *skel, const char *load);

/* Front-end commands of the TUI (NULL-name terminated), for c->extra: `screenshot PATH`. Outside
 * the TUI (c->front not set by qs_tui_run) they fail with "screenshot needs the TUI". */
extern const struct qs_cmd_def qs_tui_cmds[];

/* Readline completion over the command table (command words, second words of two-word commands,
 * option keys of the command being typed), layer names, format names, and file names after
 * commands that take a path. layer_name(u, i) returns the name of layer i or NULL past the last
 * one (the TUI answers from its snapshot so completion never touches the bench while the worker
 * runs). Installs rl_attempted_completion_function; c must outlive readline's use of it. */
void qs_complete_install(const struct qs_ctx *c, const char *(*layer_name)(void *u, int i),
                         void *u);

#endif
