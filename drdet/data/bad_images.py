"""What the data loader does with images that cannot be read (missing, empty, truncated, corrupt,
not of the annotated size): the skip-with-limit policy of training and the strict one of
evaluation, with the error or the warning raised in the main process, naming file and image id.

How it works, across DataLoader worker processes:
- In the worker, a dataset whose `read_policy` is set (build_data_loader sets it) catches the
  ImageReadError of an image and, in training, reads the next index instead (index + 1, + 2, ...
  cyclically: deterministic, so a resumed run replaces it the same way). The item then carries a
  4th element, the BadImage records of the images it could not read.
- In the main process, DetectionDataLoader strips the records off every batch into its
  `bad_images` log (a BadImageLog), which warns once per file and counts the distinct files of
  all workers. The trainer sums the count over the ranks and stops the run, on every rank at the
  same iteration, when it exceeds DATALOADER.MAX_BAD_IMAGES; iterated on its own, the loader
  raises as soon as its own count does.
- Evaluation never replaces an image: the first unreadable one is an error (the same
  MissingImageError / ImageReadError class the dataset itself raises).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from drdet.utils.errors import UserInputError

from .image_io import ImageReadError, MissingImageError, describe

logger = logging.getLogger(__name__)


class BadImage(NamedTuple):
    """An image a worker could not read (picklable: it travels back from the worker)."""

    path: str
    image_id: Any
    reason: str
    error_class: str  # name of the ImageReadError subclass, to raise the same in the main process

    @classmethod
    def from_error(cls, err: ImageReadError) -> BadImage:
        return cls(err.path, err.image_id, err.reason, type(err).__name__)

    def error(self) -> ImageReadError:
        """The exception the dataset raised in the worker, rebuilt."""
        cls = (
            MissingImageError if self.error_class == MissingImageError.__name__ else ImageReadError
        )
        return cls(self.path, self.image_id, self.reason)

    def __str__(self) -> str:
        return f"{describe(self.path, self.image_id)}: {self.reason}"


class ReadPolicy:
    """Set as `dataset.read_policy` to turn ImageReadError into records (see the module doc).

    `replacements`: how many following indices to try instead of an unreadable image (0: none,
    the item is then (None, None, index, records))."""

    def __init__(self, replacements: int):
        if replacements < 0:
            raise ValueError(f"replacements must be >= 0, got {replacements}")
        self.replacements = replacements

    def fetch(self, load: Callable[[int], tuple], index: int, size: int) -> tuple:
        """load(index) -> (image, target, index), or (image, target, index', records) with the
        item of the first readable index among index, index + 1, ... (at most
        1 + replacements tries, cyclic over `size`) and the records of the unreadable ones."""
        bad: list[BadImage] = []
        for k in range(min(1 + self.replacements, size)):
            j = (index + k) % size
            try:
                image, target, j = load(j)
            except ImageReadError as err:
                bad.append(BadImage.from_error(err))
                continue
            return image, target, j, tuple(bad)
        return None, None, index, tuple(bad)


class GuardedReads:
    """Mixin of the detection datasets: `__getitem__` is `load_item` when `read_policy` is None
    (errors raised as they are; the default), `read_policy.fetch(load_item, ...)` otherwise,
    whose items have the 4th element (the datasets of build_data_loader's loaders)."""

    read_policy: ReadPolicy | None = None

    def load_item(self, index: int) -> tuple:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple:
        if self.read_policy is None:
            return self.load_item(index)
        return self.read_policy.fetch(self.load_item, index, len(self))  # type: ignore[arg-type]


class TooManyBadImagesError(UserInputError, RuntimeError):
    """More unreadable images than DATALOADER.MAX_BAD_IMAGES during training."""


class BadImageLog:
    """The unreadable images one process's loader met (all its workers): a warning the first time
    each file is met, the distinct files (`count`), how often one was replaced (`skips`).

    `limit` is DATALOADER.MAX_BAD_IMAGES for training, None for evaluation (no replacement: the
    first bad image raises). `raise_over_limit`: the loader raises as soon as `count > limit`;
    the trainer turns it off and checks the count summed over all ranks instead."""

    def __init__(self, limit: int | None, name: str = ""):
        self.limit = limit
        self.name = name
        self.images: dict[str, BadImage] = {}
        self.skips = 0
        self.raise_over_limit = True

    @property
    def count(self) -> int:
        return len(self.images)

    def add(self, records: Iterable[BadImage], replaced: bool) -> None:
        """Record the unreadable images of one batch; `replaced`: whether every item of the batch
        was replaced by a readable image. Raises the image's own error in evaluation, or when no
        replacement could be read, and TooManyBadImagesError past the limit (raise_over_limit)."""
        records = list(records)
        if not records:
            return
        if self.limit is None:
            err = records[0].error()
            raise type(err)(
                err.path,
                err.image_id,
                f"{err.reason} (evaluation of {self.name or 'the dataset'} reads every "
                "image: fix or remove it, or take it out of the annotation file)",
            )
        for rec in records:
            self.skips += 1
            if rec.path not in self.images:
                self.images[rec.path] = rec
                logger.warning(
                    "Skipping unreadable %s; another image takes its place. %d "
                    "unreadable image(s) so far in this process, at most %d allowed "
                    "(DATALOADER.MAX_BAD_IMAGES)",
                    rec,
                    self.count,
                    self.limit,
                )
        if not replaced:
            raise TooManyBadImagesError(
                f"no readable image found in place of {records[0]} (tried {len(records)} in a "
                "row)\n" + self.listing()
            )
        if self.raise_over_limit and self.over_limit(self.count):
            raise self.limit_error(self.count)

    def over_limit(self, total: int) -> bool:
        return self.limit is not None and total > self.limit

    def listing(self) -> str:
        """The files met so far, one per line."""
        return "\n".join(f"  {rec}" for rec in self.images.values())

    def limit_error(
        self, total: int, iteration: int | None = None, rank_note: str = ""
    ) -> TooManyBadImagesError:
        """The error that stops training: `total` unreadable images (over all ranks), the files
        this process met, and what to do."""
        at = "" if iteration is None else f" at iteration {iteration}"
        if self.limit == 0:
            head = (
                f"Training stopped{at} at an unreadable image (DATALOADER.MAX_BAD_IMAGES = 0: "
                "none allowed)"
            )
        else:
            head = (
                f"Training stopped{at}: {total} unreadable images, more than "
                f"DATALOADER.MAX_BAD_IMAGES = {self.limit}"
            )
        files = self.listing() or "  (none in this process: see the logs of the other ranks)"
        return TooManyBadImagesError(
            f"{head}{rank_note}:\n{files}\nFix or remove these files (or drop them from the "
            "annotation file), or set DATALOADER.MAX_BAD_IMAGES to skip up to that many; resume "
            "with --resume."
        )
