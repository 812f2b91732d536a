/* worker.c - the TUI's worker thread: it runs every command line the UI hands it (one at a time),
 * then copies what the panes show out of the bench into a snapshot (the view model) and passes
 * it to the UI under the mutex, waking the UI through the self-pipe. Results, notes and progress
 * reach the log and the progress bar the same way. */
#include "qscope/lmbench.h"
#include "tui_impl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double tui_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void tui_poke(struct tui_shared *sh)
{
    ssize_t r;
    do
        r = write(sh->wake_w, "x", 1);
    while (r < 0 && errno == EINTR);
    /* a full pipe (EAGAIN) already holds a wake-up */
}

/* ---- the log ------------------------------------------------------------------------------ */

/* Decodes one line of multibyte text (the locale's) into a new wide string; bytes that do not
 * decode become '?', control characters (tabs included) become spaces. */
static wchar_t *widen(const char *s, size_t len)
{
    wchar_t *w = malloc((len + 1) * sizeof *w);
    if (!w)
        return NULL;
    mbstate_t st;
    memset(&st, 0, sizeof st);
    size_t i = 0, n = 0;
    while (i < len) {
        wchar_t wc;
        size_t k = mbrtowc(&wc, s + i, len - i, &st);
        if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
            memset(&st, 0, sizeof st);
            wc = (unsigned char)s[i] < 0x80 && s[i] ? (wchar_t)s[i] : L'?';
            k = 1;
        }
        if (wc < 32 || wc == 127) /* a tab is a blank; other controls show (from files) */
            wc = wc == L'\t' ? L' ' : L'?';
        w[n++] = wc;
        i += k;
    }
    w[n] = 0;
    return w;
}

/* Unlocks sh and wakes the UI, at most every 30 ms: log lines and progress can come faster than
 * a redraw is worth. Called with sh->mu held. */
static void poke_unlock(struct tui_shared *sh)
{
    double now = tui_now();
    int poke = now - sh->last_poke > 0.03;
    if (poke)
        sh->last_poke = now;
    pthread_mutex_unlock(&sh->mu);
    if (poke)
        tui_poke(sh);
}

static void log_push(struct tui_log *lg, int kind, wchar_t *text)
{
    if (lg->n == TUI_LOG_MAX) {
        free(lg->v[lg->start].text);
        lg->start = (lg->start + 1) % TUI_LOG_MAX;
        lg->n--;
    }
    struct tui_logline *l = &lg->v[(lg->start + lg->n) % TUI_LOG_MAX];
    l->text = text;
    l->kind = kind;
    lg->n++;
    lg->total++;
}

void tui_log_add(struct tui_shared *sh, int kind, const char *text)
{
    if (!text)
        return;
    pthread_mutex_lock(&sh->mu);
    const char *p = text;
    for (;;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len || nl) { /* keep inner blank lines, drop a trailing newline's empty tail */
            wchar_t *w = widen(p, len);
            if (w)
                log_push(&sh->log, kind, w);
        }
        if (!nl || !nl[1])
            break;
        p = nl + 1;
    }
    sh->log_dirty = 1;
    poke_unlock(sh);
}

/* ---- callbacks installed on the context --------------------------------------------------- */

void tui_emit_cb(void *u, const cJSON *obj, const char *text)
{
    struct tui_worker *w = u;
    (void)obj; /* what the panes show is read from the bench (the snapshot), never from here */
    if (text && text[0])
        tui_log_add(w->sh, LOG_TEXT, text);
}

void tui_note_cb(void *u, const char *msg)
{
    struct tui_worker *w = u;
    tui_log_add(w->sh, !strncmp(msg, "error", 5) ? LOG_ERR : LOG_NOTE, msg);
}

void tui_progress_cb(void *u, const char *what, double frac)
{
    struct tui_worker *w = u;
    struct tui_shared *sh = w->sh;
    pthread_mutex_lock(&sh->mu);
    snprintf(sh->prog_what, sizeof sh->prog_what, "%s", what ? what : "");
    sh->prog_frac = frac;
    sh->prog_dirty = 1;
    poke_unlock(sh);
}

/* ---- the snapshot ------------------------------------------------------------------------- */

void tui_snap_free(struct tui_snap *s)
{
    if (!s)
        return;
    for (int i = 0; s->rows && i < s->nlayers; i++)
        free(s->rows[i].name);
    free(s->rows);
    free(s->sv);
    free(s->ref);
    free(s->res_sv);
    free(s->left_e);
    free(s->left_w);
    for (int k = 0; k < LD_N; k++)
        free(s->grid[k]);
    free(s->pts);
    free(s->plab);
    free(s);
}

