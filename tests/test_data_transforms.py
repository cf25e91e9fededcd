"""Transforms and image reading: resize rule, flip, tensor format, EXIF, channel conversion."""

import numpy as np
import pytest
import torch
from helpers.data_config import input_node
from PIL import Image
from yacs.config import CfgNode as CN

from drdet.data.image_io import read_image
from drdet.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    build_transforms,
    hflip_boxes,
    resized_hw,
)


@pytest.mark.parametrize(
    "hw, min_size, max_size, expected",
    [
        # 480x640, short side -> 800, long = int(800 * 640 / 480) = int(1066.67)
        ((480, 640), 800, 1333, (800, 1066)),
        # 500x1500: 800 would make the long side 2400 > 1333 -> short = round(1333 * 500 / 1500) = 444
        ((500, 1500), 800, 1333, (444, 1332)),
        # portrait 640x427: long = int(600 * 640 / 427) = int(899.297)
        ((640, 427), 600, 1000, (899, 600)),
        # short side already 800: unchanged
        ((800, 1000), 800, 1333, (800, 1000)),
        # no cap
        ((100, 400), 200, None, (200, 800)),
        # square, capped: round(300 * 1) = 300
        ((512, 512), 800, 300, (300, 300)),
    ],
)
def test_resize_rule_golden_values(hw, min_size, max_size, expected):
    assert resized_hw(*hw, min_size, max_size) == expected


def test_resize_scales_boxes_and_sets_size():
    image = Image.new("RGB", (640, 480))
    target = {"boxes": torch.tensor([[64.0, 48.0, 640.0, 480.0]]), "size": (480, 640)}
    out, t = Resize((800,), 1333)(image, target)
    assert out.size == (1066, 800) and t["size"] == (800, 1066)
    torch.testing.assert_close(t["boxes"], torch.tensor([[64 * 1066 / 640, 80.0, 1066.0, 800.0]]))
    assert target["boxes"][0, 2] == 640.0  # input target untouched


def test_resize_picks_among_min_sizes():
    g = torch.Generator().manual_seed(0)
    resize = Resize((100, 120, 140), 1000, generator=g)
    sizes = {
        resize(Image.new("RGB", (50, 40)), {"boxes": torch.zeros(0, 4)})[1]["size"][0]
        for _ in range(40)
    }
    assert sizes == {100, 120, 140}


def test_flip_boxes_hand_computed():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    torch.testing.assert_close(
        hflip_boxes(boxes, 100), torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    )


def test_random_flip_moves_pixels_and_boxes_together():
    pixels = np.zeros((20, 100, 3), np.uint8)
    pixels[5:15, 10:30] = 255  # a white block at x 10..30
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 15.0]])}
    out, t = RandomHorizontalFlip(1.0)(Image.fromarray(pixels), target)
    x1, y1, x2, y2 = t["boxes"][0].int().tolist()
    assert (x1, x2) == (70, 90)
    flipped = np.asarray(out)
    assert (flipped[y1:y2, x1:x2] == 255).all() and flipped.sum() == pixels.sum()
    same, t0 = RandomHorizontalFlip(0.0)(Image.fromarray(pixels), target)
    assert torch.equal(t0["boxes"], target["boxes"])


def test_to_tensor_formats():
    pixels = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)  # 1 x 2 RGB
    bgr, _ = ToTensor(to_bgr255=True)(Image.fromarray(pixels), {})
    assert bgr.shape == (3, 1, 2) and bgr.dtype == torch.float32
    assert bgr[:, 0, 1].tolist() == [60.0, 50.0, 40.0]
    rgb, _ = ToTensor(to_bgr255=False)(Image.fromarray(pixels), {})
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_build_transforms_from_cfg():
    cfg = CN()
    cfg.INPUT = input_node((64,), 100, 32, 50, to_bgr255=False, flip=1.0)
    train, test = build_transforms(cfg, True), build_transforms(cfg, False)
    assert isinstance(train, Compose)
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    target = {"boxes": torch.tensor([[0.0, 0.0, 20.0, 10.0]]), "size": (40, 80)}
    x, t = train(image, target)
    assert x.shape == (3, 50, 100) and t["size"] == (50, 100)  # capped by MAX_SIZE_TRAIN
    torch.testing.assert_close(t["boxes"], torch.tensor([[75.0, 0.0, 100.0, 12.5]]))  # flipped
    assert x[0].max() == 1.0  # RGB 0-1
    x, t = test(image, target)
    assert x.shape == (3, 25, 50)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    image = read_image(str(path))
    assert image.size == (20, 40)  # displayed 20 wide, 40 high
    shown = np.asarray(image).astype(int)
    assert shown[5, 10, 0] > 200 and shown[5, 10, 2] < 60  # top: red (the stored left)
    assert shown[35, 10, 2] > 200 and shown[35, 10, 0] < 60  # bottom: blue


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    image = read_image(str(tmp_path / "gray.png"))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), np.repeat(gray[..., None], 3, axis=2))

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_image(str(tmp_path / "rgba.png"))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rgba[..., :3])
    tensor, _ = ToTensor(to_bgr255=True)(image, {})
    assert tensor.shape == (3, 3, 4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="min_sizes"):
        Resize((), 100)
    with pytest.raises(ValueError, match="prob"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="height=0"):
        resized_hw(0, 10, 5, None)


def test_border_boxes_stay_inside_after_resize_and_flip():
    # 90 -> 96 px is a factor 16/15 that float32 cannot hold exactly: x2 = 90 * 1.0666...
    image = Image.new("RGB", (90, 60))
    target = {"boxes": torch.tensor([[80.0, 0.0, 90.0, 60.0]]), "size": (60, 90)}
    out, t = Compose([Resize((64,), 100), RandomHorizontalFlip(1.0)])(image, target)
    assert out.size == (96, 64)
    boxes = t["boxes"]
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= 96).all() and (boxes[:, 1::2] <= 64).all()
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 96 - 80 * 96 / 90, 64.0]]))
