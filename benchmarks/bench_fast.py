"""Issue 7: normlab's fast path vs its eager path vs torch.nn, forward+backward, float32, training mode, side by side.

Targets (2 threads): BatchNorm2d fwd+bwd <= 0.8x torch.nn on (128,64,32,32), (32,64,56,56), (128,256,8,8), NCHW and
channels_last; >= 0.6 of the copy bandwidth on the largest shape (NCHW); GroupNorm(32) and LayerNorm fwd+bwd <= 1.0x.
A BatchNorm1d (60, 100) row (the Ioffe MLP's layer; no target) shows the per-call cost on a tiny tensor.
"of copy" / "torch of copy": the bytes fwd+bwd must move at least (read x, write y; read x and g, write dx: 5 tensors)
per second, over the large-copy bandwidth (a row near 1 cannot get much faster); for the target row the copy (of 4x
the tensor) is timed interleaved with the same runs, so a busy machine slows both alike. Compile time has its own
rows; the allocator rows time child processes with and without tcmalloc preloaded. Standalone: python benchmarks/bench_fast.py [--quick]
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import normlab  # noqa: E402
from benchmarks import compare_ms, copy_bandwidth_gbps  # noqa: E402
from normlab import fast  # noqa: E402
from normlab.fast import _build, alloc  # noqa: E402

BIG = (128, 64, 32, 32)
TARGETS = {"BN2d": 0.8, "GN32": 1.0, "LN": 1.0, "BN1d": None}   # BN1d: the Ioffe MLP's layer, no target
BW_TARGET = 0.6
CASES = [("BN2d", lambda c=s[1]: nn.BatchNorm2d(c), lambda c=s[1]: normlab.BatchNorm2d(c), s, fmt)
         for s in (BIG, (32, 64, 56, 56), (128, 256, 8, 8)) for fmt in (None, torch.channels_last)]
CASES += [("GN32", lambda: nn.GroupNorm(32, 64), lambda: normlab.GroupNorm(32, 64), (32, 64, 56, 56), None),
          ("LN", lambda: nn.LayerNorm([64, 56, 56]), lambda: normlab.LayerNorm([64, 56, 56]), (32, 64, 56, 56), None),
          ("BN1d", lambda: nn.BatchNorm1d(100), lambda: normlab.BatchNorm1d(100), (60, 100), None)]

CHILD = """
import json, sys, torch
sys.path.insert(0, {root!r})
import normlab
from benchmarks import compare_ms
from normlab.fast import alloc
torch.set_num_threads(2)
x = torch.randn({shape}).requires_grad_()
g = torch.randn_like(x)
layers = {{"torch": torch.nn.BatchNorm2d({c}), "normlab": normlab.BatchNorm2d({c})}}
def step(k):
    def f():
        layers[k](x).backward(g)
        x.grad = None
    return f
