"""build_data_loader: the config-driven assembly of datasets, transforms, samplers and collate.

Config keys read (maskrcnn-benchmark names): DATASETS.TRAIN/TEST, INPUT.*, SOLVER.IMS_PER_BATCH,
SOLVER.MAX_ITER, TEST.IMS_PER_BATCH, DATALOADER.NUM_WORKERS, DATALOADER.ASPECT_RATIO_GROUPING,
and (drdet) DATALOADER.SEED (default 0): the seed of the training index stream,
DATALOADER.MAX_BAD_IMAGES (default 0): how many unreadable images training skips,
TEST.COCO_EVAL_BACKEND: set on test sets as `coco_eval_backend`, for their "coco" evaluator
(drdet.evaluation, which checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from drdet.utils import comm
from drdet.utils.errors import UserValueError

from .bad_images import BadImageLog, ReadPolicy
from .catalog import get_dataset
from .collate import collate_with_bad_images
from .samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    IterationBasedBatchSampler,
    TrainingSampler,
)
from .transforms import build_transforms

# A detection dataset (COCODataset, VOCDataset) or a ConcatDataset of them: sized, with
# get_img_info(i), num_classes and a read_policy (duck-typed, as torch's Dataset is not Sized).
DetectionDataset = Any

logger = logging.getLogger(__name__)


def world_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) outside distributed runs."""
    return comm.get_rank(), comm.get_world_size()


def _parts(dataset: DetectionDataset) -> list[DetectionDataset]:
    return list(dataset.datasets) if isinstance(dataset, ConcatDataset) else [dataset]


def build_dataset(names: Sequence[str], transforms, is_train: bool) -> DetectionDataset:
    """The datasets called `names`, concatenated (a single one is returned as is).

    All of them must have the same classes, in the same order (their contiguous labels must mean
    the same thing).
    """
    if isinstance(names, str) or not names:
        raise UserValueError(
            f"need a non-empty list of dataset names (DATASETS.TRAIN / TEST), got {names!r}"
        )
    datasets = [get_dataset(name, transforms, is_train) for name in names]
    first = datasets[0]
    for other in datasets[1:]:
        if other.class_names != first.class_names:
            raise UserValueError(
                f"datasets {first.name!r} and {other.name!r} have different classes: "
                f"{first.class_names} vs {other.class_names}"
            )
    return first if len(datasets) == 1 else ConcatDataset(datasets)


def check_training_set(dataset: DetectionDataset, names: Sequence[str]) -> None:
    """Raises a ValueError that says, per annotation file, why no image of the training set
    `dataset` (DATASETS.TRAIN = `names`) is left to train on: how many images it lists and how
    many were skipped for which reason (the datasets' `skipped_images`)."""
    if len(dataset) > 0:
        return
    problems = []
    for part in _parts(dataset):
        source = getattr(part, "annotation_source", getattr(part, "name", "?"))
        listed = getattr(part, "num_images_listed", None)
        if listed == 0:
            problems.append(f"{source} lists no images")
            continue
        skipped = getattr(part, "skipped_images", {})
        reasons = f" ({', '.join(f'{n} {why}' for why, n in skipped.items())})" if skipped else ""
        images = "images" if listed is None else f"{listed} images"
        problems.append(f"{source}: none of the {images} has a usable box{reasons}")
    raise UserValueError(
        f"training set {', '.join(names)} has no image to train on: " + "; ".join(problems)
    )


def aspect_ratio_group_ids(dataset: DetectionDataset) -> list[int]:
    """Group id of every index: 0 for landscape or square images (w >= h), 1 for portrait."""
    ids = []
    for part in _parts(dataset):
        if hasattr(part, "image_sizes"):  # (N, 2) heights and widths in one array
            sizes = part.image_sizes()
            ids += (sizes[:, 1] < sizes[:, 0]).astype(int).tolist()
            continue
        for i in range(len(part)):
            info = part.get_img_info(i)
            ids.append(0 if info["width"] >= info["height"] else 1)
    return ids


def num_dropped_boxes(dataset: DetectionDataset) -> int:
    """Boxes dropped because they were empty after clipping to their image (all parts)."""
    return sum(getattr(part, "num_dropped_boxes", 0) for part in _parts(dataset))


