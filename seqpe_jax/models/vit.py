"""Vision Transformer whose positional behaviour comes only from a PE's hooks."""

import re

import flax.linen as nn
import jax

from seqpe_jax import posenc
from seqpe_jax.models import transformer

# width, depth, heads, MLP width. `mu` and `nano` are CPU sizes for defaults and tests.
WIDTHS = {
    'nano': (32, 2, 2, 64),
    'mu': (64, 4, 4, 128),
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
}


def parse_variant(variant: str) -> dict[str, int]:
  """'S/16' -> width, depth, heads, MLP width and patch size."""
  match = re.fullmatch(r'(\w+)/(\d+)', variant)
  if not match or match.group(1) not in WIDTHS:
    raise ValueError(f"Unknown ViT variant '{variant}'; use <size>/<patch> with size one of "
                     f"{', '.join(WIDTHS)}, e.g. 'S/16'.")
  width, depth, heads, mlp = WIDTHS[match.group(1)]
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp,
              patch_size=int(match.group(2)))


class ViT(nn.Module):
  """Images [B, H, W, C] + PE features for the (H/p, W/p) grid -> logits [B, classes].

  A learned CLS token sits before the patches (the PE's prefix token); classification
  reads its final state.
  """
  num_classes: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  pe: posenc.PositionalEncoding
  dropout: float = 0.0
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, features, *, deterministic: bool = True):
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding='VALID',
                kernel_init=nn.initializers.normal(0.02), name='patch_embed')(images_BHWC)
    batch, h, w, _ = x.shape
    cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, self.width))
    x = jax.numpy.concatenate([jax.numpy.broadcast_to(cls, (batch, 1, self.width)),
                               x.reshape(batch, h * w, self.width)], axis=1)
    x = transformer.Transformer(self.depth, self.num_heads, self.mlp_dim, self.pe,
                                dropout=self.dropout, ln_eps=self.ln_eps,
                                name='encoder')(x, features, deterministic=deterministic)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x[:, 0])


def host_spec(variant: str, image_size: int) -> posenc.HostSpec:
  """What the PE needs to know about a ViT variant trained at `image_size`."""
  v = parse_variant(variant)
  grid = patch_grid(image_size, v['patch_size'])
  return posenc.HostSpec(v['width'], v['num_heads'], (grid, grid), num_prefix=1, causal=False)


def patch_grid(image_size: int, patch_size: int) -> int:
  if image_size % patch_size:
    raise ValueError(f'Resolution {image_size} is not divisible by the patch size {patch_size}; '
                     'use a multiple of it.')
  return image_size // patch_size
