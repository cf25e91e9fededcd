"""FCOS's config node MODEL.FCOS, its check, and how it takes a classification loss's setup.
Shared keys live elsewhere: MODEL.NUM_CLASSES, MODEL.FPN.USE_C5 (FCOS takes P6 from P5: False),
MODEL.ANCHOR_GENERATOR.CONVENTION (where the locations lie: "exact" (s*j), "torchvision" (its
strides), "maskrcnn_benchmark" (s*j + s/2, the FCOS authors' code)), MODEL.GROUP_NORM, and the
losses' MODEL.FOCAL_LOSS / MODEL.DR_LOSS."""

from __future__ import annotations

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_detector_losses, register_loss_setup
from drdet.modeling.dense import REG_LOSSES
from drdet.modeling.dense.config import check_dense_node, declare_centerness_keys
from drdet.utils.checks import require

_F = CN()
# Classification loss, a registered name: "FOCAL" (FCOS) or "DR".
_F.LOSS_TYPE = "FOCAL"
_F.NUM_CONVS = 4
# GroupNorm in the class and box towers of the head (FCOS: yes).
_F.USE_GN = True
# Initial foreground probability of the classifier (bias = -log((1 - p) / p)).
_F.PRIOR_PROB = 0.01
# Level l takes the locations whose largest distance to the box, max(l, t, r, b), lies in
# [SIZES_OF_INTEREST[l-1], SIZES_OF_INTEREST[l]] (0 below P3, infinity above P7), pixels.
_F.SIZES_OF_INTEREST = (64, 128, 256, 512)
# Positives only within this many strides of the box centre (as well as inside the box);
# 0 turns centre sampling off (every location inside the box).
_F.CENTER_SAMPLING_RADIUS = 1.5
# With centre sampling, the locations inside a box (and in its level's range) but outside its
# centre region: background (False: the FCOS authors' code, torchvision) or left out of the
# classification loss (True: labelled -1, neither positive nor negative; it cost DR-FCOS 3.2 AP
# on the synthetic set, one seed: docs/BENCHMARKS.md).
_F.IGNORE_OUTSIDE_CENTER = False
# Box loss: "giou" (1 - GIoU, torchvision) or "iou" (-ln IoU, the FCOS paper).
_F.REG_LOSS = "giou"
# Weight each positive's box loss by its centre-ness target and divide by their sum (the FCOS
# authors' code) instead of by the number of positives (torchvision).
_F.CENTERNESS_WEIGHTED_REG = False
declare_centerness_keys(_F)
# Scores (see declare_centerness_keys) at or below this are dropped before NMS (torchvision:
# 0.2).
_F.INFERENCE_TH = 0.2
_F.PRE_NMS_TOP_N = 1000
_F.NMS_TH = 0.6
add_config_node("MODEL.FCOS", _F)

# The classification loss is MODEL.FCOS.LOSS_TYPE. FCOS has no IoU matcher, and its score
# threshold and NMS apply to sqrt(class score * centre-ness), the same for every loss: of a
# loss's setup it takes the prior (DR: 0.5, which carried over from Dr. Retina; focal: 0.01).
register_detector_losses(
    "FCOS", loss_key="MODEL.FCOS.LOSS_TYPE", fields={"prior_prob": "MODEL.FCOS.PRIOR_PROB"}
)
# DR on FCOS (docs/BENCHMARKS.md, "FCOS: DR vs focal loss"; means of 3 seeds):
# - scores class^0.75 x centre-ness^0.25. Its class scores span a narrow range, so under the
#   published square root centre-ness decides most of its ranking. 0.75 gave DR +1.9 AP on the
#   synthetic set and +2.4 on a held-out one; it costs the focal loss 0.6-0.7, so focal keeps 0.5;
# - weighs its classification loss by tau = 1 instead of Dr. Retina's 4 (its value then ends near
#   the focal loss's): +1.0 AP on the synthetic set and +0.46 on the held-out one.
register_loss_setup(
    "DR", "FCOS", {"MODEL.FCOS.CLASS_SCORE_EXPONENT": 0.75, "MODEL.DR_LOSS.TAU": 1.0}
)


def check_fcos_cfg(cfg) -> None:
    """ValueError naming the key for MODEL.FCOS values FCOS cannot use."""
    check_dense_node(cfg, "MODEL.FCOS")
    f = cfg.MODEL.FCOS
    require(
        len(f.SIZES_OF_INTEREST) >= 1
        and all(s > 0 for s in f.SIZES_OF_INTEREST)
        and list(f.SIZES_OF_INTEREST) == sorted(f.SIZES_OF_INTEREST),
        "MODEL.FCOS.SIZES_OF_INTEREST",
        f.SIZES_OF_INTEREST,
        "needs increasing positive bounds between the levels (4 for P3-P7)",
    )
    require(
        f.CENTER_SAMPLING_RADIUS >= 0.0,
        "MODEL.FCOS.CENTER_SAMPLING_RADIUS",
        f.CENTER_SAMPLING_RADIUS,
        "must be >= 0 (0: off)",
    )
    require(
        f.REG_LOSS in REG_LOSSES,
        "MODEL.FCOS.REG_LOSS",
        f.REG_LOSS,
        f"must be one of {list(REG_LOSSES)}",
    )
