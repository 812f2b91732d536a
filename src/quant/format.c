/* format.c - format names (the preset table: one row per named format), option strings and
 * their checks (driven by the kind traits of kinds.c), and the public scalar element API
 * (`roundtrip`, `codes`) over the element ops of elem_*.c. */
#include "qscope/format.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format_impl.h"
#include "qscope/ggml.h"

/* ---- the named formats (a designated-initializer table, like ggml's type traits) ---------- */

#define INTF(b)                                                                                    \
    {                                                                                              \
        .kind = QS_FMT_INT, .bits = b, .name = "int" #b                                            \
    }
#define MINI(n, e, m, bi, f)                                                                       \
    {                                                                                              \
        .kind = QS_FMT_MINIFLOAT, .bits = 1 + e + m, .ebits = e, .mbits = m, .bias = bi, .nf = f,  \
        .name = n                                                                                  \
    }
#define MXF(n, b, e, m, bi, f)                                                                     \
    {                                                                                              \
        .kind = QS_FMT_MX, .bits = b, .ebits = e, .mbits = m, .bias = bi, .nf = f, .block = 32,    \
        .name = n                                                                                  \
    }

/* plain casts to an IEEE-like storage type (Inf/NaN), no scale */
#define CASTF(n, e, m, bi)                                                                         \
    {                                                                                              \
        .kind = QS_FMT_CAST, .bits = 1 + e + m, .ebits = e, .mbits = m, .bias = bi,                \
        .nf = QS_NF_IEEE, .name = n                                                                \
    }

/* bits: the element code width (for display); the real storage is the ggml block. */
#define GGMLF(n, t, b, blk)                                                                        \
    {                                                                                              \
        .kind = QS_FMT_GGML, .bits = b, .block = blk, .ggml = t, .name = n                         \
    }

/* One row per named format; a format of an existing kind is one more row here. */
static const struct qs_format presets[] = {
    {.kind = QS_FMT_NONE, .name = "none"},
    INTF(2),
    INTF(3),
    INTF(4),
    INTF(5),
    INTF(6),
    INTF(7),
    INTF(8),
    MINI("fp8-e4m3", 4, 3, 7, QS_NF_E4M3),
    MINI("fp8-e5m2", 5, 2, 15, QS_NF_IEEE),
    MINI("fp8-e3m4", 3, 4, 3, QS_NF_IEEE),
    MINI("fp6-e2m3", 2, 3, 1, QS_NF_NONE),
    MINI("fp6-e3m2", 3, 2, 3, QS_NF_NONE),
    MINI("fp4-e2m1", 2, 1, 1, QS_NF_NONE),
    CASTF("fp16", 5, 10, 15),
    CASTF("bf16", 8, 7, 127),
    {.kind = QS_FMT_FIXED, .bits = 8, .mbits = 7, .name = "e0m7"},
    MXF("mxfp8", 8, 4, 3, 7, QS_NF_E4M3),
    MXF("mxfp8-e5m2", 8, 5, 2, 15, QS_NF_IEEE),
    MXF("mxfp6", 6, 2, 3, 1, QS_NF_NONE),
    MXF("mxfp6-e3m2", 6, 3, 2, 3, QS_NF_NONE),
    MXF("mxfp4", 4, 2, 1, 1, QS_NF_NONE),
    MXF("mxint8", 8, 0, 6, 0, QS_NF_NONE),
    {.kind = QS_FMT_NVFP4,
     .bits = 4,
     .ebits = 2,
     .mbits = 1,
     .bias = 1,
     .nf = QS_NF_NONE,
     .block = 16,
     .name = "nvfp4"},
    {.kind = QS_FMT_NF4, .bits = 4, .block = 64, .name = "nf4"},
    {.kind = QS_FMT_COMPAND, .bits = 4, .name = "compand:4"},
    {.kind = QS_FMT_COMPAND, .bits = 8, .name = "compand:8"},
    GGMLF("q8_0", QS_GGML_Q8_0, 8, 32),
    GGMLF("q4_0", QS_GGML_Q4_0, 4, 32),
    GGMLF("q4_1", QS_GGML_Q4_1, 4, 32),
    GGMLF("q5_0", QS_GGML_Q5_0, 5, 32),
    GGMLF("q5_1", QS_GGML_Q5_1, 5, 32),
    GGMLF("q2_k", QS_GGML_Q2_K, 2, 256),
    GGMLF("q3_k", QS_GGML_Q3_K, 3, 256),
    GGMLF("q4_k", QS_GGML_Q4_K, 4, 256),
    GGMLF("q5_k", QS_GGML_Q5_K, 5, 256),
    GGMLF("q6_k", QS_GGML_Q6_K, 6, 256),
};

