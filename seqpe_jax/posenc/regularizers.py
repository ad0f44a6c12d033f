"""One training step's SeqPE work: main PE, contrastive and OOD distillation losses, and the
probes of the optional logit distillation, with every position in one encoder pass and a
`lax.cond` on the shift coin, so the step compiles once (docs/method.md §7-§9)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqpe_jax import positions
from seqpe_jax.posenc import contrastive_sampling, inject, losses, sampling
from seqpe_jax.posenc import shifts as shifts_lib

BALANCE = ('none', 'grad_norm')
# What the backward of the regularisers' encoder pass recomputes (pe.seqpe.remat).
REMAT = ('matmuls', 'all')


@dataclasses.dataclass(frozen=True)
class Regularizers:
  """Static settings of SeqPE's training-time work, validated from `config.pe`."""
  contrastive: contrastive_sampling.ContrastiveSpec | None  # None: all pivots in the window.
  ct_train_pivots: int  # Pivots drawn inside the training window (pe.contrastive.train_fraction).
  ct_num_candidates: int
  ct_weight: float
  ood_weight: float
  ood_groups: int
  ood_teachers: int
  ood_heads: int
  shift_prob: float
  shift_pool_size: int
  num_windows: int
  train_shape: tuple[int, ...]
  max_position: int
  warmup_steps: int = 0
  balance: str = 'none'
  remat: str = 'all'
  distill_weight: float = 0.0  # pe.logit_distill.
  distill_windows: int = 4
  distill_far_keys: int = 64
  causal: bool = False  # The host's attention: the distillation compares what it sees.
  canvas: tuple[int, ...] = ()  # pe.canvas_stride's: the training positions lie on it.

  def weight_scale(self, step: jax.Array) -> jax.Array:
    """The weight multiplier at 0-based optimizer `step`: a linear ramp to 1 over warmup."""
    if self.warmup_steps == 0:
      return jnp.ones((), jnp.float32)
    return jnp.clip((jnp.asarray(step, jnp.float32) + 1) / self.warmup_steps, 0.0, 1.0)

  def shift_pool(self, key: jax.Array) -> jax.Array:
    """The run's fixed pool of window starts, from a key derived from the run's seed."""
    return sampling.shift_pool(key, train_shape=self.train_shape, max_position=self.max_position,
                               pool_size=self.shift_pool_size, canvas=self.canvas)


def build(cfg: ml_collections.ConfigDict, pe) -> Regularizers | None:
  """Regularisers for a SeqPE built by `posenc.build`; None for the baselines."""
  enc = pe.seqpe_encoder
  if enc is None:
    return None
  ct, ood, shift, distill = cfg.contrastive, cfg.ood, cfg.shift, cfg.logit_distill
  control = cfg.regularizers
  shifts_lib.check(shift)
  for name, value, ok, rule in (
      ('pe.contrastive.weight', ct.weight, ct.weight >= 0, 'be non-negative'),
      ('pe.ood.weight', ood.weight, ood.weight >= 0, 'be non-negative'),
      ('pe.logit_distill.weight', distill.weight, distill.weight >= 0, 'be non-negative'),
      ('pe.regularizers.warmup_steps', control.warmup_steps, control.warmup_steps >= 0,
       'be a non-negative number of steps'),
      ('pe.contrastive.train_fraction', ct.train_fraction, 0 <= ct.train_fraction <= 1,
       'lie in [0, 1]'),
      # The contrastive loss is computed (and logged) at any weight, so it needs pivots.
      ('pe.contrastive.num_pivots', ct.num_pivots, ct.num_pivots >= 1, 'be at least 1'),
      ('pe.logit_distill.num_windows', distill.num_windows,
       not distill.weight or distill.num_windows >= 1, 'be a positive number of window copies'),
      ('pe.logit_distill.num_far_keys', distill.num_far_keys,
       not distill.weight or distill.num_far_keys >= 0, 'be a non-negative number of keys')):
    if not ok:
      raise ValueError(f'{name} must {rule}, got {value}.')
  for name, value, allowed in (('pe.regularizers.balance', control.balance, BALANCE),
                               ('pe.seqpe.remat', cfg.seqpe.remat, REMAT)):
    if value not in allowed:
      raise ValueError(f"Unknown {name} '{value}'; use one of: {', '.join(allowed)}.")
  if enc.d_out % enc.num_heads:
    raise ValueError(f'SeqPE d_out={enc.d_out} does not split into its {enc.num_heads} heads '
                     'for the distillation loss.')
  train_shape, max_position = pe.host.train_shape, cfg.seqpe.max_position
  canvas = pe.source.canvas  # pe.canvas_stride's, as the source encodes the task's grids.
  positions.check_extent_fits((max_position,), base=enc.base, width=enc.num_digits)
  train_pivots = round(ct.train_fraction * ct.num_pivots)
  spec = None
  if train_pivots < ct.num_pivots:
    spec = contrastive_sampling.contrastive_spec(
        ndim=enc.ndim, max_position=max_position, base=enc.base, num_digits=enc.num_digits,
        train_shape=train_shape, num_pivots=ct.num_pivots - train_pivots,
        num_candidates=ct.num_candidates, window_range=ct.window_range,
        hard_negative_rules=ct.hard_negative_rules)
  if distill.weight and distill.num_far_keys and not (pe.host.causal and enc.ndim == 1):
    raise ValueError('pe.logit_distill.num_far_keys samples keys before a moved window, which only '
                     'a causal 1D host has; set it to 0 for this model.')
  if distill.weight and distill.num_far_keys and canvas:
    raise ValueError('pe.logit_distill.num_far_keys samples keys before a moved window, and on a '
                     'canvas (pe.canvas_stride) the window moves only inside its cells; set it '
                     'to 0.')
  if distill.weight and enc.ndim == 1 and not canvas and max_position - train_shape[0] < 1:
    raise ValueError('pe.logit_distill moves the training window inside pe.seqpe.max_position, '
                     f'which must exceed the training length {train_shape[0]}.')
  if canvas:
    sampling.check_cells_fit(train_shape, max_position, canvas)
  sampling.check_ood(train_shape, max_position, ood.num_teachers, canvas)
  sampling.check_shift(train_shape, max_position, shift.pool_size, canvas)
  return Regularizers(
      contrastive=spec, ct_train_pivots=train_pivots, ct_num_candidates=ct.num_candidates,
      ct_weight=ct.weight, ood_weight=ood.weight, ood_groups=ood.num_groups,
      ood_teachers=ood.num_teachers, ood_heads=enc.num_heads,
      shift_prob=shift.prob, shift_pool_size=shift.pool_size, num_windows=shift.num_windows,
      train_shape=train_shape, max_position=max_position,
      warmup_steps=control.warmup_steps, balance=control.balance, remat=cfg.seqpe.remat,
      distill_weight=distill.weight, distill_windows=distill.num_windows,
      distill_far_keys=distill.num_far_keys, causal=pe.host.causal, canvas=canvas)


