import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers.devices import DEVICES
from helpers.dr_loss import dr_settings
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import Matcher as TVMatcher

from drdet.modeling.box_coder import BoxCoder
from drdet.modeling.dense import DenseOutputs
from drdet.modeling.losses.dr import DRClassificationLoss
from drdet.modeling.losses.focal import FocalLoss
from drdet.modeling.matcher import Matcher
from drdet.modeling.retinanet.head import RetinaNetHead
from drdet.modeling.retinanet.loss import RetinaNetLossComputation

NUM_CLASSES = 3
DR_PARAMS = dr_settings()


# ---------------------------------------------------------------- head
def test_head_output_layout_matches_anchor_order():
    head = RetinaNetHead(8, num_classes=NUM_CLASSES, num_anchors=2, num_convs=1)
    feature = torch.randn(2, 8, 3, 5)
    out = head([feature])
    (logits,), (deltas,) = out.cls_logits, out.box_regression
    assert logits.shape == (2, 3 * 5 * 2, NUM_CLASSES) and deltas.shape == (2, 3 * 5 * 2, 4)
    raw = head.cls_logits(head.cls_tower(feature))  # (B, A*C, H, W), channel = a*C + c
    b, y, x, a, c = 1, 2, 4, 1, 2
    torch.testing.assert_close(logits[b, (y * 5 + x) * 2 + a, c], raw[b, a * NUM_CLASSES + c, y, x])
    raw_box = head.bbox_pred(head.bbox_tower(feature))
    torch.testing.assert_close(deltas[b, (y * 5 + x) * 2 + a], raw_box[b, a * 4 : a * 4 + 4, y, x])


@pytest.mark.parametrize("prior", [0.01, 0.5])
def test_head_init(prior):
    head = RetinaNetHead(64, num_classes=5, num_anchors=9, prior_prob=prior)
    torch.testing.assert_close(
        head.cls_logits.bias, torch.full((45,), -math.log((1 - prior) / prior))
    )
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 4 + 2
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.01) < 5e-4 and abs(weights.mean().item()) < 5e-4
    assert all((m.bias == 0).all() for m in convs if m is not head.cls_logits)
    # prior 0.01: every score starts at 0.01 up to the tiny random weights.
    (logits,) = head([torch.randn(1, 64, 4, 4)]).cls_logits
    assert (logits.sigmoid() - prior).abs().max() < 0.01


def test_head_group_norm():
    head = RetinaNetHead(64, num_classes=5, num_anchors=9, use_gn=True, gn_groups=16)
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and all(n.num_groups == 16 for n in norms)
    with pytest.raises(ValueError, match="prior_prob"):
        RetinaNetHead(64, 5, 9, prior_prob=0.0)


# ---------------------------------------------------------------- targets
def _random_boxes(n, size=96.0):
    xy = torch.rand(n, 2) * size * 0.7
    return torch.cat([xy, xy + torch.rand(n, 2) * size * 0.3 + 4], dim=1)


