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

/* ---- placeholders: the words of a key's command, filled from the selected layer's row ------ */

/* A layer name as one word of a command line: plain names as they are, anything else quoted
 * and escaped (qs_quote_sb) so the tokenizer gives back the exact name, of any length. */
static int fill_layer(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    (void)e;
    if (l->name[0] && strpbrk(l->name, " \t\n'\"\\#;*?[") == NULL)
        qs_sb_printf(out, "%s", l->name);
    else
        qs_quote_sb(l->name, out);
    return 0;
}

/* " gran=..." for the int format the bits keys give a layer: the layer's own granularity when
 * its format has free scales at a granularity of its choice (int, minifloats, fixed point,
 * compand), per channel otherwise (fixed blocks, nf4's blocks, scale=none, or no scale at all:
 * fp16, bf16). */
static void weight_gran(const struct qs_layer_row *l, struct qs_sb *out)
{
    const struct qs_format_traits *t = qs_format_traits(&l->wfmt);
    int own = t->free_scale && !t->blockwise && !t->unscaled && !l->wopt.scale_none;
    if (!own || l->wopt.gran == QS_GRAN_CHANNEL)
        qs_sb_printf(out, " gran=channel");
    else if (l->wopt.gran == QS_GRAN_GROUP)
        qs_sb_printf(out, " gran=group:%d", l->wopt.group);
    else
        qs_sb_printf(out, " gran=tensor");
}

/* One bit more (dir 1) / less (-1) for the role the layer quantizes (its weights, or the
 * activations of an activation-only layer), keeping the role's options: "int5 gran=channel",
 * "int7 on=a amode=static", "none" past 8 bits. */
static int fill_bits(const struct qs_layer_row *l, int dir, struct qs_sb *out, qs_err *e)
{
    int acts = l->wfmt.kind == QS_FMT_NONE && l->afmt.kind != QS_FMT_NONE;
    const struct qs_format *f = acts ? &l->afmt : &l->wfmt;
    int bits = f->kind == QS_FMT_NONE ? 32 : f->bits, nb;
    if (bits >= 32 && dir > 0)
        return qs_errf(e, "the layer is already in float");
    /* from float or a format wider than the widest integer one (fp16, bf16), a bit less is
     * int8, a bit more float */
    nb = bits > 8 ? (dir > 0 ? 9 : 8) : bits + dir;
    if (nb < 2)
        return qs_errf(e, "2 bits is the narrowest integer format");
    if (nb > 8) {
        qs_sb_printf(out, "none%s", acts ? " on=a" : "");
        return 0;
    }
    qs_sb_printf(out, "int%d", nb);
    if (!acts) {
        weight_gran(l, out);
        return 0;
    }
    /* the activation rule's own scale mode (and groups) */
    qs_sb_printf(out, " on=a%s",
                 l->amode == QS_AMODE_STATIC  ? " amode=static"
                 : l->amode == QS_AMODE_TOKEN ? " amode=token"
                                              : "");
    if (l->amode == QS_AMODE_DYNAMIC && l->aopt.gran == QS_GRAN_GROUP)
        qs_sb_printf(out, " gran=group:%d", l->aopt.group);
    return 0;
}

static int fill_bits_up(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    return fill_bits(l, 1, out, e);
}

static int fill_bits_down(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    return fill_bits(l, -1, out, e);
}

static const char *const cycle_formats[] = {"int8",  "int4",  "int3", "int2", "fp8-e4m3",
                                            "mxfp4", "nvfp4", "nf4",  "none"};
#define NCYCLE ((int)(sizeof cycle_formats / sizeof *cycle_formats))

/* The next (dir 1) / previous (-1) weight format of the cycle, from the layer's canonical
 * format name (a format outside the cycle goes to its first / last). */
