"""The user-facing tools on a tiny synthetic set: demo (images, folder, video), score
distribution, metric curves, model analysis; outputs checked against the model's own
predictions, torchvision's IoU and hand counts."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from helpers.tiny import SMALL_HEAD, as_argv, datasets_value, demo_argv  # tests/ is on sys.path
from helpers.tiny import SYNTHETIC_CONFIG as CONFIG
from tool_loader import load_tool  # tests/tool_loader.py (tests/ is on sys.path under pytest)
from torch import nn
from torchvision.ops import box_iou

from drdet.data.catalog import get_dataset
from drdet.data.transforms import build_transforms
from drdet.engine.defaults import load_config
from drdet.engine.predictor import Predictor
from drdet.modeling import build_detector
from drdet.modeling.analysis import count_flops, forward_flops

analyze_model = load_tool("analyze_model")
demo = load_tool("demo")
plot_metrics = load_tool("plot_metrics")
plot_score_distribution = load_tool("plot_score_distribution")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

TRAIN_SET, TEST_SET = "synthetic:4:0:128", "synthetic:3:1:128"
TINY = as_argv(
    {
        "MODEL.DEVICE": "cpu",
        **SMALL_HEAD,
        "DATASETS.TRAIN": datasets_value(TRAIN_SET),
        "DATASETS.TEST": datasets_value(TEST_SET),
        "INPUT.MIN_SIZE_TEST": 128,
        "INPUT.MAX_SIZE_TEST": 128,
    }
)


def _checkpoint(path, seed, config=CONFIG):
    torch.manual_seed(seed)
    torch.save({"model": build_detector(load_config(config, TINY)).state_dict()}, path)
    return str(path)


def _focal_config(folder):
    """The synthetic config with RetinaNet's focal loss, prior 0.01 and matcher 0.5 / 0.4."""
    path = folder / "focal.yaml"
    path.write_text(
        f'_BASE_: "{CONFIG}"\nMODEL:\n  RETINANET:\n    LOSS_TYPE: "FOCAL"\n'
        "    PRIOR_PROB: 0.01\n    BG_IOU_THRESHOLD: 0.4\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", 0)


def _png_ok(path):
    assert os.path.getsize(path) > 0
    image = cv2.imread(str(path))
    assert image is not None and image.size > 0
    return image


def _check_against_predictor(records, images, weights, threshold):
    predictor = Predictor(load_config(CONFIG, TINY + ["MODEL.WEIGHT", weights]))
    class_names = get_dataset(TRAIN_SET, None, is_train=False).class_names
    assert len(records) == len(images)
    for record, image in zip(records, images):
        drawn = cv2.imread(record["output"])
        assert drawn is not None and drawn.shape == image.shape
        assert (record["height"], record["width"]) == image.shape[:2]
        expected = predictor(image)
        keep = expected["scores"] >= threshold
        assert len(record["scores"]) == int(keep.sum())
        np.testing.assert_allclose(
            np.array(record["boxes"]).reshape(-1, 4),
            expected["boxes"][keep].numpy(),
            rtol=1e-5,
            atol=1e-3,
        )
        np.testing.assert_allclose(record["scores"], expected["scores"][keep].numpy(), rtol=1e-5)
        assert record["labels"] == expected["labels"][keep].tolist()
        assert record["class_names"] == [class_names[k - 1] for k in record["labels"]]
    return sum(len(r["scores"]) for r in records)


def test_demo_on_folder_and_file(weights, tmp_path):
    image_dir = [get_dataset(TEST_SET, None, is_train=False).image_root]  # generates the set
    files = sorted(os.path.join(image_dir[0], f) for f in os.listdir(image_dir[0]))
    extra = tmp_path / "extra.png"
    cv2.imwrite(str(extra), cv2.resize(cv2.imread(files[0]), (160, 96)))  # another size
    out = tmp_path / "out"
    records = demo.main(
        demo_argv(
            ["--input", image_dir[0], str(extra)], out, "0.3", TINY + ["MODEL.WEIGHT", weights]
        )
    )
    saved = json.loads((out / "detections.json").read_text())
    assert saved == json.loads(json.dumps(records))
    assert [r["file"] for r in saved] == files + [str(extra)]
    n = _check_against_predictor(saved, [cv2.imread(f) for f in files + [str(extra)]], weights, 0.3)
    assert n > 0  # the untrained DR head (prior 0.5) scores many anchors above 0.3


