"""Real multi-process runs: 2 processes x 4 CPU devices over loopback, started by
launch/local_multiprocess.sh as a user would. A SIGTERM to one process stops both at the
same step with one checkpoint and the "preempted" status, and the resumed run ends
bit-identical to an uninterrupted one; a Ctrl-C to the launcher saves one step on both and
exits 130 (a resume restores such a checkpoint the same way: tests/train_test.py resumes
after a Ctrl-C); evaluation counts every token once."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import lm_base
from seqpe_jax import cli
from seqpe_jax.data import text

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group('multiprocess')

# Enough steps after the first logged one (step 3) that a Ctrl-C sent there is agreed on
# before the last: the processes settle the stopping step through JAX's coordination service,
# which took up to 2 s on a loaded 2-core machine, while a smoke step takes ~0.1-0.3 s.
STEPS = 30
OVERRIDES = [f'--config.total_steps={STEPS}', '--config.log_every_steps=3',
             '--config.checkpoint_every_steps=100', '--config.eval.lengths=(48,)']
# The processes share the tests' compilation cache through the environment conftest.py set:
# the second and third runs compile nothing.
ENV = {'DEVICES_PER_PROCESS': '4',
       'PYTHON': sys.executable}  # The launcher's default python3 may lack this environment.


def launch(workdir):
  return subprocess.Popen(
      [str(REPO / 'launch/local_multiprocess.sh'), '2', 'configs/lm_ape.py:smoke',
       str(workdir), *OVERRIDES],
      env={**os.environ, **ENV}, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal():
  """SIGINT at its default, as a terminal's foreground job has it: a suite started in the
  background of a non-interactive shell ignores SIGINT, the launcher would inherit that,
  and bash cannot trap a signal ignored on entry."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def logs(workdir):
  return '\n'.join((workdir / f'logs/process_{i}.log').read_text() for i in range(2))


def _read(path):
  return path.read_text() if path.exists() else ''


def finish(process, workdir, timeout=300):
  try:
    process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode


def metric_rows(workdir):
  path = workdir / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def saved_params(workdir, step):
  """The parameters of a checkpoint the 2-process run saved, read here onto one device."""
  path = workdir / 'checkpoints' / str(step) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                        checkpointer.metadata(path).item_metadata)
  return checkpointer.restore(path, target)['params']


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  assert finish(launch(workdir), workdir) == 0, logs(workdir)
  return workdir


def test_evaluation_counts_every_token_once(uninterrupted):
  config = lm_base.get_config('smoke', pe='ape')
  directory = text.corpus_dir(config.data.name, config.data.dir, config.data.cache_dir)
  tokenizer = text.load_tokenizer(config.data.tokenizer, directory, config.data.vocab_size,
                                  config.data.cache_dir)
  tokens = text.tokenize_splits(directory, tokenizer, config.data.cache_dir)[config.eval.split]
  final = [r for r in metric_rows(uninterrupted) if 'eval/len48/tokens' in r][-1]
  for length in (48,):
    _, mask = text.eval_windows(tokens, length)
    assert final[f'eval/len{length}/tokens'] == mask[:, 1:].sum()  # Not twice on 2 processes.


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(
    uninterrupted, tmp_path):
  process = launch(tmp_path)
  # The notice comes once process 1 has joined the run (its preemption handler is in place)
  # and before it has compiled: well before the last step, however fast the steps are.
  joined = lambda: 'Process 1 of 2' in _read(tmp_path / 'logs/process_1.log')
  deadline = time.time() + 240
  while not joined() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  pids = (tmp_path / 'logs/pids').read_text().split()
  os.kill(int(pids[1]), signal.SIGTERM)  # The scheduler's notice reaches one host.
  signalled = time.time()
  assert finish(process, tmp_path) == cli.EXIT_PREEMPTED, logs(tmp_path)
  assert time.time() - signalled < 60
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
  assert len(saved) == 1 and saved[0] < STEPS
  stops = [line for line in logs(tmp_path).splitlines() if 'saved a checkpoint at step' in line]
  assert len(stops) == 2 and all(f'at step {saved[0]} ' in line for line in stops), stops

  assert finish(launch(tmp_path), tmp_path) == 0, logs(tmp_path)  # The same command resumes.
  reference, resumed = saved_params(uninterrupted, STEPS), saved_params(tmp_path, STEPS)
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  steps = [r['step'] for r in metric_rows(tmp_path) if 'train/loss' in r]
  assert steps == list(range(3, STEPS + 1, 3))


def test_ctrl_c_to_the_launcher_saves_one_step_on_both_and_exits_130(tmp_path):
  process = launch(tmp_path)
  # Once training runs (before, there is nothing to save and a Ctrl-C just stops): the
  # first logged step, with STEPS - 3 still to go.
  training = lambda: 'step 3/' in _read(tmp_path / 'logs/process_0.log')
  deadline = time.time() + 240
  while not training() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)  # Ctrl-C in the launcher's terminal.
  assert finish(process, tmp_path) == cli.EXIT_INTERRUPTED, logs(tmp_path)
  console = process.stdout.read()  # Process 0's output, streamed by the launcher.
  assert 'Process 0 of 2' in console and 'Ctrl-C: saving a checkpoint' in console, console
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
  assert len(saved) == 1 and 3 < saved[0] < STEPS
  stops = [line for line in logs(tmp_path).splitlines() if 'saved a checkpoint at step' in line]
  assert len(stops) == 2 and all(f'SIGINT: saved a checkpoint at step {saved[0]} ' in line
                                 for line in stops), stops
