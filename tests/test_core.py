"""normlab.core: gradcheck/gradgradcheck over the reduction sets of the family and the Lp scales, Fact C.2, scale
invariance (SPEC 1.1), cancellation-free variance, half precision, the two-reduction backward, and input checks."""
from __future__ import annotations

import math

import pytest
import torch

import normlab
from normlab import core

F64 = torch.float64


def _gn(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    return core.normalize(x.reshape(x.shape[0], groups, -1), (2,), 1e-3)[0].view(x.shape)


DIM_SETS = {   # name -> (function of x, input shape)
    "bn-dense": (lambda x: core.normalize(x, (0,), 1e-3)[0], (5, 3)),
    "bn-conv": (lambda x: core.normalize(x, (0, 2, 3), 1e-3)[0], (3, 2, 2, 3)),
    "ln": (lambda x: core.normalize(x, (1, 2, 3), 1e-3)[0], (2, 2, 2, 3)),
    "ln-last": (lambda x: core.normalize(x, (-1,), 1e-3)[0], (3, 5)),
    "in": (lambda x: core.normalize(x, (2, 3), 1e-3)[0], (2, 2, 2, 3)),
    "gn": (_gn, (2, 4, 3)),
}


@pytest.mark.parametrize("name", list(DIM_SETS))
def test_gradcheck_and_gradgradcheck_p2(name):
    f, shape = DIM_SETS[name]
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=F64) * 2 + 1).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, math.inf])
@pytest.mark.parametrize("dims,shape", [((0,), (6, 3)), ((0, 2), (3, 2, 3)), ((1,), (3, 5))])
def test_gradcheck_lp(p, dims, shape):
    """The hand-written Lp backward (w = sign(xhat)/m, or one-hot sign at the arg-max) against finite differences.
    Random data: no ties in |x - mean| and no x at the mean, where the Lp scale is not differentiable."""
    torch.manual_seed(1)
    x = (torch.randn(shape, dtype=F64) * 2).requires_grad_()
    f = lambda x: core.normalize(x, dims, 1e-3, p=p)[0]   # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_statistics_against_brute_force(p):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, dtype=F64)
    mean, disp = core.statistics(x, (0, 2), p)
    for c in range(3):
        v = x[:, c, :].flatten()
        mu = v.sum() / v.numel()
        dev = (v - mu).abs()
        want = {1.0: dev.mean(), 2.0: (dev ** 2).mean(), math.inf: dev.max()}[p]
        assert mean[0, c, 0].item() == pytest.approx(mu.item(), abs=1e-14)
        assert disp[0, c, 0].item() == pytest.approx(want.item(), abs=1e-14)
    xhat, m2, d2 = core.normalize(x, (0, 2), 1e-5, p=p)
    assert torch.equal(m2, mean) and torch.equal(d2, disp)
    torch.testing.assert_close(xhat, (x - mean) / core.scale_from(disp, 1e-5, p), rtol=0, atol=1e-14)
    assert not m2.requires_grad and not d2.requires_grad