def _anchors():
    ys, xs = torch.meshgrid(torch.arange(0, 96, 8.0), torch.arange(0, 96, 8.0), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    half = torch.tensor([[8.0, 8.0], [16.0, 8.0], [24.0, 24.0]])[None]
    return torch.cat([centres - half, centres + half], -1).reshape(-1, 4)


def _loss(loss_type="FOCAL", grouping="image", **kw):
    cls_loss = DRClassificationLoss(DR_PARAMS, grouping) if loss_type == "DR" else FocalLoss()
    return RetinaNetLossComputation(
        Matcher(0.5, 0.4, True), BoxCoder(), NUM_CLASSES, cls_loss=cls_loss, **kw
    )


def _targets(counts=(4, 0, 2)):
    return [
        {"boxes": _random_boxes(n), "labels": torch.randint(1, NUM_CLASSES + 1, (n,))}
        for n in counts
    ]


def _reference_targets(anchors, targets):
    """Per image with torchvision's Matcher and BoxCoder."""
    labels, reg = [], []
    for t in targets:
        if len(t["boxes"]) == 0:
            labels.append(torch.zeros(len(anchors), dtype=torch.int64))
            continue
        m = TVMatcher(0.5, 0.4, True)(torchvision.ops.box_iou(t["boxes"], anchors))
        lab = t["labels"][m.clamp(min=0)].clone()
        lab[m == -1] = 0
        lab[m == -2] = -1
        labels.append(lab)
        pos = lab > 0
        reg.append(
            TVBoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(t["boxes"][m[pos]], anchors[pos])
        )
    return torch.stack(labels), torch.cat(reg)


def test_prepare_targets_against_torchvision():
    anchors, targets = _anchors(), _targets()
    t = _loss().prepare_targets([anchors], targets)
    labels, positives, reg = t["labels"], t["positives"], t["regression_targets"]
    ref_labels, ref_reg = _reference_targets(anchors, targets)
    assert torch.equal(labels, ref_labels)
    assert torch.equal(positives, (ref_labels > 0).nonzero())
    torch.testing.assert_close(reg, ref_reg)
    assert (labels[1] == 0).all() and (labels[0] > 0).any() and (labels == -1).any()


@pytest.mark.parametrize(
    "box, message",
    [
        ([10.0, 10.0, 10.0, 20.0], "degenerate"),
        ([10.0, 10.0, 5.0, 20.0], "degenerate"),
        ([0.0, 0.0, float("nan"), 5.0], "degenerate"),
    ],
)
def test_degenerate_box_names_the_image(box, message):
    targets = _targets((2, 1))
    targets[1] = {"boxes": torch.tensor([box]), "labels": torch.tensor([1]), "image_id": 1234}
    with pytest.raises(ValueError, match=rf"image 1 of the batch \(image_id 1234\).*{message}"):
        _loss().prepare_targets([_anchors()], targets)


def test_bad_label_is_an_error():
    targets = [{"boxes": _random_boxes(1), "labels": torch.tensor([NUM_CLASSES + 1])}]
    with pytest.raises(ValueError, match="label 4, expected 1..3"):
        _loss().prepare_targets([_anchors()], targets)
    with pytest.raises(ValueError, match="grouping"):
        _loss(loss_type="DR", grouping="gpu")
    with pytest.raises(TypeError, match="cls_loss"):
        RetinaNetLossComputation(Matcher(0.5, 0.4), BoxCoder(), NUM_CLASSES, cls_loss="DR")


# ---------------------------------------------------------------- losses (need drdet.layers ops)
def _dr_reference(logits, labels, groups, num_groups, p):
    probs = logits.sigmoid()
    onehot = labels[:, None] == torch.arange(1, logits.shape[1] + 1)
    valid = (labels >= 0)[:, None].expand_as(onehot)
    total = 0.0
    for g in range(num_groups):
        m = groups == g
        pos, neg = probs[m][onehot[m]], probs[m][~onehot[m] & valid[m]]
        p_neg = (torch.softmax(neg / p["neg_lambda"], 0) * neg).sum()
        p_pos = (torch.softmax(-pos / p["pos_lambda"], 0) * pos).sum() if pos.numel() else 1.0
        total = total + p["tau"] * F.softplus(p["L"] * (p_neg - p_pos + p["margin"])) / p["L"]
    return total / num_groups


def _predictions(num_images, num_anchors):
    logits = torch.randn(num_images, num_anchors, NUM_CLASSES, requires_grad=True)
    deltas = torch.randn(num_images, num_anchors, 4, requires_grad=True)
    return logits, deltas


def _reg_reference(deltas, labels, reg_targets):
    # maskrcnn-benchmark: summed smooth-L1 / max(1, positives * BBOX_REG_WEIGHT (4))
    pos = labels > 0
    return F.smooth_l1_loss(deltas[pos], reg_targets, beta=0.11, reduction="sum") / max(
        1, 4 * int(pos.sum())
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "loss_type, grouping", [("FOCAL", "image"), ("DR", "image"), ("DR", "batch")]
)
def test_losses_against_reference(loss_type, grouping, device):
    anchors, targets = _anchors(), _targets()
    logits, deltas = _predictions(3, len(anchors))
    a, lg, d = anchors.to(device), logits.to(device), deltas.to(device)  # targets stay on the CPU
    # split into two "levels" to exercise the concatenation
    cut = 100
    outputs = DenseOutputs([lg[:, :cut], lg[:, cut:]], [d[:, :cut], d[:, cut:]])
    losses = _loss(loss_type, grouping)([a[:cut], a[cut:]], outputs, targets)
    assert losses["loss_cls"].device == lg.device
    losses = {k: v.cpu() for k, v in losses.items()}
    ref_labels, ref_reg = _reference_targets(anchors, targets)
    flat_logits, flat_labels = logits.reshape(-1, NUM_CLASSES), ref_labels.reshape(-1)
    num_pos = int((ref_labels > 0).sum())
    if loss_type == "FOCAL":
        keep = flat_labels >= 0
        onehot = (flat_labels[keep, None] == torch.arange(1, NUM_CLASSES + 1)).float()
        ref_cls = (
            torchvision.ops.sigmoid_focal_loss(
                flat_logits[keep], onehot, 0.25, 2.0, reduction="sum"
            )
            / (num_pos + 3)  # maskrcnn-benchmark: positives + images
        )
    elif grouping == "image":
        groups = torch.arange(3).repeat_interleave(len(anchors))
        ref_cls = _dr_reference(flat_logits, flat_labels, groups, 3, DR_PARAMS)
    else:
        ref_cls = _dr_reference(
            flat_logits, flat_labels, torch.zeros_like(flat_labels), 1, DR_PARAMS
        )
    torch.testing.assert_close(losses["loss_cls"], ref_cls, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_reg"], _reg_reference(deltas, ref_labels, ref_reg))
    (losses["loss_cls"] + losses["loss_reg"]).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


@pytest.mark.parametrize("loss_type", ["FOCAL", "DR"])
def test_batch_without_boxes_is_finite_with_zero_regression(loss_type):
    anchors = _anchors()
    logits, deltas = _predictions(2, len(anchors))
    losses = _loss(loss_type)([anchors], DenseOutputs([logits], [deltas]), _targets((0, 0)))
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_reg"].item() == 0.0
    (losses["loss_cls"] + losses["loss_reg"]).backward()
    assert torch.isfinite(logits.grad).all() and (deltas.grad == 0).all()


# ---------------------------------------------------------------- built from a config
def test_builders_read_the_config():
    from drdet.config import get_cfg
    from drdet.modeling.retinanet import build_retinanet_head, build_retinanet_loss

    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.RETINANET.LOSS_TYPE",
            "DR",
            "MODEL.DR_LOSS.H_POS",
            20.0,
            "MODEL.DR_LOSS.H_NEG",
            5.5,
            "MODEL.DR_LOSS.GROUPING",
            "batch",
            "MODEL.DR_LOSS.TAU",
            3.0,
            "MODEL.RETINANET.FG_IOU_THRESHOLD",
            0.6,
            "MODEL.RETINANET.USE_GN",
            True,
            "MODEL.NUM_CLASSES",
            21,
            "MODEL.RETINANET.PRIOR_PROB",
            0.5,
        ]
    )
    loss = build_retinanet_loss(cfg, BoxCoder())
    cls_loss = loss.cls_loss
    assert isinstance(cls_loss, DRClassificationLoss) and loss.num_classes == 20
    assert cls_loss.grouping == "batch"
    assert cls_loss.params.pos_lambda == pytest.approx(1 / math.log(20.0))
    assert cls_loss.params.neg_lambda == pytest.approx(0.1 / math.log(5.5))
    assert cls_loss.params.tau == 3.0 and loss.matcher.high_threshold == 0.6
    head = build_retinanet_head(cfg, 256, 9)
    assert head.cls_logits.out_channels == 9 * 20
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in head.modules()) == 8
    assert (head.cls_logits.bias == 0).all()
