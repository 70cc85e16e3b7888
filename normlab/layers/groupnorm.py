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
    r"""Group Normalization (Wu & He 2018, Eq. 1 with the set S_i of Eq. 7) on normlab's core.

    .. math:: y = \frac{x - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}} \gamma + \beta

    mu_i and sigma_i^2 (biased) are taken per sample over its C/G channels of one group and all positions (Eq. 2-3);
    gamma, beta are per channel (Eq. 4). Same numbers in training and eval (no running statistics). G = 1 is LN
    over (C, *), G = C is IN. A ``torch.nn.GroupNorm``.

    Args:
        num_groups: G, a divisor of num_channels.
        num_channels: C (dim 1 of the input).
        eps: added to the variance before the square root. Default: 1e-5.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default: True.
        bias: with ``affine``, learn beta too. Keyword-only. Default: True.

    Shape:
        - Input: (N, C, *)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 6, 4, 4) * 3 + 1
        >>> y = normlab.GroupNorm(3, 6)(x).detach()
        >>> tuple(y.shape), torch.allclose(y, torch.nn.GroupNorm(3, 6)(x), atol=1e-5)
        ((2, 6, 4, 4), True)
        >>> g = y.reshape(2, 3, -1)   # per sample and group: mean 0, variance 1
        >>> round(float(g.mean(-1).abs().max()), 4), round(float(g.var(-1, unbiased=False).mean()), 3)
        (0.0, 1.0)
    """

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
    r"""Layer Normalization (Ba et al. 2016; Wu & He 2018, Eq. 1 with S_i = one sample's values) on normlab's core.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    The mean and the biased variance are taken over the trailing ``normalized_shape`` dims of each sample; gamma and
    beta are elementwise, of that shape. Same numbers in training and eval. A ``torch.nn.LayerNorm``.

    Args:
        normalized_shape: the trailing shape to normalize over: an int or a tuple of ints.
        eps: added to the variance before the square root. Default: 1e-5.
        elementwise_affine: learn gamma (init 1) and beta (init 0) of shape ``normalized_shape``. Default: True.
        bias: with ``elementwise_affine``, learn beta too. Default: True.

    Shape:
        - Input: (*, normalized_shape[0], ..., normalized_shape[-1])
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 5, 8) * 2 - 1
        >>> y = normlab.LayerNorm(8)(x).detach()
        >>> tuple(y.shape), torch.allclose(y, torch.nn.LayerNorm(8)(x), atol=1e-5)
        ((2, 5, 8), True)
        >>> round(float(y.mean(-1).abs().max()), 4), round(float(y.var(-1, unbiased=False).mean()), 3)
        (0.0, 1.0)
    """

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
    r"""Channels-first Layer Normalization (timm's LayerNorm2d, as in ConvNeXt) on normlab's core.

    .. math:: y_{n,:,h,w} = \frac{x_{n,:,h,w} - \mathrm{E}[x_{n,:,h,w}]}{\sqrt{\mathrm{Var}[x_{n,:,h,w}] +
              \epsilon}} \gamma + \beta

    Each sample and position is normalized over its C channels (dim 1), with per-channel gamma and beta. No permutes:
    the core reduces over dim 1. A ``torch.nn.LayerNorm`` with normalized_shape (C,).

    Args:
        num_channels: C (dim 1 of the input).
        eps: added to the variance before the square root. Default: 1e-6 (timm's).
        affine: learn per-channel gamma (init 1) and beta (init 0). Default: True.
        bias: with ``affine``, learn beta too. Keyword-only. Default: True.

    Shape:
        - Input: (N, C, *)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> y = normlab.LayerNorm2d(4)(x).detach()
        >>> ref = torch.nn.LayerNorm(4, eps=1e-6)(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        >>> tuple(y.shape), torch.allclose(y, ref, atol=1e-5)
        ((2, 4, 3, 3), True)
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(positive_int(num_channels, "num_channels"), core.check_eps(eps), affine, bias, device,
                         dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            return scripted.layer_norm_2d(x, self.weight, self.bias, self.eps)
        return F.layer_norm_2d(x, self.weight, self.bias, self.eps, self.normalized_shape[0])


class RMSNorm(nn.RMSNorm):
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich 2019, Eq. 4) on normlab's core.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \gamma

    The mean of squares is taken over the trailing ``normalized_shape`` dims of each sample (no centering, no bias).
    A ``torch.nn.RMSNorm`` (same contract).

    Args:
        normalized_shape: the trailing shape to normalize over: an int or a tuple of ints.
        eps: added to the mean square; None: ``torch.finfo(x.dtype).eps``. Default: None.
        elementwise_affine: learn gamma (init 1) of shape ``normalized_shape``. Default: True.

    Shape:
        - Input: (*, normalized_shape[0], ..., normalized_shape[-1])
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(3, 8) * 5
        >>> y = normlab.RMSNorm(8)(x).detach()
        >>> tuple(y.shape), torch.allclose(y, torch.nn.RMSNorm(8)(x), atol=1e-5)
        ((3, 8), True)
        >>> [round(float(v), 3) for v in y.pow(2).mean(-1)]   # unit mean square per row
        [1.0, 1.0, 1.0]
    """

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
    r"""Instance Normalization (Ulyanov et al. 2016; Wu & He 2018, Eq. 1 with S_i = one sample's one channel).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    The mean and the biased variance are taken per sample and channel over the length L. With
    ``track_running_stats`` the running estimates (unbiased variance, as BN's) are used in eval mode. A
    ``torch.nn.InstanceNorm1d`` (same defaults: no affine, no running statistics).

    Args:
        num_features: C (dim 1 of a batched input, dim 0 of an unbatched one).
        eps: added to the variance before the square root. Default: 1e-5.
        momentum: weight of the new statistics in the running estimates; None: cumulative average. Default: 0.1.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default: False.
        track_running_stats: keep running estimates and use them in eval mode. Default: False.
        bias: with ``affine``, learn beta too. Keyword-only. Default: True.

    Shape:
        - Input: (N, C, L) (batched) or the same without N (unbatched)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 3, 10) * 2 + 3
        >>> y = normlab.InstanceNorm1d(3)(x)
        >>> tuple(y.shape), torch.allclose(y, torch.nn.InstanceNorm1d(3)(x), atol=1e-5)
        ((2, 3, 10), True)
    """
    _spatial = 1


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    r"""Instance Normalization (Ulyanov et al. 2016; Wu & He 2018, Eq. 1 with S_i = one sample's one channel).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    The mean and the biased variance are taken per sample and channel over the positions H, W. With
    ``track_running_stats`` the running estimates (unbiased variance, as BN's) are used in eval mode. A
    ``torch.nn.InstanceNorm2d`` (same defaults: no affine, no running statistics).

    Args:
        num_features: C (dim 1 of a batched input, dim 0 of an unbatched one).
        eps: added to the variance before the square root. Default: 1e-5.
        momentum: weight of the new statistics in the running estimates; None: cumulative average. Default: 0.1.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default: False.
        track_running_stats: keep running estimates and use them in eval mode. Default: False.
        bias: with ``affine``, learn beta too. Keyword-only. Default: True.

    Shape:
        - Input: (N, C, H, W) (batched) or the same without N (unbatched)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 3, 4, 4) * 2 + 3
        >>> y = normlab.InstanceNorm2d(3)(x)
        >>> tuple(y.shape), torch.allclose(y, torch.nn.InstanceNorm2d(3)(x), atol=1e-5)
        ((2, 3, 4, 4), True)
    """
    _spatial = 2


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    r"""Instance Normalization (Ulyanov et al. 2016; Wu & He 2018, Eq. 1 with S_i = one sample's one channel).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    The mean and the biased variance are taken per sample and channel over the positions D, H, W. With
    ``track_running_stats`` the running estimates (unbiased variance, as BN's) are used in eval mode. A
    ``torch.nn.InstanceNorm3d`` (same defaults: no affine, no running statistics).

    Args:
        num_features: C (dim 1 of a batched input, dim 0 of an unbatched one).
        eps: added to the variance before the square root. Default: 1e-5.
        momentum: weight of the new statistics in the running estimates; None: cumulative average. Default: 0.1.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default: False.
        track_running_stats: keep running estimates and use them in eval mode. Default: False.
        bias: with ``affine``, learn beta too. Keyword-only. Default: True.

    Shape:
        - Input: (N, C, D, H, W) (batched) or the same without N (unbatched)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(2, 3, 2, 3, 3) * 2 + 3
        >>> y = normlab.InstanceNorm3d(3)(x)
        >>> tuple(y.shape), torch.allclose(y, torch.nn.InstanceNorm3d(3)(x), atol=1e-5)
        ((2, 3, 2, 3, 3), True)
    """
    _spatial = 3
