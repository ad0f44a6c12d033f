"""Random shifts of the training window (pe.shift) for the PEs without SeqPE's regularisers:
SeqPE's windows, from the same pool and per-step key, so a baseline given SeqPE's pe.shift
meets SeqPE's positions step for step (docs/method.md §7)."""

import dataclasses

import jax
import ml_collections

from seqpe_jax import positions
from seqpe_jax.posenc import sampling


@dataclasses.dataclass(frozen=True)
class Shifts:
  """Static settings of a baseline's shifted windows, validated from `config.pe`."""
  prob: float
  pool_size: int
  num_windows: int
  train_shape: tuple[int, ...]
  max_position: int  # Windows fit in [0, max_position) per axis (pe.seqpe.max_position).
  canvas: tuple[int, ...] = ()  # pe.canvas_stride's: offsets stay inside the cells.

  def pool(self, key: jax.Array) -> jax.Array:
    """The run's fixed pool of window starts: SeqPE's pool for the same key and settings."""
    return sampling.shift_pool(key, train_shape=self.train_shape, max_position=self.max_position,
                               pool_size=self.pool_size, canvas=self.canvas)

  def sample(self, step_key: jax.Array, pool: jax.Array) -> tuple[jax.Array, jax.Array]:
    """This step's (shifted bool[], offsets int32[W, n]) from the step's PE key: SeqPE's draw,
    whose step splits its key in four and shifts with the first."""
    shift_key = jax.random.split(step_key, 4)[0]
    return sampling.sample_shift(shift_key, pool, num_windows=self.num_windows, prob=self.prob)


def check(shift: ml_collections.ConfigDict) -> None:
  """Raises ValueError on a `config.pe.shift` no PE can use (SeqPE's and the baselines')."""
  if not 0 <= shift.prob <= 1:
    raise ValueError(f'pe.shift.prob must be a probability, got {shift.prob}.')
  if shift.num_windows < 1:
    raise ValueError(f'pe.shift.num_windows must be at least 1, got {shift.num_windows}.')


def build(cfg: ml_collections.ConfigDict, pe, takes_shifts: bool) -> Shifts | None:
  """`pe`'s shifts when pe.shift.prob > 0 and it has no regularisers to draw them, else None."""
  shift = cfg.shift
  check(shift)
  if shift.prob == 0 or pe.seqpe_encoder is not None:
    return None
  if not takes_shifts:
    raise ValueError(f"PE '{pe.name}' has no positions beyond its training window to shift "
                     'to; set pe.shift.prob = 0 for it.')
  train_shape = pe.host.train_shape
  canvas = positions.canvas_of(train_shape, cfg.canvas_stride)
  sampling.check_shift(train_shape, cfg.seqpe.max_position, shift.pool_size, canvas)
  return Shifts(prob=shift.prob, pool_size=shift.pool_size, num_windows=shift.num_windows,
                train_shape=train_shape, max_position=cfg.seqpe.max_position, canvas=canvas)


def training_features(pe, shifts: Shifts | None, params, key: jax.Array, pool: jax.Array):
  """A baseline's features for a training step: one window, or one per row of the offsets."""
  offsets = None if shifts is None else shifts.sample(key, pool)[1]
  return pe.features(params, pe.host.train_shape, offsets, deterministic=False,
                     rngs={'dropout': key})
