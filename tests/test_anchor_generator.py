import pytest
import torch
from helpers.anchors import detectron_cell_anchors_inclusive
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from drdet.config import get_cfg
from drdet.modeling.anchor_generator import (
    AnchorGenerator,
    cell_anchors,
    maskrcnn_benchmark_cell_anchors,
)
from drdet.modeling.retinanet import build_retinanet_anchors


def _features(*sizes):
    return [torch.zeros(1, 1, h, w) for h, w in sizes]


def test_cell_anchors_hand_computed():
    # ratio = h / w: ratio 0.25 of size 16 is 32 wide, 8 high.
    expected = torch.tensor(
        [
            [-16, -4, 16, 4],
            [-32, -8, 32, 8],  # ratio 0.25, sizes 16 and 32
            [-8, -8, 8, 8],
            [-16, -16, 16, 16],  # ratio 1
            [-4, -16, 4, 16],
            [-8, -32, 8, 32],  # ratio 4
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cell_anchors([16, 32], [0.25, 1.0, 4.0]), expected)


def test_grid_anchors_hand_computed():
    gen = AnchorGenerator([[16, 32]], [0.25, 1.0, 4.0], strides=[8])
    (anchors,) = gen(_features((2, 3)))
    assert anchors.shape == (2 * 3 * 6, 4) and anchors.dtype == torch.float32
    # cell (row 1, col 2) is centred on (x, y) = (16, 8); its last anchor is ratio 4, size 32.
    torch.testing.assert_close(anchors[(1 * 3 + 2) * 6 + 5], torch.tensor([8.0, -24.0, 24.0, 40.0]))
    # the first cell is centred on (0, 0).
    torch.testing.assert_close(anchors[2], torch.tensor([-8.0, -8.0, 8.0, 8.0]))
    # the areas are size**2 whatever the ratio.
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    torch.testing.assert_close(areas[:6], torch.tensor([256.0, 1024.0] * 3))


def test_matches_torchvision_exactly_on_integer_anchors():
    sizes, ratios = ((16, 32), (64, 128)), (0.25, 1.0, 4.0)
    ours = AnchorGenerator(sizes, ratios, strides=[8, 16])
    theirs = TVAnchorGenerator(sizes, (ratios,) * 2)
    feats = _features((4, 6), (2, 3))
    image = TVImageList(torch.zeros(1, 3, 32, 48), [(32, 48)])
    torch.testing.assert_close(torch.cat(ours(feats)), theirs(image, feats)[0])


def test_matches_torchvision_with_retinanet_defaults():
    # torchvision rounds its cell anchors to integers; ours are exact, so they agree within 0.5 px.
    scales = [2 ** (k / 3) for k in range(3)]
    sizes = [[s * k for k in scales] for s in (32, 64, 128, 256, 512)]
    ratios = (0.5, 1.0, 2.0)
    ours = AnchorGenerator(sizes, ratios, strides=[8, 16, 32, 64, 128])
    theirs = TVAnchorGenerator(tuple(tuple(s) for s in sizes), (ratios,) * 5)
    feats = _features((32, 48), (16, 24), (8, 12), (4, 6), (2, 3))
    image = TVImageList(torch.zeros(1, 3, 256, 384), [(256, 384)])
    a, b = torch.cat(ours(feats)), theirs(image, feats)[0]
    assert a.shape == b.shape == (9 * (32 * 48 + 16 * 24 + 8 * 12 + 4 * 6 + 2 * 3), 4)
    assert (a - b).abs().max() <= 0.5
    assert ours.num_anchors_per_location == 9


def test_cached_per_size_and_new_for_other_sizes():
    gen = AnchorGenerator([[32]], [1.0], strides=[8])
    first = gen(_features((3, 4)))[0]
    assert gen(_features((3, 4)))[0] is first
    other = gen(_features((4, 4)))[0]
    assert other.shape == (16, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator([[32], [64]], [1.0], strides=[8])
    with pytest.raises(ValueError, match="> 0"):
        AnchorGenerator([[0.0]], [1.0], strides=[8])
    with pytest.raises(ValueError, match="feature maps"):
        AnchorGenerator([[32]], [1.0], strides=[8])(_features((2, 2), (1, 1)))
    with pytest.raises(ValueError, match="convention"):
        AnchorGenerator([[32]], [1.0], strides=[8], convention="detectron")
    with pytest.raises(ValueError, match="image_size"):
        AnchorGenerator([[32]], [1.0], strides=[8], convention="torchvision")(_features((2, 2)))


STRIDES = (8, 16, 32, 64, 128)


def _retinanet_cfg(convention):
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.CONVENTION = convention
    return cfg


def build_anchor_generator(cfg):
    """RetinaNet's anchors from the config, at the strides of P3-P7."""
    return build_retinanet_anchors(cfg, STRIDES)


# The feature sizes of a padded 800 x 1216 batch (an 800 x 1199 COCO image): ceil(800 / s) rows.
PADDED_800 = (800, 1216)
FEATURES_800 = ((100, 152), (50, 76), (25, 38), (13, 19), (7, 10))


def test_torchvision_convention_equals_torchvision_retinanet_anchors():
    """Every anchor of torchvision's retinanet_resnet50_fpn, bit for bit, including its strides
    image // feature (114 and 121 on P7 here, not 128) and its integer sizes and corners."""
    ours = build_anchor_generator(_retinanet_cfg("torchvision"))
    feats = _features(*FEATURES_800)
    theirs = _default_anchorgen()(TVImageList(torch.zeros(1, 3, *PADDED_800), [PADDED_800]), feats)
    a = torch.cat(ours(feats, PADDED_800))
    assert a.shape == theirs[0].shape and a.dtype == theirs[0].dtype
    assert torch.equal(a, theirs[0])
    # the exact convention differs, by up to one stride step on the coarse levels
    exact = torch.cat(build_anchor_generator(_retinanet_cfg("exact"))(feats, PADDED_800))
    assert (exact - theirs[0]).abs().max() > 10


def test_maskrcnn_benchmark_cell_anchors_hand_values():
    # Faster R-CNN's anchors for stride 16, sizes 128, 256, 512 (ratio 0.5, first row): in
    # inclusive corners [-84, -40, 99, 55]; drdet writes x2, y2 one more (exclusive corners).
    ours = maskrcnn_benchmark_cell_anchors([128, 256, 512], [0.5, 1.0, 2.0], stride=16)
    torch.testing.assert_close(
        ours[0], torch.tensor([-84.0, -40.0, 100.0, 56.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        ours[3], torch.tensor([-56.0, -56.0, 72.0, 72.0], dtype=torch.float64)
    )
    # P3's 32-px square anchor of cell (0, 0): inclusive [-12, -12, 19, 19].
    p3 = maskrcnn_benchmark_cell_anchors([32.0], [1.0], stride=8)
    torch.testing.assert_close(p3[0], torch.tensor([-12.0, -12.0, 20.0, 20.0], dtype=torch.float64))
    # Rounding at the stride: ratio 0.5 at stride 32 is 45 x 22 (22.5 rounds to even).
    wide = maskrcnn_benchmark_cell_anchors([32.0], [0.5], stride=32)[0]
    assert (wide[2] - wide[0], wide[3] - wide[1]) == (45.0, 22.0)


def test_maskrcnn_benchmark_convention_every_level():
    cfg = _retinanet_cfg("maskrcnn_benchmark")
    ours = build_anchor_generator(cfg)
    feats = _features(*FEATURES_800)
    levels = ours(feats, PADDED_800)
    scales = [2 ** (k / 3) for k in range(3)]
    for level, (stride, size, (h, w)) in enumerate(
        zip(STRIDES, cfg.MODEL.RETINANET.ANCHOR_SIZES, FEATURES_800)
    ):
        cell = detectron_cell_anchors_inclusive(stride, [size * s for s in scales], (0.5, 1.0, 2.0))
        ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).double()
        expected = (shifts + cell[None]).reshape(-1, 4) + torch.tensor(
            [0.0, 0.0, 1.0, 1.0], dtype=torch.float64
        )
        torch.testing.assert_close(levels[level], expected.float(), rtol=0, atol=1e-4)
        # centred on (s*j + s/2, s*i + s/2) in drdet's corners
        centres = (levels[level][:, :2] + levels[level][:, 2:]) / 2
        torch.testing.assert_close(centres[:9], torch.full((9, 2), stride / 2.0))
