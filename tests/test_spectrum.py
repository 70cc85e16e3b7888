"""normlab.diagnostics.spectrum against dense matrices of small float64 models with BN (both BN modes):
torch.autograd.functional.hessian for H, explicit J^T H_z J for the Gauss-Newton matrix, explicit per-sample
Jacobians for the empirical Fisher, the average of per-batch dense Hessians for a loader, and the sub-block for a
parameter subset. Lanczos pairs, SLQ moments and Hutch++ are checked against eigh / traces of powers of these."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import normlab
from normlab.diagnostics import spectrum as S
from normlab.diagnostics import top_eigenvalue

F = nn.functional
D64 = torch.float64


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), normlab.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model(torch.randn(16, 3, dtype=D64) * 3 + 1)   # running statistics away from the batch's own
    return model


def data(n: int = 10, seed: int = 1, classes: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=D64)
    y = torch.randint(0, 3, (n,), generator=g) if classes else torch.randn(n, 3, generator=g, dtype=D64)
    return x, y


def flat_fn(model: nn.Module, train: bool, fn):
    """(f(flat parameters) -> fn(model output), flat parameters) on a copy in the given mode."""
    m = copy.deepcopy(model).train(train)
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    buffers = dict(m.named_buffers())

    def f(flat, x):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        out = functional_call(m, {**params, **{k: v.clone() for k, v in buffers.items()}}, (x,))
        return fn(out)
    return f, torch.cat([p.detach().flatten() for p in m.parameters()])


def dense_hessian(model, loss_fn, x, y, train=True):
    f, w = flat_fn(model, train, lambda out: loss_fn(out, y))
    return torch.autograd.functional.hessian(lambda v: f(v, x), w)


def dense(op: S.HessianOperator) -> torch.Tensor:
    """The operator probed on the standard basis."""
    return torch.stack([op.flat_matvec(e) for e in torch.eye(op.dim, dtype=D64)], 1)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_lanczos_top_and_bottom_pairs(bn_mode):
    model = bn_net()
    x, y = data()
    H = dense_hessian(model, F.mse_loss, x, y, bn_mode == "train")
    lam, U = torch.linalg.eigh(H)
    op = S.HessianOperator(model, F.mse_loss, x, y, bn_mode)
    assert torch.allclose(dense(op), H, rtol=1e-9, atol=1e-12)
    r = S.lanczos(op, k=3, which="both", tol=1e-10)
    assert r["converged"] and r["finite"] and r["iterations"] <= op.dim
    assert r["top"] == pytest.approx(lam.flip(0)[:3].tolist(), rel=1e-9, abs=1e-12)
    assert r["bottom"] == pytest.approx(lam[:3].tolist(), rel=1e-9, abs=1e-12)
    for side, want in (("top", U[:, -3:].flip(1)), ("bottom", U[:, :3])):
        V = r[f"{side}_vectors"]
        assert torch.allclose(V @ V.T, torch.eye(3, dtype=D64), atol=1e-10)   # orthonormal
        assert torch.allclose((V @ want).abs().diagonal(), torch.ones(3, dtype=D64), atol=1e-8)   # +- eigenvector
        resid = (H @ V.T - V.T * torch.tensor(r[side], dtype=D64)).norm(dim=0)
        assert float(resid.max()) < 1e-8
    # the default tolerance: fewer products, and each value within its reported residual of a true eigenvalue
    d = S.lanczos(op, k=2, which="top")
    assert d["converged"] and "bottom" not in d
    for v, res in zip(d["top"], d["top_residuals"]):
        assert float((lam - v).abs().min()) <= res + 1e-12
    assert d["top"][0] == pytest.approx(float(lam[-1]), rel=1e-5)


def test_lanczos_unconverged_and_repeated_eigenvalues():
    model = bn_net()
    x, y = data()
    op = S.HessianOperator(model, F.mse_loss, x, y)
    r = S.lanczos(op, k=3, which="bottom", tol=1e-12, max_iter=6)
    assert r["iterations"] == 6 and r["converged"] is False and max(r["bottom_residuals"]) > 1e-12
    # diag(5, 5, 5, 1, 0, 0): Krylov spaces see each value once; the orthogonal restarts find the copies
    lin = nn.Linear(6, 1, bias=False).double()
    z = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 0.0, 0.0], dtype=D64)).sqrt() * (3 ** 0.5)
    quad = S.HessianOperator(lin, lambda out, t: (out ** 2).sum() / 3, z, None)   # H = 2 z^T z / 3 = diag(...)*2
    r = S.lanczos(quad, k=3, which="both", tol=1e-10)
    assert r["top"] == pytest.approx([10.0, 10.0, 10.0], abs=1e-9)
    assert r["bottom"] == pytest.approx([0.0, 0.0, 2.0], abs=1e-9)
    assert r["breakdowns"] >= 2 and r["converged"]


def test_power_iteration_and_top_eigenvalue_options():
    model = bn_net()
    x, y = data()
    H = dense_hessian(model, F.mse_loss, x, y)
    lam = torch.linalg.eigvalsh(H)
    dom = float(lam[lam.abs().argmax()])
    r = S.power_iteration(S.HessianOperator(model, F.mse_loss, x, y), tol=1e-8)
    assert r["converged"] and r["eigenvalue"] == pytest.approx(dom, rel=1e-10)
    sub = S.select_params(model, ["1"])   # the BN layer's gamma and beta
    assert [n for n, _ in sub] == ["1.weight", "1.bias"]
    t = top_eigenvalue(model, F.mse_loss, x, y, params="1", tol=1e-9)
    idx = torch.arange(12, 20)
    lb = torch.linalg.eigvalsh(H[idx][:, idx])
    assert t["eigenvalue"] == pytest.approx(float(lb[lb.abs().argmax()]), rel=1e-8) and t["kind"] == "hessian"


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_parameter_subset_is_the_sub_block(bn_mode):
    model = bn_net()
    x, y = data()
    H = dense_hessian(model, F.mse_loss, x, y, bn_mode == "train")
    # flat order: 0.weight (12), 1.weight (4), 1.bias (4), 3.weight (12), 3.bias (3)
    cases = {0: list(range(0, 12)), "1": list(range(12, 20)), "3.bias": list(range(32, 35)),
             ("1.bias", -1): list(range(16, 20)) + list(range(20, 35))}
    for spec, idx in cases.items():
        op = S.HessianOperator(model, F.mse_loss, x, y, bn_mode, params=list(spec) if isinstance(spec, tuple)
                               else spec)
        i = torch.tensor(idx)
        assert op.dim == len(idx)
        assert torch.allclose(dense(op), H[i][:, i], rtol=1e-9, atol=1e-12), spec


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_gauss_newton_is_jt_hz_j(bn_mode):
    model = bn_net()
    x, y = data(classes=True)
    f, w = flat_fn(model, bn_mode == "train", lambda out: out)
    J = torch.autograd.functional.jacobian(lambda v: f(v, x), w).reshape(-1, w.numel())   # (N*C, n)
    out = f(w, x).detach()
    Hz = torch.autograd.functional.hessian(lambda z: F.cross_entropy(z.view_as(out), y), out.flatten())
    G = J.T @ Hz @ J
    op = S.HessianOperator(model, F.cross_entropy, x, y, bn_mode, kind="ggn")
    assert torch.allclose(dense(op), G, rtol=1e-9, atol=1e-12)
    r = S.lanczos(op, k=2, which="both", tol=1e-10)
    lam = torch.linalg.eigvalsh(G)
    assert r["top"] == pytest.approx(lam.flip(0)[:2].tolist(), rel=1e-8)
    assert min(r["bottom"]) > -1e-10   # PSD for a convex loss of the output
    H = dense_hessian(model, F.cross_entropy, x, y, bn_mode == "train")
    assert not torch.allclose(G, H, atol=1e-3)   # a different matrix from the Hessian


def test_empirical_fisher_is_mean_of_per_sample_outer_products():
    model = bn_net()
    x, y = data(classes=True)
    f, w = flat_fn(model, True, lambda out: torch.stack([F.cross_entropy(out[i:i + 1], y[i:i + 1])
                                                         for i in range(len(y))]))
    Jl = torch.autograd.functional.jacobian(lambda v: f(v, x), w)   # (N, n) per-sample gradients (batch stats)
    op = S.HessianOperator(model, F.cross_entropy, x, y, kind="fisher")
    assert torch.allclose(dense(op), Jl.T @ Jl / len(y), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="mean of per-sample"):
        S.HessianOperator(model, lambda o, t: F.cross_entropy(o, t, reduction="sum"), x, y, kind="fisher")


@pytest.mark.parametrize("keep_graphs", [True, False])
def test_loader_average_of_per_batch_hessians(keep_graphs):
    model = bn_net()
    x, y = data(n=14, seed=3)
    loader = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]   # sizes 4, 4, 6: weights 4/14, 4/14, 6/14
    Hs = [dense_hessian(model, F.mse_loss, bx, by) for bx, by in loader]
    want = (4 * Hs[0] + 4 * Hs[1] + 6 * Hs[2]) / 14
    op = S.HessianOperator(model, F.mse_loss, loader, keep_graphs=keep_graphs)
    assert op.batches == 3 and op.weights == pytest.approx([4 / 14, 4 / 14, 6 / 14])
    assert torch.allclose(dense(op), want, rtol=1e-9, atol=1e-12)
    equal = [(x[:7], y[:7]), (x[7:], y[7:])]
    opg = S.HessianOperator(model, F.mse_loss, equal, kind="ggn", keep_graphs=keep_graphs)
    one = [S.HessianOperator(model, F.mse_loss, bx, by, kind="ggn") for bx, by in equal]
    assert torch.allclose(dense(opg), (dense(one[0]) + dense(one[1])) / 2, rtol=1e-9, atol=1e-12)
    r = S.lanczos(op, k=1, tol=1e-10)
    assert r["top"][0] == pytest.approx(float(torch.linalg.eigvalsh(want)[-1]), rel=1e-9)


def test_slq_moments():
    model = bn_net()
    x, y = data()
    H = dense_hessian(model, F.mse_loss, x, y)
    op = S.HessianOperator(model, F.mse_loss, x, y)
    n, m = op.dim, 5
    # per probe, Gauss quadrature with m nodes is exact for degree <= 2m - 1
    P = torch.randn(4, n, generator=torch.Generator().manual_seed(7), dtype=D64)
    r = S.slq_density(op, steps=m, probe_vectors=P, grid=0)
    for p in range(2 * m):
        for v, th, tau in zip(P, r["nodes"], r["weights"]):
            quad = sum(w * t ** p for t, w in zip(th, tau))
            exact = float(v @ torch.linalg.matrix_power(H, p) @ v / (v @ v))
            assert quad == pytest.approx(exact, rel=1e-8, abs=1e-10), p
    # averaged over random probes: tr(H^p)/n within 4 standard errors; the density integrates to 1
    d = S.slq_density(op, steps=12, probes=60, seed=2)
    for p in range(1, 5):
        want = float(torch.linalg.matrix_power(H, p).trace()) / n
        assert abs(d["moments"][p] - want) <= 4 * d["moment_stderr"][p], p
    assert d["moments"][0] == pytest.approx(1.0, abs=1e-12) and d["probes"] == 60
    grid, dens = torch.tensor(d["grid"]), torch.tensor(d["density"])
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    a = S.slq_density(op, steps=12, tol=0.3, seed=2, max_probes=60)   # adaptive: until the stderr is small
    rms = a["moments"][2] ** 0.5
    assert a["converged"] and 3 <= a["probes"] < 60
    assert a["moment_stderr"][1] <= 0.3 * rms and a["moment_stderr"][2] <= 0.3 * rms ** 2
    few = S.slq_density(op, steps=12, tol=0.01, seed=2, max_probes=4)
    assert few["probes"] == 4 and not few["converged"]


def test_hutchpp_trace():
    model = bn_net()
    x, y = data(classes=True)
    op = S.HessianOperator(model, F.cross_entropy, x, y, kind="ggn")
    tr = float(dense(op).trace())
    exact = S.hutchpp_trace(op, sketch=op.dim)
    assert exact["trace"] == pytest.approx(tr, rel=1e-10) and exact["converged"] and exact["samples"] == 0
    est = S.hutchpp_trace(op, sketch=8, tol=0.02, max_samples=400, seed=1)
    assert abs(est["trace"] - tr) <= 4 * est["stderr"] and est["converged"]
    assert est["iterations"] == 16 + est["samples"]
    # a spectrum with a few large eigenvalues (as a Hessian's outliers): the sketch takes them exactly
    lin = nn.Linear(40, 1, bias=False).double()
    eig = torch.cat([torch.tensor([400.0, 200.0, 100.0]), torch.full((37,), 0.01)]).double()
    z = torch.diag(eig.sqrt())
    quad = S.HessianOperator(lin, lambda out, t: (out ** 2).sum() / 2, z, None)   # H = z^T z = diag(eig)
    h = S.hutchpp_trace(quad, sketch=6, min_samples=10, max_samples=10, tol=0)
    assert abs(h["trace"] - float(eig.sum())) < 0.05   # Hutchinson's stderr with 22 samples is ~ 100


def test_spectrum_row_and_bad_input():
    model = bn_net()
    x, y = data(classes=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    row = S.hessian_spectrum(model, F.cross_entropy, x, y, k=2, density_probes=2, density_steps=6)
    assert set(row) >= {"top", "bottom", "converged", "trace", "trace_stderr", "density_nodes", "finite", "dim"}
    assert "top_vectors" not in row and row["finite"] and row["params"] == 5
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="kind"):
        S.HessianOperator(model, F.cross_entropy, x, y, kind="fim")
    with pytest.raises(ValueError, match="params"):
        S.HessianOperator(model, F.cross_entropy, x, y, params="nope")
    with pytest.raises(TypeError, match="params"):
        S.HessianOperator(model, F.cross_entropy, x, y, params=[1.5])
    with pytest.raises(TypeError, match="y: pass y only"):
        S.HessianOperator(model, F.cross_entropy, [(x, y)], y)
    with pytest.raises(ValueError, match="no batch"):
        S.HessianOperator(model, F.cross_entropy, [])
    op = S.HessianOperator(model, F.cross_entropy, x, y)
    with pytest.raises(ValueError, match="which"):
        S.lanczos(op, which="largest")
    with pytest.raises(ValueError, match="k"):
        S.lanczos(op, k=0)
    with pytest.raises(ValueError, match="tol"):
        S.hutchpp_trace(op, tol=-1)


def test_against_hessian_eigenthings():
    he = pytest.importorskip("hessian_eigenthings")
    model = bn_net().eval()   # its operator runs model(x) as is: eval mode keeps the buffers
    x, y = data(classes=True)
    theirs = he.lanczos(he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy)), k=3,
                        which="LA", max_iter=model_size(model) - 1, tol=1e-12, seed=0)
    ours = S.lanczos(S.HessianOperator(model, F.cross_entropy, x, y, "eval"), k=3, tol=1e-10)
    assert ours["top"] == pytest.approx(theirs.eigenvalues.tolist(), rel=1e-7)


def model_size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
