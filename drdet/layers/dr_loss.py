"""The Distributional Ranking (DR) loss of Qian et al., CVPR 2020, as a fused op.

The loss is computed by ``torch.ops.drdet.dr_loss_forward`` (CPU and CUDA kernels in ``csrc/``):
one pass over the logits gathers per-group softmax statistics, and the backward is one
element-wise pass given those statistics. No mask, gather or copy of size N x C is made (a
non-contiguous ``logits`` is made contiguous first).
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ._ext import ops

__all__ = ["dr_loss", "DRLoss"]

_SMOOTHINGS = ("logistic", "quadratic", "hinge")
_PAIRINGS = ("dr", "negonly")
_NUM_STATS = 11  # columns of the per-group statistics (csrc/dr_loss.h, enum Stat)


def dr_loss(
    logits: Tensor,
    labels: Tensor,
    group_ids: Optional[Tensor] = None,
    *,
    num_groups: Optional[int] = None,
    pos_lambda: float = 1.0,
    neg_lambda: float = 0.1 / math.log(3.5),
    L: float = 6.0,
    margin: float = 0.5,
    tau: float = 4.0,
    smoothing: str = "logistic",
    rho: float = 0.5,
    pairing: str = "dr",
) -> Tensor:
    """DR loss of per-anchor class logits, averaged over groups (images or the whole batch).

    Args:
        logits: (N, C) float32/float16/bfloat16/float64, one row per anchor, one column per
            foreground class; p = sigmoid(logits). Statistics are accumulated in float32 (float64
            on the CPU for cross-row sums; float64 throughout for float64 input).
        labels: (N,) int64/int32: 0 background, 1..C the anchor's class, -1 ignored.
        group_ids: (N,) int64/int32 in [0, num_groups): the group (image) of each row, in any
            order. None puts every row in one group, as the authors' released code does per GPU.
        num_groups: number of groups; by default max(group_ids) + 1 (which synchronises with
            the GPU and cannot be traced by torch.compile: pass it, e.g. the batch size).
        pos_lambda, neg_lambda: softmax temperatures lambda+ and lambda- (> 0; the paper's
            lambda = 1 / ln h: defaults 1 and 0.1 / ln 3.5).
        L: logistic smoothing sharpness (> 0), Eq. 8.
        margin: the margin gamma of the ranking hinge.
        tau: weight of the loss.
        smoothing: "logistic" (l(z) = log(1 + exp(L z)) / L, Eq. 8), "quadratic" (Eq. 7:
            l(z) = z for z >= rho, (z + rho)^2 / (4 rho) for |z| < rho, 0 for z <= -rho) or
            "hinge" (l(z) = max(z, 0), gradient 0 at z = 0).
        rho: half-width of the quadratic smoothing (> 0); only used with "quadratic".
        pairing: "dr" (the DR loss: l(P- - P+ + margin)) or "negonly" (paper Table 3: the mean
            over the group's positives j of l(P- - p_j + margin)).

    Per group, the negatives are every (anchor, class) entry of a non-ignored anchor except the
    anchor's own class; the positives are the (anchor, label) entries of foreground anchors.
    P- = sum_j q_j p_j with q = softmax(p / lambda-) over the negatives and
    P+ = sum_j q_j p_j with q = softmax(-p / lambda+) over the positives. Then:

    - a group with no positive has P+ = 1 with pairing "dr", and loss 0 with "negonly" (it is
      still counted in the mean);
    - a group with positives but no negative (C = 1, all anchors foreground) has P- = 0;
    - a group whose rows are all ignored contributes nothing and is not counted;
    - the result is tau times the mean of the per-group losses over the counted groups, and 0
      (with a zero gradient, still attached to the graph) when no group is counted, e.g. N = 0.

    Returns:
        scalar tensor of the dtype of ``logits``. The gradient w.r.t. ``logits`` has its dtype.
    """
    if smoothing not in _SMOOTHINGS:
        raise ValueError(f"dr_loss: smoothing must be one of {_SMOOTHINGS}, got {smoothing!r}")
    if pairing not in _PAIRINGS:
        raise ValueError(f"dr_loss: pairing must be one of {_PAIRINGS}, got {pairing!r}")
    for name, value in (("pos_lambda", pos_lambda), ("neg_lambda", neg_lambda), ("L", L)):
        if not value > 0:
            raise ValueError(f"dr_loss: {name} must be > 0, got {value}")
    if smoothing == "quadratic" and not rho > 0:
        raise ValueError(f"dr_loss: rho must be > 0 for quadratic smoothing, got {rho}")
    if num_groups is None:
        if group_ids is None or group_ids.numel() == 0:
            num_groups = 1
        else:
            num_groups = int(group_ids.max()) + 1
    if num_groups < 1:
        raise ValueError(f"dr_loss: num_groups must be >= 1, got {num_groups}")
    loss, _ = ops.dr_loss_forward(
        logits, labels, group_ids, num_groups, float(pos_lambda), float(neg_lambda), float(L),
        float(margin), float(tau), smoothing, float(rho), pairing,
    )
    return loss


class DRLoss(nn.Module):
    """Module form of :func:`dr_loss`; the constructor takes its keyword arguments."""

    def __init__(
        self,
        pos_lambda: float = 1.0,
        neg_lambda: float = 0.1 / math.log(3.5),
        L: float = 6.0,
        margin: float = 0.5,
        tau: float = 4.0,
        smoothing: str = "logistic",
        rho: float = 0.5,
        pairing: str = "dr",
    ) -> None:
        super().__init__()
        self.kwargs = dict(pos_lambda=pos_lambda, neg_lambda=neg_lambda, L=L, margin=margin,
                           tau=tau, smoothing=smoothing, rho=rho, pairing=pairing)

    def forward(self, logits: Tensor, labels: Tensor, group_ids: Optional[Tensor] = None,
                num_groups: Optional[int] = None) -> Tensor:
        """logits (N, C), labels (N,), group_ids (N,) or None: see :func:`dr_loss`."""
        return dr_loss(logits, labels, group_ids, num_groups=num_groups, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


# ---- autograd and fake (meta) kernels of the ops, so that torch.compile can trace them ----

@torch.library.register_fake("drdet::dr_loss_forward")
def _dr_loss_forward_fake(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda, L,
                          margin, tau, smoothing, rho, pairing):
    torch._check(logits.dim() == 2, lambda: "dr_loss: logits must be (N, C)")
    torch._check(labels.shape == logits.shape[:1], lambda: "dr_loss: labels must be (N,)")
    loss = logits.new_empty(())
    stats = logits.new_empty((num_groups, _NUM_STATS), dtype=torch.float64)
    return loss, stats


@torch.library.register_fake("drdet::dr_loss_backward")
def _dr_loss_backward_fake(grad_loss, logits, labels, group_ids, stats, pos_lambda, neg_lambda,
                           L, margin, tau, smoothing, rho, pairing):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, group_ids = inputs[0], inputs[1], inputs[2]
    ctx.params = inputs[4:]  # pos_lambda, neg_lambda, L, margin, tau, smoothing, rho, pairing
    ctx.save_for_backward(logits, labels, group_ids, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_stats):
    logits, labels, group_ids, stats = ctx.saved_tensors
    grad = ops.dr_loss_backward(grad_loss, logits, labels, group_ids, stats, *ctx.params)
    return (grad,) + (None,) * 11


torch.library.register_autograd("drdet::dr_loss_forward", _backward, setup_context=_setup_context)
