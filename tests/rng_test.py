"""The flat draws give jax.random's values, element for element, at any rank."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqpe_jax import rng

SHAPE = (3, 5, 4, 7, 2)
KEY = jax.random.key(11)


def test_uniform_equals_the_shaped_draw_with_broadcast_bounds():
  low, high = jnp.arange(2.0), jnp.arange(1.0, 8.0)[:, None] + 2.0
  np.testing.assert_array_equal(rng.uniform(KEY, SHAPE, low, high),
                                jax.random.uniform(KEY, SHAPE, minval=low, maxval=high))


def test_randint_equals_the_shaped_draw_with_broadcast_bounds():
  high = jnp.arange(3, 10)[:, None]  # One bound per index of the fourth axis.
  np.testing.assert_array_equal(rng.randint(KEY, SHAPE, 1, high),
                                jax.random.randint(KEY, SHAPE, 1, high))


def test_bernoulli_equals_the_shaped_draw():
  np.testing.assert_array_equal(rng.bernoulli(KEY, 0.3, SHAPE),
                                jax.random.bernoulli(KEY, 0.3, SHAPE))


def test_dropout_masks_as_flax_does_under_the_same_rng():
  x = jax.random.normal(KEY, SHAPE)

  def apply(layer):
    return layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(3)})

  np.testing.assert_array_equal(apply(rng.Dropout(0.3)), apply(nn.Dropout(0.3)))
  assert float(jnp.mean(apply(rng.Dropout(0.3)) == 0)) > 0.2  # It does drop.
  np.testing.assert_array_equal(rng.Dropout(0.3).apply({}, x, deterministic=True), x)
