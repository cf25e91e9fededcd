"""Dataset names -> dataset objects, through the dataset types of :data:`DATASET_TYPES`.

Registered names are resolved under the datasets root, the environment variable DRDET_DATASETS
(default ./datasets; layout in datasets/README.md). Besides them, every dataset type has a name
form that needs no registration, so own data work from a yaml or the command line alone:

    coco:<annotation json>:<image folder>      e.g. coco:/data/mine/train.json:/data/mine/images
    voc:<VOC20xx folder>:<split>               e.g. voc:/data/VOCdevkit/VOC2007:test
    synthetic:<num images>:<seed>[:<size px>]  e.g. synthetic:200:5

(the json path must not contain ':'; the image folder may). Relative paths are taken from the
current directory. The types and their registered names are defined by the dataset modules
(drdet/data/datasets/coco.py, voc.py, synthetic.py); see drdet/data/registry.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drdet.utils.errors import UserInputError, as_user_error

from .registry import (
    DATASET_TYPES,
    DEFAULT_ROOT,
    ENV_ROOT,
    DatasetType,
    MalformedDatasetName,
    datasets_root,
)

__all__ = [
    "DATASET_TYPES",
    "DEFAULT_ROOT",
    "ENV_ROOT",
    "UnknownDatasetError",
    "datasets_root",
    "get_dataset",
    "known_names",
]


class UnknownDatasetError(UserInputError, KeyError):
    """A dataset name that is neither registered nor of a registered type's ``<kind>:`` form."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def _types() -> dict[str, DatasetType]:
    # The synthetic module is imported here, not at import time, so that
    # `python -m drdet.data.datasets.synthetic` does not find itself imported.
    from .datasets import coco, synthetic, voc  # noqa: F401  (register the built-in types)

    return {kind: DATASET_TYPES.get(kind) for kind in DATASET_TYPES.names()}


def known_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(name for t in _types().values() for name in t.names)


def _forms(types: dict[str, DatasetType]) -> str:
    forms = [t.form for t in types.values()]
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


def get_dataset(name: str, transforms: Callable | None, is_train: bool) -> Any:
    """Build the dataset called `name` (see :func:`build_named_dataset`). Every error about the
    name or the files it points to (missing, malformed, inconsistent) is a UserInputError
    subclass of the builtin type raised (drdet.utils.errors): the tools print it alone."""
    try:
        return build_named_dataset(name, transforms, is_train)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise as_user_error(err) from err


def build_named_dataset(name: str, transforms: Callable | None, is_train: bool) -> Any:
    """Build the dataset called `name` (a registered name or a ``<kind>:...`` form).

    `is_train` selects training behaviour: images without usable boxes are skipped and VOC's
    difficult objects are left out of the targets. Raises UnknownDatasetError (a KeyError)
    listing the known names for an unknown name, ValueError for a ``<kind>:`` form whose parts
    do not fit, and FileNotFoundError naming the missing path (and DRDET_DATASETS).
    """
    types = _types()
    for dataset_type in types.values():
        if name in dataset_type.names:
            assert dataset_type.from_entry is not None  # DatasetType checks it
            return dataset_type.from_entry(
                name, dataset_type.names[name], datasets_root(), transforms, is_train
            )
    kind, sep, rest = name.partition(":")
    if sep and kind in types:
        dataset_type = types[kind]
        try:
            return dataset_type.from_parts(
                name, rest.split(":", dataset_type.max_parts - 1), transforms, is_train
            )
        except MalformedDatasetName:
            raise ValueError(f"malformed dataset name {name!r}; expected {_forms(types)}") from None
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; known datasets: {', '.join(known_names())}; or {_forms(types)}"
    )
