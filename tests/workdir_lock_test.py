"""The workdir lock: one holder at a time, stale locks taken over, bounded storage waits.

gs:// runs on an in-memory fake of gcsfs (exclusive create as GCS's ifGenerationMatch=0),
registered with fsspec for the test; nothing touches the network.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
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
  FakeGcs.clear_instance_cache()
  yield FakeGcs
  FakeGcs.answering.set()  # Lets an abandoned call end.
  FakeGcs.clear_instance_cache()


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


def test_gcs_a_live_holder_on_another_host_is_not_taken_over(fake_gcs):
  fs = fake_gcs()
  fs.pipe_file('/bucket/run/workdir.lock', json.dumps(
      {'host': 'other-host', 'pid': 1, 'started': 0, 'heartbeat': time.time() - 60}).encode())
  with pytest.raises(workdir_lock.WorkdirInUse, match='pid 1 on host other-host'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass


def test_unreachable_storage_is_one_sentence_within_the_deadline(fake_gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'STORAGE_TIMEOUT_S', 0.5)
  fake_gcs.answering.clear()
  start = time.perf_counter()
  with pytest.raises(workdir_lock.StorageTimeout, match=r'^The storage did not answer within '
                     r'0.5 s while reaching --workdir=gs://bucket/run; check the network'):
    with workdir_lock.held('gs://bucket/run', purpose='train'):
      pass
  assert time.perf_counter() - start < 2
