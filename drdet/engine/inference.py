"""Inference over a test set and its evaluation.

Each rank runs the detector on its own shard of the dataset (the inference sampler gives every
image to exactly one rank, without padding); the predictions are gathered on rank 0, checked to
cover every image exactly once, and evaluated with pycocotools (COCO-format sets) or the VOC
metric (VOC sets).
"""
import logging
import time
from typing import Dict, Optional

import torch
from torch import nn
from tqdm import tqdm

from drdet.evaluation import evaluate_coco, gather_predictions
from drdet.utils import comm
from drdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


@torch.no_grad()
def run_inference(model: nn.Module, data_loader, device: torch.device,
                  bbox_aug=None) -> Dict[int, Dict[str, torch.Tensor]]:
    """{image_id: {"boxes" (K, 4) in the original image's pixels, "scores" (K,), "labels" (K,)}}
    for the images of this rank's shard, on the CPU. `bbox_aug(model, images, targets)`, when
    given, replaces the plain forward (multi-scale / flip test)."""
    model.eval()
    predictions = {}
    start = time.perf_counter()
    for images, targets, _ in tqdm(data_loader, desc="inference", disable=not comm.is_main_process(),
                                   dynamic_ncols=True):
        images = [img.to(device, non_blocking=True) for img in images]
        if bbox_aug is not None:
            outputs = bbox_aug(model, images, targets)
        else:
            outputs = model(images, original_sizes=[tuple(t["orig_size"]) for t in targets])
        for target, out in zip(targets, outputs):
            predictions[int(target["image_id"])] = {k: v.cpu() for k, v in out.items()}
    elapsed = time.perf_counter() - start
    logger.info("Inference: %d images in %.1f s (%.4f s / image on this rank)", len(predictions),
                elapsed, elapsed / max(1, len(predictions)))
    return predictions


def inference(model: nn.Module, data_loader, dataset, device: torch.device,
              output_folder: Optional[str] = None, per_category: bool = False,
              bbox_aug=None) -> Optional[Dict[str, float]]:
    """Runs the detector on `dataset` (through `data_loader`) and evaluates it.

    `dataset` provides `image_ids` (every image id of the set), and either `coco` (a pycocotools
    COCO object) with `contiguous_to_json` (label 1..C -> json category id), or an
    `evaluate(predictions)` method of its own (e.g. VOC). Returns the metrics dict on rank 0 (also
    written to output_folder/metrics.json) and None on the other ranks.
    """
    local = run_inference(model, data_loader, device, bbox_aug=bbox_aug)
    predictions = gather_predictions(local, dataset.image_ids)
    if not comm.is_main_process():
        comm.synchronize()
        return None
    if hasattr(dataset, "evaluate"):
        metrics = dataset.evaluate(predictions, output_folder=output_folder)
    else:
        metrics = evaluate_coco(dataset.coco, predictions, dataset.contiguous_to_json,
                                output_folder=output_folder, per_category=per_category)
    if output_folder:
        atomic_write_json(f"{output_folder}/metrics.json", metrics)
    comm.synchronize()
    return metrics
