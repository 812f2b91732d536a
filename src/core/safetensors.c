/* safetensors.c - a validating safetensors reader over a read-only mapping, and an atomic writer.
 *
 * The reader trusts nothing in the file: every length and offset is checked against the bytes
 * actually present before a tensor is handed out, so that callers (and the fuzz target) can read
 * t->data[0 .. t->nbytes) without further checks. */
#include "qscope/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/half.h"

/* The format is little-endian and tensor data is handed out in place. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "qscope's safetensors reader assumes a little-endian host"
#endif

/* The reference implementation refuses headers above 100 MB; so do we (it bounds the copy). */
#define MAX_HEADER 100000000ULL
/* Largest integer a JSON number (a double) holds exactly. */
#define MAX_JSON_INT 9007199254740992.0

static const struct {
    const char *name;
    size_t size;
} dtypes[QS_DT_COUNT] = {
    [QS_DT_F32] = {"F32", 4},   [QS_DT_F16] = {"F16", 2}, [QS_DT_BF16] = {"BF16", 2},
    [QS_DT_F64] = {"F64", 8},   [QS_DT_I64] = {"I64", 8}, [QS_DT_I32] = {"I32", 4},
    [QS_DT_I16] = {"I16", 2},   [QS_DT_I8] = {"I8", 1},   [QS_DT_U8] = {"U8", 1},
    [QS_DT_BOOL] = {"BOOL", 1},
};

struct qs_st_file {
    char *path;
    void *map; /* the mmap of qs_st_open, NULL for qs_st_open_mem */
    size_t maplen;
    int n;
    struct qs_st_tensor *t; /* sorted by data offset */
    int *by_name;           /* indices into t, sorted by name */
    int nmeta;
    char **mkey, **mval;
    /* identity of the mapped file at open, to notice a change under the mapping */
    struct qs_file_id id;
    volatile sig_atomic_t broken; /* a read of the mapping faulted (the file shrank) */
};

size_t qs_dtype_size(enum qs_dtype t)
{
    return (unsigned)t < QS_DT_COUNT ? dtypes[t].size : 0;
}

const char *qs_dtype_name(enum qs_dtype t)
{
    return (unsigned)t < QS_DT_COUNT ? dtypes[t].name : "?";
}

int qs_dtype_from_name(const char *name, enum qs_dtype *t)
{
    for (int i = 0; name && i < QS_DT_COUNT; i++)
        if (!strcmp(name, dtypes[i].name)) {
            *t = (enum qs_dtype)i;
            return 0;
        }
    return -1;
}

/* ---- reader ---------------------------------------------------------------------------- */

/* A printable, bounded copy of a name taken from the file, for error messages: control bytes
 * become '?' so a hostile header cannot drive the terminal. */
static const char *clean(const char *s, char *buf, size_t cap)
{
    return qs_clean_str(s, buf, cap, 64);
}

/* "[3,4]" from a JSON array (any element types), bounded. */
static const char *fmt_json_shape(const cJSON *a, char *buf, size_t cap)
{
    size_t j = 0;
    int k = 0;
    const cJSON *d = a ? a->child : NULL;
    buf[j++] = '[';
    for (; d && j + 24 < cap; d = d->next, k++) {
        if (k)
            buf[j++] = ',';
        int w;
        if (cJSON_IsNumber(d) && fabs(d->valuedouble) < 1e18 &&
            d->valuedouble == floor(d->valuedouble))
            w = snprintf(buf + j, cap - j, "%lld", (long long)d->valuedouble);
        else if (cJSON_IsNumber(d))
            w = snprintf(buf + j, cap - j, "%g", d->valuedouble);
        else
            w = snprintf(buf + j, cap - j, "?");
        j += (size_t)w;
    }
    if (d) { /* cap >= 32, so the loop left room for this */
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j++] = ']';
    buf[j] = '\0';
    return buf;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j))
        return -1;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > MAX_JSON_INT || d != floor(d))
        return -1;
    *v = (uint64_t)d;
    return 0;
}

static const char *json_kind(const cJSON *j)
{
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNull(j))
        return "null";
    if (cJSON_IsObject(j))
        return "an object";
    return "not a JSON value";
}

struct entry {
    struct qs_st_tensor t;
    uint64_t begin, end;
    int order; /* position in the header */
};

