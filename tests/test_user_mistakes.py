"""Every tool through a table of user mistakes, each run as the user runs it: the tool in a
subprocess (this checkout first on PYTHONPATH). For every case: exit status 2, the message names
the file, key or id at fault, no "Traceback" in the output, and no file under the user's paths
changes (sizes and mtimes of the whole scratch world, before and after). With --debug the
traceback comes back.

The cases share one scratch world (a two-image COCO set, its broken variants, a few files) and
fail before any model is trained; those that build or run a model are marked slow. The cases of
each group run two at a time (one subprocess per core). SOLVER.IMS_PER_BATCH against the world
size, checked before any data is read, is tested on its function (torchrun would add minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch
from helpers.bad_data import good_files, write_set  # tests/ is on sys.path under pytest
from helpers.tiny import SMALL_HEAD, tiny_overrides
from helpers.tiny import SYNTHETIC_CONFIG as CONFIG
from tool_loader import checkout_env

from drdet.checkpoint import Checkpointer
from drdet.engine.defaults import load_config
from drdet.modeling import build_detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_overrides("", "", overrides={**SMALL_HEAD, "MODEL.NUM_CLASSES": 2})  # 1 category


@dataclass(frozen=True)
class Case:
    """One mistake: `tool` run with `argv` ("{w}": the world folder, "{o}": a fresh output
    folder of the case's own); its message must hold each of `names` (formatted alike)."""

    tool: str
    argv: tuple[str, ...]
    names: tuple[str, ...]


def train(*opts: str) -> tuple[str, ...]:
    """train_net arguments: the synthetic config made tiny, then `opts`; output in {o}."""
    return ("--config-file", CONFIG, "--skip-test", *TINY, "OUTPUT_DIR", "{o}", *opts)


def coco(folder: str) -> str:
    return f"('coco:{{w}}/{folder}/ann.json:{{w}}/{folder}/images',)"


def bad_set(folder: str, *names: str) -> Case:
    """train_net on the broken COCO set `folder` of the world: the message names its json and
    `names`."""
    return Case(
        "train_net", train("DATASETS.TRAIN", coco(folder)), (f"{{w}}/{folder}/ann.json", *names)
    )


def demo(*source: str) -> tuple[str, ...]:
    return ("--config-file", CONFIG, *source, "--output", "{o}", *TINY, "MODEL.WEIGHT", "{w}/m.pth")


CASES = {
    # data: found when the training set is built, before the model
    "missing json": Case(
        "train_net",
        train("DATASETS.TRAIN", "('coco:{w}/nope.json:{w}/good/images',)"),
        ("{w}/nope.json",),
    ),
    "missing image folder": Case(
        "train_net",
        train("DATASETS.TRAIN", "('coco:{w}/good/ann.json:{w}/nope',)"),
        ("{w}/nope",),
    ),
    "unknown dataset": Case("train_net", train("DATASETS.TRAIN", "('my_train',)"), ("my_train",)),
    "invalid json": bad_set("invalid", "line 1"),
    "duplicate image id": bad_set("dup_id", "image id 1"),
    "unknown category": bad_set("bad_category", "category id 7"),
    "annotation without bbox": bad_set("no_bbox", "bbox"),
    "image without size": bad_set("no_size", "width"),
    "empty training set": bad_set("empty", "no image"),
    "image folder one level off": Case(
        "train_net",
        train("DATASETS.TRAIN", "('coco:{w}/good/ann.json:{w}/good',)"),
        ("0 of 2 image files", "{w}/good"),
    ),
    # devices
    "device gpu": Case("train_net", train("MODEL.DEVICE", "gpu"), ("MODEL.DEVICE", "'gpu'")),
    # config files and keys
    "yaml with tabs": Case("train_net", ("--config-file", "{w}/tabs.yaml"), ("{w}/tabs.yaml",)),
    "missing _BASE_": Case("train_net", ("--config-file", "{w}/nobase.yaml"), ("{w}/gone.yaml",)),
    "duplicated yaml key": Case(
        "train_net", ("--config-file", "{w}/dupkey.yaml"), ("{w}/dupkey.yaml", "MAX_ITER")
    ),
    "bbox aug without scales": Case(
        "test_net",
        ("--config-file", CONFIG, *TINY, "OUTPUT_DIR", "{o}", "TEST.BBOX_AUG.ENABLED", "True"),
        ("TEST.BBOX_AUG.SCALES",),
    ),
    "--config_file": Case("train_net", ("--config_file", CONFIG), ("--config-file",)),
    "KEY=VALUE": Case(
        "train_net", ("--config-file", CONFIG, "SOLVER.MAX_ITER=2"), ("SOLVER.MAX_ITER 2",)
    ),
    "no training set": Case("train_net", train(), ("DATASETS.TRAIN",)),
    # runs
    "OUTPUT_DIR is a file": Case(
        "train_net",
        ("--config-file", CONFIG, *TINY, "OUTPUT_DIR", "{w}/notes.txt"),
        ("OUTPUT_DIR", "{w}/notes.txt"),
    ),
    "resume below the checkpoint": Case(
        "train_net",
        (
            "--config-file",
            CONFIG,
            "--resume",
            *TINY,
            "OUTPUT_DIR",
            "{w}/run",
            "SOLVER.MAX_ITER",
            "2",
        ),
        ("SOLVER.MAX_ITER", "5"),
    ),
    "catalog weights": Case(
        "train_net",
        train("DATASETS.TRAIN", coco("good"), "MODEL.WEIGHT", "catalog://ImageNetPretrained/R-50"),
        ("catalog://", "MODEL.WEIGHT"),
    ),
    # convert_checkpoint
    "convert: output exists": Case(
        "convert_checkpoint", ("{w}/m.pth", "{w}/notes.txt"), ("{w}/notes.txt", "--force")
    ),
    "convert: output is input": Case(
        "convert_checkpoint", ("{w}/m.pth", "{w}/m.pth"), ("{w}/m.pth",)
    ),
    "convert: missing input": Case(
        "convert_checkpoint", ("{w}/nope.pth", "{o}/out.pth"), ("{w}/nope.pth",)
    ),
    # demo: the input is checked before the model is built
    "demo: missing input": Case("demo", demo("--input", "{w}/nope.jpg"), ("{w}/nope.jpg",)),
    "demo: empty folder": Case("demo", demo("--input", "{w}/empty_dir"), ("{w}/empty_dir",)),
    "demo: bad video": Case("demo", demo("--video", "{w}/notes.txt"), ("{w}/notes.txt",)),
    "demo: output is input": Case(
        "demo",
        ("--config-file", CONFIG, "--input", "{w}/good/images", "--output", "{w}/good/images"),
        ("--output", "{w}/good/images"),
    ),
    "demo: threshold": Case(
        "demo", (*demo("--input", "{w}/good/images"), "--confidence-threshold", "50"), ("50",)
    ),
    # the other tools
    "plot_metrics: missing folder": Case(
        "plot_metrics", ("{w}/no_run", "--output", "{o}/c.png"), ("{w}/no_run",)
    ),
    "plot_score_distribution: missing weights": Case(
        "plot_score_distribution",
        ("--config-file", CONFIG, "--weights", "{w}/nope.pth", "--output", "{o}/s.png", *TINY)
        + ("DATASETS.TEST", coco("good")),
        ("{w}/nope.pth",),
    ),
    "compare_losses: unknown dataset": Case(
        "compare_losses",
        ("--config-file", CONFIG, "--dataset", "my_train", "--output-dir", "{o}/c"),
        ("my_train",),
    ),
    "analyze_model: missing config": Case(
        "analyze_model", ("--config-file", "{w}/nope.yaml"), ("{w}/nope.yaml",)
    ),
    "benchmark_data: missing config": Case(
        "benchmark_data", ("--config-file", "{w}/nope.yaml"), ("{w}/nope.yaml",)
    ),
    "benchmark_model: bad parts": Case("benchmark_model", ("--parts", "tests"), ("--parts",)),
}
if not torch.cuda.is_available():
    CASES["device cuda without a GPU"] = Case(
        "train_net", train("MODEL.DEVICE", "cuda"), ("MODEL.DEVICE", "no GPU")
    )
    CASES["benchmark_ops: cuda without a GPU"] = Case(
        "benchmark_ops", ("--device", "cuda", "--quick"), ("--device", "cuda")
    )
WITH_A_MODEL = {  # these build the model (and read images with it)
    "swapped width and height": Case(
        "train_net", train("DATASETS.TRAIN", coco("swapped")), ("1.png", "image id 1")
    ),
    "unreadable image at evaluation": Case(
        "test_net",
        ("--config-file", CONFIG, *TINY, "OUTPUT_DIR", "{o}", "MODEL.WEIGHT", "{w}/m.pth")
        + ("DATASETS.TEST", coco("corrupt")),
        ("2.png", "image id 2"),
    ),
    "demo: no webcam": Case("demo", demo("--webcam", "9", "--max-frames", "1"), ("--webcam 9",)),
}


# In make test-fast: one case or two of each tool and kind of mistake; each case costs a Python
# start with torch (about 3 s on the 2-core CI machine), so the rest of the table is slow.
FAST = {
    name: CASES[name]
    for name in (
        "missing json",
        "image folder one level off",
        "device gpu",
        "convert: output exists",
        "demo: output is input",
        "plot_metrics: missing folder",
        "compare_losses: unknown dataset",
    )
}
SLOW = {
    **{name: case for name, case in CASES.items() if name not in FAST},
    **WITH_A_MODEL,
}


def _coco_variants(w) -> None:
    """The two-image set `good` and its broken variants, one folder each."""
    write_set(w / "good", good_files(2))
    for name, edit in {
        "invalid": lambda d: "{",
        "dup_id": lambda d: {**d, "images": d["images"] + d["images"][:1]},
        "bad_category": lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 7}]},
        "no_bbox": lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": None}]},
        "no_size": lambda d: {**d, "images": [{"id": 1, "file_name": "1.png"}]},
        "empty": lambda d: {**d, "annotations": []},
    }.items():
        ann, _ = write_set(w / name, good_files(2))
        data = edit(json.loads(open(ann).read()))
        with open(ann, "w") as f:
            f.write(data if isinstance(data, str) else json.dumps(data))
    no_bbox = w / "no_bbox" / "ann.json"
    data = json.loads(no_bbox.read_text())
    del data["annotations"][0]["bbox"]
    no_bbox.write_text(json.dumps(data))
    write_set(w / "swapped", good_files(2), sizes={1: (48, 64)})
    files = good_files(2)
    files["2.png"] = b"not a png"
    write_set(w / "corrupt", files)


