#!/usr/bin/env bash
# tests/bench/run.sh - `make bench`: every benchmark prints
#   bench NAME: ours X UNIT, REFERENCE Y UNIT, ratio R (target T)
# with R > 1 meaning qscope is better. A reference that is not installed is named as skipped.
set -u
cd "$(dirname "$0")/../.."
threads=${OPENBLAS_NUM_THREADS:-$(nproc)}
export OPENBLAS_NUM_THREADS=$threads
B=build/bench
PY=/usr/bin/python3
have_torch=0
$PY -c 'import torch' 2>/dev/null && have_torch=1
model=datasets/models/digits-mlp.safetensors
echo "machine: $(nproc) cores, $threads threads; $(date -u +%F)"

# -- forward pass ------------------------------------------------------------------------
ours=$($B/bench_forward "$model")
peak=$(awk '/^sgemm_peak/ {print $2}' <<<"$ours")
if [ $have_torch = 1 ]; then ref=$($PY tests/bench/torch_forward.py "$threads" "$model"); else ref=""; fi
while read -r _ name batch sps gflops; do
  [ -n "$name" ] || continue
  if [ -n "$ref" ]; then
    tsps=$(awk -v n="$name" '$2 == n {print $4}' <<<"$ref")
    awk -v n="$name" -v b="$batch" -v o="$sps" -v t="$tsps" 'BEGIN {
      printf "bench forward-%s-b%s: ours %.0f samples/s, pytorch %.0f samples/s, ratio %.2f (target 1.5)\n", n, b, o, t, o / t }'
  else
    echo "bench forward-$name-b$batch: ours $sps samples/s, pytorch skipped (python3-torch not installed)"
  fi
  awk -v n="$name" -v b="$batch" -v g="$gflops" -v p="$peak" 'BEGIN {
    printf "bench forward-%s-b%s-vs-sgemm: ours %.1f GFLOP/s, openblas sgemm peak %.1f GFLOP/s, ratio %.2f (target 0.70)\n", n, b, g, p, g / p }'
done < <(grep '^forward' <<<"$ours")

# -- transformer forward: the bundled tiny GPT-2 and LLaMA, 64-token windows ----------------
lmo=$($B/bench_lm)
if [ $have_torch = 1 ]; then lmr=$($PY tests/bench/torch_lm.py "$threads"); else lmr=""; fi
while read -r _ name tps; do
  [ -n "$name" ] || continue
  if [ -n "$lmr" ]; then
    t=$(awk -v n="$name" '$2 == n {print $3}' <<<"$lmr")
    awk -v n="$name" -v o="$tps" -v t="$t" 'BEGIN {
      printf "bench forward-%s-ctx64: ours %.0f tokens/s, pytorch %.0f tokens/s, ratio %.2f (target 1.5)\n", n, o, t, o / t }'
  else
    echo "bench forward-$name-ctx64: ours $tps tokens/s, pytorch skipped (python3-torch not installed)"
  fi
done < <(grep '^lm ' <<<"$lmo")

# -- transformer training: the tiny GPT-2's shape from scratch, batches of 64-token windows ----
# (also on one thread each: PyTorch's intra-op threads cost it more than OpenBLAS's on these
# small products, so the one-thread ratio is the conservative one)
for run in "16 $threads" "32 $threads" "32 1"; do
  set -- $run; bs=$1; th=$2
  ours=$(OPENBLAS_NUM_THREADS=$th $B/bench_lm_train "$bs" | awk '/^lmtrain/ {print $4}')
  if [ $have_torch = 1 ]; then
    ref=$($PY tests/bench/torch_lm_train.py "$th" "$bs" | awk '/^lmtrain/ {print $4}')
    awk -v b="$bs" -v th="$th" -v o="$ours" -v t="$ref" 'BEGIN {
      printf "bench train-tiny-gpt2-b%s-t%s: ours %.0f tokens/s, pytorch %.0f tokens/s, ratio %.2f (target 1.5)\n", b, th, o, t, o / t }'
  else
    echo "bench train-tiny-gpt2-b$bs-t$th: ours $ours tokens/s, pytorch skipped (python3-torch not installed)"
  fi
done

# -- quantize+dequantize of 4096x4096: against memcpy (bench_quant) and PyTorch eager -------
q=$($B/bench_quant)
printf '%s\n' "$q"
if [ $have_torch = 1 ]; then
  tq=$($PY tests/bench/torch_quant.py)
  while read -r _ name ms; do
    ours=$(sed -n "s/^bench quant-$name: ours \([0-9.]*\) ms.*/\1/p" <<<"$q")
    [ -n "$ours" ] && awk -v n="$name" -v o="$ours" -v t="$ms" 'BEGIN {
      printf "bench quant-%s-vs-pytorch: ours %.2f ms, pytorch eager %.1f ms, ratio %.1f (target 10)\n", n, o, t, t / o }'
  done < <(grep '^torch ' <<<"$tq")
else
  echo "bench quant-vs-pytorch: pytorch skipped (python3-torch not installed)"
fi

# -- other benchmarks: each binary prints its own "bench ..." lines ---------------------
for b in "$B"/bench_*; do
  [ "$b" = "$B/bench_forward" ] && continue
  [ "$b" = "$B/bench_quant" ] && continue
  [ "$b" = "$B/bench_lm" ] && continue
  [ "$b" = "$B/bench_lm_train" ] && continue
  [ -x "$b" ] && "$b"
done
for s in tests/bench/bench_*.sh; do
  [ -f "$s" ] && bash "$s"
done
exit 0