static int cmp_offset(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

struct name_idx {
    const char *name;
    int idx;
};

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct name_idx *)a)->name, ((const struct name_idx *)b)->name);
}

/* Validates one tensor entry J (key NAME) against a data area of DATA_LEN bytes. */
static int parse_tensor(const char *label, const char *name, const cJSON *j, uint64_t data_len,
                        struct entry *out, qs_err *e)
{
    char nb[80], sb[160];
    clean(name, nb, sizeof nb);
    if (!cJSON_IsObject(j))
        return qs_errf(e, "%s: tensor '%s': entry is %s, not an object", label, nb, json_kind(j));

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (!dt)
        return qs_errf(e, "%s: tensor '%s': missing \"dtype\"", label, nb);
    if (!cJSON_IsString(dt))
        return qs_errf(e, "%s: tensor '%s': \"dtype\" is %s, not a string", label, nb,
                       json_kind(dt));
    if (qs_dtype_from_name(dt->valuestring, &out->t.dtype) < 0) {
        char db[80];
        return qs_errf(e,
                       "%s: tensor '%s': unknown dtype '%s' (known: F32 F16 BF16 F64 I64 I32 I16 "
                       "I8 U8 BOOL)",
                       label, nb, clean(dt->valuestring, db, sizeof db));
    }

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    if (!sh)
        return qs_errf(e, "%s: tensor '%s': missing \"shape\"", label, nb);
    if (!cJSON_IsArray(sh))
        return qs_errf(e, "%s: tensor '%s': \"shape\" is %s, not an array", label, nb,
                       json_kind(sh));
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > QS_ST_MAXDIM)
        return qs_errf(e, "%s: tensor '%s': shape %s has %d dimensions; at most %d are supported",
                       label, nb, fmt_json_shape(sh, sb, sizeof sb), ndim, QS_ST_MAXDIM);
    out->t.ndim = ndim;
    int k = 0, zero = 0;
    for (const cJSON *d = sh->child; d; d = d->next, k++) {
        uint64_t v;
        if (json_uint(d, &v) < 0) {
            const char *why = !cJSON_IsNumber(d)              ? "is not a number"
                              : d->valuedouble < 0            ? "is negative"
                              : d->valuedouble > MAX_JSON_INT ? "is too large"
                                                              : "is not an integer";
            return qs_errf(e, "%s: tensor '%s': shape %s: dimension %d %s", label, nb,
                           fmt_json_shape(sh, sb, sizeof sb), k, why);
        }
        out->t.shape[k] = (int64_t)v;
        zero |= v == 0;
    }
    /* numel and byte size, refusing anything that overflows int64 */
    int64_t numel = 1;
    size_t esz = qs_dtype_size(out->t.dtype);
    if (zero) {
        numel = 0;
    } else {
        for (k = 0; k < ndim; k++) {
            if (numel > INT64_MAX / out->t.shape[k])
                return qs_errf(e, "%s: tensor '%s': shape %s is too large", label, nb,
                               fmt_json_shape(sh, sb, sizeof sb));
            numel *= out->t.shape[k];
        }
        if (numel > INT64_MAX / (int64_t)esz)
            return qs_errf(e, "%s: tensor '%s': shape %s is too large", label, nb,
                           fmt_json_shape(sh, sb, sizeof sb));
    }
    uint64_t need = (uint64_t)numel * esz;
    out->t.numel = numel;

    const cJSON *of = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!of)
        return qs_errf(e, "%s: tensor '%s': missing \"data_offsets\"", label, nb);
    char ob[80];
    if (!cJSON_IsArray(of))
        return qs_errf(e, "%s: tensor '%s': \"data_offsets\" is %s, not [begin, end]", label, nb,
                       json_kind(of));
    if (cJSON_GetArraySize(of) != 2 || json_uint(of->child, &out->begin) ||
        json_uint(of->child->next, &out->end))
        return qs_errf(e,
                       "%s: tensor '%s': \"data_offsets\" %s is not [begin, end] with "
                       "non-negative integers",
                       label, nb, fmt_json_shape(of, ob, sizeof ob));
    fmt_json_shape(of, ob, sizeof ob);
    if (out->begin > out->end)
        return qs_errf(e, "%s: tensor '%s': data_offsets %s: begin is after end", label, nb, ob);
    if (out->end > data_len)
        return qs_errf(e,
                       "%s: tensor '%s': data_offsets %s: end is past the data area (%llu "
                       "bytes)",
                       label, nb, ob, (unsigned long long)data_len);
    if (out->end - out->begin != need)
        return qs_errf(e,
                       "%s: tensor '%s': %s shape %s needs %llu bytes but data_offsets %s "
                       "span %llu",
                       label, nb, dtypes[out->t.dtype].name, fmt_json_shape(sh, sb, sizeof sb),
                       (unsigned long long)need, ob, (unsigned long long)(out->end - out->begin));
    out->t.nbytes = (size_t)need;
    return 0;
}

