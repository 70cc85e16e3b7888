"""Batch Renormalization (Ioffe 2017, arXiv 1702.03275, Alg. 1) on normlab's core, 1d and 2d.

    xhat = (x - mu_B) / sigma_B * r + d,   r = clip(sigma_B / sigma, 1/r_max, r_max),   d = clip((mu_B - mu) / sigma,
                                                                                                  -d_max, d_max)
with r and d treated as constants by autograd (stop_gradient), so the gradient through mu_B and sigma_B is BN's:
the layer is core.normalize's xhat times a detached r plus a detached d. mu and sigma are the running statistics,
kept in torch's buffers: sigma = sqrt(running_var + eps), running_var the EMA of the unbiased batch variance as in BN.
"""
from __future__ import annotations

import math

import torch

from .. import core
from .batchnorm import _BatchNorm
from .variants import _batch_dims, _check_count


def _ramp(step, start: int, end: int, first: float, last: float):
    """first for steps < `start`, then linear to `last` at `end` (end == start: a jump), then last.

    `step` is an int, or a 0-d tensor (num_batches_tracked): then the ramp is tensor arithmetic, so torch.compile and
    torch.export trace one program for every step instead of specializing on (and recompiling for) its value.
    """
    if isinstance(step, torch.Tensor):
        frac = ((step - start) / (end - start)).clamp(0.0, 1.0) if end > start else (step >= start).float()
        return first + (last - first) * frac
    if step >= end:
        return last
    if step <= start:
        return first
    return first + (last - first) * (step - start) / (end - start)


