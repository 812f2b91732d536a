/* lm_grad.c - backward pass of the GPT-2 and LLaMA transformers, llm.c-style: each layer a plain
 * function with its shapes in a comment, a forward that keeps the activations of the whole batch
 * and a backward that walks them in reverse. Products through cblas_sgemm over all BT rows.
 * Then the sensitivity statistics built on it, and the R-operator twin of both passes for exact
 * Hessian-vector products.
 *
 * Shapes: N = B T rows (window b's position t is row b T + t), d model width, H query heads and
 * Hk key/value heads of hd = d / H, kv = Hk hd, ff MLP width, V vocabulary. */
#include "qscope/lm_grad.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_impl.h"

/* ---- gradient buffers -------------------------------------------------------------------- */

void qs_lm_grad_free(struct qs_lm_grad *g)
{
    if (!g)
        return;
    free(g->t);
    free(g->flat);
    free(g->gw);
    free(g->gb);
    free(g);
}

void qs_lm_grad_zero(struct qs_lm_grad *g)
{
    memset(g->flat, 0, g->nflat * sizeof(float));
}

struct tlist {
    struct qs_lm_tensor *t;
    int n;
    size_t off;
};

static float *tadd(struct tlist *l, const char *name, float *val, int rows, int cols)
{
    struct qs_lm_tensor *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->val = val;
    t->rows = rows;
    t->cols = cols;
    t->n = (size_t)rows * (size_t)(cols ? cols : 1);
    t->grad = (float *)(uintptr_t)l->off; /* an offset until flat exists */
    l->off += t->n;
    return t->grad;
}

/* Fills l with m's tensors in the documented order; the site gradients (as offsets) into gw,
 * gb. l->t NULL: only counts. */
static void list_tensors(const struct qs_lm *m, struct tlist *l, float **gw, float **gb)
{
    struct qs_lm_priv *p = m->priv;
    int gpt2 = m->family == QS_LM_GPT2, per = gpt2 ? 4 : 7, d = m->d_model;
    char k[128];
#define ADD(name, val, r, c) (l->t ? tadd(l, name, val, r, c) : (l->n++, (float *)NULL))
    float *gwte = ADD(gpt2 ? "wte.weight" : "model.embed_tokens.weight", p->wte, m->vocab, d);
    if (gpt2)
        ADD("wpe.weight", p->wpe, m->n_pos, d);
    for (int L = 0; L < m->n_layer; L++) {
        struct lm_layer *ly = &p->layer[L];
        for (int i = 0; i < per; i++) {
            int s = per * L + i;
            struct qs_lm_site *st = &m->sites[s];
            if (i == 0 && gpt2) {
                snprintf(k, sizeof k, "h.%d.ln_1.weight", L);
                ADD(k, ly->n1w, d, 0);
                snprintf(k, sizeof k, "h.%d.ln_1.bias", L);
                ADD(k, ly->n1b, d, 0);
            } else if (i == 0) {
                snprintf(k, sizeof k, "model.layers.%d.input_layernorm.weight", L);
                ADD(k, ly->n1w, d, 0);
            } else if (i == 2 && gpt2) {
                snprintf(k, sizeof k, "h.%d.ln_2.weight", L);
                ADD(k, ly->n2w, d, 0);
                snprintf(k, sizeof k, "h.%d.ln_2.bias", L);
                ADD(k, ly->n2b, d, 0);
            } else if (i == 4 && !gpt2) {
                snprintf(k, sizeof k, "model.layers.%d.post_attention_layernorm.weight", L);
                ADD(k, ly->n2w, d, 0);
            }
            snprintf(k, sizeof k, "%s.weight", st->name);
            float *w = ADD(k, st->w, st->out, st->in);
            float *b = NULL;
            if (st->b) {
                snprintf(k, sizeof k, "%s.bias", st->name);
                b = ADD(k, (float *)st->b, st->out, 0);
            }
            if (gw) {
                gw[s] = w;
                gb[s] = b;
            }
        }
    }
    ADD(gpt2 ? "ln_f.weight" : "model.norm.weight", p->nfw, d, 0);
    if (gpt2)
        ADD("ln_f.bias", p->nfb, d, 0);
    float *gh = gwte;
    if (!m->tied)
        gh = ADD("lm_head.weight", m->sites[m->nsites - 1].w, m->vocab, d);
    if (gw) {
        gw[m->nsites - 1] = gh;
        gb[m->nsites - 1] = NULL;
    }
#undef ADD
}

/* The backward reads every site's F32 weight in place: a model whose 16-bit sites are still the
 * file's bytes (lm.h) is refused here; its callers widen it first (qs_lm_materialize). */
static int need_f32(const struct qs_lm *m, qs_err *e)
{
    if (!m->priv->wte)
        return qs_errf(e, "the token embedding: the backward pass needs the weights in F32 "
                          "(qs_lm_materialize)");
    for (int s = 0; s < m->nsites; s++)
        if (!m->sites[s].w)
            return qs_errf(e, "%s: the backward pass needs the weights in F32 (qs_lm_materialize)",
                           m->sites[s].name);
    return 0;
}

struct qs_lm_grad *qs_lm_grad_new(const struct qs_lm *m, qs_err *e)
{
    if (need_f32(m, e) < 0)
        return NULL;
    struct tlist l = {0};
    list_tensors(m, &l, NULL, NULL);
    struct qs_lm_grad *g = qs_calloc(1, sizeof *g);
    if (!g)
        goto oom;
    g->t = qs_calloc((size_t)l.n, sizeof *g->t);
    g->gw = qs_calloc((size_t)m->nsites, sizeof *g->gw);
    g->gb = qs_calloc((size_t)m->nsites, sizeof *g->gb);
    if (!g->t || !g->gw || !g->gb)
        goto oom;
    l = (struct tlist){g->t, 0, 0};
    list_tensors(m, &l, g->gw, g->gb);
    g->ntensor = l.n;
    g->nflat = l.off;
    g->flat = qs_alloc(l.off, sizeof(float), "the gradient of every parameter", e);
    if (!g->flat) {
        qs_lm_grad_free(g);
        return NULL;
    }
    for (int i = 0; i < g->ntensor; i++)
        g->t[i].grad = g->flat + (uintptr_t)g->t[i].grad;
    for (int s = 0; s < m->nsites; s++) {
        g->gw[s] = g->flat + (uintptr_t)g->gw[s];
        if (m->sites[s].b)
            g->gb[s] = g->flat + (uintptr_t)g->gb[s];
    }
    return g;
oom:
    qs_lm_grad_free(g);
    qs_errf(e, "out of memory for the gradient buffers");
    return NULL;
}

/* The gradient of the tensor whose value is VAL (NULL for NULL: LLaMA's absent norm biases). */
static float *grad_of(const struct qs_lm_grad *g, const float *val)
{
    for (int i = 0; val && i < g->ntensor; i++)
        if (g->t[i].val == val)
            return g->t[i].grad;
    return NULL;
}

/* ---- layers: forward --------------------------------------------------------------------- */

/* x: (N, d) = wte[tok] (+ wpe[t] for GPT-2). Row b T + t holds token tok[start[b] + t]. */
static void embed_forward(float *x, const uint32_t *tok, const size_t *start, int B, int T, int d,
                          const float *wte, const float *wpe)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *r = x + ((size_t)b * T + t) * d;
            memcpy(r, wte + (size_t)tok[start[b] + t] * d, (size_t)d * sizeof(float));
            if (wpe)
                for (int i = 0; i < d; i++)
                    r[i] += wpe[(size_t)t * d + i];
        }
}

/* y: (N, d) = LayerNorm (b != NULL) or RMSNorm (b == NULL) of x: (N, d); mu, rs: (N) the mean
 * (0 for RMSNorm) and 1 / sqrt(var + eps) per row, kept for the backward. Statistics in double,
 * as qs_lm_forward computes them. */
static void norm_forward(float *y, float *mu, float *rs, const float *x, int N, int d,
                         const float *w, const float *b, double eps)
{
    qs_lm_norm_rows(x, N, d, w, b, eps, y, mu, rs);
}

