"""Minimal yacs configs for the data pipeline: the INPUT node the transforms read and the nodes
build_data_loader reads, without the rest of drdet's config."""

from __future__ import annotations

from yacs.config import CfgNode as CN


def input_node(
    train_sizes: tuple[int, ...],
    max_train: int,
    test_size: int,
    max_test: int,
    to_bgr255: bool = True,
    flip: float = 0.0,
) -> CN:
    """cfg.INPUT: the shorter side one of `train_sizes` in training (longer side at most
    `max_train`), `test_size` in testing (at most `max_test`); BGR 0-255 or RGB 0-1; horizontal
    flip probability `flip` in training."""
    return CN(
        dict(
            MIN_SIZE_TRAIN=train_sizes,
            MAX_SIZE_TRAIN=max_train,
            MIN_SIZE_TEST=test_size,
            MAX_SIZE_TEST=max_test,
            TO_BGR255=to_bgr255,
            HORIZONTAL_FLIP_PROB_TRAIN=flip,
        )
    )


def loader_config(
    name: str,
    inputs: CN,
    ims_train: int = 2,
    ims_test: int = 2,
    max_iter: int = 4,
    **dataloader: object,
) -> CN:
    """The keys build_data_loader reads, on the CPU, with dataset `name` as both the training and
    the test set: `inputs` (see input_node), `ims_train` / `ims_test` images per batch,
    `max_iter` iterations, and DATALOADER (no workers, padding to 32, aspect-ratio grouping,
    seed 0) with `dataloader`'s keys set over it."""
    cfg = CN()
    cfg.MODEL = CN(dict(DEVICE="cpu"))
    cfg.INPUT = inputs
    cfg.DATASETS = CN(dict(TRAIN=(name,), TEST=(name,)))
    loader = dict(NUM_WORKERS=0, SIZE_DIVISIBILITY=32, ASPECT_RATIO_GROUPING=True, SEED=0)
    cfg.DATALOADER = CN({**loader, **dataloader})
    cfg.SOLVER = CN(dict(IMS_PER_BATCH=ims_train, MAX_ITER=max_iter))
    cfg.TEST = CN(dict(IMS_PER_BATCH=ims_test))
    return cfg
