"""Image classification data: Fashion-MNIST (default), scikit-learn digits (tests), ImageNet.

Splits are uint8 arrays in memory, or random-access sources for ImageNet (a TFDS-prepared
`imagenet2012`, or the ILSVRC class-folder layout of JPEGs). Training batches are addressed
by step (`batching.py`); augmentation is seeded by the seed, the step and the row, so a
resumed run still reads exactly the batches an uninterrupted run would.
"""

import dataclasses
import gzip
import os
import pathlib

import grain
import jax
import numpy as np
import PIL.Image

from seqpe_jax.data import augment, batching

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                       'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
NUM_CLASSES = {'fashion_mnist': 10, 'digits': 10, 'imagenet2012': 1000}


@dataclasses.dataclass(frozen=True)
class Split:
  """Images uint8[N, H, W, C] and labels int32[N]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    return {'image': self.images[index], 'label': self.labels[index]}


def read_idx(path: pathlib.Path) -> np.ndarray:
  """A gzip-compressed IDX file (the MNIST format) as a uint8 array."""
  data = gzip.decompress(path.read_bytes())
  if data[:2] != b'\0\0' or data[2] != 0x08:
    raise ValueError(f'{path} is not an unsigned-byte IDX file.')
  ndim = data[3]
  shape = np.frombuffer(data, '>u4', count=ndim, offset=4).astype(int)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: str | None) -> dict[str, Split]:
  """Fashion-MNIST from `data_dir`, else from the Debian package's directory."""
  directory = pathlib.Path(data_dir or FASHION_MNIST_DIR)
  if not all((directory / f).exists() for files in FASHION_MNIST_FILES.values() for f in files):
    raise FileNotFoundError(
        f'Fashion-MNIST is not in {data_dir or FASHION_MNIST_DIR}: install it with `apt-get '
        'install dataset-fashion-mnist`, or put the four original *-ubyte.gz files from '
        'github.com/zalandoresearch/fashion-mnist there and set --config.data.dir.')
  return {split: Split(read_idx(directory / images)[..., None],
                       read_idx(directory / labels).astype(np.int32))
          for split, (images, labels) in FASHION_MNIST_FILES.items()}


def load_digits() -> dict[str, Split]:
  """scikit-learn's 1,797 8x8 digits (inside its wheel): 1,497 train, 300 test."""
  from sklearn import datasets  # Imported here: only tests and smoke configs need it.
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  return {'train': Split(images[:-300], labels[:-300]), 'test': Split(images[-300:], labels[-300:])}


def load_imagenet(data_dir: str | None) -> dict[str, object]:
  """ImageNet-1k, {'train', 'validation'}: ILSVRC class folders of JPEGs under `data_dir`
  (train/<wnid>/, val/<wnid>/, as timm reads them), else TFDS's prepared `imagenet2012`."""
  if data_dir and ImageFolder.holds(pathlib.Path(data_dir) / 'train'):
    root = pathlib.Path(data_dir)
    if not ImageFolder.holds(root / 'val'):
      raise FileNotFoundError(f'{root}/train holds ImageNet class folders but {root}/val does '
                              'not: put the validation images in val/<wnid>/ as well.')
    return {'train': ImageFolder(root / 'train'), 'validation': ImageFolder(root / 'val')}
  try:
    import tensorflow_datasets as tfds  # Optional: only the paper configs read ImageNet.
  except ImportError as e:
    raise ImportError('Reading ImageNet needs tensorflow-datasets (pip install '
                      'tensorflow-datasets), or set --config.data.dir to a folder with the '
                      'ILSVRC train/<wnid>/ and val/<wnid>/ JPEG folders.') from e
  try:
    return {split: tfds.data_source('imagenet2012', split=split, data_dir=data_dir, download=False)
            for split in ('train', 'validation')}
  except Exception as e:  # TFDS raises several types for a missing dataset.
    raise FileNotFoundError(
        f'ImageNet-1k is not prepared under {data_dir or "~/tensorflow_datasets"}: prepare '
        'the TFDS imagenet2012 dataset (manual download of the ILSVRC2012 tars), or unpack '
        'the JPEGs into train/<wnid>/ and val/<wnid>/ there, and set --config.data.dir.') from e


class ImageFolder:
  """A random-access split of JPEGs in ROOT/<class>/: label = the class folder's rank in
  name order (for ImageNet the sorted wnids, the order TFDS's labels follow too)."""

  def __init__(self, root: pathlib.Path):
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    # scandir's entries know their type without a stat per file (1.28 M of them).
    files = [(f'{c}/{name}', label) for label, c in enumerate(classes)
             for name in sorted(e.name for e in os.scandir(root / c) if e.is_file())]
    self.root = str(root)
    # Byte strings in one array: a few bytes per image to send to each worker process.
    self.files = np.array([name.encode() for name, _ in files])
    self.labels = np.array([label for _, label in files], np.int32)

  @staticmethod
  def holds(path: pathlib.Path) -> bool:
    return path.is_dir() and any(d.is_dir() for d in path.iterdir())

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    with PIL.Image.open(f'{self.root}/{self.files[index].decode()}') as image:
      pixels = np.asarray(image.convert('RGB'))
    return {'image': pixels, 'label': self.labels[index]}


