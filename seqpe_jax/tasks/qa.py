"""Long-context QA fine-tuning: answer-only loss at one block, exact match by length and depth.

Starts from an LM run's parameters (`config.init_from`, tasks/finetune.py) and trains on the
reference's QA schema (data/retrieval.py): passkey probes (evaluation probes from their own
eval.probe_seed) or, with data.source='jsonl', the files in data.dir. Evaluation decodes
greedily with the KV cache, prompts left-padded, and scores the reference's exact match; two
teacher-forced measures against 9 wrong candidates see below its floor: `answer_logp` (nats)
and `rank_acc` (chance 0.1). Probes also report each per decile of the needle's depth
('em_depth3'), drawn as heatmaps (docs/experiments.md).
"""

import math

import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from seqpe_jax import metrics, posenc, sharding
from seqpe_jax import results as results_files
from seqpe_jax.data import batching, retrieval, text
from seqpe_jax.models import gpt
from seqpe_jax.tasks import base, common, finetune, lm

SOURCES = ('passkey', 'jsonl')
SCRATCH = 'scratch'  # init_from value for a run that starts from random parameters.


def exact_match(output: str, answers) -> bool:
  """The reference's EM: some answer, lower-cased and stripped, is in the lower-cased output."""
  output = output.strip().lower()
  return any(answer.strip().lower() in output for answer in answers)


def char_accuracy(output: str, answers) -> float:
  """The best share of a gold answer's characters that the output has at the same place
  (both lower-cased, stripped): partial credit that moves before EM does."""
  output = output.strip().lower()
  scores = [sum(a == o for a, o in zip(gold, output)) / len(gold)
            for gold in (answer.strip().lower() for answer in answers) if gold]
  return max(scores, default=0.0)


def encode(tokenizer, example: dict) -> tuple[list[int], list[bool]]:
  """(tokens of prompt, answer and end-of-text; true on the tokens the loss scores)."""
  prompt = tokenizer.encode(example['input'].strip())
  answer = tokenizer.encode(' ' + example['outputs'][0].strip()) + [tokenizer.eot_id]
  return prompt + answer, [False] * len(prompt) + [True] * len(answer)


