"""Loads the compiled extension drdet._C, if it can, and says which form of the ops runs.

Every op wrapper in drdet.layers asks :func:`extension_in_use` on each call: True runs the
extension's kernels (``ops`` = ``torch.ops.drdet``), False the pure-PyTorch forms of
drdet/layers/pure_ops.py (same results to float rounding, slower, more memory). The extension is
not used when it cannot be imported (not built, built against another torch, no compiler on
this machine: one warning says so), when the environment variable ``DRDET_USE_EXT=0`` (or
``false``, ``off``) is set before drdet is imported (then it is not even loaded), and inside
:func:`use_extension(False) <use_extension>`.

Also the switch between the two versions of the CUDA kernels (:func:`set_cuda_kernels`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

EXTENSION_ENV = "DRDET_USE_EXT"
BUILD_HINT = (
    "build it with `make install`, or `pip install --no-build-isolation -e .` in the repository "
    "(needs a C++ compiler; nvcc for the CUDA kernels)"
)
SLOWER_OPS = (
    "the DR loss and the sigmoid focal loss (several N x C temporaries instead of one fused "
    "pass), NMS (torchvision.ops) and CPU training of 3x3 convolutions (no Winograd path)"
)


class ExtensionMissingWarning(RuntimeWarning):
    """drdet._C could not be imported: drdet runs its pure-PyTorch forms of the ops."""


def _load() -> bool:
    """Imports drdet._C (which registers torch.ops.drdet.*) unless DRDET_USE_EXT=0; warns once,
    naming the slower ops and the build command, when the import fails."""
    if os.environ.get(EXTENSION_ENV, "1").strip().lower() in ("0", "false", "off"):
        return False
    try:
        from drdet import _C  # noqa: F401
    except ImportError as e:
        warnings.warn(
            f"drdet's extension drdet._C is not available ({e}); drdet runs pure-PyTorch forms "
            f"of its ops instead, with the same results: slower are {SLOWER_OPS}. To use the "
            f"extension, {BUILD_HINT}. Set {EXTENSION_ENV}=0 to choose the pure forms silently.",
            ExtensionMissingWarning,
            stacklevel=2,
        )
        return False
    return True


_LOADED = _load()
_enabled = _LOADED

ops = torch.ops.drdet


def extension_loaded() -> bool:
    """Whether drdet._C was imported (its ops registered as torch.ops.drdet.*)."""
    return _LOADED


def extension_in_use() -> bool:
    """Whether the ops run the extension's kernels now (loaded and not switched off by
    :func:`use_extension`); False: their pure-PyTorch forms."""
    return _enabled


@contextlib.contextmanager
def use_extension(enabled: bool) -> Iterator[bool]:
    """Context manager: inside the block the ops run the extension's kernels (True) or their
    pure-PyTorch forms (False); the previous choice again after it. Yields ``enabled``.

    Raises RuntimeError for True when the extension is not loaded.
    """
    global _enabled
    if enabled and not _LOADED:
        raise RuntimeError(
            f"use_extension(True): drdet._C is not loaded (not importable, or {EXTENSION_ENV}=0 "
            f"was set at import); {BUILD_HINT}"
        )
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield _enabled
    finally:
        _enabled = previous


CUDA_KERNELS_ENV = "DRDET_CUDA_KERNELS"
CUDA_KERNEL_VERSIONS = ("v1", "v2")


def set_cuda_kernels(version: str) -> str:
    """Chooses the CUDA kernels of ``dr_loss``, ``nms`` and ``batched_nms``; returns the previous
    choice.

    "v1" (the default) are the kernels verified on a GPU. "v2" are their rewrites (the DR loss
    reduction spread over the whole GPU whatever the number of groups, statistics merged in
    float64; NMS masks per class, without the 393,216-box limit); they compile in CI but have
    NOT YET RUN ON A GPU. The choice is the environment variable ``DRDET_CUDA_KERNELS``, which
    the ops read on every call (so ``DRDET_CUDA_KERNELS=v2 python ...`` works too). The CPU
    kernels and the pure-PyTorch forms are not affected.
    """
    if version not in CUDA_KERNEL_VERSIONS:
        raise ValueError(
            f"set_cuda_kernels: version must be one of {CUDA_KERNEL_VERSIONS}, got {version!r}"
        )
    previous = get_cuda_kernels()
    os.environ[CUDA_KERNELS_ENV] = version
    return previous


def get_cuda_kernels() -> str:
    """The CUDA kernel version in use: "v1" or "v2" (see :func:`set_cuda_kernels`)."""
    return os.environ.get(CUDA_KERNELS_ENV) or "v1"


def loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """The dtype of a loss the ops return for these logits: float64 for float64 logits, float32
    for every other dtype (float16 and bfloat16 included, under autocast too)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32
