"""Injection through attention: each method against a direct NumPy computation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import posenc
from seqpe_jax.models import attention, transformer
from tests import qk_projection

HEADS, HEAD_DIM = 2, 8
D = HEADS * HEAD_DIM


def numpy_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def test_wider_keys_keep_the_explicit_scale():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 2, 5, 3, 8)).astype(np.float32)
  v = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
  out = attention.dot_product_attention(q, k, v, scale=0.5, causal=True)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) * 0.5
  logits = np.where(np.tril(np.ones((5, 5), bool)), logits, -np.inf)
  expected = np.einsum('bhqk,bkhd->bqhd', numpy_softmax(logits), v)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def seqpe_pe(method, qk_proj='per_layer', multi_head=True, shape=(6,)):
  cfg = posenc.config.get_config()
  cfg.inject.method, cfg.inject.qk_proj, cfg.inject.multi_head = method, qk_proj, multi_head
  cfg.seqpe.d_model, cfg.seqpe.num_heads = 32, 2
  return posenc.build(cfg, posenc.HostSpec(D, HEADS, shape, causal=True))


def attention_layer(pe, x, features):
  layer = attention.MultiHeadAttention(HEADS, pe_hook=pe.layer_hook, causal=True)
  params = jax.jit(layer.init)(jax.random.key(1), x, features)['params']
  return jax.jit(layer.apply)({'params': params}, x, features), params


def numpy_attention(params, x, pe_q, pe_k, method):
  """Causal MHA with the method doc's definition of each injection method."""
  qkv = np.einsum('bld,dthk->btlhk', x, params['qkv']['kernel']) + params['qkv']['bias'][:, None]
  q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
  logits = np.einsum('bqhd,bkhd->bhqk', q, k)
  if method == 'attn_mul':
    logits = np.einsum('bqhd,bkhd->bhqk', q * pe_q, k * pe_k)
  elif method == 'attn_add':
    logits = np.einsum('bqhd,bkhd->bhqk', q + pe_q, k + pe_k)
  elif method == 'attn_scalar':  # Position term added before the 1/sqrt(d_h) scale.
    logits = logits + np.einsum('bqhd,bkhd->bhqk', pe_q, pe_k)
  length = x.shape[1]
  logits = np.where(np.tril(np.ones((length, length), bool)), logits / np.sqrt(HEAD_DIM), -np.inf)
  out = np.einsum('bhqk,bkhd->bqhd', numpy_softmax(logits), v)
  return np.einsum('bqhd,hdo->bqo', out, params['out']['kernel']) + params['out']['bias']


@pytest.mark.parametrize('method', ['attn_mul', 'attn_add', 'attn_scalar'])
def test_per_layer_injection_matches_its_definition(method):
  pe = seqpe_pe(method)
  features = pe.features(pe.init(jax.random.key(0), (6,)), (6,))
  x = jax.random.normal(jax.random.key(2), (3, 6, D))
  out, params = attention_layer(pe, x, features)
  e = np.asarray(features['e'])  # [1, 6, D]
  proj = e @ params['pe']['qk_proj']['kernel'] + params['pe']['qk_proj']['bias']
  pe_q = proj[..., :D].reshape(1, 6, HEADS, HEAD_DIM)
  pe_k = proj[..., D:].reshape(1, 6, HEADS, HEAD_DIM)
  expected = numpy_attention(params, np.asarray(x), pe_q, pe_k, method)
  np.testing.assert_allclose(out, expected, atol=2e-5)


def _run_stack(pe, x, features, params=None):
  model = transformer.Transformer(2, HEADS, 2 * D, pe, causal=True)
  if params is None:
    params = jax.jit(model.init)(jax.random.key(3), x, features)
  return jax.jit(model.apply)(params, x, features), params


@pytest.mark.parametrize('qk_proj, multi_head', [('shared', True), ('per_layer', True),
                                                 ('none', True), ('shared', False)])
def test_attn_scalar_concat_equals_the_explicit_bias(qk_proj, multi_head):
  concat = seqpe_pe('attn_scalar', qk_proj, multi_head)
  bias = qk_projection.with_bias_oracle(concat)
  pe_params = concat.init(jax.random.key(0), (6,))
  offsets = jnp.asarray([[0], [11]])  # Two windows: examples alternate between them.
  # Scaled up so that the position term is not negligible next to q.k at initialisation.
  features = jax.tree.map(lambda e: 30 * e, concat.features(pe_params, (6,), offsets))
  x = jax.random.normal(jax.random.key(2), (4, 6, D))
  out_concat, params = _run_stack(concat, x, features)
  out_bias, _ = _run_stack(bias, x, features, params)
  np.testing.assert_allclose(out_concat, out_bias, atol=1e-5)
  # The windows matter: examples 0 and 1 see different positions.
  same_x = jnp.broadcast_to(x[:1], x.shape)
  out_same, _ = _run_stack(concat, same_x, features, params)
  assert np.abs(out_same[0] - out_same[1]).max() > 1e-5
  np.testing.assert_allclose(out_same[0], out_same[2], atol=1e-6)


def test_input_add_adds_the_table_to_tokens():
  cfg = posenc.config.get_config()
  cfg.name = 'sincos'
  pe = posenc.build(cfg, posenc.HostSpec(D, HEADS, (5,)))
  features = pe.features({}, (5,))
  hook = pe.model_hook()
  x = jnp.ones((2, 5, D))
  out = hook.apply({}, x, hook.apply({}, features), method='embed')
  np.testing.assert_allclose(out, x + features['e'], atol=1e-7)


