/* gguf.c - the GGUF reader (format and checks in gguf.h). Every length and count read from the
 * file is checked against the bytes that remain before it is used, so a lying header fails with
 * a message instead of an allocation or a read past the end. */
#include "qscope/gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/ggml.h"
#include "qscope/half.h"

struct kv {
    char *key;
    int type;
    int arr_type;     /* ARRAY: element type */
    uint64_t n;       /* ARRAY: element count */
    const uint8_t *v; /* the value's bytes in the buffer (after the type field) */
    char *str;        /* STRING: NUL-terminated copy */
};

struct qs_gguf_file {
    char *path;
    void *map;
    size_t maplen;
    int version;
    uint32_t align;
    int n;
    struct qs_gguf_tensor *t;
    int nkv;
    struct kv *kv;
    int have_stat;
    struct qs_file_id id;
};

static const size_t vsize[QS_GGUF_NVTYPES] = {
    [QS_GGUF_U8] = 1,  [QS_GGUF_I8] = 1,  [QS_GGUF_U16] = 2, [QS_GGUF_I16] = 2,
    [QS_GGUF_U32] = 4, [QS_GGUF_I32] = 4, [QS_GGUF_F32] = 4, [QS_GGUF_BOOL] = 1,
    [QS_GGUF_U64] = 8, [QS_GGUF_I64] = 8, [QS_GGUF_F64] = 8,
};
static const char *const vname[QS_GGUF_NVTYPES] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

/* ---- a bounds-checked cursor -------------------------------------------------------------- */

struct cur {
    const uint8_t *b;
    size_t len, pos;
    const char *label; /* cleaned file name */
    qs_err *e;
};

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Takes n bytes or fails naming what was being read. */
static int take(struct cur *c, size_t n, const char *what, const uint8_t **p)
{
    if (n > c->len - c->pos)
        return qs_errf(c->e,
                       "%s: truncated: %s needs %zu bytes at offset %zu but the file ends at %zu",
                       c->label, what, n, c->pos, c->len);
    *p = c->b + c->pos;
    c->pos += n;
    return 0;
}

static int rd_u32(struct cur *c, const char *what, uint32_t *v)
{
    const uint8_t *p = NULL;
    if (take(c, 4, what, &p) < 0)
        return -1;
    *v = (uint32_t)le(p, 4);
    return 0;
}

static int rd_u64(struct cur *c, const char *what, uint64_t *v)
{
    const uint8_t *p = NULL;
    if (take(c, 8, what, &p) < 0)
        return -1;
    *v = le(p, 8);
    return 0;
}

/* A GGUF string: u64 length, bytes. *s points at the bytes (not terminated). */
static int rd_str(struct cur *c, const char *what, const uint8_t **s, uint64_t *n)
{
    if (rd_u64(c, what, n) < 0)
        return -1;
    if (*n > c->len - c->pos)
        return qs_errf(c->e,
                       "%s: %s has length %llu at offset %zu, past the end of the file (%zu "
                       "bytes remain)",
                       c->label, what, (unsigned long long)*n, c->pos - 8, c->len - c->pos);
    *s = c->b + c->pos;
    c->pos += (size_t)*n;
    return 0;
}

static char *dup_n(const uint8_t *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void free_parts(struct qs_gguf_file *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < f->nkv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].str);
    }
    free(f->kv);
    f->t = NULL;
    f->kv = NULL;
    f->n = f->nkv = 0;
}

/* Skips (and checks) one value of type ty; nested arrays are refused. */
static int skip_value(struct cur *c, int ty, const char *key, int in_array)
{
    const uint8_t *p = NULL;
    char cb[80];
    if (ty == QS_GGUF_STRING) {
        uint64_t n;
        snprintf(cb, sizeof cb, "a string of key '%s'", key);
        return rd_str(c, cb, &p, &n);
    }
    if (ty == QS_GGUF_BOOL) {
        if (take(c, 1, "a bool", &p) < 0)
            return -1;
        if (*p > 1)
            return qs_errf(c->e, "%s: key '%s': bool value %u is neither 0 nor 1", c->label, key,
                           *p);
        return 0;
    }
    if (ty == QS_GGUF_ARRAY && in_array)
        return qs_errf(c->e, "%s: key '%s': arrays of arrays are not supported", c->label, key);
    snprintf(cb, sizeof cb, "the value of key '%s'", key);
    return take(c, vsize[ty], cb, &p);
}

