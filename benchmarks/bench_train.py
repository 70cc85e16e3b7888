"""Training-loop speed (issue 4): loop overhead vs a bare PyTorch loop, Ioffe MLP 50k-step time, VGG step time with
normlab norms vs torch.nn norms, and peak memory. Run: `.venv/bin/python benchmarks/bench_train.py [--quick]`."""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normlab import data, models, tools  # noqa: E402
from normlab.hooks import peak_memory  # noqa: E402
from normlab.train import Batches, TrainConfig, _dataset, _subset, evaluate, train  # noqa: E402


def _dataset_name() -> str:
    return "mnist"   # carried by the package: always there


def _bare(cfg: TrainConfig, ds: data.Dataset) -> None:
    """The same work as train(cfg) written as a plain PyTorch loop: build, evaluate, steps, evaluate."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, cfg.norm, ds.in_shape, ds.num_classes, cfg.init, **cfg.model_kw)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    f = torch.nn.functional.cross_entropy
    tr, te = _subset(len(ds.x_train), cfg.eval_samples, 0), _subset(len(ds.x_test), cfg.eval_samples, 1)
    ev = [(ds.x_train[tr], ds.y_train[tr]), (ds.x_test[te], ds.y_test[te])]
    for x, y in ev:
        evaluate(model, x, y, f, True)
    batches = Batches(ds.x_train, ds.y_train, cfg.batch_size, cfg.seed)
    model.train()
    for t in range(cfg.steps):
        x, y = batches(t)
        loss = f(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for x, y in ev:
        evaluate(model, x, y, f, True)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_overhead(quick: bool, out: Path) -> list[dict]:
    name = _dataset_name()
    rows = []
    for norm in ("none", "bn"):
        cfg = TrainConfig(model="mlp", norm=norm, dataset=name, init="ioffe", lr=0.5, batch_size=60,
                          steps=100 if quick else 400, eval_every=0, eval_samples=1000, checkpoint_every=0,
                          progress=False, verbose=False)
        ds = _dataset(cfg)
        ours, bare = [], []
        for r in range(5 if quick else 20):   # interleaved, so that machine noise hits both sides alike
            bare.append(_time(lambda: _bare(cfg, ds)))
            ours.append(_time(lambda: train(cfg, out / f"overhead-{norm}-{r}")))   # train refuses to reuse a run dir
        o, b = statistics.median(ours), statistics.median(bare)
        rows.append({"bench": "train", "case": f"loop overhead, mlp {norm}, {cfg.steps} steps",
                     "normlab_ms": 1e3 * o / cfg.steps, "torch_ms": 1e3 * b / cfg.steps, "ratio": o / b,
                     "target": "<= 1.05", "ok": o / b <= 1.05})
    return rows


def bench_ioffe(quick: bool, out: Path) -> list[dict]:
    """Ioffe MLP, batch 60, eval every 1000 steps on 1000+1000 samples: time for 50,000 steps, extrapolated from
    the per-step time of a shorter run (steps S minus steps 0) plus the fixed set-up time."""
    name = _dataset_name()
    rows = []
    steps = 300 if quick else 2000
    for norm, target in (("none", 90.0), ("bn", 120.0)):
        base = dict(model="mlp", norm=norm, dataset=name, init="ioffe", lr=0.5, batch_size=60, eval_every=1000,
                    eval_samples=1000, checkpoint_every=0, progress=False, verbose=False)
        fixed, full = [], []
        for r in range(3 if quick else 5):
            fixed.append(_time(lambda: train(TrainConfig(steps=0, **base), out / f"ioffe-{norm}-{r}-0")))
            full.append(_time(lambda: train(TrainConfig(steps=steps, **base), out / f"ioffe-{norm}-{r}")))
        f0, f1 = statistics.median(fixed), statistics.median(full)
        per_step = (f1 - f0) / steps
        total = f0 + 50_000 * per_step
        rows.append({"bench": "train", "case": f"ioffe mlp {norm}: 50k steps batch 60 (from {steps})",
                     "normlab_ms": per_step * 1e3, "seconds_50k": round(total, 1), "target": f"< {target:.0f} s",
                     "ok": total < target, **peak_memory(torch.device("cpu"))})
    return rows


def bench_vgg(quick: bool) -> list[dict]:
    """One SGD step (forward, backward, update) of the VGG-like net on 28x28x1, batch 128: normlab norms vs the
    same net with torch.nn norms (tools.convert), same weights."""
    rows = []
    width = 0.25 if quick else 0.5
    reps = 5 if quick else 20
    x = torch.randn(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))
    for norm in ("bn", "gn:8"):
        torch.manual_seed(0)
        ours = models.build("vgg", norm=norm, in_shape=(1, 28, 28), width=width, init="glorot")
        twin = tools.convert(ours, to="torch")
        nets = {"normlab": ours, "torch": twin}
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in nets.items()}

        def step(k):
            loss = torch.nn.functional.cross_entropy(nets[k](x), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
        times = {"normlab": [], "torch": []}
        for k in nets:
            step(k)   # warm-up
        for _ in range(reps):
            for k in nets:
                times[k].append(_time(lambda: step(k)))
        o, b = statistics.median(times["normlab"]), statistics.median(times["torch"])
        rows.append({"bench": "train", "case": f"vgg11 x{width} 28x28 step, batch 128, {norm}",
                     "normlab_ms": o * 1e3, "torch_ms": b * 1e3, "ratio": o / b, "target": "<= 1.3",
                     "ok": o / b <= 1.3})
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        return bench_overhead(quick, out) + bench_ioffe(quick, out) + bench_vgg(quick)


if __name__ == "__main__":
    torch.set_num_threads(2)
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        for part in (lambda: bench_overhead(quick, Path(tmp)), lambda: bench_ioffe(quick, Path(tmp)),
                     lambda: bench_vgg(quick)):
            for row in part():
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
