/* tui.c - the workbench's full-screen front end: event loop, layout, keys, the embedded readline
 * prompt, terminal manners and the `screenshot` command.
 *
 * The loop poll()s stdin and a self-pipe. Keys in the panes map to command strings that go
 * through the same queue as typed lines; the queue feeds the worker one statement at a time.
 * When a job finishes the worker leaves a snapshot for the panes; the loop takes it, marks the
 * panes dirty and redraws only those. Front-end commands run here, between jobs. */
#include "qscope/session.h"
#include "qscope/tui.h"

#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "qscope/front.h"
#include "tui_impl.h"

enum tui_mode { MODE_PANES, MODE_PROMPT, MODE_HELP, MODE_CONFIRM };

struct tui_item {
    int kind; /* JOB_LINE / JOB_SNAP */
    char *line;
    int group; /* statements of one submitted line: an error drops the rest */
};

struct tui_rect {
    int y, x, h, w, sep, vis;
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
    struct tui_rect r[PANE_N];
    WINDOW *win[PANE_N], *status, *prompt, *help;
    int dirty[PANE_N], dirty_status, dirty_prompt, relayout;
    /* jobs */
    struct tui_item *q;
    int nq, capq, group;
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
    struct lat_stats {
        int n;
        double sum, max, v[4096];
    } lat_key, lat_cmd;
};

/* The one TUI (signal handlers and readline callbacks carry no user pointer). */
static struct tui *T;
static volatile sig_atomic_t g_curses_on, g_sigint;
static int g_wake_w = -1;
static struct sigaction g_old_winch;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void lat_add(struct lat_stats *l, double ms)
{
    if (l->n < (int)(sizeof l->v / sizeof l->v[0]))
        l->v[l->n] = ms;
    l->n++;
    l->sum += ms;
    if (ms > l->max)
        l->max = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* "n N, mean X ms, p95 Y ms, max Z ms" */
static void lat_format(struct lat_stats *l, char *buf, size_t n)
{
    int k = l->n < (int)(sizeof l->v / sizeof l->v[0]) ? l->n : (int)(sizeof l->v / sizeof l->v[0]);
    if (!k) {
        snprintf(buf, n, "n 0");
        return;
    }
    double *v = malloc((size_t)k * sizeof *v);
    if (!v) {
        snprintf(buf, n, "n %d", l->n);
        return;
    }
    memcpy(v, l->v, (size_t)k * sizeof *v);
    qsort(v, (size_t)k, sizeof *v, cmp_double);
    snprintf(buf, n, "n %d, mean %.3f ms, p95 %.3f ms, max %.3f ms", l->n, l->sum / l->n,
             v[(int)(0.95 * (k - 1))], l->max);
    free(v);
}


/* ---- terminal manners: restore on every exit path ----------------------------------------- */

static void restore_terminal(void)
{
    if (g_curses_on) {
        g_curses_on = 0;
        endwin();
    }
}

static void on_fatal(int sig)
{
    restore_terminal();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_sigint(int sig)
{
    (void)sig;
    g_sigint = 1;
    if (g_wake_w >= 0) {
        ssize_t r = write(g_wake_w, "i", 1);
        (void)r;
    }
}

static void on_winch(int sig)
{
    if (g_wake_w >= 0) {
        ssize_t r = write(g_wake_w, "w", 1);
        (void)r;
    }
    if (g_old_winch.sa_handler != SIG_DFL && g_old_winch.sa_handler != SIG_IGN &&
        g_old_winch.sa_handler)
        g_old_winch.sa_handler(sig);
}

static void install_signals(void)
{
    static const int fatal[] = {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGTERM, SIGHUP, SIGQUIT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_RESETHAND;
    for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++)
        sigaction(fatal[i], &sa, NULL);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, &g_old_winch); /* chains to ncurses' own (KEY_RESIZE) */
}

static void reset_signals(void)
{
    static const int sigs[] = {SIGSEGV, SIGABRT, SIGBUS,  SIGFPE, SIGILL,
                               SIGTERM, SIGHUP,  SIGQUIT, SIGINT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], SIG_DFL);
    sigaction(SIGWINCH, &g_old_winch, NULL);
}

/* ---- colours and glyphs ------------------------------------------------------------------- */

static void init_style(struct tui_style *st)
{
    st->utf8 = !strcmp(nl_langinfo(CODESET), "UTF-8");
    const char *nc = getenv("NO_COLOR");
    st->color = has_colors() && !(nc && nc[0]);
    if (st->utf8) {
        st->vline = "\xe2\x94\x82";    /* │ */
        st->hline = "\xe2\x94\x80";    /* ─ */
        st->delta = "\xce\x94";        /* Δ */
        st->ge = "\xe2\x89\xa5";       /* ≥ */
        st->sel_mark = "\xe2\x96\xb6"; /* ▶ */
    } else {
        st->vline = "|";
        st->hline = "-";
        st->delta = "d";
        st->ge = ">=";
        st->sel_mark = ">";
    }
    if (!st->color)
        return;
    start_color();
    use_default_colors();
    if (COLOR_PAIRS < CP_CLASS_BAD + TUI_NCLASS_COL) {
        st->color = 0;
        return;
    }
    init_pair(CP_TITLE, COLOR_WHITE, COLOR_BLUE);
    init_pair(CP_TITLE_FOCUS, COLOR_BLACK, COLOR_CYAN);
    init_pair(CP_ERR, COLOR_RED, -1);
    init_pair(CP_OK, COLOR_GREEN, -1);
    init_pair(CP_WARN, COLOR_YELLOW, -1);
    init_pair(CP_SER_ERR, COLOR_RED, -1);
    init_pair(CP_SER_W, COLOR_CYAN, -1);
    init_pair(CP_SER_MP, COLOR_YELLOW, -1);
    init_pair(CP_DIM, -1, -1);
    init_pair(CP_STATUS, COLOR_BLACK, COLOR_WHITE);
    init_pair(CP_PROG, COLOR_GREEN, -1);
    static const short pal[TUI_NCLASS_COL] = {COLOR_BLUE, COLOR_RED,    COLOR_GREEN, COLOR_MAGENTA,
                                              COLOR_CYAN, COLOR_YELLOW, COLOR_WHITE, COLOR_BLACK};
    for (int k = 0; k < TUI_NCLASS_COL; k++) {
        int light = pal[k] == COLOR_YELLOW || pal[k] == COLOR_WHITE || pal[k] == COLOR_CYAN ||
                    pal[k] == COLOR_GREEN;
        init_pair((short)(CP_CLASS_BG + k), COLOR_WHITE, pal[k]);
        init_pair((short)(CP_CLASS_PT + k), light ? COLOR_BLACK : COLOR_WHITE, pal[k]);
        init_pair((short)(CP_CLASS_BAD + k), pal[k] == COLOR_YELLOW ? COLOR_RED : COLOR_YELLOW,
                  pal[k]);
    }
}

/* ---- the job queue ------------------------------------------------------------------------ */

static void queue_push(struct tui *t, int kind, const char *line, int group)
{
    if (t->nq == t->capq) {
        int cap = t->capq ? 2 * t->capq : 16;
        struct tui_item *q = realloc(t->q, (size_t)cap * sizeof *q);
        if (!q)
            return;
        t->q = q;
        t->capq = cap;
    }
    t->q[t->nq++] = (struct tui_item){kind, line ? qs_strdup(line) : NULL, group};
}

static void queue_drop(struct tui *t, int i)
{
    free(t->q[i].line);
    memmove(t->q + i, t->q + i + 1, (size_t)(t->nq - i - 1) * sizeof *t->q);
    t->nq--;
}

/* A snapshot refresh (new selection, new panel size), unless one is already waiting. */
static void want_snapshot(struct tui *t)
{
    for (int i = 0; i < t->nq; i++)
        if (t->q[i].kind == JOB_SNAP)
            return;
    /* a refresh already running may be stale: queue another */
    queue_push(t, JOB_SNAP, NULL, 0);
}

struct submit_state {
    struct tui *t;
    int group;
};

