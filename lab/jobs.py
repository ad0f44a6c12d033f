"""A study's runs as commands: each one `python -m seqpe_jax.main` or `seqpe_jax.evaluate`
in its own process, run here N at a time or submitted to Slurm, resumable either way.

A run is finished when its workdir holds the file its command writes last; a run that
stopped on a non-finite loss (exit 3) is a result too (DIVERGED in its workdir).
"""

import dataclasses
import json
import pathlib
import shlex
import signal
import subprocess
import sys
import time

from seqpe_jax import cli

DIVERGED = 'diverged.txt'
SUBMITTED = 'slurm_submitted.txt'
LOG = 'study.log'
TIMINGS = 'timings.json'
SLURM_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'gpu_slurm.sh'


class JobError(RuntimeError):
  """A run failed for a reason other than divergence or preemption; one sentence."""


class Preempted(RuntimeError):
  """A run (or the study) was stopped by SIGTERM or SIGINT after saving; rerun to resume."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


def _flag_value(value) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(map(str, value)) + (',)' if len(value) == 1 else ')')
  return repr(value) if isinstance(value, float) else str(value)


def config_flags(overrides: dict) -> list[str]:
  """{'optimizer.lr': 3e-4} -> ['--config.optimizer.lr=0.0003']."""
  return [f'--config.{key}={_flag_value(value)}' for key, value in overrides.items()]


@dataclasses.dataclass(eq=False)
class Job:
  """One process of a study: what it runs, where it writes, and the file that says it is done."""
  label: str
  directory: pathlib.Path
  module: str  # seqpe_jax.main | seqpe_jax.evaluate
  args: list[str]
  done_file: str

  @property
  def finished(self) -> bool:
    return (self.directory / self.done_file).exists()

  @property
  def diverged(self) -> bool:
    return (self.directory / DIVERGED).exists()

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, '-m', self.module, *self.args]


def train_job(label: str, directory: pathlib.Path, config: str, overrides: dict) -> Job:
  """Training (with the run's own final sweep, on the split the overrides name)."""
  return Job(label, directory, 'seqpe_jax.main',
             [f'--config={config}', f'--workdir={directory}', *config_flags(overrides)],
             'extrapolation.json')


def evaluate_job(label: str, directory: pathlib.Path, split: str, name: str = '',
                 overrides: dict | None = None) -> Job:
  """A sweep of a finished run on `split`, optionally with evaluation overrides."""
  args = [f'--workdir={directory}', f'--split={split}']
  args += [f'--name={name}', *config_flags(overrides or {})] if name else []
  suffix = ''.join(f'_{part}' for part in (split, name) if part)
  return Job(label, directory, 'seqpe_jax.evaluate', args, f'extrapolation{suffix}.json')


def _duration(seconds: float) -> str:
  return f'{seconds:.0f} s' if seconds < 90 else f'{seconds / 60:.0f} min'


def _record_time(root: pathlib.Path, job: Job, seconds: float) -> None:
  """Adds a process's wall time to its run's total: a run resumed over several sittings
  counts every one of them."""
  path = root / TIMINGS
  times = json.loads(path.read_text()) if path.exists() else {}
  times[job.label] = round(times.get(job.label, 0.0) + seconds, 1)
  path.write_text(json.dumps(times, indent=1, sort_keys=True) + '\n')


def _last_line(path: pathlib.Path) -> str:
  lines = [l for l in path.read_text(errors='replace').splitlines() if l.strip()] \
      if path.exists() else []
  return lines[-1].strip() if lines else '(no output)'


def run_local(jobs: list[Job], root: pathlib.Path, parallel: int = 1,
              python: str = sys.executable) -> None:
  """Runs the unfinished `jobs` here, `parallel` at a time, each with its output in its
  directory's study.log. SIGTERM or SIGINT to the study reaches every running process (they
  save and stop), then Preempted is raised; so is a run's own preemption status."""
  pending = [job for job in jobs if not (job.finished or job.diverged)]
  running: dict[subprocess.Popen, tuple[Job, float]] = {}
  stopping = []  # Exit statuses the study ends with: 130 for Ctrl-C, 143 for SIGTERM.
  def forward(signum, _):
    stopping.append(130 if signum == signal.SIGINT else cli.EXIT_PREEMPTED)
    for process in running:
      process.send_signal(signal.SIGTERM)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  failure = None
  total, done = len(pending), 0
  try:
    while (pending and not stopping and failure is None) or running:
      while pending and len(running) < parallel and not stopping and failure is None:
        busy = {j.directory for j, _ in running.values()}  # One writer per run directory.
        job = next((j for j in pending if j.directory not in busy), None)
        if job is None:
          break
        pending.remove(job)
        job.directory.mkdir(parents=True, exist_ok=True)
        with open(job.directory / LOG, 'a') as log:
          process = subprocess.Popen(job.command(python), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # Ctrl-C reaches it through us.
        running[process] = (job, time.perf_counter())
        print(f'  started  {job.label}', flush=True)
      time.sleep(0.5)
      for process in [p for p in running if p.poll() is not None]:
        job, start = running.pop(process)
        seconds, status = time.perf_counter() - start, process.returncode
        done += 1
        _record_time(root, job, seconds)
        if status == 0:
          print(f'  finished {job.label} in {_duration(seconds)} ({done}/{total})', flush=True)
        elif status == cli.EXIT_NONFINITE:
          (job.directory / DIVERGED).write_text(_last_line(job.directory / LOG) + '\n')
          print(f'  diverged {job.label} (a result; delete {job.directory / DIVERGED} to '
                'retry)', flush=True)
        elif status in (cli.EXIT_PREEMPTED, 130) or stopping:
          stopping.append(130 if status == 130 else cli.EXIT_PREEMPTED)
        else:
          failure = (f'{job.label} stopped with exit status {status}: '
                     f'{_last_line(job.directory / LOG)} (log: {job.directory / LOG}).')
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  if failure:
    raise JobError(failure)
  if stopping:
    status = 130 if 130 in stopping else cli.EXIT_PREEMPTED
    raise Preempted('The study was stopped after its running runs saved; run the same '
                    'command again to resume.', status)


def submit_slurm(jobs: list[Job], dry_run: bool = False) -> int:
  """Submits each unfinished, unsubmitted training job through launch/gpu_slurm.sh (which
  requeues on preemption); returns how many were submitted (or would be, with dry_run)."""
  count = 0
  for job in jobs:
    if job.finished or job.diverged or (job.directory / SUBMITTED).exists():
      continue
    if job.module != 'seqpe_jax.main':
      raise JobError(f'{job.label} is an evaluation; run it here (without --dispatch=slurm).')
    command = ['sbatch', f'--job-name={job.label}', str(SLURM_SCRIPT),
               job.args[0].removeprefix('--config='), str(job.directory), *job.args[2:]]
    count += 1
    if dry_run:
      print(shlex.join(command))
      continue
    job.directory.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
      raise JobError(f'sbatch refused {job.label}: {(out.stderr or out.stdout).strip()}')
    (job.directory / SUBMITTED).write_text(out.stdout)
  return count


def print_commands(jobs: list[Job], python: str = 'python') -> int:
  """--dry-run here: the command of every unfinished job, one per line."""
  pending = [job for job in jobs if not (job.finished or job.diverged)]
  for job in pending:
    print(shlex.join(job.command(python)))
  return len(pending)
