/* cmd.h - the command language: one table of commands (name, argument spec, flags, handler,
 * help), one dispatcher used by every front end (TUI prompt and keys, REPL, -c, -b, --replay).
 *
 * A handler parses its arguments, acts on the bench and emits results: each result is a cJSON
 * object (always with "cmd") plus its text rendering. Front ends decide what to print (text or
 * JSON Lines); the journal records results under the command for sessions. Handlers never print
 * and never exit. */
#ifndef QSCOPE_CMD_H
#define QSCOPE_CMD_H

#include <cjson/cJSON.h>
#include <stdarg.h>

#include "qscope/bench.h"
#include "qscope/common.h"

struct qs_ctx;
struct qs_script_frame;
struct qs_sb;

enum {
    QS_CMD_JOURNAL = 1 << 0, /* recorded in the journal / saved sessions */
    QS_CMD_MODEL = 1 << 1,   /* needs a model */
    QS_CMD_DATA = 1 << 2,    /* needs model and data ready */
    /* Long-running: many passes over the data (training, sweeps, studies), minutes where the
     * others take seconds: it reports progress, and the command fuzzer does not run it. */
    QS_CMD_LONG = 1 << 3,
    QS_CMD_FRONT = 1 << 4, /* front-end command (needs the TUI or REPL) */
    /* Writes a file the user names (save session, export ...): refused in safe mode. */
    QS_CMD_WRITES = 1 << 6,
    /* Writes a file only when given an output option: out=PATH or csv=PREFIX (the language's
     * two output options); refused in safe mode only then. */
    QS_CMD_WRITES_OPT = 1 << 7,
    /* In a safe replay, writes into the replay's scratch folder instead of being refused, and a
     * later `load model|data` of the path it names reads that copy (export model, train out=):
     * a session that exports a model and reloads it replays anywhere without writing. */
    QS_CMD_SCRATCH = 1 << 8,
    /* Reaction: changes what the views show (the model, data, split, rules, corrections, seed,
     * gates, sensitivity, ablation): a front end recomputes them after it, whether it succeeded
     * or not (a failed `source` may have run half its commands). Commands without it (error,
     * spectrum, eval, export, help ...) leave every view as it was. */
    QS_CMD_RECALC = 1 << 9,
    /* Never reads the loaded model's weights (replaces the model, or touches only settings, the
     * bare formats or the front end): runs even when the model's file has changed on disk. */
    QS_CMD_SPARES = 1 << 10,
};

/* A path a safe replay redirected into its scratch folder (qs_ctx.redir). */
struct qs_redir {
    char *from, *to;
};

typedef int (*qs_cmd_fn)(struct qs_ctx *c, int argc, char **argv, qs_err *e);

/* Kinds of argument a command's spec declares. The dispatcher checks INT, INTS, FLOAT, ENUM and
 * ENUMS words itself; LAYER, PATTERN, PATH, FORMAT and WORD are left to the handler (they need the
 * model, the file system or the format parser, whose messages are better), but completion offers
 * layer names, file names and format names from the kind. */
enum qs_arg_kind {
    QS_ARG_WORD,    /* free text the handler reads (a list, a name) */
    QS_ARG_INT,     /* an integer: [-]digits; the handler checks its range */
    QS_ARG_FLOAT,   /* a number strtod reads whole; an option's must be finite */
    QS_ARG_ENUM,    /* one of values "a|b|c"; an alternative "p:N" takes any word "p:..." */
    QS_ARG_ENUMS,   /* a comma list of values' alternatives */
    QS_ARG_LAYER,   /* one layer name */
    QS_ARG_PATTERN, /* a glob over layer names */
    QS_ARG_PATH,    /* a file or folder */
    QS_ARG_FORMAT,  /* a number format name */
    QS_ARG_FLAG,    /* a bare word option (packed, apply, asym) */
    QS_ARG_INTS,    /* a comma list of integers (hidden=64,64); the handler checks their range */
};

/* One argument of a command's spec. Options are key=value words (flags a bare word) in any
 * order; positionals are the other words, in order. `values`: for ENUM/ENUMS the alternatives;
 * for the others the value's placeholder in the synopsis ("N", "PATH"), where lower-case
 * alternatives are literal words a number also accepts ("A|none"); NULL: the kind's default. */
