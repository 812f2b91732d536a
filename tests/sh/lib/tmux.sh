# tests/sh/lib/tmux.sh - sourced by the TUI tests (tests/sh/tui*.sh; tests/run.sh runs only
# tests/sh/*.sh, not this file): a private tmux server that provides the terminal, and helpers
# that drive qscope in it. Waits poll the screen for a marker with a timeout, never a fixed sleep.
# Before sourcing: cd to the repo root and set TEST (the PASS/FAIL prefix, e.g. "tui").
# Sets Q (the binary: QSCOPE_BIN or ./qscope), QABS, TMP (removed at exit), SOCK, and a session
# "keep" so that the server stays.
Q=${QSCOPE_BIN:-./qscope} # QSCOPE_BIN=build-asan/qscope runs the same checks under ASan
if ! command -v tmux >/dev/null 2>&1; then
  echo "FAIL $TEST.tmux-missing"
  exit 1
fi
if [ ! -x "$Q" ]; then
  echo "FAIL $TEST.no-binary (build ./qscope first)"
  exit 1
fi
QABS=$(cd "$(dirname "$Q")" && pwd)/$(basename "$Q")
TMP=$(mktemp -d /tmp/qscope-$TEST-test.XXXXXX)
export XDG_STATE_HOME=$TMP/state QSCOPE_HOME=$PWD # the bundled default of this tree
SOCK=$TMP/tmux.sock
T() { tmux -S "$SOCK" -f /dev/null "$@"; }
cleanup() {
  T kill-server >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
# A private tmux server (its own socket) that keeps dead panes for inspection.
T new-session -d -s keep -x 100 -y 30 'sleep 100000'
T set-option -g remain-on-exit on >/dev/null
T set-option -g history-limit 100 >/dev/null

pass() { echo "PASS $TEST.$1"; }
fail() {
  echo "FAIL $TEST.$1"
  shift
  [ $# -gt 0 ] && printf '  %s\n' "$@" >&2
}

screen() { T capture-pane -p -t "$1" 2>/dev/null; }
# the screen and its scrollback: the shell's last line may scroll after curses leaves
screen_all() { T capture-pane -p -S - -t "$1" 2>/dev/null; }
wait_all() {
  local s=$1 pat=$2 n=$(( ${3:-15} * 20 ))
  for ((i = 0; i < n; i++)); do
    screen_all "$s" | grep -qF -- "$pat" && return 0
    sleep 0.05
  done
  return 1
}
# wait_for SESSION FIXED-STRING [SECONDS]: polls the screen until the string shows
wait_for() {
  local s=$1 pat=$2 n=$(( ${3:-15} * 20 ))
  for ((i = 0; i < n; i++)); do
    screen "$s" | grep -qF -- "$pat" && return 0
    sleep 0.05
  done
  return 1
}
# wait_gone SESSION FIXED-STRING [SECONDS]
wait_gone() {
  local s=$1 pat=$2 n=$(( ${3:-15} * 20 ))
  for ((i = 0; i < n; i++)); do
    screen "$s" | grep -qF -- "$pat" || return 0
    sleep 0.05
  done
  return 1
}
wait_file() {
  local f=$1 n=$(( ${2:-15} * 20 ))
  for ((i = 0; i < n; i++)); do
    [ -s "$f" ] && return 0
    sleep 0.05
  done
  return 1
}
# wait_idle SESSION: the worker has finished (no "running:" in the status bar)
wait_idle() { wait_gone "$1" "running:" "${2:-30}"; }
# cmd SESSION LINE: types a command at the prompt (':' opens it from the panes)
cmd() {
  T send-keys -t "$1" Escape
  wait_for "$1" " PANES " 5
  T send-keys -t "$1" ':'
  T send-keys -t "$1" -l -- "$2"
  T send-keys -t "$1" Enter
}
esc() {
  T send-keys -t "$1" Escape
  wait_for "$1" " PANES " 5
}
start() { # SESSION ENV ARGS... (100x30); the shell prints qscope's exit status after it
  local s=$1 env=$2
  shift 2
  T new-session -d -s "$s" -x 100 -y 30 "env $env $Q $*; echo qscope-exit=\$?"
  wait_for "$s" " PANES " 15 && wait_for "$s" "bits/w" 30
}
qscope_pid() { pgrep -P "$(T display-message -p -t "$1" '#{pane_pid}')" | head -1; }
