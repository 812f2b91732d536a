#!/usr/bin/env bash
# study_q2.sh - study q2 from the command line and in the TUI (issue 16, Q2): the report's
# table and verdict line, the JSON fields a setting carries, csv= writing one row per setting
# and per site, the canonical command, bad arguments, and in the TUI the study running as a job
# with progress that Ctrl-C cancels without leaving qscope. (The numbers are checked by the unit
# test test_q2 and by replaying sessions/q2-study.qs.)
set -u
cd "$(dirname "$0")/../.."
TEST=study_q2
# shellcheck source=tests/sh/lib/tmux.sh
. tests/sh/lib/tmux.sh
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
DIG=datasets/models/digits-mlp.safetensors

out=$($Q -c "study q2 models=$DIG seeds=3 fit=4096 epochs=2 csv=$TMP/s" 2>&1)
check table "grep -qE '^digits-mlp +3 pass .* (supported|refuted|unclear)' <<<\"\$out\""
check verdict-line "grep -q '^verdicts: [0-9] supported, [0-9] refuted, [0-9] unclear (of 1 settings' <<<\"\$out\""
check report-figures "grep -q '17 supported, 1 unclear; improvement mean +30.4%' <<<\"\$out\""
check per-site "grep -qE '^digits-mlp +3 fc2 +1 +10 ' <<<\"\$out\""
check master-summary "[ \$(grep -vc '^#' $TMP/s-master_summary.csv) = 2 ] && head -1 $TMP/s-master_summary.csv | grep -q '^# qscope .* study q2' && sed -n 2p $TMP/s-master_summary.csv | grep -q 'mse_features_only.*loss_gain_features_plus_embedding.*verdict'"
check sites-csv "[ \$(grep -vc '^#' $TMP/s-sites.csv) = 4 ] && grep -q '\"fc1\",\"1\",\"0\",\"64\",\"64\"' $TMP/s-sites.csv"

json=$($Q --json -c "study q2 models=$DIG seeds=3 fit=4096 epochs=2" 2>&1 | tail -1)
check json-fields "/usr/bin/python3 -c '
import json, sys
o = json.loads(sys.argv[1]); s = o[\"settings\"][0]
need = [\"model\", \"seed\", \"verdict\", \"mse_none\", \"mse_embedding_only\", \"mse_features_only\",
        \"mse_features_plus_embedding\", \"loss_gain_embedding_only\", \"loss_gain_features_only\",
        \"loss_gain_features_plus_embedding\", \"improvement\", \"unstable\", \"quant_loss\", \"gate\"]
assert all(k in s for k in need), [k for k in need if k not in s]
assert o[\"cmd\"] == \"study q2\" and len(o[\"sites\"]) == 3 and len(o[\"corrector\"][\"features\"]) == 10
assert abs(s[\"improvement\"] - (s[\"mse_embedding_only\"] - s[\"mse_features_only\"]) / s[\"mse_embedding_only\"]) < 1e-6
assert sum(o[\"verdicts\"][k] for k in (\"supported\", \"refuted\", \"unclear\")) == 1
' \"\$json\""
# the same setting twice: the same numbers (seeded, fixed BLAS threads)
json2=$($Q --json -c "study q2 models=$DIG seeds=3 fit=4096 epochs=2" 2>&1 | tail -1)
check reproducible "[ \"\$json\" = \"\$json2\" ]"

# canonical form in a saved session: defaults spelled out
$Q -c "study q2 models=$DIG seeds=3 fit=4096 epochs=2; save session $TMP/c.qs" >/dev/null 2>&1
check canonical "grep -q '^study q2 models=datasets/models/digits-mlp.safetensors seeds=3 format=int3 gran=tensor fit=4096 epochs=2\$' $TMP/c.qs"

msg=$($Q -c "study q2 fit=3" 2>&1); rc=$?
check bad-fit "[ $rc = 1 ] && grep -q 'fit' <<<\"\$msg\""
for bad in 0 many 1e3 -5; do
  msg=$($Q -c "study q2 heldout_tokens=$bad" 2>&1); rc=$?
  check "bad-heldout-tokens-$bad" "[ $rc = 1 ] && grep -q 'study q2 heldout_tokens' <<<\"\$msg\""
done
msg=$($Q -c "study q2 bogus=1" 2>&1); rc=$?
check usage "[ $rc = 1 ] && grep -q 'usage: study q2' <<<\"\$msg\""
msg=$($Q --json datasets/models/tiny-gpt2 -c 'study q2' 2>&1); rc=$?
check needs-tokens "[ $rc = 1 ] && grep -q 'study q2: load token data for the transformer first' <<<\"\$msg\""

# the TUI: a job with progress, cancelled by Ctrl-C; the prompt works afterwards
s=q2tui
if start "$s" "LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen" datasets/models/tiny-gpt2 datasets/text/licenses.txt; then
  cmd "$s" "study q2 seeds=0,1,2"
  if wait_for "$s" "running: study q2" 20 && wait_for "$s" "study q2 tiny-gpt2 seed 0" 60; then
    T send-keys -t "$s" C-c
    if wait_for "$s" "tiny-gpt2: cancelled" 60 && wait_idle "$s" 20; then
      cmd "$s" "info"
      if wait_for "$s" "tiny-gpt2" 10 && [ "$(T display-message -p -t "$s" '#{pane_dead}')" = 0 ]; then
        pass tui-cancel
      else
        fail tui-cancel "prompt dead after cancel" "$(screen "$s")"
      fi
    else
      fail tui-cancel "not cancelled" "$(screen "$s")"
    fi
  else
    fail tui-cancel "no progress" "$(screen "$s")"
  fi
else
  fail tui-cancel "qscope did not start" "$(screen "$s")"
fi
