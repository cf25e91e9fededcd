"""RetinaNet's config node MODEL.RETINANET, its check, and how it takes a classification loss's
setup. Shared keys live elsewhere: MODEL.NUM_CLASSES, MODEL.FPN.USE_C5,
MODEL.ANCHOR_GENERATOR.CONVENTION, MODEL.FOCAL_LOSS / MODEL.DR_LOSS."""

from __future__ import annotations

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_detector_losses
from drdet.modeling.dense.config import check_dense_node
from drdet.utils.checks import require

_R = CN()
# One anchor size per pyramid level P3-P7 (pixels); the level's stride is the backbone's.
_R.ANCHOR_SIZES = (32, 64, 128, 256, 512)
_R.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_R.OCTAVE = 2.0
_R.SCALES_PER_OCTAVE = 3
_R.NUM_CONVS = 4
# GroupNorm in the class and box towers of the head.
_R.USE_GN = False
_R.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_R.BBOX_REG_BETA = 0.11
# Divisor of the regression loss per positive anchor (maskrcnn-benchmark: 4, one per coordinate).
_R.BBOX_REG_WEIGHT = 4.0
_R.PRE_NMS_TOP_N = 1000
_R.NMS_TH = 0.5
# IoU >= FG_IOU_THRESHOLD: foreground; < BG_IOU_THRESHOLD: background; between: ignored.
_R.FG_IOU_THRESHOLD = 0.5
_R.BG_IOU_THRESHOLD = 0.4
# Each ground-truth box also keeps the anchors of highest IoU with it (drdet's key).
_R.ALLOW_LOW_QUALITY_MATCHES = True
# Initial foreground probability of the classifier (bias = -log((1 - p) / p)).
_R.PRIOR_PROB = 0.01
# Scores at or below this are dropped before NMS.
_R.INFERENCE_TH = 0.05
# Classification loss, a registered name: "FOCAL" (RetinaNet) or "DR" (Dr. Retina). drdet's key.
_R.LOSS_TYPE = "FOCAL"
add_config_node("MODEL.RETINANET", _R)

# The classification loss is MODEL.RETINANET.LOSS_TYPE; RetinaNet takes every field of a loss's
# setup (drdet/config/setups.py).
register_detector_losses(
    "RetinaNet",
    loss_key="MODEL.RETINANET.LOSS_TYPE",
    fields={
        "prior_prob": "MODEL.RETINANET.PRIOR_PROB",
        "fg_iou_threshold": "MODEL.RETINANET.FG_IOU_THRESHOLD",
        "bg_iou_threshold": "MODEL.RETINANET.BG_IOU_THRESHOLD",
        "score_threshold": "MODEL.RETINANET.INFERENCE_TH",
        "nms_threshold": "MODEL.RETINANET.NMS_TH",
    },
)


def check_retinanet_cfg(cfg) -> None:
    """ValueError naming the key for MODEL.RETINANET values RetinaNet cannot use. (That there
    is one anchor size per level of the backbone is checked when the detector is built.)"""
    check_dense_node(cfg, "MODEL.RETINANET")
    r = cfg.MODEL.RETINANET
    require(
        len(r.ANCHOR_SIZES) >= 1 and all(s > 0 for s in r.ANCHOR_SIZES),
        "MODEL.RETINANET.ANCHOR_SIZES",
        r.ANCHOR_SIZES,
        "needs one positive size per pyramid level",
    )
    require(
        len(r.ASPECT_RATIOS) >= 1 and all(a > 0 for a in r.ASPECT_RATIOS),
        "MODEL.RETINANET.ASPECT_RATIOS",
        r.ASPECT_RATIOS,
        "must be positive numbers",
    )
    require(
        r.SCALES_PER_OCTAVE >= 1,
        "MODEL.RETINANET.SCALES_PER_OCTAVE",
        r.SCALES_PER_OCTAVE,
        "must be >= 1",
    )
    require(
        0.0 <= r.BG_IOU_THRESHOLD <= r.FG_IOU_THRESHOLD <= 1.0,
        "MODEL.RETINANET.BG_IOU_THRESHOLD",
        r.BG_IOU_THRESHOLD,
        f"needs 0 <= BG_IOU_THRESHOLD <= FG_IOU_THRESHOLD ({r.FG_IOU_THRESHOLD}) <= 1",
    )
    require(
        r.BBOX_REG_BETA >= 0.0, "MODEL.RETINANET.BBOX_REG_BETA", r.BBOX_REG_BETA, "must be >= 0"
    )
