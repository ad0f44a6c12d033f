"""Compile time of random draws: jax.random's shaped draw against seqpe_jax.rng's flat one.

    python -m benchmarks.compile_draws

Prints, in one run, the XLA compile time of each draw (a fresh compile each: the persistent
cache is off) and, as the sampler that made the difference, the reference hard-negative
sampler at the paper's ViT setting. The draws give the same values (tests/rng_test.py).
"""

import time

import jax
import jax.numpy as jnp

from benchmarks.timing import describe_backend, describe_load
from seqpe_jax import rng
from seqpe_jax.posenc import contrastive_sampling

# The reference sampler's largest draw ([2, pivots x hard, chains, attempts, swap draws] at
# 14 pivot rows), a dropout mask of the SeqPE encoder, a small matrix.
SHAPES = ((2, 14, 8, 4, 32, 11), (3984, 5, 64), (64, 320))


def compile_seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def main():
  jax.config.update('jax_enable_compilation_cache', False)
  print(f'{describe_backend()}; {describe_load()}')
  print('| draw | shape | jax.random (shaped) | seqpe_jax.rng (flat) | ratio |')
  print('|---|---|---|---|---|')
  key = jax.random.key(0)
  for shape in SHAPES:
    shaped = compile_seconds(lambda k, s=shape: jax.random.uniform(k, s), key)
    flat = compile_seconds(lambda k, s=shape: rng.uniform(k, s), key)
    print(f'| uniform | {shape} | {shaped:.1f} s | {flat:.1f} s | {shaped / flat:.0f}x |')
  spec = contrastive_sampling.contrastive_spec(
      ndim=2, max_position=100, num_digits=2, train_shape=(14, 14), base=10, num_pivots=1,
      num_candidates=40, hard_fraction=0.2, hard_negative_rules='reference')
  pivots = jnp.zeros((14, 2), jnp.int32)
  seconds = compile_seconds(lambda k, p: contrastive_sampling.hard_negatives(k, p, spec), key,
                            pivots)
  print(f'\nreference hard-negative sampler ({spec.num_hard} per pivot, 14 pivots): '
        f'compiled in {seconds:.1f} s')


if __name__ == '__main__':
  main()
