"""Metric writing on process 0: TensorBoard event files, WORKDIR/metrics.jsonl, a progress line.

TensorBoard files come from tensorboardX, which needs no TensorFlow (some training hosts,
e.g. aarch64, have no wheel of it).
"""

import json
import math
import time

import jax
import tensorboardX
from etils import epath
from tensorboardX import summary as tb_summary


class MetricWriter:
  """Writes scalars to TensorBoard and appends them to metrics.jsonl (process 0 only). Rows
  after `resumed_at` (a run killed since) are dropped, so each step appears once."""

  def __init__(self, workdir, *, resumed_at: int = 0):
    self._is_main = jax.process_index() == 0
    self._tb = tensorboardX.SummaryWriter(str(workdir)) if self._is_main else None
    self._jsonl = epath.Path(workdir) / 'metrics.jsonl' if self._is_main else None
    if self._jsonl is not None and self._jsonl.exists():
      kept = [line for line in self._jsonl.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= resumed_at]
      self._jsonl.write_text(''.join(f'{line}\n' for line in kept))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._is_main:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    with self._jsonl.open('a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')

  def write_config(self, config: dict) -> None:
    """The run's config, once: as TensorBoard hparams (HParams tab) and JSON text (Text tab)."""
    if not self._is_main:
      return
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten_config(config).items()}
    file_writer = self._tb._get_file_writer()  # pylint: disable=protected-access
    for proto in tb_summary.hparams(flat, {}):
      file_writer.add_summary(proto)
    self._tb.add_text('config', f'```\n{json.dumps(config, indent=2, default=str)}\n```', 0)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def flatten_config(tree: dict, prefix: str = '') -> dict:
  """{'model': {'name': 'gpt'}} -> {'model.name': 'gpt'}."""
  flat = {}
  for key, value in tree.items():
    flat.update(flatten_config(value, f'{prefix}{key}.') if isinstance(value, dict)
                else {f'{prefix}{key}': value})
  return flat


class Progress:
  """One console line per log step: step, loss, steps/s and time left at the last rate."""

  def __init__(self, total_steps: int, start_step: int, *, clock=time.perf_counter):
    self._total, self._clock = total_steps, clock
    self._last = (start_step, clock())
    self._rate = None

  def update(self, step: int) -> float:
    """Records that `step` has finished; returns steps/s since the previous update."""
    last_step, last_time = self._last
    now = self._clock()
    self._rate = (step - last_step) / max(now - last_time, 1e-9)
    self._last = (step, now)
    return self._rate

  def line(self, step: int, scalars: dict[str, float]) -> str:
    left = (self._total - step) / self._rate if self._rate else math.nan
    loss = scalars.get('train/loss', math.nan)
    return (f'step {step}/{self._total}  loss {loss:.4f}  {self._rate or 0:.2f} steps/s  '
            f'{format_duration(left)} left')


class SweepProgress:
  """One console line per evaluated resolution or length, with its value and time."""

  def __init__(self, axis_label: str, metric: str, *, clock=time.perf_counter):
    self._axis, self._metric, self._clock = axis_label.split(' (')[0], metric, clock
    self._last = clock()

  def done(self, x: int, values: dict[str, float]) -> None:
    now = self._clock()
    say(f'  {self._axis} {x}: {self._metric} {values[self._metric]:.4g} ({now - self._last:.1f} s)')
    self._last = now


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def say(message: str) -> None:
  """A line on the console of process 0 (the others would repeat it once per host)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def summary_line(results: dict[int, dict[str, float]], metric: str) -> str:
  """'ppl: 128 290.4 | 256 301.2' -- the sweep's headline metric per length/resolution."""
  return f'{metric}: ' + ' | '.join(f'{x} {values[metric]:.4g}'
                                   for x, values in sorted(results.items()))
