"""3x3 convolutions on the CPU by Winograd's minimal filtering, F(4x4, 3x3) (Lavin & Gray, CVPR
2016), for training.

A 3x3 convolution (stride 1, padding 1) computes each 4x4 block of outputs from a 6x6 block of
inputs. Winograd's algorithm transforms the 6x6 input tile (``V = B^T d B``) and the 3x3 filter
(``U = G g G^T``), multiplies them element-wise, summed over input channels, which for all
tiles and channels at once is 36 matrix products ``M[k] = V[k] U[k]``, and transforms back
(``Y = A^T M A``): 36 multiplications per 16 outputs instead of 144, so 4x fewer flops in the
matrix products, which run in the BLAS near the machine's peak. The transforms (csrc/cpu/
winograd_cpu.cpp) are cheap, memory-bound passes over channels-last data. The backward pass is
built the same way: dM = A dY A^T, then dV = dM U^T (input gradient, through the adjoint of
the input transform) and dU = V^T dM (filter gradient, ``G^T dU G``).

One call can convolve several feature maps with the same filter, such as the levels of an FPN
in the RetinaNet head (:func:`conv3x3_levels`): their tiles go through one set of matrix
products, and the filter is transformed once.

Accuracy: the transforms use the points 0, +-1, +-2 and infinity; against a direct float32
convolution the outputs differ by about 1e-6 to 1e-5 of their largest magnitude (a float64
input is exact to ~1e-14). cuDNN makes the same trade when it picks a Winograd algorithm.

Used for float32 / float64 CPU tensors outside autocast, where drdet's extension is in use
(drdet/layers/_ext.py); everything else (CUDA, other dtypes, other kernel sizes, strides or
paddings, no extension) goes to the ordinary convolution.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from drdet.layers._ext import extension_in_use, extension_loaded, ops

__all__ = [
    "apply_levels",
    "conv3x3_levels",
    "set_winograd",
    "winograd_conv3x3",
    "winograd_supported",
    "WinogradConv2d",
]

# G of F(4x4, 3x3): U = G g G^T maps a 3x3 filter to its 6x6 transform.
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)


def _kron_g(weight: Tensor) -> Tensor:
    """(36, 9) matrix of the filter transform, entry (a * 6 + b, r * 3 + s) = G[a, r] G[b, s], in
    the filter's dtype and device."""
    return torch.kron(_G, _G).to(device=weight.device, dtype=weight.dtype)


def _filter_transform(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) -> U (36, C, K): one (36, 9) x (9, C * K) matrix product."""
    k, c = weight.shape[:2]
    taps = weight.detach().permute(2, 3, 1, 0).reshape(9, c * k)
    return (_kron_g(weight) @ taps).view(36, c, k)


def _filter_transform_adjoint(du: Tensor) -> Tensor:
    """dU (36, C, K) -> dW (K, C, 3, 3), the gradient of :func:`_filter_transform`."""
    _, c, k = du.shape
    dw = _kron_g(du).T @ du.reshape(36, c * k)  # (9, C * K)
    return dw.view(3, 3, c, k).permute(3, 2, 0, 1).contiguous()


class _WinogradConv3x3(torch.autograd.Function):
    """ys = conv2d(x, weight, bias, padding=1) for each x of xs (N_l, C, H_l, W_l)."""

    @staticmethod
    def forward(ctx, weight, bias, *xs):
        ys = ops.winograd_conv3x3(list(xs), _filter_transform(weight), bias)  # channels_last
        # The filter transform is made again in the backward pass rather than kept: it is 4x
        # the filter (26 MiB for the class predictor of an 80-class head), and cheap to redo.
        ctx.save_for_backward(weight, *xs)
        return tuple(ys)

    @staticmethod
    @once_differentiable  # a second derivative (create_graph=True) raises instead of being wrong
    def backward(ctx, *grads):
        weight, *xs = ctx.saved_tensors
        u = _filter_transform(weight)
        needs_weight, needs_bias = ctx.needs_input_grad[:2]
        needs_x = any(ctx.needs_input_grad[2:])
        grads = [
            g if g is not None else x.new_zeros(x.shape[0], u.shape[2], *x.shape[2:])
            for g, x in zip(grads, xs)
        ]
        grad_xs, grad_u = ops.winograd_conv3x3_backward(grads, list(xs), u, needs_x, needs_weight)
        grad_weight = _filter_transform_adjoint(grad_u) if needs_weight else None
        grad_bias = sum(g.sum((0, 2, 3)) for g in grads) if needs_bias else None
        grad_xs = grad_xs if needs_x else [None] * len(xs)
        return (grad_weight, grad_bias, *grad_xs)


def winograd_supported(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`conv3x3_levels` takes the Winograd path for this input and filter: the
    extension in use, CPU, float32 or float64, not under CPU autocast, and a (K, C, 3, 3) filter
    of x's dtype."""
    return (
        extension_in_use()
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and weight.dim() == 4
        and tuple(weight.shape[2:]) == (3, 3)
        and x.dim() == 4
        and x.shape[1] == weight.shape[1]
        and not torch.is_autocast_enabled("cpu")
    )


def _inputs_qualify(xs: Sequence[Tensor], weight: Tensor, bias: Tensor | None) -> bool:
    """Every map :func:`winograd_supported`, and the bias (if any) a CPU tensor of the filter's
    dtype."""
    return all(winograd_supported(x, weight) for x in xs) and (
        bias is None or (bias.dtype == weight.dtype and bias.device.type == "cpu")
    )


