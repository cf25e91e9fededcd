"""build_detector(cfg): the detector registered as MODEL.META_ARCHITECTURE."""

from torch import nn

from drdet.layers.winograd import set_winograd
from drdet.modeling.registry import META_ARCHITECTURES


def build_detector(cfg) -> nn.Module:
    """The detector registered as ``cfg.MODEL.META_ARCHITECTURE`` (drdet.modeling.registry),
    on the CPU; move it to cfg.MODEL.DEVICE yourself. Pretrained weights are not loaded here."""
    model = META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    set_winograd(model, cfg.MODEL.CPU_WINOGRAD)
    return model
