"""launch/*.sh: usage and errors, the commands --dry-run prints (overrides intact through
every level of quoting), and the real process handling of each script with stand-ins for
the trainer, gcloud, srun and scontrol; no training."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
# One with a space, one with single quotes (as typed: --config.eval.lengths="'(128, 256)'"),
# one with a double quote: each must reach seqpe_jax.main as this exact argument.
OVERRIDES = ['--config.pe.name=seq pe', "--config.eval.lengths='(128, 256)'",
             '--config.data.dir=/data/a "b"']
POSITIONALS = {
    'local_multiprocess.sh': ['2', 'configs/vit_seqpe.py:smoke', '/tmp/runs/vit'],
    'gpu_slurm.sh': ['configs/vit_seqpe.py:smoke', '/shared/runs/vit'],
    'tpu_pod.sh': ['my-tpu', 'us-central2-b', 'configs/vit_seqpe.py:paper', 'gs://b/runs/vit'],
}


def _run(script, *args, env=None, cwd=REPO, timeout=30):
  return subprocess.run([str(LAUNCH / script), *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def _one_sentence_error(result):
  assert result.returncode == 2, result
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].endswith('.'), result.stderr
  return lines[0]


def _after(tokens, first):
  """The tokens after the first occurrence of `first`."""
  return tokens[tokens.index(first) + 1:]


@pytest.mark.parametrize('script', sorted(POSITIONALS))
def test_help_prints_usage_and_runs_nothing(script):
  result = _run(script, '--help', env={'PATH': '/usr/bin:/bin'})
  assert result.returncode == 0, result.stderr
  assert f'launch/{script}' in result.stdout and '--dry-run' in result.stdout
  assert not any(line.startswith(('#SBATCH', 'SBATCH')) for line in result.stdout.splitlines())
  assert result.stderr == ''


@pytest.mark.parametrize('script', sorted(POSITIONALS))
def test_too_few_arguments_is_a_usage_error(script):
  message = _one_sentence_error(_run(script, *POSITIONALS[script][:-1]))
  assert '--help' in message


@pytest.mark.parametrize('script', sorted(POSITIONALS))
def test_an_unknown_option_in_place_of_an_argument_is_a_usage_error(script):
  _one_sentence_error(_run(script, '--dryrun', *POSITIONALS[script]))


def test_local_multiprocess_rejects_a_bad_process_count_and_device_count():
  assert 'NUM_PROCESSES' in _one_sentence_error(_run('local_multiprocess.sh', 'two', 'c', 'w'))
  assert 'NUM_PROCESSES' in _one_sentence_error(_run('local_multiprocess.sh', '0', 'c', 'w'))
  message = _one_sentence_error(_run('local_multiprocess.sh', '--dry-run', '2', 'c', 'w',
                                     env={'DEVICES_PER_PROCESS': 'x'}))
  assert 'DEVICES_PER_PROCESS' in message


def test_local_multiprocess_refuses_a_remote_workdir():
  message = _one_sentence_error(_run('local_multiprocess.sh', '2', 'c', 'gs://b/runs/x'))
  assert 'local directory' in message and 'gs://b/runs/x' in message


def test_tpu_pod_refuses_a_local_workdir():
  for workdir in ('/tmp/runs/x', 'runs/x', 's3://b/x'):
    message = _one_sentence_error(_run('tpu_pod.sh', 't', 'z', 'c', workdir))
    assert 'gs://' in message and workdir in message


def test_gpu_slurm_outside_a_job_asks_for_sbatch():
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  result = subprocess.run([str(LAUNCH / 'gpu_slurm.sh'), 'c', 'w'], capture_output=True,
                          text=True, env=env, timeout=30)
  assert 'sbatch' in _one_sentence_error(result)


def test_local_multiprocess_dry_run_prints_one_command_per_process(tmp_path):
  env = {'PYTHON': 'python3', 'XLA_FLAGS': '--xla_dump_to=/tmp/x '
         '--xla_force_host_platform_device_count=8', 'DEVICES_PER_PROCESS': '3'}
  result = _run('local_multiprocess.sh', '--dry-run', '3', 'configs/vit_seqpe.py:smoke',
                'runs/vit', *OVERRIDES, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3
  ports = set()
  for i, line in enumerate(lines):
    words = shlex.split(line)
    assert words[:4] == ['env', 'JAX_PLATFORMS=cpu',
                         'XLA_FLAGS=--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=3',
                         'JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo']
    address = '--coordinator_address=127.0.0.1:'
    assert words[4:] == [
        'python3', '-u', '-m', 'seqpe_jax.main', '--config=configs/vit_seqpe.py:smoke',
        f'--workdir={tmp_path.resolve()}/runs/vit', *OVERRIDES, words[-3], '--num_processes=3',
        f'--process_id={i}']  # The config is the repository's; the workdir is the caller's.
    assert words[-3].startswith(address)
    ports.add(int(words[-3][len(address):]))
  assert len(ports) == 1 and 0 < ports.pop() < 65536
  assert not (tmp_path / 'runs').exists()  # Ran nothing.
  result = _run('local_multiprocess.sh', '--dry-run', '1', 'c', '/w', env={'PORT': '1234'})
  assert '--coordinator_address=127.0.0.1:1234' in shlex.split(result.stdout)


def test_gpu_slurm_dry_run_prints_the_srun_command():
  result = _run('gpu_slurm.sh', '--dry-run', *POSITIONALS['gpu_slurm.sh'], *OVERRIDES,
                env={'PYTHON': '/opt/env/bin/python'})
  assert result.returncode == 0, result.stderr
  assert [shlex.split(line) for line in result.stdout.splitlines()] == [[
      'srun', '/opt/env/bin/python', '-u', '-m', 'seqpe_jax.main', '--distributed',
      '--config=configs/vit_seqpe.py:smoke', '--workdir=/shared/runs/vit', *OVERRIDES]]


def test_gpu_slurm_asks_for_one_task_per_gpu_a_warning_signal_and_requeueing():
  directives = [line.split()[1] for line in (LAUNCH / 'gpu_slurm.sh').read_text().splitlines()
                if line.startswith('#SBATCH')]
  assert {'--ntasks-per-node=8', '--gpus-per-node=8', '--signal=TERM@120', '--requeue',
          '--output=slurm-%j.out'} <= set(directives)


def _tpu_commands(stdout):
  scp, setup, start = [shlex.split(line) for line in stdout.splitlines()]
  remote = {}
  for name, words in (('setup', setup), ('start', start)):
    assert words[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
    assert {'my-tpu', '--worker=all', '--zone=us-central2-b'} <= set(words)
    (command,) = [w[len('--command='):] for w in words if w.startswith('--command=')]
    remote[name] = shlex.split(command)
  return scp, remote['setup'], remote['start']


def test_tpu_pod_dry_run_prints_the_gcloud_commands_with_the_overrides_intact():
  result = _run('tpu_pod.sh', '--dry-run', *POSITIONALS['tpu_pod.sh'], *OVERRIDES,
                env={'PATH': '/usr/bin:/bin:/nonexistent'})  # gcloud need not exist.
  assert result.returncode == 0, result.stderr
  scp, setup, start = _tpu_commands(result.stdout)
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert scp[5].endswith('.tar.gz') and scp[6] == 'my-tpu:seqpe_jax.tar.gz'
  assert '--worker=all' in scp
  assert 'jax[tpu]' in setup and 'requirements.txt' in setup
  assert ['rm', '-rf', '~/seqpe_jax'] == setup[setup.index('rm'):setup.index('rm') + 3]
  assert ['nohup', 'setsid', 'bash', '-c'] == start[start.index('nohup'):start.index('-c') + 1]
  job = shlex.split(_after(start, '-c')[0])
  assert job[:7] == ['python3', '-u', '-m', 'seqpe_jax.main', '--distributed',
                     '--config=configs/vit_seqpe.py:paper', '--workdir=gs://b/runs/vit']
  assert job[7:7 + len(OVERRIDES)] == OVERRIDES
  assert '>>~/seqpe_jax_logs/vit.log' in start


def _executable(path, text):
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(0o755)
  return path


@pytest.fixture
def stand_in_main(tmp_path):
  """A module for SEQPE_LAUNCH_MODULE: sleeps, then exits with the status given for its
  process id; SIGTERM makes it exit 143 at once, as the trainer does after saving."""
  modules = tmp_path / 'modules'
  modules.mkdir()
  (modules / 'stand_in_main.py').write_text(textwrap.dedent('''
      import os, signal, sys, time
      flags = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
      process_id = int(flags['process_id'])

      def preempted(*_):
        print('SIGTERM', flush=True)
        sys.exit(143)

      signal.signal(signal.SIGTERM, preempted)
      print('argv', sys.argv[1:], flush=True)
      statuses = [int(s) for s in os.environ['STAND_IN_STATUSES'].split(',')]
      time.sleep(float(os.environ.get('STAND_IN_SECONDS', '0.3')) * (1 + process_id))
      sys.exit(statuses[process_id])
  '''))
  return {'PYTHONPATH': str(modules), 'SEQPE_LAUNCH_MODULE': 'stand_in_main',
          'PYTHON': sys.executable}


@pytest.mark.parametrize('statuses, expected', [
    ('0,0', 0),
    ('0,2', 2),     # A user error in one process is the launcher's status.
    ('3,143', 3),   # Process 0 fails first (it sleeps less).
    ('0,0,143', 143),
])
def test_local_multiprocess_exits_with_the_first_failure(tmp_path, stand_in_main, statuses,
                                                         expected):
  n = len(statuses.split(','))
  result = _run('local_multiprocess.sh', str(n), 'configs/vit_seqpe.py:smoke', 'w', *OVERRIDES,
                env={**stand_in_main, 'STAND_IN_STATUSES': statuses}, cwd=tmp_path)
  assert result.returncode == expected, result.stderr
  logs = tmp_path / 'w' / 'logs'
  assert len((logs / 'pids').read_text().split()) == n
  for i in range(n):
    argv = (logs / f'process_{i}.log').read_text()
    assert f"'--process_id={i}'" in argv and repr(OVERRIDES)[1:-1] in argv
  if expected:
    assert f'status {expected}' in result.stderr


def _wait_until(condition, what, timeout=5.):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.05)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


@pytest.mark.parametrize('target', ['launcher', 'one process'])
def test_local_multiprocess_sigterm_reaches_the_processes_and_exits_143(tmp_path, stand_in_main,
                                                                        target):
  env = {**os.environ, **stand_in_main, 'STAND_IN_STATUSES': '0,0',
         'STAND_IN_SECONDS': '60' if target == 'launcher' else '1.5'}
  launcher = subprocess.Popen([str(LAUNCH / 'local_multiprocess.sh'), '2', 'c', str(tmp_path)],
                              env=env, stderr=subprocess.PIPE, text=True)
  try:
    logs = tmp_path / 'logs'
    _wait_until(lambda: (logs / 'pids').exists(), 'logs/pids')
    pids = [int(p) for p in (logs / 'pids').read_text().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    # A stand-in prints its argv once its SIGTERM handler is in place.
    _wait_until(lambda: all('argv' in (logs / f'process_{i}.log').read_text() for i in range(2)),
                'the processes to start')
    os.kill(launcher.pid if target == 'launcher' else pids[0], signal.SIGTERM)
    assert launcher.wait(timeout=10) == 143
  finally:
    if launcher.poll() is None:
      launcher.kill()
  terminated = [i for i in range(2) if 'SIGTERM' in (logs / f'process_{i}.log').read_text()]
  # To the launcher: every process saves and stops. To one process (a preempted host): it
  # stops, the other finishes, and the launcher still reports the preemption.
  assert terminated == ([0, 1] if target == 'launcher' else [0])
  assert not any(_alive(pid) for pid in pids)


def test_tpu_pod_syncs_installs_and_starts_detached_with_fake_gcloud(tmp_path):
  """Runs tpu_pod.sh for real against a gcloud that runs each worker command here, with
  HOME a temporary directory and a bucket on disk: checks the three levels of quoting."""
  home, bucket, bin_dir = tmp_path / 'home', tmp_path / 'gcs', tmp_path / 'bin'
  for d in (home, bucket, bin_dir):
    d.mkdir()
  (home / 'seqpe_jax').mkdir()
  (home / 'seqpe_jax' / 'stale.py').write_text('')  # From an earlier sync: must go.
  _executable(bin_dir / 'gcloud', f'''
      #!/usr/bin/env bash
      set -euo pipefail
      export HOME={home}
      echo "$*" >>{tmp_path}/gcloud_calls
      case "$1 $2" in
        "compute tpus") ;;
        "storage cp") to={bucket}/${{4#gs://}}; mkdir -p "$(dirname "$to")"; cp "$3" "$to"; exit ;;
        *) exit 1 ;;
      esac
      case "$4" in
        scp) cp "$5" "$HOME/${{6#*:}}" ;;
        ssh) for arg; do [[ $arg != --command=* ]] || command=${{arg#--command=}}; done
             cd "$HOME" && bash -c "$command" ;;
      esac
  ''')
  _executable(bin_dir / 'pgrep', '#!/bin/sh\nexit 1\n')  # No earlier run still going.
  _executable(bin_dir / 'curl', '#!/bin/sh\necho 3\n')   # The metadata server: worker 3.
  python = _executable(tmp_path / 'python', f'''
      #!{sys.executable}
      import json, os, sys
      with open({str(tmp_path / 'python_calls')!r}, 'a') as f:
        f.write(json.dumps([os.getcwd(), *sys.argv[1:]]) + '\\n')
      sys.exit(143 if 'seqpe_jax.main' in sys.argv else 0)
  ''')
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'PYTHON': str(python),
         'TMPDIR': str(tmp_path)}
  result = _run('tpu_pod.sh', 'my-tpu', 'us-central2-b', 'configs/vit_seqpe.py:paper',
                'gs://b/runs/vit', *OVERRIDES, env=env)
  assert result.returncode == 0, result.stderr
  assert 'tail -f ~/seqpe_jax_logs/vit.log' in result.stdout

  copied_log = bucket / 'b' / 'runs' / 'vit' / 'logs' / 'worker_3.log'
  _wait_until(copied_log.exists, 'the detached run to end and copy its log')
  assert 'tpu_pod.sh: exit status 143' in copied_log.read_text()
  checkout = home / 'seqpe_jax'
  assert (checkout / 'seqpe_jax' / 'main.py').exists()
  assert (checkout / 'launch' / 'tpu_pod.sh').exists()
  assert not (checkout / 'stale.py').exists() and not (checkout / 'results').exists()
  assert not (home / 'seqpe_jax.tar.gz').exists()
  install, run = [json.loads(line) for line in (tmp_path / 'python_calls').read_text().splitlines()]
  assert install[0] == str(checkout) and 'jax[tpu]' in install
  assert run == [str(checkout), '-u', '-m', 'seqpe_jax.main', '--distributed',
                 '--config=configs/vit_seqpe.py:paper', '--workdir=gs://b/runs/vit', *OVERRIDES]
  assert not list(tmp_path.glob('seqpe_jax_bundle.*'))  # The local bundle is cleaned up.


@pytest.mark.parametrize('status, requeueable, requeued', [
    (143, 1, True), (143, 0, False), (0, 1, False), (2, 1, False)])
def test_gpu_slurm_requeues_a_preempted_job(tmp_path, status, requeueable, requeued):
  """The batch script as Slurm runs it: a copy in a spool directory, with srun and
  scontrol standing in; the checkout comes from the submitted command's path."""
  bin_dir, spool = tmp_path / 'bin', tmp_path / 'spool'
  bin_dir.mkdir()
  spool.mkdir()
  script = spool / 'slurm_script'
  script.write_text((LAUNCH / 'gpu_slurm.sh').read_text())
  script.chmod(0o755)
  _executable(bin_dir / 'srun', f'''
      #!{sys.executable}
      import json, os, sys
      open({str(tmp_path / 'srun')!r}, 'w').write(json.dumps([os.getcwd(), *sys.argv[1:]]))
      sys.exit({status})
  ''')
  _executable(bin_dir / 'scontrol', f'''
      #!/bin/sh
      case "$1" in
        show) echo "JobId=$3 JobName=seqpe_jax"
              echo "   Requeue={requeueable} Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0"
              echo "   Command={LAUNCH}/gpu_slurm.sh configs/vit_seqpe.py:smoke runs/vit" ;;
        requeue) echo "$2" >{tmp_path}/requeued ;;
      esac
  ''')
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'SLURM_JOB_ID': '42',
         'SLURM_SUBMIT_DIR': str(tmp_path), 'PYTHON': 'python3'}
  result = subprocess.run([str(script), 'configs/vit_seqpe.py:smoke', 'runs/vit', *OVERRIDES],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
  assert result.returncode == status, result.stderr
  assert json.loads((tmp_path / 'srun').read_text()) == [
      str(REPO), 'python3', '-u', '-m', 'seqpe_jax.main', '--distributed',
      '--config=configs/vit_seqpe.py:smoke', f'--workdir={tmp_path.resolve()}/runs/vit', *OVERRIDES]
  assert (tmp_path / 'requeued').exists() == requeued
  if requeued:
    assert (tmp_path / 'requeued').read_text().strip() == '42'
