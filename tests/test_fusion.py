"""Folding FrozenBatchNorm2d into the preceding convolution for inference, and the inference copy
the Predictor and the test loop run (prepare_for_inference)."""

import copy

import pytest
import torch
from helpers.detections import assert_same_detections
from helpers.weights import calibrate_frozen_bn
from torch import nn

from drdet.layers.batch_norm import FrozenBatchNorm2d, fold_frozen_batchnorm, fuse_frozen_batchnorm
from drdet.layers.packed_conv import PackedConv2d
from drdet.modeling import build_detector
from drdet.modeling.backbone import ResNet
from drdet.modeling.inference_copy import prepare_for_inference


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine values in every FrozenBatchNorm2d (the defaults,
    mean 0 / var 1 / weight 1 / bias 0, would hide a wrong fold)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return module


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "bias,groups,stride,dilation",
    [(False, 1, 1, 1), (True, 1, 2, 1), (False, 4, 1, 2), (False, 1, 2, 1)],
)
def test_fold_equals_conv_then_frozen_bn(bias, groups, stride, dilation):
    conv = nn.Conv2d(
        8, 16, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias
    )
    bn = _randomize(FrozenBatchNorm2d(16, eps=1e-3))
    before = {k: v.clone() for k, v in {**conv.state_dict(), **bn.state_dict()}.items()}
    fused = fold_frozen_batchnorm(conv, bn)
    x = torch.randn(2, 8, 17, 19)
    with torch.no_grad():
        ref = bn(conv(x))
        out = fused(x)
    assert out.shape == ref.shape and fused.bias is not None
    assert _rel_err(out, ref) < 1e-5
    # the originals are untouched
    for k, v in {**conv.state_dict(), **bn.state_dict()}.items():
        assert torch.equal(v, before[k]), k


def test_fold_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="output channels"):
        fold_frozen_batchnorm(nn.Conv2d(3, 8, 1), FrozenBatchNorm2d(4))
    with pytest.raises(TypeError):
        fold_frozen_batchnorm(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))


@pytest.mark.parametrize("depth,groups,width", [(18, 1, 64), (50, 1, 64), (50, 4, 4)])
def test_fuse_resnet_folds_every_frozen_bn(depth, groups, width):
    body = _randomize(
        ResNet(
            depth=depth, num_groups=groups, width_per_group=width, norm="FrozenBN", freeze_at=2
        ).eval()
    )
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = body(x)
        num_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
        assert fuse_frozen_batchnorm(body) == num_bn
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
        out = body(x)
    for o, r in zip(out, ref):
        assert _rel_err(o, r) < 1e-4


def test_fuse_leaves_unpaired_norms_alone():
    class NoPairs(nn.Module):  # names like a ResNet block, but no conv_norm_pairs declared
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 1)
            self.bn1 = FrozenBatchNorm2d(4)

        def forward(self, x):
            return self.bn1(x.repeat(1, 2, 1, 1)[:, :4]) + self.conv1(x)

    seq = nn.Sequential(FrozenBatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.ReLU(), FrozenBatchNorm2d(4))
    gn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4))
    for module in (NoPairs(), seq, gn):
        kinds = [type(m) for m in module.modules()]
        assert fuse_frozen_batchnorm(module) == 0
        assert [type(m) for m in module.modules()] == kinds


def _detector(overrides=()):
    from drdet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.NUM_CLASSES", 5, *overrides])
    torch.manual_seed(0)
    model = build_detector(cfg)
    # a head whose scores spread beyond the threshold, so that there are detections to compare
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.025)
    return calibrate_frozen_bn(model, _images())


def _images():
    gen = torch.Generator().manual_seed(2)
    return [
        torch.rand(3, 96, 128, generator=gen) * 255,
        torch.rand(3, 128, 96, generator=gen) * 255,
    ]


def _head_outputs(model: nn.Module, images, dtype=torch.float32) -> torch.Tensor:
    """Every class logit and box delta of every level, flattened, in float64."""
    model = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        out = model.head(model.backbone(model.preprocess(images).tensors.to(dtype)))
        cls, box = out.cls_logits, out.box_regression
    return torch.cat([t.flatten().double() for t in cls + box])


