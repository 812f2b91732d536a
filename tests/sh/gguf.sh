#!/usr/bin/env bash
# gguf.sh - llama.cpp GGUF files as models: the bundled tiny-llama written as GGUF from the
# specification (tests/tools/make_gguf_llama.py, not by qscope) loads into the same model as its
# Hugging Face folder, and a bad file gives one message naming it.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
PY=/usr/bin/python3
pass() { echo "PASS gguf.$1"; }
fail() { echo "FAIL gguf.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

HF=datasets/models/tiny-llama
for k in f32 f16 q8_0; do $PY tests/tools/make_gguf_llama.py $HF "$T/tl-$k.gguf" $k; done
# weights bit for bit (RoPE permutation undone), logits within 1e-4: PASS/FAIL lines
build/tests/lm_gguf_check $HF "$T/tl-f32.gguf" "$T/tl-f16.gguf" "$T/tl-q8_0.gguf"

loss() { # model -> held-out float loss of eval
  $Q --no-default --json -c "load model $1; load data datasets/text/licenses.txt; eval" 2>/dev/null |
    tail -1 | $PY -c 'import json,sys; print(json.load(sys.stdin)["float"]["loss"])'
}
a=$(loss $HF); b=$(loss "$T/tl-f32.gguf")
check eval-same-as-folder "$PY -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); assert abs(a-b)<=1e-6*abs(a)' '$a' '$b'"

# the whole workbench runs on it: quantize, error, save and replay a session
$Q --no-default -c "load model $T/tl-f32.gguf; load data datasets/text/licenses.txt; quant * q4_k; eval; error; save session $T/s.qs" >"$T/out" 2>&1
check session-replays "$Q --replay $T/s.qs --check >/dev/null 2>&1 && grep -q 'tl-f32.gguf sha256=' $T/s.qs"

bad() { # name, file, expected words
  msg=$($Q --no-default -c "load model $2" 2>&1); rc=$?
  if [ $rc = 1 ] && grep -q "$(basename "$2")" <<<"$msg" && grep -qi -- "$3" <<<"$msg" && [ "$(wc -l <<<"$msg")" = 1 ]; then
    pass "bad.$1"
  else
    fail "bad.$1"; echo "  got (rc=$rc): $msg" >&2
  fi
}
bad truncated tests/fixtures/gguf/bad/truncated-data.gguf "past the end"
bad overlap tests/fixtures/gguf/bad/overlap.gguf "overlap"
bad unknown-type tests/fixtures/gguf/bad/type-unknown.gguf "unknown ggml type"
bad lying-count tests/fixtures/gguf/bad/lying-tensor-count.gguf "claims"
bad not-llama tests/fixtures/gguf/blocks.gguf "architecture 'test' is not supported"
head -c 100 "$T/tl-f32.gguf" >"$T/cut.gguf"; bad cut "$T/cut.gguf" "truncated\|past the end\|claims"
# an IQ tensor in a llama file: named, with what is supported
$PY - "$T" <<'PY'
import struct, sys
sys.path.insert(0, "tests/tools")
from make_gguf import gguf, STRING, U32, F32T
T = sys.argv[1]
kv = [("general.architecture", STRING, "llama"), ("llama.context_length", U32, 16),
      ("llama.embedding_length", U32, 256), ("llama.block_count", U32, 1),
      ("llama.feed_forward_length", U32, 256), ("llama.attention.head_count", U32, 4),
      ("llama.attention.layer_norm_rms_epsilon", F32T, 1e-5)]
t = [("token_embd.weight", [256, 4], 16, b"\0" * 66 * 4)]
open(T + "/iq.gguf", "wb").write(gguf(kv, t))
PY
bad iq-type "$T/iq.gguf" "iq2_xxs.*cannot decode"
