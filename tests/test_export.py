"""Export (drdet/export, tools/export_model.py) against the eager detector it comes from.

Parity rule: every eager detection has an exported one of the same label with every box
coordinate within 0.05 px and the score within 1e-4 (one to one), at most 1% unmatched, both
ways; checked for .onnx (onnxruntime) and .pt2 (torch.export.load), on a Dr. Retina trained for
a few iterations and an FCOS and an ATSS (slow) with spread random weights, on single images whose sizes are not
multiples of 32 and on a batch of two images of different sizes padded into one tensor."""

import json
import os
import shutil
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch
from helpers.tiny import SMALL_HEAD, STEADY, SYNTHETIC_CONFIG, small_detector_cfg, tiny_overrides
from helpers.weights import calibrate_frozen_bn
from tool_loader import checkout_env, load_tool
from torch import nn

from drdet.checkpoint import Checkpointer
from drdet.engine.defaults import load_config
from drdet.export.config import baked_values
from drdet.export.export import export_model
from drdet.export.module import ExportableDetector
from drdet.export.nms import multiclass_nms
from drdet.export.runtime import ExportedDetector
from drdet.modeling import build_detector
from drdet.structures.image_list import to_image_list
from drdet.utils.errors import UserValueError, run_main

export_tool = load_tool("export_model")
test_net = load_tool("test_net")
train_net = load_tool("train_net")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

BOX_TOL, SCORE_TOL, UNMATCHED = 0.05, 1e-4, 0.01
SIZES = [(77, 141), (150, 97)]  # (height, width), not multiples of 32
FORMATS = (".pt2", ".onnx")
TRAIN_SET, TEST_SET = "synthetic:8:0:128", "synthetic:8:1:128"
TINY = tiny_overrides(TRAIN_SET, TEST_SET, overrides={**SMALL_HEAD, **STEADY})


def unmatched(det: dict, ref: dict) -> int:
    """How many detections of ``ref`` find none in ``det`` (same label, box and score within
    the tolerances; each detection of ``det`` used once)."""
    used = torch.zeros(len(det["scores"]), dtype=torch.bool)
    missing = 0
    for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
        close = (
            ~used
            & (det["labels"] == label)
            & ((det["scores"] - score).abs() <= SCORE_TOL)
            & ((det["boxes"] - box).abs().amax(1) <= BOX_TOL)
        )
        hits = close.nonzero().flatten()
        if len(hits):
            used[hits[0]] = True
        else:
            missing += 1
    return missing


def assert_parity(dets: list[dict], refs: list[dict], min_count: int = 30) -> None:
    assert all(len(r["scores"]) >= min_count for r in refs)  # enough detections to compare
    total = sum(len(r["scores"]) for r in refs)
    for a, b in ((dets, refs), (refs, dets)):
        missing = sum(unmatched(d, r) for d, r in zip(a, b))
        assert missing <= UNMATCHED * total, f"{missing} of {total} detections unmatched"


def images(sizes=SIZES, seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=gen) * 255 for h, w in sizes]


def spread_weights(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random head weights, FrozenBN calibrated to activations of a trained network's
    size, class bias -1: scores spread over (0, 1), many above the threshold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.03, generator=gen)
    calibrate_frozen_bn(model, images([(128, 160)] * 2))
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(-1.0)
    return model


def spread(arch: str, seed: int, folder) -> tuple:
    """(cfg with MODEL.WEIGHT, model): a small detector ``arch`` (its node MODEL.<ARCH>) with
    spread random weights, saved as a checkpoint."""
    cfg = small_detector_cfg("MODEL.META_ARCHITECTURE", arch, node=f"MODEL.{arch.upper()}")
    model = spread_weights(build_detector(cfg).eval(), seed)
    path = os.path.join(folder, f"{arch}.pth")
    torch.save({"model": model.state_dict()}, path)
    cfg.defrost()
    cfg.MODEL.WEIGHT = path
    return cfg, model


def trained_dr_retina(folder) -> tuple:
    """(cfg with MODEL.WEIGHT, model): the demo's Dr. Retina (small head) after 5 iterations."""
    train_net.main(
        ["--config-file", SYNTHETIC_CONFIG, "--skip-test", *TINY, "SOLVER.MAX_ITER", "5"]
        + ["OUTPUT_DIR", str(folder)]
    )
    weight = os.path.join(folder, "model_final.pth")
    cfg = load_config(SYNTHETIC_CONFIG, [*TINY, "MODEL.WEIGHT", weight])
    model = build_detector(cfg).eval()
    Checkpointer(model).load(weight, load_training_state=False, strict=True)
    return cfg, model


