"""Does the PE carry position? The diag/* scalars logged beside the training metrics; what
each measures and what a dead PE reads is tabled in docs/experiments.md."""

import jax
import jax.numpy as jnp

from seqpe_jax import optim


def ablate_positions(features, num_prefix: int):
  """Every grid position's features (leaves [W, P+N, ...]) set to the first grid position's."""
  def ablate(x):
    first = x[:, num_prefix:num_prefix + 1]
    return x.at[:, num_prefix:].set(jnp.broadcast_to(first, x[:, num_prefix:].shape))
  return jax.tree.map(ablate, features)


def embedding_spread(e_ND: jax.Array) -> jax.Array:
  """mean_i ||e_i - mean|| / mean_i ||e_i||."""
  e = e_ND.astype(jnp.float32)
  centred = jnp.linalg.norm(e - e.mean(0), axis=-1).mean()
  return centred / jnp.maximum(jnp.linalg.norm(e, axis=-1).mean(), 1e-30)


def make_diagnostics(task, gradients):
  """(params, train_batch, step, heldout_batch) -> diag/* scalars; `gradients` is the
  trainer's `make_gradients(...)`, so the ratio is of exactly this step's gradients."""
  pe = task.pe
  num_prefix = pe.host.num_prefix  # The Task contract declares `pe`, whose host spec this is.

  def diagnose(params, train_batch, step, heldout_batch):
    features = pe.features(params['pe'], task.train_shape)
    logits, state = task.logits(params['model'], heldout_batch, features, train=False,
                                mutable=['intermediates'])
    ablated = task.logits(params['model'], heldout_batch, ablate_positions(features, num_prefix),
                          train=False)
    heldout_loss = lambda logits: task.loss(logits, heldout_batch)[0]
    spreads = jax.tree.leaves(state['intermediates'])
    out = {'diag/pe_ablation_delta': heldout_loss(ablated) - heldout_loss(logits),
           'diag/pos_term_std': jnp.mean(jnp.stack(spreads)) if spreads else jnp.zeros(())}
    if 'e' in features:
      out['diag/pe_spread'] = embedding_spread(features['e'][0, num_prefix:])
    if task.regularizers is not None:
      _, grads = gradients(params, train_batch, step, split=True)
      out['diag/grad_ratio'] = optim.encoder_grad_ratio(grads['pe_task'], grads['pe_reg'])
    return out

  return diagnose
