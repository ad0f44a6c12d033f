"""End-to-end ViT training: every config's smoke run, exact resume, sharded = unsharded."""

import json
import os
import pathlib
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import lm_base, vit_base
from seqpe_jax import checkpoint, cli, evaluate, metrics, tasks, train
from seqpe_jax import state as state_lib
from tests import event_files

PES = ['seqpe', 'ape', 'sincos', 'rope2d', 'rope_mixed', 'none']
# One xdist worker runs this file, so the shared SeqPE run below is trained once.
pytestmark = pytest.mark.xdist_group('train')


def smoke_config(pe='seqpe', **overrides):
  config = vit_base.get_config('reference,smoke', pe=pe)
  config.mesh.data = 1  # One device unless a test asks for more.
  config.update_from_flattened_dict(overrides)
  return config


def read_metrics(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def losses(workdir):
  return [r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r]


def saved_params(workdir, step):
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path)['params']


@pytest.fixture(scope='module')
def seqpe_run(tmp_path_factory):
  """An uninterrupted 8-step SeqPE smoke run, shared by several tests."""
  workdir = tmp_path_factory.mktemp('seqpe8')
  results = train.train_and_evaluate(smoke_config(total_steps=8, diagnostics=True),
                                     str(workdir))
  return workdir, results


# The diag/* scalars each PE logs: an embedding table's spread, SeqPE's gradient ratio.
DIAGNOSTICS = {'diag/pe_ablation_delta', 'diag/pos_term_std'}
PE_DIAGNOSTICS = {'seqpe': {'diag/pe_spread', 'diag/grad_ratio'}, 'ape': {'diag/pe_spread'},
                  'sincos': {'diag/pe_spread'}}


@pytest.mark.parametrize('pe', PES)
def test_smoke_run_writes_the_contract_files(pe, tmp_path, seqpe_run):
  if pe == 'seqpe':
    workdir, results = seqpe_run
  else:
    workdir = tmp_path
    results = train.train_and_evaluate(smoke_config(pe, diagnostics=True), str(workdir))
  assert set(results) == {8, 16}  # Two resolutions: the 2x2 training grid and 4x4.
  rows = read_metrics(workdir)
  assert all('step' in r for r in rows)
  logged = [r for r in rows if 'train/loss' in r]
  assert logged and all(np.isfinite(r[k]) for r in logged for k in r if k.startswith('diag/'))
  assert {k for k in logged[0] if k.startswith('diag/')} == DIAGNOSTICS | PE_DIAGNOSTICS.get(
      pe, set())
  final = rows[-1]
  assert 0 <= final['eval/res16/accuracy'] <= 1 and 'eval/res8/accuracy' in final
  table = json.loads((workdir / 'extrapolation.json').read_text())
  assert table['metric'] == 'accuracy' and set(table['results']) == {'8', '16'}
  assert (workdir / 'extrapolation.png').stat().st_size > 0
  # TensorBoard gets what metrics.jsonl gets, and the config once.
  events = event_files.scalars(workdir)
  logged = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
  assert events['train/loss'] == pytest.approx(logged)
  assert set(events['train/lr']) == set(logged) and 'eval/res16/accuracy' in events
  assert 'hparams' in event_files.plugin_tags(workdir)
  assert (workdir / 'checkpoints').is_dir()


def test_preempted_run_resumes_exactly(tmp_path, seqpe_run, monkeypatch):
  reference, _ = seqpe_run
  write = metrics.MetricWriter.write

  def preempt_at_step_4(self, step, scalars):  # A TPU preemption notice, delivered at step 4.
    write(self, step, scalars)
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(metrics.MetricWriter, 'write', preempt_at_step_4)
  with pytest.raises(cli.Preempted, match='saved a checkpoint at step 4'):
    train.train_and_evaluate(smoke_config(total_steps=8), str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())[-1] == 4
  monkeypatch.setattr(metrics.MetricWriter, 'write', write)
  with (tmp_path / 'metrics.jsonl').open('a') as f:  # Rows a SIGKILLed run wrote past step 4.
    f.write(json.dumps({'step': 6, 'train/loss': 9.0}) + '\n')
  train.train_and_evaluate(smoke_config(total_steps=8), str(tmp_path))  # Resumes at 4.
  steps = [r['step'] for r in read_metrics(tmp_path) if 'train/loss' in r]
  assert steps == sorted(set(steps)) and 9.0 not in losses(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, saved_params(tmp_path, 8),
               saved_params(reference, 8))
  assert losses(tmp_path) == losses(reference)


