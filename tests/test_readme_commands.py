"""Every command of the README's ```bash blocks, run as written, in order, in a scratch folder.

The commands are read from README.md here, so the README and this test cannot drift: a new
command of an unknown kind fails the test until this file says how to run it. What is changed:
- placeholders (CFG, ``...``, model_final.pth, images/ ...) become real files: the table
  PLACEHOLDERS;
- tiny overrides are appended so that each command takes seconds on a CPU (TINY: synthetic
  data of 128 px, 2 iterations; EXTRA: each tool's small-size flags);
- torchrun runs 2 processes instead of 8 (on the CPU, with gloo), --standalone;
- ``make test`` (this suite itself) and ``make demo`` (10 min of training, measured in the
  README) are not run: MAKE_NOT_RUN.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers.tiny import tiny_overrides  # tests/ is on sys.path under pytest
from tool_loader import checkout_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

MAKE_NOT_RUN = {
    "make test": "the test suite itself",
    "make demo": "10 minutes of training; its AP is measured in the README",
    "make compare": "tools/compare_losses.py at the demo's 600 iterations per loss "
    "(the README's next commands run the same tool, tiny)",
}
R50 = "configs/dr_retina/dr_R-50-FPN_1x.yaml"
PLACEHOLDERS = [  # (regex, replacement), applied in order
    (r"--nproc_per_node=8", "--nproc_per_node=2"),
    (r"--config-file \.\.\.", f"--config-file {R50}"),
    (r"MODEL\.WEIGHT \.\.\.", "MODEL.WEIGHT out/dr_r50/model_final.pth"),
    (r"demo\.py --config-file CFG", f"demo.py --config-file {R50}"),  # the model's config
    (r"--config-file CFG", "--config-file configs/synthetic/dr_R-18-FPN_synthetic.yaml"),
    (r"--config-file DR\.yaml", f"--config-file {R50}"),
    (r"--config-file FOCAL\.yaml", "--config-file configs/retinanet/retinanet_R-50-FPN_1x.yaml"),
    (r"MODEL\.WEIGHT model_final\.pth", "MODEL.WEIGHT out/dr_r50/model_final.pth"),
    (r"--weights (dr|focal)\.pth", "--weights out/dr_r50/model_final.pth"),
    (r"--dataset coco:train\.json:images", "--dataset synthetic:8:0:128"),
    (r"--test-dataset coco:val\.json:images", "--test-dataset synthetic:2:1:128"),
    (r"--num-gpus 8", "--num-gpus 1"),
    (r"--max-iter 300", "--max-iter 2"),
]
TINY = tiny_overrides(max_iter=2, overrides={"MODEL.NUM_CLASSES": 6})
EXTRA = {  # tool -> arguments appended (after TINY for the tools that take overrides)
    "train_net.py": TINY + ["MODEL.WEIGHT", ""],  # no ImageNet file here
    "test_net.py": TINY + ["TEST.BBOX_AUG.SCALES", "(96, 128)"],  # ignored unless ENABLED
    "demo.py": TINY,
    "plot_score_distribution.py": TINY + ["--num-images", "2", "--num-background", "1000"],
    "analyze_model.py": TINY,
    "benchmark_data.py": TINY
    + [
        "--synthetic-images",
        "4",
        "--synthetic-size",
        "128",
        "--images",
        "4",
        "--workers",
        "0",
        "--warmup",
        "1",
    ],
    "benchmark_ops.py": ["--quick", "--device", "cpu", "--reps", "1", "--repeat", "1"],
    "benchmark_model.py": [
        "--device",
        "cpu",
        "--parts",
        "inference",
        "--size",
        "128",
        "128",
        "--batch",
        "1",
        "--warmup",
        "0",
        "--reps",
        "1",
    ],
    "plot_metrics.py": [],
    "export_model.py": TINY,
    "compare_losses.py": ["--max-iter", "2", "--score-images", "2"]
    + tiny_overrides(overrides={"MODEL.WEIGHT": "", "MODEL.NUM_CLASSES": 6}),
}


def readme_commands(path: str = README):
    """The shell commands of the ```bash blocks of `path`, in order: continuation lines joined,
    comments dropped, `a; b` split."""
    text = open(path).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            commands.extend(c.strip() for c in line.split(";") if c.strip())
    return commands


def command_argv(command: str):
    """The argv to run for one README command (None for MAKE_NOT_RUN), with PLACEHOLDERS
    replaced and EXTRA appended."""
    if command in MAKE_NOT_RUN:
        return None
    for pattern, replacement in PLACEHOLDERS:
        command = re.sub(pattern, replacement, command)
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
        script = argv[1]
    elif argv[0] == "torchrun":
        # --standalone: a free port, so that parallel test runs do not collide.
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"] + argv[1:]
        script = next(a for a in argv if a.endswith(".py"))
    else:
        raise AssertionError(
            f"README command of an unknown kind: {command!r}; say in "
            "tests/test_readme_commands.py how to run it"
        )
    tool = os.path.basename(script)
    assert tool in EXTRA, f"README runs {tool}: add its small-size arguments to EXTRA"
    extra = EXTRA[tool]
    if tool == "train_net.py" and "MODEL.WEIGHT" in argv:  # fine-tuning: keep its weights
        extra = extra[: extra.index("MODEL.WEIGHT")] + extra[extra.index("MODEL.WEIGHT") + 2 :]
        # The R-50 it starts from had 2 steps at lr 0.01 without warm-up: its box regression
        # is off by ~1e16 and more steps at lr 0.01 (or 0.001) give NaN; 1e-4 stays finite.
        extra = extra + ["SOLVER.BASE_LR", "0.0001"]
    return argv + extra


def test_readme_commands_are_all_known():
    commands = readme_commands()
    assert any("--resume" in c for c in commands) and len(commands) >= 10
    for command in commands:
        command_argv(command)  # raises for an unknown kind of command or tool


def _scratch_folder(tmp_path):
    """The repository's configs and tools as seen from a scratch working folder, plus the
    files the README's commands assume (images/ for the demo)."""
    for name in ("configs", "tools"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(
        str(tmp_path / "images" / "a.jpg"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    )
    (tmp_path / "out").mkdir()
    os.symlink("dr_r50", tmp_path / "out" / "focal_r50")  # plot_metrics compares two runs


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    _scratch_folder(tmp_path)
    env = checkout_env(
        DRDET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1"
    )
    ran = []
    for command in readme_commands():
        argv = command_argv(command)
        if argv is None:
            continue
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"README command failed: {command}\nran: {shlex.join(argv)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        ran.append(command)
    assert os.path.isfile(tmp_path / "out" / "dr_r50" / "model_final.pth")
    tuned = torch.load(tmp_path / "out" / "my_classes" / "model_final.pth", weights_only=True)
    assert tuned["classes"]["num_classes"] == 5  # fine-tuned from out/dr_r50 (README)
    assert os.path.isfile(tmp_path / "vis" / "detections.json")
    assert os.path.isfile(tmp_path / "scores.png") and os.path.isfile(tmp_path / "curves.png")
    assert len(ran) == len(readme_commands()) - len(MAKE_NOT_RUN)
    shutil.rmtree(tmp_path / "datasets", ignore_errors=True)