/* The layers table: the same rows as the `layers` command (qs_layer_row_fill), names copied. */
static void snap_rows(struct qs_bench *b, struct tui_snap *s)
{
    for (int i = 0; i < s->nlayers; i++) {
        struct tui_row *r = &s->rows[i];
        qs_layer_row_fill(b, i, &r->l);
        r->name = qs_strdup(r->l.name);
        r->l.name = r->name;
        if (r->l.corr_method != QS_CORR_NONE && r->l.corr_method != QS_CORR_CLOCAL)
            s->any_corr = 1;
    }
}

static int snap_spectrum(struct qs_bench *b, struct tui_snap *s, int sel, qs_err *e)
{
    struct qs_unit unit, *l = &unit;
    qs_bench_unit(b, sel, &unit);
    int mn = l->out < l->in ? l->out : l->in, k = mn <= 256 ? 0 : 128;
    struct qs_spectrum sp;
    if (qs_analysis_spectrum_ex(b, sel, QS_SPEC_WEIGHT, QS_SCALE_NONE, k,
                                QS_SPEC_NULL | QS_SPEC_RESID, &sp, e) < 0)
        return -1;
    s->sm = sp.m;
    s->sn = sp.n;
    s->nsv = sp.nsv;
    s->exact = sp.exact;
    s->st = sp.st;
    s->sv = sp.sv;
    s->ref = sp.ref_sv;
    s->resid = sp.resid;
    snprintf(s->resid_method, sizeof s->resid_method, "%s", sp.resid_method ? sp.resid_method : "");
    s->res_sv = sp.res_sv;
    s->res_st = sp.res_st;
    sp.sv = sp.ref_sv = sp.res_sv = NULL;
    qs_spectrum_free(&sp);
    const float *lw = qs_bench_w(b, sel, e);
    if (!lw)
        return -1;
    double f2 = 0;
    for (size_t j = 0; j < (size_t)l->out * l->in; j++)
        f2 += (double)lw[j] * lw[j];
    s->w_fro2 = f2;
    s->left_e = malloc((size_t)(s->nsv + 1) * sizeof(double));
    s->left_w = malloc((size_t)(s->nsv + 1) * sizeof(double));
    if (!s->left_e || !s->left_w)
        return qs_errf(e, "out of memory");
    qs_energy_left(s->sv, s->nsv, s->st.fro2, s->nsv, s->left_e);
    qs_energy_left(s->ref, s->nsv, f2, s->nsv, s->left_w);
    s->spec_ok = 1;
    return 0;
}

/* Copies the selected site's spectrum (or the reason there is none) of src into dst: a stage's
 * spectrum, computed once, goes into every snapshot of the job. */
static int spec_copy(struct tui_snap *d, const struct tui_snap *src)
{
    snprintf(d->spec_msg, sizeof d->spec_msg, "%s", src->spec_msg);
    if (!src->spec_ok)
        return 0;
    size_t n = (size_t)src->nsv, n1 = n + 1;
    d->sv = malloc(n1 * sizeof(double));
    d->ref = malloc(n1 * sizeof(double));
    d->res_sv = src->res_sv ? malloc(n1 * sizeof(double)) : NULL;
    d->left_e = malloc(n1 * sizeof(double));
    d->left_w = malloc(n1 * sizeof(double));
    if (!d->sv || !d->ref || (src->res_sv && !d->res_sv) || !d->left_e || !d->left_w) {
        snprintf(d->spec_msg, sizeof d->spec_msg, "out of memory");
        return -1; /* tui_snap_free frees what was allocated */
    }
    memcpy(d->sv, src->sv, n * sizeof(double));
    memcpy(d->ref, src->ref, n * sizeof(double));
    if (src->res_sv)
        memcpy(d->res_sv, src->res_sv, n * sizeof(double));
    memcpy(d->left_e, src->left_e, n1 * sizeof(double));
    memcpy(d->left_w, src->left_w, n1 * sizeof(double));
    d->sm = src->sm;
    d->sn = src->sn;
    d->nsv = src->nsv;
    d->exact = src->exact;
    d->st = src->st;
    d->w_fro2 = src->w_fro2;
    d->resid = src->resid;
    snprintf(d->resid_method, sizeof d->resid_method, "%s", src->resid_method);
    d->res_st = src->res_st;
    d->spec_ok = 1;
    return 0;
}