static int submit_one(void *u, const char *stmt)
{
    struct submit_state *st = u;
    queue_push(st->t, JOB_LINE, stmt, st->group);
    return 0;
}

/* Splits text into statements as qs_exec_text does and queues them as one group. */
static void submit_text(struct tui *t, const char *text)
{
    struct submit_state st = {t, ++t->group};
    qs_split_statements(text, submit_one, &st);
}

static void cancel_job(struct tui *t)
{
    if (!t->busy) {
        if (t->mode == MODE_PROMPT && rl_line_buffer && rl_line_buffer[0]) {
            rl_replace_line("", 0);
            rl_point = 0;
            t->dirty_prompt = 1;
        } else {
            tui_log_add(&t->sh, LOG_NOTE, "nothing to cancel (q quits)");
        }
        return;
    }
    t->c->b->cancel = 1; /* the designed asynchronous flag; the job checks it */
    int dropped = 0;
    for (int i = t->nq - 1; i >= 0; i--)
        if (t->q[i].kind == JOB_LINE) {
            queue_drop(t, i);
            dropped++;
        }
    char msg[360];
    snprintf(msg, sizeof msg, "cancelling '%s'%s", t->busy_line,
             dropped ? " and the queued commands" : "");
    tui_log_add(&t->sh, LOG_NOTE, msg);
}

/* ---- layout ------------------------------------------------------------------------------- */

struct row_spec {
    int panes[4], np, min, want, flex;
    int weight[4];
};

static void layout(struct tui *t)
{
    int H = LINES - 2, W = COLS;
    for (int p = 0; p < PANE_N; p++)
        t->r[p].vis = 0;
    int lowdim = t->snap && t->snap->lowdim;
    int nl = t->snap && t->snap->nlayers ? t->snap->nlayers : 3;
    t->lowdim_layout = lowdim;
    t->nl_layout = nl;
    t->too_small = W < 60 || H < 14;
    if (t->too_small)
        return;
    if (!lowdim && t->focus == PANE_LOWDIM)
        t->focus = PANE_LAYERS;
    if (t->zoom) {
        t->r[t->focus] = (struct tui_rect){0, 0, H, W, 0, 1};
        return;
    }
    int wide = W >= 140;
    struct row_spec rows[4];
    int nr = 0;
    int a_want = nl + 2 > 9 ? nl + 2 : 9;
    if (a_want > H * 2 / 5)
        a_want = H * 2 / 5;
    if (wide) {
        rows[nr++] =
            (struct row_spec){{PANE_LAYERS, PANE_TASK, PANE_CORR}, 3, 4, a_want, 0, {50, 22, 28}};
        if (lowdim)
            rows[nr++] = (struct row_spec){
                {PANE_SPECTRUM, PANE_RANK, PANE_LOWDIM}, 3, 6, 12, 2, {25, 25, 50}};
        else
            rows[nr++] = (struct row_spec){{PANE_SPECTRUM, PANE_RANK}, 2, 4, 10, 1, {50, 50}};
        rows[nr++] = (struct row_spec){{PANE_LOG}, 1, 3, 3, 1, {100}};
    } else {
        int tw = W * 32 / 100;
        tw = tw < 24 ? 24 : tw > 36 ? 36 : tw;
        rows[nr++] =
            (struct row_spec){{PANE_LAYERS, PANE_TASK}, 2, 4, lowdim ? 8 : a_want, 0, {W - tw, tw}};
        rows[nr++] = (struct row_spec){{PANE_SPECTRUM, PANE_RANK, PANE_CORR},
                                       3,
                                       4,
                                       lowdim ? 7 : 8,
                                       lowdim ? 0 : 1,
                                       {34, 33, 33}};
        if (lowdim)
            rows[nr++] = (struct row_spec){{PANE_LOWDIM, PANE_LOG}, 2, 5, 7, 1, {62, 38}};
        else
            rows[nr++] = (struct row_spec){{PANE_LOG}, 1, 3, 3, 1, {100}};
    }
    int h[4], rem = H, flex = 0;
    for (int i = 0; i < nr; i++) {
        h[i] = rows[i].min;
        rem -= h[i];
        flex += rows[i].flex;
    }
    if (rem < 0) {
        t->too_small = 1;
        return;
    }
    for (int i = 0; i < nr && rem > 0; i++) {
        int add = rows[i].want - h[i];
        add = add > rem ? rem : add > 0 ? add : 0;
        h[i] += add;
        rem -= add;
    }
    for (int i = 0, left = rem; i < nr && flex; i++) {
        int add = i == nr - 1 ? left : rem * rows[i].flex / flex;
        if (!rows[i].flex)
            add = 0;
        if (add > left)
            add = left;
        h[i] += add;
        left -= add;
        if (i == nr - 1 && left > 0)
            h[i] += left;
    }
    int y = 0;
    for (int i = 0; i < nr; i++) {
        int tot = 0, x = 0;
        for (int k = 0; k < rows[i].np; k++)
            tot += rows[i].weight[k];
        for (int k = 0; k < rows[i].np; k++) {
            int w = k == rows[i].np - 1 ? W - x : W * rows[i].weight[k] / tot;
            t->r[rows[i].panes[k]] = (struct tui_rect){y, x, h[i], w, k < rows[i].np - 1, 1};
            x += w;
        }
        y += h[i];
    }
}

static void lowdim_dims(struct tui *t)
{
    const struct tui_rect *r = &t->r[PANE_LOWDIM];
    int gw = 0, gh = 0;
    if (r->vis)
        tui_lowdim_panel(r->h, r->w - r->sep, &gw, &gh);
    pthread_mutex_lock(&t->sh.mu);
    int changed = gw && (t->sh.ld_w != gw || t->sh.ld_h != gh);
    if (gw) {
        t->sh.ld_w = gw;
        t->sh.ld_h = gh;
    }
    pthread_mutex_unlock(&t->sh.mu);
    if (changed && t->snap && t->snap->lowdim && (t->snap->gw != gw || t->snap->gh != gh))
        want_snapshot(t);
}

static void rebuild_windows(struct tui *t)
{
    for (int p = 0; p < PANE_N; p++) {
        if (t->win[p])
            delwin(t->win[p]);
        t->win[p] = NULL;
    }
    if (t->status)
        delwin(t->status);
    if (t->prompt)
        delwin(t->prompt);
    if (t->help)
        delwin(t->help);
    t->help = NULL;
    layout(t);
    for (int p = 0; p < PANE_N; p++)
        if (t->r[p].vis && (t->win[p] = newwin(t->r[p].h, t->r[p].w, t->r[p].y, t->r[p].x)))
            leaveok(t->win[p], TRUE);
    t->status = newwin(1, COLS, LINES - 2 > 0 ? LINES - 2 : 0, 0);
    t->prompt = newwin(1, COLS, LINES - 1, 0);
    if (t->status)
        leaveok(t->status, TRUE);
    for (int p = 0; p < PANE_N; p++)
        t->dirty[p] = 1;
    t->dirty_status = t->dirty_prompt = 1;
    t->relayout = 0;
    clearok(curscr, TRUE);
    lowdim_dims(t);
}

/* ---- drawing ------------------------------------------------------------------------------ */