static int parse_meta(struct qs_st_file *f, const cJSON *m, qs_err *e)
{
    if (!cJSON_IsObject(m))
        return qs_errf(e, "%s: __metadata__ is %s, not an object of strings", f->path,
                       json_kind(m));
    int n = cJSON_GetArraySize(m);
    f->mkey = qs_calloc((size_t)n + 1, sizeof *f->mkey);
    f->mval = qs_calloc((size_t)n + 1, sizeof *f->mval);
    if (!f->mkey || !f->mval)
        return qs_errf(e, "%s: out of memory reading __metadata__", f->path);
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        char kb[80];
        if (!cJSON_IsString(kv))
            return qs_errf(e, "%s: __metadata__ value of '%s' is %s, not a string", f->path,
                           clean(kv->string, kb, sizeof kb), json_kind(kv));
        f->mkey[f->nmeta] = qs_strdup(kv->string);
        f->mval[f->nmeta] = qs_strdup(kv->valuestring);
        if (!f->mkey[f->nmeta] || !f->mval[f->nmeta]) {
            free(f->mkey[f->nmeta]);
            free(f->mval[f->nmeta]);
            return qs_errf(e, "%s: out of memory reading __metadata__", f->path);
        }
        f->nmeta++;
    }
    return 0;
}

/* Validates the whole buffer and fills f (whose path is set). */
static int parse(struct qs_st_file *f, const unsigned char *base, size_t len, qs_err *e)
{
    const char *label = f->path;
    if (len == 0)
        return qs_errf(e,
                       "%s: file is empty (a safetensors file starts with an 8-byte header "
                       "length)",
                       label);
    if (len < 8)
        return qs_errf(e, "%s: file is only %zu bytes, shorter than the 8-byte header length",
                       label, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen > len - 8)
        return qs_errf(e,
                       "%s: header length %llu runs past the end of the file (%zu bytes after "
                       "the length field)",
                       label, (unsigned long long)hlen, len - 8);
    if (hlen > MAX_HEADER)
        return qs_errf(e, "%s: header length %llu exceeds the %llu-byte limit", label,
                       (unsigned long long)hlen, MAX_HEADER);
    uint64_t data_len = len - 8 - hlen;
    const unsigned char *data = base + 8 + hlen;

    /* cJSON gets its own NUL-terminated copy, so a parser slip cannot read past the header. */
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr)
        return qs_errf(e, "%s: out of memory for a %llu-byte header", label,
                       (unsigned long long)hlen);
    memcpy(hdr, base + 8, (size_t)hlen);
    hdr[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        free(hdr);
        return qs_errf(e, "%s: header is not valid JSON (parse error near byte %zu of %llu)", label,
                       at, (unsigned long long)hlen);
    }
    for (const char *p = end; p && p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            size_t at = (size_t)(p - hdr);
            cJSON_Delete(root);
            free(hdr);
            return qs_errf(e, "%s: header has stray bytes after its JSON value (at byte %zu)",
                           label, at);
        }
    free(hdr);
    if (!cJSON_IsObject(root)) {
        int rc = qs_errf(e, "%s: header is %s, not a JSON object", label, json_kind(root));
        cJSON_Delete(root);
        return rc;
    }

    int total = cJSON_GetArraySize(root), rc = -1;
    struct entry *ent = qs_calloc((size_t)total + 1, sizeof *ent);
    struct name_idx *ni = NULL;
    int n = 0, seen_meta = 0;
    if (!ent) {
        qs_errf(e, "%s: out of memory for %d header entries", label, total);
        goto done;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (seen_meta++) {
                qs_errf(e, "%s: __metadata__ appears twice in the header", label);
                goto done;
            }
            if (parse_meta(f, it, e) < 0)
                goto done;
            continue;
        }
        struct entry *x = &ent[n];
        if (parse_tensor(label, it->string, it, data_len, x, e) < 0)
            goto done;
        x->order = n;
        x->t.data = data + x->begin;
        if (!(x->t.name = qs_strdup(it->string))) {
            qs_errf(e, "%s: out of memory", label);
            goto done;
        }
        n++;
    }

    qsort(ent, (size_t)n, sizeof *ent, cmp_offset);
    /* Overlap: every non-empty range must start at or after the furthest end seen so far. */
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (ent[i].begin == ent[i].end)
            continue;
        if (last >= 0 && ent[i].begin < ent[last].end) {
            char a[80], b[80];
            qs_errf(e, "%s: tensors '%s' [%llu,%llu) and '%s' [%llu,%llu) overlap", label,
                    clean(ent[last].t.name, a, sizeof a), (unsigned long long)ent[last].begin,
                    (unsigned long long)ent[last].end, clean(ent[i].t.name, b, sizeof b),
                    (unsigned long long)ent[i].begin, (unsigned long long)ent[i].end);
            goto done;
        }
        if (last < 0 || ent[i].end > ent[last].end)
            last = i;
    }

    f->t = qs_calloc((size_t)n + 1, sizeof *f->t);
    f->by_name = qs_calloc((size_t)n + 1, sizeof *f->by_name);
    ni = qs_calloc((size_t)n + 1, sizeof *ni);
    if (!f->t || !f->by_name || !ni) {
        qs_errf(e, "%s: out of memory for %d tensors", label, n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        f->t[i] = ent[i].t;
        ent[i].t.name = NULL; /* now owned by f */
        ni[i] = (struct name_idx){f->t[i].name, i};
    }
    f->n = n;
    qsort(ni, (size_t)n, sizeof *ni, cmp_name);
    for (int i = 0; i < n; i++) {
        f->by_name[i] = ni[i].idx;
        if (i > 0 && !strcmp(ni[i].name, ni[i - 1].name)) {
            char a[80];
            qs_errf(e, "%s: tensor name '%s' appears twice in the header", label,
                    clean(ni[i].name, a, sizeof a));
            goto done;
        }
    }
    rc = 0;
done:
    for (int i = 0; ent && i < n; i++)
        free(ent[i].t.name);
    free(ent);
    free(ni);
    cJSON_Delete(root);
    return rc;
}

