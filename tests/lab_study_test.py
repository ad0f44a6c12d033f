"""The fair study: equal search spaces, selection on validation only, test read once for the
runs CHOSEN.json names, paired comparisons, resumption, and one sentence for bad input."""

import csv
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from scipy import stats

from lab import jobs, report, study, suites
from configs import common
from seqpe_jax import metrics, workdir_lock

# One xdist worker runs this file: its smoke study trains eight runs.
pytestmark = pytest.mark.xdist_group('study')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ Suites.


@pytest.mark.parametrize('name', ['lm', 'vit'])
def test_every_pe_of_a_suite_gets_the_same_search_budget(name):
  suite = suites.SUITES[name]
  suite.check(name)
  sizes = {e.name: len(e.search_space()) for e in suite.entrants}
  assert set(sizes.values()) == {suites.SEARCH_BUDGET}, sizes
  for e in suite.entrants:  # Learning rates first, each on the PE's own recipe.
    lrs = [o['optimizer.lr'] for o in list(e.search_space().values())[:3]]
    assert lrs == list(suites.LEARNING_RATES)


@pytest.mark.parametrize('name', list(suites.SUITES))
def test_every_configuration_of_a_suite_is_a_valid_config(name):
  for e in suites.SUITES[name].entrants:
    for label, overrides in e.search_space().items():
      config = study.load_config(e.config_file, ','.join(filter(None, (e.recipe, 'smoke'))))
      for key, value in overrides.items():
        config.update_from_flattened_dict({key: value})
      assert config.pe.name, (e.name, label)


# Options that change memory or logging, not what a run computes.
NUMERICS_NEUTRAL = {'pe.seqpe.remat'}


def _resolved_config(job: jobs.Job) -> dict:
  """The config `job`'s command resolves to, parsed as seqpe_jax.main parses its flags, in
  the form a run records it (config.json)."""
  argv = ['main', *(a for a in job.args if a.startswith('--config'))]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return metrics.flatten_config(json.loads(flag_values.config.to_json()))


# ml_collections loads each config file with importlib's deprecated load_module.
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
@pytest.mark.parametrize('name', ['lm', 'vit', 'qa'])
def test_the_committed_runs_are_what_their_suite_declares_today(name):
  """Each committed run of a fair study (config.json) against the config its suite resolves
  now. A config default moved under the study (SeqPE's `tuned` recipe, a learning rate)
  would make its declared spaces and CHOSEN.json name runs that never trained; a field added
  since (present on one side only) is not a change."""
  root = REPO_ROOT / 'lab' / 'results' / f'{name}_fair'
  suite = suites.SUITES[name]
  chosen = json.loads((root / study.CHOSEN).read_text())
  trained_first = [*study.search_jobs(suite, root, ''), *study.pretrain_jobs(suite, root, '')]
  finals = study.final_jobs(suite, root, '', chosen)
  assert all((job.directory / 'config.json').exists() for job in trained_first)
  checked = 0
  for job in trained_first + finals:
    if not (job.directory / 'config.json').exists():
      continue  # A final run still training when its study was last committed.
    ran = metrics.flatten_config(json.loads((job.directory / 'config.json').read_text()))
    now = _resolved_config(job)
    moved = {key: (ran[key], now[key]) for key in sorted(ran.keys() & now.keys())
             if key not in NUMERICS_NEUTRAL and ran[key] != now[key]}
    assert not moved, f'{job.label}: (ran, resolves now) {moved}'
    checked += 1
  if (root / 'results.csv').exists():  # The test split was read: every final had finished.
    assert checked == len(trained_first) + len(finals)


def test_a_qa_suite_has_no_search_of_its_own():
  suite = suites.SUITES['qa']
  suite.check('qa')
  assert all(e.fine_tune and list(e.search_space()) == ['chosen'] for e in suite.entrants)
  assert study.search_jobs(suite, pathlib.Path('/nonexistent'), '') == []


def test_a_search_space_larger_than_the_budget_is_refused():
  lm = suites.SUITES['lm']
  greedy = dataclasses.replace(lm.entrants[0], variants={
      **lm.entrants[0].variants, 'one_more': {'model.dropout': 0.2}})
  suite = dataclasses.replace(lm, entrants=(greedy, *lm.entrants[1:]))
  with pytest.raises(suites.SuiteError, match='declares 7 configurations; the search budget is 6'):
    suite.check('lm')