def test_fact_c2_jacobian():
    """Santurkar et al. Fact C.2: d yhat_b / d y_k = (1/sigma)(1[b=k] - 1/m - yhat_b yhat_k / m), sigma = sqrt(var+eps)
    (exact for any eps with this sigma)."""
    torch.manual_seed(0)
    m, eps = 7, 1e-12
    y = torch.randn(m, dtype=F64) * 3 + 1
    jac = torch.autograd.functional.jacobian(lambda y: core.normalize(y.view(m, 1), (0,), eps)[0].view(m), y)
    sigma = torch.sqrt(y.var(correction=0) + eps)
    yhat = (y - y.mean()) / sigma
    want = (torch.eye(m, dtype=F64) - 1.0 / m - torch.outer(yhat, yhat) / m) / sigma
    torch.testing.assert_close(jac, want, rtol=0, atol=1e-12)
    # the two projections: J 1 = 0 and J yhat = 0 (BN's output forgets shifts and scalings of y)
    torch.testing.assert_close(jac @ torch.ones(m, dtype=F64), torch.zeros(m, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(jac @ yhat, torch.zeros(m, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("a", [0.01, 0.5, 3.0, 100.0])
def test_scale_invariance(a):
    """SPEC 1.1 (Ioffe & Szegedy Sec. 3.3): BN((aW)u) = BN(Wu); d/du unchanged; d/dW scaled by 1/a.
    eps=1e-15 so that eps, which does not scale, stays far below the variance (relative effect eps / (a^2 var))."""
    torch.manual_seed(0)
    u = torch.randn(16, 5, dtype=F64)
    w = torch.randn(4, 5, dtype=F64)
    bn = normlab.BatchNorm1d(4, eps=1e-15).double()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4)), bn.bias.copy_(torch.randn(4))
    c = torch.randn(16, 4, dtype=F64)
    outs = []
    for scale in (1.0, a):
        uu, ww = u.clone().requires_grad_(), (scale * w).requires_grad_()
        y = bn(uu @ ww.T)
        (c * y).sum().backward()
        outs.append((y.detach(), uu.grad, ww.grad))
    (y1, du1, dw1), (ya, dua, dwa) = outs
    torch.testing.assert_close(ya, y1, rtol=0, atol=1e-9)
    torch.testing.assert_close(dua, du1, rtol=0, atol=1e-9)
    torch.testing.assert_close(dwa, dw1 / a, rtol=1e-8, atol=1e-12)


def test_backward_from_sums_is_the_chain_rule():
    """dx from the two reductions equals autograd through a plain differentiable formula, for p = 2 and p = 1."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, dtype=F64)
    g = torch.randn_like(x)
    dims, eps = (0, 2), 1e-3
    m = core.count(x, dims)
    assert m == 18
    for p in (2.0, 1.0):
        xr = x.clone().requires_grad_()
        c = xr - xr.mean(dims, keepdim=True)
        disp = (c ** 2).mean(dims, keepdim=True) if p == 2 else c.abs().mean(dims, keepdim=True)
        ((c / core.scale_from(disp, eps, p)) * g).sum().backward()
        mean, d = core.statistics(x, dims, p)
        s = core.scale_from(d, eps, p)
        xhat = (x - mean) / s
        w = None if p == 2 else core._scale_weights(xhat, dims, m, p)
        dx = core.backward_from_sums(g, xhat, s, g.sum(dims, keepdim=True), (g * xhat).sum(dims, keepdim=True), m,
                                     p, w)
        torch.testing.assert_close(dx, xr.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dims,shape", [((0,), (4096, 2)), ((1,), (2, 4096)), ((0, 2, 3), (16, 2, 16, 16))])
def test_no_catastrophic_cancellation(dims, shape):
    """1e4 + N(0, 1) in float32: E[x^2] - E[x]^2 would lose every digit (1e8 vs 1 at 7 digits); the core keeps them."""
    torch.manual_seed(0)
    z = torch.randn(shape, dtype=F64)
    x = (1e4 + z).float()
    xhat, mean, var = core.normalize(x, dims, 1e-5)
    ref = (x.double() - x.double().mean(dims, keepdim=True))
    ref = ref / torch.sqrt(ref.pow(2).mean(dims, keepdim=True) + 1e-5)
    assert (xhat.var(dims, correction=0) - 1).abs().max() < 1e-3
    assert xhat.mean(dims).abs().max() < 1e-3
    torch.testing.assert_close(xhat.double(), ref, rtol=0, atol=2e-3)
    torch.testing.assert_close(var.double(), x.double().var(dims, correction=0, keepdim=True), rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_core(dtype):
    torch.manual_seed(0)
    x = (torch.randn(64, 3) * 2 + 20).to(dtype).requires_grad_()
    xhat, mean, var = core.normalize(x, (0,), 1e-5)
    assert xhat.dtype == dtype and mean.dtype == var.dtype == torch.float32
    mean32, var32 = core.statistics(x.detach().float(), (0,))
    torch.testing.assert_close(mean, mean32, rtol=0, atol=0)
    torch.testing.assert_close(var, var32, rtol=0, atol=0)
    g = torch.randn(64, 3)
    xhat.backward(g.to(dtype))
    assert x.grad.dtype == dtype
    x32 = x.detach().float().requires_grad_()
    core.normalize(x32, (0,), 1e-5)[0].backward(g.to(dtype).float())
    tol = 1e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=tol, atol=tol)
    y = core.normalize_with(x.detach(), mean, var, 1e-5)
    assert y.dtype == dtype


def test_normalize_with_and_affine():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=F64)
    mean, var = torch.randn(1, 3, 1, dtype=F64), torch.rand(1, 3, 1, dtype=F64) + 0.5
    y = core.normalize_with(x, mean, var, 1e-3)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3), rtol=0, atol=1e-14)
    w, b = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    shape = core.channel_shape(3)
    assert shape == [1, -1, 1]
    torch.testing.assert_close(core.affine(y, w, b, shape), y * w.view(shape) + b.view(shape), rtol=0, atol=1e-14)
    torch.testing.assert_close(core.affine(y, w, None, shape), y * w.view(shape), rtol=0, atol=0)
    torch.testing.assert_close(core.affine(y, None, b, shape), y + b.view(shape), rtol=0, atol=0)
    assert core.affine(y, None, None, shape) is y


def test_gradient_does_not_flow_into_statistics():
    x = torch.randn(8, 2, dtype=F64, requires_grad=True)
    xhat, mean, var = core.normalize(x, (0,))
    assert xhat.requires_grad and not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize("call,match", [
    (lambda: core.normalize(torch.arange(6).view(3, 2), (0,)), "input"),
    (lambda: core.normalize(torch.randn(3, 2), (0,), eps=0.0), "eps"),
    (lambda: core.normalize(torch.randn(3, 2), (0,), eps=-1e-5), "eps"),
    (lambda: core.normalize(torch.randn(3, 2), (0,), eps=math.nan), "eps"),
    (lambda: core.normalize(torch.randn(3, 2), (0,), p=3), "p"),
    (lambda: core.normalize(torch.randn(3, 2), ()), "dims"),
    (lambda: core.normalize(torch.randn(3, 2), (0, 0)), "dims"),
    (lambda: core.normalize(torch.randn(3, 2), (2,)), "dims"),
    (lambda: core.check_float([1.0, 2.0], "x"), "x"),
])
def test_core_rejects_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
