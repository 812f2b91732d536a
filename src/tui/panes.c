/* panes.c - the panes of the workbench, one drawing function each. They read only the snapshot
 * (and the log under its lock), never the bench: drawing never waits for computation. */
#include "tui_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wctype.h>

/* ---- text helpers ------------------------------------------------------------------------- */

/* Writes at most n columns of the wide string s; returns the characters consumed. Control
 * characters (names and values from model files reach the panes) are drawn as '?': curses would
 * move the cursor for \n \r \t \b, and a C1 control (U+0080..U+009F) must never reach a
 * terminal that reads it as the start of an escape sequence. */
static int put_wide(WINDOW *w, const wchar_t *s, int n)
{
    int used = 0, i = 0;
    for (; s[i]; i++) {
        wchar_t c = iswcntrl((wint_t)s[i]) || (s[i] >= 0x80 && s[i] < 0xa0) ? L'?' : s[i];
        int cw = wcwidth(c);
        if (cw < 0)
            cw = 1;
        if (used + cw > n)
            break;
        if (cw > 0 || i > 0)
            waddnwstr(w, &c, 1);
        used += cw;
    }
    return i;
}

void tui_put(WINDOW *w, const char *s, int n)
{
    if (n <= 0 || !s)
        return;
    size_t len = strlen(s);
    wchar_t buf[512];
    size_t k = mbstowcs(buf, s, sizeof buf / sizeof *buf - 1);
    if (k == (size_t)-1) { /* undecodable: ASCII only */
        for (size_t i = 0; i < len && (int)i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            waddch(w, (chtype)(ch >= 32 && ch < 127 ? ch : '?'));
        }
        return;
    }
    buf[k] = 0;
    put_wide(w, buf, n);
}

int tui_width(const char *s)
{
    wchar_t buf[512];
    size_t k = mbstowcs(buf, s, sizeof buf / sizeof *buf - 1);
    if (k == (size_t)-1)
        return (int)strlen(s);
    buf[k] = 0;
    int wd = wcswidth(buf, k);
    return wd < 0 ? (int)k : wd;
}

static int col_width(wchar_t c)
{
    int cw = wcwidth(c);
    return cw < 0 ? 1 : cw; /* controls are drawn as '?' (put_wide) */
}

/* Fits s into n columns: whole when it fits, else its two ends around an ellipsis ("…" in UTF-8,
 * "..." in ASCII), so that names sharing a long prefix or suffix stay told apart
 * ("model.layers.0…attn.q_proj"). out: cap bytes. */
static void elide_mid(const char *s, int n, int utf8, char *out, size_t cap)
{
    wchar_t ws[512], res[512];
    size_t k = mbstowcs(ws, s, sizeof ws / sizeof *ws - 1);
    if (k == (size_t)-1) { /* undecodable here: its bytes, non-ASCII as '?' */
        for (k = 0; s[k] && k < sizeof ws / sizeof *ws - 1; k++)
            ws[k] = (unsigned char)s[k] < 128 ? (wchar_t)s[k] : L'?';
    }
    ws[k] = 0;
    int total = 0;
    for (size_t i = 0; i < k; i++)
        total += col_width(ws[i]);
    size_t r = 0;
    if (total <= n) {
        memcpy(res, ws, (k + 1) * sizeof *ws);
        r = k;
    } else {
        const wchar_t *mark = utf8 ? L"\u2026" : L"...";
        int mw = utf8 ? 1 : 3, budget = n - mw;
        if (budget < 2) { /* no room for both ends: the start */
            mark = L"";
            budget = n;
        }
        int hb = mark[0] ? budget / 2 : budget;
        /* The head reaches past the first number (the block index of "model.layers.12…")
         * when the tail still holds the last component ("q_proj"): those tell sites apart. */
        int lastw = 0, numw = 0, wsum = 0;
        size_t i = k;
        while (i > 0 && ws[i - 1] != L'.' && ws[i - 1] != L'/')
            lastw += col_width(ws[--i]);
        for (i = 0; i < k && !iswdigit((wint_t)ws[i]); i++)
            wsum += col_width(ws[i]);
        for (; i < k && iswdigit((wint_t)ws[i]); i++)
            numw = wsum += col_width(ws[i]);
        if (mark[0] && numw > hb && numw + lastw <= budget)
            hb = numw;
        /* and the tail keeps the whole last component ("q_proj" vs "k_proj") when both fit */
        if (mark[0] && numw + lastw <= budget && budget - hb < lastw)
            hb = budget - lastw;
        int tb = budget - hb, used = 0;
        size_t head = 0, tail = k;
        while (head < k && used + col_width(ws[head]) <= hb)
            used += col_width(ws[head++]);
        used = 0;
        while (mark[0] && tail > head && used + col_width(ws[tail - 1]) <= tb)
            used += col_width(ws[--tail]);
        memcpy(res, ws, head * sizeof *ws);
        r = head;
        for (const wchar_t *m = mark; *m; m++)
            res[r++] = *m;
        memcpy(res + r, ws + tail, (k - tail) * sizeof *ws);
        r += k - tail;
    }
    res[r] = 0;
    if (wcstombs(out, res, cap) == (size_t)-1 || cap == 0) {
        snprintf(out, cap, "%s", s);
        return;
    }
    out[cap - 1] = 0;
}

