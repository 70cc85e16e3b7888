"""Loss landscapes (landscape2d) against closed forms on a quadratic and against brute forces that write the point
into a deep copy: torch BN with torch.optim.swa_utils.update_bn for the recomputed running statistics, eval mode for
the frozen ones, training mode for batch statistics; filter normalization per filter; the checkpoint line; plots."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import landscape2d as L
from normlab.report.landscape_plots import contour_plot, line_plot

F = nn.functional
D64 = torch.float64


class Quadratic(nn.Module):
    def __init__(self, H: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("H", H)
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return 0.5 * self.w @ self.H @ self.w


def ident(out, y):
    return out


def bn_net(bn_cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), bn_cls(6), nn.ReLU(), nn.Linear(6, 6, bias=False), bn_cls(6), nn.Tanh(),
                          nn.Linear(6, 3)).double()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, dtype=D64) * 2 + 1)   # running statistics that are not the batch's
    return model


def torch_copy(model: nn.Module) -> nn.Module:
    """The same network with torch.nn.BatchNorm1d (update_bn only knows torch's BN), weights and buffers copied."""
    ref = bn_net(nn.BatchNorm1d)
    ref.load_state_dict(model.state_dict())
    return ref


def loader(n_batches: int = 3, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=g, dtype=D64), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n_batches)]


def brute(model, point: dict, data, bn: str, bn_data=None, buffers: dict | None = None) -> float:
    m = torch_copy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(point[n])
        for n, b in (buffers or {}).items():
            dict(m.named_buffers())[n].copy_(b)
        if bn == "recompute":
            torch.optim.swa_utils.update_bn([bx for bx, _ in (bn_data or data)], m)
        m.train(bn == "batch")
        total = sum(float(F.cross_entropy(m(bx), by)) * len(by) for bx, by in data)
    return total / sum(len(by) for _, by in data)


def test_filter_normalization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), normlab.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(20, 4))
    d = L.random_direction(model, seed=3)
    w = dict(model.named_parameters())
    for name in ("0.weight", "4.weight"):
        assert torch.allclose(d.params[name].flatten(1).norm(dim=1), w[name].detach().flatten(1).norm(dim=1),
                              rtol=1e-6)   # every filter (output channel / neuron) scaled to its weight's norm
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):
        assert torch.equal(d.params[name], torch.zeros_like(w[name]))
    c = L.random_direction(model, seed=3, one_d="copy")
    assert torch.equal(c.params["1.weight"], w["1.weight"].detach()) and torch.equal(c.params["0.weight"],
                                                                                     d.params["0.weight"])
    assert torch.equal(L.random_direction(model, seed=3).params["0.weight"], d.params["0.weight"])
    assert not torch.equal(L.random_direction(model, seed=4).params["0.weight"], d.params["0.weight"])
    only = L.random_direction(model, seed=3, params=["4.weight"])
    assert set(only.params) == {"4.weight"}


def test_quadratic_closed_forms():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=D64)
    H, w = A @ A.T + torch.eye(5, dtype=D64), torch.randn(5, generator=g, dtype=D64)
    model = Quadratic(H, w)
    d1, d2 = torch.randn(5, generator=g, dtype=D64), torch.randn(5, generator=g, dtype=D64)
    a, b = [-1.0, 0.0, 0.5], [-0.3, 0.2]
    r = L.surface(model, ident, torch.zeros(1), None, [L.Direction({"w": d1}), L.Direction({"w": d2})], [a, b])
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            p = w + ai * d1 + bj * d2
            assert r["loss"][i][j] == pytest.approx(float(0.5 * p @ H @ p), rel=1e-12)
    assert r["dims"] == 2 and r["finite"] and r["direction_norms"][0] == pytest.approx(float(d1.norm()))
    # along -g (raw): L(w - a g) = L(w) - a g.g + a^2/2 g.H.g with g = H w
    gd = L.gradient_direction(model, ident, torch.zeros(1), None, normalize="none")
    gv = H @ w
    assert torch.allclose(gd.params["w"], -gv, rtol=1e-12)
    s = [0.0, 0.01, 0.1]
    line = L.surface(model, ident, torch.zeros(1), None, [gd], [s])
    L0 = float(0.5 * w @ H @ w)
    assert line["loss"] == pytest.approx([L0 - t * float(gv @ gv) + t * t / 2 * float(gv @ H @ gv) for t in s],
                                         rel=1e-12)
    unit = L.gradient_direction(model, ident, torch.zeros(1), None)
    assert unit.norm() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("bn_cls", [normlab.BatchNorm1d, nn.BatchNorm1d])
