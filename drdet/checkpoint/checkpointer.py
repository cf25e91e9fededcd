"""Checkpoints: atomic saves, resume from OUTPUT_DIR/last_checkpoint, safe loading.

A checkpoint is a dict {"model": state dict, "optimizer": ..., "scheduler": ..., "iteration": int,
"anchor_convention": str (MODEL.ANCHOR_GENERATOR.CONVENTION of the model), plus any extra
state} holding only tensors, numbers, strings, None, lists, tuples and dicts, so that it loads
with torch.load(weights_only=True): loading never runs code from the file. Files that need full
unpickling (old maskrcnn-benchmark/Detectron .pth/.pkl files with pickled objects) load only when
the caller passes allow_pickle=True, after deciding to trust them.
"""

import logging
import os
import pickle
import random
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from drdet.checkpoint.classes import (
    CLASSES_KEY,
    RESET_KEY,
    check_state_classes,
    classifier_keys,
    state_num_classes,
)
from drdet.checkpoint.files import damaged, holds_objects, load_error, not_a_checkpoint
from drdet.checkpoint.weights import IMAGENET_FORMATS, detect_format, to_drdet_state
from drdet.utils.comm import is_main_process
from drdet.utils.errors import CheckpointError, UserFileNotFoundError, UserValueError
from drdet.utils.io import atomic_open, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
_NUMBERED = re.compile(r"^model_(\d{7})\.pth$")
_SAFE_LEAVES = (torch.Tensor, int, float, str, bool, type(None), torch.Size)

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


def check_weights_only_safe(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value that torch.load(weights_only=True) would refuse
    (anything other than tensors, numbers, strings, None and lists/tuples/dicts of them)."""
    if isinstance(obj, _SAFE_LEAVES):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_weights_only_safe(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(
                    f"{where}: key {k!r} of type {type(k).__name__} cannot be saved; "
                    "use str or int keys"
                )
            check_weights_only_safe(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}, which torch.load(weights_only=True) "
        "cannot load; convert it to tensors/lists/numbers before saving"
    )


# ----------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), numpy and Python's `random`, as tensors
    and plain lists only (weights_only-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what get_rng_state() returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            logger.warning(
                "CUDA RNG state saved for %d devices, %d visible: not restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- loading files
def anchor_convention(model: nn.Module) -> str | None:
    """The anchor convention of a detector (None for a module without an anchor generator)."""
    generator = getattr(unwrap_model(model), "anchor_generator", None)
    return getattr(generator, "convention", None)


def check_anchor_convention(
    model: nn.Module, convention: str | None, path: str, log: logging.Logger | None = None
) -> None:
    """Warn when the weights at `path` were made for anchors of another convention than the
    model's: a converted torchvision or maskrcnn-benchmark model evaluated with drdet's anchors
    gives shifted boxes. Fine-tuning from such weights is fine, hence a warning."""
    ours = anchor_convention(model)
    if convention is None or ours is None or convention == ours:
        return
    (log or logger).warning(
        "%s was made for MODEL.ANCHOR_GENERATOR.CONVENTION %r, but the model uses %r: its "
        "boxes will be misplaced unless you set MODEL.ANCHOR_GENERATOR.CONVENTION %s "
        "(fine-tuning with other anchors is fine)",
        path,
        convention,
        ours,
        convention,
    )


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU with torch.load(weights_only=True).

    Errors (CheckpointError, a RuntimeError) say what is wrong: a file that is not a PyTorch
    checkpoint (empty, text, ...), a truncated or damaged one (file and size named), or a legacy
    pickle holding Python objects: that one loads only when `allow_pickle` is True: then the file
    is fully unpickled (torch.load with weights_only=False, or pickle for plain .pkl files such as
    Detectron's), which can run code stored in it: pass it only for files you trust. Numpy arrays
    in such files become tensors. A file holding a bare state dict is returned as
    {"model": state dict}.
    """
    if "://" in path:
        raise UserFileNotFoundError(
            f"checkpoint {path}: drdet downloads nothing and reads no {path.split('://')[0]}:// "
            "names; download the file yourself (an ImageNet backbone: torchvision's "
            "resnet50-*.pth or Detectron's R-50.pkl) and set MODEL.WEIGHT to its path"
        )
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"checkpoint file not found: {path}")
    error = not_a_checkpoint(path)
    if error is not None:
        raise error
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on bad bytes (KeyError, EOFError...)
        if not (allow_pickle and holds_objects(err)):
            raise load_error(path, err) from err
        logger.warning("Loading %s with full unpickling (allow_pickle=True)", path)
        try:
            data = _load_pickled(path)
        except Exception as unpickle_err:
            raise damaged(path, f"unpickling failed: {unpickle_err}") from unpickle_err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, expected a dict")
    if "blobs" in data and "model" not in data:  # Detectron/Caffe2 .pkl
        data = {"model": data["blobs"]}
    if "model" not in data:
        data = {"model": data}
    data["model"] = {
        k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
        for k, v in data["model"].items()
    }
    return data


