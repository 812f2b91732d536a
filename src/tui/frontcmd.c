/* frontcmd.c - the TUI's own commands (QS_CMD_FRONT: they run on the UI thread, between jobs):
 * `screenshot` writes the screen as text, `tui stats` reports the latency of keys, `tui keys`
 * lists the key table (what the help overlay and the key hints are generated from). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "qscope/session.h"
#include "tui_impl.h"

double tui_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

void tui_lat_add(struct tui_lat_stats *l, double ms)
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
static void lat_format(struct tui_lat_stats *l, char *buf, size_t n)
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
void tui_sync_size(struct tui *t)
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
    struct tui *t = tui_the;
    if (!t || c->front != (void *)t)
        return qs_errf(e, "screenshot needs the TUI (run qscope in a terminal without --repl)");
    if (!pthread_equal(pthread_self(), t->ui_thread)) /* e.g. inside `source`: the worker */
        return qs_errf(e, "screenshot: type it at the prompt (curses belongs to the UI thread, "
                          "scripts run in the worker)");
    (void)argc;       /* one PATH (the spec's arity) */
    tui_sync_size(t); /* the screen as it is now, laid out for its current size */
    tui_redraw(t);
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
    struct tui *t = tui_the;
    if (!t || c->front != (void *)t)
        return qs_errf(e, "tui stats needs the TUI (run qscope in a terminal without --repl)");
    (void)argc; /* none (the spec's arity) */
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

/* The key table as data: every key (offered on the loaded model or not), what it runs (and the
 * line it would run now, on the selected layer), and whether it is offered; the help overlay
 * and the key hints show the offered ones. */
static int cmd_tui_keys(struct qs_ctx *c, int argc, char **argv, qs_err *e)
{
    (void)argv;
    struct tui *t = tui_the;
    if (!t || c->front != (void *)t)
        return qs_errf(e, "tui keys needs the TUI (run qscope in a terminal without --repl)");
    (void)argc; /* none (the spec's arity) */
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "cmd", "tui keys");
    struct qs_sb txt = {0};
    for (int i = 0; i < tui_nkeys; i++) {
        const struct tui_key *k = &tui_keys[i];
        qs_err ke = {{0}};
        int refused = tui_key_refused(t, k, &ke) < 0;
        char cmd[160];
        tui_key_command(k, cmd, sizeof cmd);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "keys", tui_key_label(k));
        cJSON_AddStringToObject(r, "help", k->help);
        if (cmd[0])
            cJSON_AddStringToObject(r, "command", cmd);
        /* the line the key would run now, on the selected layer */
        struct qs_sb now = {0};
        qs_err xe = {{0}};
        const struct qs_layer_row *l = NULL;
        if (t->snap && t->snap->have_model && t->sel >= 0 && t->sel < t->snap->nlayers)
            l = &t->snap->rows[t->sel].l;
        if (k->cmd && tui_key_expand(k->cmd, l, &now, &xe) == 0 && now.s)
            cJSON_AddStringToObject(r, "now", now.s);
        if (k->foot)
            cJSON_AddStringToObject(r, "hint", k->foot);
        cJSON_AddBoolToObject(r, "offered", !refused);
        if (refused)
            cJSON_AddStringToObject(r, "refused", ke.msg);
        cJSON_AddItemToArray(rows, r);
        qs_sb_printf(&txt, "%s%-13s %s%s%s%s", i ? "\n" : "", tui_key_label(k), k->help,
                     cmd[0] ? ": " : "", cmd, refused ? " [not offered on this model]" : "");
        if (now.s && !refused)
            qs_sb_printf(&txt, " [now: %s]", now.s);
        qs_sb_free(&now);
    }
    cJSON_AddItemToObject(o, "keys", rows);
    qs_emit(c, o, txt.s);
    qs_sb_free(&txt);
    return 0;
}

const struct qs_cmd_def qs_tui_cmds[] = {
    {"screenshot", 1, 1, QS_ARGS(QS_POS("PATH", QS_ARG_PATH, NULL)), QS_CMD_FRONT | QS_CMD_WRITES,
     cmd_screenshot,
     "write the TUI's screen as plain text (one line per row), e.g. for golden tests", NULL},
    {"tui stats", 0, 0, NULL, QS_CMD_FRONT, cmd_tui_stats,
     "latency of this TUI: keystroke to redraw, and a key's command to its panes updated", NULL},
    {"tui keys", 0, 0, NULL, QS_CMD_FRONT, cmd_tui_keys,
     "the key table: each key, its help, the command it runs, whether it is offered here", NULL},
    {NULL, 0, 0, NULL, 0, NULL, NULL, NULL},
};
