/* help.c - the help overlay ('?', F1): the key table's rows offered on the loaded model, then
 * every command of the command table; scrolled with j/k, closed by any other key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tui_impl.h"

/* The help overlay's lines: the keys offered on the loaded model (one line each, from the key
 * table: keys, help, and the command a key runs), then every command of the command table. */
static int help_lines(struct tui *t, char ***out)
{
    static const char *const head = "Keys in the panes (the status bar says PANES):";
    static const char *const tail[] = {
        "Keys that run a command send its line through the dispatcher: it is journaled like "
        "typed text.",
        "",
        "Commands (type them at the prompt; `help CMD` for details):",
    };
    int nt = (int)(sizeof tail / sizeof *tail), n = 0;
    while (qs_cmd_at(t->c, n))
        n++;
    char **v = calloc((size_t)(1 + tui_nkeys + nt + n), sizeof *v);
    if (!v)
        return 0;
    int m = 0;
    v[m++] = qs_strdup(head);
    for (int i = 0; i < tui_nkeys; i++) {
        const struct tui_key *k = &tui_keys[i];
        qs_err e = {{0}};
        if (tui_key_refused(t, k, &e) < 0)
            continue;
        char cmd[160], buf[512];
        tui_key_command(k, cmd, sizeof cmd);
        snprintf(buf, sizeof buf, "  %-13s %s%s%s", tui_key_label(k), k->help, cmd[0] ? ": " : "",
                 cmd);
        v[m++] = qs_strdup(buf);
    }
    for (int i = 0; i < nt; i++)
        v[m++] = qs_strdup(tail[i]);
    for (int i = 0; i < n; i++) {
        const struct qs_cmd_def *d = qs_cmd_at(t->c, i);
        char buf[512];
        struct qs_sb syn = {0}; /* generated from the command's spec */
        qs_cmd_synopsis(d, QS_SYN_TEXT, &syn);
        snprintf(buf, sizeof buf, "  %-44.200s %s", syn.s ? syn.s : d->name, d->help);
        qs_sb_free(&syn);
        v[m++] = qs_strdup(buf);
    }
    *out = v;
    return m;
}

void tui_draw_help(struct tui *t)
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
