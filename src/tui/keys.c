/* keys.c - the key table: every key of the panes is one row (the keys that press it, its hint,
 * its help, the command it runs or its action), and the key hints, the help overlay and `tui
 * keys` are generated from it. A key is offered when its command can run now
 * (a model, and its data, loaded: tui_key_refused); a key whose command refuses is not shown,
 * and pressed anyway it says why and runs nothing. Keys that run commands build a command line
 * that goes through the dispatcher like typed text (so it is journaled like typed text); the
 * line is built from the snapshot's structured values (the layer's format, its options), never
 * by parsing a formatted description back. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/readline.h>

#include "tui_impl.h"

/* ---- helpers for keys that run commands on the selected layer ---------------------------- */

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

static void run_key_command(struct tui *t, const char *cmd)
{
    if (t->cmd_t0 == 0)
        t->cmd_t0 = t->key_t0;
    tui_submit_text(t, cmd);
}

static const struct tui_row *sel_row(struct tui *t)
{
    if (!t->snap || !t->snap->have_model || t->sel < 0 || t->sel >= t->snap->nlayers) {
        tui_log_add(&t->sh, LOG_NOTE, "no layer selected (load model PATH)");
        return NULL;
    }
    return &t->snap->rows[t->sel];
}

/* Runs template TPL with every %L replaced by the selected layer (one word, layer_word), then
 * REST (printf-style, may be ""). */
static void run_template(struct tui *t, const char *tpl, const char *rest, ...)
    __attribute__((format(printf, 3, 4)));
static void run_template(struct tui *t, const char *tpl, const char *rest, ...)
{
    char *lw = NULL;
    if (strstr(tpl, "%L")) {
        const struct tui_row *r = sel_row(t);
        if (!r || !(lw = layer_word(r->name)))
            return;
    }
    struct qs_sb sb = {0};
    for (const char *p = tpl; *p; p++) {
        if (p[0] == '%' && p[1] == 'L') {
            qs_sb_printf(&sb, "%s", lw);
            p++;
        } else {
            qs_sb_printf(&sb, "%c", *p);
        }
    }
    va_list ap;
    va_start(ap, rest);
    qs_sb_vprintf(&sb, rest, ap);
    va_end(ap);
    if (sb.s)
        run_key_command(t, sb.s);
    qs_sb_free(&sb);
    free(lw);
}

/* " gran=..." for a weight format kept by the bits keys: the layer's own granularity for int
 * formats, per channel otherwise (the other formats have other bit widths' blocks). */
static void weight_gran(const struct qs_layer_row *l, char *buf, size_t n)
{
    if (l->wfmt.kind != QS_FMT_INT || l->wopt.gran == QS_GRAN_CHANNEL)
        snprintf(buf, n, " gran=channel");
    else if (l->wopt.gran == QS_GRAN_GROUP)
        snprintf(buf, n, " gran=group:%d", l->wopt.group);
    else
        snprintf(buf, n, " gran=tensor");
}

/* + and -: one bit more / less for the role the layer quantizes (its weights, or the
 * activations of an activation-only layer), keeping the role's options. */
static void act_bits(struct tui *t, int dir)
{
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    const struct qs_layer_row *l = &r->l;
    int acts = l->wfmt.kind == QS_FMT_NONE && l->afmt.kind != QS_FMT_NONE;
    const struct qs_format *f = acts ? &l->afmt : &l->wfmt;
    int bits = f->kind == QS_FMT_NONE ? 32 : f->bits, nb;
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
    char opt[64];
    if (acts) { /* the activation rule's own scale mode (and groups) */
        snprintf(opt, sizeof opt, " on=a%s",
                 l->amode == QS_AMODE_STATIC  ? " amode=static"
                 : l->amode == QS_AMODE_TOKEN ? " amode=token"
                                              : "");
        if (l->amode == QS_AMODE_DYNAMIC && l->aopt.gran == QS_GRAN_GROUP)
            snprintf(opt + strlen(opt), sizeof opt - strlen(opt), " gran=group:%d", l->aopt.group);
    } else {
        weight_gran(l, opt, sizeof opt);
    }
    if (nb > 8)
        run_template(t, "quant %L none", "%s", acts ? " on=a" : "");
    else
        run_template(t, "quant %L", " int%d%s", nb, opt);
}

static void key_bits(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey;
    act_bits(t, ch == '+' || ch == '=' ? 1 : -1);
}

static const char *const cycle_formats[] = {"int8",  "int4",  "int3", "int2", "fp8-e4m3",
                                            "mxfp4", "nvfp4", "nf4",  "none"};
