#!/usr/bin/env bash
# robust_load.sh - the loaders as an attacker and an unlucky user meet them (issue 11): lying
# Hugging Face configs, FIFOs and directories where a file is expected, a model file truncated
# or overwritten between two commands, a memory limit, a full device, terminal escapes in
# metadata and a CSV with a byte order mark. Every qscope run is under `timeout`, so a hang is a
# FAIL, and an exit status above 128 (a signal) is a FAIL too.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
QR_PID=
cleanup() {
  [ -n "$QR_PID" ] && kill "$QR_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
Q=${QSCOPE_BIN:-./qscope}
pass() { echo "PASS robust_load.$1"; }
fail() { echo "FAIL robust_load.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; echo "  got (rc=$rc): $msg" >&2; fi; }
run() { msg=$(timeout 20 $Q --no-default -c "$1" 2>&1); rc=$?; }

python3 - "$T" <<'PY'
import json, struct, sys
T = sys.argv[1]
def st(path, tensors, meta=None):
    header, data, off = {}, b"", 0
    if meta:
        header["__metadata__"] = meta
    for name, shape, vals in tensors:
        b = struct.pack(f"<{len(vals)}f", *vals)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
def mlp(path, n, meta_extra=None):
    meta = {"qscope.arch": "mlp", "qscope.layers": "fc0,fc1", "qscope.acts": "relu,none"}
    meta.update(meta_extra or {})
    st(path, [("fc0.weight", [n, 2], [0.01 * (i % 7) for i in range(2 * n)]),
              ("fc0.bias", [n], [0.0] * n),
              ("fc1.weight", [2, n], [0.02 * (i % 5) for i in range(2 * n)]),
              ("fc1.bias", [2], [0.0, 0.0])], meta)
# 2 x 4096 weights (32 KB each): several pages, so a truncation leaves reads past the end
mlp(f"{T}/big.safetensors", 4096)
mlp(f"{T}/nolayer.safetensors", 4, {"qscope.layers": "fc0,fc9"})
mlp(f"{T}/esc.safetensors", 4, {"note": "\x1b[2J\x1b]0;pwned\x07done", "\x1b[31mkey": "v"})
# a 2 -> 512 -> 512 -> 2 MLP: quantizing its middle layer needs 2 MB
st(f"{T}/wide.safetensors",
   [("fc0.weight", [512, 2], [0.01] * 1024), ("fc0.bias", [512], [0.0] * 512),
    ("fc1.weight", [512, 512], [0.001 * (i % 13) for i in range(512 * 512)]),
    ("fc1.bias", [512], [0.0] * 512),
    ("fc2.weight", [2, 512], [0.01] * 1024), ("fc2.bias", [2], [0.0, 0.0])],
   {"qscope.arch": "mlp", "qscope.layers": "fc0,fc1,fc2", "qscope.acts": "relu,relu,none"})
open(f"{T}/bom.csv", "wb").write(b"\xef\xbb\xbf0.5,0.25,0\n1.5,-0.5,1\n0.1,0.2,1\n-1,1,0\n")
PY

# ---- lying Hugging Face configs (item 2, item 17)
hf() { # dir, n_layer
  mkdir -p "$T/$1"
  cp datasets/models/tiny-gpt2/model.safetensors "$T/$1/"
  python3 - datasets/models/tiny-gpt2/config.json "$T/$1/config.json" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["n_layer"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2], "w"))
PY
}
hf deep 300000000
run "load model $T/deep"
check hf-n-layer-300000000 '[ $rc = 1 ] && grep -q "300000000" <<<"$msg"'
hf shallow 1
run "load model $T/shallow"
check hf-under-reported-n-layer '[ $rc = 1 ] && grep -q "tensor .h\.1\..*not used" <<<"$msg"'
run "load model $T/nolayer.safetensors"
check loader-path-once '[ $rc = 1 ] && grep -q "has no tensor .fc9.weight" <<<"$msg" && [ $(grep -o "nolayer.safetensors" <<<"$msg" | wc -l) = 1 ]'

# ---- FIFOs and directories (item 3, item 17)
mkfifo "$T/fifo.safetensors" "$T/fifo.csv" "$T/fifo.bin"
mkdir -p "$T/fifocfg" "$T/dir.bin"
cp datasets/models/tiny-gpt2/model.safetensors "$T/fifocfg/"
mkfifo "$T/fifocfg/config.json"
run "load model $T/fifo.safetensors"
check fifo-model '[ $rc = 1 ] && grep -q "FIFO" <<<"$msg"'
run "load model $T/fifocfg"
check fifo-config-json '[ $rc = 1 ] && grep -q "FIFO" <<<"$msg"'
run "load model datasets/models/moons-mlp.safetensors; load data $T/fifo.csv"
check fifo-csv '[ $rc = 1 ] && grep -q "FIFO" <<<"$msg"'
run "load model datasets/models/tiny-gpt2; load data $T/fifo.bin"
check fifo-token-file '[ $rc = 1 ] && grep -q "FIFO" <<<"$msg"'
run "load model datasets/models/tiny-gpt2; load data $T/dir.bin"
check directory-token-file '[ $rc = 1 ] && grep -q "is a directory" <<<"$msg" && ! grep -q "out of memory" <<<"$msg"'

