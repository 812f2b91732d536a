#!/usr/bin/env bash
# fmt_traits.sh - callers outside src/quant ask the format traits (format.h qs_format_traits)
# instead of testing format kinds, so that the unscaled formats fp16 and bf16 (a plain cast, no
# scale; gran=, clip= and scale= refused) work wherever a format is taken:
#   layers-fp16-plain       `layers` names an fp16 weight and a bf16 activation by the format
#                           alone ("fp16", not "fp16/tensor": there is no scale, so no
#                           granularity), as it does mxfp4's fixed blocks
#   allocate-fp16-candidate allocate bits=B formats=...,fp16,mxfp4,q4_0 plans with those
#                           candidates (the default gran= applies to neither), its JSON "gran"
#                           is "none" / "block" for them; fp16/tensor, a granularity asked for,
#                           is still refused
#   study-fp16-plan         study q1 format=fp16 plan=DIR writes its plan (the default gran=tensor
#                           does not apply), and one setting of it runs
#   imatrix-fp16-refused    weight=imatrix on fp16 says there is no scale to search (not "use
#                           gran=channel", which fp16 refuses)
#   lsq-refusals            qat scales=lsq refuses fp16, bf16, mxfp4, nvfp4 and q4_0, each with
#                           its reason, and starts on int4
#   static-needs-amax       amode=static is refused for formats without a tensor absmax (bf16,
#                           mxfp4, nf4) when the rule is made, not at every forward pass after
#   corr-prec-fp16          a correction's fp16 factors are described as a cast with no scales,
#                           and counted as 16 bits per factor entry
#   help-names-formats      `help quant` names every format `formats` lists (intN as int2..int8,
#                           compand:N as compand:B)
#   tui.bits-down-fp16      '-' on an fp16 layer in the TUI runs `quant fc1 int8 gran=channel`
#                           (one bit less than 16 is the widest integer format, not float)
#   tui.bits-down-keeps-fp8-groups  '-' on fp8-e4m3 gran=group:32 runs `quant fc1 int7
#                           gran=group:32`: a format with free scales keeps its granularity
set -u
cd "$(dirname "$0")/../.."
W=$(mktemp -d)
Q=${QSCOPE_BIN:-$PWD/qscope}
M=datasets/models/digits-mlp.safetensors
D=datasets/digits.csv
export LC_ALL=C.UTF-8
pass() { echo "PASS fmt_traits.$1"; }
fail() { echo "FAIL fmt_traits.$1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/    /' | head -20; }
check() { if eval "$2"; then pass "$1"; else fail "$1" "${out:-}"; fi; }

out=$($Q --no-default "$M" "$D" -c "quant fc1 fp16; quant fc2 bf16 on=a; quant fc0 mxfp4; layers" 2>&1)
check layers-fp16-plain 'grep -qE "^fc1 +64x64 +relu +fp16 +float " <<<"$out" &&
  grep -qE "^fc2 +10x64 +none +float +bf16 " <<<"$out" && grep -qE "^fc0 +64x64 +relu +mxfp4 " <<<"$out"'

out=$($Q --no-default "$M" "$D" --json -c "allocate bits=12 formats=int4,fp16,mxfp4,q4_0" 2>&1)
alloc_ok() {
  python3 - "$out" <<'PY' || return 1
import json, sys
o = [json.loads(l) for l in sys.argv[1].splitlines() if l.startswith("{") and '"allocate"' in l][0]
g = {l["format"]: l["gran"] for l in o["plan"]}
want = {"int4": "channel", "fp16": "none", "mxfp4": "block", "q4_0": "block"}
sys.exit(0 if "fp16" in g and all(want[f] == v for f, v in g.items()) else 1)
PY
  ! out=$($Q --no-default "$M" "$D" -c "allocate bits=12 formats=int4,fp16/tensor" 2>&1) &&
    grep -q "fp16: a plain cast with no scale" <<<"$out"
}
check allocate-fp16-candidate alloc_ok

out=$($Q --no-default "$M" "$D" -c "study q1 format=fp16 seeds=0 plan=$W/plan" 2>&1)
check study-fp16-plan '[ -f $W/plan/jobs.txt ] && grep -q "format=fp16" $W/plan/plan.json &&
  sh $W/plan/run.sh 000-digits-mlp-s0 >/dev/null 2>&1 && grep -q "\"complete\":[[:space:]]*true" $W/plan/results/000-digits-mlp-s0.json'

out=$($Q --no-default "$M" "$D" -c "quant fc1 fp16 weight=imatrix" 2>&1)
check imatrix-fp16-refused '[ $? != 0 ] && grep -q "fp16: a plain cast has no scale; an imatrix scale search does not apply" <<<"$out"'

lsq_bad=""
for f in fp16:"it has no scale" bf16:"it has no scale" mxfp4:"powers of two (E8M0)" \
         nvfp4:"E4M3 codes under a tensor scale" q4_0:"llama.cpp's own rules"; do
  fm=${f%%:*} why=${f#*:}
  e=$($Q --no-default "$M" "$D" -c "quant * $fm; qat scales=lsq epochs=1" 2>&1)
  grep "qat scales=lsq: $fm: " <<<"$e" | grep -qF "$why" || lsq_bad="$lsq_bad [$fm: $e]"
done
e=$($Q --no-default "$M" "$D" -c "quant * int4 gran=channel; qat scales=lsq epochs=1" 2>&1) ||
  lsq_bad="$lsq_bad [int4: $e]"
out=$lsq_bad
check lsq-refusals '[ -z "$lsq_bad" ]'

sa_bad=""
for f in bf16 mxfp4 nf4; do
  e=$($Q --no-default "$M" "$D" -c "quant fc1 $f on=a amode=static" 2>&1) &&
    sa_bad="$sa_bad [$f accepted]"
  grep -q "quant: amode=static calibrates one absmax per tensor; $f" <<<"$e" || sa_bad="$sa_bad [$f: $e]"
done
$Q --no-default "$M" "$D" -c "quant fc1 fp8-e4m3 on=a amode=static; eval" >/dev/null 2>&1 ||
  sa_bad="$sa_bad [fp8-e4m3 static refused]"
out=$sa_bad
check static-needs-amax '[ -z "$sa_bad" ]'

out=$($Q --no-default "$M" "$D" -c "quant * int3 gran=tensor; correct fc1 lowrank r=4 prec=fp16" 2>&1)
# 4 x (64 + 64) factor entries at 16 bits, nothing else stored
check corr-prec-fp16 'grep -qF "(+8192 bits: fp16 factors packed, cast, no scales)" <<<"$out"'

help=$($Q --no-default -c "help quant" 2>&1)
names=$($Q --no-default --json -c formats 2>&1 | python3 -c '
import json, sys
print("\n".join(f["name"] for f in json.loads(sys.stdin.read())["formats"]))')
missing=""
for n in $names; do
  case $n in int[2-8]) n=int2..int8 ;; compand:*) n=compand:B ;; esac
  grep -qF -- "$n" <<<"$help" || missing="$missing $n"
done
out="missing:$missing"
check help-names-formats '[ -n "$names" ] && [ -z "$missing" ]'

# ---- the TUI: '-' on an fp16 layer ----
TEST=fmt_traits
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh
ENV="LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen"
s="qs-fmt-$$"
if start "$s" "$ENV" "$M" "$D"; then
  cmd "$s" "quant fc1 fp16"
  wait_for "$s" "fc1 -> fp16: " 15 && wait_idle "$s"
  esc "$s"
  T send-keys -t "$s" j
  wait_for "$s" ">fc1 " 5
  T send-keys -t "$s" -- -
  if wait_for "$s" "> quant fc1 int8 gran=channel" 10 && wait_for "$s" "fc1 -> int8: " 10 &&
     wait_idle "$s" && screen "$s" | grep -qE "^>fc1 .*int8/channel" && ! screen "$s" | grep -q "^error:"; then
    pass "tui.bits-down-fp16"
  else
    fail "tui.bits-down-fp16" "$(screen "$s")"
  fi
  # a minifloat's own granularity is kept (it has free scales at a gran= of its choice)
  cmd "$s" "quant fc1 fp8-e4m3 gran=group:32"
  wait_for "$s" "fc1 -> fp8-e4m3: " 15 && wait_idle "$s"
  esc "$s"
  T send-keys -t "$s" -- -
  if wait_for "$s" "> quant fc1 int7 gran=group:32" 10 && wait_for "$s" "fc1 -> int7: " 10 &&
     wait_idle "$s" && screen "$s" | grep -qE "^>fc1 .*int7/g32" && ! screen "$s" | grep -q "^error:"; then
    pass "tui.bits-down-keeps-fp8-groups"
  else
    fail "tui.bits-down-keeps-fp8-groups" "$(screen "$s")"
  fi
else
  fail "tui.bits-down-fp16" "did not start: $(screen "$s")"
fi
T kill-session -t "$s" >/dev/null 2>&1
rm -rf "$W"
