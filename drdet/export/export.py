"""Writing a trained detector as an end-to-end exported model (tools/export_model.py).

Both formats come from one ``torch.export`` trace of :class:`ExportableDetector` with dynamic
batch, height and width:

- ``.pt2``: that ExportedProgram, written by ``torch.export.save``; NMS is the op
  ``drdet_export::multiclass_nms`` (torchvision's NMS inside), registered by importing
  ``drdet.export``.
- ``.onnx``: the same program converted by the dynamo-based ONNX exporter
  (``torch.onnx.export(program, dynamo=True)``, opset 18), with the NMS op written as the
  standard ``NonMaxSuppression``. The dynamo-based exporter is the one used because it converts
  the very program the .pt2 holds (one trace, the same graph in both files) with its dynamic
  shapes and a translation table for the NMS op; the TorchScript-based exporter was not tried.

The json record :data:`METADATA_KEY` (classes, the config values the graph holds) goes into
the ONNX model's metadata_props or the .pt2 archive's extra files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import torch
from torch.export import Dim, ExportedProgram
from torch.fx.experimental import _config as fx_config

from drdet.checkpoint import CLASSES_KEY, Checkpointer, check_classes
from drdet.export.config import METADATA_KEY, baked_values, export_suffix
from drdet.export.module import OUTPUT_NAMES, ExportableDetector
from drdet.export.nms import ONNX_TRANSLATIONS
from drdet.modeling import build_detector
from drdet.modeling.dense import DenseDetector
from drdet.utils.errors import UserFileNotFoundError, UserValueError

ONNX_OPSET = 18
logger = logging.getLogger(__name__)


def load_exportable(cfg, weights: str, allow_pickle: bool = False):
    """(ExportableDetector of ``cfg`` with the checkpoint ``weights`` on the CPU, its json
    record: {"classes": the checkpoint's classes record or {"num_classes": C}, "config": the
    baked values})."""
    detector = build_detector(cfg).eval()
    if not isinstance(detector, DenseDetector):
        raise UserValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} builds a "
            f"{type(detector).__name__}: export takes a DenseDetector"
        )
    extra = Checkpointer(detector).load(
        weights, allow_pickle=allow_pickle, load_training_state=False, strict=True
    )
    record = extra.get(CLASSES_KEY)
    check_classes(record, weights, cfg)
    classes = dict(record) if record else {"num_classes": detector.num_classes}
    metadata = {"classes": classes, "config": baked_values(cfg)}
    return ExportableDetector(detector), metadata


def example_images(divisibility: int) -> torch.Tensor:
    """A (2, 3, H, W) example batch whose sizes are not multiples of the divisibility, so that
    the trace keeps the padding symbolic."""
    step = max(divisibility, 8)
    return torch.rand(2, 3, 3 * step + 5, 4 * step + 3) * 255


def trace(module: ExportableDetector) -> ExportedProgram:
    """torch.export of ``module`` with dynamic batch, height and width."""
    dims = {"images": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    example = example_images(int(module.detector.size_divisibility))
    # size-oblivious: a feature map of one row or column (P7 of an image up to 128 px) takes
    # the same graph, instead of a guard that refuses it
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
        return torch.export.export(module, (example,), dynamic_shapes=dims, strict=False)


def save_program(program: ExportedProgram, path: str, metadata: dict) -> None:
    """Writes ``program`` to ``path``: ".pt2" by torch.export.save, ".onnx" converted."""
    record = json.dumps(metadata)
    if export_suffix(path) == ".pt2":
        torch.export.save(program, path, extra_files={METADATA_KEY: record})
        return
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=ONNX_OPSET,
        custom_translation_table=ONNX_TRANSLATIONS,
        input_names=["images"],
        output_names=list(OUTPUT_NAMES),
        verbose=False,
    )
    assert onnx_program is not None
    model = onnx_program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, record
    import onnx

    onnx.save(model, path)


def export_model(
    cfg, outputs: Sequence[str], allow_pickle: bool = False, force: bool = False
) -> list[str]:
    """Exports the detector of ``cfg`` with the checkpoint cfg.MODEL.WEIGHT to each file of
    ``outputs`` (".onnx" or ".pt2"), from one trace on the CPU whatever MODEL.DEVICE says; each
    file is written whole or not at all. Returns ``outputs``."""
    for output in outputs:
        check_export_request(cfg, output, force)
    module, metadata = load_exportable(cfg, cfg.MODEL.WEIGHT, allow_pickle)
    logger.info("Tracing %s with dynamic batch, height and width", type(module).__name__)
    program = trace(module)
    # .pt2 first: the ONNX conversion decomposes the program it is given
    for output in sorted(outputs, key=lambda path: export_suffix(path) == ".onnx"):
        partial = f"{output}.partial{export_suffix(output)}"
        try:
            save_program(program, partial, metadata)
            os.replace(partial, output)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        logger.info("Exported %s -> %s", cfg.MODEL.WEIGHT, output)
    return list(outputs)


def check_export_request(cfg, output: str, force: bool) -> None:
    """UserInputError naming the flag or key at fault: an --output that is not .onnx / .pt2 or
    exists (without ``force``), no checkpoint or an exported one in MODEL.WEIGHT."""
    if not export_suffix(output):
        raise UserValueError(f"--output {output!r}: the file name must end in .onnx or .pt2")
    if os.path.exists(output) and not force:
        raise UserValueError(f"--output {output!r} exists: pass --force to replace it")
    weights = cfg.MODEL.WEIGHT
    if not weights:
        raise UserValueError("MODEL.WEIGHT: give the checkpoint (.pth) to export")
    if export_suffix(weights):
        raise UserValueError(f"MODEL.WEIGHT {weights!r} is an exported model: give its checkpoint")
    if not os.path.isfile(weights):
        raise UserFileNotFoundError(f"MODEL.WEIGHT {weights!r} does not exist")
