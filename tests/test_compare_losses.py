"""tools/compare_losses.py: bad input, the runs it plans (against the ablation yamls loaded on
their own), the report's tables and figures, and resuming."""

import json
import os
import re

import pytest
from helpers.tiny import tiny_overrides  # tests/ is on sys.path under pytest
from tool_loader import ROOT, load_tool

from drdet.engine.defaults import load_config

compare = load_tool("compare_losses")

CONFIG = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")
TRAIN_SET, TEST_SET = "synthetic:4:0:128", "synthetic:3:1:128"
TINY = tiny_overrides(
    None,
    None,
    device=None,
    warmup_iters=None,
    overrides={"MODEL.RETINANET.NUM_CONVS": 1, "SOLVER.LOG_PERIOD": 1},
)
DATA = ["--dataset", TRAIN_SET, "--test-dataset", TEST_SET]


def _fails(argv, *patterns):
    with pytest.raises(SystemExit) as err:
        compare.main(argv)
    for pattern in patterns:
        assert re.search(pattern, str(err.value)), str(err.value)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    _fails(["--dataset", "no_such_set", "--output-dir", str(tmp_path)], "no_such_set")
    _fails(
        ["--dataset", "coco:/nowhere/a.json:/nowhere", "--output-dir", str(tmp_path)], "/nowhere"
    )
    assert not os.listdir(tmp_path)  # nothing started


def test_config_that_fixes_the_setup_or_the_loss_is_refused(tmp_path):
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  RETINANET:\n    INFERENCE_TH: 0.3\n")
    _fails(
        ["--config-file", str(fixed)] + DATA,
        str(fixed),
        "MODEL.RETINANET.INFERENCE_TH",
        "--keep-explicit",
    )
    _fails(DATA + ["MODEL.RETINANET.BG_IOU_THRESHOLD", "0.3"], "BG_IOU_THRESHOLD")
    _fails(DATA + ["MODEL.RETINANET.LOSS_TYPE", "FOCAL"], "MODEL.RETINANET.LOSS_TYPE")
    _fails(DATA + ["--losses", "DR", "NOPE"], "NOPE", "registered: .*DR")
    other = tmp_path / "other.yaml"
    other.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  META_ARCHITECTURE: Yolo\n")
    _fails(["--config-file", str(other)] + DATA, "Yolo", "declares no loss key")
    _fails(["--config-file", str(tmp_path / "missing.yaml")], "missing.yaml")
    assert not (tmp_path / "compare").exists()


def test_each_run_gets_its_loss_setup():
    args = compare.parse_args(DATA)
    runs = compare.plan_runs(args, "MODEL.RETINANET.LOSS_TYPE")
    cfgs = [load_config(CONFIG, r.opts) for r in runs]
    assert [r.label for r in runs] == ["DR", "FOCAL"]
    assert [c.MODEL.RETINANET.PRIOR_PROB for c in cfgs] == [0.5, 0.01]
    assert [c.MODEL.RETINANET.BG_IOU_THRESHOLD for c in cfgs] == [0.5, 0.4]
    assert [c.MODEL.RETINANET.INFERENCE_TH for c in cfgs] == [0.2, 0.05]


@pytest.mark.parametrize("table", ["table1", "table2", "table3"])
def test_ablation_runs_match_the_ablation_configs(table):
    """Each DR row's DR_LOSS equals that of the ablation yaml loaded by itself."""
    runs = compare.plan_runs(compare.parse_args(["--ablation", table]), "MODEL.RETINANET.LOSS_TYPE")
    rows = compare.ABLATIONS[table]["rows"]
    assert len(runs) == len(rows)
    for run, (_, yaml_name, loss, paper_ap) in zip(runs, rows):
        cfg = load_config(CONFIG, run.opts)
        assert cfg.MODEL.RETINANET.LOSS_TYPE == loss and run.paper_ap == paper_ap
        if loss == "DR":
            ref = (
                os.path.join(ROOT, "configs", "ablations", yaml_name)
                if yaml_name
                else os.path.join(ROOT, "configs", "dr_retina", "dr_R-50-FPN_1x.yaml")
            )
            assert cfg.MODEL.DR_LOSS == load_config(ref).MODEL.DR_LOSS, run.label


def test_paper_figures_match_the_ablation_headers():
    """The paper AP column against the headers of configs/ablations/*.yaml (typed separately)."""
    for table in ("table1", "table2", "table3"):
        for _, yaml_name, _, paper_ap in compare.ABLATIONS[table]["rows"]:
            if yaml_name:
                with open(os.path.join(ROOT, "configs", "ablations", yaml_name)) as f:
                    header = f.readline()
                assert f"minival AP {paper_ap}" in header, yaml_name


def test_grouping_runs():
    runs = compare.plan_runs(
        compare.parse_args(["--ablation", "grouping"]), "MODEL.RETINANET.LOSS_TYPE"
    )
    assert [load_config(CONFIG, r.opts).MODEL.DR_LOSS.GROUPING for r in runs] == ["image", "batch"]


