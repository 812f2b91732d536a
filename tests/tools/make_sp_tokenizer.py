#!/usr/bin/python3
"""make_sp_tokenizer.py OUTDIR TRAIN.txt... - a small SentencePiece-style BPE tokenizer.json (the
layout LLaMA-2/TinyLlama ship: Prepend "▁" + Replace " " -> "▁" normalizer, no pre-tokenizer,
byte_fallback with <0x00>..<0xFF>, <unk>/<s>/</s>), merges learned by plain BPE on the training
text, written as OUTDIR/sp/tokenizer.json; and the same vocabulary behind a Metaspace
pre-tokenizer (the newer spelling) as OUTDIR/sp_meta/tokenizer.json. Characters seen fewer than
3 times are left out of the vocabulary so that byte fallback is exercised."""
import collections
import json
import os
import sys

out, files = sys.argv[1], sys.argv[2:]
text = "".join(open(f, encoding="utf-8").read() for f in files)
S = "\u2581"
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vocab["<0x%02X>" % b] = len(vocab)
chars = collections.Counter(text.replace(" ", S))
for c, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
    if n >= 3 and c not in vocab:
        vocab[c] = len(vocab)
# words as symbol tuples: "▁word" pieces of the normalized text
norm = S + text.replace(" ", S)
words = collections.Counter()
cur = ""
for ch in norm:
    if ch == S and cur:
        words[cur] += 1
        cur = ""
    cur += ch
if cur:
    words[cur] += 1
seqs = {w: [c for c in w] for w in words}
merges = []
for _ in range(400):
    pairs = collections.Counter()
    for w, n in words.items():
        s = seqs[w]
        for a, b in zip(s, s[1:]):
            if a in vocab and b in vocab:
                pairs[(a, b)] += n
    if not pairs:
        break
    (a, b), _n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
    merges.append([a, b])
    if a + b not in vocab:
        vocab[a + b] = len(vocab)
    for w in words:
        s, t, i = seqs[w], [], 0
        while i < len(s):
            if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                t.append(a + b)
                i += 2
            else:
                t.append(s[i])
                i += 1
        seqs[w] = t
added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
         "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
         "ignore_merges": False, "vocab": vocab, "merges": merges}
dec = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": S}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
sp = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
      "normalizer": {"type": "Sequence", "normalizers": [
          {"type": "Prepend", "prepend": S},
          {"type": "Replace", "pattern": {"String": " "}, "content": S}]},
      "pre_tokenizer": None, "post_processor": None, "decoder": dec, "model": model}
meta = dict(sp, normalizer=None, pre_tokenizer={
    "type": "Metaspace", "replacement": S, "prepend_scheme": "first", "split": False})
for name, o in (("sp", sp), ("sp_meta", meta)):
    os.makedirs(os.path.join(out, name), exist_ok=True)
    with open(os.path.join(out, name, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(o, f, ensure_ascii=False)
print(f"sp: vocab {len(vocab)}, {len(merges)} merges")
