"""GPT language model with the 'alibi' position encoding (variants: configs/lm_base.py)."""

from configs import lm_base


def get_config(arg=None):
  return lm_base.get_config(arg, pe='alibi')
