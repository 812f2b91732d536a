/* pack.c - packing: element codes as one LSB-first bit stream, scales and zero points in their
 * storage types, and unpacking them back; the layout of those buffers; sizes.
 *
 * One path computes, block by block, the grid values r (the element values at scale 1) from
 * y = x * (1/s); packing encodes r into its code, and unpacking decodes the code back to r and
 * writes r * s. decode(encode(r)) == r exactly for every grid value (the tests check every
 * code), so fake quantization (fake.c) == pack + unpack bit for bit. */
#include <stdlib.h>

#include "job_impl.h"

/* Writes n codes starting at bit position bitpos of buf (zeroed beforehand; LSB first). */
static void put_codes(uint8_t *buf, size_t bitpos, const uint32_t *codes, int n, int bits)
{
    int j = 0;
    if (bits == 8 && (bitpos & 7) == 0) {
        for (uint8_t *d = buf + (bitpos >> 3); j < n; j++)
            d[j] = (uint8_t)codes[j];
        return;
    }
    if (bits == 4 && (bitpos & 7) == 0) {
        uint8_t *d = buf + (bitpos >> 3);
        for (; j + 2 <= n; j += 2)
            d[j >> 1] = (uint8_t)(codes[j] | (codes[j + 1] << 4));
        bitpos += (size_t)j * 4;
    }
    for (; j < n; j++, bitpos += (size_t)bits) {
        size_t byte = bitpos >> 3;
        uint32_t v = codes[j] << (bitpos & 7);
        int nb = (int)((bitpos & 7) + (size_t)bits + 7) / 8;
        for (int i = 0; i < nb; i++)
            buf[byte + i] |= (uint8_t)(v >> (8 * i));
    }
}

static void put_scale(uint8_t *buf, size_t idx, enum scale_store st, uint32_t code)
{
    int nb = qs_scale_stores[st].bytes;
    for (int i = 0; i < nb; i++)
        buf[idx * (size_t)nb + (size_t)i] = (uint8_t)(code >> (8 * i));
}

static uint32_t get_scale(const uint8_t *buf, size_t idx, enum scale_store st)
{
    int nb = qs_scale_stores[st].bytes;
    uint32_t v = 0;
    for (int i = 0; i < nb; i++)
        v |= (uint32_t)buf[idx * (size_t)nb + (size_t)i] << (8 * i);
    return v;
}

/* Number of stored scales. */
static size_t n_scales(const struct job *J)
{
    if (J->store == SC_NONE)
        return 0;
    return J->shared ? 1 : (size_t)J->rows * J->nseg;
}

/* Whether zero points are stored (asymmetric int). */
static int has_zeros(const struct qs_format *f, const struct qs_qopts *o)
{
    return o->asym && qs_format_traits(f)->asym;
}

static void pack_rows(struct job *J, int r0, int r1, int tid)
{
    const size_t cols = (size_t)J->cols;
    const int bits = J->f->bits;
    const struct kern *K = &J->K;
    struct qs_packed *p = J->p;
    float r[CHUNK];
    uint32_t codes[CHUNK];
    qs_rng g;
    for (int row = r0; row < r1; row++) {
        if (J->stoch)
            qs_seed_row(&g, J->o, row);
        for (int sg = 0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t base = (size_t)row * cols + c0;
            const float *x = J->w + base;
            struct blk b;
            if (J->shared) {
                b = J->tb;
            } else {
                size_t si = (size_t)row * J->nseg + sg;
                if (J->given) {
                    const struct qs_qblock *gb = &J->given[si];
                    b = (struct blk){.s = gb->s,
                                     .inv = gb->inv,
                                     .lo = gb->lo,
                                     .hi = gb->hi,
                                     .z = gb->z,
                                     .scode = gb->scode};
                } else if (qs_block_params(J, x, n, base, &b, &J->err[tid]) < 0) {
                    J->failed[tid] = 1;
                    return;
                }
                put_scale(p->scales, si, J->store, b.scode);
                if (p->zeros)
                    p->zeros[si] = (uint8_t)b.z;
            }
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                qs_grid(K, x + k, r, m, b.inv, b.lo, b.hi, 1.0f, J->stoch, &g);
                K->ops->encode(K, r, m, b.z, codes);
                put_codes(p->codes, (base + k) * (size_t)bits, codes, m, bits);
            }
        }
    }
}