def _files(w) -> None:
    """Config files with mistakes, plain files, a weights file and a run to resume."""
    (w / "tabs.yaml").write_text(f"_BASE_: {CONFIG}\nSOLVER:\n\tMAX_ITER: 2\n")
    (w / "nobase.yaml").write_text(f"_BASE_: {w}/gone.yaml\n")
    (w / "dupkey.yaml").write_text(f"_BASE_: {CONFIG}\nSOLVER:\n  MAX_ITER: 2\n  MAX_ITER: 3\n")
    (w / "notes.txt").write_text("not a video, not a folder")
    (w / "empty_dir").mkdir()
    cfg = load_config(CONFIG, TINY)
    model = build_detector(cfg)
    torch.save({"model": model.state_dict()}, w / "m.pth")
    Checkpointer(model, save_dir=str(w / "run"), save_to_disk=True).save(
        "model_0000005", iteration=5
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    _coco_variants(w)
    _files(w)
    return w


def snapshot(folder) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file under `folder` but log.txt (a run's log, which
    a tool given that OUTPUT_DIR appends to by design)."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            if f == "log.txt":
                continue
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def run_case(case: Case, world, out, *extra: str) -> subprocess.CompletedProcess:
    argv = [a.replace("{w}", str(world)).replace("{o}", str(out)) for a in case.argv]
    env = checkout_env(DRDET_DATASETS=str(out / "datasets"), OMP_NUM_THREADS="1")
    env.pop("DRDET_DEBUG", None)
    script = os.path.join(ROOT, "tools", f"{case.tool}.py")
    return subprocess.run(
        [sys.executable, script, *argv, *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=out,
        timeout=600,
    )


def run_all(cases: dict[str, Case], world, tmp) -> dict[str, tuple]:
    """Runs the cases two at a time; {name: (completed process, output folder)}, and checks
    that no file of the world changed."""
    before = snapshot(world)
    outs = {}
    for i, name in enumerate(cases):
        outs[name] = tmp / f"case{i}"
        outs[name].mkdir()
    with ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(run_case, c, world, outs[n]) for n, c in cases.items()}
        results = {n: (f.result(), outs[n]) for n, f in futures.items()}
    assert snapshot(world) == before, "a tool changed a file of the user's"
    return results


@pytest.fixture(scope="module")
def fast_results(world, tmp_path_factory):
    return run_all(FAST, world, tmp_path_factory.mktemp("fast"))


def check(case: Case, proc: subprocess.CompletedProcess, world, out) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    message = proc.stderr
    for name in case.names:
        name = name.replace("{w}", str(world)).replace("{o}", str(out))
        assert name in message, f"{name!r} not in {message!r}"


@pytest.mark.parametrize("name", list(FAST))
def test_user_mistake(name, fast_results, world):
    proc, out = fast_results[name]
    check(FAST[name], proc, world, out)


@pytest.fixture(scope="module")
def slow_results(world, tmp_path_factory):
    return run_all(SLOW, world, tmp_path_factory.mktemp("slow"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW))
def test_more_user_mistakes(name, slow_results, world):
    proc, out = slow_results[name]
    check(SLOW[name], proc, world, out)


def test_debug_brings_the_traceback_back(world, tmp_path):
    proc = run_case(CASES["missing json"], world, tmp_path, "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert f"{world}/nope.json" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("world_size, ok", [(1, True), (2, True), (3, False), (4, False)])
def test_batch_must_split_over_the_processes(world_size, ok):
    """SOLVER.IMS_PER_BATCH 6 (and TEST.IMS_PER_BATCH 2): a reference split by hand."""
    from drdet.engine.defaults import check_batch_split
    from drdet.utils.errors import UserValueError

    cfg = load_config(CONFIG, ["SOLVER.IMS_PER_BATCH", "6", "TEST.IMS_PER_BATCH", "2"])
    if ok:
        check_batch_split(cfg, world_size)
        return
    with pytest.raises(UserValueError) as info:
        check_batch_split(cfg, world_size)
    key = "SOLVER.IMS_PER_BATCH" if 6 % world_size else "TEST.IMS_PER_BATCH"
    assert key in str(info.value) and f"{world_size} processes" in str(info.value)


@pytest.mark.usefixtures("synthetic_datasets_root")
def test_quiet_mistakes_are_warned_about(tmp_path):
    """--resume into a folder without a checkpoint and SOLVER.STEPS beyond SOLVER.MAX_ITER still
    train (a scheduler may pass --resume to every attempt; the tests keep one learning rate so),
    but each is a WARNING in the run's log naming the folder or the steps; the run starts from
    MODEL.WEIGHT, not from scratch."""
    from tool_loader import load_tool

    out = tmp_path / "typo"
    opts = tiny_overrides("synthetic:2:0:128", "", max_iter=1, overrides=SMALL_HEAD)
    weights = str(tmp_path / "start.pth")
    torch.save({"model": build_detector(load_config(CONFIG, opts)).state_dict()}, weights)
    load_tool("train_net").main(
        ["--config-file", CONFIG, "--skip-test", "--resume", *opts, "MODEL.WEIGHT", weights]
        + ["SOLVER.STEPS", "(1, 5)", "OUTPUT_DIR", str(out)]
    )
    log = (out / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert any("--resume" in w and str(out) in w and "no last_checkpoint" in w for w in warnings)
    assert f"Loading checkpoint from {weights}" in log  # the new run starts from MODEL.WEIGHT
    assert any("SOLVER.STEPS (1, 5): 1, 5 at or beyond SOLVER.MAX_ITER 1" in w for w in warnings)
    assert (out / "model_final.pth").is_file()


def test_read_only_output_dir_is_named(tmp_path, monkeypatch):
    """An OUTPUT_DIR on a read-only disk (simulated: these tests may run as root, for whom a
    chmod does not forbid writing): an error naming the key, the folder and the reason."""
    import errno

    from drdet.engine import defaults
    from drdet.utils.errors import UserValueError

    target = str(tmp_path / "ro" / "run")

    def read_only(path, exist_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(defaults.os, "makedirs", read_only)
    with pytest.raises(UserValueError) as info:
        defaults.make_output_dir(target)
    assert f"OUTPUT_DIR {target}" in str(info.value)
    assert os.strerror(errno.EROFS) in str(info.value)


def test_nan_advice_does_not_assume_a_checkpoint():
    """The non-finite loss message names the iteration, the term and the images, and asks for
    --resume only once a checkpoint exists (the first at SOLVER.CHECKPOINT_PERIOD)."""
    from drdet.engine.train_step import NonFiniteLossError, check_finite

    loss = {"loss_reg": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLossError) as info:
        check_finite(3, {"loss_reg": float("nan")}, loss, [{"image_id": 7}])
    message = str(info.value)
    assert "iteration 3" in message and "loss_reg" in message and "[7]" in message
    assert "resume from the last checkpoint" not in message
    assert "SOLVER.CHECKPOINT_PERIOD" in message
