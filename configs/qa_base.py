"""Shared QA fine-tuning config; `configs/qa_<pe>.py` pick the PE.

A QA run fine-tunes an LM run: `--config.init_from=WORKDIR` of `configs/lm_<pe>.py` with
the same PE and argument string, or a study's run directory `<study>/runs/<run>/seed<i>`
with the overrides that run was trained with (the model, PE and tokenizer fields come from
lm_base, and a run whose fields differ is refused, naming the field). The loss covers the
answer and end-of-text; the sweep reports exact match, the gold answer's log-probability
and its rank among 10 candidates per context length (`eval/len{L}/em`, `.../answer_logp`,
`.../rank_acc`) and per needle-depth decile, with length x depth heatmaps (tasks/qa.py).

Argument string (big_vision style, after the file name):
  (none)  From the default LM run (tiny GPT, 4k BPE, embedded Wikipedia, 128 tokens):
          passkey probes in the classic repeated filler with single-token keys at a
          256-token block (lab/results/qa_gate/NOTES.md: the settings tried for the gate,
          EM >= 0.8 at the block length); EM at 256..4096 tokens (1x to 16x) on 100 probes
          per length, 10 per depth decile.
  smoke   From an LM `:smoke` run: bytes, nano GPT, passkey at a 300-token block, a few
          steps; EM at 300 and 600 tokens.
  paper   From the LM `:paper` run: the reference's SQuAD-derived QA files (data.dir holds
          train.<L>.jsonl and validation.<L>.jsonl) at a 1,024-token block with the
          method's fine-tuning recipe (10k steps, batch 128, peak LR 5e-5, 100 warm-up
          steps, shift pool 160); EM at 1,024..16,384 tokens, batch 1 as in the reference.
"""

import dataclasses

import ml_collections

from configs import common, lm_base

# SeqPE's sizes per variant: the LM run's, with room for the longer block in `smoke`, and
# in `paper` the reference QA run's shift pool of 160 and one shift window per example.
SEQPE_SIZES = {
    'smoke': dataclasses.replace(lm_base.SEQPE_SIZES['smoke'], max_position=1000),
    '': lm_base.SEQPE_SIZES[''],
    'paper': dataclasses.replace(lm_base.SEQPE_SIZES['paper'], pool=160, windows=128),
}


def get_config(arg: str | None, pe: str) -> ml_collections.ConfigDict:
  c = lm_base.get_config(arg, pe)  # The LM run's model, PE and tokenizer for this variant.
  variant = arg or ''
  c.unlock()
  SEQPE_SIZES[variant].apply(c.pe)
  # Which task the trainer builds (tasks.TASKS); the model section stays the LM's.
  c.task = 'qa'
  # The --workdir of the LM run to fine-tune (its newest checkpoint), or 'scratch'.
  c.init_from = ''
  c.total_steps = 600
  c.batch_size = 16  # Examples, each right-padded to data.seq_len.
  c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 50, 0, 250

  # passkey (retrieval probes, generated) | jsonl (train.<L>.jsonl files in data.dir).
  c.data.source = 'passkey'
  # The training block: examples (prompt, answer, end-of-text) longer than it are skipped.
  c.data.seq_len = 256
  # Probes are this many tokens shorter than their nominal length, leaving room for the
  # answer (a 512-token probe has a prompt of 504 tokens).
  c.data.answer_room = 8
  # Passkey probes: their filler, 'wiki' (held-out paragraphs of the LM corpus) or 'repeat'
  # (the classic repeated sentences), and the form of their keys, 'digitsN' (N digits) or
  # 'token' (numbers the tokenizer writes as one token).
  c.data.filler = 'repeat'
  c.data.key_form = 'token'
  # Generated training probes, their seed and the held-out corpus split of their filler.
  c.data.num_train = 4_000
  c.data.probe_seed = 1
  c.data.filler_split = 'valid'

  # Fine-tuning: shorter warm-up than pretraining, linear decay to 0.
  c.optimizer = common.optimizer_config(lr=1e-3, schedule='linear', warmup_steps=20,
                                       warmup_init=0.0, min_lr=0.0, weight_decay=0.0)

  c.eval = ml_collections.ConfigDict()
  # Evaluation context lengths (probes of length - data.answer_room prompt tokens, or the
  # files <split>.<length>.jsonl).
  c.eval.lengths = (256, 512, 1024, 2048, 4096)
  # Probes: the held-out corpus split giving the filler; jsonl: the files' prefix.
  c.eval.split = 'test'
  # Probes per length (example i sits in depth decile i mod 10) and their seed, which must
  # differ from data.probe_seed.
  c.eval.num_examples = 100
  c.eval.probe_seed = 0
  # Prompts decoded together (left-padded), and greedy tokens generated per prompt.
  c.eval.batch_size = 10
  c.eval.max_new_tokens = 16

  if variant == 'smoke':
    c.total_steps, c.batch_size = 4, 8
    c.log_every_steps, c.checkpoint_every_steps = 2, 2
    c.diagnostics = False
    # Byte tokens: the answer and end-of-text take 7 of the 10, the prompt may run 2 over.
    c.data.seq_len, c.data.num_train, c.data.answer_room = 300, 24, 10
    c.data.key_form = 'digits5'  # Bytes write no number as one token.
    c.optimizer.warmup_steps = 2
    c.eval.lengths, c.eval.num_examples, c.eval.batch_size = (300, 600), 10, 8
  elif variant == 'paper':
    c.total_steps, c.batch_size = 10_000, 128
    c.log_every_steps, c.checkpoint_every_steps = 50, 250
    c.keep_checkpoints = 3
    c.data.source, c.data.seq_len = 'jsonl', 1024
    c.optimizer.lr, c.optimizer.warmup_steps = 5e-5, 100
    c.eval.lengths = (1024, 2048, 4096, 8192, 16384)
    c.eval.split, c.eval.batch_size = 'validation', 1
  c.lock()
  return c
