"""DeiT augmentation against closed forms, the ImageNet pipeline on a tiny generated
ImageNet, and the default pipelines unchanged."""

import hashlib
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest

from benchmarks import input_pipeline
from configs import vit_base
from seqpe_jax import sharding
from seqpe_jax.data import augment, images
from seqpe_jax.tasks import classification

PAPER = augment.Options.from_config(vit_base.get_config('paper', pe='ape').data.augment)


def rng(seed=0):
  return np.random.default_rng(seed)


def mixed_targets(labels_B, mix_labels_B, weights_B, num_classes: int) -> np.ndarray:
  """NumPy oracle: the soft targets [B, classes] of a mixed batch."""
  eye = np.eye(num_classes, dtype=np.float32)
  w = np.asarray(weights_B, np.float32)[:, None]
  return w * eye[labels_B] + (1 - w) * eye[mix_labels_B]


def photo(height=24, width=32, channels=3, seed=0):
  return rng(seed).integers(0, 256, (height, width, channels), np.uint8)


# ------------------------------------------------------------------ Per example.


def test_flip_is_exact():
  image = photo(16, 16)
  flipped = augment.augment_example(image, 16, augment.Options(flip_prob=1.0), rng())
  np.testing.assert_array_equal(flipped, image[:, ::-1])
  unflipped = augment.augment_example(image, 16, augment.Options(), rng())
  np.testing.assert_array_equal(unflipped, image)


