"""Language modelling with a GPT: train at one length, report perplexity at longer ones.

Evaluation cuts eval.split into windows of every length in eval.lengths by eval.protocol
(`text.eval_windows`): 'non_overlapping' or 'sliding' (a stride of eval.stride_fraction x
the length); perplexity = exp(total NLL / tokens). Evaluation-time baselines from a trained
run, no retraining: `eval.rope_scaling` rescales a RoPE run's frequencies beyond the
training length ('pi' | 'ntk' | 'yarn', `posenc.with_rope_scaling`), and `eval.local_window`
= T limits every query to its last T keys (the local-attention control; 0 = all keys).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax

from seqpe_jax import choices, metrics, posenc, sharding
from seqpe_jax.data import text
from seqpe_jax.models import gpt, transformer
from seqpe_jax.tasks import base, common

PROTOCOLS = ('non_overlapping', 'sliding')


class LanguageModelTask(base.Task):
  """Everything the trainer needs for a GPT experiment."""
  metric = 'ppl'
  axis_label = 'evaluation length (tokens)'

  def __init__(self, config):
    self.config = config
    data = config.data
    host = gpt.host_spec(config.model.variant, data.seq_len, common.model_dtype(config))
    self.train_shape = host.train_shape
    self.pe, self.regularizers, self.shifts = common.build_pe(
        config, host, [(length,) for length in config.eval.lengths])
    # The evaluation-time baselines (module docstring), refused now where they do not apply.
    self.eval_pe = posenc.with_rope_scaling(self.pe, config.eval.rope_scaling)
    window = config.eval.local_window
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
      raise ValueError('eval.local_window must be 0 (every key) or a number of past keys, got '
                       f'{window!r}.')
    directory = text.corpus_dir(data.name, data.dir, data.cache_dir)
    self.tokenizer = text.load_tokenizer(data.tokenizer, directory, data.vocab_size, data.cache_dir)
    self.tokens = text.tokenize_splits(directory, self.tokenizer, data.cache_dir)
    text.Windows(self.tokens['train'], data.seq_len)  # One clear error if the corpus is short.
    if config.eval.protocol not in PROTOCOLS:
      raise choices.unknown('eval.protocol', config.eval.protocol, PROTOCOLS)
    if not 0 < config.eval.stride_fraction <= 1:
      raise ValueError('eval.stride_fraction must be in (0, 1], got '
                       f'{config.eval.stride_fraction}.')
    if config.eval.split not in text.SPLITS:
      raise choices.unknown('eval.split', config.eval.split, text.SPLITS)
    self.model = gpt_model(config, self.tokenizer.vocab_size, self.pe)
    # What the sweep runs: the same parameters under the evaluation-time baselines.
    self.eval_model = self.model.clone(attention=dataclasses.replace(
        self.model.attention, local_window=config.eval.local_window))

  @property
  def sweep_protocol(self) -> str:
    """How the sweep scores tokens, for extrapolation.json and the plot's title."""
    if self.config.eval.protocol == 'sliding':
      return f'sliding windows, stride {self.config.eval.stride_fraction:g} x length'
    return 'non-overlapping windows'

  def stride(self, length: int) -> int:
    if self.config.eval.protocol == 'sliding':
      return max(1, round(length * self.config.eval.stride_fraction))
    return length

  def init_model(self, key, features):
    tokens = jnp.zeros((1, self.config.data.seq_len), jnp.int32)
    return self.model.init(key, tokens, features)['params']

  def train_batches(self, seed: int):
    return text.train_batches(self.tokens['train'], length=self.config.data.seq_len,
                              global_batch=self.config.batch_size, seed=seed)

  def heldout_batch(self, mesh):
    """A fixed batch of validation windows at the training length (diagnostics)."""
    batch_size = sharding.eval_batch_size(self.config.eval.batch_size, mesh)
    return sharding.global_batch_from_full(next(text.eval_batches(
        self.tokens['valid'], length=self.config.data.seq_len, batch_size=batch_size)), mesh)

  def logits(self, model_params, batch, features, *, train: bool, rng=None, mutable=False,
             probes=None):
    """Logits [B, L, V]; with `mutable` (collection names) also the updated collections.
    Outside training the model attends as evaluation asks (eval.local_window)."""
    rngs = {'dropout': rng} if train else None
    model = self.model if train else self.eval_model
    return model.apply({'params': model_params}, batch['tokens'], features,
                       deterministic=not train, rngs=rngs, mutable=mutable, probes=probes)

  def loss(self, logits, batch):
    return mean_nll(logits, batch, 'train/ppl')

  def sweep(self, params, mesh, split: str | None = None) -> dict[int, dict[str, float]]:
    """Token perplexity on `split` (default eval.split) at every eval.lengths, on all devices."""
    tables = posenc.TableCache(self.eval_pe, params['pe'])
    tokens = self.tokens[split or self.config.eval.split]
    batch_size = sharding.eval_batch_size(self.config.eval.batch_size, mesh)
    results = {}
    progress = metrics.SweepProgress(self.axis_label, self.metric)
    for length in self.config.eval.lengths:
      features = tables((length,))
      nll, count = sharding.sum_per_batch(
          _eval_step(self, params['model'], features, sharding.global_batch_from_full(b, mesh))
          for b in text.eval_batches(tokens, length=length, batch_size=batch_size,
                                     stride=self.stride(length)))
      results[length] = {'ppl': math.exp(nll / count), 'nll': float(nll / count),
                         'tokens': float(count)}
      progress.done(length, results[length])
    return results


def gpt_model(config, vocab_size: int, pe) -> gpt.GPT:
  """The GPT of config.model over `vocab_size` token ids."""
  m = config.model
  attention = transformer.AttentionOptions(m.attention_kernel, m.attention_block,
                                           m.attention_dropout)
  return gpt.GPT(vocab_size, pe=pe, dropout=m.dropout, attention=attention,
                 dtype=common.model_dtype(config), **gpt.parse_variant(m.variant))


def next_token_nll(logits_BLV, batch):
  """(sum of -log p(token_t | tokens_<t), number of predicted tokens) over the batch; a
  target counts where `batch['mask']` (if present) is true."""
  targets = batch['tokens'][:, 1:]
  nll = optax.softmax_cross_entropy_with_integer_labels(
      logits_BLV[:, :-1].astype(jnp.float32), targets)
  weights = (batch['mask'][:, 1:] if 'mask' in batch else jnp.ones_like(targets)).astype(
      jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights)


def mean_nll(logits_BLV, batch, ppl_name: str):
  """The mean cross-entropy of the counted targets, and {ppl_name: its perplexity}."""
  nll_sum, count = next_token_nll(logits_BLV, batch)
  loss = nll_sum / jnp.maximum(count, 1.0)
  return loss, {ppl_name: jnp.exp(loss)}


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(task, model_params, features, batch):
  return next_token_nll(task.logits(model_params, batch, features, train=False), batch)
