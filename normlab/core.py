"""The one normalization core every normlab layer goes through.

    xhat = (x - mean_S(x)) / s,   s = sqrt(var_S(x) + eps)          (Ioffe & Szegedy Alg. 1; Wu & He Eq. 1)

where S is a set of axes chosen by the layer (BN: batch + spatial; LN: features; IN: spatial; GN: a reshaped group axis).
The scale s generalises to Lp norms (Santurkar et al. Sec. 3.3): s = (mean_S |x - mean|^p + eps)^(1/p) for p in {1, 2},
s = max_S |x - mean| + eps for p = inf. The backward is written by hand (docs/backward.md):

    dx = (1/s) * (g - sum(g)/m - sum(g * xhat) * (w - mean(w))),   w = ds/dc with c = x - mean, scaled by s

with w = xhat/m for p = 2 (then mean(w) = 0 and this is the familiar BN backward), sign(xhat)/m for p = 1 and a one-hot
sign at the arg-max for p = inf. The two cross-sample reductions sum(g) and sum(g * xhat) are the only ones SyncBN must
all-reduce. The backward is itself built from differentiable torch ops, so double backward (Hessian-vector products) works.

Imports torch only.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from . import fast as _fast

Dims = tuple[int, ...]
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------- checks shared by layers
def check_float(x: torch.Tensor, name: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")


def check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive finite float, got {eps!r}")
    return float(eps)


def check_p(p: float) -> float:
    if p not in (1, 2, math.inf):
        raise ValueError(f"p: expected 1, 2 or math.inf, got {p!r}")
    return float(p)


def check_dims(x: torch.Tensor, dims: Sequence[int]) -> Dims:
    """dims as a tuple of distinct non-negative axes of x; an empty set would make torch reduce over everything."""
    out = tuple(int(d) + x.dim() if int(d) < 0 else int(d) for d in dims)
    if not out or len(set(out)) != len(out) or not all(0 <= d < x.dim() for d in out):
        raise ValueError(f"dims: expected a non-empty set of distinct axes of a {x.dim()}D input, got {tuple(dims)!r}")
    return out


def count(x: torch.Tensor, dims: Dims) -> int:
    """Number of values each statistic is taken over (m in the papers)."""
    return math.prod(x.shape[d] for d in dims)


# --------------------------------------------------------------------------------------------------------- statistics
def _centered(x: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, c, delta) with x - mean = c - delta: the corrected two-pass algorithm.

    A float32 sum of 1e4 + N(0, 1) values gets the mean wrong by a few ulps of 1e4 (~1e-3); the residuals c = x - mean0
    are small, so their mean delta is accurate and mean0 + delta is right to float32 rounding, and the variance is
    taken around the mean, so there is no cancellation. Faster than torch.var_mean (Welford) on CPU; the forward
    reuses c for xhat.
    """
    mean0 = x.mean(dim=dims, keepdim=True)
    c = x - mean0
    delta = c.mean(dim=dims, keepdim=True)
    var = (c.square().mean(dim=dims, keepdim=True) - delta.square()).clamp_min(0.0)   # >= 0 despite rounding
    return mean0 + delta, var, c, delta


