#!/usr/bin/env bash
# make_llama256_gguf.sh - llama.cpp's own Q4_K_M of the bundled llama256, as committed in
# datasets/models/llama256-q4km.gguf:
#   1. tests/tools/make_gguf_llama.py writes the folder as an F16 GGUF (2-D tensors F16, norms F32,
#      the converter's names, keys and RoPE row order; written from the GGUF specification, not
#      by qscope);
#   2. llama.cpp's llama_model_quantize (libllama.so of the npm package @node-llama-cpp/linux-x64,
#      3.22.1, through tests/tools/llamacpp.py) makes the Q4_K_M file, llama_ftype 15, no
#      importance matrix.
# Both steps are deterministic: the output is byte-identical on every run (tests/sh/gguf.sh
# remakes it and compares). Usage, from the repository root:
#   bash datasets/tools/make_llama256_gguf.sh [OUT.gguf]   (default: datasets/models/llama256-q4km.gguf)
set -eu
cd "$(dirname "$0")/../.."
OUT=${1:-datasets/models/llama256-q4km.gguf}
NPM_DIR=build/npm
LIBDIR=$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
if [ ! -f "$LIBDIR/libggml-base.so" ]; then
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --no-save --no-audit --no-fund --ignore-scripts \
    "@node-llama-cpp/linux-x64@3.22.1" >/dev/null
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
/usr/bin/python3 tests/tools/make_gguf_llama.py datasets/models/llama256 "$T/llama256-f16.gguf" f16
/usr/bin/python3 tests/tools/llamacpp.py "$LIBDIR" quantize "$T/llama256-f16.gguf" "$T/q.gguf" 15 \
  >"$T/log" 2>&1 || { cat "$T/log" >&2; exit 1; }
mv "$T/q.gguf" "$OUT"
