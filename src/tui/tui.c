/* tui.c - the workbench's full-screen front end: the event loop, terminal manners (signals,
 * restoring the terminal on every exit path), colours and glyphs.
 *
 * The loop poll()s stdin and a self-pipe. Keys in the panes map to command strings (keys.c) that
 * go through the same queue as typed lines (jobs.c); the queue feeds the worker one statement at
 * a time. When a job finishes the worker leaves a snapshot for the panes; the loop takes it,
 * marks the panes dirty and redraws only those (draw.c). Front-end commands run here, between
 * jobs. */
#include "qscope/tui.h"
#include "qscope/session.h"

#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qscope/front.h"
#include "tui_impl.h"

struct tui *tui_the;
static volatile sig_atomic_t g_curses_on, g_sigint;
static int g_wake_w = -1;
static struct sigaction g_old_winch;

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

/* Without the full screen: the model's load (if any) first, then the line REPL. */
static int repl_after_load(struct qs_ctx *c, struct qs_lm *skel, const char *load)
{
    qs_lm_free(skel);
    if (load) {
        qs_err e = {{0}};
        if (qs_exec_text(c, load, &e) < 0) {
            fprintf(stderr, "qscope: %s\n", e.msg);
            return 1;
        }
    }
    return qs_repl_run(c, 1);
}

int qs_tui_run(struct qs_ctx *c)
{
    return qs_tui_run_loading(c, NULL, NULL);
}

int qs_tui_run_loading(struct qs_ctx *c, struct qs_lm *skel, const char *load)
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
        return repl_after_load(c, skel, load);
    }
    int pfd[2];
    if (pipe(pfd) < 0) {
        restore_terminal();
        return repl_after_load(c, skel, load);
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    fcntl(pfd[1], F_SETFL, O_NONBLOCK);
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[1], F_SETFD, FD_CLOEXEC);
    t->wake_r = pfd[0];
    t->sh.wake_w = g_wake_w = pfd[1];
    pthread_mutex_init(&t->sh.mu, NULL);
    pthread_cond_init(&t->sh.cv, NULL);
    tui_the = t;
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
    tui_readline_begin(t);
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
    if (skel && load) { /* the table from the model's config now, its weights loading */
        tui_publish_loading(&t->sh, skel);
        t->wk.boot_hold = t->wk.hold != NULL;
        tui_submit_text(t, load);
        t->boot_group = t->group;
    } else {
        tui_queue_push(t, JOB_SNAP, NULL, 0);
    }
    qs_lm_free(skel);
    skel = NULL;
    t->relayout = 1;

    while (!t->quit_now) {
        tui_collect(t);
        tui_dispatch(t);
        if (t->quit_now)
            break;
        int snap_before = t->snap ? (int)t->snap->gen : -1;
        tui_redraw(t);
        double done_ms = tui_now_ms();
        if (t->key_t0 > 0) {
            tui_lat_add(&t->lat_key, done_ms - t->key_t0);
            t->key_t0 = 0;
        }
        /* a key's command has shown its result once the worker is idle with nothing queued */
        if (t->cmd_t0 > 0 && !t->busy && !t->nq && t->snap && (int)t->snap->gen == snap_before) {
            tui_lat_add(&t->lat_cmd, done_ms - t->cmd_t0);
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
                tui_sync_size(t);
        }
        if (g_sigint) {
            g_sigint = 0;
            tui_cancel_job(t);
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
                t->key_t0 = tui_now_ms();
            tui_handle_key(t, rc == KEY_CODE_YES, ch);
            if (t->quit_now)
                break;
        }
    }
out:
    qs_lm_free(skel); /* not shown: the worker did not start */
    if (t->busy)
        c->b->cancel = 1;
    tui_worker_stop(&t->wk);
    tui_readline_end(t);
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
    tui_the = NULL;
    return status;
}