static int open_common(struct qs_st_file *f, const void *buf, size_t len, struct qs_st_file **out,
                       qs_err *e)
{
    if (parse(f, buf, len, e) < 0) {
        qs_st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

/* ---- mapped reads: a file that changes under its mapping ----------------------------------
 *
 * A mapping of a file that is truncated afterwards raises SIGBUS at the first read of a page past
 * the new end. Every mapping of qs_st_open is registered here; the SIGBUS handler recognises an
 * address inside one, marks the file broken and maps a page of zeros over the vanished page (so a
 * thread that runs unguarded, a BLAS worker or a pane, reads on instead of dying), then, in a
 * thread that runs under qs_st_guard, jumps back to it, which turns the fault into an error.
 * Results computed from the zeros are never shown: the guard and qs_st_check refuse them. */
#define GUARD_SLOTS 1024 /* mappings open at once (a study opens a few models at a time) */
static struct qs_st_file *volatile guard_files[GUARD_SLOTS];
static pthread_mutex_t guard_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static struct sigaction guard_prev;
static uintptr_t guard_pagesize = 4096;
static volatile sig_atomic_t guard_faults;
static struct qs_st_file *volatile guard_last;
static _Thread_local sigjmp_buf *guard_jmp;

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    const char *a = si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        struct qs_st_file *f = guard_files[i];
        if (!f || a < (const char *)f->map || a >= (const char *)f->map + f->maplen)
            continue;
        f->broken = 1;
        guard_last = f;
        guard_faults++;
        void *page = (void *)((uintptr_t)a & ~(guard_pagesize - 1));
        mmap(page, (size_t)guard_pagesize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0);
        if (guard_jmp)
            siglongjmp(*guard_jmp, 1);
        return;
    }
    /* not one of ours: the previous disposition (by default the fault repeats and kills) */
    if (guard_prev.sa_flags & SA_SIGINFO) {
        guard_prev.sa_sigaction(sig, si, uc);
        return;
    }
    if (guard_prev.sa_handler != SIG_IGN && guard_prev.sa_handler != SIG_DFL) {
        guard_prev.sa_handler(sig);
        return;
    }
    signal(SIGBUS, SIG_DFL);
}