def test_ctrl_c_mid_training_saves_and_a_rerun_resumes_exactly(tmp_path, seqpe_run,
                                                               monkeypatch, capsys):
  reference, _ = seqpe_run
  write = metrics.MetricWriter.write
  handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a backgrounded suite.

  def ctrl_c_at_step_4(self, step, scalars):
    write(self, step, scalars)
    if step == 4:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(metrics.MetricWriter, 'write', ctrl_c_at_step_4)
  with pytest.raises(cli.Interrupted, match='SIGINT: saved a checkpoint at step 4 and stopped'):
    train.train_and_evaluate(smoke_config(total_steps=8), str(tmp_path))
  assert 'Ctrl-C: saving a checkpoint after this step' in capsys.readouterr().err
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())[-1] == 4
  assert signal.getsignal(signal.SIGINT) is handler_before  # Put back.
  monkeypatch.setattr(metrics.MetricWriter, 'write', write)
  train.train_and_evaluate(smoke_config(total_steps=8), str(tmp_path))  # Resumes at 4.
  jax.tree.map(np.testing.assert_array_equal, saved_params(tmp_path, 8),
               saved_params(reference, 8))
  assert losses(tmp_path) == losses(reference)


def test_a_finished_run_rerun_adds_nothing_and_says_where_its_results_are(tmp_path, seqpe_run,
                                                                         capsys):
  reference, results = seqpe_run
  workdir = tmp_path / 'copy'
  shutil.copytree(reference, workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  assert train.train_and_evaluate(smoke_config(total_steps=8), str(workdir)) == results
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
  assert f'its results are in {workdir}/extrapolation.json' in capsys.readouterr().out


def test_sharded_losses_equal_single_device(tmp_path, seqpe_run):
  single, _ = seqpe_run  # Trained on a 1x1x1 mesh.
  assert jax.device_count() == 8
  train.train_and_evaluate(smoke_config(**{'total_steps': 8, 'mesh.data': 4, 'mesh.fsdp': 2}),
                           str(tmp_path))
  np.testing.assert_allclose(losses(tmp_path), losses(single), rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               saved_params(tmp_path, 8), saved_params(single, 8))


def test_a_checkpoint_from_another_config_is_refused(tmp_path, seqpe_run):
  reference, _ = seqpe_run
  workdir = tmp_path / 'copy'
  shutil.copytree(reference, workdir)
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  with pytest.raises(ValueError, match=r'was made by another config \(model.variant'):
    train.train_and_evaluate(smoke_config(**{'total_steps': 10, 'model.variant': 'mu/4'}),
                             str(workdir))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


@pytest.mark.parametrize('overrides, error, message', [
    ({'batch_size': 10, 'mesh.data': 4, 'mesh.fsdp': 2}, ValueError,
     'batch_size=10 is not divisible by the 8 data-parallel devices'),
    ({'eval.resolutions': (8, 10)}, ValueError,
     'Resolution 10 is not divisible by the patch size 4'),
    ({'data.name': 'fashion_mnist', 'data.dir': '/nonexistent'}, FileNotFoundError,
     'Fashion-MNIST is not in /nonexistent: install it with `apt-get install'),
    ({'eval.resolutions': (8, 404)}, ValueError, 'Position 100 does not fit 2 base-10 digits'),
])
def test_bad_input_stops_with_one_sentence(tmp_path, overrides, error, message):
  with pytest.raises(error, match=message):
    train.train_and_evaluate(smoke_config(**overrides), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())


def test_unknown_config_key_is_an_error():
  config = vit_base.get_config('smoke', pe='seqpe')
  with pytest.raises(AttributeError, match='does not exist and cannot be added'):
    config.optimizer.learning_rate = 1e-3
  with pytest.raises(ValueError, match="Unknown config variant 'tiny'"):
    vit_base.get_config('tiny', pe='seqpe')


def test_evaluate_reruns_the_sweep_from_the_checkpoint(seqpe_run):
  workdir, results = seqpe_run
  (workdir / 'extrapolation.json').unlink()
  again = evaluate.evaluate_workdir(str(workdir))
  assert again == results
  assert json.loads((workdir / 'extrapolation.json').read_text())['results']['16'] == results[16]


def test_evaluate_with_other_resolutions_leaves_the_training_record_alone(seqpe_run):
  workdir, results = seqpe_run
  record = {name: (workdir / name).read_text() for name in ('config.json', 'extrapolation.json')}
  wider = evaluate.evaluate_workdir(str(workdir), overrides={'eval.resolutions': (16, 24)},
                                    name='wide')
  assert set(wider) == {16, 24} and wider[16] == results[16]  # The same checkpoint.
  table = json.loads((workdir / 'extrapolation_wide.json').read_text())
  assert set(table['results']) == {'16', '24'}
  assert table['overrides'] == {'eval.resolutions': [16, 24]}
  assert (workdir / 'extrapolation_wide.png').stat().st_size > 0
  assert {name: (workdir / name).read_text() for name in record} == record
  with pytest.raises(ValueError, match='evaluate changes eval.. settings only'):
    evaluate.evaluate_workdir(str(workdir), overrides={'model.variant': 'S/16'}, name='x')
  with pytest.raises(ValueError, match='is not a field of the run.s config; its eval fields'):
    evaluate.evaluate_workdir(str(workdir), overrides={'eval.lengths': (8,)}, name='x')
  with pytest.raises(ValueError, match='--name'):
    evaluate.evaluate_workdir(str(workdir), overrides={'eval.resolutions': (16,)})


def test_evaluate_overrides_parse_like_the_trainers():
  rest, overrides = evaluate.parse_overrides(
      ['evaluate', '--workdir=w', '--config.eval.lengths=128,4096',
       "--config.eval.protocol=sliding", '--config.eval.stride_fraction=0.25'])
  assert rest == ['evaluate', '--workdir=w']
  assert overrides == {'eval.lengths': (128, 4096), 'eval.protocol': 'sliding',
                       'eval.stride_fraction': 0.25}
  with pytest.raises(ValueError, match='has no value'):
    evaluate.parse_overrides(['--config.eval.lengths'])


def test_a_nonfinite_state_is_never_saved_and_the_advice_works(tmp_path):
  # The warm-up's first step has learning rate 0, the next ones are huge: the loss stops
  # being finite a few steps in, with a checkpoint after every step. The trainer's handling
  # is the same for every PE; APE's step is the cheapest to build.
  diverging = smoke_config('ape', **{
      'total_steps': 8, 'optimizer.lr': 1e9, 'optimizer.warmup_steps': 4,
      'optimizer.warmup_init': 0.0, 'checkpoint_every_steps': 1, 'log_every_steps': 5})
  with pytest.raises(FloatingPointError, match=r'NaN or infinite at step (\d+);') as error:
    train.train_and_evaluate(diverging, str(tmp_path))
  first_bad = int(error.value.args[0].split('at step ')[1].split(';')[0])
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
  moved = sorted(int(p.name) for p in (tmp_path / 'checkpoints.nonfinite').iterdir())
  assert kept and kept[-1] == first_bad - 2 and moved == list(range(first_bad - 1, first_bad))
  assert f'resume from the checkpoint at step {kept[-1]}' in str(error.value)
  for step in kept:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(tmp_path, step)))
  # The advice: the same command with a smaller learning rate resumes from that checkpoint.
  train.train_and_evaluate(smoke_config('ape', **{'total_steps': 8, 'optimizer.lr': 1e-3,
                                                  'optimizer.warmup_steps': 4,
                                                  'optimizer.warmup_init': 0.0}), str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(tmp_path, 8)))


