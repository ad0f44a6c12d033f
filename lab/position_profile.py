"""Where does the PE alone make attention look, inside and beyond the training length?

    python -m lab.position_profile --workdir=DIR [--length=2048] [--near=16]

restores the run in DIR (a 1-D task: language modelling or QA), computes every layer's
`attention.position_logits` at `length` positions -- the logits the PE gives when every
query and key carries the same content -- and, per query position, the attention the PE
alone would pay: its mean key distance and its mass on the `near` nearest keys; and how
far its logits fall from those keys to the keys T..2T-1 back (T the training length, the
distances just beyond any the training window holds). A PE that keeps attention local
beyond the training length (ALiBi by construction) shows the same short mean distance and
fall-off at every query; a position-free layer spreads it evenly (mean distance i/2 at
query i, no fall-off); a PE whose positions beyond the training window look alike to it
goes from local inside the window to even beyond it. Writes
DIR/position_profile_<length>.json (per layer and averaged, bucketed by query position in
doublings of the training length) and .png (mean key distance against query position), and
prints the averaged table.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath

from seqpe_jax import cli, evaluate, posenc
from seqpe_jax.models import attention


def layer_position_logits(task, params, length: int) -> list[np.ndarray]:
  """Every attention layer's position-only logits [H, L, L] at `length` positions."""
  if len(task.train_shape) != 1:
    raise ValueError(f'Position profiles need a 1-D task (language modelling or QA); this '
                     f'run trains on a {len(task.train_shape)}-D grid.')
  features = posenc.TableCache(task.pe, params['pe'])((length,))
  tokens = {'tokens': jnp.zeros((1, length), jnp.int32)}  # Content is constant anyway.
  _, state = jax.jit(lambda p, f: task.logits(p, tokens, f, train=False,
                                              mutable=[attention.POSITION_LOGITS]))(
                                                  params['model'], features)
  return [np.asarray(x) for x in jax.tree.leaves(state[attention.POSITION_LOGITS])]


def query_profile(logits_HLL: np.ndarray, near: int,
                  train_length: int) -> dict[str, np.ndarray]:
  """Per query (averaged over heads): the mean key distance of softmax(logits) over the
  keys the query sees; the softmax's mass on keys closer than `near`; and the `falloff`,
  the mean logit on those keys minus that on the keys T..2T-1 back (T = `train_length`),
  NaN for queries with no key that far back."""
  length = logits_HLL.shape[-1]
  distance = np.arange(length)[:, None] - np.arange(length)[None]  # Query minus key.
  z = logits_HLL - logits_HLL.max(-1, keepdims=True)
  p = np.exp(z)  # exp(-inf) = 0 for keys the query cannot see.
  p /= p.sum(-1, keepdims=True)
  absolute = np.abs(distance)
  visible = np.isfinite(logits_HLL)

  def mean_logit(band_LL):  # [H, L] and the number of keys it averages.
    keys = visible & band_LL
    return np.where(keys, logits_HLL, 0).sum(-1) / np.maximum(keys.sum(-1), 1), keys.sum(-1)

  near_logit, _ = mean_logit(absolute < near)
  beyond_logit, beyond_keys = mean_logit((absolute >= train_length)
                                         & (absolute < 2 * train_length))
  return {'mean_distance': (p * absolute).sum(-1).mean(0),
          'near_mass': (p * (absolute < near)).sum(-1).mean(0),
          'falloff': np.where(beyond_keys > 0, near_logit - beyond_logit, np.nan).mean(0)}


def uniform_profile(length: int, near: int, train_length: int) -> dict[str, np.ndarray]:
  """`query_profile` of a causal layer that ignores position (every visible key alike)."""
  return query_profile(np.where(np.tril(np.ones((length, length), bool)), 0.0, -np.inf)[None],
                       near, train_length)


