"""Fair position-encoding studies: the same search budget for every PE, selection on the
validation split, three seeds of each choice, and the test split read once.

    python -m lab.study --suite=lm|vit --workdir=DIR [--jobs=N] [--variant=smoke]
        [--dispatch=local|slurm] [--dry-run]
    python -m lab.study --suite=lm|vit --workdir=DIR --final
    python -m lab.study --suite=qa --workdir=DIR [--lm_study=lab/results/lm_fair] [--final]

Stages, each resumable (a second invocation trains nothing that finished):
  search   every configuration of every PE's declared space (lab/suites.py): one seed,
           the suite's short budget, the run's sweep on the validation split only;
  choose   the best configuration per PE on validation (suites.criterion) goes to
           DIR/CHOSEN.json, with the criterion and how many configurations each PE had;
  final    each choice at its config's own budget with three seeds, validation only;
           DIR/valid.md is the table a decision may read;
  --final  once DIR/CHOSEN.json is committed: the test split of the chosen runs only (and
           the suite's evaluation-time transforms of them), then DIR/results.md, results.csv,
           test_<protocol>.png and REPORT.md, with SeqPE paired by seed against the best
           other PE of each column.
A QA study (`--suite=qa [--lm_study=DIR]`) has no search: every PE fine-tunes its LM study's
final runs (seed i from seed i) with the same QA recipe and budget. Its CHOSEN.json, written
before any run trains, names each PE's LM runs and PE overrides; PEs whose LM recipe that
study did not choose (SeqPE's reference) pretrain their own LMs under DIR/lm/ first. Its
tables show exact match, the gold answer's log-probability and its rank among candidates by
length, with length x depth heatmaps, and DIR/valid.md says whether the gate (exact match
>= suites.QA_GATE at the fine-tuning length for some PE) is met.

Exit status: 2 for bad arguments or a study directory that does not fit them, 130 / 143
when Ctrl-C / SIGTERM stopped it after its runs saved (rerun to resume).
"""

import dataclasses
import importlib
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys

from absl import app, flags

from lab import jobs as job_runner, report
from lab.suites import SUITES, Suite, SuiteError, criterion, score
from seqpe_jax import workdir_lock

CHOSEN = 'CHOSEN.json'


class StudyError(ValueError):
  """Bad arguments, or a study directory that does not fit them; one sentence."""


def get_suite(name: str, variant: str = '') -> Suite:
  if name not in SUITES:
    raise StudyError(f"Unknown suite '{name}'; use one of: {', '.join(SUITES)}.")
  if variant not in ('', 'smoke'):
    raise StudyError(f"Unknown --variant '{variant}'; use smoke, or leave it out.")
  suite = SUITES[name].smoke() if variant == 'smoke' else SUITES[name]
  suite.check(name)
  return suite


def load_config(config_file: str, variant: str = ''):
  """`get_config(variant)` of configs/<file>.py (what a run of the study starts from)."""
  module = importlib.import_module(f'configs.{pathlib.Path(config_file).stem}')
  return module.get_config(variant or None)


def _config_arg(entrant, variant: str) -> str:
  """configs/x.py[:recipe,size] for the --config flag."""
  tokens = ','.join(t for t in (entrant.recipe, variant) if t)
  return f'{entrant.config_file}:{tokens}' if tokens else entrant.config_file


def search_space(suite: Suite, e, root: pathlib.Path) -> dict[str, dict]:
  """`e`'s configurations. Where the suite trains the variants at each PE's best learning
  rate, they join once every learning rate's run in `root` has finished, at the best of
  them on validation (the search's second stage); until then the space is the rates'."""
  if not suite.variants_at_best_lr or e.fine_tune:
    return e.search_space()
  rates = e.learning_rate_space()
  found = _scores(suite, e, root, rates)
  if found is None or not found[0]:  # Unfinished, or every rate diverged.
    return rates
  return e.search_space(variant_lr=rates[_best(suite, found[0])]['optimizer.lr'])


def search_jobs(suite: Suite, root: pathlib.Path, variant: str) -> list[job_runner.Job]:
  """Every configuration of every PE known so far (`search_space`): seed 0, the search
  budget, validation only (a fine-tune has no search: its LM was chosen by the LM study)."""
  return [job_runner.train_job(
      f'search/{e.name}/{name}', root / 'search' / e.name / name,
      _config_arg(e, variant),
      {**overrides, 'total_steps': suite.search_steps, 'eval.split': 'valid', 'seed': 0})
          for e in suite.entrants if not e.fine_tune
          for name, overrides in search_space(suite, e, root).items()]


