/* tokens.c - token file loading (.txt bytes, nanoGPT uint16 .bin, llm.c .bin with header). */
#include "qscope/tokens.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void qs_tokens_free(struct qs_tokens *t)
{
    if (!t)
        return;
    free(t->ids);
    free(t->path);
    free(t);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Reads the whole file into a malloc'ed buffer; *len its size. Only a regular file: a FIFO
 * would block and a directory has no size to read. */
static unsigned char *slurp(const char *path, size_t *len, qs_err *e)
{
    struct stat st;
    int fd = qs_open_regular(path, "token file", &st, e);
    if (fd < 0)
        return NULL;
    char pb[256], what[300];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    size_t sz = (size_t)st.st_size;
    /* the file, then its ids (2 bytes each): both are held at once while converting */
    snprintf(what, sizeof what, "%s: the token data", p);
    size_t both;
    if (qs_size_mul(sz, 3, &both) < 0 || qs_mem_check(both, what, e) < 0) {
        if (both == 0)
            qs_errf(e, "%s: file too large", p);
        close(fd);
        return NULL;
    }
    unsigned char *buf = qs_alloc(sz ? sz : 1, 1, what, e);
    if (!buf) {
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < sz) {
        ssize_t r = read(fd, buf + got, sz - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            qs_errf(e, "%s: read error: %s", p, r < 0 ? strerror(errno) : "the file shrank");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    *len = sz;
    return buf;
}

static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int qs_tokens_load(const char *path, struct qs_tokens **out, qs_err *e)
{
    *out = NULL;
    size_t len = 0;
    unsigned char *buf = slurp(path, &len, e);
    if (!buf)
        return -1;
    struct qs_tokens *t = qs_calloc(1, sizeof *t);
    if (!t || !(t->path = qs_strdup(path))) {
        free(buf);
        qs_tokens_free(t);
        return qs_errf(e, "%s: out of memory", path);
    }
    if (len == 0) {
        free(buf);
        qs_tokens_free(t);
        return qs_errf(e, "%s: empty token file", path);
    }
    if (len >= 1024 && rd_u32(buf) == QS_LLMC_MAGIC) {
        uint32_t ver = rd_u32(buf + 4), cnt = rd_u32(buf + 8);
        int bad = 0;
        if (ver != 1 && ver != 2)
            bad = qs_errf(e, "%s: llm.c token header has version %u (expected 1 or 2)", path,
                          ver);
        else if ((len - 1024) % 2)
            bad = qs_errf(e, "%s: llm.c token data has an odd byte count (%zu)", path,
                          len - 1024);
        else if ((uint64_t)cnt * 2 != len - 1024)
            bad = qs_errf(e, "%s: llm.c header says %u tokens but the file holds %zu", path,
                          cnt, (len - 1024) / 2);
        else if (cnt == 0)
            bad = qs_errf(e, "%s: llm.c token file holds no tokens", path);
        if (bad) {
            free(buf);
            qs_tokens_free(t);
            return -1;
        }
        t->n = cnt;
        memmove(buf, buf + 1024, len - 1024);
        len -= 1024;
    } else if (ends_with(path, ".txt")) {
        t->n = len;
        t->vocab = 256;
        t->ids = malloc(len * sizeof *t->ids);
        if (!t->ids) {
            free(buf);
            qs_tokens_free(t);
            return qs_errf(e, "%s: out of memory", path);
        }
        for (size_t i = 0; i < len; i++)
            t->ids[i] = buf[i];
        free(buf);
        *out = t;
        return 0;
    } else {
        if (len % 2) {
            free(buf);
            qs_tokens_free(t);
            return qs_errf(e, "%s: uint16 token file has an odd byte count (%zu)", path, len);
        }
        t->n = len / 2;
    }
    /* uint16 little-endian ids in buf[0 .. 2n) */
    t->ids = malloc(t->n * sizeof *t->ids);
    if (!t->ids) {
        free(buf);
        qs_tokens_free(t);
        return qs_errf(e, "%s: out of memory", path);
    }
    int mx = 0;
    for (size_t i = 0; i < t->n; i++) {
        t->ids[i] = (uint16_t)(buf[2 * i] | buf[2 * i + 1] << 8);
        if (t->ids[i] > mx)
            mx = t->ids[i];
    }
    t->vocab = mx + 1;
    free(buf);
    *out = t;
    return 0;
}
