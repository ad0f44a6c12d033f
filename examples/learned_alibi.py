"""An example of adding a position encoding: ALiBi with each head's slope learned.

ALiBi adds m_h * j to the attention logit of key position j (under a causal mask, the
same softmax as -m_h (i - j)), with fixed geometric slopes m_h. Here each slope is a
parameter of the attention layer, initialised at ALiBi's value and kept positive as
exp(log m_h). Everything else is reused: the source gives each key's position once per
set of positions, and the bias depends on key positions only, so KV-cache decoding and
any evaluation length work unchanged.

Importing this module registers it as `config.pe.name = 'learned_alibi'`
(examples/lm_learned_alibi.py does; the README's "Add a position encoding" walks through it).
"""

import flax.linen as nn
import jax.numpy as jnp

from seqpe_jax import posenc
from seqpe_jax.posenc import baselines, inject, sources


class LearnedSlopesBias(inject.LayerHook):
  """The layer hook: (q, k, PE state) -> (q, k, logit bias), one per attention layer."""

  @nn.compact
  def __call__(self, q_BLHD, k_BLHD, state):
    batch, _, heads, head_dim = q_BLHD.shape
    log_slopes = self.param(
        'log_slopes', lambda key, n: jnp.log(jnp.asarray(baselines.alibi_slopes(n))), heads)
    key_pos_B1L = inject.per_example(state['key_pos'], batch)[:, None, None, :]
    bias_BH1L = key_pos_B1L * jnp.exp(log_slopes)[:, None, None] * head_dim**-0.5
    return q_BLHD, k_BLHD, bias_BH1L


def source(cfg, host: posenc.HostSpec, method: str):
  """The source: each key's flat position (no parameters of its own)."""
  del cfg, method
  if not host.causal:
    raise ValueError('learned_alibi biases key positions, which is a relative bias only under '
                     'a causal mask; use it with the GPT.')
  return sources.KeyPositionSource(host.num_prefix)


def hooks(cfg, host: posenc.HostSpec, method: str):
  """The host-side modules: no model-level work, the learned bias in every layer."""
  del cfg, host, method
  return inject.ModelHook, LearnedSlopesBias


KIND = posenc.register('learned_alibi', posenc.PEKind(methods=('bias',), source=source,
                                                        hooks=hooks))
