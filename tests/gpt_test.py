"""GPT decoder: causality, KV-cache decoding = full forward, blockwise = dense attention."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import posenc
from seqpe_jax.models import attention, gpt, transformer
from seqpe_jax.posenc import config as pe_config
from tests import qk_projection

VOCAB = 37
# (PE name, injection) pairs: SeqPE's LM default and its other injections, every baseline.
PES = [('seqpe', 'attn_scalar'), ('seqpe', 'attn_mul'), ('seqpe', 'input_add'), ('ape', ''),
       ('sincos', ''), ('rope', ''), ('alibi', ''), ('none', '')]


def build(name, method='', *, train_len=16, bias_oracle=False, impl='xla', block=512):
  cfg = pe_config.get_config()
  cfg.name, cfg.inject.method, cfg.inject.qk_proj = name, method, 'shared'
  cfg.seqpe.max_position, cfg.seqpe.d_model, cfg.seqpe.num_heads = 1000, 32, 2
  pe = posenc.build(cfg, gpt.host_spec('nano', train_len))
  if bias_oracle:
    pe = qk_projection.with_bias_oracle(pe)
  model = gpt.GPT(VOCAB, pe=pe, attention=transformer.AttentionOptions(impl, block),
                  **gpt.parse_variant('nano'))
  return pe, model


def init(pe, model, length, seed=0):
  """PE and model parameters with weights scaled up, so positions change the logits a lot."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  scale_up = lambda tree: jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, tree)
  pe_params = scale_up(pe.init(k1, pe.host.train_shape))
  table = jax.jit(lambda p: pe.features(p, (length,)))(pe_params)
  tokens = jnp.zeros((1, length), jnp.int32)
  params = scale_up(model.init(k2, tokens, table)['params'])
  return params, table


@pytest.mark.parametrize('name,method', PES)
def test_loss_at_t_has_zero_gradient_from_later_inputs(name, method):
  length, t = 24, 9
  pe, model = build(name, method, impl='blockwise', block=8)
  params, table = init(pe, model, length)
  tokens = jax.random.randint(jax.random.key(1), (2, length), 0, VOCAB)
  perturbations = model.init(jax.random.key(0), tokens, table)['perturbations']

  def loss_at_t(perturbations):
    logits = model.apply({'params': params, 'perturbations': perturbations}, tokens, table)
    return jax.nn.log_softmax(logits[:, t])[:, 0].sum()

  grads = jax.grad(loss_at_t)(perturbations)['embeddings']
  assert np.all(np.asarray(grads[:, t + 1:]) == 0.0)  # Exactly zero, not just small.
  assert np.abs(np.asarray(grads[:, :t + 1])).min(axis=-1).max() > 0  # The past does matter.


