#!/usr/bin/env bash
# tests/sh/sessions.sh - saved sessions and --replay --check, scripts (-b, bail, source), crash
# recovery of the autosaved journal, and the example sessions in sessions/. Prints PASS/FAIL
# lines; run from anywhere (it changes to the repository root). XDG_STATE_HOME comes from
# tests/run.sh; each test that touches the journal uses a state folder of its own anyway.
set -u
cd "$(dirname "$0")/../.."
Q=${QSCOPE_BIN:-./qscope} # QSCOPE_BIN=build-asan/qscope runs the same checks under ASan
T=$(mktemp -d /tmp/qscope-sessions.XXXXXX)
REPL_PID=
cleanup() {
  if [ -n "$REPL_PID" ]; then kill -9 "$REPL_PID" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT

ok() { echo "PASS sessions.$1"; }
bad() { echo "FAIL sessions.$1${2:+: $2}"; }
check() { # name, condition exit status, detail
  if [ "$2" -eq 0 ]; then ok "$1"; else bad "$1" "${3:-}"; fi
}

MODEL=${QSCOPE_HOME:-.}/datasets/models/digits-mlp.safetensors
DATA=${QSCOPE_HOME:-.}/datasets/digits.csv

# (1) save a session from -c and replay it with --check
$Q -c "quant * int4 gran=channel; eval; save session $T/s.qs" >"$T/o1" 2>&1
rc=$?
$Q --replay "$T/s.qs" --check >"$T/o1r" 2>&1
rc2=$?
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ] && grep -q ', 0 differ$' "$T/o1r"
check save_replay_check $? "save rc=$rc, replay rc=$rc2: $(tail -3 "$T/o1r" | tr '\n' ' ')"
[ "$(grep -cE '^# (model|data) .* sha256=[0-9a-f]{64}$' "$T/s.qs" 2>/dev/null)" = 2 ]
check header_pins_files $?
grep -q '^# => quant.acc=' "$T/s.qs" 2>/dev/null
check results_recorded $?

# (2) a recorded number edited beyond tolerance: exit 1 naming the field
sed 's/^# => quant\.loss=.*/# => quant.loss=123.5/' "$T/s.qs" >"$T/s2.qs"
$Q --replay "$T/s2.qs" --check >"$T/o2" 2>&1
rc=$?
[ "$rc" -eq 1 ]
check mismatch_detected $? "rc=$rc"
grep -q 's2.qs:[0-9]*: eval: quant.loss recorded 123.5 got' "$T/o2"
check mismatch_names_field $? "$(grep -v '^ ' "$T/o2" | tail -3 | tr '\n' ' ')"
# within tolerance: a relative change of 1e-9 passes
awk '/^# => quant.loss=/ { v = substr($0, 17); printf "# => quant.loss=%.12g\n", v * (1 + 1e-9); next } { print }' \
  "$T/s.qs" >"$T/s2b.qs"
$Q --replay "$T/s2b.qs" --check >"$T/o2b" 2>&1
check within_tolerance $? "$(tail -2 "$T/o2b" | tr '\n' ' ')"
# a recorded value that is not a number where the re-run gives one
sed 's/^# => quant\.acc=.*/# => quant.acc=ninety/' "$T/s.qs" >"$T/s2c.qs"
$Q --replay "$T/s2c.qs" --check >"$T/o2c" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "s2c.qs:[0-9]*: eval: quant.acc: recorded value 'ninety' is not a number" "$T/o2c"
check not_a_number $?
# a truncated session file is refused before running anything
head -c $(( $(wc -c <"$T/s.qs" 2>/dev/null || echo 0) * 2 / 3 )) "$T/s.qs" >"$T/s2d.qs" 2>/dev/null
$Q --replay "$T/s2d.qs" --check >"$T/o2d" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 's2d.qs:[0-9]*: truncated session' "$T/o2d"
check truncated_refused $?
# a command appended by hand below the end line is refused, not silently skipped
{ cat "$T/s.qs"; echo eval; } >"$T/s2g.qs"
$Q --replay "$T/s2g.qs" --check >"$T/o2g" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "s2g.qs:[0-9]*: 1 command after the '# end of session' line would not run" "$T/o2g"
check appended_after_end_refused $? "$(tail -2 "$T/o2g" | tr '\n' ' ')"
# an unknown command inside a session is reported with file and line
awk '/^eval$/ && !done { print "evaluate"; done = 1; next } { print }' "$T/s.qs" >"$T/s2e.qs"
ln=$(grep -n '^evaluate$' "$T/s2e.qs" | cut -d: -f1)
$Q --replay "$T/s2e.qs" --check >"$T/o2e" 2>&1
rc=$?
[ "$rc" -eq 1 ] && [ -n "$ln" ] && grep -q "s2e.qs:$ln: unknown command 'evaluate'" "$T/o2e"
check unknown_command_in_session $?
# a plain script is not a session
printf 'roundtrip int4 0.3\n' >"$T/plain.qs"
$Q --replay "$T/plain.qs" --check >"$T/o2f" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 'plain.qs:1: not a qscope session' "$T/o2f"
check not_a_session $?

