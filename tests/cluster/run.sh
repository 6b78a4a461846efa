#!/usr/bin/env bash
# `make test-cluster`: the demo campaign through a real SLURM, checked against a local run, and a
# tiled reconstruction whose Dask workers are SLURM jobs, checked against a LocalCluster's.
#
# Installs SLURM and MUNGE from Debian's packages where missing, starts a private single-node
# cluster on localhost, runs the demo with `--workflow-profile workflow/profiles/slurm` and with
# the local default profile, each from its own folder with the README's commands in a clean
# environment, then one series' tiles with
# `dask.scheduler: slurm` and `local`, and checks (tests/cluster/check.py) that every job of the
# SLURM run went through SLURM, that both runs published the same release, that the Dask workers
# ran as SLURM jobs and that both tiled results are equal.
#
# The cluster is private: its config, MUNGE key and socket, ports, state and logs live in one
# temporary folder, so a SLURM or MUNGE already on the machine is neither used nor changed. The
# daemons it starts are stopped on exit, however the script ends. Without root (needed to install
# the packages and to run slurmd) it skips with a message and exit status 0.
#
# Arguments are added to both snakemake commands; to converge every fit, say:
#   tests/cluster/run.sh --configfile config.yaml /abs/path/auto.yaml   (auto.yaml: "reconstruction: {iterations: auto}")
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH"
START=$SECONDS

skip() {
    echo "test-cluster: SKIPPED: $*"
    exit 0
}

missing_commands() {
    local cmd
    for cmd in slurmctld slurmd sbatch squeue scancel sinfo munged mungekey; do
        command -v "$cmd" > /dev/null || echo "$cmd"
    done
}

install_slurm() {
    command -v apt-get > /dev/null || skip "SLURM is not installed and there is no apt-get to install it"
    echo "test-cluster: installing slurm-wlm and munge"
    # Debian's maintainer scripts would start the packages' own daemons with the system-wide
    # config; a policy-rc.d answering 101 forbids that. One the machine has already is kept.
    local policy=/usr/sbin/policy-rc.d created="" status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        created=1
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        > /tmp/phasepipe-test-cluster-apt.log 2>&1 || status=$?
    [[ -n $created ]] && rm -f "$policy"
    if ((status != 0)); then
        tail -20 /tmp/phasepipe-test-cluster-apt.log
        echo "test-cluster: FAILED: apt-get install slurm-wlm munge (log: /tmp/phasepipe-test-cluster-apt.log)"
        exit 1
    fi
}

if [[ $(id -u) != 0 ]]; then
    skip "needs root, to install slurm-wlm and munge and to run slurmd (run as root, e.g. in a CI container)"
fi
if [[ -n $(missing_commands) ]]; then
    install_slurm
    [[ -z $(missing_commands) ]] || { echo "test-cluster: FAILED: still missing: $(missing_commands)"; exit 1; }
fi

RUN=$(mktemp -d /tmp/phasepipe-test-cluster.XXXXXX)
chmod 755 "$RUN" # MUNGE's socket must be reachable by every user
PIDS=()

