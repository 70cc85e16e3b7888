"""The fast path of normlab's normalization core: fused float32 CPU kernels for the forward and first backward.

core.NormalizeFn asks `plan(x, dims, p, weight, bias, shape)` whether a call fits; a Plan means the C kernels
(kernels.h, bn.c, rows.c; built once per machine by _build.py) compute y = w * xhat + b and the statistics in one
call, and the first-order backward (dx, dw, db) in another. Same math as the eager path, same numbers to float32
rounding; the double backward always takes the eager, differentiable path.

It applies to float32 CPU tensors with p = 2 whose statistic sets form one of three layouts (see kernels.h):
BatchNorm on NCHW / (N, C, L) / (N, C) / channels_last, and any trailing-dims reduction (LayerNorm, GroupNorm,
InstanceNorm on contiguous input), of any size: even on tiny tensors one kernel call costs less Python than the
eager path's ops (docs/performance.md).

Switches: env NORMLAB_FAST=0 turns it off; in Python `set_enabled(False)` / `with disabled():`. The kernels compile
lazily at the first call that fits (once per machine, then cached); when that fails (no compiler, not Linux) normlab
stays on the eager path and `status()` says why.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

THREADED_NUMEL = 1 << 16   # smaller calls run on one thread: waking the pool costs more than it saves
STREAM_BYTES = 16 << 20    # outputs at least this large skip the cache (half this machine's 32 MB L3)

_on = os.environ.get("NORMLAB_FAST", "1").strip().lower() not in ("0", "off", "false", "no")
_lib = None
_ready = False   # _lib is loaded (a plain bool, so that torch.compile can guard on it)
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

    Eager calls otherwise build them at the first call that fits; under torch.compile / torch.export the fused op is
    used only when the kernels were prepared before tracing (a build is never traced)."""
    return _kernels() is not None


def status() -> dict:
    """{"enabled", "available", "reason", "compile_s"}: compile_s is None until built, 0.0 when loaded from cache."""
    return {"enabled": _on, "available": _lib is not None, "reason": _error, "compile_s": _compile_s}


def _kernels():
    global _lib, _error, _compile_s, _ready
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            from . import _build
            try:
                _lib, _compile_s = _build.build()
                _ready = True
            except Exception as exc:   # noqa: BLE001 - any build failure means: stay eager, and say why
                _error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"normlab fast path unavailable, using the eager path: {_error}", RuntimeWarning,
                              stacklevel=3)
    return _lib


