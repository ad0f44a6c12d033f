"""Extrapolation sweeps: results table (JSON) and plot, at the end of training or later.

    python -m seqpe_jax.evaluate --workdir=DIR [--split=valid]

re-runs the sweep of the run in DIR from its latest checkpoint into DIR/extrapolation.json
and .png (extrapolation_valid.json/png for the validation split).

    python -m seqpe_jax.evaluate --workdir=DIR --config.eval.lengths=128,8192 --name=long

sweeps other eval.* settings from the same checkpoint into DIR/extrapolation_long.json/png,
leaving the run's own record untouched; so do the LM's evaluation-time baselines (tasks/lm.py),
e.g. `--split=valid --config.eval.rope_scaling=yarn --name=yarn` into _valid_yarn.json.

    python -m seqpe_jax.evaluate --compare=DIR1,DIR2,... --out=FILE.png

plots finished runs' extrapolation curves together and prints them as one Markdown table.
"""

import ast
import contextlib
import json

import ml_collections
from absl import app, flags
from etils import epath

from seqpe_jax import checkpoint, cli, results as results_files, workdir_lock


def evaluate_workdir(workdir: str, split: str | None = None, overrides: dict | None = None,
                     name: str = '') -> dict:
  """Re-runs the sweep of the run in `workdir` from its latest checkpoint into
  extrapolation.json/png, or for `split` or eval `overrides` into _{split}_{name}.json/png."""
  if overrides and not name:
    raise ValueError('Name the evaluation with --name=... when overriding eval settings; '
                     'its results go to extrapolation_<name>.json.')
  with workdir_lock.held(workdir, purpose='evaluate'):
    config, task, state, mesh = restore_run(workdir, overrides)
    results = task.sweep(state['params'], mesh, split=split)
    suffix = ''.join(f'_{part}' for part in (split, name) if part)
    results_files.write_extrapolation(
        workdir, results, task.metric, task.axis_label, suffix=suffix, step=int(state['step']),
        title=f'{config.model.name} {config.pe.name} {split or ""} {name}'.strip(),
        protocol=task.sweep_protocol, overrides=overrides)
    task.write_plots(workdir, results, suffix=suffix)  # Task-specific figures (QA: by depth).
  return results


def results_table(results: dict, axis_label: str) -> str:
  """The sweep as a Markdown table: one row per resolution or length, one column per value."""
  names = list(next(iter(results.values())))
  lines = [f"| {axis_label} | {' | '.join(names)} |", '|---' * (len(names) + 1) + '|']
  for x, values in sorted(results.items()):
    lines.append(f"| {x} | {' | '.join(f'{values[n]:.4g}' for n in names)} |")
  return '\n'.join(lines)


def restore_run(workdir: str, overrides: dict | None = None):
  """(config, task, state, mesh) of `workdir`'s latest checkpoint, with eval `overrides`."""
  from seqpe_jax import sharding, tasks  # pylint: disable=g-import-not-at-top
  from seqpe_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: point --workdir at a training run.')
  recorded = ml_collections.ConfigDict(json.loads(path.read_text()))
  config = with_eval_overrides(recorded, overrides or {})
  mesh = sharding.make_mesh(config.mesh)
  task = tasks.build(config)
  target = state_lib.abstract_state(task, state_lib.make_optimizer(task, config), mesh)
  checkpointer = checkpoint.Checkpointer(workdir, recorded, keep=config.keep_checkpoints)
  with contextlib.closing(checkpointer):
    state = checkpointer.restore(target, defaults=state_lib.NEWER_ENTRIES)
  if state is None:
    raise FileNotFoundError(f'{workdir} has no checkpoint to evaluate.')
  return config, task, state, mesh


