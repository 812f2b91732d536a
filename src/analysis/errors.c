/* errors.c - per-site error statistics (the `error` command): weight error, propagated and
 * local pre-activation error, SNR, cosine and the KL share; MLPs from the caches, transformers
 * from one streaming pass of sums. */
#include "qscope/analysis.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/linalg.h"
#include "qscope/lm.h"
#include "qscope/lmbench.h"
#include "qscope/lowrank.h"
#include "qscope/moments.h"

#include "analysis_impl.h"

static double sq_diff(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t j = 0; j < n; j++) {
        double d = (double)a[j] - b[j];
        s += d * d;
    }
    return s;
}

int qs_an_unit_out(const struct qs_bench *b, int i)
{
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    return u.out;
}

static double db_of(double rel)
{
    return rel > 0 ? -10.0 * log10(rel) : INFINITY;
}

const float *qs_an_site_x(struct qs_bench *b, int i, enum qs_split_id sp, int quant, int *n,
                          qs_err *e)
{
    if (b->lm) {
        if (qs_bench_site_rows(b, i, e) < 0)
            return NULL;
        *n = b->rows.n[sp];
        return quant ? b->rows.xq[sp] : b->rows.xf[sp];
    }
    if (qs_bench_update(b, e) < 0)
        return NULL;
    const struct qs_acts *a = quant ? &b->q_acts[sp] : &b->f_acts[sp];
    *n = a->n;
    return a->in[i];
}

int qs_bench_preact(struct qs_bench *b, enum qs_split_id sp, int quant, int i, float **y, int *n,
                    qs_err *e)
{
    *y = NULL;
    const float *x = qs_an_site_x(b, i, sp, quant, n, e);
    if (!x)
        return -1;
    const struct qs_acts *a = quant ? &b->q_acts[sp] : &b->f_acts[sp];
    struct qs_unit u;
    qs_bench_unit(b, i, &u);
    float *out = qs_alloc((size_t)*n * u.out, sizeof(float), "the pre-activations", e);
    if (!out)
        return -1;
    if (!b->lm && a->pre) { /* the MLP keeps them: the same bits as recomputing them */
        memcpy(out, a->pre[i], (size_t)a->n * u.out * sizeof(float));
    } else if (qs_bench_layer_forward(b, i, x, *n, quant ? QS_ROLE_W | QS_ROLE_A : 0, quant, out,
                                      e) < 0) {
        free(out);
        return -1;
    }
    *y = out;
    return 0;
}

static int lm_errors(struct qs_bench *b, struct qs_layer_err *err, int want_kl, qs_err *e);

int qs_analysis_errors(struct qs_bench *b, struct qs_layer_err *err, qs_err *e)
{
    return qs_analysis_errors_ex(b, err, QS_KL_AUTO, e);
}

