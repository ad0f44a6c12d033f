#!/usr/bin/env bash
# Runs one experiment on Slurm GPU nodes: one process (task) per GPU, all joined into one run
# by `--distributed` (jax.distributed.initialize() reads the Slurm environment).
#
#   sbatch launch/gpu_slurm.sh CONFIG WORKDIR [--config.x=y ...]
#   sbatch --nodes=4 --time=24:00:00 launch/gpu_slurm.sh configs/lm_seqpe.py:paper /shared/runs/lm
#   launch/gpu_slurm.sh --dry-run CONFIG WORKDIR [--config.x=y ...]   (prints the srun command)
#
# Size the job on the sbatch command line, which overrides this file's #SBATCH lines:
# --nodes=N for N nodes; on nodes with G GPUs instead of 8, --ntasks-per-node=G
# --gpus-per-node=G (one task per GPU: each process drives the GPU numbered SLURM_LOCALID).
# The checkout, the Python environment and WORKDIR must be visible from every node (a shared
# filesystem, or a gs:// WORKDIR); relative paths are taken from where sbatch was run.
# Slurm sends SIGTERM 120 s before the time limit (--signal) and when it preempts the job; the
# run then saves a checkpoint and exits 143, and this script requeues the job (same job id,
# output appended to slurm-JOBID.out), which resumes from that checkpoint.
# Environment: PYTHON (default python3), an interpreter with the requirements and a CUDA jax
# (e.g. `pip install -r requirements.txt "jax[cuda13]"`); sbatch passes it on.
#SBATCH --job-name=seqpe_jax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -euo pipefail

# launch/cli.sh's helpers, copied: sbatch runs this file from a spool directory, where
# cli.sh is not beside it (the checkout is found only further down).
usage() { sed -n '2,/^[^#]/{/^#/!d; /^#SBATCH/d; s/^# \{0,1\}//; p}' "$0"; }
fail() { echo "gpu_slurm.sh: $*" >&2; exit 2; }
# Shell-quotes words into one command line, single-quoting only the words that need it.
quoted() {
  local words=() word
  for word; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then words+=("$word")
    else words+=("${word@Q}"); fi
  done
  echo "${words[*]}"
}

dry_run=0
args=()
for arg in "$@"; do
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    *) args+=("$arg") ;;
  esac
done
[ ${#args[@]} -ge 2 ] || fail "expected CONFIG WORKDIR [--config.x=y ...] (see --help)."
config=${args[0]} workdir=${args[1]}
overrides=("${args[@]:2}")
[[ $config != -* ]] || fail "expected CONFIG first, not the option '$config'."
[[ $workdir != -* ]] || fail "expected WORKDIR after CONFIG, not the option '$workdir'."
if [ "$dry_run" = 0 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
  fail "this runs inside a Slurm job: submit it with sbatch (or use --dry-run)."
fi

# sbatch runs a copy of this script from Slurm's spool directory, so inside a job its own
# path does not lead back to the checkout: try the path the job was submitted with, then the
# directory it was submitted from.
caller=$PWD
candidates=("$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)")
if [ -n "${SLURM_JOB_ID:-}" ]; then
  job_info=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null || true)
  submitted=$(sed -n 's/^ *Command=\([^ ]*\).*/\1/p' <<<"$job_info")
  [[ -z $submitted || $submitted == /* ]] || submitted=${SLURM_SUBMIT_DIR:-$caller}/$submitted
  [ -z "$submitted" ] || candidates+=("$(dirname "$submitted")/..")
  candidates+=("${SLURM_SUBMIT_DIR:-$caller}")
fi
repo=''
for dir in "${candidates[@]}"; do
  if [ -f "$dir/seqpe_jax/main.py" ]; then repo=$(cd "$dir" && pwd); break; fi
done
[ -n "$repo" ] || fail "cannot find the seqpe_jax checkout; run sbatch from its root."
cd "$repo"
if [[ ! $workdir =~ ^[A-Za-z][A-Za-z0-9+.-]*:// && $workdir != /* ]]; then
  workdir=$caller/$workdir
fi
config_file=${config%%:*}
if [[ $config_file != /* && ! -f $config_file && -f $caller/$config_file ]]; then
  config=$caller/$config
fi

cmd=(srun "${PYTHON:-python3}" -u -m seqpe_jax.main --distributed "--config=$config"
     "--workdir=$workdir" "${overrides[@]}")
if [ "$dry_run" = 1 ]; then
  quoted "${cmd[@]}"
  exit 0
fi

# Preemption signals this shell too: outlive it, to requeue once the processes have saved.
trap 'echo "gpu_slurm.sh: SIGTERM; waiting for the processes to save a checkpoint." >&2' TERM
echo "gpu_slurm.sh: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}: $(quoted "${cmd[@]}")" >&2
status=0
"${cmd[@]}" || status=$?
if [ "$status" = 143 ]; then
  if [[ $(scontrol show job "$SLURM_JOB_ID" 2>/dev/null || true) == *Requeue=1* ]]; then
    echo "gpu_slurm.sh: preempted after a checkpoint; requeueing job $SLURM_JOB_ID." >&2
    # A failure here may mean Slurm is requeueing it already (PreemptMode=REQUEUE).
    scontrol requeue "$SLURM_JOB_ID" ||
      echo "gpu_slurm.sh: scontrol requeue failed; if the job does not return, submit it again." >&2
  else
    echo "gpu_slurm.sh: preempted after a checkpoint; submit the same job again to resume." >&2
  fi
fi
exit "$status"
