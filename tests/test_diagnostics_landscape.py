"""Landscape along the gradient (Santurkar Sec. 3.2) on a quadratic with closed-form answers, and on a BN net
against a brute force that writes w - s g into a copy of the model."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import SPAN_LINEAR, landscape, multipliers_for

F = nn.functional


class Quadratic(nn.Module):
    """out = 0.5 w^T H w (the input is ignored); the loss is the output itself."""

    def __init__(self, H: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("H", H)
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return 0.5 * self.w @ self.H @ self.w


def ident(out, y):
    return out


def make_quadratic(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    H = A @ A.T + torch.eye(n, dtype=torch.float64)
    return Quadratic(H, torch.randn(n, generator=g, dtype=torch.float64)), H


def test_quadratic_closed_form():
    model, H = make_quadratic()
    w = model.w.detach().clone()
    g = H @ w
    model.w.grad = g.clone()
    s = [0.01, 0.02, 0.05]
    r = landscape(model, ident, torch.zeros(1), None, multipliers=s)
    Hg = H @ g
    want_loss = [float(0.5 * (w - si * g) @ H @ (w - si * g)) for si in s]
    assert r["losses"] == pytest.approx(want_loss, rel=1e-12)
    assert r["pred"] == pytest.approx([si * float(Hg.norm()) for si in s], rel=1e-10)
    beta = float(Hg.norm() / g.norm())
    assert r["beta"] == pytest.approx([beta] * 3, rel=1e-10)
    assert r["beta_max"] == pytest.approx(beta, rel=1e-10)
    assert r["loss_range"] == pytest.approx([min(want_loss), max(want_loss)], rel=1e-12)
    assert r["pred_max"] == pytest.approx(0.05 * float(Hg.norm()), rel=1e-10)
    assert r["pred_mean"] == pytest.approx(np.mean(s) * float(Hg.norm()), rel=1e-10)
    assert r["loss0"] == pytest.approx(float(0.5 * w @ H @ w), rel=1e-12)
    assert r["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-12)
    assert r["finite"] is True
    assert torch.equal(model.w.detach(), w) and torch.equal(model.w.grad, g)   # weights and grad untouched


def test_direction_and_base_gradient_sources():
    """g = .grad = e_0 (not the gradient). Hook case: .grad is also grad L(w), so pred = ||e_0 - H(w - s e_0)||.
    bn_mode other than the model's mode: grad L(w) = H w is recomputed, pred = s ||H e_0||.
    use_grad=False: g = H w, pred = s ||H g||."""
    model, H = make_quadratic()
    w = model.w.detach().clone()
    e0 = torch.zeros(6, dtype=torch.float64)
    e0[0] = 1.0
    model.w.grad = e0
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.1])
    assert r["pred"][0] == pytest.approx(float((e0 - H @ (w - 0.1 * e0)).norm()), rel=1e-10)
    assert r["loss0"] == pytest.approx(float(0.5 * w @ H @ w), rel=1e-12)
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.1], bn_mode="eval")
    assert r["pred"][0] == pytest.approx(0.1 * float(H[:, 0].norm()), rel=1e-10)
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.1], use_grad=False)
    g = H @ w
    assert r["pred"][0] == pytest.approx(0.1 * float((H @ g).norm()), rel=1e-10)


def test_multiplier_grids():
    assert multipliers_for(0.1, (0.5, 4.0), 8) == pytest.approx(list(np.linspace(0.05, 0.4, 8)))
    assert multipliers_for(1e-6, SPAN_LINEAR, 5, "log") == pytest.approx(list(np.geomspace(1e-8, 3e-5, 5)))
    assert multipliers_for(0.2, (1.0, 2.0), 1) == [0.2]
    model, H = make_quadratic()
    r = landscape(model, ident, torch.zeros(1), None, lr=0.01, points=4)
    assert r["multipliers"] == pytest.approx([0.005, 0.01666666, 0.0283333, 0.04], rel=1e-5)


def bn_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8, bias=False), normlab.BatchNorm1d(8), nn.ReLU(inplace=True),
                          nn.Linear(8, 3)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    model.train()
    for _ in range(3):   # non-trivial running statistics
        model(x * 2 + 1)
    return model, x, y


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_bn_model_brute_force_and_untouched(bn_mode):
    model, x, y = bn_model()
    F.cross_entropy(model(x), y).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    s = [0.3, 1.0]
    r = landscape(model, F.cross_entropy, x, y, multipliers=s, bn_mode=bn_mode)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k   # weights restored exactly, BN buffers and counter unchanged
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert model.training   # mode restored

    def brute(si):
        m2 = copy.deepcopy(model).train(bn_mode == "train")
        with torch.no_grad():
            for p, g in zip(m2.parameters(), grads):
                p -= si * g
        m2.zero_grad()
        loss = F.cross_entropy(m2(x), y)
        loss.backward()
        return float(loss.detach()), [p.grad for p in m2.parameters()]

    loss0, g0 = brute(0.0)
    assert r["loss0"] == pytest.approx(loss0, rel=1e-12)
    gnorm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    for k, si in enumerate(s):
        loss, gs = brute(si)
        diff = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(g0, gs)))
        assert r["losses"][k] == pytest.approx(loss, rel=1e-12)
        assert r["pred"][k] == pytest.approx(diff, rel=1e-9)
        assert r["beta"][k] == pytest.approx(diff / (si * gnorm), rel=1e-9)


def test_train_and_eval_modes_differ():
    model, x, y = bn_model()
    a = landscape(model, F.cross_entropy, x, y, lr=0.5, bn_mode="train")
    b = landscape(model, F.cross_entropy, x, y, lr=0.5, bn_mode="eval")
    assert a["loss0"] != pytest.approx(b["loss0"], rel=1e-3)


def test_bad_input():
    model, H = make_quadratic()
    for bad in ([0.1, 0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="multipliers: step sizes must be positive"):
            landscape(model, ident, torch.zeros(1), None, multipliers=bad)
    with pytest.raises(ValueError, match="lr: needed"):
        landscape(model, ident, torch.zeros(1), None)
    with pytest.raises(ValueError, match="span"):
        multipliers_for(0.1, (0.0, 4.0))
    with pytest.raises(ValueError, match="span"):
        multipliers_for(0.1, (4.0, 0.5))
    with pytest.raises(ValueError, match="spacing"):
        multipliers_for(0.1, spacing="cubic")
    with pytest.raises(ValueError, match="bn_mode"):
        landscape(model, ident, torch.zeros(1), None, lr=0.1, bn_mode="batch")
    with pytest.raises(ValueError, match="does not require grad"):
        landscape(model, lambda out, y: out.detach(), torch.zeros(1), None, lr=0.1)


class LogModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))

    def forward(self, x):
        return -torch.log(self.w).sum()


def test_non_finite_kept():
    """L = -log w at w = 1, g = -1: probes at w - s g = 1 + s are fine; a step past 0 gives NaN."""
    model = LogModel()
    model.w.grad = torch.tensor([2.0], dtype=torch.float64)   # direction pointing to w = 1 - 2 s
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.1, 1.0])
    assert r["losses"][0] == pytest.approx(-math.log(0.8))
    assert math.isnan(r["losses"][1]) and math.isnan(r["loss_range"][1]) and r["finite"] is False


def test_given_loss0_used_only_with_grad():
    model, H = make_quadratic()
    w = model.w.detach().clone()
    model.w.grad = H @ w
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.01], loss0=123.0)
    assert r["loss0"] == 123.0   # the hook passes the step's loss: no extra forward
    r = landscape(model, ident, torch.zeros(1), None, multipliers=[0.01], loss0=123.0, use_grad=False)
    assert r["loss0"] == pytest.approx(float(0.5 * w @ H @ w), rel=1e-12)