/* Class predicted for every input row x: (n, 2) by the model with the layer-wise choice quant
 * (QS_ROLE_* mask) and corrections on or off. */
static int classify(struct qs_bench *b, const float *x, int n, int quant, int corr,
                    unsigned char *out, qs_err *e)
{
    const struct qs_mlp *m = b->model;
    int width = qs_mlp_max_width(m);
    float *cur = malloc((size_t)n * width * sizeof(float));
    float *nxt = malloc((size_t)n * width * sizeof(float));
    int rc = 0;
    if (!cur || !nxt) {
        rc = qs_errf(e, "out of memory");
        goto out;
    }
    memcpy(cur, x, (size_t)n * m->layers[0].in * sizeof(float));
    for (int i = 0; i < m->nlayers; i++) {
        if ((rc = qs_bench_layer_forward(b, i, cur, n, quant, corr, nxt, e)) < 0)
            goto out;
        qs_act_apply(m->layers[i].act, nxt, (size_t)n * m->layers[i].out);
        float *t = cur;
        cur = nxt;
        nxt = t;
    }
    int c = m->layers[m->nlayers - 1].out;
    for (int r = 0; r < n; r++) {
        int best = 0;
        for (int j = 1; j < c; j++)
            if (cur[(size_t)r * c + j] > cur[(size_t)r * c + best])
                best = j;
        out[r] = (unsigned char)(best > 255 ? 255 : best);
    }
out:
    free(cur);
    free(nxt);
    return rc;
}

/* What every snapshot of a loaded model has: names, the layers table (MLP layers or transformer
 * sites), the layer the spectrum is for (also when it cannot be computed: the UI compares it
 * with its selection to decide whether to ask again), bits per weight and the regime. */
static int snap_header(struct qs_bench *b, struct tui_snap *s, int sel)
{
    s->have_model = 1;
    s->lm = b->lm != NULL;
    snprintf(s->model, sizeof s->model, "%s", b->model_path ? b->model_path : "(trained here)");
    s->have_data = b->data != NULL || b->tokens != NULL;
    if (s->have_data)
        snprintf(s->data, sizeof s->data, "%s", b->data_path ? b->data_path : "");
    s->nlayers = qs_bench_nunits(b);
    s->rows = calloc((size_t)(s->nlayers ? s->nlayers : 1), sizeof *s->rows);
    if (!s->rows) {
        s->nlayers = 0;
        snprintf(s->err, sizeof s->err, "out of memory");
        return -1;
    }
    snap_rows(b, s);
    if (sel >= s->nlayers)
        sel = s->nlayers - 1;
    s->spec_layer = sel < 0 ? 0 : sel;
    s->bpw = qs_bench_bits_per_weight(b);
    snprintf(s->regime, sizeof s->regime, "%s", qs_regime_name(qs_bench_effective_regime(b)));
    return 0;
}

/* eval's figures with the corrections in cmask on (every site quantized). */
static int lm_eval_of(struct qs_bench *b, uint64_t cmask, struct qs_lm_eval *ev, qs_err *e)
{
    struct qs_metric m;
    double kl, agree;
    struct qs_lm_gate g;
    if (qs_bench_run_ex(b, QS_TEST, ~0ULL, cmask, &m, NULL, &kl, &agree, e) < 0 ||
        qs_bench_lm_gate(b, &g, e) < 0)
        return -1;
    *ev = (struct qs_lm_eval){g.float_loss, exp(g.float_loss), m.loss, exp(m.loss), kl, agree, m.n};
    return 0;
}

/* Eval's figures for a transformer: float vs quantized (with the corrections, as `eval` reports
 * them), the gate, and with corrections in place the quantized model without any of them, as
 * the MLP's q_raw. */
static int snap_lm_eval(struct tui_worker *w, struct qs_bench *b, struct tui_snap *s, qs_err *e)
{
    if (w->lm_have && w->lm_gen == w->state_gen && w->lm_m == (const void *)b->lm &&
        w->lm_t == (const void *)b->tokens) {
        s->lev = w->lev;
        s->lev_raw = w->lev_raw;
        s->lgate = w->lgate;
        return 0;
    }
    w->lm_have = 0;
    int rc = lm_eval_of(b, ~0ULL, &s->lev, e);
    if (rc == 0 && qs_bench_lm_gate(b, &s->lgate, e) < 0)
        return -1;
    s->lev_raw = s->lev;
    if (rc == 0 && s->any_corr)
        rc = lm_eval_of(b, 0, &s->lev_raw, e);
    if (rc == 0) {
        w->lev = s->lev;
        w->lev_raw = s->lev_raw;
        w->lgate = s->lgate;
        w->lm_gen = w->state_gen;
        w->lm_m = b->lm;
        w->lm_t = b->tokens;
        w->lm_have = 1;
    }
    return rc;
}

