"""Test setup: 8 fake CPU devices, set before JAX initialises its backend."""

import importlib.metadata
import os
import pathlib
import tempfile

# XLA:CPU's older emitters compile small programs (every eager operation of a test is one) in
# about half the time of its fusion emitters: 30% less CPU for test files run on an empty
# compilation cache, the same on a full one; the pinned one-step numbers pass under both.
# Only on the jaxlib versions tested with it: XLA aborts on a flag it no longer knows.
_FAST_COMPILE = ('--xla_cpu_use_fusion_emitters=false'
                 if importlib.metadata.version('jaxlib').startswith('0.10.') else '')
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {_FAST_COMPILE}')
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
