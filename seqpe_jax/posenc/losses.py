"""SeqPE's regularisers: the distance-contrastive loss, the OOD distillation loss and the
logit distillation loss (pe.logit_distill)."""

import jax
import jax.numpy as jnp


def contrastive_loss(pivot_Bd: jax.Array, cand_BKd: jax.Array, labels_B: jax.Array,
                     valid_BK: jax.Array) -> jax.Array:
  """Mean cross-entropy of the nearest candidate under raw dot-product logits, so the PE's
  norm acts as the temperature; masked candidates get no probability."""
  logits_BK = jnp.einsum('bd,bkd->bk', pivot_Bd, cand_BKd).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(jnp.where(valid_BK, logits_BK, -jnp.inf), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels_B[:, None], axis=-1))


def _row_log_softmax(x_GnD: jax.Array, num_heads: int) -> jax.Array:
  """Per head, log-softmax over rows of the within-set dot products: [G, H, n, n]."""
  x = x_GnD.reshape(*x_GnD.shape[:-1], num_heads, -1).astype(jnp.float32)
  return jax.nn.log_softmax(jnp.einsum('gihd,gjhd->ghij', x, x), axis=-1)


def ood_distillation_loss(teacher_GnD: jax.Array, student_GnD: jax.Array, *,
                          num_heads: int) -> jax.Array:
  """Symmetric (Jeffreys) KL between the teacher's (detached) and the students' per-head
  row-softmax similarities, averaged over all G*H*n*n entries as the reference's
  `kl_div(reduction='mean')` does (its weight 0.1 was tuned against this scaling)."""
  a_t = jax.lax.stop_gradient(_row_log_softmax(teacher_GnD, num_heads))
  a_s = _row_log_softmax(student_GnD, num_heads)
  return jnp.mean(jnp.exp(a_t) * (a_t - a_s) + jnp.exp(a_s) * (a_s - a_t))


def logit_distill_loss(teacher_HNN: jax.Array, student_SHKK: jax.Array,
                       far_log_weight_SF: jax.Array, *, causal: bool) -> jax.Array:
  """KL(teacher || student) of the attention the PE alone gives over the training window
  (teacher_HNN, detached) and over moved copies of it (student_SHKK: each copy's N positions,
  then its F far keys, far key f counted exp(far_log_weight_SF[f]) times), averaged over
  copies, heads and rows (docs/method.md §9). `causal`: a causal mask, only the second half
  of the rows compared (the first see too few keys); far keys are always visible."""
  n = teacher_HNN.shape[-1]
  rows = slice(n // 2, n) if causal else slice(0, n)
  visible = (jnp.tril(jnp.ones((n, n), bool)) if causal else jnp.ones((n, n), bool))[rows]
  teacher = jax.lax.stop_gradient(teacher_HNN[:, rows].astype(jnp.float32))
  hidden = -1e9  # Finite, so masked entries carry no NaN into the gradient.
  log_p = jax.nn.log_softmax(jnp.where(visible, teacher, hidden), axis=-1)
  student = student_SHKK[:, :, rows].astype(jnp.float32)
  near = jnp.where(visible, student[..., :n], hidden)
  far = student[..., n:] + far_log_weight_SF[:, None, None, :]
  log_q = jax.nn.log_softmax(jnp.concatenate([near, far], axis=-1), axis=-1)[..., :n]
  kl = jnp.where(visible, jnp.exp(log_p) * (log_p - log_q), 0.0).sum(-1)  # [S, H, rows]
  return jnp.mean(kl)
