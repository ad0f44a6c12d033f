"""Canvas positions (pe.canvas_stride): every grid spread over one canvas, and SeqPE's
training draws moving the training grid inside its cells instead of beyond it."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vit_base
from seqpe_jax import positions, posenc, train
from seqpe_jax.posenc import baselines, losses, regularizers, sampling

# A 3x3 training grid 4 apart on a 12x12 canvas: cells [-2, 2) around each position.
TRAIN, STRIDE, CANVAS = (3, 3), 4, (12, 12)


def canvas_seqpe(stride=STRIDE, shape=TRAIN, **fields):
  cfg = posenc.config.get_config()
  cfg.canvas_stride = stride
  cfg.seqpe.d_model, cfg.seqpe.num_heads, cfg.seqpe.max_position = 32, 2, 30
  cfg.contrastive.num_pivots, cfg.contrastive.num_candidates = 6, 8
  cfg.contrastive.train_fraction = 0.5
  cfg.ood.num_groups, cfg.ood.num_teachers = 3, 5
  cfg.shift.num_windows, cfg.shift.pool_size, cfg.shift.prob = 4, 16, 0.5
  for path, value in fields.items():
    section, key = path.split('__')
    cfg[section][key] = value
  host = posenc.HostSpec(16, 2, shape, num_prefix=1, causal=len(shape) == 1)
  pe = posenc.build(cfg, host)
  return pe, regularizers.build(cfg, pe)


def test_canvas_positions_are_the_cell_centres():
  np.testing.assert_array_equal(positions.canvas_grid((7,), (84,))[:, 0], 12 * np.arange(7) + 6)
  np.testing.assert_array_equal(positions.canvas_grid((2, 3), (8, 12)),
                                [[2, 2], [2, 6], [2, 10], [6, 2], [6, 6], [6, 10]])
  np.testing.assert_array_equal(positions.canvas_grid((3, 4)), positions.grid((3, 4)))
  for n in range(7, 22):  # Every evaluation grid of the default ViT: inside, in order.
    pos = np.asarray(positions.canvas_grid((n,), (84,)))[:, 0]
    assert np.all(np.diff(pos) > 0) and pos.min() >= 0 and pos.max() < 84
    np.testing.assert_allclose(pos / 84, (np.arange(n) + 0.5) / n, atol=1 / 84)
  assert positions.canvas_of((7, 7), 12) == (84, 84) and positions.canvas_of((7, 7), 0) == ()


def test_bad_canvas_settings_stop_with_one_sentence():
  for stride in (1, -2):
    with pytest.raises(ValueError, match='pe.canvas_stride must be 0 .grid positions. or at'):
      positions.canvas_of((7, 7), stride)
  with pytest.raises(ValueError, match='The \\(13,\\) grid has more positions per axis than its'):
    positions.canvas_grid((13,), (12,))
  with pytest.raises(ValueError, match="PE 'ape' has none to spread; set pe.canvas_stride = 0"):
    cfg = posenc.config.get_config()
    cfg.name, cfg.canvas_stride = 'ape', 4
    posenc.build(cfg, posenc.HostSpec(16, 2, TRAIN))
  with pytest.raises(ValueError, match='moved inside their canvas cells reach 32, beyond '
                                       'pe.seqpe.max_position 30'):
    canvas_seqpe(stride=11)  # Positions 5, 16, 27 on a 33-wide canvas, cells [-5, 6).
  with pytest.raises(ValueError, match='on a canvas .pe.canvas_stride. the window moves only'):
    canvas_seqpe(shape=(6,), logit_distill__weight=1.0,  # A causal 1D host's far keys.
                 contrastive__window_range=8)
  with pytest.raises(ValueError, match='The shift pool of 17 exceeds the 16 window starts'):
    canvas_seqpe(shift__pool_size=17)


def test_cell_offsets_cover_every_nonzero_offset_of_the_cell():
  offsets = sampling.cell_offsets(jax.random.key(0), 6000, TRAIN, CANVAS)
  seen = collections.Counter(map(tuple, np.asarray(offsets).tolist()))
  cell = {(r, c) for r in range(-2, 2) for c in range(-2, 2)}
  assert set(seen) == cell - {(0, 0)}  # Never the trained position itself.
  assert max(seen.values()) / min(seen.values()) < 1.5  # Uniform: 400 expected each.
  pool = sampling.shift_pool(jax.random.key(1), train_shape=TRAIN, max_position=30,
                             pool_size=16, canvas=CANVAS)
  assert set(map(tuple, np.asarray(pool).tolist())) == cell  # Every offset of the cell.


def test_seqpe_encodes_every_grid_at_its_canvas_positions():
  pe, _ = canvas_seqpe()
  params = pe.init(jax.random.key(0), TRAIN)
  encode = jax.jit(lambda pos: pe.source.apply({'params': params}, pos, method='encode'))
  for shape in (TRAIN, (5, 5), (12, 12)):
    e = posenc.TableCache(pe, params)(shape)['e'][0]
    np.testing.assert_allclose(e[1:], encode(positions.canvas_grid(shape, CANVAS)), atol=1e-5)
    np.testing.assert_array_equal(e[0], params['prefix'][0])
  with pytest.raises(ValueError, match='The \\(13, 13\\) grid has more positions per axis'):
    pe.check_shape((13, 13))


def test_rope2d_rotates_by_the_canvas_coordinates():
  cfg = posenc.config.get_config()
  cfg.name, cfg.canvas_stride = 'rope2d', STRIDE
  pe = posenc.build(cfg, posenc.HostSpec(16, 2, TRAIN, num_prefix=1))
  angles = baselines.rope_axial_angles(positions.canvas_grid((5, 5), CANVAS), 8, 10_000.)
  np.testing.assert_allclose(pe.features({}, (5, 5))['cos'][0, 1:], jnp.cos(angles), atol=1e-6)


def test_every_training_draw_moves_the_grid_inside_its_cells():
  pe, reg = canvas_seqpe(ood__weight=0.1, logit_distill__weight=1.0,
                         logit_distill__num_far_keys=0)
  params = pe.init(jax.random.key(0), TRAIN)
  pool = reg.shift_pool(jax.random.key(1))
  encode = jax.jit(lambda pos: pe.source.apply({'params': params}, pos, method='encode'))
  trained = positions.canvas_grid(TRAIN, CANVAS)
  step = jax.jit(lambda key: regularizers.seqpe_step(pe, params, key, pool, reg,
                                                     deterministic=True))

  @jax.jit
  def draws_of(key):  # The step's draws, each made again by its own sampler.
    shift_key, ct_key, ood_key, _ = jax.random.split(key, 4)
    return (sampling.sample_shift(shift_key, pool, num_windows=4, prob=0.5),
            regularizers.sample_pivots(ct_key, reg),
            sampling.sample_logit_distill_probes(
                jax.random.fold_in(key, 1), train_shape=TRAIN, max_position=30, num_windows=4,
                num_far_keys=0, canvas=CANVAS),
            sampling.sample_ood(ood_key, train_shape=TRAIN, max_position=30, num_groups=3,
                                num_teachers=5, canvas=CANVAS))

  seen = set()
  for i in range(8):
    key = jax.random.key(i)
    features, aux = step(key)
    (shifted, offsets), ct, draws, ood = draws_of(key)
    seen.add(bool(shifted))
    windows = trained[None] + offsets[:, None]  # The grid where the host meets it this step.
    np.testing.assert_allclose(features['e'][:, 1:], encode(windows), atol=1e-5)
    # The training-window pivots compare canvas positions of the grid with each other.
    train_pivots = np.asarray(ct['pivots'][:reg.ct_train_pivots])
    assert {tuple(p) for p in train_pivots} <= set(map(tuple, np.asarray(trained).tolist()))
    copies = aux['probes']['student']['e']
    np.testing.assert_allclose(copies, encode(trained[None] + draws['offsets'][:, None]),
                               atol=1e-5)
    if not shifted:  # Distillation: students are teachers moved inside their cells.
      moved = np.asarray(ood['offsets'])
      assert np.all((moved >= -2) & (moved < 2)) and np.all(np.any(moved != 0, axis=1))
      main = encode(trained)
      expected = losses.ood_distillation_loss(
          main[ood['teachers']], encode(trained[ood['teachers']] + ood['offsets'][:, None]),
          num_heads=2)
      np.testing.assert_allclose(aux['ood_loss'], expected, rtol=1e-4, atol=1e-9)
  assert seen == {True, False}


def test_a_vit_trains_and_extrapolates_on_a_canvas(tmp_path):
  config = vit_base.get_config('reference,smoke', pe='seqpe')
  config.mesh.data = 1
  config.update_from_flattened_dict({
      'total_steps': 4, 'pe.canvas_stride': 6, 'pe.shift.prob': 0.5,
      'pe.logit_distill.weight': 1.0, 'pe.logit_distill.num_far_keys': 0})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {8, 16}  # The 2x2 training grid and the 4x4 one between it.
  chex.assert_tree_all_finite(results)
