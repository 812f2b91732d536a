#!/usr/bin/env bash
# lm_ctx.sh - `set ctx N`: a transformer's windows shorter than its context (as llama.cpp's
# perplexity -c). eval's float loss at ctx 32 on the bundled tiny GPT-2 and LLaMA (context 64)
# equals a float64 PyTorch forward over the same held-out windows of 32 tokens
# (tests/tools/ctx_ref.py), and `set ctx model` gives back the whole-context figure; a
# calibration budget in tokens becomes windows of the new length; the setting holds for a model
# loaded after it (up to that model's context), is journaled and replays with --check; bad
# values and MLPs are refused.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=${QSCOPE_BIN:-./qscope}
PY=/usr/bin/python3
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
pass() { echo "PASS lm_ctx.$1"; }
fail() { echo "FAIL lm_ctx.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
D=datasets/text/licenses.bin
# field KEY of the first JSON line of command CMD in file F (numbers and plain values)
jget() { grep "\"cmd\":\"$2\"" "$1" | head -1 | $PY -c "import json,sys; o=json.loads(sys.stdin.read()); print(eval('o' + sys.argv[1]))" "$3"; }
close() { $PY -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 2e-6 * max(1, abs(b)))' "$1" "$2"; }

for m in tiny-gpt2 tiny-llama; do
  M=datasets/models/$m
  $Q --no-default --json -c "load model $M; load data $D; eval; set ctx 32; eval; set ctx model; eval" >"$T/$m.out" 2>&1
  read -r ref n < <($PY tests/tools/ctx_ref.py "$M" "$D" 32)
  read -r ref64 n64 < <($PY tests/tools/ctx_ref.py "$M" "$D" 64)
  got=$(grep '"cmd":"eval"' "$T/$m.out" | sed -n 2p | $PY -c 'import json,sys; o=json.loads(sys.stdin.read()); print(o["float"]["loss"], o["tokens"])')
  check "$m-ctx32-vs-torch" "[ -n '$ref' ] && close '${got% *}' '$ref' && [ '${got#* }' = '$n' ]"
  [ -n "$ref" ] && close "${got% *}" "$ref" || echo "  $m: qscope $got, torch $ref $n" >&2
  first=$(grep '"cmd":"eval"' "$T/$m.out" | sed -n 1p | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["float"]["loss"])')
  last=$(grep '"cmd":"eval"' "$T/$m.out" | sed -n 3p | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["float"]["loss"])')
  check "$m-ctx-model-back" "close '$first' '$ref64' && [ '$first' = '$last' ]"
done

# the budget in tokens: 512 tokens are 8 windows of 64, then 16 of 32; held-out windows follow
$Q --no-default --json -c "load model datasets/models/tiny-gpt2; load data $D; set calib tokens=512; info; set ctx 32; info; set ctx" >"$T/calib.out" 2>&1
check calib-tokens-rewindowed "[ \"\$(grep '\"cmd\":\"info\"' $T/calib.out | $PY -c 'import json,sys; print(*[json.loads(l)[\"split\"][\"calib\"] for l in sys.stdin])')\" = '8 16' ]"
check show-ctx "grep -q '\"ctx\":32,\"n_positions\":64' $T/calib.out"

# a model loaded after the setting takes it (both bundled models' context is 64)
$Q --no-default --json -c "load model datasets/models/tiny-gpt2; set ctx 16; load model datasets/models/tiny-llama; load data $D; info" >"$T/later.out" 2>&1
check later-model-keeps "[ \"\$(jget $T/later.out info '[\"split\"][\"ctx\"]')\" = 16 ]"

# refused: longer than the context, zero, not a number, an MLP
for bad in 65 0 x; do
  out=$($Q --no-default -c "load model datasets/models/tiny-gpt2; set ctx $bad" 2>&1)
  check "refuses-$bad" "[ \$? -ne 0 ] || grep -q 'set ctx' <<<\"\$out\""
  grep -q "set ctx" <<<"$out" || echo "  set ctx $bad: $out" >&2
done
out=$($Q --no-default -c "load model datasets/models/digits-mlp.safetensors; set ctx 8" 2>&1)
check refuses-mlp "grep -q 'set ctx applies to transformers' <<<\"\$out\""

# journaled: a saved session replays with the same numbers
$Q --no-default -c "load model datasets/models/tiny-llama; load data $D; set ctx 32; quant * int4; eval; error; save session $T/s.qs" >/dev/null 2>&1
check journaled "grep -q '^set ctx 32' $T/s.qs && $Q --replay $T/s.qs --check >$T/replay.out 2>&1"
