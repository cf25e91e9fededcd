"""An independent float64 pure-PyTorch DR loss (the paper's formula with masks and a softmax,
one group at a time), the paper's settings, random detection-like inputs for it, and a
loss-and-gradient helper."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

NEG_LAMBDA = 0.1 / math.log(3.5)
SMOOTHINGS = ["logistic", "quadratic", "hinge"]
PAIRINGS = ["dr", "negonly"]
# The paper's settings (lambda+ = 1, lambda- = 0.1 / ln 3.5, L = 6, margin 0.5, tau 4, logistic
# smoothing, DR pairing), by the names of dr_loss's keyword arguments.
PAPER_SETTINGS = {
    "pos_lambda": 1.0,
    "neg_lambda": NEG_LAMBDA,
    "L": 6.0,
    "margin": 0.5,
    "tau": 4.0,
    "smoothing": "logistic",
    "rho": 0.5,
    "pairing": "dr",
}


def dr_settings(**changes: object) -> dict[str, object]:
    """The paper's settings with `changes` (the same names); an unknown name is an error."""
    unknown = set(changes) - set(PAPER_SETTINGS)
    assert not unknown, f"not a setting of the DR loss: {sorted(unknown)}"
    return {**PAPER_SETTINGS, **changes}


def smooth(z: torch.Tensor, smoothing: str, L: float = 6.0, rho: float = 0.5) -> torch.Tensor:
    """The smoothed hinge of the margin z (any shape): logistic, quadratic or hinge."""
    if smoothing == "logistic":
        return F.softplus(L * z) / L
    if smoothing == "quadratic":
        return torch.where(
            z >= rho, z, torch.where(z <= -rho, torch.zeros_like(z), (z + rho) ** 2 / (4 * rho))
        )
    return z.clamp(min=0)


def reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    num_groups: int | None = None,
    pos_lambda: float = 1.0,
    neg_lambda: float = NEG_LAMBDA,
    L: float = 6.0,
    margin: float = 0.5,
    tau: float = 4.0,
    smoothing: str = "logistic",
    rho: float = 0.5,
    pairing: str = "dr",
) -> torch.Tensor:
    """The DR loss straight from its definition, in float64, one group at a time.

    logits (N, C); labels (N,) in {-1 ignored, 0 background, 1..C}; group_ids (N,) or None (one
    group). Returns the scalar mean over the groups that have a valid row."""
    p = logits.double().sigmoid()
    n, c = p.shape
    if group_ids is None:
        group_ids = torch.zeros(n, dtype=torch.long, device=p.device)
    if num_groups is None:
        num_groups = int(group_ids.max()) + 1 if n else 1
    classes = torch.arange(1, c + 1, device=p.device)
    losses = []
    for g in range(num_groups):
        rows = (group_ids == g) & (labels >= 0)
        if not rows.any():
            continue
        pg, lg = p[rows], labels[rows]
        is_pos = lg[:, None] == classes[None, :]
        pos, neg = pg[is_pos], pg[~is_pos]
        neg_mean = (torch.softmax(neg / neg_lambda, 0) * neg).sum() if neg.numel() else p.sum() * 0
        if pairing == "dr":
            pos_mean = (torch.softmax(-pos / pos_lambda, 0) * pos).sum() if pos.numel() else 1.0
            losses.append(tau * smooth(neg_mean - pos_mean + margin, smoothing, L, rho))
        elif pos.numel():
            losses.append(tau * smooth(neg_mean - pos + margin, smoothing, L, rho).mean())
        else:
            losses.append(p.sum() * 0)
    if not losses:
        return p.sum() * 0
    return torch.stack(losses).mean()


def random_inputs(
    n: int = 300,
    c: int = 7,
    groups: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    scale: float = 2.0,
    sorted_groups: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits (n, c), labels (n,) mostly background, group ids (n,) in [0, groups) or None)."""
    logits = (torch.randn(n, c, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    labels = torch.randint(-1, c + 1, (n,), device=device)
    labels[torch.rand(n, device=device) < 0.5] = 0  # mostly background, as in detection
    gids = None
    if groups is not None:
        gids = torch.randint(0, groups, (n,), device=device)
        if sorted_groups:
            gids = gids.sort().values
    return logits, labels, gids


def loss_and_grad(
    fn: Callable[..., torch.Tensor], logits: torch.Tensor, *args, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(logits, *args, **kwargs) and its gradient with respect to logits (same shape)."""
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad
