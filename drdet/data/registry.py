"""Dataset types by name: the table that turns a dataset name into a dataset object.

A dataset type is registered in :data:`DATASET_TYPES` under its kind (``"coco"``) by the module
that implements it, as a :class:`DatasetType`. It builds a dataset in two ways:

- from a name of the form ``<kind>:<part>:<part>...`` (``coco:/data/train.json:/data/images``):
  ``from_parts(name, parts, transforms, is_train)``, with ``parts`` the name after ``<kind>:``
  split at ':' into at most ``max_parts`` pieces (the last piece keeps any further ':');
- from a registered name (``coco_2017_val``), one of the keys of ``names``:
  ``from_entry(name, entry, root, transforms, is_train)``, with ``entry = names[name]`` and
  ``root`` the datasets root (``$DRDET_DATASETS``, default ``./datasets``).

``from_parts`` raises :class:`MalformedDatasetName` when the parts do not fit its ``form``, and
both raise FileNotFoundError through :func:`require_path` for a missing file. Adding a type is
one module with one ``DATASET_TYPES.register(kind, DatasetType(...))`` (CONTRIBUTING.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drdet.utils.registry import Registry

ENV_ROOT = "DRDET_DATASETS"
DEFAULT_ROOT = "./datasets"

DATASET_TYPES = Registry("dataset type")


class MalformedDatasetName(ValueError):
    """The parts of a ``<kind>:...`` name do not fit the type's form."""


@dataclass(frozen=True)
class DatasetType:
    """How one kind of dataset is built from a name (see the module docstring).

    Args:
        form: the ``<kind>:...`` name form for messages, e.g. ``"voc:<VOC folder>:<split>"``.
        from_parts: ``(name, parts, transforms, is_train) -> dataset``.
        max_parts: the name after ``<kind>:`` is split into at most this many parts.
        names: registered name -> entry (what ``from_entry`` needs, paths relative to the root).
        from_entry: ``(name, entry, root, transforms, is_train) -> dataset``; required when
            ``names`` is not empty.
    """

    form: str
    from_parts: Callable[..., Any]
    max_parts: int
    names: Mapping[str, Any] = field(default_factory=dict)
    from_entry: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.max_parts < 1:
            raise ValueError(f"dataset type {self.form!r}: max_parts must be >= 1")
        if self.names and self.from_entry is None:
            raise ValueError(f"dataset type {self.form!r} registers names but no from_entry")


def two_parts(name: str, parts: list[str]) -> tuple[str, str]:
    """The two non-empty parts of a ``<kind>:<a>:<b>`` name; MalformedDatasetName otherwise."""
    if len(parts) != 2 or not all(parts):
        raise MalformedDatasetName(name)
    return parts[0], parts[1]


def datasets_root() -> str:
    """The datasets root: $DRDET_DATASETS, or ./datasets."""
    return os.environ.get(ENV_ROOT, DEFAULT_ROOT)


def require_path(path: str, name: str, what: str, from_root: bool) -> str:
    """``path`` if it exists, else FileNotFoundError naming dataset ``name``, ``what`` the path
    is and the path (and, for a registered name, where registered datasets live)."""
    if os.path.exists(path):
        return path
    hint = (
        f"; registered datasets live under {ENV_ROOT}={datasets_root()!r} "
        f"(see datasets/README.md for the layout)"
        if from_root
        else ""
    )
    raise FileNotFoundError(f"dataset {name!r}: {what} {path!r} not found{hint}")
