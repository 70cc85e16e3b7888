"""ICS (Santurkar Definition 2.1) against a brute force: deepcopy model + optimizer, step only the earlier
parameters with the real optimizer, recompute the gradient of W_i."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import ics, simulate_step, weight_layers

F = nn.functional


def deep_linear(depth: int = 6, d: int = 10) -> nn.Module:
    return nn.Sequential(*[nn.Linear(d, d, bias=False) for _ in range(depth)])


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16, bias=False), normlab.BatchNorm1d(16), nn.Sigmoid(),
                         nn.Linear(16, 16, bias=False), normlab.BatchNorm1d(16), nn.ReLU(inplace=True),
                         nn.Linear(16, 5))


def bn_convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), normlab.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), normlab.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def setup(kind: str, opt_kind: str, steps: int = 3):
    torch.manual_seed(0)
    if kind == "linear":
        model, x = deep_linear().double(), torch.randn(40, 10, dtype=torch.float64)
        y = x @ torch.randn(10, 10, dtype=torch.float64)
        loss_fn = F.mse_loss
    elif kind == "mlp":
        model, x, y = bn_mlp().double(), torch.randn(32, 12, dtype=torch.float64), torch.randint(0, 5, (32,))
        loss_fn = F.cross_entropy
    else:
        model, x, y = bn_convnet().double(), torch.randn(8, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
        loss_fn = F.cross_entropy
    if opt_kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    elif opt_kind == "sgd-plain":
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
    elif opt_kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    for _ in range(steps):   # a few real steps so momentum / Adam moments are non-trivial
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    loss_fn(model(x), y).backward()   # the hook moment: .grad filled, step not taken
    return model, opt, loss_fn, x, y


def brute_force(model, opt, loss_fn, x, y, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    name = weight_layers(model)[i][0] + ".weight"
    names = [n for n, _ in model.named_parameters()]
    k = names.index(name)
    G = dict(model.named_parameters())[name].grad.clone()
    m2, o2 = copy.deepcopy((model, opt))   # one deepcopy: the optimizer state stays keyed by the copied params
    for j, (p, q) in enumerate(zip(model.parameters(), m2.parameters())):
        # deepcopy drops .grad; layers i..k get none, so optimizer.step() skips them and they keep their weights
        q.grad = p.grad.clone() if j < k else None
    o2.step()
    o2.zero_grad()
    loss_fn(m2(x), y).backward()
    return G, dict(m2.named_parameters())[name].grad.clone()


def snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            copy.deepcopy(opt.state_dict()))


def assert_same(a, b):
    sd_a, g_a, o_a = a
    sd_b, g_b, o_b = b
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    for u, v in zip(g_a, g_b):
        assert (u is None and v is None) or torch.equal(u, v)
    for pid, st in o_a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o_b["state"][pid][k]))


@pytest.mark.parametrize("kind,opt_kind", [("linear", "sgd"), ("linear", "adam"), ("mlp", "sgd"), ("mlp", "adam"),
                                           ("mlp", "adamw"), ("conv", "sgd-plain")])
def test_ics_matches_brute_force(kind, opt_kind):
    model, opt, loss_fn, x, y = setup(kind, opt_kind)
    before = snapshot(model, opt)
    rows = ics(model, loss_fn, x, y, opt)
    assert_same(before, snapshot(model, opt))   # model, BN buffers, .grad, optimizer state untouched
    assert [r["layer"] for r in rows] == [n for n, _ in weight_layers(model)]
    for i, r in enumerate(rows):
        G, Gp = brute_force(model, opt, loss_fn, x, y, i)
        l2 = float((G - Gp).norm())
        cos = float((G * Gp).sum() / (G.norm() * Gp.norm()))
        assert r["l2"] == pytest.approx(l2, rel=1e-9, abs=1e-13)
        assert r["cos"] == pytest.approx(cos, rel=1e-9)
        assert r["g_norm"] == pytest.approx(float(G.norm()), rel=1e-12)
        assert r["finite"] is True
    assert rows[0]["l2"] == 0.0 and rows[0]["cos"] == 1.0 and rows[0]["n_earlier"] == 0
    assert all(r["l2"] > 0 for r in rows[1:])   # the measurement can see a shift


def test_recompute_equals_grad_and_layer_subset():
    model, opt, loss_fn, x, y = setup("mlp", "sgd")
    a = ics(model, loss_fn, x, y, opt, layers=[1, "6"])
    b = ics(model, loss_fn, x, y, opt, layers=["3", -1], recompute=True)
    assert [r["layer"] for r in a] == ["3", "6"] == [r["layer"] for r in b]
    assert [r["index"] for r in a] == [1, 2]
    for r, s in zip(a, b):
        assert r["l2"] == pytest.approx(s["l2"], rel=1e-9)
    # without .grad it recomputes by itself
    model.zero_grad(set_to_none=True)
    c = ics(model, loss_fn, x, y, opt, layers=[1, 2])
    assert c[1]["l2"] == pytest.approx(a[1]["l2"], rel=1e-9)
    with pytest.raises(ValueError, match="recompute=False"):
        ics(model, loss_fn, x, y, opt, recompute=False)


def test_earlier_set_includes_bn_gamma():
    """Layer 1's earlier parameters are W_0 and BN 1's gamma and beta (3 tensors); layer 2's add W_1 and BN 4."""
    model, opt, loss_fn, x, y = setup("mlp", "sgd")
    rows = ics(model, loss_fn, x, y, opt)
    assert [r["n_earlier"] for r in rows] == [0, 3, 6]


