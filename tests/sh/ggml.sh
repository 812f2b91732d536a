#!/usr/bin/env bash
# ggml.sh - llama.cpp's block formats against llama.cpp itself, and as qscope formats.
#
# The reference is llama.cpp's libggml-base.so from the npm package @node-llama-cpp/linux-x64,
# installed here (test set-up, never at run time) into build/npm; when npm cannot reach its
# registry the reference checks print one SKIP line instead.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS ggml.$1"; }
fail() { echo "FAIL ggml.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

NLC_VERSION=3.22.1
NPM_DIR=build/npm
LIB=$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so
if [ ! -f "$LIB" ] && command -v npm >/dev/null 2>&1; then
  mkdir -p "$NPM_DIR"
  timeout 600 npm install --prefix "$NPM_DIR" --no-save --no-audit --no-fund --ignore-scripts \
    "@node-llama-cpp/linux-x64@$NLC_VERSION" >"$T/npm.log" 2>&1 || cat "$T/npm.log" >&2
fi
if [ -f "$LIB" ] && [ -x build/tests/ggml_ref ]; then
  # one PASS/FAIL line per type and check (bytes, dequantized floats, qs_quant_fake)
  build/tests/ggml_ref "$LIB"
  # the same under ASan + UBSan when that build exists (make test builds it)
  if [ -x build-asan/tests/ggml_ref ]; then
    build-asan/tests/ggml_ref "$LIB" 2>>"$T/asan.log" | sed 's/^\(PASS\|FAIL\) /\1 asan:/'
    [ "${PIPESTATUS[0]}" = 0 ] || { fail "asan-ref"; cat "$T/asan.log" >&2; }
  fi
  # llama.cpp's own quantizer (llama_model_quantize, no imatrix) on F16 GGUFs written by
  # make_gguf_llama.py: a random LLaMA with 256-multiple widths in ten file types, and the
  # bundled tiny-llama in Q4_K_M, whose 64- and 172-wide rows take llama.cpp's fallbacks.
  # qscope's quantizer must reproduce every tensor's bytes; llama.cpp must accept our files.
  PY=/usr/bin/python3
  LIBDIR=$(dirname "$LIB")
  $PY tests/tools/make_gguf_llama.py --random-hf "$T/rl"
  $PY tests/tools/make_gguf_llama.py "$T/rl" "$T/rl-f16.gguf" f16
  $PY tests/tools/make_gguf_llama.py datasets/models/tiny-llama "$T/tl-f16.gguf" f16
  $PY tests/tools/llamacpp.py "$LIBDIR" accepts "$T/rl-f16.gguf" "$T/tl-f16.gguf" \
    tests/fixtures/gguf/blocks.gguf tests/fixtures/gguf/align64.gguf 2>>"$T/llama.log"
  # llama_ftype: 2 Q4_0, 3 Q4_1, 7 Q8_0, 8 Q5_0, 9 Q5_1, 10 Q2_K, 12 Q3_K_M, 15 Q4_K_M,
  # 17 Q5_K_M, 18 Q6_K
  for ft in 2 3 7 8 9 10 12 15 17 18; do
    if $PY tests/tools/llamacpp.py "$LIBDIR" quantize "$T/rl-f16.gguf" "$T/rl-ft$ft.gguf" $ft \
      >>"$T/llama.log" 2>&1; then
      build/tests/ggml_ref --pair "$T/rl-f16.gguf" "$T/rl-ft$ft.gguf"
    else
      fail "llamacpp-quantize.ftype$ft"; tail -3 "$T/llama.log" >&2
    fi
  done
  # qscope's own GGUF export of a k-quantized session: llama.cpp reads it, and its tensors are
  # the blocks of the F16 source quantized (RoPE row order, names, layout as llama.cpp's)
  $Q --no-default -c "load model $T/rl-f16.gguf; quant * q4_k; quant *down_proj q6_k; quant lm_head q8_0; export model $T/rl-qs.gguf" >/dev/null 2>&1
  $PY tests/tools/llamacpp.py "$LIBDIR" accepts "$T/rl-qs.gguf" 2>>"$T/llama.log"
  build/tests/ggml_ref --pair "$T/rl-f16.gguf" "$T/rl-qs.gguf"
  # llama.cpp's model loader takes qscope's export as a llama (keys, names, shapes): it
  # quantizes the float export to Q4_K_M, bytes as qscope's
  $Q --no-default -c "load model $T/rl; export model $T/rl-qsf.gguf" >/dev/null 2>&1
  if $PY tests/tools/llamacpp.py "$LIBDIR" quantize "$T/rl-qsf.gguf" "$T/rl-qsf-q4km.gguf" 15 \
    >>"$T/llama.log" 2>&1; then
    build/tests/ggml_ref --pair "$T/rl-qsf.gguf" "$T/rl-qsf-q4km.gguf"
  else
    fail "llamacpp-loads-qscope-export"; tail -3 "$T/llama.log" >&2
  fi
  if $PY tests/tools/llamacpp.py "$LIBDIR" quantize "$T/tl-f16.gguf" "$T/tl-q4km.gguf" 15 \
    >>"$T/llama.log" 2>&1; then
    build/tests/ggml_ref --pair "$T/tl-f16.gguf" "$T/tl-q4km.gguf"
    # and the workbench opens llama.cpp's Q4_K_M file
    out=$($Q --no-default --json -c "load model $T/tl-q4km.gguf; load data datasets/text/licenses.txt; eval" 2>&1 | tail -1)
    check q4km-file-loads "$PY -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"float\"][\"ppl\"] < 4' '$out'"
  else
    fail "llamacpp-quantize.tiny-llama"; tail -3 "$T/llama.log" >&2
  fi
elif [ ! -x build/tests/ggml_ref ]; then
  fail "ref (build/tests/ggml_ref missing: run make unit)"
else
  echo "SKIP ggml.ref: npm could not install @node-llama-cpp/linux-x64 (registry unreachable?)"
fi

# Bits per weight counted from the real blocks (layers reports them): a 512-wide toy model.
python3 - "$T" <<'PY'
import json, struct, sys, random
T = sys.argv[1]
random.seed(1)
def tensor(shape):
    n = 1
    for s in shape: n *= s
    return [random.gauss(0, 0.05) for _ in range(n)]
tensors = {"0.weight": ([8, 512], tensor([8, 512])), "0.bias": ([8], tensor([8])),
           "2.weight": ([4, 8], tensor([4, 8])), "2.bias": ([4], tensor([4]))}
hdr, data = {}, b""
for k, (shape, vals) in tensors.items():
    b = struct.pack("<%df" % len(vals), *vals)
    hdr[k] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
    data += b
h = json.dumps(hdr).encode()
open(T + "/m.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
bpw() { # format -> bits per weight of layer 0 from `layers` JSON
  $Q --no-default --json -c "load model $T/m.safetensors; quant 0 $1; layers" 2>&1 |
    python3 -c 'import json,sys
for l in sys.stdin:
    o = json.loads(l)
    if o.get("cmd") == "layers": print(o["layers"][0]["bits_per_weight"])'
}
for f in "q8_0 8.5" "q4_0 4.5" "q4_1 5" "q5_0 5.5" "q5_1 6" "q2_k 2.625" "q3_k 3.4375" \
         "q4_k 4.5" "q5_k 5.5" "q6_k 6.5625"; do
  set -- $f
  got=$(bpw "$1")
  check "bpw.$1" "[ '$got' = '$2' ]" || true
  [ "$got" = "$2" ] || echo "  $1: bits per weight $got, expected $2" >&2
done

# Rows that are not a multiple of the block: llama.cpp's fallback (q4_k -> q5_0 on 8-wide rows
# is impossible: 8 is not a multiple of 32 either, so F16) and its refusal for 32-element types.
out=$($Q --no-default --json -c "load model $T/m.safetensors; quant 2 q4_k; layers" 2>&1 |
  python3 -c 'import json,sys
for l in sys.stdin:
    o = json.loads(l)
    if o.get("cmd") == "layers": print(o["layers"][1]["bits_per_weight"])')
check fallback-f16 "[ '$out' = '16' ]"
msg=$($Q --no-default -c "load model $T/m.safetensors; quant 2 q8_0" 2>&1); rc=$?
check refuse-legacy "[ $rc = 1 ] && grep -q 'no fallback for q8_0' <<<\"\$msg\""
msg=$($Q --no-default -c "load model $T/m.safetensors; quant 0 q4_k gran=group:32" 2>&1); rc=$?
check options-refused "[ $rc = 1 ] && grep -q 'do not apply' <<<\"\$msg\""

# The packed export carries the ggml blocks byte for byte: reloading it gives the quantized model.
$Q -c "quant * q6_k; export model $T/p.safetensors packed" >/dev/null 2>&1
q=$($Q --json -c 'quant * q6_k; eval' 2>/dev/null | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["quant"]["loss"])')
f=$($Q --no-default --json -c "load model $T/p.safetensors; load data datasets/digits.csv; eval" 2>/dev/null | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["float"]["loss"])')
check packed-export-roundtrip "[ -n '$q' ] && [ '$q' = '$f' ]"
