"""The instruments as train hooks: they act on their steps only, and a run with every hook attached ends bitwise
identical to a run without (model, buffers, grads, optimizer state, global RNG and a layer's own generator)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import (HOOKS, BoundHook, DistributionsHook, HessianHook, ICSHook, LandscapeHook,
                                 SpectrumHook, build_hook)
from normlab.layers.variants import NoisyBatchNorm1d

F = nn.functional


def model_with_noise():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10, bias=False), normlab.BatchNorm1d(10), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(10, 10, bias=False),
                         NoisyBatchNorm1d(10, generator=torch.Generator().manual_seed(5)), nn.Tanh(),
                         nn.Linear(10, 10, bias=False), NoisyBatchNorm1d(10), nn.Sigmoid(), nn.Linear(10, 3))


def run(hooks, steps=5):
    """The train() protocol written out: hooks after backward, before step."""
    model = model_with_noise()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(steps, 16, 6, generator=g), torch.randint(0, 3, (steps, 16), generator=g)
    rows = []
    torch.manual_seed(123)
    for t in range(steps):
        loss = F.cross_entropy(model(xs[t]), ys[t])
        opt.zero_grad()
        loss.backward()
        ctx = SimpleNamespace(step=t, model=model, x=xs[t], y=ys[t], loss_fn=F.cross_entropy, optimizer=opt,
                              lr=0.1, loss=float(loss.detach()))
        for h in hooks:
            out = h(ctx)
            out = [] if out is None else [out] if isinstance(out, dict) else out
            rows += [{"step": t, "hook": h.name, **r} for r in out]
        opt.step()
    return model, opt, rows, torch.rand(3)


def test_hooks_leave_training_bitwise_unchanged():
    fixed = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(2)]
    hooks = [ICSHook(every=2), LandscapeHook(points=3, steps=[1, 3]), HessianHook(iters=3, trace_samples=2, every=4),
             DistributionsHook(layers=[0, "5"], every=2, percentiles=(1, 20, 80, 99)), BoundHook(steps=[4]),
             SpectrumHook(k=2, max_iter=8, density_probes=1, density_steps=4, steps=[3], data=fixed)]
    m0, o0, rows0, r0 = run([])
    m1, o1, rows1, r1 = run(hooks)
    assert rows0 == [] and torch.equal(r0, r1)   # the global RNG stream is where it would be
    for (k, a), b in zip(m0.state_dict().items(), m1.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(p.grad, q.grad)
    s0, s1 = o0.state_dict()["state"], o1.state_dict()["state"]
    assert all(torch.equal(s0[k]["momentum_buffer"], s1[k]["momentum_buffer"]) for k in s0)
    by = {}
    for r in rows1:
        by.setdefault(r["hook"], set()).add(r["step"])
    assert by == {"ics": {0, 2, 4}, "landscape": {1, 3}, "hessian": {0, 4}, "distributions": {0, 2, 4},
                  "bound": {4}, "spectrum": {3}}
    (sp,) = [r for r in rows1 if r["hook"] == "spectrum"]
    assert len(sp["top"]) == 2 and len(sp["bottom"]) == 2 and sp["batches"] == 2 and sp["iterations"] <= 8
    dist = [r for r in rows1 if r["hook"] == "distributions" and r["layer"] == "0"]
    assert [r["prev_step"] for r in dist] == [None, 0, 2] and dist[1]["dmean"] > 0
    assert set(dist[0]["percentiles"]) == {"1", "20", "80", "99"}
    (b,) = [r for r in rows1 if r["hook"] == "bound"]
    assert b["layer"] == "1" and b["identity_holds"]   # noisy BN layers are not standard BN: skipped
    land = [r for r in rows1 if r["hook"] == "landscape"]
    assert land[0]["multipliers"] == pytest.approx([0.05, 0.225, 0.4]) and land[0]["lr"] == 0.1
    assert "trace" in [r for r in rows1 if r["hook"] == "hessian"][0]
    json.dumps(rows1)   # rows are plain JSON


def test_ics_hook_recompute_sees_same_noise():
    """With noisy layers, recompute=True makes G and G' share the noise draw: layer 0's shift is exactly 0 and
    the measurement is repeatable."""
    model = model_with_noise()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    ctx = SimpleNamespace(step=0, model=model, x=x, y=y, loss_fn=F.cross_entropy, optimizer=opt, lr=0.1)
    a = ICSHook(recompute=True)(ctx)
    b = ICSHook(recompute=True)(ctx)
    assert [r["l2"] for r in a] == [r["l2"] for r in b] and a[0]["l2"] == 0.0


def test_schedule_and_registry():
    h = build_hook("ics", every=3)
    assert [t for t in range(10) if h.due(t)] == [0, 3, 6, 9]
    h = build_hook("bound", steps=[2, 5])
    assert [t for t in range(10) if h.due(t)] == [2, 5]
    assert set(HOOKS) == {"ics", "landscape", "hessian", "distributions", "bound", "spectrum"}
    with pytest.raises(ValueError, match="unknown instrument 'icss'"):
        build_hook("icss")
    with pytest.raises(ValueError, match="every"):
        ICSHook(every=0)
    with pytest.raises(ValueError, match="bn_mode"):
        LandscapeHook(bn_mode="frozen")
    with pytest.raises(ValueError, match="span"):
        LandscapeHook(span=(-1.0, 2.0))
    with pytest.raises(ValueError, match="multipliers"):
        LandscapeHook(multipliers=[1.0, 0.0])
    with pytest.raises(ValueError, match="site"):
        DistributionsHook(site="pre")


def tiny_mnist(root):
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 * k + 3: 2 * k + 6, 4:24] = 200
        return x, y
    (a, b), (c, d) = make(200), make(50)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "mnist.npz", x_train=a, y_train=b, x_test=c, y_test=d)
    return root


def test_with_normlab_train(tmp_path):
    from normlab.train import TrainConfig, train
    root = tiny_mnist(tmp_path / "data")
    cfg = TrainConfig(model="mlp", norm="bn", dataset="mnist", data_root=str(root), steps=4, batch_size=20, lr=0.5,
                      momentum=0.9, eval_every=0, eval_samples=0, progress=False, checkpoint_every=0,
                      model_kw={"hidden": [16, 16]})
    hooks = [ICSHook(every=2), LandscapeHook(points=2, steps=[1]), BoundHook(steps=[3])]
    summary = train(cfg, tmp_path / "run", hooks=hooks)
    assert summary["status"] == "completed"
    rows = [json.loads(s) for s in (tmp_path / "run" / "diagnostics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["hook"]) for r in rows] == [(0, "ics")] * 3 + [(1, "landscape")] + [(2, "ics")] * 3 \
        + [(3, "bound")] * 2
    assert all(r["finite"] for r in rows)