/* printf into the window at (y, x), clipped to n columns. */
static void putf(WINDOW *w, int y, int x, int n, attr_t a, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void putf(WINDOW *w, int y, int x, int n, attr_t a, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    wmove(w, y, x);
    wattr_on(w, a, NULL);
    tui_put(w, buf, n);
    wattr_off(w, a, NULL);
}

static attr_t cp(const struct tui_style *st, int pair, attr_t mono)
{
    return st->color ? (attr_t)COLOR_PAIR(pair) : mono;
}

/* A short number for axis labels: 3 significant characters where possible. */
static void axis_num(double v, char *buf, size_t n)
{
    double a = fabs(v);
    if (v == 0)
        snprintf(buf, n, "0");
    else if (a >= 1000 || a < 0.01)
        snprintf(buf, n, "%.0e", v);
    else
        snprintf(buf, n, "%.2g", v);
}

/* ---- titles ------------------------------------------------------------------------------ */

/* "N Name": the default title */
static void title_plain(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    (void)v, (void)width;
    snprintf(buf, n, "%d %s", (int)p + 1, tui_pane_ops(p)->name);
}

/* The spectrum and rank titles name the selected layer: it gets what the title leaves, and cut
 * it keeps both ends (elide_mid); the spectrum adds its shape. */
static void title_layer(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    const struct tui_snap *s = v->s;
    const struct tui_row *r =
        s && s->spec_layer >= 0 && s->spec_layer < s->nlayers ? &s->rows[s->spec_layer] : NULL;
    if (!r) {
        title_plain(p, v, width, buf, n);
        return;
    }
    const char *shape = p == PANE_SPECTRUM ? r->l.shape : "";
    char rest[96], nm[256];
    snprintf(rest, sizeof rest, "%d %s %s", (int)p + 1, tui_pane_ops(p)->name, shape);
    int room = width - tui_width(rest) - 1;
    if (room < 8)
        room = 8;
    /* too long: drop the prefix every site shares ("model.layers."), keep the block number */
    const char *from = r->name;
    if (tui_width(from) > room) {
        const char *d = strpbrk(from, "0123456789");
        if (d && d > from && (d[-1] == '.' || d[-1] == '/'))
            from = d;
    }
    elide_mid(from, room, v->st->utf8, nm, sizeof nm);
    snprintf(buf, n, "%d %s %s%s%s", (int)p + 1, tui_pane_ops(p)->name, nm, shape[0] ? " " : "",
             shape);
}

/* the layers table says when its errors are a preview's (worker.c: on the first calibration
 * windows, while the full pass runs) */
static void title_layers(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    (void)width;
    const struct tui_snap *s = v->s;
    if (s && s->stage == STAGE_PREVIEW)
        snprintf(buf, n, "%d %s  preview: errors on %d/%d calib windows", (int)p + 1,
                 tui_pane_ops(p)->name, s->pv_n, s->pv_of);
    else if (s && s->stage == STAGE_LOADING)
        snprintf(buf, n, "%d %s  from config.json; weights loading", (int)p + 1,
                 tui_pane_ops(p)->name);
    else
        title_plain(p, v, width, buf, n);
}

/* the task's regime once eval figures are shown */
static void title_task(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    (void)width;
    const struct tui_snap *s = v->s;
    snprintf(buf, n, "%d %s%s%s", (int)p + 1, tui_pane_ops(p)->name, s && s->have_eval ? " " : "",
             s && s->have_eval ? s->regime : "");
}

static void title_log(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    (void)width;
    if (v->log_scroll)
        snprintf(buf, n, "%d %s (scrolled %d)", (int)p + 1, tui_pane_ops(p)->name, v->log_scroll);
    else
        snprintf(buf, n, "%d %s", (int)p + 1, tui_pane_ops(p)->name);
}

void tui_pane_title(enum tui_pane p, const struct tui_view *v, int width, char *buf, size_t n)
{
    const struct tui_pane_ops *o = tui_pane_ops(p);
    (o->title ? o->title : title_plain)(p, v, width, buf, n);
}

static void title_bar(enum tui_pane p, WINDOW *w, int cw, const struct tui_view *v)
{
    const struct tui_style *st = v->st;
    int focus = v->focused == (int)p;
    attr_t a =
        focus ? cp(st, CP_TITLE_FOCUS, A_REVERSE | A_BOLD) | A_BOLD : cp(st, CP_TITLE, A_REVERSE);
    char t[160], line[200];
    tui_pane_title(p, v, cw - 2, t, sizeof t); /* the focus mark and a trailing blank */
    snprintf(line, sizeof line, "%s%s ", focus ? st->sel_mark : " ", t);
    wmove(w, 0, 0);
    wattr_on(w, a, NULL);
    tui_put(w, line, cw);
    for (int x = tui_width(line); x < cw; x++)
        waddch(w, ' ');
    wattr_off(w, a, NULL);
}

static void message(WINDOW *w, int y, int cw, const struct tui_style *st, const char *msg)
{
    (void)st;
    putf(w, y, 1, cw - 1, A_DIM, "%s", msg);
}

/* A message over rows y.. h - 1, broken at blanks to fit cw - 1 columns (a word longer is cut). */
static void message_wrap(WINDOW *w, int y, int h, int cw, const struct tui_style *st,
                         const char *msg)
{
    int room = cw - 1;
    while (*msg && y < h) {
        while (*msg == ' ')
            msg++;
        int len = (int)strlen(msg), cut = len;
        if (tui_width(msg) > room && room > 0) {
            cut = 0;
            for (int i = 1; i <= len && i <= 4 * room; i++) { /* the last blank that fits */
                char part[1024];
                snprintf(part, sizeof part, "%.*s", i, msg);
                if (tui_width(part) > room)
                    break;
                if (msg[i] == ' ' || msg[i] == 0)
                    cut = i;
            }
            if (cut == 0)
                cut = room < len ? room : len;
        }
        char line[1024];
        snprintf(line, sizeof line, "%.*s", cut, msg);
        message(w, y++, cw, st, line);
        msg += cut;
    }
}

/* ---- layers ------------------------------------------------------------------------------- */

enum { COL_NAME, COL_SHAPE, COL_W, COL_A, COL_BPW, COL_WERR, COL_SNR, COL_SENS, COL_CORR, COL_N };

static void draw_layers(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    if (!s || !s->have_model) {
        message(w, 1, cw, st, s ? "no model (load model PATH)" : "loading...");
        return;
    }
    static const char *const head[COL_N] = {"layer", "shape",  "weights", "acts",      "bits/w",
                                            "w_err", "SNR dB", "sens",    "correction"};
    /* fill order: which columns to keep when narrow */
    static const int prio[COL_N] = {COL_NAME, COL_W,    COL_BPW, COL_SNR,  COL_SENS,
                                    COL_WERR, COL_CORR, COL_A,   COL_SHAPE};
    int any_sens = 0; /* the sensitivity column appears once `sensitivity` has run */
    for (int i = 0; i < s->nlayers; i++)
        any_sens |= s->rows[i].l.sens_known;
    int wid[COL_N];
    for (int c = 0; c < COL_N; c++)
        wid[c] = (int)strlen(head[c]);
    for (int i = 0; i < s->nlayers; i++) {
        const struct tui_row *r = &s->rows[i];
        const char *cells[] = {r->name, r->l.shape, r->l.wf, r->l.af};
        for (int c = 0; c < 4; c++) {
            int cl = c == COL_NAME ? tui_width(cells[c]) : (int)strlen(cells[c]);
            if (cl > wid[c])
                wid[c] = cl;
        }
        if ((int)strlen(r->l.corr_short) > wid[COL_CORR])
            wid[COL_CORR] = (int)strlen(r->l.corr_short);
    }
    if (wid[COL_W] > 16)
        wid[COL_W] = 16;
    if (wid[COL_A] > 12)
        wid[COL_A] = 12;
    wid[COL_BPW] = 6;
    wid[COL_WERR] = 7;
    wid[COL_SENS] = 8;
    /* Names (transformer sites are long) take what the first columns after them leave, at least
     * 22, and never more than they need; cut names keep both ends (elide_mid). */
    int name_nat = wid[COL_NAME], core = 1 + 1;
    for (int k = 1; k < 4; k++)
        core += wid[prio[k]] + 1;
    if (wid[COL_NAME] > cw - core)
        wid[COL_NAME] = cw - core > 22 ? cw - core : 22;
    if (wid[COL_NAME] > name_nat)
        wid[COL_NAME] = name_nat;
    if (wid[COL_NAME] > cw - 2) /* the selection mark and one space */
        wid[COL_NAME] = cw - 2 > 1 ? cw - 2 : 1;
    int keep[COL_N] = {0}, used = 1; /* column 0: selection mark */
    for (int k = 0; k < COL_N; k++) {
        int c = prio[k], need = wid[c] + 1;
        if (c == COL_SENS && !any_sens)
            continue;
        if (c == COL_CORR && used + 5 <= cw) { /* correction: whatever is left, at least 4 */
            keep[c] = 1;
            wid[c] = cw - used - 1 < wid[c] ? cw - used - 1 : wid[c];
            used += wid[c] + 1;
        } else if (used + need <= cw) {
            keep[c] = 1;
            used += need;
        }
    }
    keep[COL_NAME] = 1;
    if (used < cw && wid[COL_NAME] < name_nat) { /* spare columns: a longer name */
        int more = name_nat - wid[COL_NAME] < cw - used ? name_nat - wid[COL_NAME] : cw - used;
        wid[COL_NAME] += more;
        used += more;
    }
    char line[512];
    int n = 0;
    n += snprintf(line + n, sizeof line - n, " ");
    for (int c = 0; c < COL_N && n < (int)sizeof line; c++) /* a name column may be wide */
        if (keep[c])
            n += snprintf(line + n, sizeof line - (size_t)n,
                          c >= COL_BPW && c <= COL_SENS ? "%*s " : "%-*s ", wid[c], head[c]);
    putf(w, 1, 0, cw, A_BOLD, "%s", line);
    int vis = h - 2;
    if (s->nlayers > vis && vis > 2)
        vis--; /* the last row holds the position ("3/15"), not a layer it would hide */
    if (vis < 1)
        return;
    int top = 0;
    if (v->sel >= vis)
        top = v->sel - vis + 1;
    for (int i = top; i < s->nlayers && i - top < vis; i++) {
        const struct tui_row *r = &s->rows[i];
        int y = 2 + i - top, sel = i == v->sel;
        attr_t base = sel ? A_REVERSE | (v->focused == PANE_LAYERS ? A_BOLD : 0) : 0;
        wmove(w, y, 0);
        wattr_on(w, base, NULL);
        for (int x = 0; x < cw; x++)
            waddch(w, ' ');
        wattr_off(w, base, NULL);
        putf(w, y, 0, 1, base, "%s", sel ? ">" : " ");
        int x = 1;
        char cell[64];
        for (int c = 0; c < COL_N; c++) {
            if (!keep[c])
                continue;
            attr_t a = base;
            switch (c) {
            case COL_NAME: {
                char nm[2048];
                elide_mid(r->name, wid[c], st->utf8, nm, sizeof nm);
                wmove(w, y, x);
                wattr_on(w, a, NULL);
                tui_put(w, nm, cw - x < wid[c] ? cw - x : wid[c]);
                wattr_off(w, a, NULL);
                x += wid[c] + 1;
                continue;
            }
            case COL_SHAPE:
                snprintf(cell, sizeof cell, "%-*s", wid[c], r->l.shape);
                break;
            case COL_W:
                snprintf(cell, sizeof cell, "%-*.*s", wid[c], wid[c], r->l.wf);
                if (strcmp(r->l.wf, "float") && !sel)
                    a |= cp(st, CP_WARN, A_BOLD);
                break;
            case COL_A:
                snprintf(cell, sizeof cell, "%-*.*s", wid[c], wid[c], r->l.af);
                if (strcmp(r->l.af, "float") && !sel)
                    a |= cp(st, CP_WARN, A_BOLD);
                break;
            case COL_BPW:
                snprintf(cell, sizeof cell, "%*.2f", wid[c], r->l.bpw);
                break;
            case COL_WERR:
                snprintf(cell, sizeof cell, "%*.4f", wid[c], r->l.w_rel_err);
                break;
            case COL_SNR:
                if (!r->has_err)
                    snprintf(cell, sizeof cell, "%*s", wid[c], "-");
                else if (isinf(r->snr_db))
                    snprintf(cell, sizeof cell, "%*s", wid[c], "inf");
                else
                    snprintf(cell, sizeof cell, "%*.1f", wid[c], r->snr_db);
                if (r->has_err && r->l.quantized && !sel && isfinite(r->snr_db))
                    a |= r->snr_db < 10   ? cp(st, CP_ERR, A_BOLD)
                         : r->snr_db < 20 ? cp(st, CP_WARN, 0)
                                          : cp(st, CP_OK, 0);
                break;
            case COL_SENS:
                if (r->l.sens_known)
                    snprintf(cell, sizeof cell, "%*.3g", wid[c], r->l.sens);
                else
                    snprintf(cell, sizeof cell, "%*s", wid[c], "-");
                break;
            default:
                snprintf(cell, sizeof cell, "%-*.*s", wid[c], wid[c], r->l.corr_short);
                break;
            }
            putf(w, y, x, cw - x, a, "%s", cell);
            x += wid[c] + 1;
        }
    }
    if (s->nlayers > vis)
        putf(w, h - 1, cw - 8, 8, A_DIM, "%d/%d", v->sel + 1, s->nlayers);
}

/* ---- task --------------------------------------------------------------------------------- */

/* A language model: eval's perplexity and loss on the held-out tokens (float, quantized without
 * and with the corrections), the gate, and how far the quantized model's predictions moved. */
static void draw_task_lm(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    const struct qs_lm_eval *ev = &s->lev, *raw = &s->lev_raw;
    const struct qs_lm_gate *g = &s->lgate;
    int y = 1;
    if (y < h)
        putf(w, y++, 1, cw - 1, A_BOLD, "%.3f bits/weight", s->bpw);
    if (y < h)
        putf(w, y++, 1, cw - 1, A_UNDERLINE, "%-6s %9s %7s", "", "ppl", "loss");
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %9.3f %7.4f", "float", ev->ppl, ev->loss);
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %9.3f %7.4f", "quant", raw->ppl_q, raw->loss_q);
    if (s->any_corr && y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %9.3f %7.4f", "+corr", ev->ppl_q, ev->loss_q);
    if (y < h) {
        attr_t a = g->pass ? cp(st, CP_OK, A_BOLD) : cp(st, CP_ERR, A_BOLD) | A_BOLD;
        putf(w, y++, 1, cw - 1, a, "gate %s (loss %.3f %s %.3f)", g->pass ? "PASS" : "FAIL",
             g->float_loss, g->pass ? "<=" : ">", g->threshold);
    }
    double d = ev->loss_q - ev->loss;
    if (y < h)
        putf(w, y++, 1, cw - 1, d > 0.05 ? cp(st, CP_WARN, A_BOLD) : 0, "%sloss %+.4f KL %.3g",
             st->delta, d, ev->kl);
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "top-1 agree %.4f", ev->top1_agree);
    if (y < h)
        putf(w, y++, 1, cw - 1, A_DIM, "unigram %.3f, %ld tokens", g->unigram, ev->ntok);
}

static void draw_task(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    if (!s || !s->have_eval) {
        message_wrap(w, 1, h, cw, st, !s ? "loading..." : s->err[0] ? s->err : "no model");
        return;
    }
    if (s->lm) {
        draw_task_lm(w, h, cw, v);
        return;
    }
    int y = 1;
    const struct qs_eval *ev = &s->ev;
    if (y < h)
        putf(w, y++, 1, cw - 1, A_BOLD, "%.3f bits/weight", s->bpw);
    if (y < h)
        putf(w, y++, 1, cw - 1, A_UNDERLINE, "%-6s %7s %7s", "", "acc", "loss");
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %7.4f %7.4f", "float", ev->f.acc, ev->f.loss);
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %7.4f %7.4f", "quant", s->q_raw.acc, s->q_raw.loss);
    if (s->any_corr && y < h)
        putf(w, y++, 1, cw - 1, 0, "%-6s %7.4f %7.4f", "+corr", ev->q.acc, ev->q.loss);
    if (y < h) {
        attr_t a = ev->gate_pass ? cp(st, CP_OK, A_BOLD) : cp(st, CP_ERR, A_BOLD) | A_BOLD;
        putf(w, y++, 1, cw - 1, a, "gate %s (float %s %.3f)", ev->gate_pass ? "PASS" : "FAIL",
             ev->gate_pass ? st->ge : "<", s->gate_thr);
    }
    double d = (s->any_corr ? ev->q.acc : s->q_raw.acc) - ev->f.acc;
    if (y < h)
        putf(w, y++, 1, cw - 1, d < -0.01 ? cp(st, CP_WARN, A_BOLD) : 0, "%sacc %+.4f KL %.3g",
             st->delta, d, ev->kl);
    if (y < h)
        putf(w, y++, 1, cw - 1, 0, "top-1 agree %.4f", ev->agree);
    if (y < h)
        putf(w, y++, 1, cw - 1, A_DIM, "chance %.3f, n=%d", ev->chance, ev->f.n);
}

/* ---- spectrum and rank profile ------------------------------------------------------------ */

static void legend(WINDOW *w, int y, int cw, const struct tui_style *st, const attr_t *ser,
                   attr_t rule, const char *r0, const char *r1, const char *r2, const char *rname)
{
    const char *mk0 = st->utf8 ? "\xe2\xa3\xbf" : "*", *mk1 = st->utf8 ? "\xe2\xa3\xbf" : ".";
    const char *mk2 = st->utf8 ? "\xe2\xa3\xbf" : "+";
    wmove(w, y, 1);
    int left = cw - 1;
    const char *marks[4] = {mk0, mk1, mk2, st->hline};
    const char *names[4] = {r0, r1, r2, rname};
    attr_t at[4] = {ser[0], ser[1], ser[2], rule};
    for (int k = 0; k < 4 && left > 2; k++) {
        if (!names[k])
            continue;
        wattr_on(w, at[k], NULL);
        tui_put(w, marks[k], 1);
        wattr_off(w, at[k], NULL);
        char buf[64];
        snprintf(buf, sizeof buf, " %s  ", names[k]);
        tui_put(w, buf, left - 1);
        left -= 1 + tui_width(buf);
    }
}

/* Plot geometry shared by both plots: the axis column width and the canvas rows. */
static int plot_rows(int h)
{
    return h - 1 >= 5 ? h - 3 : h - 1;
}

static void series_attrs(const struct tui_style *st, attr_t *ser, attr_t *rule)
{
    ser[0] = cp(st, CP_SER_ERR, A_BOLD) | A_BOLD;
    ser[1] = cp(st, CP_SER_W, st->utf8 ? A_DIM : 0);
    ser[2] = cp(st, CP_SER_MP, 0);
    *rule = cp(st, CP_SER_MP, 0);
}

static void y_axis(WINDOW *w, int rows, const char *top, const char *bot,
                   const struct tui_style *st)
{
    for (int r = 0; r < rows; r++) {
        wmove(w, 1 + r, 0);
        if (r == 0)
            putf(w, 1 + r, 0, 5, A_DIM, "%5s", top);
        else if (r == rows - 1)
            putf(w, 1 + r, 0, 5, A_DIM, "%5s", bot);
        wmove(w, 1 + r, 5);
        wattr_on(w, A_DIM, NULL);
        tui_put(w, st->vline, 1);
        wattr_off(w, A_DIM, NULL);
    }
}

/* The spectrum and rank panes plot the selected layer's spectrum: a message instead when there
 * is none, else the plot's rows and width (0 when the pane is too small to plot). */
static int plot_area(WINDOW *w, int h, int cw, const struct tui_view *v, int *rows, int *pw)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    if (!s || !s->have_model) {
        message(w, 1, cw, st, s ? "no model" : "loading...");
        return 0;
    }
    if (!s->spec_ok) {
        message(w, 1, cw, st, s->spec_msg[0] ? s->spec_msg : s->err[0] ? s->err : "no spectrum");
        return 0;
    }
    *rows = plot_rows(h);
    *pw = cw - 6;
    return *rows >= 1 && *pw >= 4;
}

