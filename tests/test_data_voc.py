"""VOCDataset: XML parsing, 1-based corners, difficult objects, COCO view for evaluation."""

import pytest
import torch
from PIL import Image

from drdet.data import catalog
from drdet.data.datasets.voc import VOC_CLASSES, VOCDataset, parse_voc_xml


def _xml(width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>"
    )


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    records = {
        "000005": (60, 40, [("dog", (1, 2, 30, 20), 0), ("person", (10, 5, 60, 40), 1)]),
        "000007": (50, 70, [("cat", (5, 5, 20, 20), 1)]),  # difficult only
    }
    for stem, (w, h, objs) in records.items():
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(w, h, objs))
        Image.new("RGB", (w, h), (0, 128, 255)).save(root / "JPEGImages" / f"{stem}.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    return root


def test_voc_classes_standard_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[11] == "dog"
    assert VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_parse_voc_xml_corners_and_difficult(voc_root):
    rec = parse_voc_xml(str(voc_root / "Annotations" / "000005.xml"))
    assert (rec["height"], rec["width"]) == (40, 60)
    # 1-based inclusive corners: (xmin - 1, ymin - 1, xmax, ymax).
    assert rec["boxes"].tolist() == [[0, 1, 30, 20], [9, 4, 60, 40]]
    assert rec["labels"].tolist() == [12, 15]  # dog, person
    assert rec["difficult"].tolist() == [False, True]


def test_training_drops_difficult_objects_and_empty_images(voc_root):
    ds = VOCDataset(str(voc_root), "trainval", is_train=True)
    assert len(ds) == 1
    image, target, index = ds[0]
    assert target["image_id"] == 5 and index == 0
    assert target["boxes"].tolist() == [[0, 1, 30, 20]] and target["labels"].tolist() == [12]
    assert "difficult" not in target
    assert image.size == (60, 40)


def test_evaluation_keeps_and_marks_difficult_objects(voc_root):
    ds = VOCDataset(str(voc_root), "trainval", is_train=False)
    assert len(ds) == 2
    _, target, _ = ds[0]
    assert target["difficult"].tolist() == [False, True]
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    _, target, _ = ds[1]
    assert target["image_id"] == 7 and target["difficult"].tolist() == [True]
    coco = ds.coco
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[5]))
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert anns[0]["bbox"] == [0.0, 1.0, 30.0, 19.0]
    assert coco.imgs[7]["height"] == 70 and len(coco.cats) == 20


def test_catalog_voc_forms(voc_root, tmp_path, monkeypatch):
    ds = catalog.get_dataset(f"voc:{voc_root}:trainval", None, is_train=False)
    assert len(ds) == 2
    monkeypatch.setenv("DRDET_DATASETS", str(tmp_path))
    (tmp_path / "voc").mkdir()
    voc_root.rename(tmp_path / "voc" / "VOC2007")
    assert len(catalog.get_dataset("voc_2007_trainval", None, is_train=True)) == 1
    with pytest.raises(FileNotFoundError, match="test.txt.*DRDET_DATASETS"):
        catalog.get_dataset("voc_2007_test", None, is_train=False)


def test_voc_folder_with_other_classes_says_how_to_load_them(voc_root):
    """A LabelImg-style export with its own class: the error names the XML file and the class,
    and the coco: form to use instead; the tools print it alone (a UserInputError)."""
    from drdet.utils.errors import UserInputError

    (voc_root / "Annotations" / "000005.xml").write_text(
        _xml(60, 40, [("widget", (1, 2, 9, 9), 0)])
    )
    with pytest.raises(UserInputError) as info:
        catalog.get_dataset(f"voc:{voc_root}:trainval", None, is_train=True)
    message = str(info.value)
    assert str(voc_root / "Annotations" / "000005.xml") in message and "'widget'" in message
    assert "coco:<json>:<image folder>" in message
