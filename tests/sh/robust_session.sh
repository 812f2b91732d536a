#!/usr/bin/env bash
# tests/sh/robust_session.sh - scripts, sessions and journals under hostile or unlucky input
# (issue 11): FIFOs and folders given as scripts, source cycles, errors printed once, an
# unusable state folder, several crashed sessions, journal lines that must not be cut, replay
# trust (--check pins, --tol) and its safe mode, and special files given to `save session`.
# Every qscope runs under `timeout 20`, so that a hang is a FAIL, not a stuck suite.
# Prints PASS/FAIL lines; run from anywhere (it changes to the repository root).
set -u
cd "$(dirname "$0")/../.."
Q=${QSCOPE_BIN:-./qscope}
Q=$(cd "$(dirname "$Q")" && pwd -P)/$(basename "$Q") # the tests below change folders
T=$(mktemp -d /tmp/qscope-robust-session.XXXXXX)
T=$(cd "$T" && pwd -P)
trap 'rm -rf "$T"' EXIT
export XDG_STATE_HOME=$T/state

ok() { echo "PASS robust_session.$1"; }
bad() { echo "FAIL robust_session.$1${2:+: $2}"; }
check() { # name, condition exit status, detail
  if [ "$2" -eq 0 ]; then ok "$1"; else bad "$1" "${3:-}"; fi
}
q() { timeout 20 $Q "$@"; }

MODEL=datasets/models/digits-mlp.safetensors
DATA=datasets/digits.csv

# (1) FIFOs and folders given as scripts or sessions: refused at once, exit status nonzero
mkfifo "$T/fifo.qs"
q --no-default -c "source $T/fifo.qs" >"$T/o1" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "fifo.qs: is not a regular file (a FIFO)" "$T/o1"
check source_fifo_refused $? "rc=$rc $(head -c 200 "$T/o1")"
q -b "$T/fifo.qs" >"$T/o1b" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "fifo.qs: is not a regular file" "$T/o1b"
check batch_fifo_refused $? "rc=$rc $(head -c 200 "$T/o1b")"
q --replay "$T/fifo.qs" --check >"$T/o1c" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "fifo.qs: is not a regular file" "$T/o1c"
check replay_fifo_refused $? "rc=$rc $(head -c 200 "$T/o1c")"
mkdir -p "$T/dir.qs"
q --no-default -c "source $T/dir.qs" >"$T/o1d" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "dir.qs: is a directory" "$T/o1d"
check source_dir_refused $? "rc=$rc $(head -c 200 "$T/o1d")"
q -b "$T/dir.qs" >"$T/o1e" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q "dir.qs: is a directory" "$T/o1e"
check batch_dir_refused $? "rc=$rc $(head -c 200 "$T/o1e")"

# (2) a script that sources itself three times with bail off: each is refused as a cycle
printf 'set bail off\nroundtrip int4 1\nsource self.qs\nsource self.qs\nsource self.qs\n' >"$T/self.qs"
q -b "$T/self.qs" >"$T/o2" 2>&1
rc=$?
[ "$rc" -eq 1 ] && [ "$(grep -c 'source cycle' "$T/o2")" -eq 3 ] && [ "$(grep -c '1 -> 1' "$T/o2")" -eq 1 ]
check source_self_cycle $? "rc=$rc $(head -c 300 "$T/o2")"
# no cycle but fan-out: ten scripts each sourcing the next three times (3^10 runs unbounded)
for i in $(seq 0 9); do
  { echo 'set bail off'; for _ in 1 2 3; do echo "source f$((i + 1)).qs"; done; } >"$T/f$i.qs"
done
printf 'roundtrip int4 1\n' >"$T/f10.qs"
q -b "$T/f0.qs" >"$T/o2b" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 'more than 1000 scripts run by one script (the limit on the work' "$T/o2b"
check source_fanout_bounded $? "rc=$rc $(tail -c 300 "$T/o2b")"

# (3) with bail off each error is printed once (-b and -c)
printf 'set bail off\nfrobnicate 1\nroundtrip int4 2.2\n' >"$T/once.qs"
q -b "$T/once.qs" >"$T/o3" 2>&1
rc=$?
[ "$rc" -eq 1 ] && [ "$(grep -c "unknown command 'frobnicate'" "$T/o3")" -eq 1 ] && grep -q '2.2 -> 2' "$T/o3"
check bail_off_error_once_batch $? "rc=$rc $(tr '\n' '|' <"$T/o3")"
q --no-default -c 'set bail off; frobnicate 1; roundtrip int4 2.2' >"$T/o3b" 2>&1
rc=$?
[ "$rc" -eq 1 ] && [ "$(grep -c "unknown command 'frobnicate'" "$T/o3b")" -eq 1 ]
check bail_off_error_once_c $? "rc=$rc $(tr '\n' '|' <"$T/o3b")"

