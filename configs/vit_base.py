"""Shared ViT experiment config; `configs/vit_<pe>.py` pick the PE.

Argument string (big_vision style, after the file name):
  (none)  Fashion-MNIST, 28 px, patch 4 (7x7 grid), a small ViT; evaluates at 28..84 px
          (grids 7x7 to 21x21).
          About 10 minutes on a 2-core CPU for SeqPE (its default recipe), 11 for the baselines.
  smoke   scikit-learn digits, a tiny ViT, a few steps: seconds, for tests.
  paper   ImageNet-1k ViT-S/16 at 224 px, the paper's recipe (DeiT augmentation, timm ViT
          initialisation) on the full train split, in float32; evaluates at 224..672 px.
          docs/method.md §11.4 lists where it differs from the reference and why.
  tuned   (SeqPE, the default of the CPU sizes) TUNED_SEQPE below, the fair study's choice:
          canvas positions, so a larger grid is read by interpolation, not extension
          (docs/method.md §9).
  reference  (SeqPE) the authors' recipe at the CPU sizes: 'reference' or 'reference,smoke'.
"""

import ml_collections

from configs import common

# SeqPE's sizes per variant (the reference's per-device sizes x its 4 devices in `paper`).
SEQPE_SIZES = {
    'smoke': common.SeqPESizes(d_model=32, num_heads=2, max_position=30, pivots=4,
                               candidates=8, groups=2, teachers=4, windows=4, pool=16),
    '': common.SeqPESizes(d_model=64, num_heads=2, max_position=100, pivots=16,
                          candidates=32, groups=8, teachers=32, windows=16, pool=320),
    'paper': common.SeqPESizes(d_model=384, num_heads=6, max_position=100, pivots=128,
                               candidates=64, groups=128, teachers=64, windows=128, pool=320),
}

# SeqPE's recipe at the CPU scale: what the fair study chose for SeqPE on the canvas
# (lab/results/vit_fair/CHOSEN.json, `seqpe_canvas`: on validation, among 6 configurations
# at 300 steps). `attn_scalar` and canvas positions: the 7x7 training grid 12 apart on an
# 84-wide canvas, every in-cell offset in the shift pool, so a larger image is read by
# interpolation (the `interpolate` protocol, as APE's resampling), at the rate 3e-3. The
# LM's balance and window pivots lost there to the reference's regularisers. For the
# `extend` protocol the study chose `reference`, which extends the grid in patch units as
# the paper does.
CANVAS_STRIDE = 12
TUNED_SEQPE = {'inject.method': 'attn_scalar', 'canvas_stride': CANVAS_STRIDE,
               'shift.pool_size': CANVAS_STRIDE**2}
TUNED_SEQPE_LR = 3e-3


