"""A study's results: tables, plots (lab/plots.py) and REPORT.md from the runs' workdirs
(see study.py).

Each finished (run, seed) workdir holds extrapolation.json (test), extrapolation_valid.json
and metrics.jsonl; everything here is rebuilt from those files, so a partial study always
has tables and a report.
"""

import csv
import dataclasses
import json
import math
import os
import pathlib

import jax
import numpy as np

from lab import plots as study_plots

SPLITS = {'test': 'extrapolation.json', 'valid': 'extrapolation_valid.json'}
SPLIT_TITLES = {'test': 'Test split', 'valid': 'Validation split'}
LOWER_IS_BETTER = frozenset({'ppl', 'nll', 'loss'})
DIVERGED = 'diverged.txt'  # Written in a run's workdir when its loss became NaN/Inf.


class MixedMetricsError(ValueError):
  """Runs of different experiment families in one study directory."""


def is_finished(run_dir: pathlib.Path) -> bool:
  """Both sweeps are written: the run needs nothing more."""
  return all((run_dir / name).exists() for name in SPLITS.values())


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
  profile: dict | None = None  # position_profile_<L>.json (1-D tasks), if written.


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
  profiles = sorted(run_dir.glob('position_profile_*.json'))
  profile = json.loads(profiles[-1].read_text()) if profiles else None
  return RunRecord(name, seed, config, metric, tables['test']['axis'], results, final, curves,
                   profile)


def collect(root: pathlib.Path, run_names: list[str]) -> list[RunRecord]:
  """Every finished (run, seed) of these runs under ROOT/runs, in their order, any seed."""
  records = []
  for name in run_names:
    seed_dirs = (root / 'runs' / name).glob('seed*')
    for seed, run_dir in sorted((int(d.name.removeprefix('seed')), d) for d in seed_dirs
                                if d.name.removeprefix('seed').isdigit()):
      if is_finished(run_dir):
        records.append(_read_record(name, seed, run_dir))
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


def locality_table(records: list[RunRecord]) -> str:
  """Where the PE-only attention looks per query range (mean ± std over seeds): its mass on
  the nearest keys and its logit fall-off beyond the training length, each with a
  position-free layer's for reference; '' when no run has a profile."""
  near_mass = _profile_table(records, 'near_mass')
  if not near_mass:
    return ''
  first = next(r.profile for r in records if r.profile)
  t = first['train_length']
  text = (f"Share of the attention the PE alone pays to the {first['near']} nearest keys, per "
          f"query position range, at {first['length']} positions (`lab.position_profile`; "
          'mean over layers and heads): a PE that keeps attention local beyond the training '
          f'length keeps this share there.\n\n{near_mass}\n')
  falloff = _profile_table(records, 'falloff')
  if falloff:
    text += (f'\nHow far the PE-only logits fall from those keys to the keys {t}-{2 * t - 1} '
             'back (nats; distances just beyond any in the training window), per query range: '
             'a PE whose position term falls off with distance wherever the query is keeps '
             f'it.\n\n{falloff}\n')
  return text


def _profile_table(records: list[RunRecord], key: str) -> str:
  """One row per run of the profiled `key` per query range, mean ± std over seeds, and the
  position-free layer's; runs profiled over other ranges, or before `key` existed, are left
  out ('' when none has it)."""
  profiles = [(r.name, r.profile) for r in records if r.profile and key in r.profile['mean']]
  if not profiles:
    return ''
  first = profiles[0][1]
  ranges = [tuple(r) for r in first['query_ranges']]
  values = {}
  for name, profile in profiles:
    if [tuple(r) for r in profile['query_ranges']] == ranges:
      values.setdefault(name, []).append(profile['mean'][key])
  lines = [f"| run | {' | '.join(f'{lo}-{hi - 1}' for lo, hi in ranges)} |",
           '|---' * (len(ranges) + 1) + '|']
  for name, rows in values.items():
    stats = [None if rows[0][i] is None else _mean_std([row[i] for row in rows])
             for i in range(len(ranges))]
    label = _row_label(name, {i: s for i, s in enumerate(stats) if s})
    lines.append(f"| {label} | {' | '.join(map(_cell, stats))} |")
  free = ' | '.join('' if v is None else _number(v) for v in first['position_free'][key])
  lines.append(f'| (position-free) | {free} |')
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
  locality = locality_table(records)
  if locality:
    sections.append(f'{heading} Attention locality of the PE alone\n\n{locality}')
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