@pytest.mark.slow
@pytest.mark.parametrize("conv_body", ["R-18-FPN-RETINANET", "R-50-FPN-RETINANET"])
def test_prepare_for_inference_same_detections_same_state_dict(conv_body):
    model = _detector(["MODEL.BACKBONE.CONV_BODY", conv_body]).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images()

    fast = prepare_for_inference(model)
    # the model itself is unchanged: mode, modules, state dict (keys, values, layout)
    assert model.training and fast is not model and not fast.training
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())
    after = model.state_dict()
    assert list(after) == list(state)
    for k, v in after.items():
        assert torch.equal(v, state[k]) and v.stride() == state[k].stride(), k
    # a checkpoint of the model still loads strictly into a fresh one
    fresh = _detector(["MODEL.BACKBONE.CONV_BODY", conv_body])
    fresh.load_state_dict(model.state_dict(), strict=True)
    # channels_last and packed convolutions on the CPU, no gradients
    stem_conv = fast.backbone.body.stem.conv1
    assert isinstance(stem_conv, PackedConv2d)
    assert stem_conv.conv.weight.is_contiguous(memory_format=torch.channels_last)
    # every convolution is packed (each PackedConv2d holds the nn.Conv2d it replaces)
    assert sum(isinstance(m, nn.Conv2d) for m in fast.modules()) == sum(
        isinstance(m, PackedConv2d) for m in fast.modules()
    )
    assert not any(p.requires_grad for p in fast.parameters())

    # Head outputs: within 1e-4 of their largest magnitude, and as close to a float64 run of the
    # unfolded model as the float32 unfolded model is (folding costs no accuracy; a deep random
    # network amplifies float32 rounding, folded or not).
    model.eval()
    plain = prepare_for_inference(model, channels_last=False, prepack=False)
    exact = _head_outputs(model, images, torch.float64)
    ref = _head_outputs(model, images)
    ref_err = float((ref - exact).abs().max())
    for variant in (fast, plain):
        out = _head_outputs(variant, images)
        assert float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max())
        assert float((out - exact).abs().max()) < 2 * ref_err + 1e-6

    # Detections: the same ones (scores and boxes within that rounding).
    with torch.no_grad():
        dets = model(images), fast(images), plain(images)
    assert sum(len(r["scores"]) for r in dets[0]) > 10
    for r, o, p in zip(*dets):
        assert_same_detections(o, r, rtol=1e-3, box_atol=1e-2)
        assert_same_detections(p, r, rtol=1e-3, box_atol=1e-2)


def test_run_inference_uses_the_inference_copy(monkeypatch):
    import drdet.engine.inference as engine_inference

    model = _detector(["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET"]).train()
    calls = []

    def spy(m, *args, **kwargs):
        calls.append(m)
        return prepare_for_inference(m, *args, **kwargs)

    monkeypatch.setattr(engine_inference, "prepare_for_inference", spy)
    images = [torch.rand(3, 96, 128) * 255]
    targets = [{"image_id": 3, "orig_size": (192, 256)}]
    preds = engine_inference.run_inference(model, [(images, targets, [0])], torch.device("cpu"))
    assert calls == [model] and model.training  # one copy per call, the model untouched
    with torch.no_grad():
        ref = model.eval()(images, original_sizes=[(192, 256)])[0]
    assert len(ref["scores"]) > 0
    assert_same_detections(preds[3], ref)


@pytest.mark.parametrize(
    "stride,groups,dilation,bias",
    [(1, 1, 1, True), (2, 1, 1, False), (1, 4, 1, True), (1, 1, 2, False)],
)
def test_packed_conv_equals_conv_for_any_input_shape(stride, groups, dilation, bias):
    conv = nn.Conv2d(
        8, 16, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias
    ).requires_grad_(False)
    packed = PackedConv2d(conv)
    with torch.no_grad():
        # packed at the first shape, then reused for others, NCHW or channels_last inputs
        for shape in [(1, 8, 20, 30), (2, 8, 7, 5), (2, 8, 33, 16)]:
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(shape).contiguous(memory_format=fmt)
                torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert packed._packed is not None and not packed._failed
    # copies and pickles drop the opaque packed weight and pack again when used
    clone = copy.deepcopy(packed)
    assert clone._packed is None and clone.conv.weight is not conv.weight
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), conv(x), rtol=1e-5, atol=1e-5)
    # with gradients wanted, the plain convolution runs (the packed op has no backward)
    x = torch.randn(1, 8, 12, 12, requires_grad=True)
    packed(x).sum().backward()
    assert x.grad is not None


def test_packed_conv_falls_back_where_the_ops_fail(monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", unavailable)
    conv = nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)
    packed = PackedConv2d(conv)
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), conv(x))
        assert packed._failed and packed._packed is None
        torch.testing.assert_close(packed(x), conv(x))
