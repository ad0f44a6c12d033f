"""Step-addressed batches: shuffled epochs, each process's slice, slicing that keeps the
reading settings, and worker processes that really read."""

import os

import numpy as np
import pytest

from seqpe_jax.data import batching


def test_batches_are_shuffled_epochs_of_every_example():
  indices, first = batching.step_indices(10, global_batch=4, seed=0)
  assert first == 0
  stream = np.concatenate([indices[s] for s in range(5)])  # 20 indices: two epochs.
  assert [len(indices[s]) for s in range(5)] == [4] * 5
  assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
  assert list(stream[:10]) != list(range(10))  # Shuffled.
  other, _ = batching.step_indices(10, global_batch=4, seed=1)
  assert list(other[0]) != list(indices[0])


def test_each_process_reads_its_own_slice_of_the_global_batch(monkeypatch):
  whole, _ = batching.step_indices(12, global_batch=6, seed=3)
  monkeypatch.setattr(batching.jax, 'process_count', lambda: 3)
  slices = []
  for process in range(3):
    monkeypatch.setattr(batching.jax, 'process_index', lambda p=process: p)
    mine, first = batching.step_indices(12, global_batch=6, seed=3)
    assert first == 2 * process
    slices.append([mine[step] for step in range(3)])
  for step in range(3):  # The processes' slices, in process order, are the global batch.
    np.testing.assert_array_equal(np.concatenate([s[step] for s in slices]), whole[step])
  with pytest.raises(ValueError, match='The batch of 7 does not split over 3 processes'):
    batching.step_indices(12, global_batch=7, seed=3)


def test_step_batches_read_in_step_order_and_keep_their_settings_when_sliced():
  batches = batching.step_batches(8, global_batch=2, seed=0, read=lambda idx: {'idx': idx * 10})
  assert len(batches) > 100 and batches.workers == 0 and str(batches) == 'StepBatches(workers=0)'
  later = batches[3:]
  assert isinstance(later, batching.StepBatches) and later.workers == 0
  read = [b['idx'] for b, _ in zip(later.to_iter_dataset(), range(3))]
  for step, got in enumerate(read, start=3):
    np.testing.assert_array_equal(got, batches[step]['idx'])
  np.testing.assert_array_equal(batches[5]['idx'] % 10, 0)


@pytest.mark.parametrize('workers', [-1, 1.5, '2'])
def test_bad_worker_counts_are_one_sentence(workers):
  with pytest.raises(ValueError, match=f'data.workers must be a whole number >= 0, got '
                                       f'{workers!r}'.replace('.', r'\.')):
    batching.check_workers(workers)


def _read_with_pid(indices: np.ndarray) -> dict:  # Module level: worker processes import it.
  return {'index': indices, 'pid': np.full(len(indices), os.getpid())}


@pytest.mark.parametrize('workers', [0, 2])
def test_workers_read_in_processes_of_their_own_and_in_step_order(workers):
  batches = batching.step_batches(32, global_batch=4, seed=0, read=_read_with_pid,
                                  workers=workers)
  read = list(batches[:6].to_iter_dataset())
  pids = {int(pid) for b in read for pid in b['pid']}
  assert (pids == {os.getpid()}) == (workers == 0), pids
  for step, batch in enumerate(read):
    np.testing.assert_array_equal(batch['index'], batches[step]['index'])