def test_the_first_nonfinite_step_is_kept_through_later_bad_steps():
  """A NaN parameter after step 1 makes steps 2, 3 and 4 all bad: the state keeps naming
  step 2, whose predecessor is the newest checkpoint a resume can use."""
  config = smoke_config('ape', total_steps=8)
  task = tasks.build(config)
  optimizer = state_lib.make_optimizer(task, config)
  state = state_lib.init_state(task, optimizer, jax.random.key(0))
  step = jax.jit(train.make_train_step(task, optimizer, jax.random.key(1),
                                       task.shift_pool(jax.random.key(2))))
  batch = jax.tree.map(jax.numpy.asarray, task.train_batches(0)[0])
  recorded = []
  for n in range(4):
    if n == 1:
      params = state['params']
      params['model'] = jax.tree.map(lambda w: w * jax.numpy.nan, params['model'])
    state, _ = step(state, batch, 1e-3)
    recorded.append(int(state['first_nonfinite_step']))
  assert recorded == [0, 2, 2, 2]


def test_a_nonfinite_loss_before_the_first_checkpoint_names_no_folder(tmp_path):
  diverging = smoke_config('ape', **{
      'total_steps': 8, 'optimizer.lr': 1e9, 'optimizer.warmup_steps': 4,
      'optimizer.warmup_init': 0.0, 'checkpoint_every_steps': 100, 'log_every_steps': 1})
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(diverging, str(tmp_path))
  assert str(error.value).endswith('nothing after it was saved, and no earlier checkpoint is '
                                   'left: start again with a smaller --config.optimizer.lr.')
  assert not (tmp_path / 'checkpoints.nonfinite').exists()