static void view_of(struct tui *t, struct tui_view *v)
{
    v->s = t->snap;
    v->st = &t->st;
    v->sel = t->sel;
    v->focused = t->focus;
    v->log_scroll = t->log_scroll;
    v->sh = &t->sh;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void draw_status(struct tui *t)
{
    WINDOW *w = t->status;
    if (!w)
        return;
    werase(w);
    attr_t bar = t->st.color ? (attr_t)COLOR_PAIR(CP_STATUS) : A_REVERSE;
    wbkgdset(w, ' ');
    wmove(w, 0, 0);
    const char *mode = t->mode == MODE_PROMPT ? " PROMPT " : t->zoom ? " ZOOM " : " PANES ";
    wattr_on(w, bar | A_BOLD, NULL);
    tui_put(w, mode, COLS);
    wattr_off(w, bar | A_BOLD, NULL);
    waddch(w, ' ');
    char buf[512];
    const char *dot = t->st.utf8 ? " \xc2\xb7 " : " | ";
    if (t->mode == MODE_CONFIRM) {
        snprintf(buf, sizeof buf, "%d command%s since the last `save session`: quit anyway? (y/n)",
                 t->njournal - t->base_njournal, t->njournal - t->base_njournal == 1 ? "" : "s");
        wattr_on(w, A_BOLD, NULL);
        tui_put(w, buf, COLS - getcurx(w));
        wattr_off(w, A_BOLD, NULL);
    } else if (t->busy) {
        int bw = 20;
        int fill = t->have_prog ? (int)(t->prog_frac * bw + 0.5) : 0;
        fill = fill < 0 ? 0 : fill > bw ? bw : fill;
        wattr_on(w, A_BOLD, NULL);
        snprintf(buf, sizeof buf, "running: %s ",
                 t->busy_kind == JOB_SNAP ? "refresh" : t->busy_line);
        tui_put(w, buf, COLS - getcurx(w) - 1);
        wattr_off(w, A_BOLD, NULL);
        if (t->have_prog && COLS - getcurx(w) > bw + 8) {
            attr_t pa = t->st.color ? (attr_t)COLOR_PAIR(CP_PROG) : 0;
            waddch(w, '[');
            wattr_on(w, pa, NULL);
            for (int i = 0; i < bw; i++)
                tui_put(w,
                        i < fill ? (t->st.utf8 ? "\xe2\x96\x88" : "#")
                                 : (t->st.utf8 ? "\xe2\x96\x91" : "."),
                        1);
            wattr_off(w, pa, NULL);
            snprintf(buf, sizeof buf, "] %3.0f%% %s", 100 * t->prog_frac, t->prog_what);
            tui_put(w, buf, COLS - getcurx(w));
        }
        tui_put(w, "  (Ctrl-C cancels)", COLS - getcurx(w));
    } else if (t->snap && t->snap->have_model) {
        int unsaved = t->dirty_journal && t->njournal > t->base_njournal;
        snprintf(buf, sizeof buf, "%s%s%s%s%d layers%s%.2f bits/w%s%s", base_name(t->snap->model),
                 t->snap->have_data ? dot : "", t->snap->have_data ? base_name(t->snap->data) : "",
                 dot, t->snap->nlayers, dot, t->snap->bpw, unsaved ? dot : "",
                 unsaved ? "unsaved" : "");
        tui_put(w, buf, COLS - getcurx(w));
        if (t->nq) {
            snprintf(buf, sizeof buf, "%s%d queued", dot, t->nq);
            tui_put(w, buf, COLS - getcurx(w));
        }
    } else {
        tui_put(w, t->snap ? "no model: load model PATH" : "starting...", COLS - getcurx(w));
    }
    wnoutrefresh(w);
}

/* Whether the key running command VERB works on the loaded model, by the command table's flags
 * (qs_cmd_family_check): 0, or -1 with the dispatcher's refusal in e. Before the first snapshot
 * (the family is not known yet) every key is offered. */
static int key_refused(struct tui *t, const char *verb, qs_err *e)
{
    char *argv[1] = {(char *)verb};
    int used;
    const struct qs_cmd_def *d = verb ? qs_cmd_lookup(t->c, 1, argv, &used) : NULL;
    return d ? qs_cmd_family_check(d, t->snap && t->snap->lm, e) : 0;
}

/* Shown in the key hints and the help overlay: front-end keys (verb NULL), and command keys
 * whose command runs on the loaded model. */
static int key_offered(struct tui *t, const char *verb)
{
    qs_err e = {{0}};
    return key_refused(t, verb, &e) == 0;
}

/* Draws readline's line into the prompt window, scrolled so that the cursor shows. */
static void draw_prompt(struct tui *t)
{
    WINDOW *w = t->prompt;
    if (!w)
        return;
    werase(w);
    if (t->mode != MODE_PROMPT) {
        /* the keys, without those whose command refuses on the loaded model */
        static const struct {
            const char *text, *verb;
        } hint[] = {{": command", NULL}, {"? help", NULL},      {"q quit", NULL},
                    {"j/k layer", NULL}, {"+/- bits", "quant"}, {"f format", "quant"},
                    {"c correct", "correct"}, {"a ablate", "ablate"}, {"Tab focus", NULL},
                    {"z zoom", NULL}};
        char line[256];
        size_t n = 0;
        line[0] = 0;
        for (size_t i = 0; i < sizeof hint / sizeof *hint; i++)
            if (key_offered(t, hint[i].verb) && n < sizeof line)
                n += (size_t)snprintf(line + n, sizeof line - n, "%s%s", n ? "  " : "",
                                      hint[i].text);
        wmove(w, 0, 0);
        wattr_on(w, A_DIM, NULL);
        tui_put(w, line, COLS - 1);
        wattr_off(w, A_DIM, NULL);
        wnoutrefresh(w);
        return;
    }
    const char *prompt = rl_display_prompt ? rl_display_prompt : "qscope> ";
    const char *line = rl_line_buffer ? rl_line_buffer : "";
    int pw = tui_width(prompt);
    size_t len = strlen(line);
    wchar_t *wl = malloc((len + 1) * sizeof *wl);
    if (!wl)
        return;
    size_t nw = mbstowcs(wl, line, len + 1);
    int ascii = nw == (size_t)-1;
    if (ascii) { /* not decodable in this locale: show bytes */
        for (size_t i = 0; i < len; i++)
            wl[i] = (unsigned char)line[i] < 128 ? (wchar_t)line[i] : L'?';
        wl[len] = 0;
        nw = len;
    }
    /* the cursor's index in wide characters */
    size_t cur = 0;
    {
        mbstate_t ms;
        memset(&ms, 0, sizeof ms);
        size_t off = 0, pt = rl_point > 0 ? (size_t)rl_point : 0;
        while (off < pt && off < len) {
            size_t k = ascii ? 1 : mbrlen(line + off, len - off, &ms);
            if (k == 0 || k == (size_t)-1 || k == (size_t)-2)
                k = 1;
            off += k;
            cur++;
        }
    }
    int avail = COLS - pw - 1;
    if (avail < 4)
        avail = 4;
    size_t start = 0;
    for (;;) { /* first character such that [start, cur) fits */
        int wsum = 0;
        for (size_t i = start; i < cur; i++)
            wsum += wcwidth(wl[i]) > 0 ? wcwidth(wl[i]) : 1;
        if (wsum < avail || start >= cur)
            break;
        start++;
    }
    wmove(w, 0, 0);
    wattr_on(w, A_BOLD, NULL);
    tui_put(w, prompt, COLS);
    wattr_off(w, A_BOLD, NULL);
    int x = pw, cx = pw;
    for (size_t i = start; i < nw && x < COLS - 1; i++) {
        int cw = wcwidth(wl[i]) > 0 ? wcwidth(wl[i]) : 1;
        if (i == cur)
            cx = x;
        waddnwstr(w, &wl[i], 1);
        x += cw;
    }
    if (cur >= nw)
        cx = x;
    free(wl);
    wmove(w, 0, cx < COLS ? cx : COLS - 1);
    wnoutrefresh(w);
}

/* The help overlay's line of the keys that run one command each, without those that refuse on
 * the loaded model (owned by the caller). */
static char *key_cmd_line(struct tui *t)
{
    static const struct {
        const char *key, *what, *verb;
    } k[] = {{"a", "ablate LAYER", "ablate"}, {"e", "error", "error"}, {"v", "eval", "eval"},
             {"s", "spectrum LAYER", "spectrum"}, {"r", "rank", "rank"}};
    char line[160];
    size_t n = 0;
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (key_offered(t, k[i].verb) && n < sizeof line)
            n += (size_t)snprintf(line + n, sizeof line - n, n ? "   %s %s" : "  %-14s%s",
                                  k[i].key, k[i].what);
    return qs_strdup(n ? line : "");
}

/* The help overlay's lines: keys, then every command of the table. */
static int help_lines(struct tui *t, char ***out)
{
    static const char *const keys[] = {
        "Keys in the panes (the status bar says PANES):",
        "  : / Enter     command prompt; Esc returns to the panes; Tab completes there",
        "  Tab S-Tab     next / previous pane;  1-7 or F2-F8 focus a pane;  z zoom it",
        "  j k Up Down   select a layer (in the log: scroll);  PgUp PgDn scroll the log",
        "  + -           one bit more / less for the selected layer (quant LAYER intB)",
        "  f F           next / previous format: int8 int4 int3 int2 fp8-e4m3 mxfp4 nvfp4 nf4 none",
        "  c             correct LAYER lowrank r=4 (<=)  u  uncorrect LAYER",
        NULL, /* the keys of single commands (key_cmd_line) */
        "  Ctrl-C        cancel the running job (never quits)      Ctrl-L redraw",
        "  ? F1          this overview (j/k scroll, any other key closes)",
        "  q             quit (asks y/n when the journal has unsaved commands)",
        "Every key runs a command line through the dispatcher: it is journaled like typed text.",
        "",
        "Commands (type them at the prompt; `help CMD` for details):",
    };
    int nk = (int)(sizeof keys / sizeof *keys), n = 0;
    while (qs_cmd_at(t->c, n))
        n++;
    char **v = calloc((size_t)(nk + n), sizeof *v);
    if (!v)
        return 0;
    for (int i = 0; i < nk; i++)
        v[i] = keys[i] ? qs_strdup(keys[i]) : key_cmd_line(t);
    for (int i = 0; i < n; i++) {
        const struct qs_cmd_def *d = qs_cmd_at(t->c, i);
        char buf[512], syn[200];
        snprintf(syn, sizeof syn, "%s %s", d->name, d->args);
        snprintf(buf, sizeof buf, "  %-44s %s", syn, d->help);
        v[nk + i] = qs_strdup(buf);
    }
    *out = v;
    return nk + n;
}

static void draw_help(struct tui *t)
{
    int h = LINES - 2, w = COLS;
    if (h < 5 || w < 30)
        return;
    if (!t->help && !(t->help = newwin(h, w, 0, 0)))
        return;
    WINDOW *hw = t->help;
    werase(hw);
    if (t->st.utf8)
        box(hw, 0, 0);
    else /* plain characters: the line-drawing set may not survive a non-UTF-8 locale */
        wborder(hw, '|', '|', '-', '-', '+', '+', '+', '+');
    char **lines = NULL;
    int n = help_lines(t, &lines);
    int vis = h - 2;
    if (t->help_scroll > n - vis)
        t->help_scroll = n - vis > 0 ? n - vis : 0;
    for (int i = 0; i < vis && t->help_scroll + i < n; i++) {
        wmove(hw, 1 + i, 2);
        const char *s = lines[t->help_scroll + i];
        attr_t a = s[0] != ' ' ? A_BOLD : 0;
        wattr_on(hw, a, NULL);
        tui_put(hw, s, w - 4);
        wattr_off(hw, a, NULL);
    }
    wmove(hw, 0, 2);
    tui_put(hw, " qscope help (Esc closes) ", w - 4);
    for (int i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
    touchwin(hw);
    wnoutrefresh(hw);
}

static void redraw(struct tui *t)
{
    if (t->relayout)
        rebuild_windows(t);
    if (t->too_small) {
        erase();
        mvaddstr(0, 0, "qscope: the terminal is too small (need 60x16); q quits");
        wnoutrefresh(stdscr);
        if (t->mode == MODE_PROMPT)
            draw_prompt(t);
        doupdate();
        return;
    }
    struct tui_view v;
    view_of(t, &v);
    int any = 0;
    for (int p = 0; p < PANE_N; p++) {
        if (!t->r[p].vis || !t->win[p] || !t->dirty[p])
            continue;
        tui_pane_draw((enum tui_pane)p, t->win[p], t->r[p].h, t->r[p].w, t->r[p].sep, &v);
        wnoutrefresh(t->win[p]);
        t->dirty[p] = 0;
        any = 1;
    }
    if (t->dirty_status || any) {
        draw_status(t);
        t->dirty_status = 0;
    }
    if (t->mode == MODE_HELP)
        draw_help(t);
    if (t->dirty_prompt || t->mode == MODE_PROMPT || any) {
        draw_prompt(t); /* last, so that the cursor ends at the prompt */
        t->dirty_prompt = 0;
    }
    doupdate();
}

static void dirty_all(struct tui *t)
{
    for (int p = 0; p < PANE_N; p++)
        t->dirty[p] = 1;
    t->dirty_status = t->dirty_prompt = 1;
}

/* ---- screenshot --------------------------------------------------------------------------- */

/* Prefixes e's message with "screenshot: " (the message names the file and the error). */
static int screenshot_err(qs_err *e)
{
    char m[QS_ERRLEN];
    snprintf(m, sizeof m, "%s", e->msg);
    return qs_errf(e, "screenshot: %s", m);
}

/* Writes the screen as text, one line per row, trailing blanks removed (read back from curses'
 * idea of the physical screen, so overlays and the prompt are included). The file is replaced
 * only when the whole screen was written (qs_outfile: a device is written in place). */
static int dump_screen(const char *path, qs_err *e)
{
    cchar_t *cells = calloc((size_t)COLS + 1, sizeof *cells);
    char *line = malloc((size_t)COLS * MB_LEN_MAX + 1);
    if (!cells || !line) {
        free(cells);
        free(line);
        return qs_errf(e, "out of memory");
    }
    qs_outfile o;
    if (qs_out_open(&o, path, e) < 0) {
        free(cells);
        free(line);
        return screenshot_err(e);
    }
    for (int y = 0; y < LINES; y++) {
        int n = mvwin_wchnstr(curscr, y, 0, cells, COLS);
        size_t len = 0, keep = 0;
        mbstate_t ms;
        memset(&ms, 0, sizeof ms);
        for (int x = 0; n != ERR && x < COLS; x++) {
            wchar_t wc[CCHARW_MAX + 1] = {0};
            attr_t a;
            short pair;
            if (getcchar(&cells[x], wc, &a, &pair, NULL) == ERR || !wc[0])
                continue; /* the right half of a wide character */
            size_t k = wcrtomb(line + len, wc[0], &ms);
            if (k == (size_t)-1) {
                line[len] = '?';
                k = 1;
            }
            len += k;
            if (wc[0] != L' ')
                keep = len;
        }
        line[keep] = 0;
        fprintf(o.f, "%s\n", line);
    }
    free(cells);
    free(line);
    if (qs_out_commit(&o, e) < 0)
        return screenshot_err(e);
    return 0;
}

/* Takes a size change that the terminal already has but curses has not been told of yet (its
 * SIGWINCH still on the way, or not yet read back as KEY_RESIZE), so that what is drawn next -
 * a screenshot above all - has the terminal's real size. LINES/COLUMNS in the environment
 * override the terminal's size in curses: then there is nothing to take. */
static void sync_size(struct tui *t)
{
    struct winsize ws;
    if (getenv("LINES") || getenv("COLUMNS") || ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 ||
        ws.ws_row == 0 || ws.ws_col == 0)
        return;
    if (ws.ws_row != LINES || ws.ws_col != COLS) {
        resize_term(ws.ws_row, ws.ws_col);
        t->relayout = 1;
    }
}

static int cmd_screenshot(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    struct tui *t = T;
    if (!t || c->front != (void *)t)
        return qs_errf(e, "screenshot needs the TUI (run qscope in a terminal without --repl)");
    if (!pthread_equal(pthread_self(), t->ui_thread)) /* e.g. inside `source`: the worker */
        return qs_errf(e, "screenshot: type it at the prompt (curses belongs to the UI thread, "
                          "scripts run in the worker)");
    if (argc != 1)
        return qs_errf(e, "usage: screenshot PATH");
    sync_size(t); /* the screen as it is now, laid out for its current size */
    redraw(t);
    if (dump_screen(argv[0], e) < 0)
        return -1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "screenshot");
    cJSON_AddStringToObject(o, "path", argv[0]);
    cJSON_AddNumberToObject(o, "rows", LINES);
    cJSON_AddNumberToObject(o, "cols", COLS);
    char txt[600], pb[400];
    snprintf(txt, sizeof txt, "screenshot %s (%dx%d)", qs_clean_str(argv[0], pb, sizeof pb, 0),
             COLS, LINES);
    qs_emit(c, o, txt);
    return 0;
}

static int cmd_tui_stats(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argv;
    struct tui *t = T;
    if (!t || c->front != (void *)t)
        return qs_errf(e, "tui stats needs the TUI (run qscope in a terminal without --repl)");
    if (argc)
        return qs_errf(e, "usage: tui stats");
    char a[160], b[160];
    lat_format(&t->lat_key, a, sizeof a);
    lat_format(&t->lat_cmd, b, sizeof b);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "cmd", "tui stats");
    cJSON_AddStringToObject(o, "key_to_redraw", a);
    cJSON_AddStringToObject(o, "key_command_to_panes", b);
    char txt[400];
    snprintf(txt, sizeof txt, "keystroke to redraw: %s\nkey command to updated panes: %s", a, b);
    qs_emit(c, o, txt);
    return 0;
}

