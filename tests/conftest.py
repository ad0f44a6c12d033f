"""Test setup: 8 fake CPU devices, set before JAX initialises its backend."""

import os
import pathlib
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

# Tests run tiny programs where XLA's optimisation passes cost more than they save.
jax.config.update('jax_disable_most_optimizations', True)
# Many tests train the same smoke configs (resume, sharding, studies): a shared on-disk
# compilation cache lets every later run, in any xdist worker, skip the compile.
jax.config.update('jax_compilation_cache_dir',
                  str(pathlib.Path(tempfile.gettempdir()) / 'seqpe_jax_tests_xla_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
