"""ViT train-step and evaluation time of SeqPE and the learnable APE at several batches, in one run.

    python -m benchmarks.train_step [--variant=S/16] [--image_size=224] [--batches=8,32]
                                    [--pes=ape,seqpe[,seqpe_injection]] [--repeats=3]
                                    [--dtype=float32]
                                    [--encoder_remat=all|matmuls]
                                    [--clock=wall|cpu] [--malloc=default|keep]
                                    [--ynn_fusions=auto|on|off]

Both use the paper's ViT config (SeqPE with its regularisers and random shifts at the
reference per-device sizes: 32 pivots x 64 candidates, 32 groups x 64 students, up to 32
shift windows); images are synthetic, since only time is measured. The step is the
trainer's: jitted with the state donated, run on its own output.

A SeqPE step takes one of two branches, decided by a coin drawn from the step number:
unshifted (one main window, 4,324 encoder sequences at 14x14, with distillation) or, with
probability pe.shift.prob, shifted (W windows, no distillation). Each is timed at a step
number whose coin names it, and every timed step's own `train/seqpe/shifted` metric is
checked. Printed per batch: APE; SeqPE unshifted, shifted and their mix at pe.shift.prob;
SeqPE's fixed cost (unshifted SeqPE - APE), which should not grow with the batch; the
evaluation forward with the PE table computed once; and the compiled step's XLA memory.
The last line is the process's peak RSS and page faults (run one PE and batch per process
to read them per configuration).

`seqpe_injection` is SeqPE with its regularisers cut to one pivot and one distillation
group: what is left of the fixed cost is the PE's way into the host (the per-example q/k
products of attn_mul, forward and backward, which grow with the batch by nature), and
SeqPE - seqpe_injection is the regularisers' share, which should stay flat.
"""

import argparse

import jax

from benchmarks import timing
from benchmarks.stepper import Stepper, synthetic_batch
from configs import vit_base
from seqpe_jax import cli, posenc, train
from seqpe_jax import state as state_lib
from seqpe_jax.posenc import regularizers
from seqpe_jax.tasks import classification

# What each --pes name builds: the PE and its config overrides.
PES = {'ape': ('ape', {}), 'seqpe': ('seqpe', {}),
       'seqpe_injection': ('seqpe', {'pe.contrastive.num_pivots': 1,
                                     'pe.contrastive.num_candidates': 4,
                                     'pe.ood.num_groups': 1, 'pe.ood.num_teachers': 2}),
       # SeqPE with the attention-level distillation (grid host: no far keys).
       'seqpe_attention': ('seqpe', {'pe.logit_distill.weight': 1.0,
                                     'pe.logit_distill.num_far_keys': 0})}


def build(pe_name: str, batch: int, variant: str, image_size: int, overrides=None,
          dtype: str = 'float32'):
  """(config, task) of the paper's ViT recipe at this size and host precision, on
  synthetic-shaped data; `overrides` ({'pe.seqpe.d_model': 32, ...}) shrink it (tests)."""
  config = vit_base.get_config('paper', pe=pe_name)
  config.model.dtype = dtype
  config.data.name, config.data.image_size = 'digits', image_size  # Shapes only.
  config.data.valid_size = 64
  config.model.variant, config.batch_size = variant, batch
  config.eval.resolutions = (image_size,)
  config.pe.contrastive.num_pivots = config.pe.ood.num_groups = 32
  config.pe.shift.num_windows = min(32, batch)
  config.update_from_flattened_dict(overrides or {})
  return config, classification.ClassificationTask(config)


def build_stepper(task, config, batch) -> Stepper:
  """The trainer's step for this task, from a fresh state, compiled."""
  key = jax.random.key(0)
  optimizer = state_lib.make_optimizer(task, config)
  state = jax.jit(lambda k: state_lib.init_state(task, optimizer, k))(key)
  step = train.make_train_step(task, optimizer, key, task.shift_pool(key))
  rate = config.optimizer.lr
  return Stepper.compile(task, state, batch, lambda s, b: step(s, b, rate))


