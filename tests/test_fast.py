"""The fast path (normlab.fast) gives the eager path's numbers, float32, for BN/GN/LN/IN in NCHW and channels_last.

Tiny shapes (the fast path takes every size), so the kernels compile once (cached) and the file stays fast.
Every comparison also checks that the kernels really ran (a spy on fast.forward / fast.backward).
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch

import normlab
from normlab import core, fast
from normlab.fast import _build

pytestmark = pytest.mark.skipif(not fast.prepare(), reason=f"fast path unavailable: {fast.status()['reason']}")

TOL = {"rtol": 2e-5, "atol": 2e-5}      # float32 rounding of the same math, values O(1)
PTOL = {"rtol": 1e-4, "atol": 1e-4}     # parameter grads: sums over many values


@pytest.fixture()
def spy(monkeypatch):
    """Make sure the fast path is on and count kernel calls."""
    calls = {"forward": 0, "backward": 0}

    def wrap(name):
        real = getattr(fast, name)

        def counted(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        monkeypatch.setattr(fast, name, counted)

    wrap("forward")
    wrap("backward")
    monkeypatch.setattr(fast, "_on", True)
    return calls


def _run(layer, x, g):
    """(y, dx, dweight, dbias) of one training step; parameter grads are None without affine."""
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(g)
    grads = [p.grad.clone() if p is not None and p.grad is not None else None
             for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))]
    return y.detach(), x.grad, *grads


def _compare(make, shape, spy, fmt=None, seed=0):
    torch.manual_seed(seed)
    x = 3 * torch.randn(shape) + 1.5
    g = torch.randn(shape)
    if fmt is not None:
        x, g = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    fast_layer, eager_layer = make(), make()
    for layer in (fast_layer, eager_layer):   # non-trivial affine, the same in both
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                if p is not None:
                    p.copy_(torch.randn_like(p))
    got = _run(fast_layer, x, g)
    assert spy["forward"] == 1 and spy["backward"] == 1
    with fast.disabled():
        want = _run(eager_layer, x, g)
    assert spy["forward"] == 1 and spy["backward"] == 1
    if fmt is not None:
        assert got[0].is_contiguous(memory_format=fmt) and got[1].is_contiguous(memory_format=fmt)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    for a, b in zip(got[2:], want[2:]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **PTOL)
    return fast_layer, eager_layer


CASES = {
    "bn2d": (lambda: normlab.BatchNorm2d(6), (5, 6, 4, 3)),
    "bn2d-threaded": (lambda: normlab.BatchNorm2d(32), (16, 32, 16, 16)),   # >= THREADED_NUMEL: two threads
    "bn2d-big-planes": (lambda: normlab.BatchNorm2d(4), (3, 4, 16, 17)),    # planes >= 32 values: ch kernels
    "bn2d-7x7-planes": (lambda: normlab.BatchNorm2d(8), (4, 8, 7, 7)),
    "bn1d-dense": (lambda: normlab.BatchNorm1d(7), (9, 7)),
    "bn1d-wide": (lambda: normlab.BatchNorm1d(300), (40, 300)),     # col: a 256-column group and a partial one
    "bn1d-seq": (lambda: normlab.BatchNorm1d(7), (9, 7, 5)),
    "bn3d": (lambda: normlab.BatchNorm3d(3), (4, 3, 2, 3, 4)),
    "bn2d-no-affine": (lambda: normlab.BatchNorm2d(6, affine=False), (5, 6, 4, 3)),
    "bn2d-no-bias": (lambda: normlab.BatchNorm2d(6, bias=False), (5, 6, 4, 3)),
    "bn2d-untracked": (lambda: normlab.BatchNorm2d(6, track_running_stats=False), (5, 6, 4, 3)),
    "gn": (lambda: normlab.GroupNorm(3, 6), (4, 6, 5, 3)),
    "gn-threaded": (lambda: normlab.GroupNorm(8, 32), (8, 32, 16, 16)),
    "gn-dense": (lambda: normlab.GroupNorm(2, 6), (4, 6)),
    "gn-no-affine": (lambda: normlab.GroupNorm(3, 6, affine=False), (4, 6, 5, 3)),
    "ln-last": (lambda: normlab.LayerNorm(10), (3, 4, 10)),
    "ln-chw": (lambda: normlab.LayerNorm([6, 5, 3]), (4, 6, 5, 3)),
    "ln-threaded": (lambda: normlab.LayerNorm([32, 16, 16]), (8, 32, 16, 16)),
    "ln-no-bias": (lambda: normlab.LayerNorm(10, bias=False), (3, 4, 10)),
    "ln-odd-rows": (lambda: normlab.LayerNorm(33), (7, 33)),     # rows go in groups of 4: a padded last group
    "ln-one-row": (lambda: normlab.LayerNorm([6, 5]), (1, 6, 5)),
    "in-affine": (lambda: normlab.InstanceNorm2d(6, affine=True), (4, 6, 5, 3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_equals_eager(case, spy):
    make, shape = CASES[case]
    fast_layer, eager_layer = _compare(make, shape, spy)
    for name in ("running_mean", "running_var"):   # Alg. 2 step 10 (unbiased) on the kernels' statistics
        a, b = getattr(fast_layer, name, None), getattr(eager_layer, name, None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("make,shape", [(lambda: normlab.BatchNorm2d(6), (5, 6, 4, 3)),
                                        (lambda: normlab.BatchNorm2d(32), (16, 32, 16, 16)),
                                        (lambda: normlab.BatchNorm2d(200), (4, 200, 3, 3)),   # 12.5 vectors a row
                                        (lambda: normlab.BatchNorm3d(3), (4, 3, 2, 3, 4))])
def test_fast_channels_last(make, shape, spy):
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    _compare(make, shape, spy, fmt=fmt)


@pytest.mark.parametrize("make,shape,fmt", [(lambda: normlab.BatchNorm2d(4), (3, 4, 16, 17), None),
                                            (lambda: normlab.BatchNorm2d(6), (5, 6, 4, 3), None),
                                            (lambda: normlab.BatchNorm2d(70), (5, 70, 4, 4), torch.channels_last),
                                            (lambda: normlab.GroupNorm(3, 6), (4, 6, 5, 3), None),
                                            (lambda: normlab.LayerNorm(1500), (7, 1500), None),
                                            (lambda: normlab.InstanceNorm2d(6), (4, 6, 5, 3), None)])
def test_fast_streaming_stores(make, shape, fmt, spy, monkeypatch):
    """Outputs of at least STREAM_BYTES take non-temporal stores: same numbers (forced here on small tensors)."""
    monkeypatch.setattr(fast, "STREAM_BYTES", 0)
    _compare(make, shape, spy, fmt=fmt)


def test_fast_matches_torch_nn_batchnorm(spy):
    """The kernels against torch.nn itself (float32), including the running statistics after two steps."""
    torch.manual_seed(3)
    x, g = torch.randn(8, 5, 6, 6), torch.randn(8, 5, 6, 6)
    mine, ref = normlab.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    for _ in range(2):
        got, want = _run(mine, x, g), _run(ref, x, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **PTOL)
    torch.testing.assert_close(mine.running_var, ref.running_var, **TOL)
    assert spy["forward"] == 2


@pytest.mark.parametrize("make,shape,fmt", [(lambda: normlab.BatchNorm2d(32), (16, 32, 16, 16), None),
                                            (lambda: normlab.BatchNorm2d(32), (16, 32, 16, 16), torch.channels_last),
                                            (lambda: normlab.BatchNorm2d(16), (64, 16, 8, 8), None),
                                            (lambda: normlab.GroupNorm(8, 32), (8, 32, 16, 16), None),
                                            (lambda: normlab.LayerNorm([32, 16, 16]), (8, 32, 16, 16), None)])
def test_fast_is_deterministic(make, shape, fmt, spy):
    """Threads take work blocks dynamically, yet repeated calls give bit-identical results."""
    torch.manual_seed(5)
    x, g = torch.randn(shape), torch.randn(shape)
    if fmt is not None:
        x, g = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    first = _run(make(), x, g)
    for _ in range(3):
        for a, b in zip(first, _run(make(), x, g)):
            assert torch.equal(a, b)


def test_fast_large_offset_keeps_digits(spy):
    """1e4 + N(0, 1) in float32: the shifted one-pass statistics lose nothing (float64 reference)."""
    torch.manual_seed(0)
    x = 1e4 + torch.randn(64, 3, 4, 4)
    xhat, mean, var = core.normalize(x, (0, 2, 3), 1e-5)
    assert spy["forward"] == 1
    x64 = x.double()
    v64, m64 = torch.var_mean(x64, dim=(0, 2, 3), correction=0, keepdim=True)
    torch.testing.assert_close(var.double(), v64, rtol=1e-4, atol=0)
    # x itself carries float32 rounding of 1e4 (~5e-4): that, not the statistics, bounds xhat's error
    torch.testing.assert_close(xhat.double(), (x64 - m64) / torch.sqrt(v64 + 1e-5), rtol=0, atol=2e-3)


def test_fast_double_backward_matches_eager(spy):
    """Hessian-vector products (create_graph=True) go through the eager formulas and agree with the eager path."""
    torch.manual_seed(1)
    x0, g, v = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3)
    w0 = torch.rand(4) + 0.5
    out = []
    for use_fast in (True, False):
        layer = normlab.BatchNorm2d(4)
        with torch.no_grad():
            layer.weight.copy_(w0)
        x = x0.clone().requires_grad_()
        if use_fast:
            y = layer(x)
        else:
            with fast.disabled():
                y = layer(x)
        dx, dw = torch.autograd.grad(y, (x, layer.weight), g, create_graph=True)
        out.append(torch.autograd.grad((dx * v).sum() + dw.sum(), (x, layer.weight)))
    assert spy["forward"] == 1 and spy["backward"] == 0
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, **PTOL)


def test_fast_expanded_grad_and_nan(spy):
    """An expanded gradient (y.sum()) works; a NaN poisons its own statistic set only, as on the eager path."""
    x = torch.randn(4, 3, 5, 5)
    x[1, 2, 0, 0] = math.nan
    x.requires_grad_()
    y = normlab.BatchNorm2d(3)(x)
    y.sum().backward()
    assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, :2]).all()
    assert torch.isfinite(x.grad[:, :2]).all()


@pytest.mark.parametrize("dims,shape,fmt", [((0, 2, 3), (4, 6, 5, 3), None),                      # ch
                                            ((0, 2, 3), (4, 6, 5, 3), torch.channels_last),       # col
                                            ((1, 2, 3), (4, 6, 5, 3), None)])                     # rows
@pytest.mark.parametrize("affine", ["none", "bias", "both"])
def test_fast_under_float64_default_dtype(dims, shape, fmt, affine, spy):
    """torch.set_default_dtype(torch.float64) changes no buffer the kernels write (statistics, dw, db): float32 input
    gives the eager path's numbers, statistics included; a missing weight next to a bias acts as ones."""
    torch.manual_seed(2)
    x = torch.randn(shape).contiguous(memory_format=fmt or torch.contiguous_format)
    g = torch.randn(shape)
    wshape = [1, 6, 1, 1] if dims[0] == 0 else [1, 6, 5, 3]
    n = 6 if dims[0] == 0 else 90
    w = torch.rand(n) + 0.5 if affine == "both" else None
    b = torch.randn(n) if affine != "none" else None
    old = torch.get_default_dtype()
    out = []
    try:
        torch.set_default_dtype(torch.float64)
        for use_fast in (True, False):
            xx = x.clone().requires_grad_()
            ps = [t.clone().requires_grad_() if t is not None else None for t in (w, b)]
            with contextlib.nullcontext() if use_fast else fast.disabled():
                y, mean, var = core.normalize_affine(xx, dims, 1e-5, ps[0], ps[1], wshape)
                y.backward(g)
            out.append([y, mean, var, xx.grad] + [t.grad for t in ps if t is not None])
    finally:
        torch.set_default_dtype(old)
    assert spy["forward"] == 1 and spy["backward"] == 1
    for a, e in zip(*out):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, **TOL)


