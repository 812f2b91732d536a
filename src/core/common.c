/* common.c - error buffer, deterministic RNG, glob matching. */
#include "qscope/common.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int qs_errf(qs_err *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int qs_err_prefix(qs_err *e, const char *prefix)
{
    if (e && prefix) {
        char tmp[QS_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s: %s", prefix, e->msg);
        memcpy(e->msg, tmp, sizeof tmp);
    }
    return -1;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void qs_rng_seed(qs_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t qs_rng_u64(qs_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double qs_rng_uniform(qs_rng *r)
{
    return (double)(qs_rng_u64(r) >> 11) * 0x1.0p-53;
}

double qs_rng_normal(qs_rng *r)
{
    double u1 = qs_rng_uniform(r), u2 = qs_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t qs_rng_below(qs_rng *r, uint64_t n)
{
    if (n == 0)
        return 0;
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = qs_rng_u64(r);
    while (x >= lim);
    return x % n;
}

void qs_rng_shuffle(qs_rng *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)qs_rng_below(r, (uint64_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

void *qs_calloc(size_t n, size_t size)
{
    return calloc(n ? n : 1, size ? size : 1);
}

char *qs_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int qs_glob_match(const char *pattern, const char *name)
{
    return fnmatch(pattern, name, 0) == 0;
}

int qs_mkdir_p(const char *dir)
{
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return -1;
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    if (mkdir(buf, 0700) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

int qs_state_dir(char *buf, size_t n)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0])
        snprintf(buf, n, "%s/qscope", xdg);
    else if (home && home[0])
        snprintf(buf, n, "%s/.local/state/qscope", home);
    else
        return -1;
    return qs_mkdir_p(buf);
}

/* ---- checked sizes ---- */

int qs_size_mul(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) {
        *out = 0;
        return -1;
    }
    *out = r;
    return 0;
}

int qs_size_mul3(size_t a, size_t b, size_t c, size_t *out)
{
    size_t ab;
    if (qs_size_mul(a, b, &ab) < 0)
        return *out = 0, -1;
    return qs_size_mul(ab, c, out);
}

int qs_size_add(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) {
        *out = 0;
        return -1;
    }
    *out = r;
    return 0;
}

int qs_int_mul(int a, int b, int *out)
{
    int r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) {
        *out = 0;
        return -1;
    }
    *out = r;
    return 0;
}

/* ---- memory ---- */

/* A number (bytes) from the first line of FILE, or SIZE_MAX ("max", missing, unreadable). */
static size_t read_bytes_file(const char *file)
{
    FILE *f = fopen(file, "re");
    if (!f)
        return SIZE_MAX;
    char line[64] = "";
    size_t v = SIZE_MAX;
    if (fgets(line, sizeof line, f)) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(line, &end, 10);
        if (end != line && !errno)
            v = (size_t)x;
    }
    fclose(f);
    return v;
}

size_t qs_mem_available(void)
{
    size_t avail = SIZE_MAX;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f) {
        char line[128];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (size_t)kb * 1024;
                break;
            }
        fclose(f);
    }
    /* cgroup v2 (the process's own cgroup is mounted at /sys/fs/cgroup in a container), v1 */
    size_t max = read_bytes_file("/sys/fs/cgroup/memory.max");
    if (max != SIZE_MAX) {
        size_t cur = read_bytes_file("/sys/fs/cgroup/memory.current");
        size_t room = (cur != SIZE_MAX && cur < max) ? max - cur : 0;
        if (room < avail)
            avail = room;
    } else {
        size_t lim = read_bytes_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        size_t use = read_bytes_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
        if (lim != SIZE_MAX && lim < ((size_t)1 << 60) && use != SIZE_MAX) {
            size_t room = use < lim ? lim - use : 0;
            if (room < avail)
                avail = room;
        }
    }
    const char *env = getenv("QSCOPE_MEM_LIMIT");
    if (env && env[0]) {
        char *end;
        unsigned long long x = strtoull(env, &end, 10);
        if (end != env && (size_t)x < avail)
            avail = (size_t)x;
    }
    return avail;
}

