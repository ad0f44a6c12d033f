"""Test setup: 8 fake CPU devices, set before JAX initialises its backend."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

# Tests run tiny programs where XLA's optimisation passes cost more than they save.
jax.config.update('jax_disable_most_optimizations', True)