def test_an_unreadable_newest_checkpoint_is_set_aside(tmp_path, seqpe_run, caplog, capsys):
  reference, _ = seqpe_run
  workdir = tmp_path / 'copy'
  shutil.copytree(reference, workdir)
  newest = workdir / 'checkpoints' / '8' / 'state'
  for path in sorted(newest.rglob('*')):  # A save cut short: the array data is gone.
    if path.is_file() and 'metadata' not in path.name:
      path.unlink()
  train.train_and_evaluate(smoke_config(total_steps=8), str(workdir))
  warnings = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0] and 'pybind11' not in warnings[0]
  assert warnings[0].startswith(f'The checkpoint at step 8 cannot be read (') and (
      f'reading {workdir}/checkpoints/8' in warnings[0])
  assert warnings[0].endswith(f'moved it to {workdir}/checkpoints.unreadable/8 and trying the '
                              'one before.')
  # The next one was tried and taken (a fresh start would reach the same parameters).
  assert 'Resumed from step 6 in' in capsys.readouterr().out
  assert (workdir / 'checkpoints.unreadable' / '8' / 'state').is_dir()  # Moved, not deleted.
  jax.tree.map(np.testing.assert_array_equal, saved_params(workdir, 8),
               saved_params(reference, 8))  # Resumed from step 6 and redid 7 and 8.


