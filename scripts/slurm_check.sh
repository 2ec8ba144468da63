#!/usr/bin/env bash
# scripts/submit.py against a real SLURM: a one-machine cluster set up here, and jobs of 2 CPU tasks (gloo, one
# DataLoader worker each: SLURM signals every process of a job) that are stopped and requeued the ways a cluster
# does it. As root on a Debian machine (bookworm: SLURM 22.05), from anywhere:
#
#   bash scripts/slurm_check.sh
#
# Installs Debian's slurm-wlm and munge when they are missing, writes a slurm.conf with this machine as the only
# node and its cores as CPUs (no cgroup plugins), starts munged (unless it runs), slurmctld and slurmd, then runs
#   (a) a job that runs to the end;
#   (b) a job requeued mid-epoch with `scontrol requeue`: SLURM sends SIGTERM, as on a preemption, and requeues it;
#   (c) a job whose --time runs out: SLURM sends SIGUSR2 before the limit and the job requeues itself, as often
#       as it needs;
#   (d) a job with a user error (a missing CSV): it fails, is not requeued, and its task's last line is the error
#       line (srun's own lines come after it in the log).
# (b) and (c) must end with (a)'s weights and bank in last.pth and (a)'s log.jsonl (train_seconds aside, a wall
# time), bit for bit. One summary line per case, with its wall time; status 0 when every case passed. The daemons
# it started, and any job still running, are stopped when it ends (also on Ctrl-C).
#
# WORK (default /tmp/mfo-slurm-check) holds SLURM's configuration, state and logs, the data and the runs (about
# 1 GB); PYTHON is the interpreter with requirements.txt installed (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/mfo-slurm-check}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHON=$(command -v "$PYTHON")
python() { "$PYTHON" "$@"; }  # the commands below read as docs/clusters.md shows them
NODE=$(hostname -s)
CONF=$WORK/slurm/slurm.conf
export SLURM_CONF=$CONF  # sbatch, scontrol and the jobs' srun read this configuration, not /etc/slurm's
START=$SECONDS
STARTED=()  # the daemons this script started: stopped on exit
JOBS=()  # the jobs it submitted: cancelled on exit if still there

[ "$(id -u)" = 0 ] || { echo "error: run as root: it installs and starts SLURM" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "error: the jobs have 2 tasks of one CPU each; this machine has $(nproc)" >&2; exit 1; }

