"""Every normlab layer against its torch.nn twin (float64, ~1e-9): forward, input and parameter gradients, running
statistics and num_batches_tracked over several training steps, eval output, state_dict round trips, extra_repr,
channels_last, half precision, and gradcheck / gradgradcheck through each layer."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import normlab

TOL = dict(rtol=1e-9, atol=1e-9)

BN_CASES = [(nn.BatchNorm1d, normlab.BatchNorm1d, (8, 3)), (nn.BatchNorm1d, normlab.BatchNorm1d, (4, 3, 5)),
            (nn.BatchNorm2d, normlab.BatchNorm2d, (4, 3, 5, 6)), (nn.BatchNorm3d, normlab.BatchNorm3d, (2, 3, 3, 4, 5))]
IN_CASES = [(nn.InstanceNorm1d, normlab.InstanceNorm1d, (4, 3, 7)), (nn.InstanceNorm1d, normlab.InstanceNorm1d, (3, 7)),
            (nn.InstanceNorm2d, normlab.InstanceNorm2d, (4, 3, 5, 6)),
            (nn.InstanceNorm2d, normlab.InstanceNorm2d, (3, 5, 6)),
            (nn.InstanceNorm3d, normlab.InstanceNorm3d, (2, 3, 3, 4, 5))]
OPTIONS = list(itertools.product([True, False], [True, False], [0.1, None, 0.3]))   # affine, track, momentum


def _pair(torch_cls, nl_cls, *args, seed: int = 0, **kw) -> tuple[nn.Module, nn.Module]:
    """(torch layer, normlab layer), float64, with the same random parameters and running statistics."""
    ref, mine = torch_cls(*args, **kw).double(), nl_cls(*args, **kw).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in ref.named_parameters():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
        if getattr(ref, "running_mean", None) is not None:
            ref.running_mean.copy_(torch.randn(ref.running_mean.shape, generator=gen, dtype=torch.float64))
            ref.running_var.copy_(torch.rand(ref.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _step(ref: nn.Module, mine: nn.Module, shape, gen: torch.Generator, memory_format=None) -> None:
    """One forward + backward on the same data; assert outputs and all gradients agree, then clear the grads."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ref(x1), mine(x2)
    torch.testing.assert_close(y2, y1, **TOL)
    g = torch.randn(y1.shape, generator=gen, dtype=torch.float64)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), mine.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, **TOL)
    ref.zero_grad(), mine.zero_grad()


def _assert_state_equal(ref: nn.Module, mine: nn.Module) -> None:
    s1, s2 = ref.state_dict(), mine.state_dict()
    assert list(s1) == list(s2)
    for k in s1:
        assert s2[k].dtype == s1[k].dtype, k
        torch.testing.assert_close(s2[k], s1[k], **TOL)


