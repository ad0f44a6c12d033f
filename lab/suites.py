"""What the studies run: every suite's runs, each a config file and the keys it overrides
(`python -m lab.study` trains and reports them).

The family suites (lm, vit) compare SeqPE as the reference trains it, SeqPE with this
codebase's options, and the baselines; the ablations suite tries each option alone and
with the others.
"""

import dataclasses

# SeqPE settings tuned for the small default runs, per experiment family. The LM's was
# chosen on the validation split (one seed, 400 steps): the reference recipe's PE was dead
# (diag/pe_ablation_delta 0.0000), these gave 0.08 nats. The ViT's adds the projection
# bias of 1 that attn_mul needs (docs/method.md §9); it was set before the ViT study.
TUNED_SEQPE = {
    'lm': {'pe.regularizers.balance': 'grad_norm', 'pe.contrastive.train_fraction': 0.5},
    'vit': {'pe.regularizers.balance': 'grad_norm', 'pe.contrastive.train_fraction': 0.5,
            'pe.inject.proj_bias_init': 1.0},
}

# pe.logit_distill as the family suites run it (a causal LM counts the keys before a copy).
ATTENTION = {'lm': {'pe.logit_distill.weight': 1.0},
             'vit': {'pe.logit_distill.weight': 1.0, 'pe.logit_distill.num_far_keys': 0}}

# Canvas positions for grids (pe.canvas_stride): the 7x7 training grid's positions lie 12
# apart on an 84-wide canvas and every larger grid spreads over the same canvas, between
# them (as APE's bicubic resampling does), instead of beyond them. Shifted steps then move
# the grid inside its 12x12 cells, all 144 offsets in the pool.
CANVAS_STRIDE = 12
CANVAS = {'pe.canvas_stride': CANVAS_STRIDE, 'pe.shift.pool_size': CANVAS_STRIDE**2}

# Family-specific SeqPE variants, each tried against the suite's chosen one.
FAMILY_VARIANTS = {
    'lm': {
        # Four times the copies per step. Beyond 1,024 tokens the trained position term
        # falls off half as steeply with distance as it does at 512-1,023 (position_profile's
        # fall-off 4.3 against 8.8 nats with 4 copies): copies that far are 7.5% of the draws.
        'seqpe_tuned_attention_more_copies': {**TUNED_SEQPE['lm'], **ATTENTION['lm'],
                                              'pe.logit_distill.num_windows': 16},
    },
    'vit': {
        # attn_mul only reweighs the content logits per channel, so it has no position-only
        # term to make attention local (RoPE-2D, relative, leads at the training
        # resolution); attn_scalar adds one and input_add is APE's route. Both use the LM's
        # tuning (no projection bias: p_q.p_k is a term of its own).
        'seqpe_tuned_attn_scalar': {**TUNED_SEQPE['lm'], 'pe.inject.method': 'attn_scalar'},
        'seqpe_tuned_input_add': {**TUNED_SEQPE['lm'], 'pe.inject.method': 'input_add'},
        # attn_scalar leads SeqPE at the training resolution but extrapolates no better
        # than tuned; half the steps on shifted grids, as for attn_mul, lets the host meet
        # the positions a larger image brings.
        'seqpe_tuned_attn_scalar_more_shifts': {**TUNED_SEQPE['lm'],
                                                'pe.inject.method': 'attn_scalar',
                                                'pe.shift.prob': 0.5},
        # Every PE that extends the grid in patch units with relative position in the
        # logits (attn_scalar, RoPE-2D) collapses at 36 px on this upscaled data while APE,
        # which resamples, does not: the same variants on a canvas. attn_scalar on a canvas
        # is the best SeqPE on validation from 28 to 56 px (3 seeds, 300 steps).
        'seqpe_tuned_canvas': {**TUNED_SEQPE['vit'], **CANVAS},
        'seqpe_tuned_attn_scalar_canvas': {**TUNED_SEQPE['lm'], 'pe.inject.method': 'attn_scalar',
                                           **CANVAS},
        'seqpe_tuned_attn_scalar_canvas_more_shifts': {
            **TUNED_SEQPE['lm'], 'pe.inject.method': 'attn_scalar', **CANVAS,
            'pe.shift.prob': 0.5},
    },
}

# Baselines with an option of their own: (PE, overrides). RoPE-2D on the same canvas tells
# whether a canvas gain is SeqPE's or any relative PE's.
BASELINE_VARIANTS = {'lm': {},
                     'vit': {'rope2d_canvas': ('rope2d', {'pe.canvas_stride': CANVAS_STRIDE})}}

# Options this codebase adds to the reference SeqPE recipe; the ablations try each alone.
NEW_OPTIONS = {
    'warmup': {'pe.regularizers.warmup_steps': 200},
    'balance': {'pe.regularizers.balance': 'grad_norm'},
    'train_pivots': {'pe.contrastive.train_fraction': 0.5},
    'proj_init': {'pe.inject.proj_init_std': 0.1},
}

