"""Pure-PyTorch forms of the extension's ops: the DR loss, the sigmoid focal loss, NMS and
class-aware NMS. drdet.layers runs them where drdet._C is missing or switched off
(drdet/layers/_ext.py); they give the extension's results to float rounding, check their input
the same way with the same messages, and differentiate through autograd (the focal loss with
its gradient written out, which stays finite for any logit).

They cost what the fused kernels avoid: several passes over (N, C) temporaries instead of one
over the logits (and the DR loss keeps some for autograd's backward pass). Losses are computed in float32 (float64 for
float64 logits) and returned in that dtype, whatever the logits' dtype; their gradient has the
logits' dtype. NMS runs torchvision.ops.nms per class, in float32 for half-precision boxes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ext import loss_dtype

__all__ = ["batched_nms", "dr_loss", "nms", "sigmoid_focal_loss"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RuntimeError(message)


def _check_ids(op: str, name: str, ids: Tensor, logits: Tensor) -> None:
    """Shape, dtype and device of per-row ids (labels, group ids): (N,) int64 or int32 on the
    device of ``logits`` (N, C)."""
    n = logits.shape[0]
    _require(
        ids.dim() == 1 and ids.shape[0] == n,
        f"{op}: {name} must be (N,) with N = {n}, got shape {tuple(ids.shape)}",
    )
    _require(
        ids.dtype in (torch.int64, torch.int32),
        f"{op}: {name} must be int64 or int32, got {ids.dtype}",
    )
    _require(
        ids.device == logits.device,
        f"{op}: {name} must be on the device of logits ({logits.device}), got {ids.device}",
    )


def _check_labels(op: str, logits: Tensor, labels: Tensor) -> None:
    """``logits`` (N, C) and their ``labels`` (N,)."""
    _require(logits.dim() == 2, f"{op}: logits must be (N, C), got shape {tuple(logits.shape)}")
    _check_ids(op, "labels", labels, logits)


def _value_range(values: Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor, in one device-to-host copy."""
    lo, hi = torch.stack(torch.aminmax(values)).tolist()
    return int(lo), int(hi)


def _check_dr_inputs(logits: Tensor, labels: Tensor, group_ids: Tensor | None, groups: int) -> None:
    op = "dr_loss"
    _check_labels(op, logits, labels)
    _require(logits.is_floating_point(), f"{op}: logits must be floating point, got {logits.dtype}")
    _require(groups >= 1, f"{op}: num_groups must be >= 1, got {groups}")
    if group_ids is not None:
        _check_ids(op, "group_ids", group_ids, logits)
    if labels.numel() == 0:
        return
    lo, hi = _value_range(labels)
    c = logits.shape[1]
    _require(
        lo >= -1 and hi <= c,
        f"{op}: labels must lie in [-1, {c}] (-1 ignored, 0 background, 1..C classes), "
        f"got values in [{lo}, {hi}]",
    )
    if group_ids is not None:
        lo, hi = _value_range(group_ids)
        _require(
            lo >= 0 and hi < groups,
            f"{op}: group_ids must lie in [0, {groups}) (num_groups = {groups}), "
            f"got values in [{lo}, {hi}]",
        )


# ---- the DR loss ---------------------------------------------------------------------------


def _group_weighted_mean(
    scores: Tensor, values: Tensor, member: Tensor, group: Tensor, groups: int, inv_lambda: float
) -> tuple[Tensor, Tensor]:
    """Per group, the mean of ``values`` weighted by softmax(scores / lambda) over the entries
    where ``member`` holds.

    scores, values: (N, K) float; member: (N, K) bool; group: (N,) int64 in [0, groups).
    Returns (mean (groups,) float64, 0 where the group has no member; has_member (groups,) bool).
    The weights are shifted by the group's largest member score (no overflow for a small
    lambda); rows are summed in the scores' dtype, groups in float64.
    """
    masked = scores.masked_fill(~member, -math.inf)
    row_max = masked.detach().amax(1) if masked.shape[1] else masked.new_full((0,), -math.inf)
    shift = torch.full((groups,), -math.inf, dtype=scores.dtype, device=scores.device)
    shift = shift.scatter_reduce(0, group, row_max, "amax")
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = torch.exp((masked - shift[group, None]) * inv_lambda)  # 0 off the members
    sums = torch.zeros(2, groups, dtype=torch.float64, device=scores.device)
    rows = torch.stack([weights.sum(1), (weights * values).sum(1)]).double()
    sums = sums.index_add(1, group, rows)
    has_member = sums[0] > 0
    mean = sums[1] / torch.where(has_member, sums[0], torch.ones_like(sums[0]))
    return mean, has_member