static void guard_install(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    if (pg > 0)
        guard_pagesize = (uintptr_t)pg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &guard_prev);
}

static int guard_register(struct qs_st_file *f)
{
    pthread_once(&guard_once, guard_install);
    pthread_mutex_lock(&guard_mu);
    int rc = -1;
    for (int i = 0; i < GUARD_SLOTS && rc < 0; i++)
        if (!guard_files[i]) {
            guard_files[i] = f;
            rc = 0;
        }
    pthread_mutex_unlock(&guard_mu);
    return rc;
}

static void guard_unregister(struct qs_st_file *f)
{
    pthread_mutex_lock(&guard_mu);
    for (int i = 0; i < GUARD_SLOTS; i++)
        if (guard_files[i] == f)
            guard_files[i] = NULL;
    if (guard_last == f)
        guard_last = NULL;
    pthread_mutex_unlock(&guard_mu);
}

static int changed_msg(const struct qs_st_file *f, qs_err *e)
{
    char pb[256];
    return qs_errf(e, "%s changed on disk since it was loaded; load it again",
                   qs_clean_str(f ? f->path : "a mapped file", pb, sizeof pb, 0));
}

int qs_st_guard(int (*fn)(void *u, qs_err *e), void *u, qs_err *e)
{
    pthread_once(&guard_once, guard_install);
    sigjmp_buf jb;
    sigjmp_buf *volatile prev = guard_jmp;
    volatile sig_atomic_t faults0 = guard_faults;
    if (sigsetjmp(jb, 1)) {
        guard_jmp = prev;
        return changed_msg(guard_last, e);
    }
    guard_jmp = &jb;
    int rc = fn(u, e);
    guard_jmp = prev;
    if (guard_faults != faults0) /* another thread read a vanished page for this work */
        return changed_msg(guard_last, e);
    return rc;
}

int qs_st_check(const struct qs_st_file *f, qs_err *e)
{
    if (!f || !f->map)
        return 0;
    if (f->broken || !qs_file_id_same(f->path, &f->id))
        return changed_msg(f, e);
    return 0;
}

struct open_job {
    struct qs_st_file *f;
    const void *buf;
    size_t len;
    struct qs_st_file **out;
    int done;
};

static int open_job_run(void *u, qs_err *e)
{
    struct open_job *j = u;
    int rc = open_common(j->f, j->buf, j->len, j->out, e);
    j->done = 1;
    return rc;
}

int qs_st_open(const char *path, struct qs_st_file **out, qs_err *e)
{
    *out = NULL;
    if (!path)
        return qs_errf(e, "safetensors: no path given");
    /* a FIFO or device is refused before it can block; a directory is named as such */
    void *map;
    size_t len;
    struct qs_file_id id;
    if (qs_map_regular(path, "safetensors file", &map, &len, &id, e) < 0)
        return -1;
    char pb[256];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    struct qs_st_file *f = qs_calloc(1, sizeof *f);
    if (!f || !(f->path = qs_strdup(path))) {
        if (map)
            munmap(map, len);
        free(f);
        return qs_errf(e, "%s: out of memory", p);
    }
    f->map = map;
    f->maplen = len;
    f->id = id;
    if (map && guard_register(f) < 0) {
        qs_st_close(f);
        return qs_errf(e, "%s: too many mapped files open at once", p);
    }
    /* the header is parsed under the guard too: the file may shrink while it is read */
    struct open_job job = {f, map, len, out, 0};
    int rc = qs_st_guard(open_job_run, &job, e);
    if (rc < 0 && !job.done) /* the guard cut the parse short: f was not freed */
        qs_st_close(f);
    else if (rc < 0 && *out) { /* parsed, but a page vanished meanwhile */
        qs_st_close(*out);
        *out = NULL;
    }
    return rc;
}

int qs_st_open_mem(const void *buf, size_t len, const char *label, struct qs_st_file **out,
                   qs_err *e)
{
    *out = NULL;
    if (!label)
        label = "<memory>";
    struct qs_st_file *f = qs_calloc(1, sizeof *f);
    if (!f || !(f->path = qs_strdup(label))) {
        free(f);
        return qs_errf(e, "%s: out of memory", label);
    }
    return open_common(f, buf ? buf : "", buf ? len : 0, out, e);
}

