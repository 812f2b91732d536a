#!/usr/bin/env bash
# slurm.sh - `make test-slurm`: a study plan run as a real Slurm job array on a one-node Slurm
# brought up here, on localhost, from Debian's packages (slurm-wlm, munge; installed with apt-get
# when missing), then merged and compared with the same study run in one process: a study q1
# plan (an MLP and tiny-gpt2 x 2 seeds) and a study q2 plan (the digits MLP and tiny-gpt2 on 24 KB
# of its text x 2 seeds, a small corrector).
#
# Everything lives in a private folder (config, state, logs, munge socket and key) and on ports
# of its own, so a Slurm already on the machine is left alone; the daemons run in the foreground
# (-D, no systemd needed) as children of this script and are stopped by pid at the end. Needs
# root (the daemons run as root, the job as root). Prints PASS/FAIL lines like tests/sh/*.sh.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
Q=$ROOT/qscope
pass() { echo "PASS slurm.$1"; }
fail() { echo "FAIL slurm.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
T=$(mktemp -d /tmp/qscope-slurm.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] && echo "kept $T" || rm -rf "$T"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
  fail "root (the one-node Slurm runs its daemons as root: run make test-slurm as root)"
  exit 0
fi
need=""
for p in slurm-wlm munge parallel; do
  dpkg-query -W -f='${Status}' $p 2>/dev/null | grep -q 'ok installed' || need="$need $p"
done
if [ -n "$need" ]; then
  echo "slurm.sh: installing$need"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
check installed "command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null"
[ -x "$Q" ] || { fail "qscope-built (make qscope first)"; exit 0; }

# ---- munge: its own key and socket
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/logs"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$T/munge"
chmod 400 "$T/munge/munge.key"
MSOCK=$T/munge/munge.sock
munged --force -F --socket="$MSOCK" --key-file="$T/munge/munge.key" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" \
  --seed-file="$T/munge/munged.seed" 2>"$T/munge/stderr" &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$MSOCK" ] && break; sleep 0.1; done
check munge-up "munge --socket='$MSOCK' -n </dev/null | unmunge --socket='$MSOCK' >/dev/null 2>&1"

# ---- slurm.conf: one node, localhost, 2 CPUs, no cgroup, ports of its own
port=$((20000 + RANDOM % 20000))
host=$(hostname -s)
export SLURM_CONF=$T/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=qscope
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/logs/slurmctld.log
SlurmdLogFile=$T/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" >"$T/logs/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$T/logs/slurmd.out" 2>&1 &
PIDS+=($!)
up=0
for _ in $(seq 120); do
  if sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; then up=1; break; fi
  sleep 0.5
done
check slurm-up "[ $up = 1 ]"
if [ $up != 1 ]; then
  tail -n 20 "$T"/logs/*.log "$T"/logs/*.out >&2
  exit 0
fi

# ---- the plan, as a job array
M=datasets/models/moons-mlp.safetensors,datasets/models/tiny-gpt2:datasets/text/licenses.txt
P=$T/plan
"$Q" -c "study q1 models=$M seeds=0,1 plan=$P" >/dev/null 2>&1
t0=$(date +%s)
jid=$(sbatch --parsable "$P/slurm.sbatch" 2>"$T/sbatch.err")
check sbatch "[ -n '$jid' ]"
state=""
for _ in $(seq 600); do # 5 minutes at most
  state=$(squeue -h -j "$jid" -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
  [ -z "$state" ] && break
  sleep 0.5
done
t1=$(date +%s)
check array-finished "[ -z '$state' ] && [ \$(ls $P/results/*.json 2>/dev/null | wc -l) = 4 ] && [ ! -e $P/results/*.failed ] 2>/dev/null"
echo "slurm: the 4-task array ran in $((t1 - t0)) s (job $jid)"

# ---- merge and compare with the in-process run
"$Q" -c "study q1 models=$M seeds=0,1 csv=$T/in out=$T/in.json" >"$T/in.txt" 2>&1
"$Q" -c "study merge $P" >"$T/merge.txt" 2>&1
check merge-whole "[ \"\$(head -1 $T/merge.txt)\" = 'study merge $P: 4 of 4 settings finished' ]"
check merge-report-same "diff <(tail -n +2 $T/merge.txt | sed 's|$P/q1-|PFX-|g') <(sed 's|$T/in-|PFX-|g' $T/in.txt) >&2"
check records-bit-for-bit "python3 -c '
import json, glob, sys
a = json.load(open(\"$T/in.json\"))[\"settings\"]
b = [s for f in sorted(glob.glob(\"$P/results/*.json\")) for s in json.load(open(f))[\"settings\"]]
sys.exit(0 if a == b and len(a) == 4 else 1)'"
check merge-csv-same "for w in layers settings master_summary; do cmp -s $T/in-\$w.csv $P/q1-\$w.csv || exit 1; done"
# resubmitting runs nothing again
jid2=$(sbatch --parsable --wait "$P/slurm.sbatch" 2>>"$T/sbatch.err")
check resubmit-skips "[ \$(cat $P/logs/slurm-${jid2}_*.out | grep -c 'finished already') = 4 ]"

# ---- study q2: a plan of 4 settings as a job array, merged and compared the same way
head -c 24000 datasets/text/licenses.txt >"$T/text.txt"
M2=datasets/models/digits-mlp.safetensors,datasets/models/tiny-gpt2:$T/text.txt
O2="fit=4096 epochs=2"
P2=$T/plan2
"$Q" -c "study q2 models=$M2 seeds=0,1 $O2 plan=$P2" >/dev/null 2>&1
t0=$(date +%s)
jid=$(sbatch --parsable "$P2/slurm.sbatch" 2>>"$T/sbatch.err")
check q2-sbatch "[ -n '$jid' ]"
state=""
for _ in $(seq 600); do # 5 minutes at most
  state=$(squeue -h -j "$jid" -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
  [ -z "$state" ] && break
  sleep 0.5
done
t1=$(date +%s)
check q2-array-finished "[ -z '$state' ] && [ \$(ls $P2/results/*.json 2>/dev/null | wc -l) = 4 ] && [ ! -e $P2/results/*.failed ] 2>/dev/null"
echo "slurm: the 4-task q2 array ran in $((t1 - t0)) s (job $jid)"
"$Q" -c "study q2 models=$M2 seeds=0,1 $O2 csv=$T/in2 out=$T/in2.json" >"$T/in2.txt" 2>&1
"$Q" -c "study merge $P2" >"$T/merge2.txt" 2>&1
check q2-merge-whole "[ \"\$(head -1 $T/merge2.txt)\" = 'study merge $P2: 4 of 4 settings finished' ]"
check q2-merge-report-same "diff <(tail -n +2 $T/merge2.txt | sed 's|$P2/q2-|PFX-|g') <(sed 's|$T/in2-|PFX-|g' $T/in2.txt) >&2"
check q2-records-bit-for-bit "python3 -c '
import json, glob, sys
a = json.load(open(\"$T/in2.json\"))[\"settings\"]
b = [s for f in sorted(glob.glob(\"$P2/results/*.json\")) for s in json.load(open(f))[\"settings\"]]
sys.exit(0 if a == b and len(a) == 4 else 1)'"
check q2-merge-csv-same "for w in master_summary sites; do cmp -s $T/in2-\$w.csv $P2/q2-\$w.csv || exit 1; done"
jid2=$(sbatch --parsable --wait "$P2/slurm.sbatch" 2>>"$T/sbatch.err")
check q2-resubmit-skips "[ \$(cat $P2/logs/slurm-${jid2}_*.out | grep -c 'finished already') = 4 ]"
