"""Timing helpers shared by the benchmarks: medians of repeated, blocked calls."""

import ctypes
import os
import resource
import statistics
import time

import jax


CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def median_seconds(fn, *args, repeats: int, warmup: bool = True, clock: str = 'wall') -> float:
  """Median time of `fn(*args)` until its result is ready; warm-up calls compile.

  `clock='cpu'` counts this process's CPU seconds (all its threads) instead of wall
  seconds: on a machine shared with other jobs it moves less with their load.
  """
  now = CLOCKS[clock]
  if warmup:
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = now()
    jax.block_until_ready(fn(*args))
    times.append(now() - start)
  return statistics.median(times)


def describe_backend() -> str:
  return f'JAX {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}'


def describe_load() -> str:
  """The machine's load, so a reader can judge how noisy a run's times are."""
  one, five, _ = os.getloadavg()
  return f'{os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min)'


def describe_process() -> str:
  """This process's peak resident memory and page faults so far (Linux units)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return (f'process: peak RSS {usage.ru_maxrss / 1e6:.2f} GB, {usage.ru_minflt / 1e6:.1f} M minor '
          f'page faults, {usage.ru_utime:.0f} s user, {usage.ru_stime:.0f} s system')


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Asks glibc to keep freed memory for reuse instead of returning it to the kernel.

  XLA on CPU allocates each step's temporaries (gigabytes at ViT-S/16) afresh per call;
  glibc serves blocks that large with mmap and unmaps them on free, so every step
  faults in and the kernel zeroes every page again (millions of minor faults, tens of
  seconds of system time per run). With one arena (XLA's threads would otherwise mmap
  from their own), mmap off for large blocks and trimming off (mallopt(3)), the freed
  block is reused by the next step. Call it before JAX's first computation. The price is
  fragmentation: at ViT-S/16 batch 8 (SeqPE) faults fell 4.8 M -> 1.9 M and system time
  10 -> 4.6 s, but the peak RSS rose 4.1 -> 7.8 GB, so the benchmark leaves it off by
  default. Returns False where glibc is not the allocator.
  """
  try:
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  except (OSError, AttributeError):
    return False
