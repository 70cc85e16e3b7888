"""BatchNorm1d/2d/3d (Ioffe & Szegedy 2015, Alg. 1 and 2; Sec. 3.2 for conv inputs) on normlab's core.

The module contract is torch.nn's: same arguments and defaults, same parameters, buffers and state_dict keys, the same
running-statistic rule (EMA `new = (1 - momentum) * old + momentum * batch`, cumulative average for momentum=None,
unbiased running variance), and the same train/eval x track_running_stats behaviour (docs/backward.md has the table).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import core


class _NormBase(nn.Module):
    """Parameters and running statistics shared by the batch-statistics layers (BN, IN, and the variants)."""

    _version = 2
    kind = "per-channel"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        if not (isinstance(num_features, int) and num_features > 0):
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
                                         and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum: expected a float in [0, 1] or None, got {momentum!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = core.check_eps(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:   # torch >= 2.6 takes bias=False: a learned scale without a shift
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, **{k: v for k, v in factory.items() if k != "dtype"}))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return ("{num_features}, eps={eps}, momentum={momentum}, affine={affine}, bias={use_bias}, "
                "track_running_stats={track_running_stats}".format(**self.__dict__, use_bias=self.bias is not None))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # checkpoints written before num_batches_tracked existed (torch does the same)
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- helpers the subclasses share -------------------------------------------------------------------------------
    def _check_channels(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels in dim 1 (num_features), "
                             f"got input of shape {tuple(x.shape)}")

    def _tick(self) -> float:
        """Count this training batch; return the weight of its statistics in the running average."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, m: int, factor: float) -> None:
        """EMA of the batch mean and the *unbiased* batch variance (Alg. 2 step 10: m / (m - 1))."""
        unbiased = var * (m / (m - 1)) if m > 1 else var
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

    def _use_batch_stats(self) -> bool:
        return self.training or self.running_mean is None


class _BatchNorm(_NormBase):
    """Statistics per channel over the batch and all spatial positions (m' = N * spatial values)."""

    _ranks: tuple[int, ...] = ()

    def _check_input(self, x: torch.Tensor) -> None:
        core.check_float(x)
        if x.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"input: {type(self).__name__} expects a {want} tensor (N, C, ...), "
                             f"got {x.dim()}D input of shape {tuple(x.shape)}")
        self._check_channels(x)

    def _normalize(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """xhat (weight * xhat + bias when given), updating running statistics when training.

        Subclasses (renorm, ghost, Lp) override this with `_normalize(x) -> xhat`.
        """
        dims = (0, *range(2, x.dim()))
        shape = core.channel_shape(x.dim())
        if not self._use_batch_stats():
            xhat = core.normalize_with(x, self.running_mean.view(shape), self.running_var.view(shape), self.eps)
            return core.affine(xhat, weight, bias, shape)
        m = core.count(x, dims)
        if m <= 1:   # as torch: also in eval without running statistics, where it would silently give 0
            raise ValueError(f"input: expected more than 1 value per channel when normalizing with batch statistics "
                             f"(training, or track_running_stats=False), got input of shape {tuple(x.shape)}")
        xhat, mean, var = core.normalize_affine(x, dims, self.eps, weight, bias, shape)
        if self.training and self.track_running_stats:
            self._update_running(mean.flatten(), var.flatten(), m, self._tick())
        return xhat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._plain(x):   # the core fuses normalize and affine
            return _BatchNorm._normalize(self, x, self.weight, self.bias)
        return core.affine(self._normalize(x), self.weight, self.bias, core.channel_shape(x.dim()))

    def _plain(self, x: torch.Tensor) -> bool:
        """Whether this call is plain BN (variants that reduce to it on some inputs say so, to get its numbers)."""
        return type(self)._normalize is _BatchNorm._normalize


class BatchNorm1d(_BatchNorm):
    """BN over (N, C) or (N, C, L) input; statistics per channel C."""
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BN over (N, C, H, W) input (NCHW or channels_last); statistics per channel over N, H, W."""
    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """BN over (N, C, D, H, W) input; statistics per channel over N, D, H, W."""
    _ranks = (5,)
