"""The training loop: one jitted, sharded step from 1 CPU to a pod.

Sections follow big_vision's order: mesh, input pipeline, model and optimizer, sharded
state, update step, checkpoint restore, evaluation, loop.
"""

import contextlib
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview
from etils import epath

from seqpe_jax import checkpoint, cli, diagnostics, metrics, optim, sharding, tasks, workdir_lock
from seqpe_jax import results as results_files
from seqpe_jax.state import NEWER_ENTRIES, abstract_state, init_state, make_optimizer
from seqpe_jax.preemption import PreemptionWatch


def make_gradients(task, base_key, shift_pool):
  """(params, batch, step, split) -> (scalars, grads) of the task loss plus the PE regulariser.
  The PE's forward is differentiated with `jax.vjp`: features reach only the task loss and
  probes and terms only the regulariser, so with `split` two backward passes give the PE's
  gradients apart ({'model', 'pe_task', 'pe_reg'}; else {'model', 'pe'})."""

  def gradients(params, batch, step, split: bool):
    pe_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, step))

    def pe_forward(pe_params):
      features, probes, terms, pe_scalars = task.pe_training_step(pe_params, pe_key, step,
                                                                  shift_pool)
      return (features, probes, terms), pe_scalars

    def total_loss(model_params, features, probes, terms):
      logits, probe_logits = task.training_outputs(model_params, batch, features, probes,
                                                   dropout_key)
      loss, task_scalars = task.loss(logits, batch)
      reg_loss, reg_scalars = task.pe_regularizer(terms, probe_logits)
      return loss + reg_loss, (loss, task_scalars, reg_scalars)

    pe_out, pe_vjp, pe_scalars = jax.vjp(pe_forward, params['pe'], has_aux=True)
    (total, (loss, task_scalars, reg_scalars)), (model_grads, *pe_cot) = jax.value_and_grad(
        total_loss, argnums=(0, 1, 2, 3), has_aux=True)(params['model'], *pe_out)
    scalars = {'train/loss': total, 'train/task_loss': loss, **task_scalars,
               **{f'train/seqpe/{k}': v for k, v in {**pe_scalars, **reg_scalars}.items()}}
    if not split:
      (pe_grads,) = pe_vjp(tuple(pe_cot))
      return scalars, {'model': model_grads, 'pe': pe_grads}
    feature_cot, probe_cot, terms_cot = pe_cot
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    (pe_task,) = pe_vjp((feature_cot, zeros(probe_cot), zeros(terms_cot)))
    (pe_reg,) = pe_vjp((zeros(feature_cot), probe_cot, terms_cot))
    return scalars, {'model': model_grads, 'pe_task': pe_task, 'pe_reg': pe_reg}

  return gradients


def balance_pe_gradients(grads, target: float = 1.0):
  """Sums the PE's task and regulariser gradients, the latter scaled down on the SeqPE
  encoder to at most `target` times the task's norm there (pe.regularizers.balance: 1)."""
  ratio = optim.encoder_grad_ratio(grads['pe_task'], grads['pe_reg'])
  scale = jnp.minimum(1.0, target * ratio)
  pe = jax.tree.map(lambda t, r: t + scale * r, grads['pe_task'], grads['pe_reg'])
  scalars = {'train/seqpe/balance_scale': scale, 'train/seqpe/grad_ratio': ratio}
  return {'model': grads['model'], 'pe': pe}, scalars


def make_train_step(task, optimizer, base_key, shift_pool):
  """(state, batch, learning_rate) -> (state, metrics); all randomness is a function of the step."""
  balance = task.pe_balances_gradients
  gradients = make_gradients(task, base_key, shift_pool)

  def step(state, batch, learning_rate):
    scalars, grads = gradients(state['params'], batch, state['step'], split=balance)
    if balance:
      grads, balance_scalars = balance_pe_gradients(grads)
      scalars.update(balance_scalars)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'],
                                          learning_rate=learning_rate)
    params = optax.apply_updates(state['params'], updates)
    scalars.update(optim.global_norms(grads))
    # Checked on every step without a host sync: the loop reads it when it syncs anyway
    # (logging, saving), so a non-finite state is never saved.
    finite = (jnp.isfinite(scalars['train/loss']) & jnp.isfinite(scalars['grad_norm/host'])
              & jnp.isfinite(scalars['grad_norm/seqpe']))
    first_bad = state['first_nonfinite_step']
    first_bad = jnp.where((first_bad == 0) & ~finite, state['step'] + 1, first_bad)
    return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1,
            'first_nonfinite_step': first_bad}, scalars

  return step


