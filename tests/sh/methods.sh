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
# every export records each site's quantizer and its options (qscope.weight_methods): the
# dequantized file after gptq + rotation (the rotation seed per site) and AWQ (its alpha), the
# packed one after GPTQ; the packed reader refuses a method whose codes it cannot decode
$Q --no-default "$M" "$D" -c "quant * int4 gran=channel method=gptq rotate=hadamard; quant fc2 int4 gran=channel method=awq; export model $T/m.safetensors" >/dev/null 2>&1
check export_records_methods "python3 - $T/m.safetensors $T/g.safetensors <<'PY'
import json, re, struct, sys
def meta(p):
    b = open(p, 'rb').read()
    return json.loads(b[8:8 + struct.unpack('<Q', b[:8])[0]])['__metadata__']
m = meta(sys.argv[1])['qscope.weight_methods'].split(';')
ok = len(m) == 3
ok = ok and all(re.fullmatch('method=gptq damp=0.01 order=col inputs=quant rotate=hadamard seed=[0-9]+', x) for x in m[:2])
ok = ok and m[0].split()[-1] != m[1].split()[-1]
ok = ok and re.fullmatch('method=awq inputs=quant alpha=0(\\.[0-9]+)?', m[2]) is not None
g = meta(sys.argv[2])['qscope.weight_methods'].split(';')
ok = ok and g == ['method=gptq damp=0.01 order=col inputs=quant'] * 3
print('  ' + ' | '.join(m), file=sys.stderr)
sys.exit(0 if ok else 1)
PY"
# the packed GPTQ file with its fc1 entry rewritten: rotate=hadamard is refused by name, an
# unknown token too, and the untouched file still loads
python3 - "$T/g.safetensors" "$T" <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
for name, entry in (('rot', 'method=gptq damp=0.01 order=col inputs=quant rotate=hadamard seed=3'),
                    ('bad', 'method=gptq colour=blue')):
    hh = json.loads(json.dumps(h))
    m = hh['__metadata__']['qscope.weight_methods'].split(';')
    m[1] = entry
    hh['__metadata__']['qscope.weight_methods'] = ';'.join(m)
    s = json.dumps(hh, separators=(',', ':')).encode()
    s += b' ' * (-len(s) % 8)
    open('%s/%s.safetensors' % (sys.argv[2], name), 'wb').write(struct.pack('<Q', len(s)) + s + b[8 + n:])
PY
o=$($Q --no-default "$T/rot.safetensors" "$D" -c eval 2>&1)
check packed_method_refused "grep -q 'fc1) was quantized with rotate=hadamard' <<<\"\$o\""
o=$($Q --no-default "$T/bad.safetensors" "$D" -c eval 2>&1)
check packed_method_bad_token "grep -q \"token 'colour=blue' is not a quantizer method option\" <<<\"\$o\""
# export csv's comment line names each site's method with its options when there is one
$Q --no-default "$M" "$D" -c "quant * int4 gran=channel method=gptq rotate=hadamard; quant fc2 int4 gran=group:32 weight=imatrix; layers; export csv $T/l.csv; quant * int4 gran=channel; layers; export csv $T/p.csv" >/dev/null 2>&1
check csv_records_methods "head -1 $T/l.csv | grep -q ' methods=fc0:method=gptq,damp=0.01,order=col,inputs=quant,rotate=hadamard,seed=[0-9]* fc1:method=gptq,[^ ]*seed=[0-9]* fc2:weight=imatrix,inputs=quant$' && ! head -1 $T/p.csv | grep -q methods="
# the layers table's format columns fit their longest cell: every row's weights, activations
# and bits/w start under their headers (int4/channel+gptq+rot is 21 characters)
o=$($Q --no-default "$M" "$D" -c "quant * int4 gran=channel method=gptq rotate=hadamard; quant fc2 int8 gran=group:32 amode=static smooth=0.5; regime full; layers" 2>&1)
check layers_columns_fit "python3 - <<'PY' \"\$o\"
import sys
lines = sys.argv[1].splitlines()
h = next(i for i, l in enumerate(lines) if l.startswith('layer '))
head, rows = lines[h], lines[h + 1:h + 4]
ok = len(rows) == 3 and any('int4/channel+gptq+rot' in r for r in rows)
for r in rows:
    cells = r.split()
    ok = ok and r.index(cells[3]) == head.index('weights') and r.index(' ' + cells[4] + ' ') + 1 == head.index('activations')
    ok = ok and r.index(cells[5]) + len(cells[5]) == head.index('bits/w') + len('bits/w')
sys.exit(0 if ok else 1)
PY"
