"""The fair studies: every PE of a family, the protocol it is read in, and a declared search
space of the same size for each (`python -m lab.study` runs them).

Each PE's space is the same shape: the three learning rates on its config's own settings,
then three variants of its own. In the LM suite (declared and run before this changed) the
variants train at 1e-3 (LM_VARIANT_RATE); in the others they train at the PE's
best learning rate of the three, a second stage that starts once the first has finished, so
a variant is not ruled out by a rate the PE does not want. Selection reads the validation
split only (study.py); the chosen configuration then trains with three seeds. A PE with no
knobs of its own (NoPE) gets the generic ones, so no PE has fewer tries.
"""

import dataclasses
import functools
import math

from configs import vit_base

# Configurations per PE, the same for every PE of a suite; no suite may declare more.
SEARCH_BUDGET = 6
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
PROTOCOLS = ('extend', 'interpolate')
SMOKE_STEPS = 4


class SuiteError(ValueError):
  """A suite that breaks the fair-study rules; one sentence."""


@dataclasses.dataclass(frozen=True)
class Entrant:
  """One PE in a suite: its config file and the config's recipe (`configs/common.RECIPES`;
  '' is the config's default), the protocols its numbers are read in, overrides every
  configuration shares, and its own variants."""
  name: str
  config_file: str
  protocols: tuple[str, ...]
  base: dict = dataclasses.field(default_factory=dict)
  variants: dict = dataclasses.field(default_factory=dict)  # name -> overrides.
  recipe: str = ''
  # QA: the LM study's entrant whose chosen final runs this PE fine-tunes (seed i from seed
  # i), or, with `pretrain`, the LM overrides of runs the QA study trains itself first (a
  # recipe no LM study chose, such as SeqPE's reference).
  lm: str = ''
  pretrain: dict | None = None

  size: int = 0  # Keep only the first `size` configurations (0: all); smoke studies.

  @property
  def fine_tune(self) -> bool:
    return bool(self.lm) or self.pretrain is not None

  def search_space(self, variant_lr: float | None = None) -> dict[str, dict]:
    """Configuration name -> overrides: the learning rates on the base, then the variants
    (at `variant_lr` if given, else at the config's rate). A fine-tune has one: its LM's
    choice with the same fine-tuning recipe for every PE."""
    if self.fine_tune:
      return {'chosen': dict(self.base)}
    space = {f'lr{lr:g}': {**self.base, 'optimizer.lr': lr} for lr in LEARNING_RATES}
    rate = {} if variant_lr is None else {'optimizer.lr': variant_lr}
    space.update({name: {**self.base, **rate, **overrides}
                  for name, overrides in self.variants.items()})
    return dict(list(space.items())[:self.size or None])

  def learning_rate_space(self) -> dict[str, dict]:
    """The learning-rate configurations of `search_space` (a staged search's first stage)."""
    return {name: overrides for name, overrides in self.search_space().items()
            if name in {f'lr{lr:g}' for lr in LEARNING_RATES}}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """A way to read a trained PE at evaluation time only (no training of its own): RoPE
  position interpolation, NTK-aware scaling, YaRN, local attention. Read on the chosen runs of
  `entrant` with these `python -m seqpe_jax.evaluate` overrides."""
  name: str
  entrant: str
  protocol: str
  overrides: dict


