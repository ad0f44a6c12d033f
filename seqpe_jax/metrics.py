"""Metric writing: clu (TensorBoard + logs) plus WORKDIR/metrics.jsonl on process 0."""

import json

import jax
from clu import metric_writers
from etils import epath


class MetricWriter:
  """Writes scalars to clu's default writer and appends them to metrics.jsonl.

  `resumed_at`: the step the run restarts from. Rows after it were written by the part of
  the run that is about to be redone (after a SIGKILL), so they are dropped: each step
  appears once in metrics.jsonl.
  """

  def __init__(self, workdir, *, resumed_at: int = 0):
    self._is_main = jax.process_index() == 0
    self._clu = metric_writers.create_default_writer(str(workdir),
                                                     just_logging=not self._is_main)
    self._jsonl = epath.Path(workdir) / 'metrics.jsonl' if self._is_main else None
    if self._jsonl is not None and self._jsonl.exists():
      kept = [line for line in self._jsonl.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= resumed_at]
      self._jsonl.write_text(''.join(f'{line}\n' for line in kept))

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