class Subset:
  """The examples `indices` of a random-access split, in that order."""

  def __init__(self, split, indices: np.ndarray):
    self._split, self._indices = split, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, index):
    if not 0 <= index < len(self._indices):
      raise IndexError(index)
    return self._split[int(self._indices[index])]


def load(name: str, data_dir: str | None, *, valid_size: int) -> dict[str, Split]:
  """{'train', 'valid', 'test'}: 'valid' is `valid_size` training examples held out of
  'train' (for choosing variants); {'train', 'test'} when `valid_size` is 0."""
  if name == 'fashion_mnist':
    splits = load_fashion_mnist(data_dir)
  elif name == 'digits':
    splits = load_digits()
  elif name == 'imagenet2012':
    splits = load_imagenet(data_dir)
    splits = {'train': splits['train'], 'test': splits['validation']}
  else:
    raise ValueError(f"Unknown image dataset '{name}'; use fashion_mnist, digits or imagenet2012.")
  n = len(splits['train'])
  if not 0 <= valid_size < n:
    raise ValueError(f'data.valid_size={valid_size} must leave training examples (0 holds none '
                     f'out); the {name} train split has {n}.')
  if valid_size == 0:
    return splits
  train, valid = holdout(n, valid_size, spread=name == 'imagenet2012')
  return {'train': Subset(splits['train'], train), 'valid': Subset(splits['train'], valid),
          'test': splits['test']}


def holdout(n: int, valid_size: int, *, spread: bool) -> tuple[np.ndarray, np.ndarray]:
  """(train, valid) indices: the last `valid_size` examples, or with `spread` a fixed random
  `valid_size` (the same for every run and seed): ImageNet's class folders are sorted by
  class, so their tail would hold out whole classes."""
  if not spread:
    return np.arange(n - valid_size), np.arange(n - valid_size, n)
  held = np.zeros(n, bool)
  held[np.random.default_rng(0).choice(n, valid_size, replace=False)] = True
  return np.flatnonzero(~held), np.flatnonzero(held)


def train_batches(split, *, global_batch: int, seed: int, image_size: int,
                  options: augment.Options = augment.Options(),
                  workers: int = 0) -> batching.StepBatches:
  """Shuffled, repeated training batches augmented as `options` say; element s is step s's."""
  if not options.active:
    return batching.step_batches(len(split), global_batch=global_batch, seed=seed,
                                 read=lambda idx: _read(split, idx, image_size), workers=workers)
  indices, first = batching.step_indices(len(split), global_batch=global_batch, seed=seed)
  process = jax.process_index()
  read = lambda step, idx: _read_augmented(split, idx, image_size, options, seed=seed,
                                           step=step, first_row=first, process=process)
  return batching.StepBatches(indices.map_with_index(read), workers)


def eval_batches(split, *, batch_size: int, image_size: int, rows: np.ndarray | None = None,
                 crop: float = 1.0, workers: int = 0):
  """Every example once, in order, the last batch padded and masked; with `rows`, only those
  rows of each batch (a process's share), read by threads or `workers` processes."""
  n = len(split)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  idx = (np.arange(-(-n // batch_size))[:, None] * batch_size + rows[None]).ravel()
  examples = grain.MapDataset.range(len(idx)).map(
      lambda i: _read_eval(split, idx[i], n, image_size, crop))
  return iter(batching.read(examples, workers).batch(len(rows)))


def eval_batch(split, index: int, *, batch_size: int, image_size: int,
               rows: np.ndarray | None = None, crop: float = 1.0) -> dict[str, np.ndarray]:
  """Batch `index` of `eval_batches`, read in this thread (one batch, e.g. for diagnostics)."""
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  examples = [_read_eval(split, index * batch_size + r, len(split), image_size, crop) for r in rows]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _read_eval(split, i: int, n: int, image_size: int, crop: float) -> dict[str, np.ndarray]:
  example = split[int(min(i, n - 1))]  # Padding rows repeat the last example, masked out.
  return {'image': augment.resize_shorter_and_crop(example['image'], image_size, crop),
          'label': np.int32(example['label']), 'mask': np.bool_(i < n)}


def _read(split, idx: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
  examples = [split[int(i)] for i in idx]
  images = np.stack([augment.resize_shorter_and_crop(e['image'], image_size) for e in examples])
  return {'image': images, 'label': np.asarray([e['label'] for e in examples], np.int32)}


def _read_augmented(split, idx: np.ndarray, image_size: int, options: augment.Options, *,
                    seed: int, step: int, first_row: int, process: int) -> dict[str, np.ndarray]:
  """This process's rows of step `step`, augmented; example randomness is keyed by its row
  of the global batch, so it does not depend on how many processes share the batch."""
  examples = [split[int(i)] for i in idx]
  images = np.stack([augment.augment_example(e['image'], image_size, options,
                                             augment.example_rng(seed, step, first_row + j))
                     for j, e in enumerate(examples)])
  batch = {'image': images, 'label': np.asarray([e['label'] for e in examples], np.int32)}
  if options.mixes:
    batch.update(augment.mix_batch(images, batch['label'], augment.batch_rng(seed, step, process),
                                   options))
  return batch


def normalize(images_uint8: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 roughly in [-1, 1]."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0
