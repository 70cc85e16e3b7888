"""The NumPy reference (Ioffe & Szegedy Alg. 1 and 2, seed 002's backward) against an independent step-by-step
chain rule, and against normlab's core and BatchNorm1d: forward, backward (dx, dgamma, dbeta), inference transform."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import normlab
from normlab import core, reference


def _chain_rule(dy, x, gamma, eps):
    """Seed 002's node-by-node backward through x -> mu -> var -> xhat -> y (no simplification)."""
    m = x.shape[0]
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    xhat = (x - mu) / np.sqrt(var + eps)
    dxhat = dy * gamma
    dvar = (dxhat * (x - mu)).sum(0) * -0.5 * (var + eps) ** -1.5
    dmu = -dxhat.sum(0) / np.sqrt(var + eps) + dvar * (-2.0 * (x - mu)).mean(0)
    dx = dxhat / np.sqrt(var + eps) + dvar * 2.0 * (x - mu) / m + dmu / m
    return dx, (dy * xhat).sum(0), dy.sum(0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(16, 5))
    return x, rng.normal(size=5), rng.normal(size=5), rng.normal(size=(16, 5))


def test_reference_backward_is_the_chain_rule(batch):
    x, gamma, beta, dy = batch
    _, cache = reference.batchnorm_forward(x, gamma, beta, eps=1e-3)
    for got, want in zip(reference.batchnorm_backward(dy, cache), _chain_rule(dy, x, gamma, 1e-3)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_reference_backward_matches_finite_differences(batch):
    x, gamma, beta, dy = batch
    dx, _, _ = reference.batchnorm_backward(dy, reference.batchnorm_forward(x, gamma, beta)[1])
    h = 1e-6
    for i, j in [(0, 0), (3, 2), (15, 4)]:
        xp, xm = x.copy(), x.copy()
        xp[i, j] += h
        xm[i, j] -= h
        fd = ((reference.batchnorm_forward(xp, gamma, beta)[0] - reference.batchnorm_forward(xm, gamma, beta)[0])
              * dy).sum() / (2 * h)
        assert dx[i, j] == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_reference_matches_batchnorm1d(batch):
    x, gamma, beta, dy = batch
    y_ref, cache = reference.batchnorm_forward(x, gamma, beta, eps=1e-5)
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(dy, cache)
    bn = normlab.BatchNorm1d(5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma)), bn.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).requires_grad_()
    y = bn(xt)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), dx_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad.numpy(), dgamma_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn.bias.grad.numpy(), dbeta_ref, rtol=0, atol=1e-12)


def test_reference_matches_core_and_its_two_sums(batch):
    x, gamma, _, dy = batch
    xt = torch.from_numpy(x)
    xhat, mean, var = core.normalize(xt, (0,), 1e-5)
    y_ref, cache = reference.batchnorm_forward(x, np.ones(5), np.zeros(5))
    np.testing.assert_allclose(xhat.numpy(), y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean.numpy()[0], x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(var.numpy()[0], x.var(0), rtol=0, atol=1e-12)
    # dL/dxhat = dy * gamma fed to the core's two-reduction backward gives the reference dx
    g = torch.from_numpy(dy * gamma)
    s = core.scale_from(var, 1e-5)
    dx = core.backward_from_sums(g, xhat, s, g.sum(0, keepdim=True), (g * xhat).sum(0, keepdim=True), 16)
    dx_ref, _, _ = reference.batchnorm_backward(dy, (cache[0], cache[1], gamma))
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=0, atol=1e-12)


def test_population_statistics_and_inference_match_batchnorm1d():
    """Alg. 2: momentum=None makes the running statistics the plain average over batches, i.e. E_B[mu_B] and
    m/(m-1) E_B[var_B]; the eval output is then the reference inference transform."""
    rng = np.random.default_rng(1)
    m, d, batches = 8, 4, 5
    xs = [rng.normal(1.0, 2.0, size=(m, d)) for _ in range(batches)]
    gamma, beta = rng.normal(size=d), rng.normal(size=d)
    bn = normlab.BatchNorm1d(d, momentum=None).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma)), bn.bias.copy_(torch.from_numpy(beta))
    for x in xs:
        bn(torch.from_numpy(x))
    mean, var = reference.population_statistics([x.mean(0) for x in xs], [x.var(0) for x in xs], m)
    np.testing.assert_allclose(var, np.mean([x.var(0, ddof=1) for x in xs], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=0, atol=1e-12)
    assert int(bn.num_batches_tracked) == batches
    bn.eval()
    x_test = rng.normal(size=(3, d))
    y_ref = reference.batchnorm_inference(x_test, gamma, beta, mean, var)
    np.testing.assert_allclose(bn(torch.from_numpy(x_test)).detach().numpy(), y_ref, rtol=0, atol=1e-12)
    # the inference transform is one affine map per feature: it is the training transform with fixed statistics
    np.testing.assert_allclose(y_ref, gamma * (x_test - mean) / np.sqrt(var + 1e-5) + beta, rtol=0, atol=1e-12)
