"""Test helper: SeqPE's q/k projections made larger after initialisation."""

import jax


def scale_kernels(params, factor: float):
  """`params` with every q/k projection kernel times `factor`: what an initial std of
  0.02 * factor gives from the same draws."""
  is_kernel = lambda path: jax.tree_util.keystr(path).endswith("['qk_proj']['kernel']")
  return jax.tree_util.tree_map_with_path(lambda path, x: x * factor if is_kernel(path) else x,
                                          params)