int qs_analysis_errors_ex(struct qs_bench *b, struct qs_layer_err *err, enum qs_kl_mode kl,
                          qs_err *e)
{
    if (b->lm)
        return lm_errors(
            b, err,
            kl == QS_KL_ON || (kl == QS_KL_AUTO && qs_analysis_kl_cost(b) <= QS_KL_AUTO_MAX), e);
    (void)kl; /* an MLP's KL runs are cheap: always */
    if (qs_bench_update(b, e) < 0)
        return -1;
    int S = qs_bench_nunits(b);
    double kl_sum = 0.0;
    int rc = 0;
    for (int i = 0; i < S && rc == 0; i++) {
        struct qs_unit l;
        qs_bench_unit(b, i, &l);
        const struct qs_layer_state *s = &b->ls[i];
        struct qs_layer_err *r = &err[i];
        memset(r, 0, sizeof *r);
        float *yf = NULL, *yq = NULL, *tmp = NULL;
        int n;
        if (qs_bench_preact(b, QS_CALIB, 0, i, &yf, &n, e) < 0 ||
            qs_bench_preact(b, QS_CALIB, 1, i, &yq, &n, e) < 0 ||
            !(tmp = qs_alloc((size_t)n * l.out, sizeof(float), "the pre-activations", e))) {
            rc = -1;
            goto next;
        }
        const float *xf = b->f_acts[QS_CALIB].in[i];
        size_t len = (size_t)n * l.out;
        double den = qs_frob2(yf, len), num = sq_diff(yq, yf, len), dot = 0;
        double nq = qs_frob2(yq, len);
        for (size_t j = 0; j < len; j++)
            dot += (double)yq[j] * yf[j];
        r->w_rel_err = s->w_rel_err;
        r->preact_rel_mse = den > 0 ? num / den : 0.0;
        r->snr_db = db_of(r->preact_rel_mse);
        r->cosine = den > 0 && nq > 0 ? dot / sqrt(den * nq) : 1.0;
        if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W | QS_ROLE_A, 1, tmp, e)))
            goto next;
        r->local_rel_mse = den > 0 ? sq_diff(tmp, yf, len) / den : 0.0;
        r->local_snr_db = db_of(r->local_rel_mse);
        if (s->wfmt.kind != QS_FMT_NONE && s->afmt.kind != QS_FMT_NONE && den > 0) {
            double both;
            r->has_attr = 1;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W, 0, tmp, e)))
                goto next;
            r->w_only = sq_diff(tmp, yf, len) / den;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_A, 0, tmp, e)))
                goto next;
            r->a_only = sq_diff(tmp, yf, len) / den;
            if ((rc = qs_bench_layer_forward(b, i, xf, n, QS_ROLE_W | QS_ROLE_A, 0, tmp, e)))
                goto next;
            both = sq_diff(tmp, yf, len) / den;
            r->interaction = both - r->w_only - r->a_only;
        }
        if (s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) {
            struct qs_metric m;
            uint64_t bit = 1ULL << (i < 63 ? i : 63);
            if ((rc = qs_bench_run_ex(b, QS_TEST, bit, bit, &m, NULL, &r->kl_alone, NULL, e)))
                goto next;
            kl_sum += r->kl_alone;
        }
    next:
        free(yf);
        free(yq);
        free(tmp);
    }
    for (int i = 0; rc == 0 && i < S; i++)
        err[i].kl_share = kl_sum > 0 ? err[i].kl_alone / kl_sum : 0.0;
    return rc;
}

/* ---- error on a transformer: one streaming pass of sums ------------------------------------ */

/* A site's sums over the calibration windows, each accumulated element by element in row order
 * (windows after one another), as qs_frob2 / sq_diff sum the rows of a whole split: ||Y_f||^2,
 * ||Y_q - Y_f||^2, ||Y_q||^2, <Y_q, Y_f> (propagated), then the local ||Y_l - Y_f||^2 and the
 * attributions (weights only, activations only, both; each without the correction). */
enum { ES_DEN, ES_NUM, ES_NQ, ES_DOT, ES_LOCAL, ES_W, ES_A, ES_BOTH, QS_ERRSUM };
_Static_assert(QS_ERRSUM == QS_ERR_NSUMS, "analysis.h's count of a site's error sums");

/* Rows of a window computed at a time for sites with wide outputs (the vocabulary head): a
 * window's pre-activations of such a site would be ctx x vocab floats per path. */
#define ERR_CHUNK_BYTES ((size_t)16 << 20)

struct err_ctx {
    struct qs_bench *b;
    double *sum; /* nsites x QS_ERRSUM */
};

/* *acc += ||a - b||^2, element by element onto the running sum (the order of one sum over every
 * row of the split) */
static void acc_diff(double *acc, const float *a, const float *b, size_t n)
{
    double s = *acc;
    for (size_t j = 0; j < n; j++) {
        double d = (double)a[j] - b[j];
        s += d * d;
    }
    *acc = s;
}