# ------------------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """How one normalize call maps onto the kernels. kind: "ch" (a, c, b), "col" (a=R, c=C) or "rows" (a=R, c=K).

    Affine on rows: period P and nb blocks per row (weight index (r % P) * nb + k // (K / nb)); nb = 0 elementwise.
    """
    kind: str
    a: int
    c: int
    b: int
    stat_shape: tuple[int, ...]
    memory_format: torch.memory_format
    split: int = 0   # rows: the first reduced dim
    period: int = 1
    nb: int = 1


def _channels_last(x: torch.Tensor) -> torch.memory_format | None:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _layout(x: torch.Tensor, dims: tuple[int, ...]) -> Plan | None:
    nd, shape = x.dim(), tuple(x.shape)
    stat_shape = tuple(1 if d in dims else s for d, s in enumerate(shape))
    contiguous = torch.contiguous_format
    if x.is_contiguous():
        for k in range(nd):   # trailing dims k.. reduced: one set per row of the (R, K) view
            if dims == tuple(range(k, nd)):
                return Plan("rows", math.prod(shape[:k]), math.prod(shape[k:]), 1, stat_shape, contiguous, k)
        if nd >= 2 and dims == (0, *range(2, nd)):
            inner = math.prod(shape[2:])
            if inner == 1:
                return Plan("col", shape[0], shape[1], 1, stat_shape, contiguous)
            return Plan("ch", shape[0], shape[1], inner, stat_shape, contiguous)
        return None
    fmt = _channels_last(x)
    if fmt is not None and dims == (0, *range(2, nd)):
        return Plan("col", x.numel() // shape[1], shape[1], 1, stat_shape, fmt)
    return None


def _with_affine(plan: Plan, x: torch.Tensor, wshape: list[int]) -> Plan | None:
    """Check that the affine (weights broadcast as `wshape` over x) fits the plan; fill in period / nb for rows."""
    nd, shape = x.dim(), list(x.shape)
    full = [1] * (nd - len(wshape)) + list(wshape)
    if plan.kind in ("ch", "col"):
        return plan if full == [1, shape[1]] + [1] * (nd - 2) else None
    k = plan.split
    lead, trail = full[:k], full[k:]
    if all(s == 1 for s in lead):
        period = 1
    elif k >= 1 and all(s == 1 for s in lead[:-1]) and lead[-1] == shape[k - 1]:
        period = shape[k - 1]
    else:
        return None
    j = len(trail)
    while j > 0 and trail[j - 1] == 1:
        j -= 1
    if trail[:j] != shape[k:k + j]:
        return None
    nb = math.prod(shape[k:k + j])
    if nb == plan.c and period == 1:
        nb = 0   # elementwise (LayerNorm)
    elif nb == plan.c and period > 1:
        return None
    return Plan(plan.kind, plan.a, plan.c, plan.b, plan.stat_shape, plan.memory_format, k, period, nb)


def _make_plan(x: torch.Tensor, dims: tuple[int, ...], weight: torch.Tensor | None, bias: torch.Tensor | None,
               shape: tuple[int, ...] | None) -> Plan | None:
    nd = x.dim()
    if x.dtype != torch.float32 or x.device.type != "cpu" or nd == 0 or x.numel() == 0:
        return None
    dset = tuple(sorted({d % nd for d in dims}))
    if len(dset) != len(dims):
        return None
    pl = _layout(x, dset)
    if pl is None or (weight is None and bias is None):
        return pl
    if any(t is not None and (t.dtype != torch.float32 or t.device.type != "cpu") for t in (weight, bias)):
        return None
    if weight is not None and bias is not None and weight.shape != bias.shape:
        return None   # the kernels read as many biases as weights: never past the end of a shorter one
    try:
        wshape = (weight if weight is not None else bias).view(list(shape)).shape
    except (RuntimeError, TypeError):
        return None   # the eager affine raises its own error
    return _with_affine(pl, x, list(wshape)) if len(wshape) <= nd else None


_plans: dict[tuple, Plan | None] = {}


def traceable_fits(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Under torch.compile / export: whether the fused op (normlab.fast.ops) takes this call. Only dtype and device
    decide, which the compiler guards on; the op itself falls back to torch ops where the kernels' layout does not fit.
    """
    if not (_on and _ready and x.dtype == torch.float32 and x.device.type == "cpu"):
        return False
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in (weight, bias))


def backend(device: torch.device) -> str | None:
    """The device-dispatch seam: the fused kernels that serve `device` ("cpu"), or None (the eager core)."""
    return "cpu" if torch.device(device).type == "cpu" else None


def _meta(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.dtype, t.device, t.shape)


def plan(x: torch.Tensor, dims: Sequence[int], p: float, weight: torch.Tensor | None = None,
         bias: torch.Tensor | None = None, shape: Sequence[int] | None = None) -> Plan | None:
    """A Plan when the fast path should run normalize(x, dims) (and the affine weight/bias viewed as `shape`).

    Called on every normalization, so the common case is one dictionary lookup: layouts repeat every step.
    """
    if not _on or p != 2:
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
        pl = _plans[key] = _make_plan(x, dims, weight, bias, shape)
    if pl is None or (_lib is None and _kernels() is None):
        return None
    return pl


# ----------------------------------------------------------------------------------------------------- kernels
def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _affine_args(weight: torch.Tensor | None, bias: torch.Tensor | None):
    """Contiguous float32 (w, b), or (None, None) without affine; a missing one of the two becomes ones / zeros."""
    if weight is None and bias is None:
        return None, None
    w = torch.ones(bias.numel(), dtype=bias.dtype) if weight is None else weight.contiguous()
    b = torch.zeros(weight.numel(), dtype=weight.dtype) if bias is None else bias.contiguous()
    return w, b


