"""Cost of SeqPE's regularisers relative to one encoder pass over the main positions.

    python -m benchmarks.regularizers [--repeats=5]

For the paper's per-device sizes (ViT-S: 14x14 grid, 32 pivots x 64 candidates, 32 groups
x 64 students; GPT-2: 512 tokens, 16 x 32, 16 x 32) it times, in one run and jitted:
the encoder forward over the main positions alone (the unit), all sampling, both losses on
given embeddings, and the whole unshifted step (one encoder pass over main + pivots +
candidates + students, sampling, losses), forward and forward+backward.
"""

import argparse
import jax
import jax.numpy as jnp

from benchmarks.timing import describe_backend, median_seconds
from seqpe_jax import positions, posenc
from seqpe_jax.posenc import contrastive_sampling, losses, regularizers, sampling

SETTINGS = {
    'ViT-S/16 (14x14, P=100)': dict(
        host=dict(d_model=384, num_heads=6, train_shape=(14, 14), num_prefix=1),
        seqpe=dict(d_model=384, num_heads=6, max_position=100),
        sizes=dict(pivots=32, candidates=64, groups=32, teachers=64, windows=32)),
    'GPT-2 (512 tokens, P=20000)': dict(
        host=dict(d_model=768, num_heads=12, train_shape=(512,), causal=True),
        seqpe=dict(d_model=768, num_heads=12, max_position=20_000),
        sizes=dict(pivots=16, candidates=32, groups=16, teachers=32, windows=16)),
}


def build(setting):
  cfg = posenc.config.get_config()
  cfg.inject.method = 'attn_mul'
  for key, value in setting['seqpe'].items():
    cfg.seqpe[key] = value
  s = setting['sizes']
  cfg.contrastive.num_pivots, cfg.contrastive.num_candidates = s['pivots'], s['candidates']
  cfg.ood.num_groups, cfg.ood.num_teachers = s['groups'], s['teachers']
  cfg.shift.num_windows, cfg.shift.prob = s['windows'], 0.0  # Time the common unshifted step.
  pe = posenc.build(cfg, posenc.HostSpec(**setting['host']))
  return pe, regularizers.build(cfg, pe)


def run(name, setting, repeats):
  pe, reg = build(setting)
  shape = reg.train_shape
  params = pe.init(jax.random.key(0), shape)
  pool = reg.shift_pool(jax.random.key(1))
  key = jax.random.key(2)
  enc = pe.seqpe_encoder
  grid = positions.grid(shape)

  main = jax.jit(lambda p, k: pe.source.apply({'params': p}, grid, deterministic=False,
                                               rngs={'dropout': k}, method='encode'))

  def sample_all(k):
    k1, k2, k3 = jax.random.split(k, 3)
    return (contrastive_sampling.sample_contrastive(k1, reg.contrastive),
            sampling.sample_ood(k2, train_shape=shape, max_position=reg.max_position,
                                num_groups=reg.ood_groups, num_teachers=reg.ood_teachers),
            sampling.sample_shift(k3, pool, num_windows=reg.num_windows, prob=reg.shift_prob))

  spec, d = reg.contrastive, enc.d_out
  e = jax.random.normal(key, (spec.num_pivots * (spec.num_candidates + 1)
                              + 2 * reg.ood_groups * reg.ood_teachers, d))
  ct = jax.jit(lambda k: contrastive_sampling.sample_contrastive(k, spec))(key)

  def both_losses(e):
    b, k = spec.num_pivots, spec.num_candidates
    piv, cand = e[:b], e[b:b + b * k].reshape(b, k, d)
    t, s = jnp.split(e[b + b * k:].reshape(2 * reg.ood_groups, reg.ood_teachers, d), 2)
    return (losses.contrastive_loss(piv, cand, ct['labels'], ct['valid'])
            + losses.ood_distillation_loss(t, s, num_heads=reg.ood_heads))

  step = jax.jit(lambda p, k: regularizers.seqpe_step(pe, p, k, pool, reg)[1]['loss'])
  main_grad = jax.jit(jax.grad(lambda p, k: jnp.sum(main(p, k))))
  step_grad = jax.jit(jax.grad(lambda p, k: jnp.sum(regularizers.seqpe_step(
      pe, p, k, pool, reg)[0]['e']) + regularizers.seqpe_step(pe, p, k, pool, reg)[1]['loss']))

  t_main = median_seconds(main, params, key, repeats=repeats)
  t_sample = median_seconds(jax.jit(sample_all), key, repeats=repeats)
  t_losses = median_seconds(jax.jit(both_losses), e, repeats=repeats)
  t_step = median_seconds(step, params, key, repeats=repeats)
  t_main_grad = median_seconds(main_grad, params, key, repeats=repeats)
  t_step_grad = median_seconds(step_grad, params, key, repeats=repeats)
  n_main = grid.shape[0]
  n_all = n_main + spec.num_pivots * (1 + spec.num_candidates) + reg.ood_groups * reg.ood_teachers
  print(f'{name}: encoder sequences per unshifted step {n_all} = {n_all / n_main:.1f}x main {n_main}')
  print(f'  main encoder forward {t_main * 1e3:.1f} ms | sampling {t_sample * 1e3:.1f} ms | '
        f'losses {t_losses * 1e3:.1f} ms')
  print(f'  (sampling + losses) / main forward = {(t_sample + t_losses) / t_main:.2f}x (target <= 1.5x)')
  print(f'  whole step forward / main forward = {t_step / t_main:.2f}x | '
        f'whole step fwd+bwd / main fwd+bwd = {t_step_grad / t_main_grad:.2f}x')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(describe_backend())
  for name, setting in SETTINGS.items():
    run(name, setting, args.repeats)


if __name__ == '__main__':
  main()
