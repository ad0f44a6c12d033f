"""AdamW with warm-up + cosine, separate clipping of the SeqPE encoder, decay masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqpe_jax import choices

NO_DECAY_NAMES = ('cls', 'prefix', 'table', 'freqs')  # Class token and position vectors.
SCHEDULES = ('cosine', 'linear')


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up from `warmup_init` to `lr`, then `cfg.schedule` decay to `min_lr`: the
  ViT recipe's 'cosine' (timm's: the warm-up replaces its start) or GPT-2's 'linear' (HF's)."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  if cfg.schedule not in SCHEDULES:
    raise choices.unknown('optimizer.schedule', cfg.schedule, SCHEDULES)
  if cfg.schedule == 'linear':
    return optax.join_schedules([
        optax.linear_schedule(cfg.warmup_init, cfg.lr, warmup),
        optax.linear_schedule(cfg.lr, cfg.min_lr, max(total_steps - warmup, 1))], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=cfg.warmup_init, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.min_lr)


def _path_names(path) -> list[str]:
  return [str(getattr(k, 'key', k)) for k in path]


def is_seqpe_encoder(path) -> bool:
  """The SeqPE encoder subtree: params['pe']['encoder']."""
  return _path_names(path)[:2] == ['pe', 'encoder']


def decays(path, x) -> bool:
  """Weight decay for host matrices only: not biases, LayerNorms, CLS or position vectors,
  and not the SeqPE encoder (whose decay is `seqpe_weight_decay`, applied separately)."""
  names = _path_names(path)
  return names[0] == 'model' and x.ndim >= 2 and names[-1] not in NO_DECAY_NAMES


def seqpe_decays(path, x) -> bool:
  """SeqPE encoder matrices that may decay: never the digit/slot/axis/CLS embeddings."""
  return is_seqpe_encoder(path) and x.ndim >= 2 and not _path_names(path)[-1].endswith('embed')


def clip_groups(cfg, params) -> optax.GradientTransformation:
  """Global-norm clipping of the SeqPE encoder and of everything else, each on its own."""
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: 'seqpe' if is_seqpe_encoder(p) else 'host', params)
  return optax.multi_transform({'seqpe': optax.clip_by_global_norm(cfg.clip_seqpe),
                                'host': optax.clip_by_global_norm(cfg.clip_host)}, labels)


def make(cfg, params) -> optax.GradientTransformationExtraArgs:
  """The optimizer for params {'model', 'pe'}; its `update` takes the step's `learning_rate=`."""
  return optax.chain(
      clip_groups(cfg, params),
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      optax.add_decayed_weights(
          cfg.weight_decay, mask=jax.tree_util.tree_map_with_path(decays, params)),
      optax.add_decayed_weights(
          cfg.seqpe_weight_decay, mask=jax.tree_util.tree_map_with_path(seqpe_decays, params)),
      scale_by_given_learning_rate())


def scale_by_given_learning_rate() -> optax.GradientTransformationExtraArgs:
  """`optax.scale_by_learning_rate` with the rate passed to `update(..., learning_rate=)`, so
  runs of other rates share one compiled step; its state keeps checkpoints' layout."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, *, learning_rate, **extra_args):
    del params, extra_args
    updates = jax.tree.map(lambda g: jnp.array(-1 * learning_rate, dtype=g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)


def learning_rates(cfg, total_steps: int) -> np.ndarray:
  """float32[total_steps]: the schedule's rate at every (0-based) update count, computed once."""
  counts = jnp.arange(max(total_steps, 1), dtype=jnp.int32)
  return np.asarray(jax.device_get(schedule(cfg, total_steps)(counts)), np.float32)


def global_norms(grads) -> dict[str, jax.Array]:
  """Gradient norms of the two clipping groups, for logging."""
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  seqpe = [g for p, g in leaves if is_seqpe_encoder(p)]
  host = [g for p, g in leaves if not is_seqpe_encoder(p)]
  return {'grad_norm/seqpe': optax.tree.norm(seqpe), 'grad_norm/host': optax.tree.norm(host)}


def encoder_norm(pe_grads) -> jax.Array:
  """Global norm of the SeqPE encoder's part of a PE gradient (0 for the baselines)."""
  return (optax.tree.norm(pe_grads['encoder']) if 'encoder' in pe_grads
          else jnp.zeros((), jnp.float32))


def encoder_grad_ratio(pe_task_grads, pe_reg_grads) -> jax.Array:
  """||task gradient|| / ||regulariser gradient|| on the SeqPE encoder (inf for a zero one)."""
  task_norm, reg_norm = encoder_norm(pe_task_grads), encoder_norm(pe_reg_grads)
  return jnp.where(reg_norm > 0, task_norm / jnp.where(reg_norm > 0, reg_norm, 1.0), jnp.inf)
