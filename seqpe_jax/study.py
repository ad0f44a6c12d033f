"""Position-encoding studies: every run of a suite, one budget, several seeds, one report.

    python -m seqpe_jax.study --suite=lm|vit|ablations --workdir=DIR [--seeds=2]
        [--variant=smoke] [--steps=N] [--only=name1,name2]

trains every run of the suite (SUITES below) on the embedded default data with the same
number of steps, once per seed, then sweeps each trained model on the validation split as
well as the test split, and writes

    DIR/runs/<run>/seed<i>/   each run's training workdir (checkpoints, metrics.jsonl,
                              extrapolation.json, extrapolation_valid.json)
    DIR/results.csv           one row per (run, seed, split, length or resolution)
    DIR/results.md            mean ± std over seeds per run and column, best in bold
    DIR/test.png, valid.png   the metric against length or resolution, bands over seeds
    DIR/diagnostics.png       the diag/* training curves per run
    DIR/REPORT.md             all of it with the command, hardware, budget and a summary

Seeds go one at a time (every run of seed 0, then of seed 1, ...), so an interrupted study
still compares complete sets. A second invocation trains nothing that has finished and
resumes an interrupted run from its checkpoint; the tables are rewritten after every run.
Exit status: 2 for bad arguments, 143 when SIGTERM stopped a run (rerun to resume).
"""

import csv
import dataclasses
import importlib
import importlib.util
import json
import logging as std_logging
import math
import os
import pathlib
import shlex
import sys
import time

import jax
import matplotlib
import ml_collections
import numpy as np
from absl import app, flags

from seqpe_jax import evaluate, train

matplotlib.use('Agg')  # Files only; no display on training hosts.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ('', 'smoke')
SPLITS = {'test': 'extrapolation.json', 'valid': 'extrapolation_valid.json'}
SPLIT_TITLES = {'test': 'Test split', 'valid': 'Validation split'}
LOWER_IS_BETTER = frozenset({'ppl', 'nll', 'loss'})
DIVERGED = 'diverged.txt'  # Written in a run's workdir when its loss became NaN/Inf.
PREEMPTED_EXIT_STATUS = 143  # What a shell reports for a process ended by SIGTERM.

# ------------------------------------------------------------------ Suites.

# SeqPE settings tuned for the small default runs, per experiment family. The LM's was
# chosen on the validation split (one seed, 400 steps): the reference recipe's PE was dead
# (diag/pe_ablation_delta 0.0000), these gave 0.08 nats. The ViT's is untested.
TUNED_SEQPE = {
    'lm': {'pe.regularizers.balance': 'grad_norm', 'pe.contrastive.train_fraction': 0.5},
    'vit': {'pe.regularizers.balance': 'grad_norm', 'pe.contrastive.train_fraction': 0.5,
            'pe.inject.proj_bias_init': 1.0},
}

# Options this codebase adds to the reference SeqPE recipe; the ablations try each alone.
NEW_OPTIONS = {
    'warmup': {'pe.regularizers.warmup_steps': 200},
    'balance': {'pe.regularizers.balance': 'grad_norm'},
    'train_pivots': {'pe.contrastive.train_fraction': 0.5},
    'proj_init': {'pe.inject.proj_init_std': 0.1},
}

# Overrides counted in optimizer steps: a smoke run has only a handful of steps, so they
# are capped at half of them (a 200-step warm-up would never reach full weight).
STEP_COUNT_KEYS = ('pe.regularizers.warmup_steps', 'pe.regularizers.start_step')


@dataclasses.dataclass(frozen=True)
class Run:
  """One entry of a suite: a config file and the flattened config keys it overrides."""
  name: str
  config_file: str
  overrides: dict = dataclasses.field(default_factory=dict)


def _option_name(key: str) -> str:
  """'pe.contrastive.train_fraction' -> 'train_pivots' (its NEW_OPTIONS name) if it has one."""
  for name, option in NEW_OPTIONS.items():
    if list(option) == [key]:
      return name
  return key.removeprefix('pe.').replace('.', '_')


def _without(overrides: dict, key: str) -> dict:
  """`overrides` with `key` left at the config file's (reference) value."""
  return {k: v for k, v in overrides.items() if k != key}


