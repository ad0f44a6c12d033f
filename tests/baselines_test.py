"""Baseline PEs: closed forms, shift invariance of RoPE, ALiBi's formula, APE resampling."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax import posenc
from seqpe_jax.posenc import baselines, inject


def test_sincos_1d_equals_its_closed_form():
  pos, dim, base = np.arange(50), 24, 10_000.
  expected = np.zeros((50, dim))
  for p in pos:
    for j in range(dim):
      angle = p * base**(-2 * (j // 2) / dim)
      expected[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
  np.testing.assert_allclose(baselines.sincos_1d(jnp.asarray(pos), dim, base), expected,
                             atol=2e-5)


def test_sincos_nd_gives_each_axis_its_slice():
  pos = jnp.asarray([[3, 7], [0, 5]])
  table = baselines.sincos_nd(pos, 16)
  np.testing.assert_allclose(table[:, :8], baselines.sincos_1d(pos[:, 0], 8))
  np.testing.assert_allclose(table[:, 8:], baselines.sincos_1d(pos[:, 1], 8))


def test_rope_angles_and_rotation_equal_complex_multiplication():
  head_dim, base = 8, 10_000.
  pos = np.arange(6)
  angles = baselines.rope_angles(jnp.asarray(pos), head_dim, base)
  expected = pos[:, None] * base**(-np.arange(0, head_dim, 2) / head_dim)
  np.testing.assert_allclose(angles, expected, rtol=1e-6)
  x = np.random.default_rng(0).normal(size=(6, head_dim)).astype(np.float32)
  rotated = baselines.rotate_pairs(jnp.asarray(x), jnp.cos(angles), jnp.sin(angles))
  z = (x[:, 0::2] + 1j * x[:, 1::2]) * np.exp(1j * expected)
  np.testing.assert_allclose(rotated[:, 0::2], z.real, atol=1e-5)
  np.testing.assert_allclose(rotated[:, 1::2], z.imag, atol=1e-5)


def test_rope_axial_angles():
  head_dim, base = 16, 100.
  angles = baselines.rope_axial_angles(jnp.asarray([[2, 5]]), head_dim, base)
  omega = base**(-4 * np.arange(4) / head_dim)
  np.testing.assert_allclose(angles[0], np.concatenate([5 * omega, 2 * omega]), rtol=1e-6)


def test_rope_mixed_init_has_axial_magnitudes_on_perpendicular_halves():
  f = baselines.rope_mixed_init(jax.random.key(0), num_heads=3, head_dim=16)
  chex.assert_shape(f, (2, 3, 8))
  omega = baselines.rope_axial_frequencies(16)
  np.testing.assert_allclose(jnp.hypot(f[0], f[1]), np.tile(np.concatenate([omega, omega]),
                                                            (3, 1)), rtol=1e-5)
  first, second = f[:, :, :4], f[:, :, 4:]
  np.testing.assert_allclose(jnp.sum(first * second, axis=0), 0, atol=1e-6)  # Perpendicular.
  # A quarter turn counter-clockwise, as the reference has it (theta + pi/2, not - pi/2):
  # (x, y) -> (-y, x).
  np.testing.assert_allclose(second, jnp.stack([-first[1], first[0]]), atol=1e-6)


def _pe(name, shape, num_prefix=0, causal=False, heads=2, d_model=32):
  cfg = posenc.config.get_config()
  cfg.name = name
  host = posenc.HostSpec(d_model=d_model, num_heads=heads, train_shape=shape,
                         num_prefix=num_prefix, causal=causal)
  return posenc.build(cfg, host)


def _layer_scores(pe, shape, offsets, q_BLHD, k_BLHD):
  """Attention logits q.k after this PE's layer hook, for windows starting at `offsets`."""
  params = pe.init(jax.random.key(0), shape)
  features = pe.features(params, shape, offsets)
  hook = pe.layer_hook()
  hook_params = hook.init(jax.random.key(1), q_BLHD, k_BLHD, features)
  q, k, bias = hook.apply(hook_params, q_BLHD, k_BLHD, features)
  assert bias is None
  return jnp.einsum('bqhd,bkhd->bhqk', q, k)


@pytest.mark.parametrize('name, shape, shift', [('rope', (12,), [[37]]),
                                                ('rope2d', (3, 4), [[5, 9]]),
                                                ('rope_mixed', (3, 4), [[5, 9]])])
def test_rope_scores_depend_only_on_the_offset(name, shape, shift):
  pe = _pe(name, shape)
  n = int(np.prod(shape))
  rng = np.random.default_rng(0)
  # The same content at every position: scores can only differ through positions.
  q = jnp.asarray(np.broadcast_to(rng.normal(size=(1, 1, 2, 16)), (1, n, 2, 16)), jnp.float32)
  k = jnp.asarray(np.broadcast_to(rng.normal(size=(1, 1, 2, 16)), (1, n, 2, 16)), jnp.float32)
  at_zero = _layer_scores(pe, shape, None, q, k)
  shifted = _layer_scores(pe, shape, jnp.asarray(shift), q, k)
  np.testing.assert_allclose(shifted, at_zero, atol=1e-4)
  assert np.ptp(np.asarray(at_zero)) > 1e-2  # ...and the scores do vary with the offset.


