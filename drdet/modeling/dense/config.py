"""The config keys every dense detector shares: MODEL.NUM_CLASSES (declared with the framework's
keys, drdet/config/defaults.py) and its check."""

from __future__ import annotations

from drdet.config import register_config_check
from drdet.utils.checks import require


def num_foreground_classes(cfg) -> int:
    """C, the classes a dense head predicts: MODEL.NUM_CLASSES counts the background too."""
    return int(cfg.MODEL.NUM_CLASSES) - 1


def check_dense_node(cfg, name: str) -> None:
    """ValueError naming the key for a detector's node `name` (e.g. "MODEL.FCOS") whose keys
    read by the shared dense parts are out of range: NUM_CONVS, PRIOR_PROB (the head,
    drdet.modeling.dense.head.dense_head_args), INFERENCE_TH, NMS_TH, PRE_NMS_TOP_N (the
    post-processing, drdet.modeling.dense.postprocessor.build_dense_postprocessor), and
    CLASS_SCORE_EXPONENT where the node declares it (declare_centerness_keys)."""
    node = cfg
    for part in name.split("."):
        node = node[part]
    for key, ok, expected in (
        ("NUM_CONVS", node.NUM_CONVS >= 0, "must be >= 0"),
        ("PRIOR_PROB", 0.0 < node.PRIOR_PROB < 1.0, "must be in (0, 1)"),
        ("INFERENCE_TH", 0.0 <= node.INFERENCE_TH < 1.0, "must be in [0, 1)"),
        ("NMS_TH", 0.0 <= node.NMS_TH <= 1.0, "must be in [0, 1]"),
        ("PRE_NMS_TOP_N", node.PRE_NMS_TOP_N >= 1, "must be >= 1"),
    ):
        require(ok, f"{name}.{key}", node[key], expected)
    if "CLASS_SCORE_EXPONENT" in node:
        e = node.CLASS_SCORE_EXPONENT
        require(0.0 < e <= 1.0, f"{name}.CLASS_SCORE_EXPONENT", e, "must be in (0, 1] (0.5: sqrt)")


def declare_centerness_keys(node) -> None:
    """Adds to `node` (a detector's CfgNode of defaults) the keys of the shared post-processing
    of heads with centre-ness (FCOS, ATSS)."""
    # The score is sigmoid(class)^e * sigmoid(centre-ness)^(1 - e), e = CLASS_SCORE_EXPONENT in
    # (0, 1]: 0.5 (sqrt of the product) is the published one. A larger e lets the class score
    # rank more: the DR loss's class scores span a narrower range than the focal loss's, so
    # centre-ness (trained on positives only) otherwise decides much of its ranking. The DR
    # loss's setup on FCOS and ATSS sets 0.75 (their config.py, register_loss_setup).
    node.CLASS_SCORE_EXPONENT = 0.5


def check_num_classes_cfg(cfg) -> None:
    n = cfg.MODEL.NUM_CLASSES
    require(n >= 2, "MODEL.NUM_CLASSES", n, "counts the background, so it must be >= 2")


register_config_check("MODEL.NUM_CLASSES", check_num_classes_cfg)