def pack(encoded, block: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Right-padded tokens and scored masks [N, block] of the fitting examples; how many did not."""
  kept = [(t, m) for t, m in encoded if len(t) <= block]
  tokens = np.full((len(kept), block), pad_id, np.int32)
  mask = np.zeros((len(kept), block), bool)
  for i, (t, m) in enumerate(kept):
    tokens[i, :len(t)], mask[i, :len(m)] = t, m
  return tokens, mask, len(encoded) - len(kept)


def decode_answer(tokenizer, tokens) -> str:
  """The generated text up to the first end-of-text."""
  tokens = [int(t) for t in tokens]
  end = tokens.index(tokenizer.eot_id) if tokenizer.eot_id in tokens else len(tokens)
  return tokenizer.decode(tokens[:end])


def left_pad(prompts: list[list[int]], width: int, rows: int, pad_id: int) -> dict[str, np.ndarray]:
  """{'tokens', 'mask'} [rows, width]: each prompt at the right end, true on its tokens.
  Rows beyond the prompts (to fill a batch) hold one end-of-text token."""
  tokens = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), bool)
  mask[len(prompts):, -1] = True
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):], mask[i, width - len(p):] = p, True
  return {'tokens': tokens, 'mask': mask}


def rank_accuracy(scores_NC) -> float:
  """Accuracy@1: the share of rows whose column 0 (the gold answer's score) is strictly
  above every other column (a tie is not a win, so a model blind to the answer scores 0)."""
  scores_NC = np.asarray(scores_NC)
  return float(np.mean(scores_NC[:, 0] > scores_NC[:, 1:].max(axis=1)))


def with_candidates(examples: list[dict]) -> list[list[str]]:
  """Per example, its gold answer then up to retrieval.NUM_CANDIDATES - 1 wrong ones: its own
  `candidates`, else (QA files) the other examples' first answers, from the next one on."""
  answers = [e['outputs'][0].strip() for e in examples]
  result = []
  for i, (e, gold) in enumerate(zip(examples, answers)):
    if 'candidates' in e:
      wrong = [c.strip() for c in e['candidates']]
    else:
      others = answers[i + 1:] + answers[:i]
      wrong = list(dict.fromkeys(a for a in others if a.lower() != gold.lower()))
    result.append([gold] + wrong[:retrieval.NUM_CANDIDATES - 1])
  return result


def candidate_tokens(tokenizer, candidates: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
  """Each candidate as the training text continues a prompt (" " + answer, end-of-text),
  right-padded: tokens int32[N, C, K] and bool[N, C, K] true on the scored tokens. Rows
  with fewer candidates repeat their last one, masked out."""
  encoded = [[tokenizer.encode(' ' + c) + [tokenizer.eot_id] for c in row] for row in candidates]
  num = max(map(len, encoded))
  width = max(len(t) for row in encoded for t in row)
  tokens = np.full((len(encoded), num, width), tokenizer.eot_id, np.int32)
  mask = np.zeros((len(encoded), num, width), bool)
  for i, row in enumerate(encoded):
    for c in range(num):
      t = row[min(c, len(row) - 1)]
      tokens[i, c, :len(t)], mask[i, c, :len(t)] = t, c < len(row)
  return tokens, mask


def score(examples: list[dict], outputs: list[str], candidate_scores=None) -> dict[str, float]:
  """EM and character accuracy; with `candidate_scores` (log-probabilities [N, C], gold
  first, -inf for missing candidates) also answer_logp and rank_acc. EM, answer_logp and
  rank_acc also per depth decile when every example records its depth."""
  hits = np.array([exact_match(o, e['outputs']) for e, o in zip(examples, outputs)], float)
  chars = [char_accuracy(o, e['outputs']) for e, o in zip(examples, outputs)]
  result = {'em': float(hits.mean()), 'char_accuracy': float(np.mean(chars)),
            'examples': float(len(hits))}
  per_example = {'em': lambda rows: float(hits[rows].mean())}
  if candidate_scores is not None:
    scores = np.asarray(candidate_scores, np.float64)
    per_example['answer_logp'] = lambda rows: float(scores[rows, 0].mean())
    per_example['rank_acc'] = lambda rows: rank_accuracy(scores[rows])
  result.update({name: f(slice(None)) for name, f in per_example.items() if name != 'em'})
  if all('depth' in e for e in examples):
    deciles = np.array([retrieval.depth_decile(e['depth']) for e in examples])
    for d in np.unique(deciles):
      for name, f in per_example.items():
        result[f'{name}_depth{d}'] = f(deciles == d)
  return result


def answer_loss(logits_BLV, batch):
  """Mean cross-entropy of the answer and end-of-text tokens (batch['mask'] marks them)."""
  return lm.mean_nll(logits_BLV, batch, 'train/answer_ppl')


class QATask(base.Task):
  """Everything the trainer needs to fine-tune a GPT on long-context QA."""
  metric = 'em'
  axis_label = 'context length (tokens)'
  sweep_protocol = 'greedy decoding with the KV cache, exact match'

  def __init__(self, config):
    self.config = config
    data = config.data
    _validate(config)
    if config.init_from != SCRATCH:  # Refuse another model before any data work.
      finetune.check_compatible(config, finetune.source_config(config.init_from))
    self.corpus = _corpus_dir(data)
    self.tokenizer = text.load_tokenizer(data.tokenizer, self.corpus, data.vocab_size,
                                         data.cache_dir)
    self.keys = None
    if data.source != 'jsonl':
      self.keys = retrieval.key_form(data.key_form, self.tokenizer, field='data.key_form')
      _check_room(config, retrieval.min_length(self.tokenizer, self.keys), self.tokenizer.name)
    self._eval_sets, self._inputs = {}, {}
    # Missing files or impossible lengths fail now, not after training, and so does a PE
    # that cannot make a table the sweep will ask for (prompts may run past their length).
    shapes = [inputs[-1] for inputs in self._sweep_inputs().values()]
    host = gpt.host_spec(config.model.variant, data.seq_len, common.model_dtype(config))
    self.train_shape = host.train_shape
    self.pe, self.regularizers, self.shifts = common.build_pe(config, host, shapes)
    self.model = lm.gpt_model(config, self.tokenizer.vocab_size, self.pe)
    self.eval_model = self.model  # QA reads every length with the model as trained.
    self._build_train_set()

  def _build_train_set(self) -> None:
    data, held = self.config.data, self.config.eval.batch_size
    if data.source == 'jsonl':
      examples = [e for group in retrieval.read_lengths(data.dir, 'train').values() for e in group]
    else:
      examples = self._probes(data.seq_len, data.num_train, data.probe_seed, data.filler_split)
    tokens, mask, self.skipped = pack([encode(self.tokenizer, e) for e in examples],
                                      data.seq_len, self.tokenizer.eot_id)
    log = logging.warning if self.skipped else logging.info
    log('QA training set: %d of %d examples fit the %d-token block (%d skipped as longer); %d '
        'held out for diagnostics.', len(tokens), len(examples), data.seq_len, self.skipped, held)
    if len(tokens) <= held:
      raise ValueError(f'Only {len(tokens)} QA training examples fit the {data.seq_len}-token '
                       f'block, and eval.batch_size={held} of them are held out; use more '
                       'examples or a longer data.seq_len.')
    self.train_tokens, self.train_mask = tokens[:-held], mask[:-held]
    self.heldout = {'tokens': tokens[-held:], 'mask': mask[-held:]}

  def _probes(self, length: int, num: int, seed: int, split: str) -> list[dict]:
    """Passkey probes for the nominal `length`: length - data.answer_room prompt tokens."""
    # The split is part of the seed: the repeat filler is the same text in every split.
    seed = (seed, retrieval.HELD_OUT.index(split))
    data = self.config.data
    filler = retrieval.load_filler(self.corpus, split, self.tokenizer, data.filler)
    return retrieval.passkey_examples(self.tokenizer, filler, length - data.answer_room, num,
                                      seed, self.keys)

  def _sweep_inputs(self, split: str | None = None) -> dict[int, tuple]:
    """{length: (examples, prompt tokens, `candidate_tokens`' tokens and mask, PE table shape)}
    of `split`, tokenised once. The table spans the longest prompt and the longer of
    max_new_tokens and the longest candidate, less the last token (never fed back)."""
    split = split or self.config.eval.split
    if split not in self._inputs:
      self._inputs[split] = {}
      for length, examples in self.eval_sets(split).items():
        prompts = [self.tokenizer.encode(e['input'].strip()) for e in examples]
        candidates, scored = candidate_tokens(self.tokenizer, with_candidates(examples))
        longest = max(self.config.eval.max_new_tokens, candidates.shape[-1])
        shape = (max(map(len, prompts)) + longest - 1,)
        self._inputs[split][length] = examples, prompts, candidates, scored, shape
    return self._inputs[split]

  def eval_sets(self, split: str | None = None) -> dict[int, list[dict]]:
    """{length: examples} for `split` (default eval.split), made or read once."""
    split = split or self.config.eval.split
    if split not in self._eval_sets:
      data, ev = self.config.data, self.config.eval
      if data.source == 'jsonl':
        read = lambda n: retrieval.read_jsonl(epath.Path(data.dir) / f'{split}.{n}.jsonl')
      else:
        read = lambda n: self._probes(n, ev.num_examples, ev.probe_seed, split)
      self._eval_sets[split] = {length: read(length) for length in ev.lengths}
    return self._eval_sets[split]

  def initial_params(self, abstract_params):
    """The LM run's parameters placed like `abstract_params`; None when init_from is 'scratch'."""
    if self.config.init_from == SCRATCH:
      return None
    logging.info('Starting from the parameters of %s.', self.config.init_from)
    return finetune.load_params(self.config.init_from, abstract_params)

  def train_batches(self, seed: int):
    tokens, mask = self.train_tokens, self.train_mask
    return batching.step_batches(len(tokens), global_batch=self.config.batch_size, seed=seed,
                                 read=lambda idx: {'tokens': tokens[idx], 'mask': mask[idx]})

  def heldout_batch(self, mesh):
    """The held-out training examples (diagnostics), repeated to fill the mesh's batch."""
    rows = np.arange(sharding.eval_batch_size(self.config.eval.batch_size, mesh))
    rows %= len(self.heldout['tokens'])
    return sharding.global_batch_from_full({k: v[rows] for k, v in self.heldout.items()}, mesh)

  # The same GPT as the LM's (self.model, at data.seq_len).
  init_model = lm.LanguageModelTask.init_model
  logits = lm.LanguageModelTask.logits

  def loss(self, logits, batch):
    return answer_loss(logits, batch)

  def sweep(self, params, mesh, split: str | None = None) -> dict[int, dict[str, float]]:
    """EM, answer_logp and rank_acc at every eval length on `split` (default eval.split)."""
    tables = posenc.TableCache(self.pe, params['pe'])
    rows = sharding.eval_batch_size(self.config.eval.batch_size, mesh)
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    results = {}
    progress = metrics.SweepProgress(self.axis_label, self.metric)
    for length, inputs in self._sweep_inputs(split).items():
      examples, prompts, candidates, scored, table_shape = inputs
      width = max(map(len, prompts))  # One compiled decoder per length.
      table = tables(table_shape)
      # The rows that fill the last batch continue with zeros, which nothing reads.
      candidates = np.pad(candidates, ((0, -len(candidates) % rows), (0, 0), (0, 0)))
      outputs, logp = [], []
      for start in range(0, len(prompts), rows):
        chunk = prompts[start:start + rows]
        batch = sharding.global_batch_from_full(
            dict(left_pad(chunk, width, rows, self.tokenizer.eot_id),
                 candidates=candidates[start:start + rows]), mesh)
        tokens, _ = gpt.generate(self.model, params['model'], table, batch['tokens'],
                                 self.config.eval.max_new_tokens, batch['mask'])
        outputs += [decode_answer(self.tokenizer, row) for row in gather(tokens)[:len(chunk)]]
        token_logp = gpt.continuation_logprobs(self.model, params['model'], table,
                                               batch['tokens'], batch['candidates'], batch['mask'])
        logp.append(gather(token_logp)[:len(chunk)])
      candidate_scores = np.where(scored.any(-1), (np.concatenate(logp) * scored).sum(-1), -np.inf)
      results[length] = result = score(examples, outputs, candidate_scores)
      progress.done(length, result)
      logging.info('QA at %d tokens: EM %.3f, gold log-probability %.2f, rank accuracy %.2f; '
                   'first output %r, gold %r.', length, result['em'], result['answer_logp'],
                   result['rank_acc'], outputs[0], examples[0]['outputs'])
    return results

  def write_plots(self, workdir, results, suffix: str = '') -> None:
    """The length x depth heatmaps beside extrapolation.png (the trainer's hook)."""
    write_depth_heatmap(workdir, results, title=f'QA {self.config.pe.name}', suffix=suffix)


def _validate(config) -> None:
  data, ev = config.data, config.eval
  if not config.init_from:
    raise ValueError("config.init_from is empty: set it to the --workdir of an LM run to "
                     f"fine-tune (or to '{SCRATCH}' to start from random parameters).")
  if data.source not in SOURCES:
    raise ValueError(f"Unknown data.source '{data.source}'; use one of: {', '.join(SOURCES)}.")
  if data.source == 'jsonl' and not data.dir:
    raise ValueError("data.source='jsonl' needs data.dir, a directory with train.<L>.jsonl and "
                     f'{ev.split}.<L>.jsonl files (one QA example per line).')
  for field in ('data.answer_room', 'data.num_train', 'eval.num_examples', 'eval.max_new_tokens'):
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{field} must be a positive whole number, got {value!r}.')
  if data.source != 'jsonl':
    if data.filler not in retrieval.FILLERS:
      raise ValueError(f"Unknown data.filler '{data.filler}'; use one of: "
                       f"{', '.join(retrieval.FILLERS)}.")
    if data.probe_seed == ev.probe_seed:
      raise ValueError(f'data.probe_seed and eval.probe_seed are both {ev.probe_seed}, so the '
                       'model would train on its evaluation probes; use different seeds.')
    for field, length in _probe_lengths(config):
      if not retrieval.MIN_LENGTH <= length - data.answer_room <= retrieval.MAX_LENGTH:
        raise ValueError(f'{field} holds {length}: probes are {length} - data.answer_room='
                         f'{data.answer_room} prompt tokens, outside the generator\'s '
                         f'{retrieval.MIN_LENGTH}..{retrieval.MAX_LENGTH}.')


def _check_room(config, minimum: int, tokenizer: str) -> None:
  """Every probe length must leave the generator the prompt it needs with this tokenizer."""
  data = config.data
  for field, length in _probe_lengths(config):
    if length - data.answer_room < minimum:
      raise ValueError(f'{field} holds {length}, whose probes have {length - data.answer_room} '
                       f'prompt tokens after data.answer_room={data.answer_room}, fewer than the '
                       f'{minimum} {tokenizer} tokens the {data.source} generator needs; use '
                       f'at least {minimum + data.answer_room}.')


def _probe_lengths(config) -> list[tuple[str, int]]:
  """(field, length) of the training block and of every evaluation length."""
  return [('data.seq_len', config.data.seq_len)] + [('eval.lengths', n)
                                                    for n in config.eval.lengths]


def _corpus_dir(data):
  """The text corpus, needed for passkey filler and a locally trained BPE; None otherwise.
  With data.source='jsonl' data.dir holds the QA files, so it cannot be a corpus too."""
  if (data.source != 'passkey' or data.filler == 'repeat') and data.tokenizer != 'bpe':
    return None
  if data.source == 'jsonl' and data.name == 'wikitext':
    raise ValueError("data.source='jsonl' reads the QA files from data.dir, so the bpe "
                     "tokenizer cannot come from data.name='wikitext' (which reads data.dir "
                     'too); use the LM run\'s gpt2 tokenizer or an embedded corpus.')
  return text.corpus_dir(data.name, data.dir, data.cache_dir)


# The heatmaps: (metric, title, colour range; None = the data's own).
HEATMAPS = (('em', 'exact match', (0.0, 1.0)), ('rank_acc', 'rank accuracy@1 of 10', (0.0, 1.0)),
            ('answer_logp', 'gold answer log-probability (nats)', None))


def write_depth_heatmap(workdir, results: dict[int, dict[str, float]], title: str = '',
                        suffix: str = '') -> epath.Path | None:
  """WORKDIR/extrapolation_depth{suffix}.png: context length x needle depth decile, one
  panel per HEATMAPS metric the results have; nothing when no result has depth keys."""
  lengths = sorted(results)
  grids = []
  for metric, label, limits in HEATMAPS:
    grid = np.array([[results[n].get(f'{metric}_depth{d}', math.nan) for d in range(10)]
                     for n in lengths])
    if not np.isnan(grid).all():
      grids.append((grid, label, limits))
  if not grids:
    return None
  fig, axes = results_files.pyplot().subplots(
      len(grids), 1, squeeze=False, figsize=(7, len(grids) * (1.2 + 0.45 * len(lengths))))
  for ax, (grid, label, limits) in zip(axes[:, 0], grids):
    low, high = limits or (np.nanmin(grid), np.nanmax(grid))
    image = ax.imshow(grid, vmin=low, vmax=high, cmap='viridis', aspect='auto')
    middle = (low + high) / 2
    for (i, d), value in np.ndenumerate(grid):
      if not math.isnan(value):
        ax.text(d, i, f'{value:.2f}' if limits else f'{value:.1f}', ha='center', va='center',
                fontsize=7, color='white' if value < middle else 'black')
    ax.set_xticks(range(10), [f'{10 * d}-{10 * d + 10}' for d in range(10)], fontsize=7)
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set(xlabel='needle depth (% of the context before it)', ylabel='context length (tokens)',
           title=f'{title} {label}'.strip())
    fig.colorbar(image, ax=ax, fraction=0.04)
  fig.tight_layout()
  path = epath.Path(workdir) / f'extrapolation_depth{suffix}.png'
  results_files.save_figure(fig, path)
  return path