# (3) a session pinned to a copy of the model: one changed byte, then a missing file
cp "$MODEL" "$T/m.safetensors"
$Q --no-default -c "load model $T/m.safetensors; load data $DATA; quant * int8; eval; save session $T/s3.qs" \
  >"$T/o3" 2>&1
$Q --replay "$T/s3.qs" --check >"$T/o3a" 2>&1
rc=$?
check copy_replays $rc "$(tail -2 "$T/o3a" | tr '\n' ' ')"
size=$(wc -c <"$T/m.safetensors" 2>/dev/null || echo 3)
printf '\x5a' | dd of="$T/m.safetensors" bs=1 seek=$((size - 3)) conv=notrunc status=none
$Q --replay "$T/s3.qs" --check >"$T/o3b" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "s3.qs:[0-9]*: model $T/m.safetensors has changed (sha256 recorded" "$T/o3b"
check changed_model_refused $? "$(head -2 "$T/o3b" | tr '\n' ' ')"
! grep -q '^regime\|^replay:' "$T/o3b"
check changed_model_nothing_run $?
rm "$T/m.safetensors"
$Q --replay "$T/s3.qs" --check >"$T/o3c" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "model $T/m.safetensors is missing" "$T/o3c"
check missing_model_refused $?

# (4) -b: the first error prints FILE:LINE and exits 1; with `set bail off` the script goes on
printf 'roundtrip int4 0.3\nroundtrip int8 0.5\nfrobnicate 1\nroundtrip int4 6.6\n' >"$T/b.qs"
$Q -b "$T/b.qs" >"$T/o4" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "^$T/b.qs:3: unknown command 'frobnicate'" "$T/o4"
check bail_file_line $? "rc=$rc $(tr '\n' ' ' <"$T/o4")"
grep -q '0.5 -> ' "$T/o4" && ! grep -q '6.6 -> ' "$T/o4"
check bail_stops $?
printf 'set bail off\nroundtrip int4 0.3\nfrobnicate 1\nroundtrip int4 6.6\n' >"$T/b2.qs"
$Q -b "$T/b2.qs" >"$T/o4b" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "$T/b2.qs:3: unknown command" "$T/o4b" && grep -q '6.6 -> 7' "$T/o4b"
check bail_off_goes_on $? "rc=$rc $(tr '\n' ' ' <"$T/o4b")"

# (5) source: relative paths resolve from the sourcing script's folder; loops hit the limit
mkdir -p "$T/a/sub"
printf 'source sub/inc.qs\nroundtrip int4 1.25\n' >"$T/a/main.qs"
printf 'roundtrip int4 2.75\nsource more.qs\n' >"$T/a/sub/inc.qs"
printf 'roundtrip int4 3.5\n' >"$T/a/sub/more.qs"
$Q -b "$T/a/main.qs" >"$T/o5" 2>&1
rc=$?
[ "$rc" -eq 0 ] && grep -q '2.75 -> 3' "$T/o5" && grep -q '3.5 -> 4' "$T/o5" && grep -q '1.25 -> 1' "$T/o5"
check source_relative $? "rc=$rc $(tr '\n' ' ' <"$T/o5")"
printf 'roundtrip int4 0.3\nsource loop.qs\n' >"$T/loop.qs"
timeout 20 $Q -b "$T/loop.qs" >"$T/o5b" 2>&1
rc=$?
msg=$(grep 'source cycle' "$T/o5b")
[ "$rc" -eq 1 ] && grep -q "^$T/loop.qs:2: source cycle: $T/loop.qs -> $T/loop.qs (refused" "$T/o5b"
check source_loop_limit $? "rc=$rc $(tail -c 300 "$T/o5b")"
# the message names the place once per script in the cycle, not sixteen times
[ "$(printf '%s' "$msg" | grep -o 'loop.qs' | wc -l)" -le 3 ]
check source_loop_message_short $? "$msg"
# a chain of 17 distinct scripts (no cycle) meets the depth limit
for i in $(seq 0 17); do printf 'source d%d.qs\n' $((i + 1)) >"$T/d$i.qs"; done
printf 'roundtrip int4 1\n' >"$T/d18.qs"
timeout 20 $Q -b "$T/d0.qs" >"$T/o5d" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "d0.qs:1: source d1.qs: scripts nested deeper than 16 (the limit on source nesting)" "$T/o5d"
check source_depth_limit $? "rc=$rc $(tail -c 300 "$T/o5d")"
printf 'source %s/nonexistent.qs\n' "$T" >"$T/miss.qs"
$Q -b "$T/miss.qs" >"$T/o5c" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "miss.qs:1: $T/nonexistent.qs: .*No such file" "$T/o5c"
check source_missing $?

