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

import matplotlib
import ml_collections
from absl import app, flags
from etils import epath

from seqpe_jax import checkpoint, cli

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
                        axis_label: str, title: str = '', suffix: str = '',
                        protocol: str = '') -> None:
  """WORKDIR/extrapolation{suffix}.json (metric per resolution/length) and .png; `protocol`
  (how the sweep scored, e.g. sliding windows) goes in both."""
  workdir = epath.Path(workdir)
  table = {str(x): values for x, values in sorted(results.items())}
  (workdir / f'extrapolation{suffix}.json').write_text(json.dumps(
      {'metric': metric, 'axis': axis_label, 'protocol': protocol, 'results': table},
      indent=2))
  xs = sorted(results)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(xs, [results[x][metric] for x in xs], marker='o')
  ax.set(xlabel=axis_label, ylabel=metric)
  ax.set_title(f'{title}\n{protocol}' if protocol else title, fontsize=9)
  _format_axes(ax, xs, metric)
  fig.tight_layout()
  with (workdir / f'extrapolation{suffix}.png').open('wb') as f:  # Also on gs://.
    fig.savefig(f, format='png', dpi=120)
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
  from seqpe_jax import sharding, tasks, train  # Avoids an import cycle.
  path = epath.Path(workdir) / 'config.json'
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
                      suffix=f'_{split}' if split else '',
                      protocol=getattr(task, 'sweep_protocol', ''))
  return results


def compare(workdirs: list[str], out: str) -> str:
  """One plot of several runs' extrapolation.json (same metric) and their Markdown table.

  Runs are keyed by their full path and labelled by the shortest path suffix that tells
  them apart (runs/ape/seed0 and runs/rope/seed0, not seed0 twice)."""
  runs = {}
  for workdir in workdirs:
    path = epath.Path(workdir) / 'extrapolation.json'
    if not path.exists():
      raise FileNotFoundError(f'{path} does not exist: the run has not finished its sweep '
                              '(or run `python -m seqpe_jax.evaluate --workdir=DIR`).')
    key = str(checkpoint.workdir_path(workdir))
    if key in runs:
      raise ValueError(f'{workdir} is listed twice in --compare.')
    runs[key] = json.loads(path.read_text())
  labels = run_labels(list(runs))
  metrics_ = {r['metric'] for r in runs.values()}
  if len(metrics_) != 1:
    raise ValueError(f"Runs report different metrics ({', '.join(sorted(metrics_))}); compare "
                     'runs of one experiment family.')
  metric = metrics_.pop()
  axis = next(iter(runs.values()))['axis']
  columns = sorted({int(x) for r in runs.values() for x in r['results']})
  fig, ax = plt.subplots(figsize=(6, 4))
  lines = [f"| run | {' | '.join(str(x) for x in columns)} |", '|---' * (len(columns) + 1) + '|']
  for key, run in runs.items():
    xs = sorted(int(x) for x in run['results'])
    ax.plot(xs, [run['results'][str(x)][metric] for x in xs], marker='o', label=labels[key])
    cells = [f"{run['results'][str(x)][metric]:.4g}" if str(x) in run['results'] else ''
             for x in columns]
    lines.append(f"| {labels[key]} | {' | '.join(cells)} |")
  ax.set(xlabel=axis, ylabel=metric)
  _format_axes(ax, columns, metric)
  ax.legend()
  fig.tight_layout()
  with epath.Path(out).open('wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)
  return '\n'.join(lines)


def run_labels(paths: list[str]) -> dict[str, str]:
  """Each path's shortest trailing part that no other path ends with."""
  parts = {p: p.rstrip('/').split('/') for p in paths}
  labels = {}
  for path, mine in parts.items():
    for n in range(1, len(mine) + 1):
      label = '/'.join(mine[-n:])
      if not any('/'.join(other[-n:]) == label for q, other in parts.items() if q != path):
        break
    labels[path] = label
  return labels


def main(argv):
  del argv
  if bool(flags.FLAGS.workdir) == bool(flags.FLAGS.compare):
    raise app.UsageError('Pass either --workdir=DIR (re-run a sweep) or --compare=DIR1,DIR2 '
                         '(plot finished runs together).')
  with cli.exit_statuses():
    if flags.FLAGS.compare:
      print(compare(flags.FLAGS.compare.split(','), flags.FLAGS.out))
      print(f'Plot: {flags.FLAGS.out}')
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
