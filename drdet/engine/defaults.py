"""What the tools share (named after detectron2's engine/defaults.py): the command line (flags
anywhere among KEY VALUE overrides), config, process group, logging, device, seeding, the checks
of a config against its data, and evaluation of every dataset of DATASETS.TEST."""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
from collections.abc import Sequence

import numpy as np
import torch

from drdet.checkpoint import cfg_num_classes, check_classes
from drdet.config import get_cfg, validate_cfg
from drdet.data import build_data_loader
from drdet.data.catalog import get_dataset
from drdet.engine.inference import inference
from drdet.engine.test_time_augmentation import build_bbox_aug
from drdet.utils import comm
from drdet.utils.errors import DEBUG_ENV, DEBUG_FLAG, UserFileNotFoundError, as_user_error
from drdet.utils.io import atomic_write_text
from drdet.utils.logger import setup_logger


def default_argument_parser(
    description: str | None, config_file: bool = True
) -> argparse.ArgumentParser:
    """The parser of a tool that takes a config: --config-file FILE (when `config_file`),
    --debug, and KEY VALUE config overrides (`opts`). Add the tool's own flags, then parse with
    :func:`parse_tool_args`, which accepts the flags before, between or after the overrides."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv[1:]) with `parser`, taking its flags anywhere among the
    KEY VALUE overrides (``--config-file CFG OUTPUT_DIR out --resume``). A flag-like word that
    is not one of the parser's flags is an error listing them (argparse's exit status 2)."""
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
    """Defaults <- the setup of the loss the config names (drdet.modeling.losses.setup) <- the
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


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices); each rank gets seed + rank."""
    seed = seed + comm.get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_setup(
    config_file: str, opts: Sequence[str] = (), resume: bool = False
) -> tuple[object, torch.device, logging.Logger]:
    """Loads the config, joins the process group when run under torchrun, picks the device
    (cuda:LOCAL_RANK, or the CPU), creates OUTPUT_DIR, sets up logging, writes the merged config
    to OUTPUT_DIR/config.yaml and seeds the RNGs. Returns (cfg, device, logger)."""
    cfg = load_config(config_file, opts)
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MODEL.DEVICE is 'cuda' but no GPU is visible; pass MODEL.DEVICE cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        comm.init_distributed(timeout_minutes=cfg.SOLVER.DIST_TIMEOUT_MINUTES)
    if device.type == "cuda":
        device = torch.device("cuda", comm.get_local_rank())
        torch.cuda.set_device(device)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
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
    if comm.is_main_process():
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    seed_everything(cfg.DATALOADER.SEED)
    return cfg, device, log


def check_num_classes(cfg, dataset) -> None:
    """MODEL.NUM_CLASSES counts the background (maskrcnn-benchmark): it must be the
    number of categories of the training set + 1."""
    parts = getattr(dataset, "datasets", [dataset])
    counts = {getattr(d, "name", "?"): d.num_classes for d in parts}
    expected = max(counts.values()) + 1
    key, num = cfg_num_classes(cfg)
    if num + 1 != expected:
        raise as_user_error(
            ValueError(
                f"{key} is {num + 1}, but the training "
                f"set has {counts} categories: set it to {expected} (categories + background)"
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
    (drdet.checkpoint.check_classes). Returns {dataset: metrics} on rank 0, None elsewhere."""
    log = logging.getLogger("drdet")
    results = {}
    bbox_aug = build_bbox_aug(cfg) if cfg.TEST.BBOX_AUG.ENABLED else None
    for name in cfg.DATASETS.TEST:
        loader = build_data_loader(cfg, is_train=False, dataset_names=[name])
        if checkpoint is not None and checkpoint[1]:
            check_classes(checkpoint[1], checkpoint[0], dataset=loader.dataset, log=log)
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
