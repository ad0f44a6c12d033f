"""The ViT task's sweep: top-1 accuracy against a NumPy count, on the split it is asked for."""

import jax
import numpy as np

from configs import vit_base
from seqpe_jax import posenc, sharding, state as state_lib, tasks
from seqpe_jax.data import images


def test_the_sweep_counts_hits_of_the_split_asked_for_padding_excluded():
  config = vit_base.get_config('smoke', pe='ape')
  # A random head, so the predictions vary (a zero head predicts class 0 for every image).
  config.model.head_init = 'trunc_normal'
  config.model.dropout = 0.5  # The sweep must run the model deterministically.
  task = tasks.build(config)
  optimizer = state_lib.make_optimizer(task, config)
  params = state_lib.init_state(task, optimizer, jax.random.key(0))['params']
  mesh = sharding.make_mesh(config.mesh)
  tables = posenc.TableCache(task.pe, params['pe'])
  # The test split (300 digits) leaves a padded last batch of 44 at eval.batch_size 64.
  assert len(task.splits['test']) % config.eval.batch_size
  expected = {}
  for split in ('valid', 'test'):
    data = task.splits[split]
    for res in config.eval.resolutions:  # The whole split in one batch: no padding at all.
      batch = images.eval_batch(data, 0, batch_size=len(data), image_size=res)
      logits = task.logits(params['model'], batch, tables(task.grid(res)), train=False)
      expected[split, res] = np.mean(np.argmax(np.asarray(logits), -1) == batch['label'])
  assert expected['valid', 16] != expected['test', 16]  # The splits tell apart.
  for split in ('valid', 'test'):
    got = task.sweep(params, mesh, split=split)
    assert got == {res: {'accuracy': expected[split, res]} for res in config.eval.resolutions}
  assert config.eval.split == 'test'
  assert task.sweep(params, mesh) == task.sweep(params, mesh, split='test')
  # A head biased to one class predicts it everywhere: the accuracy is that class's share.
  # It is the class of the split's last image, the one the padding rows repeat.
  labels = np.asarray([e['label'] for e in task.splits['test']])
  head = params['model']['head']
  params['model']['head'] = {**head, 'bias': head['bias'].at[labels[-1]].add(1e3)}
  assert task.sweep(params, mesh, split='test') == {
      res: {'accuracy': np.mean(labels == labels[-1])} for res in config.eval.resolutions}