/* y: (n, out) = x W^T + b; x: (n, in), w: (out, in), b: (out) or NULL. */
static void linear_forward(float *y, const float *x, const float *w, const float *b, int n, int in,
                           int out)
{
    float beta = 0.0f;
    if (b) {
        for (int i = 0; i < n; i++)
            memcpy(y + (size_t)i * out, b, (size_t)out * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta, y,
                out);
}

/* What one site saw in the forward, for its backward. */
struct site_rec {
    const float *x; /* its input (n, in): the float one, or the act hook's copy */
    const float *w; /* its weight (out, in): the model's or the weight hook's */
};

/* Site s on x: (n, in) into y: (n, out) through the hooks (as lm.c's site_apply); xa: room for
 * the act hook's copy (n, in), kept for the weight gradient. */
static void site_forward(const struct qs_lm *m, int s, const struct qs_hooks *h, const float *x,
                         int n, float *y, float *xa, struct site_rec *rec)
{
    const struct qs_lm_site *st = &m->sites[s];
    const float *w = st->w;
    if (h) {
        if (h->input)
            h->input(h->u, s, x, n, st->in);
        w = qs_lm_site_hooked(st, s, h, &x, n, xa, w);
    }
    linear_forward(y, x, w, st->b, n, st->in, st->out);
    if (h && h->post)
        h->post(h->u, s, y, n, st->out);
    rec->x = x;
    rec->w = w;
}

/* Causal attention over B windows of T. q: (N, H hd) row stride ldq, k, v: (N, Hk hd) strides
 * ldk, ldv; att: (B, H, T, T) the softmax probabilities (upper triangle 0); o: (N, H hd). Query
 * head h reads key/value head h / (H / Hk) (GQA). window > 0: query i also ignores the keys
 * j <= i - window (probability 0; the backward passes, which scale by P, then need no mask). */
static void attention_forward(float *o, float *att, const float *q, int ldq, const float *k,
                              int ldk, const float *v, int ldv, int B, int T, int H, int Hk, int hd,
                              int window)
{
    float scale = (float)(1.0 / sqrt((double)hd));
    int g = H / Hk;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t r0 = (size_t)b * T;
            int kh = h / g;
            float *s = att + ((size_t)b * H + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale,
                        q + r0 * ldq + h * hd, ldq, k + r0 * ldk + kh * hd, ldk, 0.0f, s, T);
            for (int i = 0; i < T; i++) {
                int j0 = window > 0 && i >= window ? i - window + 1 : 0;
                float *r = s + (size_t)i * T, mx = r[j0];
                for (int j = j0 + 1; j <= i; j++)
                    mx = r[j] > mx ? r[j] : mx;
                double sum = 0;
                for (int j = j0; j <= i; j++) {
                    r[j] = expf(r[j] - mx);
                    sum += r[j];
                }
                float inv = (float)(1.0 / sum);
                for (int j = j0; j <= i; j++)
                    r[j] *= inv;
                for (int j = 0; j < j0; j++)
                    r[j] = 0.0f;
                for (int j = i + 1; j < T; j++)
                    r[j] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, s, T,
                        v + r0 * ldv + kh * hd, ldv, 0.0f, o + r0 * H * hd + h * hd, H * hd);
        }
}

/* Rotary embedding in place on x: (N, nh hd), position = row % T (HF rotate_half: pairs
 * (j, j + hd/2)); cs: (T, hd), cos in [0, hd/2), sin in [hd/2, hd). sign -1 rotates back: the
 * rotation's transpose, which is its backward. */
static void rope(float *x, int N, int T, int nh, int hd, const float *cs, float sign)
{
    int h2 = hd / 2;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < nh; h++) {
            float *r = x + (size_t)n * nh * hd + (size_t)h * hd;
            const float *c = cs + (size_t)(n % T) * hd, *sn = c + h2;
            for (int j = 0; j < h2; j++) {
                float a = r[j], b = r[j + h2], s = sign * sn[j];
                r[j] = a * c[j] - b * s;
                r[j + h2] = b * c[j] + a * s;
            }
        }
}

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */

/* HF gelu_new: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), through expf as lm.c computes it. */
static float gelu_new(float x)
{
    float u = GELU_K * (x + 0.044715f * x * x * x);
    return x * (1.0f - 1.0f / (expf(2.0f * u) + 1.0f));
}

/* ---- layers: backward -------------------------------------------------------------------- */

/* For y = x W^T + b with x: (n, in), w: (out, in), dy: (n, out):
 * dx: (n, in) = beta dx + dy W (dx NULL: skipped); dw: (out, in) += dy^T x; db: (out) += the
 * column sums of dy (db NULL: no bias). */
static void linear_backward(float *dx, float beta, float *dw, float *db, const float *dy,
                            const float *x, const float *w, int n, int in, int out)
{
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in,
                    beta, dx, in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw,
                in);
    if (db)
        for (int i = 0; i < n; i++) {
            const float *r = dy + (size_t)i * out;
            for (int j = 0; j < out; j++)
                db[j] += r[j];
        }
}

/* Backward of norm_forward: dx: (N, d) += dL/dx, dw: (d) += sum dy xhat, db: (d) += sum dy
 * (LayerNorm only; NULL for RMSNorm, whose mu is 0). xhat = (x - mu) rs, dxhat = dy w;
 * LayerNorm: dx = rs (dxhat - mean(dxhat) - xhat mean(dxhat xhat)); RMSNorm drops the first
 * mean. */
static void norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *mu, const float *rs, const float *w, int N, int d)
{
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * d, *dyr = dy + (size_t)n * d;
        float *dxr = dx + (size_t)n * d, m = mu[n], r = rs[n];
        double s1 = 0, s2 = 0;
        for (int i = 0; i < d; i++) {
            float xh = (xr[i] - m) * r, dxh = dyr[i] * w[i];
            s1 += dxh;
            s2 += (double)dxh * xh;
            dw[i] += dyr[i] * xh;
            if (db)
                db[i] += dyr[i];
        }
        float a = db ? (float)(s1 / d) : 0.0f, c = (float)(s2 / d);
        for (int i = 0; i < d; i++) {
            float xh = (xr[i] - m) * r;
            dxr[i] += r * (dyr[i] * w[i] - a - xh * c);
        }
    }
}

/* The causal softmax's backward in place, row by row: r <- P (r - rowsum(P r)) over the
 * row's first i + 1 columns, 0 after them. P, r: (T, T); the row sums in double. */
static void causal_softmax_back(const float *P, float *r, int T)
{
    for (int i = 0; i < T; i++) {
        const float *pr = P + (size_t)i * T;
        float *ri = r + (size_t)i * T;
        double dot = 0;
        for (int j = 0; j <= i; j++)
            dot += (double)pr[j] * ri[j];
        for (int j = 0; j <= i; j++)
            ri[j] = pr[j] * (ri[j] - (float)dot);
        for (int j = i + 1; j < T; j++)
            ri[j] = 0.0f;
    }
}

/* Backward of attention_forward. do_: (N, H hd); dq: (N, H hd) stride ldq (set), dk, dv:
 * (N, Hk hd) strides ldk, ldv (set: zeroed here, then summed over the query heads that share
 * them); dp: (T, T) scratch. Per (b, h): dP = dO V^T, dV += P^T dO,
 * dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK += scale dS^T Q. */
static void attention_backward(float *dq, int ldq, float *dk, int ldk, float *dv, int ldv,
                               float *dp, const float *do_, const float *att, const float *q,
                               const float *k, const float *v, int B, int T, int H, int Hk, int hd)
{
    float scale = (float)(1.0 / sqrt((double)hd));
    int g = H / Hk, ldo = H * hd;
    for (int n = 0; n < B * T; n++) {
        memset(dk + (size_t)n * ldk, 0, (size_t)Hk * hd * sizeof(float));
        memset(dv + (size_t)n * ldv, 0, (size_t)Hk * hd * sizeof(float));
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t r0 = (size_t)b * T;
            int kh = h / g;
            const float *P = att + ((size_t)b * H + h) * T * T, *dO = do_ + r0 * ldo + h * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, ldo,
                        v + r0 * ldv + kh * hd, ldv, 0.0f, dp, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO, ldo,
                        1.0f, dv + r0 * ldv + kh * hd, ldv);
            causal_softmax_back(P, dp, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dp, T,
                        k + r0 * ldk + kh * hd, ldk, 0.0f, dq + r0 * ldq + h * hd, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dp, T,
                        q + r0 * ldq + h * hd, ldq, 1.0f, dk + r0 * ldk + kh * hd, ldk);
        }
}

/* d gelu_new / dx at x: 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 0.044715 x^2), t = tanh(u). */
static float gelu_grad(float x)
{
    float u = GELU_K * (x + 0.044715f * x * x * x);
    float t = 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 0.134145f * x * x);
}

/* Mean cross-entropy of logits: (N, V) against targets; the logits are replaced by dL/dlogits
 * = (softmax - onehot) / N. Returns the summed (not mean) loss in double (the normaliser summed
 * in double; one expf per logit, as the attention's softmax). */
static double crossentropy_backward(float *logits, const uint32_t *tok, const size_t *start, int B,
                                    int T, int V)
{
    double sum = 0;
    float invN = 1.0f / (float)(B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *r = logits + ((size_t)b * T + t) * V, mx = r[0];
            int y = tok[start[b] + t + 1];
            for (int i = 1; i < V; i++)
                mx = r[i] > mx ? r[i] : mx;
            double z = 0;
            float ly = r[y] - mx;
            for (int i = 0; i < V; i++) {
                r[i] = expf(r[i] - mx);
                z += r[i];
            }
            sum += log(z) - ly;
            float sc = (float)(1.0 / z) * invN;
            for (int i = 0; i < V; i++)
                r[i] *= sc;
            r[y] -= invN;
        }
    return sum;
}

/* ---- the whole model --------------------------------------------------------------------- */