def _smooth(z: Tensor, params: Any) -> Tensor:
    """The smoothed hinge l(z): logistic log(1 + exp(L z)) / L, quadratic (Eq. 7) or [z]+."""
    if params.smoothing == "logistic":
        return torch.logaddexp(params.L * z, torch.zeros_like(z)) / params.L
    if params.smoothing == "quadratic":
        rho = params.rho
        inside = (z + rho).square() / (4.0 * rho)
        return torch.where(z >= rho, z, torch.where(z <= -rho, torch.zeros_like(z), inside))
    return F.relu(z)


def dr_loss(
    logits: Tensor, labels: Tensor, group_ids: Tensor | None, num_groups: int, params: Any
) -> Tensor:
    """The DR loss (drdet.layers.dr_loss documents it) with ``params`` a DRLossParams.

    logits (N, C) float; labels (N,) int in [-1, C]; group_ids (N,) int in [0, num_groups) or
    None (one group). Returns the scalar mean over the counted groups of tau * loss_g.
    """
    _check_dr_inputs(logits, labels, group_ids, num_groups)
    n, c = logits.shape
    p = logits.to(loss_dtype(logits)).sigmoid()
    labels = labels.long()
    group = torch.zeros(n, dtype=torch.long, device=p.device)
    if group_ids is not None:
        group = group_ids.long()
    valid, positive = labels >= 0, labels > 0
    classes = torch.arange(1, c + 1, device=p.device)
    is_pos = labels[:, None] == classes  # (N, C): the anchor's own class
    neg_mean, _ = _group_weighted_mean(
        p, p, valid[:, None] & ~is_pos, group, num_groups, 1.0 / params.neg_lambda
    )
    p_own = p.gather(1, (labels - 1).clamp(min=0)[:, None])  # (N, 1), used where positive
    pos_mean, has_pos = _group_weighted_mean(
        -p_own, p_own, positive[:, None], group, num_groups, 1.0 / params.pos_lambda
    )
    ones = torch.ones(num_groups, dtype=torch.float64, device=p.device)
    num_pos = torch.zeros_like(ones).index_add(0, group, positive.double())
    num_valid = torch.zeros_like(ones).index_add(0, group, valid.double())
    if params.pairing == "dr":
        z = neg_mean - torch.where(has_pos, pos_mean, ones) + params.margin
        per_group = _smooth(z, params)
    else:  # negonly: the mean over the group's positives j of l(P- - p_j + margin)
        z_own = neg_mean[group] - p_own[:, 0].double() + params.margin
        own = torch.where(positive, _smooth(z_own, params), torch.zeros_like(z_own))
        per_group = torch.zeros_like(ones).index_add(0, group, own) / num_pos.clamp(min=1.0)
    counted = num_valid > 0
    total = torch.where(counted, params.tau * per_group, torch.zeros_like(per_group)).sum()
    return (total / counted.sum().clamp(min=1)).to(loss_dtype(logits))


# ---- the sigmoid focal loss ----------------------------------------------------------------


def _check_focal_inputs(logits: Tensor, labels: Tensor, gamma: float, alpha: float) -> None:
    op = "sigmoid_focal_loss"
    _check_labels(op, logits, labels)
    _require(
        logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
        f"{op}: logits must be float16, bfloat16, float32 or float64, got {logits.dtype}",
    )
    _require(
        math.isfinite(gamma) and gamma >= 0, f"{op}: gamma must be finite and >= 0, got {gamma}"
    )
    _require(0.0 <= alpha <= 1.0, f"{op}: alpha must be in [0, 1], got {alpha}")
    c = logits.shape[1]
    if labels.numel():
        lo, hi = _value_range(labels)
        _require(
            lo >= -1 and hi <= c,
            f"{op}: labels must be in [-1, C] with C = {c} (-1 ignored, 0 background, k class k), "
            f"got values in [{lo}, {hi}]",
        )


# In terms of z, the logit signed towards the wrong answer (x for an entry of another class, -x
# for the entry of the anchor's own class), an entry's loss is w sigmoid(z)^gamma softplus(z)
# (-log(p_t) = softplus(z), 1 - p_t = sigmoid(z)), with w = 1 - alpha or alpha, and its
# derivative w sigmoid(z)^gamma (gamma sigmoid(-z) softplus(z) + sigmoid(z)): finite for any
# logit (autograd through the product overflows near 3e38). sigmoid(z)^gamma loses precision
# only where sigmoid(z) is subnormal, where softplus(z) is too: the product is then below
# float32's smallest normal number either way.


def _focal_value(z: Tensor, weight: float, gamma: float) -> Tensor:
    """w sigmoid(z)^gamma softplus(z), elementwise, in a fresh tensor."""
    value = F.softplus(z)
    if gamma != 0:
        value.mul_(torch.sigmoid(z).pow_(gamma))
    return value.mul_(weight)


def _focal_grad(z: Tensor, weight: float, gamma: float) -> Tensor:
    """d/dz of :func:`_focal_value`, elementwise, in a fresh tensor."""
    p = torch.sigmoid(z)
    if gamma == 0:
        return p.mul_(weight)
    grad = F.softplus(z).mul_(torch.sigmoid(-z)).mul_(gamma).add_(p)
    return grad.mul_(p.pow_(gamma)).mul_(weight)


