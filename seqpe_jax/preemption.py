"""When to stop for a preemption or a Ctrl-C: the same step on every process.

A scheduler's SIGTERM reaches one process (or all, at slightly different times). If each
stopped at its own step, one would enter the collective checkpoint save while another entered
the next train step, and both would wait forever; JAX's preemption service (installed by
`jax.distributed.initialize`) agrees on one step for all. A Ctrl-C saves the same way; a
second one exits at once (docs/clusters.md).
"""

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

from seqpe_jax import cli


class PreemptionWatch:
  """`reached(step)`: stop after this step and save. Call it once per step, every process."""

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._signalled = False
    self.interrupted = False
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return  # Signals reach the main thread only (a study may train in threads).
    if not self._multiprocess:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._note)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

  @property
  def signal_name(self) -> str:
    return 'SIGINT' if self.interrupted else 'SIGTERM'

  def _note(self, *_):
    self._signalled = True

  def _interrupt(self, *_):
    if self.interrupted:
      print('Second Ctrl-C: stopped at once, without saving.', file=sys.stderr, flush=True)
      os._exit(cli.EXIT_INTERRUPTED)  # pylint: disable=protected-access
    self.interrupted = True
    print('Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to stop '
          'at once, without saving).', file=sys.stderr, flush=True)
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service agrees on the step.
    else:
      self._signalled = True

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    """Puts the previous handlers back (again: nothing)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