# Overrides counted in optimizer steps: a smoke run has only a handful of steps, so they
# are capped at half of them (a 200-step warm-up would never reach full weight).
STEP_COUNT_KEYS = ('pe.regularizers.warmup_steps',)


@dataclasses.dataclass(frozen=True)
class Run:
  """One entry of a suite: a config file and the flattened config keys it overrides."""
  name: str
  config_file: str
  overrides: dict = dataclasses.field(default_factory=dict)


def _option_name(key: str) -> str:
  """'pe.contrastive.train_fraction' -> 'train_pivots' (its NEW_OPTIONS name) if it has one."""
  for name, option in NEW_OPTIONS.items():
    if list(option) == [key]:
      return name
  return key.removeprefix('pe.').replace('.', '_')


def _without(overrides: dict, key: str) -> dict:
  """`overrides` with `key` left at the config file's (reference) value."""
  return {k: v for k, v in overrides.items() if k != key}


def _family_runs(family: str, baselines: tuple[str, ...]) -> list[Run]:
  seqpe = f'configs/{family}_seqpe.py'
  return [Run('seqpe', seqpe), Run('seqpe_tuned', seqpe, TUNED_SEQPE[family]),
          # Before pe.logit_distill, the LM ablations' best beyond the training length on
          # validation: half the steps on shifted windows, so the host meets positions
          # beyond the window.
          Run('seqpe_tuned_more_shifts', seqpe, {**TUNED_SEQPE[family], 'pe.shift.prob': 0.5}),
          # The LM ablations' best beyond the training length on validation: attention-level
          # distillation (the ViT's grid host takes no far keys).
          Run('seqpe_tuned_attention', seqpe, {**TUNED_SEQPE[family], **ATTENTION[family]}),
          *[Run(name, seqpe, overrides) for name, overrides in FAMILY_VARIANTS[family].items()],
          *[Run(pe, f'configs/{family}_{pe}.py') for pe in baselines],
          *[Run(name, f'configs/{family}_{pe}.py', overrides)
            for name, (pe, overrides) in BASELINE_VARIANTS[family].items()]]


def _ablation_runs() -> list[Run]:
  lm, tuned = 'configs/lm_seqpe.py', TUNED_SEQPE['lm']
  return [
      Run('reference', lm),
      Run('no_contrastive', lm, {'pe.contrastive.weight': 0.0}),
      Run('no_ood', lm, {'pe.ood.weight': 0.0}),
      Run('no_regularizers', lm, {'pe.contrastive.weight': 0.0, 'pe.ood.weight': 0.0}),
      Run('no_shift', lm, {'pe.shift.prob': 0.0}),
      *[Run(name, lm, option) for name, option in NEW_OPTIONS.items()],
      Run('tuned', lm, tuned),
      *[Run(f'tuned_minus_{_option_name(key)}', lm, _without(tuned, key)) for key in tuned],
      # Half the steps on shifted windows instead of a tenth: the host meets positions up
      # to pe.seqpe.max_position far more often.
      Run('tuned_more_shifts', lm, {**tuned, 'pe.shift.prob': 0.5}),
      # Distillation ten times stronger: it is the loss that asks the encoder's similarity
      # structure to be the same wherever the window lies, which the host's projection
      # needs to see the training window's locality beyond it.
      Run('tuned_strong_ood', lm, {**tuned, 'pe.ood.weight': 1.0}),
      # No q/k projection (p_q = p_k = e, the reference GPT-2's other path): the position
      # term of attention is then the very similarity the contrastive and distillation
      # losses shape, instead of a learned bilinear form of it they do not constrain.
      Run('tuned_no_qk_proj', lm, {**tuned, 'pe.inject.qk_proj': 'none'}),
      # Attention-level distillation: the position-only attention over the training window
      # is asked of moved copies of it, with the keys before a copy counted and given no
      # mass, so the position term must fall off beyond the trained length (the profiles
      # show it flat there otherwise, whatever the embeddings' structure).
      Run('tuned_attention', lm, {**tuned, 'pe.logit_distill.weight': 1.0}),
      Run('tuned_more_shifts_attention', lm,
          {**tuned, 'pe.shift.prob': 0.5, 'pe.logit_distill.weight': 1.0}),
      Run('tuned_weak_attention', lm, {**tuned, 'pe.logit_distill.weight': 0.3}),
      # Four times the copies per step: more of the long offsets where the fall-off thins.
      Run('tuned_attention_more_copies', lm,
          {**tuned, 'pe.logit_distill.weight': 1.0, 'pe.logit_distill.num_windows': 16}),
      Run('input_add', lm, {'pe.inject.method': 'input_add'}),
      Run('attn_mul', lm, {'pe.inject.method': 'attn_mul'}),
      Run('bidirectional', lm, {'pe.seqpe.digit_mask': 'bidirectional'}),
  ]


SUITES = {
    'lm': _family_runs('lm', ('nope', 'ape', 'rope', 'alibi')),
    'vit': _family_runs('vit', ('nope', 'ape', 'rope2d')),
    'ablations': _ablation_runs(),
}