#define NCYCLE ((int)(sizeof cycle_formats / sizeof *cycle_formats))

/* f and F: the next / previous weight format of the cycle (from the layer's canonical name). */
static void act_cycle(struct tui *t, int dir)
{
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    const char *name = r->l.wfmt.kind == QS_FMT_NONE ? "none" : r->l.wfmt.name;
    int k = -1;
    for (int i = 0; i < NCYCLE; i++)
        if (!strcmp(cycle_formats[i], name))
            k = i;
    k = k < 0 ? (dir > 0 ? 0 : NCYCLE - 1) : (k + dir + NCYCLE) % NCYCLE;
    const char *f = cycle_formats[k];
    int chan = !strncmp(f, "int", 3) || !strncmp(f, "fp8", 3);
    run_template(t, "quant %L", " %s%s", f, chan ? " gran=channel" : "");
}

static void key_cycle(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey;
    act_cycle(t, ch == 'f' ? 1 : -1);
}

/* c: the default correction, LoRC at rank 4, or the largest rank the layer holds when it is
 * thinner (a 16x2 layer takes rank 2 at most) */
static void key_correct(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    const struct tui_row *r = sel_row(t);
    if (!r)
        return;
    int mn = r->l.in < r->l.out ? r->l.in : r->l.out, rank = mn < 4 ? mn : 4;
    run_template(t, "correct %L lowrank", " r=%d", rank < 1 ? 1 : rank);
}

/* ---- front-end actions -------------------------------------------------------------------- */

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
    tui_want_snapshot(t);
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
    if (p < 0 || p >= PANE_N || !tui_pane_available((enum tui_pane)p, t->snap))
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
        if (tui_pane_available((enum tui_pane)p, t->snap))
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

static void open_help(struct tui *t)
{
    t->mode = MODE_HELP;
    t->help_scroll = 0;
}

static int log_page(struct tui *t)
{
    return t->r[PANE_LOG].h > 3 ? t->r[PANE_LOG].h - 2 : 1;
}

static void key_prompt_open(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    enter_prompt(t);
}

static void key_help(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    open_help(t);
}

static void key_quit(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    tui_request_quit(t);
}

/* j k Up Down: the next / previous layer, or in the log a line */
static void key_updown(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k;
    int down = fkey ? ch == KEY_DOWN : ch == 'j';
    if (t->focus == PANE_LOG)
        scroll_log(t, down ? -1 : 1);
    else
        select_layer(t, down ? 1 : -1);
}

/* g G: the log's oldest / newest line (the log focused) */
static void key_log_end(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey;
    if (t->focus == PANE_LOG)
        scroll_log(t, ch == 'g' ? 1 << 20 : -(1 << 20));
}

static void key_page(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey;
    scroll_log(t, ch == KEY_PPAGE ? log_page(t) : -log_page(t));
}

static void key_focus_step(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k;
    focus_step(t, fkey && ch == KEY_BTAB ? -1 : 1);
}

/* 1-7 or F2-F8: focus pane N (from the prompt too, which it then leaves) */
static void key_focus_n(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    int p = fkey ? (int)ch - k->fkeys[0] : (int)ch - k->chars[0];
    focus_pane(t, p);
    if (t->mode == MODE_PROMPT)
        leave_prompt(t);
}

static void key_zoom(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    t->zoom = !t->zoom;
    t->relayout = 1;
}

static void key_unzoom(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    if (t->zoom) {
        t->zoom = 0;
        t->relayout = 1;
    }
}

static void key_redraw(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    clearok(curscr, TRUE);
    tui_dirty_all(t);
}

static void key_cancel(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k, (void)fkey, (void)ch;
    tui_cancel_job(t);
}

/* ---- the table ---------------------------------------------------------------------------- */

/* In the order of the help overlay; the key hints take the rows with a hint, in this order.
 * Rows: label, chars, function keys, hint, help, command (%L: the selected layer), action, the
 * action's command, flags. */
