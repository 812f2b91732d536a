/* mlp.c - MLP load/save, forward, loss, backward, Hessian-vector product and Adam training. */
#include "qscope/mlp.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qscope/packfile.h"
#include "qscope/safetensors.h"

static const char *const act_names[] = {
    [QS_ACT_NONE] = "none", [QS_ACT_RELU] = "relu",       [QS_ACT_GELU] = "gelu",
    [QS_ACT_TANH] = "tanh", [QS_ACT_SIGMOID] = "sigmoid",
};

const char *qs_act_name(enum qs_act a)
{
    return act_names[a];
}

int qs_act_parse(const char *s, enum qs_act *a, qs_err *e)
{
    for (int i = 0; i <= QS_ACT_SIGMOID; i++)
        if (!strcmp(s, act_names[i])) {
            *a = (enum qs_act)i;
            return 0;
        }
    return qs_errf(e, "unknown activation '%s' (expected relu, gelu, tanh, sigmoid or none)", s);
}

void qs_mlp_free(struct qs_mlp *m)
{
    if (!m)
        return;
    for (int i = 0; m->layers && i < m->nlayers; i++) {
        if (!m->layers[i].w_mapped)
            free(m->layers[i].w);
        if (!m->layers[i].b_mapped)
            free(m->layers[i].b);
    }
    qs_st_close(m->map);
    for (int i = 0; i < m->nmeta; i++) {
        free(m->meta_key[i]);
        free(m->meta_val[i]);
    }
    free(m->meta_key);
    free(m->meta_val);
    free(m->layers);
    free(m->path);
    free(m->scratch);
    free(m);
}

int qs_mlp_set_meta(struct qs_mlp *m, const char *key, const char *val)
{
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_key[i], key)) {
            char *v = qs_strdup(val);
            if (!v)
                return -1;
            free(m->meta_val[i]);
            m->meta_val[i] = v;
            return 0;
        }
    if (m->nmeta >= m->metacap) { /* grown, never cut: a file may carry any number of pairs */
        int cap = m->metacap ? 2 * m->metacap : 16;
        char **k = realloc(m->meta_key, (size_t)cap * sizeof *k);
        if (!k)
            return -1;
        m->meta_key = k;
        char **v = realloc(m->meta_val, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        m->meta_val = v;
        m->metacap = cap;
    }
    m->meta_key[m->nmeta] = qs_strdup(key);
    m->meta_val[m->nmeta] = qs_strdup(val);
    if (!m->meta_key[m->nmeta] || !m->meta_val[m->nmeta]) {
        free(m->meta_key[m->nmeta]);
        free(m->meta_val[m->nmeta]);
        return -1;
    }
    m->nmeta++;
    return 0;
}

const char *qs_mlp_get_meta(const struct qs_mlp *m, const char *key)
{
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_key[i], key))
            return m->meta_val[i];
    return NULL;
}

static struct qs_mlp *mlp_alloc(int nlayers)
{
    struct qs_mlp *m = qs_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->layers = qs_calloc((size_t)nlayers, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return NULL;
    }
    m->nlayers = nlayers;
    return m;
}

/* Reads tensor `t`, checked finite: a view into the mapping for aligned F32 data (*mapped = 1),
 * else a fresh F32 copy converted from its dtype. */
static float *read_f32(const char *path, const struct qs_st_tensor *t, int *mapped, qs_err *e)
{
    const float *view = qs_st_f32_view(t);
    char nb[96], what[360];
    qs_clean_str(t->name, nb, sizeof nb, 64);
    *mapped = view != NULL;
    snprintf(what, sizeof what, "%s: tensor '%s' as F32", path, nb);
    float *buf =
        view ? (float *)view : qs_alloc((size_t)(t->numel ? t->numel : 1), sizeof(float), what, e);
    if (!buf)
        return NULL;
    if (!view && qs_st_to_f32(t, buf, e) < 0) {
        free(buf);
        qs_err_prefix(e, path);
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(buf[i])) {
            char idx[64];
            if (t->ndim == 2)
                snprintf(idx, sizeof idx, "[%lld, %lld]", (long long)(i / t->shape[1]),
                         (long long)(i % t->shape[1]));
            else
                snprintf(idx, sizeof idx, "[%lld]", (long long)i);
            qs_errf(e, "%s: tensor '%s' has a non-finite value (%g) at %s", path, nb,
                    (double)buf[i], idx);
            if (!view)
                free(buf);
            return NULL;
        }
    return buf;
}

/* Fills layer l from tensors "<prefix>.weight" and optional "<prefix>.bias". Messages name the
 * file once (callers do not prefix them again) and print names from the file cleaned. */
