"""A fair study's tables, plots and report, rebuilt from its runs' files (see study.py).

    DIR/search.md   validation, every configuration of every PE (the choice in bold)
    DIR/valid.md    validation, the chosen configurations' final runs, per protocol
    DIR/results.md, results.csv, test_<protocol>.png, REPORT.md   after --final: test

A QA study's tables show each of suites.METRICS['qa'] (its first in the file names without a
suffix), and heatmaps of each PE by length and needle depth (mean over seeds).
"""

import csv
import json
import math
import pathlib

import numpy as np
from scipy import stats

from lab import jobs as job_runner, plots
from lab.suites import METRICS, QA_GATE, Suite, criterion, score
from seqpe_jax.tasks import qa

# ------------------------------------------------------------------ Reading runs.


def _sweep(run_dir: pathlib.Path, suffix: str = '', metric: str = '',
           full: bool = False) -> dict[int, float] | None:
  """{x: value of `metric` (default: the run's own)} of extrapolation{suffix}.json; with
  `full`, {x: every value of the sweep at x}."""
  path = run_dir / f'extrapolation{suffix}.json'
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  return {int(x): values if full else values[metric or record['metric']]
          for x, values in record['results'].items()}


def _metric(root: pathlib.Path) -> tuple[str, str]:
  """(metric, axis label) of the study, from any of its sweeps."""
  for path in sorted(root.glob('final/*/*/extrapolation.json')):
    record = json.loads(path.read_text())
    return record['metric'], record['axis']
  return '', ''


def metrics(root: pathlib.Path, suite: Suite) -> tuple[str, ...]:
  """The metrics the tables show: the family's (QA), else the runs' own."""
  return METRICS.get(suite.family) or (_metric(root)[0],)


def rows_by_seed(root: pathlib.Path, suite: Suite, split: str, protocol: str | None,
                 metric: str = '') -> dict[str, dict[int, dict[int, float]]]:
  """{row: {seed: {x: value}}} of the final runs read in `protocol` (None: every entrant,
  whatever its protocol) on `split` ('valid': the run's own sweep; 'test': --final's), and
  of the transforms read in it."""
  own = '' if split == 'valid' else '_test'
  rows = {}
  for e in suite.entrants:
    if protocol is None or protocol in e.protocols:
      rows[e.name] = {s: v for s in range(suite.seeds)
                      if (v := _sweep(root / 'final' / e.name / f'seed{s}', own, metric))}
  for t in suite.transforms:
    if t.protocol == protocol:
      rows[t.name] = {s: v for s in range(suite.seeds)
                      if (v := _sweep(root / 'final' / t.entrant / f'seed{s}',
                                      f'_{split}_{t.name}', metric))}
  return {name: by_seed for name, by_seed in rows.items() if by_seed}


# ------------------------------------------------------------------ Numbers.


def _number(value: float) -> str:
  return f'{value:.1f}' if abs(value) >= 100 else f'{value:.4g}'


def mean_std(by_seed: dict[int, dict[int, float]], x: int) -> tuple[float, float | None, int]:
  values = [v[x] for v in by_seed.values() if x in v]
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std, len(values)


def _cell(stats_: tuple, bold: bool, seeds_expected: int) -> str:
  mean, std, n = stats_
  text = _number(mean) if std is None else f'{_number(mean)} ± {std:.2g}'
  text += '' if n >= seeds_expected else f' ({n} of {seeds_expected} seeds)'
  return f'**{text}**' if bold else text


def columns(rows: dict) -> list[int]:
  return sorted({x for by_seed in rows.values() for v in by_seed.values() for x in v})


def table(rows: dict, lower_is_better: bool, label: str = 'PE', seeds: int = 1) -> str:
  """Markdown: mean ± std over seeds per row and column, the best mean in bold; a cell with
  fewer than `seeds` seeds says so."""
  xs = columns(rows)
  best = {x: (min if lower_is_better else max)(
      mean_std(r, x)[0] for r in rows.values() if any(x in v for v in r.values())) for x in xs}
  lines = [f"| {label} | {' | '.join(map(str, xs))} |", '|---' * (len(xs) + 1) + '|']
  for name, by_seed in rows.items():
    cells = [_cell(mean_std(by_seed, x), mean_std(by_seed, x)[0] == best[x], seeds)
             if any(x in v for v in by_seed.values()) else '' for x in xs]
    lines.append(f"| {name} | {' | '.join(cells)} |")
  return '\n'.join(lines)


