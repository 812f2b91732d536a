/* session.h - sessions: the autosaved journal and crash recovery, saved session files (.qs:
 * header, commands, recorded results) and their replay with --check, plus the `save session`,
 * `source` and `recover` commands (tables qs_cmds_session, _replay, _recover in cmd.h).
 * flat.c flattens and compares results, session.c writes session files, replay.c replays and
 * checks them, autosave.c keeps the journal and recovers it.
 *
 * The file format is described in man/qscope-session.5. In short:
 *   # qscope session
 *   # version 0.1.0
 *   # date 2025-01-31T12:00:00Z
 *   # seed 0
 *   # threads 4
 *   # model datasets/models/digits-mlp.safetensors sha256=<64 hex>
 *   # data datasets/digits.csv sha256=<64 hex>
 *   load model datasets/models/digits-mlp.safetensors
 *   # => layers=3
 *   ...
 *   # end of session (N commands)
 * The autosaved journal uses the same body under a "# qscope journal" header and ends with
 * "# closed" after a clean exit. Commands: `save session PATH` (writes a file: refused in
 * replay's safe mode), `source PATH`, `recover [list | N | discard N|all]`. */
#ifndef QSCOPE_SESSION_H
#define QSCOPE_SESSION_H

#include <cjson/cJSON.h>

#include "qscope/cmd.h"

#define QS_SESSION_MAGIC "# qscope session"
#define QS_JOURNAL_MAGIC "# qscope journal"
#define QS_RESULT_PREFIX "# => "
#define QS_SESSION_END "# end of session"
#define QS_JOURNAL_CLOSED "# closed"
/* Arrays of plain values (numbers, strings) longer than this record only their first items. */
#define QS_FLAT_MAX_ITEMS 64

/* ---- flattening of result objects ------------------------------------------------------- */

enum qs_flat_kind { QS_FLAT_NUM, QS_FLAT_STR, QS_FLAT_BOOL, QS_FLAT_NULL };

struct qs_flat {
    char *name;  /* "quant.acc", "layers[2].snr_db" */
    char *value; /* number text as stored ("%.9g"), the string itself, true/false/null */
    enum qs_flat_kind kind;
};

struct qs_flat_list {
    struct qs_flat *v;
    int n, cap;
};

/* Flattens obj (an object, or an array of result objects) into name=value leaves appended to
 * out: nested keys are joined by '.', array items by [i]; the top-level "cmd" key is skipped.
 * An array given as obj is the list of one command's results: with one result the names are
 * those of the result itself, with several each name is prefixed "[k]." (k from 0). Arrays of
 * plain values keep their first QS_FLAT_MAX_ITEMS items. Returns 0, or -1 when out of memory. */
int qs_flatten(const cJSON *obj, struct qs_flat_list *out);
void qs_flat_list_free(struct qs_flat_list *l); /* frees the items; l itself is the caller's */
/* The leaf named name, or NULL. */
const struct qs_flat *qs_flat_find(const struct qs_flat_list *l, const char *name);

/* Writes one "# => name=value" line (with newline) into sb; strings that could not be read back
 * as written (leading '"', control characters, trailing blank) are JSON-quoted. */
void qs_flat_format(const struct qs_flat *f, struct qs_sb *sb);
/* Parses the text after "# => " (no trailing newline): name into name (size nn), the unquoted
 * value into a malloc'd *value. 0, or -1 with a message for a malformed line. */
int qs_flat_parse(const char *text, char *name, size_t nn, char **value, qs_err *e);

/* Compares a recorded value (text from a "# =>" line) with a re-run leaf. Numbers agree when
 * |a - b| <= tol * max(|a|, |b|, 1) (relative tolerance with an absolute floor of tol); strings,
 * booleans and null must be equal. Returns 1 equal, 0 different, -1 when the re-run value is a
 * number and the recorded text is neither a number nor null (message in e). */
int qs_flat_compare(const char *recorded, const struct qs_flat *got, double tol, qs_err *e);

/* ---- session files ------------------------------------------------------------------------ */

/* Hash of a model or data path: the file's SHA-256, or for a folder (a Hugging Face model) the
 * SHA-256 of the lines "NAME SHA256\n" of its regular files in name order. */
int qs_session_hash_path(const char *path, char hex[65], qs_err *e);

/* Session text: header (version, date, seed, BLAS threads, every model and data file the journal
 * loads with its SHA-256), each journal entry's line with its results as "# =>" lines, and the
 * end line. Written through qs_outfile: a regular file is replaced atomically, a device or FIFO
 * is written in place and never replaced, every write error (ENOSPC included) is reported.
 * Clears c->dirty. */
int qs_session_write(struct qs_ctx *c, const char *path, qs_err *e);

/* Re-runs a saved session: reads the header, refuses a model/data file that is missing or whose
 * SHA-256 differs from the recorded one, refuses a truncated file (no end line) or one that is
 * not a regular file; with check, refuses a `load model|data` whose file has no pinned hash in
 * the header, and `source`/`recover` (their files are not pinned); refuses a tol outside 0..1.
 * Commands that write files are refused by the dispatcher when c->safe is set (the caller sets
 * it for --replay without --allow-writes). Runs each
 * command through qs_exec_line (errors as "S.qs:LINE: message" through c->note) and, with check,
 * compares every recorded "# => name=value" with the re-run's results (qs_flat_compare),
 * reporting each mismatch through c->note as "S.qs:LINE: eval: quant.acc recorded 0.95 got
 * 0.91", then a summary line ("replay: 12 commands, 57 values checked, 0 differ").
 * Returns the process exit status: 0 ok, 1 any error or mismatch. */
int qs_session_replay(struct qs_ctx *c, const char *path, int check, double tol);

/* Checks a session's text without running or hashing anything (for the fuzz target and for
 * tools): magic and end line, header lines (pinned files parsed, not hashed), with check the
 * pins of every load (as --check), every "# =>" line parsed and compared with itself, every
 * command line tokenized and looked up (and, when c->safe, refused if it writes files).
 * Problems go to c->note with NAME:LINE. Returns the number of problems. */
int qs_session_lint(struct qs_ctx *c, const char *name, const char *text, size_t len, int check);

/* ---- autosave and recovery ---------------------------------------------------------------- */

/* Autosave: opens $XDG_STATE_HOME/qscope/journal.qs (qs_state_dir) and installs c->on_journal
 * so that every journaled command is appended with its "# =>" results (files named by absolute
 * path), then fsync'ed; entries already in c->journal are written first. A previous journal
 * there (or a journal-PID.qs no running qscope holds) that was not closed cleanly is kept as
 * unclean-DATE-PID.qs, a name of its own, so that no crashed session's journal ever overwrites
 * another's; a note then says "a journal from an earlier session was not closed cleanly (N
 * commands): type 'recover' to restore it" (or how many wait, when several do). A second qscope
 * running at the same time (the journal is locked) autosaves to journal-PID.qs instead.
 * Returns 0, or -1 with e set (the state folder named with the system's reason; autosave is
 * then off; the session goes on). */
int qs_autosave_begin(struct qs_ctx *c, qs_err *e);
/* Clean exit: appends "# closed", closes the journal and removes the hook. NULL-safe state. */
void qs_autosave_end(struct qs_ctx *c);

/* The oldest journal kept aside by qs_autosave_begin into buf (a path that does not exist when
 * none waits); 0 if a state directory exists. */
int qs_recover_path(char *buf, size_t n);

#endif