static int load_layer(const struct qs_st_file *f, const char *path, const char *prefix,
                      struct qs_layer *l, qs_err *e)
{
    char nb[96];
    qs_clean_str(prefix, nb, sizeof nb, 64);
    if (strlen(prefix) >= sizeof l->name)
        return qs_errf(e, "%s: layer name '%s' is longer than %zu characters", path, nb,
                       sizeof l->name - 1);
    if (strcmp(nb, prefix) != 0) /* the name is shown in every table: no terminal escapes */
        return qs_errf(e, "%s: layer name '%s' contains control characters", path, nb);
    int packed = qs_packfile_layer(f, path, prefix, l, e); /* `export model … packed` files */
    if (packed <= 0)
        return packed;
    size_t kl = strlen(prefix) + 8;
    char *key = malloc(kl);
    if (!key)
        return qs_errf(e, "%s: out of memory", path);
    snprintf(key, kl, "%s.weight", prefix);
    const struct qs_st_tensor *w = qs_st_find(f, key);
    int rc = -1;
    if (!w) {
        qs_errf(e, "%s: layer '%s' has no tensor '%s.weight'", path, nb, nb);
        goto out;
    }
    if (w->ndim != 2 || w->shape[0] <= 0 || w->shape[1] <= 0) {
        qs_errf(e, "%s: tensor '%s.weight' must be a non-empty 2-D (out, in) matrix", path, nb);
        goto out;
    }
    /* in * out is an int in the analyses and quantizers */
    if (w->shape[0] > (1 << 24) || w->shape[1] > (1 << 24) ||
        w->shape[0] * w->shape[1] > INT32_MAX) {
        qs_errf(e, "%s: tensor '%s.weight' is too large", path, nb);
        goto out;
    }
    snprintf(l->name, sizeof l->name, "%s", prefix);
    l->out = (int)w->shape[0];
    l->in = (int)w->shape[1];
    if (!(l->w = read_f32(path, w, &l->w_mapped, e)))
        goto out;
    snprintf(key, kl, "%s.bias", prefix);
    const struct qs_st_tensor *b = qs_st_find(f, key);
    if (b) {
        if (b->ndim != 1 || b->shape[0] != l->out) {
            char sh[96] = "";
            size_t k = 0;
            for (int i = 0; i < b->ndim && k + 24 < sizeof sh; i++)
                k += (size_t)snprintf(sh + k, sizeof sh - k, "%s%lld", i ? "," : "",
                                      (long long)b->shape[i]);
            qs_errf(e, "%s: tensor '%s.bias' has shape [%s], expected [%d] (the layer's outputs)",
                    path, nb, sh, l->out);
            goto out;
        }
        if (!(l->b = read_f32(path, b, &l->b_mapped, e)))
            goto out;
        l->has_bias = 1;
    } else {
        l->b = qs_calloc((size_t)l->out, sizeof(float));
        if (!l->b) {
            qs_errf(e, "%s: out of memory", path);
            goto out;
        }
    }
    rc = 0;
out:
    free(key);
    return rc;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Splits a comma list in place into a new array of its items (*items, free it); the count, or
 * -1 when out of memory. No limit: a model may have any number of layers. */
static int split_commas(char *s, char ***items)
{
    int n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    *items = qs_calloc((size_t)n + 1, sizeof **items);
    if (!*items)
        return -1;
    int k = 0;
    char *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok && k < n; tok = strtok_r(NULL, ",", &save))
        (*items)[k++] = tok;
    return k;
}

static int load_from_meta(const struct qs_st_file *f, const char *path, struct qs_mlp **out,
                          qs_err *e)
{
    const char *ls = qs_st_meta(f, "qscope.layers"), *as = qs_st_meta(f, "qscope.acts");
    if (!ls || !as)
        return qs_errf(e, "%s: qscope metadata lacks qscope.layers or qscope.acts", path);
    char *lbuf = qs_strdup(ls), *abuf = qs_strdup(as), **names = NULL, **acts = NULL;
    struct qs_mlp *m = NULL;
    int rc = -1, n = -1, na = -1;
    if (!lbuf || !abuf || (n = split_commas(lbuf, &names)) < 0 ||
        (na = split_commas(abuf, &acts)) < 0) {
        qs_errf(e, "%s: out of memory", path);
        goto out;
    }
    if (n == 0 || n != na) {
        qs_errf(e, "%s: qscope.layers names %d layers but qscope.acts has %d", path, n, na);
        goto out;
    }
    if (!(m = mlp_alloc(n))) {
        qs_errf(e, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if (load_layer(f, path, names[i], &m->layers[i], e) < 0)
            goto out;
        for (int j = 0; j < i; j++)
            if (!strcmp(m->layers[j].name, m->layers[i].name)) {
                char nb[96];
                qs_errf(e, "%s: qscope.layers names layer '%s' twice", path,
                        qs_clean_str(names[i], nb, sizeof nb, 64));
                goto out;
            }
        if (qs_act_parse(acts[i], &m->layers[i].act, e) < 0) {
            char ab[96];
            qs_errf(e, "%s: layer %d: unknown activation '%s'", path, i,
                    qs_clean_str(acts[i], ab, sizeof ab, 64));
            goto out;
        }
    }
    *out = m;
    m = NULL;
    rc = 0;
out:
    qs_mlp_free(m);
    free(names);
    free(acts);
    free(lbuf);
    free(abuf);
    return rc;
}

static int load_sequential(const struct qs_st_file *f, const char *path, enum qs_act act,
                           struct qs_mlp **out, qs_err *e)
{
    int n = 0, *idx = qs_calloc((size_t)qs_st_count(f) + 1, sizeof *idx);
    if (!idx)
        return qs_errf(e, "%s: out of memory", path);
    for (int i = 0; i < qs_st_count(f); i++) {
        const char *name = qs_st_get(f, i)->name;
        char *end;
        long k = strtol(name, &end, 10);
        char nb[96];
        if (end == name || strcmp(end, ".weight") != 0) {
            if (end != name && !strcmp(end, ".bias"))
                continue;
            free(idx);
            return qs_errf(e,
                           "%s: tensor '%s' is not part of an nn.Sequential state dict "
                           "(expected N.weight / N.bias) and the file has no qscope metadata",
                           path, qs_clean_str(name, nb, sizeof nb, 64));
        }
        if (k < 0 || k > 100000) {
            free(idx);
            return qs_errf(e, "%s: bad layer index in '%s' (expected 0 to 100000)", path,
                           qs_clean_str(name, nb, sizeof nb, 64));
        }
        idx[n++] = (int)k;
    }
    if (n == 0) {
        free(idx);
        return qs_errf(e, "%s: no N.weight tensors found: not an MLP state dict", path);
    }
    qsort(idx, (size_t)n, sizeof *idx, cmp_int);
    struct qs_mlp *m = mlp_alloc(n);
    if (!m) {
        free(idx);
        return qs_errf(e, "%s: out of memory", path);
    }
    m->from_sequential = 1;
    for (int i = 0; i < n; i++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "%d", idx[i]);
        if (load_layer(f, path, prefix, &m->layers[i], e) < 0)
            goto fail;
        m->layers[i].act = i + 1 < n ? act : QS_ACT_NONE;
        if (i > 0 && m->layers[i].in != m->layers[i - 1].out) {
            qs_errf(e,
                    "%s: shapes do not chain: '%d.weight' takes %d inputs but '%d.weight' "
                    "gives %d outputs",
                    path, idx[i], m->layers[i].in, idx[i - 1], m->layers[i - 1].out);
            goto fail;
        }
    }
    free(idx);
    *out = m;
    return 0;
fail:
    free(idx);
    qs_mlp_free(m);
    return -1;
}

