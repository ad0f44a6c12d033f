"""pe.logit_distill: the logit distillation, from its loss to the trained host.

The loss against a NumPy oracle, its sampler's ranges, the probes the SeqPE step encodes,
the position logits each GPT and ViT layer reports on them against ones computed from the
q/k projections' weights (causal on the LM, not on the ViT), and the trainer's gradient:
the distillation's part counts as the regulariser's, so balancing caps it, and its weight
follows the regulariser warm-up.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm_base, vit_base
from seqpe_jax import optim, positions, posenc, tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.models import attention, transformer
from seqpe_jax.posenc import losses, regularizers, sampling
from tests import qk_projection

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
  got = losses.logit_distill_loss(teacher, student, weights,
                                           causal=causal)
  np.testing.assert_allclose(got, numpy_loss(teacher, student, weights, causal), rtol=1e-5)


def test_a_copy_that_attends_as_the_window_and_ignores_far_keys_costs_nothing():
  teacher = np.random.default_rng(1).normal(size=(2, 8, 8)).astype(np.float32)
  far = np.full((2, 8, 4), -1e4, np.float32)  # Far keys the position term rules out.
  student = np.concatenate([teacher, far], -1)[None].repeat(2, 0)
  weights = np.log([[100.0] * 4, [5000.0] * 4]).astype(np.float32)
  assert float(losses.logit_distill_loss(teacher, student, weights,
                                                causal=True)) < 1e-6
  # The same copy whose far keys are as likely as near ones pays for all they stand for.
  flat = np.concatenate([teacher, np.zeros_like(far)], -1)[None].repeat(2, 0)
  loose = losses.logit_distill_loss(teacher, flat, weights, causal=True)
  assert float(loose) > 1.0


def test_far_keys_count_as_many_keys_as_their_weight_says():
  rng = np.random.default_rng(2)
  teacher = rng.normal(size=(1, 4, 4)).astype(np.float32)
  near = rng.normal(size=(1, 1, 4, 4)).astype(np.float32)
  one_far = np.concatenate([near, np.zeros((1, 1, 4, 1), np.float32)], -1)
  two_far = np.concatenate([near, np.zeros((1, 1, 4, 2), np.float32)], -1)
  np.testing.assert_allclose(
      losses.logit_distill_loss(teacher, one_far, np.log([[6.0]]),
                                         causal=True),
      losses.logit_distill_loss(teacher, two_far, np.log([[2.0, 4.0]]),
                                         causal=True),
      rtol=1e-6)


def test_the_teacher_gets_no_gradient():
  rng = np.random.default_rng(3)
  teacher = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
  student = jnp.asarray(rng.normal(size=(1, 2, 4, 6)), jnp.float32)
  loss = lambda t, s: losses.logit_distill_loss(t, s, jnp.zeros((1, 2)),
                                                         causal=True)
  d_teacher, d_student = jax.grad(loss, argnums=(0, 1))(teacher, student)
  assert float(jnp.abs(d_teacher).max()) == 0.0
  assert float(jnp.abs(d_student).max()) > 0.0
  assert bool(jnp.all(jnp.isfinite(d_student)))


def test_1d_probes_are_log_uniform_copies_with_far_keys_before_them():
  draws = sampling.sample_logit_distill_probes(jax.random.key(0), train_shape=(100,),
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


def test_2d_probes_keep_the_moved_grid_inside_the_space():
  draws = sampling.sample_logit_distill_probes(jax.random.key(1), train_shape=(4, 6),
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
  cfg.logit_distill.weight, cfg.logit_distill.num_windows = 0.5, 3
  cfg.logit_distill.num_far_keys = 4
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
  probes = aux['probes']
  draws = sampling.sample_logit_distill_probes(jax.random.fold_in(key, 1), train_shape=(12,),
                                           max_position=60, num_windows=3, num_far_keys=4)
  encode = jax.jit(lambda pos: pe.source.apply({'params': params}, pos, method='encode'))
  grid = positions.grid((12,))
  copies = jnp.concatenate([grid[None] + draws['offsets'][:, None], draws['far']], axis=1)
  np.testing.assert_allclose(probes['teacher']['e'], encode(grid)[None], atol=1e-5)
  np.testing.assert_allclose(probes['student']['e'], encode(copies), atol=1e-5)
  np.testing.assert_allclose(aux['far_log_weight'], draws['far_log_weight'])


def test_the_step_has_no_probes_when_the_option_is_off():
  pe, reg = small_lm_seqpe(**{'logit_distill.weight': 0.0})
  params = pe.init(jax.random.key(0), (12,))
  pool = reg.shift_pool(jax.random.key(1))
  _, probes, terms, _ = jax.jit(
      lambda p: regularizers.training_step(pe, reg, p, jax.random.key(2), 0, pool))(params)
  assert probes == {} and set(terms) == {'loss'}


@pytest.mark.parametrize('fields, message', [
    ({'logit_distill.weight': -1.0}, 'pe.logit_distill.weight must be non-negative, got -1.0.'),
    ({'logit_distill.num_windows': 0}, 'pe.logit_distill.num_windows must be a positive number'),
    ({'logit_distill.num_far_keys': -2}, 'pe.logit_distill.num_far_keys must be a non-negative'),
])
def test_bad_values_stop_with_one_sentence(fields, message):
  with pytest.raises(ValueError, match=message):
    small_lm_seqpe(**fields)


def test_far_keys_on_a_grid_host_stop_with_one_sentence():
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 30
  cfg.shift.pool_size = 20
  cfg.logit_distill.weight = 1.0
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, (4, 4), num_prefix=1))
  with pytest.raises(ValueError, match='only a causal 1D host has; set it to 0'):
    regularizers.build(cfg, pe)


# ---------------------------------------------------------------- In the host and the trainer.

FAMILIES = {'vit': vit_base, 'lm': lm_base}
# At step 0 of a 4-step warm-up every regulariser, the distillation included, weighs 1/4.
ON = {'pe.logit_distill.weight': 0.7, 'pe.regularizers.warmup_steps': 4}
FAMILY_ON = {'lm': {**ON, 'pe.logit_distill.num_far_keys': 8},
             'vit': {**ON, 'pe.logit_distill.num_far_keys': 0}}


@functools.cache
def smoke(family, **overrides):
  config = FAMILIES[family].get_config('reference,smoke', pe='seqpe')
  config.mesh.data = 1
  config.update_from_flattened_dict({**FAMILY_ON[family], **overrides})
  task = tasks.build(config)
  optimizer = state_lib.make_optimizer(task, config)
  init_key, step_key, pool_key = jax.random.split(jax.random.key(config.seed), 3)
  state = jax.jit(lambda k: state_lib.init_state(task, optimizer, k))(init_key)
  if family == 'vit':  # A larger q/k projection (std 2), so its position logits differ at step 0.
    state = {**state, 'params': qk_projection.scale_kernels(state['params'], 100.0)}
  batch = jax.tree.map(jnp.asarray, task.train_batches(config.seed)[0])
  return config, task, state, batch, step_key, jax.jit(task.shift_pool)(pool_key)


def reported_logits(family):
  """(config, probes, far log-weights, the host's stacked probe logits, model params) of
  the :smoke host on one deterministic SeqPE step."""
  config, task, state, batch, _, pool = smoke(family)
  params = state['params']

  @jax.jit
  def probe_logits(params):
    _, aux = regularizers.seqpe_step(task.pe, params['pe'], jax.random.key(3), pool,
                                     task.regularizers, deterministic=True)
    _, collections = task.logits(params['model'], batch,
                                 task.pe.features(params['pe'], task.train_shape), train=False,
                                 probes=aux['probes'], mutable=[attention.PROBE_LOGITS])
    return aux, transformer.stacked_probe_logits(collections)

  aux, stacked = probe_logits(params)
  return config, task, aux, stacked, params['model']


def projected_logits(e, kernel, bias, heads, head_dim):
  """NumPy: p_q.p_k / sqrt(d_h) per head for [p_q; p_k] = e W + b, [W, H, L, L]."""
  pqk = np.asarray(e) @ np.asarray(kernel) + np.asarray(bias)
  pq, pk = np.split(pqk, 2, axis=-1)
  pq = pq.reshape(*pq.shape[:-1], heads, head_dim)
  pk = pk.reshape(*pk.shape[:-1], heads, head_dim)
  return np.einsum('wqhd,wkhd->whqk', pq, pk) / head_dim**0.5


def test_each_gpt_layer_reports_the_position_logits_of_the_probes():
  """The logits the layers report equal those computed by hand from the shared q/k
  projection: (q.k + p_q.p_k) / sqrt(d_h) per head with q = k = 1, the same in every layer;
  the regulariser's
  loss on them is the causal oracle's."""
  _, task, aux, stacked, model = reported_logits('lm')
  assert stacked['teacher'].shape == (2, 1, 2, 32, 32)  # Two nano layers, 2 heads.
  assert stacked['student'].shape[:3] == (2, 4, 2)  # 4 copies, each followed by 8 far keys.
  proj = model['decoder']['pe_inject']['qk_proj']
  logits = functools.partial(projected_logits, kernel=proj['kernel'], bias=proj['bias'],
                             heads=2, head_dim=32)
  teacher, student = logits(aux['probes']['teacher']['e']), logits(aux['probes']['student']['e'])
  content = 32 / 32**0.5  # attn_scalar keeps q.k, which constant q = k = 1 make d_h.
  for layer in range(2):
    np.testing.assert_allclose(stacked['teacher'][layer] - content, teacher, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stacked['student'][layer] - content, student, rtol=1e-4, atol=1e-5)
  expected = numpy_loss(teacher[0], student, np.asarray(aux['far_log_weight']), causal=True)
  terms = {'loss': jnp.asarray(0.25), 'far_log_weight': aux['far_log_weight'],
           'logit_distill_weight': jnp.asarray(0.7)}
  loss, scalars = regularizers.regularizer_loss(task.regularizers, terms, stacked)
  np.testing.assert_allclose(scalars['logit_distill_loss'], expected, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.25 + 0.7 * expected, rtol=1e-4)


def test_on_the_vit_every_layer_distils_its_own_logits_without_a_causal_mask():
  """The ViT's layers own their q/k projections: each layer's reported logits follow its
  own weights (attn_mul with q = k = 1: p_q.p_k / sqrt(d_h)), and the loss is the oracle's
  over every row and key, as the encoder sees them (no causal mask)."""
  _, task, aux, stacked, model = reported_logits('vit')
  assert not task.regularizers.causal
  far = np.asarray(aux['far_log_weight'])
  assert far.shape == (4, 0)
  per_layer, causal_per_layer = [], []
  for layer in range(2):
    proj = model['encoder'][f'block_{layer}']['attn']['pe']['qk_proj']
    logits = functools.partial(projected_logits, kernel=proj['kernel'], bias=proj['bias'],
                               heads=2, head_dim=16)
    teacher, student = logits(aux['probes']['teacher']['e']), logits(aux['probes']['student']['e'])
    np.testing.assert_allclose(stacked['teacher'][layer], teacher, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stacked['student'][layer], student, rtol=1e-4, atol=1e-5)
    # The oracle reads the reported logits: the loss is tested apart from their rounding.
    reported = (np.asarray(stacked['teacher'][layer][0], np.float64),
                np.asarray(stacked['student'][layer], np.float64))
    per_layer.append(numpy_loss(*reported, far, causal=False))
    causal_per_layer.append(numpy_loss(*reported, far, causal=True))
  terms = {'loss': jnp.asarray(0.0), 'far_log_weight': aux['far_log_weight'],
           'logit_distill_weight': jnp.asarray(1.0)}
  _, scalars = regularizers.regularizer_loss(task.regularizers, terms, stacked)
  np.testing.assert_allclose(scalars['logit_distill_loss'], np.mean(per_layer), rtol=1e-4)
  assert np.mean(per_layer) > 0
  # The mask matters here: a causal loss would differ by far more than the tolerance.
  assert abs(np.mean(causal_per_layer) - np.mean(per_layer)) > 1e-2 * np.mean(per_layer)


def direct_losses(family, task, batch, step_key, pool, step=0):
  """params -> [task loss, regulariser loss], written out without the trainer: the SeqPE
  step, the host's probe logits per layer, the oracle-tested loss and the warm-up's scale."""
  scale = float(task.regularizers.weight_scale(step))

  def losses_of(p):
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, step))
    features, aux = regularizers.seqpe_step(task.pe, p['pe'], pe_key, pool, task.regularizers)
    logits, state = task.logits(p['model'], batch, features, train=True, rng=dropout_key,
                                probes=aux['probes'], mutable=[attention.PROBE_LOGITS])
    (host,) = state[attention.PROBE_LOGITS].values()
    layers = [losses.logit_distill_loss(block['attn']['teacher'][0][0], block['attn']['student'][0],
                                        aux['far_log_weight'], causal=family == 'lm')
              for block in host.values()]
    distill = sum(layers) / len(layers)
    return jnp.stack([task.loss(logits, batch)[0], scale * (aux['loss'] + 0.7 * distill)])

  return losses_of


