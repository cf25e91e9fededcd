"""ResNet/ResNeXt-FPN backbone: shapes, strides, parameter counts and features against
torchvision, FrozenBN against BN, freezing, norms."""

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from drdet.config import get_cfg
from drdet.layers.batch_norm import FrozenBatchNorm2d
from drdet.modeling.backbone import (
    FPN,
    LastLevelP6P7,
    ResNet,
    build_backbone,
    convert_torchvision_resnet_state_dict,
)

H, W = 64, 96


def _cfg(body="R-50-FPN-RETINANET", **overrides):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = body
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _randomize_norm_stats(model: nn.Module) -> None:
    """Non-trivial running statistics and affine values so that norm mistakes show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize(
    "body,groups,width",
    [
        ("R-18-FPN-RETINANET", 1, 64),
        ("R-34-FPN-RETINANET", 1, 64),
        ("R-50-FPN-RETINANET", 1, 64),
        ("R-101-FPN-RETINANET", 1, 64),
        ("R-101-FPN-RETINANET", 32, 8),
    ],
)
def test_output_shapes_and_strides(body, groups, width):
    cfg = _cfg(
        body,
        **{"MODEL.RESNETS.NUM_GROUPS": str(groups), "MODEL.RESNETS.WIDTH_PER_GROUP": str(width)},
    )
    model = build_backbone(cfg).eval()
    assert model.out_channels == 256
    assert model.strides == (8, 16, 32, 64, 128)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, H, W))
    assert len(feats) == 5
    for f, s in zip(feats, model.strides):
        assert f.shape == (1, 256, math.ceil(H / s), math.ceil(W / s))
        assert torch.isfinite(f).all()
    # C3-C5 channels: bottleneck 512/1024/2048, basic 128/256/512.
    expected = (
        [128, 256, 512]
        if body in ("R-18-FPN-RETINANET", "R-34-FPN-RETINANET")
        else [512, 1024, 2048]
    )
    assert model.body.out_channels == expected


def _body_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "depth,groups,width,tv_fn",
    [
        (18, 1, 64, torchvision.models.resnet18),
        (34, 1, 64, torchvision.models.resnet34),
        (50, 1, 64, torchvision.models.resnet50),
        (101, 1, 64, torchvision.models.resnet101),
        (152, 1, 64, torchvision.models.resnet152),
        (101, 32, 8, torchvision.models.resnext101_32x8d),
        (101, 64, 4, torchvision.models.resnext101_64x4d),
    ],
)
def test_body_parameter_count_and_names_match_torchvision(depth, groups, width, tv_fn):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        body = ResNet(
            depth,
            num_groups=groups,
            width_per_group=width,
            norm="BN",
            freeze_at=0,
            stride_in_1x1=False,
        )
        tv = tv_fn()
    tv_count = _body_params(tv) - sum(p.numel() for p in tv.fc.parameters())
    assert _body_params(body) == tv_count
    # Every tensor maps one to one, same shapes.
    mapped = convert_torchvision_resnet_state_dict(tv.state_dict())
    ours = body.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_features_match_torchvision_resnet50(norm):
    tv = torchvision.models.resnet50()
    _randomize_norm_stats(tv)
    tv.eval()
    body = ResNet(50, stride_in_1x1=False, norm=norm, freeze_at=0).eval()
    body.load_state_dict(convert_torchvision_resnet_state_dict(tv.state_dict()), strict=True)
    getter = IntermediateLayerGetter(tv, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        ref = getter(x)
        ours = body(x)
    for a, b in zip(ours, [ref["c3"], ref["c4"], ref["c5"]]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_stride_in_1x1_changes_where_the_stride_is():
    msra = ResNet(50, stride_in_1x1=True, freeze_at=0)
    tv = ResNet(50, stride_in_1x1=False, freeze_at=0)
    assert msra.layer2[0].conv1.stride == (2, 2) and msra.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    # Same weights, different outputs: the stride placement matters.
    tv.load_state_dict(msra.state_dict())
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        a, b = msra(x)[0], tv(x)[0]
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_frozen_bn_equals_bn_in_eval():
    bn = nn.BatchNorm2d(8)
    _randomize_norm_stats(bn)
    bn.eval()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=0)
    # Frozen: no parameters, same output in train mode, statistics unchanged.
    assert list(frozen.parameters()) == []
    frozen.train()
    before = frozen.running_mean.clone()
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=0)
    assert torch.equal(frozen.running_mean, before)
    # A half input keeps its dtype (fp32 statistics).
    frozen.eval()
    half = frozen(x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), bn(x), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_frozen_bn_with_gradient_keeps_nothing_for_backward(dtype):
    """With autograd the layer is one multiply-add: the same values and input gradient as
    BatchNorm2d in eval mode (to rounding), and no activation kept for the backward pass."""
    bn = nn.BatchNorm2d(8).to(torch.float64 if dtype == torch.float64 else torch.float32)
    _randomize_norm_stats(bn)
    bn.eval()
    frozen = FrozenBatchNorm2d(8).to(bn.running_mean.dtype)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 5, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        y = frozen(x.requires_grad_())
    assert [s for s in saved if s.numel() > 8] == []
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    ref_x = x.detach().to(bn.running_mean.dtype).requires_grad_()
    ref = bn(ref_x)
    (ref_gx,) = torch.autograd.grad(ref, ref_x, grad.to(ref.dtype))
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(y.to(ref.dtype), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.to(ref.dtype), ref_gx, rtol=tol, atol=tol)


def test_convert_frozen_batchnorm_keeps_eval_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    _randomize_norm_stats(model)
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    ref = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert isinstance(converted[1], FrozenBatchNorm2d)
    torch.testing.assert_close(converted(x), ref)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN"])
def test_freeze_exactly_the_first_stages(freeze_at, norm):
    body = ResNet(18, norm=norm, freeze_at=freeze_at)
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    for i, name in enumerate(names):
        params = list(getattr(body, name).parameters())
        assert params, name  # every stage has conv weights
        frozen = i < freeze_at
        assert all(p.requires_grad == (not frozen) for p in params), (name, freeze_at)
        # Frozen stages hold no trainable BatchNorm (it would still update running stats).
        if frozen:
            assert not any(isinstance(m, nn.BatchNorm2d) for m in getattr(body, name).modules())
    if norm == "BN" and freeze_at < 5:
        assert any(isinstance(m, nn.BatchNorm2d) for m in body.layer4.modules())


def test_freeze_from_config_matches_stage_count():
    model = build_backbone(_cfg("R-18-FPN-RETINANET"))  # FREEZE_CONV_BODY_AT 2 by default
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "layer1"}
    assert all(p.requires_grad for p in model.fpn.parameters())


def test_group_norm_backbone_builds_and_runs():
    cfg = _cfg(
        "R-18-FPN-RETINANET",
        **{
            "MODEL.RESNETS.NORM": "GN",
            "MODEL.FPN.USE_GN": "True",
            "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": "0",
        },
    )
    model = build_backbone(cfg)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == 32 for m in gns)
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    feats = model(torch.randn(2, 3, H, W))
    feats[0].sum().backward()
    assert model.body.stem.conv1.weight.grad is not None
    # DIM_PER_GP > 0 sets the group size instead of the count.
    cfg.MODEL.GROUP_NORM.DIM_PER_GP = 16
    gn = build_backbone(cfg).body.stem.bn1
    assert gn.num_groups == 64 // 16


def test_sync_bn_builds_and_runs_in_eval():
    cfg = _cfg(
        "R-18-FPN-RETINANET",
        **{"MODEL.RESNETS.NORM": "SyncBN", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": "1"},
    )
    model = build_backbone(cfg).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.body.layer1.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.body.stem.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, H, W))[0].shape == (1, 256, H // 8, W // 8)


def _reference_fpn(fpn: FPN, feats):
    """Independent top-down pass with scale_factor=2 upsampling (sizes are exact multiples)."""
    c3, c4, c5 = feats
    i5 = fpn.fpn_inner4(c5)
    i4 = fpn.fpn_inner3(c4) + nn.functional.interpolate(i5, scale_factor=2.0, mode="nearest")
    i3 = fpn.fpn_inner2(c3) + nn.functional.interpolate(i4, scale_factor=2.0, mode="nearest")
    p3, p4, p5 = fpn.fpn_layer2(i3), fpn.fpn_layer3(i4), fpn.fpn_layer4(i5)
    return p3, p4, p5


@pytest.mark.parametrize("use_c5", [True, False])
def test_fpn_top_down_and_p6_p7(use_c5):
    chans = [16, 32, 64]
    top = LastLevelP6P7(64 if use_c5 else 8, 8, use_c5=use_c5)
    fpn = FPN(chans, 8, top_blocks=top)
    feats = [torch.randn(1, c, 8 // 2**i, 12 // 2**i) for i, c in enumerate(chans)]
    out = fpn(feats)
    p3, p4, p5 = _reference_fpn(fpn, feats)
    for a, b in zip(out[:3], (p3, p4, p5)):
        torch.testing.assert_close(a, b)
    p6 = top.p6(feats[2] if use_c5 else p5)
    torch.testing.assert_close(out[3], p6)
    torch.testing.assert_close(out[4], top.p7(torch.relu(p6)))
    assert top.p6.in_channels == (64 if use_c5 else 8)


def test_fpn_init_is_kaiming_uniform_a1():
    fpn = FPN([512, 1024, 2048], 256, top_blocks=LastLevelP6P7(2048, 256))
    conv = fpn.fpn_layer2  # 3x3, fan_in 256 * 9; bound = sqrt(6 / ((1 + a^2) fan_in)), a = 1
    bound = math.sqrt(3.0 / (256 * 9))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0
    assert fpn.top_blocks.p6.weight.abs().max() <= math.sqrt(3.0 / (2048 * 9))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="num_groups"):
        ResNet(18, num_groups=32)
    with pytest.raises(ValueError, match="norm"):
        ResNet(18, norm="LayerNorm")
    with pytest.raises(ValueError, match="images"):
        build_backbone(_cfg("R-18-FPN-RETINANET"))(torch.randn(3, 64, 64))
