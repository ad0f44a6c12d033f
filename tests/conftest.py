"""Test setup: 8 fake CPU devices, set before JAX initialises its backend."""

import os
import pathlib
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests run tiny programs where XLA's optimisation passes cost more than they save; through
# the environment, the runs tests start as processes of their own (studies, launchers,
# command lines) skip them too (a third of a SeqPE smoke run's CPU time).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')

import jax  # pylint: disable=g-import-not-at-top
# Many tests train the same smoke configs (resume, sharding, studies): a shared on-disk
# compilation cache lets every later run, in any xdist worker, skip the compile.
jax.config.update('jax_compilation_cache_dir',
                  str(pathlib.Path(tempfile.gettempdir()) / 'seqpe_jax_tests_xla_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
