"""torch.compile with normlab layers (issue 18): eager and compiled, normlab and torch.nn, fwd+bwd per training step.

Cases: a conv net with BatchNorm and GroupNorm (conv-BN-ReLU-conv-GN-ReLU-pool-linear, batch 32, 16x16, 32 channels)
and the Ioffe & Szegedy MNIST MLP (784-100-100-100-10 with BN and sigmoid, batch 60). `breaks`: graph breaks that
torch._dynamo.explain reports for the normlab model (0 expected). Targets: compiled normlab within 1.2x of compiled
torch.nn; the `vs eager` column is compiled normlab / eager normlab (<= 1 expected).
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import normlab
from normlab import fast


def _convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.GroupNorm(8, 32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _mlp() -> nn.Module:
    layers, width = [], 784
    for _ in range(3):
        layers += [nn.Linear(width, 100, bias=False), nn.BatchNorm1d(100), nn.Sigmoid()]
        width = 100
    return nn.Sequential(*layers, nn.Linear(100, 10))


def _step_ms(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    def step():
        model(x).square().mean().backward()
    for _ in range(3):   # warm-up (and compilation)
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _case(name: str, make, x: torch.Tensor, reps: int) -> list[dict]:
    torch.manual_seed(0)
    ref = make()
    ours = normlab.convert(ref)
    eager = {"normlab": _step_ms(ours, x, reps), "torch": _step_ms(ref, x, reps)}
    torch._dynamo.reset()
    breaks = torch._dynamo.explain(ours)(x).graph_break_count
    torch._dynamo.reset()
    compiled = {"normlab": _step_ms(torch.compile(ours), x, reps), "torch": _step_ms(torch.compile(ref), x, reps)}
    return [
        {"bench": "compile", "case": f"{name} eager", "normlab_ms": eager["normlab"], "torch_ms": eager["torch"],
         "target": "-", "ok": None, "breaks": "-", "vs eager": "-"},
        {"bench": "compile", "case": f"{name} compiled", "normlab_ms": compiled["normlab"],
         "torch_ms": compiled["torch"], "target": 1.2, "ok": compiled["normlab"] <= 1.2 * compiled["torch"],
         "breaks": breaks, "vs eager": f"{compiled['normlab'] / eager['normlab']:.2f}"},
    ]


def run(quick: bool = False) -> list[dict]:
    fast.prepare()   # the kernels are built before tracing, never inside a step
    reps = 10 if quick else 40
    torch.manual_seed(0)
    rows = _case("convnet BN+GN (32, 3, 16, 16)", _convnet, torch.randn(32, 3, 16, 16), reps)
    rows += _case("Ioffe MLP (60, 784)", _mlp, torch.randn(60, 784), reps)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
