"""Image classification data: Fashion-MNIST (default), scikit-learn digits (tests), ImageNet.

Splits are uint8 arrays in memory (or a random-access TFDS source for ImageNet). Training
batches come from a grain `MapDataset`, which is random access: the batch of step s is
`dataset[s]`, so a resumed run reads exactly the batches an uninterrupted run would, and
the data-iterator state is just the step.
"""

import dataclasses
import gzip
import pathlib

import grain
import jax
import numpy as np

from seqpe_jax.data import batching

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
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
  """Reads a gzip-compressed IDX file (the MNIST format) into a uint8 array."""
  data = gzip.decompress(path.read_bytes())
  if data[:2] != b'\0\0' or data[2] != 0x08:
    raise ValueError(f'{path} is not an unsigned-byte IDX file.')
  ndim = data[3]
  shape = np.frombuffer(data, '>u4', count=ndim, offset=4).astype(int)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: str | None) -> dict[str, Split]:
  """Fashion-MNIST from `data_dir`, else from the Debian package's directory."""
  candidates = [data_dir] if data_dir else [FASHION_MNIST_DIR]
  for directory in map(pathlib.Path, candidates):
    if all((directory / f).exists() for files in FASHION_MNIST_FILES.values() for f in files):
      splits = {}
      for split, (images, labels) in FASHION_MNIST_FILES.items():
        splits[split] = Split(read_idx(directory / images)[..., None],
                              read_idx(directory / labels).astype(np.int32))
      return splits
  raise FileNotFoundError(
      f'Fashion-MNIST is not in {candidates[0]}: install it with `apt-get install '
      'dataset-fashion-mnist`, or put the four original *-ubyte.gz files from '
      'github.com/zalandoresearch/fashion-mnist there and set --config.data.dir.')


def load_digits() -> dict[str, Split]:
  """scikit-learn's 1,797 8x8 digits (inside its wheel): 1,497 train, 300 test."""
  from sklearn import datasets  # Imported here: only tests and smoke configs need it.
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  return {'train': Split(images[:-300], labels[:-300]), 'test': Split(images[-300:], labels[-300:])}


def load_imagenet(data_dir: str | None) -> dict[str, object]:
  """ImageNet-1k prepared with TFDS (`imagenet2012`), read without TensorFlow."""
  try:
    import tensorflow_datasets as tfds  # Optional: only the paper configs read ImageNet.
  except ImportError as e:
    raise ImportError('Reading ImageNet needs tensorflow-datasets: pip install '
                      'tensorflow-datasets.') from e
  try:
    return {split: tfds.data_source('imagenet2012', split=split, data_dir=data_dir,
                                    download=False)
            for split in ('train', 'validation')}
  except Exception as e:  # TFDS raises several types for a missing dataset.
    raise FileNotFoundError(
        f'ImageNet-1k is not prepared under {data_dir or "~/tensorflow_datasets"}: prepare '
        'the TFDS imagenet2012 dataset (manual download of the ILSVRC2012 tars) and set '
        '--config.data.dir.') from e


class Subset:
  """Examples [start, stop) of a random-access split."""

  def __init__(self, split, start: int, stop: int):
    self._split, self._start, self._len = split, start, stop - start

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    if not 0 <= index < self._len:
      raise IndexError(index)
    return self._split[self._start + int(index)]


def load(name: str, data_dir: str | None, *, valid_size: int) -> dict[str, Split]:
  """{'train', 'valid', 'test'}: 'valid' is the last `valid_size` training examples, held
  out of 'train' for choosing between variants (the test split is only for reporting)."""
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
  if not 0 < valid_size < n:
    raise ValueError(f'data.valid_size={valid_size} must leave training examples and hold at '
                     f'least one out; the {name} train split has {n}.')
  return {'train': Subset(splits['train'], 0, n - valid_size),
          'valid': Subset(splits['train'], n - valid_size, n), 'test': splits['test']}


def train_batches(split, *, global_batch: int, seed: int, image_size: int) -> grain.MapDataset:
  """Shuffled, repeated, batched training data; element s is the global batch of step s."""
  return batching.step_batches(len(split), global_batch=global_batch, seed=seed,
                               read=lambda idx: _read(split, idx, image_size))


def eval_batches(split, *, batch_size: int, image_size: int, rows: np.ndarray | None = None):
  """Every example once, in order; the last batch is padded and masked. With `rows`, only
  those rows of each batch are read (a process's share of a multi-process evaluation)."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    if rows is not None:
      idx = idx[rows]
    batch = _read(split, np.minimum(idx, n - 1), image_size)
    batch['mask'] = idx < n
    yield batch


def _read(split, idx: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
  examples = [split[int(i)] for i in idx]
  images = np.stack([resize_shorter_and_crop(e['image'], image_size) for e in examples])
  return {'image': images, 'label': np.asarray([e['label'] for e in examples], np.int32)}


def resize_shorter_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of the shorter side to `size`, centre crop to size x size (uint8)."""
  import PIL.Image  # Pillow comes with matplotlib.
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    scale = size / min(h, w)
    squeeze = image.shape[-1] == 1
    pil = PIL.Image.fromarray(image[..., 0] if squeeze else image)
    pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     PIL.Image.BICUBIC)
    image = np.asarray(pil)[..., None] if squeeze else np.asarray(pil)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    image = image[top:top + size, left:left + size]
  return image


def normalize(images_uint8: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 roughly in [-1, 1]."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0
