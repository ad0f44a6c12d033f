"""Shared GPT language-model config; `configs/lm_<pe>.py` pick the PE.

Argument string (big_vision style, after the file name): a size and, for SeqPE, a recipe.
  (none)  The Wikipedia sample embedded in gensim, a 4k BPE trained locally, a tiny GPT
          trained on 128-token windows; perplexity at 128..2048 tokens (1x to 16x).
          About 10 minutes on a 2-core CPU for the baselines, 15-20 for SeqPE.
  smoke   Python's reference prose (standard library), bytes, a nano GPT, a few steps.
  paper   GPT-2 small from scratch on WikiText-103 (data.dir) at 512 tokens with GPT-2 BPE,
          the reference recipe; perplexity at 512..16384 tokens. docs/method.md §11.4 lists
          where it differs from the reference and why.
  tuned   (SeqPE, the default of the CPU sizes) TUNED_SEQPE below.
  reference  (SeqPE) the authors' recipe at the CPU sizes: 'reference' or 'reference,smoke'.
"""

import ml_collections

from configs import common

# SeqPE's sizes per variant (`paper`: the reference's per-device sizes x its 4 devices;
# positions up to 20,000 in 5 digits).
SEQPE_SIZES = {
    'smoke': common.SeqPESizes(d_model=32, num_heads=2, max_position=300, pivots=4,
                               candidates=8, groups=2, teachers=4, windows=4, pool=16,
                               window_range=64),
    '': common.SeqPESizes(d_model=64, num_heads=2, max_position=10_000, pivots=16,
                          candidates=32, groups=8, teachers=32, windows=16, pool=320),
    'paper': common.SeqPESizes(d_model=768, num_heads=12, max_position=20_000, num_digits=5,
                               pivots=64, candidates=32, groups=64, teachers=32, windows=64,
                               pool=320),
}

# SeqPE's recipe at the CPU scale, the best of the earlier LM studies beyond the training
# length (docs/results.md): the regulariser gradient balanced against the task's on the
# encoder, half the contrastive pivots in the training window, and attention-level
# distillation with 16 moved copies per step. The fair study (lab/) re-chooses it.
TUNED_SEQPE = {'regularizers.balance': 'grad_norm', 'contrastive.train_fraction': 0.5,
               'logit_distill.weight': 1.0, 'logit_distill.num_windows': 16}


