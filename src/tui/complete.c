/* complete.c - readline completion shared by the TUI prompt and the line REPL. Everything offered
 * comes from the command table (names, second words, option keys and value alternatives parsed
 * from each command's argument synopsis), the model's layer names, the format table and the
 * correction methods, so completion cannot drift from the real commands. */
#include "qscope/tui.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/readline.h>

#include "qscope/bench.h"
#include "qscope/format.h"

static const struct qs_ctx *comp_ctx;
static const char *(*comp_layer)(void *u, int i);
static void *comp_u;

/* The candidates of the completion in progress (rebuilt on each attempt). */
static char **cand;
static int ncand, capcand;

static void cand_add(const char *s, size_t len)
{
    for (int i = 0; i < ncand; i++)
        if (strlen(cand[i]) == len && !strncmp(cand[i], s, len))
            return;
    if (ncand == capcand) {
        int cap = capcand ? 2 * capcand : 64;
        char **n = realloc(cand, (size_t)cap * sizeof *n);
        if (!n)
            return;
        cand = n;
        capcand = cap;
    }
    char *c = malloc(len + 1);
    if (!c)
        return;
    memcpy(c, s, len);
    c[len] = 0;
    cand[ncand++] = c;
}

static void cand_clear(void)
{
    for (int i = 0; i < ncand; i++)
        free(cand[i]);
    ncand = 0;
}

static char *cand_gen(const char *text, int state)
{
    static int idx;
    size_t len = strlen(text);
    if (!state)
        idx = 0;
    while (idx < ncand) {
        const char *c = cand[idx++];
        if (!strncmp(c, text, len))
            return strdup(c);
    }
    return NULL;
}

/* Option keys and value alternatives from an argument synopsis such as
 * "LAYER [of=weight|preact] [scale=none|act|cov] [k=N]": "of=weight", "of=preact", "scale=none",
 * ..., "k="; bare alternatives "weight|act|full" give each word. Upper-case words are
 * placeholders and give nothing. */
static void cand_from_synopsis(const char *args)
{
    const char *p = args;
    while (*p) {
        while (*p && (*p == ' ' || *p == '[' || *p == ']'))
            p++;
        const char *w = p;
        while (*p && *p != ' ' && *p != '[' && *p != ']')
            p++;
        size_t len = (size_t)(p - w);
        if (!len)
            continue;
        const char *eq = memchr(w, '=', len);
        if (eq) {
            size_t klen = (size_t)(eq - w) + 1;
            const char *v = eq + 1;
            int any = 0;
            while (v < p) { /* key=alt1|alt2 (lower-case alternatives only) */
                const char *bar = memchr(v, '|', (size_t)(p - v));
                const char *end = bar ? bar : p;
                if (end > v && islower((unsigned char)*v)) {
                    char buf[96];
                    size_t vl = (size_t)(end - v);
                    if (klen + vl < sizeof buf) {
                        memcpy(buf, w, klen);
                        memcpy(buf + klen, v, vl);
                        cand_add(buf, klen + vl);
                        any = 1;
                    }
                }
                v = bar ? bar + 1 : p;
            }
            if (!any)
                cand_add(w, klen);
        } else if (islower((unsigned char)*w)) {
            const char *v = w;
            while (v < p) {
                const char *bar = memchr(v, '|', (size_t)(p - v));
                const char *end = bar ? bar : p;
                if (end > v)
                    cand_add(v, (size_t)(end - v));
                v = bar ? bar + 1 : p;
            }
        }
    }
}

static int takes_path(const char *name)
{
    static const char *const cmds[] = {"load model",   "load data",  "source",     "save session",
                                       "export model", "export csv", "screenshot", NULL};
    for (int i = 0; cmds[i]; i++)
        if (!strcmp(cmds[i], name))
            return 1;
    return 0;
}

static char **complete(const char *text, int start, int end)
{
    (void)end;
    rl_attempted_completion_over = 1;
    cand_clear();
    /* the words before the one being completed */
    char *before = strndup(rl_line_buffer, (size_t)start);
    char *words[8];
    int nw = 0;
    for (char *save = NULL, *tok = before ? strtok_r(before, " \t", &save) : NULL; tok && nw < 8;
         tok = strtok_r(NULL, " \t", &save))
        words[nw++] = tok;
    const struct qs_cmd_def *d;
    if (nw == 0) {
        for (int i = 0; (d = qs_cmd_at(comp_ctx, i)); i++) {
            const char *sp = strchr(d->name, ' ');
            cand_add(d->name, sp ? (size_t)(sp - d->name) : strlen(d->name));
        }
    } else {
        /* the command being typed: a two-word name first */
        const struct qs_cmd_def *cmd = NULL;
        int used = 0, two_word_prefix = 0;
        for (int i = 0; (d = qs_cmd_at(comp_ctx, i)); i++) {
            const char *sp = strchr(d->name, ' ');
            size_t n = sp ? (size_t)(sp - d->name) : strlen(d->name);
            if (strlen(words[0]) != n || strncmp(d->name, words[0], n))
                continue;
            if (sp && nw >= 2 && !strcmp(sp + 1, words[1])) {
                cmd = d;
                used = 2;
            } else if (sp && nw == 1) {
                two_word_prefix = 1;
                cand_add(sp + 1, strlen(sp + 1));
            } else if (!sp && !cmd) {
                cmd = d;
                used = 1;
            }
        }
        if (!two_word_prefix && cmd) {
            if (takes_path(cmd->name) && nw == used) {
                free(before);
                rl_attempted_completion_over = 0; /* readline's file names */
                return NULL;
            }
            for (int i = 0; comp_layer && comp_layer(comp_u, i); i++)
                cand_add(comp_layer(comp_u, i), strlen(comp_layer(comp_u, i)));
            if (!strcmp(cmd->name, "quant") || !strcmp(cmd->name, "roundtrip") ||
                !strcmp(cmd->name, "codes"))
                for (const char *const *f = qs_format_names(); *f; f++)
                    cand_add(*f, strlen(*f));
            if (!strcmp(cmd->name, "quant")) /* the option values the synopsis leaves out */
                cand_from_synopsis("gran=tensor|channel|group: clip=max|mse|pct: "
                                   "round=nearest|stochastic range=restricted|full "
                                   "scale=f16|f32|none asym sym sat=0|1 seed= "
                                   "order=act|col weight=imatrix|plain rotate=hadamard|none");
            if (!strcmp(cmd->name, "correct"))
                for (int m = QS_CORR_BIAS; m <= QS_CORR_CLOCAL; m++)
                    cand_add(qs_corr_name((enum qs_corr_method)m),
                             strlen(qs_corr_name((enum qs_corr_method)m)));
            cand_from_synopsis(cmd->args);
        }
    }
    free(before);
    char **m = rl_completion_matches(text, cand_gen);
    if (m && m[0] && m[0][0] && strchr("=:", m[0][strlen(m[0]) - 1]))
        rl_completion_append_character = '\0';
    return m;
}

void qs_complete_install(const struct qs_ctx *c, const char *(*layer_name)(void *u, int i), void *u)
{
    comp_ctx = c;
    comp_layer = layer_name;
    comp_u = u;
    rl_attempted_completion_function = complete;
    rl_basic_word_break_characters = " \t\n\"';";
}
