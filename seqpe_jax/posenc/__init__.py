"""Position encodings by name: a source of per-position features plus injection hooks.

    pe = posenc.build(config.pe, posenc.HostSpec(...))
    pe_params = pe.init(key, host.train_shape)
    features = pe.features(pe_params, shape)        # once per set of positions
    # in the host:  state = pe.model_hook()(features); x = hook.embed(x, state)
    #               q, k, bias = pe.layer_hook()(q, k, state) in every attention layer

The host model never branches on the PE's name: it only calls these hooks.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from seqpe_jax import choices, positions
from seqpe_jax.posenc import baselines, config, inject, seqpe, shifts, sources

__all__ = ['HostSpec', 'PEKind', 'PositionalEncoding', 'REGISTRY', 'TableCache', 'build',
           'config', 'register', 'shifts', 'with_rope_scaling']

QK_PROJ = ('per_layer', 'shared', 'none')


@dataclasses.dataclass(frozen=True)
class HostSpec:
  """What a PE needs to know about the model it feeds.

  Attributes:
    d_model, num_heads: host width D and attention heads H (head width D / H).
    train_shape: the training length (L,) or patch grid (h, w).
    num_prefix: tokens before the grid (the ViT's CLS), which get no grid position.
    causal: whether the host's attention is causal (ALiBi needs it).
    dtype: of the host's activations and matmuls, SeqPE's included (parameters stay float32).
    input_scale: the std of the host's token inputs at initialisation, the amplitude of fixed
      tables: 0.02 for GPT token embeddings, which a unit sinusoid would drown.
  """
  d_model: int
  num_heads: int
  train_shape: tuple[int, ...]
  num_prefix: int = 0
  causal: bool = False
  dtype: Any = jnp.float32
  input_scale: float = 1.0

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'Model width {self.d_model} is not divisible by {self.num_heads} heads.')

  @property
  def ndim(self) -> int:
    return len(self.train_shape)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


@dataclasses.dataclass(frozen=True)
class PositionalEncoding:
  """A PE built by name: its source (own parameters) and its injection hooks (host parameters)."""
  name: str
  method: str
  host: HostSpec
  source: nn.Module
  model_hook: Callable[..., inject.ModelHook]
  layer_hook: Callable[..., inject.LayerHook]

  def init(self, key: jax.Array, shape: Sequence[int]):
    """Parameters of the source (possibly an empty dict)."""
    init = jax.jit(lambda key: self.source.init(key, tuple(shape)))  # One compile, not per op.
    return init(key).get('params', {})

  def features(self, params, shape: Sequence[int], offsets: jax.Array | None = None, *,
               deterministic: bool = True, rngs=None):
    """Source features for `shape`, one window per row of `offsets` (one window at 0 if None)."""
    return self.source.apply({'params': params}, tuple(shape), offsets,
                             deterministic=deterministic, rngs=rngs)

  def check_shape(self, shape: Sequence[int]) -> None:
    """Raises ValueError now if the PE cannot encode `shape` (e.g. beyond SeqPE's digits)."""
    jax.eval_shape(lambda key: self.source.init(key, tuple(shape)), jax.random.key(0))

  @property
  def seqpe_encoder(self) -> seqpe.SeqPEEncoder | None:
    """The SeqPE encoder, for the regularisers and notebooks; None for the baselines."""
    return getattr(self.source, 'encoder', None)


class TableCache:
  """Evaluation-mode features per shape for fixed parameters, each shape encoded once; a long
  1D SeqPE table `chunk` positions at a time (else ~2.6 GiB of temporaries at 16k)."""

  def __init__(self, pe: PositionalEncoding, params, chunk: int = 4096):
    self._pe, self._params, self._chunk, self._tables = pe, params, chunk, {}

  def __call__(self, shape: Sequence[int]):
    shape = tuple(shape)
    if shape not in self._tables:
      self._tables[shape] = jitted_table(self._pe, shape, self._chunk)(self._params)
    return self._tables[shape]


@functools.lru_cache(maxsize=None)
def jitted_table(pe: PositionalEncoding, shape: tuple[int, ...], chunk: int = 4096):
  """The jitted params -> evaluation features function for `shape` (see TableCache)."""
  if pe.seqpe_encoder is None or len(shape) != 1 or shape[0] <= chunk:
    return jax.jit(lambda params: pe.features(params, shape))  # Its trace refuses bad shapes.
  pe.check_shape(shape)  # The chunks' traces see `chunk` positions only: check them all now.
  num_chunks = -(-shape[0] // chunk)

  def chunked(params):
    starts = jnp.arange(num_chunks, dtype=jnp.int32)[:, None, None] * chunk
    per_chunk = jax.lax.map(lambda start: pe.features(params, (chunk,), start), starts)
    # [chunks, 1, chunk, d] -> [1, positions, d]; the last chunk's overhang is dropped.
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(1, num_chunks * chunk, *x.shape[3:])
                        [:, :shape[0]], per_chunk)
  return jax.jit(chunked)


def with_rope_scaling(pe: PositionalEncoding, scaling: str) -> PositionalEncoding:
  """`pe` with its 1D RoPE frequencies rescaled by `scaling` (eval.rope_scaling); '' keeps it."""
  if not scaling:
    return pe
  if scaling not in baselines.ROPE_SCALINGS:
    raise ValueError(f"eval.rope_scaling must be '' or one of "
                     f"{', '.join(baselines.ROPE_SCALINGS)}, got '{scaling}'.")
  source = pe.source
  if not isinstance(source, sources.RotarySource) or source.axial or pe.host.ndim != 1:
    raise ValueError(f"eval.rope_scaling='{scaling}' rescales the frequencies of a 1D RoPE "
                     f"(pe.name='rope'), and this run's PE '{pe.name}' has none; set it to ''.")
  scaled = source.clone(scaling=scaling, train_length=pe.host.train_shape[0])
  return dataclasses.replace(pe, source=scaled)


def canvas_of(cfg: ml_collections.ConfigDict, host: HostSpec) -> tuple[int, ...]:
  """The per-axis canvas widths pe.canvas_stride gives this host's grid; () for none."""
  return positions.canvas_of(host.train_shape, cfg.canvas_stride)


def seqpe_num_digits(cfg: ml_collections.ConfigDict) -> int:
  """Digits per axis: the explicit override, else enough for max_position."""
  return cfg.num_digits or positions.num_digits(cfg.max_position, cfg.base)


def method_hooks(cfg, host: HostSpec, method: str):
  """The (model hook, layer hook) of an injection method."""
  if method == 'input_add':
    return inject.InputAdd, inject.LayerHook
  if method in ('attn_mul', 'attn_add', 'attn_scalar'):
    return _qk_injection_hooks(cfg, host, method)
  if method == 'rotary':
    return inject.ModelHook, inject.Rotary
  if method == 'bias':
    return inject.ModelHook, functools.partial(inject.KeyPositionBias,
                                               pre_scale=cfg.alibi.pre_scale)
  return inject.ModelHook, inject.LayerHook


def _qk_injection_hooks(cfg, host: HostSpec, method: str):
  qk_proj = cfg.inject.qk_proj
  if qk_proj not in QK_PROJ:
    raise ValueError(f"Unknown pe.inject.qk_proj '{qk_proj}'; use one of {', '.join(QK_PROJ)}.")
  d_out = host.d_model if cfg.inject.multi_head else host.head_dim
  bias_init = cfg.inject.proj_bias_init
  model_hook = {'per_layer': inject.ModelHook, 'none': inject.DuplicateQK,
                'shared': functools.partial(inject.SharedQKProjection, d_out=d_out,
                                            bias_init=bias_init, dtype=host.dtype)}[qk_proj]
  return model_hook, functools.partial(
      inject.QKInjection, method=method, per_layer=qk_proj == 'per_layer',
      multi_head=cfg.inject.multi_head, proj_bias_init=bias_init, dtype=host.dtype)


@dataclasses.dataclass(frozen=True)
class PEKind:
  """How to build one kind of PE, registered under its `config.pe.name` (docs/adding_a_pe.md).

  Attributes:
    methods: the injection methods it supports; the first is its default.
    source, hooks: (pe config, host, method) -> its source module, and -> its (model hook,
      layer hook) classes (by default the method's).
    config_section: the `config.pe` section its parameters depend on ('' if none).
    canvas: whether `pe.canvas_stride` can spread its source's per-axis coordinates.
    shifts: whether it has positions beyond the training window for pe.shift to move to.
  """
  methods: tuple[str, ...]
  source: Callable[[ml_collections.ConfigDict, HostSpec, str], nn.Module]
  hooks: Callable[[ml_collections.ConfigDict, HostSpec, str], tuple] = method_hooks
  config_section: str = ''
  canvas: bool = False
  shifts: bool = True

  def __post_init__(self):
    if not self.methods or not set(self.methods) <= set(inject.METHODS):
      raise ValueError(f'A PE needs injection methods from {", ".join(inject.METHODS)}; got '
                       f'{self.methods}.')


REGISTRY: dict[str, PEKind] = {}


def register(name: str, kind: PEKind) -> PEKind:
  """Makes `config.pe.name = name` build `kind` (see README, "Add a position encoding")."""
  if name in REGISTRY:
    raise ValueError(f"A PE named '{name}' is already registered.")
  REGISTRY[name] = kind
  return kind


def build(cfg: ml_collections.ConfigDict, host: HostSpec) -> PositionalEncoding:
  """Builds the PE named `cfg.name` for `host`, validating every choice up front."""
  if cfg.name not in REGISTRY:
    raise choices.unknown('pe.name', cfg.name, REGISTRY)
  kind = REGISTRY[cfg.name]
  method = cfg.inject.method or kind.methods[0]
  if method not in kind.methods:
    raise choices.unknown(f"pe.inject.method (of PE '{cfg.name}')", method, kind.methods)
  if canvas_of(cfg, host) and not kind.canvas:
    raise ValueError(f"pe.canvas_stride spreads per-axis coordinates over a canvas, and PE "
                     f"'{cfg.name}' has none to spread; set pe.canvas_stride = 0 for it.")
  return PositionalEncoding(cfg.name, method, host, kind.source(cfg, host, method),
                            *kind.hooks(cfg, host, method))


# ---------------------------------------------------------------- The built-in PEs.


def _seqpe_source(cfg, host: HostSpec, method: str):
  s = cfg.seqpe
  per_head = method == 'input_add' or cfg.inject.multi_head
  expected = host.d_model if per_head else host.head_dim
  d_out = s.d_out or expected
  if d_out != expected:
    raise ValueError(f"SeqPE d_out={d_out} does not fit injection '{method}': it must equal "
                     f"{'the model width' if per_head else 'the head width'} {expected}.")
  num_digits = seqpe_num_digits(s)
  canvas = canvas_of(cfg, host)
  positions.check_extent_fits(canvas or host.train_shape, base=s.base, width=num_digits)
  encoder = seqpe.SeqPEEncoder(
      ndim=host.ndim, num_digits=num_digits, d_out=d_out, base=s.base, d_model=s.d_model,
      num_heads=s.num_heads, num_layers=s.num_layers, dropout=s.dropout, dtype=host.dtype)
  return sources.SeqPESource(encoder, num_prefix=host.num_prefix, canvas=canvas)


def _sincos_source(cfg, host, method):
  del method
  _even('A sinusoidal PE', host.d_model, 2)
  return sources.SinCosSource(host.d_model, host.num_prefix, cfg.sincos.base, host.input_scale)


def _sincos2d_source(cfg, host, method):
  del method
  _even(f'A {host.ndim}D sinusoidal PE', host.d_model, 2 * host.ndim)
  return sources.SinCosGridSource(host.d_model, host.num_prefix, cfg.sincos.base,
                                  canvas_of(cfg, host), host.input_scale)


def _rotary_source(axial: bool):
  def source(cfg, host, method):
    del method
    _check_rope('rope2d' if axial else 'rope', host, axial)
    return sources.RotarySource(host.head_dim, axial, host.num_prefix, cfg.rope.base,
                                canvas=canvas_of(cfg, host))
  return source


def _rope_mixed_source(cfg, host, method):
  del method
  _check_rope('rope_mixed', host, axial=True)
  return sources.CoordinateSource(host.num_prefix, canvas=canvas_of(cfg, host))


def _alibi_source(cfg, host, method):
  del cfg, method
  if not host.causal:
    raise ValueError('ALiBi adds a bias on key positions, which equals the relative bias only '
                     'under a causal mask; use it with the causal (GPT) model.')
  return sources.KeyPositionSource(host.num_prefix)


register('seqpe', PEKind(('attn_mul', 'attn_add', 'attn_scalar', 'input_add'), _seqpe_source,
                         config_section='seqpe', canvas=True))
register('ape', PEKind(('input_add',), lambda cfg, host, method: sources.LearnedSource(
    host.train_shape, host.d_model, host.num_prefix, cfg.ape.cubic), config_section='ape',
    shifts=False))
register('sincos', PEKind(('input_add',), _sincos_source, config_section='sincos'))
register('sincos2d', PEKind(('input_add',), _sincos2d_source, config_section='sincos', canvas=True))
register('rope', PEKind(('rotary',), _rotary_source(axial=False), config_section='rope'))
register('rope2d', PEKind(('rotary',), _rotary_source(axial=True), config_section='rope',
                          canvas=True))
register('rope_mixed', PEKind(
    ('rotary',), _rope_mixed_source, config_section='rope', canvas=True,
    hooks=lambda cfg, host, method: (inject.ModelHook, functools.partial(
        inject.MixedRotary, base=cfg.rope.base))))
register('alibi', PEKind(('bias',), _alibi_source, config_section='alibi'))
register('none', PEKind(('none',), lambda cfg, host, method: sources.NoSource(), shifts=False))


def _even(what: str, value: int, multiple: int) -> None:
  if value % multiple:
    raise ValueError(f'{what} needs a width divisible by {multiple}, got {value}.')


def _check_rope(name: str, host: HostSpec, axial: bool) -> None:
  if axial and host.ndim != 2:
    raise ValueError(f"PE '{name}' is defined on 2D grids; this host has {host.ndim}D positions.")
  _even(f'{name} (head dimension)', host.head_dim, 4 if axial else 2)
