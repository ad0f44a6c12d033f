"""Vision Transformer whose positional behaviour comes only from a PE's hooks."""

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from seqpe_jax import posenc
from seqpe_jax.models import transformer

# width, depth, heads, MLP width. `mu` and `nano` are CPU sizes for defaults and tests.
SIZES = {
    'nano': (32, 2, 2, 64),
    'mu': (64, 4, 4, 128),
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
}


@dataclasses.dataclass(frozen=True)
class InitOptions:
  """How the host ViT is initialised and activated (`config.model` fields): the CPU configs'
  defaults, or `:paper`'s timm ViT (exact GELU, trunc_normal head, PyTorch's Conv2d init);
  configs/vit_base.py describes each choice."""
  gelu: str = 'tanh'
  head_init: str = 'zeros'
  patch_init: str = 'normal'

  CHOICES = {'gelu': ('tanh', 'erf'), 'head_init': ('zeros', 'trunc_normal'),
             'patch_init': ('normal', 'torch')}

  @classmethod
  def from_config(cls, model) -> 'InitOptions':
    """From `config.model`; a field an older config lacks keeps the default it trained with."""
    values = {name: model.get(name, getattr(cls, name)) for name in cls.CHOICES}
    for name, value in values.items():
      if value not in cls.CHOICES[name]:
        raise ValueError(f"model.{name} must be one of {', '.join(cls.CHOICES[name])}, got "
                         f"'{value}'.")
    return cls(**values)


def parse_variant(variant: str) -> dict[str, int]:
  """'S/16' -> width, depth, heads, MLP width and patch size."""
  match = re.fullmatch(r'(\w+)/(\d+)', variant)
  if not match or match.group(1) not in SIZES:
    raise ValueError(f"Unknown ViT variant '{variant}'; use <size>/<patch> with size one of "
                     f"{', '.join(SIZES)}, e.g. 'S/16'.")
  width, depth, heads, mlp = SIZES[match.group(1)]
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
              patch_size=int(match.group(2)))


class ViT(nn.Module):
  """Images [B, H, W, C] + PE features for the (H/p, W/p) grid -> logits [B, classes], read
  from a learned CLS token before the patches (the PE's prefix token)."""
  num_classes: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  pe: posenc.PositionalEncoding
  dropout: float = 0.0
  ln_eps: float = 1e-6
  init_options: InitOptions = InitOptions()
  dtype: Any = jax.numpy.float32  # Of activations and matmuls; the logits are float32.

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, features, *, deterministic: bool = True, probes=None):
    p = self.patch_size
    if self.init_options.patch_init == 'torch':
      bound = 1 / np.sqrt(p * p * images_BHWC.shape[-1])
      patch_inits = dict(kernel_init=uniform(bound), bias_init=uniform(bound))
    else:
      patch_inits = dict(kernel_init=nn.initializers.normal(0.02))
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding='VALID', **patch_inits,
                dtype=self.dtype, name='patch_embed')(images_BHWC)
    batch, h, w, _ = x.shape
    cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, self.width))
    cls = jax.numpy.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype)
    x = jax.numpy.concatenate([cls, x.reshape(batch, h * w, self.width)], axis=1)
    # The tanh GELU is the shared Transformer's default, so only the exact one is passed.
    activation = {} if self.init_options.gelu == 'tanh' else {
        'activation': functools.partial(nn.gelu, approximate=False)}
    x = transformer.Transformer(self.depth, self.num_heads, self.mlp_dim, self.pe,
                                dropout=self.dropout, ln_eps=self.ln_eps, **activation,
                                dtype=self.dtype, name='encoder')(
                                    x, features, deterministic=deterministic, probes=probes)
    head_init = (truncated_normal(0.02, bound=2.0) if self.init_options.head_init == 'trunc_normal'
                 else nn.initializers.zeros)
    return nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype,
                    name='head')(x[:, 0]).astype(jax.numpy.float32)


def uniform(bound: float) -> nn.initializers.Initializer:
  """U(-bound, bound), PyTorch's default for Conv2d weights and biases at 1/sqrt(fan_in)."""
  def init(key, shape, dtype=jax.numpy.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def truncated_normal(std: float, *, bound: float) -> nn.initializers.Initializer:
  """N(0, std) cut at +-bound in absolute units, as PyTorch's trunc_normal_(std=...) (its
  bound 2 is 100 std at 0.02; flax's truncated_normal would cut at 2 std and rescale)."""
  def init(key, shape, dtype=jax.numpy.float32):
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)
  return init


def host_spec(variant: str, image_size: int, dtype=jax.numpy.float32) -> posenc.HostSpec:
  """What the PE needs to know about a ViT variant trained at `image_size`."""
  v = parse_variant(variant)
  grid = patch_grid(image_size, v['patch_size'])
  return posenc.HostSpec(v['width'], v['num_heads'], (grid, grid), num_prefix=1, causal=False,
                         dtype=dtype)


def patch_grid(image_size: int, patch_size: int) -> int:
  if image_size % patch_size:
    raise ValueError(f'Resolution {image_size} is not divisible by the patch size {patch_size}; '
                     'use a multiple of it.')
  return image_size // patch_size
