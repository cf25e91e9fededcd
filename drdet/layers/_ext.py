"""Loads the compiled extension; every op wrapper in drdet.layers imports it from here.

Also the switch between the two versions of the CUDA kernels (:func:`set_cuda_kernels`).
"""

import os

import torch

try:
    from drdet import _C  # noqa: F401  (importing registers torch.ops.drdet.*)
except ImportError as e:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "drdet's extension drdet._C is not built or does not match this torch. "
        "Run `make install` (or `pip install --no-build-isolation -e .`) in the repository."
    ) from e

ops = torch.ops.drdet

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
    kernels are not affected.
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
