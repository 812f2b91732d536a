/* readline.c - readline wired into curses (as tig does): readline reads bytes the loop queues
 * (rl_getc_function), redisplay only marks the prompt row dirty (draw.c draws rl_line_buffer),
 * completion lists go to the log, and readline never touches the terminal or signals. */
#include <stdio.h>
#include <stdlib.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "qscope/front.h"
#include "qscope/session.h"
#include "tui_impl.h"

/* ---- readline glue ------------------------------------------------------------------------ */

static int rl_getc_cb(FILE *f)
{
    (void)f;
    struct tui *t = tui_the;
    if (t->rlq_h == t->rlq_t)
        return 0; /* not reached: readline is only called with bytes queued */
    int ch = t->rlq[t->rlq_h];
    t->rlq_h = (t->rlq_h + 1) % (int)sizeof t->rlq;
    return ch;
}

static int rl_avail_cb(void)
{
    return tui_the->rlq_h != tui_the->rlq_t;
}
static void rl_redisplay_cb(void)
{
    tui_the->dirty_prompt = 1;
}
static void rl_prep_cb(int meta)
{
    (void)meta;
}
static void rl_deprep_cb(void) {}

void tui_rl_feed(struct tui *t, const char *bytes, size_t n)
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
    tui_log_add(&tui_the->sh, LOG_NOTE, sb.s);
    qs_sb_free(&sb);
    tui_the->dirty_prompt = 1;
}

static void on_line(char *line)
{
    struct tui *t = tui_the;
    if (!line) { /* Ctrl-D on an empty line: back to the panes */
        t->mode = MODE_PANES;
        t->dirty_status = t->dirty_prompt = 1;
        return;
    }
    if (line[0]) {
        add_history(line);
        tui_submit_text(t, line);
    }
    free(line);
    t->dirty_prompt = 1;
}

static const char *snap_layer_name(void *u, int i)
{
    struct tui *t = u;
    return t->snap && i < t->snap->nlayers ? t->snap->rows[i].name : NULL;
}

void tui_readline_begin(struct tui *t)
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

void tui_readline_end(struct tui *t)
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