const struct qs_cmd_def qs_tui_cmds[] = {
    {"screenshot", "PATH", QS_CMD_FRONT | QS_CMD_WRITES, cmd_screenshot,
     "write the TUI's screen as plain text (one line per row), e.g. for golden tests", NULL},
    {"tui stats", "", QS_CMD_FRONT, cmd_tui_stats,
     "latency of this TUI: keystroke to redraw, and a key's command to its panes updated", NULL},
    {NULL, NULL, 0, NULL, NULL, NULL},
};

/* ---- jobs: dispatch and results ----------------------------------------------------------- */

static int is_front(struct tui *t, const char *line)
{
    char **argv;
    qs_err e;
    int argc = qs_tokenize(line, &argv, &e), used = 0, front = 0;
    if (argc > 0) {
        const struct qs_cmd_def *d = qs_cmd_lookup(t->c, argc, argv, &used);
        front = d && (d->flags & QS_CMD_FRONT);
    }
    if (argc >= 0)
        qs_argv_free(argv, argc);
    return front;
}

static void drop_group(struct tui *t, int group)
{
    for (int i = t->nq - 1; i >= 0; i--)
        if (group && t->q[i].group == group)
            queue_drop(t, i);
}

static void request_quit(struct tui *t);

static void dispatch(struct tui *t)
{
    while (!t->busy && t->nq && t->mode != MODE_CONFIRM && !t->quit_now) {
        struct tui_item it = t->q[0];
        memmove(t->q, t->q + 1, (size_t)(t->nq - 1) * sizeof *t->q);
        t->nq--;
        if (it.kind == JOB_LINE) {
            char echo[1100];
            snprintf(echo, sizeof echo, "> %s", it.line);
            tui_log_add(&t->sh, LOG_CMD, echo);
        }
        if (it.kind == JOB_LINE && is_front(t, it.line)) {
            /* front-end commands run here: the worker is idle, so the context is ours */
            qs_err e = {{0}};
            t->dirty[PANE_LOG] = 1;
            if (qs_exec_line(t->c, it.line, &e) < 0) {
                char msg[QS_ERRLEN + 8];
                snprintf(msg, sizeof msg, "error: %s", e.msg);
                tui_log_add(&t->sh, LOG_ERR, msg);
                drop_group(t, it.group);
            }
            free(it.line);
            continue;
        }
        t->busy = 1;
        t->busy_kind = it.kind;
        snprintf(t->busy_line, sizeof t->busy_line, "%s", it.line ? it.line : "refresh");
        t->have_prog = 0;
        t->prog_what[0] = 0;
        t->dirty_status = 1;
        t->c->b->cancel = 0;
        tui_worker_submit(&t->wk, it.kind, it.line, t->sel);
        t->busy_group = it.group;
        free(it.line);
    }
}

