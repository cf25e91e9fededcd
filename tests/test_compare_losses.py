"""tools/compare_losses.py and its library drdet.engine.compare: bad input, the runs it plans
(against the ablation yamls loaded on their own), the report's tables and figures, and
resuming."""

import json
import os
import re

import pytest
from helpers.tiny import tiny_overrides  # tests/ is on sys.path under pytest
from tool_loader import ROOT, load_tool

from drdet.engine.compare import (
    ABLATIONS,
    METRICS,
    Run,
    ablation_table,
    metrics_table,
    plan_runs,
)
from drdet.engine.compare.runs import child_env
from drdet.engine.defaults import load_config
from drdet.utils.errors import UserInputError

compare = load_tool("compare_losses")

CONFIGS = os.path.join(ROOT, "configs")
CONFIG = os.path.join(CONFIGS, "synthetic", "dr_R-18-FPN_synthetic.yaml")
KEY = "MODEL.RETINANET.LOSS_TYPE"
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
    with pytest.raises((SystemExit, UserInputError)) as err:  # argparse's, or exit 2 by run_main
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
    runs = plan_runs(KEY, CONFIGS, compare.parse_args(DATA).losses)
    cfgs = [load_config(CONFIG, r.opts) for r in runs]
    assert [r.label for r in runs] == ["DR", "FOCAL"]
    assert [c.MODEL.RETINANET.PRIOR_PROB for c in cfgs] == [0.5, 0.01]
    assert [c.MODEL.RETINANET.BG_IOU_THRESHOLD for c in cfgs] == [0.5, 0.4]
    assert [c.MODEL.RETINANET.INFERENCE_TH for c in cfgs] == [0.2, 0.05]


@pytest.mark.parametrize("table", ["table1", "table2", "table3"])
def test_ablation_runs_match_the_ablation_configs(table):
    """Each DR row's DR_LOSS equals that of the ablation yaml loaded by itself."""
    runs = plan_runs(KEY, CONFIGS, ablation=table)
    rows = ABLATIONS[table]["rows"]
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
        for _, yaml_name, _, paper_ap in ABLATIONS[table]["rows"]:
            if yaml_name:
                with open(os.path.join(ROOT, "configs", "ablations", yaml_name)) as f:
                    header = f.readline()
                assert f"minival AP {paper_ap}" in header, yaml_name


def test_grouping_runs():
    runs = plan_runs(KEY, CONFIGS, ablation="grouping")
    assert [load_config(CONFIG, r.opts).MODEL.DR_LOSS.GROUPING for r in runs] == ["image", "batch"]


