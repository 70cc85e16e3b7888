"""SyncBatchNorm: single-process fallback, and 2 real gloo processes on loopback vs one process on the whole batch."""
from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normlab
from normlab.distributed import free_port
from normlab.layers import BatchNorm1d, BatchNorm2d, SyncBatchNorm


# ------------------------------------------------------------------------------------------- single process: fallback
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 3, 2)])
def test_fallback_equals_batchnorm(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    sync, ref = SyncBatchNorm(3, momentum=0.2).double(), BatchNorm1d(3, momentum=0.2).double()
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            m.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    ref._ranks = (len(shape),)    # the reference normalizes the same axes for any rank
    c = torch.randn(shape, dtype=torch.float64)
    y, y_ref = sync(x), ref(x2)
    (c * y).sum().backward()
    (c * y_ref).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(sync.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=0, atol=1e-12)
    sync.eval(), ref.eval()
    torch.testing.assert_close(sync(x), ref(x2), rtol=0, atol=1e-12)


def test_fallback_gradcheck_and_state_dict():
    torch.manual_seed(1)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    m = SyncBatchNorm(2).double()
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: m(t), (x,))
    assert list(m.state_dict()) == list(nn.SyncBatchNorm(2).state_dict())
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        m(torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_features"):
        m(torch.randn(4, 3, dtype=torch.float64))


def test_convert_twins_and_convert_sync():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4),
                          BatchNorm1d(4), nn.SyncBatchNorm(4))
    model[1].running_mean.uniform_(); model[1].weight.requires_grad_(False)
    synced = normlab.convert_sync_batchnorm(model)
    assert [type(m) for m in synced if isinstance(m, SyncBatchNorm)] == [SyncBatchNorm] * 3
    assert isinstance(model[1], nn.BatchNorm2d)                    # the original is untouched (copy)
    torch.testing.assert_close(synced[1].running_mean, model[1].running_mean)
    assert not synced[1].weight.requires_grad and synced[5].weight.requires_grad
    x = torch.randn(4, 2, 4, 4)
    torch.testing.assert_close(synced(x), model(x), rtol=1e-5, atol=1e-5)
    back = normlab.convert(normlab.convert(nn.Sequential(nn.SyncBatchNorm(4))), to="torch")
    assert type(back[0]) is nn.SyncBatchNorm
    assert type(normlab.convert(nn.Sequential(nn.SyncBatchNorm(4)))[0]) is SyncBatchNorm


# -------------------------------------------------------------------------------------------- two gloo processes
def _data(sizes, tail, dtype, c=3):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(sum(sizes), c, *tail, generator=gen, dtype=dtype) * 3 + 5
    cw = torch.randn(x.shape, generator=gen, dtype=dtype)
    w, b = torch.randn(c, generator=gen, dtype=dtype), torch.randn(c, generator=gen, dtype=dtype)
    return x, cw, w, b


def _loss(y, cw):
    return (cw * y).sum() + 0.5 * (cw * y ** 2).sum()    # nonlinear in y: g depends on x too


def _make(cls, c, w, b, dtype):
    m = cls(c, momentum=0.3).to(dtype)
    with torch.no_grad():
        m.weight.copy_(w), m.bias.copy_(b)
    return m


def _check_against_one_process(rank, sizes, tail, dtype, tol, double_backward):
    """SyncBN on this rank's slice vs normlab BN on the concatenated batch: 2 training steps, then eval."""
    x, cw, w, b = _data(sizes, tail, dtype)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    ref = _make(BatchNorm1d if len(tail) < 2 else BatchNorm2d, 3, w, b, dtype)
    sync = _make(SyncBatchNorm, 3, w, b, dtype)
    close = dict(rtol=tol, atol=tol)
    for step in range(2):
        xs = (x + step)[lo:hi].clone().requires_grad_()
        xr = (x + step).clone().requires_grad_()
        ys, yr = sync(xs), ref(xr)
        torch.testing.assert_close(ys, yr[lo:hi], **close)
        (gs,) = torch.autograd.grad(_loss(ys, cw[lo:hi]), xs, create_graph=double_backward)
        (gr,) = torch.autograd.grad(_loss(yr, cw), xr, create_graph=double_backward)
        torch.testing.assert_close(gs, gr[lo:hi], **close)
        if double_backward:      # grad of the squared input-gradient norm, w.r.t. x and gamma
            hs = torch.autograd.grad((gs ** 2).sum(), [xs, sync.weight])
            hr = torch.autograd.grad((gr ** 2).sum(), [xr, ref.weight])
            torch.testing.assert_close(hs[0], hr[0][lo:hi], **close)
            hw = hs[1].clone()
            dist.all_reduce(hw)
            torch.testing.assert_close(hw, hr[1], **close)
    # parameter gradients: each rank holds its share; their sum is the gradient of the global batch
    sync.zero_grad(), ref.zero_grad()
    _loss(sync(x[lo:hi]), cw[lo:hi]).backward()
    _loss(ref(x), cw).backward()
    for p, q in ((sync.weight, ref.weight), (sync.bias, ref.bias)):
        g = p.grad.clone()
        dist.all_reduce(g)
        torch.testing.assert_close(g, q.grad, **close)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, **close)
    torch.testing.assert_close(sync.running_var, ref.running_var, **close)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    sync.eval(), ref.eval()    # eval: no collective, running statistics
    torch.testing.assert_close(sync(x[lo:hi]), ref(x)[lo:hi], **close)


def _worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        _check_against_one_process(rank, (3, 5), (), torch.float64, 1e-12, double_backward=True)
        _check_against_one_process(rank, (3, 5), (4, 3), torch.float32, 1e-6, double_backward=False)
        _check_against_one_process(rank, (0, 4), (2,), torch.float64, 1e-12, double_backward=True)
        # convert_sync_batchnorm on a torch model: same forward and input gradient as one process
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        synced = normlab.convert_sync_batchnorm(model)
        x = torch.randn(6, 2, 5, 5)
        lo, hi = (0, 2) if rank == 0 else (2, 6)
        torch.testing.assert_close(synced(x[lo:hi]), model(x)[lo:hi], rtol=1e-5, atol=1e-5)
        # a large offset keeps its digits (no float32 sum of squares): 1e4 + N(0, 1), m = 3 + 5
        xb = 1e4 + torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
        big = SyncBatchNorm(2, momentum=1.0)
        big(xb[:3] if rank == 0 else xb[3:])
        torch.testing.assert_close(big.running_var.double(), xb.double().var(0), rtol=1e-4, atol=0)
        # mismatched channel counts: every rank raises, nobody hangs
        bad = SyncBatchNorm(3 + rank)
        with pytest.raises(ValueError, match="num_features differs"):
            bad(torch.randn(4, 3 + rank))
        # too few values in the whole group
        with pytest.raises(ValueError, match="more than 1 value"):
            SyncBatchNorm(2)(torch.randn(rank, 2))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_whole_batch():
    world, limit = 2, 150.0
    ctx = mp.start_processes(_worker, args=(world, free_port()), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=1.0):     # raises ProcessRaisedException with the worker's traceback
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"SyncBatchNorm workers did not finish within {limit} s")
