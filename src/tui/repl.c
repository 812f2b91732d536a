/* repl.c - the line front end: readline REPL (or plain stdin lines) over the dispatcher. */
#include <readline/history.h>
#include <readline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/front.h"

static struct qs_ctx *comp_ctx;

void qs_front_print(void *u, const cJSON *obj, const char *text)
{
    struct qs_ctx *c = u;
    if (c && c->json) {
        if (!obj)
            return;
        char *s = cJSON_PrintUnformatted(obj);
        if (s) {
            puts(s);
            free(s);
        }
    } else if (text && text[0]) {
        puts(text);
    }
    fflush(stdout);
}

void qs_front_note(void *u, const char *msg)
{
    (void)u;
    fprintf(stderr, "%s\n", msg);
}

/* Completion: command names first, then layer and format names for later words. */
static char *comp_gen(const char *text, int state)
{
    static int idx, phase;
    size_t len = strlen(text);
    if (!state) {
        idx = 0;
        phase = rl_point > (int)len && strchr(rl_line_buffer, ' ') ? 1 : 0;
    }
    if (phase == 0) {
        const struct qs_cmd_def *d;
        while ((d = qs_cmd_at(comp_ctx, idx++))) {
            char word[64];
            snprintf(word, sizeof word, "%s", d->name);
            char *sp = strchr(word, ' ');
            if (sp)
                *sp = 0;
            if (!strncmp(word, text, len))
                return strdup(word);
        }
        return NULL;
    }
    /* later words: layer names, then format names, then second command words */
    struct qs_bench *b = comp_ctx->b;
    int nl = b->model ? b->model->nlayers : 0;
    const char *const *fm = qs_format_names();
    int nf = 0;
    while (fm[nf])
        nf++;
    while (idx < nl + nf) {
        int i = idx++;
        const char *w = i < nl ? b->model->layers[i].name : fm[i - nl];
        if (!strncmp(w, text, len))
            return strdup(w);
    }
    const struct qs_cmd_def *d;
    while ((d = qs_cmd_at(comp_ctx, idx++ - nl - nf))) {
        const char *sp = strchr(d->name, ' ');
        if (sp && !strncmp(sp + 1, text, len) && !strncmp(rl_line_buffer, d->name,
                                                           (size_t)(sp - d->name)))
            return strdup(sp + 1);
    }
    return NULL;
}

static char **complete(const char *text, int start, int end)
{
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1;
    return rl_completion_matches(text, comp_gen);
}

static void history_path(char *buf, size_t n)
{
    char dir[900];
    if (qs_state_dir(dir, sizeof dir) == 0)
        snprintf(buf, n, "%s/history", dir);
    else
        buf[0] = 0;
}

int qs_repl_run(struct qs_ctx *c, int use_readline)
{
    char hist[1024];
    comp_ctx = c;
    history_path(hist, sizeof hist);
    if (use_readline) {
        rl_readline_name = "qscope";
        rl_attempted_completion_function = complete;
        if (hist[0])
            read_history(hist);
    }
    int status = 0;
    while (!c->quit) {
        char *line = NULL;
        if (use_readline) {
            line = readline("qscope> ");
        } else {
            size_t cap = 0;
            if (getline(&line, &cap, stdin) < 0) {
                free(line);
                line = NULL;
            }
        }
        if (!line)
            break;
        if (use_readline && line[0])
            add_history(line);
        qs_err e = {{0}};
        if (qs_exec_text(c, line, &e) < 0) {
            fprintf(stderr, "error: %s\n", e.msg);
            if (!use_readline)
                status = 1;
        }
        free(line);
    }
    if (use_readline && hist[0])
        write_history(hist);
    return status;
}
