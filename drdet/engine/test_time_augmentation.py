"""Multi-scale and horizontal-flip test (TEST.BBOX_AUG), merged by class-aware NMS.

For each scale s of TEST.BBOX_AUG.SCALES (the paper: 400 to 1200) the image is resized so its
shorter side is s (longer side at most TEST.BBOX_AUG.MAX_SIZE), and, with TEST.BBOX_AUG.H_FLIP,
also flipped; the detections of every variant are mapped back to the original image, pooled, and
reduced by class-aware NMS to TEST.DETECTIONS_PER_IMG per image. The merge uses the detector's
own NMS threshold (its post-processor's: MODEL.RETINANET.NMS_TH, MODEL.FCOS.NMS_TH, ...).
The variants are resized from the image the test loader produced (shorter side MIN_SIZE_TEST).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drdet.checkpoint import unwrap_model
from drdet.config import register_config_check
from drdet.data.transforms import resized_hw
from drdet.layers import batched_nms
from drdet.utils.checks import require


def merge_detections(
    detections: Sequence[dict[str, Tensor]], nms_thresh: float, max_detections: int
) -> dict[str, Tensor]:
    """Pools the detections of several test variants of one image (all in the same pixel frame)
    and keeps the top `max_detections` after class-aware NMS."""
    boxes = torch.cat([d["boxes"] for d in detections])
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def detector_nms_thresh(model: nn.Module) -> float:
    """The class-aware NMS threshold of ``model``'s own post-processing (``postprocessor``'s
    ``nms_thresh``; a DistributedDataParallel wrapper is looked through)."""
    detector = unwrap_model(model)
    thresh = getattr(getattr(detector, "postprocessor", None), "nms_thresh", None)
    if thresh is None:
        raise ValueError(
            f"TEST.BBOX_AUG: {type(detector).__name__} has no postprocessor.nms_thresh to merge "
            "the test variants with; give BBoxAug an nms_thresh"
        )
    return float(thresh)


class BBoxAug:
    """Args: scales, max_size, h_flip: see the module; nms_thresh: the merge's NMS threshold,
    None for the detector's own (:func:`detector_nms_thresh`); max_detections: per image."""

    def __init__(
        self,
        scales: Sequence[int],
        max_size: int,
        h_flip: bool,
        nms_thresh: float | None,
        max_detections: int,
    ):
        if not scales:
            raise ValueError(
                "TEST.BBOX_AUG.ENABLED needs TEST.BBOX_AUG.SCALES, e.g. (400, 500, "
                "600, 700, 800, 900, 1000, 1100, 1200)"
            )
        self.scales = list(scales)
        self.max_size = max_size
        self.h_flip = h_flip
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections

    @torch.no_grad()
    def __call__(
        self, model: nn.Module, images: list[Tensor], targets: list[dict]
    ) -> list[dict[str, Tensor]]:
        nms_thresh = detector_nms_thresh(model) if self.nms_thresh is None else self.nms_thresh
        outputs = []
        for image, target in zip(images, targets):
            orig_h, orig_w = (int(v) for v in target["orig_size"])
            variants = []
            for scale in self.scales:
                h, w = resized_hw(orig_h, orig_w, scale, self.max_size)
                resized = F.interpolate(
                    image[None], size=(h, w), mode="bilinear", align_corners=False
                )[0]
                flips = (False, True) if self.h_flip else (False,)
                for flip in flips:
                    x = resized.flip(-1) if flip else resized
                    det = model([x], original_sizes=[(orig_h, orig_w)])[0]
                    if flip:
                        boxes = det["boxes"].clone()
                        boxes[:, 0] = orig_w - det["boxes"][:, 2]
                        boxes[:, 2] = orig_w - det["boxes"][:, 0]
                        det = dict(det, boxes=boxes)
                    variants.append(det)
            outputs.append(merge_detections(variants, nms_thresh, self.max_detections))
        return outputs


def build_bbox_aug(cfg) -> BBoxAug:
    """From cfg.TEST.BBOX_AUG and cfg.TEST.DETECTIONS_PER_IMG; the merge uses the detector's own
    NMS threshold."""
    aug = cfg.TEST.BBOX_AUG
    return BBoxAug(aug.SCALES, aug.MAX_SIZE, aug.H_FLIP, None, cfg.TEST.DETECTIONS_PER_IMG)


def check_test_cfg(cfg) -> None:
    """ValueError naming the TEST key the evaluation cannot use (before any model is built)."""
    t = cfg.TEST
    require(t.IMS_PER_BATCH >= 1, "TEST.IMS_PER_BATCH", t.IMS_PER_BATCH, "must be >= 1")
    require(
        t.DETECTIONS_PER_IMG >= 1, "TEST.DETECTIONS_PER_IMG", t.DETECTIONS_PER_IMG, "must be >= 1"
    )
    aug = t.BBOX_AUG
    require(
        not aug.ENABLED or (len(aug.SCALES) >= 1 and all(s > 0 for s in aug.SCALES)),
        "TEST.BBOX_AUG.SCALES",
        aug.SCALES,
        "TEST.BBOX_AUG.ENABLED needs the test scales, e.g. (400, 500, 600, 700, 800, 900, "
        "1000, 1100, 1200)",
    )


register_config_check("TEST", check_test_cfg)
