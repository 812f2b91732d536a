/* kinds.c - the format kinds as a table: for each kind, what container holds its elements (how
 * block scales are fitted and stored, which granularities and options apply) and which element
 * type its codes are. A new kind is one row here (and one enum value in format.h); a new
 * element type is one struct qs_elem_ops (elem_*.c). */
#include <math.h>
#include <stdlib.h>

#include "job_impl.h"
#include "qscope/ggml.h"

static const struct qs_codec ggml_codec = {
    .fake = qs_ggml_fake,
    .pack = qs_ggml_pack,
    .unpack = qs_ggml_unpack,
    .layout = qs_ggml_layout,
};

/* Free F16/F32 scales per tensor, channel or group (gran=), fitted as amax / maxval. */
#define FREE_T .elements = 1, .options = 1, .free_scale = 1
#define FREE_K .store = SC_FREE, .fit = qs_fit_free

static const struct qs_kind kinds[] = {
    [QS_FMT_NONE] = {.t = {.family = "none"}},
    [QS_FMT_INT] = {.t = {.family = "int", FREE_T, .asym = 1, .static_amax = 1},
                    .elem = &qs_elem_int,
                    FREE_K},
    [QS_FMT_MINIFLOAT] = {.t = {.family = "minifloat", FREE_T, .scale_none = 1, .static_amax = 1},
                          .elem = &qs_elem_float,
                          FREE_K},
    [QS_FMT_FIXED] = {.t = {.family = "fixed", FREE_T, .scale_none = 1, .static_amax = 1},
                      .elem = &qs_elem_float,
                      FREE_K},
    [QS_FMT_MX] = {.t = {.family = "mx",
                         .elements = 1,
                         .options = 1,
                         .fixed_block = 1,
                         .block_scale = "e8m0"},
                   .elem = &qs_elem_float,
                   .elem_e0 = &qs_elem_int, /* mxint8 */
                   .store = SC_E8M0,
                   .fit = qs_fit_e8m0,
                   .fused = qs_mx_fused_float},
    [QS_FMT_NVFP4] = {.t = {.family = "nvfp4",
                            .elements = 1,
                            .options = 1,
                            .fixed_block = 1,
                            .block_scale = "e4m3",
                            .tensor_scale = 1,
                            .static_amax = 1},
                      .elem = &qs_elem_float,
                      .store = SC_E4M3,
                      .fit = qs_fit_e4m3,
                      .setup = qs_nvfp4_setup,
                      .tensor = qs_nvfp4_tensor},
    [QS_FMT_NF4] = {.t = {.family = "nf4", FREE_T, .blockwise = 1}, .elem = &qs_elem_nf4, FREE_K},
    [QS_FMT_COMPAND] = {.t = {.family = "compand", FREE_T, .static_amax = 1},
                        .elem = &qs_elem_compand,
                        FREE_K},
    [QS_FMT_GGML] = {.t = {.family = "ggml",
                           .fixed_block = 1,
                           .own_rules = "llama.cpp's block format with its reference rounding "
                                        "(fixed %d-element blocks, F16 block scales)"},
                     .codec = &ggml_codec},
    [QS_FMT_CAST] = {.t = {.family = "cast", .elements = 1, .options = 1, .unscaled = 1},
                     .elem = &qs_elem_float,
                     .store = SC_NONE,
                     .fit = qs_fit_unit},
};

const struct qs_kind *qs_kind_of(const struct qs_format *f)
{
    unsigned k = (unsigned)f->kind;
    return k < sizeof kinds / sizeof kinds[0] ? &kinds[k] : &kinds[QS_FMT_NONE];
}

const struct qs_format_traits *qs_format_traits(const struct qs_format *f)
{
    return &qs_kind_of(f)->t;
}

int qs_format_block_len(const struct qs_format *f, const struct qs_qopts *o, int cols)
{
    const struct qs_format_traits *t = &qs_kind_of(f)->t;
    int seg;
    if (t->fixed_block)
        seg = f->block;
    else if (t->blockwise) /* group:N blocks, one block per row for channel, else the default */
        seg = o->gran == QS_GRAN_GROUP     ? o->group
              : o->gran == QS_GRAN_CHANNEL ? cols
                                           : (f->block > 0 ? f->block : 64);
    else if (!o->scale_none && o->gran == QS_GRAN_GROUP)
        seg = o->group;
    else
        seg = cols;
    /* qscope: groups and blocks of every format tile each row from column 0; when the row
     * length is not a multiple of the size the last one of the row is shorter and gets a scale
     * of its own; a size above the row length gives one group per row. */
    return seg < 1 || seg > cols ? cols : seg;
}

/* ---- element types of formats --------------------------------------------------------------- */

void qs_elem_of(const struct qs_format *f, struct qs_elem *el)
{
    memset(el, 0, sizeof *el);
    el->bits = f->bits;
    el->ebits = f->ebits;
    el->mbits = f->mbits;
    el->bias = f->bias;
    el->nf = f->nf;
    const struct qs_kind *k = qs_kind_of(f);
    el->ops = f->ebits == 0 && k->elem_e0 ? k->elem_e0 : k->elem;
    el->kind = QS_ELEM_FLOAT;
    if (el->ops)
        el->ops->derive(f, el);
}

void qs_kern_init(struct kern *K, const struct qs_format *f, int sat)
{
    memset(K, 0, sizeof *K);
    qs_elem_of(f, &K->el);
    K->ops = K->el.ops;
    K->sat = K->el.nf == QS_NF_NONE ? 1 : sat;
    K->ops->init(K);
}

float *qs_kern_lut(const struct kern *K)
{
    const int bits = K->el.bits, nc = 1 << bits;
    float *lut = malloc((size_t)nc * sizeof *lut);
    for (int c = 0; lut && c < nc; c++) {
        double v = K->ops->decode(&K->el, (uint32_t)c);
        uint32_t sb = (uint32_t)((c >> (bits - 1)) & 1) << 31;
        lut[c] = isnan(v) ? u2f(QNAN_BITS | sb) : (float)v; /* the kernels' NaN */
    }
    return lut;
}

SIMD_CLONES
void qs_unpack_lut(const struct kern *K, const float *lut, const uint8_t *buf, size_t bitpos, int n,
                   int z, float s, float *restrict out)
{
    uint32_t codes[CHUNK];
    qs_get_codes(buf, bitpos, codes, n, K->el.bits);
    (void)z;
    for (int j = 0; j < n; j++)
        out[j] = lut[codes[j]] * s;
}

void qs_near_each_generic(const struct kern *K, const struct qs_qblock *b, size_t bstride,
                          const float *x, float *out, int n)
{
    for (int i = 0; i < n; i++) {
        const struct qs_qblock *bi = b + (size_t)i * bstride;
        K->ops->near(K, x + i, out + i, 1, bi->inv, bi->lo, bi->hi, bi->s);
    }
}
