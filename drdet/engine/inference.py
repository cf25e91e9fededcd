"""Inference over a test set and its evaluation.

Each rank runs the detector on its own shard of the dataset (the inference sampler gives every
image to exactly one rank, without padding); the predictions are gathered on rank 0, checked to
cover every image exactly once, and evaluated by the evaluators the dataset names
(drdet.evaluation.EVALUATORS: pycocotools for COCO-format sets, also the VOC metric for VOC sets).
"""

import logging
import time

import torch
from torch import nn
from tqdm import tqdm

from drdet.evaluation import gather_predictions, run_evaluators
from drdet.modeling.inference_copy import prepare_for_inference
from drdet.utils import comm
from drdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


@torch.no_grad()
def run_inference(
    model: nn.Module, data_loader, device: torch.device, bbox_aug=None
) -> dict[int, dict[str, torch.Tensor]]:
    """{image_id: {"boxes" (K, 4) in the original image's pixels, "scores" (K,), "labels" (K,)}}
    for the images of this rank's shard, on the CPU. `bbox_aug(model, images, targets)`, when
    given, replaces the plain forward (multi-scale / flip test).

    The images go through `prepare_for_inference(model)`, a copy with FrozenBN folded into the
    convolutions (channels_last on the CPU); `model` itself is not modified."""
    model = prepare_for_inference(model)
    predictions = {}
    start = time.perf_counter()
    for images, targets, _ in tqdm(
        data_loader, desc="inference", disable=not comm.is_main_process(), dynamic_ncols=True
    ):
        images = [img.to(device, non_blocking=True) for img in images]
        if bbox_aug is not None:
            outputs = bbox_aug(model, images, targets)
        else:
            outputs = model(images, original_sizes=[tuple(t["orig_size"]) for t in targets])
        for target, out in zip(targets, outputs):
            predictions[int(target["image_id"])] = {k: v.cpu() for k, v in out.items()}
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference: %d images in %.1f s (%.4f s / image on this rank)",
        len(predictions),
        elapsed,
        elapsed / max(1, len(predictions)),
    )
    return predictions


def dataset_image_ids(dataset) -> list[int]:
    """The image id of every entry of `dataset` (COCO or VOC dataset)."""
    return [int(dataset.get_img_info(i)["id"]) for i in range(len(dataset))]


def evaluate_predictions(
    dataset, predictions, output_folder: str | None = None, per_category: bool = False
) -> dict[str, float]:
    """The metrics of the evaluators `dataset` names (drdet.evaluation.EVALUATORS): COCO bbox
    metrics (pycocotools, "coco") for COCO-format sets; for VOC sets also the VOC07 11-point
    mAP at IoU 0.5 with difficult objects ignored ("voc07": "VOC07_mAP50")."""
    return run_evaluators(
        dataset, predictions, output_folder=output_folder, per_category=per_category
    )


def inference(
    model: nn.Module,
    data_loader,
    dataset,
    device: torch.device,
    output_folder: str | None = None,
    per_category: bool = False,
    bbox_aug=None,
) -> dict[str, float] | None:
    """Runs the detector on `dataset` (through `data_loader`, whose sampler gives each rank its
    own images) and evaluates it on rank 0. Returns the metrics dict on rank 0 (also written to
    output_folder/metrics.json, atomically) and None on the other ranks. Every image of the set
    must be predicted exactly once over all ranks, or this raises."""
    local = run_inference(model, data_loader, device, bbox_aug=bbox_aug)
    predictions = gather_predictions(local, dataset_image_ids(dataset))
    metrics = None
    if comm.is_main_process():
        metrics = evaluate_predictions(dataset, predictions, output_folder, per_category)
        if output_folder:
            atomic_write_json(f"{output_folder}/metrics.json", metrics)
    comm.synchronize()
    return metrics
