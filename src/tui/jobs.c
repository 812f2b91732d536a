/* jobs.c - the UI's job queue: typed lines and keys' commands are split into statements and
 * queued as one group (an error drops the rest of its group); the idle worker gets the next one,
 * front-end commands run here between jobs; what a finished job leaves (log lines, progress, its
 * snapshot) is collected by the loop. Quitting goes through here too: a running job is
 * cancelled first, unsaved work asks first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <readline/readline.h>

#include "qscope/front.h"
#include "tui_impl.h"

/* ---- the job queue ------------------------------------------------------------------------ */

static int is_front(struct tui *t, const char *line);

void tui_queue_push(struct tui *t, int kind, const char *line, int group)
{
    /* a job for the worker arriving while it computes a transformer's staged figures (the
     * preview, the full pass) cancels them: the job runs next, and its snapshot follows (a
     * front-end command runs here without the worker: nothing to make room for) */
    if (t->busy && (kind == JOB_SNAP || (line && !is_front(t, line)))) {
        pthread_mutex_lock(&t->sh.mu);
        if (t->sh.staging && !t->sh.superseded) {
            t->sh.superseded = 1;
            t->c->b->cancel = 1;
        }
        pthread_mutex_unlock(&t->sh.mu);
    }
    if (t->nq == t->capq) {
        int cap = t->capq ? 2 * t->capq : 16;
        struct tui_item *q = realloc(t->q, (size_t)cap * sizeof *q);
        if (!q)
            return;
        t->q = q;
        t->capq = cap;
    }
    t->q[t->nq++] = (struct tui_item){kind, line ? qs_strdup(line) : NULL, group};
}

static void queue_drop(struct tui *t, int i)
{
    free(t->q[i].line);
    memmove(t->q + i, t->q + i + 1, (size_t)(t->nq - i - 1) * sizeof *t->q);
    t->nq--;
}

/* A snapshot refresh (new selection, new panel size), unless one is already waiting. */
void tui_want_snapshot(struct tui *t)
{
    for (int i = 0; i < t->nq; i++)
        if (t->q[i].kind == JOB_SNAP)
            return;
    /* a refresh already running may be stale: queue another */
    tui_queue_push(t, JOB_SNAP, NULL, 0);
}

struct submit_state {
    struct tui *t;
    int group;
};

static int submit_one(void *u, const char *stmt)
{
    struct submit_state *st = u;
    tui_queue_push(st->t, JOB_LINE, stmt, st->group);
    return 0;
}

/* Splits text into statements as qs_exec_text does and queues them as one group. */
void tui_submit_text(struct tui *t, const char *text)
{
    struct submit_state st = {t, ++t->group};
    qs_split_statements(text, submit_one, &st);
}

void tui_cancel_job(struct tui *t)
{
    if (!t->busy) {
        if (t->mode == MODE_PROMPT && rl_line_buffer && rl_line_buffer[0]) {
            rl_replace_line("", 0);
            rl_point = 0;
            t->dirty_prompt = 1;
        } else {
            tui_log_add(&t->sh, LOG_NOTE, "nothing to cancel (q quits)");
        }
        return;
    }
    t->c->b->cancel = 1; /* the designed asynchronous flag; the job checks it */
    int dropped = 0;
    for (int i = t->nq - 1; i >= 0; i--)
        if (t->q[i].kind == JOB_LINE) {
            queue_drop(t, i);
            dropped++;
        }
    char msg[360];
    snprintf(msg, sizeof msg, "cancelling '%s'%s", t->busy_line,
             dropped ? " and the queued commands" : "");
    tui_log_add(&t->sh, LOG_NOTE, msg);
}

/* ---- jobs: dispatch and results ----------------------------------------------------------- */

static int is_front(struct tui *t, const char *line)
{
    char **argv;
    qs_err e;
    int argc = qs_tokenize(line, &argv, &e), used = 0, front = 0;
    if (argc > 0) {
        const struct qs_cmd_def *d = qs_cmd_lookup(t->c, argc, argv, &used);
        front = d && (d->flags & QS_CMD_FRONT);
    }
    if (argc >= 0)
        qs_argv_free(argv, argc);
    return front;
}

static void drop_group(struct tui *t, int group)
{
    for (int i = t->nq - 1; i >= 0; i--)
        if (group && t->q[i].group == group)
            queue_drop(t, i);
}

