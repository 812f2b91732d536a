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

# export model X.gguf: ggml-typed sites keep their blocks, others are dequantized; reloaded, the
# float eval is the session's quantized eval
D=datasets/text/licenses.txt
evq() { $PY -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][-1]["quant"])'; }
evf() { $PY -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][-1]["float"])'; }
q=$($Q --no-default --json -c "load model $T/tl-f32.gguf; load data $D; quant * q4_k; quant *up_proj int4 gran=channel; quant *down_proj q6_k; eval; export model $T/x.gguf" 2>"$T/err" | evq)
f=$($Q --no-default --json -c "load model $T/x.gguf; load data $D; eval" 2>>"$T/err" | evf)
check export-roundtrip "[ -n '$q' ] && [ '$q' = '$f' ]"
[ -n "$q" ] && [ "$q" = "$f" ] || { echo "  session $q, reloaded $f"; cat "$T/err"; } >&2
out=$($Q --no-default -c "load model $HF; load data $D; quant * q8_0 ; correct lm_head bias; export model $T/y.gguf" 2>&1)
check export-refuses-like-llamacpp "grep -q 'no fallback for q8_0' <<<\"\$out\""
out=$($Q --no-default -c "load model $HF; load data $D; quant * q5_k; correct lm_head bias; export model $T/y.gguf" 2>&1)
check export-says-corrections-left-out "grep -q 'corrections left out.*lm_head' <<<\"\$out\" && [ -s $T/y.gguf ]"
f2=$($Q --no-default --json -c "load model $HF; load data $D; export model $T/z.gguf; load model $T/z.gguf; eval" 2>/dev/null | evf)
f1=$($Q --no-default --json -c "load model $HF; load data $D; eval" 2>/dev/null | evf)
# GGUF stores rms_norm_eps as f32 (1e-6 reads back as 9.99999997e-07): the reloaded model's
# figures agree to float rounding, not always to the last printed digit
check export-float-roundtrip "[ -n '$f1' ] && [ -n '$f2' ] && $PY -c '
import ast, sys
a, b = ast.literal_eval(sys.argv[1]), ast.literal_eval(sys.argv[2])
assert all(abs(a[k] - b[k]) <= 1e-7 * abs(a[k]) for k in (\"ppl\", \"loss\")), (a, b)
' \"\$f1\" \"\$f2\""
msg=$($Q -c "export model $T/m.gguf" 2>&1); rc=$?
check export-mlp-refused "[ $rc = 1 ] && grep -q 'not MLPs' <<<\"\$msg\" && [ ! -e $T/m.gguf ]"
msg=$($Q --no-default -c "load model datasets/models/tiny-gpt2; export model $T/g.gguf" 2>&1); rc=$?
check export-gpt2-refused "[ $rc = 1 ] && grep -q 'writes llama models' <<<\"\$msg\""
