"""Position grids and their fixed-width digit sequences.

SeqPE reads a position as the numeral that writes it: each coordinate becomes `width`
base-`base` digits, most significant first and left-padded with zeros, the axes' blocks
concatenated. Pure integer arithmetic with static shapes, so it runs inside `jax.jit` (the
reference did this with `str()` on the host).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

MIN_BASE, MAX_BASE = 2, 36


def num_digits(max_position: int, base: int = 10) -> int:
  """Smallest k >= 1 with base**k >= max_position: digits needed for 0 .. max_position-1."""
  _check_base(base)
  if max_position < 1:
    raise ValueError(f'max_position must be at least 1, got {max_position}.')
  k, capacity = 1, base
  while capacity < max_position:  # Integer arithmetic: float logs misround at powers.
    k, capacity = k + 1, capacity * base
  return k


def grid(shape: Sequence[int], start: Sequence[int] | jax.Array | None = None) -> jax.Array:
  """All positions of an N-D grid, row-major: int32[prod(shape), ndim], shifted by the
  per-axis `start` (it may be traced, so a shifted window costs no recompilation)."""
  pos = jnp.indices(shape, dtype=jnp.int32).reshape(len(shape), -1).T
  return pos if start is None else pos + jnp.asarray(start, jnp.int32)


def canvas_grid(shape: Sequence[int], canvas: Sequence[int] = ()) -> jax.Array:
  """Grid positions spread over a fixed canvas (empty: the plain grid): axis a's n positions
  are floor((2i + 1) C_a / 2n), the centres of n equal cells of [0, C_a), so a larger image's
  patches fall between the trained positions rather than beyond them."""
  if not canvas:
    return grid(shape)
  if any(n > c for n, c in zip(shape, canvas)):
    raise ValueError(f'The {tuple(shape)} grid has more positions per axis than its canvas '
                     f'{tuple(canvas)} (pe.canvas_stride times the training grid) holds.')
  return ((2 * grid(shape) + 1) * jnp.asarray(canvas, jnp.int32)
          // (2 * jnp.asarray(shape, jnp.int32)))


def canvas_of(train_shape: Sequence[int], stride: int) -> tuple[int, ...]:
  """The canvas on which the training positions lie `stride` apart; () for stride 0."""
  if stride < 0 or stride == 1:
    raise ValueError('pe.canvas_stride must be 0 (grid positions) or at least 2, so positions '
                     f'of larger grids fit between the trained ones; got {stride}.')
  return tuple(stride * n for n in train_shape) if stride else ()


def canvas_cell(train_shape: Sequence[int], canvas: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Per-axis offsets [lo, hi) that move a training position anywhere inside its canvas
  cell (C_a // n_a wide, the position at its centre): int arrays lo, hi of length ndim."""
  stride = np.asarray([c // n for n, c in zip(train_shape, canvas)])
  return -(stride // 2), stride - stride // 2


def digitize(pos: jax.Array, *, base: int = 10, width: int) -> jax.Array:
  """int[..., ndim] -> int32[..., ndim * width] digits: (2, 3), width 2 -> [0, 2, 0, 3]."""
  _check_base(base)
  if not isinstance(pos, jax.core.Tracer):
    check_fits(np.asarray(pos), base=base, width=width)
  pos = jnp.asarray(pos, jnp.int32)
  # base**(width-1) .. base**0: int32 holds them wherever the largest position fits int32,
  # which check_fits and the table builders guarantee.
  places = jnp.asarray([base**(width - 1 - j) for j in range(width)], jnp.int32)
  digits = (pos[..., None] // places) % base  # [..., ndim, width]
  return digits.reshape(*pos.shape[:-1], pos.shape[-1] * width)


def check_fits(pos: np.ndarray | int, *, base: int, width: int) -> None:
  """Raises ValueError unless every concrete coordinate lies in [0, base**width)."""
  pos = np.asarray(pos)
  if pos.size == 0:
    return
  limit = base**width
  lo, hi = int(pos.min()), int(pos.max())
  if lo < 0 or hi >= limit:
    bad = lo if lo < 0 else hi
    raise ValueError(f'Position {bad} does not fit {width} base-{base} digits (valid range '
                     f'0..{limit - 1}); raise pe.seqpe.max_position or pe.seqpe.num_digits.')


def check_extent_fits(shape: Sequence[int], *, base: int, width: int, offset: int = 0) -> None:
  """Raises ValueError unless a grid of `shape` starting at `offset` per axis fits the width."""
  check_fits(np.asarray([offset + n - 1 for n in shape]), base=base, width=width)


def _check_base(base: int) -> None:
  if not MIN_BASE <= base <= MAX_BASE:
    raise ValueError(f'base must be between {MIN_BASE} and {MAX_BASE}, got {base}.')
