"""Image classification with a ViT: train at one resolution, evaluate at larger ones.

Evaluation resizes the test images (bicubic): the patch grid grows, the patch size stays,
and each PE extends to the new grid its own way. The loss mixes mixup/cutmix one-hot targets
before label smoothing (smoothing is affine, so this equals mixing smoothed ones).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from seqpe_jax import metrics, posenc, sharding
from seqpe_jax.data import augment, batching, images
from seqpe_jax.models import vit
from seqpe_jax.tasks import base, common


class ClassificationTask(base.Task):
  """Everything the trainer needs for a ViT experiment."""
  metric = 'accuracy'
  axis_label = 'resolution (px)'
  sweep_protocol = 'shorter side resized (bicubic), centre crop'

  def __init__(self, config):
    self.config = config
    size = config.data.image_size
    self.variant = vit.parse_variant(config.model.variant)
    for res in [size, *config.eval.resolutions]:
      vit.patch_grid(res, self.variant['patch_size'])
    # Runs saved before these fields existed trained without augmentation, read in threads
    # and evaluated without a crop margin; their configs still evaluate that way.
    self.augment = augment.Options.from_config(config.data.get('augment'))
    self.workers = config.data.get('workers', 0)
    batching.check_workers(self.workers)
    self.eval_crop = config.data.get('eval_crop', 1.0)
    if not 0 < self.eval_crop <= 1:
      raise ValueError(f'data.eval_crop is the centre crop\'s fraction of the resized image, in '
                       f'(0, 1], got {self.eval_crop}.')
    if self.eval_crop != 1:
      self.sweep_protocol = (f'shorter side resized to resolution / {self.eval_crop} (bicubic), '
                             'centre crop')
    init_options = vit.InitOptions.from_config(config.model)
    self.splits = images.load(config.data.name, config.data.dir or None,
                              valid_size=config.data.valid_size)
    if config.eval.split == 'valid' and 'valid' not in self.splits:
      raise ValueError("eval.split='valid' needs held-out training images: set "
                       'data.valid_size above 0.')
    if config.eval.split not in self.splits:
      raise ValueError(f"eval.split must be one of {', '.join(self.splits)}, got "
                       f"'{config.eval.split}'.")
    self.num_classes = images.NUM_CLASSES[config.data.name]
    host = vit.host_spec(config.model.variant, size, common.model_dtype(config))
    self.train_shape = host.train_shape
    self.pe, self.regularizers, self.shifts = common.build_pe(
        config, host, [self.grid(res) for res in config.eval.resolutions])
    self.model = vit.ViT(self.num_classes, pe=self.pe, dropout=config.model.dropout,
                         init_options=init_options, dtype=common.model_dtype(config),
                         **self.variant)
    self.channels = self.splits['train'][0]['image'].shape[-1]

  def grid(self, resolution: int) -> tuple[int, int]:
    g = vit.patch_grid(resolution, self.variant['patch_size'])
    return (g, g)

  def init_model(self, key, features):
    size = self.config.data.image_size
    images_ = jnp.zeros((1, size, size, self.channels), jnp.float32)
    return self.model.init(key, images_, features)['params']

  def train_batches(self, seed: int):
    return images.train_batches(self.splits['train'], global_batch=self.config.batch_size,
                                seed=seed, image_size=self.config.data.image_size,
                                options=self.augment, workers=self.workers)

  def heldout_batch(self, mesh):
    """A fixed batch of validation images at the training resolution (diagnostics); with
    no validation split (data.valid_size 0) test images: the diagnostics choose nothing."""
    batch_size = sharding.eval_batch_size(self.config.eval.batch_size, mesh)
    rows = sharding.process_rows(batch_size, mesh)
    return sharding.global_batch(images.eval_batch(
        self.splits.get('valid', self.splits['test']), 0, batch_size=batch_size,
        image_size=self.config.data.image_size, rows=rows, crop=self.eval_crop), mesh)

  def logits(self, model_params, batch, features, *, train: bool, rng=None, mutable=False,
             probes=None):
    """Logits [B, classes]; with `mutable` (collection names) also the updated collections."""
    x = images.normalize(batch['image'])
    rngs = {'dropout': rng} if train else None
    return self.model.apply({'params': model_params}, x, features, deterministic=not train,
                            rngs=rngs, mutable=mutable, probes=probes)

  def loss(self, logits, batch):
    """Label-smoothed cross-entropy and accuracy (against each image's own label)."""
    smoothing = self.config.model.label_smoothing
    targets = jax.nn.one_hot(batch['label'], self.num_classes)
    if 'mix_weight' in batch:  # Mixup / cutmix: each image is a blend of two examples.
      w = batch['mix_weight'][:, None]
      targets = w * targets + (1 - w) * jax.nn.one_hot(batch['mix_label'], self.num_classes)
    targets = optax.smooth_labels(targets, smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, {'train/accuracy': accuracy}

  def sweep(self, params, mesh, split: str | None = None) -> dict[int, dict[str, float]]:
    """Top-1 accuracy on `split` (default eval.split) at every eval resolution, on all devices."""
    split = split or self.config.eval.split
    tables = posenc.TableCache(self.pe, params['pe'])
    batch_size = sharding.eval_batch_size(self.config.eval.batch_size, mesh)
    rows = sharding.process_rows(batch_size, mesh)
    results = {}
    progress = metrics.SweepProgress(self.axis_label, self.metric)
    for res in self.config.eval.resolutions:
      features = tables(self.grid(res))
      correct, total = sharding.sum_per_batch(
          _eval_step(self, params['model'], features, sharding.global_batch(b, mesh))
          for b in images.eval_batches(self.splits[split], batch_size=batch_size, image_size=res,
                                       rows=rows, crop=self.eval_crop, workers=self.workers))
      results[res] = {'accuracy': int(correct) / int(total)}
      progress.done(res, results[res])
    return results


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(task, model_params, features, batch):
  logits = task.logits(model_params, batch, features, train=False)
  hits = (jnp.argmax(logits, -1) == batch['label']) & batch['mask']
  return jnp.sum(hits), jnp.sum(batch['mask'])
