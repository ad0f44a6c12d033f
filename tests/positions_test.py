"""Digitisation: the method doc's worked examples, round trips, range errors, no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import positions


@pytest.mark.parametrize('pos, base, width, digits', [
    ([123], 10, 5, [0, 0, 1, 2, 3]),
    ([0], 10, 5, [0, 0, 0, 0, 0]),
    ([19_999], 10, 5, [1, 9, 9, 9, 9]),
    ([16_383], 10, 5, [1, 6, 3, 8, 3]),
    ([2, 3], 10, 1, [2, 3]),
    ([2, 3], 10, 2, [0, 2, 0, 3]),
    ([3, 12], 10, 2, [0, 3, 1, 2]),
    ([41, 41], 10, 2, [4, 1, 4, 1]),
    ([123], 16, 4, [0, 0, 7, 11]),
    ([1, 35, 36], 36, 2, [0, 1, 0, 35, 1, 0]),
])
def test_worked_examples(pos, base, width, digits):
  np.testing.assert_array_equal(positions.digitize(jnp.asarray(pos), base=base, width=width),
                                digits)


@pytest.mark.parametrize('max_position, base, k', [
    (20_000, 10, 5), (100, 10, 2), (1000, 10, 3), (1001, 10, 4), (1, 10, 1), (10, 10, 1),
    (8, 2, 3), (9, 2, 4), (36**3, 36, 3), (36**3 + 1, 36, 4)])
def test_num_digits_is_exact_at_powers(max_position, base, k):
  assert positions.num_digits(max_position, base) == k


@pytest.mark.parametrize('seed', range(5))
def test_digitize_round_trips_for_random_bases(seed):
  rng = np.random.default_rng(seed)
  base = int(rng.integers(2, 37))
  width = int(rng.integers(1, 6))
  ndim = int(rng.integers(1, 4))
  pos = rng.integers(0, base**width, size=(7, 5, ndim))
  digits = positions.digitize(jnp.asarray(pos), base=base, width=width)
  chex.assert_shape(digits, (7, 5, ndim * width))
  assert int(digits.min()) >= 0 and int(digits.max()) < base
  np.testing.assert_array_equal(positions.undigitize(digits, base=base, width=width), pos)



def test_grid_is_row_major_with_offsets():
  np.testing.assert_array_equal(positions.grid((2, 3)),
                                [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
  np.testing.assert_array_equal(positions.grid((3,), start=(10,)), [[10], [11], [12]])
  g = positions.grid((2, 3, 4), start=jnp.asarray([1, 0, 5]))
  chex.assert_shape(g, (24, 3))
  np.testing.assert_array_equal(g[-1], [2, 2, 8])


@pytest.mark.parametrize('pos, message', [
    ([100_000], 'Position 100000 does not fit 5 base-10 digits (valid range 0..99999)'),
    ([-1], 'Position -1 does not fit 5 base-10 digits'),
])
def test_out_of_range_positions_are_an_error(pos, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    positions.digitize(np.asarray(pos), width=5)


def test_extent_check_and_bad_base():
  positions.check_extent_fits((100, 100), base=10, width=2)
  with pytest.raises(ValueError, match='Position 100 does not fit 2 base-10 digits'):
    positions.check_extent_fits((101, 14), base=10, width=2)
  with pytest.raises(ValueError, match='base must be between 2 and 36, got 37'):
    positions.digitize(jnp.asarray([1]), base=37, width=2)


def test_new_positions_of_the_same_shape_do_not_retrace():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def digits_of(pos):
    return positions.digitize(pos, base=10, width=5)

  chex.clear_trace_counter()
  first = digits_of(jnp.asarray([[1], [2]]))
  second = digits_of(jnp.asarray([[99_999], [12_345]]))
  np.testing.assert_array_equal(first, [[0, 0, 0, 0, 1], [0, 0, 0, 0, 2]])
  np.testing.assert_array_equal(second, [[9, 9, 9, 9, 9], [1, 2, 3, 4, 5]])
