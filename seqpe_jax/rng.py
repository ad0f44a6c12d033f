"""Random draws of any shape that XLA:CPU compiles quickly.

jax.random lays a draw's threefry counters out in the draw's shape, and XLA:CPU compiles a
high-rank kernel slowly (~40x for a rank-6 draw of the reference sampler; `python -m
benchmarks.compile_draws`). The values are the same either way (tests/rng_test.py), so these
draw flat and reshape.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _flat(bound, shape):
  return jnp.broadcast_to(bound, shape).reshape(-1) if jnp.ndim(bound) else bound


def uniform(key: jax.Array, shape, minval=0.0, maxval=1.0) -> jax.Array:
  """float32[shape], as jax.random.uniform(key, shape, minval=, maxval=)."""
  shape = tuple(shape)
  return jax.random.uniform(key, (math.prod(shape),), minval=_flat(minval, shape),
                            maxval=_flat(maxval, shape)).reshape(shape)


def randint(key: jax.Array, shape, minval, maxval) -> jax.Array:
  """int32[shape], as jax.random.randint(key, shape, minval, maxval)."""
  shape = tuple(shape)
  return jax.random.randint(key, (math.prod(shape),), _flat(minval, shape),
                            _flat(maxval, shape)).reshape(shape)


def bernoulli(key: jax.Array, p, shape) -> jax.Array:
  """bool[shape], as jax.random.bernoulli(key, p, shape)."""
  shape = tuple(shape)
  return jax.random.bernoulli(key, _flat(p, shape), (math.prod(shape),)).reshape(shape)


class Dropout(nn.Module):
  """flax's nn.Dropout (the same masks from the same 'dropout' rng), its mask drawn flat."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if self.rate == 0.0 or deterministic:
      return x
    keep = 1.0 - self.rate
    mask = bernoulli(self.make_rng('dropout'), keep, x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
