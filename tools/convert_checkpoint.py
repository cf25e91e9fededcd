#!/usr/bin/env python
"""Convert a foreign RetinaNet (or torchvision FCOS) checkpoint into a drdet checkpoint
({"model": state dict, "anchor_convention": str}).

Sources (detected from the keys, or named with --source):
  torchvision         a retinanet_resnet50_fpn (v1) state dict, e.g.
                      torch.save(torchvision.models.detection.retinanet_resnet50_fpn(
                          weights="COCO_V1").state_dict(), "tv.pth")
                      Load the result with
                      configs/torchvision/retinanet_resnet50_fpn_torchvision.yaml.
                      Labels: drdet label = torchvision label + 1 (NUM_CLASSES = K + 1), so
                      torchvision's column 0 (its background: torchvision's num_classes counts
                      it) becomes drdet label 1. --drop-background-column drops it: drdet label
                      = torchvision label (NUM_CLASSES = K, the torchvision num_classes); with
                      --coco-category-ids, drdet's contiguous COCO labels 1..80 (NUM_CLASSES 81).
                      An fcos_resnet50_fpn state dict (keys head.regression_head.bbox_ctrness.*)
                      becomes a drdet FCOS: load it with
                      configs/torchvision/fcos_resnet50_fpn_torchvision.yaml (conventions in
                      drdet/checkpoint/fcos_conversion.py); labels as above.
  maskrcnn-benchmark  a RetinaNet checkpoint of maskrcnn-benchmark (the released Dr. Retina models):
                      load the result with the configs in configs/dr_retina/ or configs/retinanet/,
                      which follow maskrcnn-benchmark's conventions (BGR 0-255, stride in 1x1,
                      box-coder weights 10, 10, 5, 5, P6 from C5), plus
                      MODEL.ANCHOR_GENERATOR.CONVENTION maskrcnn_benchmark: its anchors are
                      centred on (s*j + (s-1)/2, ...) with Detectron's rounded sizes, and it
                      writes boxes with inclusive corners ("+1" widths). drdet then gives the same
                      boxes with exclusive corners (x2, y2 one more), hence the same COCO json
                      (boxes rescaled to the original image differ by |1 - scale| px at most).
                      Without that key, boxes move by about (s-1)/2 px: 3.5 ... 63.5 px on P3..P7.
The output records the source's anchor convention; loading it into a model with another one warns.
ImageNet backbones (torchvision ResNet .pth, MSRA R-50.pkl) need no conversion: set MODEL.WEIGHT.

  python tools/convert_checkpoint.py IN.pth OUT.pth [--source ...] [--coco-category-ids |
      --drop-background-column] [--allow-pickle] [--force]

An existing OUT is replaced only with --force; OUT can never be IN (the same path or the same
file through a link). OUT is written atomically with the mode a new file gets under the umask.

--allow-pickle unpickles the input fully (old checkpoints holding Python objects): only for
files you trust. The output holds tensors only and loads with torch.load(weights_only=True).
"""

import logging
import os
import sys

import torch

from drdet.checkpoint import check_weights_only_safe, load_checkpoint_file
from drdet.checkpoint.fcos_conversion import convert_torchvision_fcos, is_torchvision_fcos
from drdet.checkpoint.weights import (
    COCO_CATEGORY_IDS,
    convert_maskrcnn_benchmark_retinanet,
    convert_torchvision_retinanet,
    detect_format,
    strip_module_prefix,
)
from drdet.engine.defaults import tool_parser
from drdet.utils.errors import UserFileExistsError, UserValueError, run_main
from drdet.utils.io import atomic_open

SOURCES = {"torchvision": "torchvision_retinanet", "maskrcnn-benchmark": "maskrcnn_benchmark"}
# The MODEL.ANCHOR_GENERATOR.CONVENTION of each source, stored in the output so that loading it
# into a model with other anchors warns.
CONVENTIONS = {
    "torchvision_retinanet": "torchvision",
    "maskrcnn_benchmark": "maskrcnn_benchmark",
    "torchvision_fcos": "torchvision",
}

logger = logging.getLogger("drdet.convert_checkpoint")


def check_output(src: str, dst: str, force: bool) -> None:
    """Refuses `dst` when it is `src` (after realpath, or the same file by os.path.samefile:
    hard and symbolic links) and, unless `force`, when it exists."""
    same = os.path.realpath(src) == os.path.realpath(dst)
    if not same and os.path.exists(src) and os.path.exists(dst):
        same = os.path.samefile(src, dst)
    if same:
        raise UserValueError(
            f"output {dst!r} is the same file as the input {src!r}; write the "
            "converted checkpoint to another path"
        )
    if os.path.lexists(dst) and not force:
        raise UserFileExistsError(f"output {dst!r} already exists; pass --force to replace it")


