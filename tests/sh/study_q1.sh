#!/usr/bin/env bash
# study_q1.sh - study q1 on transformers (issue 16, Q1): the Q1 layers are the QKV and up
# projections (LLaMA q|k|v and gate|up concatenated), weights int4 per channel by default and
# stated, other sites listed apart, and csv= writes PREFIX-master_summary.csv (one row per
# setting) beside the per-layer files; the canonical command omits the transformers' default.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS study_q1.$1"; }
fail() { echo "FAIL study_q1.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
TXT=datasets/text/licenses.txt

out=$($Q -c "study q1 models=datasets/models/tiny-llama:$TXT,datasets/models/moons-mlp.safetensors seeds=0 csv=$T/s" 2>&1)
check llama-groups "grep -q 'model.layers.0.self_attn.q_proj+k_proj+v_proj  *attention' <<<\"\$out\" && grep -q 'model.layers.1.mlp.gate_proj+up_proj  *ffn' <<<\"\$out\""
check other-sites-apart "sed -n '/^other sites/,\$p' <<<\"\$out\" | grep -q 'lm_head  *other' && ! sed -n '/^Q1 layers/,/^other sites/p' <<<\"\$out\" | grep -q o_proj"
check int4-stated "grep -q 'transformer weights: int4 per channel, symmetric' <<<\"\$out\""
check aggregate-q1-only "grep -q 'aggregate over 7 layers' <<<\"\$out\"" # 4 llama + 3 moons
check sublayer-profile "grep -q '^attention R_lin_q4  *2 ' <<<\"\$out\" && grep -q '^ffn R_lin_float  *2 ' <<<\"\$out\""
check master-summary "[ \$(grep -vc '^#' $T/s-master_summary.csv) = 3 ] && grep -q 'tiny-llama\",.*\"llama\",\"int4\",\"gran=channel' $T/s-master_summary.csv && grep -q '\"mlp\",\"int3\",\"gran=tensor' $T/s-master_summary.csv"
json=$($Q --json datasets/models/tiny-gpt2 $TXT -c 'study q1 seeds=0' 2>&1 | tail -1)
check json-format "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); s=o[\"settings\"][0]; assert o[\"format\"]==\"int4\" and s[\"format\"]==\"int4\" and \"gran=channel\" in s[\"options\"] and s[\"q1_layers\"]==4 and len(o[\"layers\"])==4 and len(o[\"sites\"])==5 and [l[\"kind\"] for l in o[\"layers\"]]==[\"attention\",\"ffn\"]*2 and \"median_r_lin_q4\" in s and \"spearman\" in s and \"verdict\" in s' \"\$json\""
# calib_tokens=N: a transformer's calibration budget inside a study (the zoo's widest maps need
# more rows than the bench's default 8 windows); too few rows for a map is refused by name
small=$($Q datasets/models/tiny-gpt2 $TXT -c 'study q1 seeds=0 calib_tokens=64' 2>&1)
check calib-tokens-too-few "grep -q 'calibration rows (calib_tokens=N in a study' <<<\"\$small\""
json=$($Q --json datasets/models/tiny-gpt2 $TXT -c 'study q1 seeds=0 calib_tokens=2048' 2>&1 | tail -1)
check calib-tokens-json "python3 -c 'import json,sys; o=json.loads(sys.argv[1]); assert o[\"calib_tokens\"]==2048 and o[\"settings\"][0][\"q1_layers\"]==4' \"\$json\""
for bad in 0 x 1e3; do
  msg=$($Q datasets/models/tiny-gpt2 $TXT -c "study q1 seeds=0 calib_tokens=$bad" 2>&1); rc=$?
  check "calib-tokens-bad-$bad" "[ $rc = 1 ] && grep -q 'study q1 calib_tokens' <<<\"\$msg\""
done
