/* sitemethod.c - quantizer methods as options of `quant`: a rule's method (GPTQ, AWQ, imatrix
 * rounding, Hadamard rotation, SmoothQuant) applied to the sites it matches, on every family.
 *
 * A site with a method is computed in forward order (qs_bench_methods_refresh) from its
 * calibration inputs: by default those of the partly quantized model as it runs (GPTQ's
 * sequential mode: the sites before it already quantized, with their methods), with
 * inputs=float those of the float model. The site keeps:
 *   packed - the codes of the matrix the method quantized, W' = W H^T diag(xs) (rotated and/or
 *            scaled basis): what a deployment stores;
 *   wq     - the effective weight in the original basis, Q(W') diag(xs)^-1 H, so x wq^T is what
 *            the deployed site computes and every analysis (error, spectrum, rank, corrections,
 *            ablate, sensitivity) reads it unchanged. It is not kept: qs_site_wq decodes it from
 *            the codes on use (wq_xform: unpack, then diag(xs)^-1, then H^T, as computed here;
 *            site_apply checks the decode against the method's weight, bit for bit). The error of
 * an orthogonal rotation is measured in the rotated basis and reported in the original one: E H has
 * E's singular values; rot, xs - the activation transform T x = diag(xs)^-1 H x: a quantized
 * activation is T^-1 Q(T x), which leaves the float product unchanged. */
#include "qscope/bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/lmbench.h"
#include "qscope/methods.h"
#include "qscope/moments.h"

#define DAMP_DEFAULT 0.01

/* ---- the rule's options ------------------------------------------------------------------- */

void qs_rule_method_default(struct qs_rule_method *m)
{
    memset(m, 0, sizeof *m);
}

int qs_rule_method_custom(const struct qs_rule_method *m)
{
    return m->method != QS_METHOD_RTN || m->rotate || m->smooth_on;
}

static double damp_of(const struct qs_rule_method *m)
{
    return m->damp > 0.0 ? m->damp : DAMP_DEFAULT;
}

int qs_rule_method_parse_token(struct qs_rule_method *m, const char *tok, qs_err *e)
{
    const char *eq = strchr(tok, '=');
    if (!eq)
        return 0;
    size_t kl = (size_t)(eq - tok);
    const char *v = eq + 1;
#define KEY(k) (kl == sizeof(k) - 1 && !strncmp(tok, k, kl))
    if (KEY("method")) {
        if (!strcmp(v, "rtn")) {
            if (m->method != QS_METHOD_IMATRIX)
                m->method = QS_METHOD_RTN;
        } else if (!strcmp(v, "gptq") || !strcmp(v, "awq")) {
            if (m->method == QS_METHOD_IMATRIX)
                return qs_errf(e,
                               "quant: weight=imatrix is a rounding of method=rtn; it does "
                               "not combine with method=%s",
                               v);
            m->method = !strcmp(v, "gptq") ? QS_METHOD_GPTQ : QS_METHOD_AWQ;
        } else {
            return qs_errf(e, "quant: method=%s: expected rtn, gptq or awq", v);
        }
        return 1;
    }
    if (KEY("weight")) {
        if (!strcmp(v, "imatrix")) {
            if (m->method != QS_METHOD_RTN && m->method != QS_METHOD_IMATRIX)
                return qs_errf(e,
                               "quant: weight=imatrix is a rounding of method=rtn; it does "
                               "not combine with method=%s",
                               qs_method_name(m->method));
            m->method = QS_METHOD_IMATRIX;
        } else if (!strcmp(v, "plain")) {
            if (m->method == QS_METHOD_IMATRIX)
                m->method = QS_METHOD_RTN;
        } else {
            return qs_errf(e, "quant: weight=%s: expected imatrix or plain", v);
        }
        return 1;
    }
    if (KEY("damp")) {
        char *end;
        double d = strtod(v, &end);
        if (!*v || *end || !(d > 0.0 && d < 1e6))
            return qs_errf(e,
                           "quant: damp=%s: expected a number > 0 (relative to the mean "
                           "diagonal of H)",
                           v);
        m->damp = d;
        return 1;
    }
    if (KEY("order")) {
        if (!strcmp(v, "act"))
            m->act_order = 1;
        else if (!strcmp(v, "col"))
            m->act_order = 0;
        else
            return qs_errf(e, "quant: order=%s: expected act or col", v);
        return 1;
    }
    if (KEY("inputs")) {
        if (!strcmp(v, "float"))
            m->inputs_float = 1;
        else if (!strcmp(v, "quant"))
            m->inputs_float = 0;
        else
            return qs_errf(e, "quant: inputs=%s: expected float or quant", v);
        return 1;
    }
    if (KEY("rotate")) {
        if (!strcmp(v, "hadamard"))
            m->rotate = 1;
        else if (!strcmp(v, "none"))
            m->rotate = 0;
        else
            return qs_errf(e, "quant: rotate=%s: expected hadamard or none", v);
        return 1;
    }
    if (KEY("smooth")) {
        char *end;
        double a = strtod(v, &end);
        if (!strcmp(v, "none")) {
            m->smooth_on = 0;
            m->smooth = 0.0;
            return 1;
        }
        if (!*v || *end || !(a >= 0.0 && a <= 1.0))
            return qs_errf(e, "quant: smooth=%s: expected alpha in [0, 1] (or none)", v);
        m->smooth_on = 1;
        m->smooth = a;
        return 1;
    }
#undef KEY
    return 0;
}

