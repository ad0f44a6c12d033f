"""When to stop for a preemption: the same step on every process.

A scheduler's SIGTERM reaches one process (or all, at slightly different times). If each
process stopped at its own step, one would enter the collective checkpoint save while
another entered the next train step, and both would wait forever. With several processes
JAX's preemption service agrees on one step for all (the maximum step any process has
reached, plus one) and `reached(step)` turns true there on every process; its SIGTERM
handler, installed by `jax.distributed.initialize`, is left in place. A single process
just notes the signal and stops after the step it is in.
"""

import signal

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """`reached(step)`: stop after this step and save. Call it once per step, every process."""

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._signalled = False
    self._previous = None
    if not self._multiprocess:
      self._previous = signal.signal(signal.SIGTERM, self._note)

  def _note(self, *_):
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
