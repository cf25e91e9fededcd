"""ATSS's config node MODEL.ATSS, its check, and how it takes a classification loss's setup.
Shared keys live elsewhere: MODEL.NUM_CLASSES, MODEL.FPN.USE_C5 (ATSS takes P6 from P5: False),
MODEL.ANCHOR_GENERATOR.CONVENTION (where the anchors lie), MODEL.GROUP_NORM, and the losses'
MODEL.FOCAL_LOSS / MODEL.DR_LOSS."""

from __future__ import annotations

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_detector_losses, register_loss_setup
from drdet.modeling.dense.config import check_dense_node, declare_centerness_keys
from drdet.utils.checks import require

_A = CN()
# Classification loss, a registered name: "FOCAL" (ATSS) or "DR".
_A.LOSS_TYPE = "FOCAL"
_A.NUM_CONVS = 4
# GroupNorm in the class and box towers of the head (ATSS: yes).
_A.USE_GN = True
# Initial foreground probability of the classifier (bias = -log((1 - p) / p)).
_A.PRIOR_PROB = 0.01
# One square anchor per location, of side ANCHOR_SCALE x the level's stride (8: 64 px on P3).
_A.ANCHOR_SCALE = 8.0
# Candidates per box and level: the TOPK anchors whose centres are closest to the box centre.
_A.TOPK = 9
# Box deltas (dx, dy, dw, dh) against the anchor, weighted as in drdet.modeling.box_coder:
# (10, 10, 5, 5) is both the ATSS authors' BoxCoder (github.com/sfzhang15/ATSS, "BOX"
# regression) and mmdetection's DeltaXYWHBBoxCoder with target_stds (0.1, 0.1, 0.2, 0.2), i.e.
# the weights the published models were trained with (and RetinaNet's).
_A.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Weight of the box loss (1 - GIoU, centre-ness weighted) in the total: 2.0 in the authors'
# code (REG_LOSS_WEIGHT) and in mmdetection (GIoULoss loss_weight).
_A.REG_LOSS_WEIGHT = 2.0
declare_centerness_keys(_A)
# Scores (see declare_centerness_keys) at or below this are dropped before NMS. 0.05 is the
# authors' value (which they apply to the class score alone; on the product it keeps at least
# as many candidates wherever centre-ness >= 0.05).
_A.INFERENCE_TH = 0.05
_A.PRE_NMS_TOP_N = 1000
_A.NMS_TH = 0.6
add_config_node("MODEL.ATSS", _A)

# The classification loss is MODEL.ATSS.LOSS_TYPE. ATSS has no IoU matcher (its assigner has no
# threshold to set), and its score threshold and NMS apply to sqrt(class score * centre-ness),
# the same quantity for every loss, not the class score the recipes' thresholds were set on
# (RetinaNet's): of a loss's setup it takes the prior (DR: 0.5, focal: 0.01).
register_detector_losses(
    "ATSS", loss_key="MODEL.ATSS.LOSS_TYPE", fields={"prior_prob": "MODEL.ATSS.PRIOR_PROB"}
)
# DR on ATSS, as on FCOS (drdet/modeling/fcos/config.py), scores class^0.75 x centre-ness^0.25
# (+2.7 AP on the synthetic set and +2.0 on a held-out one at tau 4) and weighs the loss by tau = 1,
# which brings it to the focal loss's scale (at Dr. Retina's 4 it ends training near 1.0 against
# focal's 0.2): +1.3 AP on the synthetic set, -0.1 on the held-out one, and DR ahead of focal on
# both only with it (means of 3 seeds; docs/BENCHMARKS.md, "ATSS: DR vs focal loss").
register_loss_setup(
    "DR", "ATSS", {"MODEL.ATSS.CLASS_SCORE_EXPONENT": 0.75, "MODEL.DR_LOSS.TAU": 1.0}
)


def check_atss_cfg(cfg) -> None:
    """ValueError naming the key for MODEL.ATSS values ATSS cannot use."""
    check_dense_node(cfg, "MODEL.ATSS")
    a = cfg.MODEL.ATSS
    require(a.ANCHOR_SCALE > 0, "MODEL.ATSS.ANCHOR_SCALE", a.ANCHOR_SCALE, "must be > 0")
    require(a.TOPK >= 1, "MODEL.ATSS.TOPK", a.TOPK, "must be >= 1")
    require(
        len(a.BBOX_REG_WEIGHTS) == 4 and all(w > 0 for w in a.BBOX_REG_WEIGHTS),
        "MODEL.ATSS.BBOX_REG_WEIGHTS",
        a.BBOX_REG_WEIGHTS,
        "needs 4 positive weights (dx, dy, dw, dh)",
    )
    require(a.REG_LOSS_WEIGHT >= 0, "MODEL.ATSS.REG_LOSS_WEIGHT", a.REG_LOSS_WEIGHT, "must be >= 0")