@dataclasses.dataclass(frozen=True)
class Suite:
  """A family's fair study: entrants, the search budget in steps, and how to choose."""
  family: str  # lm | vit: picks the criterion below.
  entrants: tuple[Entrant, ...]
  search_steps: int
  seeds: int = 3
  transforms: tuple[EvalTransform, ...] = ()
  seqpe: str = 'seqpe'  # The entrant whose paired comparison the final tables show.
  lm_study: str = ''  # QA: the LM study directory whose choices the PEs fine-tune.
  smoke_seeds: int = 2  # Seeds of the smoke variant (a QA fine-tune of SeqPE is the costly one).
  # Variants train at each PE's best learning rate of the search's first stage rather than
  # at the config's (the LM suite ran before this existed: its variants are at 1e-3).
  variants_at_best_lr: bool = False
  # Per protocol, the PEs SeqPE's row is also compared with one by one at every column,
  # whatever protocol each is read in (the best other PE of a column may be none of them).
  rivals: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def entrant(self, name: str) -> Entrant:
    return next(e for e in self.entrants if e.name == name)

  def check(self, suite_name: str) -> None:
    """Every PE has the same number of configurations, at most SEARCH_BUDGET; protocols known."""
    sizes = {e.name: len(e.search_space()) for e in self.entrants}
    too_many = {name: n for name, n in sizes.items() if n > SEARCH_BUDGET}
    if too_many:
      name, n = next(iter(too_many.items()))
      raise SuiteError(f'Suite {suite_name}: {name} declares {n} configurations; the search '
                       f'budget is {SEARCH_BUDGET} for every PE.')
    if len(set(sizes.values())) > 1:
      raise SuiteError(f'Suite {suite_name}: the PEs declare unequal search spaces ({sizes}); '
                       'every PE gets the same number of configurations.')
    names = {e.name for e in self.entrants}
    unknown = sorted({r for rivals in self.rivals.values() for r in rivals} - names)
    if unknown:
      raise SuiteError(f"Suite {suite_name}: rival '{unknown[0]}' is not one of its PEs.")
    for protocol in {p for e in self.entrants for p in e.protocols} | {
        t.protocol for t in self.transforms} | set(self.rivals):
      if protocol not in PROTOCOLS:
        raise SuiteError(f"Suite {suite_name}: unknown protocol '{protocol}'; use one of "
                         f"{', '.join(PROTOCOLS)}.")

  def smoke(self) -> 'Suite':
    """The same study in miniature: its first two PEs, two configurations each (a
    fine-tune has one), `smoke_seeds` seeds, a few steps on the `:smoke` configs, and one
    evaluation-time transform."""
    entrants = tuple(dataclasses.replace(e, size=2) for e in self.entrants[:2])
    names = {e.name for e in entrants}
    return dataclasses.replace(self, entrants=entrants,
                               rivals={p: tuple(r for r in rivals if r in names)
                                       for p, rivals in self.rivals.items()},
                               search_steps=SMOKE_STEPS if self.search_steps else 0,
                               seeds=self.smoke_seeds,
                               transforms=tuple(t for t in self.transforms
                                                if t.entrant in names)[:1])


def criterion(family: str) -> tuple[str, bool]:
  """What selection minimises or maximises on the validation split, and whether lower wins."""
  return {'lm': ('geometric mean perplexity over every evaluated length', True),
          'vit': ('mean top-1 accuracy over every evaluated resolution', False),
          'qa': ('none: each PE fine-tunes its LM study choice', False)}[family]


# The metrics a family's tables show (all higher-is-better for QA); the first is the
# headline. Other families show their runs' own metric.
METRICS = {'qa': ('em', 'answer_logp', 'rank_acc')}
# The QA gate (issue: a model that retrieves at the training length before any longer length
# is read): at least one PE's validation exact match at the fine-tuning length.
QA_GATE = 0.8


def score(family: str, results: dict[int, float]) -> float:
  """The selection criterion of one run's validation sweep (metric per length/resolution)."""
  values = list(results.values())
  if family == 'lm':
    return math.exp(sum(math.log(v) for v in values) / len(values))
  return sum(values) / len(values)


# ------------------------------------------------------------------ The entrants.

# Generic knobs, for a PE with none of its own: residual dropout, weight decay, a longer
# warm-up (each at the config's learning rate).
GENERIC = {'dropout': {'model.dropout': 0.1}, 'weight_decay': {'optimizer.weight_decay': 0.1},
           'long_warmup': {'optimizer.warmup_steps': 300}}

# Half the training steps on windows moved to random positions, or on a canvas inside their
# cells (the same pool and draws for every PE that takes them: posenc/shifts.py). A relative
# PE (RoPE 1D/2D/Mixed, ALiBi) gives the same logits for a moved window, in-cell offsets
# included, so only the absolute ones (SeqPE, sinusoids) get the option; APE has nowhere to
# move it. On the canvas RoPE therefore meets only distances that are multiples of the stride.
SHIFTS = {'pe.shift.prob': 0.5}

