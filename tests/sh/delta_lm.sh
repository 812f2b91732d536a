#!/usr/bin/env bash
# delta_lm.sh - `sensitivity method=delta` on transformers: a GPT-2 trained by plain PyTorch
# outside qscope (tests/tools/make_delta_fixture.py) must give, site by site, the held-out loss
# deltas PyTorch computed with that one site quantized; the bundled tiny-gpt2 and tiny-llama run
# it and the layers table shows it; what transformers cannot do yet is said plainly.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
FX=tests/fixtures/delta_gpt2
pass() { echo "PASS delta_lm.$1"; }
fail() { echo "FAIL delta_lm.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# The PyTorch fixture. Tolerance 1e-6 absolute on every delta (and on the float loss): the
# reference is a float64 forward on the same float32 weights and the same quantized weights
# (fake quantization matches qscope bit for bit), so the only difference is qscope's float32
# forward, whose per-token log-probability errors (~1e-7 relative) average out over the 3968
# held-out tokens: measured differences are <= 2e-8. 1e-6 is still below the smallest |delta|
# of the fixture (8.7e-6, int8), so a site quantized in another way, another split, another
# window cut or a shifted site order fails.
for f in int8 int4; do
    $Q $FX $FX/data.txt --json -c "quant * $f gran=channel; sensitivity method=delta" \
        >"$T/$f.json" 2>"$T/$f.err"
    check "torch-fixture-$f" "python3 - $FX/deltas.json $T/$f.json $f <<'PY'
import json, sys
ref = json.load(open(sys.argv[1]))
fmt = sys.argv[3]
o = [json.loads(l) for l in open(sys.argv[2])][-1]
assert o['cmd'] == 'sensitivity', o
assert [r['name'] for r in o['layers']] == ref['sites'], 'site order'
assert o['n_test'] == ref['held_out_tokens'], (o['n_test'], ref['held_out_tokens'])
assert abs(o['task']['float_loss'] - ref['float_loss']) <= 1e-6, 'float loss'
for r in o['layers']:
    d = r['delta_loss'] - ref['deltas'][fmt][r['name']]
    assert r['quantized'] and abs(d) <= 1e-6, (r['name'], r['delta_loss'], d)
PY"
done

# One site under a rule, the others float: only it is measured, with its own rule's format.
$Q $FX $FX/data.txt --json -c 'quant h.0.mlp.c_fc int4 gran=channel; sensitivity method=delta' \
    >"$T/one.json" 2>&1
check one-site-rule "python3 - $FX/deltas.json $T/one.json <<'PY'
import json, sys
ref = json.load(open(sys.argv[1]))
o = [json.loads(l) for l in open(sys.argv[2])][-1]
for r in o['layers']:
    if r['name'] == 'h.0.mlp.c_fc':
        assert r['quantized'] and abs(r['delta_loss'] - ref['deltas']['int4']['h.0.mlp.c_fc']) <= 1e-6
    else:
        assert not r['quantized'] and r['delta_loss'] == 0, r
PY"

# The bundled transformers: delta for every site, the layers table remembers it, and with one
# site quantized (weights and activations) the delta is eval's loss change.
for m in tiny-gpt2 tiny-llama; do
    $Q datasets/models/$m datasets/text/licenses.txt --json \
        -c 'quant * int4 gran=channel; sensitivity method=delta; layers' >"$T/$m.json" 2>"$T/$m.err"
    rc=$?
    check "$m-every-site" "[ $rc = 0 ] && python3 - $T/$m.json <<'PY'
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
s = [o for o in lines if o.get('cmd') == 'sensitivity'][0]
lay = lines[-1]['layers']
assert len(s['layers']) == len(lay) and len(lay) >= 9
assert any(r['name'] == 'lm_head' for r in s['layers'])
for r, l in zip(s['layers'], lay):
    assert r['quantized'] and math.isfinite(r['delta_loss'])
    assert l['name'] == r['name'] and l['sensitivity_method'] == 'delta'
    assert l['sensitivity'] == r['delta_loss'], (l, r)
assert max(abs(r['delta_loss']) for r in s['layers']) > 0
PY"
done
site=model.layers.0.mlp.up_proj
$Q datasets/models/tiny-llama datasets/text/licenses.txt --json \
    -c "quant $site int4 gran=channel; quant $site int8 on=a; eval; sensitivity" >"$T/ev.json" 2>&1
check llama-delta-is-eval-change "python3 - $T/ev.json $site <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ev = [o for o in lines if o.get('cmd') == 'eval'][0]
s = [o for o in lines if o.get('cmd') == 'sensitivity'][0]
r = [r for r in s['layers'] if r['name'] == sys.argv[2]][0]
want = ev['quant']['loss'] - ev['float']['loss']
assert want != 0 and abs(r['delta_loss'] - want) <= 1e-7, (r['delta_loss'], want)
PY"

# The same with static activation scales: the one-site pass calibrates them as eval does
$Q datasets/models/tiny-llama datasets/text/licenses.txt --json \
    -c "quant $site int8 on=a amode=static; sensitivity; eval" >"$T/evs.json" 2>&1
check llama-delta-static-is-eval-change "python3 - $T/evs.json $site <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ev = [o for o in lines if o.get('cmd') == 'eval'][0]
s = [o for o in lines if o.get('cmd') == 'sensitivity'][0]
r = [r for r in s['layers'] if r['name'] == sys.argv[2]][0]
want = ev['quant']['loss'] - ev['float']['loss']
assert want != 0 and abs(r['delta_loss'] - want) <= 1e-7, (r['delta_loss'], want)
PY"

# What transformers do not have yet is said, and what they have is named.
out=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int8; sensitivity probes=4' 2>&1)
check default-is-all "grep -q '^delta_loss: held-out loss (14400 predicted tokens' <<<\"\$out\" && grep -q grad_norm <<<\"\$out\" && grep -q fisher_err <<<\"\$out\" && grep -q hutch_tr <<<\"\$out\""
# allocate bits= on a transformer: the plan it prints, applied, is what eval then measures
# (held-out loss and bits/weight), and it stays within its budget; a LLaMA with a low-rank
# correction among the candidates too.
out=$($Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'allocate bits=5 formats=int4,int8 apply; eval' 2>&1)
check allocate-bits-lm-applies "python3 -c '
import json, sys
L = [json.loads(l) for l in sys.argv[1].splitlines() if l.startswith(\"{\")]
a = [o for o in L if o.get(\"cmd\") == \"allocate\"][0]
ev = [o for o in L if o.get(\"cmd\") == \"eval\"][-1]
assert abs(a[\"loss\"] - ev[\"quant\"][\"loss\"]) <= 1e-9, (a[\"loss\"], ev[\"quant\"][\"loss\"])
assert abs(a[\"bits_per_weight\"] - ev[\"bits_per_weight\"]) <= 1e-9 and a[\"bits_per_weight\"] <= 5
assert {r[\"format\"] for r in a[\"plan\"]} == {\"int4\", \"int8\"} and len(a[\"plan\"]) == 9
assert abs(a[\"ppl\"] - 2.718281828459045 ** a[\"loss\"]) < 1e-6
' \"\$out\""
msg=$($Q datasets/models/tiny-llama datasets/text/licenses.txt -c 'allocate bits=4.5 formats=int3,int4 corr=lqer ranks=4' 2>&1)
rc=$?
check allocate-bits-llama-corr "[ $rc = 0 ] && grep -q '^plan: 4\.[0-9]* bits/weight (packed), joint calibration loss [0-9.]*; held-out ppl [0-9.]* loss' <<<\"\$msg\" && grep -q '^correct model.layers.[01].[a-z_.]* lqer r=4 prec=float\$' <<<\"\$msg\""
msg=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int3 gran=channel; allocate rank=8' 2>&1)
rc=$?
check allocate-rank-works "[ $rc = 0 ] && grep -q '^rank given 8 of 8' <<<\"\$msg\""

# error's KL share on transformers: kl=off leaves it out (null) and changes nothing else, kl=auto
# computes it on a model this small, and the cost it states is parameters x held-out tokens x
# quantized sites (tiny-gpt2: 120576 x 14400 x 9).
out=$($Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int4; error kl=off; error' 2>&1)
check error-kl-off "python3 -c '
import json, sys
L = [json.loads(l) for l in sys.argv[1].splitlines() if l.startswith(\"{\")]
a, b = [o for o in L if o.get(\"cmd\") == \"error\"]
assert all(r[\"kl_share\"] is None and r[\"kl_alone\"] is None for r in a[\"layers\"])
assert all(r[\"kl_share\"] is not None for r in b[\"layers\"]) and abs(sum(r[\"kl_share\"] for r in b[\"layers\"]) - 1) < 1e-6
for x, y in zip(a[\"layers\"], b[\"layers\"]):
    assert x[\"preact_rel_mse\"] == y[\"preact_rel_mse\"] and x[\"cosine\"] == y[\"cosine\"]
' \"\$out\""
msg=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant * int4; error kl=off' 2>&1)
check error-kl-cost-stated "grep -q 'kl_share not computed: one held-out run per quantized site, about 1.56e+10 multiply-adds' <<<\"\$msg\""
# kl=auto leaves the KL share out once its runs are costly (parameters x held-out tokens x
# sites > 1e11; one site of a GPT-2-small is 7.6e11): 1.2M random ids give tiny-gpt2 120000
# held-out tokens, 120576 x 120000 x 9 sites = 1.30e11
python3 -c 'import random, sys; random.seed(7); sys.stdout.buffer.write(bytes(b for _ in range(1200000) for b in (random.randrange(256), 0)))' >"$T/many.bin"
msg=$($Q datasets/models/tiny-gpt2 "$T/many.bin" -c 'quant * int4; set calib 1; error' 2>&1)
check error-kl-auto-costly "grep -q 'kl_share not computed: one held-out run per quantized site, about 1.3e+11 multiply-adds' <<<\"\$msg\""
msg=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'error kl=maybe' 2>&1)
check error-kl-bad "grep -q 'kl=maybe: expected auto, on or off' <<<\"\$msg\""
# error keeps both paths' residual stream at block entries within the activation budget, as info
# shows (tiny-gpt2: 2 entries x 8 windows x 64 x 64 floats x 2 paths = 512 KB); a budget below
# it drops them, and the next error keeps what fits beside its own 192 KB of a block's
# activations (300K: none; 600K: one entry, the head's input, every 2 blocks)
msg=$($Q --json datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant h.1.mlp.c_fc int4; error; info; set memory acts=300K; info; quant h.1.mlp.c_fc int3; error; info; set memory acts=600K; quant h.1.mlp.c_fc int2; error; info' 2>&1 | grep '"cmd":"info"' | grep -o '"residual_bytes":[0-9]*' | tr '\n' ' ')
check error-residuals-info "[ \"\$msg\" = '\"residual_bytes\":524288 \"residual_bytes\":0 \"residual_bytes\":0 \"residual_bytes\":262144 ' ]"
msg=$($Q datasets/models/tiny-gpt2 datasets/text/licenses.txt -c 'quant h.1.mlp.c_fc int4; set memory acts=600K; error; info' 2>&1)
check error-residuals-text "grep -q 'of it block-entry residuals 0.2 MB (calibration: every 2 blocks, 8 windows)' <<<\"\$msg\""
