"""What the tools share (named after detectron2's engine/defaults.py): the command line (flags
anywhere among KEY VALUE overrides), config, process group, logging, device, seeding, the checks
of a config against its data, and evaluation of every dataset of DATASETS.TEST."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
from collections.abc import Sequence

import numpy as np
import torch

from drdet.checkpoint import cfg_num_classes, check_classes
from drdet.checkpoint.classes import RESET_KEY, check_unrecorded_classes
from drdet.config import get_cfg, register_config_check, validate_cfg
from drdet.data import build_data_loader
from drdet.data.catalog import get_dataset
from drdet.engine.inference import inference
from drdet.engine.test_time_augmentation import build_bbox_aug
from drdet.utils import comm
from drdet.utils.checks import require
from drdet.utils.errors import (
    DEBUG_ENV,
    DEBUG_FLAG,
    UserFileNotFoundError,
    UserValueError,
    as_user_error,
)
from drdet.utils.io import atomic_write_text
from drdet.utils.logger import setup_logger


def tool_parser(description: str | None) -> argparse.ArgumentParser:
    """An empty parser for a tool whose help is `description` (its module docstring) as
    written, line breaks kept."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def default_argument_parser(
    description: str | None, config_file: bool = True
) -> argparse.ArgumentParser:
    """The parser of a tool that takes a config: --config-file FILE (when `config_file`),
    --debug, and KEY VALUE config overrides (`opts`). Add the tool's own flags, then parse with
    :func:`parse_tool_args`, which accepts the flags before, between or after the overrides."""
    parser = tool_parser(description)
    if config_file:
        parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config")
    add_override_arguments(parser)
    return parser


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """--debug and the positional KEY VALUE overrides (`opts`) of :func:`default_argument_parser`,
    for a parser built by hand."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the traceback of errors about the input (also {DEBUG_ENV}=1)",
    )
    parser.add_argument(
        "opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. OUTPUT_DIR out MODEL.DEVICE cpu; flags may "
        "come before, between or after them",
    )


def add_allow_pickle_argument(parser: argparse.ArgumentParser) -> None:
    """--allow-pickle: MODEL.WEIGHT may be a legacy pickle (unpickling runs the file's code)."""
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let MODEL.WEIGHT be a legacy pickle; unpickling runs code from the "
        "file, so only for files you trust",
    )


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:]) with `parser`, taking its flags anywhere among the
    KEY VALUE overrides (``--config-file CFG OUTPUT_DIR out --resume``). A flag-like word that
    is not one of the parser's flags is an error listing them (argparse's exit status 2)."""
    known = {option for action in parser._actions for option in action.option_strings}
    for word in argv if argv is not None else sys.argv[1:]:
        near = word.split("=")[0].replace("_", "-")
        if word.startswith("--") and "_" in word.split("=")[0] and near in known:
            parser.error(f"unrecognized flag {word}: did you mean {near}?")
    args, unknown = parser.parse_known_intermixed_args(argv)
    if unknown:
        flags = sorted(option for action in parser._actions for option in action.option_strings)
        parser.error(
            f"unrecognized flag(s) {' '.join(unknown)}: this tool's flags are "
            f"{', '.join(flags)}, and they may go before, between or after the "
            "KEY VALUE config overrides (e.g. OUTPUT_DIR out)"
        )
    return args


def load_config(config_file: str, opts: Sequence[str] = ()):
    """Defaults <- the setup of the loss the config names (drdet/config/setups.py) <- the
    yaml file (and its _BASE_ chain) <- KEY VALUE overrides; validated and frozen. Errors name
    the file or the key at fault (UserInputError subclasses)."""
    cfg = get_cfg()
    if not os.path.isfile(config_file):
        raise UserFileNotFoundError(f"Config file not found: {config_file}")
    opts = list(opts)
    if opts and opts[0] == "--":
        opts = opts[1:]
    flags = [key for key in opts[::2] if key.startswith("-")]
    if flags:
        raise as_user_error(
            ValueError(
                f"Config overrides must be KEY VALUE pairs; {flags[0]!r} is a flag: give the tool's "
                "flags on the command line (before, between or after the overrides), not among "
                f"the overrides: {opts}"
            )
        )
    joined = [o for o in opts if re.match(r"^[A-Z][A-Z0-9_.]*=", o)]
    if joined:
        key, _, value = joined[0].partition("=")
        raise UserValueError(
            f"Config overrides are KEY VALUE pairs separated by a space: write {key} {value}, "
            f"not {joined[0]}"
        )
    if len(opts) % 2:
        raise as_user_error(
            ValueError(f"Config overrides must be KEY VALUE pairs, got an odd list: {opts}")
        )
    try:
        cfg.merge_from_file_and_list(config_file, opts)
        validate_cfg(cfg, freeze=True)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise as_user_error(err) from err
    return cfg


def write_config_record(cfg, name: str = "config.yaml") -> None:
    """Writes the merged config to OUTPUT_DIR/`name` (rank 0)."""
    if comm.is_main_process():
        record = os.path.join(cfg.OUTPUT_DIR, name)
        os.makedirs(os.path.dirname(record), exist_ok=True)
        atomic_write_text(record, cfg.dump())


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices); each rank gets seed + rank."""
    seed = seed + comm.get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_setup(
    config_file: str,
    opts: Sequence[str] = (),
    resume: bool = False,
    config_record: str | None = "config.yaml",
) -> tuple[object, torch.device, logging.Logger]:
    """Loads the config, joins the process group when run under torchrun, picks the device
    (cuda:LOCAL_RANK, or the CPU), creates OUTPUT_DIR, sets up logging, writes the merged config
    to OUTPUT_DIR/`config_record` and seeds the RNGs. Returns (cfg, device, logger).
    `config_record` is relative to OUTPUT_DIR: evaluation writes its own beside its results
    (inference/config.yaml), never the run's; training passes None and writes the run's
    config.yaml once its checks have passed (:func:`write_config_record`)."""
    cfg = load_config(config_file, opts)
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserValueError("MODEL.DEVICE is 'cuda' but no GPU is visible; pass MODEL.DEVICE cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        comm.init_distributed(timeout_minutes=cfg.SOLVER.DIST_TIMEOUT_MINUTES)
        check_batch_split(cfg, comm.get_world_size())
    if device.type == "cuda":
        device = torch.device("cuda", comm.get_local_rank())
        torch.cuda.set_device(device)
    make_output_dir(cfg.OUTPUT_DIR)
    log = setup_logger("drdet", cfg.OUTPUT_DIR, comm.get_rank())
    log.info(
        "World size %d, rank %d, device %s, torch %s",
        comm.get_world_size(),
        comm.get_rank(),
        device,
        torch.__version__,
    )
    log.info(
        "Config file %s, overrides %s%s", config_file, list(opts), " (resuming)" if resume else ""
    )
    if config_record is not None:
        write_config_record(cfg, config_record)
    seed_everything(cfg.DATALOADER.SEED)
    return cfg, device, log


DEVICE_TYPES = ("cpu", "cuda")


def check_device_cfg(cfg) -> None:
    """MODEL.DEVICE: "cpu", "cuda" or "cuda:N" (torch's own error names no key)."""
    kind, _, index = str(cfg.MODEL.DEVICE).partition(":")
    require(
        kind in DEVICE_TYPES and (not index or (kind == "cuda" and index.isdigit())),
        "MODEL.DEVICE",
        cfg.MODEL.DEVICE,
        "must be 'cpu', 'cuda' or 'cuda:N'",
    )


register_config_check("MODEL.DEVICE", check_device_cfg)


def check_batch_split(cfg, world_size: int) -> None:
    """SOLVER.IMS_PER_BATCH and TEST.IMS_PER_BATCH are global batches: each must split evenly
    over the `world_size` processes (checked before any data is read)."""
    for key in ("SOLVER.IMS_PER_BATCH", "TEST.IMS_PER_BATCH"):
        total = cfg[key.split(".")[0]][key.split(".")[1]]
        if total % world_size:
            raise UserValueError(
                f"{key} is {total}, not a multiple of the {world_size} processes: each takes "
                f"{key} / {world_size} images; set it to a multiple of {world_size}"
            )


def make_output_dir(path: str) -> None:
    """Creates OUTPUT_DIR `path`; a user error naming the key when it is a file or cannot be
    created (read-only disk, no permission)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserValueError(f"OUTPUT_DIR {path} is a file, not a folder: give a folder")
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "not writable", path)
    except OSError as err:
        raise UserValueError(f"OUTPUT_DIR {path}: cannot write there ({err.strerror})") from err


def check_num_classes(cfg, dataset, weight_classes: tuple[str, int] | None = None) -> None:
    """MODEL.NUM_CLASSES counts the background (maskrcnn-benchmark): it must be the
    number of categories of the training set + 1. `weight_classes`: (MODEL.WEIGHT, the class
    count of its classifier) when training starts from it; the message then also asks for
    MODEL.RESET_CLASSIFIER True, so that both checks lead to the same settings."""
    parts = getattr(dataset, "datasets", [dataset])
    counts = {getattr(d, "name", "?"): d.num_classes for d in parts}
    expected = max(counts.values()) + 1
    key, num = cfg_num_classes(cfg)
    if num + 1 != expected:
        reset = ""
        if weight_classes is not None and weight_classes[1] != expected - 1:
            reset = (
                f" and {RESET_KEY} True (MODEL.WEIGHT {weight_classes[0]} has "
                f"{weight_classes[1]} classes: its classifier's last layer is then "
                "re-initialised, every other tensor loaded)"
            )
        raise as_user_error(
            ValueError(
                f"{key} is {num + 1}, but the training "
                f"set has {counts} categories: set it to {expected} (categories + background)"
                + reset
            )
        )


def train_dataset_from_cfg(cfg):
    """The first dataset of DATASETS.TRAIN (through the catalog, without transforms), or None
    when there is no training set or it cannot be opened (e.g. absent on this machine)."""
    if not cfg.DATASETS.TRAIN:
        return None
    try:
        return get_dataset(cfg.DATASETS.TRAIN[0], transforms=None, is_train=False)
    except (FileNotFoundError, KeyError, ValueError):
        return None


def class_names_from_cfg(cfg) -> list[str] | None:
    """Names of labels 1..C from the first dataset of DATASETS.TRAIN (through the catalog), or
    None when there is no training set or it cannot be opened (e.g. absent on this machine).
    Index k-1 of the returned list names label k."""
    dataset = train_dataset_from_cfg(cfg)
    names = getattr(dataset, "class_names", None)
    return list(names) if names else None


def format_metric(name: str, value: float) -> str:
    """'AP 39.0' (percent); pycocotools' -1 (no ground truth in that size range) as 'n/a'."""
    return f"{name} {100 * value:.1f}" if value >= 0 else f"{name} n/a"


def safe_folder_name(name: str) -> str:
    """A single path component for `name` (a dataset name may be a path such as
    "coco:/data/ann.json:/data/images"): outputs stay inside OUTPUT_DIR whatever the name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"
    return cleaned[:100]


def evaluate_datasets(
    cfg,
    model: torch.nn.Module,
    device: torch.device,
    tag: str = "final",
    checkpoint: tuple[str, dict | None] | None = None,
) -> dict[str, dict[str, float]] | None:
    """Runs inference and evaluation on every dataset of DATASETS.TEST; results go to
    OUTPUT_DIR/inference/<dataset>/ (bbox.json, metrics.json). `checkpoint` (path, its
    "classes" record or None): each dataset's categories are checked against it first
    (drdet.checkpoint.check_classes; without a record, against the config's class count). Returns {dataset: metrics} on rank 0, None elsewhere."""
    log = logging.getLogger("drdet")
    results = {}
    bbox_aug = build_bbox_aug(cfg) if cfg.TEST.BBOX_AUG.ENABLED else None
    for name in cfg.DATASETS.TEST:
        loader = build_data_loader(cfg, is_train=False, dataset_names=[name])
        if checkpoint is not None and checkpoint[1]:
            check_classes(checkpoint[1], checkpoint[0], dataset=loader.dataset, log=log)
        elif checkpoint is not None:  # the config's class count stands for the checkpoint's
            check_unrecorded_classes(checkpoint[0], cfg, loader.dataset)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference", safe_folder_name(name))
        if comm.is_main_process():
            os.makedirs(folder, exist_ok=True)
        log.info("Evaluating %s on %s (%d images)", tag, name, len(loader.dataset))  # type: ignore[arg-type]  # (a sized detection dataset)
        metrics = inference(
            model,
            loader,
            loader.dataset,
            device,
            output_folder=folder,
            per_category=cfg.TEST.PER_CATEGORY_AP,
            bbox_aug=bbox_aug,
        )
        if metrics is not None:
            log.info(
                "%s %s: %s", tag, name, ", ".join(format_metric(k, v) for k, v in metrics.items())
            )
            results[name] = metrics
    return results if comm.is_main_process() else None
