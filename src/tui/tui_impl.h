/* tui_impl.h - internals shared by the TUI's files (not a public header):
 *   tui.c       the event loop, terminal manners (signals, curses), colours and glyphs
 *   jobs.c      the UI's job queue: submitting lines, dispatching them, collecting results
 *   draw.c      layout, the status bar, the key hints and prompt line, redrawing
 *   keys.c      the key table (every key: its name, help, command or action, availability)
 *   help.c      the help overlay, generated from the key table and the command table
 *   readline.c  readline wired into curses (the prompt)
 *   frontcmd.c  the TUI's own commands: `screenshot`, `tui stats`, `tui keys`
 *   worker.c    the worker thread, the job hand-off and the snapshot (view model) builder
 *   panes.c     the pane table: one drawing function per pane, reading only the snapshot
 *   plot.c      a character canvas: braille dots in UTF-8, '*' / '.' cells in ASCII
 *
 * Threads: the UI thread owns curses, readline and the snapshot it draws; the worker owns the
 * bench while a job runs. They meet only in struct tui_shared (under mu): a one-slot job
 * hand-off, the finished job's status and snapshot, the log, the progress, and a self-pipe
 * whose byte wakes the UI's poll(). The UI never touches the bench while the worker runs; it
 * runs front-end commands (QS_CMD_FRONT) itself, and only when the worker is idle. */
#ifndef QSCOPE_TUI_IMPL_H
#define QSCOPE_TUI_IMPL_H

#ifndef NCURSES_WIDECHAR
#define NCURSES_WIDECHAR 1
#endif
#include <curses.h>
#include <pthread.h>
#include <wchar.h>

#include "qscope/analysis.h"
#include "qscope/cmd.h"
#include "qscope/layer_row.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/tui.h"

/* Every pane is one row of the pane table (pane_ops in panes.c), numbered in the table's order:
 * the focus keys 1..N and F2..F(N+1) reach them, N = tui_npanes. These names are the rows other
 * code refers to (the layout's fallback focus, the log, the decision regions, ...); a pane
 * nothing else names needs none: a new pane is its row (and its draw function). */
enum tui_pane {
    PANE_LAYERS,
    PANE_TASK,
    PANE_SPECTRUM,
    PANE_RANK,
    PANE_CORR,
    PANE_LOWDIM,
    PANE_LOG,
};
/* The most panes the table may hold (the size of per-pane arrays; the digit keys reach 9). */
#define TUI_PANES_MAX 9
extern const int tui_npanes; /* the pane table's rows */

/* ---- the snapshot: everything the panes draw, copied out of the bench by the worker ------ */

struct tui_row {
    char *name;            /* owned by the snapshot: any length, as the model has it */
    struct qs_layer_row l; /* the row `layers` prints (qs_layer_row_fill), with the correction's
                              last ablation; l.name = name */
    double snr_db, preact_rel_mse;
    int has_err; /* snr/preact set */
};

enum { LD_FLOAT, LD_QUANT, LD_CORR, LD_N };

struct tui_snap {
    unsigned gen;
    int have_model, have_data, ready;
    char model[256], data[256];
    char err[QS_ERRLEN]; /* why something could not be computed */
    int nlayers;
    struct tui_row *rows;
    double bpw; /* model bits per weight */
    char regime[24];
    /* task */
    int have_eval;
    struct qs_eval ev;      /* ev.q: quantized with corrections (as eval reports it) */
    struct qs_metric q_raw; /* quantized, corrections off */
    int any_corr;
    double gate_thr;
    /* language models: eval's figures on the held-out tokens (lev: quantized with the
     * corrections, as eval reports it; lev_raw: with them set aside, when any_corr) and the gate */
    int lm;
    struct qs_lm_eval lev, lev_raw;
    struct qs_lm_gate lgate;
    /* spectrum of the selected layer's weight error */
    int spec_layer, spec_ok;
    char spec_msg[128];
    int sm, sn, nsv, exact;
    double *sv, *ref; /* nsv each, descending */
    struct qs_rank_stats st;
    double w_fro2;
    double *left_e, *left_w; /* energy left after rank k, k = 0..nsv (nsv + 1) */
    int resid;               /* residual W - (Q(W) + C): 1 shown, 0 no correction, -1 the
                                correction acts on outputs (no weight residual) */
    char resid_method[16];
    double *res_sv; /* nsv residual values when resid == 1 */
    struct qs_rank_stats res_st;
    /* low-dimensional view */
    int lowdim;                /* 2-input model on 2-feature data */
    int gw, gh;                /* grid cells per panel */
    unsigned char *grid[LD_N]; /* (gh, gw) predicted class, row 0 = top */
    double x0, x1, y0, y1;     /* data bounding box with a margin */
    int npts, nclass;
    float *pts; /* (npts, 2) */
    int *plab;
    double ld_acc[LD_N];
    /* a transformer's figures come in stages (worker.c): 0 the full figures (or an MLP), else
     * the stage this snapshot shows: the layers table and the selected site's spectrum before any
     * forward pass (STAGE_QUICK), or the per-site errors on the first pv_n of the pv_of
     * calibration windows while the full pass runs (STAGE_PREVIEW) */
    int stage, pv_n, pv_of;
};
/* STAGE_LOADING: the model named on the command line is still being loaded by the worker; the
 * snapshot holds its sites as its config names them (qs_lm_peek), every one in its fresh state. */