static void acc_pair(double *sm, const float *yq, const float *yf, size_t len)
{
    for (size_t j = 0; j < len; j++)
        sm[ES_DEN] += (double)yf[j] * yf[j];
    for (size_t j = 0; j < len; j++) {
        double d = (double)yq[j] - yf[j];
        sm[ES_NUM] += d * d;
    }
    for (size_t j = 0; j < len; j++)
        sm[ES_NQ] += (double)yq[j] * yq[j];
    for (size_t j = 0; j < len; j++)
        sm[ES_DOT] += (double)yq[j] * yf[j];
}

/* y = site i on rows [r0, r0 + nr) of x, roles quant, correction corr; xa: x with the site's
 * activation quantization applied to the whole window (as the forward applies it), used when
 * quant has QS_ROLE_A. */
static int rows_forward(struct qs_bench *b, int i, const float *x, const float *xa, int in, int r0,
                        int nr, int quant, int corr, float *y, qs_err *e)
{
    const float *src = x;
    if (xa && (quant & QS_ROLE_A) && b->ls[i].afmt.kind != QS_FMT_NONE) {
        src = xa;
        quant &= ~QS_ROLE_A;
    }
    return qs_bench_layer_forward(b, i, src + (size_t)r0 * in, nr, quant, corr, y, e);
}

/* ---- a float vocabulary head by its Gram matrix ----------------------------------------- */

#define GRAM_ROWS 256

/* The head's G = W^T W (in x in, double, both triangles), summed over row blocks of W widened
 * from however the model stores it; kept on the bench. NULL and e on failure. */
static const double *head_gram(struct qs_bench *b, int i, qs_err *e)
{
    if (b->head_gram)
        return b->head_gram;
    const struct qs_lm_site *st = &b->lm->sites[i];
    size_t in = (size_t)st->in;
    double *g = qs_alloc(in * in, sizeof(double), "the head's Gram matrix", e);
    float *wf =
        g ? qs_alloc((size_t)GRAM_ROWS * in, sizeof(float), "a block of the head", e) : NULL;
    double *wd =
        wf ? qs_alloc((size_t)GRAM_ROWS * in, sizeof(double), "a block of the head", e) : NULL;
    int rc = wd ? 0 : -1;
    for (int r0 = 0; rc == 0 && r0 < st->out; r0 += GRAM_ROWS) {
        int nr = st->out - r0 < GRAM_ROWS ? st->out - r0 : GRAM_ROWS;
        if ((rc = qs_lm_site_rows(b->lm, i, r0, r0 + nr, wf, e)) < 0)
            break;
        for (size_t j = 0; j < (size_t)nr * in; j++)
            wd[j] = wf[j];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)in, nr, 1.0, wd, (int)in, 1.0, g,
                    (int)in);
        if (b->cancel)
            rc = qs_errf(e, "cancelled");
    }
    for (size_t r = 0; rc == 0 && r < in; r++)
        for (size_t c = 0; c < r; c++)
            g[r * in + c] = g[c * in + r];
    free(wf);
    free(wd);
    if (rc < 0) {
        free(g);
        return NULL;
    }
    return b->head_gram = g;
}

/* The paired sums of a float head (no format, correction or bias: y = W x on both paths) from
 * its Gram matrix G, without its (n, vocab) outputs: with d = xq - xf (in double), per row
 * ||W xf||^2 = xf.G xf, ||W d||^2 = d.G d, (W xq).(W xf) = xf.G xf + d.G xf and ||W xq||^2 =
 * xf.G xf + 2 d.G xf + d.G d. Two (rows, in) x (in, in) products a block of rows in place of two
 * (rows, in) x (in, vocab) ones: on GPT-2-small 65 times fewer multiply-adds, and the error is
 * taken from the input difference itself, not from two rounded float outputs. */