static void draw_spectrum(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    int rows, pw;
    if (!plot_area(w, h, cw, v, &rows, &pw))
        return;
    double hi = 0, lo = INFINITY;
    int zero = s->st.zero, rs = !zero && s->resid > 0 && s->res_sv;
    /* the verdict's edge: the variance-profile null when set, else the i.i.d. MP edge */
    double edge = s->st.null_draws ? s->st.null_edge : s->st.mp_edge;
    for (int i = 0; i < s->nsv; i++) {
        if (!zero) {
            hi = fmax(hi, s->sv[i]);
            if (s->sv[i] > 0)
                lo = fmin(lo, s->sv[i]);
        }
        if (rs && s->res_sv[i] > 0) /* residual values are below the error's: lo only */
            lo = fmin(lo, s->res_sv[i]);
        hi = fmax(hi, s->ref[i]);
        if (s->ref[i] > 0)
            lo = fmin(lo, s->ref[i]);
    }
    if (!zero)
        hi = fmax(hi, edge);
    if (!(hi > 0)) {
        message(w, 1, cw, st, "all singular values are zero");
        return;
    }
    if (!isfinite(lo) || lo > hi / 1.5)
        lo = hi / 1.5;
    if (lo < hi * 1e-6)
        lo = hi * 1e-6;
    double llo = log10(lo), lhi = log10(hi) + 0.02 * (log10(hi) - log10(lo));
    char tb[16], bb[16];
    axis_num(pow(10, lhi), tb, sizeof tb);
    axis_num(lo, bb, sizeof bb);
    y_axis(w, rows, tb, bb, st);
    struct tui_plot p;
    if (tui_plot_init(&p, pw, rows, st->utf8) < 0)
        return;
    int n = s->nsv;
    double *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    if (x && y) {
        for (int k = 0; k < 3; k++) {
            if ((k == 0 && zero) || (k == 2 && !rs))
                continue;
            const double *sv = k == 0 ? s->sv : k == 1 ? s->ref : s->res_sv;
            for (int i = 0; i < n; i++) {
                x[i] = n > 1 ? (double)i / (n - 1) : 0.5;
                double val = sv[i] > lo ? sv[i] : lo;
                y[i] = (log10(val) - llo) / (lhi - llo);
            }
            tui_plot_line(&p, k, x, y, n);
        }
        if (!zero && edge > lo)
            tui_plot_hrule(&p, (log10(edge) - llo) / (lhi - llo));
    }
    free(x);
    free(y);
    attr_t ser[3], rule;
    series_attrs(st, ser, &rule);
    static const char ascii[3] = {'*', '.', '+'};
    tui_plot_draw(&p, w, 1, 6, ser, ascii, rule, st->hline);
    tui_plot_free(&p);
    if (h - 1 < 5)
        return;
    legend(w, h - 2, cw, st, ser, rule, "error", "W", rs ? "W-(Q+C)" : NULL,
           zero               ? NULL
           : s->st.null_draws ? "null edge"
                              : "MP edge");
    if (zero) {
        putf(w, h - 1, 1, cw - 1, A_DIM, "no weight error (float)");
        return;
    }
    /* narrow panes: the error's verdict first, then what the correction C removed and the
     * residual's verdict */
    char tail[64] = "";
    if (rs)
        snprintf(tail, sizeof tail, "; C-%.0f%% resid %s",
                 s->st.fro2 > 0 ? 100 * (1 - s->res_st.fro2 / s->st.fro2) : 0.0,
                 s->res_st.zero         ? "zero"
                 : s->res_st.structured ? "struct"
                                        : "noise");
    else if (s->resid < 0)
        snprintf(tail, sizeof tail, "; %s: no W resid", s->resid_method);
    putf(w, h - 1, 1, cw - 1, s->st.structured ? cp(st, CP_WARN, A_BOLD) : 0,
         "%s%.3g %s %s %.3g %s%s", tail[0] ? "" : "top ", s->st.top, s->st.structured ? ">" : "<",
         s->st.null_draws ? "null" : "MP", edge, s->st.structured ? "structured" : "noise", tail);
}

