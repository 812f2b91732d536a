/* common.c - error buffer, deterministic RNG, glob matching. */
#include "qscope/common.h"

#include <errno.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

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

double qs_rng_uniform(qs_rng *r) { return (double)(qs_rng_u64(r) >> 11) * 0x1.0p-53; }

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

void *qs_calloc(size_t n, size_t size) { return calloc(n ? n : 1, size ? size : 1); }

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

int qs_glob_match(const char *pattern, const char *name) { return fnmatch(pattern, name, 0) == 0; }

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