/* One block's activations (N rows). GPT-2 keeps q|k|v in qkv as one (N, 3d) site output; LLaMA
 * keeps q: (N, d), k, v: (N, kv) one after the other in the same room. */
struct acts {
    float *res;       /* (N, d) the block's input (the residual stream) */
    float *mu1, *rs1; /* (N) */
    float *n1;        /* (N, d) */
    float *qkv;       /* (N, d + 2 kv) */
    float *att;       /* (B, H, T, T) */
    float *ay;        /* (N, d) attention output, input of c_proj / o_proj */
    float *res2;      /* (N, d) the stream after the attention's residual */
    float *mu2, *rs2; /* (N) */
    float *n2;        /* (N, d) */
    float *fc;        /* (N, ff) GPT-2: c_fc output; LLaMA: gate_proj output */
    float *up;        /* (N, ff) LLaMA: up_proj output; GPT-2: tanh of gelu_new's argument */
    float *hh;        /* (N, ff) the MLP's hidden activation, input of c_proj / down_proj */
};

struct dims {
    size_t N, d, kv, ff, V, T, B, H, hd;
};

static float *acts_carve(struct acts *a, float *p, const struct dims *z)
{
    size_t N = z->N;
#define TAKE(f, n) (a->f = p, p += (n))
    TAKE(res, N * z->d);
    TAKE(mu1, N);
    TAKE(rs1, N);
    TAKE(n1, N * z->d);
    TAKE(qkv, N * (z->d + 2 * z->kv));
    TAKE(att, z->B * z->H * z->T * z->T);
    TAKE(ay, N * z->d);
    TAKE(res2, N * z->d);
    TAKE(mu2, N);
    TAKE(rs2, N);
    TAKE(n2, N * z->d);
    TAKE(fc, N * z->ff);
    TAKE(up, N * z->ff);
    TAKE(hh, N * z->ff);
#undef TAKE
    return p;
}

/* RoPE's table for T positions: cs (T, hd), cos in the first half of a row, sin in the second. */
static void rope_table(float *cs, const struct qs_lm *m, int T, int hd)
{
    for (int t = 0; t < T; t++)
        for (int j = 0; j < hd / 2; j++) {
            double ang = t * pow(m->rope_theta, -2.0 * j / hd);
            cs[(size_t)t * hd + j] = (float)cos(ang);
            cs[(size_t)t * hd + hd / 2 + j] = (float)sin(ang);
        }
}

/* ---- one block ---------------------------------------------------------------------------- */

/* What a block's forward and backward share: the model, hooks, per-site records, the act
 * hook's copies (xs[s], or xs NULL without an act hook), the RoPE table (T, hd) and the
 * backward's scratch (dn (N, d), dbig, dbig2 (N, max(d + 2 kv, ff)), dp (T, T)). */
struct blk {
    const struct qs_lm *m;
    const struct qs_hooks *h;
    struct site_rec *rec;
    float **xs;
    const float *cs;
    float *dn, *dbig, *dbig2, *dp;
    int B, T;
};

/* The model, layer and sizes a block's forward and backward both work with (for block l of
 * the pass c), as locals (ggml's GGML_TENSOR_LOCALS idiom). */
#define BLOCK_LOCALS(c, l)                                                                         \
    const struct qs_lm *m = (c)->m;                                                                \
    const struct qs_lm_priv *p = m->priv;                                                          \
    const struct lm_layer *L = &p->layer[l];                                                       \
    struct site_rec *rec = (c)->rec;                                                               \
    const int gpt2 = m->family == QS_LM_GPT2, per = gpt2 ? 4 : 7, s0 = per * (l);                  \
    const int B = (c)->B, T = (c)->T, N = B * T, d = m->d_model, ff = m->d_ff, H = m->n_head;      \
    const int Hk = m->n_kv_head, hd = d / H, kv = Hk * hd;                                         \
    const size_t Nd = (size_t)N * d;                                                               \
    const float *cs = (c)->cs

/* Block l on its input a->res (N, d) into out (N, d), keeping its activations in a. */
static void block_forward(const struct blk *c, int l, struct acts *a, float *out)
{
    BLOCK_LOCALS(c, l);
    const struct qs_hooks *h = c->h;
    float **xs = c->xs;
    const int act = xs != NULL;
#define XA(s) (act ? xs[s] : NULL)
    norm_forward(a->n1, a->mu1, a->rs1, a->res, N, d, L->n1w, L->n1b, m->eps);
    if (gpt2) {
        site_forward(m, s0, h, a->n1, N, a->qkv, XA(s0), &rec[s0]); /* (N, 3d) */
        attention_forward(a->ay, a->att, a->qkv, 3 * d, a->qkv + d, 3 * d, a->qkv + 2 * d, 3 * d, B,
                          T, H, H, hd, 0);
    } else {
        float *qq = a->qkv, *kk = qq + Nd, *vv = kk + (size_t)N * kv;
        site_forward(m, s0, h, a->n1, N, qq, XA(s0), &rec[s0]);
        site_forward(m, s0 + 1, h, a->n1, N, kk, XA(s0 + 1), &rec[s0 + 1]);
        site_forward(m, s0 + 2, h, a->n1, N, vv, XA(s0 + 2), &rec[s0 + 2]);
        rope(qq, N, T, H, hd, cs, 1.0f);
        rope(kk, N, T, Hk, hd, cs, 1.0f);
        attention_forward(a->ay, a->att, qq, d, kk, kv, vv, kv, B, T, H, Hk, hd, m->window);
    }
    int so = s0 + (gpt2 ? 1 : 3); /* c_proj / o_proj */
    site_forward(m, so, h, a->ay, N, a->res2, XA(so), &rec[so]);
    for (size_t i = 0; i < Nd; i++)
        a->res2[i] += a->res[i];
    norm_forward(a->n2, a->mu2, a->rs2, a->res2, N, d, L->n2w, L->n2b, m->eps);
    int sd; /* the MLP's output site */
    if (gpt2) {
        site_forward(m, s0 + 2, h, a->n2, N, a->fc, XA(s0 + 2), &rec[s0 + 2]);
        for (size_t i = 0; i < (size_t)N * ff; i++) {
            float x = a->fc[i], e2 = expf(2.0f * GELU_K * (x + 0.044715f * x * x * x));
            float r = 1.0f / (e2 + 1.0f);
            a->hh[i] = x * (1.0f - r);  /* gelu_new, as lm.c computes it */
            a->up[i] = 1.0f - 2.0f * r; /* its tanh, for the backward */
        }
        sd = s0 + 3;
    } else {
        site_forward(m, s0 + 4, h, a->n2, N, a->fc, XA(s0 + 4), &rec[s0 + 4]);
        site_forward(m, s0 + 5, h, a->n2, N, a->up, XA(s0 + 5), &rec[s0 + 5]);
        for (size_t i = 0; i < (size_t)N * ff; i++) {
            float gg = a->fc[i];
            a->hh[i] = gg / (1.0f + expf(-gg)) * a->up[i];
        }
        sd = s0 + 6;
    }
    site_forward(m, sd, h, a->hh, N, out, XA(sd), &rec[sd]);
    for (size_t i = 0; i < Nd; i++)
        out[i] += a->res2[i];
#undef XA
}

/* Block l's backward: dres holds dL/d(its output) and receives dL/d(its input a->res); the
 * gradients of its parameters are added to g. a: its forward's activations. */
