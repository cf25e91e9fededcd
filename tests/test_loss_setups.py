"""Each classification loss brings its own setup (drdet/config/setups.py): every merge applies
the setup of the loss a config names under the config's explicit keys, on every merge path."""

import glob
import os

import pytest

from drdet.config import get_cfg, loss_key, loss_setup
from drdet.engine.defaults import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DR_DEMO = os.path.join(ROOT, "configs", "synthetic", "dr_R-18-FPN_synthetic.yaml")
FOCAL_DEMO = os.path.join(ROOT, "configs", "synthetic", "retinanet_R-18-FPN_synthetic.yaml")
KEYS = ("LOSS_TYPE", "PRIOR_PROB", "FG_IOU_THRESHOLD", "BG_IOU_THRESHOLD", "INFERENCE_TH", "NMS_TH")
DR = ("DR", 0.5, 0.5, 0.5, 0.2, 0.5)  # the released Dr. Retina configs
FOCAL = ("FOCAL", 0.01, 0.5, 0.4, 0.05, 0.4)  # maskrcnn-benchmark's RetinaNet

# MODEL.RETINANET's KEYS of every shipped yaml as main loaded them before the setups moved into
# the loss modules (get_cfg() + merge_from_file at commit 38277f8, recorded by hand).
BEFORE = {
    "configs/Base-DR-Retina.yaml": DR,
    "configs/Base-RetinaNet.yaml": FOCAL,
    "configs/ablations/dr_R-50-FPN_1x_hinge.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-20_hneg-3.5.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-5.5_hneg-3.5.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-e_hneg-20.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-e_hneg-3.5.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-e_hneg-5.5.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_hpos-e_hneg-e.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_logistic_L-10.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_logistic_L-4.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_logistic_L-6.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_logistic_L-8.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_negonly.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_quadratic_rho-0.2.yaml": DR,
    "configs/ablations/dr_R-50-FPN_1x_quadratic_rho-0.5.yaml": DR,
    "configs/dr_retina/dr_R-101-FPN_2x.yaml": ("DR", 0.5, 0.5, 0.5, 0.1, 0.5),
    "configs/dr_retina/dr_R-50-FPN_1x.yaml": DR,
    "configs/dr_retina/dr_R-50-FPN_1x_input_400.yaml": DR,
    "configs/dr_retina/dr_X-101-32x8d-FPN_1.5x.yaml": ("DR", 0.5, 0.5, 0.5, 0.1, 0.5),
    "configs/retinanet/retinanet_R-50-FPN_1x.yaml": FOCAL,
    "configs/synthetic/dr_R-18-FPN_synthetic.yaml": DR,
    "configs/synthetic/retinanet_R-18-FPN_synthetic.yaml": FOCAL,  # new: the focal demo
    "configs/torchvision/retinanet_resnet50_fpn_torchvision.yaml": (
        "FOCAL",
        0.01,
        0.5,
        0.4,
        0.05,
        0.5,
    ),
    "configs/voc/dr_R-50-FPN_voc07.yaml": DR,
    "configs/voc/retinanet_R-50-FPN_voc07.yaml": FOCAL,
}


# MODEL.FCOS's (LOSS_TYPE, PRIOR_PROB, INFERENCE_TH, NMS_TH) of the FCOS configs, as their yaml
# files set them explicitly before the FCOS setups were declared in the loss modules, and the
# CLASS_SCORE_EXPONENT of each loss (DR: 0.75, focal: the published 0.5; configs/fcos/README.md).
NODE_KEYS = ("LOSS_TYPE", "PRIOR_PROB", "INFERENCE_TH", "NMS_TH", "CLASS_SCORE_EXPONENT")
FCOS_BEFORE = {
    "configs/fcos/fcos_R-50-FPN_1x.yaml": ("FOCAL", 0.01, 0.2, 0.6, 0.5),
    "configs/fcos/dr_fcos_R-50-FPN_1x.yaml": ("DR", 0.5, 0.2, 0.6, 0.75),
    "configs/synthetic/fcos_R-18-FPN_synthetic.yaml": ("FOCAL", 0.01, 0.2, 0.6, 0.5),
    "configs/synthetic/dr_fcos_R-18-FPN_synthetic.yaml": ("DR", 0.5, 0.2, 0.6, 0.75),
    "configs/torchvision/fcos_resnet50_fpn_torchvision.yaml": ("FOCAL", 0.01, 0.2, 0.6, 0.5),
}
# MODEL.ATSS's, as the ATSS configs' headers and configs/atss/README.md state them: the loss's
# prior, ATSS's own threshold and NMS, the loss's CLASS_SCORE_EXPONENT.
ATSS_SETUPS = {
    "configs/atss/atss_R-50-FPN_1x.yaml": ("FOCAL", 0.01, 0.05, 0.6, 0.5),
    "configs/atss/dr_atss_R-50-FPN_1x.yaml": ("DR", 0.5, 0.05, 0.6, 0.75),
    "configs/synthetic/atss_R-18-FPN_synthetic.yaml": ("FOCAL", 0.01, 0.05, 0.6, 0.5),
    "configs/synthetic/dr_atss_R-18-FPN_synthetic.yaml": ("DR", 0.5, 0.05, 0.6, 0.75),
}
# MODEL.DR_LOSS.TAU that the DR loss's setup gives each detector; every other loss leaves the
# default 4 (Dr. Retina's).
DR_TAU = {"FCOS": 1.0, "ATSS": 1.0}
# config -> (the detector's node, its NODE_KEYS values)
NODE_SETUPS = {
    **{rel: ("FCOS", values) for rel, values in FCOS_BEFORE.items()},
    **{rel: ("ATSS", values) for rel, values in ATSS_SETUPS.items()},
}


