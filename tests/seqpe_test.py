"""The SeqPE encoder: shapes for any N-D, causality, padding mask, sizes, caching."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import positions, posenc
from seqpe_jax.posenc import seqpe


def small_encoder(ndim=1, num_digits=3, **kw):
  return seqpe.SeqPEEncoder(ndim=ndim, num_digits=num_digits, d_out=kw.pop('d_out', 16),
                            d_model=32, num_heads=2, **kw)


def init(encoder, seed=0):
  digits = jnp.zeros((1, encoder.ndim * encoder.num_digits), jnp.int32)
  return jax.jit(encoder.init)(jax.random.key(seed), digits)['params']


def apply(encoder, params, digits, **kw):
  return jax.jit(functools.partial(encoder.apply, **kw))({'params': params}, digits)


@pytest.mark.parametrize('shape', [(20,), (5, 6), (2, 3, 4)])
def test_runs_on_1d_2d_3d_grids(shape):
  enc = small_encoder(ndim=len(shape), num_digits=2)
  e = jax.jit(functools.partial(seqpe.encode_positions, enc))(init(enc), positions.grid(shape))
  chex.assert_shape(e, (np.prod(shape), 16))
  chex.assert_tree_all_finite(e)
  # Distinct positions get distinct embeddings.
  assert np.unique(np.round(np.asarray(e), 5), axis=0).shape[0] == np.prod(shape)


def test_outputs_finite_up_to_the_largest_representable_position():
  enc = small_encoder(num_digits=5, base=10)
  e = apply(enc, init(enc), positions.digitize(jnp.asarray([[0], [19_999], [99_999]]), width=5))
  chex.assert_tree_all_finite(e)


def _hidden_states(enc, params, digits):
  _, state = apply(enc, params, digits, capture_intermediates=True, mutable=['intermediates'])
  inter = state['intermediates']
  return [inter[f'block_{i}']['__call__'][0] for i in range(enc.num_layers - 1)]


def test_causal_encoder_changing_a_digit_changes_nothing_before_it():
  enc = small_encoder(num_digits=5, num_layers=3)  # The last layer computes CLS alone.
  params = init(enc, seed=1)
  base = positions.digitize(jnp.asarray([[12_345]]), width=5)
  for t in range(5):
    changed = base.at[0, t].set((base[0, t] + 4) % 10)
    for h_base, h_changed in zip(_hidden_states(enc, params, base),
                                 _hidden_states(enc, params, changed)):
      np.testing.assert_array_equal(h_base[:, :t], h_changed[:, :t])
      assert np.abs(h_base[:, t:] - h_changed[:, t:]).max() > 1e-4  # From t on, it matters.


def test_slot_and_axis_embeddings():
  global_ids = init(small_encoder(ndim=2, num_digits=2))
  one_d = init(small_encoder(ndim=1, num_digits=2))
  chex.assert_shape(global_ids['slot_embed'], (4, 32))  # Slot ids run over both axes.
  chex.assert_shape(global_ids['axis_embed'], (2, 32))
  assert 'axis_embed' not in one_d  # The reference has no axis table in 1D.
  chex.assert_shape(global_ids['digit_embed'], (10, 32))


def test_dropout_only_when_not_deterministic():
  enc = small_encoder(num_digits=2, dropout=0.5)
  params = init(enc)
  digits = positions.digitize(jnp.asarray([[7], [42]]), width=2)
  rngs = {'dropout': jax.random.key(3)}
  eval_out = apply(enc, params, digits, deterministic=True, rngs=rngs)
  np.testing.assert_array_equal(eval_out, apply(enc, params, digits))
  train_out = apply(enc, params, digits, deterministic=False, rngs=rngs)
  assert np.abs(train_out - eval_out).max() > 1e-4


@pytest.mark.parametrize('ndim, k, d, d_out, millions', [(1, 5, 768, 768, 14.78),
                                                         (2, 2, 384, 384, 3.70)])
def test_paper_encoder_sizes(ndim, k, d, d_out, millions):
  enc = seqpe.SeqPEEncoder(ndim=ndim, num_digits=k, d_out=d_out, d_model=d, num_heads=d // 64)
  shapes = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, ndim * k), jnp.int32))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) / 1e6
  assert abs(count - millions) < 0.01


def test_wrong_digit_count_is_an_error():
  enc = small_encoder(ndim=2, num_digits=2)
  with pytest.raises(ValueError, match='SeqPE expects 4 digits per position'):
    enc.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def test_new_positions_of_the_same_shape_do_not_retrace():
  enc = small_encoder(num_digits=4)
  params = init(enc)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def encode(params, pos):
    return seqpe.encode_positions(enc, params, pos)

  chex.clear_trace_counter()
  a = encode(params, jnp.arange(8)[:, None])
  b = encode(params, jnp.arange(100, 108)[:, None])
  assert np.abs(a - b).max() > 1e-4


def test_table_cache_encodes_each_shape_once():
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads = 32, 2
  pe = posenc.build(cfg, posenc.HostSpec(d_model=16, num_heads=2, train_shape=(4, 4)))
  params = pe.init(jax.random.key(0), (4, 4))
  cache = posenc.TableCache(pe, params)
  table = cache((6, 6))
  assert cache((6, 6)) is table
  direct = apply(pe.seqpe_encoder, params['encoder'],
                 positions.digitize(positions.grid((6, 6)), width=2))
  np.testing.assert_allclose(table['e'][0], direct, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='Position 100 does not fit 2 base-10 digits'):
    cache((101, 4))


def test_long_1d_tables_are_encoded_in_chunks_with_the_same_values():
  cfg = posenc.config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 999
  pe = posenc.build(cfg, posenc.HostSpec(d_model=16, num_heads=2, train_shape=(16,)))
  params = pe.init(jax.random.key(0), (16,))
  whole = posenc.TableCache(pe, params, chunk=4096)((150,))
  chunked = posenc.TableCache(pe, params, chunk=64)((150,))  # 3 chunks, the last one partial.
  chex.assert_shape(chunked['e'], (1, 150, 16))
  np.testing.assert_allclose(chunked['e'], whole['e'], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='Position 1000 does not fit 3 base-10 digits'):
    posenc.TableCache(pe, params, chunk=64)((1001,))


def numpy_encoder(params, digits, *, ndim, k, heads):
  """The method doc's encoder written out in NumPy: every token computed in every layer."""
  def layer_norm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']

  def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  p = jax.tree.map(np.asarray, params)
  x = p['digit_embed'][digits] + p['slot_embed'][np.arange(ndim * k)]
  if ndim > 1:
    x = x + p['axis_embed'][np.arange(ndim * k) // k]
  x = np.concatenate([x, np.broadcast_to(p['cls'], (x.shape[0], 1, x.shape[-1]))], axis=1)
  batch, tokens, d = x.shape
  hd = d // heads
  for i in range(len([n for n in p if n.startswith('block_')])):
    b = p[f'block_{i}']
    qkv = layer_norm(x, b['ln_attn']) @ b['qkv_kernel'] + b['qkv_bias']
    q, kk, v = (qkv[..., j * d:(j + 1) * d].reshape(batch, tokens, heads, hd) for j in range(3))
    logits = np.einsum('bqhd,bkhd->bhqk', q, kk) / np.sqrt(hd)
    logits = np.where(np.tril(np.ones((tokens, tokens), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, tokens, d)
    x = x + attn @ b['attn_out']['kernel'] + b['attn_out']['bias']
    h = gelu_tanh(layer_norm(x, b['ln_mlp']) @ b['mlp_in']['kernel'] + b['mlp_in']['bias'])
    x = x + h @ b['mlp_out']['kernel'] + b['mlp_out']['bias']
  cls = layer_norm(x[:, -1], p['ln_final'])
  return cls @ p['out_proj']['kernel'] + p['out_proj']['bias']


@pytest.mark.parametrize('ndim', [1, 2])
def test_encoder_equals_a_direct_numpy_computation(ndim):
  enc = small_encoder(ndim=ndim, num_digits=2, num_layers=3)
  params = init(enc, seed=4)
  # Larger weights than the 0.02 init so that every term visibly matters.
  params = jax.tree.map(lambda x: x * 20 if x.ndim == 2 else x, params)
  pos = np.random.default_rng(0).integers(0, 100, size=(9, ndim))
  digits = positions.digitize(jnp.asarray(pos), width=2)
  expected = numpy_encoder(params, np.asarray(digits), ndim=ndim, k=2, heads=2)
  np.testing.assert_allclose(apply(enc, params, digits), expected, rtol=2e-4, atol=2e-4)
