#!/usr/bin/env bash
# cmd_spec.sh - the command table as the binary prints it (`qscope --commands`) and the manual
# held to it: each command's list head in the COMMANDS section of man/qscope.1 must be the
# synopsis generated from its argument spec (`qscope --commands=mdoc`), word for word, once. A
# spec changed without the manual, or a manual synopsis edited by hand, fails here; the message
# prints the line to paste. Also: bad arguments refused by name through the binary.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d /tmp/qscope-cmdspec.XXXXXX)
trap 'rm -rf "$T"' EXIT
Q=./qscope
MAN=${QSCOPE_MAN:-man/qscope.1} # another page can be checked (the test of this test does)
pass() { echo "PASS cmd_spec.$1"; }
fail() { echo "FAIL cmd_spec.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# --commands: name, synopsis, flags, help; one row per command, four tab-separated fields.
$Q --commands >"$T/table"
n=$(wc -l <"$T/table")
check commands-table "[ $n -ge 40 ] && awk -F'\t' 'NF != 4 || index(\$2, \$1) != 1 { bad = 1 } END { exit bad }' '$T/table'"
check commands-flags "grep -q \$'^spectrum\tspectrum LAYER .*\tjournal,data\t' '$T/table' && grep -q \$'^quant\tquant PATTERN FORMAT .*\tjournal,model,recalc\t' '$T/table' && grep -q \$'^save session\t.*\twrites\t' '$T/table'"

# The manual's synopses against the generated ones.
$Q --commands=mdoc >"$T/gen"
sed -n '/^\.Sh COMMANDS/,/^\.Sh /p' "$MAN" >"$T/section"
bad=0
while IFS= read -r line; do
  # the command's name: the words before the first macro
  name=$(sed -E 's/^\.It Cm //; s/ (Ar|Oo|Cm|Op) .*//' <<<"$line")
  heads=$(grep -cE "^\.It Cm ${name}( |\$)" "$T/section")
  if [ "$heads" != 1 ]; then
    echo "  $name: $heads list heads in the COMMANDS section of $MAN (want 1)" >&2
    bad=1
  elif ! grep -qxF -- "$line" "$T/section"; then
    echo "  $name: the manual's synopsis differs from the spec's; the line is:" >&2
    echo "$line" >&2
    bad=1
  fi
done <"$T/gen"
check man-synopses "[ $bad = 0 ] && [ \$(wc -l <'$T/gen') = $n ]"

# Bad arguments through the binary: refused by name, exit 1, nothing run (no model needed).
msg=$($Q --no-default -c 'spectrum fc1 k=many' 2>&1); rc=$?
check bad-int "[ $rc = 1 ] && grep -qF \"spectrum k: 'many' is not an integer\" <<<\"\$msg\""
msg=$($Q --no-default -c 'quant * int4 round=up' 2>&1); rc=$?
check bad-enum "[ $rc = 1 ] && grep -qF 'quant: round=up: expected nearest or stochastic' <<<\"\$msg\""
msg=$($Q --no-default -c 'set gate high' 2>&1); rc=$?
check bad-float "[ $rc = 1 ] && grep -qF \"set gate: 'high' is not a number\" <<<\"\$msg\""
msg=$($Q --no-default -c 'rank fc* k=4' 2>&1); rc=$?
check unknown-option "[ $rc = 1 ] && grep -qF \"rank: unknown option 'k=4'; usage: rank [PATTERN] [of=weight|preact] [scale=none|act|cov]\" <<<\"\$msg\""

# Handlers read their words through the spec (qs_arg, qs_arg_pos): options may come before the
# positional, as the synopsis allows (rank once took 'of=weight fc*' as an unknown option 'fc*').
a=$($Q --json -c 'quant * int4; rank of=weight fc*' 2>&1 | tail -1)
b=$($Q --json -c 'quant * int4; rank fc* of=weight' 2>&1 | tail -1)
check options-before-positional "[ -n \"\$a\" ] && [ \"\$a\" = \"\$b\" ] && grep -q '\"cmd\":\"rank\"' <<<\"\$a\""

# Values the spec converted are read converted (qs_arg_int_in): the handler checks only the range,
# and names the option as the spec does.
msg=$($Q -c 'correct fc1 lowrank r=0' 2>&1); rc=$?
check int-range-named "[ $rc = 1 ] && grep -qF 'correct r: 0 is out of range (1..1048576)' <<<\"\$msg\""
msg=$($Q -c 'train hidden=16,0 epochs=1' 2>&1); rc=$?
check ints-range-named "[ $rc = 1 ] && grep -qF 'train hidden: 0 is out of range (1..65536)' <<<\"\$msg\""
msg=$($Q -c 'train hidden=8,x epochs=1' 2>&1); rc=$?
check bad-ints "[ $rc = 1 ] && grep -qF \"train hidden: 'x' is not an integer (hidden=8,x: a comma list of integers)\" <<<\"\$msg\""
msg=$($Q -c 'train steps=3 epochs=1' 2>&1); rc=$?
check mlp-refuses-lm-option "[ $rc = 1 ] && grep -qF \"train: unknown option 'steps=3' (hidden=\" <<<\"\$msg\""

# amode=token scales activations per token: a plain cast (fp16, bf16) has no scale, so the rule is
# refused rather than accepted and ignored; a scaled format takes it.
bad=""
for f in fp16 bf16; do
  msg=$($Q -c "quant fc1 $f on=a amode=token" 2>&1) && bad="$bad [$f accepted]"
  grep -qF "quant: amode=token computes one scale per token; $f is a plain cast with no scale" <<<"$msg" ||
    bad="$bad [$f: $msg]"
done
$Q -c 'quant fc1 int8 on=a amode=token' >/dev/null 2>&1 || bad="$bad [int8 refused]"
check token-needs-a-scale "[ -z \"$bad\" ]"
