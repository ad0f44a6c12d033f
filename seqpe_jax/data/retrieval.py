"""Long-context QA and passkey retrieval probes in the reference's QA jsonl schema.

Schema: one JSON object per line, `{"index": int, "input": str, "outputs": [str, ...]}`, one
file per context length (`validation.2048.jsonl`); extra fields are kept. Generated passkey
probes (no download) add `length` (actual tokens), `depth` (0..1: the filler's fraction
before the needle) and `candidates` (9 wrong keys of the gold key's form).

Lengths are met within TOLERANCE: the filler is tokenised once and cut at word boundaries
(tokens that start with whitespace, where BPE pre-tokenisation splits anyway, so pieces
tokenise the same alone as joined). Example i sits in depth decile i mod 10, so a length x
depth heatmap has every cell, and draws from a generator seeded by (seed, task, length, i):
a seed reproduces a file byte for byte, so training and evaluation sets need different seeds.

    python -m seqpe_jax.data.retrieval --task=passkey --length=N --num=M --seed=S --out=F.jsonl
"""

import dataclasses
import json
import pathlib
import re

import numpy as np
from absl import app, flags

from seqpe_jax import cli
from seqpe_jax.data import cache, text, tokenizers

TASKS = ('passkey',)
FILLERS = ('wiki', 'repeat')
MIN_LENGTH, MAX_LENGTH = 128, 16_384
TOLERANCE = 8  # |actual - requested| prompt tokens.
HELD_OUT = ('valid', 'test')
FIELDS = {'index': int, 'input': str, 'outputs': list}
SCHEMA = 'one JSON object per line with "index" (int), "input" (str) and "outputs" (list of str)'

PASSKEY_PREFIX = ('There is an important info hidden inside a lot of irrelevant text. Find it '
                  'and memorize it. I will quiz you about the important information there.\n')
PASSKEY_NEEDLE = ' The pass key is {key}. Remember it. {key} is the pass key.'
PASSKEY_QUESTION = '\nWhat is the pass key? The pass key is'
# The classic passkey filler (landmark attention's); its leading space makes repetitions
# tokenise the same joined as alone.
REPEATED_FILLER = (' The grass is green. The sky is blue. The sun is yellow. Here we go. '
                   'There and back again.')
NUM_CANDIDATES = 10  # The gold answer and 9 wrong ones of its form.
MAX_DRAWS = 64  # Keys tried before a filler that contains them all is refused.
SENTENCE_WINDOW = 0.02  # How far (fraction of the filler) a needle may move to a sentence start.

# ------------------------------------------------------------------ Reading and writing.


