"""COCODataset and the catalog: label maps, crowd/empty boxes, image filtering, errors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from drdet.data import catalog
from drdet.data.datasets.coco import COCODataset, clip_xywh_to_xyxy, contiguous_to_category_ids

CATEGORIES = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]


def make_coco(root, annotations, images=None):
    """Tiny COCO-format set: sparse category ids 3, 7, 90; images of 100 x 80 (w x h)."""
    images = images or [
        {"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2, 3)
    ]
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (10, 20, 30)).save(
            img_dir / info["file_name"]
        )
    anns = [{"id": k + 1, "area": 1.0, "iscrowd": 0, **a} for k, a in enumerate(annotations)]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return str(path), str(img_dir)


ANNOTATIONS = [
    {"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 30]},
    {"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},
    {"image_id": 1, "category_id": 90, "bbox": [90, 70, 30, 30]},  # clipped to 90,70,100,80
    {"image_id": 1, "category_id": 3, "bbox": [120, 10, 10, 10]},  # outside: empty after clip
    {"image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},  # zero width
    {"image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 1},  # crowd only
]  # image 3: no annotation


@pytest.fixture
def coco_files(tmp_path):
    return make_coco(tmp_path, ANNOTATIONS)


def test_category_ids_map_to_contiguous_and_back(coco_files):
    ds = COCODataset(*coco_files, remove_images_without_annotations=False)
    assert ds.category_id_to_contiguous_id == {3: 1, 7: 2, 90: 3}
    assert ds.num_classes == 3 and ds.class_names == ["car", "train", "zebra"]
    for cat_id, label in ds.category_id_to_contiguous_id.items():
        assert ds.contiguous_id_to_category_id[label] == cat_id
    labels = torch.tensor([3, 1, 2, 2])
    assert contiguous_to_category_ids(labels, ds.contiguous_id_to_category_id) == [90, 3, 7, 7]
    with pytest.raises(ValueError, match="label 4"):
        contiguous_to_category_ids([4], ds.contiguous_id_to_category_id)


def test_crowd_and_empty_boxes_are_excluded_and_counted(coco_files):
    ds = COCODataset(*coco_files, remove_images_without_annotations=True)
    image, target, index = ds[0]
    assert index == 0 and target["image_id"] == 1
    # Only the two usable non-crowd boxes remain: xywh -> x1y1x2y2, the second clipped.
    expected = torch.tensor([[10, 10, 30, 40], [90, 70, 100, 80]], dtype=torch.float32)
    assert target["boxes"].dtype == torch.float32
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [2, 3] and target["labels"].dtype == torch.int64
    assert target["orig_size"] == (80, 100) == target["size"]
    assert ds.num_dropped_boxes == 2 and ds.num_crowd_boxes == 2
    assert image.size == (100, 80)


def test_images_without_boxes_skipped_in_training_kept_in_evaluation(coco_files):
    train = COCODataset(*coco_files, remove_images_without_annotations=True)
    test = COCODataset(*coco_files, remove_images_without_annotations=False)
    assert train.ids == [1]
    assert test.ids == [1, 2, 3]
    _, target, _ = test[1]  # image 2: crowd only
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert test.get_img_info(2)["id"] == 3


def test_clip_xywh_to_xyxy_hand_values():
    got = clip_xywh_to_xyxy(np.array([[-5, 2, 10, 4], [95, 75, 10, 10], [1.5, 2.5, 3, 4]]), 80, 100)
    np.testing.assert_allclose(got, [[0, 2, 5, 6], [95, 75, 100, 80], [1.5, 2.5, 4.5, 6.5]])


def test_missing_and_unreadable_images_are_named(coco_files):
    ann, img_dir = coco_files
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=False)
    os.remove(os.path.join(img_dir, "2.png"))
    with pytest.raises(FileNotFoundError, match=r"2\.png.*image id 2"):
        ds[1]
    with open(os.path.join(img_dir, "3.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(RuntimeError, match=r"3\.png.*image id 3"):
        ds[2]


def test_unknown_category_in_annotations_is_an_error(tmp_path):
    ann, img_dir = make_coco(tmp_path, [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 1 names category id 5"):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)


def test_catalog_coco_name_form(coco_files):
    ann, img_dir = coco_files
    ds = catalog.get_dataset(f"coco:{ann}:{img_dir}", transforms=None, is_train=False)
    assert isinstance(ds, COCODataset) and len(ds) == 3
    with pytest.raises(FileNotFoundError, match="missing.json"):
        catalog.get_dataset(f"coco:{os.path.dirname(ann)}/missing.json:{img_dir}", None, True)
    with pytest.raises(ValueError, match="malformed"):
        catalog.get_dataset(f"coco:{ann}", None, True)


def test_catalog_errors_list_names_and_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path))
    with pytest.raises(KeyError) as err:
        catalog.get_dataset("coco_2099_train", None, True)
    message = str(err.value)
    for name in (
        "coco_2017_train",
        "coco_2014_minival",
        "coco_2014_valminusminival",
        "coco_2017_test-dev",
        "voc_2007_test",
        "voc_2012_trainval",
        "synthetic_val",
    ):
        assert name in message
    with pytest.raises(FileNotFoundError) as err:
        catalog.get_dataset("coco_2017_val", None, False)
    assert "instances_val2017.json" in str(err.value) and str(tmp_path) in str(err.value)
    assert "DRDET_DATASETS" in str(err.value)


def test_catalog_registered_coco_name_resolves_under_root(tmp_path, monkeypatch):
    coco = tmp_path / "coco"
    ann, img_dir = make_coco(coco, ANNOTATIONS)
    (coco / "annotations").mkdir()
    os.rename(ann, coco / "annotations" / "instances_val2017.json")
    os.rename(img_dir, coco / "val2017")
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path))
    ds = catalog.get_dataset("coco_2017_val", None, is_train=False)
    assert len(ds) == 3 and ds.name == "coco_2017_val"


def test_image_info_json_without_annotations(tmp_path):
    # test-dev style: images and categories only
    ann, img_dir = make_coco(tmp_path, [])
    data = json.loads(open(ann).read())
    del data["annotations"]
    open(ann, "w").write(json.dumps(data))
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=False)
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds[0][1]["boxes"].shape == (0, 4)