static int head_sums(struct qs_bench *b, int i, const float *xf, const float *xq, int n, double *sm,
                     qs_err *e)
{
    const double *g = head_gram(b, i, e);
    if (!g)
        return -1;
    size_t in = (size_t)b->lm->sites[i].in, blk = (size_t)GRAM_ROWS * in;
    double *a = qs_alloc(4 * blk, sizeof(double), "the head's rows in double", e);
    if (!a)
        return -1;
    double *xd = a, *dd = a + blk, *pg = a + 2 * blk, *qg = a + 3 * blk;
    for (int r0 = 0; r0 < n; r0 += GRAM_ROWS) {
        int nr = n - r0 < GRAM_ROWS ? n - r0 : GRAM_ROWS;
        const float *f = xf + (size_t)r0 * in, *q = xq + (size_t)r0 * in;
        for (size_t j = 0; j < (size_t)nr * in; j++) {
            xd[j] = f[j];
            dd[j] = (double)q[j] - f[j];
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, (int)in, (int)in, 1.0, xd,
                    (int)in, g, (int)in, 0.0, pg, (int)in);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, (int)in, (int)in, 1.0, dd,
                    (int)in, g, (int)in, 0.0, qg, (int)in);
        for (int t = 0; t < nr; t++) {
            const double *x = xd + (size_t)t * in, *d = dd + (size_t)t * in,
                         *p = pg + (size_t)t * in, *q2 = qg + (size_t)t * in;
            double ff = 0, df = 0, dq = 0;
            for (size_t j = 0; j < in; j++) {
                ff += x[j] * p[j];
                df += d[j] * p[j];
                dq += d[j] * q2[j];
            }
            sm[ES_DEN] += ff;
            sm[ES_NUM] += dq;
            sm[ES_NQ] += ff + 2 * df + dq;
            sm[ES_DOT] += ff + df;
        }
    }
    free(a);
    return 0;
}

/* One window of site i: xf, xq its inputs on both paths; yf_given alone: the site before the
 * first non-identity one (both paths are yf_given); yq_given alone: the quantized path's output
 * (the float one is recomputed, qs_bench_stream); both: the paired stream's two outputs. */
static int err_fn(void *u, int i, int w, const float *xf, const float *xq, const float *yf_given,
                  const float *yq_given, int n, qs_err *e)
{
    (void)w;
    struct err_ctx *c = u;
    struct qs_bench *b = c->b;
    struct qs_unit l;
    qs_bench_unit(b, i, &l);
    const struct qs_layer_state *s = &b->ls[i];
    double *sm = c->sum + (size_t)i * QS_ERRSUM;
    int ident = qs_bench_site_identity(b, i),
        attr = s->wfmt.kind != QS_FMT_NONE && s->afmt.kind != QS_FMT_NONE;
    int actq = s->afmt.kind != QS_FMT_NONE;
    if (b->lm && i == b->lm->nsites - 1 && ident && !yf_given && !yq_given && !l.b &&
        !b->head_direct)
        return head_sums(b, i, xf, xq, n, sm, e);
    size_t rowb = (size_t)l.out * sizeof(float);
    int chunk = n;
    if ((size_t)n * rowb > ERR_CHUNK_BYTES && !(yf_given && (xq == xf)))
        chunk = (int)(ERR_CHUNK_BYTES / rowb) > 0 ? (int)(ERR_CHUNK_BYTES / rowb) : 1;
    float *yf = NULL, *yq = NULL, *t = NULL, *xfa = NULL, *xqa = NULL;
    int rc = -1;
    if ((!yf_given &&
         (!(yf = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)) ||
          !(yq = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)))) ||
        !(t = qs_alloc((size_t)chunk * l.out, sizeof(float), "the pre-activations", e)))
        goto out;
    if (actq && chunk < n) { /* the whole window's activation quantization, as the forward
                                does it, before its rows are taken in chunks */
        if (!(xfa = qs_alloc((size_t)n * l.in, sizeof(float), "the quantized inputs", e)) ||
            !(xqa = qs_alloc((size_t)n * l.in, sizeof(float), "the quantized inputs", e)) ||
            qs_bench_act_quant(s, xf, n, l.in, xfa, e) < 0 ||
            qs_bench_act_quant(s, xq, n, l.in, xqa, e) < 0)
            goto out;
    }
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int nr = n - r0 < chunk ? n - r0 : chunk;
        size_t len = (size_t)nr * l.out;
        if (r0 > 0 && b->cancel) { /* a vocabulary head's window takes seconds in chunks */
            qs_errf(e, "cancelled");
            goto out;
        }
        const float *pf, *pq;
        if (yf_given) { /* given (alone: the two paths agree) */
            pf = yf_given + (size_t)r0 * l.out;
            pq = yq_given ? yq_given + (size_t)r0 * l.out : pf;
        } else {
            if (rows_forward(b, i, xf, xfa, l.in, r0, nr, 0, 0, yf, e) < 0)
                goto out;
            pf = yf;
            if (yq_given) {
                pq = yq_given + (size_t)r0 * l.out;
            } else if (ident && xq == xf) {
                pq = pf;
            } else {
                if (rows_forward(b, i, xq, xqa, l.in, r0, nr, QS_ROLE_W | QS_ROLE_A, 1, yq, e) < 0)
                    goto out;
                pq = yq;
            }
        }
        acc_pair(sm, pq, pf, len);
        if (ident) { /* the site computes as the float one from the float input */
            continue;
        }
        if (rows_forward(b, i, xf, xfa, l.in, r0, nr, QS_ROLE_W | QS_ROLE_A, 1, t, e) < 0)
            goto out;
        acc_diff(&sm[ES_LOCAL], t, pf, len);
        if (attr) {
            static const int roles[3] = {QS_ROLE_W, QS_ROLE_A, QS_ROLE_W | QS_ROLE_A};
            for (int k = 0; k < 3; k++) {
                if (rows_forward(b, i, xf, xfa, l.in, r0, nr, roles[k], 0, t, e) < 0)
                    goto out;
                acc_diff(&sm[ES_W + k], t, pf, len);
            }
        }
    }
    rc = 0;
