/* tokenizer.h - Hugging Face tokenizer.json BPE tokenizers: byte-level (GPT-2, LLaMA-3, Qwen2)
 * and SentencePiece-style (LLaMA-2, TinyLlama: "▁" for spaces, <0xNN> byte fallback).
 *
 * What is read from tokenizer.json, in the order Hugging Face `tokenizers` applies it:
 *   - added_tokens: their contents are cut out of the text first (leftmost, longest match, as
 *     written in the raw text; lstrip/rstrip/single_word are not applied) and map to their ids;
 *     the text between them goes through the steps below separately.
 *   - normalizer: null, NFC (utf8proc), Prepend, Replace (String patterns), Sequence of these.
 *   - pre_tokenizer: null, ByteLevel (add_prefix_space, use_regex: GPT-2's split pattern),
 *     Split (Regex or String pattern, behavior Isolated or Removed, invert false), Digits
 *     (SmolLM: digits isolated, one by one with individual_digits), Metaspace
 *     (replacement, prepend_scheme always|first|never, split), Sequence of these. Regex patterns
 *     are compiled with Oniguruma, the engine Hugging Face `tokenizers` itself uses, so the
 *     pattern's Unicode classes (\p{L}, \p{N}, \s) and its lookahead mean exactly what they mean
 *     there.
 *   - model: BPE only (vocab, merges as "a b" strings or [a, b] pairs, ignore_merges,
 *     byte_fallback, unk_token, fuse_unk).
 * Post-processors (BOS/EOS templates) are not applied: a data file is one long stream, not a
 * batch of prompts. Anything else is refused at load with a message naming it. */
#ifndef QSCOPE_TOKENIZER_H
#define QSCOPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

struct qs_tokenizer;

/* Loads a tokenizer.json (free with qs_tokenizer_free). Errors name the file and the part that
 * is missing or unsupported. *out is NULL on failure. */
int qs_tokenizer_load(const char *path, struct qs_tokenizer **out, qs_err *e);
/* NULL is fine. */
void qs_tokenizer_free(struct qs_tokenizer *t);

/* "byte-level BPE" or "SentencePiece BPE" (byte_fallback or a Metaspace/"▁" normalizer). */
const char *qs_tokenizer_kind(const struct qs_tokenizer *t);
/* One more than the largest id in the vocabulary and the added tokens. */
int qs_tokenizer_vocab(const struct qs_tokenizer *t);

/* Encodes text[0..len) (UTF-8; invalid bytes are kept as bytes, so a byte-level model still
 * sees them) into *ids (malloc'ed, owned by the caller; *n of them). No special tokens are
 * added. Errors: out of memory (checked with qs_mem_check), text that is not UTF-8 under an NFC
 * normalizer, a character with no token and neither byte fallback nor unk. */
int qs_tokenizer_encode(const struct qs_tokenizer *t, const char *text, size_t len, uint32_t **ids,
                        size_t *n, qs_err *e);

#endif