def _conformance(ref: nn.Module, mine: nn.Module, shape, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    assert mine.extra_repr() == ref.extra_repr()
    _assert_state_equal(ref, mine)
    for _ in range(steps):                      # training steps: batch statistics, running statistics move
        _step(ref, mine, shape, gen)
        _assert_state_equal(ref, mine)
    ref.eval(), mine.eval()
    for _ in range(2):                          # eval: running statistics when tracked, batch statistics otherwise
        _step(ref, mine, shape, gen)
    _assert_state_equal(ref, mine)


@pytest.mark.parametrize("affine,track,momentum", OPTIONS)
@pytest.mark.parametrize("torch_cls,nl_cls,shape", BN_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_batchnorm_matches_torch(torch_cls, nl_cls, shape, affine, track, momentum):
    ref, mine = _pair(torch_cls, nl_cls, 3, momentum=momentum, affine=affine, track_running_stats=track)
    _conformance(ref, mine, shape)
    if track:
        assert int(mine.num_batches_tracked) == 3


@pytest.mark.parametrize("affine,track,momentum", OPTIONS)
@pytest.mark.parametrize("torch_cls,nl_cls,shape", IN_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_instancenorm_matches_torch(torch_cls, nl_cls, shape, affine, track, momentum):
    ref, mine = _pair(torch_cls, nl_cls, 3, momentum=momentum, affine=affine, track_running_stats=track)
    _conformance(ref, mine, shape)
    if track:   # torch's IN never counts batches, and momentum=None freezes the running statistics
        assert int(mine.num_batches_tracked) == 0


@pytest.mark.parametrize("groups,shape", [(1, (4, 6, 5, 5)), (2, (4, 6, 5, 5)), (3, (4, 6, 7)), (6, (4, 6, 5, 5)),
                                          (2, (5, 6)), (3, (2, 6, 2, 3, 2))])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_matches_torch(groups, shape, affine):
    ref, mine = _pair(nn.GroupNorm, normlab.GroupNorm, groups, 6, affine=affine)
    _conformance(ref, mine, shape)


@pytest.mark.parametrize("normalized_shape,shape", [(7, (4, 5, 7)), ((5, 7), (4, 5, 7)), ([3, 4, 5], (2, 3, 4, 5)),
                                                    (6, (10, 6))])
@pytest.mark.parametrize("kw", [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}])
def test_layernorm_matches_torch(normalized_shape, shape, kw):
    ref, mine = _pair(nn.LayerNorm, normlab.LayerNorm, normalized_shape, **kw)
    _conformance(ref, mine, shape)


@pytest.mark.parametrize("torch_cls,nl_cls,args,shape", [
    (nn.BatchNorm2d, normlab.BatchNorm2d, (3,), (4, 3, 5, 6)),
    (nn.InstanceNorm2d, normlab.InstanceNorm2d, (3,), (4, 3, 5, 6)),
    (nn.GroupNorm, normlab.GroupNorm, (3, 6), (4, 6, 5, 5))], ids=["bn", "in", "gn"])
def test_bias_false_matches_torch(torch_cls, nl_cls, args, shape):
    """torch 2.13 takes bias=False (a scale without a shift) for BN, IN and GN too."""
    ref, mine = _pair(torch_cls, nl_cls, *args, affine=True, bias=False)
    assert mine.bias is None and list(mine.state_dict()) == list(ref.state_dict())
    _conformance(ref, mine, shape)


# ------------------------------------------------------------------------------------------- state_dict round trips
@pytest.mark.parametrize("torch_cls,nl_cls,args,kw,shape", [
    (nn.BatchNorm1d, normlab.BatchNorm1d, (3,), {}, (8, 3)),
    (nn.BatchNorm2d, normlab.BatchNorm2d, (3,), {"momentum": None}, (4, 3, 5, 6)),
    (nn.BatchNorm3d, normlab.BatchNorm3d, (3,), {"affine": False}, (2, 3, 3, 4, 5)),
    (nn.InstanceNorm2d, normlab.InstanceNorm2d, (3,), {"affine": True, "track_running_stats": True}, (4, 3, 5, 6)),
    (nn.GroupNorm, normlab.GroupNorm, (3, 6), {}, (4, 6, 5, 5)),
    (nn.LayerNorm, normlab.LayerNorm, ((5, 6),), {}, (4, 3, 5, 6))], ids=lambda v: getattr(v, "__name__", None))
def test_checkpoint_loads_into_normlab_and_back(torch_cls, nl_cls, args, kw, shape):
    """Train a torch layer, load its state_dict into a fresh normlab layer (strict), train that, load it back."""
    torch.manual_seed(0)
    ref = torch_cls(*args, **kw).double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1) if list(ref.parameters()) else None
    for _ in range(3):
        y = ref(torch.randn(shape, dtype=torch.float64) * 2 + 1)
        if opt:
            ((y - 1) ** 2).mean().backward(), opt.step(), opt.zero_grad()
    mine = nl_cls(*args, **kw).double()
    assert mine.load_state_dict(ref.state_dict(), strict=True).missing_keys == []
    _assert_state_equal(ref, mine)
    x = torch.randn(shape, dtype=torch.float64)
    ref.eval(), mine.eval()
    torch.testing.assert_close(mine(x), ref(x), **TOL)
    mine.train()
    mine(torch.randn(shape, dtype=torch.float64))
    back = torch_cls(*args, **kw).double()
    back.load_state_dict(mine.state_dict(), strict=True)
    _assert_state_equal(back, mine)


def test_old_checkpoint_without_num_batches_tracked_loads():
    """A pre-0.4.1 BN checkpoint (metadata version 1, no num_batches_tracked) loads as in torch."""
    ref = nn.BatchNorm2d(3)
    sd = ref.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    mine, twin = normlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    for m in (mine, twin):
        m.num_batches_tracked.fill_(5)
        m.load_state_dict(sd, strict=True)
    assert int(mine.num_batches_tracked) == int(twin.num_batches_tracked) == 5   # torch keeps the module's own count


def test_module_repr_matches_torch():
    pairs = [(nn.BatchNorm2d(4, momentum=None), normlab.BatchNorm2d(4, momentum=None)),
             (nn.InstanceNorm1d(4, affine=True), normlab.InstanceNorm1d(4, affine=True)),
             (nn.GroupNorm(2, 4, eps=1e-3), normlab.GroupNorm(2, 4, eps=1e-3)),
             (nn.LayerNorm([4, 5], bias=False), normlab.LayerNorm([4, 5], bias=False))]
    for ref, mine in pairs:
        assert repr(mine) == repr(ref)


# ------------------------------------------------------------------------------------------------------ channels_last
@pytest.mark.parametrize("make,shape,fmt", [
    (lambda: normlab.BatchNorm2d(3), (4, 3, 5, 6), torch.channels_last),
    (lambda: normlab.BatchNorm3d(3), (2, 3, 3, 4, 5), torch.channels_last_3d),
    (lambda: normlab.InstanceNorm2d(3, affine=True, track_running_stats=True), (4, 3, 5, 6), torch.channels_last),
    (lambda: normlab.GroupNorm(3, 6), (4, 6, 5, 5), torch.channels_last),
    (lambda: normlab.LayerNorm([6, 5, 5]), (4, 6, 5, 5), torch.channels_last)], ids=["bn2d", "bn3d", "in", "gn", "ln"])
def test_channels_last_equals_contiguous(make, shape, fmt):
    torch.manual_seed(0)
    a, b = make().double(), make().double()
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn(p.shape))
    b.load_state_dict(a.state_dict())
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    x1, x2 = x.clone().requires_grad_(), x.contiguous(memory_format=fmt).requires_grad_()
    assert not x2.is_contiguous()
    g = torch.randn(shape, dtype=torch.float64)
    y1, y2 = a(x1), b(x2)
    torch.testing.assert_close(y2, y1, **TOL)
    y1.backward(g), y2.backward(g.contiguous(memory_format=fmt))
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    for p1, p2 in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, **TOL)
    _assert_state_equal(a, b)
    a.eval(), b.eval()
    torch.testing.assert_close(b(x2), a(x1), **TOL)