def statistics(x: torch.Tensor, dims: Dims, p: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, dispersion) over `dims`, keepdim. Dispersion: biased variance (p=2), mean |x-mean| (p=1), max (p=inf).

    The dispersion is computed around the mean (two passes), so 1e4 + N(0, 1) in float32 keeps its digits.
    """
    if p == 2:
        mean, var, _, _ = _centered(x, dims)
        return mean, var
    mean = x.mean(dim=dims, keepdim=True)
    dev = (x - mean).abs()
    disp = dev.mean(dim=dims, keepdim=True) if p == 1 else dev.amax(dim=dims, keepdim=True)
    return mean, disp


def scale_from(disp: torch.Tensor, eps: float, p: float = 2.0) -> torch.Tensor:
    """s from the dispersion: sqrt(var + eps) for p = 2, disp + eps otherwise."""
    return torch.sqrt(disp + eps) if p == 2 else disp + eps


def _scale_weights(xhat: torch.Tensor, dims: Dims, m: int, p: float) -> torch.Tensor | None:
    """w - mean(w) for p != 2 (ds/dc in units of 1/s); None for p = 2, where it is xhat/m."""
    if p == 1:
        w = torch.sign(xhat) / m
    else:  # inf: the sub-gradient of max, shared evenly between ties as torch.amax does
        a = xhat.abs()
        mask = (a == a.amax(dim=dims, keepdim=True)).to(xhat.dtype)
        w = torch.sign(xhat) * mask / mask.sum(dim=dims, keepdim=True)
    return w - w.mean(dim=dims, keepdim=True)


def backward_from_sums(g: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor, sum_g: torch.Tensor,
                       sum_gx: torch.Tensor, m: int, p: float = 2.0, w: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dx from dL/dxhat = g and the two reductions sum(g), sum(g * xhat) over the m values of each statistic.

    SyncBN passes globally all-reduced sums and the global m; everything else is local and elementwise.
    """
    if p == 2:
        # (g - sum_g/m - xhat * sum_gx/m) / s in two fused passes: g * (1/s) - sum_g/(m s) - xhat * sum_gx/(m s)
        inv = 1.0 / s
        dx = torch.addcmul(sum_g * (-inv / m), g, inv)
        return dx.addcmul_(xhat, sum_gx * (-inv / m))
    return (g - sum_g / m - sum_gx * w) / s


def _backward(g: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor, dims: Dims, p: float) -> torch.Tensor:
    m = count(g, dims)
    sum_g = g.sum(dim=dims, keepdim=True)
    sum_gx = (g * xhat).sum(dim=dims, keepdim=True)
    w = None if p == 2 else _scale_weights(xhat, dims, m, p)
    return backward_from_sums(g, xhat, s, sum_g, sum_gx, m, p, w)


