"""ViT with the 'sincos2d' position encoding (per-axis sinusoids of (row, column)); see
configs/vit_base.py for the variants."""

from configs import vit_base


def get_config(arg=None):
  return vit_base.get_config(arg, pe='sincos2d')
