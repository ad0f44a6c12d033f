"""Training batches addressed by step, shared by every input pipeline."""

from collections.abc import Callable

import grain
import jax
import numpy as np


def step_batches(num_examples: int, *, global_batch: int, seed: int,
                 read: Callable[[np.ndarray], dict]) -> grain.MapDataset:
  """Shuffled, repeated global batches of example indices; element s is the batch of step s.

  Random access makes the data-iterator state the step itself, so a resumed run reads
  exactly the batches an uninterrupted one would. Each process reads only its own slice
  of every global batch: `read` gets this process's indices.
  """
  if global_batch % jax.process_count():
    raise ValueError(f'The batch of {global_batch} does not split over {jax.process_count()} '
                     'processes.')
  per_process = global_batch // jax.process_count()
  first = jax.process_index() * per_process
  return (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat()
          .batch(global_batch, drop_remainder=True)
          .map(lambda idx: read(idx[first:first + per_process])))