static void block_backward(const struct blk *c, int l, struct acts *a, float *dres,
                           struct qs_lm_grad *g)
{
    BLOCK_LOCALS(c, l);
    float *dn = c->dn, *dbig = c->dbig, *dbig2 = c->dbig2, *dp = c->dp;
    float *g1w = grad_of(g, L->n1w), *g1b = grad_of(g, L->n1b);
    float *g2w = grad_of(g, L->n2w), *g2b = grad_of(g, L->n2b);
    /* MLP: dres holds dL/d(block output) */
    if (gpt2) {
        int s = s0 + 3;
        linear_backward(dbig, 0.0f, g->gw[s], g->gb[s], dres, rec[s].x, rec[s].w, N, ff, d);
        for (size_t i = 0; i < (size_t)N * ff; i++) {
            float x = a->fc[i], t = a->up[i];
            dbig[i] *=
                0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 0.134145f * x * x);
        }
        s = s0 + 2;
        linear_backward(dn, 0.0f, g->gw[s], g->gb[s], dbig, rec[s].x, rec[s].w, N, d, ff);
    } else {
        int s = s0 + 6;
        linear_backward(dbig, 0.0f, g->gw[s], g->gb[s], dres, rec[s].x, rec[s].w, N, ff, d);
        for (size_t i = 0; i < (size_t)N * ff; i++) {
            float gg = a->fc[i], sg = 1.0f / (1.0f + expf(-gg)), dh = dbig[i];
            dbig2[i] = dh * gg * sg;                                  /* d up */
            dbig[i] = dh * a->up[i] * sg * (1.0f + gg * (1.0f - sg)); /* d gate */
        }
        linear_backward(dn, 0.0f, g->gw[s0 + 4], g->gb[s0 + 4], dbig, rec[s0 + 4].x, rec[s0 + 4].w,
                        N, d, ff);
        linear_backward(dn, 1.0f, g->gw[s0 + 5], g->gb[s0 + 5], dbig2, rec[s0 + 5].x, rec[s0 + 5].w,
                        N, d, ff);
    }
    norm_backward(dres, g2w, g2b, dn, a->res2, a->mu2, a->rs2, L->n2w, N, d);
    /* attention: dres holds dL/d res2 */
    int so = s0 + (gpt2 ? 1 : 3);
    linear_backward(dn, 0.0f, g->gw[so], g->gb[so], dres, rec[so].x, rec[so].w, N, d, d);
    if (gpt2) {
        attention_backward(dbig, 3 * d, dbig + d, 3 * d, dbig + 2 * d, 3 * d, dp, dn, a->att,
                           a->qkv, a->qkv + d, a->qkv + 2 * d, B, T, H, H, hd);
        linear_backward(dn, 0.0f, g->gw[s0], g->gb[s0], dbig, rec[s0].x, rec[s0].w, N, d, 3 * d);
    } else {
        float *qq = a->qkv, *kk = qq + Nd, *vv = kk + (size_t)N * kv;
        float *dq = dbig, *dk = dq + Nd, *dv = dk + (size_t)N * kv;
        attention_backward(dq, d, dk, kv, dv, kv, dp, dn, a->att, qq, kk, vv, B, T, H, Hk, hd);
        rope(dq, N, T, H, hd, cs, -1.0f);
        rope(dk, N, T, Hk, hd, cs, -1.0f);
        linear_backward(dn, 0.0f, g->gw[s0], g->gb[s0], dq, rec[s0].x, rec[s0].w, N, d, d);
        linear_backward(dn, 1.0f, g->gw[s0 + 1], g->gb[s0 + 1], dk, rec[s0 + 1].x, rec[s0 + 1].w, N,
                        d, kv);
        linear_backward(dn, 1.0f, g->gw[s0 + 2], g->gb[s0 + 2], dv, rec[s0 + 2].x, rec[s0 + 2].w, N,
                        d, kv);
    }
    norm_backward(dres, g1w, g1b, dn, a->res, a->mu1, a->rs1, L->n1w, N, d);
}

/* Floats of scratch, with the sizes checked: per block acts; final res, mu, rs, norm (N, d)
 * three times + 2 N; logits (N, V); RoPE table (T, hd); act copies sum_s N in; backward: dres,
 * dn (N, d), dbig, dbig2 (N, max(d + 2 kv, ff)), dp (T, T). */
static int scratch_floats(const struct qs_lm *m, int B, int T, int act, struct dims *z, size_t *out)
{
    int d = m->d_model, hd = d / m->n_head;
    *z = (struct dims){(size_t)B * T,   (size_t)d,         (size_t)m->n_kv_head * hd,
                       (size_t)m->d_ff, (size_t)m->vocab,  (size_t)T,
                       (size_t)B,       (size_t)m->n_head, (size_t)hd};
    size_t N, per, all, t, big = z->d + 2 * z->kv > z->ff ? z->d + 2 * z->kv : z->ff;
    /* every factor below is bounded by the model config (lm.c's limits) except N */
    if (B < 1 || T < 1 || qs_size_mul((size_t)B, (size_t)T, &N) < 0 ||
        qs_size_mul3(z->B * z->H, z->T, z->T, &t) < 0 ||
        qs_size_mul(N, 6 * z->d + 2 * z->kv + 3 * z->ff + 4, &per) < 0 ||
        qs_size_add(per, t, &per) < 0 || qs_size_mul((size_t)m->n_layer, per, &all) < 0)
        return -1;
    size_t extra = 0;
    if (qs_size_mul(N, 5 * z->d + 2 + z->V + 2 * big, &t) < 0 || qs_size_add(all, t, &all) < 0 ||
        qs_size_add(all, z->T * z->hd + z->T * z->T, &all) < 0)
        return -1;
    if (act) {
        for (int s = 0; s < m->nsites; s++)
            extra += (size_t)m->sites[s].in;
        if (qs_size_mul(N, extra, &t) < 0 || qs_size_add(all, t, &all) < 0)
            return -1;
    }
    *out = all;
    return 0;
}

/* B >= 1 windows of T tokens, T within the model's context. */
static int check_batch(const struct qs_lm *m, int B, int T, qs_err *e)
{
    if (B < 1 || T < 1 || T > m->n_pos)
        return qs_errf(e, "%s: %d windows of %d tokens (the model takes 1 to %d)", m->path, B, T,
                       m->n_pos);
    return 0;
}

/* B windows of T + 1 tokens at start[] in tok: T within the model's context, every token in
 * its vocabulary. */
static int check_windows(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B,
                         int T, qs_err *e)
{
    if (check_batch(m, B, T, e) < 0)
        return -1;
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= T; t++)
            if (tok[start[b] + t] >= (uint32_t)m->vocab)
                return qs_errf(e, "%s: token %u at %zu is outside the vocabulary (%d)", m->path,
                               tok[start[b] + t], start[b] + t, m->vocab);
    return 0;
}

int qs_lm_backward_bytes(const struct qs_lm *m, int B, int T, int act, size_t *bytes)
{
    struct dims z;
    size_t f;
    *bytes = 0;
    if (scratch_floats(m, B, T, act, &z, &f) < 0 || qs_size_mul(f, sizeof(float), bytes) < 0)
        return -1;
    return 0;
}

int qs_lm_backward(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                   const struct qs_hooks *h, struct qs_lm_grad *g, double *loss, float *work,
                   qs_err *e)
{
    if (need_f32(m, e) < 0)
        return -1;
    if (check_windows(m, tok, start, B, T, e) < 0)
        return -1;
    const struct qs_lm_priv *p = m->priv;
    const int gpt2 = m->family == QS_LM_GPT2, act = h && h->act;
    struct dims z;
    size_t nf;
    if (scratch_floats(m, B, T, act, &z, &nf) < 0)
        return qs_errf(e, "%s: the backward of %d windows of %d tokens overflows", m->path, B, T);
    char what[96];
    snprintf(what, sizeof what, "the backward of %d windows of %d tokens", B, T);
    float *own = work ? NULL : qs_alloc(nf, sizeof(float), what, e), *buf = work ? work : own;
    if (!buf)
        return qs_err_prefix(e, m->path);
    struct site_rec *rec = qs_calloc((size_t)m->nsites, sizeof *rec);
    struct acts *A = qs_calloc((size_t)m->n_layer, sizeof *A);
    if (!rec || !A) {
        free(own);
        free(rec);
        free(A);
        return qs_errf(e, "%s: out of memory", m->path);
    }
    const int N = B * T, d = m->d_model, hd = d / m->n_head, V = m->vocab;
    const size_t Nd = (size_t)N * d, big = z.d + 2 * z.kv > z.ff ? z.d + 2 * z.kv : z.ff;
    float *q = buf;
    for (int l = 0; l < m->n_layer; l++)
        q = acts_carve(&A[l], q, &z);
    float *resf = q, *muf = resf + Nd, *rsf = muf + N, *nf_ = rsf + N, *logits = nf_ + Nd;
    float *cs = logits + (size_t)N * V, *dres = cs + (size_t)T * hd, *dn = dres + Nd;
    float *dbig = dn + Nd, *dbig2 = dbig + N * big, *dp = dbig2 + N * big;
    float *xa = dp + (size_t)T * T; /* act copies: site s at xa + N * (sum of earlier ins) */
    float **xs = NULL;
    if (act) {
        xs = qs_calloc((size_t)m->nsites, sizeof *xs);
        if (!xs) {
            free(own);
            free(rec);
            free(A);
            return qs_errf(e, "%s: out of memory", m->path);
        }
        for (int s = 0; s < m->nsites; s++) {
            xs[s] = xa;
            xa += (size_t)N * m->sites[s].in;
        }
    }
#define XA(s) (act ? xs[s] : NULL)

    /* ---- forward ---- */
    embed_forward(A[0].res, tok, start, B, T, d, p->wte, gpt2 ? p->wpe : NULL);
    if (!gpt2)
        rope_table(cs, m, T, hd);
    struct blk bc = {m, h, rec, act ? xs : NULL, cs, dn, dbig, dbig2, dp, B, T};
    for (int l = 0; l < m->n_layer; l++)
        block_forward(&bc, l, &A[l], l + 1 < m->n_layer ? A[l + 1].res : resf);
    const int sh = m->nsites - 1;
    norm_forward(nf_, muf, rsf, resf, N, d, p->nfw, gpt2 ? p->nfb : NULL, m->eps);
    site_forward(m, sh, h, nf_, N, logits, XA(sh), &rec[sh]);
    double sum = crossentropy_backward(logits, tok, start, B, T, V); /* logits := dlogits */
    if (loss)
        *loss = sum / N;
    if (!g)
        goto done;

    /* ---- backward ---- */
    memset(dres, 0, Nd * sizeof(float));
    linear_backward(dn, 0.0f, g->head && m->tied ? g->head : g->gw[sh], NULL, logits, rec[sh].x,
                    rec[sh].w, N, d, V);
    norm_backward(dres, grad_of(g, p->nfw), grad_of(g, p->nfb), dn, resf, muf, rsf, p->nfw, N, d);
    for (int l = m->n_layer - 1; l >= 0; l--)
        block_backward(&bc, l, &A[l], dres, g);
    /* embeddings: dres holds dL/d(embedding output) */
    float *gwte = g->t[0].grad, *gwpe = gpt2 ? g->t[1].grad : NULL;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *r = dres + ((size_t)b * T + t) * d;
            float *ge = gwte + (size_t)tok[start[b] + t] * d;
            for (int i = 0; i < d; i++)
                ge[i] += r[i];
            if (gwpe)
                for (int i = 0; i < d; i++)
                    gwpe[(size_t)t * d + i] += r[i];
        }