out:
    free(yf);
    free(yq);
    free(t);
    free(xfa);
    free(xqa);
    return rc;
}

static struct qs_site_err_cache *errc_of(struct qs_bench *b, qs_err *e)
{
    int S = qs_bench_nunits(b);
    if (b->errc && b->errc->nsites == S)
        return b->errc;
    qs_site_err_cache_free(b->errc);
    struct qs_site_err_cache *c = b->errc = qs_calloc(1, sizeof *c);
    if (!c || !(c->sum = qs_calloc((size_t)S * QS_ERRSUM, sizeof(double))) ||
        !(c->kl = qs_calloc((size_t)S, sizeof(double))) || !(c->kl_ok = qs_calloc((size_t)S, 1))) {
        qs_site_err_cache_free(c);
        b->errc = NULL;
        qs_errf(e, "out of memory");
        return NULL;
    }
    c->nsites = S;
    return c;
}

/* error on a transformer: the sums of the sites not kept (the sites from the last change on) in
 * one streaming pass over the calibration windows, and each quantized site's KL run (kept until
 * that site changes). */
double qs_analysis_kl_cost(struct qs_bench *b)
{
    if (!b->lm || !b->tokens)
        return 0.0;
    qs_err e;
    int S = qs_bench_nunits(b), nw = qs_bench_split_units(b, QS_TEST, &e), runs = 0;
    const struct qs_site_err_cache *c = b->errc;
    for (int i = 0; i < S; i++)
        if ((b->ls[i].wfmt.kind != QS_FMT_NONE || b->ls[i].afmt.kind != QS_FMT_NONE) &&
            !(c && c->nsites == S && c->kl_ok[i]))
            runs++;
    return nw > 0 ? (double)qs_lm_nparams(b->lm) * nw * b->lm->ctx * runs : 0.0;
}

/* The wanted sites' sums (zeroed first): paired, float and quantized blocks in lockstep so
 * each float output is the forward's own (qs_bench_stream_pairs; beyond the activation budget,
 * qs_bench_stream); else every float output after the first non-identity site recomputed from
 * its captured input. 0 (1: paired asked, streamed the other way), or -1 and e. */