def sample_pivots(key: jax.Array, reg: Regularizers) -> dict[str, jax.Array]:
  """This step's contrastive pivots: the training-window share first, then the reference's
  (drawn from `key` itself, so the reference recipe's draws do not change)."""
  parts = []
  if reg.ct_train_pivots:
    parts.append(contrastive_sampling.sample_train_window_contrastive(
        jax.random.fold_in(key, 1), reg.train_shape, num_pivots=reg.ct_train_pivots,
        num_candidates=reg.ct_num_candidates, canvas=reg.canvas))
  if reg.contrastive is not None:
    parts.append(contrastive_sampling.sample_contrastive(key, reg.contrastive))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def keep_products_and_masks(prim, *avals, **params) -> bool:
  """A `jax.checkpoint` policy keeping matrix products (costly to redo) and comparisons
  (dropout's one-byte masks, else redrawn). The cheap elementwise rest, several times the
  products' size, is recomputed: ViT-S/16 at batch 32 needs about 3.7 GB fewer temporaries."""
  return (jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params)
          or prim.name in ('lt', 'le', 'gt', 'ge', 'eq', 'ne'))


def seqpe_step(pe, params, key: jax.Array, pool: jax.Array, reg: Regularizers, *,
               deterministic: bool = False):
  """The main-task PE features and the weighted SeqPE losses of one training step; `key`
  derives from the run seed and the step, so a resumed run draws what an uninterrupted one
  would, and `pool` is `reg.shift_pool(...)`.

  Returns:
    features {'e': [W, P+N, d_out], inject.WINDOWS_ALIKE: 1.0 when unshifted} and aux
    {'loss': w_ct L_ct + w_ood L_ood, 'contrastive_loss', 'ood_loss', 'shifted'}, with
    pe.logit_distill also 'probes' {'teacher': the window's features [1, N, d], 'student':
    its moved copies' and their far keys' [S, N + F, d]} and 'far_log_weight' [S, F].
  """
  shift_key, ct_key, ood_key, dropout_key = jax.random.split(key, 4)
  shifted, offsets = sampling.sample_shift(shift_key, pool, num_windows=reg.num_windows,
                                           prob=reg.shift_prob)
  ct = sample_pivots(ct_key, reg)
  ood = sampling.sample_ood(ood_key, train_shape=reg.train_shape,
                            max_position=reg.max_position, num_groups=reg.ood_groups,
                            num_teachers=reg.ood_teachers, canvas=reg.canvas)
  grid = positions.canvas_grid(reg.train_shape, reg.canvas)  # [N, n]
  students = grid[ood['teachers']] + ood['offsets'][:, None]  # [G, n_t, n]
  # pe.logit_distill's moved copies of the window, each followed by its far keys: [S, N + F, n].
  copies = None
  if reg.distill_weight:
    draws = sampling.sample_logit_distill_probes(
        jax.random.fold_in(key, 1), train_shape=reg.train_shape, max_position=reg.max_position,
        num_windows=reg.distill_windows, num_far_keys=reg.distill_far_keys, canvas=reg.canvas)
    copies = jnp.concatenate([grid[None] + draws['offsets'][:, None], draws['far']], axis=1)

  policy = (keep_products_and_masks if reg.remat == 'matmuls'
            else jax.checkpoint_policies.nothing_saveable)

  @functools.partial(jax.checkpoint, policy=policy)
  def encode(params, pos):
    return pe.source.apply({'params': params}, pos, deterministic=deterministic,
                           rngs={'dropout': dropout_key}, method='encode')

  def encode_together(*groups):
    """One encoder pass over every group's positions, split back into the groups."""
    flat = [g.reshape(-1, g.shape[-1]) for g in groups]
    e = encode(params, jnp.concatenate(flat))
    splits = np.cumsum([f.shape[0] for f in flat])[:-1]
    return [part.reshape(*g.shape[:-1], -1) for part, g in zip(jnp.split(e, splits), groups)]

  def unshifted(_):
    main_Nd, pivots, cands, students_e, *copies_e = encode_together(
        grid, ct['pivots'], ct['candidates'], students, *([] if copies is None else [copies]))
    ood_loss = losses.ood_distillation_loss(
        main_Nd[ood['teachers']], students_e, num_heads=reg.ood_heads)
    main = jnp.broadcast_to(main_Nd, (reg.num_windows,) + main_Nd.shape)
    return main, pivots, cands, ood_loss, [main_Nd, *copies_e] if copies_e else []

  def shifted_windows(_):
    windows = grid[None] + offsets[:, None]  # [W, N, n]
    # The teacher is the unshifted window, which this branch encodes only for the probes.
    main, pivots, cands, *probes = encode_together(
        windows, ct['pivots'], ct['candidates'], *([] if copies is None else [grid, copies]))
    return main, pivots, cands, jnp.zeros((), jnp.float32), probes

  main, pivots, cands, ood_loss, probes_e = jax.lax.cond(shifted, shifted_windows, unshifted, None)
  ct_loss = losses.contrastive_loss(pivots, cands, ct['labels'], ct['valid'])
  # Unshifted, the W windows are copies of one: the host's hooks then project it once.
  features = {**pe.source.apply({'params': params}, main, method='with_prefix'),
              inject.WINDOWS_ALIKE: jnp.logical_not(shifted).astype(jnp.float32)}
  aux = {'loss': reg.ct_weight * ct_loss + reg.ood_weight * ood_loss,
         'contrastive_loss': ct_loss, 'ood_loss': ood_loss, 'shifted': shifted}
  if probes_e:  # The window (teacher) and its copies: the host reports their logits.
    teacher_e, copies_e = probes_e
    aux['probes'] = {'teacher': {'e': teacher_e[None]}, 'student': {'e': copies_e}}
    aux['far_log_weight'] = draws['far_log_weight']
  return features, aux