def with_eval_overrides(config: ml_collections.ConfigDict,
                        overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with `eval.*` fields replaced; anything else is refused, because
  the model, PE and data of a checkpoint are fixed by the run that trained it."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    field = key.split('.', 1)[1] if key.startswith('eval.') else ''
    if not field:
      raise ValueError(f'--config.{key}: evaluate changes eval.* settings only (the model, '
                       'PE and data come from the run).')
    if field not in config.eval:
      raise ValueError(f"--config.{key} is not a field of the run's config; its eval fields "
                       f"are {', '.join(sorted(config.eval))}.")
    old = config.eval[field]
    if isinstance(old, (list, tuple)):
      value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    elif not (isinstance(value, type(old)) or (isinstance(old, float) and isinstance(value, int))):
      raise ValueError(f'--config.{key}={value!r} should be a {type(old).__name__} like the '
                       f'recorded {old!r}.')
    config.eval[field] = value
  return config


def parse_overrides(argv: list[str]) -> tuple[list[str], dict]:
  """Takes `--config.eval.x=VALUE` out of argv: (the other arguments, {'eval.x': value}). VALUE
  is a Python literal (128,4096 is a tuple); anything that is not a literal is a string."""
  rest, overrides = [], {}
  for arg in argv:
    if not arg.startswith('--config.'):
      rest.append(arg)
      continue
    key, sep, text = arg[len('--config.'):].partition('=')
    if not sep:
      raise ValueError(f'{arg} has no value; write --config.{key}=VALUE.')
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return rest, overrides


def compare(workdirs: list[str], out: str) -> str:
  """One plot of several runs' extrapolation.json (same metric) and their Markdown table."""
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
  fig, ax = results_files.pyplot().subplots(figsize=(6, 4))
  lines = [f"| run | {' | '.join(str(x) for x in columns)} |", '|---' * (len(columns) + 1) + '|']
  for key, run in runs.items():
    xs = sorted(int(x) for x in run['results'])
    ax.plot(xs, [run['results'][str(x)][metric] for x in xs], marker='o', label=labels[key])
    cells = [f"{run['results'][str(x)][metric]:.4g}" if str(x) in run['results'] else ''
             for x in columns]
    lines.append(f"| {labels[key]} | {' | '.join(cells)} |")
  ax.set(xlabel=axis, ylabel=metric)
  results_files.format_axes(ax, columns, metric)
  ax.legend()
  fig.tight_layout()
  results_files.save_figure(fig, out)
  return '\n'.join(lines)


def run_labels(paths: list[str]) -> dict[str, str]:
  """Each path's shortest trailing part that no other path ends with (runs/ape/seed0 and
  runs/rope/seed0: ape/seed0 and rope/seed0)."""
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
  cli.prepare_process(cli.run_dtype(flags.FLAGS.workdir) if flags.FLAGS.workdir else 'float32')
  with cli.exit_statuses():
    if flags.FLAGS.compare:
      print(compare(flags.FLAGS.compare.split(','), flags.FLAGS.out))
      print(f'Plot: {flags.FLAGS.out}')
      return
    workdir = flags.FLAGS.workdir
    before = _listing(workdir)
    results = evaluate_workdir(workdir, flags.FLAGS.split, _OVERRIDES, flags.FLAGS.name)
    written = sorted(p for p, mtime in _listing(workdir).items() if before.get(p) != mtime)
    record = next(p for p in written if p.endswith('.json'))
    print(results_table(results, json.loads(epath.Path(record).read_text())['axis']))
  print('Wrote ' + ', '.join(written) + '.')


def _listing(workdir: str) -> dict[str, float]:
  """{file path: modification time} of the files directly in `workdir`."""
  return {str(p): p.stat().mtime for p in epath.Path(workdir).iterdir() if p.is_file()}


_OVERRIDES = {}


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing after taking out the run-dependent --config.eval.* overrides."""
  with cli.exit_statuses():
    argv, overrides = parse_overrides(argv)
  _OVERRIDES.update(overrides)
  return cli.parse_flags(argv)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A training run directory.')
  flags.DEFINE_string('compare', None, 'Comma-separated finished run directories.')
  flags.DEFINE_string('out', 'extrapolation_comparison.png', 'Where --compare writes its plot.')
  flags.DEFINE_string('split', None, 'Evaluate on this split (e.g. valid) instead of the '
                      "run's eval.split; writes extrapolation_<split>.json.")
  flags.DEFINE_string('name', '', 'With --config.eval.* overrides: the results go to '
                      'extrapolation_<name>.json/png (the run\'s own results are kept).')
  app.run(main, flags_parser=_parse_flags)
