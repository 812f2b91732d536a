#!/usr/bin/env bash
# tests/tools/tui_screens.sh BIN OUTDIR - the TUI's screens as text, for comparing two builds
# after a change that must not move a character (a refactor of the pane or key tables): the
# digits and moons models at twelve terminal sizes from 60x14 to 170x50 (24 layouts), then the
# help overlay of each model at 80x24 and 100x30 and the focus keys 7 and F4 there (36 screens).
# Each screen is tmux's capture once qscope is idle, one file per screen in OUTDIR (about three
# minutes, mostly waiting). Compare two builds with
#   tests/tools/tui_screens.sh /tmp/old-qscope /tmp/old && tests/tools/tui_screens.sh ./qscope /tmp/new
#   diff -r /tmp/old /tmp/new
# Not part of `make test` (it compares two binaries, not one against a file).
set -u
cd "$(dirname "$0")/../.."
[ $# = 2 ] || { echo "usage: $0 BIN OUTDIR" >&2; exit 2; }
TEST=screens
QSCOPE_BIN=$1
OUT=$2
mkdir -p "$OUT"
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh
MODELS=("digits:" "moons:datasets/models/moons-mlp.safetensors datasets/moons.csv")
SIZES="60x14 70x18 80x24 90x26 100x30 110x32 120x36 130x40 140x42 150x45 160x48 170x50"
n=0
for m in "${MODELS[@]}"; do
  name=${m%%:*} args=${m#*:}
  for sz in $SIZES; do
    w=${sz%x*} h=${sz#*x}
    s="scr-$name-$sz-$$"
    T new-session -d -s "$s" -x "$w" -y "$h" \
      "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen XDG_STATE_HOME=$TMP/state-$s $QABS $args"
    wait_for "$s" " PANES " 15 && wait_idle "$s" 30
    wait_for "$s" "bits/w" 10 # 60x14 may be too small to show it: then after the wait
    screen "$s" >"$OUT/$name-$sz.txt"
    n=$((n + 1))
    if [ "$sz" = 80x24 ] || [ "$sz" = 100x30 ]; then
      T send-keys -t "$s" '?'
      wait_for "$s" "Keys in the panes" 5
      screen "$s" >"$OUT/$name-$sz-help.txt"
      T send-keys -t "$s" Escape
      wait_gone "$s" "Keys in the panes" 5
      # the focus keys: the last pane by its digit, the third by its function key
      T send-keys -t "$s" 7
      sleep 0.3
      screen "$s" >"$OUT/$name-$sz-focus7.txt"
      T send-keys -t "$s" F4
      sleep 0.3
      screen "$s" >"$OUT/$name-$sz-focusF4.txt"
      n=$((n + 3))
    fi
    T kill-session -t "$s" >/dev/null 2>&1
  done
done
echo "$n screens in $OUT"