# (6) crash recovery: a REPL killed with -9 after `eval`; the next start offers the journal
export XDG_STATE_HOME=$T/state6
trap '' PIPE # a qscope that died early must not take this script with it
mkfifo "$T/fifo"
$Q --repl <"$T/fifo" >"$T/o6" 2>&1 &
REPL_PID=$!
disown "$REPL_PID" # no "Killed" job report from the shell
exec 7>"$T/fifo"
printf 'quant * int3\neval\n' >&7 2>/dev/null
seen=1
for _ in $(seq 600); do # poll the output, up to 60 s
  if grep -q 'top-1 agreement' "$T/o6"; then seen=0; break; fi
  kill -0 "$REPL_PID" 2>/dev/null || break
  sleep 0.1
done
check crash_repl_ran $seen "$(head -c 300 "$T/o6")"
kill -9 "$REPL_PID" 2>/dev/null
for _ in $(seq 100); do kill -0 "$REPL_PID" 2>/dev/null || break; sleep 0.05; done
REPL_PID=
exec 7>&-
printf 'recover\nrules\n' | $Q --repl >"$T/o6b" 2>&1
grep -q "a journal from an earlier session was not closed cleanly ([0-9]* commands\?): type 'recover' to restore it" "$T/o6b"
check crash_unclean_noted $? "$(head -c 300 "$T/o6b")"
grep -q '^restored [0-9]* commands from' "$T/o6b" && sed -n '/^restored/,$p' "$T/o6b" | grep -q ' int3 '
check crash_recovered $? "$(tr '\n' ' ' <"$T/o6b" | head -c 400)"
# a clean exit leaves a closed journal: the next start offers nothing
printf 'rules\n' | $Q --repl >"$T/o6c" 2>&1
! grep -q 'not closed cleanly' "$T/o6c"
check clean_exit_not_offered $?
# a journal left half-written: the cut line is skipped with its file and line
J=$XDG_STATE_HOME/qscope/journal.qs
{ printf '# qscope journal\n# version 0.1.0\n'
  printf 'load model %s\n# => layers=3\nload data %s\nquant * int4\n' "$MODEL" "$DATA"
  printf 'quant fc1 fp8-e4'; } >"$J"
printf 'recover\nrules\n' | $Q --repl --no-default >"$T/o6d" 2>&1
grep -q 'unclean-[0-9A-Za-z-]*\.qs:7: half-written line skipped' "$T/o6d" && grep -q 'restored 3 commands' "$T/o6d" &&
  grep -q ' int4 ' "$T/o6d" && ! grep -q 'fp8-e4 ' "$T/o6d"
check half_written_skipped $? "$(tr '\n' ' ' <"$T/o6d" | head -c 400)"
printf 'recover\n' | $Q --repl --no-default 2>&1 | grep -q 'recover: nothing to recover'
check recover_nothing $?

# (6b) a session that exports a model and reloads it: the file it writes is not pinned as an
# input, a safe replay writes it into a scratch folder of its own (and nowhere else) and checks
# every value, and --allow-writes writes it where the session says.
$Q -c "quant * int4; export model $T/exp.safetensors; load model $T/exp.safetensors; eval; save session $T/exp.qs" >/dev/null 2>&1
! grep -q "^# model $T/exp.safetensors" "$T/exp.qs" && grep -q "^export model $T/exp.safetensors\$" "$T/exp.qs"
check export_not_pinned $?
rm -f "$T/exp.safetensors"
TMPDIR=$T/tmp; mkdir -p "$TMPDIR"
TMPDIR=$TMPDIR $Q --replay "$T/exp.qs" --check >"$T/o6e" 2>&1 && grep -q ', 0 differ' "$T/o6e" && [ ! -e "$T/exp.safetensors" ] && [ -z "$(ls -A "$TMPDIR")" ]
check export_reload_safe_replay $? "$(tail -2 "$T/o6e" | tr '\n' ' ')"
$Q --replay "$T/exp.qs" --check --allow-writes >"$T/o6f" 2>&1 && grep -q ', 0 differ' "$T/o6f" && [ -f "$T/exp.safetensors" ]
check export_reload_allow_writes $? "$(tail -2 "$T/o6f" | tr '\n' ' ')"

# (7) every example session replays with --check
n=0
for s in sessions/*.qs; do
  [ -f "$s" ] || continue
  n=$((n + 1))
  $Q --replay "$s" --check >"$T/o7" 2>&1
  check "example.$(basename "$s" .qs)" $? "$(grep -v '^ ' "$T/o7" | tail -3 | tr '\n' ' ')"
done
[ "$n" -gt 0 ]
check examples_present $?