def setup_of(cfg):
    return tuple(cfg.MODEL.RETINANET[k] for k in KEYS)


def node_setup_of(cfg, node):
    return tuple(cfg.MODEL[node][k] for k in NODE_KEYS)


def test_the_table_covers_every_shipped_config():
    shipped = {
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    }
    assert shipped == set(BEFORE) | set(NODE_SETUPS)


@pytest.mark.parametrize("rel", sorted(NODE_SETUPS))
def test_effective_setup_of_every_fcos_and_atss_config(rel):
    node, values = NODE_SETUPS[rel]
    cfg = load_config(os.path.join(ROOT, rel))
    assert cfg.MODEL.META_ARCHITECTURE == node
    assert node_setup_of(cfg, node) == values
    assert cfg.MODEL.DR_LOSS.TAU == (DR_TAU[node] if values[0] == "DR" else 4.0)


@pytest.mark.parametrize("name,node", [("fcos", "FCOS"), ("atss", "ATSS")])
def test_switching_the_loss_switches_the_prior_of_fcos_and_atss(name, node):
    focal = f"configs/synthetic/{name}_R-18-FPN_synthetic.yaml"
    dr = f"configs/synthetic/dr_{name}_R-18-FPN_synthetic.yaml"
    key = f"MODEL.{node}.LOSS_TYPE"
    switched = load_config(os.path.join(ROOT, focal), [key, "DR"])
    assert node_setup_of(switched, node) == NODE_SETUPS[dr][1]
    assert switched.MODEL.DR_LOSS.TAU == DR_TAU[node]
    switched = load_config(os.path.join(ROOT, dr), [key, "FOCAL"])
    assert node_setup_of(switched, node) == NODE_SETUPS[focal][1]
    assert switched.MODEL.DR_LOSS.TAU == 4.0
    # a tau set on the command line wins over the setup's
    mine = load_config(os.path.join(ROOT, dr), ["MODEL.DR_LOSS.TAU", "2.0"])
    assert mine.MODEL.DR_LOSS.TAU == 2.0


@pytest.mark.parametrize("rel", sorted(BEFORE))
def test_effective_setup_of_every_config_is_unchanged(rel):
    path = os.path.join(ROOT, rel)
    assert setup_of(load_config(path)) == BEFORE[rel]
    cfg = get_cfg()
    cfg.merge_from_file(path)  # the plain merge applies the setup as well
    assert setup_of(cfg) == BEFORE[rel]


def test_declared_setups():
    assert loss_key("RetinaNet") == "MODEL.RETINANET.LOSS_TYPE"
    assert loss_key("FCOS") == "MODEL.FCOS.LOSS_TYPE"
    assert loss_key("NoSuchDetector") is None
    for loss, values in (("DR", DR), ("FOCAL", FOCAL)):
        setup = loss_setup(loss, "RetinaNet")
        assert setup == {f"MODEL.RETINANET.{k}": v for k, v in zip(KEYS[1:], values[1:])}
    # FCOS takes only the prior of each loss's recipe (it has no IoU matcher); DR on FCOS
    # declares its score exponent and its loss weight for the pair
    exponent = "MODEL.FCOS.CLASS_SCORE_EXPONENT"
    assert loss_setup("DR", "FCOS") == {
        "MODEL.FCOS.PRIOR_PROB": 0.5,
        exponent: 0.75,
        "MODEL.DR_LOSS.TAU": 1.0,
    }
    assert loss_setup("FOCAL", "FCOS") == {"MODEL.FCOS.PRIOR_PROB": 0.01}
    # so does ATSS (no IoU matcher; its threshold applies to the centre-ness-weighted score)
    assert loss_key("ATSS") == "MODEL.ATSS.LOSS_TYPE"
    exponent = "MODEL.ATSS.CLASS_SCORE_EXPONENT"
    assert loss_setup("DR", "ATSS") == {
        "MODEL.ATSS.PRIOR_PROB": 0.5,
        exponent: 0.75,
        "MODEL.DR_LOSS.TAU": 1.0,
    }
    assert loss_setup("FOCAL", "ATSS") == {"MODEL.ATSS.PRIOR_PROB": 0.01}
    assert loss_setup("DR", "NoSuchDetector") == {}


