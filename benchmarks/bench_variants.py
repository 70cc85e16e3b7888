"""BN variants (noisy, Lp p=1/inf, Batch Renorm, Ghost BN) vs torch.nn.BatchNorm2d: forward + backward, CPU float32.

No speed target: the variants do more work than BN (noise draws, a second statistic pass, per-virtual-batch
statistics), so the rows only report the cost ratio. Run alone: `.venv/bin/python benchmarks/bench_variants.py`.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from normlab.layers.factory import norm_layer  # noqa: E402

# case -> factory spec; "bn" is normlab's own BatchNorm2d, for scale
CASES = {"bn": "bn", "noisy-bn": "noisy-bn", "l1-bn": "l1-bn", "linf-bn": "linf-bn", "brn": "brn:3:5",
         "ghost-bn:32": "ghost-bn:32"}


def _step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
    y = layer(x)
    torch.autograd.grad(y, (x, layer.weight, layer.bias), g)


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run(quick: bool = False) -> list[dict]:
    """One row per variant: median ms of forward+backward over >= 20 interleaved repetitions, the ratio to torch's
    BatchNorm2d and (vs_bn) to normlab's own BatchNorm2d, i.e. what the variant itself adds."""
    torch.set_num_threads(2)
    shape = (32, 64, 16, 16) if quick else (128, 64, 32, 32)
    reps = 20 if quick else 25
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_()
    g = torch.randn(shape, generator=gen)
    ref = nn.BatchNorm2d(shape[1])
    rows, bn_ms = [], None
    for case, spec in CASES.items():
        layer = norm_layer(spec, shape[1], ndim=2)
        ours_ms, torch_ms = [], []
        for _ in range(2):   # warm-up
            _step(layer, x, g), _step(ref, x, g)
        for _ in range(reps):  # side by side, so drift on a shared machine hits both alike
            ours_ms += _time(lambda: _step(layer, x, g), 1)
            torch_ms += _time(lambda: _step(ref, x, g), 1)
        a, b = statistics.median(ours_ms), statistics.median(torch_ms)
        bn_ms = a if bn_ms is None else bn_ms    # CASES starts with plain "bn"
        rows.append({"bench": "variants", "case": f"{case} {'x'.join(map(str, shape))} fwd+bwd",
                     "normlab_ms": round(a, 2), "torch_ms": round(b, 2), "ratio": round(a / b, 2),
                     "vs_bn": round(a / bn_ms, 2), "target": "report only", "ok": None})
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for row in run(quick):
        print(f"{row['case']:<40} normlab {row['normlab_ms']:8.2f} ms   torch BN {row['torch_ms']:8.2f} ms   "
              f"ratio {row['ratio']:.2f}   vs normlab BN {row['vs_bn']:.2f}")
