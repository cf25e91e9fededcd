"""FrozenBatchNorm2d: batch norm with fixed statistics and affine parameters."""

import torch
import torch.nn.functional as F
from torch import nn

from drdet.layers.winograd import PLAIN_CONVS


class FrozenBatchNorm2d(nn.Module):
    """Per-channel ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, never trained and never
    updated, so the layer behaves the same in train and eval mode and equals ``nn.BatchNorm2d`` in
    eval mode with the same statistics (bitwise without autograd; when ``x`` needs a gradient, to
    rounding, as one multiply-add that saves nothing for the backward pass). Its state-dict keys are BatchNorm2d's (a
    ``num_batches_tracked`` entry is accepted and dropped), so BN checkpoints load into it.

    Args:
        num_features: channels C.
        eps: added to the variance (BatchNorm2d's default 1e-5; MSRA/Caffe2 checkpoints, which fold
            the statistics into weight and bias, are exact with eps 0).
    Shapes: x (N, C, H, W) of any floating dtype -> same shape and dtype.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            # Training: y = x * scale + shift in one addcmul, which keeps nothing for the
            # backward pass (the scale is a constant), where batch_norm would keep x, a full
            # map per layer (about a third of a FrozenBN ResNet's activation memory).
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            shift = self.bias - self.running_mean * scale
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
        # BatchNorm's inference kernel: the same arithmetic as nn.BatchNorm2d in eval mode
        # (bitwise), fp32 statistics with a half / bfloat16 input, and cuDNN on the GPU.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm2d / SyncBatchNorm inside replaced, in place where
        it is a child, by a FrozenBatchNorm2d holding its current statistics and affine values."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight)
                    frozen.bias.copy_(module.bias)
                if module.running_mean is not None and module.running_var is not None:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def fold_frozen_batchnorm(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` in one convolution (inference only).

    With ``s = weight / sqrt(running_var + eps)``: ``W' = W * s`` (per output channel) and
    ``b' = (b - running_mean) * s + bias`` (``b = 0`` for a conv without bias). The folded values
    are computed in float64 and stored in the conv's dtype; the inputs are not modified.
    Grouped and dilated convolutions fold the same way (the scale is per output channel).
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, FrozenBatchNorm2d):
        raise TypeError(
            f"fold_frozen_batchnorm needs (Conv2d, FrozenBatchNorm2d), got "
            f"({type(conv).__name__}, {type(bn).__name__})"
        )
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels, the FrozenBatchNorm2d {bn.num_features}"
        )
    with torch.no_grad():
        scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]  # (int, int) for Conv2d
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=True,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused_bias = fused.bias
        assert fused_bias is not None
        fused.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        fused_bias.copy_((bias - bn.running_mean.double()) * scale + bn.bias.double())
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused_bias.requires_grad_(conv.weight.requires_grad)
    return fused


def fuse_frozen_batchnorm(module: nn.Module) -> int:
    """Folds, in place, every FrozenBatchNorm2d of ``module`` that directly follows a Conv2d
    into that conv (:func:`fold_frozen_batchnorm`) and replaces it by ``nn.Identity``.
    Returns the number of layers folded.

    A pair is a plain convolution (one of ``PLAIN_CONVS``) and a FrozenBatchNorm2d that are
    children of one module, either consecutive entries of an ``nn.Sequential``, or named in the
    module's ``conv_norm_pairs`` attribute (a sequence of ``(conv_name, norm_name)``, declared by
    modules whose forward applies the norm to the conv's output and uses that output nowhere
    else, such as the ResNet blocks). Other FrozenBatchNorm2d layers stay as they are.

    For inference copies only: the folded module has other state-dict keys (no ``bn*`` buffers,
    conv biases), so checkpoints must be saved from the unfolded model.
    """
    folded = 0
    for child in module.children():
        folded += fuse_frozen_batchnorm(child)
    if isinstance(module, nn.Sequential):
        keys = list(module._modules)
        pairs = list(zip(keys[:-1], keys[1:]))
    else:
        pairs = list(getattr(module, "conv_norm_pairs", ()))
    for conv_name, bn_name in pairs:
        conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
        if type(conv) in PLAIN_CONVS and isinstance(bn, FrozenBatchNorm2d):
            assert isinstance(conv, nn.Conv2d)
            setattr(module, conv_name, fold_frozen_batchnorm(conv, bn))
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded
