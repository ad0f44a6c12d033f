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
  # Read back as numerals: each axis's `width` digits, most significant first.
  numerals = np.asarray(digits).reshape(7, 5, ndim, width) * base**np.arange(width)[::-1]
  np.testing.assert_array_equal(numerals.sum(-1), pos)



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


def test_the_range_error_names_the_coordinate_that_is_out():
  with pytest.raises(ValueError, match='Position 100 does not fit 2 base-10 digits'):
    positions.check_fits(np.asarray([0, 100]), base=10, width=2)  # 0 is fine, 100 is not.
  positions.check_fits(np.asarray([], np.int32), base=10, width=2)  # Nothing to check.


def test_extent_check_counts_the_offset_at_its_boundary():
  positions.check_extent_fits((10, 3), base=10, width=2, offset=90)  # Up to 99.
  with pytest.raises(ValueError, match='Position 100 does not fit'):
    positions.check_extent_fits((10, 3), base=10, width=2, offset=91)


def test_canvas_grid_puts_each_axis_at_the_centres_of_its_cells():
  """floor((2i + 1) C / 2n) per axis, worked by hand for cells that do not divide evenly."""
  np.testing.assert_array_equal(positions.canvas_grid((3,), (10,)), [[1], [5], [8]])
  np.testing.assert_array_equal(positions.canvas_grid((2, 3), (8, 33)),
                                [[2, 5], [2, 16], [2, 27], [6, 5], [6, 16], [6, 27]])
  np.testing.assert_array_equal(positions.canvas_grid((2, 3)), positions.grid((2, 3)))


def test_canvas_cells_and_strides():
  lo, hi = positions.canvas_cell((3, 2), (33, 8))  # Strides 11 and 4.
  np.testing.assert_array_equal(lo, [-5, -2])
  np.testing.assert_array_equal(hi, [6, 2])
  assert positions.canvas_of((7, 5), 2) == (14, 10)
  with pytest.raises(ValueError, match='pe.canvas_stride must be 0'):
    positions.canvas_of((7, 5), -1)


def test_num_digits_needs_a_position():
  assert positions.num_digits(1) == 1
  with pytest.raises(ValueError, match='max_position must be at least 1, got 0'):
    positions.num_digits(0)