struct qs_arg {
    const char *name; /* option key or flag word; a positional's placeholder ("LAYER") */
    enum qs_arg_kind kind;
    const char *values;
    int pos; /* 1: positional (the last one repeats when amax is above their count) */
};
#define QS_POS(n, k, v)                                                                            \
    {                                                                                              \
        (n), (k), (v), 1                                                                           \
    }
#define QS_OPT(n, k, v)                                                                            \
    {                                                                                              \
        (n), (k), (v), 0                                                                           \
    }
#define QS_FLAG(n)                                                                                 \
    {                                                                                              \
        (n), QS_ARG_FLAG, NULL, 0                                                                  \
    }
/* A spec as a table row's field: QS_ARGS(QS_POS(...), QS_OPT(...)). */
#define QS_ARGS(...) ((const struct qs_arg[]){__VA_ARGS__, {NULL, QS_ARG_WORD, NULL, 0}})

/* One command. Arity is redis-style: amin..amax positionals (amax -1: any number), checked with
 * every option against `spec` by the dispatcher before the handler runs, so a handler sees only
 * words its spec allows (and never prints a usage line: qs_cmd_synopsis writes it). */
struct qs_cmd_def {
    const char *name; /* one or two words: "eval", "load model" */
    short amin, amax;
    const struct qs_arg *spec; /* NULL-name terminated; NULL: no arguments */
    unsigned flags;
    qs_cmd_fn fn;     /* argv[0] is the first argument after the name */
    const char *help; /* one-line description */
    const char *more; /* longer help (may be NULL) */
};

/* Synopsis styles: plain text ("spectrum LAYER [k=N]") or the manual's mdoc list head
 * (".It Cm spectrum Ar LAYER Oo Cm k Ns = Ns Ar N Oc"). */
enum { QS_SYN_TEXT, QS_SYN_MDOC };
/* Appends the command's synopsis, generated from its spec, to sb (with its name). */
void qs_cmd_synopsis(const struct qs_cmd_def *d, int style, struct qs_sb *sb);
/* Checks argv (the words after the name) against d's spec: arity, option names, flag words,
 * INT/FLOAT/ENUM values. 0, or -1 with a message naming the word (and the usage line for an
 * unknown option or a wrong count). */
int qs_cmd_check_args(const struct qs_cmd_def *d, int argc, char **argv, qs_err *e);
/* The spec entry a word is, as qs_cmd_check_args classifies it: the option or flag it names, or
 * the positional it fills (*npos counts the positionals seen so far; start it at 0); NULL when
 * the word fits nothing. */
const struct qs_arg *qs_cmd_arg_of(const struct qs_cmd_def *d, const char *word, int *npos);
/* Completion from the specs, for a front end: words[0..nw) are the words before the one being
 * completed, text that word's start. Calls add(au, s) with every candidate (unfiltered: the
 * caller keeps those starting with text): command names, second words, option keys ("k=") and
 * flags, and values by kind (enum alternatives, layer names from layer(lu, i) until NULL, format
 * names). Returns 1 when the word is a file name instead (a PATH argument): *keylen is then the
 * length of a "key=" prefix of text to keep before it (0 for a positional). Else 0. */
int qs_cmd_complete(const struct qs_ctx *c, char **words, int nw, const char *text,
                    const char *(*layer)(void *u, int i), void *lu,
                    void (*add)(void *u, const char *s), void *au, size_t *keylen);
/* The running command's arguments, read by their spec (handlers need no loop of their own):
 * the value of option KEY (the last one given; "" for a flag given), or NULL when absent; the
 * K-th positional (0-based) wherever it stands among the options, or NULL. The words were
 * checked by kind before the handler ran, so qs_arg_int/qs_arg_float convert without failing
 * and return def only when the option is absent (ranges are the handler's to check). Valid
 * while the handler runs. */
const char *qs_arg(const struct qs_ctx *c, const char *key);
const char *qs_arg_pos(const struct qs_ctx *c, int k);
long qs_arg_int(const struct qs_ctx *c, const char *key, long def);
double qs_arg_float(const struct qs_ctx *c, const char *key, double def);
/* Integer option KEY in lo..hi: 1 with *out set when given, 0 when absent (*out untouched), -1
 * with a message naming it ("train epochs: 0 is out of range (1..100000)"). */
int qs_arg_int_in(const struct qs_ctx *c, const char *key, long lo, long hi, long *out, qs_err *e);
/* The flags of the command a line names (its first one or two words), 0 when it names none. */
unsigned qs_cmd_line_flags(const struct qs_ctx *c, const char *line);
/* The command's flags as words ("journal,data,long"), for --commands. */
void qs_cmd_flag_words(unsigned flags, struct qs_sb *sb);

