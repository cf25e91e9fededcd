"""drdet: RetinaNet with the Distributional Ranking (DR) loss (Qian et al., CVPR 2020)."""

import torch  # noqa: F401  (loads libtorch/libc10, which the extension drdet._C links against)

__version__ = "0.1.0"
__all__ = ["Predictor", "get_cfg"]


def __getattr__(name):
    # Lazy, so that `import drdet` (e.g. for drdet.config) does not need the built extension.
    if name == "Predictor":
        from drdet.engine.predictor import Predictor

        return Predictor
    if name == "get_cfg":
        from drdet.config import get_cfg

        return get_cfg
    raise AttributeError(f"module 'drdet' has no attribute {name!r}")
