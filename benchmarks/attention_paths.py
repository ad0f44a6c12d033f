"""What attention-probability dropout costs in training: the GPT train step on the blockwise
path (the only one with probability dropout) against the fused/dense kernel, in one run.

    python -m benchmarks.attention_paths [--variant=small] [--length=512] [--batch=4]

Rows: blockwise with dropout 0.1 (what `:paper` trains with when model.attention_dropout
is 0.1), blockwise without it, and `attention='xla'` (`cudnn` on a GPU in bfloat16)
without it. APE as the PE, so only attention differs; residual dropout stays on in all.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.timing import describe_backend, describe_load, median_seconds
from configs import lm_base
from seqpe_jax import state, tasks, train


def step_seconds(args, attention: str, attention_dropout: float, repeats: int) -> float:
  config = lm_base.get_config('paper', pe='ape')
  config.data.name, config.data.dir = 'wiki_gensim', ''  # GPT-2 tokens, embedded text.
  config.model.variant, config.data.seq_len = args.variant, args.length
  config.model.dtype = args.dtype
  config.model.attention_kernel, config.model.attention_dropout = attention, attention_dropout
  config.batch_size, config.eval.lengths = args.batch, (args.length,)
  config.mesh.data = 1
  task = tasks.build(config)
  optimizer = state.make_optimizer(task, config)
  fresh = jax.jit(lambda k: state.init_state(task, optimizer, k))(jax.random.key(0))
  step = jax.jit(train.make_train_step(task, optimizer, jax.random.key(1),
                                       task.shift_pool(jax.random.key(2))))
  batch = jax.tree.map(jnp.asarray, task.train_batches(0)[0])
  rate = config.optimizer.lr
  return median_seconds(lambda s: step(s, batch, rate)[1]['train/loss'], fresh, repeats=repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='small')
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  fused = 'cudnn' if jax.default_backend() == 'gpu' and args.dtype == 'bfloat16' else 'xla'
  print(f'{describe_backend()}; {describe_load()}; GPT {args.variant} at {args.length} tokens, '
        f'batch {args.batch}, {args.dtype}')
  rows = [('blockwise, attention dropout 0.1', 'blockwise', 0.1),
          ('blockwise, no attention dropout', 'blockwise', 0.0),
          (f'{fused}, no attention dropout', fused, 0.0)]
  times = {}
  for label, attention, rate in rows:
    times[label] = step_seconds(args, attention, rate, args.repeats)
    print(f'| {label} | {times[label]:.3f} s | {times[label] / next(iter(times.values())):.2f}x |',
          flush=True)


if __name__ == '__main__':
  main()
