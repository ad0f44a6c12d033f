"""Where the ViT train step's time goes, per kind of XLA operation (a profile, not a timing).

    python -m benchmarks.op_profile [--pe=ape] [--batch=8] [--variant=S/16] [--image_size=224]
        [--steps=2] [--top=20]

Builds the paper's ViT recipe at this size as `benchmarks.train_step` does, compiles the
trainer's step, runs it once to warm up, then traces `--steps` steps with JAX's profiler
(a Perfetto trace under /tmp/op_profile_<pe><batch>) and prints, per kind of operation
(`dot`, `wrapped_reduce-window`, each fusion kind: the HLO name without its number), the
seconds per step and the count per step, most first, beside the step's wall time. The
operations' sum is below the wall time: the rest is the executor's own work and waiting.
"""

import argparse
import collections
import gzip
import json
import pathlib
import re

# Trace events that are not XLA operations: Python frames ('$file.py:line fn'), the
# executor and the jit dispatch.
_NOT_OPS = ('$', 'ThunkExecutor', 'PjitFunction', 'CommonPjRtLoadedExecutable')


def op_seconds(events: list[dict], steps: int) -> list[tuple[str, float, float]]:
  """[(kind, seconds per step, count per step)] of the complete ('X') events that are XLA
  operations, kinds named without their HLO number, most time first."""
  seconds, count = collections.defaultdict(float), collections.Counter()
  for event in events:
    if event.get('ph') != 'X' or 'dur' not in event or event['name'].startswith(_NOT_OPS):
      continue
    kind = re.sub(r'\.\d+$', '', event['name'])
    seconds[kind] += event['dur'] / 1e6  # Perfetto durations are microseconds.
    count[kind] += 1
  return sorted(((k, s / steps, count[k] / steps) for k, s in seconds.items()),
                key=lambda row: -row[1])


def read_trace(directory: pathlib.Path) -> list[dict]:
  path = sorted(directory.rglob('perfetto_trace.json.gz'))[-1]
  trace = json.load(gzip.open(path))
  return trace['traceEvents'] if isinstance(trace, dict) else trace


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pe', default='ape')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--variant', default='S/16')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=20)
  args = parser.parse_args()
  from seqpe_jax import cli  # pylint: disable=g-import-not-at-top
  cli.prepare_process()  # As the trainer's entry point sets XLA up.
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import stepper as stepper_lib, timing, train_step  # pylint: disable=g-import-not-at-top
  config, task = train_step.build(args.pe, args.batch, args.variant, args.image_size)
  batch = stepper_lib.synthetic_batch(args.batch, args.image_size, task.channels)
  stepper = train_step.build_stepper(task, config, batch)
  wall = stepper.seconds(0, 1, clock='wall')  # After a warm-up step.
  directory = pathlib.Path(f'/tmp/op_profile_{args.pe}{args.batch}')
  with jax.profiler.trace(str(directory), create_perfetto_trace=True):
    for _ in range(args.steps):
      jax.block_until_ready(stepper.run(0))
  rows = op_seconds(read_trace(directory), args.steps)
  print(f'{args.pe}, ViT-{args.variant} at {args.image_size} px, batch {args.batch} '
        f'({timing.describe_load()}): step {wall:.2f} s wall; operations '
        f'{sum(r[1] for r in rows):.2f} s per step')
  print('| operation | s per step | per step |\n|---|---:|---:|')
  for kind, seconds, count in rows[:args.top]:
    print(f'| {kind} | {seconds:.3f} | {count:g} |')


if __name__ == '__main__':
  main()
