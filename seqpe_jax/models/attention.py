"""Multi-head attention whose positional behaviour comes only from a PE layer hook.

`implementation` picks how the same attention is computed (docs/library.md): 'xla' / 'cudnn',
'blockwise' (O(L) memory on any backend, the only path with probability dropout) or 'auto'.
All take an explicit scale, values narrower than keys, a bias [B, H, 1, S] or [B, H, L, S],
and a causal `local_window` T (each query sees its last T keys, itself included; 0 = all).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import rng
from seqpe_jax.posenc import inject

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'blockwise')
# Logit of a masked key (left padding): finite, so a query whose every key is masked gets no
# NaN, and exp() of it relative to any real key is exactly 0 in float32.
MASKED_LOGIT = -1e9


def dot_product_attention(q_BLHK, k_BSHK, v_BSHD, *, scale: float, bias=None, mask=None,
                          causal: bool = False, implementation: str | None = None,
                          local_window: int = 0):
  """`jax.nn.dot_product_attention` that also takes keys wider than values (attn_scalar
  appends p_q / p_k channels, K = 2 d_h): v is zero-padded to K for the fused kernels, and
  `scale` is explicit because their default 1/sqrt(K) would be wrong."""
  value_dim = v_BSHD.shape[-1]
  if k_BSHK.shape[-1] != value_dim:
    v_BSHD = jnp.pad(v_BSHD, [(0, 0)] * (v_BSHD.ndim - 1) + [(0, k_BSHK.shape[-1] - value_dim)])
  _check_window(local_window, causal)
  window = (local_window - 1, 0) if local_window else None  # Keys i-T+1 .. i.
  out = jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHD, bias=bias, mask=mask, scale=scale,
                                     is_causal=causal, implementation=implementation,
                                     local_window_size=window)
  return out[..., :value_dim]


def blockwise_attention(q_BLHK, k_BSHK, v_BSHD, *, scale: float, bias=None, causal: bool = False,
                        block_q: int = 512, block_k: int = 512, dropout_rate: float = 0.0,
                        dropout_rng=None, local_window: int = 0):
  """Exact softmax attention in query x key blocks with an online softmax: O(block_q x S)
  memory, also in training (the query block is rematerialised in the backward pass). Causal
  masking aligns query i with key i (L == S) and skips key blocks no query of the block sees.
  Dropout drops normalised probabilities, as in dense attention."""
  _check_window(local_window, causal)
  batch, length, heads, _ = q_BLHK.shape
  keys, value_dim = k_BSHK.shape[1], v_BSHD.shape[-1]
  bq, bk = min(block_q, length), min(block_k, keys)
  nq, nk = -(-length // bq), -(-keys // bk)

  def blocks(x, n, b):  # [B, n*b, H, C] -> [n, B, H, b, C]
    x = jnp.pad(x, [(0, 0), (0, n * b - x.shape[1]), (0, 0), (0, 0)])
    return x.reshape(batch, n, b, heads, x.shape[-1]).transpose(1, 0, 3, 2, 4)

  q_blocks = blocks(q_BLHK, nq, bq)
  k_blocks, v_blocks = blocks(k_BSHK, nk, bk), blocks(v_BSHD, nk, bk)
  if bias is not None:
    rows = bias.shape[-2]
    bias = jnp.broadcast_to(bias, (batch, heads, rows, keys)).astype(jnp.float32)
    bias = jnp.pad(bias, [(0, 0), (0, 0), (0, nq * bq - rows if rows > 1 else 0),
                          (0, nk * bk - keys)])
  keep = 1.0 - dropout_rate
  use_dropout = dropout_rate > 0.0 and dropout_rng is not None

  @jax.checkpoint
  def query_block(i, q_BHqK):
    q_pos = i * bq + jnp.arange(bq)

    def key_block(carry, j):
      def update(carry):
        m, l, acc = carry
        k_pos = j * bk + jnp.arange(bk)
        s = jnp.einsum('bhqk,bhsk->bhqs', q_BHqK, k_blocks[j],
                       preferred_element_type=jnp.float32) * scale
        if bias is not None:
          row = i * bq if bias.shape[2] > 1 else 0
          s = s + jax.lax.dynamic_slice(bias, (0, 0, row, j * bk),
                                        (batch, heads, min(bq, bias.shape[2]), bk))
        valid = (k_pos < keys)[None, :]
        if causal:
          valid = valid & (k_pos[None, :] <= q_pos[:, None])
        if local_window:
          valid = valid & (k_pos[None, :] > q_pos[:, None] - local_window)
        s = jnp.where(valid, s, -jnp.inf)
        m_new = jax.lax.stop_gradient(jnp.maximum(m, s.max(-1)))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        correction = jnp.exp(m - m_safe)
        l = l * correction + p.sum(-1)
        if use_dropout:
          drop_key = jax.random.fold_in(jax.random.fold_in(dropout_rng, i), j)
          p = jnp.where(rng.bernoulli(drop_key, keep, p.shape), p / keep, 0.0)
        acc = acc * correction[..., None] + jnp.einsum(
            'bhqs,bhsd->bhqd', p.astype(v_blocks.dtype), v_blocks[j],
            preferred_element_type=jnp.float32)
        return m_new, l, acc

      if causal:  # Key block j starts after the last query of block i: nothing to add;
        # with a local window, nor when it ends before the first query's window starts.
        needed = j * bk <= i * bq + bq - 1
        if local_window:
          needed = needed & (j * bk + bk - 1 > i * bq - local_window)
        return jax.lax.cond(needed, update, lambda c: c, carry), None
      return update(carry), None

    init = (jnp.full((batch, heads, bq), -jnp.inf, jnp.float32),
            jnp.zeros((batch, heads, bq), jnp.float32),
            jnp.zeros((batch, heads, bq, value_dim), jnp.float32))
    (_, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
    return acc / jnp.where(l > 0, l, 1.0)[..., None]

  out = jax.lax.map(lambda args: query_block(*args), (jnp.arange(nq), q_blocks))
  out = out.transpose(1, 0, 3, 2, 4).reshape(batch, nq * bq, heads, value_dim)
  return out[:, :length].astype(q_BLHK.dtype)


def attend(q_BLHK, k_BSHK, v_BSHD, *, scale: float, bias=None, causal: bool = False,
           implementation: str = 'auto', block_size: int = 512, dropout_rate: float = 0.0,
           dropout_rng=None, local_window: int = 0):
  """Softmax attention by `implementation` (module docstring); dropout forces 'blockwise'."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation '{implementation}'; use one of "
                     f"{', '.join(IMPLEMENTATIONS)}.")
  if implementation == 'auto':
    implementation = _auto(q_BLHK, block_size)
  if dropout_rng is not None and dropout_rate > 0.0:
    implementation = 'blockwise'  # The fused kernels have no probability dropout.
  if implementation == 'blockwise':
    return blockwise_attention(q_BLHK, k_BSHK, v_BSHD, scale=scale, bias=bias, causal=causal,
                               block_q=block_size, block_k=block_size, dropout_rate=dropout_rate,
                               dropout_rng=dropout_rng, local_window=local_window)
  return dot_product_attention(q_BLHK, k_BSHK, v_BSHD, scale=scale, bias=bias, causal=causal,
                               implementation=implementation, local_window=local_window)


