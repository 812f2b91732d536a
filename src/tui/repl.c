/* repl.c - the line front end: readline REPL (or plain stdin lines) over the dispatcher.
 *
 * On a terminal the REPL drives readline through its callback interface from a poll() loop, so
 * that Ctrl-C never kills it: the SIGINT handler only raises the bench's cancel flag and writes
 * a byte to a self-pipe. A running command sees the flag and stops ("cancelled"); at the prompt
 * the loop clears the line and shows a fresh prompt. `quit` (or Ctrl-D) with journaled work not
 * saved asks first, as the TUI does. With stdin not a terminal, lines are read plainly and
 * nothing asks (a script piped into --repl must never wait for an answer). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qscope/bench.h"
#include "qscope/front.h"
#include "qscope/tui.h"

/* Writes text with every control character but newline and tab (C0, DEL, and C1 as UTF-8
 * U+0080..U+009F) shown as '?': results quote names and values read from files, and none of
 * their bytes may reach the terminal as an escape sequence. */
static void put_clean(const char *text, FILE *f)
{
    const unsigned char *p = (const unsigned char *)text;
    for (; *p; p++) {
        if (*p == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0) {
            fputc('?', f);
            p++;
        } else if ((*p < 32 && *p != '\n' && *p != '\t') || *p == 127) {
            fputc('?', f);
        } else {
            fputc(*p, f);
        }
    }
    fputc('\n', f);
}

/* ---- progress of long commands on stderr (a terminal only), as llama.cpp's tools do: one line
 * rewritten in place, shown once a phase has run for a while (QSCOPE_PROGRESS_DELAY ms, default
 * 500), at most 5 times a second, erased before any other output and when the phase ends. */
static struct {
    double first, last; /* start of the phase, last line drawn; 0: none */
    int shown;
} prog;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress_clear(void)
{
    if (prog.shown)
        fputs("\r\033[K", stderr);
    prog.shown = 0;
    prog.first = 0;
}

void qs_front_progress(void *u, const char *what, double frac)
{
    (void)u;
    static double delay = -1;
    if (delay < 0) {
        const char *d = getenv("QSCOPE_PROGRESS_DELAY");
        delay = d && *d ? atof(d) / 1000.0 : 0.5;
    }
    double t = now_s();
    if (frac >= 1.0) {
        progress_clear();
        return;
    }
    if (prog.first == 0)
        prog.first = t;
    if (t - prog.first < delay || (prog.shown && t - prog.last < 0.2))
        return;
    char buf[160];
    snprintf(buf, sizeof buf, "%s", what ? what : "");
    for (char *p = buf; *p; p++) /* a name from a file must not move the cursor */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    fprintf(stderr, "\r\033[K%s  %3.0f%%", buf, 100.0 * (frac < 0 ? 0 : frac));
    fflush(stderr);
    prog.shown = 1;
    prog.last = t;
}

static void print_error(const char *msg)
{
    progress_clear();
    fputs("error: ", stderr);
    put_clean(msg, stderr);
}

void qs_front_print(void *u, const cJSON *obj, const char *text)
{
    struct qs_ctx *c = u;
    progress_clear();
    if (c && c->json) {
        if (!obj)
            return;
        char *s = cJSON_PrintUnformatted(obj); /* JSON escapes every control character */
        if (s) {
            puts(s);
            free(s);
        }
    } else if (text && text[0]) {
        put_clean(text, stdout);
    }
    fflush(stdout);
}

void qs_front_note(void *u, const char *msg)
{
    (void)u;
    progress_clear();
    put_clean(msg, stderr);
}

/* Layer names for completion: the REPL runs commands on this thread, so it reads the bench. */
static const char *repl_layer_name(void *u, int i)
{
    const struct qs_ctx *c = u;
    const struct qs_mlp *m = c->b ? c->b->model : NULL;
    return m && i < m->nlayers ? m->layers[i].name : NULL;
}

static void history_path(char *buf, size_t n)
{
    char dir[900];
    if (qs_state_dir(dir, sizeof dir) == 0)
        snprintf(buf, n, "%s/history", dir);
    else
        buf[0] = 0;
}

/* ---- the terminal REPL --------------------------------------------------------------------- */

#define REPL_PROMPT "qscope> "