def test_channels_last_matches_torch():
    ref, mine = _pair(nn.BatchNorm2d, normlab.BatchNorm2d, 3)
    gen = torch.Generator().manual_seed(2)
    _step(ref, mine, (4, 3, 5, 6), gen, memory_format=torch.channels_last)
    _assert_state_equal(ref, mine)


# ----------------------------------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("make,shape", [
    (lambda: normlab.BatchNorm2d(4), (8, 4, 6, 6)),
    (lambda: normlab.BatchNorm1d(4), (64, 4)),
    (lambda: normlab.GroupNorm(2, 4), (8, 4, 6, 6)),
    (lambda: normlab.LayerNorm(36), (8, 4, 36)),
    (lambda: normlab.InstanceNorm2d(4, affine=True, track_running_stats=True), (8, 4, 6, 6))],
    ids=["bn2d", "bn1d", "gn", "ln", "in"])
def test_half_inputs_keep_float32_statistics(make, shape, dtype, tol):
    """float16/bfloat16 in: output and input grad in that dtype, statistics and running buffers in float32, close to
    float32 arithmetic on the same (rounded) input."""
    torch.manual_seed(0)
    half, full = make(), make()
    x = (torch.randn(shape) * 3 + 50).to(dtype)          # offset 50: float16 E[x^2] - E[x]^2 would lose digits
    xh, xf = x.clone().requires_grad_(), x.float().requires_grad_()
    yh, yf = half(xh), full(xf)
    assert yh.dtype == dtype
    torch.testing.assert_close(yh.float(), yf, rtol=tol, atol=tol)
    g = torch.randn(shape)
    yh.backward(g.to(dtype)), yf.backward(g)
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), xf.grad, rtol=tol, atol=tol * 5)
    for ph, pf in zip(half.parameters(), full.parameters()):
        assert ph.grad.dtype == torch.float32
        torch.testing.assert_close(ph.grad, pf.grad, rtol=tol, atol=tol * shape[0] * 5)
    for (name, bh), (_, bf) in zip(half.named_buffers(), full.named_buffers()):
        assert bh.dtype == bf.dtype
        torch.testing.assert_close(bh, bf, rtol=1e-5, atol=1e-5, msg=name)   # float32 statistics of the same values
    if hasattr(half, "running_mean") and half.running_mean is not None:
        half.eval(), full.eval()
        assert half(x).dtype == dtype
        torch.testing.assert_close(half(x).float(), full(x.float()), rtol=tol, atol=tol)