done:
#undef XA
    free(xs);
    free(own);
    free(rec);
    free(A);
    return 0;
}

/* ---- one block alone (block-wise reconstruction, qat mode=block) ------------------------- */

void qs_lm_embed_rows(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                      float *x)
{
    const struct qs_lm_priv *p = m->priv;
    embed_forward(x, tok, start, B, T, m->d_model, p->wte, m->family == QS_LM_GPT2 ? p->wpe : NULL);
}

int qs_lm_block(const struct qs_lm *m, int l, const float *x, int B, int T,
                const struct qs_hooks *h, float *y, const float *target, double *mse,
                struct qs_lm_grad *g, qs_err *e)
{
    if (need_f32(m, e) < 0)
        return -1;
    if (l < 0 || l >= m->n_layer)
        return qs_errf(e, "%s: no block %d (it has %d)", m->path, l, m->n_layer);
    if (check_batch(m, B, T, e) < 0)
        return -1;
    const int gpt2 = m->family == QS_LM_GPT2, per = gpt2 ? 4 : 7, s0 = per * l;
    const int act = h && h->act, d = m->d_model, hd = d / m->n_head;
    struct dims z = {(size_t)B * T,   (size_t)d,         (size_t)m->n_kv_head * hd,
                     (size_t)m->d_ff, (size_t)m->vocab,  (size_t)T,
                     (size_t)B,       (size_t)m->n_head, (size_t)hd};
    const size_t N = z.N, Nd = N * z.d, big = z.d + 2 * z.kv > z.ff ? z.d + 2 * z.kv : z.ff;
    /* one block's acts, out, dres, dn (N, d), dbig, dbig2 (N, big), dp (T, T), cs (T, hd), act
     * copies of its sites; every factor is bounded by the config except N */
    size_t nf, t, xin = 0;
    for (int s = s0; act && s < s0 + per; s++)
        xin += (size_t)m->sites[s].in;
    if (qs_size_mul(N, 9 * z.d + 2 * z.kv + 3 * z.ff + 4 + 2 * big + xin, &nf) < 0 ||
        qs_size_mul3(z.B * z.H, z.T, z.T, &t) < 0 || qs_size_add(nf, t, &nf) < 0 ||
        qs_size_add(nf, z.T * z.T + z.T * z.hd, &nf) < 0)
        return qs_errf(e, "%s: block %d on %d windows of %d tokens overflows", m->path, l, B, T);
    char what[96];
    snprintf(what, sizeof what, "block %d on %d windows of %d tokens", l, B, T);
    float *buf = qs_alloc(nf, sizeof(float), what, e);
    struct site_rec *rec = qs_calloc((size_t)m->nsites, sizeof *rec);
    float **xs = act ? qs_calloc((size_t)m->nsites, sizeof *xs) : NULL;
    if (!buf || !rec || (act && !xs)) {
        free(buf);
        free(rec);
        free(xs);
        return buf ? qs_errf(e, "%s: out of memory", m->path) : qs_err_prefix(e, m->path);
    }
    struct acts a;
    float *q = acts_carve(&a, buf, &z);
    float *out = q, *dres = out + Nd, *dn = dres + Nd, *dbig = dn + Nd, *dbig2 = dbig + N * big;
    float *dp = dbig2 + N * big, *cs = dp + z.T * z.T, *xa = cs + z.T * z.hd;
    for (int s = s0; act && s < s0 + per; s++) {
        xs[s] = xa;
        xa += N * m->sites[s].in;
    }
    memcpy(a.res, x, Nd * sizeof(float));
    if (!gpt2)
        rope_table(cs, m, T, hd);
    struct blk bc = {m, h, rec, xs, cs, dn, dbig, dbig2, dp, B, T};
    block_forward(&bc, l, &a, out);
    if (y)
        memcpy(y, out, Nd * sizeof(float));
    if (target) {
        double sum = 0;
        const double k = 2.0 / (double)Nd;
        for (size_t i = 0; i < Nd; i++) {
            double r = (double)out[i] - target[i];
            sum += r * r;
            dres[i] = (float)(k * r);
        }
        if (mse)
            *mse = sum / (double)Nd;
        if (g)
            block_backward(&bc, l, &a, dres, g);
    }
    free(buf);
    free(rec);
    free(xs);
    return 0;
}

/* ---- sensitivity ------------------------------------------------------------------------- */

int qs_lm_site_grads(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int nw, int T,
                     double *gnorm, float **fisher, int (*cb)(void *u, int done, int total),
                     void *u, qs_err *e)
{
    if (need_f32(m, e) < 0)
        return -1;
    if (nw < 1)
        return qs_errf(e, "%s: no windows for the gradient", m->path);
    struct qs_lm_grad *g = qs_lm_grad_new(m, e);
    if (!g)
        return -1;
    const int sh = m->nsites - 1;
    size_t hn = (size_t)m->vocab * m->d_model;
    float *head = m->tied ? qs_alloc(hn, sizeof(float), "the head's gradient", e) : NULL;
    if (m->tied && !head) {
        qs_lm_grad_free(g);
        return -1;
    }
    g->head = head;
    int total = (gnorm ? 1 : 0) + (fisher ? nw : 0), done = 0, rc = 0;
    double loss;
    if (gnorm && (rc = qs_lm_backward(m, tok, start, nw, T, NULL, g, &loss, NULL, e)) == 0) {
        for (int s = 0; s < m->nsites; s++) {
            const float *gw = s == sh && head ? head : g->gw[s];
            double a = 0;
            for (size_t k = 0; k < (size_t)m->sites[s].in * m->sites[s].out; k++)
                a += (double)gw[k] * gw[k];
            gnorm[s] = sqrt(a);
        }
        if (cb && cb(u, ++done, total))
            rc = qs_errf(e, "cancelled");
    }
    for (int s = 0; fisher && rc == 0 && s < m->nsites; s++)
        if (fisher[s])
            memset(fisher[s], 0, (size_t)m->sites[s].in * m->sites[s].out * sizeof(float));
    for (int w = 0; fisher && rc == 0 && w < nw; w++) {
        qs_lm_grad_zero(g);
        if (head)
            memset(head, 0, hn * sizeof(float));
        if ((rc = qs_lm_backward(m, tok, start + w, 1, T, NULL, g, &loss, NULL, e)) < 0)
            break;
        for (int s = 0; s < m->nsites; s++) {
            if (!fisher[s])
                continue;
            const float *gw = s == sh && head ? head : g->gw[s];
            float *f = fisher[s], iw = 1.0f / (float)nw;
            for (size_t k = 0; k < (size_t)m->sites[s].in * m->sites[s].out; k++)
                f[k] += gw[k] * gw[k] * iw;
        }
        if (cb && cb(u, ++done, total))
            rc = qs_errf(e, "cancelled");
    }
    free(head);
    qs_lm_grad_free(g);
    return rc;
}

/* ---- Hessian-vector products: forward-over-reverse (the R-operator) ----------------------
 * Every quantity a of the forward and of the backward gets its directional derivative
 * a' = d a(theta + eps v) / d eps at eps = 0, v nonzero on site weights only; the backward's
 * derivative of dL/dW_s is (H v)_s, exactly (no finite step). Names: x' is written xt. */

/* Tangent of norm_forward: yt = d/deps of y for x moving along xt (gains and biases fixed).
 * xhat = (x - mu) rs, xct = xt - mean(xt) (LayerNorm) or xt (RMSNorm), rho = mean(xhat xct):
 * rs' = -rs^2 rho, xhat' = rs (xct - xhat rho), yt = xhat' w. */
static void norm_tangent(float *yt, const float *xt, const float *x, const float *mu,
                         const float *rs, const float *w, int ln, int N, int d)
{
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * d, *tr = xt + (size_t)n * d;
        float *yr = yt + (size_t)n * d, m = mu[n], r = rs[n];
        double mt = 0, rho = 0;
        if (ln) {
            for (int i = 0; i < d; i++)
                mt += tr[i];
            mt /= d;
        }
        for (int i = 0; i < d; i++)
            rho += (double)(xr[i] - m) * r * (tr[i] - mt);
        float rh = (float)(rho / d), mf = (float)mt;
        for (int i = 0; i < d; i++)
            yr[i] = r * ((tr[i] - mf) - (xr[i] - m) * r * rh) * w[i];
    }
}

