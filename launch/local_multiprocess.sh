#!/usr/bin/env bash
# Runs one experiment as NUM_PROCESSES processes of seqpe_jax.main on this host, joined over
# loopback and on CPU: a multi-host run (sharding, checkpoints, preemption) without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...]
#   launch/local_multiprocess.sh 2 configs/vit_seqpe.py:smoke /tmp/runs/vit --config.pe.name=rope
#
# Process I logs to WORKDIR/logs/process_I.log (appended, so a resumed run keeps the earlier
# part), and process 0's output is also shown here as it comes (GNU tail). The PIDs go to
# WORKDIR/logs/pids, one a line. SIGTERM, SIGINT or SIGHUP to this
# script reaches every process (SIGHUP as SIGTERM). It exits 0 when every process does, else
# with the status of the first one that failed: 2 bad input, 130 Ctrl-C or 143 preempted after
# saving a checkpoint (run the same command again to resume). WORKDIR must be a local directory;
# relative CONFIG and WORKDIR paths are taken from the directory this is run from.
# --dry-run prints the commands, one a line and quoted for pasting, and starts nothing.
#
# Environment: DEVICES_PER_PROCESS fake CPU devices each (default 4); PORT of the coordinator
# (default a free one); PYTHON (default python3); XLA_FLAGS (kept, with the device count
# replaced); SEQPE_LAUNCH_MODULE (default seqpe_jax.main; the tests start a stand-in).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/cli.sh"
parse_options "$@"
if [ ${#args[@]} -lt 3 ]; then
  fail "expected NUM_PROCESSES CONFIG WORKDIR [--config.x=y ...] (see --help)."
fi
num=${args[0]} config=${args[1]} workdir=${args[2]}
overrides=("${args[@]:3}")
[[ $num =~ ^[1-9][0-9]*$ ]] || fail "NUM_PROCESSES must be a positive integer, not '$num'."
[[ $config != -* ]] || fail "expected CONFIG after NUM_PROCESSES, not the option '$config'."
[[ $workdir != -* ]] || fail "expected WORKDIR after CONFIG, not the option '$workdir'."
if [[ $workdir =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
  fail "WORKDIR must be a local directory (the processes' logs go there), not '$workdir'."
fi
devices=${DEVICES_PER_PROCESS:-4}
if [[ ! $devices =~ ^[1-9][0-9]*$ ]]; then
  fail "DEVICES_PER_PROCESS must be a positive integer, not '$devices'."
fi
python=${PYTHON:-python3}
module=${SEQPE_LAUNCH_MODULE:-seqpe_jax.main}

# `python -m seqpe_jax.main` needs the repository root as its directory; the caller's relative
# paths are made absolute first (a config path stays as it is if the repository has it).
caller=$PWD
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[[ $workdir == /* ]] || workdir=$caller/$workdir
config_file=${config%%:*}
if [[ $config_file != /* && ! -f $config_file && -f $caller/$config_file ]]; then
  config=$caller/$config
fi

if [ -n "${PORT:-}" ]; then
  [[ $PORT =~ ^[1-9][0-9]*$ ]] || fail "PORT must be a port number, not '$PORT'."
  port=$PORT
else
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
read -ra xla_flags <<<"${XLA_FLAGS:-}"
kept=()
for flag in "${xla_flags[@]}"; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || kept+=("$flag")
done
kept+=("--xla_force_host_platform_device_count=$devices")

command_for() {  # The command of process $1, in the array `cmd`.
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=${kept[*]}" JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
       "$python" -u -m "$module" "--config=$config" "--workdir=$workdir" "${overrides[@]}"
       "--coordinator_address=127.0.0.1:$port" "--num_processes=$num" "--process_id=$1")
}

if [ "$dry_run" = 1 ]; then
  for ((i = 0; i < num; i++)); do
    command_for "$i"
    quoted "${cmd[@]}"
  done
  exit 0
fi

logs=$workdir/logs
mkdir -p "$logs"
rm -f "$logs/pids"  # A test waiting for this file must not read an earlier run's PIDs.

# Job control gives each process its own process group: a Ctrl-C in the terminal reaches only
# this script, which passes it on once, and the processes do not ignore SIGINT as the
# background jobs of a script otherwise do.
set -m
pids=()
received=''
forward() {
  received=$1
  kill -s "$1" "${pids[@]}" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward TERM' HUP  # The terminal went away: save and stop rather than die unsaved.
shown=$(( $(stat -c %s "$logs/process_0.log" 2>/dev/null || echo 0) + 1 ))  # This run's part.
for ((i = 0; i < num; i++)); do
  command_for "$i"
  "${cmd[@]}" >>"$logs/process_$i.log" 2>&1 </dev/null &
  pids+=("$!")
done
# Ends by itself within a second of process 0 (and is not sent the signals passed on below).
tail -c "+$shown" -f --pid="${pids[0]}" "$logs/process_0.log" &
tail_pid=$!
[ -z "$received" ] || forward "$received"  # A signal that came while they were starting.
printf '%s\n' "${pids[@]}" >"$logs/pids.tmp"
mv "$logs/pids.tmp" "$logs/pids"

# The first process to fail, in time, sets the status; polling finds it without bash 5.1's
# `wait -n -p`.
status=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  for i in "${!running[@]}"; do
    pid=${running[$i]}
    if kill -0 "$pid" 2>/dev/null; then continue; fi
    rc=0
    wait "$pid" || rc=$?
    unset 'running[i]'
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      echo "local_multiprocess.sh: process $i exited with status $rc; see $logs/process_$i.log" >&2
    fi
  done
  if [ ${#running[@]} -gt 0 ]; then
    sleep 0.2 &
    wait $! || true  # A builtin wait: a signal runs its trap at once.
  fi
done
wait "$tail_pid" 2>/dev/null || true  # Process 0's last lines.
exit "$status"