void qs_st_close(struct qs_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        guard_unregister(f);
    for (int i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    free(f->by_name);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->mkey[i]);
        free(f->mval[i]);
    }
    free(f->mkey);
    free(f->mval);
    if (f->map)
        munmap(f->map, f->maplen);
    free(f->path);
    free(f);
}

int qs_st_count(const struct qs_st_file *f)
{
    return f ? f->n : 0;
}

const struct qs_st_tensor *qs_st_get(const struct qs_st_file *f, int i)
{
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const struct qs_st_tensor *qs_st_find(const struct qs_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t[f->by_name[mid]].name);
        if (c == 0)
            return &f->t[f->by_name[mid]];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *qs_st_meta(const struct qs_st_file *f, const char *key)
{
    for (int i = 0; f && key && i < f->nmeta; i++)
        if (!strcmp(f->mkey[i], key))
            return f->mval[i];
    return NULL;
}

int qs_st_meta_count(const struct qs_st_file *f)
{
    return f ? f->nmeta : 0;
}

const char *qs_st_meta_key(const struct qs_st_file *f, int i)
{
    return f && i >= 0 && i < f->nmeta ? f->mkey[i] : NULL;
}

const char *qs_st_meta_value(const struct qs_st_file *f, int i)
{
    return f && i >= 0 && i < f->nmeta ? f->mval[i] : NULL;
}

const char *qs_st_path(const struct qs_st_file *f)
{
    return f ? f->path : NULL;
}

int qs_st_to_f32(const struct qs_st_tensor *t, float *out, qs_err *e)
{
    const unsigned char *p = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case QS_DT_F32:
        if (n)
            memcpy(out, p, n * sizeof(float));
        return 0;
    case QS_DT_F16:
        qs_f16_to_f32_n(p, out, n);
        return 0;
    case QS_DT_BF16:
        qs_bf16_to_f32_n(p, out, n);
        return 0;
#define CONV(T)                                                                                    \
    do {                                                                                           \
        for (size_t i = 0; i < n; i++) {                                                           \
            T v_;                                                                                  \
            memcpy(&v_, p + i * sizeof(T), sizeof(T));                                             \
            out[i] = (float)v_;                                                                    \
        }                                                                                          \
    } while (0)
    case QS_DT_F64:
        CONV(double);
        return 0;
    case QS_DT_I64:
        CONV(int64_t);
        return 0;
    case QS_DT_I32:
        CONV(int32_t);
        return 0;
    case QS_DT_I16:
        CONV(int16_t);
        return 0;
    case QS_DT_I8:
        CONV(int8_t);
        return 0;
    case QS_DT_U8:
        CONV(uint8_t);
        return 0;
#undef CONV
    case QS_DT_BOOL:
        break;
    }
    char nb[80];
    return qs_errf(e, "tensor '%s': dtype %s cannot be converted to F32",
                   clean(t->name ? t->name : "", nb, sizeof nb), qs_dtype_name(t->dtype));
}

const float *qs_st_f32_view(const struct qs_st_tensor *t)
{
    if (!t || t->dtype != QS_DT_F32 || ((uintptr_t)t->data & 3u))
        return NULL;
    return (const float *)t->data;
}

void qs_st_release(const struct qs_st_file *f, const struct qs_st_tensor *t)
{
    if (t)
        qs_st_release_bytes(f, t->data, t->nbytes);
}

void qs_st_release_bytes(const struct qs_st_file *f, const void *p, size_t n)
{
    if (!f || !f->map || !p || !n)
        return;
    uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE), base = (uintptr_t)f->map;
    uintptr_t a = (uintptr_t)p & ~(ps - 1), z = (uintptr_t)p + n;
    z = (z + ps - 1) & ~(ps - 1);
    if (a < base)
        a = base;
    if (z > base + f->maplen) /* the mapping's last page is whole in memory */
        z = (base + f->maplen + ps - 1) & ~(ps - 1);
    if (z > a)
        madvise((void *)a, z - a, MADV_DONTNEED);
}

/* One chunk's test is a branch-free OR over the exponent fields, which the compiler vectorises
 * (the per-element dtype switch it replaces ran at 1.3 GB/s and was 85 % of loading a BF16 1B
 * model); the index of the first bad element is looked up only in a chunk that has one. */
