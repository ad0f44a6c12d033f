"""The optimizer against closed forms: both schedules, AdamW's decay masks, clipping groups,
the encoder's gradient norms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from seqpe_jax import optim


def config(**overrides):
  o = common.optimizer_config(lr=1.0, schedule='cosine', warmup_steps=4, warmup_init=0.1,
                              min_lr=0.01, weight_decay=0.0)
  o.update(overrides)
  return o


@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
def test_schedules_equal_their_closed_forms(schedule):
  lr = optim.schedule(config(schedule=schedule), total_steps=20)
  for step in range(21):
    if step < 4:  # Linear warm-up from 0.1 to 1 over 4 steps.
      want = 0.1 + 0.9 * step / 4
    elif schedule == 'cosine':  # The warm-up replaces the cosine's first 4 of 20 steps.
      want = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 16))
    else:
      want = 1.0 - 0.99 * (step - 4) / 16
    assert float(lr(step)) == pytest.approx(want, rel=1e-5), step


def test_a_warm_up_longer_than_the_run_ends_a_step_before_it():
  lr = optim.schedule(config(warmup_steps=10), total_steps=3)
  assert [float(lr(s)) for s in range(3)] == pytest.approx([0.1, 0.55, 1.0], rel=1e-6)
  # A one-step run has no room for a warm-up: its step trains at the peak rate.
  np.testing.assert_allclose(optim.learning_rates(config(warmup_steps=10), total_steps=1),
                             [1.0], rtol=1e-6)


def test_an_unknown_schedule_is_one_sentence():
  with pytest.raises(ValueError, match="optimizer.schedule='step' is not one of: cosine, linear"):
    optim.schedule(config(schedule='step'), 10)


def params_tree(value=1.0):
  """Host matrices, vectors and position vectors; the SeqPE encoder's matrices and embeddings."""
  full = lambda *shape: jnp.full(shape, value, jnp.float32)
  return {'model': {'dense': {'kernel': full(2, 3), 'bias': full(3)}, 'cls': full(1, 3),
                    'table': full(4, 3), 'freqs': full(2, 3)},
          'pe': {'encoder': {'dense': {'kernel': full(3, 3), 'bias': full(3)},
                             'digit_embed': full(10, 3)},
                 'prefix': full(1, 3)}}


def test_decay_masks():
  params = params_tree()
  host = jax.tree_util.tree_map_with_path(optim.decays, params)
  seqpe = jax.tree_util.tree_map_with_path(optim.seqpe_decays, params)
  assert host == {'model': {'dense': {'kernel': True, 'bias': False}, 'cls': False,
                            'table': False, 'freqs': False},
                  'pe': {'encoder': {'dense': {'kernel': False, 'bias': False},
                                     'digit_embed': False}, 'prefix': False}}
  assert seqpe == {'model': {'dense': {'kernel': False, 'bias': False}, 'cls': False,
                             'table': False, 'freqs': False},
                   'pe': {'encoder': {'dense': {'kernel': True, 'bias': False},
                                      'digit_embed': False}, 'prefix': False}}


def test_two_adamw_steps_equal_numpy():
  """AdamW by hand: bias-corrected moments, then each group's decoupled decay, times the
  step's rate; gradients well under both clipping thresholds."""
  cfg = config(weight_decay=0.5, b1=0.8, b2=0.9, eps=1e-3, warmup_init=0.2)
  cfg.seqpe_weight_decay = 0.25
  params = params_tree(value=2.0)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  grads = [jax.tree.unflatten(treedef, [rng.normal(size=x.shape).astype(np.float32) * 0.1
                                         for x in leaves]) for _ in range(2)]
  opt = optim.make(cfg, params)
  lr, rates = optim.schedule(cfg, 20), optim.learning_rates(cfg, 20)
  state, got = opt.init(params), params
  for t, g in enumerate(grads):
    updates, state = opt.update(g, state, got, learning_rate=rates[t])
    got = jax.tree.map(lambda p, u: p + u, got, updates)
  host = jax.tree.leaves(jax.tree_util.tree_map_with_path(optim.decays, params))
  seqpe = jax.tree.leaves(jax.tree_util.tree_map_with_path(optim.seqpe_decays, params))
  for i, w in enumerate(leaves):
    w, m, v = np.asarray(w, np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
      g = np.asarray(jax.tree.leaves(g)[i], np.float64)
      m, v = 0.8 * m + 0.2 * g, 0.9 * v + 0.1 * g * g
      u = (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-3)
      u = u + 0.5 * w * host[i] + 0.25 * w * seqpe[i]
      w = w - float(lr(t - 1)) * u
    np.testing.assert_allclose(jax.tree.leaves(got)[i], w, rtol=2e-5, atol=1e-6)


def test_clipping_groups_are_the_encoder_and_the_rest():
  cfg = config(clip_seqpe=1.0, clip_host=2.0)
  grads = jax.tree.map(lambda x: 10 * jnp.ones_like(x), params_tree())
  clipped, _ = optim.clip_groups(cfg, grads).update(grads, optim.clip_groups(cfg, grads).init(
      grads))
  norms = optim.global_norms(clipped)
  assert float(norms['grad_norm/seqpe']) == pytest.approx(1.0, rel=1e-5)
  assert float(norms['grad_norm/host']) == pytest.approx(2.0, rel=1e-5)


def test_gradient_norms_and_their_ratio():
  grads = jax.tree.map(jnp.zeros_like, params_tree())
  grads['pe']['encoder']['dense']['kernel'] = jnp.zeros((3, 3)).at[0, :2].set(jnp.array([3., 4.]))
  grads['model']['dense']['bias'] = jnp.array([0., 6., 8.])
  grads['pe']['prefix'] = jnp.array([[0., 0., 0.]])
  norms = optim.global_norms(grads)
  assert float(norms['grad_norm/seqpe']) == pytest.approx(5.0)
  assert float(norms['grad_norm/host']) == pytest.approx(10.0)
  assert float(optim.encoder_norm(grads['pe'])) == pytest.approx(5.0)
  assert float(optim.encoder_norm({'table': jnp.ones(3)})) == 0.0
  task = {'encoder': {'w': jnp.array([3., 4.])}}
  reg = {'encoder': {'w': jnp.array([0., 2.])}}
  assert float(optim.encoder_grad_ratio(task, reg)) == pytest.approx(2.5)
  assert float(optim.encoder_grad_ratio(task, {'encoder': {'w': jnp.zeros(2)}})) == np.inf
