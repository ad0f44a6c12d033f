"""Retrieval probes: the QA jsonl reader, passkey and key-value generators, the CLI."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from seqpe_jax.data import retrieval, text, tokenizers

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('retrieval_cache'))


@pytest.fixture(scope='module')
def wiki(cache):
  return text.corpus_dir('wiki_gensim', cache_dir=cache)


@pytest.fixture(scope='module')
def gpt2():
  return tokenizers.gpt2()


@pytest.fixture(scope='module')
def filler(wiki, gpt2):
  return retrieval.load_filler(wiki, 'valid', gpt2)


def passkey(gpt2, filler, length, num=10, seed=0):
  return retrieval.passkey_examples(gpt2, filler, length, num, seed)


def test_generated_examples_round_trip_through_the_reader(gpt2, filler, tmp_path):
  examples = passkey(gpt2, filler, 256, num=3)
  assert list(examples[0]) == ['index', 'input', 'outputs', 'length', 'depth', 'candidates']
  retrieval.write_jsonl(tmp_path / 'validation.256.jsonl', examples)
  assert retrieval.read_jsonl(tmp_path / 'validation.256.jsonl') == examples
  retrieval.write_jsonl(tmp_path / 'validation.1024.jsonl', passkey(gpt2, filler, 1024, num=2))
  retrieval.write_jsonl(tmp_path / 'train.512.jsonl', examples)  # Another split: ignored.
  by_length = retrieval.read_lengths(tmp_path)
  assert list(by_length) == [256, 1024] and by_length[256] == examples
  assert list(retrieval.read_lengths(tmp_path, 'train')) == [512]


def test_reader_errors_are_one_sentence_with_file_and_line(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nope.jsonl does not exist: a QA file holds one '
                     r'JSON object per line with "index" \(int\), "input" \(str\)'):
    retrieval.read_jsonl(tmp_path / 'nope.jsonl')
  good = json.dumps({'index': 0, 'input': 'Q: is it A?', 'outputs': ['a'], 'depth': 0.5})
  cases = {'{"index": 1, "input": "q"': ':2: not valid JSON',
           '{"index": 1, "input": "q"}': ':2: missing field "outputs"',
           '{"index": 1, "input": "q", "outputs": "a"}': ':2: "outputs" is a str, not a list',
           '{"index": true, "input": "q", "outputs": ["a"]}': ':2: "index" is a bool, not a',
           '{"index": 1, "input": "q", "outputs": [3]}': ':2: "outputs" holds something other',
           '[1, 2]': ':2: a list, not an object',
           '{"index": 1, "input": "q", "outputs": ["b", " "]}':
               ':2: none of the "outputs" occurs in its "input"'}
  for line, message in cases.items():
    path = tmp_path / 'bad.jsonl'
    path.write_text(f'{good}\n{line}\n\n')
    with pytest.raises(ValueError, match=re.escape(f'{path}{message}')):
      retrieval.read_jsonl(path)
  path.write_text(f'{good}\n\n')  # Blank lines are skipped, extra fields kept.
  assert retrieval.read_jsonl(path) == [json.loads(good)]
  with pytest.raises(FileNotFoundError, match=r'has no validation.<length>.jsonl files'):
    retrieval.read_lengths(tmp_path)


@pytest.mark.parametrize('length', [256, 4096])
def test_prompts_have_the_requested_length(gpt2, filler, length):
  for e in passkey(gpt2, filler, length):
    assert e['length'] == len(gpt2.encode(e['input']))
    assert abs(e['length'] - length) <= retrieval.TOLERANCE


def test_a_16k_example_takes_well_under_a_second(gpt2, filler):
  make = lambda: passkey(gpt2, filler, 16384, num=1, seed=3)
  make()  # Per-tokenizer statistics are computed once.
  start = time.perf_counter()
  (example,) = make()
  assert time.perf_counter() - start < 1.0
  assert abs(example['length'] - 16384) <= retrieval.TOLERANCE


def test_passkey_is_stated_once_at_the_recorded_depth(gpt2, filler):
  fixed = len(gpt2.encode(retrieval.PASSKEY_PREFIX))
  for e in passkey(gpt2, filler, 4096):
    key = e['outputs'][0]
    assert re.fullmatch(r'[1-9]\d{4}', key)
    needle = retrieval.PASSKEY_NEEDLE.format(key=key)
    assert e['input'].count(needle) == 1 and e['input'].count(key) == 2
    assert e['input'].startswith(retrieval.PASSKEY_PREFIX)
    assert e['input'].endswith('What is the pass key? The pass key is')
    position = len(gpt2.encode(e['input'][:e['input'].index(needle)]))
    haystack = e['length'] - fixed - len(gpt2.encode(needle + retrieval.PASSKEY_QUESTION))
    assert abs((position - fixed) / haystack - e['depth']) < 0.01
    assert abs(position / e['length'] - e['depth']) < 0.05


@pytest.mark.parametrize('length', [256, 4096])
def test_depths_cover_every_decile(gpt2, filler, length):
  examples = passkey(gpt2, filler, length)
  assert [retrieval.depth_decile(e['depth']) for e in examples] == list(range(10))
  assert [e['index'] for e in examples] == list(range(10))


def test_a_seed_reproduces_the_bytes_and_another_differs(gpt2, filler, tmp_path):
  files = [tmp_path / f'passkey{i}.jsonl' for i in range(3)]
  for path, seed in zip(files, (7, 7, 8)):
    retrieval.write_jsonl(path, passkey(gpt2, filler, 512, 4, seed))
  assert files[0].read_bytes() == files[1].read_bytes() != files[2].read_bytes()
  # Examples are seeded one by one: a longer file starts with the shorter one's examples.
  assert passkey(gpt2, filler, 512, 2, 7) == passkey(gpt2, filler, 512, 4, 7)[:2]


def test_filler_is_held_out_wikipedia(gpt2, filler, wiki):
  raw = {s: p.read_text(encoding='utf-8') for s, p in text.raw_files(wiki).items()}
  for e in passkey(gpt2, filler, 1024)[5:]:  # Depth >= 0.5: the first paragraph is whole.
    first = e['input'][len(retrieval.PASSKEY_PREFIX):].split('\n')[0]
    assert len(first) > 40 and first in raw['valid'] and first not in raw['train']
  with pytest.raises(ValueError, match="held-out split \\(valid or test\\), not 'train'"):
    retrieval.load_filler(wiki, 'train', gpt2)


@pytest.mark.parametrize('kind', ['byte', 'bpe'])
def test_other_tokenizers_meet_the_length_too(cache, kind):
  directory = text.corpus_dir('pydoc_topics', cache_dir=cache)
  tok = text.load_tokenizer(kind, directory, 512, cache)
  for e in retrieval.passkey_examples(tok, retrieval.load_filler(directory, 'test', tok),
                                      512, 10, 0):
    assert abs(len(tok.encode(e['input'])) - 512) <= retrieval.TOLERANCE
    assert e['outputs'][0] in e['input']


@pytest.mark.parametrize('kind', ['gpt2', 'bpe', 'byte'])
@pytest.mark.parametrize('filler_kind', ['repeat', 'wiki'])
@pytest.mark.parametrize('form', ['digits3', 'token'])
def test_new_fillers_and_key_forms_meet_the_length_with_the_answer_once(
    cache, wiki, kind, filler_kind, form):
  tok = tokenizers.gpt2() if kind == 'gpt2' else text.load_tokenizer(kind, wiki, 4096, cache)
  if kind == 'byte' and form == 'token':
    pytest.skip('Bytes write no number as one token (the refusal is tested below).')
  keys = retrieval.key_form(form, tok)
  fill = retrieval.load_filler(wiki, 'valid', tok, filler_kind)
  for length in (retrieval.min_length(tok, keys), 512):
    for e in retrieval.passkey_examples(tok, fill, length, 10, 0, keys):
      key = e['outputs'][0]
      assert abs(len(tok.encode(e['input'])) - length) <= retrieval.TOLERANCE
      assert e['input'].count(retrieval.PASSKEY_NEEDLE.format(key=key)) == 1
      assert e['input'].count(key) == 2  # Only in the needle, which states it twice.
      if form == 'token':
        assert len(tok.encode(' ' + key)) == 1
      else:
        assert re.fullmatch(r'[1-9]\d\d', key)
      wrong = e['candidates']
      assert len(set(wrong)) == 9 and key not in wrong
      assert all(len(tok.encode(' ' + c)) == 1 if form == 'token' else
                 re.fullmatch(r'[1-9]\d\d', c) for c in wrong)
      if filler_kind == 'repeat':  # Nothing but the classic sentences around the needle.
        haystack = e['input'][len(retrieval.PASSKEY_PREFIX):-len(retrieval.PASSKEY_QUESTION)]
        haystack = haystack.replace(retrieval.PASSKEY_NEEDLE.format(key=key), '')
        pieces = retrieval.REPEATED_FILLER.split()
        words = haystack.split()
        start = pieces.index(words[0])
        assert words == [pieces[(start + i) % len(pieces)] for i in range(len(words))]


def test_key_forms_the_tokenizer_cannot_write_are_refused(gpt2):
  with pytest.raises(ValueError, match="--key_form='token' needs 10 numbers that the byte "
                     'tokenizer writes as one token after a space, and it has 0'):
    retrieval.key_form('token', tokenizers.byte_level())
  with pytest.raises(ValueError, match="--key_form='digits1' has fewer than the 10 different"):
    retrieval.key_form('digits1', gpt2)
  with pytest.raises(ValueError, match="--key_form='uuid' is not a key form"):
    retrieval.key_form('uuid', gpt2)
  with pytest.raises(ValueError, match="Unknown filler 'lorem'; use one of: wiki, repeat"):
    retrieval.load_filler('', 'valid', gpt2, 'lorem')


def test_bad_input_is_one_sentence(gpt2, cache):
  for length in (127, 16385):
    with pytest.raises(ValueError, match=f'128..16384 tokens long, not {length}'):
      retrieval.generate('passkey', length, 1, 0, cache_dir=cache)
  with pytest.raises(ValueError, match="Unknown retrieval task 'kv'; use one of: passkey."):
    retrieval.generate('kv', 1024, 1, 0, cache_dir=cache)
  with pytest.raises(ValueError, match='at least one example, not 0'):
    retrieval.generate('passkey', 1024, 0, 0, cache_dir=cache)


def run_cli(*args, cache_dir):
  return subprocess.run([sys.executable, '-m', 'seqpe_jax.data.retrieval', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                        env={**os.environ, 'SEQPE_CACHE_DIR': cache_dir})


def test_command_line_writes_the_file_and_refuses_bad_input(cache, wiki, tmp_path):
  del wiki  # Built in the cache the command line uses.
  out = tmp_path / 'passkey.1024.jsonl'
  process = run_cli('--task=passkey', '--length=1024', '--num=3', '--seed=1', f'--out={out}',
                    cache_dir=cache)
  assert process.returncode == 0, process.stderr
  assert process.stdout.splitlines() == [
      str(out), 'passkey at 1024 gpt2 tokens (seed 1): 3 examples, '
      f"{min(e['length'] for e in retrieval.read_jsonl(out))}.."
      f"{max(e['length'] for e in retrieval.read_jsonl(out))} tokens, depth deciles 0,1,2"]
  assert len(retrieval.read_jsonl(out)) == 3
  for args, message in ((['--task=passkey', '--length=100', f'--out={tmp_path / "x.jsonl"}'],
                         'Retrieval prompts are 128..16384 tokens long, not 100.'),
                        (['--task=needle', '--length=1024', f'--out={tmp_path / "x.jsonl"}'],
                         "Unknown retrieval task 'needle'; use one of: passkey."),
                        (['--task=passkey', '--length=256', '--tokenizer=byte', '--key_form=token',
                          f'--out={tmp_path / "x.jsonl"}'],
                         "--key_form='token' needs 10 numbers that the byte tokenizer writes")):
    process = run_cli(*args, cache_dir=cache)
    assert process.returncode == 2 and 'Traceback' not in process.stderr
    assert process.stderr.strip().count('\n') == 0 and message in process.stderr
  assert not (tmp_path / 'x.jsonl').exists()


class JoinsCountMore:
  """GPT-2, except that a whole prompt (filler included) counts EXTRA more tokens than its
  parts: the first aim always misses, and the generator must re-aim the filler down."""
  EXTRA = 7

  def __init__(self, inner):
    self.inner, self.name = inner, f'{inner.name}+joins'
    self.short = 2 * len(retrieval.PASSKEY_PREFIX + retrieval.PASSKEY_NEEDLE +
                         retrieval.PASSKEY_QUESTION)

  def encode(self, s):
    ids = self.inner.encode(s)
    return ids + [0] * self.EXTRA if len(s) > self.short else ids

  def decode(self, ids):
    return self.inner.decode(ids)


def test_passkey_re_aims_when_the_joined_prompt_counts_differently(gpt2, filler):
  joins = JoinsCountMore(gpt2)
  for e in retrieval.passkey_examples(joins, filler, 1024, 4, 0):
    assert e['length'] == len(joins.encode(e['input']))
    assert abs(e['length'] - 1024) <= 2
