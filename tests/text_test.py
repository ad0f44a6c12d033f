"""LM text data: the wiki cleaner, the embedded corpus, tokenizers, caches and windows."""

import numpy as np
import pytest

from seqpe_jax.data import text, tokenizers, wikimarkup


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('text_cache'))


def test_cleaner_handles_the_markup_the_data_doc_lists():
  markup = """{{Infobox person|name={{nowrap|A B}}|born=1900}}
'''Ada''' was a [[mathematician|mathematical]] [[pioneer]].<ref name="x">Cited {{cite|a}}</ref><ref name="y"/>
<!-- hidden comment -->
{| class="wikitable"
| cell {{flag|X}} || {| nested |} other
|}
[[File:Ada.jpg|thumb|A portrait of [[Ada]] in 1840]]
She read [http://example.org the notes] and &amp; wrote &ndash; a lot of <small>small</small> text.
== Early life ==
Born in London, she studied mathematics with great care.
=== Later ===
[[Category:Mathematicians]]
[[de:Ada]]
"""
  lines = wikimarkup.to_wikitext_lines('Ada', markup)
  text_ = '\n'.join(lines)
  assert lines[0] == ' = Ada = '
  assert ' Ada was a mathematical pioneer. ' in lines
  assert ' She read the notes and & wrote \u2013 a lot of small text. ' in lines
  assert ' = = Early life = = ' in lines
  assert ' Born in London, she studied mathematics with great care. ' in lines
  # The empty trailing section is dropped, and no markup survives.
  assert 'Later' not in text_
  for leftover in ('{{', '}}', '[[', ']]', '<ref', 'hidden', 'wikitable', 'portrait', 'Category',
                   'de:Ada', 'Infobox', "'''", 'cell'):
    assert leftover not in text_, leftover


def test_embedded_wikipedia_splits_whole_articles_with_pinned_counts(cache):
  directory = text.corpus_dir('wiki_gensim', cache_dir=cache)
  raw = {s: p.read_text(encoding='utf-8') for s, p in text.raw_files(directory).items()}
  titles = {s: [line for line in r.split('\n') if line.startswith(' = ') and
                not line.startswith(' = = ')] for s, r in raw.items()}
  assert [len(titles[s]) for s in text.SPLITS] == [96, 5, 5]
  assert titles['train'][0] == ' = Anarchism = '
  assert not set(titles['train']) & (set(titles['valid']) | set(titles['test']))
  tokens = text.tokenize_splits(directory, tokenizers.gpt2(), cache)
  # Our cleaner's counts (gensim's cleaner gives about 604k / 39k / 47k).
  assert {s: len(t) for s, t in tokens.items()} == {'train': 560_728, 'valid': 37_130,
                                                    'test': 45_701}


def test_gpt2_tokenizer_gives_the_reference_ids_offline():
  tok = tokenizers.gpt2()
  assert tok.encode("That's my beautiful and sweet string") == [2504, 338, 616, 4950, 290,
                                                                 6029, 4731]
  assert tok.encode('hello world') == [31373, 995]
  assert (tok.vocab_size, tok.eot_id) == (50_257, 50_256)
  assert tok.decode([31373, 995]) == 'hello world'


def test_local_bpe_is_deterministic_cached_and_round_trips(cache, tmp_path):
  directory = text.corpus_dir('pydoc_topics', cache_dir=cache)
  first = text.load_tokenizer('bpe', directory, 512, cache)
  again = text.load_tokenizer('bpe', directory, 512, str(tmp_path))  # Trained from scratch.
  assert first.vocab_size == again.vocab_size == 512
  sample = 'The with statement is used to wrap the execution of a block.'
  assert first.encode(sample) == again.encode(sample)
  assert len(first.encode(sample)) < len(sample.encode()) / 2  # It learned merges.
  assert first.decode(first.encode(sample)) == sample
  assert first.eot_id == 0 and first.name == 'bpe512'
  with pytest.raises(ValueError, match='at least 257'):
    text.load_tokenizer('bpe', directory, 100, cache)


