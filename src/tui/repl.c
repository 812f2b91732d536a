/* repl.c - the line front end: readline REPL (or plain stdin lines) over the dispatcher. */
#include <readline/history.h>
#include <readline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/front.h"
#include "qscope/tui.h"

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

/* Layer names for completion: the REPL runs commands on this thread, so it reads the bench. */
static const char *repl_layer_name(void *u, int i)
{
    const struct qs_ctx *c = u;
    const struct qs_mlp *m = c->b ? c->b->model : NULL;
    return m && i < m->nlayers ? m->layers[i].name : NULL;
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
    if (!c->extra) /* so that front-end commands explain themselves ("needs the TUI") */
        c->extra = qs_tui_cmds;
    history_path(hist, sizeof hist);
    if (use_readline) {
        rl_readline_name = "qscope";
        qs_complete_install(c, repl_layer_name, c);
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
