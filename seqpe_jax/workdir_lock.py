"""One writer per workdir: a run, an evaluation or a study holds its directory while it writes.

    with workdir_lock.held(workdir, purpose='train'):
      ...  # Nothing else writes here until the block ends.

A second holder stops at once with `WorkdirInUse` (a ValueError: exit status 2) naming the
holder. Local paths use flock(2) on WORKDIR/workdir.lock; URLs (gs://) an object created only
if absent, with a heartbeat (docs/clusters.md: how, and what that does not guarantee).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import threading
import time
import uuid

from absl import logging
from etils import epath

LOCK_NAME = 'workdir.lock'
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
STORAGE_TIMEOUT_S = 20.0


class WorkdirInUse(ValueError):
  """Another process holds the workdir."""


class StorageTimeout(OSError):
  """The storage of a workdir URL did not answer in time."""


# Workdirs held here (thread, path): a holder may re-enter its own lock; another thread of
# this process (a study trains in threads) is refused like another process.
_held: set[tuple[int, str]] = set()


@contextlib.contextmanager
def held(workdir, purpose: str):
  """Holds `workdir` (created if needed) for the block; raises WorkdirInUse or OSError. A
  workdir the lock created is removed again if the block fails, so bad input leaves nothing."""
  import jax  # pylint: disable=g-import-not-at-top
  key = (threading.get_ident(), str(workdir_path(workdir)))
  if key in _held:  # Re-entered by its holder: the outer block releases it.
    yield
    return
  error, lock = None, None
  if jax.process_index() == 0:
    try:
      lock = _take(workdir, purpose)
    except (WorkdirInUse, OSError) as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    taken = multihost_utils.broadcast_one_to_all(np.int32(lock is not None))
    if error is None and not taken:
      error = WorkdirInUse(f'Process 0 could not take --workdir={workdir}; its log says why.')
  if error is not None:
    raise error
  _held.add(key)
  failed = True
  try:
    yield
    failed = False
  finally:
    _held.remove(key)
    if lock is not None:
      lock.release(remove_workdir=failed)


def workdir_path(workdir) -> epath.Path:
  """The run directory; `gs://` and other URL schemes keep their meaning (no pathlib)."""
  path = epath.Path(workdir)
  return path if _is_url(workdir) else path.absolute()


def _is_url(workdir) -> bool:
  return '://' in str(workdir)


def _take(workdir, purpose: str):
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'purpose': purpose,
            'started': time.time(), 'command': ' '.join(sys.argv)[:500], 'token': uuid.uuid4().hex}
  path = workdir_path(workdir)
  try:
    created = not answered_within(path.exists, f'reaching --workdir={workdir}')
    answered_within(lambda: path.mkdir(parents=True, exist_ok=True),
                    f'creating --workdir={workdir}')
  except StorageTimeout:
    raise
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise OSError(f'Cannot create --workdir={workdir} ({reason}); for a gs:// workdir check '
                  'that the bucket exists and that this machine has credentials for it.') from e
  try:
    if _is_url(workdir):
      lock = answered_within(lambda: _ObjectLock.take(path, record),
                             f'taking the lock of --workdir={workdir}')
    else:
      lock = _FileLock.take(path, record)
  except BaseException:
    if created:
      _remove_if_empty(path)
    raise
  lock.workdir, lock.created = path, created
  return lock


def answered_within(fn, what: str):
  """fn() if it returns within STORAGE_TIMEOUT_S, else StorageTimeout; on a daemon thread, so
  a call that never answers is abandoned (storage clients retry for minutes)."""
  outcome = {}

  def call():
    try:
      outcome['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      outcome['error'] = e

  thread = threading.Thread(target=call, daemon=True, name='storage call')
  thread.start()
  thread.join(STORAGE_TIMEOUT_S)
  if thread.is_alive():
    raise StorageTimeout(f'The storage did not answer within {STORAGE_TIMEOUT_S:g} s while '
                         f"{what}; check the network and this machine's credentials for it.")
  if 'error' in outcome:
    raise outcome['error']
  return outcome.get('value')


def _remove_if_empty(path: epath.Path) -> None:
  with contextlib.suppress(OSError):  # Someone else wrote there meanwhile: it is theirs.
    if path.is_dir() and not any(path.iterdir()):
      path.rmdir()


def describe(holder: dict) -> str:
  """'train (pid 12 on host h, started 2026-12-04 23:50:01 UTC)'."""
  started = datetime.datetime.fromtimestamp(holder.get('started', 0), datetime.timezone.utc)
  return (f"{holder.get('purpose', 'a run')} (pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')}, started {started:%Y-%m-%d %H:%M:%S} UTC)")


def _in_use(path, holder: dict | None) -> WorkdirInUse:
  who = describe(holder) if holder else 'another process (it has not yet written its name)'
  return WorkdirInUse(f'{path} is in use by {who}; wait for it to finish or stop it, or pass '
                      'another --workdir.')


def _parse(text: str | bytes) -> dict | None:
  with contextlib.suppress(ValueError):
    holder = json.loads(text)
    return holder if isinstance(holder, dict) else None
  return None


def _holder_of(fs, path: str) -> dict | None:
  """The record in the lock object at `path`; None if it is gone or unreadable."""
  with contextlib.suppress(FileNotFoundError):
    return _parse(fs.cat_file(path))
  return None


def _holds(fs, path: str, record: dict) -> bool:
  """Whether the lock object at `path` is `record`'s."""
  holder = _holder_of(fs, path)
  return holder is not None and holder.get('token') == record['token']


