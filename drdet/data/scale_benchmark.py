"""drdet at COCO's scale, measured: how long the training set takes to build, the memory of the
main process and of its DataLoader workers as training reads batches, and how long a
val2017-sized evaluation takes (tools/benchmark_coco_scale.py prints it).

Each measurement runs in a child process (drdet/data/scale_probe.py) with the drdet of a given
checkout on its PYTHONPATH, so that one run measures two commits side by side ("before" and
"after") on the same files and machine. The parent reads the child's and its workers' memory
from /proc (drdet.utils.memory) at the moments the child reports, with the load average.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from drdet.utils.memory import MIB, child_pids, pss_mib, smaps_rollup, uss_mib

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(_PACKAGE, "scale_probe.py")
CHECKPOINTS = (1, 1000, 3000)


def loader_overrides(
    ann_file: str,
    image_root: str,
    workers: int,
    batch: int,
    iterations: int,
    min_size: int,
    max_size: int,
) -> list:
    """Config overrides of the measured training loader (CPU, no resizing beyond min/max)."""
    return [
        "DATASETS.TRAIN", (f"coco:{ann_file}:{image_root}",),
        "DATALOADER.NUM_WORKERS", workers,
        "SOLVER.IMS_PER_BATCH", batch,
        "SOLVER.MAX_ITER", iterations,
        "INPUT.MIN_SIZE_TRAIN", (min_size,),
        "INPUT.MAX_SIZE_TRAIN", max_size,
        "MODEL.DEVICE", "cpu",
    ]  # fmt: skip


def _start(tree: str, args: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")]))
    code = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.Popen(
        [sys.executable, "-c", code, PROBE, json.dumps(args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree, env=env,
    )  # fmt: skip


def _events(proc: subprocess.Popen):
    """The child's JSON messages; the caller measures, then the child is told to go on."""
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        yield json.loads(line)
        proc.stdin.write("\n")
        proc.stdin.flush()
    if proc.wait() != 0:
        raise RuntimeError(f"the probe process exited with status {proc.returncode}")


def _memory(pid: int) -> dict:
    """The process's PSS and anonymous memory, its children's summed USS and PSS (MiB), and
    the load average."""
    workers = child_pids(pid)
    fields = smaps_rollup(pid)
    return {
        "main_pss_mib": fields["Pss"] / MIB,
        "main_anonymous_mib": fields["Anonymous"] / MIB,
        "workers": len(workers),
        "workers_uss_mib": sum(uss_mib(w) for w in workers),
        "workers_pss_mib": sum(pss_mib(w) for w in workers),
        "load": os.getloadavg()[0],
    }


def measure_loader(tree: str, overrides: Sequence, batches: Sequence[int] = CHECKPOINTS) -> dict:
    """Build time and memory of the training loader of `overrides` with the drdet of `tree`:
    {"drdet", "before_build" (memory with torch and drdet imported), "build_seconds",
    "images", "after_build", "batches": [{"batch", "seconds", memory...}]}."""
    proc = _start(tree, {"mode": "loader", "overrides": list(overrides), "batches": list(batches)})
    out: dict = {"tree": tree, "batches": []}
    for msg in _events(proc):
        if msg["event"] == "ready":
            out.update(drdet=msg["drdet"], before_build=_memory(proc.pid))
        elif msg["event"] == "built":
            out.update(build_seconds=msg["seconds"], images=msg["images"])
            out["after_build"] = _memory(proc.pid)
        elif msg["event"] == "batch":
            out["batches"].append(
                {"batch": msg["batch"], "seconds": msg["seconds"], **_memory(proc.pid)}
            )
    return out


def measure_evaluation(
    tree: str, ann_file: str, image_root: str, detections: str, backend: str | None = None
) -> dict:
    """Time of the "coco" evaluator on `detections` with the drdet of `tree` (and `backend`):
    {"drdet", "build_seconds" (the COCODataset), "seconds" (the evaluator), "metrics"}."""
    args = {"mode": "evaluate", "ann_file": ann_file, "image_root": image_root,
            "detections": detections, "backend": backend}  # fmt: skip
    result: dict = {}
    for msg in _events(_start(tree, args)):
        result = {k: v for k, v in msg.items() if k != "event"}
    return {"tree": tree, "backend": backend, "load": os.getloadavg()[0], **result}


def prepare_sets(data_dir: str, per_image: int = 100, scale: float = 1.0) -> dict[str, str]:
    """The COCO-train-sized set (json and image symlinks) and the val2017-sized one with
    `per_image` detections per image (drdet.data.coco_scale), both `scale` times their size
    (images and boxes), in `data_dir`, generated unless already there. Returns their paths:
    train_json, train_images, val_json, val_images, detections (.npz)."""
    import dataclasses

    import numpy as np

    from .coco_scale import TRAIN2017, VAL2017, make_detections, write_coco_scale

    def scaled(spec):
        n, k = round(spec.num_images * scale), round(spec.num_boxes * scale)
        return dataclasses.replace(spec, num_images=n, num_boxes=k)

    data_dir = os.path.join(data_dir, "" if scale == 1.0 else f"scale{scale:g}")
    paths = {}
    for part, spec, images in (("train", TRAIN2017, True), ("val", VAL2017, False)):
        spec = scaled(spec)
        folder = os.path.join(data_dir, part)
        ann, image_root = os.path.join(folder, "annotations.json"), os.path.join(folder, "images")
        if not os.path.isfile(ann):
            write_coco_scale(spec, folder + ".partial", images=images)
            os.rename(folder + ".partial", folder)
        paths[f"{part}_json"], paths[f"{part}_images"] = ann, image_root
    paths["detections"] = os.path.join(data_dir, "val", f"detections_{per_image}.npz")
    if not os.path.isfile(paths["detections"]):
        with open(paths["val_json"]) as f:
            detections: dict[str, Any] = make_detections(json.load(f), per_image)
        np.savez(paths["detections"], **detections)
    return paths


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest |a[k] - b[k]| over the keys of both (NaN in both counts as equal); inf
    when the keys differ or only one is NaN."""
    import math

    if set(a) != set(b):
        return math.inf
    diffs = [0.0 if (math.isnan(a[k]) and math.isnan(b[k])) else abs(a[k] - b[k]) for k in a]
    return max((math.inf if math.isnan(d) else d for d in diffs), default=0.0)