def pretrain_jobs(suite: Suite, root: pathlib.Path, variant: str) -> list[job_runner.Job]:
  """The LM runs a QA study trains itself (entrants with `pretrain`): the LM config of the
  same PE (configs/lm_<pe>.py) at its own budget, one per seed."""
  return [job_runner.train_job(
      f'lm/{e.name}/seed{seed}', root / 'lm' / e.name / f'seed{seed}',
      _config_arg(dataclasses.replace(e, config_file=_lm_config_file(e)), variant),
      {**e.pretrain, 'eval.split': 'valid', 'seed': seed})
          for e in suite.entrants if e.pretrain is not None for seed in range(suite.seeds)]


def _lm_config_file(entrant) -> str:
  path = pathlib.Path(entrant.config_file)
  return str(path.with_name(path.name.replace('qa_', 'lm_', 1)))


def final_jobs(suite: Suite, root: pathlib.Path, variant: str,
               chosen: dict) -> list[job_runner.Job]:
  """Each PE's chosen configuration at its config's budget, seeds 0 .. suite.seeds - 1; a
  fine-tune starts from its LM's run of the same seed."""
  jobs = []
  for e in suite.entrants:
    choice = chosen['choices'][e.name]
    for seed in range(suite.seeds):
      start = {'init_from': choice['lm_runs'].format(seed=seed)} if 'lm_runs' in choice else {}
      jobs.append(job_runner.train_job(
          f'final/{e.name}/seed{seed}', root / 'final' / e.name / f'seed{seed}',
          _config_arg(e, variant),
          {**choice['overrides'], **start, 'eval.split': 'valid', 'seed': seed}))
  return jobs


# ------------------------------------------------------------------ Choosing.


def read_sweep(run_dir: pathlib.Path, suffix: str = '') -> dict[int, float]:
  """{length or resolution: metric} of extrapolation{suffix}.json."""
  record = json.loads((run_dir / f'extrapolation{suffix}.json').read_text())
  return {int(x): values[record['metric']] for x, values in record['results'].items()}


def _swept_split(run_dir: pathlib.Path) -> str:
  return json.loads((run_dir / 'config.json').read_text())['eval']['split']


def _scores(suite: Suite, e, root: pathlib.Path, space: dict):
  """({configuration: validation criterion}, [diverged configurations]) of `e`'s search
  runs in `space`; None while one of them has not finished."""
  scores, diverged = {}, []
  for name in space:
    run_dir = root / 'search' / e.name / name
    if (run_dir / job_runner.DIVERGED).exists():
      diverged.append(name)
      continue
    if not (run_dir / 'extrapolation.json').exists():
      return None
    if _swept_split(run_dir) != 'valid':  # Selection never sees another split.
      raise StudyError(f'{run_dir} swept the {_swept_split(run_dir)} split; a search run '
                       'sweeps validation only. Delete it and rerun.')
    scores[name] = score(suite.family, read_sweep(run_dir))
  return scores, diverged


def _best(suite: Suite, scores: dict[str, float]) -> str:
  return (min if criterion(suite.family)[1] else max)(scores, key=scores.get)


def choose(suite: Suite, suite_name: str, root: pathlib.Path) -> dict:
  """The best configuration per PE on the validation sweeps of the search runs."""
  description, lower_is_better = criterion(suite.family)
  choices = {}
  for e in suite.entrants:
    space = search_space(suite, e, root)
    found = _scores(suite, e, root, space)
    if found is None:
      raise StudyError(f'Some search runs of {e.name} have not finished; run the study again '
                       'to finish them before choosing.')
    scores, diverged = found
    if not scores:
      raise StudyError(f'Every configuration of {e.name} diverged; widen its search space.')
    best = _best(suite, scores)
    choices[e.name] = {'configuration': best, 'overrides': space[best],
                       'score': round(scores[best], 4), 'configurations_tried': len(scores)
                       + len(diverged), 'diverged': diverged,
                       'scores': {k: round(v, 4) for k, v in scores.items()}}
  return {'suite': suite_name, 'split': 'valid', 'criterion': description,
          'lower_is_better': lower_is_better, 'search_steps': suite.search_steps,
          'commit': _commit(), 'choices': choices}


