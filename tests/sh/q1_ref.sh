#!/usr/bin/env bash
# q1_ref.sh - the Q1 recovery of a transformer site against an independent float64 reference
# (tests/tools/q1_ref.py: its own GPT-2 forward in torch, int4 per-channel weights, split, centred
# ridge with qscope's lambda and rank cut, and the map quantized int8/int4 per output row). The
# point: qscope's negative R_lin_q4 on transformers (the zoo's median -7.2 against the overnight
# report's -0.07) is what the definition gives, not a bug - the reference gives it too.
# Tolerances: float and int8 maps 0.02 absolute (a float32 forward and fit against float64);
# the int4 map 15 % of |R| (a float32 map puts a few entries on the other side of a rounding
# boundary: measured 7 % on h.1.mlp.c_fc, 0.3 % on h.0.attn.c_attn), and R_lin_q4 must be
# negative in both. A map quantized per tensor, not quantized, or fitted with another lambda or
# rank cut fails.
set -u
cd "$(dirname "$0")/../.."
Q=./qscope
M=datasets/models/tiny-gpt2
D=datasets/text/licenses.txt
pass() { echo "PASS q1_ref.$1"; }
fail() { echo "FAIL q1_ref.$1"; }
for site in h.0.attn.c_attn h.1.mlp.c_fc; do
  ref=$(/usr/bin/python3 tests/tools/q1_ref.py $M $D $site 2>&1)
  for prec in float int8 int4; do
    got=$($Q $M $D --no-default -c "quant * int4 gran=channel; correct $site linear prec=$prec" 2>&1 |
      sed -n 's/.*recovery R = \([-0-9.]*\) on held-out windows (calib \([-0-9.]*\)).*rank kept \([0-9]*\).*/\1 \2 \3/p')
    want=$(awk -v p=$prec '$1 == p {print $2, $3, $5}' <<<"$ref")
    if python3 - "$prec" "$got" "$want" 2>/dev/null <<'PY'; then pass "$site.$prec"; else fail "$site.$prec ($prec: qscope '$got', reference '$want')"; fi
import sys
prec, got, want = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
assert len(got) == 3 and len(want) == 3, "missing figures"
g, w = [float(x) for x in got[:2]], [float(x) for x in want[:2]]
assert got[2] == want[2], "rank kept differs"
for a, b in zip(g, w):
    tol = 0.15 * abs(b) if prec == "int4" else 0.02
    assert abs(a - b) <= tol, (a, b)
if prec == "int4":
    assert g[0] < 0 and w[0] < 0
PY
  done
done
