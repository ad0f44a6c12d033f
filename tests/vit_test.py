"""ViT model, the paper configs against the method doc's table, optimizer and sharding rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vit_ape, vit_base, vit_seqpe
from seqpe_jax import optim, posenc, sharding
from seqpe_jax.models import vit
from tests import xla_options


def test_paper_config_matches_the_method_table():
  c = vit_seqpe.get_config('paper')
  assert (c.model.variant, c.data.name, c.data.image_size, c.batch_size) == (
      'S/16', 'imagenet2012', 224, 1024)
  assert c.eval.resolutions == (224, 320, 384, 448, 512, 640, 672)
  assert (c.pe.name, c.pe.inject.qk_proj, c.pe.inject.multi_head) == ('seqpe', 'per_layer', True)
  assert posenc.build(c.pe, vit.host_spec('S/16', 224)).method == 'attn_mul'
  s = c.pe.seqpe
  assert (s.base, s.max_position, s.d_model, s.num_heads, s.num_layers, s.dropout) == (
      10, 100, 384, 6, 2, 0.1)
  assert (c.pe.contrastive.num_pivots, c.pe.contrastive.num_candidates) == (128, 64)
  assert (c.pe.ood.num_groups, c.pe.ood.num_teachers) == (128, 64)
  assert (c.pe.contrastive.weight, c.pe.ood.weight, c.pe.shift.prob) == (0.1, 0.1, 0.1)
  assert (c.pe.shift.pool_size, c.pe.shift.num_windows) == (320, 128)
  o = c.optimizer
  assert (o.lr, o.min_lr, o.warmup_init, o.weight_decay, o.seqpe_weight_decay) == (
      1.2e-3, 1e-5, 1e-6, 0.05, 0.0)
  assert (o.b1, o.b2, o.eps, o.clip_seqpe, o.clip_host) == (0.9, 0.999, 1e-8, 5.0, 5.0)
  assert (c.total_steps, c.optimizer.warmup_steps) == (500_400, 25_020)
  assert c.model.label_smoothing == 0.1
  baseline = vit_ape.get_config('paper')
  assert (baseline.pe.contrastive.weight, baseline.pe.ood.weight, baseline.pe.shift.prob) == (
      0, 0, 0)


def test_paper_config_is_the_deit_recipe_on_a_timm_vit():
  c = vit_seqpe.get_config('paper')
  a = c.data.augment
  assert (a.crop, a.crop_scale, a.crop_ratio, a.flip_prob) == (
      'random_resized', (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
  assert (a.randaugment_ops, a.randaugment_magnitude, a.randaugment_magnitude_std) == (2, 9, 0.5)
  assert (a.mixup_alpha, a.cutmix_alpha, a.mix_prob, a.mix_switch_prob) == (0.8, 1.0, 1.0, 0.5)
  assert (a.erase_prob, c.model.label_smoothing, c.data.eval_crop) == (0.25, 0.1, 0.875)
  assert c.data.valid_size == 0 and c.data.workers > 0
  assert (c.model.gelu, c.model.head_init, c.model.patch_init) == ('erf', 'trunc_normal', 'torch')


def nano_vit(num_classes=10, **init):
  """A nano/4 ViT at 16 px with `init` options, its parameters and a forward's inputs."""
  c = vit_base.get_config('smoke', pe='ape')
  pe = posenc.build(c.pe, vit.host_spec('nano/4', 16))
  v = vit.parse_variant('nano/4')
  model = vit.ViT(num_classes, v['width'], v['depth'], v['num_heads'], v['mlp_dim'],
                  v['patch_size'], pe, init_options=vit.InitOptions(**init))
  images = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3), minval=-1, maxval=1)
  features = pe.features(pe.init(jax.random.key(1), (4, 4)), (4, 4))
  return model, model.init(jax.random.key(2), images, features)['params'], images, features


def test_head_and_patch_initialisation():
  _, params, _, _ = nano_vit(1000)
  assert not params['head']['kernel'].any() and not params['patch_embed']['bias'].any()
  np.testing.assert_allclose(params['patch_embed']['kernel'].std(), 0.02, rtol=0.1)
  _, params, _, _ = nano_vit(1000, head_init='trunc_normal', patch_init='torch')
  np.testing.assert_allclose(params['head']['kernel'].std(), 0.02, rtol=0.05)
  bound = 1 / np.sqrt(4 * 4 * 3)  # PyTorch's Conv2d default: U(+-1/sqrt(fan_in)).
  for name in ('kernel', 'bias'):
    values = np.asarray(params['patch_embed'][name])
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound
  np.testing.assert_allclose(params['patch_embed']['kernel'].std(), bound / np.sqrt(3), rtol=0.1)
  with pytest.raises(ValueError, match="model.head_init must be one of zeros, trunc_normal"):
    vit.InitOptions.from_config({'head_init': 'xavier'})


@pytest.mark.parametrize('gelu', ['tanh', 'erf'])
def test_mlp_activation(gelu):
  model, params, images, features = nano_vit(gelu=gelu)
  # Pre-activations of order 1, where the two GELUs differ by up to 1e-3.
  params['encoder']['block_0']['mlp_in']['kernel'] *= 50
  _, state = model.apply({'params': params}, images, features, capture_intermediates=True,
                         mutable=['intermediates'])
  block = state['intermediates']['encoder']['block_0']
  h, out = block['mlp_in']['__call__'][0], block['mlp_out']['__call__'][0]
  dense = params['encoder']['block_0']['mlp_out']
  for approximate in (True, False):
    expected = jax.nn.gelu(h, approximate=approximate) @ dense['kernel'] + dense['bias']
    close = np.allclose(out, expected, rtol=0, atol=1e-6)
    assert close == (approximate == (gelu == 'tanh')), approximate