/* One key a row, so that it reads as a table. */
/* clang-format off */
const struct tui_key tui_keys[] = {
    /* label        chars     function keys               hint */
    {":  /  Enter", ":/\r\n", {KEY_ENTER},                ": command",
     "the command prompt; Esc returns to the panes; Tab completes there",
     NULL, key_prompt_open, NULL, 0},
    {"?  F1",       "?",      {KEY_F(1)},                 "? help",
     "this overview (j/k scroll, any other key closes)",
     NULL, key_help, NULL, TUI_KEY_PROMPT},
    {"q",           "q",      {0},                        "q quit",
     "quit (asks y/n when the journal has unsaved commands)",
     NULL, key_quit, NULL, 0},
    {"j k Up Down", "jk",     {KEY_DOWN, KEY_UP},         "j/k layer",
     "select the next / previous layer (the log focused: scroll it)",
     NULL, key_updown, NULL, 0},
    {"+ -",         "+=-_",   {0},                        "+/- bits",
     "one bit more / less for the selected layer: quant LAYER intB (= and _ too)",
     NULL, key_bits, "quant", 0},
    {"f F",         "fF",     {0},                        "f format",
     "next / previous format: int8 int4 int3 int2 fp8-e4m3 mxfp4 nvfp4 nf4 none",
     NULL, key_cycle, "quant", 0},
    {"c",           "c",      {0},                        "c correct",
     "low-rank correction: correct LAYER lowrank r=4 (less on a thinner layer)",
     NULL, key_correct, "correct", 0},
    {"u",           "u",      {0},                        NULL,
     "remove the selected layer's correction",
     "uncorrect %L", NULL, NULL, 0},
    {"a",           "a",      {0},                        "a ablate",
     "judge the selected layer's correction against its controls",
     "ablate %L", NULL, NULL, 0},
    {"s",           "s",      {0},                        NULL,
     "the selected layer's error spectrum, in the log",
     "spectrum %L", NULL, NULL, 0},
    {"e",           "e",      {0},                        NULL,
     "per-layer error table",
     "error", NULL, NULL, 0},
    {"v",           "v",      {0},                        NULL,
     "float vs quantized task metrics and the gate",
     "eval", NULL, NULL, 0},
    {"r",           "r",      {0},                        NULL,
     "rank profile of every layer's error",
     "rank", NULL, NULL, 0},
    {"Tab S-Tab",   "\t",     {KEY_BTAB},                 "Tab focus",
     "focus the next / previous pane",
     NULL, key_focus_step, NULL, 0},
    {"1-7 F2-F8",   "17",     {KEY_F(2), KEY_F(8)},       NULL,
     "focus pane N (6: the decision regions of a 2-D model)",
     NULL, key_focus_n, NULL, TUI_KEY_RANGE | TUI_KEY_PROMPT},
    {"z",           "z",      {0},                        "z zoom",
     "zoom the focused pane, or back",
     NULL, key_zoom, NULL, 0},
    {"Esc",         "\033",   {0},                        NULL,
     "leave the zoom",
     NULL, key_unzoom, NULL, 0},
    {"g G",         "gG",     {0},                        NULL,
     "the log focused: its oldest / newest line",
     NULL, key_log_end, NULL, 0},
    {"PgUp PgDn",   "",       {KEY_PPAGE, KEY_NPAGE},     NULL,
     "scroll the log a page up / down",
     NULL, key_page, NULL, TUI_KEY_PROMPT},
    {"Ctrl-L",      "\014",   {0},                        NULL,
     "redraw the screen",
     NULL, key_redraw, NULL, 0},
    {"Ctrl-C",      "\003",   {0},                        NULL,
     "cancel the running job and the queued commands (never quits)",
     NULL, key_cancel, NULL, TUI_KEY_ANY_MODE},
};
/* clang-format on */
const int tui_nkeys = (int)(sizeof tui_keys / sizeof *tui_keys);

/* The command verb of key k's command: its explicit verb, or its template's words before %L
 * (buf: n bytes); "" for a front-end key. */
static void key_verb(const struct tui_key *k, char *buf, size_t n)
{
    const char *v = k->verb ? k->verb : k->cmd ? k->cmd : "";
    const char *end = strstr(v, "%L");
    size_t len = end ? (size_t)(end - v) : strlen(v);
    while (len && v[len - 1] == ' ')
        len--;
    snprintf(buf, n, "%.*s", (int)len, v);
}

/* Whether the key's command can run now: a command that needs a model, or a model and its data,
 * is not offered until they are loaded (every command runs on every family). 0, or -1 with the
 * dispatcher's reason in e. Before the first snapshot every key is offered. */
