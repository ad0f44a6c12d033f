"""Config sections every experiment shares: run loop, optimizer, device mesh, PE defaults."""

import dataclasses

import ml_collections

from seqpe_jax.posenc import config as pe_config

VARIANTS = ('', 'smoke', 'paper')
# SeqPE recipes: `tuned`, the best this codebase's studies found at the CPU scale (the
# default of the CPU sizes), and `reference`, the authors' recipe (the only one `paper` runs).
RECIPES = ('tuned', 'reference')


def parse_arg(arg: str | None) -> tuple[str, str]:
  """'reference,smoke' -> ('smoke', 'reference'): a size variant and a SeqPE recipe, each
  optional, in any order (the baselines have one recipe and ignore it)."""
  tokens = [t for t in (arg or '').split(',') if t]
  sizes = [t for t in tokens if t in VARIANTS]
  recipes = [t for t in tokens if t in RECIPES]
  if len(sizes) + len(recipes) != len(tokens) or len(sizes) > 1 or len(recipes) > 1:
    raise ValueError(f"Unknown config variant '{arg}'; use at most one size (smoke, paper) and "
                     "one recipe (tuned, reference), comma-separated, e.g. 'reference,smoke'.")
  size = sizes[0] if sizes else ''
  recipe = recipes[0] if recipes else ('reference' if size == 'paper' else 'tuned')
  if size == 'paper' and recipe != 'reference':
    raise ValueError("'paper' is the reference recipe at the paper's scale; the tuned recipe "
                     'was chosen at the CPU scale only.')
  return size, recipe


def run_config(arg: str | None) -> tuple[ml_collections.ConfigDict, str]:
  """A fresh config with the run-loop fields (experiments set their values), and the size."""
  variant, _ = parse_arg(arg)
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
  # The diag/* scalars at each log step (seqpe_jax/diagnostics.py: does the PE carry
  # position?). They cost a second compiled program, as large as the step; smoke runs,
  # which check the pipeline, leave them out.
  c.diagnostics = True
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


@dataclasses.dataclass(frozen=True)
class SeqPESizes:
  """Every size of SeqPE's work, set in one place: each experiment keeps one row per
  variant (SEQPE_SIZES in configs/<family>_base.py); docs/method.md §10 explains them."""
  d_model: int  # Encoder width (num_heads heads, 2 layers).
  num_heads: int
  max_position: int  # Position space per axis; sets the digits per axis.
  pivots: int  # Contrastive pivots per step x candidates per pivot.
  candidates: int
  groups: int  # OOD distillation groups per step x teachers (= students) per group.
  teachers: int
  windows: int  # Shift windows per shifted step, and the fixed pool they come from.
  pool: int
  num_digits: int = 0  # 0: enough digits for max_position.
  window_range: int = 256  # 1D contrastive window range.

  def apply(self, pe: ml_collections.ConfigDict) -> None:
    pe.seqpe.d_model, pe.seqpe.num_heads = self.d_model, self.num_heads
    pe.seqpe.max_position, pe.seqpe.num_digits = self.max_position, self.num_digits
    pe.contrastive.num_pivots, pe.contrastive.num_candidates = self.pivots, self.candidates
    pe.contrastive.window_range = self.window_range
    pe.ood.num_groups, pe.ood.num_teachers = self.groups, self.teachers
    pe.shift.num_windows, pe.shift.pool_size = self.windows, self.pool


def pe_section(name: str, sizes: SeqPESizes) -> ml_collections.ConfigDict:
  """The PE section for PE `name` with SeqPE's `sizes`; baselines train with the same
  recipe, without SeqPE's extras (they keep the sizes, which nothing reads)."""
  pe = pe_config.get_config()
  pe.name = name
  sizes.apply(pe)
  if name != 'seqpe':
    pe.contrastive.weight = pe.ood.weight = pe.shift.prob = 0.0
  return pe
