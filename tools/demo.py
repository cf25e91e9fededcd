#!/usr/bin/env python
r"""Run a trained detector on images, a folder of images, a video file or a webcam; write each
image (or video frame) with its detections drawn, and detections.json.

    python tools/demo.py --config-file configs/dr_retina/dr_R-50-FPN_1x.yaml \
        --input photos/ street.jpg --output demo_out --confidence-threshold 0.3 \
        MODEL.WEIGHT output/model_final.pth
    python tools/demo.py --config-file ... --video clip.mp4 --output demo_out MODEL.WEIGHT ...
    python tools/demo.py --config-file ... --webcam 0 --max-frames 100 --output demo_out ...

detections.json is a list with one record per image or frame:
    {"file": input path (video frames: "<video>#<frame index>"), "output": drawn image path,
     "height": H, "width": W, "boxes": [[x1, y1, x2, y2], ...] in the input's pixels,
     "scores": [...], "labels": [1..C], "class_names": [...]}
Class names come from the checkpoint (what train_net recorded; the training set is then not
opened), else from the first dataset of DATASETS.TRAIN when it can be opened and has the
config's class count, else "class <k>".
Config overrides (KEY VALUE) may come before, between or after the flags.

A file OpenCV cannot decode is skipped with a warning naming it, and the count is given at the
end; the entries of an input folder that are not image files (other files, sub-folders) are
listed in one warning. detections.json is always written, with the records of what was
processed, also when an error stops the run part way (the error is raised afterwards).
"""

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from drdet.checkpoint import check_classes
from drdet.engine.defaults import (
    default_argument_parser,
    load_config,
    parse_tool_args,
    train_dataset_from_cfg,
)
from drdet.engine.predictor import Predictor
from drdet.utils.errors import UserFileNotFoundError, UserValueError, run_main
from drdet.utils.io import atomic_write_text
from drdet.utils.visualize import draw_detections, label_name

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # e.g. MODEL.WEIGHT
MAX_NAMED = 10  # names listed in one warning

logger = logging.getLogger("drdet.demo")


