"""Closed forms of the baseline PEs: sinusoidal tables, RoPE angles, ALiBi slopes, APE resampling.

Plain functions of positions, so tests compare them with their formulas and the sources
(`sources.py`) and injection hooks (`inject.py`) stay thin.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def sincos_1d(pos: jax.Array, dim: int, base: float = 10_000.) -> jax.Array:
  """float32[..., dim]: dimension j is sin (j even) or cos (j odd) of pos * base^(-2*(j//2)/dim)."""
  if dim % 2:
    raise ValueError(f'A sinusoidal PE needs an even width, got {dim}.')
  freqs = base**(-np.arange(0, dim, 2) / dim)  # One frequency per (sin, cos) pair.
  angles = jnp.asarray(pos, jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


def sincos_nd(pos: jax.Array, dim: int, base: float = 10_000.) -> jax.Array:
  """float32[..., dim] from int[..., ndim]: axis a owns the a-th of ndim equal slices."""
  ndim = pos.shape[-1]
  if dim % (2 * ndim):
    raise ValueError(f'A {ndim}D sinusoidal PE needs a width divisible by {2 * ndim}, got {dim}.')
  return jnp.concatenate([sincos_1d(pos[..., a], dim // ndim, base) for a in range(ndim)], -1)


def rope_angles(pos: jax.Array, head_dim: int, base: float = 10_000.) -> jax.Array:
  """float32[..., head_dim/2]: pair i of (2i, 2i+1) turns by pos * base^(-2i/head_dim)."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}.')
  freqs = base**(-np.arange(0, head_dim, 2) / head_dim)
  return jnp.asarray(pos, jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)


def rope_axial_frequencies(head_dim: int, base: float = 10_000.) -> np.ndarray:
  """omega_m = base^(-4m/head_dim), m < head_dim/4: the per-axis frequencies of 2D RoPE."""
  if head_dim % 4:
    raise ValueError(f'2D RoPE needs a head dimension divisible by 4, got {head_dim}.')
  return base**(-4 * np.arange(head_dim // 4) / head_dim)


def rope_axial_angles(pos: jax.Array, head_dim: int, base: float = 10_000.) -> jax.Array:
  """float32[..., head_dim/2] from (row, col): first head_dim/4 pairs turn by col, next by row."""
  if pos.shape[-1] != 2:
    raise ValueError(f'Axial RoPE is defined for 2D positions, got {pos.shape[-1]} axes.')
  omega = jnp.asarray(rope_axial_frequencies(head_dim, base), jnp.float32)
  pos = jnp.asarray(pos, jnp.float32)
  return jnp.concatenate([pos[..., 1:2] * omega, pos[..., 0:1] * omega], axis=-1)


def rope_mixed_init(key: jax.Array, num_heads: int, head_dim: int,
                    base: float = 10_000.) -> jax.Array:
  """float32[2, H, head_dim/2]: (f_x, f_y) of RoPE-Mixed at initialisation.

  Magnitudes are the axial frequencies; each head turns them by a random angle theta,
  half the pairs along theta and half along theta + pi/2.
  """
  mag = jnp.asarray(rope_axial_frequencies(head_dim, base), jnp.float32)
  theta = jax.random.uniform(key, (num_heads, 1), maxval=2 * math.pi)
  quarter = (num_heads, mag.shape[0])
  angle = jnp.concatenate(
      [jnp.broadcast_to(theta, quarter), jnp.broadcast_to(theta + math.pi / 2, quarter)], -1)
  mag = jnp.concatenate([mag, mag])
  return jnp.stack([mag * jnp.cos(angle), mag * jnp.sin(angle)])


def rotate_pairs(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates adjacent channel pairs (2i, 2i+1) of x[..., d] by angles given as cos/sin[..., d/2]."""
  x_even, x_odd = x[..., 0::2], x[..., 1::2]
  out = jnp.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """The standard geometric ALiBi slopes; non-powers of two borrow every other 2n-head slope."""
  def power_of_two(n):
    start = 2.0**(-8.0 / n)
    return [start**(i + 1) for i in range(n)]
  if num_heads & (num_heads - 1) == 0:
    return np.asarray(power_of_two(num_heads), np.float32)
  closest = 2**math.floor(math.log2(num_heads))
  extra = power_of_two(2 * closest)[0::2][:num_heads - closest]
  return np.asarray(power_of_two(closest) + extra, np.float32)


def resample_table(table: jax.Array, shape: Sequence[int], *, method: str) -> jax.Array:
  """Resizes a learned table [*old_grid, d] to [*shape, d] with half-pixel centres."""
  return jax.image.resize(table, (*shape, table.shape[-1]), method=method, antialias=False)