int qs_mlp_load(const char *path, enum qs_act act, int act_given, struct qs_mlp **out, qs_err *e)
{
    struct qs_st_file *f;
    *out = NULL;
    if (qs_st_open(path, &f, e) < 0)
        return -1;
    struct qs_mlp *m = NULL;
    const char *arch = qs_st_meta(f, "qscope.arch");
    int rc;
    if (arch) {
        if (strcmp(arch, "mlp") != 0) {
            char ab[96];
            rc = qs_errf(e, "%s: qscope.arch is '%s', not an MLP", path,
                         qs_clean_str(arch, ab, sizeof ab, 64));
        } else {
            rc = load_from_meta(f, path, &m, e);
            if (rc == 0 && act_given)
                for (int i = 0; i + 1 < m->nlayers; i++)
                    m->layers[i].act = act;
            for (int i = 1; rc == 0 && i < m->nlayers; i++)
                if (m->layers[i].in != m->layers[i - 1].out) {
                    char a[96], b[96];
                    rc = qs_errf(e, "%s: layer '%s' takes %d inputs but '%s' gives %d", path,
                                 qs_clean_str(m->layers[i].name, a, sizeof a, 64), m->layers[i].in,
                                 qs_clean_str(m->layers[i - 1].name, b, sizeof b, 64),
                                 m->layers[i - 1].out);
                }
        }
    } else {
        rc = load_sequential(f, path, act, &m, e);
    }
    if (rc == 0) {
        for (int i = 0; i < qs_st_meta_count(f); i++) {
            const char *k = qs_st_meta_key(f, i);
            if (strncmp(k, "qscope.arch", 11) && strcmp(k, "qscope.layers") &&
                strcmp(k, "qscope.acts") && qs_mlp_set_meta(m, k, qs_st_meta(f, k)) < 0) {
                rc = qs_errf(e, "%s: out of memory for the metadata", path);
                break;
            }
        }
    }
    if (rc == 0) {
        m->path = qs_strdup(path);
        m->map = f; /* mapped weights point into it; closed by qs_mlp_free */
        *out = m;
        return 0;
    }
    if (m)
        m->map = f;
    else
        qs_st_close(f);
    qs_mlp_free(m);
    return rc;
}

int qs_mlp_new(const int *sizes, int nsizes, enum qs_act act, qs_rng *rng, struct qs_mlp **out,
               qs_err *e)
{
    if (nsizes < 2)
        return qs_errf(e, "an MLP needs at least an input and an output size");
    for (int i = 0; i < nsizes; i++)
        if (sizes[i] <= 0 || sizes[i] > (1 << 20))
            return qs_errf(e, "layer size %d is out of range", sizes[i]);
    /* the whole model's weights, checked before any of it is allocated: 65536 x 65536 is
     * 17 GB, and in * out overflows an int long before that */
    size_t total = 0, nw;
    for (int i = 0; i + 1 < nsizes; i++)
        if (qs_size_mul((size_t)sizes[i] + 1, (size_t)sizes[i + 1], &nw) < 0 ||
            qs_size_add(total, nw, &total) < 0 || total > (size_t)INT32_MAX)
            return qs_errf(e,
                           "layer sizes %d x %d give a weight matrix too large for qscope "
                           "(at most 2^31 parameters)",
                           sizes[i], sizes[i + 1]);
    if (qs_mem_check(total * sizeof(float), "the new model's weights", e) < 0)
        return -1;
    struct qs_mlp *m = mlp_alloc(nsizes - 1);
    if (!m)
        return qs_errf(e, "out of memory");
    for (int i = 0; i < m->nlayers; i++) {
        struct qs_layer *l = &m->layers[i];
        snprintf(l->name, sizeof l->name, "fc%d", i);
        l->in = sizes[i];
        l->out = sizes[i + 1];
        l->act = i + 1 < m->nlayers ? act : QS_ACT_NONE;
        l->has_bias = 1;
        size_t n = (size_t)l->in * (size_t)l->out;
        l->w = malloc(n * sizeof(float));
        l->b = qs_calloc((size_t)l->out, sizeof(float));
        if (!l->w || !l->b) {
            qs_mlp_free(m);
            return qs_errf(e, "out of memory");
        }
        /* He-uniform for ReLU-family hidden layers, Xavier-uniform otherwise. */
        double gain = (l->act == QS_ACT_RELU || l->act == QS_ACT_GELU) ? 6.0 : 3.0;
        double lim = sqrt(gain / l->in);
        for (size_t j = 0; j < n; j++)
            l->w[j] = (float)((2.0 * qs_rng_uniform(rng) - 1.0) * lim);
    }
    *out = m;
    return 0;
}

