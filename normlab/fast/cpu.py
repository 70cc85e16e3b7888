"""The CPU backend of normlab.fast: how a normalize call maps onto the C kernels (kernels.h, bn.c, rows.c), and the
calls themselves (ctypes, on the library that normlab.fast.prepare() built).

`make_plan(x, dims, weight, bias, shape)` says whether and how a float32 CPU call fits the kernels' three layouts;
`forward` / `backward` run them. Every function takes the loaded library, the thread count and the streaming flag
from normlab.fast (the device-independent front: switches, build, dispatch by device), so this module imports
nothing of normlab and another backend (a CUDA one) would be a sibling module with the same three functions.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

DEVICE = "cpu"


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


def make_plan(x: torch.Tensor, dims: tuple[int, ...], weight: torch.Tensor | None, bias: torch.Tensor | None,
               shape: tuple[int, ...] | None) -> Plan | None:
    nd = x.dim()
    if x.dtype != torch.float32 or x.device.type != DEVICE or nd == 0 or x.numel() == 0:
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



def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _affine_args(weight: torch.Tensor | None, bias: torch.Tensor | None):
    """Contiguous float32 (w, b), or (None, None) without affine; a missing one of the two becomes ones / zeros."""
    if weight is None and bias is None:
        return None, None
    w = torch.ones(bias.numel(), dtype=bias.dtype) if weight is None else weight.contiguous()
    b = torch.zeros(weight.numel(), dtype=weight.dtype) if bias is None else bias.contiguous()
    return w, b


_local = threading.local()


def _scratch(lib, pl: Plan) -> int | None:
    """Address of the ch / col kernels' work space: one buffer per thread, kept and grown as needed (allocated by
    torch, so running out of memory is a clean error). Calls on one thread never overlap, so they can share it."""
    if pl.kind == "rows":
        return None
    nbytes = lib.scratch_bytes(int(pl.kind == "col"), pl.a, pl.c, pl.b)
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.numel() < nbytes:
        buf = _local.scratch = torch.empty(nbytes, dtype=torch.uint8)
    return buf.data_ptr()


def forward(lib, pl: Plan, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
            nt: int, stream: int):
    """(y, mean, var, rstd): y = w * xhat + b (xhat without affine) in x's memory format; mean/var keepdim
    (the biased variance, as core.statistics), rstd flat (one per statistic set). nt threads; stream: 1 to write
    the output past the cache."""
    y = torch.empty_like(x)
    sets = pl.c if pl.kind in ("ch", "col") else pl.a
    # dtype explicit: under torch.set_default_dtype(torch.float64) the kernels would write float32 into float64 buffers
    mean, var = torch.empty(pl.stat_shape, dtype=torch.float32), torch.empty(pl.stat_shape, dtype=torch.float32)
    rstd = torch.empty(sets, dtype=torch.float32)
    w, b = _affine_args(weight, bias)
    args = (float(eps), mean.data_ptr(), var.data_ptr(), rstd.data_ptr())
    if pl.kind == "ch":
        lib.ch_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, pl.b, _ptr(w), _ptr(b), *args, _scratch(lib, pl), stream,
                    nt)
    elif pl.kind == "col":
        lib.col_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, _ptr(w), _ptr(b), *args, _scratch(lib, pl), stream, nt)
    else:
        lib.rows_fwd(x.data_ptr(), y.data_ptr(), pl.a, pl.c, _ptr(w), _ptr(b), pl.period, pl.nb, *args, stream, nt)
    return y, mean, var, rstd


def backward(lib, pl: Plan, g: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             weight: torch.Tensor | None, bias: torch.Tensor | None, nt: int, stream: int):
    """First-order (dx, dw, db) for the forward above; dw / db are None where weight / bias is None."""
    if not g.is_contiguous(memory_format=pl.memory_format):   # e.g. the expanded gradient of y.sum()
        g = g.contiguous(memory_format=pl.memory_format)
    dx = torch.empty_like(x, memory_format=pl.memory_format)
    w, _ = _affine_args(weight, bias)
    # dw, db in the parameters' shapes (same number of values); the one without a parameter is computed and dropped
    dw = None if w is None else torch.empty(weight.shape if weight is not None else bias.shape, dtype=w.dtype)
    db = None if w is None else torch.empty(bias.shape if bias is not None else weight.shape, dtype=w.dtype)
    head = (g.data_ptr(), x.data_ptr(), dx.data_ptr())
    stats = (mean.data_ptr(), rstd.data_ptr(), _ptr(w), _ptr(dw), _ptr(db))
    if pl.kind == "ch":
        lib.ch_bwd(*head, pl.a, pl.c, pl.b, *stats, _scratch(lib, pl), stream, nt)
    elif pl.kind == "col":
        lib.col_bwd(*head, pl.a, pl.c, *stats, _scratch(lib, pl), stream, nt)
    else:
        if w is None:
            part = None
        elif pl.nb == 0:
            part = torch.empty(2 * nt * pl.c, dtype=torch.float32)
        else:
            part = torch.empty(2 * pl.a * pl.nb, dtype=torch.float32)
        lib.rows_bwd(*head, pl.a, pl.c, mean.data_ptr(), rstd.data_ptr(), _ptr(w), pl.period, pl.nb, _ptr(dw),
                      _ptr(db), _ptr(part), stream, nt)
    return dx, dw if weight is not None else None, db if bias is not None else None