def test_shared_projection_lives_in_the_model_and_per_layer_in_each_block():
  x = jnp.ones((2, 6, D))
  for qk_proj, at_top, in_block in (('shared', True, False), ('per_layer', False, True)):
    pe = seqpe_pe('attn_scalar', qk_proj)
    features = pe.features(pe.init(jax.random.key(0), (6,)), (6,))
    params = _run_stack(pe, x, features)[1]['params']
    assert ('pe_inject' in params) == at_top
    assert ('pe' in params['block_0']['attn']) == in_block
    chex.assert_tree_all_finite(params)


def test_concat_form_traces_once_for_new_positions():
  pe = seqpe_pe('attn_scalar', 'shared')
  pe_params = pe.init(jax.random.key(0), (6,))
  model = transformer.Transformer(1, HEADS, 2 * D, pe, causal=True)
  x = jnp.ones((2, 6, D))
  params = jax.jit(model.init)(jax.random.key(3), x, pe.features(pe_params, (6,)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(params, pe_params, offsets):
    return model.apply(params, x, pe.features(pe_params, (6,), offsets))

  chex.clear_trace_counter()
  forward(params, pe_params, jnp.asarray([[0]]))
  forward(params, pe_params, jnp.asarray([[40]]))


@pytest.mark.parametrize('alike', [1.0, 0.0])
def test_projection_of_alike_windows_equals_projecting_every_copy(alike):
  """SeqPE's unshifted steps mark their W identical windows alike; the q/k projection then
  runs on one window, forward and backward, and must give what projecting each copy gives
  (values and gradients with respect to the parameters and the shared window)."""
  windows = 4
  proj = posenc.inject.QKProjection(D)
  e1 = jax.random.normal(jax.random.key(4), (1, 6, D))
  params = proj.init(jax.random.key(5), {'e': e1})
  weights = jax.random.normal(jax.random.key(6), (windows, 6, 2 * D))
  # Unmarked (a shifted step), the windows differ, so taking the one-window path would show.
  spread = 0.0 if alike else jax.random.normal(jax.random.key(7), (windows, 6, D))

  def loss(params, e1, marked):
    e = jnp.broadcast_to(e1, (windows,) + e1.shape[1:]) + spread
    features = {'e': e, posenc.inject.WINDOWS_ALIKE: jnp.float32(alike)} if marked else {'e': e}
    return jnp.sum(jnp.sin(proj.apply(params, features)) * weights)

  for argnum in (0, 1):
    got = jax.jit(jax.grad(loss, argnum), static_argnums=2)(params, e1, True)
    want = jax.grad(loss, argnum)(params, e1, False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  np.testing.assert_allclose(loss(params, e1, True), loss(params, e1, False), rtol=1e-6)



def test_attn_mul_multiplies_queries_by_p_q_and_keys_by_p_k():
  """At initialisation |p| <= 0.04, so the logits barely see the positions; with a projection
  of unit scale and a bias away from zero the layer must still match its definition, and
  swapping p_q and p_k must change the output (the comparison can tell them apart)."""
  pe = seqpe_pe('attn_mul')
  features = pe.features(pe.init(jax.random.key(0), (6,)), (6,))
  x = jax.random.normal(jax.random.key(2), (3, 6, D))
  _, params = attention_layer(pe, x, features)
  rng = np.random.default_rng(7)
  # Unit-scale weights everywhere, the projection's bias away from zero (its q and k halves
  # differ), so that the position factors move the logits by O(1).
  params = jax.tree.map(lambda w: rng.normal(size=w.shape).astype(np.float32), params)
  params['pe']['qk_proj']['bias'] += 1
  layer = attention.MultiHeadAttention(HEADS, pe_hook=pe.layer_hook, causal=True)
  out = jax.jit(layer.apply)({'params': params}, x, features)
  e = np.asarray(features['e'])
  p = e @ params['pe']['qk_proj']['kernel'] + params['pe']['qk_proj']['bias']
  pe_q = p[..., :D].reshape(1, 6, HEADS, HEAD_DIM)
  pe_k = p[..., D:].reshape(1, 6, HEADS, HEAD_DIM)
  expected = numpy_attention(params, np.asarray(x), pe_q, pe_k, 'attn_mul')
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  swapped = numpy_attention(params, np.asarray(x), pe_k, pe_q, 'attn_mul')
  assert np.abs(swapped - expected).max() > 0.1


def test_rope_mixed_turns_by_col_f_x_plus_row_f_y_on_a_non_square_grid():
  """RoPE-Mixed on a 2 x 3 grid against complex multiplication: a swap of the axes (row with
  col, or f_x with f_y) moves a non-square grid's angles."""
  shape, heads, head_dim = (2, 3), 2, 8
  cfg = posenc.config.get_config()
  cfg.name = 'rope_mixed'
  pe = posenc.build(cfg, posenc.HostSpec(heads * head_dim, heads, shape))
  features = pe.features(pe.init(jax.random.key(0), shape), shape)
  rng = np.random.default_rng(3)
  q = rng.normal(size=(1, 6, heads, head_dim)).astype(np.float32)
  hook = pe.layer_hook()
  params = hook.init(jax.random.key(1), q, q, features)
  freqs = rng.uniform(0.2, 1.0, size=params['params']['freqs'].shape).astype(np.float32)
  rotated, _, _ = hook.apply({'params': {'freqs': freqs}}, q, q, features)
  row, col = np.divmod(np.arange(6), 3)  # Row-major patches of 2 rows x 3 columns.
  angles = col[:, None, None] * freqs[0] + row[:, None, None] * freqs[1]  # [L, H, d_h/2]
  z = (q[..., 0::2] + 1j * q[..., 1::2]) * np.exp(1j * angles)
  np.testing.assert_allclose(rotated[..., 0::2], z.real, atol=1e-5)
  np.testing.assert_allclose(rotated[..., 1::2], z.imag, atol=1e-5)