def test_token_cache_is_keyed_by_content_and_tokenizer(cache, tmp_path):
  directory = tmp_path / 'corpus'
  directory.mkdir()
  for split in text.SPLITS:
    (directory / f'wiki.{split}.raw').write_text(f' = {split} = \n\n Some {split} text here. \n')
  byte_tokens = text.tokenize_splits(directory, tokenizers.byte_level(), cache)
  assert bytes(byte_tokens['train'].astype(np.uint8)).decode() == (
      ' = train = \n\n Some train text here. \n')
  gpt2_tokens = text.tokenize_splits(directory, tokenizers.gpt2(), cache)
  assert len(gpt2_tokens['train']) < len(byte_tokens['train'])
  (directory / 'wiki.train.raw').write_text(' Changed. \n')  # New content, new cache entry.
  assert bytes(text.tokenize_splits(directory, tokenizers.byte_level(), cache)['train']
               .astype(np.uint8)).decode() == ' Changed. \n'


def test_eval_windows_are_non_overlapping_from_zero_with_the_partial_kept():
  tokens = np.arange(1, 11, dtype=np.int32)
  windows, mask = text.eval_windows(tokens, 4)
  np.testing.assert_array_equal(windows, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]])
  np.testing.assert_array_equal(mask.sum(1), [4, 4, 2])
  batches = list(text.eval_batches(tokens, length=4, batch_size=2))
  assert len(batches) == 2 and batches[1]['mask'][1].sum() == 0  # Padding window masked.


def test_sliding_windows_score_every_token_once_with_full_context():
  tokens = np.arange(1, 24, dtype=np.int32)
  for length, stride in [(8, 2), (8, 3), (8, 8), (5, 1), (30, 4)]:
    windows, mask = text.eval_windows(tokens, length, stride)
    starts = np.arange(len(windows)) * stride
    position = starts[:, None] + np.arange(length)
    scored = position[:, 1:][mask[:, 1:]]  # Targets: position 0 of a window is never one.
    expected = np.arange(1, len(tokens))
    if stride == length:  # Non-overlapping: each window's first token has no prediction.
      expected = expected[expected % length != 0]
    np.testing.assert_array_equal(np.sort(scored), expected)
    np.testing.assert_array_equal(windows[mask], tokens[position[mask]])
    later = mask.copy()
    later[0] = False
    assert (np.nonzero(later)[1] >= length - stride).all()  # Each sees length - stride before.
  same = text.eval_windows(tokens, 4, 4), text.eval_windows(tokens, 4)
  np.testing.assert_array_equal(same[0][0], same[1][0])
  np.testing.assert_array_equal(same[0][1], same[1][1])


def test_train_batches_are_shuffled_windows_addressed_by_step():
  tokens = np.arange(100, dtype=np.int32)
  ds = text.train_batches(tokens, length=10, global_batch=4, seed=0)
  first = ds[0]['tokens']
  assert first.shape == (4, 10)
  assert all(row[0] % 10 == 0 and (np.diff(row) == 1).all() for row in first)
  np.testing.assert_array_equal(ds[3]['tokens'], text.train_batches(
      tokens, length=10, global_batch=4, seed=0)[3]['tokens'])  # Random access, reproducible.
  epoch = np.concatenate([ds[s]['tokens'][:, 0] for s in range(2)])
  assert len(set(epoch.tolist())) == 8  # No window repeats within an epoch.


def test_bad_data_gets_one_clear_sentence(tmp_path):
  (tmp_path / 'wiki.train.raw').write_text('x')
  with pytest.raises(FileNotFoundError, match='lacks wiki.valid.raw, wiki.test.raw'):
    text.corpus_dir('wikitext', str(tmp_path))
  with pytest.raises(ValueError, match='needs data.dir'):
    text.corpus_dir('wikitext')
  with pytest.raises(ValueError, match="data.name='c4' is not one of: "):
    text.corpus_dir('c4')
  with pytest.raises(ValueError, match='has 5 tokens, fewer than one window of 8'):
    text.Windows(np.arange(5), 8)
