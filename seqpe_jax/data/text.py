"""Language-model text: corpora in the WikiText-raw layout, tokenised once, cut into windows.

Corpora (`config.data.name`): wiki_gensim, the Wikipedia articles in the gensim wheel,
cleaned by `wikimarkup` (docs/experiments.md); pydoc_topics, the standard library's Python
reference prose, for unit tests; wikitext, a directory (`config.data.dir`) with
wiki.{train,valid,test}.raw (WikiText-103 for the paper run). Both built corpora are split by
whole articles (`_write_splits`); token arrays are cached per corpus content and tokenizer.
"""

import hashlib
import importlib.util
import io
import pathlib

import grain
import numpy as np

from seqpe_jax import choices
from seqpe_jax.data import batching, cache, tokenizers, wikimarkup

SPLITS = ('train', 'valid', 'test')
CORPORA = ('wiki_gensim', 'pydoc_topics', 'wikitext')
GENSIM_DUMP = 'test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2'
MIN_ARTICLE_WORDS = 50
HELD_OUT_ARTICLES = 5  # Each of valid and test.
# Bump when the conversion changes, so cached corpora built by older code are not reused.
BUILD_VERSION = 1


def raw_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  return {split: directory / f'wiki.{split}.raw' for split in SPLITS}


def corpus_dir(name: str, data_dir: str = '', cache_dir: str = '') -> pathlib.Path:
  """The directory holding wiki.{train,valid,test}.raw for corpus `name` (built if needed)."""
  if name not in CORPORA:
    raise choices.unknown('data.name', name, CORPORA)
  if name == 'wikitext':
    if not data_dir:
      raise ValueError("data.name='wikitext' needs data.dir, a directory with wiki.train.raw, "
                       'wiki.valid.raw and wiki.test.raw (e.g. the unzipped wikitext-103-raw-v1).')
    directory = pathlib.Path(data_dir).expanduser()
  else:
    directory = cache.root(cache_dir) / f'{name}-v{BUILD_VERSION}'
    if not all(p.exists() for p in raw_files(directory).values()):
      articles = _gensim_articles() if name == 'wiki_gensim' else _pydoc_articles()
      _write_splits(directory, articles)
  if missing := [p.name for p in raw_files(directory).values() if not p.exists()]:
    raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: a text corpus directory "
                            'needs wiki.train.raw, wiki.valid.raw and wiki.test.raw (the layout '
                            'of wikitext-103-raw-v1.zip).')
  return directory


def _gensim_articles() -> list[list[str]]:
  spec = importlib.util.find_spec('gensim')
  if spec is None:
    raise FileNotFoundError('The default LM corpus is the Wikipedia sample inside the gensim '
                            'wheel; install it with `pip install gensim==4.4.0` (or set '
                            'data.name to pydoc_topics or wikitext).')
  dump = pathlib.Path(spec.submodule_search_locations[0]) / GENSIM_DUMP
  return [wikimarkup.to_wikitext_lines(title, markup)
          for title, markup in wikimarkup.iter_articles(str(dump))]


def _pydoc_articles() -> list[list[str]]:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  articles = []
  for name, body in sorted(topics.topics.items()):
    paragraphs = [' '.join(p.split()) for p in body.split('\n\n') if p.strip()]
    articles.append([f' = {name} = ', ''] + [line for p in paragraphs for line in (f' {p} ', '')])
  return articles


def _write_splits(directory: pathlib.Path, articles: list[list[str]]) -> None:
  """Whole articles in file order: all but the last 2*5 train, then 5 valid, 5 test."""
  articles = [a for a in articles if wikimarkup.article_words(a) >= MIN_ARTICLE_WORDS]
  k = HELD_OUT_ARTICLES
  splits = {'train': articles[:-2 * k], 'valid': articles[-2 * k:-k], 'test': articles[-k:]}
  for split, path in raw_files(directory).items():
    cache.atomic_write(path, ''.join(line + '\n' for article in splits[split] for line in article))


