"""A tool never writes over its input or a run's record: demo.py refuses an --output that is
the folder of its --input (the drawn images would replace the photos), and test_net.py writes
its config beside its results (OUTPUT_DIR/inference/config.yaml), not over the training run's
OUTPUT_DIR/config.yaml."""

import os

import cv2
import numpy as np
import pytest
import yaml
from helpers.tiny import SMALL_HEAD, STEADY, demo_argv, saved_detector, tiny_overrides
from helpers.tiny import SYNTHETIC_CONFIG as CONFIG
from tool_loader import load_tool

from drdet.engine.defaults import load_config
from drdet.utils.errors import UserInputError

demo = load_tool("demo")
test_net = load_tool("test_net")

pytestmark = pytest.mark.usefixtures("synthetic_datasets_root")

TINY = tiny_overrides("synthetic:4:0:128", "synthetic:2:1:128", overrides={**SMALL_HEAD, **STEADY})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return saved_detector(tmp_path_factory.mktemp("ckpt"), TINY)


def snapshot(folder) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(folder)
        for f in files
    }


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("how", ["folder", "link", "file"])
def test_demo_refuses_to_draw_over_its_input(photos, tmp_path, weights, how):
    """--output is the --input folder (as given, through a symlink, or the folder of an input
    file): an error naming both, and no file in the folder changes."""
    inputs, output = [str(photos)], str(photos)
    if how == "link":
        os.symlink(photos, tmp_path / "same")
        output = str(tmp_path / "same")
    elif how == "file":
        inputs = [str(photos / "a.png")]
    before = snapshot(photos)
    argv = demo_argv(["--input", *inputs], output, "0.3", TINY + ["MODEL.WEIGHT", weights])
    with pytest.raises(UserInputError) as info:
        demo.main(argv)
    assert f"--output {output!r}" in str(info.value) and repr(inputs[0]) in str(info.value)
    assert snapshot(photos) == before


def test_demo_draws_into_another_folder(photos, tmp_path, weights):
    """The reference: a different --output is accepted and the photos stay as they were."""
    before = snapshot(photos)
    out = tmp_path / "drawn"
    demo.main(demo_argv(["--input", str(photos)], out, "0.3", TINY + ["MODEL.WEIGHT", weights]))
    assert sorted(os.listdir(out)) == ["a.png", "b.jpg", "detections.json"]
    assert snapshot(photos) == before


def test_test_net_keeps_the_runs_config(tmp_path, weights):
    """A training run's config.yaml survives an evaluation with test-time settings in the same
    OUTPUT_DIR; the evaluation's config (with those settings) lies beside its results."""
    run = tmp_path / "run"
    run.mkdir()
    record = load_config(CONFIG, TINY).dump()
    (run / "config.yaml").write_text(record)
    test_net.main(
        ["--config-file", str(run / "config.yaml"), "MODEL.WEIGHT", weights]
        + ["OUTPUT_DIR", str(run), "TEST.BBOX_AUG.ENABLED", "True"]
        + ["TEST.BBOX_AUG.SCALES", "(96,)"]
    )
    assert (run / "config.yaml").read_text() == record
    evaluated = yaml.safe_load((run / "inference" / "config.yaml").read_text())
    assert evaluated["TEST"]["BBOX_AUG"]["ENABLED"] is True
    assert evaluated["MODEL"]["WEIGHT"] == weights
    assert os.path.isfile(run / "inference" / "synthetic_2_1_128" / "metrics.json")
