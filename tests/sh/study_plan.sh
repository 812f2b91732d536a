#!/usr/bin/env bash
# study_plan.sh - a study as a plan of jobs (issue 16, "Sweeps beyond one machine"): `study q1
# ... plan=DIR` over 2 bundled models (an MLP and tiny-gpt2) x 2 seeds, run with GNU parallel,
# merged with `study merge DIR`, and compared with the same study run in one process: the text
# report, the JSON and the CSV files identical, the per-setting records equal bit for bit.
# Also: a second run skips finished settings; a merge names a missing setting and a failed one
# (a model changed after planning: its session's SHA-256 pin refuses it).
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=$PWD/qscope
pass() { echo "PASS study_plan.$1"; }
fail() { echo "FAIL study_plan.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
if ! command -v parallel >/dev/null; then
  fail "gnu-parallel-installed (make deps installs Debian's parallel)"
  exit 0
fi
M=datasets/models/moons-mlp.safetensors,datasets/models/tiny-gpt2:datasets/text/licenses.txt
P=$T/plan

# the plan: one session per setting, jobs.txt, slurm.sbatch; nothing run
out=$($Q -c "study q1 models=$M seeds=0,1 plan=$P" 2>&1)
check plan-written "[ \$(wc -l <$P/jobs.txt) = 4 ] && [ \$(ls $P/settings/*.qs | wc -l) = 4 ] && [ ! -e $P/results/000-moons-mlp-s0.json ] && grep -q '4 settings' <<<\"\$out\""
check plan-pins "grep -q '^# model datasets/models/tiny-gpt2 sha256=[0-9a-f]\{64\}\$' $P/settings/002-tiny-gpt2-s0.qs && grep -q '^# data datasets/text/licenses.txt sha256=[0-9a-f]\{64\}\$' $P/settings/003-tiny-gpt2-s1.qs && grep -q '^# data datasets/moons.csv sha256=' $P/settings/000-moons-mlp-s0.qs"
check plan-sbatch "grep -q '^#SBATCH --array=0-3\$' $P/slurm.sbatch && grep -q 'SLURM_ARRAY_TASK_ID + 1' $P/slurm.sbatch"
check plan-refuses-csv "! $Q -c 'study q1 models=$M seeds=0 plan=$T/x csv=$T/x' 2>/dev/null"

# the jobs, under GNU parallel, and the same study in one process
parallel -j 2 <"$P/jobs.txt" >"$T/run1.txt" 2>&1
check parallel-runs "[ \$? = 0 ] && [ \$(grep -c ': done\$' $T/run1.txt) = 4 ] && [ \$(ls $P/results/*.json | wc -l) = 4 ]"
$Q -c "study q1 models=$M seeds=0,1 csv=$T/in out=$T/in.json" >"$T/in.txt" 2>&1
$Q --json -c "study q1 models=$M seeds=0,1" 2>/dev/null | tail -1 >"$T/in.json1"
$Q -c "study merge $P" >"$T/merge.txt" 2>&1
$Q --json -c "study merge $P" 2>/dev/null | tail -1 >"$T/merge.json1"
check merge-header "[ \"\$(head -1 $T/merge.txt)\" = 'study merge $P: 4 of 4 settings finished' ]"
check merge-report-same "diff <(tail -n +2 $T/merge.txt | sed 's|$P/q1-|PFX-|g') <(sed 's|$T/in-|PFX-|g' $T/in.txt) >&2"
check merge-verdicts "grep -q '^verdicts: ' $T/merge.txt && [ \"\$(grep '^verdicts: ' $T/merge.txt)\" = \"\$(grep '^verdicts: ' $T/in.txt)\" ]"
cmpjson() { # merge.json1 in.json1: equal once the merge's own keys are dropped
  python3 - "$1" "$2" <<'EOF'
import json, sys
m, i = (json.loads(open(f).read()) for f in sys.argv[1:3])
assert m["cmd"] == "study merge" and m["study"] == "q1" and m["missing"] == [] and m["failed"] == []
for k in ("cmd", "study", "plan", "settings_planned", "settings_finished", "missing", "failed", "csv_prefix"):
    m.pop(k, None); i.pop(k, None)
assert m == i, "the merged JSON differs from the in-process one"
EOF
}
check merge-json-same "cmpjson $T/merge.json1 $T/in.json1"
check records-bit-for-bit "python3 -c '
import json, glob, sys
a = json.load(open(\"$T/in.json\"))[\"settings\"]
b = [s for f in sorted(glob.glob(\"$P/results/*.json\")) for s in json.load(open(f))[\"settings\"]]
sys.exit(0 if a == b and len(a) == 4 else 1)'"
check merge-csv-same "for w in layers settings master_summary; do cmp -s $T/in-\$w.csv $P/q1-\$w.csv || exit 1; done"
check merge-files "[ -s $P/q1-summary.json ] && [ -s $P/q1-report.txt ]"

# running the plan again skips every finished setting
stamp=$(stat -c %Y.%s "$P"/results/*.json | md5sum)
parallel -j 2 <"$P/jobs.txt" >"$T/run2.txt" 2>&1
check rerun-skips "[ \$(grep -c 'finished already' $T/run2.txt) = 4 ] && [ \"\$(stat -c %Y.%s $P/results/*.json | md5sum)\" = \"$stamp\" ]"

# a missing setting is named; running again runs only that one, and the merge is whole again
mv "$P/results/001-moons-mlp-s1.json" "$T/"
$Q -c "study merge $P" >"$T/m3.txt" 2>&1
check missing-named "grep -q '3 of 4 settings finished (1 missing, 0 failed' $T/m3.txt && grep -q '^missing (no result yet): 001-moons-mlp-s1\$' $T/m3.txt && grep -q '^verdicts: .*of 3 settings' $T/m3.txt"
parallel -j 2 <"$P/jobs.txt" >"$T/run3.txt" 2>&1
$Q -c "study merge $P" >"$T/m4.txt" 2>&1
check rerun-missing-only "[ \$(grep -c 'finished already' $T/run3.txt) = 3 ] && grep -q '^001-moons-mlp-s1: done' $T/run3.txt && cmp -s $T/m4.txt $T/merge.txt"

# a failed setting is named: its model changed after planning, so its pinned session refuses it
mkdir -p "$T/m"
cp datasets/models/moons-mlp.safetensors "$T/m/moons-mlp.safetensors"
F=$T/fplan
$Q -c "study q1 models=$T/m/moons-mlp.safetensors,datasets/models/xor-mlp.safetensors seeds=0 plan=$F" >/dev/null 2>&1
cp datasets/models/circles-mlp.safetensors "$T/m/moons-mlp.safetensors"
parallel -j 2 <"$F/jobs.txt" >"$T/frun.txt" 2>&1
frc=$?
$Q -c "study merge $F" >"$T/fm.txt" 2>&1
check failed-exit "[ $frc = 1 ] && [ -s $F/results/000-moons-mlp-s0.failed ] && [ -s $F/results/001-xor-mlp-s0.json ]"
check failed-named "grep -q '1 of 2 settings finished (0 missing, 1 failed' $T/fm.txt && grep -q '^failed: 000-moons-mlp-s0 (exit 1: .*has changed' $T/fm.txt && grep -q '^xor-mlp ' $T/fm.txt"
# a record that is not this setting's is refused, and named
cp "$P/results/000-moons-mlp-s0.json" "$F/results/001-xor-mlp-s0.json"
check wrong-record-named "$Q -c 'study merge $F' 2>&1 | grep -q 'not the record of this setting'"
check merge-not-a-plan "$Q -c 'study merge $T/m' 2>&1 | grep -q 'plan.json'"