def test_vit_s16_takes_a_step_at_224():
  c = vit_seqpe.get_config('paper')
  host = vit.host_spec('S/16', 224)
  pe = posenc.build(c.pe, host)
  v = vit.parse_variant('S/16')
  model = vit.ViT(1000, v['width'], v['depth'], v['num_heads'], v['mlp_dim'], v['patch_size'], pe)
  images = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
  pe_params = pe.init(jax.random.key(1), (14, 14))
  features = pe.features(pe_params, (14, 14))
  init = xla_options.compile_optimised(model.init, jax.random.key(2), images, features)
  params = {'model': init(jax.random.key(2), images, features)['params'],  # 22 M draws.
            'pe': pe_params}
  count = sum(x.size for x in jax.tree.leaves(params)) / 1e6
  assert 22 + 3.7 + 12 * 0.29 < count < 22.5 + 3.8 + 12 * 0.31  # ViT-S + encoder + projections.
  optimizer = optim.make(c.optimizer, params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits = model.apply({'params': p['model']}, images, pe.features(p['pe'], (14, 14)))
      return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([3, 7])).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params, learning_rate=1e-3)
    return optax.apply_updates(params, updates), opt_state, value

  new_params, opt_state, loss = step(params, optimizer.init(params))
  assert np.isfinite(loss) and abs(float(loss) - np.log(1000)) < 0.1
  # The zero-initialised head passes no gradient back on the first step; the second does.
  new_params, _, _ = step(new_params, opt_state)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_params, params)
  assert moved['pe']['encoder']['digit_embed'] > 0 and moved['model']['head']['kernel'] > 0


def test_separate_clipping_and_decay_masks():
  c = vit_base.get_config('smoke', pe='seqpe').optimizer
  params = {'model': {'encoder': {'ln': {'scale': jnp.ones(4)}, 'dense': {'kernel': jnp.ones((4, 4)),
                                                                            'bias': jnp.ones(4)}},
                      'cls': jnp.ones((1, 1, 4))},
            'pe': {'encoder': {'digit_embed': jnp.ones((10, 4)), 'block_0': {'qkv_kernel': jnp.ones((4, 12))}},
                   'prefix': jnp.ones((1, 4))}}
  decay = jax.tree_util.tree_map_with_path(optim.decays, params)
  assert decay['model']['encoder']['dense']['kernel']
  assert not any([decay['model']['encoder']['dense']['bias'], decay['model']['encoder']['ln']['scale'],
                  decay['model']['cls'], decay['pe']['prefix'],
                  decay['pe']['encoder']['digit_embed'], decay['pe']['encoder']['block_0']['qkv_kernel']])
  seqpe_decay = jax.tree_util.tree_map_with_path(optim.seqpe_decays, params)
  assert seqpe_decay['pe']['encoder']['block_0']['qkv_kernel']
  assert not seqpe_decay['pe']['encoder']['digit_embed']
  # Gradients of norm 100 (SeqPE) and 1 (host): clipping scales only the SeqPE group.
  clip_only = optax.multi_transform(
      {'seqpe': optax.clip_by_global_norm(c.clip_seqpe), 'host': optax.clip_by_global_norm(c.clip_host)},
      jax.tree_util.tree_map_with_path(lambda p, _: 'seqpe' if optim.is_seqpe_encoder(p) else 'host', params))
  grads = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x), params)
  grads['pe']['encoder']['digit_embed'] = jnp.full((10, 4), 100 / np.sqrt(40))
  grads['model']['cls'] = jnp.full((1, 1, 4), 0.5)
  clipped, _ = clip_only.update(grads, clip_only.init(params))
  np.testing.assert_allclose(optax.tree.norm(clipped['pe']['encoder']), 5.0, rtol=1e-5)
  np.testing.assert_allclose(clipped['model']['cls'], grads['model']['cls'])


def test_parameter_sharding_rules():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert sharding.param_spec('model/encoder/block_0/mlp_in/kernel', (64, 128), mesh) == (
      jax.sharding.PartitionSpec('fsdp', 'tensor'))
  assert sharding.param_spec('model/head/kernel', (64, 10), mesh) == (
      jax.sharding.PartitionSpec(None, None))  # Too small to be worth sharding.
  assert sharding.param_spec('model/x/kernel', (4097, 3), mesh) == (
      jax.sharding.PartitionSpec(None, None))  # Nothing divides: replicated.
  with pytest.raises(ValueError, match='At most one of mesh.data, mesh.fsdp, mesh.tensor may be -1'):
    sharding.make_mesh({'data': -1, 'fsdp': -1, 'tensor': 1})
  with pytest.raises(ValueError, match='does not divide 8 devices'):
    sharding.make_mesh({'data': -1, 'fsdp': 3, 'tensor': 1})
  # -1 takes the devices the others leave; a size-1 tensor axis shards nothing.
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 2, 'tensor': 1})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  assert sharding.param_spec('model/encoder/block_0/mlp_in/kernel', (64, 128), mesh) == (
      jax.sharding.PartitionSpec(None, 'fsdp'))
  with pytest.raises(ValueError, match='batch_size=6 is not divisible by the 8 data-parallel '
                                       'devices'):
    sharding.check_batch(6, mesh)
