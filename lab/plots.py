"""A study's plots: the metric against length or resolution."""

import pathlib

import matplotlib
import numpy as np

from seqpe_jax import results as results_files

matplotlib.use('Agg')  # Files only; no display on training hosts.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def _colour_cycle(ax, count: int) -> None:
  if count > 10:  # Matplotlib's default cycle repeats after 10 lines.
    ax.set_prop_cycle(color=plt.get_cmap('tab20').colors)


def plot_metric(path: pathlib.Path, summary: dict, metric: str, axis: str, title: str,
                columns: list[int]) -> None:
  """Mean per run against length/resolution (`columns`, the x values of every run), with a
  mean ± std band where seeds > 1; `summary` as study_report.summarize gives it."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  _colour_cycle(ax, len(summary))
  for name, by_x in summary.items():
    xs = sorted(by_x)
    mean = np.array([by_x[x][0] for x in xs])
    line, = ax.plot(xs, mean, marker='o', label=name)
    if all(by_x[x][1] is not None for x in xs):
      std = np.array([by_x[x][1] for x in xs])
      ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set(xlabel=axis, ylabel=metric, title=title)
  results_files.format_axes(ax, columns, metric)
  ax.legend(fontsize='small', ncol=2 if len(summary) > 8 else 1)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)

