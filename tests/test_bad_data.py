"""Bad images and bad annotation files, each built in tmp_path, through the real COCODataset and,
where the worker process matters, the real data loader with NUM_WORKERS 0 and 1: the documented
outcome (converted, clipped, skipped with a warning and a count, or an error raised in the main
process that names the file, image id or annotation id).

Related cases tested elsewhere: crowd and empty boxes excluded and counted, images with no or
only crowd boxes skipped in training and kept in evaluation (tests/test_data_coco.py); the
skip-with-limit policy end to end through tools/train_net.py (test_train_skips_bad_images_*
below)."""

import io
import json
import logging
import os

import numpy as np
import pytest
import torch
from helpers.bad_data import H, W, good_files, jpeg_bytes, loader_cfg, rgb_pixels, write_set
from helpers.tiny import tiny_overrides
from PIL import Image
from tool_loader import load_tool  # tests/tool_loader.py (tests/ is on sys.path under pytest)

from drdet.data import build_data_loader
from drdet.data.bad_images import TooManyBadImagesError
from drdet.data.datasets.coco import COCODataset
from drdet.data.image_io import ImageReadError, ImageSizeError, MissingImageError, read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

train_net = load_tool("train_net")

CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")


def assert_clear(err, *needles):
    """The error was raised in this process with a message naming `needles` up front: no
    DataLoader worker traceback wrapped into it."""
    message = str(err.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in message and "worker process" not in message, message


WORKERS = [0, 1]


# ----------------------------------------------------------------------------- unreadable images
@pytest.mark.parametrize("workers", WORKERS)
def test_missing_image_file(tmp_path, workers):
    files = good_files(3)
    files["2.png"] = None
    ann, img_dir = write_set(tmp_path, files)
    missing = os.path.join(img_dir, "2.png")
    with pytest.raises(MissingImageError, match=r"2\.png.*\(image id 2\): file does not exist"):
        COCODataset(ann, img_dir, remove_images_without_annotations=False)[1]
    assert issubclass(MissingImageError, FileNotFoundError)
    # Evaluation: the dataset's own error class, raised in the main process.
    with pytest.raises(MissingImageError) as err:
        list(build_data_loader(loader_cfg(ann, img_dir, workers), is_train=False))
    assert_clear(err, repr(missing), "(image id 2)", "does not exist", "evaluation")
    # Training with DATALOADER.MAX_BAD_IMAGES 0: stops naming the file and the image id.
    with pytest.raises(TooManyBadImagesError) as err:
        list(build_data_loader(loader_cfg(ann, img_dir, workers), is_train=True))
    assert_clear(err, "MAX_BAD_IMAGES = 0", repr(missing), "(image id 2)", "does not exist")


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "garbage_scan", "empty"])
def test_undecodable_image(tmp_path, workers, damage, caplog):
    """Truncated (half the bytes cut off), garbage bytes, a JPEG header followed by garbage, a 0
    byte file: an ImageReadError naming the file; in training with MAX_BAD_IMAGES 1 the image is
    replaced by the next one, with a warning naming it and a count of 1."""
    good = jpeg_bytes()
    sos = good.index(b"\xff\xda") + 20
    rng = np.random.RandomState(1)
    bad = {
        "truncated": good[: len(good) // 2],
        "garbage": rng.randint(0, 256, 3000).astype(np.uint8).tobytes(),
        "garbage_scan": good[:sos]
        + rng.randint(0, 256, len(good) - sos).astype(np.uint8).tobytes(),
        "empty": b"",
    }[damage]
    files = {f"{i}.jpg": jpeg_bytes(seed=i) for i in range(1, 5)}
    files["3.jpg"] = bad
    ann, img_dir = write_set(tmp_path, files)
    path = os.path.join(img_dir, "3.jpg")
    reason = {"truncated": "truncated", "empty": "empty (0 bytes)"}.get(damage, "cannot decode")
    with pytest.raises(ImageReadError, match=r"3\.jpg.*\(image id 3\)") as err:
        COCODataset(ann, img_dir, remove_images_without_annotations=True)[2]
    assert reason in str(err.value)

    with pytest.raises(ImageReadError) as err:
        list(build_data_loader(loader_cfg(ann, img_dir, workers), is_train=False))
    assert_clear(err, repr(path), "(image id 3)", reason)

    caplog.set_level(logging.WARNING, logger="drdet")
    loader = build_data_loader(loader_cfg(ann, img_dir, workers, max_bad=1), is_train=True)
    seen = [i for _, targets, indices in loader for i in indices]
    # 8 draws = 2 epochs of 4: index 2 (image 3) drawn twice, replaced by index 3 both times
    assert len(seen) == 8 and 2 not in seen and seen.count(3) == 4
    assert loader.bad_images.count == 1 and loader.bad_images.skips == 2
    warnings = [r.getMessage() for r in caplog.records if "Skipping unreadable" in r.getMessage()]
    assert len(warnings) == 1 and repr(path) in warnings[0] and "(image id 3)" in warnings[0]


# ----------------------------------------------------------------------------- conversions
def test_modes_become_8bit_rgb(tmp_path):
    """Grayscale, RGBA (alpha dropped), palette and 16-bit grayscale PNGs read as 8-bit RGB with
    the right values; 16-bit scaled by 255 / 65535 (PIL's convert("RGB") would clip to 255)."""
    rgb = rgb_pixels()
    gray = rgb[:, :, 0]
    rgba = np.dstack([rgb, np.full((H, W), 7, np.uint8)])
    palette_img = Image.fromarray(rgb).quantize(colors=16)
    palette_rgb = np.asarray(palette_img.convert("RGB"))
    wide = (np.arange(W * H, dtype=np.int64).reshape(H, W) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(wide).save(tmp_path / "probe.png")
    assert Image.open(tmp_path / "probe.png").mode == "I;16"
    files = {
        "gray.png": Image.fromarray(gray),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "palette.png": palette_img,
        "wide.png": Image.fromarray(wide),
    }
    ann, img_dir = write_set(tmp_path, files)
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=False)
    got = {name: np.asarray(ds[i][0]) for i, name in enumerate(files)}
    for name, pixels in got.items():
        assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8, name
    np.testing.assert_array_equal(got["gray.png"], np.dstack([gray] * 3))
    np.testing.assert_array_equal(got["rgba.png"], rgb)
    np.testing.assert_array_equal(got["palette.png"], palette_rgb)
    by_hand = np.floor(wide.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got["wide.png"], np.dstack([by_hand] * 3))
    assert got["wide.png"].max() == round(64491 * 255 / 65535) < 255  # not saturated
    assert len(np.unique(got["wide.png"])) > 200
    # the loader gives (3, H, W) float tensors for every mode
    loader = build_data_loader(loader_cfg(ann, img_dir, ims=4, max_iter=1), is_train=False)
    ((images, targets, _),) = list(loader)
    assert [tuple(img.shape) for img in images] == [(3, 48, 64)] * 4


def test_zero_size_image_in_json_is_an_error(tmp_path):
    ann, img_dir = write_set(tmp_path, good_files(3), sizes={2: (0, H)})
    with pytest.raises(ValueError, match=r"ann\.json: image id 2 \('2\.png'\) has width 0"):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)


