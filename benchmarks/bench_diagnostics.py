"""Cost of each instrument in training-step units (issue 5): on the Ioffe MLP (784-100-100-100-10, BN, batch 60) and
a narrow VGG-11 (BN, width 1/8, 1x28x28, batch 32). A training step = zero_grad + forward + loss + backward + SGD
momentum step. Each repetition times one step and then each instrument right after it (interleaved, so machine
noise hits both alike); ratio = median wall time (instrument) / median wall time (step), cpu_ratio the same with
this process's CPU time (less sensitive to other processes on a shared machine; informational).
Targets: ICS over all k weight layers <= k + 1 steps; landscape with 8 points <= 9; Hessian top eigenvalue with
20 iterations <= 45. ICS and the landscape are timed on the hook path (.grad from the step, and for the landscape
the step's loss as L(w)); the landscape with everything recomputed (one forward+backward more), distributions,
Theorem 4.1 and a 10-sample Hutchinson trace are reported without a target.
Run: `.venv/bin/python benchmarks/bench_diagnostics.py [--quick]` (2 torch threads; NORMLAB_BENCH_THREADS=1 for a
comparison on a busy machine, where two threads wait on each other in every small parallel op)."""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normlab import diagnostics as D, models  # noqa: E402

F = torch.nn.functional


def _cases() -> list[tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = models.build("mlp", "bn", (1, 28, 28), 10, init="ioffe")
    vgg = models.build("vgg", "bn", (1, 28, 28), 10, init="glorot", cfg="vgg11", width=0.125)
    return [("mlp-bn b60", mlp, torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g)),
            ("vgg11/8-bn b32", vgg, torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))]


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(int(os.environ.get("NORMLAB_BENCH_THREADS", "2")))
    reps = 5 if quick else 20
    rows = []
    for label, model, x, y in _cases():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        k = len(D.weight_layers(model))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        instruments: list[tuple[str, Callable[[], object], float | None]] = [
            (f"ics all {k} layers", lambda: D.ics(model, F.cross_entropy, x, y, opt), k + 1),
            # the hook path: g and grad L(w) from .grad, L(w) = the step's loss (LandscapeHook passes ctx.loss)
            ("landscape 8 points (hook)", lambda: D.landscape(model, F.cross_entropy, x, y, lr=0.05, points=8,
                                                              loss0=1.0), 9),
            ("landscape 8 points (recompute)", lambda: D.landscape(model, F.cross_entropy, x, y, lr=0.05, points=8,
                                                                   use_grad=False), None),
            ("hessian top eig 20 iters", lambda: D.top_eigenvalue(model, F.cross_entropy, x, y, iters=20), 45),
            ("hessian trace 10 samples", lambda: D.hessian_trace(model, F.cross_entropy, x, y, samples=10), None),
            ("distributions all layers", lambda: D.distributions(model, x), None),
            ("theorem 4.1 all BN layers", lambda: D.theorem41(model, F.cross_entropy, x, y), None),
        ]
        for _ in range(2):   # warm-up
            step()
            for _, fn, _ in instruments:
                fn()
        steps: list[tuple[float, float]] = []
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in instruments}
        for _ in range(reps):
            steps.append(_timed(step))
            for name, fn, _ in instruments:
                times[name].append(_timed(fn))
        s = statistics.median(w for w, _ in steps)
        s_cpu = statistics.median(c for _, c in steps)
        for name, _, target in instruments:
            t = statistics.median(w for w, _ in times[name])
            t_cpu = statistics.median(c for _, c in times[name])
            rows.append({"bench": "diagnostics", "case": f"{label}: {name}", "normlab_ms": 1e3 * t,
                         "torch_ms": 1e3 * s, "ratio": t / s, "cpu_ratio": t_cpu / s_cpu,
                         "target": target,   # in training steps; None: reported only
                         "ok": (t / s <= target) if target else None})
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(f"{'case':46s} {'instr ms':>9s} {'step ms':>8s} {'steps':>7s} {'cpu':>6s}  target")
    for r in run(quick):
        print(f"{r['case']:46s} {r['normlab_ms']:9.2f} {r['torch_ms']:8.2f} {r['ratio']:7.2f} {r['cpu_ratio']:6.2f}  "
              f"{'' if r['target'] is None else '<= %g' % r['target']} "
              f"{'' if r['ok'] is None else ('ok' if r['ok'] else 'MISSED')}")
