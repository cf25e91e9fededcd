"""What a new user trips over, each case run for real: demo.py on a folder with an unreadable
image, the modes of the files drdet writes under a umask, convert_checkpoint.py refusing to
overwrite, a training set with no usable box, the exit status of a run stopped by a signal, and
warnings that name the annotation ids and image files at fault."""

import json
import logging
import os
import signal
import stat
from contextlib import contextmanager

import cv2
import pytest
import torch
from helpers.bad_data import good_files, loader_cfg, write_set  # tests/ is on sys.path
from helpers.tiny import SMALL_HEAD, STEADY, demo_argv, saved_detector, tiny_overrides
from helpers.tiny import SYNTHETIC_CONFIG as CONFIG
from tool_loader import load_tool

from drdet.data import build_data_loader
from drdet.data.catalog import get_dataset
from drdet.data.datasets.coco import COCODataset
from drdet.data.datasets.voc import VOCDataset
from drdet.engine.defaults import load_config
from drdet.engine.hooks import HookBase
from drdet.engine.predictor import Predictor
from drdet.utils.io import atomic_write_json, atomic_write_text

convert_checkpoint = load_tool("convert_checkpoint")
demo = load_tool("demo")
train_net = load_tool("train_net")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

TRAIN_SET, TEST_SET = "synthetic:4:0:128", "synthetic:2:1:128"
TINY = tiny_overrides(TRAIN_SET, TEST_SET, overrides={**SMALL_HEAD, **STEADY})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return saved_detector(tmp_path_factory.mktemp("ckpt"), TINY)


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------------------- demo.py
def test_demo_skips_unreadable_images_and_lists_other_entries(weights, tmp_path, caplog):
    """A folder holding a corrupt JPEG between two good images, a text file and a sub-folder:
    the good images are drawn and in detections.json, the corrupt one is named in a warning and
    counted, the other entries are listed in one line."""
    folder = tmp_path / "photos"
    folder.mkdir()
    source = get_dataset(TEST_SET, None, is_train=False).image_root
    good = sorted(os.path.join(source, f) for f in os.listdir(source))
    cv2.imwrite(str(folder / "a.png"), cv2.imread(good[0]))
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cv2.imwrite(str(folder / "c.png"), cv2.imread(good[1]))
    (folder / "notes.txt").write_text("hello")
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    records = demo.main(
        demo_argv(["--input", str(folder)], out, "0.3", TINY + ["MODEL.WEIGHT", weights])
    )
    saved = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in saved] == [str(folder / "a.png"), str(folder / "c.png")]
    assert saved == json.loads(json.dumps(records))
    assert sorted(os.listdir(out)) == ["a.png", "c.png", "detections.json"]
    predictor = Predictor(load_config(CONFIG, TINY + ["MODEL.WEIGHT", weights]))
    for record in saved:  # the detections are the model's, not placeholders
        expected = predictor(cv2.imread(record["file"]))
        assert len(record["scores"]) == int((expected["scores"] >= 0.3).sum())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("b.jpg" in m and "skipp" in m for m in warnings), warnings
    assert any("1 unreadable" in m for m in warnings), warnings
    listed = [m for m in warnings if "notes.txt" in m]
    assert len(listed) == 1 and "sub" in listed[0] and str(folder) in listed[0], warnings


def test_demo_writes_what_it_processed_when_a_later_image_fails(weights, tmp_path, monkeypatch):
    """An error after the first image (here: the second drawn image cannot be written) still
    leaves detections.json with the first image's record, and the error is raised."""
    source = get_dataset(TEST_SET, None, is_train=False).image_root
    files = sorted(os.path.join(source, f) for f in os.listdir(source))
    real_imwrite, calls = demo.cv2.imwrite, []

    def imwrite(path, image):
        calls.append(path)
        return len(calls) == 1 and real_imwrite(path, image)

    monkeypatch.setattr(demo.cv2, "imwrite", imwrite)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="cannot write"):
        demo.main(
            ["--config-file", CONFIG, "--input", *files, "--output", str(out)]
            + TINY
            + ["MODEL.WEIGHT", weights]
        )
    saved = json.loads((out / "detections.json").read_text())
    assert [r["file"] for r in saved] == files[:1]