/* Each layer's pre-activation error (the `error` command's figures) into its row. */
static int snap_errors(struct qs_bench *b, struct tui_snap *s, qs_err *e)
{
    struct qs_layer_err *err = calloc((size_t)s->nlayers, sizeof *err);
    if (!err)
        return qs_errf(e, "out of memory");
    int rc = qs_analysis_errors(b, err, e);
    for (int i = 0; rc == 0 && i < s->nlayers; i++) {
        s->rows[i].snr_db = err[i].snr_db;
        s->rows[i].preact_rel_mse = err[i].preact_rel_mse;
        s->rows[i].has_err = 1;
    }
    free(err);
    return rc;
}

/* A transformer: its linear sites in the layers table, the weight-error spectrum of the selected
 * one, and (with token data) the per-site errors and eval's task figures, as the panes want. */
static struct tui_snap *snap_lm(struct tui_worker *w, struct qs_bench *b, struct tui_snap *s,
                                int wants, const struct tui_snap *spec)
{
    qs_err e = {{0}};
    if ((wants & TUI_WANT_SPECTRUM) && spec)
        (void)spec_copy(s, spec);
    else if ((wants & TUI_WANT_SPECTRUM) && snap_spectrum(b, s, s->spec_layer, &e) < 0)
        snprintf(s->spec_msg, sizeof s->spec_msg, "%s", e.msg);
    if (!b->tokens) {
        snprintf(s->err, sizeof s->err, "transformer: load data PATH.txt|.bin, then eval");
        return s;
    }
    if (wants & TUI_WANT_ERRORS)
        (void)snap_errors(b, s, &e); /* as before: eval's message, if any, is the one shown */
    e.msg[0] = 0;
    if (!(wants & TUI_WANT_EVAL))
        return s;
    if (snap_lm_eval(w, b, s, &e) < 0)
        snprintf(s->err, sizeof s->err, "%s", e.msg);
    else
        s->have_eval = 1;
    return s;
}

static int snap_lowdim(struct qs_bench *b, struct tui_snap *s, int gw, int gh, qs_err *e)
{
    const struct qs_dataset *d = b->data;
    if (gw < 2 || gh < 2) {
        gw = 30;
        gh = 10;
    }
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < d->n; i++) {
        double x = d->x[(size_t)i * 2], y = d->x[(size_t)i * 2 + 1];
        x0 = fmin(x0, x);
        x1 = fmax(x1, x);
        y0 = fmin(y0, y);
        y1 = fmax(y1, y);
    }
    if (!(x1 > x0))
        x1 = x0 + 1;
    if (!(y1 > y0))
        y1 = y0 + 1;
    double mx = 0.06 * (x1 - x0), my = 0.06 * (y1 - y0);
    s->x0 = x0 - mx;
    s->x1 = x1 + mx;
    s->y0 = y0 - my;
    s->y1 = y1 + my;
    s->gw = gw;
    s->gh = gh;
    int n = gw * gh;
    float *x = malloc((size_t)n * 2 * sizeof(float));
    if (!x)
        return qs_errf(e, "out of memory");
    for (int r = 0; r < gh; r++)
        for (int c = 0; c < gw; c++) {
            x[(size_t)(r * gw + c) * 2] = (float)(s->x0 + (c + 0.5) / gw * (s->x1 - s->x0));
            x[(size_t)(r * gw + c) * 2 + 1] = (float)(s->y1 - (r + 0.5) / gh * (s->y1 - s->y0));
        }
    static const int quant[LD_N] = {0, QS_ROLE_W | QS_ROLE_A, QS_ROLE_W | QS_ROLE_A};
    static const int corr[LD_N] = {0, 0, 1};
    int rc = 0;
    for (int k = 0; k < LD_N && rc == 0; k++) {
        if (!(s->grid[k] = malloc((size_t)n)))
            rc = qs_errf(e, "out of memory");
        else
            rc = classify(b, x, n, quant[k], corr[k], s->grid[k], e);
    }
    free(x);
    if (rc < 0)
        return -1;
    /* the test split's points (at most 400) */
    int np = b->split.n_test < 400 ? b->split.n_test : 400;
    s->pts = malloc((size_t)(np ? np : 1) * 2 * sizeof(float));
    s->plab = malloc((size_t)(np ? np : 1) * sizeof(int));
    if (!s->pts || !s->plab)
        return qs_errf(e, "out of memory");
    qs_dataset_gather(d, b->split.test, np, s->pts, s->plab);
    s->npts = np;
    s->nclass = d->nclass;
    s->ld_acc[LD_FLOAT] = s->ev.f.acc;
    s->ld_acc[LD_QUANT] = s->q_raw.acc;
    s->ld_acc[LD_CORR] = s->ev.q.acc;
    s->lowdim = 1;
    return 0;
}

