"""LM experiment end to end: perplexity, every config's smoke run, the paper config, bad input."""

import importlib
import json
import math
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm_ape, lm_base, lm_seqpe
from seqpe_jax import evaluate, optim, posenc, sharding, tasks, train
from seqpe_jax import results as results_files
from seqpe_jax import state as state_lib
from seqpe_jax.models import gpt
from seqpe_jax.tasks import lm
from tests import xla_options

CONFIGS = ['lm_seqpe', 'lm_ape', 'lm_sincos', 'lm_rope', 'lm_alibi', 'lm_nope']


def smoke_config(pe='seqpe', **overrides):
  config = lm_base.get_config('smoke', pe=pe)
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize('pe, protocol', [('seqpe', 'non_overlapping'),
                                          ('ape', 'non_overlapping'), ('ape', 'sliding')])
def test_perplexity_equals_a_direct_computation_from_logits(pe, protocol):
  config = smoke_config(pe, **{'mesh.data': 1, 'eval.protocol': protocol,
                               'eval.stride_fraction': 0.25})
  task = tasks.build(config)
  state = jax.jit(lambda k: state_lib.init_state(task, optax.identity(), k))(jax.random.key(0))
  params = state['params']
  results = task.sweep(params, sharding.make_mesh(config.mesh))
  tokens = task.tokens['test']
  forward = jax.jit(lambda p, x, f: task.model.apply({'params': p}, x, f))
  for length in config.eval.lengths:
    stride = length // 4 if protocol == 'sliding' else length
    table = task.pe.features(params['pe'], (length,))
    nll, count, start = 0.0, 0, 0
    while True:  # Batch size 1, the last window partial; later sliding windows score their end.
      window = tokens[start:start + length]
      logits = forward(params['model'], jnp.asarray(window)[None],
                       gpt.slice_features(table, 0, len(window)))
      z = np.asarray(logits[0, :-1], np.float64)  # Log-softmax in NumPy, float64.
      z = z - z.max(-1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
      first = 1 if start == 0 else max(1, length - stride)  # The first target scored.
      targets = np.arange(first, len(window))
      nll -= logp[targets - 1, window[targets]].sum(dtype=np.float64)
      count += len(targets)
      if start + length >= len(tokens):
        break
      start += stride
    if protocol == 'sliding':
      assert count == len(tokens) - 1  # Every token after the first, once.
    assert results[length]['tokens'] == count
    np.testing.assert_allclose(results[length]['ppl'], math.exp(nll / count), rtol=1e-5)


@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_run_on_eight_devices_writes_the_contract_files(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  assert config.mesh.data == -1 and jax.device_count() == 8  # Sharded over 8 fake devices.
  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {32, 64}
  assert all(1.0 < r['ppl'] < 257 for r in results.values())  # Bytes: beats uniform.
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert any('train/ppl' in r for r in rows)
  assert 'eval/len64/ppl' in rows[-1] and 'eval/len32/ppl' in rows[-1]
  table = json.loads((tmp_path / 'extrapolation.json').read_text())
  assert table['metric'] == 'ppl' and set(table['results']) == {'32', '64'}
  assert (tmp_path / 'extrapolation.png').stat().st_size > 0
  assert (tmp_path / 'checkpoints').is_dir()


def test_paper_config_matches_the_method_table():
  c = lm_seqpe.get_config('paper')
  assert (c.model.variant, c.data.name, c.data.tokenizer, c.data.seq_len) == (
      'small', 'wikitext', 'gpt2', 512)
  assert gpt.SIZES['small'] == (768, 12, 12, 3072)
  assert (c.model.dropout, c.model.attention_dropout, c.seed) == (0.1, 0.1, 10086)
  assert (c.batch_size, c.total_steps, c.eval_every_steps) == (128, 100_000, 5_000)
  assert c.eval.lengths == (512, 1024, 2048, 4096, 8192, 16384) and c.eval.batch_size == 1
  pe = posenc.build(c.pe, gpt.host_spec('small', 512))
  assert (pe.method, c.pe.inject.qk_proj, c.pe.inject.multi_head) == ('attn_scalar', 'shared',
                                                                      True)
  s = c.pe.seqpe
  assert (s.base, s.max_position, posenc.seqpe_num_digits(s)) == (10, 20_000, 5)
  assert (s.d_model, s.num_heads, s.num_layers, s.dropout, pe.seqpe_encoder.d_out) == (
      768, 12, 2, 0.1, 768)
  ct, ood, shift = c.pe.contrastive, c.pe.ood, c.pe.shift
  assert (ct.num_pivots, ct.num_candidates, ct.window_range) == (64, 32, 256)
  assert (ood.num_groups, ood.num_teachers) == (64, 32)
  assert (ct.weight, ood.weight, shift.prob) == (0.1, 0.1, 0.1)
  assert (shift.pool_size, shift.num_windows) == (320, 64)
  o = c.optimizer
  assert (o.lr, o.schedule, o.warmup_steps, o.warmup_init, o.min_lr) == (
      5e-5, 'linear', 4_000, 0.0, 0.0)
  assert (o.weight_decay, o.seqpe_weight_decay, o.clip_seqpe, o.clip_host) == (0, 0, 5.0, 5.0)
  assert (o.b1, o.b2, o.eps) == (0.9, 0.999, 1e-8)
  lr = optim.schedule(o, c.total_steps)
  np.testing.assert_allclose([lr(0), lr(2_000), lr(4_000), lr(52_000), lr(100_000)],
                             [0, 2.5e-5, 5e-5, 2.5e-5, 0], atol=1e-12)
  baseline = lm_ape.get_config('paper')
  assert (baseline.pe.contrastive.weight, baseline.pe.ood.weight, baseline.pe.shift.prob) == (
      0, 0, 0)


def test_gpt2_small_takes_a_step_at_512():
  """The paper model and PE at the paper length, on the embedded corpus with GPT-2 BPE; the
  batch and regulariser sizes are cut so one step fits a CPU test."""
  c = lm_seqpe.get_config('paper')
  c.data.name = 'wiki_gensim'
  c.batch_size, c.pe.shift.num_windows = 1, 1
  c.pe.contrastive.num_pivots, c.pe.ood.num_groups = 4, 4
  task = tasks.build(c)
  assert task.tokenizer.vocab_size == 50_257
  optimizer = state_lib.make_optimizer(task, c)
  init = xla_options.compile_optimised(lambda k: state_lib.init_state(task, optimizer, k),
                                       jax.random.key(0))  # 124 M draws: optimised.
  state = init(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(state['params']['model']))
  assert 124e6 < n_params < 125e6  # GPT-2 small (tied) + the shared q/k projection.
  batch = jax.tree.map(jnp.asarray, task.train_batches(0)[0])
  assert batch['tokens'].shape == (1, 512)
  step = xla_options.compile_optimised(  # A 124 M-parameter step: optimised, as the init.
      train.make_train_step(task, optimizer, jax.random.key(1), task.shift_pool(jax.random.key(2))),
      state, batch, c.optimizer.lr)
  new_state, scalars = step(state, batch, c.optimizer.lr)
  assert abs(float(scalars['train/task_loss']) - math.log(50_257)) < 0.5  # ~uniform at init.
  assert np.isfinite(float(scalars['train/seqpe/contrastive_loss']))
  assert int(new_state['step']) == 1


@pytest.mark.parametrize('overrides,error,message', [
    ({'eval.lengths': (32, 1001)}, ValueError, 'Position 1000 does not fit 3 base-10 digits'),
    ({'pe.name': 'none', 'pe.inject.method': '', 'pe.shift.prob': 0.0,
      'data.seq_len': 500_000}, ValueError,
     'fewer than one window of 500000'),
    ({'data.name': 'wikitext', 'data.dir': '/nonexistent'}, FileNotFoundError,
     'lacks wiki.train.raw, wiki.valid.raw, wiki.test.raw'),
    ({'data.tokenizer': 'sentencepiece'}, ValueError, "data.tokenizer='sentencepiece' is not one of"),
    ({'model.variant': 'huge'}, ValueError, "Unknown GPT variant 'huge'"),
    ({'pe.name': 'rope2d', 'pe.inject.method': ''}, ValueError, 'defined on 2D grids'),
    ({'eval.stride_fraction': 0.0}, ValueError, r'eval.stride_fraction must be in \(0, 1\], got 0.0'),
    ({'eval.stride_fraction': 1.01}, ValueError, 'eval.stride_fraction must be in'),
    ({'eval.protocol': 'strided'}, ValueError,
     "eval.protocol='strided' is not one of: non_overlapping, sliding"),
    ({'eval.split': 'dev'}, ValueError, "eval.split='dev' is not one of: "),
])
def test_bad_input_stops_with_one_sentence(overrides, error, message):
  with pytest.raises(error, match=message):
    tasks.build(smoke_config(**overrides))


def test_the_bounds_of_what_is_refused_are_accepted():
  # A sliding stride of the whole window (non-overlapping windows, scored the sliding way),
  # and every key visible.
  task = tasks.build(smoke_config(**{'eval.protocol': 'sliding', 'eval.stride_fraction': 1.0,
                                     'eval.local_window': 0}))
  assert task.stride(64) == 64


def test_a_corpus_directory_without_the_three_files_is_named(tmp_path):
  (tmp_path / 'wiki.train.raw').write_text('only train')
  with pytest.raises(FileNotFoundError, match=f'{tmp_path} lacks wiki.valid.raw'):
    tasks.build(smoke_config(**{'data.name': 'wikitext', 'data.dir': str(tmp_path)}))
  assert pathlib.Path(tmp_path / 'wiki.train.raw').read_text() == 'only train'  # Untouched.


def test_compare_puts_finished_runs_in_one_table_and_plot(tmp_path):
  for name, ppl in (('rope', [10.0, 30.0]), ('alibi', [12.0, 11.5])):
    (tmp_path / name).mkdir()
    results = {128: {'ppl': ppl[0]}, 256: {'ppl': ppl[1]}}
    results_files.write_extrapolation(str(tmp_path / name), results, 'ppl', 'tokens')
  (tmp_path / 'vit').mkdir()
  results_files.write_extrapolation(str(tmp_path / 'vit'), {28: {'accuracy': 0.9}}, 'accuracy', 'px')
  out = tmp_path / 'both.png'
  table = evaluate.compare([str(tmp_path / 'rope'), str(tmp_path / 'alibi')], str(out))
  assert table.splitlines() == ['| run | 128 | 256 |', '|---|---|---|', '| rope | 10 | 30 |',
                                '| alibi | 12 | 11.5 |']
  assert out.stat().st_size > 0
  with pytest.raises(ValueError, match='different metrics'):
    evaluate.compare([str(tmp_path / 'rope'), str(tmp_path / 'vit')], str(out))
  with pytest.raises(FileNotFoundError, match='has not finished its sweep'):
    evaluate.compare([str(tmp_path)], str(out))


def test_next_token_nll_counts_real_targets_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 5))
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  got_sum, got_count = lm.next_token_nll(jnp.asarray(logits), {'tokens': jnp.asarray(tokens),
                                                               'mask': jnp.asarray(mask)})
  assert float(got_count) == 6  # 4 targets, then 2 of the second row's 4 (the rest padding).
  np.testing.assert_allclose(got_sum, (nll * mask[:, 1:]).sum(), rtol=1e-5)
  unmasked, count = lm.next_token_nll(jnp.asarray(logits), {'tokens': jnp.asarray(tokens)})
  assert float(count) == 8
  np.testing.assert_allclose(unmasked, nll.sum(), rtol=1e-5)
  loss, scalars = lm.LanguageModelTask.loss(None, jnp.asarray(logits),
                                            {'tokens': jnp.asarray(tokens)})
  np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(scalars['train/ppl'], np.exp(nll.mean()), rtol=1e-5)
  empty, _ = lm.LanguageModelTask.loss(None, jnp.asarray(logits), {
      'tokens': jnp.asarray(tokens), 'mask': jnp.zeros((2, 5))})
  assert float(empty) == 0.0  # No target: no loss, and no division by zero.


