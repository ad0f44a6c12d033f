"""Jittable sampler of SeqPE's contrastive pivots and candidates (docs/method.md §5.2) and of
pivots inside the training window. Unlike the reference's host-side strings, every draw is a
fixed-shape array from an explicit key in the jitted step: what fails is masked, not dropped.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import positions, rng
from seqpe_jax.posenc import reference_edits

MODES = ('uniform', 'hard', 'window')
# The reference's candidate mixes: (uniform, hard, window) probabilities and the hard share.
REFERENCE_MIX = {1: ((0.0, 0.4, 0.6), 0.25), 2: ((0.5, 0.3, 0.2), 0.2)}
EDITS = ('insert', 'delete', 'swap', 'replace')
EDIT_PROPOSALS = 8  # Proposals per edit; the first valid one is applied.
EDIT_CHAINS = 4  # Independent 1-3 edit chains per hard negative; the first valid one wins.
# 'clean': this codebase's digit-edit rules; 'reference': the reference's (reference_edits).
HARD_NEGATIVE_RULES = ('clean', 'reference')


@dataclasses.dataclass(frozen=True)
class ContrastiveSpec:
  """Static settings of the contrastive sampler, one per run (docs/method.md §5.2): n axes of
  P positions with k digits each, K candidates per pivot, the (uniform, hard, window)
  mode_probs, num_hard hard negatives, and a `window` (1D length, cut off at P, or 2D side)
  whose start is uniform in [0, window_starts) per axis."""
  ndim: int
  max_position: int
  base: int
  num_digits: int
  num_pivots: int
  num_candidates: int
  mode_probs: tuple[float, float, float]
  num_hard: int
  window: int
  window_starts: int
  hard_negative_rules: str = 'clean'

  @property
  def num_uniform(self) -> int:
    # K + 1 as in the reference, plus a few spares so that duplicates among uniform
    # draws (likely on a 100x100 grid) still leave K distinct candidates.
    return self.num_candidates + 1 + max(4, self.num_candidates // 8)


def contrastive_spec(*, ndim: int, max_position: int, base: int, num_digits: int,
                     train_shape: Sequence[int], num_pivots: int, num_candidates: int,
                     mode_probs: Sequence[float] | None = None,
                     hard_fraction: float | None = None, window_range: int = 256,
                     hard_negative_rules: str = 'clean') -> ContrastiveSpec:
  """Validates a contrastive configuration and fills the reference defaults for its ndim."""
  space = max_position**ndim
  if num_candidates < 1 or num_candidates > space - 1:
    raise ValueError(f'{num_candidates} contrastive candidates do not fit a position space of '
                     f'{space} positions besides the pivot; lower pe.contrastive.num_candidates.')
  if ndim * (max_position - 1)**2 >= 2**31:
    raise ValueError(f'Squared distances on a {max_position}-wide {ndim}D space overflow int32; '
                     'lower pe.seqpe.max_position.')
  default_probs, default_hard = REFERENCE_MIX.get(ndim, REFERENCE_MIX[2])
  probs = tuple(float(p) for p in (mode_probs or default_probs))
  if len(probs) != 3 or min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
    raise ValueError(f'mode_probs must be three non-negative probabilities of '
                     f'(uniform, hard, window) summing to 1, got {probs}.')
  hard_fraction = default_hard if hard_fraction is None else hard_fraction
  if not 0 <= hard_fraction < 1:
    raise ValueError(f'pe.contrastive.hard_fraction must lie in [0, 1), got {hard_fraction}.')
  hard = math.floor(hard_fraction * num_candidates)
  if hard_negative_rules not in HARD_NEGATIVE_RULES:
    raise ValueError(f"Unknown pe.contrastive.hard_negative_rules '{hard_negative_rules}'; use "
                     f"one of: {', '.join(HARD_NEGATIVE_RULES)}.")
  if probs[1] > 0 and ndim > 2:
    raise ValueError('Digit-edit hard negatives are defined for 1D and 2D positions; set '
                     'pe.contrastive.weight to 0 for more axes.')
  if probs[1] > 0 and base**(ndim * num_digits) >= 2**31:
    raise ValueError(f'{ndim * num_digits} base-{base} digits overflow int32 hard negatives; '
                     'use fewer digits or no hard mode.')
  if ndim == 1:
    window, starts = max(window_range, 5 * num_candidates), max_position - window_range
    if starts < 1:
      raise ValueError(f'The contrastive window range {window_range} must be smaller than the '
                       f'position space {max_position}.')
  else:
    window = max(math.isqrt(int(np.prod(train_shape))), math.isqrt(5 * num_candidates))
    starts = max_position - window
    if starts < 1:
      raise ValueError(f'The {window}x{window} contrastive window does not fit the '
                       f'{max_position}-wide grid; raise pe.seqpe.max_position or lower K.')
  return ContrastiveSpec(ndim, max_position, base, num_digits, num_pivots, num_candidates,
                         probs, hard, window, starts, hard_negative_rules)


def squared_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Sum over axes of (a - b)^2 on integer coordinates."""
  return jnp.sum(jnp.square(a - b), axis=-1)