enum { STAGE_FULL, STAGE_QUICK, STAGE_PREVIEW, STAGE_LOADING };

void tui_snap_free(struct tui_snap *s);

/* ---- the log ------------------------------------------------------------------------------ */

enum tui_log_kind { LOG_TEXT, LOG_CMD, LOG_ERR, LOG_NOTE };

struct tui_logline {
    wchar_t *text;
    int kind;
};

#define TUI_LOG_MAX 4000

struct tui_log {
    struct tui_logline v[TUI_LOG_MAX];
    int start, n;        /* ring */
    unsigned long total; /* lines ever added */
};

/* ---- the shared state -------------------------------------------------------------------- */

enum tui_job_kind { JOB_LINE, JOB_SNAP };

struct tui_shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake_w; /* self-pipe write end */
    /* UI -> worker */
    int have_job, job_kind, job_sel, job_later, stop;
    char *job_line; /* owned by the slot until the worker takes it */
    int ld_w, ld_h; /* low-dim panel size the UI wants */
    /* worker -> UI */
    int done, done_rc, done_quit, done_dirty, done_njournal;
    char done_err[QS_ERRLEN];
    struct tui_snap *snap; /* newest snapshot not yet taken */
    struct tui_log log;
    int log_dirty;
    char prog_what[160];
    double prog_frac;
    int prog_dirty;
    double last_poke; /* rate limit of the progress/log pokes */
    unsigned gen;
    /* a transformer's staged figures (the preview and the full pass after a job's command) are
     * being computed: a new job arriving then cancels them (superseded: the job after rebuilds
     * them, and the stale snapshot is not published) */
    int staging, superseded;
};

struct tui_worker {
    pthread_t th;
    int started;
    struct qs_ctx *c;
    struct tui_shared *sh;
    /* worker-owned: state_gen counts the commands run with QS_CMD_RECALC (they change what the
     * panes show); a transformer's eval figures are kept while it, the model and the tokens
     * stay (a new selection or a resize rebuilds the snapshot, not the state) */
    unsigned long state_gen;
    int lm_have;
    unsigned long lm_gen;
    const void *lm_m, *lm_t;
    struct qs_lm_eval lev, lev_raw;
    struct qs_lm_gate lgate;
    /* the staged figures: a preview is computed when the full calibration costs more than
     * preview_min (parameters x calibration tokens; QSCOPE_TUI_PREVIEW_MIN), its figures kept
     * for the state they were computed on (pv_gen ...); hold: QSCOPE_TUI_PREVIEW_HOLD, a file
     * the tests create to let each stage go on (worker.c); stale: a staged build was cancelled
     * by a new job, whose snapshot is then built whatever its command */
    double preview_min;
    const char *hold;
    int boot_hold; /* with hold: wait for it before the first command (the model's load) */
    int stale, pv_have, pv_n, pv_nsites;
    unsigned long pv_gen;
    const void *pv_m, *pv_t;
    double *pv_snr, *pv_mse;
};

/* Log helpers: lock-taking versions (any thread). text may hold several lines. */
void tui_log_add(struct tui_shared *sh, int kind, const char *text);
void tui_poke(struct tui_shared *sh);