def test_unsupported_layouts_fall_back(spy):
    """Non-contiguous input, float64, p != 2: the eager path, same numbers as before."""
    x = torch.randn(6, 8, 5, 4)[:, ::2]
    assert fast.plan(x, (0, 2, 3), 2.0) is None
    assert fast.plan(x.contiguous().double(), (0, 2, 3), 2.0) is None
    assert fast.plan(x.contiguous(), (0, 2, 3), 1.0) is None
    assert fast.plan(x.contiguous(), (0, 2), 2.0) is None   # not a layout the kernels know
    normlab.BatchNorm2d(4)(x)
    assert spy["forward"] == 0


def test_switches(spy):
    x = torch.randn(4, 3, 5, 5)
    assert fast.plan(x, (0, 2, 3), 2.0) is not None
    with fast.disabled():
        assert fast.plan(x, (0, 2, 3), 2.0) is None
        assert not fast.enabled()
    fast.set_enabled(False)   # the spy fixture restores the switch afterwards
    assert fast.plan(x, (0, 2, 3), 2.0) is None and not fast.status()["enabled"]
    fast.set_enabled(True)
    assert fast.plan(x, (0, 2, 3), 2.0) is not None and fast.status()["enabled"]
    assert fast.plan(torch.randn(2, 3), (0,), 2.0) is not None          # every size, down to a few values
    with pytest.raises(ValueError, match="on: expected True or False, got 'auto'"):
        fast.set_enabled("auto")


def test_env_switch_disables():
    code = ("import torch, normlab; from normlab import fast; x = torch.randn(64, 64, 4, 4); "
            "print(fast.status()['enabled'], fast.plan(x, (0, 2, 3), 2.0) is None)")
    env = dict(os.environ, NORMLAB_FAST="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_build_failure_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-normlab")
    monkeypatch.setattr(_build.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C compiler found"):
        _build.build()
    # the module turns the failure into a warning and the eager path
    monkeypatch.setattr(fast, "_lib", None)
    monkeypatch.setattr(fast, "_error", None)
    monkeypatch.setattr(fast, "_on", True)
    with pytest.warns(RuntimeWarning, match="fast path unavailable"):
        assert fast.plan(torch.randn(4, 3, 5, 5), (0, 2, 3), 2.0) is None
    assert "no C compiler" in fast.status()["reason"]
    y = normlab.BatchNorm2d(3)(torch.randn(4, 3, 5, 5))
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layers_use_eager_path(spy):
    x = torch.randn(8, 4, 6, 6, device="cuda", requires_grad=True)
    layer = normlab.BatchNorm2d(4).cuda()
    layer(x).sum().backward()
    assert spy["forward"] == 0 and x.grad.device.type == "cuda"