static void draw_rank(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    int rows, pw;
    if (!plot_area(w, h, cw, v, &rows, &pw))
        return;
    y_axis(w, rows, "1", "0", st);
    struct tui_plot p;
    if (tui_plot_init(&p, pw, rows, st->utf8) < 0)
        return;
    int n = s->nsv + 1, zero = s->st.zero;
    double *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    if (x && y) {
        for (int k = 0; k < 2; k++) {
            if (k == 0 && zero)
                continue;
            const double *left = k == 0 ? s->left_e : s->left_w;
            int m = 0;
            for (int i = 0; i < n; i++) {
                if (left[i] < 0)
                    break;
                x[m] = (double)i / (n - 1 > 0 ? n - 1 : 1);
                y[m++] = left[i];
            }
            tui_plot_line(&p, k, x, y, m);
        }
        tui_plot_hrule(&p, 0.1);
    }
    free(x);
    free(y);
    attr_t ser[3], rule;
    series_attrs(st, ser, &rule);
    static const char ascii[3] = {'*', '.', '+'};
    tui_plot_draw(&p, w, 1, 6, ser, ascii, A_DIM, st->hline);
    tui_plot_free(&p);
    if (h - 1 < 5)
        return;
    legend(w, h - 2, cw, st, ser, A_DIM, "error left", "W left", NULL, "10%");
    if (zero) {
        putf(w, h - 1, 1, cw - 1, A_DIM, "no error: rank 0 of %d", s->nsv);
        return;
    }
    char k90[16];
    if (s->st.k90 >= 0)
        snprintf(k90, sizeof k90, "%d", s->st.k90);
    else
        snprintf(k90, sizeof k90, ">%d", s->nsv);
    putf(w, h - 1, 1, cw - 1, 0, "k90 %s/%d eff %.1f stable %.1f", k90,
         s->sm < s->sn ? s->sm : s->sn, s->st.eff_rank, s->st.stable_rank);
}

