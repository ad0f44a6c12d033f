"""The workdir lock: one holder at a time, stale locks taken over, bounded storage waits.

gs:// runs on an in-memory fake of gcsfs (exclusive create as GCS's ifGenerationMatch=0),
registered with fsspec for the test; nothing touches the network.
"""

import errno
import fcntl
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from seqpe_jax import workdir_lock

HOLD = """
import sys
from seqpe_jax import workdir_lock
with workdir_lock.held(sys.argv[1], purpose='train'):
  print('held', flush=True)
  sys.stdin.readline()
"""


def dead_pid() -> int:
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


@pytest.fixture
def other_holder(tmp_path):
  """A process holding tmp_path/run until the test ends."""
  process = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path / 'run')],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
  assert process.stdout.readline().strip() == 'held'
  yield process
  if process.returncode is None:
    process.communicate('\n', timeout=60)


def test_a_second_holder_is_refused_with_the_holders_name(tmp_path, other_holder):
  with pytest.raises(workdir_lock.WorkdirInUse) as error:
    with workdir_lock.held(tmp_path / 'run', purpose='evaluate'):
      pass
  message = str(error.value)
  assert f'is in use by train (pid {other_holder.pid} on host {socket.gethostname()}, ' \
         'started 20' in message and message.endswith('or pass another --workdir.')
  assert message.count('. ') == 0  # One sentence.
  other_holder.communicate('\n', timeout=60)
  with workdir_lock.held(tmp_path / 'run', purpose='evaluate'):  # Free once the holder ends.
    assert json.loads((tmp_path / 'run' / 'workdir.lock').read_text())['purpose'] == 'evaluate'
  assert not (tmp_path / 'run' / 'workdir.lock').exists()  # A clean exit leaves no lock file.


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  (tmp_path / 'workdir.lock').write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': dead_pid(), 'purpose': 'train', 'started': 0}))
  with workdir_lock.held(tmp_path, purpose='train'):
    assert json.loads((tmp_path / 'workdir.lock').read_text())['pid'] == os.getpid()
  assert 'Took over the lock of' in caplog.text and '1970-01-01 00:00:00 UTC' in caplog.text


def test_the_holder_may_enter_again_and_keeps_the_lock_until_the_outer_block_ends(tmp_path):
  with workdir_lock.held(tmp_path, purpose='study'):
    with workdir_lock.held(tmp_path, purpose='evaluate'):
      pass
    assert (tmp_path / 'workdir.lock').exists()
  assert not (tmp_path / 'workdir.lock').exists()


def test_a_failed_start_leaves_no_workdir_behind(tmp_path):
  with pytest.raises(ValueError, match='bad input'):
    with workdir_lock.held(tmp_path / 'new', purpose='train'):
      raise ValueError('bad input')
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'kept').mkdir()
  with pytest.raises(ValueError):
    with workdir_lock.held(tmp_path / 'kept', purpose='train'):
      raise ValueError('bad input')
  assert (tmp_path / 'kept').is_dir()  # It was there before: not the lock's to remove.


@pytest.mark.parametrize('code', [errno.ENOLCK, errno.EOPNOTSUPP], ids=['ENOLCK', 'EOPNOTSUPP'])
def test_without_flock_a_failed_start_leaves_no_workdir_behind(tmp_path, monkeypatch, code):
  def no_flock(fd, operation):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(fcntl, 'flock', no_flock)
  with pytest.raises(ValueError, match='bad input'):
    with workdir_lock.held(tmp_path / 'new', purpose='train'):
      raise ValueError('bad input')
  assert not (tmp_path / 'new').exists()
  with workdir_lock.held(tmp_path / 'run', purpose='train'):
    pass
  assert list((tmp_path / 'run').iterdir()) == []  # A clean exit leaves no lock file either.


class FakeGcs(MemoryFileSystem):
  """gcsfs's interface on memory; `answering` cleared: every call waits (no network)."""
  protocol = ('gs', 'gcs')
  answering = threading.Event()

  @classmethod
  def _strip_protocol(cls, path):
    for prefix in ('gs://', 'gcs://'):
      path = path[len(prefix):] if path.startswith(prefix) else path
    return MemoryFileSystem._strip_protocol(path)

  def info(self, path, **kwargs):
    while not self.answering.wait(0.05):
      pass  # gcsfs retries an unreachable host for minutes.
    return super().info(path, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch):
  store, dirs = {}, ['']
  monkeypatch.setattr(FakeGcs, 'store', store)
  monkeypatch.setattr(FakeGcs, 'pseudo_dirs', dirs)
  FakeGcs.answering.set()
  registry = sys.modules['fsspec.registry']._registry  # pylint: disable=protected-access
  for name in FakeGcs.protocol:
    monkeypatch.setitem(registry, name, FakeGcs)
  # epath keeps the gs:// filesystem it first made: forget it on both sides of the test, or
  # later tests in this process would reach the fake through epath and gcsfs through fsspec.
  # pylint: disable-next=protected-access
  forget_epath_filesystems = epath_backend.fsspec_backend._get_filesystem.cache_clear
  FakeGcs.clear_instance_cache()
  forget_epath_filesystems()
  yield FakeGcs
  FakeGcs.answering.set()  # Lets an abandoned call end.
  FakeGcs.clear_instance_cache()
  forget_epath_filesystems()


