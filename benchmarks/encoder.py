"""SeqPE table cost at the paper's encoder sizes: compile time, steady time, memory.

    python -m benchmarks.encoder [--repeats=10]

Prints, in one run: the compile time and the steady-state time of the jitted table for
16,384 text positions (d=768, 12 heads, k=5) and a 42x42 image grid (d=384, 6 heads,
k=2), the compiled program's temporary memory, and, as ratios measured in the same run,
how much faster the jitted table is than the same encoder run op by op, and how much
faster on-device digitisation is than the reference's host-side `str()` digitisation.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import describe_backend, median_seconds
from seqpe_jax import positions, posenc
from seqpe_jax.posenc import config as pe_config
from seqpe_jax.posenc import seqpe

CASES = {
    'text 16384 positions': dict(shape=(16_384,), k=5, d=768, heads=12, d_out=768),
    'image 42x42 grid': dict(shape=(42, 42), k=2, d=384, heads=6, d_out=384),
}


def reference_style_digits(shape, k):
  """What the reference does per position on the host: zero-padded str(), one int per char."""
  return [[int(c) for coord in pos for c in str(coord).zfill(k)] for pos in np.ndindex(*shape)]


def run_case(name, shape, k, d, heads, d_out, repeats):
  enc = seqpe.SeqPEEncoder(ndim=len(shape), num_digits=k, d_out=d_out, d_model=d,
                           num_heads=heads)
  params = jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, len(shape) * k), jnp.int32))
  params = params['params']

  def table(params):
    return seqpe.encode_positions(enc, params, positions.grid(shape))

  start = time.perf_counter()
  compiled = jax.jit(table).lower(params).compile()
  compile_s = time.perf_counter() - start
  steady_s = median_seconds(compiled, params, repeats=repeats, warmup=False)
  eager_s = median_seconds(table, params, repeats=1, warmup=False)
  host_s = median_seconds(reference_style_digits, shape, k, repeats=1, warmup=False)
  device_digits = jax.jit(lambda: positions.digitize(positions.grid(shape), width=k))
  device_digits_s = median_seconds(device_digits, repeats=repeats)
  memory = compiled.memory_analysis()
  temp_mb = getattr(memory, 'temp_size_in_bytes', 0) / 2**20 if memory else float('nan')
  print(f'{name}: {int(np.prod(shape))} positions, {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M params')
  print(f'  compile {compile_s:.2f} s | jitted table {steady_s * 1e3:.1f} ms '
        f'({steady_s / np.prod(shape) * 1e6:.2f} us/position) | temp memory {temp_mb:.0f} MiB')
  print(f'  op-by-op / jitted = {eager_s / steady_s:.1f}x | digitisation: host str() (reference) '
        f'/ jitted on device = {host_s / device_digits_s:.0f}x')
  if len(shape) == 1:  # posenc.TableCache encodes long 1D tables in chunks.
    chunked = chunked_table(shape, k, d, heads, d_out)
    chunked_s = median_seconds(chunked[0], chunked[1], repeats=repeats)
    memory = chunked[0].memory_analysis()
    print(f'  TableCache in chunks of 4,096: {chunked_s * 1e3:.1f} ms, temp memory '
          f'{memory.temp_size_in_bytes / 2**20:.0f} MiB')


def chunked_table(shape, k, d, heads, d_out):
  """The compiled chunked table of a SeqPE PE with these sizes, and its parameters."""
  cfg = pe_config.get_config()
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.num_digits = d, heads, k
  cfg.seqpe.max_position, cfg.seqpe.d_out = 10**k - 1, d_out
  pe = posenc.build(cfg, posenc.HostSpec(d_out, heads, (512,), causal=True))
  params = pe.init(jax.random.key(0), (512,))
  return posenc.jitted_table(pe, tuple(shape), 4096).lower(params).compile(), params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  print(describe_backend())
  for name, case in CASES.items():
    run_case(name, repeats=args.repeats, **case)


if __name__ == '__main__':
  main()