/* ---- corrections and ablation ------------------------------------------------------------- */

static void draw_corr(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    if (!s || !s->have_model) {
        message(w, 1, cw, st, s ? "no model" : "loading...");
        return;
    }
    int y = 1, n = 0;
    for (int i = 0; i < s->nlayers; i++)
        n += s->rows[i].l.corr_method != QS_CORR_NONE;
    if (n == 0) {
        /* the methods `correct` fits on this model, in two lines */
        static const enum qs_corr_method offer[] = {QS_CORR_LOWRANK, QS_CORR_LQER, QS_CORR_QERA,
                                                    QS_CORR_EORA,    QS_CORR_BIAS, QS_CORR_LINEAR};
        char l3[128] = "or: correct LAYER ", l4[128] = "";
        int k = 0;
        for (size_t i = 0; i < sizeof offer / sizeof *offer; i++) {
            char *l = k < 2 ? l3 : l4;
            size_t len = strlen(l);
            snprintf(l + len, sizeof l3 - len, "%s%s", k == 0 || k == 2 ? "" : "|",
                     qs_corr_name(offer[i]));
            k++;
        }
        if (k > 2) {
            strcat(l3, "|");
            strcat(l4, " [r=K]");
        } else {
            strcat(l3, " [r=K]");
        }
        const char *hint[] = {"no corrections yet.", "c: lowrank r=4 on the selected layer;", l3,
                              l4};
        for (int j = 0; j < 4 && y < h; j++)
            if (hint[j][0])
                message(w, y++, cw, st, hint[j]);
        return;
    }
    /* one line per correction (layer, method, held-out R, added parameters), then its last
     * ablation when there is one: verdict, quantized acc before > after, float acc before >
     * after (the float model gaining is capacity, not recovery) */
    for (int i = 0; i < s->nlayers && y < h; i++) {
        const struct tui_row *r = &s->rows[i];
        if (r->l.corr_method == QS_CORR_NONE)
            continue;
        const char *verdict = r->l.abl_verdict;
        const double *m = r->l.abl_metric; /* float, quant, quant+corr, float+corr */
        int sel = i == v->sel;
        putf(w, y, 0, 1, 0, "%s", sel ? ">" : " ");
        putf(w, y, 1, cw - 1, r->l.recovery < 0 ? cp(st, CP_ERR, 0) : A_BOLD,
             "%s %s R=%.3f +%ldp%s", r->name, r->l.corr_short, r->l.recovery, r->l.corr_params,
             r->l.corr_stale ? " stale" : "");
        y++;
        if (r->l.corr_method == QS_CORR_CLOCAL && y < h)
            message(w, y++, cw, st, " upper baseline, not deployable");
        else if (verdict && y < h) {
            attr_t aa = !strcmp(verdict, "recovery") ? cp(st, CP_OK, A_BOLD)
                        : !strcmp(verdict, "capacity") || !strcmp(verdict, "harmful")
                            ? cp(st, CP_ERR, A_BOLD)
                            : 0;
            putf(w, y++, 2, cw - 2, aa, "%s: %sq %.3f>%.3f f %.3f>%.3f", verdict,
                 r->l.abl_ppl ? "ppl " : "", m[1], m[2], m[0], m[3]);
        } else if (y < h) {
            message(w, y++, cw, st, " (a: ablate)");
        }
    }
    if (y < h)
        message(w, y, cw, st,
                s->lm ? "R: held-out recovery; q/f: quant/float ppl"
                      : "R: held-out recovery; q/f: quant/float acc");
}

