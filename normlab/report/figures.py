"""Draw figure specs (spec.py) with matplotlib's Agg canvas, to PNG and SVG. No pyplot: no global state."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; harmless when another backend is already in use by the caller
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from ..records import atomic_writer  # noqa: E402

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
DPI = 110


def _colors(spec: dict) -> dict[str, str]:
    """One colour per series key, shared by every panel of the figure (so 'bn' is the same colour everywhere)."""
    keys: list[str] = []
    for p in spec["panels"]:
        for s in p["series"]:
            if s["key"] not in keys:
                keys.append(s["key"])
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def render(spec: dict) -> Figure:
    """A matplotlib Figure for the spec (panels in a grid of spec['ncols'] columns)."""
    panels = spec["panels"]
    ncols = max(1, min(spec.get("ncols") or 3, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.3 * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    colors = _colors(spec)
    for i, p in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for s in p["series"]:
            c = colors[s["key"]]
            pts = [(x, y) for x, y in zip(s["x"], s["y"]) if _finite(x) and _finite(y)]
            if not pts:
                ax.plot([], [], color=c, ls=s["ls"], label=f"{s['label']} (no finite values)")
                continue
            if s["ls"] == "none" and s["lo"] is not None and s["hi"] is not None:   # points with error bars
                trip = [(x, y, lo, hi) for x, y, lo, hi in zip(s["x"], s["y"], s["lo"], s["hi"])
                        if _finite(x) and _finite(y) and _finite(lo) and _finite(hi)]
                ax.errorbar([t[0] for t in trip], [t[1] for t in trip],
                            yerr=[[t[1] - t[2] for t in trip], [t[3] - t[1] for t in trip]], color=c, ls="none",
                            marker=s["marker"] or "o", markersize=5, capsize=4, label=s["label"])
                continue
            ax.plot([a for a, _ in pts], [b for _, b in pts], color=c, ls=s["ls"], marker=s["marker"],
                    markersize=4, lw=1.5, label=s["label"])
            if s["lo"] is not None and s["hi"] is not None:
                band = [(x, lo, hi) for x, lo, hi in zip(s["x"], s["lo"], s["hi"])
                        if _finite(x) and _finite(lo) and _finite(hi)]
                if band:
                    ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=c,
                                    alpha=s["alpha"], lw=0)
        if p["xlog"]:
            ax.set_xscale("log")
        if p["ylog"]:
            ax.set_yscale("log")
        if p["xticks"]:
            ax.set_xticks(p["xticks"])
            labels = p.get("xticklabels") or [f"{t:g}" for t in p["xticks"]]
            ax.set_xticklabels(labels, rotation=20 if p.get("xticklabels") else 0, fontsize=8)
            ax.xaxis.set_minor_locator(NullLocator())
        if p["ylim"]:
            ax.set_ylim(*p["ylim"])
        if p["hline"] is not None:
            ax.axhline(p["hline"], color="k", lw=0.8, ls=":")
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        ax.grid(True, alpha=0.3)
        if p["legend"] and p["series"]:
            ax.legend(fontsize=7, framealpha=0.7)
    return fig


def draw(spec: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """Save the spec as out_dir/stem.png and .svg; returns {"png": path, "svg": path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = render(spec)
    paths = {"png": out_dir / f"{stem}.png", "svg": out_dir / f"{stem}.svg"}
    for kind, path in paths.items():   # atomic: a reader sees the old figure or the new one, never half of one
        with atomic_writer(path) as f:
            fig.savefig(f, format=kind, **({"dpi": DPI} if kind == "png" else {}))
    return paths
