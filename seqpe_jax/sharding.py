"""Device mesh and sharding rules: one code path from 1 CPU to a pod.

The mesh has axes ('data', 'fsdp', 'tensor'), sized from config with one -1. Parameters
follow a rule table on their paths: matrices split their output features over 'tensor'
(when it divides) and their largest remaining dimension over 'fsdp' (when it divides and
the tensor is big enough to be worth it); everything that does not divide stays
replicated, so tiny test models run on any mesh. Batches split over ('data', 'fsdp').
"""

import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
MIN_FSDP_SIZE = 2**12  # Smaller tensors are replicated: sharding them costs more than it saves.
# Kernels whose last dimension is split over 'tensor' (column-parallel).
TENSOR_RULES = (r'mlp_in/kernel$', r'qkv/kernel$', r'qkv_kernel$')


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh of all devices with the configured axis sizes (one may be -1)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  sizes = [mesh_cfg[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError('At most one of mesh.data, mesh.fsdp, mesh.tensor may be -1.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if devices.size % known:
    raise ValueError(f'The mesh {dict(zip(AXES, sizes))} does not divide {devices.size} devices.')
  sizes = [devices.size // known if s == -1 else s for s in sizes]
  # A fully specified mesh may use the first devices only (e.g. 1x1x1 on a multi-device host).
  devices = devices.reshape(-1)[:int(np.prod(sizes))]
  # Auto axes: the compiler picks intermediate shardings (an Explicit mesh would ask us to).
  return Mesh(devices.reshape(sizes), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """The PartitionSpec of one parameter from its '/'-joined path and shape."""
  spec = [None] * len(shape)
  tensor, fsdp = mesh.shape['tensor'], mesh.shape['fsdp']
  if tensor > 1 and len(shape) >= 2 and any(re.search(r, path) for r in TENSOR_RULES):
    if shape[-1] % tensor == 0:
      spec[-1] = 'tensor'
  if fsdp > 1 and int(np.prod(shape)) >= MIN_FSDP_SIZE:
    free = [i for i in np.argsort(shape)[::-1] if spec[i] is None and shape[i] % fsdp == 0]
    if free:
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


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