/* Takes whatever the worker left: log lines, progress, a finished job and its snapshot. */
static void collect(struct tui *t)
{
    struct tui_shared *sh = &t->sh;
    pthread_mutex_lock(&sh->mu);
    struct tui_snap *s = sh->snap;
    sh->snap = NULL;
    int done = sh->done, rc = sh->done_rc, quit = sh->done_quit;
    char err[QS_ERRLEN];
    snprintf(err, sizeof err, "%s", sh->done_err);
    if (done) {
        t->dirty_journal = sh->done_dirty;
        t->njournal = sh->done_njournal;
        sh->done = 0;
    }
    if (sh->log_dirty) {
        sh->log_dirty = 0;
        t->dirty[PANE_LOG] = 1;
    }
    if (sh->prog_dirty) {
        sh->prog_dirty = 0;
        snprintf(t->prog_what, sizeof t->prog_what, "%s", sh->prog_what);
        t->prog_frac = sh->prog_frac;
        t->have_prog = 1;
        t->dirty_status = 1;
    }
    pthread_mutex_unlock(&sh->mu);
    if (s) {
        tui_snap_free(t->snap);
        t->snap = s;
        if (t->sel >= s->nlayers)
            t->sel = s->nlayers > 0 ? s->nlayers - 1 : 0;
        if (s->lowdim != t->lowdim_layout || (s->nlayers && s->nlayers != t->nl_layout))
            t->relayout = 1;
        for (int p = 0; p < PANE_N; p++)
            if (p != PANE_LOG)
                t->dirty[p] = 1;
        t->dirty_status = t->dirty_prompt = 1; /* the key hints follow the model's family */
        if (s->have_model && s->spec_layer != t->sel && s->nlayers)
            want_snapshot(t);
        if (s->lowdim && !t->relayout) {
            const struct tui_rect *r = &t->r[PANE_LOWDIM];
            int gw, gh;
            tui_lowdim_panel(r->h, r->w - r->sep, &gw, &gh);
            if (r->vis && (gw != s->gw || gh != s->gh))
                want_snapshot(t);
        }
    }
    if (done) {
        t->busy = 0;
        t->have_prog = 0;
        t->dirty_status = 1;
        if (rc < 0) {
            char msg[QS_ERRLEN + 8];
            snprintf(msg, sizeof msg, "error: %s", err);
            tui_log_add(&t->sh, LOG_ERR, msg);
            drop_group(t, t->busy_group);
        }
        if (quit)
            request_quit(t);
        else if (t->quit_after_job)
            request_quit(t);
    }
}

/* ---- quitting ----------------------------------------------------------------------------- */

static void request_quit(struct tui *t)
{
    t->quit_after_job = 0;
    if (t->busy) { /* cancel first; ask again when the job has stopped */
        cancel_job(t);
        t->quit_after_job = 1;
        return;
    }
    if (t->dirty_journal && t->njournal > t->base_njournal) {
        t->mode = MODE_CONFIRM;
        t->dirty_status = 1;
        return;
    }
    t->quit_now = 1;
}

/* ---- readline glue ------------------------------------------------------------------------ */

static int rl_getc_cb(FILE *f)
{
    (void)f;
    struct tui *t = T;
    if (t->rlq_h == t->rlq_t)
        return 0; /* not reached: readline is only called with bytes queued */
    int ch = t->rlq[t->rlq_h];
    t->rlq_h = (t->rlq_h + 1) % (int)sizeof t->rlq;
    return ch;
}

static int rl_avail_cb(void)
{
    return T->rlq_h != T->rlq_t;
}
static void rl_redisplay_cb(void)
{
    T->dirty_prompt = 1;
}
static void rl_prep_cb(int meta)
{
    (void)meta;
}
static void rl_deprep_cb(void) {}

static void rl_feed(struct tui *t, const char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int nt = (t->rlq_t + 1) % (int)sizeof t->rlq;
        if (nt == t->rlq_h)
            break;
        t->rlq[t->rlq_t] = (unsigned char)bytes[i];
        t->rlq_t = nt;
    }
    while (t->rlq_h != t->rlq_t && t->mode == MODE_PROMPT)
        rl_callback_read_char();
    t->rlq_h = t->rlq_t = 0;
}

