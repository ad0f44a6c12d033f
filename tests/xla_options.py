"""Optimised compiles for the few test programs that run long enough to repay them.

The suite compiles with XLA's optimisations off (conftest.py): its programs are tiny and
mostly compile. A program that draws millions of random numbers (a 124 M-parameter
initialisation, tens of thousands of hard-negative chains) runs 3-5x slower so; these
compile it optimised instead.
"""

import jax

OPTIMISED = {'xla_backend_optimization_level': 2, 'xla_llvm_disable_expensive_passes': False}


def compile_optimised(fn, *args, static_argnums=()):
  """`jax.jit(fn)` compiled for `args`, with XLA's optimisations on."""
  return jax.jit(fn, static_argnums=static_argnums).lower(*args).compile(
      compiler_options=OPTIMISED)