int qs_rule_method_check(const struct qs_rule_method *m, const struct qs_format *f, int roles,
                         qs_err *e)
{
    if (!qs_rule_method_custom(m) && !m->damp && !m->act_order && !m->inputs_float)
        return 0;
    const char *mn = m->method == QS_METHOD_IMATRIX ? "weight=imatrix"
                     : m->method == QS_METHOD_GPTQ  ? "method=gptq"
                     : m->method == QS_METHOD_AWQ   ? "method=awq"
                                                    : NULL;
    if ((m->damp > 0.0 || m->act_order) && m->method != QS_METHOD_GPTQ)
        return qs_errf(e, "quant: damp= and order= are options of method=gptq");
    if (m->inputs_float && m->method == QS_METHOD_RTN)
        return qs_errf(e, "quant: inputs= chooses where method=gptq, method=awq and "
                          "weight=imatrix take their statistics; round-to-nearest takes none");
    if (f->kind == QS_FMT_NONE)
        return qs_errf(e, "quant: format none keeps sites in float; a method applies to a format");
    if (mn && roles == QS_ROLE_A)
        return qs_errf(e, "quant: %s rounds weights; this rule is on=a", mn);
    if (mn && f->kind == QS_FMT_GGML)
        return qs_errf(e,
                       "quant: %s with %s: ggml block types are rounded by llama.cpp's own "
                       "rules in qscope",
                       mn, f->name);
    if (m->rotate && m->smooth_on)
        return qs_errf(e, "quant: rotate=hadamard and smooth= are two ways to spread activation "
                          "outliers; choose one");
    if (m->smooth_on && m->method == QS_METHOD_AWQ)
        return qs_errf(e, "quant: smooth= and method=awq both scale input channels; choose one");
    if ((m->rotate || m->smooth_on) && f->kind == QS_FMT_GGML)
        return qs_errf(e, "quant: rotate= and smooth= are not applied to ggml block types");
    return 0;
}

void qs_rule_method_format(const struct qs_rule_method *m, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (k < n)                                                                                 \
            k += (size_t)snprintf(buf + k, n - k, __VA_ARGS__);                                    \
    } while (0)
    const char *in = m->inputs_float ? "float" : "quant";
    if (m->method == QS_METHOD_GPTQ)
        PUT("method=gptq damp=%.9g order=%s inputs=%s", damp_of(m), m->act_order ? "act" : "col",
            in);
    else if (m->method == QS_METHOD_AWQ)
        PUT("method=awq inputs=%s", in);
    else if (m->method == QS_METHOD_IMATRIX)
        PUT("weight=imatrix inputs=%s", in);
    if (m->rotate)
        PUT("%srotate=hadamard", k ? " " : "");
    if (m->smooth_on)
        PUT("%ssmooth=%.9g", k ? " " : "", m->smooth);
#undef PUT
}

void qs_layer_method_desc(const struct qs_layer_state *s, int i, char *buf, size_t n)
{
    if (!qs_rule_method_custom(&s->wm)) {
        snprintf(buf, n, "rtn");
        return;
    }
    qs_rule_method_format(&s->wm, buf, n);
    size_t k = strlen(buf);
    if (s->wm.rotate && k < n)
        k += (size_t)snprintf(buf + k, n - k, " seed=%llu",
                              (unsigned long long)(s->wm.seed + (uint64_t)i));
    if (s->wm.method == QS_METHOD_AWQ && s->xs && k < n)
        snprintf(buf + k, n - k, " alpha=%.9g", s->xs_alpha);
}

/* ---- the activation transform ------------------------------------------------------------- */

void qs_layer_method_clear(struct qs_layer_state *s)
{
    qs_rot_free(s->rot);
    free(s->xs);
    s->rot = NULL;
    s->xs = NULL;
    s->xs_alpha = 0.0;
    s->xform_bits = 0.0;
    s->mpending = 0;
}

int qs_bench_act_xform(const struct qs_layer_state *s, float *x, int n, int in, int inverse,
                       qs_err *e)
{
    if (!inverse && s->rot && qs_rot_apply(s->rot, x, n, 0, e) < 0)
        return -1;
    if (s->xs)
        qs_scale_cols(x, n, in, s->xs, !inverse);
    if (inverse && s->rot && qs_rot_apply(s->rot, x, n, 1, e) < 0)
        return -1;
    return 0;
}

