"""The train state: its parameters, optimizer and sharded shapes, for training and evaluation.

    optimizer = state.make_optimizer(task, config)
    fresh = state.init_state(task, optimizer, key)          # {'params', 'opt_state', ...}
    target = state.abstract_state(task, optimizer, mesh)    # shapes + shardings, no memory
"""

import jax
import jax.numpy as jnp
import optax

from seqpe_jax import optim, sharding


# State entries added after some checkpoints were written, with the value such a checkpoint
# restores to (Checkpointer.restore's `defaults`).
NEWER_ENTRIES = {'first_nonfinite_step': 0}


def init_state(task, optimizer, key):
  """Fresh parameters {'model', 'pe'}, optimizer state, step 0 and first_nonfinite_step 0."""
  pe_key, model_key = jax.random.split(key)
  pe_params = task.pe.init(pe_key, task.train_shape)
  features = task.pe.features(pe_params, task.train_shape)
  params = {'model': task.init_model(model_key, features), 'pe': pe_params}
  zero = jnp.zeros((), jnp.int32)
  return {'params': params, 'opt_state': optimizer.init(params), 'step': zero,
          'first_nonfinite_step': zero}


def make_optimizer(task, config) -> optax.GradientTransformation:
  """The optimizer; its clipping groups and decay masks come from the abstract parameters."""
  params = jax.eval_shape(lambda k: init_state(task, optax.identity(), k),
                          jax.random.key(0))['params']
  return optim.make(config.optimizer, params)


def abstract_state(task, optimizer, mesh):
  """Shapes, dtypes and target shardings of the train state, without allocating it."""
  shapes = jax.eval_shape(lambda k: init_state(task, optimizer, k), jax.random.key(0))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, sharding.tree_shardings(shapes, mesh))