def _load_pickled(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError):
        with open(path, "rb") as f:  # a plain pickle, not torch's format
            return pickle.load(f, encoding="latin1")


# ----------------------------------------------------------------------------- model state
def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_model_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    log: logging.Logger | None = None,
    strict: bool = False,
    missing_level: int = logging.WARNING,
) -> dict[str, list]:
    """Copy `state` into `model` (a DDP wrapper is unwrapped; a "module." prefix on every key of
    `state` is dropped). Keys are matched by name; a matched key whose shape differs is an error
    naming the key and both shapes. Missing keys (in the model, not in `state`) and unexpected
    ones (in `state`, not in the model) are logged and returned, not errors, so that a backbone
    checkpoint can initialise a detector; with `strict` (inference: every weight must come from
    the file) they are an error naming them. Returns {"loaded", "missing", "unexpected"} key lists.
    `missing_level`: the log level of the missing keys (INFO for an ImageNet backbone, which
    leaves the FPN and the head to their initialisation by design).
    """
    log = log or logger
    model = unwrap_model(model)
    state = _strip_prefix(state, "module.")
    own = model.state_dict()
    loaded, mismatched = [], []
    for key, value in state.items():
        if key not in own:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"checkpoint value for {key!r} is a {type(value).__name__}, not a tensor"
            )
        if value.shape != own[key].shape:
            mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
        loaded.append(key)
    if mismatched:
        raise RuntimeError(
            "shape mismatch while loading the model state:\n  " + "\n  ".join(mismatched)
        )
    if strict and (set(own) != set(loaded)):
        raise RuntimeError(
            "the checkpoint does not match the model: missing "
            f"{sorted(set(own) - set(loaded))[:10]}, "
            f"unexpected {sorted(set(state) - set(own))[:10]}"
        )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(state) - set(own))
    log.info("Loaded %d of %d model tensors from the checkpoint", len(loaded), len(own))
    if missing:
        log.log(
            missing_level, "Missing in the checkpoint (left as initialised): %s", ", ".join(missing)
        )
    if unexpected:
        log.warning("In the checkpoint but not in the model (ignored): %s", ", ".join(unexpected))
    return {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected}