static int fill_format(const struct qs_layer_row *l, int dir, struct qs_sb *out, qs_err *e)
{
    const char *name = l->wfmt.kind == QS_FMT_NONE ? "none" : l->wfmt.name;
    int k = -1;
    for (int i = 0; i < NCYCLE; i++)
        if (!strcmp(cycle_formats[i], name))
            k = i;
    k = k < 0 ? (dir > 0 ? 0 : NCYCLE - 1) : (k + dir + NCYCLE) % NCYCLE;
    /* per channel where the format takes a granularity of free scales (int, fp8); the others
     * have their own blocks (mx, nvfp4, nf4) or no scale (fp16, bf16), and refuse gran= */
    struct qs_format f;
    if (qs_format_parse(cycle_formats[k], &f, e) < 0)
        return -1;
    const struct qs_format_traits *t = qs_format_traits(&f);
    int chan = f.kind != QS_FMT_NONE && t->free_scale && !t->blockwise && !t->unscaled;
    qs_sb_printf(out, "%s%s", f.name, chan ? " gran=channel" : "");
    return 0;
}

static int fill_format_next(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    return fill_format(l, 1, out, e);
}

static int fill_format_prev(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    return fill_format(l, -1, out, e);
}

/* The default correction's rank: 4, or the largest the layer holds when it is thinner (a 16x2
 * layer takes rank 2 at most). */
static int fill_rank(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    (void)e;
    int mn = l->in < l->out ? l->in : l->out, rank = mn < 4 ? mn : 4;
    qs_sb_printf(out, "%d", rank < 1 ? 1 : rank);
    return 0;
}

/* The placeholders a key's command may hold: %L, or %{NAME}. Each stands for words built from
 * the selected layer's row (its name, its format and options, its shape), never parsed back
 * out of a description; `shown` is how the help and `tui keys` show it. */
static const struct tui_placeholder {
    const char *name, *shown;
    int (*fill)(const struct qs_layer_row *l, struct qs_sb *out, qs_err *e);
} placeholders[] = {
    {"L", "LAYER", fill_layer},
    {"bits+1", "int(B+1)", fill_bits_up},
    {"bits-1", "int(B-1)", fill_bits_down},
    {"format+1", "NEXT", fill_format_next},
    {"format-1", "PREV", fill_format_prev},
    {"rank", "K", fill_rank},
};
#define NPLACEHOLDERS ((int)(sizeof placeholders / sizeof *placeholders))

/* The placeholder at p (which starts with '%'), *len = its length in the template; NULL when p
 * holds none (a '%' not followed by L or {NAME} of the table). */
static const struct tui_placeholder *placeholder_at(const char *p, size_t *len)
{
    const char *name = p + 1;
    size_t n = 1;
    if (p[1] == '{') {
        const char *end = strchr(p + 2, '}');
        if (!end)
            return NULL;
        name = p + 2;
        n = (size_t)(end - name);
        *len = n + 3;
    } else {
        *len = 2;
    }
    for (int i = 0; i < NPLACEHOLDERS; i++)
        if (strlen(placeholders[i].name) == n && !strncmp(placeholders[i].name, name, n))
            return &placeholders[i];
    return NULL;
}

int tui_key_expand(const char *tpl, const struct qs_layer_row *l, struct qs_sb *out, qs_err *e)
{
    for (const char *p = tpl; *p; p++) {
        size_t len;
        const struct tui_placeholder *ph = p[0] == '%' ? placeholder_at(p, &len) : NULL;
        if (p[0] == '%' && !ph)
            return qs_errf(e, "key command '%s': no placeholder at '%s'", tpl, p);
        if (!ph) {
            qs_sb_printf(out, "%c", *p);
            continue;
        }
        if (!l)
            return qs_errf(e, "no layer selected (load model PATH)");
        if (ph->fill(l, out, e) < 0)
            return -1;
        p += len - 1;
    }
    return 0;
}

void tui_key_command(const struct tui_key *k, char *buf, size_t n)
{
    struct qs_sb sb = {0};
    for (const char *p = k->cmd ? k->cmd : ""; *p; p++) {
        size_t len;
        const struct tui_placeholder *ph = p[0] == '%' ? placeholder_at(p, &len) : NULL;
        if (ph) {
            qs_sb_printf(&sb, "%s", ph->shown);
            p += len - 1;
        } else {
            qs_sb_printf(&sb, "%c", *p);
        }
    }
    snprintf(buf, n, "%s", sb.s ? sb.s : "");
    qs_sb_free(&sb);
}

