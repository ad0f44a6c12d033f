"""QA fine-tuning of a GPT with the 'rope' position encoding (variants: configs/qa_base.py)."""

from configs import qa_base


def get_config(arg=None):
  return qa_base.get_config(arg, pe='rope')
