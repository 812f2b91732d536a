/* packfile.c - reading back a packed model export (layout in packfile.h). Every size comes from
 * the file, so each is checked against what the metadata's format and options imply before a
 * byte is decoded. */
#include "qscope/packfile.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/format.h"
#include "qscope/mlp.h"
#include "qscope/safetensors.h"

/* Entry idx of a SEP-separated list into buf. 0, or -1 when missing or longer than buf. */
static int list_item(const char *list, char sep, int idx, char *buf, size_t n)
{
    if (!list)
        return -1;
    const char *s = list;
    for (int i = 0; i < idx; i++) {
        s = strchr(s, sep);
        if (!s)
            return -1;
        s++;
    }
    const char *end = strchr(s, sep);
    size_t len = end ? (size_t)(end - s) : strlen(s);
    if (len >= n)
        return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    return 0;
}

/* Position of NAME in the comma list, or -1. */
static int list_index(const char *list, const char *name)
{
    size_t nl = strlen(name);
    int i = 0;
    for (const char *s = list; s; i++) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len == nl && !strncmp(s, name, nl))
            return i;
        s = end ? end + 1 : NULL;
    }
    return -1;
}

/* One site being read: the file, its path for messages, and the per-tensor "read" marks of a
 * loader that refuses tensors nothing read (NULL: none kept). */
struct rd {
    const struct qs_st_file *f;
    const char *path;
    unsigned char *used;
    qs_err *e;
};

/* Tensor NAME of the file, marked read when found. */
static const struct qs_st_tensor *find(const struct rd *r, const char *name)
{
    const struct qs_st_tensor *t = qs_st_find(r->f, name);
    if (t && r->used)
        r->used[t - qs_st_get(r->f, 0)] = 1;
    return t;
}

/* Metadata entry of layer idx. */
static int meta_item(const struct qs_st_file *f, const char *path, const char *key, char sep,
                     int idx, char *buf, size_t n, qs_err *e)
{
    if (list_item(qs_st_meta(f, key), sep, idx, buf, n) < 0)
        return qs_errf(e, "%s: packed export: metadata '%s' has no entry for layer %d", path, key,
                       idx);
    return 0;
}

/* A float tensor NAME of exactly (d0) or (d0, d1) (d1 < 0: 1-D), converted to F32 and checked
 * finite. 1 when absent and not required. */
static int get_f32(const struct rd *r, const char *name, int required, int64_t d0, int64_t d1,
                   float **out)
{
    const char *path = r->path;
    qs_err *e = r->e;
    char cn[128];
    *out = NULL;
    const struct qs_st_tensor *t = find(r, name);
    if (!t)
        return required ? qs_errf(e, "%s: packed export lacks tensor '%s'", path,
                                  qs_clean_str(name, cn, sizeof cn, 80))
                        : 1;
    int ndim = d1 < 0 ? 1 : 2;
    if (t->dtype == QS_DT_BOOL || t->ndim != ndim || t->shape[0] != d0 ||
        (ndim == 2 && t->shape[1] != d1)) {
        if (ndim == 1)
            return qs_errf(e, "%s: tensor '%s' must be a float vector of %lld values", path,
                           qs_clean_str(name, cn, sizeof cn, 80), (long long)d0);
        return qs_errf(e, "%s: tensor '%s' must be a float (%lld, %lld) matrix", path,
                       qs_clean_str(name, cn, sizeof cn, 80), (long long)d0, (long long)d1);
    }
    float *buf = qs_alloc((size_t)t->numel, sizeof(float), name, e);
    if (!buf)
        return qs_err_prefix(e, path);
    if (qs_st_to_f32(t, buf, e) < 0) {
        free(buf);
        return qs_err_prefix(e, path);
    }
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(buf[i])) {
            free(buf);
            return qs_errf(e, "%s: tensor '%s' has a non-finite value at [%lld]", path,
                           qs_clean_str(name, cn, sizeof cn, 80), (long long)i);
        }
    *out = buf;
    return 0;
}