float qs_bench_site_static_amax(const struct qs_layer_state *s, const float *x, int n, int in)
{
    if (!s->rot && !s->xs)
        return qs_bench_static_amax(x, (size_t)n * in);
    float *row = malloc((size_t)in * sizeof *row), mx = 0.0f;
    if (!row) /* the untransformed absmax: a coarser scale, never a wrong value */
        return qs_bench_static_amax(x, (size_t)n * in);
    for (int r = 0; r < n; r++) {
        memcpy(row, x + (size_t)r * in, (size_t)in * sizeof *row);
        qs_err ig;
        if (qs_bench_act_xform(s, row, 1, in, 0, &ig) < 0)
            memcpy(row, x + (size_t)r * in, (size_t)in * sizeof *row);
        for (int j = 0; j < in; j++)
            if (fabsf(row[j]) > mx)
                mx = fabsf(row[j]);
    }
    free(row);
    return mx > 0 ? mx : 1e-30f;
}

/* ---- a site's calibration inputs ---------------------------------------------------------- */

struct cap {
    float *x;
    size_t in, ctx, nrows;
};

static int cap_fn(void *u, int site, int window, const float *xf, const float *xq, const float *yf,
                  const float *yq, int n, qs_err *e)
{
    (void)site, (void)xf, (void)yf, (void)yq, (void)e;
    struct cap *c = u;
    size_t off = (size_t)window * c->ctx * c->in;
    memcpy(c->x + off, xq, (size_t)n * c->in * sizeof(float));
    return 0;
}

/* The one place a method reads its site's inputs: the calibration rows of site i, from the
 * float model (inputs_float) or the quantized path as it runs now; *x: (n, in), a copy the
 * caller frees. MLPs read the activation caches; transformers stream the calibration windows
 * once (only the sites up to i run). A later switch to streamed statistics (X^T X, mean |x|)
 * replaces this function and the few lines that turn rows into statistics. */
static int site_inputs(struct qs_bench *b, int i, int inputs_float, float **x, int *n, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    *x = NULL;
    *n = 0;
    if (b->model) {
        const float *src;
        int rows;
        if (qs_bench_inputs(b, QS_CALIB, !inputs_float, i, &src, &rows, e) < 0)
            return -1;
        if (!(*x = qs_alloc((size_t)rows * u.in, sizeof(float), "a site's calibration inputs", e)))
            return -1;
        memcpy(*x, src, (size_t)rows * u.in * sizeof(float));
        *n = rows;
        return 0;
    }
    int nw = qs_bench_stream_windows(b, QS_CALIB, e);
    if (nw < 0)
        return -1;
    size_t ctx = (size_t)b->lm->ctx, rows = (size_t)nw * ctx;
    if (rows * u.in * sizeof(float) > b->act_budget)
        return qs_errf(e,
                       "its calibration inputs (%.1f MB) exceed the activation budget "
                       "(%.1f MB) (a rotation or smoothing reads rows); a smaller calibration "
                       "(set calib tokens=N) fits",
                       (double)rows * u.in * sizeof(float) / 1048576.0, b->act_budget / 1048576.0);
    struct cap c = {qs_alloc(rows * u.in, sizeof(float), "a site's calibration inputs", e),
                    (size_t)u.in, ctx, rows};
    if (!c.x)
        return -1;
    unsigned char *want = qs_calloc((size_t)b->lm->nsites, 1);
    if (!want) {
        free(c.x);
        return qs_errf(e, "out of memory");
    }
    want[i] = 1;
    int rc = qs_bench_stream(b, QS_CALIB, want, !inputs_float, cap_fn, &c, e);
    free(want);
    if (rc < 0) {
        free(c.x);
        return -1;
    }
    *x = c.x;
    *n = (int)rows;
    return 0;
}

/* The statistics a method takes of site i's calibration inputs, in the basis it quantizes in
 * (rotated by rot, divided by the smoothing scales xs; either may be NULL): h (cols, cols) =
 * 2 X^T X for GPTQ and AWQ, v (cols) = mean |x_j| for AWQ, mean x_j^2 for imatrix. A
 * transformer's are summed while its calibration windows stream (qs_bench_site_moments: memory
 * O(in^2), whatever the tokens), except for AWQ on a rotated basis (mean |x| of rotated rows is
 * no function of the moments) and rotations in general (their basis change is applied to rows);
 * an MLP's come from its cached rows. Sums in double, rows in 256-row blocks either way. */