int tui_key_refused(struct tui *t, const struct tui_key *k, qs_err *e)
{
    char verb[64];
    key_verb(k, verb, sizeof verb);
    if (!verb[0])
        return 0;
    char **argv;
    int argc = qs_tokenize(verb, &argv, e), used = 0, rc = 0;
    if (argc <= 0)
        return argc < 0 ? -1 : 0;
    const struct qs_cmd_def *d = qs_cmd_lookup(t->c, argc, argv, &used);
    if (d && t->snap && (d->flags & (QS_CMD_MODEL | QS_CMD_DATA)) && !t->snap->have_model)
        rc = qs_errf(e, "%s: no model loaded (load model PATH)", d->name);
    else if (d && t->snap && (d->flags & QS_CMD_DATA) && !t->snap->have_data)
        rc = qs_errf(e, "%s: no data loaded (load data PATH)", d->name);
    qs_argv_free(argv, argc);
    return rc;
}

void tui_key_command(const struct tui_key *k, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (const char *p = k->cmd ? k->cmd : ""; *p && o + 1 < n; p++) {
        if (p[0] == '%' && p[1] == 'L') {
            o += (size_t)snprintf(buf + o, n - o, "LAYER");
            p++;
        } else {
            buf[o++] = *p;
            buf[o] = 0;
        }
        if (o >= n)
            o = n - 1;
    }
}

void tui_key_hints(struct tui *t, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < tui_nkeys && o < n; i++) {
        qs_err e = {{0}};
        if (tui_keys[i].foot && tui_key_refused(t, &tui_keys[i], &e) == 0)
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "  " : "", tui_keys[i].foot);
    }
}

/* Whether key k is pressed by (fkey, ch). */
static int key_matches(const struct tui_key *k, int fkey, wint_t ch)
{
    if (fkey) {
        if (k->flags & TUI_KEY_RANGE)
            return k->fkeys[0] && (int)ch >= k->fkeys[0] && (int)ch <= k->fkeys[1];
        for (int j = 0; j < 3 && k->fkeys[j]; j++)
            if ((int)ch == k->fkeys[j])
                return 1;
        return 0;
    }
    if (ch == 0 || ch >= 128 || !k->chars[0])
        return 0;
    if (k->flags & TUI_KEY_RANGE)
        return (int)ch >= k->chars[0] && (int)ch <= k->chars[1];
    return strchr(k->chars, (int)ch) != NULL;
}

/* Runs key k: its command on the selected layer, or its action; a key whose command refuses on
 * this model runs nothing and says why (one line in the log). */
static void run_key(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    qs_err e = {{0}};
    if (tui_key_refused(t, k, &e) < 0) {
        char msg[QS_ERRLEN + 16];
        snprintf(msg, sizeof msg, "%s: %s", k->label, e.msg);
        tui_log_add(&t->sh, LOG_ERR, msg);
        return;
    }
    if (k->cmd)
        run_template(t, k->cmd, "%s", "");
    else
        k->act(t, k, fkey, ch);
}

/* The key of the table pressed by (fkey, ch) with all of FLAGS, or NULL. */
static const struct tui_key *key_find(int fkey, wint_t ch, int flags)
{
    for (int i = 0; i < tui_nkeys; i++)
        if ((tui_keys[i].flags & flags) == flags && key_matches(&tui_keys[i], fkey, ch))
            return &tui_keys[i];
    return NULL;
}

/* ---- keys by mode ------------------------------------------------------------------------- */

/* At the prompt: the keys flagged TUI_KEY_PROMPT (function keys: help, panes, the log's pages),
 * then readline's own (arrows, Home, End, Delete) as the escape sequences it reads. */
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
        const struct tui_key *k = key_find(fkey, ch, TUI_KEY_PROMPT);
        if (k) {
            run_key(t, k, fkey, ch);
            return;
        }
        for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++)
            if ((int)ch == seqs[i].key) {
                tui_rl_feed(t, seqs[i].seq, strlen(seqs[i].seq));
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
    tui_rl_feed(t, b, k);
}

static void key_help_overlay(struct tui *t, int fkey, wint_t ch)
{
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
        tui_dirty_all(t);
        for (int p = 0; p < PANE_N; p++)
            if (t->win[p])
                touchwin(t->win[p]);
    }
}

void tui_handle_key(struct tui *t, int fkey, wint_t ch)
{
    if (fkey && ch == KEY_RESIZE) {
        t->relayout = 1;
        return;
    }
    const struct tui_key *k = key_find(fkey, ch, TUI_KEY_ANY_MODE); /* Ctrl-C, never quits */
    if (k) {
        run_key(t, k, fkey, ch);
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
        key_help_overlay(t, fkey, ch);
        break;
    case MODE_PROMPT:
        key_prompt(t, fkey, ch);
        break;
    default:
        if ((k = key_find(fkey, ch, 0)))
            run_key(t, k, fkey, ch);
        break;
    }
}
