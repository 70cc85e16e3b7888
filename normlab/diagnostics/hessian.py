"""Hessian of the loss on one batch w.r.t. all trainable parameters: top eigenvalue and trace.

Hessian-vector products by double backward: g(w) = dL/dw is built once with create_graph=True, then
H v = d<g(w), v>/dw for each v (normlab's core backward is itself differentiable, so this runs through its norms).
  top eigenvalue  power iteration v <- Hv / ||Hv|| from a seeded Gaussian v; the estimate is the Rayleigh quotient
                  <v, Hv> with ||v|| = 1. It converges to the eigenvalue of largest |lambda| (the top one whenever
                  that is positive, as at and near minima) at the rate |lambda_2 / lambda_1| per iteration.
  trace           Hutchinson: mean over samples of v^T H v with Rademacher v (E[v v^T] = I); exact for diagonal H.
BN (bn_mode): "train" = training mode, batch statistics of the batch (the statistics depend on w, so their second
derivatives are part of H), running buffers untouched; "eval" = eval mode, running statistics (BN is a fixed affine
map). Cost: one forward + double-graph backward, then one HVP (about two backward passes) per iteration/sample.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .common import check_bn_mode, loss_of, model_mode, rng_fork, trainable


class HessianOperator:
    """v -> H v for the loss of `model` on (x, y); v and Hv are lists of tensors shaped like the parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 bn_mode: str = "train") -> None:
        check_bn_mode(bn_mode)
        named = trainable(model)
        if not named:
            raise ValueError("model: no trainable parameters")
        self.leaves = [p.detach().clone().requires_grad_(True) for _, p in named]   # a snapshot of w
        with model_mode(model, bn_mode == "train"), rng_fork(x, model), torch.enable_grad():
            self.loss = loss_of(model, loss_fn, {n: t for (n, _), t in zip(named, self.leaves)}, x, y)
            grads = torch.autograd.grad(self.loss, self.leaves, create_graph=True, allow_unused=True)
        self.grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self.leaves, grads)]
        self.dim = sum(t.numel() for t in self.leaves)

    def matvec(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """H v = d<g(w), v>/dw, by autograd.grad(g, w, grad_outputs=v) on the retained double-backward graph."""
        live = [k for k, g in enumerate(self.grads) if g.requires_grad]
        if not live:
            return [torch.zeros_like(t) for t in self.leaves]   # the loss is linear in w: H = 0
        with torch.enable_grad():
            hv = torch.autograd.grad([self.grads[k] for k in live], self.leaves, [v[k] for k in live],
                                     retain_graph=True, allow_unused=True)
        return [torch.zeros_like(t) if h is None else h.detach() for t, h in zip(self.leaves, hv)]

    def flat_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The same on one flat vector of length dim (parameters concatenated in registration order)."""
        parts = [u.view_as(t) for u, t in zip(torch.split(v, [t.numel() for t in self.leaves]), self.leaves)]
        return torch.cat([h.reshape(-1) for h in self.matvec(parts)])

    def random(self, kind: str, gen: torch.Generator) -> torch.Tensor:
        """A flat random vector: "gauss" N(0, I) or "rademacher" +-1, drawn on the CPU from `gen`."""
        t = self.leaves[0]
        if kind == "gauss":
            v = torch.randn(self.dim, generator=gen, dtype=t.dtype)
        else:
            v = (torch.randint(0, 2, (self.dim,), generator=gen) * 2 - 1).to(t.dtype)
        return v.to(t.device)


def top_eigenvalue(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iters: int = 20,
                   tol: float = 0.0, bn_mode: str = "train", seed: int = 0) -> dict:
    """Power iteration on H (see module docstring). Stops after `iters` HVPs, or earlier when the relative change
    of the estimate is below `tol` (0: never early). Keys: eigenvalue, iterations, converged (relative change of
    the last iteration <= max(tol, 1e-6)), rel_change, history, bn_mode, loss, finite."""
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters: expected an int >= 1, got {iters!r}")
    if not (tol >= 0):
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    op = HessianOperator(model, loss_fn, x, y, bn_mode)
    v = op.random("gauss", torch.Generator(device="cpu").manual_seed(seed))
    v = v / v.norm()
    history: list[float] = []
    change = float("inf")
    for _ in range(iters):
        hv = op.flat_matvec(v)
        lam = float(torch.dot(v, hv))
        if history:
            change = abs(lam - history[-1]) / max(abs(lam), 1e-30)
        history.append(lam)
        norm = float(hv.norm())
        if not math.isfinite(lam) or not math.isfinite(norm) or norm == 0:
            break
        v = hv / norm
        if tol and change <= tol:
            break
    lam = history[-1]
    return {"eigenvalue": lam, "iterations": len(history), "converged": change <= max(tol, 1e-6),
            "rel_change": change, "history": history, "bn_mode": bn_mode, "loss": float(op.loss.detach()),
            "finite": math.isfinite(lam)}


def hessian_trace(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, samples: int = 100,
                  bn_mode: str = "train", seed: int = 0) -> dict:
    """Hutchinson's estimate of tr(H) with `samples` Rademacher vectors. Keys: trace (the mean), stderr
    (sample std / sqrt(samples)), samples, dim (number of parameters), bn_mode, finite."""
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples: expected an int >= 1, got {samples!r}")
    op = HessianOperator(model, loss_fn, x, y, bn_mode)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vals = []
    for _ in range(samples):
        v = op.random("rademacher", gen)
        vals.append(float(torch.dot(v, op.flat_matvec(v))))
    est = torch.tensor(vals, dtype=torch.float64)
    stderr = float(est.std() / math.sqrt(samples)) if samples > 1 else float("nan")
    tr = float(est.mean())
    return {"trace": tr, "stderr": stderr, "samples": samples, "dim": op.dim, "bn_mode": bn_mode,
            "finite": math.isfinite(tr)}