struct tui_snap *tui_snap_build(struct tui_worker *w, int sel, int ld_w, int ld_h,
                                const struct tui_snap *spec)
{
    struct qs_bench *b = w->c->b;
    struct tui_snap *s = calloc(1, sizeof *s);
    qs_err e = {{0}};
    if (!s)
        return NULL;
    s->spec_layer = -1;
    if (!b->model && !b->lm)
        return s;
    if (snap_header(b, s, sel) < 0)
        return s;
    sel = s->spec_layer;
    int wants = tui_panes_want();
    if (b->lm)
        return snap_lm(w, b, s, wants, spec && spec->spec_layer == sel ? spec : NULL);
    if (!b->data) {
        snprintf(s->err, sizeof s->err, "no data loaded (load data PATH)");
        return s;
    }
    if (qs_bench_ready(b, &e) < 0) {
        snprintf(s->err, sizeof s->err, "%s", e.msg);
        return s;
    }
    s->ready = 1;
    if ((wants & TUI_WANT_ERRORS) && snap_errors(b, s, &e) < 0 && !s->err[0])
        snprintf(s->err, sizeof s->err, "%s", e.msg);
    if (wants & (TUI_WANT_EVAL | TUI_WANT_GRID)) {
        if (qs_bench_eval(b, &s->ev, &e) == 0 &&
            qs_bench_run(b, QS_TEST, ~0ULL, 0, &s->q_raw, NULL, &e) == 0) {
            s->have_eval = 1;
            s->gate_thr = s->ev.chance + b->gate_min * (1 - s->ev.chance);
        } else if (!s->err[0]) {
            snprintf(s->err, sizeof s->err, "%s", e.msg);
        }
    }
    if ((wants & TUI_WANT_SPECTRUM) && snap_spectrum(b, s, sel, &e) < 0)
        snprintf(s->spec_msg, sizeof s->spec_msg, "%s", e.msg);
    if ((wants & TUI_WANT_GRID) && b->model->layers[0].in == 2 && b->data->d == 2 && s->have_eval &&
        snap_lowdim(b, s, ld_w, ld_h, &e) < 0 && !s->err[0])
        snprintf(s->err, sizeof s->err, "%s", e.msg);
    return s;
}

/* ---- a transformer's figures in stages ------------------------------------------------------
 * After a command (or on a new selection) whose figures are not kept, a transformer's snapshot
 * comes in stages, each published as soon as it is computed:
 *   1. the layers table (sites, formats, bits per weight, weight errors: no forward pass), at
 *      once; then the selected site's weight-error spectrum and rank profile (both from the
 *      weight error alone) when nothing the calibration decides is pending (a method, a static
 *      activation scale): a format switch shows its spectrum in about a second on GPT-2-small;
 *   2. a preview when the full calibration is costly (parameters x calibration tokens above
 *      preview_min, 1e11 by default: GPT-2-small's 124M x 8 x 1024 is 1e12, the bundled models
 *      are below 1e8): every site's errors on the first 2 calibration windows (none with
 *      `set calib 2` or less: the full pass is as cheap), computed beside the session's calibration
 *      (qs_bench_calib_peek_begin: `set calib`, the journal and the caches of the full
 *      calibration stay as they were), marked as a preview in the panes;
 *   3. the full figures: the errors over the whole calibration and eval on the held-out windows.
 * A new job arriving while stages 2-3 run cancels them (jobs.c), as Ctrl-C does. */

/* Whether the selected site's spectrum needs no forward pass now: qs_analysis_spectrum_ex brings
 * the bench up to date first, which runs the calibration for a pending method or static scale. */