struct qs_mlp *qs_mlp_clone(const struct qs_mlp *src)
{
    struct qs_mlp *m = mlp_alloc(src->nlayers);
    if (!m)
        return NULL;
    m->scratch = NULL;
    m->scratch_len = 0;
    m->from_sequential = src->from_sequential;
    m->path = qs_strdup(src->path);
    for (int i = 0; i < src->nlayers; i++) {
        const struct qs_layer *s = &src->layers[i];
        struct qs_layer *l = &m->layers[i];
        *l = *s;
        l->w_mapped = l->b_mapped = 0;
        l->w = malloc((size_t)s->in * s->out * sizeof(float));
        l->b = malloc((size_t)s->out * sizeof(float));
        if (!l->w || !l->b) {
            qs_mlp_free(m);
            return NULL;
        }
        memcpy(l->w, s->w, (size_t)s->in * s->out * sizeof(float));
        memcpy(l->b, s->b, (size_t)s->out * sizeof(float));
    }
    for (int i = 0; i < src->nmeta; i++)
        if (qs_mlp_set_meta(m, src->meta_key[i], src->meta_val[i]) < 0) {
            qs_mlp_free(m);
            return NULL;
        }
    return m;
}

int qs_mlp_save(const struct qs_mlp *m, const char *path, qs_err *e)
{
    struct qs_st_out *t = qs_calloc((size_t)m->nlayers * 2, sizeof *t);
    char(*names)[80] = qs_calloc((size_t)m->nlayers * 2, sizeof *names);
    const char **keys = qs_calloc((size_t)m->nmeta + 3, sizeof *keys);
    const char **vals = qs_calloc((size_t)m->nmeta + 3, sizeof *vals);
    /* the comma lists: every name and act in full (names are < 64 characters, acts < 8) */
    size_t cap = (size_t)m->nlayers * (sizeof m->layers[0].name + 1) + 1;
    char *layers = qs_calloc(cap, 1), *acts = qs_calloc((size_t)m->nlayers * 9 + 1, 1);
    int rc = -1;
    if (!t || !names || !keys || !vals || !layers || !acts) {
        qs_errf(e, "out of memory");
        goto out;
    }
    int nt = 0;
    size_t ll = 0, al = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *l = &m->layers[i];
        snprintf(names[nt], sizeof names[nt], "%s.weight", l->name);
        t[nt] = (struct qs_st_out){.name = names[nt],
                                   .dtype = QS_DT_F32,
                                   .ndim = 2,
                                   .shape = {l->out, l->in},
                                   .data = l->w};
        nt++;
        snprintf(names[nt], sizeof names[nt], "%s.bias", l->name);
        t[nt] = (struct qs_st_out){
            .name = names[nt], .dtype = QS_DT_F32, .ndim = 1, .shape = {l->out}, .data = l->b};
        nt++;
        ll += (size_t)snprintf(layers + ll, cap - ll, "%s%s", i ? "," : "", l->name);
        al += (size_t)snprintf(acts + al, (size_t)m->nlayers * 9 + 1 - al, "%s%s", i ? "," : "",
                               qs_act_name(l->act));
    }
    int nm = 0;
    keys[nm] = "qscope.arch";
    vals[nm++] = "mlp";
    keys[nm] = "qscope.layers";
    vals[nm++] = layers;
    keys[nm] = "qscope.acts";
    vals[nm++] = acts;
    for (int i = 0; i < m->nmeta; i++) {
        keys[nm] = m->meta_key[i];
        vals[nm++] = m->meta_val[i];
    }
    rc = qs_st_write(path, t, nt, keys, vals, nm, e);
out:
    free(t);
    free(names);
    free(keys);
    free(vals);
    free(layers);
    free(acts);
    return rc;
}

long qs_mlp_nparams(const struct qs_mlp *m)
{
    long n = 0;
    for (int i = 0; i < m->nlayers; i++)
        n += (long)m->layers[i].in * m->layers[i].out + m->layers[i].out;
    return n;
}

int qs_mlp_max_width(const struct qs_mlp *m)
{
    int w = m->layers[0].in;
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i].out > w)
            w = m->layers[i].out;
    return w;
}