static int site_stats(struct qs_bench *b, int i, const struct qs_rule_method *m,
                      const struct qs_rot *rot, const float *xs, const struct qs_moments *given,
                      double *h, float *v, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    const int cols = u.in;
    const size_t cc = (size_t)cols * cols;
    if (b->lm && !rot) {
        struct qs_moments mm;
        memset(&mm, 0, sizeof mm);
        if (given) /* the block pass's (block_moments): the same sums, computed once */
            mm = *given;
        else if (qs_bench_site_moments(b, i, QS_CALIB, !m->inputs_float, &mm, e) < 0)
            return -1;
        if (mm.n < 1) {
            if (!given)
                qs_moments_free(&mm);
            return qs_errf(e, "%s: no calibration inputs", u.name);
        }
        for (size_t k = 0; k < cc; k++)
            h[k] = 2.0 * mm.xtx[k];
        if (xs)
            for (int r = 0; r < cols; r++)
                for (int c = 0; c < cols; c++)
                    h[(size_t)r * cols + c] /= (double)xs[r] * xs[c];
        for (int j = 0; j < cols; j++) {
            double sj = xs ? xs[j] : 1.0;
            v[j] = m->method == QS_METHOD_IMATRIX
                       ? (float)(mm.xtx[(size_t)j * cols + j] / (sj * sj) / (double)mm.n)
                       : (float)(mm.absum[j] / sj / (double)mm.n);
        }
        if (!given)
            qs_moments_free(&mm);
        return 0;
    }
    float *x = NULL;
    int n = 0;
    if (site_inputs(b, i, m->inputs_float, &x, &n, e) < 0)
        return -1;
    int rc = -1;
    if (n < 1) {
        qs_errf(e, "%s: no calibration inputs", u.name);
        goto out;
    }
    if (rot && qs_rot_apply(rot, x, n, 0, e) < 0)
        goto out;
    if (xs)
        qs_scale_cols(x, n, cols, xs, 1);
    memset(h, 0, cc * sizeof *h);
    if (m->method != QS_METHOD_IMATRIX && qs_hessian_add(h, x, n, cols, e) < 0)
        goto out;
    double *acc = calloc((size_t)cols, sizeof *acc);
    if (!acc) {
        qs_errf(e, "out of memory");
        goto out;
    }
    for (size_t r = 0; r < (size_t)n; r++)
        for (int j = 0; j < cols; j++) {
            double a = x[r * cols + j];
            acc[j] += m->method == QS_METHOD_IMATRIX ? a * a : fabs(a);
        }
    for (int j = 0; j < cols; j++)
        v[j] = (float)(acc[j] / n);
    free(acc);
    rc = 0;
out:
    free(x);
    return rc;
}

/* ---- one site ----------------------------------------------------------------------------- */

/* A method's result on one site: the codes of the matrix it quantized, the effective weight in
 * the original basis (NULL when the weights stay float), the activation transform. */
struct mres {
    struct qs_packed p;
    float *wq;
    struct qs_rot *rot;
    float *xs;
    double alpha;
};

static void mres_free(struct mres *r)
{
    qs_packed_free(&r->p);
    free(r->wq);
    qs_rot_free(r->rot);
    free(r->xs);
    memset(r, 0, sizeof *r);
}

/* Computes method m with format f, options o on site i: its transform, packed codes and
 * effective weight. mm (may be NULL): the finished moments of site i's quantized-path inputs,
 * when the caller has them (a transformer's block pass); NULL: site_stats computes them. */
