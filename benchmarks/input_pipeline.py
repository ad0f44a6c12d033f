"""Images per second of the augmented ImageNet train pipeline (the `:paper` DeiT recipe).

    python -m benchmarks.input_pipeline [--workers=0,2] [--image_size=224] [--batch=8]
                                        [--batches=128] [--data_dir=DIR]

Reads generated JPEGs (ImageNet-sized, smooth content so they compress like photographs)
in the ILSVRC class-folder layout, unless --data_dir points at real ones. Each batch is
decoded, random-resized-cropped, flipped, RandAugmented, erased and mixed as in training.
The rate is the steady one: grain reads up to 16 batches at once in threads (a few per
worker process), so the first 16 batches are a warm-up and the clock runs over the
`--batches` after them (the work in flight when it starts is at most 16 / batches of it);
the time to the first batch (worker start-up) is reported apart.
"""

import argparse
import os
import pathlib
import tempfile
import time

import numpy as np
import PIL.Image

from configs import vit_base
from seqpe_jax.data import augment, images

# ImageNet's typical photograph: 500 x 375 (about 110 kB as JPEG).
PHOTO_SIZE = (500, 375)
# Batches read before the clock starts: grain's default reading threads, each on a batch.
WARMUP = 16


def write_jpeg_folders(root: pathlib.Path, *, classes: int, per_class: int, val_per_class: int,
                       size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> pathlib.Path:
  """An ImageNet-shaped dataset: root/{train,val}/<wnid>/<wnid>_<i>.JPEG, smooth colour
  fields with a little noise, each class a different mean colour."""
  rng = np.random.default_rng(seed)
  for split, count in (('train', per_class), ('val', val_per_class)):
    for c in range(classes):
      folder = root / split / f'n{c:08d}'
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), np.uint8)
        coarse[..., c % 3] = 255 - 30 * (c // 3 % 8)  # A class cue the pixels carry.
        smooth = np.asarray(PIL.Image.fromarray(coarse).resize(size, PIL.Image.BICUBIC))
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(noisy).save(folder / f'n{c:08d}_{i}.JPEG', quality=90)
  return root


def paper_options() -> augment.Options:
  return augment.Options.from_config(vit_base.get_config('paper', pe='ape').data.augment)


def images_per_second(split, *, workers: int, image_size: int, batch: int,
                      batches: int) -> tuple[float, float]:
  """(steady images/s over `batches` after the warm-up, seconds to the first batch)."""
  data = images.train_batches(split, global_batch=batch, seed=0, image_size=image_size,
                              options=paper_options(), workers=workers)
  start = time.perf_counter()
  arrivals = [time.perf_counter() for _ in data[:WARMUP + batches].to_iter_dataset()]
  return batches * batch / (arrivals[-1] - arrivals[WARMUP - 1]), arrivals[0] - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workers', default='0,2', help='comma-separated worker counts')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--batches', type=int, default=128)
  parser.add_argument('--data_dir', default='', help='ILSVRC folders; default: generated')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.data_dir or tmp)
    if not args.data_dir:
      write_jpeg_folders(root, classes=4, per_class=32, val_per_class=1)
    split = images.ImageFolder(root / 'train')
    one, five, _ = os.getloadavg()
    print(f'{len(split)} JPEGs; {os.cpu_count()} CPUs, load average {one:.1f} (1 min) '
          f'{five:.1f} (5 min); DeiT augmentation at {args.image_size} px, batch {args.batch}')
    for workers in map(int, args.workers.split(',')):
      rate, startup = images_per_second(split, workers=workers, image_size=args.image_size,
                                        batch=args.batch, batches=args.batches)
      print(f'workers={workers}: {rate:.0f} images/s ({startup:.1f} s to the first batch)')


if __name__ == '__main__':
  main()
