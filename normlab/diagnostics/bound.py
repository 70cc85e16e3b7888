"""Theorem 4.1 of Santurkar et al. (2018), checked on a real batch for every BatchNorm layer.

For one BN layer with input y (N, C, *) and output z = gamma * yhat + beta, take per unit j (a feature, or a
channel with m = N * H * W values for conv BN): g_j = dL/dz_j (from autograd), s_j = sqrt(var_j + eps) (the
layer's own scale, biased batch variance), yhat_j = (y_j - mean_j) / s_j, r_j = ||yhat_j||^2 / m = var_j / s_j^2.
Backprop through BN gives dL/dy_j = (gamma_j / s_j) (g_j - <1,g_j>/m - yhat_j <g_j,yhat_j>/m), hence exactly

    ||dL/dy_j||^2 = gamma_j^2 / s_j^2 * (||g_j||^2 - <1,g_j>^2/m - (2 - r_j) <g_j,yhat_j>^2/m)      (identity)
                 <= gamma_j^2 / s_j^2 * (||g_j||^2 - <1,g_j>^2/m - <g_j,yhat_j>^2/m)                (Theorem 4.1)

with equality in the second line when eps = 0 (r_j = 1). lhs is dL/dy from autograd, not from the formula, so the
identity is a real check of the layer's backward. The paper's right side has grad_y L of the same network without
BN; under the theorem's reading (that gradient equals dL/dz of the BN network) it is g_j above, which is what is
computed here: no second, unnormalized network is run.
Reported per layer: sums over units of lhs, rhs_identity, rhs_theorem; identity_err (max over units of
|lhs - rhs_identity| / (shrink * ||g||^2)); bound_holds; the shrink factors gamma^2/s^2 (mean/min/max over units);
removed_frac = (sum_j <1,g_j>^2/m + <g_j,yhat_j>^2/m) / sum_j ||g_j||^2 (split into removed_mean_frac and
removed_yhat_frac); grad_ratio = ||dL/dy||^2 / ||dL/dz||^2.
The pass runs the model in training mode (the theorem is about batch statistics), buffers untouched.
Cost: one forward + one backward.

Example (theorem41, in the module docstring so that the function stays short)::

    >>> import torch, normlab
    >>> from normlab import diagnostics
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), normlab.BatchNorm1d(8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3))
    >>> x, y, loss_fn = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.nn.functional.cross_entropy
    >>> rows = diagnostics.theorem41(model, loss_fn, x, y)
    >>> [r["layer"] for r in rows], rows[0]["identity_holds"], rows[0]["bound_holds"]
    (['1'], True, True)
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .common import LayerSpec, loss_of, model_mode, resolve_layers, rng_fork, trainable

_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain_bn(mod: nn.Module) -> bool:
    """Standard BN (normlab's or torch's BatchNorm1d/2d/3d, whose forward is exactly BN: fuse_affine); the variants
    (noisy, Lp, ghost, renorm, sync: other classes, or fuse_affine False) compute something else, so the identity
    does not apply to them."""
    return isinstance(mod, _TORCH_BN) and getattr(type(mod), "fuse_affine", True)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if _plain_bn(m)]


def theorem41(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, layers: LayerSpec = None,
              per_unit: bool = False) -> list[dict]:
    """Both sides of Theorem 4.1 for each plain BN layer (or the named ones); one row per layer, [] if none.

    layers: None (every plain BN layer) or module names. per_unit: add the per-unit lists lhs_units,
    rhs_identity_units, rhs_theorem_units, shrink_units.
    """
    if layers is None:
        chosen = bn_layers(model)
    else:
        if isinstance(layers, int) or (not isinstance(layers, str) and any(isinstance(v, int) for v in layers)):
            raise TypeError("layers: name the BN layers (module names); integer indices refer to weight layers")
        chosen = [(n, m) for _, n, m in resolve_layers(model, layers, need_weight=False)]
        for n, m in chosen:
            if not _plain_bn(m):
                raise ValueError(f"layers: {n!r} ({type(m).__name__}) is not a standard BatchNorm layer")
    if not chosen:
        return []
    captured: dict[str, dict] = {}

    def pre_hook(name):
        def hook(mod, args):
            # a private copy of y: dL/dy then counts only the path through this BN, and exists even when y is
            # the network input
            inp = args[0].detach().requires_grad_(True) if not args[0].requires_grad else args[0].clone()
            captured[name] = {"y": inp}
            return (inp, *args[1:])
        return hook

    def post_hook(name):
        def hook(mod, args, out):
            captured[name]["z"] = out
            return out.clone()  # an in-place ReLU after BN must not overwrite the z we differentiate against
        return hook

    handles = []
    for n, m in chosen:
        handles.append(m.register_forward_pre_hook(pre_hook(n)))
        handles.append(m.register_forward_hook(post_hook(n)))
    try:
        params = {n: p.detach().requires_grad_(True) for n, p in trainable(model)}
        with model_mode(model, True), rng_fork(x, model), torch.enable_grad():
            loss = loss_of(model, loss_fn, params, x, y)
            missing = [n for n, _ in chosen if n not in captured or "z" not in captured[n]]
            if missing:
                raise ValueError(f"layers: {', '.join(missing)} did not run in the forward pass")
            ts = [captured[n]["y"] for n, _ in chosen] + [captured[n]["z"] for n, _ in chosen]
            grads = torch.autograd.grad(loss, ts, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    k = len(chosen)
    rows = []
    for j, (name, mod) in enumerate(chosen):
        yv, gy, gz = ts[j].detach(), grads[j], grads[k + j]
        gy = torch.zeros_like(yv) if gy is None else gy
        gz = torch.zeros_like(yv) if gz is None else gz
        rows.append(_layer_row(name, mod, yv, gy, gz, per_unit))
    return rows


def _units(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *) -> (C, m) in float64."""
    return t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)


