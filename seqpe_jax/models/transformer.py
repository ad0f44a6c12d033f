"""The pre-LN Transformer stack shared by the ViT and the GPT, with PE hooks wired in."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import posenc, rng
from seqpe_jax.models import attention


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  """`attention.MultiHeadAttention`'s implementation, block size, dropout and local window."""
  implementation: str = 'auto'
  block_size: int = 512
  dropout: float = 0.0
  local_window: int = 0


class Block(nn.Module):
  """x += Drop(Attn(LN x)); x += Drop(MLP(LN x))."""
  num_heads: int
  mlp_dim: int
  pe: posenc.PositionalEncoding
  causal: bool = False
  dropout: float = 0.0
  ln_eps: float = 1e-6
  attention: AttentionOptions = AttentionOptions()
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  decode: bool = False
  activation: Callable[[jax.Array], jax.Array] = nn.gelu  # The MLP's: GPT-2's tanh GELU.
  # Activations and matmuls (parameters stay float32; norms reduce in float32).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD, pe_state, *, deterministic: bool, key_mask_BL=None, probes=None):
    h = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name='ln_attn')(x_BLD)
    h = attention.MultiHeadAttention(
        self.num_heads, pe_hook=self.pe.layer_hook, causal=self.causal, out_init=self.out_init,
        **dataclasses.asdict(self.attention), decode=self.decode, dtype=self.dtype, name='attn')(
            h, pe_state, deterministic=deterministic, key_mask_BS=key_mask_BL, probes=probes)
    x_BLD = x_BLD + rng.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name='ln_mlp')(x_BLD)
    h = nn.Dense(self.mlp_dim, kernel_init=nn.initializers.normal(0.02), dtype=self.dtype,
                 name='mlp_in')(h)
    h = nn.Dense(x_BLD.shape[-1], kernel_init=self.out_init, dtype=self.dtype,
                 name='mlp_out')(self.activation(h))
    return x_BLD + rng.Dropout(self.dropout)(h, deterministic=deterministic)


class Transformer(nn.Module):
  """Token embeddings [B, P+N, D] + PE features -> final hidden states [B, P+N, D]. Every
  layer reports the logits the PE alone gives among the `probes` (name -> features of other
  positions; `stacked_probe_logits`), which do not touch the output."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  pe: posenc.PositionalEncoding
  causal: bool = False
  dropout: float = 0.0
  ln_eps: float = 1e-6
  attention: AttentionOptions = AttentionOptions()
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  decode: bool = False
  activation: Callable[[jax.Array], jax.Array] = nn.gelu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, features, *, deterministic: bool = True,
               key_mask_BL: jax.Array | None = None, probes=None):
    hook = self.pe.model_hook(name='pe_inject')
    probes = {name: hook(f) for name, f in probes.items()} if probes else None
    pe_state = hook(features)
    x_BLD = hook.embed(x_BLD.astype(self.dtype), pe_state).astype(self.dtype)
    x_BLD = rng.Dropout(self.dropout)(x_BLD, deterministic=deterministic)
    for i in range(self.num_layers):
      x_BLD = Block(self.num_heads, self.mlp_dim, self.pe, self.causal, self.dropout,
                    self.ln_eps, self.attention, self.out_init, self.decode, self.activation,
                    self.dtype, name=f'block_{i}')(x_BLD, pe_state, deterministic=deterministic,
                                                   key_mask_BL=key_mask_BL, probes=probes)
    return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name='ln_final')(x_BLD)


def stacked_probe_logits(collections) -> dict[str, jax.Array]:
  """{probe name: position-only logits [layers, W, H, L, L]} from `attention.PROBE_LOGITS`."""
  by_name = {}
  for path, logits in jax.tree_util.tree_flatten_with_path(collections[attention.PROBE_LOGITS])[0]:
    name = path[-2].key  # sow keeps each value in a tuple: (..., layer, name, index).
    by_name.setdefault(name, []).append(logits)
  return {name: jnp.stack(layers) for name, layers in by_name.items()}
