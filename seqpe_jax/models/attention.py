"""Multi-head attention whose positional behaviour comes only from a PE layer hook."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax.posenc import inject


def dot_product_attention(q_BLHK, k_BSHK, v_BSHD, *, scale: float, bias=None,
                          causal: bool = False, implementation: str | None = None):
  """`jax.nn.dot_product_attention` that also takes keys wider than values.

  SeqPE's attn_scalar appends p_q / p_k channels to q / k (width K = 2 d_h) while the
  values keep d_h; the fused kernels want equal widths, so v is zero-padded to K and the
  padding sliced off the output. `scale` is explicit because a kernel's default
  1/sqrt(K) would be wrong for the widened keys.
  """
  value_dim = v_BSHD.shape[-1]
  if k_BSHK.shape[-1] != value_dim:
    pad = [(0, 0)] * (v_BSHD.ndim - 1) + [(0, k_BSHK.shape[-1] - value_dim)]
    v_BSHD = jnp.pad(v_BSHD, pad)
  out = jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHD, bias=bias, scale=scale,
                                     is_causal=causal, implementation=implementation)
  return out[..., :value_dim]


class MultiHeadAttention(nn.Module):
  """Self-attention; q/k get their positions from `pe_hook` (an `inject.LayerHook`).

  Attributes:
    num_heads: heads H; the head width is D / H.
    pe_hook: factory of this layer's PE hook (its parameters live under `pe`).
    causal: mask future keys.
    use_bias: biases on the q/k/v and output projections.
    kernel_init / out_init: initialisers of the q/k/v and output projections.
    implementation: passed to `jax.nn.dot_product_attention` (None = best available).
  """
  num_heads: int
  pe_hook: Callable[..., inject.LayerHook] = inject.LayerHook
  causal: bool = False
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  implementation: str | None = None

  @nn.compact
  def __call__(self, x_BLD: jax.Array, pe_state) -> jax.Array:
    d_model = x_BLD.shape[-1]
    if d_model % self.num_heads:
      raise ValueError(f'Model width {d_model} is not divisible by {self.num_heads} heads.')
    head_dim = d_model // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=self.use_bias,
                          kernel_init=self.kernel_init, name='qkv')(x_BLD)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k, bias = self.pe_hook(name='pe')(q, k, pe_state)
    out = dot_product_attention(q, k, v, scale=head_dim**-0.5, bias=bias, causal=self.causal,
                                implementation=self.implementation)
    return nn.DenseGeneral(d_model, axis=(-2, -1), use_bias=self.use_bias,
                           kernel_init=self.out_init, name='out')(out)