def choose_fine_tunes(suite: Suite, suite_name: str, root: pathlib.Path,
                      lm_root: pathlib.Path) -> dict:
  """A QA study's choices, made before anything trains: per PE, the LM runs it fine-tunes
  and the PE overrides of their recipe (the LM study's choice, read from its CHOSEN.json,
  or the entrant's own pretraining recipe). Training-only choices of the LM (learning rate,
  dropout) stay behind: every PE fine-tunes with the same QA recipe."""
  choices, lm_chosen = {}, None
  if any(e.pretrain is None for e in suite.entrants):
    path = lm_root / CHOSEN
    if not path.exists():
      raise StudyError(f'{path} does not exist: the QA study fine-tunes the LM study\'s '
                       f'choices; run python -m lab.study --suite=lm --workdir={lm_root} '
                       'first (or pass --lm_study=DIR).')
    lm_chosen = json.loads(path.read_text())
  for e in suite.entrants:
    if e.pretrain is not None:
      overrides, runs, source = dict(e.base), root / 'lm' / e.name, 'pretrained by this study'
    else:
      if e.lm not in lm_chosen['choices']:
        raise StudyError(f'{lm_root / CHOSEN} chooses nothing for {e.lm}, which the QA PE '
                         f'{e.name} fine-tunes.')
      choice = lm_chosen['choices'][e.lm]
      overrides = {**{k: v for k, v in choice['overrides'].items() if k.startswith('pe.')},
                   **e.base}
      runs = lm_root / 'final' / e.lm
      source = f"{e.lm}/{choice['configuration']} of the LM study"
    choices[e.name] = {'configuration': 'chosen', 'overrides': overrides,
                       'lm_runs': str(runs / 'seed{seed}'), 'lm': source,
                       'configurations_tried': 1, 'score': None, 'diverged': [], 'scores': {}}
  description, lower_is_better = criterion(suite.family)
  return {'suite': suite_name, 'split': 'valid', 'criterion': description,
          'lower_is_better': lower_is_better, 'search_steps': 0, 'lm_study': str(lm_root),
          'commit': _commit(), 'choices': choices}


def _unready_lm_runs(suite: Suite, chosen: dict) -> list[str]:
  """The LM runs the fine-tunes start from that have not finished (extrapolation.json)."""
  runs = [c['lm_runs'].format(seed=seed) for c in chosen['choices'].values()
          if 'lm_runs' in c for seed in range(suite.seeds)]
  return [run for run in runs if not (pathlib.Path(run) / 'extrapolation.json').exists()]


def load_chosen(suite: Suite, root: pathlib.Path) -> dict:
  """DIR/CHOSEN.json, checked against the suite: every PE, and configurations it declares."""
  path = root / CHOSEN
  chosen = json.loads(path.read_text())
  names = [e.name for e in suite.entrants]
  for pe, choice in chosen.get('choices', {}).items():
    if pe not in names:
      raise StudyError(f"{path} names {pe}, which is not a PE of this suite ({', '.join(names)}).")
    space = search_space(suite, suite.entrant(pe), root)
    if choice['configuration'] not in space:
      raise StudyError(f"{path} chooses {pe}/{choice['configuration']}, which is not in its "
                       f"search space ({', '.join(space)}).")
  missing = [name for name in names if name not in chosen.get('choices', {})]
  if missing:
    raise StudyError(f"{path} chooses nothing for {', '.join(missing)}; rerun without --final "
                     'after deleting it to choose again.')
  return chosen


def _commit() -> str:
  out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).parent, check=False)
  return out.stdout.strip() or 'unknown'


def _uncommitted(path: pathlib.Path) -> bool:
  """Whether `path` lies in a git work tree and is untracked or modified there."""
  def git(*args):
    return subprocess.run(['git', *args], capture_output=True, text=True, cwd=path.parent,
                          check=False)
  if git('rev-parse', '--is-inside-work-tree').stdout.strip() != 'true':
    return False  # A study outside the repository (a scratch directory): nothing to check.
  return bool(git('ls-files', '--error-unmatch', path.name).returncode
              or git('status', '--porcelain', '--', path.name).stdout.strip())


# ------------------------------------------------------------------ Stages.


def _run(job_list, root, *, parallel, dispatch, dry_run) -> bool:
  """Runs (or submits, or prints) the unfinished jobs; True when all have finished."""
  if dry_run:
    return job_runner.print_commands(job_list) == 0 if dispatch == 'local' else \
        job_runner.submit_slurm(job_list, dry_run=True) == 0
  if dispatch == 'slurm':
    submitted = job_runner.submit_slurm(job_list)
    waiting = [j for j in job_list if not (j.finished or j.diverged)]
    if waiting:
      print(f'{submitted} runs submitted, {len(waiting)} not finished yet; run the same '
            'command again when they have, to collect them and go on.', flush=True)
    return not waiting
  job_runner.run_local(job_list, root, parallel)
  return True


