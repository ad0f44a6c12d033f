"""Config sections every experiment shares: the run loop, the optimizer, the device mesh."""

import ml_collections

VARIANTS = ('', 'smoke', 'paper')


def run_config(arg: str | None) -> tuple[ml_collections.ConfigDict, str]:
  """A fresh config with the run-loop fields (experiments set their values), and the variant."""
  variant = arg or ''
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config variant '{variant}'; use one of: (none), smoke, paper.")
  c = ml_collections.ConfigDict()
  # Seed of every random draw (initialisation, data order, SeqPE sampling).
  c.seed = 0
  # Optimizer steps and global batch size (all devices).
  c.total_steps = 0
  c.batch_size = 0
  # How often to log training metrics, run the evaluation sweep (0: only the final sweep),
  # save a checkpoint.
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  # Checkpoints kept in WORKDIR/checkpoints.
  c.keep_checkpoints = 2
  return c, variant


def optimizer_config(*, lr: float, schedule: str, warmup_steps: int, warmup_init: float,
                     min_lr: float, weight_decay: float) -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  # Peak learning rate, linear warm-up from warmup_init, `schedule` (cosine | linear) to min_lr.
  o.lr = lr
  o.schedule = schedule
  o.warmup_steps = warmup_steps
  o.warmup_init = warmup_init
  o.min_lr = min_lr
  # AdamW.
  o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8
  o.weight_decay = weight_decay
  # Decay of SeqPE encoder matrices (never its embeddings); 0 in the released runs.
  o.seqpe_weight_decay = 0.0
  # Separate global-norm clipping of the SeqPE encoder and of everything else.
  o.clip_seqpe = 5.0
  o.clip_host = 5.0
  return o


def mesh_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  # Device mesh; one axis may be -1 (all remaining devices).
  m.data, m.fsdp, m.tensor = -1, 1, 1
  return m
