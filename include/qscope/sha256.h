/* sha256.h - SHA-256 (FIPS 180-4), used to pin the model and data files a session was recorded
 * with. Streaming interface plus a whole-file helper. */
#ifndef QSCOPE_SHA256_H
#define QSCOPE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

struct qs_sha256 {
    uint32_t h[8];
    uint64_t len;    /* bytes hashed so far */
    uint8_t buf[64]; /* partial block */
    size_t nbuf;
};

void qs_sha256_init(struct qs_sha256 *s);
void qs_sha256_update(struct qs_sha256 *s, const void *data, size_t n);
/* Finishes the hash into out (32 bytes); s must be re-initialised before reuse. */
void qs_sha256_final(struct qs_sha256 *s, uint8_t out[32]);
/* Lower-case hex of a digest: hex receives 64 characters and a NUL. */
void qs_sha256_hex(const uint8_t digest[32], char hex[65]);
/* Hash of a whole file (read in chunks, not mapped). -1 with "PATH: reason" on error. */
int qs_sha256_file(const char *path, char hex[65], qs_err *e);

#endif