@pytest.mark.parametrize('overrides, message', [
    ({'total_steps': 0}, 'total_steps must be a positive whole number, got 0'),
    ({'total_steps': -3}, 'total_steps must be a positive whole number, got -3'),
    ({'checkpoint_every_steps': 0}, 'checkpoint_every_steps must be a positive whole number'),
    ({'log_every_steps': 0}, 'log_every_steps must be a positive whole number'),
    ({'eval.batch_size': 0}, 'eval.batch_size must be a positive whole number'),
    ({'eval_every_steps': -1}, 'eval_every_steps must be a whole number >= 0'),
    ({'optimizer.lr': 0.0}, 'optimizer.lr must be positive'),
])
def test_settings_that_cannot_run_stop_before_any_side_effect(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(smoke_config(**overrides), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_a_cloud_workdir_without_access_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(OSError, match='Cannot create --workdir=gs://seqpe-jax-no-such-bucket/x'):
    train.train_and_evaluate(smoke_config(), 'gs://seqpe-jax-no-such-bucket/x')
  assert list(tmp_path.iterdir()) == []  # No local ./gs:/ folder.


def test_resume_allows_what_leaves_the_state_meaning_the_same():
  config = lm_base.get_config('smoke', pe='seqpe')
  changed = lm_base.get_config('smoke', pe='seqpe')
  changed.update_from_flattened_dict({
      'mesh.data': 2, 'model.attention_kernel': 'xla', 'model.attention_block': 64,
      'data.cache_dir': '/c', 'optimizer.lr': 1e-4, 'total_steps': 99, 'eval.lengths': (32,),
      'pe.seqpe.remat': 'matmuls'})  # Three levels deep: the whole path is followed.
  assert checkpoint.fingerprint(changed) == checkpoint.fingerprint(config)
  other = lm_base.get_config('smoke', pe='seqpe')
  other.update_from_flattened_dict({'seed': 3, 'optimizer.weight_decay': 0.5,
                                    'model.variant': 'tiny', 'pe.seqpe.d_model': 8})
  found = checkpoint.differences(checkpoint.fingerprint(config), checkpoint.fingerprint(other))
  assert [line.split(':')[0] for line in found] == [
      'model.variant', 'pe.seqpe.d_model', 'optimizer.weight_decay', 'seed']
  # A section one side has and the other lacks is one difference, not a crash.
  assert checkpoint.differences({'pe': {'shift': {'prob': 0.5}}, 'seed': 0}, {'seed': 0}) == [
      "pe: {'shift': {'prob': 0.5}} vs None"]


def test_a_checkpoint_older_than_a_state_entry_resumes_with_its_default(tmp_path):
  config = smoke_config()
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  old = {'params': {'w': jax.numpy.ones((2, 3))}, 'step': jax.numpy.asarray(5, jax.numpy.int32)}
  saver = checkpoint.Checkpointer(tmp_path, config)
  saver.save(5, old)
  saver.close()
  target = {**jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
                           old),
            'first_nonfinite_step': jax.ShapeDtypeStruct((), jax.numpy.int32,
                                                         sharding=one_device)}
  loader = checkpoint.Checkpointer(tmp_path, config)
  restored = loader.restore(target, defaults=state_lib.NEWER_ENTRIES)  # As train and evaluate.
  loader.close()
  assert int(restored['step']) == 5 and int(restored['first_nonfinite_step']) == 0
  np.testing.assert_array_equal(restored['params']['w'], np.ones((2, 3)))


def test_runs_that_differ_in_seed_rate_or_length_lower_to_one_program():
  """The step's rate, key and shift pool are its arguments, not constants: a study's seeds,
  learning rates and run lengths share one compiled step (and compilation-cache entry)."""
  # RoPE-2D's step draws shifted windows from the pool, as SeqPE's does, and lowers faster.
  program = lambda **overrides: train.lower_train_step(smoke_config('rope2d', **overrides)
                                                        ).as_text()
  base = program()
  assert program(seed=3, total_steps=11, **{'optimizer.lr': 3e-3, 'optimizer.warmup_steps': 5,
                                            'optimizer.schedule': 'linear'}) == base
  assert program(**{'optimizer.weight_decay': 0.5}) != base  # Still a constant of the step.


def test_compile_only_reports_the_per_device_plan_and_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # The plan, not the PE, is under test: APE compiles in a fifth of SeqPE's time, and the
  # `mu` width gives FSDP tensors large enough to split (the nano ones are replicated).
  plan = lambda mesh: train.compile_report(smoke_config('ape', **{'model.variant': 'mu/4', **mesh}))
  replicated = plan({'mesh.data': 8})
  sharded = plan({'mesh.data': 4, 'mesh.fsdp': 2})
  assert replicated['devices'] == sharded['devices'] == 8
  for report in (replicated, sharded):
    assert report['arguments_bytes'] > 0 and report['temporaries_bytes'] > 0
    assert report['flops_per_step'] > 0
    assert 0 < report['donated_bytes'] <= report['arguments_bytes']
  # FSDP splits the (large enough) parameters and their optimizer state over 2 devices.
  assert sharded['arguments_bytes'] < 0.9 * replicated['arguments_bytes']
  assert 'FLOPs per step' in train.format_compile_report(sharded)
  assert not list(tmp_path.iterdir())


def test_compile_only_says_once_that_devices_stay_idle(caplog):
  report = train.compile_report(smoke_config('ape', **{'mesh.data': 4}))
  assert report['devices'] == 4
  assert caplog.text.count('uses 4 of 8 devices') == 1
