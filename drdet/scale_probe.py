"""The child process of drdet.data.scale_benchmark: builds a training loader (or a test set and
its evaluation) with the drdet found on its PYTHONPATH, which may be another checkout of drdet
(an older commit, for before/after figures). So this file is run by path (runpy), imports
nothing of drdet but long-standing public names, and talks to its parent over stdin/stdout.
It sits at the top of the package because it reads config, data and evaluation.

Protocol: one JSON object per line on stdout (other output goes to stderr); after each of
"ready", "built" and "batch" it waits for a line on stdin, while the parent reads its memory
and its workers' from /proc. Arguments: one JSON object in sys.argv[1]:
    {"mode": "loader", "overrides": [KEY, VALUE, ...], "batches": [1, 1000, 3000]}
    {"mode": "evaluate", "ann_file", "image_root", "detections" (an .npz of
     drdet.data.coco_scale.make_detections), "backend" (None: the tree's default)}
"""

import json
import sys
import time


def _say(**message) -> None:
    print(json.dumps(message), flush=True)


def _wait() -> None:
    sys.stdin.readline()


def probe_loader(args: dict) -> None:
    import drdet
    from drdet.config import get_cfg
    from drdet.data import build_data_loader

    cfg = get_cfg()
    cfg.merge_from_list(args["overrides"])
    cfg.freeze()
    _say(event="ready", drdet=drdet.__file__)
    _wait()
    start = time.perf_counter()
    loader = build_data_loader(cfg, is_train=True, rank=0, world_size=1)
    _say(event="built", seconds=time.perf_counter() - start, images=len(loader.dataset))  # type: ignore[arg-type]
    _wait()
    checkpoints = sorted(args["batches"])
    start = time.perf_counter()
    for n, _ in enumerate(loader, start=1):
        if n in checkpoints:
            _say(event="batch", batch=n, seconds=time.perf_counter() - start)
            _wait()
        if n >= checkpoints[-1]:
            break
    _say(event="done")


def _predictions(path: str, dataset) -> dict:
    import numpy as np
    import torch

    det = np.load(path)
    labels = np.vectorize(dataset.category_id_to_contiguous_id.__getitem__)(det["category_ids"])
    out = {}
    for i, image_id in enumerate(det["image_ids"].tolist()):
        rows = slice(det["offsets"][i], det["offsets"][i + 1])
        out[image_id] = {
            "boxes": torch.as_tensor(det["boxes"][rows], dtype=torch.float32),
            "scores": torch.as_tensor(det["scores"][rows], dtype=torch.float32),
            "labels": torch.as_tensor(labels[rows], dtype=torch.int64),
        }
    return out


def probe_evaluate(args: dict) -> None:
    import drdet
    from drdet.data.datasets.coco import COCODataset
    from drdet.evaluation import coco_evaluator

    start = time.perf_counter()
    dataset = COCODataset(args["ann_file"], args["image_root"], False)
    built = time.perf_counter() - start
    predictions = _predictions(args["detections"], dataset)
    if args.get("backend"):
        dataset.coco_eval_backend = args["backend"]  # type: ignore[attr-defined]
    start = time.perf_counter()
    metrics = coco_evaluator(dataset, predictions, per_category=True)
    seconds = time.perf_counter() - start
    _say(
        event="evaluated",
        drdet=drdet.__file__,
        build_seconds=built,
        seconds=seconds,
        metrics=metrics,
    )


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    {"loader": probe_loader, "evaluate": probe_evaluate}[arguments["mode"]](arguments)
