"""The DeiT training augmentations, in NumPy and PIL on the input pipeline's workers.

Per example, in the reference's (timm's) order: random-resized crop (bicubic), flip,
RandAugment, random erasing; then per batch, mixup or cutmix, on uint8 images. Every draw
comes from a NumPy generator seeded with (seed, step, row), so resumed runs and any number
of workers read the same augmented pixels.
"""

import dataclasses

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps

# The statistics timm normalises with, in [0, 1]: random erasing draws its noise in that
# normalised space, and geometric RandAugment ops fill uncovered pixels with the mean.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
FILL_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)
MAX_MAGNITUDE = 10.0  # RandAugment magnitudes are 0..10, 10 being each op's strongest.
OP_PROB = 0.5  # Each chosen RandAugment op is applied with this probability.
ERASE_AREA = (0.02, 1 / 3)  # Area fraction and aspect range of the erased rectangle.
ERASE_ASPECT = (0.3, 1 / 0.3)
ATTEMPTS = 10  # Random rectangles (crop, erase) drawn before falling back.


@dataclasses.dataclass(frozen=True)
class Options:
  """`config.data.augment` as plain values (picklable, so worker processes get a copy)."""
  crop: str = 'centre'
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.0
  randaugment_ops: int = 0
  randaugment_magnitude: float = 9.0
  randaugment_magnitude_std: float = 0.5
  erase_prob: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  mix_switch_prob: float = 0.5

  @classmethod
  def from_config(cls, augment) -> 'Options':
    """Checked options from a config section (None: a run from before augmentation)."""
    if augment is None:
      return cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(augment) - fields):
      raise ValueError(f"Unknown data.augment field '{unknown[0]}'; use one of: "
                       f"{', '.join(sorted(fields))}.")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in augment.items()}
    options = cls(**values)
    options.check()
    return options

  @property
  def per_example(self) -> bool:
    return (self.crop != 'centre' or self.flip_prob > 0 or self.randaugment_ops > 0
            or self.erase_prob > 0)

  @property
  def mixes(self) -> bool:
    return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

  @property
  def active(self) -> bool:
    return self.per_example or self.mixes

  def check(self) -> None:
    """Raises ValueError naming the first field out of its range."""
    rules = [('crop', "must be 'centre' or 'random_resized'",
              lambda x: x in ('centre', 'random_resized')),
             ('crop_scale', 'must be (low, high) with 0 < low <= high <= 1',
              lambda x: 0 < x[0] <= x[1] <= 1),
             ('crop_ratio', 'must be (low, high) with 0 < low <= high', lambda x: 0 < x[0] <= x[1])]
    rules += [(name, 'is a probability in [0, 1]', lambda x: 0 <= x <= 1)
              for name in ('flip_prob', 'erase_prob', 'mix_prob', 'mix_switch_prob')]
    rules += [('randaugment_ops', 'must be a whole number >= 0',
               lambda x: isinstance(x, int) and x >= 0),
              ('randaugment_magnitude', 'must be in [0, 10]', lambda x: 0 <= x <= MAX_MAGNITUDE)]
    rules += [(name, 'must be >= 0', lambda x: x >= 0)
              for name in ('randaugment_magnitude_std', 'mixup_alpha', 'cutmix_alpha')]
    for name, requirement, holds in rules:
      value = getattr(self, name)
      if not holds(value):
        raise ValueError(f'data.augment.{name} {requirement}, got {value!r}.')


def example_rng(seed: int, step: int, row: int) -> np.random.Generator:
  """The generator of one example's draws: row `row` of the global batch of step `step`."""
  return np.random.default_rng([seed, 0, step, row])


def batch_rng(seed: int, step: int, process: int) -> np.random.Generator:
  """The generator of one process's batch-level draws (mixup / cutmix) at `step`."""
  return np.random.default_rng([seed, 1, step, process])


# ------------------------------------------------------------------ Per example.