stop_cluster() {
    local status=$? pid
    trap - EXIT INT TERM
    if ((${#PIDS[@]} > 1)); then # slurmctld is up: cancel what may still run, let it end
        scancel --user "$(id -un)" 2> /dev/null || true
        for _ in $(seq 30); do
            [[ -z $(squeue --noheader --states=PENDING,RUNNING,COMPLETING 2> /dev/null) ]] && break
            sleep 1
        done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do # in reverse order of starting
        pid=${PIDS[i]}
        kill "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    done
    ((${#PIDS[@]})) && echo "test-cluster: stopped the daemons it started (pids ${PIDS[*]})"
    if ((status == 0)); then
        rm -rf "$RUN"
    else
        echo "test-cluster: FAILED; configs, logs and both runs are kept in $RUN"
    fi
    exit "$status"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" && return 0
        sleep 1
    done
    echo "test-cluster: $what did not happen within $seconds s; logs in $RUN/log"
    tail -n 20 "$RUN"/log/* || true
    return 1
}

# --- MUNGE: slurmctld, slurmd and the client commands authenticate each other with its key.
mkdir -p "$RUN/munge" "$RUN/munge-key" "$RUN/log" "$RUN/state" "$RUN/spool"
chmod 700 "$RUN/munge-key"
mungekey --create --keyfile "$RUN/munge-key/munge.key"
munged --foreground --socket "$RUN/munge/munge.socket" --key-file "$RUN/munge-key/munge.key" \
    --pid-file "$RUN/munge/munged.pid" --seed-file "$RUN/munge/munged.seed" \
    --log-file "$RUN/log/munged.log" > "$RUN/log/munged.out" 2>&1 &
PIDS+=($!)
wait_for 30 "munged's socket" test -S "$RUN/munge/munge.socket"

# --- slurm.conf: this node as it is (slurmd -C: CPUs, sockets, memory), on free ports.
NODE_LINE=$(slurmd -C | head -n 1) # "NodeName=<host> CPUs=... RealMemory=..."
NODE=${NODE_LINE%% *}
NODE=${NODE#NodeName=}
read -r CTLD_PORT SLURMD_PORT < <(python -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
: > "$RUN/plugstack.conf" # no SPANK plugins; the system's plugstack.conf is not ours to read
export SLURM_CONF=$RUN/slurm.conf # every SLURM command below, and the jobs, use this cluster
cat > "$SLURM_CONF" << EOF
ClusterName=phasepipe-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$RUN/munge/munge.socket
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
PlugStackConfig=$RUN/plugstack.conf
# no cgroups (containers seldom delegate them) and no accounting database
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# without accounting, finished jobs are known only while slurmctld keeps them: for 10 minutes,
# long enough for the plugin's squeue status command (it needs >= 3 status check intervals)
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
# The partition the README's cluster command names; no accounting database checks its account.
PartitionName=standard Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# Inside a job the plugin runs each rule through `srun` with every SLURM_* variable removed,
# SLURM_CONF too: a real cluster's srun finds its config at the compiled-in path. This one's is
# given by an srun first on the jobs' PATH.
mkdir -p "$RUN/bin"
printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$(command -v srun)" > "$RUN/bin/srun"
chmod 755 "$RUN/bin/srun"
export PATH="$RUN/bin:$PATH"

slurmctld -D -f "$SLURM_CONF" > "$RUN/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" -N "$NODE" > "$RUN/log/slurmd.out" 2>&1 &
PIDS+=($!)
node_idle() { [[ $(sinfo --noheader --nodes "$NODE" --format %t 2> /dev/null) == idle ]]; }
wait_for 60 "node $NODE idle" node_idle
echo "test-cluster: SLURM up on $NODE ($NODE_LINE), ports $CTLD_PORT/$SLURMD_PORT, in $RUN"

# --- A campaign, as the README's "Your own data" keeps one: a folder outside the checkout with
# the images and their sheet (the demo's simulated series), and each run's own folder with a
# config.yaml naming the sheet relative to itself. Both runs use the README's commands as written
# (the local one and, in "Clusters", the SLURM one), in a clean environment: no virtual
# environment and no phasepipe on PATH, only SLURM's commands and this cluster's SLURM_CONF. The
# test is about the execution, not convergence: every fit stops after 60 iterations (a demo
# series' auto fit takes 1000-2000); arguments to this script are added to both commands.
phasepipe simulate --demo "$RUN/campaign/raw" > "$RUN/log/simulate.log" 2>&1
CLEAN=(env -i HOME="$HOME" PATH="$RUN/bin:/usr/bin:/bin" SLURM_CONF="$SLURM_CONF")
if "${CLEAN[@]}" bash -c 'command -v phasepipe'; then
    echo "test-cluster: FAILED: the clean environment has a phasepipe on its PATH"
    exit 1
fi
for run in local slurm; do
    mkdir -p "$RUN/$run"
    printf 'campaign: cluster-test\nseries_sheet: ../campaign/raw/series.tsv\nreconstruction:\n  iterations: 60\n' \
        > "$RUN/$run/config.yaml"
done
LOCAL_COMMAND=$(python "$ROOT/tests/doc_text.py" "Your own data")
SLURM_COMMAND=$(python "$ROOT/tests/doc_text.py" "Clusters")
echo "test-cluster: local run: $LOCAL_COMMAND $* (log: $RUN/local/snakemake.log)"
T0=$SECONDS
(cd "$RUN/local" && "${CLEAN[@]}" bash -c "$LOCAL_COMMAND $*" > snakemake.log 2>&1) ||
    { tail -30 "$RUN/local/snakemake.log"; exit 1; }
echo "test-cluster: local run done in $((SECONDS - T0)) s; SLURM run: $SLURM_COMMAND $* (log: $RUN/slurm/snakemake.log)"
T0=$SECONDS
# The executor's settings for a cluster without an accounting database: squeue instead of sacct,
# and the first status check after 5 s instead of 40, the demo's jobs being short.
(cd "$RUN/slurm" && "${CLEAN[@]}" bash -c "$SLURM_COMMAND --slurm-status-command squeue \
    --slurm-init-seconds-before-status-checks 5 $*" > snakemake.log 2>&1) ||
    { tail -30 "$RUN/slurm/snakemake.log"; exit 1; }
echo "test-cluster: SLURM run done in $((SECONDS - T0)) s"

# What SLURM remembers of the jobs it ran (MinJobAge): id, state, and the rule in the comment.
squeue --noheader --states=all --format '%i|%T|%k' > "$RUN/squeue.txt"

# --- Dask on SLURM: one demo series' aligned store reconstructed in tiles of 64 px (16 tiles and
# the binned field), once on a LocalCluster and once with dask.scheduler slurm, from this host as
# from a login node. Two worker jobs of one core fill the node; their workers retire after
# 15 +- 3 s (walltime 1 min), within the run, so that fresh jobs must take over: 500 iterations
# per tile keep the run longer than that (120 were once too short for a renewal; the measured
# times are in docs/performance.md).
DASK_SERIES=s02_skyrmions
ALIGNED=$RUN/local/results/work/aligned/$DASK_SERIES.zarr
SETTINGS='{"refine": ["defocus"], "iterations": 500, "tile_px": 64, "halo_px": "auto", "tv_weight": "auto", "device": "cpu"}'
mkdir -p "$RUN/dask"
for scheduler in local slurm; do
    case $scheduler in
        local) dask='{"scheduler": "local"}' threads=2 ;;
        slurm) dask='{"scheduler": "slurm", "slurm": {"jobs": 2, "walltime": "00:01:00", "lifetime": "00:00:15",
                   "start_timeout_s": 120}}' threads=1 ;;
    esac
    echo "test-cluster: $DASK_SERIES in tiles with dask.scheduler $scheduler (log: $RUN/dask/$scheduler.log)"
    T0=$SECONDS
    # A departed worker's job is renewed once Dask has given it up: after 5 s here, not 15.
    DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT=5s phasepipe reconstruct --in "$ALIGNED" --out "$RUN/dask/$scheduler.zarr" --settings "$SETTINGS" --dask "$dask" \
        --records "$RUN/dask/$scheduler-tiles" --threads "$threads" > "$RUN/dask/$scheduler.log" 2>&1 ||
        { tail -30 "$RUN/dask/$scheduler.log"; exit 1; }
    echo "test-cluster: done in $((SECONDS - T0)) s"
done
squeue --noheader --states=all --name "phasepipe-$DASK_SERIES" --format '%i|%j|%T|%M' > "$RUN/dask/squeue.txt"

python "$ROOT/tests/cluster/check.py" "$RUN"
echo "test-cluster: PASSED in $((SECONDS - START)) s"