const char *qs_fmt_bytes(double b, char *buf, size_t n)
{
    static const char *const unit[] = {"B", "KB", "MB", "GB", "TB", "PB", "EB"};
    int u = 0;
    while (b >= 1000.0 && u < 6) {
        b /= 1000.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%.0f B", b);
    else
        snprintf(buf, n, "%.1f %s", b, unit[u]);
    return buf;
}

int qs_mem_check(size_t bytes, const char *what, qs_err *e)
{
    /* small requests pass unchecked; with QSCOPE_MEM_LIMIT (tests) the floor is 1 MiB, so a
     * limit of a few MB can be exercised on the bundled small models */
    const char *lim = getenv("QSCOPE_MEM_LIMIT");
    size_t floor = (lim && lim[0]) ? ((size_t)1 << 20) : ((size_t)64 << 20);
    if (bytes < floor)
        return 0;
    size_t avail = qs_mem_available();
    if (bytes <= avail)
        return 0;
    char nb[32], ab[32];
    return qs_errf(e, "%s needs %s but only %s of memory is available", what ? what : "this",
                   qs_fmt_bytes((double)bytes, nb, sizeof nb),
                   qs_fmt_bytes((double)avail, ab, sizeof ab));
}

void qs_heap_tune(void)
{
    /* glibc's default maps every block over its (dynamic, at most 32 MiB) threshold afresh and
     * returns heap tops over 2x that: on this project's reference machine (a PVM guest, where a
     * page fault costs ~12 us) GPT-2-small's `error` took 308k faults, 92k with these values,
     * and GPTQ on a 3072 x 768 layer ran twice as fast (0.069 -> 0.034 s, one thread). The
     * peak stays what the live buffers need; the heap does not shrink back below it. */
    (void)mallopt(M_MMAP_THRESHOLD, 512 << 20);
    (void)mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void *qs_alloc(size_t n, size_t size, const char *what, qs_err *e)
{
    size_t bytes;
    if (qs_size_mul(n, size, &bytes) < 0) {
        qs_errf(e, "%s: size %zu x %zu overflows", what ? what : "allocation", n, size);
        return NULL;
    }
    if (qs_mem_check(bytes, what, e) < 0)
        return NULL;
    void *p = NULL;
#ifdef MADV_HUGEPAGE
    /* A block of 2 to 64 MB starts on a 2 MB boundary and is offered to transparent huge
     * pages before its first touch: its whole 2 MB runs then fault once each instead of 512
     * times (under a hypervisor a fault costs ~12 us: a quarter of GPTQ's time on a 3072-wide
     * layer, and 0.5 of GPT-2-small's 1.0 s load, whose 2.4 and 7 MB weights had no 2 MB run
     * at the 8 MB threshold this replaced: 44.7k faults then, 4.6k now). Advice only: the
     * contents and the results are the same with or without it. The memset zeroes what calloc
     * would; on fresh pages it is the touch that faults them in. Larger blocks keep calloc's
     * lazy zero pages (a buffer sized for the most a pass may need is not all touched), with
     * their aligned 2 MB runs advised. */
    const size_t huge = (size_t)2 << 20;
    if (bytes >= huge && bytes < ((size_t)64 << 20)) {
        /* a tail of 1 MB or more gets its own huge page too (at most 1 MB unused, 25 MB on
         * GPT-2-small); a shorter one stays in 4 KB pages */
        size_t span = bytes % huge >= huge / 2 ? (bytes + huge - 1) / huge * huge : bytes;
        if (posix_memalign(&p, huge, span) != 0)
            p = NULL;
        if (p) {
            uintptr_t z = ((uintptr_t)p + span) & ~(uintptr_t)(huge - 1);
            (void)madvise(p, z - (uintptr_t)p, MADV_HUGEPAGE);
            memset(p, 0, bytes);
        }
    } else
#endif
    {
        p = qs_calloc(n, size);
#ifdef MADV_HUGEPAGE
        if (p && bytes >= huge) {
            uintptr_t a = ((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1);
            uintptr_t z = ((uintptr_t)p + bytes) & ~(uintptr_t)(huge - 1);
            if (z > a)
                (void)madvise((void *)a, z - a, MADV_HUGEPAGE);
        }
#endif
    }
    if (!p) {
        char nb[32];
        qs_errf(e, "%s: out of memory for %s", what ? what : "allocation",
                qs_fmt_bytes((double)bytes, nb, sizeof nb));
    }
    return p;
}

const char *qs_dims_str(const int64_t *dims, int n, char *buf, size_t size)
{
    size_t k = 0;
    if (size)
        buf[0] = 0;
    for (int i = 0; i < n && k + 22 <= size; i++) /* "," and 20 digits and a sign fit */
        k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? "," : "", (long long)dims[i]);
    return buf;
}

double qs_rel_err(const float *ref, const float *x, size_t n)
{
    double num = 0, den = 0;
    for (size_t j = 0; j < n; j++) {
        double d = (double)ref[j] - x[j];
        num += d * d;
        den += (double)ref[j] * ref[j];
    }
    return den > 0 ? sqrt(num / den) : 0.0;
}

/* ---- reading user files ---- */

static const char *file_kind(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISSOCK(m))
        return "a socket";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    return "not a regular file";
}

int qs_open_regular(const char *path, const char *what, struct stat *stp, qs_err *e)
{
    if (!path || !path[0])
        return qs_errf(e, "no %s path given", what ? what : "file");
    char pb[256];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return qs_errf(e, "%s: cannot open: %s", p, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return qs_errf(e, "%s: cannot stat: %s", p, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (S_ISDIR(st.st_mode))
            return qs_errf(e, "%s: is a directory, not a %s", p, what ? what : "file");
        return qs_errf(e, "%s: is not a regular file (%s)", p, file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (stp)
        *stp = st;
    return fd;
}

FILE *qs_fopen_regular(const char *path, const char *what, qs_err *e)
{
    int fd = qs_open_regular(path, what, NULL, e);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        qs_errf(e, "%s: cannot open: %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

static void file_id_of(const struct stat *st, struct qs_file_id *id)
{
    id->dev = (uint64_t)st->st_dev;
    id->ino = (uint64_t)st->st_ino;
    id->size = (int64_t)st->st_size;
    id->mtime_s = (int64_t)st->st_mtim.tv_sec;
    id->mtime_ns = (int64_t)st->st_mtim.tv_nsec;
    id->ctime_s = (int64_t)st->st_ctim.tv_sec;
    id->ctime_ns = (int64_t)st->st_ctim.tv_nsec;
}

int qs_map_regular(const char *path, const char *what, void **map, size_t *len,
                   struct qs_file_id *id, qs_err *e)
{
    *map = NULL;
    *len = 0;
    struct stat st;
    int fd = qs_open_regular(path, what, &st, e);
    if (fd < 0)
        return -1;
    size_t n = (size_t)st.st_size;
    void *m = NULL;
    if (n > 0) {
        m = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int err = errno;
            char pb[256];
            close(fd);
            return qs_errf(e, "%s: cannot map %zu bytes: %s", qs_clean_str(path, pb, sizeof pb, 0),
                           n, strerror(err));
        }
    }
    close(fd);
    *map = m;
    *len = n;
    file_id_of(&st, id);
    return 0;
}

int qs_file_id_same(const char *path, const struct qs_file_id *id)
{
    struct stat st;
    struct qs_file_id now;
    if (stat(path, &st) < 0)
        return 0;
    file_id_of(&st, &now);
    return now.dev == id->dev && now.ino == id->ino && now.size == id->size &&
           now.mtime_s == id->mtime_s && now.mtime_ns == id->mtime_ns &&
           now.ctime_s == id->ctime_s && now.ctime_ns == id->ctime_ns;
}

/* ---- writing user files ---- */

int qs_out_open(qs_outfile *o, const char *path, qs_err *e)
{
    memset(o, 0, sizeof *o);
    if (!path || !path[0])
        return qs_errf(e, "no output path given");
    char pb[256];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (exists && S_ISDIR(st.st_mode))
        return qs_errf(e, "%s: is a directory", p);
    if (!(o->path = qs_strdup(path)))
        return qs_errf(e, "%s: out of memory", p);
    if (exists && !S_ISREG(st.st_mode)) {
        /* a device or FIFO: written in place, never replaced (O_NONBLOCK: a FIFO with no
         * reader fails at once instead of hanging) */
        int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || !(o->f = fdopen(fd, "wb"))) {
            int err = errno;
            if (fd >= 0)
                close(fd);
            free(o->path);
            o->path = NULL;
            return qs_errf(e, "%s: cannot open for writing: %s", p, strerror(err));
        }
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        return 0;
    }
    size_t pl = strlen(path);
    if (!(o->tmp = malloc(pl + 16))) {
        free(o->path);
        o->path = NULL;
        return qs_errf(e, "%s: out of memory", p);
    }
    snprintf(o->tmp, pl + 16, "%s.tmp%d", path, (int)getpid());
    int fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
                  exists ? (st.st_mode & 07777) : 0644);
    if (fd < 0 || !(o->f = fdopen(fd, "wb"))) {
        int err = errno;
        if (fd >= 0) {
            close(fd);
            unlink(o->tmp);
        }
        free(o->path);
        free(o->tmp);
        o->path = o->tmp = NULL;
        return qs_errf(e, "%s: cannot create: %s", p, strerror(err));
    }
    return 0;
}

static void out_free(qs_outfile *o)
{
    free(o->path);
    free(o->tmp);
    o->path = o->tmp = NULL;
    o->f = NULL;
}

int qs_out_commit(qs_outfile *o, qs_err *e)
{
    if (!o->f) {
        out_free(o);
        return qs_errf(e, "output file was not open");
    }
    char pb[256];
    const char *p = qs_clean_str(o->path, pb, sizeof pb, 0);
    int err = 0;
    if (fflush(o->f) != 0 || ferror(o->f))
        err = errno ? errno : EIO;
    if (!err && o->tmp && fsync(fileno(o->f)) < 0)
        err = errno;
    if (fclose(o->f) != 0 && !err)
        err = errno ? errno : EIO;
    o->f = NULL;
    if (!err && o->tmp && rename(o->tmp, o->path) < 0)
        err = errno;
    if (err) {
        if (o->tmp)
            unlink(o->tmp);
        out_free(o);
        return qs_errf(e, "%s: cannot write: %s", p, strerror(err));
    }
    out_free(o);
    return 0;
}

void qs_out_abort(qs_outfile *o)
{
    if (o->f)
        fclose(o->f);
    if (o->tmp)
        unlink(o->tmp);
    out_free(o);
}

/* ---- printing strings from files ---- */

const char *qs_clean_str(const char *s, char *buf, size_t n, size_t max)
{
    if (!n)
        return buf;
    if (!s)
        s = "(null)";
    size_t j = 0, i = 0;
    int cut = 0;
    for (; s[i]; i++) {
        if ((max && i >= max) || j + 4 >= n) {
            cut = 1;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        if (c == 0xc2 && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9f) {
            buf[j++] = '?'; /* a C1 control in UTF-8 (U+0080..U+009F, e.g. CSI) */
            i++;
            continue;
        }
        buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (cut && j + 3 < n) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}

/* ---- the bundle ---- */

static char bundle_datadir[1024];

void qs_bundle_set_datadir(const char *d)
{
    snprintf(bundle_datadir, sizeof bundle_datadir, "%s", d ? d : "");
}

int qs_bundle_path(const char *rel, char *buf, size_t n, qs_err *e)
{
    char cand[4][4096];
    int nc = 0;
    snprintf(cand[nc++], sizeof cand[0], "%s", rel);
    const char *home = getenv("QSCOPE_HOME");
    if (home && home[0])
        snprintf(cand[nc++], sizeof cand[0], "%s/%s", home, rel);
    char exe[2048];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        snprintf(cand[nc++], sizeof cand[0], "%s/%s", exe, rel);
        /* installed: PREFIX/bin/qscope beside PREFIX/share/qscope */
        snprintf(cand[nc++], sizeof cand[0], "%s/../share/qscope/%s", exe, rel);
    }
    for (int i = 0; i < nc; i++)
        if (access(cand[i], R_OK) == 0) {
            if ((size_t)snprintf(buf, n, "%s", cand[i]) >= n)
                return qs_errf(e, "%s: path too long", rel);
            return 0;
        }
    if (bundle_datadir[0]) {
        char c[4096];
        snprintf(c, sizeof c, "%s/%s", bundle_datadir, rel);
        if (access(c, R_OK) == 0) {
            if ((size_t)snprintf(buf, n, "%s", c) >= n)
                return qs_errf(e, "%s: path too long", rel);
            return 0;
        }
    }
    return qs_errf(e,
                   "the bundled %s was not found (looked under the working directory, "
                   "$QSCOPE_HOME, beside qscope and in %s)",
                   rel, bundle_datadir[0] ? bundle_datadir : "the install share folder");
}