def run_study(suite_name: str, workdir: str, *, variant: str = '', parallel: int = 1,
              dispatch: str = 'local', dry_run: bool = False, lm_study: str = '') -> dict:
  """Search, choose and train the finals of `suite_name` in `workdir`; test is not read.
  `lm_study`: a QA study's LM study directory (default: the suite's).

  Returns {'stage': 'search' | 'lm' | 'final' | 'done', 'chosen': CHOSEN.json's content or
  None}.
  """
  suite = get_suite(suite_name, variant)
  if lm_study:
    suite = dataclasses.replace(suite, lm_study=lm_study)
  if parallel < 1:
    raise StudyError(f'--jobs must be at least 1, got {parallel}.')
  if dispatch not in ('local', 'slurm'):
    raise StudyError(f"Unknown --dispatch '{dispatch}'; use local or slurm.")
  root = pathlib.Path(workdir)
  if dry_run:  # Prints commands; writes nothing, so holds nothing.
    return _search_choose_final(suite, suite_name, root, variant, parallel, dispatch, dry_run)
  # The study holds its root (tables, CHOSEN.json); each run holds its own directory.
  with workdir_lock.held(root, purpose='study'):
    return _search_choose_final(suite, suite_name, root, variant, parallel, dispatch, dry_run)


def _search_choose_final(suite, suite_name, root, variant, parallel, dispatch, dry_run):
  run = lambda jobs: _run(jobs, root, parallel=parallel, dispatch=dispatch, dry_run=dry_run)
  search = search_jobs(suite, root, variant)
  while search:
    done = sum(j.finished or j.diverged for j in search)
    print(f'{suite_name}: search {done} of {len(search)} runs done in {root}.', flush=True)
    if not run(search):
      if dry_run and suite.variants_at_best_lr:
        print("Each PE's variants follow, at its best learning rate, once these have run.")
      return {'stage': 'search', 'chosen': None}
    staged = search_jobs(suite, root, variant)  # A second stage joins once the first is done.
    if len(staged) == len(search):
      report.write_search(root, suite, suite_name,
                          {e.name: search_space(suite, e, root) for e in suite.entrants})
      break
    search = staged
  pretrain = pretrain_jobs(suite, root, variant)  # A QA study's own LMs (no choice needed).
  if pretrain and not run(pretrain):
    return {'stage': 'lm', 'chosen': None}
  if dry_run and not (root / CHOSEN).exists():
    print('Without --dry-run the study now names its choices in CHOSEN.json and trains the '
          'finals.')
    return {'stage': 'choose', 'chosen': None}
  if not (root / CHOSEN).exists():
    chosen = (choose(suite, suite_name, root) if search else
              choose_fine_tunes(suite, suite_name, root, pathlib.Path(suite.lm_study)))
    (root / CHOSEN).write_text(json.dumps(chosen, indent=1) + '\n')
    print(f"{'Chosen on validation' if search else 'Fine-tunes named'}: {root / CHOSEN} "
          '(commit it before --final).', flush=True)
  chosen = load_chosen(suite, root)
  unready = _unready_lm_runs(suite, chosen)
  if unready and not dry_run:
    raise StudyError(f'{len(unready)} LM runs to fine-tune have not finished (first: '
                     f'{unready[0]}); finish their study first.')
  final = final_jobs(suite, root, variant, chosen)
  done = sum(j.finished or j.diverged for j in final)
  print(f'{suite_name}: final {done} of {len(final)} runs done.', flush=True)
  if 0 < done < len(final) and not dry_run:  # The tables so far, to commit meanwhile.
    report.write_valid(root, suite, suite_name, unfinished=len(final) - done)
  if not run(final):
    return {'stage': 'final', 'chosen': chosen}
  report.write_valid(root, suite, suite_name)
  return {'stage': 'done', 'chosen': chosen}