def _warn_taken_over(path, holder: dict) -> None:
  logging.warning('Took over the lock of %s from %s, which no longer runs.', path.parent,
                  describe(holder))


class _FileLock:
  """flock(2) on WORKDIR/workdir.lock; the file names the holder."""

  def __init__(self, fd: int, path: pathlib.Path):
    self._fd, self._path = fd, path

  @classmethod
  def take(cls, workdir: epath.Path, record: dict):
    path = pathlib.Path(workdir) / LOCK_NAME
    while True:
      try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:  # Found before a resumed run says anything, let alone trains.
        raise OSError(f'Cannot write to {workdir} ({e.strerror}); make it writable or pass '
                      'another --workdir.') from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _parse(os.read(fd, 1 << 16))
        os.close(fd)
        raise _in_use(workdir, holder) from None
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          raise
        logging.warning('%s cannot be locked (%s); nothing stops a second writer there.',
                        workdir, e.strerror)
        return cls(-1, path)
      with contextlib.suppress(FileNotFoundError):
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
          break
      os.close(fd)  # The holder removed it while releasing: lock the new file instead.
    previous = _parse(os.read(fd, 1 << 16))
    if previous:  # Written by a holder that ended without releasing (the kernel did).
      _warn_taken_over(path, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return cls(fd, path)

  def release(self, remove_workdir: bool) -> None:
    self._path.unlink(missing_ok=True)  # While still locked: see the inode check above.
    if self._fd >= 0:  # -1: this filesystem has no flock, and take closed the file.
      os.close(self._fd)
    if remove_workdir and self.created:
      _remove_if_empty(self.workdir)


class _ObjectLock:
  """An object created only if absent, with a heartbeat (for URLs without flock)."""

  def __init__(self, fs, path: str, record: dict):
    self._fs, self._path, self._record = fs, path, record
    self._stop = threading.Event()
    self._beat = threading.Thread(target=self._beat_loop, daemon=True, name='lock heartbeat')
    self._beat.start()

  @classmethod
  def take(cls, workdir: epath.Path, record: dict):
    import fsspec  # pylint: disable=g-import-not-at-top
    fs, root = fsspec.core.url_to_fs(str(workdir))
    path = f'{root.rstrip("/")}/{LOCK_NAME}'
    for _ in range(2):
      record['heartbeat'] = time.time()
      try:
        fs.pipe_file(path, json.dumps(record).encode(), mode='create')
      except FileExistsError:
        try:
          holder = _parse(fs.cat_file(path))
        except FileNotFoundError:
          continue  # Its holder released it between our two calls: try to create it again.
        if holder and not cls._abandoned(holder):
          raise _in_use(workdir, holder) from None
        _warn_taken_over(epath.Path(str(workdir)) / LOCK_NAME, holder or {})
        fs.rm_file(path)
        continue
      if not _holds(fs, path, record):
        break  # Another run took over the same stale lock at the same moment (or it is garbled).
      return cls(fs, path, record)
    raise _in_use(workdir, _holder_of(fs, path))

  @staticmethod
  def _abandoned(holder: dict) -> bool:
    """Whether the holder's heartbeat is stale or its pid no longer runs on this host."""
    if time.time() - holder.get('heartbeat', 0) > STALE_AFTER_S:
      return True
    if holder.get('host') != socket.gethostname():
      return False
    try:
      os.kill(int(holder['pid']), 0)
    except ProcessLookupError:
      return True
    except (PermissionError, KeyError, ValueError, TypeError):
      pass  # Alive under another user, or a record we cannot read: assume held.
    return False

  def _beat_loop(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if not _holds(self._fs, self._path, self._record):
          logging.error('Lost the lock %s (its heartbeat was late and another process took '
                        'it over); two processes may now write this workdir.', self._path)
          return
        self._record['heartbeat'] = time.time()
        self._fs.pipe_file(self._path, json.dumps(self._record).encode())
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Could not renew the lock %s (%s); trying again.', self._path, e)

  def release(self, remove_workdir: bool) -> None:
    del remove_workdir  # Object stores have no empty directories to leave behind.
    self._stop.set()
    self._beat.join(STORAGE_TIMEOUT_S)
    try:
      if _holds(self._fs, self._path, self._record):
        self._fs.rm_file(self._path)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Could not remove the lock %s (%s); the next run will find it stale.',
                      self._path, e)