CASES = {  # ATSS: exported by the code written for RetinaNet and FCOS, unchanged
    "dr_retina_trained": trained_dr_retina,
    "fcos_spread": partial(spread, "FCOS", 1),
    "atss_spread": partial(spread, "ATSS", 3),
}


@pytest.fixture(
    scope="module",
    params=[
        "dr_retina_trained",
        "fcos_spread",
        pytest.param("atss_spread", marks=pytest.mark.slow),
    ],
)
def case(request, tmp_path_factory):
    """(cfg, eager model, {suffix: ExportedDetector}) of one model, exported to both formats."""
    folder = tmp_path_factory.mktemp(request.param)
    cfg, model = CASES[request.param](folder)
    paths = [os.path.join(folder, "model" + suffix) for suffix in FORMATS]
    config = SYNTHETIC_CONFIG if request.param == "dr_retina_trained" else None
    if config:  # through the tool: one trace for both files
        outputs = [v for path in paths for v in ("--output", path)]
        export_tool.main(
            ["--config-file", config, *outputs, *TINY, "MODEL.WEIGHT", cfg.MODEL.WEIGHT]
        )
    else:
        export_model(cfg, paths)
    return cfg, model, {s: ExportedDetector(p, cfg) for s, p in zip(FORMATS, paths)}


@pytest.mark.parametrize("suffix", FORMATS)
def test_single_images_match_eager(case, suffix):
    _, model, exported = case
    originals = [(2 * h, 2 * w) for h, w in SIZES]  # boxes rescaled as for the source image
    with torch.no_grad():
        refs = [model([x], original_sizes=[o])[0] for x, o in zip(images(), originals)]
    assert_parity(exported[suffix](images(), original_sizes=originals), refs)


@pytest.mark.parametrize("suffix", FORMATS)
def test_padded_batch_of_two_sizes_matches_eager(case, suffix):
    """Two images of different sizes zero-padded into one (2, 3, H, W) tensor: each image is
    the whole H x W (input pixels are the padded tensor's), as eager drdet takes such a tensor."""
    _, model, exported = case
    batch = to_image_list(images(), size_divisibility=0).tensors
    boxes, scores, labels, counts = exported[suffix].runner(batch)
    dets = [
        {"boxes": b[:n], "scores": s[:n], "labels": c[:n]}
        for b, s, c, n in zip(boxes, scores, labels, counts.tolist())
    ]
    with torch.no_grad():
        refs = model(batch)
    assert_parity(dets, refs)
    height, width = batch.shape[-2:]
    assert (boxes >= 0).all() and (boxes[..., 0::2] <= width).all()
    assert (boxes[..., 1::2] <= height).all()
    pad = torch.arange(boxes.shape[1])[None] >= counts[:, None]
    assert (scores[pad] == 0).all() and (labels[pad] == 0).all() and (boxes[pad] == 0).all()


def greedy_nms_reference(boxes, scores, iou_threshold, score_threshold) -> set:
    """{(image, class, box)} kept by a plain greedy loop per image and class (IoU from its
    formula), entries with score > score_threshold."""
    kept = set()
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            order = [int(i) for i in scores[b, c].argsort(descending=True)]
            alive = [i for i in order if scores[b, c, i] > score_threshold]
            while alive:
                i = alive.pop(0)
                kept.add((b, c, i))
                x1, y1, x2, y2 = boxes[b, i].tolist()
                rest = []
                for j in alive:
                    u1, v1, u2, v2 = boxes[b, j].tolist()
                    inter = max(0.0, min(x2, u2) - max(x1, u1)) * max(
                        0.0, min(y2, v2) - max(y1, v1)
                    )
                    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
                    if inter / union <= iou_threshold:
                        rest.append(j)
                alive = rest
    return kept


