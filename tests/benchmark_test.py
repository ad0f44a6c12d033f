"""The train-step benchmark times the branch of the SeqPE step it names."""

import jax
import pytest

from benchmarks import train_step

# A ViT-nano on a 4x4 grid with a small encoder: the benchmark's code path in seconds.
TINY = {'pe.seqpe.d_model': 32, 'pe.seqpe.num_heads': 2, 'pe.seqpe.max_position': 30,
        'pe.contrastive.num_candidates': 8, 'pe.ood.num_teachers': 4, 'pe.shift.pool_size': 16}
BATCH, IMAGE_SIZE = 4, 16


@pytest.fixture(scope='module')
def stepper():
  config, task = train_step.build('seqpe', BATCH, 'nano/4', IMAGE_SIZE, TINY)
  batch = train_step.synthetic_batch(BATCH, IMAGE_SIZE, task.channels)
  return train_step.Stepper.build(task, config, batch)


def test_each_branch_is_found_and_taken(stepper):
  steps = stepper.branch_steps()
  assert set(steps) == set(train_step.BRANCHES)
  for branch, n in steps.items():
    metrics = jax.device_get(stepper.run(n))  # The step's own record of its branch.
    assert train_step.BRANCHES[int(metrics[train_step.SHIFTED_METRIC])] == branch
    # Distillation runs on unshifted steps only: a second sign of the branch taken.
    assert (float(metrics['train/seqpe/ood_loss']) == 0.0) == (branch == 'shifted')


def test_timing_refuses_a_step_that_takes_the_other_branch(stepper):
  steps = stepper.branch_steps()
  assert stepper.seconds(steps['unshifted'], repeats=1, expect='unshifted') > 0
  with pytest.raises(AssertionError, match='did not take the unshifted branch'):
    stepper.seconds(steps['shifted'], repeats=1, expect='unshifted')