/* A zeroed array for the n items the header claims, each taking at least min_bytes of what
 * is left (and at most max of them): NULL and c->e (naming the items and what is `after` the
 * count) when the bytes cannot hold them or memory runs out. */
static void *claimed(struct cur *c, uint64_t n, size_t min_bytes, uint64_t max, size_t size,
                     const char *items, const char *after)
{
    if (n > (c->len - c->pos) / min_bytes || n > max) {
        qs_errf(c->e, "%s: the header claims %llu %s, more than the %zu bytes after %s", c->label,
                (unsigned long long)n, items, c->len - c->pos, after);
        return NULL;
    }
    void *a = qs_calloc(n ? (size_t)n : 1, size);
    if (!a)
        qs_errf(c->e, "%s: out of memory", c->label);
    return a;
}

static int parse_kv(struct qs_gguf_file *f, struct cur *c, uint64_t nkv)
{
    /* each pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes */
    if (!(f->kv = claimed(c, nkv, 14, UINT64_MAX, sizeof *f->kv, "key/value pairs", "it can hold")))
        return -1;
    for (uint64_t i = 0; i < nkv; i++) {
        const uint8_t *ks;
        uint64_t kn;
        char what[48], kb[80];
        snprintf(what, sizeof what, "the key of pair %llu", (unsigned long long)i);
        if (rd_str(c, what, &ks, &kn) < 0)
            return -1;
        if (kn == 0 || kn > 65535)
            return qs_errf(c->e, "%s: pair %llu has a key of length %llu (must be 1..65535)",
                           c->label, (unsigned long long)i, (unsigned long long)kn);
        struct kv *k = &f->kv[f->nkv];
        if (!(k->key = dup_n(ks, (size_t)kn)))
            return qs_errf(c->e, "%s: out of memory", c->label);
        f->nkv++;
        if (strlen(k->key) != kn)
            return qs_errf(c->e, "%s: key %llu contains a NUL byte", c->label,
                           (unsigned long long)i);
        const char *kc = qs_clean_str(k->key, kb, sizeof kb, 60);
        for (int j = 0; j < f->nkv - 1; j++)
            if (!strcmp(f->kv[j].key, k->key))
                return qs_errf(c->e, "%s: duplicate key '%s'", c->label, kc);
        uint32_t ty;
        if (rd_u32(c, "a value type", &ty) < 0)
            return -1;
        if (ty >= QS_GGUF_NVTYPES)
            return qs_errf(c->e, "%s: key '%s' has unknown value type %u (valid: 0..12)", c->label,
                           kc, ty);
        k->type = (int)ty;
        k->v = c->b + c->pos;
        if (ty == QS_GGUF_ARRAY) {
            uint32_t at;
            uint64_t an;
            if (rd_u32(c, "an array type", &at) < 0 || rd_u64(c, "an array length", &an) < 0)
                return -1;
            if (at >= QS_GGUF_NVTYPES)
                return qs_errf(c->e, "%s: key '%s': unknown array element type %u", c->label, kc,
                               at);
            if (at == QS_GGUF_ARRAY)
                return qs_errf(c->e, "%s: key '%s': arrays of arrays are not supported", c->label,
                               kc);
            size_t min = at == QS_GGUF_STRING ? 8 : vsize[at];
            if (an > (c->len - c->pos) / min)
                return qs_errf(c->e,
                               "%s: key '%s': array of %llu %s elements does not fit in the %zu "
                               "bytes that remain",
                               c->label, kc, (unsigned long long)an, vname[at], c->len - c->pos);
            k->arr_type = (int)at;
            k->n = an;
            if (at != QS_GGUF_STRING && at != QS_GGUF_BOOL) {
                c->pos += (size_t)an * vsize[at];
            } else {
                for (uint64_t j = 0; j < an; j++)
                    if (skip_value(c, (int)at, kc, 1) < 0)
                        return -1;
            }
        } else if (ty == QS_GGUF_STRING) {
            const uint8_t *s;
            uint64_t sn;
            snprintf(what, sizeof what, "the string value of key %llu", (unsigned long long)i);
            if (rd_str(c, what, &s, &sn) < 0)
                return -1;
            if (!(k->str = dup_n(s, (size_t)sn)))
                return qs_errf(c->e, "%s: out of memory", c->label);
        } else if (skip_value(c, (int)ty, kc, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

static int by_offset(const void *a, const void *b)
{
    const struct qs_gguf_tensor *x = *(const struct qs_gguf_tensor *const *)a;
    const struct qs_gguf_tensor *y = *(const struct qs_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int parse_tensors(struct qs_gguf_file *f, struct cur *c, uint64_t nt)
{
    /* each info takes at least 8 + 1 (name) + 4 + 8 (one dim) + 4 + 8 bytes */
    if (!(f->t = claimed(c, nt, 33, 1000000, sizeof *f->t, "tensors",
                         "the key/value pairs can describe")))
        return -1;
    for (uint64_t i = 0; i < nt; i++) {
        const uint8_t *ns;
        uint64_t nn;
        char what[48], nb[80], tb[32];
        snprintf(what, sizeof what, "the name of tensor %llu", (unsigned long long)i);
        if (rd_str(c, what, &ns, &nn) < 0)
            return -1;
        if (nn == 0 || nn > QS_GGUF_MAXNAME)
            return qs_errf(c->e, "%s: tensor %llu has a name of %llu bytes (must be 1..%d)",
                           c->label, (unsigned long long)i, (unsigned long long)nn,
                           QS_GGUF_MAXNAME);
        struct qs_gguf_tensor *t = &f->t[f->n];
        if (!(t->name = dup_n(ns, (size_t)nn)))
            return qs_errf(c->e, "%s: out of memory", c->label);
        f->n++;
        const char *nc = qs_clean_str(t->name, nb, sizeof nb, 0);
        if (strlen(t->name) != nn)
            return qs_errf(c->e, "%s: tensor %llu: its name contains a NUL byte", c->label,
                           (unsigned long long)i);
        uint32_t nd, ty;
        if (rd_u32(c, "n_dims", &nd) < 0)
            return -1;
        if (nd < 1 || nd > QS_GGUF_MAXDIM)
            return qs_errf(c->e, "%s: tensor '%s' has %u dimensions (must be 1..4)", c->label, nc,
                           nd);
        t->ndim = (int)nd;
        int64_t numel = 1;
        for (int d = 0; d < QS_GGUF_MAXDIM; d++) {
            uint64_t v = 1;
            if (d < (int)nd && rd_u64(c, "a dimension", &v) < 0)
                return -1;
            if (v < 1 || v > (uint64_t)INT64_MAX)
                return qs_errf(c->e, "%s: tensor '%s': dimension %d is %llu (must be >= 1)",
                               c->label, nc, d, (unsigned long long)v);
            t->ne[d] = (int64_t)v;
            if (numel > INT64_MAX / t->ne[d])
                return qs_errf(c->e, "%s: tensor '%s': the element count overflows int64", c->label,
                               nc);
            numel *= t->ne[d];
        }
        t->numel = numel;
        if (rd_u32(c, "a tensor type", &ty) < 0 || rd_u64(c, "a tensor offset", &t->offset) < 0)
            return -1;
        t->type = (int)ty;
        int blk = qs_ggml_block_size((int)ty);
        if (ty >= QS_GGML_NTYPES || blk <= 0)
            return qs_errf(c->e, "%s: tensor '%s' has unknown ggml type %u", c->label, nc, ty);
        size_t rb, nbytes;
        if (t->ne[0] % blk)
            return qs_errf(c->e,
                           "%s: tensor '%s': rows of %lld elements are not a multiple of the "
                           "%d-element %s block",
                           c->label, nc, (long long)t->ne[0], blk,
                           qs_gguf_type_name((int)ty, tb, sizeof tb));
        if (qs_ggml_row_bytes((int)ty, t->ne[0], &rb, NULL) < 0 ||
            qs_size_mul(rb, (size_t)(numel / t->ne[0]), &nbytes) < 0)
            return qs_errf(c->e, "%s: tensor '%s': its byte size overflows", c->label, nc);
        t->nbytes = nbytes;
        for (int j = 0; j < f->n - 1; j++)
            if (!strcmp(f->t[j].name, t->name))
                return qs_errf(c->e, "%s: duplicate tensor name '%s'", c->label, nc);
    }
    return 0;
}

static int parse(struct qs_gguf_file *f, const uint8_t *buf, size_t len, qs_err *e)
{
    char lb[256];
    struct cur c = {buf, len, 0, qs_clean_str(f->path, lb, sizeof lb, 0), e};
    if (len < 4 || memcmp(buf, "GGUF", 4) != 0)
        return qs_errf(e, "%s: not a GGUF file (the first 4 bytes are not \"GGUF\")", c.label);
    c.pos = 4;
    uint32_t ver;
    uint64_t nt, nkv;
    if (rd_u32(&c, "the version", &ver) < 0)
        return -1;
    if (ver != 2 && ver != 3)
        return qs_errf(e, "%s: GGUF version %u is not supported (2 or 3)", c.label, ver);
    f->version = (int)ver;
    if (rd_u64(&c, "the tensor count", &nt) < 0 || rd_u64(&c, "the key/value count", &nkv) < 0)
        return -1;
    if (parse_kv(f, &c, nkv) < 0)
        return -1;
    f->align = 32;
    int ai = qs_gguf_kv_find(f, "general.alignment");
    if (ai >= 0) {
        if (f->kv[ai].type != QS_GGUF_U32)
            return qs_errf(e, "%s: general.alignment is a %s, not a u32", c.label,
                           vname[f->kv[ai].type]);
        uint32_t a = (uint32_t)le(f->kv[ai].v, 4);
        if (a == 0 || (a & (a - 1)))
            return qs_errf(e, "%s: general.alignment %u is not a power of two", c.label, a);
        f->align = a;
    }
    if (parse_tensors(f, &c, nt) < 0)
        return -1;
    size_t data = c.pos + (f->align - c.pos % f->align) % f->align;
    if (f->n && data > len)
        return qs_errf(e,
                       "%s: truncated: the data area would start at %zu but the file ends at "
                       "%zu",
                       c.label, data, len);
    size_t avail = data <= len ? len - data : 0;
    struct qs_gguf_tensor **ord = malloc((f->n ? (size_t)f->n : 1) * sizeof *ord);
    if (!ord)
        return qs_errf(e, "%s: out of memory", c.label);
    int rc = 0;
    for (int i = 0; i < f->n && rc == 0; i++) {
        struct qs_gguf_tensor *t = &f->t[i];
        char nb[80];
        const char *nc = qs_clean_str(t->name, nb, sizeof nb, 0);
        ord[i] = t;
        if (t->offset % f->align)
            rc = qs_errf(e, "%s: tensor '%s': offset %llu is not a multiple of the alignment %u",
                         c.label, nc, (unsigned long long)t->offset, f->align);
        else if (t->offset > avail || t->nbytes > avail - t->offset)
            rc = qs_errf(e,
                         "%s: tensor '%s': %zu bytes at offset %llu run past the end of the data "
                         "area (%zu bytes)",
                         c.label, nc, t->nbytes, (unsigned long long)t->offset, avail);
        else
            t->data = buf + data + t->offset;
    }
    if (rc == 0 && f->n > 1) {
        qsort(ord, (size_t)f->n, sizeof *ord, by_offset);
        for (int i = 1; i < f->n && rc == 0; i++)
            if (ord[i - 1]->offset + ord[i - 1]->nbytes > ord[i]->offset) {
                char n1[80], n2[80];
                rc = qs_errf(e, "%s: tensors '%s' and '%s' overlap in the data area", c.label,
                             qs_clean_str(ord[i - 1]->name, n1, sizeof n1, 0),
                             qs_clean_str(ord[i]->name, n2, sizeof n2, 0));
            }
    }
    free(ord);
    return rc;
}

int qs_gguf_open_mem(const void *buf, size_t len, const char *label, struct qs_gguf_file **out,
                     qs_err *e)
{
    *out = NULL;
    struct qs_gguf_file *f = qs_calloc(1, sizeof *f);
    if (!f || !(f->path = qs_strdup(label ? label : "<memory>"))) {
        free(f);
        return qs_errf(e, "%s: out of memory", label ? label : "<memory>");
    }
    if (parse(f, buf ? buf : (const void *)"", buf ? len : 0, e) < 0) {
        qs_gguf_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int qs_gguf_open(const char *path, struct qs_gguf_file **out, qs_err *e)
{
    *out = NULL;
    if (!path)
        return qs_errf(e, "gguf: no path given");
    void *map;
    size_t len;
    struct qs_file_id id;
    if (qs_map_regular(path, "GGUF file", &map, &len, &id, e) < 0)
        return -1;
    struct qs_gguf_file *f = qs_calloc(1, sizeof *f);
    if (!f || !(f->path = qs_strdup(path))) {
        char pb[256];
        if (map)
            munmap(map, len);
        free(f);
        return qs_errf(e, "%s: out of memory", qs_clean_str(path, pb, sizeof pb, 0));
    }
    f->map = map;
    f->maplen = len;
    f->have_stat = 1;
    f->id = id;
    if (parse(f, map, len, e) < 0) {
        qs_gguf_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

void qs_gguf_close(struct qs_gguf_file *f)
{
    if (!f)
        return;
    free_parts(f);
    if (f->map)
        munmap(f->map, f->maplen);
    free(f->path);
    free(f);
}

int qs_gguf_check(const struct qs_gguf_file *f, qs_err *e)
{
    if (!f || !f->have_stat)
        return 0;
    char pb[256];
    if (!qs_file_id_same(f->path, &f->id))
        return qs_errf(e, "%s changed on disk since it was loaded; load it again",
                       qs_clean_str(f->path, pb, sizeof pb, 0));
    return 0;
}

const char *qs_gguf_path(const struct qs_gguf_file *f)
{
    return f ? f->path : NULL;
}

int qs_gguf_version(const struct qs_gguf_file *f)
{
    return f ? f->version : 0;
}

uint32_t qs_gguf_alignment(const struct qs_gguf_file *f)
{
    return f ? f->align : 0;
}

int qs_gguf_count(const struct qs_gguf_file *f)
{
    return f ? f->n : 0;
}

const struct qs_gguf_tensor *qs_gguf_get(const struct qs_gguf_file *f, int i)
{
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const struct qs_gguf_tensor *qs_gguf_find(const struct qs_gguf_file *f, const char *name)
{
    for (int i = 0; f && name && i < f->n; i++)
        if (!strcmp(f->t[i].name, name))
            return &f->t[i];
    return NULL;
}

int qs_gguf_kv_count(const struct qs_gguf_file *f)
{
    return f ? f->nkv : 0;
}

const char *qs_gguf_kv_key(const struct qs_gguf_file *f, int i)
{
    return f && i >= 0 && i < f->nkv ? f->kv[i].key : NULL;
}

int qs_gguf_kv_find(const struct qs_gguf_file *f, const char *key)
{
    for (int i = 0; f && key && i < f->nkv; i++)
        if (!strcmp(f->kv[i].key, key))
            return i;
    return -1;
}

int qs_gguf_kv_type(const struct qs_gguf_file *f, int i, int *arr_type, uint64_t *arr_n)
{
    if (!f || i < 0 || i >= f->nkv)
        return -1;
    if (arr_type)
        *arr_type = f->kv[i].arr_type;
    if (arr_n)
        *arr_n = f->kv[i].n;
    return f->kv[i].type;
}

static int wrong_type(const struct qs_gguf_file *f, const struct kv *k, const char *want, qs_err *e)
{
    char pb[256], kb[80];
    return qs_errf(e, "%s: key '%s' is a%s %s, not %s", qs_clean_str(f->path, pb, sizeof pb, 0),
                   qs_clean_str(k->key, kb, sizeof kb, 60),
                   k->type == QS_GGUF_U8 || k->type == QS_GGUF_I8 || k->type == QS_GGUF_U16 ||
                           k->type == QS_GGUF_I16 || k->type == QS_GGUF_U32 ||
                           k->type == QS_GGUF_I32 || k->type == QS_GGUF_F32 ||
                           k->type == QS_GGUF_U64 || k->type == QS_GGUF_I64 ||
                           k->type == QS_GGUF_F64 || k->type == QS_GGUF_ARRAY
                       ? "n"
                       : "",
                   vname[k->type], want);
}

int qs_gguf_get_int(const struct qs_gguf_file *f, const char *key, int64_t *out, qs_err *e)
{
    int i = qs_gguf_kv_find(f, key);
    if (i < 0)
        return 0;
    const struct kv *k = &f->kv[i];
    const uint8_t *v = k->v;
    switch (k->type) {
    case QS_GGUF_U8:
        *out = v[0];
        return 1;
    case QS_GGUF_I8:
        *out = (int8_t)v[0];
        return 1;
    case QS_GGUF_U16:
        *out = (int64_t)le(v, 2);
        return 1;
    case QS_GGUF_I16:
        *out = (int16_t)le(v, 2);
        return 1;
    case QS_GGUF_U32:
        *out = (int64_t)le(v, 4);
        return 1;
    case QS_GGUF_I32:
        *out = (int32_t)le(v, 4);
        return 1;
    case QS_GGUF_I64:
        *out = (int64_t)le(v, 8);
        return 1;
    case QS_GGUF_U64: {
        uint64_t u = le(v, 8);
        if (u > (uint64_t)INT64_MAX)
            return wrong_type(f, k, "an integer below 2^63", e);
        *out = (int64_t)u;
        return 1;
    }
    default:
        return wrong_type(f, k, "an integer", e);
    }
}

int qs_gguf_get_float(const struct qs_gguf_file *f, const char *key, double *out, qs_err *e)
{
    int i = qs_gguf_kv_find(f, key);
    if (i < 0)
        return 0;
    const struct kv *k = &f->kv[i];
    if (k->type == QS_GGUF_F32) {
        uint32_t u = (uint32_t)le(k->v, 4);
        float x;
        memcpy(&x, &u, 4);
        *out = x;
        return 1;
    }
    if (k->type == QS_GGUF_F64) {
        uint64_t u = le(k->v, 8);
        memcpy(out, &u, 8);
        return 1;
    }
    int64_t n;
    int rc = qs_gguf_get_int(f, key, &n, NULL);
    if (rc == 1) {
        *out = (double)n;
        return 1;
    }
    return wrong_type(f, k, "a number", e);
}

int qs_gguf_get_str(const struct qs_gguf_file *f, const char *key, const char **out, qs_err *e)
{
    int i = qs_gguf_kv_find(f, key);
    if (i < 0)
        return 0;
    if (f->kv[i].type != QS_GGUF_STRING)
        return wrong_type(f, &f->kv[i], "a string", e);
    *out = f->kv[i].str;
    return 1;
}

const char *qs_gguf_type_name(int type, char *buf, size_t n)
{
    const char *s = qs_ggml_type_name(type);
    if (s)
        return s;
    snprintf(buf, n, "type %d", type);
    return buf;
}

int qs_gguf_to_f32(const struct qs_gguf_tensor *t, float *out, qs_err *e)
{
    char tb[32], nb[80];
    if (!qs_ggml_can_decode(t->type))
        return qs_errf(e,
                       "tensor '%s' has ggml type %s, which qscope cannot decode yet (supported: "
                       "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, "
                       "q6_K; not yet: the IQ types, TQ1_0/TQ2_0, MXFP4, NVFP4, Q1_0/Q2_0, Q8_1, "
                       "Q8_K, integer and f64 tensors)",
                       qs_clean_str(t->name, nb, sizeof nb, 0),
                       qs_gguf_type_name(t->type, tb, sizeof tb));
    qs_ggml_dequantize(t->type, t->data, out, t->numel);
    return 0;
}

/* ---- writing ---------------------------------------------------------------------------- */

static void put_le(FILE *f, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        fputc((int)((v >> (8 * i)) & 0xff), f);
}

static void put_str(FILE *f, const char *s)
{
    size_t n = strlen(s);
    put_le(f, n, 8);
    fwrite(s, 1, n, f);
}

static void pad_to(FILE *f, uint64_t *pos, uint32_t align)
{
    while (*pos % align) {
        fputc(0, f);
        (*pos)++;
    }
}

int qs_gguf_write(const char *path, const struct qs_gguf_kv_out *kv, int nkv,
                  const struct qs_gguf_tensor_out *t, int nt, qs_err *e)
{
    const uint32_t align = 32;
    char pb[256];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    for (int i = 0; i < nkv; i++)
        if (!kv[i].key || !kv[i].key[0] ||
            (kv[i].type != QS_GGUF_U32 && kv[i].type != QS_GGUF_F32 &&
             (kv[i].type != QS_GGUF_STRING || !kv[i].str)))
            return qs_errf(e, "%s: key %d cannot be written", p, i);
    for (int i = 0; i < nt; i++) {
        size_t rb, nb;
        int64_t rows = 1;
        if (!t[i].name || !t[i].name[0] || strlen(t[i].name) > QS_GGUF_MAXNAME || t[i].ndim < 1 ||
            t[i].ndim > QS_GGUF_MAXDIM || !t[i].data)
            return qs_errf(e, "%s: tensor %d cannot be written (name or dims)", p, i);
        for (int d = 1; d < t[i].ndim; d++)
            rows *= t[i].ne[d];
        if (qs_ggml_row_bytes(t[i].type, t[i].ne[0], &rb, e) < 0 ||
            qs_size_mul(rb, (size_t)rows, &nb) < 0 || nb != t[i].nbytes)
            return qs_errf(e, "%s: tensor '%s': %zu bytes do not match its type and dims", p,
                           t[i].name, t[i].nbytes);
        for (int j = 0; j < i; j++)
            if (!strcmp(t[i].name, t[j].name))
                return qs_errf(e, "%s: duplicate tensor name '%s'", p, t[i].name);
    }
    qs_outfile o;
    if (qs_out_open(&o, path, e) < 0)
        return -1;
    FILE *f = o.f;
    uint64_t pos = 0;
    fwrite("GGUF", 1, 4, f);
    put_le(f, 3, 4);
    put_le(f, (uint64_t)nt, 8);
    put_le(f, (uint64_t)nkv, 8);
    pos = 24;
    for (int i = 0; i < nkv; i++) {
        put_str(f, kv[i].key);
        put_le(f, (uint64_t)kv[i].type, 4);
        pos += 8 + strlen(kv[i].key) + 4;
        if (kv[i].type == QS_GGUF_U32) {
            put_le(f, kv[i].u32, 4);
            pos += 4;
        } else if (kv[i].type == QS_GGUF_F32) {
            uint32_t u;
            memcpy(&u, &kv[i].f32, 4);
            put_le(f, u, 4);
            pos += 4;
        } else {
            put_str(f, kv[i].str);
            pos += 8 + strlen(kv[i].str);
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        put_str(f, t[i].name);
        put_le(f, (uint64_t)t[i].ndim, 4);
        for (int d = 0; d < t[i].ndim; d++)
            put_le(f, (uint64_t)t[i].ne[d], 8);
        put_le(f, (uint64_t)t[i].type, 4);
        put_le(f, off, 8);
        pos += 8 + strlen(t[i].name) + 4 + 8 * (uint64_t)t[i].ndim + 4 + 8;
        off += t[i].nbytes;
        off += (align - off % align) % align;
    }
    pad_to(f, &pos, align);
    uint64_t dpos = 0;
    for (int i = 0; i < nt; i++) {
        pad_to(f, &dpos, align);
        fwrite(t[i].data, 1, t[i].nbytes, f);
        dpos += t[i].nbytes;
    }
    return qs_out_commit(&o, e);
}
