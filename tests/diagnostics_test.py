"""diag/*: a dead PE reads 0, a used one does not, and each value against its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm_base
from seqpe_jax import diagnostics, optim, posenc, sharding, tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.models import attention
from seqpe_jax.posenc import baselines, inject
from tests import qk_projection

pytestmark = pytest.mark.xdist_group('diagnostics')


def test_ablation_copies_the_first_grid_position_and_keeps_the_prefix():
  e = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)  # [W, P+N, d], P = 1.
  out = diagnostics.ablate_positions({'e': e, 'key_pos': e[..., 0]}, num_prefix=1)
  np.testing.assert_array_equal(out['e'][:, 0], e[:, 0])  # CLS untouched.
  np.testing.assert_array_equal(out['e'][:, 1:], jnp.broadcast_to(e[:, 1:2], (2, 4, 3)))
  np.testing.assert_array_equal(out['key_pos'][:, 1:], jnp.broadcast_to(e[:, 1:2, 0], (2, 4)))


def test_embedding_spread_closed_forms():
  same = jnp.tile(jnp.asarray([[3.0, 4.0]]), (6, 1))
  assert float(diagnostics.embedding_spread(same)) == 0.0
  opposite = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])  # Mean 0: every vector is its deviation.
  np.testing.assert_allclose(diagnostics.embedding_spread(opposite), 1.0)


def test_alibi_position_logit_spread_equals_its_formula():
  length, heads, head_dim = 6, 4, 8
  hook = inject.KeyPositionBias(pre_scale=True)
  state = {'key_pos': jnp.arange(length, dtype=jnp.float32)[None]}
  logits = hook.apply({}, state, length, heads, head_dim, causal=True, dtype=jnp.float32,
                      method=lambda h, *a, **k: attention.position_logits(h, *a, **k))
  got = attention.position_logit_spread(logits)
  slopes = np.asarray(baselines.alibi_slopes(heads)) * head_dim**-0.5
  per_query = [np.std(np.arange(i + 1)) for i in range(length)]  # Keys 0..i are visible.
  np.testing.assert_allclose(got, np.mean(slopes[:, None] * np.asarray(per_query)[None]),
                             rtol=1e-5)


def lm_diagnostics(pe, qk_scale=1.0, **overrides):
  config = lm_base.get_config('smoke', pe=pe)
  config.mesh.data = 1
  config.update_from_flattened_dict(overrides)
  task = tasks.build(config)
  optimizer = state_lib.make_optimizer(task, config)
  state = state_lib.init_state(task, optimizer, jax.random.key(0))
  _, step_key, pool_key = jax.random.split(jax.random.key(0), 3)
  gradients = train.make_gradients(task, step_key, task.shift_pool(pool_key))
  diagnose = jax.jit(diagnostics.make_diagnostics(task, gradients))
  batch = jax.tree.map(jnp.asarray, task.train_batches(0)[0])
  heldout = task.heldout_batch(sharding.make_mesh(config.mesh))
  params = qk_projection.scale_kernels(state['params'], qk_scale)
  return jax.device_get(diagnose(params, batch, jnp.zeros((), jnp.int32), heldout))


def test_no_pe_reads_zero_and_rope_does_not():
  none = lm_diagnostics('none')
  assert none['diag/pe_ablation_delta'] == 0.0
  assert none['diag/pos_term_std'] < 1e-5  # Constant logits, up to float32 rounding.
  assert 'diag/grad_ratio' not in none and 'diag/pe_spread' not in none
  rope = lm_diagnostics('rope')
  assert rope['diag/pe_ablation_delta'] != 0.0 and rope['diag/pos_term_std'] > 0.01


def test_seqpe_diagnostics_at_initialisation():
  """A fresh SeqPE: every diag present, the regularisers' gradient far above the task's
  (the imbalance of issue 9), and a larger projection init gives a larger position term."""
  ref = lm_diagnostics('seqpe')
  assert set(ref) == {'diag/pe_ablation_delta', 'diag/pos_term_std', 'diag/pe_spread',
                      'diag/grad_ratio'}
  assert 0 < ref['diag/grad_ratio'] < 0.1
  assert 0 < ref['diag/pe_spread'] < 1
  big = lm_diagnostics('seqpe', qk_scale=10.0)  # p_q.p_k grows 100 times.
  np.testing.assert_allclose(big['diag/pos_term_std'] / ref['diag/pos_term_std'], 100, rtol=0.05)


def test_grad_ratio_is_infinite_while_the_regularisers_weigh_nothing():
  """With every regulariser weight 0 the regulariser gradient is exactly 0."""
  task = {'encoder': {'w': jnp.full((3,), 4.0)}}
  np.testing.assert_allclose(optim.encoder_grad_ratio(task, {'encoder': {'w': jnp.ones(3)}}), 4.0)
  assert optim.encoder_grad_ratio(task, {'encoder': {'w': jnp.zeros(3)}}) == np.inf


def test_attn_mul_projection_bias_starts_at_one():
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads = 32, 2
  cfg.inject.proj_bias_init = 1.0
  host = posenc.HostSpec(16, 2, (3, 3), num_prefix=1)
  pe = posenc.build(cfg, host)
  hook = pe.layer_hook()
  e = jnp.zeros((1, 10, 16))
  params = hook.init(jax.random.key(0), jnp.ones((1, 10, 2, 8)), jnp.ones((1, 10, 2, 8)), {'e': e})
  np.testing.assert_array_equal(params['params']['qk_proj']['bias'], 1.0)
  q, k, _ = hook.apply(params, jnp.full((1, 10, 2, 8), 3.0), jnp.full((1, 10, 2, 8), 2.0), {'e': e})
  np.testing.assert_array_equal(q, 3.0)  # e = 0: p = 1 leaves q and k as they were.
  np.testing.assert_array_equal(k, 2.0)
