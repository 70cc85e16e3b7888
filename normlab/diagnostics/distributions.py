"""Activation distributions per unit over training (Ioffe & Szegedy Fig. 1; Santurkar et al. Fig. 1, 2, 8).

What is recorded: for each chosen module, its output (site="output", default) or its input (site="input") on the
batch, in one extra no-grad forward pass in the model's current mode with buffers untouched. For a Linear/Conv layer
the output is W u (+ b): the pre-activation, i.e. the input of the norm that follows (or of the nonlinearity when
there is none). For Ioffe's "input to the sigmoid" in a BN net, record the sigmoid's input (site="input") or the BN
layer's output. A unit is a feature of (N, C) output or a channel of (N, C, *) output, with m = N (x spatial) values.

Per record and layer: per-unit percentiles (linear interpolation, numpy's default), mean and biased variance
(over the m values), the layer-wide histogram over fixed bins, and the change of the per-unit mean and variance
since the previous record of that layer: dmean = mean_j |mean_j(t) - mean_j(t')|, dvar likewise, and their l2
norms over units (Santurkar Fig. 2 right, Fig. 8). Only these summaries are kept, never raw activations.
Histogram range: `hist_range`, or else fixed at a layer's first record to its [min, max] widened by half the width
on each side; values outside go to the "under"/"over" counts, non-finite values to "nonfinite". Edges and binning
are both float64, and a value is counted in the bin whose reported edges hold it (numpy.histogram's rule).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .common import LayerSpec, forward, resolve_layers, rng_fork

DEFAULT_PERCENTILES = (15.0, 50.0, 85.0)


def unit_percentiles(values: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """(len(qs), C) percentiles of each row of values (C, m), numpy's 'linear' rule; NaN rows for non-finite."""
    v, _ = values.sort(dim=1)   # sorted in the input's dtype; only the picked columns go to float64
    m = v.shape[1]
    out = []
    for q in qs:
        pos = q / 100.0 * (m - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        hi = min(lo + 1, m - 1)
        a, b = v[:, lo].double(), v[:, hi].double()
        out.append(a + (b - a) * frac)
    res = torch.stack(out)
    bad = ~torch.isfinite(values).all(dim=1)
    res[:, bad] = float("nan")
    return res


def _bin_counts(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """numpy.histogram's counts over float64 `edges`: bin k is [e_k, e_k+1), the last bin also takes e_n; values
    outside [e_0, e_n] are not counted. Binning compares against the very edges reported (no (x - lo) / width
    arithmetic that could put a value near an edge on the other side of it)."""
    inside = values[(values >= edges[0]) & (values <= edges[-1])].double()
    idx = (torch.bucketize(inside, edges, right=True) - 1).clamp(max=len(edges) - 2)
    return torch.bincount(idx, minlength=len(edges) - 1)


def check_percentiles(qs: Sequence[float]) -> tuple[float, ...]:
    qs = tuple(float(q) for q in qs)
    if not qs or any(not (0.0 <= q <= 100.0) for q in qs):
        raise ValueError(f"percentiles: expected numbers in [0, 100], got {qs!r}")
    return qs


def _by_unit(t: torch.Tensor) -> torch.Tensor:
    """(N,) -> (1, N); (N, C, *) -> (C, N * prod(*))."""
    t = t.detach()
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.transpose(0, 1).reshape(t.shape[1], -1)


class DistributionTracker:
    """Records summaries of chosen layers' activations; keeps the previous record per layer for the deltas.

    layers: None (all weight layers), indices into weight_layers(model), or any module names. site: "output" or
    "input". percentiles: e.g. (15, 50, 85) (Ioffe) or (1, 20, 80, 99) (Wu & He). bins: histogram bins.
    hist_range: (lo, hi) or None (see module docstring). units: indices of the units whose per-unit values are
    stored (None: all); the layer-wide numbers and deltas always use every unit.
    """

    def __init__(self, layers: LayerSpec = None, site: str = "output",
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, bins: int = 50,
                 hist_range: tuple[float, float] | None = None, units: Sequence[int] | None = None) -> None:
        if site not in ("output", "input"):
            raise ValueError(f"site: expected 'output' or 'input', got {site!r}")
        if not (isinstance(bins, int) and bins >= 1):
            raise ValueError(f"bins: expected an int >= 1, got {bins!r}")
        if hist_range is not None and not (len(hist_range) == 2 and float(hist_range[0]) < float(hist_range[1])):
            raise ValueError(f"hist_range: expected (lo, hi) with lo < hi, got {hist_range!r}")
        self.layers, self.site, self.qs, self.bins = layers, site, check_percentiles(percentiles), bins
        self.hist_range = None if hist_range is None else (float(hist_range[0]), float(hist_range[1]))
        self.units = None if units is None else [int(u) for u in units]
        self.ranges: dict[str, tuple[float, float]] = {}
        self.prev: dict[str, tuple[int | None, torch.Tensor, torch.Tensor]] = {}

    def record(self, model: nn.Module, x: torch.Tensor, step: int | None = None) -> list[dict]:
        """One no-grad forward of x; one row per layer. `step` labels the record for the next record's prev_step."""
        chosen = resolve_layers(model, self.layers, need_weight=False)
        rows: dict[str, dict] = {}

        def make(index, name):
            def hook(mod, args, out):
                t = args[0] if self.site == "input" else out
                if name not in rows and isinstance(t, torch.Tensor):   # first call only (shared modules)
                    rows[name] = self._summary(name, index, t, step)
            return hook

        handles = [m.register_forward_hook(make(i, n)) for i, n, m in chosen]
        try:
            with torch.no_grad(), rng_fork(x, model):
                forward(model, {}, x)
        finally:
            for h in handles:
                h.remove()
        missing = [n for _, n, _ in chosen if n not in rows]
        if missing:
            raise ValueError(f"layers: {', '.join(missing)} did not run in the forward pass")
        return [rows[n] for _, n, _ in chosen]

    def _summary(self, name: str, index: int | None, t: torch.Tensor, step: int | None) -> dict:
        v = _by_unit(t)
        c, m = v.shape
        if self.units is not None and any(not 0 <= u < c for u in self.units):
            raise ValueError(f"units: indices must be in 0..{c - 1} for layer {name!r}, got {self.units}")
        vd = v.double()
        var, mean = torch.var_mean(vd, dim=1, correction=0)
        pct = unit_percentiles(v, self.qs)
        ok = torch.isfinite(vd)
        flat = vd[ok]
        if name not in self.ranges:
            lo, hi = self.hist_range or ((float(flat.min()), float(flat.max())) if flat.numel() else (-1.0, 1.0))
            if self.hist_range is None:
                half = max(hi - lo, 1e-12) / 2
                lo, hi = lo - half, hi + half
            self.ranges[name] = (lo, hi)
        lo, hi = self.ranges[name]
        edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
        counts = _bin_counts(flat, edges)
        sel = slice(None) if self.units is None else self.units
        row = {"layer": name, "index": index, "site": self.site, "units": c, "m": m,
               "percentiles": {f"{q:g}": pct[k, sel].tolist() for k, q in enumerate(self.qs)},
               "mean": mean[sel].tolist(), "var": var[sel].tolist(),
               "layer_mean": float(vd.mean()), "layer_var": float(vd.var(correction=0)),
               "hist": {"edges": edges.tolist(), "counts": counts.long().tolist(),
                        "under": int((flat < lo).sum()), "over": int((flat > hi).sum()),
                        "nonfinite": int((~ok).sum())}}
        if self.units is not None:
            row["unit_ids"] = list(self.units)
        prev = self.prev.get(name)
        if prev is not None and prev[1].shape == mean.shape:
            dm, dv = (mean - prev[1]).abs(), (var - prev[2]).abs()
            row.update(prev_step=prev[0], dmean=float(dm.mean()), dvar=float(dv.mean()),
                       dmean_l2=float(dm.norm()), dvar_l2=float(dv.norm()))
        else:
            row.update(prev_step=None, dmean=None, dvar=None, dmean_l2=None, dvar_l2=None)
        self.prev[name] = (step, mean, var)
        row["finite"] = bool(ok.all())
        return row


def distributions(model: nn.Module, x: torch.Tensor, layers: LayerSpec = None, site: str = "output",
                  percentiles: Sequence[float] = DEFAULT_PERCENTILES, bins: int = 50,
                  hist_range: tuple[float, float] | None = None, units: Sequence[int] | None = None) -> list[dict]:
    """One-off record (no deltas); see DistributionTracker for the arguments and the row keys.

    Examples::

        >>> import torch, normlab
        >>> from normlab import diagnostics
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), normlab.BatchNorm1d(8), torch.nn.ReLU(),
        ...                             torch.nn.Linear(8, 3))
        >>> x, y, loss_fn = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.nn.functional.cross_entropy
        >>> rows = diagnostics.distributions(model, x, layers=[0], percentiles=(15, 50, 85), bins=10)
        >>> len(rows), rows[0]["layer"], sorted(rows[0]["percentiles"]), len(rows[0]["mean"])
        (1, '0', ['15', '50', '85'], 8)
    """
    return DistributionTracker(layers, site, percentiles, bins, hist_range, units).record(model, x)
