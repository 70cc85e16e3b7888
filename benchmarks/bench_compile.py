"""torch.compile with normlab layers (issue 18): eager and compiled, normlab and torch.nn, fwd+bwd per training step.

Cases: a conv net with BatchNorm and GroupNorm (conv-BN-ReLU-conv-GN-ReLU-pool-linear, batch 32, 16x16, 32 channels)
and the Ioffe & Szegedy MNIST MLP (784-100-100-100-10 with BN and sigmoid, batch 60). `breaks`: graph breaks that
torch._dynamo.explain reports for the normlab model (0 expected). Targets: compiled normlab within 1.2x of compiled
torch.nn; the `vs eager` column is compiled normlab / eager normlab (<= 1 expected).
"""
from __future__ import annotations

import copy
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


def _steps_ms(models: dict[str, nn.Module], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms per training step (fwd + bwd) of each model, timed in rotation (one step of each per round), so
    that a change in the machine's load shifts all of them alike."""
    def step(model):
        model(x).square().mean().backward()
    for model in models.values():   # warm-up (and compilation)
        for _ in range(3):
            step(model)
    times = {name: [] for name in models}
    for _ in range(reps):
        for name, model in models.items():
            t0 = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _case(name: str, make, x: torch.Tensor, reps: int) -> list[dict]:
    torch.manual_seed(0)
    ref = make()
    ours = normlab.convert(ref)
    torch._dynamo.reset()
    breaks = torch._dynamo.explain(ours)(x).graph_break_count
    torch._dynamo.reset()
    ms = _steps_ms({"normlab": ours, "torch": ref, "normlab compiled": torch.compile(copy.deepcopy(ours)),
                    "torch compiled": torch.compile(copy.deepcopy(ref))}, x, reps)
    return [
        {"bench": "compile", "case": f"{name} eager", "normlab_ms": ms["normlab"], "torch_ms": ms["torch"],
         "target": "-", "ok": None, "breaks": "-", "vs eager": "-"},
        {"bench": "compile", "case": f"{name} compiled", "normlab_ms": ms["normlab compiled"],
         "torch_ms": ms["torch compiled"], "target": 1.2, "ok": ms["normlab compiled"] <= 1.2 * ms["torch compiled"],
         "breaks": breaks, "vs eager": f"{ms['normlab compiled'] / ms['normlab']:.2f}"},
    ]


def run(quick: bool = False) -> list[dict]:
    fast.prepare()   # the kernels are built before tracing, never inside a step
    reps = 10 if quick else 100
    torch.manual_seed(0)
    rows = _case("convnet BN+GN (32, 3, 16, 16)", _convnet, torch.randn(32, 3, 16, 16), reps)
    rows += _case("Ioffe MLP (60, 784)", _mlp, torch.randn(60, 784), reps)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
