"""pe.shift for every PE that reads positions: a baseline draws SeqPE's windows for the same
key (window starts, or in-cell offsets on a canvas), and its features in a shifted step are
those of exactly the shifted positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vit_base
from seqpe_jax import posenc, tasks, train
from seqpe_jax.posenc import inject, regularizers, sampling, shifts

D, HEADS, BASE = 16, 2, 10_000.
WINDOWS, POOL, SPACE = 4, 16, 30
# (PE, training shape, canvas stride): every baseline that reads positions, 1D and 2D,
# and every one that reads per-axis coordinates on a 3x3 grid 4 apart on a 12x12 canvas.
CASES = [('sincos', (8,), 0), ('rope', (8,), 0), ('alibi', (8,), 0),
         ('sincos', (3, 3), 0), ('sincos2d', (3, 3), 0), ('rope2d', (3, 3), 0),
         ('rope_mixed', (3, 3), 0), ('sincos2d', (3, 3), 4), ('rope2d', (3, 3), 4),
         ('rope_mixed', (3, 3), 4)]


def pe_config(name, stride=0, prob=0.5):
  cfg = posenc.config.get_config()
  cfg.name, cfg.canvas_stride = name, stride
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, SPACE
  cfg.contrastive.num_pivots, cfg.contrastive.num_candidates = 6, 8
  cfg.contrastive.window_range = 8
  cfg.ood.num_groups, cfg.ood.num_teachers = 3, 5
  cfg.shift.num_windows, cfg.shift.pool_size, cfg.shift.prob = WINDOWS, POOL, prob
  return cfg


def host(shape):
  return posenc.HostSpec(D, HEADS, shape, num_prefix=len(shape) - 1, causal=len(shape) == 1)


def build(name, shape, stride=0, prob=0.5):
  cfg = pe_config(name, stride, prob)
  pe = posenc.build(cfg, host(shape))
  return pe, shifts.build(cfg, pe, posenc.REGISTRY[name].shifts)


def trained_positions(shape, stride):
  """NumPy: the training grid, row-major, spread over the canvas as its cell centres."""
  axes = [np.arange(n) if not stride else (2 * np.arange(n) + 1) * stride * n // (2 * n)
          for n in shape]
  return np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, len(shape))


@pytest.mark.parametrize('shape, stride', sorted({(shape, stride) for _, shape, stride in CASES}))
def test_a_baseline_draws_seqpes_windows_for_the_same_key(shape, stride):
  cfg = pe_config('seqpe', stride)
  seqpe = posenc.build(cfg, host(shape))
  reg = regularizers.build(cfg, seqpe)
  pool_key = jax.random.key(1)
  pool = reg.shift_pool(pool_key)
  baselines = [build(name, shape, stride)[1] for name, *setting in CASES
               if tuple(setting) == (shape, stride)]
  for baseline in baselines:
    np.testing.assert_array_equal(baseline.pool(pool_key), pool)
  params = seqpe.init(jax.random.key(0), shape)
  step = jax.jit(lambda key: regularizers.seqpe_step(seqpe, params, key, pool, reg,
                                                     deterministic=True)[0]['e'])
  encode = jax.jit(lambda pos: seqpe.source.apply({'params': params}, pos, method='encode'))
  grid = trained_positions(shape, stride)
  seen = set()
  for i in range(6):
    key = jax.random.key(10 + i)
    seqpe_e = step(key)[:, len(shape) - 1:]
    for baseline in baselines:
      shifted, offsets = baseline.sample(key, pool)
      seen.add(bool(shifted))
      # SeqPE's host meets the windows the baseline drew: its features are their encodings.
      windows = grid[None] + np.asarray(offsets)[:, None]
      np.testing.assert_allclose(seqpe_e, encode(windows), atol=1e-5)
  assert seen == {True, False}
  if stride:  # On a canvas the pool is every offset of a cell: [-2, 2) per axis.
    assert {tuple(o) for o in np.asarray(pool).tolist()} == {
        (r, c) for r in range(-2, 2) for c in range(-2, 2)}


def expected_features(name, pos_WNn, shape, prefix):
  """NumPy oracle: the features of `name` at the given positions, prefix rows first."""
  w, n, ndim = pos_WNn.shape
  flat = pos_WNn[..., 0] if ndim == 1 else pos_WNn[..., 0] * shape[1] + pos_WNn[..., 1]
  if name == 'sincos':
    freqs = BASE**(-np.arange(0, D, 2) / D)
    angles = (flat + prefix)[..., None] * freqs
    e = np.stack([np.sin(angles), np.cos(angles)], -1).reshape(w, n, D)
    return {'e': e}
  if name == 'sincos2d':
    half = D // 2
    freqs = BASE**(-np.arange(0, half, 2) / half)
    parts = []
    for a in range(2):
      angles = pos_WNn[..., a, None] * freqs
      parts.append(np.stack([np.sin(angles), np.cos(angles)], -1).reshape(w, n, half))
    return {'e': np.concatenate(parts, -1)}
  if name == 'rope':
    angles = flat[..., None] * BASE**(-np.arange(0, D // HEADS, 2) / (D // HEADS))
    return {'cos': np.cos(angles), 'sin': np.sin(angles)}
  if name == 'rope2d':
    omega = BASE**(-4 * np.arange(D // HEADS // 4) / (D // HEADS))
    angles = np.concatenate([pos_WNn[..., 1:2] * omega, pos_WNn[..., 0:1] * omega], -1)
    return {'cos': np.cos(angles), 'sin': np.sin(angles)}
  if name == 'rope_mixed':
    return {'pos': pos_WNn.astype(np.float64)}
  assert name == 'alibi'
  return {'key_pos': flat.astype(np.float64)}


@pytest.mark.parametrize('name, shape, stride', CASES)
def test_a_shifted_step_gives_a_baseline_exactly_the_shifted_positions(name, shape, stride):
  pe, spec = build(name, shape, stride, prob=1.0)
  params = pe.init(jax.random.key(0), shape)
  pool = spec.pool(jax.random.key(1))
  key = jax.random.key(3)
  features, probes, terms, scalars = regularizers.training_step(
      pe, None, params, key, jnp.zeros((), jnp.int32), pool, spec)
  assert float(terms['loss']) == 0 and probes == {} and scalars == {}
  shifted, offsets = sampling.sample_shift(jax.random.split(key, 4)[0], pool,
                                           num_windows=WINDOWS, prob=1.0)
  offsets = np.asarray(offsets)
  assert bool(shifted) and len({tuple(o) for o in offsets.tolist()}) > 1
  pos = trained_positions(shape, stride)[None] + offsets[:, None]
  prefix = len(shape) - 1
  for leaf, expected in expected_features(name, pos, shape, prefix).items():
    # The ViT-like host's CLS (prefix) row is not shifted: it has no grid position.
    got = np.asarray(features[leaf])
    assert got.shape[:2] == (WINDOWS, prefix + pos.shape[1])
    np.testing.assert_allclose(got[:, prefix:], expected, atol=2e-5)


def test_rope_rotates_each_example_by_its_windows_shifted_positions():
  pe, spec = build('rope', (8,), prob=1.0)
  pool = spec.pool(jax.random.key(1))
  key = jax.random.key(5)
  features = shifts.training_features(pe, spec, {}, key, pool)
  _, offsets = spec.sample(key, pool)
  head_dim, batch = D // HEADS, 2 * WINDOWS
  x = np.random.default_rng(0).normal(size=(batch, 8, HEADS, head_dim)).astype(np.float32)
  q, k, _ = inject.Rotary()(jnp.asarray(x), jnp.asarray(x), features)
  freqs = BASE**(-np.arange(0, head_dim, 2) / head_dim)
  for b in range(batch):  # Example b, window b mod W: positions t + s_b, as a complex turn.
    turn = np.exp(1j * (np.arange(8) + int(offsets[b % WINDOWS, 0]))[:, None, None] * freqs)
    z = (x[b, ..., 0::2] + 1j * x[b, ..., 1::2]) * turn
    np.testing.assert_allclose(q[b, ..., 0::2], z.real, atol=1e-4)
    np.testing.assert_allclose(k[b, ..., 1::2], z.imag, atol=1e-4)


def test_without_shifts_a_baseline_keeps_its_one_window():
  pe, spec = build('rope', (8,), prob=0.0)
  assert spec is None
  features = shifts.training_features(pe, None, {}, jax.random.key(0), jnp.zeros((1, 1)))
  plain = pe.features({}, (8,))
  assert features['cos'].shape == (1, 8, D // HEADS // 2)
  np.testing.assert_array_equal(features['cos'], plain['cos'])
  _, seqpe_spec = build('seqpe', (8,))
  assert seqpe_spec is None  # SeqPE's regularisers draw its windows.


@pytest.mark.parametrize('name', ['ape', 'none'])
def test_a_pe_without_positions_beyond_its_window_refuses_shifts(name):
  with pytest.raises(ValueError, match=f"PE '{name}' has no positions beyond its training "
                                       'window to shift to; set pe.shift.prob = 0 for it.'):
    build(name, (8,))
  assert build(name, (8,), prob=0.0)[1] is None


def test_bad_shift_settings_stop_with_one_sentence():
  with pytest.raises(ValueError, match='pe.shift.prob must be a probability, got 1.5.'):
    build('rope', (8,), prob=1.5)
  cfg = pe_config('rope2d', 4)
  cfg.shift.pool_size = 17
  with pytest.raises(ValueError, match='The shift pool of 17 exceeds the 16 window starts'):
    shifts.build(cfg, posenc.build(cfg, host((3, 3))), True)
  cfg = pe_config('rope', 0)
  cfg.shift.num_windows = 0
  with pytest.raises(ValueError, match='pe.shift.num_windows must be at least 1, got 0.'):
    shifts.build(cfg, posenc.build(cfg, host((8,))), True)
  cfg.shift.num_windows = 1  # One window per step: every example moves alike.
  assert shifts.build(cfg, posenc.build(cfg, host((8,))), True).num_windows == 1


def test_a_vit_baseline_trains_with_in_cell_offsets_on_a_canvas(tmp_path):
  config = vit_base.get_config('smoke', pe='sincos2d')
  config.mesh.data = 1
  config.update_from_flattened_dict({'total_steps': 3, 'pe.canvas_stride': 6,
                                     'pe.shift.prob': 1.0, 'pe.shift.pool_size': 36})
  task = tasks.build(config)
  pool = task.shift_pool(jax.random.key(1))
  features, _, _, _ = task.pe_training_step({}, jax.random.key(2), jnp.zeros((), jnp.int32),
                                             pool)
  windows = config.pe.shift.num_windows
  assert features['e'].shape[0] == windows
  assert not np.allclose(features['e'][0], task.pe.features({}, task.train_shape)['e'][0])
  assert {tuple(o) for o in np.asarray(pool).tolist()} == {  # Every offset of a 6x6 cell.
      (r, c) for r in range(-3, 3) for c in range(-3, 3)}
  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {8, 16}
  assert all(np.isfinite(r['accuracy']) for r in results.values())