def augment_example(image: np.ndarray, size: int, options: Options,
                    rng: np.random.Generator) -> np.ndarray:
  """uint8 [H, W, C] of any size -> augmented uint8 [size, size, C]."""
  if options.crop == 'random_resized':
    top, left, h, w = crop_box(*image.shape[:2], rng, options.crop_scale, options.crop_ratio)
    pil = to_pil(image).resize((size, size), PIL.Image.BICUBIC, box=(left, top, left + w, top + h))
  else:
    pil = to_pil(resize_shorter_and_crop(image, size))
  if rng.random() < options.flip_prob:
    pil = pil.transpose(PIL.Image.FLIP_LEFT_RIGHT)
  if options.randaugment_ops:
    pil = rand_augment(pil, rng, options.randaugment_ops, options.randaugment_magnitude,
                       options.randaugment_magnitude_std)
  return random_erase(to_array(pil, image.shape[-1]), rng, options.erase_prob)


def crop_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop covering a fraction in `scale` of the image, with
  aspect w/h log-uniform in `ratio`; when no draw fits, the centre crop of the nearest
  aspect in range (the fallback of torchvision's RandomResizedCrop)."""
  area = height * width
  log_ratio = np.log(ratio)
  for _ in range(ATTEMPTS):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(*log_ratio))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_erase(image: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
  """With probability `prob`, one rectangle becomes N(0, 1) noise in timm's normalised space."""
  if prob == 0 or rng.random() >= prob:
    return image
  height, width, channels = image.shape
  for _ in range(ATTEMPTS):
    target = height * width * rng.uniform(*ERASE_AREA)
    aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT)))
    h = int(round(np.sqrt(target * aspect)))
    w = int(round(np.sqrt(target / aspect)))
    if h < height and w < width:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (
          np.full(channels, IMAGENET_MEAN.mean()), np.full(channels, IMAGENET_STD.mean()))
      noise = 255 * (mean + std * rng.standard_normal((h, w, channels)))
      image = image.copy()
      image[top:top + h, left:left + w] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
      return image
  return image


# ------------------------------------------------------------------ RandAugment.
# timm's 'rand-m9-mstd0.5-inc1': two ops drawn with replacement from the 15 below, each
# applied with probability 0.5 at a magnitude drawn from N(9, 0.5) clipped to [0, 10]; the
# 'increasing' variants get stronger as the magnitude grows. `level` is magnitude / 10.


def _signed(rng, value):
  return value if rng.random() < 0.5 else -value


def _affine(image, matrix, fill):
  return image.transform(image.size, PIL.Image.AFFINE, matrix, PIL.Image.BICUBIC, fillcolor=fill)


def _enhance(enhancer):
  return lambda image, level, rng, fill: enhancer(image).enhance(1 + _signed(rng, 0.9 * level))


RAND_AUGMENT_OPS = {
    'auto_contrast': lambda image, level, rng, fill: PIL.ImageOps.autocontrast(image),
    'equalize': lambda image, level, rng, fill: PIL.ImageOps.equalize(image),
    'invert': lambda image, level, rng, fill: PIL.ImageOps.invert(image),
    'rotate': lambda image, level, rng, fill: image.rotate(
        _signed(rng, 30 * level), resample=PIL.Image.BICUBIC, fillcolor=fill),
    'posterize': lambda image, level, rng, fill: PIL.ImageOps.posterize(
        image, 4 - int(4 * level)),
    'solarize': lambda image, level, rng, fill: PIL.ImageOps.solarize(
        image, 256 - int(256 * level)),
    'solarize_add': lambda image, level, rng, fill: image.point(
        [min(255, v + int(110 * level)) if v < 128 else v for v in range(256)]
        * len(image.getbands())),
    'color': _enhance(PIL.ImageEnhance.Color),
    'contrast': _enhance(PIL.ImageEnhance.Contrast),
    'brightness': _enhance(PIL.ImageEnhance.Brightness),
    'sharpness': _enhance(PIL.ImageEnhance.Sharpness),
    'shear_x': lambda image, level, rng, fill: _affine(
        image, (1, _signed(rng, 0.3 * level), 0, 0, 1, 0), fill),
    'shear_y': lambda image, level, rng, fill: _affine(
        image, (1, 0, 0, _signed(rng, 0.3 * level), 1, 0), fill),
    'translate_x': lambda image, level, rng, fill: _affine(
        image, (1, 0, _signed(rng, 0.45 * level * image.width), 0, 1, 0), fill),
    'translate_y': lambda image, level, rng, fill: _affine(
        image, (1, 0, 0, 0, 1, _signed(rng, 0.45 * level * image.height)), fill),
}
OP_NAMES = tuple(RAND_AUGMENT_OPS)


