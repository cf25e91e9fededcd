"""drdet: RetinaNet with the Distributional Ranking (DR) loss (Qian et al., CVPR 2020)."""
import torch  # noqa: F401  (loads libtorch/libc10, which the extension drdet._C links against)

__version__ = "0.1.0"