def test_demo_on_video(weights, tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (112, 80))
    rng = np.random.default_rng(0)
    for _ in range(3):
        frame = rng.integers(0, 255, (80, 112, 3), dtype=np.uint8)
        cv2.rectangle(frame, (20, 10), (70, 60), (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 3
    out = tmp_path / "out"
    demo.main(
        demo_argv(
            ["--video", path, "--max-frames", "2"], out, "0.4", TINY + ["MODEL.WEIGHT", weights]
        )
    )
    saved = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in saved] == [f"{path}#0", f"{path}#1"]
    _check_against_predictor(saved, frames[:2], weights, 0.4)


class _FakeCamera:
    """Stands in for cv2.VideoCapture(index) of a camera: endless frames, or none when absent."""

    opened = []

    def __init__(self, source):
        self.source, self.released = source, False
        self.frames = np.random.default_rng(1).integers(0, 255, (4, 72, 96, 3), dtype=np.uint8)
        self.count = 0
        _FakeCamera.opened.append(self)

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.source == 0

    def read(self):
        self.count += 1
        return True, self.frames[(self.count - 1) % 4].copy()

    def release(self):
        self.released = True


def test_demo_on_webcam(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(demo.cv2, "VideoCapture", _FakeCamera)
    out = tmp_path / "out"
    demo.main(
        demo_argv(
            ["--webcam", "0", "--max-frames", "3"], out, "0.4", TINY + ["MODEL.WEIGHT", weights]
        )
    )
    camera = _FakeCamera.opened[-1]
    assert camera.source == 0 and camera.count == 3 and camera.released  # stops at the limit
    saved = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in saved] == ["0#0", "0#1", "0#2"]
    _check_against_predictor(saved, [camera.frames[i] for i in range(3)], weights, 0.4)
    with pytest.raises(ValueError, match="--webcam 1: OpenCV cannot open it"):
        demo.main(
            ["--config-file", CONFIG, "--webcam", "1", "--max-frames", "3", "--output", str(out)]
            + TINY
            + ["MODEL.WEIGHT", weights]
        )
    with pytest.raises(SystemExit):  # a camera never ends: a frame limit is required
        demo.main(["--config-file", CONFIG, "--webcam", "0", "--output", str(out)])


def test_demo_bad_input(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        demo.main(
            [
                "--config-file",
                CONFIG,
                "--input",
                str(tmp_path / "nope.jpg"),
                "--output",
                str(tmp_path),
            ]
            + TINY
            + ["MODEL.WEIGHT", weights]
        )
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        demo.main(
            ["--config-file", CONFIG, "--input", str(bad), "--output", str(tmp_path / "o")]
            + TINY
            + ["MODEL.WEIGHT", weights]
        )


def _reference_anchor_scores(model, cfg, image, target):
    """Foreground/background scores with the matching redone by torchvision's box_iou."""
    with torch.no_grad():
        batch = model.preprocess([image])
        features = model.backbone(batch.tensors)
        logits = model.head(features).cls_logits
        anchors = torch.cat(model.anchor_generator(features, batch.tensors.shape[-2:]))
    scores = torch.cat(logits, 1)[0].sigmoid()
    rc = cfg.MODEL.RETINANET
    if target["boxes"].numel() == 0:
        return torch.zeros(0), scores
    iou = box_iou(target["boxes"], anchors)  # (G, A)
    best, gt_index = iou.max(0)
    fg = best >= rc.FG_IOU_THRESHOLD
    bg = best < rc.BG_IOU_THRESHOLD
    if rc.ALLOW_LOW_QUALITY_MATCHES:
        per_gt = iou.max(1, keepdim=True).values
        low = ((iou == per_gt) & (per_gt > 0)).any(0)
        fg |= low
        bg &= ~low
    classes = target["labels"][gt_index[fg]] - 1
    return scores[fg, classes], scores[bg]


def test_score_distribution_matches_independent_matching(tmp_path):
    focal = _focal_config(tmp_path)
    cfgs = [load_config(CONFIG, TINY), load_config(focal, TINY)]
    assert cfgs[1].MODEL.RETINANET.BG_IOU_THRESHOLD == 0.4  # each model has its own matcher
    w1, w2 = _checkpoint(tmp_path / "a.pth", 1), _checkpoint(tmp_path / "b.pth", 2, focal)
    out = tmp_path / "scores.png"
    results = plot_score_distribution.main(
        [
            "--config-file",
            CONFIG,
            "--weights",
            w1,
            "--label",
            "DR",
            "--config-file",
            focal,
            "--weights",
            w2,
            "--label",
            "focal",
            "--num-images",
            "2",
            "--num-background",
            "10000000",
            "--output",
            str(out),
            "--opts",
        ]
        + TINY
    )
    _png_ok(out)
    assert [r[0] for r in results] == ["DR", "focal"]
    dataset = get_dataset(TEST_SET, build_transforms(cfgs[0], is_train=False), is_train=False)
    for (_, fg, bg), w, cfg in zip(results, (w1, w2), cfgs):
        model = build_detector(cfg).eval()
        model.load_state_dict(torch.load(w, weights_only=True)["model"])
        ref_fg, ref_bg = [], []
        for i in range(2):
            image, target, _ = dataset[i]
            f, b = _reference_anchor_scores(model, cfg, image, target)
            ref_fg.append(f)
            ref_bg.append(b.flatten())
        ref_fg, ref_bg = torch.cat(ref_fg).numpy(), torch.cat(ref_bg).numpy()
        assert fg.size > 0 and fg.size == ref_fg.size and bg.size == ref_bg.size
        np.testing.assert_allclose(np.sort(fg), np.sort(ref_fg), rtol=1e-5)
        np.testing.assert_allclose(np.sort(bg), np.sort(ref_bg), rtol=1e-5)
    assert results[0][1].mean() > 0.3 > results[1][1].mean()  # prior 0.5 vs 0.01
    # Subsampling keeps exactly the requested number of background scores.
    few = plot_score_distribution.main(
        [
            "--config-file",
            CONFIG,
            "--weights",
            w1,
            "--num-images",
            "2",
            "--num-background",
            "100",
            "--output",
            str(tmp_path / "s.png"),
            "--opts",
        ]
        + TINY
    )
    assert few[0][2].size == 100 and set(few[0][2]) <= set(results[0][2])


def test_plot_metrics(tmp_path):
    runs = []
    for k, (scale, ap) in enumerate(((1.0, 0.2), (2.0, 0.1))):
        run = tmp_path / f"run{k}"
        run.mkdir()
        lines = [
            {
                "iteration": i,
                "loss": scale / i,
                "loss_cls": 0.6 * scale / i,
                "loss_reg": 0.4 * scale / i,
                "lr": 0.01,
            }
            for i in (1, 2, 3, 4)
        ]
        lines.insert(2, {"iteration": 2, f"eval/{TEST_SET}": {"AP": ap, "AP50": 2 * ap}})
        lines.append({"iteration": 4, f"eval/{TEST_SET}": {"AP": 2 * ap, "AP50": 3 * ap}})
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        runs.append(str(run))
    out = tmp_path / "curves.png"
    data = plot_metrics.main(runs + ["--labels", "DR", "focal", "--output", str(out)])
    _png_ok(out)
    losses, evals = data[1]
    assert losses["loss_cls"] == {i: pytest.approx(1.2 / i) for i in (1, 2, 3, 4)}
    assert evals == {TEST_SET: {2: 0.1, 4: 0.2}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iteration": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        plot_metrics.main([str(bad), "--output", str(tmp_path / "x.png")])


def _hand_conv_flops(module, image):
    """2 * (C_in / groups) * k_h * k_w * C_out per output position, summed over every Conv2d."""
    total = []

    def hook(conv, inputs, output):
        kh, kw = conv.kernel_size
        total.append(
            2
            * conv.in_channels
            // conv.groups
            * kh
            * kw
            * output.shape[1]
            * output.shape[2]
            * output.shape[3]
        )

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(image)
    for h in handles:
        h.remove()
    return sum(total)


def test_analyze_model_counts():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    flops = count_flops(conv, torch.randn(1, 3, 20, 30))
    assert flops[""] == 2 * 3 * 9 * 8 * 10 * 15

    report = analyze_model.main(["--config-file", CONFIG, "--input-size", "96", "128"] + TINY)
    model = build_detector(load_config(CONFIG, TINY)).eval()
    assert report["total"]["params"] == sum(p.numel() for p in model.parameters())
    assert report["backbone"]["params"] == sum(p.numel() for p in model.backbone.body.parameters())
    assert report["head"]["params"] == sum(p.numel() for p in model.head.parameters())
    image = torch.zeros(1, 3, 96, 128)  # a multiple of 32: no padding
    assert report["backbone"]["gflops"] * 1e9 == pytest.approx(
        _hand_conv_flops(model.backbone.body, image), rel=1e-9
    )
    parts = sum(report[p]["gflops"] for p in ("backbone", "fpn", "head"))
    assert report["total"]["gflops"] == pytest.approx(parts, rel=1e-9)
    model.train()  # forward_flops counts in eval mode and gives the model back as it was
    assert forward_flops(model, (96, 128)) == pytest.approx(report["total"]["gflops"] * 1e9)
    assert model.training


def test_class_names_fall_back_to_class_k(tmp_path):
    from drdet.engine.defaults import class_names_from_cfg
    from drdet.utils.visualize import label_name

    cfg = load_config(CONFIG, TINY)
    names = class_names_from_cfg(cfg)
    assert names == get_dataset(TRAIN_SET, None, is_train=False).class_names and len(names) == 5
    missing = f"coco:{tmp_path / 'none.json'}:{tmp_path}"
    cfg = load_config(CONFIG, TINY + ["DATASETS.TRAIN", f"('{missing}',)"])
    assert class_names_from_cfg(cfg) is None
    assert label_name(3, None) == "class 3" and label_name(7, names) == "class 7"
    assert label_name(2, names) == names[1]
