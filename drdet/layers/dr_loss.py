"""The Distributional Ranking (DR) loss of Qian et al., CVPR 2020, as a fused op.

The loss is computed by ``torch.ops.drdet.dr_loss_forward`` (CPU and CUDA kernels in ``csrc/``):
one pass over the logits gathers per-group softmax statistics, and the backward is one
element-wise pass given those statistics. No mask, gather or copy of size N x C is made (a
non-contiguous ``logits`` is made contiguous first). Without the extension (drdet/layers/_ext.py)
the same loss is computed by its pure-PyTorch form (drdet/layers/pure_ops.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import pure_ops
from ._ext import extension_in_use, extension_loaded, loss_dtype, ops

__all__ = ["DRLoss", "DRLossParams", "InvalidDRLossParam", "PAIRINGS", "SMOOTHINGS", "dr_loss"]

SMOOTHINGS = ("logistic", "quadratic", "hinge")
PAIRINGS = ("dr", "negonly")
_NUM_STATS = 11  # columns of the per-group statistics (csrc/dr_loss.h, enum Stat)
_CFG_NODE = "MODEL.DR_LOSS"


class InvalidDRLossParam(ValueError):
    """A DR loss hyperparameter out of its range; ``field`` names it (``"neg_lambda"``, or
    ``"h_neg"`` from a config) and ``config_key`` is its key (``MODEL.DR_LOSS.NEG_LAMBDA``)."""

    def __init__(self, field: str, value: Any, what: str) -> None:
        super().__init__(f"dr_loss: {field} {what}, got {value!r}")
        self.field, self.value, self.what = field, value, what

    @property
    def config_key(self) -> str:
        return f"{_CFG_NODE}.{self.field.upper()}"


@dataclass(frozen=True)
class DRLossParams:
    """The hyperparameters of the DR loss, validated once, on construction.

    Fields (each config key is ``MODEL.DR_LOSS.<FIELD IN CAPITALS>``):
        pos_lambda, neg_lambda: softmax temperatures lambda+ and lambda- (> 0; the paper's
            lambda = 1 / ln h: defaults 1 and 0.1 / ln 3.5).
        L: logistic smoothing sharpness (> 0), Eq. 8.
        margin: the margin gamma of the ranking hinge (>= 0).
        tau: weight of the loss (> 0).
        smoothing: "logistic" (l(z) = log(1 + exp(L z)) / L, Eq. 8), "quadratic" (Eq. 7:
            l(z) = z for z >= rho, (z + rho)^2 / (4 rho) for |z| < rho, 0 for z <= -rho) or
            "hinge" (l(z) = max(z, 0), gradient 0 at z = 0).
        rho: half-width of the quadratic smoothing (> 0); only used with "quadratic".
        pairing: "dr" (the DR loss: l(P- - P+ + margin)) or "negonly" (paper Table 3: the mean
            over the group's positives j of l(P- - p_j + margin)).

    Raises :class:`InvalidDRLossParam` (a ValueError) naming the field.
    """

    pos_lambda: float = 1.0
    neg_lambda: float = 0.1 / math.log(3.5)
    L: float = 6.0
    margin: float = 0.5
    tau: float = 4.0
    smoothing: str = "logistic"
    rho: float = 0.5
    pairing: str = "dr"

    def __post_init__(self) -> None:
        for name in ("pos_lambda", "neg_lambda", "L", "tau", "rho"):
            _check(
                name,
                getattr(self, name),
                lambda v: math.isfinite(v) and v > 0,
                "must be a finite number > 0",
            )
        _check(
            "margin",
            self.margin,
            lambda v: math.isfinite(v) and v >= 0,
            "must be a finite number >= 0",
        )
        for name, choices in (("smoothing", SMOOTHINGS), ("pairing", PAIRINGS)):
            _check(
                name, getattr(self, name), lambda v, c=choices: v in c, f"must be one of {choices}"
            )

    @classmethod
    def from_cfg(cls, cfg: Any) -> DRLossParams:
        """From ``cfg.MODEL.DR_LOSS``. The paper (Sec. 4.2, Table 1) tunes lambda+ = 1 / ln(h+)
        and lambda- = 0.1 / ln(h-), i.e. the KL regulariser in base h with lambda+ = 1,
        lambda- = 0.1; the released code's defaults are h+ = e (lambda+ = 1) and h- = 3.5
        (lambda- = 0.1 / ln 3.5 = 0.0798). ``H_POS`` / ``H_NEG`` > 1 take precedence over
        ``POS_LAMBDA`` / ``NEG_LAMBDA``; 0 leaves those in force."""
        d = cfg.MODEL.DR_LOSS
        params = cls(**{f.name: d[f.name.upper()] for f in dataclasses.fields(cls)})
        lambdas: dict[str, Any] = {}
        for h_name, field, scale in (("h_pos", "pos_lambda", 1.0), ("h_neg", "neg_lambda", 0.1)):
            h = d[h_name.upper()]
            _check(
                h_name,
                h,
                lambda v: v == 0.0 or v > 1.0,
                "must be 0 (unused) or > 1 (lambda = c / ln h)",
            )
            if h > 0:
                lambdas[field] = scale / math.log(h)
        return dataclasses.replace(params, **lambdas)

    def as_op_args(self) -> tuple[Any, ...]:
        """The fields in the op's order (csrc/dr_loss.cpp), numbers as float."""
        return tuple(
            float(v) if isinstance(v, (int, float)) else v for v in dataclasses.astuple(self)
        )


_NUM_PARAMS = len(dataclasses.fields(DRLossParams))


def _check(field: str, value: Any, ok: Any, what: str) -> None:
    if not ok(value):
        raise InvalidDRLossParam(field, value, what)


def dr_loss(
    logits: Tensor,
    labels: Tensor,
    group_ids: Tensor | None = None,
    *,
    num_groups: int | None = None,
    params: DRLossParams | None = None,
    **overrides: Any,
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
        params: the hyperparameters (:class:`DRLossParams`; default its defaults).
        **overrides: fields of :class:`DRLossParams` replacing those of ``params``
            (``dr_loss(logits, labels, tau=2.0, smoothing="hinge")``).

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
        scalar tensor, float32 whatever the dtype of ``logits`` (float64 for float64 logits), so
        that a float16 or bfloat16 head (autocast) gets an unrounded loss. The gradient w.r.t.
        ``logits`` has their dtype.
    """
    params = _resolve(params, overrides)
    if num_groups is None:
        if group_ids is None or group_ids.numel() == 0:
            num_groups = 1
        else:
            num_groups = int(group_ids.max()) + 1
    if num_groups < 1:
        raise ValueError(f"dr_loss: num_groups must be >= 1, got {num_groups}")
    if not extension_in_use():
        return pure_ops.dr_loss(logits, labels, group_ids, num_groups, params)
    loss, _ = ops.dr_loss_forward(logits, labels, group_ids, num_groups, *params.as_op_args())
    return loss


def _resolve(params: DRLossParams | None, overrides: dict[str, Any]) -> DRLossParams:
    """``params`` (default: the defaults) with ``overrides`` applied; TypeError naming an
    unknown keyword."""
    params = DRLossParams() if params is None else params
    if not overrides:
        return params
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DRLossParams)})
    if unknown:
        raise TypeError(
            f"dr_loss: unknown parameters {unknown}; the parameters are the fields of DRLossParams"
        )
    return dataclasses.replace(params, **overrides)


class DRLoss(nn.Module):
    """Module form of :func:`dr_loss`: ``DRLoss(params)``, ``DRLoss(tau=2.0, ...)`` (fields of
    :class:`DRLossParams`) or both (the keywords replace fields of ``params``)."""

    def __init__(self, params: DRLossParams | None = None, **overrides: Any) -> None:
        super().__init__()
        self.params = _resolve(params, overrides)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        group_ids: Tensor | None = None,
        num_groups: int | None = None,
    ) -> Tensor:
        """logits (N, C), labels (N,), group_ids (N,) or None: see :func:`dr_loss`."""
        return dr_loss(logits, labels, group_ids, num_groups=num_groups, params=self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.params).items())


# ---- autograd and fake (meta) kernels of the ops, so that torch.compile can trace them ----

# The op's arguments: the tensors and num_groups below, then the DRLossParams fields in order.
_FORWARD_INPUTS = ("logits", "labels", "group_ids", "num_groups")


# (registered where the extension defines the ops: see the end of this file)


def _dr_loss_forward_fake(logits, labels, group_ids, num_groups, *params):
    torch._check(logits.dim() == 2, lambda: "dr_loss: logits must be (N, C)")
    torch._check(labels.shape == logits.shape[:1], lambda: "dr_loss: labels must be (N,)")
    torch._check(len(params) == _NUM_PARAMS, lambda: "dr_loss: wrong number of parameters")
    loss = logits.new_empty((), dtype=loss_dtype(logits))
    stats = logits.new_empty((num_groups, _NUM_STATS), dtype=torch.float64)
    return loss, stats


def _dr_loss_backward_fake(grad_loss, logits, labels, group_ids, stats, *params):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, group_ids = inputs[0], inputs[1], inputs[2]
    ctx.params = inputs[len(_FORWARD_INPUTS) :]  # the DRLossParams fields, in order
    ctx.save_for_backward(logits, labels, group_ids, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_stats):
    logits, labels, group_ids, stats = ctx.saved_tensors
    grad = ops.dr_loss_backward(grad_loss, logits, labels, group_ids, stats, *ctx.params)
    # One gradient per input of the forward: logits only.
    return (grad,) + (None,) * (len(_FORWARD_INPUTS) - 1 + len(ctx.params))


if extension_loaded():
    torch.library.register_fake("drdet::dr_loss_forward", _dr_loss_forward_fake)
    torch.library.register_fake("drdet::dr_loss_backward", _dr_loss_backward_fake)
    torch.library.register_autograd(
        "drdet::dr_loss_forward", _backward, setup_context=_setup_context
    )