struct repl {
    struct qs_ctx *c;
    int done;
    int confirming; /* the prompt is the quit question */
    int saved_n;    /* journal length when it was last saved (c->dirty == 0) */
    int wake_r;     /* the self-pipe's read end */
    char question[160];
};

/* The one REPL (signal handlers and readline callbacks carry no user pointer). */
static struct repl *R;
static volatile sig_atomic_t g_int, g_winch;
static int g_int_w = -1;
static struct qs_bench *g_bench;

static void on_sigint(int sig)
{
    (void)sig;
    g_int = 1;
    if (g_bench)
        g_bench->cancel = 1; /* a lock-free atomic, safe here: the running job polls it */
    if (g_int_w >= 0) {
        ssize_t r = write(g_int_w, "i", 1);
        (void)r;
    }
}

/* A resize while the loop waits (readline's own handler is only in place while it reads). */
static void on_sigwinch(int sig)
{
    (void)sig;
    g_winch = 1;
    if (g_int_w >= 0) {
        ssize_t r = write(g_int_w, "w", 1);
        (void)r;
    }
}

/* Forgets a Ctrl-C that has been dealt with. */
static void drain_interrupt(struct repl *r)
{
    g_int = 0; /* first: a Ctrl-C that lands in between keeps its flag */
    char buf[64];
    while (read(r->wake_r, buf, sizeof buf) > 0)
        ;
}

static void on_line(char *line);
static void on_answer(char *line);

/* Called from readline's line handler (or the loop): replaces the prompt. */
static void set_prompt(const char *prompt, rl_vcpfunc_t *fn)
{
    rl_callback_handler_remove();
    rl_callback_handler_install(prompt, fn);
}

/* The user asked to leave (`quit`, Ctrl-D): leave, or first ask when the journal holds commands
 * not saved since the last `save session` (the TUI's question, answered with a line). */
static void request_quit(struct repl *r)
{
    struct qs_ctx *c = r->c;
    if (!(c->dirty && c->njournal > r->saved_n)) {
        r->done = 1;
        rl_callback_handler_remove();
        return;
    }
    int n = c->njournal - r->saved_n;
    snprintf(r->question, sizeof r->question,
             "%d command%s since the last `save session`: quit anyway? (y/n) ", n,
             n == 1 ? "" : "s");
    r->confirming = 1;
    set_prompt(r->question, on_answer);
}

static void cancel_quit(struct repl *r)
{
    r->confirming = 0;
    r->c->quit = 0;
    fprintf(stderr, "quit cancelled (save session PATH keeps the work)\n");
    set_prompt(REPL_PROMPT, on_line);
}

static void on_answer(char *line)
{
    struct repl *r = R;
    /* EOF quits: a terminal that went away must not leave the process waiting */
    int yes = !line || line[0] == 'y' || line[0] == 'Y';
    free(line);
    if (yes) {
        r->done = 1;
        rl_callback_handler_remove();
    } else {
        cancel_quit(r);
    }
}

struct run_state {
    struct qs_ctx *c;
};

/* One statement of a typed line; a Ctrl-C drops the statements after it. */
static int run_one(void *u, const char *stmt)
{
    struct qs_ctx *c = ((struct run_state *)u)->c;
    if (g_int) { /* the statement before was cancelled (with `set bail off`) */
        fprintf(stderr, "(Ctrl-C: the rest of the line was not run)\n");
        return 1;
    }
    c->b->cancel = 0; /* a Ctrl-C typed at the prompt cancels nothing that comes later */
    qs_err e = {{0}};
    int rc = qs_exec_text(c, stmt, &e);
    if (rc < 0)
        print_error(e.msg);
    else if (g_int) /* a command that does not stop part-way */
        fprintf(stderr, "(Ctrl-C: '%s' had finished; the rest of the line is not run)\n", stmt);
    if (g_int && rc == 0)
        return 1;
    return c->quit || (rc < 0 && c->bail);
}

static void on_line(char *line)
{
    struct repl *r = R;
    struct qs_ctx *c = r->c;
    if (!line) { /* Ctrl-D on an empty line (readline has ended the line) */
#if RL_READLINE_VERSION >= 0x0802
        rl_eof_found = 0; /* else every later line would end with a blank one */
#endif
        request_quit(r);
        return;
    }
    if (line[0]) {
        add_history(line);
        struct run_state st = {c};
        drain_interrupt(r);
        if (qs_split_statements(line, run_one, &st) < 0)
            fprintf(stderr, "error: out of memory\n");
        drain_interrupt(r); /* the command's Ctrl-C: no "^C" at the next prompt */
        c->b->cancel = 0;
    }
    free(line);
    if (!c->dirty)
        r->saved_n = c->njournal;
    if (c->quit)
        request_quit(r);
}