def test_random_resized_crop_boxes_shapes_and_identity():
  for seed in range(50):
    top, left, h, w = augment.crop_box(30, 40, rng(seed), (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
    assert 0.06 <= h * w / 1200 <= 1.0 and 0.6 < w / h < 1.6  # Ranges up to rounding.
  for shape in [(24, 32, 3), (50, 20, 3), (28, 28, 1)]:
    out = augment.augment_example(photo(*shape), 16, augment.Options(crop='random_resized'),
                                  rng())
    assert out.shape == (16, 16, shape[2]) and out.dtype == np.uint8
  # Scale 1 and aspect 1 on a square image at its own size: the image itself.
  image = photo(16, 16)
  identity = augment.Options(crop='random_resized', crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
  np.testing.assert_array_equal(augment.augment_example(image, 16, identity, rng()), image)
  # No draw can fit aspect 2 on a square: the centre crop of aspect 2.
  assert augment.crop_box(20, 20, rng(), (1.0, 1.0), (2.0, 2.0)) == (5, 0, 10, 20)


def test_random_erasing():
  image = photo(40, 40)
  assert augment.random_erase(image, rng(), 0.0) is image
  changed_any = False
  for seed in range(20):
    erased = augment.random_erase(image, rng(seed), 1.0)
    changed = np.any(erased != image, axis=-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    if rows.size:
      changed_any = True
      box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
      assert box <= 1600 / 3 + 40  # One rectangle, at most a third (rounding aside).
  assert changed_any
  # The noise is ImageNet's pixel statistics: N(0, 1) in timm's normalised space.
  noise = augment.random_erase(np.zeros((200, 200, 3), np.uint8), rng(3), 1.0)
  erased = noise[np.any(noise > 0, axis=-1)] / 255
  np.testing.assert_allclose(erased.mean(0), augment.IMAGENET_MEAN, atol=0.03)
  np.testing.assert_allclose(erased.std(0), augment.IMAGENET_STD, atol=0.03)


def test_rand_augment_ops_keep_shape_and_mode_and_are_seeded():
  for mode, channels in (('RGB', 3), ('L', 1)):
    pil = augment.to_pil(photo(20, 24, channels))
    for name, op in augment.RAND_AUGMENT_OPS.items():
      out = op(pil, 0.9, rng(), augment.FILL_RGB if mode == 'RGB' else 124)
      assert (out.size, out.mode) == (pil.size, mode), name
  pil = augment.to_pil(photo(20, 24))
  first = np.asarray(augment.rand_augment(pil, rng(5), 2, 9, 0.5))
  np.testing.assert_array_equal(first, np.asarray(augment.rand_augment(pil, rng(5), 2, 9, 0.5)))
  # Magnitude 0: geometric ops move nothing (shear, rotate and translate by 0).
  for name in ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y'):
    np.testing.assert_array_equal(np.asarray(augment.RAND_AUGMENT_OPS[name](pil, 0.0, rng(), 0)),
                                  np.asarray(pil))
  # Posterize keeps the top 4 - 4 * level bits; solarize inverts from 256 - 256 * level.
  ramp = PIL.Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
  posterized = np.asarray(augment.RAND_AUGMENT_OPS['posterize'](ramp, 0.5, rng(), 0))
  np.testing.assert_array_equal(posterized.ravel(), np.arange(256) & 0b11000000)
  solarized = np.asarray(augment.RAND_AUGMENT_OPS['solarize'](ramp, 0.25, rng(), 0)).ravel()
  np.testing.assert_array_equal(solarized, np.where(np.arange(256) >= 192, 255 - np.arange(256),
                                                    np.arange(256)))


# ------------------------------------------------------------------ Per batch.


def test_mixup_blends_images_and_targets_with_lambda():
  batch = rng(1).integers(0, 256, (6, 8, 8, 3), np.uint8)
  labels = np.array([0, 1, 2, 3, 4, 5], np.int32)
  options = augment.Options(mixup_alpha=0.8)
  out = augment.mix_batch(batch, labels, rng(2), options)
  lam = float(out['mix_weight'][0])
  assert np.all(out['mix_weight'] == lam) and 0 < lam < 1
  np.testing.assert_allclose(out['image'], lam * batch + (1 - lam) * batch[::-1], atol=0.5)
  np.testing.assert_array_equal(out['mix_label'], labels[::-1])
  targets = mixed_targets(labels, out['mix_label'], out['mix_weight'], 10)
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(targets[0, [0, 5]], [lam, 1 - lam], rtol=1e-6)
  # The example mixed with itself (odd batches) keeps a one-hot target.
  odd = mixed_targets(np.array([7]), np.array([7]), np.array([0.3]), 10)
  np.testing.assert_allclose(odd[0], np.eye(10)[7])


def test_cutmix_area_matches_lambda():
  batch = np.broadcast_to(np.arange(4, dtype=np.uint8)[:, None, None, None] * 60,
                          (4, 20, 30, 3)).copy()
  labels = np.arange(4, dtype=np.int32)
  for seed in range(10):
    out = augment.mix_batch(batch, labels, rng(seed), augment.Options(cutmix_alpha=1.0))
    pasted = out['image'][0, ..., 0] != batch[0, ..., 0]
    np.testing.assert_allclose(1 - pasted.mean(), out['mix_weight'][0], atol=1e-6)
    rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
    if rows.size:  # The pasted region is one box from the partner image.
      assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
      assert np.all(out['image'][0][pasted] == batch[3, 0, 0])


def test_cutmix_box_sides_are_sqrt_one_minus_lambda_of_the_images():
  # lam = 0.75: sides 0.5 of 40 x 32, i.e. 20 x 16 wherever the box is not clipped at an edge.
  boxes = np.array([augment.cutmix_box(40, 32, 0.75, rng(seed)) for seed in range(40)])
  heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
  inside = (boxes[:, 0] > 0) & (boxes[:, 1] < 40) & (boxes[:, 2] > 0) & (boxes[:, 3] < 32)
  assert inside.any() and np.all(heights[inside] == 20) and np.all(widths[inside] == 16)
  assert heights.max() == 20 and widths.max() == 16 and heights.min() >= 10


def test_mix_switch_and_probability():
  batch = rng(1).integers(0, 256, (4, 6, 6, 3), np.uint8)
  labels = np.arange(4, dtype=np.int32)
  both = augment.Options(mixup_alpha=0.8, cutmix_alpha=1.0, mix_switch_prob=0.5)
  kinds = []
  for seed in range(200):
    out = augment.mix_batch(batch, labels, rng(seed), both)['image']
    kept = np.all(out == batch, axis=-1) | np.all(out == batch[::-1], axis=-1)
    kinds.append(bool(kept.all()))  # Cutmix only copies pixels; mixup blends them.
  assert 0.4 < np.mean(kinds) < 0.6
  never = augment.mix_batch(batch, labels, rng(), augment.Options(mixup_alpha=0.8, mix_prob=0))
  np.testing.assert_array_equal(never['image'], batch)
  assert np.all(never['mix_weight'] == 1)


def loss_of(logits, batch, smoothing=0.1, num_classes=10):
  task = types.SimpleNamespace(config=types.SimpleNamespace(
      model=types.SimpleNamespace(label_smoothing=smoothing)), num_classes=num_classes)
  return classification.ClassificationTask.loss(task, logits, batch)


def test_loss_takes_mixed_targets_and_keeps_hard_labels_bit_identical():
  logits = jax.random.normal(jax.random.key(0), (4, 10))
  labels = jnp.array([1, 2, 3, 4])
  hard, metrics = loss_of(logits, {'label': labels})
  expected = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)).mean()
  assert hard == expected  # The expression the loss had before mixing existed.
  # Label smoothing 0.1 over 10 classes: 0.91 on the label, 0.01 elsewhere.
  smoothed = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)
  np.testing.assert_allclose(smoothed[0, [1, 0]], [0.91, 0.01], rtol=1e-6)
  weights, partners = np.array([0.7] * 4, np.float32), np.array([4, 3, 2, 1])
  mixed, _ = loss_of(logits, {'label': labels, 'mix_label': partners, 'mix_weight': weights})
  targets = mixed_targets(np.asarray(labels), partners, weights, 10) * 0.9 + 0.01
  oracle = -(targets * jax.nn.log_softmax(logits)).sum(1).mean()
  np.testing.assert_allclose(mixed, oracle, rtol=1e-6)
  assert set(metrics) == {'train/accuracy'}


@pytest.mark.parametrize('field, value, message', [
    ('crop', 'random', "crop must be 'centre' or 'random_resized'"),
    ('crop_scale', (0.5, 0.1), 'crop_scale must be'),
    ('flip_prob', 1.5, 'flip_prob is a probability'),
    ('randaugment_magnitude', 11, 'randaugment_magnitude must be in'),
    ('mixup_alpha', -1, 'mixup_alpha must be >= 0'),
    ('colour', 1, "Unknown data.augment field 'colour'"),
])
def test_bad_options_stop_with_one_sentence(field, value, message):
  config = vit_base.get_config('smoke', pe='ape').data.augment
  config.unlock()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    augment.Options.from_config(config)


# ------------------------------------------------------------------ The pipeline.


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """3 classes x 6 train and 2 val JPEGs of 40 x 30 in the ILSVRC layout."""
  root = tmp_path_factory.mktemp('imagenet')
  return input_pipeline.write_jpeg_folders(root, classes=3, per_class=6, val_per_class=2,
                                           size=(40, 30))


def tiny_task(root, **overrides):
  """The `:paper` ViT task (DeiT augmentation, timm init) at 16 px with a nano ViT on `root`."""
  config = vit_base.get_config('paper', pe='ape')
  config.update_from_flattened_dict({
      'data.dir': str(root), 'data.image_size': 16, 'data.valid_size': 2, 'data.workers': 0,
      'model.variant': 'nano/4', 'batch_size': 8, 'eval.resolutions': (16, 24),
      'eval.batch_size': 4, **overrides})
  return classification.ClassificationTask(config)


def test_imagenet_pipeline_on_a_tiny_dataset(tiny_imagenet):
  task = tiny_task(tiny_imagenet)
  splits = task.splits
  assert (len(splits['train']), len(splits['valid']), len(splits['test'])) == (16, 2, 6)
  data = task.train_batches(seed=0)
  batch = data[3]
  assert batch['image'].shape == (8, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and set(batch['label']) <= {0, 1, 2}
  np.testing.assert_array_equal(batch['mix_label'], batch['label'][::-1])
  assert batch['mix_weight'].shape == (8,) and 0 <= batch['mix_weight'][0] <= 1
  # Determined by the seed and the step: again, through a resumed slice, not at another step.
  again = next(iter(data[3:].to_iter_dataset()))
  for key in batch:
    np.testing.assert_array_equal(again[key], batch[key])
  assert not np.array_equal(data[4]['image'], batch['image'])
  # A loss on it: finite, near log(1000) for a fresh model.
  features = task.pe.features(task.pe.init(jax.random.key(1), task.grid(16)), task.grid(16))
  params = task.init_model(jax.random.key(0), features)
  loss, _ = task.loss(task.logits(params, batch, features, train=False), batch)
  assert abs(float(loss) - np.log(1000)) < 0.5


def test_paper_trains_on_the_whole_train_split_and_holds_out_on_request(tiny_imagenet):
  task = tiny_task(tiny_imagenet, **{'data.valid_size': 0})
  assert set(task.splits) == {'train', 'test'} and len(task.splits['train']) == 18
  # The diagnostics' fixed batch comes from the test split when nothing is held out.
  batch = task.heldout_batch(sharding.make_mesh(vit_base.get_config('smoke', pe='ape').mesh))
  first = images.eval_batch(task.splits['test'], 0, batch_size=len(batch['image']),
                           image_size=16, crop=0.875)
  np.testing.assert_array_equal(np.asarray(batch['image']), first['image'])
  with pytest.raises(ValueError, match="eval.split='valid' needs held-out training images"):
    tiny_task(tiny_imagenet, **{'data.valid_size': 0, 'eval.split': 'valid'})
  with pytest.raises(ValueError, match='data.valid_size=18 must leave training examples'):
    tiny_task(tiny_imagenet, **{'data.valid_size': 18})


def test_each_example_is_augmented_the_same_on_any_process(tiny_imagenet):
  """Example randomness is keyed by its global row: reading rows 4..7 as a second process
  would gives the same pixels as reading the whole batch (mixing aside, which is per process)."""
  split = images.ImageFolder(tiny_imagenet / 'train')
  options = augment.Options(**{**PAPER.__dict__, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0})
  idx = np.arange(8)
  whole = images._read_augmented(split, idx, 16, options, seed=0, step=2, first_row=0, process=0)
  second = images._read_augmented(split, idx[4:], 16, options, seed=0, step=2, first_row=4,
                                  process=1)
  np.testing.assert_array_equal(second['image'], whole['image'][4:])


def test_evaluation_crops_and_splits_over_processes(tiny_imagenet):
  task = tiny_task(tiny_imagenet)
  test = task.splits['test']
  full = list(images.eval_batches(test, batch_size=4, image_size=24, crop=0.875))
  assert [b['mask'].tolist() for b in full] == [[True] * 4, [True, True, False, False]]
  assert full[0]['image'].shape == (4, 24, 24, 3)
  # Resize the shorter side (30 px) to 24 / 0.875 = 27, then the centre 24 x 24.
  image = test[0]['image']
  resized = np.asarray(PIL.Image.fromarray(image).resize((36, 27), PIL.Image.BICUBIC))
  np.testing.assert_array_equal(full[0]['image'][0], resized[1:25, 6:30])
  # Two processes, each reading its two rows of every batch, read the whole sweep.
  halves = [list(images.eval_batches(test, batch_size=4, image_size=24, crop=0.875, rows=rows))
            for rows in (np.array([0, 1]), np.array([2, 3]))]
  for b, first, second in zip(full, *halves):
    for key in b:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), b[key])
  one = images.eval_batch(test, 1, batch_size=4, image_size=24, crop=0.875)
  for key in one:
    np.testing.assert_array_equal(one[key], full[1][key])