def paired(focus: dict[int, dict[int, float]], other: dict[int, dict[int, float]], x: int,
           lower_is_better: bool) -> dict:
  """SeqPE against one other PE at column x, paired by seed: the per-seed differences
  (focus - other), on how many seeds the focus is better, and a 95% t-interval of the mean
  difference; 'not separable' when the interval holds 0."""
  seeds = sorted(s for s in focus if s in other and x in focus[s] and x in other[s])
  diffs = np.array([focus[s][x] - other[s][x] for s in seeds])
  better = int(np.sum(diffs < 0 if lower_is_better else diffs > 0))
  mean = float(np.mean(diffs)) if len(diffs) else math.nan
  if len(diffs) > 1:
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
  else:
    half = math.inf
  low, high = mean - half, mean + half
  if low <= 0 <= high or not len(diffs):
    verdict = f'not separable (better on {better} of {len(diffs)} seeds)'
  else:
    word = 'better' if (high < 0) == lower_is_better else 'worse'
    count = better if word == 'better' else len(diffs) - better
    verdict = f'{word} on {count} of {len(diffs)} seeds, interval excludes 0'
  return {'seeds': seeds, 'differences': diffs.tolist(), 'better_on': better, 'mean': mean,
          'interval': (low, high), 'verdict': verdict}


def focus_row(suite: Suite, protocol: str) -> str | None:
  """The SeqPE entrant read in `protocol` (the row the paired comparison is about)."""
  names = [e.name for e in suite.entrants
           if protocol in e.protocols and e.config_file.endswith('_seqpe.py')]
  return names[0] if names else None


PAIRED_HEADER = ['| column | other | per-seed difference (SeqPE − other) | mean [95% interval] | '
                 'verdict |', '|---|---|---|---|---|']


def _paired_lines(found: list[dict]) -> str:
  """The paired table of `found` (column, other and `paired`'s result per line). Fractions
  (accuracy, exact match) get three decimals, perplexities two: one choice per table."""
  d = 3 if all(abs(v) < 1 for r in found for v in r['differences']) else 2
  lines = list(PAIRED_HEADER)
  for r in found:
    diffs = ', '.join(f'{v:+.{d}f}' for v in r['differences'])
    low, high = r['interval']
    lines.append(f"| {r['column']} | {r['other']} | {diffs} | {r['mean']:+.{d}f} "
                 f"[{low:+.{d}f}, {high:+.{d}f}] | {r['verdict']} |")
  return '\n'.join(lines)


def paired_table(rows: dict, focus: str, lower_is_better: bool) -> tuple[str, list[dict]]:
  """Per column: the best other row by mean, the per-seed differences, the verdict."""
  found = []
  for x in columns(rows):
    others = {n: r for n, r in rows.items() if n != focus and any(x in v for v in r.values())}
    if focus not in rows or not others:
      continue
    pick = (min if lower_is_better else max)(others, key=lambda n: mean_std(others[n], x)[0])
    found.append({'column': x, 'other': pick,
                  **paired(rows[focus], others[pick], x, lower_is_better)})
  return _paired_lines(found), found


def rivals_table(focus: dict, rivals: dict, lower_is_better: bool) -> tuple[str, list[dict]]:
  """SeqPE's row against each rival row ({name: {seed: {x: value}}}) at every column both
  have, paired by seed: one line per rival and column."""
  found = []
  for name, other in rivals.items():
    for x in columns({'focus': focus, name: other}):
      if any(x in v for v in focus.values()) and any(x in v for v in other.values()):
        found.append({'column': x, 'other': name,
                      **paired(focus, other, x, lower_is_better)})
  return _paired_lines(found), found


# ------------------------------------------------------------------ Files.


def write_search(root: pathlib.Path, suite: Suite, suite_name: str,
                 spaces: dict[str, dict]) -> str:
  """DIR/search.md: every configuration's validation sweep and criterion (seed 0);
  `spaces`: each PE's configurations (study.search_space)."""
  description, lower = criterion(suite.family)
  chosen_path = root / 'CHOSEN.json'
  chosen = json.loads(chosen_path.read_text())['choices'] if chosen_path.exists() else {}
  staged = (' The variants trained at the PE\'s best learning rate of the first three.'
            if suite.variants_at_best_lr else '')
  parts = [f'# {suite_name}: search (validation, seed 0, {suite.search_steps} steps)\n',
           f'Criterion: {description} ({"lower" if lower else "higher"} is better). Every PE '
           f'had {len(suite.entrants[0].search_space())} configurations.{staged}\n']
  for e in suite.entrants:
    rows, marks = {}, {}
    for name in spaces[e.name]:
      run_dir = root / 'search' / e.name / name
      sweep = _sweep(run_dir)
      if sweep:
        mark = ' (chosen)' if chosen.get(e.name, {}).get('configuration') == name else ''
        rows[f'{name}{mark}'] = {0: sweep}
        marks[f'{name}{mark}'] = score(suite.family, sweep)
      elif (run_dir / job_runner.DIVERGED).exists():
        marks[f'{name} (diverged)'] = None
    parts.append(f'## {e.name}\n')
    if rows:
      parts.append(table(rows, lower, 'configuration') + '\n')
    parts.append('Criterion: ' + ', '.join(f'{n} {_number(v) if v is not None else "—"}'
                                           for n, v in marks.items()) + '\n')
  text = '\n'.join(parts)
  (root / 'search.md').write_text(text)
  return text