/* A growable string. */
struct qs_sb {
    char *s;
    size_t len, cap;
};
void qs_sb_printf(struct qs_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qs_sb_vprintf(struct qs_sb *sb, const char *fmt, va_list ap);
void qs_sb_free(struct qs_sb *sb);

/* JSON numbers are stored raw with "%.9g" (the design's fixed format; NaN/Inf become null). */
void qs_json_num(cJSON *obj, const char *key, double v);
cJSON *qs_json_num_item(double v);
/* Reads a number from an item written by qs_json_num (or a plain number); NAN if not one. */
double qs_json_get_num(const cJSON *item);

/* One journal entry: the canonical command and the results it produced. */
struct qs_jentry {
    char *line;
    cJSON *results; /* array of result objects (owned) */
};

struct qs_ctx {
    struct qs_bench *b;
    /* front-end output: called for every result (text may be multi-line, no trailing newline) */
    void (*emit)(void *u, const cJSON *obj, const char *text);
    /* warnings and notes that are not results (e.g. "pattern 'x*' matched no layer") */
    void (*note)(void *u, const char *msg);
    void *u;
    /* journal: successful QS_CMD_JOURNAL commands in canonical form */
    struct qs_jentry *journal;
    int njournal, capjournal;
    /* called after each journaled command (autosave); may be NULL */
    void (*on_journal)(struct qs_ctx *c, const struct qs_jentry *j);
    void *journal_u;
    int dirty; /* journal entries not yet saved to a session file */
    /* the command being run */
    char canon[1024];   /* canonical form set by the handler (else the typed line) */
    cJSON *cur_results; /* results emitted by the running command */
    int no_journal;     /* set by a handler to skip journaling this run */
    /* scripting */
    int depth;              /* source nesting */
    int bail;               /* stop at the first error (default 1) */
    const char *script_dir; /* folder of the running script, for relative paths */
    int quit;               /* set by `quit` */
    int json;               /* front end prints JSON */
    int safe;               /* refuse commands that write files (--replay's safe mode) */
    const char *scratch;    /* safe replay: the folder QS_CMD_SCRATCH commands write to */
    struct qs_redir *redir; /* paths written there so far (owned) */
    int nredir;
    const struct qs_script_frame *frames; /* scripts being run, innermost first (script.h) */
    long nsourced;                  /* scripts run under the outermost one (bounds the work) */
    cJSON *last_table;              /* last tabular result, for `export csv` (owned) */
    const struct qs_cmd_def *extra; /* front-end commands (NULL-name terminated), may be NULL */
    /* the running command and its words after the name, as the dispatcher checked them against
     * its spec (qs_arg, qs_arg_pos); NULL between commands */
    const struct qs_cmd_def *cur_cmd;
    int cur_argc;
    char **cur_argv;
    void *front; /* front-end state for QS_CMD_FRONT handlers */
};

void qs_ctx_init(struct qs_ctx *c, struct qs_bench *b);
void qs_ctx_free(struct qs_ctx *c); /* frees journal and last table, not the bench */
/* The scratch copy of PATH when a safe replay wrote it (qs_ctx.redir), else NULL. */
const char *qs_ctx_redirected(const struct qs_ctx *c, const char *path);
/* Forgets the paths a safe replay redirected (qs_ctx.redir), freeing them. */
void qs_ctx_redir_free(struct qs_ctx *c);

/* All commands: the core table followed by the front end's extra table. Iterate with
 * qs_cmd_at(c, i) until NULL. */
const struct qs_cmd_def *qs_cmd_at(const struct qs_ctx *c, int i);
/* Finds the command named by the first one or two words of argv; *used = words consumed. */
const struct qs_cmd_def *qs_cmd_lookup(const struct qs_ctx *c, int argc, char **argv, int *used);

/* Splits a line into words (shell-like: quotes, backslash escapes, '#' starts a comment outside
 * quotes). Returns argc or -1 with a message; *argv is owned by the caller (qs_argv_free). */
int qs_tokenize(const char *line, char ***argv, qs_err *e);
void qs_argv_free(char **argv, int argc);

/* Runs one command line (no ';' splitting). Empty lines and comments succeed. On success a
 * QS_CMD_JOURNAL command is appended to the journal. Returns 0 / -1 with e set. */
int qs_exec_line(struct qs_ctx *c, const char *line, qs_err *e);
/* Splits text into statements: on ';' and newlines outside quotes, '#' to the end of a line is a
 * comment; each non-empty statement (trimmed) goes to fn. Stops when fn returns nonzero and
 * returns that value, else 0. */
int qs_split_statements(const char *text, int (*fn)(void *u, const char *stmt), void *u);

/* Splits text on ';' and newlines outside quotes and runs each; stops at the first error when
 * c->bail. Returns 0 if all succeeded, else -1: e holds the error that stopped the run, or with
 * bail off (every error already passed to c->note as it happened) a count of the failures, so
 * that no caller prints an error twice. */
int qs_exec_text(struct qs_ctx *c, const char *text, qs_err *e);

/* Whether `load model MODEL` (and `load data DATA`, DATA may be NULL), paths as typed, can run
 * behind a first view of the model: MODEL a Hugging Face folder whose config qs_lm_peek reads
 * (*skel, the caller's) and DATA a readable file. 0 and *skel, or -1 (then the loads are to run
 * as usual, and say what is wrong). */
struct qs_lm;
int qs_cmd_load_peek(const char *model, const char *data, struct qs_lm **skel, qs_err *e);

/* Emits a result: obj must have "cmd"; ownership of obj passes to the context. */
void qs_emit(struct qs_ctx *c, cJSON *obj, const char *text);
/* Emits text that belongs to no single result (a summary under several results); front ends
 * receive it with obj == NULL and print it in text mode only. */
void qs_emit_text(struct qs_ctx *c, const char *text);
void qs_note(struct qs_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Keeps a copy of a tabular result for export csv: columns = keys of the row objects. */
void qs_set_last_table(struct qs_ctx *c, const char *title, const cJSON *rows, const char *header);

/* Appends an entry to the journal (used by the dispatcher and by `recover`). */
int qs_journal_add(struct qs_ctx *c, const char *line, cJSON *results);

/* Quotes a word for a canonical command line when it needs it (spaces, quotes, '#', ';'), so
 * that journaled paths replay; returns buf. A word that does not fit buf is cut, and the cut is
 * remembered (per thread) so that the dispatcher journals the typed line instead of a cut
 * canonical form. */
const char *qs_quote(const char *word, char *buf, size_t n);
/* The same into a growable string, never cut. */
void qs_quote_sb(const char *word, struct qs_sb *sb);

/* 1 when the command D, given its arguments, would write a file (QS_CMD_WRITES, or
 * QS_CMD_WRITES_OPT with an out=/csv= argument). */
int qs_cmd_writes(const struct qs_cmd_def *d, int argc, char **argv);

/* Option parsing helpers for handlers: "key=value" tokens. */
const char *qs_opt_value(const char *tok, const char *key); /* value if tok is key=..., else NULL */
int qs_parse_int(const char *s, long lo, long hi, long *out, const char *what, qs_err *e);
int qs_parse_double(const char *s, double *out, const char *what, qs_err *e);

/* Command tables of the core modules (NULL-name terminated). */
extern const struct qs_cmd_def qs_cmds_basic[];
extern const struct qs_cmd_def qs_cmds_analysis[];
extern const struct qs_cmd_def qs_cmds_session[];  /* session.c: save session */
extern const struct qs_cmd_def qs_cmds_replay[];   /* replay.c: source */
extern const struct qs_cmd_def qs_cmds_recover[];  /* autosave.c: recover */
extern const struct qs_cmd_def qs_cmds_sens[];     /* cmd_sens.c: sensitivity */
extern const struct qs_cmd_def qs_cmds_allocate[]; /* cmd_allocate.c: allocate */
extern const struct qs_cmd_def qs_cmds_qat[];      /* cmd_qat.c: qat */
extern const struct qs_cmd_def qs_cmds_study[];

/* The gate as JSON/text fields, added to every analysis result. */
void qs_add_gate(struct qs_ctx *c, cJSON *obj, struct qs_sb *text);

/* The gate footer of an analysis result's text, the one renderer of it (MLP and LM):
 * "[REGIME; gate pass]", or when the gate fails "[REGIME; FIGURE; gate FAIL: ...]" with the float
 * figure behind the verdict. The figure of a passing gate is eval's (its gate line), not repeated
 * under every table: a change of its number format touches one renderer's output. */
void qs_gate_footer(struct qs_sb *text, const char *regime, int pass, const char *figure);

#endif
