"""The fast path of normlab's normalization core: fused float32 CPU kernels for the forward and first backward.

This module is the device-independent front: the switches, the build (`prepare()`), and the dispatch by device to a
backend module (today one: cpu.py, the C kernels). The core's one dispatch point asks `fits(x, dims, weight, bias,
shape)` whether a call fits; a Plan means the backend (the C kernels kernels.h, bn.c, rows.c; built once per machine
by _build.py) computes y = w * xhat + b and the statistics in one call, and the first-order backward (dx, dw, db) in
another. Same math as the eager path, same numbers to float32
rounding; the double backward always takes the eager, differentiable path.

It applies to float32 CPU tensors with p = 2 whose statistic sets form one of three layouts (see kernels.h):
BatchNorm on NCHW / (N, C, L) / (N, C) / channels_last, and any trailing-dims reduction (LayerNorm, GroupNorm,
InstanceNorm on contiguous input), of any size: even on tiny tensors one kernel call costs less Python than the
eager path's ops (docs/performance.md).

Switches: env NORMLAB_FAST=0 turns it off; in Python `set_enabled(False)` / `with disabled():`. The kernels are
built by `prepare()` (once per machine, then cached), which the CLI and normlab.train call before the first forward;
a forward never builds them (until prepared, every call takes the eager path). When the build fails (no compiler,
not Linux) normlab stays on the eager path and `status()` says why.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Iterator, Sequence

import torch

from . import cpu
from .cpu import Plan

_BACKENDS = {cpu.DEVICE: cpu}   # device type -> backend module (make_plan, forward, backward)

THREADED_NUMEL = 1 << 16   # smaller calls run on one thread: waking the pool costs more than it saves
STREAM_BYTES = 16 << 20    # outputs at least this large skip the cache (half this machine's 32 MB L3)

_on = os.environ.get("NORMLAB_FAST", "1").strip().lower() not in ("0", "off", "false", "no")
_lib = None
_error: str | None = None
_compile_s: float | None = None
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------- switches
def set_enabled(on: bool) -> None:
    """True: the kernels for every call that fits (default); False: eager only."""
    global _on
    if not isinstance(on, bool):
        raise ValueError(f"on: expected True or False, got {on!r}")
    _on = on


def enabled() -> bool:
    return _on


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the block on the eager path."""
    global _on
    old, _on = _on, False
    try:
        yield
    finally:
        _on = old


def prepare() -> bool:
    """Build or load the kernels now, ahead of the first forward. True if usable.

    Until then every call takes the eager path (a forward never builds them). torch.compile and torch.export never
    use the kernels: they trace the eager reference's torch ops, which inductor fuses itself."""
    return _kernels() is not None


def status() -> dict:
    """{"enabled", "available", "reason", "compile_s"}: compile_s is None until built, 0.0 when loaded from cache."""
    return {"enabled": _on, "available": _lib is not None, "reason": _error, "compile_s": _compile_s}


def _kernels():
    global _lib, _error, _compile_s
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            from . import _build
            try:
                _lib, _compile_s = _build.build()
            except Exception as exc:   # noqa: BLE001 - any build failure means: stay eager, and say why
                _error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"normlab fast path unavailable, using the eager path: {_error}", RuntimeWarning,
                              stacklevel=3)
    return _lib


# ------------------------------------------------------------------------------------------------------- plans
_plans: dict[tuple, Plan | None] = {}


def backend(device: torch.device | str):
    """The device-dispatch seam: the backend module that serves `device` (cpu for "cpu"), or None (the eager core)."""
    return _BACKENDS.get(torch.device(device).type)


def _meta(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.dtype, t.device, t.shape)


def plan(x: torch.Tensor, dims: Sequence[int], p: float, weight: torch.Tensor | None = None,
         bias: torch.Tensor | None = None, shape: Sequence[int] | None = None) -> Plan | None:
    """A Plan when the fast path would run normalize(x, dims) (and the affine weight/bias viewed as `shape`),
    preparing the kernels first if needed (a query for tools and tests; the core asks `fits`, which never builds)."""
    if not _on or p != 2 or (_lib is None and _kernels() is None):
        return None
    return fits(x, dims, weight, bias, shape)


def fits(x: torch.Tensor, dims: Sequence[int], weight: torch.Tensor | None = None,
         bias: torch.Tensor | None = None, shape: Sequence[int] | None = None) -> Plan | None:
    """A Plan when the prepared kernels run normalize(x, dims) (and the affine weight/bias viewed as `shape`); None
    when the fast path is off, the kernels are not prepared (prepare() builds them, never a forward) or the call does
    not fit. Called on every normalization, so the common case is one dictionary lookup: layouts repeat every step.
    """
    if not _on or _lib is None or x.device.type not in _BACKENDS:
        return None
    try:
        dims, shape = tuple(dims), None if shape is None else tuple(shape)
        key = (x.dtype, x.device, x.shape, x.stride(), dims, _meta(weight), _meta(bias), shape)
    except (TypeError, ValueError, RuntimeError):   # no strides (sparse), odd dims or shape: the eager path decides
        return None
    pl = _plans.get(key, _plans)   # _plans itself marks "not decided yet"
    if pl is _plans:
        if len(_plans) > 1024:
            _plans.clear()
        pl = _plans[key] = _BACKENDS[x.device.type].make_plan(x, dims, weight, bias, shape)
    return pl


# ----------------------------------------------------------------------------------------------------- kernels
def _threads(x: torch.Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= THREADED_NUMEL else 1


def _stream(x: torch.Tensor) -> int:
    return int(x.numel() * x.element_size() >= STREAM_BYTES)


def forward(pl: Plan, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
    """(y, mean, var, rstd) from the backend of x's device (see cpu.forward)."""
    return _BACKENDS[x.device.type].forward(_lib, pl, x, weight, bias, eps, _threads(x), _stream(x))


def backward(pl: Plan, g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             weight: torch.Tensor | None, bias: torch.Tensor | None):
    """First-order (dx, dw, db) from the backend of x's device (see cpu.backward)."""
    return _BACKENDS[x.device.type].backward(_lib, pl, g, x, mean, rstd, weight, bias, _threads(x), _stream(x))


from . import ops  # noqa: E402,F401  - registers normlab::norm_fwd / norm_bwd (they call back into this module)
