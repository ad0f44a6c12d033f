"""Device mesh and sharding rules: one code path from 1 CPU to a pod.

The mesh has axes ('data', 'fsdp', 'tensor'), one may be -1. Matrices split their output features
over 'tensor' (TENSOR_RULES) and their largest other dimension over 'fsdp'; what does not divide
stays replicated, so tiny test models run on any mesh. Batches split over ('data', 'fsdp').
"""

import itertools
import re

import jax
from absl import logging
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
MIN_FSDP_SIZE = 2**12  # Smaller tensors are replicated: sharding them costs more than it saves.
# Kernels whose last dimension is split over 'tensor' (column-parallel).
TENSOR_RULES = (r'mlp_in/kernel$', r'qkv/kernel$', r'qkv_kernel$')


def make_mesh(mesh_cfg) -> Mesh:
  """A mesh with the configured axis sizes (one may be -1), laid out by the topology-aware
  `jax.make_mesh`; a fully specified smaller mesh uses the first devices only, and says so."""
  devices = np.asarray(jax.devices())
  sizes = [mesh_cfg[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError('At most one of mesh.data, mesh.fsdp, mesh.tensor may be -1.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Mesh axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if devices.size % known:
    raise ValueError(f'The mesh {dict(zip(AXES, sizes))} does not divide {devices.size} devices.')
  sizes = [devices.size // known if s == -1 else s for s in sizes]
  # Auto axes: the compiler picks intermediate shardings (an Explicit mesh would ask us to).
  axis_types = (AxisType.Auto,) * len(AXES)
  used = int(np.prod(sizes))
  if used == devices.size:
    return jax.make_mesh(tuple(sizes), AXES, axis_types=axis_types, devices=list(devices))
  logging.warning('The mesh %s uses %d of %d devices; the others stay idle (set one axis to '
                  '-1 to use them all).', dict(zip(AXES, sizes)), used, devices.size)
  return Mesh(devices[:used].reshape(sizes), AXES, axis_types=axis_types)


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """The PartitionSpec of one parameter from its '/'-joined path and shape."""
  spec = [None] * len(shape)
  tensor, fsdp = mesh.shape['tensor'], mesh.shape['fsdp']
  if tensor > 1 and len(shape) >= 2 and any(re.search(r, path) for r in TENSOR_RULES):
    if shape[-1] % tensor == 0:
      spec[-1] = 'tensor'
  if fsdp > 1 and int(np.prod(shape)) >= MIN_FSDP_SIZE:
    if free := [i for i in np.argsort(shape)[::-1] if spec[i] is None and shape[i] % fsdp == 0]:
      spec[free[0]] = 'fsdp'
  return P(*spec)


def tree_shardings(abstract_tree, mesh: Mesh):
  """NamedShardings for every leaf of a (possibly abstract) parameter tree."""
  def leaf(path, x):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    return NamedSharding(mesh, param_spec(name, tuple(x.shape), mesh))
  return jax.tree_util.tree_map_with_path(leaf, abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data-parallel devices."""
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch % shards:
    raise ValueError(f'batch_size={global_batch} is not divisible by the {shards} data-parallel '
                     f'devices (mesh.data x mesh.fsdp); use a multiple of {shards}.')


def eval_batch_size(requested: int, mesh: Mesh) -> int:
  """`eval.batch_size` rounded up to a multiple of the data-parallel devices: evaluation pads
  its batches with masked examples, so any configured size runs on any mesh."""
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  return -(-requested // shards) * shards


def process_rows(global_batch_size: int, mesh: Mesh) -> np.ndarray:
  """The rows of a global batch that this process feeds (its devices' shards, in order)."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  rows = sorted({r for index in index_map.values() for r in range(global_batch_size)[index[0]]})
  return np.asarray(rows, np.int64)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of the batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def global_batch_from_full(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """A batch every process holds in full -> global arrays, each process giving its own rows."""
  rows = process_rows(len(next(iter(batch.values()))), mesh)
  return global_batch({k: v[rows] for k, v in batch.items()}, mesh)


def sum_per_batch(outputs) -> np.ndarray:
  """The float64 sum of a jitted evaluation step's replicated outputs (scalars per batch),
  each read after the next batch is dispatched: one in flight (dispatching every batch before
  reading any can starve XLA:CPU's collectives on a few cores)."""
  total = None
  # pairwise draws the next output (dispatching it) before it yields the pair; None: the last.
  for out, _ in itertools.pairwise(itertools.chain(outputs, [None])):
    values = np.asarray(jax.device_get(out), np.float64)
    total = values if total is None else total + values
  return np.zeros(0) if total is None else total


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
  """A barrier of all processes through the coordination service (no device collective, so
  it may be long: e.g. until every host has compiled). A no-op in a single process."""
  if jax.process_count() > 1:
    coordination_client().wait_at_barrier(name, timeout_s * 1000)


def coordination_client():
  """The client of JAX's coordination service (None before jax.distributed.initialize).
  Private JAX: the public barrier is a device collective, whose set-up times out long before a
  slow host finishes compiling; tests/sharding_test.py fails when a JAX upgrade moves it."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client