def jit_train_step(task, optimizer, state_shardings, mesh):
  """(state, batch, learning_rate, step_key, shift_pool) -> (state, metrics), jitted for the
  mesh with the old state donated. The rate, key and pool are arguments, not constants, so
  runs differing only in seed, rate or length share one compiled step and cache entry."""
  def step(state, batch, learning_rate, step_key, shift_pool):
    return make_train_step(task, optimizer, step_key, shift_pool)(state, batch, learning_rate)

  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated,
                                     replicated, replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def jit_diagnostics(task, state_shardings, mesh):
  """(params, batch, step, heldout, step_key, shift_pool) -> diag/* scalars, jitted as the step."""
  def diagnose(params, batch, step, heldout, step_key, shift_pool):
    gradients = make_gradients(task, step_key, shift_pool)
    return diagnostics.make_diagnostics(task, gradients)(params, batch, step, heldout)

  replicated, batches = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(diagnose, in_shardings=(state_shardings['params'], batches, None, batches,
                                         replicated, replicated), out_shardings=replicated)


def lower_train_step(config: ml_collections.ConfigDict, mesh=None) -> jax.stages.Lowered:
  """The train step lowered for `mesh` from an abstract state and batch; nothing allocated."""
  validate(config)
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  sharding.check_batch(config.batch_size, mesh)
  task = tasks.build(config)
  _, step_key, pool_key = jax.random.split(jax.random.key(config.seed), 3)
  optimizer = make_optimizer(task, config)
  target = abstract_state(task, optimizer, mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, target)
  first = task.train_batches(config.seed)[0]  # This process's rows: the global shapes follow.
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      (x.shape[0] * jax.process_count(),) + x.shape[1:], x.dtype,
      sharding=sharding.batch_sharding(mesh)), first)
  return jit_train_step(task, optimizer, state_shardings, mesh).lower(
      target, batch, np.float32(config.optimizer.lr), step_key, task.shift_pool(pool_key))


def compile_report(config: ml_collections.ConfigDict) -> dict[str, float]:
  """XLA's per-device memory plan and FLOPs of the train step (`--compile_only`, no state)."""
  mesh = sharding.make_mesh(config.mesh)  # Once: it warns when devices stay idle.
  compiled = lower_train_step(config, mesh).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one per module.
  report = {'devices': mesh.size, 'mesh': dict(mesh.shape),
            'arguments_bytes': memory.argument_size_in_bytes,
            'outputs_bytes': memory.output_size_in_bytes,
            'temporaries_bytes': memory.temp_size_in_bytes,
            'donated_bytes': memory.alias_size_in_bytes,
            'code_bytes': memory.generated_code_size_in_bytes,
            'flops_per_step': float(cost.get('flops', float('nan')))}
  # Donated arguments are reused for the outputs, so they count once.
  report['peak_bytes_estimate'] = (report['arguments_bytes'] + report['outputs_bytes']
                                   - report['donated_bytes'] + report['temporaries_bytes'])
  return report


def format_compile_report(report: dict) -> str:
  gib = lambda n: f'{n / 2**30:.3f} GiB'
  return '\n'.join([
      f"Train step compiled for {report['devices']} device(s), mesh {report['mesh']}; per device:",
      f"  arguments   {gib(report['arguments_bytes'])} (state and batch; "
      f"{gib(report['donated_bytes'])} donated to the outputs)",
      f"  outputs     {gib(report['outputs_bytes'])}",
      f"  temporaries {gib(report['temporaries_bytes'])}",
      f"  peak (args + outputs - donated + temporaries) {gib(report['peak_bytes_estimate'])}",
      f"  FLOPs per step {report['flops_per_step']:.4g} (XLA's count)"])