#define FINITE_SCAN(T, MASK)                                                                       \
    do {                                                                                           \
        const T *u = (const T *)t->data;                                                           \
        for (int64_t i0 = 0; i0 < t->numel; i0 += 4096) {                                          \
            int64_t n = t->numel - i0 < 4096 ? t->numel - i0 : 4096;                               \
            unsigned any = 0;                                                                      \
            for (int64_t i = 0; i < n; i++)                                                        \
                any |= (u[i0 + i] & (MASK)) == (MASK);                                             \
            if (!any)                                                                              \
                continue;                                                                          \
            for (int64_t i = 0; i < n; i++)                                                        \
                if ((u[i0 + i] & (MASK)) == (MASK)) {                                              \
                    if (bad_index)                                                                 \
                        *bad_index = i0 + i;                                                       \
                    return 0;                                                                      \
                }                                                                                  \
        }                                                                                          \
    } while (0)

int qs_st_check_finite(const struct qs_st_tensor *t, int64_t *bad_index)
{
    /* the data offsets are checked against the dtype's size at open; safetensors aligns them,
     * and a misaligned one is read byte-wise */
    size_t sz = qs_dtype_size(t->dtype);
    if (sz == 0 || t->numel == 0)
        return 1;
    if ((uintptr_t)t->data % sz != 0) {
        const unsigned char *p = t->data;
        for (int64_t i = 0; i < t->numel; i++) {
            int bad;
            if (t->dtype == QS_DT_F32) {
                uint32_t u;
                memcpy(&u, p + 4 * i, 4);
                bad = (u & 0x7f800000u) == 0x7f800000u;
            } else if (t->dtype == QS_DT_F16 || t->dtype == QS_DT_BF16) {
                uint16_t u;
                memcpy(&u, p + 2 * i, 2);
                bad = t->dtype == QS_DT_F16 ? (u & 0x7c00u) == 0x7c00u : (u & 0x7f80u) == 0x7f80u;
            } else if (t->dtype == QS_DT_F64) {
                uint64_t u;
                memcpy(&u, p + 8 * i, 8);
                bad = (u & 0x7ff0000000000000ULL) == 0x7ff0000000000000ULL;
            } else {
                return 1;
            }
            if (bad) {
                if (bad_index)
                    *bad_index = i;
                return 0;
            }
        }
        return 1;
    }
    switch (t->dtype) {
    case QS_DT_F32:
        FINITE_SCAN(uint32_t, 0x7f800000u);
        break;
    case QS_DT_F16:
        FINITE_SCAN(uint16_t, 0x7c00u);
        break;
    case QS_DT_BF16:
        FINITE_SCAN(uint16_t, 0x7f80u);
        break;
    case QS_DT_F64:
        FINITE_SCAN(uint64_t, 0x7ff0000000000000ULL);
        break;
    default:
        break;
    }
    return 1;
}
#undef FINITE_SCAN

/* ---- writer ---------------------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; other bytes (UTF-8) as
 * they are. */