# SeqPE's recipe when the studies were declared: the best of the earlier, unequal studies
# (the LM's is still configs/lm_base.py's TUNED_SEQPE; the ViT's canvas recipe dropped these
# two when the vit study chose `reference` for it). Its variants are the other recipes those
# studies ranked: the reference, the tuned recipe without distillation, more shifted steps.
SEQPE_TUNED = {'pe.regularizers.balance': 'grad_norm', 'pe.contrastive.train_fraction': 0.5}
# The reference recipe: none of this codebase's SeqPE options.
REFERENCE = {'pe.regularizers.balance': 'none', 'pe.contrastive.train_fraction': 0.0,
             'pe.logit_distill.weight': 0.0}

# The ViT's canvas, as its tuned SeqPE recipe has it: the 7x7 training grid's positions 12
# apart on an 84-wide canvas, a larger grid spread over the same canvas (interpolation),
# shifted steps moving the grid inside its 12x12 cells (all 144 offsets in the pool).
CANVAS = {'pe.canvas_stride': vit_base.CANVAS_STRIDE,
          'pe.shift.pool_size': vit_base.CANVAS_STRIDE**2}


# The rate the LM suite's variants trained at: the LM configs' rate when it ran (their
# default is now 3e-3, the rate every PE chose).
LM_VARIANT_RATE = {'optimizer.lr': 1e-3}