stop_all() {
    local job pid
    for job in "${JOBS[@]}"; do scancel "$job" 2>/dev/null || true; done
    for _ in $(seq 60); do  # cancelled jobs stop at a step (SIGTERM) before the daemons go
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 1
    done
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

# --- SLURM on this machine -------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
for daemon in slurmctld slurmd; do  # this script's daemons of an earlier run that was killed: stop them
    pidfile=$WORK/slurm/$daemon.pid
    if [ -f "$pidfile" ] && grep -qs -- "$CONF" "/proc/$(cat "$pidfile")/cmdline"; then
        kill "$(cat "$pidfile")" && sleep 2
    fi
done
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge /run/munge /var/lib/munge /var/log/munge
    [ -f /etc/munge/munge.key ] || setpriv --reuid=munge --regid=munge --init-groups mungekey --create
    mkdir -p "$WORK"
    setpriv --reuid=munge --regid=munge --init-groups munged --foreground > "$WORK/munged.log" 2>&1 &
    STARTED+=($!)
    for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
rm -rf "$WORK/slurm" && mkdir -p "$WORK/slurm/state" "$WORK/slurm/spool"
cat > "$CONF" <<EOF
ClusterName=mfo-check
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again 11 s after it ended (default 121 s)
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmdPidFile=$WORK/slurm/slurmd.pid
SlurmctldLogFile=$WORK/slurm/slurmctld.log
SlurmdLogFile=$WORK/slurm/slurmd.log
# no cgroup plugins: processes tracked by their parents, no task binding, no accounting daemon
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# jobs may be requeued; 30 s from SIGTERM to SIGKILL to write last.pth; a job may overrun its --time by a minute
JobRequeue=1
KillWait=30
OverTimeLimit=1
# finished jobs stay visible to scontrol show job for an hour (their state and number of restarts)
MinJobAge=3600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -f "$CONF" > "$WORK/slurm/slurmctld.out" 2>&1 &
STARTED+=($!)
slurmd -D -f "$CONF" > "$WORK/slurm/slurmd.out" 2>&1 &
STARTED+=($!)
for _ in $(seq 60); do [ "$(sinfo -h -N -o %T 2>/dev/null)" = idle ] && break; sleep 1; done
[ "$(sinfo -h -N -o %T 2>/dev/null)" = idle ] || { echo "error: the node did not come up:" >&2;
    tail -5 "$WORK/slurm/slurmctld.out" "$WORK/slurm/slurmd.out" >&2; exit 1; }
echo "$(sinfo -V), node $NODE with $(nproc) CPUs, up in $((SECONDS - START)) s; python: $PYTHON"

# --- the jobs ----------------------------------------------------------------------------------------------------
python scripts/make_demo_data.py --out "$WORK/data" > /dev/null  # 48 videos: 12 steps an epoch at 2 x 2 videos
rm -rf "$WORK/a" "$WORK/b" "$WORK/c" "$WORK/d"

field() {  # field JOB NAME: a field of `scontrol show job`
    scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}
job_of() {  # job_of OUT_DIR: the id of the job submitted for OUT_DIR (from its job.json)
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["job_id"])' "$1/slurm/job.json"
}
wait_end() {  # wait_end JOB SECONDS: until the job has ended (its state), at most SECONDS
    local state
    for _ in $(seq "$2"); do
        state=$(field "$1" JobState)
        case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|PREEMPTED|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
            echo "$state"; return ;; *) sleep 1 ;; esac  # PENDING, RUNNING, REQUEUED, SIGNALING...
    done
    echo "still $(field "$1" JobState) after $2 s"
}
stops() {  # stops OUT_DIR: how many starts of the job stopped, and where the first and the last did
    local at
    at=$(cat "$1"/slurm/*_0_log.err | tr '\r' '\n' |
        sed -n 's/^interrupted \([a-z]* epoch [0-9]*\(, step [0-9]*\)\{0,1\}\).*/\1/p')
    [ -z "$at" ] && return
    if [ "$(echo "$at" | wc -l)" = 1 ]; then echo "stopped $at"; return; fi
    echo "$(echo "$at" | wc -l) stops: first $(echo "$at" | head -1), last $(echo "$at" | tail -1)"
}
same() {  # same DIR: "identical to (a)" when DIR's last.pth and log.jsonl are (a)'s, else what differs
    "$PYTHON" - "$WORK/a" "$1" <<'EOF'
import json, sys
import torch
a, b = sys.argv[1:]
def log(d):
    return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in open(f"{d}/log.jsonl")]
try:
    x, y = (torch.load(f"{d}/last.pth", map_location="cpu", weights_only=True) for d in (a, b))
except OSError as e:
    print(f"no checkpoint to compare ({e})")
    sys.exit()
diff = [f"{part}.{k}" for part in ("model", "bank") for k in x[part]
        if k not in y[part] or not torch.equal(x[part][k], y[part][k])]
lines = "" if log(a) == log(b) else f"; log.jsonl differs ({len(log(a))} and {len(log(b))} lines)"
print("identical to (a)" if not diff and not lines else f"{len(diff)} tensors differ{lines}")
EOF
}
summary=()
failed=0
record() {  # record OK LINE
    summary+=("$2")
    echo "$2"
    [ "$1" = yes ] || failed=$((failed + 1))
}

# (a) to the end
tic=$SECONDS
python scripts/submit.py --partition check --time 10 --gpus_per_node 0 --tasks_per_node 2 --cpus_per_task 1 \
    -- --csv_file "$WORK/data/pretrain.csv" --out_dir "$WORK/a" --arch s3d --seq 8 --img_dim 32 --train_batch 2 \
    --workers 1 --cluster 4 --queue_size 16 --channel 16 --epoch 10 --split 1 --queue_start 1 --lr_decay 1 \
    --keep_epochs 0
job=$(job_of "$WORK/a"); JOBS+=("$job")
state=$(wait_end "$job" 600)
steps=$("$PYTHON" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["global_step"])' \
    "$WORK/a/log.jsonl" 2>/dev/null || echo "?")
ok=$([ "$state" = COMPLETED ] && [ "$(field "$job" Restarts)" = 0 ] && echo yes || echo no)
record $ok "(a) to the end:      job $job $state, $(field "$job" Restarts) requeue(s), $steps steps, $((SECONDS - tic)) s"