/* Runs key k's command: its template filled from the selected layer's row. A placeholder that
 * cannot be filled (no layer, no bit more than float) runs nothing and says why. */
static void run_command_key(struct tui *t, const struct tui_key *k)
{
    const struct qs_layer_row *l = NULL;
    if (t->snap && t->snap->have_model && t->sel >= 0 && t->sel < t->snap->nlayers)
        l = &t->snap->rows[t->sel].l;
    struct qs_sb sb = {0};
    qs_err e = {{0}};
    if (tui_key_expand(k->cmd, l, &sb, &e) < 0) {
        tui_log_add(&t->sh, LOG_NOTE, e.msg);
    } else if (sb.s) {
        if (t->cmd_t0 == 0)
            t->cmd_t0 = t->key_t0;
        tui_submit_text(t, sb.s);
    }
    qs_sb_free(&sb);
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
    if (p < 0 || p >= tui_npanes || !tui_pane_available((enum tui_pane)p, t->snap))
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
    for (int i = 0; i < tui_npanes; i++) {
        p = (p + d + tui_npanes) % tui_npanes;
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

/* 1..N or F2..F(N+1): focus pane N (from the prompt too, which it then leaves) */
static void key_focus_n(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    (void)k;
    int p = fkey ? (int)ch - KEY_F(2) : (int)ch - '1';
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
 * Rows: label (%P: the pane focus keys' range, from the pane table), chars, function keys,
 * hint, help, then the command it runs (a template: %L the selected layer, %{NAME} another
 * placeholder of the table above) or, for a front-end key, NULL and its action, then flags. One
 * key a row, so that it reads as a table. */
/* clang-format off */
const struct tui_key tui_keys[] = {
    /* label        chars     function keys               hint */
    {":  /  Enter", ":/\r\n", {KEY_ENTER},                ": command",
     "the command prompt; Esc returns to the panes; Tab completes there",
     NULL, key_prompt_open, 0},
    {"?  F1",       "?",      {KEY_F(1)},                 "? help",
     "this overview (j/k scroll, any other key closes)",
     NULL, key_help, TUI_KEY_PROMPT},
    {"q",           "q",      {0},                        "q quit",
     "quit (asks y/n when the journal has unsaved commands)",
     NULL, key_quit, 0},
    {"j k Up Down", "jk",     {KEY_DOWN, KEY_UP},         "j/k layer",
     "select the next / previous layer (the log focused: scroll it)",
     NULL, key_updown, 0},
    {"+ =",         "+=",     {0},                        "+/- bits",
     "one bit more for the selected layer (its options kept)",
     "quant %L %{bits+1}", NULL, 0},
    {"- _",         "-_",     {0},                        NULL,
     "one bit less for the selected layer (its options kept)",
     "quant %L %{bits-1}", NULL, 0},
    {"f",           "f",      {0},                        "f format",
     "next format: int8 int4 int3 int2 fp8-e4m3 mxfp4 nvfp4 nf4 none",
     "quant %L %{format+1}", NULL, 0},
    {"F",           "F",      {0},                        NULL,
     "previous format of that cycle",
     "quant %L %{format-1}", NULL, 0},
    {"c",           "c",      {0},                        "c correct",
     "low-rank correction (rank 4, less on a thinner layer)",
     "correct %L lowrank r=%{rank}", NULL, 0},
    {"u",           "u",      {0},                        NULL,
     "remove the selected layer's correction",
     "uncorrect %L", NULL, 0},
    {"a",           "a",      {0},                        "a ablate",
     "judge the selected layer's correction against its controls",
     "ablate %L", NULL, 0},
    {"s",           "s",      {0},                        NULL,
     "the selected layer's error spectrum, in the log",
     "spectrum %L", NULL, 0},
    {"e",           "e",      {0},                        NULL,
     "per-layer error table",
     "error", NULL, 0},
    {"v",           "v",      {0},                        NULL,
     "float vs quantized task metrics and the gate",
     "eval", NULL, 0},
    {"r",           "r",      {0},                        NULL,
     "rank profile of every layer's error",
     "rank", NULL, 0},
    {"Tab S-Tab",   "\t",     {KEY_BTAB},                 "Tab focus",
     "focus the next / previous pane",
     NULL, key_focus_step, 0},
    {"%P",          "",       {0},                        NULL,
     "focus pane N (6: the decision regions of a 2-D model)",
     NULL, key_focus_n, TUI_KEY_PANES | TUI_KEY_PROMPT},
    {"z",           "z",      {0},                        "z zoom",
     "zoom the focused pane, or back",
     NULL, key_zoom, 0},
    {"Esc",         "\033",   {0},                        NULL,
     "leave the zoom",
     NULL, key_unzoom, 0},
    {"g G",         "gG",     {0},                        NULL,
     "the log focused: its oldest / newest line",
     NULL, key_log_end, 0},
    {"PgUp PgDn",   "",       {KEY_PPAGE, KEY_NPAGE},     NULL,
     "scroll the log a page up / down",
     NULL, key_page, TUI_KEY_PROMPT},
    {"Ctrl-L",      "\014",   {0},                        NULL,
     "redraw the screen",
     NULL, key_redraw, 0},
    {"Ctrl-C",      "\003",   {0},                        NULL,
     "cancel the running job and the queued commands (never quits)",
     NULL, key_cancel, TUI_KEY_ANY_MODE},
};
/* clang-format on */
const int tui_nkeys = (int)(sizeof tui_keys / sizeof *tui_keys);

/* The command of key k: its template's words before the first placeholder (buf: n bytes); ""
 * for a front-end key. */
static void key_verb(const struct tui_key *k, char *buf, size_t n)
{
    const char *v = k->cmd ? k->cmd : "";
    const char *end = strchr(v, '%');
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
    if (!d)
        rc = qs_errf(e, "'%s' is not a command (the key table is wrong)", verb);
    else if (t->snap && (d->flags & (QS_CMD_MODEL | QS_CMD_DATA)) && !t->snap->have_model)
        rc = qs_errf(e, "%s: no model loaded (load model PATH)", d->name);
    else if (t->snap && (d->flags & QS_CMD_DATA) && !t->snap->have_data)
        rc = qs_errf(e, "%s: no data loaded (load data PATH)", d->name);
    qs_argv_free(argv, argc);
    return rc;
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

const char *tui_key_label(const struct tui_key *k)
{
    static char range[32];
    if (!(k->flags & TUI_KEY_PANES))
        return k->label;
    if (tui_npanes == 1)
        snprintf(range, sizeof range, "1 F2");
    else
        snprintf(range, sizeof range, "1-%d F2-F%d", tui_npanes, tui_npanes + 1);
    return range;
}

/* Whether key k is pressed by (fkey, ch). */
static int key_matches(const struct tui_key *k, int fkey, wint_t ch)
{
    if (k->flags & TUI_KEY_PANES)
        return fkey ? (int)ch >= KEY_F(2) && (int)ch <= KEY_F(1 + tui_npanes)
                    : ch >= '1' && ch <= (wint_t)('0' + tui_npanes);
    if (fkey) {
        for (int j = 0; j < 3 && k->fkeys[j]; j++)
            if ((int)ch == k->fkeys[j])
                return 1;
        return 0;
    }
    if (ch == 0 || ch >= 128 || !k->chars[0])
        return 0;
    return strchr(k->chars, (int)ch) != NULL;
}

/* Runs key k: its command on the selected layer, or its action; a key whose command refuses on
 * this model runs nothing and says why (one line in the log). */
static void run_key(struct tui *t, const struct tui_key *k, int fkey, wint_t ch)
{
    qs_err e = {{0}};
    if (tui_key_refused(t, k, &e) < 0) {
        char msg[QS_ERRLEN + 16];
        snprintf(msg, sizeof msg, "%s: %s", tui_key_label(k), e.msg);
        tui_log_add(&t->sh, LOG_ERR, msg);
        return;
    }
    if (k->cmd)
        run_command_key(t, k);
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
        for (int p = 0; p < tui_npanes; p++)
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