def _layer_row(name: str, mod: nn.Module, y: torch.Tensor, gy: torch.Tensor, gz: torch.Tensor,
               per_unit: bool) -> dict:
    Y, GY, GZ = _units(y), _units(gy), _units(gz)
    m = Y.shape[1]
    var, mean = torch.var_mean(Y, dim=1, correction=0, keepdim=True)
    s2 = var + mod.eps
    yhat = (Y - mean) / s2.sqrt()
    r = (var / s2).flatten()
    gamma = mod.weight.detach().double() if mod.weight is not None else torch.ones(Y.shape[0], dtype=torch.float64)
    shrink = gamma ** 2 / s2.flatten()
    g2 = (GZ ** 2).sum(1)
    p1 = GZ.sum(1) ** 2 / m
    p2 = (GZ * yhat).sum(1) ** 2 / m
    lhs = (GY ** 2).sum(1)
    rhs_id = shrink * (g2 - p1 - (2 - r) * p2)
    rhs_th = shrink * (g2 - p1 - p2)
    scale = (shrink * g2).clamp_min(torch.finfo(torch.float64).tiny)
    err = float(((lhs - rhs_id).abs() / scale).max())
    tol = 1e-4 if y.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    sg2 = float(g2.sum())
    row = {"layer": name, "units": int(Y.shape[0]), "m": m, "eps": mod.eps,
           "lhs": float(lhs.sum()), "rhs_identity": float(rhs_id.sum()), "rhs_theorem": float(rhs_th.sum()),
           "identity_err": err, "identity_holds": err <= tol,
           "bound_holds": bool((lhs <= rhs_th + tol * scale).all()),
           "shrink_mean": float(shrink.mean()), "shrink_min": float(shrink.min()), "shrink_max": float(shrink.max()),
           "grad_z_sq": sg2,
           "removed_mean_frac": float(p1.sum()) / sg2 if sg2 > 0 else float("nan"),
           "removed_yhat_frac": float(p2.sum()) / sg2 if sg2 > 0 else float("nan"),
           "removed_frac": float((p1 + p2).sum()) / sg2 if sg2 > 0 else float("nan"),
           "grad_ratio": float(lhs.sum()) / sg2 if sg2 > 0 else float("nan")}
    if per_unit:
        row.update(lhs_units=lhs.tolist(), rhs_identity_units=rhs_id.tolist(), rhs_theorem_units=rhs_th.tolist(),
                   shrink_units=shrink.tolist())
    row["finite"] = all(math.isfinite(v) for v in (row["lhs"], row["rhs_identity"], row["rhs_theorem"], sg2))
    return row