# ----------------------------------------------------------------------------- EXIF orientation
def exif_jpeg(stored_w, stored_h, orientation):
    """Stored pixels: left half red, right half blue, a green 16 x 16 block in the top-left
    corner (so that a rotation, a flip and a transposition all differ)."""
    pixels = np.zeros((stored_h, stored_w, 3), np.uint8)
    pixels[:, : stored_w // 2] = (255, 0, 0)
    pixels[:, stored_w // 2 :] = (0, 0, 255)
    pixels[:16, :16] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", exif=exif, quality=100, subsampling=0)
    return buf.getvalue(), pixels


@pytest.mark.parametrize("frame", ["upright", "stored", "neither"])
def test_exif_orientation(tmp_path, frame):
    """Orientation 6 ("rotate 90 degrees clockwise to display"), stored 64 x 48 (w x h). The
    json's width/height decide the frame: 48 x 64 (upright, as viewers and most annotation tools
    show it) -> the image is rotated; 64 x 48 (the stored pixels) -> the image is returned as
    stored so that the boxes made on it stay right; anything else -> ImageSizeError."""
    data, stored = exif_jpeg(64, 48, 6)
    size = {"upright": (48, 64), "stored": (64, 48), "neither": (50, 50)}[frame]
    ann, img_dir = write_set(tmp_path, {"1.jpg": data}, sizes={1: size})
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=True)
    if frame == "neither":
        with pytest.raises(
            ImageSizeError,
            match=r"1\.jpg.*\(image id 1\).*annotation says 50 x 50"
            r".*image is 48 x 64 \(stored 64 x 48, EXIF orientation 6\)",
        ):
            ds[0]
        return
    image, target, _ = ds[0]
    pixels = np.asarray(image).astype(int)
    expected = np.rot90(stored, k=-1) if frame == "upright" else stored  # clockwise
    assert image.size == size and target["orig_size"] == (size[1], size[0])
    assert np.abs(pixels - expected).max() < 40  # JPEG: colours within a small error
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 4.0, 24.0, 20.0]]))


