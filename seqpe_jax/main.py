"""Entry point: python -m seqpe_jax.main --config=configs/vit_seqpe.py --workdir=DIR.

One process per host; several form one run with the flags below (launch/ and
docs/clusters.md). Exit statuses: `seqpe_jax.cli`.
"""

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from seqpe_jax import cli, train
from seqpe_jax.data import cache

config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go (a local '
                    'path or a gs:// URL).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for a multi-process '
                    'run started by hand (with --num_processes and --process_id).')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
flags.DEFINE_bool('distributed', False, 'Join a multi-process run described by the cluster '
                  'environment (TPU VM pod, Slurm).')
flags.DEFINE_integer('init_timeout', 300, 'Seconds to wait for every process to join.')
flags.DEFINE_string('compilation_cache', None, "JAX's persistent compilation cache: a "
                    'directory (default $JAX_COMPILATION_CACHE_DIR, else the xla/ folder of '
                    "the project's cache, ~/.cache/seqpe_jax or $SEQPE_CACHE_DIR), or 'off'.")
flags.DEFINE_bool('compile_only', False, 'Compile the train step for the configured mesh, print '
                  'its per-device memory and FLOPs, and exit without training (no --workdir '
                  'needed).')
flags.mark_flags_as_required(['config'])


def initialize_processes(args) -> None:
  """Joins the run's other processes, if any; one sentence if they never answer."""
  names = ('coordinator_address', 'num_processes', 'process_id')
  explicit = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
  if explicit and len(explicit) < len(names):
    raise ValueError('Pass all of --coordinator_address, --num_processes and --process_id, '
                     'or none of them.')
  if not args.distributed and not explicit:
    return  # One process: nothing to join.
  try:
    jax.distributed.initialize(initialization_timeout=args.init_timeout, **explicit)
  except Exception as e:  # pylint: disable=broad-except
    where = args.coordinator_address or 'the coordinator named by the cluster environment'
    raise ValueError(f'Could not join the multi-process run at {where} within '
                     f'{args.init_timeout} s ({type(e).__name__}: {str(e)[:200]}); check that '
                     'every process was started with the same address and process count.') from e


def use_compilation_cache(directory: str | None) -> None:
  """Compiled steps kept on disk: a rerun, resume or sweep of a config skips XLA's compile."""
  directory = directory or os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(cache.root() / 'xla')
  if directory == 'off':
    return
  jax.config.update('jax_compilation_cache_dir', directory)
  # Small programs too: on CPU the train step of a small config compiles in seconds.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  cli.prepare_process(flags.FLAGS.config.model.get('dtype', 'float32'))
  with cli.exit_statuses():
    use_compilation_cache(flags.FLAGS.compilation_cache)
    initialize_processes(flags.FLAGS)
    if jax.process_count() > 1:  # Every host says it joined (each has its own log).
      print(f'Process {jax.process_index()} of {jax.process_count()}; {jax.local_device_count()} '
            f'local of {jax.device_count()} devices: {jax.devices()[0].device_kind}', flush=True)
    if flags.FLAGS.compile_only:
      print(train.format_compile_report(train.compile_report(flags.FLAGS.config)))
      return
    if not flags.FLAGS.workdir:
      raise app.UsageError('Pass --workdir=DIR (where the run writes), or --compile_only.')
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
