#!/usr/bin/env bash
# robust_cmd.sh - commands that fail change nothing; what they write survives a full disk and
# never replaces a device; the installed binary runs every README example from any folder;
# the small things a new user meets (issue 11: items 6, 11, 15, 17).
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=${QSCOPE_BIN:-./qscope}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
pass() { echo "PASS robust_cmd.$1"; }
fail() { echo "FAIL robust_cmd.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# ---- a failed load model / load data / train changes nothing (item 6)
# Crafted inputs: a model whose split metadata lies (train fraction 1.5); a model whose weights
# are so large that an int8 rule's F16 scales overflow (the rule fails on it); the same for a
# transformer; a token file too short for the model's windows.
python3 - "$T" <<'PY'
import json, os, shutil, struct, sys
T = sys.argv[1]
def read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), bytearray(b[8 + n:])
def write(p, h, data):
    hb = json.dumps(h).encode()
    open(p, 'wb').write(struct.pack('<Q', len(hb)) + hb + bytes(data))
def scale(h, data, suffix):
    for k, v in h.items():
        if k != '__metadata__' and k.endswith(suffix):
            assert v['dtype'] == 'F32', v
            a, z = v['data_offsets']
            for i in range(a, z, 4):
                data[i:i + 4] = struct.pack('<f', struct.unpack('<f', data[i:i + 4])[0] * 1e9)
h, d = read('datasets/models/moons-mlp.safetensors')
h['__metadata__']['qscope.split_train'] = '1.5'
write(f'{T}/lying-split.safetensors', h, d)
h, d = read('datasets/models/digits-mlp.safetensors')
scale(h, d, 'fc0.weight')
write(f'{T}/huge.safetensors', h, d)
os.makedirs(f'{T}/huge-gpt2')
shutil.copy('datasets/models/tiny-gpt2/config.json', f'{T}/huge-gpt2/')
h, d = read('datasets/models/tiny-gpt2/model.safetensors')
scale(h, d, 'mlp.c_fc.weight')
write(f'{T}/huge-gpt2/model.safetensors', h, d)
open(f'{T}/few.txt', 'w').write('too few tokens')
PY

# unchanged NAME PREFIX FAILING CHECKS: runs "set bail off; PREFIX; FAILING; CHECKS; save session"
# and "PREFIX; CHECKS; save session"; the failing command must fail, the outputs of CHECKS must
# be the same, both sessions must hold the same commands, and the first must replay --check.
unchanged() {
  local name=$1 args=$2 prefix=$3 failing=$4 checks=$5
  $Q $args -c "set bail off; $prefix; $failing; $checks; save session $T/$name-a.qs" \
    >"$T/$name-a.out" 2>"$T/$name-a.err"
  $Q $args -c "$prefix; $checks; save session $T/$name-b.qs" >"$T/$name-b.out" 2>/dev/null
  local ok=1
  [ -s "$T/$name-a.err" ] || ok=0                                  # it did fail
  # outputs after the prefix: drop the lines of the prefix (same in both) and the save line, and
  # info's memory line and what the weights cache holds (the caches a failed load dropped are
  # recomputed on demand: not state; the quantized codes are, and stay compared)
  local keep='/^saved \|^memory /d; s/; the cache holds .*//'
  diff <(sed "$keep" "$T/$name-a.out") <(sed "$keep" "$T/$name-b.out") >&2 || ok=0
  diff <(grep -v '^#' "$T/$name-a.qs") <(grep -v '^#' "$T/$name-b.qs") >&2 || ok=0
  $Q --replay "$T/$name-a.qs" --check >/dev/null 2>&1 || ok=0
  if [ $ok = 1 ]; then pass "$name"; else fail "$name"; cat "$T/$name-a.err" >&2; fi
}
unchanged failed-load-model-lying-split "" "quant * int3; correct fc1 lowrank r=4" \
  "load model $T/lying-split.safetensors" "info; rules; eval"
unchanged failed-load-model-rule-fails "" "quant * int8; correct fc1 lowrank r=4" \
  "load model $T/huge.safetensors" "info; rules; layers; eval"
unchanged failed-load-model-lm-rule-fails "datasets/models/tiny-gpt2 datasets/text/licenses.txt" \
  "quant * int8" "load model $T/huge-gpt2" "info; rules; eval"
unchanged failed-load-data-too-few-tokens "datasets/models/tiny-gpt2 datasets/text/licenses.txt" \
  "quant * int4 gran=channel" "load data $T/few.txt" "info; eval"
