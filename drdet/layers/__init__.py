"""Thin Python wrappers of the drdet extension ops."""
from .dr_loss import DRLoss, dr_loss

__all__ = ["dr_loss", "DRLoss"]