/* A U8 byte buffer NAME of exactly n bytes (n == 0: must be absent). */
static int get_bytes(const struct rd *r, const char *name, size_t n, const uint8_t **out)
{
    const char *path = r->path;
    qs_err *e = r->e;
    char cn[128];
    const struct qs_st_tensor *t = find(r, name);
    *out = NULL;
    if (n == 0) {
        if (t)
            return qs_errf(e, "%s: tensor '%s' does not belong to this layer's format", path,
                           qs_clean_str(name, cn, sizeof cn, 80));
        return 0;
    }
    if (!t)
        return qs_errf(e, "%s: packed export lacks tensor '%s'", path,
                       qs_clean_str(name, cn, sizeof cn, 80));
    if (t->dtype != QS_DT_U8 || t->ndim != 1 || (size_t)t->numel != n)
        return qs_errf(e, "%s: tensor '%s' must be U8 [%zu] for its format and shape", path,
                       qs_clean_str(name, cn, sizeof cn, 80), n);
    *out = t->data;
    return 0;
}

/* The qscope.weight_methods entry of packed layer idx (optional: files before it have none).
 * GPTQ and the imatrix search choose codes and scales in the format's own layout: they decode
 * as any, and the entry is a record. A rotation, SmoothQuant or AWQ would have put the codes in
 * a basis this layout cannot express (the exporter refuses to pack them): refused here too,
 * rather than decoded into wrong weights. Tokens: rtn, KEY=VALUE of method, damp, order,
 * inputs, weight, rotate, seed, smooth, alpha. */