# (b) scontrol requeue mid-epoch
tic=$SECONDS
python scripts/submit.py --partition check --time 10 --gpus_per_node 0 --tasks_per_node 2 --cpus_per_task 1 \
    -- --csv_file "$WORK/data/pretrain.csv" --out_dir "$WORK/b" --arch s3d --seq 8 --img_dim 32 --train_batch 2 \
    --workers 1 --cluster 4 --queue_size 16 --channel 16 --epoch 10 --split 1 --queue_start 1 --lr_decay 1 \
    --keep_epochs 0
job=$(job_of "$WORK/b"); JOBS+=("$job")
for _ in $(seq 600); do  # epoch 0 done (its line in log.jsonl), then a few steps into epoch 1
    [ -s "$WORK/b/log.jsonl" ] && break
    sleep 0.5
done
sleep 4
scontrol requeue "$job"
state=$(wait_end "$job" 600)
restarts=$(field "$job" Restarts)
verdict=$(same "$WORK/b")
where=$(stops "$WORK/b")
ok=$([ "$state" = COMPLETED ] && [ "$restarts" -ge 1 ] && [ -n "$where" ] && [ "$verdict" = "identical to (a)" ] &&
    echo yes || echo no)
record $ok "(b) scontrol requeue: job $job $state, $restarts requeue(s), ${where:-no stop found}; $verdict, $((SECONDS - tic)) s"

# (c) the time limit: --time 1, SIGUSR2 --signal_delay seconds before it, or up to 30 s earlier (SLURM looks every
# 30 s); each start trains between the end of its start-up and that signal, so a loaded machine needs more starts
tic=$SECONDS
python scripts/submit.py --partition check --time 1 --signal_delay 20 --max_timeouts 100 --gpus_per_node 0 \
    --tasks_per_node 2 --cpus_per_task 1 \
    -- --csv_file "$WORK/data/pretrain.csv" --out_dir "$WORK/c" --arch s3d --seq 8 --img_dim 32 --train_batch 2 \
    --workers 1 --cluster 4 --queue_size 16 --channel 16 --epoch 10 --split 1 --queue_start 1 --lr_decay 1 \
    --keep_epochs 0
job=$(job_of "$WORK/c"); JOBS+=("$job")
state=$(wait_end "$job" 1200)
restarts=$(field "$job" Restarts)
verdict=$(same "$WORK/c")
where=$(stops "$WORK/c")
warned=$(cat "$WORK"/c/slurm/*_0_log.err | grep -o "SIGUSR2 received" | wc -l)
ok=$([ "$state" = COMPLETED ] && [ "$restarts" -ge 1 ] && [ "$warned" -ge 1 ] &&
    [ "$verdict" = "identical to (a)" ] && echo yes || echo no)
record $ok "(c) time limit:      job $job $state, $restarts requeue(s) after $warned SIGUSR2, ${where:-no stop found}; $verdict, $((SECONDS - tic)) s"

# (d) a user error
tic=$SECONDS
python scripts/submit.py --partition check --time 10 --gpus_per_node 0 --tasks_per_node 2 --cpus_per_task 1 \
    -- --csv_file "$WORK/missing.csv" --out_dir "$WORK/d" --arch s3d --seq 8 --img_dim 32 --train_batch 2 \
    --workers 1 --cluster 4 --queue_size 16 --channel 16 --epoch 10 --split 1 --queue_start 1 --lr_decay 1 \
    --keep_epochs 0
job=$(job_of "$WORK/d"); JOBS+=("$job")
state=$(wait_end "$job" 300)
last=$(grep -v "^srun: \|^slurmstepd" "$WORK/d/slurm/${job}_0_log.err" | tail -n 1)  # srun adds its own lines
ok=$([ "$state" = FAILED ] && [ "$(field "$job" Restarts)" = 0 ] && [[ $last == "error: --csv_file "* ]] &&
    echo yes || echo no)
record $ok "(d) user error:      job $job $state, $(field "$job" Restarts) requeue(s), task 0 ended with: $last; $((SECONDS - tic)) s"

echo "slurm check: $(( ${#summary[@]} - failed )) of ${#summary[@]} cases passed in $((SECONDS - START)) s"
[ "$failed" = 0 ]