def training_step(pe, reg: Regularizers | None, params, key: jax.Array, step: jax.Array,
                  pool: jax.Array, shifts: shifts_lib.Shifts | None = None):
  """The PE's part of a training step, the same call for every PE (`shifts`: a baseline's):
  features for the host; probes, whose position-only logits the host reports ({} without
  pe.logit_distill); the terms `regularizer_loss` reads; and scalars to log."""
  if reg is None:
    features = shifts_lib.training_features(pe, shifts, params, key, pool)
    return features, {}, {'loss': jnp.zeros((), jnp.float32)}, {}
  features, aux = seqpe_step(pe, params, key, pool, reg)
  scale = reg.weight_scale(step)
  terms = {'loss': scale * aux['loss']}
  if 'probes' in aux:
    terms.update(far_log_weight=aux['far_log_weight'],
                 logit_distill_weight=scale * reg.distill_weight)
  scalars = {'contrastive_loss': aux['contrastive_loss'], 'ood_loss': aux['ood_loss'],
             'shifted': aux['shifted'], 'reg_scale': scale}
  return features, aux.get('probes', {}), terms, scalars


def regularizer_loss(reg: Regularizers | None, terms, probe_logits):
  """The PE's regulariser loss and scalars to log: `training_step`'s scheduled losses plus,
  with pe.logit_distill, the weighted logit distillation loss of the host's probe logits
  ({'teacher': [layers, 1, H, N, N], 'student': [layers, S, H, N + F, N + F]}) per layer."""
  if not probe_logits:
    return terms['loss'], {}
  per_layer = jax.vmap(lambda teacher, student: losses.logit_distill_loss(
      teacher[0], student, terms['far_log_weight'], causal=reg.causal))(
          probe_logits['teacher'], probe_logits['student'])
  distill = jnp.mean(per_layer)
  return (terms['loss'] + terms['logit_distill_weight'] * distill, {'logit_distill_loss': distill})
