/* common.h - error reporting, RNG and small helpers shared by every qscope module.
 *
 * Core convention: a function that can fail returns 0 on success and -1 on failure, and fills
 * the caller's qs_err with one human-readable message naming the file/layer and the problem.
 * The core never prints and never exits. */
#ifndef QSCOPE_COMMON_H
#define QSCOPE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define QS_VERSION "0.1.0"
#define QS_ERRLEN 512

typedef struct qs_err {
    char msg[QS_ERRLEN];
} qs_err;

/* Writes a printf-style message into e (if non-NULL) and returns -1, so that callers can write
 * `return qs_errf(e, "...")`. */
int qs_errf(qs_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes e->msg with "prefix: " (e.g. a file name); returns -1. */
int qs_err_prefix(qs_err *e, const char *prefix);

/* Deterministic RNG: xoshiro256** seeded through splitmix64. Same seed, same stream, on every
 * machine. */
typedef struct qs_rng {
    uint64_t s[4];
} qs_rng;

void qs_rng_seed(qs_rng *r, uint64_t seed);
uint64_t qs_rng_u64(qs_rng *r);
double qs_rng_uniform(qs_rng *r);              /* [0, 1) with 53 random bits */
double qs_rng_normal(qs_rng *r);               /* standard normal (Box-Muller, no cached pair) */
uint64_t qs_rng_below(qs_rng *r, uint64_t n);  /* uniform integer in [0, n), unbiased */
void qs_rng_shuffle(qs_rng *r, int *a, int n); /* Fisher-Yates */

/* Allocation that never returns NULL for a nonzero size unless memory is exhausted; callers
 * still check. Zeroed. */
void *qs_calloc(size_t n, size_t size);

/* Duplicates a string (NULL-safe). */
char *qs_strdup(const char *s);

/* Shell-style glob match ('*', '?', '[...]') of name against pattern; 1 on match. */
int qs_glob_match(const char *pattern, const char *name);

/* mkdir -p: creates dir and its parents (mode 0700 for new ones); 0 on success. */
int qs_mkdir_p(const char *dir);

/* The user's state directory for qscope ($XDG_STATE_HOME/qscope, else
 * ~/.local/state/qscope), created if missing. 0 on success, -1 if there is no HOME. */
int qs_state_dir(char *buf, size_t n);

/* ---- Checked sizes: every size product that comes from a file or a command goes through these.
 * Each returns 0 and sets *out, or -1 on overflow (or a negative operand) leaving *out 0. */
int qs_size_mul(size_t a, size_t b, size_t *out);
int qs_size_mul3(size_t a, size_t b, size_t c, size_t *out);
int qs_size_add(size_t a, size_t b, size_t *out);
/* a * b for ints from a file or command: 0 and *out if the product fits an int and both are
 * >= 0, else -1. */
int qs_int_mul(int a, int b, int *out);

/* ---- Memory: one check before every large allocation.
 * The bytes this process can still allocate: MemAvailable from /proc/meminfo, lowered to the
 * cgroup's memory.max - memory.current where a limit is set (v2, or v1's limit_in_bytes); and
 * $QSCOPE_MEM_LIMIT (bytes, for tests) if set. SIZE_MAX where nothing can be read. */
size_t qs_mem_available(void);
/* Allocations under 64 MiB (1 MiB when $QSCOPE_MEM_LIMIT is set, for tests) always pass.
 * Larger ones are refused when BYTES exceeds qs_mem_available(), with "WHAT needs 10.2 GB but
 * only 3.1 GB of memory is available" in e. */
int qs_mem_check(size_t bytes, const char *what, qs_err *e);
/* Tunes the C library's allocator for this program's pattern, large buffers allocated and freed
 * again and again (a forward's scratch, GPTQ's Hessian copy, the error chunks): blocks up to
 * 512 MiB come from the heap and up to 1 GiB of freed memory is kept for reuse, instead of a
 * fresh mapping per buffer whose every page faults on first touch. Call once at start, before
 * any thread; the programs and the benches do, so both measure the same allocator. */
void qs_heap_tune(void);
/* calloc(n, size) after an overflow check and qs_mem_check; NULL with a message naming WHAT
 * and the figure on failure. Free with free(). */
void *qs_alloc(size_t n, size_t size, const char *what, qs_err *e);
/* The relative error ||x - ref|| / ||ref|| of n floats, summed in double; 0 when ref is all
 * zero. */
double qs_rel_err(const float *ref, const float *x, size_t n);
/* n dimensions "4,8,16" into buf (as many as fit whole). Returns buf. */
const char *qs_dims_str(const int64_t *dims, int n, char *buf, size_t size);
/* "10.2 GB", "512 KB", "17 B" into buf (decimal units). Returns buf. */
const char *qs_fmt_bytes(double bytes, char *buf, size_t n);

/* ---- Files from the user.
 * Opens PATH read-only, refusing anything but a regular file before it can block: the open is
 * O_NONBLOCK (a FIFO with no writer does not hang), then fstat; a directory, FIFO, socket or
 * device is refused with "PATH: is a directory, not a WHAT" / "PATH: is not a regular file
 * (a FIFO)". Returns the fd (blocking again, close-on-exec) and fills *st if non-NULL; -1 and e
 * on failure. */
struct stat;
int qs_open_regular(const char *path, const char *what, struct stat *st, qs_err *e);
/* The same as a stdio stream ("rb"); NULL and e on failure. */
FILE *qs_fopen_regular(const char *path, const char *what, qs_err *e);

/* The identity of a file when it was opened (device, inode, size, mtime and ctime to the
 * nanosecond), to notice that the file under a mapping has been changed or replaced. */
struct qs_file_id {
    uint64_t dev, ino;
    int64_t size;
    int64_t mtime_s, mtime_ns, ctime_s, ctime_ns;
};
/* Opens PATH as qs_open_regular does (WHAT names it in messages) and maps it read-only and
 * private: *map (NULL for an empty file; munmap(*map, *len) when done), *len, *id. -1 and e on
 * failure, nothing left open or mapped. */
int qs_map_regular(const char *path, const char *what, void **map, size_t *len,
                   struct qs_file_id *id, qs_err *e);
/* 1 if PATH still names the file *id describes, else 0 (a stat error included). */
int qs_file_id_same(const char *path, const struct qs_file_id *id);

/* ---- Writing files the user names.
 * A regular file (or a new one) is written to a temporary beside it and renamed over it on
 * commit, so a failed write leaves the old file whole. Anything else that exists (a device such
 * as /dev/full or /dev/null, a FIFO, a symlink to one) is written in place and never replaced.
 * Every write error, ENOSPC included, is reported by qs_out_commit, which leaves no empty or
 * partial file behind. */
typedef struct qs_outfile {
    FILE *f;    /* write here */
    char *path; /* owned */
    char *tmp;  /* owned; NULL when writing in place */
} qs_outfile;
int qs_out_open(qs_outfile *o, const char *path, qs_err *e);
/* Flushes, fsyncs (regular files), closes and renames into place; -1 and e on any error (the
 * temporary is removed). Frees o's strings either way. */
int qs_out_commit(qs_outfile *o, qs_err *e);
/* Closes and removes the temporary; frees o's strings. NULL-safe on an unopened o. */
void qs_out_abort(qs_outfile *o);

/* ---- Strings from files, made safe to print.
 * Copies S into buf with every control character (C0, DEL, C1 as UTF-8 U+0080..U+009F, and
 * ESC sequences with them) replaced by '?', cut at MAX bytes (0: no cut other than buf's size)
 * with "..." appended when cut. Returns buf. */
const char *qs_clean_str(const char *s, char *buf, size_t n, size_t max);

/* ---- The bundle: qscope's own datasets, models, sessions.
 * Resolves REL (e.g. "datasets/models/tiny-llama" or "sessions/tour.qs") against, in order,
 * the working directory, $QSCOPE_HOME, the folder of the running executable, and DATADIR (the
 * install share folder, set by main). Writes the first that exists into buf; -1 and a message
 * listing where it looked otherwise. */
void qs_bundle_set_datadir(const char *datadir);
int qs_bundle_path(const char *rel, char *buf, size_t n, qs_err *e);

#endif