static int spectrum_cheap(const struct qs_bench *b)
{
    for (int i = 0; i < qs_bench_nunits(b); i++) {
        const struct qs_layer_state *l = &b->ls[i];
        if (l->mpending ||
            (l->afmt.kind != QS_FMT_NONE && l->amode == QS_AMODE_STATIC && !(l->a_static_amax > 0)))
            return 0;
    }
    return 1;
}

/* The spectrum of site sel in a snapshot of its own (spec_ok, or spec_msg why not), or NULL when
 * it would need a forward pass now (or no pane wants it). */
static struct tui_snap *spectrum_of(struct qs_bench *b, int sel)
{
    if (!(tui_panes_want() & TUI_WANT_SPECTRUM) || !spectrum_cheap(b) || sel < 0 ||
        sel >= qs_bench_nunits(b))
        return NULL;
    struct tui_snap *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NULL;
    qs_err e = {{0}};
    sp->spec_layer = sel;
    if (snap_spectrum(b, sp, sel, &e) < 0)
        snprintf(sp->spec_msg, sizeof sp->spec_msg, "%s", e.msg);
    return sp;
}

/* A stage's snapshot: names, the layers table, the spectrum when computed (spec), and in the
 * task pane what is still coming. */
static struct tui_snap *snap_stage(struct tui_worker *w, int sel, int stage,
                                   const struct tui_snap *spec)
{
    struct qs_bench *b = w->c->b;
    struct tui_snap *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->spec_layer = -1;
    if (snap_header(b, s, sel) < 0)
        return s;
    s->stage = stage;
    snprintf(s->err, sizeof s->err, "%s",
             b->tokens ? "computing errors and eval..." /* the status line shows progress */
                       : "transformer: load data PATH.txt|.bin, then eval");
    if (spec && spec->spec_layer == s->spec_layer)
        (void)spec_copy(s, spec);
    else
        snprintf(s->spec_msg, sizeof s->spec_msg, "computing...");
    return s;
}

/* Whether a preview comes first, and on how many (*pn) of the calibration's windows (*cw). */
static int preview_windows(const struct tui_worker *w, struct qs_bench *b, int *pn, int *cw)
{
    if (!(tui_panes_want() & TUI_WANT_ERRORS) || qs_bench_lm_ready(b, &(qs_err){{0}}) < 0)
        return 0;
    size_t off;
    qs_bench_lm_split(b, &off, cw);
    *pn = *cw < 2 ? *cw : 2;
    if (*pn >= *cw)
        return 0; /* `set calib 2` or less: the full pass is the preview's */
    int S = qs_bench_nunits(b);
    if (b->errc && b->errc->nsites == S && b->errc->valid >= S)
        return 0; /* the full errors are kept: nothing to wait for */
    return (double)qs_lm_nparams(b->lm) * *cw * b->lm->ctx > w->preview_min;
}

static int preview_kept(const struct tui_worker *w, const struct qs_bench *b, int pn, int S)
{
    return w->pv_have && w->pv_gen == w->state_gen && w->pv_m == (const void *)b->lm &&
           w->pv_t == (const void *)b->tokens && w->pv_n == pn && w->pv_nsites == S;
}

/* Every site's errors on the first pn of the cw calibration windows into s's rows, s marked as
 * the preview: the figures kept for this state (a new selection shows them again without a
 * pass), else (compute) computed now. 1 when s has them, 0 when not kept (compute 0), -1 with
 * e when they could not be computed (cancelled). */
static int stage_preview(struct tui_worker *w, struct qs_bench *b, struct tui_snap *s, int pn,
                         int cw, int compute, qs_err *e)
{
    int S = s->nlayers;
    if (!preview_kept(w, b, pn, S)) {
        if (!compute)
            return 0;
        w->pv_have = 0;
        free(w->pv_snr);
        free(w->pv_mse);
        w->pv_snr = malloc((size_t)(S ? S : 1) * sizeof(double));
        w->pv_mse = malloc((size_t)(S ? S : 1) * sizeof(double));
        struct qs_layer_err *err = calloc((size_t)(S ? S : 1), sizeof *err);
        if (!w->pv_snr || !w->pv_mse || !err) {
            free(err);
            return qs_errf(e, "out of memory");
        }
        struct qs_calib_aside a;
        int rc = qs_bench_calib_peek_begin(b, pn, &a, e);
        if (rc == 0) {
            rc = qs_analysis_errors_ex(b, err, QS_KL_OFF, e);
            qs_bench_calib_peek_end(b, &a);
        }
        for (int i = 0; rc == 0 && i < S; i++) {
            w->pv_snr[i] = err[i].snr_db;
            w->pv_mse[i] = err[i].preact_rel_mse;
        }
        free(err);
        if (rc < 0)
            return -1;
        w->pv_have = 1;
        w->pv_gen = w->state_gen;
        w->pv_m = b->lm;
        w->pv_t = b->tokens;
        w->pv_n = pn;
        w->pv_nsites = S;
    }
    for (int i = 0; i < S; i++) {
        s->rows[i].snr_db = w->pv_snr[i];
        s->rows[i].preact_rel_mse = w->pv_mse[i];
        s->rows[i].has_err = 1;
    }
    s->stage = STAGE_PREVIEW;
    s->pv_n = pn;
    s->pv_of = cw;
    snprintf(s->err, sizeof s->err,
             "preview: errors on %d of %d calibration windows; full pass running (Ctrl-C "
             "cancels)",
             pn, cw);
    return 1;
}

