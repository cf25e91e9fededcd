"""Reading and checking COCO annotation files: every error names the file and the image,
annotation or category at fault.

Two entry points share the checks:
- `load_coco_json(path)`: the checked json as a dict, with a missing "iscrowd" set to 0 and a
  missing "area" to the box's area (what pycocotools' evaluation reads);
- `read_coco_columns(path)`: the checked json as columns (`CocoColumns`: tuples and numpy
  arrays, one entry per image or annotation), which is what COCODataset keeps in flat arrays;
  nothing of the parsed json outlives the call.

The checks run over whole columns at C speed (map, set, numpy); only when one of them fails is
the file walked entry by entry to name the first entry at fault (`explain_coco_errors`). The
json is parsed by orjson when it is installed (about twice as fast as the json module on a
COCO-train-sized file) and by the json module otherwise or when orjson refuses the file, so
that a malformed file gets the json module's line and column.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
_ID_TYPES = {int, str}
_NUMBER_TYPES = {int, float}


class CocoColumns(NamedTuple):
    """A checked COCO file, column by column (json order within each column)."""

    category_ids: tuple  # (C,) json category ids
    category_names: tuple  # (C,) str
    image_ids: tuple  # (N,) json image ids
    file_names: tuple  # (N,) str
    widths: np.ndarray  # (N,) float64 pixels
    heights: np.ndarray  # (N,) float64 pixels
    annotation_ids: tuple  # (K,)
    annotation_image_ids: tuple  # (K,) json image ids
    annotation_category_ids: tuple  # (K,) json category ids
    bboxes: np.ndarray  # (K, 4) float64 xywh pixels as in the json
    crowd: np.ndarray  # (K,) bool: "iscrowd" true (absent: False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _parse(path: str) -> Any:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import orjson

        return orjson.loads(raw)
    except ImportError:
        pass
    except (ValueError, TypeError):
        pass  # json's own error (line, column) below, or a file that only json accepts
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({err})") from None


def _check_top_level(path: str, data: Any) -> list:
    """The json's lists: raises unless data is an object with lists "images" and "categories"
    and, when present, "annotations"; returns the annotations ([] when absent)."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: a COCO annotation file holds a JSON object, not a {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path}: no {key!r} list"
                if key not in data
                else f"{path}: {key!r} must be a list, not a {type(data[key]).__name__}"
            )
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(
            f"{path}: 'annotations' must be a list, not a {type(annotations).__name__}"
        )
    return annotations


def _columns(entries: list, keys: Sequence[str]) -> list[tuple] | None:
    """The values of `keys` in every entry, one tuple per key; None when an entry is not an
    object or lacks a key."""
    if not set(map(type, entries)) <= {dict}:
        return None
    try:
        rows = list(map(operator.itemgetter(*keys), entries))
    except KeyError:
        return None
    return list(zip(*rows)) if rows else [() for _ in keys]


def _ids_ok(*columns: tuple) -> bool:
    return all(set(map(type, c)) <= _ID_TYPES for c in columns)


def _positive_sizes(*columns: tuple) -> np.ndarray | None:
    """The columns as a (len(columns), N) float64 array when all are finite positive numbers."""
    if not all(set(map(type, c)) <= _NUMBER_TYPES for c in columns):
        return None
    try:
        values = np.array(columns, dtype=np.float64).reshape(len(columns), -1)
    except OverflowError:
        return None
    return values if bool(np.isfinite(values).all() and (values > 0).all()) else None


def _bbox_array(bboxes: tuple) -> np.ndarray | None:
    """(K, 4) float64 when every bbox is a list of 4 finite numbers."""
    if not (set(map(type, bboxes)) <= {list} and set(map(len, bboxes)) <= {4}):
        return None
    if not set(map(type, itertools.chain.from_iterable(bboxes))) <= _NUMBER_TYPES:
        return None
    try:
        array = np.array(bboxes, dtype=np.float64).reshape(-1, 4)
    except OverflowError:
        return None
    return array if bool(np.isfinite(array).all()) else None


def _fast_columns(data: dict, annotations: list) -> CocoColumns | None:
    """The columns when every check passes, None when one fails (the caller then names it)."""
    cats = _columns(data["categories"], ("id", "name"))
    images = _columns(data["images"], IMAGE_KEYS)
    anns = _columns(annotations, ANNOTATION_KEYS)
    if cats is None or images is None or anns is None:
        return None
    if not _ids_ok(cats[0], images[0], *anns[:3]):
        return None
    if any(len(set(ids)) != len(ids) for ids in (cats[0], images[0], anns[0])):
        return None
    sizes = _positive_sizes(images[2], images[3])
    bboxes = _bbox_array(anns[3])
    if sizes is None or bboxes is None:
        return None
    if not (set(anns[1]) <= set(images[0]) and set(anns[2]) <= set(cats[0])):
        return None
    crowd = np.fromiter(
        map(bool, map(operator.methodcaller("get", "iscrowd", 0), annotations)),
        dtype=bool,
        count=len(annotations),
    )
    return _make_columns(cats, images, sizes, anns, bboxes, crowd)


def _make_columns(cats, images, sizes, anns, bboxes, crowd) -> CocoColumns:
    return CocoColumns(
        category_ids=cats[0],
        category_names=cats[1],
        image_ids=images[0],
        file_names=images[1],
        widths=sizes[0],
        heights=sizes[1],
        annotation_ids=anns[0],
        annotation_image_ids=anns[1],
        annotation_category_ids=anns[2],
        bboxes=bboxes,
        crowd=crowd,
    )


