/* common.h - error reporting, RNG and small helpers shared by every qscope module.
 *
 * Core convention: a function that can fail returns 0 on success and -1 on failure, and fills
 * the caller's qs_err with one human-readable message naming the file/layer and the problem.
 * The core never prints and never exits. */
#ifndef QSCOPE_COMMON_H
#define QSCOPE_COMMON_H

#include <stddef.h>
#include <stdint.h>

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
double qs_rng_uniform(qs_rng *r);      /* [0, 1) with 53 random bits */
double qs_rng_normal(qs_rng *r);       /* standard normal (Box-Muller, no cached pair) */
uint64_t qs_rng_below(qs_rng *r, uint64_t n); /* uniform integer in [0, n), unbiased */
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

#endif
