"""The command lines as a user meets them: one sentence and status 2 for bad input before
anything is created, tracebacks on request, and `evaluate --compare` keeping runs apart."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from seqpe_jax import cli, evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'seqpe_jax.main', *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def error_line(result):
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  return errors[0]


@pytest.mark.parametrize('args, message', [
    (['--config=configs/vit_seqpe_typo.py'],
     'error: the config file configs/vit_seqpe_typo.py does not exist'),
    (['--config=configs/vit_seqpe.py:smoke', '--config.optimizer.lrr=0.1'],
     'error: --config.optimizer.lrr is not a field of the config; did you mean '
     '--config.optimizer.lr?'),
    (['--config=configs/vit_seqpe.py:smoke', '--config.pe.name=rop'],
     "error: pe.name='rop' is not one of: "),
])
def test_bad_input_is_one_sentence_and_status_2_before_any_side_effect(tmp_path, args, message):
  workdir = tmp_path / 'run'
  line = error_line(run_main(*args, f'--workdir={workdir}'))
  assert line.startswith(message) and ('rop' not in message or "did you mean 'rope'?" in line)
  assert not workdir.exists()


def write_run(directory, value):
  directory.mkdir(parents=True)
  (directory / 'extrapolation.json').write_text(json.dumps(
      {'metric': 'ppl', 'axis': 'length', 'results': {'128': {'ppl': value}}}))


def test_compare_keeps_runs_with_the_same_folder_name_apart(tmp_path):
  write_run(tmp_path / 'runs/ape/seed0', 10.0)
  write_run(tmp_path / 'runs/rope/seed0', 20.0)
  table = evaluate.compare([str(tmp_path / 'runs/ape/seed0'), str(tmp_path / 'runs/rope/seed0')],
                           str(tmp_path / 'both.png'))
  assert '| ape/seed0 | 10 |' in table and '| rope/seed0 | 20 |' in table
  assert (tmp_path / 'both.png').stat().st_size > 0
  with pytest.raises(ValueError, match='listed twice'):
    evaluate.compare([str(tmp_path / 'runs/ape/seed0')] * 2, str(tmp_path / 'x.png'))


def test_both_tables_are_markdown_with_a_delimiter_cell_per_column(tmp_path):
  sweep = {56: {'accuracy': 0.25, 'loss': 2.0}, 28: {'accuracy': 0.5, 'loss': 1.5}}
  assert evaluate.results_table(sweep, 'resolution (px)').splitlines() == [
      '| resolution (px) | accuracy | loss |', '|---|---|---|', '| 28 | 0.5 | 1.5 |',
      '| 56 | 0.25 | 2 |']
  write_run(tmp_path / 'a', 10.0)
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'extrapolation.json').write_text(json.dumps(
      {'metric': 'ppl', 'axis': 'length', 'results': {'256': {'ppl': 30.0}}}))
  table = evaluate.compare([str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'x.png'))
  assert table.splitlines() == ['| run | 128 | 256 |', '|---|---|---|', '| a | 10 |  |',
                                '| b |  | 30 |']


def test_run_labels_are_the_shortest_distinct_suffixes():
  assert evaluate.run_labels(['/a/x/seed0', '/a/y/seed0', '/b/z']) == {
      '/a/x/seed0': 'x/seed0', '/a/y/seed0': 'y/seed0', '/b/z': 'z'}
  assert evaluate.run_labels(['/r/one/s', '/q/one/s']) == {'/r/one/s': 'r/one/s',
                                                          '/q/one/s': 'q/one/s'}


def test_a_smoke_run_is_quiet_by_default_and_fills_the_compilation_cache(tmp_path):
  """At most 40 console lines (progress, evaluation, no library INFO logs), and the
  persistent compilation cache under the project's cache directory by default."""
  cache = tmp_path / 'cache'
  result = run_main('--config=configs/lm_ape.py:smoke', f'--workdir={tmp_path / "run"}',
                    env={'SEQPE_CACHE_DIR': str(cache), 'JAX_COMPILATION_CACHE_DIR': ''})
  assert result.returncode == 0, result.stderr[-2000:]
  lines = (result.stdout + result.stderr).splitlines()
  assert len(lines) <= 40, '\n'.join(lines)
  assert [line.split()[:2] for line in lines if line.startswith('step ')] == [
      ['step', '2/6'], ['step', '4/6'], ['step', '6/6']]
  assert any(line.startswith('Final evaluation, ppl: 32 ') for line in lines)
  assert not any('orbax' in line or line.startswith('I1') for line in lines), '\n'.join(lines)
  assert any((cache / 'xla').iterdir())


def test_configs_resolve_from_outside_the_checkout(tmp_path, monkeypatch):
  from seqpe_jax import cli  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  assert cli._installed_config('--config=configs/lm_ape.py:smoke') == (
      f'--config={REPO / "configs/lm_ape.py"}:smoke')
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs/lm_ape.py').write_text('')  # A config of one's own wins.
  assert cli._installed_config('--config=configs/lm_ape.py') == '--config=configs/lm_ape.py'
  assert cli._installed_config('--config=configs/missing.py') == '--config=configs/missing.py'
  assert cli._installed_config('--workdir=configs/lm_ape.py') == '--workdir=configs/lm_ape.py'


YNN_PROBE = '''
import sys
from seqpe_jax import cli
if sys.argv[1] != 'default':
  cli.prepare_process(sys.argv[1])
import jax, jax.numpy as jnp
step = jax.jit(lambda x, w: jax.nn.gelu(x @ w + 1.0))
print('__ynn_fusion' in step.lower(jnp.ones((64, 128)), jnp.ones((128, 256))).compile().as_text())
'''


@pytest.mark.parametrize('mode, fused', [('default', True), ('float32', False),
                                         ('bfloat16', True)])
def test_entry_points_compile_without_ynnpack_fusions(mode, fused):
  """XLA:CPU's YNNPACK fusions cost memory and page faults at batch 32; every entry point
  of a float32 run turns them off before JAX starts (the probe fails if XLA stops making
  them by default). bfloat16 keeps them: XLA's own products cannot compile its steps."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_DISABLE_MOST_OPTIMIZATIONS')}
  process = subprocess.run([sys.executable, '-c', YNN_PROBE, mode], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)
  assert process.stdout.strip() == str(fused)


def test_a_users_own_ynn_setting_is_kept(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot')
  cli.without_ynn_fusions()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  cli.without_ynn_fusions()
  assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                                     '--xla_cpu_experimental_ynn_fusion_type=')


def test_the_preempted_status_is_143_which_the_slurm_launcher_requeues():
  """143 is what a shell reports for a process ended by SIGTERM (128 + 15), and the number
  launch/gpu_slurm.sh requeues on: the constant, the signal and the script must agree."""
  assert cli.EXIT_PREEMPTED == 143 == 128 + signal.SIGTERM
  script = (REPO / 'launch' / 'gpu_slurm.sh').read_text()
  requeued_on = re.findall(r'if \[ "\$status" = (\d+) \]; then', script)
  assert requeued_on == [str(cli.EXIT_PREEMPTED)]
