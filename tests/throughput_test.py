"""The throughput benchmark's analytic FLOPs agree with XLA's count of the compiled step,
and its peak is a real measurement on CPU."""

import pathlib
import subprocess
import sys

import jax
import pytest

from benchmarks import throughput
from configs import lm_base
from seqpe_jax import sharding, state, tasks, train


@pytest.mark.parametrize('variant, seq_len', [('mini', 256)])
def test_model_flops_match_xlas_count_of_the_step(variant, seq_len):
  config = lm_base.get_config(None, pe='ape')
  config.model.variant, config.data.seq_len, config.batch_size = variant, seq_len, 2
  config.data.tokenizer, config.data.vocab_size = 'byte', 257  # Matmuls of the body dominate.
  config.mesh.data = 1
  task = tasks.build(config)
  mesh = sharding.make_mesh(config.mesh)
  optimizer = state.make_optimizer(task, config)
  target = state.abstract_state(task, optimizer, mesh)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=sharding.batch_sharding(mesh)),
                       task.train_batches(0)[0])
  step = train.jit_train_step(task, optimizer, jax.tree.map(lambda x: x.sharding, target), mesh)
  cost = step.lower(target, batch, config.optimizer.lr, jax.random.key(0),
                    task.shift_pool(jax.random.key(1))).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  analytic = throughput.model_flops_per_step(config, task)
  # XLA also counts norms, softmax, the optimizer and the causal half PaLM's count includes.
  assert 0.8 < xla / analytic < 1.25, (xla, analytic)


def test_cpu_peak_is_measured():
  peak, source = throughput.device_peak()
  assert peak > 1e8 and source.startswith('measured float32 matmul')


def test_dtype_overrides_the_paper_configs_own():
  for dtype, expected in (('', 'bfloat16'), ('float32', 'float32')):
    config, _ = throughput.build('lm', 'ape', 'small', 2, dtype)
    assert config.model.dtype == expected


def test_the_command_line_runs_in_the_paper_dtype():
  """The LM's :paper dtype is bfloat16: the benchmark's entry point must compile it on CPU."""
  out = subprocess.run([sys.executable, '-m', 'benchmarks.throughput', '--models=lm',
                        '--scale=tiny', '--steps=1', '--batch=8', '--pes=ape'],
                       capture_output=True, text=True, timeout=900, check=False,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr[-2000:]
  assert '| lm nano bfloat16 | ape | 8 |' in out.stdout  # The suite's 8 devices.
