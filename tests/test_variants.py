"""BN variants (SPEC §1.3): noisy BN, Lp BN, Batch Renorm, Ghost BN, and Weight-Standardized Conv2d.

References: torch.nn.BatchNorm (p = 2, r_max = 1 / d_max = 0, one virtual batch), the papers' formulas written with
plain torch ops and autograd, torch BN applied virtual batch by virtual batch, and gradcheck in float64.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.layers import (BatchNorm1d, BatchNorm2d, BatchRenorm1d, BatchRenorm2d, GhostBatchNorm1d,
                            GhostBatchNorm2d, LpBatchNorm1d, LpBatchNorm2d, NoisyBatchNorm1d, NoisyBatchNorm2d,
                            WSConv2d)

D = torch.float64


def _affine(*mods: nn.Module, c: int, seed: int = 0) -> None:
    """Give every module the same non-trivial gamma, beta."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.rand(c, generator=g, dtype=D) + 0.5, torch.randn(c, generator=g, dtype=D)
    with torch.no_grad():
        for m in mods:
            m.weight.copy_(w)
            m.bias.copy_(b)


def _grads(mod: nn.Module, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(output, dx, dgamma, dbeta) of sum(c * mod(x))."""
    x = x.detach().clone().requires_grad_()
    y = mod(x)
    gx, gw, gb = torch.autograd.grad((c * y).sum(), (x, mod.weight, mod.bias))
    return y.detach(), gx, gw, gb


def _same(a, b, atol: float = 1e-12, rtol: float = 0.0) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------------------- noisy BN
def _extract_noise(layer: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value (s, m) of one training step: the same draws on x and -x give z = s*y + m and -s*y + m."""
    layer.generator.manual_seed(seed)
    z1 = layer(x)
    layer.generator.manual_seed(seed)
    z2 = layer(-x)
    y = (BatchNorm2d if x.dim() == 4 else BatchNorm1d)(x.shape[1]).double()._normalize(x)
    return (z1 - z2) / (2 * y), (z1 + z2) / 2


def test_noisy_noise_statistics_dense():
    """App. A.2.1 on a large batch: mu_j in (-0.5, 0.5), sigma_j in (1, 1.25), m_ij within mu_j +- 0.1, s_ij sd 0.1."""
    n, c = 4000, 200
    layer = NoisyBatchNorm1d(c, generator=torch.Generator()).double()
    x = torch.randn(n, c, dtype=D, generator=torch.Generator().manual_seed(1)) * 3 + 2
    with torch.no_grad():
        s, m = _extract_noise(layer, x, seed=7)
    lo, hi = m.amin(0), m.amax(0)
    mid = (lo + hi) / 2                                  # estimates mu_j (uniform: range 0.2 around it)
    assert bool(((hi - lo) <= 0.2 + 1e-9).all()) and bool(((hi - lo) > 0.19).all())
    assert 0.4 < float(mid.abs().max()) <= 0.5
    assert 0.24 < float(mid.std()) < 0.34                # U(-0.5, 0.5) has sd 0.289
    assert 0.055 < float((m - mid).std()) < 0.060        # U(-0.1, 0.1) has sd 0.0577
    sigma = s.mean(0)                                    # sigma_j, standard error 0.1 / sqrt(4000)
    assert float(sigma.min()) > 1 - 0.008 and float(sigma.max()) < 1.25 + 0.008
    assert float(sigma.max() - sigma.min()) > 0.2        # the units get different sigma_j
    assert 0.098 < float((s - sigma).std()) < 0.102      # N(sigma_j, 0.1): 0.1 is the standard deviation


def test_noisy_2d_noise_is_per_channel_and_per_value():
    """Conv reading: mu_j, sigma_j per channel, shared by samples and positions; m_ij, s_ij per activation."""
    layer = NoisyBatchNorm2d(16, generator=torch.Generator()).double()
    x = torch.randn(200, 16, 6, 6, dtype=D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s, m = _extract_noise(layer, x, seed=3)
    per_channel = m.transpose(0, 1).reshape(16, -1)
    assert float((per_channel.amax(1) - per_channel.amin(1)).max()) <= 0.2 + 1e-9     # one mu_j per channel
    assert float(m[:, 0].std(dim=(1, 2)).min()) > 0.03   # varies across positions of one (sample, channel)
    sig = s.mean(dim=(0, 2, 3))
    assert float(sig.min()) > 0.99 and float(sig.max()) < 1.26
    assert 0.098 < float((s - s.mean(dim=(0, 2, 3), keepdim=True)).std()) < 0.102


def test_noisy_fresh_each_step_reproducible_and_eval_is_bn():
    x = torch.randn(8, 4, 3, 3, dtype=D)
    a = NoisyBatchNorm2d(4, generator=torch.Generator().manual_seed(5)).double()
    b = NoisyBatchNorm2d(4, generator=torch.Generator().manual_seed(5)).double()
    ref = BatchNorm2d(4).double()
    _affine(a, b, ref, c=4)
    ya1, ya2, yb1 = a(x), a(x), b(x)
    assert not torch.allclose(ya1, ya2)                  # new noise every training step
    torch.testing.assert_close(ya1, yb1, rtol=0, atol=0)  # same generator seed, same draws
    y_ref = ref(x)
    ref(x)
    assert float((ya1 - y_ref).detach().abs().max()) > 0.05       # the noise is really there in training
    torch.testing.assert_close(a.running_mean, ref.running_mean, rtol=0, atol=1e-15)   # statistics are BN's
    torch.testing.assert_close(a.running_var, ref.running_var, rtol=0, atol=1e-15)
    a.eval(), ref.eval()
    torch.testing.assert_close(a(x), ref(x), rtol=0, atol=0)
    torch.manual_seed(11)                                # generator=None draws from torch's global RNG
    g = NoisyBatchNorm1d(4).double()
    y1 = g(x[:, :, 0, 0])
    torch.manual_seed(11)
    torch.testing.assert_close(g(x[:, :, 0, 0]), y1, rtol=0, atol=0)
    copy.deepcopy(a)                                      # models with a generator still deep-copy


def test_noisy_gradient():
    """d/dx of sum(c * (s * BN(x) + m)) is BN's backward of c * s; gradcheck with the noise held fixed."""
    layer = NoisyBatchNorm2d(3, generator=torch.Generator()).double()
    ref = BatchNorm2d(3).double()
    _affine(layer, ref, c=3)
    x = torch.randn(4, 3, 2, 2, dtype=D)
    c = torch.randn(4, 3, 2, 2, dtype=D)
    layer.generator.manual_seed(0)
    s, _ = copy.deepcopy(layer).sample_noise(x)
    layer.generator.manual_seed(0)
    _same(_grads(layer, x, c)[1:], _grads(ref, x, c * s)[1:])

    def fn(inp):
        layer.generator.manual_seed(0)
        return layer(inp)
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("kw, match", [({"n_mu": -0.1}, "n_mu"), ({"n_sigma": 0.9}, "n_sigma"),
                                       ({"r_mu": float("nan")}, "r_mu"), ({"r_sigma": -1}, "r_sigma")])
def test_noisy_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        NoisyBatchNorm2d(4, **kw)


def test_noisy_bad_generator():
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        NoisyBatchNorm1d(4, generator=0)


# ------------------------------------------------------------------------------------------------------------- Lp BN
def _lp_numpy(x: np.ndarray, p: float, eps: float, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Brute force per channel: center by the batch mean, divide by the lp statistic (docs/variants.md)."""
    xs = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    c = xs - xs.mean(1, keepdims=True)
    disp = {1: np.abs(c).mean(1), 2: (c ** 2).mean(1), math.inf: np.abs(c).max(1)}[p]
    s = np.sqrt(disp + eps) if p == 2 else disp + eps
    y = (c / s[:, None]) * w[:, None] + b[:, None]
    return np.moveaxis(y.reshape(x.shape[1], x.shape[0], *x.shape[2:]), 0, 1), xs.mean(1), disp


@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_lp_forward_running_stats_and_eval(p):
    x = torch.randn(6, 3, 4, 5, dtype=D) * 2 + 1
    layer = LpBatchNorm2d(3, p, eps=1e-3, momentum=0.25).double()
    _affine(layer, c=3)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    y_ref, mean, disp = _lp_numpy(x.numpy(), p, 1e-3, w, b)
    np.testing.assert_allclose(layer(x).detach().numpy(), y_ref, rtol=0, atol=1e-12)
    m = 6 * 4 * 5
    disp_run = disp * m / (m - 1) if p == 2 else disp      # Bessel only for the variance
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.25 * mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.75 + 0.25 * disp_run, rtol=0, atol=1e-12)
    layer.eval()
    rm, rv = layer.running_mean.numpy()[None, :, None, None], layer.running_var.numpy()[None, :, None, None]
    s = np.sqrt(rv + 1e-3) if p == 2 else rv + 1e-3
    np.testing.assert_allclose(layer(x).detach().numpy(), (x.numpy() - rm) / s * w[None, :, None, None]
                               + b[None, :, None, None], rtol=0, atol=1e-12)


def test_lp2_equals_torch_batchnorm():
    x = torch.randn(16, 5, 6, 6) * 3 + 0.5
    c = torch.randn(16, 5, 6, 6)
    ours, ref = LpBatchNorm2d(5, p=2, momentum=0.3), nn.BatchNorm2d(5, momentum=0.3)
    _affine(ours, ref, c=5)
    for _ in range(3):
        _same(_grads(ours, x, c), _grads(ref, x, c), atol=1e-5, rtol=1e-5)
    _same((ours.running_mean, ours.running_var), (ref.running_mean, ref.running_var), atol=1e-6, rtol=1e-6)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [1, 2, math.inf])
@pytest.mark.parametrize("cls, shape", [(LpBatchNorm1d, (7, 3)), (LpBatchNorm2d, (3, 2, 2, 3))])
def test_lp_gradcheck_and_autograd_reference(p, cls, shape):
    """Hand-written backward vs finite differences and vs autograd of the plain formula (random x: no ties)."""
    torch.manual_seed(3)
    layer = cls(shape[1], p).double()
    _affine(layer, c=shape[1])
    x = torch.randn(shape, dtype=D)
    assert torch.autograd.gradcheck(layer, (x.clone().requires_grad_(),))

    def plain(inp):
        dims = (0, *range(2, inp.dim()))
        cen = inp - inp.mean(dims, keepdim=True)
        if p == 1:
            s = cen.abs().mean(dims, keepdim=True) + layer.eps
        elif p == 2:
            s = torch.sqrt((cen ** 2).mean(dims, keepdim=True) + layer.eps)
        else:
            s = cen.abs().amax(dims, keepdim=True) + layer.eps
        view = [1, -1] + [1] * (inp.dim() - 2)
        return cen / s * layer.weight.view(view) + layer.bias.view(view)

    c = torch.randn(shape, dtype=D)
    xa = x.clone().requires_grad_()
    want = torch.autograd.grad((c * plain(xa)).sum(), (xa, layer.weight, layer.bias))
    _same(_grads(layer, x, c)[1:], want, atol=1e-10)


@pytest.mark.parametrize("p", [3, 0, "inf", -math.inf])
def test_lp_bad_p(p):
    with pytest.raises(ValueError, match=r"p: expected 1, 2 or math.inf, got"):
        LpBatchNorm2d(4, p)


# ------------------------------------------------------------------------------------------------------ Batch Renorm
def test_renorm_with_rmax1_dmax0_is_batchnorm():
    x = torch.randn(8, 4, 3, 3) * 2 - 1
    c = torch.randn(8, 4, 3, 3)
    brn = BatchRenorm2d(4, r_max=1.0, d_max=0.0, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    warm = BatchRenorm2d(4)                               # the default schedule starts with r_max = 1, d_max = 0
    ref = nn.BatchNorm2d(4)
    _affine(brn, warm, ref, c=4)
    for step in range(4):
        xs = x * (step + 1)
        want = _grads(ref, xs, c)
        _same(_grads(brn, xs, c), want, atol=1e-5, rtol=1e-5)
        _same(_grads(warm, xs, c), want, atol=1e-5, rtol=1e-5)
    for m in (brn, warm):
        _same((m.running_mean, m.running_var, m.num_batches_tracked),
              (ref.running_mean, ref.running_var, ref.num_batches_tracked), atol=1e-5, rtol=1e-5)
        m.eval()
    ref.eval()
    torch.testing.assert_close(brn(x), ref(x), atol=1e-6, rtol=1e-6)


def _renorm_reference(x, w, b, rm, rv, eps, r_max, d_max):
    """Ioffe 2017 Alg. 1 with plain torch ops; r, d under stop_gradient."""
    dims = (0, *range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    mu_b = x.mean(dims, keepdim=True)
    sig_b = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    sig = torch.sqrt(rv.view(view) + eps)
    r = (sig_b / sig).detach().clamp(1 / r_max, r_max)
    d = ((mu_b - rm.view(view)) / sig).detach().clamp(-d_max, d_max)
    return ((x - mu_b) / sig_b * r + d) * w.view(view) + b.view(view)


@pytest.mark.parametrize("cls, shape", [(BatchRenorm1d, (10, 4)), (BatchRenorm2d, (5, 4, 3, 2))])
def test_renorm_matches_paper_formula(cls, shape):
    """Clipping active in some channels, inactive in others; forward, all gradients and the running update."""
    layer = cls(4, momentum=0.2, r_max=2.0, d_max=0.5, warmup_steps=0, r_max_steps=0, d_max_steps=0).double()
    _affine(layer, c=4)
    rm, rv = torch.tensor([0.0, 3.0, -0.2, 0.5], dtype=D), torch.tensor([1.0, 0.1, 30.0, 1.5], dtype=D)
    layer.running_mean.copy_(rm), layer.running_var.copy_(rv)
    x = torch.randn(shape, dtype=D)
    c = torch.randn(shape, dtype=D)
    xa = x.clone().requires_grad_()
    y_ref = _renorm_reference(xa, layer.weight, layer.bias, rm, rv, layer.eps, 2.0, 0.5)
    want = (y_ref.detach(), *torch.autograd.grad((c * y_ref).sum(), (xa, layer.weight, layer.bias)))
    _same(_grads(layer, x, c), want, atol=1e-12)
    dims = (0, *range(2, x.dim()))
    m = x.numel() // 4
    torch.testing.assert_close(layer.running_mean, 0.8 * rm + 0.2 * x.mean(dims), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.running_var, 0.8 * rv + 0.2 * x.var(dims, unbiased=True), rtol=0, atol=1e-12)
    assert m > 1


def test_renorm_gradcheck():
    layer = BatchRenorm2d(3, momentum=0.0, r_max=1.5, d_max=0.3, warmup_steps=0, r_max_steps=0,
                          d_max_steps=0).double()    # momentum 0: running stats (and so r, d) fixed across calls
    _affine(layer, c=3)
    # finite differences see r, d move with x unless they sit on their clip bounds, where stop_gradient is exact:
    # sigma_B / sigma >> 1.5 or << 1/1.5 and |mu_B - mu| / sigma >> 0.3 in every channel
    layer.running_mean.copy_(torch.tensor([5.0, -5.0, 30.0]))
    layer.running_var.copy_(torch.tensor([0.01, 0.02, 100.0]))
    x = torch.randn(4, 3, 2, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_renorm_schedule_and_clipping_driven_by_num_batches_tracked():
    layer = BatchRenorm1d(2, momentum=0.0)            # paper defaults: 5k warm-up, r_max 3 at 40k, d_max 5 at 25k
    assert layer.limits(0) == (1.0, 0.0) and layer.limits(5000) == (1.0, 0.0)
    assert layer.limits(22500) == pytest.approx((2.0, 4.375))
    assert layer.limits(15000) == pytest.approx((1 + 2 * 10000 / 35000, 2.5))
    assert layer.limits(25000) == pytest.approx((1 + 2 * 20000 / 35000, 5.0))
    assert layer.limits(40000) == (3.0, 5.0) and layer.limits(10 ** 6) == (3.0, 5.0)
    layer.num_batches_tracked.fill_(22500)
    assert layer.limits() == pytest.approx((2.0, 4.375))
    # running sigma = sqrt(1e-4 + eps): sigma_B / sigma is huge, so r = r_max(22500) = 2; mean 0 = running mean: d = 0
    layer.running_var.fill_(1e-4)
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [3.0, 6.0], [-3.0, -6.0]])
    y = layer(x)
    xhat = x / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    torch.testing.assert_close(y, 2.0 * xhat, rtol=1e-6, atol=1e-6)
    assert int(layer.num_batches_tracked) == 22501


@pytest.mark.parametrize("kw, match", [({"r_max": 0.5}, "r_max: expected a finite float >= 1"),
                                       ({"d_max": -0.1}, "d_max: expected a finite float >= 0"),
                                       ({"warmup_steps": -1}, "warmup_steps"),
                                       ({"warmup_steps": 100, "r_max_steps": 50}, "r_max_steps: expected >= warmup"),
                                       ({"track_running_stats": False}, "track_running_stats")])
def test_renorm_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        BatchRenorm2d(4, **kw)


# ---------------------------------------------------------------------------------------------------------- Ghost BN
@pytest.mark.parametrize("shape, v, chunks", [
    ((12, 3), 4, [4, 4, 4]),                 # divisible
    ((10, 3, 5), 4, [4, 4, 2]),              # remainder of 2 samples: its own virtual batch
    ((9, 3), 4, [4, 5]),                     # remainder of 1 value per channel: joins the last virtual batch
    ((9, 3, 2, 2), 4, [4, 4, 1]),            # 1 sample, but 4 values per channel: its own virtual batch
])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_equals_torch_bn_per_virtual_batch(shape, v, chunks, momentum):
    """Brute force: torch BN (one module, so shared affine) applied to each virtual batch in order."""
    cls = GhostBatchNorm2d if len(shape) == 4 else GhostBatchNorm1d
    ghost = cls(3, v, momentum=momentum).double()
    ref = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3, momentum=momentum).double()
    _affine(ghost, ref, c=3)
    x = torch.randn(shape, dtype=D) * 2 + 1
    c = torch.randn(shape, dtype=D)
    assert sum(chunks) == shape[0]
    xr = x.clone().requires_grad_()
    y_ref = torch.cat([ref(part) for part in xr.split(chunks)])
    want = (y_ref.detach(), *torch.autograd.grad((c * y_ref).sum(), (xr, ref.weight, ref.bias)))
    _same(_grads(ghost, x, c), want)
    _same((ghost.running_mean, ghost.running_var), (ref.running_mean, ref.running_var))
    assert int(ghost.num_batches_tracked) == len(chunks)
    ghost.eval(), ref.eval()
    torch.testing.assert_close(ghost(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("v", [16, 40])
def test_ghost_with_large_virtual_batch_is_batchnorm(v):
    x = torch.randn(16, 4, 3, 3)
    c = torch.randn(16, 4, 3, 3)
    ghost, bn = GhostBatchNorm2d(4, v), BatchNorm2d(4)
    _affine(ghost, bn, c=4)
    _same(_grads(ghost, x, c), _grads(bn, x, c), atol=0)
    _same((ghost.running_mean, ghost.running_var, ghost.num_batches_tracked),
          (bn.running_mean, bn.running_var, bn.num_batches_tracked), atol=0)


def test_ghost_gradcheck():
    ghost = GhostBatchNorm2d(2, 3).double()
    _affine(ghost, c=2)
    x = torch.randn(7, 2, 2, 1, dtype=D, requires_grad=True)   # virtual batches of 3, 3 and 1 (2 values)
    assert torch.autograd.gradcheck(ghost, (x,))


@pytest.mark.parametrize("v", [0, -4, 2.5, True, "8"])
def test_ghost_bad_virtual_batch_size(v):
    with pytest.raises(ValueError, match="virtual_batch_size: expected a positive int"):
        GhostBatchNorm2d(4, v)


def test_ghost_single_value_virtual_batches_rejected():
    with pytest.raises(ValueError, match="virtual_batch_size: 1 sample"):
        GhostBatchNorm1d(4, 1)(torch.randn(8, 4))


# ------------------------------------------------------------------------------------------------- WS convolution
def _ws_reference(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qiao et al. Eq. 5 with plain torch ops."""
    flat = w.reshape(w.shape[0], -1)
    out = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + eps)
    return out.reshape(w.shape)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, groups=2, bias=False)])