def validate(config: ml_collections.ConfigDict) -> None:
  """Stops on settings that cannot run, before the workdir, the data or the compiler are
  touched (a typo should not cost a minute of compiling or leave an empty run behind)."""
  for field in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                'batch_size', 'eval.batch_size'):
    value = config[field]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{field} must be a positive whole number, got {value!r}.')
  if not isinstance(config.eval_every_steps, int) or config.eval_every_steps < 0:
    raise ValueError('eval_every_steps must be a whole number >= 0 (0: evaluate only at the '
                     f'end), got {config.eval_every_steps!r}.')
  if not config.optimizer.lr > 0:
    raise ValueError(f'optimizer.lr must be positive, got {config.optimizer.lr!r}.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, checkpoints and evaluates `config` in `workdir`; returns the final sweep (the
  recorded one if the run already finished). Raises ValueError/OSError for bad input (before
  any side effect), FloatingPointError on a non-finite loss, cli.Preempted/Interrupted."""
  validate(config)

  # ---------------------------------------------------------------- Mesh.
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.batch_size, mesh)

  # Before anything is written or read (data can take minutes: a second run on the workdir
  # stops at once); what the run opens is closed, its saves finished, before the release.
  with workdir_lock.held(workdir, purpose='train'), contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, checkpoint.workdir_path(workdir), mesh, cleanup)


def _train_and_evaluate(config, workdir: epath.Path, mesh, cleanup: contextlib.ExitStack):
  # ---------------------------------------------------------------- Input pipeline and task.
  task = tasks.build(config)
  data = task.train_batches(config.seed)

  # ---------------------------------------------------------------- Model and optimizer.
  init_key, step_key, pool_key = jax.random.split(jax.random.key(config.seed), 3)
  optimizer = make_optimizer(task, config)
  shift_pool = task.shift_pool(pool_key)

  # ---------------------------------------------------------------- Sharded state.
  target = abstract_state(task, optimizer, mesh)
  state_shardings = jax.tree.map(lambda x: x.sharding, target)
  checkpointer = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
  cleanup.callback(checkpointer.close)
  state = checkpointer.restore(target, defaults=NEWER_ENTRIES)
  if state is not None and int(state['step']) == config.total_steps:
    recorded = results_files.read_extrapolation(workdir, step=config.total_steps)
    if recorded is not None:
      metrics.say(f'{workdir} has already finished its {config.total_steps} steps; its results '
                  f'are in {workdir}/extrapolation.json (`python -m seqpe_jax.evaluate '
                  f'--workdir={workdir}` sweeps again).')
      return recorded
  if state is None:
    state = jax.jit(lambda k: init_state(task, optimizer, k), out_shardings=state_shardings)(
        init_key)
    # Fine-tuning (QA): another run's parameters, with a fresh optimizer state for them.
    params = task.initial_params(target['params'])
    if params is not None:
      state = jax.jit(lambda s, p: {**s, 'params': p, 'opt_state': optimizer.init(p)},
                      out_shardings=state_shardings, donate_argnums=0)(state, params)
  else:
    metrics.say(f"Resumed from step {int(state['step'])} in {workdir}.")
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    logging.info('Parameters:\n%s', parameter_overview.get_parameter_overview(
        state['params'], include_stats=False))
    metrics.say(f'{config.model.name} {config.model.variant} with PE {config.pe.name}: '
                f"{parameter_overview.count_parameters(state['params']):,} parameters.")

  # ---------------------------------------------------------------- Update step.
  train_step = jit_train_step(task, optimizer, state_shardings, mesh)
  diagnose = jit_diagnostics(task, state_shardings, mesh) if config.diagnostics else None
  heldout = task.heldout_batch(mesh) if config.diagnostics else None

  # ---------------------------------------------------------------- Loop.
  start = int(state['step'])
  writer = metrics.MetricWriter(workdir, resumed_at=start)
  cleanup.callback(writer.close)
  if start == 0:
    writer.write_config(config.to_dict())
  preemption = PreemptionWatch()
  cleanup.callback(preemption.close)
  batches = (sharding.global_batch(b, mesh) for b in data[start:].to_iter_dataset())
  first_batch = next(batches)
  # Compiled ahead, then every process waits for the others: waiting in the step's first
  # collective instead times out (30 s on CPU) well before a slow host's compile ends.
  rates = optim.learning_rates(config.optimizer, config.total_steps)
  train_step = train_step.lower(state, first_batch, rates[0], step_key, shift_pool).compile()
  sharding.wait_for_all_processes('train step compiled')
  batches = itertools.chain([first_batch], batches)
  progress = metrics.Progress(config.total_steps, start)
  for step in range(start + 1, config.total_steps + 1):
    batch = next(batches)
    rate = rates[step - 1]  # The schedule counts updates from 0.
    state, scalars = train_step(state, batch, rate, step_key, shift_pool)
    evaluating = bool(config.eval_every_steps) and step % config.eval_every_steps == 0
    last = step == config.total_steps
    if step % config.log_every_steps == 0 or last or evaluating:
      _stop_if_nonfinite(state, checkpointer)
      # This step's parameters, batch and sampling (the counter has moved on: step - 1).
      diag = diagnose(state['params'], batch, state['step'] - 1, heldout, step_key,
                      shift_pool) if diagnose else {}
      row = {**jax.device_get(scalars), **jax.device_get(diag),
             'train/lr': rate,  # The rate this step's update used.
             'train/steps_per_sec': progress.update(step)}
      writer.write(step, row)
      metrics.say(progress.line(step, row))
    if evaluating:
      results = task.sweep(state['params'], mesh)
      writer.write(step, results_files.flatten(results, task.metric))
      metrics.say(f'step {step} evaluation, {metrics.summary_line(results, task.metric)}')
    preempted = preemption.reached(step)
    if step % config.checkpoint_every_steps == 0 or last or preempted:
      _stop_if_nonfinite(state, checkpointer)
      checkpointer.save(step, state, force=preempted)
    if preempted:
      checkpointer.wait()
      stop = cli.Interrupted if preemption.interrupted else cli.Preempted
      raise stop(f'{preemption.signal_name}: saved a checkpoint at step {step} and stopped; '
                 'run the same command again to resume.')
  # ---------------------------------------------------------------- Final sweep.
  preemption.close()  # The last checkpoint is saved: a Ctrl-C now just stops the sweep.
  results = task.sweep(state['params'], mesh)
  writer.write(config.total_steps, results_files.flatten(results, task.metric))
  metrics.say(f'Final evaluation, {metrics.summary_line(results, task.metric)}; '
              f'{workdir}/extrapolation.json.')
  if jax.process_index() == 0:
    results_files.write_extrapolation(workdir, results, task.metric, task.axis_label,
                                      title=f'{config.model.name} {config.pe.name}',
                                      protocol=task.sweep_protocol, step=config.total_steps)
    task.write_plots(workdir, results)  # Task-specific figures (QA: EM by depth).
  return results


def _stop_if_nonfinite(state, checkpointer) -> None:
  """Raises FloatingPointError if a step's loss or gradients were not finite, after moving
  aside the checkpoints from the step before it on (finite, but they lead to the NaN)."""
  first_bad = int(state['first_nonfinite_step'])
  if not first_bad:
    return
  folder, moved = checkpointer.set_aside_from(first_bad - 1)
  newest = checkpointer.latest_step()
  advice = ('no earlier checkpoint is left: start again with a smaller --config.optimizer.lr'
            if newest is None else
            f'run the same command with a smaller --config.optimizer.lr to resume from the '
            f'checkpoint at step {newest}')
  aside = (f'the checkpoints of steps {", ".join(map(str, moved))} (which lead to it) were moved '
           f'to {folder}, ' if moved else '')
  raise FloatingPointError(
      f'The loss or gradients became NaN or infinite at step {first_bad}; nothing after it was '
      f'saved, {aside}and {advice}.')
