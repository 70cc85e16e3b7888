"""normlab layers vs their torch.nn twins: forward and forward+backward, float32, training mode, side by side.

Targets (issue 2, eager mode, 2 threads): BatchNorm2d forward+backward <= 2.5x torch.nn, BatchNorm1d <= 2x.
Each row also gives the fraction of the copy-bandwidth ceiling achieved, counting only the bytes that must move:
forward reads x and writes y (2 tensors); forward+backward reads x and g and writes y and dx (4 tensors).
"""
from __future__ import annotations

import torch
from torch import nn

import normlab
from benchmarks import compare_ms, copy_bandwidth_gbps

TARGETS = {"BN2d": 2.5, "BN1d": 2.0}

# (label, torch layer, normlab layer, input shape, memory format)
CASES = [
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (128, 64, 32, 32), None),
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (128, 64, 32, 32), torch.channels_last),
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (32, 64, 56, 56), None),
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (32, 64, 56, 56), torch.channels_last),
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (8, 64, 32, 32), None),
    ("BN2d", lambda: nn.BatchNorm2d(64), lambda: normlab.BatchNorm2d(64), (8, 64, 32, 32), torch.channels_last),
    ("BN2d", lambda: nn.BatchNorm2d(256), lambda: normlab.BatchNorm2d(256), (128, 256, 8, 8), None),
    ("BN2d", lambda: nn.BatchNorm2d(256), lambda: normlab.BatchNorm2d(256), (128, 256, 8, 8), torch.channels_last),
    ("BN1d", lambda: nn.BatchNorm1d(1024), lambda: normlab.BatchNorm1d(1024), (4096, 1024), None),
    ("GN32", lambda: nn.GroupNorm(32, 64), lambda: normlab.GroupNorm(32, 64), (32, 64, 56, 56), None),
    ("LN", lambda: nn.LayerNorm([64, 56, 56]), lambda: normlab.LayerNorm([64, 56, 56]), (32, 64, 56, 56), None),
]


def _case_name(label: str, shape: tuple[int, ...], fmt) -> str:
    layout = "" if fmt is None else " CL"
    return f"{label} {'x'.join(map(str, shape))}{layout}"


def run(quick: bool = False) -> list[dict]:
    reps = 5 if quick else 20
    gbps, copy_ms = copy_bandwidth_gbps(128 if quick else 256, reps)
    rows = [{"bench": "layers", "case": "memory-bandwidth ceiling (large copy)", "normlab_ms": copy_ms,
             "torch_ms": copy_ms, "GB/s": gbps}]
    for label, make_ref, make_mine, shape, fmt in CASES:
        torch.manual_seed(0)
        x = torch.randn(shape)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        g = torch.randn_like(x)
        layers = {"torch": make_ref(), "normlab": make_mine()}
        xs = {k: x.clone().requires_grad_() for k in layers}

        def fwd(k: str):
            return lambda: layers[k](xs[k])

        def fwd_bwd(k: str):
            def step():
                layers[k](xs[k]).backward(g)
                xs[k].grad = None
                layers[k].zero_grad(set_to_none=True)
            return step

        nbytes = x.numel() * x.element_size()
        for kind, make, tensors in (("fwd", fwd, 2), ("fwd+bwd", fwd_bwd, 4)):
            ms = compare_ms({k: make(k) for k in layers}, reps=reps)
            ratio = ms["normlab"] / ms["torch"]
            target = TARGETS.get(label) if kind == "fwd+bwd" else None
            rows.append({
                "bench": "layers", "case": f"{_case_name(label, shape, fmt)} {kind}",
                "normlab_ms": ms["normlab"], "torch_ms": ms["torch"], "ratio": ratio, "target": target,
                "ok": None if target is None else ratio <= target,
                "GB/s": tensors * nbytes / (ms["normlab"] * 1e-3) / 1e9,
                "nl % ceil": 100 * tensors * nbytes / (ms["normlab"] * 1e-3) / 1e9 / gbps,
                "torch % ceil": 100 * tensors * nbytes / (ms["torch"] * 1e-3) / 1e9 / gbps,
            })
    return rows
