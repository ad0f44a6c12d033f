"""GPT-style decoder (pre-LN, tied embeddings) and greedy KV-cache generation.

Positions enter only through the PE's hooks; the KV cache keeps each hook's output per key,
so decoding sees every cached key's true position (docs/library.md). Left-padded prompts
decode together, each example's positions counting from its first real token.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import posenc
from seqpe_jax.models import transformer

# width, depth, heads, MLP width. `nano` and `tiny` are CPU sizes for tests and defaults.
SIZES = {
    'nano': (64, 2, 2, 256),
    'tiny': (128, 4, 4, 512),
    'mini': (256, 6, 8, 1024),
    'small': (768, 12, 12, 3072),  # GPT-2 small.
    'medium': (1024, 24, 16, 4096),
}
# Token embeddings start at this standard deviation (GPT-2's); fixed PE tables are added at it.
EMBED_STD = 0.02


def parse_variant(variant: str) -> dict[str, int]:
  """'small' -> width, depth, heads, MLP width."""
  if variant not in SIZES:
    raise ValueError(f"Unknown GPT variant '{variant}'; use one of: {', '.join(SIZES)}.")
  width, depth, heads, mlp = SIZES[variant]
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp)


def host_spec(variant: str, length: int, dtype=jnp.float32) -> posenc.HostSpec:
  """What the PE needs to know about a GPT variant trained on `length` tokens."""
  v = parse_variant(variant)
  return posenc.HostSpec(v['width'], v['num_heads'], (length,), num_prefix=0, causal=True,
                         dtype=dtype, input_scale=EMBED_STD)


class GPT(nn.Module):
  """Tokens [B, L] + PE features for positions 0..L-1 -> next-token logits [B, L, V], with
  HF GPT-2's initialisation; `perturb('embeddings')` lets tests take gradients there."""
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  pe: posenc.PositionalEncoding
  dropout: float = 0.0
  attention: transformer.AttentionOptions = transformer.AttentionOptions()
  ln_eps: float = 1e-5
  decode: bool = False
  dtype: Any = jnp.float32  # Of activations and matmuls; the logits are float32.

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, features, *, deterministic: bool = True,
               key_mask_BL: jax.Array | None = None, probes=None):
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(EMBED_STD),
                     dtype=self.dtype, name='embed')
    x = self.perturb('embeddings', embed(tokens_BL))
    x = transformer.Transformer(
        self.depth, self.num_heads, self.mlp_dim, self.pe, causal=True, dropout=self.dropout,
        ln_eps=self.ln_eps, attention=self.attention, decode=self.decode, dtype=self.dtype,
        out_init=nn.initializers.normal(0.02 / math.sqrt(2 * self.depth)), name='decoder')(
            x, features, deterministic=deterministic, key_mask_BL=key_mask_BL, probes=probes)
    return embed.attend(x).astype(jnp.float32)


def slice_features(features, start, size: int):
  """Positions start..start+size-1 of a feature table (every leaf is [W, N, ...])."""
  return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=1), features)


def feature_length(features) -> int:
  leaves = jax.tree.leaves(features)
  return leaves[0].shape[1] if leaves else 0


def shifted_features(features, shift_B: jax.Array, length: int):
  """Per-example rows [B, length, ...] of a one-window table: example b's column t reads row
  t - shift_b, so its positions start at 0 on its first real token (padding reads row 0)."""
  if not jax.tree.leaves(features):
    return features
  if jax.tree.leaves(features)[0].shape[0] != 1:
    raise ValueError('Left-padded decoding takes a one-window PE table (positions from 0).')
  rows_BN = jnp.clip(jnp.arange(length)[None] - shift_B[:, None], 0, feature_length(features) - 1)
  return jax.tree.map(lambda x: x[0][rows_BN], features)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens'))
def generate(model: GPT, params, features, prompt_BT: jax.Array, max_new_tokens: int,
             prompt_mask_BT: jax.Array | None = None):
  """Greedy decoding with a KV cache: tokens [B, max_new_tokens] and the logits each was
  chosen from. `features`: the PE table of positions 0..N-1, N >= T + max_new_tokens - 1 (e.g.
  from `posenc.TableCache`); `prompt_mask_BT` (true on real tokens): left-padded prompts."""
  decoder, features, cache, mask = _decoding(model, features, prompt_BT, prompt_mask_BT,
                                             max_new_tokens)
  cache, logits = _run(decoder, params, cache, features, prompt_BT, 0, prompt_mask_BT)
  token = jnp.argmax(logits, -1).astype(jnp.int32)

  def step(carry, t):
    cache, token = carry
    cache, new_logits = _run(decoder, params, cache, features, token[:, None], t, mask(1))
    new_token = jnp.argmax(new_logits, -1).astype(jnp.int32)
    return (cache, new_token), (new_token, new_logits)

  _, (tokens, all_logits) = jax.lax.scan(
      step, (cache, token), prompt_BT.shape[1] + jnp.arange(max_new_tokens - 1))
  tokens = jnp.concatenate([token[None], tokens], axis=0).T
  all_logits = jnp.concatenate([logits[None], all_logits], axis=0).transpose(1, 0, 2)
  return tokens, all_logits