def load_tokenizer(kind: str, directory: pathlib.Path, vocab_size: int = 0,
                   cache_dir: str = '') -> tokenizers.Tokenizer:
  """`gpt2`, `byte`, or `bpe` trained on this corpus's train split."""
  if kind == 'gpt2':
    return tokenizers.gpt2()
  if kind == 'byte':
    return tokenizers.byte_level()
  if kind == 'bpe':
    if vocab_size < 257:
      raise ValueError(f'data.vocab_size={vocab_size} is too small for a byte-level BPE; use '
                       'at least 257 (256 bytes and end-of-text).')
    train = raw_files(directory)['train']
    path = cache.root(cache_dir) / 'tokenizers' / f'{_digest(train)}-bpe{vocab_size}.json'
    return tokenizers.trained_bpe(train, vocab_size, path)
  raise choices.unknown('data.tokenizer', kind, ('gpt2', 'bpe', 'byte'))


def tokenize_splits(directory: pathlib.Path, tokenizer: tokenizers.Tokenizer,
                    cache_dir: str = '') -> dict[str, np.ndarray]:
  """int32 tokens of each split, cached per (file content, tokenizer)."""
  out = {}
  for split, path in raw_files(directory).items():
    cached = cache.root(cache_dir) / 'tokens' / f'{_digest(path)}-{tokenizer.name}.npy'
    if cached.exists():
      out[split] = np.load(cached).astype(np.int32)
      continue
    with path.open(encoding='utf-8') as f:
      tokens = tokenizer.encode_lines(f.readlines())
    buffer = io.BytesIO()
    np.save(buffer, tokens.astype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32))
    cache.atomic_write(cached, buffer.getvalue())
    out[split] = tokens
  return out


def _digest(path: pathlib.Path) -> str:
  with path.open('rb') as f:
    return hashlib.file_digest(f, 'sha1').hexdigest()[:16]


class Windows:
  """Non-overlapping windows of `length` tokens of a token array (the last partial dropped)."""

  def __init__(self, tokens: np.ndarray, length: int, split: str = 'train'):
    if len(tokens) < length:
      raise ValueError(f'The {split} split has {len(tokens)} tokens, fewer than one window of '
                       f'{length}; use a shorter length or a larger corpus.')
    self.tokens, self.length = tokens, length

  def __len__(self):
    return len(self.tokens) // self.length

  def __getitem__(self, index):
    start = int(index) * self.length
    return self.tokens[start:start + self.length]


def train_batches(tokens: np.ndarray, *, length: int, global_batch: int,
                  seed: int) -> grain.MapDataset:
  """Shuffled, repeated batches {'tokens': int32[B/processes, length]}; element s = step s."""
  windows = Windows(tokens, length)
  read = lambda idx: {'tokens': np.stack([windows[i] for i in idx]).astype(np.int32)}
  return batching.step_batches(len(windows), global_batch=global_batch, seed=seed, read=read)


def eval_windows(tokens: np.ndarray, length: int,
                 stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Windows int32[n, length] that start every `stride` tokens (default: `length`) until
  the text is covered, the last one padded, and bool[n, length] true on the tokens that
  exist and are scored (position 0 of a window is never predicted). A later window scores
  only its last `stride` tokens, so every token after the first is scored exactly once, and
  past the first window with length - stride tokens of context."""
  stride = length if stride is None else stride
  if not 1 <= stride <= length:
    raise ValueError(f'The evaluation stride must be in 1..{length}, got {stride}.')
  n = 1 + max(0, -(-(len(tokens) - length) // stride))
  index = (np.arange(n) * stride)[:, None] + np.arange(length)[None, :]
  exists = index < len(tokens)
  windows = np.where(exists, tokens[np.minimum(index, len(tokens) - 1)], 0).astype(np.int32)
  scored = np.ones((n, length), bool)
  scored[1:, :length - stride] = False  # Context only: the previous window scored these.
  return windows, exists & scored


def eval_batches(tokens: np.ndarray, *, length: int, batch_size: int, stride: int | None = None):
  """Batches of `eval_windows`, the last filled with all-masked padding windows."""
  windows, mask = eval_windows(tokens, length, stride)
  for start in range(0, len(windows), batch_size):
    w, m = windows[start:start + batch_size], mask[start:start + batch_size]
    pad = ((0, batch_size - len(w)), (0, 0))
    yield {'tokens': np.pad(w, pad), 'mask': np.pad(m, pad)}
