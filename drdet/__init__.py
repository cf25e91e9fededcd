"""drdet: RetinaNet with the Distributional Ranking (DR) loss (Qian et al., CVPR 2020)."""

__version__ = "0.1.0"
