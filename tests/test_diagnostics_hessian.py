"""Hessian top eigenvalue and trace against known Hessians (quadratic, linear regression) and against the full
Hessian of a tiny BN net built with torch.autograd.functional.hessian (both BN modes)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import normlab
from normlab.diagnostics import HessianOperator, hessian_trace, top_eigenvalue

F = nn.functional


class Quadratic(nn.Module):
    def __init__(self, H: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("H", H)
        self.w = nn.Parameter(torch.linspace(-1, 1, H.shape[0], dtype=H.dtype))

    def forward(self, x):
        return 0.5 * self.w @ self.H @ self.w


def ident(out, y):
    return out


def spd(eigs, seed=0):
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T


def test_quadratic_top_eigenvalue():
    H = spd([10.0, 6.0, 3.0, 1.0, 0.5, -2.0])
    r = top_eigenvalue(Quadratic(H), ident, torch.zeros(1), None, iters=60, tol=0)
    assert r["eigenvalue"] == pytest.approx(10.0, rel=1e-4)
    assert r["iterations"] == 60 and r["converged"] and r["finite"]
    early = top_eigenvalue(Quadratic(H), ident, torch.zeros(1), None, iters=500, tol=1e-10)
    assert early["iterations"] < 500 and early["eigenvalue"] == pytest.approx(10.0, rel=1e-8)
    # the default stops on the residual: |lambda - 10| <= residual * |lambda| (the bound for symmetric H)
    d = top_eigenvalue(Quadratic(H), ident, torch.zeros(1), None)
    assert d["converged"] and 5 < d["iterations"] < 60 and d["residual"] <= 1e-3
    assert abs(d["eigenvalue"] - 10.0) <= d["residual"] * abs(d["eigenvalue"])
    short = top_eigenvalue(Quadratic(H), ident, torch.zeros(1), None, iters=3)
    assert short["iterations"] == 3 and not short["converged"] and short["residual"] > 1e-3


def test_quadratic_trace():
    D = torch.diag(torch.tensor([3.0, -1.0, 0.5, 7.0], dtype=torch.float64))
    r = hessian_trace(Quadratic(D), ident, torch.zeros(1), None, samples=3)
    assert r["trace"] == pytest.approx(9.5, rel=1e-12) and r["stderr"] == pytest.approx(0.0, abs=1e-12)
    H = spd([4.0, 3.0, 2.0, 1.0, 1.0])
    op = HessianOperator(Quadratic(H), ident, torch.zeros(1), None)
    exact = sum(float(op.matvec([torch.eye(5, dtype=torch.float64)[i]])[0][i]) for i in range(5))
    assert exact == pytest.approx(11.0, rel=1e-12)   # the operator itself, probed on the basis
    r = hessian_trace(Quadratic(H), ident, torch.zeros(1), None, samples=2000, seed=3)
    assert abs(r["trace"] - 11.0) < 4 * r["stderr"] and r["stderr"] < 0.2


def regression(n=50, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1).double()
    Xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    return model, x, y, (2.0 / n) * Xa.T @ Xa   # mse_loss (mean): H = 2/n [X 1]^T [X 1] for (weight, bias)


def test_linear_regression():
    model, x, y, H = regression()
    eig = np.linalg.eigvalsh(H.numpy())
    r = top_eigenvalue(model, F.mse_loss, x, y, iters=200, tol=1e-12)
    assert r["eigenvalue"] == pytest.approx(eig[-1], rel=1e-4)
    tr = hessian_trace(model, F.mse_loss, x, y, samples=4000, seed=1)
    assert abs(tr["trace"] - float(H.trace())) < 4 * tr["stderr"] and tr["stderr"] < 0.05 * float(H.trace())
    assert tr["dim"] == 5


def tiny_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), normlab.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    model(x * 3 + 1)   # running statistics away from the batch's own
    return model, x, y


def full_hessian(model, x, y, train: bool) -> torch.Tensor:
    m = copy.deepcopy(model).train(train)
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in m.parameters()])
    buffers = dict(m.named_buffers())

    def f(flat):
        parts = torch.split(flat, sizes)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        bufs = {k: v.clone() for k, v in buffers.items()}
        return F.mse_loss(functional_call(m, {**params, **bufs}, (x,)), y)
    return torch.autograd.functional.hessian(f, flat0)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_bn_net_against_full_hessian(bn_mode):
    model, x, y = tiny_bn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    H = full_hessian(model, x, y, bn_mode == "train")
    eig = np.linalg.eigvalsh(H.numpy())
    top = eig[np.argmax(np.abs(eig))]
    r = top_eigenvalue(model, F.mse_loss, x, y, iters=400, tol=1e-13, bn_mode=bn_mode)
    assert r["eigenvalue"] == pytest.approx(top, rel=1e-4)
    # the operator against H on random vectors: the double backward through normlab's BN is exact
    op = HessianOperator(model, F.mse_loss, x, y, bn_mode)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    parts = [t.view(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in model.parameters()]),
                                             model.parameters())]
    hv = torch.cat([t.flatten() for t in op.matvec(parts)])
    assert torch.allclose(hv, H @ v, rtol=1e-9, atol=1e-11)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k   # buffers untouched in both modes
    assert model.training


def test_modes_differ_and_bad_input():
    model, x, y = tiny_bn()
    a = top_eigenvalue(model, F.mse_loss, x, y, iters=30, bn_mode="train")["eigenvalue"]
    b = top_eigenvalue(model, F.mse_loss, x, y, iters=30, bn_mode="eval")["eigenvalue"]
    assert a != pytest.approx(b, rel=1e-3)
    with pytest.raises(ValueError, match="bn_mode"):
        top_eigenvalue(model, F.mse_loss, x, y, bn_mode="running")
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(model, F.mse_loss, x, y, iters=0)
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(model, F.mse_loss, x, y, tol=0)
    with pytest.raises(ValueError, match="samples"):
        hessian_trace(model, F.mse_loss, x, y, samples=0)
    with pytest.raises(ValueError, match="does not require grad"):
        top_eigenvalue(model, lambda o, t: F.mse_loss(o, t).detach(), x, y)


class Quartic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return (self.w ** 4).sum()


def test_quartic_and_non_finite():
    r = top_eigenvalue(Quartic([1.0, 2.0]), ident, torch.zeros(1), None, iters=100, tol=1e-8)
    assert r["eigenvalue"] == pytest.approx(48.0, rel=1e-6)   # diag(12 w^2)
    r = top_eigenvalue(Quartic([float("inf"), 1.0]), ident, torch.zeros(1), None, iters=5, tol=0)
    assert r["finite"] is False and r["iterations"] == 1   # stops at the first non-finite estimate, keeps it
    assert not np.isfinite(r["eigenvalue"])