def _parse_table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return header, [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_ablation_table_layout():
    runs = plan_runs(KEY, CONFIGS, ablation="table3")
    results = {r.name: {m: 0.1 * (k + 1) for m in METRICS} for k, r in enumerate(runs)}
    results[runs[0].name]["APl"] = -1.0
    header, rows = _parse_table("\n".join(ablation_table("table3", runs, results)))
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
    assert [r[0] for r in rows] == list(METRICS)
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
@pytest.mark.parametrize("name,node", [("fcos", "FCOS"), ("atss", "ATSS")])
def test_fcos_and_atss_comparisons_write_the_report_and_figures(tmp_path, name, node):
    config = os.path.join(ROOT, "configs", "synthetic", f"{name}_R-18-FPN_synthetic.yaml")
    out = str(tmp_path / "out")
    tiny = [a.replace("MODEL.RETINANET.NUM_CONVS", f"MODEL.{node}.NUM_CONVS") for a in TINY]
    argv = ["--config-file", config, "--max-iter", "2", "--output-dir", out]
    results = compare.main(DATA + argv + ["--score-images", "2"] + tiny)
    assert set(results) == {"DR", "FOCAL"}
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    for png in ("scores.png", "curves.png"):
        assert f"]({png})" in report
        _png_ok(os.path.join(out, png))
    # each run has its loss's setup for this detector (DR: prior 0.5 and score exponent 0.75)
    for name, prior, exponent in (("dr", 0.5, 0.75), ("focal", 0.01, 0.5)):
        cfg = load_config(os.path.join(out, name, "config.yaml"))
        assert cfg.MODEL.META_ARCHITECTURE == node and cfg.MODEL[node].PRIOR_PROB == prior
        assert cfg.MODEL[node].CLASS_SCORE_EXPONENT == exponent


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


def test_a_run_with_its_own_seed_overrides_the_data_seed():
    plain = Run("dr", "DR", "DR", [KEY, "DR"])
    seeded = Run("dr_seed3", "DR", "DR", [KEY, "DR"], seed=3)
    assert plain.overrides() == [KEY, "DR"]
    assert seeded.overrides() == [KEY, "DR", "DATALOADER.SEED", "3"]
    assert load_config(CONFIG, seeded.overrides()).DATALOADER.SEED == 3
    assert (
        load_config(CONFIG, plain.overrides()).DATALOADER.SEED
        == load_config(CONFIG).DATALOADER.SEED
    )


def test_runs_import_the_drdet_that_planned_them(tmp_path, monkeypatch):
    """The training processes find this process's drdet first, whatever PYTHONPATH held (a
    worktree or a clone next to an installed checkout trains its own code)."""
    import subprocess
    import sys

    import drdet

    decoy = tmp_path / "decoy" / "drdet"  # a drdet later on the path
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(decoy.parent))
    find = "import importlib.util; print(importlib.util.find_spec('drdet').origin)"
    out = subprocess.run(
        [sys.executable, "-c", find], env=child_env(), cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert os.path.samefile(out.stdout.strip(), drdet.__file__)
    assert child_env()["PYTHONUNBUFFERED"] == "1"


def test_report_names_the_training_set_schedule_and_runs_without_detections(tmp_path):
    """report.md says what each run trained on and for how long (the values the runs' config
    gives), and says so when a run's 0.0 is no detection at all (an empty bbox.json)."""
    from drdet.engine.compare import write_report
    from drdet.engine.compare.plan import Comparison, Settings

    runs = [Run("dr", "DR", "DR", []), Run("focal", "FOCAL", "FOCAL", [])]
    opts = ["SOLVER.MAX_ITER", "7", "SOLVER.IMS_PER_BATCH", "3", "SOLVER.STEPS", "(5,)"]
    comparison = Comparison(
        Settings(config_file=CONFIG, output_dir=str(tmp_path)),
        "synthetic:8:0:128",
        "synthetic:2:1:128",
        7,
        runs,
        {"dr": opts, "focal": opts},
    )
    for name, boxes in (("dr", []), ("focal", [{"image_id": 1, "bbox": [0, 0, 4, 4]}])):
        folder = tmp_path / name / "inference" / "synthetic_2_1_128"
        folder.mkdir(parents=True)
        (folder / "bbox.json").write_text(json.dumps(boxes))
    results = {"dr": {m: 0.0 for m in METRICS}, "focal": {m: 0.1 for m in METRICS}}
    report = open(write_report(comparison, results, {}, 60.0)).read()
    assert "trained on `synthetic:8:0:128` for 7 iterations of 3 images" in report
    assert "steps 5," in report and "SOLVER.BASE_LR 0.01" in report
    assert "**DR made no detection**" in report and "FOCAL made no detection" not in report


def test_seeds_plan_a_run_per_loss_and_seed():
    runs = plan_runs(KEY, CONFIGS, ["DR", "FOCAL"], seeds=3)
    assert [r.name for r in runs] == [
        f"{loss}_seed{k}" for loss in ("dr", "focal") for k in range(3)
    ]
    assert [r.group for r in runs] == ["DR"] * 3 + ["FOCAL"] * 3
    assert len({r.label for r in runs}) == 6  # each run its own label in results.json
    for run in runs:
        cfg = load_config(CONFIG, run.overrides())
        assert (
            cfg.DATALOADER.SEED == int(run.name[-1]) and cfg.MODEL.RETINANET.LOSS_TYPE == run.group
        )
    assert plan_runs(KEY, CONFIGS, ["DR", "FOCAL"], seeds=1) == plan_runs(KEY, CONFIGS)
    _fails(DATA + ["--seeds", "2", "DATALOADER.SEED", "1"], "DATALOADER.SEED")


def _seed_results(dr_ap, focal_ap):
    runs = plan_runs(KEY, CONFIGS, ["DR", "FOCAL"], seeds=len(dr_ap))
    aps = list(dr_ap) + list(focal_ap)
    return runs, {r.name: {m: ap / 100 for m in METRICS} for r, ap in zip(runs, aps)}


def test_seed_table_gives_mean_min_max_and_the_difference_of_means():
    runs, results = _seed_results([30.0, 32.0, 31.0], [25.0, 26.0, 27.0])
    results[runs[4].name]["APl"] = -1.0  # undefined for one focal run
    header, rows = _parse_table("\n".join(metrics_table(runs, results)))
    assert header == [
        "metric",
        "DR (mean [min, max] of 3 seeds)",
        "FOCAL (mean [min, max] of 3 seeds)",
        "DR - FOCAL (means)",
    ]
    assert rows[0] == ["AP", "31.0 [30.0, 32.0]", "26.0 [25.0, 27.0]", "+5.0"]
    assert rows[-1] == ["APl", "31.0 [30.0, 32.0]", "n/a", "n/a"]


@pytest.mark.parametrize(
    "dr,focal,expected",
    [
        # every DR run above every focal run, 5.0 > the widest range 2.0; with the first two
        # seeds: 31.0 - 25.5 = 5.5 > 2.0, so two seeds were enough
        ([30.0, 32.0, 31.0], [25.0, 26.0, 27.0], ["+5.0 AP", "up to 2.0", "larger", "2 seeds"]),
        # the first two seeds alone overlap (30, 27 against 28, 26.5); all four do not
        (
            [30.0, 27.0, 31.0, 32.0],
            [28.0, 26.5, 25.0, 26.0],
            ["+3.6 AP", "up to 5.0", "not larger", "4 seeds"],
        ),
        ([30.0, 25.0, 28.0], [27.0, 29.0, 26.0], ["+0.3 AP", "up to 5.0", "not larger"]),
        # 38.4883 - 35.0637 = 3.4247 against 3.352: alike to one decimal, so both get two
        (
            [39.651, 39.515, 36.299],
            [34.59, 35.335, 35.266],
            ["+3.42 AP", "up to 3.35 AP", "larger", "2 seeds"],
        ),
    ],
)
def test_spread_statement_says_whether_the_seeds_tell_the_losses_apart(dr, focal, expected):
    from drdet.engine.compare.seeds import spread_statement

    runs, results = _seed_results(dr, focal)
    statement = spread_statement(runs, results)
    for text in expected:
        assert text in statement, statement
    if "not larger" not in expected:
        assert "every DR run scored above every FOCAL run" in statement
    single = plan_runs(KEY, CONFIGS)
    assert spread_statement(single, {r.name: {"AP": 0.3} for r in single}) is None


def test_seed_figure_has_a_point_per_run(tmp_path):
    from drdet.engine.compare.seeds import plot_seeds

    runs, results = _seed_results([30.0, 32.0, 31.0], [25.0, 26.0, 27.0])
    plot_seeds(runs, results, ("AP", "AP50"), str(tmp_path / "seeds.png"))
    _png_ok(tmp_path / "seeds.png")


FAKE_TRAINER = """
import json, os, sys, time
out, marks, log, fail = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
open(os.path.join(marks, os.path.basename(out)), "w").close()
deadline = time.time() + 120
while len(os.listdir(marks)) < 2:  # the first two runs wait for each other: they run at once
    if time.time() > deadline:
        sys.exit(3)
    time.sleep(0.05)
start = time.time()
time.sleep(0.3)
if os.path.basename(out) == fail:
    print("boom"); sys.exit(1)
os.makedirs(os.path.join(out, "inference", "t"))
with open(os.path.join(out, "inference", "t", "metrics.json"), "w") as f:
    json.dump({"AP": 0.5}, f)
open(os.path.join(out, "model_final.pth"), "w").close()
with open(log, "a") as f:
    f.write(json.dumps([os.path.basename(out), os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()]) + "\\n")
"""


def _scheduled(tmp_path, monkeypatch, num_gpus, per_run, fail=""):
    """Four fake runs through train_runs; returns [(run, CUDA_VISIBLE_DEVICES, start, end)]."""
    import sys

    from drdet.engine.compare import Comparison, Progress, Settings, train_runs

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "marks").mkdir()
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    log = tmp_path / "runs.jsonl"
    settings = Settings(CONFIG, str(tmp_path / "out"), num_gpus=num_gpus, gpus_per_run=per_run)
    runs = plan_runs(KEY, CONFIGS, ["DR", "FOCAL"], seeds=2)
    comparison = Comparison(settings, "s", "t", 1, runs, {r.name: [] for r in runs})

    def command(opts, resume):
        out = opts[opts.index("OUTPUT_DIR") + 1]
        return [sys.executable, str(script), out, str(tmp_path / "marks"), str(log), fail]

    results = train_runs(comparison, command, Progress(4))
    assert results == {r.name: {"AP": 0.5} for r in runs}
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_runs_are_scheduled_over_the_gpus(tmp_path, monkeypatch):
    """--num-gpus 4 --gpus-per-run 2: two runs at once (the fake's first two runs wait for each
    other), each on its own two GPUs, never two runs on one GPU at the same time."""
    record = _scheduled(tmp_path, monkeypatch, num_gpus=4, per_run=2)
    assert len(record) == 4 and {r[1] for r in record} == {"0,1", "2,3"}
    for _, _, start, end in record:
        at_once = [r for r in record if r[2] < end and start < r[3]]
        assert len(at_once) <= 2 and len({r[1] for r in at_once}) == len(at_once)