def _family_runs(family: str, baselines: tuple[str, ...]) -> list[Run]:
  seqpe = f'configs/{family}_seqpe.py'
  return [Run('seqpe', seqpe), Run('seqpe_tuned', seqpe, TUNED_SEQPE[family]),
          *[Run(pe, f'configs/{family}_{pe}.py') for pe in baselines]]


def _ablation_runs() -> list[Run]:
  lm, tuned = 'configs/lm_seqpe.py', TUNED_SEQPE['lm']
  return [
      Run('reference', lm),
      Run('no_contrastive', lm, {'pe.contrastive.weight': 0.0}),
      Run('no_ood', lm, {'pe.ood.weight': 0.0}),
      Run('no_regularizers', lm, {'pe.contrastive.weight': 0.0, 'pe.ood.weight': 0.0}),
      Run('no_shift', lm, {'pe.shift.prob': 0.0}),
      *[Run(name, lm, option) for name, option in NEW_OPTIONS.items()],
      Run('tuned', lm, tuned),
      *[Run(f'tuned_minus_{_option_name(key)}', lm, _without(tuned, key)) for key in tuned],
      Run('input_add', lm, {'pe.inject.method': 'input_add'}),
      Run('attn_mul', lm, {'pe.inject.method': 'attn_mul'}),
      Run('bidirectional', lm, {'pe.seqpe.attention': 'bidirectional'}),
  ]


SUITES = {
    'lm': _family_runs('lm', ('nope', 'ape', 'rope', 'alibi')),
    'vit': _family_runs('vit', ('nope', 'ape', 'rope2d')),
    'ablations': _ablation_runs(),
}


class StudyError(ValueError):
  """Bad arguments or a study directory that does not match them; one sentence."""


class Preempted(RuntimeError):
  """SIGTERM stopped a run after it saved a checkpoint."""


# ------------------------------------------------------------------ Configs.


def load_config(config_file: str, variant: str) -> ml_collections.ConfigDict:
  """`get_config(variant)` of configs/<file>.py, imported from the repository's configs/."""
  if importlib.util.find_spec('configs') is None:  # Started from outside the checkout.
    sys.path.insert(0, str(REPO_ROOT))
  module = importlib.import_module(f'configs.{pathlib.Path(config_file).stem}')
  return module.get_config(variant or None)


