#!/usr/bin/env bash
# bench_tui.sh - the TUI's own latency figures, measured inside it (`tui stats`): keystroke to
# redraw (design target 16 ms) and a key's command (here a format switch) to its panes updated
# (target 50 ms), on the bundled digits model in a 100x30 tmux pane.
set -u
cd "$(dirname "$0")/../.."
command -v tmux >/dev/null || { echo "bench tui: tmux skipped (not installed)"; exit 0; }
S=qs-bench-$$
TM="tmux -L $S"
T=$(mktemp -d)
trap '$TM kill-server 2>/dev/null; rm -rf "$T"' EXIT
$TM new-session -d -x 100 -y 30 -s b "env XDG_STATE_HOME=$T ./qscope"
wait_for() { for _ in $(seq 1 200); do $TM capture-pane -p -t b | grep -q "$1" && return 0; sleep 0.05; done; return 1; }
wait_for "fc2" || { echo "bench tui: the TUI did not start"; exit 0; }
for i in $(seq 1 40); do $TM send-keys -t b j; $TM send-keys -t b k; done
for f in int8 int4 int3 int2 fp8-e4m3 mxfp4 nvfp4 nf4; do
  $TM send-keys -t b f
  wait_for "$f" || true
done
$TM send-keys -t b ':' "screenshot $T/shot" Enter
for _ in $(seq 1 100); do [ -s "$T/shot" ] && break; sleep 0.05; done
$TM send-keys -t b 'tui stats' Enter
wait_for "keystroke to redraw:" || { echo "bench tui: no stats"; exit 0; }
$TM capture-pane -p -J -t b -S - | tr -s ' ' > "$T/screen"
k=$(grep -o 'keystroke to redraw: n [0-9]*, mean [0-9.]* ms, p95 [0-9.]* ms, max [0-9.]* ms' "$T/screen" | tail -1)
c=$(grep -o 'key command to updated panes: n [0-9]*, mean [0-9.]* ms, p95 [0-9.]* ms, max [0-9.]* ms' "$T/screen" | tail -1)
kp=$(sed -n 's/.*p95 \([0-9.]*\) ms.*/\1/p' <<<"$k"); cp=$(sed -n 's/.*p95 \([0-9.]*\) ms.*/\1/p' <<<"$c")
echo "bench tui-keystroke-to-redraw: ours p95 ${kp:-?} ms ($k), target 16 ms, ratio $(awk -v a="${kp:-0}" 'BEGIN{printf "%.1f", (a > 0 ? 16 / a : 0)}') (target 1)"
echo "bench tui-format-switch-to-panes: ours p95 ${cp:-?} ms ($c), target 50 ms, ratio $(awk -v a="${cp:-0}" 'BEGIN{printf "%.1f", (a > 0 ? 50 / a : 0)}') (target 1)"
