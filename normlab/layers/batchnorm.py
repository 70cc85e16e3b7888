"""BatchNorm1d/2d/3d (Ioffe & Szegedy 2015, Alg. 1 and 2; Sec. 3.2 for conv inputs) on normlab's core.

The classes subclass their torch.nn twins (isinstance(normlab.BatchNorm2d(8), nn.BatchNorm2d) is True, so
isinstance-based tools see them), keep torch.nn's contract (arguments, parameters, buffers, state_dict keys and
loading, the running-statistic rule: EMA `new = (1 - momentum) * old + momentum * batch`, cumulative average for
momentum=None, unbiased running variance; train/eval x track_running_stats as docs/backward.md's table) and replace
only the forward with normlab's from-scratch math (functional.batch_norm on normlab.core).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import core
from . import functional as F, scripted
from .functional import positive_int


def check_momentum(momentum) -> float | None:
    if momentum is not None and not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
                                     and math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum: expected a float in [0, 1] or None, got {momentum!r}")
    return momentum


class _NormBase(nn.modules.batchnorm._NormBase):
    """torch's _NormBase (parameters, running statistics, state_dict rules) with normlab's argument checks."""

    kind = "per-channel"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        # keywords: the next __init__ in the MRO may be torch's SyncBatchNorm, whose 6th argument is process_group
        super().__init__(positive_int(num_features, "num_features"), eps=core.check_eps(eps),
                         momentum=check_momentum(momentum), affine=affine, track_running_stats=track_running_stats,
                         device=device, dtype=dtype, bias=bias)

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, bias={use_bias}, "
                "track_running_stats={track_running_stats}".format(**self.__dict__, use_bias=self.bias is not None))

    # -- helpers the variants share -------------------------------------------------------------------------------
    def _check_channels(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels in dim 1 (num_features), "
                             f"got input of shape {tuple(x.shape)}")

    def _check_affine(self) -> None:
        F.check_param(self.weight, (self.num_features,), "weight")
        F.check_param(self.bias, (self.num_features,), "bias")

    def _tick(self) -> float | torch.Tensor:
        """Count this training batch; return the weight of its statistics in the running average."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, m: int, factor: float) -> None:
        """EMA of the batch mean and the *unbiased* batch variance (Alg. 2 step 10: m / (m - 1))."""
        F.update_running(self.running_mean, self.running_var, mean, var, m, factor)

    def _use_batch_stats(self) -> bool:
        return self.training or self.running_mean is None