/* yt: (n, out) = xt W^T + x V^T (V: the weight's direction, or NULL). */
static void linear_tangent(float *yt, const float *xt, const float *x, const float *w,
                           const float *v, int n, int in, int out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, xt, in, w, in, 0.0f, yt,
                out);
    if (v)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, v, in, 1.0f,
                    yt, out);
}

/* Pt: (T, T) = P (St - rowsum(P St)) with St = scale (Qt K^T + Q Kt^T), for window rows r0 and
 * heads h / kh (the softmax's tangent; 0 above the diagonal). */
static void softmax_tangent(float *pt, const float *P, const float *q, const float *qt, int ldq,
                            const float *k, const float *kt, int ldk, int T, int hd, float scale)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, qt, ldq, k, ldk, 0.0f, pt,
                T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ldq, kt, ldk, 1.0f, pt,
                T);
    causal_softmax_back(P, pt, T);
}

/* Tangent of attention_forward: ot = Pt V + P Vt per (b, h); pt: (T, T) scratch. */
static void attention_tangent(float *ot, const float *att, const float *q, const float *qt, int ldq,
                              const float *k, const float *kt, int ldk, const float *v,
                              const float *vt, int ldv, int B, int T, int H, int Hk, int hd,
                              float *pt)
{
    float scale = (float)(1.0 / sqrt((double)hd));
    int g = H / Hk;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t r0 = (size_t)b * T, qo = r0 * ldq + h * hd, ko = r0 * ldk + (h / g) * hd;
            size_t vo = r0 * ldv + (h / g) * hd;
            const float *P = att + ((size_t)b * H + h) * T * T;
            softmax_tangent(pt, P, q + qo, qt + qo, ldq, k + ko, kt + ko, ldk, T, hd, scale);
            float *o = ot + r0 * H * hd + h * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, pt, T, v + vo,
                        ldv, 0.0f, o, H * hd);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, vt + vo,
                        ldv, 1.0f, o, H * hd);
        }
}

/* Backward of a linear and its tangent: dx = beta dx + dy W, dxt = beta dxt + dyt W + dy V,
 * hw (out, in) += dyt^T x + dy^T xt (the weight's (H v) block; NULL: not wanted). */
static void linear_backward_r(float *dx, float *dxt, float beta, float *hw, const float *dy,
                              const float *dyt, const float *x, const float *xt, const float *w,
                              const float *v, int n, int in, int out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in, beta,
                dx, in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dyt, out, w, in, beta,
                dxt, in);
    if (v)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, v, in,
                    1.0f, dxt, in);
    if (hw) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dyt, out, x, in,
                    1.0f, hw, in);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, xt, in,
                    1.0f, hw, in);
    }
}

/* Backward of a norm and its tangent (gains fixed): with A = dxh - m1 - xhat m2 (dxh = dy w,
 * m1 = mean(dxh) for LayerNorm else 0, m2 = mean(dxh xhat)), dx += rs A and
 * dxt += rs (At - rs rho A), At = dxht - m1t - xhat' m2 - xhat m2t. */
static void norm_backward_r(float *dx, float *dxt, const float *dy, const float *dyt,
                            const float *x, const float *xt, const float *mu, const float *rs,
                            const float *w, int ln, int N, int d)
{
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * d, *tr = xt + (size_t)n * d;
        const float *dyr = dy + (size_t)n * d, *dtr = dyt + (size_t)n * d;
        float *dxr = dx + (size_t)n * d, *dxtr = dxt + (size_t)n * d, m = mu[n], r = rs[n];
        double mt = 0, rho = 0, m1 = 0, m1t = 0, m2 = 0, m2t = 0;
        if (ln)
            for (int i = 0; i < d; i++)
                mt += tr[i];
        mt /= d;
        for (int i = 0; i < d; i++)
            rho += (double)(xr[i] - m) * r * (tr[i] - mt);
        rho /= d;
        for (int i = 0; i < d; i++) {
            double xh = (xr[i] - m) * r, xht = r * ((tr[i] - mt) - xh * rho);
            double dxh = (double)dyr[i] * w[i], dxht = (double)dtr[i] * w[i];
            m1 += dxh;
            m1t += dxht;
            m2 += dxh * xh;
            m2t += dxht * xh + dxh * xht;
        }
        m1 = ln ? m1 / d : 0;
        m1t = ln ? m1t / d : 0;
        m2 /= d;
        m2t /= d;
        for (int i = 0; i < d; i++) {
            double xh = (xr[i] - m) * r, xht = r * ((tr[i] - mt) - xh * rho);
            double A = (double)dyr[i] * w[i] - m1 - xh * m2;
            double At = (double)dtr[i] * w[i] - m1t - xht * m2 - xh * m2t;
            dxr[i] += (float)(r * A);
            dxtr[i] += (float)(r * (At - r * rho * A));
        }
    }
}

/* Backward of attention_forward and its tangent: dq, dqt set; dk, dv, dkt, dvt set (zeroed,
 * then summed over the query heads sharing them). Per (b, h), with c = rowsum(P dP):
 * dPt = dOt V^T + dO Vt^T, dVt += Pt^T dO + P^T dOt, dSt = Pt (dP - c) + P (dPt - ct),
 * dQt = scale (dSt K + dS Kt), dKt += scale (dSt^T Q + dS^T Qt). s3: 3 (T, T) scratch. */
static void attention_backward_r(float *dq, float *dqt, int ldq, float *dk, float *dkt, int ldk,
                                 float *dv, float *dvt, int ldv, const float *do_,
                                 const float *dot_, const float *att, const float *q,
                                 const float *qt, const float *k, const float *kt, const float *v,
                                 const float *vt, int B, int T, int H, int Hk, int hd, float *s3)
{
    float scale = (float)(1.0 / sqrt((double)hd));
    int g = H / Hk, ldo = H * hd;
    float *pt = s3, *dp = s3 + (size_t)T * T, *dpt = dp + (size_t)T * T;
    for (int n = 0; n < B * T; n++) {
        memset(dk + (size_t)n * ldk, 0, (size_t)Hk * hd * sizeof(float));
        memset(dv + (size_t)n * ldv, 0, (size_t)Hk * hd * sizeof(float));
        memset(dkt + (size_t)n * ldk, 0, (size_t)Hk * hd * sizeof(float));
        memset(dvt + (size_t)n * ldv, 0, (size_t)Hk * hd * sizeof(float));
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t r0 = (size_t)b * T, qo = r0 * ldq + h * hd, ko = r0 * ldk + (h / g) * hd;
            size_t vo = r0 * ldv + (h / g) * hd, oo = r0 * ldo + h * hd;
            const float *P = att + ((size_t)b * H + h) * T * T;
            softmax_tangent(pt, P, q + qo, qt + qo, ldq, k + ko, kt + ko, ldk, T, hd, scale);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, do_ + oo, ldo,
                        v + vo, ldv, 0.0f, dp, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dot_ + oo, ldo,
                        v + vo, ldv, 0.0f, dpt, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, do_ + oo, ldo,
                        vt + vo, ldv, 1.0f, dpt, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, do_ + oo,
                        ldo, 1.0f, dv + vo, ldv);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, pt, T, do_ + oo,
                        ldo, 1.0f, dvt + vo, ldv);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dot_ + oo,
                        ldo, 1.0f, dvt + vo, ldv);
            for (int i = 0; i < T; i++) {
                const float *pr = P + (size_t)i * T, *ptr = pt + (size_t)i * T;
                float *a = dp + (size_t)i * T, *at = dpt + (size_t)i * T;
                double c = 0, ct = 0;
                for (int j = 0; j <= i; j++) {
                    c += (double)pr[j] * a[j];
                    ct += (double)ptr[j] * a[j] + (double)pr[j] * at[j];
                }
                for (int j = 0; j <= i; j++) {
                    float dpv = a[j];
                    at[j] = ptr[j] * (dpv - (float)c) + pr[j] * (at[j] - (float)ct);
                    a[j] = pr[j] * (dpv - (float)c);
                }
                for (int j = i + 1; j < T; j++)
                    a[j] = at[j] = 0.0f;
            }
            /* dp = dS, dpt = dSt */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dp, T, k + ko,
                        ldk, 0.0f, dq + qo, ldq);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dpt, T, k + ko,
                        ldk, 0.0f, dqt + qo, ldq);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dp, T, kt + ko,
                        ldk, 1.0f, dqt + qo, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dp, T, q + qo,
                        ldq, 1.0f, dk + ko, ldk);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dpt, T, q + qo,
                        ldq, 1.0f, dkt + ko, ldk);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dp, T, qt + qo,
                        ldq, 1.0f, dkt + ko, ldk);
        }
}

/* d^2 gelu_new / dx^2: with t = tanh(u), s = 1 - t^2, u' = k (1 + 3 c x^2), u'' = 6 k c x:
 * s u' + x s (u'' - 2 t u'^2) / 2. */