static int pack_impl(const struct qs_format *f, const struct qs_qopts *o, const float *ref,
                     const float *w, const struct qs_qblock *given, int rows, int cols,
                     struct qs_packed *p, qs_err *e)
{
    memset(p, 0, sizeof *p);
    if (!w || !ref)
        return qs_errf(e, "pack: no data");
    const struct qs_codec *codec = f ? qs_kind_of(f)->codec : NULL;
    if (codec) {
        if (given)
            return qs_errf(e, "%s: ggml blocks are packed by llama.cpp's rules only", f->name);
        return qs_qopts_check(f, o, e) < 0 ? -1 : codec->pack(f, w, rows, cols, p, e);
    }
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    /* the tensor-wide parameters (gran=tensor, the NVFP4 tensor scale) come from ref */
    int rc = qs_job_init(J, f, o, ref, rows, cols, e);
    size_t n = (size_t)rows * (size_t)cols;
    if (rc == 0)
        rc = qs_job_tensor(J, -1.0f, e);
    if (rc == 0 && given && J->stoch)
        rc = qs_errf(e, "%s: given block parameters are rounded to nearest", f->name);
    J->w = w;
    J->given = given;
    /* a given tensor-wide block (gran=tensor: its one entry) replaces the one fitted to ref, so
     * that a scale a method learned (qat scales=lsq) is stored; GPTQ's is the fitted one */
    if (rc == 0 && given && J->shared && !J->kind->tensor)
        J->tb = (struct blk){.s = given->s,
                             .inv = given->inv,
                             .lo = given->lo,
                             .hi = given->hi,
                             .z = given->z,
                             .scode = given->scode};
    if (rc == 0) {
        p->fmt = *f;
        p->opt = *o;
        p->rows = rows;
        p->cols = cols;
        p->code_bytes = (n * (size_t)f->bits + 7) / 8;
        size_t ns = n_scales(J);
        p->scale_bytes = ns * (size_t)qs_scale_stores[J->store].bytes;
        p->zero_bytes = has_zeros(f, o) ? ns : 0;
        p->codes = calloc(p->code_bytes + 4, 1); /* +4: codes are written a few bytes at a time */
        p->scales = calloc(p->scale_bytes + 1, 1);
        p->zeros = p->zero_bytes ? calloc(p->zero_bytes, 1) : NULL;
        if (!p->codes || !p->scales || (p->zero_bytes && !p->zeros))
            rc = qs_errf(e, "out of memory");
    }
    if (rc == 0) {
        if (J->shared && J->store != SC_NONE) {
            put_scale(p->scales, 0, J->store, J->tb.scode);
            if (p->zeros)
                p->zeros[0] = (uint8_t)J->tb.z;
        }
        if (J->kind->t.tensor_scale)
            p->tensor_scale = J->g;
        J->p = p;
        /* thread ranges start on multiples of 8 rows, so they never share a code byte */
        int bad = qs_par_rows(J, pack_rows, rows, 8, qs_n_threads(n, rows));
        if (bad >= 0) {
            if (e)
                *e = J->err[bad];
            rc = -1;
        }
    }
    if (rc < 0)
        qs_packed_free(p);
    free(J);
    return rc;
}

int qs_quant_pack(const struct qs_format *f, const struct qs_qopts *o, const float *w, int rows,
                  int cols, struct qs_packed *p, qs_err *e)
{
    return pack_impl(f, o, w, w, NULL, rows, cols, p, e);
}

int qs_quant_pack_blocks(const struct qs_format *f, const struct qs_qopts *o, const float *ref,
                         const float *w, const struct qs_qblock *blocks, int rows, int cols,
                         struct qs_packed *p, qs_err *e)
{
    if (!blocks)
        return qs_errf(e, "pack: no block parameters");
    return pack_impl(f, o, ref, w, blocks, rows, cols, p, e);
}

static void unpack_rows(struct job *J, int r0, int r1, int tid)
{
    (void)tid;
    const struct qs_packed *p = J->p;
    const struct kern *K = &J->K;
    const size_t cols = (size_t)J->cols;
    const int bits = p->fmt.bits;
    float (*const scale_of)(const struct job *, const struct qs_packed *, uint32_t) =
        qs_scale_stores[J->store].decode;
    for (int row = r0; row < r1; row++) {
        for (int sg = 0; sg < J->nseg; sg++) {
            size_t c0 = (size_t)sg * J->seg;
            size_t n = cols - c0 < (size_t)J->seg ? cols - c0 : (size_t)J->seg;
            size_t si = J->shared ? 0 : (size_t)row * J->nseg + sg;
            uint32_t sc = J->store == SC_NONE ? 0 : get_scale(p->scales, si, J->store);
            const float s = scale_of(J, p, sc);
            const int z = p->zeros ? p->zeros[si] : 0;
            size_t base = (size_t)row * cols + c0;
            for (size_t k = 0; k < n; k += CHUNK) {
                int m = (int)(n - k < CHUNK ? n - k : CHUNK);
                K->ops->unpack(K, J->lut, p->codes, (base + k) * (size_t)bits, m, z, s,
                               J->out + base + k);
            }
        }
    }
}

