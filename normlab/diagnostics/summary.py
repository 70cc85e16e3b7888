"""Run several instruments on one (model, batch) and print them as a table (used by `normlab diagnose`).

The instruments are the registered ones that `normlab diagnose` offers (instrument.diagnosable()): each is built
from the options by its class's `from_options` and measures exactly as its training hook does, so diagnose.json and
diagnostics.jsonl hold rows of the same schema.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import hooks as _hooks   # noqa: F401  - registers the instruments defined there
from .common import LayerSpec, resolve_layers
from .distributions import DEFAULT_PERCENTILES
from .instrument import INSTRUMENTS, Context, Options, diagnosable
from .landscape import SPAN_VGG


def parse_what(what: str | Sequence[str]) -> list[str]:
    """'ics,landscape' or a list -> validated list of instrument names ('all' = every one diagnose offers)."""
    offered = diagnosable()
    items = [w.strip() for w in what.split(",")] if isinstance(what, str) else [str(w) for w in what]
    items = [w for w in items if w]
    if items == ["all"]:
        return offered
    bad = [w for w in items if w not in offered]
    if bad or not items:
        raise ValueError(f"what: unknown instrument(s) {bad or items}; valid: {', '.join(offered)} or all")
    return items


def diagnose(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
             what: str | Sequence[str] = "all", optimizer: torch.optim.Optimizer | None = None,
             lr: float | None = None, layers: LayerSpec = None, span: tuple[float, float] = SPAN_VGG,
             points: int = 8, spacing: str = "linear", bn_mode: str = "train", iters: int | None = None,
             trace_samples: int = 0, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
             seed: int = 0) -> dict[str, Any]:
    """{instrument: its rows} for each name in `what` (a dict for the one-row instruments, a list for the per-layer
    ones). ics needs `optimizer`; landscape needs `lr`.

    `layers` selects the layers of distributions and ics, and the parameter block of hessian (that layer's Hessian);
    landscape and bound always cover the whole model (every BN layer), which out["notes"] says when `layers` is set.
    An index or name that the model does not have is refused before anything is measured.

    Examples::

        >>> import torch, torch.nn as nn, normlab
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), normlab.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> out = diagnose(model, nn.functional.cross_entropy, x, y, what="bound,hessian", iters=50)
        >>> [(r["layer"], r["identity_holds"], r["bound_holds"]) for r in out["bound"]]   # Theorem 4.1, per BN layer
        [('1', True, True)]
        >>> out["hessian"]["converged"], round(out["hessian"]["eigenvalue"], 2)              # top eigenvalue of H
        (True, 1.14)
    """
    names = parse_what(what)
    if layers is not None:
        resolve_layers(model, layers, need_weight=False)   # a ValueError naming the valid layers
    ctx = Context(model, loss_fn, x, y, optimizer, lr)
    opts = Options(layers, span, points, spacing, bn_mode, iters, trace_samples, percentiles, seed)
    classes = {name: INSTRUMENTS.get(name) for name in names}
    for cls in classes.values():
        for attr, why in cls.needs.items():
            if getattr(ctx, attr) is None:
                raise ValueError(f"{attr}: {why}")
    out: dict[str, Any] = {name: cls.from_options(opts)(ctx) for name, cls in classes.items()}
    whole = [n for n, cls in classes.items() if cls.whole_model]
    if layers is not None and whole:
        out["notes"] = [f"--layers does not apply to {', '.join(whole)}: measured on the whole model"]
    return out


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[_f(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for k, r in enumerate(cells):
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def format_table(results: dict[str, Any]) -> str:
    """Human-readable tables of diagnose()'s results (the JSON holds everything)."""
    lines: list[str] = []
    if "distributions" in results:
        rows = results["distributions"]
        qs = list(rows[0]["percentiles"]) if rows else []
        lines += _table("distributions (per-unit percentiles averaged over units)",
                        ["layer", "units", "m", "mean", "var"] + [f"p{q}" for q in qs],
                        [[r["layer"], r["units"], r["m"], r["layer_mean"], r["layer_var"]]
                         + [float(torch.tensor(r["percentiles"][q]).mean()) for q in qs] for r in rows])
    if "ics" in results:
        lines += _table("internal covariate shift (Definition 2.1)",
                        ["layer", "index", "l2", "cos", "rel_l2", "|G|", "finite"],
                        [[r["layer"], r["index"], r["l2"], r["cos"], r["rel_l2"], r["g_norm"], r["finite"]]
                         for r in results["ics"]])
    if "landscape" in results:
        r = results["landscape"]
        lines += _table(f"landscape along -g (bn_mode={r['bn_mode']})",
                        ["s_min", "s_max", "points", "loss0", "loss_min", "loss_max", "pred_max", "pred_mean",
                         "beta_max", "finite"],
                        [[r["multipliers"][0], r["multipliers"][-1], len(r["multipliers"]), r["loss0"],
                          *r["loss_range"], r["pred_max"], r["pred_mean"], r["beta_max"], r["finite"]]])
    if "hessian" in results:
        r = results["hessian"]
        lines += _table(f"Hessian (bn_mode={r['bn_mode']})",
                        ["top_eigenvalue", "iterations", "residual", "converged", "trace", "trace_stderr", "finite"],
                        [[r["eigenvalue"], r["iterations"], r["residual"], r["converged"], r.get("trace"),
                          r.get("trace_stderr"), r["finite"]]])
    if "bound" in results:
        lines += _table("Theorem 4.1 per BN layer (sums over units)",
                        ["layer", "lhs", "rhs_identity", "rhs_theorem", "identity_err", "bound", "shrink_mean",
                         "removed_frac", "grad_ratio"],
                        [[r["layer"], r["lhs"], r["rhs_identity"], r["rhs_theorem"], r["identity_err"],
                          r["bound_holds"], r["shrink_mean"], r["removed_frac"], r["grad_ratio"]]
                         for r in results["bound"]])
        if not results["bound"]:
            lines.append("  (no standard BatchNorm layers)")
    lines += [f"note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines)