void qs_linear(const float *x, int n, int in, const float *w, const float *b, int out, float *y)
{
    if (b)
        for (int r = 0; r < n; r++)
            memcpy(y + (size_t)r * out, b, (size_t)out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in,
                b ? 1.0f : 0.0f, y, out);
}

void qs_act_apply(enum qs_act a, float *x, size_t len)
{
    switch (a) {
    case QS_ACT_NONE:
        break;
    case QS_ACT_RELU: /* branch-free, so it vectorizes to maxps (NaN stays NaN) */
        for (size_t i = 0; i < len; i++) {
            float v = x[i];
            x[i] = 0.0f > v ? 0.0f : v;
        }
        break;
    case QS_ACT_GELU: /* exact (erf) GELU, as torch.nn.GELU() */
        for (size_t i = 0; i < len; i++)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case QS_ACT_TANH:
        for (size_t i = 0; i < len; i++)
            x[i] = tanhf(x[i]);
        break;
    case QS_ACT_SIGMOID:
        for (size_t i = 0; i < len; i++)
            x[i] = 1.0f / (1.0f + expf(-x[i]));
        break;
    }
}

/* d act / d y given the pre-activation y, multiplied into g in place. */
static void act_backward(enum qs_act a, const float *y, float *g, size_t len)
{
    switch (a) {
    case QS_ACT_NONE:
        break;
    case QS_ACT_RELU:
        for (size_t i = 0; i < len; i++)
            g[i] = y[i] > 0.0f ? g[i] : 0.0f;
        break;
    case QS_ACT_GELU:
        for (size_t i = 0; i < len; i++) {
            float cdf = 0.5f * (1.0f + erff(y[i] * 0.70710678118654752f));
            float pdf = 0.39894228040143268f * expf(-0.5f * y[i] * y[i]);
            g[i] *= cdf + y[i] * pdf;
        }
        break;
    case QS_ACT_TANH:
        for (size_t i = 0; i < len; i++) {
            float t = tanhf(y[i]);
            g[i] *= 1.0f - t * t;
        }
        break;
    case QS_ACT_SIGMOID:
        for (size_t i = 0; i < len; i++) {
            float s = 1.0f / (1.0f + expf(-y[i]));
            g[i] *= s * (1.0f - s);
        }
        break;
    }
}

int qs_mlp_forward(const struct qs_mlp *cm, const float *x, int n, float *logits, qs_err *e)
{
    struct qs_mlp *m = (struct qs_mlp *)cm; /* only the scratch buffer is written */
    int width = qs_mlp_max_width(m);
    size_t need = 2 * (size_t)n * width;
    if (m->scratch_len < need) {
        float *s = realloc(m->scratch, need * sizeof(float));
        if (!s)
            return qs_errf(e, "out of memory for a batch of %d", n);
        m->scratch = s;
        m->scratch_len = need;
    }
    float *a = m->scratch, *b = m->scratch + (size_t)n * width;
    const float *in = x;
    for (int i = 0; i < m->nlayers; i++) {
        const struct qs_layer *l = &m->layers[i];
        float *y = i + 1 == m->nlayers ? logits : (in == a ? b : a);
        qs_linear(in, n, l->in, l->w, l->b, l->out, y);
        qs_act_apply(l->act, y, (size_t)n * l->out);
        in = y;
    }
    return 0;
}

double qs_xent(const float *logits, const int *y, int n, int c, int *ncorrect, float *dlogits)
{
    double loss = 0.0;
    int correct = 0;
    for (int r = 0; r < n; r++) {
        const float *z = logits + (size_t)r * c;
        int arg = 0;
        float mx = z[0];
        for (int j = 1; j < c; j++)
            if (z[j] > mx) {
                mx = z[j];
                arg = j;
            }
        double s = 0.0;
        for (int j = 0; j < c; j++)
            s += exp((double)z[j] - mx);
        double lse = mx + log(s);
        loss += lse - z[y[r]];
        correct += arg == y[r];
        if (dlogits)
            for (int j = 0; j < c; j++)
                dlogits[(size_t)r * c + j] = (float)((exp((double)z[j] - lse) - (j == y[r])) / n);
    }
    if (ncorrect)
        *ncorrect = correct;
    return n ? loss / n : 0.0;
}

double qs_kl_rows(const float *lf, const float *lq, int n, int c, int *agree)
{
    double kl = 0.0;
    int ag = 0;
    for (int r = 0; r < n; r++) {
        const float *f = lf + (size_t)r * c, *q = lq + (size_t)r * c;
        double mf = f[0], mq = q[0];
        int af = 0, aq = 0;
        for (int j = 1; j < c; j++) {
            if (f[j] > mf) {
                mf = f[j];
                af = j;
            }
            if (q[j] > mq) {
                mq = q[j];
                aq = j;
            }
        }
        double sf = 0, sq = 0;
        for (int j = 0; j < c; j++) {
            sf += exp(f[j] - mf);
            sq += exp(q[j] - mq);
        }
        double lsf = mf + log(sf), lsq = mq + log(sq), k = 0.0;
        for (int j = 0; j < c; j++) {
            double lpf = f[j] - lsf, lpq = q[j] - lsq;
            k += exp(lpf) * (lpf - lpq);
        }
        kl += k > 0 ? k : 0.0;
        ag += af == aq;
    }
    if (agree)
        *agree = ag;
    return n ? kl / n : 0.0;
}