def test_simulate_step_matches_real_step():
    model, opt, loss_fn, x, y = setup("mlp", "adam")
    grads = {p: p.grad for p in model.parameters()}
    new = simulate_step(opt, grads)
    opt.step()
    for p in model.parameters():
        assert torch.equal(new[p], p.detach())


def test_bad_input():
    model, opt, loss_fn, x, y = setup("mlp", "sgd", steps=0)
    with pytest.raises(ValueError, match="unknown layer name 'nope'"):
        ics(model, loss_fn, x, y, opt, layers="nope")
    with pytest.raises(ValueError, match="index 3 is out of range.*3 weight layers"):
        ics(model, loss_fn, x, y, opt, layers=3)
    with pytest.raises(ValueError, match=r"'2' \(Sigmoid\) has no weight"):
        ics(model, loss_fn, x, y, opt, layers="2")
    with pytest.raises(TypeError, match="layer indices"):
        ics(model, loss_fn, x, y, opt, layers=[1.5])
    with pytest.raises(ValueError, match="does not require grad"):
        ics(model, lambda out, t: F.cross_entropy(out, t).detach(), x, y, opt, recompute=True)
    with pytest.raises(TypeError, match="LBFGS"):
        ics(model, loss_fn, x, y, torch.optim.LBFGS(model.parameters()))


def test_non_finite_reported():
    model, opt, loss_fn, x, y = setup("linear", "sgd-plain", steps=0)
    model[2].weight.grad[0, 0] = float("nan")
    rows = ics(model, loss_fn, x, y, opt)
    assert rows[2]["finite"] is False and rows[2]["l2"] != rows[2]["l2"]   # NaN kept, not dropped
    assert rows[3]["finite"] is False   # W_2 updated with a NaN gradient poisons G' of later layers
    assert rows[1]["finite"] is True


def test_named_param_groups_and_frozen_params():
    """An optimizer built from named_parameters() with two groups, and a parameter without a gradient: the
    scratch optimizer keeps the groups' settings and skips the frozen parameter, as step() would."""
    torch.manual_seed(0)
    model = deep_linear(4).double()
    x = torch.randn(20, 10, dtype=torch.float64)
    y = torch.randn(20, 10, dtype=torch.float64)
    named = list(model.named_parameters())
    opt = torch.optim.SGD([{"params": named[:2], "lr": 0.2}, {"params": named[2:], "lr": 0.05, "momentum": 0.5}],
                          lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    model[1].weight.grad = None   # frozen this step: neither updated nor measured from .grad
    rows = ics(model, F.mse_loss, x, y, opt, layers=[2, 3], recompute=False)
    for r, i in zip(rows, (2, 3)):
        G, Gp = brute_force_skip(model, opt, F.mse_loss, x, y, i, skip=1)
        assert r["l2"] == pytest.approx(float((G - Gp).norm()), rel=1e-9)


def brute_force_skip(model, opt, loss_fn, x, y, i, skip):
    name = weight_layers(model)[i][0] + ".weight"
    k = [n for n, _ in model.named_parameters()].index(name)
    G = dict(model.named_parameters())[name].grad.clone()
    m2, o2 = copy.deepcopy((model, opt))
    for j, (p, q) in enumerate(zip(model.parameters(), m2.parameters())):
        q.grad = p.grad.clone() if j < k and j != skip else None
    o2.step()
    o2.zero_grad()
    loss_fn(m2(x), y).backward()
    return G, dict(m2.named_parameters())[name].grad.clone()


@pytest.mark.parametrize("noise", ["dropout", "noisy-bn"])
def test_stochastic_layers_recompute_or_refuse(noise):
    """With dropout or noisy BN in training mode, .grad came from another draw than G'. The default recomputes G
    with the same draw as G' (same numbers as recompute=True); recompute=False is refused; eval mode reads .grad."""
    torch.manual_seed(0)
    layer = nn.Dropout(0.5) if noise == "dropout" else normlab.NoisyBatchNorm1d(16)
    model = nn.Sequential(nn.Linear(12, 16), layer, nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    model = model.double()
    x, y = torch.randn(32, 12, dtype=torch.float64), torch.randint(0, 5, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    auto = ics(model, F.cross_entropy, x, y, opt)
    forced = ics(model, F.cross_entropy, x, y, opt, recompute=True)
    assert all(r["recomputed"] for r in auto)
    assert [r["l2"] for r in auto] == [r["l2"] for r in forced]
    assert auto[1]["rel_l2"] < 0.5   # the shift itself, not the difference between two noise draws
    with pytest.raises(ValueError, match=r"recompute=False but 1 draw random numbers"):
        ics(model, F.cross_entropy, x, y, opt, recompute=False)
    model.eval()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    rows = ics(model, F.cross_entropy, x, y, opt, recompute=False)
    assert not any(r["recomputed"] for r in rows)
