"""drdet's detector and torchvision's, built alike for the speed comparison of
tools/benchmark_model.py: ResNet-50-FPN, FrozenBatchNorm, stem and res2 frozen, 4-conv heads,
80 object classes, the same random weights (torchvision's initial weights converted into drdet's
model) and the same post-processing parameters; and a random batch both take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from drdet.checkpoint.fcos_conversion import convert_torchvision_fcos
from drdet.checkpoint.weights import convert_torchvision_retinanet
from drdet.engine.defaults import load_config
from drdet.modeling import build_detector

# Post-processing parameters shared by both models (drdet's config defaults).
PRE_NMS_TOP_N, DETECTIONS_PER_IMG = 1000, 100


@dataclass(frozen=True)
class ModelSpec:
    """One detector of the comparison: drdet's config (relative to the configs folder), the
    config node of its head's keys, the converter of torchvision's weights, the NMS threshold."""

    config: str
    node: str
    convert: Callable[..., dict] | None
    nms_thresh: float


MODELS = {
    "retinanet": ModelSpec(
        "torchvision/retinanet_resnet50_fpn_torchvision.yaml",
        "MODEL.RETINANET",
        convert_torchvision_retinanet,
        0.5,
    ),
    "fcos": ModelSpec(
        "torchvision/fcos_resnet50_fpn_torchvision.yaml",
        "MODEL.FCOS",
        convert_torchvision_fcos,
        0.6,
    ),
}


# drdet's detectors side by side (--detectors): their R-50-FPN configs and config nodes; every
# model with random weights, the post-processing parameters above and its own NMS threshold.
DETECTORS = {
    "retinanet": ModelSpec(MODELS["retinanet"].config, "MODEL.RETINANET", None, 0.5),
    "fcos": ModelSpec(MODELS["fcos"].config, "MODEL.FCOS", None, 0.6),
    "atss": ModelSpec("atss/atss_R-50-FPN_1x.yaml", "MODEL.ATSS", None, 0.6),
}


@dataclass
class BenchmarkSetup:
    """What is compared and how: drdet's `config_file` for the detector `arch` (a MODELS key),
    the batch (`batch` images of `size` (H, W)), autocast, the score threshold of both models,
    the timing (`warmup` then `reps` rounds) and the optional variants (channels_last, drdet
    without Winograd convolutions, drdet without prepare_for_inference, profiler tables)."""

    config_file: str
    arch: str
    device: torch.device
    batch: int
    size: tuple[int, int]
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    score_thresh: float = 0.05
    warmup: int = 2
    reps: int = 5
    channels_last: bool = False
    direct_conv: bool = False
    without_extension: bool = False
    unprepared: bool = False
    profile: bool = False


def drdet_model(
    setup: BenchmarkSetup, loss_type: str, torchvision_state=None, winograd: bool = True
) -> nn.Module:
    """drdet's detector of `setup` in torchvision's conventions with the classification loss
    `loss_type`; with `torchvision_state` (a torchvision model's state dict) holding its
    weights; `winograd`: MODEL.CPU_WINOGRAD."""
    spec = MODELS[setup.arch]
    model = detector_model(setup, spec, setup.config_file, loss_type, winograd)
    if torchvision_state is not None:
        assert spec.convert is not None
        state = spec.convert(torchvision_state, class_columns=range(1, 81))
        model.load_state_dict(state, strict=True)
    return model.to(setup.device)


def detector_model(
    setup: BenchmarkSetup, spec: ModelSpec, config_file: str, loss_type: str, winograd: bool = True
) -> nn.Module:
    """drdet's detector of `config_file` (its node `spec.node`) with the classification loss
    `loss_type`, the benchmark's post-processing parameters and image size, random weights."""
    overrides = {
        "MODEL.CPU_WINOGRAD": winograd,
        "MODEL.DEVICE": setup.device.type,
        f"{spec.node}.LOSS_TYPE": loss_type,
        f"{spec.node}.INFERENCE_TH": setup.score_thresh,
        f"{spec.node}.PRE_NMS_TOP_N": PRE_NMS_TOP_N,
        f"{spec.node}.NMS_TH": spec.nms_thresh,
        "TEST.DETECTIONS_PER_IMG": DETECTIONS_PER_IMG,
        "INPUT.MIN_SIZE_TEST": min(setup.size),
        "INPUT.MAX_SIZE_TEST": max(setup.size),
    }
    cfg = load_config(config_file, [str(i) for kv in overrides.items() for i in kv])
    return build_detector(cfg).to(setup.device)


def torchvision_model(setup: BenchmarkSetup) -> nn.Module:
    """torchvision's RetinaNet R-50-FPN (v1) (arch "fcos": FCOS R-50-FPN) as
    retinanet_resnet50_fpn (fcos_resnet50_fpn) builds it around pretrained weights:
    FrozenBatchNorm2d, layer2..layer4 trainable; random weights. Its internal transform keeps
    the benchmark's image size."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    # num_classes counts torchvision's unused label 0: 80 object classes -> 81.
    detector = FCOS if setup.arch == "fcos" else RetinaNet
    model = detector(
        backbone,
        num_classes=81,
        min_size=min(setup.size),
        max_size=max(setup.size),
        score_thresh=setup.score_thresh,
        nms_thresh=MODELS[setup.arch].nms_thresh,
        detections_per_img=DETECTIONS_PER_IMG,
        topk_candidates=PRE_NMS_TOP_N,
    )
    return model.to(setup.device)


def model_pair(
    setup: BenchmarkSetup, loss_types: Sequence[str] = ("FOCAL",), winograd: bool = True
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """(torchvision model, {loss type: drdet model}) with the same initial weights (seed 0)."""
    torch.manual_seed(0)
    tv = torchvision_model(setup)
    state = {k: v.cpu() for k, v in tv.state_dict().items()}
    return tv, {t: drdet_model(setup, t, state, winograd) for t in loss_types}


def random_batch(
    device: torch.device, n: int, size: Sequence[int], num_boxes: int = 10, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """`n` RGB 0-1 images (3, H, W) of `size` (H, W) and their targets: `num_boxes` boxes
    (x1y1x2y2 pixels, sides 16 px to a fifth of the image more) of labels 1..80 each."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=gen).to(device))
        xy = torch.rand(num_boxes, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(num_boxes, 2, generator=gen) * torch.tensor([w * 0.2, h * 0.2])
        boxes = torch.cat([xy, xy + wh], 1).to(device)
        labels = torch.randint(1, 81, (num_boxes,), generator=gen).to(device)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets
