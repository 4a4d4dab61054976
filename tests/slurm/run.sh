#!/usr/bin/env bash
# make slurm-test: the README's job-array script (slurm/sweep-cpu.sbatch) on a real,
# single-node Slurm started here without systemd, on the synthetic stand-in data.
#
#  1. installs Debian's Slurm and munge if missing; starts munged, slurmctld and slurmd
#     on a fresh state folder; prints the seconds to a working `srun hostname`
#  2. submits the tests' sweep as a job array
#  3. checks that every entry finished exactly once, with the folders the README describes
#  4. cancels a task after its first checkpoint and submits it again: it resumes to the
#     numbers of an uninterrupted run, on the task's thread count and on twice as many CPUs
#  5. submits one entry twice, a second apart: one copy trains, the other says that it
#     is running elsewhere and leaves it alone
#  6. stops every daemon it started and removes its folder, whatever happens
#
# It exits 1 with one line per failed check. SLURM_TEST_KEEP=1 keeps the folder (logs, runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
SCRIPT=slurm/sweep-cpu.sbatch
SWEEP=optimizers SIZE=tiny          # the array: 8 runs of 2 epochs
ENTRY=tests/slurm/resume-sweep.json # one run of 4 epochs, for the cancel and duplicate checks
TIMEOUT=600                         # seconds any one job may take before the test gives up
begun=$(date +%s.%N)
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
failures=()

fail() { failures+=("$*"); echo "FAILED: $*"; }
since() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
as_munge() { if [ -z "$sudo" ]; then runuser -u munge -- "$@"; else sudo -u munge "$@"; fi; }

# --------------------------------------------------------------------------
# The cluster: one node, this machine
# --------------------------------------------------------------------------

install_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    local started=$SECONDS
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null || return 1
    echo "slurm and munge installed in $((SECONDS - started)) s"
}

