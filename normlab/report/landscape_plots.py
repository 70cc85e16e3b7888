"""Line and contour plots of loss landscapes (normlab.diagnostics.landscape2d.surface results) in the report's style
(figures.py: Agg canvas, no pyplot, the same palette, DPI and grid), saved as PNG and SVG. Takes plain result dicts,
so it runs on records loaded from JSON."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .figures import DPI, PALETTE


def _save(fig: Figure, out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{stem}.png", "svg": out_dir / f"{stem}.svg"}
    fig.savefig(paths["png"], dpi=DPI)
    fig.savefig(paths["svg"])
    return paths


def _check(result: dict, dims: int) -> None:
    if not isinstance(result, dict) or result.get("dims") != dims or "loss" not in result:
        raise ValueError(f"result: expected a {dims}-D landscape2d.surface result (keys coords, loss, dims={dims})")


def line_figure(results: Sequence[tuple[str, dict]], title: str = "loss along a direction",
                xlabel: str = "coefficient a", ylog: bool = False) -> Figure:
    """One axes with a line per (label, 1-D result), e.g. the three BN modes on one direction."""
    if not results:
        raise ValueError("results: expected at least one (label, 1-D surface result) pair")
    fig = Figure(figsize=(4.3, 3.3), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, r) in enumerate(results):
        _check(r, 1)
        pts = [(a, v) for a, v in zip(r["coords"][0], r["loss"]) if math.isfinite(v)]
        ax.plot([a for a, _ in pts], [v for _, v in pts], color=PALETTE[i % len(PALETTE)], marker="o",
                markersize=3, lw=1.5, label=f"{label} (bn={r['bn']})")
    if ylog:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, framealpha=0.7)
    return fig


def contour_figure(result: dict, title: str = "loss surface", levels: int = 20, log: bool = False) -> Figure:
    """Filled contours of a 2-D result, loss[i][j] at (coords[0][i], coords[1][j]); the origin marked; log=True
    contours log10(loss) (for losses spanning decades)."""
    _check(result, 2)
    a, b = result["coords"]
    z = [[(math.log10(v) if log and v > 0 else v) if math.isfinite(v) else float("nan") for v in row]
         for row in result["loss"]]
    zt = [list(col) for col in zip(*z)]   # contourf wants Z[y][x]: rows along the second direction
    fig = Figure(figsize=(4.6, 3.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cf = ax.contourf(a, b, zt, levels=levels, cmap="viridis")
    ax.contour(a, b, zt, levels=levels, colors="k", linewidths=0.4, alpha=0.5)
    fig.colorbar(cf, ax=ax, label="log10 loss" if log else "loss")
    ax.plot([0], [0], marker="*", color=PALETTE[1], markersize=9, ls="none")
    kinds = result.get("kinds", ["d1", "d2"])
    ax.set_title(f"{title} (bn={result['bn']})", fontsize=10)
    ax.set_xlabel(f"a ({kinds[0]})")
    ax.set_ylabel(f"b ({kinds[1]})")
    return fig


def line_plot(results: Sequence[tuple[str, dict]], out_dir: Path, stem: str, **kw) -> dict[str, Path]:
    """line_figure saved as out_dir/stem.png and .svg; returns {"png": path, "svg": path}."""
    return _save(line_figure(results, **kw), out_dir, stem)


def contour_plot(result: dict, out_dir: Path, stem: str, **kw) -> dict[str, Path]:
    """contour_figure saved as out_dir/stem.png and .svg; returns {"png": path, "svg": path}."""
    return _save(contour_figure(result, **kw), out_dir, stem)
