#!/usr/bin/env bash
# settings.sh - the two budgets of issue 14: `set heldout` (a transformer's held-out runs take the
# split's first N windows) and `set memory` (the decoded weights cache's and the activations'
# budgets).
#
# set heldout is checked against an independent split: a token file cut so that its held-out
# split IS those N windows (the same calibration windows before it), where every run takes its
# whole held-out split. eval, error, correct, ablate and sensitivity must give the same numbers
# on both (the gate, a property of each file's whole split, aside), and other numbers than the
# uncapped run. set memory must never change a number (weights=0 decodes every site again on
# each use), must evict at once when lowered, and refuses sizes that are not sizes.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=${QSCOPE_BIN:-./qscope}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
pass() { echo "PASS settings.$1"; }
fail() { echo "FAIL settings.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
LM=datasets/models/tiny-gpt2
TXT=datasets/text/licenses.txt

# ---- set heldout: the first 4 held-out windows of licenses.txt (64 tokens each) ----
# licenses.txt is 144573 bytes (byte tokens): held out from 130116, 225 windows. cut.txt is its
# first 2700 bytes (the same 8 calibration windows) and the 300 bytes from 130116: 3000 tokens,
# held out the last 300 = (300 - 1) / 64 = 4 windows, the same 4.
python3 -c "
d = open('$TXT', 'rb').read()
assert len(d) == 144573 and len(d) - len(d) // 10 == 130116
c = d[:2700] + d[130116:130416]
assert len(c) - len(c) // 10 == 2700
open('$T/cut.txt', 'wb').write(c)"
RUN="quant * int4; eval; error; correct h.0.mlp.c_fc lowrank r=4; eval; ablate h.0.mlp.c_fc; sensitivity method=delta"
$Q --no-default --json -c "load model $LM; load data $TXT; set heldout 4; $RUN; info" >"$T/capped.json" 2>"$T/capped.err"
$Q --no-default --json -c "load model $LM; load data $T/cut.txt; $RUN" >"$T/cut.json" 2>/dev/null
# other windows, other numbers (6 windows: the whole split's 225 would take long)
$Q --no-default --json -c "load model $LM; load data $TXT; set heldout 6; $RUN" >"$T/six.json" 2>/dev/null
$Q --no-default --json -c "load model $LM; load data $TXT; eval" >"$T/all.json" 2>/dev/null
cat >"$T/cmp.py" <<'PY'
import json, sys
def results(p):
    out = []
    for l in open(p):
        o = json.loads(l)
        if o['cmd'] in ('load model', 'load data', 'set', 'info'):
            continue
        for k in ('task', 'gate', 'gate_threshold', 'heldout_windows'):  # the gate: whole split
            o.pop(k, None)
        out.append(o)
    return out
a, b = results(sys.argv[1]), results(sys.argv[2])
same = len(a) == len(b) == 7 and all(x == y for x, y in zip(a, b))
for x, y in zip(a, b):
    if x != y:
        print('  %s differs: %s' % (x['cmd'], [k for k in x if x.get(k) != y.get(k)]), file=sys.stderr)
sys.exit(0 if same == (sys.argv[3] == 'same') else 1)
PY
check heldout_is_first_windows "python3 $T/cmp.py $T/capped.json $T/cut.json same"
check heldout_changes_numbers "python3 $T/cmp.py $T/capped.json $T/six.json differ 2>/dev/null"
check heldout_eval_tokens "grep '\"cmd\":\"eval\"' $T/capped.json | head -1 | grep -q '\"tokens\":256,.*\"heldout_windows\":4'"
check heldout_info_json "grep '\"cmd\":\"info\"' $T/capped.json | grep -q '\"heldout_windows\":4'"
# the gate stays on the whole split: the capped runs' gate figures are the uncapped eval's
check heldout_gate_whole "python3 - $T/capped.json $T/all.json <<'PY'
import json, sys
r = [[json.loads(l) for l in open(p)] for p in sys.argv[1:]]
full = [o for o in r[1] if o['cmd'] == 'eval'][0]
ev = [o for o in r[0] if o['cmd'] == 'eval']
er = [o for o in r[0] if o['cmd'] == 'error']
ok = len(ev) == 2 and all(o['gate_threshold'] == full['gate_threshold'] for o in ev)
ok = ok and len(er) == 1 and er[0]['task']['float_loss'] == full['float']['loss']
ok = ok and ev[0]['float']['loss'] != full['float']['loss']  # eval's float row: the 4 windows
sys.exit(0 if ok else 1)
PY"

out=$($Q --no-default -c "load model $LM; load data $TXT; set heldout tokens=130; info; eval; set heldout; set heldout all; eval" 2>&1)
check heldout_tokens_round_up "grep -q 'held-out runs: the first 3 of 225 windows of 64 (192 tokens)' <<<\"\$out\""
check heldout_info_text "grep -q 'held-out .*225 windows of 64 (runs: its first 3; the gate: all)' <<<\"\$out\""
check heldout_eval_text "grep -q 'held-out 192 tokens in windows of 64 (the first 3 of 225: set heldout; the gate: all)' <<<\"\$out\""
check heldout_all "grep -q 'held-out runs: all 225 windows of 64 (14400 tokens)' <<<\"\$out\" && grep -q 'held-out 14400 tokens in windows of 64\$' <<<\"\$out\""

# journaled in canonical form; the saved session replays --check; a load keeps the setting
$Q --no-default -c "load model $LM; load data $TXT; set heldout tokens=130; set memory weights=64K acts=1G; quant * int4; eval; load data $TXT; eval; save session $T/s.qs" >/dev/null 2>&1
check journal_lines "grep -qx 'set heldout tokens=130' $T/s.qs && grep -qx 'set memory weights=64K acts=1G' $T/s.qs"
check load_keeps_heldout "[ \$(grep -c '^# => tokens=192\$' $T/s.qs) = 2 ]"
check session_replays "$Q --replay $T/s.qs --check >/dev/null 2>&1"

# refusals: an MLP, no count, too many windows, both forms, not a count; a failure changes nothing
for bad in "0" "-1" "x" "1.5" "226" "2 tokens=64" "tokens=0" "tokens=-5" "tokens=99999999999999999999"; do
  msg=$($Q --no-default -c "load model $LM; load data $TXT; set heldout 4; set heldout $bad" 2>&1 >/dev/null); rc=$?
  check "heldout_refuses[$bad]" "[ $rc = 1 ] && grep -q 'set heldout' <<<\"\$msg\""
done
msg=$($Q --no-default -c "load model datasets/models/moons-mlp.safetensors; set heldout 4" 2>&1); rc=$?
check heldout_refuses_mlp "[ $rc = 1 ] && grep -q 'applies to transformers' <<<\"\$msg\""
out=$($Q --no-default --json -c "set bail off; load model $LM; load data $TXT; set heldout 4; set heldout 300; info" 2>/dev/null)
check heldout_failure_keeps "grep '\"cmd\":\"info\"' <<<\"\$out\" | grep -q '\"heldout_windows\":4'"

# ---- set memory ----
# every number the same with the weights cache at 0 (each site decoded again on each use) and
# at a budget below the model's quantized sites (least recently used out), on both families
for fam in "$LM $TXT" "datasets/models/digits-mlp.safetensors datasets/digits.csv"; do
  set -- $fam
  name=$(basename "$1" .safetensors)
  W="quant * int4 gran=group:32; quant *.c_attn int3; eval; error; correct * lowrank r=2; eval"
  # a budget below the quantized sites' decoded bytes (GPT-2: 448 KiB, sites up to 64 KiB; the
  # digits MLP: 40 KiB, sites of 16 KiB)
  if [ "$1" = "$LM" ]; then W="set heldout 8; $W; ablate h.1.mlp.c_fc"; B=100K; BB=102400; S=65536
  else W="$W; ablate fc1"; B=20K; BB=20480; S=16384; fi
  $Q --no-default --json -c "load model $1; load data $2; $W" 2>/dev/null | grep -v '"cmd":"set"' >"$T/m-default.json"
  for w in 0 $B; do
    $Q --no-default --json -c "load model $1; load data $2; set memory weights=$w; $W; info" 2>/dev/null |
      grep -v '"cmd":"set"' >"$T/m-$w.json"
    check "memory_same_numbers[$name,weights=$w]" "grep -q '\"cmd\":\"ablate\"' $T/m-default.json && diff <(grep -v '\"cmd\":\"info\"' $T/m-$w.json) $T/m-default.json >/dev/null"
  done
  # held within the budget: weights=0 holds only the site in use (the largest is 64 KiB)
  check "memory_held[$name]" "python3 - $T/m-0.json $T/m-$B.json $BB $S <<'PY'
import json, sys
i0, i1 = [[json.loads(l) for l in open(p) if '\"cmd\":\"info\"' in l][0] for p in sys.argv[1:3]]
bb, site = int(sys.argv[3]), int(sys.argv[4])
ok = i0['weights_cache_budget_bytes'] == 0 and 0 < i0['weights_cache_bytes'] <= site
ok = ok and i1['weights_cache_budget_bytes'] == bb and 0 < i1['weights_cache_bytes'] <= bb
ok = ok and i1['weights_packed_bytes'] > 0
sys.exit(0 if ok else 1)
PY"
done

# lowering the budget evicts at once (no forward in between); raising it keeps what is held
out=$($Q --no-default --json -c "load model $LM; load data $TXT; quant * int4; eval; info; set memory weights=100K; info; set memory weights=1G; info" 2>/dev/null)
check memory_evicts_at_once "python3 - <<'PY' \"\$out\"
import json, sys
inf = [json.loads(l) for l in sys.argv[1].splitlines() if '\"cmd\":\"info\"' in l]
b = [i['weights_cache_bytes'] for i in inf]
ok = len(b) == 3 and b[0] > 102400 and 0 < b[1] <= 102400 and b[2] == b[1]
ok = ok and [i['weights_cache_budget_bytes'] for i in inf] == [512 << 20, 102400, 1 << 30]
sys.exit(0 if ok else 1)
PY"
out=$($Q --no-default -c "set memory; set memory acts=64m weights=3G; info" 2>&1)
check memory_show "grep -q '^memory: weights=512M (the decoded weights cache holds 0 of 0 sites), acts=512M' <<<\"\$out\""
check memory_info_text "grep -q 'budgets: activations 64 MB, weights 3072 MB' <<<\"\$out\""
$Q --no-default -c "set memory; save session $T/q.qs" >/dev/null 2>&1
check memory_show_not_journaled "! grep -q '^set memory' $T/q.qs"

# bad sizes: sign, fraction, junk or double suffix, hex, empty, overflow, acts=0
for bad in "weights=-1" "weights=+5" "weights=1.5M" "weights=12X" "weights=1MB" "weights=1KK" \
  "weights=0x10" "weights=" "weights=M" "acts=0" "weights=99999999999999999999" \
  "weights=1048577G" "acts=18446744073709551616"; do
  msg=$($Q --no-default -c "set memory weights=64K acts=1G; set memory $bad" 2>&1 >/dev/null); rc=$?
  check "memory_refuses[$bad]" "[ $rc = 1 ] && grep -q 'set memory' <<<\"\$msg\""
done
out=$($Q --no-default --json -c "set bail off; set memory weights=64K acts=1G; set memory weights=1 acts=0; set memory weights=2 acts=junk; info" 2>/dev/null)
check memory_failure_keeps "grep '\"cmd\":\"info\"' <<<\"\$out\" | grep -q '\"activation_budget_bytes\":1073741824,.*\"weights_cache_budget_bytes\":65536'"
