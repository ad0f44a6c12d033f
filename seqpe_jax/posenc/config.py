"""Default `config.pe` block: every field a PE reads, so unknown keys fail on assignment."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The PE section of an experiment config; experiment files override fields.

  The sizes below (encoder width, position space, pivots, groups, windows) are the ViT
  reference's, for library use; the experiment configs set every one of them from their
  SEQPE_SIZES table (configs/common.SeqPESizes), one row per variant.
  """
  pe = ml_collections.ConfigDict()
  # Which PE: seqpe | ape | sincos | sincos2d | rope | rope2d | rope_mixed | alibi | none, or
  # one registered with posenc.register.
  pe.name = 'seqpe'

  # Positions of a grid: 0 = patch (or token) indices, so a larger grid extends beyond the
  # trained positions; s >= 2 = the centres of n equal cells of a canvas s times the
  # training grid on each axis (positions.canvas_grid: the training positions lie s apart),
  # so a larger grid falls between them, as APE's resampled table does. For PEs of
  # per-axis coordinates (seqpe, sincos2d, rope2d, rope_mixed); 0 in the reference.
  pe.canvas_stride = 0

  pe.inject = ml_collections.ConfigDict()
  # How the PE enters the host; '' takes the PE's default (posenc.REGISTRY[name].methods).
  pe.inject.method = ''
  # Where SeqPE's q/k projection lives: per_layer (ViT) | shared (LM) | none (p_q = p_k = e).
  pe.inject.qk_proj = 'per_layer'
  # Split p_q, p_k into heads (d_out = model width) or share one head-width vector.
  pe.inject.multi_head = True
  # attn_scalar as concatenated q/k channels (fused attention, KV cache) or a dense bias.
  pe.inject.scalar_impl = 'concat'
  # SeqPE q/k projection p = b + W e: the bias b starts at this value (0 in the reference;
  # 1 makes attn_mul start as q * (1 + W e), so the host's attention is not scaled down
  # while the position term grows), and W starts as normal(proj_init_std) (reference 0.02;
  # larger values give a small host the position-term magnitude of a paper-size one).
  pe.inject.proj_bias_init = 0.0
  pe.inject.proj_init_std = 0.02

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
  # The encoder's mask over a position's digits: causal (reference) | bidirectional.
  pe.seqpe.digit_mask = 'causal'
  # What the backward of the regularisers' encoder pass recomputes: all (keeps nothing:
  # about one more encoder forward per step; ViT-S/16 batch 32 peaks at 6.1 GB against
  # 7.4 GB, for ~3% more CPU time per step, docs/benchmarks.md) | matmuls (keeps the matrix
  # products and dropout masks). Either gives the same numbers; a run may resume with the other.
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
  # (uniform, hard, window) mode probabilities; unset = reference mix for the ndim
  # (1D: 0 / 0.4 / 0.6, 2D: 0.5 / 0.3 / 0.2).
  pe.contrastive.mode_probs = ml_collections.config_dict.placeholder(tuple)
  # Digit-edit rules of the hard negatives: 'clean' (no string longer than k digits per
  # axis, edits checked once at the end) | 'reference' (the reference sampler's rules, quirks
  # included; docs/method.md §5.2).
  pe.contrastive.hard_negative_rules = 'clean'
  # 1D window range r: the window is max(r, 5K) long, starting in [0, P - r).
  pe.contrastive.window_range = 256
  # Share of pivots drawn inside the training window (candidates: other positions of the
  # window), so the loss separates the positions the task trains on; 0 in the reference.
  pe.contrastive.train_fraction = 0.0

  pe.ood = ml_collections.ConfigDict()
  # Weight of the out-of-distribution distillation loss (0 turns it off).
  pe.ood.weight = 0.1
  # Groups per step and teachers (= students) per group (ViT: 128 x 64; LM: 64 x 32).
  pe.ood.num_groups = 128
  pe.ood.num_teachers = 64

  pe.logit_distill = ml_collections.ConfigDict()
  # Logit distillation (not in the reference; 0 turns it off): the attention the PE alone
  # gives each host layer over the training window (teacher, detached) is asked of
  # `num_windows` copies of the window moved elsewhere in the position space. On a causal
  # 1D host each copy's queries also see `num_far_keys` keys sampled before it, standing
  # for all of them, on which the teacher puts no mass: the position term must then fall off
  # with distance beyond the trained length as it does inside it.
  pe.logit_distill.weight = 0.0
  pe.logit_distill.num_windows = 4
  pe.logit_distill.num_far_keys = 64

  pe.shift = ml_collections.ConfigDict()
  # Probability that a training step uses shifted position windows (0 turns it off), for
  # every PE that has positions beyond its training window (not APE, not 'none'): windows
  # start anywhere they fit in [0, pe.seqpe.max_position) per axis, or on a canvas move
  # inside their cells, and a baseline draws the windows SeqPE draws (posenc/shifts.py).
  pe.shift.prob = 0.1
  # Fixed pool of window starts drawn once from the run's seed.
  pe.shift.pool_size = 320
  # Windows per shifted step (global); example b uses window b mod W.
  pe.shift.num_windows = 128

  pe.regularizers = ml_collections.ConfigDict()
  # Every regulariser weight ramps linearly from 0 to its value over `warmup_steps`
  # optimizer steps (0: full weight from the first step).
  pe.regularizers.warmup_steps = 0
  # none (reference) | grad_norm: on the SeqPE encoder the regulariser gradient is scaled
  # down, when larger, to the task gradient's norm before the optimizer, so the task is not
  # drowned (its share of an Adam update is otherwise ~1e-3).
  pe.regularizers.balance = 'none'
  pe.lock()  # A misspelt field is an error, not a silently ignored key.
  return pe