@pytest.mark.parametrize('family', ['lm', 'vit'])
def test_the_distillation_gradient_is_the_regularisers_at_the_warm_up_weight(family):
  """The trainer's gradient equals the gradient of task + regularisers (the distillation
  included, at the warm-up's quarter weight) written out directly; split, the
  distillation's part of the PE gradient is in the regulariser's share, not the task's.
  One program computes all of it: each is a compile of the whole model."""
  config, task, state, batch, step_key, pool = smoke(family)
  params, step = state['params'], jnp.zeros((), jnp.int32)
  gradients = train.make_gradients(task, step_key, pool)
  direct = direct_losses(family, task, batch, step_key, pool)

  @jax.jit
  def trainer_and_direct(p):
    scalars, whole = gradients(p, batch, step, split=False)
    _, parts = gradients(p, batch, step, split=True)
    return scalars, whole, parts, direct(p), jax.jacrev(direct)(p)  # Rows: task, regulariser.

  scalars, whole, parts, direct_values, direct_grads = trainer_and_direct(params)
  s = jax.device_get(scalars)
  assert s['train/seqpe/reg_scale'] == 0.25 and s['train/seqpe/logit_distill_loss'] > 0
  weights = config.pe
  np.testing.assert_allclose(
      s['train/loss'] - s['train/task_loss'],
      0.25 * (weights.contrastive.weight * s['train/seqpe/contrastive_loss']
              + weights.ood.weight * s['train/seqpe/ood_loss']
              + weights.logit_distill.weight * s['train/seqpe/logit_distill_loss']), rtol=1e-5)
  np.testing.assert_allclose(s['train/loss'], direct_values.sum(), rtol=1e-5)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)
  jax.tree.map(lambda w, d: close(w, d.sum(0)), whole, direct_grads)
  jax.tree.map(lambda t, d: close(t, d[0]), parts['pe_task'], direct_grads['pe'])
  jax.tree.map(lambda r, d: close(r, d[1]), parts['pe_reg'], direct_grads['pe'])


