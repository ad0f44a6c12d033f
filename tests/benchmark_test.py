"""The train-step benchmark times the branch of the SeqPE step it names."""

import jax
import pytest

from benchmarks import stepper as stepper_lib
from benchmarks import train_step

# One xdist worker runs this file, so its module fixture (the timed step) compiles once.
pytestmark = pytest.mark.xdist_group('benchmark')

# A ViT-nano on a 4x4 grid with a small encoder: the benchmark's code path in seconds.
TINY = {'pe.seqpe.d_model': 32, 'pe.seqpe.num_heads': 2, 'pe.seqpe.max_position': 30,
        'pe.contrastive.num_candidates': 8, 'pe.ood.num_teachers': 4, 'pe.shift.pool_size': 16}
BATCH, IMAGE_SIZE = 4, 16


@pytest.fixture(scope='module')
def stepper():
  config, task = train_step.build('seqpe', BATCH, 'nano/4', IMAGE_SIZE, TINY)
  batch = stepper_lib.synthetic_batch(BATCH, IMAGE_SIZE, task.channels)
  return train_step.build_stepper(task, config, batch)


def test_each_branch_is_found_and_taken(stepper):
  steps = stepper.branch_steps()
  assert set(steps) == set(stepper_lib.BRANCHES)
  for branch, n in steps.items():
    metrics = jax.device_get(stepper.run(n))  # The step's own record of its branch.
    assert stepper_lib.BRANCHES[int(metrics[stepper_lib.SHIFTED_METRIC])] == branch
    # Distillation runs on unshifted steps only: a second sign of the branch taken.
    assert (float(metrics['train/seqpe/ood_loss']) == 0.0) == (branch == 'shifted')


def test_timing_refuses_a_step_that_takes_the_other_branch(stepper):
  steps = stepper.branch_steps()
  assert stepper.seconds(steps['unshifted'], repeats=1, expect='unshifted') > 0
  with pytest.raises(AssertionError, match='did not take the unshifted branch'):
    stepper.seconds(steps['shifted'], repeats=1, expect='unshifted')


def test_fixed_cost_splits_into_injection_and_regularisers():
  results = {('ape', 8): {'step': 1.0}, ('seqpe', 8): {'unshifted': 4.0},
             ('seqpe_injection', 8): {'unshifted': 1.5}, ('ape', 32): {'step': 4.0},
             ('seqpe', 32): {'unshifted': 7.5}}
  assert train_step.fixed_cost_split(results, 8) == {'fixed': 3.0, 'injection': 0.5,
                                                     'regularizers': 2.5}
  assert train_step.fixed_cost_split(results, 32) is None  # No seqpe_injection at 32.


def test_seqpe_injection_keeps_the_pe_and_cuts_the_regularisers():
  """The split's reference point: SeqPE with the same injection and shift windows, and
  one pivot and one distillation group left of the regularisers."""
  pe, overrides = train_step.PES['seqpe_injection']
  _, task = train_step.build(pe, BATCH, 'nano/4', IMAGE_SIZE, {**TINY, **overrides})
  _, full = train_step.build('seqpe', BATCH, 'nano/4', IMAGE_SIZE, TINY)
  reg, ref = task.regularizers, full.regularizers
  assert (reg.contrastive.num_pivots, reg.ood_groups) == (1, 1)
  assert (ref.contrastive.num_pivots, ref.ood_groups) == (32, 32)
  assert (task.pe.method, reg.num_windows, reg.shift_prob) == (
      full.pe.method, ref.num_windows, ref.shift_prob)


def test_the_op_profile_sums_each_kind_of_operation_per_step():
  """Operations are summed by kind (HLO names without their number), per traced step; the
  executor, jit dispatch and Python frames are not operations."""
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top
  events = [{'ph': 'X', 'name': 'dot.8', 'dur': 3e5}, {'ph': 'X', 'name': 'dot.32', 'dur': 1e5},
            {'ph': 'X', 'name': 'wrapped_reduce-window.302', 'dur': 6e5},
            {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 9e6},
            {'ph': 'X', 'name': '$stepper.py:42 run', 'dur': 9e6},
            {'ph': 'X', 'name': 'PjitFunction(jit(<lambda>))', 'dur': 9e6},
            {'ph': 'i', 'name': 'dot.9'}]
  assert op_profile.op_seconds(events, steps=2) == [('wrapped_reduce-window', 0.3, 0.5),
                                                   ('dot', 0.2, 1.0)]
