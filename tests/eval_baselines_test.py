"""The LM's evaluation-time baselines from a RoPE run: position interpolation, NTK-aware
scaling and YaRN against their closed forms, the local-attention control's mask on every
attention path, and `evaluate` applying them to a trained run."""

import json
import math
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm_base
from seqpe_jax import evaluate, posenc, tasks, train
from seqpe_jax.models import attention, gpt, transformer
from seqpe_jax.posenc import baselines, inject

# One xdist worker runs this file, so its module fixture (the RoPE run every baseline reads)
# trains once.
pytestmark = pytest.mark.xdist_group('eval_baselines')

# A RoPE host of head width 16 trained at 256 tokens: its pairs' r_i = L theta_i / 2 pi are
# 40.7, 12.9, 4.1, 1.3, 0.41, ..., so YaRN keeps pair 0, ramps pairs 1-3 and interpolates
# the rest.
D, HEADS, TRAIN_LEN, BASE = 32, 2, 256, 10_000.
HEAD_DIM = D // HEADS


def rope(name='rope', train_len=TRAIN_LEN):
  cfg = posenc.config.get_config()
  cfg.name, cfg.seqpe.max_position = name, 1000
  return posenc.build(cfg, posenc.HostSpec(D, HEADS, (train_len,), causal=True))


