/* fake.c - fake quantization (quantize then dequantize in F32, bit for bit what pack + unpack
 * give) and the block quantizer that methods (GPTQ, AWQ, imatrix) apply to values of their own.
 *
 * Per block: the block's parameters (scales.c), then one call of the element type's run kernel
 * (elem_*.c) per CHUNK elements. Large inputs run on up to 8 threads over row ranges (threads.c);
 * nothing depends on the thread count. */
#include <stdlib.h>

#include "job_impl.h"

static void fake_rows(struct job *J, int r0, int r1, int tid)
{
    const size_t cols = (size_t)J->cols;
    qs_rng g;
    for (int row = r0; row < r1; row++) {
        if (J->stoch)
            qs_seed_row(&g, J->o, row);
        int sg0 = 0;
        if (J->fused) {
            size_t base = (size_t)row * cols;
            int nfull = (int)(cols / 32);
            int bad = J->fused(&J->K, J->w + base, J->out + base, nfull);
            if (bad >= 0) {
                size_t at = base + 32 * (size_t)bad;
                J->failed[tid] = 1;
                qs_nonfinite_at(J->w + at, 32, at, J->cols, &J->err[tid]);
                return;
            }
            sg0 = nfull; /* a partial last block goes the generic way */
        }
        for (int sg = sg0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t base = (size_t)row * cols + c0;
            const float *x = J->w + base;
            float *out = J->out + base;
            struct blk b;
            if (J->shared)
                b = J->tb;
            else if (qs_block_params(J, x, n, base, &b, &J->err[tid]) < 0) {
                J->failed[tid] = 1;
                return;
            }
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                qs_grid(&J->K, x + k, out + k, m, b.inv, b.lo, b.hi, b.s, J->stoch, &g);
            }
        }
    }
}

static int run_fake(struct job *J, float *out, float amax_given, qs_err *e)
{
    size_t n = (size_t)J->rows * J->cols;
    if (qs_job_tensor(J, amax_given, e) < 0)
        return -1;
    /* In place with per-block scales, an error may surface after earlier blocks were written:
     * work on a copy so that w is never left half-quantized. */
    float *tmp = NULL;
    if (out == J->w && !J->shared) {
        tmp = malloc(n * sizeof *tmp);
        if (!tmp)
            return qs_errf(e, "out of memory");
    }
    J->out = tmp ? tmp : out;
    int bad = qs_par_rows(J, fake_rows, J->rows, 1, qs_n_threads(n, J->rows));
    if (bad >= 0) {
        if (e)
            *e = J->err[bad];
        free(tmp);
        return -1;
    }
    if (tmp) {
        memcpy(out, tmp, n * sizeof *tmp);
        free(tmp);
    }
    return 0;
}

int qs_quant_fake(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, float *out, qs_err *e)
{
    if (!w || !out)
        return qs_errf(e, "fake quantization: no data");
    const struct qs_codec *codec = f ? qs_kind_of(f)->codec : NULL;
    if (codec)
        return qs_qopts_check(f, o, e) < 0 ? -1 : codec->fake(f, w, rows, cols, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = qs_job_init(J, f, o, w, rows, cols, e);
    if (rc == 0)
        rc = run_fake(J, out, -1.0f, e);
    free(J);
    return rc;
}

int qs_quant_fake_amax(const struct qs_format *f, const struct qs_qopts *o, const float *x,
                       int rows, int cols, float amax, float *out, qs_err *e)
{
    if (!f || f->kind == QS_FMT_NONE)
        return qs_errf(e, "format 'none' keeps values in float; nothing to quantize");
    const struct qs_format_traits *t = qs_format_traits(f);
    if (!(amax >= 0.0f && amax <= 3.4e38f))
        return qs_errf(e, "%s: calibrated absmax %g must be finite and >= 0", f->name,
                       (double)amax);
    if (o->asym)
        return qs_errf(e, "%s: a calibrated absmax gives a symmetric range; asym needs min/max",
                       f->name);
    if (t->unscaled)
        return qs_errf(e, "%s: a plain cast has no scale; a calibrated absmax does not apply",
                       f->name);
    if (!t->static_amax)
        return qs_errf(e, "%s: scales are computed per block; a calibrated absmax does not apply",
                       f->name);
    if (!x || !out)
        return qs_errf(e, "fake quantization: no data");
    struct qs_qopts t2 = *o;
    if (!t->fixed_block)
        t2.gran = QS_GRAN_TENSOR;
    t2.gran_set = 0;
    t2.clip = QS_CLIP_MAX;
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = qs_job_init(J, f, &t2, x, rows, cols, e);
    if (rc == 0)
        rc = run_fake(J, out, amax, e);
    free(J);
    return rc;
}

/* ---- one block's quantizer, applied to other values ---------------------------------------- */

struct qs_quantizer {
    struct job J;
};

int qs_quantizer_new(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                     int cols, struct qs_quantizer **out, qs_err *e)
{
    *out = NULL;
    if (!w)
        return qs_errf(e, "quantizer: no data");
    if (o->round == QS_ROUND_STOCHASTIC)
        return qs_errf(e, "%s: this method rounds to nearest; round=stochastic does not apply",
                       f ? f->name : "format");
    struct qs_quantizer *q = malloc(sizeof *q);
    if (!q)
        return qs_errf(e, "out of memory");
    if (qs_job_init(&q->J, f, o, w, rows, cols, e) < 0 || qs_job_tensor(&q->J, -1.0f, e) < 0) {
        free(q);
        return -1;
    }
    q->J.w = NULL; /* not kept: fit and round take their values explicitly */
    *out = q;
    return 0;
}

void qs_quantizer_free(struct qs_quantizer *q)
{
    free(q);
}

int qs_quantizer_block(const struct qs_quantizer *q)
{
    return q->J.seg;
}

int qs_quantizer_shared(const struct qs_quantizer *q)
{
    return q->J.shared;
}

int qs_quantizer_fit(const struct qs_quantizer *q, const float *x, int n, int row, int col,
                     struct qs_qblock *b, qs_err *e)
{
    struct blk k;
    if (q->J.shared) {
        k = q->J.tb;
    } else {
        if (n < 1)
            return qs_errf(e, "quantizer: empty block");
        if (qs_block_params(&q->J, x, (size_t)n, (size_t)row * (size_t)q->J.cols + (size_t)col, &k,
                            e) < 0)
            return -1;
    }
    b->s = k.s;
    b->inv = k.inv;
    b->lo = k.lo;
    b->hi = k.hi;
    b->z = k.z;
    b->scode = k.scode;
    return 0;
}

void qs_quantizer_round(const struct qs_quantizer *q, const struct qs_qblock *b, const float *x,
                        float *out, int n)
{
    q->J.K.ops->near(&q->J.K, x, out, n, b->inv, b->lo, b->hi, b->s);
}

void qs_quantizer_round_each(const struct qs_quantizer *q, const struct qs_qblock *b,
                             size_t bstride, const float *x, float *out, int n)
{
    q->J.K.ops->near_each(&q->J.K, b, bstride, x, out, n);
}
