"""Studies: suites as data, a two-PE two-seed smoke study, resumption, report, bad input."""

import csv
import functools
import inspect
import json
import pathlib
import re
import subprocess
import sys

import pytest

from lab import report as study_report, study, suites as study_suites
from seqpe_jax import cli, evaluate, train

# One xdist worker runs this file: its smoke study trains four runs.
pytestmark = pytest.mark.xdist_group('study')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def valid_sweep(monkeypatch):
  """The validation sweep; until evaluate_workdir takes `split`, a copy of the test sweep."""
  if 'split' in inspect.signature(evaluate.evaluate_workdir).parameters:
    return

  def copy_test_sweep(workdir, split):
    table = json.loads((pathlib.Path(workdir) / 'extrapolation.json').read_text())
    for values in table['results'].values():
      values[table['metric']] *= 1.01
    (pathlib.Path(workdir) / f'extrapolation_{split}.json').write_text(json.dumps(table))
    return {int(x): values for x, values in table['results'].items()}

  monkeypatch.setattr(evaluate, 'evaluate_workdir', copy_test_sweep)


def lookup(config, flat_key):
  return functools.reduce(getattr, flat_key.split('.'), config)


def table_rows(markdown):
  """{'| run': row} of a Markdown table's body rows."""
  return {line.split(' | ')[0]: line for line in markdown.splitlines() if line.startswith('| ')}


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_suites_hold_the_planned_runs():
  names = {suite: [run.name for run in runs] for suite, runs in study_suites.SUITES.items()}
  family = ['seqpe', 'seqpe_tuned', 'seqpe_tuned_more_shifts', 'seqpe_tuned_attention']
  assert names['lm'] == [*family, 'seqpe_tuned_attention_more_copies',
                         'nope', 'ape', 'rope', 'alibi']
  assert names['vit'] == [*family, 'seqpe_tuned_attn_scalar', 'seqpe_tuned_input_add',
                          'seqpe_tuned_attn_scalar_more_shifts', 'seqpe_tuned_canvas',
                          'seqpe_tuned_attn_scalar_canvas',
                          'seqpe_tuned_attn_scalar_canvas_more_shifts', 'nope', 'ape', 'rope2d',
                          'rope2d_canvas']
  tuned_minus = [f'tuned_minus_{study_suites._option_name(k)}'
                 for k in study_suites.TUNED_SEQPE['lm']]
  assert names['ablations'] == [
      'reference', 'no_contrastive', 'no_ood', 'no_regularizers', 'no_shift', 'warmup',
      'balance', 'train_pivots', 'proj_init', 'tuned', *tuned_minus, 'tuned_more_shifts',
      'tuned_strong_ood', 'tuned_no_qk_proj', 'tuned_attention', 'tuned_more_shifts_attention',
      'tuned_weak_attention', 'tuned_attention_more_copies', 'input_add', 'attn_mul',
      'bidirectional']
  ablations = {run.name: run for run in study_suites.SUITES['ablations']}
  assert ablations['tuned'].overrides == study_suites.TUNED_SEQPE['lm']
  assert 'pe.regularizers.balance' not in ablations['tuned_minus_balance'].overrides


@pytest.mark.parametrize('suite', list(study_suites.SUITES))
@pytest.mark.parametrize('variant', ['', 'smoke'])
def test_every_run_of_every_suite_builds_its_config(suite, variant):
  for run in study_suites.SUITES[suite]:
    config = study.build_config(suite, run, seed=1, variant=variant, steps=None)
    assert config.seed == 1
    for key, value in run.overrides.items():
      if key not in study_suites.STEP_COUNT_KEYS:
        assert lookup(config, key) == value
  warmup = {run.name: run for run in study_suites.SUITES['ablations']}['warmup']
  config = study.build_config('ablations', warmup, seed=0, variant=variant, steps=None)
  expected = 200 if variant == '' else config.total_steps // 2  # Fitted to a smoke run.
  assert config.pe.regularizers.warmup_steps == expected
  assert study.build_config(suite, study_suites.SUITES[suite][0], seed=0, variant=variant,
                            steps=7).total_steps == 7


