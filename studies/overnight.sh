#!/bin/bash
# overnight.sh - `make overnight-plan`: the plan of the full overnight study over the `make zoo`
# models (issue 16): study q1 over the 18 settings (6 GPT-2 shapes x training seeds 42, 123, 999;
# the training seed is part of the model, so seeds=0), each model on the zoo's token data
# (ZOO/fortunes.txt), weights int4 per channel (the transformers' default), map int4, 4096
# calibration tokens per model (32 windows: the widest maps, d 1024, need more than d rows). It writes
# the plan and runs nothing: run it with GNU parallel or Slurm, then merge:
#
#   make zoo && make overnight-plan
#   parallel -j 2 < "$PLAN/jobs.txt"          # or: sbatch "$PLAN/slurm.sbatch"
#   ./qscope -c "study merge $PLAN"
#
# Not part of `make test` (the zoo is not committed). Environment: ZOO (the zoo folder, as for
# `make zoo`), PLAN (the plan folder, default ZOO/overnight-q1), QSCOPE (default ./qscope),
# PARTIAL=1 (plan only the zoo models already trained, instead of refusing).
set -euo pipefail
: "${ZOO:?give ZOO=DIR (the folder of make zoo)}"
ZOO=$(readlink -f "$ZOO")
PLAN=${PLAN:-$ZOO/overnight-q1}
QSCOPE=${QSCOPE:-./qscope}
models="" missing=""
for shape in "64 2" "64 4" "128 4" "128 6" "256 4" "256 6"; do
    set -- $shape
    for seed in 42 123 999; do
        m="$ZOO/gpt2-d$1-l$2-s$seed"
        if [ -f "$m/DONE" ]; then
            models="$models${models:+,}$m:$ZOO/fortunes.txt"
        else
            missing="$missing gpt2-d$1-l$2-s$seed"
        fi
    done
done
if [ -n "$missing" ] && [ "${PARTIAL:-0}" != 1 ]; then
    echo "overnight: not trained yet in $ZOO:$missing (make zoo; or PARTIAL=1)" >&2
    exit 1
fi
[ -n "$models" ] || { echo "overnight: no zoo model in $ZOO" >&2; exit 1; }
"$QSCOPE" --no-default -c "study q1 models=$models seeds=0 prec=int4 calib_tokens=4096 plan=$PLAN"