def _fit_to_budget(overrides: dict, total_steps: int) -> dict:
  return {k: min(v, total_steps // 2) if k in STEP_COUNT_KEYS else v
          for k, v in overrides.items()}


def build_config(suite: str, run: Run, *, seed: int, variant: str,
                 steps: int | None) -> ml_collections.ConfigDict:
  """The config of `run` for one seed: its file's variant, its overrides, the budget."""
  config = load_config(run.config_file, variant)
  overrides = dict(run.overrides)
  if steps is not None:
    overrides['total_steps'] = steps
  if variant == 'smoke':
    overrides = _fit_to_budget(overrides, overrides.get('total_steps', config.total_steps))
  overrides['seed'] = seed
  for key, value in overrides.items():  # One at a time, to name the key that fails.
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, TypeError, ValueError) as e:
      raise StudyError(f'Run {suite}/{run.name} sets {key}={value!r}, which '
                       f'{run.config_file} does not accept ({type(e).__name__}).') from e
  return config


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _recorded_differences(run_dir: pathlib.Path, config: ml_collections.ConfigDict) -> list:
  """How the config a run directory was started with differs from `config` (none if new)."""
  path = run_dir / 'config.json'
  if not path.exists():
    return []
  recorded = _flatten(json.loads(path.read_text()))
  current = _flatten(json.loads(config.to_json_best_effort()))
  return [f'{key}: {recorded.get(key)!r} then, {current.get(key)!r} now'
          for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


# ------------------------------------------------------------------ Running.


@dataclasses.dataclass(eq=False)  # Jobs are compared by identity in the pending list.
class _Job:
  """One (run, seed) of a study: its config and its training workdir."""
  run: Run
  seed: int
  config: ml_collections.ConfigDict
  directory: pathlib.Path

  @property
  def label(self) -> str:
    return f'{self.run.name} seed {self.seed}'


def is_finished(run_dir: pathlib.Path) -> bool:
  """Both sweeps are written: the run needs nothing more."""
  return all((run_dir / name).exists() for name in SPLITS.values())


def _is_done(run_dir: pathlib.Path) -> bool:
  return is_finished(run_dir) or (run_dir / DIVERGED).exists()


def select_runs(suite: str, only: list[str] | None) -> list[Run]:
  """The runs of `suite`, restricted to the names in `only` (suite order either way)."""
  if suite not in SUITES:
    raise StudyError(f"Unknown suite '{suite}'; use one of: {', '.join(SUITES)}.")
  runs = SUITES[suite]
  names = [run.name for run in runs]
  unknown = [name for name in only or () if name not in names]
  if unknown:
    raise StudyError(f"Suite {suite} has no run named {', '.join(map(repr, unknown))}; its "
                     f"runs are: {', '.join(names)}.")
  return [run for run in runs if not only or run.name in only]


def _check_arguments(seeds: int, variant: str, steps: int | None) -> None:
  if seeds < 1:
    raise StudyError(f'--seeds must be at least 1, got {seeds}.')
  if variant not in VARIANTS:
    raise StudyError(f"Unknown --variant '{variant}'; use smoke, or leave it out for the "
                     'default configs.')
  if steps is not None and steps < 1:
    raise StudyError(f'--steps must be at least 1, got {steps}.')


def _plan(suite, runs, root, *, seeds, variant, steps) -> list[_Job]:
  """Every (run, seed), seed-major, with its config; refuses directories made otherwise."""
  jobs = []
  for seed in range(seeds):
    for run in runs:
      job = _Job(run, seed, build_config(suite, run, seed=seed, variant=variant, steps=steps),
                 root / 'runs' / run.name / f'seed{seed}')
      differences = _recorded_differences(job.directory, job.config)
      if differences:
        raise StudyError(f"{job.directory} was made by another config "
                         f"({'; '.join(differences[:3])}); rerun with the arguments that made "
                         'it, or use another --workdir.')
      jobs.append(job)
  return jobs


def _duration(seconds: float) -> str:
  if seconds < 90:
    return f'{seconds:.0f} s'
  if seconds < 2 * 3600:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def _time_left(pending: list[_Job], durations: dict[str, list[float]]) -> str:
  """From this invocation's wall times: per run name where that run has finished once."""
  every = [t for times in durations.values() for t in times]
  if not every:
    return 'time left known after the first run'
  seconds = sum(np.mean(durations.get(job.run.name, every)) for job in pending)
  return f'about {_duration(seconds)} left'


def _train_and_sweep(job: _Job) -> bool:
  """Trains (or resumes) one run and sweeps its validation split; False if it diverged."""
  if not (job.directory / SPLITS['test']).exists():
    try:
      results = train.train_and_evaluate(job.config, str(job.directory))
    except FloatingPointError as e:  # A diverged run is a result; the others go on.
      (job.directory / DIVERGED).write_text(f'{e}\n')
      print(f'{job.label} diverged: {e} (delete {job.directory / DIVERGED} to retry).',
            flush=True)
      return False
    if not results:
      raise Preempted(f'SIGTERM stopped {job.label} after a checkpoint; run the same command '
                      'again to resume.')
  evaluate.evaluate_workdir(str(job.directory), split='valid')
  return True


def _command_line(suite, workdir, seeds, variant, steps, only) -> str:
  args = ['python', '-m', 'seqpe_jax.study', f'--suite={suite}', f'--workdir={workdir}',
          f'--seeds={seeds}']
  args += [f'--variant={variant}'] if variant else []
  args += [f'--steps={steps}'] if steps is not None else []
  args += [f"--only={','.join(only)}"] if only else []
  return shlex.join(args)


def run_study(suite: str, workdir: str, seeds: int = 2, variant: str = '',
              steps: int | None = None, only: list[str] | None = None) -> dict:
  """Trains and sweeps every unfinished (run, seed) of `suite`, then writes the report.

  Returns {'trained': [(run, seed), ...] (this invocation), 'diverged': [...],
  'finished': finished (run, seed) pairs of this selection, 'total': their number,
  'summary': {split: {run: {x: (mean, std or None, seeds)}}}}.
  Raises StudyError for bad arguments, Preempted when SIGTERM stopped a run.
  """
  _check_arguments(seeds, variant, steps)
  runs = select_runs(suite, only)
  root = pathlib.Path(workdir)
  command = _command_line(suite, workdir, seeds, variant, steps, only)
  jobs = _plan(suite, runs, root, seeds=seeds, variant=variant, steps=steps)
  pending = [job for job in jobs if not _is_done(job.directory)]
  print(f'{suite}: {len(jobs) - len(pending)} of {len(jobs)} runs already done in {root}.',
        flush=True)
  durations, trained, diverged = {}, [], []
  try:
    for job in list(pending):
      done = len(jobs) - len(pending)
      print(f'[{jobs.index(job) + 1}/{len(jobs)}] {suite}/{job.label} — {done} finished, '
            f'{_time_left(pending, durations)}', flush=True)
      start = time.perf_counter()
      (trained if _train_and_sweep(job) else diverged).append((job.run.name, job.seed))
      durations.setdefault(job.run.name, []).append(time.perf_counter() - start)
      pending.remove(job)
      write_outputs(root, suite, command)
  finally:  # Also after SIGTERM or an error: the finished runs get their tables.
    summary = write_outputs(root, suite, command)
  return {'trained': trained, 'diverged': diverged,
          'finished': sum(is_finished(job.directory) for job in jobs), 'total': len(jobs),
          'summary': summary}


# ------------------------------------------------------------------ Collecting results.


@dataclasses.dataclass
class RunRecord:
  """What one finished (run, seed) left in its workdir."""
  name: str
  seed: int
  config: dict
  metric: str
  axis: str
  results: dict[str, dict[int, float]]  # split -> x -> metric value.
  final_diag: dict[str, float]  # diag/* -> last logged value.
  curves: dict[str, dict[int, float]]  # diag/* -> step -> value.


def _read_metrics(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_record(name: str, seed: int, run_dir: pathlib.Path) -> RunRecord:
  tables = {split: json.loads((run_dir / file).read_text()) for split, file in SPLITS.items()}
  metric = tables['test']['metric']
  results = {split: {int(x): values[metric] for x, values in table['results'].items()}
             for split, table in tables.items()}
  curves = {}
  for row in _read_metrics(run_dir / 'metrics.jsonl'):  # A missing diag key is just absent.
    for key, value in row.items():
      if key.startswith('diag/'):
        curves.setdefault(key, {})[row['step']] = value
  final = {key: curve[max(curve)] for key, curve in curves.items()}
  config_path = run_dir / 'config.json'
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  return RunRecord(name, seed, config, metric, tables['test']['axis'], results, final, curves)


def collect(root: pathlib.Path, suite: str) -> list[RunRecord]:
  """Every finished (run, seed) of the suite under ROOT/runs, in suite order, any seed."""
  records = []
  for run in SUITES[suite]:
    seed_dirs = (root / 'runs' / run.name).glob('seed*')
    for seed, run_dir in sorted((int(d.name.removeprefix('seed')), d) for d in seed_dirs
                                if d.name.removeprefix('seed').isdigit()):
      if is_finished(run_dir):
        records.append(_read_record(run.name, seed, run_dir))
  return records


def _mean_std(values: list[float]) -> tuple[float, float | None, int]:
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std, len(values)


def summarize(records: list[RunRecord], split: str) -> dict[str, dict[int, tuple]]:
  """{run: {x: (mean, std or None, seeds)}} over the finished seeds, in suite order."""
  values = {}
  for record in records:
    for x, value in record.results[split].items():
      values.setdefault(record.name, {}).setdefault(x, []).append(value)
  return {name: {x: _mean_std(v) for x, v in sorted(by_x.items())}
          for name, by_x in values.items()}


def _final_diagnostics(records: list[RunRecord]) -> dict[str, dict[str, tuple]]:
  values = {}
  for record in records:
    for key, value in record.final_diag.items():
      values.setdefault(record.name, {}).setdefault(key, []).append(value)
  return {name: {key: _mean_std(v) for key, v in by_key.items()}
          for name, by_key in values.items()}


def _diag_keys(records: list[RunRecord]) -> list[str]:
  return sorted({key for record in records for key in record.curves})


# ------------------------------------------------------------------ Tables.


def _number(value: float) -> str:
  return f'{value:.1f}' if abs(value) >= 100 else f'{value:.4g}'


def _spread(std: float) -> str:
  return f'{std:.0f}' if std >= 10 else f'{std:.2g}'  # Two significant digits are plenty.


def _cell(stats: tuple | None, bold: bool = False) -> str:
  if stats is None:
    return ''
  mean, std, _ = stats
  if std is None or not math.isfinite(std):  # One seed, or an infinite diag/grad_ratio.
    text = _number(mean)
  else:
    text = f'{_number(mean)} ± {_spread(std)}'
  return f'**{text}**' if bold else text


def _row_label(name: str, stats: dict) -> str:
  seeds = max((n for _, _, n in stats.values()), default=0)
  return f'{name} (1 seed)' if seeds == 1 else name


def _best_runs(summary: dict, x: int, metric: str) -> list[str]:
  means = {name: by_x[x][0] for name, by_x in summary.items() if x in by_x}
  if not means:
    return []
  best = (min if metric in LOWER_IS_BETTER else max)(means.values())
  return [name for name, mean in means.items() if mean == best]


def _columns(summary: dict) -> list[int]:
  return sorted({x for by_x in summary.values() for x in by_x})


def metric_table(summary: dict, metric: str) -> str:
  """Markdown: one row per run, one column per length/resolution, best mean in bold."""
  columns = _columns(summary)
  best = {x: _best_runs(summary, x, metric) for x in columns}
  lines = [f"| run | {' | '.join(map(str, columns))} |", '|---' * (len(columns) + 1) + '|']
  for name, by_x in summary.items():
    cells = [_cell(by_x.get(x), name in best[x]) for x in columns]
    lines.append(f"| {_row_label(name, by_x)} | {' | '.join(cells)} |")
  return '\n'.join(lines)


def diagnostics_table(final: dict[str, dict[str, tuple]], keys: list[str]) -> str:
  lines = [f"| run | {' | '.join(keys)} |", '|---' * (len(keys) + 1) + '|']
  for name, by_key in final.items():
    lines.append(f"| {_row_label(name, by_key)} | "
                 f"{' | '.join(_cell(by_key.get(key)) for key in keys)} |")
  return '\n'.join(lines)


def _metric_caption(split: str, records: list[RunRecord]) -> str:
  metric, axis = records[0].metric, records[0].axis
  better = 'lower' if metric in LOWER_IS_BETTER else 'higher'
  return (f'{metric} per {axis}, mean ± std over seeds ({better} is better; best mean in '
          'bold).')


def _markdown_sections(records: list[RunRecord], heading: str) -> str:
  """The split tables and the diagnostics table, each under a `heading` title."""
  sections = []
  for split in SPLITS:
    sections.append(f'{heading} {SPLIT_TITLES[split]}\n\n{_metric_caption(split, records)}\n\n'
                    f'{metric_table(summarize(records, split), records[0].metric)}\n')
  keys = _diag_keys(records)
  if keys:
    sections.append(f'{heading} Final diagnostics\n\nLast logged value of each diag/* metric, '
                    f'mean ± std over seeds.\n\n'
                    f'{diagnostics_table(_final_diagnostics(records), keys)}\n')
  else:
    sections.append(f'{heading} Final diagnostics\n\nThe runs logged no diag/* metrics.\n')
  return '\n'.join(sections)


def write_csv(path: pathlib.Path, records: list[RunRecord]) -> None:
  """One row per (run, seed, split, x): the metric value and the run's final diag/* values."""
  keys = _diag_keys(records)
  with path.open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['run', 'seed', 'split', 'x', 'metric', 'value', *keys])
    for record in records:
      diag = [record.final_diag.get(key, '') for key in keys]
      for split in SPLITS:
        for x, value in sorted(record.results[split].items()):
          writer.writerow([record.name, record.seed, split, x, record.metric, value, *diag])


# ------------------------------------------------------------------ Plots.


def _colour_cycle(ax, count: int) -> None:
  if count > 10:  # Matplotlib's default cycle repeats after 10 lines.
    ax.set_prop_cycle(color=plt.get_cmap('tab20').colors)


def plot_metric(path: pathlib.Path, summary: dict, metric: str, axis: str, title: str) -> None:
  """Mean per run against length/resolution, with a mean ± std band where seeds > 1."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  _colour_cycle(ax, len(summary))
  for name, by_x in summary.items():
    xs = sorted(by_x)
    mean = np.array([by_x[x][0] for x in xs])
    line, = ax.plot(xs, mean, marker='o', label=name)
    if all(by_x[x][1] is not None for x in xs):
      std = np.array([by_x[x][1] for x in xs])
      ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set(xlabel=axis, ylabel=metric, title=title)
  evaluate._format_axes(ax, _columns(summary), metric)  # pylint: disable=protected-access
  ax.legend(fontsize='small', ncol=2 if len(summary) > 8 else 1)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_diagnostics(path: pathlib.Path, records: list[RunRecord]) -> None:
  """One panel per diag/* key: its training curve per run, averaged over seeds."""
  keys = _diag_keys(records)
  names = list(dict.fromkeys(record.name for record in records))
  columns = min(2, len(keys))
  rows = math.ceil(len(keys) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.5 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    _colour_cycle(ax, len(names))
    for name in names:
      by_step = {}
      for record in records:
        if record.name == name:
          for step, value in record.curves.get(key, {}).items():
            by_step.setdefault(step, []).append(value)
      steps = sorted(by_step)
      ax.plot(steps, [np.mean(by_step[s]) for s in steps], label=name)
    ax.set(title=key, xlabel='step')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(keys):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ Report.


def _hardware() -> str:
  device = jax.devices()[0]
  return (f'{device.device_kind} ({device.platform}), {jax.device_count()} devices, '
          f'{os.cpu_count()} CPU cores, JAX {jax.__version__}')


def _training_x(config: dict, columns: list[int]) -> int:
  """The training length (LM) or resolution (ViT) if it is a column, else the first one."""
  data = config.get('data', {})
  x = data.get('seq_len', data.get('image_size'))
  return x if x in columns else columns[0]


def _budget(records: list[RunRecord]) -> str:
  config = records[0].config
  model, data = config.get('model', {}), config.get('data', {})
  columns = sorted(records[0].results['test'])
  return (f"{config.get('total_steps')} steps of batch {config.get('batch_size')} per run; "
          f"model {model.get('name')} {model.get('variant')}; data {data.get('name')}; "
          f'{records[0].axis}: trained at {_training_x(config, columns)}, evaluated at '
          f"{', '.join(map(str, columns))}")


def _ordinal(n: int) -> str:
  suffix = 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')
  return f'{n}{suffix}'


def _rank(summary: dict, name: str, x: int, metric: str) -> str:
  means = sorted((by_x[x][0] for by_x in summary.values() if x in by_x),
                 reverse=metric not in LOWER_IS_BETTER)
  return f'{_ordinal(means.index(summary[name][x][0]) + 1)} of {len(means)}'


def _winners(summary: dict, metric: str) -> str:
  lines = []
  for x in _columns(summary):
    names = _best_runs(summary, x, metric)
    lines.append(f"- {x}: {', '.join(f'**{n}**' for n in names)} "
                 f'({_cell(summary[names[0]][x])})')
  return '\n'.join(lines)


def _seqpe_paragraph(name: str, records: list[RunRecord], summary: dict) -> str:
  """Whether the run uses its position encoding, and where it ranks on validation."""
  own = [r for r in records if r.name == name]
  deltas = [r.final_diag['diag/pe_ablation_delta'] for r in own
            if 'diag/pe_ablation_delta' in r.final_diag]
  if deltas:
    mean, std, _ = _mean_std(deltas)
    verdict = ('it uses position' if mean > 0 else
               'it does not use position: removing the PE does not raise the loss')
    usage = (f"Final diag/pe_ablation_delta {_cell(_mean_std(deltas))} "
             f'({len(deltas)} seeds): {verdict}.')
  else:
    usage = 'It logged no diag/pe_ablation_delta.'
  metric, columns = own[0].metric, _columns(summary)
  trained, longest = _training_x(own[0].config, columns), columns[-1]
  kind = 'length' if 'length' in own[0].axis else 'resolution'
  return (f'**{name}**. {usage} On validation it ranks {_rank(summary, name, trained, metric)} '
          f'at the training {kind} ({trained}) and {_rank(summary, name, longest, metric)} at '
          f'the longest ({longest}).')


def _run_status(suite: str, records: list[RunRecord], root: pathlib.Path) -> str:
  seeds = {}
  for record in records:
    seeds.setdefault(record.name, []).append(record.seed)
  done = ', '.join(f'{name} ({len(s)} seeds)' for name, s in seeds.items())
  missing = [run.name for run in SUITES[suite] if run.name not in seeds]
  diverged = sorted(str(p.parent.relative_to(root)) for p in root.glob(f'runs/*/seed*/{DIVERGED}'))
  text = f'Finished: {done}.'
  text += f" Not finished yet: {', '.join(missing)}." if missing else ''
  text += f" Diverged (no results): {', '.join(diverged)}." if diverged else ''
  return text


def report(suite: str, records: list[RunRecord], root: pathlib.Path, command: str) -> str:
  """REPORT.md: how the study was made, its tables and plots, and what they say."""
  metric = records[0].metric
  valid = summarize(records, 'valid')
  seqpe_runs = list(dict.fromkeys(r.name for r in records
                                  if r.config.get('pe', {}).get('name') == 'seqpe'))
  diagnostics = '![diag/* training curves](diagnostics.png)\n' if _diag_keys(records) else ''
  paragraphs = '\n\n'.join(_seqpe_paragraph(name, records, valid) for name in seqpe_runs)
  return f"""# Study: {suite}

Which position encoding extrapolates best: every run trained with the same budget on the
same data, once per seed; test and validation sweeps of the final checkpoint.

- Last written by: `{command}`
- Hardware: {_hardware()}
- Budget: {_budget(records)}
- Runs: {_run_status(suite, records, root)}
- Data: [results.csv](results.csv), [results.md](results.md), one workdir per run under `runs/`.

{_markdown_sections(records, '##')}
![{metric} on the test split](test.png)

![{metric} on the validation split](valid.png)

{diagnostics}
## Best on validation

{_winners(valid, metric)}

## SeqPE runs

{paragraphs or 'No SeqPE run has finished.'}
"""


def write_outputs(root: pathlib.Path, suite: str, command: str) -> dict:
  """Rewrites the tables, plots and report from every finished run; returns the summaries."""
  records = collect(root, suite)
  if not records:
    return {}
  metrics_ = {record.metric for record in records}
  if len(metrics_) != 1:
    raise StudyError(f"The runs in {root} report different metrics ({', '.join(metrics_)}); "
                     'a study holds one experiment family.')
  summaries = {split: summarize(records, split) for split in SPLITS}
  write_csv(root / 'results.csv', records)
  (root / 'results.md').write_text(f'# Study: {suite}\n\n{_markdown_sections(records, "##")}')
  for split, summary in summaries.items():
    plot_metric(root / f'{split}.png', summary, records[0].metric, records[0].axis,
                f'{suite}: {SPLIT_TITLES[split].lower()}')
  if _diag_keys(records):
    plot_diagnostics(root / 'diagnostics.png', records)
  (root / 'REPORT.md').write_text(report(suite, records, root, command))
  return summaries


# ------------------------------------------------------------------ Command line.


def _exit_with(message: str, status: int) -> None:
  print(message, file=sys.stderr)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    _exit_with(f'Unexpected arguments: {" ".join(argv[1:])}.', 2)
  if not flags.FLAGS.suite or not flags.FLAGS.workdir:
    _exit_with('Pass --suite=lm|vit|ablations and --workdir=DIR.', 2)
  std_logging.getLogger('orbax').setLevel(std_logging.WARNING)  # Per-file save chatter.
  try:
    run_study(flags.FLAGS.suite, flags.FLAGS.workdir, seeds=flags.FLAGS.seeds,
              variant=flags.FLAGS.variant, steps=flags.FLAGS.steps, only=flags.FLAGS.only)
  except StudyError as e:  # One sentence, not absl's usage page and a traceback.
    _exit_with(str(e), 2)
  except Preempted as e:
    _exit_with(str(e), PREEMPTED_EXIT_STATUS)
  print(f'Report: {pathlib.Path(flags.FLAGS.workdir) / "REPORT.md"}')


if __name__ == '__main__':
  flags.DEFINE_string('suite', None, f"Which runs: {' | '.join(SUITES)}.")
  flags.DEFINE_string('workdir', None, 'The study directory (runs/, tables, plots, report).')
  flags.DEFINE_integer('seeds', 2, 'Seeds per run: 0 .. N-1.')
  flags.DEFINE_string('variant', '', "Config variant of every run: '' (default) or smoke.")
  flags.DEFINE_integer('steps', None, 'total_steps of every run (default: the config\'s).')
  flags.DEFINE_list('only', None, 'Train only these runs of the suite (the report shows all '
                    'finished ones).')
  app.run(main)
