"""The tools' command lines: flags before, between or after the KEY VALUE overrides; a flag-like
word that is not a flag says where flags go; errors about the user's input print their message
alone (exit status 2), with the traceback under --debug or DRDET_DEBUG=1; bugs keep theirs."""

import os
import subprocess
import sys

import pytest
from tool_loader import (  # tests/tool_loader.py (tests/ is on sys.path under pytest)
    checkout_env,
    load_tool,
)

from drdet.engine.defaults import load_config
from drdet.utils.errors import (
    EXIT_USER_ERROR,
    UserInputError,
    UserKeyError,
    UserValueError,
    run_main,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")
OVERRIDES = ["OUTPUT_DIR", "out", "MODEL.DEVICE", "cpu"]


def test_train_net_takes_flags_after_the_overrides():
    # The README's resume command, as written.
    args = load_tool("train_net").parse_args(["--config-file", CONFIG] + OVERRIDES + ["--resume"])
    assert args.resume and args.opts == OVERRIDES
    args = load_tool("train_net").parse_args(
        [
            "--config-file",
            CONFIG,
            "OUTPUT_DIR",
            "out",
            "--resume",
            "MODEL.DEVICE",
            "cpu",
            "--skip-test",
        ]
    )
    assert args.resume and args.skip_test and args.opts == OVERRIDES
    args = load_tool("train_net").parse_args(["--resume"] + OVERRIDES + ["--config-file", CONFIG])
    assert args.resume and args.config_file == CONFIG and args.opts == OVERRIDES


@pytest.mark.parametrize(
    "tool, argv, flag, value",
    [
        (
            "test_net",
            ["--config-file", CONFIG] + OVERRIDES + ["--allow-pickle"],
            "allow_pickle",
            True,
        ),
        (
            "analyze_model",
            ["--config-file", CONFIG] + OVERRIDES + ["--input-size", "64", "96"],
            "input_size",
            [64, 96],
        ),
        ("benchmark_data", OVERRIDES + ["--images", "4", "--config-file", CONFIG], "images", 4),
        (
            "demo",
            ["--config-file", CONFIG, "--input", "a.jpg", "--output", "vis"]
            + OVERRIDES
            + ["--confidence-threshold", "0.3"],
            "confidence_threshold",
            0.3,
        ),
        (
            "plot_score_distribution",
            ["--config-file", CONFIG, "--weights", "w.pth"] + OVERRIDES + ["--output", "s.png"],
            "output",
            "s.png",
        ),
    ],
)
def test_every_tool_with_overrides_takes_flags_anywhere(tool, argv, flag, value):
    args = load_tool(tool).parse_args(argv)
    assert getattr(args, flag) == value
    assert args.opts == OVERRIDES


def test_demo_input_list_ends_at_a_config_key(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    args = load_tool("demo").parse_args(
        ["--config-file", CONFIG, "--output", "vis", "--input", str(image), "MODEL.WEIGHT", "w.pth"]
    )
    assert args.input == [str(image)] and args.opts == ["MODEL.WEIGHT", "w.pth"]


def test_plot_score_distribution_keeps_its_opts_flag():
    args = load_tool("plot_score_distribution").parse_args(
        [
            "--config-file",
            CONFIG,
            "--weights",
            "w.pth",
            "--output",
            "s.png",
            "--opts",
            "MODEL.DEVICE",
            "cpu",
            "--seed",
            "3",
            "OUTPUT_DIR",
            "out",
        ]
    )
    assert args.opts == ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", "out"] and args.seed == 3


def test_unknown_flag_says_where_flags_go(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool("train_net").parse_args(["--config-file", CONFIG] + OVERRIDES + ["--restart"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--restart" in err and "--resume" in err and "before, between or after" in err


def test_flag_among_overrides_given_to_load_config_is_named():
    with pytest.raises(UserValueError, match="'--resume' is a flag"):
        load_config(CONFIG, ["OUTPUT_DIR", "out", "--resume", "x"])
    with pytest.raises(ValueError, match="odd list"):  # the existing message stays
        load_config(CONFIG, ["OUTPUT_DIR"])


def test_config_errors_are_user_errors_and_keep_their_type():
    with pytest.raises(UserKeyError, match="Unknown config key: SOLVER.NOPE"):
        load_config(CONFIG, ["SOLVER.NOPE", "1"])
    with pytest.raises(KeyError):
        load_config(CONFIG, ["SOLVER.NOPE", "1"])
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        load_config("nope.yaml")


def _main_raising(err):
    def main(argv):
        raise err

    return main


def test_run_main_prints_user_errors_alone(capsys, monkeypatch):
    monkeypatch.delenv("DRDET_DEBUG", raising=False)
    code = run_main(_main_raising(UserKeyError("Unknown config key: X.Y")), [], prog="tool")
    assert code == EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == "tool: error: Unknown config key: X.Y\n"
    with pytest.raises(UserInputError):
        run_main(_main_raising(UserValueError("bad")), ["--debug"])
    monkeypatch.setenv("DRDET_DEBUG", "1")
    with pytest.raises(UserInputError):
        run_main(_main_raising(UserValueError("bad")), [])


def test_run_main_keeps_bugs_and_passes_argv(monkeypatch):
    monkeypatch.delenv("DRDET_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        run_main(_main_raising(ZeroDivisionError("bug")), [])
    seen = []
    assert run_main(seen.append, ["a", "--debug", "b"]) == 0
    assert seen == [["a", "b"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["SOLVER.NOPE", "1"], "test_net.py: error: Unknown config key: SOLVER.NOPE"),
        (
            ["MODEL.WEIGHT", "missing.pth"],
            "test_net.py: error: checkpoint file not found: missing.pth",
        ),
    ],
)
def test_test_net_user_error_has_no_traceback(tmp_path, argv, message):
    env = {k: v for k, v in checkout_env().items() if k != "DRDET_DEBUG"}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "test_net.py"),
        "--config-file",
        CONFIG,
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.DEVICE",
        "cpu",
    ] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_unknown_dataset_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DRDET_DEBUG", raising=False)
    train_net = load_tool("train_net")
    argv = [
        "--config-file",
        CONFIG,
        "--skip-test",
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TRAIN",
        "('no_such_set',)",
    ]
    assert run_main(train_net.main, argv, prog="train_net.py") == 2
    assert "train_net.py: error: unknown dataset 'no_such_set'" in capsys.readouterr().err