def _threads(x: torch.Tensor) -> int:
    return torch.get_num_threads() if x.numel() >= THREADED_NUMEL else 1


def _stream(x: torch.Tensor) -> int:
    return int(x.numel() * x.element_size() >= STREAM_BYTES)


_local = threading.local()


def _scratch(pl: Plan) -> int | None:
    """Address of the ch / col kernels' work space: one buffer per thread, kept and grown as needed (allocated by
    torch, so running out of memory is a clean error). Calls on one thread never overlap, so they can share it."""
    if pl.kind == "rows":
        return None
    nbytes = _lib.scratch_bytes(int(pl.kind == "col"), pl.a, pl.c, pl.b)
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.numel() < nbytes:
        buf = _local.scratch = torch.empty(nbytes, dtype=torch.uint8)
    return buf.data_ptr()


def forward(pl: Plan, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
    """(y, mean, var, rstd): y = w * xhat + b (xhat without affine) in x's memory format; mean/var keepdim
    (the biased variance, as core.statistics), rstd flat (one per statistic set)."""
    y = torch.empty_like(x)
    sets = pl.c if pl.kind in ("ch", "col") else pl.a
    # dtype explicit: under torch.set_default_dtype(torch.float64) the kernels would write float32 into float64 buffers
    mean, var = torch.empty(pl.stat_shape, dtype=torch.float32), torch.empty(pl.stat_shape, dtype=torch.float32)
    rstd = torch.empty(sets, dtype=torch.float32)
    w, b = _affine_args(weight, bias)
    nt, args = _threads(x), (float(eps), mean.data_ptr(), var.data_ptr(), rstd.data_ptr())
    if pl.kind == "ch":
        _lib.ch_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, pl.b, _ptr(w), _ptr(b), *args, _scratch(pl), _stream(x),
                    nt)
    elif pl.kind == "col":
        _lib.col_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, _ptr(w), _ptr(b), *args, _scratch(pl), _stream(x), nt)
    else:
        _lib.rows_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, _ptr(w), _ptr(b), pl.period, pl.nb, *args, _stream(x), nt)
    return y, mean, var, rstd


def backward(pl: Plan, g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             weight: torch.Tensor | None, bias: torch.Tensor | None):
    """First-order (dx, dw, db) for the forward above; dw / db are None where weight / bias is None."""
    if not g.is_contiguous(memory_format=pl.memory_format):   # e.g. the expanded gradient of y.sum()
        g = g.contiguous(memory_format=pl.memory_format)
    dx = torch.empty_like(x, memory_format=pl.memory_format)
    w, _ = _affine_args(weight, bias)
    # dw, db in the parameters' shapes (same number of values); the one without a parameter is computed and dropped
    dw = None if w is None else torch.empty(weight.shape if weight is not None else bias.shape, dtype=w.dtype)
    db = None if w is None else torch.empty(bias.shape if bias is not None else weight.shape, dtype=w.dtype)
    nt = _threads(x)
    head = (g.data_ptr(), x.data_ptr(), dx.data_ptr())
    stats = (mean.data_ptr(), rstd.data_ptr(), _ptr(w), _ptr(dw), _ptr(db))
    if pl.kind == "ch":
        _lib.ch_bwd(*head, pl.a, pl.c, pl.b, *stats, _scratch(pl), _stream(x), nt)
    elif pl.kind == "col":
        _lib.col_bwd(*head, pl.a, pl.c, *stats, _scratch(pl), _stream(x), nt)
    else:
        if w is None:
            part = None
        elif pl.nb == 0:
            part = torch.empty(2 * nt * pl.c, dtype=torch.float32)
        else:
            part = torch.empty(2 * pl.a * pl.nb, dtype=torch.float32)
        _lib.rows_bwd(*head, pl.a, pl.c, mean.data_ptr(), rstd.data_ptr(), _ptr(w), pl.period, pl.nb, _ptr(dw),
                      _ptr(db), _ptr(part), _stream(x), nt)
    return dx, dw if weight is not None else None, db if bias is not None else None


from . import ops  # noqa: E402,F401  - registers normlab::norm_fwd / norm_bwd (they call back into this module)