static int method_compute(struct qs_bench *b, int i, const struct qs_format *f,
                          const struct qs_qopts *o, const struct qs_rule_method *m,
                          const struct qs_moments *mm, struct mres *res, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    memset(res, 0, sizeof *res);
    const int rows = u.out, cols = u.in, wq_on = f->kind != QS_FMT_NONE;
    const size_t wn = (size_t)rows * cols;
    int rc = -1, nxf = 0;
    float *xf = NULL, *wt = NULL, *q = NULL, *qe = NULL, *xs = NULL, *v = NULL;
    double *h = NULL;
    struct qs_qblock *blk = NULL;
    struct qs_rot *rot = NULL;
    struct qs_packed p;
    memset(&p, 0, sizeof p);
    char what[160];
    snprintf(what, sizeof what, "%s: the method's weights", u.name);

    if (m->rotate && qs_rot_new(cols, m->seed + (uint64_t)i, &rot, e) < 0)
        goto done;
    if (m->smooth_on) { /* SmoothQuant: max |X_j| of the float model's inputs, max |W_j| */
        if (site_inputs(b, i, 1, &xf, &nxf, e) < 0)
            goto done;
        float *xmax = calloc((size_t)cols, sizeof *xmax);
        if (!xmax || !(xs = malloc((size_t)cols * sizeof *xs))) {
            free(xmax);
            qs_errf(e, "out of memory");
            goto done;
        }
        for (size_t r = 0; r < (size_t)nxf; r++)
            for (int j = 0; j < cols; j++) {
                float a = fabsf(xf[r * cols + j]);
                xmax[j] = a > xmax[j] ? a : xmax[j];
            }
        const float *uw = qs_bench_w(b, i, e);
        rc = uw ? qs_smoothquant_scales(xmax, uw, rows, cols, m->smooth, xs, e) : -1;
        /* qscope: an input that is 0 on every calibration row has no outlier to migrate; the
         * authors' clamp (s = 1e-5) would blow up any value it takes later (the quantized path,
         * the held-out split) by 1e5 and wreck the tensor's activation scale: keep s = 1 */
        for (int j = 0; rc == 0 && j < cols; j++)
            if (xmax[j] == 0.0f)
                xs[j] = 1.0f;
        free(xmax);
        if (rc < 0)
            goto done;
        rc = -1;
    }
    if (wq_on) {
        /* the matrix the method quantizes: W' = W H^T diag(xs) */
        const float *uw = qs_bench_w(b, i, e);
        if (!uw || !(wt = qs_alloc(wn, sizeof *wt, what, e)) ||
            !(q = qs_alloc(wn, sizeof *q, what, e)))
            goto done;
        memcpy(wt, uw, wn * sizeof *wt);
        if (rot && qs_rot_apply(rot, wt, rows, 0, e) < 0)
            goto done;
        if (xs)
            qs_scale_cols(wt, rows, cols, xs, 0);
        if (m->method != QS_METHOD_RTN) {
            if (!(h = qs_alloc((size_t)cols * cols, sizeof *h, "the site's Hessian", e)) ||
                !(v = malloc((size_t)cols * sizeof *v))) {
                if (h)
                    qs_errf(e, "out of memory");
                goto done;
            }
            if (site_stats(b, i, m, rot, xs, mm, h, v, e) < 0)
                goto done;
        }
        size_t nblk = 0;
        if (m->method == QS_METHOD_GPTQ || m->method == QS_METHOD_IMATRIX) {
            struct qs_quantizer *qz;
            if (qs_quantizer_new(f, o, wt, rows, cols, &qz, e) < 0)
                goto done;
            int seg = qs_quantizer_block(qz);
            qs_quantizer_free(qz);
            nblk = (size_t)rows * (size_t)((cols + seg - 1) / seg);
            if (!(blk = qs_alloc(nblk, sizeof *blk, "the method's block scales", e)))
                goto done;
        }
        switch (m->method) {
        case QS_METHOD_RTN:
            if (qs_quant_pack(f, o, wt, rows, cols, &p, e) < 0 || qs_quant_unpack(&p, q, e) < 0)
                goto done;
            break;
        case QS_METHOD_GPTQ: {
            struct qs_gptq_opts g;
            qs_gptq_opts_default(&g);
            g.damp = damp_of(m);
            g.act_order = m->act_order;
            if (qs_gptq(f, o, &g, wt, rows, cols, h, q, blk, e) < 0 ||
                qs_quant_pack_blocks(f, o, wt, q, blk, rows, cols, &p, e) < 0)
                goto done;
            break;
        }
        case QS_METHOD_AWQ: {
            float *sa = malloc((size_t)cols * sizeof *sa);
            if (!sa) {
                qs_errf(e, "out of memory");
                goto done;
            }
            /* v: mean |x|; h: 2 X^T X (the scale does not matter) */
            if (qs_awq(f, o, wt, rows, cols, v, h, 0, sa, q, &res->alpha, NULL, NULL, e) < 0) {
                free(sa);
                goto done;
            }
            /* Q(W' diag s) is RTN of the scaled matrix: pack that matrix */
            qs_scale_cols(wt, rows, cols, sa, 0);
            if (qs_quant_pack(f, o, wt, rows, cols, &p, e) < 0) {
                free(sa);
                goto done;
            }
            xs = sa; /* smooth and awq do not combine (qs_rule_method_check) */
            break;
        }
        case QS_METHOD_IMATRIX: { /* v: mean x^2 */
            if (qs_imatrix_quant_ex(f, o, wt, rows, cols, v, q, blk, e) < 0 ||
                qs_quant_pack_blocks(f, o, wt, q, blk, rows, cols, &p, e) < 0)
                goto done;
            break;
        }
        default:
            qs_errf(e, "%s: unknown method %d", u.name, m->method);
            goto done;
        }
        /* the codes must decode to exactly what the method computed */
        if (!(qe = qs_alloc(wn, sizeof *qe, what, e)) || qs_quant_unpack(&p, qe, e) < 0)
            goto done;
        if (memcmp(qe, q, wn * sizeof *q)) {
            qs_errf(e, "%s: %s: the packed codes do not reproduce the method's weights", u.name,
                    qs_method_name((enum qs_method)m->method));
            goto done;
        }
        /* the effective weight in the original basis: Q(W') diag(xs)^-1 H */
        if (xs)
            qs_scale_cols(qe, rows, cols, xs, 1);
        if (rot && qs_rot_apply(rot, qe, rows, 1, e) < 0)
            goto done;
    }
    res->p = p;
    memset(&p, 0, sizeof p);
    res->wq = qe;
    qe = NULL;
    res->rot = rot;
    rot = NULL;
    res->xs = xs;
    xs = NULL;
    rc = 0;
done:
    qs_packed_free(&p);
    qs_rot_free(rot);
    free(xf);
    free(wt);
    free(q);
    free(qe);
    free(xs);
    free(v);
    free(h);
    free(blk);
    return rc;
}