@pytest.mark.parametrize('name,method', PES)
def test_cached_greedy_decoding_equals_the_full_forward(name, method):
  prompt_len, new = 5, 7
  pe, model = build(name, method)
  params, table = init(pe, model, prompt_len + new - 1)
  prompt = jax.random.randint(jax.random.key(1), (2, prompt_len), 0, VOCAB)
  tokens, logits = gpt.generate(model, params, table, prompt, new)
  chex.assert_shape(tokens, (2, new))
  chex.assert_shape(logits, (2, new, VOCAB))
  forward = jax.jit(lambda tokens, table: model.apply({'params': params}, tokens, table))
  sequence = prompt
  for step in range(new):  # Re-run the whole prefix at every step, no cache.
    n = sequence.shape[1]
    full = forward(sequence, gpt.slice_features(table, 0, n))[:, -1]
    np.testing.assert_allclose(logits[:, step], full, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(tokens[:, step], jnp.argmax(full, -1))
    sequence = jnp.concatenate([sequence, tokens[:, step:step + 1]], axis=1)
  if name != 'none':  # The check has teeth: the same tokens in reversed positions differ.
    reversed_table = jax.tree.map(lambda x: x[:, ::-1], gpt.slice_features(table, 0, n))
    moved = forward(sequence[:, :n], reversed_table)[:, -1]
    assert np.abs(np.asarray(moved - full)).max() > 1e-2


def test_attn_scalar_concat_with_cache_equals_the_dense_bias_oracle():
  prompt_len, new = 4, 6
  pe, model = build('seqpe', 'attn_scalar')
  _, oracle = build('seqpe', 'attn_scalar', bias_oracle=True)
  params, table = init(pe, model, prompt_len + new - 1)
  prompt = jax.random.randint(jax.random.key(2), (1, prompt_len), 0, VOCAB)
  tokens, logits = gpt.generate(model, params, table, prompt, new)
  sequence = jnp.concatenate([prompt, tokens[:, :-1]], axis=1)
  dense = oracle.apply({'params': params}, sequence, table)
  np.testing.assert_allclose(logits[0], dense[0, prompt_len - 1:], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match='which a KV cache cannot hold'):
    gpt.generate(oracle, params, table, prompt, new)


def test_generate_checks_the_table_covers_the_positions():
  pe, model = build('seqpe', 'attn_scalar')
  params, table = init(pe, model, 6)
  with pytest.raises(ValueError, match='covers 6 positions; a prompt of 4 plus 4 new'):
    gpt.generate(model, params, table, jnp.zeros((1, 4), jnp.int32), 4)


@pytest.mark.parametrize('key_width,bias_kind', [(8, None), (16, None), (8, 'alibi'),
                                                 (16, 'full')])
@pytest.mark.parametrize('causal', [True, False])
def test_blockwise_attention_equals_dense(key_width, bias_kind, causal):
  # key_width 16 with values of 8: attn_scalar's [q; s p_q].[k; p_k] channels.
  batch, length, heads = 2, 70, 3
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, key_width))
  k = jax.random.normal(keys[1], (batch, length, heads, key_width))
  v = jax.random.normal(keys[2], (batch, length, heads, 8))
  bias = {None: None,
          'alibi': 0.3 * jnp.arange(length, dtype=jnp.float32)[None, None, None, :]
                   * jnp.asarray([0.5, 0.25, 0.125])[None, :, None, None],
          'full': jax.random.normal(keys[3], (1, heads, length, length))}[bias_kind]
  kwargs = dict(scale=8**-0.5, bias=bias, causal=causal)
  dense = attention.dot_product_attention(q, k, v, implementation='xla', **kwargs)
  blocks = attention.blockwise_attention(q, k, v, block_q=16, block_k=24, **kwargs)
  np.testing.assert_allclose(blocks, dense, atol=2e-6, rtol=2e-5)
  grad_dense = jax.grad(lambda q: attention.dot_product_attention(
      q, k, v, implementation='xla', **kwargs).sum())(q)
  grad_blocks = jax.grad(lambda q: attention.blockwise_attention(
      q, k, v, block_q=16, block_k=24, **kwargs).sum())(q)
  np.testing.assert_allclose(grad_blocks, grad_dense, atol=2e-5, rtol=2e-5)


def test_blockwise_dropout_is_inverted_dropout_of_the_probabilities():
  q = k = jnp.zeros((1, 64, 1, 4))  # Uniform attention: each probability is 1/64 (causal off).
  v = jnp.ones((1, 64, 1, 4))
  out = attention.blockwise_attention(q, k, v, scale=1.0, block_q=16, block_k=16,
                                      dropout_rate=0.5, dropout_rng=jax.random.key(0))
  kept = np.asarray(out[0, :, 0, 0]) * 64 / 2  # Kept keys per query.
  np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)
  assert 20 < kept.mean() < 44 and kept.std() > 0


def test_the_attention_layer_drops_probabilities_in_training_only():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  layer = lambda rate: attention.MultiHeadAttention(2, causal=True, dropout=rate)
  params = layer(0.5).init(jax.random.key(1), x, {})
  kept = layer(0.5).apply(params, x, {})
  train = lambda: layer(0.5).apply(params, x, {}, deterministic=False,
                                   rngs={'dropout': jax.random.key(2)})
  dropped = train()
  assert not np.allclose(dropped, kept, atol=1e-4)
  np.testing.assert_array_equal(dropped, train())  # The same key drops the same.
  # At rate 0 training needs no dropout key and computes what evaluation does.
  np.testing.assert_allclose(layer(0.0).apply(params, x, {}, deterministic=False), kept,
                             rtol=1e-6)


@pytest.mark.parametrize('name,method', [('seqpe', 'attn_scalar'), ('alibi', ''), ('rope', '')])
def test_gpt_blockwise_path_equals_dense_path(name, method):
  pe, dense_model = build(name, method, impl='xla')
  _, block_model = build(name, method, impl='blockwise', block=8)
  params, table = init(pe, dense_model, 40)
  tokens = jax.random.randint(jax.random.key(3), (2, 40), 0, VOCAB)
  np.testing.assert_allclose(block_model.apply({'params': params}, tokens, table),
                             dense_model.apply({'params': params}, tokens, table),
                             atol=1e-4, rtol=1e-5)


def test_auto_attention_leaves_the_dense_kernel_beyond_the_block_size():
  short, long = jnp.zeros((1, 512, 2, 8)), jnp.zeros((1, 513, 2, 8))
  assert attention._auto(short, 512) == 'xla'  # pylint: disable=protected-access
  expected = 'blockwise' if jax.default_backend() == 'cpu' else attention._auto(long, 512)
  assert attention._auto(long, 512) == expected  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.attend(short, short, short, scale=1.0, implementation='flash')