void tui_dispatch(struct tui *t)
{
    while (!t->busy && t->nq && t->mode != MODE_CONFIRM && !t->quit_now) {
        struct tui_item it = t->q[0];
        memmove(t->q, t->q + 1, (size_t)(t->nq - 1) * sizeof *t->q);
        t->nq--;
        if (it.kind == JOB_LINE) {
            char echo[1100];
            snprintf(echo, sizeof echo, "> %s", it.line);
            tui_log_add(&t->sh, LOG_CMD, echo);
        }
        if (it.kind == JOB_LINE && is_front(t, it.line)) {
            /* front-end commands run here: the worker is idle, so the context is ours */
            qs_err e = {{0}};
            t->dirty[PANE_LOG] = 1;
            if (qs_exec_line(t->c, it.line, &e) < 0) {
                char msg[QS_ERRLEN + 8];
                snprintf(msg, sizeof msg, "error: %s", e.msg);
                tui_log_add(&t->sh, LOG_ERR, msg);
                drop_group(t, it.group);
            }
            free(it.line);
            continue;
        }
        t->busy = 1;
        t->busy_kind = it.kind;
        snprintf(t->busy_line, sizeof t->busy_line, "%s", it.line ? it.line : "refresh");
        t->have_prog = 0;
        t->prog_what[0] = 0;
        t->dirty_status = 1;
        t->c->b->cancel = 0;
        /* the model's load from the command line: one snapshot once its data is in too (the
         * screen shows the config's table meanwhile) */
        int later = 0;
        for (int i = 0; t->boot_group && it.group == t->boot_group && i < t->nq; i++)
            later |= t->q[i].group == it.group;
        tui_worker_submit(&t->wk, it.kind, it.line, t->sel, later);
        t->busy_group = it.group;
        free(it.line);
    }
}

/* Takes whatever the worker left: log lines, progress, a finished job and its snapshot. */
void tui_collect(struct tui *t)
{
    struct tui_shared *sh = &t->sh;
    pthread_mutex_lock(&sh->mu);
    struct tui_snap *s = sh->snap;
    sh->snap = NULL;
    int done = sh->done, rc = sh->done_rc, quit = sh->done_quit;
    char err[QS_ERRLEN];
    snprintf(err, sizeof err, "%s", sh->done_err);
    if (done) {
        t->dirty_journal = sh->done_dirty;
        t->njournal = sh->done_njournal;
        sh->done = 0;
    }
    if (sh->log_dirty) {
        sh->log_dirty = 0;
        for (int p = 0; p < tui_npanes; p++)
            if (tui_pane_ops((enum tui_pane)p)->wants & TUI_WANT_LOG)
                t->dirty[p] = 1;
    }
    if (sh->prog_dirty) {
        sh->prog_dirty = 0;
        snprintf(t->prog_what, sizeof t->prog_what, "%s", sh->prog_what);
        t->prog_frac = sh->prog_frac;
        t->have_prog = 1;
        t->dirty_status = 1;
    }
    pthread_mutex_unlock(&sh->mu);
    if (s) {
        tui_snap_free(t->snap);
        t->snap = s;
        if (t->sel >= s->nlayers)
            t->sel = s->nlayers > 0 ? s->nlayers - 1 : 0;
        if (s->lowdim != t->lowdim_layout || (s->nlayers && s->nlayers != t->nl_layout))
            t->relayout = 1;
        for (int p = 0; p < tui_npanes; p++)
            if (tui_pane_ops((enum tui_pane)p)->wants & TUI_WANT_SNAP)
                t->dirty[p] = 1;
        t->dirty_status = t->dirty_prompt = 1; /* the key hints follow the model's family */
        if (s->have_model && s->spec_layer != t->sel && s->nlayers)
            tui_want_snapshot(t);
        if (s->lowdim && !t->relayout) {
            const struct tui_rect *r = &t->r[PANE_LOWDIM];
            int gw, gh;
            tui_lowdim_panel(r->h, r->w - r->sep, &gw, &gh);
            if (r->vis && (gw != s->gw || gh != s->gh))
                tui_want_snapshot(t);
        }
    }
    if (done) {
        t->busy = 0;
        t->have_prog = 0;
        t->dirty_status = 1;
        if (rc < 0) {
            char msg[QS_ERRLEN + 8];
            snprintf(msg, sizeof msg, "error: %s", err);
            tui_log_add(&t->sh, LOG_ERR, msg);
            drop_group(t, t->busy_group);
        }
        if (t->boot_group && t->busy_group == t->boot_group) {
            int more = 0; /* the model's load from the command line: not unsaved work */
            for (int i = 0; i < t->nq; i++)
                more |= t->q[i].group == t->boot_group;
            if (!more) {
                t->base_njournal = t->njournal;
                t->boot_group = 0;
            }
        }
        if (quit)
            tui_request_quit(t);
        else if (t->quit_after_job)
            tui_request_quit(t);
    }
}

/* ---- quitting ----------------------------------------------------------------------------- */

void tui_request_quit(struct tui *t)
{
    t->quit_after_job = 0;
    if (t->busy) { /* cancel first; ask again when the job has stopped */
        tui_cancel_job(t);
        t->quit_after_job = 1;
        return;
    }
    if (t->dirty_journal && t->njournal > t->base_njournal) {
        t->mode = MODE_CONFIRM;
        t->dirty_status = 1;
        return;
    }
    t->quit_now = 1;
}