/* Completion lists go to the log instead of the terminal. */
static void rl_matches_cb(char **matches, int n, int maxlen)
{
    (void)maxlen;
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "completions:");
    for (int i = 1; i <= n && i <= 200; i++)
        qs_sb_printf(&sb, " %s", matches[i]);
    tui_log_add(&T->sh, LOG_NOTE, sb.s);
    qs_sb_free(&sb);
    T->dirty_prompt = 1;
}

static void on_line(char *line)
{
    struct tui *t = T;
    if (!line) { /* Ctrl-D on an empty line: back to the panes */
        t->mode = MODE_PANES;
        t->dirty_status = t->dirty_prompt = 1;
        return;
    }
    if (line[0]) {
        add_history(line);
        submit_text(t, line);
    }
    free(line);
    t->dirty_prompt = 1;
}

static const char *snap_layer_name(void *u, int i)
{
    struct tui *t = u;
    return t->snap && i < t->snap->nlayers ? t->snap->rows[i].name : NULL;
}

static void readline_begin(struct tui *t)
{
    char dir[900];
    t->hist[0] = 0;
    if (qs_state_dir(dir, sizeof dir) == 0)
        snprintf(t->hist, sizeof t->hist, "%s/history", dir);
    t->devnull = fopen("/dev/null", "w");
    rl_readline_name = "qscope";
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_change_environment = 0;
    rl_getc_function = rl_getc_cb;
    rl_input_available_hook = rl_avail_cb;
    rl_redisplay_function = rl_redisplay_cb;
    rl_prep_term_function = rl_prep_cb;
    rl_deprep_term_function = rl_deprep_cb;
    rl_completion_display_matches_hook = rl_matches_cb;
    if (t->devnull)
        rl_outstream = t->devnull;
    rl_variable_bind("bell-style", "none");
    rl_variable_bind("enable-bracketed-paste", "off");
    qs_complete_install(t->c, snap_layer_name, t);
    using_history();
    if (t->hist[0])
        read_history(t->hist);
    rl_callback_handler_install("qscope> ", on_line);
}

static void readline_end(struct tui *t)
{
    rl_callback_handler_remove();
    if (t->hist[0]) {
        write_history(t->hist);
        history_truncate_file(t->hist, 2000);
    }
    rl_outstream = stdout;
    if (t->devnull)
        fclose(t->devnull);
    t->devnull = NULL;
}

/* ---- key bindings: each one is a command string -------------------------------------------- */

static const char *const cycle_formats[] = {"int8",  "int4",  "int3", "int2", "fp8-e4m3",
                                            "mxfp4", "nvfp4", "nf4",  "none"};
#define NCYCLE ((int)(sizeof cycle_formats / sizeof *cycle_formats))

/* The format name and a gran= option (or "") of a layer's description ("int4/channel"). */
static void split_desc(const char *desc, char *name, size_t nn, char *gran, size_t ng)
{
    const char *sl = strchr(desc, '/');
    size_t n = sl ? (size_t)(sl - desc) : strlen(desc);
    snprintf(name, nn, "%.*s", (int)n, desc);
    gran[0] = 0;
    if (!sl)
        return;
    if (sl[1] == 'g' && sl[2] >= '0' && sl[2] <= '9')
        snprintf(gran, ng, " gran=group:%s", sl + 2);
    else
        snprintf(gran, ng, " gran=%s", sl + 1);
}

static int format_bits(const char *name)
{
    struct qs_format f;
    qs_err e;
    if (!strcmp(name, "float") || qs_format_parse(name, &f, &e) < 0 || f.kind == QS_FMT_NONE)
        return 32;
    return f.bits;
}

/* A layer name as one word of a command line: plain names as they are, anything else quoted
 * and escaped (qs_quote) so the tokenizer gives back the exact name. Returns a new string
 * (NULL when out of memory); a name of any length is kept whole. */
static char *layer_word(const char *name)
{
    size_t n = 2 * strlen(name) + 3;
    char *buf = malloc(n);
    if (!buf)
        return NULL;
    if (name[0] && strpbrk(name, " \t\n'\"\\#;*?[") == NULL)
        snprintf(buf, n, "%s", name);
    else
        qs_quote(name, buf, n);
    return buf;
}

/* Runs "VERB LAYER REST" (REST printf-style, may be ""), the layer as one word (layer_word). */
static void run_key_command(struct tui *t, const char *cmd);
static void run_layer_command(struct tui *t, const char *verb, const char *layer,
                              const char *rest, ...) __attribute__((format(printf, 4, 5)));
static void run_layer_command(struct tui *t, const char *verb, const char *layer,
                              const char *rest, ...)
{
    char *lw = layer_word(layer);
    if (!lw)
        return;
    struct qs_sb sb = {0};
    qs_sb_printf(&sb, "%s %s", verb, lw);
    va_list ap;
    va_start(ap, rest);
    qs_sb_vprintf(&sb, rest, ap);
    va_end(ap);
    if (sb.s)
        run_key_command(t, sb.s);
    qs_sb_free(&sb);
    free(lw);
}

static const struct tui_row *sel_row(struct tui *t)
{
    if (!t->snap || !t->snap->have_model || t->sel < 0 || t->sel >= t->snap->nlayers)
        return NULL;
    return &t->snap->rows[t->sel];
}

static void run_key_command(struct tui *t, const char *cmd)
{
    if (t->cmd_t0 == 0)
        t->cmd_t0 = t->key_t0;
    submit_text(t, cmd);
}

static void key_bits(struct tui *t, int dir)
{
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    /* the role to change: the weights, or the activations of an activation-only layer */
    const char *desc = strcmp(r->wf, "float") || !strcmp(r->af, "float") ? r->wf : r->af;
    char name[48], gran[48];
    split_desc(desc, name, sizeof name, gran, sizeof gran);
    int bits = format_bits(name), nb;
    if (strncmp(name, "int", 3) || !gran[0])
        snprintf(gran, sizeof gran, " gran=channel");
    if (bits >= 32) {
        if (dir > 0) {
            tui_log_add(&t->sh, LOG_NOTE, "the layer is already in float");
            return;
        }
        nb = 8;
    } else {
        nb = bits + dir;
    }
    if (nb < 2) {
        tui_log_add(&t->sh, LOG_NOTE, "2 bits is the narrowest integer format");
        return;
    }
    if (nb > 8)
        run_layer_command(t, "quant", r->name, " none");
    else
        run_layer_command(t, "quant", r->name, " int%d%s", nb, gran);
}

static void key_cycle(struct tui *t, int dir)
{
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    char name[48], gran[48];
    split_desc(r->wf, name, sizeof name, gran, sizeof gran);
    if (!strcmp(name, "float"))
        snprintf(name, sizeof name, "none");
    int k = -1;
    for (int i = 0; i < NCYCLE; i++)
        if (!strcmp(cycle_formats[i], name))
            k = i;
    k = k < 0 ? (dir > 0 ? 0 : NCYCLE - 1) : (k + dir + NCYCLE) % NCYCLE;
    const char *f = cycle_formats[k];
    int chan = !strncmp(f, "int", 3) || !strncmp(f, "fp8", 3);
    run_layer_command(t, "quant", r->name, " %s%s", f, chan ? " gran=channel" : "");
}

static void key_layer_cmd(struct tui *t, const char *verb)
{
    const struct tui_row *r = sel_row(t);
    if (r)
        run_layer_command(t, verb, r->name, "%s", "");
}

/* c: the default correction, LoRC at rank 4, or the largest rank the layer holds when it is
 * thinner (a 16x2 layer takes rank 2 at most) */
static void key_correct(struct tui *t)
{
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    int mn = r->in < r->out ? r->in : r->out, rank = mn < 4 ? mn : 4;
    run_layer_command(t, "correct", r->name, " lowrank r=%d", rank < 1 ? 1 : rank);
}

static void select_layer(struct tui *t, int d)
{
    if (!t->snap || !t->snap->nlayers)
        return;
    int s = t->sel + d;
    s = s < 0 ? 0 : s >= t->snap->nlayers ? t->snap->nlayers - 1 : s;
    if (s == t->sel)
        return;
    t->sel = s;
    t->dirty[PANE_LAYERS] = t->dirty[PANE_CORR] = 1;
    want_snapshot(t);
}

