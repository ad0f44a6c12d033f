"""The assembled SeqPE step: one compile, one encoder pass, distillation only when unshifted."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import positions, posenc
from seqpe_jax.posenc import contrastive_sampling, losses, regularizers, sampling


def small_seqpe(shape=(4, 4), prefix=1, **fields):
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 30
  cfg.contrastive.num_pivots, cfg.contrastive.num_candidates = 6, 10
  cfg.ood.num_groups, cfg.ood.num_teachers = 3, 5
  cfg.shift.num_windows, cfg.shift.pool_size, cfg.shift.prob = 4, 20, 0.5
  for path, value in fields.items():
    section, key = path.split('__')
    cfg[section][key] = value
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, shape, num_prefix=prefix, causal=len(shape) == 1))
  return cfg, pe, regularizers.build(cfg, pe)


def test_one_compile_for_shifted_and_unshifted_steps():
  _, pe, reg = small_seqpe()
  params = pe.init(jax.random.key(0), (4, 4))
  pool = reg.shift_pool(jax.random.key(1))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, key):
    return regularizers.seqpe_step(pe, params, key, pool, reg)

  chex.clear_trace_counter()
  seen = set()
  for i in range(12):
    features, aux = step(params, jax.random.key(i))
    chex.assert_shape(features['e'], (4, 17, 16))
    shifted = bool(aux['shifted'])
    seen.add(shifted)
    # Unshifted windows are copies of one, which the host's projections may use.
    assert float(features[posenc.inject.WINDOWS_ALIKE]) == float(not shifted)
    assert (float(aux['ood_loss']) == 0) == shifted  # Distillation only on unshifted steps.
    expected = reg.ct_weight * aux['contrastive_loss'] + reg.ood_weight * aux['ood_loss']
    np.testing.assert_allclose(aux['loss'], expected, rtol=1e-6)
  assert seen == {True, False}


def jitted_step(pe, params, key, pool, reg):
  step = lambda params, key: regularizers.seqpe_step(pe, params, key, pool, reg,
                                                     deterministic=True)
  return jax.jit(step)(params, key)


def _split_key(key):
  """The keys seqpe_step derives from its step key, in its order."""
  return jax.random.split(key, 4)


def test_single_pass_equals_encoding_each_group_separately():
  cfg, pe, reg = small_seqpe(shape=(12,), prefix=0, shift__prob=0.0,
                             contrastive__window_range=8, shift__pool_size=10)
  params = pe.init(jax.random.key(0), (12,))
  pool = reg.shift_pool(jax.random.key(1))
  key = jax.random.key(5)
  features, aux = jitted_step(pe, params, key, pool, reg)
  _, ct_key, ood_key, _ = _split_key(key)
  ct = jax.jit(contrastive_sampling.sample_contrastive, static_argnums=1)(ct_key, reg.contrastive)
  ood = sampling.sample_ood(ood_key, train_shape=(12,), max_position=30, num_groups=3,
                            num_teachers=5)
  encode = jax.jit(lambda pos: pe.source.apply({'params': params}, pos, method='encode'))
  main = encode(positions.grid((12,)))
  np.testing.assert_allclose(features['e'], jnp.broadcast_to(main, (4, 12, 16)), atol=1e-5)
  np.testing.assert_allclose(features['e'][0], pe.features(params, (12,))['e'][0], atol=1e-5)
  ct_loss = losses.contrastive_loss(encode(ct['pivots']), encode(ct['candidates']),
                                    ct['labels'], ct['valid'])
  students = positions.grid((12,))[ood['teachers']] + ood['offsets'][:, None]
  ood_loss = losses.ood_distillation_loss(main[ood['teachers']], encode(students), num_heads=2)
  np.testing.assert_allclose(aux['contrastive_loss'], ct_loss, rtol=1e-5)
  np.testing.assert_allclose(aux['ood_loss'], ood_loss, rtol=1e-4, atol=1e-9)


def test_shifted_windows_come_from_the_pool():
  _, pe, reg = small_seqpe(shift__prob=1.0)
  params = pe.init(jax.random.key(0), (4, 4))
  pool = reg.shift_pool(jax.random.key(1))
  key = jax.random.key(3)
  features, aux = jitted_step(pe, params, key, pool, reg)
  assert bool(aux['shifted'])
  _, offsets = sampling.sample_shift(_split_key(key)[0], pool, num_windows=4, prob=1.0)
  for w in range(4):
    window = positions.grid((4, 4)) + offsets[w]
    expected = jax.jit(pe.source.apply, static_argnames='method')(
        {'params': params}, window, method='encode')
    np.testing.assert_allclose(features['e'][w, 1:], expected, atol=1e-5)
    np.testing.assert_array_equal(features['e'][w, 0], params['prefix'][0])


def test_losses_train_the_encoder_and_the_task_still_reaches_the_teacher():
  _, pe, reg = small_seqpe(shift__prob=0.0)
  params = pe.init(jax.random.key(0), (4, 4))
  pool = reg.shift_pool(jax.random.key(1))

  def total(params, task_weight):
    features, aux = regularizers.seqpe_step(pe, params, jax.random.key(2), pool, reg)
    task = jnp.sum(features['e'][0, 1:]**2)  # Stand-in for the task loss on the main PE.
    return task_weight * task + aux['loss']

  for task_weight in (0.0, 1.0):
    grads = jax.jit(jax.grad(total))(params, task_weight)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads['encoder']['digit_embed']).sum()) > 0


@pytest.mark.parametrize('fields, message', [
    ({'contrastive__weight': -0.1}, 'pe.contrastive.weight must be non-negative, got -0.1.'),
    ({'ood__weight': -1.0}, 'pe.ood.weight must be non-negative'),
    ({'shift__prob': 1.5}, 'pe.shift.prob must be a probability, got 1.5.'),
    ({'shift__num_windows': 0}, 'pe.shift.num_windows must be at least 1, got 0.'),
    ({'contrastive__num_pivots': 0}, 'pe.contrastive.num_pivots must be at least 1, got 0.'),
    ({'contrastive__num_candidates': 900}, '900 contrastive candidates do not fit'),
    ({'ood__num_teachers': 17}, '17 OOD teachers exceed the 16 positions'),
    ({'shift__pool_size': 800}, 'The shift pool of 800 exceeds the 729 window starts'),
    ({'seqpe__max_position': 150, 'seqpe__num_digits': 2},
     'Position 149 does not fit 2 base-10 digits'),
])
def test_bad_regularizer_config(fields, message):
  with pytest.raises(ValueError, match=message):
    small_seqpe(**fields)


def test_baselines_have_no_regularizers():
  cfg = posenc.config.get_config()
  cfg.name = 'rope2d'
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, (4, 4)))
  assert regularizers.build(cfg, pe) is None


@pytest.mark.parametrize('shape, num_candidates', [((16,), 6), ((3, 3), 6), ((2, 2), 10)])
def test_train_window_pivots_and_candidates_stay_in_the_window(shape, num_candidates):
  ct = jax.jit(lambda k: contrastive_sampling.sample_train_window_contrastive(
      k, shape, num_pivots=50, num_candidates=num_candidates))(jax.random.key(3))
  grid = {tuple(p) for p in np.asarray(positions.grid(shape))}
  pivots, cands, valid = map(np.asarray, (ct['pivots'], ct['candidates'], ct['valid']))
  assert all(tuple(p) in grid for p in pivots)
  others = len(grid) - 1
  np.testing.assert_array_equal(valid.sum(1), min(num_candidates, others))  # Surplus masked.
  for pivot, row, ok, label in zip(pivots, cands, valid, np.asarray(ct['labels'])):
    kept = [tuple(c) for c in row[ok]]
    assert all(c in grid and c != tuple(pivot) for c in kept)
    assert len(set(kept)) == len(kept)  # Distinct.
    distance = ((row - pivot) ** 2).sum(-1)
    assert ok[label] and distance[label] == distance[ok].min()  # Nearest candidate.


def test_train_fraction_splits_the_pivots_and_keeps_the_reference_draws():
  _, pe, reg = small_seqpe((4, 4), contrastive__train_fraction=0.5)
  assert reg.ct_train_pivots == 3 and reg.contrastive.num_pivots == 3
  ct = jax.jit(lambda key: regularizers.sample_pivots(key, reg))(jax.random.key(5))
  assert ct['pivots'].shape == (6, 2) and ct['candidates'].shape == (6, 10, 2)
  assert np.all(np.asarray(ct['pivots'][:3]) < 4)  # The window share comes first.
  _, _, reference = small_seqpe((4, 4))  # train_fraction 0: the reference sampler as it was.
  draws = jax.jit(lambda key: (regularizers.sample_pivots(key, reference),
                               contrastive_sampling.sample_contrastive(key, reference.contrastive)))
  jax.tree.map(np.testing.assert_array_equal, *draws(jax.random.key(5)))


def test_rematerialising_the_whole_encoder_pass_changes_no_number():
  """pe.seqpe.remat='all' (the default) reruns the encoder pass in the backward instead of
  keeping its products: the losses, features and gradients stay those of 'matmuls'
  (dropout on, so a redrawn mask would show), on both branches."""
  _, pe, rerun = small_seqpe(seqpe__dropout=0.1, shift__prob=0.5)
  _, _, kept = small_seqpe(seqpe__dropout=0.1, shift__prob=0.5, seqpe__remat='matmuls')
  assert (kept.remat, rerun.remat) == ('matmuls', 'all')
  params = pe.init(jax.random.key(0), (4, 4))
  pool = kept.shift_pool(jax.random.key(1))

  def loss(params, key, reg):
    features, aux = regularizers.seqpe_step(pe, params, key, pool, reg)
    return aux['loss'] + jnp.sum(jnp.sin(features['e'])), aux['shifted']

  loss_and_grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
  branches = set()
  for seed in range(6):
    key = jax.random.key(seed)
    (want, shifted), want_grads = loss_and_grads(params, key, kept)
    (got, _), got_grads = loss_and_grads(params, key, rerun)
    branches.add(bool(shifted))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 got_grads, want_grads)
  assert branches == {True, False}