# ----------------------------------------------------------------------------- checkpointer
class Checkpointer:
    """Save and restore model, optimizer, scheduler and extra training state in `save_dir`.

    `save("model_0002500", iteration=2500, ...)` writes save_dir/model_0002500.pth atomically
    (temporary file in save_dir, flush + fsync, os.replace) and then points save_dir/last_checkpoint
    at it, also atomically: a crash at any moment leaves the previous checkpoint and pointer
    intact. Only the main process writes (`save_to_disk`, default: rank 0).

    The training loop owns its extra state: e.g. save(name, iteration=it, rng=get_rng_state(),
    sampler={...}), then after `extra = resume()`: start at extra.get("iteration", 0) and call
    set_rng_state(extra["rng"]) when present. Note that RNG states are per rank: saving rank 0's
    state restores rank 0's stream on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        save_dir: str = "",
        save_to_disk: bool | None = None,
        log: logging.Logger | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.save_dir = save_dir
        self.save_to_disk = is_main_process() if save_to_disk is None else save_to_disk
        self.logger = log or logger
        # Saved in every checkpoint, e.g. {"classes": classes_record(training set)}.
        self.record: dict[str, Any] = {}
        # The class count of the classifier in the file loaded last (None: no classifier).
        self.loaded_classes: int | None = None

    # -- saving
    def save(self, name: str, **extra: Any) -> str | None:
        """Write save_dir/`name`.pth with the model, optimizer and scheduler states and `extra`
        (e.g. iteration=..., rng=get_rng_state(), sampler=...). Returns the path (None on
        ranks that do not write)."""
        if not self.save_dir or not self.save_to_disk:
            return None
        reserved = {"model", "optimizer", "scheduler"} & set(extra)
        if reserved:
            raise ValueError(f"Checkpointer.save: extra keys {sorted(reserved)} are reserved")
        model = unwrap_model(self.model)
        data: dict[str, Any] = {"model": model.state_dict()}
        convention = anchor_convention(model)
        if convention is not None:
            data["anchor_convention"] = convention
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        data.update(self.record)
        data.update(extra)
        check_weights_only_safe(data)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_open(path, "wb") as f:
            torch.save(data, f)
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), os.path.basename(path))
        return path

    # -- loading
    def has_checkpoint(self) -> bool:
        return bool(self.save_dir) and os.path.isfile(os.path.join(self.save_dir, LAST_CHECKPOINT))

    def last_checkpoint(self) -> str | None:
        """Path recorded in save_dir/last_checkpoint, or None."""
        if not self.has_checkpoint():
            return None
        with open(os.path.join(self.save_dir, LAST_CHECKPOINT)) as f:
            name = f.read().strip()
        # Relative names are relative to save_dir, so the folder can be moved.
        return name if os.path.isabs(name) else os.path.join(self.save_dir, name)

    def load(
        self,
        path: str,
        allow_pickle: bool = False,
        load_training_state: bool = True,
        strict: bool = False,
        reset_classifier: bool = False,
        cfg=None,
    ) -> dict[str, Any]:
        """Load `path` into the model, and into the optimizer and scheduler when
        `load_training_state`; return the rest of the checkpoint (iteration, extra state).
        `strict`: every model tensor must come from the file (see load_model_state). ImageNet
        backbones of torchvision and MSRA/Detectron are converted (drdet.checkpoint.weights).
        `reset_classifier` (MODEL.RESET_CLASSIFIER): the classifier's last layer is not loaded
        and keeps its initialisation, whatever its class count in the file. `cfg`: the model's
        config, against which ImageNet weights' input convention is checked."""
        data = load_checkpoint_file(path, allow_pickle=allow_pickle)
        return self._load_data(data, path, load_training_state, strict, reset_classifier, cfg)

    def _load_data(
        self,
        data: dict[str, Any],
        path: str,
        load_training_state: bool,
        strict: bool,
        reset_classifier: bool = False,
        cfg=None,
    ) -> dict[str, Any]:
        """Load what load_checkpoint_file(`path`) returned (see load). Sets `loaded_classes`:
        the class count of the file's classifier (None without one)."""
        self.logger.info("Loading checkpoint from %s", path)
        # ImageNet backbones (torchvision .pth, MSRA .pkl) are renamed to drdet's names here.
        backbone_only = detect_format(data["model"]) in IMAGENET_FORMATS
        state = _strip_prefix(to_drdet_state(data.pop("model"), path, self.logger, cfg), "module.")
        self.loaded_classes = state_num_classes(state)
        if reset_classifier:
            state = self._without_classifier(state, path)
        check_state_classes(
            state, unwrap_model(self.model).state_dict(), path, data.get(CLASSES_KEY)
        )
        level = logging.INFO if backbone_only else logging.WARNING
        load_model_state(self.model, state, self.logger, strict=strict, missing_level=level)
        check_anchor_convention(self.model, data.pop("anchor_convention", None), path, self.logger)
        optimizer_state = data.pop("optimizer", None)
        scheduler_state = data.pop("scheduler", None)
        if load_training_state:
            if self.optimizer is not None and optimizer_state is not None:
                self.optimizer.load_state_dict(optimizer_state)
            if self.scheduler is not None and scheduler_state is not None:
                self.scheduler.load_state_dict(scheduler_state)
        return data

    def _without_classifier(self, state: dict[str, Any], path: str) -> dict[str, Any]:
        """`state` less the keys of the model's classifier (its last layer), logged."""
        keys = classifier_keys(unwrap_model(self.model))
        if not keys:
            raise UserValueError(f"{RESET_KEY}: the detector's head names no classifier")
        self.logger.warning(
            "%s True: %s of %s not loaded (%s classes there); they start from the head's "
            "initialisation (the loss's prior)",
            RESET_KEY,
            ", ".join(keys),
            path,
            self.loaded_classes,
        )
        return {k: v for k, v in state.items() if k not in keys}

    def resume_or_load(self, weights: str = "", allow_pickle: bool = False) -> dict[str, Any]:
        """Resume from save_dir/last_checkpoint when there is one (the run was interrupted);
        otherwise initialise the model only from `weights` (MODEL.WEIGHT, e.g. an ImageNet
        backbone) when given, and return {} (a fresh start at iteration 0)."""
        if self.has_checkpoint():
            return self.resume()
        if weights:
            self.load(weights, allow_pickle=allow_pickle, load_training_state=False)
        return {}

    def resume(self) -> dict[str, Any]:
        """Restore everything from the checkpoint named in save_dir/last_checkpoint and return its
        extra state ({} when there is none, i.e. a fresh start). When that file is damaged
        (truncated, not a checkpoint), the newest intact save_dir/model_XXXXXXX.pth (by
        iteration) is used instead, with a warning naming both."""
        path = self.last_checkpoint()
        if path is None:
            self.logger.info("No checkpoint in %r: starting from scratch", self.save_dir)
            return {}
        try:
            return self.load(path, load_training_state=True)
        except CheckpointError as err:
            if not os.path.isfile(path):
                raise
            failure = err
        for candidate in self.numbered_checkpoints():
            if os.path.abspath(candidate) == os.path.abspath(path):
                continue
            try:
                data = load_checkpoint_file(candidate)
            except CheckpointError:
                continue
            self.logger.warning(
                "The last checkpoint %s cannot be loaded (%s); resuming from "
                "%s, the newest intact checkpoint, instead",
                path,
                failure,
                candidate,
            )
            return self._load_data(data, candidate, load_training_state=True, strict=False)
        raise CheckpointError(
            f"{failure}; and {self.save_dir} holds no other intact model_XXXXXXX.pth to resume from"
        ) from failure

    def numbered_checkpoints(self) -> list[str]:
        """save_dir/model_XXXXXXX.pth paths, newest (highest iteration) first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        found = [
            (int(m.group(1)), name)
            for name in os.listdir(self.save_dir)
            for m in [_NUMBERED.match(name)]
            if m
        ]
        return [os.path.join(self.save_dir, name) for _, name in sorted(found, reverse=True)]