/* ---- decision regions --------------------------------------------------------------------- */

void tui_lowdim_panel(int h, int cw, int *gw, int *gh)
{
    *gw = (cw - 2) / 3; /* three panels and two gaps */
    *gh = h - 2;        /* title bar and caption row */
    if (*gw < 2)
        *gw = 2;
    if (*gh < 2)
        *gh = 2;
}

static const char pt_glyph[] = "ox+*#%@&";

static void draw_lowdim(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_snap *s = v->s;
    const struct tui_style *st = v->st;
    if (!s || !s->lowdim) {
        message(w, 1, cw, st, !s ? "loading..." : "the model's input is not 2-D");
        return;
    }
    int pw, ph;
    tui_lowdim_panel(h, cw, &pw, &ph);
    if (h < 4 || pw < 3)
        return;
    static const char *const cap[LD_N] = {"float", "quantized", "corrected"};
    int *cell_lab = malloc((size_t)pw * ph * sizeof(int));
    if (!cell_lab)
        return;
    for (int k = 0; k < LD_N; k++) {
        int x0 = k * (pw + 1);
        char c[64];
        if (k == LD_CORR && !s->any_corr)
            snprintf(c, sizeof c, "%s (none)", cap[k]);
        else
            snprintf(c, sizeof c, "%s %.1f%%", cap[k], 100 * s->ld_acc[k]);
        int cwid = tui_width(c);
        putf(w, 1, x0 + (pw - cwid > 0 ? (pw - cwid) / 2 : 0), pw, A_BOLD, "%s", c);
        for (int i = 0; i < pw * ph; i++)
            cell_lab[i] = -1;
        for (int i = 0; i < s->npts; i++) {
            double fx = (s->pts[2 * i] - s->x0) / (s->x1 - s->x0);
            double fy = (s->y1 - s->pts[2 * i + 1]) / (s->y1 - s->y0);
            int cx = (int)(fx * pw), cy = (int)(fy * ph);
            if (cx >= 0 && cx < pw && cy >= 0 && cy < ph)
                cell_lab[cy * pw + cx] = s->plab[i];
        }
        for (int r = 0; r < ph; r++) {
            wmove(w, 2 + r, x0);
            int gy = r * s->gh / ph;
            for (int cc = 0; cc < pw; cc++) {
                int gx = cc * s->gw / pw;
                int cls = s->grid[k][gy * s->gw + gx] % TUI_NCLASS_COL;
                int lab = cell_lab[r * pw + cc];
                attr_t a;
                const char *g;
                char gb[2] = {0, 0};
                if (lab >= 0) {
                    gb[0] = pt_glyph[lab % 8];
                    g = gb;
                    int bad = lab % TUI_NCLASS_COL != cls;
                    a = st->color
                            ? (attr_t)COLOR_PAIR((bad ? CP_CLASS_BAD : CP_CLASS_PT) + cls) | A_BOLD
                            : (bad ? A_REVERSE | A_BOLD : A_BOLD);
                } else {
                    /* a glyph per class even in colour, so that text captures show regions */
                    static const char *const shade_u[] = {" ", "\xc2\xb7", ":", "\xe2\x96\x91"};
                    static const char *const shade_a[] = {" ", ".", ":", "="};
                    a = st->color ? (attr_t)COLOR_PAIR(CP_CLASS_BG + cls) : 0;
                    g = st->utf8 ? shade_u[cls % 4] : shade_a[cls % 4];
                }
                wattr_on(w, a, NULL);
                tui_put(w, g, 1);
                wattr_off(w, a, NULL);
            }
        }
    }
    free(cell_lab);
}

