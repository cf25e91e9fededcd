"""Evaluators by name, and which of them a dataset asks for.

An evaluator is registered in :data:`EVALUATORS` where it is defined and called as ::

    evaluator(dataset, predictions, output_folder=None, per_category=False) -> {metric: float}

- ``dataset``: the test set (its ground truth: e.g. ``dataset.coco`` for COCO-format sets).
- ``predictions``: ``{image_id: {"boxes" (K, 4) x1y1x2y2 in original-image pixels,
  "scores" (K,), "labels" (K,) int64 contiguous class ids 1..C}}``, one entry per image.
- ``output_folder``: where the evaluator may write its files (e.g. ``bbox.json``), or None.

A dataset names the evaluators that apply to it in its ``evaluators`` attribute (a tuple of
registered names, run in that order, their metrics merged into one dict); a dataset without one
gets ``("coco",)`` when it has a ``coco`` ground truth. Adding a metric is one module with one
``@EVALUATORS.register("name")`` and the name in the datasets' ``evaluators``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from drdet.utils.registry import Registry

EVALUATORS = Registry("evaluator")


class Evaluator(Protocol):
    def __call__(
        self,
        dataset: Any,
        predictions: Mapping[int, Mapping[str, Any]],
        output_folder: str | None = None,
        per_category: bool = False,
    ) -> dict[str, float]: ...


def evaluator_names(dataset: Any) -> tuple[str, ...]:
    """The names of the evaluators ``dataset`` asks for (see the module docstring)."""
    names = getattr(dataset, "evaluators", None)
    if names is None:
        if not hasattr(dataset, "coco"):
            raise TypeError(
                f"{type(dataset).__name__} names no evaluators (an `evaluators` "
                f"attribute with names of {EVALUATORS.names()}) and has no `coco` "
                "ground truth"
            )
        return ("coco",)
    return tuple(names)


def run_evaluators(
    dataset: Any,
    predictions: Mapping[int, Mapping[str, Any]],
    output_folder: str | None = None,
    per_category: bool = False,
) -> dict[str, float]:
    """The metrics of every evaluator ``dataset`` asks for, merged in their order. An unknown
    name raises KeyError listing the registered evaluators."""
    metrics: dict[str, float] = {}
    for name in evaluator_names(dataset):
        evaluator: Evaluator = EVALUATORS.get(name)
        metrics.update(
            evaluator(dataset, predictions, output_folder=output_folder, per_category=per_category)
        )
    return metrics
