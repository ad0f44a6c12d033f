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

from seqpe_jax import checkpoint, diagnostics, evaluate, metrics, optim, sharding, tasks
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


def make_gradients(task, base_key, shift_pool):
  """(params, batch, step, split) -> (scalars, grads): the loss's gradient in two parts.

  The PE's forward (its features and the scheduled regulariser loss) is differentiated
  with `jax.vjp`, the host's with respect to its parameters and to the features; the
  PE's gradient is then one backward pass of (feature cotangent, 1) -- the same as
  `jax.grad` of the total loss. With `split` it takes two passes instead and returns the
  task's and the regularisers' PE gradients apart: {'model', 'pe_task', 'pe_reg'}.
  """
  pe, reg = task.pe, task.regularizers

  def gradients(params, batch, step, split: bool):
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, step))

    def pe_forward(pe_params):
      features, reg_loss, pe_scalars = regularizers.training_features(
          pe, reg, pe_params, pe_key, step, shift_pool)
      return (features, reg_loss), pe_scalars

    def task_loss(model_params, features):
      logits = task.logits(model_params, batch, features, train=True, rng=dropout_key)
      return task.loss(logits, batch)

    (features, reg_loss), pe_vjp, pe_scalars = jax.vjp(pe_forward, params['pe'], has_aux=True)
    (loss, task_scalars), (model_grads, feature_cot) = jax.value_and_grad(
        task_loss, argnums=(0, 1), has_aux=True)(params['model'], features)
    one = jnp.ones_like(reg_loss)
    scalars = {'train/loss': loss + reg_loss, 'train/task_loss': loss, **task_scalars,
               **{f'train/seqpe/{k}': v for k, v in pe_scalars.items()}}
    if not split:
      (pe_grads,) = pe_vjp((feature_cot, one))
      return scalars, {'model': model_grads, 'pe': pe_grads}
    (pe_task,) = pe_vjp((feature_cot, jnp.zeros_like(one)))
    (pe_reg,) = pe_vjp((jax.tree.map(jnp.zeros_like, features), one))
    return scalars, {'model': model_grads, 'pe_task': pe_task, 'pe_reg': pe_reg}

  return gradients


def balance_pe_gradients(grads, target: float):
  """Sums the PE's task and regulariser gradients, the latter scaled down on the SeqPE
  encoder to at most `target` times the task's norm there (pe.regularizers.balance)."""
  ratio = optim.encoder_grad_ratio(grads['pe_task'], grads['pe_reg'])
  scale = jnp.minimum(1.0, target * ratio)
  pe = jax.tree.map(lambda t, r: t + scale * r, grads['pe_task'], grads['pe_reg'])
  scalars = {'train/seqpe/balance_scale': scale, 'train/seqpe/grad_ratio': ratio}
  return {'model': grads['model'], 'pe': pe}, scalars


def make_train_step(task, optimizer, base_key, shift_pool):
  """(state, batch) -> (state, metrics); all randomness is a function of the step."""
  reg = task.regularizers
  balance = reg is not None and reg.balance == 'grad_norm'
  gradients = make_gradients(task, base_key, shift_pool)

  def step(state, batch):
    scalars, grads = gradients(state['params'], batch, state['step'], split=balance)
    if balance:
      grads, balance_scalars = balance_pe_gradients(grads, reg.balance_target)
      scalars.update(balance_scalars)
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
  diagnose = jax.jit(
      diagnostics.make_diagnostics(task, make_gradients(task, step_key, shift_pool)),
      in_shardings=(state_shardings['params'], sharding.batch_sharding(mesh), None,
                    sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh))
  heldout = sharding.global_batch(task.heldout_batch(), mesh)

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
      batch = sharding.global_batch(next(batches), mesh)
      state, scalars = train_step(state, batch)
      progress(step)
      evaluating = bool(config.eval_every_steps) and step % config.eval_every_steps == 0
      if step % config.log_every_steps == 0 or step == config.total_steps or evaluating:
        scalars = jax.device_get(scalars)
        metrics.check_finite(step, scalars)
        # The diagnostics look at the parameters this step produced, on its own batch
        # and sampling (the step counter has moved on, hence step - 1).
        diag = jax.device_get(diagnose(state['params'], batch, state['step'] - 1, heldout))
        writer.write(step, {**scalars, **diag,
                            'train/steps_per_sec': _steps_per_sec(pending, step)})
        pending = (step, time.perf_counter())
      if evaluating:
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