# Loss increases (nats) when every position's PE is replaced by the first one's: from the
# first, a PE clearly carries position (trained RoPE shows ~0.13 in the tiny LM default);
# below the second, removing it changes nothing the held-out batch can show.
USES_POSITION_NATS = 0.05
NO_POSITION_NATS = 0.005


def position_use_verdict(deltas: list[float]) -> str:
  """Words for the final diag/pe_ablation_delta of a run's seeds."""
  mean, std, _ = _mean_std(deltas)
  if mean >= USES_POSITION_NATS:
    return 'it uses position'
  if mean >= NO_POSITION_NATS and mean > 2 * (std or 0.0):
    return (f'it uses position weakly (below the {USES_POSITION_NATS} nats that mark a PE '
            'that clearly carries position)')
  return (f'it does not use position: replacing every position\'s PE by the first one\'s '
          f'raises the loss by less than {NO_POSITION_NATS} nats')


def _seqpe_paragraph(name: str, records: list[RunRecord], summary: dict) -> str:
  """Whether the run uses its position encoding, and where it ranks on validation."""
  own = [r for r in records if r.name == name]
  deltas = [r.final_diag['diag/pe_ablation_delta'] for r in own
            if 'diag/pe_ablation_delta' in r.final_diag]
  if deltas:
    usage = (f"Final diag/pe_ablation_delta {_cell(_mean_std(deltas))} "
             f'({_seeds(len(deltas))}): {position_use_verdict(deltas)}.')
  else:
    usage = 'It logged no diag/pe_ablation_delta.'
  metric, columns = own[0].metric, _columns(summary)
  trained, longest = _training_x(own[0].config, columns), columns[-1]
  kind = 'length' if 'length' in own[0].axis else 'resolution'
  return (f'**{name}**. {usage} On validation it ranks {_rank(summary, name, trained, metric)} '
          f'at the training {kind} ({trained}) and {_rank(summary, name, longest, metric)} at '
          f'the longest ({longest}).')


def _seeds(count: int) -> str:
  return f"{count} seed{'' if count == 1 else 's'}"


def _run_status(run_names: list[str], records: list[RunRecord], root: pathlib.Path) -> str:
  seeds = {}
  for record in records:
    seeds.setdefault(record.name, []).append(record.seed)
  done = ', '.join(f'{name} ({_seeds(len(s))})' for name, s in seeds.items())
  missing = [name for name in run_names if name not in seeds]
  diverged = sorted(str(p.parent.relative_to(root)) for p in root.glob(f'runs/*/seed*/{DIVERGED}'))
  text = f'Finished: {done}.'
  text += f" Not finished yet: {', '.join(missing)}." if missing else ''
  text += f" Diverged (no results): {', '.join(diverged)}." if diverged else ''
  return text


def report(suite: str, run_names: list[str], records: list[RunRecord], root: pathlib.Path,
           command: str) -> str:
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
- Runs: {_run_status(run_names, records, root)}
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


def write_outputs(root: pathlib.Path, suite: str, run_names: list[str], command: str) -> dict:
  """Rewrites the tables, plots and report from every finished run of `run_names` (the
  suite's runs, in its order); returns the summaries."""
  records = collect(root, run_names)
  if not records:
    return {}
  metrics_ = {record.metric for record in records}
  if len(metrics_) != 1:
    raise MixedMetricsError(f"The runs in {root} report different metrics ({', '.join(metrics_)}); "
                     'a study holds one experiment family.')
  summaries = {split: summarize(records, split) for split in SPLITS}
  write_csv(root / 'results.csv', records)
  (root / 'results.md').write_text(f'# Study: {suite}\n\n{_markdown_sections(records, "##")}')
  for split, summary in summaries.items():
    study_plots.plot_metric(root / f'{split}.png', summary, records[0].metric,
                            records[0].axis, f'{suite}: {SPLIT_TITLES[split].lower()}',
                            _columns(summary))
  if _diag_keys(records):
    study_plots.plot_diagnostics(root / 'diagnostics.png', records, _diag_keys(records))
  (root / 'REPORT.md').write_text(report(suite, run_names, records, root, command))
  return summaries