/* For tests (QSCOPE_TUI_PREVIEW_HOLD=PATH): after publishing a stage, the worker waits until PATH
 * exists, then removes it, so that a test sees every stage on the screen however fast it is. */
static void hold(struct tui_worker *w)
{
    if (!w->hold)
        return;
    while (!w->c->b->cancel && access(w->hold, F_OK) != 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    unlink(w->hold);
}

static void publish(struct tui_shared *sh, struct tui_snap *s)
{
    pthread_mutex_lock(&sh->mu);
    tui_snap_free(sh->snap);
    s->gen = ++sh->gen;
    sh->snap = s;
    pthread_mutex_unlock(&sh->mu);
    tui_poke(sh);
}

void tui_publish_loading(struct tui_shared *sh, const struct qs_lm *m)
{
    struct tui_snap *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->have_model = s->lm = 1;
    s->stage = STAGE_LOADING;
    snprintf(s->model, sizeof s->model, "%s", m->path);
    s->rows = calloc((size_t)(m->nsites ? m->nsites : 1), sizeof *s->rows);
    s->nlayers = s->rows ? m->nsites : 0;
    for (int i = 0; i < s->nlayers; i++) {
        struct tui_row *r = &s->rows[i];
        r->name = qs_strdup(m->sites[i].name);
        qs_layer_row_plain(r->name ? r->name : "?", m->sites[i].out, m->sites[i].in, &r->l);
    }
    s->bpw = 32.0; /* float, as every fresh site (qs_bench_bits_per_weight) */
    snprintf(s->err, sizeof s->err, "loading the weights; errors and eval follow");
    snprintf(s->spec_msg, sizeof s->spec_msg, "loading the weights...");
    publish(sh, s);
}

/* ---- the thread --------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    struct tui_worker *w = arg;
    struct tui_shared *sh = w->sh;
    for (;;) {
        pthread_mutex_lock(&sh->mu);
        while (!sh->have_job && !sh->stop)
            pthread_cond_wait(&sh->cv, &sh->mu);
        if (!sh->have_job) {
            pthread_mutex_unlock(&sh->mu);
            break;
        }
        int kind = sh->job_kind, sel = sh->job_sel, ldw = sh->ld_w, ldh = sh->ld_h;
        int later = sh->job_later;
        char *line = sh->job_line;
        sh->job_line = NULL;
        sh->have_job = 0;
        pthread_mutex_unlock(&sh->mu);

        struct qs_ctx *c = w->c;
        struct qs_bench *b = c->b;
        qs_err e = {{0}};
        int rc = 0, rebuild = 1;
        if (kind == JOB_LINE && line) {
            /* the command's reaction flag says whether the panes need new figures: error,
             * spectrum, eval, help, export ... change nothing they show */
            rebuild = (qs_cmd_line_flags(c, line) & QS_CMD_RECALC) != 0;
            b->cancel = 0;
            if (w->boot_hold) { /* tests: the loading table stays; a Ctrl-C now cancels the load */
                w->boot_hold = 0;
                hold(w);
            }
            rc = qs_exec_line(c, line, &e);
            if (rebuild)
                w->state_gen++;
            /* the group's next command shows its figures, unless this one failed (the rest of
             * the group is dropped) */
            if (later && rc == 0)
                rebuild = 0;
        }
        /* a staged build that a job cancelled: this job shows the figures again */
        rebuild |= w->stale;
        w->stale = 0;
        /* a transformer whose figures are not cached: its figures in stages (see above) */
        struct tui_snap *spec = NULL;
        if (rebuild && b->lm && b->tokens && !(w->lm_have && w->lm_gen == w->state_gen)) {
            int pn = 0, cw = 0, pv = preview_windows(w, b, &pn, &cw);
            struct tui_snap *q = snap_stage(w, sel, STAGE_QUICK, NULL);
            if (q && pv) /* a preview kept for this state shows at once */
                (void)stage_preview(w, b, q, pn, cw, 0, NULL);
            if (q)
                publish(sh, q);
            pthread_mutex_lock(&sh->mu);
            sh->staging = 1;
            pthread_mutex_unlock(&sh->mu);
            if ((spec = spectrum_of(b, q ? q->spec_layer : sel))) {
                if ((q = snap_stage(w, sel, STAGE_QUICK, spec)) && pv)
                    (void)stage_preview(w, b, q, pn, cw, 0, NULL);
                if (q)
                    publish(sh, q);
                hold(w);
            }
            if (pv && !b->cancel) {
                struct tui_snap *p = snap_stage(w, sel, STAGE_PREVIEW, spec);
                qs_err pe = {{0}};
                if (p && p->nlayers && stage_preview(w, b, p, pn, cw, 1, &pe) == 1 && !b->cancel) {
                    if (!spec && (spec = spectrum_of(b, p->spec_layer))) /* methods now fitted */
                        (void)spec_copy(p, spec);
                    publish(sh, p);
                    hold(w);
                } else {
                    tui_snap_free(p);
                }
            }
        }
        pthread_mutex_lock(&sh->mu);
        int superseded = sh->superseded && b->cancel;
        pthread_mutex_unlock(&sh->mu);
        /* (cancelled by Ctrl-C, the full stage says so in its panes, as before) */
        struct tui_snap *s = rebuild && !superseded ? tui_snap_build(w, sel, ldw, ldh, spec) : NULL;
        tui_snap_free(spec);
        pthread_mutex_lock(&sh->mu);
        if (sh->staging && sh->superseded && b->cancel) { /* the next job shows it again */
            tui_snap_free(s);
            s = NULL;
            w->stale = 1;
        }
        sh->staging = sh->superseded = 0;
        b->cancel = 0;
        if (s) {
            tui_snap_free(sh->snap);
            s->gen = ++sh->gen;
            sh->snap = s;
        }
        sh->done = 1;
        sh->done_rc = rc;
        snprintf(sh->done_err, sizeof sh->done_err, "%s", rc < 0 ? e.msg : "");
        sh->done_quit = c->quit;
        c->quit = 0; /* the UI decides (it asks when work is unsaved) */
        sh->done_dirty = c->dirty;
        sh->done_njournal = c->njournal;
        pthread_mutex_unlock(&sh->mu);
        tui_poke(sh);
        free(line);
    }
    return NULL;
}

