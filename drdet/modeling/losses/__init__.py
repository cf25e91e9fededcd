"""Classification losses of the dense detectors, by name (``MODEL.RETINANET.LOSS_TYPE``).

A classification loss is built from the config by the builder registered under its name in
:data:`drdet.modeling.registry.CLASSIFICATION_LOSSES`, and called as ::

    loss(logits, labels, normalizer) -> scalar tensor

- ``logits``: (B, A, C) float, one row per anchor (or location) of each image, one column per
  foreground class.
- ``labels``: (B, A) int64: 0 background, 1..C the class of the matched box, -1 ignored.
- ``normalizer``: a float scalar tensor chosen by the detector (RetinaNet: positives + images of
  the batch, averaged over the ranks). Losses summed over entries divide by it; losses that are
  normalised by construction (the DR loss, a mean over groups) ignore it.

The built-in losses (``FOCAL``, ``DR``) register themselves in the modules below; a new one is a
new module with one ``@CLASSIFICATION_LOSSES.register("NAME")`` (CONTRIBUTING.md). A loss whose
detector needs other settings (prior, matcher thresholds, score threshold) declares them with
:func:`drdet.modeling.losses.setup.register_loss_setup`; configs naming the loss get them.
"""

from typing import Protocol

from torch import Tensor

from drdet.modeling.losses import dr, focal  # noqa: F401  (registers DR and FOCAL)
from drdet.modeling.registry import CLASSIFICATION_LOSSES


class ClassificationLoss(Protocol):
    def __call__(self, logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor: ...


def build_classification_loss(cfg, name: str | None = None) -> ClassificationLoss:
    """The loss registered as ``name`` (default ``cfg.MODEL.RETINANET.LOSS_TYPE``), built from
    ``cfg``."""
    name = cfg.MODEL.RETINANET.LOSS_TYPE if name is None else name
    return CLASSIFICATION_LOSSES.get(name)(cfg)


__all__ = ["CLASSIFICATION_LOSSES", "ClassificationLoss", "build_classification_loss"]
