"""Foreign weights to drdet's parameter names.

Formats, told apart by their keys (:func:`detect_format`):

=========================  ===========================================  ===========================
format                     typical keys                                 where it goes
=========================  ===========================================  ===========================
``drdet``                  backbone.body.stem.conv1.weight, head.*      as is
``torchvision_resnet``     conv1.weight, bn1.*, layer1.0.conv1.weight,  backbone.body.* (fc dropped)
                           fc.*  (ImageNet ResNet/ResNeXt ``.pth``)
``msra``                   conv1_w, res_conv1_bn_s/_b,                  backbone.body.* (fc1000
                           res2_0_branch2a_w, res2_0_branch2a_bn_s/_b,  dropped; BN scale/bias
                           res2_0_branch1_w  (Detectron ``R-50.pkl``)   with mean 0, var 1)
``torchvision_retinanet``  head.classification_head.*,                  the whole detector: use
                           backbone.fpn.inner_blocks.*                  tools/convert_checkpoint.py
``maskrcnn_benchmark``     rpn.head.cls_tower.*, rpn.anchor_generator.* the whole detector: use
                                                                        tools/convert_checkpoint.py
=========================  ===========================================  ===========================

The ImageNet formats (torchvision, MSRA) are converted when they are loaded as ``MODEL.WEIGHT``
(:func:`to_drdet_state`, called by ``Checkpointer.load``). The two detector formats carry
conventions (anchors, box coder, input format) that a config must reproduce, so they are
converted once with ``tools/convert_checkpoint.py`` and loaded with the matching config.

Input conventions the weights imply (train_net checks the config's INPUT.TO_BGR255 and
MODEL.RESNETS.STRIDE_IN_1X1 against them: :func:`check_input_convention`):
torchvision ImageNet weights: RGB 0-1 input normalised with ImageNet mean/std, stride in the 3x3
conv (``INPUT.TO_BGR255 False``, ``MODEL.RESNETS.STRIDE_IN_1X1 False``); MSRA/Caffe2 weights:
BGR 0-255 input minus the Caffe2 mean, stride in the 1x1 conv (drdet's defaults). MSRA scale/bias
pairs are loaded as FrozenBN weight/bias with running_mean 0 and running_var 1; FrozenBN's eps
(1e-5) then scales them by 1/sqrt(1 + 1e-5), a relative change of 5e-6.
"""

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from drdet.modeling.backbone.resnet import convert_torchvision_resnet_state_dict
from drdet.utils.errors import UserValueError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

DETECTOR_FORMATS = ("torchvision_retinanet", "maskrcnn_benchmark")
IMAGENET_FORMATS = ("torchvision_resnet", "msra")  # a backbone only: FPN and head initialised

# COCO's 80 category ids (of 1..90) in increasing order: torchvision's COCO detectors predict
# 91 columns indexed by category id; drdet's COCO datasets number the classes 1..80 in this order.
COCO_CATEGORY_IDS = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)

_MSRA_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b)$")
_MSRA_IGNORED = re.compile(r"(^fc1000_[wb]$)|(_momentum$)")


_INPUT_CONVENTIONS = {
    "torchvision_resnet": "RGB 0-1 input normalised with ImageNet's mean/std and the stride in the "
    "3x3 conv (INPUT.TO_BGR255 False, INPUT.PIXEL_MEAN [0.485, 0.456, "
    "0.406], INPUT.PIXEL_STD [0.229, 0.224, 0.225], "
    "MODEL.RESNETS.STRIDE_IN_1X1 False)",
    "msra": "BGR 0-255 input minus the Caffe2 mean and the stride in the 1x1 conv (drdet's "
    "defaults: INPUT.TO_BGR255 True, MODEL.RESNETS.STRIDE_IN_1X1 True)",
}


# The config values each ImageNet format needs: a config with others trains on the wrong input.
_INPUT_KEYS = {
    "torchvision_resnet": {"INPUT.TO_BGR255": False, "MODEL.RESNETS.STRIDE_IN_1X1": False},
    "msra": {"INPUT.TO_BGR255": True, "MODEL.RESNETS.STRIDE_IN_1X1": True},
}


def _cfg_value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_input_convention(fmt: str, cfg, source: str) -> None:
    """UserValueError naming the config keys to set when ImageNet weights of format `fmt`
    (torchvision or MSRA) are given to a config with the other format's input (RGB/BGR) or
    stride convention. Other formats pass."""
    wanted = _INPUT_KEYS.get(fmt, {})
    wrong = [key for key, value in wanted.items() if _cfg_value(cfg, key) != value]
    if wrong:
        have = ", ".join(f"{key} {_cfg_value(cfg, key)}" for key in wrong)
        raise UserValueError(
            f"{source} holds {fmt} ImageNet weights, which expect {_INPUT_CONVENTIONS[fmt]}, "
            f"but the config has {have}: set the keys listed (or give weights of the config's "
            "convention)"
        )


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop a "module." prefix (DataParallel/DDP) present on every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """One of "drdet", "torchvision_resnet", "msra", "torchvision_retinanet",
    "maskrcnn_benchmark", from the key names of `state` (a "module." prefix is ignored)."""
    keys = list(strip_module_prefix(state))
    if any(k.startswith("rpn.head.") or k.startswith("rpn.anchor_generator.") for k in keys):
        return "maskrcnn_benchmark"
    if any(
        k.startswith("head.classification_head.") or k.startswith("backbone.fpn.inner_blocks.")
        for k in keys
    ):
        return "torchvision_retinanet"
    if "conv1_w" in keys or any(_MSRA_BLOCK.match(k) for k in keys):
        return "msra"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision_resnet"
    return "drdet"


