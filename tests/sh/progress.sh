#!/usr/bin/env bash
# progress.sh - long commands print a progress line on stderr when it is a terminal (run under
# script(1) so that it is one), erase it before results, and leave stdout (text or --json) as it
# is without a terminal; nothing at all when stderr is not a terminal.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS progress.$1"; }
fail() { echo "FAIL progress.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
command -v script >/dev/null || { echo "SKIP progress: script(1) not installed"; exit 0; }
export QSCOPE_PROGRESS_DELAY=0 # show from the first update: no test may depend on a duration
LM="datasets/models/tiny-gpt2 datasets/text/licenses.txt"
CMDS='quant * int4; eval; error h.0.*'

# the reference: no terminal anywhere
$Q --json $LM -c "$CMDS" >"$T/plain.json" 2>"$T/plain.err"
check no-tty-no-progress "[ ! -s $T/plain.err ]"

# stderr on a terminal, stdout to a file: the same JSON, progress on the terminal
script -qec "$Q --json $LM -c '$CMDS' >$T/tty.json" "$T/tty.log" >/dev/null 2>&1
check json-stdout-unchanged "cmp -s $T/plain.json $T/tty.json"
tr '\r' '\n' <"$T/tty.log" >"$T/tty.lines"
check eval-progress "grep -q 'eval: window [0-9]* of 225' $T/tty.lines"
check calibration-progress "grep -q 'calibration windows: [0-9]* of 8' $T/tty.lines"

# text results on the same terminal: what stays visible on each line (after the last erase)
# holds no progress text
script -qec "$Q $LM -c '$CMDS'" "$T/text.log" >/dev/null 2>&1
/usr/bin/python3 - "$T/text.log" <<'PY' && pass progress-erased-before-results || fail progress-erased-before-results
import re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
body = raw.split("\n", 1)[1].rsplit("Script done", 1)[0]
seen = "window" in body
vis = [re.split(r"\r\x1b\[K|\r", l.rstrip("\r"))[-1] for l in body.split("\n")]
bad = [v for v in vis if re.search(r"window \d+ of", v)]
ok_results = any("delta loss" in v for v in vis)
sys.exit(0 if seen and not bad and ok_results else 1)
PY

# the TUI draws its own bar: no stderr line leaks into its screen (checked by tui.sh); the REPL
# without a terminal on stderr prints none
printf 'quant * int4\neval\n' | $Q --repl $LM >"$T/repl.out" 2>"$T/repl.err"
check repl-no-tty-no-progress "! grep -q 'window' $T/repl.err && grep -q 'delta loss' $T/repl.out"