def sample_contrastive(key: jax.Array, spec: ContrastiveSpec) -> dict[str, jax.Array]:
  """Pivots int32[B, n], candidates int32[B, K, n], valid bool[B, K] (False only when the
  draws ran out of distinct positions), labels int32[B] (the first nearest candidate), and
  the indices into MODES of each pivot's and candidate's mode: mode [B], origin [B, K]."""
  b, k, n, p = spec.num_pivots, spec.num_candidates, spec.ndim, spec.max_position
  keys = jax.random.split(key, 5)
  pivots = rng.randint(keys[0], (b, n), 0, p)
  mode = jax.random.choice(keys[1], 3, (b,), p=jnp.asarray(spec.mode_probs))
  uniform = rng.randint(keys[2], (b, spec.num_uniform, n), 0, p)
  window, window_ok = _window_draws(keys[3], spec)
  hard, hard_ok = hard_negatives(keys[4], pivots, spec)
  # A hard negative must be farther than the nearest non-pivot of the first K-n_hard uniform
  # draws, which always become candidates, so it is never the label (the reference compares
  # with K+1-n_hard draws, the last of which can be cut, and counts the pivot itself).
  first_uniform = squared_distance(pivots[:, None], uniform[:, :k - spec.num_hard])
  nearest_uniform = jnp.where(first_uniform == 0, jnp.iinfo(jnp.int32).max, first_uniform)
  hard_ok &= squared_distance(pivots[:, None], hard) > nearest_uniform.min(-1)[:, None]
  # The mode-specific list first, then the uniform pool; keep the first K usable entries.
  pool = jnp.concatenate([window, hard, uniform], axis=1)
  usable = jnp.concatenate([window_ok & (mode == 2)[:, None], hard_ok & (mode == 1)[:, None],
                            jnp.ones(uniform.shape[:2], bool)], axis=1)
  usable &= jnp.any(pool != pivots[:, None], axis=-1)
  same = jnp.all(pool[:, :, None] == pool[:, None, :], axis=-1)  # [B, M, M]
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), -1)
  usable &= ~jnp.any(same & earlier & usable[:, None, :], axis=-1)
  order = jnp.argsort(~usable, axis=1, stable=True)[:, :k]
  candidates = jnp.take_along_axis(pool, order[..., None], axis=1)
  origin = jnp.asarray([2] * window.shape[1] + [1] * hard.shape[1] + [0] * uniform.shape[1])
  valid = jnp.take_along_axis(usable, order, axis=1)
  return _with_labels(pivots, candidates, valid, mode, origin[order])


