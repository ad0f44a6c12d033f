"""A thin orbax wrapper: periodic async saves, keep-N, resume, and a config guard.

Each checkpoint holds the train state (parameters, optimizer state, step) and a JSON
record of the config that made it; the data-iterator position and every random draw are
functions of the step, so the state alone resumes a run exactly. Restoring into a run
whose model, PE or optimizer differ is refused before anything is overwritten.
"""

import json
import pathlib

import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

# Fields a resumed run may change: how long, how often, where data lives, what to evaluate.
MUTABLE = ('total_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
           'eval', 'data.dir', 'keep_checkpoints')


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The parts of the config a checkpoint depends on, as plain JSON values."""
  flat = json.loads(config.to_json_best_effort())
  for field in MUTABLE:
    node, *rest = field.split('.')
    if rest:
      flat.get(node, {}).pop(rest[0], None)
    else:
      flat.pop(node, None)
  return flat


def _differences(a, b, prefix=''):
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      yield from _differences(a.get(key), b.get(key), f'{prefix}{key}.')
  elif a != b:
    yield f'{prefix[:-1]}: {a!r} vs {b!r}'


class Checkpointer:
  """Saves and restores the train state under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self._fingerprint = fingerprint(config)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep), create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, abstract_state):
    """The latest state, placed with the shardings of `abstract_state`; None if there is none."""
    step = self.latest_step()
    if step is None:
      return None
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise ValueError(f'The checkpoint at step {step} in {self.directory} cannot be read ({e}); '
                       'move it away or use another --workdir.') from e
    diffs = list(_differences(meta['meta']['config'], self._fingerprint))
    if diffs:
      raise ValueError(f'The checkpoint in {self.directory} was made by another config '
                       f'({"; ".join(diffs[:3])}); use another --workdir.')
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
      raise ValueError(f'The checkpoint at step {step} in {self.directory} does not match this '
                       f'model ({type(e).__name__}: {str(e)[:200]}); use another --workdir.') from e
    return restored['state']

  def save(self, step: int, state, *, force: bool = False) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'step': step, 'config': self._fingerprint})), force=force)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