/* Computes site i's method and commits it: packed codes, effective weight, error, transform.
 * mm: as method_compute's. */
static int site_apply(struct qs_bench *b, int i, const struct qs_moments *mm, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    struct qs_layer_state *s = &b->ls[i];
    struct mres r;
    if (method_compute(b, i, &s->wfmt, &s->wopt, &s->wm, mm, &r, e) < 0)
        return -1;
    const size_t wn = (size_t)u.out * u.in;
    const float *uw = r.wq ? qs_bench_w(b, i, e) : NULL;
    if (r.wq && !uw) {
        mres_free(&r);
        return -1;
    }
    double num = 0.0, den = 0.0;
    for (size_t j = 0; r.wq && j < wn; j++) {
        double d = (double)uw[j] - r.wq[j];
        num += d * d;
        den += (double)uw[j] * uw[j];
    }
    qs_rot_free(s->rot);
    free(s->xs);
    /* the codes in the method's basis; the effective weight is decoded from them on use */
    qs_site_set_packed(b, i, r.wq ? &r.p : NULL, 1);
    s->w_rel_err = den > 0 ? sqrt(num / den) : 0.0;
    s->rot = r.rot;
    s->xs = r.xs;
    r.rot = NULL;
    r.xs = NULL;
    s->xs_alpha = r.alpha;
    /* the explicit input scale is stored beside the codes, in F32 */
    s->xform_bits = s->xs && r.wq ? 32.0 * u.in : 0.0;
    s->a_static_amax = 0.0f; /* calibrated again in the new basis */
    s->mpending = 0;
    int rc = 0;
    if (r.wq) { /* the decode must give the method's weight bit for bit */
        const float *wq = qs_site_wq(b, i, e);
        if (!wq)
            rc = -1;
        else if (memcmp(wq, r.wq, wn * sizeof *wq))
            rc =
                qs_errf(e, "%s: decoding the method's codes does not reproduce its weight", u.name);
    }
    mres_free(&r);
    return rc;
}

int qs_bench_method_weight(struct qs_bench *b, int i, const struct qs_format *f,
                           const struct qs_qopts *o, const struct qs_rule_method *m, float *wq,
                           double *bits, qs_err *e)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    if (f->kind == QS_FMT_NONE)
        return qs_errf(e, "%s: a method needs a format", u.name);
    struct mres r;
    if (method_compute(b, i, f, o, m, NULL, &r, e) < 0)
        return qs_err_prefix(e, u.name);
    memcpy(wq, r.wq, (size_t)u.out * u.in * sizeof *wq);
    *bits = 8.0 * (double)qs_packed_bytes(&r.p) + (r.xs ? 32.0 * u.in : 0.0);
    mres_free(&r);
    return 0;
}

int qs_bench_methods_pending(const struct qs_bench *b)
{
    for (int i = 0; b->ls && i < qs_bench_nunits(b); i++)
        if (b->ls[i].mpending)
            return 1;
    return 0;
}

/* ---- transformers: block by block --------------------------------------------------------
 *
 * GPTQ's sequential mode as its reference implementation runs it: the quantized path's residual
 * stream at the current block's entry is kept for every calibration window (F32, windows x ctx x
 * d_model floats); a method site's input moments come from running that block alone from it, up
 * to the site, with every site before it at its final weights (the sites sharing an input, as
 * LLaMA's q, k, v and gate, up, take one accumulation); the next block's pass first advances the
 * stream through this one. The moments are those qs_bench_site_moments streams from the
 * embeddings for each site (the same rows, window after window, added in the same blocks; the
 * quantized path's ops, qs_bench_layer_forward at every site, and qs_lm_forward_resume gives a
 * resumed pass the bits of a whole one), so the codes are bit for bit the site-by-site ones
 * (test_method_blocks.c). Cost: each input group runs its block from the entry up to it (the
 * first group of a block rides on the pass that advances the stream through the block before),
 * ~2.6 block forwards a block on GPT-2, ~3 forwards over the calibration windows in all, where
 * each site's own stream ran a float and a quantized pass from the embeddings up to it (~nsites
 * forwards in all). Memory: the kept stream, windows x ctx x d_model x 4 bytes (GPT-2-small's
 * 8 windows of 1024: 24 MiB; TinyLlama's: 64 MiB), and one window's pass, (n_layer + 1) x ctx
 * x d_model floats as qs_bench_stream's. When the kept stream would exceed act_budget the sites'
 * moments are streamed site by site as before (O(in^2) memory, the same codes). */

