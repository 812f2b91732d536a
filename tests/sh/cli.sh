#!/usr/bin/env bash
# cli.sh - the command line as a user meets it: the default model, JSON output, exit codes, and
# one clear message naming the file for every kind of bad input.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS cli.$1"; }
fail() { echo "FAIL cli.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# The bundled default: digits-mlp on digits, accuracy >= 0.95, gate pass.
out=$($Q --json -c 'eval')
check default-eval-json "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"cmd\"]==\"eval\" and o[\"float\"][\"acc\"]>=0.95 and o[\"gate\"]==\"pass\" and o[\"regime\"]' '$out'"
out=$($Q --json -c 'quant * int4 gran=group:32; eval' | tail -1)
check int4-eval-json "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"regime\"]==\"weight-only\" and 0<o[\"quant\"][\"acc\"]<=1' '$out'"
out=$($Q --json -c 'quant * int8 gran=channel; eval' | tail -1)
check int8-within-half-point "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert abs(o[\"quant\"][\"acc\"]-o[\"float\"][\"acc\"])<=0.005' '$out'"
check version "$Q --version | grep -q '^qscope '"
check help "$Q --help | grep -q -- '--replay'"
$Q --bogus >/dev/null 2>&1; check bad-option-exit-2 "[ $? = 2 ]"

# Bad input: each gives one message naming the file, exit 1 in batch mode.
bad() { # name, file contents generator, expected words
  local name=$1 file=$2 words=$3
  msg=$($Q --no-default -c "load model $file" 2>&1); rc=$?
  if [ $rc = 1 ] && grep -q "$(basename "$file")" <<<"$msg" && grep -qi -- "$words" <<<"$msg" && [ "$(wc -l <<<"$msg")" = 1 ]; then
    pass "bad-model.$name"
  else
    fail "bad-model.$name"; echo "  got (rc=$rc): $msg" >&2
  fi
}
printf 'abc' >"$T/short.safetensors"; bad truncated "$T/short.safetensors" "short\|small\|truncated\|bytes"
python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<Q', 999999) + b'{}')" >"$T/hlen.safetensors"
bad header-past-end "$T/hlen.safetensors" "header"
python3 - "$T" <<'PY'
import json, struct, sys
T = sys.argv[1]
def w(name, header, data=b""):
    h = json.dumps(header).encode()
    open(f"{T}/{name}.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
w("dtype", {"0.weight": {"dtype": "Q7", "shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16))
w("range", {"0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 160]}}, bytes(16))
w("overlap", {"0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "2.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, bytes(24))
w("shape", {"0.weight": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, bytes(16))
w("nochain", {"0.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "2.weight": {"dtype": "F32", "shape": [2, 5], "data_offsets": [24, 64]}}, bytes(64))
nan = struct.pack("<4f", 1.0, float("nan"), 0.0, 0.0)
w("nan", {"0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, nan)
PY
bad unknown-dtype "$T/dtype.safetensors" "dtype"
bad offsets-out-of-range "$T/range.safetensors" "offset\|range\|past\|beyond"
bad overlapping "$T/overlap.safetensors" "overlap"
bad shape-mismatch "$T/shape.safetensors" "bytes"
bad non-chaining "$T/nochain.safetensors" "chain"
bad nan-weight "$T/nan.safetensors" "non-finite"
bad missing-file "$T/nope.safetensors" "no such file"

badcsv() {
  local name=$1 file=$2 words=$3
  msg=$($Q --no-default -c "load data $file" 2>&1); rc=$?
  if [ $rc = 1 ] && grep -q "$(basename "$file")" <<<"$msg" && grep -qi -- "$words" <<<"$msg"; then
    pass "bad-csv.$name"
  else
    fail "bad-csv.$name"; echo "  got (rc=$rc): $msg" >&2
  fi
}
printf 'a,b,label\n1,2,0\n3,0\n' >"$T/ragged.csv"; badcsv ragged "$T/ragged.csv" ":3:.*cells"
printf 'a,b,label\n1,x,0\n' >"$T/text.csv"; badcsv text-cell "$T/text.csv" "not a number"
: >"$T/empty.csv"; badcsv empty "$T/empty.csv" "empty\|no data\|no rows"
badcsv missing "$T/none.csv" "no such file"

# A bad command in an interactive-style stream: the session goes on, nothing is lost.
out=$(printf 'quant * int4\nfrobnicate\nrules\n' | $Q 2>&1)
check session-goes-on "grep -q 'unknown command' <<<\"\$out\" && grep -q 'int4' <<<\"\$out\""
# -b: first error prints FILE:LINE: message and exits 1
printf 'info\nquant * int9\neval\n' >"$T/s.qs"
msg=$($Q -b "$T/s.qs" 2>&1 >/dev/null); rc=$?
check batch-file-line "[ $rc = 1 ] && grep -q 's.qs:2: ' <<<\"\$msg\""
# unknown layer suggests close names; k larger than the rank; a group size not dividing the
# rows is fine (the last group of a row is shorter, with its own scale)
check unknown-layer "$Q -c 'quant * int4; spectrum fc9' 2>&1 | grep -q 'did you mean: fc0'"
check k-too-large "$Q -c 'quant * int4; spectrum fc2 k=99' 2>&1 | grep -q 'exceeds'"
check group-not-dividing "$Q -c 'quant * int4 gran=group:48' 2>&1 | grep -q '3 layers'"
check pattern-no-match "$Q -c 'quant zz* int4' 2>&1 | grep -q \"pattern 'zz\\*' matched no layer\""
check zero-error-spectrum "$Q -c 'spectrum fc1' 2>&1 | grep -q 'exactly zero'"
check calib-too-large "$Q -c 'set calib 100000' 2>&1 | grep -q 'calibration split has'"

# export model: the fake-quant file evaluates in float exactly as the quantized model did
qa=$($Q --json -c "quant * int4 gran=channel; eval; export model $T/q.safetensors" | python3 -c 'import sys,json; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][0]["quant"]["acc"])')
fa=$($Q --json "$T/q.safetensors" datasets/digits.csv -c 'eval' | python3 -c 'import sys,json; print([json.loads(l) for l in sys.stdin if "\"eval\"" in l][0]["float"]["acc"])')
check export-fake-quant-roundtrip "[ -n '$qa' ] && [ '$qa' = '$fa' ]"
$Q -c "quant * int4 gran=group:32; export model $T/p.safetensors packed" >/dev/null
check export-packed "python3 - '$T/p.safetensors' <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
c = h['fc0.weight.codes']; s = h['fc0.weight.scales']
assert c['dtype'] == 'U8' and c['shape'] == [64 * 64 // 2], c      # two int4 codes a byte
assert s['shape'] == [64 * 2 * 2], s                              # 2 groups a row, F16 scales
assert h['__metadata__']['qscope.export'] == 'packed'
PY"
# export csv: a header row naming regime, formats and seed, then the table
$Q -c "quant * int3; error; export csv $T/err.csv" >/dev/null
check export-csv "python3 - $T/err.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
assert 'regime=weight-only seed=0 formats=fc0:int3' in rows[0][0], rows[0]
assert rows[1][:4] == ['name', 'w_rel_err', 'preact_rel_mse', 'snr_db'], rows[1]
assert [r[0] for r in rows[2:]] == ['fc0', 'fc1', 'fc2'] and float(rows[2][1]) > 0.1
PY"

# corrections: bad input gives clear messages and no NaN
check rank-too-large "$Q -c 'quant * int3; correct fc2 lowrank r=11' 2>&1 | grep -q 'rank 11 is out of range: min(out, in) = min(10, 64) = 10'"
check correct-float-layer "$Q -c 'correct fc1 lowrank r=2' 2>&1 | grep -q 'is in float'"
check linear-needs-samples "$Q -c 'quant * int3; set calib 40; correct fc1 linear' 2>&1 | grep -q 'needs more than 64 samples to fit, the calibration split has 40'"
check ablate-nothing "$Q -c 'quant * int3; ablate' 2>&1 | grep -q 'no deployable correction'"
out=$($Q --json -c 'quant * int3 gran=tensor; correct fc1 linear lambda=0; correct fc0 clocal; correct fc2 qera r=4; ablate')
check no-nan-in-results "! grep -qi 'nan' <<<\"\$out\""
# held-out ordering clocal >= linear >= linear prec=int4 on every layer of the bundled model
check recovery-ordering "python3 - <<'PY'
import json, subprocess
R = {}
for m in ['linear', 'linear prec=int4', 'clocal']:
    for l in ['fc0', 'fc1', 'fc2']:
        out = subprocess.run(['./qscope', '--json', '-c', 'quant * int3 gran=tensor; correct %s %s' % (l, m)],
                             capture_output=True, text=True).stdout.splitlines()
        R[m, l] = float([json.loads(x) for x in out if '\"correct\"' in x][0]['recovery'])
for l in ['fc0', 'fc1', 'fc2']:
    assert R['clocal', l] >= R['linear', l] - 1e-6 >= R['linear prec=int4', l] - 2e-6, (l, R)
PY"
$Q -c "quant * int3; correct fc0 lowrank r=4; correct fc2 clocal; export csv $T/c.csv; ablate; export csv $T/a.csv" >/dev/null 2>&1
check export-csv-corrections "python3 - $T/c.csv $T/a.csv <<'PY'
import csv, sys
c = list(csv.reader(open(sys.argv[1]))); a = list(csv.reader(open(sys.argv[2])))
assert 'table=corrections' in c[0][0] and [r[:2] for r in c[2:]] == [['fc0', 'lowrank'], ['fc2', 'clocal']], c
assert 'table=ablate' in a[0][0] and a[1][-1] == 'verdict' and a[2][0] == 'fc0' and a[2][-1] in ('recovery', 'capacity', 'no-gain', 'harmful'), a
PY"
# make install / uninstall with DESTDIR and PREFIX: binary and the three manual pages
make -s install DESTDIR="$T/root" PREFIX=/usr >/dev/null 2>&1
check make-install "[ -x $T/root/usr/bin/qscope ] && [ -f $T/root/usr/share/man/man1/qscope.1 ] && [ -f $T/root/usr/share/man/man5/qscope-session.5 ] && [ -f $T/root/usr/share/man/man7/qscope-methods.7 ] && [ -f $T/root/usr/share/qscope/datasets/models/digits-mlp.safetensors ] && $T/root/usr/bin/qscope --version | grep -q qscope"
# the installed binary (moved away from the repository) opens the installed bundle
check installed-default-model "(cd $T && $T/root/usr/bin/qscope --json -c eval | grep -q '\"gate\":\"pass\"')"
make -s uninstall DESTDIR="$T/root" PREFIX=/usr >/dev/null 2>&1
check make-uninstall "[ ! -e $T/root/usr/bin/qscope ] && [ ! -e $T/root/usr/share/man/man1/qscope.1 ] && [ ! -e $T/root/usr/share/man/man7/qscope-methods.7 ]"

# transformers: the bundled tiny GPT-2 through the command line, JSON, and clear refusals
out=$($Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int4 gran=channel; eval' | tail -1)
check lm-eval-json "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"cmd\"]==\"eval\" and o[\"regime\"]==\"weight-only\" and 1<o[\"float\"][\"ppl\"]<o[\"quant\"][\"ppl\"]<256 and 0<o[\"top1_agree\"]<=1 and o[\"gate\"] in (\"pass\",\"fail\")' '$out'"
check lm-qat-nothing-quantized "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'qat' 2>&1 | grep -q 'no site.s weights or activations are quantized, so there is nothing to train through'"
check lm-correct-method "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int4; correct lm_head lowrank lambda=0.1' 2>&1 | grep -q 'lambda= applies to bias, linear and clocal'"
check lm-correct-float-site "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'correct lm_head qera r=2' 2>&1 | grep -q 'is in float'"
out=$($Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int3 gran=channel; correct h.0.mlp.c_fc qera r=8' | grep '"correct"')
check lm-correct-json "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"layer\"]==\"h.0.mlp.c_fc\" and o[\"method\"]==\"qera\" and o[\"rank\"]==8 and 0<float(o[\"recovery\"])<=1 and o[\"params\"]==8*(256+64)' '$out'"
check lm-no-data "$Q --no-default -c 'load model datasets/models/tiny-gpt2; eval' 2>&1 | grep -q 'no token data loaded'"
check lm-csv-label "$Q datasets/models/tiny-gpt2 -c 'load data datasets/digits.csv label=label' 2>&1 | grep -q 'label= applies to CSV'"
check lm-back-to-mlp "$Q --no-default -c 'load model datasets/models/tiny-gpt2; load data datasets/text/licenses.txt; load model datasets/models/digits-mlp.safetensors; load data datasets/digits.csv; eval' | grep -q '^float '"
$Q --no-default -c "load model datasets/models/tiny-llama; load data datasets/text/licenses.txt; quant * int4 gran=channel; eval; save session $T/lm.qs" >/dev/null 2>&1
check lm-session-replays "$Q --replay $T/lm.qs --check >/dev/null 2>&1 && grep -q '^# model datasets/models/tiny-llama sha256=' $T/lm.qs"

# The split contract is stated in info and in every session header, rows or token windows.
out=$($Q -c 'set calib 40; info' 2>&1)
check split-contract-mlp "grep -q '^split   rows, seed 0: train 1078 / calibration 359 (using 40; set calib N counts rows) / held-out test 360\$' <<<\"\$out\""
out=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'set calib 3; info' 2>&1)
check split-contract-lm "grep -q '^split   tokens: train \[0, 130116) / calibration: its first 3 windows of 64 (set calib N counts windows) / held-out \[130116, 144573): the last 10 %, 225 windows of 64\$' <<<\"\$out\""
$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c "set calib 3; save session $T/split.qs" >/dev/null 2>&1
check split-in-session-header "sed -n '1,12p' $T/split.qs | grep -q '^# split tokens: train \[0, 130116) / calibration: its first 3 windows'"
# the settable gates and the split: each changes what it says it changes
check set-gate "$Q --json -c 'set gate 0.99; eval' | tail -1 | python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); assert o[\"gate\"]==\"fail\" and o[\"gate_threshold\"]>0.99'"
check set-lmgate "$Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'set lmgate 0.9; eval' | tail -1 | python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); assert o[\"gate\"]==\"fail\"' && $Q -c 'set lmgate 1.5' 2>&1 | grep -q 'outside 0..1'"
check set-split "$Q --json -c 'set split seed=3 train=0.5 calib=0.25; eval' | tail -1 | python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); s=o[\"split\"]; assert (s[\"seed\"], s[\"train\"], s[\"calib\"], s[\"test\"]) == (3, 899, 449, 449), s' && $Q -c 'set split train=0.9 calib=0.2' 2>&1 | grep -q 'train + calib < 1'"
