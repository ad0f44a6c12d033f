"""How a PE's features enter the host Transformer, through Linen hooks owned by the host.

A model hook (`pe_inject`) runs once per forward on the source's features and may add a PE
to the token embeddings (`embed`); a layer hook (`pe`) maps `(q, k, state) -> (q, k, bias)`
in every attention layer. Features carry a window axis W; example b uses window b mod W.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax.posenc import baselines

METHODS = ('input_add', 'attn_mul', 'attn_add', 'attn_scalar', 'rotary', 'bias', 'none')
# Features key of a float32 scalar: 1.0 when every window equals window 0 (SeqPE's unshifted
# steps), so q/k projections run once, not once per window (W tracks the batch). A float,
# not a bool, because the trainer differentiates the host loss with respect to the features.
WINDOWS_ALIKE = 'windows_alike'


def per_example(x_W: jax.Array, batch_size: int) -> jax.Array:
  """Maps window-major features [W, ...] to [B or 1, ...] with example b -> window b mod W."""
  num_windows = x_W.shape[0]
  if num_windows == 1:
    return x_W  # Broadcasts over the batch.
  if batch_size % num_windows:
    raise ValueError(f'A batch of {batch_size} cannot share {num_windows} position windows evenly.')
  return jnp.tile(x_W, (batch_size // num_windows,) + (1,) * (x_W.ndim - 1))


class ModelHook(nn.Module):
  """Passes the features through and leaves the token embeddings alone."""

  def __call__(self, features):
    return features

  def embed(self, x_BLD: jax.Array, state) -> jax.Array:
    del state
    return x_BLD


class InputAdd(ModelHook):
  """Adds the PE table to the token embeddings (APE, sinusoidal, SeqPE `input_add`)."""

  def embed(self, x_BLD, state):
    return x_BLD + per_example(state['e'], x_BLD.shape[0]).astype(x_BLD.dtype)


def _dense(e, kernel, bias):
  """b + W e as nn.Dense computes it, so projections without the alike flag are unchanged."""
  y = jax.lax.dot_general(e, kernel, (((e.ndim - 1,), (0,)), ((), ())))
  return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


@jax.custom_vjp
def project_distinct_windows(e_W, kernel, bias, alike):
  """b + W e for features e [W, ...]; when `alike` > 0 (every window is window 0) only window
  0 is projected and broadcast, and the backward projects the summed cotangent once.

  A custom VJP because under `lax.cond` JAX's autodiff would keep both branches' residuals
  (one per layer, zero-filled for the branch not taken); this one keeps e and the kernel.
  """
  once = lambda: jnp.broadcast_to(_dense(e_W[:1], kernel, bias), e_W.shape[:-1] + kernel.shape[-1:])
  return jax.lax.cond(alike > 0, once, lambda: _dense(e_W, kernel, bias))


def _forward_with_residuals(e_W, kernel, bias, alike):
  return project_distinct_windows(e_W, kernel, bias, alike), (e_W, kernel, alike)


def _backward(residuals, cot_W):
  e_W, kernel, alike = residuals
  contract = tuple(range(e_W.ndim - 1))  # Windows and positions.

  def grads(e, cot):
    d_kernel = jax.lax.dot_general(e, cot, ((contract, contract), ((), ())))
    d_e = jax.lax.dot_general(cot, kernel, (((cot.ndim - 1,), (1,)), ((), ())))
    return d_e, d_kernel, cot.sum(contract)

  def once():  # Window 0 stands for all: its cotangent is the sum, the others get none.
    d_e, d_kernel, d_bias = grads(e_W[:1], cot_W.sum(0, keepdims=True))
    return jnp.zeros_like(e_W).at[:1].set(d_e), d_kernel, d_bias

  d_e, d_kernel, d_bias = jax.lax.cond(alike > 0, once, lambda: grads(e_W, cot_W))
  return d_e, d_kernel, d_bias, jnp.zeros_like(alike)


project_distinct_windows.defvjp(_forward_with_residuals, _backward)


class QKProjection(nn.Module):
  """The Dense e -> [p_q; p_k] = b + W e (parameter names as nn.Dense's), projected once per
  distinct window, not once per copy, when the features are marked WINDOWS_ALIKE."""
  d_out: int
  bias_init: float = 0.0
  dtype: Any = jnp.float32  # Of the product; the parameters stay float32.

  @nn.compact
  def __call__(self, features) -> jax.Array:
    e = features['e']
    kernel = self.param('kernel', nn.initializers.normal(0.02),  # The reference's std.
                        (e.shape[-1], 2 * self.d_out))
    bias = self.param('bias', nn.initializers.constant(self.bias_init), (2 * self.d_out,))
    e, kernel, bias = (x.astype(self.dtype) for x in (e, kernel, bias))
    alike = features.get(WINDOWS_ALIKE)
    if alike is None or e.shape[0] == 1:
      return _dense(e, kernel, bias)
    return project_distinct_windows(e, kernel, bias, alike)


class SharedQKProjection(ModelHook):
  """One Dense e -> [p_q; p_k] owned by the host and applied once per forward."""
  d_out: int
  bias_init: float = 0.0
  dtype: Any = jnp.float32  # Of the projection's product.

  @nn.compact
  def __call__(self, features):
    pqk = QKProjection(self.d_out, self.bias_init, self.dtype, name='qk_proj')(features)
    return {'pq': pqk[..., :self.d_out], 'pk': pqk[..., self.d_out:]}


class DuplicateQK(ModelHook):
  """p_q = p_k = e, no projection (the reference GPT-2 `qk_proj='none'` path)."""

  def __call__(self, features):
    return {'pq': features['e'], 'pk': features['e']}


class LayerHook(nn.Module):
  """No change to q and k, no bias."""

  def __call__(self, q_BLHD, k_BLHD, state):
    del state
    return q_BLHD, k_BLHD, None


class QKInjection(LayerHook):
  """SeqPE's attn_mul / attn_add / attn_scalar (docs/method.md §4) with this layer's q/k
  projection (`per_layer`) or the model hook's p_q, p_k, split into heads if `multi_head`;
  attn_scalar appends them as channels (no L x L tensor: fused attention, KV cache)."""
  method: str
  per_layer: bool
  multi_head: bool = True
  proj_bias_init: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_BLHD, k_BLHD, state):
    pq, pk = self.position_vectors(q_BLHD, k_BLHD, state)
    if self.method == 'attn_mul':
      return q_BLHD * pq, k_BLHD * pk, None
    if self.method == 'attn_add':
      return q_BLHD + pq, k_BLHD + pk, None
    # [q; p_q].[k; p_k] = q.k + p_q.p_k exactly; the attention keeps 1/sqrt(d_h).
    return (jnp.concatenate([q_BLHD, jnp.broadcast_to(pq, q_BLHD.shape)], axis=-1),
            jnp.concatenate([k_BLHD, jnp.broadcast_to(pk, k_BLHD.shape)], axis=-1), None)

  def position_vectors(self, q_BLHD, k_BLHD, state):
    """p_q, p_k [B or 1, L, H or 1, d_h] per example, in the dtypes of q and k."""
    batch, _, heads, head_dim = q_BLHD.shape
    if self.per_layer:
      d_out = state['e'].shape[-1]
      pqk = QKProjection(d_out, self.proj_bias_init, self.dtype, name='qk_proj')(state)
      pq, pk = pqk[..., :d_out], pqk[..., d_out:]
    else:
      pq, pk = state['pq'], state['pk']
    split = (heads, head_dim) if self.multi_head else (1, head_dim)
    return (per_example(pq.reshape(*pq.shape[:-1], *split), batch).astype(q_BLHD.dtype),
            per_example(pk.reshape(*pk.shape[:-1], *split), batch).astype(k_BLHD.dtype))


class Rotary(LayerHook):
  """Rotates q and k by precomputed angles shared by every head (RoPE, RoPE-2D)."""

  def __call__(self, q_BLHD, k_BLHD, state):
    cos, sin = (per_example(state[key], q_BLHD.shape[0])[:, :, None] for key in ('cos', 'sin'))
    return baselines.rotate_pairs(q_BLHD, cos, sin), baselines.rotate_pairs(k_BLHD, cos, sin), None


class MixedRotary(LayerHook):
  """RoPE-Mixed: this layer's learnable per-head 2D frequencies, angle = col f_x + row f_y."""
  base: float = 10_000.

  @nn.compact
  def __call__(self, q_BLHD, k_BLHD, state):
    _, _, heads, head_dim = q_BLHD.shape
    freqs = self.param('freqs', baselines.rope_mixed_init, heads, head_dim, self.base)
    pos = per_example(state['pos'], q_BLHD.shape[0])  # [B, L, 2] as (row, col).
    angles = (pos[..., 1, None, None] * freqs[0] + pos[..., 0, None, None] * freqs[1])
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    return baselines.rotate_pairs(q_BLHD, cos, sin), baselines.rotate_pairs(k_BLHD, cos, sin), None


class KeyPositionBias(LayerHook):
  """ALiBi as the reference computes it: logit += m_h * j for key position j.

  Under a causal mask this is softmax-equivalent to -m_h (i - j), needs only a [B, H, 1, L]
  bias and stays correct with a KV cache. With `pre_scale` (the reference) it is added
  before the 1/sqrt(d_h) scaling, so the effective slopes are m_h / sqrt(d_h).
  """
  pre_scale: bool = True

  def __call__(self, q_BLHD, k_BLHD, state):
    _, _, heads, head_dim = q_BLHD.shape
    slopes = jnp.asarray(baselines.alibi_slopes(heads))
    key_pos_BL = per_example(state['key_pos'], q_BLHD.shape[0])
    bias_BH1L = key_pos_BL[:, None, None, :] * slopes[:, None, None]
    if self.pre_scale:
      bias_BH1L = bias_BH1L * head_dim**-0.5
    return q_BLHD, k_BLHD, bias_BH1L