#define P_COUNT ((int)(sizeof presets / sizeof presets[0]))

/* The names, in table order, NULL-terminated; filled once from the table. */
static const char *names[sizeof presets / sizeof presets[0] + 1];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void names_init(void)
{
    for (int i = 0; i < P_COUNT; i++)
        names[i] = presets[i].name;
}

const char *const *qs_format_names(void)
{
    pthread_once(&names_once, names_init);
    return names;
}

/* Parses a decimal integer that is all of [s, s+len); -1 on anything else. */
static long parse_uint(const char *s, size_t len)
{
    if (len == 0 || len > 6)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int unknown(const char *s, qs_err *e)
{
    char list[400];
    size_t k = 0;
    list[0] = 0;
    const char *const *nm = qs_format_names();
    for (int i = 0; nm[i] && k < sizeof list; i++)
        k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", nm[i]);
    return qs_errf(e, "unknown format '%s'; valid: %s, eXmY[bZ], e0mY, compand:B", s, list);
}

/* Exponent range of a generic minifloat as it must fit the F32 kernels: normal values of the
 * format must be F32 normals and the largest finite below 2^128. */
static int check_minifloat(const char *s, struct qs_format *f, qs_err *e)
{
    int top = (1 << f->ebits) - 1 - f->bias; /* exponent of the largest finite (all codes finite) */
    if (1 - f->bias < -126)
        return qs_errf(e,
                       "format '%s': bias %d puts normal values below the F32 range "
                       "(bias must be <= 127)",
                       s, f->bias);
    if (top > 127) {
        if (f->ebits >= 8)
            return qs_errf(e,
                           "format '%s': an 8-bit exponent spans more than the F32 range; "
                           "use at most 7 exponent bits",
                           s);
        return qs_errf(e,
                       "format '%s': largest value 2^%d exceeds the F32 range (bias must be "
                       ">= %d)",
                       s, top, (1 << f->ebits) - 1 - 127);
    }
    return 0;
}

/* eXmY[bZ] / e0mY. Returns 1 when s has that shape (f or e filled), 0 when it does not. */
static int parse_generic(const char *s, struct qs_format *f, int *rc, qs_err *e)
{
    if (s[0] != 'e' || !isdigit((unsigned char)s[1]))
        return 0;
    const char *m = strchr(s, 'm');
    if (!m)
        return 0;
    const char *b = strchr(m, 'b');
    long x = parse_uint(s + 1, (size_t)(m - s - 1));
    long y = parse_uint(m + 1, b ? (size_t)(b - m - 1) : strlen(m + 1));
    long z = b ? parse_uint(b + 1, strlen(b + 1)) : 0;
    if (x < 0 || y < 0 || z < 0)
        return 0;
    memset(f, 0, sizeof *f);
    if (x == 0) {
        if (b) {
            *rc = qs_errf(e, "unknown format '%s': fixed point e0mY has no bias", s);
            return 1;
        }
        if (y < 1 || y > 15) {
            *rc = qs_errf(e, "unknown format '%s': fixed point e0mY needs Y in 1..15", s);
            return 1;
        }
        f->kind = QS_FMT_FIXED;
        f->mbits = (int)y;
        f->bits = 1 + (int)y;
        snprintf(f->name, sizeof f->name, "e0m%d", (int)y);
        *rc = 0;
        return 1;
    }
    if (x > 8 || y > 10 || x + y + 1 > 16) {
        *rc =
            qs_errf(e, "unknown format '%s': eXmY needs X in 1..8, Y in 0..10 and X+Y+1 <= 16", s);
        return 1;
    }
    long defbias = (1L << (x - 1)) - 1;
    f->kind = QS_FMT_MINIFLOAT;
    f->ebits = (int)x;
    f->mbits = (int)y;
    f->bias = b ? (int)z : (int)defbias;
    f->nf = QS_NF_NONE;
    f->bits = 1 + (int)x + (int)y;
    if (!b || z == defbias)
        snprintf(f->name, sizeof f->name, "e%dm%d", (int)x, (int)y);
    else
        snprintf(f->name, sizeof f->name, "e%dm%db%d", (int)x, (int)y, (int)z % 1000000);
    if (check_minifloat(s, f, e) < 0) {
        *rc = -1;
        return 1;
    }
    /* the generic family coincides with the named minifloats that have no Inf/NaN (the OCP MX
     * element types fp6-e2m3, fp6-e3m2, fp4-e2m1): they keep their names */
    for (int i = 0; i < P_COUNT; i++) {
        const struct qs_format *p = &presets[i];
        if (p->kind == QS_FMT_MINIFLOAT && p->nf == QS_NF_NONE && p->ebits == f->ebits &&
            p->mbits == f->mbits && p->bias == f->bias)
            *f = *p;
    }
    *rc = 0;
    return 1;
}

int qs_format_parse(const char *s, struct qs_format *f, qs_err *e)
{
    if (!s || !*s)
        return qs_errf(e, "empty format name");
    for (int i = 0; i < P_COUNT; i++) {
        if (strcmp(s, presets[i].name) == 0) {
            *f = presets[i];
            return 0;
        }
    }
    if (s[0] == 'q' && strlen(s) == 4 && s[2] == '_' && s[3] == 'K') { /* ggml's "q4_K" */
        char low[5] = {s[0], s[1], '_', 'k', 0};
        for (int i = 0; i < P_COUNT; i++)
            if (presets[i].kind == QS_FMT_GGML && strcmp(low, presets[i].name) == 0) {
                *f = presets[i];
                return 0;
            }
    }
    if (strncmp(s, "int", 3) == 0 && s[3]) {
        long b = parse_uint(s + 3, strlen(s + 3));
        if (b >= 0)
            return qs_errf(e, "unknown format '%s': bit width must be 2..8", s);
    }
    if (strncmp(s, "compand:", 8) == 0) {
        long b = parse_uint(s + 8, strlen(s + 8));
        if (b < 2 || b > 8)
            return qs_errf(e, "unknown format '%s': compand:B needs B in 2..8", s);
        memset(f, 0, sizeof *f);
        f->kind = QS_FMT_COMPAND;
        f->bits = (int)b;
        snprintf(f->name, sizeof f->name, "compand:%d", (int)b);
        return 0;
    }
    int rc;
    if (parse_generic(s, f, &rc, e))
        return rc;
    return unknown(s, e);
}

/* ---- element types (the ops of elem_*.c) ------------------------------------------------- */

/* Decodes one code of element type el (bits above el->bits ignored). */
static double elem_decode(const struct qs_elem *el, uint32_t code)
{
    code &= (el->bits >= 32) ? 0xffffffffu : ((1u << el->bits) - 1u);
    return el->ops->decode(el, code);
}

double qs_format_decode(const struct qs_format *f, uint32_t code)
{
    struct qs_elem el;
    qs_elem_of(f, &el);
    if (!el.ops)
        return NAN;
    return elem_decode(&el, code);
}

int qs_format_codes(const struct qs_format *f, double **values, int *n, qs_err *e)
{
    const struct qs_format_traits *t = qs_format_traits(f);
    if ((!t->elements && !t->fixed_block) || f->bits < 1 || f->bits > 16) /* none */
        return qs_errf(e, "format '%s' has no code list", f->name);
    if (!t->elements) /* ggml */
        return qs_errf(e,
                       "format '%s' has no single code list: its codes are scaled per %d-element "
                       "block (see ggml.h); use roundtrip on a block of values",
                       f->name, f->block);
    struct qs_elem el;
    qs_elem_of(f, &el);
    int cnt = 1 << f->bits;
    double *v = malloc((size_t)cnt * sizeof *v);
    if (!v)
        return qs_errf(e, "out of memory");
    for (int c = 0; c < cnt; c++)
        v[c] = elem_decode(&el, (uint32_t)c);
    *values = v;
    *n = cnt;
    return 0;
}

double qs_format_cast(const struct qs_format *f, double x, int saturate)
{
    if (f->kind == QS_FMT_NONE)
        return x;
    struct qs_elem el;
    qs_elem_of(f, &el);
    if (!el.ops) /* ggml: no element type of its own; run qs_quant_fake on a row */
        return NAN;
    if (isnan(x))
        return NAN;
    return el.ops->cast(&el, x, saturate);
}

double qs_format_max(const struct qs_format *f)
{
    struct qs_elem el;
    qs_elem_of(f, &el);
    return el.ops ? el.maxval : 0.0;
}

/* ---- options ---------------------------------------------------------------------------- */

void qs_qopts_default(struct qs_qopts *o)
{
    memset(o, 0, sizeof *o);
    o->gran = QS_GRAN_TENSOR;
    o->clip = QS_CLIP_MAX;
    o->pct = 100.0;
    o->round = QS_ROUND_NEAREST;
    o->saturate = 1;
}

/* sat=0 applies: the element type has Inf/NaN codes. */
static int has_nonfinite(const struct qs_format *f)
{
    return qs_format_traits(f)->elements && f->nf != QS_NF_NONE;
}

void qs_qopts_format(const struct qs_format *f, const struct qs_qopts *o, char *buf, size_t n)
{
    if (!buf || n == 0)
        return;
    buf[0] = 0;
    const struct qs_format_traits *t = qs_format_traits(f);
    if (!t->options) /* none; ggml: llama.cpp's rules, no options */
        return;
    char gran[32], clip[40], rnd[48], range[32] = "", scale[16] = "";
    if (t->fixed_block)
        gran[0] = 0;
    else if (t->blockwise && o->gran == QS_GRAN_TENSOR) /* the default block */
        snprintf(gran, sizeof gran, "gran=group:%d ", f->block > 0 ? f->block : 64);
    else if (o->gran == QS_GRAN_GROUP)
        snprintf(gran, sizeof gran, "gran=group:%d ", o->group);
    else
        snprintf(gran, sizeof gran, "gran=%s ", o->gran == QS_GRAN_TENSOR ? "tensor" : "channel");
    if (o->clip == QS_CLIP_PCT)
        snprintf(clip, sizeof clip, "clip=pct:%.10g", o->pct);
    else
        snprintf(clip, sizeof clip, "clip=%s", o->clip == QS_CLIP_MSE ? "mse" : "max");
    if (o->round == QS_ROUND_STOCHASTIC)
        snprintf(rnd, sizeof rnd, "round=stochastic seed=%llu", (unsigned long long)o->seed);
    else
        snprintf(rnd, sizeof rnd, "round=nearest");
    const char *sat = has_nonfinite(f) ? (o->saturate ? " sat=1" : " sat=0") : "";
    if (t->unscaled) {
        snprintf(buf, n, "%s%s", rnd, sat);
        return;
    }
    if (t->scale_none && o->scale_none) {
        snprintf(buf, n, "scale=none %s%s", rnd, sat);
        return;
    }
    if (t->asym)
        snprintf(range, sizeof range, " %s",
                 o->asym         ? "asym"
                 : o->full_range ? "range=full sym"
                                 : "range=restricted sym");
    if (t->free_scale)
        snprintf(scale, sizeof scale, " %s", o->scale_f32 ? "scale=f32" : "scale=f16");
    snprintf(buf, n, "%s%s %s%s%s%s", gran, clip, rnd, range, sat, scale);
}

static int parse_pos_int(const char *v, long max, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < 1 || x > max)
        return -1;
    *out = x;
    return 0;
}

