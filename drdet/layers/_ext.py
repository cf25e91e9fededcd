"""Loads the compiled extension; every op wrapper in drdet.layers imports it from here."""
import torch

try:
    from drdet import _C  # noqa: F401  (importing registers torch.ops.drdet.*)
except ImportError as e:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "drdet's extension drdet._C is not built or does not match this torch. "
        "Run `make install` (or `pip install --no-build-isolation -e .`) in the repository."
    ) from e

ops = torch.ops.drdet
