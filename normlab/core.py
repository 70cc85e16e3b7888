"""The one normalization core every normlab layer goes through.

    xhat = (x - mean_S(x)) / s,   s = sqrt(var_S(x) + eps)          (Ioffe & Szegedy Alg. 1; Wu & He Eq. 1)

where S is a set of axes chosen by the layer (BN: batch + spatial; LN: features; IN: spatial; GN: a reshaped group axis).
The scale s is a Dispersion value: RMS above; MEAN_ABS and MAX_ABS, Santurkar et al.'s Lp norms (Sec. 3.3),
s = mean_S |x - mean| + eps (p = 1) and s = max_S |x - mean| + eps (p = inf); UNCENTERED_RMS, RMSNorm's
s = sqrt(mean_S x^2 + eps) without centering. Each dispersion's class holds its forward, its backward and its jvp.
The backward is written by hand (docs/backward.md):

    dx = (1/s) * (g - sum(g)/m - sum(g * xhat) * (w - mean(w))),   w = ds/dc with c = x - mean, scaled by s

with w = xhat/m for p = 2 (then mean(w) = 0 and this is the familiar BN backward), sign(xhat)/m for p = 1 and a one-hot
sign at the arg-max for p = inf. The two cross-sample reductions sum(g) and sum(g * xhat) are the only ones SyncBN must
all-reduce. The backward is itself built from differentiable torch ops, so double backward (Hessian-vector products) works.

Two paths, chosen at one dispatch point (_use_fused): the fused custom op of normlab.fast (RMS only, kernels prepared,
layout fits, eager mode) or the eager reference Function NormalizeFn (every dispersion; torch.func, forward-mode AD,
create_graph). torch.compile / torch.export trace _NormalizeBase instead: the same math as torch ops that inductor
fuses (traced_forward, and backward_saved from the saved xhat and d, as compiled graphs have no double backward).

Imports torch only.
"""
from __future__ import annotations

import math
import numbers
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
    """p as a float, when it is an Lp exponent with a Dispersion (1, 2, math.inf; see dispersion())."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or p not in _BY_P:
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


def _sums(g: torch.Tensor, xhat: torch.Tensor, dims: Dims) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(m, sum_S g, sum_S g * xhat): the two cross-sample reductions of every backward here."""
    return count(g, dims), g.sum(dim=dims, keepdim=True), (g * xhat).sum(dim=dims, keepdim=True)


