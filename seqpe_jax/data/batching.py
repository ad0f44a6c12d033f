"""Training batches addressed by step, shared by every input pipeline, and how they are read
(in this process's threads, or in grain worker processes)."""

from collections.abc import Callable

import grain
import jax
import numpy as np

# Batches each worker keeps ready: enough to hide one slow batch (ImageNet's: 19 MB each).
WORKER_BUFFER = 2


def step_batches(num_examples: int, *, global_batch: int, seed: int,
                 read: Callable[[np.ndarray], dict], workers: int = 0) -> 'StepBatches':
  """Shuffled, repeated global batches; element s is the batch of step s, so a resumed run
  reads exactly the batches an uninterrupted one would. `read` gets this process's indices."""
  indices, _ = step_indices(num_examples, global_batch=global_batch, seed=seed)
  return StepBatches(indices.map(read), workers)


def step_indices(num_examples: int, *, global_batch: int,
                 seed: int) -> tuple[grain.MapDataset, int]:
  """(element s = this process's example indices at step s, its first row of the global batch)."""
  if global_batch % jax.process_count():
    raise ValueError(f'The batch of {global_batch} does not split over {jax.process_count()} '
                     'processes.')
  per_process = global_batch // jax.process_count()
  first = jax.process_index() * per_process
  return (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat()
          .batch(global_batch, drop_remainder=True)
          .map(lambda idx: idx[first:first + per_process])), first


class StepBatches(grain.MapDataset):
  """Step-addressed batches that keep `workers` through slicing (the trainer iterates
  `batches[start:]`): with workers > 0 the reads run in grain worker processes."""

  def __init__(self, parent: grain.MapDataset, workers: int):
    super().__init__(parent)
    check_workers(workers)
    self.workers = workers

  def __len__(self):
    return len(self._parent)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return StepBatches(self._parent.slice(index), self.workers)
    return self._parent[index]

  def __str__(self):
    return f'StepBatches(workers={self.workers})'

  def to_iter_dataset(self, read_options=None, *, allow_nones: bool = False):
    return read(self._parent, self.workers, read_options, allow_nones=allow_nones)


def read(dataset: grain.MapDataset, workers: int, read_options=None, *,
         allow_nones: bool = False) -> grain.IterDataset:
  """`dataset` in order, read by this process's threads (workers = 0) or `workers` processes."""
  check_workers(workers)
  if not workers:
    return dataset.to_iter_dataset(read_options, allow_nones=allow_nones)
  _mark_flags_parsed()
  options = read_options or grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
  return dataset.to_iter_dataset(options, allow_nones=allow_nones).mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=WORKER_BUFFER))


def check_workers(workers) -> None:
  if not isinstance(workers, int) or workers < 0:
    raise ValueError(f'data.workers must be a whole number >= 0, got {workers!r}.')


def _mark_flags_parsed() -> None:
  """grain's worker launcher reads its absl flags; outside an absl app (tests, notebooks,
  benchmarks) they have not been parsed, and their defaults are what we want."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