def test_rope_leaves_the_prefix_token_unrotated():
  pe = _pe('rope2d', (2, 2), num_prefix=1)
  features = pe.features(pe.init(jax.random.key(0), (2, 2)), (2, 2))
  np.testing.assert_array_equal(features['cos'][0, 0], 1)
  np.testing.assert_array_equal(features['sin'][0, 0], 0)


@pytest.mark.parametrize('heads, slopes', [
    (8, [2.0**-i for i in range(1, 9)]),
    (12, [2.0**-i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5])])
def test_alibi_standard_slopes(heads, slopes):
  np.testing.assert_allclose(baselines.alibi_slopes(heads), slopes, rtol=1e-6)


@pytest.mark.parametrize('pre_scale', [True, False])
def test_alibi_bias_equals_its_formula_and_the_relative_form(pre_scale):
  heads, head_dim, length = 4, 8, 6
  cfg = posenc.config.get_config()
  cfg.name, cfg.alibi.pre_scale = 'alibi', pre_scale
  pe = posenc.build(cfg, posenc.HostSpec(heads * head_dim, heads, (length,), causal=True))
  features = pe.features(pe.init(jax.random.key(0), (length,)), (length,))
  q = jnp.zeros((2, length, heads, head_dim))
  _, _, bias = pe.layer_hook().apply({}, q, q, features)
  slopes = baselines.alibi_slopes(heads)
  scale = head_dim**-0.5 if pre_scale else 1.0
  expected = slopes[:, None] * np.arange(length)[None] * scale
  np.testing.assert_allclose(np.broadcast_to(bias, (2, heads, 1, length))[:, :, 0],
                             np.broadcast_to(expected, (2, heads, length)), rtol=1e-6)
  # Under the causal mask, softmax(m*j) rows equal softmax(-m*(i-j)) rows.
  i, j = np.arange(length)[:, None], np.arange(length)[None]
  relative = np.where(j <= i, -slopes[:, None, None] * (i - j) * scale, -np.inf)
  key_only = np.where(j <= i, expected[:, None, :], -np.inf)
  np.testing.assert_allclose(jax.nn.softmax(key_only, -1), jax.nn.softmax(relative, -1),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('shape, method', [((7, 5), 'cubic-pytorch'), ((7, 5), 'cubic'),
                                           ((16,), 'linear')])
def test_ape_resampled_to_its_own_size_is_the_identity(shape, method):
  table = jax.random.normal(jax.random.key(0), (*shape, 6))
  np.testing.assert_allclose(baselines.resample_table(table, shape, method=method), table,
                             atol=1e-6)


def test_ape_resamples_the_grid_and_keeps_the_prefix():
  pe = _pe('ape', (4, 4), num_prefix=1)
  params = pe.init(jax.random.key(0), (4, 4))
  e = pe.features(params, (6, 6))['e']
  chex.assert_shape(e, (1, 37, 32))
  np.testing.assert_array_equal(e[0, 0], params['prefix'][0])
  smooth = jnp.linspace(0, 1, 4)[:, None, None] * jnp.ones((4, 4, 32))  # Linear along rows.
  e_smooth = pe.features(dict(params, table=smooth), (7, 4))['e'][0, 1:].reshape(7, 4, 32)
  rows = np.asarray(e_smooth[:, 0, 0])
  assert np.all(np.diff(rows) > 0)  # A ramp stays a ramp...
  np.testing.assert_allclose(rows + rows[::-1], 1, atol=1e-6)  # ...symmetric: half-pixel centres.


def test_sinusoidal_prefix_conventions():
  flat = _pe('sincos', (2, 3), num_prefix=1)
  e = flat.features({}, (2, 3))['e'][0]
  np.testing.assert_allclose(e, baselines.sincos_1d(jnp.arange(7), 32), atol=1e-6)
  grid = _pe('sincos2d', (2, 3), num_prefix=1)
  e2 = grid.features({}, (2, 3))['e'][0]
  np.testing.assert_array_equal(e2[0], 0)
  np.testing.assert_allclose(e2[1:], baselines.sincos_nd(jnp.asarray(
      [[r, c] for r in range(2) for c in range(3)]), 32), atol=1e-6)


def test_sinusoids_are_added_at_the_scale_of_the_hosts_inputs():
  """A GPT's token embeddings start at std 0.02: a unit sinusoid would drown them (the LM
  then learns unigram statistics only), so the table takes the host's input scale; the
  ViT's patch embeddings are O(1) and keep the textbook amplitude."""
  from seqpe_jax.models import gpt, vit  # pylint: disable=g-import-not-at-top
  cfg = posenc.config.get_config()
  cfg.name = 'sincos'
  lm = posenc.build(cfg, gpt.host_spec('nano', 16))
  np.testing.assert_allclose(lm.features({}, (16,))['e'][0],
                             0.02 * baselines.sincos_1d(jnp.arange(16), 64), atol=1e-7)
  embed_std = float(jnp.std(gpt.GPT(100, 64, 1, 2, 64, lm).init(
      jax.random.key(0), jnp.zeros((1, 16), jnp.int32), lm.features({}, (16,)))
                            ['params']['embed']['embedding']))
  assert embed_std == pytest.approx(gpt.EMBED_STD, rel=0.05)
  cfg.name = 'sincos2d'
  image = posenc.build(cfg, vit.host_spec('mu/4', 16))
  assert float(jnp.abs(image.features({}, (4, 4))['e']).max()) == pytest.approx(1.0, abs=0.01)


def test_per_example_uses_window_b_mod_w():
  windows = jnp.arange(3)[:, None] * jnp.ones((3, 2))
  np.testing.assert_array_equal(inject.per_example(windows, 6)[:, 0], [0, 1, 2, 0, 1, 2])
  with pytest.raises(ValueError, match='A batch of 4 cannot share 3 position windows evenly'):
    inject.per_example(windows, 4)


def test_the_default_base_is_10000():
  pos = jnp.asarray([[3, 7]])
  np.testing.assert_array_equal(baselines.sincos_1d(pos[:, 0], 8),
                                baselines.sincos_1d(pos[:, 0], 8, 10_000.))
  np.testing.assert_array_equal(baselines.sincos_nd(pos, 8), baselines.sincos_nd(pos, 8, 10_000.))
  np.testing.assert_allclose(baselines.rope_angles(jnp.asarray([5]), 8),
                             [[5, 5 * 10_000**-0.25, 5 * 10_000**-0.5, 5 * 10_000**-0.75]],
                             rtol=1e-6)
  np.testing.assert_allclose(baselines.rope_axial_frequencies(16), 10_000.**-(np.arange(4) / 4))
  np.testing.assert_array_equal(baselines.rope_axial_angles(pos, 16),
                                baselines.rope_axial_angles(pos, 16, 10_000.))
  np.testing.assert_array_equal(baselines.rope_mixed_init(jax.random.key(0), 2, 16),
                                baselines.rope_mixed_init(jax.random.key(0), 2, 16, 10_000.))


def test_sincos_nd_splits_three_axes():
  pos = jnp.asarray([[1, 2, 3]])
  table = baselines.sincos_nd(pos, 12)
  for a in range(3):
    np.testing.assert_allclose(table[:, 4 * a:4 * (a + 1)], baselines.sincos_1d(pos[:, a], 4))


@pytest.mark.parametrize('make, message', [
    (lambda: baselines.sincos_1d(jnp.arange(3), 7), 'A sinusoidal PE needs an even width, got 7'),
    (lambda: baselines.sincos_nd(jnp.zeros((2, 3), jnp.int32), 9),
     'A 3D sinusoidal PE needs a width divisible by 6, got 9'),
    (lambda: baselines.rope_angles(jnp.arange(3), 5), 'RoPE needs an even head dimension, got 5'),
    (lambda: baselines.rope_axial_frequencies(6),
     '2D RoPE needs a head dimension divisible by 4, got 6'),
    (lambda: baselines.rope_axial_angles(jnp.zeros((2, 3)), 8),
     'Axial RoPE is defined for 2D positions, got 3 axes'),
])
def test_closed_forms_refuse_widths_they_cannot_fill(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_a_downsampled_table_samples_half_pixel_centres_without_antialiasing():
  """8 -> 4 rows: row j sits at 2j + 0.5 of the old grid, half way between rows 2j and
  2j + 1 (an antialiasing filter would also mix in rows 2j - 1 and 2j + 2)."""
  table = jax.random.normal(jax.random.key(0), (8, 3))
  np.testing.assert_allclose(baselines.resample_table(table, (4,), method='linear'),
                             (table[0::2] + table[1::2]) / 2, atol=1e-6)


def test_alibi_slopes_of_a_power_of_two_and_of_three_and_six_heads():
  np.testing.assert_allclose(baselines.alibi_slopes(4), [2**-2, 2**-4, 2**-6, 2**-8], rtol=1e-6)
  np.testing.assert_allclose(baselines.alibi_slopes(3), [2**-4, 2**-8, 2**-2], rtol=1e-6)
  np.testing.assert_allclose(baselines.alibi_slopes(6),
                             [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rtol=1e-6)


def test_rope_mixed_turns_each_head_by_an_angle_anywhere_on_the_circle():
  f = np.asarray(baselines.rope_mixed_init(jax.random.key(0), num_heads=200, head_dim=8))
  theta = np.mod(np.arctan2(f[1, :, 0], f[0, :, 0]), 2 * np.pi)
  assert theta.min() < 0.1 * np.pi and theta.max() > 1.9 * np.pi