@pytest.mark.parametrize('override, message', [
    ({'data.workers': -1}, 'data.workers must be a whole number >= 0'),
    ({'data.eval_crop': 0.0}, r'data.eval_crop is the centre crop.s fraction'),
    ({'model.gelu': 'relu'}, 'model.gelu must be one of tanh, erf'),
])
def test_bad_pipeline_settings_stop_with_one_sentence(tiny_imagenet, override, message):
  with pytest.raises(ValueError, match=message):
    tiny_task(tiny_imagenet, **override)


def test_imagenet_holds_out_a_spread_validation_split(tiny_imagenet):
  train, valid = images.holdout(1000, 10, spread=True)
  assert len(set(train) | set(valid)) == 1000 and not set(train) & set(valid)
  assert valid.max() - valid.min() > 500  # Not the tail: class folders are sorted.
  np.testing.assert_array_equal(valid, images.holdout(1000, 10, spread=True)[1])
  assert list(images.holdout(10, 2, spread=False)[1]) == [8, 9]


def test_worker_processes_read_the_same_batches(tiny_imagenet):
  task = tiny_task(tiny_imagenet)
  threaded = list(task.train_batches(seed=0)[:3].to_iter_dataset())
  workers = images.train_batches(task.splits['train'], global_batch=8, seed=0, image_size=16,
                                 options=task.augment, workers=2)
  for a, b in zip(threaded, workers[:3].to_iter_dataset()):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------ Defaults unchanged.


