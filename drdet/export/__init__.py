"""Export of a trained dense detector as one end-to-end model (.onnx, .pt2) and the running of
such a file (drdet.export.runtime). Importing this package registers the NMS op a .pt2 program
calls (drdet.export.nms); the exporter itself (drdet.export.export) is imported where it is
used: running an exported model needs none of the model's code."""

from drdet.export import nms as _nms  # noqa: F401  (registers drdet_export::multiclass_nms)
from drdet.export.config import EXPORT_SUFFIXES, export_suffix

__all__ = ["EXPORT_SUFFIXES", "export_suffix"]