@pytest.mark.parametrize('protocol, fraction, length, stride', [
    ('sliding', 0.25, 100, 25), ('sliding', 0.25, 2, 1), ('sliding', 0.3, 10, 3),
    ('non_overlapping', 0.25, 100, 100)])
def test_the_evaluation_stride(protocol, fraction, length, stride):
  task = types.SimpleNamespace(config=smoke_config(**{'eval.protocol': protocol,
                                                      'eval.stride_fraction': fraction}))
  assert lm.LanguageModelTask.stride(task, length) == stride
  described = lm.LanguageModelTask.sweep_protocol.fget(task)
  assert described == (f'sliding windows, stride {fraction:g} x length'
                       if protocol == 'sliding' else 'non-overlapping windows')


def test_evaluation_logits_are_deterministic_and_training_ones_drop_out():
  task = tasks.build(smoke_config(**{'model.dropout': 0.5, 'mesh.data': 1}))
  params = jax.jit(lambda k: state_lib.init_state(task, optax.identity(), k))(
      jax.random.key(0))['params']
  features = task.pe.features(params['pe'], task.train_shape)
  batch = {'tokens': jnp.asarray(task.train_batches(0)[0]['tokens'][:1])}
  evaluated = task.logits(params['model'], batch, features, train=False)
  direct = task.model.apply({'params': params['model']}, batch['tokens'], features)
  np.testing.assert_allclose(evaluated, direct, rtol=1e-6, atol=1e-6)
  trained = task.logits(params['model'], batch, features, train=True, rng=jax.random.key(1))
  assert np.abs(np.asarray(trained) - np.asarray(evaluated)).max() > 1e-3
