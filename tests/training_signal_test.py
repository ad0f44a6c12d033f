"""SeqPE's training signal: what reaches the encoder's gradient, clipping, balancing, warm-up.

Each test here fails if the regularisers stop reaching the gradient, if the two clipping
groups merge, or if a change moves the numbers of one train step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm_base, vit_base
from seqpe_jax import optim, tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.posenc import regularizers

pytestmark = pytest.mark.xdist_group('signal')

FAMILIES = {'vit': vit_base, 'lm': lm_base}


def smoke_task(family, **overrides):
  config = FAMILIES[family].get_config('reference,smoke', pe='seqpe')
  config.mesh.data = 1
  config.update_from_flattened_dict(overrides)
  return config, tasks.build(config)


@functools.cache  # Several tests read the same step; each compile costs seconds.
def first_step(family, **overrides):
  """(task, state, batch, gradients fn, scalars of step 0) for a :smoke SeqPE config."""
  config, task = smoke_task(family, **overrides)
  optimizer = state_lib.make_optimizer(task, config)
  init_key, step_key, pool_key = jax.random.split(jax.random.key(config.seed), 3)
  state = state_lib.init_state(task, optimizer, init_key)
  pool = task.shift_pool(pool_key)
  batch = jax.tree.map(jnp.asarray, task.train_batches(config.seed)[0])
  step = jax.jit(train.make_train_step(task, optimizer, step_key, pool))
  new_state, scalars = step(state, batch,
                            optim.learning_rates(config.optimizer, config.total_steps)[0])
  gradients = train.make_gradients(task, step_key, pool)
  return task, state, new_state, batch, gradients, jax.device_get(scalars)


@functools.cache
def split_gradients(family):
  """Step 0's task and regulariser PE gradients apart, compiled once for several tests."""
  _, state, _, batch, gradients, _ = first_step(family)
  _, parts = jax.jit(lambda p: gradients(p, batch, jnp.zeros((), jnp.int32), split=True))(
      state['params'])
  return parts


# Step 0 of each :smoke SeqPE config (seed 0, unshifted, float32, XLA CPU). If a change
# moves these on purpose (a new initialisation, a different sampling order), re-run
# `python -m pytest tests/training_signal_test.py -k pinned` and paste the printed values;
# if it did not mean to, the change altered what one training step computes.
PINNED = {
    'vit': {'train/loss': 2.5102365, 'train/task_loss': 2.3025830,
            'train/seqpe/contrastive_loss': 2.0764978, 'train/seqpe/ood_loss': 3.6717109e-05,
            'grad_norm/seqpe': 0.23216623, 'grad_norm/host': 1.5301678},
    'lm': {'train/loss': 5.7166252, 'train/task_loss': 5.5126476,
           'train/seqpe/contrastive_loss': 2.0395808, 'train/seqpe/ood_loss': 1.9467370e-04,
           'grad_norm/seqpe': 0.34156969, 'grad_norm/host': 3.3925583},
}
PINNED_KEYS = ('train/loss', 'train/task_loss', 'train/seqpe/contrastive_loss',
               'train/seqpe/ood_loss', 'grad_norm/seqpe', 'grad_norm/host')


@pytest.mark.parametrize('family', ['vit', 'lm'])
def test_pinned_numbers_of_one_train_step(family):
  *_, scalars = first_step(family)
  got = {k: float(scalars[k]) for k in PINNED_KEYS}
  print(family, got)  # What to paste into PINNED after an intended change.
  assert float(scalars['train/seqpe/shifted']) == 0.0
  for key in PINNED_KEYS:
    np.testing.assert_allclose(got[key], PINNED[family][key], rtol=2e-4, atol=1e-7, err_msg=(
        f'{family} step 0 {key} moved; if intended, update PINNED (see the comment above it).'))


@pytest.mark.parametrize('family', ['vit', 'lm'])
def test_total_loss_is_task_plus_weighted_regularisers(family):
  config, _ = smoke_task(family)
  *_, s = first_step(family)
  expected = s['train/task_loss'] + s['train/seqpe/reg_scale'] * (
      config.pe.contrastive.weight * s['train/seqpe/contrastive_loss'] +
      config.pe.ood.weight * s['train/seqpe/ood_loss'])
  np.testing.assert_allclose(s['train/loss'], expected, rtol=1e-6)
  assert s['train/loss'] > s['train/task_loss']  # The regularisers are in the total.