static void sb_json(struct sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the tensor list; fills nbytes[i]. */
static int check_out(const char *path, const struct qs_st_out *t, int n, uint64_t *nbytes,
                     qs_err *e)
{
    for (int i = 0; i < n; i++) {
        char nb[80];
        if (!t[i].name)
            return qs_errf(e, "%s: tensor %d has no name", path, i);
        clean(t[i].name, nb, sizeof nb);
        if (!strcmp(t[i].name, "__metadata__"))
            return qs_errf(e, "%s: a tensor cannot be named '__metadata__'", path);
        if ((unsigned)t[i].dtype >= QS_DT_COUNT)
            return qs_errf(e, "%s: tensor '%s': invalid dtype %d", path, nb, (int)t[i].dtype);
        if (t[i].ndim < 0 || t[i].ndim > QS_ST_MAXDIM)
            return qs_errf(e, "%s: tensor '%s': ndim %d is outside 0..%d", path, nb, t[i].ndim,
                           QS_ST_MAXDIM);
        uint64_t numel = 1;
        int zero = 0;
        for (int k = 0; k < t[i].ndim; k++) {
            if (t[i].shape[k] < 0)
                return qs_errf(e, "%s: tensor '%s': dimension %d is negative (%lld)", path, nb, k,
                               (long long)t[i].shape[k]);
            zero |= t[i].shape[k] == 0;
        }
        for (int k = 0; !zero && k < t[i].ndim; k++) {
            if (numel > (uint64_t)MAX_JSON_INT / (uint64_t)t[i].shape[k])
                return qs_errf(e, "%s: tensor '%s': shape is too large", path, nb);
            numel *= (uint64_t)t[i].shape[k];
        }
        nbytes[i] = zero ? 0 : numel * qs_dtype_size(t[i].dtype);
        if (nbytes[i] > (uint64_t)MAX_JSON_INT || nbytes[i] > SIZE_MAX / 2)
            return qs_errf(e, "%s: tensor '%s': shape is too large", path, nb);
        if (nbytes[i] && !t[i].data)
            return qs_errf(e, "%s: tensor '%s': no data", path, nb);
    }
    const char **names = qs_calloc((size_t)n + 1, sizeof *names);
    if (!names)
        return qs_errf(e, "%s: out of memory", path);
    for (int i = 0; i < n; i++)
        names[i] = t[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 1; i < n; i++)
        if (!strcmp(names[i], names[i - 1])) {
            char nb[80];
            qs_errf(e, "%s: tensor name '%s' is given twice", path, clean(names[i], nb, sizeof nb));
            free(names);
            return -1;
        }
    free(names);
    return 0;
}

/* Syncs the directory holding PATH so the rename itself is durable (best effort: some file
 * systems refuse fsync on a directory). */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int qs_st_write(const char *path, const struct qs_st_out *t, int n, const char *const *meta_keys,
                const char *const *meta_vals, int nmeta, qs_err *e)
{
    if (!path)
        return qs_errf(e, "safetensors: no path given for writing");
    if (n < 0 || nmeta < 0 || (n > 0 && !t) || (nmeta > 0 && (!meta_keys || !meta_vals)))
        return qs_errf(e, "%s: invalid tensor or metadata list", path);
    for (int i = 0; i < nmeta; i++) {
        if (!meta_keys[i] || !meta_vals[i])
            return qs_errf(e, "%s: metadata pair %d has a NULL key or value", path, i);
        for (int j = 0; j < i; j++)
            if (!strcmp(meta_keys[i], meta_keys[j])) {
                char kb[80];
                return qs_errf(e, "%s: metadata key '%s' is given twice", path,
                               clean(meta_keys[i], kb, sizeof kb));
            }
    }
    uint64_t *nbytes = qs_calloc((size_t)n + 1, sizeof *nbytes);
    if (!nbytes)
        return qs_errf(e, "%s: out of memory", path);
    if (check_out(path, t, n, nbytes, e) < 0) {
        free(nbytes);
        return -1;
    }

    struct sbuf h = {0};
    char num[96];
    sb_str(&h, "{");
    if (nmeta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < nmeta; i++) {
            if (i)
                sb_str(&h, ",");
            sb_json(&h, meta_keys[i]);
            sb_str(&h, ":");
            sb_json(&h, meta_vals[i]);
        }
        sb_str(&h, "}");
        if (n > 0)
            sb_str(&h, ",");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i)
            sb_str(&h, ",");
        sb_json(&h, t[i].name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, qs_dtype_name(t[i].dtype));
        sb_str(&h, "\",\"shape\":[");
        for (int k = 0; k < t[i].ndim; k++) {
            snprintf(num, sizeof num, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
            sb_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nbytes[i]));
        sb_str(&h, num);
        off += nbytes[i];
    }
    sb_str(&h, "}");
    while (!h.oom && h.len % 8)
        sb_str(&h, " ");
    if (h.oom) {
        free(h.p);
        free(nbytes);
        return qs_errf(e, "%s: out of memory building the header", path);
    }

    qs_outfile o;
    int rc = -1;
    if (qs_out_open(&o, path, e) < 0)
        goto out;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int bad = fwrite(lenb, 1, 8, o.f) != 8 || fwrite(h.p, 1, h.len, o.f) != h.len;
    for (int i = 0; !bad && i < n; i++)
        bad = nbytes[i] && fwrite(t[i].data, 1, (size_t)nbytes[i], o.f) != (size_t)nbytes[i];
    if (bad) {
        char pb[256];
        qs_errf(e, "%s: cannot write: %s", qs_clean_str(path, pb, sizeof pb, 0),
                strerror(errno ? errno : EIO));
        qs_out_abort(&o);
        goto out;
    }
    if (qs_out_commit(&o, e) < 0)
        goto out;
    sync_dir(path);
    rc = 0;
out:
    free(h.p);
    free(nbytes);
    return rc;
}
