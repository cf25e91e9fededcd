"""The dense heads (RetinaNet's and FCOS's) with their levels packed on one canvas
(drdet/layers/level_packing.py) against the same layers run on each level alone (float64,
forward and backward)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drdet.layers.level_packing import PackedLevels, packed_group_norm, plan_layout
from drdet.modeling.fcos.head import FCOSHead
from drdet.modeling.retinanet.head import RetinaNetHead

# Odd sizes, as an FPN gives them for a 100 x 164 image (ceil halving), and a degenerate 1-pixel
# level.
SIZES = [(13, 21), (7, 11), (4, 6), (2, 3), (1, 2)]


STRIDES = [8, 16, 32, 64, 128]


def _head(use_gn: bool, channels: int = 16, num_convs: int = 2, kind: str = "retinanet"):
    torch.manual_seed(0)
    args = dict(num_classes=3, num_convs=num_convs, use_gn=use_gn, gn_groups=4)
    if kind == "fcos":
        head = FCOSHead(channels, strides=STRIDES, **args).double()
    else:
        head = RetinaNetHead(channels, num_anchors=2, **args).double()
    head.pack_levels = True  # also in CPU training, where "auto" runs the levels one by one
    with torch.no_grad():  # weights far from the init, so that every term matters
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return head


def _features(batch: int = 2, channels: int = 16, sizes=SIZES):
    torch.manual_seed(1)
    return [
        torch.randn(batch, channels, h, w, dtype=torch.float64, requires_grad=True)
        for h, w in sizes
    ]


def _reference(head, features):
    """Each level through torch's own modules alone, flattened as the head documents it:
    (B, A * K, H, W) -> (B, H * W * A, K); FCOS's distances relu(scale * x) * stride."""

    def flat(x, k):
        b, _, h, w = x.shape
        return x.reshape(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)

    cls = [flat(head.cls_logits(head.cls_tower(f)), head.num_classes) for f in features]
    box = [flat(head.bbox_pred(head.bbox_tower(f)), 4) for f in features]
    if not isinstance(head, FCOSHead):
        return cls, box
    box = [F.relu(head.scales[i] * b) * s for i, (b, s) in enumerate(zip(box, STRIDES))]
    ctr = [flat(head.centerness(head.bbox_tower(f)), 1)[..., 0] for f in features]
    return cls, box, ctr


def _maps(outputs):
    """The head's per-level tensors, as a tuple of lists (None fields left out)."""
    return tuple(field for field in outputs if field is not None)


def _grads(head, features, outputs):
    torch.manual_seed(2)
    flat = torch.cat([o.reshape(-1) for o in itertools.chain(*outputs)])
    loss = (flat * torch.randn_like(flat)).sum()
    params = list(head.parameters())
    return torch.autograd.grad(loss, [*features, *params])