struct blk {
    struct qs_bench *b;
    int nw, ctx, d;
    int blk;      /* the block whose entry x holds (-1: none yet) */
    float *x;     /* (nw, ctx, d): the quantized path's residual stream there */
    float *resid; /* (n_layer + 1, ctx, d): one window's pass */
    int group;    /* the first site of the input group mm holds (-1: none) */
    struct qs_moments mm;
    int site; /* the pass: moments of this site's input, then stop at its linear */
    int stopped;
};

/* The first site sharing site i's input (LLaMA: q, k, v read one normed stream, as gate, up do;
 * GPT-2's sites each read their own). */
static int input_group(const struct qs_lm *m, int i)
{
    if (m->family != QS_LM_LLAMA || i >= 7 * m->n_layer)
        return i;
    int k = i % 7;
    return i - (k == 1 || k == 2 ? k : k == 5 ? 1 : 0);
}

/* Whether site i's method statistics can come from the block pass: a weight method other than
 * round-to-nearest on the quantized path's inputs, in the site's own basis (a rotation reads
 * rows; site_stats streams those). */
static int blk_site(const struct qs_bench *b, int i)
{
    const struct qs_layer_state *s = &b->ls[i];
    return b->lm && s->mpending && s->wfmt.kind != QS_FMT_NONE && s->wm.method != QS_METHOD_RTN &&
           !s->wm.inputs_float && !s->wm.rotate;
}

static void blk_free(struct blk *c)
{
    free(c->x);
    free(c->resid);
    qs_moments_free(&c->mm);
    memset(c, 0, sizeof *c);
}

static void blk_input(void *u, int s, const float *x, int n, int in)
{
    (void)in;
    struct blk *c = u;
    if (s == c->site)
        qs_moments_add(&c->mm, x, n);
}

static int blk_linear(void *u, int s, const float *x, int n, float *y, qs_err *e)
{
    struct blk *c = u;
    if (s == c->site) { /* its input is taken; nothing after it is wanted */
        c->stopped = 1;
        return qs_errf(e, "block pass: stopped");
    }
    return qs_bench_layer_forward(c->b, s, x, n, QS_ROLE_W | QS_ROLE_A, 1, y, e);
}

/* Sets up the kept stream: 1 when it fits act_budget (then allocated), 0 when it does not (the
 * sites are computed site by site), -1 and e on failure. */
static int blk_open(struct qs_bench *b, struct blk *c, qs_err *e)
{
    const struct qs_lm *m = b->lm;
    memset(c, 0, sizeof *c);
    c->blk = c->group = -1;
    size_t off;
    int nw;
    qs_bench_lm_split(b, &off, &nw); /* calibration windows: tokens [w ctx, (w + 1) ctx) */
    size_t keep = (size_t)nw * m->ctx * m->d_model * sizeof(float);
    if (nw < 1 || keep > b->act_budget)
        return 0;
    c->b = b;
    c->nw = nw;
    c->ctx = m->ctx;
    c->d = m->d_model;
    if (qs_mem_check(keep, "the quantized path's residual stream", e) < 0 ||
        !(c->x = qs_alloc((size_t)nw * m->ctx, (size_t)m->d_model * sizeof(float),
                          "the quantized path's residual stream", e)) ||
        !(c->resid = qs_alloc((size_t)(m->n_layer + 1) * m->ctx, (size_t)m->d_model * sizeof(float),
                              "the residual stream of a window", e))) {
        blk_free(c);
        return -1;
    }
    return 1;
}

/* The finished moments of site i's quantized-path inputs over the calibration windows (c->mm):
 * one pass over the windows from the kept stream's block (the embeddings the first time) to
 * site i, which moves the kept stream to i's block. A site sharing the input of the group
 * held reuses it (the sites of its group before it do not change it). */
