/* tokens.h - token streams for language models: byte-level text, nanoGPT and llm.c .bin files.
 *
 * Formats (chosen by content and extension):
 *   - llm.c .bin: a header of 256 little-endian int32 with header[0] = 20240520 (magic),
 *     header[1] = 1 or 2 (version), header[2] = number of tokens, then that many uint16 ids;
 *     recognised by the magic whatever the extension.
 *   - nanoGPT .bin (any other file not ending in .txt): raw little-endian uint16 ids.
 *   - .txt: every byte is one token id (byte-level vocabulary of 256). */
#ifndef QSCOPE_TOKENS_H
#define QSCOPE_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

struct qs_tokens {
    uint16_t *ids; /* (n) token ids, owned */
    size_t n;
    int vocab;     /* 256 for .txt, else max id + 1 */
    char *path;    /* the file it was loaded from, owned */
};

#define QS_LLMC_MAGIC 20240520

/* Loads PATH into *out (free with qs_tokens_free). Errors name the file: not a regular file (a
 * FIFO, a directory), more than the memory available (qs_mem_check), missing/unreadable,
 * empty, an odd byte count for uint16 data, an llm.c header with an unknown version or a token
 * count that disagrees with the file size. *out is NULL on failure. */
int qs_tokens_load(const char *path, struct qs_tokens **out, qs_err *e);
/* NULL is fine. */
void qs_tokens_free(struct qs_tokens *t);

#endif