static void scroll_log(struct tui *t, int d)
{
    pthread_mutex_lock(&t->sh.mu);
    int n = t->sh.log.n;
    pthread_mutex_unlock(&t->sh.mu);
    int s = t->log_scroll + d;
    s = s < 0 ? 0 : s > n - 1 ? (n > 0 ? n - 1 : 0) : s;
    if (s != t->log_scroll) {
        t->log_scroll = s;
        t->dirty[PANE_LOG] = 1;
    }
}

static void focus_pane(struct tui *t, int p)
{
    if (p < 0 || p >= PANE_N || (p == PANE_LOWDIM && !(t->snap && t->snap->lowdim)))
        return;
    if (p == t->focus)
        return;
    t->dirty[t->focus] = t->dirty[p] = 1;
    t->focus = p;
    if (t->zoom)
        t->relayout = 1;
}

static void focus_step(struct tui *t, int d)
{
    int p = t->focus;
    for (int i = 0; i < PANE_N; i++) {
        p = (p + d + PANE_N) % PANE_N;
        if (p != PANE_LOWDIM || (t->snap && t->snap->lowdim))
            break;
    }
    focus_pane(t, p);
}

static void enter_prompt(struct tui *t)
{
    t->mode = MODE_PROMPT;
    curs_set(1);
    t->dirty_status = t->dirty_prompt = 1;
}

static void leave_prompt(struct tui *t)
{
    t->mode = MODE_PANES;
    curs_set(0);
    t->dirty_status = t->dirty_prompt = 1;
}

static void key_panes(struct tui *t, int fkey, wint_t ch)
{
    int page = t->r[PANE_LOG].h > 3 ? t->r[PANE_LOG].h - 2 : 1;
    if (fkey) {
        switch (ch) {
        case KEY_DOWN:
            t->focus == PANE_LOG ? scroll_log(t, -1) : select_layer(t, 1);
            break;
        case KEY_UP:
            t->focus == PANE_LOG ? scroll_log(t, 1) : select_layer(t, -1);
            break;
        case KEY_NPAGE:
            scroll_log(t, -page);
            break;
        case KEY_PPAGE:
            scroll_log(t, page);
            break;
        case KEY_BTAB:
            focus_step(t, -1);
            break;
        case KEY_ENTER:
            enter_prompt(t);
            break;
        case KEY_F(1):
            t->mode = MODE_HELP;
            t->help_scroll = 0;
            break;
        default:
            if (ch >= KEY_F(2) && ch <= KEY_F(8))
                focus_pane(t, (int)(ch - KEY_F(2)));
        }
        return;
    }
    /* a key whose command refuses on this model is not offered; pressed anyway, it says why
     * (one line in the log) and runs nothing */
    const char *verb = ch <= 0 || ch >= 128         ? NULL
                       : strchr("+=-_fF", (int)ch) ? "quant"
                       : ch == 'c'               ? "correct"
                       : ch == 'u'               ? "uncorrect"
                       : ch == 'a'               ? "ablate"
                       : ch == 's'               ? "spectrum"
                       : ch == 'e'               ? "error"
                       : ch == 'v'               ? "eval"
                       : ch == 'r'               ? "rank"
                                                 : NULL;
    qs_err ke = {{0}};
    if (verb && key_refused(t, verb, &ke) < 0) {
        char msg[QS_ERRLEN + 8];
        snprintf(msg, sizeof msg, "%c: %s", (int)ch, ke.msg);
        tui_log_add(&t->sh, LOG_ERR, msg);
        return;
    }
    switch (ch) {
    case 'q':
        request_quit(t);
        break;
    case '?':
        t->mode = MODE_HELP;
        t->help_scroll = 0;
        break;
    case ':':
    case '/':
    case '\r':
    case '\n':
        enter_prompt(t);
        break;
    case '\t':
        focus_step(t, 1);
        break;
    case 'z':
        t->zoom = !t->zoom;
        t->relayout = 1;
        break;
    case 27:
        if (t->zoom) {
            t->zoom = 0;
            t->relayout = 1;
        }
        break;
    case 'j':
        t->focus == PANE_LOG ? scroll_log(t, -1) : select_layer(t, 1);
        break;
    case 'k':
        t->focus == PANE_LOG ? scroll_log(t, 1) : select_layer(t, -1);
        break;
    case 'g':
        if (t->focus == PANE_LOG)
            scroll_log(t, 1 << 20);
        break;
    case 'G':
        if (t->focus == PANE_LOG)
            scroll_log(t, -(1 << 20));
        break;
    case '+':
    case '=':
        key_bits(t, 1);
        break;
    case '-':
    case '_':
        key_bits(t, -1);
        break;
    case 'f':
        key_cycle(t, 1);
        break;
    case 'F':
        key_cycle(t, -1);
        break;
    case 'c':
        key_correct(t);
        break;
    case 'u':
        key_layer_cmd(t, "uncorrect");
        break;
    case 'a':
        key_layer_cmd(t, "ablate");
        break;
    case 's':
        key_layer_cmd(t, "spectrum");
        break;
    case 'e':
        run_key_command(t, "error");
        break;
    case 'v':
        run_key_command(t, "eval");
        break;
    case 'r':
        run_key_command(t, "rank");
        break;
    case 12: /* Ctrl-L */
        clearok(curscr, TRUE);
        dirty_all(t);
        break;
    default:
        if (ch >= '1' && ch <= '7')
            focus_pane(t, (int)(ch - '1'));
    }
}

static void key_prompt(struct tui *t, int fkey, wint_t ch)
{
    static const struct {
        int key;
        const char *seq;
    } seqs[] = {
        {KEY_LEFT, "\033[D"}, {KEY_RIGHT, "\033[C"},   {KEY_UP, "\033[A"},
        {KEY_DOWN, "\033[B"}, {KEY_HOME, "\033[H"},    {KEY_END, "\033[F"},
        {KEY_DC, "\033[3~"},  {KEY_BACKSPACE, "\177"}, {KEY_ENTER, "\r"},
    };
    if (fkey) {
        if (ch == KEY_PPAGE || ch == KEY_NPAGE) {
            int page = t->r[PANE_LOG].h > 3 ? t->r[PANE_LOG].h - 2 : 1;
            scroll_log(t, ch == KEY_PPAGE ? page : -page);
            return;
        }
        if (ch == KEY_F(1)) {
            t->mode = MODE_HELP;
            t->help_scroll = 0;
            return;
        }
        if (ch >= KEY_F(2) && ch <= KEY_F(8)) {
            focus_pane(t, (int)(ch - KEY_F(2)));
            leave_prompt(t);
            return;
        }
        for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++)
            if ((int)ch == seqs[i].key) {
                rl_feed(t, seqs[i].seq, strlen(seqs[i].seq));
                return;
            }
        return;
    }
    if (ch == ':' && rl_end == 0)
        return; /* ':' opens the prompt; typed again on an empty line it is not a command */
    if (ch == 27) {
        /* Esc leaves the prompt, and the keys after it act on the panes: Esc + key is not read
         * as a meta key (a fast Esc, q must quit, not send M-q to readline) */
        leave_prompt(t);
        return;
    }
    char b[MB_LEN_MAX];
    mbstate_t ms;
    memset(&ms, 0, sizeof ms);
    size_t k = wcrtomb(b, (wchar_t)ch, &ms);
    if (k == (size_t)-1) { /* not representable in this locale */
        b[0] = '?';
        k = 1;
    }
    rl_feed(t, b, k);
}

