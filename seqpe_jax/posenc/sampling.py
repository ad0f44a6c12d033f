"""Jittable samplers for SeqPE's other training draws (OOD distillation offsets,
logit-distillation probes, shifted windows): fixed-shape arrays from an explicit key."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import positions, rng


def check_cells_fit(train_shape: Sequence[int], max_position: int, canvas: Sequence[int]) -> None:
  """Raises ValueError unless training positions moved anywhere in their cells stay in range."""
  _, hi = positions.canvas_cell(train_shape, canvas)
  top = int(np.max(positions.canvas_grid(train_shape, canvas))) + int(np.max(hi)) - 1
  if top >= max_position:
    raise ValueError(f'Training positions moved inside their canvas cells reach {top}, beyond '
                     f'pe.seqpe.max_position {max_position}; raise it or lower pe.canvas_stride.')


def cell_offsets(key: jax.Array, num: int, train_shape: Sequence[int],
                 canvas: Sequence[int]) -> jax.Array:
  """int32[num, n]: offsets uniform over a canvas cell (`positions.canvas_cell`) without
  the zero offset, so every draw moves the training positions between the trained ones."""
  lo, hi = positions.canvas_cell(train_shape, canvas)
  sizes = tuple(int(x) for x in hi - lo)
  zero = int(np.ravel_multi_index(tuple(-lo), sizes))
  u = jax.random.randint(key, (num,), 0, int(np.prod(sizes)) - 1)
  u = u + (u >= zero)
  return (jnp.stack(jnp.unravel_index(u, sizes), axis=-1) + lo).astype(jnp.int32)


def check_ood(train_shape: Sequence[int], max_position: int, num_teachers: int,
              canvas: Sequence[int] = ()) -> None:
  """Raises ValueError unless OOD distillation is possible for this window and space."""
  if num_teachers > int(np.prod(train_shape)):
    raise ValueError(f'{num_teachers} OOD teachers exceed the {int(np.prod(train_shape))} '
                     'positions of the training window; lower pe.ood.num_teachers.')
  if canvas:  # Offsets inside the cells; `check_cells_fit` checks they fit.
    return
  if len(train_shape) == 1:
    (length,) = train_shape
    if max_position - length <= length // 4:
      raise ValueError(f'No OOD offset fits: [{length // 4}, {max_position - length}) is empty; '
                       'raise pe.seqpe.max_position.')
  elif len(train_shape) == 2:
    if _ood_offset_count(train_shape, max_position) < 1:
      raise ValueError(f'No OOD offset moves the {train_shape} window inside a '
                       f'{max_position}-wide grid; raise pe.seqpe.max_position.')
  else:
    raise ValueError('OOD distillation is defined for 1D and 2D positions, got '
                     f'{len(train_shape)}D.')


def _ood_offset_count(train_shape, max_position):
  h, w = train_shape
  return (max_position - h) * (max_position - w) - h * w


def sample_ood(key: jax.Array, *, train_shape: Sequence[int], max_position: int, num_groups: int,
               num_teachers: int, canvas: Sequence[int] = ()) -> dict[str, jax.Array]:
  """Per group, teachers int32[G, n_t] (distinct row-major indices into the training window)
  and one offset int32[G, n] that moves them to the students (docs/method.md §6)."""
  n = int(np.prod(train_shape))
  teacher_key, offset_key = jax.random.split(key)
  priority = rng.uniform(teacher_key, (num_groups, n))
  teachers = jnp.argsort(priority, axis=1)[:, :num_teachers].astype(jnp.int32)
  if canvas:
    offsets = cell_offsets(offset_key, num_groups, train_shape, canvas)
  elif len(train_shape) == 1:
    (length,) = train_shape
    offsets = rng.randint(offset_key, (num_groups, 1), length // 4, max_position - length)
  else:
    h, w = train_shape
    # Valid offsets row-major: rows < h allow columns [w, P-w), later rows all of [0, P-w).
    count = _ood_offset_count(train_shape, max_position)
    u = jax.random.randint(offset_key, (num_groups,), 0, count)
    narrow = max_position - 2 * w
    top = h * max(narrow, 0)
    in_top = u < top
    rest = u - top
    row = jnp.where(in_top, u // max(narrow, 1), h + rest // (max_position - w))
    col = jnp.where(in_top, w + u % max(narrow, 1), rest % (max_position - w))
    offsets = jnp.stack([row, col], axis=-1).astype(jnp.int32)
  return {'teachers': teachers, 'offsets': offsets}


def sample_logit_distill_probes(key: jax.Array, *, train_shape: Sequence[int],
                                max_position: int, num_windows: int, num_far_keys: int,
                                canvas: Sequence[int] = ()) -> dict[str, jax.Array]:
  """Where this step's logit distillation looks (docs/method.md §9): the offsets int32[S, n]
  of moved copies of the training window (1D: log-uniform, so extrapolation is judged at 2x,
  4x, ..., not at +L, +2L, ...) and, in 1D, F keys far int32[S, F, n] drawn before each copy
  at offset s, each standing for s / F keys (far_log_weight float32[S, F])."""
  offset_key, far_key = jax.random.split(key)
  if canvas:
    if num_far_keys:
      raise ValueError('A canvas copy moves inside its cells: it has no keys before it.')
    offsets = cell_offsets(offset_key, num_windows, train_shape, canvas)
  elif len(train_shape) == 1:
    top = max_position - train_shape[0]
    u = rng.uniform(offset_key, (num_windows, 1), maxval=math.log(top + 1))
    offsets = jnp.clip(jnp.floor(jnp.exp(u)), 1, top).astype(jnp.int32)
  else:
    extent = jnp.asarray(train_shape, jnp.int32)
    offsets = rng.randint(offset_key, (num_windows, len(train_shape)), 0, max_position - extent + 1)
  start = offsets[:, :1]  # [S, 1]: far keys are drawn before the copy's first axis.
  shape = (num_windows, num_far_keys)
  position = rng.randint(far_key, shape + (1,), 0, start[:, None, :])[..., 0]
  log_weight = jnp.broadcast_to(-jnp.log(num_far_keys / start.astype(jnp.float32)), shape)
  far = jnp.broadcast_to(position[..., None], (num_windows, num_far_keys, len(train_shape)))
  return {'offsets': offsets, 'far': far, 'far_log_weight': log_weight}


def _shift_starts(train_shape, max_position, canvas):
  """Per-axis window starts a shifted step may use: (lowest, count)."""
  if canvas:
    lo, hi = positions.canvas_cell(train_shape, canvas)
    return lo, hi - lo
  return np.zeros(len(train_shape), int), np.asarray([max_position - n + 1 for n in train_shape])


def check_shift(train_shape: Sequence[int], max_position: int, pool_size: int,
                canvas: Sequence[int] = ()) -> None:
  """Raises ValueError unless the shift pool fits the window starts of the space."""
  total = int(np.prod(_shift_starts(train_shape, max_position, canvas)[1]))
  if pool_size > total:
    raise ValueError(f'The shift pool of {pool_size} exceeds the {total} window starts that fit; '
                     'lower pe.shift.pool_size.')


def shift_pool(key: jax.Array, *, train_shape: Sequence[int], max_position: int,
               pool_size: int, canvas: Sequence[int] = ()) -> jax.Array:
  """The run's fixed pool of window starts, int32[M, n]: the first M of all starts that fit
  (on a canvas, the offsets inside a cell), shuffled alike by every process."""
  check_shift(train_shape, max_position, pool_size, canvas)
  lowest, counts = _shift_starts(train_shape, max_position, canvas)
  counts = tuple(int(c) for c in counts)
  chosen = jax.random.permutation(key, int(np.prod(counts)))[:pool_size]
  return (jnp.stack(jnp.unravel_index(chosen, counts), axis=-1) + lowest).astype(jnp.int32)


def sample_shift(key: jax.Array, pool: jax.Array, *, num_windows: int, prob: float):
  """This step's main windows (shifted bool[], offsets int32[W, n]): with probability `prob`,
  W cyclically consecutive pool entries from a random start, else all at 0 (docs/method.md §7)."""
  coin_key, start_key = jax.random.split(key)
  shifted = jax.random.bernoulli(coin_key, prob)
  start = jax.random.randint(start_key, (), 0, pool.shape[0])
  offsets = pool[(start + jnp.arange(num_windows)) % pool.shape[0]]
  return shifted, jnp.where(shifted, offsets, 0)