def eval_seconds(task, state, batch, image_size: int, repeats: int, clock: str) -> float:
  """The evaluation forward with the PE table computed once per resolution."""
  features = posenc.TableCache(task.pe, state['params']['pe'])(task.grid(image_size))
  forward = jax.jit(lambda p, f, x: task.logits(p, x, f, train=False))
  return timing.median_seconds(forward, state['params']['model'], features, batch,
                               repeats=repeats, clock=clock)


def measure(name: str, batch_size: int, args, overrides=None) -> dict[str, float]:
  """Step times (per branch for SeqPE), evaluation time and XLA memory of one PES entry at
  one batch."""
  pe_name, own = PES[name]
  overrides = {**own, **(overrides or {})}
  if pe_name == 'seqpe':
    overrides = {'pe.seqpe.remat': args.encoder_remat, **overrides}
  config, task = build(pe_name, batch_size, args.variant, args.image_size, overrides,
                       args.dtype)
  batch = synthetic_batch(batch_size, args.image_size, task.channels)
  stepper = build_stepper(task, config, batch)
  out = {f'xla_{k}_gb': v for k, v in stepper.memory().items()}
  if task.regularizers is None:
    out['step'] = stepper.seconds(0, args.repeats, clock=args.clock)
  else:
    for branch, n in stepper.branch_steps().items():
      out[branch] = stepper.seconds(n, args.repeats, expect=branch, clock=args.clock)
    p = out['shift_prob'] = task.regularizers.shift_prob
    out['step'] = (1 - p) * out['unshifted'] + p * out['shifted']
  out['eval'] = eval_seconds(task, stepper.state, batch, args.image_size, args.repeats,
                             args.clock)
  return out


def fixed_cost_split(results: dict, batch: int) -> dict[str, float] | None:
  """SeqPE's unshifted fixed cost at `batch` (SeqPE - APE) split into its injection
  (seqpe_injection - APE) and regulariser (SeqPE - seqpe_injection) parts; None unless
  all three were measured."""
  try:
    ape, seqpe, injection = (results[(name, batch)] for name in ('ape', 'seqpe',
                                                                 'seqpe_injection'))
  except KeyError:
    return None
  return {'fixed': seqpe['unshifted'] - ape['step'],
          'injection': injection['unshifted'] - ape['step'],
          'regularizers': seqpe['unshifted'] - injection['unshifted']}


