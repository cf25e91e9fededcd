"""drdet: RetinaNet with the Distributional Ranking (DR) loss (Qian et al., CVPR 2020)."""

import torch  # noqa: F401  (loads libtorch/libc10, which the extension drdet._C links against)

from drdet.utils.registry import set_builtin_loader

__version__ = "0.1.0"
__all__ = ["Predictor", "get_cfg"]


def _register_builtin_parts() -> None:
    """Imports the packages whose modules register drdet's built-in parts: detectors, backbones,
    losses and their config nodes (modeling), dataset types and the input and loader checks
    (data), the solver's checks, the evaluators, and the engine's speed and test checks."""
    import drdet.data  # noqa: F401
    import drdet.engine  # noqa: F401
    import drdet.evaluation  # noqa: F401
    import drdet.modeling  # noqa: F401
    import drdet.solver  # noqa: F401


# The config layer sits below the model and imports none of it; it asks for the built-in parts
# through drdet.utils.registry.load_builtins, which runs this.
set_builtin_loader(_register_builtin_parts)


def __getattr__(name):
    # Lazy, so that `import drdet` (e.g. for drdet.config) stays light.
    if name == "Predictor":
        from drdet.engine.predictor import Predictor

        return Predictor
    if name == "get_cfg":
        from drdet.config import get_cfg

        return get_cfg
    raise AttributeError(f"module 'drdet' has no attribute {name!r}")