@contextlib.contextmanager
def gc_paused():
    """The garbage collector off inside the block (as it was before, after it).

    Parsing a COCO-train-sized json makes tens of millions of objects, none of them garbage
    (reference counting frees them all once the json is dropped); with the collector on, its
    passes over the ever larger heap took two thirds of the time (measured: orjson 6.5 s with
    it, 2.0 s without)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_coco_columns(path: str) -> CocoColumns:
    """Read and check the COCO annotation file `path` (see `load_coco_json` for the checks);
    its content as columns. Raises ValueError naming `path` and the entry at fault."""
    with gc_paused():
        data = _parse(path)
        annotations = _check_top_level(path, data)
        columns = _fast_columns(data, annotations)
        if columns is None:
            explain_coco_errors(path, data, annotations)  # raises, naming the entry
            columns = _generic_columns(data, annotations)
        del data, annotations
    return columns


def _generic_columns(data: dict, annotations: list) -> CocoColumns:
    """The columns of a file that passed explain_coco_errors (entries the fast path declines,
    such as an id that is a string, but that are valid)."""
    cats = _columns(data["categories"], ("id", "name"))
    images = _columns(data["images"], IMAGE_KEYS)
    anns = _columns(annotations, ANNOTATION_KEYS)
    assert cats is not None and images is not None and anns is not None
    sizes = np.array(images[2:4], dtype=np.float64).reshape(2, -1)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    bboxes = np.array(anns[3], dtype=np.float64).reshape(-1, 4)
    return _make_columns(cats, images, sizes, anns, bboxes, crowd)


def load_coco_json(path: str) -> dict[str, Any]:
    """Read and check a COCO annotation file; every error is a ValueError naming `path` and the
    image, annotation or category at fault.

    Checked: valid JSON (the error gives line and column); an object with the lists "images" and
    "categories" ("annotations" may be absent: image-info files such as test-dev); images with
    "id", "file_name" and positive "width"/"height"; categories with "id" and "name"; annotations
    with "id", "image_id", "category_id" and a "bbox" of 4 finite numbers, naming a known image
    and category; no duplicate ids. A missing "iscrowd" becomes 0 and a missing "area" the box's
    area (pycocotools' evaluation reads both).
    """
    with gc_paused():
        data = _parse(path)
        annotations = _check_top_level(path, data)
        if _fast_columns(data, annotations) is None:
            explain_coco_errors(path, data, annotations)
    data["annotations"] = annotations
    for ann in annotations:
        bbox = ann["bbox"]
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(max(bbox[2], 0) * max(bbox[3], 0)))
    return data


def explain_coco_errors(path: str, data: dict, annotations: list) -> None:
    """Walk the entries of a COCO dict in order and raise a ValueError naming `path` and the
    first entry at fault (category, image or annotation); returns when there is none."""
    cat_ids = _checked_ids(path, data["categories"], "category", ("id", "name"))
    image_ids = _checked_ids(path, data["images"], "image", IMAGE_KEYS)
    for img in data["images"]:
        for key in ("width", "height"):
            if not _is_number(img[key]) or img[key] <= 0:
                raise ValueError(
                    f"{path}: image id {img['id']} ({img['file_name']!r}) has {key} "
                    f"{img[key]!r}; it must be a positive number of pixels"
                )
    seen: set = set()
    for position, ann in enumerate(annotations):
        _check_annotation(path, position, ann, seen, image_ids, cat_ids)


def _check_annotation(
    path: str, position: int, ann: Any, seen: set, image_ids: set, cat_ids: set
) -> None:
    where = _entry_where(path, "annotation", position, ann, ANNOTATION_KEYS)
    for key in ANNOTATION_KEYS[:3]:
        if not _is_id(ann[key]):
            raise ValueError(f"{path}: {where} has {key} {ann[key]!r}; ids are integers")
    if ann["id"] in seen:
        raise ValueError(f"{path}: {where} appears twice (annotation ids must be unique)")
    seen.add(ann["id"])
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise ValueError(
            f"{path}: {where} has bbox {bbox!r}; expected [x, y, width, height], 4 finite numbers"
        )
    if ann["image_id"] not in image_ids:
        raise ValueError(
            f"{path}: {where} names image id {ann['image_id']!r}, which is not in 'images'"
        )
    if ann["category_id"] not in cat_ids:
        raise ValueError(
            f"{path}: {where} names category id {ann['category_id']!r}, which is not in "
            "'categories'"
        )


def _entry_where(path: str, what: str, position: int, entry: Any, keys: Sequence[str]) -> str:
    """ "<what> id <id>" (or "#<position>" when it has none) of an entry that must be an object
    with `keys`; a ValueError naming it when it is not."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {what} #{position} is a {type(entry).__name__}, not an object")
    where = f"{what} id {entry['id']}" if "id" in entry else f"{what} #{position} (counting from 0)"
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{path}: {where} has no {', '.join(map(repr, missing))}")
    return where


def _checked_ids(path: str, entries: list, what: str, keys: tuple[str, ...]) -> set:
    ids: set = set()
    for position, entry in enumerate(entries):
        where = _entry_where(path, what, position, entry, keys)
        if not _is_id(entry["id"]):
            raise ValueError(f"{path}: {where} has id {entry['id']!r}; ids are integers")
        if entry["id"] in ids:
            raise ValueError(f"{path}: {where} appears twice ({what} ids must be unique)")
        ids.add(entry["id"])
    return ids
