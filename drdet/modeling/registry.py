"""The registries of the model's parts. Each part registers itself where it is defined; see
CONTRIBUTING.md for the recipes and drdet/utils/registry.py for the table itself.

- ``META_ARCHITECTURES``: ``builder(cfg) -> nn.Module``, the whole detector (``RetinaNet``).
- ``BACKBONES``: ``builder(cfg) -> nn.Module`` with ``out_channels`` and ``strides``, returning
  the feature maps P3-P7 (``R-50-FPN-RETINANET``, ...).
- ``CLASSIFICATION_LOSSES``: ``builder(cfg) -> ClassificationLoss`` (``DR``, ``FOCAL``; see
  drdet/modeling/losses/__init__.py for the call interface).
"""

from drdet.utils.registry import Registry

META_ARCHITECTURES = Registry("meta-architecture", config_keys=("MODEL.META_ARCHITECTURE",))
BACKBONES = Registry("backbone", config_keys=("MODEL.BACKBONE.CONV_BODY",))
CLASSIFICATION_LOSSES = Registry("classification loss", config_keys=("MODEL.RETINANET.LOSS_TYPE",))
