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

# ---- a quantized GGUF beside its float original (load reference) ----------------------------
# The bundled llama256 and llama.cpp's own Q4_K_M of it (datasets/PROVENANCE.md).
QG=datasets/models/llama256-q4km.gguf
RF=datasets/models/llama256
PAIR="load model $QG; load data $D; load reference $RF"
# the folder's recorded perplexity (F16 weights, float64 torch) is what qscope evaluates
ppl=$($Q --no-default --json -c "load model $RF; load data $D; eval" 2>/dev/null | evf)
check llama256-recorded-ppl "$PY -c '
import ast, sys
a = ast.literal_eval(sys.argv[1])
assert abs(a[\"ppl\"] - 3.854929) <= 2e-6 * 3.854929, a' \"\$ppl\""
# The strong check: llama.cpp's blocks on the quantized path give exactly the figures of qscope
# quantizing the float folder itself with the same ggml types (qscope's quantizer is byte-exact
# with llama.cpp's reference rounding, which Q4_K_M without an importance matrix uses): eval and
# error JSON identical, so the pairing maps every tensor to its site (names, RoPE row order).
$Q --no-default --json -c "$PAIR; eval; error" 2>"$T/perr" | grep -E '"cmd":"(eval|error)"' >"$T/pair.json"
$Q --no-default --json -c "load model $RF; load data $D; quant * q4_k; quant *v_proj q6_k; quant *down_proj q6_k; quant lm_head q6_k; eval; error" 2>/dev/null |
  grep -E '"cmd":"(eval|error)"' >"$T/own.json"
check pair-equals-own-quantization "[ \$(wc -l <$T/pair.json) = 2 ] && cmp -s $T/pair.json $T/own.json"
cmp -s "$T/pair.json" "$T/own.json" || { echo "  pairing vs qscope's own q4_k/q6_k:"; diff "$T/pair.json" "$T/own.json" | head -4; cat "$T/perr"; } >&2
# and it differs from the GGUF alone (whose dequantized weights are both paths: KL 0)
kl=$($Q --no-default --json -c "$PAIR; eval" 2>/dev/null | $PY -c 'import json,sys; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][-1]["kl"])')
check pair-kl-positive "$PY -c 'import sys; assert 1e-4 < float(sys.argv[1]) < 1e-2' '$kl'"
# rules: the GGUF's own type per site, grouped, with the ggml tensor names
out=$($Q --no-default -c "$PAIR; rules" 2>&1)
check rules-show-gguf-types "grep -q '^ 1  \* *gguf .*on=w .*paired GGUF' <<<\"\$out\" &&
  grep -qE '^ +gguf:q4_k +model.layers.0.self_attn.q_proj \(blk.0.attn_q\), model.layers.0.self_attn.k_proj \(blk.0.attn_k\), model.layers.0.self_attn.o_proj \(blk.0.attn_output\), model.layers.0.mlp.gate_proj \(blk.0.ffn_gate\), model.layers.0.mlp.up_proj \(blk.0.ffn_up\)$' <<<\"\$out\" &&
  grep -qE '^ +gguf:q6_k +model.layers.0.self_attn.v_proj \(blk.0.attn_v\), model.layers.0.mlp.down_proj \(blk.0.ffn_down\), lm_head \(token_embd\)$' <<<\"\$out\""
js=$($Q --no-default --json -c "$PAIR; rules" 2>/dev/null | tail -1)
check rules-json-sites "$PY -c '
import json, sys
r = json.loads(sys.argv[1])[\"rules\"][0]
s = {x[\"name\"]: (x[\"format\"], x[\"tensor\"]) for x in r[\"sites\"]}
assert r[\"format\"] == \"gguf\" and len(s) == 8, r
assert s[\"model.layers.0.mlp.down_proj\"] == (\"gguf:q6_k\", \"blk.0.ffn_down\"), s' '$js'"
# a quant rule on top re-quantizes from the float reference and says so; quant PATTERN gguf
# gives the GGUF's weights back (the same figures as before)
out=$($Q --no-default --json -c "$PAIR; quant *o_proj int4 gran=channel; quant *o_proj gguf; eval; error" 2>/dev/null | grep -E '"cmd":"(eval|error)"')
check quant-gguf-restores "[ \"\$out\" = \"\$(cat $T/pair.json)\" ]"
out=$($Q --no-default -c "$PAIR; quant *mlp* q6_k" 2>&1)
check quant-on-top-says-requantized "grep -q '^3 sites re-quantized from the float reference instead of taking the GGUF' <<<\"\$out\""
# mismatches are refused, the first difference named, and nothing changes
msg=$($Q --no-default -c "load model $QG; load reference datasets/models/tiny-llama" 2>&1); rc=$?
check reference-mismatch-refused "[ $rc = 1 ] && grep -q 'the reference datasets/models/tiny-llama differs from the GGUF datasets/models/llama256-q4km.gguf: hidden size 64 (reference) vs 256 (GGUF)' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $QG; load reference $T/tl-f16.gguf" 2>&1); rc=$?
check reference-mismatch-gguf "[ $rc = 1 ] && grep -q 'differs from the GGUF .*: hidden size 64 (reference) vs 256 (GGUF)' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $RF; load reference $RF" 2>&1); rc=$?
check reference-needs-gguf-model "[ $rc = 1 ] && grep -q 'the model must be a quantized llama.cpp GGUF' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $T/tl-f16.gguf; load reference $QG" 2>&1); rc=$?
check reference-must-be-float "[ $rc = 1 ] && grep -q 'is not a float model: tensor .* is q' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $RF; quant * gguf" 2>&1); rc=$?
check gguf-rule-needs-pairing "[ $rc = 1 ] && grep -q 'format gguf takes a paired GGUF' <<<\"\$msg\""
# a new model drops the pairing and its rules
out=$($Q --no-default -c "$PAIR; load model $RF; rules" 2>&1)
check new-model-drops-pairing "grep -q 'no rules: every layer in float' <<<\"\$out\""
# sessions: both files pinned by SHA-256, replayed with --check; a changed reference is refused
$Q --no-default -c "$PAIR; quant *up_proj q5_k; eval; save session $T/p.qs" >/dev/null 2>&1
check session-pins-both "grep -q '^# model $QG sha256=' $T/p.qs && grep -q '^# model $RF sha256=' $T/p.qs && grep -q '^load reference $RF\$' $T/p.qs"
check session-pair-replays "$Q --replay $T/p.qs --check 2>&1 | grep -q ', 0 differ\$'"
cp -r $RF "$T/rf" && sed "s#$RF#$T/rf#g" "$T/p.qs" >"$T/p2.qs"
printf '\x01' | dd of="$T/rf/model.safetensors" bs=1 seek=4000 conv=notrunc status=none
msg=$($Q --replay "$T/p2.qs" --check 2>&1); rc=$?
check session-changed-reference-refused "[ $rc = 1 ] && grep -q 'model $T/rf has changed' <<<\"\$msg\""
# GGUF export of the pairing: llama.cpp's site tensors come back byte for byte (attn_q/attn_k in
# the converter's RoPE order again; the tied head's blocks as output.weight)
$Q --no-default -c "$PAIR; export model $T/back.gguf" >/dev/null 2>&1
$PY tests/tools/gguf_tensors.py $QG | sed 's/^token_embd.weight q6_K/output.weight q6_K/' | grep -E '^(blk|output\.weight)' | sort >"$T/a.t"
$PY tests/tools/gguf_tensors.py "$T/back.gguf" | grep -E '^(blk|output\.weight)' | sort >"$T/b.t"
check export-pair-keeps-llamacpp-blocks "[ \$(wc -l <$T/a.t) = 10 ] && cmp -s $T/a.t $T/b.t"
# a packed export of the pairing records the blocks as their ggml format and reloads into the
# quantized model
q=$($Q --no-default --json -c "$PAIR; eval; export model $T/pk packed" 2>/dev/null | evq)
f=$($Q --no-default --json -c "load model $T/pk; load data $D; eval" 2>/dev/null | evf)
check packed-export-pair-roundtrip "[ -n '$q' ] && [ '$q' = '$f' ]"
# the committed Q4_K_M is llama.cpp's: remade from the folder, byte for byte (needs the npm
# package that tests/sh/ggml.sh installs)
if [ -f build/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.5.0.so ] ||
   ls build/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama*.so >/dev/null 2>&1; then
  bash datasets/tools/make_llama256_gguf.sh "$T/remade.gguf" 2>"$T/mk.log"
  check llama256-q4km-is-llamacpps "cmp -s $T/remade.gguf $QG"
else
  echo "SKIP gguf.llama256-q4km-is-llamacpps: llama.cpp's npm package is not installed (tests/sh/ggml.sh installs it)"
fi
