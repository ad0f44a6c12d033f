#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/vit_seqpe.py:paper gs://BUCKET/runs/vit_seqpe
#
# Replaces ~/seqpe_jax on every worker with this checkout's files (`git ls-files`, tracked and
# untracked-but-not-ignored, less results/, workdirs/ and virtualenvs), installs the
# requirements with the TPU build of JAX, and starts `python -m seqpe_jax.main --distributed`
# on every worker (jax.distributed.initialize() finds the pod's hosts by itself), detached
# from ssh so a dropped connection does not stop it. It refuses to replace the checkout under
# a run that is still going; `pkill -TERM -f 'seqpe_jax[.]main'` on every worker stops one
# after a checkpoint (exit status 143: launch the same command again to resume).
# WORKDIR must be a gs:// URL: a local path would split the run across the workers' disks.
# Worker N logs to ~/seqpe_jax_logs/RUN.log (RUN: WORKDIR's last part) and copies it to
# WORKDIR/logs/worker_N.log when the run ends; the script prints how to follow the log.
# --dry-run prints the gcloud commands, one a line and quoted for pasting, and runs nothing.
# Environment: PYTHON, the workers' interpreter (default python3, which needs Python >= 3.11);
# gcloud's own settings, e.g. CLOUDSDK_CORE_PROJECT.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/cli.sh"
parse_options "$@"
if [ ${#args[@]} -lt 4 ]; then
  fail "expected TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...] (see --help)."
fi
tpu=${args[0]} zone=${args[1]} config=${args[2]} workdir=${args[3]%/}
overrides=("${args[@]:4}")
for value in "$tpu" "$zone" "$config"; do
  [[ $value != -* ]] || fail "expected TPU_NAME ZONE CONFIG WORKDIR first, not '$value'."
done
if [[ $workdir != gs://?* ]]; then
  fail "WORKDIR must be a gs:// URL that every worker shares, not '${args[3]}'."
fi
python=${PYTHON:-python3}
run=${workdir##*/}
# shellcheck disable=SC2088  # The workers' shell expands this ~, not this one.
log="~/seqpe_jax_logs/$(printf %q "$run").log"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$dry_run" = 1 ]; then
  bundle=${TMPDIR:-/tmp}/seqpe_jax_bundle.XXXXXXXXXX/seqpe_jax.tar.gz  # mktemp's name.
else
  command -v gcloud >/dev/null || fail "gcloud is not installed (https://cloud.google.com/sdk)."
  git -C "$repo" rev-parse 2>/dev/null || fail "$repo is not a git checkout (git lists the files)."
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/seqpe_jax_bundle.XXXXXXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  bundle=$tmp/seqpe_jax.tar.gz
  # Deleted-but-tracked files are skipped; results and environments stay home.
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do
       case /$f in /results/* | /workdirs/* | */.venv/* | */venv/*) continue ;; esac
       if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
     done |
     tar -czf "$bundle" --null -T -)
fi

# What every worker runs: a fresh copy of the checkout (unless a run still uses the old one),
# then the requirements. One line, so that --dry-run prints one line per command.
setup="if pgrep -f 'seqpe_jax[.]main' >/dev/null; then"
setup+=" echo \"\$(hostname): a run is still going in ~/seqpe_jax; stop it first.\" >&2;"
setup+=" exit 1; fi;"
setup+=" rm -rf ~/seqpe_jax && mkdir ~/seqpe_jax && tar -xzf ~/seqpe_jax.tar.gz -C ~/seqpe_jax"
setup+=" && rm ~/seqpe_jax.tar.gz && cd ~/seqpe_jax"
setup+=" && $(quoted "$python" -m pip install -q -r requirements.txt 'jax[tpu]' \
  tensorflow-datasets)"  # The paper configs read ImageNet with tensorflow-datasets.
# The run itself, in its own session (setsid) with its output in a file, so that ssh returns at
# once and hanging up does not stop it; when it ends its log goes next to the run.
metadata=http://metadata.google.internal/computeMetadata/v1/instance/attributes
# (Backslashes quote this innermost level, so the two levels of quotes around it stay legible.)
job="$(printf '%q ' "$python" -u -m seqpe_jax.main --distributed "--config=$config" \
  "--workdir=$workdir" "${overrides[@]}"); status=\$? ;"
job+=" echo \"tpu_pod.sh: exit status \$status\" ;"
job+=" worker=\$(curl -sf -m 5 -H Metadata-Flavor:Google $metadata/agent-worker-number"
job+=" || hostname) ;"
job+=" gcloud storage cp $log $(quoted "$workdir/logs/")worker_\$worker.log ; exit \$status"
start="mkdir -p ~/seqpe_jax_logs && cd ~/seqpe_jax"
start+=" && nohup setsid bash -c $(quoted "$job") >>$log 2>&1 </dev/null &"

tpu_vm=(gcloud compute tpus tpu-vm)
commands=(
  "$(quoted "${tpu_vm[@]}" scp "$bundle" "$tpu:seqpe_jax.tar.gz" --worker=all "--zone=$zone")"
  "$(quoted "${tpu_vm[@]}" ssh "$tpu" --worker=all "--zone=$zone" "--command=$setup")"
  "$(quoted "${tpu_vm[@]}" ssh "$tpu" --worker=all "--zone=$zone" "--command=$start")"
)
if [ "$dry_run" = 1 ]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi
for command in "${commands[@]}"; do  # Exactly what --dry-run prints.
  echo "+ $command" >&2
  eval "$command"
done
echo "Started on every worker of $tpu. Follow worker 0's log with:"
echo "  $(quoted "${tpu_vm[@]}" ssh "$tpu" --worker=0 "--zone=$zone" "--command=tail -f $log")"
echo "Each worker copies its log to $workdir/logs/worker_N.log when the run ends."
