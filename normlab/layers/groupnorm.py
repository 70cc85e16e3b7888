"""GroupNorm, LayerNorm, InstanceNorm1d/2d/3d (Wu & He 2018, Eq. 1-3), RMSNorm and a channels-first LayerNorm2d: the
same core, other statistic sets.

    LN: S = one sample's (C, H, W)    IN: S = one sample's one channel (H, W)    GN: S = one sample's channel group
    LayerNorm2d: S = one sample's C channels at one position (timm's)    RMSNorm: LN's set, uncentered (x / RMS)
GN with G = 1 is LN over (C, H, W) and with G = C it is IN, up to where the affine parameters live. Each class
subclasses its torch.nn twin (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm*d, nn.RMSNorm; LayerNorm2d subclasses
nn.LayerNorm as timm's does) and replaces only the forward (functional.py on normlab.core).
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import nn

from .. import core
from . import functional as F, scripted
from .batchnorm import _NormBase
from .functional import positive_int


def _shape_or_raise(normalized_shape) -> tuple[int, ...]:
    """An int (Python or NumPy, as torch accepts) or a non-empty sequence of them, as a tuple of positive ints."""
    try:
        operator.index(normalized_shape)
        return (positive_int(normalized_shape, "normalized_shape"),)
    except TypeError:
        pass
    try:
        shape = tuple(positive_int(d, "normalized_shape") for d in normalized_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape:
        raise ValueError(f"normalized_shape: expected a positive int or a tuple of them, got {normalized_shape!r}")
    return shape


class GroupNorm(nn.GroupNorm):
    """GN over (N, C, *) input: statistics per sample over C/G channels and all positions; per-channel affine.
    A torch.nn.GroupNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True) -> None:
        num_groups, num_channels = positive_int(num_groups, "num_groups"), positive_int(num_channels, "num_channels")
        if num_channels % num_groups != 0:
            raise ValueError(f"num_groups: expected a divisor of num_channels={num_channels}, got {num_groups}")
        super().__init__(num_groups, num_channels, core.check_eps(eps), affine, device, dtype, bias=bias)

    def extra_repr(self) -> str:
        return "{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return torch.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.num_channels)


class LayerNorm(nn.LayerNorm):
    """LN over the trailing `normalized_shape` dims of any input; elementwise affine of that shape.
    A torch.nn.LayerNorm."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(_shape_or_raise(normalized_shape), core.check_eps(eps), elementwise_affine, bias, device,
                         dtype)

    def extra_repr(self) -> str:
        return "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LN (timm's LayerNorm2d): (N, C, *) normalized per sample and position over its C channels,
    per-channel affine. No permutes: the core reduces over dim 1. A torch.nn.LayerNorm (normalized_shape (C,))."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(positive_int(num_channels, "num_channels"), core.check_eps(eps), affine, bias, device,
                         dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return scripted.layer_norm_2d(x, self.weight, self.bias, self.eps)
        return F.layer_norm_2d(x, self.weight, self.bias, self.eps, self.normalized_shape[0])


class RMSNorm(nn.RMSNorm):
    """RMSNorm (Zhang & Sennrich 2019) with torch.nn.RMSNorm's contract: y = x / sqrt(mean(x^2) + eps) * weight over
    the trailing `normalized_shape` dims; eps=None means torch.finfo(x.dtype).eps. A torch.nn.RMSNorm."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(_shape_or_raise(normalized_shape), None if eps is None else core.check_eps(eps),
                         elementwise_affine, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class _InstanceNorm(_NormBase):
    """IN: statistics per sample and channel over positions. Unbatched input (C, *) is accepted, as in torch."""

    _spatial = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return scripted.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                          self.training, self.momentum, self.eps, self.num_features,
                                          self._get_no_batch_dim() - 1)   # torch's method: spatial + 1
        return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                               self.momentum, self.eps, self.num_features, self._spatial, type(self).__name__)


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    """IN over (N, C, L) or unbatched (C, L). A torch.nn.InstanceNorm1d."""
    _spatial = 1


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    """IN over (N, C, H, W) or unbatched (C, H, W). A torch.nn.InstanceNorm2d."""
    _spatial = 2


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    """IN over (N, C, D, H, W) or unbatched (C, D, H, W). A torch.nn.InstanceNorm3d."""
    _spatial = 3
