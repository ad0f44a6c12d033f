"""Train-step throughput and model FLOPs utilisation (MFU), SeqPE beside APE, in one run.

    python -m benchmarks.throughput [--models=vit,lm] [--scale=auto|paper|small|tiny] [--steps=5]

`paper` is ViT-S/16 at 224 px and GPT-2 small at 512 tokens with the `:paper` configs'
SeqPE settings (regularisers and shifts on); `small` is the same recipe on a `mu/16` ViT
and the `mini` GPT at 256 tokens with the CPU defaults' SeqPE sizes, for CPUs; `tiny`, on
the `nano` models with the GPT at 64 tokens, checks the command end to end in seconds and
measures little; `auto` picks `paper` on an accelerator. Inputs are synthetic-shaped real
pipelines' batches (digits resized to 224 px; the embedded Wikipedia with the GPT-2
tokenizer), since only speed is measured.

MFU = analytic model FLOPs per step / step time / the device's peak. Model FLOPs are the
host Transformer's (PaLM's count: 6 x matmul parameters + 12 x layers x width x context
per token, forward and backward), the same for both PEs, so SeqPE's extra encoder work
shows as a lower MFU. The peak is the datasheet's dense figure for the run's matmul
precision (float32 matmuls run as TF32 on NVIDIA GPUs by default), or on CPU a measured
float32 matmul rate. XLA's own FLOP count of the compiled step is printed beside it.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import describe_backend, describe_load, median_seconds
from configs import lm_base, vit_base
from seqpe_jax import cli, sharding, state, train
from seqpe_jax import tasks as tasks_lib

# Dense peak FLOP/s per device by device kind (prefix match), for (float32/TF32, bfloat16).
PEAKS = {
    'NVIDIA H200': (494.7e12, 989.4e12),
    'NVIDIA H100': (494.7e12, 989.4e12),
    'NVIDIA A100': (156e12, 312e12),
    'NVIDIA L4': (60e12, 121e12),
    'TPU v6': (918e12, 918e12),  # TPUs run float32 matmuls in bfloat16 passes by default.
    'TPU v5p': (459e12, 459e12),
    'TPU v5 lite': (197e12, 197e12),
    'TPU v4': (275e12, 275e12),
}


def device_peak(dtype: str = 'float32') -> tuple[float, str]:
  """(peak FLOP/s of one device, where the figure comes from)."""
  kind = jax.devices()[0].device_kind
  for prefix, (f32, bf16) in PEAKS.items():
    if kind.startswith(prefix):
      return (bf16 if dtype == 'bfloat16' else f32), f'datasheet, {kind}'
  return measured_matmul_peak(), f'measured float32 matmul on {kind}'


@functools.cache  # Measured once per process: every row of the table divides by it.
def measured_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  return 2 * n**3 / median_seconds(matmul, x, repeats=repeats)


# The CPU scales' models: the ViT variant, and the GPT variant with its context length.
CPU_SCALES = {'small': {'vit': 'mu/16', 'lm': ('mini', 256)},
              'tiny': {'vit': 'nano/16', 'lm': ('nano', 64)}}


def build(model: str, pe: str, scale: str, batch: int, dtype: str = ''):
  """(config, task) for `model` at `scale` with the :paper recipe and synthetic-shaped data,
  in `dtype` ('' = the config's own)."""
  if model == 'vit':
    config = vit_base.get_config('paper', pe=pe)
    config.data.name, config.data.valid_size = 'digits', 64  # Shapes only (1 channel).
    config.data.augment.crop = 'centre'
    config.data.augment.randaugment_ops = 0
    config.data.augment.mixup_alpha = config.data.augment.cutmix_alpha = 0.0
    config.data.augment.erase_prob = config.data.augment.flip_prob = 0.0
    config.data.workers = 0
    config.eval.resolutions = (224,)
    if scale in CPU_SCALES:
      config.model.variant = CPU_SCALES[scale]['vit']
      vit_base.SEQPE_SIZES[''].apply(config.pe)  # The CPU default's SeqPE sizes.
  else:
    config = lm_base.get_config('paper', pe=pe)
    config.data.name, config.data.dir = 'wiki_gensim', ''  # GPT-2 tokens, embedded text.
    config.eval.lengths = (config.data.seq_len,)
    if scale in CPU_SCALES:
      config.model.variant, config.data.seq_len = CPU_SCALES[scale]['lm']
      lm_base.SEQPE_SIZES[''].apply(config.pe)
      config.eval.lengths = (config.data.seq_len,)
  config.batch_size = batch
  config.model.dtype = dtype or config.model.dtype
  config.pe.shift.num_windows = min(config.pe.shift.num_windows, batch)
  config.mesh.data = -1
  return config, tasks_lib.build(config)


def model_flops_per_step(config, task) -> float:
  """PaLM's training FLOPs of the host model for one global batch."""
  params = jax.eval_shape(lambda k: task.init_model(k, task.pe.features(
      task.pe.init(k, task.train_shape), task.train_shape)), jax.random.key(0))
  # Matmul parameters: kernels and the (tied) token embedding, not norms or biases.
  matmul = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params) if x.ndim >= 2)
  if config.model.name == 'vit':
    v = task.variant
    tokens = (config.data.image_size // v['patch_size'])**2 + 1
    layers, width = v['depth'], v['width']
  else:
    from seqpe_jax.models import gpt  # pylint: disable=g-import-not-at-top
    v = gpt.parse_variant(config.model.variant)
    tokens, layers, width = config.data.seq_len, v['depth'], v['width']
  per_token = 6 * matmul + 12 * layers * width * tokens
  return per_token * tokens * config.batch_size


def measure(model: str, pe: str, scale: str, batch: int, steps: int, dtype: str = '') -> dict:
  config, task = build(model, pe, scale, batch, dtype)
  mesh = sharding.make_mesh(config.mesh)
  key = jax.random.key(0)
  optimizer = state.make_optimizer(task, config)
  target = state.abstract_state(task, optimizer, mesh)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  train_state = jax.jit(lambda k: state.init_state(task, optimizer, k),
                        out_shardings=shardings)(key)
  step = train.jit_train_step(task, optimizer, shardings, mesh)
  inputs = (np.float32(config.optimizer.lr), key, task.shift_pool(key))  # Rate, randomness.
  batches = task.train_batches(0)
  global_batches = [sharding.global_batch(batches[i], mesh) for i in range(steps + 1)]
  start = time.perf_counter()
  compiled = step.lower(train_state, global_batches[0], *inputs).compile()
  compile_s = time.perf_counter() - start
  train_state, _ = compiled(train_state, global_batches[0], *inputs)
  jax.block_until_ready(train_state)
  start = time.perf_counter()
  for b in global_batches[1:]:  # The step counter advances: shifted steps at their rate.
    train_state, metrics = compiled(train_state, b, *inputs)
  jax.block_until_ready(train_state)
  step_s = (time.perf_counter() - start) / steps
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  items = batch if model == 'vit' else batch * config.data.seq_len
  return {'config': config, 'step_s': step_s, 'compile_s': compile_s,
          'items_per_s': items / step_s, 'model_flops': model_flops_per_step(config, task),
          'xla_flops': float(cost.get('flops', float('nan'))) * mesh.size}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vit,lm')
  parser.add_argument('--scale', default='auto', choices=('auto', 'paper', *CPU_SCALES))
  parser.add_argument('--dtype', default='', choices=('', 'float32', 'bfloat16'),
                      help="model.dtype of both models (default: each :paper config's own).")
  parser.add_argument('--batch', type=int, default=0,
                      help='Global batch (default: 8 per device on CPU, 64 ViT / 16 LM on '
                      'an accelerator).')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--pes', default='ape,seqpe', help='PEs to time (the ratio needs both).')
  args = parser.parse_args()
  # As the entry points run, before JAX starts its backend; bfloat16 if any model needs it.
  dtypes = {(vit_base if model == 'vit' else lm_base).get_config('paper', pe='ape').model.dtype
            for model in args.models.split(',')}
  cli.prepare_process('bfloat16' if 'bfloat16' in dtypes else 'float32')
  on_cpu = jax.devices()[0].platform == 'cpu'
  scale = ('small' if on_cpu else 'paper') if args.scale == 'auto' else args.scale
  peak, source = device_peak('float32')
  print(f'{describe_backend()}; {describe_load()}; scale {scale}; peak '
        f'{peak / 1e12:.2f} TFLOP/s per device ({source}), float32')
  print('| model | PE | batch | step | items/s | model TFLOP/step | XLA TFLOP/step | MFU | '
        'compile |')
  print('|---|---|---|---|---|---|---|---|---|')
  for model in args.models.split(','):
    default_batch = (8 * jax.device_count() if on_cpu else (64 if model == 'vit' else 16)
                     * jax.device_count())
    batch = args.batch or default_batch
    rows = {}
    for pe in args.pes.split(','):
      r = rows[pe] = measure(model, pe, scale, batch, args.steps, args.dtype)
      unit = 'img' if model == 'vit' else 'tok'
      # Against the peak of the run's matmul precision (bfloat16's is twice TF32's).
      run_peak = device_peak(r['config'].model.dtype)[0]
      mfu = r['model_flops'] / r['step_s'] / (run_peak * jax.device_count())
      print(f"| {model} {r['config'].model.variant} {r['config'].model.dtype} | {pe} | "
            f"{batch} | {r['step_s']:.3f} s | "
            f"{r['items_per_s']:,.0f} {unit}/s | {r['model_flops'] / 1e12:.3f} | "
            f"{r['xla_flops'] / 1e12:.3f} | {100 * mfu:.1f}% | {r['compile_s']:.0f} s |",
            flush=True)
    if {'ape', 'seqpe'} <= set(rows):
      ratio = rows['seqpe']['step_s'] / rows['ape']['step_s']
      print(f'  {model}: SeqPE / APE step time {ratio:.2f}x')


if __name__ == '__main__':
  main()
