"""Weight Standardization (Qiao et al. 2019, arXiv 1903.10520, Eq. 5) for Conv2d, to pair with GroupNorm at tiny
batches.

    W_hat[i, :] = (W[i, :] - mean(W[i, :])) / sqrt(var(W[i, :]) + eps)      over the fan-in I = C_in/groups * kh * kw

i.e. core.normalize on the weight viewed as (C_out, I) over dim 1 (biased variance, as in the paper's Eq. 5), so the
gradient to the raw weight is the core's hand-written backward. The convolution then uses W_hat.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import core


class WSConv2d(nn.Conv2d):
    r"""Weight Standardization (Qiao et al. 2019, Eq. 5): an nn.Conv2d whose filters are standardized before every
    forward (same arguments, parameters and state_dict).

    .. math:: \hat W_{i,\cdot} = \frac{W_{i,\cdot} - \mathrm{E}[W_{i,\cdot}]}{\sqrt{\mathrm{Var}[W_{i,\cdot}]
              + \epsilon}},\quad y = \hat W * x + b

    per output filter i over its C_in/groups * kh * kw weights (biased variance); the gradient flows through the
    standardization to W.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode: as nn.Conv2d.
        eps: added to the filter variance. Keyword-only. Default: 1e-5.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out), as nn.Conv2d.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> conv = normlab.WSConv2d(3, 4, 3, padding=1)
        >>> tuple(conv(torch.randn(2, 3, 8, 8)).shape)
        (2, 4, 8, 8)
        >>> w = conv.standardized_weight().detach().flatten(1)
        >>> round(float(w.mean(1).abs().max()), 4), round(float(w.var(1, unbiased=False).mean()), 2)
        (0.0, 1.0)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 eps: float = 1e-5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.eps = core.check_eps(eps)
        fan_in = self.weight[0].numel()
        if fan_in < 2:
            raise ValueError(f"kernel_size: a filter with fan-in {fan_in} (in_channels/groups * kh * kw) cannot be "
                             f"standardized; WSConv2d needs a fan-in of at least 2")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"

    def standardized_weight(self) -> torch.Tensor:
        """W_hat, shape (C_out, C_in/groups, kh, kw): zero mean and unit (biased) variance per output filter."""
        w = self.weight
        what, _, _ = core.normalize(w.reshape(w.shape[0], -1), (1,), self.eps)
        return what.reshape(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)