def test_a_rival_that_is_not_a_pe_of_the_suite_is_refused():
  vit = suites.SUITES['vit']
  assert set(vit.rivals['extend']) == {'ape', 'rope2d'}
  with pytest.raises(suites.SuiteError, match="rival 'alibi' is not one of its PEs"):
    dataclasses.replace(vit, rivals={'extend': ('ape', 'alibi')}).check('vit')


def test_unequal_search_spaces_are_refused():
  lm = suites.SUITES['lm']
  short = dataclasses.replace(lm.entrants[1], size=4)
  with pytest.raises(suites.SuiteError, match='unequal search spaces'):
    dataclasses.replace(lm, entrants=(lm.entrants[0], short)).check('lm')


def test_the_smoke_suite_is_two_pes_two_configurations_two_seeds():
  smoke = suites.SUITES['lm'].smoke()
  assert [len(e.search_space()) for e in smoke.entrants] == [2, 2]
  assert smoke.seeds == 2 and smoke.search_steps == suites.SMOKE_STEPS


def _finish_search_run(root, pe, name, accuracy, split='valid'):
  """What a finished ViT search run leaves that the study reads."""
  run = root / 'search' / pe / name
  run.mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps({'eval': {'split': split}}))
  (run / 'extrapolation.json').write_text(json.dumps(
      {'metric': 'top1', 'results': {'28': {'top1': accuracy}, '56': {'top1': accuracy / 2}}}))


def test_the_vit_variants_train_at_the_best_learning_rate_once_the_rates_have_run(tmp_path):
  """The second stage: no variant before every rate has run; then each variant at the best
  rate on validation (1e-3 here, not the top of the grid), and the choice among all six."""
  vit = suites.SUITES['vit']
  suite = dataclasses.replace(vit, entrants=vit.entrants[:1])
  seqpe = suite.entrants[0]
  labels = lambda: [j.label.split('/')[-1] for j in study.search_jobs(suite, tmp_path, '')]
  assert labels() == ['lr0.0003', 'lr0.001', 'lr0.003']
  _finish_search_run(tmp_path, 'seqpe', 'lr0.0003', 0.50)
  _finish_search_run(tmp_path, 'seqpe', 'lr0.001', 0.70)
  assert labels() == ['lr0.0003', 'lr0.001', 'lr0.003']  # One rate has not run yet.
  _finish_search_run(tmp_path, 'seqpe', 'lr0.003', 0.60)
  jobs_ = study.search_jobs(suite, tmp_path, '')
  assert [j.label.split('/')[-1] for j in jobs_] == list(seqpe.search_space())
  for job in jobs_[3:]:
    assert '--config.optimizer.lr=0.001' in job.args, job.args
  for name, accuracy in zip(seqpe.variants, (0.72, 0.65, 0.71)):
    _finish_search_run(tmp_path, 'seqpe', name, accuracy)
  chosen = study.choose(suite, 'vit', tmp_path)['choices']['seqpe']
  assert chosen['configuration'] == 'reference' and chosen['configurations_tried'] == 6
  assert chosen['overrides']['optimizer.lr'] == 1e-3
  (tmp_path / study.CHOSEN).write_text(json.dumps({'choices': {'seqpe': chosen}}))
  assert study.load_chosen(suite, tmp_path)['choices']['seqpe'] == chosen
  text = report.write_search(tmp_path, suite, 'vit', {'seqpe': study.search_space(
      suite, seqpe, tmp_path)})
  assert "variants trained at the PE's best learning rate" in text and 'reference (chosen)' in text


def test_the_lm_variants_stay_at_the_rate_they_ran_at(tmp_path):
  """The LM suite was declared and run with its variants at 1e-3, the configs' rate then
  (3e-3 now): the suite pins it, so a rerun finds the runs it made."""
  lm = suites.SUITES['lm']
  suite = dataclasses.replace(lm, entrants=lm.entrants[:1])
  for name in suite.entrants[0].learning_rate_space():
    _finish_search_run(tmp_path, 'seqpe', name, 0.5)
  assert [o.get('optimizer.lr') for o in study.search_space(
      suite, suite.entrants[0], tmp_path).values()] == [3e-4, 1e-3, 3e-3, 1e-3, 1e-3, 1e-3]