# -------------------------------------------------------------------------------------------------------- dispersions
class Dispersion:
    """The scale s of xhat = (x - mean) / s, as a small value instead of a float p threaded through the core.

    Each dispersion is a statistic d over the set S and its scale s(d, eps); it owns its forward (xhat, mean, d) and,
    next to it, the hand-written backward and the jvp (docs/backward.md). Four exist: RMS (BN's sqrt(var + eps)),
    MEAN_ABS and MAX_ABS (Santurkar et al.'s L1 and L-inf BN) and UNCENTERED_RMS (RMSNorm: no centering, mean = 0).
    `p` is the Lp exponent a layer states (2, 1, inf; None for the uncentered one).
    """

    name = "dispersion"
    p: float | None = None

    def __repr__(self) -> str:
        return f"core.{self.name}"

    def statistics(self, x: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, d) over dims, keepdim."""
        raise NotImplementedError

    def scale(self, d: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, dims: Dims, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(xhat, mean, d)."""
        mean, d = self.statistics(x, dims)
        return (x - mean) / self.scale(d, eps), mean, d

    def weights(self, xhat: torch.Tensor, dims: Dims, m: int) -> torch.Tensor:
        """w - mean_S(w), w = ds/dc in units of 1/s (c = x - mean): the scale's share of the backward."""
        raise NotImplementedError

    def from_sums(self, g: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor, sum_g: torch.Tensor,
                  sum_gx: torch.Tensor, m: int, w: torch.Tensor | None) -> torch.Tensor:
        """dx = (g - sum(g)/m - sum(g * xhat) * w) / s from the two reductions (SyncBN passes global ones)."""
        return (g - sum_g / m - sum_gx * w) / s

    def backward(self, x: torch.Tensor, g: torch.Tensor, dims: Dims, eps: float) -> torch.Tensor:
        """dL/dx from dL/dxhat = g, with xhat and s rebuilt from x by differentiable ops (so a graph built here,
        create_graph / Hessians, is exact)."""
        mean, d = self.statistics(x, dims)
        s = self.scale(d, eps)
        xhat = (x - mean) / s
        m, sum_g, sum_gx = _sums(g, xhat, dims)
        return self.from_sums(g, xhat, s, sum_g, sum_gx, m, self.weights(xhat, dims, m))

    def traced_forward(self, x: torch.Tensor, dims: Dims,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() as torch.compile / torch.export trace it (the same values to rounding)."""
        return self.forward(x, dims, eps)

    def backward_saved(self, xhat: torch.Tensor, d: torch.Tensor, g: torch.Tensor, dims: Dims,
                       eps: float) -> torch.Tensor:
        """dL/dx from the saved xhat and d: two reductions, no recomputed statistics, no double backward (what
        torch.compile traces)."""
        m, sum_g, sum_gx = _sums(g, xhat, dims)
        return self.from_sums(g, xhat, self.scale(d, eps), sum_g, sum_gx, m, self.weights(xhat, dims, m))

    def jvp(self, xhat: torch.Tensor, d: torch.Tensor, t: torch.Tensor, dims: Dims, eps: float) -> torch.Tensor:
        """The same linear map forward: dxhat = (dc - xhat * sum_S(w * dc)) / s, dc = t - mean_S(t)."""
        m = count(xhat, dims)
        dc = t - t.mean(dim=dims, keepdim=True)
        ds = (self.weights(xhat, dims, m) * dc).sum(dim=dims, keepdim=True)
        return (dc - xhat * ds) / self.scale(d, eps)


class _RMS(Dispersion):
    """BN's scale: d = biased variance, s = sqrt(d + eps); w = xhat / m, whose mean is 0."""
    name, p = "RMS", 2.0

    def statistics(self, x, dims):
        mean, var, _, _ = _centered(x, dims)
        return mean, var

    def scale(self, d, eps):
        return torch.sqrt(d + eps)

    def forward(self, x, dims, eps):
        mean, var, c, delta = _centered(x, dims)
        inv = 1.0 / self.scale(var, eps)
        return torch.addcmul(delta * -inv, c, inv), mean, var   # xhat = (c - delta) / s

    def traced_forward(self, x, dims, eps):
        # inductor lowers var_mean to one Welford reduction, accurate without _centered's second pass, and fuses it
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + eps), mean, var

    def weights(self, xhat, dims, m):
        return xhat / m

    def from_sums(self, g, xhat, s, sum_g, sum_gx, m, w):
        # (g - sum_g/m - xhat * sum_gx/m) / s in two fused passes: g * (1/s) - sum_g/(m s) - xhat * sum_gx/(m s)
        inv = 1.0 / s
        dx = torch.addcmul(sum_g * (-inv / m), g, inv)
        return torch.addcmul(dx, xhat, sum_gx * (-inv / m))   # not in place: vmap has a rule for it

    def backward(self, x, g, dims, eps):
        mean, d = self.statistics(x, dims)
        s = self.scale(d, eps)
        xhat = (x - mean) / s
        m, sum_g, sum_gx = _sums(g, xhat, dims)
        return self.from_sums(g, xhat, s, sum_g, sum_gx, m, None)


class _LpAbs(Dispersion):
    """Santurkar et al.'s Lp scales: d = mean_S |c| (p = 1) or max_S |c| (p = inf), s = d + eps."""

    def statistics(self, x, dims):
        mean = x.mean(dim=dims, keepdim=True)
        dev = (x - mean).abs()
        return mean, (dev.mean(dim=dims, keepdim=True) if self.p == 1 else dev.amax(dim=dims, keepdim=True))

    def scale(self, d, eps):
        return d + eps


class _MeanAbs(_LpAbs):
    """d = mean_S |c|; w = sign(xhat) / m."""
    name, p = "MEAN_ABS", 1.0

    def weights(self, xhat, dims, m):
        w = torch.sign(xhat) / m
        return w - w.mean(dim=dims, keepdim=True)


