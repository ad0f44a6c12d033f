"""Position sources: what each PE computes from positions, once per forward.

A source maps a grid `shape` (and optional per-window start offsets) to the features its
injection needs, with a leading window axis W over P prefix tokens (the ViT's CLS) and the
N grid positions: a table `e` [W, P+N, d], rotary `cos`/`sin`, raw coordinates or ALiBi key
positions. Sources never see the batch, so their result is cached per shape at evaluation.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import positions
from seqpe_jax.posenc import baselines, seqpe


def window_positions(shape: Sequence[int], offsets: jax.Array | None,
                     canvas: Sequence[int] = ()) -> jax.Array:
  """int32[W, N, ndim]: the grid of `shape` (on `canvas`, if any) shifted by each offset."""
  pos = positions.canvas_grid(shape, canvas)[None]
  return pos if offsets is None else pos + jnp.asarray(offsets, jnp.int32)[:, None, :]


def _flat_positions(pos_WNn: jax.Array, shape: Sequence[int], num_prefix: int) -> jax.Array:
  """int32[W, P+N]: prefix tokens at 0..P-1, then P + each row-major index within `shape`."""
  strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
  flat = jnp.sum(pos_WNn * jnp.asarray(strides, jnp.int32), axis=-1) + num_prefix
  return _with_prefix(jnp.arange(num_prefix), flat)


def _with_prefix(prefix_P: jax.Array, grid_WN: jax.Array) -> jax.Array:
  prefix = jnp.broadcast_to(prefix_P, (grid_WN.shape[0],) + prefix_P.shape)
  return jnp.concatenate([prefix.astype(grid_WN.dtype), grid_WN], axis=1)


class SeqPESource(nn.Module):
  """SeqPE embeddings of the grid positions (on `canvas` if given), after learned prefix
  vectors: host-side parameters in the method (clipped and decayed with the host, not the
  `encoder`), here only because they are concatenated before the q/k projection."""
  encoder: seqpe.SeqPEEncoder
  num_prefix: int = 0
  canvas: tuple[int, ...] = ()

  def setup(self):
    if self.num_prefix:
      self.prefix = self.param('prefix', nn.initializers.normal(0.02),
                               (self.num_prefix, self.encoder.d_out))

  def __call__(self, shape, offsets=None, *, deterministic=True):
    enc = self.encoder
    positions.check_extent_fits(self.canvas or shape, base=enc.base, width=enc.num_digits)
    return self.with_prefix(self.encode(window_positions(shape, offsets, self.canvas),
                                        deterministic=deterministic))

  def encode(self, pos: jax.Array, *, deterministic=True) -> jax.Array:
    """Embeddings of arbitrary int[..., ndim] positions: [..., d_out]."""
    digits = positions.digitize(pos, base=self.encoder.base, width=self.encoder.num_digits)
    return self.encoder(digits, deterministic=deterministic)

  def with_prefix(self, e_WNd: jax.Array) -> dict[str, jax.Array]:
    """The features the injection hooks read: {'e': [W, P+N, d_out]}."""
    return {'e': _with_prefix(self.prefix, e_WNd) if self.num_prefix else e_WNd}


class LearnedSource(nn.Module):
  """Learned absolute PE: a table over the training grid, resampled to other grids (linear
  in 1D, bicubic with half-pixel centres on grids); prefix rows are kept as they are."""
  train_shape: tuple[int, ...]
  dim: int
  num_prefix: int = 0
  cubic: str = 'cubic-pytorch'

  @nn.compact
  def __call__(self, shape, offsets=None, *, deterministic=True):
    del deterministic
    if offsets is not None:
      raise ValueError('The learned APE has no rows for shifted windows; turn pe.shift off.')
    init = nn.initializers.normal(0.02)
    table = self.param('table', init, (*self.train_shape, self.dim))
    method = 'linear' if len(shape) == 1 else self.cubic
    if tuple(shape) != tuple(self.train_shape):
      table = baselines.resample_table(table, shape, method=method)
    e_1Nd = table.reshape(1, -1, self.dim)
    if self.num_prefix:
      e_1Nd = _with_prefix(self.param('prefix', init, (self.num_prefix, self.dim)), e_1Nd)
    return {'e': e_1Nd}


class SinCosSource(nn.Module):
  """Fixed sinusoidal PE of the flattened position (prefix tokens at 0..P-1): on a 2D grid
  a patch's position changes meaning with the row length, as in the reference."""
  dim: int
  num_prefix: int = 0
  base: float = 10_000.
  scale: float = 1.0  # The table's amplitude: the host's input scale (HostSpec.input_scale).

  def __call__(self, shape, offsets=None, *, deterministic=True):
    flat = _flat_positions(window_positions(shape, offsets), shape, self.num_prefix)
    return {'e': self.scale * baselines.sincos_1d(flat, self.dim, self.base)}