int qs_quant_unpack(const struct qs_packed *p, float *out, qs_err *e)
{
    if (!p || !p->codes || p->rows < 1 || p->cols < 1)
        return qs_errf(e, "unpack: empty packed tensor");
    if (!out)
        return qs_errf(e, "unpack: no output buffer");
    const struct qs_codec *codec = qs_kind_of(&p->fmt)->codec;
    if (codec)
        return codec->unpack(p, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = qs_job_init(J, &p->fmt, &p->opt, NULL, p->rows, p->cols, e);
    size_t n = (size_t)p->rows * (size_t)p->cols;
    if (rc == 0 && (p->code_bytes < (n * (size_t)p->fmt.bits + 7) / 8 ||
                    p->scale_bytes < n_scales(J) * (size_t)qs_scale_stores[J->store].bytes ||
                    (p->opt.asym && p->zero_bytes < n_scales(J))))
        rc = qs_errf(e, "unpack: %s buffers too small for %d x %d", p->fmt.name, p->rows, p->cols);
    float *lut = NULL;
    if (rc == 0 && J->K.ops->lut_decode && !(lut = qs_kern_lut(&J->K)))
        rc = qs_errf(e, "out of memory");
    if (rc == 0) {
        J->p = (struct qs_packed *)(uintptr_t)p; /* read only here */
        J->out = out;
        J->lut = lut;
        qs_par_rows(J, unpack_rows, p->rows, 1, qs_n_threads(n, p->rows));
    }
    free(lut);
    free(J);
    return rc;
}

int qs_packed_layout(const struct qs_format *f, const struct qs_qopts *o, int rows, int cols,
                     struct qs_packed_layout *out, qs_err *e)
{
    memset(out, 0, sizeof *out);
    const struct qs_codec *codec = f ? qs_kind_of(f)->codec : NULL;
    if (codec)
        return qs_qopts_check(f, o, e) < 0 ? -1 : codec->layout(f, rows, cols, out, e);
    struct job *J = malloc(sizeof *J);
    if (!J)
        return qs_errf(e, "out of memory");
    int rc = qs_job_init(J, f, o, NULL, rows, cols, e);
    size_t n, bits;
    if (rc == 0 && (qs_size_mul((size_t)rows, (size_t)cols, &n) < 0 ||
                    qs_size_mul(n, (size_t)f->bits, &bits) < 0 || bits > SIZE_MAX - 7))
        rc = qs_errf(e, "%s: %d x %d is too large", f->name, rows, cols);
    if (rc == 0) {
        size_t ns = n_scales(J);
        out->code_bytes = (bits + 7) / 8;
        out->scale_bytes = ns * (size_t)qs_scale_stores[J->store].bytes;
        out->zero_bytes = has_zeros(f, o) ? ns : 0;
        out->nscales = J->store == SC_NONE ? 0 : ns;
        out->group = J->shared ? 0 : J->seg;
        out->tensor_scale = J->kind->t.tensor_scale;
        out->scale_dtype = qs_scale_stores[J->store].dtype;
    }
    free(J);
    return rc;
}

void qs_packed_free(struct qs_packed *p)
{
    if (!p)
        return;
    free(p->codes);
    free(p->scales);
    free(p->zeros);
    memset(p, 0, sizeof *p);
}

size_t qs_packed_bytes(const struct qs_packed *p)
{
    if (!p)
        return 0;
    return p->code_bytes + p->scale_bytes + p->zero_bytes +
           (qs_format_traits(&p->fmt)->tensor_scale ? sizeof(float) : 0);
}

double qs_packed_bits_per_weight(const struct qs_packed *p)
{
    if (!p || p->rows < 1 || p->cols < 1)
        return 0.0;
    return 8.0 * (double)qs_packed_bytes(p) / ((double)p->rows * (double)p->cols);
}