def conv3x3_levels(
    xs: Sequence[Tensor], weight: Tensor, bias: Tensor | None = None
) -> list[Tensor]:
    """``[F.conv2d(x, weight, bias, padding=1) for x in xs]``, by Winograd F(4x4, 3x3) in one
    call where :func:`winograd_supported`, else by ``F.conv2d``.

    Args:
        xs: (N_l, C, H_l, W_l) maps of one dtype and device, any memory format (channels_last
            saves a copy); sizes may differ.
        weight: (K, C, 3, 3). bias: (K,) or None.
    Returns: (N_l, K, H_l, W_l) maps, channels_last on the Winograd path.
    """
    xs = list(xs)
    if not xs:
        return []
    if not _inputs_qualify(xs, weight, bias):
        return [F.conv2d(x, weight, bias, padding=1) for x in xs]
    return list(_WinogradConv3x3.apply(weight, bias, *xs))


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for one map (see :func:`conv3x3_levels`)."""
    return conv3x3_levels([x], weight, bias)[0]


# Where the Winograd path pays (forward + backward on the 2-core dev VM, against oneDNN's direct
# convolution): with fewer tiles (a 16 x 16 map at batch 2 has 32) the transforms' and the filter
# transform's fixed costs outweigh the smaller products; with 64 channels in or fewer than 64
# out (the box predictor's 36) it is no faster, and the channels_last output it leaves would slow
# a following GroupNorm, so such layers keep the direct convolution (docs/BENCHMARKS.md).
MIN_TILES = 128
MIN_IN_CHANNELS = 128
MIN_OUT_CHANNELS = 64


def num_tiles(xs: Sequence[Tensor]) -> int:
    """4 x 4 output tiles of the maps xs (N, C, H, W)."""
    return sum(x.shape[0] * ((x.shape[2] + 3) // 4) * ((x.shape[3] + 3) // 4) for x in xs)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, state dict and initialisation) that, in training mode,
    runs by Winograd F(4x4, 3x3) on the CPU (:func:`conv3x3_levels`) when it is a 3x3
    convolution with stride 1, padding 1, dilation 1, one group and zero padding, with at least
    ``MIN_IN_CHANNELS`` input and ``MIN_OUT_CHANNELS`` output channels, the input qualifies
    (:func:`winograd_supported`) and has at least ``MIN_TILES`` tiles; otherwise, and in eval
    mode, it is ``nn.Conv2d``. ``winograd = False`` turns the Winograd path off
    (cfg.MODEL.CPU_WINOGRAD). :meth:`forward_levels` convolves several maps in one call.
    """

    winograd = True

    def uses_winograd(self, xs: Sequence[Tensor]) -> bool:
        """Whether a call on the maps ``xs`` takes the Winograd path."""
        return (
            self.winograd
            and self.training
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and self.in_channels >= MIN_IN_CHANNELS
            and self.out_channels >= MIN_OUT_CHANNELS
            and num_tiles(xs) >= MIN_TILES
            and _inputs_qualify(xs, self.weight, self.bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_levels([x])[0]

    def forward_levels(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """``[self(x) for x in xs]``, with one Winograd call for all of them."""
        xs = list(xs)
        if xs and self.uses_winograd(xs):
            return list(_WinogradConv3x3.apply(self.weight, self.bias, *xs))
        return [super(WinogradConv2d, self).forward(x) for x in xs]


def apply_levels(module: nn.Module, xs: Sequence[Tensor]) -> list[Tensor]:
    """``[module(x) for x in xs]``, through the layers of an ``nn.Sequential`` one at a time, so
    that each :class:`WinogradConv2d` convolves all maps in one call."""
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    xs = list(xs)
    for layer in layers:
        if isinstance(layer, WinogradConv2d):
            xs = layer.forward_levels(xs)
        else:
            xs = [layer(x) for x in xs]
    return xs


# Convolutions that compute ``F.conv2d`` (WinogradConv2d by another algorithm in training, the
# same function): a following FrozenBatchNorm2d may be folded into them and they may be packed
# for inference (drdet/layers/batch_norm.py, drdet/layers/packed_conv.py). Other subclasses of
# nn.Conv2d may compute something else and are left alone.
PLAIN_CONVS = (nn.Conv2d, WinogradConv2d)


def set_winograd(module: nn.Module, enabled: bool) -> int:
    """Sets ``winograd`` on every :class:`WinogradConv2d` in ``module``; returns how many."""
    convs = [m for m in module.modules() if isinstance(m, WinogradConv2d)]
    for conv in convs:
        conv.winograd = bool(enabled)
    return len(convs)


# --- fake (meta) kernels, so that torch.compile can trace the ops (registered where the
# extension defines the ops) --------------------------------------------------------------------


def _channels_last_like(x: Tensor, channels: int) -> Tensor:
    return torch.empty(
        (x.shape[0], channels, x.shape[2], x.shape[3]),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last,
    )


def _winograd_conv3x3_fake(xs, u, bias):
    torch._check(u.dim() == 3 and u.shape[0] == 36, lambda: "u must be (36, C, K)")
    return [_channels_last_like(x, u.shape[2]) for x in xs]


def _winograd_conv3x3_backward_fake(grads, xs, u, input_grad, weight_grad):
    grad_xs = [_channels_last_like(x, x.shape[1]) for x in xs] if input_grad else []
    return grad_xs, (u.new_empty(u.shape) if weight_grad else u.new_empty(0))


if extension_loaded():
    torch.library.register_fake("drdet::winograd_conv3x3", _winograd_conv3x3_fake)
    torch.library.register_fake("drdet::winograd_conv3x3_backward", _winograd_conv3x3_backward_fake)