def sample_train_window_contrastive(key: jax.Array, train_shape: Sequence[int], *,
                                    num_pivots: int, num_candidates: int,
                                    canvas: Sequence[int] = ()) -> dict[str, jax.Array]:
  """`sample_contrastive`'s draws for pivots inside the training window, each with K other
  window positions as candidates, masked past the window's N - 1 others (docs/method.md §9)."""
  grid = positions.canvas_grid(train_shape, canvas)  # [N, n]
  n = grid.shape[0]
  pivot_key, pick_key = jax.random.split(key)
  pivot_idx = jax.random.randint(pivot_key, (num_pivots,), 0, n)
  priority = rng.uniform(pick_key, (num_pivots, n))
  priority = jnp.where(jnp.arange(n) == pivot_idx[:, None], 2.0, priority)  # Pivot last.
  order = jnp.argsort(priority, axis=1)[:, :num_candidates]
  if order.shape[1] < num_candidates:  # A window smaller than K: pad with masked entries.
    order = jnp.pad(order, [(0, 0), (0, num_candidates - order.shape[1])])
  valid = jnp.broadcast_to(jnp.arange(num_candidates) < min(num_candidates, n - 1), order.shape)
  window_mode = MODES.index('window')
  return _with_labels(grid[pivot_idx], grid[order], valid,
                      jnp.full((num_pivots,), window_mode, jnp.int32),
                      jnp.full(order.shape, window_mode, jnp.int32))


def _with_labels(pivots, candidates, valid, mode, origin):
  """The sampler's draws, labelled with each pivot's first nearest valid candidate."""
  distance = jnp.where(valid, squared_distance(pivots[:, None], candidates),
                       jnp.iinfo(jnp.int32).max)
  return {'pivots': pivots, 'candidates': candidates, 'valid': valid,
          'labels': jnp.argmin(distance, axis=1).astype(jnp.int32), 'mode': mode, 'origin': origin}


def _window_draws(key, spec: ContrastiveSpec):
  """K positions without replacement from a dense window placed independently of the pivot."""
  n, p, r = spec.ndim, spec.max_position, spec.window
  start_key, pick_key = jax.random.split(key)
  cells = jnp.stack(jnp.meshgrid(*[jnp.arange(r)] * n, indexing='ij'), -1).reshape(-1, n)
  start = rng.randint(start_key, (spec.num_pivots, 1, n), 0, spec.window_starts)
  window = start + cells[None]  # [B, R^n, n]
  inside = jnp.all(window < p, axis=-1)
  # Cells outside the space last: the first K are a draw without replacement from the rest.
  priority = rng.uniform(pick_key, inside.shape) + 2.0 * ~inside
  order = jnp.argsort(priority, axis=1)[:, :spec.num_candidates]
  return (jnp.take_along_axis(window, order[..., None], axis=1),
          jnp.take_along_axis(inside, order, axis=1))


def hard_negatives(key: jax.Array, pivots: jax.Array, spec: ContrastiveSpec):
  """Positions whose numerals look like the pivot's but lie elsewhere, by 1-3 digit edits of
  its unpadded numeral (docs/method.md §5.2): int32[B, n_hard, n] and bool[B, n_hard] (False:
  no hard negative). 'clean' rules keep the first of EDIT_CHAINS chains that gives a new,
  in-range position, and edit (0, 37) as "037" (the reference: "37")."""
  b, h, n = pivots.shape[0], spec.num_hard, spec.ndim
  if h == 0:
    return jnp.zeros((b, 0, n), jnp.int32), jnp.zeros((b, 0), bool)
  if spec.hard_negative_rules == 'reference':
    return _reference_hard_negatives(key, pivots, spec)
  string, length = _unpadded_numeral(pivots, spec)  # [B, S], [B]
  shape = (b, h, EDIT_CHAINS)
  string = jnp.broadcast_to(string[:, None, None], shape + string.shape[-1:])
  length = jnp.broadcast_to(length[:, None, None], shape)
  count_key, split_key, *edit_keys = jax.random.split(key, 5)
  num_edits = rng.randint(count_key, shape, 1, 4)
  ok = jnp.ones(shape, bool)
  for step, edit_key in enumerate(edit_keys[:3]):
    new_string, new_length, edited = _edit(edit_key, string, length, spec)
    apply = step < num_edits
    string = jnp.where(apply[..., None], new_string, string)
    length = jnp.where(apply, new_length, length)
    ok &= ~apply | edited
  coords, split_ok = _split_numeral(split_key, string, length, spec)  # [B, H, C, n]
  ok &= split_ok & jnp.all(coords < spec.max_position, axis=-1)
  ok &= jnp.any(coords != pivots[:, None, None], axis=-1)
  first = jnp.argmax(ok, axis=-1)  # First successful chain.
  hard = jnp.take_along_axis(coords, first[..., None, None], axis=2)[:, :, 0]
  return hard, jnp.any(ok, axis=-1)