def lock_record(fs):
  return json.loads(fs.store['/bucket/run/workdir.lock'].getvalue())


def test_gcs_one_holder_at_a_time_and_released_on_exit(fake_gcs):
  fs = fake_gcs()
  with workdir_lock.held('gs://bucket/run', purpose='train'):
    assert lock_record(fs)['pid'] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirInUse, match=r'gs://bucket/run is in use by train '
                       rf'\(pid {os.getpid()} on host'):
      workdir_lock._take('gs://bucket/run', 'evaluate')  # pylint: disable=protected-access
  assert '/bucket/run/workdir.lock' not in fs.store


def test_gcs_the_heartbeat_renews_the_lock(fake_gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'HEARTBEAT_S', 0.05)
  fs = fake_gcs()
  with workdir_lock.held('gs://bucket/run', purpose='train'):
    first = lock_record(fs)['heartbeat']
    time.sleep(0.5)
    assert lock_record(fs)['heartbeat'] > first


@pytest.mark.parametrize('holder', [
    {'host': 'other-host', 'pid': 1, 'heartbeat': time.time() - 2 * workdir_lock.STALE_AFTER_S},
    {'host': socket.gethostname(), 'pid': dead_pid(), 'heartbeat': time.time()},
])
def test_gcs_a_stale_or_dead_holder_is_taken_over(fake_gcs, holder, caplog):
  fs = fake_gcs()
  fs.pipe_file('/bucket/run/workdir.lock', json.dumps({**holder, 'started': 0}).encode())
  with workdir_lock.held('gs://bucket/run', purpose='train'):
    assert lock_record(fs)['pid'] == os.getpid()
  assert f"pid {holder['pid']} on host {holder['host']}" in caplog.text


