"""GroupNorm, LayerNorm and InstanceNorm1d/2d/3d (Wu & He 2018, Eq. 1-3): the same core, other statistic sets.

    LN: S = one sample's (C, H, W)    IN: S = one sample's one channel (H, W)    GN: S = one sample's channel group
GN with G = 1 is LN over (C, H, W) and with G = C it is IN, up to where the affine parameters live.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from .. import core
from .batchnorm import _NormBase


class GroupNorm(nn.Module):
    """GN over (N, C, *) input: statistics per sample over C/G channels and all positions; per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        if not (isinstance(num_groups, int) and num_groups > 0):
            raise ValueError(f"num_groups: expected a positive int, got {num_groups!r}")
        if not (isinstance(num_channels, int) and num_channels > 0):
            raise ValueError(f"num_channels: expected a positive int, got {num_channels!r}")
        if num_channels % num_groups != 0:
            raise ValueError(f"num_groups: expected a divisor of num_channels={num_channels}, got {num_groups}")
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps = core.check_eps(eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            if bias:
                self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return "{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core.check_float(x)
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"input: expected (N, {self.num_channels}, *) with num_channels={self.num_channels} "
                             f"in dim 1, got input of shape {tuple(x.shape)}")
        n = x.shape[0]
        # (N, G, C/G, positions): the per-channel affine broadcasts as (G, C/G, 1), so the core can fuse it
        xg = x.reshape(n, self.num_groups, self.num_channels // self.num_groups, -1)
        y, _, _ = core.normalize_affine(xg, (2, 3), self.eps, self.weight, self.bias, (self.num_groups, -1, 1))
        return y.view(x.shape)


class LayerNorm(nn.Module):
    """LN over the trailing `normalized_shape` dims of any input; elementwise affine of that shape."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"normalized_shape: expected a positive int or a tuple of them, got {normalized_shape!r}")
        self.normalized_shape = shape
        self.eps = core.check_eps(eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
            if bias:
                self.bias = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
            else:   # assigning None first would shadow the parameter slot: register_parameter then raises
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core.check_float(x)
        k = len(self.normalized_shape)
        if x.dim() < k or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"input: expected trailing dims equal to normalized_shape={list(self.normalized_shape)}, "
                             f"got input of shape {tuple(x.shape)}")
        y, _, _ = core.normalize_affine(x, tuple(range(x.dim() - k, x.dim())), self.eps, self.weight, self.bias,
                                        self.normalized_shape)
        return y


class _InstanceNorm(_NormBase):
    """IN: statistics per sample and channel over positions. Unbatched input (C, *) is accepted, as in torch."""

    _spatial = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core.check_float(x)
        batched = self._spatial + 2
        if x.dim() not in (batched - 1, batched):
            raise ValueError(f"input: {type(self).__name__} expects a {batched - 1}D (unbatched) or {batched}D tensor, "
                             f"got {x.dim()}D input of shape {tuple(x.shape)}")
        if x.dim() == batched - 1:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.shape[1] != self.num_features:
            if self.affine:
                self._check_channels(x)
            warnings.warn(f"input has {x.shape[1]} channels but num_features={self.num_features}; "
                          "with affine=False the statistics are still per channel", stacklevel=2)
        dims = tuple(range(2, x.dim()))
        shape = core.channel_shape(x.dim())
        if self._use_batch_stats():
            m = core.count(x, dims)
            if m <= 1:   # as torch: whenever instance statistics are used, training or not
                raise ValueError(f"input: expected more than 1 spatial element per channel when normalizing with "
                                 f"instance statistics, got input of shape {tuple(x.shape)}")
            xhat, mean, var = core.normalize(x, dims, self.eps)
            if self.training and self.track_running_stats:
                # torch's rules: the running statistics follow the batch average of the per-instance statistics;
                # momentum=None means factor 0 (no cumulative average) and num_batches_tracked is never counted
                factor = 0.0 if self.momentum is None else self.momentum
                self._update_running(mean.mean(0).flatten(), var.mean(0).flatten(), m, factor)
        else:
            xhat = core.normalize_with(x, self.running_mean.view(shape), self.running_var.view(shape), self.eps)
        return core.affine(xhat, self.weight, self.bias, shape)


class InstanceNorm1d(_InstanceNorm):
    """IN over (N, C, L) or unbatched (C, L)."""
    _spatial = 1


class InstanceNorm2d(_InstanceNorm):
    """IN over (N, C, H, W) or unbatched (C, H, W)."""
    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """IN over (N, C, D, H, W) or unbatched (C, D, H, W)."""
    _spatial = 3