def test_image_of_another_size_than_the_json(tmp_path):
    ann, img_dir = write_set(tmp_path, good_files(2), sizes={2: (32, 24)})
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=True)
    with pytest.raises(
        ImageSizeError,
        match=r"2\.png.*\(image id 2\): the annotation says "
        r"32 x 24 \(w x h\) but the image is 64 x 48",
    ):
        ds[1]
    assert read_image(os.path.join(img_dir, "2.png")).size == (64, 48)  # no size: no check


# ----------------------------------------------------------------------------- annotation files
def test_malformed_json_names_file_and_line(tmp_path):
    ann, img_dir = write_set(tmp_path, good_files(1))
    with open(ann, "w") as f:
        f.write('{\n  "images": [],\n  "annotations": [}\n')
    with pytest.raises(ValueError, match=r"ann\.json: invalid JSON at line 3, column"):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)


def _edit_json(ann, edit):
    data = json.loads(open(ann).read())
    edit(data)
    with open(ann, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("images"), r"ann\.json: no 'images' list"),
        (lambda d: d.pop("categories"), r"ann\.json: no 'categories' list"),
        (lambda d: d["annotations"][1].pop("bbox"), r"ann\.json: annotation id 102 has no 'bbox'"),
        (
            lambda d: d["annotations"][1].pop("category_id"),
            r"ann\.json: annotation id 102 has no 'category_id'",
        ),
        (
            lambda d: d["annotations"][1].pop("image_id"),
            r"ann\.json: annotation id 102 has no 'image_id'",
        ),
        (
            lambda d: d["annotations"][1].pop("id"),
            r"ann\.json: annotation #1 \(counting from 0\) has no 'id'",
        ),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
            r"ann\.json: annotation id 102 has bbox \[1, 2, 3\]; expected",
        ),
        (
            lambda d: d["annotations"][1].update(category_id=9),
            r"ann\.json: annotation id 102 names category id 9, which is not in 'categories'",
        ),
        (
            lambda d: d["annotations"][1].update(image_id=77),
            r"ann\.json: annotation id 102 names image id 77, which is not in 'images'",
        ),
        (
            lambda d: d["annotations"][1].update(id=101),
            r"ann\.json: annotation id 101 appears twice",
        ),
        (
            lambda d: d["annotations"][1].update(image_id=[2]),
            r"ann\.json: annotation id 102 has image_id \[2\]; ids are integers",
        ),
        (lambda d: d["images"][1].pop("file_name"), r"ann\.json: image id 2 has no 'file_name'"),
    ],
    ids=[
        "no-images",
        "no-categories",
        "no-bbox",
        "no-category_id",
        "no-image_id",
        "no-id",
        "short-bbox",
        "unknown-category",
        "unknown-image",
        "duplicate-id",
        "list-id",
        "no-file_name",
    ],
)
def test_annotation_file_errors_name_file_and_id(tmp_path, edit, message):
    ann, img_dir = write_set(tmp_path, good_files(3))
    _edit_json(ann, edit)
    with pytest.raises(ValueError, match=message):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)


