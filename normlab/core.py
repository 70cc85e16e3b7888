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
import torch.autograd.forward_ad as _fwd_ad

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
    nd = x.dim()
    out = []
    for d in dims:
        d = int(d)
        out.append(d + nd if d < 0 else d)
    ok = len(out) > 0 and len(set(out)) == len(out)
    for d in out:
        ok = ok and 0 <= d < nd
    if not ok:
        raise ValueError(f"dims: expected a non-empty set of distinct axes of a {nd}D input, got {tuple(dims)!r}")
    return tuple(out)


def count(x: torch.Tensor, dims: Dims) -> int:
    """Number of values each statistic is taken over (m in the papers). A plain loop: torch.compile traces it."""
    m = 1
    for d in dims:
        m *= x.shape[d]
    return m


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
        return torch.addcmul(dx, xhat, sum_gx * (-inv / m))   # not in place: vmap has a rule for it
    return (g - sum_g / m - sum_gx * w) / s


def _backward(g: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor, dims: Dims, p: float) -> torch.Tensor:
    m = count(g, dims)
    sum_g = g.sum(dim=dims, keepdim=True)
    sum_gx = (g * xhat).sum(dim=dims, keepdim=True)
    w = None if p == 2 else _scale_weights(xhat, dims, m, p)
    return backward_from_sums(g, xhat, s, sum_g, sum_gx, m, p, w)


def _up(t: torch.Tensor) -> torch.Tensor:
    """float32 for half inputs (the statistics, xhat and the backward's sums are computed in float32, §7)."""
    return t.float() if t.dtype in _LOW_PRECISION else t


