"""The train step of this checkout against an earlier revision, timed in one sitting.

    python -m benchmarks.compare --base=REV [--pes=ape,seqpe] [--batches=8,32]
        [--passes=3] [--repeats=3] [--clock=wall|cpu] [--variant=S/16] [--image_size=224]
        [--dtype=float32] [--override=KEY=VALUE ...] [--out=FILE.json]

The regression check to run before merging a change to a hot path. REV (anything git
names a commit by: a hash, a branch, HEAD~3) is checked out in a scratch `git worktree`,
removed afterwards; the current side is this checkout as it stands, uncommitted edits
included. Every measurement is a fresh process (`benchmarks.step_cell`) that imports one
side's library, prepares XLA as that side's entry points do, and compiles and times the
trainer's step (SeqPE: its unshifted branch) for one PE at one batch: the paper's ViT
recipe at --variant and --image_size on synthetic images. A pass measures every cell on
both sides, in alternating order from cell to cell and pass to pass, so a change in the
machine's load falls on both sides alike. Printed per cell: each side's median seconds
over the passes, the ratio current / base (median of the passes' ratios, and their
range), and each side's peak RSS.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from seqpe_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
SIDES = ('base', 'current')


def resolve(revision: str) -> str:
  """The commit `revision` names; one sentence when git knows no such commit."""
  found = subprocess.run(['git', 'rev-parse', '--verify', '--quiet', f'{revision}^{{commit}}'],
                         cwd=REPO, capture_output=True, text=True, check=False)
  if found.returncode != 0:
    raise ValueError(f'--base={revision} names no commit of this repository; give a hash, '
                     'branch or tag that `git log` shows.')
  return found.stdout.strip()


def describe(commit: str) -> str:
  return _git('log', '-1', '--format=%h %s', commit)[:90]


def _git(*args: str) -> str:
  return subprocess.run(['git', *args], cwd=REPO, capture_output=True, text=True,
                        check=True).stdout.strip()


@contextlib.contextmanager
def scratch_worktree(commit: str):
  """A detached checkout of `commit` in a temporary folder, removed on the way out."""
  parent = tempfile.mkdtemp(prefix='seqpe_compare_')
  tree = os.path.join(parent, 'base')
  try:
    _git('worktree', 'add', '--detach', '--quiet', tree, commit)
    yield tree
  finally:
    subprocess.run(['git', 'worktree', 'remove', '--force', tree], cwd=REPO,
                   capture_output=True, check=False)
    shutil.rmtree(parent, ignore_errors=True)
    _git('worktree', 'prune')


def cell_command(tree: str, pe: str, batch: int, args) -> list[str]:
  command = [sys.executable, '-m', 'benchmarks.step_cell', f'--tree={tree}', f'--pe={pe}',
             f'--batch={batch}', f'--repeats={args.repeats}', f'--variant={args.variant}',
             f'--image_size={args.image_size}', f'--dtype={args.dtype}',
             f'--clock={args.clock}']
  return command + [f'--override={o}' for o in args.override]


def measure(side: str, tree: str, pe: str, batch: int, args) -> dict:
  """One fresh process's measurement of one cell on one side."""
  load = os.getloadavg()[0]
  done = subprocess.run(cell_command(tree, pe, batch, args), cwd=REPO, capture_output=True,
                        text=True, check=False)
  if done.returncode != 0:
    tail = '\n'.join(done.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f'The {side} side failed at {pe}, batch {batch}:\n{tail}')
  record = json.loads(done.stdout.strip().splitlines()[-1])
  return {'side': side, 'pe': pe, 'batch': batch, 'load_1min': load, **record}


def plan(cells: list[tuple[str, int]], passes: int):
  """(pass, pe, batch, side) in measuring order: the sides swap from cell to cell and pass
  to pass, so neither side is always the one measured first."""
  for p in range(passes):
    for i, (pe, batch) in enumerate(cells):
      for side in (SIDES if (p + i) % 2 == 0 else SIDES[::-1]):
        yield p, pe, batch, side


