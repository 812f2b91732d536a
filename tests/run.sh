#!/usr/bin/env bash
# tests/run.sh - runs every check of `make test` and ends with one line "N passed, N failed".
#
# Each check prints "PASS name" or "FAIL name". Checks:
#   unit       build/tests/test_*            (and the same under build-asan: ASan + UBSan)
#   fuzz       build-asan/tests/fuzz_* over tests/fuzz/corpus/<name>/ with seeded mutations
#   golden     tests/golden/*.qs run headless, stdout compared with the .out file beside it
#              (plain build and ASan build); a first line "# args: ..." adds qscope options.
#              Text goldens check layouts only: one per renderer (render.qs holds every
#              command's table once), so a change of layout breaks one file
#   replay     tests/replay/*.qs: sessions whose point is numbers, replayed with --check (each
#              recorded value within the relative tolerance 1e-6), plain build and ASan build
#   shell      tests/sh/*.sh: CLI, bad input, sessions, manual, TUI (tmux); each prints
#              PASS/FAIL lines itself
set -u
cd "$(dirname "$0")/.."
# Golden outputs were recorded with two BLAS threads (the CI machine's cores); OpenBLAS splits
# its sums by thread, so the count is pinned.
export LC_ALL=C.UTF-8 QSCOPE_TEST=1 OPENBLAS_NUM_THREADS=2
export XDG_STATE_HOME=$(mktemp -d /tmp/qscope-test-state.XXXXXX)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
LOG=build/test-log.txt
mkdir -p build
: >"$LOG"
pass=0 fail=0
# Every check's wall time goes to the log, and the slowest are listed at its end, so the suite's
# cost is visible from one run (CI keeps the log).
now() { date +%s.%N; }
took() { # label start
  echo "TIME $(awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') $1" >>"$LOG"
}
record() { # name status(0=pass)
  if [ "$2" -eq 0 ]; then pass=$((pass + 1)); echo "PASS $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi
}
# count PASS/FAIL lines printed by a program, echoing them
tally() { # prefix, command...
  local prefix=$1; shift
  local out rc
  out=$("$@" 2>>"$LOG"); rc=$?
  local p f
  p=$(printf '%s\n' "$out" | grep -c '^PASS ') ; f=$(printf '%s\n' "$out" | grep -c '^FAIL ')
  printf '%s\n' "$out" | grep -E '^(PASS|FAIL) ' | sed "s/^\(PASS\|FAIL\) /\1 $prefix/"
  pass=$((pass + p)); fail=$((fail + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    fail=$((fail + 1)); echo "FAIL $prefix$(basename "$1") (exit $rc, see $LOG)"
  fi
}

for dir in build build-asan; do
  tag=""; [ "$dir" = build-asan ] && tag="asan:"
  for t in "$dir"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== $t" >>"$LOG"
    t0=$(now); tally "$tag" "$t"; took "$tag$t" "$t0"
  done
done

for t in build-asan/tests/fuzz_*; do
  [ -x "$t" ] || continue
  name=${t##*/fuzz_}
  corpus=tests/fuzz/corpus/$name
  if [ -d "$corpus" ] && ls "$corpus"/* >/dev/null 2>&1; then
    echo "== $t" >>"$LOG"
    t0=$(now); "$t" -n 1500 "$corpus"/* >>"$LOG" 2>&1; record "asan:fuzz.$name" $?
    took "asan:fuzz.$name" "$t0"
  fi
done

for bin in ./qscope ./build-asan/qscope; do
  [ -x "$bin" ] || continue
  tag=""; [ "$bin" = ./build-asan/qscope ] && tag="asan:"
  for g in tests/golden/*.qs; do
    [ -f "$g" ] || continue
    exp=${g%.qs}.out
    args=$(sed -n '1s/^# args: //p' "$g")
    t0=$(now)
    # shellcheck disable=SC2086
    got=$("$bin" $args -b "$g" 2>&1)
    took "${tag}golden.$(basename "$g" .qs)" "$t0"
    if [ -f "$exp" ] && [ "$got" = "$(cat "$exp")" ]; then
      record "${tag}golden.$(basename "$g" .qs)" 0
    else
      record "${tag}golden.$(basename "$g" .qs)" 1
      { echo "== golden $g differs:"; diff <(printf '%s\n' "$got") "$exp"; } >>"$LOG" 2>&1
    fi
  done
done

for bin in ./qscope ./build-asan/qscope; do
  [ -x "$bin" ] || continue
  tag=""; [ "$bin" = ./build-asan/qscope ] && tag="asan:"
  for r in tests/replay/*.qs; do
    [ -f "$r" ] || continue
    name=${tag}replay.$(basename "$r" .qs)
    t0=$(now)
    got=$("$bin" --replay "$r" --check 2>&1)
    rc=$?
    took "$name" "$t0"
    # the last line is the replay's summary: "replay: N commands, M values checked, 0 differ"
    if [ "$rc" -eq 0 ] && printf '%s\n' "$got" | tail -1 | grep -q ' values checked, 0 differ$'; then
      record "$name" 0
    else
      record "$name" 1
      { echo "== replay $r (exit $rc):"; printf '%s\n' "$got" | grep -v '^ ' | tail -20; } >>"$LOG" 2>&1
    fi
  done
done

for s in tests/sh/*.sh; do
  [ -f "$s" ] || continue
  echo "== $s" >>"$LOG"
  t0=$(now); tally "" bash "$s"; took "$s" "$t0"
done

if [ "$fail" -gt 0 ]; then
  echo "failures are detailed in $LOG:"
  grep -E 'CHECK|differs|FAIL|ERROR|runtime error' "$LOG" | head -40
fi
{ echo "== the slowest checks (seconds)"; grep '^TIME ' "$LOG" | sort -k2 -rn | head -15; } >>"$LOG"
rm -rf "$XDG_STATE_HOME"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