# Held-out loss change (nats) when every position reads the first one's PE, below which a
# run's PE carries no position (seqpe_jax/diagnostics.py): it trained as NoPE.
DEAD_PE = 1e-3


def dead_pe_runs(root: pathlib.Path, suite: Suite) -> list[str]:
  """The final runs whose PE carried no position at their last logged step (PEs without
  positions aside, and runs without diagnostics).

  Not for QA fine-tunes: their loss covers the answer alone, which a model finds by content,
  so ablating positions barely moves it for any PE (ALiBi's QA runs: 2e-4 nats while their
  exact match falls with length); their LMs' study names the dead PEs."""
  if suite.family == 'qa':
    return []
  found = []
  for e in suite.entrants:
    for run in sorted((root / 'final' / e.name).glob('seed*/metrics.jsonl')):
      if json.loads((run.parent / 'config.json').read_text())['pe']['name'] == 'none':
        continue
      rows = [json.loads(line) for line in run.read_text().splitlines()]
      deltas = [r['diag/pe_ablation_delta'] for r in rows if 'diag/pe_ablation_delta' in r]
      if deltas and abs(deltas[-1]) < DEAD_PE:
        found.append(f'{e.name}/{run.parent.name}')
  return found


def _dead_pe_sentence(root: pathlib.Path, suite: Suite) -> list[str]:
  dead = dead_pe_runs(root, suite)
  return [f"PE carrying no position at the end of training (diag/pe_ablation_delta below "
          f"{DEAD_PE} nats), so trained as NoPE: {', '.join(dead)}.\n"] if dead else []


def write_valid(root: pathlib.Path, suite: Suite, suite_name: str, unfinished: int = 0) -> str:
  """DIR/valid.md: the final runs on validation, one table per protocol (and metric); for a
  QA study, whether its gate is met. With `unfinished` runs to go, the tables so far."""
  _, lower = criterion(suite.family)
  axis = _metric(root)[1]
  parts = [f'# {suite_name}: chosen configurations, validation (by {axis})\n']
  if unfinished:
    parts.append(f'{unfinished} final runs have not finished yet; the tables fill as they do.\n')
  parts += _dead_pe_sentence(root, suite)
  if suite.family == 'qa':
    parts.append(qa_gate(root, suite) + '\n')
  for metric in metrics(root, suite):
    for protocol in _protocols(suite):
      rows = rows_by_seed(root, suite, 'valid', protocol, metric)
      if rows:
        parts += [f'## {protocol}: {metric}\n', table(rows, lower, seeds=suite.seeds) + '\n']
  text = '\n'.join(parts)
  (root / 'valid.md').write_text(text)
  return text


def qa_gate(root: pathlib.Path, suite: Suite) -> str:
  """One sentence: whether some PE's mean validation exact match at the fine-tuning length
  reaches QA_GATE (before that, no longer length says anything)."""
  configs = sorted(root.glob('final/*/seed*/config.json'))
  if not configs:
    return 'Gate: no fine-tune has finished.'
  length = json.loads(configs[0].read_text())['data']['seq_len']
  means = {}
  for protocol in _protocols(suite):
    for name, by_seed in rows_by_seed(root, suite, 'valid', protocol, 'em').items():
      if any(length in v for v in by_seed.values()):
        means[name] = mean_std(by_seed, length)[0]
  if not means:
    return f'Gate: no run evaluated the fine-tuning length ({length} tokens).'
  best = max(means, key=means.get)
  verdict = 'met' if means[best] >= QA_GATE else 'not met'
  return (f'Gate (validation exact match >= {QA_GATE} at the fine-tuning length, {length} '
          f'tokens, for at least one PE): {verdict}; best {best} {means[best]:.2f}.')


def _protocols(suite: Suite) -> list[str]:
  found = {p for e in suite.entrants for p in e.protocols} | {t.protocol for t in suite.transforms}
  return [p for p in ('extend', 'interpolate') if p in found]