class _BatchNorm(_NormBase):
    """Statistics per channel over the batch and all spatial positions (m' = N * spatial values).

    `fuse_affine` (a class attribute): the forward is exactly BN, normalize and affine in one core call
    (functional.batch_norm, fused on the fast path). The variants that change the normalization set it False and
    override the one hook `_normalize(x) -> xhat`; `_plain(x)` says when such a variant reduces to BN on an input,
    to get its numbers.
    """

    _ranks: tuple[int, ...] | None = ()
    fuse_affine = True   # this class's forward is exactly BN (functional.batch_norm): FX traces through it

    def _check_input(self, x: torch.Tensor) -> None:
        core.check_float(x)
        if (self._ranks is not None and x.dim() not in self._ranks) or x.dim() < 2:
            want = "tensor (N, C, ...) of at least 2 dimensions" if self._ranks is None else \
                " or ".join(f"{r}D" for r in self._ranks) + " tensor (N, C, ...)"
            raise ValueError(f"input: {type(self).__name__} expects a {want}, "
                             f"got {x.dim()}D input of shape {tuple(x.shape)}")
        self._check_channels(x)
        self._check_affine()

    def _bn(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.num_batches_tracked,
                            self.training, self.momentum, self.eps, self.num_features, self._ranks,
                            type(self).__name__)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """xhat, updating running statistics when training (the variants' hook)."""
        return self._bn(x, None, None)

    def _plain(self, x: torch.Tensor) -> bool:
        return self.fuse_affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():   # TorchScript takes torch.nn's op (layers/scripted.py, docs/dropin.md)
            self._check_input_dim(x)   # torch.nn's rank check (the twin's method)
            return scripted.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                       self.num_batches_tracked, self.training, self.momentum, self.eps)
        if self.fuse_affine:
            return self._bn(x, self.weight, self.bias)
        leaf = F.fx_leaf(self, x)
        if leaf is not None:
            return leaf
        self._check_input(x)
        if self._plain(x):   # the core fuses normalize and affine
            return self._bn(x, self.weight, self.bias)
        return core.affine(self._normalize(x), self.weight, self.bias, core.channel_shape(x.dim()))

    def __prepare_scriptable__(self) -> _BatchNorm:
        """torch.jit.script calls this on every module before compiling: refuse, by name, the BN layers whose forward
        is not plain BN (the variants, SyncBatchNorm), where torch's op would silently give other numbers."""
        if not self.fuse_affine or type(self).forward is not _BatchNorm.forward:
            raise RuntimeError(f"torch.jit.script: normlab.{type(self).__name__} cannot be scripted: under "
                               "TorchScript normlab's layers take torch.nn's op, and torch.nn has no scriptable op "
                               "for this layer (torch.nn.SyncBatchNorm does not script either); see docs/dropin.md")
        return self


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    r"""Batch Normalization (Ioffe & Szegedy 2015, Alg. 1; Sec. 3.2 for conv inputs) on normlab's core.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training, E[x] and Var[x] (biased) are each channel's batch statistics (Alg. 1) over the batch (and length L);
    the running estimates take the unbiased batch variance (Alg. 2, step 10: m / (m - 1)). In eval mode (with
    ``track_running_stats``) the running estimates replace them (Alg. 2, step 11). The backward is normlab's own
    (docs/backward.md). A ``torch.nn.BatchNorm1d`` (isinstance holds; same parameters, buffers and state_dict).

    Args:
        num_features: C, the number of channels (dim 1 of the input).
        eps: added to the variance before the square root (Alg. 1). Default: 1e-5.
        momentum: weight of the batch statistics in the running estimates, ``running = (1 - momentum) * running +
            momentum * batch``; None: the cumulative average over all batches seen. Default: 0.1.
        affine: learn gamma (``weight``, init 1) and beta (``bias``, init 0) of Alg. 1's last line. Default: True.
        track_running_stats: keep ``running_mean``/``running_var`` (init 0 and 1) and normalize with them in eval
            mode; False: batch statistics in both modes. Default: True.
        bias: with ``affine``, learn beta too (False: gamma only). Keyword-only. Default: True.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> bn = normlab.BatchNorm1d(3)
        >>> x = torch.randn(8, 3) * 4 + 2
        >>> y = bn(x).detach()
        >>> tuple(y.shape)
        (8, 3)
        >>> torch.allclose(y, torch.nn.BatchNorm1d(3)(x), atol=1e-5)   # torch.nn's numbers
        True
        >>> dims = [d for d in range(x.dim()) if d != 1]
        >>> round(float(y.mean(dims).abs().max()), 4), round(float(y.var(dims, unbiased=False).mean()), 3)
        (0.0, 1.0)
    """
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    r"""Batch Normalization (Ioffe & Szegedy 2015, Alg. 1; Sec. 3.2 for conv inputs) on normlab's core.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training, E[x] and Var[x] (biased) are each channel's batch statistics (Alg. 1) over N, H, W (m = N*H*W values);
    the running estimates take the unbiased batch variance (Alg. 2, step 10: m / (m - 1)). In eval mode (with
    ``track_running_stats``) the running estimates replace them (Alg. 2, step 11). The backward is normlab's own
    (docs/backward.md). A ``torch.nn.BatchNorm2d`` (isinstance holds; same parameters, buffers and state_dict).

    Args:
        num_features: C, the number of channels (dim 1 of the input).
        eps: added to the variance before the square root (Alg. 1). Default: 1e-5.
        momentum: weight of the batch statistics in the running estimates, ``running = (1 - momentum) * running +
            momentum * batch``; None: the cumulative average over all batches seen. Default: 0.1.
        affine: learn gamma (``weight``, init 1) and beta (``bias``, init 0) of Alg. 1's last line. Default: True.
        track_running_stats: keep ``running_mean``/``running_var`` (init 0 and 1) and normalize with them in eval
            mode; False: batch statistics in both modes. Default: True.
        bias: with ``affine``, learn beta too (False: gamma only). Keyword-only. Default: True.

    Shape:
        - Input: (N, C, H, W), contiguous or channels_last
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> bn = normlab.BatchNorm2d(3)
        >>> x = torch.randn(4, 3, 5, 5) * 4 + 2
        >>> y = bn(x).detach()
        >>> tuple(y.shape)
        (4, 3, 5, 5)
        >>> torch.allclose(y, torch.nn.BatchNorm2d(3)(x), atol=1e-5)   # torch.nn's numbers
        True
        >>> dims = [d for d in range(x.dim()) if d != 1]
        >>> round(float(y.mean(dims).abs().max()), 4), round(float(y.var(dims, unbiased=False).mean()), 3)
        (0.0, 1.0)
    """
    _ranks = (4,)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    r"""Batch Normalization (Ioffe & Szegedy 2015, Alg. 1; Sec. 3.2 for conv inputs) on normlab's core.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training, E[x] and Var[x] (biased) are each channel's batch statistics (Alg. 1) over N, D, H, W;
    the running estimates take the unbiased batch variance (Alg. 2, step 10: m / (m - 1)). In eval mode (with
    ``track_running_stats``) the running estimates replace them (Alg. 2, step 11). The backward is normlab's own
    (docs/backward.md). A ``torch.nn.BatchNorm3d`` (isinstance holds; same parameters, buffers and state_dict).

    Args:
        num_features: C, the number of channels (dim 1 of the input).
        eps: added to the variance before the square root (Alg. 1). Default: 1e-5.
        momentum: weight of the batch statistics in the running estimates, ``running = (1 - momentum) * running +
            momentum * batch``; None: the cumulative average over all batches seen. Default: 0.1.
        affine: learn gamma (``weight``, init 1) and beta (``bias``, init 0) of Alg. 1's last line. Default: True.
        track_running_stats: keep ``running_mean``/``running_var`` (init 0 and 1) and normalize with them in eval
            mode; False: batch statistics in both modes. Default: True.
        bias: with ``affine``, learn beta too (False: gamma only). Keyword-only. Default: True.

    Shape:
        - Input: (N, C, D, H, W)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> bn = normlab.BatchNorm3d(3)
        >>> x = torch.randn(2, 3, 2, 3, 3) * 4 + 2
        >>> y = bn(x).detach()
        >>> tuple(y.shape)
        (2, 3, 2, 3, 3)
        >>> torch.allclose(y, torch.nn.BatchNorm3d(3)(x), atol=1e-5)   # torch.nn's numbers
        True
        >>> dims = [d for d in range(x.dim()) if d != 1]
        >>> round(float(y.mean(dims).abs().max()), 4), round(float(y.var(dims, unbiased=False).mean()), 3)
        (0.0, 1.0)
    """
    _ranks = (5,)
