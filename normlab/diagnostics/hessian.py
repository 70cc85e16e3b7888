"""Hessian of the loss: top eigenvalue (power iteration) and trace (Hutchinson), the original one-number API.

Both run on spectrum.HessianOperator (re-exported here): Hessian-vector products by double backward. g(w) = dL/dw
is built once with create_graph=True, then H v = d<g(w), v>/dw for each v (normlab's core backward is itself
differentiable, so this runs through its norms). The same operator also gives the Gauss-Newton and empirical Fisher
matrices, loader averages and parameter subsets (kind=, params=; x may be a loader), and spectrum.py has Lanczos
top/bottom-k eigenpairs, SLQ densities and Hutch++.
  top eigenvalue  power iteration v <- Hv / ||Hv|| from a seeded Gaussian v; the estimate is the Rayleigh quotient
                  <v, Hv> with ||v|| = 1. It converges to the eigenvalue of largest |lambda| (the top one whenever
                  that is positive, as at and near minima) at the rate |lambda_2 / lambda_1| per iteration. It stops
                  when the residual ||Hv - lambda v|| <= tol |lambda| (default tol 1e-3), which bounds the distance
                  to the nearest eigenvalue; a fixed count of iterations reads low by an unknown amount.
  trace           Hutchinson: mean over samples of v^T H v with Rademacher v (E[v v^T] = I); exact for diagonal H.
                  spectrum.hutchpp_trace needs far fewer products for the same error when H has a few large
                  eigenvalues.
BN (bn_mode): "train" = training mode, batch statistics of the batch (the statistics depend on w, so their second
derivatives are part of H), running buffers untouched; "eval" = eval mode, running statistics (BN is a fixed affine
map). Cost: one forward + double-graph backward, then one HVP (about two backward passes) per iteration/sample.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .spectrum import HessianOperator, ParamSpec, power_iteration

__all__ = ["HessianOperator", "top_eigenvalue", "hessian_trace"]


def top_eigenvalue(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, iters: int | None = None,
                   tol: float = 1e-3, bn_mode: str = "train", seed: int = 0, *, kind: str = "hessian",
                   params: ParamSpec = None) -> dict:
    """Power iteration on H (see module docstring): at most `iters` HVPs (None: 1000), stopping early when the
    relative residual ||Hv - lambda v|| / |lambda| <= tol (tol=0: run all `iters`). Keys: eigenvalue, iterations,
    residual, converged (residual <= tol), rel_change (between the last two estimates), history, bn_mode, kind,
    loss, finite. kind/params/x-as-loader: as spectrum.HessianOperator.

    Examples::

        >>> import torch
        >>> from normlab import diagnostics
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> loss_fn = lambda out, y: 0.5 * (out.squeeze(1) ** 2).sum()   # L(w) = 0.5 w^T (x^T x) w: H = x^T x
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> round(diagnostics.top_eigenvalue(model, loss_fn, x, torch.zeros(2), iters=100, tol=1e-6)["eigenvalue"], 4)
        4.0
    """
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 1):
        raise ValueError(f"iters: expected an int >= 1 (the most power iterations) or None, got {iters!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    if iters is None and tol == 0:
        raise ValueError("iters: give a count when tol=0 (else power iteration would never stop)")
    op = HessianOperator(model, loss_fn, x, y, bn_mode, kind=kind, params=params)
    r = power_iteration(op, tol, iters if iters is not None else 1000, seed)
    r.update(bn_mode=bn_mode, kind=kind, loss=float(op.loss))
    return r


def hessian_trace(model: nn.Module, loss_fn: Callable, x: Any, y: Any = None, samples: int = 100,
                  bn_mode: str = "train", seed: int = 0, *, kind: str = "hessian", params: ParamSpec = None) -> dict:
    """Hutchinson's estimate of tr(H) with `samples` Rademacher vectors. Keys: trace (the mean), stderr
    (sample std / sqrt(samples)), samples, dim (number of parameters), bn_mode, finite.

    Examples::

        >>> import torch
        >>> from normlab import diagnostics
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> loss_fn = lambda out, y: 0.5 * (out.squeeze(1) ** 2).sum()   # H = x^T x = diag(4, 1): trace 5
        >>> x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> out = diagnostics.hessian_trace(model, loss_fn, x, torch.zeros(2), samples=10)
        >>> round(out["trace"], 4), out["dim"]   # exact for a diagonal H: every Rademacher probe gives 5
        (5.0, 2)
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected an int >= 1, got {samples!r}")
    op = HessianOperator(model, loss_fn, x, y, bn_mode, kind=kind, params=params)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vals = []
    for _ in range(samples):
        v = op.random("rademacher", gen)
        vals.append(float(torch.dot(v.double(), op.flat_matvec(v).double())))
    est = torch.tensor(vals, dtype=torch.float64)
    stderr = float(est.std() / math.sqrt(samples)) if samples > 1 else float("nan")
    tr = float(est.mean())
    return {"trace": tr, "stderr": stderr, "samples": samples, "dim": op.dim, "bn_mode": bn_mode,
            "finite": math.isfinite(tr)}
