"""benchmarks/accelerator_check.sh: usage and errors, the commands --dry-run prints, and a
real run with a stand-in Python that records its arguments (no accelerator needed)."""

import os
import pathlib
import shlex
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'accelerator_check.sh'
STEPS = ['throughput_vit', 'throughput_lm', 'attention_paths', 'compile_vit', 'compile_lm']


def _run(*args, env=None, cwd=REPO):
  return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                        env={**os.environ, **(env or {})}, timeout=60)


def _dry_run(*args, env=None):
  result = _run('--dry-run', *args, env=env)
  assert result.returncode == 0 and result.stderr == '', result
  return [shlex.split(line) for line in result.stdout.splitlines()]


def test_dry_run_prints_every_command(tmp_path):
  lines = _dry_run(str(tmp_path), env={'DEVICES': '2'})
  assert [line[-3:] for line in lines] == [['>', f'{tmp_path}/{s}.log', '2>&1'] for s in STEPS]
  assert all(line[:3] == ['timeout', '420', 'python3'] for line in lines)
  commands = [line[2:line.index('>')] for line in lines]
  vit, lm, attention, compile_vit, compile_lm = commands
  # The reference's per-device batches (256 images, 32 sequences) on 2 devices, in bfloat16.
  assert vit == ['python3', '-m', 'benchmarks.throughput', '--models=vit', '--scale=paper',
                 '--dtype=bfloat16', '--batch=512']
  assert lm[2:] == ['benchmarks.throughput', '--models=lm', '--scale=paper',
                    '--dtype=bfloat16', '--batch=64']
  assert attention[2:] == ['benchmarks.attention_paths', '--variant=small', '--length=512',
                           '--batch=32', '--dtype=bfloat16']
  assert compile_vit[2:5] == ['seqpe_jax.main', '--config=configs/vit_seqpe.py:paper',
                              '--compile_only']
  assert '--config.eval.resolutions=(224,)' in compile_vit
  assert compile_lm[2:5] == ['seqpe_jax.main', '--config=configs/lm_seqpe.py:paper',
                             '--compile_only']
  assert '--config.data.name=wiki_gensim' in compile_lm


def test_out_dir_defaults_to_out_then_a_local_folder(tmp_path):
  assert _dry_run(env={'OUT': str(tmp_path), 'DEVICES': '1'})[0][-2] == (
      f'{tmp_path}/throughput_vit.log')
  env = {k: v for k, v in os.environ.items() if k != 'OUT'}
  result = subprocess.run([str(SCRIPT), '--dry-run'], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
  assert f'{tmp_path}/accelerator_check/compile_lm.log' in result.stdout


def test_a_run_logs_each_step_and_reports_failures(tmp_path):
  """A stand-in Python prints its arguments and fails the attention benchmark."""
  fake = tmp_path / 'python'
  fake.write_text('#!/usr/bin/env bash\necho "args: $*"\n'
                  '[[ $* == *attention_paths* ]] && exit 3\nexit 0\n')
  fake.chmod(0o755)
  out = tmp_path / 'out'
  result = _run(str(out), env={'PYTHON': str(fake), 'DEVICES': '1'})
  assert result.returncode == 1, result
  status = [line.split()[:2] for line in (out / 'status.txt').read_text().splitlines()]
  assert status == [[s, '3' if s == 'attention_paths' else '0'] for s in STEPS]
  assert (out / 'compile_lm.log').read_text().startswith(
      'args: -m seqpe_jax.main --config=configs/lm_seqpe.py:paper --compile_only')


def test_help_and_bad_input():
  result = _run('--help')
  assert result.returncode == 0 and 'accelerator_check.sh [--dry-run] [OUT_DIR]' in result.stdout
  for args, env, message in ((['a', 'b'], {}, 'expected at most one OUT_DIR'),
                             (['--fast'], {}, "unknown option '--fast'"),
                             (['--dry-run'], {'DEVICES': 'two'}, 'DEVICES must be a positive')):
    result = _run(*args, env=env)
    assert result.returncode == 2 and result.stdout == '', result
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
