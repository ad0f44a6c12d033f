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

# Many tests train the same smoke configs (resume, sharding, studies): a shared on-disk
# compilation cache lets every later run skip the compile, in any xdist worker and in the
# runs tests start as processes of their own (which read it from the environment).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(tempfile.gettempdir()) / 'seqpe_jax_tests_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