# ---- a model file that changes between two commands (item 4): the REPL through a pipe, the
# test changes the file between lines and waits for each answer (bounded reads, no sleeps)
repl_start() { # env assignments...
  coproc QR { exec env "$@" timeout 60 $Q --repl --no-default 2>&1; }
  QR_PID=$QR_PID
}
send() { printf '%s\n' "$1" >&"${QR[1]}"; }
expect() { # pattern: lines until one matches (each read bounded); the lines go to $seen
  local line
  seen=
  while IFS= read -r -t 20 line <&"${QR[0]}"; do
    seen+="$line"$'\n'
    if grep -q -- "$1" <<<"$line"; then return 0; fi
  done
  return 1
}
repl_stop() {
  send quit
  exec {QR[1]}>&-
  wait "$QR_PID" 2>/dev/null; rc=$?
  QR_PID=
}

cp "$T/big.safetensors" "$T/trunc.safetensors"
repl_start
send "load model $T/trunc.safetensors"
expect "^model .*trunc" || true
truncate -s 4096 "$T/trunc.safetensors"
send "quant * int8"
expect "changed on disk\|int8" ; ok1=$?; msg=$seen
send "eval"
expect "changed on disk\|no data" ; msg+=$seen
send "load model $T/big.safetensors"
expect "^model .*big" ; ok2=$?
repl_stop
check truncated-between-commands '[ $ok1 = 0 ] && grep -q "trunc.safetensors changed on disk since it was loaded; load it again" <<<"$msg" && [ $ok2 = 0 ] && [ $rc -lt 128 ]'

cp "$T/big.safetensors" "$T/over.safetensors"
repl_start
send "load model $T/over.safetensors"
expect "^model .*over" || true
python3 - "$T/over.safetensors" <<'PY'
import os, struct, sys
p = sys.argv[1]
st = os.stat(p)
fd = os.open(p, os.O_WRONLY)
# same size, same inode: a weight in the last page rewritten, until the mtime moves
for _ in range(1000000):
    os.pwrite(fd, struct.pack("<f", 9.0), st.st_size - 24)
    if os.stat(p).st_mtime_ns != st.st_mtime_ns:
        break
os.close(fd)
PY
send "quant * int8"
expect "changed on disk\|int8" ; ok1=$?; msg=$seen
repl_stop
check overwritten-in-place '[ $ok1 = 0 ] && grep -q "over.safetensors changed on disk since it was loaded; load it again" <<<"$msg" && [ $rc -lt 128 ]'

# ---- memory (item 5): quant needs more than the limit; refused with the figure, session goes on
repl_start QSCOPE_MEM_LIMIT=1500000
send "load model $T/wide.safetensors"
expect "^model .*wide" || true
send "quant * int8"
expect "needs\|int8" ; ok1=$?; msg=$seen
send "info"
expect "^model " ; ok2=$?
repl_stop
check mem-limit-quant '[ $ok1 = 0 ] && grep -q "fc1: the quantized weight.* needs 2.1 MB but only 1.5 MB of memory is available" <<<"$msg" && [ $ok2 = 0 ] && [ $rc -lt 128 ]'

# ---- writing a model to a full device (item 11), on a throwaway node so /dev/full is never at
# risk; root only
if [ "$(id -u)" = 0 ] && mknod "$T/full" c 1 7 2>/dev/null; then
  run "load model datasets/models/moons-mlp.safetensors; export model $T/full"
  check export-model-dev-full '[ $rc = 1 ] && grep -qi "no space left" <<<"$msg" && [ -c "$T/full" ]'
else
  echo "  (not root: the /dev/full check is skipped)" >&2
fi

# ---- terminal escapes from model files (item 12)
run "load model $T/esc.safetensors; info"
check info-metadata-no-escape '[ $rc = 0 ] && grep -q "done" <<<"$msg" && ! LC_ALL=C grep -q $'"'"'\x1b'"'"' <<<"$msg"'

# ---- a CSV with a UTF-8 byte order mark (item 17): four data rows, no header
run "load model datasets/models/moons-mlp.safetensors; load data $T/bom.csv; info"
check csv-bom '[ $rc = 0 ] && grep -q "(4 samples, 2 features" <<<"$msg"'
