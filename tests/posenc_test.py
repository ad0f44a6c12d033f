"""Every PE builds by name and runs through the same Transformer; bad choices fail clearly."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from seqpe_jax import posenc
from seqpe_jax.models import transformer

HEADS, D = 2, 16


def pe_config(name, **fields):
  cfg = posenc.config.get_config()
  cfg.name = name
  cfg.seqpe.d_model, cfg.seqpe.num_heads = 32, 2
  for path, value in fields.items():
    section, key = path.split('__')
    cfg[section][key] = value
  return cfg


# The built-in PEs (an example registered by another test module is not one of them); the
# list is checked below, so a built-in that stopped matching the filter cannot drop out.
BUILTIN = [name for name, kind in posenc.REGISTRY.items()
           if kind.source.__module__ == 'seqpe_jax.posenc']
CASES = [(name, shape) for name in BUILTIN for shape in ((8,), (3, 4))
         if not (name in ('rope2d', 'rope_mixed') and len(shape) == 1)
         and not (name == 'alibi' and len(shape) == 2)]
CASES += [('seqpe', (2, 2, 3))] + [('seqpe', (8,), m) for m in ('attn_add', 'attn_scalar',
                                                                  'input_add')]


def test_every_built_in_pe_is_tested():
  assert sorted(BUILTIN) == ['alibi', 'ape', 'none', 'rope', 'rope2d', 'rope_mixed', 'seqpe',
                             'sincos', 'sincos2d']


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
def test_every_pe_builds_by_name_and_extrapolates(case):
  name, shape, *method = case
  cfg = pe_config(name, **({'inject__method': method[0]} if method else {}))
  prefix = 1 if len(shape) == 2 else 0  # A ViT-like host has a CLS token.
  host = posenc.HostSpec(D, HEADS, shape, num_prefix=prefix, causal=len(shape) == 1)
  pe = posenc.build(cfg, host)
  model = transformer.Transformer(1, HEADS, 2 * D, pe, causal=host.causal)
  pe_params = pe.init(jax.random.key(0), shape)
  forward = jax.jit(model.apply, static_argnames='deterministic')
  x = jnp.ones((2, prefix + int(jnp.prod(jnp.asarray(shape))), D))
  params = jax.jit(model.init)(jax.random.key(1), x, pe.features(pe_params, shape))
  bigger = tuple(2 * n for n in shape)
  for grid in (shape, bigger):
    x = jnp.ones((2, prefix + int(jnp.prod(jnp.asarray(grid))), D))
    out = forward(params, x, posenc.TableCache(pe, pe_params)(grid))
    chex.assert_shape(out, x.shape)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize('cfg_fields, host, message', [
    ({'name': 'sinusoid'}, {}, "pe.name='sinusoid' is not one of: seqpe, ape"),
    ({'name': 'rop'}, {}, "pe.name='rop' is not one of: .*; did you mean 'rope'\\?"),
    ({'name': 'rope', 'inject__method': 'attn_mul'}, {},
     r"pe.inject.method \(of PE 'rope'\)='attn_mul' is not one of: rotary.$"),
    ({'name': 'ape', 'inject__method': 'input_ad'}, {},
     r"pe.inject.method \(of PE 'ape'\)='input_ad' is not one of: input_add; did you mean "
     r"'input_add'\?"),
    ({'name': 'rope2d'}, {'d_model': 12, 'num_heads': 2, 'train_shape': (3, 3)},
     'rope2d \\(head dimension\\) needs a width divisible by 4, got 6.'),
    ({'name': 'rope2d'}, {}, "PE 'rope2d' is defined on 2D grids; this host has 1D positions."),
    ({'name': 'alibi'}, {'causal': False},
     'ALiBi adds a bias on key positions, which equals the relative bias only under a causal'),
    ({'name': 'seqpe'}, {'train_shape': (128,)},
     'Position 127 does not fit 2 base-10 digits \\(valid range 0..99\\)'),
    ({'name': 'seqpe', 'seqpe__d_out': 24}, {},
     "SeqPE d_out=24 does not fit injection 'attn_mul': it must equal the model width 16."),
    ({'name': 'seqpe', 'inject__qk_proj': 'global'}, {},
     "Unknown pe.inject.qk_proj 'global'; use one of per_layer, shared, none."),
])
def test_bad_choices_fail_with_one_clear_sentence(cfg_fields, host, message):
  name = cfg_fields.pop('name')
  cfg = pe_config(name, **cfg_fields)
  host = dict(dict(d_model=D, num_heads=HEADS, train_shape=(8,), causal=True), **host)
  with pytest.raises(ValueError, match=message):
    posenc.build(cfg, posenc.HostSpec(**host))


def test_head_count_must_divide_the_width():
  with pytest.raises(ValueError, match='Model width 30 is not divisible by 4 heads.'):
    posenc.HostSpec(d_model=30, num_heads=4, train_shape=(8,))


def test_unknown_config_key_is_an_error():
  cfg = posenc.config.get_config()
  with pytest.raises(AttributeError, match='does not exist and cannot be added'):
    cfg.seqpe.max_positon = 20_000


def test_evaluating_beyond_the_digit_width_is_an_error():
  pe = posenc.build(pe_config('seqpe'), posenc.HostSpec(D, HEADS, (14, 14)))
  cache = posenc.TableCache(pe, pe.init(jax.random.key(0), (14, 14)))
  chex.assert_shape(cache((42, 42))['e'], (1, 42 * 42, D))
  with pytest.raises(ValueError, match='Position 111 does not fit 2 base-10 digits'):
    cache((112, 112))


def test_ape_refuses_shifted_windows():
  pe = posenc.build(pe_config('ape'), posenc.HostSpec(D, HEADS, (8,)))
  with pytest.raises(ValueError, match='The learned APE has no rows for shifted windows'):
    pe.features(pe.init(jax.random.key(0), (8,)), (8,), jnp.asarray([[3]]))


def test_the_pe_config_stays_small():
  """config.pe holds at most 40 leaf fields: an option joins only when it earns its place."""
  def leaves(section):
    return sum(leaves(v) if isinstance(v, ml_collections.ConfigDict) else 1
               for v in section.values())
  assert leaves(posenc.config.get_config()) <= 40