def test_jobs(suite: Suite, root: pathlib.Path) -> list[job_runner.Job]:
  """The sweeps --final runs: the test split of the final runs of the configurations
  CHOSEN.json names (load_chosen has checked it names one for every PE, from its space), and
  the suite's evaluation-time transforms of them on both splits. Search runs never get one."""
  out = []
  for e in suite.entrants:
    for seed in range(suite.seeds):
      run_dir = root / 'final' / e.name / f'seed{seed}'
      out.append(job_runner.evaluate_job(f'test/{e.name}/seed{seed}', run_dir, 'test'))
      for t in (t for t in suite.transforms if t.entrant == e.name):
        out += [job_runner.evaluate_job(f'{split}/{t.name}/seed{seed}', run_dir, split, t.name,
                                        t.overrides) for split in ('valid', 'test')]
  return out


def run_final(suite_name: str, workdir: str, *, variant: str = '', parallel: int = 1) -> dict:
  """Reads the test split once, for the runs CHOSEN.json names; writes the final report."""
  suite = get_suite(suite_name, variant)
  root = pathlib.Path(workdir)
  path = root / CHOSEN
  if not path.exists():
    raise StudyError(f'{path} does not exist: run the study without --final first (it trains '
                     'and chooses on validation), commit the choice, then run --final.')
  if _uncommitted(path):
    raise StudyError(f'Commit {path} before reading the test split (git add {path} && git '
                     'commit): the choice must be on record before test numbers exist.')
  chosen = load_chosen(suite, root)
  unfinished = [j.label for j in final_jobs(suite, root, variant, chosen)
                if not (j.finished or j.diverged)]
  if unfinished:
    raise StudyError(f'{len(unfinished)} final runs have not finished (first: {unfinished[0]}); '
                     'run the study without --final to train them.')
  command = shlex.join(['python', '-m', 'lab.study', f'--suite={suite_name}',
                        f'--workdir={workdir}', '--final']
                       + ([f'--variant={variant}'] if variant else []))
  with workdir_lock.held(root, purpose='study --final'):
    job_runner.run_local(test_jobs(suite, root), root, parallel)
    return report.write_final(root, suite, suite_name, chosen, command, hardware())


def hardware() -> str:
  return f'{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}'


# ------------------------------------------------------------------ Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags, in `flag_values` (tests parse theirs in-process)."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string('suite', None, f"Which study: {' | '.join(SUITES)}.", **define)
  flags.DEFINE_string('workdir', None, 'The study directory (search/, final/, tables, report).',
                      **define)
  flags.DEFINE_string('variant', '', "'' (the default configs) or smoke (a few steps).",
                      **define)
  flags.DEFINE_integer('jobs', 1, 'Runs trained at once on this machine.', **define)
  flags.DEFINE_enum('dispatch', 'local', ['local', 'slurm'], 'Train here, or submit each run '
                    'as its own Slurm job through launch/gpu_slurm.sh.', **define)
  # Spelt as the launchers spell it (launch/*.sh --dry-run).
  flags.DEFINE_bool('dry-run', False, 'Print the command of every unfinished run; run nothing.',
                    **define)
  flags.DEFINE_bool('final', False, 'Read the test split of the runs CHOSEN.json names.',
                    **define)
  flags.DEFINE_string('lm_study', '', "--suite=qa: the LM study whose choices are fine-tuned "
                      "(default: the suite's, lab/results/lm_fair).", **define)


def main(argv, args: flags.FlagValues = flags.FLAGS):
  if len(argv) > 1:
    print(f'Unexpected arguments: {" ".join(argv[1:])}.', file=sys.stderr)
    sys.exit(2)
  if not args.suite or not args.workdir:
    print('Pass --suite=lm|vit|qa and --workdir=DIR.', file=sys.stderr)
    sys.exit(2)
  try:
    if args.final:
      out = run_final(args.suite, args.workdir, variant=args.variant, parallel=args.jobs)
      print(f"Report: {pathlib.Path(args.workdir) / 'REPORT.md'}")
      return out
    out = run_study(args.suite, args.workdir, variant=args.variant, parallel=args.jobs,
                    dispatch=args.dispatch, dry_run=args['dry-run'].value,
                    lm_study=args.lm_study)
    if out['stage'] == 'done' and not args['dry-run'].value:
      print(f"Validation table: {pathlib.Path(args.workdir) / 'valid.md'}. Commit "
            f'{pathlib.Path(args.workdir) / CHOSEN}, then run with --final to read test once.')
  except (StudyError, SuiteError, job_runner.JobError, workdir_lock.WorkdirInUse) as e:
    print(e, file=sys.stderr)
    sys.exit(2)
  except job_runner.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(e.status)


if __name__ == '__main__':
  define_flags()
  app.run(main)
