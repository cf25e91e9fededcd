"""The sigmoid focal loss of RetinaNet (Lin et al., 2017) as a classification loss, its config
node MODEL.FOCAL_LOSS and the setup it brings."""

from torch import Tensor

from drdet.config import CfgNode as CN
from drdet.config import add_config_node, register_loss_recipe
from drdet.layers.sigmoid_focal_loss import sigmoid_focal_loss
from drdet.modeling.registry import CLASSIFICATION_LOSSES
from drdet.utils.checks import require

_FOCAL_LOSS = CN()
# Weight of the positive entries (negatives: 1 - ALPHA), in [0, 1].
_FOCAL_LOSS.ALPHA = 0.25
# Focusing parameter, >= 0 (0: alpha-weighted binary cross-entropy).
_FOCAL_LOSS.GAMMA = 2.0
add_config_node("MODEL.FOCAL_LOSS", _FOCAL_LOSS)

# RetinaNet's setup (Lin et al. 2017; maskrcnn-benchmark's configs): prior probability 0.01,
# matcher FG 0.5 / BG 0.4 (anchors in between ignored), score threshold 0.05, NMS at 0.4.
register_loss_recipe(
    "FOCAL",
    prior_prob=0.01,
    fg_iou_threshold=0.5,
    bg_iou_threshold=0.4,
    score_threshold=0.05,
    nms_threshold=0.4,
)


class FocalLoss:
    """Sigmoid focal loss summed over the non-ignored entries, divided by the normalizer
    (maskrcnn-benchmark's RetinaNet: positives + images, which keeps it finite without
    positives)."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        self.gamma = gamma
        self.alpha = alpha

    def __call__(self, logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor:
        """logits (B, A, C), labels (B, A) in {-1, 0, 1..C}, normalizer a float scalar."""
        flat = logits.reshape(-1, logits.shape[-1])
        loss = sigmoid_focal_loss(flat, labels.reshape(-1), gamma=self.gamma, alpha=self.alpha)
        return loss / normalizer

    def __repr__(self) -> str:
        return f"FocalLoss(gamma={self.gamma}, alpha={self.alpha})"


def check_focal_loss_cfg(cfg) -> None:
    f = cfg.MODEL.FOCAL_LOSS
    require(0.0 <= f.ALPHA <= 1.0, "MODEL.FOCAL_LOSS.ALPHA", f.ALPHA, "must be in [0, 1]")
    require(f.GAMMA >= 0.0, "MODEL.FOCAL_LOSS.GAMMA", f.GAMMA, "must be >= 0")


@CLASSIFICATION_LOSSES.register("FOCAL", check=check_focal_loss_cfg)
def build_focal_loss(cfg) -> FocalLoss:
    """From MODEL.FOCAL_LOSS."""
    return FocalLoss(gamma=cfg.MODEL.FOCAL_LOSS.GAMMA, alpha=cfg.MODEL.FOCAL_LOSS.ALPHA)
