"""Starting a run from another run's parameters: `config.init_from=WORKDIR` (QA from an LM).

The source is a finished LM run (its config.json and at least one checkpoint), a study's
`<study>/final/<pe>/seed<i>` included, with this config's model, PE and tokenizer: the fields that
fix the parameters' shapes and meaning are compared and the first that differs is named; those that
only say how a run trains (dropout, attention kernels, the SeqPE regularisers' sampling) may change.
The newest checkpoint's parameters are placed with this run's shardings; a learned APE table trained
at another length is resampled linearly, as the LM's own evaluation does.
"""

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from seqpe_jax import checkpoint, posenc, positions
from seqpe_jax.posenc import baselines

# Training-only fields of the model section (the parameters mean the same without them).
TRAINING_ONLY = ('dropout', 'attention_dropout', 'attention_kernel', 'attention_block', 'dtype')
# Retired fields (docs/method.md §10) with the value the code now always has: an LM run that
# recorded that value is compatible; another value is named as a difference.
RETIRED = {'pe.seqpe.digit_mask': 'causal', 'pe.inject.proj_init_std': 0.02,
           'pe.inject.scalar_impl': 'concat'}


def parameter_fields(config: dict) -> dict:
  """{'model.variant': 'tiny', 'pe.name': ..., ...}: the fields (of a config as JSON) that
  fix what the parameters are. SeqPE's position space counts by its digits."""
  fields = {f'model.{k}': v for k, v in config['model'].items() if k not in TRAINING_ONLY}
  pe = config['pe']
  fields['pe.name'] = pe['name']
  fields.update({f'pe.inject.{k}': v for k, v in pe['inject'].items()})
  # The section the PE reads its parameters' meaning from, besides pe.name and pe.inject.
  kind = posenc.REGISTRY.get(pe['name'])
  section = kind.config_section if kind else ''
  if section:
    fields.update({f'pe.{section}.{k}': v for k, v in pe[section].items()
                   if (section, k) not in (('seqpe', 'dropout'), ('seqpe', 'max_position'))})
  if section == 'seqpe':
    s = pe['seqpe']
    fields['pe.seqpe.num_digits'] = s['num_digits'] or positions.num_digits(
        s['max_position'], s['base'])
  data = config['data']
  fields['data.tokenizer'] = data['tokenizer']
  if data['tokenizer'] == 'bpe':  # Trained on this corpus at this size.
    fields['data.name'], fields['data.vocab_size'] = data['name'], data['vocab_size']
  return {k: v for k, v in fields.items() if k not in RETIRED or v != RETIRED[k]}


def source_config(workdir: str) -> dict:
  """The config (as JSON) of the LM run in `workdir`, checked to be one with a checkpoint."""
  path = epath.Path(workdir) / 'config.json'
  flag = f'--config.init_from={workdir}'
  hint = 'point it at the --workdir of a configs/lm_<pe>.py run'
  if not path.exists():
    raise FileNotFoundError(f'{flag} is not an LM run: it has no config.json ({hint}).')
  config = json.loads(path.read_text())
  kind = config.get('task') or config.get('model', {}).get('name')
  if kind != 'gpt':
    raise ValueError(f"{flag} is not an LM run: its config.json is a '{kind}' run ({hint}).")
  if latest_step(workdir) is None:
    raise FileNotFoundError(f'{flag} has no checkpoint to start from: train the LM run first '
                            f'(it saves to {epath.Path(workdir) / "checkpoints"}).')
  return config


def check_compatible(config: ml_collections.ConfigDict, source: dict) -> None:
  """Raises ValueError naming the first parameter-defining field that differs."""
  mine = parameter_fields(json.loads(config.to_json_best_effort()))
  theirs = parameter_fields(source)
  for field in sorted(set(mine) | set(theirs), key=_importance):
    if mine.get(field) != theirs.get(field):
      raise ValueError(f'--config.init_from={config.init_from} was trained with {field}='
                       f'{theirs.get(field)!r} but this config has {field}={mine.get(field)!r}; '
                       'fine-tune with the model, PE and tokenizer of the LM run.')


def _importance(field: str):
  order = ('model.', 'pe.name', 'pe.inject.', 'pe.', 'data.')
  return next(i for i, prefix in enumerate(order) if field.startswith(prefix)), field


def latest_step(workdir: str) -> int | None:
  directory = epath.Path(workdir) / 'checkpoints'
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if (
      directory.is_dir()) else []
  return max(steps, default=None)


def load_params(workdir: str, abstract_params):
  """The LM run's newest parameters, shaped and placed like `abstract_params`."""
  path = checkpoint.workdir_path(workdir) / 'checkpoints' / str(latest_step(workdir)) / 'state'
  with ocp.PyTreeCheckpointer() as reader:
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                        reader.metadata(path).item_metadata.tree['params'])
    saved = reader.restore(path, args=ocp.args.PyTreeRestore(
        item={'params': item}, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  {'params': item})))['params']
  if jax.tree.structure(saved) != jax.tree.structure(abstract_params):
    raise ValueError(f'The parameters saved in {workdir} have another structure than this '
                     'model (made by another code version?); train the LM run again.')

  def place(path, x, target):
    if x.shape != target.shape:
      x = _resample_ape(jax.tree_util.keystr(path), x, target.shape, workdir)
    x = np.asarray(x, target.dtype)
    return jax.make_array_from_callback(target.shape, target.sharding, lambda index: x[index])
  return jax.tree_util.tree_map_with_path(place, saved, abstract_params)


def _resample_ape(name: str, table, shape, workdir: str):
  """A learned APE table trained at another length, resampled linearly (1D) to `shape`."""
  if not name.endswith("['table']") or len(shape) != 2 or table.shape[1:] != shape[1:]:
    raise ValueError(f'The parameter {name} saved in {workdir} has shape {table.shape}, this '
                     f'model needs {tuple(shape)}; fine-tune with the model of the LM run.')
  return np.asarray(baselines.resample_table(table, shape[:1], method='linear'))