double qs_mlp_loss_grad(const struct qs_mlp *m, const float *x, const int *y, int n, float **gw,
                        float **gb, int *ncorrect)
{
    int L = m->nlayers;
    /* pre[i]: pre-activation of layer i (n, out_i); post[i]: its activation output. */
    float **pre = qs_calloc((size_t)L, sizeof *pre), **post = qs_calloc((size_t)L, sizeof *post);
    int width = qs_mlp_max_width(m);
    float *g = malloc((size_t)n * width * sizeof(float));
    float *g2 = malloc((size_t)n * width * sizeof(float));
    double loss = -1.0;
    if (!pre || !post || !g || !g2)
        goto out;
    for (int i = 0; i < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        pre[i] = malloc((size_t)n * l->out * sizeof(float));
        post[i] = malloc((size_t)n * l->out * sizeof(float));
        if (!pre[i] || !post[i])
            goto out;
        qs_linear(i ? post[i - 1] : x, n, l->in, l->w, l->b, l->out, pre[i]);
        memcpy(post[i], pre[i], (size_t)n * l->out * sizeof(float));
        qs_act_apply(l->act, post[i], (size_t)n * l->out);
    }
    const struct qs_layer *last = &m->layers[L - 1];
    /* dL/dlogits; the last layer's activation (if any) is folded in by act_backward. */
    loss = qs_xent(post[L - 1], y, n, last->out, ncorrect, g);
    for (int i = L - 1; i >= 0; i--) {
        const struct qs_layer *l = &m->layers[i];
        act_backward(l->act, pre[i], g, (size_t)n * l->out); /* g: dL/dpre_i (n, out) */
        const float *xin = i ? post[i - 1] : x;
        /* gw = g^T xin: (out, n)(n, in) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l->out, l->in, n, 1.0f, g, l->out, xin,
                    l->in, 0.0f, gw[i], l->in);
        for (int j = 0; j < l->out; j++) {
            double s = 0.0;
            for (int r = 0; r < n; r++)
                s += g[(size_t)r * l->out + j];
            gb[i][j] = (float)s;
        }
        if (i > 0) { /* g2 = g W: (n, out)(out, in) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, l->in, l->out, 1.0f, g,
                        l->out, l->w, l->in, 0.0f, g2, l->in);
            float *t = g;
            g = g2;
            g2 = t;
        }
    }
out:
    for (int i = 0; pre && post && i < L; i++) {
        free(pre[i]);
        free(post[i]);
    }
    free(pre);
    free(post);
    free(g);
    free(g2);
    return loss;
}

/* act'(y) and act''(y) at the pre-activation y. ReLU and none are piecewise linear: act'' = 0
 * (almost everywhere), and ReLU's act' is the same mask as act_backward's (y > 0). */
static inline void act_d12(enum qs_act a, float y, float *d1, float *d2)
{
    switch (a) {
    case QS_ACT_NONE:
        *d1 = 1.0f;
        *d2 = 0.0f;
        return;
    case QS_ACT_RELU:
        *d1 = y > 0.0f ? 1.0f : 0.0f;
        *d2 = 0.0f;
        return;
    case QS_ACT_GELU: { /* act = y Phi(y): act' = Phi + y phi, act'' = phi (2 - y^2) */
        float cdf = 0.5f * (1.0f + erff(y * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * y * y);
        *d1 = cdf + y * pdf;
        *d2 = pdf * (2.0f - y * y);
        return;
    }
    case QS_ACT_TANH: { /* act' = 1 - t^2, act'' = -2 t (1 - t^2) */
        float t = tanhf(y);
        *d1 = 1.0f - t * t;
        *d2 = -2.0f * t * *d1;
        return;
    }
    case QS_ACT_SIGMOID: { /* act' = s (1 - s), act'' = s (1 - s) (1 - 2 s) */
        float s = 1.0f / (1.0f + expf(-y));
        *d1 = s * (1.0f - s);
        *d2 = *d1 * (1.0f - 2.0f * s);
        return;
    }
    }
    *d1 = 1.0f;
    *d2 = 0.0f;
}

/* The R-operator, R{f} = d/dr f(W + r V) at r = 0, pushed through the forward pass and then
 * through qs_mlp_loss_grad's backward pass. Notation per layer i (W_i: (out, in), V_i its
 * direction, a_{i-1}: (n, in) its input, z_i: (n, out) its pre-activation, a_i = act(z_i)):
 *   forward   R{z_i} = R{a_{i-1}} W_i^T + a_{i-1} V_i^T,     R{a_i} = act'(z_i) (.) R{z_i}
 *   loss      g = dL/dlogits = (p - onehot) / n,  R{g} = (diag p - p p^T) R{logits} / n per row
 *   backward  d_i = act'(z_i) (.) g_i  (g_i = dL/da_i),
 *             R{d_i} = act'(z_i) (.) R{g_i} + act''(z_i) (.) R{z_i} (.) g_i
 *             (H V)_i = R{dL/dW_i} = R{d_i}^T a_{i-1} + d_i^T R{a_{i-1}}
 *             g_{i-1} = d_i W_i,  R{g_{i-1}} = R{d_i} W_i + d_i V_i
 * R{.} is zero below the first layer with a direction; the backward stops at the lowest layer
 * whose block is wanted. */
int qs_mlp_hvp(const struct qs_mlp *m, const float *x, const int *y, int n, const float *const *v,
               float **hv, qs_err *e)
{
    int L = m->nlayers, width = qs_mlp_max_width(m), c = m->layers[L - 1].out;
    int first = L, lo = L; /* first layer with a direction; lowest layer wanted */
    for (int i = L - 1; i >= 0; i--) {
        if (v[i])
            first = i;
        if (hv[i])
            lo = i;
    }
    if (n < 1)
        return qs_errf(e, "Hessian-vector product: no samples");
    /* One block: pre, post, rz, ra (n, out_i) per layer; g, g2, rg, rg2 (n, width). */
    size_t per = 0, tot;
    for (int i = 0; i < L; i++)
        per += (size_t)m->layers[i].out;
    if (qs_size_mul(per, 4, &tot) < 0 || qs_size_add(tot, 4 * (size_t)width, &tot) < 0 ||
        qs_size_mul(tot, (size_t)n, &tot) < 0)
        return qs_errf(e, "Hessian-vector product: a batch of %d overflows", n);
    float *buf = qs_alloc(tot, sizeof(float), "the Hessian-vector product", e);
    if (!buf)
        return -1;
    float **pre = qs_calloc((size_t)L * 4, sizeof *pre);
    if (!pre) {
        free(buf);
        return qs_errf(e, "Hessian-vector product: out of memory");
    }
    float **post = pre + L, **rz = pre + 2 * L, **ra = pre + 3 * L;
    float *p = buf;
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < L; i++) {
            pre[k * L + i] = p;
            p += (size_t)n * m->layers[i].out;
        }
    float *g = p, *g2 = g + (size_t)n * width, *rg = g2 + (size_t)n * width,
          *rg2 = rg + (size_t)n * width;

    for (int i = 0; i < L; i++) {
        const struct qs_layer *l = &m->layers[i];
        const float *ain = i ? post[i - 1] : x;
        size_t len = (size_t)n * l->out;
        qs_linear(ain, n, l->in, l->w, l->b, l->out, pre[i]);
        memcpy(post[i], pre[i], len * sizeof(float));
        qs_act_apply(l->act, post[i], len);
        if (i < first)
            continue;
        /* rz = R{a_{i-1}} W^T + a_{i-1} V^T: (n, in)(in, out) each */
        float beta = 0.0f;
        if (i > first) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, l->out, l->in, 1.0f, ra[i - 1],
                        l->in, l->w, l->in, 0.0f, rz[i], l->out);
            beta = 1.0f;
        }
        if (v[i])
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, l->out, l->in, 1.0f, ain, l->in,
                        v[i], l->in, beta, rz[i], l->out);
        for (size_t j = 0; j < len; j++) {
            float d1, d2;
            act_d12(l->act, pre[i][j], &d1, &d2);
            ra[i][j] = d1 * rz[i][j];
        }
    }
    /* g = dL/dlogits, R{g} = (diag p - p p^T) R{logits} / n (the softmax cross-entropy's
     * Hessian in the logits), p the softmax of the row. */
    qs_xent(post[L - 1], y, n, c, NULL, g);
    for (int r = 0; r < n; r++) {
        const float *z = post[L - 1] + (size_t)r * c;
        float *rgr = rg + (size_t)r * c;
        if (first == L) {
            memset(rgr, 0, (size_t)c * sizeof(float));
            continue;
        }
        const float *u = ra[L - 1] + (size_t)r * c;
        double mx = z[0], s = 0.0, pu = 0.0;
        for (int j = 1; j < c; j++)
            mx = z[j] > mx ? z[j] : mx;
        for (int j = 0; j < c; j++)
            s += exp((double)z[j] - mx);
        for (int j = 0; j < c; j++)
            pu += exp((double)z[j] - mx) / s * u[j];
        for (int j = 0; j < c; j++)
            rgr[j] = (float)(exp((double)z[j] - mx) / s * (u[j] - pu) / n);
    }
    for (int i = L - 1; i >= lo; i--) {
        const struct qs_layer *l = &m->layers[i];
        size_t len = (size_t)n * l->out;
        /* g -> d_i = act' g, rg -> R{d_i} = act' R{g} + act'' R{z} g (rz is 0 below first) */
        for (size_t j = 0; j < len; j++) {
            float d1, d2;
            act_d12(l->act, pre[i][j], &d1, &d2);
            rg[j] = d1 * rg[j] + (i >= first && d2 != 0.0f ? d2 * rz[i][j] * g[j] : 0.0f);
            g[j] *= d1;
        }
        const float *ain = i ? post[i - 1] : x;
        if (hv[i]) { /* R{d}^T a_{i-1} + d^T R{a_{i-1}}: (out, n)(n, in) each */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l->out, l->in, n, 1.0f, rg, l->out,
                        ain, l->in, 0.0f, hv[i], l->in);
            if (i - 1 >= first)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l->out, l->in, n, 1.0f, g,
                            l->out, ra[i - 1], l->in, 1.0f, hv[i], l->in);
        }
        if (i > lo) { /* g2 = d W, rg2 = R{d} W + d V: (n, out)(out, in) each */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, l->in, l->out, 1.0f, g,
                        l->out, l->w, l->in, 0.0f, g2, l->in);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, l->in, l->out, 1.0f, rg,
                        l->out, l->w, l->in, 0.0f, rg2, l->in);
            if (v[i])
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, l->in, l->out, 1.0f, g,
                            l->out, v[i], l->in, 1.0f, rg2, l->in);
            float *t = g;
            g = g2;
            g2 = t;
            t = rg;
            rg = rg2;
            rg2 = t;
        }
    }
    free(buf);
    free(pre);
    return 0;
}