int qs_qopts_parse_token(struct qs_qopts *o, const char *tok, qs_err *e)
{
    struct qs_qopts t = *o;
    const char *eq = strchr(tok, '=');
    size_t klen = eq ? (size_t)(eq - tok) : strlen(tok);
    const char *v = eq ? eq + 1 : "";
#define KEY(s) (klen == strlen(s) && strncmp(tok, s, klen) == 0)
    if (!eq && KEY("asym")) {
        t.asym = 1;
    } else if (!eq && KEY("sym")) {
        t.asym = 0;
    } else if (eq && KEY("gran")) {
        long g;
        if (!strcmp(v, "tensor"))
            t.gran = QS_GRAN_TENSOR;
        else if (!strcmp(v, "channel"))
            t.gran = QS_GRAN_CHANNEL;
        else if (!strncmp(v, "group:", 6) && parse_pos_int(v + 6, 1L << 24, &g) == 0) {
            t.gran = QS_GRAN_GROUP;
            t.group = (int)g;
        } else
            return qs_errf(e,
                           "option '%s': expected gran=tensor, gran=channel or gran=group:N "
                           "(N >= 1)",
                           tok);
        t.gran_set = 1;
    } else if (eq && KEY("clip")) {
        if (!strcmp(v, "max"))
            t.clip = QS_CLIP_MAX;
        else if (!strcmp(v, "mse"))
            t.clip = QS_CLIP_MSE;
        else if (!strncmp(v, "pct:", 4)) {
            char *end;
            double p = strtod(v + 4, &end);
            if (end == v + 4 || *end || !(p > 0.0 && p <= 100.0))
                return qs_errf(e, "option '%s': the percentile must be in (0, 100]", tok);
            t.clip = QS_CLIP_PCT;
            t.pct = p;
        } else
            return qs_errf(e, "option '%s': expected clip=max, clip=mse or clip=pct:P", tok);
    } else if (eq && KEY("round")) {
        if (!strcmp(v, "nearest"))
            t.round = QS_ROUND_NEAREST;
        else if (!strcmp(v, "stochastic"))
            t.round = QS_ROUND_STOCHASTIC;
        else
            return qs_errf(e, "option '%s': expected round=nearest or round=stochastic", tok);
    } else if (eq && KEY("range")) {
        if (!strcmp(v, "full"))
            t.full_range = 1;
        else if (!strcmp(v, "restricted"))
            t.full_range = 0;
        else
            return qs_errf(e, "option '%s': expected range=full or range=restricted", tok);
    } else if (eq && KEY("sat")) {
        if (!strcmp(v, "0") || !strcmp(v, "1"))
            t.saturate = v[0] == '1';
        else
            return qs_errf(e, "option '%s': expected sat=0 or sat=1", tok);
    } else if (eq && KEY("scale")) {
        if (!strcmp(v, "none")) {
            t.scale_none = 1;
            t.scale_f32 = 0;
        } else if (!strcmp(v, "f16")) {
            t.scale_none = 0;
            t.scale_f32 = 0;
        } else if (!strcmp(v, "f32")) {
            t.scale_none = 0;
            t.scale_f32 = 1;
        } else
            return qs_errf(e, "option '%s': expected scale=none, scale=f16 or scale=f32", tok);
    } else if (eq && KEY("seed")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (end == v || *end || errno || v[0] == '-')
            return qs_errf(e, "option '%s': expected seed=N (a non-negative integer)", tok);
        t.seed = (uint64_t)s;
    } else {
        return qs_errf(e,
                       "unknown quantization option '%s' (gran=, clip=, round=, range=, "
                       "asym, sym, sat=, scale=, seed=)",
                       tok);
    }
#undef KEY
    *o = t;
    return 0;
}