@functools.partial(jax.jit, static_argnames=('model',))
def continuation_logprobs(model: GPT, params, features, prompt_BT: jax.Array,
                          continuations_BCK: jax.Array, prompt_mask_BT: jax.Array | None = None):
  """Teacher-forced log p(continuation token k | prompt, its tokens before k) [B, C, K]; each
  prompt is read once into the KV cache its C continuations share (a right-padding token
  only affects the ones after it). `features` and `prompt_mask_BT` as in `generate`."""
  batch, prompt_len = prompt_BT.shape
  _, num, width = continuations_BCK.shape
  decoder, features, cache, _ = _decoding(model, features, prompt_BT, prompt_mask_BT, width)
  cache, logits = _run(decoder, params, cache, features, prompt_BT, 0, prompt_mask_BT)
  first = jnp.take_along_axis(jax.nn.log_softmax(logits)[:, None, :],
                              continuations_BCK[..., :1], axis=-1)[..., 0]  # [B, C]
  # The cache and the per-example PE rows, once per continuation.
  repeat = lambda x: jnp.repeat(x, num, axis=0) if x.ndim and x.shape[0] == batch else x
  cache = jax.tree.map(repeat, cache)
  if prompt_mask_BT is not None:
    features = jax.tree.map(repeat, features)
  tokens_NK = continuations_BCK.reshape(batch * num, width)
  new_mask = None if prompt_mask_BT is None else jnp.ones((batch * num, 1), bool)

  def step(cache, k):
    cache, logits = _run(decoder, params, cache, features, tokens_NK[:, k, None],
                         prompt_len + k, new_mask)
    target = tokens_NK[:, k + 1, None]
    return cache, jnp.take_along_axis(jax.nn.log_softmax(logits), target, axis=-1)[:, 0]

  _, rest = jax.lax.scan(step, cache, jnp.arange(width - 1))  # [K - 1, B * C]
  return jnp.concatenate([first[..., None], rest.T.reshape(batch, num, width - 1)], axis=-1)


def _decoding(model: GPT, features, prompt_BT, prompt_mask_BT, new_tokens: int):
  """(decoder, features, empty cache, mask(n)) for cached decoding of `new_tokens` after the
  prompts: the PE rows of each left-padded example start at its first real token, and
  mask(n) marks n new tokens as real (None without a prompt mask)."""
  batch, prompt_len = prompt_BT.shape
  needed = prompt_len + new_tokens - 1
  available = feature_length(features)
  if features and available < needed:
    raise ValueError(f'The PE table covers {available} positions; a prompt of {prompt_len} '
                     f'plus {new_tokens} new tokens needs {needed}.')
  padded = prompt_mask_BT is not None
  if padded:  # One window per example, shifted by its padding.
    shift_B = prompt_len - jnp.sum(prompt_mask_BT, axis=-1, dtype=jnp.int32)
    features = shifted_features(features, shift_B, needed)
  # Every new token is real; the prompt's mask, kept in the cache, hides the padding.
  mask = lambda n: jnp.ones((batch, n), bool) if padded else None
  decoder = model.clone(decode=True)
  shapes = jax.eval_shape(lambda: decoder.init(  # The cache covers every position.
      jax.random.key(0), jnp.zeros((batch, needed), jnp.int32),
      slice_features(features, 0, needed), key_mask_BL=mask(needed)))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
  return decoder, features, cache, mask


def _run(decoder, params, cache, features, tokens, start, key_mask):
  """Feeds `tokens` at positions start.. through the cached decoder: (cache, last logits)."""
  logits, updated = decoder.apply(
      {'params': params, 'cache': cache}, tokens,
      slice_features(features, start, tokens.shape[1]), key_mask_BL=key_mask, mutable=['cache'])
  return updated['cache'], logits[:, -1].astype(jnp.float32)