def _reference_hard_negatives(key, pivots, spec: ContrastiveSpec):
  b, h, n, p = pivots.shape[0], spec.num_hard, spec.ndim, spec.max_position
  # The reference writes a 2D pivot as one number, so (0, 37) becomes "37".
  string, length = _without_leading_zeros(*_unpadded_numeral(pivots, spec))
  string = jnp.pad(string, [(0, 0), (0, 1)])  # Room for an insert past the limit.
  shape = (b, h, EDIT_CHAINS)
  string = jnp.broadcast_to(string[:, None, None], shape + string.shape[-1:])
  length = jnp.broadcast_to(length[:, None, None], shape)
  edit_key, split_key = jax.random.split(key)
  string, length, ok = reference_edits.edit_chain(
      edit_key, string, length, base=spec.base, max_digits=spec.num_digits, limit=p**n)
  # Read back as a number, as the reference does, before a 2D split.
  coords, split_ok = _split_numeral(split_key, *_without_leading_zeros(string, length), spec)
  first = jnp.argmax(ok, axis=-1)[..., None]  # The first chain whose edits all succeeded.
  hard = jnp.take_along_axis(coords, first[..., None], axis=2)[:, :, 0]
  valid = jnp.any(ok, axis=-1) & jnp.take_along_axis(split_ok, first, axis=2)[..., 0]
  # The reference drops a result equal to the pivot; off the grid happens only when P is
  # not a power of the base (the reference then keeps it; here it is dropped too).
  valid &= jnp.all(hard < p, axis=-1) & jnp.any(hard != pivots[:, None], axis=-1)
  return hard, valid


def _without_leading_zeros(string, length):
  """The digits of the number `string` writes, left-aligned (one 0 for zero)."""
  slot = jnp.arange(string.shape[-1])
  significant = (string != 0) | (slot >= length[..., None] - 1)
  zeros = jnp.argmax(significant, axis=-1)
  shifted = jnp.take_along_axis(string, (slot + zeros[..., None]).clip(max=slot.size - 1), -1)
  length = length - zeros
  return jnp.where(slot < length[..., None], shifted, 0), length


def _unpadded_numeral(pivots, spec: ContrastiveSpec):
  """Left-aligned digits of the pivot's unpadded coordinates, concatenated: [B, n*k], [B]."""
  k, n = spec.num_digits, spec.ndim
  digits = positions.digitize(pivots, base=spec.base, width=k).reshape(-1, n, k)
  significant = jnp.maximum(1, k - jnp.argmax(jnp.concatenate(
      [digits != 0, jnp.ones_like(digits[..., :1], bool)], -1), axis=-1))  # [B, n]
  ends = jnp.cumsum(significant, axis=-1)  # Where each axis' digits end in the string.
  slot = jnp.arange(n * k)
  axis = jnp.sum(slot[None, :, None] >= ends[:, None, :], axis=-1).clip(max=n - 1)  # [B, S]
  axis_digits = jnp.take_along_axis(significant, axis, 1)
  within = slot[None] - (jnp.take_along_axis(ends, axis, 1) - axis_digits)
  source = axis * k + k - axis_digits + within
  string = jnp.take_along_axis(digits.reshape(-1, n * k), source.clip(0, n * k - 1), axis=1)
  length = ends[:, -1]
  return jnp.where(slot[None] < length[:, None], string, 0), length