CONFIGS = {
    "torchvision_retinanet": "configs/torchvision/retinanet_resnet50_fpn_torchvision.yaml",
    "torchvision_fcos": "configs/torchvision/fcos_resnet50_fpn_torchvision.yaml",
    "maskrcnn_benchmark": "a config of configs/dr_retina/ or configs/retinanet/",
}


def torchvision_columns(state: dict, coco: bool, drop_background: bool) -> list[int] | None:
    """The torchvision class columns to keep, in drdet's label order (None: all of them):
    COCO_CATEGORY_IDS with `coco`, columns 1..K-1 with `drop_background`."""
    if coco and drop_background:
        raise UserValueError("give --coco-category-ids or --drop-background-column, not both")
    if coco:
        return list(COCO_CATEGORY_IDS)
    if not drop_background:
        return None
    state = strip_module_prefix(state)
    cls_bias = state["head.classification_head.cls_logits.bias"]
    anchors = state["head.regression_head.bbox_reg.bias"].numel() // 4
    return list(range(1, cls_bias.numel() // anchors))


def convert_file(
    src: str,
    dst: str,
    source: str = "auto",
    coco_category_ids: bool = False,
    allow_pickle: bool = False,
    force: bool = False,
    drop_background: bool = False,
) -> dict:
    """Convert `src` to a drdet checkpoint at `dst`; return the converted state dict. An
    existing `dst` is replaced only when `force`; `dst` == `src` is always refused."""
    check_output(src, dst, force)
    state = load_checkpoint_file(src, allow_pickle=allow_pickle)["model"]
    fmt = detect_format(state)
    if fmt == "torchvision_retinanet" and is_torchvision_fcos(state):
        fmt = "torchvision_fcos"
    if source != "auto" and SOURCES[source] != fmt.replace("_fcos", "_retinanet"):
        raise UserValueError(f"{src}: --source {source}, but its keys look like {fmt}")
    columns: list[int] | None = []  # maskrcnn-benchmark: no background column to explain
    if fmt == "torchvision_fcos":
        columns = torchvision_columns(state, coco_category_ids, drop_background)
        converted = convert_torchvision_fcos(state, class_columns=columns)
    elif fmt == "torchvision_retinanet":
        columns = torchvision_columns(state, coco_category_ids, drop_background)
        converted = convert_torchvision_retinanet(state, class_columns=columns)
    elif fmt == "maskrcnn_benchmark":
        if coco_category_ids or drop_background:
            raise UserValueError(
                "--coco-category-ids and --drop-background-column apply to torchvision "
                "checkpoints only"
            )
        converted = convert_maskrcnn_benchmark_retinanet(state)
    else:
        raise UserValueError(
            f"{src}: keys look like {fmt}, not a torchvision or maskrcnn-benchmark "
            "RetinaNet (ImageNet backbones load directly as MODEL.WEIGHT)"
        )
    data = {"model": dict(converted), "anchor_convention": CONVENTIONS[fmt]}
    check_weights_only_safe(data)
    with atomic_open(dst, "wb") as f:
        torch.save(data, f)
    report(src, dst, fmt, converted, columns)
    return converted


def report(src: str, dst: str, fmt: str, converted: dict, columns: list[int] | None) -> None:
    """Logs what was written and how to load it: class count, anchors, config, label mapping."""
    num_classes = converted["head.cls_logits.bias"].numel() // (
        converted["head.bbox_pred.bias"].numel() // 4
    )
    logger.info(
        "%s (%s) -> %s: %d tensors, %d classes; load it with MODEL.NUM_CLASSES %d and "
        "MODEL.ANCHOR_GENERATOR.CONVENTION %s (%s)",
        src,
        fmt,
        dst,
        len(converted),
        num_classes,
        num_classes + 1,
        CONVENTIONS[fmt],
        CONFIGS[fmt],
    )
    if columns is None:
        logger.info(
            "Labels: drdet label k is torchvision column k - 1, so torchvision's column 0 (the "
            "background of a model trained with torchvision's labels 1..K-1) is drdet label 1. "
            "For such a model convert again with --drop-background-column (MODEL.NUM_CLASSES "
            "%d), or with --coco-category-ids for torchvision's COCO models (81)",
            num_classes,
        )


def main(argv=None) -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("input", help="checkpoint to convert")
    parser.add_argument("output", help="drdet checkpoint to write")
    parser.add_argument("--source", choices=["auto", *SOURCES], default="auto")
    parser.add_argument(
        "--coco-category-ids",
        action="store_true",
        help="torchvision COCO model (91 columns): keep the 80 COCO categories as "
        "drdet's labels 1..80",
    )
    parser.add_argument(
        "--drop-background-column",
        action="store_true",
        help="torchvision model whose num_classes counts the background (label 0): drop that "
        "column, drdet label k = torchvision label k",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="fully unpickle the input (trusted files only)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert_file(
        args.input,
        args.output,
        args.source,
        args.coco_category_ids,
        args.allow_pickle,
        force=args.force,
        drop_background=args.drop_background_column,
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
