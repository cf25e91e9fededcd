"""Config: independent copies, strict merges whose errors name the key, _BASE_, validation,
the DR lambda mapping, and every yaml under configs/ loads, validates and builds a backbone."""

import glob
import math
import os

import pytest
import torch

from drdet.config import get_cfg, validate_cfg
from drdet.modeling.losses.dr import dr_loss_lambdas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.RETINANET.LOSS_TYPE = "DR"
    a.INPUT.PIXEL_MEAN[0] = 0.0  # a mutable list must not be shared either
    assert b.MODEL.RETINANET.LOSS_TYPE == "FOCAL"
    assert get_cfg().INPUT.PIXEL_MEAN[0] == pytest.approx(102.9801)


def test_defaults_are_maskrcnn_benchmark_retinanet_and_dr_defaults():
    cfg = get_cfg()
    r = cfg.MODEL.RETINANET
    assert (r.PRIOR_PROB, r.INFERENCE_TH, r.LOSS_TYPE) == (0.01, 0.05, "FOCAL")
    assert cfg.MODEL.NUM_CLASSES == 81 and cfg.MODEL.FPN.USE_C5
    assert cfg.MODEL.ANCHOR_GENERATOR.CONVENTION == "exact"
    assert (cfg.MODEL.FOCAL_LOSS.ALPHA, cfg.MODEL.FOCAL_LOSS.GAMMA) == (0.25, 2.0)
    assert tuple(r.ANCHOR_SIZES) == (32, 64, 128, 256, 512)
    d = cfg.MODEL.DR_LOSS
    assert d.NEG_LAMBDA == pytest.approx(0.1 / math.log(3.5))
    assert (d.L, d.MARGIN, d.TAU, d.GROUPING) == (6.0, 0.5, 4.0, "image")
    validate_cfg(cfg)
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


def test_merge_from_list_unknown_key_names_it():
    with pytest.raises(KeyError, match=r"MODEL\.RETINANET\.NOT_A_KEY"):
        get_cfg().merge_from_list(["MODEL.RETINANET.NOT_A_KEY", "1"])
    with pytest.raises(KeyError, match=r"MODEL\.NOPE"):
        get_cfg().merge_from_list(["MODEL.NOPE.X", "1"])


def test_merge_from_list_wrong_type_names_it():
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_ITER"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER", "0.5"])
    with pytest.raises(ValueError, match=r"MODEL\.FPN\.USE_C5"):
        get_cfg().merge_from_list(["MODEL.FPN.USE_C5", "1"])
    with pytest.raises(ValueError, match=r"MODEL\.FPN\.USE_C5"):  # the old key names the new
        get_cfg().merge_from_list(["MODEL.RETINANET.USE_C5", "1"])
    with pytest.raises(ValueError, match="odd"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER"])


def test_merge_from_list_coerces_literals():
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.BASE_LR",
            "1",
            "INPUT.MIN_SIZE_TRAIN",
            "[640, 800]",
            "MODEL.RETINANET.LOSS_TYPE",
            "DR",
            "OUTPUT_DIR",
            "123",
        ]
    )
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 800)
    assert cfg.MODEL.RETINANET.LOSS_TYPE == "DR"
    assert cfg.OUTPUT_DIR == "123"


def test_merge_from_file_unknown_key_and_wrong_type_name_it(tmp_path):
    bad_key = _write(tmp_path, "a.yaml", "MODEL:\n  RESNETS:\n    DEPTH: 50\n")
    with pytest.raises(KeyError, match=r"MODEL\.RESNETS\.DEPTH"):
        get_cfg().merge_from_file(bad_key)
    bad_type = _write(tmp_path, "b.yaml", 'SOLVER:\n  IMS_PER_BATCH: "sixteen"\n')
    with pytest.raises(ValueError, match=r"SOLVER\.IMS_PER_BATCH"):
        get_cfg().merge_from_file(bad_type)
    group_as_value = _write(tmp_path, "c.yaml", "MODEL:\n  DR_LOSS: 3\n")
    with pytest.raises(ValueError, match=r"MODEL\.DR_LOSS"):
        get_cfg().merge_from_file(group_as_value)


