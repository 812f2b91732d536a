/* lm_train.c - AdamW training of the transformers on random context windows (lm_train.h). */
#include "qscope/lm_train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lm_grad.h"

void qs_lm_train_defaults(struct qs_lm_train_opts *o)
{
    *o = (struct qs_lm_train_opts){.steps = 1000,
                                   .batch = 16,
                                   .ctx = 0,
                                   .warmup = 100,
                                   .lr = 3e-3,
                                   .min_lr = 3e-4,
                                   .wd = 0.1,
                                   .beta1 = 0.9,
                                   .beta2 = 0.95,
                                   .eps = 1e-8,
                                   .clip = 1.0,
                                   .seed = 1,
                                   .init = 1,
                                   .eval_every = 0};
}

static int warmup_steps(const struct qs_lm_train_opts *o)
{
    int w = o->warmup, cap = o->steps / 10;
    return w < cap ? w : cap;
}

double qs_lm_train_lr(const struct qs_lm_train_opts *o, int step)
{
    int w = warmup_steps(o);
    if (step < w)
        return o->lr * (step + 1) / w;
    int rest = o->steps - w - 1;
    double p = rest > 0 ? (double)(step - w) / rest : 1.0;
    if (p > 1)
        p = 1;
    return o->min_lr + (o->lr - o->min_lr) * 0.5 * (1.0 + cos(M_PI * p));
}

/* The projections into the residual stream get the GPT-2 paper's 1 / sqrt(2 n_layer). */
static int residual_proj(const char *name)
{
    static const char *const sfx[] = {"attn.c_proj.weight", "mlp.c_proj.weight", "o_proj.weight",
                                      "down_proj.weight", NULL};
    size_t n = strlen(name);
    for (int i = 0; sfx[i]; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && !strcmp(name + n - k, sfx[i]))
            return 1;
    }
    return 0;
}

struct qs_adamw qs_adamw_at(int s, double lr, double wd, double beta1, double beta2, double eps,
                            float clip)
{
    double bc1 = 1.0 - pow(beta1, s + 1), bc2 = 1.0 - pow(beta2, s + 1);
    struct qs_adamw k = {.clip = clip,
                         .a = (float)(lr / bc1),
                         .ib2 = (float)(1.0 / sqrt(bc2)),
                         .b1 = (float)beta1,
                         .b2 = (float)beta2,
                         .eps = (float)eps,
                         .decay = (float)(1.0 - lr * wd)};
    return k;
}

void qs_adamw_update(struct qs_lm_tensor *t, float *mm, float *vv, const struct qs_adamw *k)
{
    const float decay = t->cols ? k->decay : 1.0f, b1 = k->b1, b2 = k->b2;
    for (size_t j = 0; j < t->n; j++) {
        float gk = t->grad[j] * k->clip;
        mm[j] = b1 * mm[j] + (1.0f - b1) * gk;
        vv[j] = b2 * vv[j] + (1.0f - b2) * gk * gk;
        t->val[j] = t->val[j] * decay - k->a * mm[j] / (sqrtf(vv[j]) * k->ib2 + k->eps);
    }
}

void qs_lm_init(struct qs_lm *m, uint64_t seed)
{
    qs_err e;
    if (qs_lm_materialize(m, &e) < 0) /* its weights are written */
        return;
    struct qs_lm_grad *g = qs_lm_grad_new(m, &e); /* for its tensor list */
    if (!g)
        return;
    qs_rng r;
    qs_rng_seed(&r, seed ^ 0x1417a1bULL);
    double sp = 0.02 / sqrt(2.0 * m->n_layer);
    for (int i = 0; i < g->ntensor; i++) {
        struct qs_lm_tensor *t = &g->t[i];
        int bias = strstr(t->name, ".bias") != NULL;
        if (!t->cols) { /* norm gains 1, norm and linear biases 0 */
            for (size_t k = 0; k < t->n; k++)
                t->val[k] = bias ? 0.0f : 1.0f;
            continue;
        }
        double sd = residual_proj(t->name) ? sp : 0.02;
        for (size_t k = 0; k < t->n; k++)
            t->val[k] = (float)(sd * qs_rng_normal(&r));
    }
    qs_lm_grad_free(g);
}

/* o's refresh, when it has one: the hooks follow m's current weights */
static int refresh(const struct qs_lm_train_opts *o, qs_err *e)
{
    return o->refresh ? o->refresh(o->hooks_u, e) : 0;
}

static int validate(const struct qs_lm *m, const uint32_t *val, size_t n,
                    const struct qs_lm_train_opts *o, double *loss, long *nt, qs_err *e)
{
    struct qs_lm_eval ev;
    if (!val) {
        *loss = NAN;
        *nt = 0;
        return 0;
    }
    if (refresh(o, e) < 0 || qs_lm_evaluate(m, val, n, 0, o->hooks, NULL, &ev, e) < 0)
        return qs_err_prefix(e, "validation");
    *loss = ev.loss;
    *nt = ev.ntok;
    return 0;
}