def _finish_final_run(root, pe, seed, pe_name, ablation_deltas):
  """A final LM run's files, its diag/pe_ablation_delta logged at each value given."""
  run = root / 'final' / pe / f'seed{seed}'
  run.mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps({'pe': {'name': pe_name}}))
  (run / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': 50 * (i + 1), 'train/loss': 5.0, 'diag/pe_ablation_delta': d}) + '\n'
      for i, d in enumerate(ablation_deltas)))
  (run / 'extrapolation.json').write_text(json.dumps(
      {'metric': 'ppl', 'axis': 'length', 'results': {'128': {'ppl': 100.0}}}))


def test_the_validation_table_names_the_runs_whose_pe_died(tmp_path):
  """A run whose PE ends carrying no position is named (a SeqPE that collapsed to one vector
  trains as NoPE); one that recovered, one that never died and NoPE itself are not."""
  suite = suites.SUITES['lm']
  _finish_final_run(tmp_path, 'seqpe', 0, 'seqpe', [1e-4, 0.2])
  _finish_final_run(tmp_path, 'seqpe', 1, 'seqpe', [0.1, 2e-6])
  _finish_final_run(tmp_path, 'seqpe', 2, 'seqpe', [0.0, 0.3])
  _finish_final_run(tmp_path, 'nope', 0, 'none', [0.0, 0.0])
  assert report.dead_pe_runs(tmp_path, suite) == ['seqpe/seed1']
  text = report.write_valid(tmp_path, suite, 'lm', unfinished=14)
  assert 'so trained as NoPE: seqpe/seed1.' in text
  assert '14 final runs have not finished yet' in text


def test_a_qa_study_names_no_dead_pe_from_its_answer_loss(tmp_path):
  """A QA loss barely depends on position for any PE, so its ablation delta judges nothing."""
  _finish_final_run(tmp_path, 'alibi', 0, 'alibi', [0.1, 2e-4])
  assert report.dead_pe_runs(tmp_path, suites.SUITES['qa']) == []
  assert report.dead_pe_runs(tmp_path, suites.SUITES['lm']) == ['alibi/seed0']


def test_selection_scores_closed_forms():
  assert suites.score('lm', {128: 100., 256: 400.}) == pytest.approx(200.)  # Geometric mean.
  assert suites.score('vit', {28: .8, 56: .4}) == pytest.approx(.6)


def test_config_arguments_name_a_size_and_a_recipe():
  assert common.parse_arg('reference,smoke') == ('smoke', 'reference')
  assert common.parse_arg(None) == ('', 'tuned')
  assert common.parse_arg('paper') == ('paper', 'reference')
  with pytest.raises(ValueError, match="Unknown config variant 'smoke,fast'"):
    common.parse_arg('smoke,fast')
  with pytest.raises(ValueError, match='reference recipe at the paper'):
    common.parse_arg('paper,tuned')


# ------------------------------------------------------------------ Paired comparisons.


def test_paired_comparison_against_the_t_interval():
  focus = {0: {8: 140.}, 1: {8: 141.}, 2: {8: 139.5}}
  other = {0: {8: 143.}, 1: {8: 144.5}, 2: {8: 141.}}
  got = report.paired(focus, other, 8, lower_is_better=True)
  diffs = np.array([-3., -3.5, -1.5])
  half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
  assert got['differences'] == pytest.approx(diffs.tolist())
  assert got['interval'] == pytest.approx((diffs.mean() - half, diffs.mean() + half))
  assert got['better_on'] == 3
  assert got['verdict'] == 'better on 3 of 3 seeds, interval excludes 0'


def test_paired_comparison_says_not_separable_when_the_interval_holds_zero():
  focus = {0: {1: .70}, 1: {1: .60}, 2: {1: .66}}
  other = {0: {1: .65}, 1: {1: .64}, 2: {1: .65}}
  got = report.paired(focus, other, 1, lower_is_better=False)  # Accuracy: higher wins.
  assert got['better_on'] == 2
  assert got['verdict'] == 'not separable (better on 2 of 3 seeds)'


def test_paired_comparison_pairs_by_seed_and_says_worse():
  focus = {0: {1: .50}, 1: {1: .52}, 3: {1: .9}}  # Seed 3 has no partner: left out.
  other = {0: {1: .60}, 1: {1: .61}, 2: {1: .1}}
  got = report.paired(focus, other, 1, lower_is_better=False)
  assert got['seeds'] == [0, 1]
  assert got['verdict'] == 'worse on 2 of 2 seeds, interval excludes 0'