class DetectionDataLoader(DataLoader):
    """A DataLoader whose batches are (images, targets, indices) and whose `bad_images` (a
    drdet.data.bad_images.BadImageLog) collects, in this process, the unreadable images its
    workers met: warned about, counted, and an error past the limit or in evaluation."""

    def __init__(self, *args, bad_images: BadImageLog, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_images = bad_images

    def __iter__(self):
        for images, targets, indices, records, complete in super().__iter__():
            self.bad_images.add(records, replaced=complete)
            yield images, targets, indices


def _per_rank_batch(total: int, world_size: int, key: str) -> int:
    if total < 1 or total % world_size:
        raise UserValueError(
            f"{key} ({total}) must be a positive multiple of the number of processes "
            f"({world_size}): each process takes {key} / {world_size} images"
        )
    return total // world_size


def _prepare_parts(
    dataset: DetectionDataset, cfg, is_train: bool, names: Sequence[str]
) -> BadImageLog:
    """Set each part's read policy (and, on test sets, `coco_eval_backend` from
    TEST.COCO_EVAL_BACKEND); returns the loader's BadImageLog."""
    max_bad = int(cfg.DATALOADER.get("MAX_BAD_IMAGES", 0))
    # Training reads up to max_bad + 1 replacements: one more than the limit lets a run that
    # allows none still finish the iteration on every rank before all of them stop together.
    policy = ReadPolicy(replacements=max_bad + 1 if is_train else 0)
    for part in _parts(dataset):
        part.read_policy = policy
        if not is_train and "COCO_EVAL_BACKEND" in cfg.TEST:
            part.coco_eval_backend = cfg.TEST.COCO_EVAL_BACKEND
    return BadImageLog(max_bad if is_train else None, name=", ".join(names))


def _batch_sampler(
    cfg,
    size: int,
    group_ids: list[int] | None,
    is_train: bool,
    seed: int,
    rank: int,
    world_size: int,
    start_iter: int,
) -> tuple[int, Sampler[list[int]]]:
    """(images per batch on this rank, the batch sampler) of build_data_loader."""
    if is_train:
        batch = _per_rank_batch(cfg.SOLVER.IMS_PER_BATCH, world_size, "SOLVER.IMS_PER_BATCH")
        sampler: Sampler[int] = TrainingSampler(size, seed=seed, rank=rank, world_size=world_size)
        grouped = GroupedBatchSampler(sampler, group_ids, batch, drop_uneven=True)
        return batch, IterationBasedBatchSampler(grouped, cfg.SOLVER.MAX_ITER, start_iter)
    batch = _per_rank_batch(cfg.TEST.IMS_PER_BATCH, world_size, "TEST.IMS_PER_BATCH")
    sampler = InferenceSampler(size, rank, world_size)
    return batch, GroupedBatchSampler(sampler, group_ids, batch, drop_uneven=False)


def build_data_loader(
    cfg,
    is_train: bool,
    start_iter: int = 0,
    dataset_names: Sequence[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DetectionDataLoader:
    """A DataLoader over the concatenated datasets of DATASETS.TRAIN (is_train) or DATASETS.TEST.

    Each batch is (images, targets, indices): lists of (3, H_i, W_i) float tensors, target dicts
    and dataset indices (see drdet.data.collate).

    Unreadable images (drdet.data.bad_images): training replaces each by the next readable
    index, warns naming file and image id, and raises TooManyBadImagesError once more than
    DATALOADER.MAX_BAD_IMAGES distinct files were met (`loader.bad_images` holds them; the
    trainer applies the limit to the sum over all ranks instead). Evaluation raises the image's
    MissingImageError / ImageReadError at the first one. Either way the error is raised in this
    process, not as a traceback from a worker.

    Training: an infinite, seeded stream (DATALOADER.SEED), sharded over the ranks, grouped by
    aspect ratio when DATALOADER.ASPECT_RATIO_GROUPING, SOLVER.IMS_PER_BATCH / world_size images a
    batch, batches start_iter .. SOLVER.MAX_ITER - 1 (pass the checkpoint's iteration as
    start_iter to resume the same sequence). Test: every image exactly once over all ranks (a
    contiguous shard per rank), TEST.IMS_PER_BATCH / world_size a batch.

    Args:
        dataset_names: overrides DATASETS.TRAIN / TEST (e.g. one test set at a time, which is how
            evaluation should use it: indices and image ids refer to that one dataset).
        rank, world_size: default to torch.distributed's, or (0, 1).
    """
    if rank is None or world_size is None:
        rank, world_size = world_info()
    names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    names = names if dataset_names is None else dataset_names
    dataset = build_dataset(list(names), build_transforms(cfg, is_train), is_train)
    if is_train:
        check_training_set(dataset, names)
    group_ids = aspect_ratio_group_ids(dataset) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    seed, num_workers = int(cfg.DATALOADER.get("SEED", 0)), cfg.DATALOADER.NUM_WORKERS
    bad_images = _prepare_parts(dataset, cfg, is_train, names)
    batch, batch_sampler = _batch_sampler(
        cfg, len(dataset), group_ids, is_train, seed, rank, world_size, start_iter
    )
    generator = torch.Generator()
    generator.manual_seed(seed * 1000003 + rank)  # seeds the workers' augmentation RNGs
    logger.info(
        "%s loader: %d images, %d per batch on rank %d/%d, %d workers",
        *("train" if is_train else "test", len(dataset), batch, rank, world_size, num_workers),
    )
    return DetectionDataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_with_bad_images,
        num_workers=num_workers,
        generator=generator,
        bad_images=bad_images,
        pin_memory=str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available(),
    )