static int layer_method(const struct qs_st_file *f, const char *path, const char *layer, int idx,
                        qs_err *e)
{
    if (!qs_st_meta(f, "qscope.weight_methods"))
        return 0;
    char m[320], cn[64];
    if (meta_item(f, path, "qscope.weight_methods", ';', idx, m, sizeof m, e) < 0)
        return -1;
    for (const unsigned char *p = (const unsigned char *)m; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return qs_errf(e, "%s: layer %d: qscope.weight_methods entry has control characters",
                           path, idx);
    static const char *const keys[] = {"method", "damp", "order",  "inputs", "weight",
                                       "rotate", "seed", "smooth", "alpha"};
    const char *basis = NULL;
    for (char *sv, *t = strtok_r(m, " ", &sv); t; t = strtok_r(NULL, " ", &sv)) {
        if (!strcmp(t, "rtn"))
            continue;
        char *eq = strchr(t, '=');
        size_t kl = eq ? (size_t)(eq - t) : 0, k = 0;
        while (k < sizeof keys / sizeof *keys && (strlen(keys[k]) != kl || strncmp(t, keys[k], kl)))
            k++;
        if (!eq || !eq[1] || k == sizeof keys / sizeof *keys)
            return qs_errf(e,
                           "%s: layer %d (%s): qscope.weight_methods token '%s' is not a "
                           "quantizer method option",
                           path, idx, layer, qs_clean_str(t, cn, sizeof cn, 40));
        if (!strcmp(t, "rotate=hadamard"))
            basis = "rotate=hadamard";
        else if (!strncmp(t, "smooth=", 7))
            basis = "smooth=";
        else if (!strcmp(t, "method=awq"))
            basis = "method=awq";
    }
    if (basis)
        return qs_errf(e,
                       "%s: layer %d (%s) was quantized with %s, whose codes are in a rotated or "
                       "channel-scaled basis that the packed layout does not record; this reader "
                       "cannot decode them into the layer's weights",
                       path, idx, layer, basis);
    return 0;
}

/* Format and options of layer idx; the metadata's gran and scale dtype must agree with them. */
static int layer_format(const struct qs_st_file *f, const char *path, const char *layer, int idx,
                        int rows, int cols, struct qs_format *fmt, struct qs_qopts *o,
                        struct qs_packed_layout *lay, qs_err *e)
{
    char name[64], opts[512], gran[48], sdt[16], want[48], c1[48], c2[24];
    if (meta_item(f, path, "qscope.weight_formats", ',', idx, name, sizeof name, e) < 0 ||
        meta_item(f, path, "qscope.weight_options", ';', idx, opts, sizeof opts, e) < 0 ||
        meta_item(f, path, "qscope.weight_grans", ',', idx, gran, sizeof gran, e) < 0 ||
        meta_item(f, path, "qscope.weight_scale_dtypes", ',', idx, sdt, sizeof sdt, e) < 0)
        return -1;
    /* the parsers below quote what they refuse: no control character may reach a message */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return qs_errf(e, "%s: layer %d: qscope.weight_formats entry has control characters",
                           path, idx);
    for (const unsigned char *p = (const unsigned char *)opts; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return qs_errf(e, "%s: layer %d: qscope.weight_options entry has control characters",
                           path, idx);
    if (layer_method(f, path, layer, idx, e) < 0)
        return -1;
    if (qs_format_parse(name, fmt, e) < 0)
        return qs_err_prefix(e, path);
    if (fmt->kind == QS_FMT_NONE)
        return qs_errf(e, "%s: layer %d is packed but its format is 'none'", path, idx);
    qs_qopts_default(o);
    for (char *t = strtok(opts, " "); t; t = strtok(NULL, " "))
        if (qs_qopts_parse_token(o, t, e) < 0)
            return qs_err_prefix(e, path);
    if (qs_packed_layout(fmt, o, rows, cols, lay, e) < 0)
        return qs_err_prefix(e, path);
    qs_packfile_gran(lay, o, cols, want, sizeof want);
    if (strcmp(gran, want) || strcmp(sdt, lay->scale_dtype))
        return qs_errf(e,
                       "%s: layer %d (%s): metadata says gran=%s scale dtype %s, but %s with "
                       "its options has gran=%s scale dtype %s",
                       path, idx, layer, qs_clean_str(gran, c1, sizeof c1, 40),
                       qs_clean_str(sdt, c2, sizeof c2, 12), fmt->name, want, lay->scale_dtype);
    return 0;
}

/* Dequantizes the packed weight of layer idx (NAME in messages, tensors TP.weight.*) into
 * w: (rows, cols). */
static int load_packed(const struct rd *r, const char *name, const char *tp, int idx, int rows,
                       int cols, float *w)
{
    const char *path = r->path;
    qs_err *e = r->e;
    struct qs_packed p;
    struct qs_packed_layout lay;
    memset(&p, 0, sizeof p);
    if (layer_format(r->f, path, name, idx, rows, cols, &p.fmt, &p.opt, &lay, e) < 0)
        return -1;
    char key[256];
    const uint8_t *codes, *scales, *zeros;
    snprintf(key, sizeof key, "%s.weight.codes", tp);
    if (get_bytes(r, key, lay.code_bytes, &codes) < 0)
        return -1;
    snprintf(key, sizeof key, "%s.weight.scales", tp);
    if (get_bytes(r, key, lay.scale_bytes, &scales) < 0)
        return -1;
    snprintf(key, sizeof key, "%s.weight.zeros", tp);
    if (get_bytes(r, key, lay.zero_bytes, &zeros) < 0)
        return -1;
    snprintf(key, sizeof key, "%s.weight.tensor_scale", tp);
    float *ts = NULL;
    if (lay.tensor_scale) {
        if (get_f32(r, key, 1, 1, -1, &ts) < 0)
            return -1;
        p.tensor_scale = ts[0];
        free(ts);
        if (!(p.tensor_scale >= 0.0f))
            return qs_errf(e, "%s: tensor '%s' must be >= 0", path, key);
    } else if (qs_st_find(r->f, key)) {
        return qs_errf(e, "%s: tensor '%s' does not belong to format %s", path, key, p.fmt.name);
    }
    static const uint8_t none = 0;
    p.rows = rows;
    p.cols = cols;
    p.codes = (uint8_t *)(uintptr_t)codes; /* read only: qs_quant_unpack does not write them */
    p.code_bytes = lay.code_bytes;
    p.scales = (uint8_t *)(uintptr_t)(scales ? scales : &none);
    p.scale_bytes = lay.scale_bytes;
    p.zeros = (uint8_t *)(uintptr_t)zeros;
    p.zero_bytes = lay.zero_bytes;
    if (qs_quant_unpack(&p, w, e) < 0)
        return qs_err_prefix(e, path);
    size_t n = (size_t)rows * cols;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return qs_errf(e,
                           "%s: layer '%s' decodes to a non-finite weight at [%zu, %zu] "
                           "(a NaN/Inf code or scale)",
                           path, name, i / (size_t)cols, i % (size_t)cols);
    return 0;
}

void qs_packfile_gran(const struct qs_packed_layout *lay, const struct qs_qopts *o, int cols,
                      char *buf, size_t n)
{
    if (lay->group == 0)
        snprintf(buf, n, "tensor");
    else if (lay->group == cols && o->gran == QS_GRAN_CHANNEL)
        snprintf(buf, n, "channel");
    else
        snprintf(buf, n, "group:%d", lay->group);
}

int qs_packfile_fold_map(int out, int in, const float *a, const float *mb, float *w, float *b,
                         qs_err *e)
{
    /* y' = (x W^T + b) A^T + mb = x (A W)^T + (A b + mb) */
    float *aw = qs_alloc((size_t)out * in, sizeof(float), "linear correction", e);
    float *ab = qs_alloc((size_t)out, sizeof(float), "linear correction", e);
    if (!aw || !ab) {
        free(aw);
        free(ab);
        return -1;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, out, 1.0f, a, out, w, in, 0.0f,
                aw, in);
    for (int i = 0; i < out; i++) {
        double s = mb[i];
        for (int k = 0; k < out; k++)
            s += (double)a[(size_t)i * out + k] * b[k];
        ab[i] = (float)s;
    }
    memcpy(w, aw, (size_t)out * in * sizeof(float));
    memcpy(b, ab, (size_t)out * sizeof(float));
    free(aw);
    free(ab);
    return 0;
}

/* Folds the correction of layer NAME (tensors TP.corr.*) into w: (out, in) and b: (out), as
 * packfile.h says. b NULL: the site has no bias, and a bias or map correction is refused. */
static int fold_correction(const struct rd *r, const char *name, const char *tp, int out, int in,
                           float *w, float *b)
{
    const char *path = r->path;
    qs_err *e = r->e;
    char key[256], key2[256];
    float *l = NULL, *rt = NULL, *db = NULL, *a = NULL, *mb = NULL;
    int rc = -1;
    snprintf(key, sizeof key, "%s.corr.l", tp);
    snprintf(key2, sizeof key2, "%s.corr.rt", tp);
    const struct qs_st_tensor *tl = qs_st_find(r->f, key), *tr = qs_st_find(r->f, key2);
    if (tl || tr) {
        int64_t rk = tl && tl->ndim == 2 ? tl->shape[1] : 0;
        int mn = out < in ? out : in;
        if (rk < 1 || rk > mn)
            return qs_errf(e, "%s: tensor '%s' must be (%d, r) with 1 <= r <= %d", path, key, out,
                           mn);
        if (get_f32(r, key, 1, out, rk, &l) < 0 || get_f32(r, key2, 1, rk, in, &rt) < 0)
            goto out;
        size_t n = (size_t)out * in;
        float *c = qs_alloc(n, sizeof(float), "low-rank correction", e);
        if (!c)
            goto out;
        /* c = l rt, the very product the fit computed (lowrank.c), then W' = Q(W) + c as the
         * session's forward pass adds it */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, (int)rk, 1.0f, l, (int)rk,
                    rt, in, 0.0f, c, in);
        for (size_t j = 0; j < n; j++)
            w[j] = w[j] + c[j];
        free(c);
    }
    static const char *const needs_bias[] = {"corr.bias", "corr.map", "corr.map_bias"};
    for (int i = 0; !b && i < 3; i++) {
        snprintf(key, sizeof key, "%s.%s", tp, needs_bias[i]);
        if (qs_st_find(r->f, key))
            return qs_errf(e, "%s: tensor '%s' corrects a bias, and site '%s' has none", path, key,
                           name);
    }
    snprintf(key, sizeof key, "%s.corr.bias", tp);
    int got = b ? get_f32(r, key, 0, out, -1, &db) : 1;
    if (got < 0)
        goto out;
    if (got == 0)
        for (int j = 0; j < out; j++)
            b[j] = b[j] + db[j];
    snprintf(key, sizeof key, "%s.corr.map", tp);
    snprintf(key2, sizeof key2, "%s.corr.map_bias", tp);
    if (b && (qs_st_find(r->f, key) || qs_st_find(r->f, key2))) {
        if (get_f32(r, key, 1, out, out, &a) < 0 || get_f32(r, key2, 1, out, -1, &mb) < 0)
            goto out;
        if (qs_packfile_fold_map(out, in, a, mb, w, b, e) < 0)
            goto out;
    }
    rc = 0;
out:
    free(l);
    free(rt);
    free(db);
    free(a);
    free(mb);
    return rc;
}

/* Site NAME, entry idx of qscope.layers, tensors TP.*: the weight (packed, or F32 (out, in), or
 * (in, out) with QS_PACKFILE_WT), the bias (with QS_PACKFILE_BIAS: "TP.bias", zeros when
 * absent; without: none may be there) and the folded correction into *wo, *bo. */
static int load_site(const struct rd *r, const char *name, const char *tp, int idx, int out, int in,
                     int flags, float **wo, float **bo)
{
    const char *path = r->path;
    qs_err *e = r->e;
    float *w = qs_alloc((size_t)out * (size_t)in, sizeof(float), name, e);
    float *b = NULL;
    if (!w)
        return qs_err_prefix(e, path);
    char key[256];
    snprintf(key, sizeof key, "%s.weight.codes", tp);
    int rc;
    if (qs_st_find(r->f, key)) {
        rc = load_packed(r, name, tp, idx, out, in, w);
    } else {
        float *fw = NULL;
        const int wt = flags & QS_PACKFILE_WT;
        snprintf(key, sizeof key, "%s.weight", tp);
        rc = get_f32(r, key, 0, wt ? in : out, wt ? out : in, &fw);
        if (rc == 1)
            rc = qs_errf(e, "%s: packed export has neither '%s.codes' nor '%s' (layer '%s')", path,
                         key, key, name);
        if (rc == 0 && wt) /* a Conv1D (in, out) weight: transposed to (out, in) */
            for (int i = 0; i < out; i++)
                for (int j = 0; j < in; j++)
                    w[(size_t)i * in + j] = fw[(size_t)j * out + i];
        else if (rc == 0)
            memcpy(w, fw, (size_t)out * in * sizeof(float));
        free(fw);
    }
    snprintf(key, sizeof key, "%s.bias", tp);
    if (rc == 0 && (flags & QS_PACKFILE_BIAS)) {
        if ((rc = get_f32(r, key, 0, out, -1, &b)) == 1) {
            rc = 0;
            b = qs_alloc((size_t)out, sizeof(float), key, e);
            if (!b)
                rc = -1;
        }
    } else if (rc == 0 && qs_st_find(r->f, key)) {
        rc = qs_errf(e, "%s: tensor '%s': site '%s' has no bias", path, key, name);
    }
    if (rc == 0)
        rc = fold_correction(r, name, tp, out, in, w, b);
    /* finite factors can still fold to an overflow: the model must not hold an Inf */
    for (size_t i = 0, n = (size_t)out * in; rc == 0 && i < n + (b ? (size_t)out : 0); i++)
        if (!isfinite(i < n ? w[i] : b[i - n]))
            rc = qs_errf(e, "%s: layer '%s': its correction folds to a non-finite %s", path, name,
                         i < n ? "weight" : "bias");
    if (rc < 0) {
        free(w);
        free(b);
        return -1;
    }
    *wo = w;
    *bo = b;
    return 0;
}

/* Entry idx of qscope.layers for layer NAME (checked printable), and its "OUTxIN" shape. */
static int site_meta(const struct rd *r, const char *name, int *idx, long *out, long *in)
{
    const char *path = r->path;
    qs_err *e = r->e;
    char cn[512], shape[48];
    /* every message below names the layer: refuse a name that would not print as it is */
    if (strcmp(qs_clean_str(name, cn, sizeof cn, 0), name) || strlen(name) > 200)
        return qs_errf(e, "%s: layer name '%s' has control characters or is too long", path,
                       qs_clean_str(name, cn, 64, 60));
    *idx = list_index(qs_st_meta(r->f, "qscope.layers"), name);
    if (*idx < 0)
        return qs_errf(e, "%s: layer '%s' is not in qscope.layers", path,
                       qs_clean_str(name, cn, sizeof cn, 64));
    if (meta_item(r->f, path, "qscope.weight_shapes", ',', *idx, shape, sizeof shape, e) < 0)
        return -1;
    char *end;
    *in = 0;
    *out = strtol(shape, &end, 10);
    if (*end == 'x')
        *in = strtol(end + 1, &end, 10);
    if (*end || *out < 1 || *in < 1 || *out > (1 << 24) || *in > (1 << 24))
        return qs_errf(e,
                       "%s: qscope.weight_shapes entry '%s' of layer '%s': expected OUTxIN "
                       "with sizes 1..16777216",
                       path, qs_clean_str(shape, cn, 48, 40), qs_clean_str(name, cn + 48, 48, 40));
    return 0;
}

static int is_packed(const struct qs_st_file *f)
{
    const char *kind = qs_st_meta(f, "qscope.export");
    return kind && !strcmp(kind, "packed");
}

int qs_packfile_layer(const struct qs_st_file *f, const char *path, const char *prefix,
                      struct qs_layer *l, qs_err *e)
{
    if (!is_packed(f))
        return 1;
    struct rd r = {f, path, NULL, e};
    int idx;
    long out, in;
    float *w, *b;
    if (site_meta(&r, prefix, &idx, &out, &in) < 0 ||
        load_site(&r, prefix, prefix, idx, (int)out, (int)in, QS_PACKFILE_BIAS, &w, &b) < 0)
        return -1;
    snprintf(l->name, sizeof l->name, "%s", prefix);
    l->out = (int)out;
    l->in = (int)in;
    l->w = w;
    l->b = b;
    l->w_mapped = l->b_mapped = 0;
    l->has_bias = 1;
    return 0;
}

int qs_packfile_site(const struct qs_st_file *f, const char *path, const char *name,
                     const char *tprefix, int out, int in, int flags, float **w, float **b,
                     unsigned char *used, qs_err *e)
{
    *w = *b = NULL;
    if (!is_packed(f))
        return 1;
    struct rd r = {f, path, used, e};
    int idx;
    long mo, mi;
    char cn[96];
    if (strlen(tprefix) > 200)
        return qs_errf(e, "%s: tensor name prefix of site '%s' is too long", path,
                       qs_clean_str(name, cn, sizeof cn, 64));
    if (site_meta(&r, name, &idx, &mo, &mi) < 0)
        return -1;
    if (mo != out || mi != in)
        return qs_errf(e,
                       "%s: qscope.weight_shapes gives site '%s' the shape %ldx%ld, but the "
                       "model's config.json gives %dx%d",
                       path, name, mo, mi, out, in);
    return load_site(&r, name, tprefix, idx, out, in, flags, w, b);
}
