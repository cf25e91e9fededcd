"""The parts every dense detector shares: the template detector (preprocess, dense core, loss or
post-processing), the heads' towers and level packing, the targets' padding and check, the
losses' normalizer and box losses, and the post-processing. The detectors (retinanet/, fcos/,
...) stand beside this package and import nothing from each other."""

from drdet.modeling.dense.config import num_foreground_classes
from drdet.modeling.dense.detector import DenseDetector
from drdet.modeling.dense.head import (
    DenseHead,
    conv_tower,
    flatten_levels,
    head_norm_groups,
    init_dense_head,
)
from drdet.modeling.dense.losses import REG_LOSSES, centerness_targets, iou_loss, per_rank_average
from drdet.modeling.dense.outputs import DenseOutputs
from drdet.modeling.dense.postprocessor import (
    BoxDecoder,
    DensePostProcessor,
    build_dense_postprocessor,
    centerness_weighted_logits,
)
from drdet.modeling.dense.targets import check_targets, pad_targets

__all__ = [
    "REG_LOSSES",
    "BoxDecoder",
    "DenseDetector",
    "DenseHead",
    "DenseOutputs",
    "DensePostProcessor",
    "build_dense_postprocessor",
    "centerness_targets",
    "centerness_weighted_logits",
    "check_targets",
    "conv_tower",
    "flatten_levels",
    "head_norm_groups",
    "init_dense_head",
    "iou_loss",
    "num_foreground_classes",
    "pad_targets",
    "per_rank_average",
]