/* Starts the worker thread on c (which it then owns whenever a job runs). */
int tui_worker_start(struct tui_worker *w, struct qs_ctx *c, struct tui_shared *sh);
/* Stops it (after the running job, which should be cancelled first) and joins. */
void tui_worker_stop(struct tui_worker *w);
/* Publishes the snapshot of a model still loading (STAGE_LOADING) from its peek skel. */
void tui_publish_loading(struct tui_shared *sh, const struct qs_lm *skel);
/* Hands a job to the idle worker: a command line (copied), or a snapshot rebuild; later: a
 * command of its group comes next and shows the figures (no snapshot unless this one fails). */
void tui_worker_submit(struct tui_worker *w, int kind, const char *line, int sel, int later);
/* The emit/note callbacks installed on the context while the TUI runs (u = the worker). */
void tui_emit_cb(void *u, const cJSON *obj, const char *text);
void tui_note_cb(void *u, const char *msg);
void tui_progress_cb(void *u, const char *what, double frac);
/* Builds a snapshot of the bench (only from the thread that owns it); spec: the selected layer's
 * spectrum already computed for this state (NULL: computed here). */
struct tui_snap *tui_snap_build(struct tui_worker *w, int sel, int ld_w, int ld_h,
                                const struct tui_snap *spec);
double tui_now(void);

/* ---- drawing ------------------------------------------------------------------------------ */

struct tui_style {
    int utf8, color;
    /* glyphs */
    const char *vline, *hline, *delta, *ge, *sel_mark;
};

enum {
    CP_TITLE = 1,
    CP_TITLE_FOCUS,
    CP_ERR,
    CP_OK,
    CP_WARN,
    CP_SER_ERR,
    CP_SER_W,
    CP_SER_MP,
    CP_DIM,
    CP_STATUS,
    CP_PROG,
    CP_CLASS_BG = 16,
    CP_CLASS_PT = 32,
    CP_CLASS_BAD = 48
};
#define TUI_NCLASS_COL 8

struct tui_view {
    const struct tui_snap *s; /* may be NULL before the first snapshot */
    const struct tui_style *st;
    int sel; /* selected layer */
    int focused;
    int log_scroll;        /* lines scrolled up from the bottom */
    struct tui_shared *sh; /* for the log (locked while drawing it) */
};

/* The pane table (panes.c): each pane's name, drawing function, title (NULL: "N Name"), place
 * on a narrow and a wide screen, and what it wants: which of the snapshot's results it draws (the
 * worker computes only what some pane of the table wants; a pane wanting any is redrawn on a new
 * snapshot), or the log (redrawn when the log grows). A pane wanting the decision grid is shown
 * (laid out, focusable) only for a model with 2-D input on 2-feature data. */
enum {
    TUI_WANT_LOG = 1,       /* the log */
    TUI_WANT_ROWS = 2,      /* the layer rows (qs_layer_row: formats, bits, corrections) */
    TUI_WANT_ERRORS = 4,    /* each layer's pre-activation error (qs_analysis_errors) */
    TUI_WANT_EVAL = 8,      /* the task figures: eval's float and quantized metrics, the gate */
    TUI_WANT_SPECTRUM = 16, /* the selected layer's weight-error spectrum, its noise edge */
    TUI_WANT_GRID = 32,     /* the decision regions of a 2-D model (needs the eval too) */
    TUI_WANT_SNAP =
        TUI_WANT_ROWS | TUI_WANT_ERRORS | TUI_WANT_EVAL | TUI_WANT_SPECTRUM | TUI_WANT_GRID
};
/* Where a pane sits on the screen: its row (0 top, 1, 2; -1: shown only zoomed) and its width's
 * weight among the panes of that row that are shown (draw.c has the rows' heights). */
struct tui_pane_place {
    int row, weight;
};
struct tui_pane_ops {
    const char *name;
    void (*draw)(WINDOW *w, int h, int cw, const struct tui_view *v);
    void (*title)(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n);
    int wants;
    struct tui_pane_place narrow, wide; /* below 140 columns, and from 140 */
};
/* What the panes of the table want together (TUI_WANT_*): what a snapshot computes. */
int tui_panes_want(void);
const struct tui_pane_ops *tui_pane_ops(enum tui_pane p);
/* Whether pane p is shown with snapshot s (NULL before the first). */
int tui_pane_available(enum tui_pane p, const struct tui_snap *s);
/* Draws pane p into w (h rows, wd columns: row 0 is the title bar; sep: draw a separator in the
 * last column). */
void tui_pane_draw(enum tui_pane p, WINDOW *w, int h, int wd, int sep, const struct tui_view *v);
/* The pane's title for a bar of WIDTH columns (a long layer name elides in the middle). */
void tui_pane_title(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n);
/* Decision-grid size (cells per panel) for a low-dim pane of h rows and cw content columns. */
void tui_lowdim_panel(int h, int cw, int *gw, int *gh);
/* Writes a UTF-8 / ASCII string clipped to n columns at the cursor. */
void tui_put(WINDOW *w, const char *s, int n);
/* Display width of a (multibyte) string. */
int tui_width(const char *s);

/* ---- plot canvas -------------------------------------------------------------------------- */

#define PLOT_SERIES 3

struct tui_plot {
    int w, h, utf8;
    int dw, dh;                       /* dot grid: (2w, 4h) in UTF-8, (w, h) in ASCII */
    unsigned char *dots[PLOT_SERIES]; /* per cell: braille bits (UTF-8) or 1 (ASCII) */
    unsigned char *hl; /* per cell: 1 if a horizontal rule passes (drawn under dots) */
};

int tui_plot_init(struct tui_plot *p, int w, int h, int utf8);
void tui_plot_free(struct tui_plot *p);
/* Polyline of n points (x[i], y[i]) already mapped to [0, 1] (y = 0 at the bottom). */
void tui_plot_line(struct tui_plot *p, int series, const double *x, const double *y, int n);
/* A horizontal rule at height fy in [0, 1]. */
void tui_plot_hrule(struct tui_plot *p, double fy);
/* Draws the canvas at (y, x) of w: series 0 drawn over 1 over 2; attr[s] per series, ascii[s]
 * the ASCII mark of series s. */
void tui_plot_draw(const struct tui_plot *p, WINDOW *w, int y, int x, const attr_t *attr,
                   const char *ascii, attr_t rule_attr, const char *rule_glyph);

/* ---- the UI thread's state (tui.c and the files it is split into) ------------------------- */

enum tui_mode { MODE_PANES, MODE_PROMPT, MODE_HELP, MODE_CONFIRM };

struct tui_item {
    int kind; /* JOB_LINE / JOB_SNAP */
    char *line;
    int group; /* statements of one submitted line: an error drops the rest */
};

struct tui_rect {
    int y, x, h, w, sep, vis;
};

struct tui_lat_stats {
    int n;
    double sum, max, v[4096];
};

struct tui {
    struct qs_ctx *c;
    struct tui_shared sh;
    struct tui_worker wk;
    struct tui_style st;
    SCREEN *scr;
    pthread_t ui_thread;
    int wake_r;
    /* view state (UI thread only) */
    struct tui_snap *snap;
    int sel, focus, zoom, mode, log_scroll, help_scroll;
    int too_small, lowdim_layout, nl_layout;
    struct tui_rect r[TUI_PANES_MAX];
    WINDOW *win[TUI_PANES_MAX], *status, *prompt, *help;
    int dirty[TUI_PANES_MAX], dirty_status, dirty_prompt, relayout;
    /* jobs */
    struct tui_item *q;
    int nq, capq, group;
    int boot_group; /* the group loading the model named on the command line, until it ends */
    int busy, busy_kind, busy_group;
    char busy_line[256];
    char prog_what[160];
    double prog_frac;
    int have_prog;
    /* session state reported by the worker */
    int dirty_journal, njournal, base_njournal;
    int quit_now, quit_after_job;
    /* readline input queue (bytes for rl_getc) */
    unsigned char rlq[512];
    int rlq_h, rlq_t;
    FILE *devnull;
    char hist[1024];
    /* what we replaced on the context */
    void (*saved_emit)(void *, const cJSON *, const char *);
    void (*saved_note)(void *, const char *);
    void *saved_u, *saved_front;
    const struct qs_cmd_def *saved_extra;
    qs_progress_fn saved_progress;
    void *saved_progress_ctx;
    /* latency: from reading a key to the screen updated (lat_key), and from a key that runs a
     * command to the panes showing its result (lat_cmd); `tui stats` reports them */
    double key_t0, cmd_t0;
    struct tui_lat_stats lat_key, lat_cmd;
};