fns = {{k: step(k) for k in layers}}
fns["clone"] = lambda: x.detach().clone()
print(json.dumps(dict(compare_ms(fns, reps={reps}), tcmalloc=alloc.tcmalloc_loaded())))
"""


def _compile_rows() -> list[dict]:
    """A fresh build in an empty cache (what the first use on a machine pays) and a load from the cache."""
    old = os.environ.get("NORMLAB_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NORMLAB_CACHE"] = tmp
        try:
            _, fresh = _build.build()
        except RuntimeError as exc:
            return [{"bench": "fast", "case": f"compile kernels: unavailable ({exc})", "ok": False}]
        finally:
            if old is None:
                os.environ.pop("NORMLAB_CACHE", None)
            else:
                os.environ["NORMLAB_CACHE"] = old
    fast.prepare()
    t0 = time.perf_counter()
    _build.build()
    load = time.perf_counter() - t0
    return [{"bench": "fast", "case": "compile kernels (first use on a machine, gcc)", "normlab_ms": 1e3 * fresh},
            {"bench": "fast", "case": "load kernels from the cache (once per process)", "normlab_ms": 1e3 * load}]


def _layer_row(label, make_ref, make_mine, shape, fmt, reps: int, gbps: float) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(shape)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    g = torch.randn_like(x)
    ref, mine = make_ref(), make_mine()

    def step(layer, use_fast: bool):
        xx = x.clone().requires_grad_()

        def f():
            with contextlib.nullcontext() if use_fast else fast.disabled():
                layer(xx).backward(g)
            xx.grad = None
            layer.zero_grad(set_to_none=True)
        return f

    fns = {"fast": step(mine, True), "torch": step(ref, False), "eager": step(mine, False)}
    target_row = label == "BN2d" and shape == BIG and fmt is None
    if target_row:   # a large copy side by side with the layers: the ceiling under the same conditions
        src = torch.randn(4 * x.numel())
        dst = torch.empty_like(src)
        fns["copy"] = lambda: dst.copy_(src)
    ms = compare_ms(fns, reps=reps)
    ratio = ms["fast"] / ms["torch"]
    frac = 5 * x.numel() * 4 / (ms["fast"] * 1e-3) / 1e9 / gbps
    torch_frac = 5 * x.numel() * 4 / (ms["torch"] * 1e-3) / 1e9 / gbps   # how close torch.nn already is to the floor
    name = f"{label} {'x'.join(map(str, shape))}{' CL' if fmt is not None else ''} fwd+bwd"
    rows = [{"bench": "fast", "case": name, "normlab_ms": ms["fast"], "torch_ms": ms["torch"],
             "ratio": ratio, "target": TARGETS[label], "ok": None if TARGETS[label] is None else ratio <= TARGETS[label],
             "eager ms": ms["eager"], "of copy": frac, "torch of copy": torch_frac}]
    if target_row:
        side = 2 * src.numel() * 4 / (ms["copy"] * 1e-3) / 1e9
        frac = 5 * x.numel() * 4 / (ms["fast"] * 1e-3) / 1e9 / side
        rows.append({"bench": "fast", "case": f"{name}: fraction of copy bandwidth", "normlab_ms": ms["fast"],
                     "target": f">= {BW_TARGET} of copy", "ok": frac >= BW_TARGET, "GB/s": side, "of copy": frac})
    return rows


def _allocator_rows(reps: int) -> list[dict]:
    """BN2d (128,64,32,32) fwd+bwd and a 33.6 MB clone in child processes on glibc malloc and on tcmalloc."""
    if alloc.tcmalloc_path() is None:
        return [{"bench": "fast", "case": "allocator: tcmalloc not installed (apt-get install libtcmalloc-minimal4)"}]
    code = CHILD.format(root=str(ROOT), shape=BIG, c=BIG[1], reps=reps)
    res = {}
    for use in (False, True):
        out = subprocess.run([sys.executable, "-c", code], env=alloc.environ(use), capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        if out.returncode != 0:
            return [{"bench": "fast", "case": f"allocator: child failed: {out.stderr.strip()[-300:]}", "ok": False}]
        res[use] = json.loads(out.stdout.strip().splitlines()[-1])
    if not res[True]["tcmalloc"] or res[False]["tcmalloc"]:
        return [{"bench": "fast", "case": "allocator: LD_PRELOAD did not take effect", "ok": False}]
    names = {"torch": "torch.nn BN2d 128x64x32x32 fwd+bwd", "normlab": "normlab BN2d 128x64x32x32 fwd+bwd",
             "clone": "clone of 33.6 MB"}
    return [{"bench": "fast", "case": f"allocator: {names[k]}", "glibc ms": res[False][k], "tcmalloc ms": res[True][k],
             "glibc/tcmalloc": res[False][k] / res[True][k]} for k in names]


def run(quick: bool = False) -> list[dict]:
    reps = 5 if quick else 20
    torch.set_num_threads(2)
    rows = _compile_rows()
    if not fast.prepare():
        return rows
    gbps, copy_ms = copy_bandwidth_gbps(128 if quick else 256, reps)
    rows.append({"bench": "fast", "case": "memory-bandwidth ceiling (large copy)", "normlab_ms": copy_ms,
                 "torch_ms": copy_ms, "GB/s": gbps, "allocator": "tcmalloc" if alloc.tcmalloc_loaded() else "glibc"})
    for case in CASES:
        rows += _layer_row(*case, reps=reps, gbps=gbps)
    return rows + _allocator_rows(reps)


if __name__ == "__main__":
    try:
        from benchmarks.run import normalize_row, table
    except ImportError:   # the harness is optional here
        table, normalize_row = None, None
    result = run(quick="--quick" in sys.argv)
    if table is None:
        for r in result:
            print(r)
    else:
        print(table([normalize_row(r) for r in result]))
