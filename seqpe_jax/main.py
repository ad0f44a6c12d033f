"""Entry point: python -m seqpe_jax.main --config=configs/vit_seqpe.py --workdir=DIR."""

import logging as std_logging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from seqpe_jax import train

config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  std_logging.getLogger('orbax').setLevel(std_logging.WARNING)  # Per-file save chatter.
  # Multi-host launches (launch/*.sh) set this; a single process never initialises.
  if os.environ.get('SEQPE_DISTRIBUTED') or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()
  logging.info('Process %d of %d; %d local of %d devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
