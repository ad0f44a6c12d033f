"""Position-encoding studies: every run of a suite, one budget, several seeds, one report.

    python -m lab.study --suite=lm|vit|ablations --workdir=DIR [--seeds=2]
        [--variant=smoke] [--steps=N] [--only=name1,name2]

trains every run of the suite (lab/suites.py) on the embedded default data with the same
number of steps, once per seed, then sweeps each trained model on the validation split as
well as the test split, and writes

    DIR/runs/<run>/seed<i>/   each run's training workdir (checkpoints, metrics.jsonl,
                              extrapolation.json, extrapolation_valid.json and, for
                              1-D tasks, position_profile_<L>.json/png)
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

import dataclasses
import importlib
import importlib.util
import json
import pathlib
import shlex
import sys
import time

import ml_collections
import numpy as np
from absl import app, flags

from lab import position_profile, report as study_report
from lab.report import DIVERGED, SPLITS, is_finished
from lab.suites import STEP_COUNT_KEYS, SUITES, Run
from seqpe_jax import cli, evaluate, metrics, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Longest length the study profiles (position_profile holds layers x heads x L^2 logits).
PROFILE_LENGTH = 2048
VARIANTS = ('', 'smoke')

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


def _recorded_differences(run_dir: pathlib.Path, config: ml_collections.ConfigDict) -> list:
  """How the config a run directory was started with differs from `config` (none if new)."""
  path = run_dir / 'config.json'
  if not path.exists():
    return []
  recorded = metrics.flatten_config(json.loads(path.read_text()))
  current = metrics.flatten_config(json.loads(config.to_json_best_effort()))
  # Any other key the record lacks was added to the configs after the run started; its
  # default keeps the behaviour the run had.
  return [f'{key}: {recorded.get(key)!r} then, {current.get(key)!r} now'
          for key in sorted(recorded) if recorded[key] != current.get(key)]


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
      train.train_and_evaluate(job.config, str(job.directory))
    except cli.Preempted as e:
      raise Preempted(f'SIGTERM stopped {job.label} after a checkpoint; run the same command '
                      'again to resume.') from e
    except FloatingPointError as e:  # A diverged run is a result; the others go on.
      (job.directory / DIVERGED).write_text(f'{e}\n')
      print(f'{job.label} diverged: {e} (delete {job.directory / DIVERGED} to retry).',
            flush=True)
      return False
  evaluate.evaluate_workdir(str(job.directory), split='valid')
  if 'lengths' in job.config.eval:  # A 1-D task: where its PE makes attention look.
    position_profile.profile_run(str(job.directory),
                                 min(max(job.config.eval.lengths), PROFILE_LENGTH))
  return True


def _command_line(suite, workdir, seeds, variant, steps, only) -> str:
  args = ['python', '-m', 'lab.study', f'--suite={suite}', f'--workdir={workdir}',
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
  names = [run.name for run in SUITES[suite]]  # The report covers every run of the suite.
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
      study_report.write_outputs(root, suite, names, command)
  finally:  # Also after SIGTERM or an error: the finished runs get their tables.
    summary = study_report.write_outputs(root, suite, names, command)
  return {'trained': trained, 'diverged': diverged,
          'finished': sum(is_finished(job.directory) for job in jobs), 'total': len(jobs),
          'summary': summary}


# ------------------------------------------------------------------ Command line.


def _exit_with(message: str, status: int) -> None:
  print(message, file=sys.stderr)
  sys.exit(status)


def main(argv):
  if len(argv) > 1:
    _exit_with(f'Unexpected arguments: {" ".join(argv[1:])}.', 2)
  if not flags.FLAGS.suite or not flags.FLAGS.workdir:
    _exit_with('Pass --suite=lm|vit|ablations and --workdir=DIR.', 2)
  cli.prepare_process()
  try:
    run_study(flags.FLAGS.suite, flags.FLAGS.workdir, seeds=flags.FLAGS.seeds,
              variant=flags.FLAGS.variant, steps=flags.FLAGS.steps, only=flags.FLAGS.only)
  except (StudyError, study_report.MixedMetricsError) as e:  # One sentence, not absl's usage page and a traceback.
    _exit_with(str(e), 2)
  except Preempted as e:
    _exit_with(str(e), cli.EXIT_PREEMPTED)
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