class SinCosGridSource(nn.Module):
  """Fixed sinusoidal PE per axis, the width split evenly across axes; prefix rows are 0."""
  dim: int
  num_prefix: int = 0
  base: float = 10_000.
  canvas: tuple[int, ...] = ()
  scale: float = 1.0  # As SinCosSource's.

  def __call__(self, shape, offsets=None, *, deterministic=True):
    e = self.scale * baselines.sincos_nd(window_positions(shape, offsets, self.canvas),
                                         self.dim, self.base)
    return {'e': _with_prefix(jnp.zeros((self.num_prefix, self.dim)), e)}


class RotarySource(nn.Module):
  """cos/sin of RoPE angles, 1D over the flattened position (prefix at 0..P-1) or axial.
  `scaling` (eval.rope_scaling) rescales the 1D frequencies beyond `train_length`; cos and
  sin then carry YaRN's factor m, which the rotation passes on to q and k."""
  head_dim: int
  axial: bool
  num_prefix: int = 0
  base: float = 10_000.
  canvas: tuple[int, ...] = ()  # Axial only: a flat index has no per-axis canvas.
  scaling: str = ''
  train_length: int = 0

  def __call__(self, shape, offsets=None, *, deterministic=True):
    pos = window_positions(shape, offsets, self.canvas)
    if self.axial:  # Prefix tokens get angle 0: they are not rotated.
      angles = baselines.rope_axial_angles(pos, self.head_dim, self.base)
      angles = _with_prefix(jnp.zeros((self.num_prefix, self.head_dim // 2)), angles)
    else:
      flat = _flat_positions(pos, shape, self.num_prefix)
      if self.scaling and shape[0] > self.train_length:
        freqs, factor = baselines.scaled_rope_frequencies(
            self.scaling, self.head_dim, self.base, shape[0] / self.train_length, self.train_length)
        angles = jnp.asarray(flat, jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
        return {'cos': factor * jnp.cos(angles), 'sin': factor * jnp.sin(angles)}
      angles = baselines.rope_angles(flat, self.head_dim, self.base)
    return {'cos': jnp.cos(angles), 'sin': jnp.sin(angles)}


class CoordinateSource(nn.Module):
  """Raw float coordinates [W, P+N, ndim] for PEs whose layers own their frequencies."""
  num_prefix: int = 0
  canvas: tuple[int, ...] = ()

  def __call__(self, shape, offsets=None, *, deterministic=True):
    pos = window_positions(shape, offsets, self.canvas).astype(jnp.float32)
    return {'pos': _with_prefix(jnp.zeros((self.num_prefix, len(shape))), pos)}


class KeyPositionSource(nn.Module):
  """Flat key positions [W, P+N] for ALiBi's per-key bias."""
  num_prefix: int = 0

  def __call__(self, shape, offsets=None, *, deterministic=True):
    flat = _flat_positions(window_positions(shape, offsets), shape, self.num_prefix)
    return {'key_pos': flat.astype(jnp.float32)}


class NoSource(nn.Module):
  """No positional features at all."""

  def __call__(self, shape, offsets=None, *, deterministic=True):
    return {}
