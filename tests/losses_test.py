"""Losses against direct NumPy computations; gradients of the distillation loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpe_jax.posenc import losses


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_contrastive_loss_equals_numpy():
  rng = np.random.default_rng(0)
  pivots, cands = rng.normal(size=(5, 8)), rng.normal(size=(5, 7, 8))
  labels = rng.integers(0, 7, size=5)
  valid = np.ones((5, 7), bool)
  valid[1, 3] = valid[4, 0] = False
  labels[1] = 2
  total = 0.0
  for b in range(5):
    logits = cands[b] @ pivots[b]
    logits = np.where(valid[b], logits, -np.inf)
    total -= log_softmax(logits)[labels[b]]
  expected = total / 5
  got = losses.contrastive_loss(jnp.asarray(pivots), jnp.asarray(cands), jnp.asarray(labels),
                                jnp.asarray(valid))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def numpy_ood(teacher, student, heads):
  """The method doc's formula, entry by entry, divided by G * H * n^2."""
  g, n, d = teacher.shape
  hd = d // heads
  total = 0.0
  for gi in range(g):
    for h in range(heads):
      t, s = teacher[gi, :, h * hd:(h + 1) * hd], student[gi, :, h * hd:(h + 1) * hd]
      a_t, a_s = log_softmax(t @ t.T), log_softmax(s @ s.T)
      total += np.sum(np.exp(a_t) * (a_t - a_s) + np.exp(a_s) * (a_s - a_t))
  return total / (g * heads * n * n)


def test_ood_loss_equals_numpy_with_mean_over_every_entry():
  rng = np.random.default_rng(1)
  teacher, student = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))  # 2 groups, 3 pos.
  got = losses.ood_distillation_loss(jnp.asarray(teacher), jnp.asarray(student), num_heads=2)
  np.testing.assert_allclose(got, numpy_ood(teacher, student, 2), rtol=1e-5)


def test_ood_loss_is_zero_for_identical_structure():
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  assert float(losses.ood_distillation_loss(x, x, num_heads=2)) == pytest.approx(0, abs=1e-6)


def test_teacher_gets_no_gradient_from_distillation():
  teacher = jax.random.normal(jax.random.key(1), (2, 3, 4))
  student = jax.random.normal(jax.random.key(2), (2, 3, 4))
  grad_t, grad_s = jax.grad(lambda t, s: losses.ood_distillation_loss(t, s, num_heads=2),
                            argnums=(0, 1))(teacher, student)
  np.testing.assert_array_equal(grad_t, 0)
  assert float(jnp.abs(grad_s).max()) > 1e-4

