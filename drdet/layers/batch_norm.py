"""FrozenBatchNorm2d: batch norm with fixed statistics and affine parameters."""
import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Per-channel ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, never trained and never
    updated, so the layer behaves the same in train and eval mode and equals ``nn.BatchNorm2d`` in
    eval mode with the same statistics. Its state-dict keys are BatchNorm2d's (a
    ``num_batches_tracked`` entry is accepted and dropped), so BN checkpoints load into it.

    Args:
        num_features: channels C.
        eps: added to the variance (BatchNorm2d's default 1e-5; MSRA/Caffe2 checkpoints, which fold
            the statistics into weight and bias, are exact with eps 0).
    Shapes: x (N, C, H, W) of any floating dtype -> same shape and dtype.
    """

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
        # BatchNorm's inference kernel: the same arithmetic as nn.BatchNorm2d in eval mode
        # (bitwise), fp32 statistics with a half / bfloat16 input, and cuDNN on the GPU.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

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
                if module.track_running_stats:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module
