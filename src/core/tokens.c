/* tokens.c - token file loading (.txt bytes or tokenizer, nanoGPT uint16/uint32 .bin, llm.c .bin
 * with header). */
#include "qscope/tokens.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qscope/tokenizer.h"

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
static unsigned char *slurp(const char *path, size_t factor, size_t *len, qs_err *e)
{
    struct stat st;
    int fd = qs_open_regular(path, "token file", &st, e);
    if (fd < 0)
        return NULL;
    char pb[256], what[300];
    const char *p = qs_clean_str(path, pb, sizeof pb, 0);
    size_t sz = (size_t)st.st_size;
    /* the file, then its ids (4 bytes each): both are held at once while converting; FACTOR
     * is the file's size plus the ids' per byte of file */
    snprintf(what, sizeof what, "%s: the token data", p);
    size_t both;
    if (qs_size_mul(sz, factor, &both) < 0 || qs_mem_check(both, what, e) < 0) {
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

static const char *width_name(int w)
{
    return w == QS_TOK_U32 ? "uint32" : "uint16";
}

/* An llm.c header at buf: its id width (2 or 4) and token count, or -1 with a message. */
static int llmc_header(const char *path, const unsigned char *buf, size_t len, int want, int *width,
                       size_t *cnt, qs_err *e)
{
    uint32_t magic = rd_u32(buf), ver = rd_u32(buf + 4), c = rd_u32(buf + 8);
    int w = magic == QS_LLMC_MAGIC_U32 ? QS_TOK_U32 : QS_TOK_U16;
    size_t data = len - 1024;
    if (magic == QS_LLMC_MAGIC && ver != 1 && ver != 2)
        return qs_errf(e, "%s: llm.c token header has version %u (expected 1 or 2)", path, ver);
    if (magic == QS_LLMC_MAGIC_U32 && ver != 7)
        return qs_errf(e, "%s: llm.c LLaMA-3 token header has version %u (expected 7)", path, ver);
    if (want != QS_TOK_AUTO && want != w)
        return qs_errf(e, "%s: the llm.c header says %s ids, not %s", path, width_name(w),
                       width_name(want));
    if (data % (size_t)w)
        return w == QS_TOK_U16
                   ? qs_errf(e, "%s: llm.c token data has an odd byte count (%zu)", path, data)
                   : qs_errf(e, "%s: llm.c uint32 token data has %zu bytes, not a multiple of 4",
                             path, data);
    if ((uint64_t)c * (uint64_t)w != data)
        return qs_errf(e, "%s: llm.c header says %u tokens but the file holds %zu", path, c,
                       data / (size_t)w);
    if (c == 0)
        return qs_errf(e, "%s: llm.c token file holds no tokens", path);
    *width = w;
    *cnt = c;
    return 0;
}

int qs_tokens_load(const char *path, struct qs_tokens **out, qs_err *e)
{
    return qs_tokens_load_as(path, QS_TOK_AUTO, NULL, out, e);
}

int qs_tokens_load_as(const char *path, int width, const struct qs_tokenizer *tok,
                      struct qs_tokens **out, qs_err *e)
{
    *out = NULL;
    int txt = ends_with(path, ".txt");
    if (txt && width != QS_TOK_AUTO)
        return qs_errf(e, "%s: dtype= applies to binary token files, not to text", path);
    size_t len = 0;
    unsigned char *buf = slurp(path, txt && !tok ? 5 : 3, &len, e);
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
    const unsigned char *data = buf;
    int w = width == QS_TOK_AUTO ? QS_TOK_U16 : width;
    uint32_t magic = len >= 1024 ? rd_u32(buf) : 0;
    if (magic == QS_LLMC_MAGIC || magic == QS_LLMC_MAGIC_U32) {
        if (llmc_header(path, buf, len, width, &w, &t->n, e) < 0) {
            free(buf);
            qs_tokens_free(t);
            return -1;
        }
        data = buf + 1024;
        snprintf(t->source, sizeof t->source, "llm.c %s ids", width_name(w));
    } else if (txt && tok) {
        int rc = qs_tokenizer_encode(tok, (const char *)buf, len, &t->ids, &t->n, e);
        free(buf);
        if (rc < 0 || t->n == 0) {
            if (rc == 0)
                qs_errf(e, "%s: the tokenizer produced no tokens", path);
            qs_tokens_free(t);
            return -1;
        }
        t->vocab = qs_tokenizer_vocab(tok);
        snprintf(t->source, sizeof t->source, "tokenizer.json (%s)", qs_tokenizer_kind(tok));
        *out = t;
        return 0;
    } else if (txt) {
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
        snprintf(t->source, sizeof t->source, "bytes (no tokenizer.json)");
        *out = t;
        return 0;
    } else {
        if (len % (size_t)w) {
            free(buf);
            qs_tokens_free(t);
            return w == QS_TOK_U16
                       ? qs_errf(e, "%s: uint16 token file has an odd byte count (%zu)", path, len)
                       : qs_errf(e, "%s: uint32 token file has %zu bytes, not a multiple of 4",
                                 path, len);
        }
        t->n = len / (size_t)w;
        snprintf(t->source, sizeof t->source, "%s ids", width_name(w));
    }
    /* little-endian ids of w bytes in data[0 .. w n) */
    t->ids = malloc(t->n * sizeof *t->ids);
    if (!t->ids) {
        free(buf);
        qs_tokens_free(t);
        return qs_errf(e, "%s: out of memory", path);
    }
    uint32_t mx = 0;
    for (size_t i = 0; i < t->n; i++) {
        const unsigned char *q = data + (size_t)w * i;
        t->ids[i] = w == QS_TOK_U32 ? rd_u32(q) : (uint32_t)(q[0] | q[1] << 8);
        if (t->ids[i] > mx)
            mx = t->ids[i];
    }
    free(buf);
    if (mx >= INT32_MAX) {
        qs_tokens_free(t);
        return qs_errf(e, "%s: token id %u is not a plausible vocabulary index", path, mx);
    }
    t->vocab = (int)mx + 1;
    *out = t;
    return 0;
}