/* ---- log ---------------------------------------------------------------------------------- */

static int wide_width(const wchar_t *s)
{
    int n = 0;
    for (; *s; s++) {
        int c = wcwidth(*s);
        n += c < 0 ? 1 : c;
    }
    return n;
}

static void draw_log(WINDOW *w, int h, int cw, const struct tui_view *v)
{
    const struct tui_style *st = v->st;
    struct tui_shared *sh = v->sh;
    int rows = h - 1;
    if (rows < 1 || cw < 2)
        return;
    pthread_mutex_lock(&sh->mu);
    const struct tui_log *lg = &sh->log;
    int y = h; /* fill upward from the bottom */
    for (int k = lg->n - 1 - v->log_scroll; k >= 0 && y > 1; k--) {
        const struct tui_logline *l = &lg->v[(lg->start + k) % TUI_LOG_MAX];
        int wdt = wide_width(l->text), segs = wdt / cw + (wdt % cw || wdt == 0);
        attr_t a = l->kind == LOG_CMD    ? cp(st, CP_SER_W, 0) | A_BOLD
                   : l->kind == LOG_ERR  ? cp(st, CP_ERR, A_BOLD) | A_BOLD
                   : l->kind == LOG_NOTE ? cp(st, CP_WARN, A_DIM)
                                         : 0;
        /* the segments of this line, last one lowest */
        const wchar_t *seg[64];
        int ns = 0;
        const wchar_t *p = l->text;
        while (ns < 64 && ns < segs) {
            seg[ns++] = p;
            int used = 0;
            while (*p) {
                int c = wcwidth(*p);
                c = c < 0 ? 1 : c;
                if (used + c > cw)
                    break;
                used += c;
                p++;
            }
            if (!*p)
                break;
        }
        for (int j = ns - 1; j >= 0 && y > 1; j--) {
            y--;
            wmove(w, y, 0);
            wattr_on(w, a, NULL);
            put_wide(w, seg[j], cw);
            wattr_off(w, a, NULL);
        }
    }
    pthread_mutex_unlock(&sh->mu);
}