def _positives(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, columns, x at them) of the anchors' own-class entries."""
    rows = torch.nonzero(labels > 0)[:, 0]
    cols = labels[rows].long() - 1
    return rows, cols, x[rows, cols]


class _SigmoidFocalLoss(torch.autograd.Function):
    """The summed focal loss with its gradient written out. Every entry is computed as a
    negative, in place on one (N, C) buffer, and the N own-class entries are then overwritten:
    no (N, C) mask; only the logits are kept for the backward pass."""

    @staticmethod
    def forward(ctx, logits, labels, gamma, alpha):
        x = logits.to(loss_dtype(logits))
        rows, cols, x_pos = _positives(x, labels)
        per_entry = _focal_value(x, 1.0 - alpha, gamma)
        per_entry[rows, cols] = _focal_value(-x_pos, alpha, gamma)
        per_entry.masked_fill_(labels[:, None] < 0, 0)
        ctx.save_for_backward(logits, labels)
        ctx.gamma, ctx.alpha = gamma, alpha
        return per_entry.sum(1).double().sum().to(x.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels = ctx.saved_tensors
        x = logits.to(loss_dtype(logits))
        rows, cols, x_pos = _positives(x, labels)
        grad = _focal_grad(x, 1.0 - ctx.alpha, ctx.gamma)  # dz/dx = 1
        grad[rows, cols] = -_focal_grad(-x_pos, ctx.alpha, ctx.gamma)  # dz/dx = -1
        grad.masked_fill_(labels[:, None] < 0, 0).mul_(grad_loss)
        return grad.to(logits.dtype), None, None, None


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, gamma: float, alpha: float) -> Tensor:
    """The summed sigmoid focal loss (drdet.layers.sigmoid_focal_loss documents it):
    sum over the entries of non-ignored rows of alpha_t * (1 - p_t)^gamma * -log(p_t)."""
    _check_focal_inputs(logits, labels, gamma, alpha)
    return _SigmoidFocalLoss.apply(logits, labels, gamma, alpha)


# ---- NMS -----------------------------------------------------------------------------------


def _check_nms_inputs(
    op: str, boxes: Tensor, scores: Tensor, class_ids: Tensor | None, iou_threshold: float
) -> None:
    n = boxes.shape[0] if boxes.dim() else 0
    _require(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        f"{op}: boxes must be (N, 4) as (x1, y1, x2, y2), got shape {tuple(boxes.shape)}",
    )
    _require(
        scores.dim() == 1 and scores.shape[0] == n,
        f"{op}: scores must be (N,) with N = boxes.size(0) = {n}, got shape {tuple(scores.shape)}",
    )
    for name, t in (("boxes", boxes), ("scores", scores)):
        _require(
            t.is_floating_point(), f"{op}: {name} must be a floating-point tensor, got {t.dtype}"
        )
    _require(
        scores.device == boxes.device,
        f"{op}: scores must be on the device of boxes ({boxes.device}), got {scores.device}",
    )
    if class_ids is not None:
        _require(
            class_ids.dim() == 1 and class_ids.shape[0] == n,
            f"{op}: class_ids must be (N,) with N = boxes.size(0) = {n}, "
            f"got shape {tuple(class_ids.shape)}",
        )
        _require(
            not class_ids.is_floating_point()
            and not class_ids.is_complex()
            and class_ids.dtype != torch.bool,
            f"{op}: class_ids must be an integer tensor, got {class_ids.dtype}",
        )
        _require(
            class_ids.device == boxes.device,
            f"{op}: class_ids must be on the device of boxes ({boxes.device}), "
            f"got {class_ids.device}",
        )
    _require(
        math.isfinite(iou_threshold), f"{op}: iou_threshold must be finite, got {iou_threshold}"
    )


def _tv_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.nms in float32 (float64 for float64 boxes), whatever the input dtypes."""
    try:
        from torchvision.ops import nms as tv_nms
    except ImportError as e:
        raise ImportError(
            "drdet's NMS without its extension runs torchvision.ops.nms: install the torchvision "
            "that matches your torch, or build drdet's extension (`make install`)"
        ) from e
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    return tv_nms(boxes.to(dtype), scores.to(dtype), float(iou_threshold))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS (drdet.layers.nms documents it): kept indices, decreasing score."""
    _check_nms_inputs("nms", boxes, scores, None, iou_threshold)
    return _tv_nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS (drdet.layers.batched_nms documents it): NMS within each class, one call
    per class present (no coordinate offsets, which round in float32), kept indices in
    decreasing score order."""
    _check_nms_inputs("batched_nms", boxes, scores, class_ids, iou_threshold)
    kept = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for c in torch.unique(class_ids):
        members = torch.nonzero(class_ids == c)[:, 0]
        kept[members[_tv_nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.nonzero(kept)[:, 0]
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