def onnxruntime_nms(boxes, scores, iou_threshold, score_threshold) -> set:
    """What ONNX's standard NonMaxSuppression keeps, run by onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, None, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, None, None]),
    ]
    consts = [
        helper.make_tensor("max", TensorProto.INT64, [1], [1000]),
        helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou_threshold]),
        helper.make_tensor("thr", TensorProto.FLOAT, [1], [score_threshold]),
    ]
    node = helper.make_node(
        "NonMaxSuppression", ["boxes", "scores", "max", "iou", "thr"], ["selected"]
    )
    output = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    graph = helper.make_graph([node], "nms", inputs, [output], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (selected,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    onnx.checker.check_model(model)
    return {tuple(int(v) for v in row) for row in selected}


def test_multiclass_nms_matches_a_plain_loop_and_onnx_nms():
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 80, 2, generator=gen) * 60
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 80, 2, generator=gen) * 30], -1)
    scores = torch.rand(2, 3, 80, generator=gen)
    scores[scores < 0.3] = -1.0  # entries that do not take part, as the exported graph gives
    kept = {tuple(r) for r in multiclass_nms(boxes, scores, 0.5, -0.5).tolist()}
    reference = greedy_nms_reference(boxes, scores, 0.5, -0.5)
    assert len(reference) > 60 and len(reference) < int((scores > -0.5).sum())  # it suppresses
    assert kept == reference
    assert onnxruntime_nms(boxes, scores, 0.5, -0.5) == reference


def assert_module_matches_eager(module: ExportableDetector, model: nn.Module) -> None:
    """The export's tensor code run eagerly (no export) gives the detector's own detections."""
    dets = []
    with torch.no_grad():
        for x in images():
            boxes, scores, labels, (n,) = module(x[None])
            dets.append({"boxes": boxes[0, :n], "scores": scores[0, :n], "labels": labels[0, :n]})
        refs = [model([x])[0] for x in images()]
    assert_parity(dets, refs, min_count=100)


def test_exportable_module_matches_eager_retinanet():
    """The export's tensor code run eagerly (no export) on a focal RetinaNet with spread random
    weights: the same detections as the detector's own post-processing."""
    model = spread_weights(build_detector(small_detector_cfg()).eval(), seed=2)
    module = ExportableDetector(model).eval()
    assert_module_matches_eager(module, model)


def test_exportable_module_keeps_the_class_score_exponent():
    """FCOS with MODEL.FCOS.CLASS_SCORE_EXPONENT 0.75: the export's tensor code run eagerly gives
    the detector's detections, so the exponent is in the graph, and the config check knows it."""
    cfg = small_detector_cfg(
        "MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FPN.USE_C5", False,
        "MODEL.GROUP_NORM.NUM_GROUPS", 8, "MODEL.FCOS.CLASS_SCORE_EXPONENT", 0.75,
        node="MODEL.FCOS",
    )  # fmt: skip
    model = spread_weights(build_detector(cfg).eval(), seed=1)
    module = ExportableDetector(model).eval()
    assert module.class_score_exponent == 0.75
    assert_module_matches_eager(module, model)
    assert baked_values(cfg)["MODEL.FCOS.CLASS_SCORE_EXPONENT"] == 0.75


def test_a_config_that_differs_from_the_export_is_an_error(case):
    cfg, _, exported = case
    node = f"MODEL.{cfg.MODEL.META_ARCHITECTURE.upper()}"
    other = cfg.clone()
    other.defrost()
    other.merge_from_list([f"{node}.INFERENCE_TH", 0.3, "INPUT.TO_BGR255", False])
    with pytest.raises(UserValueError, match=rf"{node}.INFERENCE_TH 0.3 \(exported with") as err:
        ExportedDetector(exported[".onnx"].path, other)
    assert "INPUT.TO_BGR255 False (exported with True)" in str(err.value)


@pytest.mark.parametrize(
    "output,weight,message",
    [
        ("model.onnx.txt", "w.pth", "--output 'OUT/model.onnx.txt': the file name must end in"),
        ("exists.onnx", "w.pth", "--output 'OUT/exists.onnx' exists: pass --force"),
        ("model.pt2", "other.onnx", "MODEL.WEIGHT 'OUT/other.onnx' is an exported model"),
        ("model.pt2", "missing.pth", "MODEL.WEIGHT 'OUT/missing.pth' does not exist"),
    ],
)
def test_export_tool_errors_exit_2_with_the_message_alone(
    tmp_path, capsys, output, weight, message
):
    (tmp_path / "exists.onnx").write_bytes(b"")
    (tmp_path / "w.pth").write_bytes(b"")
    argv = ["--config-file", SYNTHETIC_CONFIG, "--output", str(tmp_path / output)]
    code = run_main(export_tool.main, argv + ["MODEL.WEIGHT", str(tmp_path / weight)], "export")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"export: error: {message.replace('OUT', str(tmp_path))}")
    assert err.count("\n") == 1  # the message alone, no traceback


