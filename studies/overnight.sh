#!/bin/bash
# overnight.sh - `make overnight-plan`: the plans of the full overnight study over the `make zoo`
# models (issue 16), both over the 18 settings (6 GPT-2 shapes x training seeds 42, 123, 999; the
# training seed is part of the model, so seeds=0), each model on the zoo's token data
# (ZOO/fortunes.txt), weights int4 per channel (the transformers' default):
#   Q1: study q1 ... prec=int4 calib_tokens=4096 plan=$PLAN (the linear map at int4; 32 windows:
#                                                            the widest maps, d 1024, need > d rows)
#   Q2: study q2 ... heldout_tokens=32768 plan=$PLAN2      (the corrector at its defaults: 32-32-1,
#                                                            8 epochs, 65536 elements; the downstream
#                                                            losses over the first 256 held-out windows
#                                                            of 128, not all 2000: with every site
#                                                            corrected the whole split costs > 7 CPU-
#                                                            minutes a variant on a d128 l6 model)
# It writes the plans and runs nothing: run them with GNU parallel or Slurm, then merge:
#
#   make zoo && make overnight-plan
#   parallel -j 2 < "$PLAN/jobs.txt"          # or: sbatch "$PLAN/slurm.sbatch"
#   parallel -j 2 < "$PLAN2/jobs.txt"         # or: sbatch "$PLAN2/slurm.sbatch"
#   ./qscope -c "study merge $PLAN"; ./qscope -c "study merge $PLAN2"
#
# Not part of `make test` (the zoo is not committed). Environment: ZOO (the zoo folder, as for
# `make zoo`), PLAN (the Q1 plan folder, default ZOO/overnight-q1), PLAN2 (the Q2 plan folder,
# default overnight-q2 beside PLAN), QSCOPE (default ./qscope), PARTIAL=1 (plan only the zoo
# models already trained, instead of refusing).
set -euo pipefail
: "${ZOO:?give ZOO=DIR (the folder of make zoo)}"
ZOO=$(readlink -f "$ZOO")
PLAN=${PLAN:-$ZOO/overnight-q1}
PLAN2=${PLAN2:-$(dirname "$PLAN")/overnight-q2}
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
"$QSCOPE" --no-default -c "study q2 models=$models seeds=0 heldout_tokens=32768 plan=$PLAN2"
