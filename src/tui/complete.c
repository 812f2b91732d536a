/* complete.c - readline completion shared by the TUI prompt and the line REPL. What is offered
 * comes from the command table's argument specs through qs_cmd_complete (names, second words,
 * option keys, and values by kind: enum alternatives, layer names, format names, file names), so
 * completion cannot drift from the real commands. */
#include "qscope/tui.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/readline.h>

#include "qscope/cmd.h"

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

static void cand_add_cb(void *u, const char *s)
{
    (void)u;
    cand_add(s, strlen(s));
}

/* File names for an option's value: readline's generator after the "key=" prefix. */
static void cand_files(const char *text, size_t keylen)
{
    char *f;
    for (int st = 0; (f = rl_filename_completion_function(text + keylen, st)); st++) {
        char buf[PATH_MAX + 64];
        snprintf(buf, sizeof buf, "%.*s%s", (int)keylen, text, f);
        cand_add(buf, strlen(buf));
        free(f);
    }
}

static char **complete(const char *text, int start, int end)
{
    (void)end;
    rl_attempted_completion_over = 1;
    cand_clear();
    /* the words before the one being completed */
    char *before = strndup(rl_line_buffer, (size_t)start);
    char *words[64];
    int nw = 0;
    for (char *save = NULL, *tok = before ? strtok_r(before, " \t", &save) : NULL; tok && nw < 64;
         tok = strtok_r(NULL, " \t", &save))
        words[nw++] = tok;
    size_t keylen = 0;
    int path =
        qs_cmd_complete(comp_ctx, words, nw, text, comp_layer, comp_u, cand_add_cb, NULL, &keylen);
    free(before);
    if (path && !keylen) {
        rl_attempted_completion_over = 0; /* readline's file names */
        return NULL;
    }
    if (path)
        cand_files(text, keylen);
    char **m = rl_completion_matches(text, cand_gen);
    if (m && m[0] && m[0][0] && strchr("=:,", m[0][strlen(m[0]) - 1]))
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
