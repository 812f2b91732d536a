/* draw.c - the screen around the panes: their layout for the terminal's size (three rows of
 * panes; a wide terminal puts more side by side; a 2-D model adds the decision regions), the
 * status bar, the last row (the key hints, or readline's line while the prompt is open), and
 * the redraw that draws only what is dirty. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/readline.h>

#include "tui_impl.h"

/* ---- layout ------------------------------------------------------------------------------- */

/* The screen's rows of panes (the panes come from the pane table's places, in its order): how
 * tall a row is at least (min), would like to be (want; -1: the layers table's rows, a 2/5 of
 * the screen at most) and its share of what is left (flex), for a narrow or wide screen, with
 * or without the decision-regions pane. fixed_last: the row's last pane (the Task pane) takes
 * 32% of a narrow screen's columns, 24 to 36, the others the rest by weight. */
#define TUI_ROWS 3
struct row_param {
    int min, want, flex, fixed_last;
};
/* clang-format off */
static const struct row_param row_params[2][2][TUI_ROWS] = {
    /* narrow */
    {{{4, -1, 0, 1}, {4, 8, 1, 0}, {3, 3, 1, 0}},  /* no decision regions */
     {{4, 8, 0, 1}, {4, 7, 0, 0}, {5, 7, 1, 0}}}, /* with them */
    /* wide (140 columns or more) */
    {{{4, -1, 0, 0}, {4, 10, 1, 0}, {3, 3, 1, 0}},
     {{4, -1, 0, 0}, {6, 12, 2, 0}, {3, 3, 1, 0}}},
};
/* clang-format on */

struct row_spec {
    int panes[TUI_PANES_MAX], np, min, want, flex;
    int weight[TUI_PANES_MAX];
};

static void layout(struct tui *t)
{
    int H = LINES - 2, W = COLS;
    for (int p = 0; p < tui_npanes; p++)
        t->r[p].vis = 0;
    int lowdim = t->snap && t->snap->lowdim;
    int nl = t->snap && t->snap->nlayers ? t->snap->nlayers : 3;
    t->lowdim_layout = lowdim;
    t->nl_layout = nl;
    t->too_small = W < 60 || H < 14;
    if (t->too_small)
        return;
    if (!tui_pane_available((enum tui_pane)t->focus, t->snap))
        t->focus = PANE_LAYERS;
    if (t->zoom) {
        t->r[t->focus] = (struct tui_rect){0, 0, H, W, 0, 1};
        return;
    }
    int wide = W >= 140;
    int a_want = nl + 2 > 9 ? nl + 2 : 9;
    if (a_want > H * 2 / 5)
        a_want = H * 2 / 5;
    struct row_spec rows[TUI_ROWS];
    int nr = 0;
    for (int i = 0; i < TUI_ROWS; i++) {
        const struct row_param *rp = &row_params[wide][lowdim][i];
        struct row_spec *r = &rows[nr];
        *r = (struct row_spec){
            .min = rp->min, .want = rp->want < 0 ? a_want : rp->want, .flex = rp->flex};
        for (int p = 0; p < tui_npanes; p++) {
            const struct tui_pane_ops *o = tui_pane_ops((enum tui_pane)p);
            const struct tui_pane_place *pl = wide ? &o->wide : &o->narrow;
            if (pl->row != i || !tui_pane_available((enum tui_pane)p, t->snap))
                continue;
            r->panes[r->np] = p;
            r->weight[r->np++] = pl->weight;
        }
        if (r->np && rp->fixed_last) { /* the others share W - tw by their weights */
            int tw = W * 32 / 100, tot = 0, k;
            tw = tw < 24 ? 24 : tw > 36 ? 36 : tw;
            for (k = 0; k < r->np - 1; k++)
                tot += r->weight[k];
            for (k = 0; k < r->np - 1; k++)
                r->weight[k] = tot ? r->weight[k] * (W - tw) / tot : 0;
            r->weight[r->np - 1] = tw;
        }
        if (r->np)
            nr++;
    }
    int h[TUI_ROWS], rem = H, flex = 0;
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
        tui_want_snapshot(t);
}

static void rebuild_windows(struct tui *t)
{
    for (int p = 0; p < tui_npanes; p++) {
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
    for (int p = 0; p < tui_npanes; p++)
        if (t->r[p].vis && (t->win[p] = newwin(t->r[p].h, t->r[p].w, t->r[p].y, t->r[p].x)))
            leaveok(t->win[p], TRUE);
    t->status = newwin(1, COLS, LINES - 2 > 0 ? LINES - 2 : 0, 0);
    t->prompt = newwin(1, COLS, LINES - 1, 0);
    if (t->status)
        leaveok(t->status, TRUE);
    for (int p = 0; p < tui_npanes; p++)
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

/* Draws readline's line into the prompt window, scrolled so that the cursor shows. */
static void draw_prompt(struct tui *t)
{
    WINDOW *w = t->prompt;
    if (!w)
        return;
    werase(w);
    if (t->mode != MODE_PROMPT) {
        /* the keys, without those whose command refuses on the loaded model */
        char line[256];
        tui_key_hints(t, line, sizeof line);
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

void tui_redraw(struct tui *t)
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
    for (int p = 0; p < tui_npanes; p++) {
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
        tui_draw_help(t);
    if (t->dirty_prompt || t->mode == MODE_PROMPT || any) {
        draw_prompt(t); /* last, so that the cursor ends at the prompt */
        t->dirty_prompt = 0;
    }
    doupdate();
}

void tui_dirty_all(struct tui *t)
{
    for (int p = 0; p < tui_npanes; p++)
        t->dirty[p] = 1;
    t->dirty_status = t->dirty_prompt = 1;
}
