"""Writes the fixtures of tests/test_legacy_compat.py with drdet as it was at commit 9263baa
(before the dense detectors became siblings and the shared keys moved out of MODEL.RETINANET).

Run from a checkout of that commit with its extension built, e.g.

    git worktree add --detach /tmp/old 9263baa && cd /tmp/old && make build
    PYTHONPATH=/tmp/old python /path/to/this/file OUT_DIR

It writes, under OUT_DIR:
- effective_configs.json: for every shipped yaml, the keys whose loaded value (load_config)
  differs from the defaults of that version, and those defaults;
- retinanet/, fcos/: config.yaml and model_final.pth of a tiny run of tools/train_net.py
  (30 iterations on 8 synthetic images), and detections.json: the detections of that model on
  the 2 images of the synthetic:2:1:128 set (boxes, scores, labels per image).
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

import torch

OLD = os.getcwd()
TINY = [
    "MODEL.DEVICE",
    "cpu",
    "DATASETS.TRAIN",
    "('synthetic:8:0:128',)",
    "DATASETS.TEST",
    "('synthetic:2:1:128',)",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "30",
    "SOLVER.STEPS",
    "(100,)",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "TEST.IMS_PER_BATCH",
    "2",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "4",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
    "4",
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS",
    "16",
    "MODEL.GROUP_NORM.DIM_PER_GP",
    "4",
]
RUNS = {
    "retinanet": (
        "configs/synthetic/dr_R-18-FPN_synthetic.yaml",
        ["MODEL.RETINANET.NUM_CONVS", "1"],
    ),
    "fcos": ("configs/synthetic/dr_fcos_R-18-FPN_synthetic.yaml", ["MODEL.FCOS.NUM_CONVS", "1"]),
}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def effective_configs():
    from drdet.config import get_cfg
    from drdet.engine.defaults import load_config

    defaults = flat(get_cfg())
    table = {}
    for path in sorted(glob.glob("configs/**/*.yaml", recursive=True)):
        values = flat(load_config(path))
        table[path] = {k: v for k, v in values.items() if v != defaults[k]}
    return {"version": "9263baa", "defaults": defaults, "configs": table}


def detections(run_dir):
    from drdet.checkpoint import Checkpointer
    from drdet.data import build_data_loader
    from drdet.engine.defaults import load_config
    from drdet.modeling import build_detector

    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    model = build_detector(cfg).eval()
    Checkpointer(model).load(os.path.join(run_dir, "model_final.pth"), load_training_state=False)
    out = []
    with torch.no_grad():
        for images, targets, _ in build_data_loader(cfg, is_train=False):
            for det, t in zip(model(images), targets):
                out.append(
                    {"image_id": int(t["image_id"]), **{k: v.tolist() for k, v in det.items()}}
                )
    return out


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DRDET_DATASETS"] = os.path.join(tmp, "datasets")
        for name, (config, extra) in RUNS.items():
            run_dir = os.path.join(tmp, name)
            cmd = [
                sys.executable,
                "tools/train_net.py",
                "--config-file",
                config,
                "--skip-test",
                *TINY,
                *extra,
                "OUTPUT_DIR",
                run_dir,
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            dest = os.path.join(out_dir, name)
            os.makedirs(dest, exist_ok=True)
            for f in ("config.yaml", "model_final.pth"):
                with (
                    open(os.path.join(run_dir, f), "rb") as src,
                    open(os.path.join(dest, f), "wb") as dst,
                ):
                    dst.write(src.read())
            with open(os.path.join(dest, "detections.json"), "w") as f:
                json.dump(detections(run_dir), f)
    with open(os.path.join(out_dir, "effective_configs.json"), "w") as f:
        json.dump(effective_configs(), f, indent=0, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