def test_half_matches_torch_batchnorm():
    """Where torch.nn supports half BN on this device, normlab agrees with it."""
    torch.manual_seed(0)
    x = (torch.randn(8, 4, 5, 5) * 2 + 3).to(torch.bfloat16)
    ref, mine = nn.BatchNorm2d(4), normlab.BatchNorm2d(4)
    y1, y2 = ref(x), mine(x)
    assert y1.dtype == y2.dtype == torch.bfloat16
    torch.testing.assert_close(y2.float(), y1.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mine.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- gradcheck through layers
@pytest.mark.parametrize("make,shape", [
    (lambda: normlab.BatchNorm1d(3), (5, 3)),
    (lambda: normlab.BatchNorm1d(2, affine=False), (3, 2, 2)),
    (lambda: normlab.BatchNorm2d(2), (2, 2, 2, 3)),
    (lambda: normlab.BatchNorm3d(2), (2, 2, 2, 1, 2)),
    (lambda: normlab.GroupNorm(2, 4), (2, 4, 3)),
    (lambda: normlab.LayerNorm([2, 3]), (2, 2, 3)),
    (lambda: normlab.InstanceNorm1d(2, affine=True), (2, 2, 4)),
    (lambda: normlab.InstanceNorm2d(2), (2, 2, 2)),        # unbatched
    (lambda: normlab.InstanceNorm3d(2, affine=True), (1, 2, 2, 2, 2))],
    ids=["bn1d", "bn1d-3d-noaffine", "bn2d", "bn3d", "gn", "ln", "in1d", "in2d-unbatched", "in3d"])
def test_layer_gradcheck_and_gradgradcheck(make, shape):
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) + 1)
    names = [n for n, _ in layer.named_parameters()]
    x = (torch.randn(shape, dtype=torch.float64) * 2).requires_grad_()

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    inputs = (x, *(p.detach().clone().requires_grad_() for p in layer.parameters()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_inplace_relu_after_norm(affine):
    """The backward reuses the forward's xhat unless it was changed in place since (an in-place ReLU straight on an
    affine-free norm); then it rebuilds xhat from x, and the gradients still equal torch.nn's."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.BatchNorm2d(3, affine=affine), nn.ReLU(inplace=True)).double()
    mine = nn.Sequential(normlab.BatchNorm2d(3, affine=affine), nn.ReLU(inplace=True)).double()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    dx_ref, = torch.autograd.grad(ref(x), x, g)
    dx, = torch.autograd.grad(mine(x), x, g)
    torch.testing.assert_close(dx, dx_ref, **TOL)
