"""Closed forms of the baseline PEs (sinusoids, RoPE angles, ALiBi slopes, APE resampling):
plain functions that tests compare with their formulas, so sources and hooks stay thin."""

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


def rope_frequencies(head_dim: int, base: float = 10_000.) -> np.ndarray:
  """theta_i = base^(-2i/head_dim), i < head_dim/2: the turn of pair i per position."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}.')
  return base**(-np.arange(0, head_dim, 2) / head_dim)


def rope_angles(pos: jax.Array, head_dim: int, base: float = 10_000.) -> jax.Array:
  """float32[..., head_dim/2]: pair i of (2i, 2i+1) turns by pos * base^(-2i/head_dim)."""
  freqs = rope_frequencies(head_dim, base)
  return jnp.asarray(pos, jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)


# Evaluation-time rescalings of a RoPE model trained at L tokens, evaluated at s L
# (eval.rope_scaling), and YaRN's ramp bounds (alpha, beta of Peng et al. 2023).
ROPE_SCALINGS = ('pi', 'ntk', 'yarn')
YARN_ALPHA, YARN_BETA = 1.0, 32.0


def scaled_rope_frequencies(method: str, head_dim: int, base: float, scale: float,
                            train_length: int) -> tuple[np.ndarray, float]:
  """(theta'_i, m): RoPE's frequencies rescaled by `method` for `scale` = s >= 1, and the
  factor m that multiplies q and k each (so the logits by m^2 = 1/t).

  'pi' (position interpolation, Chen et al. 2023): theta_i / s.
  'ntk' (NTK-aware): the frequencies of base b' = b s^(d/(d-2)), d = head_dim, which keep
    the highest frequency and divide the lowest by exactly s.
  'yarn' (Peng et al. 2023): r_i = L / lambda_i with lambda_i = 2 pi / theta_i, ramp
    g = clip((r - alpha) / (beta - alpha), 0, 1), theta'_i = (1 - g) theta_i / s + g theta_i,
    and temperature sqrt(1/t) = 0.1 ln s + 1 (the factor m).
  """
  if method not in ROPE_SCALINGS:
    raise ValueError(f"Unknown RoPE scaling '{method}'; use one of {', '.join(ROPE_SCALINGS)}.")
  if scale < 1:
    raise ValueError(f'A RoPE scaling factor is at least 1 (longer than trained), got {scale}.')
  theta = rope_frequencies(head_dim, base)
  if method == 'pi':
    return theta / scale, 1.0
  if method == 'ntk':
    if head_dim <= 2:
      raise ValueError(f'NTK-aware scaling needs a head dimension above 2, got {head_dim}.')
    return rope_frequencies(head_dim, base * scale**(head_dim / (head_dim - 2))), 1.0
  ramp = np.clip((train_length * theta / (2 * math.pi) - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA),
                 0.0, 1.0)
  return (1 - ramp) * theta / scale + ramp * theta, 0.1 * math.log(scale) + 1


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
  """float32[2, H, head_dim/2]: RoPE-Mixed's (f_x, f_y) at initialisation: the axial
  frequencies, turned per head by a random theta (half the pairs by theta + pi/2)."""
  mag = jnp.asarray(rope_axial_frequencies(head_dim, base), jnp.float32)
  theta = jax.random.uniform(key, (num_heads, 1), maxval=2 * math.pi)
  angle = jnp.repeat(jnp.concatenate([theta, theta + math.pi / 2], -1), mag.shape[0], axis=-1)
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