class _NormalizeBase(torch.autograd.Function):
    """The eager reference without its jvp (NormalizeFn below adds it; torch.compile traces this base, as Dynamo
    does not trace a custom jvp): xhat, mean, dispersion = NormalizeFn.apply(x, dims, eps, p). Only xhat carries a gradient.

    xhat is float32 for half inputs (the caller applies the affine in float32, then casts). Backward: the hand-written
    formula above, rebuilt from x with differentiable ops, so double backward and torch.func's nested transforms work.
    jvp: the same linear map forward, dxhat = (dc - xhat * sum(w * dc)) / s with dc = dx - mean(dx). vmap: generated
    from these (every op is per statistic set, so a vmapped call normalizes each example over its own `dims`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dims: Dims, eps: float, p: float):
        x32 = _up(x)
        if p == 2:
            mean, disp, c, delta = _centered(x32, dims)
            inv = 1.0 / scale_from(disp, eps, p)
            xhat = torch.addcmul(delta * -inv, c, inv)   # (c - delta) / s
        else:
            mean, disp = statistics(x32, dims, p)
            xhat = (x32 - mean) / scale_from(disp, eps, p)
        return xhat, mean, disp

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, dims, eps, p = inputs
        xhat, mean, disp = output
        ctx.save_for_backward(x)
        ctx.save_for_forward(xhat, disp)
        ctx.dims, ctx.eps, ctx.p = dims, eps, p
        ctx.mark_non_differentiable(mean, disp)

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gmean, _gdisp):
        (x,) = ctx.saved_tensors
        dims, p = ctx.dims, ctx.p
        x32 = _up(x)
        # xhat and s rebuilt from x with differentiable ops: a graph built here (create_graph, hessian) is exact
        mean, disp = statistics(x32, dims, p)
        s = scale_from(disp, ctx.eps, p)
        xhat = (x32 - mean) / s
        dx = _backward(_up(g), xhat, s, dims, p)
        return dx.to(x.dtype), None, None, None



class NormalizeFn(_NormalizeBase):
    """The eager reference: xhat, mean, dispersion = NormalizeFn.apply(x, dims, eps, p), with forward-mode AD."""

    @staticmethod
    def jvp(ctx, x_t: torch.Tensor, *_):
        xhat, disp = ctx.saved_tensors
        dims, p = ctx.dims, ctx.p
        m = count(xhat, dims)
        t = x_t.to(xhat.dtype)
        dc = t - t.mean(dim=dims, keepdim=True)
        w = xhat / m if p == 2 else _scale_weights(xhat, dims, m, p)
        ds = (w * dc).sum(dim=dims, keepdim=True)   # ds / s in units of s: sum_S (ds/dc) dc
        return (dc - xhat * ds) / scale_from(disp, ctx.eps, p), None, None


# ------------------------------------------------------------------------------------------- the fused op's autograd
def _fused_setup(ctx, inputs, output) -> None:
    x, weight, bias, dims, wshape, eps = inputs
    _, mean, var, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)
    ctx.dims, ctx.wshape, ctx.eps = tuple(dims), tuple(wshape), eps
    ctx.mark_non_differentiable(mean, var, rstd)


def _fused_backward(ctx, g: torch.Tensor, _gmean, _gvar, _grstd):
    """normlab::norm_fwd's backward: the kernel (normlab::norm_bwd) for first order; under create_graph the eager
    formulas, rebuilt from x with differentiable ops (double backward, as NormalizeFn)."""
    x, mean, rstd, weight, bias = ctx.saved_tensors
    if not torch.is_grad_enabled():
        dx, dw, db = torch.ops.normlab.norm_bwd(g, x, mean, rstd, weight, bias, list(ctx.dims), list(ctx.wshape))
    else:
        dims = ctx.dims
        mean, disp = statistics(x, dims)
        s = scale_from(disp, ctx.eps)
        xhat = (x - mean) / s
        dx = _backward(g if weight is None else g * weight.view(ctx.wshape), xhat, s, dims, 2.0)
        ref = weight if weight is not None else bias
        full = ref.view(ctx.wshape).shape if ref is not None else None
        dw = None if weight is None else (g * xhat).sum_to_size(full).view_as(weight)
        db = None if bias is None else g.sum_to_size(full).view_as(bias)
    return dx, dw if weight is not None else None, db if bias is not None else None, None, None, None


torch.library.register_autograd("normlab::norm_fwd", _fused_backward, setup_context=_fused_setup)


def _wrapped(t: torch.Tensor | None) -> bool:
    return t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t)


def _use_fused(x: torch.Tensor, dims: Dims, p: float, weight: torch.Tensor | None, bias: torch.Tensor | None,
               shape: tuple[int, ...] | None) -> bool:
    """The one dispatch point between the fused op (normlab.fast) and the eager reference (NormalizeFn)."""
    if p != 2 or not _fast.enabled():
        return False
    if torch.compiler.is_compiling():   # traced: dtype and device decide, the op handles any layout
        return _fast.traceable_fits(x, weight, bias)
    if _wrapped(x) or _wrapped(weight) or _wrapped(bias) or _fwd_ad._current_level >= 0:
        return False   # torch.func transforms and forward-mode AD take the reference Function (jvp, vmap rule)
    return _fast.plan(x, dims, p, weight, bias, shape) is not None


def _reference() -> type[torch.autograd.Function]:
    return _NormalizeBase if torch.compiler.is_compiling() else NormalizeFn


def normalize(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5, p: float = 2.0):
    """Training transform: normalize x by its own statistics over `dims`.

    Returns (xhat, mean, dispersion); xhat has x's dtype; mean/dispersion keep dims, are float32 for half inputs and
    carry no gradient.
    """
    check_float(x)
    dims, eps, p = check_dims(x, dims), check_eps(eps), check_p(p)
    if _use_fused(x, dims, p, None, None, None):
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, None, None, list(dims), [], eps)
        return y, mean, var
    xhat, mean, disp = _reference().apply(x, dims, eps, p)
    return xhat.to(x.dtype), mean, disp


def normalize_affine(x: torch.Tensor, dims: Sequence[int], eps: float, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, shape: Sequence[int], p: float = 2.0):
    """affine(normalize(x, dims, eps, p)[0], weight, bias, shape) -> (y, mean, dispersion).

    The affine is applied to the float32 xhat of half inputs, then cast (§7). On the fast path (normlab.fast) it is
    one fused op each way.
    """
    if weight is None and bias is None:
        return normalize(x, dims, eps, p)
    check_float(x)
    dims, eps, p, shape = check_dims(x, dims), check_eps(eps), check_p(p), tuple(shape)
    if _use_fused(x, dims, p, weight, bias, shape):
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, weight, bias, list(dims), list(shape), eps)
        return y, mean, var
    if _use_fused(x, dims, p, None, None, None):   # the kernels' layout fits, the affine's broadcast does not
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, None, None, list(dims), [], eps)
        return affine(y, weight, bias, shape), mean, var
    xhat, mean, disp = _reference().apply(x, dims, eps, p)
    return affine(xhat, weight, bias, shape).to(x.dtype), mean, disp


def normalize_with_affine(x: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, eps: float,
                          weight: torch.Tensor | None, bias: torch.Tensor | None, shape: Sequence[int],
                          p: float = 2.0) -> torch.Tensor:
    """Inference transform with the affine: gamma * (x - mean) / s + beta, in float32 for half inputs, cast once."""
    x32 = _up(x)
    inv = 1.0 / scale_from(disp.to(x32.dtype), eps, p)
    return affine((x32 - mean.to(x32.dtype)) * inv, weight, bias, shape).to(x.dtype)


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


# ------------------------------------------------------------------------------------------------------------ RMSNorm
class _RMSNormalizeBase(torch.autograd.Function):
    """xhat = RMSNormalizeFn.apply(x, dims, eps): x * r, r = 1 / sqrt(mean_S(x^2) + eps) (no centering).

    Backward (the same derivation as BN's without the mean): dx = r * (g - xhat * mean_S(g * xhat)).
    jvp: dxhat = r * (dx - xhat * mean_S(xhat * dx)). vmap: generated.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dims: Dims, eps: float):
        x32 = _up(x)
        return x32 * torch.rsqrt(x32.square().mean(dim=dims, keepdim=True) + eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, dims, eps = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.dims, ctx.eps = dims, eps

    @staticmethod
    def _rebuild(ctx, x: torch.Tensor):
        x32 = _up(x)
        r = torch.rsqrt(x32.square().mean(dim=ctx.dims, keepdim=True) + ctx.eps)
        return x32 * r, r

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        xhat, r = _RMSNormalizeBase._rebuild(ctx, x)
        g32 = _up(g)
        dx = r * (g32 - xhat * (g32 * xhat).mean(dim=ctx.dims, keepdim=True))
        return dx.to(x.dtype), None, None



class RMSNormalizeFn(_RMSNormalizeBase):
    """RMSNorm's Function with forward-mode AD (jvp below); torch.compile traces the base, without it."""

    @staticmethod
    def jvp(ctx, x_t: torch.Tensor, *_):
        (x,) = ctx.saved_tensors
        xhat, r = RMSNormalizeFn._rebuild(ctx, x)
        t = x_t.to(xhat.dtype)
        return r * (t - xhat * (xhat * t).mean(dim=ctx.dims, keepdim=True))


def rms_normalize(x: torch.Tensor, dims: Sequence[int], eps: float) -> torch.Tensor:
    """x / sqrt(mean_S(x^2) + eps) over `dims` (RMSNorm without its weight); float32 for half inputs."""
    check_float(x)
    fn = _RMSNormalizeBase if torch.compiler.is_compiling() else RMSNormalizeFn
    return fn.apply(x, check_dims(x, dims), check_eps(eps))
