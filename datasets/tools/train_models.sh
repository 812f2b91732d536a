#!/usr/bin/env bash
# datasets/tools/train_models.sh - retrains the bundled models in datasets/models/ with qscope's own
# trainer (`make models`). Deterministic: the same seeds, one BLAS thread; the test suite
# (tests/sh/models.sh) re-runs these commands and checks the committed metrics are reproduced.
set -eu
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1
Q=./qscope
train() { # name data hidden epochs lr batch
  $Q --no-default -c "load data datasets/$2.csv; train hidden=$3 epochs=$4 lr=$5 batch=$6 seed=0 out=datasets/models/$1.safetensors"
}
# shellcheck disable=SC2034
MODELS=(
  "digits-mlp digits 64,64 60 0.001 64"
  "moons-mlp moons 16,16 200 0.01 32"
  "spirals-mlp spirals 16,16 400 0.01 32"
  "xor-mlp xor 16,16 200 0.01 32"
  "circles-mlp circles 16,16 200 0.01 32"
)
for m in "${MODELS[@]}"; do
  # shellcheck disable=SC2086
  train $m | tail -1
done
