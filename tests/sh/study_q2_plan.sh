#!/usr/bin/env bash
# study_q2_plan.sh - study q2 as a plan of jobs (issue 16, "Sweeps beyond one machine", for Q2):
# `study q2 ... plan=DIR` over 2 bundled models (the digits MLP and tiny-gpt2 on the first 24 KB
# of its text, so that a transformer setting takes seconds) x 2 seeds, run with GNU parallel,
# merged with `study merge DIR`, and compared with the same study run in one process: the text
# report, the JSON and the CSV files identical, the per-setting records equal bit for bit.
# Also: a second run skips finished settings; a merge names a missing setting, a failed one (a
# model changed after planning: its session's SHA-256 pin refuses it), and refuses records that
# were edited, cut short, of another setting, of other options or of another study.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] && echo "kept $T" || rm -rf "$T"' EXIT
Q=$PWD/qscope
pass() { echo "PASS study_q2_plan.$1"; }
fail() { echo "FAIL study_q2_plan.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
if ! command -v parallel >/dev/null; then
  fail "gnu-parallel-installed (make deps installs Debian's parallel)"
  exit 0
fi
head -c 24000 datasets/text/licenses.txt >"$T/text.txt"
M=datasets/models/digits-mlp.safetensors,datasets/models/tiny-gpt2:$T/text.txt
O="fit=4096 epochs=2 heldout_tokens=640"  # 10 of the 37 held-out windows
P=$T/plan

# the plan: one session per setting, jobs.txt, slurm.sbatch, plan.json; nothing run
out=$($Q -c "study q2 models=$M seeds=0,1 $O plan=$P" 2>&1)
check plan-written "[ \$(wc -l <$P/jobs.txt) = 4 ] && [ \$(ls $P/settings/*.qs | wc -l) = 4 ] && [ \$(ls $P/results | wc -l) = 0 ] && grep -q '^study q2 plan: 4 settings' <<<\"\$out\""
check plan-json "python3 -c '
import json, sys
p = json.load(open(\"$P/plan.json\"))
assert p[\"study\"] == \"q2\" and [s[\"name\"] for s in p[\"settings\"]] == [\"000-digits-mlp-s0\", \"001-digits-mlp-s1\", \"002-tiny-gpt2-s0\", \"003-tiny-gpt2-s1\"]
assert \"fit=4096\" in p[\"args\"] and \"epochs=2\" in p[\"args\"]'"
check plan-pins "grep -q '^# model datasets/models/tiny-gpt2 sha256=[0-9a-f]\{64\}\$' $P/settings/002-tiny-gpt2-s0.qs && grep -q '^# data $T/text.txt sha256=[0-9a-f]\{64\}\$' $P/settings/003-tiny-gpt2-s1.qs && grep -q '^# data datasets/digits.csv sha256=' $P/settings/000-digits-mlp-s0.qs"
check plan-setting-command "grep -q '^study q2 models=datasets/models/digits-mlp.safetensors seeds=1 fit=4096 epochs=2 heldout_tokens=640 out=$P/results/001-digits-mlp-s1.json\$' $P/settings/001-digits-mlp-s1.qs"
check plan-sbatch "grep -q '^#SBATCH --array=0-3\$' $P/slurm.sbatch && grep -q '^#SBATCH --job-name=qscope-q2\$' $P/slurm.sbatch"
check plan-refuses-csv "! $Q -c 'study q2 models=$M seeds=0 plan=$T/x csv=$T/x' 2>/dev/null && ! $Q -c 'study q2 models=$M seeds=0 plan=$T/x out=$T/x.json' 2>/dev/null"

# the jobs, under GNU parallel, and the same study in one process
parallel -j 2 <"$P/jobs.txt" >"$T/run1.txt" 2>&1
check parallel-runs "[ \$? = 0 ] && [ \$(grep -c ': done\$' $T/run1.txt) = 4 ] && [ \$(ls $P/results/*.json | wc -l) = 4 ]"
$Q -c "study q2 models=$M seeds=0,1 $O csv=$T/in out=$T/in.json" >"$T/in.txt" 2>&1
$Q --json -c "study q2 models=$M seeds=0,1 $O" 2>/dev/null | tail -1 >"$T/in.json1"
$Q -c "study merge $P" >"$T/merge.txt" 2>&1
$Q --json -c "study merge $P" 2>/dev/null | tail -1 >"$T/merge.json1"
check merge-header "[ \"\$(head -1 $T/merge.txt)\" = 'study merge $P: 4 of 4 settings finished' ]"
check merge-report-same "diff <(tail -n +2 $T/merge.txt | sed 's|$P/q2-|PFX-|g') <(sed 's|$T/in-|PFX-|g' $T/in.txt) >&2"
check heldout-stated "grep -q '^transformer held-out losses (loss_q, every gain): the first 640 held-out tokens' $T/in.txt && python3 -c 'import json; assert json.load(open(\"$T/in.json1\"))[\"heldout_tokens\"] == 640'"
check merge-verdicts "grep -q '^verdicts: .*of 4 settings' $T/merge.txt && [ \"\$(grep '^verdicts: ' $T/merge.txt)\" = \"\$(grep '^verdicts: ' $T/in.txt)\" ] && [ \$(grep -cE '^(digits-mlp|tiny-gpt2) +[01] pass ' $T/merge.txt) = 4 ]"
cmpjson() { # merge.json1 in.json1: equal once the merge's own keys are dropped
  python3 - "$1" "$2" <<'EOF'
import json, sys
m, i = (json.loads(open(f).read()) for f in sys.argv[1:3])
assert m["cmd"] == "study merge" and m["study"] == "q2" and m["missing"] == [] and m["failed"] == []
assert i["cmd"] == "study q2" and len(i["settings"]) == 4 and len(i["sites"]) == 2 * 3 + 2 * 9
for k in ("cmd", "study", "plan", "settings_planned", "settings_finished", "missing", "failed", "csv_prefix"):
    m.pop(k, None); i.pop(k, None)
assert m == i, "the merged JSON differs from the in-process one"
EOF
}
check merge-json-same "cmpjson $T/merge.json1 $T/in.json1"
check records-bit-for-bit "python3 -c '
import json, glob, sys
a = json.load(open(\"$T/in.json\"))
b = [json.load(open(f)) for f in sorted(glob.glob(\"$P/results/*.json\"))]
assert a[\"study\"] == \"q2\" and all(r[\"options\"] == a[\"options\"] for r in b)
b = [s for r in b for s in r[\"settings\"]]
sys.exit(0 if a[\"settings\"] == b and len(b) == 4 and all(len(s[\"sha256\"]) == 64 for s in b) else 1)'"
check merge-csv-same "for w in master_summary sites; do cmp -s $T/in-\$w.csv $P/q2-\$w.csv || exit 1; done"
check merge-files "[ -s $P/q2-summary.json ] && [ -s $P/q2-report.txt ] && cmp -s $P/q2-report.txt $T/merge.txt"
$Q -c "study merge $P csv=$T/mc" >/dev/null 2>&1
check merge-csv-prefix "cmp -s $T/in-master_summary.csv $T/mc-master_summary.csv && cmp -s $T/in-sites.csv $T/mc-sites.csv"

# running the plan again skips every finished setting
stamp=$(stat -c %Y.%s "$P"/results/*.json | md5sum)
parallel -j 2 <"$P/jobs.txt" >"$T/run2.txt" 2>&1
check rerun-skips "[ \$(grep -c 'finished already' $T/run2.txt) = 4 ] && [ \"\$(stat -c %Y.%s $P/results/*.json | md5sum)\" = \"$stamp\" ]"

# a missing setting is named; running again runs only that one, and the merge is whole again
mv "$P/results/003-tiny-gpt2-s1.json" "$T/"
$Q -c "study merge $P" >"$T/m3.txt" 2>&1
check missing-named "grep -q '3 of 4 settings finished (1 missing, 0 failed' $T/m3.txt && grep -q '^missing (no result yet): 003-tiny-gpt2-s1\$' $T/m3.txt && grep -q '^verdicts: .*of 3 settings' $T/m3.txt"
parallel -j 2 <"$P/jobs.txt" >"$T/run3.txt" 2>&1
$Q -c "study merge $P" >"$T/m4.txt" 2>&1
check rerun-missing-only "[ \$(grep -c 'finished already' $T/run3.txt) = 3 ] && grep -q '^003-tiny-gpt2-s1: done' $T/run3.txt && cmp -s $T/m4.txt $T/merge.txt"

# records that are not as the job wrote them are refused, named, and the rest merged
R=$P/results/001-digits-mlp-s1.json
cp "$R" "$T/good.json"
edit() { # edit.py KEY VALUE: one figure of the record's setting changed, everything else kept
  python3 - "$R" "$1" "$2" <<'EOF'
import re, sys
path, key, val = sys.argv[1:4]
s = open(path).read()
s2, n = re.subn(r'("%s":\s*)[^,\n]+' % key, lambda m: m.group(1) + val, s, count=1)
assert n == 1
open(path, "w").write(s2)
EOF
}
merged_without() { # the merge names 001 failed with REASON and merges the other 3
  $Q -c "study merge $P" >"$T/t.txt" 2>&1
  grep -q '3 of 4 settings finished (0 missing, 1 failed' "$T/t.txt" &&
    grep -q "^failed: 001-digits-mlp-s1 (.*$1" "$T/t.txt" && grep -q '^verdicts: .*of 3 settings' "$T/t.txt"
}
edit mse_none 0.5
check tampered-figure "merged_without 'edited after it was written: its sha256 does not match its contents)'"
cp "$T/good.json" "$R"
v=$(grep -o '"verdict":[^,]*' "$R" | head -1)
other=supported; grep -q supported <<<"$v" && other=unclear
edit verdict "\"$other\""
check tampered-verdict "merged_without 'edited: its verdict does not follow from its figures)'"
cp "$T/good.json" "$R"
head -c 2000 "$T/good.json" >"$R"
check cut-short "merged_without 'not a JSON record (cut short?))'"
sh "$P/run.sh" 001-digits-mlp-s1 >"$T/redo.txt" 2>&1
check cut-short-rerun "grep -q '^001-digits-mlp-s1: done' $T/redo.txt && cmp -s $R $T/good.json"
cp "$P/results/000-digits-mlp-s0.json" "$R"
check wrong-record "merged_without 'not the record of this setting)'"
$Q -c "study q2 models=datasets/models/digits-mlp.safetensors seeds=1 fit=4096 epochs=1 out=$R" >/dev/null 2>&1
check other-options "merged_without 'written under other options (epochs=1 where the plan has epochs=2; record: '"
$Q -c "study q1 models=datasets/models/digits-mlp.safetensors seeds=1 out=$R" >/dev/null 2>&1
check other-study "merged_without 'not a qscope q2 record'"
cp "$T/good.json" "$R"
$Q -c "study merge $P" >"$T/m5.txt" 2>&1
check restored "cmp -s $T/m5.txt $T/merge.txt"

# a failed setting is named: its model changed after planning, so its pinned session refuses it
mkdir -p "$T/m"
cp datasets/models/digits-mlp.safetensors "$T/m/digits-mlp.safetensors"
F=$T/fplan
$Q -c "study q2 models=$T/m/digits-mlp.safetensors,datasets/models/circles-mlp.safetensors seeds=0 $O plan=$F" >/dev/null 2>&1
printf 'x' >>"$T/m/digits-mlp.safetensors"
parallel -j 2 <"$F/jobs.txt" >"$T/frun.txt" 2>&1
frc=$?
$Q -c "study merge $F" >"$T/fm.txt" 2>&1
check failed-exit "[ $frc = 1 ] && [ -s $F/results/000-digits-mlp-s0.failed ] && [ -s $F/results/001-circles-mlp-s0.json ]"
check failed-named "grep -q '1 of 2 settings finished (0 missing, 1 failed' $T/fm.txt && grep -q '^failed: 000-digits-mlp-s0 (exit 1: .*has changed' $T/fm.txt && grep -qE '^circles-mlp +0 pass ' $T/fm.txt"
rm -f "$F"/results/*.json
msg=$($Q -c "study merge $F" 2>&1)
check nothing-finished "grep -q 'no setting has finished (2 planned, 1 missing, 1 failed); failed: 000-digits-mlp-s0' <<<\"\$msg\""