def _check_window(local_window: int, causal: bool) -> None:
  if local_window < 0 or (local_window and not causal):
    raise ValueError('A local attention window is a positive number of past keys on a causal '
                     f'model (0 = every key), got {local_window}.')


def _auto(q_BLHK, block_size: int) -> str:
  if q_BLHK.shape[1] <= block_size:
    return 'xla'
  if jax.default_backend() == 'gpu' and q_BLHK.dtype in (jnp.bfloat16, jnp.float16):
    return 'cudnn'
  return 'blockwise'


def window_position_logits(hook, pe_state, windows: int, length: int, heads: int,
                           head_dim: int, dtype) -> jax.Array:
  """The attention logits the PE alone gives this layer in each of `pe_state`'s windows,
  [W, H, L, L] in float32, unmasked: the hook applied to q = k = 1, scaled as attention does."""
  ones = jnp.ones((windows, length, heads, head_dim), dtype)
  q, k, bias = hook(ones, ones, pe_state)
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
  return logits * head_dim**-0.5 + (0.0 if bias is None else bias)


def position_logits(hook, pe_state, length: int, heads: int, head_dim: int, *,
                    causal: bool, dtype) -> jax.Array:
  """`window_position_logits` of the first window, [H, L, L], -inf where a key is unseen."""
  logits = window_position_logits(hook, pe_state, 1, length, heads, head_dim, dtype)
  visible = jnp.tri(length, dtype=bool) if causal else jnp.ones((length, length), bool)
  return jnp.where(visible, logits[0], -jnp.inf)


def position_logit_spread(logits_HLL: jax.Array) -> jax.Array:
  """How much the PE alone moves a layer's attention logits (`position_logits`): their
  standard deviation across the keys each query sees, averaged over queries and heads."""
  visible = logits_HLL > -jnp.inf
  count = visible.sum(-1)
  mean = jnp.where(visible, logits_HLL, 0).sum(-1) / count
  var = jnp.where(visible, jnp.square(logits_HLL - mean[..., None]), 0).sum(-1) / count
  return jnp.mean(jnp.sqrt(var))


# Collections the layers write to when they are mutable: their `position_logits`
# (lab/position_profile.py), and the probes' `window_position_logits` by probe name.
POSITION_LOGITS = 'position_logits'
PROBE_LOGITS = 'probe_logits'


