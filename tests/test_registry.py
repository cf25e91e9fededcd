"""The registries: a new classification loss, dataset type and evaluator plug in through their
registries alone, and config validation and the builders follow what is registered."""

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import small_detector_cfg

from drdet.config import get_cfg, validate_cfg
from drdet.data.registry import DATASET_TYPES, DatasetType, MalformedDatasetName
from drdet.evaluation import EVALUATORS
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
    return small_detector_cfg("MODEL.RETINANET.LOSS_TYPE", loss_type)


def test_a_registered_loss_trains_the_detector(bce_registered):
    model = build_detector(_tiny_cfg("BCE_TEST")).train()
    assert len(bce_registered) == 1 and model.loss.cls_loss is bce_registered[0]
    images = [torch.rand(3, 64, 96) * 255, torch.rand(3, 96, 64) * 255]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[10.0, 8.0, 30.0, 90.0], [0.0, 0.0, 60.0, 20.0]]),
            "labels": torch.tensor([1, 3]),
        },
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
    cls_logits = captured["out"].cls_logits
    logits = torch.cat(cls_logits, dim=1).detach()
    anchors = torch.cat(
        model.anchor_generator(
            model.backbone(model.preprocess(images).tensors),
            model.preprocess(images).tensors.shape[-2:],
        )
    )
    t = model.loss.prepare_targets([anchors], targets)
    labels, positives = t["labels"], t["positives"]
    keep = labels >= 0
    onehot = (labels[keep][:, None] == torch.arange(1, 4)).float()
    expected = F.binary_cross_entropy_with_logits(logits[keep], onehot, reduction="sum") / (
        positives.shape[0] + len(images)
    )
    torch.testing.assert_close(losses["loss_cls"].detach(), expected)
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_config_accepts_registered_names_and_rejects_others(bce_registered):
    _tiny_cfg("BCE_TEST")  # validates
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "BCE_MISSPELT"])
    with pytest.raises(ValueError, match=r"MODEL\.RETINANET\.LOSS_TYPE.*BCE_TEST.*DR.*FOCAL"):
        validate_cfg(cfg)


@pytest.mark.parametrize(
    "registry, key, builtin",
    [
        (META_ARCHITECTURES, "MODEL.META_ARCHITECTURE", "RetinaNet"),
        (BACKBONES, "MODEL.BACKBONE.CONV_BODY", "R-50-FPN-RETINANET"),
        (CLASSIFICATION_LOSSES, "MODEL.RETINANET.LOSS_TYPE", "DR"),
    ],
)
def test_builtin_components_are_registered_under_their_config_key(registry, key, builtin):
    assert builtin in registry and key in registry.selected_keys(get_cfg())
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


# ---------------------------------------------------------------- a test-local dataset type
# and evaluator: they plug in through DATASET_TYPES and EVALUATORS alone (CONTRIBUTING.md).
class ToyDataset:
    """``num_images`` images of 64 x 48 pixels, image i holding i + 1 boxes of 10 x 10 pixels
    at x = 20 * k (k = 0..i); evaluated by the test-local "toy_recall"."""

    evaluators = ("toy_recall", "toy_count")
    class_names = ["thing"]

    def __init__(self, name, num_images):
        self.name = name
        self.boxes = {
            i + 1: torch.tensor([[20.0 * k, 5.0, 20.0 * k + 10, 15.0] for k in range(i + 1)])
            for i in range(num_images)
        }

    def __len__(self):
        return len(self.boxes)

    def get_img_info(self, index):
        return {"id": index + 1, "height": 48, "width": 64}


def toy_from_parts(name, parts, transforms, is_train):
    if len(parts) != 1 or not parts[0].isdigit():
        raise MalformedDatasetName(name)
    return ToyDataset(name, int(parts[0]))


def toy_from_entry(name, entry, root, transforms, is_train):
    return ToyDataset(name, entry["num_images"])


def toy_recall(dataset, predictions, output_folder=None, per_category=False):
    """Fraction of the ground-truth boxes with a predicted box of IoU >= 0.5."""
    from torchvision.ops import box_iou

    found = total = 0
    for image_id, gt in dataset.boxes.items():
        pred = predictions.get(image_id, {"boxes": torch.zeros(0, 4)})["boxes"]
        total += len(gt)
        if len(pred):
            found += int((box_iou(gt, pred).max(dim=1).values >= 0.5).sum())
    return {"toy_recall": found / total}


@pytest.fixture
def toy_registered():
    DATASET_TYPES.register(
        "toy",
        DatasetType(
            form="toy:<num images>",
            from_parts=toy_from_parts,
            max_parts=1,
            names={"toy_three": {"num_images": 3}},
            from_entry=toy_from_entry,
        ),
    )
    EVALUATORS.register("toy_recall", toy_recall)
    EVALUATORS.register("toy_count", lambda dataset, predictions, **_: {"images": len(predictions)})
    yield
    DATASET_TYPES.unregister("toy")
    EVALUATORS.unregister("toy_recall")
    EVALUATORS.unregister("toy_count")


def test_a_registered_dataset_type_builds_from_both_name_forms(toy_registered):
    from drdet.data import build_dataset, get_dataset, known_names

    by_form = get_dataset("toy:2", None, is_train=False)
    assert isinstance(by_form, ToyDataset) and len(by_form) == 2 and by_form.name == "toy:2"
    by_name = build_dataset(["toy_three"], None, is_train=True)
    assert isinstance(by_name, ToyDataset) and len(by_name) == 3
    assert "toy_three" in known_names() and "coco_2017_val" in known_names()
    with pytest.raises(ValueError, match=r"malformed dataset name 'toy:x'.*toy:<num images>"):
        get_dataset("toy:x", None, is_train=False)
    with pytest.raises(KeyError, match=r"unknown dataset 'toy_four'.*toy_three.*toy:<num images>"):
        get_dataset("toy_four", None, is_train=False)


def test_unregistered_type_is_unknown():
    from drdet.data import get_dataset

    with pytest.raises(KeyError, match=r"unknown dataset 'toy:2'.*coco:<json>"):
        get_dataset("toy:2", None, is_train=False)


def test_a_registered_evaluator_scores_the_datasets_that_name_it(toy_registered, tmp_path):
    from drdet.data import get_dataset
    from drdet.engine.inference import evaluate_predictions

    dataset = get_dataset("toy:2", None, is_train=False)  # image 1: 1 box, image 2: 2 boxes
    predictions = {
        1: {
            "boxes": torch.tensor([[1.0, 5.0, 11.0, 15.0]]),  # IoU 9/11 with the box: found
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]),
        },
        2: {
            "boxes": torch.tensor([[26.0, 5.0, 36.0, 15.0]]),  # IoU 4/16 with box 2: missed
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
        },
    }
    metrics = evaluate_predictions(dataset, predictions, output_folder=str(tmp_path))
    assert list(metrics) == ["toy_recall", "images"]  # in the dataset's order
    assert metrics["toy_recall"] == pytest.approx(1 / 3) and metrics["images"] == 2
    dataset.evaluators = ("toy_recall", "toy_missing")
    with pytest.raises(KeyError, match=r"unknown evaluator 'toy_missing'.*coco.*toy_recall"):
        evaluate_predictions(dataset, predictions)
