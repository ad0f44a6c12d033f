"""Samplers: nearest labels, valid hard negatives, OOD offsets, shift pool, mixing ratios."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax.posenc import contrastive_sampling, sampling

TEXT = dict(ndim=1, max_position=20_000, base=10, num_digits=5, train_shape=(512,),
            num_pivots=16, num_candidates=32)
IMAGE = dict(ndim=2, max_position=100, base=10, num_digits=2, train_shape=(14, 14),
             num_pivots=32, num_candidates=64)

sample = jax.jit(contrastive_sampling.sample_contrastive, static_argnums=1)


@pytest.mark.parametrize('setting', [TEXT, IMAGE, dict(IMAGE, max_position=20, num_candidates=40,
                                                       train_shape=(4, 4))], ids=['text', 'image', 'small'])
def test_candidates_and_labels(setting):
  spec = contrastive_sampling.contrastive_spec(**setting)
  out = jax.tree.map(np.asarray, sample(jax.random.key(0), spec))
  b, k, n = spec.num_pivots, spec.num_candidates, spec.ndim
  chex.assert_shape([out['pivots'], out['candidates'], out['valid'], out['labels']],
                    [(b, n), (b, k, n), (b, k), (b,)])
  for pivot, cands, valid, label in zip(out['pivots'], out['candidates'], out['valid'],
                                        out['labels']):
    kept = [tuple(c) for c, v in zip(cands, valid) if v]
    assert tuple(pivot) not in kept
    assert len(set(kept)) == len(kept)  # No duplicates among usable candidates.
    assert np.all((cands >= 0) & (cands < spec.max_position))
    dist = np.where(valid, ((cands - pivot)**2).sum(-1), np.iinfo(np.int64).max)
    assert label == np.argmin(dist)  # np.argmin returns the first index on ties.
  assert out['valid'].mean() > 0.99


def test_label_takes_the_first_of_tied_candidates():
  # The method doc's example: pivot (5, 5), candidates (4, 5) at 2 and (5, 6) at 6 tie.
  pivot = np.array([5, 5])
  cands = np.array([[9, 9], [0, 0], [4, 5], [7, 7], [8, 1], [2, 2], [5, 6]])
  dist = contrastive_sampling.squared_distance(jnp.asarray(pivot), jnp.asarray(cands))
  assert int(jnp.argmin(dist)) == 2


def _edit_ball(s, depth):
  """Every string within `depth` insert/delete/swap/replace edits of s."""
  ball, frontier = {s}, {s}
  for _ in range(depth):
    nxt = set()
    for t in frontier:
      for i in range(len(t) + 1):
        nxt.update(t[:i] + d + t[i:] for d in '0123456789')
      for i in range(len(t)):
        nxt.add(t[:i] + t[i + 1:])
        nxt.update(t[:i] + d + t[i + 1:] for d in '0123456789')
        for j in range(i + 1, len(t)):
          nxt.add(t[:i] + t[j] + t[i + 1:j] + t[i] + t[j + 1:])
    frontier = nxt - ball
    ball |= nxt
  return ball


def test_hard_negatives_are_valid_nearby_numerals():
  spec = contrastive_sampling.contrastive_spec(**dict(TEXT, num_pivots=24))
  pivots = jax.random.randint(jax.random.key(1), (24, 1), 0, spec.max_position)
  hard, ok = jax.jit(contrastive_sampling.hard_negatives, static_argnums=2)(jax.random.key(2),
                                                                          pivots, spec)
  hard, ok, pivots = np.asarray(hard), np.asarray(ok), np.asarray(pivots)
  assert ok.mean() > 0.9
  for pivot, row, row_ok in zip(pivots[:, 0], hard[..., 0], ok):
    two_edits = _edit_ball(str(pivot), 2)
    for value in row[row_ok]:
      assert 0 <= value < spec.max_position and value != pivot
      # Within three edits: one edit from something two edits from the pivot.
      assert two_edits & _edit_ball(str(value), 1), (pivot, value)


def test_hard_negatives_in_2d_stay_on_the_grid():
  spec = contrastive_sampling.contrastive_spec(**IMAGE)
  pivots = jnp.asarray([[28, 19], [3, 12], [0, 0], [99, 99], [5, 0]])
  hard, ok = contrastive_sampling.hard_negatives(jax.random.key(3), pivots, spec)
  assert np.asarray(ok).mean() > 0.9
  hard = np.asarray(hard)[np.asarray(ok)]
  assert np.all((hard >= 0) & (hard < 100))


def test_hard_negatives_are_farther_than_the_nearest_candidate():
  spec = contrastive_sampling.contrastive_spec(**dict(IMAGE, mode_probs=(0.0, 1.0, 0.0),
                                                      num_pivots=64))
  out = jax.tree.map(np.asarray, sample(jax.random.key(4), spec))
  from_hard = (out['origin'] == 1) & out['valid']
  assert from_hard.sum() > 64 * spec.num_hard * 0.5
  dist = ((out['candidates'] - out['pivots'][:, None])**2).sum(-1)
  nearest = np.take_along_axis(dist, out['labels'][:, None], 1)
  assert np.all(dist[from_hard] > np.broadcast_to(nearest, dist.shape)[from_hard])
  assert not np.any(np.take_along_axis(from_hard, out['labels'][:, None], 1))


@pytest.mark.parametrize('setting', [TEXT, IMAGE], ids=['text', 'image'])
def test_mode_mix_matches_the_configured_ratios(setting):
  spec = contrastive_sampling.contrastive_spec(**dict(setting, num_pivots=4000))
  out = sample(jax.random.key(5), spec)
  counts = collections.Counter(np.asarray(out['mode']).tolist())
  for mode, prob in enumerate(spec.mode_probs):
    assert abs(counts[mode] / 4000 - prob) < 0.03  # ~4 standard deviations.
  # Candidates in window mode come from one window no larger than the configured one.
  window_rows = np.asarray(out['mode']) == 2
  window_cands = np.asarray(out['candidates'])[window_rows][:, :spec.num_candidates // 2]
  assert np.all(np.ptp(window_cands, axis=1) < spec.window)


def test_sampling_is_a_function_of_the_key():
  spec = contrastive_sampling.contrastive_spec(**IMAGE)
  a, b = sample(jax.random.key(6), spec), sample(jax.random.key(6), spec)
  c = sample(jax.random.key(7), spec)
  chex.assert_trees_all_equal(a, b)
  assert np.any(np.asarray(a['candidates']) != np.asarray(c['candidates']))


def test_ood_offsets_1d_range():
  out = sampling.sample_ood(jax.random.key(8), train_shape=(512,), max_position=20_000,
                            num_groups=2000, num_teachers=32)
  offsets, teachers = np.asarray(out['offsets']), np.asarray(out['teachers'])
  assert offsets.min() >= 128 and offsets.max() < 20_000 - 512
  assert all(len(set(row)) == 32 for row in teachers) and teachers.max() < 512


def test_ood_offsets_2d_cover_exactly_the_valid_set():
  h = w = 3
  p = 8
  out = sampling.sample_ood(jax.random.key(9), train_shape=(h, w), max_position=p,
                            num_groups=4000, num_teachers=4)
  seen = collections.Counter(map(tuple, np.asarray(out['offsets']).tolist()))
  valid = {(r, c) for r in range(p - h) for c in range(p - w) if not (r < h and c < w)}
  assert set(seen) == valid  # Every valid offset appears; no excluded one ever does.
  assert max(seen.values()) / min(seen.values()) < 2  # Roughly uniform (expected 250 each).


def test_shift_pool_and_rate():
  key = jax.random.key(10)
  pool = sampling.shift_pool(key, train_shape=(14, 14), max_position=100, pool_size=320)
  chex.assert_shape(pool, (320, 2))
  chex.assert_trees_all_equal(pool, sampling.shift_pool(key, train_shape=(14, 14),
                                                        max_position=100, pool_size=320))
  assert pool.max() <= 86 and len(set(map(tuple, np.asarray(pool).tolist()))) == 320
  draw = jax.jit(jax.vmap(lambda k: sampling.sample_shift(k, pool, num_windows=4, prob=0.1)))
  shifted, offsets = draw(jax.random.split(jax.random.key(11), 5000))
  assert abs(float(shifted.mean()) - 0.1) < 0.015
  assert np.all(np.asarray(offsets)[~np.asarray(shifted)] == 0)
  pool_set = set(map(tuple, np.asarray(pool).tolist()))
  assert all(tuple(o) in pool_set for o in np.asarray(offsets)[np.asarray(shifted)].reshape(-1, 2))


@pytest.mark.parametrize('setting, message', [
    (dict(IMAGE, max_position=5, num_candidates=25, train_shape=(2, 2)),
     '25 contrastive candidates do not fit a position space of 25 positions'),
    (dict(IMAGE, max_position=15), 'The 17x17 contrastive window does not fit the 15-wide grid'),
    (dict(TEXT, max_position=200), 'The contrastive window range 256 must be smaller'),
    (dict(TEXT, mode_probs=(0.5, 0.6, 0.0)), 'three non-negative probabilities'),
    # Two axes of 32,768^2 make 2^31 exactly, one past int32 (2 x 32,767^2 fits).
    (dict(IMAGE, max_position=32_769, num_digits=5, mode_probs=(1.0, 0.0, 0.0)),
     'Squared distances on a 32769-wide 2D space overflow'),
])
def test_bad_contrastive_settings(setting, message):
  with pytest.raises(ValueError, match=message):
    contrastive_sampling.contrastive_spec(**setting)


def test_the_widest_space_whose_squared_distances_fit_int32_is_accepted():
  contrastive_sampling.contrastive_spec(**dict(IMAGE, max_position=32_768, num_digits=5,
                                              mode_probs=(1.0, 0.0, 0.0)))


def test_bad_ood_and_shift_settings():
  with pytest.raises(ValueError, match='65 OOD teachers exceed the 64 positions'):
    sampling.check_ood((8, 8), 100, 65)
  with pytest.raises(ValueError, match='No OOD offset fits'):
    sampling.check_ood((512,), 600, 32)
  with pytest.raises(ValueError, match='The shift pool of 320 exceeds the 89 window starts'):
    sampling.shift_pool(jax.random.key(0), train_shape=(512,), max_position=600, pool_size=320)


@pytest.mark.parametrize('train_shape, canvas', [((3,), (33,)), ((4, 4), (16, 16)),
                                                 ((2, 5), (8, 20))])
def test_cells_fit_exactly_up_to_the_last_position_they_reach(train_shape, canvas):
  """The highest position a training position reaches inside its cell, by enumeration: a
  space one larger holds it, a space of exactly that size does not."""
  reach = 0
  for n, c in zip(train_shape, canvas):
    stride = c // n
    centres = (2 * np.arange(n) + 1) * c // (2 * n)
    reach = max(reach, int(centres.max()) + stride - stride // 2 - 1)
  sampling.check_cells_fit(train_shape, reach + 1, canvas)
  with pytest.raises(ValueError, match=f'reach {reach}, beyond pe.seqpe.max_position {reach}'):
    sampling.check_cells_fit(train_shape, reach, canvas)