def test_wsconv_forward_backward(kw):
    torch.manual_seed(0)
    conv = WSConv2d(4, 6, 3, eps=1e-4, **kw).double()
    x = torch.randn(2, 4, 7, 7, dtype=D)
    w_hat = conv.standardized_weight().detach()
    flat = w_hat.reshape(6, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(6, dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(flat.var(1, unbiased=False), 1 - 1e-4 / (conv.weight.reshape(6, -1).var(
        1, unbiased=False) + 1e-4), rtol=0, atol=1e-12)
    w = conv.weight.detach().clone().requires_grad_()
    y_ref = F.conv2d(x, _ws_reference(w, 1e-4), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = conv(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    c = torch.randn_like(y)
    (gw,) = torch.autograd.grad((c * y).sum(), (conv.weight,))
    (gw_ref,) = torch.autograd.grad((c * y_ref).sum(), (w,))
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=1e-10)


def test_wsconv_gradcheck_and_state_dict():
    torch.manual_seed(1)
    conv = WSConv2d(2, 3, 2).double()
    x = torch.randn(1, 2, 3, 3, dtype=D, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_()
    fn = lambda inp, wt: torch.func.functional_call(conv, {"weight": wt, "bias": conv.bias}, (inp,))
    assert torch.autograd.gradcheck(fn, (x, w))
    plain = nn.Conv2d(2, 3, 2).double()
    conv.load_state_dict(plain.state_dict())              # same keys as nn.Conv2d
    torch.testing.assert_close(conv.weight, plain.weight, rtol=0, atol=0)


def test_wsconv_bad_arguments():
    with pytest.raises(ValueError, match="fan-in 1"):
        WSConv2d(1, 4, 1)
    with pytest.raises(ValueError, match="eps: expected a positive finite float"):
        WSConv2d(3, 4, 3, eps=0.0)