def report(results: dict, batches: list[int], shift_prob: float) -> None:
  ms = lambda s: f'{s * 1e3:7.0f}'
  print(f'{"batch":>5} | {"APE":>7} | {"SeqPE unshifted":>15} | {"shifted":>7} | '
        f'{"mix p=" + str(shift_prob):>9} | {"fixed":>7} | {"eval APE":>8} | {"SeqPE":>7} | '
        'XLA temporaries APE / SeqPE (GB)   [times in ms]')
  for b in batches:
    ape, seqpe = results.get(('ape', b)), results.get(('seqpe', b))
    cells = [f'{b:5d}', ms(ape['step']) if ape else '      -']
    cells += [f'{ms(seqpe["unshifted"]):>15}', ms(seqpe['shifted']), f'{ms(seqpe["step"]):>9}'] \
        if seqpe else ['-' * 15, '      -', '        -']
    cells.append(ms(seqpe['unshifted'] - ape['step']) if ape and seqpe else '      -')
    cells.append(f'{ms(ape["eval"]):>8}' if ape else '       -')
    cells.append(ms(seqpe['eval']) if seqpe else '      -')
    temps = ' / '.join(f'{r["xla_temporaries_gb"]:.2f}' for r in (ape, seqpe) if r)
    print(' | '.join(cells) + ' | ' + temps)
  if len(batches) < 2:
    return
  lo, hi = batches[0], batches[-1]
  ratio = lambda pe, key: results[(pe, hi)][key] / results[(pe, lo)][key]
  if all((pe, b) in results for pe in ('ape', 'seqpe') for b in (lo, hi)):
    fixed = lambda b: results[('seqpe', b)]['unshifted'] - results[('ape', b)]['step']
    print(f'SeqPE fixed cost (unshifted - APE) b{hi} / b{lo} = {fixed(hi) / fixed(lo):.2f} '
          '(target <= 1.15)')
  splits = {b: fixed_cost_split(results, b) for b in batches}
  for b, split in splits.items():
    if split:
      print(f'b{b}: SeqPE fixed cost {split["fixed"]:.3f} s = injection '
            f'{split["injection"]:.3f} s (per example) + regularisers '
            f'{split["regularizers"]:.3f} s (per step)')
  if splits[lo] and splits[hi]:
    print(f'SeqPE regularisers b{hi} / b{lo} = '
          f'{splits[hi]["regularizers"] / splits[lo]["regularizers"]:.2f} (flat: 1)')
  for pe in ('ape', 'seqpe'):
    if (pe, lo) in results and (pe, hi) in results:
      print(f'{pe}: train step b{hi} / b{lo} = {ratio(pe, "step"):.2f}, eval forward '
            f'b{hi} / b{lo} = {ratio(pe, "eval"):.2f} (batch ratio {hi / lo:g}; eval target '
            f'<= 4.2 for 4x)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='S/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batches', default='8,32', help='comma-separated batch sizes')
  parser.add_argument('--pes', default='ape,seqpe',
                      help=f"comma-separated: {', '.join(PES)}")
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='host activations (the issue tables are float32; :paper trains bf16)')
  parser.add_argument('--encoder_remat', choices=regularizers.REMAT, default='all',
                      help="what the backward of SeqPE's encoder pass recomputes "
                      "(pe.seqpe.remat)")
  parser.add_argument('--clock', choices=tuple(timing.CLOCKS), default='wall',
                      help="'cpu': this process's CPU seconds, steadier on a shared machine")
  parser.add_argument('--malloc', choices=('keep', 'default'), default='default',
                      help="'keep': glibc reuses freed memory across steps (fewer page faults "
                      "and less system time, but a higher peak RSS; timing.keep_freed_memory)")
  parser.add_argument('--ynn_fusions', choices=('auto', 'on', 'off'), default='auto',
                      help="'auto': as the entry points run for --dtype (float32: XLA:CPU "
                      "without its YNNPACK fusions, cli.prepare_process); 'on': XLA's "
                      "default; 'off': without them (bfloat16 does not compile so)")
  args = parser.parse_args()
  kept = args.malloc == 'keep' and timing.keep_freed_memory()
  if args.ynn_fusions == 'auto':
    cli.prepare_process(args.dtype)
  elif args.ynn_fusions == 'off':
    cli.without_ynn_fusions()
  batches = sorted(int(b) for b in args.batches.split(','))
  pes = args.pes.split(',')
  unknown = [pe for pe in pes if pe not in PES]
  if unknown:
    parser.error(f"unknown --pes {', '.join(unknown)}; use some of: {', '.join(PES)}")
  print(f'{timing.describe_backend()}; ViT-{args.variant} at {args.image_size} px, '
        f'{args.dtype}, encoder remat {args.encoder_remat}; {timing.describe_load()}; '
        f'{args.clock} seconds; freed memory '
        f'{"kept for reuse" if kept else "returned to the kernel"}; YNNPACK fusions '
        f'{args.ynn_fusions}')
  results = {}
  for b in batches:
    for pe in pes:
      results[(pe, b)] = measure(pe, b, args)
      print(f'  measured {pe} at batch {b}: ' + ', '.join(
          f'{k} {v:.3f}' for k, v in results[(pe, b)].items()), flush=True)
  shift_prob = next((r['shift_prob'] for r in results.values() if 'shift_prob' in r), 0.0)
  report(results, batches, shift_prob)
  print(timing.describe_process())


if __name__ == '__main__':
  main()
