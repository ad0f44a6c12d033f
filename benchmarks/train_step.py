"""ViT train-step and evaluation time of SeqPE relative to the learnable APE, in one run.

    python -m benchmarks.train_step [--variant=S/16] [--image_size=224] [--batch=32]

Both use the paper's ViT config (SeqPE with its regularisers and random shifts at the
reference per-device sizes: 32 pivots x 64 candidates, 32 groups x 64 students, 32 shift
windows); images are synthetic, since only time is measured. The SeqPE step carries a
fixed amount of extra encoder work (about 4,300 five-token sequences per unshifted step),
so its ratio to APE falls as the per-device batch grows (the reference runs 256 per device).
Evaluation uses the PE table computed once per resolution, as the evaluator does.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import describe_backend, median_seconds
from configs import vit_base
from seqpe_jax import posenc, train
from seqpe_jax.tasks import classification


def build(pe_name, args):
  config = vit_base.get_config('paper', pe=pe_name)
  config.data.name, config.data.image_size = 'digits', args.image_size  # Shapes only.
  config.model.variant, config.batch_size = args.variant, args.batch
  config.eval.resolutions = (args.image_size,)
  config.pe.contrastive.num_pivots = config.pe.ood.num_groups = 32
  config.pe.shift.num_windows = min(32, args.batch)
  return config, classification.ClassificationTask(config)


def measure(pe_name, args):
  config, task = build(pe_name, args)
  key = jax.random.key(0)
  optimizer = train.make_optimizer(task, config)
  state = jax.jit(lambda k: train.init_state(task, optimizer, k))(key)
  step = jax.jit(train.make_train_step(task, optimizer, key, train.make_shift_pool(task, key)))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 255, (args.batch, args.image_size,
                                                       args.image_size, 1), np.uint8)),
           'label': jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)}
  step_time = median_seconds(lambda s: step(s, batch)[1]['train/loss'], state,
                             repeats=args.repeats)
  features = posenc.TableCache(task.pe, state['params']['pe'])(task.grid(args.image_size))
  forward = jax.jit(lambda p, f, x: task.logits(p, x, f, train=False))
  eval_time = median_seconds(forward, state['params']['model'], features, batch,
                             repeats=args.repeats)
  return step_time, eval_time


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='S/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  print(f'{describe_backend()}; ViT-{args.variant} at {args.image_size} px, batch {args.batch}')
  ape_step, ape_eval = measure('ape', args)
  seqpe_step, seqpe_eval = measure('seqpe', args)
  print(f'train step: APE {ape_step * 1e3:.0f} ms | SeqPE {seqpe_step * 1e3:.0f} ms | '
        f'SeqPE / APE = {seqpe_step / ape_step:.3f}x (target <= 1.15x)')
  print(f'evaluation forward with the cached table: APE {ape_eval * 1e3:.0f} ms | SeqPE '
        f'{seqpe_eval * 1e3:.0f} ms | SeqPE / APE = {seqpe_eval / ape_eval:.3f}x (target <= 1.02x)')


if __name__ == '__main__':
  main()