def test_demo_with_only_unreadable_images_names_them(weights, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="bad.jpg"):
        demo.main(
            ["--config-file", CONFIG, "--input", str(bad), "--output", str(out)]
            + TINY
            + ["MODEL.WEIGHT", weights]
        )
    assert json.loads((out / "detections.json").read_text()) == []


# ----------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, expected):
    with umask(mask):
        atomic_write_text(str(tmp_path / "a.txt"), "x")
        atomic_write_json(str(tmp_path / "b.json"), {"a": 1})
        with open(tmp_path / "plain.txt", "w") as f:  # the reference: a plain open()
            f.write("x")
    assert mode(tmp_path / "plain.txt") == expected
    assert mode(tmp_path / "a.txt") == expected and mode(tmp_path / "b.json") == expected


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_training_outputs_follow_the_umask(tmp_path, mask, expected):
    """Every file a short training run with its final evaluation writes (checkpoint,
    last_checkpoint, config.yaml, bbox.json, metrics.json, logs) has the mode a plain open()
    gives under the umask."""
    out = tmp_path / "out"
    with umask(mask):
        train_net.main(
            ["--config-file", CONFIG] + TINY + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)]
        )
    written = {
        os.path.relpath(os.path.join(d, f), out): mode(os.path.join(d, f))
        for d, _, files in os.walk(out)
        for f in files
    }
    names = {os.path.basename(p) for p in written}
    assert {
        "model_final.pth",
        "last_checkpoint",
        "config.yaml",
        "bbox.json",
        "metrics.json",
    } <= names, written
    assert written == {p: expected for p in written}


# ----------------------------------------------------------------------------- convert_checkpoint
@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path_factory.mktemp("tv") / "tv.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_convert_checkpoint_refuses_to_overwrite_without_force(torchvision_checkpoint, tmp_path):
    out = tmp_path / "out.pth"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=f"{out}.*--force"):
        convert_checkpoint.main([torchvision_checkpoint, str(out)])
    assert out.read_bytes() == b"precious"
    with umask(0o022):
        convert_checkpoint.main([torchvision_checkpoint, str(out), "--force"])
    assert mode(out) == 0o644
    state = torch.load(out, weights_only=True)["model"]
    assert state["head.cls_logits.bias"].numel() == 9 * 3  # converted, 3 torchvision columns


def test_convert_checkpoint_never_writes_over_its_input(torchvision_checkpoint, tmp_path):
    src = tmp_path / "in.pth"
    src.write_bytes(open(torchvision_checkpoint, "rb").read())
    before = src.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(src)
    hard = tmp_path / "hard.pth"
    os.link(src, hard)
    for dst in (str(src), str(tmp_path / "." / "in.pth"), str(link), str(hard)):
        with pytest.raises(ValueError, match="same file"):
            convert_checkpoint.main([str(src), dst, "--force"])
    assert src.read_bytes() == before


# ----------------------------------------------------------------------------- no usable box
def test_coco_training_set_without_usable_boxes_says_why(tmp_path):
    """Four images: no annotation, crowd only, a box outside the image, a zero-width box: the
    error names the file, the image count and each reason's count instead of the sampler's
    'non-empty dataset'."""
    ann, img_dir = write_set(
        tmp_path,
        good_files(4),
        annotations=[
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 1},
            {"id": 12, "image_id": 3, "category_id": 1, "bbox": [200, 10, 5, 5]},
            {"id": 13, "image_id": 4, "category_id": 1, "bbox": [10, 10, 0, 5]},
        ],
    )
    with pytest.raises(ValueError) as err:
        build_data_loader(loader_cfg(ann, img_dir), is_train=True)
    message = str(err.value)
    assert ann in message and "none of the 4 images" in message, message
    assert "1 with no annotations" in message and "1 with crowd boxes only" in message, message
    assert "2 whose boxes are all" in message, message
    assert "TrainingSampler" not in message
    assert len(build_data_loader(loader_cfg(ann, img_dir), is_train=False).dataset) == 4


def test_coco_annotation_file_without_images(tmp_path):
    ann, img_dir = write_set(tmp_path, {})
    with pytest.raises(ValueError, match=f"{ann}.*no images"):
        build_data_loader(loader_cfg(ann, img_dir), is_train=True)