/* Ctrl-C at the prompt: the line is dropped and a fresh prompt shows (no job is running: jobs
 * run inside on_line, and their Ctrl-C is drained there). At the quit question it means no. */
static void interrupt_prompt(struct repl *r)
{
    drain_interrupt(r);
    r->c->b->cancel = 0;
    FILE *out = rl_outstream ? rl_outstream : stdout;
    rl_point = rl_end; /* "^C" after the whole line, as a shell shows it */
    rl_redisplay();
    fputs("^C\n", out);
    fflush(out);
    rl_callback_sigcleanup(); /* leaves an incremental search or a half-typed key sequence */
    rl_free_line_state();
    rl_replace_line("", 1);
    rl_point = rl_mark = 0;
    rl_callback_handler_remove();
    if (r->confirming)
        cancel_quit(r);
    else
        rl_callback_handler_install(REPL_PROMPT, on_line);
}

static int repl_terminal(struct qs_ctx *c)
{
    static struct repl repl;
    struct repl *r = &repl;
    memset(r, 0, sizeof *r);
    r->c = c;
    r->saved_n = c->njournal; /* as the TUI: what was loaded before the prompt is not work */
    int pfd[2];
    if (pipe(pfd) < 0) {
        fprintf(stderr, "qscope: %s\n", strerror(errno));
        return 1;
    }
    for (int k = 0; k < 2; k++) {
        fcntl(pfd[k], F_SETFL, O_NONBLOCK);
        fcntl(pfd[k], F_SETFD, FD_CLOEXEC);
    }
    r->wake_r = pfd[0];
    R = r;
    g_int = 0;
    g_int_w = pfd[1];
    g_bench = c->b;
    struct sigaction sa, old, oldw;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART; /* file reads inside a command are not cut short */
    sigaction(SIGINT, &sa, &old);
    sa.sa_handler = on_sigwinch;
    sigaction(SIGWINCH, &sa, &oldw);
    rl_catch_signals = 0; /* SIGINT is ours; readline still follows window resizes */
    rl_callback_handler_install(REPL_PROMPT, on_line);
    while (!r->done) {
        struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = r->wake_r, .events = POLLIN}};
        int n = poll(fds, 2, -1);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && (fds[1].revents & POLLIN)) {
            int winch = g_winch;
            g_winch = 0;
            char buf[64];
            while (read(r->wake_r, buf, sizeof buf) > 0)
                ;
            if (winch)
                rl_resize_terminal();
        }
        if (g_int) { /* after the drain above: its byte may have been taken, not its flag */
            interrupt_prompt(r);
            continue;
        }
        if (n > 0 && (fds[0].revents & POLLNVAL))
            break;
        if (n > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
            rl_callback_read_char();
    }
    rl_callback_handler_remove();
    sigaction(SIGINT, &old, NULL);
    sigaction(SIGWINCH, &oldw, NULL);
    g_bench = NULL;
    g_int_w = -1;
    close(pfd[0]);
    close(pfd[1]);
    R = NULL;
    return 0;
}

int qs_repl_run(struct qs_ctx *c, int use_readline)
{
    char hist[1024];
    if (!c->extra) /* so that front-end commands explain themselves ("needs the TUI") */
        c->extra = qs_tui_cmds;
    history_path(hist, sizeof hist);
    if (use_readline) {
        rl_readline_name = "qscope";
        qs_complete_install(c, repl_layer_name, c);
        if (hist[0])
            read_history(hist);
        int status = repl_terminal(c);
        if (hist[0])
            write_history(hist);
        return status;
    }
    /* plain lines (a pipe, a file): as a script would run them, nothing asks */
    int status = 0;
    while (!c->quit) {
        char *line = NULL;
        size_t cap = 0;
        if (getline(&line, &cap, stdin) < 0) {
            free(line);
            break;
        }
        qs_err e = {{0}};
        if (qs_exec_text(c, line, &e) < 0) {
            print_error(e.msg);
            status = 1;
        }
        free(line);
    }
    return status;
}