static void handle_key(struct tui *t, int fkey, wint_t ch)
{
    if (fkey && ch == KEY_RESIZE) {
        t->relayout = 1;
        return;
    }
    if (!fkey && ch == 3) { /* Ctrl-C: cancel, never quit */
        cancel_job(t);
        return;
    }
    switch (t->mode) {
    case MODE_CONFIRM:
        if (!fkey && (ch == 'y' || ch == 'Y')) {
            t->quit_now = 1;
        } else {
            t->mode = MODE_PANES;
            tui_log_add(&t->sh, LOG_NOTE, "quit cancelled (save session PATH keeps the work)");
        }
        t->dirty_status = 1;
        break;
    case MODE_HELP:
        if (!fkey && (ch == 'j' || ch == ' '))
            t->help_scroll += ch == ' ' ? 10 : 1;
        else if (!fkey && ch == 'k')
            t->help_scroll = t->help_scroll > 0 ? t->help_scroll - 1 : 0;
        else if (fkey && (ch == KEY_DOWN || ch == KEY_NPAGE))
            t->help_scroll += ch == KEY_NPAGE ? 10 : 1;
        else if (fkey && (ch == KEY_UP || ch == KEY_PPAGE))
            t->help_scroll = t->help_scroll > (ch == KEY_PPAGE ? 10 : 1)
                                 ? t->help_scroll - (ch == KEY_PPAGE ? 10 : 1)
                                 : 0;
        else {
            t->mode = MODE_PANES;
            if (t->help) {
                delwin(t->help);
                t->help = NULL;
            }
            dirty_all(t);
            for (int p = 0; p < PANE_N; p++)
                if (t->win[p])
                    touchwin(t->win[p]);
        }
        break;
    case MODE_PROMPT:
        key_prompt(t, fkey, ch);
        break;
    default:
        key_panes(t, fkey, ch);
        break;
    }
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* Opens the terminal (newterm rather than initscr, which would exit on an unknown TERM).
 * Returns -1 when the terminal cannot be driven full-screen. */
static int curses_begin(struct tui *t)
{
    const char *term = getenv("TERM");
    if (!term || !term[0] || !strcmp(term, "dumb"))
        return -1;
    if (!(t->scr = newterm(NULL, stdout, stdin)))
        return -1;
    set_term(t->scr);
    if (!tigetstr("cup") || tigetstr("cup") == (char *)-1) {
        endwin();
        delscreen(t->scr);
        t->scr = NULL;
        return -1;
    }
    g_curses_on = 1;
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);
    curs_set(0);
    init_style(&t->st);
    wnoutrefresh(stdscr);
    return 0;
}

int qs_tui_run(struct qs_ctx *c)
{
    static struct tui tui;
    struct tui *t = &tui;
    memset(t, 0, sizeof *t);
    t->c = c;
    t->ui_thread = pthread_self();
    setlocale(LC_ALL, "");
    setlocale(LC_NUMERIC, "C"); /* results, journals and sessions keep '.' decimals */
    if (curses_begin(t) < 0) {
        const char *term = getenv("TERM");
        fprintf(stderr,
                "qscope: the terminal (TERM=%s) cannot run the full-screen TUI; "
                "using the line REPL\n",
                term && term[0] ? term : "unset");
        return qs_repl_run(c, 1);
    }
    int pfd[2];
    if (pipe(pfd) < 0) {
        restore_terminal();
        return qs_repl_run(c, 1);
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    fcntl(pfd[1], F_SETFL, O_NONBLOCK);
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[1], F_SETFD, FD_CLOEXEC);
    t->wake_r = pfd[0];
    t->sh.wake_w = g_wake_w = pfd[1];
    pthread_mutex_init(&t->sh.mu, NULL);
    pthread_cond_init(&t->sh.cv, NULL);
    T = t;
    t->base_njournal = t->njournal = c->njournal;
    t->dirty_journal = c->dirty;

    /* the context is the TUI's while it runs */
    t->saved_emit = c->emit;
    t->saved_note = c->note;
    t->saved_u = c->u;
    t->saved_front = c->front;
    t->saved_extra = c->extra;
    t->saved_progress = c->b->progress;
    t->saved_progress_ctx = c->b->progress_ctx;
    c->emit = tui_emit_cb;
    c->note = tui_note_cb;
    c->u = &t->wk;
    c->front = t;
    if (!c->extra) /* a table set by someone else is kept (one extra table per context) */
        c->extra = qs_tui_cmds;
    c->b->progress = tui_progress_cb;
    c->b->progress_ctx = &t->wk;
    /* the autosave's "not closed cleanly" note went to stderr before the screen took over */
    char prev[1024];
    if (qs_recover_path(prev, sizeof prev) == 0 && access(prev, R_OK) == 0)
        tui_log_add(&t->sh, LOG_NOTE,
                    "a journal from an earlier session was not closed cleanly: type 'recover' to "
                    "restore it");

    atexit(restore_terminal);
    install_signals();
    readline_begin(t);
    /* the worker gets no asynchronous signals: they all land in this thread */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGWINCH);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int wrc = tui_worker_start(&t->wk, c, &t->sh);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int status = 0;
    if (wrc < 0) {
        status = 1;
        goto out;
    }
    tui_log_add(&t->sh, LOG_NOTE,
                "':' opens the command prompt, '?' lists keys and commands, q quits");
    queue_push(t, JOB_SNAP, NULL, 0);
    t->relayout = 1;

    while (!t->quit_now) {
        collect(t);
        dispatch(t);
        if (t->quit_now)
            break;
        int snap_before = t->snap ? (int)t->snap->gen : -1;
        redraw(t);
        double done_ms = now_ms();
        if (t->key_t0 > 0) {
            lat_add(&t->lat_key, done_ms - t->key_t0);
            t->key_t0 = 0;
        }
        /* a key's command has shown its result once the worker is idle with nothing queued */
        if (t->cmd_t0 > 0 && !t->busy && !t->nq && t->snap && (int)t->snap->gen == snap_before) {
            lat_add(&t->lat_cmd, done_ms - t->cmd_t0);
            t->cmd_t0 = 0;
        }
        /* work left over (a queued job, a log line added since collect()) means no sleeping;
         * while a job runs, wake up now and then for throttled progress and log updates */
        pthread_mutex_lock(&t->sh.mu);
        int again = t->sh.log_dirty || t->sh.done || t->sh.snap;
        pthread_mutex_unlock(&t->sh.mu);
        again |= !t->busy && t->nq && t->mode != MODE_CONFIRM;
        struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = t->wake_r, .events = POLLIN}};
        int r = poll(fds, 2, again ? 0 : t->busy ? 200 : -1);
        if (r < 0 && errno != EINTR)
            break;
        if (fds[1].revents & POLLIN) {
            char buf[256];
            ssize_t k;
            int winch = 0;
            while ((k = read(t->wake_r, buf, sizeof buf)) > 0)
                winch |= memchr(buf, 'w', (size_t)k) != NULL;
            if (winch) /* now, even if keys typed before the resize are still to be read */
                sync_size(t);
        }
        if (g_sigint) {
            g_sigint = 0;
            cancel_job(t);
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL)) { /* the terminal went away */
            t->quit_now = 1;
            break;
        }
        for (int n = 0; n < 4096; n++) {
            wint_t ch;
            int rc = wget_wch(stdscr, &ch);
            if (rc == ERR)
                break;
            if (t->key_t0 == 0)
                t->key_t0 = now_ms();
            handle_key(t, rc == KEY_CODE_YES, ch);
            if (t->quit_now)
                break;
        }
    }
out:
    if (t->busy)
        c->b->cancel = 1;
    tui_worker_stop(&t->wk);
    readline_end(t);
    restore_terminal();
    if (t->scr)
        delscreen(t->scr);
    t->scr = NULL;
    reset_signals();
    c->emit = t->saved_emit;
    c->note = t->saved_note;
    c->u = t->saved_u;
    c->front = t->saved_front;
    c->extra = t->saved_extra;
    c->b->progress = t->saved_progress;
    c->b->progress_ctx = t->saved_progress_ctx;
    c->quit = 0;
    tui_snap_free(t->snap);
    tui_snap_free(t->sh.snap);
    free(t->sh.job_line);
    for (int i = 0; i < t->nq; i++)
        free(t->q[i].line);
    free(t->q);
    for (int i = 0; i < t->sh.log.n; i++)
        free(t->sh.log.v[(t->sh.log.start + i) % TUI_LOG_MAX].text);
    close(t->wake_r);
    close(t->sh.wake_w);
    g_wake_w = -1;
    pthread_mutex_destroy(&t->sh.mu);
    pthread_cond_destroy(&t->sh.cv);
    T = NULL;
    return status;
}