def named(items: Sequence[str], limit: int = MAX_NAMED) -> str:
    """ "a, b, c" of the first `limit` items, with ", ... (N more)" when there are more."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (their images, sorted, not recursive)",
    )
    source.add_argument("--video", metavar="FILE", help="a video file (read with OpenCV)")
    source.add_argument("--webcam", type=int, metavar="INDEX", help="a camera index for OpenCV")
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for the drawn images and detections.json",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="keep detections with score >= this (default 0.5)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="stop a video or webcam after this many frames (0: no limit; a webcam needs a limit)",
    )
    args = parse_tool_args(parser, argv)
    if args.input:  # --input takes several paths: a config key among them starts the overrides
        keys = [
            i for i, p in enumerate(args.input) if CONFIG_KEY.match(p) and not os.path.exists(p)
        ]
        if keys:
            args.opts = args.input[keys[0] :] + args.opts
            args.input = args.input[: keys[0]]
            if not args.input:
                parser.error("--input needs at least one image file or folder")
    if args.webcam is not None and args.max_frames <= 0:
        parser.error("--webcam needs --max-frames N > 0")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(
            f"--confidence-threshold {args.confidence_threshold:g} is not a score: give one "
            "in [0, 1] (e.g. 0.5)"
        )
    return args


def check_output(output: str, inputs: Sequence[str]) -> None:
    """Refuses an --output that would write over the input: the folder of an --input folder or
    file (also through a link; the drawn images keep the input's file names), or a file."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserValueError(f"--output {output!r} is a file, not a folder: give a folder")
    for path in inputs:
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        if os.path.isdir(output) and os.path.isdir(folder) and os.path.samefile(output, folder):
            raise UserValueError(
                f"--output {output!r} is the folder of --input {path!r}: the drawn images "
                "would replace the input images; give another --output folder"
            )


def list_images(paths: Sequence[str]) -> list[str]:
    """Image files of ``paths``: files as given, folders expanded to their image files (sorted,
    not recursive; the other entries of each folder are named in one warning)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found, others = [], []
            for entry in sorted(os.listdir(path)):
                full = os.path.join(path, entry)
                if os.path.isfile(full) and entry.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(full)
                else:
                    others.append(entry + "/" if os.path.isdir(full) else entry)
            if others:
                logger.warning(
                    "%s: skipping %d entries that are not image files (%s): %s",
                    path,
                    len(others),
                    " ".join(IMAGE_EXTENSIONS),
                    named(others),
                )
            if not found:
                raise UserFileNotFoundError(
                    f"--input folder {path!r} has no image files ({' '.join(IMAGE_EXTENSIONS)})"
                )
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UserFileNotFoundError(f"--input {path!r} does not exist")
    return files


def read_images(
    files: Sequence[str], unreadable: list[str]
) -> Iterator[tuple[str, str, np.ndarray]]:
    """(source name, output file name, BGR image) per file. A file OpenCV cannot decode is
    skipped with a warning and appended to `unreadable`."""
    used = set()
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("skipping %r: not an image OpenCV can decode", path)
            unreadable.append(path)
            continue
        stem, ext = os.path.splitext(os.path.basename(path))
        name, k = f"{stem}{ext.lower()}", 1
        while name in used:  # same file name in two folders
            name, k = f"{stem}_{k}{ext.lower()}", k + 1
        used.add(name)
        yield path, name, image


def open_capture(source: str | int) -> cv2.VideoCapture:
    """An opened OpenCV capture of a video file or camera index (an error naming it when OpenCV
    cannot open it)."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        what = "--webcam" if isinstance(source, int) else "--video"
        raise UserValueError(f"{what} {source!r}: OpenCV cannot open it")
    return capture


def read_frames(
    capture: cv2.VideoCapture, source: str | int, max_frames: int
) -> Iterator[tuple[str, str, np.ndarray]]:
    """(source name "<video>#<i>", output name "frame_<i>.png", BGR frame) per frame of the
    opened `capture`, which is released at the end."""
    try:
        index = 0
        while max_frames <= 0 or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{source}#{index}", f"frame_{index:06d}.png", frame
            index += 1
    finally:
        capture.release()


def detections_record(
    source: str,
    output: str,
    image: np.ndarray,
    detections: dict,
    threshold: float,
    class_names: Sequence[str] | None,
) -> dict:
    """The json record of one image: detections with score >= threshold, as lists."""
    keep = detections["scores"] >= threshold
    boxes = detections["boxes"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    labels = [int(v) for v in detections["labels"][keep].tolist()]
    return {
        "file": source,
        "output": output,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "class_names": [label_name(v, class_names) for v in labels],
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.video is not None and not os.path.isfile(args.video):
        raise UserFileNotFoundError(f"--video {args.video!r} does not exist")
    files = list_images(args.input) if args.input else []  # input errors before the model
    check_output(args.output, args.input or ([args.video] if args.video is not None else []))
    source = args.video if args.video is not None else args.webcam
    capture = open_capture(source) if source is not None else None  # before the model too
    cfg = load_config(args.config_file, args.opts)
    predictor = Predictor(cfg)
    class_names = predictor.class_names or training_set_names(cfg, predictor)
    unreadable: list[str] = []
    if capture is None:
        frames = read_images(files, unreadable)
    else:
        frames = read_frames(capture, source, args.max_frames)
    os.makedirs(args.output, exist_ok=True)
    records: list[dict] = []
    try:
        for source, name, image in frames:
            record = detections_record(
                source,
                os.path.join(args.output, name),
                image,
                predictor(image),
                args.confidence_threshold,
                class_names,
            )
            drawn = draw_detections(
                image,
                np.array(record["boxes"]).reshape(-1, 4),
                record["scores"],
                record["labels"],
                class_names,
            )
            if not cv2.imwrite(record["output"], drawn):
                raise OSError(f"cannot write {record['output']!r}")
            records.append(record)
            print(f"{source}: {len(record['labels'])} detections -> {record['output']}")
    finally:  # what was processed is kept, however the loop ended
        write_detections(args.output, records, unreadable)
    if not records:
        raise ValueError(
            "no image or frame was read"
            + (f"; {len(unreadable)} unreadable: {named(unreadable)}" if unreadable else "")
        )
    return records


def training_set_names(cfg, predictor: Predictor) -> list[str] | None:
    """Class names from the first dataset of DATASETS.TRAIN, for weights that record none (the
    recorded names are used without opening the training set), checked against the recorded
    class count when there is one; None when the set cannot be opened or its class count is
    not the config's."""
    train_set = train_dataset_from_cfg(cfg)
    if train_set is None:
        return None
    if predictor.checkpoint_classes:
        check_classes(predictor.checkpoint_classes, cfg.MODEL.WEIGHT, dataset=train_set)
    elif len(train_set.class_names) != cfg.MODEL.NUM_CLASSES - 1:
        logger.warning(
            "%s has %d classes, MODEL.NUM_CLASSES %d: its names are not used (labels are "
            "shown as 'class <k>')",
            cfg.DATASETS.TRAIN[0],
            len(train_set.class_names),
            cfg.MODEL.NUM_CLASSES,
        )
        return None
    return list(train_set.class_names)


def write_detections(folder: str, records: list[dict], unreadable: Sequence[str]) -> None:
    """Writes folder/detections.json (atomically) and says how many images were skipped."""
    path = os.path.join(folder, "detections.json")
    atomic_write_text(path, json.dumps(records, indent=1))
    if unreadable:
        logger.warning(
            "%d unreadable image%s skipped: %s",
            len(unreadable),
            "" if len(unreadable) == 1 else "s",
            named(unreadable),
        )
    print(f"{len(records)} images or frames -> {path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
