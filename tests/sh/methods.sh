#!/usr/bin/env bash
# methods.sh - quantizer methods as options of `quant`, through the command language: the JSON
# figures of `error` (GPTQ below round-to-nearest on every layer of the digits MLP), `rules` and
# `layers` naming the method, the journal's canonical line replaying to the same numbers, the
# exports (GPTQ's packed codes reload to the session's model; a rotated site refuses packed),
# and the refusals (no data, a method on format none).
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
M=datasets/models/digits-mlp.safetensors
D=datasets/digits.csv
pass() { echo "PASS methods.$1"; }
fail() { echo "FAIL methods.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

out=$($Q --no-default "$M" "$D" --json -c "quant * int3 gran=channel; error kl=off; quant * int3 gran=channel method=gptq; error kl=off; rules; layers; eval; export model $T/g.safetensors packed" 2>&1)
# local (float-input) and propagated pre-activation errors: GPTQ below RTN on every layer
check gptq_below_rtn "python3 - <<'PY' \"\$out\"
import json, sys
errs = [json.loads(l) for l in sys.argv[1].splitlines() if l.startswith('{') and '\"cmd\":\"error\"' in l]
rtn, gq = errs[0]['layers'], errs[1]['layers']
ok = len(rtn) == 3 and all(g['preact_rel_mse'] < r['preact_rel_mse'] for r, g in zip(rtn, gq))
for r, g in zip(rtn, gq):
    print('  %s preact_rel_mse GPTQ / RTN %.4f' % (r['name'], g['preact_rel_mse'] / r['preact_rel_mse']), file=sys.stderr)
sys.exit(0 if ok else 1)
PY"
check rules_json_method "grep '\"cmd\":\"rules\"' <<<\"\$out\" | grep -q '\"method\":\"method=gptq damp=0.01 order=col inputs=quant\"'"
check layers_show_method "grep '\"cmd\":\"layers\"' <<<\"\$out\" | grep -q 'int3/channel+gptq'"
# the packed GPTQ codes reload as the session's quantized model
ev=$(grep '"cmd":"eval"' <<<"$out")
re=$($Q --no-default "$T/g.safetensors" "$D" --json -c eval 2>&1 | grep '"cmd":"eval"')
check packed_reload "python3 -c 'import json,sys; a=json.loads(sys.argv[1])[\"quant\"][\"loss\"]; b=json.loads(sys.argv[2])[\"float\"][\"loss\"]; sys.exit(0 if abs(a-b) <= 1e-8*abs(a) else 1)' \"\$ev\" \"\$re\""
# the journal's canonical line replays to the same figures
$Q --no-default "$M" "$D" -c "quant * int3 gran=channel rotate=hadamard method=gptq order=act; quant fc2 int4 gran=group:16 weight=imatrix inputs=float; eval; error kl=off; save session $T/s.qs" >/dev/null 2>&1
check canonical_line "grep -q '^quant \* int3 gran=channel .* method=gptq damp=0.01 order=act inputs=quant rotate=hadamard$' $T/s.qs"
check replay "$Q --replay $T/s.qs --check >$T/r.out 2>&1 && grep -q ' 0 differ' $T/r.out"
# refusals with a reason
o=$($Q --no-default "$M" -c "quant * int3 gran=channel method=gptq" 2>&1)
check needs_data "grep -q 'takes statistics of the calibration data' <<<\"\$o\""
o=$($Q --no-default "$M" "$D" -c "quant * int3 gran=channel rotate=hadamard; export model $T/r.safetensors packed" 2>&1)
check rotated_packed_refused "grep -q 'rotated or channel-scaled basis' <<<\"\$o\" && [ ! -e $T/r.safetensors ]"
o=$($Q --no-default "$M" "$D" -c "quant * none method=awq" 2>&1)
check none_refused "grep -q 'format none keeps sites in float' <<<\"\$o\""