def _parse_table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return header, [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_ablation_table_layout():
    runs = compare.plan_runs(
        compare.parse_args(["--ablation", "table3"]), "MODEL.RETINANET.LOSS_TYPE"
    )
    results = {r.name: {m: 0.1 * (k + 1) for m in compare.METRICS} for k, r in enumerate(runs)}
    results[runs[0].name]["APl"] = -1.0
    header, rows = _parse_table("\n".join(compare.ablation_table("table3", runs, results)))
    assert header[:2] == ["Pairing", "paper AP (COCO)"] and header[2] == "AP (measured)"
    assert rows[0][:3] == ["Focal", "36.1", "10.0"] and rows[0][-1] == "n/a"
    assert rows[1][:3] == ["NegOnly", "37.0", "20.0"] and rows[2][:3] == ["DR", "37.4", "30.0"]


def _png_ok(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare") / "out")
    argv = DATA + ["--max-iter", "2", "--output-dir", out, "--score-images", "2"] + TINY
    return argv, out, compare.main(argv)


@pytest.mark.slow
def test_report_contents(finished):
    _, out, results = finished
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    header, rows = _parse_table(report)
    assert header == ["metric", "DR", "FOCAL", "DR - FOCAL"]
    assert [r[0] for r in rows] == list(compare.METRICS)
    for name, label in (("dr", "DR"), ("focal", "FOCAL")):
        metrics_file = os.path.join(out, name, "inference", "synthetic_3_1_128", "metrics.json")
        with open(metrics_file) as f:
            ref = json.load(f)
        assert results[label] == ref
        column = header.index(label)
        for row in rows:
            value = ref[row[0]]
            assert row[column] == (f"{100 * value:.1f}" if value >= 0 else "n/a")
    for row in rows:
        dr, focal = results["DR"][row[0]], results["FOCAL"][row[0]]
        if min(dr, focal) >= 0:
            assert float(row[3]) == pytest.approx(100 * (dr - focal), abs=0.051)
    for png in ("scores.png", "curves.png"):
        assert f"]({png})" in report
        _png_ok(os.path.join(out, png))
    cfg = load_config(os.path.join(out, "focal", "config.yaml"))
    assert cfg.SOLVER.MAX_ITER == 2 and cfg.MODEL.RETINANET.PRIOR_PROB == 0.01


@pytest.mark.slow
def test_fcos_comparison_writes_the_report_and_figures(tmp_path):
    config = os.path.join(ROOT, "configs", "synthetic", "fcos_R-18-FPN_synthetic.yaml")
    out = str(tmp_path / "out")
    tiny = [a.replace("MODEL.RETINANET.NUM_CONVS", "MODEL.FCOS.NUM_CONVS") for a in TINY]
    argv = ["--config-file", config, "--max-iter", "2", "--output-dir", out]
    results = compare.main(DATA + argv + ["--score-images", "2"] + tiny)
    assert set(results) == {"DR", "FOCAL"}
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    for png in ("scores.png", "curves.png"):
        assert f"]({png})" in report
        _png_ok(os.path.join(out, png))
    for name, prior in (("dr", 0.5), ("focal", 0.01)):
        cfg = load_config(os.path.join(out, name, "config.yaml"))
        assert cfg.MODEL.META_ARCHITECTURE == "FCOS" and cfg.MODEL.FCOS.PRIOR_PROB == prior


@pytest.mark.slow
def test_resume_skips_finished_runs_and_continues_a_half_finished_one(finished, monkeypatch):
    argv, out, results = finished
    # A half-finished focal run: its final model and evaluation gone, its checkpoint kept.
    focal = os.path.join(out, "focal")
    os.remove(os.path.join(focal, "model_final.pth"))
    os.remove(os.path.join(focal, "inference", "synthetic_3_1_128", "metrics.json"))
    with open(os.path.join(focal, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    assert os.path.isfile(os.path.join(focal, "model_0000001.pth"))
    commands = []
    original = compare.train_command

    def recording(args, opts, resume):
        commands.append((opts, resume))
        return original(args, opts, resume)

    monkeypatch.setattr(compare, "train_command", recording)
    again = compare.main(argv)
    assert len(commands) == 1 and commands[0][1] is True  # DR skipped, focal resumed
    assert os.path.join(out, "focal") in commands[0][0]
    assert again["DR"] == results["DR"]
    with open(os.path.join(focal, "compare_stdout.log")) as f:
        assert "resuming" in f.read().lower()
    # Other settings in the same folder are refused rather than mixed in.
    _fails([a if a != "2" else "3" for a in argv], "other settings")


def test_several_gpus_launch_each_run_through_torchrun():
    args = compare.parse_args(DATA + ["--num-gpus", "4"])
    command = compare.train_command(args, ["OUTPUT_DIR", "x"], resume=True)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert command[5].endswith(os.path.join("tools", "train_net.py"))
    assert "--resume" in command and command[-2:] == ["OUTPUT_DIR", "x"]
    one = compare.train_command(compare.parse_args(DATA), [], resume=False)
    assert "torch.distributed.run" not in one and "--resume" not in one
