#!/usr/bin/env bash
# bench_big.sh - real sizes (issue 14): the folders `make bigmodels` writes (GPT-2-small 124M F32,
# TinyLlama-1.1B BF16, random weights) when present in $BIG (default as in the Makefile:
# $XDG_CACHE_HOME/qscope/big, else build/big). Per model: `load model; info` wall time and peak
# RSS (against the size on disk), and one held-out eval window of the model's context (`eval` on
# a token file cut so that exactly one window is held out; the time is that run's wall time minus
# the load's; eval runs the window 3 times: the gate's float pass, then the float and quantized
# paths), against 3 of PyTorch's forwards of one window; qs_lm_forward alone on one window
# (build/bench/bench_lm DIR, best of 3) against PyTorch's forward, as tokens/s and their ratio,
# and as CPU seconds on one thread each (the figure to trust on a loaded machine);
# and the peak RSS and wall time of `quant SITE int4; error` and `correct SITE lqer r=8` at the
# default calibration (the analyses' memory: target 1.5 GB on GPT-2-small). Not part of
# `make test`.
set -u
cd "$(dirname "$0")/../.."
BIG=${BIG:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/qscope/big}}
BIG=${BIG:-build/big}
threads=${OPENBLAS_NUM_THREADS:-$(nproc)}
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
found=0
for name in gpt2-small tinyllama-1.1b; do
  d=$BIG/$name
  [ -f "$d/model.safetensors" ] && [ -f "$d-tokens.bin" ] || continue
  found=1
  disk=$(( $(stat -c %s "$d/model.safetensors") / 1048576 ))
  ctx=$($PY -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c.get("n_positions") or c["max_position_embeddings"])' "$d/config.json")
  /usr/bin/time -f '%e %M' -o "$T/load" ./qscope --no-default -c "load model $d; info" >/dev/null 2>"$T/err" ||
    { echo "bench big-$name-load: qscope failed: $(tail -1 "$T/err")"; continue; }
  read -r lw lk <"$T/load"
  echo "bench big-$name-load: ours $lw s, peak RSS $((lk / 1024)) MB, on disk $disk MB, ratio $(awk -v r="$lk" -v d="$disk" 'BEGIN{printf "%.2f", (d + 2048) / (r / 1024)}') (target 1: RSS <= disk + 2 GB)"
  n=$((10 * (ctx + 1) + 5))   # n/10 = ctx + 1 held-out tokens: one window
  head -c $((2 * n)) "$d-tokens.bin" >"$T/one.bin"
  /usr/bin/time -f '%e %M' -o "$T/eval" ./qscope --no-default --json -c "load model $d; load data $T/one.bin; eval" >"$T/out" 2>"$T/err" ||
    { echo "bench big-$name-eval-window: qscope failed: $(tail -1 "$T/err")"; continue; }
  read -r ew ek <"$T/eval"
  ours=$(awk -v a="$ew" -v b="$lw" 'BEGIN{printf "%.2f", a - b}')
  fw=$(build/bench/bench_lm "$d" 2>/dev/null)   # one ctx window: qs_lm_forward, best of 3
  ff=$(awk '$2 == "forward" {print $3}' <<<"$fw")
  fs=$(awk '$2 == "score" {print $3}' <<<"$fw")
  if $PY -c 'import torch' 2>/dev/null; then
    ref=$($PY tests/bench/torch_big.py "$threads" "$d" "$ctx" 2>/dev/null)
    tw=$(awk '$2 == "window" {print $3}' <<<"$ref")
    echo "bench big-$name-forward: ours $(awk -v c="$ctx" -v f="${ff:-0}" 'BEGIN{printf "%.0f", (f > 0 ? c / f : 0)}') tokens/s (one ctx-$ctx window, best of 3; scoring it: ${fs:-?} s), pytorch $(awk -v c="$ctx" -v t="${tw:-0}" 'BEGIN{printf "%.0f", (t > 0 ? c / t : 0)}') tokens/s (best of 2), ratio $(awk -v f="${ff:-0}" -v t="${tw:-0}" 'BEGIN{printf "%.2f", (f > 0 ? t / f : 0)}') (target 1.5)"
    echo "bench big-$name-eval-window: ours $ours s (eval of one ctx-$ctx window = 3 forwards: the gate's float pass, then float and quantized; peak RSS $((ek / 1024)) MB), pytorch ${tw:-?} s per forward, ratio $(awk -v o="$ours" -v t="${tw:-0}" 'BEGIN{printf "%.2f", (o > 0 ? 3 * t / o : 0)}') (target 1.5)"
    # the same forward on one thread each, as process CPU seconds: wall time on a shared machine
    # swings with the load (PyTorch's spinning OpenMP threads most), one thread's CPU time hardly
    c1=$(OPENBLAS_NUM_THREADS=1 build/bench/bench_lm "$d" 2>/dev/null | awk '$2 == "cpu" {print $3}')
    t1=$(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $PY tests/bench/torch_big.py 1 "$d" "$ctx" 2>/dev/null | awk '$2 == "cpu" {print $3}')
    echo "bench big-$name-forward-1t-cpu: ours ${c1:-?} CPU s, pytorch ${t1:-?} CPU s (one ctx-$ctx window, one thread each, load $(cut -d' ' -f1 /proc/loadavg)), ratio $(awk -v o="${c1:-0}" -v t="${t1:-0}" 'BEGIN{printf "%.2f", (o > 0 ? t / o : 0)}') (target 1.5)"
  else
    echo "bench big-$name-forward: ours $(awk -v c="$ctx" -v f="${ff:-0}" 'BEGIN{printf "%.0f", (f > 0 ? c / f : 0)}') tokens/s (one ctx-$ctx window), pytorch skipped (python3-torch not installed)"
    echo "bench big-$name-eval-window: ours $ours s (eval, ctx $ctx; peak RSS $((ek / 1024)) MB), pytorch skipped (python3-torch not installed)"
  fi
  # memory of the analyses (issue 14): one site's format switch and `error` over the default
  # calibration (8 windows), then a low-rank correction of that site; peak RSS against 1.5 GB
  site=h.0.mlp.c_fc
  [ "$name" = tinyllama-1.1b ] && site=model.layers.0.mlp.up_proj
  for cmd in "quant $site int4; error" "quant $site int4; correct $site lqer r=8"; do
    /usr/bin/time -f '%e %M' -o "$T/mem" ./qscope --no-default --json -c "load model $d; load data $d-tokens.bin; $cmd" >"$T/out" 2>"$T/err" ||
      { echo "bench big-$name-memory: qscope failed on '$cmd': $(tail -1 "$T/err")"; continue; }
    read -r mw mk <"$T/mem"
    echo "bench big-$name-memory: '$cmd' (default calibration) $mw s, peak RSS $((mk / 1024)) MB, ratio $(awk -v r="$mk" 'BEGIN{printf "%.2f", 1536 / (r / 1024)}') (target 1: peak RSS <= 1.5 GB; GPT-2-small shape)"
  done
  # one site's format switch followed by `error` at the default calibration: the first in a
  # session (it also takes the gate's float pass over the held-out windows) and a second one
  # (float figures cached), timed from the JSON lines as they come, in PyTorch window forwards
  # at the same thread count (issue 14's target: <= 6)
  ./qscope --no-default --json -c "load model $d; load data $d-tokens.bin; quant $site int4; error; quant $site int3; error" 2>"$T/err" |
    while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "${l:0:24}"; done >"$T/sw"
  read -r sw1 sw2 < <(awk '/"cmd":"load data"/ {t0 = $1} /"cmd":"error"/ {e[++n] = $1}
    END {if (n == 2) printf "%.2f %.2f\n", e[1] - t0, e[2] - e[1]; else print "- -"}' "$T/sw")
  if [ "$sw1" = - ]; then
    echo "bench big-$name-switch-error: qscope failed: $(tail -1 "$T/err")"
  else
    echo "bench big-$name-switch-error: first $sw1 s, again $sw2 s (load $(cut -d' ' -f1 /proc/loadavg)); pytorch ${tw:-?} s per window forward: $(awk -v a="$sw1" -v b="$sw2" -v t="${tw:-0}" 'BEGIN{if (t > 0) printf "%.1f and %.1f", a / t, b / t; else printf "?"}') windows (target <= 6)"
  fi
  # a switch at a late site, then error and eval, twice: the second pair resumes both paths from
  # the block entries the first kept (calibration for error, held-out windows for eval)
  late=h.10.mlp.c_fc
  [ "$name" = tinyllama-1.1b ] && late=model.layers.20.mlp.up_proj
  ./qscope --no-default --json -c "load model $d; load data $d-tokens.bin; quant $late int4; error; eval; quant $late int3; error; eval" 2>"$T/err" |
    while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "${l:0:24}"; done >"$T/late"
  read -r le1 lv1 le2 lv2 < <(awk '/"cmd":"load data"/ {t = $1} /"cmd":"(error|eval)"/ {printf "%.2f ", $1 - t; t = $1; n++}
    END {if (n != 4) print "- - - -"; else print ""}' "$T/late")
  if [ "${lv2:--}" = - ]; then
    echo "bench big-$name-late-switch: qscope failed: $(tail -1 "$T/err")"
  else
    echo "bench big-$name-late-switch: '$late' error $le1 s then $le2 s, eval $lv1 s then $lv2 s (the second of each resumed from kept block entries; load $(cut -d' ' -f1 /proc/loadavg)); pytorch ${tw:-?} s per window forward: again $(awk -v a="$le2" -v b="$lv2" -v t="${tw:-0}" 'BEGIN{if (t > 0) printf "%.1f + %.1f", a / t, b / t; else printf "?"}') windows"
  fi
  # the TUI's first paint: start to the layers table (its first site named), which needs no
  # forward pass and, from config.json, not the weights either; then the weights loaded (the
  # table's "weights loading" title gone); the errors and eval follow in their panes (target 2 s)
  if command -v tmux >/dev/null; then
    first=$($PY -c 'import json,sys; c=json.load(open(sys.argv[1])); print("h.0.attn.c_attn" if c["model_type"] == "gpt2" else "model.layers.0.self_attn.q_proj")' "$d/config.json")
    TM="tmux -L qs-big-$$"
    t0=$(date +%s.%N) t1= t2=
    $TM new-session -d -x 100 -y 30 -s b "env XDG_STATE_HOME=$T ./qscope $d $d-tokens.bin"
    for _ in $(seq 1 6000); do
      sc=$($TM capture-pane -p -t b 2>/dev/null)
      [ -z "$t1" ] && grep -q "$first" <<<"$sc" && t1=$(date +%s.%N)
      [ -n "$t1" ] && ! grep -q "weights loading" <<<"$sc" && { t2=$(date +%s.%N); break; }
      sleep 0.02
    done
    $TM kill-server 2>/dev/null
    echo "bench big-$name-tui-first-paint: ours $(awk -v a="$t0" -v b="${t1:-0}" 'BEGIN{printf "%.2f", (b > 0 ? b - a : -1)}') s to the layers table, the weights in $(awk -v a="$t0" -v b="${t2:-0}" 'BEGIN{printf "%.2f", (b > 0 ? b - a : -1)}') s (load $(cut -d' ' -f1 /proc/loadavg)), target 2 s, ratio $(awk -v a="$t0" -v b="${t1:-0}" 'BEGIN{printf "%.2f", (b > a ? 2 / (b - a) : 0)}') (target 1)"
  fi
  # the issue's 1B workload, whole, within one machine: quantize every site, eval on 4096
  # held-out tokens (the issue's 4 x 1024; here 2 windows of the model's 2048 context), error
  # on one calibration window, rank (minutes, not hours); peak RSS <= disk + 2 GB
  if [ "$name" = tinyllama-1.1b ]; then
    wl="quant * int4 gran=group:128; set calib 1; set heldout tokens=4096; eval; error; rank $site; info"
    /usr/bin/time -f '%e %M %U' -o "$T/wl" ./qscope --no-default -c "load model $d; load data $d-tokens.bin; $wl" >"$T/out" 2>"$T/err" ||
      { echo "bench big-$name-workload: qscope failed: $(tail -1 "$T/err")"; continue; }
    read -r ww wk wu <"$T/wl"
    echo "bench big-$name-workload: '$wl' $ww s ($wu CPU s), peak RSS $((wk / 1024)) MB, on disk $disk MB, ratio $(awk -v r="$wk" -v d="$disk" 'BEGIN{printf "%.2f", (d + 2048) / (r / 1024)}') (target 1: RSS <= disk + 2 GB)"
  fi
done
[ $found = 1 ] || echo "bench big: skipped (no models in $BIG: run make bigmodels)"
exit 0
