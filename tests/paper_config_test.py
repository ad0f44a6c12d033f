"""The `:paper` configs, as a run records them (WORKDIR/config.json), against the values the
reference's run scripts give (github.com/ghrua/seqpe at 4c4b908). Each value is written out
with the script or file it comes from; where the script's per-device value is multiplied by
its 4 devices (NPROC_PER_NODE=4), the product says so."""

import json

from configs import lm_seqpe, vit_seqpe


def _dumped(config):
  return json.loads(config.to_json_best_effort())


def test_vit_paper_is_the_reference_run_script():
  c = _dumped(vit_seqpe.get_config('paper'))
  # image_seqpe/runs/ours_vit.sh: MAIN_TASK_BATCH_SIZE=256 on NPROC_PER_NODE=4, EPOCH=400.
  assert c['batch_size'] == 256 * 4
  # image_seqpe/data/build.py: DistributedSampler over 4 ranks (ceil(1,281,167 / 4) =
  # 320,292 images each), DataLoader(drop_last=True) at 256: 1,251 steps per epoch.
  assert c['total_steps'] == 400 * 1_251 == 500_400
  # image_seqpe/config.py: TRAIN.WARMUP_EPOCHS = 20.
  assert c['optimizer']['warmup_steps'] == 20 * 1_251 == 25_020
  # image_seqpe/main.py: no autocast; ours_vit.sh leaves --amp-opt-level at its default O0.
  assert c['model']['dtype'] == 'float32'
  # image_seqpe/data/build.py: ImageFolder(DATA_PATH/train), every training image.
  assert c['data']['valid_size'] == 0
  # ours_vit.sh: BASE_LR=0.0006; main.py scales it (and config.py's WARMUP_LR 5e-7, MIN_LR
  # 5e-6) by the global batch / 512.
  o = c['optimizer']
  assert (o['lr'], o['warmup_init'], o['min_lr']) == (1.2e-3, 1e-6, 1e-5)
  # image_seqpe/config.py: WEIGHT_DECAY 0.05, CLIP_GRAD 5.0; ours_vit.sh: PE_CLIP_GRAD=5.0,
  # PE_WEIGHT_DECAY=0.
  assert (o['weight_decay'], o['clip_host'], o['clip_seqpe'], o['seqpe_weight_decay']) == (
      0.05, 5.0, 5.0, 0.0)
  pe = c['pe']
  # ours_vit.sh: PE_MAX_POSITION=10000 (a 100 x 100 grid), PE_EMBED_DIM=384,
  # SEQPE_RESID_PDROP=0.1; main.py: 2 digits per axis (len(str(100 - 1))).
  assert (pe['seqpe']['max_position'], pe['seqpe']['d_model'], pe['seqpe']['dropout']) == (
      100, 384, 0.1)
  # ours_vit.sh: SEQPE_CONTRASTIVE_BATCH_SIZE=32 and SEQPE_TRANSFER_BATCH_SIZE=32 per
  # device; main.py's --seqpe_contrastive_num default 64; SEQPE_TRANSFER_NUM=64.
  assert (pe['contrastive']['num_pivots'], pe['contrastive']['num_candidates']) == (32 * 4, 64)
  assert (pe['ood']['num_groups'], pe['ood']['num_teachers']) == (32 * 4, 64)
  # ours_vit.sh: SEQPE_CONTRASTIVE_WEIGHT=0.1, SEQPE_TRANSFER_WEIGHT=0.1,
  # PE_RANDOM_SHIFT_RATE=0.1, PE_RANDOM_SHIFT_DOWNSAMPLE=320, PE_MAIN_BATCH_SIZE=32 per device.
  assert (pe['contrastive']['weight'], pe['ood']['weight'], pe['shift']['prob']) == (
      0.1, 0.1, 0.1)
  assert (pe['shift']['pool_size'], pe['shift']['num_windows']) == (320, 32 * 4)
  # image_seqpe/pe_sampler.py: the reference's digit-edit rules.
  assert pe['contrastive']['hard_negative_rules'] == 'reference'
  # ours_vit.sh: EVAL_IMG_SIZES="224;320;384;448;512;640;672".
  assert c['eval']['resolutions'] == [224, 320, 384, 448, 512, 640, 672]


