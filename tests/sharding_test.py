"""The private JAX API sharding.py relies on, so an upgrade that moves it fails here first."""

import jax

from seqpe_jax import sharding


def test_the_coordination_barrier_is_where_sharding_looks_for_it():
  assert sharding.coordination_client() is None  # One process: never initialised.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  assert hasattr(distributed.global_state, 'client')
  # sharding calls wait_at_barrier(name, timeout in ms) positionally.
  doc = _jax.DistributedRuntimeClient.wait_at_barrier.__doc__
  assert doc.startswith('wait_at_barrier(self, barrier_id: str, timeout_in_ms: int'), doc


def test_one_process_needs_no_barrier():
  assert jax.process_count() == 1
  sharding.wait_for_all_processes('nothing to wait for')  # Returns at once.