class MultiHeadAttention(nn.Module):
  """Self-attention; q/k get their positions from `pe_hook` (an `inject.LayerHook`).

  With `decode=True` the layer keeps a KV cache (collection 'cache') of what the PE hook made
  of each key and its key-position bias, `key_mask_BS` included: initialise it on an input of
  the maximum length, then feed one token per call (or first a prefill from position 0).
  `probes` (name -> the PE state of other positions, [W, L, ...]) make the layer report their
  `window_position_logits` in PROBE_LOGITS when that collection is mutable. `dtype`: of the
  projections and attention inputs, the PE hook's q/k included (the softmax runs in float32).
  """
  num_heads: int
  pe_hook: Callable[..., inject.LayerHook] = inject.LayerHook
  causal: bool = False
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  implementation: str = 'auto'
  block_size: int = 512
  local_window: int = 0
  dropout: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, pe_state, *, deterministic: bool = True,
               key_mask_BS: jax.Array | None = None, probes=None) -> jax.Array:
    d_model = x_BLD.shape[-1]
    if d_model % self.num_heads:
      raise ValueError(f'Model width {d_model} is not divisible by {self.num_heads} heads.')
    head_dim = d_model // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), kernel_init=nn.initializers.normal(0.02),
                          dtype=self.dtype, name='qkv')(x_BLD)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    hook = self.pe_hook(name='pe')
    q, k, bias = hook(q, k, pe_state)
    q, k = q.astype(self.dtype), k.astype(self.dtype)
    if key_mask_BS is not None:
      masked = jnp.where(key_mask_BS, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
      bias = masked if bias is None else bias + masked
    # Diagnostics, only when the caller asks for their collection (never in training; `init`
    # makes every collection but 'intermediates' mutable, hence the initialising check).
    wants = [c for c in ('intermediates', POSITION_LOGITS) if self.is_mutable_collection(c)]
    if wants and not self.decode and not self.is_initializing():
      pos = position_logits(hook, pe_state, q.shape[1], self.num_heads, head_dim,
                            causal=self.causal, dtype=q.dtype)
      if 'intermediates' in wants:
        self.sow('intermediates', 'pos_logit_spread', position_logit_spread(pos))
      if POSITION_LOGITS in wants:
        self.sow(POSITION_LOGITS, 'logits', pos)
    if probes and self.is_mutable_collection(PROBE_LOGITS) and not self.is_initializing():
      for name, state in probes.items():
        windows, length = jax.tree.leaves(state)[0].shape[:2]
        self.sow(PROBE_LOGITS, name, window_position_logits(
            hook, state, windows, length, self.num_heads, head_dim, q.dtype))
    dropout_key = None if deterministic or not self.dropout else self.make_rng('dropout')
    scale = head_dim**-0.5  # Of the head width, also when attn_scalar widens q and k.
    attention = functools.partial(attend, scale=scale, causal=self.causal,
                                  implementation=self.implementation, block_size=self.block_size,
                                  dropout_rate=self.dropout, dropout_rng=dropout_key,
                                  local_window=self.local_window)
    out = (self._cached(q, k, v, bias, attention, scale) if self.decode
           else attention(q, k, v, bias=bias))
    return nn.DenseGeneral(d_model, axis=(-2, -1), kernel_init=self.out_init, dtype=self.dtype,
                           name='out')(out)

  def _cached(self, q, k, v, bias, attention, scale):
    if bias is not None and bias.shape[-2] != 1:
      raise ValueError('This PE adds a bias per (query, key) pair, which a KV cache cannot '
                       'hold; cached decoding needs a bias per key or none.')
    batch, new, heads, _ = k.shape
    first_call = not self.has_variable('cache', 'key')
    key = self.variable('cache', 'key', jnp.zeros, k.shape, k.dtype)
    value = self.variable('cache', 'value', jnp.zeros, v.shape, v.dtype)
    key_bias = None if bias is None else self.variable(
        'cache', 'key_bias', jnp.zeros, (batch, heads, 1, new), jnp.float32)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    if first_call:  # Initialisation at the maximum length only shapes the cache.
      return attention(q, k, v, bias=bias)
    start = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k, (0, start, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v, (0, start, 0, 0))
    if key_bias is not None:
      new_bias = jnp.broadcast_to(bias, (batch, heads, 1, new)).astype(jnp.float32)
      key_bias.value = jax.lax.dynamic_update_slice(key_bias.value, new_bias, (0, 0, 0, start))
    index.value = start + new
    if new > 1:  # Prefill from position 0: the new block is the whole context so far.
      return attention(q, k, v, bias=bias)
    visible = jnp.arange(key.value.shape[1]) <= start
    if self.local_window:
      visible = visible & (jnp.arange(key.value.shape[1]) > start - self.local_window)
    return dot_product_attention(q, key.value, value.value, scale=scale,
                                 bias=None if key_bias is None else key_bias.value,
                                 mask=visible[None, None, None, :])