def test_layout_keeps_levels_apart():
    layout = plan_layout(tuple(SIZES))
    height, width = layout.canvas
    owner = torch.full((height + 2, width + 2), -1)  # a one-pixel frame around the canvas
    for level, ((h, w), (r, c)) in enumerate(zip(layout.sizes, layout.offsets)):
        assert r >= 0 and c >= 0 and r + h <= height and c + w <= width
        region = owner[r + 1 : r + h + 1, c + 1 : c + w + 1]
        assert (region == -1).all(), "levels overlap"
        region.fill_(level)
    # No pixel of a level has a pixel of another level among its 8 neighbours.
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        shifted = torch.roll(owner, (dy, dx), (0, 1))
        clash = (owner >= 0) & (shifted >= 0) & (owner != shifted)
        assert not clash.any()
    # The FPN of an 800 x 1344 image: P3 beside a column of P4-P7.
    big = plan_layout(((100, 168), (50, 84), (25, 42), (13, 21), (7, 11)))
    assert big.canvas == (100, 168 + 1 + 84)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("use_gn", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_packed_head_equals_per_level(use_gn, batch, device, kind):
    head = _head(use_gn, kind=kind).to(device)
    head.pack_levels = "auto" if device == "cuda" else True  # "auto" packs on CUDA
    features = [f.detach().to(device).requires_grad_() for f in _features(batch)]
    assert head.packs(features)
    got = _maps(head(features))
    want = _reference(head, features)
    for g, w in zip(itertools.chain(*got), itertools.chain(*want)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    for g, w in zip(_grads(head, features, got), _grads(head, features, want)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_packed_head_channels_last_and_eval(kind):
    head = _head(True, kind=kind).eval()
    features = [f.detach().contiguous(memory_format=torch.channels_last) for f in _features()]
    with torch.no_grad():
        got = _maps(head(features))
        want = _reference(head, features)
    for g, w in zip(itertools.chain(*got), itertools.chain(*want)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_one_convolution_call_per_layer(monkeypatch):
    head = _head(True, num_convs=3)
    calls = []
    conv2d = F.conv2d

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return conv2d(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    head(_features())
    assert len(calls) == 2 * (3 + 1)  # two towers of 3 and two predictors, all levels at once
    head.pack_levels = False
    calls.clear()
    head(_features())
    assert len(calls) == 2 * (3 + 1) * len(SIZES)


def test_packed_group_norm_per_level_and_image():
    torch.manual_seed(3)
    maps = [torch.randn(2, 8, h, w, dtype=torch.float64) * 3 + 1 for h, w in SIZES]
    norm = nn.GroupNorm(4, 8).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
        norm.bias.copy_(torch.randn(8))
    packed, canvas = PackedLevels.pack(maps)
    out = packed_group_norm(canvas, packed, norm)
    for got, m in zip(packed.unpack(out), maps):
        torch.testing.assert_close(
            got, F.group_norm(m, 4, norm.weight, norm.bias, norm.eps), rtol=1e-10, atol=1e-10
        )
    assert float(packed.mask(out).detach().sub(out).abs().max()) == 0.0  # the gaps stay zero


def test_packed_group_norm_under_autocast_matches_the_level_alone():
    maps = [torch.randn(1, 8, h, w).bfloat16() for h, w in SIZES[:3]]
    norm = nn.GroupNorm(4, 8)
    packed, canvas = PackedLevels.pack(maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = packed_group_norm(canvas, packed, norm)
        want = [norm(m) for m in maps]
    for got, w in zip(packed.unpack(out), want):
        assert got.dtype == w.dtype
        torch.testing.assert_close(got, w, rtol=0, atol=0)


def test_state_dict_unchanged():
    head = _head(True, num_convs=1)
    assert sorted(head.state_dict()) == sorted(
        [
            "cls_tower.0.weight",
            "cls_tower.0.bias",
            "cls_tower.1.weight",
            "cls_tower.1.bias",
            "bbox_tower.0.weight",
            "bbox_tower.0.bias",
            "bbox_tower.1.weight",
            "bbox_tower.1.bias",
            "cls_logits.weight",
            "cls_logits.bias",
            "bbox_pred.weight",
            "bbox_pred.bias",
        ]
    )


def test_auto_packing_rule():
    head = RetinaNetHead(128, num_classes=3, num_anchors=9, num_convs=1)
    assert head.pack_levels == "auto"
    features = [torch.zeros(2, 128, 40, 40), torch.zeros(2, 128, 20, 20)]
    assert not head.packs(features)  # CPU training: Winograd convolves both maps in one call
    small = [torch.zeros(2, 128, 8, 8), torch.zeros(2, 128, 4, 4)]  # too few tiles for it
    assert not head.packs(small)  # CPU training without Winograd: one call per level
    with torch.no_grad():
        assert head.packs(small) and not head.packs(features)  # Winograd still in train mode
        assert head.eval().packs(features)  # CPU inference: packed
    assert not head.packs(features)  # eval mode with gradients on: as CPU training
    head.pack_levels = True
    assert head.packs(small) and not head.packs(small[:1])  # one level: nothing to pack