class _MaxAbs(_LpAbs):
    """d = max_S |c|; w = sign(xhat) at the arg-max, the sub-gradient shared evenly between ties as torch.amax."""
    name, p = "MAX_ABS", math.inf

    def weights(self, xhat, dims, m):
        a = xhat.abs()
        mask = (a == a.amax(dim=dims, keepdim=True)).to(xhat.dtype)
        w = torch.sign(xhat) * mask / mask.sum(dim=dims, keepdim=True)
        return w - w.mean(dim=dims, keepdim=True)


class _UncenteredRMS(Dispersion):
    """RMSNorm (Zhang & Sennrich 2019): no centering (mean = 0), d = mean_S(x^2), xhat = x * r, r = 1/sqrt(d + eps).

    Backward (BN's derivation without the mean): dx = r * (g - xhat * mean_S(g * xhat)).
    jvp: dxhat = r * (dx - xhat * mean_S(xhat * dx)).
    """
    name = "UNCENTERED_RMS"

    def statistics(self, x, dims):
        d = x.square().mean(dim=dims, keepdim=True)
        return torch.zeros_like(d), d

    def scale(self, d, eps):
        return torch.sqrt(d + eps)

    def forward(self, x, dims, eps):
        mean, d = self.statistics(x, dims)
        return x * torch.rsqrt(d + eps), mean, d

    def backward(self, x, g, dims, eps):
        r = torch.rsqrt(x.square().mean(dim=dims, keepdim=True) + eps)
        xhat = x * r
        return r * (g - xhat * (g * xhat).mean(dim=dims, keepdim=True))

    def backward_saved(self, xhat, d, g, dims, eps):
        return torch.rsqrt(d + eps) * (g - xhat * (g * xhat).mean(dim=dims, keepdim=True))

    def jvp(self, xhat, d, t, dims, eps):
        return torch.rsqrt(d + eps) * (t - xhat * (xhat * t).mean(dim=dims, keepdim=True))


RMS, MEAN_ABS, MAX_ABS, UNCENTERED_RMS = _RMS(), _MeanAbs(), _MaxAbs(), _UncenteredRMS()
_BY_P = {2.0: RMS, 1.0: MEAN_ABS, math.inf: MAX_ABS}


def dispersion(p: "float | Dispersion") -> Dispersion:
    """The Dispersion for an Lp exponent p in {1, 2, math.inf} (or a Dispersion, returned as it is)."""
    return p if isinstance(p, Dispersion) else _BY_P[check_p(p)]


def statistics(x: torch.Tensor, dims: Dims, p: "float | Dispersion" = RMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, dispersion) over `dims`, keepdim. Dispersion: biased variance (p=2), mean |x-mean| (p=1), max (p=inf).

    The dispersion is computed around the mean (two passes), so 1e4 + N(0, 1) in float32 keeps its digits.
    """
    return dispersion(p).statistics(x, dims)


def scale_from(disp: torch.Tensor, eps: float, p: "float | Dispersion" = RMS) -> torch.Tensor:
    """s from the dispersion: sqrt(var + eps) for p = 2, disp + eps otherwise."""
    return dispersion(p).scale(disp, eps)


def _scale_weights(xhat: torch.Tensor, dims: Dims, m: int, p: "float | Dispersion") -> torch.Tensor:
    """w - mean(w), w = ds/dc in units of 1/s (Dispersion.weights)."""
    return dispersion(p).weights(xhat, dims, m)


def backward_from_sums(g: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor, sum_g: torch.Tensor,
                       sum_gx: torch.Tensor, m: int, p: "float | Dispersion" = RMS,
                       w: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dx from dL/dxhat = g and the two reductions sum(g), sum(g * xhat) over the m values of each statistic.

    SyncBN passes globally all-reduced sums and the global m; everything else is local and elementwise. w: the
    dispersion's weights (None for p = 2).
    """
    return dispersion(p).from_sums(g, xhat, s, sum_g, sum_gx, m, w)


def _up(t: torch.Tensor) -> torch.Tensor:
    """float32 for half inputs (the statistics, xhat and the backward's sums are computed in float32, §7)."""
    return t.float() if t.dtype in _LOW_PRECISION else t