def summarise(records: list[dict], cells: list[tuple[str, int]]) -> list[dict]:
  """Per cell: each side's median seconds and peak RSS, and the passes' current/base ratios."""
  rows = []
  for pe, batch in cells:
    mine = [r for r in records if (r['pe'], r['batch']) == (pe, batch)]
    by_side = {s: [r for r in mine if r['side'] == s] for s in SIDES}
    ratios = [c['seconds'] / b['seconds'] for b, c in zip(by_side['base'], by_side['current'])]
    rows.append({'pe': pe, 'batch': batch, 'ratios': ratios,
                 **{f'{s}_seconds': statistics.median(r['seconds'] for r in by_side[s])
                    for s in SIDES},
                 **{f'{s}_peak_rss_gb': statistics.median(r['peak_rss_gb'] for r in by_side[s])
                    for s in SIDES}})
  return rows


def report(rows: list[dict]) -> str:
  lines = [f'{"cell":<10} | {"base s":>8} | {"current s":>9} | {"current/base":>12} | '
           f'{"range":>11} | peak RSS base / current (GB)']
  for r in rows:
    lines.append(f'{r["pe"] + " b" + str(r["batch"]):<10} | {r["base_seconds"]:8.3f} | '
                 f'{r["current_seconds"]:9.3f} | {statistics.median(r["ratios"]):12.3f} | '
                 f'{min(r["ratios"]):5.3f}-{max(r["ratios"]):5.3f} | '
                 f'{r["base_peak_rss_gb"]:.2f} / {r["current_peak_rss_gb"]:.2f}')
  return '\n'.join(lines)


def run(args) -> dict:
  commit = resolve(args.base)
  cells = [(pe, batch) for batch in args.batches for pe in args.pes]
  dirty = ' + uncommitted edits' if _git('status', '--porcelain', '--untracked-files=no') else ''
  print(f'base {describe(commit)}\ncurrent {describe("HEAD")}{dirty}\n'
        f'{args.passes} passes, {args.clock} seconds (median of {args.repeats} steps per '
        f'process); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start',
        flush=True)
  records = []
  with scratch_worktree(commit) as base_tree:
    trees = {'base': base_tree, 'current': str(REPO)}
    for p, pe, batch, side in plan(cells, args.passes):
      record = measure(side, trees[side], pe, batch, args)
      records.append({'pass': p, **record})
      print(f'  pass {p + 1} {pe} b{batch} {side:<7}: {record["seconds"]:.3f} s, peak RSS '
            f'{record["peak_rss_gb"]:.2f} GB (load {record["load_1min"]:.1f})', flush=True)
  rows = summarise(records, cells)
  print(report(rows))
  print(f'load average {os.getloadavg()[0]:.1f} at the end')
  result = {'base': commit, 'current': _git('rev-parse', 'HEAD') + dirty, 'rows': rows,
            'records': records, 'args': vars(args)}
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--base', required=True, help='the revision to compare against')
  parser.add_argument('--pes', default='ape,seqpe', type=lambda s: s.split(','),
                      help='comma-separated: ape, seqpe')
  parser.add_argument('--batches', default='8,32',
                      type=lambda s: [int(b) for b in s.split(',')])
  parser.add_argument('--passes', type=int, default=3,
                      help='measurements of each cell on each side, in alternating order')
  parser.add_argument('--repeats', type=int, default=3, help='timed steps per process')
  parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                      help="'cpu': each process's CPU seconds, steadier on a shared machine")
  parser.add_argument('--variant', default='S/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--override', action='append', default=[],
                      help='a config field KEY=VALUE for both sides (repeatable)')
  parser.add_argument('--out', default='', help='also write every measurement to this JSON')
  args = parser.parse_args(argv)
  unknown = [pe for pe in args.pes if pe not in ('ape', 'seqpe')]
  if unknown:
    raise ValueError(f"--pes takes ape and seqpe, not {', '.join(unknown)}.")
  if args.passes < 1 or args.repeats < 1:
    raise ValueError('--passes and --repeats must be at least 1.')
  return args


def main():
  # SIGTERM (a scheduler's timeout) unwinds like Ctrl-C: the measuring process is killed
  # and the scratch worktree removed on the way out.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(cli.EXIT_PREEMPTED))
  with cli.exit_statuses():
    run(parse_args())


if __name__ == '__main__':
  main()