def test_balancing_caps_the_distillation_with_the_other_regularisers():
  """With only the distillation on, its encoder gradient is the regulariser's: finite
  grad_ratio, and the balanced regulariser gradient is at most the task's norm there."""
  overrides = {'pe.contrastive.weight': 0.0, 'pe.ood.weight': 0.0,
               'pe.regularizers.balance': 'grad_norm'}
  _, task, state, batch, step_key, pool = smoke('lm', **overrides)
  gradients = train.make_gradients(task, step_key, pool)
  _, parts = jax.jit(lambda p: gradients(p, batch, jnp.zeros((), jnp.int32), split=True))(
      state['params'])
  task_norm = float(optim.encoder_norm(parts['pe_task']))
  reg_norm = float(optim.encoder_norm(parts['pe_reg']))
  assert reg_norm > 0 and task_norm > 0
  balanced, scalars = train.balance_pe_gradients(parts)
  np.testing.assert_allclose(scalars['train/seqpe/grad_ratio'], task_norm / reg_norm, rtol=1e-5)
  scale = float(scalars['train/seqpe/balance_scale'])
  assert scale * reg_norm <= task_norm * (1 + 1e-5)
  expected = jax.tree.map(lambda t, r: t + scale * r, parts['pe_task'], parts['pe_reg'])
  jax.tree.map(np.testing.assert_allclose, balanced['pe'], expected)
