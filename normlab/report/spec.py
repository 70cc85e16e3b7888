"""Figure specs: plain JSON-able dicts an experiment fills from its records and the report draws.

figure(name, caption, panels)  -> {"name", "caption", "panels", "ncols"}
panel(title, xlabel, ylabel, series, xlog=False, ylog=False, ...)
series(label, x, y, lo=None, hi=None, ...)  lo/hi: the shaded spread (e.g. min/max over seeds, or 15th/85th pct)
"""
from __future__ import annotations

import math
import re
from typing import Sequence


def _floats(v: Sequence[float] | None, name: str) -> list[float] | None:
    if v is None:
        return None
    out = []
    for a in v:
        a = float(a)
        out.append(a if math.isfinite(a) else float("nan"))
    return out


def series(label: str, x: Sequence[float], y: Sequence[float], lo: Sequence[float] | None = None,
           hi: Sequence[float] | None = None, *, ls: str = "-", marker: str | None = None,
           key: str | None = None, alpha: float = 0.2) -> dict:
    """One line (y vs x) with an optional shaded band lo..hi; `key` picks the colour (default: label)."""
    x, y = _floats(x, "x"), _floats(y, "y")
    if len(x) != len(y):
        raise ValueError(f"series {label!r}: x and y lengths differ ({len(x)} vs {len(y)})")
    for name, b in (("lo", lo), ("hi", hi)):
        if b is not None and len(b) != len(x):
            raise ValueError(f"series {label!r}: {name} has {len(b)} values, x has {len(x)}")
    return {"label": label, "x": x, "y": y, "lo": _floats(lo, "lo"), "hi": _floats(hi, "hi"), "ls": ls,
            "marker": marker, "key": key or label, "alpha": alpha}


def panel(title: str, xlabel: str, ylabel: str, series_list: list[dict], *, xlog: bool = False, ylog: bool = False,
          ylim: tuple[float, float] | None = None, hline: float | None = None, xticks: Sequence[float] | None = None,
          xticklabels: Sequence[str] | None = None, legend: bool = True) -> dict:
    """One axes. xticks: force these tick positions (e.g. batch sizes on a log axis); xticklabels: their labels.
    A series drawn with ls="none" shows its lo/hi as error bars instead of a band."""
    if xticklabels is not None and (xticks is None or len(xticklabels) != len(xticks)):
        raise ValueError("xticklabels: expected one label per entry of xticks")
    return {"title": title, "xlabel": xlabel, "ylabel": ylabel, "series": list(series_list), "xlog": xlog,
            "ylog": ylog, "ylim": list(ylim) if ylim else None, "hline": hline,
            "xticks": list(xticks) if xticks else None,
            "xticklabels": list(xticklabels) if xticklabels is not None else None, "legend": legend}


def figure(name: str, caption: str, panels: list[dict], ncols: int | None = None) -> dict:
    """A figure of one or more panels; `name` becomes part of the file name (letters, digits, '-', '_')."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"name: expected letters, digits, '-' or '_', got {name!r}")
    if not panels:
        raise ValueError("panels: expected at least one panel")
    return {"name": name, "caption": caption, "panels": list(panels), "ncols": ncols or min(3, len(panels))}
