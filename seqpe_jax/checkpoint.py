"""A thin orbax wrapper: periodic async saves, keep-N, resume, and a config guard.

Each checkpoint holds the train state and the config that made it; the data position and
every random draw are functions of the step, so the state alone resumes exactly (what a resume
refuses or sets aside: docs/clusters.md, "Preemption and resume").
"""

import collections
import functools
import json
import re

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from seqpe_jax import cli
from seqpe_jax.workdir_lock import workdir_path


# Fields a resumed run may change, because they leave the saved state meaning the same; the
# learning rate among them, so a run that diverged can resume with a smaller one.
MUTABLE = ('total_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
           'diagnostics', 'eval', 'data.dir', 'data.cache_dir', 'data.workers',
           'keep_checkpoints', 'mesh', 'model.attention_kernel', 'model.attention_block',
           'model.dtype', 'optimizer.lr', 'pe.seqpe.remat')
# Differences are listed in this order: what the model is before how it was trained.
IMPORTANCE = ('model', 'pe', 'data', 'optimizer', 'batch_size', 'seed')


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The parts of the config a checkpoint depends on, as plain JSON values."""
  return without_mutable(json.loads(config.to_json_best_effort()))


def without_mutable(flat: dict) -> dict:
  """A config record minus the MUTABLE fields."""
  flat = json.loads(json.dumps(flat))
  for field in MUTABLE:
    *parents, leaf = field.split('.')
    node = flat
    for parent in parents:
      node = node.get(parent) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(leaf, None)
  return flat


def differences(then: dict, now: dict, prefix: str = ''):
  """'field: value then vs value now' for every differing leaf, most important first."""
  rank = lambda line: next((i for i, top in enumerate(IMPORTANCE)
                            if line.startswith((f'{top}.', f'{top}:'))), len(IMPORTANCE))
  return sorted(_differences(then, now, prefix), key=rank)


def _differences(a, b, prefix):
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      yield from _differences(a.get(key), b.get(key), f'{prefix}{key}.')
  elif a != b:
    yield f'{prefix[:-1]}: {a!r} vs {b!r}'


def _failed_file(error: BaseException, checkpoint_dir: epath.Path) -> str:
  """The file or folder of the checkpoint the error names (orbax's messages are long and may
  hold reprs of C++ objects), else the checkpoint's folder."""
  for e in cli.error_chain(error):
    if isinstance(e, OSError) and e.filename:
      return str(e.filename)
  text = ' '.join(str(e) for e in cli.error_chain(error))
  found = re.findall(re.escape(str(checkpoint_dir)) + r'[^\s\'",;:)>]*', text)
  return max(found, key=len) if found else str(checkpoint_dir)


@functools.cache  # Once per process.
def _arrays_saved_by_one_replica() -> None:
  """On CPU, each array is written by its shard's first replica (as orbax does on GPU), not in
  slices by every replica: CPU replicas share one memory, and each slice is an op compiled for
  its shape (a first save on 8 CPU devices took ~5 s that way, ~0.1 s this way)."""
  if jax.default_backend() == 'cpu':
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Saves and restores the train state under WORKDIR/checkpoints."""

  def __init__(self, workdir, config: ml_collections.ConfigDict, *, keep: int = 3):
    _arrays_saved_by_one_replica()
    self.directory = workdir_path(workdir) / 'checkpoints'
    self._fingerprint = fingerprint(config)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep), create=True)
    # Named handlers let item_metadata read a checkpoint's array layout before restoring it.
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
        'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, abstract_state, defaults: dict | None = None):
    """The newest readable state, placed with the shardings of `abstract_state`; None if
    there is none. Raises ValueError for a checkpoint of another config or model. `defaults`:
    the values of top-level entries that older checkpoints lack (state.NEWER_ENTRIES)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      meta = self._read(step, meta=ocp.args.JsonRestore())
      if meta is None:
        continue
      if diffs := differences(without_mutable(meta['meta']['config']), self._fingerprint):
        more = f' and {len(diffs) - 3} more' if len(diffs) > 3 else ''
        raise ValueError(f'The checkpoint in {self.directory} was made by another config '
                         f'({"; ".join(diffs[:3])}{more}); use another --workdir.')
      saved = self._saved_layout(step)  # None if unreadable: the restore sets it aside.
      absent = {key for key in defaults or {}
                if saved is not None and key in abstract_state and key not in saved.keys()}
      target = {k: v for k, v in abstract_state.items() if k not in absent}
      if saved is not None:
        self._check_structure(step, saved, target)
      restored = self._read(step, state=ocp.args.StandardRestore(target))
      if restored is not None:
        state = dict(restored['state'])
        for key in absent:
          state[key] = jax.device_put(jax.numpy.asarray(defaults[key], abstract_state[key].dtype),
                                      abstract_state[key].sharding)
        return state
    return None

  def _saved_layout(self, step: int):
    """The array metadata tree of checkpoint `step`'s state, or None if it cannot be read."""
    try:
      return self._manager.item_metadata(step)['state']
    except Exception:  # pylint: disable=broad-except
      return None

  def _read(self, step: int, **items):
    """The items of checkpoint `step`, or None after setting an unreadable one aside."""
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      aside = self._move(step, 'checkpoints.unreadable')
      logging.warning('The checkpoint at step %d cannot be read (%s, reading %s); moved it to '
                      '%s and trying the one before.', step, type(e).__name__,
                      _failed_file(e, self.directory / str(step)), aside)
      return None

  def _check_structure(self, step: int, saved, abstract_state) -> None:
    """Refuses (not sets aside) a readable checkpoint whose arrays differ in count, shape or
    dtype; compared as collections, since orbax reads optimizer states back as plain ones."""
    describe = lambda tree: collections.Counter(
        (tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))
    want, have = describe(abstract_state), describe(saved)
    if want != have:
      missing = [f'{n} array(s) of {s} {d} missing' for (s, d), n in sorted((want - have).items())]
      extra = [f'{n} unexpected array(s) of {s} {d}' for (s, d), n in sorted((have - want).items())]
      detail = '; '.join(missing[:2] + extra[:2])
      raise ValueError(f'The checkpoint at step {step} in {self.directory} does not match this '
                       f'model ({detail}); use another --workdir.')

  def set_aside_from(self, first: int) -> tuple[epath.Path, list[int]]:
    """Moves checkpoints from step `first` on to WORKDIR/checkpoints.nonfinite/: (folder, steps)."""
    self._manager.wait_until_finished()
    folder = self.directory.parent / 'checkpoints.nonfinite'
    moved = [step for step in sorted(self._manager.all_steps()) if step >= first]
    for step in moved:
      self._move(step, folder.name)
    return folder, moved

  def _move(self, step: int, folder: str) -> epath.Path:
    """Moves checkpoint `step` into WORKDIR/`folder`/ (process 0; every process waits)."""
    aside = self.directory.parent / folder / str(step)
    if jax.process_index() == 0:
      aside.parent.mkdir(parents=True, exist_ok=True)
      if aside.exists():
        aside = aside.parent / f'{step}.{len(list(aside.parent.iterdir()))}'
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint {step} moved to {folder}')
    self._manager.reload()
    return aside

  def save(self, step: int, state, *, force: bool = False) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'step': step, 'config': self._fingerprint})), force=force)

  def wait(self) -> None:
    """Blocks until the last save is on disk (before a preempted process exits)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