def buckets(length: int, train_length: int) -> list[tuple[int, int]]:
  """Query ranges [0, T), [T, 2T), [2T, 4T), ... up to `length`."""
  edges = [0, train_length]
  while edges[-1] < length:
    edges.append(min(2 * edges[-1], length))
  return list(zip(edges[:-1], edges[1:]))


def bucketed(profile: dict[str, np.ndarray], ranges) -> dict[str, list[float | None]]:
  """Each quantity's mean over each query range, None where it is undefined throughout."""
  def mean(values):
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None
  return {k: [mean(v[lo:hi]) for lo, hi in ranges] for k, v in profile.items()}


def profile_run(workdir: str, length: int | None = None, near: int = 16) -> dict:
  """The profile of the run in `workdir`, written beside it (see the module docstring)."""
  config, task, state, _ = evaluate.restore_run(workdir)
  length = length or max(config.eval.lengths)
  train_length = task.train_shape[0]
  per_layer = [query_profile(x, near, train_length)
               for x in layer_position_logits(task, state['params'], length)]
  mean = {k: np.mean([p[k] for p in per_layer], axis=0) for k in per_layer[0]}
  uniform = uniform_profile(length, near, train_length)
  ranges = buckets(length, train_length)
  out = {'pe': config.pe.name, 'length': length, 'train_length': train_length, 'near': near,
         'query_ranges': ranges, 'mean': bucketed(mean, ranges),
         'position_free': bucketed(uniform, ranges),
         'layers': [bucketed(p, ranges) for p in per_layer]}
  path = epath.Path(workdir) / f'position_profile_{length}'
  path.with_suffix('.json').write_text(json.dumps(out, indent=1))
  _plot(per_layer, mean, uniform, train_length,
        f'{config.model.name} {config.pe.name}', path.with_suffix('.png'))
  return out


def _plot(per_layer, mean, uniform, train_length: int, title: str, path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, p in enumerate(per_layer):
    ax.plot(p['mean_distance'], lw=0.8, alpha=0.6, label=f'layer {i}')
  ax.plot(mean['mean_distance'], color='k', lw=1.5, label='mean')
  ax.plot(uniform['mean_distance'], 'k--', lw=0.8, label='position-free')
  ax.axvline(train_length, color='grey', lw=0.8, label=f'training length {train_length}')
  ax.set(xlabel='query position', ylabel='mean key distance of the PE-only attention',
         title=title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  with path.open('wb') as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)


def table(out: dict) -> str:
  """The averaged profile as a Markdown table, one row per query range."""
  t = out['train_length']
  rows = ['| queries | mean key distance | position-free | mass on the nearest '
          f'{out["near"]} keys | position-free | logit fall-off to distances {t}-{2 * t - 1} |',
          '|---|---|---|---|---|---|']
  for i, (lo, hi) in enumerate(out['query_ranges']):
    falloff = out['mean']['falloff'][i]
    rows.append(f'| {lo}-{hi - 1} | {out["mean"]["mean_distance"][i]:.1f} | '
                f'{out["position_free"]["mean_distance"][i]:.1f} | '
                f'{out["mean"]["near_mass"][i]:.2f} | {out["position_free"]["near_mass"][i]:.2f} | '
                f'{"" if falloff is None else f"{falloff:.2f}"} |')
  return '\n'.join(rows)


def main(argv):
  del argv
  cli.prepare_process(cli.run_dtype(flags.FLAGS.workdir) if flags.FLAGS.workdir else 'float32')
  with cli.exit_statuses():
    out = profile_run(flags.FLAGS.workdir, flags.FLAGS.length, flags.FLAGS.near)
  print(f'{out["pe"]}: PE-only attention at {out["length"]} positions (trained at '
        f'{out["train_length"]}), mean over layers and heads')
  print(table(out))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A training run directory (1-D task).')
  flags.DEFINE_integer('length', None, 'Positions to profile; default the longest eval length.')
  flags.DEFINE_integer('near', 16, 'Keys closer than this count as near.')
  flags.mark_flag_as_required('workdir')
  app.run(main, flags_parser=cli.parse_flags)
