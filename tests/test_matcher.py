import torch
from torchvision.models.detection._utils import Matcher as TVMatcher

from drdet.modeling.matcher import Matcher
from drdet.structures.boxes import pairwise_iou

BELOW, BETWEEN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def test_thresholds_and_low_quality_with_ties():
    iou = torch.tensor(
        [
            [0.9, 0.45, 0.10, 0.30, 0.0],
            [0.2, 0.30, 0.35, 0.35, 0.0],
        ]
    )
    plain = Matcher(0.5, 0.4, allow_low_quality_matches=False)(iou)
    assert plain.tolist() == [0, BETWEEN, BELOW, BELOW, BELOW]
    # box 1's best IoU 0.35 is reached by anchors 2 and 3: both keep it.
    low_quality = Matcher(0.5, 0.4, allow_low_quality_matches=True)(iou)
    assert low_quality.tolist() == [0, BETWEEN, 1, 1, BELOW]


def test_low_quality_anchor_takes_its_own_best_box():
    iou = torch.tensor([[0.30, 0.10], [0.20, 0.05]])  # anchor 0 is the best of both boxes
    assert Matcher(0.5, 0.4)(iou).tolist() == [0, BELOW]


def test_box_without_overlap_gets_no_match():
    iou = torch.tensor([[0.0, 0.0, 0.0]])
    assert Matcher(0.5, 0.4)(iou).tolist() == [BELOW] * 3


def test_no_boxes_all_background():
    assert Matcher(0.5, 0.4)(torch.zeros(0, 7)).tolist() == [BELOW] * 7
    assert Matcher(0.5, 0.4)(torch.zeros(2, 0, 7)).tolist() == [[BELOW] * 7] * 2


def test_no_ignore_band_when_thresholds_equal():
    iou = torch.tensor([[0.7, 0.5, 0.49, 0.2]])
    assert Matcher(0.5, 0.5, allow_low_quality_matches=False)(iou).tolist() == [0, 0, BELOW, BELOW]


def _random_boxes(n, size=64.0):
    xy = torch.rand(n, 2) * size
    return torch.cat([xy, xy + torch.rand(n, 2) * size / 2 + 2], dim=1)


def test_padded_batch_equals_per_image_and_torchvision():
    anchors = _random_boxes(300)
    counts = [5, 0, 2]
    boxes = [_random_boxes(n) for n in counts]
    padded = torch.zeros(3, max(counts), 4)
    valid = torch.zeros(3, max(counts), dtype=torch.bool)
    for i, b in enumerate(boxes):
        padded[i, : len(b)] = b
        valid[i, : len(b)] = True
    for low_quality in (False, True):
        matcher = Matcher(0.5, 0.4, low_quality)
        batched = matcher(pairwise_iou(padded, anchors), valid)
        for i, b in enumerate(boxes):
            iou = pairwise_iou(b, anchors)
            assert torch.equal(batched[i], matcher(iou))
            if len(b) and (iou.max(dim=1).values > 0).all():  # where the semantics coincide
                assert torch.equal(batched[i], TVMatcher(0.5, 0.4, low_quality)(iou))
        assert (batched[1] == BELOW).all()


def test_pairwise_iou_against_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    expected = torch.tensor([[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(pairwise_iou(a, b), expected)
