"""Default `config.pe` block: every field a PE reads, so unknown keys fail on assignment
(field reference: docs/method.md §10)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The PE section of a config at the ViT reference's sizes (configs set their own sizes
  with configs/common.SeqPESizes)."""
  pe = ml_collections.ConfigDict()
  # seqpe | ape | sincos | sincos2d | rope | rope2d | rope_mixed | alibi | none, or registered.
  pe.name = 'seqpe'

  # 0 = patch indices (reference); s >= 2 = cell centres on a canvas s times the grid (§9).
  pe.canvas_stride = 0

  pe.inject = ml_collections.ConfigDict()
  # How the PE enters the host; '' takes the PE's default (posenc.REGISTRY[name].methods).
  pe.inject.method = ''
  # Where SeqPE's q/k projection lives: per_layer (ViT) | shared (LM) | none (p_q = p_k = e).
  pe.inject.qk_proj = 'per_layer'
  # Split p_q, p_k into heads (d_out = model width) or share one head-width vector.
  pe.inject.multi_head = True
  # Initial b of SeqPE's q/k projection p = b + W e (reference 0; docs/method.md §9).
  pe.inject.proj_bias_init = 0.0

  pe.seqpe = ml_collections.ConfigDict()
  # Numeral base of the digit sequences, 2..36.
  pe.seqpe.base = 10
  # Extent of the position space per axis; sets the digits per axis.
  pe.seqpe.max_position = 100
  # Digits per axis; 0 derives it from max_position and base.
  pe.seqpe.num_digits = 0
  # Encoder width, heads (width / 64 in the paper) and layers.
  pe.seqpe.d_model = 384
  pe.seqpe.num_heads = 6
  pe.seqpe.num_layers = 2
  # Output width; 0 = the host's width (per-head split) or head width (no split).
  pe.seqpe.d_out = 0
  # Residual dropout inside the encoder.
  pe.seqpe.dropout = 0.1
  # What the regularisers' encoder backward recomputes: all (less memory) | matmuls.
  pe.seqpe.remat = 'all'

  pe.sincos = ml_collections.ConfigDict()
  # Frequency base of the sinusoidal tables.
  pe.sincos.base = 10_000.

  pe.rope = ml_collections.ConfigDict()
  # Frequency base of RoPE, RoPE-2D and RoPE-Mixed's initial frequencies.
  pe.rope.base = 10_000.

  pe.alibi = ml_collections.ConfigDict()
  # Add the bias before the 1/sqrt(d_h) scale (reference); False gives textbook slopes.
  pe.alibi.pre_scale = True

  pe.ape = ml_collections.ConfigDict()
  # Grid resampling of the learned table: cubic-pytorch (a=-0.75) | cubic (Keys a=-0.5).
  pe.ape.cubic = 'cubic-pytorch'

  pe.contrastive = ml_collections.ConfigDict()
  # Weight of the distance-contrastive loss (0 turns it off).
  pe.contrastive.weight = 0.1
  # Pivots per step and K candidates per pivot (ViT: 128 x 64 globally; LM: 64 x 32).
  pe.contrastive.num_pivots = 128
  pe.contrastive.num_candidates = 64
  # Hard negatives' digit edits: clean (<= k digits per axis) | reference (quirks kept; §5.2).
  pe.contrastive.hard_negative_rules = 'clean'
  # 1D window range r: the window is max(r, 5K) long, starting in [0, P - r).
  pe.contrastive.window_range = 256
  # Share of pivots drawn inside the training window (reference 0; docs/method.md §9).
  pe.contrastive.train_fraction = 0.0

  pe.ood = ml_collections.ConfigDict()
  # Weight of the out-of-distribution distillation loss (0 turns it off).
  pe.ood.weight = 0.1
  # Groups per step and teachers (= students) per group (ViT: 128 x 64; LM: 64 x 32).
  pe.ood.num_groups = 128
  pe.ood.num_teachers = 64

  pe.logit_distill = ml_collections.ConfigDict()
  # Logit distillation (not in the reference; 0 turns it off; docs/method.md §9).
  pe.logit_distill.weight = 0.0
  pe.logit_distill.num_windows = 4
  pe.logit_distill.num_far_keys = 64

  pe.shift = ml_collections.ConfigDict()
  # Probability of a step on shifted position windows (0 turns it off; posenc/shifts.py).
  pe.shift.prob = 0.1
  # Fixed pool of window starts drawn once from the run's seed.
  pe.shift.pool_size = 320
  # Windows per shifted step (global); example b uses window b mod W.
  pe.shift.num_windows = 128

  pe.regularizers = ml_collections.ConfigDict()
  # Optimizer steps over which every regulariser weight ramps linearly from 0 (0: no ramp).
  pe.regularizers.warmup_steps = 0
  # none (reference) | grad_norm: cap the encoder's regulariser gradient at the task's (§9).
  pe.regularizers.balance = 'none'
  pe.lock()  # A misspelt field is an error, not a silently ignored key.
  return pe
