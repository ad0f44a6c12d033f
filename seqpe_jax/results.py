"""A sweep's results as files: metrics.jsonl keys, extrapolation.json and its plot.

Written by the trainer at the end of a run and by `seqpe_jax.evaluate` later; matplotlib
is imported only when a plot is drawn, so importing the trainer stays light.
"""

import json

from etils import epath

PREFIX = {'accuracy': 'res', 'ppl': 'len', 'em': 'len'}


def flatten(results: dict[int, dict[str, float]], metric: str) -> dict[str, float]:
  """{56: {'accuracy': .9}} -> {'eval/res56/accuracy': .9} (the metrics.jsonl contract)."""
  prefix = PREFIX.get(metric, 'at')
  return {f'eval/{prefix}{x}/{name}': v for x, values in results.items()
          for name, v in values.items()}


def write_extrapolation(workdir, results: dict[int, dict[str, float]], metric: str,
                        axis_label: str, title: str = '', suffix: str = '', protocol: str = '',
                        overrides: dict | None = None, step: int | None = None) -> None:
  """WORKDIR/extrapolation{suffix}.json and .png; the eval `overrides` and `step` in the JSON."""
  workdir = epath.Path(workdir)
  table = {str(x): values for x, values in sorted(results.items())}
  record = {'metric': metric, 'axis': axis_label, 'protocol': protocol, 'results': table}
  if step is not None:
    record['step'] = step
  if overrides:
    record['overrides'] = overrides
  (workdir / f'extrapolation{suffix}.json').write_text(json.dumps(record, indent=2))
  xs = sorted(results)
  fig, ax = pyplot().subplots(figsize=(5, 3.5))
  ax.plot(xs, [results[x][metric] for x in xs], marker='o')
  ax.set(xlabel=axis_label, ylabel=metric)
  ax.set_title(f'{title}\n{protocol}' if protocol else title, fontsize=9)
  format_axes(ax, xs, metric)
  fig.tight_layout()
  save_figure(fig, workdir / f'extrapolation{suffix}.png')


def read_extrapolation(workdir, step: int) -> dict[int, dict[str, float]] | None:
  """The sweep WORKDIR/extrapolation.json records, if it swept the checkpoint of `step`."""
  path = epath.Path(workdir) / 'extrapolation.json'
  record = json.loads(path.read_text()) if path.exists() else {}
  if record.get('step') != step:
    return None
  return {int(x): values for x, values in record['results'].items()}


# Metrics that are fractions: their axes start at 0, so noise does not look like a trend.
FRACTIONS = ('accuracy', 'em')


def format_axes(ax, xs, metric: str) -> None:
  """Perplexity on log axes (lengths double), accuracies from 0, plain tick labels at the
  evaluated points. Call it after plotting (the data set the top of a fraction's axis)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  if metric in FRACTIONS:
    highest = ax.dataLim.ymax if ax.dataLim.height >= 0 else 1.0
    ax.set_ylim(0, min(1.0, max(0.1, 1.2 * highest)))
  if metric == 'ppl':
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter('%g'))  # Narrow ranges: minor only.
  ax.set_xticks(xs, [str(x) for x in xs])
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.grid(alpha=0.3)


def pyplot():
  """matplotlib's pyplot drawing to files only (training hosts have no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, path) -> None:
  """Saves and closes `fig`; through epath, so a gs:// workdir works too."""
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=120)
  pyplot().close(fig)
