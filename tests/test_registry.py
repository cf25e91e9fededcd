"""The registries: a new classification loss plugs into the detector through the registry alone,
and config validation and the builders follow what is registered."""

import pytest
import torch
import torch.nn.functional as F

from drdet.config import get_cfg, validate_cfg
from drdet.modeling import build_detector
from drdet.modeling.registry import BACKBONES, CLASSIFICATION_LOSSES, META_ARCHITECTURES
from drdet.utils.registry import Registry


# ---------------------------------------------------------------- a test-local loss
class SigmoidBCELoss:
    """Plain sigmoid binary cross-entropy over the non-ignored anchors, one-hot targets, summed
    and divided by the normalizer: the example of CONTRIBUTING.md's recipe."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, logits, labels, normalizer):
        self.calls += 1
        keep = labels >= 0
        classes = torch.arange(1, logits.shape[-1] + 1, device=logits.device)
        onehot = (labels[keep][:, None] == classes).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits[keep], onehot, reduction="sum")
        return loss / normalizer


@pytest.fixture
def bce_registered():
    built = []

    def build(cfg):
        built.append(SigmoidBCELoss())
        return built[-1]

    CLASSIFICATION_LOSSES.register("BCE_TEST", build)
    yield built
    CLASSIFICATION_LOSSES.unregister("BCE_TEST")


def _tiny_cfg(loss_type):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET",
        "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1,
        "MODEL.RETINANET.NUM_CLASSES", 4, "MODEL.RETINANET.LOSS_TYPE", loss_type,
    ])
    return validate_cfg(cfg)


def test_a_registered_loss_trains_the_detector(bce_registered):
    model = build_detector(_tiny_cfg("BCE_TEST")).train()
    assert len(bce_registered) == 1 and model.loss.cls_loss is bce_registered[0]
    images = [torch.rand(3, 64, 96) * 255, torch.rand(3, 96, 64) * 255]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 8.0, 30.0, 90.0], [0.0, 0.0, 60.0, 20.0]]),
         "labels": torch.tensor([1, 3])},
    ]
    # The loss the detector reports is the BCE of its own logits against its own matching.
    captured = {}
    head_forward = model.head.forward

    def spy(features):
        captured["out"] = head_forward(features)
        return captured["out"]

    model.head.forward = spy
    losses = model(images, targets)
    assert bce_registered[0].calls == 1
    cls_logits, _ = captured["out"]
    logits = torch.cat(cls_logits, dim=1).detach()
    anchors = torch.cat(model.anchor_generator(
        model.backbone(model.preprocess(images).tensors), model.preprocess(images).tensors.shape[-2:]))
    labels, positives, _ = model.loss.prepare_targets(anchors, targets)
    keep = labels >= 0
    onehot = (labels[keep][:, None] == torch.arange(1, 4)).float()
    expected = F.binary_cross_entropy_with_logits(logits[keep], onehot, reduction="sum") / (
        positives.shape[0] + len(images))
    torch.testing.assert_close(losses["loss_cls"].detach(), expected)
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_config_accepts_registered_names_and_rejects_others(bce_registered):
    _tiny_cfg("BCE_TEST")  # validates
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "BCE_MISSPELT"])
    with pytest.raises(ValueError, match=r"MODEL\.RETINANET\.LOSS_TYPE.*BCE_TEST.*DR.*FOCAL"):
        validate_cfg(cfg)


@pytest.mark.parametrize("registry, key, builtin", [
    (META_ARCHITECTURES, "MODEL.META_ARCHITECTURE", "RetinaNet"),
    (BACKBONES, "MODEL.BACKBONE.CONV_BODY", "R-50-FPN-RETINANET"),
    (CLASSIFICATION_LOSSES, "MODEL.RETINANET.LOSS_TYPE", "DR"),
])
def test_builtin_components_are_registered_under_their_config_key(registry, key, builtin):
    assert builtin in registry and key in registry.config_keys
    cfg = get_cfg()
    cfg.merge_from_list([key, "NOT_REGISTERED"])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_cfg(cfg)


def test_registry_rejects_a_second_registration_and_names_the_registered():
    reg = Registry("widget", config_keys=("MODEL.WIDGET",))

    @reg.register("A")
    def build_a(cfg):
        return "a"

    assert reg.get("A") is build_a and "A" in reg and reg.names() == ["A"]
    reg.register("A", build_a)  # the same object again is harmless
    with pytest.raises(KeyError, match="already registered"):
        reg.register("A", lambda cfg: "other")
    with pytest.raises(KeyError, match=r"unknown widget 'B' \(MODEL\.WIDGET\); registered: A"):
        reg.get("B")
    assert reg.unregister("A") is build_a and len(reg) == 0
