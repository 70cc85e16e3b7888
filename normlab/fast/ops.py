"""The fused kernels as torch.library custom operators, so torch.compile, torch.export and jit.trace see one op each.

    normlab::norm_fwd(x, weight?, bias?, dims, wshape, eps) -> (y, mean, var, rstd)
        y = w * xhat + b (xhat without affine), xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps); mean, var,
        rstd keep dims (shape of x with the reduced dims set to 1); var biased. y has x's memory format.
    normlab::norm_bwd(g, x, mean, rstd, weight?, bias?, dims, wshape) -> (dx, dw, db)
        first-order backward (docs/backward.md); dw / db have the parameters' shapes, or are empty without them.

Each op has a fake kernel (shapes only, for tracing) and a CPU kernel: the C kernels when the layout fits (a Plan,
normlab.fast.fits, from the backend of the tensor's device), else the same formulas in torch ops, so the op is correct for every float32 CPU input (under
torch.compile the layout is not known when the graph is built). The autograd formula is registered by normlab.core,
which owns the math (the double backward takes its differentiable eager path).
"""
from __future__ import annotations

import torch

import normlab.fast as _pkg   # module attribute lookups at call time: the kernels can be swapped (tests spy on them)


def _stat_shape(x: torch.Tensor, dims: list[int]) -> list[int]:
    shape = list(x.shape)
    for d in dims:
        shape[d] = 1
    return shape


def _plan(x, dims, weight, bias, wshape):
    return _pkg.fits(x, dims, weight, bias, wshape)


@torch.library.custom_op("normlab::norm_fwd", mutates_args=(), device_types="cpu")
def norm_fwd(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dims: list[int],
             wshape: list[int], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    pl = _plan(x, dims, weight, bias, wshape)
    if pl is not None:
        y, mean, var, rstd = _pkg.forward(pl, x, weight, bias, eps)
        return y, mean, var, rstd.view(mean.shape)
    # the same math in torch ops (two passes around the mean, as core._centered)
    mean0 = x.mean(dim=dims, keepdim=True)
    c = x - mean0
    delta = c.mean(dim=dims, keepdim=True)
    var = (c.square().mean(dim=dims, keepdim=True) - delta.square()).clamp_min(0.0)
    rstd = torch.rsqrt(var + eps)
    xhat = (c - delta) * rstd
    if weight is not None:
        xhat = xhat * weight.view(wshape)
    if bias is not None:
        xhat = xhat + bias.view(wshape)
    y = torch.empty_like(x)
    y.copy_(xhat)
    return y, mean0 + delta, var, rstd


@norm_fwd.register_fake
def _(x, weight, bias, dims, wshape, eps):
    stat = _stat_shape(x, dims)
    return (torch.empty_like(x), x.new_empty(stat), x.new_empty(stat), x.new_empty(stat))


@torch.library.custom_op("normlab::norm_bwd", mutates_args=(), device_types="cpu")
def norm_bwd(g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
             bias: torch.Tensor | None, dims: list[int], wshape: list[int]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pl = _plan(x, dims, weight, bias, wshape)
    if pl is not None:
        dx, dw, db = _pkg.backward(pl, g, x, mean, rstd.reshape(-1), weight, bias)
    else:
        m = 1
        for d in dims:
            m *= x.shape[d]
        xhat = (x - mean) * rstd
        gw = g if weight is None else g * weight.view(wshape)
        dx = rstd * (gw - gw.sum(dim=dims, keepdim=True) / m - xhat * ((gw * xhat).sum(dim=dims, keepdim=True) / m))
        ref = weight if weight is not None else bias
        full = None if ref is None else ref.view(wshape).shape
        dw = None if weight is None else (g * xhat).sum_to_size(full).reshape(weight.shape)
        db = None if bias is None else g.sum_to_size(full).reshape(bias.shape)
        out = torch.empty_like(x)
        dx = out.copy_(dx)
    return dx, x.new_empty(0) if dw is None else dw, x.new_empty(0) if db is None else db


@norm_bwd.register_fake
def _(g, x, mean, rstd, weight, bias, dims, wshape):
    return (torch.empty_like(x), x.new_empty(0) if weight is None else torch.empty_like(weight),
            x.new_empty(0) if bias is None else torch.empty_like(bias))
