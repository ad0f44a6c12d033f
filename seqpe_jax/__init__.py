"""seqpe_jax: Sequential Position Encoding (SeqPE) and its baselines in JAX/Flax."""