def test_the_step_gradient_is_the_gradient_of_the_total_loss():
  """The trainer's two-part gradient equals jax.grad of task + regularisers, and its split
  form adds up to it; dropping the regularisers from the total would break both."""
  task, state, _, batch, gradients, _ = first_step('lm')
  params, step = state['params'], jnp.zeros((), jnp.int32)
  _, whole = jax.jit(lambda p: gradients(p, batch, step, split=False))(params)
  parts = split_gradients('lm')
  summed = jax.tree.map(jnp.add, parts['pe_task'], parts['pe_reg'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9),
               whole['pe'], summed)
  reg_norm = optim.encoder_norm(parts['pe_reg'])
  task_norm = optim.encoder_norm(parts['pe_task'])
  assert reg_norm > 10 * task_norm > 0  # The imbalance pe.regularizers.balance addresses.

  def direct_total(p):  # Written out without the trainer's vjp decomposition.
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(_step_key(task), 0))
    features, aux = regularizers.seqpe_step(task.pe, p['pe'], pe_key, _pool(task),
                                            task.regularizers)
    logits = task.logits(p['model'], batch, features, train=True, rng=dropout_key)
    return task.loss(logits, batch)[0] + aux['loss']

  direct = jax.jit(jax.grad(direct_total))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9),
               whole, direct)


def _step_key(task):
  return jax.random.split(jax.random.key(task.config.seed), 3)[1]


def _pool(task):
  return task.shift_pool(jax.random.split(jax.random.key(task.config.seed), 3)[2])


def test_balancing_caps_the_regulariser_gradient_on_the_encoder():
  parts = split_gradients('lm')
  balanced, scalars = train.balance_pe_gradients(parts, target=0.5)
  scale = float(scalars['train/seqpe/balance_scale'])
  task_norm, reg_norm = (float(optim.encoder_norm(parts[k])) for k in ('pe_task', 'pe_reg'))
  np.testing.assert_allclose(scale, 0.5 * task_norm / reg_norm, rtol=1e-5)
  np.testing.assert_allclose(scale * reg_norm, 0.5 * task_norm, rtol=1e-5)
  expected = jax.tree.map(lambda t, r: t + scale * r, parts['pe_task'], parts['pe_reg'])
  jax.tree.map(np.testing.assert_allclose, balanced['pe'], expected)
  # A regulariser already below the target is left alone.
  _, scalars = train.balance_pe_gradients(parts, target=10 * reg_norm / task_norm)
  assert float(scalars['train/seqpe/balance_scale']) == 1.0


def test_a_balanced_run_logs_its_scale_and_trains():
  *_, scalars = first_step('lm', **{'pe.regularizers.balance': 'grad_norm'})
  assert 0 < scalars['train/seqpe/balance_scale'] < 1
  assert np.isfinite(scalars['train/loss'])


def test_warm_up_ramps_the_regulariser_weight():
  _, task = smoke_task('lm', **{'pe.regularizers.warmup_steps': 4})
  scales = [float(task.regularizers.weight_scale(s)) for s in range(6)]
  assert scales == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
  _, task = smoke_task('lm')
  assert [float(task.regularizers.weight_scale(s)) for s in range(3)] == [1, 1, 1]
  *_, scalars = first_step('lm', **{'pe.regularizers.warmup_steps': 4})
  assert scalars['train/seqpe/reg_scale'] == 0.25
  np.testing.assert_allclose(
      scalars['train/loss'] - scalars['train/task_loss'],
      0.25 * 0.1 * (scalars['train/seqpe/contrastive_loss'] + scalars['train/seqpe/ood_loss']),
      rtol=1e-5)


def test_each_clipping_group_is_clipped_to_its_own_threshold():
  """Through the real optimizer on the real parameter tree: a huge encoder gradient is
  clipped to clip_seqpe while the host's gradient passes unchanged."""
  config, task = smoke_task('vit', **{'optimizer.clip_seqpe': 0.5, 'optimizer.clip_host': 1e6})
  params = state_lib.init_state(task, optax.identity(), jax.random.key(0))['params']
  labels = jax.tree_util.tree_map_with_path(lambda p, _: optim.is_seqpe_encoder(p), params)
  assert sum(jax.tree.leaves(labels)) > 10  # The SeqPE group is not empty.
  grads = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 100.0 if optim.is_seqpe_encoder(p) else 1e-3), params)
  clip = optim.clip_groups(config.optimizer, params)  # The first stage of optim.make.
  clipped, _ = clip.update(grads, clip.init(params), params)
  np.testing.assert_allclose(optim.encoder_norm(clipped['pe']), 0.5, rtol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, clipped['model'], grads['model'])


@pytest.mark.parametrize('overrides, message', [
    ({'pe.regularizers.warmup_steps': -5}, 'pe.regularizers.warmup_steps must be a non-negative'),
    ({'pe.regularizers.balance': 'pcgrad'}, "Unknown pe.regularizers.balance 'pcgrad'"),
    ({'pe.seqpe.remat': 'some'}, "Unknown pe.seqpe.remat 'some'"),
    ({'pe.contrastive.train_fraction': 1.5}, 'train_fraction must lie in'),
])
def test_bad_control_values_stop_with_one_sentence(overrides, message):
  with pytest.raises(ValueError, match=message):
    smoke_task('lm', **overrides)