/* ---- the pane table ---------------------------------------------------------------------- */

/* In the order of their numbers (the focus keys 1..N and F2..F(N+1) reach them). A named pane
 * (enum tui_pane) has its row at its index; a row after the last named one needs no name. */
/* clang-format off */
static const struct tui_pane_ops pane_ops[] = {
    /*               name                draw           title        wants
                                                                     narrow: row, weight  wide */
    [PANE_LAYERS] = {"Layers",           draw_layers,   title_layers, TUI_WANT_ROWS | TUI_WANT_ERRORS,
                                                                     {0, 1},  {0, 50}},
    [PANE_TASK] =   {"Task",             draw_task,     title_task,  TUI_WANT_EVAL,
                                                                     {0, 1},  {0, 22}},
    [PANE_SPECTRUM] = {"Spectrum",       draw_spectrum, title_layer, TUI_WANT_ROWS | TUI_WANT_SPECTRUM,
                                                                     {1, 34}, {1, 25}},
    [PANE_RANK] =   {"Rank profile",     draw_rank,     title_layer, TUI_WANT_ROWS | TUI_WANT_SPECTRUM,
                                                                     {1, 33}, {1, 25}},
    [PANE_CORR] =   {"Corrections",      draw_corr,     NULL,        TUI_WANT_ROWS,
                                                                     {1, 33}, {0, 28}},
    [PANE_LOWDIM] = {"Decision regions", draw_lowdim,   NULL,        TUI_WANT_EVAL | TUI_WANT_GRID,
                                                                     {2, 62}, {1, 50}},
    [PANE_LOG] =    {"Log",              draw_log,      title_log,   TUI_WANT_LOG,
                                                                     {2, 38}, {2, 100}},
};
/* clang-format on */
const int tui_npanes = (int)(sizeof pane_ops / sizeof *pane_ops);
_Static_assert(sizeof pane_ops / sizeof *pane_ops <= TUI_PANES_MAX,
               "more panes than TUI_PANES_MAX (and the digit keys 1-9) hold");

int tui_panes_want(void)
{
    int w = 0;
    for (int p = 0; p < tui_npanes; p++)
        w |= pane_ops[p].wants;
    return w;
}

const struct tui_pane_ops *tui_pane_ops(enum tui_pane p)
{
    return &pane_ops[p];
}

int tui_pane_available(enum tui_pane p, const struct tui_snap *s)
{
    return !(pane_ops[p].wants & TUI_WANT_GRID) || (s && s->lowdim);
}

void tui_pane_draw(enum tui_pane p, WINDOW *w, int h, int wd, int sep, const struct tui_view *v)
{
    int cw = wd - (sep ? 1 : 0);
    werase(w);
    if (sep)
        for (int y = 0; y < h; y++) {
            wmove(w, y, wd - 1);
            wattr_on(w, A_DIM, NULL);
            tui_put(w, v->st->vline, 1);
            wattr_off(w, A_DIM, NULL);
        }
    title_bar(p, w, cw, v);
    pane_ops[p].draw(w, h, cw, v);
}