def _lm_entrants() -> tuple[Entrant, ...]:
  lm = 'configs/lm_{}.py'.format
  entrant = functools.partial(Entrant, base=LM_VARIANT_RATE)
  return (
      # The config's default recipe is SeqPE's (SEQPE_TUNED and SEQPE_DISTILL).
      entrant('seqpe', lm('seqpe'), ('extend',),
              variants={'reference': REFERENCE,
                        'no_distill': {'pe.logit_distill.weight': 0.0},
                        'more_shifts': SHIFTS}),
      entrant('rope', lm('rope'), ('extend',),
              variants={'base500': {'pe.rope.base': 500.}, 'base1e5': {'pe.rope.base': 1e5},
                        'dropout': GENERIC['dropout']}),
      entrant('alibi', lm('alibi'), ('extend',),
              variants={'textbook': {'pe.alibi.pre_scale': False},
                        'textbook_dropout': {'pe.alibi.pre_scale': False, **GENERIC['dropout']},
                        'dropout': GENERIC['dropout']}),
      entrant('sincos', lm('sincos'), ('extend',),
              variants={'shifts': SHIFTS, 'base1e3': {'pe.sincos.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      entrant('nope', lm('nope'), ('extend',), variants=GENERIC),
      # APE has no positions beyond its table to shift to: the generic knobs.
      entrant('ape', lm('ape'), ('interpolate',), variants=GENERIC),
  )


def _lm_transforms() -> tuple[EvalTransform, ...]:
  """Length-extrapolation baselines read from the chosen RoPE runs (fair_benchmark.md)."""
  return (EvalTransform('rope_pi', 'rope', 'interpolate', {'eval.rope_scaling': 'pi'}),
          EvalTransform('rope_ntk', 'rope', 'interpolate', {'eval.rope_scaling': 'ntk'}),
          EvalTransform('rope_yarn', 'rope', 'interpolate', {'eval.rope_scaling': 'yarn'}),
          # Keys limited to the last 128 (the training length): if this matches a PE at
          # 8x-16x, that PE's extrapolation is locality.
          EvalTransform('rope_local', 'rope', 'extend', {'eval.local_window': 128}))


def _vit_entrants() -> tuple[Entrant, ...]:
  vit = 'configs/vit_{}.py'.format
  # The ViT has no attention-level distillation in its recipe (the grid host takes no far
  # keys, and the earlier ViT study never chose it).
  reference_vit = {**{k: v for k, v in REFERENCE.items() if not k.startswith('pe.logit_distill')},
                   'pe.inject.proj_bias_init': 0.0}
  return (
      # Positions in patch units, extended on a larger grid: the reference recipe's
      # injection (attn_mul, its projection bias at 1 so the host's attention is not scaled
      # down while the position term grows) with this codebase's balance and window pivots.
      Entrant('seqpe', vit('seqpe'), ('extend',), recipe='reference',
              base={**SEQPE_TUNED, 'pe.inject.proj_bias_init': 1.0},
              variants={'reference': reference_vit,
                        'attn_scalar': {'pe.inject.method': 'attn_scalar',
                                        'pe.inject.proj_bias_init': 0.0},
                        'more_shifts': SHIFTS}),
      Entrant('rope2d', vit('rope2d'), ('extend',),
              variants={'base100': {'pe.rope.base': 100.}, 'base1e3': {'pe.rope.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      Entrant('rope_mixed', vit('rope_mixed'), ('extend',),
              variants={'base100': {'pe.rope.base': 100.}, 'base1e3': {'pe.rope.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      Entrant('sincos2d', vit('sincos2d'), ('extend',),
              variants={'shifts': SHIFTS, 'base1e3': {'pe.sincos.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      Entrant('nope', vit('nope'), ('extend', 'interpolate'), variants=GENERIC),
      Entrant('ape', vit('ape'), ('interpolate',),
              variants={'cubic_keys': {'pe.ape.cubic': 'cubic'}, 'dropout': GENERIC['dropout'],
                        'weight_decay': GENERIC['weight_decay']}),
      # attn_scalar on the canvas (the config's default recipe) with SEQPE_TUNED, as
      # declared and run; its choice (`reference`) is now the config's default.
      Entrant('seqpe_canvas', vit('seqpe'), ('interpolate',), base=SEQPE_TUNED,
              variants={'attn_mul': {'pe.inject.method': 'attn_mul',
                                     'pe.inject.proj_bias_init': 1.0},
                        'more_shifts': SHIFTS, 'reference': reference_vit}),
      Entrant('rope2d_canvas', vit('rope2d'), ('interpolate',), base=CANVAS,
              variants={'base100': {'pe.rope.base': 100.}, 'base1e3': {'pe.rope.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      Entrant('rope_mixed_canvas', vit('rope_mixed'), ('interpolate',), base=CANVAS,
              variants={'base100': {'pe.rope.base': 100.}, 'base1e3': {'pe.rope.base': 1e3},
                        'dropout': GENERIC['dropout']}),
      Entrant('sincos2d_canvas', vit('sincos2d'), ('interpolate',), base=CANVAS,
              variants={'shifts': SHIFTS, 'base1e3': {'pe.sincos.base': 1e3},
                        'dropout': GENERIC['dropout']}),
  )


def _qa_entrants() -> tuple[Entrant, ...]:
  """Every PE fine-tunes its LM study choice (its PE overrides) with the same QA recipe
  (configs/qa_base.py) and budget; SeqPE's reference recipe pretrains its own LMs, at the LM
  config's budget and rate (the rate every PE chose), since the LM study trained it at the
  search budget and 1e-3 only."""
  qa = 'configs/qa_{}.py'.format
  return (Entrant('seqpe', qa('seqpe'), ('extend',), lm='seqpe'),
          Entrant('rope', qa('rope'), ('extend',), lm='rope'),
          Entrant('alibi', qa('alibi'), ('extend',), lm='alibi'),
          Entrant('nope', qa('nope'), ('extend',), lm='nope'),
          Entrant('ape', qa('ape'), ('interpolate',), lm='ape'),
          Entrant('seqpe_reference', qa('seqpe'), ('extend',), base=REFERENCE,
                  pretrain=REFERENCE))


SUITES = {
    'lm': Suite('lm', _lm_entrants(), search_steps=300, transforms=_lm_transforms()),
    # The paper's ViT baselines (APE, RoPE-2D) against SeqPE extended; on the canvas, every
    # canvas baseline (the same in-cell offsets) and APE's resampling.
    'vit': Suite('vit', _vit_entrants(), search_steps=300, seqpe='seqpe',
                 variants_at_best_lr=True,
                 rivals={'extend': ('ape', 'rope2d'),
                         'interpolate': ('ape', 'rope2d_canvas', 'rope_mixed_canvas',
                                         'sincos2d_canvas')}),
    'qa': Suite('qa', _qa_entrants(), search_steps=0, seeds=2, lm_study='lab/results/lm_fair',
                smoke_seeds=1),
}