write_slurm_conf() {
    local host node_addr="" ports
    host=$(hostname -s)
    # slurmd finds its node by this name; a name that does not resolve needs an address.
    getent hosts "$host" >/dev/null || node_addr="NodeAddr=127.0.0.1"
    ports=$("$PY" -c "
import socket
held = [socket.socket() for _ in range(2)]
for s in held: s.bind(('', 0))
print(*(s.getsockname()[1] for s in held))")
    read -r ctld_port slurmd_port <<<"$ports"
    # The node as slurmd sees it (CPUs, cores, RealMemory): more memory than that drains it.
    local node
    node=$(slurmd -C | head -1)
    cat >"$STATE/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host${node_addr:+(127.0.0.1)}
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/socket
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
$node $node_addr State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    $sudo mkdir -p "$STATE/munge"
    $sudo chown munge: "$STATE/munge"
    $sudo chmod 755 "$STATE/munge"   # sbatch and srun, run as the user, reach its socket
    # munged refuses to run as root; its own key, so that nothing of the machine's munge is used.
    as_munge mungekey --create --keyfile="$STATE/munge/key" || return 1
    as_munge munged --socket="$STATE/munge/socket" --key-file="$STATE/munge/key" \
        --pid-file="$STATE/munge/pid" --log-file="$STATE/munge/log" --seed-file="$STATE/munge/seed"
}

start_slurm() {
    $sudo mkdir -p "$STATE/slurmctld" "$STATE/slurmd"
    $sudo slurmctld -f "$SLURM_CONF" || return 1
    $sudo slurmd -f "$SLURM_CONF" -N "$(hostname -s)" || return 1
    local deadline=$((SECONDS + 60))
    until timeout 20 srun --quiet --time=1 hostname >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

stop_pid_file() {  # the daemon whose pid the file holds: TERM, then KILL after 10 s
    local file=$1 pid
    pid=$($sudo cat "$file" 2>/dev/null) || return 0
    $sudo kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do $sudo kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    $sudo kill -KILL "$pid" 2>/dev/null
}

# Processes of this cluster's jobs carry its name in their environment (another
# cluster on this machine, another run of this test, numbers its jobs the same way).
cluster_processes() { grep -lsxz "SLURM_CLUSTER_NAME=$CLUSTER" /proc/[0-9]*/environ | cut -d/ -f3; }
job_processes() {  # JOB
    local pid
    for pid in $(cluster_processes); do
        grep -qsxz "SLURM_ARRAY_JOB_ID=$1" "/proc/$pid/environ" && echo "$pid"
    done
}

stop_everything() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "${STATE:-}" ]; then
        if [ -f "$STATE/slurmctld.pid" ]; then
            scancel --user="$(id -un)" 2>/dev/null
            for _ in $(seq 50); do cluster_processes | grep -q . || break; sleep 0.2; done
            for pid in $(cluster_processes); do $sudo kill -KILL "$pid" 2>/dev/null; done
        fi
        stop_pid_file "$STATE/slurmd.pid"
        stop_pid_file "$STATE/slurmctld.pid"
        stop_pid_file "$STATE/munge/pid"
        if [ ${#failures[@]} -gt 0 ] || [ $status -ne 0 ]; then
            for log in slurmctld.log slurmd.log munge/log; do
                echo "--- the end of $log"; $sudo tail -5 "$STATE/$log" 2>/dev/null
            done
        fi
        if [ -n "${SLURM_TEST_KEEP:-}" ]; then
            echo "kept: $STATE"
        else
            $sudo rm -rf "$STATE"
        fi
    fi
    if [ ${#failures[@]} -gt 0 ]; then
        echo "slurm test: ${#failures[@]} checks failed:"
        printf '  %s\n' "${failures[@]}"
        status=1
    fi
    exit $status
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------

submit() {  # submit NAME [sbatch options --] sweep arguments: prints the job id
    local name=$1 options=()
    shift
    if [[ " $* " == *" -- "* ]]; then
        while [ "$1" != -- ]; do options+=("$1"); shift; done
        shift
    fi
    sbatch --parsable --job-name="$name" --output="$WORK/out/$name-%A_%a.out" "${options[@]}" \
        "$SCRIPT" "$@" --data-dir "$WORK/data"
}

wait_for() {  # wait_for JOB: until it has left the queue and its last process has ended
    local id=$1 deadline=$((SECONDS + TIMEOUT))
    while squeue -h -j "$id" -o %i 2>/dev/null | grep -q .; do
        [ $SECONDS -lt $deadline ] || { fail "job $id still queued or running after $TIMEOUT s"; return 1; }
        sleep 0.5
    done
    # After scancel, linuxproc may report a task done a moment before its process exits.
    local left=$SECONDS
    while job_processes "$id" | grep -q .; do
        [ $SECONDS -lt $deadline ] || { fail "job $id left processes running"; return 1; }
        sleep 0.2
    done
    [ $((SECONDS - left)) -lt 2 ] || echo "job $id: its processes ended $((SECONDS - left)) s after it left the queue"
}

states() { squeue -h -t all -j "$1" -o "%T" | sort | uniq -c | xargs; }

expect_completed() {  # expect_completed JOB WHAT: every task of the job ended with exit code 0
    local not_done first
    not_done=$(squeue -h -t all -j "$1" -o "%i %T" | grep -v " COMPLETED$" | sort)
    [ -z "$not_done" ] && return
    fail "$2: tasks not COMPLETED: $(echo "$not_done" | xargs)"
    first=$(echo "$not_done" | head -1 | cut -d' ' -f1)
    echo "--- the end of task $first's output"
    tail -8 "$WORK"/out/*-"$first".out
}

check() {  # check WHAT -- check_runs.py arguments
    local what=$1 problems
    shift 2
    problems=$("$PY" tests/slurm/check_runs.py "$@" 2>&1) || fail "$what: ${problems//$'\n'/; }"
}

cancel_after_first_checkpoint() {  # JOB ENTRY_FOLDER [JOB ENTRY_FOLDER ...]
    local -A folder_of=()
    while [ $# -gt 0 ]; do folder_of[$1]=$2; shift 2; done
    local waiting=("${!folder_of[@]}") deadline=$((SECONDS + TIMEOUT)) id
    # Each job is cancelled as soon as its run has a checkpoint, before it can finish.
    while [ ${#waiting[@]} -gt 0 ]; do
        local still=()
        for id in "${waiting[@]}"; do
            if [ -f "${folder_of[$id]}/run/checkpoint.pt" ]; then
                scancel "$id"
            elif ! squeue -h -j "$id" -o %i 2>/dev/null | grep -q .; then
                fail "job $id ended before its first checkpoint"
            elif [ $SECONDS -ge $deadline ]; then
                fail "no checkpoint from job $id after $TIMEOUT s"
            else
                still+=("$id")
            fi
        done
        waiting=("${still[@]}")
        sleep 0.1
    done
    for id in "${!folder_of[@]}"; do wait_for "$id"; done
}

epochs_in() { [ -f "$1/history.csv" ] && echo $(($(wc -l <"$1/history.csv") - 1)) || echo 0; }  # a header, then one line per epoch

last_epoch() {  # "epoch N: train loss L, test accuracy A%" from a run folder's history.csv
    awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) col[$i] = i; next}
             END {print "epoch " $col["epoch"] ": train loss " $col["train_loss"] ", test accuracy " $col["test_acc"] "%"}' \
        "$1/history.csv" 2>/dev/null
}

output_of() { cat "$WORK"/out/"$1"-*.out 2>/dev/null; }

# --------------------------------------------------------------------------
# 1. A working cluster
# --------------------------------------------------------------------------
install_slurm || { fail "could not install slurmctld, slurmd, slurm-client and munge"; exit 1; }
STATE=$(mktemp -d "${TMPDIR:-/tmp}/slurm-test.XXXXXX")
chmod 755 "$STATE"                     # munged, run as munge, reaches its folder inside
CLUSTER=nbtest$$
export SLURM_CONF=$STATE/slurm.conf
WORK=$STATE/work                       # what the jobs write, as the user who submits them
mkdir -p "$WORK/out"
write_slurm_conf
start_munge || { fail "munged did not start"; exit 1; }
start_slurm || { fail "no working srun hostname within 60 s"; exit 1; }
echo "seconds from nothing to a working srun hostname: $(since "$begun") ($(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'))"

# --------------------------------------------------------------------------
# 2-3. The sweep as a job array: every run finishes once, in the README's folders
# --------------------------------------------------------------------------
"$PY" -c "import sys; from nbhelpers.data import write_synthetic_cifar10
write_synthetic_cifar10(sys.argv[1], train_per_class=100, test_per_class=50)" "$WORK/data" \
    || { fail "could not write the synthetic data"; exit 1; }
entries=$("$PY" -m nbhelpers.jobs.sweep $SWEEP --size $SIZE --folder "$WORK/array" --list | wc -l)
submitted=$(date +%s.%N)
array=$(submit array --array=0-$((entries - 1)) -- $SWEEP --size $SIZE --folder "$WORK/array") \
    || { fail "sbatch refused $SCRIPT"; exit 1; }
wait_for "$array"
echo "array of $entries runs ($SWEEP, $SIZE): $(since "$submitted") s wall ($(states "$array"))"
expect_completed "$array" "the array"
check "the array's runs" -- array $SWEEP $SIZE "$WORK/array" 1

# --------------------------------------------------------------------------
# 4. Cancelled after its first checkpoint, submitted again: the numbers of an uninterrupted run
# --------------------------------------------------------------------------
read -r entry entry_epochs < <("$PY" -c "import json, sys
[(name, parameters)] = json.load(open(sys.argv[1])).items()
print(name, parameters['num_epochs'])" "$ENTRY")
same=$(submit cancelled-same --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/same")
more=$(submit cancelled-more --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/more")
cancel_after_first_checkpoint "$same" "$WORK/same/$entry" "$more" "$WORK/more/$entry"
epochs_same=$(epochs_in "$WORK/same/$entry/run")
epochs_more=$(epochs_in "$WORK/more/$entry/run")
for epochs in "$epochs_same" "$epochs_more"; do
    [ "$epochs" -lt "$entry_epochs" ] || fail "a run of $entry_epochs epochs finished before it could be cancelled"
done
resubmitted=$(date +%s.%N)
# Submitted again, not requeued: a requeued task waits about 120 s before it starts again.
same=$(submit resumed-same --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/same")
reference=$(submit reference --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/reference")
wait_for "$same"
echo "cancelled after epoch $epochs_same, resumed on 1 CPU: finished $(since "$resubmitted") s after it was submitted again"
more=$(submit resumed-more --array=0 --cpus-per-task=2 -- "$ENTRY" --size $SIZE --folder "$WORK/more")
wait_for "$reference"
wait_for "$more"
echo "cancelled after epoch $epochs_more, resumed on 2 CPUs: all done $(since "$resubmitted") s after the resubmissions"
for job in "$same" "$more" "$reference"; do expect_completed "$job" "job $job"; done
check "the cancelled runs, resumed" -- resumed "$ENTRY" $SIZE "$WORK/reference" "$WORK/same" "$WORK/more"
echo "  uninterrupted:            $(last_epoch "$WORK/reference/$entry/run")"
echo "  resumed on 1 CPU:         $(last_epoch "$WORK/same/$entry/run")"
echo "  begun on 1, resumed on 2: $(last_epoch "$WORK/more/$entry/run")"

# --------------------------------------------------------------------------
# 5. The same entry submitted twice: one copy trains, the other leaves it alone
# --------------------------------------------------------------------------
first=$(submit copy-1 --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/twice")
sleep 1
second=$(submit copy-2 --array=0 -- "$ENTRY" --size $SIZE --folder "$WORK/twice")
wait_for "$first"
wait_for "$second"
expect_completed "$first" "the first copy"
expect_completed "$second" "the second copy"
elsewhere=$(cat "$WORK"/out/copy-*.out 2>/dev/null | grep -c "running elsewhere")
[ "$elsewhere" = 1 ] || fail "two copies of one entry: $elsewhere lines say 'running elsewhere', not 1"
output_of copy-1 | grep -q "running elsewhere" && skipped=copy-1 trained=copy-2 || skipped=copy-2 trained=copy-1
[ "$(output_of $skipped | wc -l)" = 1 ] || fail "the copy that did not train printed more than one line: $(output_of $skipped | head -3 | xargs)"
echo "two copies a second apart: $trained trained; $skipped said: $(output_of $skipped | head -1)"
echo "  the copy that trained:    $(last_epoch "$WORK/twice/$entry/run")"
check "the entry submitted twice" -- duplicate "$ENTRY" $SIZE "$WORK/twice" "$WORK/reference"

echo "slurm test: $(since "$begun") s in all"
