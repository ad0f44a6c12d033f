"""Metric writing: clu (TensorBoard + logs) plus WORKDIR/metrics.jsonl on process 0."""

import json
import math
import pathlib

import jax
from clu import metric_writers


class MetricWriter:
  """Writes scalars to clu's default writer and appends them to metrics.jsonl."""

  def __init__(self, workdir: str):
    self._is_main = jax.process_index() == 0
    self._clu = metric_writers.create_default_writer(workdir, just_logging=not self._is_main)
    self._jsonl = pathlib.Path(workdir) / 'metrics.jsonl' if self._is_main else None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self._clu.write_scalars(step, scalars)
    if self._jsonl is not None:
      with self._jsonl.open('a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')

  def write_hparams(self, hparams: dict) -> None:
    self._clu.write_hparams(hparams)

  def close(self) -> None:
    self._clu.flush()
    self._clu.close()


def check_finite(step: int, scalars: dict[str, float]) -> None:
  """Stops the run on a NaN/Inf loss, naming the step and the offending metric."""
  for name, value in scalars.items():
    if 'loss' in name and not math.isfinite(float(value)):
      raise FloatingPointError(f'{name} is {value} at step {step}; lower optimizer.lr or check '
                               'the data (the last checkpoint is intact).')