NO_EXTENSION_RUN = """
import sys, torch
sys.modules["drdet._C"] = None  # importing the compiled extension fails
from drdet.export.runtime import ExportedDetector
images = torch.load(sys.argv[1])
out = {s: ExportedDetector(p)(images) for s, p in zip(sys.argv[3::2], sys.argv[4::2])}
assert "drdet._C" not in sys.modules or sys.modules["drdet._C"] is None
torch.save(out, sys.argv[2])
"""


def test_exported_models_run_without_the_compiled_extension(case, tmp_path):
    cfg, _, exported = case
    if cfg.MODEL.META_ARCHITECTURE != "FCOS":
        pytest.skip("one model suffices: the runtime's code is the same for every detector")
    torch.save(images(), tmp_path / "images.pt")
    args = [str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    args += [v for s, e in exported.items() for v in (s, e.path)]
    proc = subprocess.run(
        [sys.executable, "-c", NO_EXTENSION_RUN, *args],
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    for suffix, model in exported.items():
        for got, want in zip(out[suffix], model(images())):
            assert all(torch.equal(got[k], want[k]) for k in ("boxes", "scores", "labels"))


def test_predictor_runs_an_exported_model(case):
    from drdet.engine.predictor import Predictor

    cfg, _, exported = case
    gen = torch.Generator().manual_seed(4)
    bgr = [
        torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy() for h, w in SIZES
    ]
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 150, "INPUT.MAX_SIZE_TEST", 250])
    eager = Predictor(cfg)
    for model in [exported[".onnx"]]:  # (the Predictor's code is the same for a .pt2)
        other = cfg.clone()
        other.MODEL.WEIGHT = model.path
        predictor = Predictor(other)
        assert predictor.checkpoint_classes == model.classes
        assert_parity([predictor(np.ascontiguousarray(x)) for x in bgr], [eager(x) for x in bgr])


@pytest.mark.slow
def test_coco_ap_through_test_net_equals_the_checkpoints(case, tmp_path):
    cfg, _, exported = case
    if cfg.MODEL.META_ARCHITECTURE != "RetinaNet":
        pytest.skip("the trained Dr. Retina is evaluated; random weights detect nothing real")
    argv = ["--config-file", SYNTHETIC_CONFIG, *TINY]
    results = {}
    for name, weight in [("pth", cfg.MODEL.WEIGHT)] + [(s, e.path) for s, e in exported.items()]:
        out = tmp_path / name
        metrics = test_net.main(argv + ["MODEL.WEIGHT", weight, "OUTPUT_DIR", str(out)])
        (results[name],) = metrics.values()
        (folder,) = [p for p in (out / "inference").iterdir() if p.is_dir()]  # + config.yaml
        assert len(json.loads((folder / "bbox.json").read_text())) >= 200  # real detections
    for name in FORMATS:
        for key, value in results["pth"].items():
            assert abs(100 * results[name][key] - 100 * value) <= 0.1, (name, key)


def test_benchmark_tool_times_eager_and_onnxruntime_on_one_model(case, monkeypatch, capsys):
    import drdet.export.benchmark as benchmark

    cfg, _, exported = case
    if cfg.MODEL.META_ARCHITECTURE != "RetinaNet":
        pytest.skip("the tool is run on the trained Dr. Retina (a config file)")

    def exported_already(cfg, outputs, **kwargs):  # this checkpoint's .onnx, made by `case`
        shutil.copy(exported[".onnx"].path, outputs[0])
        return list(outputs)

    monkeypatch.setattr(benchmark, "export_model", exported_already)
    tool = load_tool("benchmark_export")
    argv = ["--config-file", SYNTHETIC_CONFIG, "--size", "100", "130", "--warmup", "0"]
    result = tool.main(argv + ["--reps", "1", *TINY, "MODEL.WEIGHT", cfg.MODEL.WEIGHT])
    counts = {result[f"{k}_detections"] for k in ("drdet_eager", "drdet_eager_nchw", "onnxruntime")}
    assert len(counts) == 1 and counts.pop() >= 30  # the same detector on the same image
    assert all(result[k] > 0 for k in ("drdet_eager", "drdet_eager_nchw", "onnxruntime"))
    assert "onnxruntime" in capsys.readouterr().out
