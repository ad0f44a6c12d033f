"""The task contract: everything the trainer and the evaluator may ask of a task.

The trainer knows tasks, not PEs or models: a task owns its data, its model with the PE
hooks, its loss and its evaluation sweep, and the PE's training-time part (features,
regulariser loss, shift pool, gradient balancing) through the methods below, whose
defaults serve every task built with `tasks.common.build_pe`. A new experiment family
subclasses `Task` (its abstract methods must be written; the hooks have defaults) and
registers itself in `tasks.TASKS`.
"""

import abc
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from seqpe_jax.posenc import inject
from seqpe_jax.posenc import regularizers as regularizers_lib

Batch = dict[str, jax.Array]
Results = dict[int, dict[str, float]]  # Evaluation length/resolution -> metric name -> value.


class Task(Protocol):
  """What a task provides. Attributes set by __init__: `config`, `pe` (the position
  encoding, `posenc.PositionEncoding`), `regularizers` (SeqPE's, or None) and
  `train_shape` (the position grid of a training example)."""

  metric: ClassVar[str]  # The sweep's headline metric: 'accuracy', 'ppl', 'em'.
  axis_label: ClassVar[str]  # What the sweep varies, for plots.
  sweep_protocol: ClassVar[str] = ''  # How the sweep scores, for extrapolation.json.

  config: Any
  pe: Any
  regularizers: regularizers_lib.Regularizers | None
  train_shape: tuple[int, ...]

  # ------------------------------------------------------------------ Data and model.
  @abc.abstractmethod
  def train_batches(self, seed: int):
    """A grain MapDataset of global training batches, one per step, indexable by step."""

  @abc.abstractmethod
  def heldout_batch(self, mesh) -> Batch:
    """A fixed sharded batch for the diagnostics."""

  @abc.abstractmethod
  def init_model(self, key: jax.Array, features) -> Any:
    """Fresh host-model parameters for PE `features` of the training shape."""

  @abc.abstractmethod
  def logits(self, model_params, batch: Batch, features, *, train: bool, rng=None,
             mutable=False):
    """The host model's output on `batch` with PE `features`."""

  @abc.abstractmethod
  def loss(self, logits, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar task loss, scalars to log)."""

  @abc.abstractmethod
  def sweep(self, params, mesh, split: str | None = None) -> Results:
    """The evaluation sweep on `split` (default: the config's eval.split)."""

  # ------------------------------------------------------------------ Optional hooks.
  def initial_params(self, abstract_params) -> Any | None:
    """Parameters to start from instead of fresh ones (fine-tuning); None: fresh."""
    del abstract_params
    return None

  def write_plots(self, workdir, results: Results, suffix: str = '') -> None:
    """Task-specific figures beside extrapolation{suffix}.png."""
    del workdir, results, suffix

  # ------------------------------------------------------------------ The PE in training.
  def shift_pool(self, key: jax.Array) -> jax.Array:
    """The run's fixed pool of random shifts; a placeholder for PEs without them."""
    if self.regularizers is None:
      return jnp.zeros((1, len(self.train_shape)), jnp.int32)
    return self.regularizers.shift_pool(key)

  def host_training_loss(self, model_params, batch: Batch, features, rng: jax.Array):
    """The host's training loss: the task's plus what the PE's hooks report from inside
    the host (`inject.PE_LOSSES`; pe.attention). Returns (their sum, (task loss, hooks'
    weighted loss, task scalars, hook scalars))."""
    logits, reported = self.logits(model_params, batch, features, train=True, rng=rng,
                                   mutable=[inject.PE_LOSSES])
    loss, task_scalars = self.loss(logits, batch)
    hook_loss, hook_scalars = inject.host_pe_losses(reported)
    return loss + hook_loss, (loss, hook_loss, task_scalars, hook_scalars)

  def pe_training_features(self, pe_params, key: jax.Array, step: jax.Array,
                           shift_pool: jax.Array):
    """(features for the host, scheduled regulariser loss, scalars) of one training step."""
    return regularizers_lib.training_features(self.pe, self.regularizers, pe_params, key,
                                              step, shift_pool)

  @property
  def pe_gradient_balance(self) -> float | None:
    """Target of the encoder's regulariser/task gradient-norm balance, or None (off)."""
    reg = self.regularizers
    return reg.balance_target if reg is not None and reg.balance == 'grad_norm' else None
