"""Timing helpers shared by the benchmarks: medians of repeated, blocked calls."""

import statistics
import time

import jax


def median_seconds(fn, *args, repeats: int, warmup: bool = True) -> float:
  """Median wall time of `fn(*args)` until its result is ready; warm-up calls compile."""
  if warmup:
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def describe_backend() -> str:
  return f'JAX {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}'
