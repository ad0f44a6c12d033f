"""The README's "Add a position encoding" walkthrough, kept honest: the example PE
(examples/learned_alibi.py) registers, equals ALiBi at initialisation, trains end to end
through the unchanged trainer and learns its slopes."""

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import lm_base
from examples import lm_learned_alibi
from seqpe_jax import posenc, state, tasks, train
from seqpe_jax.posenc import baselines

pytestmark = pytest.mark.xdist_group('example_pe')


def slopes_of(params):
  """{layer path: learned slopes} of every attention layer."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.exp(np.asarray(leaf)) for path, leaf in flat
          if 'log_slopes' in jax.tree_util.keystr(path)}


def test_the_example_registers_under_its_name():
  assert posenc.REGISTRY['learned_alibi'] is lm_learned_alibi.learned_alibi.KIND
  with pytest.raises(ValueError, match="already registered"):
    posenc.register('learned_alibi', lm_learned_alibi.learned_alibi.KIND)


def test_at_initialisation_it_is_alibi():
  learned = tasks.build(lm_learned_alibi.get_config('smoke'))
  alibi = tasks.build(lm_base.get_config('smoke', pe='alibi'))
  key = jax.random.key(0)
  params = state.init_state(learned, optax.identity(), key)['params']
  slopes = slopes_of(params)
  assert len(slopes) == 2  # One per layer of the nano GPT.
  for value in slopes.values():
    np.testing.assert_allclose(value, baselines.alibi_slopes(2), rtol=1e-6)
  # The same host parameters without the slopes give ALiBi's logits.
  without = jax.tree.map(lambda x: x, params['model'])  # A copy to pop the slopes from.
  for name, block in without['decoder'].items():
    if name.startswith('block_'):
      block['attn'].pop('pe')
  alibi_params = state.init_state(alibi, optax.identity(), key)['params']['model']
  jax.tree.map(lambda a, b: None, alibi_params, without)  # Raises unless ALiBi's tree.
  batch = next(iter(learned.train_batches(0)))
  features = learned.pe.features({}, learned.train_shape)
  np.testing.assert_allclose(
      learned.logits(params['model'], batch, features, train=False),
      alibi.logits(without, batch, features, train=False), rtol=1e-5, atol=1e-5)


def test_it_trains_end_to_end_and_learns_its_slopes(tmp_path):
  config = lm_learned_alibi.get_config('smoke')
  config.mesh.data = 1
  results = train.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {32, 64} and all(np.isfinite(r['ppl']) for r in results.values())
  saved = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints/6/state')['params']
  for value in slopes_of(saved).values():
    assert not np.allclose(value, baselines.alibi_slopes(2), rtol=1e-4)
