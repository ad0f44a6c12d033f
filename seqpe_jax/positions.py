"""Position grids and their fixed-width digit sequences.

SeqPE reads a position as the numeral that writes it: each coordinate becomes `width`
base-`base` digits, most significant first and left-padded with zeros, and the axes'
digit blocks are concatenated in axis order (row block, then column block). Everything
here is pure integer arithmetic with static shapes, so it runs inside `jax.jit` on
device; the reference implementation did this with `str()` on the host.
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
  """All positions of an N-D grid, row-major (last axis fastest): int32[prod(shape), ndim].

  `start` shifts every position by a per-axis offset; it may be a traced array, so a
  shifted window costs no recompilation.
  """
  axes = [jnp.arange(n, dtype=jnp.int32) for n in shape]
  pos = jnp.stack(jnp.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, len(shape))
  if start is not None:
    pos = pos + jnp.asarray(start, jnp.int32)
  return pos


def canvas_grid(shape: Sequence[int], canvas: Sequence[int] = ()) -> jax.Array:
  """Grid positions spread over a fixed canvas: int32[prod(shape), ndim], row-major.

  Axis a's n positions are floor((2i + 1) C_a / 2n), the centres of n equal cells of
  [0, C_a): every resolution's grid covers the same canvas, so a larger image's patches
  fall between the trained positions rather than beyond them (APE's resampling of its
  table does the same). An empty canvas gives the plain grid, patch i at position i.
  """
  if not canvas:
    return grid(shape)
  check_canvas(shape, canvas)
  axes = [(2 * jnp.arange(n, dtype=jnp.int32) + 1) * c // (2 * n)
          for n, c in zip(shape, canvas)]
  return jnp.stack(jnp.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, len(shape))


def canvas_of(train_shape: Sequence[int], stride: int) -> tuple[int, ...]:
  """The canvas on which the training grid's positions lie `stride` apart (pe.canvas_stride;
  0 = no canvas, the empty tuple)."""
  if stride < 0 or stride == 1:
    raise ValueError('pe.canvas_stride must be 0 (grid positions) or at least 2, so positions '
                     f'of larger grids fit between the trained ones; got {stride}.')
  return tuple(stride * n for n in train_shape) if stride else ()


def check_canvas(shape: Sequence[int], canvas: Sequence[int]) -> None:
  """Raises ValueError unless every axis of `shape` has distinct positions on the canvas."""
  if any(n > c for n, c in zip(shape, canvas)):
    raise ValueError(f'The {tuple(shape)} grid has more positions per axis than its canvas '
                     f'{tuple(canvas)} (pe.canvas_stride times the training grid) holds.')


def canvas_cell(train_shape: Sequence[int], canvas: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
  """Per-axis offsets [lo, hi) that move a training position anywhere inside its canvas
  cell (C_a // n_a wide, the position at its centre): int arrays lo, hi of length ndim."""
  stride = np.asarray([c // n for n, c in zip(train_shape, canvas)])
  return -(stride // 2), stride - stride // 2


def digitize(pos: jax.Array, *, base: int = 10, width: int) -> jax.Array:
  """Fixed-width, left-zero-padded digits of each coordinate, axes concatenated.

  Args:
    pos: int[..., ndim] non-negative coordinates, each < base**width.
    base: numeral base, 2 .. 36.
    width: digits per axis (k).

  Returns:
    int32[..., ndim * width]; digit j of axis a sits at a * width + j, most significant
    first, so (2, 3) with width 2 gives [0, 2, 0, 3].
  """
  _check_base(base)
  if not isinstance(pos, jax.core.Tracer):
    check_fits(np.asarray(pos), base=base, width=width)
  pos = jnp.asarray(pos, jnp.int32)
  # Place values base**(width-1) .. base**0; int32 holds them for every width whose
  # largest position fits int32, which check_fits / the table builders guarantee.
  powers = jnp.asarray([base**(width - 1 - j) for j in range(width)], jnp.int32)
  digits = (pos[..., None] // powers) % base  # [..., ndim, width]
  return digits.reshape(*pos.shape[:-1], pos.shape[-1] * width)


def undigitize(digits: jax.Array, *, base: int = 10, width: int) -> jax.Array:
  """Inverse of `digitize`: int[..., ndim * width] digits -> int32[..., ndim] positions."""
  ndim = digits.shape[-1] // width
  digits = jnp.asarray(digits, jnp.int32).reshape(*digits.shape[:-1], ndim, width)
  powers = jnp.asarray([base**(width - 1 - j) for j in range(width)], jnp.int32)
  return jnp.sum(digits * powers, axis=-1)



def check_fits(pos: np.ndarray | int, *, base: int, width: int) -> None:
  """Raises ValueError unless every concrete coordinate lies in [0, base**width)."""
  pos = np.asarray(pos)
  if pos.size == 0:
    return
  limit = base**width
  lo, hi = int(pos.min()), int(pos.max())
  if lo < 0 or hi >= limit:
    bad = lo if lo < 0 else hi
    raise ValueError(
        f'Position {bad} does not fit {width} base-{base} digits (valid range 0..{limit - 1}); '
        f'raise pe.seqpe.max_position or pe.seqpe.num_digits.')


def check_extent_fits(shape: Sequence[int], *, base: int, width: int, offset: int = 0) -> None:
  """Raises ValueError unless a grid of `shape` starting at `offset` per axis fits the width."""
  check_fits(np.asarray([offset + n - 1 for n in shape]), base=base, width=width)


def _check_base(base: int) -> None:
  if not MIN_BASE <= base <= MAX_BASE:
    raise ValueError(f'base must be between {MIN_BASE} and {MAX_BASE}, got {base}.')