def get_config(arg: str | None, pe: str) -> ml_collections.ConfigDict:
  c, variant = common.run_config(arg)
  _, recipe = common.parse_arg(arg)
  c.total_steps = 1_500
  c.batch_size = 128
  c.eval_every_steps = 0  # Each sweep covers all 10k test images.

  c.model = ml_collections.ConfigDict()
  # Host model family and variant: <size>/<patch> with size nano | mu | Ti | S | B.
  c.model.name = 'vit'
  c.model.variant = 'mu/4'
  # Dropout on attention and MLP outputs.
  c.model.dropout = 0.0
  # Label smoothing of the classification loss.
  c.model.label_smoothing = 0.1
  # MLP activation: 'tanh' (approximate) | 'erf' (exact GELU, as timm's ViT).
  c.model.gelu = 'tanh'
  # Head kernel: 'zeros' | 'trunc_normal' (std 0.02, as timm).
  c.model.head_init = 'zeros'
  # Patch embedding: 'normal' (kernel N(0, 0.02), bias 0) | 'torch' (PyTorch's Conv2d
  # default, kernel and bias U(+-1/sqrt(fan_in)), as timm's PatchEmbed).
  c.model.patch_init = 'normal'
  # Activations and matmuls, the SeqPE encoder's and q/k projections' included: float32 |
  # bfloat16 (parameters, optimizer state, softmax, losses and PE embeddings stay float32).
  c.model.dtype = 'float32'

  c.data = ml_collections.ConfigDict()
  # fashion_mnist | digits | imagenet2012.
  c.data.name = 'fashion_mnist'
  # Where the data lives; '' = the dataset's default location.
  c.data.dir = ''
  # Training resolution in pixels.
  c.data.image_size = 28
  # The last training examples held out as the validation split (choosing variants); for
  # ImageNet a fixed random subset (its class folders are sorted by class). 0 trains on the
  # whole train split and has no validation split.
  c.data.valid_size = 5_000
  # Input worker processes per host (0: threads in the training process).
  c.data.workers = 0
  # Evaluation resizes the shorter side to resolution / eval_crop, then centre-crops.
  c.data.eval_crop = 1.0
  c.data.augment = augment_config()

  c.pe = common.pe_section(pe, SEQPE_SIZES[variant])
  # ViT default for SeqPE: per-layer projection, attn_mul (docs/method.md §4.2).
  c.pe.inject.qk_proj = 'per_layer'
  tuned = pe == 'seqpe' and recipe == 'tuned'
  if tuned:
    c.pe.update_from_flattened_dict(TUNED_SEQPE)

  c.optimizer = common.optimizer_config(lr=TUNED_SEQPE_LR if tuned else 1e-3,
                                       schedule='cosine', warmup_steps=100,
                                       warmup_init=1e-6, min_lr=1e-5, weight_decay=0.05)
  c.mesh = common.mesh_config()

  c.eval = ml_collections.ConfigDict()
  # Resolutions of the extrapolation sweep, and its batch size.
  c.eval.resolutions = (28, 36, 44, 56, 84)
  c.eval.batch_size = 250
  # Split of the sweep: test (reporting) | valid (choosing variants).
  c.eval.split = 'test'

  if variant == 'smoke':
    c.total_steps, c.batch_size = 6, 16
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 0, 3
    c.diagnostics = False
    c.model.variant = 'nano/4'
    c.data.name, c.data.image_size, c.data.valid_size = 'digits', 8, 64
    c.optimizer.warmup_steps = 2
    c.eval.resolutions, c.eval.batch_size = (8, 16), 64
  elif variant == 'paper':
    # ImageNet-1k ViT-S/16 (docs/method.md §11.1), the reference's run script
    # (image_seqpe/runs/ours_vit.sh): 4 devices x 256 images, 400 epochs, 20 warm-up.
    c.batch_size = 1024
    # Its loader shards the 1,281,167 images over 4 ranks (ceil: 320,292 each) and drops
    # each rank's last partial batch of 256: 1,251 steps per epoch.
    steps_per_epoch = -(-1_281_167 // 4) // 256
    c.total_steps = 400 * steps_per_epoch
    c.log_every_steps, c.eval_every_steps = 100, 10 * steps_per_epoch
    c.checkpoint_every_steps = 5 * steps_per_epoch
    c.model.variant = 'S/16'
    c.data.name, c.data.image_size = 'imagenet2012', 224
    # The reference trains on the whole train split. To choose variants on held-out
    # training images instead of the test split, hold 1% out: --config.data.valid_size=12811
    # (total_steps stays the full split's, a few more passes over the 99%).
    c.data.valid_size = 0
    c.data.workers = 16
    c.data.eval_crop = 0.875  # DeiT's evaluation crop.
    # DeiT's recipe: timm 'rand-m9-mstd0.5-inc1', mixup 0.8, cutmix 1.0, erasing 0.25.
    a = c.data.augment
    a.crop, a.flip_prob = 'random_resized', 0.5
    a.randaugment_ops, a.randaugment_magnitude, a.randaugment_magnitude_std = 2, 9.0, 0.5
    a.mixup_alpha, a.cutmix_alpha, a.mix_prob, a.mix_switch_prob = 0.8, 1.0, 1.0, 0.5
    a.erase_prob = 0.25
    c.model.gelu, c.model.head_init, c.model.patch_init = 'erf', 'trunc_normal', 'torch'
    # float32, as the reference: its main.py has no autocast and the run script leaves
    # --amp-opt-level at O0. --config.model.dtype=bfloat16 trades that for speed.
    c.model.dtype = 'float32'
    c.pe.contrastive.hard_negative_rules = 'reference'  # docs/method.md §5.2.
    c.optimizer.lr = 1.2e-3  # main.py scales its 6e-4 by the global batch / 512.
    c.optimizer.warmup_steps = 20 * steps_per_epoch
    c.optimizer.min_lr = 1e-5
    c.eval.resolutions = (224, 320, 384, 448, 512, 640, 672)
    c.eval.batch_size = 256
  c.lock()
  return c


def augment_config() -> ml_collections.ConfigDict:
  """Training augmentation (seqpe_jax/data/augment.py); all off by default."""
  a = ml_collections.ConfigDict()
  # 'centre' (resize the shorter side, centre crop) | 'random_resized' (bicubic), with the
  # crop's area fraction and aspect (w/h) ranges.
  a.crop = 'centre'
  a.crop_scale = (0.08, 1.0)
  a.crop_ratio = (3 / 4, 4 / 3)
  # Probability of a horizontal flip.
  a.flip_prob = 0.0
  # RandAugment: ops per image (0: off), magnitude 0..10 and its per-op standard deviation.
  a.randaugment_ops = 0
  a.randaugment_magnitude = 9.0
  a.randaugment_magnitude_std = 0.5
  # Random erasing (per-pixel normal noise) probability.
  a.erase_prob = 0.0
  # Mixup / cutmix Beta(alpha, alpha) (0: off), the probability a batch is mixed, and the
  # probability of cutmix when both are on.
  a.mixup_alpha = 0.0
  a.cutmix_alpha = 0.0
  a.mix_prob = 1.0
  a.mix_switch_prob = 0.5
  return a