int qs_mlp_train(struct qs_mlp *m, const float *x, const int *y, int n,
                 const struct qs_train_opts *o, qs_train_cb cb, void *ctx, qs_err *e)
{
    int L = m->nlayers, in0 = m->layers[0].in, bs = o->batch < n ? o->batch : n;
    if (n <= 0 || bs <= 0 || o->epochs <= 0)
        return qs_errf(e, "train: need samples, a positive batch size and epochs");
    /* per-parameter-tensor state: gradient, Adam first and second moments; tensor 2i is layer
     * i's weight, 2i+1 its bias */
    int T = 2 * L;
    float **g = qs_calloc((size_t)T, sizeof *g), **mo = qs_calloc((size_t)T, sizeof *mo);
    float **ve = qs_calloc((size_t)T, sizeof *ve);
    int *perm = malloc((size_t)n * sizeof *perm), *yb = malloc((size_t)bs * sizeof *yb);
    float *xb = malloc((size_t)bs * in0 * sizeof *xb);
    struct qs_mlp *fwd = o->fwd ? qs_mlp_clone(m) : m;
    int rc = -1;
    if (!g || !mo || !ve || !perm || !yb || !xb || !fwd)
        goto oom;
    for (int t = 0; t < T; t++) {
        const struct qs_layer *l = &m->layers[t / 2];
        size_t len = t % 2 ? (size_t)l->out : (size_t)l->in * l->out;
        if (!(g[t] = malloc(len * sizeof(float))) || !(mo[t] = qs_calloc(len, sizeof(float))) ||
            !(ve[t] = qs_calloc(len, sizeof(float))))
            goto oom;
    }
    float **gw = qs_calloc((size_t)L, sizeof *gw), **gb = qs_calloc((size_t)L, sizeof *gb);
    if (!gw || !gb) {
        free(gw);
        free(gb);
        goto oom;
    }
    for (int i = 0; i < L; i++) {
        gw[i] = g[2 * i];
        gb[i] = g[2 * i + 1];
    }
    for (int i = 0; i < n; i++)
        perm[i] = i;
    qs_rng rng;
    qs_rng_seed(&rng, o->seed);
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    long step = 0;
    for (int ep = 0; ep < o->epochs; ep++) {
        qs_rng_shuffle(&rng, perm, n);
        double tl = 0.0;
        int tc = 0;
        for (int s = 0; s + bs <= n; s += bs) { /* drop the ragged last batch */
            for (int r = 0; r < bs; r++) {
                memcpy(xb + (size_t)r * in0, x + (size_t)perm[s + r] * in0,
                       (size_t)in0 * sizeof(float));
                yb[r] = y[perm[s + r]];
            }
            if (o->fwd && o->fwd(o->fwd_ctx, m, fwd, e) < 0)
                goto fail;
            int nc = 0;
            double loss = qs_mlp_loss_grad(fwd, xb, yb, bs, gw, gb, &nc);
            if (loss < 0) {
                free(gw);
                free(gb);
                goto oom;
            }
            tl += loss * bs;
            tc += nc;
            if (o->grad)
                o->grad(o->fwd_ctx, m, gw);
            step++;
            double c1 = 1.0 - pow(b1, (double)step), c2 = 1.0 - pow(b2, (double)step);
            for (int t = 0; t < T; t++) {
                struct qs_layer *l = &m->layers[t / 2];
                float *p = t % 2 ? l->b : l->w;
                double wd = t % 2 ? 0.0 : o->weight_decay; /* no decay on biases */
                size_t len = t % 2 ? (size_t)l->out : (size_t)l->in * l->out;
                for (size_t j = 0; j < len; j++) {
                    float gj = g[t][j];
                    mo[t][j] = (float)(b1 * mo[t][j] + (1 - b1) * gj);
                    ve[t][j] = (float)(b2 * ve[t][j] + (1 - b2) * gj * gj);
                    p[j] -= (float)(o->lr *
                                    ((mo[t][j] / c1) / (sqrt(ve[t][j] / c2) + eps) + wd * p[j]));
                }
            }
            if (o->step)
                o->step(o->fwd_ctx, m, step);
        }
        int seen = (n / bs) * bs;
        if (cb && cb(ctx, ep + 1, tl / seen, (double)tc / seen)) {
            qs_errf(e, "train: cancelled after epoch %d", ep + 1);
            goto fail;
        }
    }
    rc = 0;
fail:
    free(gw);
    free(gb);
    goto out;
oom:
    qs_errf(e, "train: out of memory");
out:
    for (int t = 0; t < T; t++) {
        if (g)
            free(g[t]);
        if (mo)
            free(mo[t]);
        if (ve)
            free(ve[t]);
    }
    free(g);
    free(mo);
    free(ve);
    free(perm);
    free(yb);
    free(xb);
    if (fwd != m)
        qs_mlp_free(fwd);
    return rc;
}
