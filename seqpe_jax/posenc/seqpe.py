"""The SeqPE encoder (docs/method.md §3): a small pre-LN Transformer that reads a position's
digits followed by a learned CLS vector, last so that under the causal mask it alone sees
every digit; CLS -> LayerNorm -> Dense is the position's embedding e(p)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import positions, rng

LN_EPS = 1e-5
INIT = nn.initializers.normal(0.02)  # Every kernel and embedding, as the reference.


class EncoderBlock(nn.Module):
  """GPT-2 style pre-LN block: x += Drop(Wo Attn(LN x)); x += Drop(MLP(LN x)).

  With `last_only` only the last token (CLS) is computed, attending to every token: all the
  final layer needs, and about a third of the encoder's work saved, with the same parameters.
  """
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32  # Of activations and matmuls (layer norms reduce in float32).

  @nn.compact
  def __call__(self, x_BTd, mask_BHTT, *, deterministic: bool, last_only: bool = False):
    batch, tokens, d = x_BTd.shape
    head_dim = d // self.num_heads
    dense = functools.partial(nn.Dense, kernel_init=INIT, dtype=self.dtype)
    layer_norm = functools.partial(nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype)
    qkv_kernel = self.param('qkv_kernel', INIT, (d, 3 * d)).astype(self.dtype)
    qkv_bias = self.param('qkv_bias', nn.initializers.zeros, (3 * d,)).astype(self.dtype)
    h = layer_norm(name='ln_attn')(x_BTd)
    queries = slice(tokens - 1, tokens) if last_only else slice(None)
    q = h[:, queries] @ qkv_kernel[:, :d] + qkv_bias[:d]
    kv = h @ qkv_kernel[:, d:] + qkv_bias[d:]
    heads = lambda t: t.reshape(batch, -1, self.num_heads, head_dim)
    attn = jax.nn.dot_product_attention(heads(q), heads(kv[..., :d]), heads(kv[..., d:]),
                                        mask=mask_BHTT[..., queries, :], scale=head_dim**-0.5)
    attn = dense(d, name='attn_out')(attn.reshape(batch, -1, d))
    x_BTd = x_BTd[:, queries] + rng.Dropout(self.dropout)(attn, deterministic=deterministic)
    h = layer_norm(name='ln_mlp')(x_BTd)
    h = nn.gelu(dense(4 * d, name='mlp_in')(h), approximate=True)  # GPT-2 "gelu_new".
    h = dense(d, name='mlp_out')(h)
    return x_BTd + rng.Dropout(self.dropout)(h, deterministic=deterministic)


class SeqPEEncoder(nn.Module):
  """Digits int[..., ndim * num_digits] -> embeddings float[..., d_out].

  Attributes (the rest as in `config.pe.seqpe`):
    ndim, num_digits: position axes n and digits per axis k.
    base: numeral base; the digit table has `base` rows and digit 0 doubles as padding.
    dtype: of activations and matmuls (the host's); parameters and the returned embeddings
      stay float32, for the losses and the features' cache.
  """
  ndim: int
  num_digits: int
  d_out: int
  base: int = 10
  d_model: int = 384
  num_heads: int = 6
  num_layers: int = 2
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'SeqPE width {self.d_model} is not divisible by its {self.num_heads} '
                       'heads.')
    self.digit_embed = self.param('digit_embed', INIT, (self.base, self.d_model))
    # Slot ids 0 .. n*k-1 over all axes, as the reference code (the paper's figure: per axis).
    self.slot_embed = self.param('slot_embed', INIT, (self.ndim * self.num_digits, self.d_model))
    if self.ndim > 1:  # The reference has no axis table for 1D positions.
      self.axis_embed = self.param('axis_embed', INIT, (self.ndim, self.d_model))
    self.cls = self.param('cls', INIT, (self.d_model,))
    self.blocks = [EncoderBlock(self.num_heads, self.dropout, self.dtype, name=f'block_{i}')
                   for i in range(self.num_layers)]
    self.ln_final = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)
    self.out_proj = nn.Dense(self.d_out, kernel_init=INIT, dtype=self.dtype)

  def __call__(self, digits: jax.Array, *, deterministic: bool = True) -> jax.Array:
    seq_len = self.ndim * self.num_digits
    if digits.shape[-1] != seq_len:
      raise ValueError(f'SeqPE expects {seq_len} digits per position ({self.ndim} axes x '
                       f'{self.num_digits} digits), got {digits.shape[-1]}.')
    x_BTd = self.embed_digits(digits.reshape(-1, seq_len)).astype(self.dtype)
    mask_BHTT = jnp.tril(jnp.ones((seq_len + 1, seq_len + 1), bool))[None, None]  # True = attend.
    for i, block in enumerate(self.blocks):
      # Only CLS is read out, so the last block computes CLS alone.
      x_BTd = block(x_BTd, mask_BHTT, deterministic=deterministic,
                    last_only=i == self.num_layers - 1)
    e = self.out_proj(self.ln_final(x_BTd[:, -1])).astype(jnp.float32)
    return e.reshape(*digits.shape[:-1], self.d_out)

  def embed_digits(self, digits_BS: jax.Array) -> jax.Array:
    """Digit + slot (+ axis) embeddings, CLS appended last: [B, n*k + 1, d]."""
    k = self.num_digits
    x = self.digit_embed[digits_BS] + self.slot_embed[np.arange(self.ndim * k)]
    if self.ndim > 1:
      x = x + self.axis_embed[np.arange(self.ndim * k) // k]  # Axis id broadcast over its digits.
    cls = jnp.broadcast_to(self.cls, (x.shape[0], 1, self.d_model))
    return jnp.concatenate([x, cls], axis=1)


def encode_positions(encoder: SeqPEEncoder, params, pos: jax.Array) -> jax.Array:
  """Digitises int[..., ndim] coordinates and encodes them in evaluation mode: float[..., d_out]."""
  digits = positions.digitize(pos, base=encoder.base, width=encoder.num_digits)
  return encoder.apply({'params': params}, digits)
