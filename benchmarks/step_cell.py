"""One train-step time of one source tree, in a process of its own (for benchmarks.compare).

    python -m benchmarks.step_cell --tree=DIR --pe=ape|seqpe --batch=8 [--repeats=3]
        [--variant=S/16] [--image_size=224] [--dtype=float32] [--clock=wall|cpu]
        [--override=KEY=VALUE ...]

Run from the checkout that holds this file; `seqpe_jax` and `configs` are imported from
DIR, so an older revision is timed as it was. The process prepares XLA as that revision's
entry points do (`cli.prepare_process`, where it has one), builds the paper's ViT recipe at
the given size as `benchmarks.train_step` does, compiles the trainer's step with its state
donated and times the plain step (SeqPE: its unshifted branch, the common one, checked by
the step's own metric). One JSON line on stdout: seconds, peak RSS, the library's path.

Revisions differ in where the train-state helpers live and which config fields exist; the
few places that differ are read from the tree, so any revision since the ViT's paper config
(586213b and later) can be timed.
"""

import argparse
import ast
import importlib
import importlib.util
import json
import resource
import sys
import types


def _prepare_xla() -> str:
  """What the tree's entry points do before JAX starts; its description."""
  if importlib.util.find_spec('seqpe_jax.cli') is None:
    return "XLA's defaults (no seqpe_jax.cli)"
  cli = importlib.import_module('seqpe_jax.cli')
  if not hasattr(cli, 'prepare_process'):
    return "XLA's defaults (no cli.prepare_process)"
  cli.prepare_process()
  return 'cli.prepare_process()'


def _without_tensorflow_writers() -> None:
  """Revisions before 2ac96e7 import clu's metric writers, and with them TensorFlow, when
  the library is imported; the train step uses none of it. Where TensorFlow is not
  installed, empty modules stand in for those clu modules, so such revisions can be timed."""
  if importlib.util.find_spec('tensorflow') is not None:
    return
  for name in ('clu.metric_writers', 'clu.parameter_overview', 'clu.periodic_actions'):
    sys.modules.setdefault(name, types.ModuleType(name))


def _state_helpers():
  """The module with make_optimizer and init_state: seqpe_jax.state since ee899a1,
  seqpe_jax.train before."""
  if importlib.util.find_spec('seqpe_jax.state') is not None:
    return importlib.import_module('seqpe_jax.state')
  return importlib.import_module('seqpe_jax.train')


def _step_fn(train, task, optimizer, key, pool, config):
  """The tree's train step as (state, batch) -> (state, metrics); since the learning rate
  became an argument of the step, at the schedule's first rate."""
  step = train.make_train_step(task, optimizer, key, pool)
  optim = importlib.import_module('seqpe_jax.optim')
  if not hasattr(optim, 'learning_rates'):
    return step
  rate = optim.learning_rates(config.optimizer, config.total_steps)[0]
  return lambda state, batch: step(state, batch, rate)


def _config(args):
  from configs import vit_base  # pylint: disable=g-import-not-at-top
  config = vit_base.get_config('paper', pe=args.pe)
  if 'dtype' in config.model:
    config.model.dtype = args.dtype
  elif args.dtype != 'float32':
    raise ValueError(f'{args.tree} has no model.dtype: it trains in float32 only.')
  config.data.name, config.data.image_size = 'digits', args.image_size  # Shapes only.
  if 'valid_size' in config.data:
    config.data.valid_size = 64  # The digits set is smaller than the paper's holdout.
  config.model.variant, config.batch_size = args.variant, args.batch
  config.eval.resolutions = (args.image_size,)
  config.pe.contrastive.num_pivots = config.pe.ood.num_groups = 32
  config.pe.shift.num_windows = min(32, args.batch)
  for override in args.override:
    key, value = override.split('=', 1)
    config.update_from_flattened_dict({key: _literal(value)})
  return config


def _literal(text: str):
  """'32' -> 32, '0.5' -> 0.5, 'True' -> True; anything else stays a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def measure(args) -> dict:
  """The cell's time and memory; the library path shows which tree was timed."""
  prepared = _prepare_xla()
  _without_tensorflow_writers()
  import jax  # pylint: disable=g-import-not-at-top
  import seqpe_jax  # pylint: disable=g-import-not-at-top
  from benchmarks import stepper as stepper_lib  # pylint: disable=g-import-not-at-top
  from seqpe_jax import train  # pylint: disable=g-import-not-at-top
  from seqpe_jax.tasks import classification  # pylint: disable=g-import-not-at-top
  config = _config(args)
  task = classification.ClassificationTask(config)
  helpers = _state_helpers()
  key = jax.random.key(0)
  optimizer = helpers.make_optimizer(task, config)
  state = jax.jit(lambda k: helpers.init_state(task, optimizer, k))(key)
  pool = task.shift_pool(key) if hasattr(task, 'shift_pool') else train.make_shift_pool(
      task, key)
  batch = stepper_lib.synthetic_batch(args.batch, args.image_size, task.channels)
  stepper = stepper_lib.Stepper.compile(task, state, batch,
                                        _step_fn(train, task, optimizer, key, pool, config))
  if task.regularizers is None:
    seconds = stepper.seconds(0, args.repeats, clock=args.clock)
  else:
    seconds = stepper.seconds(stepper.branch_steps()['unshifted'], args.repeats,
                              expect='unshifted', clock=args.clock)
  return {'seconds': seconds, 'peak_rss_gb': resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1e6, 'library': seqpe_jax.__file__,
          'xla': prepared}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tree', required=True, help='the source tree whose library is timed')
  parser.add_argument('--pe', choices=('ape', 'seqpe'), required=True)
  parser.add_argument('--batch', type=int, required=True)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--variant', default='S/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall')
  parser.add_argument('--override', action='append', default=[],
                      help='a config field KEY=VALUE (repeatable), e.g. pe.seqpe.d_model=32')
  args = parser.parse_args()
  sys.path.insert(0, args.tree)  # Before the first import of the library or the configs.
  print(json.dumps(measure(args)), flush=True)


if __name__ == '__main__':
  main()
