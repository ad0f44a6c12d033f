"""One training step's SeqPE work: main PE, contrastive loss and OOD distillation loss.

Every position the step needs (main windows, contrastive pivots and candidates, OOD
students) goes through the encoder in a single forward pass and is split back afterwards.
A `lax.cond` on the shift coin picks between the common unshifted branch (one main window,
broadcast to W, plus distillation) and the shifted branch (W windows, no distillation), so
the step compiles once and only the taken branch runs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqpe_jax import positions
from seqpe_jax.posenc import losses, sampling


@dataclasses.dataclass(frozen=True)
class Regularizers:
  """Static settings of SeqPE's training-time work, validated from `config.pe`."""
  contrastive: sampling.ContrastiveSpec
  ct_weight: float
  ct_heads: int  # 0 = loss on the full vector.
  ct_logit_scale: float
  ood_weight: float
  ood_groups: int
  ood_teachers: int
  ood_heads: int
  ood_beta: float
  ood_metric: str
  shift_prob: float
  shift_pool_size: int
  num_windows: int
  train_shape: tuple[int, ...]
  max_position: int

  def shift_pool(self, key: jax.Array) -> jax.Array:
    """The run's fixed pool of window starts, from a key derived from the run's seed."""
    return sampling.shift_pool(key, train_shape=self.train_shape, max_position=self.max_position,
                               pool_size=self.shift_pool_size)


def build(cfg: ml_collections.ConfigDict, pe) -> Regularizers | None:
  """Regularisers for a SeqPE built by `posenc.build`; None for the baselines."""
  enc = pe.seqpe_encoder
  if enc is None:
    return None
  ct, ood, shift = cfg.contrastive, cfg.ood, cfg.shift
  for name, value in (('pe.contrastive.weight', ct.weight), ('pe.ood.weight', ood.weight),
                      ('pe.ood.beta', ood.beta)):
    if value < 0:
      raise ValueError(f'{name} must be non-negative, got {value}.')
  if not 0 <= shift.prob <= 1:
    raise ValueError(f'pe.shift.prob must be a probability, got {shift.prob}.')
  if ood.beta > 1:
    raise ValueError(f'pe.ood.beta must lie in [0, 1], got {ood.beta}.')
  if enc.d_out % enc.num_heads:
    raise ValueError(f'SeqPE d_out={enc.d_out} does not split into its {enc.num_heads} heads '
                     'for the distillation loss.')
  train_shape, max_position = pe.host.train_shape, cfg.seqpe.max_position
  positions.check_extent_fits((max_position,), base=enc.base, width=enc.num_digits)
  spec = sampling.contrastive_spec(
      ndim=enc.ndim, max_position=max_position, base=enc.base, num_digits=enc.num_digits,
      train_shape=train_shape, num_pivots=ct.num_pivots, num_candidates=ct.num_candidates,
      mode_probs=ct.mode_probs, hard_fraction=ct.hard_fraction, window_range=ct.window_range)
  sampling.check_ood(train_shape, max_position, ood.num_teachers)
  sampling.check_shift(train_shape, max_position, shift.pool_size)
  return Regularizers(
      contrastive=spec, ct_weight=ct.weight,
      ct_heads=enc.num_heads if ct.multi_head_loss else 0, ct_logit_scale=ct.logit_scale,
      ood_weight=ood.weight, ood_groups=ood.num_groups, ood_teachers=ood.num_teachers,
      ood_heads=enc.num_heads, ood_beta=ood.beta, ood_metric=ood.metric,
      shift_prob=shift.prob, shift_pool_size=shift.pool_size, num_windows=shift.num_windows,
      train_shape=train_shape, max_position=max_position)


def seqpe_step(pe, params, key: jax.Array, pool: jax.Array, reg: Regularizers, *,
               deterministic: bool = False):
  """The main-task PE features and the weighted SeqPE losses of one training step.

  Args:
    pe: a SeqPE `PositionalEncoding`.
    params: its source parameters.
    key: this step's key (derive it from the run seed and the step, so a resumed run
      draws what an uninterrupted run would).
    pool: `reg.shift_pool(...)`, fixed for the run.
    reg: the settings from `build`.
    deterministic: turn encoder dropout off (it is on for every position set in training).

  Returns:
    features {'e': [W, P+N, d_out]} for the host (example b uses window b mod W) and aux
    {'loss': w_ct L_ct + w_ood L_ood, 'contrastive_loss', 'ood_loss', 'shifted'}.
  """
  shift_key, ct_key, ood_key, dropout_key = jax.random.split(key, 4)
  shifted, offsets = sampling.sample_shift(shift_key, pool, num_windows=reg.num_windows,
                                           prob=reg.shift_prob)
  ct = sampling.sample_contrastive(ct_key, reg.contrastive)
  ood = sampling.sample_ood(ood_key, train_shape=reg.train_shape,
                            max_position=reg.max_position, num_groups=reg.ood_groups,
                            num_teachers=reg.ood_teachers)
  grid = positions.grid(reg.train_shape)  # [N, n]
  students = grid[ood['teachers']] + ood['offsets'][:, None]  # [G, n_t, n]

  def encode_together(*groups):
    """One encoder pass over every group's positions, split back into the groups."""
    flat = [g.reshape(-1, g.shape[-1]) for g in groups]
    e = pe.source.apply({'params': params}, jnp.concatenate(flat), deterministic=deterministic,
                        rngs={'dropout': dropout_key}, method='encode')
    splits = np.cumsum([f.shape[0] for f in flat])[:-1]
    return [part.reshape(*g.shape[:-1], -1) for part, g in zip(jnp.split(e, splits), groups)]

  def unshifted(_):
    main_Nd, pivots, cands, students_e = encode_together(grid, ct['pivots'], ct['candidates'],
                                                         students)
    ood_loss = losses.ood_distillation_loss(
        main_Nd[ood['teachers']], students_e, num_heads=reg.ood_heads, beta=reg.ood_beta,
        metric=reg.ood_metric)
    main = jnp.broadcast_to(main_Nd, (reg.num_windows,) + main_Nd.shape)
    return main, pivots, cands, ood_loss

  def shifted_windows(_):
    windows = grid[None] + offsets[:, None]  # [W, N, n]
    main, pivots, cands = encode_together(windows, ct['pivots'], ct['candidates'])
    return main, pivots, cands, jnp.zeros((), jnp.float32)

  main, pivots, cands, ood_loss = jax.lax.cond(shifted, shifted_windows, unshifted, None)
  ct_loss = losses.contrastive_loss(pivots, cands, ct['labels'], ct['valid'],
                                    num_heads=reg.ct_heads, logit_scale=reg.ct_logit_scale)
  features = pe.source.apply({'params': params}, main, method='with_prefix')
  aux = {'loss': reg.ct_weight * ct_loss + reg.ood_weight * ood_loss,
         'contrastive_loss': ct_loss, 'ood_loss': ood_loss, 'shifted': shifted}
  return features, aux
