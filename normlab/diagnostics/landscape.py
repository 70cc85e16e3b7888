"""The loss landscape along the gradient, Santurkar et al. (2018) Sec. 3.2, Fig. 4 (and Fig. 10, 11).

At weights w with gradient g (the step's .grad, or recomputed) and step multipliers s_1..s_n:
    losses        L(w - s g)                                           -> loss_range = (min, max) over the s
    predictiveness ||grad L(w) - grad L(w - s g)||_2                   -> pred_max, pred_mean over the s
    beta           ||grad L(w) - grad L(w - s g)||_2 / ||s g||_2       -> beta_max = effective beta-smoothness
w is every trainable parameter (the whole network), norms are over the concatenated vector.

Multipliers: explicit `multipliers` (absolute step sizes s > 0), or `points` values spanning span = (a, b) in units
of the learning rate eta, i.e. s from a*eta to b*eta, linearly or log-spaced. The paper's ranges: SPAN_VGG =
(1/2, 4) and SPAN_LINEAR = (1/100, 30); the spacing is not stated (normlab: linear for VGG, log for the linear net).

BN at the probe points (bn_mode): "train" (default, the paper's setting) = the model in training mode, batch
statistics of the same batch, running buffers untouched; "eval" = the model in eval mode (running statistics).
The weights are never written (probes swap w - s g in with functional_call), so they stay exactly as they were.
Cost: `points` forward+backward passes; in the hook case (grad L(w) read from .grad, L(w) = the step's loss)
nothing else, else plus one forward (L(w)) or one forward+backward (grad L(w) recomputed: no .grad, use_grad=False,
or bn_mode other than the model's mode).

Example (landscape, in the module docstring so that the function stays short)::

    >>> import torch, normlab
    >>> from normlab import diagnostics
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), normlab.BatchNorm1d(8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3))
    >>> x, y, loss_fn = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.nn.functional.cross_entropy
    >>> out = diagnostics.landscape(model, loss_fn, x, y, lr=0.1, points=4)
    >>> len(out["losses"]), out["loss_range"][0] <= out["loss0"] + 1e-6 or out["loss_range"][0] < out["loss0"]
    (4, True)
    >>> out["grad_norm"] > 0, out["beta_max"] >= 0
    (True, True)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .common import (check_bn_mode, flat_norm, loss_and_grads, loss_of, model_mode, rng_fork, stochastic_layers,
                     trainable)

SPAN_VGG = (0.5, 4.0)
SPAN_LINEAR = (0.01, 30.0)


def multipliers_for(lr: float, span: tuple[float, float] = SPAN_VGG, points: int = 8,
                    spacing: str = "linear") -> list[float]:
    """points step sizes s from span[0]*lr to span[1]*lr (inclusive), linear or log spacing."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive finite learning rate, got {lr!r}")
    a, b = (float(v) for v in span)
    if not (0 < a <= b):
        raise ValueError(f"span: expected (a, b) with 0 < a <= b (multiples of lr), got {span!r}")
    if not (isinstance(points, int) and points >= 1):
        raise ValueError(f"points: expected an int >= 1, got {points!r}")
    if spacing not in ("linear", "log"):
        raise ValueError(f"spacing: expected 'linear' or 'log', got {spacing!r}")
    if points == 1:
        return [a * lr]
    if spacing == "linear":
        return [lr * (a + (b - a) * k / (points - 1)) for k in range(points)]
    return [lr * a * (b / a) ** (k / (points - 1)) for k in range(points)]


def _check_multipliers(multipliers: Sequence[float]) -> list[float]:
    ms = [float(s) for s in multipliers]
    if not ms:
        raise ValueError("multipliers: expected at least one step size")
    bad = [s for s in ms if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"multipliers: step sizes must be positive and finite (w - s*g with s > 0), got {bad}")
    return ms


def landscape(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, lr: float | None = None,
              multipliers: Sequence[float] | None = None, span: tuple[float, float] = SPAN_VGG, points: int = 8,
              spacing: str = "linear", bn_mode: str = "train", use_grad: bool = True,
              loss0: float | None = None) -> dict:
    """Loss and gradient along -g; returns one dict (see the module docstring for each quantity).

    lr: the step's learning rate (needed unless `multipliers` is given). use_grad: take g from .grad when every
    trainable parameter has one (the training step's direction); otherwise g = grad L(w) recomputed in bn_mode.
    When .grad is used and bn_mode is the model's current mode (the hook case), .grad is also taken as grad L(w)
    and L(w) is `loss0` or one no-grad forward, unless a layer is stochastic in bn_mode (dropout, noisy BN: then
    grad L(w) is recomputed with the probes' noise, and g stays the step's .grad); pass use_grad=False under DDP
    (averaged .grad), so that every gradient is computed on the same batch.
    loss0: L(w) when the caller knows it (the hook passes the step's loss); used only in that .grad case.
    Keys: multipliers, losses, pred (per s), beta (per s), loss0 (L(w)), grad_norm (||g||), loss_range [min, max],
    pred_max, pred_mean, beta_max, bn_mode, finite (False if any value is inf/NaN; aggregates then carry it).
    """
    check_bn_mode(bn_mode)
    if multipliers is None:
        if lr is None:
            raise ValueError("lr: needed to place the default multipliers (span x lr); or pass multipliers")
        multipliers = multipliers_for(lr, span, points, spacing)
    ms = _check_multipliers(multipliers)
    named = trainable(model)
    names = [n for n, _ in named]
    have = use_grad and all(p.grad is not None for _, p in named)
    reuse = have and bn_mode == ("train" if model.training else "eval")
    with torch.no_grad(), model_mode(model, bn_mode == "train"), rng_fork(x, model) as rewind:
        reuse = reuse and not stochastic_layers(model)   # .grad's noise is not the probes' noise: recompute
        if reuse:   # .grad is grad L(w) in this mode: only L(w) may be missing, one forward
            grad0 = direction = [p.grad.detach() for _, p in named]
            if loss0 is None:
                loss0 = loss_of(model, loss_fn, {}, x, y, need_grad=False)
        else:
            with torch.enable_grad():
                loss0, grad0 = loss_and_grads(model, loss_fn, x, y)
            direction = [p.grad.detach() for _, p in named] if have else grad0
        gnorm = flat_norm(direction)
        w = [p.detach() for _, p in named]
        losses, pred, beta = [], [], []
        for s in ms:
            params = dict(zip(names, torch._foreach_add(w, direction, alpha=-s)))   # w - s g
            rewind()
            with torch.enable_grad():
                loss, grad = loss_and_grads(model, loss_fn, x, y, params, wrt=names)
            diff = flat_norm(torch._foreach_sub(grad0, grad))
            losses.append(float(loss))
            pred.append(diff)
            beta.append(diff / (s * gnorm) if gnorm > 0 else float("nan"))

    def t(v: list[float]) -> torch.Tensor:   # max/mean propagate NaN (never skipped); float64 keeps the digits
        return torch.tensor(v, dtype=torch.float64)
    out = {"multipliers": ms, "losses": losses, "pred": pred, "beta": beta, "loss0": float(loss0),
           "grad_norm": gnorm, "loss_range": [float(t(losses).min()), float(t(losses).max())],
           "pred_max": float(t(pred).max()), "pred_mean": float(t(pred).mean()), "beta_max": float(t(beta).max()),
           "bn_mode": bn_mode}
    vals = losses + pred + beta + [out["loss0"], gnorm]
    out["finite"] = all(math.isfinite(v) for v in vals)
    return out