static int blk_moments(struct blk *c, int i, qs_err *e)
{
    struct qs_bench *b = c->b;
    const struct qs_lm *m = b->lm;
    int l = qs_lm_site_block(m, i), g = input_group(m, i);
    if (c->group == g && c->blk == l)
        return 0;
    qs_moments_free(&c->mm);
    c->group = -1;
    size_t Td = (size_t)c->ctx * c->d;
    /* the first pass: from the quantized path's last block entry at or before l that error's
     * and eval's passes keep valid (qs_bench_resid_resume; the sites before it are at their
     * final weights, and a method site's rule dropped the entries after its block), else from
     * the embeddings */
    int r = c->blk < 0 ? qs_bench_resid_resume(b, QS_CALIB, c->nw, 0, l, 1) : 0;
    for (int w = 0; r > 0 && w < c->nw; w++)
        memcpy(c->x + (size_t)w * Td, qs_bench_resid_at(b, QS_CALIB, 1, r, w), Td * sizeof(float));
    if (r > 0)
        c->blk = r;
    /* the sites the pass runs: their static activation scales calibrated (site_apply leaves a
     * method site's to be calibrated again in its basis), as qs_bench_stream does first */
    int from = c->blk < 0 ? 0 : c->blk;
    for (int j = qs_lm_block_first_site(m, from); j < i; j++) {
        const struct qs_layer_state *s = &b->ls[j];
        if (s->afmt.kind != QS_FMT_NONE && s->amode == QS_AMODE_STATIC && s->a_static_amax <= 0) {
            if (qs_bench_update(b, e) < 0)
                return -1;
            break;
        }
    }
    if (qs_moments_init(&c->mm, m->sites[i].in, e) < 0)
        return -1;
    struct qs_hooks h = {0};
    h.u = c;
    h.input = blk_input;
    h.linear = blk_linear;
    h.cancel = &b->cancel;
    c->site = i;
    for (int w = 0; w < c->nw; w++) {
        float *xw = c->x + (size_t)w * Td;
        if (from > 0)
            memcpy(c->resid + (size_t)from * Td, xw, Td * sizeof(float));
        qs_err pe;
        c->stopped = 0;
        if (qs_lm_forward_resume(m, b->tokens->ids + (size_t)w * c->ctx, c->ctx, &h, from, c->resid,
                                 NULL, &pe) < 0 &&
            !c->stopped) {
            *e = pe;
            return -1;
        }
        if (l != from || c->blk < 0) /* entered block l: its entry is kept */
            memcpy(xw, c->resid + (size_t)l * Td, Td * sizeof(float));
        if (b->cancel)
            return qs_errf(e, "cancelled");
    }
    qs_moments_finish(&c->mm);
    c->blk = l;
    c->group = g;
    return 0;
}

/* Every pending method site in forward order; blocks 1: a transformer's method sites take their
 * moments from the block pass (when the kept stream fits), 0: each its own stream (the
 * reference the block pass is checked against). */
static int refresh(struct qs_bench *b, int strict, int blocks, qs_err *e)
{
    if (b->methods_busy || !qs_bench_methods_pending(b))
        return 0;
    int S = qs_bench_nunits(b), rc = 0, bk = 0;
    struct blk c;
    memset(&c, 0, sizeof c);
    c.blk = c.group = -1;
    b->methods_busy = 1;
    for (int i = 0; i < S && rc == 0; i++) {
        struct qs_layer_state *s = &b->ls[i];
        if (!s->mpending)
            continue;
        /* rotation with round-to-nearest needs no data; the others do */
        int data =
            s->wm.smooth_on || (s->wfmt.kind != QS_FMT_NONE && s->wm.method != QS_METHOD_RTN);
        if (data) {
            qs_err e2;
            int ready = b->model ? qs_bench_ready(b, &e2)
                        : b->lm  ? qs_bench_lm_ready(b, &e2)
                                 : qs_errf(&e2, "no model");
            if (ready < 0) {
                if (strict) {
                    char mk[200];
                    struct qs_unit u;
                    qs_bench_unit(b, i, &u);
                    qs_rule_method_format(&s->wm, mk, sizeof mk);
                    rc = qs_errf(e, "%s: %s takes statistics of the calibration data: %s", u.name,
                                 mk, e2.msg);
                }
                break;
            }
        }
        if (b->progress) {
            struct qs_unit u;
            qs_bench_unit(b, i, &u);
            char what[96];
            snprintf(what, sizeof what, "quantizer method: %s", u.name);
            b->progress(b->progress_ctx, what, (double)i / S);
        }
        const struct qs_moments *mm = NULL;
        if (blocks && blk_site(b, i)) {
            if (bk == 0 && (bk = blk_open(b, &c, e)) < 0) {
                rc = -1;
                break;
            }
            if (bk == 0)
                bk = -2; /* does not fit: site by site */
            if (bk == 1) {
                if (blk_moments(&c, i, e) < 0) {
                    struct qs_unit u;
                    qs_bench_unit(b, i, &u);
                    rc = qs_err_prefix(e, u.name);
                    break;
                }
                mm = &c.mm;
            }
        }
        if (site_apply(b, i, mm, e) < 0) {
            struct qs_unit u;
            qs_bench_unit(b, i, &u);
            rc = qs_err_prefix(e, u.name);
            break;
        }
        qs_bench_invalidate(b, i);
        qs_bench_mark_stale(b, i);
    }
    blk_free(&c);
    b->methods_busy = 0;
    return rc;
}

int qs_bench_methods_refresh(struct qs_bench *b, int strict, qs_err *e)
{
    return refresh(b, strict, 1, e);
}

int qs_bench_methods_refresh_sitewise(struct qs_bench *b, int strict, qs_err *e)
{
    return refresh(b, strict, 0, e);
}
