#!/usr/bin/env python
r"""Evaluate a trained detector on DATASETS.TEST with the official COCO metric (VOC AP for VOC).

    python tools/test_net.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml \
        MODEL.WEIGHT output/model_final.pth
    torchrun --nproc_per_node=8 tools/test_net.py --config-file ... MODEL.WEIGHT ...
    python tools/test_net.py --config-file ... MODEL.WEIGHT ... TEST.BBOX_AUG.ENABLED True

Results (bbox.json, metrics.json) go to OUTPUT_DIR/inference/<dataset>/, replacing those of an
earlier run, and the config used to OUTPUT_DIR/inference/config.yaml: a training run's own
OUTPUT_DIR/config.yaml is never rewritten. Without MODEL.WEIGHT, OUTPUT_DIR's last checkpoint
is used. A MODEL.WEIGHT ending in .onnx or .pt2 is a model exported by tools/export_model.py,
run on the CPU (onnxruntime, torch.export), one image at a time.
"""

import os
import sys

import torch

from drdet.checkpoint import CLASSES_KEY, Checkpointer, check_classes
from drdet.engine.defaults import (
    default_argument_parser,
    default_setup,
    evaluate_datasets,
    parse_tool_args,
)
from drdet.export.config import export_suffix
from drdet.export.runtime import ExportedDetector
from drdet.modeling import build_detector
from drdet.utils.errors import UserFileNotFoundError, run_main

EVAL_CONFIG = os.path.join("inference", "config.yaml")  # under OUTPUT_DIR; not the run's record


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let MODEL.WEIGHT be a legacy pickle; unpickling runs code from the "
        "file, so only for files you trust",
    )
    return parse_tool_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, device, log = default_setup(args.config_file, args.opts, config_record=EVAL_CONFIG)
    if export_suffix(cfg.MODEL.WEIGHT):  # an exported model (.onnx, .pt2), run on the CPU
        exported = ExportedDetector(cfg.MODEL.WEIGHT, cfg)
        check_classes(exported.classes, cfg.MODEL.WEIGHT, cfg, log=log)
        checkpoint = (cfg.MODEL.WEIGHT, exported.classes)
        tag = os.path.basename(cfg.MODEL.WEIGHT)
        return evaluate_datasets(cfg, exported, torch.device("cpu"), tag, checkpoint)
    model = build_detector(cfg).to(device)
    checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, log=log)
    weights = cfg.MODEL.WEIGHT or checkpointer.last_checkpoint()
    if not weights:
        raise UserFileNotFoundError(
            "No weights: pass MODEL.WEIGHT path/to/model.pth (or an "
            "OUTPUT_DIR with a last_checkpoint)"
        )
    extra = checkpointer.load(
        weights, allow_pickle=args.allow_pickle, load_training_state=False, strict=True
    )
    record = extra.get(CLASSES_KEY)
    check_classes(record, weights, cfg, log=log)
    return evaluate_datasets(
        cfg, model, device, tag=os.path.basename(weights), checkpoint=(weights, record)
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
