"""The parts every dense detector shares: the template detector (preprocess, dense core, loss or
post-processing), the heads' towers and level packing, the targets' padding and check, the
losses' normalizer and box losses, and the post-processing. The detectors (retinanet/, fcos/,
...) stand beside this package and import nothing from each other."""

from drdet.modeling.dense.config import (
    check_dense_node,
    declare_centerness_keys,
    num_foreground_classes,
)
from drdet.modeling.dense.detector import DenseDetector, backbone_strides, input_args
from drdet.modeling.dense.head import (
    CenternessHead,
    DenseHead,
    conv_tower,
    dense_head_args,
    flatten_levels,
    head_norm_groups,
    init_dense_head,
)
from drdet.modeling.dense.losses import (
    REG_LOSSES,
    DenseLoss,
    centerness_losses,
    centerness_targets,
    dense_loss_args,
    iou_loss,
    per_rank_average,
)
from drdet.modeling.dense.outputs import DenseOutputs
from drdet.modeling.dense.postprocessor import (
    BoxDecoder,
    DensePostProcessor,
    build_dense_postprocessor,
    centerness_weighted_logits,
    score_logits,
)
from drdet.modeling.dense.targets import (
    PaddedTargets,
    check_targets,
    matched_targets,
    pad_targets,
)

__all__ = [
    "REG_LOSSES",
    "BoxDecoder",
    "CenternessHead",
    "DenseDetector",
    "DenseHead",
    "DenseLoss",
    "DenseOutputs",
    "PaddedTargets",
    "DensePostProcessor",
    "backbone_strides",
    "build_dense_postprocessor",
    "centerness_losses",
    "check_dense_node",
    "declare_centerness_keys",
    "centerness_targets",
    "centerness_weighted_logits",
    "score_logits",
    "check_targets",
    "conv_tower",
    "dense_head_args",
    "dense_loss_args",
    "flatten_levels",
    "head_norm_groups",
    "init_dense_head",
    "input_args",
    "iou_loss",
    "matched_targets",
    "num_foreground_classes",
    "pad_targets",
    "per_rank_average",
]