def test_smoke_study_trains_reports_and_resumes(tmp_path, valid_sweep, monkeypatch, capsys):
  del valid_sweep
  result = study.run_study('lm', str(tmp_path), seeds=2, variant='smoke', steps=4,
                           only=['ape', 'nope'])
  assert result['trained'] == [('nope', 0), ('ape', 0), ('nope', 1), ('ape', 1)]  # Suite order.
  assert result['finished'] == result['total'] == 4
  assert '[4/4] lm/ape seed 1 — 3 finished, about' in capsys.readouterr().out
  for name in ('results.csv', 'results.md', 'test.png', 'valid.png', 'REPORT.md'):
    assert (tmp_path / name).stat().st_size > 0
  table = (tmp_path / 'results.md').read_text()
  for run in ('nope', 'ape'):
    row = next(line for line in table.splitlines() if line.startswith(f'| {run} |'))
    assert row.count('±') == 2  # Lengths 32 and 64, two seeds each.
  rows = read_csv(tmp_path / 'results.csv')
  keys = sorted((r['run'], r['seed'], r['split'], r['x']) for r in rows)
  assert keys == sorted((run, str(seed), split, x) for run in ('nope', 'ape')
                        for seed in (0, 1) for split in ('test', 'valid') for x in ('32', '64'))
  assert all(r['metric'] == 'ppl' and float(r['value']) > 1 for r in rows)
  report = (tmp_path / 'REPORT.md').read_text()
  assert '--variant=smoke --steps=4 --only=ape,nope`' in report and '4 steps of batch 8' in report
  logged_diagnostics = any(key.startswith('diag/') for key in rows[0])
  assert (tmp_path / 'diagnostics.png').exists() == logged_diagnostics
  unfinished = [run.name for run in study_suites.SUITES['lm'] if run.name not in ('ape', 'nope')]
  assert f"Not finished yet: {', '.join(unfinished)}." in report
  # Each run's PE-only attention profile; NoPE's is the position-free layer's.
  assert (tmp_path / 'runs/nope/seed1/position_profile_64.png').stat().st_size > 0
  locality = report.split('## Attention locality of the PE alone')[1].split('##')[0]
  near_mass, falloff = [table_rows(table) for table in locality.split('How far')]
  free = near_mass['| (position-free)'].split(' | ')[1:]
  nope = [float(cell.split(' ±')[0].rstrip(' |'))
          for cell in near_mass['| nope'].split(' | ')[1:]]
  assert nope == pytest.approx([float(v.rstrip(' |')) for v in free], rel=1e-3)
  # No position term, no fall-off: 0 beyond the training length, blank inside it.
  assert falloff['| (position-free)'].split(' | ')[1:] == ['', '0 |']
  inside, beyond = falloff['| nope'].split(' | ')[1:]
  assert inside == '' and float(beyond.split(' ±')[0].rstrip(' |')) == pytest.approx(0, abs=1e-6)

  # A second invocation trains nothing; a run that lost its validation sweep gets only that.
  def must_not_train(config, workdir):
    raise AssertionError(f'{workdir} was trained again.')

  swept = []
  sweep = evaluate.evaluate_workdir
  monkeypatch.setattr(train, 'train_and_evaluate', must_not_train)
  monkeypatch.setattr(evaluate, 'evaluate_workdir',
                      lambda workdir, split: swept.append(workdir) or sweep(workdir, split=split))
  (tmp_path / 'runs/ape/seed1/extrapolation_valid.json').unlink()
  again = study.run_study('lm', str(tmp_path), seeds=2, variant='smoke', steps=4,
                          only=['ape', 'nope'])
  assert again['trained'] == [('ape', 1)] and swept == [str(tmp_path / 'runs/ape/seed1')]
  assert study.run_study('lm', str(tmp_path), seeds=2, variant='smoke', steps=4,
                         only=['nope'])['trained'] == []
  # A config key added to the project after a run started is no difference: its default
  # keeps what the run did.
  recorded = tmp_path / 'runs/nope/seed0/config.json'
  old = json.loads(recorded.read_text())
  del old['model']['dtype']
  recorded.write_text(json.dumps(old))
  assert study.run_study('lm', str(tmp_path), seeds=1, variant='smoke', steps=4,
                         only=['nope'])['trained'] == []

  with pytest.raises(study.StudyError, match=r'was made by another config \(total_steps: 4 '
                     r'then, 5 now\)'):
    study.run_study('lm', str(tmp_path), seeds=1, variant='smoke', steps=5, only=['nope'])


def test_preemption_stops_and_divergence_is_recorded(tmp_path, monkeypatch):
  def diverge_or_preempt(config, workdir):
    pathlib.Path(workdir).mkdir(parents=True)
    (pathlib.Path(workdir) / 'config.json').write_text(config.to_json_best_effort())
    if config.pe.name == 'none':
      raise FloatingPointError('train/loss is nan at step 3.')
    raise cli.Preempted('SIGTERM: saved a checkpoint at step 2 and stopped.')

  monkeypatch.setattr(train, 'train_and_evaluate', diverge_or_preempt)
  with pytest.raises(study.Preempted, match='SIGTERM stopped ape seed 0'):
    study.run_study('lm', str(tmp_path), seeds=1, variant='smoke', only=['nope', 'ape'])
  assert (tmp_path / 'runs/nope/seed0' / study_report.DIVERGED).exists()
  assert not (tmp_path / 'runs/ape/seed0/extrapolation.json').exists()


