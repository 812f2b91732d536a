#!/usr/bin/env bash
# lmablate.sh - `ablate` on transformers: the MLP's rule (qs_ablate_runs) over per-token losses
# of the held-out windows. The runs are eval's own numbers (quant+corrected and float loss bit for
# bit), the gains carry their bootstrap intervals, the controls are really other corrections, and
# a session with ablate replays with --check.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
M=datasets/models/tiny-llama
TXT=datasets/text/licenses.txt
S=model.layers.0.mlp.up_proj
pass() { echo "PASS lmablate.$1"; }
fail() { echo "FAIL lmablate.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

$Q $M $TXT --json -c "quant * int3 gran=channel; correct $S qera r=4; eval; ablate $S" \
    >"$T/j" 2>"$T/err"
rc=$?
check llama-verdict-and-eval "[ $rc = 0 ] && python3 - $T/j $S <<'PY'
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ev = [o for o in lines if o.get('cmd') == 'eval'][0]
ab = [o for o in lines if o.get('cmd') == 'ablate']
assert len(ab) == 1
a = ab[0]
assert a['layer'] == sys.argv[2] and a['method'] == 'qera'
assert a['verdict'] in ('harmful', 'no-gain', 'capacity', 'recovery'), a['verdict']
for k in ('float', 'quant', 'quant_corrected', 'float_corrected', 'random_control'):
    m = a[k]
    assert set(m) == {'ppl', 'loss'}, (k, m)
    assert abs(m['ppl'] - math.exp(m['loss'])) <= 1e-6 * m['ppl'], (k, m)
# the same numbers as eval: its quant path carries the correction, its float path does not
assert a['quant_corrected']['loss'] == ev['quant']['loss'], (a['quant_corrected'], ev['quant'])
assert a['quant_corrected']['ppl'] == ev['quant']['ppl']
assert a['float']['loss'] == ev['float']['loss'], (a['float'], ev['float'])
assert a['quant']['loss'] != a['quant_corrected']['loss']
assert a['float_corrected']['loss'] != a['float']['loss']
for g in ('gain_quant', 'gain_float', 'gain_random', 'gain_other'):
    iv = a[g]
    assert iv['lo'] <= iv['mean'] <= iv['hi'] and iv['lo'] < iv['hi'], (g, iv)
# the gains are the differences of the printed mean losses
assert abs(a['gain_quant']['mean'] - (a['quant']['loss'] - a['quant_corrected']['loss'])) < 1e-8
assert abs(a['gain_float']['mean'] - (a['float']['loss'] - a['float_corrected']['loss'])) < 1e-8
# the random control is another correction, and so is the other site's
assert a['random_control']['loss'] != a['quant_corrected']['loss']
assert a['gain_random']['mean'] != a['gain_quant']['mean']
assert a['other_layer'] == 'model.layers.0.mlp.gate_proj', a.get('other_layer')
assert a['other_layer_control']['loss'] not in (a['quant']['loss'], a['quant_corrected']['loss'])
assert a['upstream'] == [] and a['gate'] == 'pass'
PY"

check help-transformer "$Q --no-default -c 'help ablate' | tr -s ' \n' ' ' | grep -qF 'On a transformer the test split is the held-out windows eval evaluates, a sample is one held-out window'"

# nothing to ablate, and a site without a correction, are said as for MLPs
check llama-nothing "$Q $M $TXT -c 'quant * int3 gran=channel; ablate' 2>&1 | grep -q 'no deployable correction'"
check llama-no-corr "$Q $M $TXT -c 'quant * int3 gran=channel; ablate lm_head' 2>&1 | grep -q 'lm_head has no correction to ablate'"

# the second correction downstream keeps the first (in place at its fit) in its quantized runs
$Q $M $TXT --json -c "quant * int3 gran=channel; correct model.layers.0.self_attn.q_proj lowrank r=2; correct $S qera r=4; eval; ablate $S" >"$T/j2" 2>&1
check llama-upstream "python3 - $T/j2 <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ev = [o for o in lines if o.get('cmd') == 'eval'][0]
a = [o for o in lines if o.get('cmd') == 'ablate'][0]
assert a['upstream'] == ['model.layers.0.self_attn.q_proj'], a['upstream']
assert a['quant_corrected']['loss'] == ev['quant']['loss']
PY"

# a session with ablate (every correction: no argument) saves and replays with --check, every
# recorded gain reproducing; its text table names the metric and the sample
$Q --no-default -c "load model $M; load data $TXT; quant * int3 gran=channel; correct $S qera r=4; ablate; save session $T/s.qs" >"$T/t" 2>&1
rc=$?
$Q --replay "$T/s.qs" --check >"$T/r" 2>&1
rc2=$?
check llama-save-replay-check "[ $rc = 0 ] && [ $rc2 = 0 ] && grep -q '^ablate$' $T/s.qs && grep -q '^# => verdict=' $T/s.qs && grep -q '^# => gain_random.lo=' $T/s.qs"
check llama-text "grep -q '^$S qera ' $T/t && grep -q 'ppl/loss on the held-out windows, a sample a window' $T/t && ! grep -q 'works on MLPs' $T/t"
# an output-side correction (bias) is applied in the ablation's runs as eval applies it
$Q --json datasets/models/tiny-llama datasets/text/licenses.txt \
    -c "quant * int3 gran=channel; correct $S bias; eval; ablate $S" >"$T/b.json" 2>&1
check llama-bias-ablate-is-eval "python3 - $T/b.json <<'PY'
import json, sys
L = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
ev = [o for o in L if o['cmd'] == 'eval'][0]
ab = [o for o in L if o['cmd'] == 'ablate'][0]
a = ab['layers'][0] if 'layers' in ab else ab
assert a['quant_corrected']['loss'] == ev['quant']['loss'], (a['quant_corrected'], ev['quant'])
assert a['quant']['loss'] != a['quant_corrected']['loss']
PY"
