"""Spectra side by side (issue 17): normlab vs PyHessian vs hessian-eigenthings (optional bench dependencies; a
missing one prints "-"), on the same model and batch.

Small case (errors against the dense Hessian): an MLP 12-12-12-4 with BN in eval mode (the peers run the model as
it is; eval mode keeps their passes from moving the running statistics), float64, batch 64, cross-entropy.
    top-5     max relative error of the 5 largest eigenvalues; normlab Lanczos (tol 1e-3), PyHessian's power
              iteration with deflation (top_n=5, tol 1e-3), hessian-eigenthings' Lanczos (which="LA", 20 steps)
    trace     relative error; normlab Hutch++ (tol 1e-2), PyHessian Hutchinson (tol 1e-3), eigenthings Hutch++ (99)
    density   error of the SLQ estimate of tr(H^2)/n relative to the dense value, 8 probes x 40 steps each;
              PyHessian's density() calls torch.eig, removed from torch: reported as failing
VGG case: VGG-11 width 1/8 with BN, float32, batch 32, training mode: the time of one Hessian-vector product in
units of one training step (zero_grad + forward + backward + SGD momentum) for normlab's operator (graph kept) and
the top eigenvalue (tol 1e-3) by each tool, BN in training mode (normlab, eigenthings) and in eval mode (all three:
PyHessian always sets model.eval(), so it measures the running-statistics Hessian only). Times are medians of
`reps` runs.
Run: `.venv/bin/python benchmarks/run.py --only spectra`."""
from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normlab import models  # noqa: E402
from normlab.diagnostics import spectrum as S  # noqa: E402
from normlab.layers import BatchNorm1d  # noqa: E402

F = torch.nn.functional

try:
    from pyhessian import hessian as pyhessian_cls
except ImportError:   # optional bench dependency
    pyhessian_cls = None
try:
    import hessian_eigenthings as he
except ImportError:   # optional bench dependency
    he = None


def _ms(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """(median wall ms, last result) over reps calls; a failing call gives (nan, the exception)."""
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as err:   # a peer that does not run on this torch: report, do not crash the bench
            return float("nan"), err
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def _small() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 12, bias=False), BatchNorm1d(12), torch.nn.Tanh(),
                                torch.nn.Linear(12, 12, bias=False), BatchNorm1d(12), torch.nn.Tanh(),
                                torch.nn.Linear(12, 4)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (64,), generator=g)
    with torch.no_grad():
        model(x * 1.5 + 0.5)
    model.eval()
    op = S.HessianOperator(model, F.cross_entropy, x, y, "eval")
    H = torch.stack([op.flat_matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)])
    return model, x, y, (H + H.T) / 2


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _small_rows(reps: int) -> list[dict]:
    model, x, y, H = _small()
    lam = torch.linalg.eigvalsh(H)
    top5, tr, m2 = lam.flip(0)[:5], float(lam.sum()), float((lam ** 2).mean())
    op = lambda: S.HessianOperator(model, F.cross_entropy, x, y, "eval")   # noqa: E731
    pyh = (lambda: pyhessian_cls(copy.deepcopy(model), F.cross_entropy, data=(x, y), cuda=False)) \
        if pyhessian_cls else None
    heop = (lambda: he.HessianOperator(copy.deepcopy(model), [(x, y)], he.supervised_loss(F.cross_entropy))) \
        if he else None

    def top_err(vals) -> float:
        return max(_rel(float(v), float(t)) for v, t in zip(sorted(vals, reverse=True)[:5], top5))

    cases = {
        "top-5": (lambda: S.lanczos(op(), k=5, vectors=True)["top"],
                  pyh and (lambda: pyh().eigenvalues(top_n=5, tol=1e-3)[0]),
                  heop and (lambda: he.lanczos(heop(), k=5, which="LA", max_iter=20, seed=0).eigenvalues.tolist()),
                  top_err),
        "trace": (lambda: S.hutchpp_trace(op())["trace"],
                  pyh and (lambda: _mean(pyh().trace(tol=1e-3))),
                  heop and (lambda: he.trace(heop(), num_matvecs=99, method="hutch++", seed=0).estimate),
                  lambda v: _rel(float(v), tr)),
        "density": (lambda: S.slq_density(op(), steps=40, probes=8)["moments"][2],
                    pyh and (lambda: pyh().density(iter=40, n_v=8)),
                    heop and (lambda: _he_m2(he.spectral_density(heop(), num_runs=8, lanczos_steps=40, seed=0))),
                    lambda v: _rel(float(v), m2)),
    }
    rows = []
    for case, (ours, theirs_p, theirs_e, err) in cases.items():
        row: dict[str, Any] = {"bench": "spectra: small MLP-BN (n=%d), errors vs dense H" % H.shape[0],
                               "case": case}
        for key, fn in (("normlab", ours), ("pyhessian", theirs_p), ("eigenthings", theirs_e)):
            if not fn:
                continue
            ms, out = _ms(fn, reps)
            row[f"{key}_ms" if key == "normlab" else f"{key} ms"] = ms
            row[f"{key} err"] = f"fails: {type(out).__name__}" if isinstance(out, Exception) else err(out)
        rows.append(row)
    return rows