def test_gcs_a_lock_that_reads_back_unparseable_is_not_ours(fake_gcs, monkeypatch):
  real_pipe = fake_gcs.pipe_file

  def garbled(self, path, value, **kwargs):  # Our create lands, but reads back as no record.
    return real_pipe(self, path, b'{not json' if kwargs.get('mode') == 'create' else value,
                     **kwargs)

  monkeypatch.setattr(fake_gcs, 'pipe_file', garbled)
  with pytest.raises(workdir_lock.WorkdirInUse, match='gs://bucket/run is in use by another '
                     r'process \(it has not yet written its name\)'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass


def test_gcs_a_lock_released_between_create_and_read_is_taken(fake_gcs, monkeypatch):
  fs = fake_gcs()
  fs.pipe_file('/bucket/run/workdir.lock', json.dumps(
      {'host': 'other-host', 'pid': 1, 'started': 0, 'heartbeat': time.time()}).encode())
  real_cat = fake_gcs.cat_file

  def released_first(self, path, *args, **kwargs):  # The holder ends just before our read.
    monkeypatch.setattr(fake_gcs, 'cat_file', real_cat)
    self.rm_file(path)
    return real_cat(self, path, *args, **kwargs)

  monkeypatch.setattr(fake_gcs, 'cat_file', released_first)
  with workdir_lock.held('gs://bucket/run', purpose='train'):
    assert lock_record(fs)['pid'] == os.getpid()


def test_gcs_a_live_holder_on_another_host_is_not_taken_over(fake_gcs):
  fs = fake_gcs()
  fs.pipe_file('/bucket/run/workdir.lock', json.dumps(
      {'host': 'other-host', 'pid': 1, 'started': 0, 'heartbeat': time.time() - 60}).encode())
  with pytest.raises(workdir_lock.WorkdirInUse, match='pid 1 on host other-host'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass


def test_gcs_a_live_holder_on_this_host_is_refused_and_left_untouched(fake_gcs, other_holder):
  fs = fake_gcs()
  fs.pipe_file('/bucket/run/workdir.lock', json.dumps(
      {'host': socket.gethostname(), 'pid': other_holder.pid, 'started': 0,
       'heartbeat': time.time()}).encode())
  with pytest.raises(workdir_lock.WorkdirInUse, match=f'pid {other_holder.pid} on host'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass
  # Asking whether it runs sent it no signal (signal 0): it ends only when told to, cleanly.
  other_holder.communicate('\n', timeout=60)
  assert other_holder.returncode == 0


def test_unreachable_storage_is_one_sentence_within_the_deadline(fake_gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'STORAGE_TIMEOUT_S', 0.5)
  fake_gcs.answering.clear()
  start = time.perf_counter()
  with pytest.raises(workdir_lock.StorageTimeout, match=r'^The storage did not answer within '
                     r'0.5 s while reaching --workdir=gs://bucket/run; check the network'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass
  assert time.perf_counter() - start < 2


def test_another_thread_of_the_holder_is_refused(tmp_path):
  outcome = []

  def second():
    try:
      with workdir_lock.held(tmp_path, purpose='train'):
        outcome.append('held')
    except workdir_lock.WorkdirInUse as e:
      outcome.append(str(e))

  with workdir_lock.held(tmp_path, purpose='study'):
    thread = threading.Thread(target=second)
    thread.start()
    thread.join()
  assert outcome[0].startswith(f'{tmp_path} is in use by study (pid {os.getpid()}')


REPO = pathlib.Path(__file__).resolve().parents[1]
LM_SMOKE = ['--config=configs/lm_ape.py:smoke']


def start_main(*args):
  return subprocess.Popen([sys.executable, '-m', 'seqpe_jax.main', *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_record(workdir):
  """What a run leaves that must not depend on another run having tried the same workdir."""
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  for row in rows:
    row.pop('train/steps_per_sec', None)  # Timing.
  state = workdir / 'checkpoints' / str(rows[-1]['step']) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                        checkpointer.metadata(state).item_metadata)
  params = [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(state, target))]
  return {'metrics': rows, 'checkpoints': sorted(p.name for p in (workdir / 'checkpoints')
                                                  .iterdir()),
          'extrapolation': json.loads((workdir / 'extrapolation.json').read_text()),
          'config': (workdir / 'config.json').read_text(), 'params': params,
          'files': sorted(p.name for p in workdir.iterdir() if not p.name.startswith('events'))}


def test_three_runs_started_at_once_one_trains_as_if_alone_the_others_exit_2(tmp_path):
  """Two with the same config and one with another: neither kind gets past the lock."""
  workdir = tmp_path / 'run'
  commands = [LM_SMOKE, LM_SMOKE, LM_SMOKE + ['--config.pe.name=rope']]
  runs = [start_main(*command, f'--workdir={workdir}') for command in commands]
  outputs = [run.communicate(timeout=900) for run in runs]
  codes = [run.returncode for run in runs]
  assert sorted(codes) == [0, 2, 2], outputs
  winner = codes.index(0)
  for loser in {0, 1, 2} - {winner}:
    errors = [line for line in outputs[loser][1].splitlines() if line.startswith('error: ')]
    assert errors == [f'error: {workdir} is in use by train (pid {runs[winner].pid} on host '
                      f'{socket.gethostname()}, started {errors[0].split("started ")[1]}'], outputs
    assert 'Traceback' not in outputs[loser][1]
  lone = tmp_path / 'lone'
  alone = start_main(*commands[winner], f'--workdir={lone}')
  assert alone.communicate(timeout=900) and alone.returncode == 0
  together, by_itself = run_record(workdir), run_record(lone)
  for a, b in zip(together.pop('params'), by_itself.pop('params'), strict=True):
    np.testing.assert_array_equal(a, b)
  assert together == by_itself


UNREACHABLE_MAIN = '''
import sys, threading
from absl import app
from fsspec.implementations.memory import MemoryFileSystem

class Unreachable(MemoryFileSystem):
  protocol = ('gs', 'gcs')

  def info(self, path, **kwargs):
    threading.Event().wait()  # As gcsfs without a network: no answer for minutes.

for name in Unreachable.protocol:
  sys.modules['fsspec.registry']._registry[name] = Unreachable
from seqpe_jax import cli, main, workdir_lock
workdir_lock.STORAGE_TIMEOUT_S = 2.0
app.run(main.main, flags_parser=cli.parse_flags)
'''


@pytest.mark.parametrize('traceback', ['', '1'])
def test_main_on_unreachable_storage_is_one_sentence_and_status_2(traceback):
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, '-c', UNREACHABLE_MAIN, '--config=configs/lm_ape.py:smoke',
       '--workdir=gs://bucket/run'], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'SEQPE_TRACEBACK': traceback})
  assert result.returncode == (1 if traceback else 2), result.stderr[-3000:]
  assert ('Traceback' in result.stderr) == bool(traceback)
  if not traceback:
    assert result.stderr.strip().splitlines() == [
        'error: The storage did not answer within 2 s while reaching --workdir=gs://bucket/run; '
        "check the network and this machine's credentials for it."]
  assert time.perf_counter() - start < 120


def test_a_workdir_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch):
  real_open = os.open

  def read_only(path, flags, *args):
    if str(path).endswith('workdir.lock'):
      raise OSError(30, 'Read-only file system', str(path))
    return real_open(path, flags, *args)

  monkeypatch.setattr(os, 'open', read_only)  # The tests run as root, for whom chmod is moot.
  with pytest.raises(OSError, match=rf'^Cannot write to {tmp_path} \(Read-only file system\); '
                     'make it writable or pass another --workdir.$'):
    with workdir_lock.held(tmp_path, purpose='train'):
      pass
