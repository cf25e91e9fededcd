import math

import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from drdet.modeling.box_coder import BoxCoder


def _random_boxes(n, generator=None):
    xy = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_golden_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    box = torch.tensor([[5.0, 5.0, 25.0, 45.0]])  # centre (15, 25), size 20 x 40
    expected = torch.tensor([[10 * 10 / 10, 10 * 15 / 20, 5 * math.log(2), 5 * math.log(2)]])
    torch.testing.assert_close(coder.encode(box, anchor), expected)
    torch.testing.assert_close(coder.decode(expected, anchor), box)


def test_round_trip_batched_shapes():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes, anchors = _random_boxes(60).view(3, 20, 4), _random_boxes(20)
    deltas = coder.encode(boxes, anchors)
    assert deltas.shape == (3, 20, 4)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=1e-5)


def test_decode_clamps_scale():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 1e4]]), anchor)
    assert torch.isfinite(boxes).all()
    # exp(log(1000/16)) * 16 = 1000 pixels wide and high, centred on (8, 8).
    torch.testing.assert_close(boxes, torch.tensor([[8.0 - 500, 8.0 - 500, 8.0 + 500, 8.0 + 500]]))


def test_decode_half_precision_is_computed_in_float32():
    coder = BoxCoder()
    anchors = _random_boxes(10)
    deltas = torch.randn(10, 4)
    out = coder.decode(deltas.half(), anchors)
    assert out.dtype == torch.float16
    torch.testing.assert_close(
        out.float(), coder.decode(deltas.half().float(), anchors), atol=0.1, rtol=1e-3
    )


def test_matches_torchvision():
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    boxes, anchors = _random_boxes(50), _random_boxes(50)
    torch.testing.assert_close(ours.encode(boxes, anchors), theirs.encode_single(boxes, anchors))
    deltas = torch.randn(50, 4) * 3
    torch.testing.assert_close(ours.decode(deltas, anchors), theirs.decode_single(deltas, anchors))