class _BatchRenorm(_BatchNorm):
    """Batch Renorm with the paper's warm-up (Sec. 5): r_max = 1, d_max = 0 for `warmup_steps` training steps, then
    linear relaxation to `r_max` at step `r_max_steps` and to `d_max` at step `d_max_steps` (defaults: the paper's
    5k / 40k / 25k with r_max = 3, d_max = 5). The step is num_batches_tracked, the number of training batches seen
    before this one. warmup_steps = r_max_steps = d_max_steps = 0 clips with the final values from the start.
    Needs running statistics (track_running_stats=True); eval normalizes with them, exactly as BN.
    """

    fuse_affine = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, r_max: float = 3.0, d_max: float = 5.0,
                 warmup_steps: int = 5000, r_max_steps: int = 40000, d_max_steps: int = 25000,
                 device=None, dtype=None, bias: bool = True) -> None:
        if not (isinstance(r_max, (int, float)) and math.isfinite(r_max) and r_max >= 1):
            raise ValueError(f"r_max: expected a finite float >= 1, got {r_max!r}")
        if not (isinstance(d_max, (int, float)) and math.isfinite(d_max) and d_max >= 0):
            raise ValueError(f"d_max: expected a finite float >= 0, got {d_max!r}")
        for name, value in (("warmup_steps", warmup_steps), ("r_max_steps", r_max_steps),
                            ("d_max_steps", d_max_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        for name, value in (("r_max_steps", r_max_steps), ("d_max_steps", d_max_steps)):
            if value < warmup_steps:
                raise ValueError(f"{name}: expected >= warmup_steps={warmup_steps} (the relaxation starts after "
                                 f"the warm-up), got {value}")
        if not track_running_stats:
            raise ValueError("track_running_stats: Batch Renorm corrects batch statistics towards the running ones, "
                             "so it needs track_running_stats=True")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.warmup_steps, self.r_max_steps, self.d_max_steps = warmup_steps, r_max_steps, d_max_steps

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", r_max={self.r_max:g}, d_max={self.d_max:g}, warmup_steps="
                f"{self.warmup_steps}, r_max_steps={self.r_max_steps}, d_max_steps={self.d_max_steps}")

    def limits(self, step: "int | torch.Tensor | None" = None):
        """(r_max, d_max) in force at training step `step` (default: the next one, num_batches_tracked); floats for
        an int step, 0-d tensors for a tensor step."""
        step = int(self.num_batches_tracked) if step is None else step
        return (_ramp(step, self.warmup_steps, self.r_max_steps, 1.0, self.r_max),
                _ramp(step, self.warmup_steps, self.d_max_steps, 0.0, self.d_max))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super()._normalize(x)
        dims, shape = _batch_dims(x), core.channel_shape(x.dim())
        m = core.count(x, dims)
        _check_count(x, m)
        r_max, d_max = self.limits(self.num_batches_tracked)   # a tensor: traced, not specialized
        xhat, mean, var = core.normalize(x, dims, self.eps)
        with torch.no_grad():   # r, d: no gradient (Alg. 1 "stop_gradient")
            mu = self.running_mean.view(shape).to(mean.dtype)
            sigma = core.scale_from(self.running_var.view(shape).to(var.dtype), self.eps)
            r = (core.scale_from(var, self.eps) / sigma).clamp(1.0 / r_max, r_max)
            d = ((mean - mu) / sigma).clamp(-d_max, d_max)
            if torch.compiler.is_compiling():   # r, d read the running statistics updated below: saved, not recomputed
                r, d = core.snapshot(r), core.snapshot(d)
        if self.track_running_stats:
            self._update_running(mean.flatten(), var.flatten(), m, self._tick())
        return torch.addcmul(d.to(xhat.dtype), xhat, r.to(xhat.dtype))


class BatchRenorm1d(_BatchRenorm):
    r"""Batch Renormalization (Ioffe 2017, Alg. 1): BN corrected towards the running statistics mu, sigma.

    .. math:: y = \Big(\frac{x - \mu_B}{\sigma_B} r + d\Big) \gamma + \beta,\quad
              r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\Big(\frac{\sigma_B}{\sigma}\Big),\;
              d = \mathrm{clip}_{[-d_{max}, d_{max}]}\Big(\frac{\mu_B - \mu}{\sigma}\Big)

    r and d are constants for autograd (stop_gradient). Warm-up (Sec. 5): r_max = 1, d_max = 0 for
    ``warmup_steps`` training batches (plain BN), then linear to ``r_max`` at ``r_max_steps`` and to ``d_max`` at
    ``d_max_steps``. Eval normalizes with the running statistics, as BN.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).
        r_max, d_max: the final clip values (keyword-only). Default: 3.0, 5.0.
        warmup_steps, r_max_steps, d_max_steps: the schedule above in training batches (keyword-only). Default:
            5000, 40000, 25000; all 0: the final clips from the first step.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 3) * 2 + 1
        >>> brn = normlab.BatchRenorm1d(3)        # in its warm-up (r = 1, d = 0) it is BN
        >>> torch.allclose(brn(x), torch.nn.BatchNorm1d(3)(x), atol=1e-5)
        True
        >>> brn = normlab.BatchRenorm1d(3, r_max=1.5, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0)
        >>> tuple(brn(x).shape)
        (8, 3)
    """
    _ranks = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    r"""Batch Renormalization (Ioffe 2017, Alg. 1): BN corrected towards the running statistics mu, sigma.

    .. math:: y = \Big(\frac{x - \mu_B}{\sigma_B} r + d\Big) \gamma + \beta,\quad
              r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\Big(\frac{\sigma_B}{\sigma}\Big),\;
              d = \mathrm{clip}_{[-d_{max}, d_{max}]}\Big(\frac{\mu_B - \mu}{\sigma}\Big)

    r and d are constants for autograd (stop_gradient). Warm-up (Sec. 5): r_max = 1, d_max = 0 for
    ``warmup_steps`` training batches (plain BN), then linear to ``r_max`` at ``r_max_steps`` and to ``d_max`` at
    ``d_max_steps``. Eval normalizes with the running statistics, as BN.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).
        r_max, d_max: the final clip values (keyword-only). Default: 3.0, 5.0.
        warmup_steps, r_max_steps, d_max_steps: the schedule above in training batches (keyword-only). Default:
            5000, 40000, 25000; all 0: the final clips from the first step.

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(4, 3, 2, 2) * 2 + 1
        >>> brn = normlab.BatchRenorm2d(3)        # in its warm-up (r = 1, d = 0) it is BN
        >>> torch.allclose(brn(x), torch.nn.BatchNorm2d(3)(x), atol=1e-5)
        True
        >>> brn = normlab.BatchRenorm2d(3, r_max=1.5, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0)
        >>> tuple(brn(x).shape)
        (4, 3, 2, 2)
    """
    _ranks = (4,)
