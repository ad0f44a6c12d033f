"""The trainer's step compiled once and run on its own output, for the step benchmarks.

Nothing here imports the library: `benchmarks.step_cell` runs it against an older
revision's `seqpe_jax`, so the step function, state and task come from the caller.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing

BRANCHES = ('unshifted', 'shifted')
SHIFTED_METRIC = 'train/seqpe/shifted'


def synthetic_batch(batch: int, image_size: int, channels: int):
  """Random images and labels: only the step's time is measured, not what it learns."""
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(rng.integers(0, 255, (batch, image_size, image_size, channels),
                                            np.uint8)),
          'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}


@dataclasses.dataclass
class Stepper:
  """The trainer's step, compiled, run on its own (donated) output at chosen step numbers."""
  task: object
  state: dict
  batch: dict
  step_fn: object  # The trainer's step function, unjitted (for the branch probe).
  compiled: object

  @classmethod
  def compile(cls, task, state, batch, step_fn):
    """Jits `step_fn` with the state donated, as the trainer does, and compiles it."""
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile()
    return cls(task, state, batch, step_fn, compiled)

  def run(self, step_number: int):
    """One step from the current state with its counter set to `step_number`; its metrics."""
    state = {**self.state, 'step': jnp.asarray(step_number, jnp.int32)}
    self.state, metrics = self.compiled(state, self.batch)
    return metrics

  def branch_steps(self, limit: int = 1000) -> dict[str, int]:
    """The first step number taking each branch, from the step's own shifted metric.

    Only the metric is asked for, so XLA prunes the rest of the step: each probe costs
    microseconds, not a step.
    """
    probe = jax.jit(lambda state, batch, n: self.step_fn({**state, 'step': n}, batch)[1][
        SHIFTED_METRIC])
    found = {}
    for n in range(limit):
      branch = BRANCHES[int(probe(self.state, self.batch, jnp.asarray(n, jnp.int32)))]
      found.setdefault(branch, n)
      if len(found) == len(BRANCHES):
        return found
    raise RuntimeError(f'No step below {limit} takes each branch; is pe.shift.prob 0 or 1?')

  def seconds(self, step_number: int, repeats: int, expect: str | None = None,
              clock: str = 'wall') -> float:
    """Median time of the step at `step_number`, checking the branch it took."""
    def one():
      metrics = self.run(step_number)
      jax.block_until_ready(metrics)
      if expect is not None and BRANCHES[int(metrics[SHIFTED_METRIC])] != expect:
        raise AssertionError(f'Step {step_number} did not take the {expect} branch.')
      return metrics
    return timing.median_seconds(one, repeats=repeats, clock=clock)

  def memory(self) -> dict[str, float]:
    """XLA's memory analysis of the compiled step, in GB."""
    m = self.compiled.memory_analysis()
    return {'arguments': m.argument_size_in_bytes / 1e9, 'outputs': m.output_size_in_bytes / 1e9,
            'aliased': m.alias_size_in_bytes / 1e9, 'temporaries': m.temp_size_in_bytes / 1e9}
