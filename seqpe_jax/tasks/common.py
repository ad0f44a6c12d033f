"""What every task does the same way: build the PE and its regularisers, validated early."""

from collections.abc import Iterable, Sequence

import jax.numpy as jnp

from seqpe_jax import choices, posenc
from seqpe_jax.posenc import regularizers

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_dtype(config):
  """config.model.dtype (float32 for runs saved before it) as a JAX dtype: the host's
  activations and matmuls (parameters, optimizer state, softmax and losses stay float32)."""
  name = config.model.get('dtype', 'float32')
  if name not in DTYPES:
    raise choices.unknown('model.dtype', name, DTYPES)
  return DTYPES[name]


def build_pe(config, host: posenc.HostSpec, eval_shapes: Iterable[Sequence[int]]):
  """(PE, SeqPE's regularisers or None, a baseline's shifted windows or None) for `host`;
  fails now on a batch that cannot share the windows or an evaluation shape out of reach."""
  pe = posenc.build(config.pe, host)
  reg = regularizers.build(config.pe, pe)
  shifts = posenc.shifts.build(config.pe, pe, posenc.REGISTRY[pe.name].shifts)
  drawer = reg or shifts  # Whichever draws the training windows.
  if drawer and config.batch_size % drawer.num_windows:
    raise ValueError(f'batch_size={config.batch_size} cannot share pe.shift.num_windows='
                     f'{drawer.num_windows} windows evenly; use a batch that is a multiple of it.')
  for shape in eval_shapes:
    pe.check_shape(shape)
  return pe, reg, shifts
