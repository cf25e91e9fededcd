"""Sigmoid focal loss (Lin et al., ICCV 2017), the classification loss of the RetinaNet baseline.

A fused CPU/CUDA op (``torch.ops.drdet.sigmoid_focal_loss``) that reduces inside the kernel: no
(N, C) temporary is made in the forward pass, and the backward pass writes the gradient directly.
Labels follow the DR loss convention, so the two losses are interchangeable in the detector.
Without the extension (drdet/layers/_ext.py) its pure-PyTorch form runs
(drdet/layers/pure_ops.py).
"""

import torch
from torch import Tensor, nn

from drdet.layers import pure_ops
from drdet.layers._ext import extension_in_use, extension_loaded, loss_dtype, ops

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss"]


def sigmoid_focal_loss(
    logits: Tensor, labels: Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> Tensor:
    """Summed sigmoid focal loss over all (anchor, class) entries.

    Args:
        logits: (N, C) float16, bfloat16, float32 or float64 classification logits; any strides.
        labels: (N,) int64 or int32 anchor labels: -1 ignored (the row contributes nothing),
            0 background (all C entries negative), k in 1..C class k (entry k-1 positive, the
            other C-1 negative).
        gamma: focusing parameter, >= 0 (0 gives alpha-weighted binary cross-entropy).
        alpha: weight of the positive entries in [0, 1]; negatives get 1 - alpha.

    Returns:
        0-dim tensor, the sum over entries of alpha_t * (1 - p_t)^gamma * -log(p_t), computed and
        returned in float32 whatever the input dtype (float64 for float64 logits), so that a sum
        over 100k x 80 float16 entries cannot overflow. Not normalised: divide by the number of
        positives (RetinaNet) yourself. Differentiable with respect to ``logits``.

    Raises:
        RuntimeError: on a wrong shape, dtype or device, a label outside [-1, C], gamma < 0 or
            alpha outside [0, 1].
    """
    if not extension_in_use():
        return pure_ops.sigmoid_focal_loss(logits, labels, float(gamma), float(alpha))
    return ops.sigmoid_focal_loss(logits, labels, float(gamma), float(alpha))


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss` with fixed ``gamma`` and ``alpha``."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (N, C) float, labels (N,) int -> summed loss, 0-dim float32."""
        return sigmoid_focal_loss(logits, labels, self.gamma, self.alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


# --- fake (meta) kernels, so torch.compile can trace the ops, and autograd (registered where the
# extension defines the ops: see the end of this file) ----------------------------------------


def _sigmoid_focal_loss_fake(logits, labels, gamma, alpha):
    torch._check(logits.dim() == 2, lambda: f"logits must be (N, C), got {tuple(logits.shape)}")
    torch._check(
        labels.dim() == 1 and labels.shape[0] == logits.shape[0],
        lambda: f"labels must be (N,), got {tuple(labels.shape)}",
    )
    return logits.new_empty((), dtype=loss_dtype(logits))


def _sigmoid_focal_loss_backward_fake(grad_loss, logits, labels, gamma, alpha):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, gamma, alpha = inputs
    ctx.save_for_backward(logits, labels)
    ctx.gamma = gamma
    ctx.alpha = alpha


def _backward(ctx, grad_loss):
    logits, labels = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = ops.sigmoid_focal_loss_backward(
            grad_loss, logits, labels, ctx.gamma, ctx.alpha
        )
    return grad_logits, None, None, None


if extension_loaded():
    torch.library.register_fake("drdet::sigmoid_focal_loss", _sigmoid_focal_loss_fake)
    torch.library.register_fake(
        "drdet::sigmoid_focal_loss_backward", _sigmoid_focal_loss_backward_fake
    )
    torch.library.register_autograd(
        "drdet::sigmoid_focal_loss", _backward, setup_context=_setup_context
    )