def oracle(method, positions, length):
  """NumPy float64: (cos, sin) each method gives positions of an `length`-token sequence."""
  s = length / TRAIN_LEN
  i = np.arange(HEAD_DIM // 2)
  theta = BASE**(-2 * i / HEAD_DIM)
  factor = 1.0
  if method == 'pi':
    theta = theta / s
  elif method == 'ntk':
    theta = (BASE * s**(HEAD_DIM / (HEAD_DIM - 2)))**(-2 * i / HEAD_DIM)
  else:
    r = TRAIN_LEN / (2 * math.pi / theta)
    gamma = np.asarray([0.0 if x < 1 else 1.0 if x > 32 else (x - 1) / 31 for x in r])
    theta = (1 - gamma) * theta / s + gamma * theta
    factor = math.sqrt(1 / (1 / (0.1 * math.log(s) + 1)**2))  # sqrt(1/t) = 0.1 ln s + 1.
  angles = np.asarray(positions, np.float64)[:, None] * theta
  return factor * np.cos(angles), factor * np.sin(angles)


@pytest.mark.parametrize('method', ['pi', 'ntk', 'yarn'])
@pytest.mark.parametrize('length', [4 * TRAIN_LEN, 3 * TRAIN_LEN // 2])
def test_scaled_rope_matches_its_closed_form(method, length):
  scaled = posenc.with_rope_scaling(rope(), method)
  features = scaled.features({}, (length,))
  at = np.asarray([0, 1, 7, TRAIN_LEN - 1, TRAIN_LEN + 3, length - 1])
  cos, sin = oracle(method, at, length)
  np.testing.assert_allclose(features['cos'][0, at], cos, atol=3e-5)
  np.testing.assert_allclose(features['sin'][0, at], sin, atol=3e-5)
  # Up to the training length every method is plain RoPE: the run's own numbers.
  plain = rope().features({}, (TRAIN_LEN,))
  chex.assert_trees_all_equal(scaled.features({}, (TRAIN_LEN,)), plain)


def test_the_methods_known_properties_at_four_times_the_length():
  theta = baselines.rope_frequencies(HEAD_DIM, BASE)
  pi, pi_factor = baselines.scaled_rope_frequencies('pi', HEAD_DIM, BASE, 4.0, TRAIN_LEN)
  ntk, _ = baselines.scaled_rope_frequencies('ntk', HEAD_DIM, BASE, 4.0, TRAIN_LEN)
  yarn, factor = baselines.scaled_rope_frequencies('yarn', HEAD_DIM, BASE, 4.0, TRAIN_LEN)
  np.testing.assert_allclose(pi, theta / 4)
  assert pi_factor == 1.0
  # NTK keeps the highest frequency and interpolates the lowest by exactly s.
  np.testing.assert_allclose([ntk[0], ntk[-1]], [theta[0], theta[-1] / 4], rtol=1e-12)
  assert np.all(ntk[1:-1] < theta[1:-1]) and np.all(ntk[1:-1] > theta[1:-1] / 4)
  # YaRN: pair 0 (r = 40.7 > beta) unchanged, pairs 4.. (r < alpha) as PI, a ramp between.
  np.testing.assert_allclose(yarn[0], theta[0])
  np.testing.assert_allclose(yarn[4:], theta[4:] / 4)
  r1 = TRAIN_LEN * theta[1] / (2 * math.pi)
  np.testing.assert_allclose(yarn[1], theta[1] * ((1 - (r1 - 1) / 31) / 4 + (r1 - 1) / 31))
  assert factor == pytest.approx(1 + 0.1 * math.log(4))  # 1.1386: logits x 1.2965.


def test_yarns_factor_scales_the_rotated_logits_by_one_over_t():
  features = posenc.with_rope_scaling(rope(), 'yarn').features({}, (4 * TRAIN_LEN,))
  _, factor = baselines.scaled_rope_frequencies('yarn', HEAD_DIM, BASE, 4.0, TRAIN_LEN)
  x = jax.random.normal(jax.random.key(0), (1, 4 * TRAIN_LEN, HEADS, HEAD_DIM))
  q, k, _ = inject.Rotary()(x, x, features)
  unit = jax.tree.map(lambda c: c / factor, features)
  q1, k1, _ = inject.Rotary()(x, x, unit)
  logits = jnp.einsum('bqhd,bkhd->hqk', q[:, :40], k[:, :40])
  np.testing.assert_allclose(logits, factor**2 * jnp.einsum('bqhd,bkhd->hqk', q1[:, :40],
                                                            k1[:, :40]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ['alibi', 'seqpe', 'sincos', 'none'])
def test_scaling_refuses_a_pe_without_rope_frequencies(name):
  with pytest.raises(ValueError, match=f"eval.rope_scaling='pi' rescales the frequencies of a "
                                       f"1D RoPE .pe.name='rope'., and this run's PE '{name}' "
                                       "has none; set it to ''."):
    posenc.with_rope_scaling(rope(name), 'pi')
  with pytest.raises(ValueError, match="eval.rope_scaling must be '' or one of pi, ntk, yarn, "
                                       "got 'linear'."):
    posenc.with_rope_scaling(rope(), 'linear')
  assert posenc.with_rope_scaling(rope(name), '') is not None


def local_oracle(q, k, v, scale, window):
  """NumPy float64 softmax attention, query i over keys i - window < j <= i."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) * scale
  i, j = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None]
  logits = np.where((j <= i) & (j > i - window), logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum('bhqk,bkhd->bqhd', p / p.sum(-1, keepdims=True), v)


PATHS = {'dense': lambda q, k, v, **kw: attention.dot_product_attention(
             q, k, v, implementation='xla', **kw),
         'blockwise': lambda q, k, v, **kw: attention.blockwise_attention(
             q, k, v, block_q=4, block_k=8, **kw)}


@pytest.mark.parametrize('path', sorted(PATHS))
@pytest.mark.parametrize('window', [1, 6, 13])
def test_the_local_window_masks_exactly_the_keys_older_than_t(path, window):
  length, keys = 30, jax.random.split(jax.random.key(window), 3)
  q, k = (jax.random.normal(key, (2, length, 2, 8)) for key in keys[:2])
  v = jax.random.normal(keys[2], (2, length, 2, 8))
  run = lambda k, v: PATHS[path](q, k, v, scale=8**-0.5, causal=True, local_window=window)
  out = run(k, v)
  np.testing.assert_allclose(out, local_oracle(q, k, v, 8**-0.5, window), atol=2e-5)
  # Changing key/value j moves exactly the queries j .. j + T - 1.
  j = 9
  moved = run(k.at[:, j].add(3.0), v.at[:, j].add(3.0))
  changed = np.abs(np.asarray(moved - out)).max(axis=(0, 2, 3)) > 1e-6
  np.testing.assert_array_equal(np.flatnonzero(changed), np.arange(j, min(j + window, length)))


@pytest.mark.parametrize('path', sorted(PATHS))
def test_a_window_as_long_as_the_sequence_is_plain_causal_attention(path):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (1, 16, 2, 8)) for key in keys)
  full = PATHS[path](q, k, v, scale=0.3, causal=True)
  np.testing.assert_allclose(PATHS[path](q, k, v, scale=0.3, causal=True, local_window=16),
                             full, atol=1e-6)
  with pytest.raises(ValueError, match='A local attention window is a positive number of '
                                       'past keys on a causal model'):
    PATHS[path](q, k, v, scale=0.3, causal=False, local_window=4)


def test_cached_decoding_honours_the_local_window():
  cfg = posenc.config.get_config()
  cfg.name = 'rope'
  pe = posenc.build(cfg, gpt.host_spec('nano', 8))
  model = gpt.GPT(37, pe=pe, attention=transformer.AttentionOptions(local_window=4),
                  **gpt.parse_variant('nano'))
  table = pe.features({}, (15,))
  prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, 37)
  params = model.init(jax.random.key(0), prompt, gpt.slice_features(table, 0, 5))['params']
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)  # Positions matter.
  tokens, logits = gpt.generate(model, params, table, prompt, 10)
  sequence = jnp.concatenate([prompt, tokens[:, :-1]], axis=1)
  table = gpt.slice_features(table, 0, sequence.shape[1])
  full = model.apply({'params': params}, sequence, table)
  np.testing.assert_allclose(logits, full[:, 4:], atol=2e-5, rtol=2e-5)
  unlimited = model.clone(attention=transformer.AttentionOptions())
  assert np.abs(np.asarray(unlimited.apply({'params': params}, sequence, table)[:, 4:]
                           - full[:, 4:])).max() > 1e-3  # The window changed something.


@pytest.fixture(scope='module')
def rope_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('rope_run')
  config = lm_base.get_config('smoke', pe='rope')
  # Enough steps at a high rate that the model leans on positions (ppl ~30 on bytes), so
  # each baseline moves its perplexity at 2x by 1e-3 or more.
  config.mesh.data, config.total_steps, config.optimizer.lr = 1, 40, 3e-3
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_evaluate_applies_each_baseline_to_a_trained_rope_run(rope_run):
  own = (rope_run / 'extrapolation.json').read_text()
  plain = evaluate.evaluate_workdir(str(rope_run), split='valid')
  seen = {}
  for name, overrides in (('pi', {'eval.rope_scaling': 'pi'}),
                          ('ntk', {'eval.rope_scaling': 'ntk'}),
                          ('yarn', {'eval.rope_scaling': 'yarn'}),
                          ('local32', {'eval.local_window': 32})):
    results = evaluate.evaluate_workdir(str(rope_run), 'valid', overrides, name)
    record = json.loads((rope_run / f'extrapolation_valid_{name}.json').read_text())
    assert record['results']['64']['ppl'] == pytest.approx(results[64]['ppl'])
    # At the training length (32) each is the run itself; at 2x it is a model of its own.
    assert results[32]['ppl'] == pytest.approx(plain[32]['ppl'], rel=1e-6)
    assert abs(results[64]['ppl'] - plain[64]['ppl']) > 1e-4
    seen[name] = results[64]['ppl']
  assert len({round(x, 6) for x in seen.values()}) == 4
  assert (rope_run / 'extrapolation.json').read_text() == own  # The run's sweep is kept.


def test_the_scalings_refuse_a_run_without_rope():
  config = lm_base.get_config('smoke', pe='alibi')
  config.eval.rope_scaling = 'yarn'
  with pytest.raises(ValueError, match="this run's PE 'alibi' has none"):
    tasks.build(config)
  config = lm_base.get_config('smoke', pe='rope')
  config.eval.local_window = -1
  with pytest.raises(ValueError, match='eval.local_window must be 0 .every key. or a number'):
    tasks.build(config)


def test_the_command_line_refuses_an_unknown_scaling_in_one_sentence(rope_run):
  done = subprocess.run(
      [sys.executable, '-m', 'seqpe_jax.evaluate', f'--workdir={rope_run}',
       '--config.eval.rope_scaling=linear', '--name=linear'],
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2, done.stderr
  assert "eval.rope_scaling must be '' or one of pi, ntk, yarn, got 'linear'." in done.stderr
  assert 'Traceback' not in done.stderr


def test_the_command_line_sweeps_with_overrides_prints_the_table_and_what_it_wrote(rope_run):
  done = subprocess.run(
      [sys.executable, '-m', 'seqpe_jax.evaluate', f'--workdir={rope_run}', '--split=valid',
       '--config.eval.local_window=32', '--name=cli'],
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  record = json.loads((rope_run / 'extrapolation_valid_cli.json').read_text())
  assert record['overrides'] == {'eval.local_window': 32}
  lines = done.stdout.splitlines()
  assert lines[-1] == (f'Wrote {rope_run}/extrapolation_valid_cli.json, '
                       f'{rope_run}/extrapolation_valid_cli.png.')
  ppl = record['results']['64']['ppl']
  assert any(line.startswith(f'| 64 | {ppl:.4g} |') for line in lines)  # ppl, nll, tokens.


def test_an_override_of_another_type_than_the_recorded_value_is_refused():
  config = lm_base.get_config('smoke', pe='rope')
  with pytest.raises(ValueError, match=r"local_window='wide' should be a int like the recorded 0"):
    evaluate.with_eval_overrides(config, {'eval.local_window': 'wide'})
  assert evaluate.with_eval_overrides(config, {'eval.batch_size': 4}).eval.batch_size == 4
  assert evaluate.with_eval_overrides(config, {'eval.lengths': 64}).eval.lengths == (64,)