def write_fake_run(root, name, seed, pe, test, valid, diag_rows):
  """A finished LM run as train.py and evaluate.py leave it."""
  run_dir = root / 'runs' / name / f'seed{seed}'
  run_dir.mkdir(parents=True)
  config = {'total_steps': 6, 'batch_size': 8, 'model': {'name': 'gpt', 'variant': 'nano'},
            'data': {'name': 'pydoc_topics', 'seq_len': 32}, 'pe': {'name': pe}}
  (run_dir / 'config.json').write_text(json.dumps(config))
  for file, values in (('extrapolation.json', test), ('extrapolation_valid.json', valid)):
    table = {'metric': 'ppl', 'axis': 'evaluation length (tokens)',
             'results': {str(x): {'ppl': v, 'nll': 1.0} for x, v in zip((32, 64), values)}}
    (run_dir / file).write_text(json.dumps(table))
  lines = [json.dumps({'step': step, 'train/loss': 3.0, **diag}) for step, diag in diag_rows]
  (run_dir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')


def test_report_tables_plots_and_summary_from_finished_runs(tmp_path):
  diag = [(2, {'diag/pe_ablation_delta': 0.1, 'diag/grad_ratio': 5.0}),
          (4, {'diag/pe_ablation_delta': 0.3})]
  write_fake_run(tmp_path, 'seqpe', 0, 'seqpe', (10.0, 20.0), (11.0, 21.0), diag)
  write_fake_run(tmp_path, 'seqpe', 1, 'seqpe', (12.0, 22.0), (13.0, 23.0), diag)
  write_fake_run(tmp_path, 'nope', 0, 'none', (15.0, 16.0), (15.0, 16.0), [(4, {})])
  names = [r.name for r in study_suites.SUITES['lm']]
  summaries = study_report.write_outputs(tmp_path, 'lm', names,
                                        'python -m lab.study --suite=lm')
  assert summaries['test']['seqpe'][32] == (11.0, pytest.approx(2 ** 0.5), 2)
  table = (tmp_path / 'results.md').read_text()
  assert '| seqpe | **11 ± 1.4** | 21 ± 1.4 |' in table  # Lowest perplexity in bold.
  assert '| nope (1 seed) | 15 | **16** |' in table
  assert '| seqpe | 5 ± 0 | 0.3 ± 0 |' in table  # diag/grad_ratio, diag/pe_ablation_delta.
  rows = read_csv(tmp_path / 'results.csv')
  assert len(rows) == 3 * 2 * 2
  assert {r['diag/pe_ablation_delta'] for r in rows if r['run'] == 'seqpe'} == {'0.3'}
  assert {r['diag/pe_ablation_delta'] for r in rows if r['run'] == 'nope'} == {''}
  assert (tmp_path / 'diagnostics.png').stat().st_size > 0
  report = (tmp_path / 'REPORT.md').read_text()
  assert '- 32: **seqpe** (12 ± 1.4)' in report and '- 64: **nope** (16)' in report
  assert ('**seqpe**. Final diag/pe_ablation_delta 0.3 ± 0 (2 seeds): it uses position. On '
          'validation it ranks 1st of 2 at the training length (32) and 2nd of 2 at the '
          'longest (64).') in report
  unfinished = [run.name for run in study_suites.SUITES['lm'] if run.name not in ('seqpe', 'nope')]
  assert f"Not finished yet: {', '.join(unfinished)}." in report


@pytest.mark.parametrize('deltas, verdict', [
    ([0.06, 0.08], 'it uses position'),
    ([0.03, 0.04], 'it uses position weakly'),
    ([0.001, 0.06], 'it does not use position'),  # Mean 0.03 but within two seed-stds of 0.
    ([2e-5, 2e-5], 'it does not use position'),  # The reference recipe's dead encoder.
    ([0.02], 'it uses position weakly'),
])
def test_position_use_verdict_needs_a_clear_loss_increase(deltas, verdict):
  assert study_report.position_use_verdict(deltas).startswith(verdict)
  if verdict == 'it uses position':
    assert 'weakly' not in study_report.position_use_verdict(deltas)


@pytest.mark.parametrize('arguments, message', [
    ({'suite': 'mlm'}, "Unknown suite 'mlm'; use one of: lm, vit, ablations."),
    ({'only': ['seqpe', 'rope2d']}, "Suite lm has no run named 'rope2d'; its runs are: seqpe,"),
    ({'seeds': 0}, '--seeds must be at least 1, got 0.'),
    ({'variant': 'paper'}, "Unknown --variant 'paper'; use smoke"),
    ({'steps': 0}, '--steps must be at least 1, got 0.'),
])
def test_bad_input_is_one_sentence(tmp_path, arguments, message):
  arguments = {'suite': 'lm', 'workdir': str(tmp_path), **arguments}
  with pytest.raises(study.StudyError, match=re.escape(message)):
    study.run_study(**arguments)
  assert not (tmp_path / 'runs').exists()


def test_command_line_bad_input_exits_2_without_traceback(tmp_path):
  process = subprocess.run(
      [sys.executable, '-m', 'lab.study', '--suite=lm', f'--workdir={tmp_path}',
       '--only=seqpe,nonesuch'], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert process.returncode == 2
  assert "Suite lm has no run named 'nonesuch'" in process.stderr.splitlines()[-1]
  assert 'Traceback' not in process.stderr
