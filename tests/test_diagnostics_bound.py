"""Theorem 4.1 (Santurkar et al.): the identity ||dL/dy||^2 = gamma^2/s^2 (||g||^2 - <1,g>^2/m - (2-r)<g,yhat>^2/m)
on real batches, against an independent split-model autograd computation and NumPy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import bn_layers, theorem41

F = nn.functional


def mlp(bn=normlab.BatchNorm1d, eps=1e-5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), bn(8, eps=eps), nn.ReLU(inplace=True),
                          nn.Linear(8, 8, bias=False), bn(8, eps=eps), nn.Sigmoid(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (normlab.BatchNorm1d, nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(20, 6, dtype=torch.float64) * 3, torch.randint(0, 3, (20,))
    return model, x, y


def split_reference(model, x, y, k):
    """Independent: run model[:k] -> y (leaf), BN -> z (leaf), model[k+1:] -> loss, by hand."""
    with torch.no_grad():
        yv = model[:k](x)
    yv = yv.clone().requires_grad_(True)
    z = model[k](yv)
    zl = z.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model[k + 1:](zl.clone()), y)   # clone: the in-place ReLU must not hit the leaf
    (gz,) = torch.autograd.grad(loss, zl)
    (gy,) = torch.autograd.grad(z, yv, gz)
    Y, GZ, GY = yv.detach().numpy(), gz.numpy(), gy.numpy()
    bn = model[k]
    mu, var = Y.mean(0), Y.var(0)
    s2 = var + bn.eps
    yhat = (Y - mu) / np.sqrt(s2)
    gamma = bn.weight.detach().numpy()
    m = Y.shape[0]
    shrink = gamma ** 2 / s2
    th = shrink * ((GZ ** 2).sum(0) - GZ.sum(0) ** 2 / m - (GZ * yhat).sum(0) ** 2 / m)
    return (GY ** 2).sum(0), th, shrink, GZ


@pytest.mark.parametrize("bn", [normlab.BatchNorm1d, nn.BatchNorm1d])
def test_identity_and_reference(bn):
    model, x, y = mlp(bn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = theorem41(model, F.cross_entropy, x, y, per_unit=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k   # BN buffers untouched (the reference below does update them)
    assert [r["layer"] for r in rows] == ["1", "4"] == [n for n, _ in bn_layers(model)]
    for r, k in zip(rows, (1, 4)):
        lhs, th, shrink, GZ = split_reference(model, x, y, k)
        np.testing.assert_allclose(r["lhs_units"], lhs, rtol=1e-10)
        np.testing.assert_allclose(r["rhs_theorem_units"], th, rtol=1e-10)
        np.testing.assert_allclose(r["shrink_units"], shrink, rtol=1e-12)
        np.testing.assert_allclose(r["rhs_identity_units"], lhs, rtol=1e-8, atol=1e-14)
        assert r["identity_err"] < 1e-10 and r["identity_holds"] and r["bound_holds"]
        assert all(a <= b * (1 + 1e-12) for a, b in zip(lhs, th))
        g2 = (GZ ** 2).sum()
        assert r["grad_z_sq"] == pytest.approx(g2, rel=1e-12)
        assert r["removed_mean_frac"] == pytest.approx((GZ.sum(0) ** 2 / 20).sum() / g2, rel=1e-10)
        assert r["grad_ratio"] == pytest.approx(lhs.sum() / g2, rel=1e-10)
        assert r["m"] == 20 and r["units"] == 8 and r["finite"]


def test_tiny_eps_gives_theorem_equality():
    model, x, y = mlp(eps=1e-14)
    for r in theorem41(model, F.cross_entropy, x, y):
        assert r["rhs_theorem"] == pytest.approx(r["lhs"], rel=1e-9)
    model, x, y = mlp(eps=1.0)   # large eps: the theorem's right side is a strict upper bound
    for r in theorem41(model, F.cross_entropy, x, y):
        assert r["identity_holds"] and r["bound_holds"] and r["rhs_theorem"] > r["lhs"] * (1 + 1e-6)


def test_conv_units_are_channels_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), normlab.BatchNorm2d(3), nn.ReLU(inplace=True),
                          nn.Conv2d(3, 4, 3, padding=1, bias=False), normlab.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.Flatten(), nn.Linear(4 * 36, 5))
    x, y = torch.randn(4, 2, 6, 6), torch.randint(0, 5, (4,))
    rows = theorem41(model, F.cross_entropy, x, y, per_unit=True)
    assert [(r["units"], r["m"]) for r in rows] == [(3, 144), (4, 144)]
    for r in rows:
        assert r["identity_holds"] and r["identity_err"] < 1e-4 and r["bound_holds"]
    # check the channel grouping by hand for the second BN (in-place ReLU after it must not matter)
    yv = model[:4](x).detach().requires_grad_(True)
    loss = F.cross_entropy(model[5:](model[4](yv)), y)
    (gy,) = torch.autograd.grad(loss, yv)
    np.testing.assert_allclose(rows[1]["lhs_units"], gy.double().pow(2).sum((0, 2, 3)).numpy(), rtol=1e-5)


def test_bn_on_the_input_and_no_bn():
    model = nn.Sequential(normlab.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 2, (9,))
    (r,) = theorem41(model, F.cross_entropy, x, y)
    assert r["identity_err"] < 1e-10 and r["lhs"] > 0
    assert theorem41(nn.Sequential(nn.Linear(4, 2)).double(), F.cross_entropy, x, y) == []


def test_bad_input():
    model, x, y = mlp()
    with pytest.raises(ValueError, match="'0' \\(Linear\\) is not a standard BatchNorm"):
        theorem41(model, F.cross_entropy, x, y, layers=["0"])
    with pytest.raises(ValueError, match="unknown layer name 'bn9'"):
        theorem41(model, F.cross_entropy, x, y, layers=["bn9"])
    with pytest.raises(TypeError, match="name the BN layers"):
        theorem41(model, F.cross_entropy, x, y, layers=[1])
    with pytest.raises(ValueError, match="does not require grad"):
        theorem41(model, lambda o, t: F.cross_entropy(o, t).detach(), x, y)
    (r,) = theorem41(model, F.cross_entropy, x, y, layers="4")
    assert r["layer"] == "4"