def digest(batch):
  h = hashlib.sha256()
  for key in sorted(batch):
    h.update(key.encode())
    h.update(np.ascontiguousarray(batch[key]).tobytes())
    h.update(str(batch[key].dtype).encode())
  return h.hexdigest()[:16]


# Digests of the pipelines before augmentation existed (same seed, sizes and batches).
DIGITS = {'train': ['dad129fdc227b760', '57958f9a00911f0f'],
          'eval': {8: ('18c5ef1627ad6033', '79857112e7a50b32'),
                   16: ('7e95c20efce933c3', '724b768e4e1e5a14')}}
FASHION = {'train': ['011b68a93fbbbd3f', '278b089fcf8d999a'],
           'eval': {28: ('54c501f6a6033b8c', '56c59df9780d1ae7'),
                    36: ('578cf7e261751a68', '7755e8822736c60e')}}


@pytest.mark.parametrize('name, size, expected', [('digits', 8, DIGITS),
                                                  ('fashion_mnist', 28, FASHION)])
def test_default_pipelines_are_unchanged(name, size, expected):
  if name == 'fashion_mnist' and not pathlib.Path(images.FASHION_MNIST_DIR).exists():
    pytest.skip('Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist).')
  config = vit_base.get_config('smoke' if name == 'digits' else None, pe='ape')
  assert not augment.Options.from_config(config.data.augment).active
  assert (config.data.workers, config.data.eval_crop) == (0, 1.0)
  assert (config.model.gelu, config.model.head_init, config.model.patch_init) == (
      'tanh', 'zeros', 'normal')
  splits = images.load(name, None, valid_size=64)
  train = images.train_batches(splits['train'], global_batch=16, seed=0, image_size=size,
                               options=augment.Options.from_config(config.data.augment))
  assert set(train[0]) == {'image', 'label'}
  assert [digest(train[i]) for i in (0, 3)] == expected['train']
  split = splits['test'] if name == 'digits' else splits['valid']
  for res, (first, last) in expected['eval'].items():
    batches = list(images.eval_batches(split, batch_size=50, image_size=res))
    assert (digest(batches[0]), digest(batches[-1])) == (first, last)


def test_each_row_of_a_batch_draws_its_own_augmentation(tiny_imagenet):
  """The same picture in all 8 rows of a batch comes out 8 different ways: each row has a
  generator of its own (and the same row at the same step draws the same)."""
  split = images.ImageFolder(tiny_imagenet / 'train')
  options = augment.Options(**{**PAPER.__dict__, 'mixup_alpha': 0.0, 'cutmix_alpha': 0.0})
  same = np.zeros(8, np.int64)
  batch = images._read_augmented(split, same, 16, options, seed=0, step=2, first_row=0,
                                 process=0)['image']
  assert len({row.tobytes() for row in batch}) == 8
  draws = [augment.example_rng(0, 2, row).random() for row in (0, 1, 0)]
  assert draws[0] == draws[2] != draws[1]
