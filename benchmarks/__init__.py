"""Benchmarks run by `make bench` (benchmarks/run.py). Shared helpers for the bench_*.py modules.

Each bench_*.py exposes `run(quick: bool = False) -> list[dict]`; a row has "bench", "case" and numbers such as
"normlab_ms", "torch_ms", "ratio", "target", "ok"; any other key becomes an extra column of that bench's table.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import torch


def compare_ms(fns: dict[str, Callable[[], object]], reps: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median wall time in ms of each callable, measured side by side: every repetition runs all of them in turn,
    so a busy machine slows them alike and the ratio stays meaningful. Each repetition starts from the next one in
    the list: a memory-bound call is faster after a neighbour that left its inputs in cache, or slower after one that
    evicted them, and rotating gives every callable every neighbour equally often."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    enabled = gc.isenabled()
    gc.disable()
    try:
        names = list(fns)
        for i in range(reps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    finally:
        if enabled:
            gc.enable()
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def copy_bandwidth_gbps(mbytes: int = 256, reps: int = 20) -> tuple[float, float]:
    """(GB/s, ms) of a large float32 tensor copy: bytes read + bytes written over the median time.
    The ceiling a memory-bound layer can approach (it must at least read its input and write its output)."""
    n = mbytes * 2 ** 20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    ms = compare_ms({"copy": lambda: dst.copy_(src)}, reps=reps, warmup=2)["copy"]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9, ms