def _voc_set(root, objects):
    """A VOC folder with one annotation per entry of `objects` ([(name, difficult), ...])."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    stems = [f"{i:06d}" for i in range(1, len(objects) + 1)]
    for stem, objs in zip(stems, objects):
        body = "".join(
            f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>2"
            "</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
            for n, d in objs
        )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>32</width><height>32</height></size>{body}</annotation>"
        )
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(stems) + "\n")
    return str(root / "ImageSets" / "Main" / "trainval.txt")


def test_voc_training_set_without_usable_boxes_says_why(tmp_path):
    list_file = _voc_set(tmp_path, [[], [("dog", True)], [("cat", True), ("cow", True)]])
    cfg = loader_cfg("x", "y")
    cfg.DATASETS.TRAIN = (f"voc:{tmp_path}:trainval",)
    with pytest.raises(ValueError) as err:
        build_data_loader(cfg, is_train=True)
    message = str(err.value)
    assert list_file in message and "none of the 3 images" in message, message
    assert "1 with no objects" in message and "2 with difficult objects only" in message
    assert len(VOCDataset(str(tmp_path), "trainval", is_train=False)) == 3


# ----------------------------------------------------------------------------- exit status
class _SendSignal(HookBase):
    """Sends `signum` to this process after iteration 1 (delivered before os.kill returns); it
    runs after the built-in StopOnSignal, so the run stops after iteration 2."""

    def __init__(self, signum):
        self.signum = signum

    def after_step(self):
        if self.trainer.iteration == 1:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_exits_128_plus_the_signal(tmp_path, signum, status):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(
            ["--config-file", CONFIG, "--skip-test"]
            + TINY
            + ["SOLVER.MAX_ITER", "50", "OUTPUT_DIR", str(out)],
            hooks=[_SendSignal(signum)],
        )
    assert exit_info.value.code == status
    name = (out / "last_checkpoint").read_text().strip()  # written before the exit
    assert torch.load(out / name, weights_only=True)["iteration"] == 2


# ----------------------------------------------------------------------------- named warnings
def test_clipped_and_dropped_boxes_are_named_by_annotation_id(tmp_path, caplog):
    boxes = {
        21: [4, 4, 20, 16],
        22: [50, 40, 30, 30],
        23: [10, 10, 0, 5],
        24: [70, 10, 5, 5],
        25: [-1, 2, 3, 3],
    }
    anns = [{"id": k, "image_id": 1, "category_id": 1, "bbox": b} for k, b in boxes.items()]
    anns += [
        {"id": 100 + k, "image_id": 1, "category_id": 1, "bbox": [60, 0, 9, 9]} for k in range(8)
    ]  # eight more clipped: only the first few ids are named
    ann, img_dir = write_set(tmp_path, good_files(1), annotations=anns)
    caplog.set_level(logging.WARNING)
    COCODataset(ann, img_dir, remove_images_without_annotations=True)
    message = caplog.text
    assert ann in message and "10 boxes clipped" in message and "2 dropped" in message, message
    assert "annotation ids 22, 25, 100, 101, 102, ..." in message, message
    assert "annotation ids 23, 24" in message, message
    assert "107" not in message and ", 21" not in message
    assert "[x, y, width, height]" in message and "[x1, y1, x2, y2]" in message  # the format hint


def test_the_same_image_file_under_two_ids_is_warned_about_once(tmp_path, caplog):
    ann, img_dir = write_set(tmp_path, good_files(3))
    data = json.loads(open(ann).read())
    data["images"][2]["file_name"] = data["images"][0]["file_name"]  # ids 1 and 3: 1.png
    with open(ann, "w") as f:
        json.dump(data, f)
    caplog.set_level(logging.WARNING)
    COCODataset(ann, img_dir, remove_images_without_annotations=True)
    lines = [r.getMessage() for r in caplog.records if "1.png" in r.getMessage()]
    assert len(lines) == 1, lines
    assert ann in lines[0] and "ids 1, 3" in lines[0], lines


def test_both_umask_readers_agree():
    from drdet.utils import io

    with umask(0o027):
        io._umask_by_setting_it.cache_clear()
        assert io.current_umask() == 0o027 == io._umask_by_setting_it()
        assert os.umask(0o027) == 0o027  # reading it left it unchanged
    io._umask_by_setting_it.cache_clear()