def test_yaml_is_loaded_safely(tmp_path):
    path = _write(tmp_path, "evil.yaml", "OUTPUT_DIR: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(Exception, match="constructor|tag"):
        get_cfg().merge_from_file(path)


def test_base_inheritance_is_recursive_and_relative(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path,
        "base.yaml",
        "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 10\nMODEL:\n  RETINANET:\n    NUM_CLASSES: 5\n",
    )
    _write(tmp_path, "mid.yaml", "_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 20\n")
    child = _write(
        tmp_path / "sub",
        "child.yaml",
        "_BASE_: ../mid.yaml\nMODEL:\n  RETINANET:\n    LOSS_TYPE: DR\n",
    )
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.SOLVER.BASE_LR == 0.02  # from the grandparent
    assert cfg.SOLVER.MAX_ITER == 20  # the parent overrides the grandparent
    assert cfg.MODEL.NUM_CLASSES == 5 and cfg.MODEL.RETINANET.LOSS_TYPE == "DR"


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.RETINANET.LOSS_TYPE", "dr"),
        ("MODEL.DR_LOSS.SMOOTHING", "softplus"),
        ("MODEL.DR_LOSS.PAIRING", "all"),
        ("MODEL.DR_LOSS.GROUPING", "gpu"),
        ("MODEL.RESNETS.NORM", "LN"),
        ("MODEL.BACKBONE.CONV_BODY", "R-50-C4"),
        ("MODEL.BACKBONE.FREEZE_CONV_BODY_AT", "6"),
        ("MODEL.DR_LOSS.H_NEG", "0.5"),
        ("MODEL.DR_LOSS.NEG_LAMBDA", "0.0"),
        ("MODEL.DR_LOSS.POS_LAMBDA", "-1.0"),
        ("MODEL.DR_LOSS.L", "0.0"),
        ("MODEL.DR_LOSS.TAU", "0.0"),
        ("MODEL.DR_LOSS.RHO", "0.0"),
        ("MODEL.DR_LOSS.MARGIN", "-0.1"),
        ("MODEL.DR_LOSS.H_POS", "1.0"),
        ("MODEL.ANCHOR_GENERATOR.CONVENTION", "detectron"),
        ("SOLVER.WARMUP_METHOD", "exp"),
        ("SOLVER.LR_SCHEDULER", "poly"),
        ("MODEL.RETINANET.PRIOR_PROB", "1.0"),
        ("MODEL.RETINANET.BG_IOU_THRESHOLD", "0.6"),
        ("MODEL.RESNETS.RES5_DILATION", "2"),
        ("SOLVER.STEPS", "(80000, 60000)"),
    ],
)
def test_validate_rejects_bad_values_naming_the_key(key, value):
    cfg = get_cfg()
    if key.startswith("MODEL.DR_LOSS."):  # a loss's keys are checked when the config uses it
        cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "DR"])
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_cfg(cfg)


def test_basic_block_bodies_reject_groups():
    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN-RETINANET", "MODEL.RESNETS.NUM_GROUPS", "32"]
    )
    with pytest.raises(ValueError, match=r"MODEL\.RESNETS\.NUM_GROUPS"):
        validate_cfg(cfg)


def test_dr_loss_config_errors_come_from_the_params_object():
    # validate_cfg reports DRLossParams' own check under the config key: same rule, one place.
    from drdet.layers import DRLossParams

    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        DRLossParams(tau=0.0)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "DR", "MODEL.DR_LOSS.TAU", "0.0"])
    with pytest.raises(ValueError, match=r"MODEL\.DR_LOSS\.TAU = 0\.0 is invalid: must be"):
        validate_cfg(cfg)


