"""The registries of the model's parts. Each part registers itself where it is defined, with the
check of its own config keys; see CONTRIBUTING.md for the recipes and drdet/utils/registry.py
for the table itself.

- ``META_ARCHITECTURES``: ``builder(cfg) -> nn.Module``, the whole detector (``RetinaNet``,
  ``FCOS``, ``ATSS``), selected by MODEL.META_ARCHITECTURE.
- ``BACKBONES``: ``builder(cfg) -> nn.Module`` with ``out_channels`` and ``strides``, returning
  the feature maps P3-P7 (``R-50-FPN-RETINANET``, ...), selected by MODEL.BACKBONE.CONV_BODY.
- ``CLASSIFICATION_LOSSES``: ``builder(cfg) -> ClassificationLoss`` (``DR``, ``FOCAL``; see
  drdet/modeling/losses/__init__.py for the call interface), selected by the key its detector
  declares (``MODEL.RETINANET.LOSS_TYPE``, ``MODEL.FCOS.LOSS_TYPE``, ``MODEL.ATSS.LOSS_TYPE``:
  drdet.config.loss_key).
"""

from drdet.config import loss_key
from drdet.utils.registry import Registry


def _detector_loss_key(cfg) -> list[str]:
    key = loss_key(cfg.MODEL.META_ARCHITECTURE)
    return [key] if key else []


META_ARCHITECTURES = Registry("meta-architecture", config_keys=("MODEL.META_ARCHITECTURE",))
BACKBONES = Registry("backbone", config_keys=("MODEL.BACKBONE.CONV_BODY",))
CLASSIFICATION_LOSSES = Registry("classification loss", select=_detector_loss_key)
