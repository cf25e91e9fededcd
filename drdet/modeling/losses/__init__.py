"""Classification losses of the dense detectors, by name (each detector names its loss with its
own key: ``MODEL.RETINANET.LOSS_TYPE``, ``MODEL.FCOS.LOSS_TYPE``).

A classification loss is built from the config by the builder registered under its name in
:data:`drdet.modeling.registry.CLASSIFICATION_LOSSES`, and called as ::

    loss(logits, labels, normalizer) -> scalar tensor

- ``logits``: (B, A, C) float, one row per anchor (or location) of each image, one column per
  foreground class.
- ``labels``: (B, A) int64: 0 background, 1..C the class of the matched box, -1 ignored.
- ``normalizer``: a float scalar tensor chosen by the detector (RetinaNet: positives + images of
  the batch, averaged over the ranks). Losses summed over entries divide by it; losses that are
  normalised by construction (the DR loss, a mean over groups) ignore it.

The built-in losses (``FOCAL``, ``DR``) register themselves in the modules below, each with its
config node, its check and the setup it brings to a detector
(:func:`drdet.config.register_loss_recipe`); a new one is a new module with one
``@CLASSIFICATION_LOSSES.register("NAME")`` (CONTRIBUTING.md).
"""

from typing import Protocol

from torch import Tensor

from drdet.modeling.losses import dr, focal  # noqa: F401  (registers DR and FOCAL)
from drdet.modeling.registry import CLASSIFICATION_LOSSES


class ClassificationLoss(Protocol):
    def __call__(self, logits: Tensor, labels: Tensor, normalizer: Tensor) -> Tensor: ...


def build_classification_loss(cfg, name: str) -> ClassificationLoss:
    """The loss registered as ``name`` (the value of the detector's loss key), built from
    ``cfg``."""
    return CLASSIFICATION_LOSSES.get(name)(cfg)


__all__ = ["CLASSIFICATION_LOSSES", "ClassificationLoss", "build_classification_loss"]
