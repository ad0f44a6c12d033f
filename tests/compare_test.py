"""benchmarks.compare: both sides measured in processes of their own, alternating, each
importing its own tree's library; a revision git does not know is one sentence."""

import json
import os
import pathlib
import subprocess
import sys

from benchmarks import compare

REPO = pathlib.Path(__file__).resolve().parents[1]
# A ViT-nano on a 4x4 grid: a step of milliseconds, so the test is compile-bound.
TINY = ['--variant=nano/4', '--image_size=16', '--batches=4', '--pes=ape']


def run_compare(*args):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # One device, as users run.
  return subprocess.run([sys.executable, '-m', 'benchmarks.compare', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600, check=False)


def worktrees() -> str:
  return subprocess.run(['git', 'worktree', 'list'], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout


def test_head_against_itself_measures_both_sides_and_finds_no_change(tmp_path):
  out = tmp_path / 'compare.json'
  done = run_compare('--base=HEAD', *TINY, '--passes=1', '--repeats=20', '--clock=cpu',
                     f'--out={out}')
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  libraries = {r['side']: pathlib.Path(r['library']).resolve() for r in result['records']}
  assert libraries['current'] == REPO / 'seqpe_jax' / '__init__.py'
  # The base side imported the scratch checkout's library, which is gone afterwards.
  assert REPO not in libraries['base'].parents
  assert libraries['base'].parts[-2:] == ('seqpe_jax', '__init__.py')
  assert not libraries['base'].exists() and str(libraries['base'].parents[1]) not in worktrees()
  (row,) = result['rows']
  assert (row['pe'], row['batch'], len(row['ratios'])) == ('ape', 4, 1)
  assert 0.5 < row['ratios'][0] < 2.0, done.stdout  # The same code: ~1, within the noise.
  assert 'ape b4' in done.stdout and 'current/base' in done.stdout


def test_the_sides_alternate_from_cell_to_cell_and_pass_to_pass():
  order = [(p, pe, side) for p, pe, _, side in compare.plan([('ape', 8), ('seqpe', 8)], 2)]
  assert order == [(0, 'ape', 'base'), (0, 'ape', 'current'),
                   (0, 'seqpe', 'current'), (0, 'seqpe', 'base'),
                   (1, 'ape', 'current'), (1, 'ape', 'base'),
                   (1, 'seqpe', 'base'), (1, 'seqpe', 'current')]


def test_ratios_pair_each_pass_with_itself():
  records = [{'pe': 'ape', 'batch': 8, 'side': s, 'seconds': t, 'peak_rss_gb': m}
             for s, t, m in (('base', 2.0, 1.0), ('current', 3.0, 1.5),
                             ('current', 1.0, 1.5), ('base', 4.0, 1.0))]
  (row,) = compare.summarise(records, [('ape', 8)])
  assert row['ratios'] == [1.5, 0.25]
  assert (row['base_seconds'], row['current_seconds']) == (3.0, 2.0)
  assert (row['base_peak_rss_gb'], row['current_peak_rss_gb']) == (1.0, 1.5)


def test_an_unknown_revision_is_one_sentence_and_status_2():
  done = run_compare('--base=no-such-revision-7f3a', *TINY)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      'error: --base=no-such-revision-7f3a names no commit of this repository; give a hash, '
      'branch or tag that `git log` shows.']