# (4) an unusable state folder is reported with its path and the reason
: >"$T/notadir"
printf 'roundtrip int4 1\n' | XDG_STATE_HOME=$T/notadir timeout 20 $Q --repl --no-default >"$T/o4" 2>&1
grep -q "autosave: state directory $T/notadir/qscope cannot be created: Not a directory" "$T/o4"
check state_dir_reason $? "$(head -c 300 "$T/o4")"

# (5) one crashed session after another: every unclosed journal is kept until recovered
S=$T/state5
mkdir -p "$S/qscope"
journal() { # pid, commands...
  local pid=$1; shift
  printf '# qscope journal\n# version 0.1.0\n# date 2026-01-0%sT00:00:00Z\n# pid %s\n' "$pid" "$pid"
  printf '%s\n' "$@"
}
# session A crashed (its journal has no "# closed" line)
journal 1 "load model $PWD/$MODEL" "load data $PWD/$DATA" "quant * int3" >"$S/qscope/journal.qs"
# session B starts (A is kept aside), works, then crashes the same way
printf 'rules\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default >"$T/o5a" 2>&1
journal 2 "load model $PWD/$MODEL" "load data $PWD/$DATA" "quant * int6" >"$S/qscope/journal.qs"
# session C: both are offered
printf 'recover\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default >"$T/o5b" 2>&1
grep -q '2 journals from earlier sessions were not closed cleanly' "$T/o5b" &&
  grep -q '^  1  2026-01-01T00:00:00Z  3 commands' "$T/o5b" && grep -q '^  2  2026-01-02T00:00:00Z  3 commands' "$T/o5b"
check two_crashes_both_kept $? "$(tr '\n' '|' <"$T/o5b" | head -c 400)"
printf 'recover 1\nrules\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default >"$T/o5c" 2>&1
grep -q '^restored 3 commands' "$T/o5c" && sed -n '/^restored/,$p' "$T/o5c" | grep -q ' int3 '
check recover_first_of_two $? "$(tr '\n' '|' <"$T/o5c" | head -c 400)"
printf 'recover\nrules\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default >"$T/o5d" 2>&1
sed -n '/^restored/,$p' "$T/o5d" | grep -q ' int6 '
check recover_second_of_two $? "$(tr '\n' '|' <"$T/o5d" | head -c 400)"
printf 'recover\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default 2>&1 | grep -q 'nothing to recover'
check recovered_not_offered_again $?
# a recover that partly fails keeps the journal (relative paths from another folder; not
# bundled files, which resolve from anywhere)
mkdir -p "$T/own" "$T/elsewhere" && cp "$MODEL" "$T/own/m.safetensors" && cp "$DATA" "$T/own/d.csv"
journal 3 "load model own/m.safetensors" "load data own/d.csv" "quant * int5" >"$S/qscope/journal.qs"
(cd "$T/elsewhere" && printf 'recover\n' | XDG_STATE_HOME=$S timeout 20 "$Q" --repl --no-default >"$T/o5e" 2>&1)
grep -q 'could not be restored' "$T/o5e" && grep -q "the journal is kept" "$T/o5e" &&
  ls "$S/qscope"/unclean-*.qs >/dev/null 2>&1
check partial_recover_keeps_journal $? "$(tr '\n' '|' <"$T/o5e" | head -c 400)"
printf 'recover discard all\n' | XDG_STATE_HOME=$S timeout 20 $Q --repl --no-default >/dev/null 2>&1
! ls "$S/qscope"/unclean-*.qs >/dev/null 2>&1
check recover_discard $?
# the journal names files by absolute path, so it recovers from any folder
(cd datasets && printf 'load model models/digits-mlp.safetensors\n' |
  XDG_STATE_HOME=$S timeout 20 "$Q" --repl --no-default >/dev/null 2>&1)
grep -q "^load model $PWD/datasets/models/digits-mlp.safetensors$" "$S/qscope/journal.qs"
check journal_paths_absolute $? "$(grep '^load' "$S/qscope/journal.qs")"

# (6) nothing cut: 300 values in one journaled line, a path over 600 characters
vals=$(seq 1 300 | sed 's/$/.25/' | tr '\n' ' ')
q --no-default -c "roundtrip int8 $vals; save session $T/rt.qs" >/dev/null 2>&1
n=$(grep '^roundtrip ' "$T/rt.qs" | wc -w)
[ "$n" = 302 ] && q --replay "$T/rt.qs" --check >"$T/o6" 2>&1
check long_line_journaled_whole $? "words=$n $(tail -2 "$T/o6" 2>/dev/null | tr '\n' ' ')"
long=$T
for i in 1 2 3 4 5 6 7; do long=$long/$(printf 'd%.0s' $(seq 100))$i; done
mkdir -p "$long" && cp "$MODEL" "$long/m.safetensors"
q --no-default -c "load model $long/m.safetensors; save session $T/long.qs" >"$T/o6b" 2>&1
grep -qxF "load model $long/m.safetensors" "$T/long.qs" && q --replay "$T/long.qs" --check >>"$T/o6b" 2>&1
check long_path_journaled_whole $? "len=${#long} $(tail -2 "$T/o6b" | tr '\n' ' ' | head -c 300)"
# a path holding a newline is refused before it loads anything
nl=$'\n'
cp "$MODEL" "$T/a${nl}b.safetensors"
q --no-default -c "load model \"$T/a${nl}b.safetensors\"; save session $T/nl.qs" >"$T/o6c" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 'load model: an argument holds a line break' "$T/o6c" && [ ! -e "$T/nl.qs" ]
check newline_path_refused $? "rc=$rc $(head -c 300 "$T/o6c")"

