/* tokens.h - token streams for language models: text, nanoGPT and llm.c .bin files.
 *
 * Formats (chosen by content, extension and the caller's width):
 *   - llm.c .bin: a header of 256 little-endian int32, then the ids; recognised by its magic
 *     whatever the extension. header[0] = 20240520 (GPT-2: version 1 or 2, uint16 ids) or
 *     20240801 (LLaMA-3: version 7, uint32 ids); header[2] = the number of tokens.
 *   - nanoGPT .bin (any other file not ending in .txt): raw little-endian ids, uint16 unless the
 *     caller says uint32 (`load data x.bin dtype=uint32`): nothing in a raw file tells the two
 *     apart, and nanoGPT writes uint16.
 *   - .txt: with a tokenizer (a model folder's tokenizer.json), its ids; without one, every byte
 *     is one token id (byte-level vocabulary of 256). */
#ifndef QSCOPE_TOKENS_H
#define QSCOPE_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

struct qs_tokenizer;

struct qs_tokens {
    uint32_t *ids; /* (n) token ids, owned */
    size_t n;
    int vocab;       /* 256 for byte-level .txt, the tokenizer's for tokenized text, else
                      * max id + 1 */
    char *path;      /* the file it was loaded from, owned */
    char source[96]; /* how the ids were read: "uint16 ids", "llm.c uint32 ids", "bytes",
                      * "tokenizer.json (byte-level BPE)", ... (for `info`) */
};

#define QS_LLMC_MAGIC 20240520
#define QS_LLMC_MAGIC_U32 20240801 /* llm.c's LLaMA-3 files: version 7, uint32 ids */

/* Width of the ids in a raw .bin: QS_TOK_AUTO = the header's, else uint16. */
enum { QS_TOK_AUTO = 0, QS_TOK_U16 = 2, QS_TOK_U32 = 4 };

/* Loads PATH into *out (free with qs_tokens_free): qs_tokens_load_as(path, QS_TOK_AUTO, NULL). */
int qs_tokens_load(const char *path, struct qs_tokens **out, qs_err *e);
/* Loads PATH with ids of WIDTH bytes for raw .bin files (QS_TOK_U16/U32; an llm.c header must
 * agree with a width given) and TOK (may be NULL: bytes) for .txt. Errors name the file: not a
 * regular file (a FIFO, a directory), more than the memory available (qs_mem_check),
 * missing/unreadable, empty, a byte count that is not a multiple of the width, an llm.c header
 * with an unknown version or a token count that disagrees with the file size, a width given for
 * a .txt file, the tokenizer's errors. *out is NULL on failure. */
int qs_tokens_load_as(const char *path, int width, const struct qs_tokenizer *tok,
                      struct qs_tokens **out, qs_err *e);
/* NULL is fine. */
void qs_tokens_free(struct qs_tokens *t);

#endif
