#!/usr/bin/env bash
# The `:paper` path's accelerator figures in one run, for a GPU (or TPU) host:
#
#   benchmarks/accelerator_check.sh [--dry-run] [OUT_DIR]
#
# 1. throughput: python -m benchmarks.throughput --scale=paper in bfloat16, ViT-S/16 at 224 px
#    and GPT-2 small at 512 tokens, SeqPE beside APE, at the reference's per-device batch
#    (256 images, 32 sequences): items/s and MFU. Targets on an H100/H200: ViT-S/16 >= 45%
#    MFU, GPT-2 small >= 40%, the SeqPE step within 10% of APE's.
# 2. attention_paths: python -m benchmarks.attention_paths for GPT-2 small at 512 tokens in
#    bfloat16 (the fused kernels against the blockwise path with attention dropout).
# 3. compile_vit, compile_lm: python -m seqpe_jax.main --compile_only of
#    configs/vit_seqpe.py:paper and configs/lm_seqpe.py:paper (per-device memory, FLOPs), on
#    the throughput benchmark's stand-in data (digits at 224 px without the host-side
#    augmentation; the embedded Wikipedia in GPT-2 BPE), as no dataset is needed for shapes.
#
# Each step writes OUT_DIR/<step>.log and appends "<step> <exit status> <seconds>" to
# OUT_DIR/status.txt; a failed step does not stop the others, and the script exits 1 if any
# failed. OUT_DIR defaults to $OUT, else ./accelerator_check. --dry-run prints the commands,
# one a line and quoted for pasting, and runs nothing.
#
# Environment: PYTHON (default python3); DEVICES, the accelerator count the batches are
# multiplied by (default: JAX's device count; 1 in a dry run); STEP_TIMEOUT, seconds per
# step (default 420).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../launch/cli.sh"
parse_options "$@"
if [ ${#args[@]} -gt 1 ]; then
  fail "expected at most one OUT_DIR, got ${#args[@]} arguments (see --help)."
fi
out=${args[0]:-${OUT:-accelerator_check}}
[[ $out != -* ]] || fail "unknown option '$out' (see --help)."
python=${PYTHON:-python3}
step_timeout=${STEP_TIMEOUT:-420}
if [[ ! $step_timeout =~ ^[1-9][0-9]*$ ]]; then
  fail "STEP_TIMEOUT must be a number of seconds, not '$step_timeout'."
fi

# The modules run from the repository root; OUT_DIR is taken from the caller's directory.
[[ $out == /* ]] || out=$PWD/$out
cd "$(dirname "${BASH_SOURCE[0]}")/.."

devices=${DEVICES:-}
if [ -z "$devices" ]; then
  if [ "$dry_run" = 1 ]; then devices=1
  else devices=$("$python" -c 'import jax; print(jax.device_count())'); fi
fi
[[ $devices =~ ^[1-9][0-9]*$ ]] || fail "DEVICES must be a positive integer, not '$devices'."

steps=(throughput_vit throughput_lm attention_paths compile_vit compile_lm)
command_of() {
  case $1 in
    throughput_vit) cmd=("$python" -m benchmarks.throughput --models=vit --scale=paper
                         --dtype=bfloat16 "--batch=$((256 * devices))") ;;
    throughput_lm) cmd=("$python" -m benchmarks.throughput --models=lm --scale=paper
                        --dtype=bfloat16 "--batch=$((32 * devices))") ;;
    attention_paths) cmd=("$python" -m benchmarks.attention_paths --variant=small --length=512
                          --batch=32 --dtype=bfloat16) ;;
    compile_vit) cmd=("$python" -m seqpe_jax.main --config=configs/vit_seqpe.py:paper
                      --compile_only --config.data.name=digits --config.data.valid_size=64
                      --config.data.workers=0 --config.data.augment.crop=centre
                      --config.data.augment.randaugment_ops=0
                      --config.data.augment.mixup_alpha=0 --config.data.augment.cutmix_alpha=0
                      --config.data.augment.erase_prob=0 --config.data.augment.flip_prob=0
                      "--config.eval.resolutions=(224,)") ;;
    compile_lm) cmd=("$python" -m seqpe_jax.main --config=configs/lm_seqpe.py:paper
                     --compile_only --config.data.name=wiki_gensim --config.data.dir=
                     "--config.eval.lengths=(512,)") ;;
  esac
}

if [ "$dry_run" = 1 ]; then
  for step in "${steps[@]}"; do
    command_of "$step"
    echo "$(quoted timeout "$step_timeout" "${cmd[@]}") > $(quoted "$out/$step.log") 2>&1"
  done
  exit 0
fi

mkdir -p "$out"
failed=0
for step in "${steps[@]}"; do
  command_of "$step"
  echo "== $step: $(quoted "${cmd[@]}")"
  start=$SECONDS
  status=0
  timeout "$step_timeout" "${cmd[@]}" >"$out/$step.log" 2>&1 || status=$?
  echo "$step $status $((SECONDS - start))" | tee -a "$out/status.txt"
  [ "$status" = 0 ] || failed=1
  tail -n 20 "$out/$step.log"
done
exit "$failed"