def test_switching_the_loss_on_the_command_line_switches_its_setup():
    assert setup_of(load_config(DR_DEMO, ["MODEL.RETINANET.LOSS_TYPE", "FOCAL"])) == FOCAL
    assert setup_of(load_config(FOCAL_DEMO, ["MODEL.RETINANET.LOSS_TYPE", "DR"])) == DR


def test_the_two_demo_configs_differ_only_in_the_loss_and_its_setup():
    dr, focal = load_config(DR_DEMO), load_config(FOCAL_DEMO)
    for cfg in (dr, focal):
        cfg.defrost()
        for key in KEYS:
            cfg.MODEL.RETINANET[key] = None
        cfg.OUTPUT_DIR = ""
    assert dr.dump() == focal.dump()


def test_explicit_keys_override_the_setup():
    # yaml key (R-101: INFERENCE_TH 0.1) kept when the loss switches
    r101 = os.path.join(ROOT, "configs", "dr_retina", "dr_R-101-FPN_2x.yaml")
    cfg = load_config(r101, ["MODEL.RETINANET.LOSS_TYPE", "FOCAL"])
    assert setup_of(cfg) == ("FOCAL", 0.01, 0.5, 0.4, 0.1, 0.4)
    # command-line key wins over the setup and the yaml
    cfg = load_config(
        FOCAL_DEMO, ["MODEL.RETINANET.PRIOR_PROB", "0.2", "MODEL.RETINANET.LOSS_TYPE", "DR"]
    )
    assert setup_of(cfg) == ("DR", 0.2, 0.5, 0.5, 0.2, 0.5)


def test_a_config_that_names_no_loss_gets_the_defaults(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("SOLVER:\n  BASE_LR: 0.02\n")
    defaults = get_cfg()
    assert setup_of(load_config(str(path))) == setup_of(defaults)
    named = tmp_path / "dr.yaml"
    named.write_text("MODEL:\n  RETINANET:\n    LOSS_TYPE: DR\n    BG_IOU_THRESHOLD: 0.3\n")
    assert setup_of(load_config(str(named))) == ("DR", 0.5, 0.5, 0.3, 0.2, 0.5)


def test_an_unknown_loss_is_still_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="MODEL.RETINANET.LOSS_TYPE"):
        load_config(DR_DEMO, ["MODEL.RETINANET.LOSS_TYPE", "NOPE"])


# ---------------------------------------------------------------- every merge path
def test_merge_from_file_then_merge_from_list_switches_the_setup():
    """The use drdet/config/__init__.py documents: merge_from_file, then merge_from_list."""
    cfg = get_cfg()
    cfg.merge_from_file(DR_DEMO)
    assert setup_of(cfg) == DR
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "FOCAL"])
    assert setup_of(cfg) == FOCAL
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "DR"])
    assert setup_of(cfg) == DR
    # the dumped config holds the values in use
    assert "PRIOR_PROB: 0.5" in cfg.dump() and "LOSS_TYPE: DR" in cfg.dump()


def test_merge_from_list_alone_switches_the_setup_and_fcos_too():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "DR"])
    assert setup_of(cfg) == DR
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FCOS.LOSS_TYPE", "DR"])
    assert cfg.MODEL.FCOS.PRIOR_PROB == 0.5
    cfg.merge_from_list(["MODEL.FCOS.LOSS_TYPE", "FOCAL"])
    assert cfg.MODEL.FCOS.PRIOR_PROB == 0.01


def test_a_value_set_by_hand_is_kept_when_the_loss_switches():
    cfg = get_cfg()
    cfg.merge_from_file(DR_DEMO)
    cfg.MODEL.RETINANET.INFERENCE_TH = 0.3  # by attribute, not through a merge
    cfg.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "FOCAL"])
    assert setup_of(cfg) == ("FOCAL", 0.01, 0.5, 0.4, 0.3, 0.4)


def test_merge_from_other_cfg_and_clone_keep_what_was_explicit():
    cfg = get_cfg()
    cfg.merge_from_file(FOCAL_DEMO)
    copy = cfg.clone()
    copy.merge_from_list(["MODEL.RETINANET.LOSS_TYPE", "DR"])
    assert setup_of(copy) == DR and setup_of(cfg) == FOCAL
    other = get_cfg()
    other.merge_from_other_cfg(copy)
    assert setup_of(other) == DR


@pytest.mark.parametrize("loss, expected", [("FOCAL", FOCAL), ("DR", DR)])
def test_the_command_line_switch_of_every_tool_gives_the_setup(loss, expected, tmp_path):
    """The README's form: --config-file DR.yaml MODEL.RETINANET.LOSS_TYPE FOCAL, through
    load_config (which every tool uses) and through a dumped config.yaml loaded again."""
    cfg = load_config(DR_DEMO, ["MODEL.RETINANET.LOSS_TYPE", loss])
    assert setup_of(cfg) == expected
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    assert setup_of(load_config(str(dumped))) == expected
