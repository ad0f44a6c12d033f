"""The sweep's files: the step it swept, and plots whose axes do not magnify noise."""

import json

import pytest

from seqpe_jax import results


def test_an_accuracy_axis_starts_at_0_and_a_finished_sweep_is_read_back_for_its_step(tmp_path):
  sweep = {8: {'accuracy': 0.2039}, 16: {'accuracy': 0.2066}}
  results.write_extrapolation(tmp_path, sweep, 'accuracy', 'resolution (px)', step=6)
  assert json.loads((tmp_path / 'extrapolation.json').read_text())['step'] == 6
  assert results.read_extrapolation(tmp_path, step=6) == sweep
  assert results.read_extrapolation(tmp_path, step=8) is None  # Swept another checkpoint.
  plt = results.pyplot()
  fig, ax = plt.subplots()
  ax.plot([8, 16], [0.2039, 0.2066])
  results.format_axes(ax, [8, 16], 'accuracy')
  assert ax.get_ylim() == pytest.approx((0, 1.2 * 0.2066))  # Not 0.2039-0.2066.
  ax.plot([8, 16], [0.9, 0.95])
  results.format_axes(ax, [8, 16], 'accuracy')
  assert ax.get_ylim() == (0, 1.0)
  plt.close(fig)