# ----------------------------------------------------------------------------- ImageNet bodies
def convert_torchvision_backbone(
    state: Mapping[str, torch.Tensor], prefix: str = "backbone.body."
) -> StateDict:
    """torchvision ImageNet ResNet/ResNeXt -> drdet body names under `prefix` (fc dropped,
    BatchNorm's num_batches_tracked dropped)."""
    body = convert_torchvision_resnet_state_dict(
        {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    )
    return OrderedDict((prefix + k, v) for k, v in body.items())


def _msra_name(name: str) -> str | None:
    """drdet body name (without prefix) of one MSRA blob, or None when unknown."""
    if name == "conv1_w":
        return "stem.conv1.weight"
    if name in ("res_conv1_bn_s", "res_conv1_bn_b"):
        return "stem.bn1." + ("weight" if name.endswith("_s") else "bias")
    m = _MSRA_BLOCK.match(name)
    if m is None:
        return None
    stage, block, branch, kind = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    if not 2 <= stage <= 5:
        return None
    base = f"layer{stage - 1}.{block}."
    if branch == "1":
        conv, norm = base + "downsample.0", base + "downsample.1"
    else:
        idx = "abc".index(branch[1]) + 1
        conv, norm = base + f"conv{idx}", base + f"bn{idx}"
    return {"w": conv + ".weight", "bn_s": norm + ".weight", "bn_b": norm + ".bias"}[kind]


def convert_msra_backbone(
    blobs: Mapping[str, torch.Tensor], prefix: str = "backbone.body."
) -> StateDict:
    """Detectron/maskrcnn-benchmark MSRA ImageNet blobs (R-50.pkl, X-101-32x8d.pkl) -> drdet
    body names under `prefix`. Each norm gets running_mean 0 and running_var 1 (the blobs hold
    the folded affine scale and bias). fc1000_* and *_momentum blobs are dropped; other unknown
    blobs are kept under their own name (reported as unexpected when loaded)."""
    out: StateDict = OrderedDict()
    for name, value in blobs.items():
        if _MSRA_IGNORED.search(name):
            continue
        target = _msra_name(name)
        if target is None:
            out[name] = value
            continue
        value = torch.as_tensor(value)
        out[prefix + target] = value
        if name.endswith("_bn_s"):
            norm = prefix + target[: -len(".weight")]
            out[norm + ".running_mean"] = torch.zeros_like(value)
            out[norm + ".running_var"] = torch.ones_like(value)
    return out


def to_drdet_state(
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    log: logging.Logger | None = None,
    cfg=None,
) -> StateDict:
    """`state` with drdet's names: ImageNet backbones (torchvision, MSRA) are renamed and the
    mapping is logged; drdet states pass unchanged; detector checkpoints of torchvision or
    maskrcnn-benchmark raise ValueError pointing at tools/convert_checkpoint.py. With `cfg`
    (the config of the model they initialise), ImageNet weights must fit its input convention
    (:func:`check_input_convention`)."""
    log = log or logger
    fmt = detect_format(state)
    if cfg is not None:
        check_input_convention(fmt, cfg, source)
    if fmt == "drdet":
        return dict(state)
    if fmt in DETECTOR_FORMATS:
        raise ValueError(
            f"{source} is a {fmt} detector checkpoint: convert it once with "
            f"`python tools/convert_checkpoint.py {source} OUT.pth` and load OUT.pth with the "
            "config that matches its conventions (torchvision: configs/torchvision/; "
            "maskrcnn-benchmark: configs/dr_retina/, configs/retinanet/)"
        )
    plain = strip_module_prefix(state)
    if fmt == "torchvision_resnet":
        converted = convert_torchvision_backbone(plain)
        mapping = {
            k: "backbone.body." + ("stem." + k if k.split(".")[0] in ("conv1", "bn1") else k)
            for k in plain
        }
    else:
        converted = convert_msra_backbone(plain)
        msra_names = {k: _msra_name(k) for k in plain}
        mapping = {k: "backbone.body." + name for k, name in msra_names.items() if name}
    mapped = {k: v for k, v in mapping.items() if v in converted}
    dropped = sorted(set(plain) - set(mapped) - set(converted))
    log.info(
        "%s: %s ImageNet weights, %d tensors renamed:\n  %s",
        source,
        fmt,
        len(mapped),
        "\n  ".join(f"{k} -> {v}" for k, v in mapped.items()),
    )
    log.info("%s: these weights expect %s", source, _INPUT_CONVENTIONS[fmt])
    if dropped:
        log.info("%s: dropped (not part of the detector): %s", source, ", ".join(dropped))
    return converted


# ----------------------------------------------------------------------------- detectors
def _select_class_columns(
    tensor: torch.Tensor, num_anchors: int, columns: Sequence[int]
) -> torch.Tensor:
    """Keep `columns` of the (A * K, ...) class-logit weight or bias, per anchor."""
    per_anchor = tensor.reshape(num_anchors, -1, *tensor.shape[1:])
    num_classes = per_anchor.shape[1]
    bad = [c for c in columns if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class columns {bad} out of range for {num_classes} classes")
    index = torch.as_tensor(list(columns), dtype=torch.long)
    return per_anchor[:, index].reshape(-1, *tensor.shape[1:]).clone()


_TV_FPN = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(?:0\.)?(weight|bias)$")
_TV_HEAD_TOWER = re.compile(
    r"^head\.(classification|regression)_head\.conv\.(\d+)\.(?:(0)\.)?(weight|bias)$"
)


def convert_torchvision_retinanet(
    state: Mapping[str, torch.Tensor], class_columns: Sequence[int] | None = None
) -> StateDict:
    """torchvision ``retinanet_resnet50_fpn`` (v1) state dict -> drdet RetinaNet names.

    torchvision's K classification columns are labels 0..K-1 (no background column); drdet's C
    columns are labels 1..C. By default every column is kept: drdet label = torchvision label + 1,
    MODEL.NUM_CLASSES = K + 1. `class_columns` keeps only those torchvision labels, in
    that order: drdet label k is torchvision label class_columns[k - 1] (e.g. COCO_CATEGORY_IDS for
    torchvision's 91-column COCO models, giving drdet's contiguous COCO labels, NUM_CLASSES 81).
    Unknown keys (e.g. the GroupNorm head of retinanet_resnet50_fpn_v2) raise KeyError.
    """
    state = strip_module_prefix(state)
    out: StateDict = OrderedDict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone.body."):
            rest = key[len("backbone.body.") :]
            if rest.split(".")[0] in ("conv1", "bn1"):
                rest = "stem." + rest
            out["backbone.body." + rest] = value
            continue
        m = _TV_FPN.match(key)
        if m:
            out[f"backbone.fpn.fpn_{m.group(1)}{int(m.group(2)) + 2}.{m.group(3)}"] = value
            continue
        if key.startswith("backbone.fpn.extra_blocks."):
            out["backbone.fpn.top_blocks." + key[len("backbone.fpn.extra_blocks.") :]] = value
            continue
        m = _TV_HEAD_TOWER.match(key)
        if m:
            tower = "cls_tower" if m.group(1) == "classification" else "bbox_tower"
            i = int(m.group(2))
            index = 2 * i if m.group(3) is not None else i
            out[f"head.{tower}.{index}.{m.group(4)}"] = value
            continue
        if key.startswith("head.classification_head.cls_logits."):
            out["head.cls_logits." + key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("head.regression_head.bbox_reg."):
            out["head.bbox_pred." + key.rsplit(".", 1)[1]] = value
            continue
        raise KeyError(f"unexpected key in a torchvision RetinaNet state dict: {key}")
    if class_columns is not None:
        num_anchors = out["head.bbox_pred.bias"].shape[0] // 4
        for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
            out[name] = _select_class_columns(out[name], num_anchors, class_columns)
    return out


def convert_maskrcnn_benchmark_retinanet(state: Mapping[str, torch.Tensor]) -> StateDict:
    """maskrcnn-benchmark RetinaNet checkpoint (the released Dr. Retina models) -> drdet names.

    The body and FPN names are already drdet's (backbone.body.stem.conv1, backbone.fpn.fpn_inner2,
    backbone.fpn.top_blocks.p6, ...); ``rpn.head.*`` becomes ``head.*``; the cached anchors
    ``rpn.anchor_generator.*`` are dropped (drdet computes them from the config). Both use
    NUM_CLASSES - 1 classification columns for labels 1..NUM_CLASSES - 1. Other keys raise KeyError.
    Anchor centring and "+1" box widths differ (see tools/convert_checkpoint.py): not compensated.
    """
    state = strip_module_prefix(state)
    out: StateDict = OrderedDict()
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key] = value
        elif key.startswith("rpn.head."):
            out["head." + key[len("rpn.head.") :]] = value
        elif key.startswith("rpn.anchor_generator."):
            continue
        else:
            raise KeyError(f"unexpected key in a maskrcnn-benchmark RetinaNet checkpoint: {key}")
    return out
