"""Long-context evaluation cost: memory and time of one GPT forward at 2k..16k tokens.

    python -m benchmarks.long_context [--pes=seqpe,alibi] [--lengths=2048,4096,8192,16384]

For the tiny GPT (batch 1) with each PE, prints per length: the memory XLA assigns to the
compiled forward's temporaries and outputs (its peak working set besides parameters and
inputs; the [L, vocabulary] logits are part of it) and
the median time of one forward on the blockwise path, next to the memory of the same
forward with dense attention (compiled, and run only up to --dense_max). The ratios
16k/8k show how each grows with length: about 2 for linear memory, 4 for an L x L
score matrix. The PE table is computed once per length, outside the timed forward.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.timing import describe_backend, median_seconds
from seqpe_jax import posenc
from seqpe_jax.models import gpt, transformer
from seqpe_jax.posenc import config as pe_config


def build(pe_name: str, max_length: int, implementation: str, vocab: int):
  cfg = pe_config.get_config()
  cfg.name = pe_name
  cfg.inject.method = 'attn_scalar' if pe_name == 'seqpe' else ''
  cfg.inject.qk_proj = 'shared'
  cfg.seqpe.max_position, cfg.seqpe.d_model, cfg.seqpe.num_heads = max_length, 64, 2
  pe = posenc.build(cfg, gpt.host_spec('tiny', 128))
  model = gpt.GPT(vocab, pe=pe, attention=transformer.AttentionOptions(implementation, 512),
                  **gpt.parse_variant('tiny'))
  return pe, model


def temp_mib(compiled) -> float:
  """Temporaries plus outputs (the logits) of a compiled program, from XLA's buffer plan."""
  memory = compiled.memory_analysis()
  if memory is None:
    return float('nan')
  return (memory.temp_size_in_bytes + memory.output_size_in_bytes) / 2**20


def run(pe_name: str, lengths, vocab: int, dense_max: int, repeats: int):
  pe, blockwise = build(pe_name, max(lengths), 'blockwise', vocab)
  _, dense = build(pe_name, max(lengths), 'xla', vocab)
  pe_params = pe.init(jax.random.key(0), (128,))
  params = jax.jit(lambda k: blockwise.init(k, jnp.zeros((1, 128), jnp.int32),
                                            pe.features(pe_params, (128,))))(
                                                jax.random.key(1))['params']
  rows = []
  for length in lengths:
    table = posenc.TableCache(pe, pe_params)((length,))
    tokens = jax.random.randint(jax.random.key(2), (1, length), 0, vocab)
    forward = {name: jax.jit(lambda p, x, f, m=m: m.apply({'params': p}, x, f)).lower(
        params, tokens, table).compile() for name, m in (('blockwise', blockwise),
                                                         ('dense', dense))}
    seconds = median_seconds(forward['blockwise'], params, tokens, table, repeats=repeats)
    dense_seconds = (median_seconds(forward['dense'], params, tokens, table, repeats=repeats)
                     if length <= dense_max else float('nan'))
    rows.append((length, temp_mib(forward['blockwise']), seconds, temp_mib(forward['dense']),
                 dense_seconds))
  print(f'\n{pe_name}: tiny GPT, batch 1, vocabulary {vocab}')
  print(f"{'tokens':>7} | {'blockwise MiB':>13} {'time s':>7} | {'dense MiB':>10} {'time s':>7}")
  for length, mem, sec, dense_mem, dense_sec in rows:
    print(f'{length:>7} | {mem:>13.1f} {sec:>7.2f} | {dense_mem:>10.1f} {dense_sec:>7.2f}')
  if len(rows) >= 2:
    (l1, m1, s1, d1, _), (l2, m2, s2, d2, _) = rows[-2], rows[-1]
    print(f'{l2}/{l1}: blockwise memory {m2 / m1:.2f}x, time {s2 / s1:.2f}x | '
          f'dense memory {d2 / d1:.2f}x')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pes', default='seqpe,alibi')
  parser.add_argument('--lengths', default='2048,4096,8192,16384')
  parser.add_argument('--vocab', type=int, default=4096)
  parser.add_argument('--dense_max', type=int, default=4096,
                      help='Run the dense forward only up to this length (it is quadratic).')
  parser.add_argument('--repeats', type=int, default=1)
  args = parser.parse_args()
  print(describe_backend())
  lengths = [int(x) for x in args.lengths.split(',')]
  for pe_name in args.pes.split(','):
    run(pe_name, lengths, args.vocab, args.dense_max, args.repeats)


if __name__ == '__main__':
  main()