int tui_worker_start(struct tui_worker *w, struct qs_ctx *c, struct tui_shared *sh)
{
    memset(w, 0, sizeof *w);
    w->c = c;
    w->sh = sh;
    w->preview_min = 1e11;
    const char *pm = getenv("QSCOPE_TUI_PREVIEW_MIN");
    if (pm && pm[0]) {
        char *end;
        double v = strtod(pm, &end);
        if (end != pm && !*end && v >= 0)
            w->preview_min = v;
    }
    const char *hd = getenv("QSCOPE_TUI_PREVIEW_HOLD");
    w->hold = hd && hd[0] ? hd : NULL;
    if (pthread_create(&w->th, NULL, worker_main, w) != 0)
        return -1;
    w->started = 1;
    return 0;
}

void tui_worker_stop(struct tui_worker *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->sh->mu);
    w->sh->stop = 1;
    pthread_cond_broadcast(&w->sh->cv);
    pthread_mutex_unlock(&w->sh->mu);
    pthread_join(w->th, NULL);
    w->started = 0;
    free(w->pv_snr);
    free(w->pv_mse);
    w->pv_snr = w->pv_mse = NULL;
    w->pv_have = 0;
}

void tui_worker_submit(struct tui_worker *w, int kind, const char *line, int sel, int later)
{
    struct tui_shared *sh = w->sh;
    pthread_mutex_lock(&sh->mu);
    sh->job_later = later;
    free(sh->job_line);
    sh->job_line = line ? qs_strdup(line) : NULL;
    sh->job_kind = kind;
    sh->job_sel = sel;
    sh->have_job = 1;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}