def write_final(root: pathlib.Path, suite: Suite, suite_name: str, chosen: dict, command: str,
                hardware: str) -> dict:
  """results.md / results.csv / test_<protocol>.png / REPORT.md from the test sweeps (and a
  QA study's heatmaps, extrapolation_depth_<pe>.png)."""
  _, lower = criterion(suite.family)
  axis = _metric(root)[1]
  names = metrics(root, suite)
  sections, comparisons, values = _dead_pe_sentence(root, suite), {}, {}
  if suite.family == 'qa':
    sections.append(qa_gate(root, suite) + '\n')
  for metric in names:
    suffix = '' if metric == names[0] else f'_{metric}'
    for protocol in _protocols(suite):
      rows = rows_by_seed(root, suite, 'test', protocol, metric)
      if not rows:
        continue
      sections += [f'## {protocol} (test, {metric} by {axis}, mean ± std over seeds)\n',
                   table(rows, lower, seeds=suite.seeds) + '\n']
      focus = focus_row(suite, protocol)
      if focus and focus in rows:
        text, found = paired_table(rows, focus, lower)
        comparisons[protocol + suffix] = found
        sections += [f'SeqPE ({focus}) against the best other PE of each column, paired by '
                     'seed:\n', text + '\n']
        rivals = suite.rivals.get(protocol, ())
        if rivals:
          every = rows_by_seed(root, suite, 'test', None, metric)
          text, found = rivals_table(rows[focus], {r: every[r] for r in rivals if r in every},
                                     lower)
          comparisons[f'{protocol}{suffix}_rivals'] = found
          sections += [f"SeqPE ({focus}) against each of {', '.join(rivals)} (whatever "
                       'protocol each is read in), paired by seed:\n', text + '\n']
      for name, by_seed in rows.items():
        for seed, v in by_seed.items():
          for x, value in v.items():
            values.setdefault((protocol, name, seed, x), {})[metric] = value
      summary = {name: {x: mean_std(r, x) for x in columns({name: r})} for name, r in rows.items()}
      plots.plot_metric(root / f'test_{protocol}{suffix}.png', summary, metric, axis,
                        f'{suite_name}, {protocol} (test)', columns(rows))
  with open(root / 'results.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['protocol', 'pe', 'seed', axis or 'x', *names])
    writer.writerows([*key, *(row.get(m, '') for m in names)]
                     for key, row in sorted(values.items()))
  if suite.family == 'qa':
    for e in suite.entrants:
      write_mean_heatmap(root, e.name, suite.seeds)
  results = '\n'.join(sections)
  (root / 'results.md').write_text(results)
  (root / 'REPORT.md').write_text(_report(suite, suite_name, chosen, command, hardware, results,
                                          _hours(root)))
  return {'comparisons': comparisons}


def write_mean_heatmap(root: pathlib.Path, name: str, seeds: int):
  """DIR/extrapolation_depth_<name>.png: a QA PE's test sweep by length and needle depth,
  every value the mean over its seeds."""
  sweeps = [v for s in range(seeds)
            if (v := _sweep(root / 'final' / name / f'seed{s}', '_test', full=True))]
  if not sweeps:
    return None
  mean = {x: {k: float(np.mean([s[x][k] for s in sweeps if x in s and k in s[x]]))
              for k in sweeps[0][x]} for x in sweeps[0]}
  return qa.write_depth_heatmap(root, mean, title=f'{name} (test, mean of {len(sweeps)} seeds)',
                                suffix=f'_{name}')


def _hours(root: pathlib.Path) -> float:
  path = root / job_runner.TIMINGS
  return sum(json.loads(path.read_text()).values()) / 3600 if path.exists() else 0.0


def _how_chosen(suite: Suite, chosen: dict) -> str:
  if chosen.get('lm_study'):
    return (f"Every PE fine-tuned the final runs of its choice in the LM study "
            f"{chosen['lm_study']} (seed i from seed i; the `chosen` column) with the same QA "
            'recipe and budget; those runs were named in CHOSEN.json, committed before the '
            f'test split below was read, once. {suite.seeds} seeds.')
  return (f"Every PE had the same search budget; selection read the validation split only "
          f"({chosen['criterion']}, {chosen['search_steps']} steps, seed 0), and the choice "
          'was committed in CHOSEN.json before the test split below was read, once, for these '
          "runs only. The final runs train each choice at its config's budget with "
          f'{suite.seeds} seeds.')


def _report(suite, suite_name, chosen, command, hardware, results, hours) -> str:
  choices = '\n'.join(
      f"| {pe} | {c.get('lm', c['configuration'])} | {c['configurations_tried']} | "
      f"{_number(c['score']) if c['score'] is not None else '—'} | "
      f"`{json.dumps(c['overrides'])}` |" for pe, c in chosen['choices'].items())
  return f"""# {suite_name}: fair study

Command: `{command}` (after the search and final stages: `python -m lab.study
--suite={suite_name} --workdir=...`). Hardware: {hardware}. Compute of every run of this
study, summed: {hours:.1f} h. Code: commit {chosen.get('commit', 'unknown')} chose.

{_how_chosen(suite, chosen)}

| PE | chosen | configurations tried | validation criterion | overrides |
|---|---|---|---|---|
{choices}

{results}
"""
