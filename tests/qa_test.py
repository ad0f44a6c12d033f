"""QA fine-tuning: exact match, the answer-only loss, left-padded batched decoding, init_from
from an LM run (and its refusals), skipped examples, a `:smoke` run end to end."""

import importlib
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import lm_base, qa_base
from seqpe_jax import posenc, tasks, train
from seqpe_jax import state as state_lib
from seqpe_jax.data import tokenizers
from seqpe_jax.models import gpt
from seqpe_jax.posenc import config as pe_config
from seqpe_jax.tasks import finetune, qa

# One xdist worker runs this file, so its module fixture (the LM run every fine-tune starts
# from) trains once.
pytestmark = pytest.mark.xdist_group('qa')

BYTES = tokenizers.byte_level()
EOT = BYTES.eot_id


def qa_config(pe='ape', init_from='scratch', **overrides):
  config = qa_base.get_config('smoke', pe)
  config.init_from = str(init_from)
  config.update_from_flattened_dict(overrides)
  return config


def saved_params(workdir):
  """The newest checkpoint's parameters, read with orbax directly (not through finetune)."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  return jax.device_get(ocp.StandardCheckpointer().restore(directory / str(step) / 'state')[
      'params'])


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  """A 2-step LM `:smoke` run with the learned APE: a PE with parameters, trained at 32
  tokens, which the 300-token QA block must resample."""
  workdir = tmp_path_factory.mktemp('lm_ape')
  config = lm_base.get_config('smoke', 'ape')
  config.total_steps = 2
  train.train_and_evaluate(config, str(workdir))
  return workdir

# ------------------------------------------------------------------ Exact match and loss.


@pytest.mark.parametrize('output,answers,expected', [
    ('The pass key is 12345. Remember', ['12345'], True),  # Inside a longer output.
    (' PARIS, in France', ['paris'], True),  # Case.
    ('paris', ['  Paris \n'], True),  # The gold answer is stripped.
    ('It was London.', ['Paris', 'london'], True),  # Any of several gold answers.
    ('', ['paris'], False),  # Empty output.
    ('1234', ['12345'], False),  # Part of the answer is not the answer.
    ('par is', ['paris'], False),
    ('anything', [], False),
])
def test_exact_match_is_the_references_containment_test(output, answers, expected):
  assert qa.exact_match(output, answers) is expected


def test_scores_by_length_and_depth_decile_and_decoding_stops_at_end_of_text():
  examples = [{'outputs': ['7'], 'depth': d} for d in (0.05, 0.15, 0.19, 1.0)]
  result = qa.score(examples, ['7', 'no', 'it is 7', '7'])
  assert result == {'em': 0.75, 'char_accuracy': 0.5, 'examples': 4.0, 'em_depth0': 1.0,
                    'em_depth1': 0.5, 'em_depth9': 1.0}
  assert set(qa.score([{'outputs': ['a']}], ['a'])) == {'em', 'char_accuracy', 'examples'}


def test_scores_rank_and_gold_log_probability_by_depth_decile():
  examples = [{'outputs': ['7'], 'depth': d} for d in (0.05, 0.15, 0.19, 1.0)]
  candidate_scores = [[-1.0, -2.0, -3.0],  # Gold first.
                      [-2.0, -1.0, -3.0],  # Gold second.
                      [-1.5, -1.5, -np.inf],  # A tie is no win; -inf: a missing candidate.
                      [-0.5, -9.0, -9.0]]
  result = qa.score(examples, ['7', 'no', 'it is 7', '7'], candidate_scores)
  assert result == pytest.approx({
      'em': 0.75, 'char_accuracy': 0.5, 'examples': 4.0, 'answer_logp': -1.25, 'rank_acc': 0.5,
      'em_depth0': 1.0, 'answer_logp_depth0': -1.0, 'rank_acc_depth0': 1.0,
      'em_depth1': 0.5, 'answer_logp_depth1': -1.75, 'rank_acc_depth1': 0.0,
      'em_depth9': 1.0, 'answer_logp_depth9': -0.5, 'rank_acc_depth9': 1.0})


@pytest.mark.parametrize('scores,expected', [
    ([[0.0, -1.0, -2.0], [-3.0, -4.0, -9.0]], 1.0),  # Gold always first.
    ([[-1.0, 0.0, -2.0], [-9.0, -4.0, -3.0]], 0.0),  # Gold never first.
    ([[-1.0, -1.0, -2.0]], 0.0),  # A tie with the best wrong candidate is not first.
    ([[0.0, -1.0], [-1.0, 0.0], [5.0, 4.0], [1.0, 2.0]], 0.5),
])
def test_rank_accuracy_on_hand_made_cases(scores, expected):
  assert qa.rank_accuracy(np.array(scores)) == expected


def test_candidates_are_the_probes_own_or_the_other_answers_of_a_file():
  probes = [{'outputs': [' 12 '], 'candidates': ['34', '56']}, {'outputs': ['78']}]
  files = [{'outputs': [a]} for a in ('Paris', 'London', 'paris', 'Rome', 'London')]
  assert qa.with_candidates(probes[:1]) == [['12', '34', '56']]
  assert qa.with_candidates(files)[0] == ['Paris', 'London', 'Rome']  # Not the gold again.
  assert qa.with_candidates(files)[3] == ['Rome', 'London', 'Paris', 'paris']
  tokens, mask = qa.candidate_tokens(BYTES, [['12', '345'], ['6']])
  assert tokens.shape == (2, 2, 5)  # ' 345' and end-of-text.
  assert list(tokens[0, 0]) == list(b' 12') + [EOT, EOT] and list(mask[0, 0]) == [True] * 4 + [
      False]
  assert list(tokens[0, 1]) == list(b' 345') + [EOT] and mask[0, 1].all()
  assert not mask[1, 1].any()  # A row with fewer candidates: the missing one is not scored.


@pytest.mark.parametrize('output, answers, expected', [
    (' 24519', ['24519'], 1.0),
    ('24019', ['24519'], 0.8),  # One digit wrong.
    ('86666', ['24519'], 0.0),
    ('2451', ['24519'], 0.8),  # Too short: the missing digit counts as wrong.
    ('x 24519', ['24519'], 0.0),  # Place matters (EM would count it).
    ('PARIS', ['london', 'Paris'], 1.0),  # Best over the gold answers, case-blind.
    ('', ['paris'], 0.0),
    ('anything', [], 0.0),
])
def test_character_accuracy_gives_partial_credit_in_place(output, answers, expected):
  assert qa.char_accuracy(output, answers) == pytest.approx(expected)
  assert qa.decode_answer(BYTES, list(b' 42') + [EOT] + list(b'junk')) == ' 42'


def test_answer_loss_scores_exactly_the_answer_and_end_of_text():
  tokens, mask = qa.encode(BYTES, {'input': '  Q: 2+2? A:\n', 'outputs': [' 4 ', 'four']})
  assert tokens == list(b'Q: 2+2? A: 4') + [EOT]  # input.strip(), ' ' + outputs[0].strip().
  assert mask == [False] * len('Q: 2+2? A:') + [True] * 3  # ' ', '4', end-of-text.
  arrays, mask_arr, skipped = qa.pack([(tokens, mask)], block=16, pad_id=EOT)
  batch = {'tokens': jnp.asarray(arrays), 'mask': jnp.asarray(mask_arr)}
  logits = jax.random.normal(jax.random.key(0), (1, 16, BYTES.vocab_size))
  loss = float(qa.answer_loss(logits, batch)[0])
  # Closed form: position t-1's logits predict token t, for the 3 answer tokens only.
  logp = np.asarray(jax.nn.log_softmax(logits[0]), np.float64)
  answer = range(len(tokens) - 3, len(tokens))
  np.testing.assert_allclose(loss, -np.mean([logp[t - 1, tokens[t]] for t in answer]), rtol=1e-6)

  def loss_with(position, token):
    changed = dict(batch, tokens=batch['tokens'].at[0, position].set(token))
    return float(qa.answer_loss(logits, changed)[0])
  assert loss_with(3, 99) == loss  # A prompt token's target is not scored,
  assert loss_with(14, 99) == loss  # nor is padding,
  assert loss_with(len(tokens) - 2, 99) != loss  # an answer token is,
  assert loss_with(len(tokens) - 1, 99) != loss  # and so is end-of-text.


def test_examples_longer_than_the_block_are_skipped_and_counted():
  encoded = [qa.encode(BYTES, {'input': 'x' * n, 'outputs': ['y']}) for n in (5, 10, 11, 30)]
  tokens, mask, skipped = qa.pack(encoded, block=13, pad_id=EOT)  # n + ' y' + end-of-text.
  assert skipped == 2 and tokens.shape == (2, 13) and mask.sum() == 6
  assert list(tokens[1]) == list(b'xxxxxxxxxx y') + [EOT]  # Exactly the block: kept.


def test_qa_files_are_read_and_the_too_long_counted(tmp_path):
  line = lambda i, n: json.dumps({'index': i, 'input': 'w ' * n + 'Answer:', 'outputs': ['a']})
  (tmp_path / 'train.300.jsonl').write_text('\n'.join(line(i, 100) for i in range(12)) + '\n')
  (tmp_path / 'train.600.jsonl').write_text('\n'.join(line(i, 300) for i in range(3)) + '\n')
  for length in (300, 600):
    (tmp_path / f'validation.{length}.jsonl').write_text(line(0, length // 2 - 10) + '\n')
  task = tasks.build(qa_config('rope', **{'data.source': 'jsonl', 'data.dir': str(tmp_path),
                                          'eval.split': 'validation'}))
  assert task.skipped == 3  # 600 + 11 tokens do not fit the 300-token block.
  assert len(task.train_tokens) + len(task.heldout['tokens']) == 12
  assert sorted(task.eval_sets()) == [300, 600]
  (tmp_path / 'validation.600.jsonl').unlink()
  with pytest.raises(FileNotFoundError, match='validation.600.jsonl does not exist'):
    tasks.build(qa_config('rope', **{'data.source': 'jsonl', 'data.dir': str(tmp_path),
                                     'eval.split': 'validation'}))


@pytest.mark.parametrize('length,prompt,answer', [
    (600, 'w ' * 500 + 'Answer:', 'a'),  # A prompt far longer than its file's length.
    (300, 'x' * 520 + ' Answer:', 'x' * 520),  # A short prompt, but a long candidate.
], ids=['long_prompt', 'long_candidate'])
def test_sweep_tables_past_the_pe_stop_the_build_before_training(tmp_path, length, prompt,
                                                                  answer):
  """The sweep's table holds the longest prompt and then max_new_tokens or the longest
  candidate: a SeqPE of 3 digits (0..999) fits 600 + 16 but not these, so the build fails."""
  line = lambda i, n: json.dumps({'index': i, 'input': 'w ' * n + 'Answer:', 'outputs': ['a']})
  (tmp_path / 'train.300.jsonl').write_text('\n'.join(line(i, 100) for i in range(12)) + '\n')
  for n in (300, 600):
    (tmp_path / f'validation.{n}.jsonl').write_text(line(0, n // 2 - 10) + '\n')
  (tmp_path / f'validation.{length}.jsonl').write_text(
      json.dumps({'index': 0, 'input': prompt, 'outputs': [answer]}) + '\n')
  with pytest.raises(ValueError, match='does not fit 3 base-10 digits'):
    tasks.build(qa_config('seqpe', **{'data.source': 'jsonl', 'data.dir': str(tmp_path),
                                      'eval.split': 'validation'}))

# ------------------------------------------------------------------ Batched decoding.


def decoder(name, method=''):
  """A nano GPT with weights scaled up, so positions and padding change the logits a lot."""
  cfg = pe_config.get_config()
  cfg.name, cfg.inject.method, cfg.inject.qk_proj = name, method, 'shared'
  cfg.seqpe.max_position, cfg.seqpe.d_model, cfg.seqpe.num_heads = 100, 32, 2
  pe = posenc.build(cfg, gpt.host_spec('nano', 16))
  model = gpt.GPT(37, pe=pe, **gpt.parse_variant('nano'))
  k1, k2 = jax.random.split(jax.random.key(0))
  scale_up = lambda tree: jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, tree)
  pe_params = scale_up(pe.init(k1, pe.host.train_shape))
  return model, pe, pe_params, k2, scale_up


# SeqPE's positions are absolute, so it checks that each example's count from its first real
# token; RoPE and ALiBi are relative (blind to where counting starts) and check the masking,
# ALiBi with its key bias sharing the cache's bias buffer with the padding.
@pytest.mark.parametrize('name,method', [('seqpe', 'attn_scalar'), ('rope', ''), ('alibi', '')])
def test_left_padded_batched_decoding_equals_decoding_each_prompt_alone(name, method):
  model, pe, pe_params, key, scale_up = decoder(name, method)
  new, width = 5, 9
  table = pe.features(pe_params, (width + new - 1,))
  params = scale_up(model.init(key, jnp.zeros((1, width), jnp.int32),
                               gpt.slice_features(table, 0, width))['params'])
  prompts = [list(np.random.default_rng(i).integers(0, 37, n)) for i, n in enumerate((4, 9))]
  batch = qa.left_pad(prompts, width, rows=3, pad_id=0)  # A third, filler row.
  tokens, logits = gpt.generate(model, params, table, jnp.asarray(batch['tokens']), new,
                                jnp.asarray(batch['mask']))
  for i, prompt in enumerate(prompts):
    alone_tokens, alone_logits = gpt.generate(model, params, table, jnp.asarray([prompt]), new)
    np.testing.assert_array_equal(tokens[i], alone_tokens[0])
    np.testing.assert_allclose(logits[i], alone_logits[0], atol=1e-4, rtol=1e-4)
  if name == 'rope':  # Teeth: padding seen and counted as positions changes the short prompt.
    _, unmasked = gpt.generate(model, params, table, jnp.asarray(batch['tokens']), new)
    assert np.abs(np.asarray(unmasked[0] - logits[0])).max() > 1e-2

@pytest.mark.parametrize('name,method', [('seqpe', 'attn_scalar'), ('rope', ''), ('alibi', ''),
                                         ('ape', '')])
def test_gold_answer_likelihood_equals_a_direct_per_token_computation(name, method):
  """Candidates scored from one cached prompt (left-padded, in a batch) = each prompt and
  candidate run alone through the plain forward pass, token by token."""
  model, pe, pe_params, key, scale_up = decoder(name, method)
  width, new = 9, 4
  table = pe.features(pe_params, (width + new - 1,))
  params = scale_up(model.init(key, jnp.zeros((1, width), jnp.int32),
                               gpt.slice_features(table, 0, width))['params'])
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(0, 37, n)) for n in (4, 9, 6)]
  candidates = rng.integers(0, 37, (3, 2, new))  # [B, C, K]
  batch = qa.left_pad(prompts, width, rows=3, pad_id=0)
  logp = np.asarray(gpt.continuation_logprobs(
      model, params, table, jnp.asarray(batch['tokens']), jnp.asarray(candidates),
      jnp.asarray(batch['mask'])))
  assert logp.shape == (3, 2, new)
  for b, prompt in enumerate(prompts):
    for c in range(2):
      sequence = prompt + list(candidates[b, c])
      logits = model.apply({'params': params}, jnp.asarray([sequence[:-1]]),
                           gpt.slice_features(table, 0, len(sequence) - 1))
      direct = np.asarray(jax.nn.log_softmax(logits[0]))
      expected = [direct[len(prompt) + k - 1, sequence[len(prompt) + k]] for k in range(new)]
      np.testing.assert_allclose(logp[b, c], expected, atol=2e-4, rtol=1e-4)
  # Teeth: the log-probabilities of other tokens than the candidates' are other numbers.
  shifted = np.asarray(gpt.continuation_logprobs(
      model, params, table, jnp.asarray(batch['tokens']), jnp.asarray((candidates + 1) % 37),
      jnp.asarray(batch['mask'])))
  assert np.abs(shifted - logp).max() > 1e-2

# ------------------------------------------------------------------ init_from.


def test_smoke_run_fine_tunes_the_lm_and_reports_em_by_length_and_depth(lm_run, tmp_path,
                                                                       monkeypatch):
  started = {}
  load = qa.QATask.initial_params

  def spy(self, abstract_params):
    started['params'] = jax.device_get(load(self, abstract_params))
    return started['params']
  monkeypatch.setattr(qa.QATask, 'initial_params', spy)
  config = qa_config('ape', lm_run, total_steps=2, seed=1)  # The LM's seed was 0.
  assert config.mesh.data == -1 and jax.device_count() == 8  # Decoding split over 8 devices.
  results = train.train_and_evaluate(config, str(tmp_path))

  # It started from the LM's parameters, its 32-row APE table resampled to the 300-token
  # block exactly as the LM's own evaluation at 300 tokens resamples it.
  lm = saved_params(lm_run)
  lm_pe = posenc.build(lm_base.get_config('smoke', 'ape').pe, gpt.host_spec('nano', 32))
  expected = {'model': lm['model'],
              'pe': {'table': np.asarray(lm_pe.features(lm['pe'], (300,))['e'][0])}}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               started['params'], expected)
  # ... and trained from there: two Adam steps move no parameter by more than twice the
  # peak learning rate, while a fresh initialisation is far from the LM's.
  tuned = saved_params(tmp_path)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2 * config.optimizer.lr),
               tuned, expected)
  task = tasks.build(config)
  init_key = jax.random.split(jax.random.key(config.seed), 3)[0]  # As the trainer draws it.
  fresh = jax.jit(lambda k: state_lib.init_state(task, optax.identity(), k))(init_key)['params']
  assert np.abs(fresh['model']['embed']['embedding'] -
                lm['model']['embed']['embedding']).max() > 20 * config.optimizer.lr

  assert set(results) == {300, 600}
  assert all(0 <= r['em'] <= 1 and r['examples'] == 10 for r in results.values())
  assert all(0 <= r['rank_acc'] <= 1 and r['answer_logp'] < 0 for r in results.values())
  assert {f'{m}_depth{d}' for d in range(10) for m in ('em', 'rank_acc', 'answer_logp')} <= set(
      results[600])
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert any('train/answer_ppl' in r for r in rows)
  assert {'eval/len300/em', 'eval/len600/em', 'eval/len600/em_depth0'} <= set(rows[-1])
  table = json.loads((tmp_path / 'extrapolation.json').read_text())
  assert table['metric'] == 'em' and set(table['results']) == {'300', '600'}
  assert (tmp_path / 'extrapolation_depth.png').stat().st_size > 0

  # A QA run is not an LM run to fine-tune from.
  with pytest.raises(ValueError, match="is not an LM run: its config.json is a 'qa' run"):
    tasks.build(qa_config('ape', tmp_path))


@pytest.mark.parametrize('pe,overrides,message', [
    ('rope', {}, "trained with pe.name='ape' but this config has pe.name='rope'"),
    ('ape', {'model.variant': 'tiny'}, "model.variant='nano' but this config has .*'tiny'"),
    ('ape', {'data.tokenizer': 'gpt2'}, "data.tokenizer='byte' but this config has .*'gpt2'"),
])
def test_init_from_refuses_another_model_naming_the_field(lm_run, pe, overrides, message):
  with pytest.raises(ValueError, match=message) as error:
    tasks.build(qa_config(pe, lm_run, **overrides))
  assert str(error.value).count('. ') == 0  # One sentence.


def test_init_from_takes_a_study_run_directory(lm_run, tmp_path):
  run = tmp_path / 'final' / 'ape' / 'seed0'  # A study's layout.
  shutil.copytree(lm_run, run)
  assert tasks.build(qa_config('ape', run)).config.init_from == str(run)
  record = json.loads((run / 'config.json').read_text())
  record['pe']['inject']['qk_proj'] = 'another'
  (run / 'config.json').write_text(json.dumps(record))
  with pytest.raises(ValueError, match="trained with pe.inject.qk_proj='another'"):
    tasks.build(qa_config('ape', run))


def test_seqpe_position_space_may_grow_but_keep_its_digits():
  lm = json.loads(lm_base.get_config('smoke', 'seqpe').to_json_best_effort())
  finetune.check_compatible(qa_config('seqpe'), lm)  # 300 -> 1000 positions: 3 digits both.
  lm['pe']['seqpe']['max_position'] = 5_000
  with pytest.raises(ValueError, match='pe.seqpe.num_digits=4 but this config has .*=3'):
    finetune.check_compatible(qa_config('seqpe'), lm)


def test_an_lm_run_recording_a_retired_field_at_its_kept_value_is_compatible():
  lm = json.loads(lm_base.get_config('smoke', 'seqpe').to_json_best_effort())
  for field, value in finetune.RETIRED.items():  # 'pe.<section>.<leaf>'
    _, section, leaf = field.split('.')
    lm['pe'][section][leaf] = value
  finetune.check_compatible(qa_config('seqpe'), lm)
  lm['pe']['seqpe']['digit_mask'] = 'bidirectional'
  with pytest.raises(ValueError, match="trained with pe.seqpe.digit_mask='bidirectional'"):
    finetune.check_compatible(qa_config('seqpe'), lm)


@pytest.mark.parametrize('overrides,error,message', [
    ({'init_from': ''}, ValueError, 'config.init_from is empty'),
    ({'eval.probe_seed': 1}, ValueError, 'probe_seed are both 1'),
    ({'eval.lengths': (200, 300)}, ValueError, 'eval.lengths holds 200'),
    ({'eval.lengths': (300, 1200)}, ValueError, 'does not fit 3 base-10 digits'),
    ({'data.source': 'squad'}, ValueError, "Unknown data.source 'squad'"),
    ({'data.source': 'jsonl'}, ValueError, "data.source='jsonl' needs data.dir"),
    ({'data.filler': 'lorem'}, ValueError, "Unknown data.filler 'lorem'; use one of: wiki, re"),
    ({'data.key_form': 'token'}, ValueError,
     "data.key_form='token' needs 10 numbers that the byte tokenizer writes as one token"),
    ({'data.key_form': 'hex4'}, ValueError, "data.key_form='hex4' is not a key form"),
    ({'data.seq_len': 250}, ValueError, r'data.seq_len holds 250, whose probes have 240 prompt '
     r'tokens after data.answer_room=10, fewer than the 2\d\d byte tokens the passkey generator'),
])
def test_bad_settings_stop_with_one_sentence(overrides, error, message):
  with pytest.raises(error, match=message):
    tasks.build(qa_config('seqpe', **overrides))


def test_init_from_must_be_an_lm_run_with_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not an LM run: it has no config.json'):
    tasks.build(qa_config('ape', tmp_path))
  (tmp_path / 'config.json').write_text(lm_base.get_config('smoke', 'ape').to_json())
  with pytest.raises(FileNotFoundError, match='has no checkpoint to start from'):
    tasks.build(qa_config('ape', tmp_path))

# ------------------------------------------------------------------ Configs.


@pytest.mark.parametrize('variant', [None, 'smoke', 'paper'])
@pytest.mark.parametrize('pe', ['seqpe', 'ape', 'sincos', 'rope', 'alibi', 'nope'])
def test_every_qa_config_can_fine_tune_the_lm_config_of_its_pe_and_variant(pe, variant):
  qa_cfg = importlib.import_module(f'configs.qa_{pe}').get_config(variant)
  lm_cfg = importlib.import_module(f'configs.lm_{pe}').get_config(variant)
  assert qa_cfg.task == 'qa' and qa_cfg.eval.max_new_tokens == 16
  finetune.check_compatible(qa_cfg, json.loads(lm_cfg.to_json_best_effort()))


def test_paper_config_is_the_references_fine_tuning_recipe():
  c = qa_base.get_config('paper', 'seqpe')
  assert (c.data.source, c.data.seq_len, c.data.tokenizer, c.model.variant) == (
      'jsonl', 1024, 'gpt2', 'small')
  assert (c.total_steps, c.batch_size, c.model.dropout) == (10_000, 128, 0.1)
  o = c.optimizer
  assert (o.lr, o.schedule, o.warmup_steps, o.min_lr, o.weight_decay) == (
      5e-5, 'linear', 100, 0.0, 0.0)
  assert (c.pe.shift.pool_size, c.pe.contrastive.window_range) == (160, 256)
  assert c.eval.lengths == (1024, 2048, 4096, 8192, 16384) and c.eval.batch_size == 1
  pe = posenc.build(c.pe, gpt.host_spec('small', 1024))
  pe.check_shape((16384 + 16,))  # The longest prompt and its answer fit the 5 digits.