def test_lm_paper_is_the_reference_run_script():
  c = _dumped(lm_seqpe.get_config('paper'))
  # text_seqpe/runs/ours_gpt2_wt103.sh: BATCH_SIZE=32 per device on NPROC_PER_NODE=4,
  # MAX_TRAIN_STEPS=100000, BLOCK_SIZE=512.
  assert (c['batch_size'], c['total_steps'], c['data']['seq_len']) == (32 * 4, 100_000, 512)
  # ours_gpt2_wt103.sh: MIXED_PRECISION="bf16" (accelerate's --mixed_precision bf16).
  assert c['model']['dtype'] == 'bfloat16'
  # text_seqpe/train.py defaults: --learning_rate 5e-5, --num_warmup_steps 4000,
  # --lr_scheduler_type linear, --weight_decay 0.0, --seed 10086.
  o = c['optimizer']
  assert (o['lr'], o['warmup_steps'], o['schedule'], o['weight_decay']) == (
      5e-5, 4_000, 'linear', 0.0)
  assert c['seed'] == 10086
  pe = c['pe']
  # ours_gpt2_wt103.sh: PE_MAX_POSITION=20000 (5 digits), PE_EMBED_DIM=768,
  # SEQPE_RESID_PDROP=0.1, PE_APPLY_METHOD=attn_scalar, USE_PE_QK_PER_LAYER=single,
  # SEQPE_SCALAR_SCALE=1.0 (the only scale attn_scalar has here), SEQPE_DIST_SAMPLE_RANGE=256.
  s = pe['seqpe']
  assert (s['max_position'], s['num_digits'], s['d_model'], s['dropout']) == (
      20_000, 5, 768, 0.1)
  assert (pe['inject']['method'], pe['inject']['qk_proj']) == ('attn_scalar', 'shared')
  assert pe['contrastive']['window_range'] == 256
  # ours_gpt2_wt103.sh: SEQPE_CONTRASTIVE_BATCH_SIZE=16 and SEQPE_TRANSFER_BATCH_SIZE=16 per
  # device; train.py's --seqpe_contrastive_num and --seqpe_transfer_num defaults 32.
  assert (pe['contrastive']['num_pivots'], pe['contrastive']['num_candidates']) == (16 * 4, 32)
  assert (pe['ood']['num_groups'], pe['ood']['num_teachers']) == (16 * 4, 32)
  # ours_gpt2_wt103.sh: SEQPE_CONTRASTIVE_WEIGHT=0.1, SEQPE_TRANSFER_WEIGHT=0.1,
  # PE_RANDOM_SHIFT_RATE=0.1, PE_RANDOM_SHIFT_DOWNSAMPLE=320, PE_MAIN_BATCH_SIZE=16 per device.
  assert (pe['contrastive']['weight'], pe['ood']['weight'], pe['shift']['prob']) == (
      0.1, 0.1, 0.1)
  assert (pe['shift']['pool_size'], pe['shift']['num_windows']) == (320, 16 * 4)
  # text_seqpe/src/transformers/custom_modules/pe_sampler.py: the same digit-edit rules.
  assert pe['contrastive']['hard_negative_rules'] == 'reference'
  # ours_gpt2_wt103.sh: EVAL_BLOCK_SIZES="512,...,32768", EVAL_BATCH_SIZE=1; the sweep here
  # stops at 16,384 (docs/method.md §11.4).
  assert c['eval']['lengths'] == [512, 1024, 2048, 4096, 8192, 16384]
  assert c['eval']['batch_size'] == 1