def test_unknown_category_of_a_crowd_box_is_an_error_too(tmp_path):
    crowd = {"id": 6, "image_id": 2, "category_id": 4, "bbox": [1, 1, 9, 9], "iscrowd": 1}
    plain = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}
    ann, img_dir = write_set(tmp_path, good_files(2), annotations=[plain, crowd])
    with pytest.raises(ValueError, match="annotation id 6 names category id 4"):
        COCODataset(ann, img_dir, remove_images_without_annotations=True)


def test_missing_area_and_iscrowd_are_filled(tmp_path):
    ann, img_dir = write_set(tmp_path, good_files(1))
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=True)
    assert ds.coco.anns[101]["area"] == 20 * 16 and ds.coco.anns[101]["iscrowd"] == 0


def test_degenerate_and_outside_boxes_are_clipped_or_dropped_and_counted(tmp_path, caplog):
    """Zero or negative width/height and boxes wholly outside the image are dropped, boxes that
    stick out are clipped; both counted and logged (no silent wrong label: what is left is
    inside the image with positive size)."""
    boxes = [
        [4, 4, 20, 16],  # kept as is
        [50, 40, 30, 30],  # clipped to (50, 40, 64, 48)
        [-10, -5, 20, 10],  # clipped to (0, 0, 10, 5)
        [10, 10, 0, 5],  # zero width: dropped
        [10, 10, -5, 5],  # negative width: dropped
        [70, 10, 5, 5],
    ]  # outside: dropped
    anns = [{"id": k, "image_id": 1, "category_id": 1, "bbox": b} for k, b in enumerate(boxes)]
    ann, img_dir = write_set(tmp_path, good_files(1), annotations=anns)
    caplog.set_level(logging.WARNING)
    ds = COCODataset(ann, img_dir, remove_images_without_annotations=True)
    _, target, _ = ds[0]
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[4.0, 4, 24, 20], [50, 40, 64, 48], [0, 0, 10, 5]])
    )
    assert target["labels"].tolist() == [1, 1, 1]
    assert ds.num_clipped_boxes == 2 and ds.num_dropped_boxes == 3
    assert (
        "2 boxes clipped to their image (annotation ids 1, 2); 3 dropped" in caplog.text
        and "(annotation ids 3, 4, 5)" in caplog.text
    ), caplog.text


@pytest.mark.parametrize("workers", WORKERS)
def test_images_without_usable_boxes_through_the_loader(tmp_path, workers):
    """Existing behaviour (tests/test_data_coco.py), through the loader: images with no
    annotation or only crowd ones never reach training, evaluation reads every image."""
    ann, img_dir = write_set(
        tmp_path,
        good_files(4),
        annotations=[
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 1},
            {"id": 3, "image_id": 4, "category_id": 1, "bbox": [2, 2, 9, 9]},
        ],
    )
    train = build_data_loader(loader_cfg(ann, img_dir, workers), is_train=True)
    trained = {t["image_id"] for _, targets, _ in train for t in targets}
    assert trained == {1, 4}
    test = build_data_loader(loader_cfg(ann, img_dir, workers), is_train=False)
    evaluated = sorted(t["image_id"] for _, targets, _ in test for t in targets)
    assert evaluated == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- the skip policy