def get_config(arg: str | None, pe: str) -> ml_collections.ConfigDict:
  c, variant = common.run_config(arg)
  _, recipe = common.parse_arg(arg)
  c.total_steps = 1_000
  c.batch_size = 32  # Windows of data.seq_len tokens.
  c.checkpoint_every_steps = 400

  c.model = ml_collections.ConfigDict()
  # Host model family and size: nano | tiny | mini | small (GPT-2 small) | medium.
  c.model.name = 'gpt'
  c.model.variant = 'tiny'
  # Residual and embedding dropout; attention-probability dropout.
  c.model.dropout = 0.0
  c.model.attention_dropout = 0.0
  # auto | xla | cudnn | blockwise (models/attention.py); blocks of the blockwise path, and
  # the length above which 'auto' leaves the dense kernel.
  c.model.attention_kernel = 'auto'
  c.model.attention_block = 512
  # Activations and matmuls, the SeqPE encoder's and q/k projections' included: float32 |
  # bfloat16 (parameters, optimizer state, softmax, losses and PE embeddings stay float32).
  c.model.dtype = 'float32'

  c.data = ml_collections.ConfigDict()
  # wiki_gensim (embedded) | pydoc_topics (standard library) | wikitext (data.dir).
  c.data.name = 'wiki_gensim'
  # A directory with wiki.train.raw, wiki.valid.raw, wiki.test.raw (data.name=wikitext).
  c.data.dir = ''
  # Built corpora, tokenizers and token arrays; '' = $SEQPE_CACHE_DIR or ~/.cache/seqpe_jax.
  c.data.cache_dir = ''
  # gpt2 (GPT-2 BPE, offline) | bpe (trained on the train split) | byte.
  c.data.tokenizer = 'bpe'
  # Vocabulary of the locally trained BPE.
  c.data.vocab_size = 4096
  # Training window length (positions 0..seq_len-1).
  c.data.seq_len = 128

  c.pe = common.pe_section(pe, SEQPE_SIZES[variant])
  # LM default for SeqPE: attn_scalar with one shared q/k projection (docs/method.md §4.2).
  c.pe.inject.method = 'attn_scalar' if pe == 'seqpe' else ''
  c.pe.inject.qk_proj = 'shared'
  if pe == 'seqpe' and recipe == 'tuned':
    c.pe.update_from_flattened_dict(TUNED_SEQPE)
    # The distillation at smoke size: 16 moved copies of a QA smoke's 300-token block, each
    # with 64 far keys, would triple its step time.
    if variant == 'smoke':
      c.pe.logit_distill.num_windows, c.pe.logit_distill.num_far_keys = 2, 8

  # The GPT-2 recipe: linear warm-up and decay, no weight decay. The peak rate is the one
  # every PE chose on validation in the fair LM study (lab/results/lm_fair/CHOSEN.json).
  c.optimizer = common.optimizer_config(lr=3e-3, schedule='linear', warmup_steps=100,
                                       warmup_init=0.0, min_lr=0.0, weight_decay=0.0)
  c.mesh = common.mesh_config()

  c.eval = ml_collections.ConfigDict()
  # Evaluation lengths (non-overlapping windows from position 0), split and windows per batch.
  c.eval.lengths = (128, 256, 512, 1024, 2048)
  c.eval.split = 'test'
  c.eval.batch_size = 8
  # 'non_overlapping' (the reference's) or 'sliding': windows advanced by stride_fraction x L,
  # each scoring only its last stride (every scored token sees L - stride of context).
  c.eval.protocol = 'non_overlapping'
  c.eval.stride_fraction = 0.5
  # Evaluation-time baselines from a RoPE run (no retraining): '' | 'pi' | 'ntk' | 'yarn'
  # rescale its frequencies at every length beyond data.seq_len; local_window = T limits
  # every query to its last T keys (0 = all), the local-attention control for any PE.
  c.eval.rope_scaling = ''
  c.eval.local_window = 0

  if variant == 'smoke':
    c.total_steps, c.batch_size = 6, 8
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 0, 3
    c.diagnostics = False
    c.model.variant = 'nano'
    c.model.attention_block = 32  # Evaluation at 64 tokens takes the blockwise path.
    c.data.name, c.data.tokenizer, c.data.seq_len = 'pydoc_topics', 'byte', 32
    c.optimizer.warmup_steps = 2
    c.eval.lengths, c.eval.batch_size = (32, 64), 8
  elif variant == 'paper':
    # GPT-2 small on WikiText-103 (docs/method.md §11.2).
    c.seed = 10086
    c.total_steps, c.batch_size = 100_000, 128
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 5_000, 5_000
    c.keep_checkpoints = 3
    c.model.variant = 'small'
    # GPT-2's dropouts, as the reference. Attention-probability dropout runs on the blockwise
    # path (the fused kernels have none); `python -m benchmarks.attention_paths` measures its
    # cost against the fused kernel, and --config.model.attention_dropout=0 takes the fused
    # one (cuDNN on a GPU in bfloat16) where that cost matters more than faithfulness.
    c.model.dropout = c.model.attention_dropout = 0.1
    # As the reference: its run script (text_seqpe/runs/ours_gpt2_wt103.sh) passes
    # --mixed_precision bf16 to accelerate, which autocasts the forward to bfloat16.
    c.model.dtype = 'bfloat16'
    c.pe.contrastive.hard_negative_rules = 'reference'  # docs/method.md §5.2.
    c.data.name, c.data.tokenizer, c.data.seq_len = 'wikitext', 'gpt2', 512
    c.optimizer.lr, c.optimizer.warmup_steps = 5e-5, 4_000
    c.eval.lengths = (512, 1024, 2048, 4096, 8192, 16384)
    c.eval.batch_size = 1
  c.lock()
  return c
