"""The PE-only attention profile: closed forms, the real layers' logits, a trained run."""

import json
import types

import jax
import numpy as np
import pytest

from configs import lm_base
from lab import position_profile
from seqpe_jax import tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.posenc import baselines


def causal_logits(values_LL):
  length = values_LL.shape[-1]
  return np.where(np.tril(np.ones((length, length), bool)), values_LL, -np.inf)


def test_position_free_layer_spreads_attention_evenly():
  length, near = 40, 6
  got = position_profile.query_profile(causal_logits(np.zeros((3, length, length))), near,
                                       train_length=10)
  i = np.arange(length)
  np.testing.assert_allclose(got['mean_distance'], i / 2, atol=1e-12)
  np.testing.assert_allclose(got['near_mass'], np.minimum(near, i + 1) / (i + 1), atol=1e-12)
  assert np.all(np.isnan(got['falloff'][:10])) and np.all(got['falloff'][10:] == 0)


def test_a_linear_distance_penalty_gives_the_geometric_mean_distance():
  length, slope = 50, 0.3
  distance = np.arange(length)[:, None] - np.arange(length)[None]
  got = position_profile.query_profile(causal_logits(-slope * distance)[None], near=4,
                                       train_length=8)
  for i in (0, 7, 12, 49):
    d = np.arange(i + 1)
    w = np.exp(-slope * d)
    np.testing.assert_allclose(got['mean_distance'][i], (d * w).sum() / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(got['near_mass'][i], w[:4].sum() / w.sum(), rtol=1e-12)
  # The fall-off is slope x (mean distance of the keys 8..15 back - that of the 4 nearest).
  assert np.isnan(got['falloff'][7])
  np.testing.assert_allclose(got['falloff'][12], slope * (np.mean([8, 9, 10, 11, 12]) - 1.5))
  np.testing.assert_allclose(got['falloff'][49], slope * (11.5 - 1.5))


def test_buckets_double_from_the_training_length():
  assert position_profile.buckets(2048, 128) == [(0, 128), (128, 256), (256, 512),
                                                  (512, 1024), (1024, 2048)]
  assert position_profile.buckets(300, 128) == [(0, 128), (128, 256), (256, 300)]


def smoke_lm(pe):
  config = lm_base.get_config('smoke', pe=pe)
  config.mesh.data = 1
  task = tasks.build(config)
  state = state_lib.init_state(task, state_lib.make_optimizer(task, config), jax.random.key(0))
  return config, task, state['params']


def test_alibi_layers_give_their_bias_and_no_pe_gives_nothing():
  """Through the real GPT: ALiBi's position logits fall by slope x distance (its pre-scale
  bias, over sqrt(d_h)) in every layer; without a PE the profile is the position-free one."""
  length = 48
  config, task, params = smoke_lm('alibi')
  layers = position_profile.layer_position_logits(task, params, length)
  heads, head_dim = 2, 32  # The nano GPT.
  assert len(layers) == 2 and layers[0].shape == (heads, length, length)
  slopes = np.asarray(baselines.alibi_slopes(heads)) * head_dim**-0.5
  distance = np.arange(length)[:, None] - np.arange(length)[None]
  for logits in layers:
    relative = logits - np.diagonal(logits, axis1=1, axis2=2)[..., None]
    np.testing.assert_allclose(relative, causal_logits(-slopes[:, None, None] * distance),
                               rtol=1e-5, atol=1e-4)
  _, task, params = smoke_lm('none')
  for logits in position_profile.layer_position_logits(task, params, length):
    got = position_profile.query_profile(logits, near=8, train_length=16)
    want = position_profile.uniform_profile(length, near=8, train_length=16)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_a_grid_task_is_one_sentence():
  with pytest.raises(ValueError, match='Position profiles need a 1-D task'):
    position_profile.layer_position_logits(types.SimpleNamespace(train_shape=(4, 4)), {}, 8)


def test_profile_of_a_trained_run(tmp_path):
  """A SeqPE run trained two steps: the profile restores it and writes the table and plot."""
  config = lm_base.get_config('smoke', pe='seqpe')
  config.mesh.data, config.total_steps = 1, 2
  train.train_and_evaluate(config, str(tmp_path))
  out = position_profile.profile_run(str(tmp_path), length=64, near=8)
  assert out['query_ranges'] == [(0, 32), (32, 64)]
  assert len(out['layers']) == 2 and len(out['mean']['mean_distance']) == 2
  written = json.loads((tmp_path / 'position_profile_64.json').read_text())
  assert written['mean'] == out['mean']
  assert (tmp_path / 'position_profile_64.png').stat().st_size > 0
  # Inside the window a position-free layer's mean distance is (L-1)/4 on average.
  assert out['position_free']['mean_distance'][0] == pytest.approx(31 / 4)