def rand_augment(image: PIL.Image.Image, rng: np.random.Generator, num_ops: int,
                 magnitude: float, magnitude_std: float) -> PIL.Image.Image:
  fill = FILL_RGB if image.mode == 'RGB' else FILL_RGB[1]
  for name in rng.choice(OP_NAMES, num_ops):
    if rng.random() >= OP_PROB:
      continue
    m = rng.normal(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
    level = float(np.clip(m, 0, MAX_MAGNITUDE)) / MAX_MAGNITUDE
    image = RAND_AUGMENT_OPS[name](image, level, rng, fill)
  return image


# ------------------------------------------------------------------ Per batch.


def mix_batch(images_BHWC: np.ndarray, labels_B: np.ndarray, rng: np.random.Generator,
              options: Options) -> dict[str, np.ndarray]:
  """Mixup or cutmix of the batch with itself reversed (example i with B-1-i), one mixing
  weight for the whole batch. Returns the images, the partner labels and each image's
  weight of its own label: the target is w * onehot(label) + (1 - w) * onehot(mix_label)."""
  weight = 1.0
  if rng.random() < options.mix_prob:
    use_cutmix = options.cutmix_alpha > 0 and (
        options.mixup_alpha == 0 or rng.random() < options.mix_switch_prob)
    if use_cutmix:
      lam = rng.beta(options.cutmix_alpha, options.cutmix_alpha)
      images_BHWC, weight = cutmix(images_BHWC, lam, rng)
    else:
      lam = rng.beta(options.mixup_alpha, options.mixup_alpha)
      images_BHWC, weight = mixup(images_BHWC, lam), lam
  return {'image': images_BHWC, 'mix_label': labels_B[::-1].copy(),
          'mix_weight': np.full(len(labels_B), weight, np.float32)}


def mixup(images_BHWC: np.ndarray, lam: float) -> np.ndarray:
  """lam * x + (1 - lam) * reversed(x), rounded back to uint8 (normalisation is affine,
  so blending pixels blends the normalised images, up to that rounding)."""
  x = images_BHWC.astype(np.float32)
  lam = float(lam)  # A Python float keeps the arithmetic in float32.
  return np.rint(lam * x + (1 - lam) * x[::-1]).astype(np.uint8)


def cutmix(images_BHWC: np.ndarray, lam: float,
           rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """Pastes a box of the reversed batch into every image; the box has about 1 - lam of the
  area, and the returned weight is the area actually kept (the box is clipped at edges)."""
  height, width = images_BHWC.shape[1:3]
  top, bottom, left, right = cutmix_box(height, width, lam, rng)
  images_BHWC = images_BHWC.copy()
  images_BHWC[:, top:bottom, left:right] = images_BHWC[::-1, top:bottom, left:right].copy()
  return images_BHWC, 1 - (bottom - top) * (right - left) / (height * width)


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, bottom, left, right): sides sqrt(1 - lam) of the image's, centred uniformly."""
  cut = np.sqrt(1 - lam)
  half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  return (max(cy - half_h, 0), min(cy + half_h, height),
          max(cx - half_w, 0), min(cx + half_w, width))


# ------------------------------------------------------------------ Conversions.


def to_pil(image: np.ndarray) -> PIL.Image.Image:
  return PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def to_array(image: PIL.Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image)
  return array[..., None] if channels == 1 else array


def resize_shorter_and_crop(image: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
  """Bicubic resize of the shorter side to size / crop (DeiT: 0.875), centre crop to size."""
  h, w = image.shape[:2]
  shorter = int(size / crop)
  if (h, w) != (size, size) or shorter != size:
    scale = shorter / min(h, w)
    pil = to_pil(image).resize((max(shorter, round(w * scale)), max(shorter, round(h * scale))),
                               PIL.Image.BICUBIC)
    image = to_array(pil, image.shape[-1])
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    image = image[top:top + size, left:left + size]
  return image
