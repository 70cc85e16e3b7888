"""Frozen BatchNorm for fine-tuning: BN's inference transform (Ioffe & Szegedy Alg. 2) with everything fixed.

    y = x * a + b,   a = gamma / sqrt(running_var + eps),   b = beta - running_mean * a

weight, bias, running_mean and running_var are buffers (no parameters, nothing for an optimizer to move), the
statistics are the stored ones in train and eval mode alike, and the state_dict keys are BN's, so a BatchNorm
checkpoint loads (its num_batches_tracked is accepted and ignored).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import core


class FrozenBatchNorm(nn.Module):
    r"""BatchNorm with frozen statistics and affine (torchvision's FrozenBatchNorm2d, detectron2's): a fixed
    per-channel affine map, the eval-mode BN of Ioffe & Szegedy (2015, Alg. 2, step 11) as buffers.

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    weight, bias, running_mean and running_var are buffers, not parameters: nothing here trains, in either mode.

    Args:
        num_features: C, the number of channels.
        eps: added to running_var before the square root. Default: 1e-5.
        affine: keep the weight/bias buffers (False: none). Default: True.
        bias: with ``affine``, keep the bias buffer too (False: weight only, as BatchNorm(bias=False)). Keyword-only.
            Default: True.

    Shape:
        - Input: (N, C, *) of any rank >= 2 (FrozenBatchNorm1d: 2 or 3, 2d: 4, 3d: 5)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> bn = torch.nn.BatchNorm2d(3)
        >>> _ = bn(torch.randn(8, 3, 4, 4) * 2 + 1)          # some running statistics
        >>> frozen = normlab.layers.FrozenBatchNorm2d(3)
        >>> _ = frozen.load_state_dict(bn.state_dict(), strict=False)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(frozen(x), bn.eval()(x), atol=1e-6), len(list(frozen.parameters()))
        (True, 0)
    """

    _ranks: tuple[int, ...] | None = None   # None: any rank >= 2

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__()
        if not (isinstance(num_features, int) and num_features > 0):
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = core.check_eps(eps)
        self.affine = affine
        self.register_buffer("weight", torch.ones(num_features, **factory) if affine else None)
        self.register_buffer("bias", torch.zeros(num_features, **factory) if affine and bias else None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) of y = a * x + b, shape (C,) each: the folded inference transform."""
        a = 1.0 / core.scale_from(self.running_var, self.eps)
        if self.weight is not None:
            a = a * self.weight
        b = -self.running_mean * a
        if self.bias is not None:
            b = b + self.bias
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core.check_float(x)
        ok = x.dim() >= 2 if self._ranks is None else x.dim() in self._ranks
        if not ok:
            want = "at least 2D" if self._ranks is None else " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"input: {type(self).__name__} expects a {want} tensor (N, C, ...), "
                             f"got {x.dim()}D input of shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels in dim 1 (num_features), "
                             f"got input of shape {tuple(x.shape)}")
        a, b = self.scale_shift()
        return core.affine(x, a, b, core.channel_shape(x.dim()))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class FrozenBatchNorm1d(FrozenBatchNorm):
    """(N, C) or (N, C, L) input."""
    _ranks = (2, 3)


class FrozenBatchNorm2d(FrozenBatchNorm):
    """(N, C, H, W) input."""
    _ranks = (4,)


class FrozenBatchNorm3d(FrozenBatchNorm):
    """(N, C, D, H, W) input."""
    _ranks = (5,)