static float gelu_grad2(float x)
{
    float u = GELU_K * (x + 0.044715f * x * x * x);
    float t = 1.0f - 2.0f / (expf(2.0f * u) + 1.0f), s = 1.0f - t * t;
    float u1 = GELU_K * (1.0f + 0.134145f * x * x), u2 = 6.0f * GELU_K * 0.044715f * x;
    return s * u1 + 0.5f * x * s * (u2 - 2.0f * t * u1 * u1);
}

/* Scratch floats of qs_lm_hvp: twice the backward's (values and tangents) plus 2 (T, T). */
static int hvp_floats(const struct qs_lm *m, int B, int T, struct dims *z, size_t *out)
{
    size_t f;
    if (scratch_floats(m, B, T, 0, z, &f) < 0 || qs_size_mul(f, 2, &f) < 0 ||
        qs_size_add(f, 2 * z->T * z->T, out) < 0)
        return -1;
    return 0;
}

int qs_lm_hvp(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
              const float *const *vw, float **hv, double *loss, qs_err *e)
{
    if (need_f32(m, e) < 0)
        return -1;
    if (check_windows(m, tok, start, B, T, e) < 0)
        return -1;
    const struct qs_lm_priv *p = m->priv;
    const int gpt2 = m->family == QS_LM_GPT2, per = gpt2 ? 4 : 7;
    struct dims z;
    size_t nf;
    if (hvp_floats(m, B, T, &z, &nf) < 0)
        return qs_errf(e, "%s: Hessian-vector products of %d windows of %d tokens overflow",
                       m->path, B, T);
    char what[96];
    snprintf(what, sizeof what, "Hessian-vector products of %d windows of %d tokens", B, T);
    float *buf = qs_alloc(nf, sizeof(float), what, e);
    struct acts *A = buf ? qs_calloc(2 * (size_t)m->n_layer, sizeof *A) : NULL;
    if (!A) {
        free(buf);
        return buf ? qs_errf(e, "%s: out of memory", m->path) : qs_err_prefix(e, m->path);
    }
    struct acts *At = A + m->n_layer; /* tangents (their att and norm statistics unused) */
    const int N = B * T, d = m->d_model, ff = m->d_ff, H = m->n_head, Hk = m->n_kv_head;
    const int hd = d / H, kv = Hk * hd, V = m->vocab, sh = m->nsites - 1;
    const size_t Nd = (size_t)N * d, NV = (size_t)N * V;
    const size_t big = z.d + 2 * z.kv > z.ff ? z.d + 2 * z.kv : z.ff;
    float *q = buf;
    for (int l = 0; l < m->n_layer; l++)
        q = acts_carve(&A[l], q, &z);
    for (int l = 0; l < m->n_layer; l++)
        q = acts_carve(&At[l], q, &z);
    float *resf = q, *resft = resf + Nd, *muf = resft + Nd, *rsf = muf + N, *nfo = rsf + N;
    float *nft = nfo + Nd, *lg = nft + Nd, *lgt = lg + NV, *cs = lgt + NV;
    float *dres = cs + (size_t)T * hd, *drest = dres + Nd, *dn = drest + Nd, *dnt = dn + Nd;
    float *dbig = dnt + Nd, *dbigt = dbig + N * big, *dbig2 = dbigt + N * big;
    float *dbig2t = dbig2 + N * big, *s3 = dbig2t + N * big; /* 3 (T, T) */
#define VW(s) (vw ? vw[s] : NULL)
#define HW(s) (hv ? hv[s] : NULL)
    for (int s = 0; hv && s < m->nsites; s++)
        if (hv[s])
            memset(hv[s], 0, (size_t)m->sites[s].in * m->sites[s].out * sizeof(float));

    /* ---- forward with tangents ---- */
    embed_forward(A[0].res, tok, start, B, T, d, p->wte, gpt2 ? p->wpe : NULL);
    memset(At[0].res, 0, Nd * sizeof(float)); /* no direction on the embeddings */
    if (!gpt2)
        rope_table(cs, m, T, hd);
    for (int l = 0; l < m->n_layer; l++) {
        const struct lm_layer *L = &p->layer[l];
        struct acts *a = &A[l], *at = &At[l];
        float *out = l + 1 < m->n_layer ? A[l + 1].res : resf;
        float *outt = l + 1 < m->n_layer ? At[l + 1].res : resft;
        int s0 = per * l, so = s0 + (gpt2 ? 1 : 3), sd = s0 + (gpt2 ? 3 : 6);
        const struct qs_lm_site *S = m->sites;
        norm_forward(a->n1, a->mu1, a->rs1, a->res, N, d, L->n1w, L->n1b, m->eps);
        norm_tangent(at->n1, at->res, a->res, a->mu1, a->rs1, L->n1w, gpt2, N, d);
        if (gpt2) {
            linear_forward(a->qkv, a->n1, S[s0].w, S[s0].b, N, d, 3 * d);
            linear_tangent(at->qkv, at->n1, a->n1, S[s0].w, VW(s0), N, d, 3 * d);
            attention_forward(a->ay, a->att, a->qkv, 3 * d, a->qkv + d, 3 * d, a->qkv + 2 * d,
                              3 * d, B, T, H, H, hd, 0);
            attention_tangent(at->ay, a->att, a->qkv, at->qkv, 3 * d, a->qkv + d, at->qkv + d,
                              3 * d, a->qkv + 2 * d, at->qkv + 2 * d, 3 * d, B, T, H, H, hd, s3);
        } else {
            float *qq = a->qkv, *kk = qq + Nd, *vv = kk + (size_t)N * kv;
            float *qt = at->qkv, *kt = qt + Nd, *vt = kt + (size_t)N * kv;
            linear_forward(qq, a->n1, S[s0].w, S[s0].b, N, d, d);
            linear_forward(kk, a->n1, S[s0 + 1].w, S[s0 + 1].b, N, d, kv);
            linear_forward(vv, a->n1, S[s0 + 2].w, S[s0 + 2].b, N, d, kv);
            linear_tangent(qt, at->n1, a->n1, S[s0].w, VW(s0), N, d, d);
            linear_tangent(kt, at->n1, a->n1, S[s0 + 1].w, VW(s0 + 1), N, d, kv);
            linear_tangent(vt, at->n1, a->n1, S[s0 + 2].w, VW(s0 + 2), N, d, kv);
            rope(qq, N, T, H, hd, cs, 1.0f);
            rope(kk, N, T, Hk, hd, cs, 1.0f);
            rope(qt, N, T, H, hd, cs, 1.0f);
            rope(kt, N, T, Hk, hd, cs, 1.0f);
            attention_forward(a->ay, a->att, qq, d, kk, kv, vv, kv, B, T, H, Hk, hd, m->window);
            attention_tangent(at->ay, a->att, qq, qt, d, kk, kt, kv, vv, vt, kv, B, T, H, Hk, hd,
                              s3);
        }
        linear_forward(a->res2, a->ay, S[so].w, S[so].b, N, d, d);
        linear_tangent(at->res2, at->ay, a->ay, S[so].w, VW(so), N, d, d);
        for (size_t i = 0; i < Nd; i++) {
            a->res2[i] += a->res[i];
            at->res2[i] += at->res[i];
        }
        norm_forward(a->n2, a->mu2, a->rs2, a->res2, N, d, L->n2w, L->n2b, m->eps);
        norm_tangent(at->n2, at->res2, a->res2, a->mu2, a->rs2, L->n2w, gpt2, N, d);
        if (gpt2) {
            linear_forward(a->fc, a->n2, S[s0 + 2].w, S[s0 + 2].b, N, d, ff);
            linear_tangent(at->fc, at->n2, a->n2, S[s0 + 2].w, VW(s0 + 2), N, d, ff);
            for (size_t i = 0; i < (size_t)N * ff; i++) {
                a->hh[i] = gelu_new(a->fc[i]);
                at->hh[i] = gelu_grad(a->fc[i]) * at->fc[i];
            }
        } else {
            linear_forward(a->fc, a->n2, S[s0 + 4].w, S[s0 + 4].b, N, d, ff);
            linear_forward(a->up, a->n2, S[s0 + 5].w, S[s0 + 5].b, N, d, ff);
            linear_tangent(at->fc, at->n2, a->n2, S[s0 + 4].w, VW(s0 + 4), N, d, ff);
            linear_tangent(at->up, at->n2, a->n2, S[s0 + 5].w, VW(s0 + 5), N, d, ff);
            for (size_t i = 0; i < (size_t)N * ff; i++) {
                float gg = a->fc[i], sg = 1.0f / (1.0f + expf(-gg)), si = gg * sg;
                float s1 = sg * (1.0f + gg * (1.0f - sg));
                a->hh[i] = si * a->up[i];
                at->hh[i] = s1 * at->fc[i] * a->up[i] + si * at->up[i];
            }
        }
        linear_forward(out, a->hh, S[sd].w, S[sd].b, N, ff, d);
        linear_tangent(outt, at->hh, a->hh, S[sd].w, VW(sd), N, ff, d);
        for (size_t i = 0; i < Nd; i++) {
            out[i] += a->res2[i];
            outt[i] += at->res2[i];
        }
    }
    norm_forward(nfo, muf, rsf, resf, N, d, p->nfw, gpt2 ? p->nfb : NULL, m->eps);
    norm_tangent(nft, resft, resf, muf, rsf, p->nfw, gpt2, N, d);
    linear_forward(lg, nfo, m->sites[sh].w, NULL, N, d, V);
    linear_tangent(lgt, nft, nfo, m->sites[sh].w, VW(sh), N, d, V);
    /* cross-entropy: lg := delta = (p - onehot) / N, lgt := delta' = p (z' - rowsum(p z')) / N */
    double sum = 0;
    for (int n = 0; n < N; n++) {
        float *r = lg + (size_t)n * V, *rt = lgt + (size_t)n * V;
        int y = tok[start[n / T] + n % T + 1];
        double mx = r[0], zz = 0, pz = 0;
        for (int i = 1; i < V; i++)
            mx = r[i] > mx ? r[i] : mx;
        for (int i = 0; i < V; i++)
            zz += exp(r[i] - mx);
        double lse = mx + log(zz);
        sum += lse - r[y];
        for (int i = 0; i < V; i++)
            pz += exp(r[i] - lse) * rt[i];
        for (int i = 0; i < V; i++) {
            double pi = exp(r[i] - lse);
            r[i] = (float)((pi - (i == y)) / N);
            rt[i] = (float)(pi * (rt[i] - pz) / N);
        }
    }
    if (loss)
        *loss = sum / N;

    /* ---- backward with tangents ---- */
    memset(dres, 0, Nd * sizeof(float));
    memset(drest, 0, Nd * sizeof(float));
    linear_backward_r(dn, dnt, 0.0f, HW(sh), lg, lgt, nfo, nft, m->sites[sh].w, VW(sh), N, d, V);
    norm_backward_r(dres, drest, dn, dnt, resf, resft, muf, rsf, p->nfw, gpt2, N, d);
    for (int l = m->n_layer - 1; l >= 0; l--) {
        const struct lm_layer *L = &p->layer[l];
        const struct qs_lm_site *S = m->sites;
        struct acts *a = &A[l], *at = &At[l];
        int s0 = per * l, so = s0 + (gpt2 ? 1 : 3), sd = s0 + (gpt2 ? 3 : 6);
        /* MLP: dres, drest hold d(block output) */
        linear_backward_r(dbig, dbigt, 0.0f, HW(sd), dres, drest, a->hh, at->hh, S[sd].w, VW(sd), N,
                          ff, d);
        if (gpt2) {
            for (size_t i = 0; i < (size_t)N * ff; i++) {
                float u = a->fc[i], g1 = gelu_grad(u);
                dbigt[i] = dbigt[i] * g1 + dbig[i] * gelu_grad2(u) * at->fc[i];
                dbig[i] *= g1;
            }
            linear_backward_r(dn, dnt, 0.0f, HW(s0 + 2), dbig, dbigt, a->n2, at->n2, S[s0 + 2].w,
                              VW(s0 + 2), N, d, ff);
        } else {
            for (size_t i = 0; i < (size_t)N * ff; i++) {
                float gg = a->fc[i], gt = at->fc[i], up = a->up[i], upt = at->up[i];
                float sg = 1.0f / (1.0f + expf(-gg)), si = gg * sg;
                float s1 = sg * (1.0f + gg * (1.0f - sg));
                float s2 = sg * (1.0f - sg) * (2.0f + gg * (1.0f - 2.0f * sg));
                float dh = dbig[i], dht = dbigt[i];
                dbig2[i] = dh * si; /* d up */
                dbig2t[i] = dht * si + dh * s1 * gt;
                dbig[i] = dh * up * s1; /* d gate */
                dbigt[i] = dht * up * s1 + dh * upt * s1 + dh * up * s2 * gt;
            }
            linear_backward_r(dn, dnt, 0.0f, HW(s0 + 4), dbig, dbigt, a->n2, at->n2, S[s0 + 4].w,
                              VW(s0 + 4), N, d, ff);
            linear_backward_r(dn, dnt, 1.0f, HW(s0 + 5), dbig2, dbig2t, a->n2, at->n2, S[s0 + 5].w,
                              VW(s0 + 5), N, d, ff);
        }
        norm_backward_r(dres, drest, dn, dnt, a->res2, at->res2, a->mu2, a->rs2, L->n2w, gpt2, N,
                        d);
        /* attention: dres, drest hold d res2 */
        linear_backward_r(dn, dnt, 0.0f, HW(so), dres, drest, a->ay, at->ay, S[so].w, VW(so), N, d,
                          d);
        if (gpt2) {
            attention_backward_r(dbig, dbigt, 3 * d, dbig + d, dbigt + d, 3 * d, dbig + 2 * d,
                                 dbigt + 2 * d, 3 * d, dn, dnt, a->att, a->qkv, at->qkv, a->qkv + d,
                                 at->qkv + d, a->qkv + 2 * d, at->qkv + 2 * d, B, T, H, H, hd, s3);
            linear_backward_r(dn, dnt, 0.0f, HW(s0), dbig, dbigt, a->n1, at->n1, S[s0].w, VW(s0), N,
                              d, 3 * d);
        } else {
            float *qq = a->qkv, *kk = qq + Nd, *vv = kk + (size_t)N * kv;
            float *qt = at->qkv, *kt = qt + Nd, *vt = kt + (size_t)N * kv;
            float *dq = dbig, *dk = dq + Nd, *dv = dk + (size_t)N * kv;
            float *dqt = dbigt, *dkt = dqt + Nd, *dvt = dkt + (size_t)N * kv;
            attention_backward_r(dq, dqt, d, dk, dkt, kv, dv, dvt, kv, dn, dnt, a->att, qq, qt, kk,
                                 kt, vv, vt, B, T, H, Hk, hd, s3);
            rope(dq, N, T, H, hd, cs, -1.0f);
            rope(dk, N, T, Hk, hd, cs, -1.0f);
            rope(dqt, N, T, H, hd, cs, -1.0f);
            rope(dkt, N, T, Hk, hd, cs, -1.0f);
            linear_backward_r(dn, dnt, 0.0f, HW(s0), dq, dqt, a->n1, at->n1, S[s0].w, VW(s0), N, d,
                              d);
            linear_backward_r(dn, dnt, 1.0f, HW(s0 + 1), dk, dkt, a->n1, at->n1, S[s0 + 1].w,
                              VW(s0 + 1), N, d, kv);
            linear_backward_r(dn, dnt, 1.0f, HW(s0 + 2), dv, dvt, a->n1, at->n1, S[s0 + 2].w,
                              VW(s0 + 2), N, d, kv);
        }
        norm_backward_r(dres, drest, dn, dnt, a->res, at->res, a->mu1, a->rs1, L->n1w, gpt2, N, d);
    }
#undef VW
#undef HW
    free(A);
    free(buf);
    return 0;
}

