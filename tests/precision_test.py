"""Mixed precision (config.model.dtype): bfloat16 activations and matmuls, float32
parameters, optimizer state, logits and losses; float32 unchanged."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm_base, vit_base
from seqpe_jax import optim, state, tasks, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def build(family: str, pe: str, dtype: str):
  base = lm_base if family == 'lm' else vit_base
  config = base.get_config('smoke', pe=pe)
  config.model.dtype = dtype
  config.mesh.data = 1
  return config, tasks.build(config)


def forward(task, params, batch):
  features = task.pe.features(params['pe'], task.train_shape)
  return task.logits(params['model'], batch, features, train=False)


@pytest.mark.parametrize('family, pe', [('lm', 'seqpe'), ('vit', 'seqpe')])
def test_bfloat16_runs_the_matmuls_in_bfloat16_and_stays_close_to_float32(family, pe):
  _, full = build(family, pe, 'float32')
  _, half = build(family, pe, 'bfloat16')
  params = state.init_state(full, optax.identity(), jax.random.key(0))['params']
  if family == 'vit':  # Its head starts at zero; give the logits something to compare.
    head = params['model']['head']
    head['kernel'] = 0.5 * jax.random.normal(jax.random.key(1), head['kernel'].shape)
  batch = jax.tree.map(jnp.asarray, full.train_batches(0)[0])
  reference, mixed = forward(full, params, batch), forward(half, params, batch)
  assert mixed.dtype == jnp.float32  # Logits (and so losses) in float32.
  scale = np.abs(np.asarray(reference)).max()
  np.testing.assert_allclose(mixed, reference, atol=0.03 * scale)
  assert not np.allclose(mixed, reference, atol=1e-6 * scale)  # bfloat16 really ran.
  # Every matmul of the host takes bfloat16, SeqPE's q/k projections of the features too.
  features = half.pe.features(params['pe'], half.train_shape)
  jaxpr = jax.make_jaxpr(lambda p: half.logits(p, batch, features, train=False))(
      params['model'])
  dtypes = matmul_input_dtypes(jaxpr)
  assert len(dtypes) >= 8 and set(dtypes) == {jnp.dtype(jnp.bfloat16)}, dtypes


@pytest.mark.parametrize('family', ['lm', 'vit'])
def test_bfloat16_seqpe_encodes_in_bfloat16_and_returns_float32_embeddings(family):
  """The encoder follows model.dtype, as under the reference's autocast; what leaves it
  (the features, and the embeddings the contrastive and distillation losses compare)
  is float32 and close to the float32 encoder's."""
  _, full = build(family, 'seqpe', 'float32')
  _, half = build(family, 'seqpe', 'bfloat16')
  pe_params = state.init_state(full, optax.identity(), jax.random.key(0))['params']['pe']
  jaxpr = jax.make_jaxpr(lambda p: half.pe.features(p, half.train_shape))(pe_params)
  dtypes = matmul_input_dtypes(jaxpr)
  assert len(dtypes) >= 8 and set(dtypes) == {jnp.dtype(jnp.bfloat16)}, dtypes
  got = half.pe.features(pe_params, half.train_shape)['e']
  want = full.pe.features(pe_params, full.train_shape)['e']
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))
  assert not np.allclose(got, want, atol=1e-6)  # bfloat16 really ran.


def matmul_input_dtypes(closed_jaxpr) -> list:
  return [eqn.invars[0].aval.dtype for eqn in equations(closed_jaxpr.jaxpr)
          if eqn.primitive.name in ('dot_general', 'conv_general_dilated')]


def equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it (jit, scan, cond, remat)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from equations(inner)


STEPS = 4


def train_steps(task, config, steps: int):
  """The state after `steps` train steps from a fixed start, and each step's scalars."""
  optimizer = state.make_optimizer(task, config)
  current = state.init_state(task, optimizer, jax.random.key(0))
  step = jax.jit(train.make_train_step(task, optimizer, jax.random.key(1),
                                       task.shift_pool(jax.random.key(2))))
  batches = task.train_batches(0)
  rates = optim.learning_rates(config.optimizer, config.total_steps)
  history = []
  for i in range(steps):
    current, scalars = step(current, jax.tree.map(jnp.asarray, batches[i % len(batches)]),
                            rates[i])
    history.append({k: float(v) for k, v in scalars.items()})
  return current, history


@pytest.mark.parametrize('family', ['lm', 'vit'])
def test_bfloat16_seqpe_trains_like_float32_with_float32_state(family):
  """The first steps' losses (task and both SeqPE regularisers) stay within 2% of
  float32's, and parameters and optimizer state stay float32."""
  half_config, half = build(family, 'seqpe', 'bfloat16')
  full_config, full = build(family, 'seqpe', 'float32')
  half_state, half_history = train_steps(half, half_config, STEPS)
  _, full_history = train_steps(full, full_config, STEPS)
  for leaf in jax.tree.leaves((half_state['params'], half_state['opt_state'])):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  for i, (got, want) in enumerate(zip(half_history, full_history)):
    for name in ('train/task_loss', 'train/seqpe/contrastive_loss', 'train/seqpe/ood_loss'):
      assert np.isfinite(got[name]) and got[name] == pytest.approx(want[name], rel=2e-2,
                                                                    abs=1e-3), (i, name)
  # bfloat16 really ran: the task losses differ. Compared over every step, since one
  # step's losses can agree to float32's last bit by chance (the LM's fourth, at O0 on a
  # CPU with AVX-512 BF16).
  task_losses = [[h['train/task_loss'] for h in history] for history in (half_history,
                                                                          full_history)]
  assert task_losses[0] != task_losses[1]


def test_an_unknown_dtype_is_one_sentence():
  config = lm_base.get_config('smoke', pe='ape')
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="model.dtype='float16' is not one of: float32, "
                     "bfloat16; did you mean 'bfloat16'"):
    tasks.build(config)


def test_bfloat16_trains_from_the_command_line(tmp_path):
  """The entry point sets XLA:CPU up for the run's precision before JAX starts (in-process
  tests cannot see that): bfloat16 products that contract several dimensions need XLA's
  YNNPACK dots, which float32 runs turn off. The setting is the entry point's, the same for
  every family (cli.prepare_process), so one family's run shows it; the ViT's bfloat16
  numerics are in-process above. XLA_FLAGS is the user's (unset); XLA's optimisation passes
  stay off as in every test's process: they do not decide which products go to YNNPACK
  (with them off, this run still fails without its fusions), and they would add 45 s of
  compiling. The tests' compilation cache cannot hide a failure: XLA's flags are part of an
  entry's key, so a run whose flags change compiles again."""
  family = 'lm'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  done = subprocess.run(
      [sys.executable, '-m', 'seqpe_jax.main', f'--config=configs/{family}_seqpe.py:smoke',
       f'--workdir={tmp_path}', '--config.model.dtype=bfloat16'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  steps = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [s['train/loss'] for s in steps if 'train/loss' in s]
  assert losses and all(np.isfinite(losses))
  assert (tmp_path / 'extrapolation.json').exists()