int qs_qopts_check(const struct qs_format *f, const struct qs_qopts *o, qs_err *e)
{
    const struct qs_format_traits *t = qs_format_traits(f);
    if (f->kind == QS_FMT_NONE)
        return 0;
    const char *nm = f->name;
    if (!t->options) {
        struct qs_qopts d;
        qs_qopts_default(&d);
        if (o->gran_set || o->clip != d.clip || o->round != d.round || o->asym || o->full_range ||
            !o->saturate || o->scale_none || o->scale_f32) {
            char why[160];
            snprintf(why, sizeof why, t->own_rules ? t->own_rules : "%d", f->block);
            return qs_errf(e,
                           "%s: %s; gran=, clip=, round=, asym, range=, sat= and scale= do not "
                           "apply",
                           nm, why);
        }
        return 0;
    }
    if (t->unscaled && (o->gran_set || o->clip != QS_CLIP_MAX || o->scale_none || o->scale_f32))
        return qs_errf(e, "%s: a plain cast with no scale; gran=, clip= and scale= do not apply",
                       nm);
    if (o->gran == QS_GRAN_GROUP && o->group < 1)
        return qs_errf(e, "%s: group size must be >= 1", nm);
    if (o->clip == QS_CLIP_PCT && !(o->pct > 0.0 && o->pct <= 100.0))
        return qs_errf(e, "%s: clip percentile must be in (0, 100]", nm);
    if (o->asym && !t->asym)
        return qs_errf(e, "%s: asym (zero points) applies to int formats only", nm);
    if (o->full_range && !t->asym)
        return qs_errf(e, "%s: range=full applies to int formats only", nm);
    if (o->full_range && o->asym)
        return qs_errf(e, "%s: range=full applies to symmetric int (asym already uses all codes)",
                       nm);
    if (!o->saturate && !has_nonfinite(f))
        return qs_errf(e,
                       "%s: sat=0 needs a format with Inf/NaN codes (fp8-e4m3, fp8-e5m2, "
                       "fp8-e3m4, mxfp8); this one always saturates",
                       nm);
    if (o->scale_none && !t->scale_none)
        return qs_errf(e, "%s: scale=none applies to minifloat and fixed-point formats only", nm);
    if (o->scale_none && o->clip != QS_CLIP_MAX)
        return qs_errf(e, "%s: clipping needs a scale; drop scale=none", nm);
    if (o->scale_f32 && !t->free_scale && t->block_scale) {
        char up[8] = {0};
        for (int i = 0; i < 7 && t->block_scale[i]; i++)
            up[i] = (char)toupper((unsigned char)t->block_scale[i]);
        return qs_errf(e, "%s: block scales are %s by definition; scale=f32 does not apply", nm,
                       up);
    }
    if (o->gran_set && t->fixed_block)
        return qs_errf(e, "%s: fixed %d-element blocks along rows; gran= does not apply", nm,
                       f->block);
    if (o->gran_set && t->blockwise && o->gran == QS_GRAN_TENSOR)
        return qs_errf(e, "%s: block-wise absmax; use gran=group:N (default 64) or gran=channel",
                       nm);
    return 0;
}
