"""The sigmoid focal loss of RetinaNet (Lin et al., 2017) as a classification loss."""

from torch import Tensor

from drdet.layers.sigmoid_focal_loss import sigmoid_focal_loss
from drdet.modeling.losses.setup import register_loss_setup
from drdet.modeling.registry import CLASSIFICATION_LOSSES

# RetinaNet's setup (Lin et al. 2017; maskrcnn-benchmark's configs): prior probability 0.01,
# matcher FG 0.5 / BG 0.4 (anchors in between ignored), score threshold 0.05, NMS at 0.4.
register_loss_setup(
    "FOCAL",
    "RetinaNet",
    {
        "MODEL.RETINANET.PRIOR_PROB": 0.01,
        "MODEL.RETINANET.FG_IOU_THRESHOLD": 0.5,
        "MODEL.RETINANET.BG_IOU_THRESHOLD": 0.4,
        "MODEL.RETINANET.INFERENCE_TH": 0.05,
        "MODEL.RETINANET.NMS_TH": 0.4,
    },
)
register_loss_setup("FOCAL", "FCOS", {"MODEL.FCOS.PRIOR_PROB": 0.01})  # FCOS (Tian et al.)


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


@CLASSIFICATION_LOSSES.register("FOCAL")
def build_focal_loss(cfg) -> FocalLoss:
    """From MODEL.RETINANET.LOSS_GAMMA and LOSS_ALPHA."""
    return FocalLoss(gamma=cfg.MODEL.RETINANET.LOSS_GAMMA, alpha=cfg.MODEL.RETINANET.LOSS_ALPHA)
