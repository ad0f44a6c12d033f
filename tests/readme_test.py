"""Every results table in the README (and in the lab's results page it links to) comes from a
committed file: each cell equals the mean (± std) over seeds of the rows of the results.csv
its marker names, to the printed digits."""

import collections
import csv
import pathlib
import re

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = re.compile(r'<!-- results: (\S+) split=(\w+) -->')


def results_tables(text: str) -> list[tuple[str, str, list[str]]]:
  """(csv path, split, table lines) for every table that follows a results marker."""
  lines = text.splitlines()
  found = []
  for i, line in enumerate(lines):
    match = MARKER.search(line)
    if match:
      table = []
      for row in lines[i + 1:]:
        if not row.startswith('|'):
          break
        table.append(row)
      found.append((match[1], match[2], table))
  return found


def _cells(row: str) -> list[str]:
  return [cell.strip() for cell in row.strip().strip('|').split('|')]


def column_value(header: str) -> int:
  """'1,024 (8×)' -> 1024."""
  return int(re.match(r'[\d,]+', header)[0].replace(',', ''))


def read_values(csv_path: pathlib.Path, split: str) -> dict[tuple[str, int], list[float]]:
  """{(run, x): the values over seeds} of a results.csv: the earlier studies' (run, seed,
  split, x, metric, value) or a fair study's --final (protocol, pe, seed, <axis>, <metric>,
  ...: test only, the first metric)."""
  by_seed = collections.defaultdict(dict)  # A PE read in two protocols is listed twice.
  with open(csv_path, newline='') as f:
    reader = csv.DictReader(f)
    fair = 'pe' in reader.fieldnames
    axis, metric = reader.fieldnames[3:5]  # A fair study's; unused for the others.
    for row in reader:
      if fair and split == 'test':
        by_seed[(row['pe'], int(row[axis]))][row['seed']] = float(row[metric])
      elif not fair and row['split'] == split:
        by_seed[(row['run'], int(row['x']))][row['seed']] = float(row['value'])
  return {key: list(values.values()) for key, values in by_seed.items()}


def check_table(csv_path: pathlib.Path, split: str, table: list[str]) -> list[str]:
  """The cells that do not match the file: '<run> at <x>: printed P, file F'."""
  values = read_values(csv_path, split)
  columns = [column_value(h) for h in _cells(table[0])[1:]]
  wrong = []
  for row in table[2:]:
    label, *cells = _cells(row)
    run = re.findall(r'`([^`]+)`', label)[-1]
    for x, cell in zip(columns, cells):
      numbers = re.findall(r'\d+\.\d+', cell)
      found = values.get((run, x))
      if not found:
        wrong.append(f'{run} at {x}: no rows in {csv_path}')
        continue
      want = [np.mean(found)] + ([np.std(found, ddof=1)] if len(numbers) > 1 else [])
      for printed, value in zip(numbers, want):
        if f'{value:.{len(printed.split(".")[1])}f}' != printed:
          wrong.append(f'{run} at {x}: printed {printed}, file {value:.4f}')
  return wrong


# The pages whose results tables are checked (marker paths are from the repository root).
PAGES = ('README.md', 'lab/results/README.md')


@pytest.mark.parametrize('page', PAGES)
def test_each_page_has_results_tables(page):
  tables = results_tables((REPO_ROOT / page).read_text())
  assert tables and all(len(t) > 2 for _, _, t in tables)


@pytest.mark.parametrize('path, split, table', [
    table for page in PAGES for table in results_tables((REPO_ROOT / page).read_text())])
def test_every_readme_number_matches_its_committed_file(path, split, table):
  assert not check_table(REPO_ROOT / path, split, table)


def test_a_changed_number_is_caught():
  path, split, table = results_tables((REPO_ROOT / 'README.md').read_text())[0]
  row = table[2]
  number = re.findall(r'\d+\.\d+', row)[0]
  bumped = f'{float(number) + 0.1:.{len(number.split(".")[1])}f}'
  changed = [*table[:2], row.replace(number, bumped, 1), *table[3:]]
  assert check_table(REPO_ROOT / path, split, changed)


def test_a_pe_read_in_two_protocols_counts_each_seed_once(tmp_path):
  """NoPE's runs are in both of the ViT study's tables, so results.csv lists them twice."""
  rows = ['protocol,pe,seed,resolution (px),accuracy']
  rows += [f'{protocol},nope,{seed},28,{value}' for protocol in ('extend', 'interpolate')
           for seed, value in enumerate((0.80, 0.81, 0.83))]
  (tmp_path / 'results.csv').write_text('\n'.join(rows) + '\n')
  table = ['| PE (run) | 28 px |', '|---|---|', '| no PE (`nope`) | 0.813 ± 0.015 |']
  assert not check_table(tmp_path / 'results.csv', 'test', table)  # std of 3, ddof 1.