def _mean(values: list) -> float:
    return float(sum(values) / len(values))


def _he_m2(res) -> float:
    nodes, w = res.raw_eigenvalues.nan_to_num(0.0), res.raw_weights
    return float(((w * nodes ** 2).sum(1)).mean())


def _vgg_rows(reps: int) -> list[dict]:
    torch.manual_seed(0)
    model = models.build("vgg", "bn", (1, 28, 28), 10, init="glorot", cfg="vgg11", width=0.125).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    step()
    step_ms, _ = _ms(step, max(reps, 5))
    op = S.HessianOperator(model, F.cross_entropy, x, y)
    v = op.random("gauss", torch.Generator().manual_seed(0))
    op.flat_matvec(v)
    hvp_ms, _ = _ms(lambda: op.flat_matvec(v), max(reps, 5))
    build_ms, _ = _ms(lambda: S.HessianOperator(model, F.cross_entropy, x, y), reps)
    name = "spectra: VGG-11/8-BN b32 (n=%d), in training steps" % op.dim
    rows = [{"bench": name, "case": "one HVP (graph kept)", "normlab_ms": hvp_ms, "torch_ms": step_ms},
            {"bench": name, "case": "operator build (fwd + double-graph bwd)", "normlab_ms": build_ms,
             "torch_ms": step_ms}]
    for bn_mode in ("train", "eval"):
        rows.append(_vgg_top(name, model, x, y, bn_mode, step_ms))
    return rows


def _mean(values: list) -> float:
    return float(sum(values) / len(values))


def _he_m2(res) -> float:
    nodes, w = res.raw_eigenvalues.nan_to_num(0.0), res.raw_weights
    return float(((w * nodes ** 2).sum(1)).mean())


def _vgg_top(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bn_mode: str,
             step_ms: float) -> dict:
    """Top eigenvalue by each tool; PyHessian always puts the model in eval mode, so it runs in the eval row only
    (in the train row it would measure another matrix); eigenthings runs the model in the mode it is given."""
    mk = lambda: S.HessianOperator(model, F.cross_entropy, x, y, bn_mode)   # noqa: E731
    ms, r = _ms(lambda: S.lanczos(mk(), k=1, vectors=False), 1)
    row: dict[str, Any] = {"bench": name, "case": f"top eigenvalue, BN {bn_mode}, tol 1e-3", "normlab_ms": ms,
                           "torch_ms": step_ms, "normlab HVPs": r["iterations"], "top": r["top"][0]}
    if pyhessian_cls and bn_mode == "eval":
        m2 = copy.deepcopy(model)
        pms, pout = _ms(lambda: pyhessian_cls(m2, F.cross_entropy, data=(x, y), cuda=False).eigenvalues(tol=1e-3), 1)
        row["pyhessian ms"] = pms
        if not isinstance(pout, Exception):
            row["pyhessian vs normlab"] = _rel(pout[0][0], r["top"][0])
    if he:
        m3 = copy.deepcopy(model).train(bn_mode == "train")
        hms, hout = _ms(lambda: he.lanczos(he.HessianOperator(m3, [(x, y)], he.supervised_loss(F.cross_entropy)),
                                           k=1, which="LA", max_iter=r["iterations"], seed=0), 1)
        row["eigenthings ms"] = hms
        if not isinstance(hout, Exception):
            row["eigenthings vs normlab"] = _rel(float(hout.eigenvalues[0]), r["top"][0])
    return row


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(int(os.environ.get("NORMLAB_BENCH_THREADS", "2")))
    reps = 1 if quick else 3
    return _small_rows(reps) + _vgg_rows(reps)


if __name__ == "__main__":
    from benchmarks.run import table, normalize_row
    print(table([normalize_row(r) for r in run(quick="--quick" in sys.argv)]))
