#!/usr/bin/env bash
# models.sh - the bundled models: each clears its task threshold, measured (eval's float test
# accuracy on the bundled data, the figure the file's metadata records), and retraining with
# the exact command recorded in datasets/tools/train_models.sh reproduces the committed test
# metrics.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export OPENBLAS_NUM_THREADS=1
ok() { if [ "$2" = 1 ]; then echo "PASS models.$1"; else echo "FAIL models.$1"; fi; }
meta() { # file key -> value from the safetensors header
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(json.loads(f.read(n))["__metadata__"].get(sys.argv[2], ""))
PY
}
while read -r name data hidden epochs lr batch; do
  committed=datasets/models/$name.safetensors
  want=$(meta "$committed" qscope.test_acc)
  case $data in digits) thr=0.95 ;; spirals) thr=0.90 ;; *) thr=0.95 ;; esac
  acc=$(./qscope --json --no-default "$committed" "datasets/$data.csv" -c eval </dev/null 2>/dev/null |
        grep '"cmd":"eval"' | grep -oE '"float":\{"acc":[0-9.e+-]+' | cut -d: -f3)
  ok "$name.threshold" "$(awk -v a="$acc" -v m="$want" -v t="$thr" \
      'BEGIN{print (a != "" && a + 0 >= t && sprintf("%.6f", a) == sprintf("%.6f", m)) ? 1 : 0}')"
  ./qscope --no-default -c "load data datasets/$data.csv; train hidden=$hidden epochs=$epochs lr=$lr batch=$batch seed=0 out=$T/$name.safetensors" </dev/null >/dev/null 2>&1
  got=$(meta "$T/$name.safetensors" qscope.test_acc)
  ok "$name.retrain-reproduces" "$([ -n "$got" ] && [ "$got" = "$want" ] && echo 1 || echo 0)"
done < <(sed -n 's/^  "\(.*\)"$/\1/p' datasets/tools/train_models.sh)