@pytest.mark.parametrize("workers", [0, 2])
def test_skip_policy_counts_distinct_files_over_workers_and_stops_past_the_limit(tmp_path, workers):
    """Two unreadable images among 6: with MAX_BAD_IMAGES 2 every batch comes, each bad index
    replaced by the next readable one (the same sequence every time: deterministic), and the
    two files are counted once each over all workers; with 1 the loader stops, listing both."""
    files = good_files(6)
    files["2.png"], files["5.png"] = b"not an image", None
    ann, img_dir = write_set(tmp_path, files)
    cfg = loader_cfg(ann, img_dir, workers, max_bad=2, max_iter=9)
    loader = build_data_loader(cfg, is_train=True)
    first = [i for _, _, indices in loader for i in indices]
    # 18 draws = 3 epochs of 6; the bad indices 1 and 4 are replaced by 2 and 5 each time
    assert len(first) == 18 and not {1, 4} & set(first)
    assert first.count(2) == first.count(5) == 6 and first.count(0) == 3
    assert loader.bad_images.count == 2 and loader.bad_images.skips == 6
    again = [i for _, _, indices in build_data_loader(cfg, is_train=True) for i in indices]
    assert again == first
    with pytest.raises(TooManyBadImagesError) as err:
        list(build_data_loader(loader_cfg(ann, img_dir, workers, max_bad=1, max_iter=9), True))
    assert_clear(
        err,
        "2 unreadable images, more than DATALOADER.MAX_BAD_IMAGES = 1",
        "2.png' (image id 2)",
        "5.png' (image id 5)",
    )


# ----------------------------------------------------------------------------- end to end
def shapes_set(root, corrupt):
    """8 images of 64 x 64 with one bright rectangle each (category "box"); image `corrupt` is
    garbage bytes."""
    files = {}
    anns = []
    rng = np.random.RandomState(0)
    for i in range(1, 9):
        pixels = np.full((64, 64, 3), 40, np.uint8)
        x, y = rng.randint(4, 30, 2)
        pixels[y : y + 24, x : x + 24] = 220
        files[f"{i}.png"] = Image.fromarray(pixels)
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [int(x), int(y), 24, 24]})
    files[f"{corrupt}.png"] = b"\x89PNG\r\n\x1a\n garbage"
    ann, img_dir = write_set(
        root, files, annotations=anns, sizes={i: (64, 64) for i in range(1, 9)}
    )
    return f"coco:{ann}:{img_dir}", os.path.join(img_dir, f"{corrupt}.png")


def _train(out, dataset, max_bad):
    argv = ["--config-file", CONFIG, "--skip-test"] + tiny_overrides(
        dataset,
        "",
        max_iter=5,
        size=64,
        test_size=False,
        test_ims_per_batch=None,
        overrides={
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 32,
            "MODEL.RETINANET.NUM_CONVS": 1,
            "MODEL.NUM_CLASSES": 2,
            "DATALOADER.NUM_WORKERS": 1,
            "DATALOADER.MAX_BAD_IMAGES": max_bad,
            "SOLVER.STEPS": "(100,)",
            "SOLVER.LOG_PERIOD": 1,
            "SOLVER.CHECKPOINT_PERIOD": 1000,
            "OUTPUT_DIR": out,
        },
    )
    return train_net.main(argv)


@pytest.mark.slow
def test_train_skips_bad_images_up_to_the_limit(tmp_path):
    """tools/train_net.py on 8 images, one corrupt, one DataLoader worker. MAX_BAD_IMAGES 0: the
    run stops naming the file and image id. 2: it trains to the end, warns naming the file and
    logs and records the count."""
    dataset, corrupt = shapes_set(tmp_path / "data", corrupt=3)
    with pytest.raises(TooManyBadImagesError) as err:
        _train(tmp_path / "strict", dataset, 0)
    assert_clear(err, "MAX_BAD_IMAGES = 0", repr(corrupt), "(image id 3)", "cannot decode")
    assert not (tmp_path / "strict" / "model_final.pth").exists()
    assert (
        "Training stopped by TooManyBadImagesError" in (tmp_path / "strict" / "log.txt").read_text()
    )

    _train(tmp_path / "lenient", dataset, 2)
    out = tmp_path / "lenient"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 5
    log = (out / "log.txt").read_text()
    assert f"Skipping unreadable image {corrupt!r} (image id 3)" in log
    assert "bad images: 1" in log
    assert "1 unreadable images were skipped" in log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["bad_images"] == 1  # the first epoch (8 images, 5 x 2) met it
