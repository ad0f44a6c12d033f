"""The training loop: one jitted, sharded step from 1 CPU to a pod.

Sections follow big_vision's order: mesh, input pipeline, model and optimizer, sharded
state, update step, checkpoint restore, evaluation, loop.
"""

import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import parameter_overview, periodic_actions

from seqpe_jax import checkpoint, evaluate, metrics, optim, sharding, tasks
from seqpe_jax.posenc import regularizers


def init_state(task, optimizer, key):
  """Fresh parameters {'model', 'pe'}, optimizer state and step 0."""
  pe_key, model_key = jax.random.split(key)
  pe_params = task.pe.init(pe_key, task.train_shape)
  features = task.pe.features(pe_params, task.train_shape)
  model_params = task.init_model(model_key, features)
  params = {'model': model_params, 'pe': pe_params}
  return {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32)}


def make_optimizer(task, config) -> optax.GradientTransformation:
  """The optimizer; its clipping groups and decay masks come from the abstract parameters."""
  params = jax.eval_shape(lambda k: init_state(task, optax.identity(), k),
                          jax.random.key(0))['params']
  return optim.make(config.optimizer, config.total_steps, params)


def abstract_state(task, optimizer, mesh):
  """Shapes, dtypes and target shardings of the train state, without allocating it."""
  shapes = jax.eval_shape(lambda k: init_state(task, optimizer, k), jax.random.key(0))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, sharding.tree_shardings(shapes, mesh))


def make_shift_pool(task, key):
  """The run's fixed SeqPE shift pool; a placeholder for PEs without regularisers."""
  if task.regularizers is None:
    return jnp.zeros((1, len(task.train_shape)), jnp.int32)
  return task.regularizers.shift_pool(key)


def make_train_step(task, optimizer, base_key, shift_pool):
  """(state, batch) -> (state, metrics); all randomness is a function of the step."""
  pe, reg = task.pe, task.regularizers

  def step(state, batch):
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state['step']))

    def loss_fn(params):
      if reg is None:
        features, aux = pe.features(params['pe'], task.train_shape, deterministic=False,
                                    rngs={'dropout': pe_key}), {}
      else:
        features, aux = regularizers.seqpe_step(pe, params['pe'], pe_key, shift_pool, reg)
      logits = task.logits(params['model'], batch, features, train=True, rng=dropout_key)
      task_loss, task_metrics = task.loss(logits, batch)
      total = task_loss + aux.get('loss', 0.0)
      scalars = {'train/loss': total, 'train/task_loss': task_loss, **task_metrics}
      scalars.update({f'train/seqpe/{k}': v for k, v in aux.items() if k != 'loss'})
      return total, scalars

    grads, scalars = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    scalars.update(optim.global_norms(grads))
    return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, scalars

  return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints and evaluates `config` in `workdir`; returns the final sweep."""
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------- Mesh.
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.batch_size, mesh)
  sharding.check_batch(config.eval.batch_size, mesh)

  # ---------------------------------------------------------------- Input pipeline and task.
  task = tasks.build(config)
  data = task.train_batches(config.seed)

  # ---------------------------------------------------------------- Model and optimizer.
  root_key = jax.random.key(config.seed)
  init_key, step_key, pool_key = jax.random.split(root_key, 3)
  optimizer = make_optimizer(task, config)
  shift_pool = make_shift_pool(task, pool_key)

  # ---------------------------------------------------------------- Sharded state.
  target = abstract_state(task, optimizer, mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, target)
  checkpointer = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
  state = checkpointer.restore(target)  # ------------------------ Checkpoint restore.
  if state is None:
    state = jax.jit(lambda k: init_state(task, optimizer, k), out_shardings=state_shardings)(
        init_key)
  else:
    logging.info('Resumed from step %d.', int(state['step']))
  if jax.process_index() == 0:
    (workdir_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
    logging.info('Parameters:\n%s', parameter_overview.get_parameter_overview(
        state['params'], include_stats=False))

  # ---------------------------------------------------------------- Update step.
  train_step = jax.jit(make_train_step(task, optimizer, step_key, shift_pool),
                       in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(state_shardings, sharding.replicated(mesh)),
                       donate_argnums=0)

  # ---------------------------------------------------------------- Loop.
  writer = metrics.MetricWriter(workdir)
  progress = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=None)
  preempted = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  start = int(state['step'])
  batches = iter(data[start:].to_iter_dataset())
  pending = None
  try:
    for step in range(start + 1, config.total_steps + 1):
      state, scalars = train_step(state, sharding.global_batch(next(batches), mesh))
      progress(step)
      if step % config.log_every_steps == 0 or step == config.total_steps:
        scalars = jax.device_get(scalars)
        metrics.check_finite(step, scalars)
        writer.write(step, {**scalars, 'train/steps_per_sec': _steps_per_sec(pending, step)})
        pending = (step, time.perf_counter())
      if config.eval_every_steps and step % config.eval_every_steps == 0:
        writer.write(step, evaluate.flatten(task.sweep(state['params'], mesh), task.metric))
      periodic = step % config.checkpoint_every_steps == 0 or step == config.total_steps
      if periodic or preempted:
        checkpointer.save(step, state, force=bool(preempted))
      if preempted:
        logging.warning('SIGTERM at step %d: saved a checkpoint, stopping.', step)
        return {}
    # ---------------------------------------------------------------- Final sweep.
    results = task.sweep(state['params'], mesh)
    writer.write(config.total_steps, evaluate.flatten(results, task.metric))
    if jax.process_index() == 0:
      evaluate.write_extrapolation(workdir, results, task.metric, task.axis_label,
                                   title=f'{config.model.name} {config.pe.name}')
    return results
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    checkpointer.close()
    writer.close()


def _steps_per_sec(pending, step):
  if pending is None:
    return 0.0
  last_step, last_time = pending
  return (step - last_step) / max(time.perf_counter() - last_time, 1e-9)
