"""pe.attention: the attention-level distillation, from its loss to the trained host.

The loss against a NumPy oracle, its sampler's ranges, the probes the SeqPE step encodes,
the loss each GPT layer reports against one computed from the q/k projection's weights,
and the trainer's gradient of the total with it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm_base, vit_base
from seqpe_jax import positions, posenc, tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.posenc import inject, losses, regularizers, sampling

pytestmark = pytest.mark.xdist_group('signal')


def numpy_loss(teacher, student, far_log_weight, causal):
  """Row by row: KL(softmax(teacher row over its visible keys) || softmax(student row over
  the same keys and far key f counted exp(far_log_weight[s, f]) times))."""
  heads, n, _ = teacher.shape
  rows = range(n // 2, n) if causal else range(n)
  total, count = 0.0, 0
  for s in range(student.shape[0]):
    for h in range(heads):
      for i in rows:
        keys = i + 1 if causal else n
        p = np.exp(teacher[h, i, :keys] - teacher[h, i, :keys].max())
        p /= p.sum()
        near = np.exp(student[s, h, i, :keys].astype(np.float64))
        far = np.exp(student[s, h, i, n:].astype(np.float64) + far_log_weight[s]).sum()
        q = near / (near.sum() + far)
        total += np.sum(p * (np.log(p) - np.log(q)))
        count += 1
  return total / count


@pytest.mark.parametrize('causal, far', [(True, 5), (True, 0), (False, 0)])
def test_loss_equals_numpy(causal, far):
  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(2, 6, 6)).astype(np.float32)
  student = rng.normal(size=(3, 2, 6, 6 + far)).astype(np.float32)
  weights = rng.uniform(0, 3, size=(3, far)).astype(np.float32)
  got = losses.attention_distillation_loss(teacher, student, weights, np.ones(2),
                                           causal=causal)
  np.testing.assert_allclose(got, numpy_loss(teacher, student, weights, causal), rtol=1e-5)


def test_heads_left_free_are_not_compared():
  rng = np.random.default_rng(4)
  teacher = rng.normal(size=(3, 6, 6)).astype(np.float32)
  student = rng.normal(size=(2, 3, 6, 9)).astype(np.float32)
  weights = rng.uniform(0, 3, size=(2, 3)).astype(np.float32)
  got = losses.attention_distillation_loss(teacher, student, weights, np.array([1., 0., 1.]),
                                           causal=True)
  kept = [0, 2]
  np.testing.assert_allclose(got, numpy_loss(teacher[kept], student[:, kept], weights, True),
                             rtol=1e-5)


def test_a_copy_that_attends_as_the_window_and_ignores_far_keys_costs_nothing():
  teacher = np.random.default_rng(1).normal(size=(2, 8, 8)).astype(np.float32)
  far = np.full((2, 8, 4), -1e4, np.float32)  # Far keys the position term rules out.
  student = np.concatenate([teacher, far], -1)[None].repeat(2, 0)
  weights = np.log([[100.0] * 4, [5000.0] * 4]).astype(np.float32)
  assert float(losses.attention_distillation_loss(teacher, student, weights, np.ones(2),
                                                causal=True)) < 1e-6
  # The same copy whose far keys are as likely as near ones pays for all they stand for.
  flat = np.concatenate([teacher, np.zeros_like(far)], -1)[None].repeat(2, 0)
  loose = losses.attention_distillation_loss(teacher, flat, weights, np.ones(2), causal=True)
  assert float(loose) > 1.0


def test_far_keys_count_as_many_keys_as_their_weight_says():
  rng = np.random.default_rng(2)
  teacher = rng.normal(size=(1, 4, 4)).astype(np.float32)
  near = rng.normal(size=(1, 1, 4, 4)).astype(np.float32)
  one_far = np.concatenate([near, np.zeros((1, 1, 4, 1), np.float32)], -1)
  two_far = np.concatenate([near, np.zeros((1, 1, 4, 2), np.float32)], -1)
  np.testing.assert_allclose(
      losses.attention_distillation_loss(teacher, one_far, np.log([[6.0]]), np.ones(1),
                                         causal=True),
      losses.attention_distillation_loss(teacher, two_far, np.log([[2.0, 4.0]]), np.ones(1),
                                         causal=True),
      rtol=1e-6)


def test_the_teacher_gets_no_gradient():
  rng = np.random.default_rng(3)
  teacher = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(1, 2, 4, 6)), jnp.float32)
  loss = lambda t, s: losses.attention_distillation_loss(t, s, jnp.zeros((1, 2)), jnp.ones(2),
                                                         causal=True)
  d_teacher, d_student = jax.grad(loss, argnums=(0, 1))(teacher, student)
  assert float(jnp.abs(d_teacher).max()) == 0.0
  assert float(jnp.abs(d_student).max()) > 0.0
  assert bool(jnp.all(jnp.isfinite(d_student)))


def test_1d_probes_are_log_uniform_copies_with_far_keys_before_them():
  draws = sampling.sample_attention_probes(jax.random.key(0), train_shape=(100,),
                                           max_position=10_100, num_windows=4000,
                                           num_far_keys=8)
  offsets, far = np.asarray(draws['offsets'][:, 0]), np.asarray(draws['far'][..., 0])
  assert offsets.min() >= 1 and offsets.max() <= 10_000
  assert np.all(far >= 0) and np.all(far < offsets[:, None])  # Every far key precedes its copy.
  np.testing.assert_allclose(draws['far_log_weight'],
                             np.broadcast_to(np.log(offsets[:, None] / 8), far.shape), rtol=1e-5)
  # Log-uniform: a tenth of the log range per tenth of the draws, so 2x-4x as often as 4x-8x.
  for lo, hi in ((1, 100), (100, 10_000)):
    share = np.mean((offsets >= lo) & (offsets < hi))
    np.testing.assert_allclose(share, math.log(hi / lo) / math.log(10_001), atol=0.03)


def far_key_density(d, s, num_uniform, num_log):
  """NumPy: F q(d) for distance d before a copy at s, the mixture of num_uniform uniform
  keys and num_log keys at floor(exp(U[0, log(s + 1))))."""
  return num_uniform / s + num_log * (np.log(d + 1) - np.log(d)) / np.log(s + 1)


def test_log_mixture_far_keys_follow_their_density_and_weigh_its_inverse():
  far_keys = 64
  draws = sampling.sample_attention_probes(jax.random.key(3), train_shape=(24,),
                                           max_position=1024, num_windows=3000,
                                           num_far_keys=far_keys,
                                           far_key_sampling='log_mixture')
  offsets = np.asarray(draws['offsets'][:, 0])
  distance = offsets[:, None] - np.asarray(draws['far'][..., 0])
  assert distance.min() >= 1 and np.all(distance <= offsets[:, None])
  density = far_key_density(distance, offsets[:, None], far_keys // 2, far_keys // 2)
  np.testing.assert_allclose(draws['far_log_weight'], -np.log(density), rtol=1e-4, atol=1e-5)
  # The first half is uniform, the second log-uniform: within 10 keys of a copy at s lie a
  # share log(11) / log(s + 1) of the log keys and 10 / s of the uniform ones.
  far_copies = offsets >= 100
  near = distance[far_copies] <= 10
  s = offsets[far_copies]
  np.testing.assert_allclose(near[:, far_keys // 2:].mean(),
                             np.mean(math.log(11) / np.log(s + 1)), atol=0.01)
  np.testing.assert_allclose(near[:, :far_keys // 2].mean(), np.mean(10 / s), atol=0.01)
  # Unbiased: the weights add up to the s keys before each copy, on average over draws.
  total = np.exp(np.asarray(draws['far_log_weight'], np.float64)).sum(-1) / offsets
  np.testing.assert_allclose(total.mean(), 1.0, atol=0.05)


def test_unknown_far_key_sampling_stops_with_one_sentence():
  with pytest.raises(ValueError, match="far_key_sampling must be one of uniform, log_mixture, "
                                       "got 'log'"):
    small_lm_seqpe(**{'attention.far_key_sampling': 'log'})


def test_2d_probes_keep_the_moved_grid_inside_the_space():
  draws = sampling.sample_attention_probes(jax.random.key(1), train_shape=(4, 6),
                                           max_position=20, num_windows=500, num_far_keys=0)
  offsets = np.asarray(draws['offsets'])
  assert offsets.min() == 0 and offsets[:, 0].max() == 16 and offsets[:, 1].max() == 14
  assert draws['far'].shape == (500, 0, 2)


def small_lm_seqpe(**fields):
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 60
  cfg.seqpe.dropout = 0.0
  cfg.contrastive.num_pivots, cfg.contrastive.num_candidates = 6, 10
  cfg.contrastive.window_range = 8
  cfg.ood.num_groups, cfg.ood.num_teachers = 3, 5
  cfg.shift.num_windows, cfg.shift.pool_size = 4, 20
  cfg.attention.weight, cfg.attention.num_windows, cfg.attention.num_far_keys = 0.5, 3, 4
  cfg.update_from_flattened_dict(fields)
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, (12,), causal=True))
  return pe, regularizers.build(cfg, pe)


@pytest.mark.parametrize('shift_prob', [0.0, 1.0])
def test_the_step_encodes_the_window_its_copies_and_their_far_keys(shift_prob):
  pe, reg = small_lm_seqpe(**{'shift.prob': shift_prob})
  params = pe.init(jax.random.key(0), (12,))
  pool = reg.shift_pool(jax.random.key(1))
  key = jax.random.key(7)
  features, aux = jax.jit(lambda p: regularizers.seqpe_step(pe, p, key, pool, reg))(params)
  assert float(aux['shifted']) == shift_prob
  probes = features[inject.ATTENTION_PROBES]
  draws = sampling.sample_attention_probes(jax.random.fold_in(key, 1), train_shape=(12,),
                                           max_position=60, num_windows=3, num_far_keys=4)
  encode = jax.jit(lambda pos: pe.source.apply({'params': params}, pos, method='encode'))
  grid = positions.grid((12,))
  copies = jnp.concatenate([grid[None] + draws['offsets'][:, None], draws['far']], axis=1)
  np.testing.assert_allclose(probes['teacher']['e'], encode(grid)[None], atol=1e-5)
  np.testing.assert_allclose(probes['student']['e'], encode(copies), atol=1e-5)
  np.testing.assert_allclose(probes['far_log_weight'], draws['far_log_weight'])
  np.testing.assert_array_equal(probes['head_weight'], [1.0, 1.0])  # num_heads 0: all.


def test_num_heads_selects_the_first_host_heads():
  pe, reg = small_lm_seqpe(**{'attention.num_heads': 1})
  params = pe.init(jax.random.key(0), (12,))
  features, _ = regularizers.seqpe_step(pe, params, jax.random.key(2),
                                        reg.shift_pool(jax.random.key(1)), reg)
  np.testing.assert_array_equal(features[inject.ATTENTION_PROBES]['head_weight'], [1.0, 0.0])


def test_the_step_has_no_probes_when_the_option_is_off():
  pe, reg = small_lm_seqpe(**{'attention.weight': 0.0})
  params = pe.init(jax.random.key(0), (12,))
  features, _ = regularizers.seqpe_step(pe, params, jax.random.key(2),
                                        reg.shift_pool(jax.random.key(1)), reg)
  assert inject.ATTENTION_PROBES not in features


@pytest.mark.parametrize('fields, message', [
    ({'attention.weight': -1.0}, 'pe.attention.weight must be non-negative, got -1.0.'),
    ({'attention.num_windows': 0}, 'pe.attention.num_windows must be a positive number'),
    ({'attention.num_far_keys': -2}, 'pe.attention.num_far_keys must be a non-negative'),
    ({'attention.num_heads': 3}, "between 0 \\(all\\) and the host's 2 heads, got 3"),
])
def test_bad_values_stop_with_one_sentence(fields, message):
  with pytest.raises(ValueError, match=message):
    small_lm_seqpe(**fields)


def test_far_keys_on_a_grid_host_stop_with_one_sentence():
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 30
  cfg.shift.pool_size = 20
  cfg.attention.weight = 1.0
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, (4, 4), num_prefix=1))
  with pytest.raises(ValueError, match='only a causal 1D host has; set it to 0'):
    regularizers.build(cfg, pe)


# ---------------------------------------------------------------- In the host and the trainer.

FAMILIES = {'vit': vit_base, 'lm': lm_base}
ON = {'pe.attention.weight': 0.7}
FAMILY_ON = {'lm': {**ON, 'pe.attention.num_far_keys': 8},
             # A larger q/k projection, so the ViT's position logits differ at step 0.
             'vit': {**ON, 'pe.attention.num_far_keys': 0, 'pe.inject.proj_init_std': 0.5}}


@functools.cache
def smoke(family):
  config = FAMILIES[family].get_config('smoke', pe='seqpe')
  config.mesh.data = 1
  config.update_from_flattened_dict(FAMILY_ON[family])
  task = tasks.build(config)
  optimizer = state_lib.make_optimizer(task, config)
  init_key, step_key, pool_key = jax.random.split(jax.random.key(config.seed), 3)
  state = state_lib.init_state(task, optimizer, init_key)
  batch = jax.tree.map(jnp.asarray, task.train_batches(config.seed)[0])
  return config, task, state, batch, step_key, task.shift_pool(pool_key)


def test_each_gpt_layer_reports_the_loss_of_its_position_logits():
  """The loss the layers report equals the oracle's on logits computed by hand from the
  shared q/k projection: s p_q.p_k / sqrt(d_h) per head, the same in every layer."""
  config, task, state, _, _, pool = smoke('lm')
  params = state['params']
  features, _ = regularizers.seqpe_step(task.pe, params['pe'], jax.random.key(3), pool,
                                        task.regularizers, deterministic=True)
  features[inject.ATTENTION_PROBES]['weight'] = jnp.asarray(0.7)
  tokens = {'tokens': jnp.zeros((4, 32), jnp.int32)}
  _, reported = task.logits(params['model'], tokens, features, train=False,
                            mutable=[inject.PE_LOSSES])
  hook_loss, scalars = inject.host_pe_losses(reported)
  assert len(jax.tree.leaves(reported)) == 2 * 2  # Two nano layers, each loss and weighted.

  proj = params['model']['decoder']['pe_inject']['qk_proj']
  heads, head_dim = 2, 32

  def logits(e):
    pqk = np.asarray(e) @ np.asarray(proj['kernel']) + np.asarray(proj['bias'])
    pq, pk = np.split(pqk, 2, axis=-1)
    pq = pq.reshape(*pq.shape[:-1], heads, head_dim)
    pk = pk.reshape(*pk.shape[:-1], heads, head_dim)
    return config.pe.inject.scalar_scale * np.einsum('wqhd,wkhd->whqk', pq, pk) / head_dim**0.5

  probes = features[inject.ATTENTION_PROBES]
  expected = numpy_loss(logits(probes['teacher']['e'])[0], logits(probes['student']['e']),
                        np.asarray(probes['far_log_weight']), causal=True)
  np.testing.assert_allclose(scalars['attention_loss'], expected, rtol=1e-4)
  np.testing.assert_allclose(hook_loss, 0.7 * expected, rtol=1e-4)


@pytest.mark.parametrize('family', ['lm', 'vit'])
def test_the_step_gradient_includes_the_layers_loss(family):
  """The trainer's gradient equals jax.grad of task + regularisers + the layers' weighted
  loss written out directly, and its logged total adds the three up."""
  config, task, state, batch, step_key, pool = smoke(family)
  params, step = state['params'], jnp.zeros((), jnp.int32)
  gradients = train.make_gradients(task, step_key, pool)
  scalars, whole = jax.jit(lambda p: gradients(p, batch, step, split=False))(params)
  s = jax.device_get(scalars)
  assert s['train/seqpe/attention_loss'] > 0
  np.testing.assert_allclose(s['train/seqpe/hook_loss'], 0.7 * s['train/seqpe/attention_loss'],
                             rtol=1e-6)
  expected = s['train/task_loss'] + s['train/seqpe/hook_loss'] + s['train/seqpe/reg_scale'] * (
      config.pe.contrastive.weight * s['train/seqpe/contrastive_loss'] +
      config.pe.ood.weight * s['train/seqpe/ood_loss'])
  np.testing.assert_allclose(s['train/loss'], expected, rtol=1e-6)

  def direct_total(p, with_layers=True):
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, 0))
    features, reg_loss, _ = task.pe_training_features(p['pe'], pe_key, step, pool)
    logits, reported = task.logits(p['model'], batch, features, train=True, rng=dropout_key,
                                   mutable=[inject.PE_LOSSES])
    layers = [v for path, v in jax.tree_util.tree_flatten_with_path(reported)[0]
              if 'loss' in [getattr(k, 'key', None) for k in path]]
    layers_loss = sum(layers) / len(layers)
    return layers_loss if with_layers == 'only' else (
        task.loss(logits, batch)[0] + reg_loss + (layers_loss if with_layers else 0.0))

  direct = jax.jit(jax.grad(direct_total))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8),
               whole, direct)
  # What the layers' loss alone gives: it moves the encoder and the host's q/k projection.
  layers_only = jax.jit(jax.grad(functools.partial(direct_total, with_layers='only')))(params)
  assert float(optax_norm(layers_only['pe'])) > 0
  assert float(optax_norm(layers_only['model'])) > 0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
