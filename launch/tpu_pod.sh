#!/usr/bin/env bash
# Runs one experiment on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/vit_seqpe.py:paper gs://BUCKET/runs/vit_seqpe [--config.x=y ...]
#
# Copies this checkout to every worker, installs the requirements with the TPU build of
# JAX, and starts the same command everywhere; SEQPE_DISTRIBUTED=1 makes main.py call
# jax.distributed.initialize(), which discovers the pod's hosts by itself on TPU VMs.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [extra flags]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$zone" "$here" "$tpu":~/seqpe_jax
gcloud compute tpus tpu-vm ssh "$tpu" --worker=all --zone="$zone" --command "
  cd ~/seqpe_jax &&
  pip install -q -r requirements.txt 'jax[tpu]' tensorflow-datasets &&
  SEQPE_DISTRIBUTED=1 python3 -m seqpe_jax.main --config=$config --workdir=$workdir $*"