def _edit(key, string, length, spec: ContrastiveSpec):
  """One edit per string: the first valid of EDIT_PROPOSALS random proposals."""
  t, base, size = EDIT_PROPOSALS, spec.base, string.shape[-1]
  s = jnp.broadcast_to(string[..., None, :], string.shape[:-1] + (t, size))
  ell = jnp.broadcast_to(length[..., None], s.shape[:-1])
  kind_key, i_key, j_key, d_key = jax.random.split(key, 4)
  kind = rng.randint(kind_key, ell.shape, 0, len(EDITS))
  u_i, u_j, u_d = (rng.uniform(k_, ell.shape) for k_ in (i_key, j_key, d_key))
  i = jnp.floor(u_i * jnp.where(kind == 0, ell + 1, ell)).astype(jnp.int32)
  j = jnp.floor(u_j * jnp.maximum(ell - 1, 1)).astype(jnp.int32)
  j = j + (j >= i)  # A second, different slot for swaps.
  lo, hi = jnp.minimum(i, j), jnp.maximum(i, j)
  at = lambda idx: jnp.take_along_axis(s, idx.clip(0, size - 1)[..., None], -1)[..., 0]
  s_i, s_lo, s_hi, s_1 = at(i), at(lo), at(hi), at(jnp.ones_like(i))
  d_insert = jnp.where(i == 0, 1 + jnp.floor(u_d * (base - 1)), jnp.floor(u_d * base))
  d_replace = (s_i + 1 + jnp.floor(u_d * (base - 1)).astype(jnp.int32)) % base  # != s_i.
  slot = jnp.arange(size)
  right = jnp.take_along_axis(s, jnp.broadcast_to((slot - 1).clip(0), s.shape), -1)
  left = jnp.take_along_axis(s, jnp.broadcast_to((slot + 1).clip(max=size - 1), s.shape), -1)
  before_i = slot < i[..., None]
  inserted = jnp.where(before_i, s, jnp.where(slot == i[..., None],
                                              d_insert.astype(jnp.int32)[..., None], right))
  deleted = jnp.where(before_i, s, left)
  swapped = jnp.where(slot == lo[..., None], s_hi[..., None],
                      jnp.where(slot == hi[..., None], s_lo[..., None], s))
  replaced = jnp.where(slot == i[..., None], d_replace[..., None], s)
  new = jnp.select([kind[..., None] == c for c in range(4)], [inserted, deleted, swapped, replaced])
  new_length = ell + jnp.select([kind == 0, kind == 1], [1, -1], 0)
  valid = jnp.select([kind == 0, kind == 1, kind == 2], [
      ell < spec.num_digits,  # The reference compares with k, even for 2D strings.
      (ell > 1) & ~((i == 0) & (s_1 == 0)),
      (ell > 1) & (s_lo != s_hi) & ~((lo == 0) & (s_hi == 0)),
  ], ~((i == 0) & (ell > 1) & (d_replace == 0)))
  first = jnp.argmax(valid, axis=-1)
  new = jnp.take_along_axis(new, first[..., None, None], -2)[..., 0, :]
  new_length = jnp.take_along_axis(new_length, first[..., None], -1)[..., 0]
  return (jnp.where(slot < new_length[..., None], new, 0), new_length, jnp.any(valid, axis=-1))


def _split_numeral(key, string, length, spec: ContrastiveSpec):
  """Reads an edited string back as coordinates: [..., n] and whether that worked."""
  base, k, size = spec.base, spec.num_digits, string.shape[-1]
  slot = jnp.arange(size)

  def value(lo, hi):  # The number written by string[lo:hi].
    inside = (slot >= lo[..., None]) & (slot < hi[..., None])
    power = jnp.where(inside, hi[..., None] - 1 - slot, 0)
    return jnp.sum(jnp.where(inside, string * base**power, 0), axis=-1)

  if spec.ndim == 1:
    return value(jnp.zeros_like(length), length)[..., None], length >= 1
  pad_key, cut_key = jax.random.split(key)
  # A one-digit string gets a 0 prepended, or appended (its slot 1 is already 0), to split in two.
  one = length == 1
  prepend = one & rng.bernoulli(pad_key, 0.5, length.shape)
  string = jnp.where(prepend[..., None], jnp.roll(string, 1, axis=-1), string)
  length = jnp.where(one, 2, length)
  lo_cut, hi_cut = jnp.maximum(1, length - k), jnp.minimum(k, length - 1)
  cut = lo_cut + jnp.floor(rng.uniform(cut_key, length.shape) *
                           jnp.maximum(hi_cut - lo_cut + 1, 1)).astype(jnp.int32)
  coords = jnp.stack([value(jnp.zeros_like(cut), cut), value(cut, length)], axis=-1)
  return coords, lo_cut <= hi_cut