@pytest.mark.parametrize("bn", ["batch", "frozen", "recompute"])
def test_bn_modes_against_brute_force(bn_cls, bn):
    model = bn_net(bn_cls)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = loader()
    d1, d2 = L.random_direction(model, seed=0), L.random_direction(model, seed=1)
    a, b = [-0.5, 0.0, 0.4], [0.0, 0.3]
    r = L.surface(model, F.cross_entropy, data, None, [d1, d2], [a, b], bn=bn)
    w = {n: p.detach() for n, p in model.named_parameters()}
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            point = {n: w[n] + ai * d1.params[n] + bj * d2.params[n] for n in w}
            assert r["loss"][i][j] == pytest.approx(brute(model, point, data, bn), rel=1e-9), (ai, bj)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k   # weights and running statistics untouched
    assert model.training and all(m.momentum == 0.1 for m in (model[1], model[4]))
    # separate statistics data for "recompute"
    if bn == "recompute":
        stats = loader(2, 16, seed=9)
        one = L.surface(model, F.cross_entropy, data[0][0], data[0][1], [d1], [[0.4]], bn=bn, bn_data=stats)
        point = {n: w[n] + 0.4 * d1.params[n] for n in w}
        assert one["loss"][0] == pytest.approx(brute(model, point, [data[0]], bn, bn_data=stats), rel=1e-9)


def test_modes_differ_where_statistics_go_stale():
    """Far from w the frozen statistics belong to another network: frozen and recompute part ways; at a = 0
    recompute differs from frozen too (the model's running statistics are not the data's)."""
    model = bn_net(normlab.BatchNorm1d)
    data = loader()
    d = L.random_direction(model, seed=0)
    out = {bn: L.surface(model, F.cross_entropy, data, None, [d], [[0.0, 1.0]], bn=bn)["loss"] for bn in L.BN_MODES}
    assert abs(out["frozen"][1] - out["recompute"][1]) > 1e-3
    assert out["batch"][0] != pytest.approx(out["frozen"][0], rel=1e-6)


def test_checkpoint_line():
    a_model = bn_net(normlab.BatchNorm1d, seed=0)
    b_model = copy.deepcopy(a_model)
    opt = torch.optim.SGD(b_model.parameters(), lr=0.3)
    for bx, by in loader(4, 8, seed=5):
        opt.zero_grad()
        F.cross_entropy(b_model(bx), by).backward()
        opt.step()
    data = loader()
    r = L.interpolate(a_model, b_model.state_dict(), F.cross_entropy, data, coords=[0.0, 0.5, 1.0], bn="frozen")
    wa, wb = dict(a_model.named_parameters()), dict(b_model.named_parameters())
    ba, bb = dict(a_model.named_buffers()), dict(b_model.named_buffers())
    for t, got in zip([0.0, 0.5, 1.0], r["loss"]):
        point = {n: (1 - t) * wa[n].detach() + t * wb[n].detach() for n in wa}
        bufs = {n: (1 - t) * ba[n] + t * bb[n] for n in ba if ba[n].is_floating_point()}
        assert got == pytest.approx(brute(a_model, point, data, "frozen", buffers=bufs), rel=1e-9)
    rec = L.interpolate(a_model, b_model, F.cross_entropy, data, coords=[1.0])
    assert rec["bn"] == "recompute" and rec["kinds"] == ["checkpoints"]
    assert rec["loss"][0] == pytest.approx(brute(b_model, dict(wb), data, "recompute"), rel=1e-9)


def test_bad_input_and_plots(tmp_path):
    model = bn_net(normlab.BatchNorm1d)
    data = loader(1)
    d = L.random_direction(model)
    with pytest.raises(ValueError, match="bn:"):
        L.surface(model, F.cross_entropy, data, None, [d], [[0.0]], bn="eval")
    with pytest.raises(ValueError, match="directions"):
        L.surface(model, F.cross_entropy, data, None, [d, d, d], [[0.0]] * 3)
    with pytest.raises(ValueError, match="coords"):
        L.surface(model, F.cross_entropy, data, None, [d], [[0.0], [1.0]])
    with pytest.raises(ValueError, match="coords"):
        L.surface(model, F.cross_entropy, data, None, [d], [[float("nan")]])
    with pytest.raises(ValueError, match="one_d"):
        L.random_direction(model, one_d="skip")
    with pytest.raises(ValueError, match="normalize"):
        L.gradient_direction(model, F.cross_entropy, data, normalize="l2")
    with pytest.raises(ValueError, match="other"):
        L.checkpoint_direction(model, {"0.weight": torch.zeros(6, 3)})
    one = L.surface(model, F.cross_entropy, data, None, [d], [[-1.0, 0.0, 1.0]])
    two = L.surface(model, F.cross_entropy, data, None, [d, L.random_direction(model, 1)], [[-1.0, 0.0, 1.0]] * 2)
    paths = line_plot([("random", one)], tmp_path, "line") | {"c" + k: v for k, v in
                                                             contour_plot(two, tmp_path, "contour").items()}
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths.values())
    with pytest.raises(ValueError, match="2-D"):
        contour_plot(one, tmp_path, "bad")