int qs_lm_train(struct qs_lm *m, const uint32_t *train, size_t n_train, const uint32_t *val,
                size_t n_val, const struct qs_lm_train_opts *o, qs_lm_train_cb cb, void *u,
                struct qs_lm_train_result *r, qs_err *e)
{
    memset(r, 0, sizeof *r);
    int T = o->ctx ? o->ctx : m->ctx, B = o->batch;
    if (T < 1 || T > m->n_pos)
        return qs_errf(e, "train: ctx %d is outside 1 .. %d (the model's context)", T, m->n_pos);
    if (o->steps < 1 || B < 1)
        return qs_errf(e, "train: steps and batch must be at least 1");
    if (n_train < (size_t)T + 2)
        return qs_errf(e, "train: %zu training tokens are too few for windows of %d", n_train,
                       T + 1);
    if (!(o->lr > 0) || !(o->min_lr >= 0) || !(o->wd >= 0) || !(o->clip >= 0) ||
        !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) || !(o->eps > 0))
        return qs_errf(e, "train: lr must be positive; min_lr, wd and clip not negative");
    for (size_t i = 0; i < n_train; i++)
        if (train[i] >= (uint32_t)m->vocab)
            return qs_errf(e, "train: token %u at %zu is outside the vocabulary (%d)", train[i], i,
                           m->vocab);
    size_t sb;
    if (qs_lm_backward_bytes(m, B, T, o->hooks && o->hooks->act, &sb) < 0)
        return qs_errf(e, "train: batch %d of %d tokens overflows", B, T);
    if (qs_lm_materialize(m, e) < 0) /* its weights are written */
        return -1;
    struct qs_lm_grad *g = qs_lm_grad_new(m, e);
    if (!g)
        return -1;
    g->head = o->head;
    /* Adam's moments, and the backward's scratch counted in the check */
    float *mom = NULL;
    size_t need;
    if (qs_size_mul(g->nflat, 2 * sizeof(float), &need) < 0 || qs_size_add(need, sb, &need) < 0 ||
        qs_mem_check(need, "training (Adam's moments and the backward)", e) < 0 ||
        !(mom = qs_alloc(g->nflat, 2 * sizeof(float), "Adam's moments", e))) {
        qs_lm_grad_free(g);
        return -1;
    }
    float *v2 = mom + g->nflat, *work = qs_alloc(sb, 1, "the backward's activations", e);
    size_t *start = malloc((size_t)B * sizeof *start);
    int rc = start && work ? 0 : qs_errf(e, "out of memory");
    if (rc == 0 && o->init)
        qs_lm_init(m, o->seed);
    if (rc == 0)
        rc = validate(m, val, n_val, o, &r->val_loss0, &r->val_tokens, e);
    qs_rng rng;
    qs_rng_seed(&rng, o->seed ^ 0x77a1e5ULL);
    size_t span = n_train - (size_t)T - 1; /* starts 0 .. span - 1: targets stay in train */
    int tail = o->steps < 50 ? o->steps : 50;
    double tail_sum = 0;
    for (int s = 0; rc == 0 && s < o->steps; s++) {
        for (int b = 0; b < B; b++)
            start[b] = (size_t)qs_rng_below(&rng, span);
        double loss;
        qs_lm_grad_zero(g);
        if ((rc = refresh(o, e)) < 0 ||
            (rc = qs_lm_backward(m, train, start, B, T, o->hooks, g, &loss, work, e)) < 0)
            break;
        if (!isfinite(loss)) {
            rc = qs_errf(e, "train: the loss diverged at step %d (lower lr)", s + 1);
            break;
        }
        double nrm = 0;
        if (o->grad_extra && (rc = o->grad_extra(o->hooks_u, g, &nrm, e)) < 0)
            break;
        for (size_t i = 0; i < g->nflat; i++)
            nrm += (double)g->flat[i] * g->flat[i];
        nrm = sqrt(nrm);
        float sc = o->clip > 0 && nrm > o->clip ? (float)(o->clip / nrm) : 1.0f;
        double lr = qs_lm_train_lr(o, s);
        const struct qs_adamw k = qs_adamw_at(s, lr, o->wd, o->beta1, o->beta2, o->eps, sc);
        size_t off = 0;
        for (int i = 0; i < g->ntensor; i++) {
            qs_adamw_update(&g->t[i], mom + off, v2 + off, &k);
            off += g->t[i].n;
        }
        if (o->step_extra)
            o->step_extra(o->hooks_u, s, lr, sc);
        r->steps = s + 1;
        r->tokens += (long)B * T;
        if (s >= o->steps - tail)
            tail_sum += loss;
        double vl = NAN;
        if (o->eval_every > 0 && (s + 1) % o->eval_every == 0 && s + 1 < o->steps) {
            long nt;
            if ((rc = validate(m, val, n_val, o, &vl, &nt, e)) < 0)
                break;
        }
        if (cb && cb(u, s + 1, o->steps, loss, lr, vl)) {
            rc = qs_errf(e, "train: cancelled at step %d", s + 1);
            break;
        }
    }
    if (rc == 0) {
        r->train_loss = tail_sum / tail;
        rc = validate(m, val, n_val, o, &r->val_loss, &r->val_tokens, e);
    }
    free(start);
    free(work);
    free(mom);
    qs_lm_grad_free(g);
    return rc;
}