/* The one TUI while it runs, else NULL (signal handlers and readline callbacks carry no user
 * pointer). */
extern struct tui *tui_the;

/* jobs.c: the queue of command lines and snapshot refreshes the worker runs one at a time */
void tui_queue_push(struct tui *t, int kind, const char *line, int group);
void tui_want_snapshot(struct tui *t); /* a refresh, unless one is already waiting */
void tui_submit_text(struct tui *t, const char *text); /* statements of text, as one group */
void tui_cancel_job(struct tui *t);   /* Ctrl-C: cancel the job and what is queued */
void tui_dispatch(struct tui *t);     /* hands the next job to the idle worker */
void tui_collect(struct tui *t);      /* takes what the worker left */
void tui_request_quit(struct tui *t); /* quits, asks first or cancels first */

/* draw.c */
void tui_redraw(struct tui *t);
void tui_dirty_all(struct tui *t);

/* keys.c: the key table. A key runs a command (a template whose placeholders - %L the selected
 * layer as one word, %{NAME} other words - are filled from the selected layer's row) or, for a
 * front-end key, an action. A key that runs a command is offered (in the hints, the help, and
 * when pressed) when that command can run now (a model, and its data, loaded); front-end keys
 * always. */
struct tui_key;
typedef void (*tui_key_fn)(struct tui *t, const struct tui_key *k, int fkey, wint_t ch);
struct tui_key {
    const char *label; /* the keys as the help shows them ("+ =", "j Down"); TUI_KEY_PANES: "%P"
                          (tui_key_label writes the range) */
    const char *chars; /* the characters that press it (Tab is "\t"), or "" */
    int fkeys[3];      /* curses function keys that press it (KEY_UP ...), 0-terminated */
    const char *foot;  /* the key hint's "KEY NAME" ("+/- bits"), or NULL: not in the hints */
    const char *help;  /* the help overlay's text */
    const char *cmd;   /* the command it runs (a template, see above); NULL: act */
    tui_key_fn act;    /* a front-end key's action (cmd NULL) */
    int flags;         /* TUI_KEY_* */
};
enum {
    TUI_KEY_ANY_MODE = 1, /* also at the prompt and in the help overlay (Ctrl-C) */
    TUI_KEY_PROMPT = 2,   /* also at the prompt (function keys) */
    TUI_KEY_PANES = 4     /* the focus keys of the panes: 1..N and F2..F(N+1) for the N rows of
                             the pane table (chars and fkeys unused) */
};
extern const struct tui_key tui_keys[];
extern const int tui_nkeys;
/* The keys of k as the help shows them: its label, or for TUI_KEY_PANES the range from the pane
 * table ("1-7 F2-F8" for seven panes). */
const char *tui_key_label(const struct tui_key *k);
/* 0 when key k is offered now, else -1 with the reason in e. */
int tui_key_refused(struct tui *t, const struct tui_key *k, qs_err *e);
/* The command the key runs, as the help shows it ("uncorrect LAYER"), or "" (buf: n bytes). */
void tui_key_command(const struct tui_key *k, char *buf, size_t n);
/* Appends to out the command template tpl with its placeholders filled from layer row l (NULL:
 * none selected). 0, or -1 with the reason in e (an unknown placeholder, no layer, no bit more
 * than float): then nothing is to run. */
int tui_key_expand(const char *tpl, const struct qs_layer_row *l, struct qs_sb *out, qs_err *e);
/* The key hints' line of the offered keys (buf: n bytes). */
void tui_key_hints(struct tui *t, char *buf, size_t n);
void tui_handle_key(struct tui *t, int fkey, wint_t ch);
/* help.c: the help overlay (keys from tui_keys, then every command of the table) */
void tui_draw_help(struct tui *t);

/* readline.c */
void tui_readline_begin(struct tui *t);
void tui_readline_end(struct tui *t);
void tui_rl_feed(struct tui *t, const char *bytes, size_t n);

/* frontcmd.c: latency bookkeeping for `tui stats`, and a size change not yet seen by curses */
double tui_now_ms(void);
void tui_lat_add(struct tui_lat_stats *l, double ms);
void tui_sync_size(struct tui *t);

#endif