def test_a_failed_run_is_named_after_the_others_finish(tmp_path, monkeypatch):
    from drdet.engine.compare import CompareError

    with pytest.raises(CompareError, match="(?s)FOCAL seed 0.*exit 1.*boom"):
        _scheduled(tmp_path, monkeypatch, num_gpus=2, per_run=1, fail="focal_seed0")
    finished = os.listdir(tmp_path / "out")
    for name in ("dr_seed0", "dr_seed1", "focal_seed1"):
        assert os.path.isfile(tmp_path / "out" / name / "model_final.pth"), finished


def test_gpu_slots_are_disjoint_slices_of_the_visible_gpus(monkeypatch):
    from drdet.engine.compare.runs import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert gpu_slots(4, 2) == [["3", "5"], ["6", "7"]]
    assert gpu_slots(3, 1) == [["3"], ["5"], ["6"]]
    assert gpu_slots(0, 0) == [None]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_slots(4, 4) == [["0", "1", "2", "3"]]
    args = compare.parse_args(DATA + ["--num-gpus", "4", "--gpus-per-run", "2"])
    command = compare.train_command(args, [], resume=False)
    assert "--nproc_per_node=2" in command
    one = compare.parse_args(DATA + ["--num-gpus", "4", "--gpus-per-run", "1"])
    assert "torch.distributed.run" not in compare.train_command(one, [], resume=False)


def test_seed_report_has_the_spread_the_statement_and_every_run(tmp_path):
    from drdet.engine.compare import Comparison, Settings, write_report
    from drdet.engine.compare.report import write_seed_figure

    runs, results = _seed_results([30.0, 32.0, 31.0], [25.0, 26.0, 27.0])
    settings = Settings(CONFIG, str(tmp_path), seeds=3)
    comparison = Comparison(settings, "s", "t", 1, runs, {r.name: [] for r in runs})
    figures = write_seed_figure(comparison, results)
    report = (tmp_path / write_report(comparison, results, figures, 60.0)).read_text()
    assert report.startswith("# DR vs FOCAL on t")
    assert "| AP | 31.0 [30.0, 32.0] | 26.0 [25.0, 27.0] | +5.0 |" in report
    assert "every DR run scored above every FOCAL run" in report and "](seeds.png)" in report
    _png_ok(tmp_path / "seeds.png")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == {r.label: results[r.name] for r in runs} and len(saved) == 6