def read_jsonl(path) -> list[dict]:
  """Examples of a QA jsonl file, checked line by line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: a QA file holds {SCHEMA}.')
  examples = []
  with path.open(encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        example = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number}: not valid JSON ({e.msg}); expected {SCHEMA}.') from None
      if problem := _schema_problem(example):
        raise ValueError(f'{path}:{number}: {problem}; expected {SCHEMA}.')
      examples.append(example)
  return examples


def _schema_problem(example) -> str:
  if not isinstance(example, dict):
    return f'a {type(example).__name__}, not an object'
  for field, kind in FIELDS.items():
    if field not in example:
      return f'missing field "{field}"'
    value = example[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      return f'"{field}" is a {type(value).__name__}, not a {kind.__name__}'
  if not all(isinstance(o, str) for o in example['outputs']):
    return '"outputs" holds something other than strings'
  # Else no model could be scored fairly: retrieval asks for something the context states.
  if not any(o.strip() and o.strip().lower() in example['input'].lower()
             for o in example['outputs']):
    return 'none of the "outputs" occurs in its "input"'
  return ''


def read_lengths(directory, split: str = 'validation') -> dict[int, list[dict]]:
  """{length: examples} of the `<split>.<length>.jsonl` files in `directory`, by length."""
  directory = pathlib.Path(directory)
  pattern = re.compile(rf'{re.escape(split)}\.(\d+)\.jsonl')
  files = {int(m.group(1)): p for p in directory.glob(f'{split}.*.jsonl')
           if (m := pattern.fullmatch(p.name))} if directory.is_dir() else {}
  if not files:
    raise FileNotFoundError(f'{directory} has no {split}.<length>.jsonl files (e.g. '
                            f'{split}.2048.jsonl), each holding {SCHEMA}.')
  return {length: read_jsonl(files[length]) for length in sorted(files)}


def write_jsonl(path, examples: list[dict]) -> None:
  """One object per line in field order; the same examples give the same bytes."""
  lines = ''.join(json.dumps(e, ensure_ascii=False) + '\n' for e in examples)
  cache.atomic_write(pathlib.Path(path), lines)


def depth_decile(depth: float) -> int:
  """0..9; depth 1.0 belongs to the last decile."""
  return min(int(depth * 10), 9)


def _check_length(length: int) -> None:
  if not MIN_LENGTH <= length <= MAX_LENGTH:
    raise ValueError(f'Retrieval prompts are {MIN_LENGTH}..{MAX_LENGTH} tokens long, not {length}.')


def _rng(seed, task: str, length: int, index: int) -> np.random.Generator:
  return np.random.default_rng([*np.atleast_1d(seed).tolist(), TASKS.index(task), length, index])

# ------------------------------------------------------------------ Passkey.


@dataclasses.dataclass(frozen=True)
class Filler:
  """Paragraphs as one token stream, tiled so any start has MAX_LENGTH after it. `word[i]`:
  token i starts with whitespace (a clean cut); `sentence[i]`: also follows a sentence end;
  `whole[i]`: the cut before token i splits no character (mid-word cuts tokenise about the
  same; a last resort); `starts`: paragraph starts."""
  tokens: np.ndarray
  word: np.ndarray
  whole: np.ndarray
  sentence: np.ndarray
  starts: np.ndarray


_FILLERS: dict[tuple[str, str, str], Filler] = {}


def load_filler(directory, split: str, tokenizer: tokenizers.Tokenizer,
                kind: str = 'wiki') -> Filler:
  """Filler of `kind`, cached per process: 'wiki', the paragraphs (not headings) of
  `wiki.<split>.raw` joined by newlines; 'repeat', REPEATED_FILLER over and over."""
  if kind not in FILLERS:
    raise ValueError(f"Unknown filler '{kind}'; use one of: {', '.join(FILLERS)}.")
  if kind == 'wiki' and split not in HELD_OUT:
    raise ValueError(f"Filler text comes from a held-out split ({' or '.join(HELD_OUT)}), "
                     f"not '{split}'.")
  key = (str(directory), split, tokenizer.name) if kind == 'wiki' else ('', kind, tokenizer.name)
  if key not in _FILLERS:
    if kind == 'repeat':
      pieces = [tokenizer.encode(REPEATED_FILLER)]
    else:
      raw = text.raw_files(pathlib.Path(directory))[split].read_text(encoding='utf-8')
      pieces = [tokenizer.encode(line.strip() + '\n') for line in raw.split('\n')
                if line.strip() and not line.startswith(' = ')]
      if not pieces:
        raise ValueError(f'The {split} split of {directory} has no paragraphs to use as filler.')
    _FILLERS[key] = _tiled_filler(pieces, tokenizer)
  return _FILLERS[key]


def _tiled_filler(pieces: list[list[int]], tokenizer: tokenizers.Tokenizer) -> Filler:
  """The pieces (paragraphs) as one stream, tiled past MAX_LENGTH, with its cut points."""
  one = np.fromiter((t for p in pieces for t in p), np.int64)
  copies = 1 + -(-(MAX_LENGTH + 64) // len(one))
  tokens = np.tile(one, copies)
  vocab = {int(t): tokenizer.decode([t]) for t in np.unique(one)}
  word = np.array([vocab[int(t)][:1].isspace() for t in tokens])
  ends = np.array([vocab[int(t)].rstrip()[-1:] in ('.', '!', '?') for t in tokens])
  sentence = word & np.concatenate([[True], ends[:-1]])
  partial = np.array(['\ufffd' in vocab[int(t)] for t in tokens])  # Part of a character.
  whole = ~partial & ~np.concatenate([[False], partial[:-1]])
  starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
  return Filler(tokens, word, whole, sentence, starts)


@dataclasses.dataclass(frozen=True)
class KeyForm:
  """How passkeys look: `digits` random digits (no leading zero), or one of `pool`."""
  name: str
  digits: int = 0
  pool: tuple[str, ...] = ()

  def draw(self, rng: np.random.Generator) -> str:
    if self.pool:
      return self.pool[int(rng.integers(len(self.pool)))]
    return str(rng.integers(10 ** (self.digits - 1), 10 ** self.digits))


DIGITS5 = KeyForm('digits5', digits=5)  # The default key form.


def key_form(name: str, tokenizer: tokenizers.Tokenizer, field: str = '--key_form') -> KeyForm:
  """The KeyForm `name` ('digitsN', N = 1..9, or 'token'); errors name the setting `field`."""
  if match := re.fullmatch(r'digits([1-9])', name):
    digits = int(match.group(1))
    if 9 * 10 ** (digits - 1) < NUM_CANDIDATES:
      raise ValueError(f"{field}='{name}' has fewer than the {NUM_CANDIDATES} different keys a "
                       'probe ranks; use digits2 or more.')
    return KeyForm(name, digits=digits)
  if name != 'token':
    raise ValueError(f"{field}='{name}' is not a key form; use digitsN (N = 1..9 digits, e.g. "
                     "digits5) or 'token'.")
  numbers = [str(n) for n in range(10, 10_000)]
  # One batch: `Tokenizer.encode` runs a batch of one (~1 ms in tiktoken's thread pool).
  encoded = tokenizer._encode_batch([' ' + n for n in numbers])  # pylint: disable=protected-access
  pool = tuple(n for n, ids in zip(numbers, encoded) if len(ids) == 1)
  if len(pool) < NUM_CANDIDATES:
    raise ValueError(f"{field}='token' needs {NUM_CANDIDATES} numbers that the {tokenizer.name} "
                     f'tokenizer writes as one token after a space, and it has {len(pool)}; use '
                     'a digitsN key form with this tokenizer.')
  return KeyForm(name, pool=pool)


def _nearest(positions: np.ndarray, target: float, lo: float, hi: float):
  """The element of sorted `positions` inside [lo, hi] nearest `target`, or None."""
  inside = positions[(positions >= lo) & (positions <= hi)]
  return None if not len(inside) else int(inside[np.argmin(np.abs(inside - target))])


def _cut_points(filler: Filler, start: int, size: int, depth: float,
                decile: tuple[float, float]) -> tuple[int, int]:
  """(needle, end) offsets from `start`. The end: a word boundary within 2 tokens of
  `size`, else any cut that splits no character (long words, byte tokens). The needle: a
  sentence start near `depth` of the filler, else a word boundary, inside the depth decile
  when possible (offset 0, the paragraph start, is always a sentence start)."""
  words = np.flatnonzero(filler.word[start + 1:start + size + 64]) + 1
  wholes = np.flatnonzero(filler.whole[start + 1:start + size + 64]) + 1
  end = (_nearest(words, size, size - 2, size + 2) or _nearest(wholes, size, 1, size + 63) or
         _nearest(words, size, 1, size + 63) or size)
  sentences = np.concatenate([[0], np.flatnonzero(filler.sentence[start + 1:start + end]) + 1])
  words = np.concatenate([[0], words[words <= end]])
  # Integer bounds keep depth = needle / end inside [lo, hi) (hi inclusive for the last).
  lo = -(-decile[0] * end // 1)
  hi = end if decile[1] >= 1 else -(-decile[1] * end // 1) - 1
  target, window = depth * end, max(2.0, SENTENCE_WINDOW * end)
  for positions, a, b in ((sentences, max(lo, target - window), min(hi, target + window)),
                          (words, lo, hi), (words, 0, end)):
    if (needle := _nearest(positions, target, a, b)) is not None:
      return needle, end
  return 0, end


def passkey_example(tokenizer: tokenizers.Tokenizer, filler: Filler, length: int,
                    index: int, rng: np.random.Generator, keys: KeyForm) -> dict:
  """One passkey prompt of about `length` tokens, the needle in depth decile index % 10."""
  decile = (index % 10) / 10, (index % 10 + 1) / 10
  start = int(rng.choice(filler.starts))
  depth = rng.uniform(*decile)
  for _ in range(MAX_DRAWS):  # A key that the filler happens to contain would appear twice.
    key = keys.draw(rng)
    needle = PASSKEY_NEEDLE.format(key=key)
    fixed = len(tokenizer.encode(PASSKEY_PREFIX + needle + PASSKEY_QUESTION))
    size = length - fixed
    if size < 16:
      raise ValueError(f'A passkey prompt of {length} {tokenizer.name} tokens leaves {size} '
                       f'for filler; use a length of at least {fixed + 16}.')
    for _ in range(3):  # Joins rarely tokenise differently from the parts; re-aim if so.
      cut, end = _cut_points(filler, start, size, depth, decile)
      before = tokenizer.decode(filler.tokens[start:start + cut])
      after = tokenizer.decode(filler.tokens[start + cut:start + end])
      prompt = PASSKEY_PREFIX + before + needle + after + PASSKEY_QUESTION
      actual = len(tokenizer.encode(prompt))
      if abs(actual - length) <= 2:
        break
      size -= actual - length
    if key not in before + after:
      candidates = []  # Wrong keys of the same form, all different.
      while len(candidates) < NUM_CANDIDATES - 1:
        candidate = keys.draw(rng)
        if candidate != key and candidate not in candidates:
          candidates.append(candidate)
      return {'index': index, 'input': prompt, 'outputs': [key], 'length': actual,
              'depth': round(cut / end, 6), 'candidates': candidates}
  raise ValueError(f"{MAX_DRAWS} keys of form '{keys.name}' all occur in the filler of a "
                   f'{length}-token passkey prompt; use the repeat filler or a longer key form.')


def passkey_examples(tokenizer: tokenizers.Tokenizer, filler: Filler, length: int, num: int,
                     seed, keys: KeyForm = DIGITS5) -> list[dict]:
  """`num` passkey probes; `seed` an int or a sequence of ints."""
  _check_length(length)
  return [passkey_example(tokenizer, filler, length, i, _rng(seed, 'passkey', length, i), keys)
          for i in range(num)]

# ------------------------------------------------------------------ By name.


def min_length(tokenizer: tokenizers.Tokenizer, keys: KeyForm = DIGITS5) -> int:
  """The shortest passkey prompt (tokens) with this tokenizer: its fixed text, the longest
  key and room for 16 filler tokens; never below MIN_LENGTH."""
  longest = max(keys.pool, key=lambda k: len(tokenizer.encode(k))) if keys.pool else (
      '9' * keys.digits)
  needle = PASSKEY_NEEDLE.format(key=longest)
  return max(MIN_LENGTH, len(tokenizer.encode(PASSKEY_PREFIX + needle + PASSKEY_QUESTION)) + 16 + 2)


def generate(task: str, length: int, num: int, seed: int, *, tokenizer: str = 'gpt2',
             vocab_size: int = 4096, corpus: str = 'wiki_gensim', data_dir: str = '',
             cache_dir: str = '', split: str = 'valid', filler: str = 'wiki',
             key: str = 'digits5') -> list[dict]:
  """`num` `task` examples of `length` tokens; held-out `split` of `corpus` gives the filler."""
  if task not in TASKS:
    raise ValueError(f"Unknown retrieval task '{task}'; use one of: {', '.join(TASKS)}.")
  _check_length(length)
  if num < 1:
    raise ValueError(f'Generate at least one example, not {num}.')
  directory = text.corpus_dir(corpus, data_dir, cache_dir)
  tok = text.load_tokenizer(tokenizer, directory, vocab_size, cache_dir)
  keys = key_form(key, tok)
  return passkey_examples(tok, load_filler(directory, split, tok, filler), length, num, seed, keys)


def summary(examples: list[dict]) -> str:
  lengths = [e['length'] for e in examples]
  deciles = sorted({depth_decile(e['depth']) for e in examples})
  return (f'{len(examples)} examples, {min(lengths)}..{max(lengths)} tokens, depth deciles '
          f'{",".join(map(str, deciles))}')


def main(argv):
  f = flags.FLAGS
  with cli.exit_statuses():  # Bad input: one sentence and status 2.
    if len(argv) > 1:
      raise ValueError(f'Unexpected arguments: {" ".join(argv[1:])}.')
    if not f.task or f.length is None or not f.out:
      raise ValueError('Pass --task=passkey, --length=N and --out=FILE.jsonl.')
    examples = generate(f.task, f.length, f.num, f.seed, tokenizer=f.tokenizer,
                        vocab_size=f.vocab_size, corpus=f.corpus, data_dir=f.data_dir,
                        cache_dir=f.cache_dir, split=f.split, filler=f.filler, key=f.key_form)
  write_jsonl(f.out, examples)
  print(f.out)
  print(f'{f.task} at {f.length} {f.tokenizer} tokens (seed {f.seed}): {summary(examples)}')


if __name__ == '__main__':
  flags.DEFINE_string('task', None, f"Which probe: {' | '.join(TASKS)}.")
  flags.DEFINE_integer('length', None, f'Prompt length in tokens, {MIN_LENGTH}..{MAX_LENGTH}.')
  flags.DEFINE_integer('num', 10, 'How many examples (example i at depth decile i mod 10).')
  flags.DEFINE_integer('seed', 0, 'Seed; the same seed writes the same bytes.')
  flags.DEFINE_string('out', None, 'The jsonl file to write.')
  flags.DEFINE_string('tokenizer', 'gpt2', 'gpt2 | bpe (trained on the corpus) | byte.')
  flags.DEFINE_integer('vocab_size', 4096, 'Vocabulary of --tokenizer=bpe.')
  flags.DEFINE_string('corpus', 'wiki_gensim', f"Filler corpus: {' | '.join(text.CORPORA)}.")
  flags.DEFINE_string('data_dir', '', 'The wikitext directory (--corpus=wikitext).')
  flags.DEFINE_string('cache_dir', '', "Built corpora and tokenizers; '' = the default cache.")
  flags.DEFINE_string('split', 'valid', 'Held-out split giving the passkey filler: valid | test.')
  flags.DEFINE_string('filler', 'wiki', f"Passkey filler: {' | '.join(FILLERS)} (classic).")
  flags.DEFINE_string('key_form', 'digits5', 'Passkey keys: digitsN (N digits) | token.')
  app.run(main)
