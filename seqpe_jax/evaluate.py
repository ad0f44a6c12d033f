"""Extrapolation sweeps: results table (JSON) and plot, at the end of training or later.

    python -m seqpe_jax.evaluate --workdir=DIR

re-runs the sweep of the run in DIR from its latest checkpoint and rewrites
DIR/extrapolation.json and DIR/extrapolation.png; with `--split=valid` it sweeps the
validation split instead and writes DIR/extrapolation_valid.json/png.

    python -m seqpe_jax.evaluate --compare=DIR1,DIR2,... --out=FILE.png

puts the finished runs' extrapolation curves in one plot and prints them as one Markdown
table (one row per run, one column per resolution or length).
"""

import json
import pathlib

import matplotlib
import ml_collections
from absl import app, flags

matplotlib.use('Agg')  # Files only; no display on training hosts.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

PREFIX = {'accuracy': 'res', 'ppl': 'len', 'em': 'len'}


def flatten(results: dict[int, dict[str, float]], metric: str) -> dict[str, float]:
  """{56: {'accuracy': .9}} -> {'eval/res56/accuracy': .9} (the metrics.jsonl contract)."""
  prefix = PREFIX.get(metric, 'at')
  return {f'eval/{prefix}{x}/{name}': v for x, values in results.items()
          for name, v in values.items()}


def write_extrapolation(workdir: str, results: dict[int, dict[str, float]], metric: str,
                        axis_label: str, title: str = '', suffix: str = '') -> None:
  """WORKDIR/extrapolation{suffix}.json (metric per resolution/length) and .png."""
  workdir = pathlib.Path(workdir)
  table = {str(x): values for x, values in sorted(results.items())}
  (workdir / f'extrapolation{suffix}.json').write_text(json.dumps(
      {'metric': metric, 'axis': axis_label, 'results': table}, indent=2))
  xs = sorted(results)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(xs, [results[x][metric] for x in xs], marker='o')
  ax.set(xlabel=axis_label, ylabel=metric, title=title)
  _format_axes(ax, xs, metric)
  fig.tight_layout()
  fig.savefig(workdir / f'extrapolation{suffix}.png', dpi=120)
  plt.close(fig)


def _format_axes(ax, xs, metric: str) -> None:
  """Perplexity on log axes (lengths double), plain tick labels at the evaluated points."""
  if metric == 'ppl':
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter('%g'))  # Narrow ranges: minor only.
  ax.set_xticks(xs, [str(x) for x in xs])
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.grid(alpha=0.3)


def evaluate_workdir(workdir: str, split: str | None = None) -> dict:
  """Restores the latest checkpoint of the run in `workdir` and re-runs its sweep, on the
  run's eval.split (rewriting extrapolation.json/png) or on `split` (writing
  extrapolation_{split}.json/png beside them, e.g. the validation split)."""
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
  results = task.sweep(state['params'], mesh, split=split)
  write_extrapolation(workdir, results, task.metric, task.axis_label,
                      title=f'{config.model.name} {config.pe.name} {split or ""}'.strip(),
                      suffix=f'_{split}' if split else '')
  return results


def compare(workdirs: list[str], out: str) -> str:
  """One plot of several runs' extrapolation.json (same metric) and their Markdown table."""
  runs = {}
  for workdir in workdirs:
    path = pathlib.Path(workdir) / 'extrapolation.json'
    if not path.exists():
      raise FileNotFoundError(f'{path} does not exist: the run has not finished its sweep '
                              '(or run `python -m seqpe_jax.evaluate --workdir=DIR`).')
    runs[pathlib.Path(workdir).name] = json.loads(path.read_text())
  metrics_ = {r['metric'] for r in runs.values()}
  if len(metrics_) != 1:
    raise ValueError(f"Runs report different metrics ({', '.join(sorted(metrics_))}); compare "
                     'runs of one experiment family.')
  metric = metrics_.pop()
  axis = next(iter(runs.values()))['axis']
  columns = sorted({int(x) for r in runs.values() for x in r['results']})
  fig, ax = plt.subplots(figsize=(6, 4))
  lines = [f"| run | {' | '.join(str(x) for x in columns)} |", '|---' * (len(columns) + 1) + '|']
  for name, run in runs.items():
    xs = sorted(int(x) for x in run['results'])
    ax.plot(xs, [run['results'][str(x)][metric] for x in xs], marker='o', label=name)
    cells = [f"{run['results'][str(x)][metric]:.4g}" if str(x) in run['results'] else ''
             for x in columns]
    lines.append(f"| {name} | {' | '.join(cells)} |")
  ax.set(xlabel=axis, ylabel=metric)
  _format_axes(ax, columns, metric)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return '\n'.join(lines)


def main(argv):
  del argv
  if bool(flags.FLAGS.workdir) == bool(flags.FLAGS.compare):
    raise app.UsageError('Pass either --workdir=DIR (re-run a sweep) or --compare=DIR1,DIR2 '
                         '(plot finished runs together).')
  if flags.FLAGS.compare:
    print(compare(flags.FLAGS.compare.split(','), flags.FLAGS.out))
    return
  results = evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.split)
  for x, values in sorted(results.items()):
    print(x, values)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A training run directory.')
  flags.DEFINE_string('compare', None, 'Comma-separated finished run directories.')
  flags.DEFINE_string('out', 'extrapolation_comparison.png', 'Where --compare writes its plot.')
  flags.DEFINE_string('split', None, 'Evaluate on this split (e.g. valid) instead of the '
                      "run's eval.split; writes extrapolation_<split>.json.")
  app.run(main)