def test_paired_tables_show_accuracies_to_three_decimals_and_perplexities_to_two():
  accuracy = {'seqpe': {0: {28: .804}, 1: {28: .812}}, 'nope': {0: {28: .801}, 1: {28: .806}}}
  text, _ = report.paired_table(accuracy, 'seqpe', lower_is_better=False)
  assert '| 28 | nope | +0.003, +0.006 | +0.005 [' in text  # Not +0.00, +0.01.
  perplexity = {'seqpe': {0: {128: 121.04}, 1: {128: 119.9}},
                'alibi': {0: {128: 126.1}, 1: {128: 125.3}}}
  text, _ = report.paired_table(perplexity, 'seqpe', lower_is_better=True)
  assert '| 128 | alibi | -5.06, -5.40 | -5.23 [' in text


# ------------------------------------------------------------------ Commands.


def test_config_flags_spell_every_value_type():
  assert jobs.config_flags({'optimizer.lr': 3e-4, 'pe.alibi.pre_scale': False,
                            'pe.name': 'rope', 'seed': 2, 'eval.lengths': (128, 256)}) == [
      '--config.optimizer.lr=0.0003', '--config.pe.alibi.pre_scale=false',
      '--config.pe.name=rope', '--config.seed=2', '--config.eval.lengths=(128,256)']


def test_search_runs_sweep_validation_at_the_search_budget(tmp_path):
  suite = study.get_suite('lm')
  search = study.search_jobs(suite, tmp_path, '')
  assert len(search) == len(suite.entrants) * suites.SEARCH_BUDGET
  for job in search:
    assert '--config.eval.split=valid' in job.args
    assert f'--config.total_steps={suite.search_steps}' in job.args
    assert '--config.seed=0' in job.args


def test_a_runs_time_adds_up_over_the_sittings_it_took(tmp_path):
  """A run stopped and resumed counts every process it took (REPORT.md's compute hours)."""
  sleep = jobs.Job('fake/run', tmp_path / 'run', 'timeit',
                   ['-n1', '-r1', 'import time; time.sleep(0.4)'], 'never_written.json')
  totals = []
  for _ in range(2):  # Not finished after either: each call runs it again.
    jobs.run_local([sleep], tmp_path)
    totals.append(json.loads((tmp_path / jobs.TIMINGS).read_text())['fake/run'])
  assert totals[0] >= 0.4 and totals[1] >= totals[0] + 0.4


def _run_cli(*args, cwd=REPO_ROOT):
  return subprocess.run([sys.executable, '-m', 'lab.study', *args], capture_output=True,
                        text=True, cwd=cwd, check=False, timeout=600)


def _run_main(capsys, *args) -> subprocess.CompletedProcess:
  """`python -m lab.study ARGS` in this process (its flags parsed into flag values of their
  own): the command line's exit status and output, without a Python start per case. The
  process itself is tested once, by the lock test below."""
  flag_values = flags.FlagValues()
  study.define_flags(flag_values)
  argv = flag_values(['lab.study', *args])
  capsys.readouterr()
  try:
    study.main(argv, flag_values)
    status = 0
  except SystemExit as e:
    status = e.code
  out = capsys.readouterr()
  return subprocess.CompletedProcess(argv, status, out.out, out.err)


def test_dry_run_prints_every_search_command_and_runs_nothing(tmp_path, capsys):
  out = _run_main(capsys, '--suite=lm', f'--workdir={tmp_path}', '--dry-run')
  assert out.returncode == 0, out.stderr
  commands = [line for line in out.stdout.splitlines() if 'seqpe_jax.main' in line]
  assert len(commands) == 6 * suites.SEARCH_BUDGET
  assert not list(tmp_path.iterdir())
  slurm = _run_main(capsys, '--suite=vit', f'--workdir={tmp_path}', '--dispatch=slurm',
                    '--dry-run')
  submissions = [line for line in slurm.stdout.splitlines() if line.startswith('sbatch')]
  # The ViT's first stage: its variants join at each PE's best rate once the rates have run.
  assert len(submissions) == 10 * len(suites.LEARNING_RATES)
  assert 'variants follow, at its best learning rate' in slurm.stdout
  assert 'launch/gpu_slurm.sh configs/vit_rope2d.py' in slurm.stdout