def test_enumerations_come_from_the_implementing_modules(monkeypatch):
    """The checks read the allowed values from the modules that implement them: a value added
    there is accepted, with no list in drdet/config/ to edit."""
    import drdet.layers.misc
    import drdet.modeling.backbone.build as backbone_build
    import drdet.solver.build as solver_build
    from drdet.solver import lr_scheduler

    for key, value, module, name, implemented in (
        ("MODEL.RESNETS.NORM", "LN", backbone_build, "NORMS", drdet.layers.misc.NORMS),
        (
            "SOLVER.WARMUP_METHOD",
            "exp",
            solver_build,
            "WARMUP_METHODS",
            lr_scheduler.WARMUP_METHODS,
        ),
    ):
        cfg = get_cfg()
        cfg.merge_from_list([key, value])
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            validate_cfg(cfg, freeze=False)
        monkeypatch.setattr(module, name, (*implemented, value))
        validate_cfg(cfg)


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.RETINANET_ON", "True"),
        ("MODEL.RETINANET.STRADDLE_THRESH", "-1"),
        ("TEST.EXPECTED_RESULTS", "[]"),
    ],
)
def test_removed_keys_load_with_a_warning(tmp_path, caplog, key, value):
    cfg = get_cfg()
    with caplog.at_level("WARNING", logger="drdet.config.config"):
        cfg.merge_from_list([key, value, "SOLVER.BASE_LR", "0.02"])
    assert cfg.SOLVER.BASE_LR == 0.02
    assert f"{key} is no longer used and is ignored" in caplog.text
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node[part]
    assert parts[-1] not in node  # the key is gone from the defaults
    caplog.clear()
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1]))
    text += f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\nSOLVER:\n  MAX_ITER: 7\n"
    cfg = get_cfg()
    with caplog.at_level("WARNING", logger="drdet.config.config"):
        cfg.merge_from_file(_write(tmp_path, "old.yaml", text))
    assert cfg.SOLVER.MAX_ITER == 7
    assert f"{key} is no longer used and is ignored" in caplog.text
    with pytest.raises(KeyError, match="MODEL.RETINANET.STRADDLE"):
        get_cfg().merge_from_list(["MODEL.RETINANET.STRADDLE", "0"])


def test_dr_loss_lambdas_follow_the_papers_h_mapping():
    cfg = get_cfg()
    assert dr_loss_lambdas(cfg) == pytest.approx((1.0, 0.1 / math.log(3.5)))
    cfg.merge_from_list(["MODEL.DR_LOSS.H_POS", "20", "MODEL.DR_LOSS.H_NEG", str(math.e)])
    pos, neg = dr_loss_lambdas(cfg)
    assert pos == pytest.approx(1.0 / math.log(20.0))
    assert neg == pytest.approx(0.1)  # h- = e gives lambda- = 0.1 (Table 1, first row)


def test_config_glob_is_not_empty():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    for required in (
        "dr_retina/dr_R-50-FPN_1x.yaml",
        "dr_retina/dr_R-101-FPN_2x.yaml",
        "dr_retina/dr_X-101-32x8d-FPN_1.5x.yaml",
        "dr_retina/dr_R-50-FPN_1x_input_400.yaml",
        "retinanet/retinanet_R-50-FPN_1x.yaml",
        "synthetic/dr_R-18-FPN_synthetic.yaml",
    ):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_loads_and_validates(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    validate_cfg(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and (
        "dr_retina" in path or "ablations" in path or "synthetic/dr_" in path
    ):
        r = cfg.MODEL.RETINANET
        assert r.LOSS_TYPE == "DR" and r.PRIOR_PROB == 0.5
        assert (r.FG_IOU_THRESHOLD, r.BG_IOU_THRESHOLD) == (0.5, 0.5)


def test_paper_settings_of_the_main_configs():
    def load(rel):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", rel))
        return cfg

    r50 = load("dr_retina/dr_R-50-FPN_1x.yaml")
    assert r50.MODEL.RETINANET.INFERENCE_TH == 0.2 and r50.SOLVER.MAX_ITER == 90000
    r101 = load("dr_retina/dr_R-101-FPN_2x.yaml")
    assert r101.MODEL.RETINANET.INFERENCE_TH == 0.1 and r101.SOLVER.MAX_ITER == 180000
    assert r101.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    x101 = load("dr_retina/dr_X-101-32x8d-FPN_1.5x.yaml")
    assert (x101.MODEL.RESNETS.NUM_GROUPS, x101.MODEL.RESNETS.WIDTH_PER_GROUP) == (32, 8)
    assert x101.SOLVER.MAX_ITER == 135000
    focal = load("retinanet/retinanet_R-50-FPN_1x.yaml")
    assert focal.MODEL.RETINANET.LOSS_TYPE == "FOCAL" and focal.MODEL.RETINANET.PRIOR_PROB == 0.01
    assert focal.MODEL.RETINANET.BG_IOU_THRESHOLD == 0.4


def test_synthetic_config_builds_a_cpu_backbone():
    from drdet.modeling.backbone import build_backbone

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml"))
    validate_cfg(cfg)
    model = build_backbone(cfg)
    assert all(p.requires_grad for p in model.parameters())  # trains from scratch
    size = cfg.INPUT.MIN_SIZE_TRAIN[0]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    assert [f.shape[-1] for f in feats] == [size // s for s in (8, 16, 32, 64, 128)]
