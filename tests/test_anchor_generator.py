import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from drdet.modeling.anchor_generator import AnchorGenerator, cell_anchors


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