@pytest.mark.parametrize('args, message', [
    (['--suite=lm'], 'Pass --suite=lm|vit|qa and --workdir=DIR.'),
    (['--suite=text', '--workdir=W'], "Unknown suite 'text'"),
    (['--suite=lm', '--workdir=W', '--jobs=0'], '--jobs must be at least 1'),
    (['--suite=lm', '--workdir=W', '--final'], 'does not exist: run the study without --final'),
])
def test_bad_arguments_are_one_sentence(tmp_path, capsys, args, message):
  args = [a.replace('W', str(tmp_path / 'w')) for a in args]
  out = _run_main(capsys, *args)
  assert out.returncode == 2
  assert message in out.stderr and 'Traceback' not in out.stderr


# ------------------------------------------------------------------ The smoke study.


def _test_files(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted(root.rglob('extrapolation_test*.json'))


@pytest.fixture(scope='module')
def smoke_study(tmp_path_factory):
  root = tmp_path_factory.mktemp('fair')
  out = study.run_study('lm', str(root), variant='smoke', parallel=2)
  return root, out


def test_the_smoke_study_chooses_on_validation_and_reads_no_test(smoke_study):
  root, out = smoke_study
  assert out['stage'] == 'done'
  chosen = json.loads((root / study.CHOSEN).read_text())
  assert chosen['split'] == 'valid' and set(chosen['choices']) == {'seqpe', 'rope'}
  for pe, choice in chosen['choices'].items():  # The choice is the best validation score.
    scores = {name: suites.score('lm', study.read_sweep(root / 'search' / pe / name))
              for name in ('lr0.0003', 'lr0.001')}
    assert choice['configuration'] == min(scores, key=scores.get)
    assert choice['configurations_tried'] == 2
    for seed in (0, 1):
      config = json.loads((root / 'final' / pe / f'seed{seed}' / 'config.json').read_text())
      assert config['eval']['split'] == 'valid' and config['seed'] == seed
      assert config['optimizer']['lr'] == choice['overrides']['optimizer.lr']
  assert not _test_files(root)  # No test number exists before --final.
  assert '| seqpe |' in (root / 'valid.md').read_text()


def test_a_second_invocation_trains_nothing(smoke_study, capsys):
  root, _ = smoke_study
  timings = (root / jobs.TIMINGS).read_text()
  study.run_study('lm', str(root), variant='smoke', parallel=2)
  assert 'started' not in capsys.readouterr().out
  assert (root / jobs.TIMINGS).read_text() == timings


def test_a_chosen_file_that_names_another_configuration_is_refused(smoke_study, tmp_path):
  root, _ = smoke_study
  chosen = json.loads((root / study.CHOSEN).read_text())
  chosen['choices']['rope']['configuration'] = 'lr0.01'
  (tmp_path / study.CHOSEN).write_text(json.dumps(chosen))
  with pytest.raises(study.StudyError, match='chooses rope/lr0.01, which is not in its search'):
    study.load_chosen(study.get_suite('lm', 'smoke'), tmp_path)
  del chosen['choices']['rope']
  (tmp_path / study.CHOSEN).write_text(json.dumps(chosen))
  with pytest.raises(study.StudyError, match='chooses nothing for rope'):
    study.load_chosen(study.get_suite('lm', 'smoke'), tmp_path)


def test_final_reads_test_once_for_the_chosen_runs_only(smoke_study, monkeypatch):
  root, _ = smoke_study
  # RoPE named as SeqPE's rival too (the ViT suite names APE and RoPE-2D).
  monkeypatch.setitem(study.SUITES, 'lm',
                      dataclasses.replace(suites.SUITES['lm'], rivals={'extend': ('rope',)}))
  out = study.run_final('lm', str(root), variant='smoke', parallel=2)
  files = _test_files(root)
  assert files and all(f.parent.parent.parent.name == 'final' for f in files)
  assert not list((root / 'search').rglob('extrapolation_test*.json'))
  expected = {root / 'final' / pe / f'seed{s}' / 'extrapolation_test.json'
              for pe in ('seqpe', 'rope') for s in (0, 1)}
  assert expected <= set(files)
  results = (root / 'results.md').read_text()
  assert 'paired by seed' in results
  comparison = out['comparisons']['extend']
  assert {c['other'] for c in comparison} == {'rope'}
  # The only other PE is the best other of every column: the same pairs, column by column.
  rivals = out['comparisons']['extend_rivals']
  assert [(c['other'], c['column'], c['differences']) for c in rivals] == [
      (c['other'], c['column'], c['differences']) for c in comparison]
  assert 'SeqPE (seqpe) against each of rope (whatever protocol' in results
  text = (root / 'REPORT.md').read_text()
  assert f"--suite=lm --workdir={root} --final --variant=smoke" in text
  assert text.count('| seqpe |') == 2  # Its choice, and its row of the test table.


# ------------------------------------------------------------------ The QA study.


def test_the_qa_smoke_study_fine_tunes_the_lm_choices_and_reads_test_once(smoke_study,
                                                                          tmp_path):
  lm_root, _ = smoke_study
  root = tmp_path / 'qa'
  out = study.run_study('qa', str(root), variant='smoke', parallel=2, lm_study=str(lm_root))
  assert out['stage'] == 'done'
  lm_choices = json.loads((lm_root / study.CHOSEN).read_text())['choices']
  for pe in ('seqpe', 'rope'):
    choice = out['chosen']['choices'][pe]
    assert choice['lm'] == f"{pe}/{lm_choices[pe]['configuration']} of the LM study"
    # One smoke seed: seed 0 fine-tunes the LM study's seed 0, sweeping validation.
    config = json.loads((root / 'final' / pe / 'seed0' / 'config.json').read_text())
    assert config['init_from'] == str(lm_root / 'final' / pe / 'seed0')
    assert (config['seed'], config['eval']['split'], config['task']) == (0, 'valid', 'qa')
  assert not (root / 'final' / 'seqpe' / 'seed1').exists()
  valid = (root / 'valid.md').read_text()
  assert 'Gate (validation exact match >= 0.8 at the fine-tuning length' in valid
  assert '## extend: rank_acc' in valid
  assert not _test_files(root)
  final = study.run_final('qa', str(root), variant='smoke', parallel=2)
  assert {p.parent.parent.name for p in _test_files(root)} == {'seqpe', 'rope'}
  with open(root / 'results.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['protocol', 'pe', 'seed', 'context length (tokens)', 'em', 'answer_logp',
                     'rank_acc']
  assert {r[1] for r in rows[1:]} == {'seqpe', 'rope'} and all(r[6] for r in rows[1:])
  assert {'extend', 'extend_answer_logp', 'extend_rank_acc'} == set(final['comparisons'])
  assert (root / 'extrapolation_depth_seqpe.png').exists()
  assert 'fine-tuned the final runs of its choice in the LM study' in (
      root / 'REPORT.md').read_text()


def test_a_qa_study_pretrains_the_lms_no_study_chose(tmp_path, capsys):
  out = _run_main(capsys, '--suite=qa', f'--workdir={tmp_path}', '--dry-run')
  assert out.returncode == 0, out.stderr
  commands = [line for line in out.stdout.splitlines() if 'seqpe_jax.main' in line]
  assert len(commands) == 2 and all('configs/lm_seqpe.py' in c for c in commands)
  assert all('--config.pe.logit_distill.weight=0.0' in c for c in commands)
  assert not list(tmp_path.iterdir())


def test_a_qa_study_without_its_lm_study_is_one_sentence(tmp_path):
  suite = study.get_suite('qa', 'smoke')
  with pytest.raises(study.StudyError, match='does not exist: the QA study fine-tunes'):
    study.choose_fine_tunes(suite, 'qa', tmp_path / 'qa', tmp_path / 'lm')
  (tmp_path / 'lm').mkdir()
  (tmp_path / 'lm' / study.CHOSEN).write_text(json.dumps({'choices': {'seqpe': {
      'configuration': 'lr0.001', 'overrides': {'optimizer.lr': 1e-3, 'pe.shift.prob': .5}}}}))
  with pytest.raises(study.StudyError, match='chooses nothing for rope'):
    study.choose_fine_tunes(suite, 'qa', tmp_path / 'qa', tmp_path / 'lm')
  only_seqpe = dataclasses.replace(suite, entrants=suite.entrants[:1])
  chosen = study.choose_fine_tunes(only_seqpe, 'qa', tmp_path / 'qa', tmp_path / 'lm')
  # The PE's overrides travel; its learning rate does not (one QA recipe for every PE).
  assert chosen['choices']['seqpe']['overrides'] == {'pe.shift.prob': .5}
  assert study._unready_lm_runs(only_seqpe, chosen) == [
      str(tmp_path / 'lm' / 'final' / 'seqpe' / 'seed0')]


def test_a_second_study_on_the_same_directory_is_refused(tmp_path):
  with workdir_lock.held(tmp_path, purpose='study'):
    out = _run_cli('--suite=lm', f'--workdir={tmp_path}', '--variant=smoke')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert str(os.getpid()) in out.stderr  # The holder is named.
  assert not (tmp_path / 'search').exists()
