"""COCODataset in flat arrays: the same targets as pycocotools' index gives, no per-image Python
objects left for the DataLoader workers to touch, the fast checks falling back to the named
errors, and the json read with and without orjson."""

import gc
import json
import sys

import numpy as np
import pytest
import torch
from helpers.bad_data import good_files, write_set
from pycocotools.coco import COCO

from drdet.data.datasets import coco_json
from drdet.data.datasets.coco import COCODataset
from drdet.data.datasets.coco_table import clip_xywh_to_xyxy
from drdet.data.flat import RaggedArray, StringArray
from drdet.data.scale_benchmark import prepare_sets


def test_string_and_ragged_arrays():
    names = ["a.jpg", "", "dir/é ü.png", "x" * 300]
    strings = StringArray(names)
    assert len(strings) == 4 and [strings[i] for i in range(4)] == names
    values = np.arange(12).reshape(6, 2)
    ragged = RaggedArray(values, np.array([2, 0, 4]))
    assert len(ragged) == 3 and ragged[1].shape == (0, 2)
    np.testing.assert_array_equal(ragged[2], values[2:])
    np.testing.assert_array_equal(ragged.lengths(), [2, 0, 4])
    with pytest.raises(ValueError, match="sum to 5, not 6"):
        RaggedArray(values, np.array([2, 3]))


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    """A generated COCO-format set of 237 images (drdet.data.coco_scale at 1/500 of COCO
    train), its images symlinks to one JPEG per shape."""
    return prepare_sets(str(tmp_path_factory.mktemp("coco")), per_image=5, scale=0.002)


def _reference_targets(ann_file, with_empty):
    """Per image id: (boxes x1y1x2y2 clipped, labels) from pycocotools' index, one annotation at
    a time (the previous implementation's rules)."""
    coco = COCO(ann_file)
    label = {c: i + 1 for i, c in enumerate(sorted(coco.cats))}
    out = {}
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        boxes = clip_xywh_to_xyxy([a["bbox"] for a in anns], info["height"], info["width"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if keep.any() or with_empty:
            out[image_id] = (
                boxes[keep],
                [label[a["category_id"]] for a, k in zip(anns, keep) if k],
            )
    return out


@pytest.mark.parametrize("is_train", [True, False])
def test_targets_equal_those_of_pycocotools_index(small_coco, is_train):
    ds = COCODataset(small_coco["train_json"], small_coco["train_images"], is_train)
    expected = _reference_targets(small_coco["train_json"], with_empty=not is_train)
    assert ds.ids == list(expected)
    for index, (image_id, (boxes, labels)) in enumerate(expected.items()):
        image, target, _ = ds[index]
        assert target["image_id"] == image_id and image.size == (
            ds.get_img_info(index)["width"],
            ds.get_img_info(index)["height"],
        )
        torch.testing.assert_close(target["boxes"], torch.tensor(boxes, dtype=torch.float32))
        assert target["labels"].tolist() == labels
    if is_train:
        assert sum(ds.skipped_images.values()) == ds.num_images_listed - len(ds) > 0


def _python_objects(obj, seen=None):
    """Every list, tuple, dict or set reachable from obj's attributes (numpy arrays excluded)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (np.ndarray, str, bytes, int, float)):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple, dict, set)):
        yield obj
        items = obj.values() if isinstance(obj, dict) else obj
        for item in items:
            yield from _python_objects(item, seen)
    elif hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            yield from _python_objects(value, seen)


def test_no_per_image_python_objects_are_kept(small_coco):
    ds = COCODataset(small_coco["train_json"], small_coco["train_images"], True)
    assert len(ds) > 200
    sizes = [len(c) for c in _python_objects(ds)]
    assert max(sizes) <= ds.num_classes, sizes  # the category maps are the largest
    assert ds._coco is None  # pycocotools' index only on demand
    assert ds.coco.anns[1]["image_id"] in ds.coco.imgs


def test_the_parse_pauses_the_garbage_collector_and_restores_it(small_coco, monkeypatch):
    states = []
    real_parse = coco_json._parse
    monkeypatch.setattr(
        coco_json, "_parse", lambda p: states.append(gc.isenabled()) or real_parse(p)
    )
    coco_json.read_coco_columns(small_coco["val_json"])
    assert states == [False] and gc.isenabled()
    gc.disable()
    try:
        coco_json.read_coco_columns(small_coco["val_json"])
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("orjson_installed", [True, False])
def test_json_read_with_and_without_orjson(tmp_path, monkeypatch, orjson_installed):
    if not orjson_installed:
        monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson raises ImportError
    ann, img_dir = write_set(tmp_path, good_files(2))
    columns = coco_json.read_coco_columns(ann)
    assert columns.image_ids == (1, 2) and columns.bboxes.tolist() == [[4, 4, 20, 16]] * 2
    with open(ann, "w") as f:
        f.write('{"images": [],\n "categories": [,]}')
    with pytest.raises(ValueError, match=r"ann\.json: invalid JSON at line 2, column 17"):
        coco_json.read_coco_columns(ann)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["annotations"][0]["bbox"].__setitem__(2, True),
            r"has bbox \[4, 4, True, 16\]",
        ),
        (
            lambda d: d["annotations"][0]["bbox"].__setitem__(2, 1e400),
            r"has bbox \[4, 4, inf, 16\]",
        ),
        (lambda d: d["images"][1].update(width=True), r"image id 2 \('2.png'\) has width True"),
        (lambda d: d["images"][1].update(height=0), r"image id 2 \('2.png'\) has height 0"),
        (lambda d: d["categories"].append({"id": 1, "name": "b"}), "category id 1 appears twice"),
        (lambda d: d["annotations"].append(7), r"annotation #2 is a int, not an object"),
        (lambda d: d["annotations"][1].update(id=2.0), r"annotation id 2.0 has id 2.0; ids are"),
    ],
)
def test_checks_the_fast_path_declines_are_named(tmp_path, edit, message):
    ann, img_dir = write_set(tmp_path, good_files(2))
    data = json.loads(open(ann).read())
    edit(data)
    with open(ann, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=message):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)
    with pytest.raises(ValueError, match=message):
        coco_json.load_coco_json(ann)


def test_string_ids_pass_the_checks_but_image_ids_must_be_integers(tmp_path):
    anns = [{"id": "a", "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}]
    ann, img_dir = write_set(tmp_path, good_files(1), annotations=anns)
    assert COCODataset(ann, img_dir, True)[0][1]["labels"].tolist() == [1]
    data = json.loads(open(ann).read())
    data["images"][0]["id"] = data["annotations"][0]["image_id"] = "one"
    with open(ann, "w") as f:
        json.dump(data, f)
    assert coco_json.load_coco_json(ann)["images"][0]["id"] == "one"
    with pytest.raises(ValueError, match=r"ann\.json: image id 'one' is not an integer"):
        COCODataset(ann, img_dir, True)