unchanged failed-train-out-unwritable "" "quant * int3; correct fc1 lowrank r=4" \
  "train hidden=8 epochs=1 out=$T/no/such/dir/m.safetensors" "info; rules; eval"
check failed-train-out-says-why "$Q -c 'train hidden=8 epochs=1 out=$T/no/such/dir/m.safetensors' 2>&1 | grep -q 'train out=: .*m.safetensors'"
# a successful train still replaces the model and writes out= (and the rules apply to it)
$Q -c "quant * int3; train hidden=8 epochs=2 out=$T/trained.safetensors; info" >"$T/tr.out" 2>&1
check train-still-replaces "[ -s $T/trained.safetensors ] && grep -q 'model   $T/trained.safetensors (mlp, 2 layers' $T/tr.out"
# loading a transformer keeps token data that fits it; an MLP after it drops them
check lm-load-keeps-tokens "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'load model datasets/models/tiny-llama; info' | grep -q '^data    datasets/text/licenses.txt'"

# ---- output files: a device is written in place, never replaced; a full disk is an error and
# leaves no empty file (item 11). A throwaway node with /dev/full's numbers, never the real one.
if mknod "$T/full" c 1 7 2>/dev/null && [ -c "$T/full" ]; then
  msg=$($Q -c "layers; export csv $T/full" 2>&1 >/dev/null); rc=$?
  check export-csv-full-disk "[ $rc = 1 ] && grep -q 'full: .*No space left on device' <<<\"\$msg\" && [ -c $T/full ] && [ -z \"\$(ls $T | grep -v -e '^full$' -e '^few.txt$' -e '\\.safetensors$' -e '^huge-gpt2$' -e '\\.qs$' -e '\\.out$' -e '\\.err$')\" ]"
  mknod "$T/st-layers.csv" c 1 7
  msg=$($Q -c "study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=0 csv=$T/st" 2>&1 >/dev/null); rc=$?
  check study-csv-full-disk "[ $rc = 1 ] && grep -q 'st-layers.csv: .*No space left on device' <<<\"\$msg\" && [ -c $T/st-layers.csv ] && [ ! -e $T/st-settings.csv ] && ! ls $T | grep -q 'tmp'"
else
  fail export-csv-full-disk; fail study-csv-full-disk; echo "  cannot make a device node in $T" >&2
fi
# A write error on a regular file (here the file-size limit, as a full disk would: EFBIG like
# ENOSPC) fails the command, keeps the file it would have replaced and leaves no new one.
limited() { (trap '' XFSZ; ulimit -f 0; exec "$@" 2>&1 >/dev/null) | cat; }
echo old >"$T/keep.csv"
msg=$(limited $Q -c "layers; set bail off; export csv $T/keep.csv; export csv $T/new.csv")
check export-csv-write-error "grep -q 'keep.csv: cannot write: File too large' <<<\"\$msg\" && grep -q 'new.csv: cannot write' <<<\"\$msg\" && [ \"\$(cat $T/keep.csv)\" = old ] && [ ! -e $T/new.csv ] && ! ls $T | grep -q tmp"
msg=$(limited $Q -c "study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=0 csv=$T/lim")
check study-csv-write-error "grep -q 'lim-layers.csv: cannot write' <<<\"\$msg\" && [ ! -e $T/lim-layers.csv ] && [ ! -e $T/lim-settings.csv ] && ! ls $T | grep -q tmp"
# regular files: written as before
$Q -c "quant * int3; quant fc1 int4 gran=group:16 on=wa; layers; export csv $T/l.csv" >/dev/null
check export-csv-comment-line "head -1 $T/l.csv | grep -q '^# qscope ' && ! head -1 $T/l.csv | grep -q '\"'"
check export-csv-formats-granularity "head -1 $T/l.csv | grep -q 'formats=fc0:int3/tensor|float fc1:int4/g16|int4/g16 fc2:int3/tensor|float\$'"
check export-csv-reads-back "python3 - $T/l.csv <<'PY'
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
rows = list(csv.reader(l for l in lines if not l.startswith('#')))   # what comment='#' does
assert rows[0][:5] == ['name', 'out', 'in', 'act', 'weights'], rows[0]
assert [r[0] for r in rows[1:]] == ['fc0', 'fc1', 'fc2'] and rows[2][4] == 'int4/g16', rows
PY"
if python3 -c 'import pandas' 2>/dev/null; then
  check export-csv-pandas "python3 -c \"import pandas as p, sys; d = p.read_csv(sys.argv[1], comment='#'); assert list(d['name']) == ['fc0', 'fc1', 'fc2']\" $T/l.csv"
