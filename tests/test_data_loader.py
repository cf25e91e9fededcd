"""build_data_loader from a yacs cfg: batch structure, grouping, world-size split, resume."""

import json

import pytest
import torch
from helpers.data_config import input_node, loader_config
from PIL import Image

from drdet.data import build_data_loader, num_dropped_boxes

# (width, height): landscape, portrait and square images
SIZES = [(120, 80), (80, 120), (100, 100), (90, 60), (60, 90), (130, 70), (70, 130)]


@pytest.fixture
def coco_name(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate(SIZES, start=1):
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(img_dir / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append(
            {
                "id": 2 * i,
                "image_id": i,
                "category_id": 1 + i % 2,
                "iscrowd": 0,
                "bbox": [5, 6, 20, 30],
                "area": 600,
            }
        )
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": i,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [w - 10, h - 10, 30, 30],
                "area": 900,
            }
        )  # clipped to 10 x 10
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    (tmp_path / "ann.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return f"coco:{tmp_path / 'ann.json'}:{img_dir}"


def make_cfg(name, grouping=True, ims_train=2, ims_test=3, max_iter=6):
    inputs = input_node((64, 72), 100, 64, 100, flip=0.5)
    return loader_config(
        name, inputs, ims_train, ims_test, max_iter, ASPECT_RATIO_GROUPING=grouping
    )


def test_train_batches_have_the_documented_structure(coco_name):
    loader = build_data_loader(make_cfg(coco_name), is_train=True)
    assert len(loader) == 6 and num_dropped_boxes(loader.dataset) == 0
    batches = list(loader)
    assert len(batches) == 6
    for images, targets, indices in batches:
        assert len(images) == len(targets) == len(indices) == 2
        orientation = set()
        for image, target, index in zip(images, targets, indices):
            assert image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3
            h, w = image.shape[1:]
            assert min(h, w) in (64, 72) or max(h, w) == 100
            assert max(h, w) <= 100 and target["size"] == (h, w)
            info = loader.dataset.get_img_info(index)
            assert target["image_id"] == info["id"]
            assert target["orig_size"] == (info["height"], info["width"])
            boxes = target["boxes"]
            assert boxes.dtype == torch.float32 and boxes.shape == (2, 4)
            assert (boxes[:, 2:] > boxes[:, :2]).all()
            assert (
                (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all() and (boxes >= 0).all()
            )
            # the clipped 10 x 10 corner box, scaled to the resized image
            widths = sorted((boxes[:, 2] - boxes[:, 0]).tolist())
            torch.testing.assert_close(widths[0], 10 * w / info["width"], rtol=1e-5, atol=1e-4)
            assert target["labels"].dtype == torch.int64
            assert set(target["labels"].tolist()) <= {1, 2}
            assert image.max() > 1.0  # BGR 0-255
            orientation.add(info["width"] >= info["height"])
        assert len(orientation) == 1  # aspect-ratio grouping


def test_test_loader_covers_every_image_once_over_two_ranks(coco_name):
    cfg = make_cfg(coco_name, ims_test=2)
    seen = []
    for rank in (0, 1):
        loader = build_data_loader(cfg, is_train=False, rank=rank, world_size=2)
        for images, _targets, indices in loader:
            assert len(images) <= 1  # TEST.IMS_PER_BATCH 2 over 2 ranks
            seen += indices
            for image in images:
                assert min(image.shape[1:]) == 64 or max(image.shape[1:]) == 100
    assert sorted(seen) == list(range(len(SIZES)))


def test_batch_must_divide_over_ranks(coco_name):
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(3\).*2"):
        build_data_loader(make_cfg(coco_name, ims_train=3), is_train=True, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"TEST.IMS_PER_BATCH"):
        build_data_loader(make_cfg(coco_name, ims_test=3), is_train=False, rank=1, world_size=2)


@pytest.mark.parametrize("grouping", [True, False])
def test_resumed_loader_continues_the_same_sequence(coco_name, grouping):
    cfg = make_cfg(coco_name, grouping=grouping, max_iter=9)
    full = [idx for _, _, idx in build_data_loader(cfg, True, rank=1, world_size=2)]
    resumed = [
        idx for _, _, idx in build_data_loader(cfg, True, start_iter=4, rank=1, world_size=2)
    ]
    assert len(full) == 9 and resumed == full[4:]
    other = [idx for _, _, idx in build_data_loader(cfg, True, rank=0, world_size=2)]
    assert other != full


def test_worker_processes_yield_the_same_structure(coco_name):
    cfg = make_cfg(coco_name, max_iter=3)
    cfg.DATALOADER.NUM_WORKERS = 2
    batches = list(build_data_loader(cfg, is_train=True))
    assert len(batches) == 3 and all(len(b[0]) == 2 for b in batches)


def test_unknown_dataset_in_cfg(coco_name):
    cfg = make_cfg(coco_name)
    cfg.DATASETS.TRAIN = ("coco_2017_train_typo",)
    with pytest.raises(KeyError, match="known datasets"):
        build_data_loader(cfg, is_train=True)
