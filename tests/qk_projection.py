"""Test helpers for SeqPE's q/k projections: larger initial kernels, and attn_scalar's
position term as an explicit [B, H, L, L] bias (the oracle of its concatenated channels)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax.posenc import inject


def scale_kernels(params, factor: float):
  """`params` with every q/k projection kernel times `factor`: what an initial std of
  0.02 * factor gives from the same draws."""
  is_kernel = lambda path: jax.tree_util.keystr(path).endswith("['qk_proj']['kernel']")
  return jax.tree_util.tree_map_with_path(lambda path, x: x * factor if is_kernel(path) else x,
                                          params)


class ScalarBiasOracle(inject.QKInjection):
  """attn_scalar with q and k left alone and p_q.p_k / sqrt(d_h) added as a dense bias."""

  @nn.compact
  def __call__(self, q_BLHD, k_BLHD, state):
    pq, pk = self.position_vectors(q_BLHD, k_BLHD, state)
    bias_BHLL = jnp.einsum('...qhd,...khd->...hqk', pq, pk) * q_BLHD.shape[-1]**-0.5
    return q_BLHD, k_BLHD, bias_BHLL


def with_bias_oracle(pe):
  """An attn_scalar SeqPE `pe` whose layers add the dense bias instead (same parameters)."""
  assert pe.method == 'attn_scalar', pe.method
  return dataclasses.replace(
      pe, layer_hook=functools.partial(ScalarBiasOracle, **pe.layer_hook.keywords))