class _NormalizeBase(torch.autograd.Function):
    """The reference as torch.compile / torch.export trace it: xhat, mean, d = _NormalizeBase.apply(x, dims, eps,
    disp), disp a Dispersion; only xhat carries a gradient. The backward takes the saved xhat and d (compiled graphs
    have no double backward, and two reductions instead of the statistics' recomputation let inductor fuse it as it
    fuses torch's BN). NormalizeFn below is the eager reference.

    xhat is float32 for half inputs (the caller applies the affine in float32, then casts). The math is the
    dispersion's: forward, backward and jvp side by side in its class above. vmap: generated from these (every op is
    per statistic set, so a vmapped call normalizes each example over its own `dims`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dims: Dims, eps: float, disp: Dispersion):
        return disp.traced_forward(_up(x), dims, eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, dims, eps, disp = inputs
        xhat, mean, d = output
        ctx.save_for_backward(xhat, d)
        ctx.dims, ctx.eps, ctx.disp, ctx.dtype = dims, eps, disp, x.dtype
        ctx.mark_non_differentiable(mean, d)

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gmean, _gdisp):
        xhat, d = ctx.saved_tensors
        dx = ctx.disp.backward_saved(xhat, d, _up(g), ctx.dims, ctx.eps)
        return dx.to(ctx.dtype), None, None, None


class NormalizeFn(_NormalizeBase):
    """The eager reference: xhat, mean, d = NormalizeFn.apply(x, dims, eps, disp). Its backward is rebuilt from x
    with differentiable ops, so double backward (Hessian-vector products) and torch.func's nested transforms work;
    with forward-mode AD (jvp)."""

    @staticmethod
    def forward(x: torch.Tensor, dims: Dims, eps: float, disp: Dispersion):
        return disp.forward(_up(x), dims, eps)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, dims, eps, disp = inputs
        xhat, mean, d = output
        ctx.save_for_backward(x)
        ctx.save_for_forward(xhat, d)
        ctx.dims, ctx.eps, ctx.disp = dims, eps, disp
        ctx.mark_non_differentiable(mean, d)

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gmean, _gdisp):
        (x,) = ctx.saved_tensors
        dx = ctx.disp.backward(_up(x), _up(g), ctx.dims, ctx.eps)
        return dx.to(x.dtype), None, None, None

    @staticmethod
    def jvp(ctx, x_t: torch.Tensor, *_):
        xhat, d = ctx.saved_tensors
        return ctx.disp.jvp(xhat, d, x_t.to(xhat.dtype), ctx.dims, ctx.eps), None, None


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
        mean, disp = RMS.statistics(x, dims)
        s = RMS.scale(disp, ctx.eps)
        xhat = (x - mean) / s
        gw = g if weight is None else g * weight.view(ctx.wshape)
        m, sum_g, sum_gx = _sums(gw, xhat, dims)
        dx = RMS.from_sums(gw, xhat, s, sum_g, sum_gx, m, None)
        ref = weight if weight is not None else bias
        full = ref.view(ctx.wshape).shape if ref is not None else None
        dw = None if weight is None else (g * xhat).sum_to_size(full).view_as(weight)
        db = None if bias is None else g.sum_to_size(full).view_as(bias)
    return dx, dw if weight is not None else None, db if bias is not None else None, None, None, None


torch.library.register_autograd("normlab::norm_fwd", _fused_backward, setup_context=_fused_setup)


def _wrapped(t: torch.Tensor | None) -> bool:
    return t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t)


def _use_fused(x: torch.Tensor, dims: Dims, disp: Dispersion, weight: torch.Tensor | None,
               bias: torch.Tensor | None, shape: tuple[int, ...] | None) -> bool:
    """The one dispatch point between the fused op (normlab.fast: BN's RMS scale only) and the eager reference
    (NormalizeFn). It never builds the kernels: normlab.fast.prepare() does, ahead of the first forward."""
    if disp is not RMS or not _fast.enabled() or torch.compiler.is_compiling():
        return False   # compiled/exported: the reference's torch ops, which inductor fuses (an opaque op would not)
    if _wrapped(x) or _wrapped(weight) or _wrapped(bias) or _fwd_ad._current_level >= 0:
        return False   # torch.func transforms and forward-mode AD take the reference Function (jvp, vmap rule)
    return _fast.fits(x, dims, weight, bias, shape) is not None


def _reference() -> type[torch.autograd.Function]:
    return _NormalizeBase if torch.compiler.is_compiling() else NormalizeFn


def normalize(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5, p: "float | Dispersion" = RMS):
    """Training transform: normalize x by its own statistics over `dims`, with the scale `p` (a Dispersion, or the
    Lp exponent 2, 1 or math.inf).

    Returns (xhat, mean, dispersion); xhat has x's dtype; mean/dispersion keep dims, are float32 for half inputs and
    carry no gradient.
    """
    check_float(x)
    dims, eps, disp = check_dims(x, dims), check_eps(eps), dispersion(p)
    if _use_fused(x, dims, disp, None, None, None):
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, None, None, list(dims), [], eps)
        return y, mean, var
    xhat, mean, d = _reference().apply(x, dims, eps, disp)
    return xhat.to(x.dtype), mean, d


def normalize_affine(x: torch.Tensor, dims: Sequence[int], eps: float, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, shape: Sequence[int], p: "float | Dispersion" = RMS):
    """affine(normalize(x, dims, eps, p)[0], weight, bias, shape) -> (y, mean, dispersion).

    The affine is applied to the float32 xhat of half inputs, then cast (§7). On the fast path (normlab.fast) it is
    one fused op each way.
    """
    if weight is None and bias is None:
        return normalize(x, dims, eps, p)
    check_float(x)
    dims, eps, disp, shape = check_dims(x, dims), check_eps(eps), dispersion(p), tuple(shape)
    if _use_fused(x, dims, disp, weight, bias, shape):
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, weight, bias, list(dims), list(shape), eps)
        return y, mean, var
    if _use_fused(x, dims, disp, None, None, None):   # the kernels' layout fits, the affine's broadcast does not
        y, mean, var, _ = torch.ops.normlab.norm_fwd(x, None, None, list(dims), [], eps)
        return affine(y, weight, bias, shape), mean, var
    xhat, mean, d = _reference().apply(x, dims, eps, disp)
    return affine(xhat, weight, bias, shape).to(x.dtype), mean, d


def normalize_with_affine(x: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, eps: float,
                          weight: torch.Tensor | None, bias: torch.Tensor | None, shape: Sequence[int],
                          p: "float | Dispersion" = RMS) -> torch.Tensor:
    """Inference transform with the affine: gamma * (x - mean) / s + beta, in float32 for half inputs, cast once."""
    x32 = _up(x)
    inv = 1.0 / dispersion(p).scale(disp.to(x32.dtype), eps)
    return affine((x32 - mean.to(x32.dtype)) * inv, weight, bias, shape).to(x.dtype)


def normalize_with(x: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, eps: float = 1e-5,
                   p: "float | Dispersion" = RMS) -> torch.Tensor:
    """Inference transform (Alg. 2): normalize with given statistics, broadcastable to x. No cross-sample terms."""
    x32 = _up(x)
    inv = 1.0 / dispersion(p).scale(disp.to(x32.dtype), eps)
    return ((x32 - mean.to(x32.dtype)) * inv).to(x.dtype)


@torch.library.custom_op("normlab::snapshot", mutates_args=())
def snapshot(t: torch.Tensor) -> torch.Tensor:
    """A copy of t that torch.compile saves for the backward instead of recomputing it there.

    A value read from a buffer that the same forward then updates in place (Batch Renorm's r from the running
    variance) must be saved: torch 2.13's min-cut partitioner may recompute it in the backward, after the update, which
    gives silently wrong gradients (pytorch/pytorch#197039, open). It never recomputes a custom op.
    """
    return t.clone()


@snapshot.register_fake
def _snapshot_fake(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


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


def rms_normalize(x: torch.Tensor, dims: Sequence[int], eps: float) -> torch.Tensor:
    """x / sqrt(mean_S(x^2) + eps) over `dims` (RMSNorm without its weight; the UNCENTERED_RMS dispersion); float32
    for half inputs."""
    check_float(x)
    return _reference().apply(x, check_dims(x, dims), check_eps(eps), UNCENTERED_RMS)[0]
