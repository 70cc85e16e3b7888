"""normlab layers vs their torch.nn twins: forward and forward+backward, float32, training mode, side by side.

Three contenders per case, interleaved in every repetition: torch.nn, normlab as shipped (core with the fast path of
normlab.fast where it applies) and normlab's eager core alone (fast path off: plain torch ops, the hand-written
backward). Targets (issue 2, 2 threads): BatchNorm2d forward+backward <= 2.5x torch.nn, BatchNorm1d <= 2x; checked for
both normlab rows. Each row also gives the fraction of the copy-bandwidth ceiling achieved, counting only the bytes
that must move: forward reads x and writes y (2 tensors); forward+backward reads x and g, writes y and dx (4 tensors).
Run alone: `.venv/bin/python benchmarks/run.py --only layers`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

import normlab
from benchmarks import compare_ms, copy_bandwidth_gbps

try:
    from normlab import fast as _fast
except ImportError:      # a checkout without the fast path: normlab is the eager core
    _fast = None

TARGETS = {"BN2d": 2.5, "BN1d": 2.0}

# (label, torch layer, normlab layer, input shape, memory format)
CASES = [
    *[("BN2d", lambda c=s[1]: nn.BatchNorm2d(c), lambda c=s[1]: normlab.BatchNorm2d(c), s, fmt)
      for s in [(128, 64, 32, 32), (32, 64, 56, 56), (8, 64, 32, 32), (128, 256, 8, 8)]
      for fmt in (None, torch.channels_last)],
    ("BN1d", lambda: nn.BatchNorm1d(1024), lambda: normlab.BatchNorm1d(1024), (4096, 1024), None),
    ("GN32", lambda: nn.GroupNorm(32, 64), lambda: normlab.GroupNorm(32, 64), (32, 64, 56, 56), None),
    ("LN", lambda: nn.LayerNorm([64, 56, 56]), lambda: normlab.LayerNorm([64, 56, 56]), (32, 64, 56, 56), None),
]


def _eager():
    return _fast.disabled() if _fast is not None else contextlib.nullcontext()


def _row(case: str, ms: float, torch_ms: float, target: float | None, moved: int, ceiling: float) -> dict:
    ratio = ms / torch_ms
    return {"bench": "layers", "case": case, "normlab_ms": ms, "torch_ms": torch_ms, "ratio": ratio,
            "target": target, "ok": None if target is None else ratio <= target,
            "GB/s": moved / (ms * 1e-3) / 1e9,
            "% ceiling": 100 * moved / (ms * 1e-3) / 1e9 / ceiling,
            "torch % ceiling": 100 * moved / (torch_ms * 1e-3) / 1e9 / ceiling}


def run(quick: bool = False) -> list[dict]:
    reps = 5 if quick else 20
    ceiling, copy_ms = copy_bandwidth_gbps(128 if quick else 256, reps)
    rows = [{"bench": "layers", "case": "memory-bandwidth ceiling: large copy", "normlab_ms": copy_ms,
             "GB/s": ceiling, "% ceiling": 100.0}]
    for label, make_ref, make_mine, shape, fmt in CASES:
        torch.manual_seed(0)
        x = torch.randn(shape)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        g = torch.randn_like(x)
        layers = {"torch": make_ref(), "normlab": make_mine(), "eager": make_mine()}
        xs = {k: x.clone().requires_grad_() for k in layers}
        ctx = {"torch": contextlib.nullcontext, "normlab": contextlib.nullcontext, "eager": _eager}

        def fwd(k: str):
            def step():
                with ctx[k]():
                    layers[k](xs[k])
            return step

        def fwd_bwd(k: str):
            def step():
                with ctx[k]():
                    layers[k](xs[k]).backward(g)
                xs[k].grad = None
                layers[k].zero_grad(set_to_none=True)
            return step

        name = f"{label} {'x'.join(map(str, shape))}{' CL' if fmt is not None else ''}"
        nbytes = x.numel() * x.element_size()
        for kind, make, tensors in (("fwd", fwd, 2), ("fwd+bwd", fwd_bwd, 4)):
            ms = compare_ms({k: make(k) for k in layers}, reps=reps)
            target = TARGETS.get(label) if kind == "fwd+bwd" else None
            rows.append(_row(f"{name} {kind}", ms["normlab"], ms["torch"], target, tensors * nbytes, ceiling))
            rows.append(_row(f"{name} {kind} [eager]", ms["eager"], ms["torch"], target, tensors * nbytes, ceiling))
    return rows