fi
$Q -c "study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=0 csv=$T/ok" >/dev/null
check study-csv-comment-line "head -1 $T/ok-layers.csv | grep -q '^# qscope ' && ! head -1 $T/ok-settings.csv | grep -q '\"' && sed -n 2p $T/ok-settings.csv | grep -q '^\"model\"'"

# ---- smaller ones (item 17)
out=$($Q roundtrip int8 1 2 3 4 5 6 7 8 9 10 11 12 2>&1)
check roundtrip-many-values "[ \"\$(grep -c ' -> ' <<<\"\$out\")\" = 12 ]"
check train-transformer-says-so "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'train epochs=1' 2>&1 | grep -q \"unknown option 'epochs=1' for a transformer\""
msg=$($Q --json datasets/models/tiny-gpt2 -c 'study q1' 2>&1); rc=$?
check study-q1-needs-tokens "[ $rc = 1 ] && grep -q 'study q1: load token data for the transformer first' <<<\"\$msg\" && ! grep -q '\"study q1\"' <<<\"\$msg\""
check study-q1-transformer-models-given "$Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=0' | grep -q 'gate pass in 1 of 1'"

# ---- make install ships the whole bundle; the installed binary runs every README example from
# another folder, QSCOPE_HOME unset (item 15)
make -s install DESTDIR="$T/root" PREFIX=/usr >/dev/null 2>&1
I=$T/root/usr/share/qscope
check install-bundle "[ -f $I/datasets/models/tiny-gpt2/model.safetensors ] && [ -f $I/datasets/models/tiny-llama/config.json ] && [ -f $I/datasets/text/licenses.txt ] && [ -f $I/sessions/tour.qs ] && [ -f $I/datasets/moons.csv ] && [ -f $T/root/usr/share/man/man5/qscope-session.5 ]"
mkdir -p "$T/elsewhere"
n=0
while IFS= read -r line; do
  n=$((n + 1))
  cmd=${line%%#*}                                  # drop the trailing comment
  cmd=${cmd/#.\/qscope/$T/root/usr/bin/qscope}     # the installed binary
  if (cd "$T/elsewhere" && env -u QSCOPE_HOME bash -c "$cmd" </dev/null >"$T/ex$n.out" 2>&1); then
    pass "installed-readme-example-$n"
  else
    fail "installed-readme-example-$n"; echo "  $cmd" >&2; tail -3 "$T/ex$n.out" >&2
  fi
done < <(sed -n '/^```sh$/,/^```$/p' README.md | grep '^\./qscope ')
check installed-readme-examples-found "[ $n -ge 6 ]"
check installed-study-q1 "(cd $T/elsewhere && env -u QSCOPE_HOME $T/root/usr/bin/qscope -c 'study q1' 2>&1 | grep -q 'gate pass in 15 of 15')"
# sessions.sh replays every bundled session; from the installed tree, one session of each
# family shows that their pinned bundled inputs resolve there (replaying all again doubled the
# suite's longest checks for nothing new)
for s in sessions/tour.qs sessions/lm-llama.qs; do
  check "installed-replay-$(basename "$s" .qs)" "(cd $T/elsewhere && env -u QSCOPE_HOME $T/root/usr/bin/qscope --replay $s --check 2>&1 | grep -q ', 0 differ')"
done
# a session saved there pins the bundled files it loaded and replays from a third folder
mkdir -p "$T/third"
(cd $T/elsewhere && env -u QSCOPE_HOME $T/root/usr/bin/qscope datasets/models/moons-mlp.safetensors datasets/moons.csv -c "quant * int4; eval; save session $T/elsewhere/s.qs" >/dev/null 2>&1)
check installed-session-replays "grep -q '^# model datasets/models/moons-mlp.safetensors sha256=' $T/elsewhere/s.qs && (cd $T/third && env -u QSCOPE_HOME $T/root/usr/bin/qscope --replay $T/elsewhere/s.qs --check 2>&1 | grep -q ', 0 differ')"
check installed-source-bundled "(cd $T/elsewhere && env -u QSCOPE_HOME $T/root/usr/bin/qscope --no-default -c 'source sessions/formats.qs' | grep -q '^6 -> 6')"
make -s uninstall DESTDIR="$T/root" PREFIX=/usr >/dev/null 2>&1
check uninstall-bundle "[ ! -e $I ] && [ ! -e $T/root/usr/bin/qscope ]"