# (7) replay trust: --check needs a pinned hash for every file it loads; --tol is checked
q -c "quant * int4; eval; save session $T/s.qs" >/dev/null 2>&1
grep -v '^# model ' "$T/s.qs" >"$T/nopin.qs"
q --replay "$T/nopin.qs" --check >"$T/o7" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 'nopin.qs:[0-9]*: load model .*: no pinned hash' "$T/o7" && ! grep -q '^replay:' "$T/o7"
check check_requires_pins $? "rc=$rc $(head -c 300 "$T/o7")"
q --replay "$T/s.qs" --check >/dev/null 2>&1
check pinned_session_replays $?
# a pinned path that is now a FIFO: hashing it must not block
mkfifo "$T/pinfifo"
sed -e "s|^# model [^ ]*|# model $T/pinfifo|" -e "s|^load model .*|load model $T/pinfifo|" "$T/s.qs" >"$T/fifopin.qs"
timeout 20 $Q --replay "$T/fifopin.qs" --check >"$T/o7f" 2>&1
rc=$?
[ "$rc" -eq 1 ] && grep -q 'not a regular file' "$T/o7f"
check check_pinned_fifo_refused $? "rc=$rc $(head -c 300 "$T/o7f")"
allbad=0
for t in abc -1 nan 1e400 2; do
  q --replay "$T/s.qs" --check --tol "$t" >"$T/o7b" 2>&1
  rc=$?
  { [ "$rc" -eq 2 ] && grep -q -- "--tol: '$t' is not a relative tolerance" "$T/o7b"; } || allbad=1
done
check tol_validated $allbad "$(cat "$T/o7b")"
q --replay "$T/s.qs" --check --tol 0.01 >/dev/null 2>&1
check tol_valid_accepted $?

# (8) replay's safe mode: a session may not write files unless --allow-writes (train out= and
# export model write into the replay's own scratch folder instead: tests/sh/sessions.sh)
{ printf '# qscope session\n# version 0.1.0\n'
  printf 'set bail off\nroundtrip int4 1\nsave session %s/evil.qs\nexport csv %s/evil.csv\n' "$T" "$T"
  printf 'train epochs=1 out=%s/evil.safetensors\nrecover discard all\n' "$T"
  printf '# end of session (6 commands)\n'; } >"$T/w.qs"
q --replay "$T/w.qs" >"$T/o8" 2>&1
rc=$?
[ "$rc" -eq 1 ] && [ ! -e "$T/evil.qs" ] && [ ! -e "$T/evil.csv" ] && [ ! -e "$T/evil.safetensors" ] &&
  grep -q 'w.qs:5: save session writes files: refused while replaying' "$T/o8" &&
  grep -q 'w.qs:6: export csv writes files' "$T/o8" && ! grep -q 'w.qs:7: train writes files' "$T/o8" &&
  grep -q 'w.qs:8: recover writes files' "$T/o8"
check safe_mode_refuses_writes $? "rc=$rc $(tr '\n' '|' <"$T/o8" | head -c 400)"
{ printf '# qscope session\n# version 0.1.0\n'
  printf 'roundtrip int4 1\nsave session %s/allowed.qs\n' "$T"
  printf '# end of session (2 commands)\n'; } >"$T/w2.qs"
q --replay "$T/w2.qs" --allow-writes >"$T/o8b" 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ -f "$T/allowed.qs" ]
check allow_writes $? "rc=$rc $(tr '\n' '|' <"$T/o8b" | head -c 300)"

# (9) special files given to save session: never replaced by a regular file
if mknod "$T/full" c 1 7 2>/dev/null && mknod "$T/null-node" c 1 3 2>/dev/null; then
  q --no-default -c "roundtrip int4 1; save session $T/full" >"$T/o9" 2>&1
  rc=$?
  [ "$rc" -eq 1 ] && grep -q "save session: $T/full: cannot write: No space left on device" "$T/o9" && [ -c "$T/full" ]
  check save_session_full_device $? "rc=$rc $(head -c 300 "$T/o9")"
  q --no-default -c "roundtrip int4 1; save session $T/null-node" >"$T/o9b" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] && [ -c "$T/null-node" ]
  check save_session_null_device $? "rc=$rc $(head -c 300 "$T/o9b")"
else
  echo "robust_session: mknod not permitted here; device-node checks skipped" >&2
fi
