"""Backbones: ResNet/ResNeXt bodies and the RetinaNet FPN (P3-P7)."""

from .build import ResNetFPN, build_backbone, build_resnet_fpn
from .fpn import FPN, LastLevelP6P7
from .resnet import ResNet, convert_torchvision_resnet_state_dict

__all__ = [
    "build_resnet_fpn",
    "FPN",
    "LastLevelP6P7",
    "ResNet",
    "ResNetFPN",
    "build_backbone",
    "convert_torchvision_resnet_state_dict",
]
