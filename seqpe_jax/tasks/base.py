"""The task contract: everything the trainer and the evaluator may ask of a task.

The trainer knows tasks, not PEs or models: a task owns its data, model, loss and sweep, and
the PE's training-time part through hooks whose defaults serve every task built with
`tasks.common.build_pe`. A new family subclasses `Task` and registers in `tasks.TASKS`.
"""

import abc
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from seqpe_jax.models import attention, transformer
from seqpe_jax.posenc import regularizers as regularizers_lib
from seqpe_jax.posenc import shifts as shifts_lib

Batch = dict[str, jax.Array]
Results = dict[int, dict[str, float]]  # Evaluation length/resolution -> metric name -> value.


class Task(Protocol):
  """What a task provides; __init__ sets the instance attributes below."""

  metric: ClassVar[str]  # The sweep's headline metric: 'accuracy', 'ppl', 'em'.
  axis_label: ClassVar[str]  # What the sweep varies, for plots.
  sweep_protocol: ClassVar[str] = ''  # How the sweep scores, for extrapolation.json.

  config: Any
  pe: Any  # The position encoding, a `posenc.PositionalEncoding`.
  regularizers: regularizers_lib.Regularizers | None  # SeqPE's.
  shifts: shifts_lib.Shifts | None = None  # Shifted windows of a PE without regularisers.
  train_shape: tuple[int, ...]  # The position grid of a training example.

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
             mutable=False, probes=None):
    """The host model's output on `batch` with PE `features` (and the `mutable` collections)."""

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
    if self.regularizers is not None:
      return self.regularizers.shift_pool(key)
    if self.shifts is not None:
      return self.shifts.pool(key)
    return jnp.zeros((1, len(self.train_shape)), jnp.int32)

  def training_outputs(self, model_params, batch: Batch, features, probes, rng: jax.Array):
    """A training forward: (logits, {probe name: the position-only attention logits of
    every layer among its positions, [layers, W, H, L, L]}; {} without probes)."""
    if not probes:
      return self.logits(model_params, batch, features, train=True, rng=rng), {}
    logits, collections = self.logits(model_params, batch, features, train=True, rng=rng,
                                      probes=probes, mutable=[attention.PROBE_LOGITS])
    return logits, transformer.stacked_probe_logits(collections)

  def pe_training_step(self, pe_params, key: jax.Array, step: jax.Array, shift_pool: jax.Array):
    """(host features, probes, regulariser terms, scalars) of one training step."""
    return regularizers_lib.training_step(self.pe, self.regularizers, pe_params, key, step,
                                          shift_pool, self.shifts)

  def pe_regularizer(self, terms, probe_logits):
    """(regulariser loss, scalars) from `pe_training_step`'s terms and the probe logits."""
    return regularizers_lib.regularizer_loss(self.regularizers, terms, probe_logits)

  @property
  def pe_balances_gradients(self) -> bool:
    """Whether the encoder's regulariser gradient is capped at the task's norm."""
    return self.regularizers is not None and self.regularizers.balance == 'grad_norm'
