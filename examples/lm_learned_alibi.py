"""GPT language model with the example `learned_alibi` PE (variants: configs/lm_base.py).

    python -m seqpe_jax.main --config=examples/lm_learned_alibi.py:smoke --workdir=/tmp/la
"""

from configs import lm_base
from examples import learned_alibi  # pylint: disable=unused-import  (registers the PE)


def get_config(arg=None):
  return lm_base.get_config(arg, pe='learned_alibi')
