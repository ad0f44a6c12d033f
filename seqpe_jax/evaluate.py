"""Extrapolation sweeps: results table (JSON) and plot, at the end of training or later.

    python -m seqpe_jax.evaluate --workdir=DIR

re-runs the sweep of the run in DIR from its latest checkpoint and rewrites
DIR/extrapolation.json and DIR/extrapolation.png.
"""

import json
import pathlib

import matplotlib
import ml_collections
from absl import app, flags

matplotlib.use('Agg')  # Files only; no display on training hosts.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

PREFIX = {'accuracy': 'res', 'ppl': 'len', 'em': 'len'}


def flatten(results: dict[int, dict[str, float]], metric: str) -> dict[str, float]:
  """{56: {'accuracy': .9}} -> {'eval/res56/accuracy': .9} (the metrics.jsonl contract)."""
  prefix = PREFIX.get(metric, 'at')
  return {f'eval/{prefix}{x}/{name}': v for x, values in results.items()
          for name, v in values.items()}


def write_extrapolation(workdir: str, results: dict[int, dict[str, float]], metric: str,
                        axis_label: str, title: str = '') -> None:
  """WORKDIR/extrapolation.json (metric per resolution/length) and extrapolation.png."""
  workdir = pathlib.Path(workdir)
  table = {str(x): values for x, values in sorted(results.items())}
  (workdir / 'extrapolation.json').write_text(json.dumps(
      {'metric': metric, 'axis': axis_label, 'results': table}, indent=2))
  xs = sorted(results)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(xs, [results[x][metric] for x in xs], marker='o')
  ax.set(xlabel=axis_label, ylabel=metric, title=title)
  if metric == 'ppl':
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(workdir / 'extrapolation.png', dpi=120)
  plt.close(fig)


def evaluate_workdir(workdir: str) -> dict:
  """Restores the latest checkpoint of the run in `workdir` and re-runs its sweep."""
  from seqpe_jax import checkpoint, sharding, tasks, train  # Avoids an import cycle.
  path = pathlib.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: point --workdir at a training run.')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  mesh = sharding.make_mesh(config.mesh)
  task = tasks.build(config)
  target = train.abstract_state(task, train.make_optimizer(task, config), mesh)
  checkpointer = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
  try:
    state = checkpointer.restore(target)
  finally:
    checkpointer.close()
  if state is None:
    raise FileNotFoundError(f'{workdir} has no checkpoint to evaluate.')
  results = task.sweep(state['params'], mesh)
  write_extrapolation(workdir, results, task.metric, task.axis_label,
                      title=f'{config.model.name} {config.pe.name}')
  return results


def main(argv):
  del argv
  results = evaluate_workdir(flags.FLAGS.workdir)
  for x, values in sorted(results.items()):
    print(x, values)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
  app.run(main)