class NormalizeFn(torch.autograd.Function):
    """xhat, mean, dispersion = NormalizeFn.apply(x, dims, eps, p). Only xhat carries a gradient.

    With a fast-path plan (normlab.fast.plan) the kernels run instead, and with weight/bias/shape as well the output
    is affine(xhat, weight, bias, shape) from one fused kernel; its double backward takes the eager formulas.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: Dims, eps: float, p: float, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, shape: tuple[int, ...] | None = None, plan=None):
        ctx.plan, ctx.shape = plan, shape
        if plan is not None:
            y, mean, disp, rstd = _fast.forward(plan, x, weight, bias, eps)
            ctx.save_for_backward(x, mean, rstd, weight, bias)
            ctx.dims, ctx.eps, ctx.p = dims, eps, p
            ctx.mark_non_differentiable(mean, disp)
            return y, mean, disp
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        if p == 2:
            mean, disp, c, delta = _centered(x32, dims)
            s = scale_from(disp, eps, p)
            inv = 1.0 / s
            xhat = torch.addcmul(delta * -inv, c, inv, out=c)   # (c - delta) / s, in place: c is our temporary
        else:
            mean, disp = statistics(x32, dims, p)
            s = scale_from(disp, eps, p)
            xhat = (x32 - mean).div_(s)
        xhat = xhat.to(x.dtype)
        ctx.save_for_backward(x, mean, s)
        # The backward reuses xhat instead of rebuilding it from x (the affine after it keeps it alive anyway). A
        # detached alias makes no reference cycle and shares the version counter: if xhat was changed in place since
        # (an in-place ReLU on an affine-free norm), the backward rebuilds it. Half inputs rebuild it in float32.
        ctx.xhat = xhat.detach() if xhat.dtype == x32.dtype else None
        ctx.xhat_version = xhat._version
        ctx.dims, ctx.eps, ctx.p = dims, eps, p
        ctx.mark_non_differentiable(mean, disp)
        return xhat, mean, disp

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gmean, _gdisp):
        if ctx.plan is not None:
            return _fast_backward(ctx, g)
        x, mean, s = ctx.saved_tensors
        dims, p = ctx.dims, ctx.p
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        g32 = g.float() if g.dtype in _LOW_PRECISION else g
        if torch.is_grad_enabled():
            # double backward: rebuild xhat and s from x with differentiable ops, then the same formula
            mean, disp = statistics(x32, dims, p)
            s = scale_from(disp, ctx.eps, p)
            xhat = (x32 - mean) / s
        elif ctx.xhat is not None and ctx.xhat._version == ctx.xhat_version:
            xhat = ctx.xhat
        else:
            xhat = (x32 - mean).div_(s)
        dx = _backward(g32, xhat, s, dims, p)
        return dx.to(x.dtype), None, None, None, None, None, None, None


def _fast_backward(ctx, g: torch.Tensor):
    """Backward of a fast-path forward: the kernel for first order, the eager formulas when a graph is built."""
    x, mean, rstd, weight, bias = ctx.saved_tensors
    if not torch.is_grad_enabled():
        dx, dw, db = _fast.backward(ctx.plan, g, x, mean, rstd, weight, bias)
    else:   # double backward: xhat and s rebuilt from x with differentiable ops, as in NormalizeFn.backward
        dims, p = ctx.dims, ctx.p
        mean, disp = statistics(x, dims, p)
        s = scale_from(disp, ctx.eps, p)
        xhat = (x - mean) / s
        ref = weight if weight is not None else bias
        wshape = ref.view(ctx.shape).shape if ref is not None else None
        dx = _backward(g if weight is None else g * weight.view(ctx.shape), xhat, s, dims, p)
        dw = None if weight is None else (g * xhat).sum_to_size(wshape).view_as(weight)
        db = None if bias is None else g.sum_to_size(wshape).view_as(bias)
    return dx, None, None, None, dw, db, None, None


def normalize(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5, p: float = 2.0):
    """Training transform: normalize x by its own statistics over `dims`.

    Returns (xhat, mean, dispersion); mean/dispersion keep dims, are float32 for half inputs and carry no gradient.
    """
    check_float(x)
    dims, eps, p = check_dims(x, dims), check_eps(eps), check_p(p)
    return NormalizeFn.apply(x, dims, eps, p, None, None, None, _fast.plan(x, dims, p))


def normalize_affine(x: torch.Tensor, dims: Sequence[int], eps: float, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, shape: Sequence[int], p: float = 2.0):
    """affine(normalize(x, dims, eps, p)[0], weight, bias, shape) -> (y, mean, dispersion).

    The same transform as the two calls; on the fast path (normlab.fast) it is one fused kernel each way.
    """
    if weight is None and bias is None:
        return normalize(x, dims, eps, p)
    check_float(x)
    dims, eps, p = check_dims(x, dims), check_eps(eps), check_p(p)
    plan = _fast.plan(x, dims, p, weight, bias, tuple(shape))
    if plan is None:
        xhat, mean, disp = normalize(x, dims, eps, p)
        return affine(xhat, weight, bias, shape), mean, disp
    return NormalizeFn.apply(x, dims, eps, p, weight, bias, tuple(shape), plan)


def normalize_with(x: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, eps: float = 1e-5,
                   p: float = 2.0) -> torch.Tensor:
    """Inference transform (Alg. 2): normalize with given statistics, broadcastable to x. No cross-sample terms."""
    x32 = x.float() if x.dtype in _LOW_PRECISION else x
    inv = 1.0 / scale_from(disp.to(x32.dtype), eps, p)
    return ((x32 - mean.to(x32.dtype)) * inv).to(x.dtype)


def affine(xhat: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
           shape: Sequence[int]) -> torch.Tensor:
    """y = gamma * xhat + beta, with gamma/beta viewed as `shape` for broadcasting; returns xhat's dtype."""
    if weight is None and bias is None:
        return xhat
    dtype = xhat.dtype
    if weight is not None and bias is not None:
        y = torch.addcmul(bias.view(shape), xhat, weight.view(shape))
    elif weight is not None:
        y = xhat * weight.view(shape)
    else:
        y = xhat + bias.view(shape)
    return y.to(dtype)


def channel_shape(ndim: int, channel_dim: int = 1) -> list[int]:
    """[1, C-placeholder, 1, ...]: the view that broadcasts a per-channel vector over an ndim tensor."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return shape