static int error_sums(struct qs_bench *b, const unsigned char *want, int paired, double *sum,
                      qs_err *e)
{
    int S = qs_bench_nunits(b);
    for (int i = 0; i < S; i++)
        if (want[i])
            memset(sum + (size_t)i * QS_ERRSUM, 0, QS_ERRSUM * sizeof(double));
    struct err_ctx ec = {b, sum};
    int rc = paired ? qs_bench_stream_pairs(b, QS_CALIB, want, err_fn, &ec, e) : 1;
    if (rc < 0 || (rc == 1 && qs_bench_stream(b, QS_CALIB, want, 1, err_fn, &ec, e) < 0))
        return -1;
    return paired ? rc : 0;
}

int qs_analysis_error_sums(struct qs_bench *b, const unsigned char *want, int paired, double *sum,
                           qs_err *e)
{
    if (!b->lm)
        return qs_errf(e, "the streamed error sums are a transformer's");
    if (qs_bench_update(b, e) < 0)
        return -1;
    return error_sums(b, want, paired, sum, e);
}

static int lm_errors(struct qs_bench *b, struct qs_layer_err *err, int want_kl, qs_err *e)
{
    if (qs_bench_update(b, e) < 0)
        return -1;
    int S = qs_bench_nunits(b);
    struct qs_site_err_cache *c = errc_of(b, e);
    if (!c)
        return -1;
    if (c->valid < S) {
        unsigned char *want = qs_calloc((size_t)S, 1);
        if (!want)
            return qs_errf(e, "out of memory");
        for (int i = c->valid; i < S; i++)
            want[i] = 1;
        int rc = error_sums(b, want, 1, c->sum, e);
        free(want);
        if (rc < 0)
            return -1;
        c->valid = S;
    }
    double kl_sum = 0.0;
    for (int i = 0; i < S; i++) {
        const struct qs_layer_state *s = &b->ls[i];
        const double *sm = c->sum + (size_t)i * QS_ERRSUM;
        struct qs_layer_err *r = &err[i];
        memset(r, 0, sizeof *r);
        double den = sm[ES_DEN], nq = sm[ES_NQ];
        r->w_rel_err = s->w_rel_err;
        r->preact_rel_mse = den > 0 ? sm[ES_NUM] / den : 0.0;
        r->snr_db = db_of(r->preact_rel_mse);
        r->cosine = den > 0 && nq > 0 ? sm[ES_DOT] / sqrt(den * nq) : 1.0;
        r->local_rel_mse = den > 0 ? sm[ES_LOCAL] / den : 0.0;
        r->local_snr_db = db_of(r->local_rel_mse);
        if (s->wfmt.kind != QS_FMT_NONE && s->afmt.kind != QS_FMT_NONE && den > 0) {
            r->has_attr = 1;
            r->w_only = sm[ES_W] / den;
            r->a_only = sm[ES_A] / den;
            r->interaction = sm[ES_BOTH] / den - r->w_only - r->a_only;
        }
        if ((s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) && !want_kl &&
            !c->kl_ok[i]) {
            r->kl_alone = NAN; /* not asked for, not kept */
        } else if (s->wfmt.kind != QS_FMT_NONE || s->afmt.kind != QS_FMT_NONE) {
            if (!c->kl_ok[i]) {
                struct qs_metric m;
                uint64_t bit = 1ULL << (i < 63 ? i : 63);
                if (qs_bench_run_ex(b, QS_TEST, bit, bit, &m, NULL, &c->kl[i], NULL, e) < 0)
                    return -1;
                c->kl_ok[i] = 1;
            }
            r->kl_alone = c->kl[i];
            kl_sum += r->kl_alone;
        }
    }
    int all = 1;
    for (int i = 0; i < S; i++)
        all &= !isnan(err[i].kl_alone);
    for (int i = 0; i < S; i++) /* a share of a partial sum would mislead: all or none */
        err[i].kl_share = !all ? NAN : kl_sum > 0 ? err[i].kl_alone / kl_sum : 0.0;
    if (!all)
        for (int i = 0; i < S; i++)
            err[i].kl_alone = NAN;
    return 0;
}