int qs_lm_hutchinson(const struct qs_lm *m, const uint32_t *tok, const size_t *start, int B, int T,
                     int site, int probes, uint64_t seed, double *trace, double *se, qs_err *e)
{
    if (need_f32(m, e) < 0)
        return -1;
    if (site < 0 || site >= m->nsites)
        return qs_errf(e, "hutchinson: no site %d", site);
    if (probes < 2)
        return qs_errf(e, "hutchinson: need at least 2 probes for a standard error (got %d)",
                       probes);
    size_t nw = (size_t)m->sites[site].in * m->sites[site].out;
    const float **vv = qs_calloc((size_t)m->nsites, sizeof *vv);
    float **hv = qs_calloc((size_t)m->nsites, sizeof *hv);
    float *v = qs_alloc(nw, 2 * sizeof(float), "hutchinson: the probe and its H v", e);
    int rc = v && vv && hv ? 0 : -1;
    if (rc < 0 && v)
        qs_errf(e, "hutchinson: out of memory");
    qs_rng rng; /* the MLP's convention (qs_hutchinson): one stream per unit */
    qs_rng_seed(&rng, seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(site + 1)));
    double mean = 0.0, m2 = 0.0;
    for (int t = 0; rc == 0 && t < probes; t++) {
        vv[site] = v;
        hv[site] = v + nw;
        for (size_t j = 0; j < nw; j++)
            v[j] = (qs_rng_u64(&rng) >> 63) ? 1.0f : -1.0f;
        if ((rc = qs_lm_hvp(m, tok, start, B, T, vv, hv, NULL, e)) < 0)
            break;
        double qf = 0.0; /* v^T H v */
        for (size_t j = 0; j < nw; j++)
            qf += (double)v[j] * hv[site][j];
        double dd = qf - mean; /* Welford */
        mean += dd / (t + 1);
        m2 += dd * (qf - mean);
    }
    if (rc == 0) {
        *trace = mean;
        *se = sqrt(m2 / (probes - 1) / probes);
    }
    free(vv);
    free(hv);
    free(v);
    return rc;
}
